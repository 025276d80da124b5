//! Container lifecycle: records in the state database, one `apex-shim` per running
//! container, exit monitoring, restart policies, and re-attaching after a restart.
//!
//! Lifecycle operations on one container are serialized by a per-container lock;
//! different containers proceed in parallel. A shim is identified by its pid: the
//! monitor of an old shim never overwrites the state of a newer start.

pub mod archive;
pub mod logs;
pub use logs::log_timestamp;
mod ops;
pub(crate) mod tools;
pub mod wait;

use std::collections::HashMap;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use apex_runtime::spec::{self, ImageProcessConfig, RunOverrides};
use apex_shim::bundle::{Bundle, ShimConfig};
use apex_shim::proto::{self, ExecSpec, Health, Phase, Request, ShimError, Stats};
use apex_shim::stream::Exit;
use tokio::net::UnixStream;
use tokio::sync::broadcast;

use crate::error::{Error, ErrorKind};
use crate::events::{EventKind, Events};
use crate::model::{
    ContainerSummary, CreateRequest, Created, ExecRequest, HealthConfig, MountPoint, MountType,
    RestartPolicy, WaitResult,
};
use crate::mounts::{self, Wanted};
use crate::networks::{self, Networks};
use crate::store::{ContainerConfig, ContainerRecord, ContainerState, StateStore};
use crate::volumes::Volumes;
use apex_runtime::fs::{Filesystem, MountSpec, Source};

/// How long a new shim may take to answer on its socket.
const SHIM_READY: Duration = Duration::from_secs(10);
/// Container log size before rotation (two files are kept).
const LOG_MAX_BYTES: u64 = 8 << 20;
/// Guest memory when none is asked for, in MiB. Generous, as apple/container's: the guest
/// touches its RAM on demand and gives what it frees back (balloon free page reporting),
/// so an idle container costs about 14 MiB more than with 256 MiB (the guest kernel's
/// page structures for the larger memory map), not 1 GiB.
pub const DEFAULT_MEMORY_MIB: u64 = 1024;
/// Restart back-off: 100 ms doubling up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The container manager.
pub struct Containers {
    home: PathBuf,
    store: Arc<StateStore>,
    networks: Arc<Networks>,
    volumes: Arc<Volumes>,
    events: Arc<Events>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    create_lock: tokio::sync::Mutex<()>,
    execs: Mutex<HashMap<String, (String, ExecSpec)>>,
    /// Attaches waiting for their container to start.
    pending: Mutex<HashMap<String, Vec<ops::PendingAttach>>>,
    changed: broadcast::Sender<String>,
}

fn not_found(what: &str) -> Error {
    Error::new(ErrorKind::NotFound, format!("no such container: {what}"))
}

fn conflict(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Conflict, msg)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// `bytes` random bytes from /dev/urandom, in lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut b = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "CHLD" => 17,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "WINCH" => 28,
        _ => return None,
    })
}

/// Docker's name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphanumeric())
        && c.all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch))
        && n.len() <= 128
}

/// A generated name: `adjective_noun` (plus digits when taken).
fn generated_name(taken: &dyn Fn(&str) -> bool) -> String {
    const ADJ: &[&str] = &[
        "brave", "calm", "eager", "fast", "gentle", "happy", "keen", "lucid", "merry", "nimble",
        "proud", "quiet", "rapid", "sharp", "tidy", "vivid", "witty", "young", "zesty", "bold",
    ];
    const NOUN: &[&str] = &[
        "apex", "badger", "comet", "dune", "falcon", "glacier", "harbor", "island", "jaguar",
        "kernel", "lynx", "meadow", "nebula", "otter", "pine", "quartz", "river", "summit",
        "tiger", "vortex",
    ];
    let r = u64::from_str_radix(&random_hex(4), 16).unwrap_or(0) as usize;
    let base = format!(
        "{}_{}",
        ADJ[r % ADJ.len()],
        NOUN[(r / ADJ.len()) % NOUN.len()]
    );
    if !taken(&base) {
        return base;
    }
    (2..)
        .map(|n| format!("{base}{n}"))
        .find(|n| !taken(n))
        .expect("some free name")
}

/// The `apex-shim` binary: `$APEX_SHIM`, else next to this executable.
fn shim_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("APEX_SHIM") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot locate apexd")?;
    let p = exe.with_file_name("apex-shim");
    anyhow::ensure!(p.is_file(), "apex-shim not found next to {}", exe.display());
    Ok(p)
}

impl Containers {
    /// A manager over `store`, bundles under `<home>/containers`.
    pub fn new(
        home: &Path,
        store: Arc<StateStore>,
        networks: Arc<Networks>,
        volumes: Arc<Volumes>,
        events: Arc<Events>,
    ) -> Arc<Self> {
        Arc::new(Containers {
            home: home.to_path_buf(),
            store,
            networks,
            volumes,
            events,
            locks: Mutex::default(),
            create_lock: tokio::sync::Mutex::new(()),
            execs: Mutex::default(),
            pending: Mutex::default(),
            changed: broadcast::channel(256).0,
        })
    }

    /// The state store.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// The networks.
    pub fn networks(&self) -> &Arc<Networks> {
        &self.networks
    }

    /// The volumes.
    pub fn volumes(&self) -> &Arc<Volumes> {
        &self.volumes
    }

