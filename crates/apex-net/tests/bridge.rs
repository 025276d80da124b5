//! Bridges, taps and forwarding, in a private network namespace (needs root).

mod common;

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use apex_net::bridge::{self, TapConfig};
use apex_net::ipam::{pick_subnet, NetworkState, Subnet};
use apex_net::netlink::Netlink;
use rtnetlink::packet_route::link::InfoKind;

fn subnet(s: &str) -> Subnet {
    s.parse().unwrap()
}

/// Attaches to a tap by name exactly as QEMU's `-netdev tap,ifname=...` does.
fn qemu_style_open(name: &str) -> std::io::Result<std::fs::File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: all-zero is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: valid tun fd and a live ifreq for the duration of the call.
    if unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

#[test]
fn bridge_and_tap_lifecycle() {
    common::in_new_netns("bridge_and_tap_lifecycle", || async {
        let nl = Netlink::connect().unwrap();

        let idx = bridge::ensure_bridge(&nl, "apxtb0", subnet("10.213.77.0/24"), 1400)
            .await
            .unwrap();
        let br = nl.link("apxtb0").await.unwrap().expect("bridge exists");
        assert_eq!(br.index, idx);
        assert_eq!(br.kind, Some(InfoKind::Bridge));
        assert!(br.up);
        assert_eq!(br.mtu, Some(1400));
        let addrs = nl.ipv4_addresses(idx).await.unwrap();
        assert_eq!(addrs, vec!["10.213.77.1/24".parse().unwrap()]);

        // Idempotent; a changed subnet replaces the address.
        assert_eq!(
            bridge::ensure_bridge(&nl, "apxtb0", subnet("10.213.77.0/24"), 1400)
                .await
                .unwrap(),
            idx
        );
        bridge::ensure_bridge(&nl, "apxtb0", subnet("10.213.78.0/24"), 1400)
            .await
            .unwrap();
        assert_eq!(
            nl.ipv4_addresses(idx).await.unwrap(),
            vec!["10.213.78.1/24".parse().unwrap()]
        );

        let tap = TapConfig {
            name: bridge::tap_name("t0c0ffee0123456789"),
            bridge: "apxtb0".into(),
            mtu: 1400,
            owner: Some(0),
        };
        assert_eq!(tap.name, "apx-t0c0ffee012");
        let tidx = bridge::ensure_tap(&nl, &tap).await.unwrap();
        let t = nl.link(&tap.name).await.unwrap().expect("tap exists");
        assert_eq!(t.index, tidx);
        assert_eq!(t.kind, Some(InfoKind::Tun));
        assert_eq!(t.controller, Some(idx), "attached to the bridge");
        assert_eq!(t.mtu, Some(1400));
        assert!(t.up);
        assert_eq!(
            bridge::ensure_tap(&nl, &tap).await.unwrap(),
            tidx,
            "idempotent"
        );

        // Persistent: still there with no fd open, and QEMU can attach by name.
        {
            let _qemu = qemu_style_open(&tap.name).expect("attach like QEMU");
            // While attached, a second exclusive attach fails (busy) and ensure still works.
            assert!(qemu_style_open(&tap.name).is_err());
            bridge::ensure_tap(&nl, &tap).await.unwrap();
        }
        assert!(
            nl.link(&tap.name).await.unwrap().is_some(),
            "survives close"
        );

        // Wrong kinds and missing bridges are clear errors.
        let err = bridge::ensure_bridge(&nl, &tap.name, subnet("10.213.79.0/24"), 1500)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a bridge"), "{err}");
        let orphan = TapConfig {
            bridge: "apxtnobr".into(),
            ..tap.clone()
        };
        let err = bridge::ensure_tap(&nl, &orphan)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("apxtnobr"), "{err}");
        assert!(bridge::ensure_bridge(
            &nl,
            "apxt-way-too-long-name",
            subnet("10.213.79.0/24"),
            1500
        )
        .await
        .is_err());

        // Removal is idempotent; deleting works while QEMU holds the tap open.
        let held = qemu_style_open(&tap.name).unwrap();
        bridge::remove_tap(&nl, &tap.name).await.unwrap();
        drop(held);
        assert!(nl.link(&tap.name).await.unwrap().is_none());
        bridge::remove_tap(&nl, &tap.name).await.unwrap();
        bridge::remove_bridge(&nl, "apxtb0").await.unwrap();
        assert!(nl.link("apxtb0").await.unwrap().is_none());
        bridge::remove_bridge(&nl, "apxtb0").await.unwrap();
    });
}

