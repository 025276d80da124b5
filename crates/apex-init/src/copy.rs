//! A `cp -a` of one directory tree into another, on directory fds: contents, modes,
//! ownership, timestamps, symlinks, hard links and device nodes (not xattrs). Used to
//! populate a new volume with the image's content at its mount point.
//!
//! Hand-written rather than a crate: it must work on fds (the source is covered by the
//! mount it is copied into) and never follow a symlink of the source; the `*at` calls
//! with `AT_SYMLINK_NOFOLLOW`/`O_NOFOLLOW` do exactly that.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::sys;

/// The names in an open directory, without `.` and `..`.
pub fn read_dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    // fdopendir takes ownership of its fd: give it a duplicate, reopened at offset 0.
    let dup = sys::openat_in_root(dir, ".", libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: `dup` is an open directory fd whose ownership passes to the DIR stream.
    let d = unsafe { libc::fdopendir(dup.as_raw_fd()) };
    if d.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(dup);
    let mut names = Vec::new();
    loop {
        // SAFETY: `d` is a valid DIR stream until closedir below.
        let ent = unsafe { libc::readdir64(d) };
        if ent.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid dirent whose d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    // SAFETY: `d` is valid and closed once.
    unsafe { libc::closedir(d) };
    Ok(names)
}

fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat64> {
    // SAFETY: stat64 is plain old data; fstatat fills it.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, C string and out pointer.
    sys::cvt(unsafe {
        libc::fstatat64(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: valid fd and C string; the result is a fresh fd we own.
    let fd = sys::cvt_retry(|| unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode,
        )
    })?;
    // SAFETY: openat returned a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn times(st: &libc::stat64) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}

/// Sets owner, mode (after the owner: chown clears set-id bits) and times of `name` in
/// `dir` from `st`. Symlinks get owner and times only.
fn set_meta(dir: BorrowedFd<'_>, name: &CStr, st: &libc::stat64) -> io::Result<()> {
    let link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
    // SAFETY (all three calls): valid fd, C string and pointers.
    sys::cvt(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.st_uid,
            st.st_gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    if !link {
        sys::cvt(unsafe {
            libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), st.st_mode & 0o7777, 0)
        })?;
    }
    let t = times(st);
    sys::cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

struct Copier {
    /// Hard-linked files already copied: (dev, ino) -> their path below the destination.
    links: HashMap<(u64, u64), CString>,
    dst_root: OwnedFd,
    count: usize,
}

impl Copier {
    fn copy_dir(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>, rel: &str) -> io::Result<()> {
        for name in read_dir_names(src)? {
            let st = lstat_at(src, &name)?;
            let name_str = name.to_string_lossy();
            let rel_child = if rel.is_empty() {
                name_str.to_string()
            } else {
                format!("{rel}/{name_str}")
            };
            self.count += 1;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    // SAFETY: valid fd and C string.
                    match sys::cvt(unsafe { libc::mkdirat(dst.as_raw_fd(), name.as_ptr(), 0o700) })
                    {
                        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
                        _ => {}
                    }
                    let s = open_at(src, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                    let d = open_at(dst, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                    self.copy_dir(s.as_fd(), d.as_fd(), &rel_child)?;
                }
                libc::S_IFREG => {
                    let key = (st.st_dev, st.st_ino);
                    if st.st_nlink > 1 {
                        if let Some(first) = self.links.get(&key) {
                            // SAFETY: valid fds and C strings.
                            sys::cvt(unsafe {
                                libc::linkat(
                                    self.dst_root.as_raw_fd(),
                                    first.as_ptr(),
                                    dst.as_raw_fd(),
                                    name.as_ptr(),
                                    0,
                                )
                            })?;
                            continue;
                        }
                        self.links.insert(key, sys::cstring(&rel_child)?);
                    }
                    let s = open_at(src, &name, libc::O_RDONLY, 0)?;
                    let d = open_at(
                        dst,
                        &name,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                        0o600,
                    )?;
                    io::copy(&mut File::from(s), &mut File::from(d))?;
                }
                libc::S_IFLNK => {
                    let mut buf = vec![0u8; libc::PATH_MAX as usize];
                    // SAFETY: valid fd, C string and buffer of the length passed.
                    let n = sys::cvt(unsafe {
                        libc::readlinkat(
                            src.as_raw_fd(),
                            name.as_ptr(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                        )
                    })?;
                    buf.truncate(n as usize);
                    let target = CString::new(buf)?;
                    // SAFETY: valid C strings and fd.
                    sys::cvt(unsafe {
                        libc::symlinkat(target.as_ptr(), dst.as_raw_fd(), name.as_ptr())
                    })?;
                }
                libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                    // SAFETY: valid fd and C string.
                    sys::cvt(unsafe {
                        libc::mknodat(dst.as_raw_fd(), name.as_ptr(), st.st_mode, st.st_rdev)
                    })?;
                }
                // Sockets only make sense to the process that bound them.
                _ => continue,
            }
            set_meta(dst, &name, &st)?;
        }
        Ok(())
    }
}

/// Copies everything below the directory `src` into the directory `dst`, then gives
/// `dst` the owner, mode and times of `src`. Returns the number of entries copied.
pub fn copy_tree(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<usize> {
    let mut c = Copier {
        links: HashMap::new(),
        dst_root: sys::openat_in_root(dst, ".", libc::O_PATH | libc::O_DIRECTORY)?,
        count: 0,
    };
    c.copy_dir(src, dst, "")?;
    let st = lstat_at(src, c".")?;
    set_meta(dst, c".", &st)?;
    Ok(c.count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn copies_content_modes_links_and_times() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("a/b")).unwrap();
        std::fs::write(s.join("a/b/file"), "hello").unwrap();
        std::fs::set_permissions(s.join("a/b/file"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::fs::hard_link(s.join("a/b/file"), s.join("a/hard")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", s.join("a/link")).unwrap();
        std::fs::set_permissions(s, std::fs::Permissions::from_mode(0o750)).unwrap();
        let fs = sys::open(s, libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
        let fd = sys::open(dst.path(), libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
        assert_eq!(copy_tree(fs.as_fd(), fd.as_fd()).unwrap(), 5);
        let d = dst.path();
        assert_eq!(
            std::fs::read_to_string(d.join("a/b/file")).unwrap(),
            "hello"
        );
        let m = std::fs::metadata(d.join("a/b/file")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(
            m.mtime(),
            std::fs::metadata(s.join("a/b/file")).unwrap().mtime()
        );
        assert_eq!(
            m.ino(),
            std::fs::metadata(d.join("a/hard")).unwrap().ino(),
            "hard links stay linked"
        );
        assert_eq!(
            std::fs::read_link(d.join("a/link")).unwrap().to_str(),
            Some("/etc/passwd")
        );
        assert_eq!(std::fs::metadata(d).unwrap().mode() & 0o7777, 0o750);
        assert!(read_dir_names(fs.as_fd()).unwrap().len() == 1);
    }
}
