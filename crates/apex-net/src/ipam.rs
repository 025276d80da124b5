//! IP address management: subnets, allocation, and the per-network state apexd persists.
//!
//! Pure logic, no I/O: the host's routes come in as a list (see
//! [`crate::netlink::Netlink::host_ipv4_subnets`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Name of the network containers join when none is given.
pub const DEFAULT_NETWORK: &str = "default";
/// Bridge of the default network.
pub const DEFAULT_BRIDGE: &str = "apex0";
/// Subnet of the default network (first /24 of [`DEFAULT_POOL`]).
pub const DEFAULT_SUBNET: Ipv4Net = ipv4_net(Ipv4Addr::new(10, 213, 0, 0), 24);
/// Pool that new networks' subnets are picked from: 10.213.0.0/16, rarely used by LANs or VPNs.
pub const DEFAULT_POOL: Ipv4Net = ipv4_net(Ipv4Addr::new(10, 213, 0, 0), 16);
/// Prefix length of picked subnets.
pub const DEFAULT_PREFIX_LEN: u8 = 24;
/// MTU of bridges and taps unless configured otherwise.
pub const DEFAULT_MTU: u32 = 1500;

const fn ipv4_net(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    match Ipv4Net::new(addr, len) {
        Ok(net) => net,
        Err(_) => panic!("bad constant prefix length"),
    }
}

/// An IPv4 network usable by apex: the gateway is the first host address, containers get
/// the following ones; the network and broadcast addresses are never handed out.
///
/// Serializes as its CIDR string (`"10.213.0.0/24"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet(Ipv4Net);

impl Subnet {
    /// Validates `net`: prefix length at most /30 (a gateway and one container) and no host
    /// bits set.
    pub fn new(net: Ipv4Net) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidSubnet {
            subnet: net.to_string(),
            reason,
        };
        if net.prefix_len() > 30 {
            return Err(invalid(
                "prefix must be /30 or shorter to hold a gateway and a container".into(),
            ));
        }
        if net.addr() != net.network() {
            return Err(invalid(format!(
                "host bits are set (did you mean {}?)",
                net.trunc()
            )));
        }
        Ok(Subnet(net))
    }

    /// The CIDR.
    pub fn net(&self) -> Ipv4Net {
        self.0
    }

    /// Prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// The gateway (the bridge's address): first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.0.network()) + 1)
    }

    /// First address handed to a container.
    pub fn first_container(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.0.network()) + 2)
    }

    /// Last address handed to a container (just below broadcast).
    pub fn last_container(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.0.broadcast()) - 1)
    }

    /// Number of container addresses.
    pub fn capacity(&self) -> u32 {
        u32::from(self.last_container()) - u32::from(self.first_container()) + 1
    }

    /// Whether `addr` is one of the container addresses.
    pub fn is_container_addr(&self, addr: Ipv4Addr) -> bool {
        (self.first_container()..=self.last_container()).contains(&addr)
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        overlaps(&self.0, other)
    }
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Subnet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let net = s
            .trim()
            .parse::<Ipv4Net>()
            .map_err(|e| Error::InvalidSubnet {
                subnet: s.to_string(),
                reason: e.to_string(),
            })?;
        Subnet::new(net)
    }
}

impl TryFrom<String> for Subnet {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

/// One allocated address and who holds it (a container id, usually).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The allocated address.
    pub addr: Ipv4Addr,
    /// Who holds it.
    pub owner: String,
}

/// Address allocator for one subnet. Serializes as `{"subnet": ..., "allocations": [...]}`;
/// deserializing re-validates every allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "IpamRepr", into = "IpamRepr")]
pub struct Ipam {
    subnet: Subnet,
    allocations: BTreeMap<Ipv4Addr, String>,
}

#[derive(Serialize, Deserialize)]
struct IpamRepr {
    subnet: Subnet,
    #[serde(default)]
    allocations: Vec<Allocation>,
}

impl TryFrom<IpamRepr> for Ipam {
    type Error = Error;
    fn try_from(repr: IpamRepr) -> Result<Self> {
        let mut ipam = Ipam::new(repr.subnet);
        for a in repr.allocations {
            ipam.reserve(a.addr, &a.owner)?;
        }
        Ok(ipam)
    }
}

impl From<Ipam> for IpamRepr {
    fn from(ipam: Ipam) -> Self {
        IpamRepr {
            subnet: ipam.subnet,
            allocations: ipam.allocations().collect(),
        }
    }
}

