//! `apex-shim --bundle DIR`: runs one container (see the crate docs).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use apex_runtime::cgroup::{Cgroup, Limits};
use apex_shim::bundle::Bundle;
use clap::Parser;

mod health;
mod shim;

/// The per-container helper; apexd starts it, users do not.
#[derive(Parser)]
#[command(name = "apex-shim", version)]
struct Args {
    /// The container's bundle directory (holds `config.json`).
    #[arg(long)]
    bundle: PathBuf,
    /// Debug logs in `shim.log`.
    #[arg(long)]
    debug: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = if args.debug { "debug" } else { "info" };
    // stderr is `shim.log` (apexd redirects it).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("APEX_SHIM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("apex-shim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let bundle = Bundle::new(&args.bundle);
    let cfg = bundle.read_config()?;
    // Into the container's cgroup before any thread or child exists: QEMU and the
    // backends inherit it.
    let id = args
        .bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let limits = Limits {
        cpus: cfg.cpus,
        memory_mib: cfg.memory_mib,
    };
    let cgroup = match Cgroup::create(&id, limits).and_then(|cg| {
        cg.add(std::process::id())?;
        Ok(cg)
    }) {
        Ok(cg) => {
            tracing::info!(dirs = ?cg.dirs(), "host caps: {} CPUs, {} MiB", limits.cpus, limits.memory_bytes() >> 20);
            Some(cg)
        }
        Err(e) => {
            tracing::warn!("host resource caps not applied: {e}");
            None
        }
    };
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let res = rt.block_on(shim::serve(bundle, cfg));
    drop(rt);
    if let Some(cg) = cgroup {
        cg.leave_and_remove(std::process::id());
    }
    res
}
