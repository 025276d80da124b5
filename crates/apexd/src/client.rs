//! A client for the daemon's API: HTTP/1.1 over `$APEX_HOME/run/apex.sock` (hyper).
//!
//! One connection per request: the CLI makes a handful of calls per invocation, and this
//! keeps failures (daemon gone mid-way) local to one call. Besides JSON calls it offers a
//! streaming GET ([`Client::get_lines`], for NDJSON logs) and protocol upgrades
//! ([`Client::upgrade`], for attach and exec streams).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use crate::api::Message;

/// How long one request may take (by default).
const TIMEOUT: Duration = Duration::from_secs(60);

/// The `Upgrade` protocol of attach and exec streams.
pub const UPGRADE_PROTOCOL: &str = "apex-stream";

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

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the daemon answered 404 (no such container, image, exec or route).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// The daemon's own message for API errors, else the whole error.
    pub fn message(&self) -> String {
        match self {
            ClientError::Api { message, .. } => message.clone(),
            e => e.to_string(),
        }
    }
}

/// Talks to the daemon on one socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Option<Duration>,
}

/// The body of a streaming answer, read line by line ([`Client::get_lines`]).
pub struct LineStream {
    body: Incoming,
    buf: Vec<u8>,
    eof: bool,
    conn: JoinHandle<()>,
    socket: PathBuf,
}

impl LineStream {
    /// The next line without its `\n` (a last line without one is returned too); `None`
    /// once the body ended.
    pub async fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let rest = self.buf.split_off(i + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = std::mem::take(&mut self.buf);
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            match self.body.frame().await {
                None => self.eof = true,
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(ClientError::Other {
                        socket: self.socket.clone(),
                        error: format!("reading the answer: {e}"),
                    })
                }
            }
        }
    }
}

impl Drop for LineStream {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// The connection of an upgraded request: raw bytes both ways.
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

type DataStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// The body of a [`Client::get_stream`] answer, as bytes.
pub struct BodyReader {
    inner: tokio_util::io::StreamReader<DataStream, Bytes>,
    conn: JoinHandle<()>,
}

impl tokio::io::AsyncRead for BodyReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl Drop for BodyReader {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Client {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            timeout: Some(TIMEOUT),
        }
    }

