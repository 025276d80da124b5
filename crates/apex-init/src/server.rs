//! The control server: accepts host connections and serves JSON-RPC on each.
//!
//! Every request runs on its own thread, so a blocking `wait_process` never holds up
//! `kill_process`, `resize_tty` or `ping` on the same connection; responses carry the
//! request id and may arrive out of order. Writes are serialized per connection (one frame
//! at a time). Process exits are also pushed to every open connection as `process_exited`
//! notifications.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};

use apex_agent_proto::api::{Ack, Call, Event, PingResult};
use apex_agent_proto::frame::{self, FrameError};
use apex_agent_proto::rpc::{codes, Response};
use apex_agent_proto::{decode_message, encode_event, Message, RpcError, PROTOCOL_VERSION};
use serde_json::Value;

use crate::mounts::{self, CallError};
use crate::process::{lock, Processes};
use crate::sys::Stream;
use crate::transport::{Listener, Transport};

/// Shared agent state.
pub struct Agent {
    /// The process table.
    pub procs: Processes,
    /// Running as the guest's PID 1 (shutdown reboots) rather than in test mode.
    pub pid1: bool,
    /// The container root (where `set_network` writes /etc files).
    pub root: PathBuf,
    /// Mount points to unmount at shutdown, innermost last.
    pub mounts: Mutex<Vec<PathBuf>>,
    conns: Mutex<Vec<Weak<Writer>>>,
    shutting_down: AtomicBool,
}

/// The write half of a connection; one frame at a time.
struct Writer(Mutex<Stream>);

impl Writer {
    fn send(&self, payload: &[u8]) {
        let Ok(frame) = frame::encode_frame(payload) else {
            crate::info!("dropping an oversized message ({} bytes)", payload.len());
            return;
        };
        let stream = lock(&self.0);
        if let Err(e) = crate::sys::write_all_fd(std::os::fd::AsFd::as_fd(&*stream), &frame) {
            crate::debug!("control write failed: {e}");
        }
    }
}

impl Agent {
    /// A new agent; returns it with the receiving end of its exit events, to pass to
    /// [`run_event_loop`].
    pub fn new(
        transport: Transport,
        root: PathBuf,
        pid1: bool,
    ) -> (Arc<Agent>, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel();
        let agent = Arc::new(Agent {
            procs: Processes::new(transport, root.clone(), tx),
            pid1,
            root,
            mounts: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
            shutting_down: AtomicBool::new(false),
        });
        (agent, rx)
    }

    /// Handles one call; `true` in the second slot means "shut down after replying".
    fn dispatch(&self, call: Call) -> (Result<Value, RpcError>, bool) {
        fn ack() -> Result<Value, RpcError> {
            Ok(serde_json::to_value(Ack {}).expect("ack serializes"))
        }
        fn to_value<T: serde::Serialize>(r: Result<T, RpcError>) -> Result<Value, RpcError> {
            r.map(|v| serde_json::to_value(v).expect("results serialize"))
        }
        fn call_err(r: Result<(), CallError>) -> Result<Value, RpcError> {
            match r {
                Ok(()) => ack(),
                Err(CallError::InvalidParams(m)) => Err(RpcError::new(codes::INVALID_PARAMS, m)),
                Err(CallError::Os { errno, message }) => Err(RpcError::os_error(errno, message)),
            }
        }
        let p = &self.procs;
        let result = match call {
            Call::Ping => to_value(Ok(PingResult {
                protocol_version: PROTOCOL_VERSION,
                agent_version: env!("CARGO_PKG_VERSION").into(),
            })),
            Call::Mount(m) => call_err(mounts::rpc_mount(&m)),
            Call::Umount(u) => call_err(mounts::rpc_umount(&u)),
            Call::Mkdir(m) => call_err(mounts::rpc_mkdir(&m)),
            Call::WriteFile(w) => call_err(mounts::rpc_write_file(&w)),
            Call::SetNetwork(n) => call_err(crate::net::rpc_set_network(&self.root, &n, self.pid1)),
            Call::SetupMounts(m) => call_err(crate::container_fs::rpc_setup_mounts(&self.root, &m)),
            Call::CreateProcess(spec) => p.create(spec).and_then(|()| ack()),
            Call::StartProcess(r) => to_value(p.start(&r.id)),
            Call::WaitProcess(r) => to_value(p.wait(&r.id)),
            Call::KillProcess(k) => p.kill(&k.id, k.signal).and_then(|()| ack()),
            Call::ResizeTty(r) => p.resize(&r.id, r.rows, r.cols).and_then(|()| ack()),
            Call::CloseStdin(r) => p.close_stdin(&r.id).and_then(|()| ack()),
            Call::ExecProcess(spec) => to_value(p.exec(spec)),
            Call::Stats => to_value(Ok(crate::stats::collect())),
            Call::Sync => {
                // SAFETY: sync(2) has no preconditions.
                unsafe { libc::sync() };
                ack()
            }
            Call::Shutdown => {
                if self.shutting_down.swap(true, Ordering::SeqCst) {
                    return (ack(), false);
                }
                return (ack(), true);
            }
        };
        (result, false)
    }

