//! Copying files in and out of containers (`apex cp`, and later `docker cp`).
//!
//! The work is done in the guest by the agent's archive tools
//! ([`apex_agent_proto::api::tools`]), chrooted in the container root, so paths resolve
//! exactly as the container sees them, volumes and bind mounts included. A running
//! container runs the tool through its helper (an exec); a stopped or created one gets
//! a short-lived VM booted on its own disks, held under the container's lock so that
//! nothing starts it meanwhile. Guest-written filesystems are never mounted on the host.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use apex_agent_proto::api::{tools, PathStat};
use apex_runtime::sandbox::{Sandbox, SandboxConfig};
use apex_shim::proto::{self, ExecSpec, Request};
use apex_shim::stream::{read_frame, write_frame, Exit, Frame, Kind};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

use crate::containers::Containers;
use crate::error::{Error, Result};
use crate::store::ContainerState;

/// How much of a tool's stderr is kept for the error message.
const MAX_STDERR: usize = 16 * 1024;
/// The longest stat line `archive-get` may send before its tar.
const MAX_STAT_LINE: usize = 64 * 1024;
/// Boot watchdog of the VM that serves a stopped container.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// A byte stream out of the guest.
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// A tool process: its streams, and its exit code with its stderr once it ends.
struct ToolRun {
    stdin: Option<Writer>,
    stdout: Reader,
    done: oneshot::Receiver<(i32, String)>,
}

impl ToolRun {
    async fn finish(self) -> (i32, String) {
        drop(self.stdin);
        self.done
            .await
            .unwrap_or((255, "the copy was interrupted".into()))
    }
}

/// Options of [`Containers::archive_put`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PutOptions {
    /// Keep the tar's owners (else files belong to root).
    pub owner: bool,
    /// Refuse to replace a directory by a non-directory or back.
    pub no_overwrite_dir_non_dir: bool,
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

fn tool_error(code: i32, stderr: &str, path: &str, container: &str) -> Error {
    let msg = stderr.trim();
    match code {
        tools::EXIT_NOT_FOUND => Error::not_found(format!(
            "Could not find the file {path} in container {container}"
        )),
        tools::EXIT_NOT_DIR => Error::bad_request("extraction point is not a directory"),
        _ if msg.contains("Read-only file system") => Error::new(
            crate::error::ErrorKind::Forbidden,
            format!("{path}: read-only file system"),
        ),
        _ if msg.is_empty() => Error::internal(format!("copy failed (exit code {code})")),
        _ => Error::internal(msg.to_string()),
    }
}

impl Containers {
    /// Runs a tool in the container: through its helper if it runs, else in a VM of its
    /// own until the tool's output has been read.
    async fn run_tool(
        self: &Arc<Self>,
        what: &str,
        args: Vec<String>,
        stdin: bool,
    ) -> Result<ToolRun> {
        let id = self.resolve(what)?.id;
        let lock = self.lock_of(&id);
        let guard = lock.lock_owned().await;
        let rec = self.resolve(&id)?;
        if rec.state == ContainerState::Running {
            drop(guard);
            return self.tool_in_helper(&rec.id, args, stdin).await;
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
            sb.spawn_tool(args, stdin).await
        }
        .await;
        let proc = match prepared {
            Ok(p) => p,
            Err(e) => {
                sb.shutdown().await;
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
            sb.shutdown().await;
        });
        Ok(ToolRun {
            stdin: proc.stdin.map(|s| Box::pin(s) as Writer),
            stdout: Box::pin(stdout),
            done,
        })
    }

