//! Requests to the shim on `<bundle>/shim.sock`.
//!
//! A connection carries one request: the client sends a [`Kind::Request`] frame, the shim
//! answers with a [`Kind::Response`] frame. For [`Request::Attach`] and [`Request::Exec`]
//! the connection then becomes a stream of I/O frames ending with [`Kind::Exit`].
//!
//! [`Kind::Request`]: crate::stream::Kind::Request
//! [`Kind::Response`]: crate::stream::Kind::Response
//! [`Kind::Exit`]: crate::stream::Kind::Exit

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

use crate::stream::{self, Exit, Frame, Kind};

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Where the container is in its life.
    Status,
    /// Attach to the main process's I/O (stdin only if the container keeps it open).
    Attach {
        /// Forward this client's stdin.
        stdin: bool,
    },
    /// Run another process in the running container.
    Exec(ExecSpec),
    /// Signal the main process.
    Kill {
        /// Signal number.
        signal: i32,
    },
    /// `signal` (default SIGTERM), then SIGKILL after `timeout_s` (the VM goes with it).
    Stop {
        /// Grace period in seconds.
        timeout_s: u64,
        /// The stop signal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    /// Block until the main process exits.
    Wait,
    /// The [`Status`] now, then again at each change (health, phase) until the phase is
    /// [`Phase::Exited`]: one response frame each.
    Watch,
    /// CPU and memory from the guest.
    Stats,
    /// Stops (`paused`) or resumes the VM's vCPUs.
    Pause {
        /// Pause or resume.
        paused: bool,
    },
    /// Sets the main process's terminal size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
}

/// A process to exec in a running container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// argv.
    pub args: Vec<String>,
    /// Extra `KEY=value` on top of the container's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (default: the container's).
    #[serde(default)]
    pub workdir: Option<String>,
    /// User (default: the container's).
    #[serde(default)]
    pub user: Option<String>,
    /// Allocate a terminal.
    #[serde(default)]
    pub tty: bool,
    /// Forward stdin.
    #[serde(default)]
    pub stdin: bool,
    /// Run one of the guest agent's built-in tools (`args[0]` names it; see
    /// [`apex_agent_proto::api::tools`]) as root, ignoring env, workdir, user and tty.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tool: bool,
    /// With `tool`: the guest directory it runs chrooted in (default: the container's
    /// root), such as [`apex_agent_proto::api::tools::LAYER_DIFF_ROOT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
}

/// Lifecycle phase reported by [`Request::Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The VM is booting.
    Booting,
    /// The main process runs.
    Running,
    /// The main process ended; the shim is about to exit.
    Exited,
}

/// [`Request::Status`]'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Phase.
    pub phase: Phase,
    /// The shim's pid.
    pub shim_pid: u32,
    /// QEMU's pid once the VM runs.
    #[serde(default)]
    pub vm_pid: Option<u32>,
    /// When the main process started (RFC 3339).
    #[serde(default)]
    pub started_at: Option<String>,
    /// Set once exited.
    #[serde(default)]
    pub exit: Option<Exit>,
    /// The VM's state directory once it is booted (for
    /// [`apex_runtime::sandbox::forward_at`]).
    #[serde(default)]
    pub vm_dir: Option<std::path::PathBuf>,
    /// The healthcheck's results, when the container has one and runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// A container's health, from its healthcheck (Docker's `Health`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `starting`, `healthy` or `unhealthy`.
    pub status: String,
    /// Failed checks in a row.
    pub failing_streak: u32,
    /// The last checks, oldest first (at most five).
    pub log: Vec<HealthLog>,
}

/// One healthcheck run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthLog {
    /// Start (RFC 3339).
    pub start: String,
    /// End (RFC 3339).
    pub end: String,
    /// The check's exit code (-1: it timed out or could not run).
    pub exit_code: i32,
    /// Its output (the first 4 KiB).
    pub output: String,
}

