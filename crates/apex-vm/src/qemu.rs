//! QEMU `microvm` provider: one VM = one `vhost-device-vsock` backend + one QEMU.
//!
//! Files in the per-VM state dir: `vhost.sock` (QEMU <-> backend), `vsock.sock`
//! (host -> guest connections), `vsock.sock_<port>` (guest -> host listeners),
//! `console.log` (guest serial), `qemu.log` (QEMU stderr), `vhost-vsock.log`.
//!
//! Process lifetime: both processes are killed and reaped by [`Vm::kill`], after
//! [`Vm::wait`] (the backend), and when the [`QemuVm`] is dropped (also on panic).
//! They carry `PR_SET_PDEATHSIG(SIGKILL)` so they also die if this process dies; since
//! that signal is tied to the forking *thread*, all spawns go through one private,
//! never-exiting thread, so callers may start VMs from any thread or task.

pub mod args;
pub mod virtiofs;
pub mod vsock;

use crate::accel::Accel;
use crate::assets::{KernelAssets, KernelFlavor};
use crate::spawn::{spawn_guarded, Guarded};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};

pub use args::{host_tsc_khz, kernel_cmdline, qemu_args};
pub use virtiofs::{Share, ShareKind};

/// vhost-user control socket between QEMU and the vsock backend.
pub const VHOST_SOCK: &str = "vhost.sock";
/// Backend socket for host -> guest connections (`CONNECT <port>`).
pub const VSOCK_SOCK: &str = "vsock.sock";
/// Guest serial console output.
pub const CONSOLE_LOG: &str = "console.log";
/// QEMU's own stdout/stderr.
pub const QEMU_LOG: &str = "qemu.log";
/// vhost-device-vsock's output.
pub const BACKEND_LOG: &str = "vhost-vsock.log";

/// Longest unix socket path (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long the backend may take to create its socket.
const BACKEND_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// A boxed, `Send` future (keeps the [`Vm`] and [`VmProvider`] traits object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A virtio-blk disk. Disks appear in the guest in order as /dev/vda, /dev/vdb, ...
/// and carry `id` as their virtio serial (`/sys/block/vdX/serial`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Raw image on the host.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
    /// 1-20 chars of `[A-Za-z0-9_.-]`; exposed as the disk serial.
    pub id: String,
}

/// How a virtio-net NIC reaches the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NicBackend {
    /// An existing host tap device (created and attached to a bridge by the caller; QEMU
    /// runs no scripts). Needs CAP_NET_ADMIN or a tap owned by the user.
    Tap {
        /// Host interface name (1-15 chars).
        ifname: String,
    },
    /// QEMU user-mode networking (slirp): rootless outbound access through the host's
    /// sockets. The guest network is 10.0.2.0/24, gateway 10.0.2.2, DNS 10.0.2.3; nothing
    /// on the host can connect in (use vsock port forwarding).
    User,
}

/// A virtio-net NIC. NICs appear in the guest as eth0, eth1, ... in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Nic {
    /// QEMU netdev id: 1-20 chars of `[A-Za-z0-9_-]`, starting with a letter.
    pub id: String,
    /// Guest MAC address, `"02:xx:xx:xx:xx:xx"` (locally administered, unicast).
    pub mac: String,
    /// Host side.
    pub backend: NicBackend,
}

/// Checks a `xx:xx:xx:xx:xx:xx` MAC address: six hex pairs, unicast.
pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

/// Everything needed to start one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Name used in logs and errors.
    pub id: String,
    /// vCPUs.
    pub cpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Kernel image.
    pub kernel: PathBuf,
    /// How the kernel boots (ACPI or not, calibration shortcuts).
    pub kernel_flavor: KernelFlavor,
    /// Initramfs (see [`crate::initramfs`]).
    pub initrd: PathBuf,
    /// Extra kernel command-line arguments, appended after the built-in ones.
    pub cmdline: Vec<String>,
    /// virtio-blk disks, in /dev/vda, /dev/vdb ... order.
    pub disks: Vec<Disk>,
    /// Per-VM directory for sockets and logs (created if missing). Keep it short:
    /// unix socket paths inside it must fit in 107 bytes.
    pub state_dir: PathBuf,
    /// Accelerator.
    pub accel: Accel,
    /// Guest vsock context id (each VM has its own backend, so 3 is fine for all).
    pub guest_cid: u32,
    /// virtio-net NICs (eth0, eth1, ... in the guest); empty for no network device.
    pub nics: Vec<Nic>,
    /// virtio-fs shares, one `virtiofsd` each.
    pub shares: Vec<Share>,
}

