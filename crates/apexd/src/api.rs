//! The v1 HTTP/JSON API.
//!
//! [`ROUTES`] is the one list of served routes: [`router`] is built from it and a test
//! checks it against `docs/api/openapi.yaml`, so code and documentation cannot drift.
//! Errors are `{"message": "..."}` with a matching status code, unknown routes included.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use tokio::sync::Notify;

use crate::containers::Containers;
use crate::info;
pub use crate::model::{DirUsage, DiskUsage, Message, SystemStatus, VersionInfo};
use crate::networks::Networks;
use crate::paths::Paths;
use crate::services::Services;
use crate::store::StateStore;
use crate::volumes::Volumes;

/// What a route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /v1/version`.
    Version,
    /// `GET /v1/system/status`.
    Status,
    /// `GET /v1/system/df`.
    DiskUsage,
    /// `GET /v1/images`.
    Images,
    /// `POST /v1/system/shutdown`.
    Shutdown,
    /// `GET /v1/containers`.
    ContainerList,
    /// `POST /v1/containers`.
    ContainerCreate,
    /// `GET /v1/containers/{id}`.
    ContainerInspect,
    /// `DELETE /v1/containers/{id}`.
    ContainerRemove,
    /// `POST /v1/containers/{id}/start`.
    ContainerStart,
    /// `POST /v1/containers/{id}/stop`.
    ContainerStop,
    /// `POST /v1/containers/{id}/restart`.
    ContainerRestart,
    /// `POST /v1/containers/{id}/kill`.
    ContainerKill,
    /// `GET /v1/containers/{id}/wait`.
    ContainerWait,
    /// `GET /v1/containers/{id}/logs`.
    ContainerLogs,
    /// `GET /v1/containers/{id}/stats`.
    ContainerStats,
    /// `POST /v1/containers/{id}/attach` (upgrade).
    ContainerAttach,
    /// `POST /v1/containers/{id}/exec`.
    ExecCreate,
    /// `POST /v1/exec/{id}/start` (upgrade).
    ExecStart,
    /// `POST /v1/containers/prune`.
    ContainerPrune,
    /// `POST /v1/images/pull`.
    ImagePull,
    /// `GET /v1/networks`.
    NetworkList,
    /// `POST /v1/networks`.
    NetworkCreate,
    /// `GET /v1/networks/{id}`.
    NetworkInspect,
    /// `DELETE /v1/networks/{id}`.
    NetworkRemove,
    /// `POST /v1/networks/prune`.
    NetworkPrune,
    /// `HEAD /v1/containers/{id}/archive`.
    ArchiveStat,
    /// `GET /v1/containers/{id}/archive`.
    ArchiveGet,
    /// `PUT /v1/containers/{id}/archive`.
    ArchivePut,
    /// `POST /v1/build`.
    Build,
    /// `POST /v1/build/prune`.
    BuildPrune,
    /// `GET /v1/volumes`.
    VolumeList,
    /// `POST /v1/volumes`.
    VolumeCreate,
    /// `GET /v1/volumes/{name}`.
    VolumeInspect,
    /// `DELETE /v1/volumes/{name}`.
    VolumeRemove,
    /// `POST /v1/volumes/prune`.
    VolumePrune,
}

/// One served route.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path, as written in the OpenAPI file.
    pub path: &'static str,
    /// Its handler.
    pub endpoint: Endpoint,
}

impl Route {
    const fn new(method: &'static str, path: &'static str, endpoint: Endpoint) -> Self {
        Route {
            method,
            path,
            endpoint,
        }
    }
}

