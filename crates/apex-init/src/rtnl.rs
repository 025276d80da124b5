//! A small synchronous rtnetlink client (links, addresses, routes) on a raw `NETLINK_ROUTE`
//! socket. Messages are built and parsed with `netlink-packet-route`; `netlink-sys` owns
//! the socket. Every request carries `NLM_F_ACK` (or is a dump ending in `NLMSG_DONE`), so
//! the kernel's answer, including its errno, is read back before the next request.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// An address in CIDR form: `10.88.0.2/16`, `fd00::2/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length (0-32 or 0-128).
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` (or a bare address, as a host prefix when `bare_ok`).
    pub fn parse(s: &str, bare_ok: bool) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None if bare_ok => (s, None),
            None => return Err(format!("{s:?} is not in CIDR notation (ADDR/PREFIX)")),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("{s:?}: bad prefix length {p:?} (0-{max})")),
            },
        };
        Ok(Cidr { addr, prefix })
    }

    /// The IPv4 broadcast address of the subnet (none for /31, /32 and IPv6).
    pub fn broadcast(&self) -> Option<std::net::Ipv4Addr> {
        match self.addr {
            IpAddr::V4(a) if self.prefix < 31 => {
                let host_bits = u32::MAX >> self.prefix;
                Some((u32::from(a) | host_bits).into())
            }
            _ => None,
        }
    }
}

/// Parses `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address (xx:xx:xx:xx:xx:xx)"));
    }
    for (o, p) in out.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(format!("{s:?} is not a MAC address (xx:xx:xx:xx:xx:xx)"));
        }
        *o = u8::from_str_radix(p, 16)
            .map_err(|_| format!("{s:?} is not a MAC address (xx:xx:xx:xx:xx:xx)"))?;
    }
    if out[0] & 1 != 0 {
        return Err(format!("{s:?} is a multicast MAC address"));
    }
    Ok(out)
}

fn family(addr: &IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A route to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination; prefix 0 for a default route.
    pub dest: Cidr,
    /// Next hop, `None` for an on-link route.
    pub gateway: Option<IpAddr>,
    /// Outgoing interface index.
    pub oif: Option<u32>,
}

/// An rtnetlink connection.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    /// Opens a `NETLINK_ROUTE` socket (close-on-exec).
    pub fn open() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Sends one request and collects the kernel's replies until the ack (or `NLMSG_DONE`
    /// for dumps). A negative errno in the ack becomes the error.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0)?;

        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad netlink reply: {e}"),
                        )
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(out),
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// The index of interface `name` (`ENODEV` if there is none).
    pub fn link_index(&mut self, name: &str) -> io::Result<u32> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let replies = self.request(RouteNetlinkMessage::GetLink(msg), 0)?;
        replies
            .iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))
    }

    /// Sets a link's MAC address and/or MTU (`RTM_SETLINK`).
    pub fn set_link_attrs(
        &mut self,
        index: u32,
        mac: Option<[u8; 6]>,
        mtu: Option<u32>,
    ) -> io::Result<()> {
        if mac.is_none() && mtu.is_none() {
            return Ok(());
        }
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(mac) = mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map(drop)
    }

    /// Brings a link up (`IFF_UP`).
    pub fn link_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map(drop)
    }

    /// Adds (or replaces) an address on a link. IPv6 addresses skip duplicate address
    /// detection, so they are usable at once.
    pub fn add_address(&mut self, index: u32, cidr: Cidr) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(&cidr.addr);
        msg.header.prefix_len = cidr.prefix;
        msg.header.index = index;
        msg.header.scope = AddressScope::Universe;
        match cidr.addr {
            IpAddr::V4(_) => {
                msg.attributes.push(AddressAttribute::Local(cidr.addr));
                msg.attributes.push(AddressAttribute::Address(cidr.addr));
                if let Some(b) = cidr.broadcast() {
                    msg.attributes.push(AddressAttribute::Broadcast(b));
                }
            }
            IpAddr::V6(_) => {
                msg.header.flags = AddressHeaderFlags::Nodad;
                msg.attributes.push(AddressAttribute::Address(cidr.addr));
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Adds (or replaces) a route in the main table.
    pub fn add_route(&mut self, r: &RouteSpec) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(&r.dest.addr);
        msg.header.destination_prefix_length = r.dest.prefix;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = if r.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        msg.header.kind = RouteType::Unicast;
        if r.dest.prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(r.dest.addr)));
        }
        if let Some(gw) = r.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(oif) = r.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Every address on every link, as `(link index, address)`, in kernel order.
    pub fn addresses(&mut self) -> io::Result<Vec<(u32, IpAddr)>> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on
            // point-to-point links); IPv6 only sends IFA_ADDRESS.
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                out.push((a.header.index, ip));
            }
        }
        Ok(out)
    }
}

/// The first non-loopback, non-link-local address of the guest (IPv4 first): where a
/// server bound to `eth0` only can be reached from inside the guest.
pub fn first_non_loopback_address() -> io::Result<Option<IpAddr>> {
    let addrs = Rtnl::open()?.addresses()?;
    let usable = |ip: &IpAddr| match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local() && !a.is_unspecified(),
        IpAddr::V6(a) => {
            !a.is_loopback() && !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80
        }
    };
    Ok(addrs
        .iter()
        .map(|(_, ip)| *ip)
        .filter(usable)
        .min_by_key(|ip| ip.is_ipv6()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.2.15/24", false).unwrap();
        assert_eq!(c.addr, "10.0.2.15".parse::<IpAddr>().unwrap());
        assert_eq!(c.prefix, 24);
        assert_eq!(c.broadcast(), Some("10.0.2.255".parse().unwrap()));
        assert_eq!(Cidr::parse("0.0.0.0/0", false).unwrap().prefix, 0);
        assert_eq!(Cidr::parse("fd00::2/64", false).unwrap().prefix, 64);
        assert_eq!(Cidr::parse("fd00::2/64", false).unwrap().broadcast(), None);
        assert_eq!(Cidr::parse("10.1.2.3/31", false).unwrap().broadcast(), None);
        assert_eq!(Cidr::parse("10.1.2.3", true).unwrap().prefix, 32);
        for bad in [
            "10.0.2.15",
            "10.0.2.15/33",
            "10.0.2.15/",
            "10.0.2.15/+8",
            "fd00::1/129",
            "x/24",
            "10.0.2/24",
        ] {
            assert!(Cidr::parse(bad, false).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("02:42:0A:58:00:02").unwrap(),
            [2, 0x42, 0x0a, 0x58, 0, 2]
        );
        for bad in [
            "02:42:0a:58:00",
            "02:42:0a:58:00:2",
            "01:00:00:00:00:00",
            "zz:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad} accepted");
        }
    }

    /// Talks to the real kernel: reading is harmless and works unprivileged.
    #[test]
    fn dump_addresses_and_lookup_loopback() {
        let mut nl = Rtnl::open().unwrap();
        let lo = nl.link_index("lo").unwrap();
        assert!(nl
            .addresses()
            .unwrap()
            .iter()
            .any(|(i, ip)| *i == lo && ip.is_loopback()));
        let err = nl.link_index("apxt-nonexist").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
        // A second request on the same socket still pairs replies correctly.
        assert_eq!(nl.link_index("lo").unwrap(), lo);
    }
}
