//! An attached session (`run`, `start -a`, `exec`): this terminal's stdio and signals
//! relayed over an upgraded apexd connection carrying [`apex_shim::stream`] frames.

use std::io::IsTerminal;

use anyhow::{bail, Result};
use apex_shim::stream::{self, Exit, Frame, Kind, Resize, SignalReq};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use crate::term;

/// The signals a session forwards to the container's process.
pub const FORWARDED: [i32; 6] = [
    rustix::process::Signal::INT.as_raw(),
    rustix::process::Signal::TERM.as_raw(),
    rustix::process::Signal::HUP.as_raw(),
    rustix::process::Signal::QUIT.as_raw(),
    rustix::process::Signal::USR1.as_raw(),
    rustix::process::Signal::USR2.as_raw(),
];

/// Handlers for the forwarded signals and SIGWINCH. Install them before the container
/// can start, so a signal that arrives while the session is being set up is not lost
/// (nor kills apex with the container left behind).
pub struct Signals {
    forwarded: Vec<(i32, Signal)>,
    winch: Signal,
}

impl Signals {
    /// Installs the handlers (from then on these signals no longer kill apex).
    pub fn install() -> Result<Self> {
        let mut forwarded = Vec::new();
        for n in FORWARDED {
            forwarded.push((n, signal(SignalKind::from_raw(n))?));
        }
        Ok(Signals {
            forwarded,
            winch: signal(SignalKind::window_change())?,
        })
    }

    /// The next forwarded signal received.
    pub async fn next(&mut self) -> i32 {
        first_of(&mut self.forwarded).await
    }
}

/// Waits for the first of several signal streams; returns its number.
async fn first_of(sigs: &mut [(i32, Signal)]) -> i32 {
    let futs = sigs.iter_mut().map(|(n, s)| {
        let n = *n;
        Box::pin(async move {
            s.recv().await;
            n
        })
    });
    futures_util::future::select_all(futs).await.0
}

/// How to attach.
#[derive(Default)]
pub struct Options {
    /// Forward this process's stdin once the process runs (its EOF closes the
    /// container's stdin).
    pub stdin: bool,
    /// The process has a terminal: raw mode here, size forwarded.
    pub tty: bool,
    /// SIGINT or SIGTERM before the `Started` frame end the session with
    /// [`End::Interrupted`] instead of being forwarded (the process does not run yet).
    pub interrupt_before_start: bool,
    /// Called once when the `Started` frame arrives.
    pub on_started: Option<Box<dyn FnOnce() + Send>>,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The `Exit` frame arrived.
    Exited(Exit),
    /// A signal arrived before the process started (see
    /// [`Options::interrupt_before_start`]).
    Interrupted(i32),
}

/// The result of [`session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// How it ended.
    pub end: End,
    /// Whether the `Started` frame was seen.
    pub started: bool,
}

/// What the frame reader tells the session.
enum Event {
    Started,
    Exit(Exit),
    Lost(Option<std::io::Error>),
}

/// Relays stdio, signals and terminal size over `io` until the process exits.
pub async fn session<S>(io: S, mut opts: Options, signals: &mut Signals) -> Result<Outcome>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let _raw = (opts.tty && opts.stdin)
        .then(term::RawMode::enable)
        .flatten();

    // One writer owns the write half; everybody else sends frames to it.
    let (tx, rx) = mpsc::unbounded_channel::<Frame>();
    let writer = tokio::spawn(write_frames(wr, rx));
    let mut events = read_frames(rd, opts.tty);
    // Input is forwarded once the process runs: the helper drops what comes before.
    let mut input = None;

    let resize = |tx: &mpsc::UnboundedSender<Frame>| {
        if let Some((rows, cols)) = term::size() {
            let _ = tx.send(Frame::json(Kind::Resize, &Resize { rows, cols }));
        }
    };
    if opts.tty {
        resize(&tx);
    }

    let Signals { forwarded, winch } = signals;
    let mut started = false;
    let res = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Started) => {
                    started = true;
                    if opts.stdin && input.is_none() {
                        input = Some(tokio::spawn(forward_stdin(tx.clone())));
                    }
                    // The terminal exists now for sure: size it (again).
                    if opts.tty {
                        resize(&tx);
                    }
                    if let Some(f) = opts.on_started.take() {
                        f();
                    }
                }
                Some(Event::Exit(exit)) => break Ok(End::Exited(exit)),
                Some(Event::Lost(e)) => {
                    tracing::debug!("attach stream ended: {e:?}");
                    break Err(anyhow::anyhow!("lost connection to the container"));
                }
                None => break Err(anyhow::anyhow!("lost connection to the container")),
            },
            n = first_of(forwarded) => {
                let int_or_term = n == rustix::process::Signal::INT.as_raw()
                    || n == rustix::process::Signal::TERM.as_raw();
                if !started && opts.interrupt_before_start && int_or_term {
                    break Ok(End::Interrupted(n));
                }
                let _ = tx.send(Frame::json(Kind::Signal, &SignalReq { signal: n }));
            }
            _ = winch.recv() => {
                if opts.tty {
                    resize(&tx);
                }
            }
        }
    };
    if let Some(i) = input {
        i.abort();
    }
    drop(tx);
    writer.abort();
    events.close();
    Ok(Outcome { end: res?, started })
}

