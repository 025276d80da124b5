//! One build: its stages in dependency order, each instruction a step that is taken
//! from the cache or executed, and the result tagged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use apex_build::dockerfile::{
    Cmd, CopyArgs, Dockerfile, Healthcheck, Heredoc, Instruction, Kind as Ins,
};
use apex_build::words::{process_word, process_words};
use apex_oci::commit::NewLayer;
use apex_shim::stream::Kind as Stream;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::copy::{self, CopySpec, Source};
use super::index::ImageIndex;
use super::run::{self, RunOutcome, RunStep};
use super::{
    check_platform, config, deps, elapsed, expand_global, host_platform, stage_ref, stage_steps,
    with_store, Builds, Image, Sink, Stages,
};
use crate::error::{Error, Result};
use crate::model::{BuildEvent, BuildRequest};

/// How many output lines a failed `RUN` repeats in its error.
const ERROR_TAIL_LINES: usize = 10;

/// A build in progress.
pub(super) struct Build {
    svc: Arc<Builds>,
    req: BuildRequest,
    df: Dockerfile,
    /// The extracted context.
    ctx: PathBuf,
    /// Scratch space of this build.
    scratch: PathBuf,
    sink: Sink,
    /// Values of the ARGs declared before the first FROM.
    global: BTreeMap<String, String>,
    stages: Stages,
    /// Step counter (`#N`), total steps, steps from the cache.
    n: usize,
    total: usize,
    cached: usize,
    /// Creation time written into configs.
    created: String,
    /// Times in `RUN` layers are clamped to this (`SOURCE_DATE_EPOCH`, else 0).
    epoch: u64,
    /// Unpacked images for `COPY --from`, by manifest digest.
    unpacked: HashMap<String, PathBuf>,
    scratch_files: usize,
    /// Base images this build pulled.
    pulled: std::collections::HashSet<String>,
}

/// A stage between steps.
struct StageState {
    img: Image,
    /// ARGs declared in this stage: name -> value (`None`: declared without a value).
    args: BTreeMap<String, Option<String>>,
    name: Option<String>,
    pos: usize,
    total: usize,
    /// `CMD` was set in this stage (a later `ENTRYPOINT` keeps it).
    cmd_set: bool,
}

impl StageState {
    /// Expands words with the stage's environment, then its ARGs.
    fn lookup(&self) -> impl Fn(&str) -> Option<String> {
        let env = config::env(&self.img.cfg);
        let args = self.args.clone();
        move |k: &str| {
            config::lookup(&env, k)
                .map(String::from)
                .or_else(|| args.get(k).cloned().flatten())
        }
    }

