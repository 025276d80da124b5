//! `apex run` end to end: real QEMU VMs (TCG here), the real guest init, images from a
//! real registry.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apex_e2e::apex::{ApexHome, RunOutput};
use apex_e2e::env::BusyboxEnv;
use apex_e2e::images::{self, Compression};
use apex_e2e::registry::{Registry, RegistryAuth};
use apex_e2e::skopeo;

type Env = BusyboxEnv;

fn env() -> Env {
    BusyboxEnv::new()
}

/// Runs `apex` with a deadline so a hung VM fails the test instead of hanging CI.
fn run_with(home: &ApexHome, args: &[&str], stdin: Option<&[u8]>) -> RunOutput {
    let mut cmd = home.cmd();
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("spawn apex");
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    let out = wait_deadline(child, Duration::from_secs(180));
    RunOutput::of(&cmd, Ok(out))
}

fn wait_deadline(mut child: Child, limit: Duration) -> std::process::Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() || start.elapsed() > limit {
            let _ = child.kill();
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// No process mentions this home (QEMU and its backends carry the VM state dir in their
/// arguments) and no VM state is left.
fn assert_clean(home: &ApexHome) {
    let needle = home.path().to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leftovers: Vec<String> = fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&needle))
            .collect();
        if leftovers.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left running: {leftovers:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let vms = home.path().join("vms");
    let left = fs::read_dir(&vms).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "VM state left in {}", vms.display());
}

#[test]
fn output_exit_codes_env_workdir_user_and_stdin() {
    let e = env();
    let h = &e.home;
    let out = run_with(
        h,
        &["run", "--rm", &e.image, "echo", "hello", "world"],
        None,
    );
    out.assert_ok();
    assert_eq!(out.stdout, "hello world\n");

    let out = run_with(
        h,
        &[
            "run",
            "--rm",
            &e.image,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
    );
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(out.stdout, "out\n");
    assert!(out.stderr.contains("err"), "{}", out.stderr);

    let envfile = e.tmp.path().join("env.list");
    fs::write(&envfile, "# comment\nFROM_FILE=f\nBAR=file\n").unwrap();
    let out = run_with(
        h,
        &[
            "run",
            "--rm",
            "-e",
            "FOO=bar",
            "-e",
            "BAR=flag",
            "--env-file",
            envfile.to_str().unwrap(),
            "-w",
            "/work/dir",
            "-u",
            "apex",
            &e.image,
            "sh",
            "-c",
            "echo $FOO $BAR $FROM_FILE; pwd; id -u; id -g; echo $HOME; hostname",
        ],
        None,
    );
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[..5],
        ["bar flag f", "/work/dir", "1000", "1000", "/home/apex"],
        "{}",
        out.stdout
    );
    assert!(!lines[5].is_empty());

    let out = run_with(h, &["run", "--rm", "-u", "1234:5678", &e.image, "id"], None);
    out.assert_ok();
    assert!(
        out.stdout.contains("uid=1234") && out.stdout.contains("gid=5678"),
        "{}",
        out.stdout
    );

    let data = b"line one\nline two\n".repeat(1000);
    let out = run_with(h, &["run", "--rm", "-i", &e.image, "cat"], Some(&data));
    out.assert_ok();
    assert_eq!(out.stdout.as_bytes(), &data[..]);

    let out = run_with(
        h,
        &["run", "--rm", "--name", "named-box", &e.image, "hostname"],
        None,
    );
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "named-box");
    assert_clean(h);
}

#[test]
fn start_failures_have_docker_exit_codes() {
    let e = env();
    let out = run_with(&e.home, &["run", "--rm", &e.image, "no-such-command"], None);
    assert_eq!(out.code, Some(127), "{out:?}");
    assert!(out.stderr.contains("no-such-command"), "{}", out.stderr);

    let out = run_with(
        &e.home,
        &["run", "--rm", "-u", "ghost", &e.image, "true"],
        None,
    );
    assert_eq!(out.code, Some(126), "{out:?}");
    assert!(out.stderr.contains("ghost"), "{}", out.stderr);

    let out = run_with(&e.home, &["run", "--rm", &e.image, "/etc/passwd"], None);
    assert_eq!(out.code, Some(126), "{out:?}");

    // An image whose entrypoint does not exist.
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let t = tempfile::tempdir().unwrap();
    let base = images::busybox(t.path(), "x", Compression::Gzip).unwrap();
    let broken = images::with_config(&base, |c| {
        c["config"]["Entrypoint"] = serde_json::json!(["/missing/entry"]);
    })
    .unwrap();
    let name = format!("{}/broken:x", reg.host());
    skopeo::push(&broken, "x", &name, None).unwrap();
    // Not pulled yet: run pulls it.
    let out = run_with(&e.home, &["run", "--rm", "-q", &name], None);
    assert_eq!(out.code, Some(127), "{out:?}");
    assert!(out.stderr.contains("/missing/entry"), "{}", out.stderr);

    let out = run_with(&e.home, &["run", "--rm", "-q", "127.0.0.1:9/nothing"], None);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr.contains("cannot reach registry"),
        "{}",
        out.stderr
    );
    assert_clean(&e.home);
}