async fn write_frames<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::UnboundedReceiver<Frame>) {
    while let Some(f) = rx.recv().await {
        if let Err(e) = stream::write_frame(&mut w, &f).await {
            tracing::debug!("attach stream write: {e}");
            break;
        }
    }
}

/// Reads frames, writing output here as it comes; control events go to the session.
fn read_frames<R>(mut rd: R, tty: bool) -> mpsc::UnboundedReceiver<Event>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        let mut err = tokio::io::stderr();
        loop {
            let f = match stream::read_frame(&mut rd).await {
                Ok(Some(f)) => f,
                Ok(None) => {
                    let _ = tx.send(Event::Lost(None));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Event::Lost(Some(e)));
                    return;
                }
            };
            match f.kind {
                Kind::Stdout => {
                    // A closed stdout here (`apex run ... | head`) must not end the session.
                    let _ = out.write_all(&f.payload).await;
                    let _ = out.flush().await;
                }
                Kind::Stderr if !tty => {
                    let _ = err.write_all(&f.payload).await;
                    let _ = err.flush().await;
                }
                Kind::Stderr => {
                    let _ = out.write_all(&f.payload).await;
                    let _ = out.flush().await;
                }
                Kind::Started => {
                    let _ = tx.send(Event::Started);
                }
                Kind::Exit => {
                    let ev = match f.parse::<Exit>() {
                        Ok(exit) => Event::Exit(exit),
                        Err(e) => Event::Lost(Some(e)),
                    };
                    let _ = tx.send(ev);
                    return;
                }
                k => tracing::debug!("ignoring {k:?} frame"),
            }
        }
    });
    rx
}

/// This process's stdin as `Stdin` frames, then `CloseStdin` at its end.
async fn forward_stdin(tx: mpsc::UnboundedSender<Frame>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(Frame::new(Kind::Stdin, &buf[..n])).is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Frame::new(Kind::CloseStdin, Vec::new()));
}

/// Refuses `-t` with `-i` when stdin is not a terminal (docker's message).
pub fn check_tty(tty: bool, interactive: bool) -> Result<()> {
    if tty && interactive && !std::io::stdin().is_terminal() {
        bail!("the input device is not a TTY: drop -t, or run from a terminal");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> Exit {
        Exit {
            exit_code: code,
            ..Default::default()
        }
    }

    /// A fake daemon end of the stream that sends `frames`, then records what the
    /// client sent until it closes.
    async fn fake(
        frames: Vec<Frame>,
        close_early: bool,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<Vec<Frame>>) {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let h = tokio::spawn(async move {
            for f in &frames {
                stream::write_frame(&mut server, f).await.unwrap();
            }
            if close_early {
                return Vec::new();
            }
            let mut got = Vec::new();
            while let Ok(Some(f)) = stream::read_frame(&mut server).await {
                got.push(f);
            }
            got
        });
        (client, h)
    }

    #[tokio::test]
    async fn exit_frame_ends_the_session() {
        let (io, _h) = fake(
            vec![
                Frame::new(Kind::Started, Vec::new()),
                Frame::json(Kind::Exit, &exit(3)),
            ],
            false,
        )
        .await;
        let mut sigs = Signals::install().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = session(
            io,
            Options {
                on_started: Some(Box::new(move || tx.send(()).unwrap())),
                ..Default::default()
            },
            &mut sigs,
        )
        .await
        .unwrap();
        assert_eq!(out.end, End::Exited(exit(3)));
        assert!(out.started);
        rx.try_recv().expect("on_started called");
    }

    #[tokio::test]
    async fn a_stream_without_exit_is_a_lost_connection() {
        let (io, _h) = fake(vec![Frame::new(Kind::Started, Vec::new())], true).await;
        let mut sigs = Signals::install().unwrap();
        let err = session(io, Options::default(), &mut sigs)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "lost connection to the container");
    }
}
