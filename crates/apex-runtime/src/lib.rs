//! Container lifecycle on top of a VM and the guest agent.
//!
//! - [`spec`]: the process to run, merged from the image config and `run` flags;
//! - [`agent`]: the multiplexing client of the guest agent;
//! - [`fs`]: the container's filesystem: writable layer disk, shares, tmpfs;
//! - [`kernel`]: which guest kernel a home boots;
//! - [`sandbox`]: a VM booted on an image rootfs, and processes in it.

pub mod agent;
pub mod cgroup;
pub mod fs;
pub mod kernel;
pub mod sandbox;
pub mod spec;
