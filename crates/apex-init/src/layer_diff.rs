//! The `layer-diff` tool: turns an overlay upper directory into an OCI layer tar (the
//! changes a build step made), written in a stable order so that the same changes give
//! the same bytes.
//!
//! - A whiteout (a 0:0 character device) becomes an empty `.wh.NAME` file.
//! - An opaque directory (`trusted.overlay.opaque=y`) is followed by `.wh..wh..opq`.
//! - Directories that were only copied up (they exist below with the same owner and mode)
//!   are written only as parents of something that changed.
//! - Files with several links are written once; later names are hardlinks to the first.
//! - Times are clamped to `epoch`, owners are numeric.
//! - What the agent itself writes into every container root (`/etc/hosts`,
//!   `/etc/hostname`, `/etc/resolv.conf`, and the `/proc`, `/sys`, `/dev` mount points)
//!   is left out: it belongs to the container, not to the image.
//!
//! Extended attributes (file capabilities) are not carried yet.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Paths (relative to the root) never written into a layer.
const EXCLUDED_FILES: &[&str] = &["etc/hosts", "etc/hostname", "etc/resolv.conf"];
/// Top-level directories whose whole subtree is left out: mount points of the agent.
const EXCLUDED_TREES: &[&str] = &["proc", "sys", "dev"];
/// The whiteout prefix and the opaque marker of the OCI layer format.
const WH_PREFIX: &str = ".wh.";
const WH_OPAQUE: &str = ".wh..wh..opq";

/// Writes the layer tar of `upper` (over `lower`) to `out`.
pub fn write<W: Write>(upper: &Path, lower: &Path, epoch: u64, out: W) -> io::Result<W> {
    let mut d = Diff {
        b: tar::Builder::new(out),
        upper,
        lower,
        epoch,
        links: HashMap::new(),
        pending: Vec::new(),
    };
    d.walk(Path::new(""))?;
    d.b.into_inner()
}

struct Diff<'a, W: Write> {
    b: tar::Builder<W>,
    upper: &'a Path,
    lower: &'a Path,
    epoch: u64,
    /// (dev, inode) of multiply-linked files already written -> their name.
    links: HashMap<(u64, u64), PathBuf>,
    /// The directories above the current entry: (name, metadata, written yet).
    pending: Vec<(PathBuf, Metadata, bool)>,
}

impl<W: Write> Diff<'_, W> {
    fn walk(&mut self, rel: &Path) -> io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(self.upper.join(rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let path = rel.join(&name);
            if excluded(&path) {
                continue;
            }
            let meta = fs::symlink_metadata(self.upper.join(&path))?;
            let ft = meta.file_type();
            if ft.is_char_device() && meta.rdev() == 0 {
                self.flush_parents()?;
                let mut wh = name.clone().into_encoded_bytes();
                wh.splice(0..0, WH_PREFIX.bytes());
                // SAFETY: the bytes are an OsStr's bytes with an ASCII prefix.
                let wh = unsafe { std::ffi::OsString::from_encoded_bytes_unchecked(wh) };
                self.marker(&rel.join(wh))?;
            } else if ft.is_dir() {
                let opaque = is_opaque(&self.upper.join(&path));
                let changed = match fs::symlink_metadata(self.lower.join(&path)) {
                    Ok(low) => {
                        !low.is_dir()
                            || low.mode() != meta.mode()
                            || low.uid() != meta.uid()
                            || low.gid() != meta.gid()
                    }
                    Err(_) => true,
                };
                self.pending.push((path.clone(), meta, false));
                if changed || opaque {
                    self.flush_parents()?;
                }
                if opaque {
                    self.marker(&path.join(WH_OPAQUE))?;
                }
                self.walk(&path)?;
                self.pending.pop();
            } else {
                self.flush_parents()?;
                self.entry(&path, &meta)?;
            }
        }
        Ok(())
    }

    /// Writes the directories above the next entry that are not written yet.
    fn flush_parents(&mut self) -> io::Result<()> {
        for i in 0..self.pending.len() {
            if !self.pending[i].2 {
                let (p, m) = (self.pending[i].0.clone(), self.pending[i].1.clone());
                let mut h = self.header(&m, tar::EntryType::Directory);
                self.b.append_data(&mut h, &p, io::empty())?;
                self.pending[i].2 = true;
            }
        }
        Ok(())
    }

    fn header(&self, m: &Metadata, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(m.mode() & 0o7777);
        h.set_uid(m.uid().into());
        h.set_gid(m.gid().into());
        h.set_mtime((m.mtime().max(0) as u64).min(self.epoch));
        h.set_size(0);
        h
    }

    /// An empty marker file (a whiteout or the opaque marker).
    fn marker(&mut self, path: &Path) -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0);
        h.set_mtime(0);
        h.set_size(0);
        self.b.append_data(&mut h, path, io::empty())
    }

    fn entry(&mut self, path: &Path, m: &Metadata) -> io::Result<()> {
        let ft = m.file_type();
        let src = self.upper.join(path);
        if ft.is_file() && m.nlink() > 1 {
            if let Some(first) = self.links.get(&(m.dev(), m.ino())) {
                let first = first.clone();
                let mut h = self.header(m, tar::EntryType::Link);
                return self.b.append_link(&mut h, path, first);
            }
            self.links.insert((m.dev(), m.ino()), path.to_path_buf());
        }
        if ft.is_file() {
            let mut h = self.header(m, tar::EntryType::Regular);
            h.set_size(m.len());
            let f = File::open(&src)?;
            // A file that changes size under the walk must not corrupt the stream.
            self.b.append_data(&mut h, path, io::Read::take(f, m.len()))
        } else if ft.is_symlink() {
            let target = fs::read_link(&src)?;
            let mut h = self.header(m, tar::EntryType::Symlink);
            self.b.append_link(&mut h, path, target)
        } else {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else if ft.is_fifo() {
                tar::EntryType::Fifo
            } else {
                return Ok(()); // sockets are not part of an image
            };
            let mut h = self.header(m, kind);
            let rdev = m.rdev();
            h.set_device_major(libc::major(rdev))?;
            h.set_device_minor(libc::minor(rdev))?;
            self.b.append_data(&mut h, path, io::empty())
        }
    }
}

