//! Network setup: loopback and hostname at boot, and the `set_network` call (interfaces,
//! addresses, routes over rtnetlink; hostname; `/etc/hosts`, `/etc/hostname` and
//! `/etc/resolv.conf` in the container root).

use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use apex_agent_proto::api;

use crate::mounts::{mkdir_p, CallError};
use crate::rtnl::{parse_mac, Cidr, RouteSpec, Rtnl};
use crate::{modules, sys};

/// Module group holding the virtio-net driver (see [`modules::load_group`]).
pub const NET_MODULE_GROUP: &str = "net";
/// How long an interface may take to appear after the driver is loaded.
const LINK_WAIT: Duration = Duration::from_secs(5);

/// Brings interface `name` up (SIOCGIFFLAGS, then SIOCSIFFLAGS with `IFF_UP`).
pub fn link_up(name: &str) -> io::Result<()> {
    // SAFETY: socket(2) has no memory-safety preconditions.
    let fd =
        sys::cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket succeeded; we own the new fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; the ioctl fills ifru_flags.
    sys::cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: SIOCGIFFLAGS initialized the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; the kernel only reads `req`.
    sys::cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}

/// sethostname(2).
pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer/length pair describes `name`'s bytes.
    sys::cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

/// The current hostname (from `/proc/sys/kernel/hostname`).
fn current_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// One interface of a validated [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfacePlan {
    /// Guest interface name.
    pub name: String,
    /// MAC to set.
    pub mac: Option<[u8; 6]>,
    /// MTU to set.
    pub mtu: Option<u32>,
    /// Addresses to add.
    pub addresses: Vec<Cidr>,
}

/// One route of a validated [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// Destination.
    pub dest: Cidr,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Outgoing interface name.
    pub interface: Option<String>,
}

/// A `set_network` request, fully validated before anything is changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// New hostname.
    pub hostname: Option<String>,
    /// Interfaces, in order.
    pub interfaces: Vec<IfacePlan>,
    /// Routes, in order.
    pub routes: Vec<RoutePlan>,
    /// `/etc/resolv.conf` contents, when the request has any DNS settings.
    pub resolv_conf: Option<String>,
    /// Extra `/etc/hosts` lines.
    pub hosts: Vec<(IpAddr, Vec<String>)>,
}

fn check_word(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{what} {s:?} must be 1-253 characters without spaces"
        ));
    }
    Ok(())
}

/// Checks a hostname: 1-64 chars of `[A-Za-z0-9.-]`, not starting with `-` or `.`.
pub fn valid_hostname(h: &str) -> bool {
    (1..=64).contains(&h.len())
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with(['-', '.'])
}

