//! What an image's filesystem holds, path by path, read from its layer headers: where
//! `COPY` must create parent directories and whether its destination is a directory,
//! without unpacking the image.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{Context, Result};
use apex_oci::db::ImageRecord;
use apex_oci::unpack::{clean_path, open_layer};
use apex_oci::ImageStore;

/// The kind of a path in an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// Anything that is neither a directory nor a symlink.
    File,
    /// A symlink to this target.
    Symlink(String),
}

/// The merged view of an image's layers: relative path (`usr/bin`) -> kind.
#[derive(Clone, Debug, Default)]
pub struct ImageIndex {
    paths: BTreeMap<String, Node>,
}

impl ImageIndex {
    /// Reads the layers of `rec` (none for `scratch`).
    pub fn of_image(store: &ImageStore, rec: Option<&ImageRecord>) -> Result<Self> {
        let mut idx = ImageIndex::default();
        for l in rec.map(|r| r.layers.as_slice()).unwrap_or_default() {
            idx.apply(open_layer(store.content(), l)?)
                .with_context(|| format!("reading layer {}", l.digest))?;
        }
        Ok(idx)
    }

    /// Applies one uncompressed layer tar.
    pub fn apply(&mut self, tar: impl Read) -> Result<()> {
        let mut a = tar::Archive::new(tar);
        for e in a.entries()? {
            let e = e?;
            let parts = clean_path(&e.path_bytes())?;
            let Some(last) = parts.last() else { continue };
            let name = last.to_string_lossy().into_owned();
            let parent = parts[..parts.len() - 1]
                .iter()
                .map(|p| p.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if name == ".wh..wh..opq" {
                self.remove_below(&parent);
                continue;
            }
            if let Some(gone) = name.strip_prefix(".wh.") {
                let p = join(&parent, gone);
                self.remove_below(&p);
                self.paths.remove(&p);
                continue;
            }
            let path = join(&parent, &name);
            let node = match e.header().entry_type() {
                tar::EntryType::Directory => Node::Dir,
                tar::EntryType::Symlink => Node::Symlink(
                    e.link_name()?
                        .map(|l| l.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                _ => Node::File,
            };
            if node != Node::Dir {
                self.remove_below(&path);
            }
            self.paths.insert(path, node);
        }
        Ok(())
    }

    fn remove_below(&mut self, dir: &str) {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let below: Vec<String> = self
            .paths
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.paths.remove(&k);
        }
    }

    /// Resolves symlinks in `path` (absolute or relative to `/`) as a chroot would;
    /// returns the resolved relative path and what is there, if anything.
    pub fn resolve(&self, path: &str) -> (String, Option<Node>) {
        let mut todo: Vec<String> = split(path).into_iter().rev().collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            cur.push(c);
            let p = cur.join("/");
            if let Some(Node::Symlink(t)) = self.paths.get(&p) {
                hops += 1;
                if hops > 40 {
                    break;
                }
                cur.pop();
                if t.starts_with('/') {
                    cur.clear();
                }
                todo.extend(split(t).into_iter().rev());
            }
        }
        let p = cur.join("/");
        let node = if p.is_empty() {
            Some(Node::Dir)
        } else {
            self.paths.get(&p).cloned()
        };
        (p, node)
    }
}

/// The contents of the regular file `path` (relative, like `etc/passwd`) in `rec`'s
/// merged layers, if it is there.
pub fn read_file(
    store: &ImageStore,
    rec: Option<&ImageRecord>,
    path: &str,
) -> Result<Option<Vec<u8>>> {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let whiteout = join(dir, &format!(".wh.{name}"));
    let opaque = join(dir, ".wh..wh..opq");
    let mut found = None;
    for l in rec.map(|r| r.layers.as_slice()).unwrap_or_default() {
        let mut a = tar::Archive::new(open_layer(store.content(), l)?);
        for e in a.entries()? {
            let mut e = e?;
            let parts = clean_path(&e.path_bytes())?;
            let p: Vec<String> = parts.iter().map(|c| c.to_string_lossy().into()).collect();
            let p = p.join("/");
            if p == whiteout || p == opaque {
                found = None;
            } else if p == path && e.header().entry_type().is_file() {
                let mut buf = Vec::new();
                e.read_to_end(&mut buf)?;
                found = Some(buf);
            }
        }
    }
    Ok(found)
}

fn split(p: &str) -> Vec<String> {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(String::from)
        .collect()
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, t, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*t);
            h.set_size(0);
            h.set_mode(0o755);
            if *t == tar::EntryType::Symlink {
                b.append_link(&mut h, p, link).unwrap();
            } else {
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn merges_layers_with_whiteouts_and_resolves_symlinks() {
        use tar::EntryType::{Directory as D, Regular as F, Symlink as L};
        let mut idx = ImageIndex::default();
        idx.apply(
            &layer(&[
                ("usr", D, ""),
                ("usr/bin", D, ""),
                ("usr/bin/sh", F, ""),
                ("bin", L, "usr/bin"),
                ("data", D, ""),
                ("data/old", F, ""),
                ("tmp", D, ""),
                ("tmp/x", F, ""),
            ])[..],
        )
        .unwrap();
        idx.apply(&layer(&[("data/.wh..wh..opq", F, ""), ("tmp/.wh.x", F, "")])[..])
            .unwrap();
        assert_eq!(
            idx.resolve("/bin/sh"),
            ("usr/bin/sh".into(), Some(Node::File))
        );
        assert_eq!(idx.resolve("/bin"), ("usr/bin".into(), Some(Node::Dir)));
        assert_eq!(idx.resolve("/data/old").1, None);
        assert_eq!(idx.resolve("/tmp/x").1, None);
        assert_eq!(idx.resolve("/tmp").1, Some(Node::Dir));
        assert_eq!(idx.resolve("/").1, Some(Node::Dir));
        assert_eq!(idx.resolve("/nope/../usr").1, Some(Node::Dir));
    }
}