/// Guest statistics ([`Request::Stats`]'s answer).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Total CPU time of the guest, nanoseconds.
    pub cpu_usage_ns: u64,
    /// Guest memory in use, bytes.
    pub memory_usage_bytes: u64,
    /// Guest memory size, bytes.
    pub memory_limit_bytes: u64,
    /// Processes in the guest.
    pub pids: u64,
    /// vCPUs.
    pub cpus: u32,
    /// When sampled (RFC 3339, nanoseconds).
    pub read_at: String,
    /// Host RSS of the VM process (QEMU), bytes.
    #[serde(default)]
    pub vm_rss_bytes: u64,
    /// Host memory charged to the container's cgroup (helper, QEMU, backends), bytes;
    /// 0 when it runs uncapped.
    #[serde(default)]
    pub host_memory_bytes: u64,
    /// The container's host memory cap (RAM plus the VMM's overhead), bytes; 0 if none.
    #[serde(default)]
    pub host_memory_limit_bytes: u64,
}

/// The shim's answer: `ok` with an op-specific value, or an error message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// On failure, why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On success, the op's answer (`null` for none).
    #[serde(default)]
    pub value: serde_json::Value,
}

impl Response {
    /// Success with `value`.
    pub fn ok<T: Serialize>(value: &T) -> Self {
        Response {
            ok: true,
            error: None,
            value: serde_json::to_value(value).expect("serializable"),
        }
    }

    /// Failure.
    pub fn err(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            value: serde_json::Value::Null,
        }
    }
}

/// Errors talking to a shim.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Nobody listens: the shim is gone.
    #[error("container helper is not running ({0})")]
    Gone(std::io::Error),
    /// The shim refused the request.
    #[error("{0}")]
    Refused(String),
    /// Broken connection or bad answer.
    #[error("container helper: {0}")]
    Io(#[from] std::io::Error),
}

/// Connects to the shim at `sock`, sends `req` and reads the answer; the stream is
/// returned for requests that continue as I/O streams.
pub async fn call(
    sock: &Path,
    req: &Request,
) -> Result<(serde_json::Value, UnixStream), ShimError> {
    let mut s = UnixStream::connect(sock).await.map_err(ShimError::Gone)?;
    stream::write_frame(&mut s, &Frame::json(Kind::Request, req)).await?;
    let f = stream::read_frame(&mut s).await?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed the connection without answering",
        )
    })?;
    if f.kind != Kind::Response {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("expected a response, got {:?}", f.kind),
        )
        .into());
    }
    let resp: Response = f.parse()?;
    if !resp.ok {
        return Err(ShimError::Refused(resp.error.unwrap_or_default()));
    }
    Ok((resp.value, s))
}

/// [`call`] for a one-shot request, decoding its value.
pub async fn request<T: for<'de> Deserialize<'de>>(
    sock: &Path,
    req: &Request,
) -> Result<T, ShimError> {
    let (v, _) = call(sock, req).await?;
    serde_json::from_value(v).map_err(bad_answer)
}

fn bad_answer(e: impl std::fmt::Display) -> ShimError {
    ShimError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("bad answer: {e}"),
    ))
}

/// The statuses of a [`Request::Watch`].
pub struct StatusWatch {
    first: Option<Status>,
    stream: UnixStream,
}

impl StatusWatch {
    /// The next status; `None` once the shim closed the connection (after the exited
    /// status, or because it died).
    pub async fn next(&mut self) -> Result<Option<Status>, ShimError> {
        if let Some(st) = self.first.take() {
            return Ok(Some(st));
        }
        let Some(f) = stream::read_frame(&mut self.stream).await? else {
            return Ok(None);
        };
        let resp: Response = f.parse()?;
        serde_json::from_value(resp.value)
            .map(Some)
            .map_err(bad_answer)
    }
}

/// Sends [`Request::Watch`].
pub async fn watch(sock: &Path) -> Result<StatusWatch, ShimError> {
    let (v, stream) = call(sock, &Request::Watch).await?;
    Ok(StatusWatch {
        first: Some(serde_json::from_value(v).map_err(bad_answer)?),
        stream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shape() {
        let j = serde_json::to_value(Request::Kill { signal: 15 }).unwrap();
        assert_eq!(j, serde_json::json!({"op": "kill", "signal": 15}));
        let e: Request =
            serde_json::from_value(serde_json::json!({"op": "exec", "args": ["ls"]})).unwrap();
        assert_eq!(
            e,
            Request::Exec(ExecSpec {
                args: vec!["ls".into()],
                ..Default::default()
            })
        );
    }
}