/// Validates a request into a [`Plan`]; the error is an `INVALID_PARAMS` message.
pub fn plan(net: &api::SetNetwork) -> Result<Plan, String> {
    if let Some(h) = &net.hostname {
        if !valid_hostname(h) {
            return Err(format!(
                "hostname {h:?} must be 1-64 characters of [A-Za-z0-9.-]"
            ));
        }
    }
    let mut interfaces = Vec::new();
    for i in &net.interfaces {
        let name_ok = (1..16).contains(&i.name.len())
            && i.name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
        if !name_ok {
            return Err(format!("bad interface name {:?}", i.name));
        }
        if interfaces.iter().any(|p: &IfacePlan| p.name == i.name) {
            return Err(format!("interface {} listed twice", i.name));
        }
        let mac = i
            .mac
            .as_deref()
            .map(parse_mac)
            .transpose()
            .map_err(|e| format!("{}: {e}", i.name))?;
        if let Some(mtu) = i.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(format!("{}: MTU {mtu} out of range (68-65535)", i.name));
            }
        }
        let addresses = i
            .addresses
            .iter()
            .map(|a| Cidr::parse(a, false))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: address {e}", i.name))?;
        interfaces.push(IfacePlan {
            name: i.name.clone(),
            mac,
            mtu: i.mtu,
            addresses,
        });
    }
    let mut routes = Vec::new();
    for r in &net.routes {
        let dest = Cidr::parse(&r.dest, true).map_err(|e| format!("route destination {e}"))?;
        let gateway = r
            .gateway
            .as_deref()
            .map(|g| {
                g.parse::<IpAddr>()
                    .map_err(|_| format!("route to {}: gateway {g:?} is not an IP address", r.dest))
            })
            .transpose()?;
        if gateway.is_some_and(|g| g.is_ipv4() != dest.addr.is_ipv4()) {
            return Err(format!(
                "route to {}: gateway {} is of another address family",
                r.dest,
                r.gateway.as_deref().unwrap_or_default()
            ));
        }
        if gateway.is_none() && r.interface.is_none() {
            return Err(format!(
                "route to {}: needs a gateway or an interface",
                r.dest
            ));
        }
        routes.push(RoutePlan {
            dest,
            gateway,
            interface: r.interface.clone(),
        });
    }
    let dns = &net.dns;
    let resolv_conf =
        if dns.nameservers.is_empty() && dns.search.is_empty() && dns.options.is_empty() {
            None
        } else {
            let mut s = String::new();
            for ns in &dns.nameservers {
                let ip: IpAddr = ns
                    .parse()
                    .map_err(|_| format!("nameserver {ns:?} is not an IP address"))?;
                let _ = writeln!(s, "nameserver {ip}");
            }
            for d in &dns.search {
                check_word("search domain", d)?;
            }
            for o in &dns.options {
                check_word("resolver option", o)?;
            }
            if !dns.search.is_empty() {
                let _ = writeln!(s, "search {}", dns.search.join(" "));
            }
            if !dns.options.is_empty() {
                let _ = writeln!(s, "options {}", dns.options.join(" "));
            }
            Some(s)
        };
    let mut hosts = Vec::new();
    for h in &net.hosts {
        let ip: IpAddr =
            h.ip.parse()
                .map_err(|_| format!("hosts entry {:?} is not an IP address", h.ip))?;
        if h.names.is_empty() {
            return Err(format!("hosts entry {ip} has no names"));
        }
        for n in &h.names {
            check_word("host name", n)?;
        }
        hosts.push((ip, h.names.clone()));
    }
    Ok(Plan {
        hostname: net.hostname.clone(),
        interfaces,
        routes,
        resolv_conf,
        hosts,
    })
}

/// `/etc/hosts`: the localhost entries, the hostname (on the container's first address if
/// it has one, else on 127.0.0.1), then the requested entries.
pub fn hosts_file(hostname: &str, own: Option<IpAddr>, extra: &[(IpAddr, Vec<String>)]) -> String {
    let mut s = String::new();
    match own {
        Some(_) => s.push_str("127.0.0.1\tlocalhost\n"),
        None => {
            let _ = writeln!(s, "127.0.0.1\tlocalhost {hostname}");
        }
    }
    s.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = own {
        let _ = writeln!(s, "{ip}\t{hostname}");
    }
    for (ip, names) in extra {
        let _ = writeln!(s, "{ip}\t{}", names.join(" "));
    }
    s
}

/// Replaces `root/etc/<name>` (an existing symlink is replaced, not followed).
fn replace_etc_file(root: &Path, name: &str, contents: &str) -> io::Result<()> {
    let etc = root.join("etc");
    mkdir_p(&etc, 0o755)?;
    let path = etc.join(name);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        }
        _ => {}
    }
    std::fs::write(&path, contents)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Writes the container's `/etc/hosts`, `/etc/hostname` (when the hostname changes) and
/// `/etc/resolv.conf` (when the request has DNS settings).
pub fn write_files(root: &Path, plan: &Plan) -> Result<(), CallError> {
    let hostname = plan.hostname.clone().unwrap_or_else(current_hostname);
    let own = plan
        .interfaces
        .first()
        .and_then(|i| i.addresses.first())
        .map(|c| c.addr);
    let os = |e: io::Error| CallError::os(e, "set_network".into());
    if plan.hostname.is_some() {
        replace_etc_file(root, "hostname", &format!("{hostname}\n")).map_err(os)?;
    }
    replace_etc_file(root, "hosts", &hosts_file(&hostname, own, &plan.hosts)).map_err(os)?;
    if let Some(r) = &plan.resolv_conf {
        replace_etc_file(root, "resolv.conf", r).map_err(os)?;
    }
    Ok(())
}

/// virtio network devices (`/sys/bus/virtio/devices/*/device` = 0x0001) that have no
/// network interface yet.
fn unprobed_virtio_nics() -> usize {
    let Ok(dir) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return 0;
    };
    dir.flatten()
        .filter(|d| {
            std::fs::read_to_string(d.path().join("device")).is_ok_and(|id| id.trim() == "0x0001")
                && !d.path().join("net").is_dir()
        })
        .count()
}

