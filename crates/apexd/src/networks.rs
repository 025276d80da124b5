//! Container networking: networks (a bridge, firewall set elements and a DNS server
//! each), container attachments (address, tap, guest configuration), DNS records and
//! published ports.
//!
//! Bridge mode needs CAP_NET_ADMIN. Without it (or with `APEX_NETWORK_MODE=user`) apexd
//! runs in user mode: each VM gets QEMU's slirp ([`USER_ADDR`] behind [`USER_GATEWAY`]),
//! containers cannot reach each other, and published ports still work over vsock.
//!
//! Several daemons (one per `$APEX_HOME`) can share a host: the links apexd creates carry
//! the alias `apex:<home>` so each knows its own (and links of deleted homes are swept),
//! changes to the shared `inet apex` table and subnet choices are serialized by a host-wide
//! lock ([`HOST_LOCK`]), and the default network falls back to a bridge named after the
//! home and a free subnet when `apex0`/10.213.0.0/24 are taken.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use apex_agent_proto::api;
use apex_net::bridge::{self, TapConfig};
use apex_net::dns::{DnsConfig, DnsServer, Endpoint, Records, Scope, Upstream};
use apex_net::firewall::{self, Firewall, FirewallNetwork};
use apex_net::forward::{Connector, Forwarder, PortSpec, Protocol};
use apex_net::ipam::{self, NetworkState, Subnet};
use apex_net::netlink::{InfoKind, Netlink};
use apex_runtime::sandbox::{forward_at, Proto};
use apex_shim::proto::{self, Request};
use apex_vm::{Nic, NicBackend};
use ipnet::Ipv4Net;

use crate::error::{Error, ErrorKind};
use crate::model::{NetworkCreate, NetworkEndpoint, NetworkInfo};
use crate::store::{Attachment, ContainerRecord, NetworkRecord, StateStore};

/// Guest address in user mode (QEMU slirp).
pub const USER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// Guest prefix length in user mode.
pub const USER_PREFIX: u8 = 24;
/// Gateway in user mode.
pub const USER_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// DNS server in user mode.
pub const USER_DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// Host DNS port unless `APEX_DNS_PORT` says otherwise (taken: an ephemeral one).
pub const DEFAULT_DNS_PORT: u16 = 5354;
/// Serializes subnet choices and `inet apex` changes between the daemons of one host.
pub const HOST_LOCK: &str = "/run/apex/network.lock";
/// The network a container joins unless told otherwise.
pub const NONE: &str = "none";
/// Alias prefix of the links apexd creates: `apex:<home>`.
const ALIAS_PREFIX: &str = "apex:";
/// Guest interface and QEMU netdev id of a container's NIC.
const GUEST_IF: &str = "eth0";
const NIC_ID: &str = "net0";

/// How the daemon networks containers.
enum Mode {
    /// A bridge per network, a tap per VM.
    Bridge { nl: Netlink, fw: Firewall },
    /// QEMU user-mode networking; why bridges are not used.
    User(String),
}

/// What a container's start needs from its network.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Recorded in the container record.
    pub attachment: Attachment,
    /// For the VM.
    pub nics: Vec<Nic>,
    /// For the guest.
    pub guest: api::SetNetwork,
}

/// The daemon's networking.
pub struct Networks {
    home: PathBuf,
    store: Arc<StateStore>,
    mode: Mode,
    records: Records,
    upstream: Upstream,
    dns: tokio::sync::Mutex<HashMap<String, DnsServer>>,
    host_dns: tokio::sync::Mutex<Option<DnsServer>>,
    host_dns_addr: Option<SocketAddr>,
    forwards: tokio::sync::Mutex<HashMap<String, Vec<Forwarder>>>,
    /// Serializes network creation and removal in this daemon.
    ops: tokio::sync::Mutex<()>,
    /// Networks whose bridge could not be set up, and why.
    unavailable: std::sync::Mutex<HashMap<String, String>>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn err(status: ErrorKind, msg: impl Into<String>) -> Error {
    Error::new(status, msg)
}

fn no_such_network(name: &str) -> Error {
    err(ErrorKind::NotFound, format!("no such network: {name}"))
}

/// The network a container record asks for (`None` means the default network).
pub fn network_of(config_network: Option<&str>) -> &str {
    config_network.unwrap_or(ipam::DEFAULT_NETWORK)
}

/// A container's guest MAC: locally administered unicast `02:` plus the first ten hex
/// digits of its id (ids are random, so collisions on one network are negligible).
pub fn mac_for(id: &str) -> String {
    let hex: Vec<u8> = id
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|b| b.to_ascii_lowercase())
        .chain(std::iter::repeat(b'0'))
        .take(10)
        .collect();
    let mut mac = String::from("02");
    for pair in hex.chunks(2) {
        mac.push(':');
        mac.push_str(std::str::from_utf8(pair).expect("hex digits"));
    }
    mac
}

/// Guest side of an attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestNet {
    /// Container name (DNS name).
    pub name: String,
    /// Network name.
    pub network: String,
    /// Its address.
    pub address: Ipv4Addr,
    /// Subnet (for the prefix and the on-link route).
    pub subnet: Ipv4Net,
    /// Default gateway.
    pub gateway: Ipv4Addr,
    /// Resolver.
    pub dns: Ipv4Addr,
    /// MTU.
    pub mtu: u32,
    /// MAC.
    pub mac: String,
    /// No default route.
    pub internal: bool,
    /// Resolve bare names under `.test` (bridge mode, where the resolver knows them).
    pub search_test: bool,
}

