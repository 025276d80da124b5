//! Archive routes: `HEAD`, `GET` and `PUT /v1/containers/{id}/archive?path=...`, what
//! `apex cp` uses (see [`crate::archive`]).

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::containers::archive::PutOptions;
use crate::model::{PathStat, ARCHIVE_STAT_HEADER};

#[derive(Deserialize)]
pub(super) struct ArchiveQuery {
    path: String,
    #[serde(default)]
    owner: bool,
    #[serde(default)]
    no_overwrite_dir_non_dir: bool,
}

fn stat_header(st: &PathStat) -> Result<HeaderValue, ApiError> {
    let json = serde_json::to_vec(st).map_err(anyhow::Error::from)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(json);
    HeaderValue::from_str(&b64).map_err(|e| anyhow::anyhow!("{e}").into())
}

type ArchiveQueryResult = Result<Query<ArchiveQuery>, axum::extract::rejection::QueryRejection>;

/// The query, with a JSON error when it is missing or malformed.
fn query(q: ArchiveQueryResult) -> Result<ArchiveQuery, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    if !q.path.starts_with('/') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("path {:?} must be absolute", q.path),
        ));
    }
    Ok(q)
}

pub(super) async fn stat(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: ArchiveQueryResult,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let st = s.containers().archive_stat(&id, &q.path).await?;
    Ok(Response::builder()
        .header(ARCHIVE_STAT_HEADER, stat_header(&st)?)
        .body(Body::empty())
        .expect("valid response"))
}

pub(super) async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: ArchiveQueryResult,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let (st, reader) = s.containers().archive_get(&id, &q.path).await?;
    let stream = futures_util::stream::unfold(reader, |mut r| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), r))
            }
            Err(e) => Some((Err(e), r)),
        }
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(ARCHIVE_STAT_HEADER, stat_header(&st)?)
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

pub(super) async fn put(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: ArchiveQueryResult,
    req: Request,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let reader = crate::api::body_reader(req);
    let opts = PutOptions {
        owner: q.owner,
        no_overwrite_dir_non_dir: q.no_overwrite_dir_non_dir,
    };
    s.containers()
        .archive_put(&id, &q.path, reader, opts)
        .await?;
    Ok(Response::builder()
        .status(StatusCode::OK)
        .body(Body::empty())
        .expect("valid response"))
}
