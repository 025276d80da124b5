//! `apex run`: one container in its own VM, attached to this terminal.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use apex_oci::platform::Platform;
use apex_oci::store::PullOptions;
use apex_oci::ImageStore;
use apex_runtime::sandbox::{Process, Sandbox, SandboxConfig};
use apex_runtime::spec::{self, ImageProcessConfig, RunOverrides};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};

use crate::image::ConnectArgs;
use crate::{progress, term};

/// Exit code for failures of apex itself (docker uses 125).
pub const EXIT_APEX_ERROR: u8 = 125;

#[derive(Args)]
pub struct RunArgs {
    /// Image to run.
    pub image: String,
    /// Command and arguments (default: the image's entrypoint and cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Remove the container when it exits (containers are always removed until apexd
    /// manages them).
    #[arg(long)]
    pub rm: bool,
    /// Keep stdin open and forward it to the container.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Set environment variables (`KEY=value`, or `KEY` to pass this shell's value).
    #[arg(short, long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<std::path::PathBuf>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User (`name`, `uid`, `name:group`, `uid:gid`).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Override the image's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Container name (also its hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory, e.g. `256m`, `1g`.
    #[arg(short, long, default_value = "256m", value_parser = parse_memory)]
    pub memory: u64,
    /// Platform to pull if the image is missing.
    #[arg(long, value_parser = |s: &str| s.parse::<Platform>())]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Seconds to wait for the VM to boot.
    #[arg(long, default_value_t = 60)]
    pub boot_timeout: u64,
    /// Print the VM's boot log (kernel and init) to stderr when the container ends.
    #[arg(long)]
    pub boot_log: bool,
    /// No pull progress.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Parses `256m`, `1g`, `512MiB`, or bytes into MiB.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (num, mult): (&str, u64) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid memory size {s:?}: use e.g. 512m or 1g"))?;
    let mib = n.saturating_mul(mult) >> 20;
    if mib < 64 {
        return Err(format!("memory {s} is too small: a VM needs at least 64m"));
    }
    Ok(mib)
}

/// Runs the container; returns its exit code.
pub async fn run(home: &Path, a: RunArgs) -> Result<ExitCode> {
    let store = ImageStore::open(home)?;
    tracing::debug!("resolving image");
    let rec = match store.resolve(&a.image) {
        Ok((rec, _)) => rec,
        Err(e)
            if e.downcast_ref::<apex_oci::ImageError>()
                .is_some_and(|e| matches!(e, apex_oci::ImageError::NotFoundLocally(_))) =>
        {
            if !a.quiet {
                eprintln!("Unable to find image '{}' locally", a.image);
            }
            let opts = PullOptions {
                platform: a.platform.clone(),
                connect: a.connect.options(),
                progress: progress::bars(a.quiet, "Pulling"),
                no_unpack: true,
            };
            store.pull(&a.image, opts).await?.record
        }
        Err(e) => return Err(e),
    };
    tracing::debug!("image resolved");
    let rootfs = store.ensure_rootfs(&rec).await?.path;
    tracing::debug!("rootfs ready");
    let image_cfg = ImageProcessConfig::from_image_config(&store.config_json(&rec)?)?;
    let mut env_files = Vec::new();
    for f in &a.env_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading env file {}", f.display()))?;
        env_files.extend(spec::parse_env_file(&text));
    }
    let hostname = a
        .name
        .clone()
        .unwrap_or_else(|| rec.config_digest.short().to_string());
    let overrides = RunOverrides {
        entrypoint: a.entrypoint.clone(),
        command: a.command.clone(),
        env: a.env.clone(),
        env_files,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        tty: a.tty,
        hostname: Some(hostname.clone()),
    };
    let pspec = spec::resolve(&image_cfg, &overrides, |k| std::env::var(k).ok())?;
    if a.tty && !std::io::stdin().is_terminal() && a.interactive {
        bail!("the input device is not a TTY: drop -t, or run from a terminal");
    }

    let boot = Sandbox::boot(SandboxConfig {
        home: home.to_path_buf(),
        rootfs,
        hostname,
        cpus: a.cpus,
        memory_mib: a.memory,
        boot_timeout: Duration::from_secs(a.boot_timeout),
    });
    // Ctrl-C or SIGTERM while booting: dropping the boot future kills the VM and removes
    // its state.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let sandbox = tokio::select! {
        s = boot => s?,
        _ = int.recv() => return Ok(ExitCode::from(130)),
        _ = term.recv() => return Ok(ExitCode::from(143)),
    };
    let code = attach(&sandbox, &pspec, a.interactive).await;
    tracing::debug!("container process ended");
    if a.boot_log {
        eprint!("{}", sandbox.boot_log());
    }
    sandbox.shutdown().await;
    tracing::debug!("VM gone");
    code
}

