//! `apex run` and `apex create`: a container created by apexd (the image pulled here
//! first if it is missing), then started detached or attached to this terminal.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use apex_oci::platform::Platform;
use apex_oci::store::PullOptions;
use apex_oci::ImageStore;
use apex_shim::stream::Exit;
use apexd::client::{Client, ClientError};
use apexd::model::{ContainerRecord, CreateRequest, Created, HealthConfig, RestartPolicy};
use clap::Args;
use hyper::Method;

use crate::attach::{self, End, Signals};
use crate::container::{enc, ApiExt};
use crate::daemon::ensure_daemon;
use crate::image::ConnectArgs;
use crate::progress;

/// Exit code for failures of apex itself (docker uses 125).
pub const EXIT_APEX_ERROR: u8 = 125;

/// How long to wait for apexd to record an attached container's exit.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a create may take (it may build the image's root filesystem).
const CREATE_TIMEOUT: Duration = Duration::from_secs(600);

/// What a container is made of: the flags `create` and `run` share.
#[derive(Args)]
pub struct CreateArgs {
    /// Image to run.
    pub image: String,
    /// Command and arguments (default: the image's entrypoint and cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Keep stdin open and forward it to the container.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Set environment variables (`KEY=value`, or `KEY` to pass this shell's value).
    #[arg(short, long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User (`name`, `uid`, `name:group`, `uid:gid`).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Override the image's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Container name (also its hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Guest memory, e.g. `256m`, `2g` (default 1g: touched on demand, and what the guest
    /// frees goes back to the host).
    #[arg(short, long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Network to join (default `default`; `none` for no network).
    #[arg(long, value_name = "NAME")]
    pub network: Option<String>,
    /// Publish a port: `[host-ip:][host-port:]container-port[/tcp|udp]` (host address
    /// 127.0.0.1 unless given). Repeatable.
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Bind mount or volume: `SRC:DST[:ro]` (SRC a host path, absolute or `./`-relative,
    /// or a volume name) or `DST` for an anonymous volume. Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "SPEC")]
    pub volumes: Vec<String>,
    /// A mount: `type=bind|volume|tmpfs,source=...,target=...[,readonly]
    /// [,volume-nocopy][,tmpfs-size=...][,tmpfs-mode=...]`. Repeatable.
    #[arg(long = "mount", value_name = "SPEC")]
    pub mounts: Vec<String>,
    /// A tmpfs: `DST[:size=64m,mode=1777,exec,ro]`. Repeatable.
    #[arg(long = "tmpfs", value_name = "DST[:OPTS]")]
    pub tmpfs: Vec<String>,
    /// Make the root filesystem read-only (mounts stay writable unless `ro`).
    #[arg(long)]
    pub read_only: bool,
    /// Size limit of the writable layer: `size=20G` (default 10G; a sparse disk).
    #[arg(long = "storage-opt", value_name = "size=SIZE", value_parser = crate::mount_flags::parse_storage_opt)]
    pub storage_opt: Option<u64>,
    /// Set a label (`key=value`). Repeatable.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Container hostname (default: its name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Expose a port (`80`, `53/udp`). Repeatable.
    #[arg(long = "expose", value_name = "PORT[/PROTO]")]
    pub expose: Vec<String>,
    /// Publish every exposed port on a free host port.
    #[arg(short = 'P', long)]
    pub publish_all: bool,
    /// Signal that stops the container (default SIGTERM or the image's).
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Seconds `stop` waits before killing (default 10).
    #[arg(long, value_name = "SECS")]
    pub stop_timeout: Option<u64>,
    /// Healthcheck command, run with `/bin/sh -c` in the container.
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between health checks (`30s`, `1m`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ns)]
    pub health_interval: Option<i64>,
    /// Time a health check may take.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ns)]
    pub health_timeout: Option<i64>,
    /// Failed checks in a row that make the container unhealthy.
    #[arg(long, value_name = "N")]
    pub health_retries: Option<i64>,
    /// Grace period after start when failed checks do not count.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ns)]
    pub health_start_period: Option<i64>,
    /// Disable the image's healthcheck.
    #[arg(long)]
    pub no_healthcheck: bool,
    /// Run a small init as PID 1 that forwards signals and reaps processes.
    #[arg(long)]
    pub init: bool,
    /// Add an /etc/hosts entry (`name:ip`). Repeatable.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    /// DNS server instead of the network's. Repeatable.
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<String>,
    /// Another name for the container on its network. Repeatable.
    #[arg(long = "network-alias", value_name = "NAME")]
    pub network_alias: Vec<String>,
    /// Mount the volumes of another container (`NAME[:ro|rw]`). Repeatable.
    #[arg(long = "volumes-from", value_name = "CONTAINER")]
    pub volumes_from: Vec<String>,
    /// Restart policy: no, on-failure[:N], always, unless-stopped.
    #[arg(long, default_value = "no", value_parser = parse_restart)]
    pub restart: RestartPolicy,
    /// Platform to pull if the image is missing.
    #[arg(long, value_parser = |s: &str| s.parse::<Platform>())]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Seconds to wait for the VM to boot.
    #[arg(long, default_value_t = 60)]
    pub boot_timeout: u64,
    /// No pull progress.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Run in the background and print the container ID.
    #[arg(short, long)]
    pub detach: bool,
    /// Print the VM's boot log (kernel and init) to stderr when the container ends.
    #[arg(long)]
    pub boot_log: bool,
}

fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    s.parse()
}

/// The healthcheck the flags ask for (`None`: the image's).
fn healthcheck(a: &CreateArgs) -> Option<HealthConfig> {
    if a.no_healthcheck {
        return Some(HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        });
    }
    let any = a.health_cmd.is_some()
        || a.health_interval.is_some()
        || a.health_timeout.is_some()
        || a.health_retries.is_some()
        || a.health_start_period.is_some();
    any.then(|| HealthConfig {
        test: a
            .health_cmd
            .as_ref()
            .map(|c| vec!["CMD-SHELL".to_string(), c.clone()])
            .unwrap_or_default(),
        interval: a.health_interval.unwrap_or(0),
        timeout: a.health_timeout.unwrap_or(0),
        retries: a.health_retries.unwrap_or(0),
        start_period: a.health_start_period.unwrap_or(0),
        start_interval: 0,
    })
}

/// Parses a Go-style duration (`30s`, `1m30s`, `500ms`, `2h`) into nanoseconds.
pub fn parse_duration_ns(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 30s, 1m30s or 500ms");
    let mut total: f64 = 0.0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    Ok(total as i64)
}

/// Parses `256m`, `1g`, `512MiB`, or bytes into MiB.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (num, mult): (&str, u64) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid memory size {s:?}: use e.g. 512m or 1g"))?;
    let mib = n.saturating_mul(mult) >> 20;
    if mib < apex_vm::MIN_MEMORY_MIB {
        return Err(format!(
            "memory {s} is too small: a container VM needs at least {}m",
            apex_vm::MIN_MEMORY_MIB
        ));
    }
    Ok(mib)
}

/// `KEY=value` entries from env files then flags (later ones win in the container);
/// `KEY` alone takes this process's value, or is dropped if it has none (as docker).
pub fn resolve_env(
    flags: &[String],
    files: &[PathBuf],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading env file {}", f.display()))?;
        lines.extend(apex_runtime::spec::parse_env_file(&text));
    }
    lines.extend(flags.iter().cloned());
    let mut out = Vec::new();
    for kv in lines {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        if key.is_empty() {
            bail!("invalid environment variable {kv:?}: empty name");
        }
        if kv.contains('=') {
            out.push(kv);
        } else if let Some(v) = lookup(&kv) {
            out.push(format!("{kv}={v}"));
        }
    }
    Ok(out)
}

