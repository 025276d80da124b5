//! Docker's hijacked streams (`attach`, `exec start`): the HTTP connection is upgraded
//! (`Upgrade: tcp`) and then carries raw bytes. Output is multiplexed with Docker's
//! 8-byte stream headers unless the process has a terminal; input is always raw.
//!
//! The helper's stream frames use the same 8-byte header for stdout and stderr, so
//! output frames pass through as they are; control frames (started, exit) stay here.

use apex_shim::stream::{read_frame, write_frame, Exit, Frame, Kind};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::DockerError;

/// What a client asked to see of a process's streams.
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    /// Forward the client's bytes to stdin.
    pub stdin: bool,
    /// Send stdout.
    pub stdout: bool,
    /// Send stderr.
    pub stderr: bool,
    /// The process has a terminal: raw output, no headers.
    pub tty: bool,
}

/// Whether the client asked to upgrade the connection.
pub fn wants_upgrade(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"))
}

/// Answers 101 and hands the upgraded connection to `run`.
pub fn hijack<F, Fut>(mut req: Request, tty: bool, run: F) -> Result<Response, DockerError>
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    if !wants_upgrade(&req) {
        return Err(DockerError::bad_request(
            "this endpoint needs a hijacked connection: send `Connection: Upgrade` and `Upgrade: tcp`",
        ));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => run(TokioIo::new(up)).await,
            Err(e) => tracing::warn!("docker api: upgrade failed: {e}"),
        }
    });
    let content_type = if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::empty())
        .expect("valid response"))
}

/// One output chunk as the client wants it: a stdcopy frame, or raw with a terminal.
pub fn encode(kind: Kind, payload: &[u8], tty: bool) -> Vec<u8> {
    if tty {
        return payload.to_vec();
    }
    let mut out = Vec::with_capacity(8 + payload.len());
    out.push(kind as u8);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Relays between a hijacked client and a helper stream (attach or exec) until the
/// process exits or either side goes away. `control` injects frames toward the helper
/// (resizes). `on_exit` gets the exit (`None` when a side went away) before the client's
/// stream closes, so a client that inspects right after sees it recorded.
pub async fn relay<C>(
    client: C,
    shim: UnixStream,
    want: Wanted,
    mut control: Option<mpsc::Receiver<Frame>>,
    on_exit: impl FnOnce(Option<Exit>),
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut c_rd, mut c_wr) = tokio::io::split(client);
    let (mut s_rd, mut s_wr) = shim.into_split();
    let (to_shim, mut from_client) = mpsc::channel::<Frame>(64);
    // Client bytes (and injected control frames) become helper frames.
    let input = {
        let to_shim = to_shim.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match c_rd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        if want.stdin {
                            let _ = to_shim.send(Frame::new(Kind::CloseStdin, vec![])).await;
                        }
                        return;
                    }
                    Ok(n) if want.stdin => {
                        if to_shim
                            .send(Frame::new(Kind::Stdin, buf[..n].to_vec()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                }
            }
        })
    };
    let controls = tokio::spawn(async move {
        if let Some(rx) = control.as_mut() {
            while let Some(f) = rx.recv().await {
                if to_shim.send(f).await.is_err() {
                    return;
                }
            }
        }
    });
    // Input is held until the process runs: the helper drops what comes before (a
    // Docker client writes stdin as soon as it is attached, before the VM has booted).
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        if started_rx.await.is_err() {
            return;
        }
        while let Some(f) = from_client.recv().await {
            if write_frame(&mut s_wr, &f).await.is_err() {
                return;
            }
        }
    });
    let mut started_tx = Some(started_tx);
    let exit = loop {
        match read_frame(&mut s_rd).await {
            Ok(Some(f)) => match f.kind {
                Kind::Stdout | Kind::Stderr => {
                    let shown = match f.kind {
                        Kind::Stdout => want.stdout,
                        _ => want.stderr,
                    };
                    if shown
                        && c_wr
                            .write_all(&encode(f.kind, &f.payload, want.tty))
                            .await
                            .is_err()
                    {
                        break None;
                    }
                }
                Kind::Exit => break f.parse::<Exit>().ok(),
                Kind::Started => {
                    if let Some(tx) = started_tx.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            },
            Ok(None) | Err(_) => break None,
        }
    };
    let _ = c_wr.flush().await;
    on_exit(exit);
    let _ = c_wr.shutdown().await;
    input.abort();
    controls.abort();
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdcopy_frames() {
        assert_eq!(
            encode(Kind::Stderr, b"hi", false),
            [2, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']
        );
        assert_eq!(encode(Kind::Stdout, b"hi", true), b"hi");
    }

    #[tokio::test]
    async fn relays_output_input_and_the_exit() {
        let (client, mut peer) = tokio::io::duplex(4096);
        let (shim_here, mut shim_there) = UnixStream::pair().unwrap();
        let want = Wanted {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: false,
        };
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(relay(client, shim_here, want, None, |e| {
            let _ = exit_tx.send(e.map(|e| e.exit_code));
        }));
        peer.write_all(b"early").await.unwrap();
        write_frame(&mut shim_there, &Frame::new(Kind::Started, vec![]))
            .await
            .unwrap();
        write_frame(&mut shim_there, &Frame::new(Kind::Stdout, b"out".to_vec()))
            .await
            .unwrap();
        write_frame(&mut shim_there, &Frame::new(Kind::Stderr, b"err".to_vec()))
            .await
            .unwrap();
        peer.write_all(b"in").await.unwrap();
        // Input written before the start is held, not lost.
        let mut got = Vec::new();
        while got.len() < 7 {
            let f = read_frame(&mut shim_there).await.unwrap().unwrap();
            assert_eq!(f.kind, Kind::Stdin);
            got.extend(f.payload);
        }
        assert_eq!(got, b"earlyin");
        let exit = Exit {
            exit_code: 3,
            reason: None,
            error: None,
        };
        write_frame(&mut shim_there, &Frame::json(Kind::Exit, &exit))
            .await
            .unwrap();
        // The exit is known before the client's stream ends.
        assert_eq!(exit_rx.await.unwrap(), Some(3));
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got,
            encode(Kind::Stdout, b"out", false),
            "stderr was not asked for"
        );
        task.await.unwrap();
    }
}
