//! `POST /v1/images/pull`: pulls in the daemon, streaming progress as NDJSON.
//!
//! The pull runs in its own task: a client that disconnects does not abort it (the
//! image lands for the next user), and a daemon killed mid-pull leaves only resumable
//! partial blobs in the content store's ingest area.

use std::sync::Arc;

use apex_oci::platform::Platform;
use apex_oci::registry::{ConnectOptions, Scheme};
use apex_oci::store::{Progress, PullOptions};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{ApiError, AppState};
use crate::model::{PullEvent, PullRequest};

fn event(p: Progress) -> PullEvent {
    match p {
        Progress::Resolved { digest, layers } => PullEvent::Resolved {
            digest: digest.to_string(),
            layers,
        },
        Progress::BlobStart {
            digest,
            size,
            cached,
        } => PullEvent::BlobStart {
            digest: digest.to_string(),
            size,
            cached,
        },
        Progress::BlobBytes { digest, done } => PullEvent::BlobBytes {
            digest: digest.to_string(),
            done,
        },
        Progress::BlobDone { digest } => PullEvent::BlobDone {
            digest: digest.to_string(),
        },
        Progress::Unpacking => PullEvent::Unpacking,
    }
}

fn line(e: &PullEvent) -> Bytes {
    let mut v = serde_json::to_vec(e).expect("serializable");
    v.push(b'\n');
    Bytes::from(v)
}

pub(super) async fn pull(
    State(s): State<AppState>,
    body: Result<Json<PullRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let platform = req
        .platform
        .as_deref()
        .map(str::parse::<Platform>)
        .transpose()
        .map_err(|e| bad(format!("{e:#}")))?;
    let scheme = req
        .scheme
        .as_deref()
        .map(str::parse::<Scheme>)
        .transpose()
        .map_err(bad)?
        .unwrap_or_default();
    // Progress events are dropped rather than queued without bound when the client reads
    // slowly; the final line is always delivered.
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let progress_tx = tx.clone();
    let opts = PullOptions {
        platform,
        connect: ConnectOptions {
            scheme,
            insecure_registries: req.insecure_registries.clone(),
        },
        progress: Some(Arc::new(move |p| {
            let _ = progress_tx.try_send(line(&event(p)));
        })),
        no_unpack: false,
        credentials: None,
    };
    let images = s.services().images().clone();
    let reference = req.reference.clone();
    tokio::spawn(async move {
        let res = images.pull(&reference, opts).await;
        let last = match res {
            Ok(r) => {
                tracing::info!(reference, "pulled");
                PullEvent::Done {
                    name: r.name.to_string(),
                    id: r.record.config_digest.to_string(),
                    downloaded: r.downloaded,
                }
            }
            Err(e) => {
                tracing::warn!(reference, "pull failed: {e}");
                PullEvent::Error {
                    message: e.to_string(),
                }
            }
        };
        let _ = tx.send(line(&last)).await;
    });
    Ok(super::ndjson(rx))
}