/// `apex create`: prints the new container's ID.
pub async fn create(home: &Path, a: CreateArgs) -> Result<ExitCode> {
    let client = ensure_daemon(home).await?;
    let c = create_container(home, &client, &a).await?;
    println!("{}", c.id);
    Ok(ExitCode::SUCCESS)
}

/// Creates the container, pulling its image here first if the daemon does not have it.
pub async fn create_container(home: &Path, client: &Client, a: &CreateArgs) -> Result<Created> {
    if a.rm && a.restart != RestartPolicy::No {
        bail!("conflicting options: --restart and --rm");
    }
    let cwd = std::env::current_dir().context("the current directory")?;
    let mounts = a
        .mounts
        .iter()
        .map(|m| crate::mount_flags::parse_mount(m, &cwd))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| anyhow::anyhow!("invalid argument for --mount flag: {e}"))?;
    let req = CreateRequest {
        image: a.image.clone(),
        name: a.name.clone(),
        command: a.command.clone(),
        entrypoint: a.entrypoint.as_ref().map(|e| {
            if e.is_empty() {
                vec![]
            } else {
                vec![e.clone()]
            }
        }),
        env: resolve_env(&a.env, &a.env_file, |k| std::env::var(k).ok())?,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        tty: a.tty,
        stdin_open: a.interactive,
        cpus: Some(a.cpus),
        memory_mib: a.memory,
        boot_timeout_s: Some(a.boot_timeout),
        restart: a.restart,
        auto_remove: a.rm,
        network: a.network.clone(),
        publish: a.publish.clone(),
        volumes: a
            .volumes
            .iter()
            .map(|v| crate::mount_flags::absolutize_volume(v, &cwd))
            .collect(),
        mounts,
        tmpfs: a.tmpfs.clone(),
        read_only: a.read_only,
        storage_size: a.storage_opt,
        labels: a
            .labels
            .iter()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        hostname: a.hostname.clone(),
        exposed_ports: a.expose.clone(),
        publish_all: a.publish_all,
        stop_signal: a.stop_signal.clone(),
        stop_timeout: a.stop_timeout,
        healthcheck: healthcheck(a),
        init: a.init,
        extra_hosts: a.add_host.clone(),
        dns: a.dns.clone(),
        aliases: a.network_alias.clone(),
        volumes_from: a.volumes_from.clone(),
        ..Default::default()
    };
    let client = client.with_timeout(Some(CREATE_TIMEOUT));
    match client.post_json("/v1/containers", &req).await {
        Ok(c) => return Ok(c),
        Err(e) if is_missing_image(&e) => {}
        Err(e) => return Err(e).api(),
    }
    if !a.quiet {
        eprintln!("Unable to find image '{}' locally", a.image);
    }
    let store = ImageStore::open(home)?;
    let opts = PullOptions {
        platform: a.platform.clone(),
        connect: a.connect.options(),
        progress: progress::bars(a.quiet, "Pulling"),
        no_unpack: false,
        credentials: None,
    };
    store.pull(&a.image, opts).await?;
    drop(store);
    client.post_json("/v1/containers", &req).await.api()
}

/// A 404 on create means the image is missing (not the route, nor the network).
fn is_missing_image(e: &ClientError) -> bool {
    e.is_not_found()
        && !e.message().starts_with("no such route")
        && !e.message().starts_with("no such network")
}

