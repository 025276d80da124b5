//! Frame codec: a 4-byte big-endian payload length, then the payload (one UTF-8 JSON message).
//!
//! ```text
//! 00 00 00 1b  {"jsonrpc":"2.0","id":1,...}
//! ```
//!
//! Lengths of zero or above [`MAX_FRAME`] are rejected as soon as the header is read, before
//! any payload buffer is allocated. Blocking helpers ([`read_frame`], [`write_frame`]) work on
//! `std::io`; [`FrameDecoder`] is a pure push/pop decoder for non-blocking use and fuzzing;
//! `read_frame_async`/`write_frame_async` need the `async` feature.

use std::io::{self, Read, Write};

/// Largest accepted payload length in bytes (the 4-byte header is not counted).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Size of the length header in bytes.
pub const HEADER_LEN: usize = 4;

/// Initial payload buffer size when reading from a stream; the buffer grows only as bytes
/// actually arrive, so a peer that announces a large frame and then stalls costs little.
const READ_CHUNK: usize = 64 * 1024;

/// Errors from encoding or decoding frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying stream failed.
    #[error("frame I/O error: {0}")]
    Io(#[from] io::Error),
    /// A header announced (or a caller tried to send) more than [`MAX_FRAME`] bytes.
    #[error("frame length {len} exceeds maximum of {MAX_FRAME} bytes")]
    TooLarge {
        /// The offending length.
        len: usize,
    },
    /// A header announced (or a caller tried to send) an empty payload.
    #[error("zero-length frame")]
    Empty,
    /// The stream ended inside a frame.
    #[error("stream ended mid-frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes needed to complete the header or payload being read.
        expected: usize,
        /// Bytes received before EOF.
        got: usize,
    },
}

/// Checks a payload length against the protocol limits.
fn check_len(len: usize) -> Result<(), FrameError> {
    if len == 0 {
        Err(FrameError::Empty)
    } else if len > MAX_FRAME {
        Err(FrameError::TooLarge { len })
    } else {
        Ok(())
    }
}

/// Returns the 4-byte header for `payload`, validating its length.
fn header_for(payload: &[u8]) -> Result<[u8; HEADER_LEN], FrameError> {
    check_len(payload.len())?;
    // check_len bounds the length by MAX_FRAME, which fits in u32.
    Ok((payload.len() as u32).to_be_bytes())
}

/// Decodes a header into a validated payload length.
fn parse_header(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    check_len(len)?;
    Ok(len)
}

/// Returns `payload` with its length header prepended.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let header = header_for(payload)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Writes one frame and flushes `w`.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    let header = header_for(payload)?;
    w.write_all(&header)?;
    w.write_all(payload)?;
    w.flush()?;
    Ok(())
}

/// Reads up to `buf.len()` bytes, stopping early only at EOF; returns the count read.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one frame's payload.
///
/// Returns `Ok(None)` on a clean EOF before the first header byte, and
/// [`FrameError::Truncated`] if the stream ends inside a header or payload.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match read_full(r, &mut header)? {
        0 => return Ok(None),
        HEADER_LEN => {}
        got => {
            return Err(FrameError::Truncated {
                expected: HEADER_LEN,
                got,
            })
        }
    }
    let len = parse_header(header)?;
    let mut payload = Vec::with_capacity(len.min(READ_CHUNK));
    let got = r.take(len as u64).read_to_end(&mut payload)?;
    if got != len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    Ok(Some(payload))
}

/// Incremental frame decoder: [`push`](Self::push) bytes as they arrive, then call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`.
///
/// After an invalid header the stream cannot be resynchronised: the decoder is poisoned,
/// drops its buffer, ignores further input and keeps returning the same error.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of unconsumed data in `buf`.
    pos: usize,
    /// The bad header length that poisoned the decoder, if any.
    poisoned: Option<usize>,
}

