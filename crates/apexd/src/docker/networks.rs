//! Network routes of the Docker API. apex's `default` network is Docker's `bridge`;
//! `none` and `host` exist as in Docker (a container in its own VM cannot share the
//! host's network, so `host` is refused when used).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::convert::{self, Filters};
use super::{DockerError, DockerResult, DockerState};
use crate::model::{NetworkCreate, NetworkInfo};

/// The network Docker's `id` or name means: `(docker name, native name)`.
async fn find(s: &DockerState, id: &str) -> DockerResult<(String, Option<NetworkInfo>)> {
    let nets = s.services().networks().list()?;
    for special in ["none", "host"] {
        if id == special || convert::network_id(special).starts_with(id) && id.len() >= 12 {
            return Ok((special.to_string(), None));
        }
    }
    let found = nets.into_iter().find(|n| {
        let docker = convert::docker_network(&n.name);
        docker == id
            || n.name == id
            || (id.len() >= 6 && convert::network_id(&n.name).starts_with(id))
    });
    match found {
        Some(n) => Ok((convert::docker_network(&n.name), Some(n))),
        None => Err(DockerError::not_found(format!("network {id} not found"))),
    }
}

fn doc(docker: &str, n: Option<&NetworkInfo>) -> Value {
    let Some(n) = n else {
        let driver = if docker == "none" { "null" } else { "host" };
        return json!({
            "Name": docker, "Id": convert::network_id(docker), "Created": "0001-01-01T00:00:00Z",
            "Scope": "local", "Driver": driver, "EnableIPv6": false,
            "IPAM": {"Driver": "default", "Options": null, "Config": []},
            "Internal": false, "Attachable": false, "Ingress": false,
            "ConfigFrom": {"Network": ""}, "ConfigOnly": false,
            "Containers": {}, "Options": {}, "Labels": {},
        });
    };
    let prefix = n.subnet.split_once('/').map(|(_, p)| p).unwrap_or("24");
    let containers: serde_json::Map<String, Value> = n
        .containers
        .iter()
        .map(|c| {
            (
                c.id.clone(),
                json!({
                    "Name": c.name,
                    "EndpointID": convert::stable_id(&format!("{}/{}", c.id, n.name)),
                    "MacAddress": "",
                    "IPv4Address": format!("{}/{prefix}", c.address),
                    "IPv6Address": "",
                }),
            )
        })
        .collect();
    json!({
        "Name": docker,
        "Id": convert::network_id(&n.name),
        "Created": n.created,
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": [{"Subnet": n.subnet, "Gateway": n.gateway}]},
        "Internal": n.internal,
        "Attachable": true,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers,
        "Options": if n.bridge.is_empty() { json!({}) } else { json!({"com.docker.network.bridge.name": n.bridge}) },
        "Labels": n.labels,
    })
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    filters: Option<String>,
}

/// `GET /networks`.
pub(super) async fn list(
    State(s): State<DockerState>,
    Query(q): Query<ListQuery>,
) -> DockerResult<Json<Vec<Value>>> {
    let f = Filters::parse(q.filters.as_deref())?;
    let mut out = Vec::new();
    let mut all: Vec<(String, Option<NetworkInfo>)> = s
        .services()
        .networks()
        .list()?
        .into_iter()
        .map(|n| (convert::docker_network(&n.name), Some(n)))
        .collect();
    all.push(("host".into(), None));
    all.push(("none".into(), None));
    for (name, n) in all {
        let d = doc(&name, n.as_ref());
        let labels = n.as_ref().map(|n| n.labels.clone()).unwrap_or_default();
        let id = d["Id"].as_str().unwrap_or_default().to_string();
        let driver = d["Driver"].as_str().unwrap_or_default().to_string();
        let used = n.as_ref().is_some_and(|n| !n.containers.is_empty());
        let ok = f.accepts("name", |v| name.contains(v))
            && f.accepts("id", |v| id.starts_with(v))
            && f.accepts("driver", |v| v == driver)
            && f.accepts("type", |v| {
                (v == "builtin") == n.is_none()
                    || (v == "custom"
                        && n.as_ref()
                            .is_some_and(|n| n.name != apex_net::ipam::DEFAULT_NETWORK))
            })
            && f.accepts("scope", |v| v == "local")
            && f.accepts("dangling", |v| (v == "true") != used)
            && f.labels(&labels);
        if ok {
            out.push(d);
        }
    }
    Ok(Json(out))
}

