//! The guest kernel and guest memory, end to end: the kernel choice (`apex system kernel`,
//! Debian's as the fallback), the memory floor, and freed guest memory going back to the
//! host through the balloon's free page reporting.

use std::time::{Duration, Instant};

use apex_e2e::apex::{children, ApexHome};
use apex_e2e::env::{eventually, BusyboxEnv};

/// The guest kernel release inside a container.
fn guest_release(e: &BusyboxEnv) -> String {
    let out = e
        .home
        .run(&["run", "--rm", &e.image, "cat", "/proc/sys/kernel/osrelease"]);
    out.assert_ok();
    out.stdout.trim().to_string()
}

fn kernel_setting(home: &ApexHome, args: &[&str]) -> String {
    let mut all = vec!["system", "kernel"];
    all.extend_from_slice(args);
    let out = home.run(&all);
    out.assert_ok();
    out.stdout
}

#[test]
fn containers_boot_apex_kernel_and_the_debian_fallback() {
    let e = BusyboxEnv::new();
    let shown = kernel_setting(&e.home, &["show"]);
    let Some(own) = shown
        .lines()
        .find_map(|l| l.strip_prefix("kernel:"))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
    else {
        panic!("no kernel line in {shown}")
    };
    assert!(
        own.ends_with("-apex"),
        "default kernel is not Apex's: {shown}"
    );
    assert_eq!(guest_release(&e), own);

    let set = kernel_setting(&e.home, &["set", "--debian"]);
    assert!(set.contains("setting: debian"), "{set}");
    let debian = guest_release(&e);
    assert!(
        debian.contains("cloud-amd64"),
        "not Debian's kernel: {debian}"
    );
    // The fallback loads its virtio drivers as modules and still mounts a volume (virtio-fs,
    // loaded on demand) and reaches the network (virtio-net).
    let vol = e.home.run(&[
        "run",
        "--rm",
        "-v",
        "kv:/data",
        &e.image,
        "sh",
        "-c",
        "echo persisted >/data/f && cat /data/f && ip -o link show eth0 | grep -c UP",
    ]);
    vol.assert_ok();
    assert_eq!(vol.stdout, "persisted\n1\n", "{}", vol.dump());

    kernel_setting(&e.home, &["set", "--default"]);
    assert_eq!(guest_release(&e), own);

    let bad = e
        .home
        .run(&["system", "kernel", "set", "/nonexistent/vmlinux"]);
    bad.assert_failure();
    assert!(
        bad.stderr.contains("/nonexistent/vmlinux"),
        "{}",
        bad.dump()
    );
    assert!(kernel_setting(&e.home, &["show"]).contains("setting: default"));
}

#[test]
fn memory_below_the_floor_is_refused_before_any_vm_starts_and_the_floor_boots() {
    let e = BusyboxEnv::new();
    let out = e
        .home
        .run(&["run", "--rm", "--memory", "32m", &e.image, "true"]);
    out.assert_failure();
    assert!(
        out.stderr.contains("too small")
            && out
                .stderr
                .contains(&format!("{}m", apex_vm::MIN_MEMORY_MIB)),
        "{}",
        out.dump()
    );
    // Nothing was created: no container, no VM state.
    assert_eq!(e.home.run(&["ls", "-aq"]).stdout, "");
    let vms = e.path().join("vms");
    assert!(
        std::fs::read_dir(&vms).map_or(true, |mut d| d.next().is_none()),
        "a VM was started"
    );

    let floor = format!("{}m", apex_vm::MIN_MEMORY_MIB);
    let out = e.home.run(&[
        "run",
        "--rm",
        "--memory",
        &floor,
        &e.image,
        "sh",
        "-c",
        "echo ok; free -m | grep Mem",
    ]);
    out.assert_ok();
    assert!(out.stdout.starts_with("ok\n"), "{}", out.dump());
}

/// Proportional set size of `pid`, in KiB (shared pages counted by share).
fn pss_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_else(|e| panic!("smaps_rollup of {pid}: {e}"));
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("Pss line")
}

/// The QEMU process of the container whose helper is `shim`.
fn qemu_of(shim: u32) -> u32 {
    match children(shim as i32, "qemu-system")[..] {
        [qemu] => qemu as u32,
        ref other => panic!("helper {shim} has QEMU children {other:?}, not one"),
    }
}

#[test]
fn memory_a_guest_frees_goes_back_to_the_host() {
    let e = BusyboxEnv::new();
    let out = e.home.run(&[
        "run",
        "-d",
        "--name",
        "mem",
        "--memory",
        "512m",
        "--tmpfs",
        "/big:size=300m",
        &e.image,
        "sleep",
        "600",
    ]);
    out.assert_ok();
    let shim = e.home.apex_json(&["inspect", "mem"])[0]["shim_pid"]
        .as_u64()
        .expect("shim pid") as u32;
    let qemu = qemu_of(shim);
    let exec = |script: &str| {
        let out = e.home.run(&["exec", "mem", "sh", "-c", script]);
        out.assert_ok();
    };
    // Idle: the guest has booted and settled (its own free pages reported once).
    exec("true");
    std::thread::sleep(Duration::from_secs(3));
    let idle = pss_kib(qemu);

    exec("dd if=/dev/zero of=/big/fill bs=1M count=200 2>/dev/null");
    let filled = pss_kib(qemu);
    assert!(
        filled > idle + 180 * 1024,
        "200 MiB written to a guest tmpfs did not show on the host: idle {idle} KiB, filled {filled} KiB"
    );

    exec("rm /big/fill");
    let t0 = Instant::now();
    let back = eventually(
        Duration::from_secs(10),
        "freed guest memory to return",
        || {
            let now = pss_kib(qemu);
            (now <= idle + idle / 10).then_some(now)
        },
    );
    eprintln!(
        "QEMU PSS: idle {} MiB, with 200 MiB used {} MiB, {} MiB {:.1} s after the free",
        idle / 1024,
        filled / 1024,
        back / 1024,
        t0.elapsed().as_secs_f64()
    );
    e.home.run(&["rm", "-f", "mem"]).assert_ok();
}
