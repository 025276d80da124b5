//! `POST /v1/build?options=JSON`: a Dockerfile build of the tar body (the context),
//! streamed as NDJSON [`BuildEvent`] lines, the last one `result` or `error`; and
//! `POST /v1/build/prune`, which empties the build cache.

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;

use super::{ApiError, ApiResult, AppState};
use crate::model::{BuildEvent, BuildPruneReport, BuildRequest};

/// The query of `POST /v1/build`.
#[derive(Debug, Deserialize)]
pub(super) struct BuildQuery {
    /// [`BuildRequest`] as JSON.
    #[serde(default)]
    options: Option<String>,
}

pub(super) async fn build(
    State(s): State<AppState>,
    q: Result<Query<BuildQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let opts: BuildRequest = match q.options.as_deref() {
        Some(j) => serde_json::from_str(j)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("options: {e}")))?,
        None => BuildRequest::default(),
    };
    let reader = crate::api::body_reader(req);
    let rx = s
        .services()
        .builds()
        .start(opts, reader, |ev: &BuildEvent| {
            let mut v = serde_json::to_vec(ev).expect("serializable");
            v.push(b'\n');
            Some(v.into())
        })
        .await?;
    Ok(super::streamed("application/x-ndjson", rx))
}

pub(super) async fn prune(State(s): State<AppState>) -> ApiResult<BuildPruneReport> {
    let (entries, images, reclaimed) = s.services().builds().prune().await?;
    Ok(Json(BuildPruneReport {
        cache_entries: entries,
        images_deleted: images,
        space_reclaimed: reclaimed,
    }))
}