/// `GET /networks/{id}`.
pub(super) async fn inspect(
    State(s): State<DockerState>,
    Path(id): Path<String>,
) -> DockerResult<Json<Value>> {
    let (name, n) = find(&s, &id).await?;
    Ok(Json(doc(&name, n.as_ref())))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CreateBody {
    name: String,
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    internal: bool,
    #[serde(default, rename = "IPAM")]
    ipam: Option<Value>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

/// `POST /networks/create`.
pub(super) async fn create(
    State(s): State<DockerState>,
    body: Bytes,
) -> DockerResult<(StatusCode, Json<Value>)> {
    let b: CreateBody = serde_json::from_slice(&body)
        .map_err(|e| DockerError::bad_request(format!("invalid network config: {e}")))?;
    if let Some(d) = b
        .driver
        .as_deref()
        .filter(|d| !d.is_empty() && *d != "bridge")
    {
        return Err(DockerError::bad_request(format!(
            "network driver {d:?} is not supported: apex networks are bridges"
        )));
    }
    if matches!(b.name.as_str(), "bridge" | "host" | "none") {
        return Err(DockerError::new(
            StatusCode::FORBIDDEN,
            format!("{} is a pre-defined network and cannot be created", b.name),
        ));
    }
    let subnet = b.ipam.as_ref().and_then(|i| {
        i["Config"]
            .as_array()?
            .iter()
            .find_map(|c| c["Subnet"].as_str().map(String::from))
    });
    let info = s
        .services()
        .networks()
        .create(NetworkCreate {
            name: b.name,
            subnet,
            internal: b.internal,
            labels: b.labels.unwrap_or_default(),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"Id": convert::network_id(&info.name), "Warning": ""})),
    ))
}

/// `DELETE /networks/{id}`.
pub(super) async fn remove(
    State(s): State<DockerState>,
    Path(id): Path<String>,
) -> DockerResult<StatusCode> {
    let (name, n) = find(&s, &id).await?;
    let Some(n) = n.filter(|n| n.name != apex_net::ipam::DEFAULT_NETWORK) else {
        return Err(DockerError::new(
            StatusCode::FORBIDDEN,
            format!("{name} is a pre-defined network and cannot be removed"),
        ));
    };
    s.services().networks().remove(&n.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ConnectBody {
    container: String,
    #[serde(default)]
    endpoint_config: Option<Value>,
}

/// `POST /networks/{id}/connect`: a container that is not running moves to the network
/// (its VM will have that NIC); a running one cannot gain a NIC.
pub(super) async fn connect(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    body: Bytes,
) -> DockerResult<StatusCode> {
    let b: ConnectBody = serde_json::from_slice(&body)
        .map_err(|e| DockerError::bad_request(format!("invalid connect config: {e}")))?;
    let (name, n) = find(&s, &id).await?;
    let native = match (&name[..], n) {
        ("host", _) => return Err(convert::native_network("host").unwrap_err()),
        ("none", _) => "none".to_string(),
        (_, Some(n)) => n.name,
        (_, None) => return Err(DockerError::not_found(format!("network {id} not found"))),
    };
    let aliases: Vec<String> = b
        .endpoint_config
        .as_ref()
        .and_then(|e| e["Aliases"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    s.services()
        .containers()
        .set_network(&b.container, &native, aliases)
        .await
        .map_err(|e| match e.kind() {
            crate::error::ErrorKind::NotFound => {
                DockerError::not_found(format!("No such container: {}", b.container))
            }
            _ => e.into(),
        })?;
    Ok(StatusCode::OK)
}

/// `POST /networks/{id}/disconnect`: the container is left with no network.
pub(super) async fn disconnect(
    State(s): State<DockerState>,
    Path(id): Path<String>,
    body: Bytes,
) -> DockerResult<StatusCode> {
    let b: ConnectBody = serde_json::from_slice(&body)
        .map_err(|e| DockerError::bad_request(format!("invalid disconnect config: {e}")))?;
    let (_, n) = find(&s, &id).await?;
    let c = s.services().containers();
    let rec = c
        .resolve(&b.container)
        .map_err(|_| DockerError::not_found(format!("No such container: {}", b.container)))?;
    let current = rec
        .config
        .network
        .clone()
        .unwrap_or_else(|| apex_net::ipam::DEFAULT_NETWORK.into());
    if n.as_ref().is_none_or(|n| n.name != current) {
        return Err(DockerError::new(
            StatusCode::FORBIDDEN,
            format!("container {} is not connected to network {id}", rec.id),
        ));
    }
    c.set_network(&rec.id, "none", vec![]).await?;
    Ok(StatusCode::OK)
}

/// `POST /networks/prune`.
pub(super) async fn prune(State(s): State<DockerState>) -> DockerResult<Json<Value>> {
    let deleted = s.services().networks().prune().await?;
    Ok(Json(json!({
        "NetworksDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) },
    })))
}
