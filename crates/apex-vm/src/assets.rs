//! Guest kernel assets: `vmlinuz`, `version` and `modules/lib/modules/<version>`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Default location, populated by `scripts/install-deps.sh`.
pub const DEFAULT_KERNEL_DIR: &str = "/usr/local/lib/apex/kernel";

/// The guest kernel image and its modules tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelAssets {
    /// Bootable kernel image passed to QEMU's `-kernel`.
    pub vmlinuz: PathBuf,
    /// Directory containing `lib/modules/<version>`.
    pub modules_root: PathBuf,
    /// Kernel release string (`uname -r` inside the guest).
    pub version: String,
}

impl KernelAssets {
    /// Locates the assets in `$APEX_KERNEL_DIR`, else [`DEFAULT_KERNEL_DIR`].
    pub fn locate() -> Result<Self> {
        let dir = std::env::var_os("APEX_KERNEL_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KERNEL_DIR));
        Self::from_dir(&dir)
    }

    /// Loads the assets from `dir` (layout: `vmlinuz`, `version`, `modules/lib/modules/<version>`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let hint = "install them with scripts/install-deps.sh or point APEX_KERNEL_DIR at them";
        let vmlinuz = dir.join("vmlinuz");
        if !vmlinuz.is_file() {
            bail!(
                "guest kernel not found: {} is missing; {hint}",
                vmlinuz.display()
            );
        }
        let version_file = dir.join("version");
        let version = std::fs::read_to_string(&version_file)
            .with_context(|| format!("reading {} ({hint})", version_file.display()))?
            .trim()
            .to_string();
        if version.is_empty() || version.contains('/') {
            bail!(
                "invalid kernel version {version:?} in {}",
                version_file.display()
            );
        }
        let modules_root = dir.join("modules");
        let tree = modules_root.join("lib/modules").join(&version);
        if !tree.is_dir() {
            bail!(
                "guest kernel modules not found: {} is missing; {hint}",
                tree.display()
            );
        }
        Ok(Self {
            vmlinuz,
            modules_root,
            version,
        })
    }

    /// `<modules_root>/lib/modules/<version>`.
    pub fn modules_dir(&self) -> PathBuf {
        self.modules_root.join("lib/modules").join(&self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_dir_names_install_script() {
        let tmp = tempfile::tempdir().unwrap();
        let err = KernelAssets::from_dir(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("scripts/install-deps.sh"), "{err}");
        assert!(err.contains("vmlinuz"), "{err}");
    }

    #[test]
    fn loads_layout() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("vmlinuz"), b"k").unwrap();
        std::fs::write(tmp.path().join("version"), b"6.1.0-test\n").unwrap();
        let err = KernelAssets::from_dir(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("modules"), "{err}");
        std::fs::create_dir_all(tmp.path().join("modules/lib/modules/6.1.0-test")).unwrap();
        let k = KernelAssets::from_dir(tmp.path()).unwrap();
        assert_eq!(k.version, "6.1.0-test");
        assert_eq!(
            k.modules_dir(),
            tmp.path().join("modules/lib/modules/6.1.0-test")
        );
    }
}
