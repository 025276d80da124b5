//! `apex system`: start, stop and inspect the `apexd` daemon.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use apexd::api::{DiskUsage, Message, SystemStatus, VersionInfo};
use apexd::client::Client;
use apexd::paths::Paths;
use clap::{Args, Subcommand};

use crate::daemon::{self, pid_alive, tail, Started};
use crate::format::{self, Format};

/// How long `stop` waits for the daemon to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Subcommand)]
pub enum SystemCmd {
    /// Start apexd in the background (no-op if it is running).
    Start,
    /// Stop apexd gracefully.
    Stop,
    /// Show whether apexd runs and what it manages.
    Status(FormatArgs),
    /// Show disk usage of the state directory.
    Df(FormatArgs),
    /// Show client and daemon versions.
    Version,
    /// Print the end of the daemon log.
    Logs(LogsArgs),
    /// Show the host DNS server for `<name>.test` and how to use it.
    Dns,
    /// Show or choose the guest kernel containers boot.
    #[command(subcommand)]
    Kernel(KernelCmd),
}

/// `apex system kernel`.
#[derive(Subcommand)]
pub enum KernelCmd {
    /// Print the kernel new containers boot.
    Show,
    /// Choose the kernel new containers boot (running ones keep theirs).
    Set(KernelSetArgs),
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct KernelSetArgs {
    /// Apex's own kernel (built by set-up), else Debian's.
    #[arg(long)]
    pub default: bool,
    /// Debian's cloud kernel, with its modules.
    #[arg(long)]
    pub debian: bool,
    /// A kernel directory (`vmlinux` + `version`, or `vmlinuz` + `version` + `modules/`), or
    /// a kernel image with virtio-mmio, vsock, erofs and overlayfs built in.
    pub path: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct FormatArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Args)]
pub struct LogsArgs {
    /// Number of lines.
    #[arg(short = 'n', long = "tail", default_value_t = 100)]
    pub lines: usize,
}

pub async fn run(home: &Path, cmd: SystemCmd) -> Result<()> {
    let paths = Paths::new(home);
    let client = Client::new(paths.socket());
    match cmd {
        SystemCmd::Start => start(&paths, &client).await,
        SystemCmd::Stop => stop(&client).await,
        SystemCmd::Status(a) => status(&client, a.format).await,
        SystemCmd::Df(a) => df(&client, a.format).await,
        SystemCmd::Version => version(&client).await,
        SystemCmd::Logs(a) => logs(&paths, a.lines),
        SystemCmd::Dns => dns(&client).await,
        SystemCmd::Kernel(k) => kernel(home, k),
    }
}

fn kernel(home: &Path, cmd: KernelCmd) -> Result<()> {
    use apex_vm::{KernelChoice, KernelFlavor};
    let (choice, kernel) = match cmd {
        KernelCmd::Show => {
            let choice = apex_runtime::kernel::choice(home)?;
            (choice.clone(), apex_vm::KernelAssets::resolve(&choice)?)
        }
        KernelCmd::Set(a) => {
            let choice = match (a.default, a.debian, a.path) {
                (true, _, _) => KernelChoice::Default,
                (_, true, _) => KernelChoice::Debian,
                (_, _, Some(p)) => KernelChoice::Path(std::path::absolute(&p)?),
                _ => unreachable!("clap requires one"),
            };
            let k = apex_runtime::kernel::set_choice(home, &choice)?;
            (choice, k)
        }
    };
    let flavor = match kernel.flavor {
        KernelFlavor::Minimal => "built in, no ACPI",
        KernelFlavor::Distro => "modules, ACPI",
    };
    println!("setting: {}", choice.as_setting());
    println!("kernel:  {} ({flavor})", kernel.version);
    println!("image:   {}", kernel.image.display());
    Ok(())
}

async fn start(paths: &Paths, client: &Client) -> Result<()> {
    match daemon::start(paths, client, false).await? {
        Started::New(pid) => println!("apexd started (pid {pid})"),
        Started::AlreadyRunning => {
            let s: SystemStatus = client.get("/v1/system/status").await?;
            println!("apexd is already running (pid {})", s.pid);
        }
    }
    Ok(())
}

