//! A ready-to-run environment for network tests: a loopback registry holding the
//! [`images::net`] image (busybox, `httpd`, `nslookup`, the static `netecho` TCP/UDP echo
//! server) and an Apex home that has pulled it.

use std::net::{TcpListener, UdpSocket};
use std::path::Path;

use crate::apex::ApexHome;
use crate::images::{self, Compression};
use crate::registry::{Registry, RegistryAuth};
use crate::skopeo;

/// Registry + net image + home; torn down on drop (the home first).
pub struct NetEnv {
    /// The home (drops first: containers, daemon and its network state go before the
    /// registry).
    pub home: ApexHome,
    /// `HOST/net:latest`.
    pub image: String,
    /// Scratch space for the test.
    pub tmp: tempfile::TempDir,
    /// The registry.
    pub registry: Registry,
}

impl NetEnv {
    /// Starts a registry, builds and pushes the net image, pulls it into a fresh home.
    pub fn new() -> Self {
        let registry = Registry::start(RegistryAuth::None).expect("registry");
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout =
            images::net(&tmp.path().join("net"), "latest", Compression::Gzip).expect("net image");
        let image = format!("{}/net:latest", registry.host());
        skopeo::push(&layout, "latest", &image, None).expect("skopeo push");
        let home = ApexHome::new();
        home.run(&["image", "pull", "-q", &image]).assert_ok();
        NetEnv {
            home,
            image,
            tmp,
            registry,
        }
    }

    /// The home's path.
    pub fn path(&self) -> &Path {
        self.home.path()
    }
}

impl Default for NetEnv {
    fn default() -> Self {
        Self::new()
    }
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
