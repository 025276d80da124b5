//! Network routes (see [`crate::model`] for the list and the JSON types).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::{ApiError, ApiResult, AppState, Message};
use crate::model::{NetworkCreate, NetworkInfo, PruneReport};

pub(super) async fn list(State(s): State<AppState>) -> ApiResult<Vec<NetworkInfo>> {
    Ok(Json(s.networks().list()?))
}

pub(super) async fn create(
    State(s): State<AppState>,
    body: Result<Json<NetworkCreate>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<NetworkInfo>), ApiError> {
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok((StatusCode::CREATED, Json(s.networks().create(req).await?)))
}

pub(super) async fn inspect(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<NetworkInfo> {
    Ok(Json(s.networks().inspect(&id)?))
}

pub(super) async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Message> {
    s.networks().remove(&id).await?;
    Ok(Json(Message {
        message: format!("removed network {id}"),
    }))
}

pub(super) async fn prune(State(s): State<AppState>) -> ApiResult<PruneReport> {
    Ok(Json(PruneReport {
        deleted: s.networks().prune().await?,
    }))
}
