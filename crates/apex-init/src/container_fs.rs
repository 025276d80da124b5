//! The `setup_mounts` call: virtio-fs shares (bind mounts and volumes), tmpfs mounts and a
//! read-only root, at paths of the container.
//!
//! Targets are resolved inside the container root with openat2(`RESOLVE_IN_ROOT`), so an
//! image's symlinks (`/var/run -> /run`) land where they would in a chroot, never on the
//! guest's own directories. Missing directories on the way are created. The mount itself
//! goes onto `/proc/self/fd/N` of the resolved target, so nothing can swap the path
//! between the lookup and the mount.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use apex_agent_proto::api::{ContainerMount, MountSource, SetupMounts};

use crate::mounts::{mkdir_p, CallError};
use crate::{copy, modules, sys};

/// Where file shares are mounted before their one file is bound into the container.
pub const SHARES: &str = "/run/apex/shares";
/// The module group holding virtio-fs (see [`modules::load_group`]).
const VIRTIOFS_MODULES: &str = "virtiofs";

/// What a target must be when it has to be created.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Dir,
    File,
}

fn os(e: io::Error, what: impl Into<String>) -> CallError {
    CallError::os(e, what.into())
}

/// The path that designates an open fd for mount(2).
fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens `target` (absolute, in the container) below `root` with `O_PATH`, creating
/// missing directories (and, for [`Kind::File`], a missing final file) on the way.
fn ensure_target(root: BorrowedFd<'_>, target: &str, kind: Kind) -> io::Result<OwnedFd> {
    let parts: Vec<&str> = target
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let mut done = String::new();
    for (i, part) in parts.iter().enumerate() {
        let next = format!("{done}/{part}");
        match sys::openat_in_root(root, &next, libc::O_PATH) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = sys::openat_in_root(root, &done, libc::O_PATH | libc::O_DIRECTORY)?;
                let name = sys::cstring(part)?;
                let last = i + 1 == parts.len();
                // SAFETY: `parent` is an open fd and `name` a valid C string.
                let ret = if last && kind == Kind::File {
                    unsafe {
                        libc::openat(
                            parent.as_raw_fd(),
                            name.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                            0o644,
                        )
                    }
                } else {
                    // SAFETY: as above.
                    unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) }
                };
                match sys::cvt(ret) {
                    Ok(fd) if last && kind == Kind::File => {
                        // SAFETY: closing the fd openat just returned, which nobody else owns.
                        unsafe { libc::close(fd) };
                    }
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        done = next;
    }
    sys::openat_in_root(root, &done, libc::O_PATH)
}

/// Whether the open directory holds nothing but `.` and `..`.
fn dir_is_empty(dir: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(copy::read_dir_names(dir)?.is_empty())
}

/// Applies one mount. `root` is the container root.
fn mount_one(root: BorrowedFd<'_>, m: &ContainerMount) -> Result<(), CallError> {
    if !m.target.starts_with('/') {
        return Err(CallError::InvalidParams(format!(
            "mount target {:?} is not absolute",
            m.target
        )));
    }
    let what = |verb: &str| format!("{verb} {} on {}", describe(&m.source), m.target);
    let ro = if m.read_only { libc::MS_RDONLY } else { 0 };
    match &m.source {
        MountSource::Virtiofs { tag, file: None } => {
            load_virtiofs();
            let target =
                ensure_target(root, &m.target, Kind::Dir).map_err(|e| os(e, what("mount")))?;
            // The image's content, reachable through this fd once the share covers it.
            let below = if m.populate {
                Some(
                    sys::openat_in_root(root, &m.target, libc::O_RDONLY | libc::O_DIRECTORY)
                        .map_err(|e| os(e, what("populate")))?,
                )
            } else {
                None
            };
            sys::mount(tag, &fd_path(target.as_fd()), "virtiofs", ro, None)
                .map_err(|e| os(e, what("mount")))?;
            if let Some(below) = below {
                populate(root, &m.target, below.as_fd()).map_err(|e| os(e, what("populate")))?;
            }
        }
        MountSource::Virtiofs {
            tag,
            file: Some(file),
        } => {
            load_virtiofs();
            if file.is_empty() || file.contains('/') || file == ".." || file == "." {
                return Err(CallError::InvalidParams(format!("bad file name {file:?}")));
            }
            let share = Path::new(SHARES).join(tag);
            mkdir_p(&share, 0o700).map_err(|e| os(e, what("mount")))?;
            sys::mount(tag, &share, "virtiofs", ro, None).map_err(|e| os(e, what("mount")))?;
            let target =
                ensure_target(root, &m.target, Kind::File).map_err(|e| os(e, what("mount")))?;
            let src = share.join(file);
            let src = src.to_str().unwrap_or_default();
            let t = fd_path(target.as_fd());
            sys::mount(src, &t, "", libc::MS_BIND, None).map_err(|e| os(e, what("bind")))?;
            if m.read_only {
                // `target` is the file under the bind; the remount needs the bind itself.
                let bound = sys::openat_in_root(root, &m.target, libc::O_PATH)
                    .map_err(|e| os(e, what("remount read-only")))?;
                let b = fd_path(bound.as_fd());
                sys::mount("", &b, "", libc::MS_BIND | libc::MS_REMOUNT | ro, None)
                    .map_err(|e| os(e, what("remount read-only")))?;
            }
        }
        MountSource::Tmpfs {
            size_bytes,
            mode,
            noexec,
        } => {
            let target =
                ensure_target(root, &m.target, Kind::Dir).map_err(|e| os(e, what("mount")))?;
            let mut data = format!("mode={:o}", mode.unwrap_or(0o1777) & 0o7777);
            if let Some(size) = size_bytes {
                data.push_str(&format!(",size={size}"));
            }
            let mut flags = libc::MS_NOSUID | libc::MS_NODEV | ro;
            if *noexec {
                flags |= libc::MS_NOEXEC;
            }
            sys::mount(
                "tmpfs",
                &fd_path(target.as_fd()),
                "tmpfs",
                flags,
                Some(&data),
            )
            .map_err(|e| os(e, what("mount")))?;
        }
    }
    Ok(())
}

