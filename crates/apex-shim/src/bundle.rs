//! A container's bundle directory (`$APEX_HOME/containers/<id>/`): what apexd hands the
//! shim and what the shim leaves behind.
//!
//! - `config.json`: [`ShimConfig`], written by apexd before it spawns the shim.
//! - `shim.sock`, `shim.pid`: the running shim.
//! - `exit.json`: the main process's [`Exit`], written atomically by the shim before it
//!   exits, so a restarted apexd learns how a container ended while it was down.
//! - `container.log` (+ `.1`): the container's output ([`crate::logfile`]).
//! - `shim.log`: the shim's own diagnostics; `vm/`: the VM's sockets and console.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use apex_runtime::spec::ProcessSpec;
use serde::{Deserialize, Serialize};

use crate::stream::Exit;

/// A container's bundle directory: `<home>/containers/<first 12 hex of the id>`.
///
/// Short on purpose: the shim's socket lives inside, and Unix socket paths are limited to
/// 108 bytes, so a full 64-hex id would break homes under long paths.
pub fn bundle_dir(home: &Path, id: &str) -> PathBuf {
    home.join("containers").join(&id[..id.len().min(12)])
}

/// Everything the shim needs to run a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimConfig {
    /// Full container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// `$APEX_HOME`.
    pub home: PathBuf,
    /// The image rootfs, the writable layer and the mounts.
    pub fs: apex_runtime::fs::Filesystem,
    /// Guest hostname.
    pub hostname: String,
    /// vCPUs.
    pub cpus: u32,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// Boot watchdog, seconds.
    pub boot_timeout_s: u64,
    /// The main process.
    pub process: ProcessSpec,
    /// Keep the main process's stdin open for an attached client (`-i`).
    pub stdin_open: bool,
    /// Hold the main process until the first client attaches (foreground `run`), so it
    /// sees all output from the first byte; bounded by `boot_timeout_s`.
    pub wait_attach: bool,
    /// Rotate `container.log` past this many bytes.
    pub log_max_bytes: u64,
    /// virtio-net NICs (eth0, eth1, ... in the guest).
    #[serde(default)]
    pub nics: Vec<apex_vm::Nic>,
    /// Guest network configuration, applied after boot and before the main process
    /// starts (a failure ends the container with exit code 125).
    #[serde(default)]
    pub network: Option<apex_agent_proto::api::SetNetwork>,
    /// The healthcheck, run in the guest while the main process runs.
    #[serde(default)]
    pub healthcheck: Option<apex_runtime::spec::HealthConfig>,
    /// The container is removed once it exits (`--rm`): its writable layer is deleted, so
    /// the guest is not asked to flush it at the end.
    #[serde(default)]
    pub auto_remove: bool,
}

/// Paths inside one bundle.
#[derive(Clone, Debug)]
pub struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    /// The bundle at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Bundle { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// `shim.sock`.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("shim.sock")
    }

    /// `shim.pid`.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("shim.pid")
    }

    /// `exit.json`.
    pub fn exit_file(&self) -> PathBuf {
        self.dir.join("exit.json")
    }

    /// `container.log`.
    pub fn log(&self) -> PathBuf {
        self.dir.join("container.log")
    }

    /// `shim.log`.
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }

    /// `upper.ext4`: the container's writable layer (a sparse ext4 disk image).
    pub fn upper_disk(&self) -> PathBuf {
        self.dir.join("upper.ext4")
    }

    /// `vm/`: the VM's state (sockets, console).
    pub fn vm_dir(&self) -> PathBuf {
        self.dir.join("vm")
    }

    /// Writes `config.json` atomically.
    pub fn write_config(&self, cfg: &ShimConfig) -> Result<()> {
        write_atomic(&self.config(), &serde_json::to_vec_pretty(cfg)?)
    }

    /// Reads `config.json`.
    pub fn read_config(&self) -> Result<ShimConfig> {
        let p = self.config();
        let b = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&b).with_context(|| format!("corrupt {}", p.display()))
    }

    /// Records how the main process ended (atomically: a crash leaves none or all).
    pub fn write_exit(&self, exit: &Exit) -> Result<()> {
        write_atomic(&self.exit_file(), &serde_json::to_vec(exit)?)
    }

    /// How the main process ended, if the shim recorded it.
    pub fn read_exit(&self) -> Option<Exit> {
        let b = std::fs::read(self.exit_file()).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// The shim's pid if its pid file names a live process.
    pub fn live_shim_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        pid_alive(pid).then_some(pid)
    }
}

/// Whether `pid` is a live process (zombies and dead ones are not), from
/// `/proc/<pid>/stat`.
pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// Writes `data` to a temp file, fsyncs it and renames it over `path`.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_round_trip_and_absent() {
        let d = tempfile::tempdir().unwrap();
        let b = Bundle::new(d.path());
        assert_eq!(b.read_exit(), None);
        let e = Exit {
            exit_code: 137,
            reason: Some("vm died".into()),
            error: None,
        };
        b.write_exit(&e).unwrap();
        assert_eq!(b.read_exit(), Some(e));
        assert!(!d.path().join("exit.tmp").exists());
        assert_eq!(b.live_shim_pid(), None);
        std::fs::write(b.pid_file(), std::process::id().to_string()).unwrap();
        assert_eq!(b.live_shim_pid(), Some(std::process::id()));
    }
}
