//! Host side of the agent protocol: a multiplexing JSON-RPC client over one control
//! connection. Calls may be in flight concurrently (a `wait_process` must not block a
//! `kill_process`); a reader task routes responses to their callers by id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use apex_agent_proto::api::{
    ExitStatus, KillProcess, PingResult, ProcessRef, ProcessSpec, ProcessStarted, ResizeTty,
    SetNetwork, SetupMounts, Stats,
};
use apex_agent_proto::rpc::{codes, ProcessStartFailed};
use apex_agent_proto::{encode_request, frame, read_message_async, Call, Message, RpcError};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The guest answered with an error.
    #[error("guest agent: {}", .0.message)]
    Remote(RpcError),
    /// The connection broke (VM gone, agent crashed).
    #[error("lost connection to the guest agent: {0}")]
    Closed(String),
    /// A malformed message.
    #[error("guest agent protocol error: {0}")]
    Protocol(String),
}

impl AgentError {
    /// For a process that could not start: the docker-style exit code (127/126).
    pub fn start_failure(&self) -> Option<ProcessStartFailed> {
        match self {
            AgentError::Remote(e) if e.code == codes::PROCESS_START_FAILED => e
                .data
                .clone()
                .and_then(|d| serde_json::from_value(d).ok())
                .or(Some(ProcessStartFailed {
                    errno: None,
                    exit_code: 126,
                })),
            _ => None,
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, AgentError>>>>>;

/// A connected agent client.
pub struct AgentClient {
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pending: Pending,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl AgentClient {
    /// Wraps a connected control stream.
    pub fn new<S>(stream: S) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut r, w) = tokio::io::split(stream);
        let pending: Pending = Arc::default();
        let p = pending.clone();
        let reader = tokio::spawn(async move {
            let reason = loop {
                match read_message_async(&mut r).await {
                    Ok(Some(Message::Response(resp))) => {
                        let Some(id) = resp.id else { continue };
                        let tx = p.lock().expect("pending lock").remove(&id);
                        if let Some(tx) = tx {
                            let _ = tx.send(resp.outcome.map_err(AgentError::Remote));
                        }
                    }
                    Ok(Some(_)) => {} // events and stray requests: not used yet
                    Ok(None) => break "connection closed".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            for (_, tx) in p.lock().expect("pending lock").drain() {
                let _ = tx.send(Err(AgentError::Closed(reason.clone())));
            }
        });
        AgentClient {
            writer: tokio::sync::Mutex::new(Box::new(w)),
            pending,
            next_id: AtomicU64::new(1),
            reader,
        }
    }

    /// Sends `call` and waits for its raw result.
    pub async fn call(&self, call: &Call) -> Result<Value, AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        if self.reader.is_finished() {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(AgentError::Closed("connection closed".into()));
        }
        let framed = frame::encode_frame(&encode_request(id, call))
            .map_err(|e| AgentError::Protocol(e.to_string()))?;
        {
            let mut w = self.writer.lock().await;
            if let Err(e) = async {
                w.write_all(&framed).await?;
                w.flush().await
            }
            .await
            {
                self.pending.lock().expect("pending lock").remove(&id);
                return Err(AgentError::Closed(e.to_string()));
            }
        }
        rx.await
            .unwrap_or_else(|_| Err(AgentError::Closed("connection closed".into())))
    }

    async fn typed<T: DeserializeOwned>(&self, call: &Call) -> Result<T, AgentError> {
        let v = self.call(call).await?;
        serde_json::from_value(v).map_err(|e| AgentError::Protocol(e.to_string()))
    }

    /// Liveness and version.
    pub async fn ping(&self) -> Result<PingResult, AgentError> {
        self.typed(&Call::Ping).await
    }

    /// Configures the guest network: loopback, interfaces, routes, hostname, and the
    /// container's /etc/hosts and /etc/resolv.conf.
    pub async fn set_network(&self, net: SetNetwork) -> Result<(), AgentError> {
        self.call(&Call::SetNetwork(net)).await.map(drop)
    }

    /// Prepares a process (the guest connects its stdio ports before answering).
    pub async fn create_process(&self, spec: ProcessSpec) -> Result<(), AgentError> {
        self.call(&Call::CreateProcess(spec)).await.map(drop)
    }

    /// Starts a created process.
    pub async fn start_process(&self, id: &str) -> Result<ProcessStarted, AgentError> {
        self.typed(&Call::StartProcess(ProcessRef { id: id.into() }))
            .await
    }

    /// Creates and starts an extra process in the running container.
    pub async fn exec_process(&self, spec: ProcessSpec) -> Result<ProcessStarted, AgentError> {
        self.typed(&Call::ExecProcess(spec)).await
    }

    /// Waits for a process to exit.
    pub async fn wait_process(&self, id: &str) -> Result<ExitStatus, AgentError> {
        self.typed(&Call::WaitProcess(ProcessRef { id: id.into() }))
            .await
    }

    /// Sends a signal.
    pub async fn kill_process(&self, id: &str, signal: i32) -> Result<(), AgentError> {
        self.call(&Call::KillProcess(KillProcess {
            id: id.into(),
            signal,
        }))
        .await
        .map(drop)
    }

    /// Resizes a process's terminal.
    pub async fn resize_tty(&self, id: &str, rows: u16, cols: u16) -> Result<(), AgentError> {
        self.call(&Call::ResizeTty(ResizeTty {
            id: id.into(),
            rows,
            cols,
        }))
        .await
        .map(drop)
    }

    /// Closes a process's stdin.
    pub async fn close_stdin(&self, id: &str) -> Result<(), AgentError> {
        self.call(&Call::CloseStdin(ProcessRef { id: id.into() }))
            .await
            .map(drop)
    }

    /// Guest resource usage.
    pub async fn stats(&self) -> Result<Stats, AgentError> {
        self.typed(&Call::Stats).await
    }

    /// Mounts shares and tmpfs in the container and applies a read-only root.
    pub async fn setup_mounts(&self, m: SetupMounts) -> Result<(), AgentError> {
        self.call(&Call::SetupMounts(m)).await.map(drop)
    }

    /// Flushes every guest filesystem (sync(2)).
    pub async fn sync(&self) -> Result<(), AgentError> {
        self.call(&Call::Sync).await.map(drop)
    }

    /// Asks the guest to stop everything and power off.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        self.call(&Call::Shutdown).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apex_agent_proto::{encode_error, encode_response, read_message_async};

    /// A fake agent answering pings at once and waits only after a kill.
    async fn fake_agent(s: tokio::io::DuplexStream) {
        let (mut r, mut w) = tokio::io::split(s);
        let mut parked: Option<u64> = None;
        while let Ok(Some(Message::Request(req))) = read_message_async(&mut r).await {
            let reply = match req.method.as_str() {
                "ping" => Some(encode_response(
                    req.id,
                    &serde_json::json!({"protocol_version": 1, "agent_version": "t"}),
                )),
                "wait_process" => {
                    parked = Some(req.id);
                    None
                }
                "kill_process" => {
                    let wid = parked.take().unwrap();
                    let done =
                        encode_response(wid, &serde_json::json!({"exit_code": 143, "signal": 15}));
                    frame::write_frame_async(&mut w, &done).await.unwrap();
                    Some(encode_response(req.id, &serde_json::json!({})))
                }
                _ => Some(encode_error(
                    Some(req.id),
                    RpcError::new(codes::PROCESS_START_FAILED, "exec: \"nope\": not found")
                        .with_data(serde_json::json!({"errno": 2, "exit_code": 127})),
                )),
            };
            if let Some(r) = reply {
                frame::write_frame_async(&mut w, &r).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn concurrent_calls_are_multiplexed() {
        let (a, b) = tokio::io::duplex(1 << 16);
        tokio::spawn(fake_agent(b));
        let c = Arc::new(AgentClient::new(a));
        assert_eq!(c.ping().await.unwrap().protocol_version, 1);
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.wait_process("p").await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        c.kill_process("p", 15).await.unwrap();
        let st = waiter.await.unwrap().unwrap();
        assert_eq!((st.exit_code, st.signal), (143, Some(15)));
    }

    #[tokio::test]
    async fn start_failures_carry_exit_codes_and_close_fails_pending() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let agent = tokio::spawn(fake_agent(b));
        let c = AgentClient::new(a);
        let e = c.start_process("x").await.unwrap_err();
        assert_eq!(e.start_failure().unwrap().exit_code, 127);
        assert!(e.to_string().contains("not found"));
        agent.abort();
        let _ = agent.await;
        let e = c.ping().await.unwrap_err();
        assert!(matches!(e, AgentError::Closed(_)), "{e}");
    }
}
