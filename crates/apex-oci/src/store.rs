//! [`ImageStore`]: the image operations behind `apex image ...`, over one Apex home.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};

use crate::auth::{AuthStore, Credentials};
use crate::content::ContentStore;
use crate::db::{db_path, ImageDb, ImageRecord, LayerRecord};
use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::{self, Parsed};
use crate::platform::Platform;
use crate::reference::ImageRef;
use crate::registry::{ConnectOptions, RegistryClient};
use crate::rootfs::{self, BuildReport};

/// How many layers download at once.
const PARALLEL_LAYERS: usize = 4;
/// How long to wait for another apex process holding the database.
const DB_WAIT: Duration = Duration::from_secs(30);

/// Progress of a pull or push, for progress bars.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The reference resolved to this manifest.
    Resolved {
        /// Manifest digest.
        digest: Digest,
        /// Number of layers.
        layers: usize,
    },
    /// A blob transfer starts (`done` > 0 when resuming).
    BlobStart {
        /// Blob digest.
        digest: Digest,
        /// Total size.
        size: u64,
        /// Already present locally (or remotely, for push): nothing to transfer.
        cached: bool,
    },
    /// Bytes transferred so far.
    BlobBytes {
        /// Blob digest.
        digest: Digest,
        /// Bytes done.
        done: u64,
    },
    /// A blob is complete and verified.
    BlobDone {
        /// Blob digest.
        digest: Digest,
    },
    /// Building the rootfs image.
    Unpacking,
}

/// Receives [`Progress`] events.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Options for [`ImageStore::pull`].
#[derive(Clone, Default)]
pub struct PullOptions {
    /// Platform to select from an index (default: the host's).
    pub platform: Option<Platform>,
    /// Scheme and insecure registries.
    pub connect: ConnectOptions,
    /// Progress sink.
    pub progress: Option<ProgressFn>,
    /// Skip building the rootfs image.
    pub no_unpack: bool,
    /// Credentials for this pull instead of the stored ones (Docker's
    /// `X-Registry-Auth`).
    pub credentials: Option<Credentials>,
}

/// What a pull did.
#[derive(Debug)]
pub struct PullReport {
    /// The stored image.
    pub record: ImageRecord,
    /// The name it is stored under.
    pub name: ImageRef,
    /// Bytes downloaded (excluding blobs already present).
    pub downloaded: u64,
    /// Time spent fetching.
    pub fetch: Duration,
    /// The rootfs build, unless skipped.
    pub rootfs: Option<BuildReport>,
}

/// A local image as listed: its record and the names pointing at it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// Image ID (config digest).
    pub id: String,
    /// Manifest digest.
    pub digest: String,
    /// Familiar names (`busybox:latest`).
    pub names: Vec<String>,
    /// Platform.
    pub platform: String,
    /// Size in bytes (compressed blobs).
    pub size: u64,
    /// Creation time from the config.
    pub created: Option<String>,
}

/// Persistent settings in `$APEX_HOME/config.json`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Registries (host[:port]) that may be used over plain HTTP.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Mirrors tried in order for `docker.io` images before docker.io itself
    /// (`https://mirror.example`, `http://127.0.0.1:5000`, or `host:port`), the key
    /// Docker's `daemon.json` uses.
    #[serde(default)]
    pub registry_mirrors: Vec<String>,
}

impl Config {
    /// The mirrors as `(host[:port], plain_http)`.
    pub fn mirrors(&self) -> Vec<(String, bool)> {
        self.registry_mirrors
            .iter()
            .filter_map(|m| {
                let m = m.trim().trim_end_matches('/');
                let (host, http) = match m.split_once("://") {
                    Some(("http", h)) => (h, true),
                    Some((_, h)) => (h, false),
                    None => (m, false),
                };
                (!host.is_empty()).then(|| (host.to_string(), http))
            })
            .collect()
    }
}

/// The image store of one Apex home.
pub struct ImageStore {
    home: PathBuf,
    content: ContentStore,
    auth: AuthStore,
    config: Config,
}

