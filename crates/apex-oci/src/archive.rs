//! OCI archives (`apex image save/load`): a tar of an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/...`), optionally gzip-compressed on load.
//! Names travel as `io.containerd.image.name` (full reference) and
//! `org.opencontainers.image.ref.name` (tag) annotations, as docker and containerd write them.

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
    let mut written: HashSet<Digest> = HashSet::new();
    let mut blob_list = Vec::new();
    for (rec, name) in images {
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
    let mut w = tar.into_inner()?;
    w.flush()?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Imports every blob (each verified by digest) and returns the images the index names.
pub fn read(content: &ContentStore, input: &Path) -> Result<Vec<(ImageRecord, Option<ImageRef>)>> {
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
    let mut archive = tar::Archive::new(reader);
    let mut index: Option<Vec<u8>> = None;
    let mut saw_layout = false;
    for e in archive.entries().context("reading archive")? {
        let mut e = e.context("reading archive entry")?;
        let path = e
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
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
            bail!("{} is a docker-save archive; only OCI archives are supported (save with `apex image save` or `skopeo copy ... oci-archive:`)", input.display());
        }
    }
    if !saw_layout {
        bail!(
            "{} is not an OCI archive (no oci-layout file)",
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
