//! Apex VM provider layer: every container runs in its own QEMU `microvm`.
//!
//! - [`assets`]: locate the guest kernel and its modules.
//! - [`initramfs`]: build (and cache) the initramfs holding the guest init and the
//!   kernel modules it must load.
//! - [`qemu`]: start a VM (QEMU + a `vhost-device-vsock` backend), talk to it over
//!   vsock, watch its boot, kill it.
//! - [`accel`]: pick KVM or TCG (env override, cached probe result, or a probe boot).

pub mod accel;
pub mod assets;
pub mod initramfs;
pub mod qemu;
mod spawn;

/// The least guest memory a container VM is given, in MiB: Apex's kernel boots a busybox
/// container in 36 MiB and not in 32 (measured; see the README), so 48 leaves a margin.
/// Smaller `--memory` values are refused before any VM starts. Debian's fallback kernel
/// needs more ([`KernelFlavor::min_memory_mib`]), checked when the VM starts.
pub const MIN_MEMORY_MIB: u64 = 48;

pub use accel::Accel;
pub use assets::{KernelAssets, KernelChoice, KernelFlavor};
pub use qemu::{
    wait_for_agent, BoxFuture, Disk, Nic, NicBackend, QemuProvider, QemuVm, Share, ShareKind, Vm,
    VmConfig, VmError, VmProvider,
};
