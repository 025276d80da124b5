//! Container commands (`apex create/start/stop/...` and the same under `apex container`),
//! all clients of apexd, which is started on demand.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use apex_shim::proto::Stats;
use apexd::client::{Client, ClientError};
use apexd::model::{
    ContainerRecord, ContainerSummary, Created, ExecRequest, LogEntry, PruneReport, WaitResult,
};
use clap::{Args, Subcommand};
use hyper::Method;
use serde::Serialize;

use crate::attach::{self, End, Signals};
use crate::daemon::ensure_daemon;
use crate::format::{self, Format};
use crate::run;

/// The container verbs, top-level and under `apex container`.
#[derive(Subcommand)]
pub enum Verbs {
    /// Create a container without starting it; prints its ID.
    Create(Box<run::CreateArgs>),
    /// Run a command in a new container (its own VM).
    Run(Box<run::RunArgs>),
    /// Start one or more stopped containers.
    Start(StartArgs),
    /// Stop running containers (SIGTERM, then SIGKILL after the grace period).
    Stop(StopArgs),
    /// Send a signal to running containers.
    Kill(KillArgs),
    /// Stop then start containers.
    Restart(StopArgs),
    /// Remove containers.
    Rm(RmArgs),
    /// List containers.
    #[command(visible_alias = "ps", alias = "list")]
    Ls(LsArgs),
    /// Show containers' details as JSON.
    Inspect(ContainersArgs),
    /// Show a container's output.
    Logs(LogsArgs),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// Show containers' CPU, memory and process counts.
    Stats(StatsArgs),
    /// Wait for containers to stop; print their exit codes.
    Wait(ContainersArgs),
}

/// `apex container ...`.
#[derive(Subcommand)]
pub enum ContainerCmd {
    #[command(flatten)]
    Verbs(Verbs),
    /// Remove all stopped containers.
    Prune(PruneArgs),
}

impl Verbs {
    /// The exit code when the command itself fails (docker: 125 for run and create).
    pub fn error_code(&self) -> u8 {
        match self {
            Verbs::Create(_) | Verbs::Run(_) => run::EXIT_APEX_ERROR,
            _ => 1,
        }
    }
}

