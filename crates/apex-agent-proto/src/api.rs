//! Typed agent methods ([`Call`], host → guest requests), their results, and guest → host
//! events ([`Event`], sent as notifications).
//!
//! Design: one adjacently tagged enum per direction, so a value serializes exactly as the
//! JSON-RPC `method`/`params` pair: `{"method":"mkdir","params":{"path":"/x","mode":493}}`.
//! Methods without parameters (`ping`, `stats`, `sync`, `shutdown`) omit `params`; `null`,
//! `{}` and `[]` are accepted for them on decode. Params may also be given by position (a JSON
//! array in field declaration order), as serde allows. Each variant's doc names its result type;
//! methods with nothing to return answer [`Ack`] (`{}`).
//!
//! Conventions: modes are numeric permission bits (JSON numbers are decimal: 0o755 = 493);
//! paths are absolute paths inside the guest; process `id`s are chosen by the host and unique
//! per VM; addresses are textual (`"10.88.0.2/16"`, `"fd00::2/64"`).
//!
//! ## Stdio ports
//! Process stdio does not use the control connection. For each `Some(port)` in a
//! [`ProcessSpec`], the **guest connects** to the host (vsock CID [`HOST_CID`](crate::HOST_CID))
//! on that port; with the vhost-user-vsock / hybrid-vsock backend the connection arrives on the
//! host's unix socket `<uds_path>_<port>`. The host must be listening before it sends
//! `create_process` / `exec_process`: the guest connects (stdin, then stdout, then stderr)
//! before replying, so no output is lost. `stdin` carries host → guest bytes (EOF or
//! `close_stdin` closes the process's stdin); `stdout`/`stderr` carry guest → host bytes and
//! reach EOF once the process and every holder of the stream have exited. With
//! `terminal: true` the pty's combined output goes to `stdout_port` and `stderr_port` must be
//! `None`. A `None` port means `/dev/null`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ProtoError;

/// A host → guest call: the typed `method` + `params` of a JSON-RPC request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum Call {
    /// Liveness/version check. Result: [`PingResult`].
    Ping,
    /// mount(2). Result: [`Ack`].
    Mount(Mount),
    /// umount2(2). Result: [`Ack`].
    Umount(Umount),
    /// Creates a directory and any missing parents (like `mkdir -p`); an existing directory is
    /// not an error. Result: [`Ack`].
    Mkdir(Mkdir),
    /// Creates or truncates a file (the parent must exist). Result: [`Ack`].
    WriteFile(WriteFile),
    /// Configures hostname, loopback (always brought up), interfaces, routes, resolv.conf and
    /// /etc/hosts. The whole request is validated before anything changes
    /// (`INVALID_PARAMS`); kernel failures are `OS_ERROR` naming the step. Addresses and
    /// routes are added with replace semantics, so repeating a call is harmless.
    /// Result: [`Ack`].
    SetNetwork(SetNetwork),
    /// Mounts shares and tmpfs at container paths (resolved inside the container root as
    /// in a chroot, missing directories created), in order, then makes the root read-only
    /// if asked. Result: [`Ack`]; `OS_ERROR` naming the mount that failed.
    SetupMounts(SetupMounts),
    /// Prepares a process and connects its stdio streams, but does not exec it yet.
    /// Result: [`Ack`]; `PROCESS_START_FAILED` / `ALREADY_EXISTS` on failure.
    CreateProcess(ProcessSpec),
    /// Execs a created process. Result: [`ProcessStarted`]; `PROCESS_START_FAILED` (with
    /// [`ProcessStartFailed`](crate::rpc::ProcessStartFailed) data) if exec fails.
    StartProcess(ProcessRef),
    /// Waits for a process to exit (returns at once if it already has). The guest keeps the
    /// status until this call collects it. Result: [`ExitStatus`].
    WaitProcess(ProcessRef),
    /// Sends a signal to a process. Result: [`Ack`].
    KillProcess(KillProcess),
    /// Sets a terminal process's window size. Result: [`Ack`].
    ResizeTty(ResizeTty),
    /// Closes a process's stdin (the process reads EOF). Result: [`Ack`].
    CloseStdin(ProcessRef),
    /// Create + start in one call, for an extra process in the running container.
    /// Result: [`ProcessStarted`].
    ExecProcess(ProcessSpec),
    /// Resource usage of the whole guest/container. Result: [`Stats`].
    Stats,
    /// sync(2) all filesystems. Result: [`Ack`].
    Sync,
    /// Syncs, replies [`Ack`], then powers the VM off.
    Shutdown,
}

