//! The DNS server: container names from [`Records`], everything else forwarded upstream.
//!
//! One [`DnsServer`] per listening address: each network's gateway port 53 (scope
//! [`Scope::Network`], so a container only sees names on its own networks) and one for the
//! host on 127.0.0.1 (scope [`Scope::Host`], every network). Answers:
//! - `<name>`, `<name>.test`, `<name>.<network>.test`: A records of matching containers;
//!   other types for an existing name get an empty NOERROR answer.
//! - any other `*.test`: NXDOMAIN.
//! - everything else: forwarded to the upstream resolvers ([`Upstream`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Header, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::xfer::Protocol as DnsProtocol;
use hickory_proto::ProtoErrorKind;
use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use tokio::net::{TcpListener, UdpSocket};

use crate::{Error, Result};

/// The pseudo top-level domain of container names.
pub const DOMAIN: &str = "test";
/// Where the host's upstream resolvers are listed.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// TTL of answers about containers (short: containers come and go).
pub const DEFAULT_TTL: u32 = 5;
/// Idle timeout of DNS-over-TCP connections.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// One container's presence on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Container id: ties a container's endpoints on several networks together.
    pub id: String,
    /// Names it answers to (container name, aliases); case-insensitive.
    pub names: Vec<String>,
    /// Its address on that network.
    pub addr: Ipv4Addr,
}

/// Container names per network. Cheap to clone (shared); every [`DnsServer`] given a clone
/// sees updates immediately.
#[derive(Clone, Debug, Default)]
pub struct Records {
    inner: Arc<RwLock<HashMap<String, Vec<Endpoint>>>>,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// What a query resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A local name; its addresses (empty for the `test.` apex itself).
    Local(Vec<Ipv4Addr>),
    /// An unknown `.test` name.
    NxDomain,
    /// Not ours: ask upstream.
    Forward,
}

/// Which names a server answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The host: names on every network.
    Host,
    /// A network's gateway: names on that network, plus names on the other networks of the
    /// container that is asking.
    Network(String),
}

impl Records {
    /// No records.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Vec<Endpoint>>> {
        // A panic while holding the lock cannot leave the map half-updated (each update is a
        // single insert/retain), so a poisoned lock is still consistent.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Vec<Endpoint>>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or replaces, by id) a container's endpoint on `network`.
    pub fn add(&self, network: &str, endpoint: Endpoint) {
        let endpoint = Endpoint {
            names: endpoint.names.iter().map(|n| normalize(n)).collect(),
            ..endpoint
        };
        let mut map = self.write();
        let list = map.entry(normalize(network)).or_default();
        list.retain(|e| e.id != endpoint.id);
        list.push(endpoint);
    }

    /// Removes container `id` from `network`.
    pub fn remove(&self, network: &str, id: &str) {
        if let Some(list) = self.write().get_mut(&normalize(network)) {
            list.retain(|e| e.id != id);
        }
    }

    /// Removes container `id` from every network.
    pub fn remove_container(&self, id: &str) {
        for list in self.write().values_mut() {
            list.retain(|e| e.id != id);
        }
    }

    /// Forgets a whole network.
    pub fn remove_network(&self, network: &str) {
        self.write().remove(&normalize(network));
    }

    /// Addresses of `name` on `network`.
    pub fn lookup(&self, network: &str, name: &str) -> Vec<Ipv4Addr> {
        let map = self.read();
        lookup_in(&map, &normalize(network), &normalize(name))
    }

    /// Resolves `qname` for a client at `client` asking a server with `scope`.
    pub fn resolve(&self, scope: &Scope, client: IpAddr, qname: &str) -> Resolution {
        let map = self.read();
        let qname = normalize(qname);
        let visible: Vec<&str> = match scope {
            Scope::Host => map.keys().map(String::as_str).collect(),
            Scope::Network(net) => {
                let net = normalize(net);
                let mut v: Vec<&str> = Vec::new();
                if let Some((key, list)) = map.get_key_value(&net) {
                    v.push(key);
                    // The asking container's other networks.
                    if let Some(me) = list.iter().find(|e| IpAddr::V4(e.addr) == client) {
                        for (k, l) in map.iter() {
                            if k != key && l.iter().any(|e| e.id == me.id) {
                                v.push(k);
                            }
                        }
                    }
                }
                v
            }
        };
        let union = |name: &str| -> Vec<Ipv4Addr> {
            let mut out: Vec<Ipv4Addr> = Vec::new();
            for net in &visible {
                for a in lookup_in(&map, net, name) {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
            }
            out
        };
        if qname == DOMAIN {
            return Resolution::Local(Vec::new());
        }
        if let Some(rest) = qname.strip_suffix(&format!(".{DOMAIN}")) {
            if let Some((name, net)) = rest.rsplit_once('.') {
                if visible.contains(&net) {
                    let addrs = lookup_in(&map, net, name);
                    if !addrs.is_empty() {
                        return Resolution::Local(addrs);
                    }
                }
            }
            let addrs = union(rest);
            return if addrs.is_empty() {
                Resolution::NxDomain
            } else {
                Resolution::Local(addrs)
            };
        }
        if !qname.contains('.') {
            let addrs = union(&qname);
            if !addrs.is_empty() {
                return Resolution::Local(addrs);
            }
        }
        Resolution::Forward
    }
}

fn lookup_in(map: &HashMap<String, Vec<Endpoint>>, network: &str, name: &str) -> Vec<Ipv4Addr> {
    map.get(network)
        .map(|list| {
            list.iter()
                .filter(|e| e.names.iter().any(|n| n == name))
                .map(|e| e.addr)
                .collect()
        })
        .unwrap_or_default()
}

/// Upstream resolvers for names that are not ours. Cheap to clone; clones share one cache.
#[derive(Clone)]
pub struct Upstream {
    servers: Vec<SocketAddr>,
    resolver: Option<TokioResolver>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("servers", &self.servers)
            .finish()
    }
}

