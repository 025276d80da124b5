//! The nftables table, applied and removed in a private network namespace (needs root).

mod common;

use apex_net::firewall::{nft_apply, nft_list_table, set_elements, Firewall, FirewallNetwork};
use serde_json::Value;

fn net(bridge: &str, subnet: &str, internal: bool) -> FirewallNetwork {
    FirewallNetwork {
        bridge: bridge.into(),
        subnet: subnet.parse().unwrap(),
        internal,
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Set name -> sorted elements, and the number of rules per chain.
struct View {
    listing: Value,
}

impl View {
    async fn of(fw: &Firewall) -> View {
        View {
            listing: fw.list().await.unwrap().expect("table exists"),
        }
    }

    fn set(&self, name: &str) -> Vec<String> {
        sorted(set_elements(&self.listing, name))
    }

    fn rules(&self, chain: &str) -> usize {
        self.listing["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i.get("rule").is_some_and(|r| r["chain"] == chain))
            .count()
    }
}

#[test]
fn networks_are_added_updated_and_removed_atomically() {
    common::in_new_netns("firewall", || async {
        // Somebody else's table, which we must never disturb.
        common::sh(
            "nft -f - <<'EOF'
table inet other {
  chain input { type filter hook input priority 0; policy accept; tcp dport 9 counter drop; }
}
EOF",
        );
        let other_before = nft_list_table("inet", "other").await.unwrap().unwrap();

        let fw = Firewall::default();
        assert!(fw.list().await.unwrap().is_none());
        let a = net("apxtb1", "10.213.81.0/24", false);
        let b = net("apxtb2", "10.213.82.0/24", true);
        fw.add_network(&a).await.unwrap();
        fw.add_network(&b).await.unwrap();
        let v = View::of(&fw).await;
        assert_eq!(v.set("bridges"), ["apxtb1", "apxtb2"]);
        assert_eq!(v.set("same_bridge"), ["apxtb1 . apxtb1", "apxtb2 . apxtb2"]);
        assert_eq!(v.set("internal_bridges"), ["apxtb2"]);
        assert_eq!(v.set("masq_subnets"), ["10.213.81.0/24"]);
        assert_eq!(v.rules("forward"), 6);
        assert_eq!(v.rules("postrouting"), 1);

        // The text form says what we mean.
        let text = common::sh("nft list table inet apex");
        for needle in [
            "hook forward",
            "hook postrouting",
            "iifname . oifname @same_bridge accept",
            "iifname @bridges oifname @bridges drop",
            "iifname @internal_bridges drop",
            "oifname @internal_bridges drop",
            "ct state established,related accept",
            "ip saddr @masq_subnets oifname != @bridges masquerade",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }

        // Idempotent: re-adding changes nothing and duplicates no rule.
        fw.add_network(&a).await.unwrap();
        fw.add_network(&b).await.unwrap();
        let v2 = View::of(&fw).await;
        assert_eq!(v2.rules("forward"), 6);
        assert_eq!(v2.set("bridges"), v.set("bridges"));
        assert_eq!(v2.set("masq_subnets"), v.set("masq_subnets"));

        // Flipping the internal flag moves the network between sets.
        let b_open = net("apxtb2", "10.213.82.0/24", false);
        fw.add_network(&b_open).await.unwrap();
        let v = View::of(&fw).await;
        assert!(v.set("internal_bridges").is_empty());
        assert_eq!(v.set("masq_subnets"), ["10.213.81.0/24", "10.213.82.0/24"]);
        fw.add_network(&b).await.unwrap();

        // Removal, also of something that is not there.
        fw.remove_network(&a).await.unwrap();
        fw.remove_network(&a).await.unwrap();
        fw.remove_network(&net("apxtnever", "10.213.99.0/24", true))
            .await
            .unwrap();
        let v = View::of(&fw).await;
        assert_eq!(v.set("bridges"), ["apxtb2"]);
        assert_eq!(v.set("same_bridge"), ["apxtb2 . apxtb2"]);
        assert_eq!(v.set("internal_bridges"), ["apxtb2"]);
        assert!(v.set("masq_subnets").is_empty());

        // A failing transaction changes nothing. Rejected by nft itself: overlapping subnets.
        let before = fw.list().await.unwrap();
        let err = fw
            .sync(&[
                net("apxtb5", "10.213.0.0/16", false),
                net("apxtb6", "10.213.5.0/24", false),
            ])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("interval overlaps"), "{err}");
        assert_eq!(fw.list().await.unwrap(), before, "all or nothing");
        // Rejected by the kernel at the very end, after the table was deleted and rebuilt in
        // the same transaction: deleting an element that does not exist.
        let mut rs = fw.sync_ruleset(&[net("apxtb5", "10.213.85.0/24", false)]);
        rs["nftables"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
                {"delete": {"element": {"family": "inet", "table": "apex", "name": "bridges",
                                        "elem": ["apxtnothere"]}}}
            ));
        let err = nft_apply(&rs).await.unwrap_err();
        assert!(
            err.to_string().contains("No such file or directory"),
            "{err}"
        );
        assert_eq!(fw.list().await.unwrap(), before, "all or nothing");

        // sync replaces everything.
        fw.sync(&[net("apxtb7", "10.213.87.0/24", false)])
            .await
            .unwrap();
        let v = View::of(&fw).await;
        assert_eq!(v.set("bridges"), ["apxtb7"]);
        assert_eq!(v.set("masq_subnets"), ["10.213.87.0/24"]);
        assert_eq!(v.rules("forward"), 6);

        fw.remove_table().await.unwrap();
        assert!(fw.list().await.unwrap().is_none());
        fw.remove_table().await.unwrap();

        assert_eq!(
            nft_list_table("inet", "other").await.unwrap().unwrap(),
            other_before,
            "other tables untouched"
        );
    });
}

mod traffic {
    use super::*;
    use std::time::Duration;

    use apex_net::bridge;
    use apex_net::ipam::NetworkState;
    use apex_net::netlink::Netlink;
    use common::Netns;
    use rtnetlink::LinkUnspec;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::time::timeout;

    /// Plugs namespace `ns` into the current one with a veth pair: `host_if` stays here
    /// (attached to `bridge` if given), the peer becomes `eth0` in `ns` with `addr`.
    async fn plug(
        nl: &Netlink,
        ns: &Netns,
        host_if: &str,
        bridge: Option<&str>,
        addr: &str,
        route: &str,
    ) {
        let peer = format!("{host_if}p");
        common::sh(&format!("ip link add {host_if} type veth peer name {peer}"));
        let idx = nl.link(&peer).await.unwrap().unwrap().index;
        nl.handle()
            .link()
            .set(LinkUnspec::new_with_index(idx).setns_by_fd(ns.fd()).build())
            .execute()
            .await
            .unwrap();
        if let Some(br) = bridge {
            common::sh(&format!("ip link set {host_if} master {br}"));
        }
        common::sh(&format!("ip link set {host_if} up"));
        let cmd = format!(
            "ip link set {peer} name eth0 && ip link set eth0 up && ip addr add {addr} dev eth0 && ip route add {route}"
        );
        ns.run(|| common::sh(&cmd));
    }

    /// A TCP server in `ns` that tells each client the address it sees it connect from.
    fn serve(ns: &Netns, addr: &str) {
        let l = ns.run(|| std::net::TcpListener::bind(addr).unwrap());
        l.set_nonblocking(true).unwrap();
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, peer)) = l.accept().await {
                let _ = s.write_all(format!("{}\n", peer.ip()).as_bytes()).await;
            }
        });
    }

    /// Connects from `ns` to `addr`: the source address the server saw, or `None` when the
    /// connection does not get through. Expected successes get a generous timeout (loaded CI
    /// machines); expected failures are dropped SYNs, so a short one suffices.
    async fn probe(ns: &Netns, addr: &str) -> Option<String> {
        probe_for(ns, addr, Duration::from_secs(5)).await
    }

    async fn blocked(ns: &Netns, addr: &str) -> bool {
        probe_for(ns, addr, Duration::from_millis(700))
            .await
            .is_none()
    }

    async fn probe_for(ns: &Netns, addr: &str, wait: Duration) -> Option<String> {
        let sock = ns.run(|| tokio::net::TcpSocket::new_v4().unwrap());
        let s = timeout(wait, sock.connect(addr.parse().unwrap()))
            .await
            .ok()?
            .ok()?;
        let mut line = String::new();
        timeout(wait, BufReader::new(s).read_line(&mut line))
            .await
            .ok()?
            .ok()?;
        Some(line.trim().to_string())
    }

    #[test]
    fn nat_internal_and_isolation_hold_for_real_traffic() {
        common::in_new_netns("firewall_traffic", || async {
            let nl = Netlink::connect().unwrap();
            let host = Netns::current();
            let nets = [
                NetworkState::new("a", "apxtba", "10.213.81.0/24".parse().unwrap(), false),
                NetworkState::new("b", "apxtbb", "10.213.82.0/24".parse().unwrap(), true),
                NetworkState::new("c", "apxtbc", "10.213.83.0/24".parse().unwrap(), false),
            ];
            for n in &nets {
                bridge::ensure_network(&nl, n).await.unwrap();
            }
            let (c1, c1b, c2, c3, outside) = (
                Netns::new(),
                Netns::new(),
                Netns::new(),
                Netns::new(),
                Netns::new(),
            );
            plug(
                &nl,
                &c1,
                "apxtv1",
                Some("apxtba"),
                "10.213.81.2/24",
                "default via 10.213.81.1",
            )
            .await;
            plug(
                &nl,
                &c1b,
                "apxtv2",
                Some("apxtba"),
                "10.213.81.3/24",
                "default via 10.213.81.1",
            )
            .await;
            plug(
                &nl,
                &c2,
                "apxtv3",
                Some("apxtbb"),
                "10.213.82.2/24",
                "default via 10.213.82.1",
            )
            .await;
            plug(
                &nl,
                &c3,
                "apxtv4",
                Some("apxtbc"),
                "10.213.83.2/24",
                "default via 10.213.83.1",
            )
            .await;
            // The "outside world": a host that could route back to the containers directly.
            plug(
                &nl,
                &outside,
                "apxto0",
                None,
                "10.213.200.2/24",
                "10.213.80.0/20 via 10.213.200.1",
            )
            .await;
            common::sh("ip addr add 10.213.200.1/24 dev apxto0");

            for (ns, addr) in [
                (&outside, "10.213.200.2:7000"),
                (&c1, "10.213.81.2:7000"),
                (&c1b, "10.213.81.3:7000"),
                (&c2, "10.213.82.2:7000"),
                (&c3, "10.213.83.2:7000"),
                (&host, "10.213.82.1:7000"),
            ] {
                serve(ns, addr);
            }

            // Without the firewall everything is routed (the control experiment).
            assert_eq!(
                probe(&c1, "10.213.83.2:7000").await.as_deref(),
                Some("10.213.81.2")
            );
            assert_eq!(
                probe(&c2, "10.213.200.2:7000").await.as_deref(),
                Some("10.213.82.2")
            );
            assert_eq!(
                probe(&outside, "10.213.81.2:7000").await.as_deref(),
                Some("10.213.200.2")
            );

            let fw = Firewall::default();
            for n in &nets {
                fw.add_network(&n.into()).await.unwrap();
            }
            // Outbound from a normal network is masqueraded behind the host.
            assert_eq!(
                probe(&c1, "10.213.200.2:7000").await.as_deref(),
                Some("10.213.200.1")
            );
            // Same network: direct.
            assert_eq!(
                probe(&c1, "10.213.81.3:7000").await.as_deref(),
                Some("10.213.81.2")
            );
            // Different networks: isolated, both ways.
            assert!(blocked(&c1, "10.213.83.2:7000").await);
            assert!(blocked(&c3, "10.213.81.2:7000").await);
            assert!(blocked(&c1, "10.213.82.2:7000").await);
            // Internal: no way out, but the gateway (DNS) and the host still work.
            assert!(blocked(&c2, "10.213.200.2:7000").await);
            assert_eq!(
                probe(&c2, "10.213.82.1:7000").await.as_deref(),
                Some("10.213.82.2")
            );
            assert_eq!(
                probe(&host, "10.213.82.2:7000").await.as_deref(),
                Some("10.213.82.1")
            );
            // Nothing unsolicited comes in from outside.
            assert!(blocked(&outside, "10.213.81.2:7000").await);

            fw.remove_table().await.unwrap();
            assert_eq!(
                probe(&c1, "10.213.83.2:7000").await.as_deref(),
                Some("10.213.81.2")
            );
        });
    }
}