impl Ipam {
    /// An allocator with nothing allocated.
    pub fn new(subnet: Subnet) -> Self {
        Ipam {
            subnet,
            allocations: BTreeMap::new(),
        }
    }

    /// The managed subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// Allocates the lowest free container address to `owner`. An owner that already holds
    /// an address gets that same address back (so retries are harmless).
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr> {
        if let Some(addr) = self.address_of(owner) {
            return Ok(addr);
        }
        // Walk the (sorted) allocations looking for the first gap.
        let mut candidate = u32::from(self.subnet.first_container());
        for addr in self.allocations.keys() {
            match u32::from(*addr).cmp(&candidate) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => candidate += 1,
                std::cmp::Ordering::Greater => break,
            }
        }
        let addr = Ipv4Addr::from(candidate);
        if !self.subnet.is_container_addr(addr) {
            return Err(Error::SubnetFull {
                subnet: self.subnet.net(),
            });
        }
        self.allocations.insert(addr, owner.to_string());
        Ok(addr)
    }

    /// Records `addr` as held by `owner` (restoring state, or a user-chosen `--ip`).
    /// Idempotent for the same owner; fails if another owner holds it or it is not a
    /// container address.
    pub fn reserve(&mut self, addr: Ipv4Addr, owner: &str) -> Result<()> {
        if !self.subnet.is_container_addr(addr) {
            return Err(Error::AddressOutOfRange {
                addr,
                subnet: self.subnet.net(),
            });
        }
        match self.allocations.get(&addr) {
            Some(o) if o == owner => Ok(()),
            Some(o) => Err(Error::AddressInUse {
                addr,
                owner: o.clone(),
            }),
            None => {
                self.allocations.insert(addr, owner.to_string());
                Ok(())
            }
        }
    }

    /// Frees `addr`; returns its previous owner, `None` if it was free.
    pub fn release(&mut self, addr: Ipv4Addr) -> Option<String> {
        self.allocations.remove(&addr)
    }

    /// Frees every address held by `owner`; returns them.
    pub fn release_owner(&mut self, owner: &str) -> Vec<Ipv4Addr> {
        let addrs: Vec<Ipv4Addr> = self
            .allocations
            .iter()
            .filter(|(_, o)| *o == owner)
            .map(|(a, _)| *a)
            .collect();
        for a in &addrs {
            self.allocations.remove(a);
        }
        addrs
    }

    /// Who holds `addr`.
    pub fn owner_of(&self, addr: Ipv4Addr) -> Option<&str> {
        self.allocations.get(&addr).map(String::as_str)
    }

    /// The (lowest) address held by `owner`.
    pub fn address_of(&self, owner: &str) -> Option<Ipv4Addr> {
        self.allocations
            .iter()
            .find(|(_, o)| *o == owner)
            .map(|(a, _)| *a)
    }

    /// All allocations, by address.
    pub fn allocations(&self) -> impl Iterator<Item = Allocation> + '_ {
        self.allocations.iter().map(|(addr, owner)| Allocation {
            addr: *addr,
            owner: owner.clone(),
        })
    }

    /// Number of allocated addresses.
    pub fn len(&self) -> usize {
        self.allocations.len()
    }

    /// Whether nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }

    /// Number of free container addresses.
    pub fn available(&self) -> u32 {
        self.subnet.capacity() - self.allocations.len() as u32
    }
}

/// Everything apexd persists about one network (serde-serializable, e.g. as JSON in redb).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkState {
    /// User-visible network name (also the `<name>.<network>.test` DNS label).
    pub name: String,
    /// Linux bridge name (at most 15 bytes).
    pub bridge: String,
    /// Internal networks get no NAT and no forwarding beyond their bridge.
    #[serde(default)]
    pub internal: bool,
    /// MTU of the bridge and its taps.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Subnet and allocations.
    pub ipam: Ipam,
}

fn default_mtu() -> u32 {
    DEFAULT_MTU
}

impl NetworkState {
    /// A network with nothing allocated.
    pub fn new(name: &str, bridge: &str, subnet: Subnet, internal: bool) -> Self {
        NetworkState {
            name: name.to_string(),
            bridge: bridge.to_string(),
            internal,
            mtu: DEFAULT_MTU,
            ipam: Ipam::new(subnet),
        }
    }

    /// The default network: [`DEFAULT_NETWORK`] on bridge [`DEFAULT_BRIDGE`], [`DEFAULT_SUBNET`].
    /// If that subnet collides with the host, pick another with [`pick_subnet`].
    pub fn default_network() -> Self {
        NetworkState::new(
            DEFAULT_NETWORK,
            DEFAULT_BRIDGE,
            Subnet(DEFAULT_SUBNET),
            false,
        )
    }