impl Upstream {
    /// Forwards to `servers` (UDP, with TCP on truncation).
    pub fn new(servers: Vec<SocketAddr>) -> Self {
        if servers.is_empty() {
            return Self::none();
        }
        let mut group = NameServerConfigGroup::with_capacity(servers.len() * 2);
        for s in &servers {
            group.push(NameServerConfig::new(*s, DnsProtocol::Udp));
            group.push(NameServerConfig::new(*s, DnsProtocol::Tcp));
        }
        let config = ResolverConfig::from_parts(None, vec![], group);
        let mut opts = ResolverOpts::default();
        opts.use_hosts_file = ResolveHosts::Never;
        opts.preserve_intermediates = true;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        opts.edns0 = true;
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(opts)
                .build();
        Upstream {
            servers,
            resolver: Some(resolver),
        }
    }

    /// No upstream: forwarded queries get SERVFAIL.
    pub fn none() -> Self {
        Upstream {
            servers: Vec::new(),
            resolver: None,
        }
    }

    /// The `nameserver` lines of a resolv.conf file (port 53). A missing file or one without
    /// nameservers gives [`Upstream::none`]. Entries equal to `exclude` (our own listening
    /// addresses: forwarding there would loop) are dropped; loopback stubs such as
    /// systemd-resolved's 127.0.0.53 are kept, since apexd runs in the host's namespace
    /// where they work.
    pub fn from_resolv_conf(path: &Path, exclude: &[SocketAddr]) -> Result<Self> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(
                    "{} not found: names outside .test will not resolve",
                    path.display()
                );
                return Ok(Self::none());
            }
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        let servers: Vec<SocketAddr> = parse_resolv_conf(&text)?
            .into_iter()
            .filter(|s| {
                !exclude
                    .iter()
                    .any(|x| x == s || (x.ip().is_unspecified() && x.port() == s.port()))
            })
            .collect();
        if servers.is_empty() {
            tracing::warn!("no usable nameserver in {}", path.display());
        }
        Ok(Self::new(servers))
    }

    /// [`Upstream::from_resolv_conf`] on the host's [`RESOLV_CONF`].
    pub fn from_system(exclude: &[SocketAddr]) -> Result<Self> {
        Self::from_resolv_conf(Path::new(RESOLV_CONF), exclude)
    }

    /// The upstream servers.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }
}

/// The nameservers of resolv.conf text, port 53. Uses the `resolv-conf` crate (the parser
/// hickory itself uses) so options, comments and scoped IPv6 addresses are handled.
pub fn parse_resolv_conf(text: &[u8]) -> Result<Vec<SocketAddr>> {
    let conf = resolv_conf::Config::parse(text).map_err(|e| Error::Io {
        context: "cannot parse resolv.conf".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    })?;
    Ok(conf
        .nameservers
        .iter()
        .map(|ip| SocketAddr::new(IpAddr::from(ip), 53))
        .collect())
}

/// Everything a [`DnsServer`] needs besides its address.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Which names this server answers.
    pub scope: Scope,
    /// The shared name table.
    pub records: Records,
    /// Where other names go.
    pub upstream: Upstream,
    /// TTL of local answers.
    pub ttl: u32,
}

impl DnsConfig {
    /// A config with [`DEFAULT_TTL`].
    pub fn new(scope: Scope, records: Records, upstream: Upstream) -> Self {
        DnsConfig {
            scope,
            records,
            upstream,
            ttl: DEFAULT_TTL,
        }
    }
}

