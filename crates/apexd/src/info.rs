//! System facts reported by the API: disk usage and the VM accelerator.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Where apex-vm caches its accelerator probe.
pub const ACCEL_CACHE: &str = "/var/cache/apex/accel.json";

/// The directories under `$APEX_HOME` that `GET /v1/system/df` reports, in order.
pub const DF_DIRS: [&str; 6] = ["content", "rootfs", "containers", "volumes", "db", "logs"];

/// Bytes allocated on disk (`st_blocks * 512`, like `du`) by everything under `path`,
/// not following symlinks; 0 if it does not exist. Unreadable entries are skipped.
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                total += disk_usage(&e.path());
            }
        }
    }
    total
}

/// The accelerator apex-vm chose (`kvm`/`tcg`) from its probe cache `file`, or `unknown`.
pub fn accelerator(file: &Path) -> String {
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("accel")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), vec![1u8; 100_000]).unwrap();
        assert!(disk_usage(&dir.path().join("a")) >= 100_000);
    }

    #[test]
    fn accelerator_from_cache() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("accel.json");
        assert_eq!(accelerator(&f), "unknown");
        std::fs::write(&f, r#"{"kernel_version":"x","accel":"kvm"}"#).unwrap();
        assert_eq!(accelerator(&f), "kvm");
        std::fs::write(&f, "not json").unwrap();
        assert_eq!(accelerator(&f), "unknown");
    }
}
