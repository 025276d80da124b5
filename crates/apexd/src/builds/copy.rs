//! `COPY` and `ADD` without a VM: the sources are resolved in the build context (or in
//! another stage's files), hashed for the cache key, and written as a layer tar in a
//! stable order. Docker's rules: a directory's contents are copied, not the directory;
//! several sources need a destination ending in `/`; files belong to root unless
//! `--chown`; times are kept; `ADD` extracts local tar archives.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use apex_build::glob::{glob_match, has_meta};
use sha2::{Digest as _, Sha256};

use super::index::{ImageIndex, Node};

/// One source that matched.
#[derive(Debug)]
pub struct Source {
    /// The path as matched, relative to the source root (`src/main.rs`).
    pub rel: PathBuf,
    /// The file on the host (symlinks in the path resolved inside the root).
    pub abs: PathBuf,
}

/// What a `COPY`/`ADD` writes.
#[derive(Debug)]
pub struct CopySpec {
    /// The destination as written (after expansion), absolute or relative to `workdir`.
    pub dest: String,
    /// The stage's working directory.
    pub workdir: String,
    /// `--chown` as numeric ids.
    pub owner: Option<(u32, u32)>,
    /// `--chmod`.
    pub mode: Option<u32>,
    /// `ADD`: extract local tar archives.
    pub extract: bool,
    /// More than one source was written (the destination must be a directory).
    pub many: bool,
}

/// A clear error for the user.
pub type CopyError = String;

/// Resolves each of `srcs` (globs expanded) in `root`; `what` names the root in errors
/// ("build context").
pub fn resolve_sources(root: &Path, srcs: &[String], what: &str) -> Result<Vec<Source>, CopyError> {
    let real_root = fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut out = Vec::new();
    for src in srcs {
        let rel =
            clean_rel(src).ok_or_else(|| format!("forbidden path outside the {what}: {src}"))?;
        if has_meta(src) {
            let pattern = rel.to_string_lossy().into_owned();
            let mut hits = Vec::new();
            walk(&real_root, Path::new(""), &mut |p| {
                if glob_match(&pattern, &p.to_string_lossy()) {
                    hits.push(p.to_path_buf());
                }
            })
            .map_err(|e| e.to_string())?;
            if hits.is_empty() {
                return Err(format!(
                    "no source files were specified: {src} matches nothing in the {what}"
                ));
            }
            hits.sort();
            for h in hits {
                out.push(Source {
                    abs: real_root.join(&h),
                    rel: h,
                });
            }
            continue;
        }
        let abs = fs::canonicalize(real_root.join(&rel)).map_err(|_| {
            format!("file not found in {what} or excluded by .dockerignore: stat {src}: file does not exist")
        })?;
        if !abs.starts_with(&real_root) {
            return Err(format!("forbidden path outside the {what}: {src}"));
        }
        out.push(Source { rel, abs });
    }
    Ok(out)
}

/// `src` relative to the root with `.` and `..` applied; `None` if it climbs out.
pub(super) fn clean_rel(src: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(src).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => out.pop().then_some(())?,
            _ => {}
        }
    }
    Some(out)
}

/// Calls `f` with every path below `root.join(rel)` (relative to `root`), sorted.
fn walk(root: &Path, rel: &Path, f: &mut dyn FnMut(&Path)) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for n in names {
        let p = rel.join(&n);
        f(&p);
        if fs::symlink_metadata(root.join(&p))?.is_dir() {
            walk(root, &p, f)?;
        }
    }
    Ok(())
}

/// A content hash of the sources (names, kinds, modes, sizes, contents and link
/// targets; not times), for the step's cache key.
pub fn hash_sources(sources: &[Source]) -> io::Result<String> {
    let mut h = Sha256::new();
    for s in sources {
        h.update(s.rel.as_os_str().as_encoded_bytes());
        h.update(b"\0");
        hash_tree(&mut h, &s.abs, Path::new(""))?;
    }
    Ok(hex::encode(h.finalize()))
}

