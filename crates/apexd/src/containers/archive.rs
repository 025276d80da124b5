//! Copying files in and out of containers (`apex cp`, `docker cp`).
//!
//! The work is done in the guest by the agent's archive tools
//! ([`apex_agent_proto::api::tools`]), chrooted in the container root, so paths resolve
//! exactly as the container sees them, volumes and bind mounts included. A running
//! container runs the tool through its helper (an exec); a stopped or created one gets
//! a short-lived VM booted on its own disks, held under the container's lock so that
//! nothing starts it meanwhile. Guest-written filesystems are never mounted on the host.

use std::sync::Arc;

use apex_agent_proto::api::{tools, PathStat};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};

use super::tools::{Reader, ToolRun, MAX_STDERR};
use crate::containers::Containers;
use crate::error::{Error, Result};

/// The longest stat line `archive-get` may send before its tar.
const MAX_STAT_LINE: usize = 64 * 1024;

/// Options of [`Containers::archive_put`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PutOptions {
    /// Keep the tar's owners (else files belong to root).
    pub owner: bool,
    /// Refuse to replace a directory by a non-directory or back.
    pub no_overwrite_dir_non_dir: bool,
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
