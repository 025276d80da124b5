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

pub use accel::Accel;
pub use assets::KernelAssets;
pub use qemu::{
    wait_for_agent, BoxFuture, Disk, Nic, NicBackend, QemuProvider, QemuVm, Share, ShareKind, Vm,
    VmConfig, VmError, VmProvider,
};