/// `apex run`: returns the container's exit code (or the daemon's 125/126/127).
pub async fn run(home: &Path, a: RunArgs) -> Result<ExitCode> {
    let c = &a.create;
    if a.detach {
        let client = ensure_daemon(home).await?;
        let id = create_container(home, &client, c).await?.id;
        let _: ContainerRecord = client
            .with_timeout(Some(CREATE_TIMEOUT))
            .post(&format!("/v1/containers/{id}/start"))
            .await
            .api()?;
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    attach::check_tty(c.tty, c.interactive)?;
    // From here on, signals are ours to handle: one that arrives while the container is
    // being set up must not leave it behind (a created container stays, as with docker).
    let mut signals = Signals::install()?;
    let setup = async {
        let client = ensure_daemon(home).await?;
        let created = create_container(home, &client, c).await?;
        anyhow::Ok((client, created.id))
    };
    let (client, id) = tokio::select! {
        r = setup => r?,
        n = signals.next() => return Ok(ExitCode::from(128 + n as u8)),
    };

    let path = format!(
        "/v1/containers/{id}/attach?stdin={}&start=true",
        c.interactive
    );
    let io = match client.upgrade(Method::POST, &path, None).await {
        Ok(io) => io,
        Err(e) => {
            if c.rm {
                remove(&client, &id).await;
            }
            return Err(e).api();
        }
    };
    // The boot log is the VM's console, in the VM's state directory while it runs. With
    // --rm (and in any case once the VM is gone) it may vanish as soon as the process
    // exits: keep a copy taken once the VM is up, and prefer a later read if possible.
    let boot_log = std::sync::Arc::new(std::sync::Mutex::new(None::<(PathBuf, String)>));
    let on_started: Option<Box<dyn FnOnce() + Send>> = a.boot_log.then(|| {
        let (snap, home, id) = (boot_log.clone(), home.to_path_buf(), id.clone());
        Box::new(move || {
            if let Some(p) = console_log(&home, &id) {
                if let Ok(text) = std::fs::read_to_string(&p) {
                    *snap.lock().unwrap() = Some((p, text));
                }
            }
        }) as Box<dyn FnOnce() + Send>
    });
    let opts = attach::Options {
        stdin: c.interactive,
        tty: c.tty,
        interrupt_before_start: true,
        on_started,
    };
    let outcome = attach::session(io, opts, &mut signals).await;
    if let Some((path, early)) = boot_log.lock().unwrap().take() {
        eprint!("{}", std::fs::read_to_string(path).unwrap_or(early));
    }
    match outcome?.end {
        End::Interrupted(n) => {
            // The process never started: the container goes (with --rm) or stays
            // stopped, and we exit as if the signal had killed us.
            let _ = client
                .post::<serde_json::Value>(&format!("/v1/containers/{id}/kill?signal=KILL"))
                .await;
            if c.rm {
                remove(&client, &id).await;
            }
            Ok(ExitCode::from(128 + n as u8))
        }
        End::Exited(exit) => {
            settle(&client, &id, c.restart, c.rm).await;
            Ok(exit_code(&exit))
        }
    }
}

/// Once an attached process has exited, waits (briefly) until apexd has recorded the
/// exit, or removed the container (`removed`, for --rm), so that what follows sees it
/// ended, as after `docker run`. Containers with a restart policy are not waited for:
/// they run again.
pub async fn settle(client: &Client, id: &str, restart: RestartPolicy, removed: bool) {
    if restart != RestartPolicy::No {
        return;
    }
    let condition = if removed { "removed" } else { "not-running" };
    let _ = client
        .with_timeout(Some(SETTLE_TIMEOUT))
        .get::<serde_json::Value>(&format!(
            "/v1/containers/{}/wait?condition={condition}",
            enc(id)
        ))
        .await;
}

/// The console log of container `id`'s VM while it runs: in its bundle's `vm/`, or in
/// the `vms/` directory owned by its helper.
fn console_log(home: &Path, id: &str) -> Option<PathBuf> {
    let bundle = apex_shim::bundle::bundle_dir(home, id);
    let p = bundle.join("vm").join("console.log");
    if p.exists() {
        return Some(p);
    }
    let shim = std::fs::read_to_string(bundle.join("shim.pid")).ok()?;
    std::fs::read_dir(home.join("vms"))
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| {
            std::fs::read_to_string(e.path().join("owner.pid"))
                .is_ok_and(|o| o.trim() == shim.trim())
        })
        .map(|e| e.path().join("console.log"))
}

