//! Guest kernel assets, in one of two layouts:
//! - **Apex's own kernel** (`scripts/build-kernel.sh`, in `$APEX_ASSETS/kernel-apex`):
//!   `vmlinux` (uncompressed, booted through PVH) and `version`; every driver built in.
//! - **A distribution kernel** (Debian's cloud kernel, in `$APEX_ASSETS/kernel`, the
//!   fallback): `vmlinuz`, `version` and `modules/lib/modules/<version>`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Default assets directory, populated by `scripts/install-deps.sh` (`$APEX_ASSETS`).
pub const DEFAULT_ASSETS_DIR: &str = "/usr/local/lib/apex";
/// Apex's own kernel, below the assets directory.
pub const APEX_KERNEL_SUBDIR: &str = "kernel-apex";
/// Debian's kernel, below the assets directory.
pub const DEBIAN_KERNEL_SUBDIR: &str = "kernel";

/// How a kernel is booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFlavor {
    /// Everything built in and no ACPI: QEMU's microvm runs with `acpi=off` and passes
    /// the virtio-mmio devices on the command line; timer calibration is skipped.
    Minimal,
    /// A distribution kernel: ACPI, and its drivers as modules in the initramfs.
    Distro,
}

impl KernelFlavor {
    /// The least guest memory this kind of kernel boots a container in, in MiB, with a
    /// margin over the measured floor: Apex's kernel boots busybox in 36 MiB (not in 32),
    /// Debian's cloud kernel with its modules in 96 MiB (not in 64).
    pub fn min_memory_mib(self) -> u64 {
        match self {
            KernelFlavor::Minimal => crate::MIN_MEMORY_MIB,
            KernelFlavor::Distro => 128,
        }
    }
}

/// Which kernel to boot (`apex system kernel set`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KernelChoice {
    /// Apex's own kernel when it is installed, else Debian's.
    #[default]
    Default,
    /// Debian's kernel.
    Debian,
    /// A kernel directory in either layout, or a kernel image with everything built in.
    Path(PathBuf),
}

impl KernelChoice {
    /// Parses a setting: `default`, `debian`, or an absolute path.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "" | "default" => Ok(Self::Default),
            "debian" => Ok(Self::Debian),
            p if p.starts_with('/') => Ok(Self::Path(p.into())),
            other => {
                bail!("invalid kernel setting {other:?}: use default, debian or an absolute path")
            }
        }
    }

    /// The setting as stored (the inverse of [`KernelChoice::parse`]).
    pub fn as_setting(&self) -> String {
        match self {
            Self::Default => "default".into(),
            Self::Debian => "debian".into(),
            Self::Path(p) => p.display().to_string(),
        }
    }
}

/// The guest kernel image and, for a distribution kernel, its modules tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelAssets {
    /// Image passed to QEMU's `-kernel`.
    pub image: PathBuf,
    /// Directory containing `lib/modules/<version>` (`None`: everything built in).
    pub modules_root: Option<PathBuf>,
    /// Kernel release string (`uname -r` inside the guest).
    pub version: String,
    /// How it boots.
    pub flavor: KernelFlavor,
}