    /// ARG values as `KEY=value`, for `RUN`'s environment (an ENV of the same name wins).
    fn args_env(&self) -> Vec<String> {
        let env = config::env(&self.img.cfg);
        self.args
            .iter()
            .filter_map(|(k, v)| Some((k, v.as_ref()?)))
            .filter(|(k, _)| config::lookup(&env, k).is_none())
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}

/// The platform arguments every Dockerfile may declare without a value.
fn platform_args() -> BTreeMap<String, String> {
    let p = host_platform();
    let arch = p.trim_start_matches("linux/").to_string();
    [
        ("BUILDPLATFORM", p.clone()),
        ("TARGETPLATFORM", p),
        ("BUILDOS", "linux".into()),
        ("TARGETOS", "linux".into()),
        ("BUILDARCH", arch.clone()),
        ("TARGETARCH", arch),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn word_err(ins: &Instruction, e: impl std::fmt::Display) -> Error {
    Error::bad_request(format!("Dockerfile line {}: {e}", ins.line))
}

fn hash(v: &Value) -> String {
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

impl Build {
    pub(super) fn new(
        svc: Arc<Builds>,
        req: BuildRequest,
        df: Dockerfile,
        ctx: PathBuf,
        scratch: PathBuf,
        sink: Sink,
    ) -> Self {
        let epoch = req
            .build_args
            .get("SOURCE_DATE_EPOCH")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let created = match req.build_args.get("SOURCE_DATE_EPOCH") {
            Some(_) => chrono::DateTime::from_timestamp(epoch as i64, 0)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            None => chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        };
        Build {
            svc,
            req,
            df,
            ctx,
            scratch,
            sink,
            global: BTreeMap::new(),
            stages: HashMap::new(),
            n: 0,
            total: 0,
            cached: 0,
            created,
            epoch,
            unpacked: HashMap::new(),
            scratch_files: 0,
            pulled: Default::default(),
        }
    }

    /// Runs the build; returns the result event (also sent).
    pub(super) async fn run(&mut self) -> Result<BuildEvent> {
        let mut global = platform_args();
        for ins in &self.df.global_args {
            if let Ins::Arg(decls) = &ins.kind {
                for (name, default) in decls {
                    let v = match (self.req.build_args.get(name), default) {
                        (Some(v), _) => Some(v.clone()),
                        (None, Some(d)) => Some(
                            process_word(d, self.df.escape, &|k| global.get(k).cloned())
                                .map_err(|e| word_err(ins, e))?,
                        ),
                        (None, None) => None,
                    };
                    if let Some(v) = v {
                        global.insert(name.clone(), v);
                    }
                }
            }
        }
        self.global = global;
        // Builds::prepare checked that a named target exists.
        let target = self
            .req
            .target
            .as_deref()
            .map(str::to_ascii_lowercase)
            .and_then(|t| {
                self.df
                    .stages
                    .iter()
                    .position(|s| s.name.as_deref() == Some(&t))
            })
            .unwrap_or(self.df.stages.len() - 1);
        let mut needed = BTreeSet::new();
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if needed.insert(i) {
                todo.extend(deps(&self.df, i, &self.global));
            }
        }
        self.total = needed.iter().map(|&i| stage_steps(&self.df, i)).sum();
        for &i in &needed {
            let img = self.stage(i).await?;
            self.stages.insert(i, img);
        }
        let mut img = self.stages[&target].clone();
        if !self.req.labels.is_empty() || img.rec.is_none() {
            let mut cfg = img.cfg.clone();
            for (k, v) in &self.req.labels {
                config::set_label(&mut cfg, k, v);
            }
            let key = hash(&json!({"parent": img.id(), "labels": self.req.labels}));
            img = match self.cached(&key).await? {
                Some(hit) => hit,
                None => {
                    self.commit(&img, &key, cfg, "LABEL (build options)", None)
                        .await?
                }
            };
        }
        let rec = img.rec.clone().expect("committed");
        let tags: Vec<String> = (self.req.tags.iter())
            .map(|t| match apex_oci::reference::ImageRef::parse(t) {
                Ok(r) => apex_oci::store::familiar(&r.canonical()),
                Err(_) => t.clone(),
            })
            .collect();
        let r2 = rec.clone();
        with_store(&self.svc.home, move |s| s.build_result(&r2)).await?;
        for t in &tags {
            self.svc.images.tag(&rec.digest.to_string(), t).await?;
        }
        let ev = BuildEvent::Result {
            id: rec.config_digest.to_string(),
            digest: rec.digest.to_string(),
            tags,
            cached: self.cached,
            steps: self.n,
        };
        (self.sink)(ev.clone());
        Ok(ev)
    }

    fn begin(&mut self, st: &mut StageState, text: &str) -> (usize, Instant) {
        self.n += 1;
        st.pos += 1;
        (self.sink)(BuildEvent::Step {
            n: self.n,
            total: self.total,
            stage: st.name.clone(),
            pos: st.pos,
            stage_total: st.total,
            text: text.to_string(),
        });
        (self.n, Instant::now())
    }

    fn done(&self, n: usize, t: Instant, img: &Image) {
        (self.sink)(BuildEvent::Done {
            n,
            seconds: elapsed(t),
            id: img
                .rec
                .as_ref()
                .map(|r| r.config_digest.to_string())
                .unwrap_or_default(),
        });
    }

    /// The image a step with `key` made, unless `--no-cache`.
    async fn cached(&mut self, key: &str) -> Result<Option<Image>> {
        if self.req.no_cache {
            return Ok(None);
        }
        let key = key.to_string();
        let hit = with_store(&self.svc.home, move |s| {
            let Some(rec) = s.cache_lookup(&key)? else {
                return Ok(None);
            };
            let cfg = s.config_json(&rec)?;
            Ok(Some(Image {
                rec: Some(rec),
                cfg,
            }))
        })
        .await?;
        if hit.is_some() {
            self.cached += 1;
        }
        Ok(hit)
    }

    /// Stores a step's image (its config gets the history entry) under `key`.
    async fn commit(
        &self,
        parent: &Image,
        key: &str,
        mut cfg: Value,
        created_by: &str,
        layer: Option<NewLayer>,
    ) -> Result<Image> {
        config::add_history(&mut cfg, &self.created, created_by, layer.is_none());
        let (base, key) = (parent.rec.clone(), key.to_string());
        // The stored config (with the new layer's diff ID), read back in the same trip.
        let (rec, cfg) = with_store(&self.svc.home, move |s| {
            let rec = s.commit(base.as_ref(), cfg, layer.as_ref())?;
            s.cache_record(&key, &rec, true)?;
            let cfg = s.config_json(&rec)?;
            Ok((rec, cfg))
        })
        .await?;
        Ok(Image {
            rec: Some(rec),
            cfg,
        })
    }

    /// Builds stage `i`.
    async fn stage(&mut self, i: usize) -> Result<Image> {
        let stage = self.df.stages[i].clone();
        let base = expand_global(&stage.base, self.df.escape, &self.global);
        if let Some(p) = &stage.platform {
            check_platform(&expand_global(p, self.df.escape, &self.global))?;
        }
        let mut st = StageState {
            img: Image {
                rec: None,
                cfg: config::scratch(),
            },
            args: BTreeMap::new(),
            name: stage.name.clone(),
            pos: 0,
            total: stage_steps(&self.df, i),
            cmd_set: false,
        };
        let (n, t) = self.begin(&mut st, &format!("FROM {base}"));
        st.img = if base == "scratch" {
            st.img.clone()
        } else if let Some(j) = stage_ref(&self.df, &base, i) {
            self.stages[&j].clone()
        } else {
            self.base_image(&base).await?
        };
        if !self.pulled.contains(&base) {
            // Nothing was fetched: the base was already there (as BuildKit reports it).
            (self.sink)(BuildEvent::Cached { n });
            self.cached += 1;
        }
        self.done(n, t, &st.img);
        let triggers = config::strings(&st.img.cfg["config"]["OnBuild"]);
        let mut instructions = Vec::new();
        if !triggers.is_empty() {
            config::section(&mut st.img.cfg).remove("OnBuild");
            for t in &triggers {
                let df = apex_build::dockerfile::parse(&format!("FROM scratch\n{t}\n"))
                    .map_err(|e| Error::bad_request(format!("ONBUILD trigger {t:?}: {e}")))?;
                instructions.extend(df.stages[0].instructions.iter().cloned());
            }
            st.total += instructions.len();
            self.total += instructions.len();
        }
        instructions.extend(stage.instructions.iter().cloned());
        for ins in &instructions {
            self.step(&mut st, ins).await?;
        }
        Ok(st.img)
    }

    /// The image `FROM name` names: local, or pulled (always with `--pull`).
    async fn base_image(&mut self, name: &str) -> Result<Image> {
        let images = self.svc.images.clone();
        let rec = match (self.req.pull, images.resolve(name).await) {
            (false, Ok((rec, _))) => rec,
            _ => {
                self.pulled.insert(name.to_string());
                let opts = apex_oci::store::PullOptions::default();
                images
                    .pull(name, opts)
                    .await
                    .map_err(|e| {
                        Error::new(
                            e.kind(),
                            format!("failed to resolve base image {name}: {}", e.message()),
                        )
                    })?
                    .record
            }
        };
        let cfg = images.config(&rec).await?;
        Ok(Image {
            rec: Some(rec),
            cfg,
        })
    }

    /// One instruction.
    async fn step(&mut self, st: &mut StageState, ins: &Instruction) -> Result<()> {
        let esc = self.df.escape;
        let word = |st: &StageState, w: &str| -> Result<String> {
            process_word(w, esc, &st.lookup()).map_err(|e| word_err(ins, e))
        };
        let words = |st: &StageState, w: &str| -> Result<Vec<String>> {
            process_words(w, esc, &st.lookup()).map_err(|e| word_err(ins, e))
        };
        if let Ins::Arg(decls) = &ins.kind {
            // ARG changes no image (and is no step): it only brings a value into scope.
            for (name, default) in decls {
                let v = match (self.req.build_args.get(name), default) {
                    (Some(v), _) => Some(v.clone()),
                    (None, Some(d)) => Some(word(st, d)?),
                    (None, None) => self.global.get(name).cloned(),
                };
                st.args.insert(name.clone(), v);
            }
            return Ok(());
        }
        let mut cfg = st.img.cfg.clone();
        let created_by = ins.text.clone();
        match &ins.kind {
            Ins::Run { cmd, heredocs, .. } => return self.run_step(st, ins, cmd, heredocs).await,
            Ins::Copy(c) => return self.copy_step(st, ins, c, false).await,
            Ins::Add(c) => return self.copy_step(st, ins, c, true).await,
            Ins::Env(pairs) => {
                for (k, v) in pairs {
                    let v = word(st, v)?;
                    // Every word sees the values from before the instruction, as in Docker.
                    config::set_env(&mut cfg, k, &v);
                }
            }
            Ins::Workdir(w) => {
                let w = word(st, w)?;
                let cur = cfg["config"]["WorkingDir"]
                    .as_str()
                    .unwrap_or("/")
                    .to_string();
                let full = if w.starts_with('/') {
                    w
                } else {
                    format!("{}/{w}", cur.trim_end_matches('/'))
                };
                config::section(&mut cfg).insert("WorkingDir".into(), json!(full));
            }
            Ins::User(u) => {
                config::section(&mut cfg).insert("User".into(), json!(word(st, u)?));
            }
            Ins::Expose(ports) => {
                for p in ports {
                    for p in words(st, p)? {
                        let (port, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                        config::add_to_set(&mut cfg, "ExposedPorts", &format!("{port}/{proto}"));
                    }
                }
            }
            Ins::Entrypoint(c) => {
                let argv = self.command(&cfg, c);
                let sec = config::section(&mut cfg);
                sec.insert("Entrypoint".into(), json!(argv));
                if !st.cmd_set {
                    sec.insert("Cmd".into(), Value::Null);
                }
            }
            Ins::Cmd(c) => {
                let argv = self.command(&cfg, c);
                config::section(&mut cfg).insert("Cmd".into(), json!(argv));
                st.cmd_set = true;
            }
            Ins::Label(pairs) => {
                for (k, v) in pairs {
                    config::set_label(&mut cfg, &word(st, k)?, &word(st, v)?);
                }
            }
            Ins::Volume(vols) => {
                for v in vols {
                    for v in words(st, v)? {
                        config::add_to_set(&mut cfg, "Volumes", &v);
                    }
                }
            }
            Ins::StopSignal(s) => {
                config::section(&mut cfg).insert("StopSignal".into(), json!(word(st, s)?));
            }
            Ins::Healthcheck(h) => {
                config::section(&mut cfg).insert("Healthcheck".into(), healthcheck(h));
            }
            Ins::Onbuild(inner) => {
                let mut list = config::strings(&cfg["config"]["OnBuild"]);
                list.push(inner.text.clone());
                config::section(&mut cfg).insert("OnBuild".into(), json!(list));
            }
            Ins::Shell(sh) => {
                config::section(&mut cfg).insert("Shell".into(), json!(sh));
            }
            Ins::Maintainer(m) => cfg["author"] = json!(m),
            Ins::Arg(_) => unreachable!("handled above"),
        }
        let (n, t) = self.begin(st, &ins.text);
        let key = hash(
            &json!({"parent": st.img.id(), "config": cfg["config"], "author": cfg["author"], "by": created_by}),
        );
        let img = match self.cached(&key).await? {
            Some(hit) => {
                (self.sink)(BuildEvent::Cached { n });
                hit
            }
            None => self.commit(&st.img, &key, cfg, &created_by, None).await?,
        };
        st.img = img;
        self.done(n, t, &st.img);
        Ok(())
    }

    /// A command as argv: exec form as is, shell form through the image's shell.
    fn command(&self, cfg: &Value, c: &Cmd) -> Vec<String> {
        match c {
            Cmd::Exec(v) => v.clone(),
            Cmd::Shell(s) => {
                let mut argv = config::shell(cfg);
                argv.push(s.clone());
                argv
            }
        }
    }

    async fn run_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        cmd: &Cmd,
        heredocs: &[Heredoc],
    ) -> Result<()> {
        let argv = match (cmd, heredocs) {
            (_, []) => self.command(&st.img.cfg, cmd),
            (Cmd::Shell(s), [h]) if s.trim_start().starts_with("<<") => {
                let mut argv = config::shell(&st.img.cfg);
                argv.push(h.content.clone());
                argv
            }
            _ => {
                return Err(Error::bad_request(format!(
                "Dockerfile line {}: only a RUN whose whole command is one heredoc is supported",
                ins.line
            )))
            }
        };
        let (n, t) = self.begin(st, &ins.text);
        let env = st.args_env();
        let key = hash(
            &json!({"parent": st.img.id(), "run": argv, "env": env, "network": self.req.network}),
        );
        if let Some(hit) = self.cached(&key).await? {
            (self.sink)(BuildEvent::Cached { n });
            st.img = hit;
            self.done(n, t, &st.img);
            return Ok(());
        }
        let Some(rec) = st.img.rec.clone() else {
            return Err(Error::bad_request(format!(
                "Dockerfile line {}: RUN needs a base image with a shell (the stage is FROM scratch with no files)",
                ins.line
            )));
        };
        let tail = Arc::new(Mutex::new(Vec::<String>::new()));
        let (sink, tail2) = (self.sink.clone(), tail.clone());
        let step = RunStep {
            image: rec.digest.to_string(),
            argv: argv.clone(),
            env,
            network: self.req.network.clone(),
            epoch: self.epoch,
            text: ins.text.clone(),
        };
        let outcome = run::run(&self.svc.containers, step, move |_: Stream, data: &[u8]| {
            let text = String::from_utf8_lossy(data).into_owned();
            let mut t = tail2.lock().unwrap_or_else(|e| e.into_inner());
            t.extend(text.lines().map(String::from));
            let extra = t.len().saturating_sub(ERROR_TAIL_LINES);
            t.drain(..extra);
            sink(BuildEvent::Output { n, data: text });
        })
        .await?;
        match outcome {
            RunOutcome::Failed(code) => {
                let lines = tail.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
                let mut msg = format!(
                    "The command '{}' returned a non-zero code: {code}",
                    argv.join(" ")
                );
                if !lines.is_empty() {
                    msg.push_str(&format!("\nlast output lines:\n{lines}"));
                }
                Err(Error::new(crate::error::ErrorKind::BadRequest, msg))
            }
            RunOutcome::Done(layer) => {
                let cfg = st.img.cfg.clone();
                st.img = self
                    .commit(
                        &st.img,
                        &key,
                        cfg,
                        &format!("RUN {}", argv.join(" ")),
                        layer,
                    )
                    .await?;
                self.done(n, t, &st.img);
                Ok(())
            }
        }
    }

    async fn copy_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        c: &CopyArgs,
        add: bool,
    ) -> Result<()> {
        let esc = self.df.escape;
        let lookup = st.lookup();
        let word = |w: &str| process_word(w, esc, &lookup).map_err(|e| word_err(ins, e));
        let dest = word(&c.dest)?;
        let chown = c.chown.as_deref().map(word).transpose()?;
        let mode = c
            .chmod
            .as_deref()
            .map(|m| {
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| {
                        word_err(ins, format!("invalid chmod {m:?}: use octal, like 755"))
                    })
            })
            .transpose()?;
        let (n, t) = self.begin(st, &ins.text);
        // The source root: the context, another stage, an image, or heredocs/URLs.
        let (root, from_id, what) = match c.from.as_deref() {
            None => (self.ctx.clone(), None, "build context"),
            Some(f) => {
                let f = word(f)?;
                let img = match stage_ref(&self.df, &f, self.df.stages.len()) {
                    Some(j) => self.stages.get(&j).cloned().ok_or_else(|| {
                        word_err(
                            ins,
                            format!("stage {f} must be built before it is copied from"),
                        )
                    })?,
                    None => self.base_image(&f).await?,
                };
                let root = self.unpack(&img).await?;
                (root, Some(img.id()), "source image")
            }
        };
        let mut srcs: Vec<String> = Vec::new();
        for s in &c.srcs {
            srcs.push(word(s)?);
        }
        let mut sources: Vec<Source> = Vec::new();
        let mut local = Vec::new();
        for s in srcs {
            if add && (s.starts_with("http://") || s.starts_with("https://")) {
                sources.push(self.download(&s).await?);
            } else {
                local.push(s);
            }
        }
        for h in &c.heredocs {
            sources.push(self.heredoc_file(h, &st.lookup())?);
        }
        // Local sources are resolved (globs expanded) and everything hashed in one trip.
        let (root2, verb) = (root.clone(), if add { "ADD" } else { "COPY" });
        let (sources, content) = crate::images::worker(move || {
            if !local.is_empty() {
                let found = copy::resolve_sources(&root2, &local, what)
                    .map_err(|e| Error::bad_request(format!("{verb} failed: {e}")))?;
                sources.extend(found);
            }
            let content = copy::hash_sources(&sources)
                .map_err(|e| Error::internal(format!("reading sources: {e}")))?;
            Ok::<_, Error>((sources, content))
        })
        .await??;
        // Several sources (globs included) need a directory as the destination.
        let many = sources.len() > 1;
        let workdir = st.img.cfg["config"]["WorkingDir"]
            .as_str()
            .unwrap_or("/")
            .to_string();
        let key = hash(&json!({
            "parent": st.img.id(), "add": add, "content": content, "dest": dest, "workdir": workdir,
            "chown": chown, "chmod": mode, "from": from_id,
        }));
        if let Some(hit) = self.cached(&key).await? {
            (self.sink)(BuildEvent::Cached { n });
            st.img = hit;
            self.done(n, t, &st.img);
            return Ok(());
        }
        let owner = match &chown {
            Some(spec) => Some(
                self.owner(&st.img, spec)
                    .await
                    .map_err(|e| word_err(ins, e))?,
            ),
            None => None,
        };
        let spec = CopySpec {
            dest: dest.clone(),
            workdir,
            owner,
            mode,
            extract: add,
            many,
        };
        let (home, base, tar_path) = (
            self.svc.home.clone(),
            st.img.rec.clone(),
            self.scratch.join("copy.tar"),
        );
        let layer = crate::images::worker(move || -> Result<NewLayer> {
            let store = apex_oci::ImageStore::open(&home).map_err(crate::images::image_error)?;
            let index =
                ImageIndex::of_image(&store, base.as_ref()).map_err(crate::images::image_error)?;
            let f = std::fs::File::create(&tar_path).map_err(|e| Error::internal(e.to_string()))?;
            copy::write_layer(&spec, &sources, &index, std::io::BufWriter::new(f))
                .map_err(Error::bad_request)?;
            let f = std::fs::File::open(&tar_path).map_err(|e| Error::internal(e.to_string()))?;
            let layer = store
                .write_layer(std::io::BufReader::new(f))
                .map_err(crate::images::image_error);
            let _ = std::fs::remove_file(&tar_path);
            layer
        })
        .await??;
        let cfg = st.img.cfg.clone();
        let by = format!("{verb} {}", ins.text.split_once(' ').map_or("", |x| x.1));
        st.img = self.commit(&st.img, &key, cfg, &by, Some(layer)).await?;
        self.done(n, t, &st.img);
        Ok(())
    }

    /// The files of `img`, unpacked once per build for `COPY --from`.
    async fn unpack(&mut self, img: &Image) -> Result<PathBuf> {
        let id = img.id();
        if let Some(p) = self.unpacked.get(&id) {
            return Ok(p.clone());
        }
        let dir = self.scratch.join(format!("from-{}", self.unpacked.len()));
        let (home, rec, d) = (self.svc.home.clone(), img.rec.clone(), dir.clone());
        with_store(&home, move |s| {
            std::fs::create_dir_all(&d)?;
            for l in rec.iter().flat_map(|r| r.layers.iter()) {
                apex_oci::unpack::apply_layer(&d, apex_oci::unpack::open_layer(s.content(), l)?)?;
            }
            Ok(())
        })
        .await?;
        self.unpacked.insert(id, dir.clone());
        Ok(dir)
    }

    /// `ADD URL`: the file, downloaded into the build's scratch space (mode 0600).
    async fn download(&mut self, url: &str) -> Result<Source> {
        use tokio::io::AsyncWriteExt;
        let failed = |e: &dyn std::fmt::Display| {
            Error::bad_request(format!("ADD failed: downloading {url}: {e}"))
        };
        let mut resp = reqwest::get(url)
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| failed(&e))?;
        let name = url
            .split(['?', '#'])
            .next()
            .and_then(|u| u.rsplit('/').next())
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .unwrap_or("download")
            .to_string();
        let abs = self.scratch_path(&name)?;
        // Streamed to disk: a large download never sits in the daemon's memory.
        let mut f = tokio::fs::File::create(&abs)
            .await
            .map_err(|e| Error::internal(e.to_string()))?;
        while let Some(chunk) = resp.chunk().await.map_err(|e| failed(&e))? {
            f.write_all(&chunk)
                .await
                .map_err(|e| Error::internal(e.to_string()))?;
        }
        f.flush()
            .await
            .map_err(|e| Error::internal(e.to_string()))?;
        drop(f);
        scratch_source(abs, &name, 0o600)
    }

