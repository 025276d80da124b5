//! The v1 HTTP/JSON API.
//!
//! [`ROUTES`] is the one list of served routes: [`router`] is built from it and a test
//! checks it against `docs/api/openapi.yaml`, so code and documentation cannot drift.
//! Errors are `{"message": "..."}` with a matching status code, unknown routes included.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::containers::Containers;
use crate::info;
use crate::networks::Networks;
use crate::paths::Paths;
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
    Route::new("GET", "/v1/volumes", Endpoint::VolumeList),
    Route::new("POST", "/v1/volumes", Endpoint::VolumeCreate),
    Route::new("POST", "/v1/volumes/prune", Endpoint::VolumePrune),
    Route::new("GET", "/v1/volumes/{name}", Endpoint::VolumeInspect),
    Route::new("DELETE", "/v1/volumes/{name}", Endpoint::VolumeRemove),
];

/// `GET /v1/version`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    /// Daemon version.
    pub version: String,
    /// API version ([`crate::API_VERSION`]).
    pub api_version: String,
    /// Host OS (`linux`).
    pub os: String,
    /// Host architecture (`x86_64`, `aarch64`).
    pub arch: String,
}

impl VersionInfo {
    /// This build's version.
    pub fn current() -> Self {
        VersionInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: crate::API_VERSION.into(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
        }
    }
}

/// `GET /v1/system/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SystemStatus {
    /// Daemon pid.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// `$APEX_HOME`.
    pub home: PathBuf,
    /// Number of containers in the state database.
    pub containers: u64,
    /// Number of local images.
    pub images: u64,
    /// `kvm`, `tcg` or `unknown` (no probe cached yet).
    pub accelerator: String,
    /// `bridge` (a bridge per network, container names resolve) or `user` (QEMU user-mode
    /// networking: outbound and published ports only).
    #[serde(default)]
    pub network_mode: String,
    /// Why user mode is used (absent in bridge mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_reason: Option<String>,
    /// The host DNS server (`127.0.0.1:PORT`) answering `<name>.test`; empty if none.
    #[serde(default)]
    pub dns: String,
}

/// One directory of `GET /v1/system/df`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirUsage {
    /// `content`, `rootfs`, `db` or `logs`.
    pub name: String,
    /// Absolute path.
    pub path: PathBuf,
    /// Bytes allocated on disk.
    pub bytes: u64,
}

/// `GET /v1/system/df`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskUsage {
    /// Per directory.
    pub dirs: Vec<DirUsage>,
    /// Sum of `dirs`.
    pub total: u64,
}

/// Every error body; also `POST /v1/system/shutdown`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    /// Human-readable, one line.
    pub message: String,
}

/// Shared by all handlers.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    paths: Paths,
    started: Instant,
    store: Arc<StateStore>,
    containers: Arc<Containers>,
    networks: Arc<Networks>,
    shutdown: Arc<Notify>,
    accel_cache: PathBuf,
}

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
        Self::build(paths, store, shutdown, accel_cache, networks)
    }

    /// State for a daemon serving `paths` with `networks` (see [`Networks::start`]).
    pub fn with_networks(
        paths: Paths,
        store: Arc<StateStore>,
        shutdown: Arc<Notify>,
        networks: Arc<Networks>,
    ) -> Self {
        Self::build(paths, store, shutdown, info::ACCEL_CACHE.into(), networks)
    }

    fn build(
        paths: Paths,
        store: Arc<StateStore>,
        shutdown: Arc<Notify>,
        accel_cache: PathBuf,
        networks: Arc<Networks>,
    ) -> Self {
        let volumes = Volumes::new(paths.home(), store.clone());
        let containers = Containers::new(paths.home(), store.clone(), networks.clone(), volumes);
        AppState(Arc::new(Inner {
            containers,
            networks,
            paths,
            started: Instant::now(),
            store,
            shutdown,
            accel_cache,
        }))
    }
}

impl AppState {
    /// The container manager.
    pub fn containers(&self) -> &Arc<Containers> {
        &self.0.containers
    }

    /// The networks.
    pub fn networks(&self) -> &Arc<Networks> {
        &self.0.networks
    }

    /// The volumes.
    pub fn volumes(&self) -> &Arc<Volumes> {
        self.0.containers.volumes()
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
mod containers;
mod networks;
mod pull;
mod volumes;
pub use containers::{parse_signal, UPGRADE_PROTOCOL};

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
    let home = s.0.paths.home().to_path_buf();
    let images = blocking(move || Ok(apex_oci::ImageStore::open(&home)?.list()?.len())).await?;
    let accel_cache = s.0.accel_cache.clone();
    let accelerator = blocking(move || Ok(info::accelerator(&accel_cache))).await?;
    let (mode, reason) = s.0.networks.mode();
    Ok(Json(SystemStatus {
        network_mode: mode.into(),
        network_reason: reason,
        dns: s
            .0
            .networks
            .host_dns()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        pid: std::process::id(),
        uptime_s: s.0.started.elapsed().as_secs(),
        home: s.0.paths.home().to_path_buf(),
        containers: s.0.store.count()?,
        images: images as u64,
        accelerator,
    }))
}

async fn disk_usage(State(s): State<AppState>) -> ApiResult<DiskUsage> {
    let home = s.0.paths.home().to_path_buf();
    let dirs = blocking(move || {
        Ok(info::DF_DIRS
            .iter()
            .map(|name| {
                let path = home.join(name);
                DirUsage {
                    name: (*name).into(),
                    bytes: info::disk_usage(&path),
                    path,
                }
            })
            .collect::<Vec<_>>())
    })
    .await?;
    let total = dirs.iter().map(|d| d.bytes).sum();
    Ok(Json(DiskUsage { dirs, total }))
}

async fn images(State(s): State<AppState>) -> ApiResult<Vec<apex_oci::store::ImageSummary>> {
    let home = s.0.paths.home().to_path_buf();
    let list = blocking(move || apex_oci::ImageStore::open(&home)?.list()).await?;
    Ok(Json(list))
}

async fn shutdown(State(s): State<AppState>) -> (StatusCode, Json<Message>) {
    tracing::info!("shutdown requested over the API");
    s.0.shutdown.notify_one();
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

/// Runs blocking file or database work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("worker failed: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests;
