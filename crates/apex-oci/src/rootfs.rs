//! The read-only root filesystem image a container boots from: all layers applied
//! into a scratch directory, then packed with `mkfs.erofs` into
//! `$APEX_HOME/rootfs/<layer chain key>.erofs`. Built once per image, under a lock,
//! published by rename so a crash never leaves a half-written image behind.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::fs::{flock, FlockOperation};

use crate::content::ContentStore;
use crate::db::ImageRecord;
use crate::unpack::{apply_layer, open_layer, remove_tree, LayerStats};

/// What building a rootfs image took.
#[derive(Debug, Default, Clone)]
pub struct BuildReport {
    /// Path of the image file.
    pub path: PathBuf,
    /// True if it already existed.
    pub cached: bool,
    /// Time to apply the layers.
    pub unpack: Duration,
    /// Time for mkfs.erofs.
    pub pack: Duration,
    /// Summed layer statistics.
    pub stats: LayerStats,
}

/// The name of `rec`'s rootfs image: a hash of its layer chain, so images that differ
/// only in their config (build steps such as `ENV`) share one.
pub fn key(rec: &ImageRecord) -> String {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    for l in &rec.layers {
        h.update(l.digest.to_string().as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// Path of the rootfs image for `rec` under `dir` (whether or not it exists).
pub fn image_path(dir: &Path, rec: &ImageRecord) -> PathBuf {
    dir.join(format!("{}.erofs", key(rec)))
}

/// Builds (or finds) the rootfs image for `rec`.
pub fn ensure(dir: &Path, store: &ContentStore, rec: &ImageRecord) -> Result<BuildReport> {
    fs::create_dir_all(dir)?;
    let out = image_path(dir, rec);
    if out.is_file() {
        return Ok(BuildReport {
            path: out,
            cached: true,
            ..Default::default()
        });
    }
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{}.lock", key(rec))))?;
    flock(&lock, FlockOperation::LockExclusive)?;
    if out.is_file() {
        return Ok(BuildReport {
            path: out,
            cached: true,
            ..Default::default()
        });
    }
    let scratch = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(dir)
        .context("creating rootfs scratch directory")?;
    let root = scratch.path().join("root");
    fs::create_dir(&root)?;
    let t0 = Instant::now();
    let mut total = LayerStats::default();
    for (i, l) in rec.layers.iter().enumerate() {
        let st = apply_layer(&root, open_layer(store, l)?)
            .with_context(|| format!("unpacking layer {} ({})", i + 1, l.digest))?;
        total.entries += st.entries;
        total.whiteouts += st.whiteouts;
        total.bytes += st.bytes;
    }
    let unpack = t0.elapsed();
    let t1 = Instant::now();
    let tmp_img = scratch.path().join("image.erofs");
    let res = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg("-zlz4")
        .arg(&tmp_img)
        .arg(&root)
        .output();
    let res = match res {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mkfs.erofs not found: install erofs-utils (scripts/install-deps.sh)")
        }
        r => r.context("running mkfs.erofs")?,
    };
    if !res.status.success() {
        bail!(
            "mkfs.erofs failed: {}",
            String::from_utf8_lossy(&res.stderr).trim()
        );
    }
    File::open(&tmp_img)?.sync_all()?;
    fs::rename(&tmp_img, &out)?;
    File::open(dir)?.sync_all()?;
    let pack = t1.elapsed();
    // The scratch tree can hold root-owned read-only dirs: remove it without following links.
    remove_tree(&root)?;
    drop(scratch);
    let _ = fs::remove_file(dir.join(format!("{}.lock", key(rec))));
    Ok(BuildReport {
        path: out,
        cached: false,
        unpack,
        pack,
        stats: total,
    })
}

/// Deletes rootfs images (and leftover scratch dirs) not in `keep` ([`key`]s).
pub fn gc(dir: &Path, keep: &std::collections::HashSet<String>) -> Result<u64> {
    let mut freed = 0;
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(0);
    };
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(hex) = name.strip_suffix(".erofs") {
            if !keep.contains(hex) {
                freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path())?;
            }
        } else if name.starts_with(".build-") {
            // A scratch dir is only stale if nobody holds its image's lock; builds are short,
            // so anything older than an hour is abandoned.
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3600))
                .unwrap_or(false);
            if old {
                remove_tree(&e.path())?;
            }
        }
    }
    Ok(freed)
}