fn excluded(rel: &Path) -> bool {
    EXCLUDED_FILES.iter().any(|f| rel == Path::new(f))
        || EXCLUDED_TREES.iter().any(|t| rel == Path::new(t))
}

/// Whether overlayfs marked `dir` opaque (it replaced a lower directory).
fn is_opaque(dir: &Path) -> bool {
    let Ok(c) = crate::sys::cstring(dir) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn entries(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType, Option<String>)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e.link_name().unwrap().map(|l| l.display().to_string());
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                    link,
                )
            })
            .collect()
    }

    #[test]
    fn writes_changes_with_hardlinks_and_copied_up_parents_only_when_needed() {
        let t = tempfile::tempdir().unwrap();
        let (upper, lower) = (t.path().join("upper"), t.path().join("lower"));
        for d in [
            "lower/usr/bin",
            "lower/etc",
            "upper/usr/bin",
            "upper/etc",
            "upper/new/sub",
        ] {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        fs::write(upper.join("usr/bin/tool"), b"x").unwrap();
        fs::hard_link(upper.join("usr/bin/tool"), upper.join("usr/bin/tool2")).unwrap();
        symlink("tool", upper.join("usr/bin/link")).unwrap();
        fs::write(upper.join("etc/hosts"), b"excluded").unwrap();
        fs::create_dir(upper.join("proc")).unwrap();
        fs::write(upper.join("new/sub/f"), b"y").unwrap();
        let out = write(&upper, &lower, 0, Vec::new()).unwrap();
        let got = entries(&out);
        let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        // etc/ was only copied up for an excluded file: not written at all.
        assert_eq!(
            names,
            [
                "new",
                "new/sub",
                "new/sub/f",
                "usr",
                "usr/bin",
                "usr/bin/link",
                "usr/bin/tool",
                "usr/bin/tool2"
            ]
        );
        assert_eq!(got[7].1, tar::EntryType::Link);
        assert_eq!(got[7].2.as_deref(), Some("usr/bin/tool"));
        assert_eq!(got[5].1, tar::EntryType::Symlink);
        // Times are clamped: the same tree gives the same bytes.
        assert_eq!(out, write(&upper, &lower, 0, Vec::new()).unwrap());
    }

    #[test]
    fn whiteouts_become_wh_files() {
        let t = tempfile::tempdir().unwrap();
        let (upper, lower) = (t.path().join("upper"), t.path().join("lower"));
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        let c = crate::sys::cstring(upper.join("etc/gone")).unwrap();
        // SAFETY: a valid C string; a 0:0 character device is overlayfs's whiteout.
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
        assert_eq!(r, 0, "mknod needs root: {}", io::Error::last_os_error());
        let got = entries(&write(&upper, &lower, 0, Vec::new()).unwrap());
        let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["etc", "etc/.wh.gone"]);
    }

    #[test]
    fn a_changed_directory_mode_is_written() {
        let t = tempfile::tempdir().unwrap();
        let (upper, lower) = (t.path().join("upper"), t.path().join("lower"));
        fs::create_dir_all(lower.join("data")).unwrap();
        fs::create_dir_all(upper.join("data")).unwrap();
        fs::set_permissions(upper.join("data"), fs::Permissions::from_mode(0o700)).unwrap();
        let got = entries(&write(&upper, &lower, 0, Vec::new()).unwrap());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "data");
    }
}
