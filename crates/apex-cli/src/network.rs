//! `apex network`: create, list, inspect and remove networks (clients of apexd).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use apexd::client::Client;
use apexd::model::{NetworkCreate, NetworkInfo, PruneReport};
use clap::{Args, Subcommand};

use crate::container::{enc, ApiExt};
use crate::daemon::ensure_daemon;
use crate::format::Format;
use crate::many;

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Create a network (a bridge with its own subnet and DNS server).
    Create(CreateArgs),
    /// List networks.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show networks' details as JSON.
    Inspect(NamesArgs),
    /// Remove networks (no container may use them).
    #[command(visible_alias = "remove")]
    Rm(NamesArgs),
    /// Remove every network no container uses (except `default`).
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// IPv4 subnet in CIDR notation (default: a free /24 of 10.213.0.0/16).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// No outbound access: containers only reach each other.
    #[arg(long)]
    pub internal: bool,
    /// Network name.
    pub name: String,
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
    /// Network names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub force: bool,
}

fn npath(name: &str) -> String {
    format!("/v1/networks/{}", enc(name))
}

pub async fn run(home: &Path, cmd: NetworkCmd) -> Result<ExitCode> {
    if let NetworkCmd::Prune(a) = &cmd {
        if !a.force && !confirm()? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let client = ensure_daemon(home).await?;
    match cmd {
        NetworkCmd::Create(a) => {
            let req = NetworkCreate {
                name: a.name,
                subnet: a.subnet,
                internal: a.internal,
                labels: Default::default(),
            };
            let n: NetworkInfo = client.post_json("/v1/networks", &req).await.api()?;
            println!("{}", n.name);
            Ok(ExitCode::SUCCESS)
        }
        NetworkCmd::Ls(a) => ls(&client, a).await,
        NetworkCmd::Inspect(a) => many::inspect(&client, a.names.iter().map(|n| npath(n))).await,
        NetworkCmd::Rm(a) => {
            let items = a.names.into_iter().map(|n| {
                let path = npath(&n);
                (n, path)
            });
            Ok(many::remove(&client, items).await)
        }
        NetworkCmd::Prune(_) => {
            let r: PruneReport = client.post("/v1/networks/prune").await.api()?;
            if !r.deleted.is_empty() {
                println!("Deleted Networks:");
                for n in &r.deleted {
                    println!("{n}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn confirm() -> Result<bool> {
    many::confirm("all networks not used by at least one container")
}

async fn ls(client: &Client, a: LsArgs) -> Result<ExitCode> {
    let list: Vec<NetworkInfo> = client.get("/v1/networks").await.api()?;
    let header = [
        "NAME",
        "SUBNET",
        "GATEWAY",
        "BRIDGE",
        "INTERNAL",
        "CONTAINERS",
    ];
    many::print_list(&list, a.quiet, a.format, |n| &n.name, &header, rows)
}

fn rows(list: &[NetworkInfo]) -> Vec<Vec<String>> {
    list.iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.subnet.clone(),
                n.gateway.clone(),
                if n.bridge.is_empty() {
                    "-".into()
                } else {
                    n.bridge.clone()
                },
                if n.internal { "yes" } else { "no" }.into(),
                n.containers.len().to_string(),
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
        c: NetworkCmd,
    }

    fn p(args: &[&str]) -> Result<NetworkCmd, clap::Error> {
        T::try_parse_from(std::iter::once("apex").chain(args.iter().copied())).map(|t| t.c)
    }

    #[test]
    fn commands_parse() {
        match p(&["create", "--subnet", "10.215.7.0/29", "--internal", "small"]).unwrap() {
            NetworkCmd::Create(c) => {
                assert_eq!(c.name, "small");
                assert_eq!(c.subnet.as_deref(), Some("10.215.7.0/29"));
                assert!(c.internal);
            }
            _ => panic!("create"),
        }
        assert!(matches!(
            p(&["ls", "--format", "json"]).unwrap(),
            NetworkCmd::Ls(LsArgs {
                format: Format::Json,
                ..
            })
        ));
        assert!(matches!(p(&["rm", "a", "b"]).unwrap(), NetworkCmd::Rm(n) if n.names.len() == 2));
        assert!(matches!(
            p(&["prune", "-f"]).unwrap(),
            NetworkCmd::Prune(PruneArgs { force: true })
        ));
        assert!(p(&["rm"]).is_err());
        assert!(p(&["create"]).is_err());
    }

    #[test]
    fn table_rows() {
        let n = NetworkInfo {
            name: "default".into(),
            bridge: String::new(),
            subnet: "10.213.0.0/24".into(),
            gateway: "10.213.0.1".into(),
            internal: false,
            created: String::new(),
            containers: vec![],
            labels: Default::default(),
        };
        assert_eq!(
            rows(&[n]),
            [["default", "10.213.0.0/24", "10.213.0.1", "-", "no", "0"]]
        );
    }
}
