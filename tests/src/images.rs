//! Offline test images, written as OCI image layouts (`oci-layout`, `index.json`,
//! `blobs/sha256/..`).
//!
//! All builders are deterministic (fixed mtimes and timestamps), so the same call yields the
//! same digests. Writing into a directory that already holds a layout adds to it: the new
//! image's `index.json` entry replaces any entry with the same tag, others are kept.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// Host busybox copied into images (Debian's `busybox-static`).
pub const HOST_BUSYBOX: &str = "/bin/busybox";
/// The `PATH` set in every image config.
pub const IMAGE_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Applets linked to `/bin/busybox` in the busybox image.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "echo", "true", "false", "cat", "ls", "sleep", "env", "id", "pwd", "ps", "tty", "stty",
    "mkdir", "touch", "test", "grep", "wc", "hostname", "kill", "head", "uname", "printf", "seq",
    "dd", "mount", "cut", "tr", "yes", "nc", "wget", "ip", "ifconfig", "free", "top", "nproc",
];
/// The annotation naming a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Media types used by the fixtures (OCI and Docker schema 2).
pub mod media {
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI uncompressed layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI zstd layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

const MTIME: u64 = 1_700_000_000; // 2023-11-14T22:13:20Z
const CREATED: &str = "2023-11-14T22:13:20Z";

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `tar+gzip`.
    Gzip,
    /// `tar+zstd`.
    Zstd,
    /// Plain `tar`.
    None,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => media::OCI_LAYER_GZIP,
            Compression::Zstd => media::OCI_LAYER_ZSTD,
            Compression::None => media::OCI_LAYER_TAR,
        }
    }

    fn compress(self, tar: &[u8]) -> Result<Vec<u8>> {
        Ok(match self {
            Compression::Gzip => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(tar)?;
                e.finish()?
            }
            Compression::Zstd => zstd::encode_all(tar, 3)?,
            Compression::None => tar.to_vec(),
        })
    }
}

impl std::str::FromStr for Compression {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "none" => Ok(Compression::None),
            _ => bail!("unknown compression {s:?} (gzip, zstd, none)"),
        }
    }
}

/// An image written into an OCI layout directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The layout directory.
    pub dir: PathBuf,
    /// `sha256:..` of the manifest (of the image index, for a multi-arch image).
    pub manifest_digest: String,
    /// The config digest (for an index: the linux/amd64 image's).
    pub config_digest: String,
    /// Layer (blob) digests in manifest order (for an index: all images', deduplicated).
    pub layer_digests: Vec<String>,
    /// For an index: `("linux/amd64", manifest digest)` per image; empty otherwise.
    pub platforms: Vec<(String, String)>,
}

impl Layout {
    /// Reads a blob of this layout.
    pub fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        read_blob(&self.dir, digest)
    }

    /// The entries of a layer blob of this layout (decompressed by magic).
    pub fn layer_entries(&self, digest: &str) -> Result<Vec<TarEntry>> {
        tar_entries(&decompress(&self.blob(digest)?)?)
    }
}

/// Reads `blobs/sha256/<hex>` of the layout at `dir`, checking its digest.
pub fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let hex = digest
        .strip_prefix("sha256:")
        .context("digest must be sha256:..")?;
    let path = dir.join("blobs/sha256").join(hex);
    let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let actual = sha256_digest(&data);
    if actual != digest {
        bail!("blob {digest} has digest {actual}");
    }
    Ok(data)
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Decompresses a layer blob by its magic bytes (gzip, zstd, or plain tar).
pub fn decompress(blob: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if blob.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(blob).read_to_end(&mut out)?;
    } else if blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        out = zstd::decode_all(blob)?;
    } else {
        out = blob.to_vec();
    }
    Ok(out)
}

/// One raw tar entry as read back from a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// The raw path (GNU/PAX long names resolved, nothing sanitized), lossily UTF-8.
    pub path: String,
    /// The raw link target, for symlinks and hardlinks.
    pub link: Option<String>,
    /// The entry type.
    pub kind: EntryType,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// File content (empty for non-files).
    pub data: Vec<u8>,
    /// PAX extended records (e.g. `SCHILY.xattr.user.apex`).
    pub pax: Vec<(String, Vec<u8>)>,
}

