//! Docker-style image references: `busybox`, `library/busybox:1.36`,
//! `127.0.0.1:5000/team/app@sha256:...`. Parsing is oci-spec's; this adds the
//! familiar (short) names users see and the registry key credentials are stored under.

use std::fmt;
use std::str::FromStr;

use oci_client::Reference;

use crate::digest::Digest;
use crate::error::ImageError;

/// Default registry for names without a host part.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed, normalized image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    /// Parses a user-supplied reference.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let inner = Reference::try_from(s.trim()).map_err(|e| ImageError::InvalidReference {
            reference: s.to_string(),
            reason: e.to_string(),
        })?;
        if let Some(d) = inner.digest() {
            d.parse::<Digest>()?;
        }
        Ok(ImageRef { inner })
    }

    /// The oci-client reference (for registry calls).
    pub fn oci(&self) -> &Reference {
        &self.inner
    }

    /// Registry as written (`docker.io` for the default).
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// Repository path within the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// Tag, if any (defaults to `latest` when neither tag nor digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// Pinned digest, if any.
    pub fn digest(&self) -> Option<Digest> {
        self.inner.digest().and_then(|d| d.parse().ok())
    }

    /// Same repository, pinned to `digest` (tag dropped).
    pub fn with_digest(&self, digest: &Digest) -> Self {
        ImageRef {
            inner: Reference::with_digest(
                self.registry().to_string(),
                self.repository().to_string(),
                digest.to_string(),
            ),
        }
    }

    /// Same repository with another tag.
    pub fn with_tag(&self, tag: &str) -> Self {
        ImageRef {
            inner: Reference::with_tag(
                self.registry().to_string(),
                self.repository().to_string(),
                tag.to_string(),
            ),
        }
    }

    /// The repository as users write it: `busybox`, `team/app`, `host:5000/app`.
    pub fn familiar_repository(&self) -> String {
        let repo = self.repository();
        if self.registry() == DEFAULT_REGISTRY {
            repo.strip_prefix("library/").unwrap_or(repo).to_string()
        } else {
            format!("{}/{}", self.registry(), repo)
        }
    }

    /// The full canonical form, used as the key in the image database.
    pub fn canonical(&self) -> String {
        self.inner.whole()
    }
}

impl FromStr for ImageRef {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl fmt::Display for ImageRef {
    /// The familiar form: `busybox:latest`, `host:5000/app@sha256:...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.familiar_repository())?;
        if let Some(t) = self.tag() {
            write!(f, ":{t}")?;
        }
        if let Some(d) = self.inner.digest() {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// True for hosts that may be spoken to over plain HTTP without configuration
/// (as docker does): loopback names and addresses.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(registry, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_names_get_library_and_latest() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.to_string(), "busybox:latest");
        assert_eq!(r.canonical(), "docker.io/library/busybox:latest");
    }

    #[test]
    fn host_port_and_digest() {
        let d = Digest::of(b"x");
        let r = ImageRef::parse(&format!("127.0.0.1:5000/team/app@{d}")).unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/app");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(d.clone()));
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/team/app@{d}"));
        assert!(is_loopback_host(r.registry()));
    }

    #[test]
    fn user_namespace_on_hub() {
        let r = ImageRef::parse("someone/tool:1.0").unwrap();
        assert_eq!(r.repository(), "someone/tool");
        assert_eq!(r.to_string(), "someone/tool:1.0");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Busybox",
            "a/B",
            "a:b:c",
            "busybox@sha256:1234",
            "busybox@md5:abcd",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_host("localhost:5000"));
        assert!(is_loopback_host("127.0.0.2"));
        assert!(is_loopback_host("[::1]:5000"));
        assert!(!is_loopback_host("docker.io"));
        assert!(!is_loopback_host("10.0.0.1:5000"));
    }
}
