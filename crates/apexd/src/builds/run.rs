//! `RUN`: a container of the step's image (a VM like any other, on the build's network)
//! is created through the containers service with the agent's `pause` tool as its main
//! process; the command runs in it as an exec, its output streamed to the build. What
//! it changed becomes a layer in the same VM: the agent's `layer-diff` tool reads the
//! writable layer's overlay upper directory, and the tar it writes is compressed into
//! the content store as it arrives. One VM boot per step. The container is removed
//! whatever happens, also when the client goes away mid-step.

use std::sync::Arc;

use apex_agent_proto::api::tools;
use apex_oci::commit::NewLayer;
use apex_shim::stream::{read_frame, Exit, Kind};

use crate::containers::Containers;
use crate::error::{Error, Result};
use crate::model::{CreateRequest, ExecRequest};

/// The label that marks a build step's container.
pub const BUILD_LABEL: &str = "apex.build.step";

/// One `RUN` to execute.
#[derive(Debug, Clone)]
pub struct RunStep {
    /// The image it runs on (a manifest digest).
    pub image: String,
    /// The command (the shell already applied to a shell form).
    pub argv: Vec<String>,
    /// Extra environment: the build arguments in scope.
    pub env: Vec<String>,
    /// The network (`None`: the default one).
    pub network: Option<String>,
    /// Times in the layer are clamped to this Unix time.
    pub epoch: u64,
    /// What the step is, for the container's label.
    pub text: String,
}

/// How a `RUN` ended.
#[derive(Debug)]
pub enum RunOutcome {
    /// It succeeded; the layer of its changes (`None`: it changed nothing).
    Done(Option<NewLayer>),
    /// It exited with this non-zero code.
    Failed(i32),
}

/// Removes the step's container: [`Cleanup::remove`] when the step ends, or on drop
/// when the build is dropped mid-step (the client went away).
struct Cleanup {
    containers: Arc<Containers>,
    id: Option<String>,
}

impl Cleanup {
    async fn remove(mut self) {
        if let Some(id) = self.id.take() {
            remove(&self.containers, &id).await;
        }
    }
}

async fn remove(containers: &Containers, id: &str) {
    if let Err(e) = containers.remove(id, true, true).await {
        tracing::warn!(id = &id[..12], "removing a build step's container: {e}");
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let c = self.containers.clone();
            tokio::spawn(async move { remove(&c, &id).await });
        }
    }
}

/// Runs `step`, passing its output (`Kind::Stdout`/`Kind::Stderr`) to `output`.
pub async fn run(
    containers: &Arc<Containers>,
    step: RunStep,
    mut output: impl FnMut(Kind, &[u8]),
) -> Result<RunOutcome> {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(BUILD_LABEL.to_string(), step.text.clone());
    let created = containers
        .create(CreateRequest {
            image: step.image.clone(),
            build_step: true,
            command: vec![tools::PAUSE.into()],
            entrypoint: Some(vec![]),
            network: step.network.clone(),
            labels,
            ..Default::default()
        })
        .await?;
    let cleanup = Cleanup {
        containers: containers.clone(),
        id: Some(created.id.clone()),
    };
    let res = in_container(containers, &created.id, &step, &mut output).await;
    cleanup.remove().await;
    res
}

async fn in_container(
    containers: &Arc<Containers>,
    id: &str,
    step: &RunStep,
    output: &mut impl FnMut(Kind, &[u8]),
) -> Result<RunOutcome> {
    containers.start(id, false).await?;
    let exec = containers.exec_create(
        id,
        ExecRequest {
            command: step.argv.clone(),
            env: step.env.clone(),
            ..Default::default()
        },
    )?;
    let mut stream = containers.exec_start(&exec.id).await?;
    let exit = loop {
        match read_frame(&mut stream).await {
            Ok(Some(f)) => match f.kind {
                Kind::Stdout | Kind::Stderr => output(f.kind, &f.payload),
                Kind::Exit => break f.parse::<Exit>().unwrap_or_default(),
                _ => {}
            },
            Ok(None) | Err(_) => {
                return Err(Error::internal(
                    "the step's container helper closed the connection",
                ))
            }
        }
    };
    if let Some(e) = exit.error {
        return Err(Error::bad_request(e));
    }
    if exit.exit_code != 0 {
        return Ok(RunOutcome::Failed(exit.exit_code));
    }
    diff(containers, id, step.epoch).await.map(RunOutcome::Done)
}

/// The layer of what the container `id` changed (`None` if nothing), read while its
/// main process idles: the step's command has ended, so nothing writes any more.
async fn diff(containers: &Arc<Containers>, id: &str, epoch: u64) -> Result<Option<NewLayer>> {
    let args = [tools::LAYER_DIFF, "rw/upper", "lower", &epoch.to_string()]
        .map(String::from)
        .to_vec();
    let run = containers
        .run_tool_in(id, args, false, Some(tools::LAYER_DIFF_ROOT.into()))
        .await?;
    let home = containers.home().to_path_buf();
    let crate::containers::tools::ToolRun { stdout, done, .. } = run;
    let layer = crate::images::worker(move || -> anyhow::Result<NewLayer> {
        let store = apex_oci::ImageStore::open(&home)?;
        let mut reader = tokio_util::io::SyncIoBridge::new(stdout);
        let layer = store.write_layer(&mut reader);
        // Drain what is left so that the tool's VM can go.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
        layer
    })
    .await?;
    let (code, stderr) = done
        .await
        .unwrap_or((255, "the layer tool was interrupted".into()));
    if code != 0 {
        return Err(Error::internal(format!(
            "reading the step's changes failed (exit code {code}): {}",
            stderr.trim()
        )));
    }
    let layer = layer.map_err(|e| Error::internal(format!("storing the step's layer: {e:#}")))?;
    Ok((layer.diff_id != apex_oci::digest::Digest::of(&[0u8; 1024])).then_some(layer))
}
