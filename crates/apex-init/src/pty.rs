//! Pseudo-terminals for `terminal: true` processes, and the relays between the pty master
//! and the host's stdio connections.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use crate::sys::{self, Stream};

/// A pty pair. The slave is handed to the child; init keeps the master.
pub struct Pty {
    /// Master side (init's end).
    pub master: OwnedFd,
    /// Slave side (the process's stdin/stdout/stderr and controlling tty).
    pub slave: OwnedFd,
}

/// Opens a pty in the devpts instance of the container at `root`, so the process sees its
/// terminal as `/dev/pts/N` inside the container. Falls back to the guest's `/dev/ptmx`.
pub fn open(root: &Path) -> io::Result<Pty> {
    let candidates = [
        root.join("dev/pts/ptmx"),
        root.join("dev/ptmx"),
        "/dev/ptmx".into(),
    ];
    let mut last_err = io::Error::from(io::ErrorKind::NotFound);
    for ptmx in &candidates {
        match sys::open(ptmx, libc::O_RDWR | libc::O_NOCTTY) {
            Ok(master) => match open_slave(&master) {
                Ok(slave) => return Ok(Pty { master, slave }),
                Err(e) => last_err = e,
            },
            Err(e) => last_err = io::Error::new(e.kind(), format!("{}: {e}", ptmx.display())),
        }
    }
    Err(last_err)
}

fn open_slave(master: &OwnedFd) -> io::Result<OwnedFd> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from the valid pointer.
    sys::cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    // TIOCGPTPEER opens the slave through the master's own devpts mount, with no path lookup.
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
    let fd = sys::cvt(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the ioctl returned a fresh descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets the terminal window size (TIOCSWINSZ on the master).
pub fn set_winsize(master: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the valid pointer.
    sys::cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) })?;
    Ok(())
}

/// Writes the terminal's EOF character (`VEOF`, normally ^D) to the master, as if typed.
/// In canonical mode at the start of a line this makes the reader see end-of-file.
pub fn send_eof(master: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: termios is plain old data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer; on a master, Linux reports the slave's termios.
    let eof = if unsafe { libc::tcgetattr(master.as_raw_fd(), &mut t) } == 0 {
        t.c_cc[libc::VEOF]
    } else {
        4
    };
    sys::write_all_fd(master, &[eof])
}

/// Copies pty output to the host until the slave side is closed by every process (the
/// master then reads `EIO`). With no stdout connection the output is drained and dropped,
/// so the process never blocks on a full terminal buffer.
pub fn relay_output(master: Arc<OwnedFd>, mut out: Option<Stream>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match sys::read_fd(master.as_fd(), &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(s) = &out {
            if sys::write_all_fd(s.as_fd(), &buf[..n]).is_err() {
                // Host went away: keep draining so the process does not block.
                out = None;
            }
        }
    }
    crate::debug!("pty output relay finished");
}

/// Copies host input to the pty master until the stdin connection reaches EOF or `stop`
/// (the read end of a pipe) hangs up because its write end was dropped.
pub fn relay_input(master: Arc<OwnedFd>, input: Stream, stop: OwnedFd) {
    let mut buf = vec![0u8; 32 * 1024];
    while let Ok(revents) = sys::poll_readable(&[input.as_fd(), stop.as_fd()]) {
        if revents[1] != 0 {
            break;
        }
        let n = match sys::read_fd(input.as_fd(), &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if sys::write_all_fd(master.as_fd(), &buf[..n]).is_err() {
            break;
        }
    }
    crate::debug!("pty input relay finished");
}
