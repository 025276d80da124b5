//! Applying image layers to a directory, safely.
//!
//! Hand-rolled on top of the `tar` crate's entry reader because no maintained crate
//! applies OCI layers with both whiteout semantics and chroot-like path resolution.
//! Safety rules:
//! - entry names and hardlink targets are cleaned lexically; a `..` that would climb
//!   above the root is refused ([`ImageError::HostileLayer`]); absolute names are
//!   taken relative to the root (as docker does);
//! - parent directories are resolved component by component with `openat(O_NOFOLLOW)`,
//!   following symlinks *inside* the root only (absolute targets restart at the root,
//!   `..` stops at the root), exactly as the container will later see them;
//! - the final component is never followed: an existing entry is removed first and
//!   the new one created with `O_EXCL|O_NOFOLLOW`, `symlinkat`, `linkat` or `mkdirat`.
//!
//! Whiteouts (`.wh.NAME`) delete lower entries; `.wh..wh..opq` empties a directory of
//! everything lower layers put there.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{
    self as rfs, AtFlags, Dev, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags, CWD,
};
use rustix::io::Errno;
use tar::EntryType;

use crate::content::ContentStore;
use crate::db::LayerRecord;
use crate::error::ImageError;
use crate::manifest::Compression;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const MAX_SYMLINK_HOPS: usize = 40;

/// Counts of what one layer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries created (files, dirs, links, nodes).
    pub entries: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Bytes of regular file data written.
    pub bytes: u64,
}

/// Wraps a compressed layer stream in the matching decoder.
pub fn decompress<'a>(r: impl Read + 'a, c: Compression) -> Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// The uncompressed tar of the stored layer `l`.
pub fn open_layer(store: &ContentStore, l: &LayerRecord) -> Result<Box<dyn Read>> {
    let c = Compression::from_media_type(&l.media_type)?;
    let blob = store.open_blob(&l.digest)?;
    decompress(std::io::BufReader::new(blob), c)
}

/// Applies one (uncompressed) layer tar to the directory `root`.
pub fn apply_layer(root: &Path, tar: impl Read) -> Result<LayerStats> {
    unpack(root, tar, true, None)
}

/// Extracts an archive (`cp` from a container) into the directory `root` with the same
/// safety rules as layers, but no whiteouts: `.wh.` names are ordinary files. With
/// `rename_top`, the first component of every entry (and hardlink target) is replaced
/// by that name, so `etc/hosts` lands as `NEW/hosts` (`docker cp c:/etc NEW`).
/// Owners are kept when running as root.
pub fn extract_archive(
    root: &Path,
    tar: impl Read,
    rename_top: Option<&OsStr>,
) -> Result<LayerStats> {
    unpack(root, tar, false, rename_top.map(OsStr::to_os_string))
}

fn unpack(
    root: &Path,
    tar: impl Read,
    whiteouts: bool,
    rename_top: Option<OsString>,
) -> Result<LayerStats> {
    let root_fd = rfs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", root.display()))?;
    let mut u = Unpacker {
        root: root_fd,
        privileged: rustix::process::geteuid().is_root(),
        created: HashSet::new(),
        dirs: Vec::new(),
        stats: LayerStats::default(),
        whiteouts,
        rename_top,
    };
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().context("reading layer tar")? {
        let entry = entry.context("reading layer tar entry")?;
        u.apply(entry)?;
    }
    u.finish_dirs()?;
    Ok(u.stats)
}

/// Cleans a tar path into root-relative normal components. Refuses `..` escapes.
pub fn clean_path(raw: &[u8]) -> Result<Vec<OsString>, ImageError> {
    let mut out: Vec<OsString> = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if out.pop().is_none() {
                    return Err(ImageError::HostileLayer {
                        path: String::from_utf8_lossy(raw).into_owned(),
                        reason: "path escapes the root filesystem".into(),
                    });
                }
            }
            Component::Normal(n) => out.push(n.to_os_string()),
        }
    }
    Ok(out)
}

