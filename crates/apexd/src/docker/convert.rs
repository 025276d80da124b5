//! Translations between Docker's shapes and the services' records: create requests in,
//! container, image, network and volume documents out, and list filters.

use std::collections::{BTreeMap, HashMap};

use bollard_stubs::models::{ContainerCreateBody, MountType as DMountType, RestartPolicyNameEnum};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::{ApiVersion, DockerError, DockerResult};
use crate::model::{
    ContainerRecord, CreateRequest, HealthConfig, MountRequest, MountType, RestartPolicy,
    VolumeInfo,
};
use crate::services::Services;
use crate::store::ContainerState;

/// Docker's name for the host architecture.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A 64-hex id derived from `s` (for objects apex names but Docker gives ids).
pub fn stable_id(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The registry host of a Docker `serveraddress` (`https://index.docker.io/v1/` is
/// `docker.io`).
pub fn registry_host(server: &str) -> String {
    let s = server.trim();
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    let host = s.split('/').next().unwrap_or("");
    match host {
        "" | "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        h => h.to_string(),
    }
}

/// The network's name for Docker clients: apex's `default` is Docker's `bridge`.
pub fn docker_network(native: &str) -> String {
    if native == apex_net::ipam::DEFAULT_NETWORK {
        "bridge".into()
    } else {
        native.to_string()
    }
}

/// The network a Docker name or mode means (`None`: the default network).
pub fn native_network(docker: &str) -> DockerResult<Option<String>> {
    match docker {
        "" | "default" | "bridge" => Ok(None),
        "none" => Ok(Some("none".into())),
        "host" => Err(DockerError::bad_request(
            "network mode \"host\" is not available: every container runs in its own VM, with no access to the host's network stack; publish ports instead",
        )),
        m if m.starts_with("container:") => Err(DockerError::bad_request(
            "network mode \"container:...\" is not supported: every container has its own VM",
        )),
        other => Ok(Some(other.to_string())),
    }
}

/// List filters (`?filters={"label":["a=b"]}`, or the older `{"label":{"a=b":true}}`).
#[derive(Debug, Default, Clone)]
pub struct Filters(HashMap<String, Vec<String>>);

impl Filters {
    /// Parses the `filters` query value.
    pub fn parse(raw: Option<&str>) -> DockerResult<Self> {
        let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
            return Ok(Filters::default());
        };
        let v: Value = serde_json::from_str(raw)
            .map_err(|e| DockerError::bad_request(format!("invalid filters: {e}")))?;
        let Value::Object(map) = v else {
            return Err(DockerError::bad_request("invalid filters: not an object"));
        };
        let mut out = HashMap::new();
        for (k, v) in map {
            let vals = match v {
                Value::Array(a) => a
                    .into_iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                Value::Object(o) => o
                    .into_iter()
                    .filter(|(_, b)| b.as_bool().unwrap_or(true))
                    .map(|(k, _)| k)
                    .collect(),
                Value::String(s) => vec![s],
                _ => vec![],
            };
            out.insert(k, vals);
        }
        Ok(Filters(out))
    }

    /// Whether the filter `key` is absent or one of its values satisfies `pred`.
    pub fn accepts(&self, key: &str, pred: impl Fn(&str) -> bool) -> bool {
        match self.0.get(key) {
            None => true,
            Some(vals) => vals.iter().any(|v| pred(v)),
        }
    }

    /// Whether the filter `key` is given at all.
    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// Whether labels pass the `label` filter (`key` or `key=value`).
    pub fn labels(&self, labels: &BTreeMap<String, String>) -> bool {
        match self.0.get("label") {
            None => true,
            Some(vals) => vals.iter().all(|v| match v.split_once('=') {
                Some((k, val)) => labels.get(k).is_some_and(|x| x == val),
                None => labels.contains_key(v),
            }),
        }
    }
}

fn rfc3339_to_unix(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp())
        .unwrap_or(0)
}