impl Call {
    /// Every method name, in declaration order.
    pub const METHODS: &'static [&'static str] = &[
        "ping",
        "mount",
        "umount",
        "mkdir",
        "write_file",
        "set_network",
        "setup_mounts",
        "create_process",
        "start_process",
        "wait_process",
        "kill_process",
        "resize_tty",
        "close_stdin",
        "exec_process",
        "stats",
        "sync",
        "shutdown",
    ];

    /// The JSON-RPC method name.
    pub fn method(&self) -> &'static str {
        match self {
            Call::Ping => "ping",
            Call::Mount(_) => "mount",
            Call::Umount(_) => "umount",
            Call::Mkdir(_) => "mkdir",
            Call::WriteFile(_) => "write_file",
            Call::SetNetwork(_) => "set_network",
            Call::SetupMounts(_) => "setup_mounts",
            Call::CreateProcess(_) => "create_process",
            Call::StartProcess(_) => "start_process",
            Call::WaitProcess(_) => "wait_process",
            Call::KillProcess(_) => "kill_process",
            Call::ResizeTty(_) => "resize_tty",
            Call::CloseStdin(_) => "close_stdin",
            Call::ExecProcess(_) => "exec_process",
            Call::Stats => "stats",
            Call::Sync => "sync",
            Call::Shutdown => "shutdown",
        }
    }

    /// Splits into JSON-RPC `(method, params)`; params are `Value::Null` for parameterless
    /// methods.
    pub fn to_parts(&self) -> (&'static str, Value) {
        (self.method(), split_tagged(self).1)
    }

    /// Parses a request's method and params: [`ProtoError::MethodNotFound`] for an unknown
    /// method, [`ProtoError::InvalidParams`] if the params do not fit it.
    pub fn parse(method: &str, params: Value) -> Result<Self, ProtoError> {
        parse_tagged(Self::METHODS, method, params)
    }
}

/// A guest → host event, sent as a JSON-RPC notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum Event {
    /// A container process exited (sent once, in addition to answering `wait_process`).
    ProcessExited(ProcessExited),
    /// The kernel OOM killer fired.
    Oom(Oom),
}

impl Event {
    /// Every event name, in declaration order.
    pub const METHODS: &'static [&'static str] = &["process_exited", "oom"];

    /// The notification method name.
    pub fn method(&self) -> &'static str {
        match self {
            Event::ProcessExited(_) => "process_exited",
            Event::Oom(_) => "oom",
        }
    }

    /// Splits into notification `(method, params)`.
    pub fn to_parts(&self) -> (&'static str, Value) {
        (self.method(), split_tagged(self).1)
    }

    /// Parses a notification's method and params (errors as for [`Call::parse`]).
    pub fn parse(method: &str, params: Value) -> Result<Self, ProtoError> {
        parse_tagged(Self::METHODS, method, params)
    }
}

/// Serializes an adjacently tagged value into `(method, params)`.
fn split_tagged<T: Serialize>(v: &T) -> (String, Value) {
    let Ok(Value::Object(mut obj)) = serde_json::to_value(v) else {
        unreachable!("adjacently tagged enums serialize to objects");
    };
    let Some(Value::String(method)) = obj.remove("method") else {
        unreachable!("adjacently tagged enums carry a string tag");
    };
    (method, obj.remove("params").unwrap_or(Value::Null))
}

fn parse_tagged<T: serde::de::DeserializeOwned>(
    methods: &[&str],
    method: &str,
    params: Value,
) -> Result<T, ProtoError> {
    if !methods.contains(&method) {
        return Err(ProtoError::MethodNotFound(method.to_owned()));
    }
    let empty = match &params {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    let tagged = |params: Option<Value>| {
        let mut obj = serde_json::Map::new();
        obj.insert("method".into(), Value::String(method.to_owned()));
        if let Some(p) = params {
            obj.insert("params".into(), p);
        }
        T::deserialize(Value::Object(obj))
    };
    // Parameterless methods: accept omitted/null/{}/[] params.
    if empty {
        if let Ok(v) = tagged(None) {
            return Ok(v);
        }
    }
    tagged(Some(params)).map_err(|source| ProtoError::InvalidParams {
        method: method.to_owned(),
        source,
    })
}

/// Result of methods that return nothing: serialized as `{}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ack {}

/// Result of [`Call::Ping`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResult {
    /// The guest's [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
    pub protocol_version: u32,
    /// Free-form agent version, e.g. the apex-init crate version.
    pub agent_version: String,
}

