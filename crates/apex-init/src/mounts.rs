//! Mounts: mount(8)-style flag names, `mkdir -p`, the container root's pseudo filesystems,
//! and the `mount`/`umount`/`mkdir`/`write_file` calls.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use apex_agent_proto::api;

use crate::sys;

/// Mount flags split the way mount(2) needs them: one call for the mount itself, a bind
/// remount for bind-mount flags, and one call per propagation change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MountFlags {
    /// Flags for the main mount(2) call.
    pub flags: libc::c_ulong,
    /// Propagation flags (`MS_PRIVATE`, `MS_SHARED`, ... with `MS_REC`), applied afterwards.
    pub propagation: Option<libc::c_ulong>,
}

/// Parses mount(8)-style option names; unknown names are an error.
pub fn parse_flags(names: &[String]) -> Result<MountFlags, String> {
    let mut f = MountFlags::default();
    for name in names {
        let (set, clear) = match name.as_str() {
            "defaults" | "rw" => (0, libc::MS_RDONLY),
            "ro" => (libc::MS_RDONLY, 0),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "lazytime" => (libc::MS_LAZYTIME, 0),
            "silent" => (libc::MS_SILENT, 0),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let base = match name.trim_start_matches('r') {
                    "private" => libc::MS_PRIVATE,
                    "shared" => libc::MS_SHARED,
                    "slave" => libc::MS_SLAVE,
                    _ => libc::MS_UNBINDABLE,
                };
                let rec = if name.starts_with('r') {
                    libc::MS_REC
                } else {
                    0
                };
                f.propagation = Some(base | rec);
                continue;
            }
            other => return Err(format!("unknown mount flag {other:?}")),
        };
        f.flags = (f.flags | set) & !clear;
    }
    Ok(f)
}

/// Mounts with `flags`, handling bind mounts (flags other than `MS_BIND|MS_REC` need a bind
/// remount) and propagation changes (separate calls).
pub fn mount_with(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: &MountFlags,
    data: Option<&str>,
) -> io::Result<()> {
    let bind = flags.flags & libc::MS_BIND != 0 && flags.flags & libc::MS_REMOUNT == 0;
    let main_flags = if bind {
        flags.flags & (libc::MS_BIND | libc::MS_REC)
    } else {
        flags.flags
    };
    let only_propagation = flags.flags == 0 && flags.propagation.is_some() && source.is_empty();
    if !only_propagation {
        sys::mount(source, target, fstype, main_flags, data)?;
    }
    let rest = flags.flags & !(libc::MS_BIND | libc::MS_REC);
    if bind && rest != 0 {
        sys::mount(
            "",
            target,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | rest,
            None,
        )?;
    }
    if let Some(p) = flags.propagation {
        sys::mount("", target, "", p, None)?;
    }
    Ok(())
}

/// `mkdir -p` where every directory it creates gets exactly `mode` (not masked by umask).
pub fn mkdir_p(path: &Path, mode: u32) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(path);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() || p.is_dir() {
            break;
        }
        missing.push(p);
        cur = p.parent();
    }
    for dir in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        }
    }
    Ok(())
}

