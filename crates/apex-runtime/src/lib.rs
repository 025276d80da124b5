//! Container lifecycle on top of a VM and the guest agent.
//!
//! - [`spec`]: the process to run, merged from the image config and `run` flags;
//! - [`agent`]: the multiplexing client of the guest agent.

pub mod agent;
pub mod spec;