/// Params of [`Call::Mount`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Device, directory or pseudo-fs name (`"/dev/vda"`, `"proc"`, `"overlay"`).
    pub source: String,
    /// Mount point (must exist; see [`Call::Mkdir`]).
    pub target: String,
    /// Filesystem type (`"ext4"`, `"erofs"`, `"virtiofs"`, `"overlay"`); empty for bind mounts.
    pub fstype: String,
    /// mount(8)-style flag names: `ro`, `nosuid`, `nodev`, `noexec`, `bind`, `rbind`,
    /// `remount`, `private`, `rprivate`, ... The guest rejects unknown names.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Filesystem-specific options string (`"lowerdir=...,upperdir=...,workdir=..."`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// Params of [`Call::Umount`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Umount {
    /// Mount point.
    pub target: String,
    /// Lazy unmount (`MNT_DETACH`).
    #[serde(default)]
    pub detach: bool,
}

/// Params of [`Call::Mkdir`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mkdir {
    /// Directory to create (with parents).
    pub path: String,
    /// Permission bits for created directories, applied exactly (not masked by the umask).
    pub mode: u32,
}

/// Params of [`Call::WriteFile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFile {
    /// File to create or truncate.
    pub path: String,
    /// File contents; standard padded base64 on the wire (so at most ~3 MiB per call).
    #[serde(with = "crate::base64::serde_bytes")]
    pub contents: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// Params of [`Call::SetNetwork`]. Every field is optional on the wire (defaults: empty).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SetNetwork {
    /// sethostname(2) value, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Interfaces to configure and bring up.
    pub interfaces: Vec<Interface>,
    /// Routes to add after the interfaces are up.
    pub routes: Vec<Route>,
    /// Contents of /etc/resolv.conf (left alone when all its lists are empty).
    pub dns: Dns,
    /// Contents of /etc/hosts, after the lines the guest always writes: the localhost
    /// entries and the hostname (on the first address of the first interface if there is
    /// one, else on 127.0.0.1).
    pub hosts: Vec<HostEntry>,
}

/// A network interface in [`SetNetwork`]: its MAC and MTU are set, it is brought up, then
/// its addresses are added. The guest loads its network driver on first use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Guest interface name (`"eth0"`; a VM's NICs are eth0, eth1, ... in order).
    pub name: String,
    /// MAC address to set (`"02:42:0a:58:00:02"`); `None` keeps the device's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Addresses in CIDR notation.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// MTU; `None` keeps the device default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// A route in [`SetNetwork`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination in CIDR notation; `"0.0.0.0/0"` / `"::/0"` for the default route.
    pub dest: String,
    /// Next hop; `None` for an on-link route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Outgoing interface; `None` lets the kernel pick from the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

/// Resolver configuration (/etc/resolv.conf).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Dns {
    /// `nameserver` lines.
    pub nameservers: Vec<String>,
    /// `search` domains.
    pub search: Vec<String>,
    /// `options` entries (`"ndots:0"`).
    pub options: Vec<String>,
}

/// One /etc/hosts line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    /// Address.
    pub ip: String,
    /// Host names for it.
    pub names: Vec<String>,
}

/// Params of [`Call::SetupMounts`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SetupMounts {
    /// Mounts, applied in order (a parent before what is mounted inside it).
    #[serde(default)]
    pub mounts: Vec<ContainerMount>,
    /// Remount the container root read-only once everything is mounted (`--read-only`).
    #[serde(default)]
    pub read_only_root: bool,
}

/// One mount in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMount {
    /// Absolute path in the container. Symlinks are resolved inside the container root;
    /// missing directories are created (a missing file for a file share).
    pub target: String,
    /// What is mounted.
    pub source: MountSource,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
    /// When the mounted directory is empty, copy in what the container root has at
    /// `target`, with its ownership and modes (Docker's volume population).
    #[serde(default)]
    pub populate: bool,
}

