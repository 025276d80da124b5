//! Host side of the hybrid-vsock protocol spoken by `vhost-device-vsock`
//! (Firecracker style): connect to the backend's unix socket, send `CONNECT <port>\n`,
//! read `OK <host port>\n`; from then on the stream is the guest connection.

use super::VmError;
use std::io;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// First per-attempt reply timeout; doubled (up to [`MAX_ATTEMPT`]) after each
/// attempt that got no reply, so a slow guest under load is not cut off forever.
pub(crate) const FIRST_ATTEMPT: Duration = Duration::from_millis(500);
const MAX_ATTEMPT: Duration = Duration::from_secs(4);
/// Pause between attempts (doubling, capped): the guest may simply not listen yet.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(100);
/// How often a pending attempt checks whether the VM died.
pub(crate) const DEATH_POLL: Duration = Duration::from_millis(50);

/// One `CONNECT` handshake. Reads the reply byte by byte so no guest data that
/// follows the `OK` line is consumed.
pub async fn handshake(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut line = Vec::with_capacity(16);
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before OK (guest not listening yet?)",
            ));
        }
        match b[0] {
            b'\n' => break,
            c if line.len() < 64 => line.push(c),
            _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "overlong reply")),
        }
    }
    if line.starts_with(b"OK ") {
        Ok(s)
    } else {
        let reply = String::from_utf8_lossy(&line);
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected reply {reply:?}"),
        ))
    }
}

/// Retries [`handshake`] until it succeeds or `timeout` elapses. `dead` is checked
/// before every attempt; when it reports an error (VM exited) that error is returned
/// at once.
pub async fn connect_retry(
    uds: &Path,
    port: u32,
    timeout: Duration,
    dead: impl Fn() -> Option<VmError>,
) -> Result<UnixStream, VmError> {
    let deadline = Instant::now() + timeout;
    let mut attempt_timeout = FIRST_ATTEMPT;
    let mut backoff = FIRST_BACKOFF;
    let mut last_error = String::from("no attempt made");
    loop {
        if let Some(e) = dead() {
            return Err(e);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(VmError::ConnectTimeout {
                port,
                timeout,
                last_error,
            });
        }
        let per = attempt_timeout.min(left);
        let attempt = tokio::time::timeout(per, handshake(uds, port));
        tokio::pin!(attempt);
        // A pending attempt must not hide a dead VM for up to MAX_ATTEMPT.
        let result = loop {
            tokio::select! {
                r = &mut attempt => break r,
                () = tokio::time::sleep(DEATH_POLL) => {
                    if let Some(e) = dead() {
                        return Err(e);
                    }
                }
            }
        };
        match result {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => {
                last_error = format!("no reply to CONNECT within {per:?}");
                attempt_timeout = (attempt_timeout * 2).min(MAX_ATTEMPT);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(backoff.min(left)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake backend: refuses the first `refuse` connections (closes them), then
    /// answers OK and immediately sends guest data in the same write.
    async fn fake_backend(l: UnixListener, refuse: usize) {
        for i in 0.. {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"CONNECT 1024\n");
            if i >= refuse {
                s.write_all(b"OK 1073741824\nhello").await.unwrap();
                let mut echo = [0u8; 4];
                s.read_exact(&mut echo).await.unwrap();
                assert_eq!(&echo, b"ping");
                return;
            }
        }
    }

    #[tokio::test]
    async fn retries_then_keeps_trailing_data() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let backend = tokio::spawn(fake_backend(UnixListener::bind(&uds).unwrap(), 3));
        let mut s = connect_retry(&uds, 1024, Duration::from_secs(5), || None)
            .await
            .unwrap();
        let mut hello = [0u8; 5];
        s.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
        s.write_all(b"ping").await.unwrap();
        backend.await.unwrap();
    }

    #[tokio::test]
    async fn times_out_and_reports_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("missing.sock");
        let t0 = std::time::Instant::now();
        let err = connect_retry(&uds, 7, Duration::from_millis(300), || None)
            .await
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2));
        match err {
            VmError::ConnectTimeout {
                port: 7,
                last_error,
                ..
            } => {
                assert!(last_error.contains("No such file"), "{last_error}")
            }
            e => panic!("unexpected {e}"),
        }
    }

    #[tokio::test]
    async fn silent_backend_and_dead_vm() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let _l = UnixListener::bind(&uds).unwrap(); // accepts (backlog) but never answers
        let err = connect_retry(&uds, 1, Duration::from_millis(700), || None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no reply"), "{err}");

        let err = connect_retry(&uds, 1, Duration::from_secs(30), || {
            Some(VmError::Io(io::Error::other("vm gone")))
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("vm gone"));
    }
}