/// Docker's zero time, for times that never happened.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Docker's state name.
pub fn state_name(rec: &ContainerRecord) -> &'static str {
    match rec.state {
        ContainerState::Running if rec.paused => "paused",
        ContainerState::Running => "running",
        ContainerState::Created => "created",
        ContainerState::Restarting => "restarting",
        ContainerState::Exited => "exited",
    }
}

/// Docker's status line: `Up 5 seconds (healthy)`, `Exited (0) 2 minutes ago`.
pub fn status_text(rec: &ContainerRecord) -> String {
    crate::containers::summary(rec).status
}

/// Published ports as Docker's `PortBindings`/`Ports` map (`"80/tcp": [{...}]`), with
/// exposed but unpublished ports as `null`.
fn port_map(rec: &ContainerRecord) -> Value {
    let mut m = serde_json::Map::new();
    for p in &rec.config.exposed_ports {
        m.insert(p.clone(), Value::Null);
    }
    for p in &rec.ports {
        let key = format!("{}/{}", p.container_port, p.protocol);
        let entry = m.entry(key).or_insert(Value::Array(vec![]));
        if entry.is_null() {
            *entry = Value::Array(vec![]);
        }
        if let Value::Array(a) = entry {
            a.push(json!({"HostIp": p.host_ip.to_string(), "HostPort": p.host_port.to_string()}));
        }
    }
    Value::Object(m)
}

/// The `PortBindings` a container was created with.
fn port_bindings(rec: &ContainerRecord) -> Value {
    let mut m = serde_json::Map::new();
    for spec in crate::networks::parse_publish(&rec.config.publish).unwrap_or_default() {
        let key = format!("{}/{}", spec.container_port, spec.protocol);
        let port = if spec.host_port == 0 {
            String::new()
        } else {
            spec.host_port.to_string()
        };
        let entry = m.entry(key).or_insert(Value::Array(vec![]));
        if let Value::Array(a) = entry {
            a.push(json!({"HostIp": spec.host_ip.to_string(), "HostPort": port}));
        }
    }
    Value::Object(m)
}

fn mount_points(rec: &ContainerRecord) -> Value {
    Value::Array(
        rec.mounts
            .iter()
            .map(|m| {
                let mut j = json!({
                    "Type": m.kind.to_string(),
                    "Source": m.source,
                    "Destination": m.destination,
                    "Mode": if m.kind == MountType::Volume { "z" } else { "" },
                    "RW": !m.read_only,
                    "Propagation": if m.kind == MountType::Bind { "rprivate" } else { "" },
                });
                if let Some(n) = &m.name {
                    j["Name"] = json!(n);
                    j["Driver"] = json!("local");
                }
                j
            })
            .collect(),
    )
}