    /// A heredoc of `COPY <<EOF dest`, as a file named after it.
    fn heredoc_file(
        &mut self,
        h: &Heredoc,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Source> {
        let content = if h.expand {
            apex_build::words::process_heredoc(&h.content, lookup)
                .map_err(|e| Error::bad_request(format!("heredoc {}: {e}", h.name)))?
        } else {
            h.content.clone()
        };
        let abs = self.scratch_path(&h.name)?;
        std::fs::write(&abs, content).map_err(|e| Error::internal(e.to_string()))?;
        scratch_source(abs, &h.name, 0o644)
    }

    /// A new path `NAME` in a directory of its own in the build's scratch space.
    fn scratch_path(&mut self, name: &str) -> Result<PathBuf> {
        self.scratch_files += 1;
        let dir = self.scratch.join(format!("file-{}", self.scratch_files));
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal(e.to_string()))?;
        Ok(dir.join(name))
    }

    /// `--chown=user[:group]` as numeric ids, names looked up in the image.
    async fn owner(&self, img: &Image, spec: &str) -> std::result::Result<(u32, u32), String> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u.to_string(), Some(g.to_string())),
            None => (spec.to_string(), None),
        };
        let numeric = |s: &str| s.parse::<u32>().ok();
        if let (Some(u), None | Some(_)) = (numeric(&user), &group) {
            if group.as_deref().is_none_or(|g| numeric(g).is_some()) {
                let g = group.as_deref().and_then(numeric).unwrap_or(u);
                return Ok((u, g));
            }
        }
        let (home, rec) = (self.svc.home.clone(), img.rec.clone());
        let files = with_store(&home, move |s| {
            Ok((
                super::index::read_file(s, rec.as_ref(), "etc/passwd")?,
                super::index::read_file(s, rec.as_ref(), "etc/group")?,
            ))
        })
        .await
        .map_err(|e| e.to_string())?;
        let find = |file: &Option<Vec<u8>>, name: &str, id_col: usize| -> Option<(u32, u32)> {
            let text = String::from_utf8_lossy(file.as_deref()?).into_owned();
            text.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.first() == Some(&name)).then(|| {
                    let id = f.get(id_col)?.parse().ok()?;
                    let gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
                    Some((id, gid))
                })?
            })
        };
        let (uid, primary) = match numeric(&user) {
            Some(u) => (u, u),
            None => find(&files.0, &user, 2).ok_or_else(|| {
                format!("unable to find user {user}: no matching entries in passwd file")
            })?,
        };
        let gid = match group {
            None => primary,
            Some(g) => match numeric(&g) {
                Some(g) => g,
                None => find(&files.1, &g, 2).map(|(id, _)| id).ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
            },
        };
        Ok((uid, gid))
    }
}

