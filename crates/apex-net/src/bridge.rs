//! Linux bridges (one per network, holding the gateway address) and persistent tap devices
//! (one per VM, attached to its network's bridge). All operations are idempotent.

use std::fs::OpenOptions;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::InfoKind;
use rtnetlink::{LinkBridge, LinkUnspec};

use crate::error::netlink_errno;
use crate::ipam::{NetworkState, Subnet};
use crate::netlink::{Link, Netlink};
use crate::{Error, Result};

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// Prefix of tap names.
pub const TAP_PREFIX: &str = "apx-";
/// Prefix of the bridges of user-created networks.
pub const BRIDGE_PREFIX: &str = "apxbr-";

/// Checks that `name` is a valid Linux interface name.
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidIfName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > IFNAME_MAX {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || !b.is_ascii_graphic())
    {
        return bad("contains '/', ':', whitespace or non-ASCII");
    }
    Ok(())
}

fn name_with_prefix(prefix: &str, id: &str) -> String {
    let clean: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(IFNAME_MAX - prefix.len())
        .collect();
    format!("{prefix}{clean}")
}

/// Tap name for a container: `apx-` + the first 11 alphanumerics of its id.
pub fn tap_name(container_id: &str) -> String {
    name_with_prefix(TAP_PREFIX, container_id)
}

/// Bridge name for a user network: `apxbr-` + the first 9 alphanumerics of its id.
pub fn bridge_name(network_id: &str) -> String {
    name_with_prefix(BRIDGE_PREFIX, network_id)
}

/// The fixed MAC address of bridge `name`: `02:` + 5 bytes of a hash of the name.
///
/// Without one a bridge takes the lowest MAC of its ports, so it changes when a tap comes
/// or goes, and guests keep sending to the old one (stale ARP) until they re-resolve.
pub fn bridge_mac(name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

/// Creates (if needed) bridge `name` with `gateway/prefix` of `subnet` as its only IPv4
/// address, sets its MTU and fixed MAC ([`bridge_mac`]) and brings it up. Fails if `name`
/// exists but is not a bridge. Returns the bridge's interface index.
pub async fn ensure_bridge(nl: &Netlink, name: &str, subnet: Subnet, mtu: u32) -> Result<u32> {
    validate_ifname(name)?;
    let link = match nl.link(name).await? {
        Some(link) => link,
        None => {
            let add = nl
                .handle()
                .link()
                .add(LinkBridge::new(name).mtu(mtu).build())
                .execute()
                .await;
            match add {
                Ok(()) => {}
                // Created concurrently: fine, checked below.
                Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(Error::netlink(format!("cannot create bridge {name}"), e)),
            }
            nl.link(name).await?.ok_or_else(|| Error::Io {
                context: format!("bridge {name} vanished after creation"),
                source: io::Error::from(io::ErrorKind::NotFound),
            })?
        }
    };
    if link.kind != Some(InfoKind::Bridge) {
        return Err(Error::Io {
            context: format!("{name} exists and is not a bridge ({:?})", link.kind),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        });
    }
    set_address(nl, &link, subnet).await?;
    nl.handle()
        .link()
        .set(
            LinkUnspec::new_with_index(link.index)
                .mtu(mtu)
                .address(bridge_mac(name).to_vec())
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("cannot bring up bridge {name}"), e))?;
    Ok(link.index)
}

