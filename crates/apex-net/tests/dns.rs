//! The DNS server on loopback, against hickory's resolver and raw DNS messages, with a
//! second local hickory server standing in for the upstream (no internet needed).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use apex_net::dns::{DnsConfig, DnsServer, Endpoint, Records, Scope, Upstream};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_proto::xfer::Protocol;
use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use hickory_server::authority::{Catalog, ZoneType};
use hickory_server::store::in_memory::InMemoryAuthority;
use hickory_server::ServerFuture;
use tokio::net::{TcpListener, UdpSocket};

const LOCALHOST: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

/// A stand-in upstream: an authoritative hickory server for `example.org.`.
async fn fake_upstream() -> (ServerFuture<Catalog>, SocketAddr) {
    let origin = name("example.org.");
    let mut auth = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
    let soa = SOA::new(
        name("ns.example.org."),
        name("admin.example.org."),
        1,
        60,
        60,
        60,
        60,
    );
    auth.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
    auth.upsert_mut(
        Record::from_rdata(
            name("upstream.example.org."),
            60,
            RData::A(A::new(192, 0, 2, 7)),
        ),
        1,
    );
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(auth)]);
    let udp = UdpSocket::bind(LOCALHOST).await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let mut server = ServerFuture::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5));
    (server, addr)
}

fn records() -> Records {
    let r = Records::new();
    r.add(
        "front",
        Endpoint {
            id: "c1".into(),
            names: vec!["web".into()],
            addr: Ipv4Addr::new(10, 213, 0, 2),
        },
    );
    r.add(
        "back",
        Endpoint {
            id: "c2".into(),
            names: vec!["db".into()],
            addr: Ipv4Addr::new(10, 213, 1, 2),
        },
    );
    r
}

fn resolver(server: SocketAddr, protocol: Protocol) -> TokioResolver {
    let mut group = NameServerConfigGroup::new();
    group.push(NameServerConfig::new(server, protocol));
    let mut opts = ResolverOpts::default();
    opts.attempts = 1;
    opts.timeout = Duration::from_secs(3);
    opts.cache_size = 0;
    TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], group),
        TokioConnectionProvider::default(),
    )
    .with_options(opts)
    .build()
}

