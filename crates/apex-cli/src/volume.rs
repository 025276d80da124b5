//! `apex volume`: create, list, inspect, remove and prune volumes (clients of apexd).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use apexd::client::Client;
use apexd::model::{VolumeCreate, VolumeInfo, VolumePruneReport};
use clap::{Args, Subcommand};

use crate::container::{enc, ApiExt};
use crate::daemon::ensure_daemon;
use crate::format::{self, Format};
use crate::many;

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a volume (a random name if none is given); prints its name.
    Create(CreateArgs),
    /// List volumes.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show volumes' details as JSON.
    Inspect(NamesArgs),
    /// Remove volumes (no container may use them).
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Remove unused anonymous volumes (all unused ones with --all).
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// Set a label (`key=value`). Repeatable.
    #[arg(short, long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Volume name.
    pub name: Option<String>,
}

#[derive(Args)]
pub struct LsArgs {
    /// Only names.
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Args)]
pub struct NamesArgs {
    /// Volume names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Args)]
pub struct RmArgs {
    /// Do not fail on volumes that do not exist.
    #[arg(short, long)]
    pub force: bool,
    /// Volume names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub force: bool,
    /// Remove every unused volume, named ones too.
    #[arg(short, long)]
    pub all: bool,
}

fn vpath(name: &str) -> String {
    format!("/v1/volumes/{}", enc(name))
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for l in labels {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() {
            bail!("invalid label {l:?}: use key=value");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

pub async fn run(home: &Path, cmd: VolumeCmd) -> Result<ExitCode> {
    if let VolumeCmd::Prune(a) = &cmd {
        if !a.force && !confirm(a.all)? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let client = ensure_daemon(home).await?;
    match cmd {
        VolumeCmd::Create(a) => {
            let req = VolumeCreate {
                name: a.name,
                labels: parse_labels(&a.labels)?,
            };
            let v: VolumeInfo = client.post_json("/v1/volumes", &req).await.api()?;
            println!("{}", v.name);
            Ok(ExitCode::SUCCESS)
        }
        VolumeCmd::Ls(a) => ls(&client, a).await,
        VolumeCmd::Inspect(a) => many::inspect(&client, a.names.iter().map(|n| vpath(n))).await,
        VolumeCmd::Rm(a) => {
            let force = a.force;
            let items = a.names.into_iter().map(|n| {
                let path = format!("{}?force={force}", vpath(&n));
                (n, path)
            });
            Ok(many::remove(&client, items).await)
        }
        VolumeCmd::Prune(a) => {
            let path = format!("/v1/volumes/prune?all={}", a.all);
            let r: VolumePruneReport = client.post(&path).await.api()?;
            if !r.deleted.is_empty() {
                println!("Deleted Volumes:");
                for n in &r.deleted {
                    println!("{n}");
                }
                println!();
            }
            println!("Total reclaimed space: {}", format::size(r.space_reclaimed));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn confirm(all: bool) -> Result<bool> {
    many::confirm(if all {
        "all local volumes not used by at least one container"
    } else {
        "anonymous local volumes not used by at least one container"
    })
}

async fn ls(client: &Client, a: LsArgs) -> Result<ExitCode> {
    let list: Vec<VolumeInfo> = client.get("/v1/volumes").await.api()?;
    let header = ["DRIVER", "VOLUME NAME", "CONTAINERS"];
    many::print_list(&list, a.quiet, a.format, |v| &v.name, &header, rows)
}

fn rows(list: &[VolumeInfo]) -> Vec<Vec<String>> {
    list.iter()
        .map(|v| {
            vec![
                v.driver.clone(),
                v.name.clone(),
                if v.containers.is_empty() {
                    "-".into()
                } else {
                    v.containers.join(",")
                },
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        c: VolumeCmd,
    }

    fn p(args: &[&str]) -> Result<VolumeCmd, clap::Error> {
        T::try_parse_from(std::iter::once("apex").chain(args.iter().copied())).map(|t| t.c)
    }

    #[test]
    fn commands_parse() {
        match p(&["create", "--label", "a=b", "-l", "c", "data"]).unwrap() {
            VolumeCmd::Create(c) => {
                assert_eq!(c.name.as_deref(), Some("data"));
                let l = parse_labels(&c.labels).unwrap();
                assert_eq!(l.get("a").map(String::as_str), Some("b"));
                assert_eq!(l.get("c").map(String::as_str), Some(""));
            }
            _ => panic!("create"),
        }
        assert!(matches!(p(&["create"]).unwrap(), VolumeCmd::Create(c) if c.name.is_none()));
        assert!(matches!(
            p(&["ls", "-q"]).unwrap(),
            VolumeCmd::Ls(LsArgs { quiet: true, .. })
        ));
        assert!(
            matches!(p(&["rm", "-f", "a", "b"]).unwrap(), VolumeCmd::Rm(r) if r.force && r.names.len() == 2)
        );
        assert!(matches!(
            p(&["prune", "-f", "-a"]).unwrap(),
            VolumeCmd::Prune(PruneArgs {
                force: true,
                all: true
            })
        ));
        assert!(p(&["rm"]).is_err());
        assert!(parse_labels(&["=x".into()]).is_err());
    }

    #[test]
    fn table_rows() {
        let v = VolumeInfo {
            name: "data".into(),
            driver: "local".into(),
            mountpoint: "/x".into(),
            created: String::new(),
            labels: BTreeMap::new(),
            anonymous: false,
            containers: vec!["web".into(), "db".into()],
        };
        assert_eq!(rows(&[v]), [["local", "data", "web,db"]]);
    }
}
