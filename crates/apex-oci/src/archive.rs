//! Image archives (`apex image save/load`, `docker save/load`).
//!
//! Written: a tar of an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`) plus Docker's `manifest.json`, as Docker 25+ writes them, so both
//! OCI tools and older docker engines load it. Read: such archives, and the older
//! docker-save format (`manifest.json`, a config file and uncompressed layer tars per
//! image), optionally gzip-compressed. Names travel as `io.containerd.image.name` (full
//! reference) and `org.opencontainers.image.ref.name` (tag) annotations, or as Docker's
//! `RepoTags`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use oci_spec::image::ImageIndex;

use crate::content::ContentStore;
use crate::db::ImageRecord;
use crate::digest::Digest;
use crate::manifest::{self, Parsed};
use crate::platform::Platform;
use crate::reference::ImageRef;
use crate::store::make_record;

const NAME_ANNOTATION: &str = "io.containerd.image.name";
const REF_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Writes `images` (record + optional name) to `out` atomically.
pub fn write(
    content: &ContentStore,
    images: &[(ImageRecord, Option<ImageRef>)],
    out: &Path,
) -> Result<()> {
    let tmp = out.with_file_name(format!(
        ".{}.apex-tmp",
        out.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("archive")
    ));
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |path: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, path, data)?;
        Ok(())
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut manifests = Vec::new();
    let mut docker = Vec::new();
    let mut written: HashSet<Digest> = HashSet::new();
    let mut blob_list = Vec::new();
    for (rec, name) in images {
        docker.push(serde_json::json!({
            "Config": format!("blobs/sha256/{}", rec.config_digest.hex()),
            "RepoTags": name.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "Layers": rec.layers.iter().map(|l| format!("blobs/sha256/{}", l.digest.hex())).collect::<Vec<_>>(),
        }));
        for d in rec.blobs() {
            if written.insert(d.clone()) {
                blob_list.push(d.clone());
            }
        }
        let mut annotations = serde_json::Map::new();
        if let Some(r) = name {
            annotations.insert(NAME_ANNOTATION.into(), r.canonical().into());
            if let Some(t) = r.tag() {
                annotations.insert(REF_ANNOTATION.into(), t.into());
            }
        }
        manifests.push(serde_json::json!({
            "mediaType": rec.media_type,
            "digest": rec.digest.to_string(),
            "size": content.size(&rec.digest).unwrap_or(0),
            "annotations": annotations,
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_INDEX,
        "manifests": manifests,
    }))?;
    for d in blob_list {
        let mut f = content.open_blob(&d)?;
        let mut h = tar::Header::new_ustar();
        h.set_size(f.metadata()?.len());
        h.set_mode(0o644);
        tar.append_data(&mut h, format!("blobs/sha256/{}", d.hex()), &mut f)?;
    }
    let mut h = tar::Header::new_ustar();
    h.set_size(index.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "index.json", &index[..])?;
    let docker = serde_json::to_vec(&docker)?;
    let mut h = tar::Header::new_ustar();
    h.set_size(docker.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "manifest.json", &docker[..])?;
    let mut w = tar.into_inner()?;
    w.flush()?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Opens an archive, looking through gzip compression.
fn open(input: &Path) -> Result<tar::Archive<Box<dyn Read>>> {
    let mut f =
        BufReader::new(File::open(input).with_context(|| format!("opening {}", input.display()))?);
    let mut magic = [0u8; 2];
    f.read_exact(&mut magic).context("archive is empty")?;
    let f = std::io::Cursor::new(magic).chain(f);
    let reader: Box<dyn Read> = if magic == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(tar::Archive::new(reader))
}

fn entry_path<R: Read>(e: &tar::Entry<'_, R>) -> Result<String> {
    Ok(e.path()?
        .to_string_lossy()
        .trim_start_matches("./")
        .to_string())
}

/// Imports every image of an archive (OCI layout or docker-save) and returns them with
/// their names.
pub fn read(content: &ContentStore, input: &Path) -> Result<Vec<(ImageRecord, Option<ImageRef>)>> {
    let mut archive = open(input)?;
    let mut index: Option<Vec<u8>> = None;
    let mut docker_manifest: Option<Vec<u8>> = None;
    let mut saw_layout = false;
    for e in archive.entries().context("reading archive")? {
        let mut e = e.context("reading archive entry")?;
        let path = entry_path(&e)?;
        if path == "index.json" {
            let mut b = Vec::new();
            e.read_to_end(&mut b)?;
            index = Some(b);
        } else if path == "oci-layout" {
            saw_layout = true;
        } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let d: Digest = format!("sha256:{hex}").parse()?;
            if content.exists(&d) {
                continue;
            }
            let mut ing = content.ingest(&d)?;
            ing.reset()?;
            std::io::copy(&mut e, &mut ing)?;
            ing.commit()
                .with_context(|| format!("archive blob {d} is corrupt"))?;
        } else if path == "manifest.json" {
            let mut b = Vec::new();
            e.read_to_end(&mut b)?;
            docker_manifest = Some(b);
        }
    }
    if !saw_layout {
        if let Some(m) = docker_manifest {
            return read_docker(content, input, &m);
        }
    }
    if !saw_layout {
        bail!(
            "{} is not an image archive (no oci-layout or manifest.json)",
            input.display()
        );
    }
    let index = index.with_context(|| format!("{} has no index.json", input.display()))?;
    let idx: ImageIndex = serde_json::from_slice(&index).context("parsing index.json")?;
    let mut out = Vec::new();
    for m in idx.manifests() {
        let d: Digest = m.digest().to_string().parse()?;
        let ann = m.annotations().clone().unwrap_or_default();
        let name = ann
            .get(NAME_ANNOTATION)
            .and_then(|n| ImageRef::parse(n).ok())
            .filter(|r| r.digest().is_none());
        let raw = content
            .read(&d)
            .with_context(|| format!("manifest {d} missing from archive"))?;
        let what = name.as_ref().map_or(d.to_string(), |n| n.to_string());
        let (parsed, mt) = manifest::parse(&raw, &what)?;
        let rec = match parsed {
            Parsed::Image(img) => make_record(content, &img, &raw, d, mt, None, vec![])?,
            Parsed::Index(i) => {
                let (child, _) = manifest::select_platform(&i, &Platform::host(), &what)?;
                let craw = content.read(&child)?;
                let (Parsed::Image(img), cmt) = manifest::parse(&craw, &what)? else {
                    bail!("nested index in {what}");
                };
                make_record(content, &img, &craw, child, cmt, Some(d), vec![])?
            }
        };
        out.push((rec, name));
    }
    Ok(out)
}

