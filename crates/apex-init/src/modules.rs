//! Kernel module loading from `/lib/modules/load-order` (absolute `.ko` paths, one per line,
//! in dependency order).

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::sys;

/// The list the initramfs builder writes.
pub const LOAD_ORDER: &str = "/lib/modules/load-order";

/// `MODULE_INIT_COMPRESSED_FILE`: lets the kernel (6.2+) decompress the module itself.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// Parses the load-order list: trimmed, non-empty lines that are not `#` comments.
pub fn parse_load_order(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('@'))
        .collect()
}

/// The paths of on-demand group `group` (lines `@<group> <path>`), in order.
pub fn parse_group<'a>(text: &'a str, group: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix('@'))
        .filter_map(|l| l.split_once(' '))
        .filter(|(g, _)| *g == group)
        .map(|(_, p)| p.trim())
        .collect()
}

/// Loads an on-demand module group (e.g. `net` before configuring interfaces).
pub fn load_group(group: &str) -> io::Result<()> {
    let text = std::fs::read_to_string(LOAD_ORDER)?;
    for path in parse_group(&text, group) {
        load(Path::new(path))?;
    }
    Ok(())
}

/// Loads one module with finit_module(2); an already loaded module is not an error.
pub fn load(path: &Path) -> io::Result<()> {
    let file = sys::open(path, libc::O_RDONLY)?;
    let compressed = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("xz" | "zst" | "gz")
    );
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    // SAFETY: `file` is an open fd and the params string is a valid empty C string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            c"".as_ptr(),
            flags,
        )
    };
    match sys::cvt(ret) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) if compressed && e.raw_os_error() == Some(libc::EINVAL) => Err(io::Error::new(
            e.kind(),
            format!("{e} (compressed modules need Linux 6.2+; ship them decompressed)"),
        )),
        Err(e) => Err(e),
    }
}

/// Loads every module in [`LOAD_ORDER`] (if the file exists), logging each failure.
/// Returns `(loaded, failed)`.
pub fn load_all() -> (usize, usize) {
    let text = match std::fs::read_to_string(LOAD_ORDER) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            crate::info!("no {LOAD_ORDER}; not loading modules");
            return (0, 0);
        }
        Err(e) => {
            crate::info!("reading {LOAD_ORDER}: {e}");
            return (0, 0);
        }
    };
    let (mut ok, mut failed) = (0, 0);
    for path in parse_load_order(&text) {
        let start = std::time::Instant::now();
        match load(Path::new(path)) {
            Ok(()) => {
                ok += 1;
                crate::debug!("module {path}: loaded in {:?}", start.elapsed());
            }
            Err(e) => {
                failed += 1;
                crate::info!("module {path}: FAILED: {e}");
            }
        }
    }
    (ok, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_demand_groups_are_skipped_at_boot() {
        let text = "/a.ko\n@net /f.ko\n/b.ko\n@net /n.ko\n@virtiofs /v.ko\n";
        assert_eq!(parse_load_order(text), ["/a.ko", "/b.ko"]);
        assert_eq!(parse_group(text, "net"), ["/f.ko", "/n.ko"]);
        assert_eq!(parse_group(text, "virtiofs"), ["/v.ko"]);
        assert!(parse_group(text, "nope").is_empty());
    }

    #[test]
    fn load_order_lines() {
        let text = "/lib/modules/a.ko\n\n  # comment\n /lib/modules/b.ko  \r\n";
        assert_eq!(
            parse_load_order(text),
            vec!["/lib/modules/a.ko", "/lib/modules/b.ko"]
        );
    }
}