/// Every route the daemon serves.
pub const ROUTES: &[Route] = &[
    Route::new("GET", "/v1/version", Endpoint::Version),
    Route::new("GET", "/v1/system/status", Endpoint::Status),
    Route::new("GET", "/v1/system/df", Endpoint::DiskUsage),
    Route::new("POST", "/v1/system/shutdown", Endpoint::Shutdown),
    Route::new("GET", "/v1/images", Endpoint::Images),
    Route::new("POST", "/v1/images/pull", Endpoint::ImagePull),
    Route::new("GET", "/v1/containers", Endpoint::ContainerList),
    Route::new("POST", "/v1/containers", Endpoint::ContainerCreate),
    Route::new("POST", "/v1/containers/prune", Endpoint::ContainerPrune),
    Route::new("GET", "/v1/containers/{id}", Endpoint::ContainerInspect),
    Route::new("DELETE", "/v1/containers/{id}", Endpoint::ContainerRemove),
    Route::new(
        "POST",
        "/v1/containers/{id}/start",
        Endpoint::ContainerStart,
    ),
    Route::new("POST", "/v1/containers/{id}/stop", Endpoint::ContainerStop),
    Route::new(
        "POST",
        "/v1/containers/{id}/restart",
        Endpoint::ContainerRestart,
    ),
    Route::new("POST", "/v1/containers/{id}/kill", Endpoint::ContainerKill),
    Route::new("GET", "/v1/containers/{id}/wait", Endpoint::ContainerWait),
    Route::new("GET", "/v1/containers/{id}/logs", Endpoint::ContainerLogs),
    Route::new("GET", "/v1/containers/{id}/stats", Endpoint::ContainerStats),
    Route::new(
        "POST",
        "/v1/containers/{id}/attach",
        Endpoint::ContainerAttach,
    ),
    Route::new("POST", "/v1/containers/{id}/exec", Endpoint::ExecCreate),
    Route::new("HEAD", "/v1/containers/{id}/archive", Endpoint::ArchiveStat),
    Route::new("GET", "/v1/containers/{id}/archive", Endpoint::ArchiveGet),
    Route::new("PUT", "/v1/containers/{id}/archive", Endpoint::ArchivePut),
    Route::new("POST", "/v1/exec/{id}/start", Endpoint::ExecStart),
    Route::new("GET", "/v1/networks", Endpoint::NetworkList),
    Route::new("POST", "/v1/networks", Endpoint::NetworkCreate),
    Route::new("POST", "/v1/networks/prune", Endpoint::NetworkPrune),
    Route::new("GET", "/v1/networks/{id}", Endpoint::NetworkInspect),
    Route::new("DELETE", "/v1/networks/{id}", Endpoint::NetworkRemove),
    Route::new("POST", "/v1/build", Endpoint::Build),
    Route::new("POST", "/v1/build/prune", Endpoint::BuildPrune),
    Route::new("GET", "/v1/volumes", Endpoint::VolumeList),
    Route::new("POST", "/v1/volumes", Endpoint::VolumeCreate),
    Route::new("POST", "/v1/volumes/prune", Endpoint::VolumePrune),
    Route::new("GET", "/v1/volumes/{name}", Endpoint::VolumeInspect),
    Route::new("DELETE", "/v1/volumes/{name}", Endpoint::VolumeRemove),
];

/// Shared by all handlers: the service layer.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    /// State for a daemon serving `paths` without host networking (user mode); `shutdown`
    /// is notified by the shutdown route.
    pub fn new(paths: Paths, store: Arc<StateStore>, shutdown: Arc<Notify>) -> Self {
        Self::with_accel_cache(paths, store, shutdown, info::ACCEL_CACHE.into())
    }

    /// Like [`AppState::new`], reading the accelerator from `accel_cache`, with user-mode
    /// networking that touches nothing on the host (for tests).
    pub fn with_accel_cache(
        paths: Paths,
        store: Arc<StateStore>,
        shutdown: Arc<Notify>,
        accel_cache: PathBuf,
    ) -> Self {
        let networks = Networks::user_mode(paths.home(), store.clone(), "test");
        AppState(Services::new(paths, store, shutdown, accel_cache, networks))
    }

    /// The state over existing services.
    pub fn from_services(services: Arc<Services>) -> Self {
        AppState(services)
    }

    /// The services.
    pub fn services(&self) -> &Arc<Services> {
        &self.0
    }

    /// The container manager.
    pub fn containers(&self) -> &Arc<Containers> {
        self.0.containers()
    }

    /// The networks.
    pub fn networks(&self) -> &Arc<Networks> {
        self.0.networks()
    }

    /// The volumes.
    pub fn volumes(&self) -> &Arc<Volumes> {
        self.0.volumes()
    }
}

