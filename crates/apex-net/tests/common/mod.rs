//! Test helpers: run async test bodies inside a fresh, private network namespace.
#![allow(dead_code)]

use std::future::Future;

/// Whether we run as root (bridge, tap and nftables tests need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `body` on a dedicated thread that first moves itself into a new network namespace
/// (`unshare(CLONE_NEWNET)`), on a current-thread tokio runtime. Netlink sockets, tap fds,
/// `nft` children and /proc/sys writes made from that thread all act on the private
/// namespace, which the kernel destroys with everything in it when the thread exits, so the
/// host's network is never touched and nothing leaks even if the body panics.
///
/// Returns `None` (and says so) when not root.
pub fn in_new_netns<F, Fut, T>(name: &str, body: F) -> Option<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    if !is_root() {
        eprintln!("skipping {name}: needs root for a private network namespace");
        return None;
    }
    let handle = std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            // SAFETY: unshare(CLONE_NEWNET) changes only this thread's network namespace;
            // no memory is shared or invalidated.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(body())
        })
        .expect("spawn netns thread");
    match handle.join() {
        Ok(v) => Some(v),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs a shell command (in the caller thread's namespace), panicking with its stderr if it
/// fails; returns stdout.
pub fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An extra network namespace (a "container" or an "outside host" in traffic tests), kept
/// alive by an open nsfs descriptor and destroyed by the kernel when it is dropped (once the
/// sockets made inside are closed too).
pub struct Netns(std::fs::File);

impl Netns {
    /// A new empty namespace (loopback up).
    pub fn new() -> Netns {
        let file = std::thread::spawn(|| {
            // SAFETY: affects only this short-lived thread's network namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
            sh("ip link set lo up");
            std::fs::File::open("/proc/thread-self/ns/net").expect("open own netns")
        })
        .join()
        .expect("netns thread");
        Netns(file)
    }

    /// The namespace of the calling thread.
    pub fn current() -> Netns {
        Netns(std::fs::File::open("/proc/thread-self/ns/net").expect("open own netns"))
    }

    /// An fd referring to the namespace (for `setns_by_fd`).
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }

    /// Runs `f` on a thread inside the namespace. Sockets created there stay in it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: fd is a valid nsfs descriptor (kept open by self); setns only
                // affects this scoped thread.
                let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}
