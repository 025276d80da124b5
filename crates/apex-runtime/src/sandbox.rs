//! A sandbox: one VM booted on an image's rootfs, with its agent connection.
//!
//! Boot: locate the kernel and the guest init, build (or reuse) the initramfs, pick the
//! accelerator, start QEMU with the rootfs image as a read-only virtio-blk disk, and wait
//! for the agent on vsock (the boot watchdog kills a VM that never answers and reports
//! the tail of its console). Processes get their stdio as vsock streams the guest opens
//! to per-process ports on the host.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use apex_agent_proto::api::{self, User};
use apex_agent_proto::forward::{self, Answer};
use apex_agent_proto::{CONTROL_PORT, FORWARD_PORT, READY_PORT};
use apex_vm::{
    accel, initramfs, wait_for_agent, Disk, Nic, QemuProvider, Vm, VmConfig, VmProvider,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

pub use apex_agent_proto::forward::Proto;

use crate::agent::AgentClient;
use crate::fs::Filesystem;
use crate::spec::ProcessSpec;

/// How long a KVM probe boot may take before TCG is chosen (cached per kernel + QEMU).
const ACCEL_PROBE_TIMEOUT: Duration = Duration::from_secs(8);
/// First vsock port used for process stdio; each process takes three.
const STDIO_PORT_BASE: u32 = 10_000;
/// How long the guest may take to flush its writable layer before the VM is killed.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a port forward may take to connect and be answered by the guest.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// How to boot a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Apex home (VM state goes under `vms/`).
    pub home: PathBuf,
    /// The image rootfs, the writable layer and the mounts.
    pub fs: Filesystem,
    /// Guest hostname.
    pub hostname: String,
    /// vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Boot watchdog.
    pub boot_timeout: Duration,
    /// virtio-net NICs (eth0, eth1, ... in the guest); configure them with
    /// [`Sandbox::set_network`].
    pub nics: Vec<Nic>,
}

/// A running process's stdio streams.
pub struct Process {
    /// Process id in the guest agent.
    pub id: String,
    /// Write side to the process's stdin (`-i`).
    pub stdin: Option<UnixStream>,
    /// stdout (or the terminal).
    pub stdout: UnixStream,
    /// stderr (absent with a terminal).
    pub stderr: Option<UnixStream>,
}

/// A booted VM and its agent.
pub struct Sandbox {
    vm: Box<dyn Vm>,
    agent: AgentClient,
    next_port: AtomicU32,
    next_proc: AtomicU32,
    /// The guest's `setup_mounts` call, for [`Sandbox::mount_filesystems`].
    mounts: api::SetupMounts,
    /// Whether the writable layer is a disk (to be synced before the VM goes).
    writable_disk: bool,
    /// The agent id of the container's main process, whose namespaces later processes
    /// join (see [`Sandbox::spawn_main`]).
    main: std::sync::Mutex<Option<String>>,
}

/// Where shared caches (initramfs, accelerator probe) live: `$APEX_CACHE_DIR`, else
/// `/var/cache/apex` as root, else `~/.cache/apex`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("APEX_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/cache/apex");
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(".cache/apex")
}

/// The static guest init binary: `$APEX_INIT`, else `guest/apex-init` next to the cargo
/// profile dir of this executable (`target/guest/apex-init`), else
/// `/usr/local/lib/apex/apex-init`.
pub fn locate_init() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("APEX_INIT") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(3) {
            candidates.push(dir.join("guest/apex-init"));
        }
    }
    candidates.push(PathBuf::from("/usr/local/lib/apex/apex-init"));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .context("guest init (apex-init) not found: run scripts/build-guest.sh or set APEX_INIT")
}