impl FrameDecoder {
    /// Creates an empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes. Ignored once the decoder is poisoned.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.poisoned.is_some() {
            return;
        }
        // Reclaim consumed space before growing.
        if self.pos > 0 && (self.pos == self.buf.len() || self.pos >= self.buf.len() / 2) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Pops the next complete frame's payload, `Ok(None)` if more bytes are needed.
    ///
    /// A bad length is reported as soon as its 4-byte header is complete, without waiting
    /// for (or buffering) the payload.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(len) = self.poisoned {
            return Err(check_len(len).expect_err("poisoned by an invalid length"));
        }
        let avail = &self.buf[self.pos..];
        let Some(header) = avail.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = match parse_header(*header) {
            Ok(len) => len,
            Err(e) => {
                self.poisoned = Some(u32::from_be_bytes(*header) as usize);
                self.buf = Vec::new();
                self.pos = 0;
                return Err(e);
            }
        };
        let Some(payload) = avail.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let payload = payload.to_vec();
        self.pos += HEADER_LEN + len;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        Ok(Some(payload))
    }

    /// Number of buffered bytes not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Call at end of stream: errors if a partial frame is left over (or the decoder is
    /// poisoned), `Ok(())` at a clean frame boundary. Pop remaining frames first.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(len) = self.poisoned {
            return Err(check_len(len).expect_err("poisoned by an invalid length"));
        }
        let avail = &self.buf[self.pos..];
        match avail.first_chunk::<HEADER_LEN>() {
            None if avail.is_empty() => Ok(()),
            None => Err(FrameError::Truncated {
                expected: HEADER_LEN,
                got: avail.len(),
            }),
            Some(header) => Err(FrameError::Truncated {
                expected: u32::from_be_bytes(*header) as usize,
                got: avail.len() - HEADER_LEN,
            }),
        }
    }
}

#[cfg(feature = "async")]
mod async_io {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Async [`write_frame`](super::write_frame): writes one frame and flushes `w`.
    pub async fn write_frame_async<W: AsyncWrite + Unpin + ?Sized>(
        w: &mut W,
        payload: &[u8],
    ) -> Result<(), FrameError> {
        let header = header_for(payload)?;
        w.write_all(&header).await?;
        w.write_all(payload).await?;
        w.flush().await?;
        Ok(())
    }

    /// Async [`read_frame`](super::read_frame): `Ok(None)` on clean EOF at a frame boundary.
    ///
    /// Not cancel-safe: dropping the future mid-frame loses stream sync.
    pub async fn read_frame_async<R: AsyncRead + Unpin + ?Sized>(
        r: &mut R,
    ) -> Result<Option<Vec<u8>>, FrameError> {
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match r.read(&mut header[got..]).await? {
                0 if got == 0 => return Ok(None),
                0 => {
                    return Err(FrameError::Truncated {
                        expected: HEADER_LEN,
                        got,
                    })
                }
                n => got += n,
            }
        }
        let len = parse_header(header)?;
        let mut payload = Vec::with_capacity(len.min(READ_CHUNK));
        let got = (&mut *r).take(len as u64).read_to_end(&mut payload).await?;
        if got != len {
            return Err(FrameError::Truncated { expected: len, got });
        }
        Ok(Some(payload))
    }
}

