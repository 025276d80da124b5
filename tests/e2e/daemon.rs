//! `apexd` and `apex system` end to end: the real binaries on a throwaway `APEX_HOME`.
//! No VM or registry needed.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apex_e2e::apex::{apex_bin, ApexHome, RunOutput};
use serde_json::Value;

const NOT_RUNNING: &str = "apexd is not running (start it with `apex system start`)";

/// The `apexd` binary, built next to `apex`.
fn apexd_bin() -> PathBuf {
    apex_bin().with_file_name("apexd")
}

/// A home whose daemon, if any is left, is SIGKILLed on drop.
struct Daemon {
    home: ApexHome,
    pids: std::cell::RefCell<Vec<u32>>,
}

impl Daemon {
    fn new() -> Self {
        Daemon {
            home: ApexHome::new(),
            pids: Default::default(),
        }
    }

    /// Runs `apex args...` with `APEX_DAEMON` pointing at the built `apexd`.
    fn apex(&self, args: &[&str]) -> RunOutput {
        let mut cmd = self.home.cmd();
        cmd.env("APEX_DAEMON", apexd_bin()).args(args);
        let out = cmd.output();
        RunOutput::of(&cmd, out)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.home.path().join(rel)
    }

    /// `apex system start`, returning the pid it printed.
    fn start(&self) -> u32 {
        let out = self.apex(&["system", "start"]);
        out.assert_ok();
        let pid = out
            .stdout
            .trim()
            .strip_prefix("apexd started (pid ")
            .and_then(|s| s.strip_suffix(')'))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected start output: {out:?}"));
        self.pids.borrow_mut().push(pid);
        pid
    }

    fn status_json(&self) -> Value {
        let out = self.apex(&["system", "status", "--format", "json"]);
        out.assert_ok();
        serde_json::from_str(&out.stdout).expect("status prints JSON")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let mut pids = self.pids.borrow().clone();
        if let Ok(p) = std::fs::read_to_string(self.path("run/apexd.pid")) {
            pids.extend(p.trim().parse::<u32>().ok());
        }
        for pid in pids {
            if alive(pid) {
                kill9(pid);
            }
        }
    }
}

