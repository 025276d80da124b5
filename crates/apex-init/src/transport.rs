//! Where the agent listens and how it reaches the host: AF_VSOCK in the guest, or Unix
//! sockets in test mode (`PATH` for control, `PATH@<port>` for other listening ports,
//! `PATH_<port>` for stdio, exactly what the host's vhost-device-vsock backend exposes).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use apex_agent_proto::{CONTROL_PORT, HOST_CID};

use crate::sys::{self, Stream};

/// The socket family in use.
#[derive(Debug, Clone)]
pub enum Transport {
    /// vsock: listen on [`CONTROL_PORT`] (any CID), connect to [`HOST_CID`].
    Vsock,
    /// Test mode: listen on `path`, connect to `path_<port>`.
    Unix {
        /// The control socket path.
        path: PathBuf,
    },
}

/// A listening control socket.
pub struct Listener(OwnedFd);

impl Transport {
    /// Binds and listens on the control socket.
    pub fn listen(&self) -> io::Result<Listener> {
        self.listen_port(CONTROL_PORT)
    }

    /// Binds and listens on guest vsock `port`; in test mode on `PATH` for
    /// [`CONTROL_PORT`] and on [`unix_listen_path`] for other ports.
    pub fn listen_port(&self, port: u32) -> io::Result<Listener> {
        match self {
            Transport::Vsock => {
                let fd = vsock_socket()?;
                let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
                // SAFETY: `addr` is a valid sockaddr_vm of the size passed.
                sys::cvt(unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&addr as *const libc::sockaddr_vm).cast(),
                        std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
                    )
                })?;
                // SAFETY: plain syscall on a socket we own.
                sys::cvt(unsafe { libc::listen(fd.as_raw_fd(), 64) })?;
                Ok(Listener(fd))
            }
            Transport::Unix { path } => {
                let path = unix_listen_path(path, port);
                let _ = std::fs::remove_file(&path);
                Ok(Listener(UnixListener::bind(path)?.into()))
            }
        }
    }

    /// Connects to the host's `port` (a process stdio stream).
    pub fn connect_host(&self, port: u32) -> io::Result<Stream> {
        match self {
            Transport::Vsock => {
                let fd = vsock_socket()?;
                let addr = vsock_addr(HOST_CID, port);
                // SAFETY: `addr` is a valid sockaddr_vm of the size passed.
                sys::cvt_retry(|| unsafe {
                    libc::connect(
                        fd.as_raw_fd(),
                        (&addr as *const libc::sockaddr_vm).cast(),
                        std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
                    )
                })?;
                Ok(Stream::from(fd))
            }
            Transport::Unix { path } => {
                let p = unix_port_path(path, port);
                Ok(Stream::from(OwnedFd::from(UnixStream::connect(p)?)))
            }
        }
    }
}

/// `PATH_<port>`: where a guest connection to the host's `port` arrives.
pub fn unix_port_path(path: &Path, port: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Test mode: where the agent listens for host connections to guest `port`: `PATH` for
/// [`CONTROL_PORT`], `PATH@<port>` for others (e.g. the forward port).
pub fn unix_listen_path(path: &Path, port: u32) -> PathBuf {
    if port == CONTROL_PORT {
        return path.to_path_buf();
    }
    let mut s = path.as_os_str().to_owned();
    s.push(format!("@{port}"));
    PathBuf::from(s)
}

impl Listener {
    /// Accepts one connection (close-on-exec), retrying on `EINTR`.
    pub fn accept(&self) -> io::Result<Stream> {
        // SAFETY: null address pointers are allowed; the returned fd is ours.
        let fd = sys::cvt_retry(|| unsafe {
            libc::accept4(
                self.0.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        })?;
        // SAFETY: accept4 returned a fresh descriptor owned by nobody else.
        Ok(Stream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory-safety preconditions.
    let fd = sys::cvt(unsafe {
        libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: socket succeeded; we own the new fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is valid (and required for padding).
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_paths() {
        assert_eq!(
            unix_port_path(Path::new("/tmp/x/agent.sock"), 2001),
            PathBuf::from("/tmp/x/agent.sock_2001")
        );
        let p = Path::new("/tmp/x/agent.sock");
        assert_eq!(unix_listen_path(p, CONTROL_PORT), p);
        assert_eq!(
            unix_listen_path(p, 1025),
            PathBuf::from("/tmp/x/agent.sock@1025")
        );
    }
}
