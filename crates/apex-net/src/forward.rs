//! Published ports: host-side listeners spliced to the guest's forward service.
//!
//! The guest protocol: on a fresh stream the host writes `tcp <port>\n` or `udp <port>\n`
//! and reads back `ok\n` or `error <message>\n` ([`handshake`]). After that a TCP stream
//! carries the connection's bytes as they are; a UDP stream carries datagrams framed as
//! `[u16 big-endian length][payload]` in both directions, one stream per host-side client.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, timeout, Instant};

use crate::{Error, Result};

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `"tcp"` or `"udp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Host address used when a spec names none.
pub const DEFAULT_HOST_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A parsed `-p [host-ip:][host-port:]container-port[/tcp|udp]`. `host_port` 0 means "any
/// free port" (`-p 80` or `-p 127.0.0.1::80`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    /// Host address to listen on ([`DEFAULT_HOST_IP`] unless given).
    pub host_ip: IpAddr,
    /// Host port; 0 picks a free one.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
    /// TCP unless `/udp`.
    pub protocol: Protocol,
}

impl PortSpec {
    /// The host address to listen on.
    pub fn host_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host_ip, self.host_port)
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            IpAddr::V6(ip) => write!(f, "[{ip}]")?,
            IpAddr::V4(ip) => write!(f, "{ip}")?,
        }
        write!(
            f,
            ":{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

impl FromStr for PortSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let err = |reason: &str| Error::InvalidPortSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (rest, protocol) = match spec.rsplit_once('/') {
            None => (spec, Protocol::Tcp),
            Some((rest, p)) => match p.to_ascii_lowercase().as_str() {
                "tcp" => (rest, Protocol::Tcp),
                "udp" => (rest, Protocol::Udp),
                "sctp" => return Err(err("sctp is not supported (use tcp or udp)")),
                _ => return Err(err("protocol must be tcp or udp")),
            },
        };
        // An IPv6 host address must be in brackets: [::1]:8080:80.
        let (host_ip, ports) = if let Some(after) = rest.strip_prefix('[') {
            let (ip, tail) = after
                .split_once(']')
                .ok_or_else(|| err("missing ']' after IPv6 address"))?;
            let ip: IpAddr = ip.parse().map_err(|_| err("invalid IPv6 address"))?;
            let ports = tail
                .strip_prefix(':')
                .ok_or_else(|| err("expected ':' after the host address"))?;
            (Some(ip), ports)
        } else {
            (None, rest)
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (ip_part, host_part, container_part) =
            match (host_ip, parts.as_slice()) {
                (None, [c]) => (None, "", *c),
                (None, [h, c]) => (None, *h, *c),
                (None, [ip, h, c]) => (Some(*ip), *h, *c),
                (Some(_), [h, c]) => (None, *h, *c),
                (None, _) => return Err(err(
                    "expected [host-ip:]host-port:container-port (IPv6 addresses go in brackets)",
                )),
                (Some(_), _) => return Err(err("expected [ipv6]:host-port:container-port")),
            };
        let host_ip = match (host_ip, ip_part) {
            (Some(ip), _) => ip,
            (None, Some("")) | (None, None) => DEFAULT_HOST_IP,
            (None, Some(ip)) => ip.parse().map_err(|_| err("invalid host IP address"))?,
        };
        let port = |s: &str, what: &str, allow_zero: bool| -> Result<u16> {
            if s.contains('-') {
                return Err(err(&format!(
                    "port ranges are not supported ({what} {s:?})"
                )));
            }
            match s.parse::<u16>() {
                Ok(0) if !allow_zero => Err(err(&format!("{what} must be 1-65535"))),
                Ok(p) => Ok(p),
                Err(_) => Err(err(&format!("invalid {what} {s:?}"))),
            }
        };
        let host_port = if host_part.is_empty() {
            0
        } else {
            port(host_part, "host port", true)?
        };
        let container_port = port(container_part, "container port", false)?;
        Ok(PortSpec {
            host_ip,
            host_port,
            container_port,
            protocol,
        })
    }
}

/// Opens a stream to the guest's forward service for (`protocol`, `container_port`) with the
/// [`handshake`] already done. apexd supplies one that goes over vsock.
///
/// Any `Fn(Protocol, u16) -> impl Future<Output = io::Result<UnixStream>>` is a connector.
pub trait Connector: Send + Sync + 'static {
    /// Connects and performs the handshake.
    fn connect(
        &self,
        protocol: Protocol,
        container_port: u16,
    ) -> BoxFuture<'static, io::Result<UnixStream>>;
}

impl<F, Fut> Connector for F
where
    F: Fn(Protocol, u16) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<UnixStream>> + Send + 'static,
{
    fn connect(
        &self,
        protocol: Protocol,
        container_port: u16,
    ) -> BoxFuture<'static, io::Result<UnixStream>> {
        Box::pin(self(protocol, container_port))
    }
}

/// Longest handshake reply line accepted.
const MAX_REPLY: usize = 1024;

/// The host side of the guest protocol's header exchange: writes `tcp <port>\n` /
/// `udp <port>\n`, reads `ok\n` (returns `Ok`) or `error <msg>\n` (returns an error of kind
/// `ConnectionRefused` carrying `<msg>`). Reads byte by byte so nothing after the newline is
/// consumed.
pub async fn handshake<S>(stream: &mut S, protocol: Protocol, port: u16) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(format!("{protocol} {port}\n").as_bytes())
        .await?;
    stream.flush().await?;
    let mut line = Vec::new();
    loop {
        let b = stream.read_u8().await?;
        if b == b'\n' {
            break;
        }
        if line.len() >= MAX_REPLY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "forward reply too long",
            ));
        }
        line.push(b);
    }
    let line = String::from_utf8_lossy(&line);
    let line = line.trim_end_matches('\r');
    if line == "ok" {
        return Ok(());
    }
    if let Some(msg) = line.strip_prefix("error") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("guest refused {protocol} port {port}: {}", msg.trim()),
        ));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected forward reply {line:?}"),
    ))
}

/// How long a connector may take before the client is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Splice buffer per direction: large enough for bulk throughput.
const SPLICE_BUF: usize = 64 * 1024;

fn bind_error(addr: SocketAddr, proto: Protocol, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::AddrInUse => Error::PortInUse {
            addr,
            proto: proto.as_str(),
        },
        io::ErrorKind::AddrNotAvailable => Error::io(
            format!(
                "cannot publish {addr}/{proto}: {} is not an address of this host",
                addr.ip()
            ),
            e,
        ),
        _ => Error::io(format!("cannot publish {addr}/{proto}"), e),
    }
}

/// A published TCP port. Dropping it (or [`TcpForwarder::close`]) stops listening and ends
/// its connections.
#[derive(Debug)]
pub struct TcpForwarder {
    local_addr: SocketAddr,
    spec: PortSpec,
    task: Option<JoinHandle<()>>,
}

impl TcpForwarder {
    /// Listens on `spec.host_addr()` and splices each connection to a new connector stream.
    pub async fn bind(spec: &PortSpec, connector: Arc<dyn Connector>) -> Result<Self> {
        let addr = spec.host_addr();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| bind_error(addr, Protocol::Tcp, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the listening address", e))?;
        let port = spec.container_port;
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it drops (aborts) every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, peer)) => {
                            conns.spawn(splice_tcp(client, peer, connector.clone(), port));
                        }
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(%local_addr, "accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(TcpForwarder {
            local_addr,
            spec: *spec,
            task: Some(task),
        })
    }

    /// The bound address (with the real port when `host_port` was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The spec this forwarder serves.
    pub fn spec(&self) -> &PortSpec {
        &self.spec
    }

    /// Stops listening and ends all connections; the port is free when this returns.
    pub async fn close(mut self) {
        stop(&mut self.task).await;
    }
}

impl Drop for TcpForwarder {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Aborts a forwarder's task and waits until it (and so its socket) is gone.
async fn stop(task: &mut Option<JoinHandle<()>>) {
    if let Some(task) = task.take() {
        task.abort();
        let _ = task.await;
    }
}

async fn splice_tcp(client: TcpStream, peer: SocketAddr, connector: Arc<dyn Connector>, port: u16) {
    let _ = client.set_nodelay(true);
    let guest = match timeout(CONNECT_TIMEOUT, connector.connect(Protocol::Tcp, port)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, port, "forward connect failed: {e}");
            reset(client);
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, port, "forward connect timed out");
            reset(client);
            return;
        }
    };
    if let Err(e) = splice_half_close_late(client, guest).await {
        tracing::debug!(%peer, port, "forwarded connection ended: {e}");
    }
}

/// How long the guest must have sent nothing after the client's half-close before it is
/// passed on.
const HALF_CLOSE_IDLE: Duration = Duration::from_millis(300);

/// Relays both ways like `copy_bidirectional`, except that the client's half-close
/// reaches the guest only once the guest has been quiet for [`HALF_CLOSE_IDLE`].
///
/// The vsock backend (vhost-device-vsock 0.3) turns a host-side half-close into a full
/// shutdown of the guest's socket, so a reply the guest server sends after it (an echo
/// of the last bytes, say) would be lost; waiting lets such replies through. A server that
/// answers only after EOF gets it after the idle time.
async fn splice_half_close_late(client: TcpStream, guest: UnixStream) -> io::Result<()> {
    let (mut cr, mut cw) = client.into_split();
    let (mut gr, mut gw) = guest.into_split();
    let (activity, mut seen) = tokio::sync::watch::channel(Instant::now());
    let down = async move {
        let mut buf = vec![0u8; SPLICE_BUF];
        loop {
            let n = gr.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            cw.write_all(&buf[..n]).await?;
            activity.send_replace(Instant::now());
        }
        cw.shutdown().await
    };
    let up = async move {
        let mut buf = vec![0u8; SPLICE_BUF];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            gw.write_all(&buf[..n]).await?;
        }
        // Wait for the guest to go quiet (or to close: `down` then ends the splice).
        loop {
            let last = *seen.borrow_and_update();
            let quiet_at = std::cmp::max(last, Instant::now()) + HALF_CLOSE_IDLE;
            tokio::select! {
                _ = sleep_until(quiet_at) => {
                    if *seen.borrow() == last {
                        break;
                    }
                }
                changed = seen.changed() => {
                    if changed.is_err() {
                        return Ok(()); // the guest side is done
                    }
                }
            }
        }
        gw.shutdown().await
    };
    let (d, u) = tokio::join!(down, up);
    d.and(u)
}

/// Closes with RST so the client sees "connection reset" rather than an empty reply.
fn reset(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

/// Tunables of a [`UdpForwarder`].
#[derive(Clone, Copy, Debug)]
pub struct UdpOptions {
    /// A client's stream is closed after this long without datagrams either way.
    pub idle_timeout: Duration,
    /// Most concurrent clients; datagrams from further new clients are dropped.
    pub max_sessions: usize,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions {
            idle_timeout: Duration::from_secs(60),
            max_sessions: 1024,
        }
    }
}

/// A published UDP port: each host-side client address gets its own connector stream,
/// closed after [`UdpOptions::idle_timeout`]. Dropping it (or [`UdpForwarder::close`]) stops
/// everything.
#[derive(Debug)]
pub struct UdpForwarder {
    local_addr: SocketAddr,
    spec: PortSpec,
    task: Option<JoinHandle<()>>,
}

/// Datagrams queued per client while its stream connects or is busy.
const UDP_QUEUE: usize = 256;

struct Session {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
}

impl UdpForwarder {
    /// Binds with default [`UdpOptions`].
    pub async fn bind(spec: &PortSpec, connector: Arc<dyn Connector>) -> Result<Self> {
        Self::bind_with(spec, connector, UdpOptions::default()).await
    }

    /// Binds `spec.host_addr()` and starts relaying.
    pub async fn bind_with(
        spec: &PortSpec,
        connector: Arc<dyn Connector>,
        opts: UdpOptions,
    ) -> Result<Self> {
        let addr = spec.host_addr();
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|e| bind_error(addr, Protocol::Udp, e))?;
        let local_addr = socket
            .local_addr()
            .map_err(|e| Error::io("cannot read the bound address", e))?;
        let task = tokio::spawn(udp_main(
            Arc::new(socket),
            connector,
            spec.container_port,
            opts,
        ));
        Ok(UdpForwarder {
            local_addr,
            spec: *spec,
            task: Some(task),
        })
    }

    /// The bound address (with the real port when `host_port` was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The spec this forwarder serves.
    pub fn spec(&self) -> &PortSpec {
        &self.spec
    }

    /// Stops relaying and closes every client stream; the port is free when this returns.
    pub async fn close(mut self) {
        stop(&mut self.task).await;
    }
}

impl Drop for UdpForwarder {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn udp_main(
    socket: Arc<UdpSocket>,
    connector: Arc<dyn Connector>,
    port: u16,
    opts: UdpOptions,
) {
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    // Owned here: aborting this task aborts every session.
    let mut tasks = JoinSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut next_id = 0u64;
    let mut buf = vec![0u8; 65535];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, client) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        // e.g. ECONNREFUSED from an earlier send: keep serving.
                        tracing::debug!("udp recv: {e}");
                        continue;
                    }
                };
                let datagram = buf[..n].to_vec();
                if let Some(s) = sessions.get(&client) {
                    match s.tx.try_send(datagram) {
                        Ok(()) => continue,
                        // Queue full: drop, as a congested UDP path would.
                        Err(mpsc::error::TrySendError::Full(_)) => continue,
                        Err(mpsc::error::TrySendError::Closed(d)) => {
                            sessions.remove(&client);
                            start_session(&mut sessions, &mut tasks, &mut next_id, client, d,
                                &socket, &connector, port, opts, &done_tx);
                        }
                    }
                } else if sessions.len() < opts.max_sessions {
                    start_session(&mut sessions, &mut tasks, &mut next_id, client, datagram,
                        &socket, &connector, port, opts, &done_tx);
                } else {
                    tracing::debug!(%client, "udp forward: too many clients, datagram dropped");
                }
            }
            Some((client, id)) = done_rx.recv() => {
                if sessions.get(&client).is_some_and(|s| s.id == id) {
                    sessions.remove(&client);
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn start_session(
    sessions: &mut HashMap<SocketAddr, Session>,
    tasks: &mut JoinSet<()>,
    next_id: &mut u64,
    client: SocketAddr,
    first: Vec<u8>,
    socket: &Arc<UdpSocket>,
    connector: &Arc<dyn Connector>,
    port: u16,
    opts: UdpOptions,
    done: &mpsc::UnboundedSender<(SocketAddr, u64)>,
) {
    *next_id += 1;
    let id = *next_id;
    let (tx, rx) = mpsc::channel(UDP_QUEUE);
    let _ = tx.try_send(first);
    sessions.insert(client, Session { id, tx });
    let socket = socket.clone();
    let connector = connector.clone();
    let done = done.clone();
    tasks.spawn(async move {
        if let Err(e) = udp_session(client, rx, socket, connector, port, opts.idle_timeout).await {
            tracing::debug!(%client, port, "udp forward session ended: {e}");
        }
        let _ = done.send((client, id));
    });
}

/// Relays one client's datagrams over its own stream until idle, EOF or error.
async fn udp_session(
    client: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
    socket: Arc<UdpSocket>,
    connector: Arc<dyn Connector>,
    port: u16,
    idle: Duration,
) -> io::Result<()> {
    let stream = timeout(CONNECT_TIMEOUT, connector.connect(Protocol::Udp, port))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let (mut reader, mut writer) = stream.into_split();
    let mut inbuf: Vec<u8> = Vec::with_capacity(4096);
    let mut deadline = Instant::now() + idle;
    let mut frame = Vec::with_capacity(2 + 65535);
    loop {
        tokio::select! {
            datagram = rx.recv() => {
                let Some(d) = datagram else { return Ok(()) };
                // recv_from never yields more than 65535 bytes, so the length fits.
                frame.clear();
                frame.extend_from_slice(&(d.len() as u16).to_be_bytes());
                frame.extend_from_slice(&d);
                writer.write_all(&frame).await?;
                deadline = Instant::now() + idle;
            }
            // read_buf is cancel-safe: partial frames stay in `inbuf`.
            n = reader.read_buf(&mut inbuf) => {
                if n? == 0 {
                    return Ok(());
                }
                let mut start = 0;
                while inbuf.len() - start >= 2 {
                    let len = u16::from_be_bytes([inbuf[start], inbuf[start + 1]]) as usize;
                    if inbuf.len() - start - 2 < len {
                        break;
                    }
                    let payload = &inbuf[start + 2..start + 2 + len];
                    if let Err(e) = socket.send_to(payload, client).await {
                        tracing::debug!(%client, "udp send: {e}");
                    }
                    start += 2 + len;
                }
                inbuf.drain(..start);
                deadline = Instant::now() + idle;
            }
            _ = sleep_until(deadline) => return Ok(()),
        }
    }
}

/// A published port of either protocol.
#[derive(Debug)]
pub enum Forwarder {
    /// A TCP port.
    Tcp(TcpForwarder),
    /// A UDP port.
    Udp(UdpForwarder),
}

impl Forwarder {
    /// Binds a [`TcpForwarder`] or [`UdpForwarder`] according to `spec.protocol`.
    pub async fn bind(spec: &PortSpec, connector: Arc<dyn Connector>) -> Result<Self> {
        Ok(match spec.protocol {
            Protocol::Tcp => Forwarder::Tcp(TcpForwarder::bind(spec, connector).await?),
            Protocol::Udp => Forwarder::Udp(UdpForwarder::bind(spec, connector).await?),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            Forwarder::Tcp(f) => f.local_addr(),
            Forwarder::Udp(f) => f.local_addr(),
        }
    }

    /// Stops it; the port is free when this returns.
    pub async fn close(self) {
        match self {
            Forwarder::Tcp(f) => f.close().await,
            Forwarder::Udp(f) => f.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PortSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_docker_forms() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(
            p("8080:80"),
            PortSpec {
                host_ip: lo,
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(p("8080:80/udp").protocol, Protocol::Udp);
        assert_eq!(p("8080:80/TCP").protocol, Protocol::Tcp);
        let s = p("0.0.0.0:53:5353/udp");
        assert_eq!(s.host_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!((s.host_port, s.container_port), (53, 5353));
        assert_eq!(
            p("[::1]:8443:443").host_ip,
            "::1".parse::<IpAddr>().unwrap()
        );
        // Any free host port.
        assert_eq!(p("80").host_port, 0);
        assert_eq!(p("127.0.0.2::80").host_port, 0);
        assert_eq!(p(":8080:80").host_ip, lo);
        assert_eq!(p("10.0.0.1:1:2").to_string(), "10.0.0.1:1:2/tcp");
        assert_eq!(p("[::1]:1:2/udp").to_string(), "[::1]:1:2/udp");
        // Display round-trips.
        for s in ["8080:80", "[::1]:8443:443/udp", "0.0.0.0:1:65535"] {
            assert_eq!(p(&p(s).to_string()), p(s));
        }
    }

    #[test]
    fn rejects_bad_specs_clearly() {
        for (spec, needle) in [
            ("8000-8010:80", "port ranges are not supported"),
            ("8080:80-81", "port ranges are not supported"),
            ("8080:80/sctp", "sctp is not supported"),
            ("8080:80/icmp", "protocol must be tcp or udp"),
            ("8080:0", "container port must be 1-65535"),
            ("8080:70000", "invalid container port"),
            ("x:80", "invalid host port"),
            ("1.2.3:8080:80", "invalid host IP"),
            ("::1:8080:80", "IPv6 addresses go in brackets"),
            ("[::1:8080:80", "missing ']'"),
            ("", "invalid container port"),
        ] {
            let err = spec.parse::<PortSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{spec:?}: {err}");
            assert!(err.contains(&format!("{spec:?}")), "{err}");
        }
    }

    #[test]
    fn spec_serde() {
        let s = p("127.0.0.1:8080:80/udp");
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"protocol\":\"udp\""), "{json}");
        assert_eq!(serde_json::from_str::<PortSpec>(&json).unwrap(), s);
    }
}
