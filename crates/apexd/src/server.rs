//! Running the daemon: single-instance lock, pid file, socket, graceful shutdown.

use std::fs::{File, OpenOptions};
use std::future::IntoFuture;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustix::fs::{flock, FlockOperation};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::api::{self, AppState};
use crate::networks::Networks;
use crate::paths::Paths;
use crate::services::Services;
use crate::store::StateStore;

/// How long in-flight requests get to finish once shutdown starts.
const DRAIN: Duration = Duration::from_secs(5);

/// Daemon options.
#[derive(Clone, Debug)]
pub struct Options {
    /// `$APEX_HOME`.
    pub home: std::path::PathBuf,
    /// Also log to stderr.
    pub foreground: bool,
    /// Debug logs.
    pub debug: bool,
}

/// Runs the daemon until SIGTERM, SIGINT or `POST /v1/system/shutdown`.
pub fn run(opts: &Options) -> Result<()> {
    let paths = Paths::new(&opts.home);
    let run_dir = paths.run_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot chmod {}", run_dir.display()))?;
    let lock = acquire_lock(&paths)?;
    crate::logging::init(&paths, opts.foreground, opts.debug)?;
    let store = StateStore::open(&paths.state_db())?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let res = rt.block_on(serve(&paths, store));
    // Clean up before the lock is released, so a successor never sees our leftovers.
    let _ = std::fs::remove_file(paths.socket());
    let _ = std::fs::remove_file(paths.pid_file());
    match &res {
        Ok(()) => tracing::info!("apexd stopped"),
        Err(e) => tracing::error!("apexd failed: {e:#}"),
    }
    drop(lock);
    res
}

/// Takes `run/apexd.lock` exclusively for the life of the returned file.
fn acquire_lock(paths: &Paths) -> Result<File> {
    let path = paths.lock_file();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let pid = std::fs::read_to_string(paths.pid_file()).unwrap_or_default();
            let pid = pid.trim();
            let who = if pid.is_empty() {
                "another apexd".to_string()
            } else {
                format!("another apexd (pid {pid})")
            };
            bail!(
                "{who} is already running for {}; stop it with `apex system stop`",
                paths.home().display()
            )
        }
        Err(e) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// The gid of group `docker`, if the host has one (from `/etc/group`).
fn docker_gid() -> Option<u32> {
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"docker")).then(|| f.get(2)?.parse().ok())?
        })
}

/// Serves the Docker Engine API on `run/docker.sock` (0660 with group `docker` when the
/// host has that group, else 0600) and, when `APEX_DOCKER_TCP` names a loopback
/// address, on TCP too. Returns the server tasks.
fn serve_docker(
    paths: &Paths,
    services: &Arc<Services>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let sock = paths.docker_socket();
    match std::fs::remove_file(&sock) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", sock.display()))
        }
        _ => {}
    }
    let listener = UnixListener::bind(&sock)
        .with_context(|| format!("cannot listen on {}", sock.display()))?;
    let mode = match docker_gid() {
        Some(gid) => {
            rustix::fs::chown(&sock, None, Some(rustix::fs::Gid::from_raw(gid)))
                .with_context(|| format!("cannot give {} to group docker", sock.display()))?;
            // The run directory is 0700: let the docker group through to the socket.
            let run = paths.run_dir();
            rustix::fs::chown(&run, None, Some(rustix::fs::Gid::from_raw(gid)))
                .with_context(|| format!("cannot give {} to group docker", run.display()))?;
            std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o710))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", sock.display()))?;
    let app = crate::docker::app(services.clone());
    let mut tasks = vec![tokio::spawn(async move {
        let make = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
        if let Err(e) = axum::serve(listener, make).await {
            tracing::error!("docker api: {e}");
        }
    })];
    tracing::info!("Docker Engine API on {}", sock.display());
    if let Ok(addr) = std::env::var("APEX_DOCKER_TCP") {
        let addr: std::net::SocketAddr = addr
            .parse()
            .with_context(|| format!("APEX_DOCKER_TCP={addr} is not an address:port"))?;
        if !addr.ip().is_loopback() {
            bail!("APEX_DOCKER_TCP={addr}: only loopback addresses are served (the API has no authentication)");
        }
        let std_listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr}"))?;
        std_listener.set_nonblocking(true)?;
        let l = tokio::net::TcpListener::from_std(std_listener)?;
        let app = crate::docker::app(services.clone());
        tasks.push(tokio::spawn(async move {
            let make = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
            if let Err(e) = axum::serve(l, make).await {
                tracing::error!("docker api (tcp): {e}");
            }
        }));
        tracing::info!("Docker Engine API on tcp://{addr}");
    }
    Ok(tasks)
}

/// Writes our pid atomically (temp file + rename).
fn write_pid(path: &Path) -> Result<()> {
    let tmp = path.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

async fn serve(paths: &Paths, store: StateStore) -> Result<()> {
    // Before anything listens: a client may signal us as soon as it can connect.
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let sock = paths.socket();
    // We hold the lock, so a socket file left here belongs to a dead daemon.
    match std::fs::remove_file(&sock) {
        Ok(()) => tracing::warn!("removed stale socket {}", sock.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", sock.display())),
    }
    let listener = UnixListener::bind(&sock)
        .with_context(|| format!("cannot listen on {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod {}", sock.display()))?;
    write_pid(&paths.pid_file())?;

    let shutdown = Arc::new(Notify::new());
    let store = Arc::new(store);
    let networks = Networks::start(paths.home(), store.clone()).await;
    let services = Services::new(
        paths.clone(),
        store,
        shutdown.clone(),
        crate::info::ACCEL_CACHE.into(),
        networks.clone(),
    );
    let state = AppState::from_services(services.clone());
    if let Err(e) = state.volumes().recover() {
        tracing::error!("recovering volumes: {e:#}");
    }
    if let Err(e) = state.containers().recover().await {
        tracing::error!("recovering containers: {e:#}");
    }
    services.builds().sweep().await;
    let app = api::router(state);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    let mut server = tokio::spawn(server.into_future());
    let docker = serve_docker(paths, &services)?;
    tracing::info!(
        pid = std::process::id(),
        home = %paths.home().display(),
        "apexd {} listening on {}",
        env!("CARGO_PKG_VERSION"),
        sock.display()
    );

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        _ = shutdown.notified() => {}
        res = &mut server => {
            res.context("server task failed")?.context("server failed")?;
            bail!("server stopped unexpectedly");
        }
    }
    let _ = stop_tx.send(());
    for d in docker {
        d.abort();
    }
    let _ = std::fs::remove_file(paths.docker_socket());
    match tokio::time::timeout(DRAIN, &mut server).await {
        Ok(res) => res
            .context("server task failed")?
            .context("server failed")?,
        Err(_) => {
            tracing::warn!("requests still running after {DRAIN:?}; stopping anyway");
            server.abort();
        }
    }
    let cleanup = std::env::var("APEX_NETWORK_CLEANUP")
        .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
    networks.shutdown(cleanup).await;
    Ok(())
}