    /// The same client with another limit per request (`None`: wait forever, e.g. for
    /// `wait` or a long `stop`). Streams and upgrades are limited until the answer's
    /// head only.
    pub fn with_timeout(&self, timeout: Option<Duration>) -> Self {
        Client {
            socket: self.socket.clone(),
            timeout,
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`, decoding the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// `POST path` without a body, decoding the JSON answer.
    pub async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::POST, path, None).await
    }

    /// `POST path` with `body` as JSON, decoding the JSON answer.
    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| self.other(e))?;
        self.call(Method::POST, path, Some(body)).await
    }

    /// `DELETE path`, decoding the JSON answer.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None).await
    }

    /// `GET path`, returning the body as lines as they arrive (NDJSON, chunked). Only
    /// the answer's head is subject to the timeout: a followed log may last forever.
    pub async fn get_lines(&self, path: &str) -> Result<LineStream, ClientError> {
        let (resp, conn) = self
            .head(self.send(Method::GET, path, None, false), path)
            .await?;
        self.lines_of(resp, conn).await
    }

    /// `POST path` streaming the bytes of `body` (a tar, chunked), returning the answer
    /// as lines as they arrive (NDJSON). Only the answer's head is subject to the timeout.
    pub async fn post_stream_lines(
        &self,
        path: &str,
        body: impl tokio::io::AsyncRead + Send + 'static,
    ) -> Result<LineStream, ClientError> {
        let frames = tokio_util::io::ReaderStream::with_capacity(body, 256 * 1024)
            .map_ok(hyper::body::Frame::data);
        let body = http_body_util::StreamBody::new(frames);
        let (resp, conn) = self
            .head(
                self.send_body(Method::POST, path, body, "application/x-tar", None),
                path,
            )
            .await?;
        self.lines_of(resp, conn).await
    }

    async fn lines_of(
        &self,
        resp: Response<Incoming>,
        conn: JoinHandle<()>,
    ) -> Result<LineStream, ClientError> {
        let status = resp.status();
        if !status.is_success() {
            let body = self.read_body(resp).await;
            conn.abort();
            return Err(api_error(status, &body?));
        }
        Ok(LineStream {
            body: resp.into_body(),
            buf: Vec::new(),
            eof: false,
            conn,
            socket: self.socket.clone(),
        })
    }

    /// `method path` (with `body` as JSON) asking to switch to the apex stream protocol
    /// (`Connection: Upgrade`, `Upgrade: apex-stream`); on `101 Switching Protocols`
    /// returns the raw connection. Any other answer is an error ([`ClientError::Api`]
    /// with the daemon's message and status).
    pub async fn upgrade(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Upgraded, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| self.other(e))?;
        let (resp, conn) = self.head(self.send(method, path, body, true), path).await?;
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let body = self.read_body(resp).await;
            conn.abort();
            let body = body?;
            if status.is_success() {
                return Err(self.other(format!(
                    "{path}: expected a protocol switch, got HTTP {status}"
                )));
            }
            return Err(api_error(status, &body));
        }
        // The connection task hands the socket over once the upgrade completes.
        let io = hyper::upgrade::on(resp)
            .await
            .map_err(|e| self.other(format!("upgrading {path}: {e}")))?;
        Ok(TokioIo::new(io))
    }

    /// `HEAD path`: the answer's headers (an error status is an error).
    pub async fn head_request(&self, path: &str) -> Result<header::HeaderMap, ClientError> {
        let (resp, conn) = self
            .head(self.send(Method::HEAD, path, None, false), path)
            .await?;
        conn.abort();
        let status = resp.status();
        if !status.is_success() {
            let message = status.canonical_reason().unwrap_or("request failed");
            return Err(ClientError::Api {
                status,
                message: message.into(),
            });
        }
        Ok(resp.headers().clone())
    }

    /// `GET path`, returning the answer's headers and its body as a byte stream (only
    /// the head is subject to the timeout).
    pub async fn get_stream(
        &self,
        path: &str,
    ) -> Result<(header::HeaderMap, BodyReader), ClientError> {
        let (resp, conn) = self
            .head(self.send(Method::GET, path, None, false), path)
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let body = self.read_body(resp).await;
            conn.abort();
            return Err(api_error(status, &body?));
        }
        let headers = resp.headers().clone();
        let stream =
            http_body_util::BodyDataStream::new(resp.into_body()).map_err(std::io::Error::other);
        Ok((
            headers,
            BodyReader {
                inner: tokio_util::io::StreamReader::new(Box::pin(stream)),
                conn,
            },
        ))
    }

    /// `PUT path` with the bytes of `body` (streamed, chunked), decoding the JSON answer
    /// if there is one.
    pub async fn put_stream(
        &self,
        path: &str,
        body: impl tokio::io::AsyncRead + Send + 'static,
    ) -> Result<(), ClientError> {
        let frames = tokio_util::io::ReaderStream::with_capacity(body, 256 * 1024)
            .map_ok(hyper::body::Frame::data);
        let body = http_body_util::StreamBody::new(frames);
        let whole = async {
            let (resp, conn) = self
                .send_body(Method::PUT, path, body, "application/x-tar", None)
                .await?;
            let status = resp.status();
            let body = self.read_body(resp).await;
            conn.abort();
            Ok::<_, ClientError>((status, body?))
        };
        let (status, body) = whole.await?;
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        Ok(())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let whole = async {
            let (resp, conn) = self.send(method, path, body, false).await?;
            let status = resp.status();
            let body = self.read_body(resp).await;
            conn.abort();
            Ok::<_, ClientError>((status, body?))
        };
        let (status, body) = match self.timeout {
            Some(t) => tokio::time::timeout(t, whole)
                .await
                .map_err(|_| self.other(format!("no answer to {path} within {t:?}")))??,
            None => whole.await?,
        };
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        // An empty body decodes as `null` (for `()` and `Option` answers).
        let body: &[u8] = if body.is_empty() { b"null" } else { &body };
        serde_json::from_slice(body).map_err(|e| self.other(format!("bad answer to {path}: {e}")))
    }

    /// Awaits `fut` (a request's head) within the timeout.
    async fn head<F, T>(&self, fut: F, path: &str) -> Result<T, ClientError>
    where
        F: std::future::Future<Output = Result<T, ClientError>>,
    {
        match self.timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| self.other(format!("no answer to {path} within {t:?}")))?,
            None => fut.await,
        }
    }

    async fn read_body(&self, resp: Response<Incoming>) -> Result<Bytes, ClientError> {
        Ok(resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.other(e))?
            .to_bytes())
    }

    /// Connects, sends the request and returns the answer's head; the connection task
    /// must be aborted once the body is read (it ends by itself after an upgrade).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, JoinHandle<()>), ClientError> {
        let content_type = if body.is_some() {
            "application/json"
        } else {
            ""
        };
        let body = Full::new(Bytes::from(body.unwrap_or_default()));
        let upgrade = upgrade.then_some(UPGRADE_PROTOCOL);
        self.send_body(method, path, body, content_type, upgrade)
            .await
    }

    /// [`Client::send`] with any body, its content type (empty for none) and the
    /// protocol to upgrade to, if any.
    async fn send_body<B>(
        &self,
        method: Method,
        path: &str,
        body: B,
        content_type: &str,
        upgrade: Option<&str>,
    ) -> Result<(Response<Incoming>, JoinHandle<()>), ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
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
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, B>(TokioIo::new(stream))
                .await
                .map_err(|e| self.other(e))?;
        let conn = tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("apexd connection: {e}");
            }
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "apexd")
            .header(header::ACCEPT, "application/json");
        if !content_type.is_empty() {
            req = req.header(header::CONTENT_TYPE, content_type);
        }
        if let Some(proto) = upgrade {
            req = req
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, proto);
        }
        let req = req.body(body).map_err(|e| self.other(e))?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, conn)),
            Err(e) => {
                conn.abort();
                Err(self.other(e))
            }
        }
    }

    fn other(&self, error: impl std::fmt::Display) -> ClientError {
        ClientError::Other {
            socket: self.socket.clone(),
            error: error.to_string(),
        }
    }
}

/// The error for a non-success answer: its `{"message"}`, or the body as text.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<Message>(body)
        .map(|m| m.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_string());
    let message = if message.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    } else {
        message
    };
    ClientError::Api { status, message }
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
        let app = crate::api::router(crate::api::AppState::new(
            paths,
            std::sync::Arc::new(store),
            notify,
        ));
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

    /// A one-shot raw HTTP server: reads one request (head and `Content-Length` body),
    /// hands it to `answer` which writes whatever it likes on the socket.
    async fn raw_server<F, Fut>(sock: &Path, answer: F) -> tokio::task::JoinHandle<()>
    where
        F: FnOnce(String, Vec<u8>, UnixStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::UnixListener::bind(sock).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).await.unwrap();
                buf.push(byte[0]);
            }
            let head = String::from_utf8(buf).unwrap();
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).await.unwrap();
            answer(head, body, s).await
        })
    }

    #[tokio::test]
    async fn post_json_sends_the_body_and_delete_decodes() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("apex.sock");
        let server = raw_server(&sock, |head, body, mut s| async move {
            assert!(head.starts_with("POST /v1/things HTTP/1.1\r\n"), "{head}");
            assert!(head.to_ascii_lowercase().contains("content-type: application/json"));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let out = serde_json::to_vec(&serde_json::json!({"got": v})).unwrap();
            let resp = format!(
                "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                out.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            s.write_all(&out).await.unwrap();
        })
        .await;
        let c = Client::new(&sock);
        let v: serde_json::Value = c
            .post_json("/v1/things", &serde_json::json!({"a": 1}))
            .await
            .unwrap();
        assert_eq!(v, serde_json::json!({"got": {"a": 1}}));
        server.await.unwrap();

        std::fs::remove_file(&sock).unwrap();
        let server = raw_server(&sock, |head, _, mut s| async move {
            assert!(
                head.starts_with("DELETE /v1/things/x?force=true "),
                "{head}"
            );
            let out = br#"{"message":"no such container: x"}"#;
            let resp = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\n\r\n",
                out.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            s.write_all(out).await.unwrap();
        })
        .await;
        let err = c
            .delete::<serde_json::Value>("/v1/things/x?force=true")
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert_eq!(err.message(), "no such container: x");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn streams_chunked_lines() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("apex.sock");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = raw_server(&sock, |_, _, mut s| async move {
            s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            s.write_all(b"8\r\n{\"a\":1}\n\r\n").await.unwrap();
            rx.await.unwrap();
            s.write_all(b"8\r\n{\"b\":2}\n\r\n3\r\n\nz\n\r\n1\r\nw\r\n0\r\n\r\n")
                .await
                .unwrap();
        })
        .await;
        let mut lines = Client::new(&sock)
            .with_timeout(Some(Duration::from_secs(5)))
            .get_lines("/v1/logs")
            .await
            .unwrap();
        // The first line arrives before the rest is even sent.
        let l = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("first line while the stream is open")
            .unwrap();
        tx.send(()).unwrap();
        assert_eq!(l.as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(
            lines.next_line().await.unwrap().as_deref(),
            Some(r#"{"b":2}"#)
        );
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some(""));
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("z"));
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("w"));
        assert_eq!(lines.next_line().await.unwrap(), None);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn upgrade_switches_to_raw_bytes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("apex.sock");
        let server = raw_server(&sock, |head, body, mut s| async move {
            let h = head.to_ascii_lowercase();
            assert!(h.contains("connection: upgrade"), "{head}");
            assert!(h.contains("upgrade: apex-stream"), "{head}");
            assert_eq!(body, br#"{"x":true}"#);
            s.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: apex-stream\r\n\r\nhello",
            )
            .await
            .unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        })
        .await;
        let mut io = Client::new(&sock)
            .upgrade(
                Method::POST,
                "/v1/containers/c/attach",
                Some(&serde_json::json!({"x": true})),
            )
            .await
            .unwrap();
        let mut buf = [0u8; 5];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        io.write_all(b"ping").await.unwrap();
        let mut buf = Vec::new();
        io.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"ping");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn refused_upgrade_is_an_api_error() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("apex.sock");
        let server = raw_server(&sock, |_, _, mut s| async move {
            let out = br#"{"message":"container c is not running"}"#;
            let resp = format!(
                "HTTP/1.1 409 Conflict\r\ncontent-length: {}\r\n\r\n",
                out.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            s.write_all(out).await.unwrap();
        })
        .await;
        let err = Client::new(&sock)
            .upgrade(Method::POST, "/v1/exec/e/start", None)
            .await
            .err()
            .unwrap();
        assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
        assert_eq!(err.message(), "container c is not running");
        server.await.unwrap();
    }
}
