//! Durable daemon state in `db/state.redb`.
//!
//! Tables: `meta` (`schema_version`) and `containers` (64-hex id -> [`ContainerRecord`] as
//! JSON). The daemon opens the database once and keeps it for its whole life (redb allows
//! one process at a time, which the daemon's single-instance lock already guarantees).
//! Every change is one redb transaction, so a crash leaves the old or the new state.

use std::path::{Path, PathBuf};

use apex_runtime::spec::ProcessSpec;

use anyhow::{bail, Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::model::RestartPolicy;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

/// Current schema version; bump with a migration in [`StateStore::open`].
pub const SCHEMA_VERSION: u64 = 1;

/// Lifecycle state of a container.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Its helper is booting the VM or the process runs.
    Running,
    /// Waiting to be restarted by its restart policy.
    Restarting,
    /// Its process exited (see `exit_code`).
    Exited,
}

/// How a container runs, fixed at create time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The main process (image config merged with the create request).
    pub process: ProcessSpec,
    /// Keep stdin open for attached clients.
    pub stdin_open: bool,
    /// vCPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Boot watchdog, seconds.
    pub boot_timeout_s: u64,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Remove once exited.
    pub auto_remove: bool,
    /// The image's read-only rootfs.
    pub rootfs: PathBuf,
    /// Image config digest.
    pub image_id: String,
}

/// What the daemon knows about one container.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerRecord {
    /// 64 lowercase hex characters.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Image reference as given.
    pub image: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Lifecycle state.
    pub state: ContainerState,
    /// How it runs.
    pub config: ContainerConfig,
    /// Last start (RFC 3339).
    #[serde(default)]
    pub started_at: Option<String>,
    /// Last exit (RFC 3339).
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Exit code once exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why it exited, if not by itself (e.g. "vm died").
    #[serde(default)]
    pub exit_reason: Option<String>,
    /// Restarts done by the restart policy.
    #[serde(default)]
    pub restart_count: u32,
    /// Stopped or killed through the API (restart policies other than `always` honour it).
    #[serde(default)]
    pub stopped_by_user: bool,
    /// The helper's pid while running.
    #[serde(default)]
    pub shim_pid: Option<u32>,
}

/// Whether `id` is a full container ID (64 lowercase hex characters).
pub fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Handle on the state database.
pub struct StateStore {
    db: Database,
}

impl StateStore {
    /// Opens `path` (creating it and its tables, checking the schema version).
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let db = Database::create(path)
            .with_context(|| format!("opening state database {}", path.display()))?;
        let tx = db.begin_write()?;
        {
            tx.open_table(CONTAINERS)?;
        }
        apex_oci::db::ensure_schema(&tx, SCHEMA_VERSION, "state database", path)?;
        tx.commit()?;
        Ok(StateStore { db })
    }

    /// The schema version stored in the database.
    pub fn schema_version(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let v = meta.get("schema_version")?.map(|g| g.value());
        v.context("state database has no schema version")
    }

    /// Inserts or replaces a container record.
    pub fn put(&self, rec: &ContainerRecord) -> Result<()> {
        if !is_container_id(&rec.id) {
            bail!("invalid container id {:?}", rec.id);
        }
        let json = serde_json::to_vec(rec)?;
        let tx = self.db.begin_write()?;
        tx.open_table(CONTAINERS)?
            .insert(rec.id.as_str(), json.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// The container with this full id, if any.
    pub fn get(&self, id: &str) -> Result<Option<ContainerRecord>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CONTAINERS)?;
        let Some(v) = table.get(id)? else {
            return Ok(None);
        };
        let rec = serde_json::from_slice(v.value())
            .with_context(|| format!("corrupt container record {id}"))?;
        Ok(Some(rec))
    }

    /// All containers, ordered by id.
    pub fn list(&self) -> Result<Vec<ContainerRecord>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CONTAINERS)?;
        table
            .iter()?
            .map(|e| {
                let (k, v) = e?;
                serde_json::from_slice(v.value())
                    .with_context(|| format!("corrupt container record {}", k.value()))
            })
            .collect()
    }

    /// How many containers exist.
    pub fn count(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(CONTAINERS)?.len()?)
    }

    /// Removes a container; whether it existed.
    pub fn delete(&self, id: &str) -> Result<bool> {
        let tx = self.db.begin_write()?;
        let existed = tx.open_table(CONTAINERS)?.remove(id)?.is_some();
        tx.commit()?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8, state: ContainerState) -> ContainerRecord {
        ContainerRecord {
            id: format!("{:02x}", n).repeat(32),
            name: format!("c{n}"),
            image: "busybox:latest".into(),
            created: "2024-01-01T00:00:00Z".into(),
            state,
            config: ContainerConfig {
                process: ProcessSpec {
                    args: vec!["true".into()],
                    env: vec![],
                    cwd: "/".into(),
                    user: "0".into(),
                    terminal: false,
                },
                stdin_open: false,
                cpus: 1,
                memory_mib: 256,
                boot_timeout_s: 60,
                restart: RestartPolicy::No,
                auto_remove: false,
                rootfs: "/x.erofs".into(),
                image_id: "sha256:00".into(),
            },
            started_at: None,
            finished_at: None,
            exit_code: None,
            exit_reason: None,
            restart_count: 0,
            stopped_by_user: false,
            shim_pid: None,
        }
    }

    #[test]
    fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(&dir.path().join("db/state.redb")).unwrap();
        assert_eq!(s.count().unwrap(), 0);
        let (a, mut b) = (
            rec(2, ContainerState::Created),
            rec(1, ContainerState::Running),
        );
        s.put(&a).unwrap();
        s.put(&b).unwrap();
        assert_eq!(s.get(&a.id).unwrap(), Some(a.clone()));
        assert_eq!(s.list().unwrap(), vec![b.clone(), a.clone()]);
        b.state = ContainerState::Exited;
        b.exit_code = Some(3);
        s.put(&b).unwrap();
        assert_eq!(s.get(&b.id).unwrap().unwrap().exit_code, Some(3));
        assert_eq!(s.count().unwrap(), 2);
        assert!(s.delete(&a.id).unwrap());
        assert!(!s.delete(&a.id).unwrap());
        assert_eq!(s.get(&a.id).unwrap(), None);
        assert_eq!(s.list().unwrap(), vec![b]);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let a = rec(7, ContainerState::Created);
        StateStore::open(&path).unwrap().put(&a).unwrap();
        let s = StateStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.list().unwrap(), vec![a]);
    }

    #[test]
    fn rejects_bad_ids() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(&dir.path().join("state.redb")).unwrap();
        let mut r = rec(1, ContainerState::Created);
        r.id = "abc".into();
        assert!(s.put(&r).is_err());
        r.id = "G".repeat(64);
        assert!(s.put(&r).is_err());
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("schema_version", SCHEMA_VERSION + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        let err = StateStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer than this apex understands"), "{err}");
    }
}
