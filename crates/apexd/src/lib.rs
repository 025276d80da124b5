//! `apexd`: the Apex API server.
//!
//! - [`paths`]: where the daemon keeps its socket, pid, lock, log and database;
//! - [`store`]: durable daemon state (containers) in an embedded redb database;
//! - [`client`]: the client side, HTTP/1.1 over the Unix socket (used by `apex`);
//! - [`api`]: the v1 HTTP/JSON API ([`api::ROUTES`] is the single list of routes);
//! - [`networks`]: networks, container addresses, DNS and published ports;
//! - [`volumes`]: named and anonymous volumes; [`mounts`]: mount specs of a create;
//! - [`info`]: system facts the API reports (disk usage, accelerator);
//! - [`server`]: single-instance lock, pid file, Unix socket, graceful shutdown;
//! - [`logging`]: the daemon log file.

pub mod api;
pub mod archive;
pub mod client;
pub mod containers;
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
