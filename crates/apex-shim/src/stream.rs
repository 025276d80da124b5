//! Multiplexed stream frames between a client (apex CLI, through apexd) and the shim.
//!
//! Each frame is an 8-byte header — kind (1 byte), three zero bytes, payload length
//! (u32, big-endian) — followed by the payload. The layout is Docker's attach
//! multiplexing ("stdcopy"), extended with control kinds, so a hexdump reads the same
//! and a Docker API front end can translate it byte for byte. Hand-written because it is
//! eight bytes of header; no crate implements this exact framing.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload accepted (a hostile length is refused before allocating).
pub const MAX_PAYLOAD: u32 = 4 << 20;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Client → process stdin bytes.
    Stdin = 0,
    /// Process stdout (or the terminal) bytes.
    Stdout = 1,
    /// Process stderr bytes.
    Stderr = 2,
    /// The process ended: JSON [`Exit`]. Last frame of a stream.
    Exit = 3,
    /// Client → terminal size: JSON [`Resize`].
    Resize = 4,
    /// Client → close the process's stdin (no payload).
    CloseStdin = 5,
    /// Client → deliver a signal: JSON [`SignalReq`].
    Signal = 6,
    /// The process has started (no payload): the VM is up.
    Started = 7,
    /// A request to the shim: JSON [`crate::proto::Request`].
    Request = 8,
    /// The shim's answer: JSON [`crate::proto::Response`].
    Response = 9,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Stdin,
            1 => Kind::Stdout,
            2 => Kind::Stderr,
            3 => Kind::Exit,
            4 => Kind::Resize,
            5 => Kind::CloseStdin,
            6 => Kind::Signal,
            7 => Kind::Started,
            8 => Kind::Request,
            9 => Kind::Response,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Its kind.
    pub kind: Kind,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame with a raw payload.
    pub fn new(kind: Kind, payload: impl Into<Vec<u8>>) -> Self {
        Frame {
            kind,
            payload: payload.into(),
        }
    }

    /// A frame whose payload is `value` as JSON.
    pub fn json<T: Serialize>(kind: Kind, value: &T) -> Self {
        Frame::new(kind, serde_json::to_vec(value).expect("serializable"))
    }

    /// Decodes the JSON payload.
    pub fn parse<T: for<'de> Deserialize<'de>>(&self) -> std::io::Result<T> {
        serde_json::from_slice(&self.payload).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad {:?} frame: {e}", self.kind),
            )
        })
    }
}

/// How a process ended (the [`Kind::Exit`] payload).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Exit code, docker-style (128 + signal when killed; 125 when apex failed).
    pub exit_code: i32,
    /// Why, when it was not the process's own doing (VM died, boot failed, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Set when the process never started; the message explains why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The [`Kind::Resize`] payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// The [`Kind::Signal`] payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalReq {
    /// Signal number.
    pub signal: i32,
}

/// Reads one frame; `None` at a clean end of stream (EOF before a header).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut hdr = [0u8; 8];
    match r.read_exact(&mut hdr[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut hdr[1..]).await?;
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let kind =
        Kind::from_u8(hdr[0]).ok_or_else(|| bad(format!("unknown frame kind {}", hdr[0])))?;
    let len = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    if len > MAX_PAYLOAD {
        return Err(bad(format!("frame of {len} bytes exceeds {MAX_PAYLOAD}")));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame { kind, payload }))
}

/// Writes one frame (header and payload in one write).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8 + f.payload.len());
    buf.push(f.kind as u8);
    buf.extend_from_slice(&[0, 0, 0]);
    buf.extend_from_slice(&(f.payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&f.payload);
    w.write_all(&buf).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_eof() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let frames = [
            Frame::new(Kind::Stdout, b"hello".to_vec()),
            Frame::json(
                Kind::Exit,
                &Exit {
                    exit_code: 3,
                    ..Default::default()
                },
            ),
            Frame::new(Kind::CloseStdin, Vec::new()),
        ];
        for f in &frames {
            write_frame(&mut a, f).await.unwrap();
        }
        drop(a);
        for f in &frames {
            assert_eq!(read_frame(&mut b).await.unwrap().as_ref(), Some(f));
        }
        assert_eq!(read_frame(&mut b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn docker_stdcopy_layout() {
        let mut out = Vec::new();
        write_frame(&mut out, &Frame::new(Kind::Stderr, b"x".to_vec()))
            .await
            .unwrap();
        assert_eq!(out, [2, 0, 0, 0, 0, 0, 0, 1, b'x']);
    }

    #[tokio::test]
    async fn refuses_hostile_length_and_kind() {
        let mut r: &[u8] = &[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        let e = read_frame(&mut r).await.unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
        let mut r: &[u8] = &[42, 0, 0, 0, 0, 0, 0, 0];
        assert!(read_frame(&mut r)
            .await
            .unwrap_err()
            .to_string()
            .contains("unknown"));
        let mut r: &[u8] = &[1, 0, 0];
        assert!(read_frame(&mut r).await.is_err(), "truncated header");
    }
}
