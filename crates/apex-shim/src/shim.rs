//! The shim proper: boot the VM, run the main process, keep its log, serve clients on
//! `shim.sock`, record the exit, and go.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use apex_runtime::agent::AgentError;
use apex_runtime::sandbox::{Process, Sandbox, SandboxConfig};
use apex_runtime::spec::ProcessSpec;
use apex_shim::bundle::{Bundle, ShimConfig};
use apex_shim::logfile::{LogWriter, Stream};
use apex_shim::proto::{ExecSpec, Phase, Request, Response, Stats, Status};
use apex_shim::stream::{read_frame, write_frame, Exit, Frame, Kind, Resize, SignalReq};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch, Notify};

/// How long attached clients get to receive the final frames before the shim exits.
const CLIENT_DRAIN: Duration = Duration::from_secs(2);
/// How long output may keep flowing after the main process exited (a daemonized child
/// can hold its stdio open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// Frames buffered for attached clients; a client further behind loses output (it is
/// still in the log).
const BROADCAST_FRAMES: usize = 4096;

struct Shim {
    cfg: ShimConfig,
    bundle: Bundle,
    status: watch::Sender<Status>,
    output: broadcast::Sender<Frame>,
    stdin: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    sandbox: OnceLock<Arc<Sandbox>>,
    main_id: OnceLock<String>,
    /// The terminal size clients asked for (kept from before the start, for the pty).
    tty_size: Mutex<Option<(u16, u16)>>,
    /// The VM's vCPUs are stopped (`pause`).
    paused: AtomicBool,
    log: Mutex<LogWriter>,
    /// The first client attached (for `wait_attach`).
    attached: Notify,
    /// Kill or stop while booting, or a stop that timed out: end now with this exit.
    abort: Notify,
    abort_exit: Mutex<Option<Exit>>,
    clients: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
}

