//! `apex system`: start, stop and inspect the `apexd` daemon.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use apexd::api::{DiskUsage, Message, SystemStatus, VersionInfo};
use apexd::client::{Client, ClientError};
use apexd::paths::Paths;
use clap::{Args, Subcommand};

use crate::format::{self, Format};

/// How long `start` waits for the new daemon to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);
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
    match client.get::<SystemStatus>("/v1/system/status").await {
        Ok(s) => {
            println!("apexd is already running (pid {})", s.pid);
            return Ok(());
        }
        Err(ClientError::NotRunning) => {}
        Err(ClientError::StaleSocket(sock)) => {
            // Only a dead daemon leaves a socket nobody listens on; apexd would remove it
            // too (under its lock), this just says what happened.
            eprintln!("removing stale socket {} (apexd died)", sock.display());
            std::fs::remove_file(&sock)
                .with_context(|| format!("cannot remove stale socket {}", sock.display()))?;
        }
        Err(e) => return Err(e.into()),
    }
    let bin = daemon_bin()?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--home")
        .arg(paths.home())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2),
    // which is async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(st) = child.try_wait()? {
            bail!(
                "apexd exited during start-up ({st}){}",
                log_hint(&paths.log_file())
            );
        }
        match client.get::<VersionInfo>("/v1/version").await {
            Ok(_) => break,
            Err(e) if e.is_not_running() => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "apexd did not answer within {}s; stopped it{}",
                START_TIMEOUT.as_secs(),
                log_hint(&paths.log_file())
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("apexd started (pid {})", child.id());
    Ok(())
}

/// `$APEX_DAEMON`, else `apexd` next to this executable.
fn daemon_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("APEX_DAEMON").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot locate the apex executable")?;
    let bin = exe.with_file_name("apexd");
    if !bin.exists() {
        bail!(
            "cannot find apexd next to {} (set APEX_DAEMON to its path)",
            exe.display()
        );
    }
    Ok(bin)
}

/// The last lines of the daemon log, as a suffix for an error message.
fn log_hint(log: &Path) -> String {
    match tail(log, 5) {
        Ok(lines) if !lines.is_empty() => {
            format!("; last lines of {}:\n{}", log.display(), lines.join("\n"))
        }
        _ => format!("; see {}", log.display()),
    }
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

/// Whether `pid` is a live (not zombie) process.
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
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

/// The last `n` lines of `path` (reads at most the last 4 MiB).
fn tail(path: &Path, n: usize) -> Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 4 << 20;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    Ok(lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("log");
        std::fs::write(&f, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&f, 2).unwrap(), ["b", "c"]);
        assert_eq!(tail(&f, 10).unwrap(), ["a", "b", "c"]);
    }

    #[test]
    fn own_pid_is_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
    }
}
