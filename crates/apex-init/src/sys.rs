//! Thin, safe wrappers over the raw libc calls apex-init needs, and [`Stream`], a connected
//! socket (vsock or Unix) used for control and stdio connections.

use std::ffi::{CString, OsStr};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Converts a `-1` return into the current `errno` as an [`io::Error`].
pub fn cvt<T: Copy + PartialOrd + Default>(ret: T) -> io::Result<T> {
    if ret < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Like [`cvt`], retrying on `EINTR`.
pub fn cvt_retry<T: Copy + PartialOrd + Default>(mut f: impl FnMut() -> T) -> io::Result<T> {
    loop {
        match cvt(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// A C string from a path or string; interior NUL bytes are an `InvalidInput` error.
pub fn cstring(s: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} contains a NUL byte", s.as_ref()),
        )
    })
}

/// Describes an OS error the way Go (and so Docker) does: lower-case, without "(os error N)".
pub fn errno_text(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text.to_owned(),
    }
}

/// mount(2). `data` is the filesystem-specific option string.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstring(source)?;
    let target = cstring(target)?;
    let fstype = cstring(fstype)?;
    let data = data.map(cstring).transpose()?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: all pointers are valid NUL-terminated strings (or null for `data`) that outlive
    // the call.
    cvt(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data_ptr,
        )
    })?;
    Ok(())
}

/// umount2(2).
pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cstring(target)?;
    // SAFETY: `target` is a valid C string for the duration of the call.
    cvt(unsafe { libc::umount2(target.as_ptr(), flags) })?;
    Ok(())
}

/// Duplicates `fd` with `O_CLOEXEC`.
pub fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// A close-on-exec pipe: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// pidfd_open(2): a handle on process `pid` that stays valid (and refers to that process,
/// never a reuse of its pid) after it exits.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes plain integers.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the syscall succeeded, so `fd` is an open fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// read(2) into `buf`, retrying on `EINTR`.
pub fn read_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    cvt_retry(|| unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
        .map(|n| n as usize)
}

/// write(2) from `buf`, retrying on `EINTR`.
pub fn write_fd(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    cvt_retry(|| unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
        .map(|n| n as usize)
}

/// Writes all of `buf` to `fd`.
pub fn write_all_fd(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match write_fd(fd, buf)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => buf = &buf[n..],
        }
    }
    Ok(())
}

/// Waits until one of `fds` is readable (or hung up); returns the `revents` of each.
pub fn poll_readable(fds: &[BorrowedFd<'_>]) -> io::Result<Vec<libc::c_short>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs.
    cvt_retry(|| unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) })?;
    Ok(pfds.iter().map(|p| p.revents).collect())
}

/// Sets (or with `None` clears) `SO_RCVTIMEO`: a blocking read then fails with `WouldBlock`
/// after `timeout`.
pub fn set_recv_timeout(
    fd: BorrowedFd<'_>,
    timeout: Option<std::time::Duration>,
) -> io::Result<()> {
    let t = timeout.unwrap_or_default();
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a valid timeval and its size is passed; the kernel only reads it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Opens `path` read-only with `O_CLOEXEC` (plus `extra` flags).
pub fn open(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    // SAFETY: `c` is a valid C string; the returned fd (if any) is owned by us.
    let fd = cvt_retry(|| unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o666) })?;
    // SAFETY: open succeeded, so `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads `path` inside `root` as if `root` were `/` (symlinks cannot escape it), using
/// openat2(RESOLVE_IN_ROOT) where available. A missing file is `Ok(None)`.
pub fn read_in_root(root: &Path, path: &str) -> io::Result<Option<Vec<u8>>> {
    let file = match open_in_root(root, path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut data = Vec::new();
    std::fs::File::from(file).read_to_end(&mut data)?;
    Ok(Some(data))
}

fn open_in_root(root: &Path, path: &str) -> io::Result<OwnedFd> {
    let dir = open(root, libc::O_RDONLY | libc::O_DIRECTORY)?;
    match openat_in_root(dir.as_fd(), path, libc::O_RDONLY) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            open(&root.join(path.trim_start_matches('/')), libc::O_RDONLY)
        }
        other => other,
    }
}

/// openat2(2) of `path` below the directory `root` with `RESOLVE_IN_ROOT`: the path and
/// every symlink on the way resolve as if `root` were `/` (no escape through `..` or
/// absolute links). `flags` get `O_CLOEXEC` added.
pub fn openat_in_root(root: BorrowedFd<'_>, path: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let rel = cstring(path.trim_start_matches('/'))?;
    let rel = if rel.as_bytes().is_empty() {
        cstring(".")?
    } else {
        rel
    };
    // SAFETY: open_how is plain old data; all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT;
    // SAFETY: `root` is an open directory fd, `rel` a valid C string and `how` a valid
    // open_how of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if ret >= 0 {
        // SAFETY: openat2 returned a fresh descriptor that we now own.
        return Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) });
    }
    Err(io::Error::last_os_error())
}

/// A connected stream socket (vsock or Unix), read and written with read(2)/write(2).
#[derive(Debug)]
pub struct Stream(OwnedFd);

impl Stream {
    /// Another handle to the same socket.
    pub fn try_clone(&self) -> io::Result<Stream> {
        dup(self.0.as_fd()).map(Stream)
    }

    /// shutdown(2) with `how` (`libc::SHUT_RD`, `SHUT_WR`, `SHUT_RDWR`).
    pub fn shutdown(&self, how: libc::c_int) -> io::Result<()> {
        // SAFETY: plain syscall on an fd we own.
        cvt(unsafe { libc::shutdown(self.0.as_raw_fd(), how) })?;
        Ok(())
    }
}

impl From<OwnedFd> for Stream {
    fn from(fd: OwnedFd) -> Self {
        Stream(fd)
    }
}

impl From<Stream> for OwnedFd {
    fn from(s: Stream) -> Self {
        s.0
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_fd(self.0.as_fd(), buf)
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_fd(self.0.as_fd(), buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Makes sure fds 0, 1 and 2 are open (on `/dev/console`, else `/dev/null`), so that later
/// descriptors never land on them. The kernel leaves them closed when the initramfs has no
/// `/dev/console`.
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        for path in [c"/dev/console", c"/dev/null"] {
            // SAFETY: valid C string; the new fd becomes the lowest free one (`fd`) or is
            // moved there with dup2 below.
            let new = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
            if new < 0 {
                continue;
            }
            if new != fd {
                // SAFETY: both are valid fds; `new` is ours to close.
                unsafe {
                    libc::dup2(new, fd);
                    libc::close(new);
                }
            }
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_is_go_style() {
        assert_eq!(errno_text(libc::ENOENT), "no such file or directory");
        assert_eq!(errno_text(libc::EACCES), "permission denied");
    }

    #[test]
    fn read_in_root_does_not_escape() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(dir.path().join("secret"), "outside").unwrap();
        std::fs::write(root.join("secret"), "inside").unwrap();
        std::os::unix::fs::symlink("/secret", root.join("etc/link")).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("etc/rel")).unwrap();
        assert_eq!(
            read_in_root(&root, "/etc/link").unwrap().unwrap(),
            b"inside"
        );
        assert_eq!(read_in_root(&root, "etc/rel").unwrap().unwrap(), b"inside");
        assert!(read_in_root(&root, "/etc/missing").unwrap().is_none());
    }
}
