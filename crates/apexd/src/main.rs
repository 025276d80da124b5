//! `apexd`: the Apex API server (see the library docs).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The Apex daemon: serves the API on `$APEX_HOME/run/apex.sock`.
#[derive(Parser)]
#[command(name = "apexd", version, about)]
struct Args {
    /// State directory (default: /var/lib/apex as root, ~/.apex otherwise).
    #[arg(long, env = "APEX_HOME")]
    home: Option<PathBuf>,
    /// Also log to stderr (the log file is always written).
    #[arg(long)]
    foreground: bool,
    /// Debug logs.
    #[arg(long)]
    debug: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = apexd::server::Options {
        home: args.home.unwrap_or_else(apexd::paths::default_home),
        foreground: args.foreground,
        debug: args.debug,
    };
    match apexd::server::run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("apexd: error: {e:#}");
            eprintln!("{line}");
            // `apex system start` runs us with stderr on /dev/null: leave the reason in the log.
            let log = apexd::paths::Paths::new(&opts.home).log_file();
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
                let _ = writeln!(f, "{line}");
            }
            ExitCode::from(1)
        }
    }
}
