//! Smaller container operations: rename, pause, terminal resize, the process list, and
//! attaching to a container before it starts.

use std::sync::Arc;

use apex_agent_proto::api::{tools, ProcessInfo};
use apex_shim::proto::{self, Request};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use super::{conflict, not_found, shim_err, valid_name, Containers};
use crate::error::{Error, Result};
use crate::store::ContainerState;

/// An attach waiting for its container to start: whether it forwards stdin, and where
/// the helper stream goes once the container runs.
pub(crate) struct PendingAttach {
    pub(crate) stdin: bool,
    pub(crate) tx: oneshot::Sender<Result<UnixStream>>,
}

impl Containers {
    /// Renames a container (its DNS name follows).
    pub async fn rename(&self, what: &str, new: &str) -> Result<()> {
        if !valid_name(new) {
            return Err(Error::bad_request(format!(
                "Invalid container name ({new}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        let _names = self.create_lock.lock().await;
        let rec = self.resolve(what)?;
        let lock = self.lock_of(&rec.id);
        let _g = lock.lock().await;
        let mut rec = self.resolve(&rec.id)?;
        if let Some(other) = self.store.list()?.into_iter().find(|r| r.name == new) {
            if other.id == rec.id {
                return Ok(());
            }
            return Err(conflict(format!(
                "Conflict. The container name \"/{new}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                other.id
            )));
        }
        let old = std::mem::replace(&mut rec.name, new.to_string());
        self.put(&rec)?;
        if rec.state == ContainerState::Running {
            self.networks.forget(&rec.id);
            self.networks.register(&rec);
        }
        self.event(&rec, "rename", &[("oldName", format!("/{old}"))]);
        Ok(())
    }

    /// Stops (`paused`) or resumes the VM's vCPUs.
    pub async fn pause(&self, what: &str, paused: bool) -> Result<()> {
        let rec = self.resolve(what)?;
        let lock = self.lock_of(&rec.id);
        let _g = lock.lock().await;
        let mut rec = self.resolve(&rec.id)?;
        if rec.state != ContainerState::Running {
            return Err(conflict(format!("Container {} is not running", rec.id)));
        }
        if rec.paused == paused {
            return Err(conflict(if paused {
                format!("Container {} is already paused", rec.id)
            } else {
                format!("Container {} is not paused", rec.id)
            }));
        }
        proto::request::<()>(&self.bundle(&rec.id).socket(), &Request::Pause { paused })
            .await
            .map_err(shim_err)?;
        rec.paused = paused;
        self.put(&rec)?;
        self.event(&rec, if paused { "pause" } else { "unpause" }, &[]);
        Ok(())
    }

    /// Sets the main process's terminal size.
    pub async fn resize(&self, what: &str, rows: u16, cols: u16) -> Result<()> {
        let rec = self.resolve(what)?;
        if rec.state != ContainerState::Running {
            return Err(conflict(format!("Container {} is not running", rec.id)));
        }
        proto::request::<()>(
            &self.bundle(&rec.id).socket(),
            &Request::Resize { rows, cols },
        )
        .await
        .map_err(shim_err)
    }

    /// The processes of a running container.
    pub async fn top(self: &Arc<Self>, what: &str) -> Result<Vec<ProcessInfo>> {
        let rec = self.resolve(what)?;
        if rec.state != ContainerState::Running {
            return Err(conflict(format!("Container {} is not running", rec.id)));
        }
        let mut run = self
            .run_tool(&rec.id, vec![tools::PS.into()], false)
            .await?;
        let mut out = Vec::new();
        let _ = (&mut run.stdout).take(8 << 20).read_to_end(&mut out).await;
        let (code, err) = run.finish().await;
        if code != 0 {
            return Err(Error::internal(format!(
                "cannot list the processes: {}",
                err.trim()
            )));
        }
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice(l)
                    .map_err(|e| Error::internal(format!("bad process list from the guest: {e}")))
            })
            .collect()
    }

    /// Attaches to the container's main process (stdin forwarded with `stdin`): the
    /// returned future resolves to the helper stream. Registration happens now, so a
    /// container that has not started yet is attached as soon as it starts, before its
    /// process runs, and the client sees all its output (`docker run` attaches, answers
    /// the client, then starts).
    pub fn attach_when_started(
        self: &Arc<Self>,
        id: &str,
        stdin: bool,
    ) -> Result<impl std::future::Future<Output = Result<UnixStream>> + Send + 'static> {
        let rec = self.resolve(id)?;
        let me = self.clone();
        let (tx, rx) = oneshot::channel();
        if rec.state == ContainerState::Running {
            let id = rec.id.clone();
            tokio::spawn(async move {
                let _ = tx.send(me.attach_stream(&id, stdin).await);
            });
        } else if rec.state == ContainerState::Exited && rec.config.auto_remove {
            return Err(not_found(id));
        } else {
            self.pending
                .lock()
                .expect("pending attaches")
                .entry(rec.id.clone())
                .or_default()
                .push(PendingAttach { stdin, tx });
        }
        let name = rec.name;
        Ok(async move {
            rx.await
                .unwrap_or_else(|_| Err(conflict(format!("container {name} did not start"))))
        })
    }

    /// Moves a container that is not running to another network (`None`: the default
    /// one, `"none"`: no network) with extra aliases. Its old address is released.
    /// A running container cannot change networks: it has one NIC, set at boot.
    pub async fn set_network(&self, what: &str, network: &str, aliases: Vec<String>) -> Result<()> {
        let rec = self.resolve(what)?;
        let lock = self.lock_of(&rec.id);
        let _g = lock.lock().await;
        let mut rec = self.resolve(&rec.id)?;
        let current = rec
            .config
            .network
            .clone()
            .unwrap_or_else(|| apex_net::ipam::DEFAULT_NETWORK.into());
        if current == network {
            for a in aliases {
                if !rec.config.aliases.contains(&a) {
                    rec.config.aliases.push(a);
                }
            }
            return self.put(&rec);
        }
        if matches!(
            rec.state,
            ContainerState::Running | ContainerState::Restarting
        ) {
            return Err(conflict(format!(
                "container {} is running: a VM has one network interface, set when it boots; stop it, change its network, then start it",
                rec.name
            )));
        }
        if network != crate::networks::NONE {
            self.networks.check_exists(network)?;
        }
        self.networks.release(&rec).await;
        rec.network = None;
        rec.config.network = Some(network.to_string());
        rec.config.aliases = aliases;
        self.put(&rec)?;
        self.events.emit(
            crate::events::EventKind::Network,
            "connect",
            network.to_string(),
            [("container", rec.id.clone()), ("name", network.to_string())],
        );
        Ok(())
    }

    /// The attaches waiting for `id` to start.
    pub(crate) fn take_pending(&self, id: &str) -> Vec<PendingAttach> {
        self.pending
            .lock()
            .expect("pending attaches")
            .remove(id)
            .unwrap_or_default()
    }
}