impl VmConfig {
    /// A config with defaults: 1 vCPU, 256 MiB, TCG, CID 3, no disks, no NICs, no extra
    /// cmdline.
    pub fn new(id: &str, kernel: &KernelAssets, initrd: &Path, state_dir: &Path) -> Self {
        Self {
            id: id.to_string(),
            cpus: 1,
            memory_mib: 256,
            kernel: kernel.image.clone(),
            kernel_flavor: kernel.flavor,
            initrd: initrd.to_path_buf(),
            cmdline: Vec::new(),
            disks: Vec::new(),
            state_dir: state_dir.to_path_buf(),
            accel: Accel::Tcg,
            guest_cid: 3,
            nics: Vec::new(),
            shares: Vec::new(),
        }
    }

    /// Checks the values QEMU would otherwise reject with a less helpful message.
    pub fn validate(&self) -> Result<()> {
        if self.cpus == 0 {
            bail!("VM {}: needs at least 1 vCPU", self.id);
        }
        let floor = self.kernel_flavor.min_memory_mib();
        if self.memory_mib < floor {
            let kernel = match self.kernel_flavor {
                KernelFlavor::Minimal => "Apex's kernel",
                KernelFlavor::Distro => "a distribution kernel",
            };
            bail!(
                "VM {}: {kernel} needs at least {floor} MiB of memory, {} MiB was asked for \
                 (raise --memory, or `apex system kernel set --default`)",
                self.id,
                self.memory_mib
            );
        }
        // vsock and the balloon, then every disk, NIC and share takes one transport.
        let used = 2 + self.disks.len() + self.nics.len() + self.shares.len();
        if used > VIRTIO_SLOTS {
            bail!(
                "VM {}: too many devices: QEMU's microvm has {VIRTIO_SLOTS} virtio slots, and \
                 this VM needs {used} (vsock, the balloon, {} disks, {} network interfaces, \
                 {} shared directories; each bind mount and volume is one of those)",
                self.id,
                self.disks.len(),
                self.nics.len(),
                self.shares.len()
            );
        }
        if self.guest_cid < 3 {
            bail!(
                "VM {}: guest CID must be >= 3 (got {})",
                self.id,
                self.guest_cid
            );
        }
        for d in &self.disks {
            let ok = (1..=20).contains(&d.id.len())
                && d.id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                bail!(
                    "VM {}: disk id {:?} must be 1-20 chars of [A-Za-z0-9_.-]",
                    self.id,
                    d.id
                );
            }
        }
        for (i, n) in self.nics.iter().enumerate() {
            let id_ok = (1..=20).contains(&n.id.len())
                && n.id.starts_with(|c: char| c.is_ascii_alphabetic())
                && n.id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
            if !id_ok {
                bail!(
                    "VM {}: NIC id {:?} must be 1-20 chars of [A-Za-z0-9_-], starting with a letter",
                    self.id,
                    n.id
                );
            }
            if self.nics[..i].iter().any(|o| o.id == n.id) {
                bail!("VM {}: duplicate NIC id {:?}", self.id, n.id);
            }
            if !valid_mac(&n.mac) {
                bail!(
                    "VM {}: NIC {} MAC {:?} is not a unicast xx:xx:xx:xx:xx:xx address",
                    self.id,
                    n.id,
                    n.mac
                );
            }
            if let NicBackend::Tap { ifname } = &n.backend {
                let ok = (1..=15).contains(&ifname.len())
                    && ifname
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                if !ok {
                    bail!(
                        "VM {}: NIC {} tap name {ifname:?} must be 1-15 chars of [A-Za-z0-9_.-]",
                        self.id,
                        n.id
                    );
                }
            }
        }
        for (i, sh) in self.shares.iter().enumerate() {
            sh.validate().with_context(|| format!("VM {}", self.id))?;
            if self.shares[..i].iter().any(|o| o.tag == sh.tag) {
                bail!("VM {}: duplicate share tag {:?}", self.id, sh.tag);
            }
        }
        if let Some(a) = self
            .cmdline
            .iter()
            .find(|a| a.is_empty() || a.contains(char::is_whitespace))
        {
            bail!(
                "VM {}: kernel argument {a:?} is empty or contains whitespace",
                self.id
            );
        }
        let longest = self.state_dir.join(format!("{VSOCK_SOCK}_{}", u32::MAX));
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "VM {}: state dir {} is too long for unix sockets (max {MAX_SOCKET_PATH} bytes for {})",
                self.id,
                self.state_dir.display(),
                longest.display()
            );
        }
        Ok(())
    }
}