/// Copies `below` (the image's directory under the mount) into the freshly mounted
/// directory at `target` if that one is empty, as Docker does for new volumes.
fn populate(root: BorrowedFd<'_>, target: &str, below: BorrowedFd<'_>) -> io::Result<()> {
    let mounted = sys::openat_in_root(root, target, libc::O_RDONLY | libc::O_DIRECTORY)?;
    if !dir_is_empty(mounted.as_fd())? || dir_is_empty(below)? {
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    let n = copy::copy_tree(below, mounted.as_fd())?;
    crate::info!(
        "populated {target} with {n} entries from the image in {:.1} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

fn describe(s: &MountSource) -> String {
    match s {
        MountSource::Virtiofs { tag, file: None } => format!("share {tag}"),
        MountSource::Virtiofs { tag, file: Some(f) } => format!("file {f} of share {tag}"),
        MountSource::Tmpfs { .. } => "tmpfs".into(),
    }
}

fn load_virtiofs() {
    // No module list (a kernel with virtio-fs built in) is fine.
    if let Err(e) = modules::load_group(VIRTIOFS_MODULES) {
        if e.kind() != io::ErrorKind::NotFound {
            crate::info!("loading the virtio-fs modules: {e}");
        }
    }
}

/// The `setup_mounts` call on the container root `root`.
pub fn rpc_setup_mounts(root: &Path, req: &SetupMounts) -> Result<(), CallError> {
    let t0 = std::time::Instant::now();
    let root_fd = sys::open(root, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| os(e, format!("open {}", root.display())))?;
    for m in &req.mounts {
        mount_one(root_fd.as_fd(), m)?;
    }
    if req.read_only_root {
        sys::mount(
            "",
            root,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )
        .map_err(|e| os(e, "remount the root read-only"))?;
    }
    crate::info!(
        "{} container mounts{} in {:.1} ms",
        req.mounts.len(),
        if req.read_only_root {
            ", root read-only"
        } else {
            ""
        },
        t0.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve_inside_the_root_and_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("run")).unwrap();
        // An absolute symlink resolves inside the root, like in a chroot.
        std::os::unix::fs::symlink("/run", root.join("varrun")).unwrap();
        let r = sys::open(root, libc::O_PATH | libc::O_DIRECTORY).unwrap();
        ensure_target(r.as_fd(), "/varrun/app/data", Kind::Dir).unwrap();
        assert!(root.join("run/app/data").is_dir());
        // `..` cannot climb out.
        ensure_target(r.as_fd(), "/../../escape", Kind::Dir).unwrap();
        assert!(root.join("escape").is_dir());
        ensure_target(r.as_fd(), "/etc/app.conf", Kind::File).unwrap();
        assert!(root.join("etc/app.conf").is_file());
        // Existing targets are opened as they are.
        ensure_target(r.as_fd(), "/etc/app.conf", Kind::Dir).unwrap();
        assert!(root.join("etc/app.conf").is_file());
    }

    #[test]
    fn relative_targets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = sys::open(dir.path(), libc::O_PATH | libc::O_DIRECTORY).unwrap();
        let m = ContainerMount {
            target: "data".into(),
            source: MountSource::Tmpfs {
                size_bytes: None,
                mode: None,
                noexec: false,
            },
            read_only: false,
            populate: false,
        };
        assert!(matches!(
            mount_one(r.as_fd(), &m),
            Err(CallError::InvalidParams(_))
        ));
    }
}
