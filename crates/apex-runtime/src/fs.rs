//! A container's filesystem: the image rootfs (read-only), its writable layer (a disk),
//! and mounts: host directories and volumes shared over virtio-fs, and tmpfs.
//!
//! [`Filesystem::plan`] turns the mounts into the VM's shares and the guest's
//! `setup_mounts` call, checking the host sources as they are at boot.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use apex_agent_proto::api::{self, ContainerMount, MountSource};
use apex_vm::{Share, ShareKind};
use serde::{Deserialize, Serialize};

/// Prefix of share tags (`apexfs0`, `apexfs1`, ...).
pub const TAG_PREFIX: &str = "apexfs";

/// One mount, with host paths resolved (a volume is its `_data` directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Absolute path in the container.
    pub target: String,
    /// What is mounted.
    pub source: Source,
    /// Read-only in the container (and refused by virtiofsd on the host).
    #[serde(default)]
    pub read_only: bool,
}

/// The source of a [`MountSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Source {
    /// A host directory or file, shared over virtio-fs.
    Host {
        /// Absolute host path.
        path: PathBuf,
        /// Copy the image's content at the target in when the directory is empty
        /// (volumes, as Docker does).
        #[serde(default)]
        populate: bool,
    },
    /// A tmpfs in guest memory.
    Tmpfs {
        /// Size limit in bytes.
        #[serde(default)]
        size_bytes: Option<u64>,
        /// Mode of its root (default 1777).
        #[serde(default)]
        mode: Option<u32>,
        /// Mounted `noexec`.
        #[serde(default)]
        noexec: bool,
    },
}

/// Everything about a container's filesystem that the VM and the guest need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filesystem {
    /// The image's read-only rootfs (erofs).
    pub rootfs: PathBuf,
    /// The writable layer: a raw ext4 disk kept across starts. `None`: guest RAM.
    #[serde(default)]
    pub upper_disk: Option<PathBuf>,
    /// Mounts, parents before children.
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// Make the root read-only once mounted (`--read-only`).
    #[serde(default)]
    pub read_only_root: bool,
}

/// What [`Filesystem::plan`] produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One virtio-fs share per host mount.
    pub shares: Vec<Share>,
    /// The guest's `setup_mounts` call.
    pub setup: api::SetupMounts,
}

impl Filesystem {
    /// Shares for the VM and the guest call; fails if a host source is missing
    /// (with Docker's message).
    pub fn plan(&self) -> Result<Plan> {
        let mut shares = Vec::new();
        let mut mounts = Vec::new();
        for m in &self.mounts {
            let source = match &m.source {
                Source::Host { path, populate } => {
                    let kind = match std::fs::metadata(path) {
                        Ok(md) if md.is_dir() => ShareKind::Dir,
                        Ok(_) => ShareKind::File,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                            "invalid mount config for type \"bind\": bind source path does not exist: {}",
                            path.display()
                        ),
                        Err(e) => bail!("bind source path {}: {e}", path.display()),
                    };
                    let share = Share {
                        tag: format!("{TAG_PREFIX}{}", shares.len()),
                        path: path.clone(),
                        kind,
                        read_only: m.read_only,
                    };
                    let src = MountSource::Virtiofs {
                        tag: share.tag.clone(),
                        file: share.file_name(),
                    };
                    shares.push(share);
                    mounts.push(ContainerMount {
                        target: m.target.clone(),
                        source: src,
                        read_only: m.read_only,
                        populate: *populate && kind == ShareKind::Dir,
                    });
                    continue;
                }
                Source::Tmpfs {
                    size_bytes,
                    mode,
                    noexec,
                } => MountSource::Tmpfs {
                    size_bytes: *size_bytes,
                    mode: *mode,
                    noexec: *noexec,
                },
            };
            mounts.push(ContainerMount {
                target: m.target.clone(),
                source,
                read_only: m.read_only,
                populate: false,
            });
        }
        Ok(Plan {
            shares,
            setup: api::SetupMounts {
                mounts,
                read_only_root: self.read_only_root,
            },
        })
    }
}

/// Creates the writable layer: a sparse raw file of `size_bytes` holding an empty ext4
/// (made by `mkfs.ext4`, lazily initialized: a few hundred KiB on disk at first). Fails
/// if `path` exists.
pub fn create_upper_disk(path: &Path, size_bytes: u64) -> Result<()> {
    use anyhow::Context;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size_bytes)
        .with_context(|| format!("sizing {}", path.display()))?;
    drop(f);
    let out = std::process::Command::new(mkfs_ext4())
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-O",
            "^resize_inode",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            "-L",
            "apex-upper",
        ])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output();
    let failed = match out {
        Ok(o) if o.status.success() => return Ok(()),
        Ok(o) => format!(
            "mkfs.ext4 failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("cannot run mkfs.ext4 (install e2fsprogs): {e}"),
    };
    let _ = std::fs::remove_file(path);
    bail!("creating the writable layer {}: {failed}", path.display())
}

/// `mkfs.ext4`: on PATH, else in `/sbin` (not on a user's PATH on Debian).
fn mkfs_ext4() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("mkfs.ext4"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_maps_host_mounts_to_shares() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("app.conf");
        std::fs::write(&file, "x").unwrap();
        let fs = Filesystem {
            rootfs: "/r.erofs".into(),
            upper_disk: None,
            mounts: vec![
                MountSpec {
                    target: "/data".into(),
                    source: Source::Host {
                        path: d.path().into(),
                        populate: true,
                    },
                    read_only: false,
                },
                MountSpec {
                    target: "/etc/app.conf".into(),
                    source: Source::Host {
                        path: file.clone(),
                        populate: true,
                    },
                    read_only: true,
                },
                MountSpec {
                    target: "/tmp".into(),
                    source: Source::Tmpfs {
                        size_bytes: Some(1 << 20),
                        mode: None,
                        noexec: true,
                    },
                    read_only: false,
                },
            ],
            read_only_root: true,
        };
        let p = fs.plan().unwrap();
        assert_eq!(p.shares.len(), 2);
        assert_eq!(p.shares[0].tag, "apexfs0");
        assert_eq!(p.shares[1].kind, ShareKind::File);
        assert!(p.shares[1].read_only);
        assert!(p.setup.read_only_root);
        assert_eq!(
            p.setup.mounts[1].source,
            MountSource::Virtiofs {
                tag: "apexfs1".into(),
                file: Some("app.conf".into())
            }
        );
        assert!(p.setup.mounts[0].populate && !p.setup.mounts[1].populate);
        assert!(matches!(
            p.setup.mounts[2].source,
            MountSource::Tmpfs { noexec: true, .. }
        ));
        std::fs::remove_file(&file).unwrap();
        let err = fs.plan().unwrap_err().to_string();
        assert!(err.contains("bind source path does not exist"), "{err}");
    }

    #[test]
    fn upper_disk_is_sparse_ext4() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("upper.ext4");
        create_upper_disk(&p, 4 << 30).unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 4 << 30);
        assert!(m.blocks() * 512 < 16 << 20, "sparse: {} blocks", m.blocks());
        // ext4 superblock magic at offset 1024 + 0x38.
        let mut sb = [0u8; 2048];
        use std::io::Read;
        std::fs::File::open(&p)
            .unwrap()
            .read_exact(&mut sb)
            .unwrap();
        assert_eq!(sb[1024 + 0x38..1024 + 0x3a], [0x53, 0xef]);
        assert!(create_upper_disk(&p, 4 << 30).is_err(), "never overwrites");
    }
}