/// Starts a container whose PID 1 exits 143 on SIGTERM (PID 1 of a namespace only gets
/// the signals it handles, as in docker) and returns once it runs.
fn start_sleeper(e: &Env) -> Child {
    let mut cmd = e.home.cmd();
    cmd.args([
        "run",
        "--rm",
        &e.image,
        "sh",
        "-c",
        "trap 'exit 143' TERM; echo up; while :; do sleep 1; done",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut up = [0u8; 3];
    child.stdout.as_mut().unwrap().read_exact(&mut up).unwrap();
    assert_eq!(&up, b"up\n");
    child
}

#[test]
fn signals_are_forwarded_to_the_container() {
    let e = env();
    let child = start_sleeper(&e);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = wait_deadline(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(143), "{out:?}");
    assert_clean(&e.home);
}

#[test]
fn the_process_model_is_dockers() {
    let e = env();
    // PID 1 of its own namespaces: only its processes, its /proc, none of the guest's
    // mounts, and SIGTERM without a handler is ignored (docker stop then needs SIGKILL).
    let script = "echo $$; ps -o pid | tail -n +2 | wc -l; grep -c /run/apex /proc/mounts; \
                  kill -TERM 1; echo alive";
    let out = run_with(
        &e.home,
        &["run", "--rm", &e.image, "sh", "-c", script],
        None,
    );
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    // sh, ps (the pipeline's other processes are sh's children too).
    assert_eq!(lines[0], "1", "{}", out.dump());
    let procs: u32 = lines[1].parse().unwrap();
    assert!((2..=4).contains(&procs), "{}", out.dump());
    assert_eq!(lines[2..], ["0", "alive"], "{}", out.dump());

    // --init: the reaper is PID 1, the command PID 2 gets signals' default actions, and
    // an exec joins the same namespaces.
    let out = run_with(
        &e.home,
        &[
            "run", "-d", "--init", "--name", "i", &e.image, "sleep", "300",
        ],
        None,
    );
    out.assert_ok();
    let ps = run_with(&e.home, &["exec", "i", "ps", "-o", "pid,args"], None);
    ps.assert_ok();
    let rows: Vec<&str> = ps.stdout.lines().skip(1).map(str::trim).collect();
    assert!(
        rows[0].starts_with("1 ") && rows[0].contains("apex-init -- sleep 300"),
        "{}",
        ps.dump()
    );
    assert!(rows[1].starts_with("2 sleep 300"), "{}", ps.dump());
    let t0 = Instant::now();
    run_with(&e.home, &["stop", "i"], None).assert_ok();
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "stop waited for SIGKILL"
    );
    let code = e.home.apex_json(&["inspect", "i"])[0]["exit_code"].clone();
    assert_eq!(code, 143);
    e.home.run(&["rm", "i"]).assert_ok();
    assert_clean(&e.home);
}

#[test]
fn two_containers_are_isolated() {
    let e = env();
    let spawn = |script: &str| {
        let mut cmd = e.home.cmd();
        cmd.args(["run", "--rm", &e.image, "sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let a = spawn(
        "echo secret > /tmp/a-only; sleep 3; cat /tmp/a-only; ps -o args | grep -c 'slee[p] 3'",
    );
    let b = spawn("sleep 1; test -e /tmp/a-only && echo LEAK || echo isolated; ps -o args | grep -c 'slee[p] 3'; true");
    let oa = wait_deadline(a, Duration::from_secs(180));
    let ob = wait_deadline(b, Duration::from_secs(180));
    let (sa, sb) = (
        String::from_utf8_lossy(&oa.stdout),
        String::from_utf8_lossy(&ob.stdout),
    );
    assert!(oa.status.success(), "{oa:?}");
    assert!(ob.status.success(), "{ob:?}");
    assert!(sa.starts_with("secret\n"), "{sa}");
    assert!(sb.starts_with("isolated\n"), "{sb}");
    // A sees its own `sleep 3`; B never does.
    assert_ne!(sa.lines().nth(1), Some("0"), "{sa}");
    assert_eq!(sb.lines().nth(1), Some("0"), "{sb}");
    assert_clean(&e.home);
}

#[test]
fn tty_session_through_a_pseudo_terminal() {
    let e = env();
    let master =
        rustix::pty::openpt(rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY)
            .unwrap();
    rustix::pty::grantpt(&master).unwrap();
    rustix::pty::unlockpt(&master).unwrap();
    let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
    let slave_path = name.to_str().unwrap().to_string();
    let ws = rustix::termios::Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave_path)
        .unwrap();
    rustix::termios::tcsetwinsize(slave.as_fd(), ws).unwrap();
    let mut cmd = e.home.cmd();
    cmd.args(["run", "--rm", "-it", &e.image, "sh"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    let child = cmd.spawn().unwrap();
    drop(cmd); // it holds copies of the slave: the reader sees EOF only once all are closed
    let mut master = fs::File::from(master);
    let screen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let screen = screen.clone();
        let mut m = master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
            if s.contains(needle) {
                return s;
            }
            assert!(Instant::now() < deadline, "no {needle:?} on screen: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // The shell prompt appears once the VM is up.
    wait_for("# ");
    master
        .write_all(b"tty; stty size; echo $((6*7))x\r")
        .unwrap();
    let s = wait_for("42x");
    assert!(s.contains("/dev/pts/"), "{s}");
    assert!(s.contains("33 101"), "terminal size not forwarded: {s}");
    master.write_all(b"exit 5\r").unwrap();
    let out = wait_deadline(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(5));
    drop(master);
    let _ = reader.join();
    assert_clean(&e.home);
}

#[test]
fn a_vm_that_never_boots_times_out_with_its_boot_log() {
    let e = env();
    // busybox as /init runs busybox's own init: the kernel boots, but no agent ever listens.
    let mut cmd = e.home.cmd();
    cmd.env("APEX_INIT", "/bin/busybox").args([
        "run",
        "--rm",
        "--boot-timeout",
        "8",
        &e.image,
        "true",
    ]);
    let res = cmd.output();
    let out = RunOutput::of(&cmd, res);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr.contains("did not answer")
            || out.stderr.contains("timed out")
            || out.stderr.contains("timeout"),
        "{}",
        out.stderr
    );
    // The error carries the tail of the console: what the guest's init printed.
    let tail = out
        .stderr
        .split_once("--- last console lines ---")
        .map(|x| x.1)
        .unwrap_or_default();
    assert!(tail.contains("/etc/init.d/rcS"), "{}", out.stderr);
    assert_clean(&e.home);
}

#[test]
fn boot_log_is_available() {
    let e = env();
    let out = run_with(
        &e.home,
        &["run", "--rm", "--boot-log", &e.image, "true"],
        None,
    );
    out.assert_ok();
    // The guest init's boot steps (the kernel's own lines are there only with
    // APEX_GUEST_DEBUG, or when they are warnings).
    assert!(
        out.stderr.contains("apex-init: boot done"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("apex-init: ready"), "{}", out.stderr);
    assert_clean(&e.home);
}

/// Pids of processes whose command line mentions `needle` and `what`.
fn pids_of(needle: &str, what: &str) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains(needle) && c.contains(what)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn kill9(pid: i32) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    );
}

#[test]
fn crashes_and_interrupts_leave_nothing_behind() {
    let e = env();
    let home = e.home.path().to_string_lossy().into_owned();

    // The VM crashes (QEMU killed): the container ends with the reason, and `apex run`
    // exits 137 like a SIGKILLed process would.
    let child = start_sleeper(&e);
    let qemu = pids_of(&home, "qemu-system");
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    kill9(qemu[0]);
    let out = wait_deadline(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("VM died"), "{err}");
    assert_clean(&e.home);

    // Ctrl-C while the VM boots: exit 130, VM and state gone.
    let child = {
        let mut cmd = e.home.cmd();
        cmd.args(["run", "--rm", &e.image, "true"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids_of(&home, "qemu-system").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = wait_deadline(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert_clean(&e.home);

    // kill -9 of `apex run` itself: the container belongs to apexd, not to the client
    // (as with docker), so it keeps running until removed.
    let mut child = start_sleeper(&e);
    kill9(child.id() as i32);
    let _ = child.wait();
    let ls = e.home.run(&["ls", "-q"]);
    ls.assert_ok();
    let ids: Vec<&str> = ls.stdout.lines().collect();
    assert_eq!(ids.len(), 1, "{ls:?}");
    assert_eq!(
        pids_of(&home, "qemu-system").len(),
        1,
        "the VM outlives the client"
    );
    e.home.run(&["rm", "-f", ids[0]]).assert_ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids_of(&home, "qemu-system").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        pids_of(&home, "qemu-system").is_empty(),
        "rm -f ends the VM"
    );
    run_with(&e.home, &["run", "--rm", &e.image, "true"], None).assert_ok();
    assert_clean(&e.home);
}
