//! Logging to stderr (the console in the guest, so it ends up in the host's console.log),
//! every line prefixed with `apex-init:`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static DEBUG: AtomicBool = AtomicBool::new(false);

/// Enables [`debug!`] output (`apex.debug=1` or `--debug`).
pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

/// Whether [`debug!`] output is enabled.
pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// Writes one line; errors are ignored (there is nowhere else to report them).
pub fn write_line(args: std::fmt::Arguments<'_>) {
    let line = format!("apex-init: {args}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Logs a line.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write_line(format_args!($($arg)*)) };
}

/// Logs a line when debugging is enabled.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::debug_enabled() {
            $crate::log::write_line(format_args!($($arg)*))
        }
    };
}

/// Runs one boot step, logging its duration or its error; returns the step's result.
pub fn step<T, E: std::fmt::Display>(name: &str, f: impl FnOnce() -> Result<T, E>) -> Option<T> {
    let start = Instant::now();
    match f() {
        Ok(v) => {
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            info!("{name}: ok ({ms:.1} ms)");
            Some(v)
        }
        Err(e) => {
            info!("{name}: FAILED: {e}");
            None
        }
    }
}