/// One image of a docker-save `manifest.json`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Imports a docker-save archive: each image's config and layer tars become blobs under
/// their digests (layers stay uncompressed) and an OCI manifest is made for it.
fn read_docker(
    content: &ContentStore,
    input: &Path,
    manifest_json: &[u8],
) -> Result<Vec<(ImageRecord, Option<ImageRef>)>> {
    use sha2::Digest as _;
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(manifest_json).context("parsing the archive's manifest.json")?;
    let wanted: HashSet<String> = entries
        .iter()
        .flat_map(|e| std::iter::once(e.config.clone()).chain(e.layers.iter().cloned()))
        .collect();
    // First pass: the digest and size of every file the images use.
    let mut sums: std::collections::HashMap<String, (Digest, u64)> = Default::default();
    for e in open(input)?.entries().context("reading archive")? {
        let mut e = e.context("reading archive entry")?;
        let path = entry_path(&e)?;
        if !wanted.contains(&path) {
            continue;
        }
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = e.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            size += n as u64;
        }
        let d: Digest = format!("sha256:{}", hex::encode(h.finalize())).parse()?;
        sums.insert(path, (d, size));
    }
    // Second pass: store them (verified again as they are written).
    for e in open(input)?.entries().context("reading archive")? {
        let mut e = e.context("reading archive entry")?;
        let path = entry_path(&e)?;
        let Some((d, _)) = sums.get(&path) else {
            continue;
        };
        if content.exists(d) {
            continue;
        }
        let mut ing = content.ingest(d)?;
        ing.reset()?;
        std::io::copy(&mut e, &mut ing)?;
        ing.commit()
            .with_context(|| format!("archive file {path} changed while reading"))?;
    }
    let mut out = Vec::new();
    for e in entries {
        let find = |p: &str| {
            sums.get(p)
                .cloned()
                .with_context(|| format!("{p} is missing from the archive"))
        };
        let (config, config_size) = find(&e.config)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let (d, size) = find(l)?;
            // Docker 25+ names layers by their blob digest; they may be compressed.
            let head = content.read_head(&d, 2)?;
            let media_type = if head == [0x1f, 0x8b] {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            };
            layers.push(
                serde_json::json!({"mediaType": media_type, "digest": d.to_string(), "size": size}),
            );
        }
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": manifest::OCI_CONFIG, "digest": config.to_string(), "size": config_size},
            "layers": layers,
        }))?;
        let md = Digest::of(&m);
        content.write(&md, &m)?;
        let (Parsed::Image(img), mt) = manifest::parse(&m, "archive image")? else {
            bail!("made an index instead of a manifest");
        };
        let names: Vec<ImageRef> = e
            .repo_tags
            .unwrap_or_default()
            .iter()
            .filter_map(|t| ImageRef::parse(t).ok())
            .collect();
        let rec = make_record(content, &img, &m, md, mt, None, vec![])?;
        if names.is_empty() {
            out.push((rec.clone(), None));
        }
        for n in names {
            out.push((rec.clone(), Some(n)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn reads_docker_save_archives_and_writes_both_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(dir.path().join("content")).unwrap();
        // A layer tar with one file, a config naming its diff id, docker's manifest.json.
        let mut layer = tar::Builder::new(Vec::new());
        add(&mut layer, "hello.txt", b"hi\n");
        let layer = layer.into_inner().unwrap();
        let diff_id = Digest::of(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!([
            {"Config": "cfg.json", "RepoTags": ["example/app:1.0"], "Layers": ["abc/layer.tar"]}
        ]))
        .unwrap();
        let mut ar = tar::Builder::new(Vec::new());
        add(&mut ar, "cfg.json", &config);
        add(&mut ar, "abc/layer.tar", &layer);
        add(&mut ar, "manifest.json", &manifest);
        let path = dir.path().join("save.tar");
        std::fs::write(&path, ar.into_inner().unwrap()).unwrap();
        let images = read(&content, &path).unwrap();
        assert_eq!(images.len(), 1);
        let (rec, name) = &images[0];
        assert_eq!(name.as_ref().unwrap().to_string(), "example/app:1.0");
        assert_eq!(rec.layers[0].digest, diff_id);
        assert_eq!(rec.config_digest, Digest::of(&config));
        assert!(content.exists(&rec.digest) && content.exists(&diff_id));

        // Written back, the archive has both OCI's index and docker's manifest.json.
        let out = dir.path().join("out.tar");
        write(&content, &images, &out).unwrap();
        let mut names = Vec::new();
        let mut docker = Vec::new();
        for e in tar::Archive::new(File::open(&out).unwrap())
            .entries()
            .unwrap()
        {
            let mut e = e.unwrap();
            let p = e.path().unwrap().display().to_string();
            if p == "manifest.json" {
                e.read_to_end(&mut docker).unwrap();
            }
            names.push(p);
        }
        assert!(
            names.contains(&"index.json".to_string()) && names.contains(&"oci-layout".to_string())
        );
        let docker: serde_json::Value = serde_json::from_slice(&docker).unwrap();
        assert_eq!(docker[0]["RepoTags"][0], "example/app:1.0");
        assert_eq!(
            docker[0]["Layers"][0],
            format!("blobs/sha256/{}", diff_id.hex())
        );
        // And it reads back as an OCI archive.
        let again = read(&content, &out).unwrap();
        assert_eq!(again[0].0.digest, rec.digest);
    }
}
