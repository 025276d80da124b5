//! Published-port forwarding: the agent's second listener, on vsock port
//! [`FORWARD_PORT`](apex_agent_proto::FORWARD_PORT). Each connection names a TCP or UDP port
//! in one header line and is then relayed to `127.0.0.1:<port>` inside the guest; see
//! [`apex_agent_proto::forward`] for the protocol. One thread per TCP direction, one poll
//! loop per UDP session.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use apex_agent_proto::forward::{
    encode_datagram, parse_header, read_line, Answer, DatagramDecoder, Proto, MAX_LINE,
};

use crate::sys::{self, Stream};
use crate::transport::Listener;

/// How long a host may take to send the header line.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect timeout inside the guest (loopback answers at once; this bounds odd cases).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Relay buffer size.
const BUF: usize = 64 * 1024;

/// Accepts forward connections forever, one thread each.
pub fn serve(listener: Listener) {
    loop {
        match listener.accept() {
            Ok(stream) => {
                std::thread::spawn(move || handle(stream));
            }
            Err(e) => {
                crate::info!("forward accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Serves one forward connection to its end.
pub fn handle(stream: Stream) {
    if let Err(e) = handle_inner(stream) {
        crate::debug!("forward: {e}");
    }
}

fn io_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => sys::errno_text(errno),
        None => e.to_string(),
    }
}

fn handle_inner(stream: Stream) -> io::Result<()> {
    sys::set_recv_timeout(stream.as_fd(), Some(HEADER_TIMEOUT))?;
    let header = read_line(&mut &stream, MAX_LINE)
        .map_err(|e| format!("reading the forward header: {}", io_text(&e)))
        .and_then(|l| parse_header(&l));
    let (proto, port) = match header {
        Ok(h) => h,
        Err(msg) => return answer(&stream, Answer::Error(msg)),
    };
    sys::set_recv_timeout(stream.as_fd(), None)?;
    crate::debug!("forward {proto} {port}");
    match proto {
        Proto::Tcp => match connect_tcp(port) {
            Ok(tcp) => {
                answer(&stream, Answer::Ok)?;
                splice(stream, tcp)
            }
            Err(msg) => answer(&stream, Answer::Error(msg)),
        },
        Proto::Udp => match udp_socket(IpAddr::V4(Ipv4Addr::LOCALHOST), port) {
            Ok(sock) => {
                answer(&stream, Answer::Ok)?;
                relay_udp(&stream, sock, port)
            }
            Err(e) => answer(
                &stream,
                Answer::Error(format!("udp socket for port {port}: {}", io_text(&e))),
            ),
        },
    }
}

fn answer(stream: &Stream, a: Answer) -> io::Result<()> {
    sys::write_all_fd(stream.as_fd(), &a.encode())
}

/// Connects to `127.0.0.1:port`; if that is refused, to `[::1]:port` and then to the
/// guest's first non-loopback address (servers bound to one interface only).
fn connect_tcp(port: u16) -> Result<TcpStream, String> {
    let mut tried = Vec::new();
    let mut targets = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    let mut looked_up = false;
    let mut i = 0;
    while i < targets.len() {
        let addr = SocketAddr::new(targets[i], port);
        i += 1;
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => {
                let refused = matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNREFUSED | libc::EADDRNOTAVAIL | libc::ENETUNREACH)
                );
                tried.push(format!("{addr}: {}", io_text(&e)));
                if !refused {
                    break;
                }
            }
        }
        if i == targets.len() && !looked_up {
            looked_up = true;
            if let Ok(Some(ip)) = crate::rtnl::first_non_loopback_address() {
                targets.push(ip);
            }
        }
    }
    Err(format!("connect {}", tried.join("; ")))
}

/// Copies `from` to `to` until EOF; returns the first error of either side.
fn pump(mut from: impl Read, mut to: impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
}

/// Whether the guest server's EOF closes the whole vsock connection instead of only its
/// guest -> host half. vhost-device-vsock (0.3) ignores a `VSOCK_OP_SHUTDOWN` that does not
/// carry both the RCV and SEND flags, so after a half-close the host would never see EOF
/// (an HTTP/1.0 response would never end); a full shutdown reaches it at once.
const FULL_CLOSE_ON_GUEST_EOF: bool = true;

/// Relays both directions until both have ended. An EOF is passed on as a half-close
/// (but see [`FULL_CLOSE_ON_GUEST_EOF`]); an error in either direction tears both
/// connections down.
fn splice(vsock: Stream, tcp: TcpStream) -> io::Result<()> {
    let (vsock2, tcp2) = (vsock.try_clone()?, tcp.try_clone()?);
    let abort = |v: &Stream, t: &TcpStream| {
        let _ = v.shutdown(libc::SHUT_RDWR);
        let _ = t.shutdown(Shutdown::Both);
    };
    let up = std::thread::spawn(move || {
        // host -> guest server
        match pump(&vsock2, &tcp2) {
            Ok(()) => {
                let _ = tcp2.shutdown(Shutdown::Write);
            }
            Err(e) => {
                crate::debug!("forward host->guest: {e}");
                abort(&vsock2, &tcp2);
            }
        }
    });
    // guest server -> host
    match pump(&tcp, &vsock) {
        Ok(()) => {
            // The host -> guest thread then reads EOF and half-closes the server side.
            let how = if FULL_CLOSE_ON_GUEST_EOF {
                libc::SHUT_RDWR
            } else {
                libc::SHUT_WR
            };
            let _ = vsock.shutdown(how);
        }
        Err(e) => {
            crate::debug!("forward guest->host: {e}");
            abort(&vsock, &tcp);
        }
    }
    let _ = up.join();
    Ok(())
}