/// virtio-mmio transports of QEMU's microvm (its `VIRTIO_NUM_TRANSPORTS`): the most
/// virtio devices a VM can have.
pub const VIRTIO_SLOTS: usize = 8;

/// Errors from talking to a running VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The guest agent never answered during boot.
    #[error(
        "VM boot timed out: the guest agent did not come up on vsock port {port} within \
         {timeout:?} ({last_error})\n--- last console lines ---\n{boot_log_tail}"
    )]
    BootTimeout {
        port: u32,
        timeout: Duration,
        last_error: String,
        boot_log_tail: String,
    },
    /// A vsock connection could not be established in time.
    #[error("vsock connect to guest port {port} timed out after {timeout:?}: {last_error}")]
    ConnectTimeout {
        port: u32,
        timeout: Duration,
        last_error: String,
    },
    /// QEMU exited (crash, guest reboot/poweroff, panic).
    #[error(
        "qemu exited ({status})\n--- qemu.log ---\n{qemu_log}\n--- last console lines ---\n{console_tail}"
    )]
    QemuExited {
        status: ExitStatus,
        qemu_log: String,
        console_tail: String,
    },
    /// The vsock backend exited while the VM was running.
    #[error("vhost-device-vsock exited ({status})\n--- vhost-vsock.log ---\n{log}")]
    BackendExited { status: ExitStatus, log: String },
    /// Any other I/O failure.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A running VM. Object-safe so runtimes can be tested with fakes.
pub trait Vm: Send + Sync {
    /// The config id.
    fn id(&self) -> &str;
    /// QEMU's pid.
    fn pid(&self) -> u32;
    /// The per-VM state directory.
    fn state_dir(&self) -> &Path;
    /// Path of the guest serial console log.
    fn console_log(&self) -> PathBuf {
        self.state_dir().join(CONSOLE_LOG)
    }
    /// Path of QEMU's stderr log.
    fn qemu_log(&self) -> PathBuf {
        self.state_dir().join(QEMU_LOG)
    }
    /// QEMU's exit status if it has exited (non-blocking).
    fn exit_status(&self) -> Option<ExitStatus>;
    /// Connects to guest vsock `port`, retrying until `timeout`; fails at once if the
    /// VM dies. The returned stream carries only guest data.
    fn connect(&self, port: u32, timeout: Duration) -> BoxFuture<'_, Result<UnixStream, VmError>>;
    /// Listens for guest connections to host vsock `port` (CID 2). Needs a tokio runtime.
    fn listen(&self, port: u32) -> io::Result<UnixListener>;
    /// Why the VM cannot be reached any more (QEMU or its vsock backend exited), if so.
    fn failure(&self) -> Option<VmError>;
    /// Waits for QEMU to exit (then stops the vsock backend).
    fn wait(&mut self) -> BoxFuture<'_, Result<ExitStatus>>;
    /// SIGKILLs QEMU and the backend and reaps both.
    fn kill(&mut self) -> BoxFuture<'_, ()>;
    /// The last `lines` lines of the console log.
    fn boot_log_tail(&self, lines: usize) -> String {
        tail_lines(&self.console_log(), lines)
    }
}

/// Starts VMs.
pub trait VmProvider: Send + Sync {
    /// Starts a VM; returns once its processes are running (not once it has booted).
    fn start(&self, cfg: VmConfig) -> BoxFuture<'_, Result<Box<dyn Vm>>>;
}

