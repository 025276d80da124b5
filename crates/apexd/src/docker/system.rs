//! System routes: `/_ping`, `/version`, `/info`, `/system/df`, `/auth`, `/events`,
//! `/plugins`.

use std::collections::HashMap;

use apex_oci::auth::Credentials;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Json;
use bollard_stubs::models::{SystemVersion, SystemVersionComponents, SystemVersionPlatform};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::convert::{self, Filters};
use super::{DockerError, DockerResult, DockerState, API_VERSION, MIN_API_VERSION};
use crate::events::Event;
use crate::store::ContainerState;

/// `GET`/`HEAD /_ping`.
pub(super) async fn ping() -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache, no-store, must-revalidate")
        .header(header::PRAGMA, "no-cache")
        .header("Builder-Version", "1")
        .body(Body::from("OK"))
        .expect("valid response")
}

/// The kernel the containers run: the guest's, not the host's.
fn guest_kernel(home: &std::path::Path) -> String {
    apex_runtime::kernel::assets(home)
        .map(|k| k.version)
        .unwrap_or_else(|_| "unknown".into())
}

/// `GET /version`.
pub(super) async fn version(State(s): State<DockerState>) -> Json<SystemVersion> {
    let version = env!("CARGO_PKG_VERSION").to_string();
    let arch = convert::go_arch();
    let kernel = guest_kernel(s.services().paths().home());
    let details: HashMap<String, String> = [
        ("ApiVersion", API_VERSION),
        ("MinAPIVersion", MIN_API_VERSION),
        ("Os", "linux"),
        ("Arch", arch),
        ("KernelVersion", kernel.as_str()),
        ("Experimental", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Json(SystemVersion {
        platform: Some(SystemVersionPlatform {
            name: format!("Apex {version} (one VM per container)"),
        }),
        components: Some(vec![SystemVersionComponents {
            name: "Engine".into(),
            version: version.clone(),
            details: Some(details),
        }]),
        version: Some(version),
        api_version: Some(API_VERSION.into()),
        min_api_version: Some(MIN_API_VERSION.into()),
        git_commit: Some(String::new()),
        go_version: Some(String::new()),
        os: Some("linux".into()),
        arch: Some(arch.into()),
        kernel_version: Some(kernel),
        experimental: Some(false),
        build_time: Some(String::new()),
    })
}

fn host_value(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `GET /info`.
pub(super) async fn info(State(s): State<DockerState>) -> DockerResult<Json<Value>> {
    let svc = s.services();
    let recs = svc.containers().store().list()?;
    let running = recs
        .iter()
        .filter(|r| r.state == ContainerState::Running)
        .count();
    let paused = recs.iter().filter(|r| r.paused).count();
    let images = svc.images().list().await?.len();
    let mirrors: Vec<String> = apex_oci::ImageStore::open(svc.paths().home())
        .map(|st| st.config().registry_mirrors.clone())
        .unwrap_or_default();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let id = convert::stable_id(&svc.paths().home().display().to_string());
    Ok(Json(json!({
        "ID": id,
        "Containers": recs.len(),
        "ContainersRunning": running - paused,
        "ContainersPaused": paused,
        "ContainersStopped": recs.len() - running,
        "Images": images,
        "Driver": "apex-erofs",
        "DriverStatus": [["Writable layer", "ext4 disk per container"], ["Image layers", "erofs"]],
        "Plugins": {
            "Volume": ["local"],
            "Network": ["bridge", "null"],
            "Authorization": null,
            "Log": ["json-file"],
        },
        "MemoryLimit": true,
        "SwapLimit": false,
        "CpuCfsPeriod": true,
        "CpuCfsQuota": true,
        "CPUShares": false,
        "CPUSet": false,
        "PidsLimit": false,
        "IPv4Forwarding": true,
        "BridgeNfIptables": false,
        "BridgeNfIp6tables": false,
        "Debug": false,
        "NFd": 0,
        "OomKillDisable": false,
        "NGoroutines": 0,
        "SystemTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "LoggingDriver": "json-file",
        "CgroupDriver": "none",
        "CgroupVersion": "2",
        "NEventsListener": 0,
        "KernelVersion": guest_kernel(svc.paths().home()),
        "OperatingSystem": "Apex (every container in its own VM)",
        "OSVersion": "",
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {
            "AllowNondistributableArtifactsCIDRs": [],
            "AllowNondistributableArtifactsHostnames": [],
            "InsecureRegistryCIDRs": ["127.0.0.0/8"],
            "IndexConfigs": {
                "docker.io": {"Name": "docker.io", "Mirrors": mirrors, "Secure": true, "Official": true}
            },
            "Mirrors": mirrors,
        },
        "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "MemTotal": host_value("/proc/meminfo", "MemTotal:") * 1024,
        "GenericResources": null,
        "DockerRootDir": svc.paths().home(),
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": hostname,
        "Labels": [],
        "ExperimentalBuild": false,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Runtimes": {"apex-vm": {"path": "apex-shim"}},
        "DefaultRuntime": "apex-vm",
        "Swarm": {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "inactive",
            "ControlAvailable": false,
            "Error": "",
            "RemoteManagers": null,
        },
        "LiveRestoreEnabled": true,
        "Isolation": "",
        "InitBinary": "apex-init",
        "ContainerdCommit": {"ID": "", "Expected": ""},
        "RuncCommit": {"ID": "", "Expected": ""},
        "InitCommit": {"ID": "", "Expected": ""},
        "SecurityOptions": ["name=vm"],
        "Warnings": [],
    })))
}

/// `GET /system/df`.
pub(super) async fn df(State(s): State<DockerState>) -> DockerResult<Json<Value>> {
    let svc = s.services();
    let images = convert::image_summaries(svc).await?;
    let layers: i64 = images.iter().filter_map(|i| i["Size"].as_i64()).sum();
    let mut containers = Vec::new();
    for rec in svc.containers().store().list()? {
        let mut c = convert::container_summary(svc, &rec).await;
        let disk = svc.containers().bundle(&rec.id).upper_disk();
        c["SizeRw"] = json!(crate::info::disk_usage(&disk));
        c["SizeRootFs"] = json!(crate::info::disk_usage(&rec.config.rootfs));
        containers.push(c);
    }
    let mut volumes = Vec::new();
    for v in svc.volumes().list()? {
        let size = crate::info::disk_usage(&v.mountpoint);
        let mut j = convert::volume(&v);
        j["UsageData"] = json!({"Size": size, "RefCount": v.containers.len()});
        volumes.push(j);
    }
    Ok(Json(json!({
        "LayersSize": layers,
        "Images": images,
        "Containers": containers,
        "Volumes": volumes,
        "BuildCache": [],
    })))
}

#[derive(Deserialize)]
pub(super) struct AuthBody {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default, rename = "serveraddress")]
    server_address: String,
}

/// `POST /auth`: checks credentials against the registry (clients store them).
pub(super) async fn auth(
    State(s): State<DockerState>,
    Json(body): Json<AuthBody>,
) -> DockerResult<Json<Value>> {
    let registry = convert::registry_host(&body.server_address);
    let store = apex_oci::ImageStore::open(s.services().paths().home())?;
    let creds = Credentials {
        username: body.username,
        password: body.password,
    };
    store
        .check_login(&registry, creds, Default::default())
        .await
        .map_err(|e| DockerError::new(StatusCode::UNAUTHORIZED, format!("{e:#}")))?;
    Ok(Json(
        json!({"Status": "Login Succeeded", "IdentityToken": ""}),
    ))
}

/// `GET /plugins`: none.
pub(super) async fn plugins() -> Json<Value> {
    Json(json!([]))
}

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    since: Option<String>,
    until: Option<String>,
    filters: Option<String>,
}