/// Lists the entries of an uncompressed tar without sanitizing anything.
pub fn tar_entries(tar: &[u8]) -> Result<Vec<TarEntry>> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let mut pax = Vec::new();
        if let Some(exts) = entry.pax_extensions()? {
            for ext in exts {
                let ext = ext?;
                pax.push((
                    String::from_utf8_lossy(ext.key_bytes()).into_owned(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let h = entry.header();
        let (kind, mode, uid, gid) = (h.entry_type(), h.mode()?, h.uid()?, h.gid()?);
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        out.push(TarEntry {
            path,
            link,
            kind,
            mode,
            uid,
            gid,
            data,
            pax,
        });
    }
    Ok(out)
}

/// A tar stream written with raw, unsanitized names.
struct TarBuf {
    b: tar::Builder<Vec<u8>>,
}

impl TarBuf {
    fn new() -> Self {
        TarBuf {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// Writes one ustar header with exactly these name/link bytes (no `..` or `/` checks).
    #[allow(clippy::too_many_arguments)]
    fn raw(
        &mut self,
        kind: EntryType,
        name: &str,
        link: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        data: &[u8],
    ) -> Result<()> {
        let mut h = Header::new_ustar();
        let old = h.as_old_mut();
        if name.len() > old.name.len() || link.len() > old.linkname.len() {
            bail!("tar name or link too long for a ustar header: {name:?} -> {link:?}");
        }
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data)?;
        Ok(())
    }

    fn dir(&mut self, name: &str, mode: u32) -> Result<()> {
        self.raw(EntryType::Directory, name, "", mode, 0, 0, &[])
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.raw(EntryType::Regular, name, "", mode, 0, 0, data)
    }

    fn symlink(&mut self, name: &str, target: &str) -> Result<()> {
        self.raw(EntryType::Symlink, name, target, 0o777, 0, 0, &[])
    }

    fn hardlink(&mut self, name: &str, target: &str) -> Result<()> {
        self.raw(EntryType::Link, name, target, 0o644, 0, 0, &[])
    }

    /// A PAX extended header applying to the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> Result<()> {
        self.b.append_pax_extensions(records.iter().copied())?;
        Ok(())
    }

    fn finish(self) -> Result<Vec<u8>> {
        Ok(self.b.into_inner()?)
    }
}

/// Which manifest/config/layer media types to use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Oci,
    Docker,
}

/// Writes blobs into a layout directory.
struct Writer {
    dir: PathBuf,
}

/// A content descriptor.
struct Desc {
    media_type: &'static str,
    digest: String,
    size: usize,
}

impl Desc {
    fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// One written image manifest.
struct Image {
    manifest: Desc,
    config_digest: String,
    layer_digests: Vec<String>,
}

impl Writer {
    fn new(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("creating layout {}", dir.display()))?;
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Writer {
            dir: dir.to_path_buf(),
        })
    }

    fn blob(&self, media_type: &'static str, data: &[u8]) -> Result<Desc> {
        let digest = sha256_digest(data);
        let path = self
            .dir
            .join("blobs/sha256")
            .join(&digest["sha256:".len()..]);
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            fs::write(&tmp, data)?;
            fs::rename(&tmp, &path)?;
        }
        Ok(Desc {
            media_type,
            digest,
            size: data.len(),
        })
    }

    /// Writes config, layers and manifest of a linux image for `arch`.
    fn image(
        &self,
        arch: &str,
        layers: &[(Vec<u8>, Compression)],
        flavor: Flavor,
    ) -> Result<Image> {
        let mut diff_ids = Vec::new();
        let mut layer_descs = Vec::new();
        let mut history = Vec::new();
        for (i, (tar, compression)) in layers.iter().enumerate() {
            diff_ids.push(sha256_digest(tar));
            let media_type = match (flavor, compression) {
                (Flavor::Oci, c) => c.media_type(),
                (Flavor::Docker, Compression::Gzip) => media::DOCKER_LAYER_GZIP,
                (Flavor::Docker, _) => bail!("docker-flavored fixtures use gzip layers"),
            };
            layer_descs.push(self.blob(media_type, &compression.compress(tar)?)?);
            history.push(json!({"created": CREATED, "created_by": format!("apex-e2e fixture layer {}", i + 1)}));
        }
        let config = json!({
            "created": CREATED,
            "architecture": arch,
            "os": "linux",
            "config": {"Env": [IMAGE_PATH], "Cmd": ["sh"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        let (manifest_type, config_type) = match flavor {
            Flavor::Oci => (media::OCI_MANIFEST, media::OCI_CONFIG),
            Flavor::Docker => (media::DOCKER_MANIFEST, media::DOCKER_CONFIG),
        };
        let config = self.blob(config_type, &serde_json::to_vec(&config)?)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.json(),
            "layers": layer_descs.iter().map(Desc::json).collect::<Vec<_>>(),
        });
        let manifest = self.blob(manifest_type, &serde_json::to_vec(&manifest)?)?;
        Ok(Image {
            manifest,
            config_digest: config.digest,
            layer_digests: layer_descs.into_iter().map(|d| d.digest).collect(),
        })
    }

    /// Adds `desc` to `index.json` under `tag` (replacing an entry with the same tag).
    fn tag(&self, desc: &Desc, tag: &str) -> Result<()> {
        let path = self.dir.join("index.json");
        let mut manifests: Vec<Value> = match fs::read(&path) {
            Ok(data) => {
                let index: Value = serde_json::from_slice(&data)
                    .with_context(|| format!("parsing {}", path.display()))?;
                index["manifests"].as_array().cloned().unwrap_or_default()
            }
            Err(_) => Vec::new(),
        };
        manifests.retain(|m| m["annotations"][REF_NAME] != tag);
        let mut entry = desc.json();
        entry["annotations"] = json!({ REF_NAME: tag });
        manifests.push(entry);
        let index =
            json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests});
        fs::write(&path, serde_json::to_vec_pretty(&index)?)?;
        Ok(())
    }

    fn single(self, image: Image, tag: &str) -> Result<Layout> {
        self.tag(&image.manifest, tag)?;
        Ok(Layout {
            dir: self.dir,
            manifest_digest: image.manifest.digest,
            config_digest: image.config_digest,
            layer_digests: image.layer_digests,
            platforms: Vec::new(),
        })
    }
}

