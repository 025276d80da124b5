//! The Docker Engine API, served on `$APEX_HOME/run/docker.sock`: the `docker` CLI,
//! docker-compose, docker-py and Testcontainers talk to apexd as to a dockerd, and every
//! container they run gets its own VM.
//!
//! A front door only: each request becomes calls on [`Services`] (the same containers,
//! images, networks and volumes the native API uses), and each answer is rendered in
//! Docker's shapes with the models of the `bollard-stubs` crate. Nothing here keeps
//! container state of its own; the only memory is the exec registry Docker's two-step
//! exec API needs.
//!
//! Versions: `/vX.Y` prefixes from [`MIN_API_VERSION`] to [`API_VERSION`] are accepted
//! (and no prefix); the version a request asked for is in its extensions
//! ([`ApiVersion`]). Errors are `{"message": ...}` with Docker's codes and messages.

mod build;
mod containers;
mod convert;
mod exec;
mod images;
mod networks;
mod streams;
mod system;
mod volumes;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, head, post};
use axum::{Json, Router};

use crate::error::ErrorKind;
use crate::services::Services;

/// The newest API version served.
pub const API_VERSION: &str = "1.47";
/// The oldest API version served.
pub const MIN_API_VERSION: &str = "1.24";
const MAX: ApiVersion = ApiVersion(1, 47);
const MIN: ApiVersion = ApiVersion(1, 24);

/// The API version of a request: its `/vX.Y` prefix, else [`API_VERSION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u32, pub u32);

impl ApiVersion {
    fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once('.')?;
        Some(ApiVersion(a.parse().ok()?, b.parse().ok()?))
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Shared by the Docker handlers.
#[derive(Clone)]
pub struct DockerState {
    services: Arc<Services>,
    execs: Arc<exec::Execs>,
}

impl DockerState {
    fn services(&self) -> &Services {
        &self.services
    }
}

/// An error in Docker's shape.
#[derive(Debug)]
pub struct DockerError {
    status: StatusCode,
    message: String,
}

impl DockerError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        DockerError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<crate::error::Error> for DockerError {
    fn from(e: crate::error::Error) -> Self {
        let status = match e.kind() {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        DockerError::new(status, e.message())
    }
}

impl From<anyhow::Error> for DockerError {
    fn from(e: anyhow::Error) -> Self {
        DockerError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

impl IntoResponse for DockerError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, "docker api: {}", self.message);
        }
        let body = serde_json::json!({ "message": self.message });
        (self.status, Json(body)).into_response()
    }
}

type DockerResult<T> = Result<T, DockerError>;

/// The Docker API as a service: version prefixes are handled before routing (a layer
/// on the router itself would run after it).
pub fn app(
    services: Arc<Services>,
) -> impl tower::Service<
    Request,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    let state = DockerState {
        services,
        execs: Arc::new(exec::Execs::default()),
    };
    tower::Layer::layer(&axum::middleware::from_fn(versioned), router(state))
}

/// Strips and checks a `/vX.Y` prefix, records the version, and adds Docker's headers.
async fn versioned(mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let mut version = MAX;
    if let Some(rest) = path.strip_prefix("/v") {
        let (ver, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if let Some(v) = ApiVersion::parse(ver) {
            if v > MAX {
                return with_headers(
                    DockerError::bad_request(format!(
                        "client version {v} is too new. Maximum supported API version is {API_VERSION}"
                    ))
                    .into_response(),
                );
            }
            if v < MIN {
                return with_headers(
                    DockerError::bad_request(format!(
                        "client version {v} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
                    ))
                    .into_response(),
                );
            }
            version = v;
            let query = req
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            let tail = if tail.is_empty() { "/" } else { tail };
            if let Ok(uri) = format!("{tail}{query}").parse::<Uri>() {
                *req.uri_mut() = uri;
            }
        }
    }
    req.extensions_mut().insert(version);
    with_headers(next.run(req).await)
}

fn with_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    if let Ok(v) = HeaderValue::from_str(&format!("Apex/{} (linux)", env!("CARGO_PKG_VERSION"))) {
        h.insert(header::SERVER, v);
    }
    resp
}

/// Swarm is not served: Docker's answer from a daemon outside swarm mode.
async fn not_swarm() -> DockerError {
    DockerError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.",
    )
}

