//! Host-side caps end to end: each container's helper, QEMU and backends run in a cgroup
//! of their own with CPU capped to its vCPUs and memory to its RAM plus the VMM's
//! overhead; a guest that exhausts its memory is OOM-killed inside its VM while a
//! neighbour keeps running.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use apex_e2e::apex::children;
use apex_e2e::env::BusyboxEnv;

/// The cgroup directory of `pid` for the v1 controller `ctrl` (or the v2 one).
fn cgroup_dir(pid: i32, ctrl: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|x| x == ctrl))
        })
        .or_else(|| text.lines().find(|l| l.starts_with("0::")))
        .unwrap_or_else(|| panic!("no {ctrl} cgroup for {pid}: {text}"));
    let path = line.splitn(3, ':').nth(2).unwrap().trim_start_matches('/');
    let v1 = PathBuf::from("/sys/fs/cgroup").join(ctrl).join(path);
    if v1.exists() {
        v1
    } else {
        PathBuf::from("/sys/fs/cgroup").join(path)
    }
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn containers_are_capped_on_the_host() {
    let e = BusyboxEnv::new();
    let busy = e.home.run(&[
        "run",
        "-d",
        "--cpus",
        "1",
        "--memory",
        "256m",
        &e.image,
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    busy.assert_ok();
    let id = busy.stdout.trim().to_string();
    let info = e.home.apex_json(&["inspect", &id]);
    let shim = info[0]["shim_pid"].as_i64().unwrap() as i32;
    let qemu = children(shim, "qemu-system")[0];
    let backend = children(shim, "vhost-device-vs")[0];

    // QEMU runs under its own seccomp filter (`-sandbox on,...`), with no_new_privs.
    let status = std::fs::read_to_string(format!("/proc/{qemu}/status")).unwrap();
    for want in [["Seccomp:", "2"], ["NoNewPrivs:", "1"]] {
        assert!(
            status.lines().any(|l| l.split_whitespace().eq(want)),
            "{want:?}: {status}"
        );
    }

    // The helper and everything it started share one cgroup, named after the container.
    let cpu = cgroup_dir(qemu, "cpu");
    let mem = cgroup_dir(qemu, "memory");
    assert!(
        cpu.to_string_lossy()
            .contains(&format!("apex/{}", &id[..12])),
        "{}",
        cpu.display()
    );
    for pid in [shim, backend] {
        assert_eq!(cgroup_dir(pid, "cpu"), cpu);
        assert_eq!(cgroup_dir(pid, "memory"), mem);
    }
    let limit: u64 = if mem.join("memory.max").exists() {
        read(mem.join("memory.max")).parse().unwrap()
    } else {
        read(mem.join("memory.limit_in_bytes")).parse().unwrap()
    };
    assert_eq!(limit, (256 + apex_runtime::cgroup::VMM_OVERHEAD_MIB) << 20);
    if cpu.join("cpu.max").exists() {
        assert_eq!(read(cpu.join("cpu.max")), "100000 100000");
    } else {
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "100000");
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
    }

    // A busy guest uses at most about one host core.
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let (t0, c0) = (Instant::now(), cpu_ticks(qemu));
    std::thread::sleep(Duration::from_secs(5));
    let cores = (cpu_ticks(qemu) - c0) as f64 / hz / t0.elapsed().as_secs_f64();
    eprintln!("busy guest with --cpus 1: {cores:.2} host cores");
    assert!(cores <= 1.15, "{cores:.2} cores");
    e.home.run(&["rm", "-f", &id]).assert_ok();

    // A guest that takes all its memory stays inside its VM and its cap: the guest's
    // kernel OOM-kills it (or, under TCG, may thrash for a while first); a neighbour
    // runs on, and the host side never passes the cap.
    let neighbour = e
        .home
        .run(&["run", "-d", "--memory", "256m", &e.image, "sleep", "600"]);
    neighbour.assert_ok();
    let n = neighbour.stdout.trim().to_string();
    // `apex stats` shows the host's view beside the guest's.
    let stats = e
        .home
        .apex_json(&["stats", "--no-stream", "--format", "json", &n]);
    assert_eq!(
        stats[0]["host_memory_limit_bytes"].as_u64(),
        Some((256 + apex_runtime::cgroup::VMM_OVERHEAD_MIB) << 20),
        "{stats:#}"
    );
    assert!(
        stats[0]["host_memory_bytes"].as_u64().unwrap() > 0,
        "{stats:#}"
    );
    let hog = e.home.run(&[
        "run",
        "-d",
        "--memory",
        "128m",
        &e.image,
        "sh",
        "-c",
        "x=aaaaaaaaaaaaaaaa; while :; do x=$x$x; done",
    ]);
    hog.assert_ok();
    let h = hog.stdout.trim().to_string();
    let hog_shim = e.home.apex_json(&["inspect", &h])[0]["shim_pid"]
        .as_i64()
        .unwrap() as i32;
    let hog_mem = cgroup_dir(children(hog_shim, "qemu-system")[0], "memory");
    let peak = || {
        ["memory.max_usage_in_bytes", "memory.peak"]
            .iter()
            .find_map(|f| {
                std::fs::read_to_string(hog_mem.join(f))
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
    };
    let mut peak_seen = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        peak_seen = peak_seen.max(peak().unwrap_or(0));
        let st = &e.home.apex_json(&["inspect", &h])[0];
        if st["state"] == "exited" || Instant::now() > deadline {
            break st["exit_code"].as_i64();
        }
        let out = e.home.run(&["exec", &n, "echo", "still-here"]);
        out.assert_ok();
        assert_eq!(out.stdout.trim(), "still-here");
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!(
        "memory hog after at most 20 s: exit code {code:?} (137: OOM-killed in its VM); host peak seen {} MiB",
        peak_seen >> 20
    );
    assert!(peak_seen > 0, "the hog's cgroup was never read");
    assert!(peak_seen <= (128 + apex_runtime::cgroup::VMM_OVERHEAD_MIB) << 20);
    e.home.run(&["rm", "-f", &h, &n]).assert_ok();
    assert!(!hog_mem.exists(), "{} is left", hog_mem.display());
    // The cgroups go with their containers.
    assert!(!cpu.exists(), "{} is left", cpu.display());
}

/// Neither API socket is reachable by another local user (here `nobody`), while root's
/// connections go through.
#[test]
fn api_sockets_refuse_other_users() {
    let home = apex_e2e::apex::ApexHome::new();
    home.run(&["system", "start"]).assert_ok();
    for sock in ["apex.sock", "docker.sock"] {
        let path = home.path().join("run").join(sock);
        let connect = |as_nobody: bool| {
            let mut cmd = std::process::Command::new(if as_nobody { "setpriv" } else { "socat" });
            if as_nobody {
                cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "socat"]);
            }
            cmd.args(["-u", "OPEN:/dev/null"])
                .arg(format!("UNIX-CONNECT:{}", path.display()))
                .output()
                .expect("socat and setpriv (scripts/install-deps.sh)")
        };
        let root = connect(false);
        assert!(
            root.status.success(),
            "{sock}: {}",
            String::from_utf8_lossy(&root.stderr)
        );
        let other = connect(true);
        assert!(!other.status.success(), "{sock}: nobody connected");
        let err = String::from_utf8_lossy(&other.stderr);
        assert!(err.contains("Permission denied"), "{sock}: {err}");
    }
}