/// A Docker timestamp (`1700000000`, `1700000000.5`, RFC 3339) in nanoseconds.
fn parse_time(t: &str) -> Option<i64> {
    if let Ok(secs) = t.parse::<f64>() {
        return Some((secs * 1e9) as i64);
    }
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .and_then(|d| d.timestamp_nanos_opt())
}

fn event_json(e: &Event) -> Value {
    let mut attrs: serde_json::Map<String, Value> = e
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut j = json!({
        "Type": e.kind.as_str(),
        "Action": e.action,
        "Actor": {"ID": e.id, "Attributes": {}},
        "scope": "local",
        "time": e.time_nano / 1_000_000_000,
        "timeNano": e.time_nano,
    });
    // Pre-1.22 fields, still read by docker-py and compose.
    if matches!(
        e.kind,
        crate::events::EventKind::Container | crate::events::EventKind::Image
    ) {
        j["status"] = json!(e.action);
        j["id"] = json!(e.id);
        if let Some(img) = attrs.get("image") {
            j["from"] = img.clone();
        }
    }
    j["Actor"]["Attributes"] = Value::Object(std::mem::take(&mut attrs));
    j
}

fn matches(f: &Filters, e: &Event) -> bool {
    let attr = |k: &str| e.attributes.get(k).map(String::as_str).unwrap_or("");
    f.accepts("type", |v| v == e.kind.as_str())
        && f.accepts("event", |v| {
            e.action == v || e.action.starts_with(&format!("{v}:"))
        })
        && f.accepts("container", |v| {
            e.kind == crate::events::EventKind::Container
                && (e.id.starts_with(v) || attr("name") == v)
        })
        && f.accepts("image", |v| attr("image") == v || e.id == v)
        && f.accepts("volume", |v| {
            e.kind == crate::events::EventKind::Volume && e.id == v
        })
        && f.accepts("network", |v| {
            e.kind == crate::events::EventKind::Network && (e.id == v || attr("name") == v)
        })
        && f.accepts("label", |v| match v.split_once('=') {
            Some((k, val)) => attr(k) == val,
            None => e.attributes.contains_key(v),
        })
}

