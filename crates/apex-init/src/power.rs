//! Shutdown, reboot and the panic hook. PID 1 must never exit (the kernel would panic), so
//! every fatal path ends in reboot(2); the VM runs with `-no-reboot`, so QEMU exits.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::server::Agent;
use crate::stats;

/// Syncs and reboots; if that fails (e.g. not PID 1), exits in test mode or parks forever.
pub fn reboot(pid1: bool) -> ! {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    if pid1 {
        // SAFETY: reboot(2) with a valid command; does not return on success.
        unsafe { libc::reboot(libc::RB_AUTOBOOT) };
        crate::info!("reboot failed: {}", std::io::Error::last_os_error());
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    std::process::exit(0)
}

/// Installs a panic hook that logs the panic and, as PID 1, reboots the VM.
pub fn install_panic_hook(pid1: bool) {
    std::panic::set_hook(Box::new(move |info| {
        crate::info!("PANIC: {info}");
        if pid1 {
            reboot(true);
        }
    }));
}

/// Signals every process (PID 1: all of them, with kill(-1); test mode: init's descendants).
fn signal_all(pid1: bool, sig: libc::c_int) {
    if pid1 {
        // SAFETY: kill(2) has no memory-safety preconditions; -1 never includes init.
        unsafe { libc::kill(-1, sig) };
    } else {
        for (pid, _) in stats::descendants(std::process::id() as i32) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

/// Waits until no process but init remains (the reaper collects them), up to `timeout`.
fn wait_all_gone(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if stats::descendants(std::process::id() as i32).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `shutdown` call, after the reply was sent: SIGTERM everything, a short grace period,
/// SIGKILL, sync, unmount the container mounts (best effort), reboot.
pub fn shutdown(agent: &Agent) -> ! {
    crate::info!("shutdown: stopping processes");
    let start = Instant::now();
    signal_all(agent.pid1, libc::SIGTERM);
    if !wait_all_gone(Duration::from_secs(2)) {
        crate::info!("shutdown: sending SIGKILL to remaining processes");
        signal_all(agent.pid1, libc::SIGKILL);
        wait_all_gone(Duration::from_secs(1));
    }
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    if agent.pid1 {
        let mounts = std::mem::take(&mut *crate::process::lock(&agent.mounts));
        for m in mounts.iter().rev() {
            if let Err(e) = crate::sys::umount(Path::new(m), libc::MNT_DETACH) {
                crate::debug!("umount {}: {e}", m.display());
            }
        }
    }
    // Give the reply time to leave through the vsock device.
    std::thread::sleep(Duration::from_millis(200).saturating_sub(start.elapsed()));
    crate::info!("shutdown: done in {:?}", start.elapsed());
    reboot(agent.pid1)
}
