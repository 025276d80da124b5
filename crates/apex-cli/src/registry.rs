//! `apex registry login|logout`.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use apex_oci::auth::Credentials;
use apex_oci::ImageStore;
use clap::Subcommand;

use crate::image::ConnectArgs;

#[derive(Subcommand)]
pub enum RegistryCmd {
    /// Store credentials for a registry after checking them.
    Login {
        /// Registry host[:port].
        server: String,
        /// User name.
        #[arg(short, long)]
        username: String,
        /// Password (prefer --password-stdin: this shows in `ps`).
        #[arg(short, long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Forget the credentials of a registry.
    Logout {
        /// Registry host[:port].
        server: String,
    },
}

pub async fn run(home: &Path, cmd: RegistryCmd) -> Result<()> {
    let store = ImageStore::open(home)?;
    match cmd {
        RegistryCmd::Login {
            server,
            username,
            password,
            password_stdin,
            connect,
        } => {
            let password = match (password, password_stdin) {
                (Some(p), _) => p,
                (None, true) => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("reading password from stdin")?;
                    s.trim_end_matches(['\n', '\r']).to_string()
                }
                (None, false) if std::io::stdin().is_terminal() => {
                    bail!("give the password with --password-stdin (or -p)")
                }
                (None, false) => bail!("no password: use --password-stdin or -p"),
            };
            if password.is_empty() {
                bail!("empty password");
            }
            store
                .login(
                    &server,
                    Credentials { username, password },
                    connect.options(),
                )
                .await?;
            println!("Login Succeeded");
            Ok(())
        }
        RegistryCmd::Logout { server } => {
            if store.logout(&server)? {
                println!("Removed login credentials for {server}");
            } else {
                println!("Not logged in to {server}");
            }
            Ok(())
        }
    }
}
