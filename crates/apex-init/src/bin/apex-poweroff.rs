//! The benchmark's lower bound: a PID 1 that powers the VM off at once. Booting it with
//! the same QEMU, kernel and devices as a container measures everything Apex cannot
//! avoid (QEMU start, kernel boot, shutdown); the rest is Apex's own overhead.

fn main() {
    // SAFETY: plain syscalls without pointers; as PID 1 there is nothing else to clean up.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // reboot(2) does not return on success; PID 1 must never exit.
    loop {
        std::thread::park();
    }
}