/// `GET /events`: past events from `since`, then live ones until `until` (or forever).
pub(super) async fn events(
    State(s): State<DockerState>,
    Query(q): Query<EventsQuery>,
) -> DockerResult<Response> {
    let filters = Filters::parse(q.filters.as_deref())?;
    let bad = |t: &str| DockerError::bad_request(format!("invalid timestamp {t:?}"));
    let since = q
        .since
        .as_deref()
        .map(|t| parse_time(t).ok_or_else(|| bad(t)))
        .transpose()?;
    let until = q
        .until
        .as_deref()
        .map(|t| parse_time(t).ok_or_else(|| bad(t)))
        .transpose()?;
    let (past, mut rx) = s.services().events().history(since.unwrap_or(i64::MAX));
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let line = |e: &Event| {
        let mut v = serde_json::to_vec(&event_json(e)).expect("serializable");
        v.push(b'\n');
        Bytes::from(v)
    };
    tokio::spawn(async move {
        for e in past.iter().filter(|e| matches(&filters, e)) {
            if until.is_some_and(|u| e.time_nano > u) || tx.send(line(e)).await.is_err() {
                return;
            }
        }
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let deadline = until.map(|u| {
            tokio::time::Instant::now()
                + std::time::Duration::from_nanos(u.saturating_sub(now).max(0) as u64)
        });
        loop {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok(),
                    None => Some(rx.recv().await),
                }
            };
            let ev = tokio::select! {
                e = next => e,
                _ = tx.closed() => return,
            };
            match ev {
                None => return, // until reached
                Some(Ok(e)) => {
                    if matches(&filters, &e) && tx.send(line(&e)).await.is_err() {
                        return;
                    }
                }
                Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Some(Err(_)) => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_time("1700000000"), Some(1_700_000_000_000_000_000));
        assert_eq!(parse_time("1700000000.5"), Some(1_700_000_000_500_000_000));
        assert!(parse_time("2024-01-01T00:00:00Z").is_some());
        assert_eq!(parse_time("yesterday"), None);
    }
}