async fn stop(client: &Client) -> Result<()> {
    let st: SystemStatus = client.get("/v1/system/status").await?;
    let _: Message = client.post("/v1/system/shutdown").await?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while pid_alive(st.pid) {
        if Instant::now() >= deadline {
            bail!(
                "apexd (pid {}) is still running {}s after the shutdown request",
                st.pid,
                STOP_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("apexd stopped (pid {})", st.pid);
    Ok(())
}

async fn status(client: &Client, fmt: Format) -> Result<()> {
    let s: SystemStatus = client.get("/v1/system/status").await?;
    if fmt == Format::Json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("apexd is running (pid {})", s.pid);
    println!("uptime:       {}s", s.uptime_s);
    println!("home:         {}", s.home.display());
    println!("containers:   {}", s.containers);
    println!("images:       {}", s.images);
    println!("accelerator:  {}", s.accelerator);
    match (&s.network_mode[..], &s.network_reason) {
        ("", _) => {}
        (m, Some(why)) => println!("network:      {m} ({why})"),
        (m, None) => println!("network:      {m}"),
    }
    if !s.dns.is_empty() {
        println!("dns:          {}", s.dns);
    }
    if !s.docker_host.is_empty() {
        println!("docker:       DOCKER_HOST={}", s.docker_host);
    }
    Ok(())
}

async fn dns(client: &Client) -> Result<()> {
    let s: SystemStatus = client.get("/v1/system/status").await?;
    print!("{}", dns_help(&s));
    Ok(())
}

/// What `apex system dns` prints: the address first, then how to use it.
fn dns_help(s: &SystemStatus) -> String {
    if s.dns.is_empty() {
        let why = match (&s.network_mode[..], &s.network_reason) {
            ("user", Some(r)) => format!("user-mode networking ({r})"),
            _ => "no DNS server could be started (see `apex system logs`)".into(),
        };
        return format!("apexd serves no host DNS: {why}.\n");
    }
    let (ip, port) = s
        .dns
        .rsplit_once(':')
        .map(|(ip, p)| (ip.to_string(), p.to_string()))
        .unwrap_or((s.dns.clone(), "53".into()));
    let dns = &s.dns;
    let lines = [
        dns.to_string(),
        String::new(),
        format!("apexd answers <name>.test and <name>.<network>.test of running containers at {dns}"),
        "and forwards other names to the host's resolvers. Try:".into(),
        String::new(),
        format!("    dig @{ip} -p {port} web.test"),
        String::new(),
        "To resolve .test names everywhere with systemd-resolved:".into(),
        String::new(),
        format!("    resolvectl dns lo {ip}:{port}"),
        "    resolvectl domain lo '~test'".into(),
        String::new(),
        format!("(or a [Resolve] drop-in with DNS={ip}:{port} and Domains=~test). /etc/resolv.conf"),
        format!("cannot name a port: point it at a local forwarder (dnsmasq: server=/test/{ip}#{port})."),
    ];
    lines.join("\n") + "\n"
}

async fn df(client: &Client, fmt: Format) -> Result<()> {
    let d: DiskUsage = client.get("/v1/system/df").await?;
    if fmt == Format::Json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    let mut rows: Vec<Vec<String>> = d
        .dirs
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                format::size(e.bytes),
                e.path.display().to_string(),
            ]
        })
        .collect();
    rows.push(vec!["total".into(), format::size(d.total), String::new()]);
    format::table(&["NAME", "SIZE", "PATH"], &rows);
    Ok(())
}

async fn version(client: &Client) -> Result<()> {
    let c = VersionInfo::current();
    println!(
        "Client: {} (API {}, {}/{})",
        c.version, c.api_version, c.os, c.arch
    );
    let s: VersionInfo = client.get("/v1/version").await?;
    println!(
        "Server: {} (API {}, {}/{})",
        s.version, s.api_version, s.os, s.arch
    );
    Ok(())
}

fn logs(paths: &Paths, n: usize) -> Result<()> {
    let log = paths.log_file();
    if !log.exists() {
        bail!("no daemon log at {} (apexd never ran here)", log.display());
    }
    for line in tail(&log, n)? {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(mode: &str, reason: Option<&str>, dns: &str) -> SystemStatus {
        SystemStatus {
            pid: 1,
            uptime_s: 0,
            home: "/h".into(),
            containers: 0,
            images: 0,
            accelerator: "tcg".into(),
            network_mode: mode.into(),
            network_reason: reason.map(Into::into),
            dns: dns.into(),
            docker_host: String::new(),
        }
    }

    #[test]
    fn dns_help_starts_with_the_address() {
        let h = dns_help(&status("bridge", None, "127.0.0.1:5354"));
        assert_eq!(h.lines().next(), Some("127.0.0.1:5354"));
        assert!(h.contains("dig @127.0.0.1 -p 5354 web.test"), "{h}");
        assert!(h.contains("resolvectl dns lo 127.0.0.1:5354"), "{h}");
        let u = dns_help(&status("user", Some("no CAP_NET_ADMIN"), ""));
        assert!(u.contains("user-mode networking (no CAP_NET_ADMIN)"), "{u}");
    }
}
