//! The image service: the image store of the home (apex-oci) as the daemon's front doors
//! use it, with events, and with the rule that an image a container uses is not removed
//! from under it.
//!
//! The store's database is opened per operation (the CLI still opens it directly for
//! some commands and waits briefly when another process holds it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use apex_oci::db::ImageRecord;
use apex_oci::reference::ImageRef;
use apex_oci::store::{ImageSummary, ProgressFn, PullOptions, PullReport};
use apex_oci::{ImageError, ImageStore};

use crate::error::{Error, ErrorKind, Result};
use crate::events::{EventKind, Events};
use crate::store::StateStore;

/// The image service.
pub struct Images {
    home: PathBuf,
    store: Arc<StateStore>,
    events: Arc<Events>,
}

/// Maps an image-store error to the service's kinds.
pub fn image_error(e: anyhow::Error) -> Error {
    let kind = match e.downcast_ref::<ImageError>() {
        Some(ImageError::NotFoundLocally(_)) | Some(ImageError::NotFoundRemote(_)) => {
            ErrorKind::NotFound
        }
        Some(ImageError::Conflict(_)) => ErrorKind::Conflict,
        Some(ImageError::InvalidReference { .. }) | Some(ImageError::InvalidDigest(_)) => {
            ErrorKind::BadRequest
        }
        Some(ImageError::Unauthorized(_)) => ErrorKind::Forbidden,
        _ => ErrorKind::Internal,
    };
    Error::new(kind, format!("{e:#}"))
}

/// Runs blocking work off the async workers; a worker that panicked is an internal error.
pub(crate) async fn worker<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("worker failed: {e}")))
}

/// Runs blocking store work off the async workers, mapping errors.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T> {
    worker(f).await?.map_err(image_error)
}

impl Images {
    /// The images of `home`.
    pub fn new(home: &Path, store: Arc<StateStore>, events: Arc<Events>) -> Arc<Self> {
        Arc::new(Images {
            home: home.to_path_buf(),
            store,
            events,
        })
    }

    fn open(&self) -> anyhow::Result<ImageStore> {
        ImageStore::open(&self.home)
    }

    /// Every local image.
    pub async fn list(&self) -> Result<Vec<ImageSummary>> {
        let home = self.home.clone();
        blocking(move || ImageStore::open(&home)?.list()).await
    }

    /// Finds an image by name, digest or id prefix: its record and canonical names.
    pub async fn resolve(&self, name: &str) -> Result<(ImageRecord, Vec<String>)> {
        let home = self.home.clone();
        let name = name.to_string();
        blocking(move || ImageStore::open(&home)?.resolve(&name)).await
    }

    /// The image config document of a stored image.
    pub async fn config(&self, rec: &ImageRecord) -> Result<serde_json::Value> {
        let home = self.home.clone();
        let rec = rec.clone();
        blocking(move || ImageStore::open(&home)?.config_json(&rec)).await
    }

    /// apex's inspect document (Docker-like) of an image.
    pub async fn inspect(&self, name: &str) -> Result<serde_json::Value> {
        let home = self.home.clone();
        let name = name.to_string();
        blocking(move || ImageStore::open(&home)?.inspect(&name)).await
    }

    /// Adds the name `dst` to the image `src`.
    pub async fn tag(&self, src: &str, dst: &str) -> Result<ImageRef> {
        let home = self.home.clone();
        let (s, d) = (src.to_string(), dst.to_string());
        let r = blocking(move || ImageStore::open(&home)?.tag(&s, &d)).await?;
        let (rec, _) = self.resolve(dst).await?;
        self.events.emit(
            EventKind::Image,
            "tag",
            rec.config_digest.to_string(),
            [("name", r.to_string())],
        );
        Ok(r)
    }

    /// Container names that use the image with config digest `id`.
    fn users(&self, id: &str) -> Result<Vec<(String, bool)>> {
        Ok(self
            .store
            .list()?
            .into_iter()
            .filter(|c| c.config.image_id == id)
            .map(|c| {
                let running = c.state == crate::store::ContainerState::Running;
                (c.id[..12].to_string(), running)
            })
            .collect())
    }

