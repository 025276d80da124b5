//! Starting `apexd`: explicitly (`apex system start`) or on demand by container commands.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use apexd::api::VersionInfo;
use apexd::client::{Client, ClientError};
use apexd::paths::Paths;

/// How long a start waits for the new daemon to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`start`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// A daemon already answered (its pid, if it said).
    AlreadyRunning,
    /// A new daemon with this pid answers now.
    New(u32),
}

/// A client for the daemon of `home`, starting the daemon first if it is not running.
/// Prints nothing unless the start fails.
pub async fn ensure_daemon(home: &Path) -> Result<Client> {
    let paths = Paths::new(home);
    let client = Client::new(paths.socket());
    start(&paths, &client, true).await?;
    Ok(client)
}

/// Starts apexd for `paths` unless it answers already. `quiet`: do not mention a stale
/// socket being removed.
pub async fn start(paths: &Paths, client: &Client, quiet: bool) -> Result<Started> {
    match client.get::<VersionInfo>("/v1/version").await {
        Ok(_) => return Ok(Started::AlreadyRunning),
        Err(ClientError::NotRunning) => {}
        Err(ClientError::StaleSocket(sock)) => {
            // Only a dead daemon leaves a socket nobody listens on; apexd would remove it
            // too (under its lock), this just says what happened.
            if !quiet {
                eprintln!("removing stale socket {} (apexd died)", sock.display());
            }
            match std::fs::remove_file(&sock) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot remove stale socket {}", sock.display()))
                }
            }
        }
        Err(e) => return Err(e.into()),
    }
    let bin = daemon_bin()?;
    // Its stderr goes to an unlinked scratch file: if it fails before it can write its
    // log (unwritable home), the reason is there.
    let mut errors = scratch_file().ok();
    let stderr = match errors.as_ref().map(std::fs::File::try_clone) {
        Some(Ok(f)) => Stdio::from(f),
        _ => Stdio::null(),
    };
    let mut cmd = Command::new(&bin);
    // The home goes in the environment rather than on the command line: tools (and
    // tests) that look for processes mentioning a home's path are after VMs left
    // behind, not after the long-lived daemon.
    cmd.env("APEX_HOME", paths.home())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
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
            // Two clients may start a daemon at once: the loser exits at once (its lock
            // is taken) while the winner comes up.
            if let Ok(_) | Err(ClientError::Api { .. }) =
                wait_answer(client, Duration::from_secs(2)).await
            {
                return Ok(Started::AlreadyRunning);
            }
            let said = errors.as_mut().map(read_back).unwrap_or_default();
            if !said.is_empty() {
                bail!("apexd exited during start-up ({st}): {said}");
            }
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The daemon is its own session leader; reap nothing: it outlives us.
    Ok(Started::New(child.id()))
}

/// A new file in the temporary directory, already unlinked.
fn scratch_file() -> std::io::Result<std::fs::File> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = std::env::temp_dir().join(format!("apexd-start-{}-{nanos}.err", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

/// What was written to `f` (the last 4 KiB, trimmed).
fn read_back(f: &mut std::fs::File) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let len = f.metadata().map_or(0, |m| m.len());
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(4096))).is_ok() {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).trim().to_string()
}

/// Polls `/v1/version` for up to `limit`.
async fn wait_answer(client: &Client, limit: Duration) -> Result<(), ClientError> {
    let deadline = Instant::now() + limit;
    loop {
        match client.get::<VersionInfo>("/v1/version").await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_not_running() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => return Err(e),
        }
    }
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

/// The last `n` lines of `path` (reads at most the last 4 MiB).
pub fn tail(path: &Path, n: usize) -> Result<Vec<String>> {
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

pub use apex_shim::bundle::pid_alive;

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
