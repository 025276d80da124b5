//! Container API types, shared by the daemon and the `apex` client.
//!
//! Routes (all JSON unless noted; errors are `{"message"}` with 4xx/5xx):
//! - `POST /v1/containers` [`CreateRequest`] → 201 [`Created`] (404 if the image is not
//!   local: the client pulls it and retries; 409 if the name is taken)
//! - `GET /v1/containers?all=true` → `[ContainerSummary]` (running only without `all`)
//! - `GET /v1/containers/{id}` → [`ContainerRecord`] (`{id}`: full id, unique prefix, name)
//! - `POST /v1/containers/{id}/start` → 200 [`ContainerRecord`] once the helper runs
//! - `POST /v1/containers/{id}/attach?stdin=true&start=true` with `Connection: Upgrade`,
//!   `Upgrade: apex-stream` → 101, then [`apex_shim::stream`] frames both ways (`start`
//!   starts a created container after the client is attached)
//! - `POST /v1/containers/{id}/stop?timeout=10` → 200 [`ContainerRecord`]
//! - `POST /v1/containers/{id}/kill?signal=TERM` (name or number) → 200 [`Message`]
//! - `POST /v1/containers/{id}/restart?timeout=10` → 200 [`ContainerRecord`]
//! - `GET /v1/containers/{id}/wait` → [`WaitResult`] once it is not running
//! - `DELETE /v1/containers/{id}?force=true` → 200 [`Message`]
//! - `POST /v1/containers/prune` → [`PruneReport`]
//! - `GET /v1/containers/{id}/logs?follow=true&tail=N` → NDJSON
//!   [`LogEntry`] lines (chunked; with `follow`, until the container stops)
//! - `GET /v1/containers/{id}/stats` → [`apex_shim::proto::Stats`]
//! - `POST /v1/containers/{id}/exec` [`ExecRequest`] → 201 [`Created`] (exec id)
//! - `GET /v1/networks` → `[NetworkInfo]`; `POST /v1/networks` [`NetworkCreate`] → 201
//!   [`NetworkInfo`] (409 name taken or subnet overlapping); `GET /v1/networks/{id}` →
//!   [`NetworkInfo`]; `DELETE /v1/networks/{id}` (409 while containers use it, 403 for
//!   `default`); `POST /v1/networks/prune` → [`PruneReport`] (networks without containers)
//! - `POST /v1/images/pull` [`PullRequest`] → NDJSON [`PullEvent`] lines, the last one
//!   `done` or `error`
//! - `POST /v1/exec/{exec_id}/start` with upgrade as for attach → 101 + frames, ending
//!   with an `Exit` frame carrying the exec'd process's exit code
//! - `DELETE /v1/containers/{id}?force=true&volumes=true` also removes its anonymous
//!   volumes
//! - `HEAD /v1/containers/{id}/archive?path=P` → 200 with [`ARCHIVE_STAT_HEADER`];
//!   `GET` the same plus a tar of `P` (its top entry named after `P`'s last component);
//!   `PUT ...?path=DIR&owner=true` with a tar body extracts it into the directory `DIR`
//!   (404 missing path, 400 not a directory). Stopped containers are served by a
//!   short-lived VM on their disk.
//! - `GET /v1/volumes` → `[VolumeInfo]`; `POST /v1/volumes` [`VolumeCreate`] → 201
//!   [`VolumeInfo`] (an existing name answers the existing volume); `GET
//!   /v1/volumes/{name}`; `DELETE /v1/volumes/{name}?force=true` (409 naming the
//!   containers that use it; `force` ignores a missing volume); `POST
//!   /v1/volumes/prune?all=true` → [`VolumePruneReport`] (unused anonymous volumes, all
//!   unused ones with `all`)
//!
//! [`Message`]: crate::api::Message

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::store::{ContainerRecord, ContainerState};

/// `GET /v1/version`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    /// Daemon version.
    pub version: String,
    /// API version ([`crate::API_VERSION`]).
    pub api_version: String,
    /// Host OS (`linux`).
    pub os: String,
    /// Host architecture (`x86_64`, `aarch64`).
    pub arch: String,
}