/// Serves the container until its main process has exited and clients were told.
pub async fn serve(bundle: Bundle, cfg: ShimConfig) -> Result<()> {
    let sock = bundle.socket();
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(bundle.exit_file());
    let listener = UnixListener::bind(&sock)
        .with_context(|| format!("cannot listen on {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    apex_shim::bundle::write_atomic(
        &bundle.pid_file(),
        std::process::id().to_string().as_bytes(),
    )?;
    let log = LogWriter::open(&bundle.log(), cfg.log_max_bytes)?;
    let (status, _) = watch::channel(Status {
        phase: Phase::Booting,
        shim_pid: std::process::id(),
        vm_pid: None,
        started_at: None,
        exit: None,
        vm_dir: None,
        health: None,
    });
    let shim = Arc::new(Shim {
        cfg,
        bundle,
        status,
        output: broadcast::channel(BROADCAST_FRAMES).0,
        stdin: tokio::sync::Mutex::new(None),
        sandbox: OnceLock::new(),
        main_id: OnceLock::new(),
        tty_size: Mutex::new(None),
        paused: AtomicBool::new(false),
        log: Mutex::new(log),
        attached: Notify::new(),
        abort: Notify::new(),
        abort_exit: Mutex::new(None),
        clients: tokio::sync::Mutex::new(tokio::task::JoinSet::new()),
    });
    tracing::info!(id = %shim.cfg.id, name = %shim.cfg.name, "shim started");

    let acceptor = tokio::spawn(accept_loop(shim.clone(), listener));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let exit = tokio::select! {
        e = run_main(&shim) => e,
        _ = term.recv() => Exit {
            exit_code: 137,
            reason: Some("the container helper was terminated".into()),
            error: None,
        },
    };
    tracing::info!(code = exit.exit_code, reason = ?exit.reason, error = ?exit.error, "container exited");
    if let Ok(mut l) = shim.log.lock() {
        let _ = l.flush();
    }
    if let Err(e) = shim.bundle.write_exit(&exit) {
        tracing::error!("cannot record the exit: {e:#}");
    }
    shim.status.send_modify(|s| {
        s.phase = Phase::Exited;
        s.exit = Some(exit.clone());
    });
    let _ = shim.output.send(Frame::json(Kind::Exit, &exit));
    // The VM goes first: nothing may outlive the recorded exit.
    if let Some(sb) = shim.sandbox.get().cloned() {
        stop_vm(sb, !shim.cfg.auto_remove).await;
    }
    acceptor.abort();
    let _ = std::fs::remove_file(shim.bundle.socket());
    let mut clients = std::mem::take(&mut *shim.clients.lock().await);
    let _ = tokio::time::timeout(CLIENT_DRAIN, async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Kills the VM and removes its state directory; with `sync`, the guest flushes its
/// writable layer first (pointless for a container about to be removed).
async fn stop_vm(sb: Arc<Sandbox>, sync: bool) {
    match Arc::try_unwrap(sb) {
        Ok(sb) => sb.shutdown(sync).await,
        Err(sb) => {
            // An exec or stats call still holds it: flush the writable layer, then kill
            // QEMU by pid (its backends die with this process through PDEATHSIG).
            if sync {
                sb.sync_disks().await;
            }
            if let Some(pid) = rustix::process::Pid::from_raw(sb.vm_pid() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            let _ = std::fs::remove_dir_all(sb.state_dir());
        }
    }
}

impl Shim {
    fn exit_from_abort(&self) -> Exit {
        self.abort_exit
            .lock()
            .ok()
            .and_then(|mut e| e.take())
            .unwrap_or(Exit {
                exit_code: 137,
                reason: Some("killed".into()),
                error: None,
            })
    }

    fn tty_size(&self) -> Option<(u16, u16)> {
        self.tty_size.lock().ok().and_then(|s| *s)
    }

    fn phase(&self) -> Phase {
        self.status.borrow().phase
    }

    fn abort_with(&self, exit: Exit) {
        if let Ok(mut e) = self.abort_exit.lock() {
            e.get_or_insert(exit);
        }
        self.abort.notify_one();
    }

    fn record(&self, stream: Stream, data: &[u8]) {
        if let Ok(mut l) = self.log.lock() {
            if let Err(e) = l.write(stream, data) {
                tracing::warn!("container log: {e:#}");
            }
        }
    }
}

/// Boots the VM and runs the main process to its end.
async fn run_main(shim: &Arc<Shim>) -> Exit {
    let cfg = &shim.cfg;
    let boot = Sandbox::boot(SandboxConfig {
        home: cfg.home.clone(),
        fs: cfg.fs.clone(),
        hostname: cfg.hostname.clone(),
        cpus: cfg.cpus,
        memory_mib: cfg.memory_mib,
        boot_timeout: Duration::from_secs(cfg.boot_timeout_s),
        nics: cfg.nics.clone(),
    });
    let sandbox = tokio::select! {
        r = boot => match r {
            Ok(s) => Arc::new(s),
            Err(e) => return Exit {
                exit_code: 125,
                reason: Some("the VM failed to boot".into()),
                error: Some(format!("{e:#}")),
            },
        },
        _ = shim.abort.notified() => return shim.exit_from_abort(),
    };
    let _ = shim.sandbox.set(sandbox.clone());
    shim.status.send_modify(|s| {
        s.vm_pid = Some(sandbox.vm_pid());
        s.vm_dir = Some(sandbox.state_dir().to_path_buf());
    });
    tracing::info!(vm_pid = sandbox.vm_pid(), "VM booted");
    if let Some(net) = cfg.network.clone() {
        let t0 = std::time::Instant::now();
        // Bounded like the boot: a guest that never answers must not hang the start.
        let limit = Duration::from_secs(cfg.boot_timeout_s.max(5));
        tokio::select! {
            r = tokio::time::timeout(limit, sandbox.set_network(net)) => match r {
                Ok(Ok(())) => tracing::info!(elapsed = ?t0.elapsed(), "guest network configured"),
                Ok(Err(e)) => return Exit {
                    exit_code: 125,
                    reason: Some("the network could not be configured".into()),
                    error: Some(format!("{e:#}")),
                },
                Err(_) => return Exit {
                    exit_code: 125,
                    reason: Some("the network could not be configured".into()),
                    error: Some(format!("the guest did not configure its network within {limit:?}")),
                },
            },
            _ = shim.abort.notified() => return shim.exit_from_abort(),
        }
    }
    let t0 = std::time::Instant::now();
    tokio::select! {
        r = sandbox.mount_filesystems() => match r {
            Ok(()) => tracing::info!(elapsed = ?t0.elapsed(), "container filesystems mounted"),
            Err(e) => return Exit {
                exit_code: 125,
                reason: Some("the container's mounts could not be set up".into()),
                error: Some(format!("{e:#}")),
            },
        },
        _ = shim.abort.notified() => return shim.exit_from_abort(),
    }
    if cfg.wait_attach {
        let wait = Duration::from_secs(cfg.boot_timeout_s.max(5));
        tokio::select! {
            _ = shim.attached.notified() => {}
            _ = tokio::time::sleep(wait) => tracing::warn!("no client attached within {wait:?}; starting anyway"),
            _ = shim.abort.notified() => return shim.exit_from_abort(),
        }
    }
    let size = shim.tty_size();
    let proc = tokio::select! {
        p = sandbox.spawn_main(&cfg.process, cfg.stdin_open, size) => p,
        _ = shim.abort.notified() => return shim.exit_from_abort(),
    };
    let Process {
        id,
        stdin,
        stdout,
        stderr,
    } = match proc {
        Ok(p) => p,
        Err(e) => {
            let code = e
                .downcast_ref::<AgentError>()
                .and_then(|a| a.start_failure())
                .map_or(125, |f| f.exit_code);
            return Exit {
                exit_code: code,
                reason: Some("the process could not start".into()),
                error: Some(format!("{e:#}")),
            };
        }
    };
    let _ = shim.main_id.set(id.clone());
    // A resize that came while the process was being started.
    if let Some((rows, cols)) = shim.tty_size().filter(|s| Some(*s) != size) {
        let _ = sandbox.agent().resize_tty(&id, rows, cols).await;
    }
    if let Some(s) = stdin {
        *shim.stdin.lock().await = Some(s.into_split().1);
    }
    shim.status.send_modify(|s| {
        s.phase = Phase::Running;
        s.started_at = Some(now());
    });
    let _ = shim.output.send(Frame::new(Kind::Started, Vec::new()));
    let out = tokio::spawn(pump(shim.clone(), stdout, Stream::Stdout));
    let err = stderr.map(|s| tokio::spawn(pump(shim.clone(), s, Stream::Stderr)));
    let checks = cfg
        .healthcheck
        .as_ref()
        .and_then(crate::health::Check::new)
        .map(|check| {
            let (shim, sandbox) = (shim.clone(), sandbox.clone());
            tokio::spawn(async move {
                crate::health::run(&sandbox, &shim.cfg.process, check, |h| {
                    shim.status.send_modify(|s| s.health = Some(h.clone()));
                })
                .await
            })
        });

    let exit = tokio::select! {
        st = sandbox.agent().wait_process(&id) => match st {
            Ok(st) => Exit { exit_code: st.exit_code, reason: None, error: None },
            Err(e) => vm_death(&sandbox, &e).await,
        },
        _ = shim.abort.notified() => shim.exit_from_abort(),
    };
    if let Some(c) = checks {
        c.abort();
    }
    let _ = tokio::time::timeout(OUTPUT_DRAIN, out).await;
    if let Some(e) = err {
        let _ = tokio::time::timeout(OUTPUT_DRAIN, e).await;
    }
    exit
}

/// The exit of a container whose VM went away under it.
async fn vm_death(sandbox: &Sandbox, e: &AgentError) -> Exit {
    // QEMU may take a moment to be reapable after the connection broke.
    let mut status = None;
    for _ in 0..20 {
        status = sandbox.vm_exit_status();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    use std::os::unix::process::ExitStatusExt;
    let (code, how) = match status {
        Some(s) if s.signal().is_some() => {
            let sig = s.signal().unwrap_or(9);
            (128 + sig, format!("QEMU was killed by signal {sig}"))
        }
        Some(s) => (255, format!("QEMU exited with {s}")),
        None => (255, format!("{e}")),
    };
    let tail = sandbox.console_tail(5);
    tracing::warn!("VM died: {how}; console tail:\n{tail}");
    Exit {
        exit_code: code,
        reason: Some(format!("the VM died: {how}")),
        error: None,
    }
}

/// Copies one output stream of the main process into the log and to attached clients.
async fn pump(shim: Arc<Shim>, mut from: UnixStream, stream: Stream) {
    let kind = match stream {
        Stream::Stdout => Kind::Stdout,
        Stream::Stderr => Kind::Stderr,
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                shim.record(stream, &buf[..n]);
                let _ = shim.output.send(Frame::new(kind, buf[..n].to_vec()));
            }
        }
    }
}

async fn accept_loop(shim: Arc<Shim>, listener: UnixListener) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let s = shim.clone();
        shim.clients.lock().await.spawn(async move {
            if let Err(e) = handle(s, conn).await {
                tracing::debug!("client: {e:#}");
            }
        });
    }
}

async fn answer(conn: &mut UnixStream, r: Response) -> std::io::Result<()> {
    write_frame(conn, &Frame::json(Kind::Response, &r)).await
}

async fn handle(shim: Arc<Shim>, mut conn: UnixStream) -> Result<()> {
    let Some(f) = read_frame(&mut conn).await? else {
        return Ok(());
    };
    let req: Request = f.parse()?;
    tracing::debug!(?req, "request");
    match req {
        Request::Status => {
            let st = shim.status.borrow().clone();
            answer(&mut conn, Response::ok(&st)).await?
        }
        Request::Wait => {
            let mut rx = shim.status.subscribe();
            let st = rx
                .wait_for(|s| s.phase == Phase::Exited)
                .await
                .map(|s| s.clone());
            match st {
                Ok(s) => answer(&mut conn, Response::ok(&s.exit)).await?,
                Err(_) => answer(&mut conn, Response::err("shim is exiting")).await?,
            }
        }
        Request::Watch => {
            let mut rx = shim.status.subscribe();
            loop {
                let st = rx.borrow_and_update().clone();
                answer(&mut conn, Response::ok(&st)).await?;
                if st.phase == Phase::Exited || rx.changed().await.is_err() {
                    break;
                }
            }
        }
        Request::Kill { signal } => {
            let r = kill(&shim, signal).await;
            answer(&mut conn, r).await?
        }
        Request::Stop { timeout_s, signal } => {
            let r = stop(&shim, timeout_s, signal.unwrap_or(15)).await;
            answer(&mut conn, r).await?
        }
        Request::Stats => {
            let r = stats(&shim).await;
            answer(&mut conn, r).await?
        }
        Request::Pause { paused } => {
            let r = pause(&shim, paused);
            answer(&mut conn, r).await?
        }
        Request::Resize { rows, cols } => {
            let r = match resize(&shim, rows, cols).await {
                Ok(()) => Response::ok(&()),
                Err(e) => Response::err(format!("cannot resize: {e}")),
            };
            answer(&mut conn, r).await?
        }
        Request::Attach { stdin } => attach(shim, conn, stdin).await?,
        Request::Exec(spec) => exec(shim, conn, spec).await?,
    }
    Ok(())
}

async fn kill(shim: &Shim, signal: i32) -> Response {
    match shim.phase() {
        Phase::Exited => Response::err("container is not running"),
        Phase::Booting if shim.main_id.get().is_none() => {
            shim.abort_with(Exit {
                exit_code: 128 + signal,
                reason: Some(format!("killed by signal {signal} while booting")),
                error: None,
            });
            Response::ok(&())
        }
        _ => {
            let (Some(sb), Some(id)) = (shim.sandbox.get(), shim.main_id.get()) else {
                return Response::err("container is not running");
            };
            // A paused guest cannot take the signal: resume it first (docker's stop and
            // kill work on paused containers too).
            if shim.paused.load(Ordering::Relaxed) {
                let r = pause(shim, false);
                if !r.ok {
                    return r;
                }
            }
            match sb.agent().kill_process(id, signal).await {
                Ok(()) => Response::ok(&()),
                Err(e) => Response::err(format!("cannot signal the container: {e}")),
            }
        }
    }
}

async fn stop(shim: &Shim, timeout_s: u64, signal: i32) -> Response {
    let mut rx = shim.status.subscribe();
    if shim.phase() == Phase::Exited {
        let exit = shim.status.borrow().exit.clone();
        return Response::ok(&exit);
    }
    let _ = kill(shim, signal).await;
    let exited = |rx: &mut watch::Receiver<Status>, t: Duration| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(t, rx.wait_for(|s| s.phase == Phase::Exited))
                .await
                .is_ok()
        }
    };
    if !exited(&mut rx, Duration::from_secs(timeout_s)).await {
        tracing::info!("no exit {timeout_s}s after signal {signal}; killing");
        let _ = kill(shim, 9).await;
        if !exited(&mut rx, Duration::from_secs(2)).await {
            shim.abort_with(Exit {
                exit_code: 137,
                reason: Some("killed: the guest did not stop in time".into()),
                error: None,
            });
            let _ = exited(&mut rx, Duration::from_secs(10)).await;
        }
    }
    let exit = shim.status.borrow().exit.clone();
    Response::ok(&exit)
}