    /// Emits a container event with the container's name and image (and `extra`).
    fn event(&self, rec: &ContainerRecord, action: &str, extra: &[(&'static str, String)]) {
        let attrs = [("name", rec.name.clone()), ("image", rec.image.clone())]
            .into_iter()
            .chain(extra.iter().cloned());
        self.events
            .emit(EventKind::Container, action, rec.id.clone(), attrs);
    }

    /// A container's bundle.
    pub fn bundle(&self, id: &str) -> Bundle {
        Bundle::new(apex_shim::bundle::bundle_dir(&self.home, id))
    }

    /// `$APEX_HOME`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The lock serializing lifecycle operations on one container.
    pub(crate) fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("locks")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    fn put(&self, rec: &ContainerRecord) -> Result<(), Error> {
        self.store.put(rec).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("cannot save container state: {e:#}"),
            )
        })?;
        let _ = self.changed.send(rec.id.clone());
        Ok(())
    }

    /// Finds a container by full id, name, or unique id prefix.
    pub fn resolve(&self, what: &str) -> Result<ContainerRecord, Error> {
        if what.is_empty() {
            return Err(not_found(what));
        }
        if let Some(r) = self.store.get(what).ok().flatten() {
            return Ok(r);
        }
        let all = self.store.list()?;
        if let Some(r) = all.iter().find(|r| r.name == what) {
            return Ok(r.clone());
        }
        let hits: Vec<_> = all.into_iter().filter(|r| r.id.starts_with(what)).collect();
        match hits.len() {
            0 => Err(not_found(what)),
            1 => Ok(hits.into_iter().next().expect("one")),
            n => Err(Error::new(
                ErrorKind::BadRequest,
                format!("{what:?} matches {n} containers: give more of the id"),
            )),
        }
    }

    /// `GET /v1/containers`.
    pub fn list(&self, all: bool) -> Result<Vec<ContainerSummary>, Error> {
        let mut recs = self.store.list()?;
        recs.sort_by(|a, b| b.created.cmp(&a.created));
        Ok(recs
            .into_iter()
            .filter(|r| {
                all || matches!(
                    r.state,
                    ContainerState::Running | ContainerState::Restarting
                )
            })
            .map(|r| summary(&r))
            .collect())
    }

    /// `POST /v1/containers`.
    pub async fn create(&self, req: CreateRequest) -> Result<Created, Error> {
        if let Some(n) = &req.name {
            if !valid_name(n) {
                return Err(Error::new(
                    ErrorKind::BadRequest,
                    format!("invalid container name {n:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"),
                ));
            }
        }
        let network = req
            .network
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| apex_net::ipam::DEFAULT_NETWORK.to_string());
        self.networks.check_exists(&network)?;
        networks::parse_publish(&req.publish)?;
        let storage = req.storage_size.unwrap_or(mounts::DEFAULT_STORAGE_BYTES);
        if storage < mounts::MIN_STORAGE_BYTES {
            return Err(Error::bad_request(format!(
                "storage size {storage} is too small: the writable layer needs at least {} MiB",
                mounts::MIN_STORAGE_BYTES >> 20
            )));
        }
        let home = self.home.clone();
        let image = req.image.clone();
        let (rec, image_cfg) = tokio::task::spawn_blocking(move || -> Result<_, Error> {
            let store = apex_oci::ImageStore::open(&home)?;
            let rec = match store.resolve(&image) {
                Ok((rec, _)) => rec,
                Err(e)
                    if e.downcast_ref::<apex_oci::ImageError>()
                        .is_some_and(|e| matches!(e, apex_oci::ImageError::NotFoundLocally(_))) =>
                {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("no such image: {image}"),
                    ))
                }
                Err(e) => return Err(e.into()),
            };
            let cfg = ImageProcessConfig::from_image_config(&store.config_json(&rec)?)?;
            Ok((rec, cfg))
        })
        .await
        .map_err(|e| anyhow::anyhow!("worker failed: {e}"))??;
        let mut wanted = mounts::parse_all(
            &req.volumes,
            &req.mounts,
            &req.tmpfs,
            &image_cfg.volume_paths(),
        )?;
        self.add_volumes_from(&req.volumes_from, &mut wanted)?;
        let home = self.home.clone();
        let rootfs = {
            let store = apex_oci::ImageStore::open(&home)?;
            store.ensure_rootfs(&rec).await?.path
        };
        let id = random_hex(32);
        let _names = self.create_lock.lock().await;
        let existing = self.store.list()?;
        let taken = |n: &str| existing.iter().any(|r| r.name == n);
        let name = match &req.name {
            Some(n) if taken(n) => {
                let other = existing.iter().find(|r| &r.name == n).expect("taken");
                return Err(conflict(format!(
                    "the name {n:?} is already in use by container {}: remove it or pick another name",
                    &other.id[..12]
                )));
            }
            Some(n) => n.clone(),
            None => generated_name(&taken),
        };
        let hostname = match &req.hostname {
            Some(h) if !h.is_empty() => h.clone(),
            _ if req.hostname_id => id[..12].to_string(),
            _ => name.clone(),
        };
        let overrides = RunOverrides {
            entrypoint: req.entrypoint.clone(),
            command: req.command.clone(),
            env: req.env.clone(),
            env_files: vec![],
            workdir: req.workdir.clone(),
            user: req.user.clone(),
            tty: req.tty,
            hostname: Some(hostname.clone()),
        };
        let mut process = spec::resolve(&image_cfg, &overrides, |_| None)
            .map_err(|e| Error::new(ErrorKind::BadRequest, format!("{e:#}")))?;
        if req.build_step {
            // A build step's container idles; its commands run as execs.
            process.args = vec![apex_agent_proto::api::tools::PAUSE.into()];
            process.tool = true;
        }
        let (entrypoint, cmd) = spec::split_command(&image_cfg, &overrides);
        let mut labels = image_cfg.labels.clone().unwrap_or_default();
        labels.extend(req.labels.clone());
        let mut exposed_ports: Vec<String> = image_cfg
            .exposed_ports
            .as_ref()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        for p in &req.exposed_ports {
            let p = if p.contains('/') {
                p.clone()
            } else {
                format!("{p}/tcp")
            };
            if !exposed_ports.contains(&p) {
                exposed_ports.push(p);
            }
        }
        let healthcheck = match (&req.healthcheck, &image_cfg.healthcheck) {
            (Some(h), Some(img)) if h.test.is_empty() => Some(HealthConfig {
                test: img.test.clone(),
                ..h.clone()
            }),
            (Some(h), _) => Some(h.clone()),
            (None, img) => img.clone(),
        }
        .filter(|h| !h.test.is_empty() && h.test[0] != "NONE");
        let stop_signal = req
            .stop_signal
            .clone()
            .or_else(|| image_cfg.stop_signal.clone())
            .filter(|s| !s.is_empty());
        if let Some(sig) = &stop_signal {
            if parse_signal(sig).is_none() {
                return Err(Error::bad_request(format!("invalid stop signal {sig:?}")));
            }
        }
        if let Some(m) = req.memory_mib.filter(|m| *m < apex_vm::MIN_MEMORY_MIB) {
            return Err(Error::bad_request(format!(
                "Minimum memory limit allowed is {}MB: a container VM needs at least {} MiB (asked for {m} MiB)",
                apex_vm::MIN_MEMORY_MIB,
                apex_vm::MIN_MEMORY_MIB
            )));
        }
        for h in &req.extra_hosts {
            if h.split_once(':')
                .is_none_or(|(n, ip)| n.is_empty() || ip.is_empty())
            {
                return Err(Error::bad_request(format!(
                    "invalid extra host {h:?}: use name:ip"
                )));
            }
        }
        let rec = ContainerRecord {
            id: id.clone(),
            name: name.clone(),
            image: req.image.clone(),
            created: now(),
            state: ContainerState::Created,
            config: ContainerConfig {
                process,
                stdin_open: req.stdin_open,
                cpus: req.cpus.unwrap_or(1).max(1),
                memory_mib: req.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
                boot_timeout_s: req.boot_timeout_s.unwrap_or(60),
                restart: req.restart,
                auto_remove: req.auto_remove,
                rootfs,
                image_id: rec.config_digest.to_string(),
                network: Some(network),
                publish: req.publish.clone(),
                read_only_rootfs: req.read_only,
                entrypoint,
                cmd,
                labels,
                hostname,
                domainname: req.domainname.clone().unwrap_or_default(),
                exposed_ports,
                publish_all: req.publish_all,
                stop_signal,
                stop_timeout: req.stop_timeout,
                healthcheck,
                init: req.init,
                extra_hosts: req.extra_hosts.clone(),
                dns: req.dns.clone(),
                dns_search: req.dns_search.clone(),
                dns_options: req.dns_options.clone(),
                aliases: req.aliases.clone(),
                stdin_once: false,
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
        };
        let bundle = self.bundle(&id);
        std::fs::create_dir_all(bundle.dir())
            .with_context(|| format!("cannot create {}", bundle.dir().display()))?;
        // Nothing is left half-created: the bundle (with the disk) and the volumes this
        // create made go again if a later step fails.
        let undo_bundle = |e: Error| {
            let _ = std::fs::remove_dir_all(bundle.dir());
            e
        };
        if !req.read_only {
            let disk = bundle.upper_disk();
            tokio::task::spawn_blocking(move || {
                apex_runtime::fs::create_upper_disk(&disk, storage)
            })
            .await
            .map_err(|e| Error::internal(format!("worker failed: {e}")))
            .and_then(|r| r.map_err(Error::from))
            .map_err(undo_bundle)?;
        }
        let mut rec = rec;
        let vols = self.volumes.lock().await;
        let (mounts, created) = self.materialize(&wanted).map_err(undo_bundle)?;
        rec.mounts = mounts;
        if let Err(e) = self.put(&rec) {
            self.volumes.discard_locked(&created);
            return Err(undo_bundle(e));
        }
        drop(vols);
        tracing::info!(id = &id[..12], name, image = req.image, "container created");
        self.event(&rec, "create", &[]);
        Ok(Created { id, name })
    }

    /// `--volumes-from NAME[:ro|rw]`: the bind mounts and volumes of other containers,
    /// at the same paths (unless this one mounts something there already).
    fn add_volumes_from(&self, from: &[String], wanted: &mut Vec<Wanted>) -> Result<(), Error> {
        for spec in from {
            let (name, mode) = spec.split_once(':').unwrap_or((spec.as_str(), ""));
            let ro = match mode {
                "" | "rw" => None,
                "ro" => Some(true),
                m => {
                    return Err(Error::bad_request(format!(
                        "invalid mode {m:?} in --volumes-from {spec}: use ro or rw"
                    )))
                }
            };
            let other = self.resolve(name)?;
            for m in other.mounts.iter().filter(|m| m.kind != MountType::Tmpfs) {
                if wanted.iter().any(|w| w.target == m.destination) {
                    continue;
                }
                let mut w = mounts::Wanted::from_mount_point(m);
                if let Some(ro) = ro {
                    w.read_only = ro;
                }
                wanted.push(w);
            }
        }
        wanted.sort_by_key(|w| w.target.matches('/').count());
        Ok(())
    }

    /// Makes what the mounts need (bind sources given with `-v`, volumes) and returns
    /// the mount points with the volumes created now. The caller holds the volume lock.
    fn materialize(&self, wanted: &[Wanted]) -> Result<(Vec<MountPoint>, Vec<String>), Error> {
        let mut out = Vec::new();
        let mut created = Vec::new();
        let res = (|| {
            for w in wanted {
                let (name, source) = match w.kind {
                    MountType::Bind => {
                        let src = w.source.clone().unwrap_or_default();
                        if w.create_source && !Path::new(&src).exists() {
                            std::fs::create_dir_all(&src).map_err(|e| {
                                Error::bad_request(format!(
                                    "cannot create the bind source path {src}: {e}"
                                ))
                            })?;
                        }
                        (None, src)
                    }
                    MountType::Volume => {
                        let (v, new) = self.volumes.ensure_locked(
                            w.source.as_deref(),
                            Default::default(),
                            w.source.is_none(),
                        )?;
                        if new {
                            created.push(v.name.clone());
                        }
                        let dir = self.volumes.data_dir(&v.name);
                        (Some(v.name), dir.display().to_string())
                    }
                    MountType::Tmpfs => (None, String::new()),
                };
                out.push(MountPoint {
                    kind: w.kind,
                    name,
                    source,
                    destination: w.target.clone(),
                    read_only: w.read_only,
                    no_copy: w.no_copy,
                    tmpfs_size: w.tmpfs_size,
                    tmpfs_mode: w.tmpfs_mode,
                    noexec: w.noexec,
                });
            }
            Ok(())
        })();
        match res {
            Ok(()) => Ok((out, created)),
            Err(e) => {
                self.volumes.discard_locked(&created);
                Err(e)
            }
        }
    }

    /// The container's filesystem as the VM gets it: image rootfs, writable layer disk
    /// (if it has one) and mounts with host paths.
    pub(crate) fn filesystem(&self, rec: &ContainerRecord) -> Filesystem {
        let disk = self.bundle(&rec.id).upper_disk();
        let mounts = rec
            .mounts
            .iter()
            .map(|m| MountSpec {
                target: m.destination.clone(),
                read_only: m.read_only,
                source: match m.kind {
                    MountType::Tmpfs => Source::Tmpfs {
                        size_bytes: m.tmpfs_size,
                        mode: m.tmpfs_mode,
                        noexec: m.noexec,
                    },
                    MountType::Volume => {
                        let dir = m
                            .name
                            .as_deref()
                            .map(|n| self.volumes.data_dir(n))
                            .unwrap_or_else(|| PathBuf::from(&m.source));
                        // A volume's directory always exists while it is recorded.
                        let _ = std::fs::create_dir_all(&dir);
                        Source::Host {
                            path: dir,
                            populate: !m.no_copy,
                        }
                    }
                    MountType::Bind => Source::Host {
                        path: PathBuf::from(&m.source),
                        populate: false,
                    },
                },
            })
            .collect();
        Filesystem {
            rootfs: rec.config.rootfs.clone(),
            upper_disk: disk.exists().then_some(disk),
            mounts,
            read_only_root: rec.config.read_only_rootfs,
        }
    }

    /// Starts a created or exited container; no-op if it runs.
    pub async fn start(
        self: &Arc<Self>,
        what: &str,
        wait_attach: bool,
    ) -> Result<ContainerRecord, Error> {
        let id = self.resolve(what)?.id;
        let lock = self.lock_of(&id);
        let _g = lock.lock().await;
        let mut rec = self.resolve(&id)?;
        rec.stopped_by_user = false;
        self.start_locked(rec, wait_attach).await
    }

    async fn start_locked(
        self: &Arc<Self>,
        mut rec: ContainerRecord,
        wait_attach: bool,
    ) -> Result<ContainerRecord, Error> {
        if rec.state == ContainerState::Running {
            return Ok(rec);
        }
        // Clients that attached before the start see the process from its first byte.
        let pending = self.take_pending(&rec.id);
        let wait_attach = wait_attach || !pending.is_empty();
        let bundle = self.bundle(&rec.id);
        std::fs::create_dir_all(bundle.dir())
            .with_context(|| format!("cannot create {}", bundle.dir().display()))?;
        // The mounts' sources must exist (a bind source may have been deleted since
        // create): say so before anything is set up.
        self.filesystem(&rec)
            .plan()
            .map_err(|e| Error::bad_request(format!("{e:#}")))?;
        // Ports first: a port in use fails the start before anything else exists.
        let specs = networks::parse_publish(&publish_specs(&rec))?;
        let ports = self
            .networks
            .publish(&rec.id, &specs, &bundle.socket())
            .await?;
        let net = match self.networks.attach(&rec).await {
            Ok(n) => n,
            Err(e) => {
                self.networks.unpublish(&rec.id).await;
                return Err(e);
            }
        };
        let attachment = net.as_ref().map(|n| n.attachment.clone());
        let cfg = ShimConfig {
            id: rec.id.clone(),
            name: rec.name.clone(),
            home: self.home.clone(),
            fs: self.filesystem(&rec),
            hostname: if rec.config.hostname.is_empty() {
                rec.name.clone()
            } else {
                rec.config.hostname.clone()
            },
            cpus: rec.config.cpus,
            memory_mib: rec.config.memory_mib,
            boot_timeout_s: rec.config.boot_timeout_s,
            process: apex_runtime::spec::ProcessSpec {
                init: rec.config.init,
                ..rec.config.process.clone()
            },
            stdin_open: rec.config.stdin_open,
            wait_attach,
            log_max_bytes: LOG_MAX_BYTES,
            nics: net.as_ref().map(|n| n.nics.clone()).unwrap_or_default(),
            network: net.map(|n| n.guest),
            healthcheck: rec.config.healthcheck.clone(),
            auto_remove: rec.config.auto_remove,
        };
        let spawned = async {
            bundle.write_config(&cfg).map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("cannot write the container config: {e:#}"),
                )
            })?;
            let _ = std::fs::remove_file(bundle.exit_file());
            self.spawn_shim(&bundle).await
        }
        .await;
        let pid = match spawned {
            Ok(pid) => pid,
            Err(e) => {
                self.networks.detach(&rec.id, attachment.as_ref()).await;
                return Err(e);
            }
        };
        rec.state = ContainerState::Running;
        rec.health = None;
        rec.started_at = Some(now());
        rec.finished_at = None;
        rec.exit_code = None;
        rec.exit_reason = None;
        rec.shim_pid = Some(pid);
        rec.network = attachment;
        rec.ports = ports;
        self.put(&rec)?;
        self.networks.register(&rec);
        self.event(&rec, "start", &[]);
        tracing::info!(
            id = &rec.id[..12],
            shim_pid = pid,
            "container helper started"
        );
        self.clone().monitor(rec.id.clone(), pid);
        for p in pending {
            let stream = self.attach_stream(&rec.id, p.stdin).await;
            let _ = p.tx.send(stream);
        }
        if !wait_attach {
            // Like `docker start`: answer once the process runs, or with why it could not.
            let timeout = Duration::from_secs(rec.config.boot_timeout_s) + SHIM_READY;
            if let Some(exit) = wait_running(&bundle, timeout).await {
                let msg = exit
                    .error
                    .or(exit.reason)
                    .unwrap_or_else(|| format!("exited at once with code {}", exit.exit_code));
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!("container {} failed to start: {msg}", rec.name),
                ));
            }
        }
        Ok(rec)
    }

    /// Spawns the shim in its own session (it outlives apexd) and waits for its socket.
    async fn spawn_shim(&self, bundle: &Bundle) -> Result<u32, Error> {
        let bin = shim_bin()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(bundle.shim_log())
            .with_context(|| format!("cannot open {}", bundle.shim_log().display()))?;
        let _ = std::fs::remove_file(bundle.socket());
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.arg("--bundle")
            .arg(bundle.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: the closure runs in the forked child before exec and only calls
        // setsid(2), which is async-signal-safe and touches no shared memory.
        unsafe {
            cmd.as_std_mut().pre_exec(|| {
                rustix::process::setsid()?;
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().unwrap_or(0);
        let deadline = tokio::time::Instant::now() + SHIM_READY;
        let sock = bundle.socket();
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                let log = std::fs::read_to_string(bundle.shim_log()).unwrap_or_default();
                let tail: Vec<_> = log.lines().rev().take(5).collect();
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!(
                        "the container helper exited at start ({st}): {}",
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    ),
                ));
            }
            if UnixStream::connect(&sock).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!("the container helper did not answer within {SHIM_READY:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Reap it when it exits (while we live; after an apexd restart init does).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(pid)
    }

    /// Watches one shim until its container exits, then records the exit.
    fn monitor(self: Arc<Self>, id: String, shim_pid: u32) {
        tokio::spawn(async move {
            let bundle = self.bundle(&id);
            let mut exit = None;
            if let Ok(mut statuses) = proto::watch(&bundle.socket()).await {
                while let Ok(Some(st)) = statuses.next().await {
                    if st.phase == Phase::Exited {
                        exit = st.exit;
                        break;
                    }
                    if let Some(h) = st.health {
                        self.on_health(&id, shim_pid, h).await;
                    }
                }
            }
            let exit = match exit {
                Some(e) => e,
                None => {
                    // Gone without answering: give it a moment to finish writing.
                    wait_pid_gone(shim_pid, Duration::from_secs(3)).await;
                    bundle.read_exit().unwrap_or_else(|| Exit {
                        exit_code: 255,
                        reason: Some("the container helper died".into()),
                        error: None,
                    })
                }
            };
            // The shim exits right after answering; let it finish so a restart never
            // races it for the bundle.
            wait_pid_gone(shim_pid, Duration::from_secs(5)).await;
            self.on_exit(&id, shim_pid, exit).await;
        });
    }

    /// Records a healthcheck result of the shim `shim_pid`; a new status is an event
    /// (`health_status: healthy`).
    async fn on_health(&self, id: &str, shim_pid: u32, health: Health) {
        let lock = self.lock_of(id);
        let _g = lock.lock().await;
        let Ok(Some(mut rec)) = self.store.get(id) else {
            return;
        };
        if rec.shim_pid != Some(shim_pid) || rec.health.as_ref() == Some(&health) {
            return;
        }
        // Docker announces healthy and unhealthy, not the initial `starting`.
        let changed = rec.health.as_ref().map(|h| &h.status) != Some(&health.status)
            && health.status != crate::model::HEALTH_STARTING;
        rec.health = Some(health);
        if self.put(&rec).is_ok() && changed {
            let status = &rec.health.as_ref().expect("just set").status;
            self.event(&rec, &format!("health_status: {status}"), &[]);
        }
    }

    /// Records an exit of the shim `shim_pid` and applies the restart policy.
    async fn on_exit(self: &Arc<Self>, id: &str, shim_pid: u32, exit: Exit) {
        let lock = self.lock_of(id);
        let g = lock.lock().await;
        let Ok(Some(mut rec)) = self.store.get(id) else {
            return;
        };
        if rec.shim_pid != Some(shim_pid) {
            return; // Already handled (stop, rm) or superseded by a newer start.
        }
        self.networks.detach(id, rec.network.as_ref()).await;
        rec.ports.clear();
        rec.state = ContainerState::Exited;
        rec.paused = false;
        rec.exit_code = Some(exit.exit_code);
        rec.exit_reason = exit.reason.clone().or(exit.error.clone());
        rec.finished_at = Some(now());
        rec.shim_pid = None;
        tracing::info!(
            id = &id[..12],
            code = exit.exit_code,
            reason = ?rec.exit_reason,
            "container exited"
        );
        self.event(&rec, "die", &[("exitCode", exit.exit_code.to_string())]);
        if rec.config.auto_remove {
            drop(g);
            let _ = self.remove_locked_free(&rec).await;
            return;
        }
        let restart = should_restart(&rec);
        if restart {
            rec.state = ContainerState::Restarting;
        }
        if self.put(&rec).is_err() {
            return;
        }
        drop(g);
        if restart {
            let delay = Duration::from_millis(100)
                .saturating_mul(1 << rec.restart_count.min(7))
                .min(MAX_BACKOFF);
            let me = self.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let lock = me.lock_of(&id);
                let _g = lock.lock().await;
                let Ok(Some(mut rec)) = me.store.get(&id) else {
                    return;
                };
                if rec.state != ContainerState::Restarting {
                    return; // stopped or removed meanwhile
                }
                rec.restart_count += 1;
                tracing::info!(id = &id[..12], count = rec.restart_count, "restarting");
                if let Err(e) = me.start_locked(rec.clone(), false).await {
                    tracing::error!(id = &id[..12], "restart failed: {}", e.message());
                    rec.state = ContainerState::Exited;
                    rec.exit_reason = Some(format!("restart failed: {}", e.message()));
                    let _ = me.put(&rec);
                }
            });
        }
    }

    /// `POST .../stop`: the stop signal (default SIGTERM), then SIGKILL after
    /// `timeout_s` (default: the container's stop timeout, else 10 s).
    pub async fn stop(&self, what: &str, timeout_s: Option<u64>) -> Result<ContainerRecord, Error> {
        let id = self.resolve(what)?.id;
        let lock = self.lock_of(&id);
        let _g = lock.lock().await;
        let mut rec = self.resolve(&id)?;
        rec.stopped_by_user = true;
        if rec.state == ContainerState::Restarting {
            rec.state = ContainerState::Exited;
        }
        if rec.state != ContainerState::Running {
            self.put(&rec)?;
            return Ok(rec);
        }
        self.put(&rec)?;
        let sock = self.bundle(&id).socket();
        let timeout_s = timeout_s.or(rec.config.stop_timeout).unwrap_or(10);
        let signal = rec.config.stop_signal.as_deref().and_then(parse_signal);
        let res = proto::request::<Option<Exit>>(&sock, &Request::Stop { timeout_s, signal }).await;
        let exit = match res {
            Ok(Some(e)) => e,
            _ => self.bundle(&id).read_exit().unwrap_or(Exit {
                exit_code: 137,
                reason: Some("the container helper was gone".into()),
                error: None,
            }),
        };
        if let Some(pid) = rec.shim_pid {
            wait_pid_gone(pid, Duration::from_secs(5)).await;
        }
        self.networks.detach(&id, rec.network.as_ref()).await;
        rec.ports.clear();
        rec.state = ContainerState::Exited;
        rec.paused = false;
        rec.exit_code = Some(exit.exit_code);
        rec.exit_reason = exit.reason.or(exit.error);
        rec.finished_at = Some(now());
        rec.shim_pid = None;
        self.put(&rec)?;
        self.event(&rec, "die", &[("exitCode", exit.exit_code.to_string())]);
        self.event(&rec, "stop", &[]);
        Ok(rec)
    }

    /// `POST .../kill`.
    pub async fn kill(&self, what: &str, signal: i32) -> Result<(), Error> {
        let id = self.resolve(what)?.id;
        let lock = self.lock_of(&id);
        let _g = lock.lock().await;
        let mut rec = self.resolve(&id)?;
        if rec.state != ContainerState::Running {
            return Err(conflict(format!("container {} is not running", rec.name)));
        }
        rec.stopped_by_user = true;
        // The helper resumes a paused VM to deliver the signal.
        rec.paused = false;
        self.put(&rec)?;
        self.event(&rec, "kill", &[("signal", signal.to_string())]);
        proto::request::<()>(&self.bundle(&id).socket(), &Request::Kill { signal })
            .await
            .map_err(shim_err)
    }

    /// `DELETE /v1/containers/{id}`; `volumes` also removes its anonymous volumes.
    pub async fn remove(&self, what: &str, force: bool, volumes: bool) -> Result<(), Error> {
        let rec = self.resolve(what)?;
        let lock = self.lock_of(&rec.id);
        let _g = lock.lock().await;
        let rec = self.resolve(&rec.id)?;
        if rec.state == ContainerState::Running {
            if !force {
                return Err(conflict(format!(
                    "container {} is running: stop it first or use rm -f",
                    rec.name
                )));
            }
            let sock = self.bundle(&rec.id).socket();
            let _ = proto::request::<()>(&sock, &Request::Kill { signal: 9 }).await;
            if let Some(pid) = rec.shim_pid {
                if !wait_pid_gone(pid, Duration::from_secs(5)).await {
                    kill_pid(pid);
                    wait_pid_gone(pid, Duration::from_secs(2)).await;
                }
            }
        }
        self.remove_record(&rec, volumes).await
    }

    /// `--rm`: removes the container and its anonymous volumes (as Docker).
    async fn remove_locked_free(&self, rec: &ContainerRecord) -> Result<(), Error> {
        let lock = self.lock_of(&rec.id);
        let _g = lock.lock().await;
        self.remove_record(rec, true).await
    }

    /// Deletes the record and bundle (with the writable layer); the container's ports,
    /// tap and address go too, and its anonymous volumes with `volumes`.
    async fn remove_record(&self, rec: &ContainerRecord, volumes: bool) -> Result<(), Error> {
        // A helper that was killed leaves its (empty) cgroup behind.
        if let Some(name) = self.bundle(&rec.id).dir().file_name() {
            apex_runtime::cgroup::remove_stale(&name.to_string_lossy());
        }
        let id = rec.id.as_str();
        self.networks.release(rec).await;
        {
            let _v = self.volumes.lock().await;
            self.store.delete(id)?;
            if volumes {
                let names: Vec<String> = rec.mounts.iter().filter_map(|m| m.name.clone()).collect();
                if let Err(e) = self.volumes.remove_anonymous_locked(&names) {
                    tracing::warn!(id = &id[..12], "removing anonymous volumes: {e}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.bundle(id).dir());
        self.locks.lock().expect("locks").remove(id);
        let _ = self.changed.send(id.to_string());
        tracing::info!(id = &id[..12], "container removed");
        self.event(rec, "destroy", &[]);
        Ok(())
    }

    /// `POST /v1/containers/prune`: removes every exited or created container.
    pub async fn prune(&self) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for r in self.store.list()? {
            if matches!(r.state, ContainerState::Exited | ContainerState::Created)
                && self.remove(&r.id, false, false).await.is_ok()
            {
                out.push(r.id);
            }
        }
        Ok(out)
    }

    /// `GET .../wait`: blocks until the container is not running.
    pub async fn wait(self: &Arc<Self>, what: &str) -> Result<WaitResult, Error> {
        self.wait_for(what, wait::WaitCondition::NotRunning).await
    }

    /// `GET .../stats`.
    pub async fn stats(&self, what: &str) -> Result<Stats, Error> {
        let rec = self.resolve(what)?;
        if rec.state != ContainerState::Running {
            return Err(conflict(format!("container {} is not running", rec.name)));
        }
        proto::request(&self.bundle(&rec.id).socket(), &Request::Stats)
            .await
            .map_err(shim_err)
    }

    /// Connects to a running container's shim for an attach.
    pub async fn attach_stream(&self, id: &str, stdin: bool) -> Result<UnixStream, Error> {
        let sock = self.bundle(id).socket();
        let (_, s) = proto::call(&sock, &Request::Attach { stdin })
            .await
            .map_err(shim_err)?;
        Ok(s)
    }

    /// `POST .../exec`: registers an exec; it runs on `POST /v1/exec/{id}/start`.
    pub fn exec_create(&self, what: &str, req: ExecRequest) -> Result<Created, Error> {
        let rec = self.resolve(what)?;
        if rec.state != ContainerState::Running {
            return Err(conflict(format!("container {} is not running", rec.name)));
        }
        if req.command.is_empty() {
            return Err(Error::new(ErrorKind::BadRequest, "exec needs a command"));
        }
        let id = random_hex(32);
        let spec = ExecSpec {
            args: req.command,
            env: req.env,
            workdir: req.workdir,
            user: req.user,
            tty: req.tty,
            stdin: req.stdin,
            ..Default::default()
        };
        self.execs
            .lock()
            .expect("execs")
            .insert(id.clone(), (rec.id, spec));
        Ok(Created {
            id,
            name: String::new(),
        })
    }

    /// Starts a registered exec; the returned stream carries its frames.
    pub async fn exec_start(&self, exec_id: &str) -> Result<UnixStream, Error> {
        let (cid, spec) = self
            .execs
            .lock()
            .expect("execs")
            .remove(exec_id)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no such exec: {exec_id}")))?;
        let sock = self.bundle(&cid).socket();
        let (_, s) = proto::call(&sock, &Request::Exec(spec))
            .await
            .map_err(shim_err)?;
        Ok(s)
    }

    /// Subscribes to container changes (ids).
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changed.subscribe()
    }

    /// After an apexd restart: re-attach to live shims, record exits that happened while
    /// we were down, and apply restart policies.
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        for rec in self.store.list()? {
            let bundle = self.bundle(&rec.id);
            match rec.state {
                ContainerState::Running => {
                    let pid = rec.shim_pid.unwrap_or(0);
                    let alive = bundle.live_shim_pid() == Some(pid)
                        && UnixStream::connect(bundle.socket()).await.is_ok();
                    if alive {
                        tracing::info!(id = &rec.id[..12], shim_pid = pid, "re-attached");
                        self.networks.reattach(&rec, &bundle.socket()).await;
                        self.clone().monitor(rec.id.clone(), pid);
                    } else {
                        let exit = bundle.read_exit().unwrap_or(Exit {
                            exit_code: 255,
                            reason: Some("the container helper died while apexd was down".into()),
                            error: None,
                        });
                        tracing::info!(id = &rec.id[..12], "exited while apexd was down");
                        self.on_exit(&rec.id, pid, exit).await;
                    }
                }
                ContainerState::Restarting => {
                    let pid = rec.shim_pid.unwrap_or(0);
                    let mut r = rec.clone();
                    r.state = ContainerState::Running;
                    r.shim_pid = Some(pid);
                    self.store.put(&r)?;
                    self.on_exit(
                        &rec.id,
                        pid,
                        Exit {
                            exit_code: rec.exit_code.unwrap_or(0),
                            reason: rec.exit_reason.clone(),
                            error: None,
                        },
                    )
                    .await;
                }
                ContainerState::Exited
                    if rec.config.restart == RestartPolicy::Always && rec.stopped_by_user =>
                {
                    // Docker semantics: `always` comes back when the daemon starts.
                    let me = self.clone();
                    let id = rec.id.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.start(&id, false).await {
                            tracing::error!(id = &id[..12], "restart failed: {}", e.message());
                        }
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Polls the shim until the main process runs (`None`) or it ended first (its exit).
async fn wait_running(bundle: &Bundle, timeout: Duration) -> Option<Exit> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match proto::request::<proto::Status>(&bundle.socket(), &Request::Status).await {
            Ok(st) => match st.phase {
                proto::Phase::Running => return None,
                proto::Phase::Exited => return Some(st.exit.unwrap_or_default()),
                proto::Phase::Booting => {}
            },
            // Gone: it recorded its exit (or died; the monitor reports that).
            Err(_) => {
                return bundle.read_exit().or(Some(Exit {
                    exit_code: 255,
                    reason: Some("the container helper died while starting".into()),
                    error: None,
                }))
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None; // still booting; the watchdog in the shim ends it
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The ports to publish: those given, and with `publish_all` every exposed port not
/// among them (on a free host port).
fn publish_specs(rec: &ContainerRecord) -> Vec<String> {
    let mut out = rec.config.publish.clone();
    if rec.config.publish_all {
        let given = networks::parse_publish(&out).unwrap_or_default();
        for p in &rec.config.exposed_ports {
            let Ok(spec) = p.parse::<apex_net::forward::PortSpec>() else {
                continue;
            };
            let covered = given
                .iter()
                .any(|g| g.container_port == spec.container_port && g.protocol == spec.protocol);
            if !covered {
                out.push(p.clone());
            }
        }
    }
    out
}

/// Whether the restart policy restarts this just-exited container.
fn should_restart(rec: &ContainerRecord) -> bool {
    match rec.config.restart {
        RestartPolicy::No => false,
        _ if rec.stopped_by_user => false,
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        RestartPolicy::OnFailure { max_retries } => {
            rec.exit_code != Some(0) && (max_retries == 0 || rec.restart_count < max_retries)
        }
    }
}

fn shim_err(e: ShimError) -> Error {
    match e {
        ShimError::Gone(_) => conflict("container is not running (its helper is gone)"),
        ShimError::Refused(m) => conflict(m),
        ShimError::Io(e) => Error::new(ErrorKind::Internal, format!("container helper: {e}")),
    }
}

fn kill_pid(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// Waits until `pid` no longer exists (or is a zombie); whether it went within `timeout`.
async fn wait_pid_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while apex_shim::bundle::pid_alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The `ls` row of a record.
pub fn summary(r: &ContainerRecord) -> ContainerSummary {
    let since = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| human_duration(chrono::Utc::now().signed_duration_since(t)))
            .unwrap_or_else(|| "?".into())
    };
    let status = match r.state {
        ContainerState::Created => "Created".to_string(),
        ContainerState::Running => {
            let up = format!("Up {}", since(&r.started_at));
            match &r.health {
                _ if r.paused => format!("{up} (Paused)"),
                Some(h) if h.status == crate::model::HEALTH_STARTING => {
                    format!("{up} (health: starting)")
                }
                Some(h) => format!("{up} ({})", h.status),
                None => up,
            }
        }
        ContainerState::Restarting => {
            format!(
                "Restarting ({}) {} ago",
                r.exit_code.unwrap_or(0),
                since(&r.finished_at)
            )
        }
        ContainerState::Exited => {
            format!(
                "Exited ({}) {} ago",
                r.exit_code.unwrap_or(0),
                since(&r.finished_at)
            )
        }
    };
    let ports = if r.state == ContainerState::Running {
        r.ports.iter().map(networks::port_display).collect()
    } else {
        vec![]
    };
    ContainerSummary {
        id: r.id.clone(),
        name: r.name.clone(),
        image: r.image.clone(),
        command: r.config.process.args.join(" "),
        created: r.created.clone(),
        state: r.state,
        status,
        exit_code: r.exit_code,
        ports,
    }
}

fn human_duration(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0 => "less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "1 minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "1 hour".into(),
        7200..=86399 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Some(15));
        assert_eq!(parse_signal("sigkill"), Some(9));
        assert_eq!(parse_signal("SIGUSR1"), Some(10));
        assert_eq!(parse_signal("2"), Some(2));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("NOPE"), None);
    }

    #[test]
    fn names() {
        assert!(valid_name("web-1.a_b"));
        assert!(!valid_name("-web"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a/b"));
        let n = generated_name(&|_| false);
        assert!(valid_name(&n) && n.contains('_'), "{n}");
        let n2 = generated_name(&|n| !n.ends_with('3'));
        assert!(n2.ends_with('3'), "{n2}");
    }

    fn record(id: &str, name: &str) -> ContainerRecord {
        let mut r = crate::store::test_record(id, name, ContainerState::Exited);
        r.exit_code = Some(1);
        r
    }

    #[test]
    fn restart_decisions() {
        let mut r = record(&"a".repeat(64), "a");
        assert!(!should_restart(&r), "no");
        r.config.restart = RestartPolicy::OnFailure { max_retries: 2 };
        assert!(should_restart(&r));
        r.restart_count = 2;
        assert!(!should_restart(&r), "retry limit");
        r.config.restart = RestartPolicy::OnFailure { max_retries: 0 };
        assert!(should_restart(&r), "0 = unbounded");
        r.exit_code = Some(0);
        assert!(!should_restart(&r), "success is not a failure");
        r.config.restart = RestartPolicy::Always;
        assert!(should_restart(&r));
        r.config.restart = RestartPolicy::UnlessStopped;
        assert!(should_restart(&r));
        r.stopped_by_user = true;
        assert!(!should_restart(&r), "explicit stop wins");
        r.config.restart = RestartPolicy::Always;
        assert!(!should_restart(&r), "until the daemon restarts");
    }

    #[test]
    fn resolve_by_id_name_and_unique_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(&dir.path().join("state.redb")).unwrap());
        let a = record(&format!("ab{}", "1".repeat(62)), "web");
        let b = record(&format!("ac{}", "2".repeat(62)), "db");
        store.put(&a).unwrap();
        store.put(&b).unwrap();
        let nets = Networks::user_mode(dir.path(), store.clone(), "test");
        let events = Arc::new(Events::default());
        let vols = Volumes::new(dir.path(), store.clone(), events.clone());
        let c = Containers::new(dir.path(), store, nets, vols, events);
        assert_eq!(c.resolve(&a.id).unwrap().name, "web");
        assert_eq!(c.resolve("db").unwrap().id, b.id);
        assert_eq!(c.resolve("ab1").unwrap().name, "web");
        let amb = c.resolve("a").unwrap_err();
        assert_eq!(amb.kind(), ErrorKind::BadRequest);
        assert!(amb.message().contains("matches 2"), "{}", amb.message());
        assert_eq!(c.resolve("zz").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(c.resolve("").unwrap_err().kind(), ErrorKind::NotFound);
        let l = c.list(true).unwrap();
        assert_eq!(l.len(), 2);
        assert!(
            l.iter().all(|s| s.status.starts_with("Exited (1)")),
            "{l:?}"
        );
        assert!(c.list(false).unwrap().is_empty());
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(chrono::TimeDelta::seconds(5)), "5 seconds");
        assert_eq!(human_duration(chrono::TimeDelta::seconds(130)), "2 minutes");
        assert_eq!(
            human_duration(chrono::TimeDelta::seconds(-3)),
            "less than a second"
        );
    }
}