impl ImageStore {
    /// Opens the store under `home`, creating directories as needed.
    pub fn open(home: &Path) -> Result<Self> {
        fs::create_dir_all(home.join("db"))
            .with_context(|| format!("cannot create state directory {}", home.display()))?;
        let content = ContentStore::open(home.join("content"))?;
        let config = match fs::read(home.join("config.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("parsing {}", home.join("config.json").display()))?,
            Err(_) => Config::default(),
        };
        Ok(ImageStore {
            home: home.to_path_buf(),
            content,
            auth: AuthStore::new(home),
            config,
        })
    }

    /// The blob store.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// Settings read from config.json.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn db(&self) -> Result<ImageDb> {
        ImageDb::open(&db_path(&self.home), DB_WAIT)
    }

    fn rootfs_dir(&self) -> PathBuf {
        self.home.join("rootfs")
    }

    /// Shared while pulling/loading, exclusive while collecting garbage, so GC never
    /// deletes blobs of an import that has not recorded its image yet.
    fn gc_lock(&self, exclusive: bool) -> Result<File> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.home.join("content").join("gc.lock"))?;
        flock(
            &f,
            if exclusive {
                FlockOperation::LockExclusive
            } else {
                FlockOperation::LockShared
            },
        )?;
        Ok(f)
    }

    /// Keeps garbage collection from deleting blobs written but not recorded yet (a
    /// build's layers) while the returned lock is held.
    pub fn lease(&self) -> Result<File> {
        self.gc_lock(false)
    }

    fn connect_opts(&self, mut o: ConnectOptions) -> ConnectOptions {
        o.insecure_registries
            .extend(self.config.insecure_registries.iter().cloned());
        o
    }

    /// Stored credentials for a registry.
    pub fn credentials(&self, registry: &str) -> Result<Option<Credentials>> {
        self.auth.get(registry)
    }

    /// Verifies credentials without storing them (Docker's `/auth`).
    pub async fn check_login(
        &self,
        registry: &str,
        creds: Credentials,
        opts: ConnectOptions,
    ) -> Result<()> {
        let probe = ImageRef::parse(&format!("{registry}/apex/login-check"))?;
        let client = RegistryClient::connect(&probe, Some(creds), &self.connect_opts(opts)).await?;
        client.check_login(&probe).await
    }

    /// Verifies and stores credentials (`apex registry login`).
    pub async fn login(
        &self,
        registry: &str,
        creds: Credentials,
        opts: ConnectOptions,
    ) -> Result<()> {
        let probe = ImageRef::parse(&format!("{registry}/apex/login-check"))?;
        let client =
            RegistryClient::connect(&probe, Some(creds.clone()), &self.connect_opts(opts)).await?;
        client.check_login(&probe).await?;
        self.auth.set(registry, &creds)
    }

    /// Forgets credentials; returns whether any were stored.
    pub fn logout(&self, registry: &str) -> Result<bool> {
        self.auth.remove(registry)
    }

    /// Pulls `reference`, stores it, and builds its rootfs image.
    pub async fn pull(&self, reference: &str, opts: PullOptions) -> Result<PullReport> {
        let r = ImageRef::parse(reference)?;
        let _lease = self.gc_lock(false)?;
        let emit = |p: Progress| {
            if let Some(f) = &opts.progress {
                f(p)
            }
        };
        let t0 = Instant::now();
        let (src, client, (raw, digest)) = self.resolve_source(&r, &opts).await?;
        let shown = r.to_string();
        let (parsed, mut media_type) = manifest::parse(&raw, &shown)?;
        let want = opts.platform.clone().unwrap_or_else(Platform::host);
        let (raw, digest, image, index_digest) = match parsed {
            Parsed::Index(idx) => {
                self.content.write(&digest, &raw)?;
                let (child, _) = manifest::select_platform(&idx, &want, &shown)?;
                let (craw, cdigest) = client.manifest(&src.with_digest(&child)).await?;
                let (cparsed, cmt) = manifest::parse(&craw, &shown)?;
                let Parsed::Image(m) = cparsed else {
                    bail!(ImageError::MalformedManifest {
                        reference: shown,
                        reason: "index entry is itself an index".into()
                    });
                };
                media_type = cmt;
                (craw, cdigest, m, Some(digest))
            }
            Parsed::Image(m) => (raw, digest, m, None),
        };
        self.content.write(&digest, &raw)?;
        emit(Progress::Resolved {
            digest: digest.clone(),
            layers: image.layers().len(),
        });

        // Config first (small), then layers in parallel.
        let config_digest: Digest = image.config().digest().to_string().parse()?;
        let mut blobs = vec![(config_digest.clone(), image.config().size())];
        for l in image.layers() {
            blobs.push((l.digest().to_string().parse()?, l.size()));
        }
        let client = Arc::new(client);
        let downloaded: Vec<u64> =
            futures_util::stream::iter(blobs.into_iter().map(|(d, size)| {
                let client = client.clone();
                let content = self.content.clone();
                let src = src.clone();
                let progress = opts.progress.clone();
                async move { fetch_one(&client, &content, &src, d, size, progress).await }
            }))
            .buffer_unordered(PARALLEL_LAYERS)
            .try_collect()
            .await?;
        let fetch = t0.elapsed();

        let rd = format!(
            "{}@{}",
            r.familiar_repository(),
            index_digest.as_ref().unwrap_or(&digest)
        );
        let record = make_record(
            &self.content,
            &image,
            &raw,
            digest,
            media_type,
            index_digest,
            vec![rd],
        )
        .map_err(|e| {
            anyhow::Error::from(ImageError::MalformedManifest {
                reference: shown.clone(),
                reason: format!("{e:#}"),
            })
        })?;
        if let Some(p) = &opts.platform {
            let have: Platform = record.platform.parse().map_err(anyhow::Error::msg)?;
            if !p.matches(&have) {
                bail!(ImageError::NoMatchingPlatform {
                    reference: shown,
                    wanted: p.to_string(),
                    available: have.to_string(),
                });
            }
        }
        self.db()?.put(&record, &[r.canonical()])?;

        let rootfs = if opts.no_unpack {
            None
        } else {
            emit(Progress::Unpacking);
            Some(self.ensure_rootfs(&record).await?)
        };
        Ok(PullReport {
            record,
            name: r,
            downloaded: downloaded.iter().sum(),
            fetch,
            rootfs,
        })
    }

    /// Where to pull `r` from: for docker.io images, each configured mirror in turn
    /// (the first that has the manifest wins), then docker.io; for others, their own
    /// registry. Returns the reference to fetch from, its client and the manifest.
    async fn resolve_source(
        &self,
        r: &ImageRef,
        opts: &PullOptions,
    ) -> Result<(ImageRef, RegistryClient, (Vec<u8>, Digest))> {
        let mut tries = Vec::new();
        if r.registry() == crate::reference::DEFAULT_REGISTRY {
            for (host, http) in self.config.mirrors() {
                tries.push((r.on_registry(&host), http));
            }
        }
        tries.push((r.clone(), false));
        let last = tries.len() - 1;
        let mut errors = Vec::new();
        for (i, (src, http)) in tries.into_iter().enumerate() {
            let mirror = i < last;
            let creds = match &opts.credentials {
                Some(c) if !mirror => Some(c.clone()),
                _ => self.auth.get(src.registry())?,
            };
            let mut connect = self.connect_opts(opts.connect.clone());
            if http {
                connect.insecure_registries.push(src.registry().to_string());
            }
            let attempt = async {
                let client = RegistryClient::connect(&src, creds, &connect).await?;
                let manifest = client.manifest(&src).await?;
                anyhow::Ok((client, manifest))
            }
            .await;
            match attempt {
                Ok((client, manifest)) => return Ok((src, client, manifest)),
                Err(e) if mirror => {
                    tracing::info!(
                        mirror = src.registry(),
                        "mirror failed, trying the next: {e:#}"
                    );
                    errors.push(format!("mirror {}: {e:#}", src.registry()));
                }
                Err(e) => {
                    if errors.is_empty() {
                        return Err(e);
                    }
                    return Err(e.context(format!("after {}", errors.join("; "))));
                }
            }
        }
        unreachable!("the last try always returns")
    }

    /// Builds (or finds) the rootfs image of a stored image.
    pub async fn ensure_rootfs(&self, rec: &ImageRecord) -> Result<BuildReport> {
        let dir = self.rootfs_dir();
        let content = self.content.clone();
        let rec = rec.clone();
        tokio::task::spawn_blocking(move || rootfs::ensure(&dir, &content, &rec)).await?
    }

    /// Finds a local image by name, full digest, or ID/digest prefix.
    pub fn resolve(&self, name: &str) -> Result<(ImageRecord, Vec<String>)> {
        let db = self.db()?;
        let all = db.list()?;
        if let Ok(r) = ImageRef::parse(name) {
            if let Some(d) = db.resolve(&r.canonical())? {
                if let Some(hit) = all.iter().find(|(rec, _)| rec.digest == d) {
                    return Ok(hit.clone());
                }
            }
            // `repo@sha256:...` of a tag-pulled image.
            if let Some(d) = r.digest() {
                if let Some(hit) = all
                    .iter()
                    .find(|(rec, _)| rec.digest == d || rec.index_digest.as_ref() == Some(&d))
                {
                    return Ok(hit.clone());
                }
            }
        }
        let prefix = name.strip_prefix("sha256:").unwrap_or(name);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<_> = all
                .iter()
                .filter(|(rec, _)| {
                    rec.config_digest.hex().starts_with(prefix)
                        || rec.digest.hex().starts_with(prefix)
                })
                .collect();
            match hits.len() {
                1 => return Ok(hits[0].clone()),
                0 => {}
                _ => bail!(ImageError::Conflict(format!(
                    "image ID prefix {name} is ambiguous: use more characters"
                ))),
            }
        }
        bail!(ImageError::NotFoundLocally(name.to_string()))
    }

    /// All local images.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let db = self.db()?;
        let steps = db.intermediates()?;
        let mut out: Vec<ImageSummary> = db
            .list()?
            .into_iter()
            .filter(|(rec, names)| !names.is_empty() || !steps.contains(&rec.digest))
            .map(|(rec, names)| summary(&rec, &names))
            .collect();
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.names.cmp(&b.names)));
        Ok(out)
    }

    /// Every stored image with its canonical names.
    pub fn resolve_all(&self) -> Result<Vec<(ImageRecord, Vec<String>)>> {
        self.db()?.list()
    }

    /// The image config (JSON) of a stored image.
    pub fn config_json(&self, rec: &ImageRecord) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(
            &self.content.read(&rec.config_digest)?,
        )?)
    }

    /// Docker-style inspect document.
    pub fn inspect(&self, name: &str) -> Result<serde_json::Value> {
        let (rec, names) = self.resolve(name)?;
        let cfg = self.config_json(&rec)?;
        let s = summary(&rec, &names);
        let rootfs = rootfs::image_path(&self.rootfs_dir(), &rec);
        Ok(serde_json::json!({
            "Id": rec.config_digest.to_string(),
            "Digest": rec.digest.to_string(),
            "RepoTags": s.names,
            "RepoDigests": rec.repo_digests,
            "Created": rec.created,
            "Added": rec.added,
            "Size": rec.size,
            "Os": cfg.get("os"),
            "Architecture": cfg.get("architecture"),
            "Variant": cfg.get("variant"),
            "Config": cfg.get("config"),
            "RootFS": cfg.get("rootfs"),
            "MediaType": rec.media_type,
            "IndexDigest": rec.index_digest.as_ref().map(|d| d.to_string()),
            "Layers": rec.layers,
            "RootfsImage": rootfs.is_file().then(|| rootfs.display().to_string()),
        }))
    }

    /// Adds name `dst` for the image `src`.
    pub fn tag(&self, src: &str, dst: &str) -> Result<ImageRef> {
        let (rec, _) = self.resolve(src)?;
        let d = ImageRef::parse(dst)?;
        if d.digest().is_some() {
            bail!("cannot tag with a digest reference ({dst}): give a tag");
        }
        self.db()?.tag(&d.canonical(), &rec.digest)?;
        Ok(d)
    }

    /// Removes names or images. Returns human-readable lines (`Untagged: ...`, `Deleted: ...`).
    pub fn remove(&self, name: &str, force: bool) -> Result<Vec<String>> {
        let (rec, names) = self.resolve(name)?;
        let db = self.db()?;
        let mut out = Vec::new();
        let by_name = ImageRef::parse(name)
            .ok()
            .filter(|r| names.contains(&r.canonical()));
        match by_name {
            Some(r) if names.len() > 1 => {
                db.untag(&r.canonical())?;
                out.push(format!("Untagged: {r}"));
                return Ok(out);
            }
            None if names.len() > 1 && !force => bail!(ImageError::Conflict(format!(
                "image {name} is referenced by {} names ({}): remove them by name or use --force",
                names.len(),
                names
                    .iter()
                    .map(|n| familiar(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            _ => {}
        }
        for n in &names {
            out.push(format!("Untagged: {}", familiar(n)));
        }
        db.remove_image(&rec.digest)?;
        drop(db);
        out.push(format!("Deleted: {}", rec.digest));
        self.gc()?;
        Ok(out)
    }

    /// Removes dangling images (or all, with `all`) and unreferenced content.
    /// Returns (removed image digests, bytes reclaimed).
    pub fn prune(&self, all: bool) -> Result<(Vec<Digest>, u64)> {
        let db = self.db()?;
        let steps = db.intermediates()?;
        let mut removed = Vec::new();
        for (rec, names) in db.list()? {
            // Build steps are the build cache's: `apex builder prune` reclaims them.
            if all || (names.is_empty() && !steps.contains(&rec.digest)) {
                db.remove_image(&rec.digest)?;
                removed.push(rec.digest);
            }
        }
        drop(db);
        let freed = self.gc()?;
        Ok((removed, freed))
    }

    /// Deletes blobs and rootfs images no image record references. Returns bytes freed.
    pub fn gc(&self) -> Result<u64> {
        let _lock = self.gc_lock(true)?;
        let records = self.db()?.list()?;
        let mut keep: HashSet<Digest> = HashSet::new();
        let mut keep_rootfs = HashSet::new();
        for (rec, _) in &records {
            keep.extend(rec.blobs().cloned());
            keep.extend(rec.index_digest.iter().cloned());
            keep_rootfs.insert(rootfs::key(rec));
            // Containers created before rootfs images were named by layer chain still
            // point at the old name (the manifest digest): keep it while the image lives.
            keep_rootfs.insert(rec.digest.hex().to_string());
        }
        let mut freed = 0;
        for (d, size) in self.content.list()? {
            if !keep.contains(&d) {
                self.content.remove(&d)?;
                freed += size;
            }
        }
        freed += self.content.clean_ingest()?;
        freed += rootfs::gc(&self.rootfs_dir(), &keep_rootfs)?;
        Ok(freed)
    }

    /// Pushes a local image to the registry its name points at (with `credentials`, else
    /// the stored ones).
    pub async fn push(
        &self,
        name: &str,
        connect: ConnectOptions,
        progress: Option<ProgressFn>,
        credentials: Option<Credentials>,
    ) -> Result<ImageRef> {
        let (rec, _) = self.resolve(name)?;
        let r = ImageRef::parse(name)?;
        let creds = match credentials {
            Some(c) => Some(c),
            None => self.auth.get(r.registry())?,
        };
        let client = RegistryClient::connect(&r, creds, &self.connect_opts(connect)).await?;
        let emit = |p: Progress| {
            if let Some(f) = &progress {
                f(p)
            }
        };
        emit(Progress::Resolved {
            digest: rec.digest.clone(),
            layers: rec.layers.len(),
        });
        let mut blobs: Vec<Digest> = rec.layers.iter().map(|l| l.digest.clone()).collect();
        blobs.push(rec.config_digest.clone());
        for d in blobs {
            let size = self.content.size(&d).unwrap_or(0);
            emit(Progress::BlobStart {
                digest: d.clone(),
                size,
                cached: false,
            });
            let uploaded = client.push_blob(&r, &self.content, &d).await?;
            if uploaded {
                emit(Progress::BlobBytes {
                    digest: d.clone(),
                    done: size,
                });
            }
            emit(Progress::BlobDone { digest: d });
        }
        let raw = self.content.read(&rec.digest)?;
        client.push_manifest(&r, raw, &rec.media_type).await?;
        Ok(r)
    }

    /// Writes the named images as an OCI archive (tar of an OCI image layout) to `out`.
    pub fn save(&self, names: &[String], out: &Path) -> Result<()> {
        let mut images = Vec::new();
        for n in names {
            let (rec, _) = self.resolve(n)?;
            let r = ImageRef::parse(n).ok().filter(|r| r.digest().is_none());
            images.push((rec, r));
        }
        crate::archive::write(&self.content, &images, out)
    }

    /// Imports an OCI archive; returns the names (or digests) loaded.
    pub fn load(&self, input: &Path) -> Result<Vec<String>> {
        let _lease = self.gc_lock(false)?;
        let loaded = crate::archive::read(&self.content, input)?;
        let db = self.db()?;
        let mut out = Vec::new();
        for (rec, name) in loaded {
            match name {
                Some(r) => {
                    db.put(&rec, &[r.canonical()])?;
                    out.push(r.to_string());
                }
                None => {
                    db.put(&rec, &[])?;
                    out.push(rec.digest.to_string());
                }
            }
        }
        Ok(out)
    }
}

/// Builds the record of an image whose manifest and config are in `content`.
pub(crate) fn make_record(
    content: &ContentStore,
    image: &ImageManifest,
    raw: &[u8],
    digest: Digest,
    media_type: String,
    index_digest: Option<Digest>,
    repo_digests: Vec<String>,
) -> Result<ImageRecord> {
    let config_digest: Digest = image.config().digest().to_string().parse()?;
    let cfg_raw = content.read(&config_digest)?;
    let cfg: ImageConfiguration =
        serde_json::from_slice(&cfg_raw).context("parsing image config")?;
    let platform = Platform {
        os: cfg.os().to_string(),
        architecture: cfg.architecture().to_string(),
        variant: cfg.variant().clone(),
    };
    let mut layers = Vec::new();
    for l in image.layers() {
        layers.push(LayerRecord {
            digest: l.digest().to_string().parse()?,
            size: l.size(),
            media_type: l.media_type().to_string(),
        });
    }
    let size = raw.len() as u64 + cfg_raw.len() as u64 + layers.iter().map(|l| l.size).sum::<u64>();
    Ok(ImageRecord {
        digest,
        media_type,
        config_digest,
        platform: platform.to_string(),
        layers,
        size,
        created: cfg.created().clone(),
        added: chrono::Utc::now().to_rfc3339(),
        index_digest,
        repo_digests,
    })
}

/// Downloads one blob unless present; returns bytes transferred.
async fn fetch_one(
    client: &RegistryClient,
    content: &ContentStore,
    r: &ImageRef,
    d: Digest,
    size: u64,
    progress: Option<ProgressFn>,
) -> Result<u64> {
    let emit = |p: Progress| {
        if let Some(f) = &progress {
            f(p)
        }
    };
    if content.exists(&d) {
        emit(Progress::BlobStart {
            digest: d.clone(),
            size,
            cached: true,
        });
        emit(Progress::BlobDone { digest: d });
        return Ok(0);
    }
    let c = content.clone();
    let dd = d.clone();
    let mut ingest = tokio::task::spawn_blocking(move || c.ingest(&dd)).await??;
    if ingest.already_stored() {
        emit(Progress::BlobDone { digest: d });
        return Ok(0);
    }
    let start = ingest.offset();
    emit(Progress::BlobStart {
        digest: d.clone(),
        size,
        cached: false,
    });
    let pd = d.clone();
    let pg = progress.clone();
    let on_bytes = move |done: u64| {
        if let Some(f) = &pg {
            f(Progress::BlobBytes {
                digest: pd.clone(),
                done,
            })
        }
    };
    client
        .fetch_blob(r, &d, size, &mut ingest, &on_bytes)
        .await?;
    let got = ingest.offset();
    tokio::task::spawn_blocking(move || ingest.commit())
        .await?
        .with_context(|| format!("verifying {d} from {}", client.host()))?;
    emit(Progress::BlobDone { digest: d });
    Ok(got.saturating_sub(start))
}

/// Familiar form of a canonical name.
pub fn familiar(canonical: &str) -> String {
    ImageRef::parse(canonical)
        .map(|r| r.to_string())
        .unwrap_or_else(|_| canonical.to_string())
}

fn summary(rec: &ImageRecord, names: &[String]) -> ImageSummary {
    ImageSummary {
        id: rec.config_digest.to_string(),
        digest: rec.digest.to_string(),
        names: names.iter().map(|n| familiar(n)).collect(),
        platform: rec.platform.clone(),
        size: rec.size,
        created: rec.created.clone(),
    }
}
