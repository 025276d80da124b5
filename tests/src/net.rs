//! A ready-to-run environment for network tests: a loopback registry holding the
//! [`images::net`] image (busybox, `httpd`, `nslookup`, the static `netecho` TCP/UDP echo
//! server) and an Apex home that has pulled it.

use std::net::{TcpListener, UdpSocket};

use crate::images::{self, Compression};

/// Registry + net image + home; torn down on drop (the home first).
pub type NetEnv = crate::env::BusyboxEnv;

/// A [`NetEnv`] holding the [`images::net`] image.
pub fn net_env() -> NetEnv {
    NetEnv::with_image("net", |dir| images::net(dir, "latest", Compression::Gzip))
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind udp 127.0.0.1:0")
        .port()
}