/// Reports how an attached process ended, docker-style: the error if it never ran, or
/// why it ended if that was not its own doing nor a kill (the VM or the helper died);
/// then its exit code.
pub fn exit_code(exit: &Exit) -> ExitCode {
    if let Some(msg) = exit_message(exit) {
        eprintln!("Error: {msg}");
    }
    ExitCode::from((exit.exit_code & 0xff) as u8)
}

fn exit_message(exit: &Exit) -> Option<&str> {
    exit.error
        .as_deref()
        .or(exit.reason.as_deref().filter(|r| !r.starts_with("killed")))
}

/// Force-removes a container, ignoring errors (it may be gone already).
async fn remove(client: &Client, id: &str) {
    let _ = client
        .delete::<serde_json::Value>(&format!("/v1/containers/{}?force=true", enc(id)))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_go() {
        assert_eq!(parse_duration_ns("30s"), Ok(30_000_000_000));
        assert_eq!(parse_duration_ns("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_duration_ns("500ms"), Ok(500_000_000));
        assert_eq!(parse_duration_ns("1.5s"), Ok(1_500_000_000));
        assert!(parse_duration_ns("10").is_err());
        assert!(parse_duration_ns("3x").is_err());
        assert!(parse_duration_ns("").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256m").unwrap(), 256);
        assert_eq!(parse_memory("1g").unwrap(), 1024);
        assert_eq!(parse_memory("512MiB").unwrap(), 512);
        assert_eq!(parse_memory(&(128u64 << 20).to_string()).unwrap(), 128);
        assert!(parse_memory("10m").is_err());
        assert!(parse_memory("lots").is_err());
    }

    #[test]
    fn env_from_files_flags_and_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("env");
        std::fs::write(&f, "# c\nA=file\nFROM_HOST\n\nB=file\n").unwrap();
        let lookup = |k: &str| (k == "FROM_HOST").then(|| "host".to_string());
        let env = resolve_env(
            &["A=flag".into(), "MISSING".into(), "E=".into()],
            &[f],
            lookup,
        )
        .unwrap();
        assert_eq!(env, ["A=file", "FROM_HOST=host", "B=file", "A=flag", "E="]);
        assert!(resolve_env(&["=x".into()], &[], lookup).is_err());
        assert!(resolve_env(&[], &[dir.path().join("none")], lookup).is_err());
    }

    #[test]
    fn exit_messages() {
        let exit = |error: Option<&str>, reason: Option<&str>| Exit {
            exit_code: 1,
            error: error.map(Into::into),
            reason: reason.map(Into::into),
        };
        assert_eq!(exit_message(&exit(None, None)), None);
        assert_eq!(
            exit_message(&exit(Some("no such file"), Some("could not start"))),
            Some("no such file")
        );
        assert_eq!(
            exit_message(&exit(
                None,
                Some("the VM died: QEMU was killed by signal 9")
            )),
            Some("the VM died: QEMU was killed by signal 9")
        );
        assert_eq!(exit_message(&exit(None, Some("killed"))), None);
        assert_eq!(
            exit_message(&exit(None, Some("killed by signal 2 while booting"))),
            None
        );
    }

    #[test]
    fn missing_image_is_a_404_not_a_missing_route() {
        let e = |status, m: &str| ClientError::Api {
            status,
            message: m.into(),
        };
        use hyper::StatusCode;
        assert!(is_missing_image(&e(
            StatusCode::NOT_FOUND,
            "no such image: busybox"
        )));
        assert!(!is_missing_image(&e(
            StatusCode::NOT_FOUND,
            "no such route: POST /v1/containers"
        )));
        assert!(!is_missing_image(&e(StatusCode::CONFLICT, "name taken")));
        assert!(!is_missing_image(&e(
            StatusCode::NOT_FOUND,
            "no such network: front"
        )));
    }
}