struct Unpacker {
    root: OwnedFd,
    privileged: bool,
    /// Paths created by the current layer (kept by an opaque marker).
    created: HashSet<PathBuf>,
    /// Directories whose mode/mtime are set after the layer (writes inside change mtime,
    /// and a read-only mode must not block later entries).
    dirs: Vec<(PathBuf, u32, u64)>,
    stats: LayerStats,
    /// Apply `.wh.` whiteouts (layers) or take them literally (archives).
    whiteouts: bool,
    /// Replaces the first path component of every entry.
    rename_top: Option<OsString>,
}

fn io_ctx<T>(r: rustix::io::Result<T>, what: &str, path: &Path) -> Result<T> {
    r.map_err(io::Error::from)
        .with_context(|| format!("{what} {}", path.display()))
}

impl Unpacker {
    /// A cleaned entry path, with [`Unpacker::rename_top`] applied.
    fn entry_path(&self, raw: &[u8]) -> Result<Vec<OsString>, ImageError> {
        let mut parts = clean_path(raw)?;
        if let (Some(new), Some(first)) = (&self.rename_top, parts.first_mut()) {
            first.clone_from(new);
        }
        Ok(parts)
    }

    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let parts = self.entry_path(&raw)?;
        let Some((name, parents)) = parts.split_last() else {
            return Ok(()); // the root itself ("./")
        };
        let rel: PathBuf = parts.iter().collect();
        let parent_rel: PathBuf = parents.iter().collect();
        let name_str = name.to_string_lossy();

        if self.whiteouts && name_str == OPAQUE_MARKER {
            let dir = self.resolve_dir(&parent_rel, true)?;
            self.clear_dir(&dir, &parent_rel)?;
            self.stats.whiteouts += 1;
            return Ok(());
        }
        if let Some(target) = name_str
            .strip_prefix(WHITEOUT_PREFIX)
            .filter(|_| self.whiteouts)
        {
            if target.is_empty() || target == "." || target == ".." || target.contains('/') {
                return Err(ImageError::HostileLayer {
                    path: String::from_utf8_lossy(&raw).into_owned(),
                    reason: "invalid whiteout name".into(),
                }
                .into());
            }
            if let Ok(dir) = self.resolve_dir(&parent_rel, false) {
                remove_all_at(&dir, OsStr::new(target))
                    .with_context(|| format!("applying whiteout {}", rel.display()))?;
            }
            self.stats.whiteouts += 1;
            return Ok(());
        }

        let parent = self.resolve_dir(&parent_rel, true)?;
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = header.mtime().unwrap_or(0);
        let kind = header.entry_type();

