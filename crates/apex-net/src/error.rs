//! The crate's error type.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;

/// Errors from apex-net. Variants callers may want to match on are specific; the rest carry
/// a context string naming what was being done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A subnet that cannot be used for a network.
    #[error("invalid subnet {subnet}: {reason}")]
    InvalidSubnet { subnet: String, reason: String },
    /// Every container address of the subnet is taken.
    #[error("no free address left in {subnet}")]
    SubnetFull { subnet: Ipv4Net },
    /// The address is not a container address of the subnet.
    #[error("{addr} is not a container address of {subnet}")]
    AddressOutOfRange { addr: Ipv4Addr, subnet: Ipv4Net },
    /// The address is already allocated to someone else.
    #[error("{addr} is already allocated to {owner}")]
    AddressInUse { addr: Ipv4Addr, owner: String },
    /// The subnet picker found nothing free in the pool.
    #[error(
        "no free /{prefix_len} subnet left in {pool} (all overlap host routes or other networks)"
    )]
    NoFreeSubnet { pool: Ipv4Net, prefix_len: u8 },
    /// An interface name that Linux would reject.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidIfName { name: String, reason: &'static str },
    /// A `-p` port specification that cannot be parsed.
    #[error("invalid port spec {spec:?}: {reason}")]
    InvalidPortSpec { spec: String, reason: String },
    /// A published port whose host address is taken.
    #[error("cannot publish {addr}/{proto}: address already in use")]
    PortInUse {
        addr: SocketAddr,
        proto: &'static str,
    },
    /// A netlink request failed.
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// An I/O error (syscall, file, socket).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// `nft` rejected a ruleset or could not be run.
    #[error("nft: {0}")]
    Nft(String),
}

/// Shorthand for `Result<T, apex_net::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn netlink(context: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Netlink {
            context: context.into(),
            source,
        }
    }

    /// The errno of a failed netlink request or syscall, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => Some(-msg.raw_code()),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The positive errno of a netlink error, if it is one.
pub(crate) fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}