/// A running DNS server on one address (UDP and TCP, same port). Stops when dropped or
/// [`DnsServer::shutdown`].
pub struct DnsServer {
    local_addr: SocketAddr,
    server: ServerFuture<Handler>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl DnsServer {
    /// Binds UDP and TCP on `addr` (port 0: the same free port for both) and starts serving.
    pub async fn bind(addr: SocketAddr, config: DnsConfig) -> Result<Self> {
        let (udp, tcp) = bind_pair(addr).await?;
        let local_addr = udp
            .local_addr()
            .map_err(|e| Error::io("cannot read the DNS socket address", e))?;
        let mut server = ServerFuture::new(Handler { config });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT);
        Ok(DnsServer { local_addr, server })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and waits for the sockets to close.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::debug!("dns server {} shutdown: {e}", self.local_addr);
        }
    }
}

async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener)> {
    let ctx = |proto: &str| format!("cannot listen for DNS on {addr}/{proto}");
    // With port 0 the UDP port may be taken for TCP; try a few.
    let tries = if addr.port() == 0 { 10 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| Error::io(ctx("udp"), e))?;
        let port = udp
            .local_addr()
            .map_err(|e| Error::io(ctx("udp"), e))?
            .port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::io(ctx("tcp"), last.expect("at least one try")))
}

struct Handler {
    config: DnsConfig,
}

fn soa_record(ttl: u32) -> Record {
    let zone = Name::from_str("test.").expect("valid name");
    let soa = SOA::new(
        Name::from_str("ns.test.").expect("valid name"),
        Name::from_str("hostmaster.test.").expect("valid name"),
        1,
        3600,
        600,
        86400,
        ttl,
    );
    Record::from_rdata(zone, ttl, RData::SOA(soa))
}

