//! `apex-fixtures`: writes the e2e test images and runs a throwaway registry, for scripts.
//!
//! ```text
//! apex-fixtures busybox DIR TAG [--compression gzip|zstd|none]   # prints the manifest digest
//! apex-fixtures multiarch DIR TAG | layered DIR TAG [--docker]  # prints the manifest digest
//! apex-fixtures registry [--basic USER:PASS | --token USER:PASS]
//!     [--until-signal]
//!     # prints HOST (127.0.0.1:PORT), serves until stdin closes (unless --until-signal)
//!     # or SIGTERM/SIGINT
//! ```

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use apex_e2e::images::{self, Compression};
use apex_e2e::registry::{Registry, RegistryAuth};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "apex-fixtures",
    about = "Apex e2e fixtures: test images and a local registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the busybox image into an OCI layout; prints its manifest digest.
    Busybox {
        dir: PathBuf,
        tag: String,
        /// Layer compression: gzip, zstd or none.
        #[arg(long, default_value = "gzip")]
        compression: String,
    },
    /// Write a single-layer image of directory ROOT; prints its manifest digest.
    FromDir {
        root: PathBuf,
        dir: PathBuf,
        tag: String,
        /// Layer compression: gzip, zstd or none.
        #[arg(long, default_value = "gzip")]
        compression: String,
    },
    /// Write the linux/amd64 + linux/arm64 index; prints the index digest.
    Multiarch { dir: PathBuf, tag: String },
    /// Write the layered unpack-semantics image; prints its manifest digest.
    Layered {
        dir: PathBuf,
        tag: String,
        /// Use Docker schema 2 media types.
        #[arg(long)]
        docker: bool,
    },
    /// Run a registry on 127.0.0.1; prints its HOST and serves until stdin closes or a signal.
    Registry {
        /// Require HTTP basic auth with USER:PASS.
        #[arg(long, value_name = "USER:PASS", conflicts_with = "token")]
        basic: Option<String>,
        /// Require bearer tokens, issued for USER:PASS.
        #[arg(long, value_name = "USER:PASS")]
        token: Option<String>,
        /// Ignore stdin; stop only on SIGTERM/SIGINT (for `apex-fixtures registry &` in a
        /// script, where stdin is /dev/null).
        #[arg(long)]
        until_signal: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Busybox {
            dir,
            tag,
            compression,
        } => {
            let layout = images::busybox(&dir, &tag, compression.parse::<Compression>()?)?;
            println!("{}", layout.manifest_digest);
        }
        Cmd::FromDir {
            root,
            dir,
            tag,
            compression,
        } => {
            let layout = images::from_dir(&root, &dir, &tag, compression.parse::<Compression>()?)?;
            println!("{}", layout.manifest_digest);
        }
        Cmd::Multiarch { dir, tag } => {
            println!("{}", images::multiarch(&dir, &tag)?.manifest_digest)
        }
        Cmd::Layered { dir, tag, docker } => {
            let layout = if docker {
                images::layered_docker(&dir, &tag)?
            } else {
                images::layered(&dir, &tag)?
            };
            println!("{}", layout.manifest_digest);
        }
        Cmd::Registry {
            basic,
            token,
            until_signal,
        } => {
            let split = |s: String| -> Result<(String, String)> {
                let (u, p) = s.split_once(':').context("expected USER:PASS")?;
                Ok((u.to_string(), p.to_string()))
            };
            let auth = match (basic, token) {
                (Some(b), _) => split(b).map(|(user, pass)| RegistryAuth::Basic { user, pass })?,
                (None, Some(t)) => {
                    split(t).map(|(user, pass)| RegistryAuth::Token { user, pass })?
                }
                (None, None) => RegistryAuth::None,
            };
            let registry = Registry::start(auth)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", registry.host())?;
            out.flush()?;
            drop(out);
            wait_for_stop(!until_signal)?;
            drop(registry);
        }
    }
    Ok(())
}

/// Blocks until SIGTERM/SIGINT arrives or, if `watch_stdin`, stdin reaches EOF.
fn wait_for_stop(watch_stdin: bool) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stdin_closed = async {
            if !watch_stdin {
                return std::future::pending().await;
            }
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut stdin = std::io::stdin().lock();
                while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
                let _ = tx.send(());
            });
            let _ = rx.await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = stdin_closed => {}
        }
        Ok(())
    })
}