/// The busybox root filesystem as an uncompressed tar.
fn busybox_tar() -> Result<Vec<u8>> {
    let busybox = fs::read(HOST_BUSYBOX)
        .with_context(|| format!("reading {HOST_BUSYBOX} (apt-get install busybox-static)"))?;
    let mut t = TarBuf::new();
    t.dir("bin/", 0o755)?;
    t.file("bin/busybox", 0o755, &busybox)?;
    for applet in BUSYBOX_APPLETS {
        t.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    t.dir("etc/", 0o755)?;
    t.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n\
          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
          apex:x:1000:1000:apex:/home/apex:/bin/sh\n",
    )?;
    t.file(
        "etc/group",
        0o644,
        b"root:x:0:\nnogroup:x:65534:\napex:x:1000:\n",
    )?;
    t.dir("home/", 0o755)?;
    t.raw(
        EntryType::Directory,
        "home/apex/",
        "",
        0o755,
        1000,
        1000,
        &[],
    )?;
    t.dir("root/", 0o700)?;
    t.dir("tmp/", 0o1777)?;
    t.finish()
}

/// Replaces the manifest of a single-image layout with `f(manifest)`; updates
/// `index.json` and returns the new manifest digest.
pub fn rewrite_manifest(layout: &Layout, f: impl FnOnce(&mut Value)) -> Result<String> {
    let raw = layout.blob(&layout.manifest_digest)?;
    let mut m: Value = serde_json::from_slice(&raw)?;
    f(&mut m);
    let new = serde_json::to_vec(&m)?;
    let d = sha256_digest(&new);
    fs::write(
        layout.dir.join("blobs/sha256").join(&d["sha256:".len()..]),
        &new,
    )?;
    let idx_path = layout.dir.join("index.json");
    let mut idx: Value = serde_json::from_slice(&fs::read(&idx_path)?)?;
    for e in idx["manifests"]
        .as_array_mut()
        .context("index.json has no manifests")?
    {
        if e["digest"] == layout.manifest_digest.as_str() {
            e["digest"] = d.clone().into();
            e["size"] = new.len().into();
        }
    }
    fs::write(&idx_path, serde_json::to_vec(&idx)?)?;
    Ok(d)
}

