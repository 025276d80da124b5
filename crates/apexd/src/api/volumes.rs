//! Volume routes (see [`crate::model`] for the list and the JSON types).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::{ApiError, ApiResult, AppState, Message};
use crate::model::{VolumeCreate, VolumeInfo, VolumePruneReport};

pub(super) async fn list(State(s): State<AppState>) -> ApiResult<Vec<VolumeInfo>> {
    Ok(Json(s.volumes().list()?))
}

pub(super) async fn create(
    State(s): State<AppState>,
    body: Result<Json<VolumeCreate>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<VolumeInfo>), ApiError> {
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok((StatusCode::CREATED, Json(s.volumes().create(req).await?)))
}

pub(super) async fn inspect(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<VolumeInfo> {
    Ok(Json(s.volumes().inspect(&name)?))
}

#[derive(Deserialize)]
pub(super) struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

pub(super) async fn remove(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<Message> {
    s.volumes().remove(&name, q.force).await?;
    Ok(Json(Message {
        message: format!("removed volume {name}"),
    }))
}

#[derive(Deserialize)]
pub(super) struct PruneQuery {
    #[serde(default)]
    all: bool,
}

pub(super) async fn prune(
    State(s): State<AppState>,
    Query(q): Query<PruneQuery>,
) -> ApiResult<VolumePruneReport> {
    Ok(Json(s.volumes().prune(q.all).await?))
}
