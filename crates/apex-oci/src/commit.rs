//! Images made locally, one step at a time (`apex build`): layers written from tar
//! streams, images committed on top of a base, and the build cache that maps a step's
//! cache key to the image it made.

use std::collections::HashSet;
use std::io::{Read, Write};

use anyhow::{Context, Result};
use flate2::{Compression, GzBuilder};
use oci_spec::image::ImageManifest;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::db::ImageRecord;
use crate::digest::Digest;
use crate::store::{make_record, ImageStore};

/// Media type of the layers and manifests Apex writes.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// A layer stored in the content store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLayer {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// Compressed size.
    pub size: u64,
}

/// The OCI media type for a layer of `media_type` in a manifest Apex writes (Docker's
/// layer types are the same bytes under another name).
fn oci_layer_type(media_type: &str) -> &str {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => LAYER_MEDIA_TYPE,
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        }
        other => other,
    }
}

impl ImageStore {
    /// Compresses the uncompressed layer tar read from `tar` into the content store.
    /// The gzip stream carries no time or name, so the same tar gives the same digest.
    /// Hold [`ImageStore::lease`] until the image using it is committed.
    pub fn write_layer(&self, mut tar: impl Read) -> Result<NewLayer> {
        let mut blob = self.content().writer()?;
        let mut diff = Sha256::new();
        {
            let mut gz = GzBuilder::new().write(&mut blob, Compression::default());
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match tar.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("reading the layer"),
                };
                diff.update(&buf[..n]);
                gz.write_all(&buf[..n])?;
            }
            gz.finish()?;
        }
        let (digest, size) = blob.finish(self.content())?;
        Ok(NewLayer {
            digest,
            diff_id: Digest::from_hasher(diff),
            size,
        })
    }

    /// Stores a new image: `base`'s layers (none for `scratch`) plus `layer`, with
    /// `config` (a full image config; the new layer's diff ID is appended to its
    /// `rootfs.diff_ids` here). Returns the new record; it has no name yet.
    pub fn commit(
        &self,
        base: Option<&ImageRecord>,
        mut config: Value,
        layer: Option<&NewLayer>,
    ) -> Result<ImageRecord> {
        let mut layers: Vec<Value> = base
            .map(|b| {
                b.layers
                    .iter()
                    .map(|l| {
                        json!({
                            "mediaType": oci_layer_type(&l.media_type),
                            "digest": l.digest.to_string(),
                            "size": l.size,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let rootfs = config
            .as_object_mut()
            .context("image config is not an object")?
            .entry("rootfs")
            .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
        if !rootfs["diff_ids"].is_array() {
            rootfs["diff_ids"] = json!([]);
        }
        if let Some(l) = layer {
            layers.push(json!({
                "mediaType": LAYER_MEDIA_TYPE,
                "digest": l.digest.to_string(),
                "size": l.size,
            }));
            if let Some(ids) = rootfs["diff_ids"].as_array_mut() {
                ids.push(json!(l.diff_id.to_string()));
            }
        }
        let config_raw = serde_json::to_vec(&config)?;
        let config_digest = self.content().put(&config_raw)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": config_digest.to_string(),
                "size": config_raw.len(),
            },
            "layers": layers,
        });
        let raw = serde_json::to_vec(&manifest)?;
        let digest = self.content().put(&raw)?;
        let parsed: ImageManifest = serde_json::from_slice(&raw).context("new manifest")?;
        let rec = make_record(
            self.content(),
            &parsed,
            &raw,
            digest,
            MANIFEST_MEDIA_TYPE.into(),
            None,
            vec![],
        )?;
        self.db()?.put(&rec, &[])?;
        Ok(rec)
    }

    /// The image a build step with cache key `key` made, if it is still stored.
    pub fn cache_lookup(&self, key: &str) -> Result<Option<ImageRecord>> {
        let db = self.db()?;
        match db.cache_get(key)? {
            Some(d) => db.get(&d),
            None => Ok(None),
        }
    }

    /// Records the image a build step made under its cache key (see
    /// [`crate::db::ImageDb::cache_put`] for `intermediate`).
    pub fn cache_record(&self, key: &str, rec: &ImageRecord, intermediate: bool) -> Result<()> {
        self.db()?.cache_put(key, &rec.digest, intermediate)
    }

    /// Makes `rec` a build's result: listed like any image even without a name.
    pub fn build_result(&self, rec: &ImageRecord) -> Result<()> {
        self.db()?.unmark_intermediate(&rec.digest)
    }

    /// `apex builder prune`: forgets the build cache and removes the images only it
    /// kept (unnamed step images whose image ID is not in `in_use`), then unreferenced content.
    /// Returns (cache entries, images removed, bytes reclaimed).
    pub fn builder_prune(&self, in_use: &HashSet<Digest>) -> Result<(usize, usize, u64)> {
        let db = self.db()?;
        let inter = db.intermediates()?;
        let mut removed = 0;
        for (rec, names) in db.list()? {
            if names.is_empty()
                && inter.contains(&rec.digest)
                && !in_use.contains(&rec.config_digest)
            {
                db.remove_image(&rec.digest)?;
                removed += 1;
            }
        }
        let entries = db.cache_clear()?;
        drop(db);
        let freed = self.gc()?;
        Ok((entries, removed, freed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn layers_are_reproducible_and_commits_chain() {
        let home = tempfile::tempdir().unwrap();
        let store = ImageStore::open(home.path()).unwrap();
        let t = tar_of("hello", b"world");
        let a = store.write_layer(&t[..]).unwrap();
        let b = store.write_layer(&t[..]).unwrap();
        assert_eq!(a, b, "the same tar gives the same layer");
        assert_eq!(a.diff_id, Digest::of(&t));
        let cfg = json!({"architecture": "amd64", "os": "linux", "config": {}});
        let base = store.commit(None, cfg.clone(), Some(&a)).unwrap();
        assert_eq!(base.layers.len(), 1);
        let mut c2: Value =
            serde_json::from_slice(&store.content().read(&base.config_digest).unwrap()).unwrap();
        assert_eq!(c2["rootfs"]["diff_ids"][0], a.diff_id.to_string());
        c2["config"]["Env"] = json!(["A=1"]);
        let child = store.commit(Some(&base), c2, None).unwrap();
        assert_eq!(child.layers, base.layers);
        // Intermediate images stay out of lists until a build returns them.
        store.cache_record("k1", &base, true).unwrap();
        store.cache_record("k2", &child, false).unwrap();
        let listed: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|s| s.digest)
            .collect();
        assert_eq!(listed, [child.digest.to_string()]);
        assert_eq!(
            store.cache_lookup("k1").unwrap().unwrap().digest,
            base.digest
        );
        let (entries, removed, _) = store.builder_prune(&HashSet::new()).unwrap();
        assert_eq!((entries, removed), (2, 1));
        assert!(store.cache_lookup("k2").unwrap().is_none());
        assert!(
            store.content().exists(&a.digest),
            "the result keeps its layer"
        );
    }

    #[test]
    fn gc_keeps_rootfs_images_under_their_old_manifest_name() {
        let home = tempfile::tempdir().unwrap();
        let store = ImageStore::open(home.path()).unwrap();
        let layer = store.write_layer(&tar_of("f", b"x")[..]).unwrap();
        let cfg = json!({"architecture": "amd64", "os": "linux", "config": {}});
        let rec = store.commit(None, cfg, Some(&layer)).unwrap();
        store.build_result(&rec).unwrap();
        let dir = home.path().join("rootfs");
        std::fs::create_dir_all(&dir).unwrap();
        let legacy = dir.join(format!("{}.erofs", rec.digest.hex()));
        let current = crate::rootfs::image_path(&dir, &rec);
        let orphan = dir.join(format!("{}.erofs", "0".repeat(64)));
        for f in [&legacy, &current, &orphan] {
            std::fs::write(f, b"erofs").unwrap();
        }
        store.gc().unwrap();
        assert!(legacy.exists() && current.exists());
        assert!(!orphan.exists());
    }
}
