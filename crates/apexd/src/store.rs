//! Durable daemon state in `db/state.redb`.
//!
//! Tables: `meta` (`schema_version`), `containers` (64-hex id -> [`ContainerRecord`] as
//! JSON) and `networks` (name -> [`NetworkRecord`] as JSON). The daemon opens the database once and keeps it for its whole life (redb allows
//! one process at a time, which the daemon's single-instance lock already guarantees).
//! Every change is one redb transaction, so a crash leaves the old or the new state.

use std::path::{Path, PathBuf};

use apex_runtime::spec::ProcessSpec;

use anyhow::{bail, Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use apex_net::forward::PortSpec;
use apex_net::ipam::NetworkState;

use crate::model::{MountPoint, RestartPolicy};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");

/// Current schema version; bump with a migration in [`StateStore::open`].
/// 2: the `networks` table. 3: the `volumes` table, container mounts.
pub const SCHEMA_VERSION: u64 = 3;

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
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
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
    /// Network to join (`None`: the default network; `none`: no network).
    #[serde(default)]
    pub network: Option<String>,
    /// Published ports as given (`[host-ip:]host-port:container-port[/proto]`).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Read-only root filesystem.
    #[serde(default)]
    pub read_only_rootfs: bool,
    /// The resolved entrypoint (`process.args` is it followed by `cmd`).
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// The resolved cmd.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Labels (the image's, then the create request's).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Guest hostname.
    #[serde(default)]
    pub hostname: String,
    /// Domain name.
    #[serde(default)]
    pub domainname: String,
    /// Exposed ports (`80/tcp`).
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// Publish every exposed port on a free host port.
    #[serde(default)]
    pub publish_all: bool,
    /// Stop signal (name or number).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Seconds `stop` waits before killing.
    #[serde(default)]
    pub stop_timeout: Option<u64>,
    /// Healthcheck, if any.
    #[serde(default)]
    pub healthcheck: Option<crate::model::HealthConfig>,
    /// A reaping init runs as PID 1 in front of the process.
    #[serde(default)]
    pub init: bool,
    /// Extra `/etc/hosts` entries (`name:ip`).
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    /// DNS servers instead of the network's.
    #[serde(default)]
    pub dns: Vec<String>,
    /// DNS search domains.
    #[serde(default)]
    pub dns_search: Vec<String>,
    /// DNS options.
    #[serde(default)]
    pub dns_options: Vec<String>,
    /// More DNS names on its network.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Keep stdin open only until the first attached client detaches.
    #[serde(default)]
    pub stdin_once: bool,
}

/// A container's place on its network, kept across stop/start (the address stays
/// allocated until the container is removed).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    /// Network name.
    pub network: String,
    /// IPv4 address (no prefix).
    pub address: String,
    /// Guest MAC address.
    pub mac: String,
    /// Host tap device (empty in user-mode networking).
    pub tap: String,
}

/// A network in the state database: its [`NetworkState`] (subnet, bridge, allocations)
/// plus when it was created.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkRecord {
    /// Name, bridge, subnet and address allocations.
    #[serde(flatten)]
    pub state: NetworkState,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
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
    /// Its network attachment, once started on a network.
    #[serde(default)]
    pub network: Option<Attachment>,
    /// Published ports as bound (real host ports) while running.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Bind mounts, volumes and tmpfs, in mount order.
    #[serde(default)]
    pub mounts: Vec<MountPoint>,
    /// Its VM's vCPUs are stopped (`pause`).
    #[serde(default)]
    pub paused: bool,
    /// Healthcheck results while it runs with a healthcheck.
    #[serde(default)]
    pub health: Option<apex_shim::proto::Health>,
}

