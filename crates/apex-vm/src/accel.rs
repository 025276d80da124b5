//! Accelerator selection: KVM when it really works, else TCG.
//!
//! `/dev/kvm` existing is not enough: on nested/paravirtualized hosts KVM can hang
//! or abort a stock guest kernel, so KVM is chosen only after a probe VM's agent
//! answered on vsock. Probe results are cached per (kernel version, QEMU binary).

use crate::assets::KernelAssets;
use crate::qemu::{QemuProvider, Vm, VmConfig};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// Guest vsock port the probe connects to (the agent's control port).
pub const PROBE_PORT: u32 = 1024;
/// Default probe timeout.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(8);
const CACHE_FILE: &str = "accel.json";

/// QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization (`-accel kvm -cpu host`).
    Kvm,
    /// Software emulation (`-accel tcg -cpu max`).
    Tcg,
}

impl Accel {
    /// `"kvm"` or `"tcg"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// Parses `kvm` / `tcg` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `$APEX_ACCEL` (`kvm` or `tcg`); `None` when unset or invalid.
pub fn from_env() -> Option<Accel> {
    env_override().ok().flatten()
}

/// Like [`from_env`] but an unrecognized value is an error.
pub fn env_override() -> Result<Option<Accel>> {
    match std::env::var("APEX_ACCEL") {
        Ok(v) if !v.trim().is_empty() => match Accel::parse(&v) {
            Some(a) => Ok(Some(a)),
            None => bail!("APEX_ACCEL={v:?}: expected kvm or tcg"),
        },
        _ => Ok(None),
    }
}

/// Whether `/dev/kvm` can be opened read-write.
pub fn kvm_device_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Boots `base` under KVM and returns [`Accel::Kvm`] only if the guest accepts a vsock
/// connection on [`PROBE_PORT`] within `timeout`; otherwise [`Accel::Tcg`]. `base`
/// must therefore boot an initramfs whose init listens on that port; its state dir
/// holds the probe's logs afterwards. The probe VM is always killed.
pub async fn probe_kvm(provider: &QemuProvider, base: &VmConfig, timeout: Duration) -> Accel {
    if !kvm_device_usable() {
        return Accel::Tcg;
    }
    let mut cfg = base.clone();
    cfg.accel = Accel::Kvm;
    cfg.id = format!("{}-kvm-probe", base.id);
    // The probe needs no network, and a tap can be attached to only one QEMU at a time.
    cfg.nics.clear();
    let Ok(mut vm) = provider.start_vm(cfg).await else {
        return Accel::Tcg;
    };
    let ok = vm.connect(PROBE_PORT, timeout).await.is_ok();
    vm.kill().await;
    if ok {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheEntry {
    kernel_version: String,
    /// [`QemuProvider::qemu_identity`] of the QEMU that was probed.
    qemu: String,
    accel: Accel,
}

fn read_cache(path: &Path, kernel_version: &str, qemu: &str) -> Option<Accel> {
    let e: CacheEntry = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (e.kernel_version == kernel_version && e.qemu == qemu).then_some(e.accel)
}

fn write_cache(path: &Path, entry: &CacheEntry) -> Result<()> {
    let dir = path.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{CACHE_FILE}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(entry)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Picks the accelerator: `$APEX_ACCEL`, else the cached probe result in
/// `<cache_dir>/accel.json` for this kernel and QEMU binary, else [`probe_kvm`]
/// (whose result is cached). Without a usable `/dev/kvm` it is TCG, uncached.
pub async fn select(
    provider: &QemuProvider,
    kernel: &KernelAssets,
    base: &VmConfig,
    cache_dir: &Path,
    timeout: Duration,
) -> Result<Accel> {
    if let Some(a) = env_override()? {
        return Ok(a);
    }
    if !kvm_device_usable() {
        return Ok(Accel::Tcg);
    }
    let qemu = provider.qemu_identity()?;
    let path = cache_dir.join(CACHE_FILE);
    if let Some(a) = read_cache(&path, &kernel.version, &qemu) {
        return Ok(a);
    }
    let accel = probe_kvm(provider, base, timeout).await;
    let entry = CacheEntry {
        kernel_version: kernel.version.clone(),
        qemu,
        accel,
    };
    write_cache(&path, &entry).with_context(|| format!("writing {}", path.display()))?;
    Ok(accel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(Accel::parse("KVM"), Some(Accel::Kvm));
        assert_eq!(Accel::parse(" tcg\n"), Some(Accel::Tcg));
        assert_eq!(Accel::parse("hvf"), None);
        assert_eq!(Accel::Tcg.to_string(), "tcg");
    }

    #[test]
    fn cache_roundtrip_and_keying() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(CACHE_FILE);
        assert_eq!(read_cache(&path, "k", "q"), None);
        let e = CacheEntry {
            kernel_version: "k".into(),
            qemu: "q".into(),
            accel: Accel::Tcg,
        };
        write_cache(&path, &e).unwrap();
        assert_eq!(read_cache(&path, "k", "q"), Some(Accel::Tcg));
        assert_eq!(read_cache(&path, "k2", "q"), None);
        assert_eq!(read_cache(&path, "k", "q2"), None);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"accel\": \"tcg\""), "{text}");
    }
}