fn hash_tree(h: &mut Sha256, abs: &Path, rel: &Path) -> io::Result<()> {
    let m = fs::symlink_metadata(abs)?;
    h.update(rel.as_os_str().as_encoded_bytes());
    h.update(format!("\0{:o}\0{}\0", m.mode(), m.len()).as_bytes());
    if m.is_file() {
        let mut f = File::open(abs)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    } else if m.file_type().is_symlink() {
        h.update(fs::read_link(abs)?.as_os_str().as_encoded_bytes());
    } else if m.is_dir() {
        let mut names: Vec<_> = fs::read_dir(abs)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for n in names {
            hash_tree(h, &abs.join(&n), &rel.join(&n))?;
        }
    }
    Ok(())
}

/// Writes the layer tar of a `COPY`/`ADD` of `sources` onto an image whose files are
/// `index`.
pub fn write_layer(
    spec: &CopySpec,
    sources: &[Source],
    index: &ImageIndex,
    out: impl Write,
) -> Result<(), CopyError> {
    let mut dest = if spec.dest.starts_with('/') {
        spec.dest.clone()
    } else {
        format!("{}/{}", spec.workdir.trim_end_matches('/'), spec.dest)
    };
    let dir_syntax = spec.dest.ends_with('/') || spec.dest == "." || spec.dest.ends_with("/.");
    if spec.many && !dir_syntax {
        return Err(
            "When using COPY with more than one source file, the destination must be a directory and end with a /"
                .into(),
        );
    }
    let (resolved, node) = index.resolve(&dest);
    let dest_is_dir = dir_syntax || node == Some(Node::Dir);
    dest = resolved;
    let mut w = LayerWriter {
        b: tar::Builder::new(out),
        spec,
        index,
        made: Default::default(),
    };
    let e = |e: io::Error| e.to_string();
    for s in sources {
        let m = fs::symlink_metadata(&s.abs).map_err(e)?;
        if m.is_dir() {
            w.parents(&dest, true).map_err(e)?;
            w.tree(&s.abs, &dest).map_err(e)?;
        } else if spec.extract && is_archive(&s.abs) {
            w.parents(&dest, true).map_err(e)?;
            w.extract(&s.abs, &dest)?;
        } else {
            let target = if dest_is_dir {
                let name = s.rel.file_name().map(|n| n.to_string_lossy().into_owned());
                join(&dest, &name.unwrap_or_default())
            } else {
                dest.clone()
            };
            w.parents(&target, false).map_err(e)?;
            w.entry(&s.abs, &m, &target).map_err(e)?;
        }
    }
    w.b.into_inner().map_err(e)?.flush().map_err(e)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether a local file is a tar archive `ADD` extracts (plain, gzip or zstd).
fn is_archive(path: &Path) -> bool {
    let Ok(r) = open_archive(path) else {
        return false;
    };
    let mut block = Vec::new();
    let _ = r.take(512).read_to_end(&mut block);
    block.len() == 512 && &block[257..262] == b"ustar"
}

/// The file at `path`, decompressed if it starts with a gzip or zstd header (a tar
/// `ADD` extracts, or a build context).
pub(super) fn open_archive(path: &Path) -> io::Result<Box<dyn Read>> {
    use io::BufRead;
    let mut f = io::BufReader::new(File::open(path)?);
    let head = f.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::new(f)?)
    } else {
        Box::new(f)
    })
}

struct LayerWriter<'a, W: Write> {
    b: tar::Builder<W>,
    spec: &'a CopySpec,
    index: &'a ImageIndex,
    /// Directories this layer already holds.
    made: std::collections::HashSet<String>,
}

