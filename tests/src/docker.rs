//! Docker clients against an Apex home's `docker.sock`: the docker CLI, docker-compose, and
//! Python scripts with docker-py or testcontainers (from set-up's venv).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::apex::{ApexHome, RunOutput};
use crate::images::{self, Compression};
use crate::registry::{Registry, RegistryAuth};
use crate::skopeo;

/// How long one client command may take (pulls and VM boots under TCG included).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// A home whose daemon serves the Docker API, with a loopback registry that mirrors
/// docker.io: `busybox:latest` resolves to it (`registry_mirrors` in `config.json`).
pub struct DockerEnv {
    /// The home (drops first: containers and daemon go before the registry).
    pub home: ApexHome,
    /// The registry, also reachable by its own name (`HOST/busybox:latest`).
    pub registry: Registry,
    /// Scratch space: the clients' config directory and test files.
    pub tmp: tempfile::TempDir,
}

impl DockerEnv {
    /// Starts a registry holding busybox as `library/busybox:latest` and `busybox:latest`,
    /// and a daemon using it as its docker.io mirror.
    pub fn new() -> Self {
        let registry = Registry::start(RegistryAuth::None).expect("registry");
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = images::busybox(&tmp.path().join("busybox"), "latest", Compression::Gzip)
            .expect("busybox image");
        for name in ["library/busybox", "busybox"] {
            let dest = format!("{}/{name}:latest", registry.host());
            skopeo::push(&layout, "latest", &dest, None).expect("skopeo push");
        }
        let home = ApexHome::new();
        let config =
            serde_json::json!({ "registry_mirrors": [format!("http://{}", registry.host())] });
        std::fs::write(home.path().join("config.json"), config.to_string()).unwrap();
        home.run(&["system", "start"]).assert_ok();
        std::fs::create_dir_all(tmp.path().join("docker-config")).unwrap();
        DockerEnv {
            home,
            registry,
            tmp,
        }
    }

    /// The Docker API socket.
    pub fn socket(&self) -> PathBuf {
        self.home.path().join("run/docker.sock")
    }

    /// `DOCKER_HOST` for this home.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// A command with `DOCKER_HOST` (and a private `DOCKER_CONFIG`) set, stdin null.
    pub fn client(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DOCKER_HOST", self.docker_host())
            .env("DOCKER_CONFIG", self.tmp.path().join("docker-config"))
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null());
        cmd
    }

    /// `docker ARGS...`, bounded by [`CLIENT_TIMEOUT`].
    pub fn docker(&self, args: &[&str]) -> RunOutput {
        let mut cmd = self.client("docker");
        cmd.args(args);
        run_bounded(cmd, CLIENT_TIMEOUT)
    }

    /// `docker ARGS...`, which must succeed; its stdout, trimmed.
    #[track_caller]
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        out.assert_ok();
        out.stdout.trim().to_string()
    }

    /// `docker-compose -p PROJECT ARGS...` in `dir`.
    pub fn compose(&self, dir: &Path, project: &str, args: &[&str]) -> RunOutput {
        let mut cmd = self.client("docker-compose");
        cmd.current_dir(dir)
            .args(["--no-ansi", "-p", project])
            .args(args);
        run_bounded(cmd, CLIENT_TIMEOUT)
    }

    /// Runs a Python script with set-up's venv (docker-py and testcontainers installed).
    pub fn python(&self, script: &Path, envs: &[(&str, &str)]) -> RunOutput {
        let mut cmd = self.client(python());
        cmd.arg(script).envs(envs.iter().copied());
        run_bounded(cmd, CLIENT_TIMEOUT)
    }
}

impl Default for DockerEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// The venv interpreter set-up makes: `$APEX_PYTHON`, else under `$APEX_ASSETS` (default
/// `/usr/local/lib/apex`).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("APEX_PYTHON") {
        return p.into();
    }
    let assets = std::env::var_os("APEX_ASSETS").unwrap_or_else(|| "/usr/local/lib/apex".into());
    Path::new(&assets).join("python/bin/python3")
}

/// Runs `cmd` to completion, killing it after `limit` (then `code` is `None`). A piped
/// stdin is held open, unwritten, until it ends.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> RunOutput {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return RunOutput::of(&cmd, Err(e)),
    };
    let _stdin = child.stdin.take();
    // Drain both pipes while waiting, so a chatty client never blocks on a full pipe.
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let (out, err) = (read(Box::new(out)), read(Box::new(err)));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Err(e) => break Err(e),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                break child.wait();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let output = status.map(|status| std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    });
    RunOutput::of(&cmd, output)
}
