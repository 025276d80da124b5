//! Child processes that cannot outlive us.
//!
//! Every child gets `PR_SET_PDEATHSIG(SIGKILL)`. That signal fires when the *thread*
//! that forked the child exits, not when the process does, so spawning from a tokio
//! worker or blocking-pool thread (which come and go) could kill a healthy VM. All
//! spawns are therefore funnelled through one dedicated thread that lives for the
//! rest of the process. [`Guarded`] kills and reaps the child on drop.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

type Job = (Command, mpsc::SyncSender<io::Result<Child>>);

fn spawner() -> &'static mpsc::Sender<Job> {
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("apex-vm-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop never ends: the thread
                // (and with it every child's PDEATHSIG anchor) lasts as long as the process.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the apex-vm spawner thread");
        tx
    })
}

/// Spawns `cmd` on the long-lived spawner thread with `PR_SET_PDEATHSIG(SIGKILL)`.
pub(crate) fn spawn_guarded(mut cmd: Command) -> io::Result<Guarded> {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec. It only makes raw,
    // async-signal-safe syscalls through rustix (prctl, getppid) and builds an error
    // from a raw errno: no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // If we died between fork and prctl, the signal was never armed: abort
            // the spawn (the error is reported to the parent, the child exits).
            if rustix::process::getppid() != Some(parent) {
                return Err(rustix::io::Errno::SRCH.into());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::sync_channel(1);
    spawner()
        .send((cmd, tx))
        .map_err(|_| io::Error::other("apex-vm spawner thread is gone"))?;
    let child = rx
        .recv()
        .map_err(|_| io::Error::other("apex-vm spawner thread dropped the request"))??;
    Ok(Guarded::new(child))
}

/// A child process that is SIGKILLed and reaped when dropped.
pub(crate) struct Guarded {
    pid: u32,
    state: Mutex<State>,
    /// pidfd (readable once the child has exited); `None` on kernels without pidfd.
    pidfd: Option<OwnedFd>,
}

struct State {
    child: Child,
    status: Option<ExitStatus>,
}

impl Guarded {
    fn new(child: Child) -> Self {
        let pid = child.id();
        let pidfd = rustix::process::Pid::from_raw(pid as i32).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        });
        Self {
            pid,
            state: Mutex::new(State {
                child,
                status: None,
            }),
            pidfd,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Non-blocking: the exit status if the child has exited (reaps it).
    pub(crate) fn try_status(&self) -> Option<ExitStatus> {
        let mut st = self.lock();
        if st.status.is_none() {
            st.status = st.child.try_wait().ok().flatten();
        }
        st.status
    }

    /// Waits for the child to exit.
    pub(crate) async fn wait(&self) -> io::Result<ExitStatus> {
        let afd = match &self.pidfd {
            // SAFETY: the AsyncFd owns a fresh duplicate `OwnedFd`, which stays open
            // and returns the same raw fd until the AsyncFd is dropped.
            Some(fd) => Some(unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    fd.try_clone()?,
                    tokio::io::Interest::READABLE,
                )
            }?),
            None => None,
        };
        loop {
            if let Some(s) = self.try_status() {
                return Ok(s);
            }
            match &afd {
                Some(afd) => {
                    let mut guard = afd.readable().await?;
                    guard.clear_ready();
                }
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// SIGKILLs the child (if still running) and reaps it; blocks only briefly.
    pub(crate) fn kill_and_reap(&self) -> Option<ExitStatus> {
        let mut st = self.lock();
        if st.status.is_none() {
            let _ = st.child.kill();
            st.status = st.child.wait().ok();
        }
        st.status
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn wait_and_drop() {
        let g = spawn_guarded(Command::new("true")).unwrap();
        assert!(g.wait().await.unwrap().success());

        let mut sleep = Command::new("sleep");
        sleep.arg("100");
        let g = spawn_guarded(sleep).unwrap();
        let pid = g.pid();
        assert!(alive(pid));
        assert!(g.try_status().is_none());
        drop(g);
        assert!(!alive(pid), "child {pid} survived drop");
    }
}