/// The source of a [`ContainerMount`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MountSource {
    /// A virtio-fs device with this tag. With `file`, the share is a directory holding
    /// just that file, and the file alone is bound at the target.
    Virtiofs {
        /// The device tag.
        tag: String,
        /// Name of the single file the share holds, for a file bind.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
    },
    /// A tmpfs (always `nosuid,nodev`).
    Tmpfs {
        /// Size limit in bytes (default: the kernel's, half of RAM).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size_bytes: Option<u64>,
        /// Permission bits of its root (default 1777).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// Also `noexec`.
        #[serde(default)]
        noexec: bool,
    },
}

/// The agent's built-in tools, run as processes with [`ProcessSpec::agent_tool`] (chrooted
/// in the container root, as root), and their exit codes. Errors go to stderr.
pub mod tools {
    /// `archive-get PATH`: writes one JSON line with the [`PathStat`](super::PathStat) of
    /// `PATH` (not following a final symlink), then a tar of it whose top entry is named
    /// after its last component (`.` for a path ending in `/.` or for `/`).
    pub const ARCHIVE_GET: &str = "archive-get";
    /// `archive-put [--owner] [--no-overwrite-dir-non-dir] DIR`: extracts the tar read
    /// from stdin into the existing directory `DIR`. With `--owner` files keep the tar's
    /// owners, else they belong to root.
    pub const ARCHIVE_PUT: &str = "archive-put";
    /// `stat PATH`: prints the [`PathStat`](super::PathStat) of `PATH` as JSON.
    pub const STAT: &str = "stat";
    /// `ps`: prints one [`ProcessInfo`](super::ProcessInfo) JSON line per process of the
    /// container.
    pub const PS: &str = "ps";
    /// `pause`: waits until killed. The main process of a build step's container, whose
    /// commands run as execs in its namespaces.
    pub const PAUSE: &str = "pause";
    /// `layer-diff UPPER LOWER EPOCH`: writes to stdout, as an OCI layer tar, what the
    /// overlay upper directory `UPPER` changed on top of `LOWER` (whiteouts as `.wh.`
    /// files, opaque directories as `.wh..wh..opq`, hardlinks kept, times clamped to the
    /// Unix time `EPOCH`). Run with the guest's `/run/apex` as its root (see
    /// [`LAYER_DIFF_ROOT`]), where the paths are `rw/upper` and `lower`.
    pub const LAYER_DIFF: &str = "layer-diff";
    /// The guest directory `layer-diff` runs chrooted in.
    pub const LAYER_DIFF_ROOT: &str = "/run/apex";
    /// `archive-put` option: keep the tar's owners.
    pub const OPT_OWNER: &str = "--owner";
    /// `archive-put` option: refuse to replace a directory by a non-directory or back.
    pub const OPT_NO_OVERWRITE_DIR_NON_DIR: &str = "--no-overwrite-dir-non-dir";
    /// Exit code: something failed (see stderr).
    pub const EXIT_FAILED: i32 = 1;
    /// Exit code: bad arguments.
    pub const EXIT_USAGE: i32 = 2;
    /// Exit code: the path does not exist.
    pub const EXIT_NOT_FOUND: i32 = 3;
    /// Exit code: the path is not a directory (`archive-put`).
    pub const EXIT_NOT_DIR: i32 = 4;
}

/// A process, as the `ps` tool reports it (`ps -ef` columns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// User name (or uid).
    pub user: String,
    /// Process id.
    pub pid: u32,
    /// Parent's process id.
    pub ppid: u32,
    /// Start time (`HH:MM`).
    pub stime: String,
    /// Terminal (`?` for none).
    pub tty: String,
    /// CPU time (`HH:MM:SS`).
    pub time: String,
    /// Command line.
    pub cmd: String,
}

/// A file's metadata, as the `stat` and `archive-get` tools report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStat {
    /// Last path component (`/` for the root).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// The target, for a symlink (else empty).
    #[serde(default)]
    pub link_target: String,
}

impl PathStat {
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }

    /// Whether it is a symlink.
    pub fn is_symlink(&self) -> bool {
        self.mode & 0o170000 == 0o120000
    }
}

