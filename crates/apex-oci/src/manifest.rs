//! Manifest and index parsing across OCI and Docker v2 media types.

use oci_spec::image::{ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::ImageError;
use crate::platform::Platform;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Media types we ask registries for, most preferred first.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression a layer media type implies; errors on non-layer types.
    pub fn from_media_type(mt: &str) -> Result<Self, ImageError> {
        match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
            other => Err(ImageError::UnsupportedMediaType(format!(
                "{other} (layer; supported: tar, tar+gzip, tar+zstd)"
            ))),
        }
    }
}

/// A parsed top-level manifest: a single image or an index of them.
#[derive(Debug)]
pub enum Parsed {
    /// Multi-platform index or Docker manifest list.
    Index(Box<ImageIndex>),
    /// A single image manifest (OCI or Docker v2).
    Image(Box<ImageManifest>),
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
}

/// The effective media type of a manifest document: its `mediaType` field, or
/// what its shape says when the field is absent (allowed for OCI).
pub fn media_type_of(raw: &[u8], reference: &str) -> Result<String, ImageError> {
    let malformed = |reason: String| ImageError::MalformedManifest {
        reference: reference.to_string(),
        reason,
    };
    let p: Probe = serde_json::from_slice(raw).map_err(|e| malformed(e.to_string()))?;
    if p.schema_version == Some(1) {
        return Err(ImageError::UnsupportedMediaType(
            "application/vnd.docker.distribution.manifest.v1+json (Docker schema 1 is deprecated; re-push the image with a current client)".into(),
        ));
    }
    Ok(match (p.media_type, p.manifests, p.layers) {
        (Some(mt), _, _) => mt,
        (None, Some(_), None) => OCI_INDEX.into(),
        (None, None, Some(_)) => OCI_MANIFEST.into(),
        _ => return Err(malformed("neither an image manifest nor an index".into())),
    })
}

/// Parses a manifest or index, checking its media type and (for images) that every
/// layer's media type is one we can unpack.
pub fn parse(raw: &[u8], reference: &str) -> Result<(Parsed, String), ImageError> {
    let mt = media_type_of(raw, reference)?;
    let malformed = |e: &dyn std::fmt::Display| ImageError::MalformedManifest {
        reference: reference.to_string(),
        reason: e.to_string(),
    };
    let parsed = match mt.as_str() {
        OCI_INDEX | DOCKER_LIST => Parsed::Index(Box::new(
            serde_json::from_slice(raw).map_err(|e| malformed(&e))?,
        )),
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: ImageManifest = serde_json::from_slice(raw).map_err(|e| malformed(&e))?;
            let cfg = m.config().media_type().to_string();
            if cfg != OCI_CONFIG && cfg != DOCKER_CONFIG {
                return Err(ImageError::UnsupportedMediaType(format!(
                    "{cfg} (config; this is not a container image)"
                )));
            }
            m.config()
                .digest()
                .to_string()
                .parse::<Digest>()
                .map_err(|e| malformed(&e))?;
            for l in m.layers() {
                Compression::from_media_type(l.media_type().as_ref())?;
                l.digest()
                    .to_string()
                    .parse::<Digest>()
                    .map_err(|e| malformed(&e))?;
            }
            Parsed::Image(Box::new(m))
        }
        other => return Err(ImageError::UnsupportedMediaType(other.to_string())),
    };
    Ok((parsed, mt))
}

/// Picks the manifest for `want` from an index; the error lists what is available.
pub fn select_platform(
    index: &ImageIndex,
    want: &Platform,
    reference: &str,
) -> Result<(Digest, String), ImageError> {
    let mut available = Vec::new();
    for m in index.manifests() {
        let Some(p) = m.platform() else { continue };
        let have = Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        };
        if want.matches(&have) {
            let d = m.digest().to_string().parse().map_err(|e: ImageError| {
                ImageError::MalformedManifest {
                    reference: reference.to_string(),
                    reason: e.to_string(),
                }
            })?;
            return Ok((d, m.media_type().to_string()));
        }
        if have.os != "unknown" {
            available.push(have.to_string());
        }
    }
    Err(ImageError::NoMatchingPlatform {
        reference: reference.to_string(),
        wanted: want.to_string(),
        available: if available.is_empty() {
            "none".into()
        } else {
            available.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(layer_mt: &str, cfg_mt: &str) -> Vec<u8> {
        let d = Digest::of(b"x");
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": cfg_mt, "digest": d.to_string(), "size": 1},
            "layers": [{"mediaType": layer_mt, "digest": d.to_string(), "size": 1}],
        }))
        .unwrap()
    }

    #[test]
    fn accepts_known_layers() {
        for mt in [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ] {
            let (p, _) = parse(&manifest(mt, OCI_CONFIG), "x").unwrap();
            assert!(matches!(p, Parsed::Image(_)));
        }
    }

    #[test]
    fn rejects_unknown_layer_and_config() {
        let e = parse(&manifest("application/x-foo", OCI_CONFIG), "x").unwrap_err();
        assert!(e.to_string().contains("application/x-foo"));
        let e = parse(
            &manifest(
                "application/vnd.oci.image.layer.v1.tar",
                "application/vnd.cncf.helm.config.v1+json",
            ),
            "x",
        )
        .unwrap_err();
        assert!(matches!(e, ImageError::UnsupportedMediaType(_)));
    }

    #[test]
    fn rejects_schema1_and_garbage() {
        assert!(matches!(
            parse(br#"{"schemaVersion":1,"name":"x"}"#, "x"),
            Err(ImageError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            parse(b"not json", "x"),
            Err(ImageError::MalformedManifest { .. })
        ));
        assert!(matches!(
            parse(br#"{"schemaVersion":2}"#, "x"),
            Err(ImageError::MalformedManifest { .. })
        ));
    }

    #[test]
    fn selects_platform_or_lists_available() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let raw = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": a.to_string(), "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": OCI_MANIFEST, "digest": b.to_string(), "size": 1,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            ]
        }))
        .unwrap();
        let (Parsed::Index(idx), _) = parse(&raw, "x").unwrap() else {
            panic!("not an index")
        };
        let (d, _) = select_platform(&idx, &"linux/arm64".parse().unwrap(), "x").unwrap();
        assert_eq!(d, b);
        let e = select_platform(&idx, &"linux/riscv64".parse().unwrap(), "x").unwrap_err();
        assert!(e.to_string().contains("linux/amd64, linux/arm64/v8"), "{e}");
    }
}