        // Replace whatever is there, except a directory over a directory (merge).
        let existing = rfs::statat(&parent, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).ok();
        let existing_is_dir =
            existing.is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory);
        if existing.is_some() && !(kind == EntryType::Directory && existing_is_dir) {
            remove_all_at(&parent, name).with_context(|| format!("replacing {}", rel.display()))?;
        }

        match kind {
            EntryType::Directory => {
                if !existing_is_dir {
                    io_ctx(
                        rfs::mkdirat(&parent, name.as_os_str(), Mode::from_raw_mode(0o700)),
                        "creating directory",
                        &rel,
                    )?;
                }
                self.dirs.push((rel.clone(), mode, mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let fd = io_ctx(
                    rfs::openat(
                        &parent,
                        name.as_os_str(),
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    ),
                    "creating file",
                    &rel,
                )?;
                let mut f = File::from(fd);
                self.stats.bytes += io::copy(&mut entry, &mut f)
                    .with_context(|| format!("writing {}", rel.display()))?;
            }
            EntryType::Symlink => {
                let target = header
                    .link_name_bytes()
                    .with_context(|| format!("symlink {} has no target", rel.display()))?;
                io_ctx(
                    rfs::symlinkat(OsStr::from_bytes(&target), &parent, name.as_os_str()),
                    "creating symlink",
                    &rel,
                )?;
            }
            EntryType::Link => {
                let target = header
                    .link_name_bytes()
                    .with_context(|| format!("hardlink {} has no target", rel.display()))?;
                let tparts = self.entry_path(&target)?;
                let Some((tname, tparents)) = tparts.split_last() else {
                    return Err(ImageError::HostileLayer {
                        path: String::from_utf8_lossy(&raw).into_owned(),
                        reason: "hardlink to the root directory".into(),
                    }
                    .into());
                };
                let tdir = self.resolve_dir(&tparents.iter().collect::<PathBuf>(), false)?;
                io_ctx(
                    rfs::linkat(
                        &tdir,
                        tname.as_os_str(),
                        &parent,
                        name.as_os_str(),
                        AtFlags::empty(),
                    ),
                    "creating hardlink",
                    &rel,
                )?;
                // A hardlink shares the target's inode: metadata is already right.
                self.created.insert(rel);
                self.stats.entries += 1;
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let ft = match kind {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if kind != EntryType::Fifo && !self.privileged {
                    tracing::warn!("skipping device node {} (needs root)", rel.display());
                    return Ok(());
                }
                let dev = rustix::fs::makedev(
                    header.device_major()?.unwrap_or(0),
                    header.device_minor()?.unwrap_or(0),
                );
                io_ctx(
                    rfs::mknodat(
                        &parent,
                        name.as_os_str(),
                        ft,
                        Mode::from_raw_mode(0o600),
                        dev as Dev,
                    ),
                    "creating node",
                    &rel,
                )?;
            }
            // PAX/GNU metadata entries are consumed by the tar reader; others are ignored.
            _ => return Ok(()),
        }

        self.set_owner(&parent, name, &header, &rel)?;
        if kind != EntryType::Symlink && kind != EntryType::Directory {
            self.set_xattrs(&parent, name, &mut entry, &rel)?;
            io_ctx(
                rfs::chmodat(
                    &parent,
                    name.as_os_str(),
                    Mode::from_raw_mode(mode),
                    AtFlags::empty(),
                ),
                "setting mode of",
                &rel,
            )?;
        } else if kind == EntryType::Directory {
            self.set_xattrs(&parent, name, &mut entry, &rel)?;
        }
        if kind != EntryType::Directory {
            set_mtime(&parent, name, mtime, AtFlags::SYMLINK_NOFOLLOW);
        }
        self.created.insert(rel);
        self.stats.entries += 1;
        Ok(())
    }

    fn set_owner(&self, parent: &OwnedFd, name: &OsStr, h: &tar::Header, rel: &Path) -> Result<()> {
        if !self.privileged {
            return Ok(());
        }
        let uid = h.uid().unwrap_or(0) as u32;
        let gid = h.gid().unwrap_or(0) as u32;
        io_ctx(
            rfs::chownat(
                parent,
                name,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            ),
            "setting owner of",
            rel,
        )
    }

    fn set_xattrs<R: Read>(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
    ) -> Result<()> {
        let Some(exts) = entry.pax_extensions()? else {
            return Ok(());
        };
        let mut attrs = Vec::new();
        for e in exts {
            let e = e?;
            if let Some(k) = e.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                attrs.push((k.to_vec(), e.value_bytes().to_vec()));
            }
        }
        if attrs.is_empty() {
            return Ok(());
        }
        let fd = io_ctx(
            rfs::openat(
                parent,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ),
            "opening for xattrs",
            rel,
        )?;
        for (k, v) in attrs {
            if let Err(e) = rfs::fsetxattr(&fd, OsStr::from_bytes(&k), &v, XattrFlags::empty()) {
                tracing::warn!(
                    "cannot set xattr {} on {}: {e}",
                    String::from_utf8_lossy(&k),
                    rel.display()
                );
            }
        }
        Ok(())
    }

    /// Sets deferred directory modes and times, deepest first.
    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
        for (rel, mode, mtime) in dirs {
            let (Some(name), Some(parent_rel)) = (rel.file_name(), rel.parent()) else {
                continue;
            };
            let Ok(parent) = self.resolve_dir(parent_rel, false) else {
                continue; // removed later in the same layer
            };
            let Ok(st) = rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                continue;
            }
            io_ctx(
                rfs::chmodat(&parent, name, Mode::from_raw_mode(mode), AtFlags::empty()),
                "setting mode of",
                &rel,
            )?;
            set_mtime(&parent, name, mtime, AtFlags::SYMLINK_NOFOLLOW);
        }
        Ok(())
    }

    /// Empties `dir` of everything not created by the current layer.
    fn clear_dir(&self, dir: &OwnedFd, rel: &Path) -> Result<()> {
        for name in list_dir(dir)? {
            if !self.created.contains(&rel.join(&name)) {
                remove_all_at(dir, &name)
                    .with_context(|| format!("applying opaque marker in {}", rel.display()))?;
            }
        }
        Ok(())
    }

    /// Opens directory `rel` below the root, resolving symlinks as the container will
    /// (never leaving the root). With `create`, missing components become directories
    /// (0755) and non-directories in the way are replaced.
    fn resolve_dir(&self, rel: &Path, create: bool) -> Result<OwnedFd> {
        let dup = || io_ctx(rustix::io::fcntl_dupfd_cloexec(&self.root, 0), "dup", rel);
        let mut stack: Vec<OwnedFd> = vec![dup()?];
        let mut pending: VecDeque<OsString> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        let mut hops = 0;
        while let Some(c) = pending.pop_front() {
            if c == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let cur = stack.last().expect("stack never empty");
            let opened = rfs::openat(
                cur,
                c.as_os_str(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            );
            let fd = match opened {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    io_ctx(
                        rfs::mkdirat(cur, c.as_os_str(), Mode::from_raw_mode(0o755)),
                        "creating directory",
                        &rel.join(&c),
                    )?;
                    pending.push_front(c);
                    continue;
                }
                Err(e) => {
                    return Err(io::Error::from(e))
                        .with_context(|| format!("resolving {} in rootfs", rel.display()))
                }
            };
            let st = io_ctx(rfs::fstat(&fd), "stat", rel)?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => stack.push(fd),
                FileType::Symlink => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(ImageError::HostileLayer {
                            path: rel.display().to_string(),
                            reason: "too many levels of symbolic links".into(),
                        }
                        .into());
                    }
                    let target = io_ctx(
                        rfs::readlinkat(cur, c.as_os_str(), Vec::new()),
                        "reading link",
                        rel,
                    )?;
                    let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                    if target.is_absolute() {
                        stack.truncate(1);
                    }
                    let mut parts: Vec<OsString> = target
                        .components()
                        .filter_map(|c| match c {
                            Component::Normal(n) => Some(n.to_os_string()),
                            Component::ParentDir => Some(OsString::from("..")),
                            _ => None,
                        })
                        .collect();
                    while let Some(p) = parts.pop() {
                        pending.push_front(p);
                    }
                }
                _ if create => {
                    io_ctx(
                        rfs::unlinkat(cur, c.as_os_str(), AtFlags::empty()),
                        "replacing non-directory",
                        &rel.join(&c),
                    )?;
                    pending.push_front(c);
                }
                _ => {
                    return Err(io::Error::from(Errno::NOTDIR))
                        .with_context(|| format!("resolving {} in rootfs", rel.display()))
                }
            }
        }
        Ok(stack.pop().expect("stack never empty"))
    }
}