/// Params of [`Call::CreateProcess`] and [`Call::ExecProcess`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Host-chosen id, unique in the VM; used by later calls and events.
    pub id: String,
    /// argv; `args[0]` is resolved through `PATH` from `env` if it has no `/`.
    pub args: Vec<String>,
    /// Environment as `KEY=VALUE` strings.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (inside `rootfs`).
    pub cwd: String,
    /// Credentials to run as.
    #[serde(default)]
    pub user: User,
    /// Allocate a pty (see the module docs for stdio in that case).
    #[serde(default)]
    pub terminal: bool,
    /// vsock port the guest connects to for stdin; `None` = /dev/null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_port: Option<u32>,
    /// vsock port the guest connects to for stdout (pty output when `terminal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_port: Option<u32>,
    /// vsock port the guest connects to for stderr; must be `None` when `terminal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_port: Option<u32>,
    /// Guest path to chroot into; `None` = the container root set up by the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    /// setrlimit(2) values applied before exec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    /// Run the agent's own binary with `args` (one of its built-in tools, such as the
    /// archive helper of `cp`) instead of a program of the rootfs. It runs chrooted in
    /// the rootfs like any other process.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent_tool: bool,
    /// The namespaces it runs in.
    #[serde(default, skip_serializing_if = "Namespaces::is_guest")]
    pub namespaces: Namespaces,
    /// Put the agent's small reaping init in front of `args` (Docker's `--init`): it runs
    /// as the process, forwards signals to `args`, reaps orphans, and exits with the
    /// status of `args`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
    /// With `terminal`: its size from the start, `(rows, columns)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty_size: Option<(u16, u16)>,
}

/// Which namespaces a process runs in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Namespaces {
    /// The guest's own, chrooted in the rootfs (tools on a container that is not running).
    #[default]
    Guest,
    /// New PID, mount, UTS and IPC namespaces: the process is PID 1 of its own PID
    /// namespace with a private `/proc` (a container's main process).
    New,
    /// The namespaces of the running process with this id (an exec in a container).
    Join(String),
}

impl Namespaces {
    /// Whether this is [`Namespaces::Guest`].
    pub fn is_guest(&self) -> bool {
        *self == Namespaces::Guest
    }
}

/// Process credentials.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Docker `-u` syntax (`name`, `uid`, `name:group`, `uid:gid`), resolved by the guest
    /// against the container's `/etc/passwd` and `/etc/group`. When present it replaces `uid`
    /// and `gid` (and adds the user's groups from `/etc/group`, when no group is given);
    /// `additional_gids` are still added. An unknown name fails the start with
    /// `PROCESS_START_FAILED` (exit code 126).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
}

/// One resource limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// OCI-style name: `"RLIMIT_NOFILE"`, `"RLIMIT_NPROC"`, ...
    #[serde(rename = "type")]
    pub resource: String,
    /// Soft limit (`u64::MAX` = unlimited).
    pub soft: u64,
    /// Hard limit (`u64::MAX` = unlimited).
    pub hard: u64,
}

/// Params naming a process: [`Call::StartProcess`], [`Call::WaitProcess`], [`Call::CloseStdin`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    /// The [`ProcessSpec::id`].
    pub id: String,
}

/// Params of [`Call::KillProcess`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillProcess {
    /// The [`ProcessSpec::id`].
    pub id: String,
    /// Signal number (Linux numbering, e.g. 15 = SIGTERM, 9 = SIGKILL).
    pub signal: i32,
}

/// Params of [`Call::ResizeTty`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeTty {
    /// The [`ProcessSpec::id`] (must have `terminal: true`).
    pub id: String,
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Result of [`Call::StartProcess`] and [`Call::ExecProcess`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStarted {
    /// The process's pid inside the guest.
    pub pid: u32,
}

/// Result of [`Call::WaitProcess`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code; `128 + signal` when killed by a signal (shell convention).
    pub exit_code: i32,
    /// The terminating signal, if killed by one.
    #[serde(default)]
    pub signal: Option<i32>,
}

/// Result of [`Call::Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Total CPU time consumed, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use, in bytes.
    pub memory_usage_bytes: u64,
    /// Memory available to the container (the VM's RAM or cgroup limit), in bytes.
    pub memory_limit_bytes: u64,
    /// Number of processes/threads.
    pub pids: u64,
}