/// Looks up interface `name`, first waiting (up to [`LINK_WAIT`]) until every virtio NIC
/// has its interface, since probing can lag the driver load.
fn wait_for_link(nl: &mut Rtnl, name: &str) -> io::Result<u32> {
    let deadline = Instant::now() + LINK_WAIT;
    while unprobed_virtio_nics() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    nl.link_index(name)
}

/// Applies the kernel side of a plan: network driver, loopback, links, addresses, routes
/// and hostname.
pub fn configure_kernel(plan: &Plan) -> Result<(), CallError> {
    if !plan.interfaces.is_empty() {
        let t0 = Instant::now();
        match modules::load_group(NET_MODULE_GROUP) {
            Ok(()) => crate::debug!("network modules loaded in {:?}", t0.elapsed()),
            // No load-order list: the drivers are built in (or not available at all,
            // which the interface lookup below reports).
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CallError::os(e, "loading the network drivers".into())),
        }
    }
    let mut nl = Rtnl::open().map_err(|e| CallError::os(e, "rtnetlink socket".into()))?;
    let lo = nl
        .link_index("lo")
        .map_err(|e| CallError::os(e, "lo: lookup".into()))?;
    nl.link_up(lo)
        .map_err(|e| CallError::os(e, "lo: up".into()))?;
    let mut index = std::collections::HashMap::new();
    for i in &plan.interfaces {
        let n = &i.name;
        let idx = wait_for_link(&mut nl, n).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENODEV) {
                CallError::Os {
                    errno: libc::ENODEV,
                    message: format!("interface {n} not found (does the VM have a NIC for it?)"),
                }
            } else {
                CallError::os(e, format!("{n}: lookup"))
            }
        })?;
        index.insert(n.clone(), idx);
        nl.set_link_attrs(idx, i.mac, i.mtu)
            .map_err(|e| CallError::os(e, format!("{n}: set MAC/MTU")))?;
        nl.link_up(idx)
            .map_err(|e| CallError::os(e, format!("{n}: up")))?;
        for a in &i.addresses {
            nl.add_address(idx, *a).map_err(|e| {
                CallError::os(e, format!("{n}: add address {}/{}", a.addr, a.prefix))
            })?;
        }
    }
    for r in &plan.routes {
        let what = || {
            let mut s = format!("route {}/{}", r.dest.addr, r.dest.prefix);
            if let Some(g) = r.gateway {
                let _ = write!(s, " via {g}");
            }
            if let Some(i) = &r.interface {
                let _ = write!(s, " dev {i}");
            }
            s
        };
        let oif = match &r.interface {
            None => None,
            Some(n) => Some(match index.get(n) {
                Some(i) => *i,
                None => nl
                    .link_index(n)
                    .map_err(|e| CallError::os(e, format!("{}: interface {n}", what())))?,
            }),
        };
        let spec = RouteSpec {
            dest: r.dest,
            gateway: r.gateway,
            oif,
        };
        nl.add_route(&spec).map_err(|e| CallError::os(e, what()))?;
    }
    if let Some(h) = &plan.hostname {
        set_hostname(h).map_err(|e| CallError::os(e, format!("sethostname {h}")))?;
    }
    Ok(())
}