/// The `set_network` call configuring `g` as the guest's eth0: its address, MTU, a default
/// route through the gateway (internal networks: only the on-link route), the resolver,
/// and hosts entries for its own `.test` names.
pub fn guest_network(g: &GuestNet) -> api::SetNetwork {
    let route = if g.internal {
        api::Route {
            dest: g.subnet.trunc().to_string(),
            gateway: None,
            interface: Some(GUEST_IF.into()),
        }
    } else {
        api::Route {
            dest: "0.0.0.0/0".into(),
            gateway: Some(g.gateway.to_string()),
            interface: Some(GUEST_IF.into()),
        }
    };
    api::SetNetwork {
        hostname: None,
        interfaces: vec![api::Interface {
            name: GUEST_IF.into(),
            mac: Some(g.mac.clone()),
            addresses: vec![format!("{}/{}", g.address, g.subnet.prefix_len())],
            mtu: Some(g.mtu),
        }],
        routes: vec![route],
        dns: api::Dns {
            nameservers: vec![g.dns.to_string()],
            search: if g.search_test {
                vec![apex_net::dns::DOMAIN.into()]
            } else {
                vec![]
            },
            options: vec![],
        },
        hosts: vec![api::HostEntry {
            ip: g.address.to_string(),
            names: vec![
                format!("{}.{}", g.name, apex_net::dns::DOMAIN),
                format!("{}.{}.{}", g.name, g.network, apex_net::dns::DOMAIN),
            ],
        }],
    }
}

/// Parses `-p` specs (400 naming the bad one; also for the same host port twice).
pub fn parse_publish(specs: &[String]) -> Result<Vec<PortSpec>, Error> {
    let mut out: Vec<PortSpec> = Vec::new();
    for s in specs {
        let p: PortSpec = s
            .parse()
            .map_err(|e: apex_net::Error| err(ErrorKind::BadRequest, e.to_string()))?;
        if p.host_port != 0
            && out.iter().any(|o| {
                o.protocol == p.protocol && o.host_port == p.host_port && o.host_ip == p.host_ip
            })
        {
            return Err(err(
                ErrorKind::BadRequest,
                format!(
                    "port {}:{}/{} is published twice",
                    p.host_ip, p.host_port, p.protocol
                ),
            ));
        }
        out.push(p);
    }
    Ok(out)
}

