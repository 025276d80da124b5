//! `apex build` (a client of apexd's `POST /v1/build`) and `apex builder prune`.
//!
//! The context directory is sent as a tar with `.dockerignore` applied, as Docker's CLI
//! does; `-` reads a tar context from stdin. Progress goes to stderr: one line per step
//! event in plain mode (`#3 [2/5] RUN make`, its output, `#3 DONE 1.2s` or
//! `#3 CACHED`), a compact live view on a terminal, nothing with `--quiet` (which
//! prints the image ID on stdout).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use apexd::model::{BuildEvent, BuildPruneReport, BuildRequest};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::container::{enc, ApiExt};
use crate::daemon::ensure_daemon;

/// How progress is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A live view on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// One line per event.
    Plain,
    /// Nothing but errors.
    Quiet,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Name and tag the image (`name:tag`). Repeatable.
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<String>,
    /// The Dockerfile (default: `CONTEXT/Dockerfile`).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// A build argument (`KEY=VALUE`, or `KEY` to take it from the environment). Repeatable.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// The stage to build.
    #[arg(long)]
    pub target: Option<String>,
    /// Ignore the build cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Pull base images even when present.
    #[arg(long)]
    pub pull: bool,
    /// Target platform (only the host's, `linux/amd64`).
    #[arg(long)]
    pub platform: Option<String>,
    /// Add a label to the image (`key=value`). Repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// The network `RUN` steps use.
    #[arg(long)]
    pub network: Option<String>,
    /// Progress output.
    #[arg(long, value_enum, default_value_t)]
    pub progress: ProgressMode,
    /// Print only the image ID.
    #[arg(short, long)]
    pub quiet: bool,
    /// Write the image ID to this file.
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// The context: a directory, or `-` for a tar on stdin.
    pub context: String,
}

#[derive(Subcommand)]
pub enum BuilderCmd {
    /// Remove the build cache.
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct PruneArgs {
    /// Do not ask for confirmation (there is none: kept for docker compatibility).
    #[arg(short, long)]
    pub force: bool,
}

fn key_values(list: &[String], what: &str, env_fallback: bool) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for kv in list {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            None if env_fallback && !kv.is_empty() => {
                if let Ok(v) = std::env::var(kv) {
                    out.insert(kv.clone(), v);
                }
            }
            _ => bail!("invalid {what} {kv:?}: use KEY=VALUE"),
        }
    }
    Ok(out)
}

/// Writes the context tar for `a` to a temporary file; returns it and the Dockerfile's
/// name inside it.
fn context_tar(a: &BuildArgs) -> Result<(tempfile::NamedTempFile, Option<String>)> {
    let mut tmp = tempfile::NamedTempFile::new().context("creating a temporary file")?;
    if a.context == "-" {
        std::io::copy(&mut std::io::stdin().lock(), &mut tmp).context("reading stdin")?;
        let name = a.file.as_ref().map(|f| f.to_string_lossy().into_owned());
        return Ok((tmp, name));
    }
    let dir = Path::new(&a.context);
    if !dir.is_dir() {
        bail!("unable to prepare context: path {:?} not found", a.context);
    }
    let dockerfile = a.file.clone().unwrap_or_else(|| dir.join("Dockerfile"));
    if !dockerfile.is_file() {
        bail!(
            "unable to prepare context: Cannot locate specified Dockerfile: {}",
            dockerfile.display()
        );
    }
    let name = apex_build::context::write_context_tar(
        dir,
        &dockerfile,
        std::io::BufWriter::new(tmp.reopen()?),
    )
    .context("packing the build context")?;
    Ok((tmp, Some(name)))
}

