//! Dockerfile builds (`apex build`, Docker's `POST /build`): one service both front
//! doors call.
//!
//! Each instruction makes an image in the store, as Docker's classic builder does:
//! `RUN` runs in a container of the previous step's image (a real VM, through the
//! containers service) and its changes become a layer; `COPY` and `ADD` write their
//! layer on the host from the context; every other instruction only edits the config.
//! Each step's image is recorded under a cache key (the parent image, the instruction
//! with its expanded arguments, the build arguments in scope, and for `COPY`/`ADD` the
//! content hash of the sources), so an unchanged rebuild takes every step from the
//! cache without booting anything.

mod config;
mod context;
mod copy;
mod index;
mod run;
mod stage;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use apex_build::dockerfile::{self, Dockerfile, Kind as Ins};
use apex_oci::db::ImageRecord;
use apex_oci::reference::ImageRef;
use apex_oci::ImageStore;
use serde_json::Value;

use crate::containers::Containers;
use crate::error::{Error, Result};
use crate::images::Images;
use crate::model::{BuildEvent, BuildRequest};

pub use run::BUILD_LABEL;

/// Where build progress goes.
pub type Sink = Arc<dyn Fn(BuildEvent) + Send + Sync>;

/// The build service.
pub struct Builds {
    home: PathBuf,
    containers: Arc<Containers>,
    images: Arc<Images>,
}

/// A build ready to run (see [`Builds::prepare`]); its scratch space goes with it.
pub struct Prepared {
    scratch: tempfile::TempDir,
    ctx: PathBuf,
    df: Dockerfile,
    req: BuildRequest,
}

/// The platform builds produce (the host's; cross builds are not supported).
fn host_platform() -> String {
    format!(
        "linux/{}",
        apex_oci::platform::Platform::host().architecture
    )
}

/// Runs `f` with the image store on a blocking thread.
async fn with_store<T: Send + 'static>(
    home: &Path,
    f: impl FnOnce(&ImageStore) -> anyhow::Result<T> + Send + 'static,
) -> Result<T> {
    let home = home.to_path_buf();
    crate::images::blocking(move || f(&ImageStore::open(&home)?)).await
}

impl Builds {
    /// The service, over the containers (for `RUN`) and images (for bases and results).
    pub fn new(home: &Path, containers: Arc<Containers>, images: Arc<Images>) -> Arc<Self> {
        Arc::new(Builds {
            home: home.to_path_buf(),
            containers,
            images,
        })
    }

    /// Reads and checks a build: the options, the context in the tar file `context`,
    /// and the Dockerfile. What can be wrong before any step runs fails here.
    pub async fn prepare(self: &Arc<Self>, req: BuildRequest, context: &Path) -> Result<Prepared> {
        if let Some(p) = req.platform.as_deref().filter(|p| !p.is_empty()) {
            check_platform(p)?;
        }
        for t in &req.tags {
            ImageRef::parse(t).map_err(|e| {
                Error::bad_request(format!("invalid tag {t:?}: invalid reference format: {e}"))
            })?;
        }
        let scratch = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(self.scratch_root()?)
            .map_err(|e| Error::internal(format!("creating a build directory: {e}")))?;
        let ctx = scratch.path().join("context");
        let dockerfile_name = req
            .dockerfile
            .clone()
            .unwrap_or_else(|| "Dockerfile".into());
        let text = {
            let (ctx, tar, name) = (ctx.clone(), context.to_path_buf(), dockerfile_name.clone());
            crate::images::worker(move || context::prepare(&tar, &ctx, &name)).await??
        };
        let df = dockerfile::parse(&text).map_err(|e| Error::bad_request(e.to_string()))?;
        if let Some(t) = req.target.as_deref().filter(|t| !t.is_empty()) {
            let lower = t.to_ascii_lowercase();
            if !df
                .stages
                .iter()
                .any(|s| s.name.as_deref() == Some(lower.as_str()))
            {
                return Err(Error::bad_request(format!(
                    "failed to reach build target {t} in Dockerfile"
                )));
            }
        }
        Ok(Prepared {
            scratch,
            ctx,
            df,
            req,
        })
    }

    /// Runs a prepared build, reporting to `sink`. Returns the [`BuildEvent::Result`]
    /// it also sent.
    pub async fn execute(self: &Arc<Self>, p: Prepared, sink: Sink) -> Result<BuildEvent> {
        let _lease = with_store(&self.home, |s| s.lease()).await?;
        let scratch = p.scratch.path().to_path_buf();
        let mut b = stage::Build::new(self.clone(), p.req, p.df, p.ctx, scratch, sink);
        let res = b.run().await;
        drop(p.scratch);
        res
    }

