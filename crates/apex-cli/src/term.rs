//! The caller's terminal: raw mode for `-t` sessions (restored on drop) and its size.

use std::os::fd::BorrowedFd;

use rustix::termios::{self, OptionalActions, Termios};

/// Puts stdin in raw mode while alive.
pub struct RawMode {
    saved: Termios,
}

fn stdin_fd() -> BorrowedFd<'static> {
    rustix::stdio::stdin()
}

impl RawMode {
    /// Enables raw mode if stdin is a terminal.
    pub fn enable() -> Option<Self> {
        let fd = stdin_fd();
        if !termios::isatty(fd) {
            return None;
        }
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(fd, OptionalActions::Now, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(stdin_fd(), OptionalActions::Now, &self.saved);
    }
}

/// (rows, cols) of the terminal on stdout, or stdin.
pub fn size() -> Option<(u16, u16)> {
    for fd in [rustix::stdio::stdout(), stdin_fd()] {
        if let Ok(ws) = termios::tcgetwinsize(fd) {
            if ws.ws_row > 0 && ws.ws_col > 0 {
                return Some((ws.ws_row, ws.ws_col));
            }
        }
    }
    None
}