/// Params of [`Event::ProcessExited`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessExited {
    /// The [`ProcessSpec::id`].
    pub id: String,
    /// As in [`ExitStatus::exit_code`].
    pub exit_code: i32,
    /// As in [`ExitStatus::signal`].
    #[serde(default)]
    pub signal: Option<i32>,
}

/// Params of [`Event::Oom`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Oom {
    /// The container process whose tree lost a process to the OOM killer; `None` if the
    /// victim could not be attributed.
    #[serde(default)]
    pub id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{codes, Message, Request};
    use crate::{decode_message, encode_event, encode_request};
    use serde_json::json;

    fn spec(id: &str) -> ProcessSpec {
        ProcessSpec {
            id: id.into(),
            args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "TERM=xterm".into()],
            cwd: "/".into(),
            user: User {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10, 20],
                spec: None,
            },
            terminal: false,
            stdin_port: Some(2000),
            stdout_port: Some(2001),
            stderr_port: Some(2002),
            rootfs: Some("/run/apex/rootfs".into()),
            rlimits: vec![Rlimit {
                resource: "RLIMIT_NOFILE".into(),
                soft: 1024,
                hard: u64::MAX,
            }],
            agent_tool: false,
            namespaces: Default::default(),
            init: false,
            tty_size: None,
        }
    }

    /// One sample per method, in [`Call::METHODS`] order.
    fn all_calls() -> Vec<Call> {
        vec![
            Call::Ping,
            Call::Mount(Mount {
                source: "overlay".into(),
                target: "/run/apex/rootfs".into(),
                fstype: "overlay".into(),
                flags: vec!["nosuid".into(), "nodev".into()],
                data: Some("lowerdir=/l,upperdir=/u,workdir=/w".into()),
            }),
            Call::Umount(Umount {
                target: "/mnt".into(),
                detach: true,
            }),
            Call::Mkdir(Mkdir {
                path: "/run/apex".into(),
                mode: 0o755,
            }),
            Call::WriteFile(WriteFile {
                path: "/etc/motd".into(),
                contents: (0..=255).collect(),
                mode: 0o644,
            }),
            Call::SetNetwork(SetNetwork {
                hostname: Some("web".into()),
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    mac: Some("02:42:0a:58:00:02".into()),
                    addresses: vec!["10.88.0.2/16".into(), "fd00::2/64".into()],
                    mtu: Some(1500),
                }],
                routes: vec![Route {
                    dest: "0.0.0.0/0".into(),
                    gateway: Some("10.88.0.1".into()),
                    interface: None,
                }],
                dns: Dns {
                    nameservers: vec!["10.88.0.1".into()],
                    search: vec!["test".into()],
                    options: vec!["ndots:0".into()],
                },
                hosts: vec![HostEntry {
                    ip: "10.88.0.2".into(),
                    names: vec!["web".into(), "web.test".into()],
                }],
            }),
            Call::SetupMounts(SetupMounts {
                mounts: vec![
                    ContainerMount {
                        target: "/data".into(),
                        source: MountSource::Virtiofs {
                            tag: "apexfs0".into(),
                            file: None,
                        },
                        read_only: false,
                        populate: true,
                    },
                    ContainerMount {
                        target: "/etc/app.conf".into(),
                        source: MountSource::Virtiofs {
                            tag: "apexfs1".into(),
                            file: Some("app.conf".into()),
                        },
                        read_only: true,
                        populate: false,
                    },
                    ContainerMount {
                        target: "/tmp".into(),
                        source: MountSource::Tmpfs {
                            size_bytes: Some(64 << 20),
                            mode: Some(0o1777),
                            noexec: true,
                        },
                        read_only: false,
                        populate: false,
                    },
                ],
                read_only_root: true,
            }),
            Call::CreateProcess(spec("init")),
            Call::StartProcess(ProcessRef { id: "init".into() }),
            Call::WaitProcess(ProcessRef { id: "init".into() }),
            Call::KillProcess(KillProcess {
                id: "init".into(),
                signal: 15,
            }),
            Call::ResizeTty(ResizeTty {
                id: "init".into(),
                rows: 24,
                cols: 80,
            }),
            Call::CloseStdin(ProcessRef { id: "init".into() }),
            Call::ExecProcess(ProcessSpec {
                terminal: true,
                stderr_port: None,
                rootfs: None,
                rlimits: vec![],
                agent_tool: true,
                namespaces: Default::default(),
                init: false,
                tty_size: None,
                ..spec("exec-1")
            }),
            Call::Stats,
            Call::Sync,
            Call::Shutdown,
        ]
    }

    #[test]
    fn every_method_round_trips_through_a_frame_payload() {
        let calls = all_calls();
        let names: Vec<&str> = calls.iter().map(Call::method).collect();
        assert_eq!(names, Call::METHODS, "samples cover every method in order");
        for (i, call) in calls.into_iter().enumerate() {
            let id = i as u64 + 100;
            let bytes = encode_request(id, &call);
            let Message::Request(req) = decode_message(&bytes).unwrap() else {
                panic!("not a request")
            };
            assert_eq!(req.id, id);
            assert_eq!(req.method, call.method());
            // method() agrees with serde's tag.
            assert_eq!(split_tagged(&call).0, call.method());
            assert_eq!(Call::parse(&req.method, req.params).unwrap(), call);
        }
    }

    #[test]
    fn parameterless_methods_omit_params_and_accept_empty_ones() {
        let bytes = encode_request(1, &Call::Ping);
        assert_eq!(bytes, br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        for p in [Value::Null, json!({}), json!([])] {
            assert_eq!(Call::parse("sync", p).unwrap(), Call::Sync);
        }
        assert!(matches!(
            Call::parse("stats", json!({"x": 1})),
            Err(ProtoError::InvalidParams { .. })
        ));
    }

    #[test]
    fn wire_format_examples() {
        let (m, p) = Call::Mkdir(Mkdir {
            path: "/x".into(),
            mode: 0o755,
        })
        .to_parts();
        assert_eq!((m, p), ("mkdir", json!({"path": "/x", "mode": 493})));
        let (_, p) = Call::WriteFile(WriteFile {
            path: "/f".into(),
            contents: b"hi\n".to_vec(),
            mode: 0o600,
        })
        .to_parts();
        assert_eq!(p, json!({"path": "/f", "contents": "aGkK", "mode": 384}));
        let (_, p) = Call::CreateProcess(ProcessSpec {
            stdin_port: None,
            rootfs: None,
            rlimits: vec![],
            ..spec("p")
        })
        .to_parts();
        assert!(p.get("stdin_port").is_none() && p.get("rlimits").is_none());
        assert_eq!(p["stdout_port"], 2001);
        assert_eq!(
            serde_json::to_value(Rlimit {
                resource: "RLIMIT_NOFILE".into(),
                soft: 1,
                hard: 2
            })
            .unwrap(),
            json!({"type": "RLIMIT_NOFILE", "soft": 1, "hard": 2})
        );
    }

    #[test]
    fn minimal_params_use_defaults() {
        let c = Call::parse(
            "create_process",
            json!({"id": "a", "args": ["true"], "cwd": "/"}),
        )
        .unwrap();
        let Call::CreateProcess(s) = c else { panic!() };
        assert_eq!(s.user, User::default());
        assert!(s.env.is_empty() && !s.terminal && s.stdout_port.is_none());
        assert_eq!(
            Call::parse("set_network", json!({})).unwrap(),
            Call::SetNetwork(SetNetwork::default())
        );
        let c = Call::parse(
            "mount",
            json!({"source": "proc", "target": "/proc", "fstype": "proc"}),
        );
        assert!(
            matches!(c, Ok(Call::Mount(Mount { ref flags, data: None, .. })) if flags.is_empty())
        );
    }

    #[test]
    fn user_spec_is_optional_on_the_wire() {
        let u: User = serde_json::from_value(json!({"uid": 1, "gid": 2})).unwrap();
        assert_eq!(u.spec, None);
        assert_eq!(serde_json::to_value(&u).unwrap().get("spec"), None);
        let u = User {
            spec: Some("apex:staff".into()),
            ..User::default()
        };
        let v = serde_json::to_value(&u).unwrap();
        assert_eq!(v["spec"], "apex:staff");
        assert_eq!(serde_json::from_value::<User>(v).unwrap(), u);
    }

    #[test]
    fn unknown_method_and_bad_params() {
        match Call::parse("format_disk", json!({})) {
            Err(e @ ProtoError::MethodNotFound(_)) => {
                assert_eq!(e.to_rpc_error().code, codes::METHOD_NOT_FOUND);
                assert!(e.to_string().contains("format_disk"));
            }
            other => panic!("{other:?}"),
        }
        // Case and spelling matter; serde's variant names are not accepted.
        assert!(matches!(
            Call::parse("Ping", Value::Null),
            Err(ProtoError::MethodNotFound(_))
        ));
        assert!(matches!(
            Call::parse("", Value::Null),
            Err(ProtoError::MethodNotFound(_))
        ));
        // Events are not calls.
        assert!(matches!(
            Call::parse("oom", Value::Null),
            Err(ProtoError::MethodNotFound(_))
        ));

        let bad = [
            ("mkdir", json!({"path": "/x"})),
            ("mkdir", json!({"path": "/x", "mode": -1})),
            ("mkdir", Value::Null),
            (
                "write_file",
                json!({"path": "/f", "contents": "not base64!", "mode": 0}),
            ),
            (
                "write_file",
                json!({"path": "/f", "contents": [1, 2], "mode": 0}),
            ),
            ("resize_tty", json!({"id": "a", "rows": 70000, "cols": 1})),
            ("start_process", json!([1])),
            ("start_process", json!("a")),
            ("kill_process", json!({"id": "a"})),
        ];
        for (m, p) in bad {
            match Call::parse(m, p.clone()) {
                Err(e @ ProtoError::InvalidParams { .. }) => {
                    assert_eq!(e.to_rpc_error().code, codes::INVALID_PARAMS);
                    assert!(e.to_string().contains(m), "{e}");
                }
                other => panic!("{m} {p}: {other:?}"),
            }
        }
    }

    #[test]
    fn results_round_trip() {
        fn rt<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(v: T) {
            let bytes = crate::encode_response(9, &v);
            let Message::Response(r) = decode_message(&bytes).unwrap() else {
                panic!()
            };
            assert_eq!(r.id, Some(9));
            assert_eq!(r.into_result::<T>().unwrap(), v);
        }
        rt(Ack {});
        rt(PingResult {
            protocol_version: crate::PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
        });
        rt(ProcessStarted { pid: 42 });
        rt(ExitStatus {
            exit_code: 137,
            signal: Some(9),
        });
        rt(ExitStatus {
            exit_code: 0,
            signal: None,
        });
        rt(Stats {
            cpu_usage_ns: u64::MAX,
            memory_usage_bytes: 1 << 30,
            memory_limit_bytes: 2 << 30,
            pids: 3,
        });
        assert_eq!(serde_json::to_string(&Ack {}).unwrap(), "{}");
    }

    #[test]
    fn events_round_trip() {
        let events = vec![
            Event::ProcessExited(ProcessExited {
                id: "init".into(),
                exit_code: 143,
                signal: Some(15),
            }),
            Event::Oom(Oom {
                id: Some("init".into()),
            }),
            Event::Oom(Oom { id: None }),
        ];
        for ev in events {
            let bytes = encode_event(&ev);
            let Message::Notification(n) = decode_message(&bytes).unwrap() else {
                panic!("not a notification")
            };
            assert_eq!(n.method, ev.method());
            assert_eq!(Event::parse(&n.method, n.params).unwrap(), ev);
        }
        assert!(matches!(
            Event::parse("ping", Value::Null),
            Err(ProtoError::MethodNotFound(_))
        ));
        let n = Event::ProcessExited(ProcessExited {
            id: "x".into(),
            exit_code: 0,
            signal: None,
        });
        assert_eq!(
            String::from_utf8(encode_event(&n)).unwrap(),
            r#"{"jsonrpc":"2.0","method":"process_exited","params":{"id":"x","exit_code":0,"signal":null}}"#
        );
    }

    #[test]
    fn positional_params_follow_field_order() {
        assert_eq!(
            Call::parse("start_process", json!(["a"])).unwrap(),
            Call::StartProcess(ProcessRef { id: "a".into() })
        );
    }

    #[test]
    fn request_built_by_hand_parses() {
        let req = Request {
            id: 1,
            method: "kill_process".into(),
            params: json!({"id": "a", "signal": 9, "future_field": true}),
        };
        assert_eq!(
            Call::parse(&req.method, req.params).unwrap(),
            Call::KillProcess(KillProcess {
                id: "a".into(),
                signal: 9
            })
        );
    }
}
