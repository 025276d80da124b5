//! The agent's built-in tools (see [`apex_agent_proto::api::tools`]) run for the
//! daemon: through a running container's helper (an exec), or in a short-lived VM booted
//! on a stopped container's own disks while its lock is held.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use apex_runtime::sandbox::{Sandbox, SandboxConfig};
use apex_shim::proto::{self, ExecSpec, Request};
use apex_shim::stream::{read_frame, write_frame, Exit, Frame, Kind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::Containers;
use crate::error::{Error, Result};
use crate::store::ContainerState;

/// How much of a tool's stderr is kept for the error message.
pub(crate) const MAX_STDERR: usize = 16 * 1024;
/// Boot watchdog of the VM that serves a stopped container.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// A byte stream out of the guest.
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
pub(crate) type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// A tool process: its streams, and its exit code with its stderr once it ends.
pub(crate) struct ToolRun {
    pub(crate) stdin: Option<Writer>,
    pub(crate) stdout: Reader,
    pub(crate) done: oneshot::Receiver<(i32, String)>,
}

impl ToolRun {
    pub(crate) async fn finish(self) -> (i32, String) {
        drop(self.stdin);
        self.done
            .await
            .unwrap_or((255, "the copy was interrupted".into()))
    }
}

/// A reader that signals once when dropped: tells the task holding a VM that its output
/// was read.
struct NotifyOnDrop<R> {
    inner: R,
    tx: Option<oneshot::Sender<()>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for NotifyOnDrop<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<R> Drop for NotifyOnDrop<R> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(());
        }
    }
}

impl Containers {
    /// Runs a tool in the container: through its helper if it runs, else in a VM of its
    /// own until the tool's output has been read.
    pub(crate) async fn run_tool(
        self: &Arc<Self>,
        what: &str,
        args: Vec<String>,
        stdin: bool,
    ) -> Result<ToolRun> {
        self.run_tool_in(what, args, stdin, None).await
    }

    /// [`Containers::run_tool`] chrooted in the guest directory `rootfs` (see
    /// [`apex_runtime::sandbox::Sandbox::spawn_tool_in`]).
    pub(crate) async fn run_tool_in(
        self: &Arc<Self>,
        what: &str,
        args: Vec<String>,
        stdin: bool,
        rootfs: Option<String>,
    ) -> Result<ToolRun> {
        let id = self.resolve(what)?.id;
        let lock = self.lock_of(&id);
        let guard = lock.lock_owned().await;
        let rec = self.resolve(&id)?;
        if rec.state == ContainerState::Running {
            drop(guard);
            return self.tool_in_helper(&rec.id, args, stdin, rootfs).await;
        }
        let fs = self.filesystem(&rec);
        let cfg = SandboxConfig {
            home: self.home().to_path_buf(),
            fs,
            hostname: rec.name.clone(),
            cpus: 1,
            memory_mib: 256,
            boot_timeout: BOOT_TIMEOUT,
            nics: vec![],
        };
        let t0 = std::time::Instant::now();
        let sb = Sandbox::boot(cfg).await.map_err(|e| {
            Error::internal(format!("cannot open the container's filesystem: {e:#}"))
        })?;
        let prepared = async {
            sb.mount_filesystems().await?;
            sb.spawn_tool_in(args, stdin, rootfs).await
        }
        .await;
        let proc = match prepared {
            Ok(p) => p,
            Err(e) => {
                sb.shutdown(true).await;
                return Err(Error::internal(format!("{e:#}")));
            }
        };
        tracing::debug!(id = &id[..12], elapsed = ?t0.elapsed(), "copy VM ready");
        let (done_tx, done) = oneshot::channel();
        let (read_tx, read_rx) = oneshot::channel();
        let stdout = NotifyOnDrop {
            inner: proc.stdout,
            tx: Some(read_tx),
        };
        let mut stderr = proc.stderr;
        let pid = proc.id;
        tokio::spawn(async move {
            let _held = guard;
            let mut err = Vec::new();
            if let Some(s) = stderr.as_mut() {
                let _ = s.take(MAX_STDERR as u64).read_to_end(&mut err).await;
            }
            let code = match sb.agent().wait_process(&pid).await {
                Ok(st) => st.exit_code,
                Err(e) => {
                    err.extend_from_slice(e.to_string().as_bytes());
                    255
                }
            };
            let _ = done_tx.send((code, String::from_utf8_lossy(&err).into_owned()));
            // Everything the tool wrote must be read before its VM goes.
            let _ = read_rx.await;
            sb.shutdown(true).await;
        });
        Ok(ToolRun {
            stdin: proc.stdin.map(|s| Box::pin(s) as Writer),
            stdout: Box::pin(stdout),
            done,
        })
    }

    /// Runs a tool as an exec of the running container's helper, turning its frames
    /// back into streams.
    async fn tool_in_helper(
        &self,
        id: &str,
        args: Vec<String>,
        stdin: bool,
        rootfs: Option<String>,
    ) -> Result<ToolRun> {
        let spec = ExecSpec {
            args,
            stdin,
            tool: true,
            rootfs,
            ..Default::default()
        };
        let sock = self.bundle(id).socket();
        let (_, conn) = proto::call(&sock, &Request::Exec(spec))
            .await
            .map_err(|e| Error::conflict(format!("{e}")))?;
        let (mut rd, mut wr) = conn.into_split();
        let (out_w, out_r) = tokio::io::duplex(256 * 1024);
        let (done_tx, done) = oneshot::channel();
        tokio::spawn(async move {
            let mut out_w = Some(out_w);
            let mut err = String::new();
            let res = loop {
                match read_frame(&mut rd).await {
                    Ok(Some(f)) => match f.kind {
                        Kind::Stdout => {
                            if let Some(w) = out_w.as_mut() {
                                if w.write_all(&f.payload).await.is_err() {
                                    out_w = None; // the reader went away
                                }
                            }
                        }
                        Kind::Stderr if err.len() < MAX_STDERR => {
                            err.push_str(&String::from_utf8_lossy(&f.payload));
                        }
                        Kind::Exit => {
                            let exit: Exit = f.parse().unwrap_or_default();
                            if let Some(e) = exit.error {
                                err.push_str(&e);
                            }
                            break exit.exit_code;
                        }
                        _ => {}
                    },
                    Ok(None) | Err(_) => {
                        err.push_str("the container helper closed the connection");
                        break 255;
                    }
                }
            };
            drop(out_w);
            let _ = done_tx.send((res, err));
        });
        let stdin_writer = if stdin {
            let (in_w, mut in_r) = tokio::io::duplex(256 * 1024);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match in_r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let f = Frame::new(Kind::Stdin, buf[..n].to_vec());
                            if write_frame(&mut wr, &f).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                // The tool reads EOF; dropping `wr` then only ends the helper's input loop.
                let _ = write_frame(&mut wr, &Frame::new(Kind::CloseStdin, Vec::new())).await;
            });
            Some(Box::pin(in_w) as Writer)
        } else {
            None
        };
        Ok(ToolRun {
            stdin: stdin_writer,
            stdout: Box::pin(out_r),
            done,
        })
    }
}
