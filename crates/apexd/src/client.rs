//! A client for the daemon's API: HTTP/1.1 over `$APEX_HOME/run/apex.sock` (hyper).
//!
//! One connection per request: the CLI makes a handful of calls per invocation, and this
//! keeps failures (daemon gone mid-way) local to one call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::api::Message;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket file: the daemon is not running.
    #[error("apexd is not running (start it with `apex system start`)")]
    NotRunning,
    /// The socket file exists but nobody listens: the daemon died without cleaning up.
    #[error("apexd is not running: stale socket {0} (start it with `apex system start`)")]
    StaleSocket(PathBuf),
    /// The daemon answered with an error.
    #[error("apexd: {message} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Its `message`.
        message: String,
    },
    /// Anything else (permissions, protocol, timeout, bad JSON).
    #[error("talking to apexd on {socket}: {error}")]
    Other {
        /// The socket.
        socket: PathBuf,
        /// What went wrong.
        error: String,
    },
}

impl ClientError {
    /// Whether this means the daemon is not running (missing or stale socket).
    pub fn is_not_running(&self) -> bool {
        matches!(self, ClientError::NotRunning | ClientError::StaleSocket(_))
    }
}

/// Talks to the daemon on one socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`, decoding the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path).await
    }

    /// `POST path` without a body, decoding the JSON answer.
    pub async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::POST, path).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, ClientError> {
        let (status, body) = tokio::time::timeout(TIMEOUT, self.request(method, path))
            .await
            .map_err(|_| self.other(format!("no answer within {TIMEOUT:?}")))??;
        if !status.is_success() {
            let message = serde_json::from_slice::<Message>(&body)
                .map(|m| m.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Api { status, message });
        }
        serde_json::from_slice(&body).map_err(|e| self.other(format!("bad answer to {path}: {e}")))
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream = match UnixStream::connect(&self.socket).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClientError::NotRunning)
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(ClientError::StaleSocket(self.socket.clone()))
            }
            Err(e) => return Err(self.other(e)),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.other(e))?;
        let conn = tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "apexd")
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| self.other(e))?;
        let resp = sender.send_request(req).await.map_err(|e| self.other(e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.other(e))?
            .to_bytes();
        drop(sender);
        conn.abort();
        Ok((status, body))
    }

    fn other(&self, error: impl std::fmt::Display) -> ClientError {
        ClientError::Other {
            socket: self.socket.clone(),
            error: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let c = Client::new(dir.path().join("apex.sock"));
        let err = c.get::<serde_json::Value>("/v1/version").await.unwrap_err();
        assert!(matches!(err, ClientError::NotRunning), "{err}");
    }

    #[tokio::test]
    async fn dead_socket_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("apex.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let err = Client::new(&sock)
            .get::<serde_json::Value>("/v1/version")
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::StaleSocket(_)), "{err}");
        assert!(err.is_not_running());
    }

    #[tokio::test]
    async fn talks_to_the_router() {
        let dir = tempfile::tempdir().unwrap();
        let paths = crate::paths::Paths::new(dir.path());
        let store = crate::store::StateStore::open(&paths.state_db()).unwrap();
        let notify = std::sync::Arc::new(tokio::sync::Notify::new());
        let app = crate::api::router(crate::api::AppState::new(paths, store, notify));
        let sock = dir.path().join("apex.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let c = Client::new(&sock);
        let v: crate::api::VersionInfo = c.get("/v1/version").await.unwrap();
        assert_eq!(v, crate::api::VersionInfo::current());
        let err = c.get::<serde_json::Value>("/v1/missing").await.unwrap_err();
        match err {
            ClientError::Api { status, message } => {
                assert_eq!(status, StatusCode::NOT_FOUND);
                assert!(message.contains("/v1/missing"), "{message}");
            }
            e => panic!("unexpected {e}"),
        }
        server.abort();
    }
}
