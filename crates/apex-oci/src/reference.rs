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
        let inner = parse_reference(s.trim()).map_err(|reason| ImageError::InvalidReference {
            reference: s.to_string(),
            reason: reason.to_string(),
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

    /// The same repository and tag or digest on another registry host (a mirror).
    pub fn on_registry(&self, host: &str) -> Self {
        let inner = match (self.inner.digest(), self.inner.tag()) {
            (Some(d), _) => Reference::with_digest(
                host.to_string(),
                self.repository().to_string(),
                d.to_string(),
            ),
            (None, tag) => Reference::with_tag(
                host.to_string(),
                self.repository().to_string(),
                tag.unwrap_or("latest").to_string(),
            ),
        };
        ImageRef { inner }
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

/// Parses a docker reference with the grammar oci-spec's `Reference` accepts, by hand:
/// oci-spec compiles a very large regex on first use (~40 ms of CPU per `apex`
/// invocation); this gives the same results (checked against it in the tests) for free.
fn parse_reference(s: &str) -> Result<Reference, &'static str> {
    if s.is_empty() {
        return Err("repository name must have at least one component");
    }
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    let (name, tag) = match name_tag.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (name_tag, None),
    };
    let (first, rest) = match name.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    let path_ok = |p: &str| p.split('/').all(is_path_component);
    let valid = match rest {
        None => is_path_component(first),
        Some(rest) => (is_path_component(first) || is_domain(first)) && path_ok(rest),
    };
    if !valid {
        return Err("invalid reference format");
    }
    if let Some(t) = tag {
        let w = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let ok = t.len() <= 128
            && t.chars().next().is_some_and(w)
            && t.chars().all(|c| w(c) || c == '.' || c == '-');
        if !ok {
            return Err("invalid reference format");
        }
    }
    if let Some(d) = digest {
        let (algo, hex) = d.split_once(':').ok_or("invalid checksum digest format")?;
        if algo.is_empty() || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("invalid reference format");
        }
        let want = match algo {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err("unsupported digest algorithm"),
        };
        if hex.len() != want {
            return Err("invalid checksum digest length");
        }
    }
    // Docker's domain split (as oci-spec's split_domain).
    let (mut registry, mut repo) = match rest {
        Some(r) if first.contains('.') || first.contains(':') || first == "localhost" => {
            (first.to_string(), r.to_string())
        }
        _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
    };
    if registry == "index.docker.io" {
        registry = DEFAULT_REGISTRY.to_string();
    }
    if registry == DEFAULT_REGISTRY && !repo.contains('/') {
        repo = format!("library/{repo}");
    }
    if repo.len() > 255 {
        return Err("repository name must not be more than 255 characters");
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repo, t.into(), d.into()),
        (None, Some(d)) => Reference::with_digest(registry, repo, d.into()),
        (t, None) => Reference::with_tag(registry, repo, t.unwrap_or("latest").into()),
    })
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn is_path_component(p: &str) -> bool {
    let b = p.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut sep = String::new();
    for &c in b {
        if alnum(c) {
            if !(sep.is_empty()
                || sep == "."
                || sep == "_"
                || sep == "__"
                || sep.bytes().all(|x| x == b'-'))
            {
                return false;
            }
            sep.clear();
        } else if matches!(c, b'.' | b'_' | b'-') {
            sep.push(c as char);
        } else {
            return false;
        }
    }
    true
}

/// Host components (`[a-zA-Z0-9]` runs with inner hyphens) joined by dots, optional `:port`.
fn is_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let comp = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
    };
    host.split('.').all(comp)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|x| x.is_ascii_digit()))
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
    fn hand_parser_matches_oci_spec() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cases = [
            "busybox".to_string(),
            "busybox:1.36".into(),
            "library/busybox".into(),
            "docker.io/library/busybox:latest".into(),
            "index.docker.io/busybox".into(),
            "someone/tool:1.0".into(),
            "localhost/app".into(),
            "localhost:5000/app:v1".into(),
            "127.0.0.1:5000/team/app".into(),
            "registry.example.com/a/b/c:tag".into(),
            "UPPER/case".into(),
            "Busybox".into(),
            "a/B".into(),
            "a__b/c.d-e".into(),
            "a___b".into(),
            "a..b".into(),
            "a-".into(),
            "-a".into(),
            "a:".into(),
            ":tag".into(),
            "a:-tag".into(),
            "a:tag_with.dots-and-1".into(),
            format!("a:{}", "t".repeat(129)),
            format!("a@{d}"),
            format!("a:1@{d}"),
            format!("host:5000/a@{d}"),
            "a@sha256:1234".into(),
            "a@md5:d41d8cd98f00b204e9800998ecf8427e".into(),
            format!("a@sha512:{}", "b".repeat(128)),
            "host:port/a".into(),
            "my-host.example:443/x".into(),
            "-host.example/x".into(),
            "a//b".into(),
            "a/".into(),
            "a b".into(),
            format!("{}x", "a/".repeat(130)),
        ];
        for c in &cases {
            let ours = parse_reference(c).map(|r| r.whole());
            let theirs = Reference::try_from(c.as_str()).map(|r| r.whole());
            assert_eq!(
                ours.is_ok(),
                theirs.is_ok(),
                "{c:?}: {ours:?} vs {theirs:?}"
            );
            if let (Ok(a), Ok(b)) = (ours, theirs) {
                assert_eq!(a, b, "{c:?}");
            }
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
