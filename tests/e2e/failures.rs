//! Failure handling end to end: apexd killed with SIGKILL while containers run and while a
//! pull is in flight, a VM killed under its container, a full disk and a read-only home.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use apex_e2e::apex::{children, ApexHome, RunOutput};
use apex_e2e::env::{eventually, BusyboxEnv};
use apex_e2e::images::{self, Compression};
use apex_e2e::registry::{Registry, RegistryAuth};
use apex_e2e::skopeo;
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(90);

fn inspect(home: &ApexHome, c: &str) -> Value {
    let out = home.run(&["inspect", c]);
    out.assert_ok();
    serde_json::from_str::<Value>(&out.stdout).unwrap()[0].clone()
}

fn pid_alive(pid: i32) -> bool {
    apex_e2e::apex::pid_alive(pid as u32)
}

fn kill9(pid: i32) {
    let p = rustix::process::Pid::from_raw(pid).expect("pid");
    rustix::process::kill_process(p, rustix::process::Signal::KILL).expect("kill -9");
    eventually(Duration::from_secs(10), "the process to die", || {
        (!pid_alive(pid)).then_some(())
    });
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

fn logs(home: &ApexHome, c: &str) -> String {
    home.run(&["logs", c]).stdout
}

#[test]
fn containers_survive_a_daemon_sigkill_and_a_dead_vm_spares_its_neighbour() {
    let e = BusyboxEnv::new();
    let h = &e.home;
    let script = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.3; done";
    h.run(&["run", "-d", "--name", "a", &e.image, "sh", "-c", script])
        .assert_ok();
    h.run(&["run", "-d", "--name", "b", &e.image, "sleep", "600"])
        .assert_ok();
    eventually(BOOT, "a's output", || {
        logs(h, "a").contains("line 2").then_some(())
    });

    let shim_pid = |c: &str| inspect(h, c)["shim_pid"].as_i64().expect("shim pid") as i32;
    let (shim_a, shim_b) = (shim_pid("a"), shim_pid("b"));
    let id_a = inspect(h, "a")["id"].as_str().unwrap().to_string();
    let apexd = read_pid(&e.path().join("run/apexd.pid"));
    kill9(apexd);

    // The helpers and their VMs do not depend on apexd.
    assert!(pid_alive(shim_a) && pid_alive(shim_b));
    assert_eq!(children(shim_a, "qemu-system").len(), 1);
    let before = std::fs::read_to_string(
        e.path()
            .join(format!("containers/{}/container.log", &id_a[..12])),
    )
    .unwrap();

    h.run(&["system", "start"]).assert_ok();
    let rec = inspect(h, "a");
    assert_eq!(rec["state"], "running", "{rec}");
    assert_eq!(
        rec["shim_pid"].as_i64(),
        Some(shim_a as i64),
        "re-attached, not restarted"
    );
    let out = h.run(&["exec", "a", "echo", "still here"]);
    out.assert_ok();
    assert_eq!(out.stdout, "still here\n");
    // The log kept everything from before the kill and keeps growing.
    let after = eventually(Duration::from_secs(20), "new log lines", || {
        let l = logs(h, "a");
        (l.lines().count() > before.lines().count()).then_some(l)
    });
    assert!(after.starts_with("line 0\nline 1\nline 2\n"), "{after}");

    // Kill a's VM: a exits with the reason, b is untouched.
    let qemu = children(shim_a, "qemu-system")[0];
    kill9(qemu);
    let rec = eventually(Duration::from_secs(30), "a to be marked exited", || {
        let r = inspect(h, "a");
        (r["state"] == "exited").then_some(r)
    });
    let reason = rec["exit_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("VM died") || reason.contains("the VM died"),
        "{rec}"
    );
    assert_eq!(rec["exit_code"], 137, "{rec}");
    assert!(!pid_alive(shim_a), "a's helper exits with its VM");
    assert_eq!(inspect(h, "b")["state"], "running");
    h.run(&["exec", "b", "true"]).assert_ok();

    // A helper killed outright: its container is marked exited with a reason.
    kill9(shim_b);
    let rec = eventually(Duration::from_secs(30), "b to be marked exited", || {
        let r = inspect(h, "b");
        (r["state"] == "exited").then_some(r)
    });
    assert!(
        rec["exit_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("helper"),
        "{rec}"
    );
    eventually(
        Duration::from_secs(10),
        "b's VM to go with its helper",
        || children(shim_b, "qemu-system").is_empty().then_some(()),
    );
}

/// A registry holding a 48 MiB image of incompressible data.
fn big_image(tmp: &Path) -> (Registry, String) {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let root = tmp.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut f = std::fs::File::create(root.join("blob.bin")).unwrap();
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    std::io::copy(&mut std::io::Read::take(&mut urandom, 48 << 20), &mut f).unwrap();
    let layout = images::from_dir(&root, &tmp.join("oci"), "big", Compression::None).unwrap();
    let image = format!("{}/big:latest", reg.host());
    skopeo::push(&layout, "big", &image, None).unwrap();
    (reg, image)
}

/// Sends `POST /v1/images/pull` and returns the open connection (the pull runs on).
fn start_pull(home: &ApexHome, image: &str) -> UnixStream {
    let body = format!(r#"{{"reference":"{image}","scheme":"http"}}"#);
    let mut s = UnixStream::connect(home.path().join("run/apex.sock")).unwrap();
    write!(
        s,
        "POST /v1/images/pull HTTP/1.1\r\nHost: apexd\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

fn partial_bytes(home: &Path) -> u64 {
    std::fs::read_dir(home.join("content/ingest"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn daemon_sigkill_during_a_pull_leaves_a_consistent_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, image) = big_image(tmp.path());
    let h = ApexHome::new();
    h.run(&["system", "start"]).assert_ok();
    let _conn = start_pull(&h, &image);
    eventually(Duration::from_secs(30), "download to start", || {
        (partial_bytes(h.path()) > 0).then_some(())
    });
    kill9(read_pid(&h.path().join("run/apexd.pid")));

    h.run(&["system", "start"]).assert_ok();
    let images = h.run(&["image", "ls", "--format", "json"]);
    images.assert_ok();
    assert!(
        !images.stdout.contains("big"),
        "no half-pulled image listed: {images:?}"
    );
    // The same pull through the daemon completes (resuming the partial blob) and
    // verifies.
    let mut conn = start_pull(&h, &image);
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut conn, &mut answer).unwrap();
    assert!(answer.contains(r#""event":"done""#), "{answer}");
    let listed = eventually(Duration::from_secs(60), "the image to be pulled", || {
        let out = h.run(&["image", "ls", "--format", "json"]);
        out.stdout.contains("big").then_some(out.stdout)
    });
    assert!(listed.contains("big"));
    h.run(&["image", "inspect", &image]).assert_ok();
    assert_eq!(partial_bytes(h.path()), 0, "no partial blobs left");
}

/// Runs `mount`/`umount`, panicking with its output on failure.
fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn at(home: &ApexHome, mnt: &Path, args: &[&str]) -> RunOutput {
    let mut cmd = home.cmd();
    cmd.env("APEX_HOME", mnt).args(args);
    let out = cmd.output();
    RunOutput::of(&cmd, out)
}

#[test]
fn a_full_disk_and_a_read_only_home_give_clear_errors() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test mounts a small tmpfs: run it as root (CI does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, image) = big_image(tmp.path());
    let mnt = tmp.path().join("small-home");
    std::fs::create_dir_all(&mnt).unwrap();
    sh(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=8m",
        "apex-test",
        mnt.to_str().unwrap(),
    ]);
    let _m = Mount(mnt.clone());
    let h = ApexHome::new();

    // Full disk: the pull fails with the OS's reason, and the store still works.
    let out = at(
        &h,
        &mnt,
        &["image", "pull", "-q", "--scheme", "http", &image],
    );
    out.assert_failure();
    assert!(out.stderr.contains("No space left on device"), "{out:?}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {out:?}");
    at(&h, &mnt, &["image", "ls"]).assert_ok();

    // Read-only: the daemon refuses to start with the reason, quickly.
    sh(&["mount", "-o", "remount,ro", mnt.to_str().unwrap()]);
    let t = std::time::Instant::now();
    let out = at(&h, &mnt, &["system", "start"]);
    out.assert_failure();
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(15));
}
