//! Test harness: runs `apex-init --serve-unix` against a tiny busybox root and drives it as
//! the host would, with apex-agent-proto as the client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apex_agent_proto::api::{Call, ExitStatus, ProcessSpec, User};
use apex_agent_proto::rpc::{Notification, Response};
use apex_agent_proto::{decode_message, encode_request, frame, Message, RpcError};
use serde_json::Value;

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Whether the tests can run (they need root for chroot, mounts and setuid).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping: apex-init agent tests need root");
    }
    root
}

/// Builds the container root: busybox-static with applet symlinks, passwd and group.
pub fn build_root(root: &Path) {
    for d in ["bin", "etc", "home/apex", "tmp", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static at /bin/busybox");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n\
         apex:x:1000:1000:Apex:/home/apex:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\ntty:x:5:\nstaff:x:50:apex\napex:x:1000:\nnogroup:x:65534:\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/not-executable"), "#!/bin/sh\necho no\n").unwrap();
    copy_agent_libraries(root);
}

/// The shared libraries of the agent binary (built for the host, unlike the guest's static
/// one), so that the agent's tools and reaper can run chrooted in the root.
fn copy_agent_libraries(root: &Path) {
    let out = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_apex-init"))
        .output()
        .expect("ldd");
    for word in String::from_utf8(out.stdout).unwrap().split_whitespace() {
        let lib = Path::new(word);
        if lib.is_absolute() && lib.exists() {
            let dest = root.join(lib.strip_prefix("/").unwrap());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(lib, dest).unwrap();
        }
    }
}

/// A running agent in test mode; killed on drop.
pub struct Agent {
    pub child: Child,
    pub sock: PathBuf,
    pub root: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Agent {
    pub fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        build_root(&root);
        let sock = dir.path().join("agent.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_apex-init"));
        cmd.arg("--serve-unix").arg(&sock).arg("--root").arg(&root);
        if std::env::var_os("APEX_INIT_DEBUG").is_some() {
            cmd.arg("--debug");
        }
        let child = cmd.stdin(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "agent did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
        Agent {
            child,
            sock,
            root,
            dir,
        }
    }

    pub fn connect(&self) -> Client {
        Client::new(UnixStream::connect(&self.sock).unwrap())
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A control connection with a reader thread, so calls can be concurrent.
pub struct Client {
    writer: Mutex<UnixStream>,
    pending: Arc<Mutex<HashMap<u64, Sender<Response>>>>,
    pub events: Receiver<Notification>,
    next_id: AtomicU64,
}

impl Client {
    pub fn new(stream: UnixStream) -> Client {
        let pending: Arc<Mutex<HashMap<u64, Sender<Response>>>> = Arc::default();
        let (ev_tx, ev_rx) = mpsc::channel();
        let mut reader = stream.try_clone().unwrap();
        let p = pending.clone();
        std::thread::spawn(move || {
            while let Ok(Some(payload)) = frame::read_frame(&mut reader) {
                match decode_message(&payload).unwrap() {
                    Message::Response(r) => {
                        let tx = p.lock().unwrap().remove(&r.id.expect("id"));
                        if let Some(tx) = tx {
                            let _ = tx.send(r);
                        }
                    }
                    Message::Notification(n) => {
                        let _ = ev_tx.send(n);
                    }
                    Message::Request(r) => panic!("unexpected request {r:?}"),
                }
            }
        });
        Client {
            writer: Mutex::new(stream),
            pending,
            events: ev_rx,
            next_id: AtomicU64::new(1),
        }
    }

    /// Sends a call; returns a receiver for its response.
    pub fn send(&self, call: &Call) -> Receiver<Response> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        self.pending.lock().unwrap().insert(id, tx);
        frame::write_frame(&mut *self.writer.lock().unwrap(), &encode_request(id, call)).unwrap();
        rx
    }

    pub fn call(&self, call: &Call) -> Result<Value, RpcError> {
        let resp = self
            .send(call)
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|e| panic!("no response to {}: {e}", call.method()));
        resp.outcome
    }

    pub fn call_ok<T: serde::de::DeserializeOwned>(&self, call: &Call) -> T {
        let v = self
            .call(call)
            .unwrap_or_else(|e| panic!("{} failed: {e}", call.method()));
        serde_json::from_value(v).unwrap()
    }

    pub fn wait(&self, id: &str) -> ExitStatus {
        self.call_ok(&Call::WaitProcess(apex_agent_proto::api::ProcessRef {
            id: id.into(),
        }))
    }
}

static NEXT_PORT: AtomicU32 = AtomicU32::new(3000);