/// A known route that apex does not implement.
async fn not_implemented(uri: Uri) -> DockerError {
    DockerError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!("{} is not implemented by apex", uri.path()),
    )
}

async fn page_not_found() -> DockerError {
    DockerError::not_found("page not found")
}

fn router(state: DockerState) -> Router {
    Router::new()
        // System.
        .route("/_ping", get(system::ping).head(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/system/df", get(system::df))
        .route("/auth", post(system::auth))
        .route("/events", get(system::events))
        // Containers.
        .route("/containers/create", post(containers::create))
        .route("/containers/json", get(containers::list))
        .route("/containers/prune", post(containers::prune))
        .route("/containers/{id}/json", get(containers::inspect))
        .route("/containers/{id}", delete(containers::remove))
        .route("/containers/{id}/start", post(containers::start))
        .route("/containers/{id}/stop", post(containers::stop))
        .route("/containers/{id}/restart", post(containers::restart))
        .route("/containers/{id}/kill", post(containers::kill))
        .route("/containers/{id}/wait", post(containers::wait))
        .route("/containers/{id}/rename", post(containers::rename))
        .route("/containers/{id}/pause", post(containers::pause))
        .route("/containers/{id}/unpause", post(containers::unpause))
        .route("/containers/{id}/top", get(containers::top))
        .route("/containers/{id}/resize", post(containers::resize))
        .route("/containers/{id}/logs", get(containers::logs))
        .route("/containers/{id}/attach", post(containers::attach))
        .route("/containers/{id}/stats", get(containers::stats))
        .route(
            "/containers/{id}/archive",
            head(containers::archive_stat)
                .get(containers::archive_get)
                .put(containers::archive_put),
        )
        .route("/containers/{id}/exec", post(exec::create))
        .route("/containers/{id}/update", post(not_implemented))
        .route("/containers/{id}/changes", get(not_implemented))
        .route("/containers/{id}/export", get(not_implemented))
        .route("/containers/{id}/attach/ws", get(not_implemented))
        .route("/commit", post(not_implemented))
        // Exec.
        .route("/exec/{id}/start", post(exec::start))
        .route("/exec/{id}/resize", post(exec::resize))
        .route("/exec/{id}/json", get(exec::inspect))
        // Images (names hold slashes: the handlers route on the tail).
        .route("/images/create", post(images::create))
        .route("/images/json", get(images::list))
        .route("/images/prune", post(images::prune))
        .route("/images/load", post(images::load))
        .route("/images/get", get(images::get_many))
        .route("/images/search", get(images::search))
        .route(
            "/images/{*rest}",
            get(images::get_named)
                .post(images::post_named)
                .delete(images::remove),
        )
        .route("/build", post(build::build))
        .route("/build/prune", post(build::prune))
        .route("/session", post(not_implemented))
        .route("/distribution/{*rest}", get(not_implemented))
        // Networks.
        .route("/networks", get(networks::list))
        .route("/networks/create", post(networks::create))
        .route("/networks/prune", post(networks::prune))
        .route(
            "/networks/{id}",
            get(networks::inspect).delete(networks::remove),
        )
        .route("/networks/{id}/connect", post(networks::connect))
        .route("/networks/{id}/disconnect", post(networks::disconnect))
        // Volumes.
        .route("/volumes", get(volumes::list))
        .route("/volumes/create", post(volumes::create))
        .route("/volumes/prune", post(volumes::prune))
        .route(
            "/volumes/{name}",
            get(volumes::inspect)
                .delete(volumes::remove)
                .put(not_implemented),
        )
        // Swarm mode and plugins: answered as a daemon outside swarm mode does.
        .route("/plugins", get(system::plugins))
        .route("/plugins/{*rest}", any(not_implemented))
        .route("/swarm", any(not_swarm))
        .route("/swarm/{*rest}", any(not_swarm))
        .route("/nodes", any(not_swarm))
        .route("/nodes/{*rest}", any(not_swarm))
        .route("/services", any(not_swarm))
        .route("/services/{*rest}", any(not_swarm))
        .route("/tasks", any(not_swarm))
        .route("/tasks/{*rest}", any(not_swarm))
        .route("/secrets", any(not_swarm))
        .route("/secrets/{*rest}", any(not_swarm))
        .route("/configs", any(not_swarm))
        .route("/configs/{*rest}", any(not_swarm))
        .fallback(page_not_found)
        .with_state(state)
}

#[cfg(test)]
mod tests;
