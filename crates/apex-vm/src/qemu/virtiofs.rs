//! virtio-fs shares: one `virtiofsd` per share, started before QEMU.
//!
//! One daemon per share rather than one for all: virtiofsd serves exactly one directory,
//! so each daemon's sandbox (its own mount namespace, pivoted into the share) holds one
//! host directory and nothing else; `ro` is enforced per share by `--readonly` on the
//! host side; and no host-side mount juggling is needed to gather several directories
//! under one root. The cost is one process per share (measured in `scripts/bench-fs.sh`).
//!
//! A single file is shared through a directory of the VM's state holding an empty
//! placeholder with the file's name: the daemon starts in a private mount namespace where
//! the file is bind-mounted onto the placeholder, so the guest sees that file and none of
//! its siblings.
//!
//! Every daemon carries `PR_SET_PDEATHSIG` like QEMU, and virtiofsd gives its sandboxed
//! child the same, so no daemon outlives the process that owns the VM.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::spawn::{spawn_guarded, Guarded};

/// How long a daemon may take to create its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a [`Share`] exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareKind {
    /// A directory, with everything below it.
    Dir,
    /// One file (the guest gets a directory holding just it).
    File,
}

/// A host directory or file shared with the guest over virtio-fs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Device tag the guest mounts it by: 1-36 chars of `[A-Za-z0-9_-]`.
    pub tag: String,
    /// Absolute host path.
    pub path: PathBuf,
    /// Directory or single file.
    pub kind: ShareKind,
    /// Refuse every guest write in virtiofsd (`--readonly`).
    pub read_only: bool,
}

impl Share {
    /// Checks the tag and path.
    pub fn validate(&self) -> Result<()> {
        let ok = (1..=36).contains(&self.tag.len())
            && self
                .tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
        if !ok {
            bail!(
                "share tag {:?} must be 1-36 chars of [A-Za-z0-9_-]",
                self.tag
            );
        }
        if !self.path.is_absolute() {
            bail!(
                "share {}: {} is not absolute",
                self.tag,
                self.path.display()
            );
        }
        Ok(())
    }

    /// The file's name, for a [`ShareKind::File`] share.
    pub fn file_name(&self) -> Option<String> {
        match self.kind {
            ShareKind::File => self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
            ShareKind::Dir => None,
        }
    }
}

/// The vhost-user socket of share `i` in `state_dir`.
pub fn socket(state_dir: &Path, i: usize) -> PathBuf {
    state_dir.join(format!("fs{i}.sock"))
}

/// The QEMU chardev id of share `i`.
pub fn chardev(i: usize) -> String {
    format!("fs{i}")
}

/// The highest `RLIMIT_NOFILE` we may give virtiofsd (its default, 1,000,000, needs
/// CAP_SYS_RESOURCE on hosts with a lower hard limit).
fn nofile_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(1_000_000)
        .min(1_000_000)
}

/// Starts the daemon for share `i` and waits for its socket.
pub(crate) async fn start(
    bin: &Path,
    cache: &str,
    state_dir: &Path,
    i: usize,
    share: &Share,
) -> Result<Guarded> {
    let sock = socket(state_dir, i);
    let _ = std::fs::remove_file(&sock);
    let log_path = state_dir.join(format!("virtiofsd-{i}.log"));
    let log = File::create(&log_path).context("creating the virtiofsd log")?;
    let shared_dir = match share.kind {
        ShareKind::Dir => share.path.clone(),
        ShareKind::File => state_dir.join(format!("fs{i}")),
    };
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--socket-path={}", sock.display()))
        .arg(format!("--shared-dir={}", shared_dir.display()))
        .arg(format!("--cache={cache}"))
        .arg("--sandbox=namespace")
        .arg(format!("--rlimit-nofile={}", nofile_limit()))
        .arg("--log-level=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if share.read_only {
        cmd.arg("--readonly");
    }
    if share.kind == ShareKind::File {
        bind_file_in_child(&mut cmd, share, &shared_dir)?;
    }
    let child = spawn_guarded(cmd).with_context(|| format!("starting {}", bin.display()))?;
    let t0 = Instant::now();
    while !sock.exists() {
        if let Some(status) = child.try_status() {
            bail!(
                "virtiofsd for {} exited ({status}):\n{}",
                share.path.display(),
                super::tail_lines(&log_path, 20)
            );
        }
        if t0.elapsed() > READY_TIMEOUT {
            bail!(
                "virtiofsd for {} did not create its socket within {READY_TIMEOUT:?}:\n{}",
                share.path.display(),
                super::tail_lines(&log_path, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(child)
}

/// Makes `cmd` start in a private mount namespace where `share.path` is bind-mounted
/// onto a placeholder of the same name in `dir`.
fn bind_file_in_child(cmd: &mut Command, share: &Share, dir: &Path) -> Result<()> {
    let name = share
        .path
        .file_name()
        .with_context(|| format!("{} has no file name", share.path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let placeholder = dir.join(name);
    File::create(&placeholder).with_context(|| format!("creating {}", placeholder.display()))?;
    let src = CString::new(share.path.as_os_str().as_bytes())?;
    let dst = CString::new(placeholder.as_os_str().as_bytes())?;
    let ro = share.read_only;
    // SAFETY: the closure runs in the forked child before exec and only makes raw
    // syscalls through rustix on C strings prepared before the fork: no allocation, no
    // locks.
    unsafe {
        cmd.pre_exec(move || {
            use rustix::mount::{self, MountFlags, MountPropagationFlags};
            // NEWNS only (not FILES): the single-threaded child keeps its fd table.
            rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS)?;
            mount::mount_change(
                c"/",
                MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
            )?;
            mount::mount_bind(src.as_c_str(), dst.as_c_str())?;
            if ro {
                mount::mount_remount(dst.as_c_str(), MountFlags::BIND | MountFlags::RDONLY, c"")?;
            }
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_validation() {
        let s = |tag: &str, path: &str| Share {
            tag: tag.into(),
            path: path.into(),
            kind: ShareKind::Dir,
            read_only: false,
        };
        assert!(s("apexfs0", "/srv").validate().is_ok());
        assert!(s("", "/srv").validate().is_err());
        assert!(s("a,b", "/srv").validate().is_err());
        assert!(s(&"a".repeat(37), "/srv").validate().is_err());
        assert!(s("ok", "rel").validate().is_err());
        let f = Share {
            kind: ShareKind::File,
            ..s("f", "/etc/app.conf")
        };
        assert_eq!(f.file_name().as_deref(), Some("app.conf"));
        assert_eq!(s("d", "/x").file_name(), None);
    }
}