/// Waits until the guest agent is up and connects to it. The agent signals readiness by
/// connecting to host vsock port `ready_port` once it listens on guest port `port`; only
/// then does the host connect. The host never sends a connection request to a guest that
/// is still booting, whose vsock driver may not have set up its queues yet.
/// Times out with [`VmError::BootTimeout`] carrying the last 30 console lines, or
/// fails early with [`VmError::QemuExited`] if QEMU dies first.
pub async fn wait_for_agent(
    vm: &dyn Vm,
    ready_port: u32,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, VmError> {
    let deadline = Instant::now() + timeout;
    let ready = vm.listen(ready_port)?;
    let timed_out = |last_error: String| VmError::BootTimeout {
        port,
        timeout,
        last_error,
        boot_log_tail: vm.boot_log_tail(30),
    };
    loop {
        if let Some(e) = vm.failure() {
            return Err(e);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(format!(
                "the guest never connected to host port {ready_port} to say it is ready"
            )));
        }
        // Checks for a dead VM every DEATH_POLL while waiting.
        let poll = left.min(vsock::DEATH_POLL);
        if let Ok(accepted) = tokio::time::timeout(poll, ready.accept()).await {
            accepted?;
            break;
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    match vm.connect(port, left.max(vsock::FIRST_ATTEMPT)).await {
        Err(VmError::ConnectTimeout { last_error, .. }) => Err(timed_out(last_error)),
        other => other,
    }
}

/// Last `n` lines of a (possibly large, possibly missing) log file.
pub fn tail_lines(path: &Path, n: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX && f.seek(SeekFrom::Start(len - MAX)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(MAX).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).replace('\r', "");
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Finds an executable: `$env_var` if set, else `name` on `PATH`, else in `extra` dirs.
fn find_binary(env_var: &str, name: &str, extra: &[PathBuf]) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{name} not found on PATH (set {env_var}, or run scripts/install-deps.sh)")
        })
}

/// Starts QEMU microvms with a `vhost-device-vsock` backend each.
#[derive(Debug, Clone)]
pub struct QemuProvider {
    /// `qemu-system-x86_64` binary.
    pub qemu: PathBuf,
    /// `vhost-device-vsock` binary.
    pub vsock_backend: PathBuf,
    /// Host TSC kHz for the guest command line (see [`host_tsc_khz`]).
    pub tsc_khz: Option<u64>,
    /// `virtiofsd` (`$APEX_VIRTIOFSD`, PATH or `~/.cargo/bin`); needed only for shares.
    pub virtiofsd: Option<PathBuf>,
    /// virtiofsd's `--cache` policy (`$APEX_VIRTIOFS_CACHE`, default `auto`).
    pub virtiofs_cache: String,
}

impl QemuProvider {
    /// Locates QEMU (`$APEX_QEMU` or PATH) and the backend (`$APEX_VHOST_VSOCK`, PATH
    /// or `~/.cargo/bin`), and reads the host TSC frequency.
    pub fn new() -> Result<Self> {
        let mut extra = Vec::new();
        if let Some(h) = std::env::var_os("CARGO_HOME") {
            extra.push(PathBuf::from(h).join("bin"));
        }
        if let Some(h) = std::env::var_os("HOME") {
            extra.push(PathBuf::from(h).join(".cargo/bin"));
        }
        Ok(Self {
            qemu: find_binary("APEX_QEMU", "qemu-system-x86_64", &[])?,
            vsock_backend: find_binary("APEX_VHOST_VSOCK", "vhost-device-vsock", &extra)?,
            tsc_khz: host_tsc_khz(),
            virtiofsd: find_binary("APEX_VIRTIOFSD", "virtiofsd", &extra).ok(),
            virtiofs_cache: std::env::var("APEX_VIRTIOFS_CACHE")
                .ok()
                .filter(|c| matches!(c.as_str(), "auto" | "always" | "never" | "metadata"))
                .unwrap_or_else(|| "auto".into()),
        })
    }

    /// First line of `qemu --version` (cache key for the accelerator probe).
    /// A cheap identity of the QEMU binary (path, size, mtime) for cache keys: changes
    /// whenever QEMU is upgraded, without running it.
    pub fn qemu_identity(&self) -> Result<String> {
        let m = std::fs::metadata(&self.qemu)
            .with_context(|| format!("stat {}", self.qemu.display()))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(format!("{} {} {mtime}", self.qemu.display(), m.len()))
    }

