//! Drives the `apex` CLI binary built by the workspace, with an isolated `APEX_HOME`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `apex` binary: `$APEX_BIN` if set, else `apex` in the cargo profile dir of the running
/// executable (`target/<profile>/deps/test-xxx` → `target/<profile>/apex`).
pub fn apex_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("APEX_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("executable has a parent dir")
        .to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
    }
    dir.join("apex")
}

/// A throwaway `APEX_HOME` and a way to run a binary against it. On drop, its containers
/// are removed and its daemon stopped (through the CLI, then SIGKILL as a safety net for
/// any helper or daemon still alive), and the directory is deleted.
#[derive(Debug)]
pub struct ApexHome {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl ApexHome {
    /// A fresh home, running [`apex_bin`].
    pub fn new() -> Self {
        Self::with_bin(apex_bin())
    }

    /// A fresh home, running `bin` instead of [`apex_bin`].
    pub fn with_bin(bin: impl Into<PathBuf>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("apex-home-")
            .tempdir()
            .expect("temp APEX_HOME");
        ApexHome {
            dir,
            bin: bin.into(),
        }
    }

    /// The home directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The binary this home runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A command for the binary with `APEX_HOME` set to this home (and
    /// `APEX_NETWORK_CLEANUP=1`, so its daemon removes its bridges and taps on stop), every other `APEX_*`
    /// variable removed, and stdin null.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("APEX_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("APEX_HOME", self.dir.path())
            .env("APEX_NETWORK_CLEANUP", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the binary with `args` to completion, capturing its output.
    pub fn run(&self, args: &[&str]) -> RunOutput {
        let mut cmd = self.cmd();
        cmd.args(args);
        let out = cmd.output();
        RunOutput::of(&cmd, out)
    }

    /// Like [`ApexHome::run`], but kills the command if it runs longer than `limit`
    /// (its output so far is returned, with `code` `None`).
    pub fn run_timeout(&self, args: &[&str], limit: Duration) -> RunOutput {
        let mut cmd = self.cmd();
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return RunOutput::of(&cmd, Err(e)),
        };
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if start.elapsed() > limit => {
                    let _ = child.kill();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let out = child.wait_with_output();
        RunOutput::of(&cmd, out)
    }

    /// Runs `apex args...`, which must succeed, and parses its stdout as JSON
    /// (`ls --format json`, `inspect`, `stats --format json`, ...).
    #[track_caller]
    pub fn apex_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        out.assert_ok();
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("`{}` did not print JSON: {e}\n{}", out.command, out.dump()))
    }

    /// The pid in `run/apexd.pid`, if the file exists.
    pub fn daemon_pid(&self) -> Option<u32> {
        read_pid(&self.path().join("run").join("apexd.pid"))
    }

    /// The pids in `containers/*/shim.pid`.
    pub fn shim_pids(&self) -> Vec<u32> {
        std::fs::read_dir(self.path().join("containers"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| read_pid(&e.path().join("shim.pid")))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes every container and stops the daemon, if one runs; then SIGKILLs any
    /// helper or daemon still alive. Called on drop.
    pub fn teardown(&self) {
        // Only a live daemon is asked: `apex ls` would start a dead one anew.
        let had_daemon = self.daemon_pid().is_some_and(pid_alive);
        if had_daemon {
            let limit = Duration::from_secs(60);
            let ls = self.run_timeout(&["ls", "-aq", "--no-trunc"], limit);
            let ids: Vec<&str> = ls.stdout.split_whitespace().collect();
            if ls.success() && !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                self.run_timeout(&args, limit);
            }
            self.run_timeout(&["system", "stop"], limit);
        }
        let mut pids = self.shim_pids();
        pids.extend(self.daemon_pid());
        for pid in pids {
            if pid_alive(pid) {
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
        }
    }
}

impl Drop for ApexHome {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub use apex_shim::bundle::pid_alive;

/// Children of `parent` whose command name starts with `comm` (e.g. a helper's
/// `qemu-system` process).
pub fn children(parent: i32, comm: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let (head, rest) = stat.rsplit_once(')').unwrap_or_default();
            let name = head.split_once('(').map(|x| x.1).unwrap_or_default();
            let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            ppid == Some(parent) && name.starts_with(comm)
        })
        .collect()
}

impl Default for ApexHome {
    fn default() -> Self {
        Self::new()
    }
}

/// The outcome of [`ApexHome::run`].
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The command line, for messages.
    pub command: String,
    /// Exit code (`None` if killed by a signal or if it could not be spawned).
    pub code: Option<i32>,
    /// Standard output, lossily UTF-8.
    pub stdout: String,
    /// Standard error, lossily UTF-8 (or the spawn error).
    pub stderr: String,
}

impl RunOutput {
    /// Captures a finished command (`out` from `Command::output` or a spawned child).
    pub fn of(cmd: &Command, out: std::io::Result<Output>) -> Self {
        let command = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        match out {
            Ok(o) => RunOutput {
                command,
                code: o.status.code(),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Err(e) => RunOutput {
                command,
                code: None,
                stdout: String::new(),
                stderr: format!("cannot run: {e}"),
            },
        }
    }

    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics, showing both outputs, unless it exited with status 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        if !self.success() {
            panic!(
                "`{}` failed (code {:?})\n{}",
                self.command,
                self.code,
                self.dump()
            );
        }
        self
    }

    /// Panics, showing both outputs, unless it exited with a non-zero status.
    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        if self.success() || self.code.is_none() {
            panic!(
                "`{}` should have failed (code {:?})\n{}",
                self.command,
                self.code,
                self.dump()
            );
        }
        self
    }

    /// Both outputs, for messages.
    pub fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}
