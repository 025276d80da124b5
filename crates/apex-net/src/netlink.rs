//! An rtnetlink connection plus the link/route queries the other modules share.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

pub use rtnetlink::packet_route::link::InfoKind;

use crate::error::netlink_errno;
use crate::{Error, Result};

/// A route-netlink connection. Cheap to clone.
///
/// The socket belongs to the network namespace of the thread that called
/// [`Netlink::connect`], whatever thread later uses it.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

/// What apex needs to know about an existing link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `bridge`, `tun`, ... (`None` for physical devices and loopback).
    pub kind: Option<InfoKind>,
    /// Index of the bridge this link is attached to.
    pub controller: Option<u32>,
    /// MTU, if reported.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// The interface alias (`ip link set NAME alias TEXT`), if set.
    pub alias: Option<String>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            controller: None,
            mtu: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            alias: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::Mtu(m) => link.mtu = Some(*m),
                LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            link.kind = Some(k.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

impl Netlink {
    /// Opens a connection and spawns its driver on the current tokio runtime (call it from
    /// within one).
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| Error::io("cannot open a route netlink socket", e))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The underlying rtnetlink handle, for requests this crate does not wrap.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The link called `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(Error::netlink(format!("cannot look up link {name}"), e)),
        }
    }

    /// Sets the alias of link `index` (apexd records the owner of its links there).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).alias(alias).build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("cannot set the alias of link {index}"), e))
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("cannot list links", e))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// The IPv4 addresses (with prefix) configured on link `index`.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("cannot list addresses", e))?;
        let mut out = Vec::new();
        for msg in msgs {
            for attr in &msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(a)) = attr {
                    if let Ok(net) = Ipv4Net::new(*a, msg.header.prefix_len) {
                        out.push(net);
                    }
                }
            }
        }
        Ok(out)
    }

    /// IPv4 subnets in use on the host: the destinations of all routes in all tables
    /// (default routes excluded) and the networks of all configured addresses. Feed this,
    /// plus the subnets of apex's own networks, to [`crate::ipam::pick_subnet`].
    pub async fn host_ipv4_subnets(&self) -> Result<Vec<Ipv4Net>> {
        let routes: Vec<_> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("cannot list routes", e))?;
        let mut out = Vec::new();
        for route in routes {
            if route.header.address_family != AddressFamily::Inet
                || route.header.destination_prefix_length == 0
            {
                continue;
            }
            for attr in &route.attributes {
                if let RouteAttribute::Destination(RouteAddress::Inet(dst)) = attr {
                    if let Ok(net) = Ipv4Net::new(*dst, route.header.destination_prefix_length) {
                        out.push(net.trunc());
                    }
                }
            }
        }
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("cannot list addresses", e))?;
        for msg in addrs {
            for attr in &msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(a)) = attr {
                    if let Ok(net) = Ipv4Net::new(*a, msg.header.prefix_len) {
                        if net.prefix_len() > 0 {
                            out.push(net.trunc());
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}