/// `$APEX_ASSETS`, else [`DEFAULT_ASSETS_DIR`].
pub fn assets_dir() -> PathBuf {
    std::env::var_os("APEX_ASSETS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ASSETS_DIR))
}

const HINT: &str =
    "install it with scripts/install-deps.sh, or choose another with `apex system kernel set`";

impl KernelAssets {
    /// The default kernel: `$APEX_KERNEL_DIR` if set, else [`KernelChoice::Default`].
    pub fn locate() -> Result<Self> {
        Self::resolve(&KernelChoice::Default)
    }

    /// The kernel for `choice`; `$APEX_KERNEL_DIR` overrides it.
    pub fn resolve(choice: &KernelChoice) -> Result<Self> {
        if let Some(dir) = std::env::var_os("APEX_KERNEL_DIR").filter(|v| !v.is_empty()) {
            return Self::from_dir(Path::new(&dir));
        }
        let assets = assets_dir();
        match choice {
            KernelChoice::Default => {
                let own = assets.join(APEX_KERNEL_SUBDIR);
                if own.join("vmlinux").is_file() {
                    Self::from_dir(&own)
                } else {
                    Self::from_dir(&assets.join(DEBIAN_KERNEL_SUBDIR))
                }
            }
            KernelChoice::Debian => Self::from_dir(&assets.join(DEBIAN_KERNEL_SUBDIR)),
            KernelChoice::Path(p) if p.is_dir() => Self::from_dir(p),
            KernelChoice::Path(p) => Self::from_image(p),
        }
    }

    /// Loads a kernel directory: `vmlinux` + `version` (built in), or `vmlinuz` +
    /// `version` + `modules/lib/modules/<version>` (a distribution kernel).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let vmlinux = dir.join("vmlinux");
        let vmlinuz = dir.join("vmlinuz");
        let (image, flavor) = if vmlinux.is_file() {
            (vmlinux, KernelFlavor::Minimal)
        } else if vmlinuz.is_file() {
            (vmlinuz, KernelFlavor::Distro)
        } else {
            bail!(
                "guest kernel not found: {} has neither vmlinux nor vmlinuz; {HINT}",
                dir.display()
            );
        };
        let version_file = dir.join("version");
        let version = std::fs::read_to_string(&version_file)
            .with_context(|| format!("reading {} ({HINT})", version_file.display()))?
            .trim()
            .to_string();
        if version.is_empty() || version.contains('/') {
            bail!(
                "invalid kernel version {version:?} in {}",
                version_file.display()
            );
        }
        let modules_root = match flavor {
            KernelFlavor::Minimal => None,
            KernelFlavor::Distro => {
                let root = dir.join("modules");
                let tree = root.join("lib/modules").join(&version);
                if !tree.is_dir() {
                    bail!(
                        "guest kernel modules not found: {} is missing; {HINT}",
                        tree.display()
                    );
                }
                Some(root)
            }
        };
        Ok(Self {
            image,
            modules_root,
            version,
            flavor,
        })
    }

    /// A kernel image with everything built in (booted like Apex's own), named `PATH`;
    /// its release is read from a `version` file beside it, else the file's name.
    pub fn from_image(path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!("guest kernel not found: {} is not a file", path.display());
        }
        let version = path
            .parent()
            .and_then(|d| std::fs::read_to_string(d.join("version")).ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty() && !v.contains('/'))
            .unwrap_or_else(|| {
                path.file_name()
                    .map_or("custom".into(), |n| n.to_string_lossy().into_owned())
            });
        Ok(Self {
            image: path.to_path_buf(),
            modules_root: None,
            version,
            flavor: KernelFlavor::Minimal,
        })
    }

    /// `<modules_root>/lib/modules/<version>`, for a kernel with modules.
    pub fn modules_dir(&self) -> Option<PathBuf> {
        self.modules_root
            .as_ref()
            .map(|r| r.join("lib/modules").join(&self.version))
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
    fn loads_both_layouts() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("vmlinuz"), b"k").unwrap();
        std::fs::write(tmp.path().join("version"), b"6.1.0-test\n").unwrap();
        let err = KernelAssets::from_dir(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("modules"), "{err}");
        std::fs::create_dir_all(tmp.path().join("modules/lib/modules/6.1.0-test")).unwrap();
        let k = KernelAssets::from_dir(tmp.path()).unwrap();
        assert_eq!(
            (k.version.as_str(), k.flavor),
            ("6.1.0-test", KernelFlavor::Distro)
        );
        assert_eq!(
            k.modules_dir().unwrap(),
            tmp.path().join("modules/lib/modules/6.1.0-test")
        );

        let own = tempfile::tempdir().unwrap();
        std::fs::write(own.path().join("vmlinux"), b"k").unwrap();
        std::fs::write(own.path().join("version"), b"6.1.192-apex\n").unwrap();
        let k = KernelAssets::from_dir(own.path()).unwrap();
        assert_eq!(k.flavor, KernelFlavor::Minimal);
        assert_eq!(k.modules_dir(), None);
        let k = KernelAssets::resolve(&KernelChoice::Path(own.path().join("vmlinux"))).unwrap();
        assert_eq!(
            (k.version.as_str(), k.flavor),
            ("6.1.192-apex", KernelFlavor::Minimal)
        );
    }

    #[test]
    fn choices() {
        assert_eq!(KernelChoice::parse("debian").unwrap(), KernelChoice::Debian);
        assert_eq!(
            KernelChoice::parse("default").unwrap(),
            KernelChoice::Default
        );
        let p = KernelChoice::parse("/k/vmlinux").unwrap();
        assert_eq!(p.as_setting(), "/k/vmlinux");
        assert!(KernelChoice::parse("rel/path").is_err());
    }
}