impl VersionInfo {
    /// This build's version.
    pub fn current() -> Self {
        VersionInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: crate::API_VERSION.into(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
        }
    }
}

/// `GET /v1/system/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SystemStatus {
    /// Daemon pid.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// `$APEX_HOME`.
    pub home: PathBuf,
    /// Number of containers in the state database.
    pub containers: u64,
    /// Number of local images.
    pub images: u64,
    /// `kvm`, `tcg` or `unknown` (no probe cached yet).
    pub accelerator: String,
    /// `bridge` (a bridge per network, container names resolve) or `user` (QEMU user-mode
    /// networking: outbound and published ports only).
    #[serde(default)]
    pub network_mode: String,
    /// Why user mode is used (absent in bridge mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_reason: Option<String>,
    /// The host DNS server (`127.0.0.1:PORT`) answering `<name>.test`; empty if none.
    #[serde(default)]
    pub dns: String,
    /// `DOCKER_HOST` for docker clients (`unix://$APEX_HOME/run/docker.sock`); empty if
    /// the Docker API is not served.
    #[serde(default)]
    pub docker_host: String,
}

/// One directory of `GET /v1/system/df`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirUsage {
    /// A directory of `$APEX_HOME` (see [`crate::info::DF_DIRS`]).
    pub name: String,
    /// Absolute path.
    pub path: PathBuf,
    /// Bytes allocated on disk.
    pub bytes: u64,
}

/// `GET /v1/system/df`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskUsage {
    /// Per directory.
    pub dirs: Vec<DirUsage>,
    /// Sum of `dirs`.
    pub total: u64,
}

/// Every error body; also `POST /v1/system/shutdown`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    /// Human-readable, one line.
    pub message: String,
}

/// `--restart` policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    #[default]
    No,
    /// Restart when the exit code is not 0, at most `max_retries` times (0 = unbounded).
    OnFailure {
        /// Retry limit; 0 means no limit.
        #[serde(default)]
        max_retries: u32,
    },
    /// Always restart, also when apexd starts, even after `stop`.
    Always,
    /// Like `always`, except after an explicit `stop`/`kill`.
    UnlessStopped,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let p = match name {
            "no" => RestartPolicy::No,
            "always" => RestartPolicy::Always,
            "unless-stopped" => RestartPolicy::UnlessStopped,
            "on-failure" => RestartPolicy::OnFailure {
                max_retries: match arg {
                    Some(a) => a
                        .parse()
                        .map_err(|_| format!("invalid retry count {a:?} in --restart {s}"))?,
                    None => 0,
                },
            },
            _ => {
                return Err(format!(
                    "invalid restart policy {s:?}: use no, on-failure[:N], always or unless-stopped"
                ))
            }
        };
        if arg.is_some() && !matches!(p, RestartPolicy::OnFailure { .. }) {
            return Err(format!("only on-failure takes a retry count: {s:?}"));
        }
        Ok(p)
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::OnFailure { max_retries: 0 } => f.write_str("on-failure"),
            RestartPolicy::OnFailure { max_retries } => write!(f, "on-failure:{max_retries}"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::UnlessStopped => f.write_str("unless-stopped"),
        }
    }
}