    fn register(&self, w: &Arc<Writer>) {
        let mut conns = lock(&self.conns);
        conns.retain(|c| c.strong_count() > 0);
        conns.push(Arc::downgrade(w));
    }

    fn broadcast(&self, payload: &[u8]) {
        let live: Vec<Arc<Writer>> = lock(&self.conns).iter().filter_map(Weak::upgrade).collect();
        for w in live {
            w.send(payload);
        }
    }
}

/// Sends exit events to every connection, until the agent is gone.
pub fn run_event_loop(agent: Weak<Agent>, events: mpsc::Receiver<Event>) {
    for ev in events {
        let Some(agent) = agent.upgrade() else { return };
        agent.broadcast(&encode_event(&ev));
    }
}

/// Accepts connections forever, one thread each.
pub fn serve(agent: Arc<Agent>, listener: Listener) -> ! {
    loop {
        match listener.accept() {
            Ok(stream) => {
                let agent = agent.clone();
                std::thread::spawn(move || handle_connection(agent, stream));
            }
            Err(e) => {
                crate::info!("accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

fn handle_connection(agent: Arc<Agent>, stream: Stream) {
    let writer = match stream.try_clone() {
        Ok(s) => Arc::new(Writer(Mutex::new(s))),
        Err(e) => {
            crate::info!("control connection: {e}");
            return;
        }
    };
    agent.register(&writer);
    crate::debug!("control connection opened");
    let mut reader = &stream;
    loop {
        let payload = match frame::read_frame(&mut reader) {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(FrameError::Empty) => {
                writer.send(&error_payload(
                    None,
                    RpcError::new(codes::INVALID_REQUEST, "empty frame"),
                ));
                continue;
            }
            Err(e @ FrameError::TooLarge { .. }) => {
                // The stream cannot be resynchronised after a bad header.
                writer.send(&error_payload(
                    None,
                    RpcError::new(codes::INVALID_REQUEST, e.to_string()),
                ));
                break;
            }
            Err(e) => {
                crate::debug!("control connection: {e}");
                break;
            }
        };
        match decode_message(&payload) {
            Ok(Message::Request(req)) => {
                let (agent, writer) = (agent.clone(), writer.clone());
                std::thread::spawn(move || {
                    crate::debug!("request {} {}", req.id, req.method);
                    let (outcome, shutdown) = match Call::parse(&req.method, req.params) {
                        Ok(call) => agent.dispatch(call),
                        Err(e) => (Err(e.to_rpc_error()), false),
                    };
                    let resp = Response {
                        id: Some(req.id),
                        outcome,
                    };
                    writer.send(&Message::Response(resp).to_vec());
                    if shutdown {
                        crate::power::shutdown(&agent);
                    }
                });
            }
            Ok(other) => crate::debug!("ignoring non-request message: {other:?}"),
            Err(e) => writer.send(&error_payload(None, e.to_rpc_error())),
        }
    }
    crate::debug!("control connection closed");
}

fn error_payload(id: Option<u64>, e: RpcError) -> Vec<u8> {
    Message::Response(Response::err(id, e)).to_vec()
}