/// Docker's `ls` form of a bound port: `127.0.0.1:8080->80/tcp`.
pub fn port_display(p: &PortSpec) -> String {
    let ip = match p.host_ip {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    format!("{ip}:{}->{}/{}", p.host_port, p.container_port, p.protocol)
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The alias marking links of the daemon at `home`.
fn owner_alias(home: &Path) -> String {
    format!("{ALIAS_PREFIX}{}", home.display())
}

/// 8 hex digits of a hash of `home` (FNV-1a, then a 64-bit finalizer so that paths
/// differing in one character differ everywhere), for names derived from it.
fn home_hash(home: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in home.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    format!("{h:016x}")[..8].to_string()
}

/// The default network's bridge when `apex0` is taken: `apex0-` + a hash of the home.
pub fn fallback_bridge(home: &Path) -> String {
    format!("{}-{}", ipam::DEFAULT_BRIDGE, home_hash(home))
}

fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut b = vec![0u8; n.div_ceil(2)];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    let s: String = b.iter().map(|x| format!("{x:02x}")).collect();
    s[..n].to_string()
}

/// Holds [`HOST_LOCK`] while alive.
struct HostLock(#[allow(dead_code)] std::fs::File);

async fn host_lock() -> Result<HostLock> {
    tokio::task::spawn_blocking(|| {
        let path = Path::new(HOST_LOCK);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(HostLock(f))
    })
    .await
    .map_err(|e| anyhow!("worker failed: {e}"))?
}

/// A connector to the guest's forward service of the container whose shim listens on
/// `sock`; the VM's directory is asked from the shim once.
fn connector(sock: PathBuf) -> Arc<dyn Connector> {
    let vm_dir: Arc<std::sync::Mutex<Option<PathBuf>>> = Arc::default();
    Arc::new(move |p: Protocol, port: u16| {
        let (sock, vm_dir) = (sock.clone(), vm_dir.clone());
        async move {
            let refused = |m: String| io::Error::new(io::ErrorKind::ConnectionRefused, m);
            let cached = vm_dir.lock().expect("vm_dir").clone();
            let dir = match cached {
                Some(d) => d,
                None => {
                    let st: proto::Status = proto::request(&sock, &Request::Status)
                        .await
                        .map_err(|e| refused(e.to_string()))?;
                    let d = st
                        .vm_dir
                        .ok_or_else(|| refused("the container's VM is not up yet".into()))?;
                    *vm_dir.lock().expect("vm_dir") = Some(d.clone());
                    d
                }
            };
            let proto = match p {
                Protocol::Tcp => Proto::Tcp,
                Protocol::Udp => Proto::Udp,
            };
            forward_at(&dir, proto, port)
                .await
                .map_err(|e| refused(format!("{e:#}")))
        }
    })
}

impl Networks {
    /// Starts networking for the daemon at `home`: bridge mode if possible (and not
    /// disabled by `APEX_NETWORK_MODE=user`), else user mode.
    pub async fn start(home: &Path, store: Arc<StateStore>) -> Arc<Self> {
        let forced = std::env::var("APEX_NETWORK_MODE").unwrap_or_default();
        match forced.as_str() {
            "user" => {
                tracing::info!("user-mode networking (APEX_NETWORK_MODE=user)");
                return Self::user_mode(home, store, "forced by APEX_NETWORK_MODE=user");
            }
            "" | "bridge" => {}
            other => tracing::warn!("ignoring APEX_NETWORK_MODE={other:?} (bridge or user)"),
        }
        match Self::start_bridge(home, store.clone()).await {
            Ok(n) => n,
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::warn!("bridge networking unavailable ({reason}); using user mode");
                Self::user_mode(home, store, &reason)
            }
        }
    }

    /// User-mode networking (no kernel changes); `reason` is reported in the status.
    pub fn user_mode(home: &Path, store: Arc<StateStore>, reason: &str) -> Arc<Self> {
        if let Ok(None) = store.get_network(ipam::DEFAULT_NETWORK) {
            let rec = NetworkRecord {
                state: NetworkState::default_network(),
                created: now(),
                labels: Default::default(),
            };
            if let Err(e) = store.put_network(&rec) {
                tracing::error!("cannot save the default network: {e:#}");
            }
        }
        Arc::new(Networks {
            home: home.to_path_buf(),
            store,
            mode: Mode::User(reason.to_string()),
            records: Records::new(),
            upstream: Upstream::none(),
            dns: Default::default(),
            host_dns: Default::default(),
            host_dns_addr: None,
            forwards: Default::default(),
            ops: Default::default(),
            unavailable: Default::default(),
        })
    }

    async fn start_bridge(home: &Path, store: Arc<StateStore>) -> Result<Arc<Self>> {
        if !has_net_admin() {
            bail!("no CAP_NET_ADMIN (bridges and taps need it; run apexd as root)");
        }
        if !Path::new("/dev/net/tun").exists() {
            bail!("/dev/net/tun is missing (no tap devices)");
        }
        let nl = Netlink::connect()?;
        let lock = host_lock().await?;
        sweep_stale_links(&nl).await;
        let records = Records::new();
        let (host_dns, host_dns_addr, upstream) = bind_host_dns(&records).await;
        let me = Networks {
            home: home.to_path_buf(),
            store,
            mode: Mode::Bridge {
                nl,
                fw: Firewall::default(),
            },
            records,
            upstream,
            dns: Default::default(),
            host_dns: tokio::sync::Mutex::new(host_dns),
            host_dns_addr,
            forwards: Default::default(),
            ops: Default::default(),
            unavailable: Default::default(),
        };
        // The default network must come up: if it cannot, bridges are not for us.
        me.ensure_default().await?;
        for mut rec in me.store.list_networks()? {
            if rec.state.name == ipam::DEFAULT_NETWORK {
                continue;
            }
            let name = rec.state.name.clone();
            if let Err(e) = me.bring_up(&mut rec).await {
                tracing::error!("network {name} is unavailable: {e:#}");
                me.unavailable
                    .lock()
                    .expect("unavailable")
                    .insert(name, format!("{e:#}"));
            }
        }
        if let Err(e) = me.sync_firewall().await {
            tracing::error!("firewall: {e:#} (containers may lack outbound access)");
        }
        drop(lock);
        tracing::info!(dns = ?me.host_dns_addr, "bridge networking ready");
        Ok(Arc::new(me))
    }

    /// Loads or creates the default network and brings it up, moving it to another bridge
    /// and subnet if its own were taken by someone else meanwhile.
    async fn ensure_default(&self) -> Result<()> {
        let Mode::Bridge { nl, .. } = &self.mode else {
            return Ok(());
        };
        let mine = owner_alias(&self.home);
        let stored = self.store.get_network(ipam::DEFAULT_NETWORK)?;
        let mut rec = match stored {
            Some(r) => r,
            None => {
                let state = self.pick_default(nl, &mine).await?;
                tracing::info!(bridge = state.bridge, subnet = %state.subnet(), "created the default network");
                let r = NetworkRecord {
                    state,
                    created: now(),
                    labels: Default::default(),
                };
                self.store.put_network(&r)?;
                r
            }
        };
        if let Err(conflict) = self.check_owner(&rec.state).await? {
            tracing::warn!("default network: {conflict}; moving it");
            let created = rec.created.clone();
            rec = NetworkRecord {
                state: self.pick_default(nl, &mine).await?,
                created,
                labels: Default::default(),
            };
            self.store.put_network(&rec)?;
        }
        self.bring_up(&mut rec).await
    }

    /// `apex0` with 10.213.0.0/24 if both are free, else a bridge named after the home and
    /// a free subnet of the pool.
    async fn pick_default(&self, nl: &Netlink, mine: &str) -> Result<NetworkState> {
        let mut in_use = nl.host_ipv4_subnets().await?;
        in_use.extend(
            self.store
                .list_networks()?
                .iter()
                .filter(|n| n.state.name != ipam::DEFAULT_NETWORK)
                .map(|n| n.state.subnet().net()),
        );
        let apex0_free = match nl.link(ipam::DEFAULT_BRIDGE).await? {
            None => true,
            Some(l) => l.alias.as_deref() == Some(mine),
        };
        let default_free = !in_use
            .iter()
            .any(|n| n.prefix_len() > 0 && overlaps(&ipam::DEFAULT_SUBNET, n));
        if apex0_free && default_free {
            return Ok(NetworkState::default_network());
        }
        let subnet = ipam::pick_subnet(ipam::DEFAULT_POOL, ipam::DEFAULT_PREFIX_LEN, &in_use)?;
        Ok(NetworkState::new(
            ipam::DEFAULT_NETWORK,
            &fallback_bridge(&self.home),
            subnet,
            false,
        ))
    }

    /// `Ok(Err(why))` if the network's bridge belongs to another daemon, or its subnet is
    /// now used on this host while its bridge is gone.
    async fn check_owner(&self, net: &NetworkState) -> Result<Result<(), String>> {
        let Mode::Bridge { nl, .. } = &self.mode else {
            return Ok(Ok(()));
        };
        match nl.link(&net.bridge).await? {
            Some(link) => {
                if let Some(a) = link.alias.as_deref() {
                    if a.starts_with(ALIAS_PREFIX) && a != owner_alias(&self.home) {
                        return Ok(Err(format!(
                            "bridge {} belongs to another apex home ({})",
                            net.bridge,
                            &a[ALIAS_PREFIX.len()..]
                        )));
                    }
                }
                Ok(Ok(()))
            }
            None => {
                let host = nl.host_ipv4_subnets().await?;
                if let Some(n) = host.iter().find(|n| net.subnet().overlaps(n)) {
                    return Ok(Err(format!(
                        "its subnet {} overlaps {n}, in use on this host",
                        net.subnet()
                    )));
                }
                Ok(Ok(()))
            }
        }
    }

    /// Creates the network's bridge (marked as ours) and starts its DNS server.
    async fn bring_up(&self, rec: &mut NetworkRecord) -> Result<()> {
        let Mode::Bridge { nl, .. } = &self.mode else {
            return Ok(());
        };
        if rec.state.name != ipam::DEFAULT_NETWORK {
            if let Err(why) = self.check_owner(&rec.state).await? {
                bail!("{why}");
            }
        }
        let index = bridge::ensure_network(nl, &rec.state).await?;
        nl.set_alias(index, &owner_alias(&self.home)).await?;
        self.start_dns(&rec.state).await;
        Ok(())
    }

    async fn start_dns(&self, net: &NetworkState) {
        let addr = SocketAddr::new(IpAddr::V4(net.gateway()), 53);
        let cfg = DnsConfig::new(
            Scope::Network(net.name.clone()),
            self.records.clone(),
            self.upstream.clone(),
        );
        let mut dns = self.dns.lock().await;
        if let Some(old) = dns.remove(&net.name) {
            old.shutdown().await;
        }
        match DnsServer::bind(addr, cfg).await {
            Ok(s) => {
                dns.insert(net.name.clone(), s);
            }
            Err(e) => tracing::error!(
                "network {}: no DNS server ({e}); containers will not resolve names",
                net.name
            ),
        }
    }

    /// Replaces the `inet apex` table's elements with our networks plus those of other
    /// daemons whose bridges still exist. Call with the host lock held.
    async fn sync_firewall(&self) -> Result<()> {
        let Mode::Bridge { nl, fw } = &self.mode else {
            return Ok(());
        };
        let ours: Vec<FirewallNetwork> = self
            .store
            .list_networks()?
            .iter()
            .filter(|n| !self.is_unavailable(&n.state.name))
            .map(|n| FirewallNetwork::from(&n.state))
            .collect();
        let mut nets = ours.clone();
        if let Some(listing) = fw.list().await? {
            let internal: HashSet<String> = firewall::set_elements(&listing, "internal_bridges")
                .into_iter()
                .collect();
            for b in firewall::set_elements(&listing, "bridges") {
                if nets.iter().any(|n| n.bridge == b) {
                    continue;
                }
                let Some(link) = nl.link(&b).await? else {
                    continue; // stale: its bridge is gone
                };
                if let Some(addr) = nl.ipv4_addresses(link.index).await?.first() {
                    nets.push(FirewallNetwork {
                        internal: internal.contains(&b),
                        bridge: b,
                        subnet: addr.trunc(),
                    });
                }
            }
        }
        fw.sync(&nets).await?;
        Ok(())
    }

    fn is_unavailable(&self, name: &str) -> bool {
        self.unavailable
            .lock()
            .expect("unavailable")
            .contains_key(name)
    }

    /// `bridge` or `user`; for user mode, why.
    pub fn mode(&self) -> (&'static str, Option<String>) {
        match &self.mode {
            Mode::Bridge { .. } => ("bridge", None),
            Mode::User(why) => ("user", Some(why.clone())),
        }
    }

    /// Where the host DNS server listens.
    pub fn host_dns(&self) -> Option<SocketAddr> {
        self.host_dns_addr
    }

    fn info(&self, rec: &NetworkRecord, containers: &[ContainerRecord]) -> NetworkInfo {
        let st = &rec.state;
        NetworkInfo {
            name: st.name.clone(),
            bridge: match self.mode {
                Mode::Bridge { .. } => st.bridge.clone(),
                Mode::User(_) => String::new(),
            },
            subnet: st.subnet().to_string(),
            gateway: st.gateway().to_string(),
            internal: st.internal,
            created: rec.created.clone(),
            labels: rec.labels.clone(),
            containers: containers
                .iter()
                .filter_map(|c| {
                    let a = c.network.as_ref()?;
                    (a.network == st.name).then(|| NetworkEndpoint {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        address: a.address.clone(),
                    })
                })
                .collect(),
        }
    }

    /// `GET /v1/networks`.
    pub fn list(&self) -> Result<Vec<NetworkInfo>, Error> {
        let containers = self.store.list()?;
        Ok(self
            .store
            .list_networks()?
            .iter()
            .map(|n| self.info(n, &containers))
            .collect())
    }

    /// `GET /v1/networks/{id}`.
    pub fn inspect(&self, name: &str) -> Result<NetworkInfo, Error> {
        let rec = self
            .store
            .get_network(name)?
            .ok_or_else(|| no_such_network(name))?;
        Ok(self.info(&rec, &self.store.list()?))
    }

    /// Checks that a container may join `network` (`none` always may).
    pub fn check_exists(&self, network: &str) -> Result<(), Error> {
        if network == NONE || self.store.get_network(network)?.is_some() {
            Ok(())
        } else {
            Err(no_such_network(network))
        }
    }

    /// `POST /v1/networks`.
    pub async fn create(&self, req: NetworkCreate) -> Result<NetworkInfo, Error> {
        let name = req.name.trim().to_string();
        if !crate::containers::valid_name(&name) {
            return Err(err(
                ErrorKind::BadRequest,
                format!("invalid network name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"),
            ));
        }
        if name == NONE {
            return Err(err(
                ErrorKind::BadRequest,
                "\"none\" is reserved (it means no network)",
            ));
        }
        let subnet = req
            .subnet
            .as_deref()
            .map(str::parse::<Subnet>)
            .transpose()
            .map_err(|e| err(ErrorKind::BadRequest, e.to_string()))?;
        let _ops = self.ops.lock().await;
        let existing = self.store.list_networks()?;
        if existing.iter().any(|n| n.state.name == name) {
            return Err(err(
                ErrorKind::Conflict,
                format!("network {name} already exists"),
            ));
        }
        let ours: Vec<Ipv4Net> = existing.iter().map(|n| n.state.subnet().net()).collect();
        if let Some(s) = subnet {
            if let Some(o) = existing
                .iter()
                .find(|n| s.overlaps(&n.state.subnet().net()))
            {
                return Err(err(
                    ErrorKind::Conflict,
                    format!(
                        "subnet {s} overlaps network {} ({})",
                        o.state.name,
                        o.state.subnet()
                    ),
                ));
            }
        }
        let _host = match &self.mode {
            Mode::Bridge { .. } => Some(host_lock().await?),
            Mode::User(_) => None,
        };
        let host: Vec<Ipv4Net> = match &self.mode {
            Mode::Bridge { nl, .. } => nl.host_ipv4_subnets().await.map_err(anyhow::Error::from)?,
            Mode::User(_) => vec![],
        };
        let subnet = match subnet {
            Some(s) => {
                if let Some(h) = host.iter().find(|h| h.prefix_len() > 0 && s.overlaps(h)) {
                    return Err(err(
                        ErrorKind::Conflict,
                        format!("subnet {s} overlaps {h}, in use on this host"),
                    ));
                }
                s
            }
            None => {
                let in_use: Vec<Ipv4Net> = host.iter().chain(&ours).copied().collect();
                ipam::pick_subnet(ipam::DEFAULT_POOL, ipam::DEFAULT_PREFIX_LEN, &in_use)
                    .map_err(|e| err(ErrorKind::Conflict, e.to_string()))?
            }
        };
        let bridge = format!("{}{}", bridge::BRIDGE_PREFIX, random_hex(9));
        let mut rec = NetworkRecord {
            state: NetworkState::new(&name, &bridge, subnet, req.internal),
            created: now(),
            labels: req.labels.clone(),
        };
        if let Mode::Bridge { nl, fw } = &self.mode {
            let up = async {
                self.bring_up(&mut rec).await?;
                fw.add_network(&FirewallNetwork::from(&rec.state)).await?;
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = up {
                if let Some(s) = self.dns.lock().await.remove(&name) {
                    s.shutdown().await;
                }
                let _ = bridge::remove_bridge(nl, &bridge).await;
                return Err(anyhow!("cannot create network {name}: {e:#}").into());
            }
        }
        self.store.put_network(&rec)?;
        tracing::info!(name, bridge, subnet = %subnet, internal = req.internal, "network created");
        Ok(self.info(&rec, &[]))
    }

    /// Names of the containers configured to use `name`.
    fn users(&self, name: &str) -> Result<Vec<String>> {
        Ok(self
            .store
            .list()?
            .into_iter()
            .filter(|c| network_of(c.config.network.as_deref()) == name)
            .map(|c| c.name)
            .collect())
    }

    /// `DELETE /v1/networks/{id}`.
    pub async fn remove(&self, name: &str) -> Result<(), Error> {
        if name == ipam::DEFAULT_NETWORK {
            return Err(err(
                ErrorKind::Forbidden,
                "the default network cannot be removed",
            ));
        }
        let _ops = self.ops.lock().await;
        let rec = self
            .store
            .get_network(name)?
            .ok_or_else(|| no_such_network(name))?;
        let users = self.users(name)?;
        if !users.is_empty() {
            return Err(err(
                ErrorKind::Conflict,
                format!(
                    "network {name} is in use by container(s) {}: remove them first",
                    users.join(", ")
                ),
            ));
        }
        self.teardown(&rec.state).await;
        self.store.delete_network(name)?;
        self.unavailable.lock().expect("unavailable").remove(name);
        tracing::info!(name, "network removed");
        Ok(())
    }

    /// Stops a network's DNS server and removes its firewall elements and bridge.
    async fn teardown(&self, net: &NetworkState) {
        if let Some(s) = self.dns.lock().await.remove(&net.name) {
            s.shutdown().await;
        }
        self.records.remove_network(&net.name);
        if let Mode::Bridge { nl, fw } = &self.mode {
            let _host = host_lock().await;
            if let Err(e) = fw.remove_network(&FirewallNetwork::from(net)).await {
                tracing::warn!("network {}: firewall: {e}", net.name);
            }
            let mine = nl
                .link(&net.bridge)
                .await
                .ok()
                .flatten()
                .is_some_and(|l| l.alias.as_deref() == Some(owner_alias(&self.home).as_str()));
            if mine {
                if let Err(e) = bridge::remove_bridge(nl, &net.bridge).await {
                    tracing::warn!("network {}: {e}", net.name);
                }
            }
        }
    }

    /// `POST /v1/networks/prune`: removes the networks no container uses.
    pub async fn prune(&self) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for n in self.store.list_networks()? {
            let name = n.state.name;
            if name == ipam::DEFAULT_NETWORK || !self.users(&name)?.is_empty() {
                continue;
            }
            if self.remove(&name).await.is_ok() {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Binds a container's published ports, all or none; the bound specs (real ports).
    /// A port in use is a 409 naming it.
    pub async fn publish(
        &self,
        id: &str,
        specs: &[PortSpec],
        shim_sock: &Path,
    ) -> Result<Vec<PortSpec>, Error> {
        self.unpublish(id).await;
        if specs.is_empty() {
            return Ok(vec![]);
        }
        let conn = connector(shim_sock.to_path_buf());
        let mut bound: Vec<Forwarder> = Vec::new();
        for s in specs {
            match Forwarder::bind(s, conn.clone()).await {
                Ok(f) => bound.push(f),
                Err(e) => {
                    for f in bound {
                        f.close().await;
                    }
                    let status = match e {
                        apex_net::Error::PortInUse { .. } => ErrorKind::Conflict,
                        apex_net::Error::Io { ref source, .. }
                            if source.kind() == io::ErrorKind::AddrNotAvailable =>
                        {
                            ErrorKind::BadRequest
                        }
                        apex_net::Error::Io { ref source, .. }
                            if source.kind() == io::ErrorKind::PermissionDenied =>
                        {
                            ErrorKind::Forbidden
                        }
                        _ => ErrorKind::Internal,
                    };
                    return Err(err(status, e.to_string()));
                }
            }
        }
        let out = bound
            .iter()
            .zip(specs)
            .map(|(f, s)| PortSpec {
                host_port: f.local_addr().port(),
                ..*s
            })
            .collect();
        self.forwards.lock().await.insert(id.to_string(), bound);
        Ok(out)
    }

    /// Closes a container's published ports (they are free when this returns).
    pub async fn unpublish(&self, id: &str) {
        let old = self.forwards.lock().await.remove(id);
        for f in old.into_iter().flatten() {
            f.close().await;
        }
    }

    /// Allocates the container's address (kept until it is removed) and creates its tap;
    /// `None` for `--network none`.
    pub async fn attach(&self, rec: &ContainerRecord) -> Result<Option<Prepared>, Error> {
        let name = network_of(rec.config.network.as_deref());
        if name == NONE {
            return Ok(None);
        }
        let net = self
            .store
            .get_network(name)?
            .ok_or_else(|| no_such_network(name))?;
        if let Some(why) = self.unavailable.lock().expect("unavailable").get(name) {
            return Err(err(
                ErrorKind::Unavailable,
                format!("network {name} is unavailable: {why}"),
            ));
        }
        let mac = mac_for(&rec.id);
        let st = &net.state;
        match &self.mode {
            Mode::User(_) => {
                let g = GuestNet {
                    name: rec.name.clone(),
                    network: name.to_string(),
                    address: USER_ADDR,
                    subnet: Ipv4Net::new(USER_ADDR, USER_PREFIX).expect("valid prefix"),
                    gateway: USER_GATEWAY,
                    dns: USER_DNS,
                    mtu: ipam::DEFAULT_MTU,
                    mac: mac.clone(),
                    internal: st.internal,
                    search_test: false,
                };
                Ok(Some(Prepared {
                    attachment: Attachment {
                        network: name.to_string(),
                        address: USER_ADDR.to_string(),
                        mac: mac.clone(),
                        tap: String::new(),
                    },
                    nics: vec![Nic {
                        id: NIC_ID.into(),
                        mac,
                        backend: NicBackend::User,
                    }],
                    guest: Self::customize(rec, guest_network(&g)),
                }))
            }
            Mode::Bridge { nl, .. } => {
                let id = rec.id.clone();
                let addr = self
                    .store
                    .update_network(name, |n| Ok(n.state.ipam.allocate(&id)?))?
                    .ok_or_else(|| no_such_network(name))?;
                let tap = bridge::tap_name(&rec.id);
                let cfg = TapConfig {
                    name: tap.clone(),
                    bridge: st.bridge.clone(),
                    mtu: st.mtu,
                    owner: Some(rustix::process::geteuid().as_raw()),
                };
                let made = async {
                    let index = bridge::ensure_tap(nl, &cfg).await?;
                    nl.set_alias(index, &owner_alias(&self.home)).await
                }
                .await;
                if let Err(e) = made {
                    let _ = bridge::remove_tap(nl, &tap).await;
                    return Err(anyhow!("cannot create tap {tap}: {e}").into());
                }
                let g = GuestNet {
                    name: rec.name.clone(),
                    network: name.to_string(),
                    address: addr,
                    subnet: st.subnet().net(),
                    gateway: st.gateway(),
                    dns: st.gateway(),
                    mtu: st.mtu,
                    mac: mac.clone(),
                    internal: st.internal,
                    search_test: true,
                };
                Ok(Some(Prepared {
                    attachment: Attachment {
                        network: name.to_string(),
                        address: addr.to_string(),
                        mac: mac.clone(),
                        tap: tap.clone(),
                    },
                    nics: vec![Nic {
                        id: NIC_ID.into(),
                        mac,
                        backend: NicBackend::Tap { ifname: tap },
                    }],
                    guest: Self::customize(rec, guest_network(&g)),
                }))
            }
        }
    }

    /// The guest network configuration of `rec` with its own settings applied: DNS
    /// servers, search domains and options instead of the network's, extra hosts.
    fn customize(rec: &ContainerRecord, mut g: api::SetNetwork) -> api::SetNetwork {
        let c = &rec.config;
        if !c.dns.is_empty() {
            g.dns.nameservers = c.dns.clone();
        }
        g.dns.search.extend(c.dns_search.iter().cloned());
        g.dns.options.extend(c.dns_options.iter().cloned());
        for h in &c.extra_hosts {
            if let Some((name, ip)) = h.split_once(':') {
                let ip = if ip == "host-gateway" {
                    g.routes
                        .iter()
                        .find_map(|r| r.gateway.clone())
                        .unwrap_or_else(|| ip.to_string())
                } else {
                    ip.to_string()
                };
                g.hosts.push(api::HostEntry {
                    ip,
                    names: vec![name.to_string()],
                });
            }
        }
        g
    }

    /// Makes a running container resolvable by name on its network.
    pub fn register(&self, rec: &ContainerRecord) {
        let (Mode::Bridge { .. }, Some(a)) = (&self.mode, &rec.network) else {
            return;
        };
        let Ok(addr) = a.address.parse::<Ipv4Addr>() else {
            return;
        };
        self.records.add(
            &a.network,
            Endpoint {
                id: rec.id.clone(),
                names: [rec.name.clone(), rec.id[..12.min(rec.id.len())].to_string()]
                    .into_iter()
                    .chain(rec.config.aliases.iter().cloned())
                    .collect(),
                addr,
            },
        );
    }

    /// Drops a container's DNS records (before it registers under a new name).
    pub fn forget(&self, id: &str) {
        self.records.remove_container(id);
    }

    /// After a container stopped: its ports, DNS records and tap go (the address stays).
    pub async fn detach(&self, id: &str, attachment: Option<&Attachment>) {
        self.unpublish(id).await;
        self.records.remove_container(id);
        if let (Mode::Bridge { nl, .. }, Some(a)) = (&self.mode, attachment) {
            if !a.tap.is_empty() {
                if let Err(e) = bridge::remove_tap(nl, &a.tap).await {
                    tracing::warn!(tap = a.tap, "cannot remove tap: {e}");
                }
            }
        }
    }

    /// After a container was removed: [`Networks::detach`] and its address is freed.
    pub async fn release(&self, rec: &ContainerRecord) {
        self.detach(&rec.id, rec.network.as_ref()).await;
        let mut nets = vec![network_of(rec.config.network.as_deref()).to_string()];
        if let Some(a) = &rec.network {
            nets.push(a.network.clone());
        }
        nets.dedup();
        for n in nets {
            if n == NONE {
                continue;
            }
            let id = rec.id.clone();
            if let Err(e) = self
                .store
                .update_network(&n, |net| Ok(net.state.ipam.release_owner(&id)))
            {
                tracing::warn!(network = n, "cannot release the address: {e:#}");
            }
        }
    }

    /// After an apexd restart, for a container that still runs: its ports and DNS records
    /// again (its tap survived).
    pub async fn reattach(&self, rec: &ContainerRecord, shim_sock: &Path) {
        self.register(rec);
        let specs = if rec.ports.is_empty() {
            match parse_publish(&rec.config.publish) {
                Ok(s) => s,
                Err(_) => return,
            }
        } else {
            rec.ports.clone()
        };
        if let Err(e) = self.publish(&rec.id, &specs, shim_sock).await {
            tracing::error!(
                id = &rec.id[..12.min(rec.id.len())],
                "cannot publish ports again: {}",
                e.message()
            );
        }
    }

    /// Graceful stop: published ports and DNS servers go; with `cleanup` also our taps,
    /// bridges and firewall elements (and the table once no daemon has any left).
    pub async fn shutdown(&self, cleanup: bool) {
        let ids: Vec<String> = self.forwards.lock().await.keys().cloned().collect();
        for id in ids {
            self.unpublish(&id).await;
        }
        for (_, s) in self.dns.lock().await.drain() {
            s.shutdown().await;
        }
        if let Some(s) = self.host_dns.lock().await.take() {
            s.shutdown().await;
        }
        let Mode::Bridge { nl, fw } = &self.mode else {
            return;
        };
        if !cleanup {
            return;
        }
        let _host = host_lock().await;
        let mine = owner_alias(&self.home);
        let links = nl.links().await.unwrap_or_default();
        // Taps first (deleting a bridge only detaches them), then bridges.
        let mut ours: Vec<_> = links
            .into_iter()
            .filter(|l| l.alias.as_deref() == Some(mine.as_str()))
            .collect();
        ours.sort_by_key(|l| l.kind == Some(InfoKind::Bridge));
        for l in ours {
            if let Err(e) = bridge::remove_bridge(nl, &l.name).await {
                tracing::warn!("cannot remove {}: {e}", l.name);
            }
        }
        for n in self.store.list_networks().unwrap_or_default() {
            if let Err(e) = fw.remove_network(&FirewallNetwork::from(&n.state)).await {
                tracing::warn!("firewall: {e}");
            }
        }
        let empty = match fw.list().await {
            Ok(Some(l)) => firewall::set_elements(&l, "bridges").is_empty(),
            Ok(None) => false,
            Err(_) => false,
        };
        if empty {
            if let Err(e) = fw.remove_table().await {
                tracing::warn!("firewall: {e}");
            }
        }
        tracing::info!("network cleanup done");
    }
}

/// Whether this process has CAP_NET_ADMIN (bit 12 of `CapEff` in /proc/self/status).
fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// Deletes the links of apex homes that no longer exist (their alias names the home).
async fn sweep_stale_links(nl: &Netlink) {
    let Ok(links) = nl.links().await else {
        return;
    };
    let mut stale: Vec<_> = links
        .into_iter()
        .filter(|l| {
            l.alias
                .as_deref()
                .and_then(|a| a.strip_prefix(ALIAS_PREFIX))
                .is_some_and(|home| !Path::new(home).exists())
        })
        .collect();
    stale.sort_by_key(|l| l.kind == Some(InfoKind::Bridge));
    for l in stale {
        tracing::info!(link = l.name, "removing a link of a deleted apex home");
        let _ = bridge::remove_bridge(nl, &l.name).await;
    }
}

/// Binds the host DNS server on 127.0.0.1 (`APEX_DNS_PORT`, default [`DEFAULT_DNS_PORT`],
/// an ephemeral port if that is taken; 0: ephemeral). Returns the server with its records,
/// its address and the upstream resolvers all servers share.
async fn bind_host_dns(records: &Records) -> (Option<DnsServer>, Option<SocketAddr>, Upstream) {
    let env = std::env::var("APEX_DNS_PORT").ok();
    let explicit = env.as_deref().and_then(|p| p.trim().parse::<u16>().ok());
    if env.is_some() && explicit.is_none() {
        tracing::warn!("ignoring APEX_DNS_PORT={env:?}: not a port number");
    }
    let port = explicit.unwrap_or(DEFAULT_DNS_PORT);
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let exclude = [SocketAddr::new(lo, port)];
    let upstream = Upstream::from_system(&exclude).unwrap_or_else(|e| {
        tracing::warn!("no upstream DNS: {e}");
        Upstream::none()
    });
    let cfg = DnsConfig::new(Scope::Host, records.clone(), upstream.clone());
    let mut tries = vec![port];
    if explicit.is_none() {
        tries.push(0);
    }
    for p in tries {
        match DnsServer::bind(SocketAddr::new(lo, p), cfg.clone()).await {
            Ok(s) => {
                let addr = s.local_addr();
                return (Some(s), Some(addr), upstream);
            }
            Err(e) => tracing::warn!("host DNS on port {p}: {e}"),
        }
    }
    (None, None, upstream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_derive_from_the_id() {
        let id = "3f9a1c0e7b2d4a5f9e8d7c6b5a4938273f9a1c0e7b2d4a5f9e8d7c6b5a493827";
        assert_eq!(mac_for(id), "02:3f:9a:1c:0e:7b");
        assert!(apex_vm::qemu::valid_mac(&mac_for(id)));
        assert_eq!(mac_for("AB"), "02:ab:00:00:00:00");
        assert_ne!(mac_for(id), mac_for(&id.replace("3f9a", "3f9b")));
    }

    fn guest(internal: bool) -> GuestNet {
        GuestNet {
            name: "web".into(),
            network: "front".into(),
            address: "10.213.1.2".parse().unwrap(),
            subnet: "10.213.1.0/24".parse().unwrap(),
            gateway: "10.213.1.1".parse().unwrap(),
            dns: "10.213.1.1".parse().unwrap(),
            mtu: 1500,
            mac: "02:aa:bb:cc:dd:ee".into(),
            internal,
            search_test: true,
        }
    }

    #[test]
    fn set_network_for_a_bridge_network() {
        let n = guest_network(&guest(false));
        assert_eq!(n.interfaces.len(), 1);
        let i = &n.interfaces[0];
        assert_eq!(i.name, "eth0");
        assert_eq!(i.mac.as_deref(), Some("02:aa:bb:cc:dd:ee"));
        assert_eq!(i.addresses, ["10.213.1.2/24"]);
        assert_eq!(i.mtu, Some(1500));
        assert_eq!(
            n.routes,
            [api::Route {
                dest: "0.0.0.0/0".into(),
                gateway: Some("10.213.1.1".into()),
                interface: Some("eth0".into()),
            }]
        );
        assert_eq!(n.dns.nameservers, ["10.213.1.1"]);
        assert_eq!(n.dns.search, ["test"]);
        assert_eq!(n.hosts.len(), 1);
        assert_eq!(n.hosts[0].ip, "10.213.1.2");
        assert_eq!(n.hosts[0].names, ["web.test", "web.front.test"]);
        assert_eq!(n.hostname, None);
    }

    #[test]
    fn internal_networks_get_only_the_on_link_route() {
        let n = guest_network(&guest(true));
        assert_eq!(
            n.routes,
            [api::Route {
                dest: "10.213.1.0/24".into(),
                gateway: None,
                interface: Some("eth0".into()),
            }]
        );
        assert!(n.routes.iter().all(|r| r.gateway.is_none()));
    }

    #[test]
    fn user_mode_guest_config() {
        let mut g = guest(false);
        g.address = USER_ADDR;
        g.subnet = Ipv4Net::new(USER_ADDR, USER_PREFIX).unwrap();
        g.gateway = USER_GATEWAY;
        g.dns = USER_DNS;
        g.search_test = false;
        let n = guest_network(&g);
        assert_eq!(n.interfaces[0].addresses, ["10.0.2.15/24"]);
        assert_eq!(n.routes[0].gateway.as_deref(), Some("10.0.2.2"));
        assert_eq!(n.dns.nameservers, ["10.0.2.3"]);
        assert!(n.dns.search.is_empty());
    }

    #[test]
    fn publish_specs_are_validated() {
        let ok =
            parse_publish(&["8080:80".into(), "0.0.0.0:53:53/udp".into(), "9000".into()]).unwrap();
        assert_eq!(ok.len(), 3);
        assert_eq!(
            ok[0].host_ip,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            "loopback by default"
        );
        assert_eq!(port_display(&ok[0]), "127.0.0.1:8080->80/tcp");
        assert_eq!(port_display(&ok[1]), "0.0.0.0:53->53/udp");
        for (bad, needle) in [
            ("8080:80/sctp", "sctp is not supported"),
            ("80-90:80", "port ranges are not supported"),
            ("x:80", "invalid host port"),
            ("8080:0", "container port must be 1-65535"),
        ] {
            let e = parse_publish(&[bad.into()]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BadRequest, "{bad}");
            assert!(e.message().contains(needle), "{bad}: {}", e.message());
            assert!(e.message().contains(bad), "{bad}: {}", e.message());
        }
        let dup = parse_publish(&["8080:80".into(), "8080:81".into()]).unwrap_err();
        assert_eq!(dup.kind(), ErrorKind::BadRequest);
        assert!(
            dup.message().contains("published twice"),
            "{}",
            dup.message()
        );
        // Same port, other protocol or address: fine.
        parse_publish(&[
            "8080:80".into(),
            "8080:80/udp".into(),
            "127.0.0.2:8080:80".into(),
        ])
        .unwrap();
        // Ephemeral host ports never clash.
        parse_publish(&["80".into(), "80".into()]).unwrap();
    }

    #[test]
    fn fallback_names_fit_and_differ_per_home() {
        let a = fallback_bridge(Path::new("/tmp/apex-home-a"));
        let b = fallback_bridge(Path::new("/tmp/apex-home-b"));
        assert_ne!(a, b);
        assert!(a.starts_with("apex0-"));
        bridge::validate_ifname(&a).unwrap();
        assert_eq!(a, fallback_bridge(Path::new("/tmp/apex-home-a")), "stable");
        // One character apart: no shared prefix beyond chance.
        let (x, y) = (
            home_hash(Path::new("/tmp/h2")),
            home_hash(Path::new("/tmp/h5")),
        );
        assert_ne!(x[..4], y[..4], "{x} {y}");
    }
}