/// File in a VM state dir naming the pid of the process that owns the VM.
const OWNER_FILE: &str = "owner.pid";

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Removes VM state dirs whose owner process is gone (e.g. `kill -9` of `apex run`: its
/// QEMU died with it through PDEATHSIG, but the directory stayed).
pub fn sweep_stale(vms: &Path) {
    let Ok(rd) = std::fs::read_dir(vms) else {
        return;
    };
    for e in rd.flatten() {
        let owner = std::fs::read_to_string(e.path().join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let alive = owner.is_some_and(|pid| {
            rustix::process::Pid::from_raw(pid)
                .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
        });
        // No owner file yet means a boot in progress; leave it unless it is old.
        let young = e
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(60))
            .unwrap_or(true);
        let booting = owner.is_none() && young;
        if !alive && !booting {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn short_id() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Like [`Sandbox::forward`], for a process that does not own the sandbox (e.g. apexd,
/// with the VM run by a shim): connects through the vsock backend socket in the VM's
/// state directory.
pub async fn forward_at(state_dir: &Path, proto: Proto, port: u16) -> Result<UnixStream> {
    let uds = state_dir.join(apex_vm::qemu::VSOCK_SOCK);
    let connect = async move {
        Ok(
            apex_vm::qemu::vsock::connect_retry(&uds, FORWARD_PORT, FORWARD_TIMEOUT, || None)
                .await?,
        )
    };
    forward_handshake(connect, proto, port).await
}

/// Connects, sends the forward header and checks the guest's answer, within
/// [`FORWARD_TIMEOUT`].
async fn forward_handshake(
    connect: impl std::future::Future<Output = Result<UnixStream>>,
    proto: Proto,
    port: u16,
) -> Result<UnixStream> {
    let handshake = async {
        let mut s = connect.await?;
        s.write_all(&forward::encode_header(proto, port)).await?;
        let line = forward::read_line_async(&mut s, forward::MAX_LINE).await?;
        anyhow::Ok((s, line))
    };
    let (s, line) = tokio::time::timeout(FORWARD_TIMEOUT, handshake)
        .await
        .with_context(|| format!("forward to guest {proto} port {port}: timed out"))?
        .with_context(|| format!("forward to guest {proto} port {port}"))?;
    match Answer::parse(&line) {
        Ok(Answer::Ok) => Ok(s),
        Ok(Answer::Error(msg)) => bail!("forward to guest {proto} port {port}: {msg}"),
        Err(e) => bail!("forward to guest {proto} port {port}: {e}"),
    }
}

impl Sandbox {
    /// Boots a VM for `cfg` and connects to its agent.
    pub async fn boot(cfg: SandboxConfig) -> Result<Sandbox> {
        let t0 = std::time::Instant::now();
        let kernel = crate::kernel::assets(&cfg.home)?;
        let init = locate_init()?;
        let cache = cache_dir();
        std::fs::create_dir_all(&cache)
            .with_context(|| format!("creating cache dir {}", cache.display()))?;
        let initrd = {
            let (init, kernel, cache) = (init.clone(), kernel.clone(), cache.clone());
            tokio::task::spawn_blocking(move || initramfs::build(&init, &kernel, &cache)).await??
        };
        let vms = cfg.home.join("vms");
        sweep_stale(&vms);
        let id = short_id();
        let state_dir = vms.join(&id);
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        std::fs::write(state_dir.join(OWNER_FILE), std::process::id().to_string())?;
        // Removes the state dir if boot fails or is abandoned (Ctrl-C drops this future).
        let mut guard = RemoveOnDrop(Some(state_dir.clone()));
        let plan = cfg.fs.plan()?;
        let mut cmdline = vec![
            "apex.root=/dev/vda".into(),
            "apex.rootfstype=erofs".into(),
            format!("apex.hostname={}", cfg.hostname),
        ];
        // The agent's debug log and every kernel message on the VM console (console.log
        // in the state directory).
        if std::env::var_os("APEX_GUEST_DEBUG").is_some() {
            cmdline.push("apex.debug=1".into());
            cmdline.push("loglevel=7".into());
        }
        let mut disks = vec![Disk {
            id: "root".into(),
            path: cfg.fs.rootfs.clone(),
            read_only: true,
        }];
        if let Some(upper) = &cfg.fs.upper_disk {
            // Disks appear in order: the writable layer is /dev/vdb.
            cmdline.push("apex.upper=/dev/vdb".into());
            disks.push(Disk {
                id: "upper".into(),
                path: upper.clone(),
                read_only: false,
            });
        }
        let mut vm_cfg = VmConfig {
            id: id.clone(),
            cpus: cfg.cpus,
            memory_mib: cfg.memory_mib,
            kernel: kernel.image.clone(),
            kernel_flavor: kernel.flavor,
            initrd,
            cmdline,
            disks,
            state_dir: state_dir.clone(),
            accel: apex_vm::Accel::Tcg,
            guest_cid: 3,
            nics: cfg.nics.clone(),
            shares: plan.shares,
        };
        tracing::debug!(elapsed = ?t0.elapsed(), "assets and initramfs ready");
        let provider = QemuProvider::new()?;
        vm_cfg.accel =
            accel::select(&provider, &kernel, &vm_cfg, &cache, ACCEL_PROBE_TIMEOUT).await?;
        tracing::debug!(elapsed = ?t0.elapsed(), accel = %vm_cfg.accel, "starting VM");
        // On any error below the VM is dropped (which kills it) before the guard removes
        // its state directory.
        let vm = provider.start(vm_cfg).await?;
        tracing::debug!(elapsed = ?t0.elapsed(), "QEMU started");
        let stream =
            wait_for_agent(vm.as_ref(), READY_PORT, CONTROL_PORT, cfg.boot_timeout).await?;
        let agent = AgentClient::new(stream);
        agent
            .ping()
            .await
            .context("guest agent did not answer ping")?;
        guard.0 = None;
        tracing::debug!(elapsed = ?t0.elapsed(), "guest agent ready");
        Ok(Sandbox {
            vm,
            agent,
            next_port: AtomicU32::new(STDIO_PORT_BASE),
            next_proc: AtomicU32::new(1),
            mounts: plan.setup,
            writable_disk: cfg.fs.upper_disk.is_some(),
            main: std::sync::Mutex::new(None),
        })
    }

    /// Mounts the container's shares and tmpfs and applies `--read-only` (after the
    /// network is configured: that writes files in the root).
    pub async fn mount_filesystems(&self) -> Result<()> {
        if self.mounts.mounts.is_empty() && !self.mounts.read_only_root {
            return Ok(());
        }
        self.agent
            .setup_mounts(self.mounts.clone())
            .await
            .context("mounting the container's volumes")
    }

    /// The agent client.
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// The VM's console (kernel + init messages).
    pub fn boot_log(&self) -> String {
        std::fs::read_to_string(self.vm.console_log()).unwrap_or_default()
    }

    /// QEMU's pid.
    pub fn vm_pid(&self) -> u32 {
        self.vm.pid()
    }

    /// QEMU's exit status if it has exited (non-blocking).
    pub fn vm_exit_status(&self) -> Option<std::process::ExitStatus> {
        self.vm.exit_status()
    }

    /// The last `lines` lines of the VM console.
    pub fn console_tail(&self, lines: usize) -> String {
        self.vm.boot_log_tail(lines)
    }

    /// Where the VM keeps sockets and logs.
    pub fn state_dir(&self) -> &Path {
        self.vm.state_dir()
    }

    /// Configures the guest network (see [`AgentClient::set_network`]).
    pub async fn set_network(&self, net: api::SetNetwork) -> Result<()> {
        self.agent
            .set_network(net)
            .await
            .context("configuring the guest network")
    }

    /// Opens a forward to `proto` port `port` inside the guest over vsock (see
    /// [`apex_agent_proto::forward`]). The returned stream is past the handshake: for TCP
    /// it carries the connection's bytes, for UDP length-prefixed datagrams
    /// ([`forward::write_datagram_async`], [`forward::read_datagram_async`]). Fails with the
    /// guest's message when nothing listens on the port (TCP).
    pub async fn forward(&self, proto: Proto, port: u16) -> Result<UnixStream> {
        forward_handshake(
            async { Ok(self.vm.connect(FORWARD_PORT, FORWARD_TIMEOUT).await?) },
            proto,
            port,
        )
        .await
    }

    /// Starts the container's main process: PID 1 of its own PID namespace, with its own
    /// mount, UTS and IPC namespaces, which every later process joins.
    /// `tty_size` (rows, columns) is the terminal's size from the start.
    pub async fn spawn_main(
        &self,
        spec: &ProcessSpec,
        stdin: bool,
        tty_size: Option<(u16, u16)>,
    ) -> Result<Process> {
        let p = self
            .spawn_wire(spec, stdin, spec.tool, api::Namespaces::New, tty_size, None)
            .await?;
        *self.main.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.id.clone());
        Ok(p)
    }

    /// The namespaces of a process started next: the main process's, once there is one.
    fn joined(&self) -> api::Namespaces {
        match &*self.main.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(id) => api::Namespaces::Join(id.clone()),
            None => api::Namespaces::Guest,
        }
    }

    /// Starts a process (an exec: in the main process's namespaces once it was started);
    /// its stdio arrives as vsock streams.
    pub async fn spawn(&self, spec: &ProcessSpec, stdin: bool) -> Result<Process> {
        self.spawn_wire(spec, stdin, false, self.joined(), None, None)
            .await
    }

    /// Starts one of the agent's built-in tools (see [`api::tools`]) as root, with
    /// stdout and stderr (and stdin if asked) as streams.
    pub async fn spawn_tool(&self, args: Vec<String>, stdin: bool) -> Result<Process> {
        self.spawn_tool_in(args, stdin, None).await
    }

    /// [`Sandbox::spawn_tool`] chrooted in the guest directory `rootfs` instead of the
    /// container root (`None`), such as [`api::tools::LAYER_DIFF_ROOT`].
    pub async fn spawn_tool_in(
        &self,
        args: Vec<String>,
        stdin: bool,
        rootfs: Option<String>,
    ) -> Result<Process> {
        let spec = ProcessSpec {
            args,
            env: vec![],
            cwd: "/".into(),
            user: "0".into(),
            terminal: false,
            init: false,
            tool: true,
        };
        self.spawn_wire(&spec, stdin, true, self.joined(), None, rootfs)
            .await
    }

    async fn spawn_wire(
        &self,
        spec: &ProcessSpec,
        stdin: bool,
        tool: bool,
        namespaces: api::Namespaces,
        tty_size: Option<(u16, u16)>,
        rootfs: Option<String>,
    ) -> Result<Process> {
        let id = format!("p{}", self.next_proc.fetch_add(1, Ordering::Relaxed));
        let base = self.next_port.fetch_add(3, Ordering::Relaxed);
        let (in_port, out_port, err_port) = (
            stdin.then_some(base),
            base + 1,
            (!spec.terminal).then_some(base + 2),
        );
        let listen = |p: Option<u32>| -> Result<Option<UnixListener>> {
            p.map(|p| self.vm.listen(p)).transpose().map_err(Into::into)
        };
        let (l_in, l_out, l_err) = (listen(in_port)?, listen(Some(out_port))?, listen(err_port)?);
        let wire = api::ProcessSpec {
            id: id.clone(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            user: User {
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                spec: Some(spec.user.clone()),
            },
            terminal: spec.terminal,
            stdin_port: in_port,
            stdout_port: Some(out_port),
            stderr_port: err_port,
            rootfs,
            rlimits: vec![],
            agent_tool: tool,
            namespaces,
            init: spec.init,
            tty_size: tty_size.filter(|_| spec.terminal),
        };
        // exec_process = create + start in one round trip; the guest connects the stdio
        // ports before it starts the process and answers.
        let accept = async {
            let a = |l: Option<UnixListener>| async move {
                match l {
                    Some(l) => l.accept().await.map(|(s, _)| Some(s)),
                    None => Ok(None),
                }
            };
            tokio::try_join!(a(l_in), a(l_out), a(l_err))
        };
        let (started, streams) = tokio::join!(self.agent.exec_process(wire), async {
            tokio::time::timeout(Duration::from_secs(30), accept).await
        });
        started?;
        let (s_in, s_out, s_err) = streams
            .context("guest did not connect the process's stdio")?
            .context("accepting stdio connections")?;
        tracing::debug!(id, "process started, stdio connected");
        Ok(Process {
            id,
            stdin: s_in,
            stdout: s_out.context("no stdout stream")?,
            stderr: s_err,
        })
    }

    /// Ends the VM: QEMU and its backends are gone and the state directory is removed.
    ///
    /// The rootfs is a read-only image and shares are written through by virtiofsd, so
    /// only a writable-layer disk needs flushing: the guest syncs (bounded by
    /// [`SYNC_TIMEOUT`]), then the VM is killed rather than powered off (which costs
    /// ~0.25 s under TCG). ext4's journal covers a VM that dies without the sync.
    /// Without `sync` (a writable layer about to be deleted) the VM is killed at once.
    pub async fn shutdown(mut self, sync: bool) {
        if sync {
            self.sync_disks().await;
        }
        self.vm.kill().await;
        let _ = std::fs::remove_dir_all(self.vm.state_dir());
    }

    /// Flushes the guest's writable layer to its disk (no-op without one).
    pub async fn sync_disks(&self) {
        if !self.writable_disk || self.vm.exit_status().is_some() {
            return;
        }
        let t0 = std::time::Instant::now();
        match tokio::time::timeout(SYNC_TIMEOUT, self.agent.sync()).await {
            Ok(Ok(())) => tracing::debug!(elapsed = ?t0.elapsed(), "guest synced"),
            Ok(Err(e)) => tracing::warn!("guest sync failed: {e}"),
            Err(_) => tracing::warn!("guest sync timed out after {SYNC_TIMEOUT:?}"),
        }
    }

    /// Asks the guest to stop its processes, sync and power off; kills it if it does not
    /// within 10 s. Then cleans up like [`Sandbox::shutdown`].
    pub async fn power_off(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.agent.shutdown()).await;
        if tokio::time::timeout(Duration::from_secs(10), self.vm.wait())
            .await
            .is_err()
        {
            tracing::warn!("VM did not power off in time; killing it");
        }
        self.vm.kill().await;
        let _ = std::fs::remove_dir_all(self.vm.state_dir());
    }
}
