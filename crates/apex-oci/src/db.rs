//! Image records in the embedded database (redb).
//!
//! Tables: `tags` (canonical reference -> manifest digest) and `images` (manifest
//! digest -> [`ImageRecord`] as JSON), the build cache (`build_cache`: step cache key ->
//! manifest digest, and `intermediate`: images made by build steps, hidden from lists
//! until named), plus `meta.schema_version`. Every change is one
//! redb transaction, so a crash leaves either the old or the new state. The database
//! is opened per operation (redb allows one process at a time), with a bounded wait
//! for a concurrent `apex` process to finish.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

const TAGS: TableDefinition<&str, &str> = TableDefinition::new("tags");
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const BUILD_CACHE: TableDefinition<&str, &str> = TableDefinition::new("build_cache");
const INTERMEDIATE: TableDefinition<&str, u64> = TableDefinition::new("intermediate");

/// Current schema version; bump with a migration in [`ImageDb::open`].
pub const SCHEMA_VERSION: u64 = 1;

/// One layer of a stored image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// Compressed blob digest.
    pub digest: Digest,
    /// Compressed size in bytes.
    pub size: u64,
    /// Layer media type.
    pub media_type: String,
}

/// What we know about a locally stored image (one platform's manifest).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// Digest of the image manifest.
    pub digest: Digest,
    /// Manifest media type (OCI or Docker v2).
    pub media_type: String,
    /// Digest of the image config; its short form is the image ID.
    pub config_digest: Digest,
    /// `os/arch[/variant]` from the config.
    pub platform: String,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// Total stored size: manifest + config + layers.
    pub size: u64,
    /// Creation time from the image config, if present.
    pub created: Option<String>,
    /// When it was pulled or loaded (RFC 3339).
    pub added: String,
    /// Digest of the index it was selected from, if any.
    pub index_digest: Option<Digest>,
    /// Repository digests (`repo@sha256:...`) this image is known under remotely.
    #[serde(default)]
    pub repo_digests: Vec<String>,
}

impl ImageRecord {
    /// All blobs this image needs: manifest, config, layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.digest, &self.config_digest]
            .into_iter()
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}

/// Handle on the image database file.
pub struct ImageDb {
    db: Database,
}

impl ImageDb {
    /// Opens (creating and migrating if needed), waiting up to `wait` for another process.
    pub fn open(path: &Path, wait: Duration) -> Result<Self> {
        let start = Instant::now();
        let db = loop {
            match Database::create(path) {
                Ok(db) => break db,
                Err(DatabaseError::DatabaseAlreadyOpen) if start.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(DatabaseError::DatabaseAlreadyOpen) => bail!(
                    "image database {} is busy (another apex process holds it)",
                    path.display()
                ),
                Err(e) => {
                    return Err(e).with_context(|| format!("opening database {}", path.display()))
                }
            }
        };
        // The common case needs no write transaction (and no fsync).
        if !Self::is_current(&db) {
            let tx = db.begin_write()?;
            {
                tx.open_table(TAGS)?;
                tx.open_table(IMAGES)?;
                tx.open_table(BUILD_CACHE)?;
                tx.open_table(INTERMEDIATE)?;
            }
            ensure_schema(&tx, SCHEMA_VERSION, "image database", path)?;
            tx.commit()?;
        }
        Ok(ImageDb { db })
    }

    /// True if every table exists and the schema is the current one.
    fn is_current(db: &Database) -> bool {
        let Ok(tx) = db.begin_read() else {
            return false;
        };
        let schema = tx
            .open_table(META)
            .ok()
            .and_then(|m| m.get("schema_version").ok().flatten().map(|v| v.value()));
        schema == Some(SCHEMA_VERSION)
            && tx.open_table(TAGS).is_ok()
            && tx.open_table(IMAGES).is_ok()
            && tx.open_table(BUILD_CACHE).is_ok()
            && tx.open_table(INTERMEDIATE).is_ok()
    }