/// A file written for a build (a download, a heredoc) as a `COPY` source: `mode`, and
/// the Unix epoch as its time.
fn scratch_source(abs: PathBuf, name: &str, mode: u32) -> Result<Source> {
    use std::os::unix::fs::PermissionsExt;
    let e = |e: std::io::Error| Error::internal(e.to_string());
    std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(mode)).map_err(e)?;
    let f = std::fs::File::options().write(true).open(&abs).map_err(e)?;
    f.set_modified(std::time::SystemTime::UNIX_EPOCH)
        .map_err(e)?;
    Ok(Source {
        rel: PathBuf::from(name),
        abs,
    })
}

/// A `HEALTHCHECK` as the image config's `Healthcheck` (durations in nanoseconds).
fn healthcheck(h: &Healthcheck) -> Value {
    match h {
        Healthcheck::None => json!({"Test": ["NONE"]}),
        Healthcheck::Cmd {
            cmd,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        } => {
            let test: Vec<String> = match cmd {
                Cmd::Exec(v) => std::iter::once("CMD".to_string())
                    .chain(v.iter().cloned())
                    .collect(),
                Cmd::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
            };
            let ns = |d: &Option<std::time::Duration>| d.map(|d| d.as_nanos() as u64);
            let mut v = json!({"Test": test});
            for (k, d) in [
                ("Interval", ns(interval)),
                ("Timeout", ns(timeout)),
                ("StartPeriod", ns(start_period)),
                ("StartInterval", ns(start_interval)),
            ] {
                if let Some(d) = d {
                    v[k] = json!(d);
                }
            }
            if let Some(r) = retries {
                v["Retries"] = json!(r);
            }
            v
        }
    }
}