/// SIGSTOP or SIGCONT to QEMU: the VM's vCPUs and devices stop or go on.
fn pause(shim: &Shim, paused: bool) -> Response {
    let Some(sb) = shim.sandbox.get() else {
        return Response::err("container is not running");
    };
    let sig = if paused {
        rustix::process::Signal::STOP
    } else {
        rustix::process::Signal::CONT
    };
    match rustix::process::Pid::from_raw(sb.vm_pid() as i32) {
        Some(pid) => match rustix::process::kill_process(pid, sig) {
            Ok(()) => {
                shim.paused.store(paused, Ordering::Relaxed);
                Response::ok(&())
            }
            Err(e) => Response::err(format!("cannot signal the VM: {e}")),
        },
        None => Response::err("no VM process"),
    }
}

async fn stats(shim: &Shim) -> Response {
    let Some(sb) = shim.sandbox.get() else {
        return Response::err("container is not running");
    };
    if shim.paused.load(Ordering::Relaxed) {
        // The guest cannot answer: only the host's view of a frozen VM.
        return Response::ok(&Stats {
            cpus: shim.cfg.cpus,
            read_at: now(),
            vm_rss_bytes: rss_bytes(sb.vm_pid()),
            ..host_stats()
        });
    }
    match sb.agent().stats().await {
        Ok(s) => Response::ok(&Stats {
            cpu_usage_ns: s.cpu_usage_ns,
            memory_usage_bytes: s.memory_usage_bytes,
            memory_limit_bytes: s.memory_limit_bytes,
            pids: s.pids,
            cpus: shim.cfg.cpus,
            read_at: now(),
            vm_rss_bytes: rss_bytes(sb.vm_pid()),
            ..host_stats()
        }),
        Err(e) => Response::err(format!("cannot read stats from the guest: {e}")),
    }
}

