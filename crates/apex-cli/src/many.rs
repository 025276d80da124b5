//! Commands over several named objects (`network inspect a b`, `volume rm x y`): each is
//! tried, failures are reported one line each, and the exit code says whether any failed.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use apexd::client::Client;
use serde::Serialize;

use crate::container::ApiExt;
use crate::format::{self, Format};

fn exit(failed: bool) -> ExitCode {
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `GET`s each path and prints the answers as one JSON array.
pub async fn inspect(client: &Client, paths: impl IntoIterator<Item = String>) -> Result<ExitCode> {
    let mut docs = Vec::new();
    let mut failed = false;
    for path in paths {
        match client.get::<serde_json::Value>(&path).await.api() {
            Ok(v) => docs.push(v),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = true;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&docs)?);
    Ok(exit(failed))
}

/// `DELETE`s each `(name, path)`, printing the names removed.
pub async fn remove(
    client: &Client,
    items: impl IntoIterator<Item = (String, String)>,
) -> ExitCode {
    let mut failed = false;
    for (name, path) in items {
        match client.delete::<serde_json::Value>(&path).await.api() {
            Ok(_) => println!("{name}"),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = true;
            }
        }
    }
    exit(failed)
}

/// Asks whether to remove `what` (docker's prune warning) and reads a yes or no from stdin.
pub fn confirm(what: &str) -> Result<bool> {
    print!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Prints a list as names only (`-q`), as JSON, or as a table of `header` and `rows`.
pub fn print_list<T: Serialize>(
    list: &[T],
    quiet: bool,
    fmt: Format,
    name: impl Fn(&T) -> &str,
    header: &[&str],
    rows: impl Fn(&[T]) -> Vec<Vec<String>>,
) -> Result<ExitCode> {
    if quiet {
        for item in list {
            println!("{}", name(item));
        }
    } else if fmt == Format::Json {
        println!("{}", serde_json::to_string_pretty(list)?);
    } else {
        format::table(header, &rows(list));
    }
    Ok(ExitCode::SUCCESS)
}
