//! Content-addressed blob store (`blobs/sha256/<hex>`), laid out like an OCI image layout.
//!
//! Writes go through [`Ingest`]: bytes land in `ingest/<hex>.partial` under an exclusive
//! `flock`, are hashed as they arrive, and only a verified blob is `fsync`ed and renamed
//! into place. A killed download therefore never leaves a visible, corrupt blob, and the
//! next pull resumes from the partial file (re-hashing what is already there).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{flock, FlockOperation};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::ImageError;

/// The blob store rooted at `$APEX_HOME/content`.
#[derive(Clone, Debug)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for d in ["blobs/sha256", "ingest"] {
            fs::create_dir_all(root.join(d))
                .with_context(|| format!("creating {}", root.join(d).display()))?;
        }
        Ok(ContentStore { root })
    }

    /// Where the blob with digest `d` lives (whether or not it exists).
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// True if the blob is present.
    pub fn exists(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// Size of a present blob.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.path(d)).ok().map(|m| m.len())
    }

    /// Reads a whole (small) blob: manifests and configs. Verifies the digest.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        let data = fs::read(self.path(d)).with_context(|| format!("reading blob {d}"))?;
        let actual = Digest::of(&data);
        if &actual != d {
            return Err(ImageError::DigestMismatch {
                what: "stored blob".into(),
                expected: d.to_string(),
                actual: actual.to_string(),
            }
            .into());
        }
        Ok(data)
    }

    /// The first `n` bytes of a blob (fewer if it is shorter).
    pub fn read_head(&self, d: &Digest, n: usize) -> Result<Vec<u8>> {
        use std::io::Read;
        let mut buf = Vec::with_capacity(n);
        self.open_blob(d)?.take(n as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Opens a blob for streaming reads.
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        File::open(self.path(d)).with_context(|| format!("opening blob {d}"))
    }

    /// Stores `data`, which must hash to `d`.
    pub fn write(&self, d: &Digest, data: &[u8]) -> Result<()> {
        if self.exists(d) {
            return Ok(());
        }
        let mut ing = self.ingest(d)?;
        ing.reset()?;
        ing.write_all(data)?;
        ing.commit()
    }

    /// Stores `data` under its own digest and returns it.
    pub fn put(&self, data: &[u8]) -> Result<Digest> {
        let d = Digest::of(data);
        self.write(&d, data)?;
        Ok(d)
    }

    /// Starts writing a blob whose digest is known only at the end (a layer compressed
    /// as it is made).
    pub fn writer(&self) -> Result<BlobWriter> {
        let file = tempfile::Builder::new()
            .prefix("new-")
            .suffix(".partial")
            .tempfile_in(self.root.join("ingest"))
            .context("creating a blob in the content store")?;
        // Held while writing: garbage collection skips locked ingest files.
        flock(file.as_file(), FlockOperation::LockExclusive)?;
        Ok(BlobWriter {
            file,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Starts (or resumes) writing the blob `expected`. Blocks while another
    /// process is writing the same blob.
    pub fn ingest(&self, expected: &Digest) -> Result<Ingest> {
        let path = self
            .root
            .join("ingest")
            .join(format!("{}.partial", expected.hex()));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        flock(&file, FlockOperation::LockExclusive)
            .with_context(|| format!("locking {}", path.display()))?;
        // Re-hash what a previous, interrupted attempt left behind.
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut written = 0u64;
        file.seek(SeekFrom::Start(0))?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            written += n as u64;
        }
        Ok(Ingest {
            file,
            path,
            final_path: self.path(expected),
            expected: expected.clone(),
            hasher,
            written,
        })
    }

    /// All stored blobs with their sizes.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.root.join("blobs/sha256"))? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Ok(d) = format!("sha256:{name}").parse::<Digest>() {
                out.push((d, e.metadata()?.len()));
            }
        }
        Ok(out)
    }

    /// Deletes a blob (no error if absent).
    pub fn remove(&self, d: &Digest) -> Result<()> {
        match fs::remove_file(self.path(d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Removes stale partial downloads no process is writing (best effort).
    pub fn clean_ingest(&self) -> Result<u64> {
        let mut freed = 0;
        for e in fs::read_dir(self.root.join("ingest"))? {
            let path = e?.path();
            let Ok(f) = File::open(&path) else { continue };
            if flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok() {
                freed += f.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = fs::remove_file(&path);
            }
        }
        Ok(freed)
    }
}

/// An in-progress, locked, hashed blob write. See [`ContentStore::ingest`].
pub struct Ingest {
    file: File,
    path: PathBuf,
    final_path: PathBuf,
    expected: Digest,
    hasher: Sha256,
    written: u64,
}

impl Ingest {
    /// Bytes already present (where a resumed download continues).
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// True if the blob was completed by someone else while we waited for the lock.
    pub fn already_stored(&self) -> bool {
        self.final_path.is_file()
    }

    /// Discards partial content (e.g. the server ignored a range request).
    pub fn reset(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// Hash of the bytes written so far.
    pub fn current_digest(&self) -> Digest {
        Digest::from_hasher(self.hasher.clone())
    }

    /// Verifies, syncs and publishes the blob. On a digest mismatch the partial
    /// file is discarded so the next attempt starts clean.
    pub fn commit(mut self) -> Result<()> {
        self.file.flush()?;
        let actual = self.current_digest();
        if actual != self.expected {
            let _ = fs::remove_file(&self.path);
            return Err(ImageError::DigestMismatch {
                what: "blob".into(),
                expected: self.expected.to_string(),
                actual: actual.to_string(),
            }
            .into());
        }
        self.file.sync_all()?;
        fs::rename(&self.path, &self.final_path)
            .with_context(|| format!("publishing blob {}", self.expected))?;
        if let Some(dir) = self.final_path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The final path a committed blob gets.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }
}

/// A blob being written under a name of its own until its digest is known
/// ([`ContentStore::writer`]); dropped unfinished, it leaves nothing behind.
pub struct BlobWriter {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    size: u64,
}

impl BlobWriter {
    /// Syncs the blob and moves it to its digest's place; returns (digest, size).
    pub fn finish(self, store: &ContentStore) -> Result<(Digest, u64)> {
        let d = Digest::from_hasher(self.hasher);
        self.file.as_file().sync_all()?;
        if !store.exists(&d) {
            self.file
                .persist(store.path(&d))
                .map_err(|e| e.error)
                .with_context(|| format!("storing blob {d}"))?;
        }
        Ok((d, self.size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match self.file.write(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::StorageFull => {
                // A full disk: give the space back rather than keep a partial download
                // that leaves nothing for anything else (a resume would fail anyway).
                let _ = self.file.set_len(0);
                let _ = fs::remove_file(&self.path);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_roundtrip() {
        let t = tempfile::tempdir().unwrap();
        let s = ContentStore::open(t.path()).unwrap();
        let d = s.put(b"hello").unwrap();
        assert!(s.exists(&d));
        assert_eq!(s.read(&d).unwrap(), b"hello");
        assert_eq!(s.list().unwrap(), vec![(d.clone(), 5)]);
        s.remove(&d).unwrap();
        assert!(!s.exists(&d));
    }

    #[test]
    fn mismatch_is_rejected_and_invisible() {
        let t = tempfile::tempdir().unwrap();
        let s = ContentStore::open(t.path()).unwrap();
        let d = Digest::of(b"expected");
        let err = s.write(&d, b"something else").unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert!(!s.exists(&d));
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn interrupted_ingest_resumes() {
        let t = tempfile::tempdir().unwrap();
        let s = ContentStore::open(t.path()).unwrap();
        let data = b"0123456789abcdef".repeat(1000);
        let d = Digest::of(&data);
        {
            let mut ing = s.ingest(&d).unwrap();
            ing.write_all(&data[..5000]).unwrap();
            // dropped without commit: simulates a killed pull
        }
        assert!(!s.exists(&d));
        let mut ing = s.ingest(&d).unwrap();
        assert_eq!(ing.offset(), 5000);
        ing.write_all(&data[5000..]).unwrap();
        ing.commit().unwrap();
        assert_eq!(s.read(&d).unwrap(), data);
    }

    #[test]
    fn tampered_blob_detected_on_read() {
        let t = tempfile::tempdir().unwrap();
        let s = ContentStore::open(t.path()).unwrap();
        let d = s.put(b"config").unwrap();
        fs::write(s.path(&d), b"evil").unwrap();
        assert!(s.read(&d).is_err());
    }
}