/// The host's view from the helper's own cgroup (see [`apex_runtime::cgroup`]).
fn host_stats() -> Stats {
    let (used, limit) = apex_runtime::cgroup::own_memory().unwrap_or_default();
    Stats {
        host_memory_bytes: used,
        host_memory_limit_bytes: limit,
        ..Default::default()
    }
}

/// Resident memory of a host process, from `/proc/<pid>/status`.
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Streams the main process's output to this client and its input, resizes and signals
/// to the process, until the exit.
async fn attach(shim: Arc<Shim>, mut conn: UnixStream, want_stdin: bool) -> Result<()> {
    let mut rx = shim.output.subscribe();
    let status = shim.status.borrow().clone();
    answer(&mut conn, Response::ok(&())).await?;
    let (mut rd, mut wr) = conn.into_split();
    match status.phase {
        Phase::Exited => {
            let exit = status.exit.unwrap_or_default();
            write_frame(&mut wr, &Frame::json(Kind::Exit, &exit)).await?;
            return Ok(());
        }
        Phase::Running => write_frame(&mut wr, &Frame::new(Kind::Started, Vec::new())).await?,
        Phase::Booting => {}
    }
    shim.attached.notify_one();
    let input = {
        let shim = shim.clone();
        tokio::spawn(async move {
            while let Ok(Some(f)) = read_frame(&mut rd).await {
                control(&shim, f, want_stdin).await;
            }
        })
    };
    let res = async {
        loop {
            match rx.recv().await {
                Ok(f) => {
                    let last = f.kind == Kind::Exit;
                    write_frame(&mut wr, &f).await?;
                    if last {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("attached client fell behind; {n} output frames skipped");
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
    .await;
    input.abort();
    res
}

/// Sets the main process's terminal size; before it starts, the size it starts with.
async fn resize(shim: &Shim, rows: u16, cols: u16) -> Result<(), AgentError> {
    if let Ok(mut s) = shim.tty_size.lock() {
        *s = Some((rows, cols));
    }
    match (shim.sandbox.get(), shim.main_id.get()) {
        (Some(sb), Some(id)) => sb.agent().resize_tty(id, rows, cols).await,
        _ => Ok(()),
    }
}

/// Applies one client frame to the main process.
async fn control(shim: &Shim, f: Frame, stdin_allowed: bool) {
    let (Some(sb), Some(id)) = (shim.sandbox.get(), shim.main_id.get()) else {
        // Not started yet: input before the start is dropped; signals abort the boot; a
        // size is kept for the start.
        match f.kind {
            Kind::Signal => {
                if let Ok(s) = f.parse::<SignalReq>() {
                    let _ = kill(shim, s.signal).await;
                }
            }
            Kind::Resize => {
                if let Ok(r) = f.parse::<Resize>() {
                    let _ = resize(shim, r.rows, r.cols).await;
                }
            }
            _ => {}
        }
        return;
    };
    match f.kind {
        Kind::Stdin if stdin_allowed => {
            if let Some(w) = shim.stdin.lock().await.as_mut() {
                let _ = w.write_all(&f.payload).await;
            }
        }
        Kind::CloseStdin if stdin_allowed => {
            if let Some(mut w) = shim.stdin.lock().await.take() {
                let _ = w.shutdown().await;
            }
        }
        Kind::Resize => {
            if let Ok(r) = f.parse::<Resize>() {
                let _ = resize(shim, r.rows, r.cols).await;
            }
        }
        Kind::Signal => {
            if let Ok(s) = f.parse::<SignalReq>() {
                let _ = sb.agent().kill_process(id, s.signal).await;
            }
        }
        _ => {}
    }
}

/// Runs another process in the container, relaying its I/O on this connection.
async fn exec(shim: Arc<Shim>, mut conn: UnixStream, spec: ExecSpec) -> Result<()> {
    let Some(sb) = shim
        .sandbox
        .get()
        .cloned()
        .filter(|_| shim.phase() == Phase::Running)
    else {
        answer(&mut conn, Response::err("container is not running")).await?;
        return Ok(());
    };
    if spec.args.is_empty() {
        answer(&mut conn, Response::err("exec needs a command")).await?;
        return Ok(());
    }
    if shim.paused.load(Ordering::Relaxed) {
        let msg = "container is paused, unpause the container before exec";
        answer(&mut conn, Response::err(msg)).await?;
        return Ok(());
    }
    let pspec = exec_spec(&shim.cfg.process, &spec);
    answer(&mut conn, Response::ok(&())).await?;
    let spawned = if spec.tool {
        sb.spawn_tool_in(spec.args.clone(), spec.stdin, spec.rootfs.clone())
            .await
    } else {
        sb.spawn(&pspec, spec.stdin).await
    };
    let proc = match spawned {
        Ok(p) => p,
        Err(e) => {
            let code = e
                .downcast_ref::<AgentError>()
                .and_then(|a| a.start_failure())
                .map_or(126, |f| f.exit_code);
            let exit = Exit {
                exit_code: code,
                reason: None,
                error: Some(format!("{e:#}")),
            };
            write_frame(&mut conn, &Frame::json(Kind::Exit, &exit)).await?;
            return Ok(());
        }
    };
    let (mut rd, wr) = conn.into_split();
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    write_frame(
        &mut *wr.lock().await,
        &Frame::new(Kind::Started, Vec::new()),
    )
    .await?;
    let Process {
        id,
        stdin,
        stdout,
        stderr,
    } = proc;
    let closed = Arc::new(AtomicBool::new(false));
    let input = {
        let (sb, id) = (sb.clone(), id.clone());
        let mut stdin = stdin.map(|s| s.into_split().1);
        tokio::spawn(async move {
            while let Ok(Some(f)) = read_frame(&mut rd).await {
                match f.kind {
                    Kind::Stdin => {
                        if let Some(w) = stdin.as_mut() {
                            let _ = w.write_all(&f.payload).await;
                        }
                    }
                    Kind::CloseStdin => {
                        if let Some(mut w) = stdin.take() {
                            let _ = w.shutdown().await;
                        }
                    }
                    Kind::Resize => {
                        if let Ok(r) = f.parse::<Resize>() {
                            let _ = sb.agent().resize_tty(&id, r.rows, r.cols).await;
                        }
                    }
                    Kind::Signal => {
                        if let Ok(s) = f.parse::<SignalReq>() {
                            let _ = sb.agent().kill_process(&id, s.signal).await;
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    let relay = |from: UnixStream, kind: Kind| {
        let (wr, closed) = (wr.clone(), closed.clone());
        tokio::spawn(async move {
            let mut from = from;
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0 || closed.load(Ordering::Relaxed) {
                    break;
                }
                let f = Frame::new(kind, buf[..n].to_vec());
                if write_frame(&mut *wr.lock().await, &f).await.is_err() {
                    break;
                }
            }
        })
    };
    let out = relay(stdout, Kind::Stdout);
    let err = stderr.map(|s| relay(s, Kind::Stderr));
    let exit = match sb.agent().wait_process(&id).await {
        Ok(st) => Exit {
            exit_code: st.exit_code,
            reason: None,
            error: None,
        },
        Err(e) => Exit {
            exit_code: 255,
            reason: Some(format!("{e}")),
            error: None,
        },
    };
    let _ = tokio::time::timeout(OUTPUT_DRAIN, out).await;
    if let Some(e) = err {
        let _ = tokio::time::timeout(OUTPUT_DRAIN, e).await;
    }
    closed.store(true, Ordering::Relaxed);
    input.abort();
    write_frame(&mut *wr.lock().await, &Frame::json(Kind::Exit, &exit)).await?;
    Ok(())
}

/// The exec'd process: the container's environment, user and directory unless the
/// request overrides them.
fn exec_spec(base: &ProcessSpec, spec: &ExecSpec) -> ProcessSpec {
    let mut env = base.env.clone();
    for kv in &spec.env {
        let key = kv.split('=').next().unwrap_or(kv);
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    ProcessSpec {
        args: spec.args.clone(),
        env,
        cwd: spec.workdir.clone().unwrap_or_else(|| base.cwd.clone()),
        user: spec.user.clone().unwrap_or_else(|| base.user.clone()),
        terminal: spec.tty,
        init: false,
        tool: false,
    }
}

/// The current time, RFC 3339 with nanoseconds.
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_inherits_and_overrides() {
        let base = ProcessSpec {
            args: vec!["sh".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            cwd: "/srv".into(),
            user: "app".into(),
            terminal: false,
            init: false,
            tool: false,
        };
        let s = exec_spec(
            &base,
            &ExecSpec {
                args: vec!["env".into()],
                env: vec!["A=2".into(), "B=3".into()],
                tty: true,
                ..Default::default()
            },
        );
        assert_eq!(s.env, ["PATH=/bin", "A=2", "B=3"]);
        assert_eq!((s.cwd.as_str(), s.user.as_str()), ("/srv", "app"));
        assert!(s.terminal);
        assert_eq!(s.args, ["env"]);
    }
}
