//! Published-port forwarding over vsock: the host reaches a TCP or UDP port inside the guest
//! through the guest agent, so host ports never depend on the guest's IP configuration.
//!
//! The guest agent listens on vsock port [`FORWARD_PORT`](crate::FORWARD_PORT). Each
//! connection forwards one TCP connection or one UDP "session":
//!
//! 1. The host sends one ASCII header line: `tcp <port>\n` or `udp <port>\n`
//!    ([`encode_header`], [`parse_header`]); `<port>` is decimal, 1-65535.
//! 2. The guest answers one line: `ok\n`, or `error <message>\n` and closes
//!    ([`Answer`]). Lines are at most [`MAX_LINE`] bytes including the newline.
//! 3. **tcp**: the guest has connected to `127.0.0.1:<port>` (falling back to its first
//!    non-loopback address if that is refused, for servers bound to `eth0` only) before it
//!    answers; afterwards the connection is a plain byte stream in both directions. The
//!    host's EOF is passed on to the guest server as a half-close (`shutdown(SHUT_WR)`);
//!    the guest closes once both directions have ended. The guest server's EOF closes the
//!    whole vsock connection, because the vhost-user vsock backend (vhost-device-vsock
//!    0.3) only forwards full shutdowns; for the same reason a host half-close arrives in
//!    the guest as a full shutdown, so the guest server cannot answer after it.
//! 4. **udp**: after `ok`, datagrams flow both ways as frames `[u16 big-endian length]
//!    [payload]` ([`encode_datagram`], [`read_datagram`], [`DatagramDecoder`]). The guest
//!    relays them to and from a UDP socket connected to `127.0.0.1:<port>` (retargeted to
//!    its first non-loopback address when loopback answers "port unreachable"). Closing the
//!    vsock connection ends the session.
//!
//! Both sides read the answer/header lines one byte at a time ([`read_line`]), so no bytes
//! of the forwarded stream that follow the line are consumed by mistake.
//!
//! ```text
//! host -> guest: "tcp 8080\n"           host -> guest: "udp 53\n"
//! guest -> host: "ok\n"                 guest -> host: "ok\n"
//! ... raw bytes both ways ...           00 05 "hello" (one datagram) ...
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

/// Longest header or answer line, including the trailing newline.
pub const MAX_LINE: usize = 512;
/// Largest UDP payload a frame can carry (the length field is a `u16`).
pub const MAX_DATAGRAM: usize = u16::MAX as usize;
/// Size of a datagram frame's length field.
pub const DATAGRAM_HEADER_LEN: usize = 2;

/// A forwarded transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// A TCP connection, spliced as a byte stream.
    Tcp,
    /// UDP datagrams, framed with a 2-byte length.
    Udp,
}

impl Proto {
    /// The wire name: `"tcp"` or `"udp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(format!("unknown protocol {other:?} (want tcp or udp)")),
        }
    }
}

/// The header line for forwarding `proto` port `port`, newline included.
pub fn encode_header(proto: Proto, port: u16) -> Vec<u8> {
    format!("{proto} {port}\n").into_bytes()
}

/// Parses a header line (without or with its trailing newline).
pub fn parse_header(line: &str) -> Result<(Proto, u16), String> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let (proto, port) = line
        .split_once(' ')
        .ok_or_else(|| format!("bad forward header {line:?} (want \"tcp|udp <port>\")"))?;
    let proto: Proto = proto.parse()?;
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 && !port.starts_with('+') => p,
        _ => return Err(format!("bad port {port:?} (want 1-65535)")),
    };
    Ok((proto, port))
}

/// The guest's answer to a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The forward is established.
    Ok,
    /// It is not; the guest closes the connection after this line.
    Error(String),
}

impl Answer {
    /// The answer line, newline included. Newlines inside an error message become spaces,
    /// and the line is cut to [`MAX_LINE`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Answer::Ok => b"ok\n".to_vec(),
            Answer::Error(msg) => {
                let mut line = String::from("error ");
                for c in msg.chars() {
                    let c = if c == '\n' || c == '\r' { ' ' } else { c };
                    if line.len() + c.len_utf8() >= MAX_LINE {
                        break;
                    }
                    line.push(c);
                }
                line.push('\n');
                line.into_bytes()
            }
        }
    }

    /// Parses an answer line (without or with its trailing newline).
    pub fn parse(line: &str) -> Result<Answer, String> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        if line == "ok" {
            return Ok(Answer::Ok);
        }
        match line.strip_prefix("error") {
            Some(rest) if rest.is_empty() || rest.starts_with(' ') => {
                Ok(Answer::Error(rest.trim_start().to_string()))
            }
            _ => Err(format!("bad forward answer {line:?}")),
        }
    }
}

fn line_error(kind: io::ErrorKind, msg: &str) -> io::Error {
    io::Error::new(kind, msg.to_string())
}