/// Host-side stdio listeners for one process.
pub struct HostStdio {
    pub stdin: Option<(u32, UnixListener)>,
    pub stdout: Option<(u32, UnixListener)>,
    pub stderr: Option<(u32, UnixListener)>,
}

fn listener(agent: &Agent) -> (u32, UnixListener) {
    let port = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
    let mut path = agent.sock.as_os_str().to_owned();
    path.push(format!("_{port}"));
    (port, UnixListener::bind(PathBuf::from(path)).unwrap())
}

impl HostStdio {
    pub fn new(agent: &Agent, stdin: bool, stdout: bool, stderr: bool) -> HostStdio {
        HostStdio {
            stdin: stdin.then(|| listener(agent)),
            stdout: stdout.then(|| listener(agent)),
            stderr: stderr.then(|| listener(agent)),
        }
    }

    pub fn apply(&self, spec: &mut ProcessSpec) {
        spec.stdin_port = self.stdin.as_ref().map(|(p, _)| *p);
        spec.stdout_port = self.stdout.as_ref().map(|(p, _)| *p);
        spec.stderr_port = self.stderr.as_ref().map(|(p, _)| *p);
    }

    /// Accepts the guest's connections (after create) and returns the streams.
    pub fn accept(self) -> Streams {
        let acc = |l: Option<(u32, UnixListener)>| l.map(|(_, l)| l.accept().unwrap().0);
        Streams {
            stdin: acc(self.stdin),
            stdout: acc(self.stdout).map(reader_thread),
            stderr: acc(self.stderr).map(reader_thread),
        }
    }
}

/// A stream read to EOF on a thread.
pub struct Collected(Receiver<Vec<u8>>, Arc<Mutex<Vec<u8>>>);

impl Collected {
    /// Everything until EOF.
    pub fn finish(&self) -> String {
        let bytes = self
            .0
            .recv_timeout(TIMEOUT)
            .expect("stream did not reach EOF");
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits until the output so far contains `needle`.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let now = String::from_utf8_lossy(&self.1.lock().unwrap()).into_owned();
            if now.contains(needle) {
                return now;
            }
            assert!(Instant::now() < deadline, "{needle:?} not in {now:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_done(&self) -> Result<Vec<u8>, RecvTimeoutError> {
        self.0.recv_timeout(Duration::from_millis(0))
    }
}

fn reader_thread(mut s: UnixStream) -> Collected {
    let (tx, rx) = mpsc::channel();
    let so_far = Arc::new(Mutex::new(Vec::new()));
    let sf = so_far.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sf.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
        let all = sf.lock().unwrap().clone();
        let _ = tx.send(all);
    });
    Collected(rx, so_far)
}

pub struct Streams {
    pub stdin: Option<UnixStream>,
    pub stdout: Option<Collected>,
    pub stderr: Option<Collected>,
}

impl Streams {
    pub fn write_stdin(&mut self, data: &[u8]) {
        self.stdin.as_mut().unwrap().write_all(data).unwrap();
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }
}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// A spec with a fresh id, `PATH=/bin`, cwd `/`, root user.
pub fn spec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        id: format!("p{}", NEXT_ID.fetch_add(1, Ordering::SeqCst)),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: User::default(),
        terminal: false,
        stdin_port: None,
        stdout_port: None,
        stderr_port: None,
        rootfs: None,
        rlimits: vec![],
        agent_tool: false,
        namespaces: Default::default(),
        init: false,
        tty_size: None,
    }
}

/// create_process with stdio connections as requested; returns the streams.
pub fn create(
    client: &Client,
    agent: &Agent,
    spec: &mut ProcessSpec,
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> Result<Streams, RpcError> {
    let io = HostStdio::new(agent, stdin, stdout, stderr);
    io.apply(spec);
    client.call(&Call::CreateProcess(spec.clone()))?;
    Ok(io.accept())
}

pub fn start(client: &Client, id: &str) -> Result<Value, RpcError> {
    client.call(&Call::StartProcess(apex_agent_proto::api::ProcessRef {
        id: id.into(),
    }))
}

/// Runs a process to completion: `(status, stdout, stderr)`.
pub fn run(client: &Client, agent: &Agent, mut spec: ProcessSpec) -> (ExitStatus, String, String) {
    let streams = create(client, agent, &mut spec, false, true, true).unwrap();
    start(client, &spec.id).unwrap();
    let status = client.wait(&spec.id);
    (
        status,
        streams.stdout.unwrap().finish(),
        streams.stderr.unwrap().finish(),
    )
}

/// Parses `/proc/PID/stat` into `(state, ppid)`.
pub fn proc_state(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}