/// The endpoint of a container on its network, as Docker's `EndpointSettings`.
async fn endpoint(svc: &Services, rec: &ContainerRecord) -> Option<(String, Value)> {
    let native = rec
        .config
        .network
        .clone()
        .unwrap_or_else(|| apex_net::ipam::DEFAULT_NETWORK.into());
    if native == crate::networks::NONE {
        return Some((
            "none".into(),
            json!({"NetworkID": stable_id("none"), "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "MacAddress": "", "Aliases": null, "DNSNames": null}),
        ));
    }
    let info = svc.networks().inspect(&native).ok();
    let prefix = info
        .as_ref()
        .and_then(|n| n.subnet.split_once('/'))
        .and_then(|(_, p)| p.parse::<i64>().ok())
        .unwrap_or(0);
    let running = rec.state == ContainerState::Running;
    let (ip, mac, gateway) = match (&rec.network, running) {
        (Some(a), true) => (
            a.address.clone(),
            a.mac.clone(),
            info.as_ref().map(|n| n.gateway.clone()).unwrap_or_default(),
        ),
        _ => (String::new(), String::new(), String::new()),
    };
    let mut names: Vec<String> = vec![rec.name.clone(), rec.id[..12].to_string()];
    names.extend(rec.config.aliases.iter().cloned());
    let name = docker_network(&native);
    Some((
        name.clone(),
        json!({
            "IPAMConfig": null,
            "Links": null,
            "Aliases": if rec.config.aliases.is_empty() { Value::Null } else { json!(rec.config.aliases) },
            "MacAddress": mac,
            "DriverOpts": null,
            "NetworkID": network_id(&native),
            "EndpointID": if running { stable_id(&format!("{}/{native}", rec.id)) } else { String::new() },
            "Gateway": gateway,
            "IPAddress": ip,
            "IPPrefixLen": if running { prefix } else { 0 },
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "DNSNames": names,
        }),
    ))
}

/// A network's Docker id.
pub fn network_id(native: &str) -> String {
    stable_id(&format!("apex-network/{native}"))
}

fn health_json(rec: &ContainerRecord) -> Value {
    match &rec.health {
        Some(h) => json!({
            "Status": h.status,
            "FailingStreak": h.failing_streak,
            "Log": h.log.iter().map(|l| json!({
                "Start": l.start, "End": l.end, "ExitCode": l.exit_code, "Output": l.output,
            })).collect::<Vec<_>>(),
        }),
        None => Value::Null,
    }
}

fn health_config_json(h: &Option<HealthConfig>) -> Value {
    match h {
        Some(h) => json!({
            "Test": h.test, "Interval": h.interval, "Timeout": h.timeout,
            "Retries": h.retries, "StartPeriod": h.start_period, "StartInterval": h.start_interval,
        }),
        None => Value::Null,
    }
}

fn restart_json(p: &RestartPolicy) -> Value {
    let (name, max) = match p {
        RestartPolicy::No => ("no", 0),
        RestartPolicy::Always => ("always", 0),
        RestartPolicy::UnlessStopped => ("unless-stopped", 0),
        RestartPolicy::OnFailure { max_retries } => ("on-failure", *max_retries),
    };
    json!({"Name": name, "MaximumRetryCount": max})
}

/// `GET /containers/{id}/json`.
pub async fn container_inspect(svc: &Services, rec: &ContainerRecord, v: ApiVersion) -> Value {
    let c = &rec.config;
    let running = rec.state == ContainerState::Running;
    let bundle = svc.containers().bundle(&rec.id);
    let (path, args) = match c.process.args.split_first() {
        Some((p, a)) => (p.clone(), a.to_vec()),
        None => (String::new(), vec![]),
    };
    let endpoint = endpoint(svc, rec).await;
    let mut networks = serde_json::Map::new();
    if let Some((name, ep)) = &endpoint {
        networks.insert(name.clone(), ep.clone());
    }
    let network_mode = endpoint
        .as_ref()
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| "bridge".into());
    let binds: Vec<String> = rec
        .mounts
        .iter()
        .filter(|m| m.kind == MountType::Bind)
        .map(|m| {
            let ro = if m.read_only { ":ro" } else { "" };
            format!("{}:{}{ro}", m.source, m.destination)
        })
        .collect();
    let tmpfs: BTreeMap<String, String> = rec
        .mounts
        .iter()
        .filter(|m| m.kind == MountType::Tmpfs)
        .map(|m| {
            let mut opts = Vec::new();
            if let Some(s) = m.tmpfs_size {
                opts.push(format!("size={s}"));
            }
            if let Some(mode) = m.tmpfs_mode {
                opts.push(format!("mode={mode:o}"));
            }
            (m.destination.clone(), opts.join(","))
        })
        .collect();
    let exposed: serde_json::Map<String, Value> = c
        .exposed_ports
        .iter()
        .map(|p| (p.clone(), json!({})))
        .collect();
    let volumes: serde_json::Map<String, Value> = rec
        .mounts
        .iter()
        .filter(|m| m.kind == MountType::Volume)
        .map(|m| (m.destination.clone(), json!({})))
        .collect();
    let state = json!({
        "Status": state_name(rec),
        "Running": running,
        "Paused": rec.paused,
        "Restarting": rec.state == ContainerState::Restarting,
        "OOMKilled": false,
        "Dead": false,
        "Pid": if running { rec.shim_pid.unwrap_or(0) } else { 0 },
        "ExitCode": rec.exit_code.unwrap_or(0),
        "Error": rec.exit_reason.clone().filter(|_| rec.exit_code.unwrap_or(0) == 125).unwrap_or_default(),
        "StartedAt": rec.started_at.clone().unwrap_or_else(|| ZERO_TIME.into()),
        "FinishedAt": rec.finished_at.clone().unwrap_or_else(|| ZERO_TIME.into()),
    });
    let hostconfig = json!({
        "Binds": if binds.is_empty() { Value::Null } else { json!(binds) },
        "ContainerIDFile": "",
        "LogConfig": {"Type": "json-file", "Config": {}},
        "NetworkMode": network_mode,
        "PortBindings": port_bindings(rec),
        "RestartPolicy": restart_json(&c.restart),
        "AutoRemove": c.auto_remove,
        "VolumeDriver": "",
        "VolumesFrom": null,
        "CapAdd": null,
        "CapDrop": null,
        "Dns": c.dns,
        "DnsOptions": c.dns_options,
        "DnsSearch": c.dns_search,
        "ExtraHosts": if c.extra_hosts.is_empty() { Value::Null } else { json!(c.extra_hosts) },
        "GroupAdd": null,
        "IpcMode": "private",
        "Links": null,
        "OomScoreAdj": 0,
        "PidMode": "",
        "Privileged": false,
        "PublishAllPorts": c.publish_all,
        "ReadonlyRootfs": c.read_only_rootfs,
        "SecurityOpt": null,
        "Tmpfs": if tmpfs.is_empty() { Value::Null } else { json!(tmpfs) },
        "UTSMode": "",
        "UsernsMode": "",
        "ShmSize": 67108864,
        "Runtime": "apex-vm",
        "Isolation": "",
        "CpuShares": 0,
        "Memory": c.memory_mib << 20,
        "NanoCpus": i64::from(c.cpus) * 1_000_000_000,
        "CpuCount": c.cpus,
        "Init": c.init,
        "Mounts": null,
    });
    let config = json!({
        "Hostname": c.hostname,
        "Domainname": c.domainname,
        "User": if c.process.user == "0" { String::new() } else { c.process.user.clone() },
        "AttachStdin": false,
        "AttachStdout": false,
        "AttachStderr": false,
        "ExposedPorts": if exposed.is_empty() { Value::Null } else { Value::Object(exposed) },
        "Tty": c.process.terminal,
        "OpenStdin": c.stdin_open,
        "StdinOnce": c.stdin_once,
        "Env": c.process.env,
        "Cmd": if c.cmd.is_empty() { Value::Null } else { json!(c.cmd) },
        "Healthcheck": health_config_json(&c.healthcheck),
        "Image": rec.image,
        "Volumes": if volumes.is_empty() { Value::Null } else { Value::Object(volumes) },
        "WorkingDir": if c.process.cwd == "/" { String::new() } else { c.process.cwd.clone() },
        "Entrypoint": if c.entrypoint.is_empty() { Value::Null } else { json!(c.entrypoint) },
        "OnBuild": null,
        "Labels": c.labels,
        "StopSignal": c.stop_signal,
        "StopTimeout": c.stop_timeout,
    });
    let networksettings = json!({
        "Bridge": "",
        "SandboxID": if running { stable_id(&format!("sandbox/{}", rec.id)) } else { String::new() },
        "SandboxKey": "",
        "Ports": port_map(rec),
        "Networks": networks,
    });
    let mut doc = json!({
        "Id": rec.id,
        "Created": rec.created,
        "Path": path,
        "Args": args,
        "State": state,
        "Image": c.image_id,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": bundle.log(),
        "Name": format!("/{}", rec.name),
        "RestartCount": rec.restart_count,
        "Driver": "apex-erofs",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": null,
        "HostConfig": hostconfig,
        "GraphDriver": {"Name": "apex-erofs", "Data": {"LowerDir": c.rootfs, "UpperDir": bundle.upper_disk()}},
        "Mounts": mount_points(rec),
        "Config": config,
        "NetworkSettings": networksettings,
    });
    if !health_json(rec).is_null() {
        doc["State"]["Health"] = health_json(rec);
    }
    if let Some(sig) = &c.stop_signal {
        doc["Config"]["StopSignal"] = json!(sig);
    } else {
        doc["Config"]
            .as_object_mut()
            .map(|o| o.remove("StopSignal"));
    }
    // Before API 1.44 the primary network's settings also sit at the top level.
    if v < ApiVersion(1, 44) {
        if let Some((_, ep)) = &endpoint {
            let ns = &mut doc["NetworkSettings"];
            for (k, key) in [
                ("IPAddress", "IPAddress"),
                ("Gateway", "Gateway"),
                ("MacAddress", "MacAddress"),
                ("IPPrefixLen", "IPPrefixLen"),
                ("EndpointID", "EndpointID"),
                ("GlobalIPv6Address", "GlobalIPv6Address"),
                ("GlobalIPv6PrefixLen", "GlobalIPv6PrefixLen"),
                ("IPv6Gateway", "IPv6Gateway"),
            ] {
                ns[k] = ep[key].clone();
            }
            ns["HairpinMode"] = json!(false);
            ns["LinkLocalIPv6Address"] = json!("");
            ns["LinkLocalIPv6PrefixLen"] = json!(0);
            ns["SecondaryIPAddresses"] = Value::Null;
            ns["SecondaryIPv6Addresses"] = Value::Null;
        }
    }
    doc
}

/// One row of `GET /containers/json`.
pub async fn container_summary(svc: &Services, rec: &ContainerRecord) -> Value {
    let c = &rec.config;
    let ports: Vec<Value> = if rec.state == ContainerState::Running {
        rec.ports
            .iter()
            .map(|p| {
                json!({"IP": p.host_ip.to_string(), "PrivatePort": p.container_port,
                       "PublicPort": p.host_port, "Type": p.protocol.to_string()})
            })
            .chain(
                c.exposed_ports
                    .iter()
                    .filter(|e| {
                        !rec.ports
                            .iter()
                            .any(|p| format!("{}/{}", p.container_port, p.protocol) == **e)
                    })
                    .filter_map(|e| {
                        let (port, proto) = e.split_once('/').unwrap_or((e, "tcp"));
                        Some(json!({"PrivatePort": port.parse::<u16>().ok()?, "Type": proto}))
                    }),
            )
            .collect()
    } else {
        vec![]
    };
    let endpoint = endpoint(svc, rec).await;
    let mut networks = serde_json::Map::new();
    if let Some((name, ep)) = &endpoint {
        networks.insert(name.clone(), ep.clone());
    }
    let mut j = json!({
        "Id": rec.id,
        "Names": [format!("/{}", rec.name)],
        "Image": rec.image,
        "ImageID": c.image_id,
        "Command": shell_join(&c.process.args),
        "Created": rfc3339_to_unix(&rec.created),
        "Ports": ports,
        "Labels": c.labels,
        "State": state_name(rec),
        "Status": status_text(rec),
        "HostConfig": {"NetworkMode": endpoint.as_ref().map(|(n, _)| n.clone()).unwrap_or_else(|| "bridge".into())},
        "NetworkSettings": {"Networks": networks},
        "Mounts": mount_points(rec),
    });
    if let Some(h) = &rec.health {
        j["Health"] = json!({"Status": h.status, "FailingStreak": h.failing_streak});
    }
    j
}

/// `cmd arg "a b"`: how Docker shows a command line.
fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) || a.contains('"') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A volume in Docker's shape.
pub fn volume(v: &VolumeInfo) -> Value {
    let mut labels = v.labels.clone();
    if v.anonymous {
        labels.insert("com.docker.volume.anonymous".into(), String::new());
    }
    json!({
        "Name": v.name,
        "Driver": v.driver,
        "Mountpoint": v.mountpoint,
        "CreatedAt": v.created,
        "Labels": labels,
        "Scope": "local",
        "Options": {},
    })
}