/// Returns a copy of a single-image layout (same dir) whose image config is `f(config)`.
pub fn with_config(layout: &Layout, f: impl FnOnce(&mut Value)) -> Result<Layout> {
    let mut cfg: Value = serde_json::from_slice(&layout.blob(&layout.config_digest)?)?;
    f(&mut cfg);
    let raw = serde_json::to_vec(&cfg)?;
    let cd = sha256_digest(&raw);
    fs::write(
        layout.dir.join("blobs/sha256").join(&cd["sha256:".len()..]),
        &raw,
    )?;
    let md = rewrite_manifest(layout, |m| {
        m["config"]["digest"] = cd.clone().into();
        m["config"]["size"] = raw.len().into();
    })?;
    Ok(Layout {
        manifest_digest: md,
        config_digest: cd,
        ..layout.clone()
    })
}

/// A single-layer linux/amd64 image of the directory `root` (ownership, modes and links
/// kept), e.g. a debootstrap tree for benchmarks.
pub fn from_dir(root: &Path, dir: &Path, tag: &str, compression: Compression) -> Result<Layout> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(".", root)
        .with_context(|| format!("archiving {}", root.display()))?;
    let tar = b.into_inner()?;
    let w = Writer::new(dir)?;
    let image = w.image("amd64", &[(tar, compression)], Flavor::Oci)?;
    w.single(image, tag)
}

/// A layer holding `/etc/apex-arch` with `"{arch}\n"`.
fn arch_tar(arch: &str) -> Result<Vec<u8>> {
    let mut t = TarBuf::new();
    t.dir("etc/", 0o755)?;
    t.file("etc/apex-arch", 0o644, format!("{arch}\n").as_bytes())?;
    t.finish()
}

/// A linux/amd64 busybox image, one layer: `/bin/busybox` (the host's static busybox) with
/// applet symlinks [`BUSYBOX_APPLETS`] in `/bin`, `/etc/passwd` and `/etc/group` (root,
/// nobody, `apex` uid/gid 1000 with home `/home/apex`), `/tmp` (1777), `/root` (0700).
/// Config: `Env` [`IMAGE_PATH`], `Cmd ["sh"]`, `WorkingDir "/"`.
pub fn busybox(dir: &Path, tag: &str, compression: Compression) -> Result<Layout> {
    let w = Writer::new(dir)?;
    let image = w.image("amd64", &[(busybox_tar()?, compression)], Flavor::Oci)?;
    w.single(image, tag)
}

/// The busybox image plus `/bin/fsbench` ([`crate::fsbench`]).
pub fn fsbench(dir: &Path, tag: &str, compression: Compression) -> Result<Layout> {
    let tmp = tempfile::tempdir()?;
    let bin = tmp.path().join("fsbench");
    crate::fsbench::build(&bin)?;
    let mut t = TarBuf::new();
    t.dir("bin/", 0o755)?;
    t.file("bin/fsbench", 0o755, &fs::read(&bin)?)?;
    let w = Writer::new(dir)?;
    let layers = [(busybox_tar()?, compression), (t.finish()?, compression)];
    let image = w.image("amd64", &layers, Flavor::Oci)?;
    w.single(image, tag)
}

/// Content of `/data/seed` in the [`volumes`] image.
pub const VOLUMES_SEED: &str = "seeded by the image\n";
/// Content of `/srv/content` in the [`volumes`] image.
pub const VOLUMES_CONTENT: &str = "image content\n";

/// The busybox image plus a layer with `/data` (uid/gid 1000, mode 0750) holding `seed`
/// (1000:1000, 0640, [`VOLUMES_SEED`]) and `/srv/content` (0644, [`VOLUMES_CONTENT`]),
/// and `VOLUME /data` in its config.
pub fn volumes(dir: &Path, tag: &str, compression: Compression) -> Result<Layout> {
    let mut t = TarBuf::new();
    t.raw(EntryType::Directory, "data/", "", 0o750, 1000, 1000, &[])?;
    t.raw(
        EntryType::Regular,
        "data/seed",
        "",
        0o640,
        1000,
        1000,
        VOLUMES_SEED.as_bytes(),
    )?;
    t.dir("srv/", 0o755)?;
    t.file("srv/content", 0o644, VOLUMES_CONTENT.as_bytes())?;
    let w = Writer::new(dir)?;
    let layers = [(busybox_tar()?, compression), (t.finish()?, compression)];
    let image = w.image("amd64", &layers, Flavor::Oci)?;
    let layout = w.single(image, tag)?;
    with_config(&layout, |c| {
        c["config"]["Volumes"] = json!({"/data": {}});
    })
}

