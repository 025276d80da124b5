//! Drives the `apex` CLI binary built by the workspace, with an isolated `APEX_HOME`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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

/// A throwaway `APEX_HOME` (removed on drop) and a way to run a binary against it.
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

    /// A command for the binary with `APEX_HOME` set to this home, every other `APEX_*`
    /// variable removed, and stdin null.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("APEX_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("APEX_HOME", self.dir.path()).stdin(Stdio::null());
        cmd
    }

    /// Runs the binary with `args` to completion, capturing its output.
    pub fn run(&self, args: &[&str]) -> RunOutput {
        let mut cmd = self.cmd();
        cmd.args(args);
        let out = cmd.output();
        RunOutput::of(&cmd, out)
    }
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

    fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}