/// The mounts a container root gets, as `(source, target relative to the root, fstype,
/// flags, data)`. `/dev` is a bind of the guest's `/dev` (its device nodes, without the
/// guest's own devpts and shm mounts), with a private devpts instance and `/dev/shm` on top.
fn container_mounts() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    libc::c_ulong,
    &'static str,
)> {
    let common = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    vec![
        ("proc", "proc", "proc", common, ""),
        ("sysfs", "sys", "sysfs", common | libc::MS_RDONLY, ""),
        ("/dev", "dev", "", libc::MS_BIND, ""),
        (
            "devpts",
            "dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        ),
        ("shm", "dev/shm", "tmpfs", common, "mode=1777,size=65536k"),
        ("cgroup2", "sys/fs/cgroup", "cgroup2", common, ""),
    ]
}

/// Mounts proc, sysfs (ro), /dev (bind), devpts, /dev/shm and cgroup2 inside `root`.
/// Failures are logged and skipped (a missing /sys/fs/cgroup should not stop the container).
/// Returns the mount points that were mounted, innermost last.
pub fn setup_container_root(root: &Path) -> Vec<PathBuf> {
    let start = std::time::Instant::now();
    let mut mounted = Vec::new();
    let all = container_mounts();
    for (source, rel, fstype, flags, data) in &all {
        let target = root.join(rel);
        let res = (|| -> io::Result<()> {
            if !target.is_dir() {
                mkdir_p(&target, 0o755)?;
            }
            let data = (!data.is_empty()).then_some(*data);
            sys::mount(source, &target, fstype, *flags, data)?;
            if flags & libc::MS_BIND != 0 {
                // Keep container mounts from propagating back into the guest's /dev.
                sys::mount("", &target, "", libc::MS_REC | libc::MS_SLAVE, None)?;
            }
            Ok(())
        })();
        match res {
            Ok(()) => mounted.push(target),
            Err(e) => crate::info!(
                "container mount {source} on {}: FAILED: {e}",
                target.display()
            ),
        }
    }
    crate::info!(
        "container mounts in {}: {}/{} ok ({:.1} ms)",
        root.display(),
        mounted.len(),
        all.len(),
        start.elapsed().as_secs_f64() * 1000.0
    );
    mounted
}

/// Writes `etc/hostname` and `etc/hosts` in the container root (creating `etc`).
pub fn write_etc_files(root: &Path, hostname: &str) -> io::Result<()> {
    let etc = root.join("etc");
    mkdir_p(&etc, 0o755)?;
    std::fs::write(etc.join("hostname"), format!("{hostname}\n"))?;
    let hosts =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    // /etc/hosts may be a dangling symlink in some images: replace, don't follow.
    let _ = std::fs::remove_file(etc.join("hosts"));
    std::fs::write(etc.join("hosts"), hosts)?;
    Ok(())
}

/// The `mount` call.
pub fn rpc_mount(m: &api::Mount) -> Result<(), CallError> {
    let flags = parse_flags(&m.flags).map_err(CallError::InvalidParams)?;
    mount_with(
        &m.source,
        Path::new(&m.target),
        &m.fstype,
        &flags,
        m.data.as_deref(),
    )
    .map_err(|e| CallError::os(e, format!("mount {} on {}", m.source, m.target)))
}

/// The `umount` call.
pub fn rpc_umount(u: &api::Umount) -> Result<(), CallError> {
    let flags = if u.detach { libc::MNT_DETACH } else { 0 };
    sys::umount(Path::new(&u.target), flags)
        .map_err(|e| CallError::os(e, format!("umount {}", u.target)))
}

/// The `mkdir` call.
pub fn rpc_mkdir(m: &api::Mkdir) -> Result<(), CallError> {
    mkdir_p(Path::new(&m.path), m.mode & 0o7777)
        .map_err(|e| CallError::os(e, format!("mkdir {}", m.path)))
}

/// The `write_file` call: create or truncate, then set exactly `mode`.
pub fn rpc_write_file(w: &api::WriteFile) -> Result<(), CallError> {
    let mode = w.mode & 0o7777;
    let res = (|| -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&w.path)?;
        f.write_all(&w.contents)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        Ok(())
    })();
    res.map_err(|e| CallError::os(e, format!("write {}", w.path)))
}

/// An error from a call handler, mapped to a JSON-RPC error by the server.
#[derive(Debug)]
pub enum CallError {
    /// `INVALID_PARAMS`.
    InvalidParams(String),
    /// `OS_ERROR` with the errno.
    Os {
        /// errno (`EIO` when unknown).
        errno: i32,
        /// Description including the failing operation.
        message: String,
    },
}

impl CallError {
    /// An `OS_ERROR` for `err` during `what`.
    pub fn os(err: io::Error, what: String) -> Self {
        CallError::Os {
            errno: err.raw_os_error().unwrap_or(libc::EIO),
            message: format!("{what}: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(names: &[&str]) -> Result<MountFlags, String> {
        parse_flags(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flag_names() {
        let f = flags(&["ro", "nosuid", "nodev", "rbind", "rprivate"]).unwrap();
        assert_eq!(
            f.flags,
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_BIND | libc::MS_REC
        );
        assert_eq!(f.propagation, Some(libc::MS_PRIVATE | libc::MS_REC));
        assert_eq!(flags(&["ro", "rw"]).unwrap().flags, 0);
        assert_eq!(flags(&["slave"]).unwrap().propagation, Some(libc::MS_SLAVE));
        assert_eq!(flags(&[]).unwrap(), MountFlags::default());
        assert!(flags(&["bogus"]).unwrap_err().contains("bogus"));
    }

    #[test]
    fn mkdir_p_sets_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/c");
        mkdir_p(&p, 0o777).unwrap();
        mkdir_p(&p, 0o700).unwrap(); // existing: no error, mode untouched
        for d in ["a", "a/b", "a/b/c"] {
            let mode = std::fs::metadata(dir.path().join(d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o777, "{d}");
        }
        std::fs::write(dir.path().join("file"), "").unwrap();
        assert!(mkdir_p(&dir.path().join("file/x"), 0o755).is_err());
    }

    #[test]
    fn write_file_and_etc_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        rpc_write_file(&api::WriteFile {
            path: path.to_str().unwrap().into(),
            contents: b"abc".to_vec(),
            mode: 0o640,
        })
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o640);
        write_etc_files(dir.path(), "web").unwrap();
        let hosts = std::fs::read_to_string(dir.path().join("etc/hosts")).unwrap();
        assert!(hosts.starts_with("127.0.0.1\tlocalhost web\n::1\tlocalhost"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/hostname")).unwrap(),
            "web\n"
        );
    }
}