/// Applets the [`net`] image links in addition to [`BUSYBOX_APPLETS`].
pub const NET_APPLETS: &[&str] = &[
    "httpd", "nslookup", "timeout", "ping", "sed", "awk", "netstat", "route", "cp", "rm",
];

/// The page `/www/index.html` of the [`net`] image.
pub const NET_INDEX_HTML: &str = "hello-web\n";

/// `/www/cgi-bin/slow` of the [`net`] image: a CGI script (busybox `httpd -h /www`) that
/// answers `slow-ok` after a second.
pub const NET_SLOW_CGI: &str =
    "#!/bin/sh\nsleep 1\nprintf 'Content-Type: text/plain\\r\\n\\r\\nslow-ok\\n'\n";

/// Source of `netecho`, a static test server for the [`net`] image:
/// `netecho tcp PORT` echoes every TCP connection (`TCP_NODELAY`), `netecho udp PORT` echoes
/// datagrams to their sender, `netecho sink PORT` reads from each TCP connection a decimal
/// byte count N and a newline, then N bytes (or up to EOF), and answers with the number of
/// bytes it got after the header and a newline (no half-close needed). One process,
/// `poll(2)`, no fork per connection (fork is slow in a TCG guest and would dominate
/// latency measurements).
pub const NETECHO_C: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int listen_on(int type, int port) {
    int one = 1, s = socket(AF_INET, type, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (s < 0) { perror("netecho: socket"); exit(1); }
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || (type == SOCK_STREAM && listen(s, 128))) {
        perror("netecho: bind/listen");
        exit(1);
    }
    return s;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int main(int argc, char **argv) {
    static char buf[1 << 16];
    if (argc != 3) {
        fprintf(stderr, "usage: netecho tcp|udp|sink PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int port = atoi(argv[2]);
    if (!strcmp(argv[1], "udp")) {
        int s = listen_on(SOCK_DGRAM, port);
        for (;;) {
            struct sockaddr_storage from;
            socklen_t fl = sizeof from;
            ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
            if (n >= 0) sendto(s, buf, (size_t)n, 0, (struct sockaddr *)&from, fl);
        }
    }
    int sink = !strcmp(argv[1], "sink");
    if (!sink && strcmp(argv[1], "tcp")) {
        fprintf(stderr, "usage: netecho tcp|udp|sink PORT\n");
        return 2;
    }
    enum { MAX = 256 };
    struct pollfd fds[MAX];
    unsigned long long count[MAX];
    long long expect[MAX]; /* sink: announced byte count, -1 while reading the header */
    char hdr[MAX][24];
    int hl[MAX];
    int n = 1;
    fds[0].fd = listen_on(SOCK_STREAM, port);
    fds[0].events = POLLIN;
    for (;;) {
        if (poll(fds, (nfds_t)n, -1) < 0) continue;
        if (fds[0].revents & POLLIN) {
            int c = accept(fds[0].fd, NULL, NULL);
            if (c >= 0 && n < MAX) {
                int one = 1;
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                fds[n].fd = c;
                fds[n].events = POLLIN;
                fds[n].revents = 0;
                count[n] = 0;
                expect[n] = -1;
                hl[n] = 0;
                n++;
            } else if (c >= 0) {
                close(c);
            }
        }
        for (int i = 1; i < n; i++) {
            if (!fds[i].revents) continue;
            ssize_t r = read(fds[i].fd, buf, sizeof buf);
            if (r < 0 && errno == EINTR) continue;
            int done = 0;
            if (r > 0 && sink) {
                ssize_t off = 0;
                while (expect[i] < 0 && off < r) {
                    char ch = buf[off++];
                    if (ch == '\n') {
                        hdr[i][hl[i]] = 0;
                        expect[i] = strtoll(hdr[i], NULL, 10);
                    } else if (hl[i] < 23) {
                        hdr[i][hl[i]++] = ch;
                    }
                }
                count[i] += (unsigned long long)(r - off);
                if (expect[i] < 0 || count[i] < (unsigned long long)expect[i]) continue;
                done = 1;
            } else if (r > 0 && write_all(fds[i].fd, buf, (size_t)r) == 0) {
                continue;
            }
            if (sink && (done || r == 0)) {
                char line[32];
                int l = snprintf(line, sizeof line, "%llu\n", count[i]);
                write_all(fds[i].fd, line, (size_t)l);
            }
            close(fds[i].fd);
            fds[i] = fds[n - 1];
            count[i] = count[n - 1];
            expect[i] = expect[n - 1];
            memcpy(hdr[i], hdr[n - 1], sizeof hdr[i]);
            hl[i] = hl[n - 1];
            n--;
            i--;
        }
    }
}
"#;

/// Compiles [`NETECHO_C`] into a static binary at `out` (needs `gcc` and `libc6-dev`).
pub fn build_netecho(out: &Path) -> Result<()> {
    gcc_static("netecho.c", NETECHO_C, out)
}

/// Compiles the C program `source` (named `name` in messages) into a static binary at
/// `out` with `gcc -static -O2 -Wall`.
pub fn gcc_static(name: &str, source: &str, out: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join(name);
    fs::write(&src, source)?;
    let res = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(out)
        .arg(&src)
        .output()
        .context("running gcc (apt-get install gcc libc6-dev)")?;
    if !res.status.success() {
        bail!(
            "gcc -static {name} failed ({}): {}",
            res.status,
            String::from_utf8_lossy(&res.stderr)
        );
    }
    Ok(())
}

/// The second layer of [`net`]: applets, `netecho`, `/www/index.html`.
fn net_tar() -> Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let bin = dir.path().join("netecho");
    build_netecho(&bin)?;
    let mut t = TarBuf::new();
    t.dir("bin/", 0o755)?;
    for applet in NET_APPLETS {
        t.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    t.file("bin/netecho", 0o755, &fs::read(&bin)?)?;
    t.dir("www/", 0o755)?;
    t.file("www/index.html", 0o644, NET_INDEX_HTML.as_bytes())?;
    t.dir("www/cgi-bin/", 0o755)?;
    t.file("www/cgi-bin/slow", 0o755, NET_SLOW_CGI.as_bytes())?;
    t.finish()
}

/// The [`busybox`] image plus a second layer for network tests: more applets
/// ([`NET_APPLETS`]: `httpd`, `nslookup`, `timeout`, ...), `/bin/netecho` (see
/// [`NETECHO_C`], compiled here with `gcc -static`), `/www/index.html` =
/// [`NET_INDEX_HTML`] and the CGI script `/www/cgi-bin/slow` ([`NET_SLOW_CGI`]). Busybox's `wget -T` crashes (Debian 1.35): use `timeout N wget`.
pub fn net(dir: &Path, tag: &str, compression: Compression) -> Result<Layout> {
    let w = Writer::new(dir)?;
    let layers = [(busybox_tar()?, compression), (net_tar()?, compression)];
    let image = w.image("amd64", &layers, Flavor::Oci)?;
    w.single(image, tag)
}

/// A multi-arch OCI image index with linux/amd64 (busybox layer, then a layer with
/// `/etc/apex-arch` = `"amd64\n"`) and linux/arm64 (only the `/etc/apex-arch` = `"arm64\n"`
/// layer; no runnable binary). All layers gzip.
pub fn multiarch(dir: &Path, tag: &str) -> Result<Layout> {
    let w = Writer::new(dir)?;
    let gz = Compression::Gzip;
    let amd64 = w.image(
        "amd64",
        &[(busybox_tar()?, gz), (arch_tar("amd64")?, gz)],
        Flavor::Oci,
    )?;
    let arm64 = w.image("arm64", &[(arch_tar("arm64")?, gz)], Flavor::Oci)?;
    let mut entries = Vec::new();
    let mut platforms = Vec::new();
    let mut layer_digests: Vec<String> = Vec::new();
    for (arch, image) in [("amd64", &amd64), ("arm64", &arm64)] {
        let mut e = image.manifest.json();
        e["platform"] = json!({"architecture": arch, "os": "linux"});
        entries.push(e);
        platforms.push((format!("linux/{arch}"), image.manifest.digest.clone()));
        for d in &image.layer_digests {
            if !layer_digests.contains(d) {
                layer_digests.push(d.clone());
            }
        }
    }
    let index = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": entries});
    let index = w.blob(media::OCI_INDEX, &serde_json::to_vec(&index)?)?;
    w.tag(&index, tag)?;
    Ok(Layout {
        dir: w.dir,
        manifest_digest: index.digest,
        config_digest: amd64.config_digest,
        layer_digests,
        platforms,
    })
}

/// The three layers of [`layered`], uncompressed.
fn layered_tars() -> Result<Vec<Vec<u8>>> {
    let mut l1 = TarBuf::new();
    l1.dir("a/", 0o755)?;
    l1.file("a/file", 0o644, b"hello")?;
    l1.raw(
        EntryType::Regular,
        "a/owned",
        "",
        0o640,
        1000,
        1000,
        b"owned\n",
    )?;
    l1.file("a/setuid", 0o4755, b"setuid\n")?;
    l1.pax(&[("SCHILY.xattr.user.apex", b"test")])?;
    l1.file("a/xattr", 0o644, b"xattr\n")?;
    l1.dir("b/", 0o755)?;
    l1.file("b/old1", 0o644, b"old1\n")?;
    l1.file("b/old2", 0o644, b"old2\n")?;
    l1.file("c", 0o644, b"c\n")?;

    let mut l2 = TarBuf::new();
    l2.file(".wh.c", 0o644, b"")?;
    l2.dir("a/", 0o755)?;
    l2.hardlink("a/hard", "a/file")?;
    l2.symlink("a/sym", "file")?;
    l2.symlink("a/abs", "/etc/passwd")?;
    l2.dir("b/", 0o755)?;
    l2.file("b/.wh..wh..opq", 0o644, b"")?;
    l2.file("b/new", 0o644, b"new\n")?;

    let mut l3 = TarBuf::new();
    l3.dir("a/", 0o755)?;
    l3.file("a/file", 0o644, b"world")?;
    Ok(vec![l1.finish()?, l2.finish()?, l3.finish()?])
}

fn layered_flavor(dir: &Path, tag: &str, flavor: Flavor) -> Result<Layout> {
    let w = Writer::new(dir)?;
    let layers: Vec<_> = layered_tars()?
        .into_iter()
        .map(|t| (t, Compression::Gzip))
        .collect();
    let image = w.image("amd64", &layers, flavor)?;
    w.single(image, tag)
}

/// Three gzip layers exercising unpack semantics (no busybox in it).
///
/// Layer 1: `a/`, `a/file` = `"hello"`, `a/owned` (uid/gid 1000, mode 0640), `a/setuid`
/// (mode 04755), `a/xattr` (PAX `SCHILY.xattr.user.apex` = `test`), `b/old1`, `b/old2`, `c`.
/// Layer 2: whiteout `.wh.c`, hardlink `a/hard` → `a/file`, symlinks `a/sym` → `file` and
/// `a/abs` → `/etc/passwd`, opaque `b/.wh..wh..opq`, `b/new` = `"new\n"`.
/// Layer 3: `a/file` = `"world"`.
///
/// A correct unpack (replacing, not rewriting in place, an existing file) ends with: no `c`;
/// `b/` holding only `new`; `a/file` = `"world"`; `a/hard` = `"hello"` (it was linked to the
/// old file); `a/sym` reading `"world"`; `a/abs` a symlink to `/etc/passwd` left as is.
pub fn layered(dir: &Path, tag: &str) -> Result<Layout> {
    layered_flavor(dir, tag, Flavor::Oci)
}

/// [`layered`] with Docker schema 2 media types (manifest, config, gzip layers).
pub fn layered_docker(dir: &Path, tag: &str) -> Result<Layout> {
    layered_flavor(dir, tag, Flavor::Docker)
}

/// A kind of malicious layer, see [`hostile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// Entry `../../…/tmp/apex-escape-<u>`.
    DotDot,
    /// Entry `/tmp/apex-escape-<u>` (must land inside the rootfs, if anywhere).
    AbsolutePath,
    /// Symlink `evil` → `/tmp/apex-escape-<u>-dir`, then file `evil/pwned`.
    SymlinkEscape,
    /// Hardlink `hl` → `../../…/etc/hostname`.
    HardlinkEscape,
    /// Symlink `up` → `../../…/..`, then file `up/tmp/apex-escape-<u>`.
    SymlinkDirThenWrite,
}

impl Hostile {
    /// Every kind.
    pub const ALL: [Hostile; 5] = [
        Hostile::DotDot,
        Hostile::AbsolutePath,
        Hostile::SymlinkEscape,
        Hostile::HardlinkEscape,
        Hostile::SymlinkDirThenWrite,
    ];
}

/// How many `..` the hostile entries climb: enough to reach `/` from any unpack dir up to
/// this depth, so that [`HostileLayout::escape_path`] is the real host path an unsafe unpack
/// would hit.
pub const HOSTILE_DEPTH: usize = 16;

/// A [`hostile`] image and what to check after unpacking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostileLayout {
    /// The written image (one gzip layer).
    pub layout: Layout,
    /// Which attack it is.
    pub kind: Hostile,
    /// The host path a safe unpack must not create. For [`Hostile::HardlinkEscape`] it is
    /// `/etc/hostname`, which exists: there the check is that the unpacked `hl` is not a
    /// hardlink to it — use [`HostileLayout::escaped`].
    pub escape_path: PathBuf,
    /// The raw (name, link target) pairs written into the layer, in order.
    pub entries: Vec<(String, Option<String>)>,
}

impl HostileLayout {
    /// Whether an unpack of this image into `rootfs` let the attack out: the escape path now
    /// exists on the host, or (hardlink kind) `rootfs/hl` shares the inode of `/etc/hostname`.
    pub fn escaped(&self, rootfs: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match self.kind {
            Hostile::HardlinkEscape => {
                match (
                    fs::symlink_metadata(rootfs.join("hl")),
                    fs::metadata(&self.escape_path),
                ) {
                    (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                    _ => false,
                }
            }
            _ => fs::symlink_metadata(&self.escape_path).is_ok(),
        }
    }
}

/// A name unique across processes and calls, for escape paths.
fn unique() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A single-layer linux/amd64 image whose tar tries to write outside the rootfs.
///
/// Names are written raw into the tar headers (the `tar` crate's builder would refuse them).
/// `<u>` is unique per call; `../../…` climbs [`HOSTILE_DEPTH`] levels.
pub fn hostile(dir: &Path, tag: &str, kind: Hostile) -> Result<HostileLayout> {
    let up = "../".repeat(HOSTILE_DEPTH);
    let name = format!("apex-escape-{}", unique());
    let tmp = Path::new("/tmp");
    let mut entries: Vec<(String, Option<String>)> = Vec::new();
    let mut t = TarBuf::new();
    let escape_path = match kind {
        Hostile::DotDot => {
            let entry = format!("{up}tmp/{name}");
            t.file(&entry, 0o644, b"escaped\n")?;
            entries.push((entry, None));
            tmp.join(&name)
        }
        Hostile::AbsolutePath => {
            let entry = format!("/tmp/{name}");
            t.file(&entry, 0o644, b"escaped\n")?;
            entries.push((entry, None));
            tmp.join(&name)
        }
        Hostile::SymlinkEscape => {
            let target = format!("/tmp/{name}-dir");
            t.symlink("evil", &target)?;
            t.file("evil/pwned", 0o644, b"escaped\n")?;
            entries.push(("evil".into(), Some(target.clone())));
            entries.push(("evil/pwned".into(), None));
            PathBuf::from(target)
        }
        Hostile::HardlinkEscape => {
            let target = format!("{up}etc/hostname");
            t.hardlink("hl", &target)?;
            entries.push(("hl".into(), Some(target)));
            PathBuf::from("/etc/hostname")
        }
        Hostile::SymlinkDirThenWrite => {
            let target = up.trim_end_matches('/').to_string();
            let file = format!("up/tmp/{name}");
            t.symlink("up", &target)?;
            t.file(&file, 0o644, b"escaped\n")?;
            entries.push(("up".into(), Some(target)));
            entries.push((file, None));
            tmp.join(&name)
        }
    };
    let w = Writer::new(dir)?;
    let image = w.image("amd64", &[(t.finish()?, Compression::Gzip)], Flavor::Oci)?;
    Ok(HostileLayout {
        layout: w.single(image, tag)?,
        kind,
        escape_path,
        entries,
    })
}
