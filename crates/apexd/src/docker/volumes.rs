//! Volume routes of the Docker API.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::convert::{self, Filters};
use super::{DockerError, DockerResult, DockerState};
use crate::error::ErrorKind;
use crate::model::VolumeCreate;

fn no_such_volume(name: &str) -> impl Fn(crate::error::Error) -> DockerError + '_ {
    move |e| match e.kind() {
        ErrorKind::NotFound => DockerError::not_found(format!("get {name}: no such volume")),
        _ => e.into(),
    }
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    filters: Option<String>,
}

/// `GET /volumes`.
pub(super) async fn list(
    State(s): State<DockerState>,
    Query(q): Query<ListQuery>,
) -> DockerResult<Json<Value>> {
    let f = Filters::parse(q.filters.as_deref())?;
    let vols: Vec<Value> = s
        .services()
        .volumes()
        .list()?
        .into_iter()
        .filter(|v| {
            let mut labels = v.labels.clone();
            if v.anonymous {
                labels.insert("com.docker.volume.anonymous".into(), String::new());
            }
            f.accepts("name", |n| v.name.contains(n))
                && f.accepts("driver", |d| d == "local")
                && f.accepts("dangling", |d| {
                    (d == "true" || d == "1") == v.containers.is_empty()
                })
                && f.labels(&labels)
        })
        .map(|v| convert::volume(&v))
        .collect();
    Ok(Json(json!({"Volumes": vols, "Warnings": null})))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CreateBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

/// `POST /volumes/create`.
pub(super) async fn create(
    State(s): State<DockerState>,
    body: Bytes,
) -> DockerResult<(StatusCode, Json<Value>)> {
    let b: CreateBody = if body.is_empty() {
        CreateBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| DockerError::bad_request(format!("invalid volume config: {e}")))?
    };
    if let Some(d) = b
        .driver
        .as_deref()
        .filter(|d| !d.is_empty() && *d != "local")
    {
        return Err(DockerError::bad_request(format!(
            "volume driver {d:?} is not supported: apex volumes are local directories"
        )));
    }
    let v = s
        .services()
        .volumes()
        .create(VolumeCreate {
            name: b.name.filter(|n| !n.is_empty()),
            labels: b.labels.unwrap_or_default(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(convert::volume(&v))))
}

/// `GET /volumes/{name}`.
pub(super) async fn inspect(
    State(s): State<DockerState>,
    Path(name): Path<String>,
) -> DockerResult<Json<Value>> {
    let v = s
        .services()
        .volumes()
        .inspect(&name)
        .map_err(no_such_volume(&name))?;
    Ok(Json(convert::volume(&v)))
}

#[derive(Deserialize)]
pub(super) struct RemoveQuery {
    force: Option<String>,
}

/// `DELETE /volumes/{name}`.
pub(super) async fn remove(
    State(s): State<DockerState>,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> DockerResult<StatusCode> {
    let force = matches!(q.force.as_deref(), Some("1" | "true" | "True"));
    s.services()
        .volumes()
        .remove(&name, force)
        .await
        .map_err(no_such_volume(&name))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct PruneQuery {
    filters: Option<String>,
}

/// `POST /volumes/prune`: unused anonymous volumes (every unused one with `all=true`).
pub(super) async fn prune(
    State(s): State<DockerState>,
    Query(q): Query<PruneQuery>,
) -> DockerResult<Json<Value>> {
    let f = Filters::parse(q.filters.as_deref())?;
    let all = !f.accepts("all", |v| v != "true" && v != "1");
    let r = s.services().volumes().prune(all).await?;
    Ok(Json(json!({
        "VolumesDeleted": if r.deleted.is_empty() { Value::Null } else { json!(r.deleted) },
        "SpaceReclaimed": r.space_reclaimed,
    })))
}