    /// The network's subnet.
    pub fn subnet(&self) -> Subnet {
        self.ipam.subnet()
    }

    /// The gateway (bridge) address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.ipam.subnet().gateway()
    }
}

/// Picks the first `/prefix_len` of `pool` that overlaps none of `in_use` (the host's routes
/// and addresses plus the subnets of existing apex networks). Default routes (`/0`) in
/// `in_use` are ignored.
pub fn pick_subnet(pool: Ipv4Net, prefix_len: u8, in_use: &[Ipv4Net]) -> Result<Subnet> {
    let none = || Error::NoFreeSubnet { pool, prefix_len };
    let candidates = pool.trunc().subnets(prefix_len).map_err(|_| none())?;
    for candidate in candidates {
        if in_use
            .iter()
            .filter(|n| n.prefix_len() > 0)
            .all(|n| !overlaps(&candidate, n))
        {
            return Subnet::new(candidate);
        }
    }
    Err(none())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn subnet_layout() {
        let s = subnet("10.213.0.0/24");
        assert_eq!(s.gateway(), ip("10.213.0.1"));
        assert_eq!(s.first_container(), ip("10.213.0.2"));
        assert_eq!(s.last_container(), ip("10.213.0.254"));
        assert_eq!(s.capacity(), 253);
        assert!(!s.is_container_addr(ip("10.213.0.0")));
        assert!(!s.is_container_addr(ip("10.213.0.1")));
        assert!(!s.is_container_addr(ip("10.213.0.255")));
        assert!(!s.is_container_addr(ip("10.213.1.2")));
        assert_eq!(subnet("192.168.7.0/30").capacity(), 1);
    }

    #[test]
    fn subnet_validation() {
        let err = "10.213.0.5/24".parse::<Subnet>().unwrap_err().to_string();
        assert!(err.contains("did you mean 10.213.0.0/24"), "{err}");
        assert!("10.0.0.0/31".parse::<Subnet>().is_err());
        assert!("10.0.0.0/32".parse::<Subnet>().is_err());
        assert!("not-a-cidr".parse::<Subnet>().is_err());
        assert!("10.0.0.0/33".parse::<Subnet>().is_err());
        assert_eq!(subnet(" 10.1.0.0/16 ").net(), net("10.1.0.0/16"));
    }

    #[test]
    fn allocate_lowest_free_without_duplicates() {
        let mut ipam = Ipam::new(subnet("10.213.0.0/24"));
        assert_eq!(ipam.allocate("a").unwrap(), ip("10.213.0.2"));
        assert_eq!(ipam.allocate("b").unwrap(), ip("10.213.0.3"));
        assert_eq!(ipam.allocate("c").unwrap(), ip("10.213.0.4"));
        // Same owner again: same address.
        assert_eq!(ipam.allocate("b").unwrap(), ip("10.213.0.3"));
        assert_eq!(ipam.release(ip("10.213.0.3")).as_deref(), Some("b"));
        assert_eq!(ipam.release(ip("10.213.0.3")), None);
        // The freed address is the lowest free one: reused.
        assert_eq!(ipam.allocate("d").unwrap(), ip("10.213.0.3"));
        assert_eq!(ipam.allocate("e").unwrap(), ip("10.213.0.5"));
        let all: Vec<_> = ipam.allocations().map(|a| a.addr).collect();
        let mut dedup = all.clone();
        dedup.dedup();
        assert_eq!(all, dedup);
        assert_eq!(ipam.len(), 4);
        assert_eq!(ipam.available(), 253 - 4);
    }

    #[test]
    fn full_subnet_errors_clearly() {
        let mut ipam = Ipam::new(subnet("10.213.9.0/29"));
        // /29: network .0, gateway .1, containers .2-.6, broadcast .7.
        let got: Vec<_> = (0..5)
            .map(|i| ipam.allocate(&format!("c{i}")).unwrap())
            .collect();
        assert_eq!(got.first(), Some(&ip("10.213.9.2")));
        assert_eq!(got.last(), Some(&ip("10.213.9.6")));
        let err = ipam.allocate("overflow").unwrap_err();
        assert!(matches!(err, Error::SubnetFull { .. }));
        assert_eq!(err.to_string(), "no free address left in 10.213.9.0/29");
        ipam.release(ip("10.213.9.4"));
        assert_eq!(ipam.allocate("late").unwrap(), ip("10.213.9.4"));
    }

    #[test]
    fn reserve_rules() {
        let mut ipam = Ipam::new(subnet("10.213.0.0/24"));
        ipam.reserve(ip("10.213.0.10"), "x").unwrap();
        ipam.reserve(ip("10.213.0.10"), "x").unwrap();
        assert!(matches!(
            ipam.reserve(ip("10.213.0.10"), "y"),
            Err(Error::AddressInUse { .. })
        ));
        for bad in ["10.213.0.0", "10.213.0.1", "10.213.0.255", "10.9.9.9"] {
            assert!(matches!(
                ipam.reserve(ip(bad), "z"),
                Err(Error::AddressOutOfRange { .. })
            ));
        }
        assert_eq!(ipam.owner_of(ip("10.213.0.10")), Some("x"));
        assert_eq!(ipam.address_of("x"), Some(ip("10.213.0.10")));
        // Allocation skips reserved addresses only where they are.
        assert_eq!(ipam.allocate("a").unwrap(), ip("10.213.0.2"));
        assert_eq!(ipam.release_owner("x"), vec![ip("10.213.0.10")]);
        assert!(ipam.address_of("x").is_none());
    }

    #[test]
    fn network_state_round_trips_through_json() {
        let mut state = NetworkState::new("backend", "apxbr-1234", subnet("10.213.4.0/24"), true);
        state.ipam.allocate("c1").unwrap();
        state.ipam.reserve(ip("10.213.4.77"), "c2").unwrap();
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.contains("\"subnet\":\"10.213.4.0/24\""), "{json}");
        let back: NetworkState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.gateway(), ip("10.213.4.1"));

        let mut restored = back;
        assert_eq!(restored.ipam.allocate("c3").unwrap(), ip("10.213.4.3"));
    }

    #[test]
    fn corrupt_state_is_rejected() {
        let dup = r#"{"name":"n","bridge":"b","ipam":{"subnet":"10.213.4.0/24",
            "allocations":[{"addr":"10.213.4.2","owner":"a"},{"addr":"10.213.4.2","owner":"b"}]}}"#;
        assert!(serde_json::from_str::<NetworkState>(dup).is_err());
        let out = r#"{"name":"n","bridge":"b","ipam":{"subnet":"10.213.4.0/24",
            "allocations":[{"addr":"10.213.5.2","owner":"a"}]}}"#;
        assert!(serde_json::from_str::<NetworkState>(out).is_err());
        let bad_subnet = r#"{"name":"n","bridge":"b","ipam":{"subnet":"10.213.4.1/24"}}"#;
        assert!(serde_json::from_str::<NetworkState>(bad_subnet).is_err());
        // Defaults for optional fields.
        let minimal = r#"{"name":"n","bridge":"b","ipam":{"subnet":"10.213.4.0/24"}}"#;
        let state: NetworkState = serde_json::from_str(minimal).unwrap();
        assert_eq!(state.mtu, DEFAULT_MTU);
        assert!(!state.internal);
    }

    #[test]
    fn default_network() {
        let d = NetworkState::default_network();
        assert_eq!(d.bridge, "apex0");
        assert_eq!(d.subnet().net(), net("10.213.0.0/24"));
        assert_eq!(d.gateway(), ip("10.213.0.1"));
        assert!(DEFAULT_POOL.contains(&DEFAULT_SUBNET));
    }

    #[test]
    fn picker_avoids_routes_and_other_networks() {
        let pool = net("10.213.0.0/16");
        assert_eq!(
            pick_subnet(pool, 24, &[]).unwrap().net(),
            net("10.213.0.0/24")
        );
        let used = [
            net("0.0.0.0/0"),      // default route: ignored
            net("10.213.0.0/24"),  // apex default network
            net("10.213.1.0/25"),  // part of a /24 used by the host
            net("10.213.2.77/32"), // a single host route
            net("192.168.1.0/24"),
        ];
        assert_eq!(
            pick_subnet(pool, 24, &used).unwrap().net(),
            net("10.213.3.0/24")
        );
        // A wider route covering the whole pool leaves nothing.
        let err = pick_subnet(pool, 24, &[net("10.0.0.0/8")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free /24 subnet left in 10.213.0.0/16 (all overlap host routes or other networks)"
        );
        // Prefix shorter than the pool's.
        assert!(pick_subnet(pool, 8, &[]).is_err());
        // Smaller subnets.
        assert_eq!(
            pick_subnet(net("172.30.0.0/24"), 28, &[net("172.30.0.0/28")])
                .unwrap()
                .net(),
            net("172.30.0.16/28")
        );
    }
}