    /// Runs a tool as an exec of the running container's helper, turning its frames
    /// back into streams.
    async fn tool_in_helper(&self, id: &str, args: Vec<String>, stdin: bool) -> Result<ToolRun> {
        let spec = ExecSpec {
            args,
            stdin,
            tool: true,
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

    /// `HEAD .../archive`: what is at `path` in the container.
    pub async fn archive_stat(self: &Arc<Self>, what: &str, path: &str) -> Result<PathStat> {
        let name = self.resolve(what)?.name;
        let mut run = self
            .run_tool(what, vec![tools::STAT.into(), path.into()], false)
            .await?;
        let mut out = Vec::new();
        let _ = (&mut run.stdout)
            .take(MAX_STAT_LINE as u64)
            .read_to_end(&mut out)
            .await;
        let (code, err) = run.finish().await;
        if code != 0 {
            return Err(tool_error(code, &err, path, &name));
        }
        serde_json::from_slice(&out)
            .map_err(|e| Error::internal(format!("bad stat from the guest: {e}")))
    }

    /// `GET .../archive`: the stat of `path` and a tar of it.
    pub async fn archive_get(
        self: &Arc<Self>,
        what: &str,
        path: &str,
    ) -> Result<(PathStat, Reader)> {
        let name = self.resolve(what)?.name;
        let run = self
            .run_tool(what, vec![tools::ARCHIVE_GET.into(), path.into()], false)
            .await?;
        let ToolRun { stdout, done, .. } = run;
        let mut reader = BufReader::with_capacity(256 * 1024, stdout);
        let mut line = Vec::new();
        let n = (&mut reader)
            .take(MAX_STAT_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
            .unwrap_or(0);
        if n == 0 || !line.ends_with(b"\n") {
            let (code, err) = done
                .await
                .unwrap_or((255, "the copy was interrupted".into()));
            return Err(tool_error(code.max(1), &err, path, &name));
        }
        let stat: PathStat = serde_json::from_slice(&line)
            .map_err(|e| Error::internal(format!("bad stat from the guest: {e}")))?;
        tokio::spawn(async move {
            if let Ok((code, err)) = done.await {
                if code != 0 {
                    tracing::warn!(
                        code,
                        "archive of a container path failed midway: {}",
                        err.trim()
                    );
                }
            }
        });
        Ok((stat, Box::pin(reader)))
    }

    /// `PUT .../archive`: extracts the tar `body` into the directory `path`.
    pub async fn archive_put(
        self: &Arc<Self>,
        what: &str,
        path: &str,
        mut body: impl AsyncRead + Unpin,
        opts: PutOptions,
    ) -> Result<()> {
        let rec = self.resolve(what)?;
        let mut args = vec![tools::ARCHIVE_PUT.to_string()];
        if opts.owner {
            args.push(tools::OPT_OWNER.into());
        }
        if opts.no_overwrite_dir_non_dir {
            args.push(tools::OPT_NO_OVERWRITE_DIR_NON_DIR.into());
        }
        args.push(path.into());
        let mut run = self.run_tool(what, args, true).await?;
        let mut stdin = run
            .stdin
            .take()
            .ok_or_else(|| Error::internal("no stdin"))?;
        let copied = tokio::io::copy(&mut body, &mut stdin).await;
        let _ = stdin.shutdown().await;
        drop(stdin);
        // Drain stdout (unused) so the tool never blocks on it.
        let mut sink = Vec::new();
        let _ = (&mut run.stdout)
            .take(MAX_STDERR as u64)
            .read_to_end(&mut sink)
            .await;
        let (code, err) = run.finish().await;
        if code != 0 {
            return Err(tool_error(code, &err, path, &rec.name));
        }
        copied.map_err(|e| Error::bad_request(format!("reading the archive: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn tool_errors_read_like_docker() {
        let e = tool_error(tools::EXIT_NOT_FOUND, "x: No such file", "/x", "web");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.message(), "Could not find the file /x in container web");
        assert_eq!(
            tool_error(tools::EXIT_NOT_DIR, "", "/f", "w").kind(),
            ErrorKind::BadRequest
        );
        let ro = tool_error(
            1,
            "failed to unpack: Read-only file system (os error 30)",
            "/",
            "w",
        );
        assert_eq!(ro.kind(), ErrorKind::Forbidden);
        assert!(tool_error(1, "", "/", "w")
            .message()
            .contains("exit code 1"));
    }
}