#[derive(Args)]
pub struct StartArgs {
    /// Attach to the container's output and signals.
    #[arg(short, long)]
    pub attach: bool,
    /// Attach stdin too (implies --attach).
    #[arg(short, long)]
    pub interactive: bool,
    /// Containers (ID, unique ID prefix or name).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args)]
pub struct StopArgs {
    /// Seconds to wait before killing (default 10).
    #[arg(short = 't', long = "time", alias = "timeout", value_name = "SECS")]
    pub time: Option<u64>,
    /// Containers (ID, unique ID prefix or name).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args)]
pub struct KillArgs {
    /// Signal to send (name or number).
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    /// Containers (ID, unique ID prefix or name).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args)]
pub struct RmArgs {
    /// Stop running containers first (SIGKILL).
    #[arg(short, long)]
    pub force: bool,
    /// Also remove the containers' anonymous volumes.
    #[arg(short, long)]
    pub volumes: bool,
    /// Containers (ID, unique ID prefix or name).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args)]
pub struct LsArgs {
    /// All containers (default: running ones).
    #[arg(short, long)]
    pub all: bool,
    /// Only IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Full IDs and commands.
    #[arg(long)]
    pub no_trunc: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Args)]
pub struct ContainersArgs {
    /// Containers (ID, unique ID prefix or name).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args)]
pub struct LogsArgs {
    /// Keep printing output until the container stops.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines (`all` for everything).
    #[arg(short = 'n', long, value_name = "N", default_value = "all", value_parser = parse_tail)]
    pub tail: Tail,
    /// Prefix each line with its time (RFC 3339, nanoseconds).
    #[arg(short, long)]
    pub timestamps: bool,
    /// Container (ID, unique ID prefix or name).
    pub container: String,
}

/// `--tail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    All,
    Last(usize),
}

fn parse_tail(s: &str) -> Result<Tail, String> {
    if s == "all" {
        return Ok(Tail::All);
    }
    s.parse()
        .map(Tail::Last)
        .map_err(|_| format!("invalid --tail {s:?}: a number of lines or `all`"))
}

#[derive(Args)]
pub struct ExecArgs {
    /// Keep stdin open and forward it.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Set environment variables (`KEY=value`, or `KEY` to pass this shell's value).
    #[arg(short, long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User (`name`, `uid`, `name:group`, `uid:gid`).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Container (ID, unique ID prefix or name).
    pub container: String,
    /// Command and arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args)]
pub struct StatsArgs {
    /// Print one sample and exit.
    #[arg(long)]
    pub no_stream: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Containers (default: all running ones).
    pub containers: Vec<String>,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub force: bool,
}

/// Turns daemon answers into one-line errors: the daemon's own message.
pub trait ApiExt<T> {
    /// The result with API errors reduced to their message.
    fn api(self) -> Result<T>;
}

impl<T> ApiExt<T> for Result<T, ClientError> {
    fn api(self) -> Result<T> {
        self.map_err(|e| match e {
            ClientError::Api { message, .. } => anyhow!(message),
            e => e.into(),
        })
    }
}

/// Percent-encodes `s` for a URL path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn cpath(c: &str, rest: &str) -> String {
    format!("/v1/containers/{}{rest}", enc(c))
}

pub async fn run(home: &Path, cmd: ContainerCmd) -> Result<ExitCode> {
    match cmd {
        ContainerCmd::Verbs(v) => verbs(home, v).await,
        ContainerCmd::Prune(a) => prune(home, a).await,
    }
}

pub async fn verbs(home: &Path, cmd: Verbs) -> Result<ExitCode> {
    match cmd {
        Verbs::Run(a) => return run::run(home, *a).await,
        Verbs::Create(a) => return run::create(home, *a).await,
        _ => {}
    }
    let client = ensure_daemon(home).await?;
    match cmd {
        Verbs::Run(_) | Verbs::Create(_) => unreachable!("handled above"),
        Verbs::Start(a) => start(&client, a).await,
        Verbs::Stop(a) => {
            let q = a.time.map(|t| format!("?timeout={t}")).unwrap_or_default();
            let c = client.with_timeout(Some(grace(a.time)));
            Ok(each(&a.containers, |name| {
                let (c, q) = (c.clone(), q.clone());
                async move {
                    let _: ContainerRecord =
                        c.post(&cpath(&name, &format!("/stop{q}"))).await.api()?;
                    Ok(())
                }
            })
            .await)
        }
        Verbs::Restart(a) => {
            let q = a.time.map(|t| format!("?timeout={t}")).unwrap_or_default();
            let c = client.with_timeout(Some(grace(a.time)));
            Ok(each(&a.containers, |name| {
                let (c, q) = (c.clone(), q.clone());
                async move {
                    let _: ContainerRecord =
                        c.post(&cpath(&name, &format!("/restart{q}"))).await.api()?;
                    Ok(())
                }
            })
            .await)
        }
        Verbs::Kill(a) => {
            let Some(sig) = apexd::api::parse_signal(&a.signal) else {
                bail!("invalid signal {:?}", a.signal);
            };
            Ok(each(&a.containers, |name| {
                let c = client.clone();
                async move {
                    let _: serde_json::Value = c
                        .post(&cpath(&name, &format!("/kill?signal={sig}")))
                        .await
                        .api()?;
                    Ok(())
                }
            })
            .await)
        }
        Verbs::Rm(a) => {
            let c = client.with_timeout(Some(grace(None)));
            let (force, volumes) = (a.force, a.volumes);
            Ok(each(&a.containers, |name| {
                let c = c.clone();
                async move {
                    let _: serde_json::Value = c
                        .delete(&cpath(&name, &format!("?force={force}&volumes={volumes}")))
                        .await
                        .api()?;
                    Ok(())
                }
            })
            .await)
        }
        Verbs::Ls(a) => ls(&client, a).await,
        Verbs::Inspect(a) => inspect(&client, a).await,
        Verbs::Logs(a) => logs(&client, a).await,
        Verbs::Exec(a) => exec(&client, a).await,
        Verbs::Stats(a) => stats(&client, a).await,
        Verbs::Wait(a) => {
            let c = client.with_timeout(None);
            Ok(each_quiet(&a.containers, |name| {
                let c = c.clone();
                async move {
                    let w: WaitResult = c.get(&cpath(&name, "/wait")).await.api()?;
                    println!("{}", w.exit_code);
                    Ok(())
                }
            })
            .await)
        }
    }
}

/// A request limit for stop-like calls: the grace period plus time to tear down.
fn grace(secs: Option<u64>) -> Duration {
    Duration::from_secs(secs.unwrap_or(10) + 60)
}

/// Runs `f` for each container, printing its name on success (docker-style) and
/// `Error: ...` on failure; exit 1 if any failed.
async fn each<F, Fut>(names: &[String], f: F) -> ExitCode
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut failed = false;
    for n in names {
        match f(n.clone()).await {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = true;
            }
        }
    }
    exit_status(failed)
}

/// [`each`] without printing names.
async fn each_quiet<F, Fut>(names: &[String], f: F) -> ExitCode
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut failed = false;
    for n in names {
        if let Err(e) = f(n.clone()).await {
            eprintln!("Error: {e:#}");
            failed = true;
        }
    }
    exit_status(failed)
}

