//! apex-init: PID 1 inside each Apex container VM.
//!
//! As PID 1 (no arguments) it boots the guest ([`boot`]), then serves the host's JSON-RPC
//! control connections on vsock port [`apex_agent_proto::CONTROL_PORT`] ([`server`]) and runs
//! the container's processes ([`process`]); published ports are forwarded on vsock port
//! [`apex_agent_proto::FORWARD_PORT`] ([`forward`]). It never exits: fatal errors and
//! panics reboot the VM.
//!
//! Test mode, `apex-init --serve-unix PATH --root DIR [--debug]`, runs the same agent on the
//! host: no boot steps, a private mount namespace with the container mounts under `DIR`,
//! control on the Unix socket `PATH`, port forwarding on `PATH@1025`, and stdio connections
//! to `PATH_<port>` (what the host's vhost-device-vsock backend does with guest connections
//! to CID 2).

pub mod log;

pub mod boot;
pub mod cmdline;
pub mod container_fs;
pub mod copy;
pub mod forward;
pub mod layer_diff;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod power;
pub mod process;
pub mod pty;
pub mod reaper;
pub mod rtnl;
pub mod server;
pub mod spawn;
pub mod stats;
pub mod sys;
pub mod tool;
pub mod transport;
pub mod user;

use std::path::PathBuf;
use std::sync::Arc;

use crate::server::Agent;
use crate::transport::Transport;

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 in the guest.
    Init,
    /// Test mode on the host.
    ServeUnix {
        /// Control socket.
        path: PathBuf,
        /// Container root to chroot into.
        root: PathBuf,
        /// Verbose logs.
        debug: bool,
    },
    /// A built-in tool ([`tool`]), started by the agent as a container process.
    Tool(Vec<String>),
    /// The reaping init of `--init` ([`reaper`]).
    Reaper(Vec<String>),
}

const USAGE: &str = "usage: apex-init                 (as PID 1 in the guest)\n       \
                     apex-init --serve-unix PATH --root DIR [--debug]\n       \
                     apex-init tool NAME ARGS...\n       \
                     apex-init -- PROGRAM ARGS...      (a reaping init)";

/// Parses arguments (without argv\[0\]).
pub fn parse_args(args: &[String]) -> Result<Mode, String> {
    if args.is_empty() {
        return Ok(Mode::Init);
    }
    if args[0] == spawn::TOOL_ARG {
        return Ok(Mode::Tool(args[1..].to_vec()));
    }
    if args[0] == spawn::INIT_ARG {
        return Ok(Mode::Reaper(args[1..].to_vec()));
    }
    let (mut path, mut root, mut debug) = (None, None, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--serve-unix" => path = it.next().map(PathBuf::from),
            "--root" => root = it.next().map(PathBuf::from),
            "--debug" => debug = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    match (path, root) {
        (Some(path), Some(root)) => Ok(Mode::ServeUnix { path, root, debug }),
        _ => Err("--serve-unix PATH and --root DIR are both required".into()),
    }
}

/// Blocks SIGCHLD in the calling thread (and so in every thread spawned later), to be
/// collected with sigwaitinfo by the reaper thread. Children get an empty mask before exec.
fn block_sigchld() -> libc::sigset_t {
    // SAFETY: sigset_t is plain old data, initialized by sigemptyset/sigaddset; the mask
    // change only affects signal delivery.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn spawn_reaper(agent: Arc<Agent>, set: libc::sigset_t) {
    std::thread::spawn(move || loop {
        agent.procs.reap();
        // SAFETY: `set` is a valid sigset_t; a null siginfo pointer is allowed.
        unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
    });
}

/// Test mode: a private mount namespace, so the container mounts vanish with the process.
fn private_mount_namespace() -> std::io::Result<()> {
    // SAFETY: unshare(2) has no memory-safety preconditions; called before any thread exists.
    sys::cvt(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    sys::mount(
        "",
        std::path::Path::new("/"),
        "",
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
}

/// The entry point of the binary.
pub fn main() -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match parse_args(&args) {
        Ok(Mode::Tool(args)) => std::process::exit(tool::run(&args)),
        Ok(Mode::Reaper(args)) => std::process::exit(reaper::run(&args)),
        Ok(Mode::Init) if std::process::id() != 1 => {
            eprintln!("apex-init: not PID 1\n{USAGE}");
            std::process::exit(2)
        }
        Ok(m) => m,
        Err(e) => {
            eprintln!("apex-init: {e}\n{USAGE}");
            std::process::exit(2)
        }
    };
    let pid1 = mode == Mode::Init;
    power::install_panic_hook(pid1);
    let (transport, root, mounts) = match mode {
        Mode::Init => {
            let booted = boot::boot();
            (Transport::Vsock, booted.root, booted.mounts)
        }
        Mode::Tool(_) | Mode::Reaper(_) => unreachable!("tools and the reaper exit above"),
        Mode::ServeUnix { path, root, debug } => {
            log::set_debug(debug);
            if let Err(e) = private_mount_namespace() {
                eprintln!("apex-init: private mount namespace: {e}");
                std::process::exit(1)
            }
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
            let mounts = mounts::setup_container_root(&root);
            (Transport::Unix { path }, root, mounts)
        }
    };
    let sigset = block_sigchld();
    let (agent, events) = Agent::new(transport.clone(), root, pid1);
    *process::lock(&agent.mounts) = mounts;
    let weak = Arc::downgrade(&agent);
    std::thread::spawn(move || server::run_event_loop(weak, events));
    spawn_reaper(agent.clone(), sigset);
    let listener = match transport.listen() {
        Ok(l) => l,
        Err(e) => {
            info!("listen: FAILED: {e}");
            if pid1 {
                power::reboot(true)
            }
            std::process::exit(1)
        }
    };
    match transport.listen_port(apex_agent_proto::FORWARD_PORT) {
        Ok(l) => {
            std::thread::spawn(move || forward::serve(l));
        }
        Err(e) => info!("forward listen: FAILED: {e}"),
    }
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let uptime = uptime.split_whitespace().next().unwrap_or("?");
    info!("ready (uptime {uptime} s)");
    if pid1 {
        let t = transport.clone();
        std::thread::spawn(move || signal_ready(&t));
    }
    server::serve(agent, listener)
}

/// How long [`signal_ready`] keeps trying.
const READY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Tells the host that the agent listens: connects to host port
/// [`apex_agent_proto::READY_PORT`]. The host binds that port
/// right after it starts QEMU, long before a guest gets here; should it not yet be
/// bound, the vsock backend resets the connection and this retries, for at most
/// [`READY_PATIENCE`].
fn signal_ready(transport: &Transport) {
    let t0 = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match transport.connect_host(apex_agent_proto::READY_PORT) {
            // The connection is the signal; the host closes it at once.
            Ok(_) => return,
            Err(e) if t0.elapsed() >= READY_PATIENCE => {
                info!("ready signal: host never accepted: {e}");
                return;
            }
            Err(e) => debug!("ready signal: {e}; retrying"),
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn args() {
        assert_eq!(parse_args(&[]).unwrap(), Mode::Init);
        assert_eq!(
            parse_args(&s(&["--serve-unix", "/s", "--root", "/r", "--debug"])).unwrap(),
            Mode::ServeUnix {
                path: "/s".into(),
                root: "/r".into(),
                debug: true
            }
        );
        assert!(parse_args(&s(&["--serve-unix", "/s"])).is_err());
        assert!(parse_args(&s(&["--bogus"])).is_err());
    }
}
