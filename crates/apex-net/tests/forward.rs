//! Published-port forwarders against a fake guest forward service on a Unix socket.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apex_net::forward::{
    handshake, Connector, Forwarder, PortSpec, Protocol, TcpForwarder, UdpForwarder, UdpOptions,
};
use apex_net::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket, UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

const REFUSED_PORT: u16 = 9;

/// A fake guest forward service: echoes TCP bytes, answers each UDP frame with
/// `echo:<payload>`, refuses port 9. Counts streams opened and closed by the host.
struct FakeGuest {
    path: PathBuf,
    _dir: tempfile::TempDir,
    opened: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for FakeGuest {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGuest {
    fn start() -> FakeGuest {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forward.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (opened, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (o, c) = (opened.clone(), closed.clone());
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (o, c) = (o.clone(), c.clone());
                tokio::spawn(async move {
                    let _ = serve_one(stream, &o).await;
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        FakeGuest {
            path,
            _dir: dir,
            opened,
            closed,
            task,
        }
    }

    fn connector(&self) -> Arc<dyn Connector> {
        let path = self.path.clone();
        Arc::new(move |proto: Protocol, port: u16| {
            let path = path.clone();
            async move {
                let mut s = UnixStream::connect(&path).await?;
                handshake(&mut s, proto, port).await?;
                Ok(s)
            }
        })
    }
}

async fn serve_one(stream: UnixStream, opened: &AtomicUsize) -> io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut header = String::new();
    stream.read_line(&mut header).await?;
    let (proto, port) = header.trim().split_once(' ').unwrap();
    let port: u16 = port.parse().unwrap();
    if port == REFUSED_PORT {
        stream.write_all(b"error nothing listens on 9\n").await?;
        return Ok(());
    }
    stream.write_all(b"ok\n").await?;
    opened.fetch_add(1, Ordering::SeqCst);
    match proto {
        "tcp" => {
            let (mut r, mut w) = tokio::io::split(stream);
            tokio::io::copy(&mut r, &mut w).await?;
            w.shutdown().await
        }
        "udp" => loop {
            let len = match stream.read_u16().await {
                Ok(l) => l as usize,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut payload = vec![0; len];
            stream.read_exact(&mut payload).await?;
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&payload);
            let mut frame = (reply.len() as u16).to_be_bytes().to_vec();
            frame.extend_from_slice(&reply);
            stream.write_all(&frame).await?;
        },
        other => panic!("unexpected protocol {other}"),
    }
}

fn spec(s: &str) -> PortSpec {
    s.parse().unwrap()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn tcp_round_trips_and_half_close() {
    let guest = FakeGuest::start();
    let fwd = TcpForwarder::bind(&spec("127.0.0.1:0:80"), guest.connector())
        .await
        .unwrap();
    let addr = fwd.local_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0);

    // Several concurrent clients, each with a sizeable payload; the client half-closes and
    // still reads everything back.
    let mut clients = Vec::new();
    for i in 0..8u8 {
        clients.push(tokio::spawn(async move {
            let data: Vec<u8> = (0..256 * 1024).map(|j| (j as u8) ^ i).collect();
            let s = TcpStream::connect(addr).await.unwrap();
            let (mut r, mut w) = s.into_split();
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&sent).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            writer.await.unwrap();
            assert_eq!(back, data);
        }));
    }
    for c in clients {
        timeout(Duration::from_secs(20), c).await.unwrap().unwrap();
    }
    assert_eq!(guest.opened.load(Ordering::SeqCst), 8);
    wait_for("guest streams closed", || {
        guest.closed.load(Ordering::SeqCst) == 8
    })
    .await;
    fwd.close().await;
}

#[tokio::test]
async fn tcp_port_in_use_names_the_address() {
    let guest = FakeGuest::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = TcpForwarder::bind(&spec(&format!("{port}:80")), guest.connector())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PortInUse { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot publish 127.0.0.1:{port}/tcp: address already in use")
    );
    // An address the host does not have.
    let err = TcpForwarder::bind(&spec("192.0.2.99:0:80"), guest.connector())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("192.0.2.99 is not an address of this host"),
        "{err}"
    );
}

#[tokio::test]
async fn tcp_close_stops_listening_and_ends_connections() {
    let guest = FakeGuest::start();
    let fwd = TcpForwarder::bind(&spec("127.0.0.1:0:80"), guest.connector())
        .await
        .unwrap();
    let addr = fwd.local_addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    fwd.close().await;
    // The open connection ends (EOF or reset), new ones are refused, and the port is free.
    let mut rest = Vec::new();
    let ended = timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(ended.is_err() || rest.is_empty());
    assert!(TcpStream::connect(addr).await.is_err());
    std::net::TcpListener::bind(addr).expect("port released");
    wait_for("guest stream closed", || {
        guest.closed.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn tcp_drop_also_stops() {
    let guest = FakeGuest::start();
    let fwd = TcpForwarder::bind(&spec("127.0.0.1:0:80"), guest.connector())
        .await
        .unwrap();
    let addr = fwd.local_addr();
    drop(fwd);
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "listener closed after drop");
}

#[tokio::test]
async fn guest_refusal_resets_the_client() {
    let guest = FakeGuest::start();
    // The handshake reports the guest's message.
    let mut s = UnixStream::connect(&guest.path).await.unwrap();
    let err = handshake(&mut s, Protocol::Tcp, REFUSED_PORT)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    assert!(err.to_string().contains("nothing listens on 9"), "{err}");

    let fwd = TcpForwarder::bind(&spec(&format!("0:{REFUSED_PORT}")), guest.connector())
        .await
        .unwrap();
    let mut c = TcpStream::connect(fwd.local_addr()).await.unwrap();
    let mut buf = Vec::new();
    let r = timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
        .await
        .unwrap();
    match r {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        Ok(n) => assert_eq!(n, 0),
    }
    // The forwarder keeps serving.
    assert!(TcpStream::connect(fwd.local_addr()).await.is_ok());
}

async fn udp_ask(sock: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Vec<u8> {
    sock.send_to(msg, to).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, from) = timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("udp reply in time")
        .unwrap();
    assert_eq!(from, to, "reply comes from the published address");
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn udp_sessions_per_client_with_framing() {
    let guest = FakeGuest::start();
    let fwd = UdpForwarder::bind(&spec("127.0.0.1:0:53/udp"), guest.connector())
        .await
        .unwrap();
    let addr = fwd.local_addr();
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(udp_ask(&a, addr, b"one").await, b"echo:one");
    assert_eq!(udp_ask(&b, addr, b"two").await, b"echo:two");
    assert_eq!(udp_ask(&a, addr, b"three").await, b"echo:three");
    // Boundaries survive, including empty and large datagrams.
    assert_eq!(udp_ask(&a, addr, b"").await, b"echo:");
    let big = vec![7u8; 60_000];
    let mut want = b"echo:".to_vec();
    want.extend_from_slice(&big);
    assert_eq!(udp_ask(&b, addr, &big).await, want);
    // Several in flight at once come back as separate datagrams.
    for i in 0..5 {
        a.send_to(format!("m{i}").as_bytes(), addr).await.unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        let (n, _) = timeout(Duration::from_secs(5), a.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(got, ["echo:m0", "echo:m1", "echo:m2", "echo:m3", "echo:m4"]);
    assert_eq!(
        guest.opened.load(Ordering::SeqCst),
        2,
        "one stream per client"
    );
    fwd.close().await;
    wait_for("streams closed on close()", || {
        guest.closed.load(Ordering::SeqCst) == 2
    })
    .await;
    UdpSocket::bind(addr).await.expect("port released");
}

#[tokio::test]
async fn udp_idle_sessions_time_out_and_reconnect() {
    let guest = FakeGuest::start();
    let opts = UdpOptions {
        idle_timeout: Duration::from_millis(200),
        ..UdpOptions::default()
    };
    let fwd = UdpForwarder::bind_with(&spec("127.0.0.1:0:53/udp"), guest.connector(), opts)
        .await
        .unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(udp_ask(&c, fwd.local_addr(), b"hi").await, b"echo:hi");
    wait_for("idle stream closed", || {
        guest.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(udp_ask(&c, fwd.local_addr(), b"again").await, b"echo:again");
    assert_eq!(
        guest.opened.load(Ordering::SeqCst),
        2,
        "a fresh stream after idling out"
    );
}

#[tokio::test]
async fn udp_port_in_use_and_dispatch() {
    let guest = FakeGuest::start();
    // A port free for TCP (an ephemeral UDP port may well be some other test's outgoing
    // TCP connection's), taken for UDP; the TCP listener goes just before the forwarder
    // binds it, and the kernel hands out ephemeral ports at random, not the last freed.
    let (taken, tcp_hold) = loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        if let Ok(u) = std::net::UdpSocket::bind(l.local_addr().unwrap()) {
            break (u, l);
        }
    };
    let port = taken.local_addr().unwrap().port();
    let err = Forwarder::bind(&spec(&format!("{port}:53/udp")), guest.connector())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot publish 127.0.0.1:{port}/udp: address already in use")
    );
    // The same port number is free for TCP.
    drop(tcp_hold);
    let tcp = Forwarder::bind(&spec(&format!("{port}:80/tcp")), guest.connector())
        .await
        .unwrap();
    assert!(matches!(tcp, Forwarder::Tcp(_)));
    assert_eq!(tcp.local_addr().port(), port);
    tcp.close().await;
}
