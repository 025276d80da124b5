//! `apex system`: start, stop and inspect the `apexd` daemon.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use apexd::api::{DiskUsage, Message, SystemStatus, VersionInfo};
use apexd::client::Client;
use apexd::paths::Paths;
use clap::{Args, Subcommand};

use crate::daemon::{self, pid_alive, tail, Started};
use crate::format::{self, Format};

/// How long `stop` waits for the daemon to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Subcommand)]
pub enum SystemCmd {
    /// Start apexd in the background (no-op if it is running).
    Start,
    /// Stop apexd gracefully.
    Stop,
    /// Show whether apexd runs and what it manages.
    Status(FormatArgs),
    /// Show disk usage of the state directory.
    Df(FormatArgs),
    /// Show client and daemon versions.
    Version,
    /// Print the end of the daemon log.
    Logs(LogsArgs),
}

#[derive(Args)]
pub struct FormatArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Args)]
pub struct LogsArgs {
    /// Number of lines.
    #[arg(short = 'n', long = "tail", default_value_t = 100)]
    pub lines: usize,
}

pub async fn run(home: &Path, cmd: SystemCmd) -> Result<()> {
    let paths = Paths::new(home);
    let client = Client::new(paths.socket());
    match cmd {
        SystemCmd::Start => start(&paths, &client).await,
        SystemCmd::Stop => stop(&client).await,
        SystemCmd::Status(a) => status(&client, a.format).await,
        SystemCmd::Df(a) => df(&client, a.format).await,
        SystemCmd::Version => version(&client).await,
        SystemCmd::Logs(a) => logs(&paths, a.lines),
    }
}

async fn start(paths: &Paths, client: &Client) -> Result<()> {
    match daemon::start(paths, client, false).await? {
        Started::New(pid) => println!("apexd started (pid {pid})"),
        Started::AlreadyRunning => {
            let s: SystemStatus = client.get("/v1/system/status").await?;
            println!("apexd is already running (pid {})", s.pid);
        }
    }
    Ok(())
}

async fn stop(client: &Client) -> Result<()> {
    let st: SystemStatus = client.get("/v1/system/status").await?;
    let _: Message = client.post("/v1/system/shutdown").await?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while pid_alive(st.pid) {
        if Instant::now() >= deadline {
            bail!(
                "apexd (pid {}) is still running {}s after the shutdown request",
                st.pid,
                STOP_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("apexd stopped (pid {})", st.pid);
    Ok(())
}

async fn status(client: &Client, fmt: Format) -> Result<()> {
    let s: SystemStatus = client.get("/v1/system/status").await?;
    if fmt == Format::Json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("apexd is running (pid {})", s.pid);
    println!("uptime:       {}s", s.uptime_s);
    println!("home:         {}", s.home.display());
    println!("containers:   {}", s.containers);
    println!("images:       {}", s.images);
    println!("accelerator:  {}", s.accelerator);
    Ok(())
}

async fn df(client: &Client, fmt: Format) -> Result<()> {
    let d: DiskUsage = client.get("/v1/system/df").await?;
    if fmt == Format::Json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    let mut rows: Vec<Vec<String>> = d
        .dirs
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                format::size(e.bytes),
                e.path.display().to_string(),
            ]
        })
        .collect();
    rows.push(vec!["total".into(), format::size(d.total), String::new()]);
    format::table(&["NAME", "SIZE", "PATH"], &rows);
    Ok(())
}

async fn version(client: &Client) -> Result<()> {
    let c = VersionInfo::current();
    println!(
        "Client: {} (API {}, {}/{})",
        c.version, c.api_version, c.os, c.arch
    );
    let s: VersionInfo = client.get("/v1/version").await?;
    println!(
        "Server: {} (API {}, {}/{})",
        s.version, s.api_version, s.os, s.arch
    );
    Ok(())
}

fn logs(paths: &Paths, n: usize) -> Result<()> {
    let log = paths.log_file();
    if !log.exists() {
        bail!("no daemon log at {} (apexd never ran here)", log.display());
    }
    for line in tail(&log, n)? {
        println!("{line}");
    }
    Ok(())
}