/// The `set_network` call. `pid1` is false in test mode on the host, where only the files
/// in `root` are written: changing links, routes or the hostname would change the host's.
pub fn rpc_set_network(root: &Path, net: &api::SetNetwork, pid1: bool) -> Result<(), CallError> {
    let t0 = Instant::now();
    let plan = plan(net).map_err(CallError::InvalidParams)?;
    if pid1 {
        configure_kernel(&plan)?;
    } else if !plan.interfaces.is_empty() || !plan.routes.is_empty() {
        return Err(CallError::InvalidParams(
            "set_network: interfaces and routes need a guest VM (test mode would change the host)"
                .into(),
        ));
    }
    write_files(root, &plan)?;
    crate::debug!("set_network done in {:?}", t0.elapsed());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use apex_agent_proto::api::{Dns, HostEntry, Interface, Route, SetNetwork};

    fn request() -> SetNetwork {
        SetNetwork {
            hostname: Some("web".into()),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("02:42:0a:00:02:0f".into()),
                addresses: vec!["10.0.2.15/24".into(), "fd00::f/64".into()],
                mtu: Some(1500),
            }],
            routes: vec![
                Route {
                    dest: "0.0.0.0/0".into(),
                    gateway: Some("10.0.2.2".into()),
                    interface: None,
                },
                Route {
                    dest: "10.9.0.0/16".into(),
                    gateway: None,
                    interface: Some("eth0".into()),
                },
            ],
            dns: Dns {
                nameservers: vec!["10.0.2.3".into()],
                search: vec!["test".into(), "example".into()],
                options: vec!["ndots:0".into()],
            },
            hosts: vec![HostEntry {
                ip: "10.0.2.2".into(),
                names: vec!["gateway".into(), "gateway.test".into()],
            }],
        }
    }

    #[test]
    fn plans_valid_requests() {
        let p = plan(&request()).unwrap();
        assert_eq!(p.interfaces[0].mac, Some([2, 0x42, 0x0a, 0, 2, 0x0f]));
        assert_eq!(p.interfaces[0].addresses.len(), 2);
        assert_eq!(p.routes[0].dest.prefix, 0);
        assert_eq!(
            p.resolv_conf.as_deref(),
            Some("nameserver 10.0.2.3\nsearch test example\noptions ndots:0\n")
        );
        let empty = plan(&SetNetwork::default()).unwrap();
        assert!(empty.resolv_conf.is_none() && empty.interfaces.is_empty());
    }

    #[test]
    fn rejects_bad_requests_before_changing_anything() {
        type Mutation = Box<dyn Fn(&mut SetNetwork)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|n| n.hostname = Some("bad host".into())),
                "hostname",
            ),
            (
                Box::new(|n| n.interfaces[0].name = "".into()),
                "interface name",
            ),
            (Box::new(|n| n.interfaces[0].mac = Some("xx".into())), "MAC"),
            (Box::new(|n| n.interfaces[0].mtu = Some(10)), "MTU"),
            (
                Box::new(|n| n.interfaces[0].addresses = vec!["10.0.2.15".into()]),
                "CIDR",
            ),
            (
                Box::new(|n| n.interfaces.push(n.interfaces[0].clone())),
                "twice",
            ),
            (
                Box::new(|n| n.routes[0].gateway = Some("fd00::1".into())),
                "family",
            ),
            (
                Box::new(|n| n.routes[0].gateway = Some("gw".into())),
                "gateway",
            ),
            (
                Box::new(|n| n.routes[1].interface = None),
                "needs a gateway",
            ),
            (
                Box::new(|n| n.dns.nameservers = vec!["1.2.3.4\nnameserver x".into()]),
                "nameserver",
            ),
            (Box::new(|n| n.dns.search = vec!["a b".into()]), "search"),
            (Box::new(|n| n.hosts[0].names = vec![]), "no names"),
            (
                Box::new(|n| n.hosts[0].names = vec!["a\nb".into()]),
                "host name",
            ),
            (Box::new(|n| n.hosts[0].ip = "x".into()), "hosts entry"),
        ];
        for (mutate, needle) in cases {
            let mut n = request();
            mutate(&mut n);
            let e = plan(&n).unwrap_err();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn hosts_file_layout() {
        let extra = vec![("10.0.2.2".parse().unwrap(), vec!["gw".to_string()])];
        assert_eq!(
            hosts_file("web", Some("10.0.2.15".parse().unwrap()), &extra),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             10.0.2.15\tweb\n10.0.2.2\tgw\n"
        );
        assert_eq!(
            hosts_file("web", None, &[]),
            "127.0.0.1\tlocalhost web\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        );
    }

    #[test]
    fn test_mode_writes_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("etc")).unwrap();
        // A dangling resolv.conf symlink (as in systemd-resolved images) is replaced.
        std::os::unix::fs::symlink("/nonexistent/stub.conf", root.join("etc/resolv.conf")).unwrap();
        let mut req = request();
        let err = rpc_set_network(root, &req, false).unwrap_err();
        assert!(matches!(err, CallError::InvalidParams(ref m) if m.contains("guest VM")));
        req.interfaces.clear();
        req.routes.clear();
        rpc_set_network(root, &req, false).unwrap();
        let read = |f: &str| std::fs::read_to_string(root.join("etc").join(f)).unwrap();
        assert_eq!(read("hostname"), "web\n");
        assert!(read("hosts").starts_with("127.0.0.1\tlocalhost web\n"));
        assert!(read("hosts").ends_with("10.0.2.2\tgateway gateway.test\n"));
        assert!(read("resolv.conf").starts_with("nameserver 10.0.2.3\n"));
        assert!(!root.join("etc/resolv.conf").is_symlink());
    }
}