    /// The first line of `qemu --version`.
    pub fn qemu_version(&self) -> Result<String> {
        let out = Command::new(&self.qemu)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} --version", self.qemu.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.lines().next().unwrap_or_default().trim().to_string())
    }

    /// Starts the backend, waits for its socket, then starts QEMU.
    pub async fn start_vm(&self, cfg: VmConfig) -> Result<QemuVm> {
        cfg.validate()?;
        let dir = &cfg.state_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for stale in [VHOST_SOCK, VSOCK_SOCK, CONSOLE_LOG] {
            match std::fs::remove_file(dir.join(stale)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing stale {stale}"))
                }
                _ => {}
            }
        }

        let backend_log = dir.join(BACKEND_LOG);
        let log = File::create(&backend_log).context("creating backend log")?;
        let mut cmd = Command::new(&self.vsock_backend);
        cmd.arg("--guest-cid")
            .arg(cfg.guest_cid.to_string())
            .arg("--socket")
            .arg(dir.join(VHOST_SOCK))
            .arg("--uds-path")
            .arg(dir.join(VSOCK_SOCK))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let backend = spawn_guarded(cmd)
            .with_context(|| format!("starting {}", self.vsock_backend.display()))?;
        let t0 = Instant::now();
        while !dir.join(VHOST_SOCK).exists() {
            if let Some(status) = backend.try_status() {
                bail!(
                    "vhost-device-vsock exited ({status}):\n{}",
                    tail_lines(&backend_log, 30)
                );
            }
            if t0.elapsed() > BACKEND_READY_TIMEOUT {
                bail!(
                    "vhost-device-vsock did not create {} within {BACKEND_READY_TIMEOUT:?}:\n{}",
                    dir.join(VHOST_SOCK).display(),
                    tail_lines(&backend_log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        let mut fs = Vec::with_capacity(cfg.shares.len());
        if !cfg.shares.is_empty() {
            let bin = self.virtiofsd.as_ref().context(
                "virtiofsd not found on PATH (set APEX_VIRTIOFSD, or run scripts/install-deps.sh)",
            )?;
            for (i, share) in cfg.shares.iter().enumerate() {
                fs.push(virtiofs::start(bin, &self.virtiofs_cache, dir, i, share).await?);
            }
        }

        let qlog = File::create(dir.join(QEMU_LOG)).context("creating qemu.log")?;
        let mut cmd = Command::new(&self.qemu);
        cmd.args(qemu_args(&cfg, self.tsc_khz))
            .stdin(Stdio::null())
            .stdout(qlog.try_clone()?)
            .stderr(qlog);
        let qemu =
            spawn_guarded(cmd).with_context(|| format!("starting {}", self.qemu.display()))?;
        Ok(QemuVm {
            id: cfg.id,
            state_dir: cfg.state_dir,
            qemu,
            backend,
            fs,
        })
    }
}

impl VmProvider for QemuProvider {
    fn start(&self, cfg: VmConfig) -> BoxFuture<'_, Result<Box<dyn Vm>>> {
        Box::pin(async move { Ok(Box::new(self.start_vm(cfg).await?) as Box<dyn Vm>) })
    }
}

/// A running QEMU VM. Dropping it SIGKILLs and reaps QEMU and the backend.
pub struct QemuVm {
    id: String,
    state_dir: PathBuf,
    // Field order matters: QEMU is killed (dropped) before its backends.
    qemu: Guarded,
    backend: Guarded,
    /// One virtiofsd per share.
    fs: Vec<Guarded>,
}

impl QemuVm {
    /// The vsock backend's pid.
    pub fn backend_pid(&self) -> u32 {
        self.backend.pid()
    }

    fn death_error(&self) -> Option<VmError> {
        if let Some(status) = self.qemu.try_status() {
            return Some(VmError::QemuExited {
                status,
                qemu_log: tail_lines(&self.qemu_log(), 50),
                console_tail: self.boot_log_tail(30),
            });
        }
        self.backend
            .try_status()
            .map(|status| VmError::BackendExited {
                status,
                log: tail_lines(&self.state_dir.join(BACKEND_LOG), 30),
            })
    }

    /// The virtiofsd pids, one per share.
    pub fn virtiofsd_pids(&self) -> Vec<u32> {
        self.fs.iter().map(Guarded::pid).collect()
    }

    fn kill_backends(&self) {
        self.backend.kill_and_reap();
        for f in &self.fs {
            f.kill_and_reap();
        }
    }

    fn remove_sockets(&self) {
        for s in [VHOST_SOCK, VSOCK_SOCK] {
            let _ = std::fs::remove_file(self.state_dir.join(s));
        }
        for i in 0..self.fs.len() {
            let _ = std::fs::remove_file(virtiofs::socket(&self.state_dir, i));
        }
    }
}

impl Vm for QemuVm {
    fn id(&self) -> &str {
        &self.id
    }

    fn pid(&self) -> u32 {
        self.qemu.pid()
    }

    fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn exit_status(&self) -> Option<ExitStatus> {
        self.qemu.try_status()
    }

    fn connect(&self, port: u32, timeout: Duration) -> BoxFuture<'_, Result<UnixStream, VmError>> {
        let uds = self.state_dir.join(VSOCK_SOCK);
        Box::pin(
            async move { vsock::connect_retry(&uds, port, timeout, || self.death_error()).await },
        )
    }

    fn failure(&self) -> Option<VmError> {
        self.death_error()
    }

    fn listen(&self, port: u32) -> io::Result<UnixListener> {
        let path = self.state_dir.join(format!("{VSOCK_SOCK}_{port}"));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        UnixListener::bind(path)
    }

    fn wait(&mut self) -> BoxFuture<'_, Result<ExitStatus>> {
        Box::pin(async move {
            let status = self.qemu.wait().await.context("waiting for qemu")?;
            self.kill_backends();
            self.remove_sockets();
            Ok(status)
        })
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.qemu.kill_and_reap();
            self.kill_backends();
            self.remove_sockets();
        })
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        self.qemu.kill_and_reap();
        self.kill_backends();
        self.remove_sockets();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(state: &str) -> VmConfig {
        let k = KernelAssets {
            image: "/k".into(),
            modules_root: Some("/m".into()),
            version: "v".into(),
            flavor: KernelFlavor::Distro,
        };
        VmConfig::new("t", &k, Path::new("/i"), Path::new(state))
    }

    #[test]
    fn virtio_slots_are_counted() {
        use crate::qemu::{Share, ShareKind};
        let mut c = cfg("/tmp/x");
        let share = |i: usize| Share {
            tag: format!("apexfs{i}"),
            path: "/srv".into(),
            kind: ShareKind::Dir,
            read_only: false,
        };
        c.disks = ["root", "upper"]
            .map(|id| Disk {
                path: "/d".into(),
                read_only: false,
                id: id.into(),
            })
            .into();
        c.shares = (0..4).map(share).collect();
        assert!(c.validate().is_ok(), "2 + 2 disks + 4 shares fit");
        c.shares.push(share(4));
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("needs 9") && err.contains("5 shared"), "{err}");
    }

    #[test]
    fn memory_floor_depends_on_the_kernel() {
        let mut c = cfg("/tmp/x");
        c.memory_mib = 96;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("at least 128 MiB"), "{err}");
        c.kernel_flavor = KernelFlavor::Minimal;
        assert!(c.validate().is_ok());
        c.memory_mib = crate::MIN_MEMORY_MIB - 1;
        assert!(c.validate().is_err());
    }

    #[test]
    fn validation() {
        assert!(cfg("/tmp/x").validate().is_ok());
        let long = format!("/tmp/{}", "a".repeat(100));
        assert!(cfg(&long)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("too long"));
        let mut c = cfg("/tmp/x");
        c.disks.push(Disk {
            path: "/d".into(),
            read_only: true,
            id: "bad,id".into(),
        });
        assert!(c.validate().is_err());
        let mut c = cfg("/tmp/x");
        c.cmdline.push("a b".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn nic_validation() {
        let nic = |id: &str, mac: &str, backend: NicBackend| Nic {
            id: id.into(),
            mac: mac.into(),
            backend,
        };
        let tap = |n: &str| NicBackend::Tap { ifname: n.into() };
        let mut c = cfg("/tmp/x");
        c.nics = vec![
            nic("net0", "02:42:0a:58:00:02", tap("apxt0")),
            nic("net1", "52:54:00:AB:cd:01", NicBackend::User),
        ];
        c.validate().unwrap();
        for bad in [
            nic("net0", "02:42:0a:58:00:02", NicBackend::User), // duplicate id
            nic("0net", "02:00:00:00:00:01", NicBackend::User),
            nic("n,x", "02:00:00:00:00:01", NicBackend::User),
            nic("n2", "03:00:00:00:00:01", NicBackend::User), // multicast
            nic("n2", "02:00:00:00:00", NicBackend::User),
            nic("n2", "02:00:00:00:00:0g", NicBackend::User),
            nic("n2", "02:00:00:00:00:01", tap("")),
            nic("n2", "02:00:00:00:00:01", tap("a-very-long-tap-name")),
            nic("n2", "02:00:00:00:00:01", tap("tap,x")),
        ] {
            let mut c2 = c.clone();
            c2.nics.push(bad.clone());
            assert!(c2.validate().is_err(), "{bad:?} accepted");
        }
        assert!(valid_mac("02:42:0a:58:00:02") && !valid_mac("0242:0a:58:00:02:0"));
    }

    #[test]
    fn tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        assert_eq!(tail_lines(&p, 3), "");
        std::fs::write(&p, "1\r\n2\r\n3\r\n4\r\n").unwrap();
        assert_eq!(tail_lines(&p, 2), "3\n4");
        assert_eq!(tail_lines(&p, 10), "1\n2\n3\n4");
    }
}