/// `POST /v1/containers`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// Image reference (must be local).
    pub image: String,
    /// A build step's container: its main process is the agent's `pause` tool (the
    /// command is ignored) and the step's commands run as execs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub build_step: bool,
    /// Unique name (default: generated).
    #[serde(default)]
    pub name: Option<String>,
    /// Command (replaces the image's cmd).
    #[serde(default)]
    pub command: Vec<String>,
    /// Entrypoint override (an empty list clears the image's).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=value`, already resolved by the client (env files included).
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// User.
    #[serde(default)]
    pub user: Option<String>,
    /// Allocate a terminal.
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open for attached clients (`-i`).
    #[serde(default)]
    pub stdin_open: bool,
    /// vCPUs (default 1).
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Memory in MiB (default 256).
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Boot watchdog in seconds (default 60).
    #[serde(default)]
    pub boot_timeout_s: Option<u64>,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Remove the container once it exits (`--rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// Network to attach to (default `default`; `none` for no network).
    #[serde(default)]
    pub network: Option<String>,
    /// Published ports, docker syntax: `[host-ip:]host-port:container-port[/tcp|udp]`.
    #[serde(default)]
    pub publish: Vec<String>,
    /// `-v` specs, Docker syntax: `SRC:DST[:OPTS]` (SRC an absolute host path or a volume
    /// name) or `DST` (an anonymous volume).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// `--mount` specs.
    #[serde(default)]
    pub mounts: Vec<MountRequest>,
    /// `--tmpfs` specs: `DST[:OPTS]` (`size=64m,mode=1777,exec,ro`).
    #[serde(default)]
    pub tmpfs: Vec<String>,
    /// A read-only root filesystem (`--read-only`).
    #[serde(default)]
    pub read_only: bool,
    /// Largest size of the writable layer, bytes (default
    /// [`crate::mounts::DEFAULT_STORAGE_BYTES`]).
    #[serde(default)]
    pub storage_size: Option<u64>,
    /// Labels (merged over the image's).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Hostname (default: the container's name, or its short id with `hostname_id`).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Default the hostname to the 12-character id, as Docker does.
    #[serde(default)]
    pub hostname_id: bool,
    /// Domain name.
    #[serde(default)]
    pub domainname: Option<String>,
    /// Exposed ports (`80/tcp`), added to the image's.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// Publish every exposed port on a free host port (`-P`).
    #[serde(default)]
    pub publish_all: bool,
    /// Signal that stops the container (default the image's, else `SIGTERM`).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Seconds `stop` waits before killing (default 10).
    #[serde(default)]
    pub stop_timeout: Option<u64>,
    /// Healthcheck (default the image's).
    #[serde(default)]
    pub healthcheck: Option<HealthConfig>,
    /// Run a small reaping init as PID 1 in front of the command (`--init`).
    #[serde(default)]
    pub init: bool,
    /// Extra `/etc/hosts` entries: `name:ip`.
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    /// DNS servers instead of the network's.
    #[serde(default)]
    pub dns: Vec<String>,
    /// DNS search domains.
    #[serde(default)]
    pub dns_search: Vec<String>,
    /// DNS resolver options.
    #[serde(default)]
    pub dns_options: Vec<String>,
    /// More names the container answers to on its network.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Containers whose mounts this one gets too (`NAME[:ro|rw]`).
    #[serde(default)]
    pub volumes_from: Vec<String>,
}

pub use apex_runtime::spec::HealthConfig;

/// A container's health before its first healthcheck passed.
pub const HEALTH_STARTING: &str = "starting";

/// What a mount is (Docker's mount types).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A host path.
    Bind,
    /// A named or anonymous volume.
    #[default]
    Volume,
    /// A tmpfs in the VM's memory.
    Tmpfs,
}

impl std::fmt::Display for MountType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MountType::Bind => "bind",
            MountType::Volume => "volume",
            MountType::Tmpfs => "tmpfs",
        })
    }
}

/// One `--mount` (Docker's `Mount` object).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRequest {
    /// `bind`, `volume` (the default) or `tmpfs`.
    #[serde(rename = "type", default)]
    pub kind: MountType,
    /// Host path (bind), volume name (volume; none for an anonymous one), nothing (tmpfs).
    #[serde(default)]
    pub source: Option<String>,
    /// Absolute path in the container.
    #[serde(default)]
    pub target: String,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Do not copy the image's content into a new volume (`volume-nocopy`).
    #[serde(default)]
    pub no_copy: bool,
    /// tmpfs size limit, bytes.
    #[serde(default)]
    pub tmpfs_size: Option<u64>,
    /// tmpfs root mode.
    #[serde(default)]
    pub tmpfs_mode: Option<u32>,
}

/// A container's mount as recorded (and shown by `inspect` as `mounts`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPoint {
    /// Mount type.
    #[serde(rename = "type")]
    pub kind: MountType,
    /// The volume's name (volumes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Host path: the bind source or the volume's `_data` directory (empty for tmpfs).
    #[serde(default)]
    pub source: String,
    /// Path in the container.
    pub destination: String,
    /// Read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Image content is not copied into the volume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_copy: bool,
    /// tmpfs size limit, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<u64>,
    /// tmpfs root mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_mode: Option<u32>,
    /// tmpfs mounted `noexec`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub noexec: bool,
}

/// `POST /v1/volumes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeCreate {
    /// Name (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`); a random one when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A volume, as listed and inspected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Name.
    pub name: String,
    /// Always `local`: a directory on this host.
    pub driver: String,
    /// Its directory, `$APEX_HOME/volumes/<name>/_data`.
    pub mountpoint: std::path::PathBuf,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Created for one container (`-v /path` or an image `VOLUME`); `rm -v` removes it.
    pub anonymous: bool,
    /// Names of the containers that use it.
    pub containers: Vec<String>,
}

/// `POST /v1/volumes/prune`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumePruneReport {
    /// Removed volumes.
    pub deleted: Vec<String>,
    /// Bytes freed.
    pub space_reclaimed: u64,
}

