//! Real-VM network tests (QEMU microvm, TCG unless `APEX_ACCEL=kvm`): `set_network` inside
//! the guest, published-port forwarding over vsock (TCP and UDP), and a host tap.
//! Skipped with a message when the kernel, QEMU, the vsock backend, the guest init
//! (`scripts/build-guest.sh`) or mkfs.erofs are missing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use apex_agent_proto::api::{Dns, HostEntry, Interface, Route, SetNetwork};
use apex_agent_proto::forward::{read_datagram_async, write_datagram_async};
use apex_runtime::sandbox::{forward_at, locate_init, Process, Proto, Sandbox, SandboxConfig};
use apex_runtime::spec::ProcessSpec;
use apex_vm::{KernelAssets, Nic, NicBackend, QemuProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Busybox applets linked in the test rootfs.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "ip", "nc", "ping", "hostname", "httpd", "mkdir", "sleep",
];

/// A static UDP echo server: `udp-echo PORT [BIND_ADDR]`.
const UDP_ECHO_C: &str = r#"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    if (argc > 2 && inet_pton(AF_INET, argv[2], &a.sin_addr) != 1) return 2;
    if (bind(s, (struct sockaddr *)&a, sizeof a)) { perror("bind"); return 1; }
    for (;;) {
        char buf[65536];
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        if (n >= 0) sendto(s, buf, n, 0, (struct sockaddr *)&from, fl);
    }
}
"#;

struct Fixture {
    tmp: tempfile::TempDir,
    rootfs: PathBuf,
    has_udp_echo: bool,
}

fn skip(why: impl std::fmt::Display) -> Option<Fixture> {
    eprintln!("SKIP: {why}");
    None
}

/// A busybox rootfs (erofs) with the udp-echo helper when gcc can build it statically.
fn fixture() -> Option<Fixture> {
    if let Err(e) = KernelAssets::locate() {
        return skip(format!("{e:#}"));
    }
    if let Err(e) = QemuProvider::new() {
        return skip(format!("{e:#}"));
    }
    if let Err(e) = locate_init() {
        return skip(format!("{e:#}"));
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rootfs");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
    }
    let src = tmp.path().join("udp-echo.c");
    std::fs::write(&src, UDP_ECHO_C).unwrap();
    let has_udp_echo = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(bin.join("udp-echo"))
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success());
    if !has_udp_echo {
        eprintln!("no static gcc: UDP forwarding is not tested");
    }
    let rootfs = tmp.path().join("rootfs.erofs");
    match Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&rootfs)
        .arg(&dir)
        .status()
    {
        Ok(s) if s.success() => {}
        other => return skip(format!("mkfs.erofs: {other:?}")),
    }
    Some(Fixture {
        tmp,
        rootfs,
        has_udp_echo,
    })
}

async fn boot(fx: &Fixture, nics: Vec<Nic>) -> Sandbox {
    Sandbox::boot(SandboxConfig {
        home: fx.tmp.path().join("home"),
        fs: apex_runtime::fs::Filesystem {
            rootfs: fx.rootfs.clone(),
            ..Default::default()
        },
        hostname: "nettest".into(),
        cpus: 1,
        memory_mib: 256,
        boot_timeout: Duration::from_secs(60),
        nics,
    })
    .await
    .unwrap()
}

fn spec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: String::new(),
        terminal: false,
        init: false,
        tool: false,
    }
}

/// Runs `script` with `sh -c` in the guest: (exit code, stdout + stderr).
async fn sh(sb: &Sandbox, script: &str) -> (i32, String) {
    let mut p = sb.spawn(&spec(&["sh", "-c", script]), false).await.unwrap();
    let mut out = String::new();
    p.stdout.read_to_string(&mut out).await.unwrap();
    if let Some(e) = p.stderr.as_mut() {
        e.read_to_string(&mut out).await.unwrap();
    }
    let st = sb.agent().wait_process(&p.id).await.unwrap();
    (st.exit_code, out)
}

/// Starts a long-running guest process (its stdio is kept open, and so is the process).
async fn background(sb: &Sandbox, args: &[&str]) -> Process {
    sb.spawn(&spec(args), false).await.unwrap()
}