/// A volume in the state database (its data is `volumes/<name>/_data`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRecord {
    /// Name.
    pub name: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Created for one container, without a name.
    #[serde(default)]
    pub anonymous: bool,
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
            tx.open_table(NETWORKS)?;
            tx.open_table(VOLUMES)?;
            migrate(&tx)?;
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

    /// Inserts or replaces a network.
    pub fn put_network(&self, net: &NetworkRecord) -> Result<()> {
        let json = serde_json::to_vec(net)?;
        let tx = self.db.begin_write()?;
        tx.open_table(NETWORKS)?
            .insert(net.state.name.as_str(), json.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// The network called `name`, if any.
    pub fn get_network(&self, name: &str) -> Result<Option<NetworkRecord>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(NETWORKS)?;
        let Some(v) = table.get(name)? else {
            return Ok(None);
        };
        let net = serde_json::from_slice(v.value())
            .with_context(|| format!("corrupt network record {name}"))?;
        Ok(Some(net))
    }

    /// All networks, ordered by name.
    pub fn list_networks(&self) -> Result<Vec<NetworkRecord>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(NETWORKS)?;
        table
            .iter()?
            .map(|e| {
                let (k, v) = e?;
                serde_json::from_slice(v.value())
                    .with_context(|| format!("corrupt network record {}", k.value()))
            })
            .collect()
    }

    /// Changes network `name` in one transaction: `f` sees the stored record and its
    /// changes are saved only if it succeeds. `None` if there is no such network.
    pub fn update_network<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut NetworkRecord) -> Result<T>,
    ) -> Result<Option<T>> {
        let tx = self.db.begin_write()?;
        let out = {
            let mut table = tx.open_table(NETWORKS)?;
            let current = match table.get(name)? {
                Some(v) => serde_json::from_slice::<NetworkRecord>(v.value())
                    .with_context(|| format!("corrupt network record {name}"))?,
                None => return Ok(None),
            };
            let mut net = current;
            let out = f(&mut net)?;
            let json = serde_json::to_vec(&net)?;
            table.insert(name, json.as_slice())?;
            out
        };
        tx.commit()?;
        Ok(Some(out))
    }

    /// Inserts a volume unless one with its name exists; returns the stored one and
    /// whether it was created now.
    pub fn insert_volume(&self, vol: &VolumeRecord) -> Result<(VolumeRecord, bool)> {
        let tx = self.db.begin_write()?;
        let out = {
            let mut table = tx.open_table(VOLUMES)?;
            let existing = table
                .get(vol.name.as_str())?
                .map(|v| serde_json::from_slice::<VolumeRecord>(v.value()))
                .transpose()
                .with_context(|| format!("corrupt volume record {}", vol.name))?;
            match existing {
                Some(v) => (v, false),
                None => {
                    let json = serde_json::to_vec(vol)?;
                    table.insert(vol.name.as_str(), json.as_slice())?;
                    (vol.clone(), true)
                }
            }
        };
        tx.commit()?;
        Ok(out)
    }

    /// The volume called `name`, if any.
    pub fn get_volume(&self, name: &str) -> Result<Option<VolumeRecord>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(VOLUMES)?;
        let Some(v) = table.get(name)? else {
            return Ok(None);
        };
        let vol = serde_json::from_slice(v.value())
            .with_context(|| format!("corrupt volume record {name}"))?;
        Ok(Some(vol))
    }

    /// All volumes, ordered by name.
    pub fn list_volumes(&self) -> Result<Vec<VolumeRecord>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(VOLUMES)?;
        table
            .iter()?
            .map(|e| {
                let (k, v) = e?;
                serde_json::from_slice(v.value())
                    .with_context(|| format!("corrupt volume record {}", k.value()))
            })
            .collect()
    }

    /// Removes a volume record; whether it existed.
    pub fn delete_volume(&self, name: &str) -> Result<bool> {
        let tx = self.db.begin_write()?;
        let existed = tx.open_table(VOLUMES)?.remove(name)?.is_some();
        tx.commit()?;
        Ok(existed)
    }

    /// Removes a network; whether it existed.
    pub fn delete_network(&self, name: &str) -> Result<bool> {
        let tx = self.db.begin_write()?;
        let existed = tx.open_table(NETWORKS)?.remove(name)?.is_some();
        tx.commit()?;
        Ok(existed)
    }
}

/// Upgrades an older database in place. v1 -> v2 -> v3 only add tables (`networks`,
/// `volumes`, opened by the caller) and record fields with defaults, so it just records
/// the new version.
fn migrate(tx: &redb::WriteTransaction) -> Result<()> {
    let mut meta = tx.open_table(META)?;
    let v = meta.get("schema_version")?.map(|g| g.value());
    if matches!(v, Some(1 | 2)) {
        meta.insert("schema_version", SCHEMA_VERSION)?;
    }
    Ok(())
}