/// What `GET`/`HEAD /v1/containers/{id}/archive` report about the path, in the
/// [`ARCHIVE_STAT_HEADER`] header (base64 of this JSON).
pub use apex_agent_proto::api::PathStat;

/// Header carrying a [`PathStat`] on archive answers.
pub const ARCHIVE_STAT_HEADER: &str = "x-apex-path-stat";

/// `POST /v1/networks`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCreate {
    /// Unique name (same rule as container names).
    pub name: String,
    /// IPv4 CIDR (default: a free /24 from 10.213.0.0/16).
    #[serde(default)]
    pub subnet: Option<String>,
    /// No outbound access (no NAT; traffic stays on the bridge).
    #[serde(default)]
    pub internal: bool,
    /// Labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A container attached to a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkEndpoint {
    /// Container id.
    pub id: String,
    /// Container name (its DNS name: `<name>` and `<name>.test`).
    pub name: String,
    /// IPv4 address (no prefix).
    pub address: String,
}

/// A network, as listed and inspected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// Name (`default` is created by apexd).
    pub name: String,
    /// Host bridge (empty in user-mode fallback).
    pub bridge: String,
    /// IPv4 CIDR.
    pub subnet: String,
    /// Gateway (the bridge's address; also the network's DNS server).
    pub gateway: String,
    /// No outbound access.
    pub internal: bool,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Attached containers.
    pub containers: Vec<NetworkEndpoint>,
    /// Labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `201` answer to a create: the new object's id (and name for containers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// Full id.
    pub id: String,
    /// Container name (empty for execs).
    #[serde(default)]
    pub name: String,
}

/// One row of `GET /v1/containers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSummary {
    /// Full id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Image as given.
    pub image: String,
    /// The command line, joined.
    pub command: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// State.
    pub state: ContainerState,
    /// Human status: `Up 5 seconds`, `Exited (0) 2 minutes ago`, `Created`.
    pub status: String,
    /// Exit code once exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Published ports while running, docker-style: `127.0.0.1:8080->80/tcp`.
    #[serde(default)]
    pub ports: Vec<String>,
}

/// `GET /v1/containers/{id}/wait`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitResult {
    /// Exit code.
    pub exit_code: i32,
    /// Why, if not the process's own doing.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/containers/prune`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Removed container ids.
    pub deleted: Vec<String>,
}

/// One line of `GET /v1/containers/{id}/logs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When the shim read it (RFC 3339, nanoseconds).
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, with its trailing newline if it had one.
    pub line: String,
}

/// `POST /v1/containers/{id}/exec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// argv (required).
    pub command: Vec<String>,
    /// Extra `KEY=value`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// User.
    #[serde(default)]
    pub user: Option<String>,
    /// Allocate a terminal.
    #[serde(default)]
    pub tty: bool,
    /// Forward stdin.
    #[serde(default)]
    pub stdin: bool,
}

