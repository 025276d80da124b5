//! `apexd`: the Apex API server.
//!
//! - [`paths`]: where the daemon keeps its socket, pid, lock, log and database;
//! - [`store`]: durable daemon state (containers) in an embedded redb database;
//! - [`client`]: the client side, HTTP/1.1 over the Unix socket (used by `apex`);
//! - [`api`]: the v1 HTTP/JSON API ([`api::ROUTES`] is the single list of routes);
//! - [`docker`]: the Docker Engine API on `run/docker.sock`, a front door over the same
//!   services;
//! - [`networks`]: networks, container addresses, DNS and published ports;
//! - [`volumes`]: named and anonymous volumes; [`mounts`]: mount specs of a create;
//! - [`info`]: system facts the API reports (disk usage, accelerator);
//! - [`server`]: single-instance lock, pid file, Unix socket, graceful shutdown;
//! - [`logging`]: the daemon log file.

// Docker API documents are large `json!` literals.
#![recursion_limit = "256"]

pub mod api;
pub mod builds;

pub mod client;
pub mod containers;
pub mod docker;
pub mod error;
pub mod events;
pub mod images;
pub mod info;
pub mod logging;
pub mod model;
pub mod mounts;
pub mod networks;
pub mod paths;
pub mod server;
pub mod services;
pub mod store;
pub mod volumes;

/// The API version served under `/v1`.
pub const API_VERSION: &str = "1";