#[test]
fn cleanup_all_removes_only_prefixed_links() {
    common::in_new_netns("cleanup_all", || async {
        let nl = Netlink::connect().unwrap();
        for (i, br) in ["apxtb1", "apxtb2"].iter().enumerate() {
            bridge::ensure_bridge(&nl, br, subnet(&format!("10.213.{}.0/24", 90 + i)), 1500)
                .await
                .unwrap();
            for j in 0..2 {
                let cfg = TapConfig {
                    name: format!("apxtt{i}{j}"),
                    bridge: br.to_string(),
                    mtu: 1500,
                    owner: None,
                };
                bridge::ensure_tap(&nl, &cfg).await.unwrap();
            }
        }
        // Not ours.
        bridge::ensure_bridge(&nl, "keepbr0", subnet("10.213.99.0/24"), 1500)
            .await
            .unwrap();

        let mut deleted = bridge::cleanup_all(&nl, "apxt").await.unwrap();
        deleted.sort();
        assert_eq!(
            deleted,
            ["apxtb1", "apxtb2", "apxtt00", "apxtt01", "apxtt10", "apxtt11"]
        );
        let names: Vec<String> = nl
            .links()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert!(names.iter().all(|n| !n.starts_with("apxt")), "{names:?}");
        assert!(names.contains(&"keepbr0".to_string()));
        assert!(bridge::cleanup_all(&nl, "apxt").await.unwrap().is_empty());
        assert!(
            bridge::cleanup_all(&nl, "").await.is_err(),
            "empty prefix refused"
        );
    });
}

#[test]
fn forwarding_follows_non_internal_networks() {
    common::in_new_netns("forwarding", || async {
        let nl = Netlink::connect().unwrap();
        // A new netns inherits the host's IPv4 forwarding setting (devconf_inherit_init_net
        // defaults to inheriting for IPv4), so start from a known "off".
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").unwrap();
        assert!(!bridge::ipv4_forwarding_enabled().unwrap());
        let internal = NetworkState::new("int", "apxtbi", subnet("10.213.60.0/24"), true);
        bridge::ensure_network(&nl, &internal).await.unwrap();
        assert!(
            !bridge::ipv4_forwarding_enabled().unwrap(),
            "internal: still off"
        );
        let open = NetworkState::new("open", "apxtbo", subnet("10.213.61.0/24"), false);
        bridge::ensure_network(&nl, &open).await.unwrap();
        assert!(bridge::ipv4_forwarding_enabled().unwrap());
    });
}

#[test]
fn subnet_picker_sees_host_routes() {
    common::in_new_netns("subnet_picker", || async {
        let nl = Netlink::connect().unwrap();
        // Host-side "LAN" routes occupying the start of the pool.
        bridge::ensure_bridge(&nl, "apxtlan", subnet("10.213.0.0/23"), 1500)
            .await
            .unwrap();
        common::sh("ip route add 10.213.2.128/25 dev apxtlan");
        let used = nl.host_ipv4_subnets().await.unwrap();
        assert!(used.contains(&"10.213.0.0/23".parse().unwrap()), "{used:?}");
        assert!(
            used.contains(&"10.213.2.128/25".parse().unwrap()),
            "{used:?}"
        );
        let mut in_use = used.clone();
        in_use.push("10.213.3.0/24".parse().unwrap()); // another apex network
        let picked = pick_subnet(apex_net::ipam::DEFAULT_POOL, 24, &in_use).unwrap();
        assert_eq!(picked.net(), "10.213.4.0/24".parse().unwrap());
    });
}
