//! Container lifecycle on top of a VM and the guest agent.
//!
//! - [`spec`]: the process to run, merged from the image config and `run` flags.

pub mod spec;