/// Makes the gateway of `subnet` the link's only IPv4 address.
async fn set_address(nl: &Netlink, link: &Link, subnet: Subnet) -> Result<()> {
    let gateway = subnet.gateway();
    let prefix = subnet.prefix_len();
    let addrs: Vec<_> = nl
        .handle()
        .address()
        .get()
        .set_link_index_filter(link.index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| Error::netlink(format!("cannot list addresses of {}", link.name), e))?;
    let mut present = false;
    for msg in addrs {
        let v4 = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let Some(ip) = v4 else { continue };
        if ip == gateway && msg.header.prefix_len == prefix {
            present = true;
            continue;
        }
        nl.handle()
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(|e| {
                Error::netlink(format!("cannot remove stale {ip} from {}", link.name), e)
            })?;
    }
    if !present {
        match nl
            .handle()
            .address()
            .add(link.index, IpAddr::V4(gateway), prefix)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(Error::netlink(
                    format!("cannot add {gateway}/{prefix} to {}", link.name),
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// [`ensure_bridge`] for a network, plus IPv4 forwarding for non-internal networks.
pub async fn ensure_network(nl: &Netlink, net: &NetworkState) -> Result<u32> {
    let index = ensure_bridge(nl, &net.bridge, net.subnet(), net.mtu).await?;
    if !net.internal {
        enable_ipv4_forwarding()?;
    }
    Ok(index)
}

/// Deletes link `name` if it exists (its taps are detached, not deleted).
pub async fn remove_bridge(nl: &Netlink, name: &str) -> Result<()> {
    delete_link(nl, name).await
}

async fn delete_link(nl: &Netlink, name: &str) -> Result<()> {
    let Some(link) = nl.link(name).await? else {
        return Ok(());
    };
    match nl.handle().link().del(link.index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(Error::netlink(format!("cannot delete {name}"), e)),
    }
}

/// A tap device for one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapConfig {
    /// Interface name, see [`tap_name`].
    pub name: String,
    /// Bridge to attach to.
    pub bridge: String,
    /// MTU (match the bridge's).
    pub mtu: u32,
    /// uid allowed to attach without CAP_NET_ADMIN (`None`: only CAP_NET_ADMIN, i.e. root).
    pub owner: Option<u32>,
}

/// Creates (if needed) a persistent tap `cfg.name`, sets its MTU, attaches it to
/// `cfg.bridge` and brings it up. QEMU then opens it by name with
/// `-netdev tap,ifname=NAME,script=no,downscript=no`. Returns the tap's index.
pub async fn ensure_tap(nl: &Netlink, cfg: &TapConfig) -> Result<u32> {
    validate_ifname(&cfg.name)?;
    let bridge = nl.link(&cfg.bridge).await?.ok_or_else(|| Error::Io {
        context: format!("cannot attach {} to bridge {}", cfg.name, cfg.bridge),
        source: io::Error::from(io::ErrorKind::NotFound),
    })?;
    let link = match nl.link(&cfg.name).await? {
        Some(link) => link,
        None => {
            create_persistent_tap(&cfg.name, cfg.owner)?;
            nl.link(&cfg.name).await?.ok_or_else(|| Error::Io {
                context: format!("tap {} vanished after creation", cfg.name),
                source: io::Error::from(io::ErrorKind::NotFound),
            })?
        }
    };
    if link.kind != Some(InfoKind::Tun) {
        return Err(Error::Io {
            context: format!("{} exists and is not a tap ({:?})", cfg.name, link.kind),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        });
    }
    nl.handle()
        .link()
        .set(
            LinkUnspec::new_with_index(link.index)
                .mtu(cfg.mtu)
                .controller(bridge.index)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| {
            Error::netlink(
                format!(
                    "cannot attach {} to {} and bring it up",
                    cfg.name, cfg.bridge
                ),
                e,
            )
        })?;
    Ok(link.index)
}

/// Deletes tap `name` if it exists (also while QEMU still holds it open).
pub async fn remove_tap(nl: &Netlink, name: &str) -> Result<()> {
    delete_link(nl, name).await
}

/// Deletes every link whose name starts with `prefix` (taps first, then bridges): crash
/// recovery and test cleanup. Returns the deleted names.
pub async fn cleanup_all(nl: &Netlink, prefix: &str) -> Result<Vec<String>> {
    if prefix.is_empty() {
        return Err(Error::InvalidIfName {
            name: String::new(),
            reason: "cleanup prefix must not be empty",
        });
    }
    let mut links: Vec<Link> = nl
        .links()
        .await?
        .into_iter()
        .filter(|l| l.name.starts_with(prefix))
        .collect();
    // Bridges last, so their ports are deleted rather than merely detached first.
    links.sort_by_key(|l| l.kind == Some(InfoKind::Bridge));
    let mut deleted = Vec::new();
    for link in links {
        delete_link(nl, &link.name).await?;
        deleted.push(link.name);
    }
    Ok(deleted)
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Whether IPv4 forwarding is on (in the calling thread's network namespace).
pub fn ipv4_forwarding_enabled() -> Result<bool> {
    let v = std::fs::read_to_string(IP_FORWARD)
        .map_err(|e| Error::io(format!("cannot read {IP_FORWARD}"), e))?;
    Ok(v.trim() == "1")
}

/// Turns IPv4 forwarding on (never off: other software may rely on it).
pub fn enable_ipv4_forwarding() -> Result<()> {
    if ipv4_forwarding_enabled()? {
        return Ok(());
    }
    std::fs::write(IP_FORWARD, "1").map_err(|e| Error::io(format!("cannot write {IP_FORWARD}"), e))
}

/// Creates a persistent tap with `TUNSETIFF` + `TUNSETPERSIST`.
///
/// Hand-rolled because rtnetlink cannot create tun/tap devices (the kernel's tun driver has
/// no netlink "newlink"); this is exactly what `ip tuntap add` does. IFF_VNET_HDR and
/// IFF_NO_PI are per-attachment flags that QEMU sets again when it opens the device.
fn create_persistent_tap(name: &str, owner: Option<u32>) -> Result<()> {
    let ctx = |what: &str| format!("cannot create tap {name}: {what}");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| Error::io(ctx("open /dev/net/tun"), e))?;
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // validate_ifname() guaranteed at most 15 bytes, so the name stays NUL-terminated.
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    let fd = file.as_raw_fd();
    // SAFETY: fd is an open /dev/net/tun descriptor and TUNSETIFF reads/writes one ifreq,
    // which lives for the duration of the call.
    if unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut ifr as *mut libc::ifreq) } < 0 {
        return Err(Error::io(ctx("TUNSETIFF"), io::Error::last_os_error()));
    }
    if let Some(uid) = owner {
        // SAFETY: TUNSETOWNER takes the uid by value; fd is attached to the tap.
        if unsafe { libc::ioctl(fd, libc::TUNSETOWNER, uid as libc::c_ulong) } < 0 {
            return Err(Error::io(ctx("TUNSETOWNER"), io::Error::last_os_error()));
        }
    }
    // SAFETY: TUNSETPERSIST takes a flag by value; fd is attached to the tap.
    if unsafe { libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(Error::io(ctx("TUNSETPERSIST"), io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz() {
        let t = tap_name("3f9a1c0e7b2d4a5f9e8d7c6b5a493827");
        assert_eq!(t, "apx-3f9a1c0e7b2");
        assert_eq!(t.len(), IFNAME_MAX);
        validate_ifname(&t).unwrap();
        let b = bridge_name("c0ffee00112233445566");
        assert_eq!(b, "apxbr-c0ffee001");
        validate_ifname(&b).unwrap();
        // Odd characters are dropped, short ids kept whole.
        assert_eq!(tap_name("a/b:c d"), "apx-abcd");
    }

    #[test]
    fn bridge_macs_are_stable_local_unicast() {
        let m = bridge_mac("apex0");
        assert_eq!(m[0], 0x02);
        assert_eq!(m, bridge_mac("apex0"));
        assert_ne!(m, bridge_mac("apex1"));
    }

    #[test]
    fn ifname_validation() {
        validate_ifname("apex0").unwrap();
        for bad in ["", "0123456789abcdef", "a/b", "a:b", "a b", ".", "..", "é"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