/// An error answer: status code and `{"message"}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with this status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl ApiError {
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        use crate::error::ErrorKind;
        let status = match e.kind() {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.message())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, "{}", self.message);
        }
        let body = Message {
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

mod archive;
mod build;
mod containers;
mod networks;
mod pull;
mod volumes;
pub use crate::containers::parse_signal;
pub use containers::UPGRADE_PROTOCOL;

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The API router over `state`, built from [`ROUTES`].
pub fn router(state: AppState) -> Router {
    let mut r = Router::new();
    for route in ROUTES {
        let method = Method::from_bytes(route.method.as_bytes()).expect("valid method");
        let filter = MethodFilter::try_from(method).expect("routable method");
        r = r.route(route.path, handler(filter, route.endpoint));
    }
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

fn handler(filter: MethodFilter, endpoint: Endpoint) -> MethodRouter<AppState> {
    match endpoint {
        Endpoint::Version => on(filter, version),
        Endpoint::Status => on(filter, status),
        Endpoint::DiskUsage => on(filter, disk_usage),
        Endpoint::Images => on(filter, images),
        Endpoint::Shutdown => on(filter, shutdown),
        Endpoint::ContainerList => on(filter, containers::list),
        Endpoint::ContainerCreate => on(filter, containers::create),
        Endpoint::ContainerInspect => on(filter, containers::inspect),
        Endpoint::ContainerRemove => on(filter, containers::remove),
        Endpoint::ContainerStart => on(filter, containers::start),
        Endpoint::ContainerStop => on(filter, containers::stop),
        Endpoint::ContainerRestart => on(filter, containers::restart),
        Endpoint::ContainerKill => on(filter, containers::kill),
        Endpoint::ContainerWait => on(filter, containers::wait),
        Endpoint::ContainerLogs => on(filter, containers::logs),
        Endpoint::ContainerStats => on(filter, containers::stats),
        Endpoint::ContainerAttach => on(filter, containers::attach),
        Endpoint::ExecCreate => on(filter, containers::exec_create),
        Endpoint::ExecStart => on(filter, containers::exec_start),
        Endpoint::ContainerPrune => on(filter, containers::prune),
        Endpoint::ImagePull => on(filter, pull::pull),
        Endpoint::NetworkList => on(filter, networks::list),
        Endpoint::NetworkCreate => on(filter, networks::create),
        Endpoint::NetworkInspect => on(filter, networks::inspect),
        Endpoint::NetworkRemove => on(filter, networks::remove),
        Endpoint::NetworkPrune => on(filter, networks::prune),
        Endpoint::ArchiveStat => on(filter, archive::stat),
        Endpoint::ArchiveGet => on(filter, archive::get),
        Endpoint::ArchivePut => on(filter, archive::put),
        Endpoint::Build => on(filter, build::build),
        Endpoint::BuildPrune => on(filter, build::prune),
        Endpoint::VolumeList => on(filter, volumes::list),
        Endpoint::VolumeCreate => on(filter, volumes::create),
        Endpoint::VolumeInspect => on(filter, volumes::inspect),
        Endpoint::VolumeRemove => on(filter, volumes::remove),
        Endpoint::VolumePrune => on(filter, volumes::prune),
    }
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such route: {method} {uri}"),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed on {uri}"),
    )
}

async fn version() -> Json<VersionInfo> {
    Json(VersionInfo::current())
}

async fn status(State(s): State<AppState>) -> ApiResult<SystemStatus> {
    Ok(Json(s.0.status().await?))
}

async fn disk_usage(State(s): State<AppState>) -> ApiResult<DiskUsage> {
    Ok(Json(s.0.disk_usage().await?))
}

async fn images(State(s): State<AppState>) -> ApiResult<Vec<apex_oci::store::ImageSummary>> {
    Ok(Json(s.0.images().list().await?))
}

async fn shutdown(State(s): State<AppState>) -> (StatusCode, Json<Message>) {
    tracing::info!("shutdown requested over the API");
    s.0.request_shutdown();
    let body = Message {
        message: "shutting down".into(),
    };
    (StatusCode::ACCEPTED, Json(body))
}

/// A streamed `application/x-ndjson` answer: each chunk received from `rx` as it comes.
fn ndjson(rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(axum::body::Body::from_stream(stream))
        .expect("valid response")
}

/// The body of `req` as a byte stream (a tar being uploaded).
pub(crate) fn body_reader(
    req: axum::extract::Request,
) -> impl tokio::io::AsyncRead + Send + Unpin + 'static {
    use futures_util::TryStreamExt;
    let body = req
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    tokio_util::io::StreamReader::new(body)
}

/// A streamed answer of `content_type` made of the chunks sent to `rx` (a build's
/// events, which must not be dropped; shared with the Docker front door).
pub(crate) fn streamed(
    content_type: &'static str,
    rx: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, content_type)
        .body(axum::body::Body::from_stream(stream))
        .expect("valid response")
}

#[cfg(test)]
mod tests;