impl Handler {
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        rh: &mut R,
    ) -> std::io::Result<ResponseInfo> {
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(req_edns) = request.edns() {
            let mut edns = Edns::new();
            edns.set_max_payload(req_edns.max_payload().max(512));
            builder.edns(edns);
        }
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(true);
        if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
            return rh
                .send_response(builder.error_msg(request.header(), ResponseCode::NotImp))
                .await;
        }
        let Ok(info) = request.request_info() else {
            return rh
                .send_response(builder.error_msg(request.header(), ResponseCode::FormErr))
                .await;
        };
        let qname: Name = info.query.name().into();
        let qtype = info.query.query_type();
        let none: Vec<Record> = Vec::new();
        match self
            .config
            .records
            .resolve(&self.config.scope, request.src().ip(), &qname.to_ascii())
        {
            Resolution::Local(addrs) => {
                header.set_authoritative(true);
                let answers: Vec<Record> = if matches!(qtype, RecordType::A | RecordType::ANY) {
                    addrs
                        .iter()
                        .map(|a| {
                            Record::from_rdata(qname.clone(), self.config.ttl, RData::A(A(*a)))
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let soa = if answers.is_empty() {
                    vec![soa_record(self.config.ttl)]
                } else {
                    Vec::new()
                };
                rh.send_response(builder.build(
                    header,
                    answers.iter(),
                    none.iter(),
                    soa.iter(),
                    none.iter(),
                ))
                .await
            }
            Resolution::NxDomain => {
                header.set_authoritative(true);
                header.set_response_code(ResponseCode::NXDomain);
                let soa = [soa_record(self.config.ttl)];
                rh.send_response(builder.build(
                    header,
                    none.iter(),
                    none.iter(),
                    soa.iter(),
                    none.iter(),
                ))
                .await
            }
            Resolution::Forward => {
                let Some(resolver) = &self.config.upstream.resolver else {
                    header.set_response_code(ResponseCode::ServFail);
                    return rh.send_response(builder.build_no_records(header)).await;
                };
                match resolver.lookup(qname.clone(), qtype).await {
                    Ok(lookup) => {
                        let answers: Vec<Record> = lookup.records().to_vec();
                        rh.send_response(builder.build(
                            header,
                            answers.iter(),
                            none.iter(),
                            none.iter(),
                            none.iter(),
                        ))
                        .await
                    }
                    Err(e) => {
                        let mut soa = Vec::new();
                        match e.proto().map(|p| p.kind()) {
                            Some(ProtoErrorKind::NoRecordsFound {
                                response_code,
                                soa: upstream_soa,
                                ..
                            }) => {
                                header.set_response_code(*response_code);
                                if let Some(s) = upstream_soa {
                                    soa.push((**s).clone().into_record_of_rdata());
                                }
                            }
                            _ => {
                                tracing::debug!(%qname, ?qtype, "upstream lookup failed: {e}");
                                header.set_response_code(ResponseCode::ServFail);
                            }
                        }
                        rh.send_response(builder.build(
                            header,
                            none.iter(),
                            none.iter(),
                            soa.iter(),
                            none.iter(),
                        ))
                        .await
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        match self.respond(request, &mut response_handle).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!("cannot send DNS response to {}: {e}", request.src());
                let mut header = Header::new();
                header.set_response_code(ResponseCode::ServFail);
                header.into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn ep(id: &str, names: &[&str], addr: &str) -> Endpoint {
        Endpoint {
            id: id.into(),
            names: names.iter().map(|s| s.to_string()).collect(),
            addr: ip(addr),
        }
    }

    fn records() -> Records {
        let r = Records::new();
        r.add("front", ep("c1", &["web", "www"], "10.213.1.2"));
        r.add("front", ep("c2", &["Proxy"], "10.213.1.3"));
        r.add("back", ep("c2", &["proxy"], "10.213.2.3"));
        r.add("back", ep("c3", &["db"], "10.213.2.4"));
        r
    }

    #[test]
    fn names_resolve_within_the_network() {
        let r = records();
        let front = Scope::Network("front".into());
        let web_client: IpAddr = "10.213.1.2".parse().unwrap();
        for q in ["web", "web.", "WEB.test.", "web.front.test", "www.test"] {
            assert_eq!(
                r.resolve(&front, web_client, q),
                Resolution::Local(vec![ip("10.213.1.2")]),
                "{q}"
            );
        }
        // db is on another network: invisible, so NXDOMAIN under .test and forwarded bare.
        assert_eq!(
            r.resolve(&front, web_client, "db.test"),
            Resolution::NxDomain
        );
        assert_eq!(
            r.resolve(&front, web_client, "db.back.test"),
            Resolution::NxDomain
        );
        assert_eq!(r.resolve(&front, web_client, "db"), Resolution::Forward);
        assert_eq!(
            r.resolve(&front, web_client, "nope.test"),
            Resolution::NxDomain
        );
        assert_eq!(
            r.resolve(&front, web_client, "example.com"),
            Resolution::Forward
        );
        assert_eq!(
            r.resolve(&front, web_client, "test."),
            Resolution::Local(vec![])
        );
    }

    #[test]
    fn multi_network_container_sees_all_its_networks() {
        let r = records();
        let front = Scope::Network("front".into());
        let proxy: IpAddr = "10.213.1.3".parse().unwrap();
        assert_eq!(
            r.resolve(&front, proxy, "db"),
            Resolution::Local(vec![ip("10.213.2.4")])
        );
        assert_eq!(
            r.resolve(&front, proxy, "db.back.test"),
            Resolution::Local(vec![ip("10.213.2.4")])
        );
        // Its own name: both addresses, asked network's first.
        assert_eq!(
            r.resolve(&front, proxy, "proxy.test"),
            Resolution::Local(vec![ip("10.213.1.3"), ip("10.213.2.3")])
        );
        assert_eq!(
            r.resolve(&front, proxy, "proxy.back.test"),
            Resolution::Local(vec![ip("10.213.2.3")])
        );
    }

    #[test]
    fn host_scope_sees_everything() {
        let r = records();
        let host: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            r.resolve(&Scope::Host, host, "db.test"),
            Resolution::Local(vec![ip("10.213.2.4")])
        );
        assert_eq!(
            r.resolve(&Scope::Host, host, "web.front.test"),
            Resolution::Local(vec![ip("10.213.1.2")])
        );
        assert_eq!(
            r.resolve(&Scope::Host, host, "web.back.test"),
            Resolution::NxDomain
        );
        assert_eq!(
            r.resolve(&Scope::Host, host, "unknown.test"),
            Resolution::NxDomain
        );
    }

    #[test]
    fn updates_are_shared_and_removals_work() {
        let r = records();
        let clone = r.clone();
        clone.add("front", ep("c1", &["web"], "10.213.1.9"));
        assert_eq!(r.lookup("front", "web"), vec![ip("10.213.1.9")]);
        assert!(r.lookup("front", "www").is_empty(), "replaced by id");
        r.remove("front", "c1");
        assert!(r.lookup("front", "web").is_empty());
        r.remove_container("c2");
        assert!(r.lookup("back", "proxy").is_empty());
        r.remove_network("back");
        assert!(r.lookup("back", "db").is_empty());
    }

    #[test]
    fn resolv_conf_parsing() {
        let text = b"# comment\nsearch example.org\nnameserver 127.0.0.53\nnameserver 192.0.2.1\noptions edns0\n";
        let servers = parse_resolv_conf(text).unwrap();
        assert_eq!(
            servers,
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "192.0.2.1:53".parse().unwrap()
            ]
        );
        assert!(parse_resolv_conf(b"search x\n").unwrap().is_empty());
    }
}
