//! `apex-fixtures`: writes the e2e test images and runs a throwaway registry, for scripts.
//!
//! ```text
//! apex-fixtures busybox DIR TAG [--compression gzip|zstd|none]   # prints the manifest digest
//! apex-fixtures multiarch DIR TAG | layered DIR TAG [--docker]  # prints the manifest digest
//! apex-fixtures net DIR TAG          # busybox + httpd/nslookup + netecho; prints the digest
//! apex-fixtures net-bench --echo ADDR --sink ADDR [--mib 64] [--rounds 200]
//!     # throughput into a `netecho sink`, median connect + 1-byte round trip to a
//!     # `netecho tcp`; prints `throughput_mib_s X` and `connect_rtt_ms Y`
//! apex-fixtures registry [--basic USER:PASS | --token USER:PASS]
//!     [--until-signal]
//!     # prints HOST (127.0.0.1:PORT), serves until stdin closes (unless --until-signal)
//!     # or SIGTERM/SIGINT
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
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
    /// Write the network test image (busybox, more applets, netecho, /www); prints its
    /// manifest digest.
    Net {
        dir: PathBuf,
        tag: String,
        /// Layer compression: gzip, zstd or none.
        #[arg(long, default_value = "gzip")]
        compression: String,
    },
    /// Write the filesystem benchmark image (busybox and /bin/fsbench); prints its
    /// manifest digest.
    Fsbench { dir: PathBuf, tag: String },
    /// Compile the static fsbench program to PATH (to run it on the host).
    FsbenchBin { path: PathBuf },
    /// Measure TCP throughput into a `netecho sink` and the median connect + 1-byte round
    /// trip to a `netecho tcp` echo server.
    NetBench {
        /// A `netecho tcp` server.
        #[arg(long)]
        echo: SocketAddr,
        /// A `netecho sink` server.
        #[arg(long)]
        sink: SocketAddr,
        /// MiB to send for the throughput measurement.
        #[arg(long, default_value_t = 64)]
        mib: u64,
        /// Connect + round trip samples (after 5 warm-up rounds).
        #[arg(long, default_value_t = 200)]
        rounds: usize,
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
        Cmd::Net {
            dir,
            tag,
            compression,
        } => {
            let layout = images::net(&dir, &tag, compression.parse::<Compression>()?)?;
            println!("{}", layout.manifest_digest);
        }
        Cmd::Fsbench { dir, tag } => {
            let layout = images::fsbench(&dir, &tag, Compression::Gzip)?;
            println!("{}", layout.manifest_digest);
        }
        Cmd::FsbenchBin { path } => apex_e2e::fsbench::build(&path)?,
        Cmd::NetBench {
            echo,
            sink,
            mib,
            rounds,
        } => {
            let throughput = sink_throughput(sink, mib)?;
            let rtt = connect_rtt_median(echo, rounds)?;
            println!("throughput_mib_s {throughput:.1}");
            println!("connect_rtt_ms {:.3}", rtt.as_secs_f64() * 1000.0);
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

/// Sends `mib` MiB to a `netecho sink` and waits for its byte count: MiB/s. The count is
/// announced first, so no half-close is needed.
fn sink_throughput(addr: SocketAddr, mib: u64) -> Result<f64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    let chunk = vec![0x5au8; 256 << 10];
    let total = mib << 20;
    let start = Instant::now();
    writeln!(s, "{total}")?;
    let mut sent = 0u64;
    while sent < total {
        let n = chunk.len().min((total - sent) as usize);
        s.write_all(&chunk[..n])?;
        sent += n as u64;
    }
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let elapsed = start.elapsed();
    let got: u64 = line
        .trim()
        .parse()
        .with_context(|| format!("sink answered {line:?}"))?;
    if got != total {
        bail!("sink received {got} of {total} bytes");
    }
    Ok(total as f64 / (1 << 20) as f64 / elapsed.as_secs_f64())
}

/// Median time of connect + write 1 byte + read its echo, over `rounds` fresh connections.
fn connect_rtt_median(addr: SocketAddr, rounds: usize) -> Result<Duration> {
    let once = || -> Result<Duration> {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"x")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .with_context(|| format!("no echo from {addr}"))?;
        Ok(start.elapsed())
    };
    for _ in 0..5 {
        once()?;
    }
    let mut samples = (0..rounds.max(1))
        .map(|_| once())
        .collect::<Result<Vec<_>>>()?;
    samples.sort();
    Ok(samples[samples.len() / 2])
}