async fn a_records(
    r: &TokioResolver,
    q: &str,
) -> Result<Vec<Ipv4Addr>, hickory_resolver::ResolveError> {
    let lookup = r.lookup(name(q), RecordType::A).await?;
    Ok(lookup
        .iter()
        .filter_map(|rd| match rd {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect())
}

/// Sends one query over UDP and returns the parsed response.
async fn raw(server: SocketAddr, q: &str, rtype: RecordType) -> Message {
    let mut msg = Message::new();
    msg.set_id(4242)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name(q), rtype));
    let sock = UdpSocket::bind(LOCALHOST).await.unwrap();
    sock.send_to(&msg.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("dns reply in time")
        .unwrap();
    let reply = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(reply.id(), 4242);
    reply
}

#[tokio::test]
async fn answers_local_names_and_forwards_the_rest() {
    let (mut upstream, upstream_addr) = fake_upstream().await;
    let recs = records();
    let server = DnsServer::bind(
        LOCALHOST,
        DnsConfig::new(
            Scope::Host,
            recs.clone(),
            Upstream::new(vec![upstream_addr]),
        ),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    for proto in [Protocol::Udp, Protocol::Tcp] {
        let r = resolver(addr, proto);
        assert_eq!(
            a_records(&r, "web.test.").await.unwrap(),
            [Ipv4Addr::new(10, 213, 0, 2)],
            "{proto}"
        );
        assert_eq!(
            a_records(&r, "web.").await.unwrap(),
            [Ipv4Addr::new(10, 213, 0, 2)]
        );
        assert_eq!(
            a_records(&r, "db.back.test.").await.unwrap(),
            [Ipv4Addr::new(10, 213, 1, 2)]
        );
        let err = a_records(&r, "nope.test.").await.unwrap_err();
        assert!(err.is_nx_domain(), "{err}");
        // Forwarded to the upstream stand-in.
        assert_eq!(
            a_records(&r, "upstream.example.org.").await.unwrap(),
            [Ipv4Addr::new(192, 0, 2, 7)]
        );
        let err = a_records(&r, "missing.example.org.").await.unwrap_err();
        assert!(err.is_nx_domain(), "{err}");
    }

    // Exact response codes and flags.
    let m = raw(addr, "web.test.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.authoritative());
    assert_eq!(m.answers().len(), 1);
    assert_eq!(m.answers()[0].name(), &name("web.test."));
    let m = raw(addr, "WEB.Test.", RecordType::AAAA).await;
    assert_eq!(
        m.response_code(),
        ResponseCode::NoError,
        "exists, no AAAA: NODATA not NXDOMAIN"
    );
    assert!(m.answers().is_empty());
    let m = raw(addr, "nope.test.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(m.authoritative());
    assert_eq!(m.name_servers().len(), 1, "SOA for negative caching");
    let m = raw(addr, "missing.example.org.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(!m.authoritative(), "forwarded answers are not ours");

    // Updates are visible immediately.
    recs.add(
        "front",
        Endpoint {
            id: "c9".into(),
            names: vec!["late".into()],
            addr: Ipv4Addr::new(10, 213, 0, 9),
        },
    );
    let r = resolver(addr, Protocol::Udp);
    assert_eq!(
        a_records(&r, "late.test.").await.unwrap(),
        [Ipv4Addr::new(10, 213, 0, 9)]
    );
    recs.remove_container("c9");
    assert!(a_records(&r, "late.test.")
        .await
        .unwrap_err()
        .is_nx_domain());

    server.shutdown().await;
    upstream.shutdown_gracefully().await.unwrap();
}

#[tokio::test]
async fn each_listening_address_serves_its_own_network() {
    let recs = records();
    let front = DnsServer::bind(
        LOCALHOST,
        DnsConfig::new(
            Scope::Network("front".into()),
            recs.clone(),
            Upstream::none(),
        ),
    )
    .await
    .unwrap();
    let back = DnsServer::bind(
        LOCALHOST,
        DnsConfig::new(
            Scope::Network("back".into()),
            recs.clone(),
            Upstream::none(),
        ),
    )
    .await
    .unwrap();
    let (rf, rb) = (
        resolver(front.local_addr(), Protocol::Udp),
        resolver(back.local_addr(), Protocol::Udp),
    );
    assert_eq!(
        a_records(&rf, "web.test.").await.unwrap(),
        [Ipv4Addr::new(10, 213, 0, 2)]
    );
    assert!(a_records(&rf, "db.test.").await.unwrap_err().is_nx_domain());
    assert!(a_records(&rf, "db.back.test.")
        .await
        .unwrap_err()
        .is_nx_domain());
    assert_eq!(
        a_records(&rb, "db.test.").await.unwrap(),
        [Ipv4Addr::new(10, 213, 1, 2)]
    );
    assert!(a_records(&rb, "web.test.")
        .await
        .unwrap_err()
        .is_nx_domain());
    front.shutdown().await;
    back.shutdown().await;
}

#[tokio::test]
async fn no_upstream_is_servfail_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("resolv.conf");
    std::fs::write(&conf, "search example.org\noptions ndots:1\n").unwrap();
    let upstream = Upstream::from_resolv_conf(&conf, &[]).unwrap();
    assert!(upstream.servers().is_empty());
    assert!(Upstream::from_resolv_conf(&dir.path().join("missing"), &[])
        .unwrap()
        .servers()
        .is_empty());
    // Our own address is never an upstream (that would loop).
    std::fs::write(&conf, "nameserver 127.0.0.1\nnameserver 127.0.0.53\n").unwrap();
    let own: SocketAddr = "127.0.0.1:53".parse().unwrap();
    assert_eq!(
        Upstream::from_resolv_conf(&conf, &[own]).unwrap().servers(),
        ["127.0.0.53:53".parse::<SocketAddr>().unwrap()]
    );

    let server = DnsServer::bind(LOCALHOST, DnsConfig::new(Scope::Host, records(), upstream))
        .await
        .unwrap();
    let m = raw(server.local_addr(), "example.com.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    // Local names still work.
    let m = raw(server.local_addr(), "web.test.", RecordType::A).await;
    assert_eq!(m.answers().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn binding_a_taken_port_fails_clearly() {
    let taken = UdpSocket::bind(LOCALHOST).await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = DnsServer::bind(
        addr,
        DnsConfig::new(Scope::Host, Records::new(), Upstream::none()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains(&addr.to_string()), "{err}");
}