/// Retries a TCP forward until the guest server listens; through the [`Sandbox`] or, with
/// `via_state_dir`, through [`forward_at`] and the VM's state directory.
async fn forward_tcp(sb: &Sandbox, port: u16, via_state_dir: bool) -> tokio::net::UnixStream {
    let t0 = Instant::now();
    loop {
        let r = if via_state_dir {
            forward_at(sb.state_dir(), Proto::Tcp, port).await
        } else {
            sb.forward(Proto::Tcp, port).await
        };
        match r {
            Ok(s) => return s,
            Err(e) if t0.elapsed() < Duration::from_secs(20) => {
                assert!(format!("{e:#}").contains("refused"), "{e:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:#}\n{}", sb.console_tail(30)),
        }
    }
}

/// Sends `data` through an echo forward and reads it back concurrently.
async fn echo_through(s: tokio::net::UnixStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = s.into_split();
    let data = data.to_vec();
    let n = data.len();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w
    });
    let mut back = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut back))
        .await
        .expect("echo timed out")
        .unwrap();
    drop(writer.await.unwrap());
    back
}

/// Sends one datagram through a UDP forward until it comes back (the guest server may
/// not be bound yet, and UDP may drop the first datagrams).
async fn udp_round_trip(sb: &Sandbox, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = sb.forward(Proto::Udp, port).await.unwrap();
    for _ in 0..40 {
        write_datagram_async(&mut s, payload).await.unwrap();
        if let Ok(r) =
            tokio::time::timeout(Duration::from_millis(500), read_datagram_async(&mut s)).await
        {
            return r.unwrap().expect("forward closed");
        }
    }
    panic!(
        "no UDP echo from guest port {port}\n{}",
        sb.console_tail(30)
    );
}

const MAC: &str = "02:00:0a:00:02:0f";

#[tokio::test]
async fn user_network_set_network_and_port_forwards() {
    let Some(fx) = fixture() else { return };
    let t0 = Instant::now();
    let sb = boot(
        &fx,
        vec![Nic {
            id: "net0".into(),
            mac: "02:00:00:00:00:01".into(),
            backend: NicBackend::User,
        }],
    )
    .await;
    eprintln!("booted in {:?}", t0.elapsed());

    // Forwarding works without any network configuration (loopback is up from boot),
    // and a closed port is a clear error.
    let e = sb.forward(Proto::Tcp, 9).await.unwrap_err();
    assert!(
        format!("{e:#}").contains("127.0.0.1:9: connection refused"),
        "{e:#}"
    );

    // Unknown interface: an RPC error naming it; nothing is changed.
    let bad = SetNetwork {
        interfaces: vec![Interface {
            name: "eth9".into(),
            mac: None,
            addresses: vec!["10.0.9.2/24".into()],
            mtu: None,
        }],
        ..Default::default()
    };
    let e = sb.set_network(bad).await.unwrap_err();
    assert!(format!("{e:#}").contains("eth9 not found"), "{e:#}");

    let t1 = Instant::now();
    sb.set_network(SetNetwork {
        hostname: Some("web".into()),
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: Some(MAC.into()),
            addresses: vec!["10.0.2.15/24".into()],
            mtu: Some(1400),
        }],
        routes: vec![Route {
            dest: "0.0.0.0/0".into(),
            gateway: Some("10.0.2.2".into()),
            interface: None,
        }],
        dns: Dns {
            nameservers: vec!["10.0.2.3".into()],
            search: vec!["test".into()],
            options: vec!["ndots:0".into()],
        },
        hosts: vec![HostEntry {
            ip: "10.0.2.2".into(),
            names: vec!["gateway".into(), "gateway.test".into()],
        }],
    })
    .await
    .unwrap();
    eprintln!("set_network took {:?}", t1.elapsed());

    let (code, out) = sh(
        &sb,
        "ip addr show eth0; ip route; echo ---; cat /etc/resolv.conf; echo ---; \
         cat /etc/hosts; echo ---; hostname",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    for want in [
        "inet 10.0.2.15/24 brd 10.0.2.255",
        &format!("link/ether {MAC}"),
        "mtu 1400",
        "default via 10.0.2.2 dev eth0",
        "10.0.2.0/24 dev eth0",
        "---\nnameserver 10.0.2.3\nsearch test\noptions ndots:0\n---\n",
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         10.0.2.15\tweb\n10.0.2.2\tgateway gateway.test\n",
        "---\nweb\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(out.contains(",UP,") || out.contains("<UP,"), "{out}");

    // Outbound through user-mode networking: 10.0.2.2 is the host's loopback.
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let hport = host.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = host.accept().unwrap();
        let mut buf = [0u8; 6];
        c.read_exact(&mut buf).unwrap();
        c.write_all(b"hi\n").unwrap();
        buf
    });
    let (code, out) = sh(&sb, &format!("echo hello | nc 10.0.2.2 {hport}")).await;
    assert_eq!((code, out.as_str()), (0, "hi\n"));
    assert_eq!(&server.join().unwrap(), b"hello\n");

    // TCP forward to a server on 127.0.0.1 (busybox nc runs cat on the connection).
    let _echo = background(&sb, &["nc", "-l", "-p", "8080", "-e", "cat"]).await;
    let s = forward_tcp(&sb, 8080, false).await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let t2 = Instant::now();
    assert!(echo_through(s, &data).await == data, "TCP echo mismatch");
    eprintln!("200 kB TCP echo through vsock in {:?}", t2.elapsed());

    // TCP forward to a server bound to the eth0 address only: the guest falls back.
    let (code, out) = sh(&sb, "mkdir -p /www && echo it-works > /www/index.html").await;
    assert_eq!(code, 0, "{out}");
    let _httpd = background(&sb, &["httpd", "-f", "-p", "10.0.2.15:8081", "-h", "/www"]).await;
    let s = forward_tcp(&sb, 8081, true).await;
    let (mut r, mut w) = s.into_split();
    w.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_string(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert!(
        resp.starts_with("HTTP/1.") && resp.ends_with("it-works\n"),
        "{resp}"
    );

    // UDP forward, to 127.0.0.1 and (with the fallback) to the eth0 address only.
    if fx.has_udp_echo {
        let _u1 = background(&sb, &["udp-echo", "5353"]).await;
        assert_eq!(udp_round_trip(&sb, 5353, b"ping-udp").await, b"ping-udp");
        let big = vec![0x5a; 1200];
        assert_eq!(udp_round_trip(&sb, 5353, &big).await, big);
        let _u2 = background(&sb, &["udp-echo", "5354", "10.0.2.15"]).await;
        assert_eq!(udp_round_trip(&sb, 5354, b"eth0-only").await, b"eth0-only");
    }
    sb.shutdown(true).await;
}