/// `POST /v1/images/pull`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// Image reference.
    pub reference: String,
    /// `os/arch[/variant]` (default: the host's).
    #[serde(default)]
    pub platform: Option<String>,
    /// `auto`, `http` or `https` (default `auto`).
    #[serde(default)]
    pub scheme: Option<String>,
    /// Registries that may be reached over plain HTTP.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
}

/// One line of a pull's progress stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// The reference resolved to a manifest with `layers` layers.
    Resolved {
        /// Manifest digest.
        digest: String,
        /// Layer count.
        layers: usize,
    },
    /// A blob transfer starts.
    BlobStart {
        /// Blob digest.
        digest: String,
        /// Size.
        size: u64,
        /// Already present.
        cached: bool,
    },
    /// Bytes of a blob so far.
    BlobBytes {
        /// Blob digest.
        digest: String,
        /// Bytes done.
        done: u64,
    },
    /// A blob is verified.
    BlobDone {
        /// Blob digest.
        digest: String,
    },
    /// Building the rootfs image.
    Unpacking,
    /// Finished: the image's name and id.
    Done {
        /// Stored name.
        name: String,
        /// Image id (config digest).
        id: String,
        /// Bytes downloaded.
        downloaded: u64,
    },
    /// Failed; nothing partial is visible (blobs resume on the next pull).
    Error {
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_parse_and_print() {
        for s in [
            "no",
            "always",
            "unless-stopped",
            "on-failure",
            "on-failure:3",
        ] {
            assert_eq!(s.parse::<RestartPolicy>().unwrap().to_string(), s);
        }
        assert!("sometimes".parse::<RestartPolicy>().is_err());
        assert!("always:3".parse::<RestartPolicy>().is_err());
        assert!("on-failure:x".parse::<RestartPolicy>().is_err());
    }
}

/// `POST /v1/build` query: the build's options; the body is the context as a tar
/// (optionally gzip-compressed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequest {
    /// Names to tag the result with.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The Dockerfile's path inside the context (default `Dockerfile`).
    #[serde(default)]
    pub dockerfile: Option<String>,
    /// `--build-arg` values.
    #[serde(default)]
    pub build_args: std::collections::BTreeMap<String, String>,
    /// The stage to build (default: the last one).
    #[serde(default)]
    pub target: Option<String>,
    /// Run every step, ignoring the cache.
    #[serde(default)]
    pub no_cache: bool,
    /// Pull base images even when they are present.
    #[serde(default)]
    pub pull: bool,
    /// Labels added to the result.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The platform to build for (only the host's is supported).
    #[serde(default)]
    pub platform: Option<String>,
    /// The network `RUN` steps use (default: the default network).
    #[serde(default)]
    pub network: Option<String>,
}

/// One line of a build's progress stream (`POST /v1/build`, NDJSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BuildEvent {
    /// A step starts.
    Step {
        /// Step number over the whole build (`#N`), from 1.
        n: usize,
        /// Steps in the whole build.
        total: usize,
        /// The stage's name, if it has one.
        stage: Option<String>,
        /// Position in its stage, from 1, and the stage's step count.
        pos: usize,
        /// Steps in the stage.
        stage_total: usize,
        /// The instruction as written.
        text: String,
    },
    /// Output of step `n`'s command.
    Output {
        /// Step number.
        n: usize,
        /// The bytes, lossily decoded.
        data: String,
    },
    /// Step `n` was found in the cache.
    Cached {
        /// Step number.
        n: usize,
    },
    /// Step `n` finished; the image it made.
    Done {
        /// Step number.
        n: usize,
        /// Seconds it took.
        seconds: f64,
        /// The image ID (config digest) after it.
        id: String,
    },
    /// The build made this image.
    Result {
        /// Image ID (config digest).
        id: String,
        /// Manifest digest.
        digest: String,
        /// The names it was tagged with.
        tags: Vec<String>,
        /// Steps taken from the cache, of all steps.
        cached: usize,
        /// All steps.
        steps: usize,
    },
    /// The build failed.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// `POST /v1/build/prune`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildPruneReport {
    /// Cache entries forgotten.
    pub cache_entries: usize,
    /// Step images removed.
    pub images_deleted: usize,
    /// Bytes freed.
    pub space_reclaimed: u64,
}
