//! Standard output that ends the process quietly when its reader goes away
//! (`apex inspect x | head -1`), the way `cat` or `docker` end: killed by SIGPIPE, with
//! no message. Rust ignores SIGPIPE and `println!` panics on a closed pipe instead; the
//! crate's `println!`/`print!` (defined in `main.rs`) write through here.

use std::fmt;
use std::io::Write;

/// Writes `args` and a newline to stdout.
pub fn line(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let res = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    check(res);
}

/// Writes `args` to stdout.
pub fn text(args: fmt::Arguments<'_>) {
    check(std::io::stdout().lock().write_fmt(args));
}

fn check(res: std::io::Result<()>) {
    match res {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => die_of_sigpipe(),
        Err(e) => {
            eprintln!("Error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// Ends the process as an unhandled SIGPIPE would (status 141 in a shell).
pub fn die_of_sigpipe() -> ! {
    // SAFETY: restoring the default disposition and raising the signal have no memory
    // safety preconditions; the default action terminates the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(141)
}