/// A container record for unit tests.
#[cfg(test)]
pub(crate) fn test_record(id: &str, name: &str, state: ContainerState) -> ContainerRecord {
    ContainerRecord {
        id: id.into(),
        name: name.into(),
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
                init: false,
                tool: false,
            },
            stdin_open: false,
            cpus: 1,
            memory_mib: 256,
            boot_timeout_s: 60,
            restart: RestartPolicy::No,
            auto_remove: false,
            rootfs: "/x.erofs".into(),
            image_id: "sha256:00".into(),
            network: None,
            publish: vec![],
            read_only_rootfs: false,
            ..Default::default()
        },
        started_at: None,
        finished_at: None,
        exit_code: None,
        exit_reason: None,
        restart_count: 0,
        stopped_by_user: false,
        shim_pid: None,
        network: None,
        ports: vec![],
        mounts: vec![],
        paused: false,
        health: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8, state: ContainerState) -> ContainerRecord {
        test_record(&format!("{:02x}", n).repeat(32), &format!("c{n}"), state)
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
    fn migrates_v1_databases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        // A v1 database: no networks table, records without the network fields.
        let mut old = serde_json::to_value(rec(3, ContainerState::Exited)).unwrap();
        for k in ["network", "ports"] {
            old.as_object_mut().unwrap().remove(k);
        }
        for k in ["network", "publish"] {
            old["config"].as_object_mut().unwrap().remove(k);
        }
        let id = old["id"].as_str().unwrap().to_string();
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("schema_version", 1)
                .unwrap();
            let json = serde_json::to_vec(&old).unwrap();
            tx.open_table(CONTAINERS)
                .unwrap()
                .insert(id.as_str(), json.as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let s = StateStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let r = s.get(&id).unwrap().unwrap();
        assert_eq!(r, rec(3, ContainerState::Exited));
        assert!(s.list_networks().unwrap().is_empty());
        assert!(s.list_volumes().unwrap().is_empty());
        drop(s);
        // Reopening a migrated database is a no-op.
        assert_eq!(
            StateStore::open(&path).unwrap().schema_version().unwrap(),
            SCHEMA_VERSION
        );
    }

    #[test]
    fn networks_round_trip_and_update_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(&dir.path().join("state.redb")).unwrap();
        let net = NetworkRecord {
            state: NetworkState::default_network(),
            created: "2024-01-01T00:00:00Z".into(),
            labels: Default::default(),
        };
        s.put_network(&net).unwrap();
        let json: serde_json::Value = {
            let tx = s.db.begin_read().unwrap();
            let t = tx.open_table(NETWORKS).unwrap();
            let v = t.get("default").unwrap().unwrap();
            serde_json::from_slice(v.value()).unwrap()
        };
        assert_eq!(json["bridge"], "apex0");
        assert_eq!(json["ipam"]["subnet"], "10.213.0.0/24");
        assert_eq!(json["created"], "2024-01-01T00:00:00Z");
        let a = s
            .update_network("default", |n| Ok(n.state.ipam.allocate("c1")?))
            .unwrap()
            .unwrap();
        assert_eq!(a.to_string(), "10.213.0.2");
        // A failing update changes nothing.
        assert!(s
            .update_network("default", |n| -> Result<()> {
                n.state.ipam.allocate("c2")?;
                anyhow::bail!("no")
            })
            .is_err());
        let got = s.get_network("default").unwrap().unwrap();
        assert_eq!(got.state.ipam.len(), 1);
        assert!(s.update_network("nope", |_| Ok(())).unwrap().is_none());
        assert_eq!(s.list_networks().unwrap(), vec![got]);
        assert!(s.delete_network("default").unwrap());
        assert!(!s.delete_network("default").unwrap());
    }

    #[test]
    fn volumes_insert_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(&dir.path().join("state.redb")).unwrap();
        let v = VolumeRecord {
            name: "data".into(),
            created: "2024-01-01T00:00:00Z".into(),
            labels: [("a".to_string(), "b".to_string())].into(),
            anonymous: false,
        };
        assert_eq!(s.insert_volume(&v).unwrap(), (v.clone(), true));
        let other = VolumeRecord {
            created: "2025-01-01T00:00:00Z".into(),
            ..v.clone()
        };
        assert_eq!(s.insert_volume(&other).unwrap(), (v.clone(), false));
        assert_eq!(s.get_volume("data").unwrap(), Some(v.clone()));
        assert_eq!(s.list_volumes().unwrap(), vec![v]);
        assert!(s.delete_volume("data").unwrap());
        assert!(!s.delete_volume("data").unwrap());
        assert_eq!(s.get_volume("data").unwrap(), None);
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
