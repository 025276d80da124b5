//! `apex`: the command-line client.
//!
//! Image and registry commands run in-process on the image store; container commands
//! are clients of `apexd` over its Unix socket (started on demand).

/// `println!` that ends the process quietly on a closed pipe (see [`out`]).
macro_rules! println {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}

/// `print!` that ends the process quietly on a closed pipe (see [`out`]).
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::out::text(format_args!($($arg)*))
    };
}

mod attach;
mod build;
mod container;
mod cp;
mod daemon;
mod format;
mod image;
mod many;
mod mount_flags;
mod network;
mod out;
mod progress;
mod registry;
mod run;
mod system;
mod term;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run Linux containers, each in its own lightweight VM.
#[derive(Parser)]
#[command(name = "apex", version, about, propagate_version = true)]
struct Cli {
    /// State directory (default: /var/lib/apex as root, ~/.apex otherwise).
    #[arg(long, global = true, env = "APEX_HOME")]
    home: Option<PathBuf>,
    /// Verbose logs on stderr.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Containers(container::Verbs),
    /// Manage containers.
    #[command(subcommand)]
    Container(container::ContainerCmd),
    /// Manage images.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Manage networks.
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// Manage volumes.
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Copy files between a container and the host.
    Cp(cp::CpArgs),
    /// Log in to and out of registries.
    #[command(subcommand)]
    Registry(registry::RegistryCmd),
    /// Pull an image (same as `apex image pull`).
    Pull(image::PullArgs),
    /// List images (same as `apex image ls`).
    Images(image::LsArgs),
    /// Manage the apexd daemon.
    #[command(subcommand)]
    System(system::SystemCmd),
    /// Build an image from a Dockerfile.
    Build(build::BuildArgs),
    /// Manage the build cache.
    #[command(subcommand)]
    Builder(build::BuilderCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = if cli.debug { "debug" } else { "warn" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("APEX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .init();
    let home = cli.home.clone().unwrap_or_else(apexd::paths::default_home);
    let error_code = match &cli.cmd {
        Cmd::Containers(v) | Cmd::Container(container::ContainerCmd::Verbs(v)) => v.error_code(),
        _ => 1,
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(async {
        let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
        match cli.cmd {
            Cmd::Containers(v) => container::verbs(&home, v).await,
            Cmd::Container(c) => container::run(&home, c).await,
            Cmd::Image(c) => done(image::run(&home, c).await),
            Cmd::Network(c) => network::run(&home, c).await,
            Cmd::Volume(c) => volume::run(&home, c).await,
            Cmd::Cp(a) => cp::run(&home, a).await,
            Cmd::Pull(a) => done(image::run(&home, image::ImageCmd::Pull(a)).await),
            Cmd::Images(a) => done(image::run(&home, image::ImageCmd::Ls(a)).await),
            Cmd::Registry(c) => done(registry::run(&home, c).await),
            Cmd::System(c) => done(system::run(&home, c).await),
            Cmd::Build(a) => done(build::run(&home, a).await),
            Cmd::Builder(c) => done(build::builder(&home, c).await),
        }
    });
    // A pending read of stdin (run -i) must not hold the process open.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(error_code)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