impl<W: Write> LayerWriter<'_, W> {
    /// Writes the missing directories above `path` (and `path` itself with `inclusive`).
    fn parents(&mut self, path: &str, inclusive: bool) -> io::Result<()> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let n = if inclusive {
            parts.len()
        } else {
            parts.len().saturating_sub(1)
        };
        for i in 1..=n {
            let p = parts[..i].join("/");
            if self.made.contains(&p) || self.index.resolve(&p).1.is_some() {
                continue;
            }
            let mut h = self.header(0o755, 0, tar::EntryType::Directory);
            self.b.append_data(&mut h, &p, io::empty())?;
            self.made.insert(p);
        }
        Ok(())
    }

    fn header(&self, mode: u32, mtime: i64, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        let mode = match (self.spec.mode, kind) {
            (Some(m), tar::EntryType::Regular | tar::EntryType::Directory) => m,
            _ => mode & 0o7777,
        };
        h.set_mode(mode);
        let (uid, gid) = self.spec.owner.unwrap_or((0, 0));
        h.set_uid(uid.into());
        h.set_gid(gid.into());
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(0);
        h
    }

    /// One file, symlink or (empty) directory at `target`.
    fn entry(&mut self, abs: &Path, m: &Metadata, target: &str) -> io::Result<()> {
        let ft = m.file_type();
        if ft.is_symlink() {
            let mut h = self.header(0o777, m.mtime(), tar::EntryType::Symlink);
            return self.b.append_link(&mut h, target, fs::read_link(abs)?);
        }
        if ft.is_dir() {
            let mut h = self.header(m.permissions().mode(), m.mtime(), tar::EntryType::Directory);
            self.made.insert(target.to_string());
            return self.b.append_data(&mut h, target, io::empty());
        }
        if !ft.is_file() {
            return Ok(()); // devices, fifos and sockets of a context are not copied
        }
        let mut h = self.header(m.permissions().mode(), m.mtime(), tar::EntryType::Regular);
        h.set_size(m.len());
        self.b
            .append_data(&mut h, target, File::open(abs)?.take(m.len()))
    }

    /// A directory's contents under `dest`.
    fn tree(&mut self, abs: &Path, dest: &str) -> io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(abs)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for n in names {
            let a = abs.join(&n);
            let t = join(dest, &n.to_string_lossy());
            let m = fs::symlink_metadata(&a)?;
            self.entry(&a, &m, &t)?;
            if m.is_dir() {
                self.tree(&a, &t)?;
            }
        }
        Ok(())
    }

    /// `ADD` of a local archive: its entries under `dest`, owners kept unless `--chown`.
    fn extract(&mut self, archive: &Path, dest: &str) -> Result<(), CopyError> {
        let e = |e: io::Error| format!("{}: {e}", archive.display());
        let mut a = tar::Archive::new(open_archive(archive).map_err(e)?);
        let under = |raw: &[u8]| -> Result<String, CopyError> {
            let parts = apex_oci::unpack::clean_path(raw).map_err(|err| format!("{err}"))?;
            let rel: Vec<String> = parts.iter().map(|p| p.to_string_lossy().into()).collect();
            Ok(join(dest, &rel.join("/")))
        };
        for entry in a.entries().map_err(e)? {
            let mut entry = entry.map_err(e)?;
            let path = under(&entry.path_bytes())?;
            if path == dest {
                continue;
            }
            let mut h = entry.header().clone();
            if let Some((uid, gid)) = self.spec.owner {
                h.set_uid(uid.into());
                h.set_gid(gid.into());
            }
            match h.entry_type() {
                tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|l| under(&l))
                        .transpose()?
                        .unwrap_or_default();
                    self.b.append_link(&mut h, &path, target).map_err(e)?;
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(e)?
                        .unwrap_or_default()
                        .into_owned();
                    self.b.append_link(&mut h, &path, target).map_err(e)?;
                }
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
                _ => {
                    if h.entry_type() == tar::EntryType::Directory {
                        self.made.insert(path.clone());
                    }
                    self.b.append_data(&mut h, &path, &mut entry).map_err(e)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar_bytes: &[u8]) -> Vec<(String, u32, u64)> {
        tar::Archive::new(tar_bytes)
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect()
    }

    fn ctx() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("src/sub")).unwrap();
        fs::write(t.path().join("src/a.rs"), "a").unwrap();
        fs::write(t.path().join("src/sub/b.rs"), "b").unwrap();
        fs::write(t.path().join("top.txt"), "top").unwrap();
        t
    }

    fn spec(dest: &str, many: bool) -> CopySpec {
        CopySpec {
            dest: dest.into(),
            workdir: "/".into(),
            owner: None,
            mode: None,
            extract: false,
            many,
        }
    }

    #[test]
    fn copies_directory_contents_under_new_parents() {
        let t = ctx();
        let srcs = resolve_sources(t.path(), &["src".into()], "build context").unwrap();
        let mut out = Vec::new();
        let mut s = spec("/app/", false);
        s.owner = Some((1000, 1000));
        write_layer(&s, &srcs, &ImageIndex::default(), &mut out).unwrap();
        let got = names(&out);
        let paths: Vec<&str> = got.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(paths, ["app", "app/a.rs", "app/sub", "app/sub/b.rs"]);
        assert!(got.iter().all(|(_, _, uid)| *uid == 1000));
    }

    #[test]
    fn a_file_lands_in_an_existing_directory_or_at_the_exact_path() {
        let t = ctx();
        let srcs = resolve_sources(t.path(), &["top.txt".into()], "build context").unwrap();
        let mut idx = ImageIndex::default();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        b.append_data(&mut h, "etc", io::empty()).unwrap();
        idx.apply(&b.into_inner().unwrap()[..]).unwrap();
        let mut out = Vec::new();
        write_layer(&spec("/etc", false), &srcs, &idx, &mut out).unwrap();
        assert_eq!(names(&out)[0].0, "etc/top.txt");
        let mut out = Vec::new();
        let mut s = spec("/x/renamed", false);
        s.mode = Some(0o600);
        write_layer(&s, &srcs, &idx, &mut out).unwrap();
        let got = names(&out);
        assert_eq!(got[1], ("x/renamed".into(), 0o600, 0));
    }

    #[test]
    fn globs_escapes_and_missing_sources() {
        let t = ctx();
        let srcs = resolve_sources(t.path(), &["src/*.rs".into()], "build context").unwrap();
        assert_eq!(srcs.len(), 1);
        let err = resolve_sources(t.path(), &["../x".into()], "build context").unwrap_err();
        assert!(
            err.contains("forbidden path outside the build context"),
            "{err}"
        );
        let err = resolve_sources(t.path(), &["nope".into()], "build context").unwrap_err();
        assert!(err.contains("file not found in build context"), "{err}");
        let err = resolve_sources(t.path(), &["*.none".into()], "build context").unwrap_err();
        assert!(err.contains("no source files"), "{err}");
        std::os::unix::fs::symlink("/etc", t.path().join("out")).unwrap();
        let err = resolve_sources(t.path(), &["out/passwd".into()], "build context").unwrap_err();
        assert!(
            err.contains("file not found") || err.contains("forbidden"),
            "{err}"
        );
        let err = write_layer(
            &spec("/dst", true),
            &srcs,
            &ImageIndex::default(),
            Vec::new(),
        )
        .unwrap_err();
        assert!(
            err.contains("must be a directory and end with a /"),
            "{err}"
        );
    }

    #[test]
    fn the_hash_follows_contents_not_times() {
        let t = ctx();
        let srcs = resolve_sources(t.path(), &[".".into()], "build context").unwrap();
        let h1 = hash_sources(&srcs).unwrap();
        let f = File::options()
            .write(true)
            .open(t.path().join("top.txt"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(h1, hash_sources(&srcs).unwrap());
        fs::write(t.path().join("src/a.rs"), "changed").unwrap();
        assert_ne!(h1, hash_sources(&srcs).unwrap());
    }

    #[test]
    fn add_extracts_a_local_tar() {
        let t = ctx();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_uid(7);
        b.append_data(&mut h, "inner/f", &b"hi"[..]).unwrap();
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&b.into_inner().unwrap()).unwrap();
            e.finish().unwrap()
        };
        fs::write(t.path().join("a.tar.gz"), gz).unwrap();
        let srcs = resolve_sources(t.path(), &["a.tar.gz".into()], "build context").unwrap();
        let mut s = spec("/opt/", false);
        s.extract = true;
        let mut out = Vec::new();
        write_layer(&s, &srcs, &ImageIndex::default(), &mut out).unwrap();
        let got = names(&out);
        assert_eq!(got.last().unwrap(), &("opt/inner/f".to_string(), 0o644, 7));
    }
}
