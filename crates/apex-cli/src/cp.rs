//! `apex cp`: copies files between a container and the host with docker's rules (`cp -a`
//! semantics: contents, modes, owners and times), streaming tar through apexd.
//!
//! - `apex cp CONTAINER:SRC DEST` (DEST `-` writes the tar to stdout)
//! - `apex cp SRC CONTAINER:DEST` (SRC `-` reads a tar from stdin into the directory DEST)
//!
//! Where things land: into DEST if it is an existing directory, else as DEST itself
//! (the top entry renamed); `SRC/.` copies a directory's content rather than the
//! directory. Archives from a container are extracted with apex-oci's hardened
//! extractor: a hostile container cannot write outside DEST.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use apexd::client::Client;
use apexd::model::{PathStat, ARCHIVE_STAT_HEADER};
use base64::Engine as _;
use clap::Args;

use crate::container::{enc, ApiExt};
use crate::daemon::ensure_daemon;
use crate::format;

#[derive(Args)]
pub struct CpArgs {
    /// Follow symlinks in SRC.
    #[arg(short = 'L', long)]
    pub follow_link: bool,
    /// Keep owners (the default; accepted for docker compatibility).
    #[arg(short, long)]
    pub archive: bool,
    /// No progress line.
    #[arg(short, long)]
    pub quiet: bool,
    /// `CONTAINER:SRC` or a host path (`-`: a tar on stdin).
    pub src: String,
    /// `CONTAINER:DEST` or a host path (`-`: a tar on stdout).
    pub dest: String,
}

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    Container { name: String, path: String },
    Host(String),
}

fn side(s: &str) -> Side {
    // docker: a `:` before any `/` names a container; `./a:b` is a local path.
    match s.split_once(':') {
        Some((c, p)) if !c.is_empty() && !c.contains('/') => Side::Container {
            name: c.into(),
            path: p.into(),
        },
        _ => Side::Host(s.into()),
    }
}

/// The stat carried in an archive answer's header.
fn stat_of(h: &hyper::HeaderMap) -> Result<PathStat> {
    let v = h
        .get(ARCHIVE_STAT_HEADER)
        .context("apexd sent no path stat")?;
    let json = base64::engine::general_purpose::STANDARD
        .decode(v.as_bytes())
        .context("bad path stat")?;
    serde_json::from_slice(&json).context("bad path stat")
}

