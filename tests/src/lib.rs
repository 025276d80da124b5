//! End-to-end test harness for Apex.
//!
//! Everything here works offline on the project's Debian machines:
//! - [`registry`]: a real registry (Debian's `docker-registry`, Distribution 2.8) on loopback,
//!   without auth, with HTTP basic auth, or with bearer-token auth served in-process;
//! - [`images`]: OCI image layouts written by hand (busybox, multi-arch, layered, hostile);
//! - [`skopeo`]: an independent client to push, pull and inspect, to cross-check Apex;
//! - [`env`]: registry + busybox + pulled home, ready for VM tests;
//! - [`net`]: the same with the network test image (httpd, nslookup, a UDP/TCP echo server);
//! - [`apex`]: helpers that run the `apex` CLI binary with an isolated `APEX_HOME`;
//! - [`docker`]: the docker CLI, docker-compose, docker-py and testcontainers against a
//!   home's docker.sock, with a local registry as the docker.io mirror;
//! - [`fsbench`]: a static filesystem benchmark for the host and containers.

#![warn(missing_docs)]

pub mod apex;
pub mod docker;
pub mod env;
pub mod fsbench;
pub mod images;
pub mod net;
pub mod registry;
pub mod skopeo;

pub use images::{Compression, Hostile, HostileLayout, Layout};
pub use registry::{Registry, RegistryAuth};