/// Reads one `\n`-terminated line of at most `max` bytes (newline included), one byte at a
/// time, and returns it without the newline. EOF before the newline is `UnexpectedEof`; a
/// longer line or non-UTF-8 bytes are `InvalidData`.
pub fn read_line<R: Read + ?Sized>(r: &mut R, max: usize) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte) {
            Ok(0) => {
                return Err(line_error(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the end of the line",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if byte[0] == b'\n' {
            return String::from_utf8(line)
                .map_err(|_| line_error(io::ErrorKind::InvalidData, "line is not UTF-8"));
        }
        line.push(byte[0]);
        if line.len() >= max {
            return Err(line_error(io::ErrorKind::InvalidData, "line too long"));
        }
    }
}

/// Returns `payload` as one datagram frame; payloads over [`MAX_DATAGRAM`] bytes are an
/// `InvalidInput` error.
pub fn encode_datagram(payload: &[u8]) -> io::Result<Vec<u8>> {
    let len = u16::try_from(payload.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "datagram of {} bytes exceeds {MAX_DATAGRAM} bytes",
                payload.len()
            ),
        )
    })?;
    let mut out = Vec::with_capacity(DATAGRAM_HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Writes one datagram frame (a single `write_all`, so concurrent writers on a shared
/// stream do not interleave partial frames if they serialize calls).
pub fn write_datagram<W: Write + ?Sized>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    w.write_all(&encode_datagram(payload)?)?;
    w.flush()
}

/// Reads one datagram frame; `Ok(None)` on EOF at a frame boundary, `UnexpectedEof`
/// inside a frame.
pub fn read_datagram<R: Read + ?Sized>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; DATAGRAM_HEADER_LEN];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut payload = vec![0u8; u16::from_be_bytes(header) as usize];
    r.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// A push/pop datagram frame decoder for poll loops: feed received bytes with
/// [`push`](Self::push), take complete datagrams with [`next_datagram`](Self::next_datagram).
#[derive(Debug, Default)]
pub struct DatagramDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl DatagramDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete datagram, if one has fully arrived.
    pub fn next_datagram(&mut self) -> Option<Vec<u8>> {
        let avail = &self.buf[self.start..];
        if avail.len() < DATAGRAM_HEADER_LEN {
            return None;
        }
        let len = u16::from_be_bytes([avail[0], avail[1]]) as usize;
        if avail.len() < DATAGRAM_HEADER_LEN + len {
            return None;
        }
        let out = avail[DATAGRAM_HEADER_LEN..DATAGRAM_HEADER_LEN + len].to_vec();
        self.start += DATAGRAM_HEADER_LEN + len;
        if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Some(out)
    }

    /// Bytes received but not yet returned (a partial frame at EOF means truncation).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(feature = "async")]
mod async_io {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Async [`read_line`].
    pub async fn read_line_async<R: AsyncRead + Unpin + ?Sized>(
        r: &mut R,
        max: usize,
    ) -> io::Result<String> {
        let mut line = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            if r.read(&mut byte).await? == 0 {
                return Err(line_error(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the end of the line",
                ));
            }
            if byte[0] == b'\n' {
                return String::from_utf8(line)
                    .map_err(|_| line_error(io::ErrorKind::InvalidData, "line is not UTF-8"));
            }
            line.push(byte[0]);
            if line.len() >= max {
                return Err(line_error(io::ErrorKind::InvalidData, "line too long"));
            }
        }
    }

    /// Async [`write_datagram`].
    pub async fn write_datagram_async<W: AsyncWrite + Unpin + ?Sized>(
        w: &mut W,
        payload: &[u8],
    ) -> io::Result<()> {
        w.write_all(&encode_datagram(payload)?).await?;
        w.flush().await
    }

    /// Async [`read_datagram`].
    pub async fn read_datagram_async<R: AsyncRead + Unpin + ?Sized>(
        r: &mut R,
    ) -> io::Result<Option<Vec<u8>>> {
        let mut header = [0u8; DATAGRAM_HEADER_LEN];
        let mut got = 0;
        while got < header.len() {
            match r.read(&mut header[got..]).await? {
                0 if got == 0 => return Ok(None),
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => got += n,
            }
        }
        let mut payload = vec![0u8; u16::from_be_bytes(header) as usize];
        r.read_exact(&mut payload).await?;
        Ok(Some(payload))
    }
}