fn kill9(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

fn wait_dead(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn start_status_version_df_stop() {
    let d = Daemon::new();
    let pid = d.start();
    assert!(alive(pid));

    let st = d.status_json();
    assert_eq!(st["pid"].as_u64(), Some(pid as u64), "{st}");
    assert_eq!(st["home"].as_str(), Some(d.home.path().to_str().unwrap()));
    assert_eq!(st["containers"].as_u64(), Some(0));
    assert_eq!(st["images"].as_u64(), Some(0));
    assert!(st["accelerator"].is_string());

    // Files: socket 0600 in a 0700 run dir (0710 for group docker, which may reach
    // docker.sock, 0660, when the group exists), pid file, log, state database.
    let sock = d.path("run/apex.sock");
    assert!(std::fs::metadata(&sock).unwrap().file_type().is_socket());
    assert_eq!(mode(&sock), 0o600);
    let docker_group = std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("docker:"));
    let (run_mode, docker_mode) = if docker_group {
        (0o710, 0o660)
    } else {
        (0o700, 0o600)
    };
    assert_eq!(mode(&d.path("run")), run_mode);
    assert_eq!(mode(&d.path("run/docker.sock")), docker_mode);
    let pid_file = std::fs::read_to_string(d.path("run/apexd.pid")).unwrap();
    assert_eq!(pid_file.trim(), pid.to_string());
    assert!(d.path("db/state.redb").is_file());

    // Idempotent start; a second daemon is refused.
    let again = d.apex(&["system", "start"]);
    again.assert_ok();
    assert_eq!(
        again.stdout.trim(),
        format!("apexd is already running (pid {pid})")
    );
    let mut second = std::process::Command::new(apexd_bin());
    second.env("APEX_HOME", d.home.path()).arg("--foreground");
    let res = second.output();
    let out = RunOutput::of(&second, res);
    out.assert_failure();
    assert!(
        out.stderr
            .contains(&format!("another apexd (pid {pid}) is already running")),
        "{out:?}"
    );
    assert!(alive(pid), "the refused daemon must not disturb the first");

    let v = d.apex(&["system", "version"]);
    v.assert_ok();
    assert!(v.stdout.contains("Client: 0.1.0"), "{v:?}");
    assert!(v.stdout.contains("Server: 0.1.0 (API 1, linux/"), "{v:?}");

    let df = d.apex(&["system", "df", "--format", "json"]);
    df.assert_ok();
    let df: Value = serde_json::from_str(&df.stdout).unwrap();
    let names: Vec<_> = df["dirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["content", "rootfs", "containers", "volumes", "db", "logs"]
    );
    assert!(df["total"].as_u64().unwrap() > 0, "{df}");
    let table = d.apex(&["system", "df"]);
    table.assert_ok();
    assert!(table.stdout.starts_with("NAME"), "{table:?}");

    let logs = d.apex(&["system", "logs", "-n", "20"]);
    logs.assert_ok();
    assert!(logs.stdout.contains("listening on"), "{logs:?}");

    let stop = d.apex(&["system", "stop"]);
    stop.assert_ok();
    assert_eq!(stop.stdout.trim(), format!("apexd stopped (pid {pid})"));
    assert!(!alive(pid));
    assert!(!sock.exists(), "socket removed on shutdown");
    assert!(
        !d.path("run/apexd.pid").exists(),
        "pid file removed on shutdown"
    );

    let st = d.apex(&["system", "status"]);
    assert_eq!(st.code, Some(1), "{st:?}");
    assert!(st.stderr.contains(NOT_RUNNING), "{st:?}");
}

#[test]
fn not_running_is_one_clear_error() {
    let d = Daemon::new();
    for args in [
        &["system", "status"][..],
        &["system", "stop"],
        &["system", "df"],
    ] {
        let out = d.apex(args);
        assert_eq!(out.code, Some(1), "{out:?}");
        assert_eq!(
            out.stderr.trim(),
            format!("Error: {NOT_RUNNING}"),
            "{out:?}"
        );
    }
}

#[test]
fn sigterm_stops_cleanly() {
    let d = Daemon::new();
    let pid = d.start();
    let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(p, rustix::process::Signal::TERM).unwrap();
    wait_dead(pid);
    assert!(!d.path("run/apex.sock").exists());
    assert!(!d.path("run/apexd.pid").exists());
}

#[test]
fn stale_socket_after_sigkill_is_recovered() {
    let d = Daemon::new();
    let old = d.start();
    kill9(old);
    wait_dead(old);
    assert!(
        d.path("run/apex.sock").exists(),
        "SIGKILL leaves the socket"
    );

    let st = d.apex(&["system", "status"]);
    assert_eq!(st.code, Some(1), "{st:?}");
    assert!(
        st.stderr.contains("apexd is not running: stale socket"),
        "{st:?}"
    );

    let out = d.apex(&["system", "start"]);
    out.assert_ok();
    assert!(out.stderr.contains("removing stale socket"), "{out:?}");
    let new = d.status_json()["pid"].as_u64().unwrap() as u32;
    d.pids.borrow_mut().push(new);
    assert_ne!(new, old);
    assert!(alive(new));
    d.apex(&["system", "stop"]).assert_ok();
    assert!(!alive(new));
}

/// A closed stdout ends a command the way it ends `cat`: by SIGPIPE, without a panic or
/// an error message (`apex ls | head -0`).
#[test]
fn closed_stdout_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let d = Daemon::new();
    d.start();
    let (rd, wr) = std::io::pipe().unwrap();
    drop(rd);
    let mut cmd = d.home.cmd();
    cmd.env("APEX_DAEMON", apexd_bin())
        .args(["ls", "-a"])
        .stdout(wr)
        .stderr(std::process::Stdio::piped());
    let out = cmd.output().unwrap();
    assert_eq!(out.status.signal(), Some(13), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.apex(&["system", "stop"]).assert_ok();
}