fn set_mtime(dir: &OwnedFd, name: &OsStr, mtime: u64, flags: AtFlags) {
    let t = Timespec {
        tv_sec: mtime as i64,
        tv_nsec: 0,
    };
    let _ = rfs::utimensat(
        dir,
        name,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        flags,
    );
}

fn list_dir(dir: &impl AsFd) -> Result<Vec<OsString>> {
    let fd = rfs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    for e in rfs::Dir::new(fd)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

/// Removes `name` in `dir` (recursively for directories) without following symlinks.
/// Absent is fine.
pub fn remove_all_at(dir: &impl AsFd, name: &OsStr) -> Result<()> {
    let st = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let sub = rfs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for child in list_dir(&sub)? {
            remove_all_at(&sub, &child)?;
        }
        rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    } else {
        rfs::unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(())
}

/// Removes a directory tree by path (used for temp rootfs directories).
pub fn remove_tree(path: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let dir = match rfs::openat(
        CWD,
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    remove_all_at(&dir, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// Builds a tar from (path, kind, data/target) with raw names (no sanitizing).
    fn tar_of(entries: &[(&str, EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_mtime(1_700_000_000);
            // Raw name bytes: the builder's set_path would refuse `..`.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            match kind {
                EntryType::Symlink | EntryType::Link => {
                    h.as_old_mut().linkname[..data.len()].copy_from_slice(data);
                    h.set_size(0);
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    h.set_cksum();
                    b.append(&h, *data).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn apply(root: &Path, entries: &[(&str, EntryType, &[u8])]) -> Result<LayerStats> {
        apply_layer(root, &tar_of(entries)[..])
    }

    #[test]
    fn basic_files_dirs_links() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        apply(
            r,
            &[
                ("a/", EntryType::Directory, b""),
                ("a/f", EntryType::Regular, b"hi"),
                ("a/s", EntryType::Symlink, b"f"),
                ("a/h", EntryType::Link, b"a/f"),
                ("deep/er/file", EntryType::Regular, b"x"),
            ],
        )
        .unwrap();
        assert_eq!(fs::read(r.join("a/f")).unwrap(), b"hi");
        assert_eq!(fs::read_link(r.join("a/s")).unwrap(), Path::new("f"));
        assert_eq!(
            fs::metadata(r.join("a/h")).unwrap().ino(),
            fs::metadata(r.join("a/f")).unwrap().ino()
        );
        assert_eq!(fs::read(r.join("deep/er/file")).unwrap(), b"x");
        let m = fs::metadata(r.join("a")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o755);
        assert_eq!(m.mtime(), 1_700_000_000);
    }

    #[test]
    fn whiteouts_and_opaque() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        apply(
            r,
            &[
                ("c", EntryType::Regular, b"c"),
                ("d/", EntryType::Directory, b""),
                ("d/old", EntryType::Regular, b"o"),
                ("d/sub/x", EntryType::Regular, b"o"),
            ],
        )
        .unwrap();
        let st = apply(
            r,
            &[
                (".wh.c", EntryType::Regular, b""),
                ("d/", EntryType::Directory, b""),
                ("d/new", EntryType::Regular, b"n"),
                ("d/.wh..wh..opq", EntryType::Regular, b""),
                (".wh.missing", EntryType::Regular, b""),
            ],
        )
        .unwrap();
        assert_eq!(st.whiteouts, 3);
        assert!(!r.join("c").exists());
        assert!(!r.join("d/old").exists());
        assert!(!r.join("d/sub").exists());
        assert_eq!(fs::read(r.join("d/new")).unwrap(), b"n");
    }

    #[test]
    fn replaces_across_types() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        apply(
            r,
            &[
                ("x/y", EntryType::Regular, b"1"),
                ("f", EntryType::Regular, b"1"),
            ],
        )
        .unwrap();
        apply(
            r,
            &[
                ("x", EntryType::Regular, b"2"),
                ("f/g", EntryType::Regular, b"3"),
            ],
        )
        .unwrap();
        assert_eq!(fs::read(r.join("x")).unwrap(), b"2");
        assert_eq!(fs::read(r.join("f/g")).unwrap(), b"3");
    }

    #[test]
    fn dotdot_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let e = apply(&root, &[("../../escape", EntryType::Regular, b"x")]).unwrap_err();
        assert!(e.to_string().contains("escapes"), "{e}");
        assert!(!t.path().join("escape").exists());
        let e = apply(&root, &[("hl", EntryType::Link, b"../../etc/hostname")]).unwrap_err();
        assert!(e.to_string().contains("escapes"), "{e}");
    }

    #[test]
    fn absolute_names_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        apply(r, &[("/abs/file", EntryType::Regular, b"x")]).unwrap();
        assert_eq!(fs::read(r.join("abs/file")).unwrap(), b"x");
    }

    #[test]
    fn symlink_tricks_stay_inside() {
        let outside = tempfile::tempdir().unwrap();
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let target = outside.path().to_str().unwrap().as_bytes().to_vec();
        apply(
            r,
            &[
                ("evil", EntryType::Symlink, &target),
                ("evil/pwned", EntryType::Regular, b"x"),
                ("up", EntryType::Symlink, b"../../../../.."),
                ("up/tmp/pwned2", EntryType::Regular, b"x"),
                // Overwriting a symlink must replace the link, not write through it.
                ("link", EntryType::Symlink, &target),
                ("link", EntryType::Regular, b"y"),
            ],
        )
        .unwrap();
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        let inner = r
            .join(outside.path().strip_prefix("/").unwrap())
            .join("pwned");
        assert_eq!(fs::read(inner).unwrap(), b"x");
        assert_eq!(fs::read(r.join("tmp/pwned2")).unwrap(), b"x");
        assert!(fs::symlink_metadata(r.join("link")).unwrap().is_file());
    }

    #[test]
    fn archives_rename_the_top_and_keep_whiteout_names() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let tar = tar_of(&[
            ("etc/", EntryType::Directory, b""),
            ("etc/hosts", EntryType::Regular, b"h"),
            ("etc/.wh.keep", EntryType::Regular, b"w"),
            ("etc/h2", EntryType::Link, b"etc/hosts"),
        ]);
        extract_archive(r, &tar[..], Some(OsStr::new("copy"))).unwrap();
        assert_eq!(fs::read(r.join("copy/hosts")).unwrap(), b"h");
        assert_eq!(fs::read(r.join("copy/.wh.keep")).unwrap(), b"w");
        assert_eq!(
            fs::metadata(r.join("copy/h2")).unwrap().ino(),
            fs::metadata(r.join("copy/hosts")).unwrap().ino()
        );
        assert!(!r.join("etc").exists());
        // A hostile archive stays inside, renamed or not.
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().as_bytes().to_vec();
        let evil = tar_of(&[
            ("x/l", EntryType::Symlink, &target),
            ("x/l/pwned", EntryType::Regular, b"x"),
        ]);
        extract_archive(r, &evil[..], Some(OsStr::new("y"))).unwrap();
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        let up = tar_of(&[("x/../../escape", EntryType::Regular, b"x")]);
        assert!(extract_archive(r, &up[..], None).is_err());
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let e = apply(
            t.path(),
            &[
                ("a", EntryType::Symlink, b"b"),
                ("b", EntryType::Symlink, b"a"),
                ("a/x", EntryType::Regular, b"x"),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("symbolic links"), "{e}");
    }

    #[test]
    fn xattrs_and_modes_are_applied() {
        let t = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("SCHILY.xattr.user.apex", &b"test"[..])])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("f").unwrap();
        h.set_mode(0o4755);
        h.set_size(2);
        h.set_cksum();
        b.append(&h, &b"hi"[..]).unwrap();
        apply_layer(t.path(), &b.into_inner().unwrap()[..]).unwrap();
        let mut buf = [0u8; 16];
        let n = rfs::getxattr(t.path().join("f"), "user.apex", &mut buf[..]);
        match n {
            Ok(n) => assert_eq!(&buf[..n], b"test"),
            // Some test filesystems lack user xattrs; the unpack itself must still work.
            Err(Errno::NOTSUP) => {}
            Err(e) => panic!("getxattr: {e}"),
        }
        let mode = fs::metadata(t.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o4755);
    }

    #[test]
    fn bad_whiteout_names() {
        let t = tempfile::tempdir().unwrap();
        assert!(apply(t.path(), &[(".wh...", EntryType::Regular, b"")]).is_err());
    }
}