#[cfg(feature = "async")]
pub use async_io::{read_datagram_async, read_line_async, write_datagram_async};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(encode_header(Proto::Tcp, 8080), b"tcp 8080\n");
        assert_eq!(encode_header(Proto::Udp, 53), b"udp 53\n");
        assert_eq!(parse_header("tcp 8080\n").unwrap(), (Proto::Tcp, 8080));
        assert_eq!(parse_header("udp 65535").unwrap(), (Proto::Udp, 65535));
        for bad in [
            "",
            "tcp",
            "tcp ",
            "tcp 0",
            "tcp 65536",
            "tcp +80",
            "tcp 80 x",
            "sctp 80",
            "TCP 80",
            "tcp  80",
            "tcp -1",
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_header("sctp 1").unwrap_err().contains("sctp"));
        assert_eq!("udp".parse::<Proto>().unwrap().to_string(), "udp");
    }

    #[test]
    fn answers() {
        assert_eq!(Answer::Ok.encode(), b"ok\n");
        assert_eq!(Answer::parse("ok\n").unwrap(), Answer::Ok);
        let e = Answer::Error("connect 127.0.0.1:1:\nrefused".into());
        assert_eq!(e.encode(), b"error connect 127.0.0.1:1: refused\n");
        assert_eq!(
            Answer::parse("error connect: refused").unwrap(),
            Answer::Error("connect: refused".into())
        );
        assert_eq!(
            Answer::parse("error").unwrap(),
            Answer::Error(String::new())
        );
        assert!(Answer::parse("okay").is_err());
        assert!(Answer::parse("errors x").is_err());
        let long = Answer::Error("é".repeat(1000)).encode();
        assert!(long.len() <= MAX_LINE && long.ends_with(b"\n"));
        assert!(std::str::from_utf8(&long).is_ok());
    }

    #[test]
    fn lines_stop_at_the_newline() {
        let mut r: &[u8] = b"ok\nDATA";
        assert_eq!(read_line(&mut r, MAX_LINE).unwrap(), "ok");
        assert_eq!(r, b"DATA", "bytes after the line must stay unread");
        let mut r: &[u8] = b"ok";
        assert_eq!(
            read_line(&mut r, MAX_LINE).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let long = [b'a'; 100];
        assert_eq!(
            read_line(&mut &long[..], 10).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            read_line(&mut &b"\xff\n"[..], 10).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn datagram_frames() {
        assert_eq!(encode_datagram(b"hi").unwrap(), b"\x00\x02hi");
        assert_eq!(encode_datagram(b"").unwrap(), b"\x00\x00");
        assert_eq!(
            encode_datagram(&vec![0; MAX_DATAGRAM]).unwrap().len(),
            MAX_DATAGRAM + 2
        );
        assert_eq!(
            encode_datagram(&vec![0; MAX_DATAGRAM + 1])
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );

        let mut wire = Vec::new();
        write_datagram(&mut wire, b"one").unwrap();
        write_datagram(&mut wire, b"").unwrap();
        write_datagram(&mut wire, &[7; 300]).unwrap();
        let mut r = &wire[..];
        assert_eq!(read_datagram(&mut r).unwrap().unwrap(), b"one");
        assert_eq!(read_datagram(&mut r).unwrap().unwrap(), b"");
        assert_eq!(read_datagram(&mut r).unwrap().unwrap(), vec![7; 300]);
        assert!(read_datagram(&mut r).unwrap().is_none());
        let mut cut = &wire[..6];
        read_datagram(&mut cut).unwrap();
        assert_eq!(
            read_datagram(&mut cut).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut cut = &wire[..4]; // inside the payload
        assert_eq!(
            read_datagram(&mut cut).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut cut: &[u8] = &[0];
        assert_eq!(
            read_datagram(&mut cut).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );

        // Byte-at-a-time delivery through the push decoder.
        let mut d = DatagramDecoder::new();
        let mut out = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(p) = d.next_datagram() {
                out.push(p);
            }
        }
        assert_eq!(out, vec![b"one".to_vec(), vec![], vec![7; 300]]);
        assert_eq!(d.pending(), 0);
        d.push(&[0, 5, 1]);
        assert!(d.next_datagram().is_none());
        assert_eq!(d.pending(), 3);
    }

    #[test]
    fn decoder_compacts_its_buffer() {
        let mut d = DatagramDecoder::new();
        let frame = encode_datagram(&[1; 1000]).unwrap();
        for _ in 0..500 {
            d.push(&frame);
            d.push(&frame[..1]);
            assert_eq!(d.next_datagram().unwrap().len(), 1000);
            d.push(&frame[1..]);
            assert_eq!(d.next_datagram().unwrap().len(), 1000);
            assert!(d.next_datagram().is_none());
        }
        assert!(d.buf.len() < 200 * 1024, "{}", d.buf.len());
    }

    #[cfg(feature = "async")]
    #[tokio::test]
    async fn async_helpers() {
        use tokio::io::AsyncWriteExt;
        let (mut a, mut b) = tokio::io::duplex(8);
        let t = tokio::spawn(async move {
            a.write_all(b"ok\n").await.unwrap();
            write_datagram_async(&mut a, b"hello").await.unwrap();
            write_datagram_async(&mut a, b"").await.unwrap();
        });
        assert_eq!(read_line_async(&mut b, MAX_LINE).await.unwrap(), "ok");
        assert_eq!(
            read_datagram_async(&mut b).await.unwrap().unwrap(),
            b"hello"
        );
        assert_eq!(read_datagram_async(&mut b).await.unwrap().unwrap(), b"");
        t.await.unwrap();
        assert!(read_datagram_async(&mut b).await.unwrap().is_none());
    }
}
