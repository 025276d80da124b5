//! Container routes (see [`crate::model`] for the list and the JSON types).

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::UnixStream;

use super::{ApiError, ApiResult, AppState, Message};
use crate::containers::parse_signal;
use crate::model::{
    ContainerRecord, ContainerState, ContainerSummary, CreateRequest, Created, ExecRequest,
    PruneReport, WaitResult,
};

/// The `Upgrade` protocol name of attach and exec streams.
pub const UPGRADE_PROTOCOL: &str = "apex-stream";

#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    all: bool,
}

pub(super) async fn list(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Vec<ContainerSummary>> {
    Ok(Json(s.containers().list(q.all)?))
}

pub(super) async fn create(
    State(s): State<AppState>,
    body: Result<Json<CreateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok((StatusCode::CREATED, Json(s.containers().create(req).await?)))
}

pub(super) async fn inspect(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<ContainerRecord> {
    Ok(Json(s.containers().resolve(&id)?))
}

pub(super) async fn start(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<ContainerRecord> {
    Ok(Json(s.containers().start(&id, false).await?))
}

#[derive(Deserialize)]
pub(super) struct StopQuery {
    timeout: Option<u64>,
}

pub(super) async fn stop(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> ApiResult<ContainerRecord> {
    Ok(Json(s.containers().stop(&id, q.timeout).await?))
}

pub(super) async fn restart(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> ApiResult<ContainerRecord> {
    let c = s.containers();
    c.stop(&id, q.timeout).await?;
    Ok(Json(c.start(&id, false).await?))
}

#[derive(Deserialize)]
pub(super) struct KillQuery {
    signal: Option<String>,
}

pub(super) async fn kill(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<KillQuery>,
) -> ApiResult<Message> {
    let name = q.signal.unwrap_or_else(|| "KILL".into());
    let sig = parse_signal(&name).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("invalid signal {name:?}"))
    })?;
    s.containers().kill(&id, sig).await?;
    Ok(Json(Message {
        message: format!("sent signal {sig}"),
    }))
}

#[derive(Deserialize)]
pub(super) struct WaitQuery {
    condition: Option<String>,
}

pub(super) async fn wait(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<WaitResult> {
    let cond = q
        .condition
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(crate::error::Error::bad_request)?
        .unwrap_or_default();
    Ok(Json(s.containers().wait_for(&id, cond).await?))
}

#[derive(Deserialize)]
pub(super) struct RemoveQuery {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    volumes: bool,
}

pub(super) async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<Message> {
    s.containers().remove(&id, q.force, q.volumes).await?;
    Ok(Json(Message {
        message: format!("removed {id}"),
    }))
}

pub(super) async fn prune(State(s): State<AppState>) -> ApiResult<PruneReport> {
    Ok(Json(PruneReport {
        deleted: s.containers().prune().await?,
    }))
}

pub(super) async fn stats(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<apex_shim::proto::Stats> {
    Ok(Json(s.containers().stats(&id).await?))
}

#[derive(Deserialize)]
pub(super) struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<usize>,
}

/// NDJSON log lines; with `follow`, streams until the container is no longer running.
pub(super) async fn logs(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let mut entries = s.containers().logs(&id, q.tail, q.follow).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        while let Some(batch) = entries.recv().await {
            let mut buf = Vec::new();
            for e in batch {
                serde_json::to_writer(&mut buf, &e).expect("serializable");
                buf.push(b'\n');
            }
            if tx.send(Bytes::from(buf)).await.is_err() {
                return;
            }
        }
    });
    Ok(super::ndjson(rx))
}

#[derive(Deserialize)]
pub(super) struct AttachQuery {
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    start: bool,
}

/// Answers 101 and splices the upgraded connection to `shim`.
fn splice(mut req: Request, shim: UnixStream) -> Response {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let mut client = TokioIo::new(up);
                let mut shim = shim;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut shim).await;
            }
            Err(e) => tracing::warn!("upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, UPGRADE_PROTOCOL)
        .body(Body::empty())
        .expect("valid response")
}

fn require_upgrade(req: &Request) -> Result<(), ApiError> {
    let ok = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE_PROTOCOL));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("this route needs `Connection: Upgrade` and `Upgrade: {UPGRADE_PROTOCOL}`"),
        ))
    }
}

pub(super) async fn attach(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<AttachQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    require_upgrade(&req)?;
    let c = s.containers();
    let mut rec = c.resolve(&id)?;
    if q.start && rec.state != ContainerState::Running {
        rec = c.start(&rec.id, true).await?;
    }
    if rec.state != ContainerState::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("container {} is not running", rec.name),
        ));
    }
    let shim = c.attach_stream(&rec.id, q.stdin).await?;
    Ok(splice(req, shim))
}

pub(super) async fn exec_create(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ExecRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok((
        StatusCode::CREATED,
        Json(s.containers().exec_create(&id, req)?),
    ))
}

pub(super) async fn exec_start(
    State(s): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    require_upgrade(&req)?;
    let shim = s.containers().exec_start(&id).await?;
    Ok(splice(req, shim))
}
