//! OCI images for Apex.
//!
//! Everything between a registry and a bootable root filesystem image:
//! - [`reference`]: docker-style image references and their familiar names;
//! - [`digest`]: validated content digests;
//! - [`content`]: the content-addressed blob store with atomic, resumable ingest;
//! - [`db`]: image records in the embedded database;
//! - [`registry`]: pulling and pushing over the OCI distribution API, with auth;
//! - [`unpack`]: applying layers to a directory safely (whiteouts, hostile paths);
//! - [`rootfs`]: the per-image read-only filesystem image containers boot from;
//! - [`archive`]: OCI archives for `save`/`load`;
//! - [`store`]: the [`store::ImageStore`] facade the CLI and daemon use.

pub mod archive;
pub mod auth;
pub mod commit;
pub mod content;
pub mod db;
pub mod digest;
pub mod error;
pub mod manifest;
pub mod platform;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod store;
pub mod unpack;

pub use error::ImageError;
pub use store::ImageStore;