fn exit_status(failed: bool) -> ExitCode {
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn start(client: &Client, a: StartArgs) -> Result<ExitCode> {
    let attach = a.attach || a.interactive;
    if !attach {
        let c = client.with_timeout(Some(Duration::from_secs(600)));
        return Ok(each(&a.containers, |name| {
            let c = c.clone();
            async move {
                let _: ContainerRecord = c.post(&cpath(&name, "/start")).await.api()?;
                Ok(())
            }
        })
        .await);
    }
    let [name] = &a.containers[..] else {
        bail!("you cannot start and attach multiple containers at once");
    };
    let rec: ContainerRecord = client.get(&cpath(name, "")).await.api()?;
    let tty = rec.config.process.terminal;
    attach::check_tty(tty, a.interactive)?;
    let mut signals = Signals::install()?;
    let path = cpath(
        &rec.id,
        &format!("/attach?stdin={}&start=true", a.interactive),
    );
    let io = client.upgrade(Method::POST, &path, None).await.api()?;
    let opts = attach::Options {
        stdin: a.interactive,
        tty,
        ..Default::default()
    };
    match attach::session(io, opts, &mut signals).await?.end {
        End::Exited(exit) => {
            run::settle(client, &rec.id, rec.config.restart, rec.config.auto_remove).await;
            Ok(run::exit_code(&exit))
        }
        End::Interrupted(n) => Ok(ExitCode::from(128 + n as u8)),
    }
}

async fn exec(client: &Client, a: ExecArgs) -> Result<ExitCode> {
    attach::check_tty(a.tty, a.interactive)?;
    let req = ExecRequest {
        command: a.command.clone(),
        env: run::resolve_env(&a.env, &[], |k| std::env::var(k).ok())?,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        tty: a.tty,
        stdin: a.interactive,
    };
    let mut signals = Signals::install()?;
    let created: Created = client
        .post_json(&cpath(&a.container, "/exec"), &req)
        .await
        .api()?;
    let io = client
        .upgrade(
            Method::POST,
            &format!("/v1/exec/{}/start", enc(&created.id)),
            None,
        )
        .await
        .api()?;
    let opts = attach::Options {
        stdin: a.interactive,
        tty: a.tty,
        ..Default::default()
    };
    match attach::session(io, opts, &mut signals).await?.end {
        End::Exited(exit) => Ok(run::exit_code(&exit)),
        End::Interrupted(n) => Ok(ExitCode::from(128 + n as u8)),
    }
}

async fn ls(client: &Client, a: LsArgs) -> Result<ExitCode> {
    let path = if a.all {
        "/v1/containers?all=true"
    } else {
        "/v1/containers"
    };
    let mut list: Vec<ContainerSummary> = client.get(path).await.api()?;
    // Newest first, as docker.
    list.sort_by(|x, y| y.created.cmp(&x.created).then(x.name.cmp(&y.name)));
    if a.quiet {
        for c in &list {
            println!("{}", short_id(&c.id, a.no_trunc));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                short_id(&c.id, a.no_trunc).to_string(),
                c.image.clone(),
                command_column(&c.command, a.no_trunc),
                format::ago(Some(&c.created)),
                c.status.clone(),
                c.ports.join(", "),
                c.name.clone(),
            ]
        })
        .collect();
    format::table(
        &[
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "PORTS",
            "NAMES",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

fn short_id(id: &str, full: bool) -> &str {
    if full {
        id
    } else {
        &id[..id.len().min(12)]
    }
}

/// `"sh -c 'echo…"`: quoted, cut at 20 characters unless `full`.
pub fn command_column(cmd: &str, full: bool) -> String {
    const MAX: usize = 20;
    if full || cmd.chars().count() <= MAX {
        return format!("\"{cmd}\"");
    }
    let cut: String = cmd.chars().take(MAX - 1).collect();
    format!("\"{cut}…\"")
}

async fn inspect(client: &Client, a: ContainersArgs) -> Result<ExitCode> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for name in &a.containers {
        match client.get::<serde_json::Value>(&cpath(name, "")).await {
            Ok(v) => docs.push(v),
            Err(e) if e.is_not_running() => return Err(e.into()),
            Err(e) => errors.push(e.message()),
        }
    }
    println!("{}", serde_json::to_string_pretty(&docs)?);
    for e in &errors {
        eprintln!("Error: {e}");
    }
    Ok(exit_status(!errors.is_empty()))
}

async fn logs(client: &Client, a: LogsArgs) -> Result<ExitCode> {
    let mut q = vec![format!("follow={}", a.follow)];
    if let Tail::Last(n) = a.tail {
        q.push(format!("tail={n}"));
    }
    if a.timestamps {
        q.push("timestamps=true".into());
    }
    let path = cpath(&a.container, &format!("/logs?{}", q.join("&")));
    let mut lines = client.get_lines(&path).await.api()?;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(line) = lines.next_line().await.api()? {
        if line.is_empty() {
            continue;
        }
        let e: LogEntry = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(e) => bail!("bad log entry from apexd: {e}: {line}"),
        };
        let text = if a.timestamps {
            format!("{} {}", log_timestamp(&e.time), e.line)
        } else {
            e.line
        };
        let w: &mut dyn Write = if e.stream == "stderr" {
            &mut err
        } else {
            &mut out
        };
        // A closed stdout (`apex logs c | head`) ends the command quietly.
        if w.write_all(text.as_bytes())
            .and_then(|_| w.flush())
            .is_err()
        {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub use apexd::containers::log_timestamp;

/// One line of `apex stats`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatsRow {
    /// Full id.
    pub id: String,
    /// Name.
    pub name: String,
    /// CPU use over the last interval, % of the VM's vCPUs.
    pub cpu_percent: f64,
    /// Guest memory in use.
    pub memory_usage_bytes: u64,
    /// Guest memory size.
    pub memory_limit_bytes: u64,
    /// usage / limit, %.
    pub memory_percent: f64,
    /// Processes in the guest.
    pub pids: u64,
    /// Host RSS of the VM process.
    pub vm_rss_bytes: u64,
    /// Host memory of the container's cgroup (helper, QEMU, backends), bytes.
    pub host_memory_bytes: u64,
    /// Its host memory cap, bytes (0: uncapped).
    pub host_memory_limit_bytes: u64,
}

/// CPU use between two samples: guest CPU time over wall time times vCPUs, in %.
/// `fallback_wall` is used when the samples' own times are missing or out of order.
pub fn cpu_percent(prev: &Stats, cur: &Stats, fallback_wall: Duration) -> f64 {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    let wall_ns = match (parse(&prev.read_at), parse(&cur.read_at)) {
        (Some(a), Some(b)) => (b - a).num_nanoseconds().filter(|n| *n > 0),
        _ => None,
    }
    .map(|n| n as f64)
    .unwrap_or(fallback_wall.as_nanos() as f64);
    let cpu_ns = cur.cpu_usage_ns.saturating_sub(prev.cpu_usage_ns) as f64;
    let cpus = cur.cpus.max(1) as f64;
    if wall_ns <= 0.0 {
        return 0.0;
    }
    (cpu_ns / (wall_ns * cpus) * 100.0).clamp(0.0, 100.0)
}

fn stats_row(id: &str, name: &str, prev: Option<&Stats>, cur: &Stats, wall: Duration) -> StatsRow {
    let memory_percent = if cur.memory_limit_bytes > 0 {
        cur.memory_usage_bytes as f64 / cur.memory_limit_bytes as f64 * 100.0
    } else {
        0.0
    };
    StatsRow {
        id: id.to_string(),
        name: name.to_string(),
        cpu_percent: prev.map_or(0.0, |p| cpu_percent(p, cur, wall)),
        memory_usage_bytes: cur.memory_usage_bytes,
        memory_limit_bytes: cur.memory_limit_bytes,
        memory_percent,
        pids: cur.pids,
        vm_rss_bytes: cur.vm_rss_bytes,
        host_memory_bytes: cur.host_memory_bytes,
        host_memory_limit_bytes: cur.host_memory_limit_bytes,
    }
}

/// `12.5MiB`-style sizes (binary units, as docker stats prints memory).
pub fn binary_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        return format!("{bytes}B");
    }
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{}", UNITS[i])
}

/// The containers to sample: those named, or all running ones.
async fn stats_targets(client: &Client, names: &[String]) -> Result<Vec<(String, String)>> {
    if names.is_empty() {
        let list: Vec<ContainerSummary> = client.get("/v1/containers").await.api()?;
        return Ok(list.into_iter().map(|c| (c.id, c.name)).collect());
    }
    let mut out = Vec::new();
    for n in names {
        let r: ContainerRecord = client.get(&cpath(n, "")).await.api()?;
        out.push((r.id, r.name));
    }
    Ok(out)
}

/// One sample of each target, concurrently; containers that stopped meanwhile are
/// left out unless they were named.
async fn sample(
    client: &Client,
    targets: &[(String, String)],
    named: bool,
) -> Result<Vec<Option<Stats>>> {
    let futs = targets.iter().map(|(id, _)| {
        let c = client.clone();
        let path = cpath(id, "/stats");
        async move { c.get::<Stats>(&path).await }
    });
    let res = futures_util::future::join_all(futs).await;
    let mut out = Vec::new();
    for (r, (_, name)) in res.into_iter().zip(targets) {
        match r {
            Ok(s) => out.push(Some(s)),
            Err(e) if named => bail!("{name}: {}", e.message()),
            Err(_) => out.push(None),
        }
    }
    Ok(out)
}

async fn stats(client: &Client, a: StatsArgs) -> Result<ExitCode> {
    const INTERVAL: Duration = Duration::from_secs(1);
    let named = !a.containers.is_empty();
    let mut targets = stats_targets(client, &a.containers).await?;
    let mut prev = sample(client, &targets, named).await?;
    let mut t_prev = Instant::now();
    let clear = !a.no_stream && a.format == Format::Table && std::io::stdout().is_terminal();
    loop {
        tokio::time::sleep(INTERVAL).await;
        let cur = sample(client, &targets, named).await?;
        let wall = t_prev.elapsed();
        t_prev = Instant::now();
        let rows: Vec<StatsRow> = targets
            .iter()
            .zip(prev.iter().zip(&cur))
            .filter_map(|((id, name), (p, c))| {
                Some(stats_row(id, name, p.as_ref(), c.as_ref()?, wall))
            })
            .collect();
        print_stats(&rows, a.format, a.no_stream, clear)?;
        if a.no_stream {
            return Ok(ExitCode::SUCCESS);
        }
        if named {
            prev = cur;
        } else {
            // Follow containers as they come and go.
            let next = stats_targets(client, &[]).await?;
            prev = next
                .iter()
                .map(|(id, _)| {
                    targets
                        .iter()
                        .position(|(t, _)| t == id)
                        .and_then(|i| cur[i].clone())
                })
                .collect();
            targets = next;
        }
    }
}

fn print_stats(rows: &[StatsRow], fmt: Format, once: bool, clear: bool) -> Result<()> {
    if fmt == Format::Json {
        if once {
            println!("{}", serde_json::to_string_pretty(rows)?);
        } else {
            println!("{}", serde_json::to_string(rows)?);
        }
        return Ok(());
    }
    if clear {
        print!("\x1b[2J\x1b[H");
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                short_id(&r.id, false).to_string(),
                r.name.clone(),
                format!("{:.2}%", r.cpu_percent),
                format!(
                    "{} / {}",
                    binary_size(r.memory_usage_bytes),
                    binary_size(r.memory_limit_bytes)
                ),
                format!("{:.2}%", r.memory_percent),
                r.pids.to_string(),
                match r.host_memory_limit_bytes {
                    0 => binary_size(r.vm_rss_bytes),
                    cap => format!(
                        "{} / {}",
                        binary_size(r.host_memory_bytes),
                        binary_size(cap)
                    ),
                },
            ]
        })
        .collect();
    format::table(
        &[
            "CONTAINER ID",
            "NAME",
            "CPU %",
            "MEM USAGE / LIMIT",
            "MEM %",
            "PIDS",
            "HOST MEM / CAP",
        ],
        &table,
    );
    let _ = std::io::stdout().flush();
    Ok(())
}