/// Starts the process and relays stdio and signals until it exits.
async fn attach(
    sandbox: &Sandbox,
    pspec: &spec::ProcessSpec,
    interactive: bool,
) -> Result<ExitCode> {
    let proc = match sandbox.spawn(pspec, interactive).await {
        Ok(p) => p,
        Err(e) => {
            if let Some(f) = e
                .downcast_ref::<apex_runtime::agent::AgentError>()
                .and_then(|e| e.start_failure())
            {
                eprintln!("Error: {e:#}");
                return Ok(ExitCode::from(f.exit_code as u8));
            }
            return Err(e);
        }
    };
    let Process {
        id,
        stdin,
        stdout,
        stderr,
    } = proc;
    let _raw = pspec.terminal.then(term::RawMode::enable).flatten();
    if pspec.terminal {
        if let Some((rows, cols)) = term::size() {
            let _ = sandbox.agent().resize_tty(&id, rows, cols).await;
        }
    }

    // Output relays end at EOF, which the guest sends once the process (and anything
    // holding its stdio) is gone.
    let out = tokio::spawn(relay(stdout, tokio::io::stdout()));
    let err = stderr.map(|s| tokio::spawn(relay(s, tokio::io::stderr())));
    let input = stdin.map(|mut s| {
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let _ = tokio::io::copy(&mut stdin, &mut s).await;
            let _ = s.shutdown().await;
        })
    });

    let agent = sandbox.agent();
    let mut sigs = Vec::new();
    for k in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ] {
        sigs.push((k.as_raw_value(), signal(k)?));
    }
    let mut winch = signal(SignalKind::window_change())?;
    let wait = agent.wait_process(&id);
    tokio::pin!(wait);
    let status = loop {
        let any_sig = first_signal(&mut sigs);
        tokio::select! {
            st = &mut wait => break st?,
            n = any_sig => {
                let _ = agent.kill_process(&id, n).await;
            }
            _ = winch.recv() => {
                if let Some((rows, cols)) = term::size() {
                    let _ = agent.resize_tty(&id, rows, cols).await;
                }
            }
        }
    };
    // Drain output (bounded: a daemonized child may hold the streams open).
    let _ = tokio::time::timeout(Duration::from_secs(5), out).await;
    if let Some(e) = err {
        let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
    }
    if let Some(i) = input {
        i.abort();
    }
    Ok(ExitCode::from((status.exit_code & 0xff) as u8))
}

/// Waits for the first of several signal streams; returns its number.
async fn first_signal(sigs: &mut [(i32, tokio::signal::unix::Signal)]) -> i32 {
    let futs = sigs.iter_mut().map(|(n, s)| {
        let n = *n;
        Box::pin(async move {
            s.recv().await;
            n
        })
    });
    futures_util::future::select_all(futs).await.0
}

async fn relay(mut from: tokio::net::UnixStream, mut to: impl tokio::io::AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                let _ = to.flush().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256m").unwrap(), 256);
        assert_eq!(parse_memory("1g").unwrap(), 1024);
        assert_eq!(parse_memory("512MiB").unwrap(), 512);
        assert_eq!(parse_memory(&(128u64 << 20).to_string()).unwrap(), 128);
        assert!(parse_memory("10m").is_err());
        assert!(parse_memory("lots").is_err());
    }
}