    /// Stores `record` and points each of `names` at it, atomically.
    pub fn put(&self, record: &ImageRecord, names: &[String]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut images = tx.open_table(IMAGES)?;
            let key = record.digest.to_string();
            let merged = match images.get(key.as_str())? {
                Some(old) => {
                    let mut old: ImageRecord = serde_json::from_slice(old.value())?;
                    for rd in &record.repo_digests {
                        if !old.repo_digests.contains(rd) {
                            old.repo_digests.push(rd.clone());
                        }
                    }
                    old
                }
                None => record.clone(),
            };
            images.insert(key.as_str(), serde_json::to_vec(&merged)?.as_slice())?;
            let mut tags = tx.open_table(TAGS)?;
            for n in names {
                tags.insert(n.as_str(), key.as_str())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Points `name` at an existing image.
    pub fn tag(&self, name: &str, digest: &Digest) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(TAGS)?
            .insert(name, digest.to_string().as_str())?;
        tx.commit()?;
        Ok(())
    }

    /// Removes a name; returns the digest it pointed at.
    pub fn untag(&self, name: &str) -> Result<Option<Digest>> {
        let tx = self.db.begin_write()?;
        let old = tx
            .open_table(TAGS)?
            .remove(name)?
            .map(|v| v.value().parse())
            .transpose()?;
        tx.commit()?;
        Ok(old)
    }

    /// Removes an image record and every name pointing at it.
    pub fn remove_image(&self, digest: &Digest) -> Result<()> {
        let key = digest.to_string();
        let tx = self.db.begin_write()?;
        {
            let mut tags = tx.open_table(TAGS)?;
            let names: Vec<String> = tags
                .iter()?
                .filter_map(|e| e.ok())
                .filter(|(_, v)| v.value() == key)
                .map(|(k, _)| k.value().to_string())
                .collect();
            for n in names {
                tags.remove(n.as_str())?;
            }
            tx.open_table(IMAGES)?.remove(key.as_str())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The digest a name points at.
    pub fn resolve(&self, name: &str) -> Result<Option<Digest>> {
        let tx = self.db.begin_read()?;
        let tags = tx.open_table(TAGS)?;
        Ok(tags.get(name)?.map(|v| v.value().parse()).transpose()?)
    }

    /// One image record.
    pub fn get(&self, digest: &Digest) -> Result<Option<ImageRecord>> {
        let tx = self.db.begin_read()?;
        let images = tx.open_table(IMAGES)?;
        Ok(images
            .get(digest.to_string().as_str())?
            .map(|v| serde_json::from_slice(v.value()))
            .transpose()?)
    }

    /// All images with the names pointing at each (possibly none: dangling).
    pub fn list(&self) -> Result<Vec<(ImageRecord, Vec<String>)>> {
        let tx = self.db.begin_read()?;
        let images = tx.open_table(IMAGES)?;
        let tags = tx.open_table(TAGS)?;
        let mut names: std::collections::HashMap<String, Vec<String>> = Default::default();
        for e in tags.iter()? {
            let (k, v) = e?;
            names
                .entry(v.value().to_string())
                .or_default()
                .push(k.value().to_string());
        }
        let mut out = Vec::new();
        for e in images.iter()? {
            let (k, v) = e?;
            let rec: ImageRecord = serde_json::from_slice(v.value())?;
            let mut n = names.remove(k.value()).unwrap_or_default();
            n.sort();
            out.push((rec, n));
        }
        Ok(out)
    }
}

impl ImageDb {
    /// The image a build step with cache key `key` made, if recorded.
    pub fn cache_get(&self, key: &str) -> Result<Option<Digest>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BUILD_CACHE)?;
        Ok(t.get(key)?.map(|v| v.value().parse()).transpose()?)
    }

    /// Records that the step with cache key `key` made `digest`; `intermediate` marks an
    /// image only a build step needs (hidden from lists while it has no name), and
    /// `false` makes a build's result visible.
    pub fn cache_put(&self, key: &str, digest: &Digest, intermediate: bool) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let d = digest.to_string();
            tx.open_table(BUILD_CACHE)?.insert(key, d.as_str())?;
            let mut inter = tx.open_table(INTERMEDIATE)?;
            if intermediate {
                inter.insert(d.as_str(), 0)?;
            } else {
                inter.remove(d.as_str())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Takes `digest` out of the intermediate images (a build returned it).
    pub fn unmark_intermediate(&self, digest: &Digest) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(INTERMEDIATE)?
            .remove(digest.to_string().as_str())?;
        tx.commit()?;
        Ok(())
    }

    /// Images made by build steps that no build returned as its result.
    pub fn intermediates(&self) -> Result<std::collections::HashSet<Digest>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(INTERMEDIATE)?;
        let mut out = std::collections::HashSet::new();
        for e in t.iter()? {
            out.insert(e?.0.value().parse()?);
        }
        Ok(out)
    }