async fn prune(home: &Path, a: PruneArgs) -> Result<ExitCode> {
    if !a.force {
        print!("WARNING! This will remove all stopped containers.\nAre you sure you want to continue? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let client = ensure_daemon(home).await?;
    let r: PruneReport = client
        .with_timeout(Some(grace(None)))
        .post("/v1/containers/prune")
        .await
        .api()?;
    if !r.deleted.is_empty() {
        println!("Deleted Containers:");
        for id in &r.deleted {
            println!("{id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(cpu_ns: u64, at: &str, cpus: u32) -> Stats {
        Stats {
            cpu_usage_ns: cpu_ns,
            memory_usage_bytes: 64 << 20,
            memory_limit_bytes: 256 << 20,
            pids: 3,
            cpus,
            read_at: at.into(),
            ..Default::default()
        }
    }

    #[test]
    fn cpu_percent_over_wall_time_and_vcpus() {
        let a = stats(1_000_000_000, "2026-11-24T18:00:00.000000000Z", 2);
        // 0.5 s of CPU in 1 s on 2 vCPUs: 25 %.
        let b = stats(1_500_000_000, "2026-11-24T18:00:01.000000000Z", 2);
        let fallback = Duration::from_secs(10);
        assert!((cpu_percent(&a, &b, fallback) - 25.0).abs() < 1e-9);
        // Unparsable times: the caller's wall time.
        let (mut a2, mut b2) = (a.clone(), b.clone());
        a2.read_at = String::new();
        b2.read_at = String::new();
        assert!((cpu_percent(&a2, &b2, Duration::from_millis(500)) - 50.0).abs() < 1e-9);
        // A counter that went backwards (a restart) is no negative use.
        assert_eq!(cpu_percent(&b, &a, fallback), 0.0);
        // Samples out of order in time fall back too, and the result is capped.
        let c = stats(9_000_000_000, "2026-11-24T18:00:00.500000000Z", 1);
        assert_eq!(cpu_percent(&a, &c, Duration::from_secs(1)), 100.0);
        let row = stats_row("ab", "n", None, &b, fallback);
        assert_eq!(row.cpu_percent, 0.0);
        assert!((row.memory_percent - 25.0).abs() < 1e-9);
    }

    #[test]
    fn sizes_and_columns() {
        assert_eq!(binary_size(512), "512B");
        assert_eq!(binary_size(256 << 20), "256MiB");
        assert_eq!(binary_size(1536), "1.5KiB");
        assert_eq!(binary_size((1 << 30) + (1 << 29)), "1.5GiB");
        assert_eq!(command_column("sleep 600", false), "\"sleep 600\"");
        assert_eq!(
            command_column("sh -c 'echo hello; sleep 100'", false),
            "\"sh -c 'echo hello; …\""
        );
        assert_eq!(
            command_column("a b c d e f g h i j k l", true),
            "\"a b c d e f g h i j k l\""
        );
        assert_eq!(short_id(&"a".repeat(64), false), "a".repeat(12));
        assert_eq!(short_id("abc", false), "abc");
    }

    #[test]
    fn timestamps_are_rfc3339_nano_utc() {
        assert_eq!(
            log_timestamp("2026-11-24T18:00:00.123456789Z"),
            "2026-11-24T18:00:00.123456789Z"
        );
        assert_eq!(
            log_timestamp("2026-11-24T19:00:00.5+01:00"),
            "2026-11-24T18:00:00.500000000Z"
        );
        assert_eq!(log_timestamp("2026-11-24T18:00:00Z").len(), 30);
        assert_eq!(log_timestamp("garbage"), "garbage");
    }

    #[test]
    fn tail_and_encoding() {
        assert_eq!(parse_tail("all"), Ok(Tail::All));
        assert_eq!(parse_tail("5"), Ok(Tail::Last(5)));
        assert!(parse_tail("-1").is_err());
        assert_eq!(enc("web-1.x_y"), "web-1.x_y");
        assert_eq!(enc("a/b?c"), "a%2Fb%3Fc");
    }

    #[test]
    fn verbs_parse_like_docker() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(subcommand)]
            c: ContainerCmd,
        }
        let p =
            |args: &[&str]| T::try_parse_from(std::iter::once("apex").chain(args.iter().copied()));
        assert!(matches!(
            p(&["ps", "-aq"]).unwrap().c,
            ContainerCmd::Verbs(Verbs::Ls(LsArgs {
                all: true,
                quiet: true,
                ..
            }))
        ));
        assert!(matches!(
            p(&["prune", "-f"]).unwrap().c,
            ContainerCmd::Prune(PruneArgs { force: true })
        ));
        match p(&["exec", "-it", "web", "sh", "-c", "ls -l"]).unwrap().c {
            ContainerCmd::Verbs(Verbs::Exec(e)) => {
                assert!(e.interactive && e.tty);
                assert_eq!(e.container, "web");
                assert_eq!(e.command, ["sh", "-c", "ls -l"]);
            }
            _ => panic!("exec"),
        }
        match p(&["run", "-d", "--restart", "on-failure:2", "img", "sh", "-x"])
            .unwrap()
            .c
        {
            ContainerCmd::Verbs(Verbs::Run(r)) => {
                assert!(r.detach);
                assert_eq!(r.create.command, ["sh", "-x"]);
                assert_eq!(
                    r.create.restart,
                    apexd::model::RestartPolicy::OnFailure { max_retries: 2 }
                );
            }
            _ => panic!("run"),
        }
        assert!(p(&["run", "--restart", "sometimes", "img"]).is_err());
        match p(&["stop", "-t", "3", "a", "b"]).unwrap().c {
            ContainerCmd::Verbs(Verbs::Stop(s)) => {
                assert_eq!((s.time, s.containers.len()), (Some(3), 2))
            }
            _ => panic!("stop"),
        }
        match p(&[
            "run",
            "--network",
            "front",
            "-p",
            "8080:80",
            "--publish",
            "53:53/udp",
            "img",
        ])
        .unwrap()
        .c
        {
            ContainerCmd::Verbs(Verbs::Run(r)) => {
                assert_eq!(r.create.network.as_deref(), Some("front"));
                assert_eq!(r.create.publish, ["8080:80", "53:53/udp"]);
            }
            _ => panic!("run"),
        }
        match p(&["logs", "-f", "--tail", "3", "-t", "web"]).unwrap().c {
            ContainerCmd::Verbs(Verbs::Logs(l)) => {
                assert!(l.follow && l.timestamps);
                assert_eq!(l.tail, Tail::Last(3));
            }
            _ => panic!("logs"),
        }
        assert!(p(&["rm"]).is_err(), "rm needs a container");
    }
}
