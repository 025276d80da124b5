//! The build-context archive, written as the docker CLI writes it: the context
//! directory minus what `.dockerignore` excludes, owned by uid/gid 0, with
//! modes and mtimes kept and symlinks stored as symlinks.

use crate::ignore::IgnoreMatcher;
use anyhow::{anyhow, Context as _, Result};
use std::fs::{self, File, Metadata};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Tars the build context `dir` into `out` and returns the Dockerfile's path
/// inside the archive (e.g. `Dockerfile` or `sub/Dockerfile.dev`).
///
/// Paths are relative, `/`-separated and in sorted (walk) order, so equal
/// trees give equal archives. `dir/.dockerignore` is honoured, but the
/// Dockerfile and `.dockerignore` are always included. Regular files,
/// directories and symlinks (not followed) are archived; sockets, FIFOs and
/// devices are skipped; hard links are stored as separate files. When an
/// excluded directory is walked because a `!` pattern re-includes something
/// below it, the directory entry is written only if something inside is (as
/// BuildKit's context transfer does). A Dockerfile outside `dir` is added as
/// `.dockerfile.<hash of its content>`, like the CLI's `.dockerfile.<random>`.
pub fn write_context_tar(dir: &Path, dockerfile: &Path, out: impl Write) -> Result<String> {
    let root = dir
        .canonicalize()
        .with_context(|| format!("build context {}", dir.display()))?;
    let ignore_path = root.join(".dockerignore");
    let matcher = match fs::read_to_string(&ignore_path) {
        Ok(text) => {
            IgnoreMatcher::parse(&text).map_err(|e| anyhow!("{}: {e}", ignore_path.display()))?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => IgnoreMatcher::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", ignore_path.display())),
    };
    let df = dockerfile
        .canonicalize()
        .with_context(|| format!("Dockerfile {}", dockerfile.display()))?;
    let inside = df
        .strip_prefix(&root)
        .ok()
        .and_then(Path::to_str)
        .map(str::to_owned);
    let mut keep = vec![".dockerignore".to_string()];
    keep.extend(inside.clone());
    let mut walker = Walker {
        root: root.clone(),
        matcher,
        keep,
        pending: Vec::new(),
        tar: tar::Builder::new(out),
    };
    walker.walk("")?;
    let name = match inside {
        Some(rel) => rel,
        None => {
            let content = fs::read(&df).with_context(|| format!("reading {}", df.display()))?;
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            content.hash(&mut hasher);
            let name = format!(".dockerfile.{:016x}", hasher.finish());
            let meta = fs::metadata(&df)?;
            let mut header = header(&meta, tar::EntryType::Regular);
            walker
                .tar
                .append_data(&mut header, &name, content.as_slice())?;
            name
        }
    };
    walker.tar.into_inner()?.flush()?;
    Ok(name)
}

struct Walker<W: Write> {
    root: PathBuf,
    matcher: IgnoreMatcher,
    /// Paths included whatever `.dockerignore` says.
    keep: Vec<String>,
    /// Excluded directories being walked, written once something inside is.
    pending: Vec<(String, Metadata)>,
    tar: tar::Builder<W>,
}

impl<W: Write> Walker<W> {
    fn walk(&mut self, rel_dir: &str) -> Result<()> {
        let abs = self.root.join(rel_dir);
        let mut names = fs::read_dir(&abs)
            .with_context(|| format!("reading {}", abs.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<Vec<_>>>()?;
        names.sort();
        for name in names {
            let name = name.to_str().ok_or_else(|| {
                anyhow!(
                    "non-UTF-8 file name in build context: {}",
                    abs.join(&name).display()
                )
            })?;
            let rel = if rel_dir.is_empty() {
                name.to_string()
            } else {
                format!("{rel_dir}/{name}")
            };
            let path = abs.join(name);
            let meta =
                fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
            let excluded = !self.keep.contains(&rel) && self.matcher.matches(&rel);
            let kind = meta.file_type();
            if kind.is_dir() {
                if !excluded {
                    self.append(&rel, &path, &meta)?;
                    self.walk(&rel)?;
                    continue;
                }
                let prefix = format!("{rel}/");
                if self.matcher.excludes_whole_dir(&rel)
                    && !self.keep.iter().any(|k| k.starts_with(&prefix))
                {
                    continue;
                }
                self.pending.push((rel.clone(), meta));
                let depth = self.pending.len();
                self.walk(&rel)?;
                self.pending.truncate(depth - 1);
            } else if !excluded && (kind.is_file() || kind.is_symlink()) {
                self.append(&rel, &path, &meta)?;
            }
        }
        Ok(())
    }

    /// Writes one entry, after the excluded parent directories it needs.
    fn append(&mut self, rel: &str, path: &Path, meta: &Metadata) -> Result<()> {
        for (dir, dir_meta) in std::mem::take(&mut self.pending) {
            let mut h = header(&dir_meta, tar::EntryType::Directory);
            self.tar
                .append_data(&mut h, format!("{dir}/"), io::empty())?;
        }
        let kind = meta.file_type();
        if kind.is_dir() {
            let mut h = header(meta, tar::EntryType::Directory);
            self.tar
                .append_data(&mut h, format!("{rel}/"), io::empty())?;
        } else if kind.is_symlink() {
            let mut h = header(meta, tar::EntryType::Symlink);
            let target = fs::read_link(path)?;
            self.tar.append_link(&mut h, rel, target)?;
        } else {
            let mut h = header(meta, tar::EntryType::Regular);
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            self.tar.append_data(&mut h, rel, file)?;
        }
        Ok(())
    }
}

/// A header with the entry's permission bits and mtime, owned by 0:0.
fn header(meta: &Metadata, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(if kind == tar::EntryType::Regular {
        meta.len()
    } else {
        0
    });
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt as _};

    fn entries(tar: &[u8]) -> Vec<(String, tar::EntryType, u32, String)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header();
                assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.display().to_string())
                    .unwrap_or_default();
                let (path, kind, mode) = (
                    e.path().unwrap().display().to_string(),
                    h.entry_type(),
                    h.mode().unwrap(),
                );
                let mut body = String::new();
                io::Read::read_to_string(&mut e, &mut body).unwrap();
                (path, kind, mode, if link.is_empty() { body } else { link })
            })
            .collect()
    }

    fn write(dir: &Path, rel: &str, content: &str) {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    #[test]
    fn archives_context_with_dockerignore() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "Dockerfile", "FROM scratch\n");
        write(
            d,
            ".dockerignore",
            "**/*.log\nnode_modules\nDockerfile\n.dockerignore\nvendor\n!vendor/keep.txt\n",
        );
        write(d, "app/main.go", "package main\n");
        write(d, "app/debug.log", "x");
        write(d, "node_modules/x/index.js", "x");
        write(d, "vendor/drop.txt", "x");
        write(d, "vendor/keep.txt", "kept");
        write(d, "run.sh", "#!/bin/sh\n");
        fs::set_permissions(d.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("app/main.go", d.join("link")).unwrap();
        let mut out = Vec::new();
        let name = write_context_tar(d, &d.join("Dockerfile"), &mut out).unwrap();
        assert_eq!(name, "Dockerfile");
        let got = entries(&out);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                ".dockerignore",
                "Dockerfile",
                "app/",
                "app/main.go",
                "link",
                "run.sh",
                "vendor/",
                "vendor/keep.txt"
            ]
        );
        let by = |n: &str| got.iter().find(|e| e.0 == n).unwrap().clone();
        assert_eq!(by("link").1, tar::EntryType::Symlink);
        assert_eq!(by("link").3, "app/main.go");
        assert_eq!(by("run.sh").2, 0o755);
        assert_eq!(by("app/").1, tar::EntryType::Directory);
        assert_eq!(by("vendor/keep.txt").3, "kept");
        // Deterministic: the same tree gives the same bytes.
        let mut again = Vec::new();
        write_context_tar(d, &d.join("Dockerfile"), &mut again).unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn dockerfile_in_subdir_or_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = tmp.path().join("ctx");
        write(&ctx, "sub/Dockerfile.dev", "FROM a\n");
        write(&ctx, "sub/other", "x");
        write(&ctx, ".dockerignore", "sub\n");
        write(tmp.path(), "Outside.Dockerfile", "FROM b\n");
        let mut out = Vec::new();
        let name = write_context_tar(&ctx, &ctx.join("sub/Dockerfile.dev"), &mut out).unwrap();
        assert_eq!(name, "sub/Dockerfile.dev");
        let names: Vec<String> = entries(&out).into_iter().map(|e| e.0).collect();
        assert_eq!(names, [".dockerignore", "sub/", "sub/Dockerfile.dev"]);

        let mut out = Vec::new();
        let name =
            write_context_tar(&ctx, &tmp.path().join("Outside.Dockerfile"), &mut out).unwrap();
        assert!(name.starts_with(".dockerfile."), "{name}");
        let got = entries(&out);
        assert_eq!(got.last().unwrap().0, name);
        assert_eq!(got.last().unwrap().3, "FROM b\n");
    }
}