    /// Forgets the whole build cache; returns how many steps it held.
    pub fn cache_clear(&self) -> Result<usize> {
        let tx = self.db.begin_write()?;
        let n = {
            let mut t = tx.open_table(BUILD_CACHE)?;
            let n = t.iter()?.count();
            t.retain(|_, _| false)?;
            tx.open_table(INTERMEDIATE)?.retain(|_, _| false)?;
            n
        };
        tx.commit()?;
        Ok(n)
    }
}

/// Records `current` as the schema version of a new database (in its `meta` table), or
/// checks an existing one: a newer schema is refused (upgrade apex), an older one has no
/// migration yet. Shared by every redb database Apex keeps.
pub fn ensure_schema(
    tx: &redb::WriteTransaction,
    current: u64,
    what: &str,
    path: &Path,
) -> Result<()> {
    let mut meta = tx.open_table(META)?;
    let v = meta.get("schema_version")?.map(|g| g.value());
    match v {
        None => {
            meta.insert("schema_version", current)?;
        }
        Some(v) if v == current => {}
        Some(v) if v > current => bail!(
            "{what} {} has schema {v}, newer than this apex understands ({current}); upgrade apex",
            path.display()
        ),
        Some(v) => bail!("no migration for {what} from schema {v} to {current}"),
    }
    Ok(())
}

/// Default database path under an Apex home.
pub fn db_path(home: &Path) -> PathBuf {
    home.join("db").join("images.redb")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tag: &[u8]) -> ImageRecord {
        ImageRecord {
            digest: Digest::of(tag),
            media_type: crate::manifest::OCI_MANIFEST.into(),
            config_digest: Digest::of(b"cfg"),
            platform: "linux/amd64".into(),
            layers: vec![],
            size: 1,
            created: None,
            added: "now".into(),
            index_digest: None,
            repo_digests: vec![],
        }
    }

    #[test]
    fn put_resolve_untag_remove() {
        let t = tempfile::tempdir().unwrap();
        let db = ImageDb::open(&t.path().join("x.redb"), Duration::from_secs(1)).unwrap();
        let r = rec(b"a");
        db.put(&r, &["docker.io/library/a:latest".into()]).unwrap();
        db.tag("docker.io/library/a:v2", &r.digest).unwrap();
        assert_eq!(
            db.resolve("docker.io/library/a:v2").unwrap(),
            Some(r.digest.clone())
        );
        let list = db.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].1.len(), 2);
        assert_eq!(
            db.untag("docker.io/library/a:v2").unwrap(),
            Some(r.digest.clone())
        );
        db.remove_image(&r.digest).unwrap();
        assert!(db.list().unwrap().is_empty());
        assert_eq!(db.resolve("docker.io/library/a:latest").unwrap(), None);
    }

    #[test]
    fn reopen_keeps_data_and_schema() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.redb");
        {
            let db = ImageDb::open(&p, Duration::from_secs(1)).unwrap();
            db.put(&rec(b"a"), &["n".into()]).unwrap();
        }
        let db = ImageDb::open(&p, Duration::from_secs(1)).unwrap();
        assert_eq!(db.list().unwrap().len(), 1);
    }
}