/// Docker's image summaries of every local image.
pub async fn image_summaries(svc: &Services) -> DockerResult<Vec<Value>> {
    let containers = svc.containers().store().list()?;
    let mut out = Vec::new();
    for img in svc.images().list().await? {
        let (rec, names) = match svc.images().resolve(&img.id).await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let cfg = svc.images().config(&rec).await.unwrap_or(Value::Null);
        let tags: Vec<String> = names.iter().map(|n| apex_oci::store::familiar(n)).collect();
        let used = containers
            .iter()
            .filter(|c| c.config.image_id == img.id)
            .count();
        out.push(json!({
            "Id": img.id,
            "ParentId": "",
            "RepoTags": tags,
            "RepoDigests": rec.repo_digests,
            "Created": img.created.as_deref().map(rfc3339_to_unix).unwrap_or(0),
            "Size": img.size,
            "VirtualSize": img.size,
            "SharedSize": -1,
            "Labels": cfg["config"]["Labels"],
            "Containers": used,
        }));
    }
    Ok(out)
}

/// The restart policy of a `HostConfig.RestartPolicy`.
fn restart_policy(p: Option<&bollard_stubs::models::RestartPolicy>) -> DockerResult<RestartPolicy> {
    let Some(p) = p else {
        return Ok(RestartPolicy::No);
    };
    Ok(match p.name {
        None | Some(RestartPolicyNameEnum::EMPTY) | Some(RestartPolicyNameEnum::NO) => {
            RestartPolicy::No
        }
        Some(RestartPolicyNameEnum::ALWAYS) => RestartPolicy::Always,
        Some(RestartPolicyNameEnum::UNLESS_STOPPED) => RestartPolicy::UnlessStopped,
        Some(RestartPolicyNameEnum::ON_FAILURE) => RestartPolicy::OnFailure {
            max_retries: p.maximum_retry_count.unwrap_or(0).max(0) as u32,
        },
    })
}

