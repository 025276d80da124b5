//! Host half of Apex networking.
//!
//! - [`ipam`]: subnets, address allocation, persisted network state (pure logic).
//! - [`netlink`]: an rtnetlink connection and host route/address queries.
//! - [`bridge`]: Linux bridges per network and persistent tap devices per VM.
//! - [`firewall`]: the `inet apex` nftables table (NAT, internal networks, isolation).
//! - [`dns`]: the DNS server answering `<name>`/`<name>.test` and forwarding the rest.
//! - [`forward`]: published ports (`-p`), spliced to the guest's forward service.
//!
//! Everything that touches the kernel acts on the network namespace of the calling thread
//! at the time the netlink socket, tap fd or `nft` process is created.

pub mod bridge;
pub mod dns;
mod error;
pub mod firewall;
pub mod forward;
pub mod ipam;
pub mod netlink;

pub use error::{Error, Result};

#[cfg(test)]
mod tests {
    /// apexd keeps these in shared state across tasks.
    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::netlink::Netlink>();
        check::<crate::firewall::Firewall>();
        check::<crate::dns::Records>();
        check::<crate::dns::Upstream>();
        check::<crate::dns::DnsServer>();
        check::<crate::forward::Forwarder>();
        check::<std::sync::Arc<dyn crate::forward::Connector>>();
        check::<crate::Error>();
    }
}
