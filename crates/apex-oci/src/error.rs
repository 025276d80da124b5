//! Errors a user can act on. Each renders as one clear line.

use thiserror::Error;

/// Classified image errors; anything else travels as `anyhow::Error` with context.
#[derive(Debug, Error)]
pub enum ImageError {
    /// Malformed or unsupported digest string.
    #[error("invalid digest {0}")]
    InvalidDigest(String),
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// What the user typed.
        reference: String,
        /// Why it is invalid.
        reason: String,
    },
    /// No such image in the local store.
    #[error("no such image: {0} (pull it first with `apex image pull {0}`)")]
    NotFoundLocally(String),
    /// The registry says the repository or tag does not exist.
    #[error("image {0} not found in its registry (check the name and tag)")]
    NotFoundRemote(String),
    /// The registry could not be reached at all.
    #[error("cannot reach registry {registry}: {reason}")]
    Unreachable {
        /// Registry host.
        registry: String,
        /// Underlying cause.
        reason: String,
    },
    /// Credentials missing or wrong.
    #[error("registry {0} denied access: authentication required or credentials wrong (try `apex registry login {0}`)")]
    Unauthorized(String),
    /// Content did not hash to what the manifest promised.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob.
        what: String,
        /// Digest from the manifest.
        expected: String,
        /// Digest of the bytes received.
        actual: String,
    },
    /// A manifest, config or layer media type we do not handle.
    #[error("unsupported media type {0}")]
    UnsupportedMediaType(String),
    /// An index lacks the requested platform.
    #[error("no image for platform {wanted} in {reference} (available: {available})")]
    NoMatchingPlatform {
        /// Image reference.
        reference: String,
        /// Platform asked for.
        wanted: String,
        /// Platforms the index offers.
        available: String,
    },
    /// A manifest that is not valid JSON or misses required fields.
    #[error("malformed manifest for {reference}: {reason}")]
    MalformedManifest {
        /// Image reference.
        reference: String,
        /// Parse error.
        reason: String,
    },
    /// A layer tries to write outside the root filesystem.
    #[error("refusing hostile layer entry {path:?}: {reason}")]
    HostileLayer {
        /// The entry path as found in the tar.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Image still used by a tag/container and `--force` not given.
    #[error("{0}")]
    Conflict(String),
}
