//! `skopeo`, an independent registry client to cross-check Apex against.
//!
//! Every call runs with `--insecure-policy` (no signature policy needed) and plain HTTP to the
//! registry; without credentials it passes `--*-no-creds` so no stored login is picked up.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

use serde_json::Value;

use crate::images::{media, read_blob, Layout, REF_NAME};

/// Whether this skopeo's `copy` knows `--preserve-digests` (skopeo ≥ 1.6).
pub fn supports_preserve_digests() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        Command::new("skopeo")
            .args(["copy", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--preserve-digests"))
            .unwrap_or(false)
    })
}

fn creds_args(flag: &str, no_creds_flag: &str, creds: Option<(&str, &str)>) -> Vec<String> {
    match creds {
        Some((u, p)) => vec![flag.to_string(), format!("{u}:{p}")],
        None => vec![no_creds_flag.to_string()],
    }
}

fn run(args: &[String]) -> Result<String> {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .context("running skopeo (apt-get install skopeo)")?;
    if !out.status.success() {
        bail!(
            "skopeo {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn s(v: &str) -> String {
    v.to_string()
}

/// Pushes `oci:<layout.dir>:<tag>` (with every image of an index) to `docker://<dest>`,
/// `dest` being `HOST/repo:tag`, keeping digests as built.
///
/// skopeo's `oci:` transport skips `index.json` entries with Docker media types, so a Docker
/// schema 2 image (e.g. [`crate::images::layered_docker`]) is staged into a temporary
/// `dir:` transport directory and pushed from there, bytes unchanged.
pub fn push(layout: &Layout, tag: &str, dest: &str, creds: Option<(&str, &str)>) -> Result<()> {
    let (media_type, digest) = tagged(&layout.dir, tag)?;
    // Kept alive until skopeo is done.
    let staged = (media_type == media::DOCKER_MANIFEST)
        .then(|| stage_dir_transport(&layout.dir, &digest))
        .transpose()?;
    let source = match &staged {
        Some(dir) => format!("dir:{}", dir.path().display()),
        None => format!("oci:{}:{tag}", layout.dir.display()),
    };
    let mut args = vec![s("copy"), s("--all"), s("--dest-tls-verify=false")];
    if supports_preserve_digests() {
        args.push(s("--preserve-digests"));
    }
    args.extend(creds_args("--dest-creds", "--dest-no-creds", creds));
    args.push(source);
    args.push(format!("docker://{dest}"));
    run(&args).map(|_| ())
}

/// The (media type, digest) of the `index.json` entry tagged `tag`.
fn tagged(dir: &Path, tag: &str) -> Result<(String, String)> {
    let path = dir.join("index.json");
    let index: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let entry = index["manifests"]
        .as_array()
        .and_then(|m| m.iter().find(|e| e["annotations"][REF_NAME] == tag))
        .with_context(|| format!("no {tag:?} in {}", path.display()))?;
    let field = |k: &str| entry[k].as_str().unwrap_or_default().to_string();
    Ok((field("mediaType"), field("digest")))
}

/// Copies one image manifest and its blobs into skopeo's `dir:` transport format.
fn stage_dir_transport(layout: &Path, manifest_digest: &str) -> Result<tempfile::TempDir> {
    let out = tempfile::Builder::new()
        .prefix("apex-skopeo-dir-")
        .tempdir()?;
    let manifest = read_blob(layout, manifest_digest)?;
    let m: Value = serde_json::from_slice(&manifest)?;
    std::fs::write(
        out.path().join("version"),
        "Directory Transport Version: 1.1\n",
    )?;
    std::fs::write(out.path().join("manifest.json"), &manifest)?;
    let layers = m["layers"].as_array().cloned().unwrap_or_default();
    for desc in std::iter::once(&m["config"]).chain(layers.iter()) {
        let digest = desc["digest"]
            .as_str()
            .context("descriptor without digest")?;
        let hex = digest
            .strip_prefix("sha256:")
            .context("sha256 digests only")?;
        std::fs::write(out.path().join(hex), read_blob(layout, digest)?)?;
    }
    Ok(out)
}

/// Pulls `docker://<src>` (every image of an index) into the OCI layout at `dir`, tagged with
/// the tag of `src` (or `latest`).
pub fn pull_to_oci(src: &str, dir: &Path, creds: Option<(&str, &str)>) -> Result<()> {
    let tag = src
        .rsplit_once('/')
        .map_or(src, |(_, last)| last)
        .split_once(':')
        .map_or("latest", |(_, t)| t);
    let tag = if src.contains('@') { "latest" } else { tag };
    let mut args = vec![s("copy"), s("--all"), s("--src-tls-verify=false")];
    if supports_preserve_digests() {
        args.push(s("--preserve-digests"));
    }
    args.extend(creds_args("--src-creds", "--src-no-creds", creds));
    args.push(format!("docker://{src}"));
    args.push(format!("oci:{}:{tag}", dir.display()));
    run(&args).map(|_| ())
}

/// The manifest (or index) of `docker://<src>` exactly as the registry serves it.
pub fn inspect_raw(src: &str, creds: Option<(&str, &str)>) -> Result<String> {
    let mut args = vec![s("inspect"), s("--raw"), s("--tls-verify=false")];
    args.extend(creds_args("--creds", "--no-creds", creds));
    args.push(format!("docker://{src}"));
    run(&args)
}