    fn scratch_root(&self) -> Result<PathBuf> {
        let dir = self.home.join("builds");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// `apex builder prune`: forgets the build cache and removes the step images only it
    /// kept. Returns (cache entries, images removed, bytes reclaimed).
    pub async fn prune(&self) -> Result<(usize, usize, u64)> {
        let in_use: std::collections::HashSet<_> = self
            .containers
            .store()
            .list()?
            .into_iter()
            .filter_map(|c| c.config.image_id.parse().ok())
            .collect();
        with_store(&self.home, move |s| s.builder_prune(&in_use)).await
    }

    /// At daemon start: removes what builds cut short by a killed daemon left behind,
    /// their step containers and scratch directories.
    pub async fn sweep(&self) {
        let steps: Vec<String> = match self.containers.store().list() {
            Ok(list) => list
                .into_iter()
                .filter(|c| c.config.labels.contains_key(BUILD_LABEL))
                .map(|c| c.id)
                .collect(),
            Err(e) => {
                tracing::warn!("listing containers: {e:#}");
                vec![]
            }
        };
        for id in steps {
            tracing::info!(
                id = &id[..12],
                "removing the container of an interrupted build step"
            );
            if let Err(e) = self.containers.remove(&id, true, true).await {
                tracing::warn!(id = &id[..12], "removing it: {e}");
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.home.join("builds")) {
            for e in rd.flatten() {
                let _ = apex_oci::unpack::remove_tree(&e.path());
            }
        }
    }
}

/// Refuses platforms other than the host's.
fn check_platform(p: &str) -> Result<()> {
    let host = host_platform();
    if p == host || p == "linux" {
        return Ok(());
    }
    Err(Error::bad_request(format!(
        "platform {p} is not supported: this host builds {host} only"
    )))
}

/// The steps a stage shows: FROM plus its instructions but ARG, which makes no image
/// (ONBUILD triggers are not counted until they are known).
fn stage_steps(df: &Dockerfile, i: usize) -> usize {
    let ins = &df.stages[i].instructions;
    1 + ins
        .iter()
        .filter(|i| !matches!(i.kind, Ins::Arg(_)))
        .count()
}

/// Stage `i`'s dependencies: stages named by its `FROM` or by `COPY --from`.
fn deps(df: &Dockerfile, i: usize, global: &BTreeMap<String, String>) -> Vec<usize> {
    let find = |name: &str| stage_ref(df, name, i);
    let mut out = Vec::new();
    let base = expand_global(&df.stages[i].base, df.escape, global);
    if let Some(j) = find(&base) {
        out.push(j);
    }
    for ins in &df.stages[i].instructions {
        if let Ins::Copy(c) = &ins.kind {
            if let Some(j) = c.from.as_deref().and_then(find) {
                out.push(j);
            }
        }
    }
    out
}

/// The stage `name` (a stage name or index) refers to, among those before `before`.
fn stage_ref(df: &Dockerfile, name: &str, before: usize) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    df.stages[..before]
        .iter()
        .position(|s| s.name.as_deref() == Some(lower.as_str()))
        .or_else(|| name.parse::<usize>().ok().filter(|&j| j < before))
}

fn expand_global(word: &str, escape: char, global: &BTreeMap<String, String>) -> String {
    apex_build::words::process_word(word, escape, &|k| global.get(k).cloned())
        .unwrap_or_else(|_| word.to_string())
}

/// A record plus its config, the state of a stage between steps.
#[derive(Clone)]
struct Image {
    rec: Option<ImageRecord>,
    cfg: Value,
}

impl Image {
    fn id(&self) -> String {
        self.rec
            .as_ref()
            .map_or_else(|| "scratch".into(), |r| r.digest.to_string())
    }
}

/// Shared state of a build's stages.
type Stages = HashMap<usize, Image>;

fn elapsed(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 100.0).round() / 100.0
}

impl Builds {
    /// Runs a build for a front door: saves the context read from `body` and prepares
    /// the build (its errors are returned), then builds in a task of its own, sending each event through `render` to the returned
    /// stream. The build stops (and its step container goes) when the client does.
    pub async fn start(
        self: &Arc<Self>,
        req: BuildRequest,
        mut body: impl tokio::io::AsyncRead + Unpin + Send,
        render: impl Fn(&BuildEvent) -> Option<bytes::Bytes> + Send + Sync + 'static,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>> {
        let tar = tempfile::Builder::new()
            .prefix("context-")
            .tempfile_in(self.scratch_root()?)
            .map_err(|e| Error::internal(format!("saving the build context: {e}")))?;
        let mut f = tokio::fs::File::from_std(
            tar.reopen()
                .map_err(|e| Error::internal(format!("saving the build context: {e}")))?,
        );
        tokio::io::copy(&mut body, &mut f)
            .await
            .map_err(|e| Error::bad_request(format!("reading the build context: {e}")))?;
        drop(f);
        let prepared = self.prepare(req, tar.path()).await?;
        drop(tar);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let render = Arc::new(render);
        let (tx2, render2) = (tx.clone(), render.clone());
        let sink: Sink = Arc::new(move |ev| {
            if let Some(b) = render2(&ev) {
                let _ = tx2.send(b);
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let res = tokio::select! {
                r = me.execute(prepared, sink) => r,
                _ = tx.closed() => {
                    tracing::info!("build cancelled: the client went away");
                    return;
                }
            };
            if let Err(e) = res {
                tracing::info!("build failed: {}", e.message());
                let ev = BuildEvent::Error {
                    message: e.message().to_string(),
                };
                if let Some(b) = render(&ev) {
                    let _ = tx.send(b);
                }
            }
        });
        Ok(rx)
    }
}
