//! The daemon log: `$APEX_HOME/logs/apexd.log`, plus stderr in the foreground.

use std::fs::OpenOptions;
use std::sync::Arc;

use anyhow::{Context, Result};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

use crate::paths::Paths;

/// Installs the global subscriber: `info` (or `debug`), overridden by `$APEX_LOG`. The
/// DNS server's per-query lines are left out unless `$APEX_LOG` asks for them.
pub fn init(paths: &Paths, foreground: bool, debug: bool) -> Result<()> {
    let dir = paths.log_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.log_file())
        .with_context(|| format!("cannot open {}", paths.log_file().display()))?;
    let filter = EnvFilter::try_from_env("APEX_LOG").unwrap_or_else(|_| {
        EnvFilter::new(if debug {
            "debug,hickory_server=warn,hickory_proto=warn,hickory_resolver=warn"
        } else {
            "info,hickory_server=warn"
        })
    });
    let file_layer = fmt::layer().with_ansi(false).with_writer(Arc::new(file));
    let stderr_layer = foreground.then(|| fmt::layer().with_writer(std::io::stderr));
    tracing_subscriber::registry()
        .with(filter)
        .with(file_layer)
        .with(stderr_layer)
        .try_init()
        .context("cannot install the log subscriber")
}
