//! Volumes: directories `$APEX_HOME/volumes/<name>/_data` recorded in the state database.
//!
//! A named volume is created on first use (or by `volume create`); an anonymous one is
//! made for `-v /path` or an image `VOLUME` and goes with `rm -v` (or `--rm`). Several
//! containers may use a volume at once; one that any container references cannot be
//! removed. Creating and removing volumes, and recording which containers use them,
//! happen under one lock ([`Volumes::lock`]), so a removal can never race a container
//! create that starts using the volume.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::error::{Error, Result};
use crate::events::{EventKind, Events};
use crate::model::{MountType, VolumeCreate, VolumeInfo, VolumePruneReport};
use crate::mounts::{bad_volume_name, valid_volume_name};
use crate::store::{StateStore, VolumeRecord};

/// The volume service.
pub struct Volumes {
    root: PathBuf,
    store: Arc<StateStore>,
    events: Arc<Events>,
    lock: tokio::sync::Mutex<()>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// An anonymous volume's name: 64 hex characters, like Docker's.
fn random_name() -> String {
    crate::containers::random_hex(32)
}

fn no_such_volume(name: &str) -> Error {
    Error::not_found(format!("get {name}: no such volume"))
}

impl Volumes {
    /// The volumes of `home` (directories under `home/volumes`).
    pub fn new(home: &Path, store: Arc<StateStore>, events: Arc<Events>) -> Arc<Self> {
        Arc::new(Volumes {
            root: home.join("volumes"),
            store,
            events,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Held while volumes are created or removed, and while a container's use of volumes
    /// is recorded or dropped.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// The directory holding a volume's data.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.root.join(name).join("_data")
    }

    /// After a crash: removes volume directories that have no record (a create or a
    /// removal that was cut short).
    pub fn recover(&self) -> anyhow::Result<()> {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Ok(());
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if self.store.get_volume(&name)?.is_none() {
                tracing::warn!(
                    volume = name,
                    "removing a volume directory without a record"
                );
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }

    /// Creates volume `name` (a random name when `None`) unless it exists; the caller
    /// holds [`Volumes::lock`]. Returns the record and whether it was created now.
    pub fn ensure_locked(
        &self,
        name: Option<&str>,
        labels: BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<(VolumeRecord, bool)> {
        let name = match name {
            Some(n) if !valid_volume_name(n) => return Err(bad_volume_name(n)),
            Some(n) => n.to_string(),
            None => random_name(),
        };
        if let Some(v) = self.store.get_volume(&name)? {
            return Ok((v, false));
        }
        let dir = self.data_dir(&name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.root)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .and_then(|()| {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&dir)
            })
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let rec = VolumeRecord {
            name,
            created: now(),
            labels,
            anonymous,
        };
        let out = self.store.insert_volume(&rec)?;
        tracing::info!(volume = rec.name, anonymous, "volume created");
        self.events.emit(
            EventKind::Volume,
            "create",
            rec.name.clone(),
            [("driver", "local".into())],
        );
        Ok(out)
    }

    /// `POST /v1/volumes`: an existing name answers the existing volume (as Docker).
    pub async fn create(&self, req: VolumeCreate) -> Result<VolumeInfo> {
        let _g = self.lock().await;
        let (rec, _) = self.ensure_locked(req.name.as_deref(), req.labels, false)?;
        self.info(rec, &self.users()?)
    }

    /// Which containers use which volume: volume name -> container names.
    fn users(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for c in self.store.list()? {
            for m in &c.mounts {
                if let (MountType::Volume, Some(n)) = (m.kind, &m.name) {
                    out.entry(n.clone()).or_default().push(c.name.clone());
                }
            }
        }
        Ok(out)
    }

    fn info(&self, rec: VolumeRecord, users: &BTreeMap<String, Vec<String>>) -> Result<VolumeInfo> {
        Ok(VolumeInfo {
            mountpoint: self.data_dir(&rec.name),
            containers: users.get(&rec.name).cloned().unwrap_or_default(),
            driver: "local".into(),
            name: rec.name,
            created: rec.created,
            labels: rec.labels,
            anonymous: rec.anonymous,
        })
    }

    /// `GET /v1/volumes`.
    pub fn list(&self) -> Result<Vec<VolumeInfo>> {
        let users = self.users()?;
        self.store
            .list_volumes()?
            .into_iter()
            .map(|v| self.info(v, &users))
            .collect()
    }

    /// `GET /v1/volumes/{name}`.
    pub fn inspect(&self, name: &str) -> Result<VolumeInfo> {
        let rec = self
            .store
            .get_volume(name)?
            .ok_or_else(|| no_such_volume(name))?;
        self.info(rec, &self.users()?)
    }

    /// Deletes the record, then the directory; the caller holds the lock and checked use.
    fn delete_locked(&self, name: &str) -> Result<u64> {
        let dir = self.root.join(name);
        let bytes = crate::info::disk_usage(&dir);
        self.store.delete_volume(name)?;
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                // The record is gone: `recover` finishes the job at the next start.
                tracing::warn!(volume = name, "cannot remove {}: {e}", dir.display());
            }
        }
        tracing::info!(volume = name, "volume removed");
        self.events.emit(
            EventKind::Volume,
            "destroy",
            name.to_string(),
            [("driver", "local".into())],
        );
        Ok(bytes)
    }

    /// `DELETE /v1/volumes/{name}`: refused while any container uses it; `force` makes
    /// a missing volume no error.
    pub async fn remove(&self, name: &str, force: bool) -> Result<()> {
        let _g = self.lock().await;
        if self.store.get_volume(name)?.is_none() {
            return if force {
                Ok(())
            } else {
                Err(no_such_volume(name))
            };
        }
        let in_use = self.store.list()?.into_iter().filter(|c| {
            c.mounts
                .iter()
                .any(|m| m.kind == MountType::Volume && m.name.as_deref() == Some(name))
        });
        let ids: Vec<String> = in_use.map(|c| c.id).collect();
        if !ids.is_empty() {
            return Err(Error::conflict(format!(
                "remove {name}: volume is in use - [{}]",
                ids.join(", ")
            )));
        }
        self.delete_locked(name).map(drop)
    }

    /// `POST /v1/volumes/prune`: removes unused anonymous volumes, or every unused
    /// volume with `all` (Docker 23+ semantics).
    pub async fn prune(&self, all: bool) -> Result<VolumePruneReport> {
        let _g = self.lock().await;
        let users = self.users()?;
        let mut report = VolumePruneReport::default();
        for v in self.store.list_volumes()? {
            if users.contains_key(&v.name) || !(all || v.anonymous) {
                continue;
            }
            report.space_reclaimed += self.delete_locked(&v.name)?;
            report.deleted.push(v.name);
        }
        Ok(report)
    }

    /// Removes those of `names` that are anonymous and used by no container (after a
    /// container that used them is gone); the caller holds the lock.
    pub fn remove_anonymous_locked(&self, names: &[String]) -> Result<()> {
        let users = self.users()?;
        for n in names {
            let anonymous = self.store.get_volume(n)?.is_some_and(|v| v.anonymous);
            if anonymous && !users.contains_key(n) {
                self.delete_locked(n)?;
            }
        }
        Ok(())
    }

    /// Removes volumes outright (undoing a failed container create); the caller holds
    /// the lock.
    pub fn discard_locked(&self, names: &[String]) {
        for n in names {
            if let Err(e) = self.delete_locked(n) {
                tracing::warn!(volume = n, "cannot discard: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::model::MountPoint;

    fn setup() -> (tempfile::TempDir, Arc<StateStore>, Arc<Volumes>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(&dir.path().join("db/state.redb")).unwrap());
        let v = Volumes::new(dir.path(), store.clone(), Arc::new(Events::default()));
        (dir, store, v)
    }

    #[tokio::test]
    async fn create_list_remove_and_in_use() {
        let (dir, store, v) = setup();
        let info = v
            .create(VolumeCreate {
                name: Some("data".into()),
                labels: [("k".to_string(), "v".to_string())].into(),
            })
            .await
            .unwrap();
        assert_eq!(info.mountpoint, dir.path().join("volumes/data/_data"));
        assert!(info.mountpoint.is_dir());
        // Creating it again answers the same volume.
        let again = v
            .create(VolumeCreate {
                name: Some("data".into()),
                labels: BTreeMap::new(),
            })
            .await
            .unwrap();
        assert_eq!(again.created, info.created);
        assert_eq!(again.labels.get("k").map(String::as_str), Some("v"));
        let bad = v
            .create(VolumeCreate {
                name: Some("a/b".into()),
                labels: BTreeMap::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(bad.kind(), ErrorKind::BadRequest);

        // In use by a container: 409 naming it.
        let mut c =
            crate::store::test_record(&"c".repeat(64), "web", crate::store::ContainerState::Exited);
        c.mounts.push(MountPoint {
            kind: MountType::Volume,
            name: Some("data".into()),
            source: String::new(),
            destination: "/data".into(),
            read_only: false,
            no_copy: false,
            tmpfs_size: None,
            tmpfs_mode: None,
            noexec: false,
        });
        store.put(&c).unwrap();
        assert_eq!(v.inspect("data").unwrap().containers, ["web"]);
        let e = v.remove("data", false).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.message().contains(&c.id), "{}", e.message());
        assert!(v.prune(true).await.unwrap().deleted.is_empty());
        store.delete(&c.id).unwrap();
        v.remove("data", false).await.unwrap();
        assert!(!dir.path().join("volumes/data").exists());
        assert_eq!(
            v.remove("data", false).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        v.remove("data", true).await.unwrap();
    }

    #[tokio::test]
    async fn prune_and_anonymous_cleanup() {
        let (dir, _store, v) = setup();
        let (named, _) = v
            .ensure_locked(Some("keep"), BTreeMap::new(), false)
            .unwrap();
        let (anon, created) = v.ensure_locked(None, BTreeMap::new(), true).unwrap();
        assert!(created && anon.name.len() == 64);
        std::fs::write(v.data_dir(&anon.name).join("f"), vec![0u8; 10_000]).unwrap();
        let r = v.prune(false).await.unwrap();
        assert_eq!(r.deleted, std::slice::from_ref(&anon.name));
        assert!(r.space_reclaimed >= 10_000);
        assert_eq!(v.list().unwrap().len(), 1);
        v.remove_anonymous_locked(std::slice::from_ref(&named.name))
            .unwrap();
        assert_eq!(v.list().unwrap().len(), 1, "named volumes stay");
        assert_eq!(v.prune(true).await.unwrap().deleted, ["keep"]);
        // An orphan directory (a crash mid-create) goes at recovery.
        std::fs::create_dir_all(dir.path().join("volumes/orphan/_data")).unwrap();
        v.recover().unwrap();
        assert!(!dir.path().join("volumes/orphan").exists());
    }
}