/// A UDP socket connected to `ip:port`.
fn udp_socket(ip: IpAddr, port: u16) -> io::Result<UdpSocket> {
    let any: SocketAddr = match ip {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(any)?;
    sock.connect((ip, port))?;
    Ok(sock)
}

/// Relays datagram frames between `vsock` and `sock` until the vsock connection ends.
/// If loopback answers "port unreachable", the socket is moved once to the guest's first
/// non-loopback address (a server bound to `eth0` only); the datagram that drew the
/// error is lost, as UDP allows.
fn relay_udp(vsock: &Stream, mut sock: UdpSocket, port: u16) -> io::Result<()> {
    let mut dec = DatagramDecoder::new();
    let mut buf = vec![0u8; BUF];
    let mut dgram = vec![0u8; u16::MAX as usize];
    let mut retargeted = false;
    let mut retarget = |sock: &mut UdpSocket| {
        if std::mem::replace(&mut retargeted, true) {
            return false;
        }
        match crate::rtnl::first_non_loopback_address() {
            Ok(Some(ip)) => match udp_socket(ip, port) {
                Ok(s) => {
                    crate::debug!("forward udp {port}: loopback refused, now to {ip}");
                    *sock = s;
                    true
                }
                Err(_) => false,
            },
            _ => false,
        }
    };
    loop {
        let rev = sys::poll_readable(&[vsock.as_fd(), sock.as_fd()])?;
        if rev[0] != 0 {
            let n = sys::read_fd(vsock.as_fd(), &mut buf)?;
            if n == 0 {
                if dec.pending() > 0 {
                    crate::debug!("forward udp {port}: connection ended inside a frame");
                }
                return Ok(());
            }
            dec.push(&buf[..n]);
            while let Some(d) = dec.next_datagram() {
                match sock.send(&d) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                        if retarget(&mut sock) {
                            let _ = sock.send(&d);
                        }
                    }
                    Err(e) => crate::debug!("forward udp {port}: send: {e}"),
                }
            }
        }
        if rev[1] != 0 {
            match sock.recv(&mut dgram) {
                Ok(n) => sys::write_all_fd(vsock.as_fd(), &encode_datagram(&dgram[..n])?)?,
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    retarget(&mut sock);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => crate::debug!("forward udp {port}: recv: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apex_agent_proto::forward::{encode_header, read_datagram, write_datagram};
    use std::net::TcpListener;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    /// The host end and a guest-side handler thread.
    fn connect(header: &[u8]) -> (UnixStream, std::thread::JoinHandle<()>) {
        let (host, guest) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || handle(Stream::from(OwnedFd::from(guest))));
        (&host).write_all(header).unwrap();
        (host, t)
    }

    fn answer_of(host: &UnixStream) -> String {
        host.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        read_line(&mut &*host, MAX_LINE).unwrap()
    }

    #[test]
    fn tcp_round_trip_with_half_close() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let echo = std::thread::spawn(move || {
            let (mut c, _) = server.accept().unwrap();
            let mut all = Vec::new();
            c.read_to_end(&mut all).unwrap(); // until the host's half-close
            c.write_all(&all).unwrap();
            c.write_all(b"|done").unwrap();
        });
        let (host, t) = connect(&encode_header(Proto::Tcp, port));
        assert_eq!(answer_of(&host), "ok");
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        (&host).write_all(&big).unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        (&host).read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), big.len() + 5);
        assert!(back.starts_with(&big) && back.ends_with(b"|done"));
        echo.join().unwrap();
        t.join().unwrap();
    }

    #[test]
    fn tcp_errors_are_answered() {
        // A port nobody listens on (bound, then closed).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (host, t) = connect(&encode_header(Proto::Tcp, port));
        let a = Answer::parse(&answer_of(&host)).unwrap();
        let Answer::Error(msg) = a else {
            panic!("{a:?}")
        };
        assert!(msg.contains("connection refused"), "{msg}");
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        t.join().unwrap();

        let (host, t) = connect(b"sctp 80\n");
        assert!(answer_of(&host).starts_with("error unknown protocol"));
        t.join().unwrap();
        let (host, t) = connect(b"tcp");
        host.shutdown(Shutdown::Write).unwrap();
        assert!(answer_of(&host).starts_with("error reading the forward header"));
        t.join().unwrap();
    }

    #[test]
    fn udp_datagrams_both_ways() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (host, t) = connect(&encode_header(Proto::Udp, port));
        assert_eq!(answer_of(&host), "ok");
        for payload in [&b"hello"[..], b"", &[9u8; 60_000]] {
            write_datagram(&mut &host, payload).unwrap();
            let mut buf = vec![0u8; 65536];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], payload);
            server.send_to(&buf[..n], from).unwrap();
            server.send_to(b"extra", from).unwrap();
            assert_eq!(read_datagram(&mut &host).unwrap().unwrap(), payload);
            assert_eq!(read_datagram(&mut &host).unwrap().unwrap(), b"extra");
        }
        drop(host);
        t.join().unwrap();
    }
}