#[cfg(feature = "async")]
pub use async_io::{read_frame_async, write_frame_async};

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        payloads
            .iter()
            .flat_map(|p| encode_frame(p).unwrap())
            .collect()
    }

    #[test]
    fn encode_layout_is_big_endian() {
        assert_eq!(encode_frame(b"{}").unwrap(), b"\x00\x00\x00\x02{}");
        let big = vec![b'x'; 0x0001_0203];
        assert_eq!(&encode_frame(&big).unwrap()[..4], &[0, 1, 2, 3]);
    }

    #[test]
    fn write_then_read_round_trip() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello").unwrap();
        write_frame(&mut wire, b"world!").unwrap();
        let mut r = Cursor::new(wire);
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"world!");
        assert!(read_frame(&mut r).unwrap().is_none());
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn max_frame_accepted_one_more_rejected() {
        let max = vec![b'a'; MAX_FRAME];
        let wire = encode_frame(&max).unwrap();
        assert_eq!(
            read_frame(&mut Cursor::new(&wire)).unwrap().unwrap().len(),
            MAX_FRAME
        );
        let over = vec![b'a'; MAX_FRAME + 1];
        assert!(matches!(
            encode_frame(&over),
            Err(FrameError::TooLarge { len }) if len == MAX_FRAME + 1
        ));
        assert!(matches!(
            write_frame(&mut Vec::new(), &over),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn empty_payload_rejected_both_ways() {
        assert!(matches!(encode_frame(b""), Err(FrameError::Empty)));
        let mut sink = Vec::new();
        assert!(matches!(
            write_frame(&mut sink, b""),
            Err(FrameError::Empty)
        ));
        assert!(sink.is_empty(), "nothing written for a rejected frame");
        let mut r = Cursor::new(vec![0, 0, 0, 0, b'x']);
        assert!(matches!(read_frame(&mut r), Err(FrameError::Empty)));
    }

    /// A reader that yields the header and then panics if the decoder tries to read a
    /// payload: proves hostile lengths are rejected before any payload read or allocation.
    struct HeaderOnly(Cursor<[u8; 4]>);
    impl Read for HeaderOnly {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            assert!(n > 0, "decoder read past a hostile header");
            Ok(n)
        }
    }

    #[test]
    fn hostile_length_rejected_before_reading_payload() {
        let mut r = HeaderOnly(Cursor::new([0xFF; 4]));
        match read_frame(&mut r) {
            Err(FrameError::TooLarge { len }) => assert_eq!(len, 0xFFFF_FFFF),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let just_over = (MAX_FRAME as u32 + 1).to_be_bytes();
        let mut r = HeaderOnly(Cursor::new(just_over));
        assert!(matches!(
            read_frame(&mut r),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn lying_length_reports_truncation() {
        // Announces MAX_FRAME but delivers 3 bytes (the payload buffer starts at READ_CHUNK
        // and grows only with received data).
        let mut wire = (MAX_FRAME as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(b"abc");
        match read_frame(&mut Cursor::new(wire)) {
            Err(FrameError::Truncated { expected, got }) => {
                assert_eq!((expected, got), (MAX_FRAME, 3))
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    #[test]
    fn truncated_header_and_payload() {
        for cut in 1..HEADER_LEN {
            let wire = encode_frame(b"payload").unwrap();
            match read_frame(&mut Cursor::new(&wire[..cut])) {
                Err(FrameError::Truncated { expected: 4, got }) => assert_eq!(got, cut),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        let wire = encode_frame(b"payload").unwrap();
        for cut in HEADER_LEN..wire.len() {
            assert!(matches!(
                read_frame(&mut Cursor::new(&wire[..cut])),
                Err(FrameError::Truncated { expected: 7, .. })
            ));
        }
    }

    #[test]
    fn io_errors_propagate_and_interrupted_is_retried() {
        struct Flaky(u8);
        impl Read for Flaky {
            fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
                self.0 += 1;
                if self.0 == 1 {
                    Err(io::ErrorKind::Interrupted.into())
                } else {
                    Err(io::Error::other("boom"))
                }
            }
        }
        let mut r = Flaky(0);
        assert!(matches!(read_frame(&mut r), Err(FrameError::Io(e)) if e.to_string() == "boom"));
        assert_eq!(r.0, 2);
    }

    #[test]
    fn decoder_many_frames_in_one_push() {
        let payloads: Vec<Vec<u8>> = (1..=50).map(|i| vec![b'a' + (i % 26) as u8; i]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let mut d = FrameDecoder::new();
        d.push(&frames(&refs));
        for p in &payloads {
            assert_eq!(&d.next_frame().unwrap().unwrap(), p);
        }
        assert!(d.next_frame().unwrap().is_none());
        assert_eq!(d.buffered(), 0);
        d.finish().unwrap();
    }

    #[test]
    fn decoder_byte_by_byte() {
        let wire = frames(&[b"one", b"{\"two\":2}", b"3"]);
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(
            out,
            vec![b"one".to_vec(), b"{\"two\":2}".to_vec(), b"3".to_vec()]
        );
        d.finish().unwrap();
    }

    #[test]
    fn decoder_arbitrary_split_points() {
        let wire = frames(&[b"alpha", b"beta", b"gamma-delta"]);
        for split in 0..=wire.len() {
            let mut d = FrameDecoder::new();
            let mut out = Vec::new();
            for chunk in [&wire[..split], &wire[split..]] {
                d.push(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    out.push(f);
                }
            }
            assert_eq!(out.len(), 3, "split at {split}");
            assert_eq!(out[2], b"gamma-delta");
        }
    }

    #[test]
    fn decoder_hostile_length_poisons_without_buffering() {
        let mut d = FrameDecoder::new();
        d.push(&[0xFF, 0xFF]);
        assert!(d.next_frame().unwrap().is_none());
        d.push(&[0xFF, 0xFF, 1, 2, 3]);
        assert!(matches!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 0xFFFF_FFFF })
        ));
        assert_eq!(d.buffered(), 0);
        d.push(&encode_frame(b"ok").unwrap());
        assert_eq!(d.buffered(), 0, "poisoned decoder ignores input");
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
        assert!(d.finish().is_err());
    }

    #[test]
    fn decoder_zero_length_is_error() {
        let mut d = FrameDecoder::new();
        d.push(&frames(&[b"ok"]));
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.next_frame().unwrap().unwrap(), b"ok");
        assert!(matches!(d.next_frame(), Err(FrameError::Empty)));
        assert!(matches!(d.next_frame(), Err(FrameError::Empty)));
    }

    #[test]
    fn decoder_finish_reports_partial_frame() {
        let wire = encode_frame(b"abcdef").unwrap();
        let mut d = FrameDecoder::new();
        d.push(&wire[..2]);
        assert!(matches!(
            d.finish(),
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        d.push(&wire[2..7]);
        assert!(d.next_frame().unwrap().is_none());
        assert!(matches!(
            d.finish(),
            Err(FrameError::Truncated {
                expected: 6,
                got: 3
            })
        ));
        d.push(&wire[7..]);
        assert_eq!(d.next_frame().unwrap().unwrap(), b"abcdef");
        d.finish().unwrap();
    }

    #[test]
    fn decoder_compacts_consumed_bytes() {
        let mut d = FrameDecoder::new();
        for _ in 0..10_000 {
            d.push(&frames(&[b"0123456789"]));
            d.push(&[0, 0]);
            assert_eq!(d.next_frame().unwrap().unwrap(), b"0123456789");
            d.push(&[0, 1, b'x']);
            assert_eq!(d.next_frame().unwrap().unwrap(), b"x");
        }
        assert!(
            d.buf.capacity() < 1024,
            "buffer grew to {}",
            d.buf.capacity()
        );
    }

    #[cfg(feature = "async")]
    #[tokio::test]
    async fn async_round_trip_and_errors() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            write_frame_async(&mut a, b"first").await.unwrap();
            write_frame_async(&mut a, &vec![b'z'; 1000]).await.unwrap();
            assert!(matches!(
                write_frame_async(&mut a, b"").await,
                Err(FrameError::Empty)
            ));
        });
        assert_eq!(read_frame_async(&mut b).await.unwrap().unwrap(), b"first");
        assert_eq!(read_frame_async(&mut b).await.unwrap().unwrap().len(), 1000);
        writer.await.unwrap();
        assert!(read_frame_async(&mut b).await.unwrap().is_none());

        let mut hostile: &[u8] = &[0xFF, 0xFF, 0xFF, 0xFF];
        assert!(matches!(
            read_frame_async(&mut hostile).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut short: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame_async(&mut short).await,
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        let mut short: &[u8] = &[0, 0, 0, 5, b'a'];
        assert!(matches!(
            read_frame_async(&mut short).await,
            Err(FrameError::Truncated {
                expected: 5,
                got: 1
            })
        ));
    }
}
