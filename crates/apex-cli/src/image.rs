//! `apex image ...`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use apex_oci::platform::Platform;
use apex_oci::registry::{ConnectOptions, Scheme};
use apex_oci::store::PullOptions;
use apex_oci::ImageStore;
use clap::{Args, Subcommand};

use crate::format::{self, Format};
use crate::progress;

/// Registry connection flags shared by pull, push and login.
#[derive(Args, Clone)]
pub struct ConnectArgs {
    /// How to reach the registry: http, https, or auto (https; http allowed for
    /// loopback and configured insecure registries).
    #[arg(long, default_value = "auto", value_parser = parse_scheme)]
    pub scheme: Scheme,
}

fn parse_scheme(s: &str) -> Result<Scheme, String> {
    s.parse()
}

impl ConnectArgs {
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            scheme: self.scheme,
            insecure_registries: std::env::var("APEX_INSECURE_REGISTRIES")
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

#[derive(Args)]
pub struct PullArgs {
    /// Image reference, e.g. `busybox`, `registry:5000/team/app:1.0`, `app@sha256:...`.
    pub reference: String,
    /// Platform to pull from a multi-platform image (default: this host's).
    #[arg(long, value_parser = parse_platform)]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not build the root filesystem image now (it is built on first run).
    #[arg(long)]
    pub no_unpack: bool,
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    s.parse()
}

#[derive(Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Only image IDs.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Download an image from a registry.
    Pull(PullArgs),
    /// List local images.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show details of images as JSON.
    Inspect {
        /// Image names or IDs.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Give an image another name.
    Tag {
        /// Existing image.
        source: String,
        /// New name.
        target: String,
    },
    /// Remove images (or names).
    #[command(alias = "remove")]
    Rm {
        /// Image names or IDs.
        #[arg(required = true)]
        images: Vec<String>,
        /// Remove an image even if it has several names.
        #[arg(short, long)]
        force: bool,
    },
    /// Remove unused images and content.
    Prune {
        /// Remove all images, not only dangling ones.
        #[arg(short, long)]
        all: bool,
        /// Do not ask (kept for docker compatibility; apex never prompts).
        #[arg(short, long)]
        force: bool,
    },
    /// Upload an image to its registry.
    Push {
        /// Image name (its registry part says where it goes).
        reference: String,
        #[command(flatten)]
        connect: ConnectArgs,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write images to an OCI archive.
    Save {
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Images to save.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Import images from an OCI archive.
    Load {
        /// Input file.
        #[arg(short, long)]
        input: PathBuf,
    },
}

pub async fn run(home: &Path, cmd: ImageCmd) -> Result<()> {
    let store = ImageStore::open(home)?;
    match cmd {
        ImageCmd::Pull(a) => pull(&store, a).await,
        ImageCmd::Ls(a) => ls(&store, a),
        ImageCmd::Inspect { images } => {
            let docs = images
                .iter()
                .map(|i| store.inspect(i))
                .collect::<Result<Vec<_>>>()?;
            println!("{}", serde_json::to_string_pretty(&docs)?);
            Ok(())
        }
        ImageCmd::Tag { source, target } => {
            store.tag(&source, &target)?;
            Ok(())
        }
        ImageCmd::Rm { images, force } => {
            let mut failed = None;
            for i in &images {
                match store.remove(i, force) {
                    Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        failed = Some(e);
                    }
                }
            }
            match failed {
                Some(_) if images.len() == 1 => bail!("could not remove {}", images[0]),
                Some(_) => bail!("some images could not be removed"),
                None => Ok(()),
            }
        }
        ImageCmd::Prune { all, force: _ } => {
            let (removed, freed) = store.prune(all)?;
            for d in &removed {
                println!("Deleted: {d}");
            }
            println!("Total reclaimed space: {}", format::size(freed));
            Ok(())
        }
        ImageCmd::Push {
            reference,
            connect,
            quiet,
        } => {
            let r = store
                .push(
                    &reference,
                    connect.options(),
                    progress::bars(quiet, "Pushing"),
                    None,
                )
                .await?;
            if !quiet {
                println!("Pushed {r}");
            }
            Ok(())
        }
        ImageCmd::Save { output, images } => store.save(&images, &output),
        ImageCmd::Load { input } => {
            for n in store.load(&input)? {
                println!("Loaded image: {n}");
            }
            Ok(())
        }
    }
}

async fn pull(store: &ImageStore, a: PullArgs) -> Result<()> {
    let opts = PullOptions {
        platform: a.platform,
        connect: a.connect.options(),
        progress: progress::bars(a.quiet, "Pulling"),
        no_unpack: a.no_unpack,
        credentials: None,
    };
    let rep = store.pull(&a.reference, opts).await?;
    if a.quiet {
        println!("{}", rep.name);
        return Ok(());
    }
    println!("Digest: {}", rep.record.digest);
    println!(
        "Status: {} {} ({}, {} layers, {} downloaded in {:.2}s{})",
        if rep.downloaded > 0 {
            "Downloaded"
        } else {
            "Up to date:"
        },
        rep.name,
        rep.record.platform,
        rep.record.layers.len(),
        format::size(rep.downloaded),
        rep.fetch.as_secs_f64(),
        match &rep.rootfs {
            Some(b) if !b.cached => format!(
                ", rootfs unpacked in {:.2}s + packed in {:.2}s",
                b.unpack.as_secs_f64(),
                b.pack.as_secs_f64()
            ),
            _ => String::new(),
        }
    );
    Ok(())
}

fn ls(store: &ImageStore, a: LsArgs) -> Result<()> {
    let images = store.list()?;
    if a.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(());
    }
    if a.quiet {
        for i in &images {
            println!("{}", &i.id.trim_start_matches("sha256:")[..12]);
        }
        return Ok(());
    }
    let mut rows = Vec::new();
    for i in &images {
        let id = i.id.trim_start_matches("sha256:")[..12].to_string();
        let names: Vec<(String, String)> = if i.names.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            i.names.iter().map(|n| split_name(n)).collect()
        };
        for (repo, tag) in names {
            rows.push(vec![
                repo,
                tag,
                id.clone(),
                i.platform.clone(),
                format::ago(i.created.as_deref()),
                format::size(i.size),
            ]);
        }
    }
    format::table(
        &[
            "REPOSITORY",
            "TAG",
            "IMAGE ID",
            "PLATFORM",
            "CREATED",
            "SIZE",
        ],
        &rows,
    );
    Ok(())
}

/// `repo:tag` -> (repo, tag); `repo@sha256:..` -> (repo, <none>).
fn split_name(n: &str) -> (String, String) {
    if let Some((repo, _)) = n.split_once('@') {
        return (repo.to_string(), "<none>".into());
    }
    match n.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (n.to_string(), "<none>".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_names() {
        assert_eq!(
            split_name("busybox:latest"),
            ("busybox".into(), "latest".into())
        );
        assert_eq!(
            split_name("127.0.0.1:5000/app:1"),
            ("127.0.0.1:5000/app".into(), "1".into())
        );
        assert_eq!(
            split_name("127.0.0.1:5000/app@sha256:abc"),
            ("127.0.0.1:5000/app".into(), "<none>".into())
        );
    }
}