/// A `POST /containers/create` body as the native create request.
pub fn create_request(
    body: ContainerCreateBody,
    name: Option<String>,
) -> DockerResult<CreateRequest> {
    let image = body
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| {
            DockerError::bad_request("config cannot be empty in order to create a container")
        })?;
    let hc = body.host_config.clone().unwrap_or_default();
    let network = native_network(hc.network_mode.as_deref().unwrap_or(""))?;
    let mut aliases = Vec::new();
    let mut network = network;
    if let Some(eps) = body
        .networking_config
        .as_ref()
        .and_then(|n| n.endpoints_config.as_ref())
    {
        for (net, ep) in eps {
            let native = native_network(net)?;
            if network.is_none() && native.is_some() {
                network = native.clone();
            }
            if native == network {
                aliases.extend(ep.aliases.clone().unwrap_or_default());
            }
        }
    }
    let mut publish = Vec::new();
    for (port, bindings) in hc.port_bindings.clone().unwrap_or_default() {
        let (p, proto) = port.split_once('/').unwrap_or((port.as_str(), "tcp"));
        let bindings = bindings.unwrap_or_default();
        if bindings.is_empty() {
            publish.push(format!("{p}/{proto}"));
        }
        for b in bindings {
            let host_port = b.host_port.unwrap_or_default();
            let host_ip = b.host_ip.unwrap_or_default();
            let spec = match (host_ip.as_str(), host_port.as_str()) {
                ("", "") => format!("{p}/{proto}"),
                ("", hp) => format!("{hp}:{p}/{proto}"),
                (ip, hp) if ip.contains(':') => format!("[{ip}]:{hp}:{p}/{proto}"),
                (ip, hp) => format!("{ip}:{hp}:{p}/{proto}"),
            };
            publish.push(spec);
        }
    }
    publish.sort();
    let mounts = hc
        .mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            let kind = match m.typ {
                Some(DMountType::BIND) => MountType::Bind,
                Some(DMountType::TMPFS) => MountType::Tmpfs,
                Some(DMountType::VOLUME) | None => MountType::Volume,
                Some(other) => {
                    return Err(DockerError::bad_request(format!(
                        "mount type {other} is not supported"
                    )))
                }
            };
            Ok(MountRequest {
                kind,
                source: m.source.filter(|s| !s.is_empty()),
                target: m.target.unwrap_or_default(),
                read_only: m.read_only.unwrap_or(false),
                no_copy: m
                    .volume_options
                    .as_ref()
                    .and_then(|v| v.no_copy)
                    .unwrap_or(false),
                tmpfs_size: m
                    .tmpfs_options
                    .as_ref()
                    .and_then(|t| t.size_bytes)
                    .map(|s| s as u64),
                tmpfs_mode: m
                    .tmpfs_options
                    .as_ref()
                    .and_then(|t| t.mode)
                    .map(|m| m as u32),
            })
        })
        .collect::<DockerResult<Vec<_>>>()?;
    let tmpfs = hc
        .tmpfs
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(dst, opts)| {
            if opts.is_empty() {
                dst
            } else {
                format!("{dst}:{opts}")
            }
        })
        .collect();
    // Docker's VOLUME-like `Config.Volumes` asks for anonymous volumes.
    let mut volumes = hc.binds.clone().unwrap_or_default();
    for v in body.volumes.clone().unwrap_or_default() {
        let covered = volumes
            .iter()
            .any(|b| b.split(':').nth(1) == Some(v.as_str()))
            || mounts.iter().any(|m: &MountRequest| m.target == v);
        if !covered {
            volumes.push(v);
        }
    }
    let cpus = match (hc.nano_cpus, hc.cpu_count) {
        (Some(n), _) if n > 0 => Some(((n + 999_999_999) / 1_000_000_000) as u32),
        (_, Some(c)) if c > 0 => Some(c as u32),
        _ => None,
    };
    let memory_mib = hc
        .memory
        .filter(|m| *m > 0)
        .map(|m| ((m as u64) >> 20).max(1));
    let healthcheck = body.healthcheck.clone().map(|h| HealthConfig {
        test: h.test.unwrap_or_default(),
        interval: h.interval.unwrap_or(0),
        timeout: h.timeout.unwrap_or(0),
        retries: h.retries.unwrap_or(0),
        start_period: h.start_period.unwrap_or(0),
        start_interval: h.start_interval.unwrap_or(0),
    });
    let storage_size = hc
        .storage_opt
        .as_ref()
        .and_then(|o| o.get("size"))
        .map(|s| {
            crate::mounts::parse_size(s)
                .ok_or_else(|| DockerError::bad_request(format!("invalid storage size {s:?}")))
        })
        .transpose()?;
    Ok(CreateRequest {
        image,
        build_step: false,
        name: name
            .filter(|n| !n.is_empty())
            .map(|n| n.trim_start_matches('/').to_string()),
        command: body.cmd.clone().unwrap_or_default(),
        entrypoint: body.entrypoint.clone(),
        env: body.env.clone().unwrap_or_default(),
        workdir: body.working_dir.clone().filter(|w| !w.is_empty()),
        user: body.user.clone().filter(|u| !u.is_empty()),
        tty: body.tty.unwrap_or(false),
        stdin_open: body.open_stdin.unwrap_or(false),
        cpus,
        memory_mib,
        boot_timeout_s: None,
        restart: restart_policy(hc.restart_policy.as_ref())?,
        auto_remove: hc.auto_remove.unwrap_or(false),
        network,
        publish,
        volumes,
        mounts,
        tmpfs,
        read_only: hc.readonly_rootfs.unwrap_or(false),
        storage_size,
        labels: body
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        hostname: body.hostname.clone().filter(|h| !h.is_empty()),
        hostname_id: true,
        domainname: body.domainname.clone().filter(|d| !d.is_empty()),
        exposed_ports: body.exposed_ports.clone().unwrap_or_default(),
        publish_all: hc.publish_all_ports.unwrap_or(false),
        stop_signal: body.stop_signal.clone(),
        stop_timeout: body.stop_timeout.filter(|t| *t >= 0).map(|t| t as u64),
        healthcheck,
        init: hc.init.unwrap_or(false),
        extra_hosts: hc.extra_hosts.clone().unwrap_or_default(),
        dns: hc.dns.clone().unwrap_or_default(),
        dns_search: hc.dns_search.clone().unwrap_or_default(),
        dns_options: hc.dns_options.clone().unwrap_or_default(),
        aliases,
        volumes_from: hc.volumes_from.clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_in_both_shapes() {
        let f = Filters::parse(Some(r#"{"label":["a=b","c"],"status":{"running":true}}"#)).unwrap();
        let mut labels = BTreeMap::new();
        labels.insert("a".to_string(), "b".to_string());
        assert!(!f.labels(&labels), "c is missing");
        labels.insert("c".to_string(), String::new());
        assert!(f.labels(&labels));
        assert!(f.accepts("status", |v| v == "running"));
        assert!(!f.accepts("status", |v| v == "exited"));
        assert!(f.accepts("name", |_| false), "absent filters accept");
        assert!(Filters::parse(Some("[1]")).is_err());
        assert!(Filters::parse(None).unwrap().accepts("x", |_| false));
    }

    #[test]
    fn names_and_hosts() {
        assert_eq!(registry_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_host("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(registry_host("http://reg.example/v2/"), "reg.example");
        assert_eq!(docker_network("default"), "bridge");
        assert_eq!(native_network("bridge").unwrap(), None);
        assert_eq!(native_network("back").unwrap().as_deref(), Some("back"));
        assert!(native_network("host").is_err());
        assert_eq!(
            shell_join(&["sh".into(), "-c".into(), "echo hi".into()]),
            "sh -c \"echo hi\""
        );
    }

    #[test]
    fn create_bodies_translate() {
        let body: ContainerCreateBody = serde_json::from_value(json!({
            "Image": "busybox",
            "Cmd": ["sh", "-c", "true"],
            "Entrypoint": null,
            "Env": ["A=1"],
            "ExposedPorts": {"80/tcp": {}},
            "Labels": {"com.docker.compose.project": "p"},
            "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 1000000000},
            "Volumes": {"/data": {}},
            "HostConfig": {
                "Binds": ["/h:/c:ro"],
                "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}], "53/udp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
                "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3},
                "NetworkMode": "proj_default",
                "Memory": 536870912,
                "NanoCpus": 1500000000,
                "AutoRemove": true,
                "Init": true,
                "Tmpfs": {"/run": "size=1m"},
                "Mounts": [{"Type": "volume", "Source": "v", "Target": "/v", "VolumeOptions": {"NoCopy": true}}],
            },
            "NetworkingConfig": {"EndpointsConfig": {"proj_default": {"Aliases": ["web"]}}},
        }))
        .unwrap();
        let r = create_request(body, Some("/c1".into())).unwrap();
        assert_eq!(r.name.as_deref(), Some("c1"));
        assert_eq!(r.command, ["sh", "-c", "true"]);
        assert_eq!(r.publish, ["127.0.0.1::53/udp", "8080:80/tcp"]);
        assert_eq!(r.restart, RestartPolicy::OnFailure { max_retries: 3 });
        assert_eq!(r.network.as_deref(), Some("proj_default"));
        assert_eq!(r.aliases, ["web"]);
        assert_eq!((r.memory_mib, r.cpus), (Some(512), Some(2)));
        assert!(r.auto_remove && r.init && r.hostname_id);
        assert_eq!(r.volumes, ["/h:/c:ro", "/data"]);
        assert_eq!(r.tmpfs, ["/run:size=1m"]);
        assert!(r.mounts[0].no_copy && r.mounts[0].kind == MountType::Volume);
        assert_eq!(r.exposed_ports, ["80/tcp"]);
        assert_eq!(r.healthcheck.unwrap().test, ["CMD-SHELL", "true"]);
        let empty: ContainerCreateBody = serde_json::from_value(json!({})).unwrap();
        assert!(create_request(empty, None).is_err());
    }
}
