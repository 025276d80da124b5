//! The per-container helper (`apex-shim`) and the protocol apexd and the CLI use to talk
//! to it.
//!
//! apexd spawns one shim per started container in its own session, so the shim (and the
//! VM it owns through PDEATHSIG) outlives an apexd restart. The shim serves
//! `<bundle>/shim.sock`; its state that must survive the shim itself (the exit status and
//! the container log) is written to files in the bundle directory.

pub mod bundle;
pub mod logfile;
pub mod proto;
pub mod stream;