/// `apex build`.
pub async fn run(home: &Path, a: BuildArgs) -> Result<()> {
    let started = Instant::now();
    let (tar, dockerfile) = tokio::task::block_in_place(|| context_tar(&a))?;
    let req = BuildRequest {
        tags: a.tags.clone(),
        dockerfile,
        build_args: key_values(&a.build_args, "build argument", true)?,
        target: a.target.clone(),
        no_cache: a.no_cache,
        pull: a.pull,
        labels: key_values(&a.labels, "label", false)?,
        platform: a.platform.clone(),
        network: a.network.clone(),
    };
    let client = ensure_daemon(home).await?;
    let body = tokio::fs::File::open(tar.path()).await?;
    let path = format!("/v1/build?options={}", enc(&serde_json::to_string(&req)?));
    let mut lines = client
        .with_timeout(None)
        .post_stream_lines(&path, body)
        .await
        .api()?;
    let mode = match (a.quiet, a.progress) {
        (true, _) | (_, ProgressMode::Quiet) => ProgressMode::Quiet,
        (_, ProgressMode::Auto) if std::io::stderr().is_terminal() => ProgressMode::Auto,
        _ => ProgressMode::Plain,
    };
    let mut view = View::new(mode);
    let mut result = None;
    while let Some(line) = lines.next_line().await.api()? {
        let ev: BuildEvent = serde_json::from_str(&line)
            .with_context(|| format!("bad progress line from apexd: {line}"))?;
        match &ev {
            BuildEvent::Error { message } => {
                view.failed();
                return Err(anyhow!("{message}"));
            }
            BuildEvent::Result { .. } => result = Some(ev.clone()),
            _ => {}
        }
        view.show(&ev);
    }
    let Some(BuildEvent::Result {
        id,
        tags,
        cached,
        steps,
        ..
    }) = result
    else {
        bail!("apexd closed the build without a result");
    };
    if let Some(f) = &a.iidfile {
        std::fs::write(f, &id).with_context(|| format!("writing {}", f.display()))?;
    }
    if mode == ProgressMode::Quiet {
        println!("{id}");
    } else {
        eprintln!("writing image {id} done");
        for t in &tags {
            eprintln!("naming to {t} done");
        }
        eprintln!(
            "Built {} in {:.2}s ({cached} of {steps} steps cached)",
            &id[..std::cmp::min(id.len(), 19)],
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Shows progress events.
struct View {
    mode: ProgressMode,
    multi: MultiProgress,
    bars: BTreeMap<usize, ProgressBar>,
    cached: std::collections::HashSet<usize>,
    /// Output of the current step, for a failure in the live view.
    tail: Vec<String>,
}

impl View {
    fn new(mode: ProgressMode) -> Self {
        View {
            mode,
            multi: MultiProgress::new(),
            bars: BTreeMap::new(),
            cached: Default::default(),
            tail: Vec::new(),
        }
    }

    fn show(&mut self, ev: &BuildEvent) {
        match self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Plain => self.plain(ev),
            ProgressMode::Auto => self.live(ev),
        }
    }

    fn plain(&mut self, ev: &BuildEvent) {
        match ev {
            BuildEvent::Step { n, .. } => eprintln!("#{n} {}", title(ev)),
            BuildEvent::Output { n, data } => {
                for l in data.lines() {
                    eprintln!("#{n} {l}");
                }
            }
            BuildEvent::Cached { n } => {
                self.cached.insert(*n);
                eprintln!("#{n} CACHED");
            }
            BuildEvent::Done { n, seconds, .. } if !self.cached.contains(n) => {
                eprintln!("#{n} DONE {seconds:.1}s")
            }
            _ => {}
        }
    }

    fn live(&mut self, ev: &BuildEvent) {
        match ev {
            BuildEvent::Step { n, .. } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix} {wide_msg:.dim}")
                        .expect("valid template"),
                );
                bar.set_prefix(format!("#{n} {}", title(ev)));
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                self.tail.clear();
                self.bars.insert(*n, bar);
            }
            BuildEvent::Output { n, data } => {
                self.tail.extend(data.lines().map(String::from));
                let keep = self.tail.len().saturating_sub(10);
                self.tail.drain(..keep);
                if let (Some(b), Some(last)) = (self.bars.get(n), self.tail.last()) {
                    b.set_message(last.clone());
                }
            }
            BuildEvent::Cached { n } => {
                self.cached.insert(*n);
            }
            BuildEvent::Done { n, seconds, .. } => {
                if let Some(b) = self.bars.remove(n) {
                    let what = if self.cached.contains(n) {
                        "CACHED".to_string()
                    } else {
                        format!("{seconds:.1}s")
                    };
                    b.set_style(ProgressStyle::with_template("✔ {prefix} {msg}").expect("valid"));
                    b.finish_with_message(what);
                }
            }
            _ => {}
        }
    }

    /// Ends the live view after an error, leaving the failed step's last output.
    fn failed(&mut self) {
        for (_, b) in std::mem::take(&mut self.bars) {
            b.set_style(ProgressStyle::with_template("✘ {prefix}").expect("valid"));
            b.finish();
        }
        if self.mode == ProgressMode::Auto {
            for l in &self.tail {
                eprintln!("  {l}");
            }
        }
    }
}

/// `[stage 2/5] RUN make` for a step event.
fn title(ev: &BuildEvent) -> String {
    let BuildEvent::Step {
        stage,
        pos,
        stage_total,
        text,
        ..
    } = ev
    else {
        return String::new();
    };
    let stage = stage
        .as_deref()
        .map(|s| format!("{s} "))
        .unwrap_or_default();
    format!("[{stage}{pos}/{stage_total}] {text}")
}

/// `apex builder`.
pub async fn builder(home: &Path, cmd: BuilderCmd) -> Result<()> {
    let BuilderCmd::Prune(_) = cmd;
    let client = ensure_daemon(home).await?;
    let r: BuildPruneReport = client.post("/v1/build/prune").await.api()?;
    println!(
        "Deleted build cache objects: {} ({} images)",
        r.cache_entries, r.images_deleted
    );
    println!(
        "Total reclaimed space: {}",
        crate::format::size(r.space_reclaimed)
    );
    Ok(())
}