/// Deletes the test tap on drop.
struct Tap(String);

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn tap_network_reaches_the_host_and_back() {
    if !rustix::process::geteuid().is_root() || !Path::new("/dev/net/tun").exists() {
        eprintln!("SKIP: creating a tap needs root and /dev/net/tun");
        return;
    }
    let Some(fx) = fixture() else { return };
    // A private /24 and tap name per test process, so concurrent runs do not collide.
    let pid = std::process::id();
    let net = format!("10.213.{}", pid % 250 + 1);
    let tap = Tap(format!("apxt{}", pid % 100_000));
    if !ip(&["tuntap", "add", "dev", &tap.0, "mode", "tap"]) {
        eprintln!("SKIP: ip tuntap add failed");
        return;
    }
    assert!(ip(&["addr", "add", &format!("{net}.1/24"), "dev", &tap.0]));
    assert!(ip(&["link", "set", &tap.0, "up"]));

    let sb = boot(
        &fx,
        vec![Nic {
            id: "net0".into(),
            mac: MAC.into(),
            backend: NicBackend::Tap {
                ifname: tap.0.clone(),
            },
        }],
    )
    .await;
    sb.set_network(SetNetwork {
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: None,
            addresses: vec![format!("{net}.2/24")],
            mtu: None,
        }],
        ..Default::default()
    })
    .await
    .unwrap();

    // guest -> host
    let (code, out) = sh(&sb, &format!("ping -c 1 -W 10 {net}.1")).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 packets received"), "{out}");

    // host -> guest, directly to the guest address (not through vsock).
    let _echo = background(&sb, &["nc", "-l", "-p", "8080", "-e", "cat"]).await;
    let addr: SocketAddr = format!("{net}.2:8080").parse().unwrap();
    let t0 = Instant::now();
    let mut c = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(c) => break c,
            Err(e) if t0.elapsed() < Duration::from_secs(20) => {
                eprintln!("connect {addr}: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("connect {addr}: {e}\n{}", sb.console_tail(30)),
        }
    };
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"over the tap\n").unwrap();
    let mut buf = [0u8; 13];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"over the tap\n");
    drop(c);
    sb.shutdown(true).await;
    drop(tap);
}