    /// Removes a name, or the image with all its names (`force` for an image with
    /// several names). An image a container uses is refused (any container without
    /// `force`, a running one always), as Docker does. Returns `Untagged: ...` and
    /// `Deleted: ...` lines.
    pub async fn remove(&self, name: &str, force: bool) -> Result<Vec<String>> {
        let (rec, names) = self.resolve(name).await?;
        let by_name = ImageRef::parse(name)
            .ok()
            .is_some_and(|r| names.contains(&r.canonical()) && names.len() > 1);
        if !by_name {
            let id = rec.config_digest.to_string();
            let users = self.users(&id)?;
            if let Some((c, _)) = users.iter().find(|(_, running)| *running) {
                return Err(Error::conflict(format!(
                    "conflict: unable to delete {} (cannot be forced) - image is being used by running container {c}",
                    &rec.config_digest.hex()[..12]
                )));
            }
            if let Some((c, _)) = users.first().filter(|_| !force) {
                return Err(Error::conflict(format!(
                    "conflict: unable to remove repository reference \"{name}\" (must force) - container {c} is using its referenced image {}",
                    &rec.config_digest.hex()[..12]
                )));
            }
        }
        let home = self.home.clone();
        let n = name.to_string();
        let lines = blocking(move || ImageStore::open(&home)?.remove(&n, force)).await?;
        for l in &lines {
            let (action, what) = match l.split_once(": ") {
                Some(("Untagged", w)) => ("untag", w),
                Some(("Deleted", w)) => ("delete", w),
                _ => continue,
            };
            self.events.emit(
                EventKind::Image,
                action,
                rec.config_digest.to_string(),
                [("name", what.to_string())],
            );
        }
        Ok(lines)
    }

    /// Removes dangling images (every image with `all`) that no container uses, and
    /// unreferenced content. Returns the removed manifest digests and bytes freed.
    pub async fn prune(&self, all: bool) -> Result<(Vec<String>, u64)> {
        let used: std::collections::HashSet<String> = self
            .store
            .list()?
            .into_iter()
            .map(|c| c.config.image_id)
            .collect();
        let home = self.home.clone();
        let (removed, freed) = blocking(move || {
            let store = ImageStore::open(&home)?;
            let mut removed = Vec::new();
            for (rec, names) in store.resolve_all()? {
                if (all || names.is_empty()) && !used.contains(&rec.config_digest.to_string()) {
                    store.remove(&rec.digest.to_string(), true)?;
                    removed.push(rec.digest.to_string());
                }
            }
            let freed = store.gc()?;
            Ok((removed, freed))
        })
        .await?;
        for d in &removed {
            self.events.emit(EventKind::Image, "delete", d.clone(), []);
        }
        Ok((removed, freed))
    }

    /// Pulls `reference`, reporting progress to `opts.progress`.
    pub async fn pull(&self, reference: &str, opts: PullOptions) -> Result<PullReport> {
        let store = self.open().map_err(image_error)?;
        let report = store.pull(reference, opts).await.map_err(image_error)?;
        self.events.emit(
            EventKind::Image,
            "pull",
            report.name.to_string(),
            [("name", report.name.to_string())],
        );
        Ok(report)
    }

    /// Pushes a local image to its registry (with `credentials`, else the stored ones).
    pub async fn push(
        &self,
        name: &str,
        connect: apex_oci::registry::ConnectOptions,
        progress: Option<ProgressFn>,
        credentials: Option<apex_oci::auth::Credentials>,
    ) -> Result<ImageRef> {
        let store = self.open().map_err(image_error)?;
        let r = store
            .push(name, connect, progress, credentials)
            .await
            .map_err(image_error)?;
        self.events.emit(
            EventKind::Image,
            "push",
            r.to_string(),
            [("name", r.to_string())],
        );
        Ok(r)
    }

    /// Writes the named images as an archive (OCI layout plus Docker's `manifest.json`).
    pub async fn save(&self, names: Vec<String>, out: PathBuf) -> Result<()> {
        let home = self.home.clone();
        let n = names.clone();
        blocking(move || ImageStore::open(&home)?.save(&n, &out)).await?;
        for name in names {
            self.events
                .emit(EventKind::Image, "save", name.clone(), [("name", name)]);
        }
        Ok(())
    }

    /// Imports an archive (OCI or Docker's); returns the names (or digests) loaded.
    pub async fn load(&self, input: PathBuf) -> Result<Vec<String>> {
        let home = self.home.clone();
        let loaded = blocking(move || ImageStore::open(&home)?.load(&input)).await?;
        for name in &loaded {
            self.events.emit(
                EventKind::Image,
                "load",
                name.clone(),
                [("name", name.clone())],
            );
        }
        Ok(loaded)
    }
}