fn archive_path(container: &str, path: &str) -> String {
    format!(
        "/v1/containers/{}/archive?path={}",
        enc(container),
        enc(path)
    )
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

pub async fn run(home: &Path, a: CpArgs) -> Result<ExitCode> {
    let (src, dst) = (side(&a.src), side(&a.dest));
    let client = ensure_daemon(home).await?.with_timeout(None);
    let copied = match (src, dst) {
        (Side::Container { name, path }, Side::Host(dst)) => {
            from_container(&client, &name, &path, &dst, a.follow_link).await?
        }
        (Side::Host(src), Side::Container { name, path }) => {
            to_container(&client, &src, &name, &path, a.follow_link).await?
        }
        (Side::Container { .. }, Side::Container { .. }) => {
            bail!("copying between containers is not supported")
        }
        (Side::Host(_), Side::Host(_)) => {
            bail!("must specify at least one container source")
        }
    };
    if !a.quiet && a.dest != "-" {
        eprintln!("Successfully copied {} to {}", format::size(copied), a.dest);
    }
    Ok(ExitCode::SUCCESS)
}

async fn from_container(
    client: &Client,
    name: &str,
    src: &str,
    dst: &str,
    follow: bool,
) -> Result<u64> {
    if !src.starts_with('/') {
        bail!("container path {src:?} must be absolute");
    }
    let mut src = src.to_string();
    if follow {
        let h = client.head_request(&archive_path(name, &src)).await.api()?;
        let st = stat_of(&h)?;
        if st.is_symlink() {
            src = if st.link_target.starts_with('/') {
                st.link_target
            } else {
                let parent = Path::new(&src).parent().unwrap_or(Path::new("/"));
                parent.join(&st.link_target).display().to_string()
            };
        }
    }
    let (headers, mut body) = client.get_stream(&archive_path(name, &src)).await.api()?;
    let st = stat_of(&headers)?;
    if dst == "-" {
        let mut out = tokio::io::stdout();
        let res = async {
            let n = tokio::io::copy(&mut body, &mut out).await?;
            tokio::io::AsyncWriteExt::flush(&mut out).await?;
            Ok::<_, std::io::Error>(n)
        }
        .await;
        return match res {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => crate::out::die_of_sigpipe(),
            other => Ok(other?),
        };
    }
    let contents_only = src.ends_with("/.");
    let dst_path = PathBuf::from(dst);
    let (into, rename) = match std::fs::metadata(&dst_path) {
        Ok(m) if m.is_dir() => (dst_path.clone(), None),
        Ok(_) if st.is_dir() => bail!("cannot copy a directory to a file: {dst}"),
        Ok(_) => (parent(&dst_path), base(&dst_path)),
        Err(_) if dst.ends_with('/') && !st.is_dir() => {
            bail!("destination directory {dst} does not exist")
        }
        Err(_) if contents_only => {
            std::fs::create_dir(&dst_path).with_context(|| format!("creating {dst}"))?;
            (dst_path.clone(), None)
        }
        Err(_) => (parent(&dst_path), base(&dst_path)),
    };
    if !into.is_dir() {
        bail!("no such directory: {}", into.display());
    }
    // The extractor is synchronous: feed it the body through a blocking reader.
    let reader = tokio_util::io::SyncIoBridge::new(&mut body);
    tokio::task::block_in_place(|| {
        let mut counting = Counting {
            inner: reader,
            n: 0,
        };
        apex_oci::unpack::extract_archive(&into, &mut counting, rename.as_deref().map(OsStr::new))
            .with_context(|| format!("extracting into {}", into.display()))?;
        Ok(counting.n)
    })
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn base(p: &Path) -> Option<String> {
    p.file_name().map(|n| n.to_string_lossy().into_owned())
}

async fn to_container(
    client: &Client,
    src: &str,
    name: &str,
    dst: &str,
    follow: bool,
) -> Result<u64> {
    if !dst.starts_with('/') {
        bail!("container path {dst:?} must be absolute");
    }
    if src == "-" {
        let path = format!("{}&owner=true", archive_path(name, dst));
        client.put_stream(&path, tokio::io::stdin()).await.api()?;
        return Ok(0);
    }
    let src_path = if follow {
        std::fs::canonicalize(src).with_context(|| src.to_string())?
    } else {
        PathBuf::from(src)
    };
    let meta = std::fs::symlink_metadata(&src_path).map_err(|e| anyhow!("{src}: {e}"))?;
    let contents_only = src.ends_with("/.");
    let src_is_dir = meta.is_dir();
    // Where it goes: into DEST if that is a directory of the container, else as DEST.
    let dst_stat = match client.head_request(&archive_path(name, dst)).await {
        Ok(h) => Some(stat_of(&h)?),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e).api(),
    };
    let (into, top) = match &dst_stat {
        Some(st) if st.is_dir() => (
            dst.to_string(),
            if contents_only { None } else { base(&src_path) },
        ),
        Some(_) if src_is_dir => bail!("cannot copy a directory to a file: {dst}"),
        Some(_) => (parent_str(dst), base(Path::new(dst))),
        None if dst.ends_with('/') && !src_is_dir => {
            bail!("destination directory {dst} does not exist in the container")
        }
        None => (parent_str(dst), base(Path::new(dst))),
    };
    let top = top.unwrap_or_default();
    let (tx, rx) = std::os::unix::net::UnixStream::pair()?;
    let src2 = src_path.clone();
    let writer = std::thread::spawn(move || -> Result<u64> {
        let mut counting = CountingWriter { inner: tx, n: 0 };
        {
            let mut b = tar::Builder::new(&mut counting);
            b.follow_symlinks(false);
            b.mode(tar::HeaderMode::Complete);
            if top.is_empty() {
                // `SRC/.` into an existing directory: the content, without a top entry.
                for e in std::fs::read_dir(&src2)? {
                    let e = e?;
                    append(&mut b, &e.path(), Path::new(&e.file_name()))?;
                }
            } else {
                append(&mut b, &src2, Path::new(&top))?;
            }
            b.finish()?;
        }
        Ok(counting.n)
    });
    rx.set_nonblocking(true)?;
    let body = tokio::net::UnixStream::from_std(rx)?;
    let path = format!("{}&owner=true", archive_path(name, &into));
    let put = client.put_stream(&path, body).await;
    let written = writer
        .join()
        .map_err(|_| anyhow!("the archive writer panicked"))?;
    put.api()?;
    written.with_context(|| format!("reading {src}"))
}

fn parent_str(p: &str) -> String {
    let parent = Path::new(p)
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    if parent.is_empty() {
        "/".into()
    } else {
        parent
    }
}

/// Appends `src` under `name`, recursing into directories without following links.
fn append<W: Write>(b: &mut tar::Builder<W>, src: &Path, name: &Path) -> std::io::Result<()> {
    b.append_path_with_name(src, name)?;
    if std::fs::symlink_metadata(src)?.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(src)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            append(b, &e.path(), &name.join(e.file_name()))?;
        }
    }
    Ok(())
}

struct CountingWriter<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_like_docker() {
        assert_eq!(
            side("web:/etc/hosts"),
            Side::Container {
                name: "web".into(),
                path: "/etc/hosts".into()
            }
        );
        assert_eq!(side("./a:b"), Side::Host("./a:b".into()));
        assert_eq!(side("/tmp/x"), Side::Host("/tmp/x".into()));
        assert_eq!(side("-"), Side::Host("-".into()));
        assert_eq!(side(":x"), Side::Host(":x".into()));
    }

    #[test]
    fn parents() {
        assert_eq!(parent_str("/etc/hosts"), "/etc");
        assert_eq!(parent_str("/x"), "/");
        assert_eq!(parent(Path::new("file")), PathBuf::from("."));
        assert_eq!(base(Path::new("/a/b")).as_deref(), Some("b"));
    }
}
