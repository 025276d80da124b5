//! NAT and isolation with nftables, in one table (`inet apex`) that apex owns entirely.
//!
//! The rules are static; networks are only *elements of named sets*:
//!
//! ```text
//! table inet apex {
//!   set bridges          { type ifname }            # every apex bridge
//!   set same_bridge      { type ifname . ifname }   # "br . br" for every bridge
//!   set internal_bridges { type ifname }            # bridges of --internal networks
//!   set masq_subnets     { type ipv4_addr; flags interval }  # non-internal subnets
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     iifname . oifname @same_bridge accept     # within a network (br_netfilter)
//!     iifname @bridges oifname @bridges drop    # network A <-> network B
//!     iifname @internal_bridges drop            # internal: nothing leaves the bridge
//!     oifname @internal_bridges drop            # ... and nothing comes in
//!     oifname @bridges ct state established,related accept
//!     oifname @bridges drop                     # no unsolicited inbound from outside
//!   }
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr @masq_subnets oifname != @bridges masquerade
//!   }
//! }
//! ```
//!
//! So adding or removing a network is a handful of element updates, applied together with
//! a refresh of the static part in one `nft -j -f -` transaction (all or nothing), and never
//! needs rule handles. Other tables are never touched. Policies are `accept`, so other
//! software's tables keep the last word on what they drop.
//!
//! The JSON is built with `serde_json::json!` rather than the `nftables` crate: it is
//! nft's documented input format (libnftables-json(5)), we need a dozen statements, and
//! this keeps the exact ruleset readable in one place.

use std::net::Ipv4Addr;
use std::process::Stdio;

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::ipam::NetworkState;
use crate::{Error, Result};

/// Default table name (family `inet`).
pub const TABLE: &str = "apex";
const FAMILY: &str = "inet";

/// What the firewall needs to know about a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallNetwork {
    /// The network's bridge.
    pub bridge: String,
    /// Its subnet (masqueraded unless internal).
    pub subnet: Ipv4Net,
    /// No NAT, nothing in or out beyond the bridge.
    pub internal: bool,
}

impl From<&NetworkState> for FirewallNetwork {
    fn from(n: &NetworkState) -> Self {
        FirewallNetwork {
            bridge: n.bridge.clone(),
            subnet: n.subnet().net(),
            internal: n.internal,
        }
    }
}

/// The apex nftables table. Callers serialize changes (apexd holds one instance).
#[derive(Clone, Debug)]
pub struct Firewall {
    table: String,
}

impl Default for Firewall {
    fn default() -> Self {
        Firewall::new(TABLE)
    }
}

impl Firewall {
    /// Manages table `inet <table>`.
    pub fn new(table: &str) -> Self {
        Firewall {
            table: table.to_string(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Adds (or updates) a network's rules. Idempotent.
    pub async fn add_network(&self, net: &FirewallNetwork) -> Result<()> {
        nft_apply(&self.add_network_ruleset(net)).await
    }

    /// Removes a network's rules. Idempotent.
    pub async fn remove_network(&self, net: &FirewallNetwork) -> Result<()> {
        nft_apply(&self.remove_network_ruleset(net)).await
    }

    /// Replaces the whole table with exactly `nets` (startup and crash recovery).
    pub async fn sync(&self, nets: &[FirewallNetwork]) -> Result<()> {
        nft_apply(&self.sync_ruleset(nets)).await
    }

    /// Deletes the table. Idempotent.
    pub async fn remove_table(&self) -> Result<()> {
        let cmds = vec![
            json!({"add": {"table": self.table_obj()}}),
            json!({"delete": {"table": self.table_obj()}}),
        ];
        nft_apply(&ruleset(cmds)).await
    }

    /// The current table as `nft -j list table` prints it, `None` if it does not exist.
    pub async fn list(&self) -> Result<Option<Value>> {
        nft_list_table(FAMILY, &self.table).await
    }

    /// The transaction [`Firewall::add_network`] applies.
    pub fn add_network_ruleset(&self, net: &FirewallNetwork) -> Value {
        let mut cmds = self.base();
        cmds.extend(self.elements("add", net));
        // Flip the internal flag if it changed: remove from the set that no longer applies
        // (the add-then-delete pair makes the delete valid whether or not it was there).
        let other = FirewallNetwork {
            internal: !net.internal,
            ..net.clone()
        };
        for cmd in self.flag_elements("add", &other) {
            cmds.push(cmd);
        }
        for cmd in self.flag_elements("delete", &other) {
            cmds.push(cmd);
        }
        ruleset(cmds)
    }

    /// The transaction [`Firewall::remove_network`] applies.
    pub fn remove_network_ruleset(&self, net: &FirewallNetwork) -> Value {
        let mut cmds = self.base();
        let both = [
            net.clone(),
            FirewallNetwork {
                internal: !net.internal,
                ..net.clone()
            },
        ];
        // Add first so that the deletes are valid even if the network was never added.
        for verb in ["add", "delete"] {
            cmds.extend(self.elements(verb, &both[0]));
            cmds.extend(self.flag_elements(verb, &both[1]));
        }
        ruleset(cmds)
    }

    /// The transaction [`Firewall::sync`] applies.
    pub fn sync_ruleset(&self, nets: &[FirewallNetwork]) -> Value {
        let mut cmds = vec![
            json!({"add": {"table": self.table_obj()}}),
            json!({"delete": {"table": self.table_obj()}}),
        ];
        cmds.extend(self.base());
        for net in nets {
            cmds.extend(self.elements("add", net));
        }
        ruleset(cmds)
    }

    fn table_obj(&self) -> Value {
        json!({"family": FAMILY, "name": self.table})
    }

    fn obj(&self, name: &str) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("family".into(), FAMILY.into());
        m.insert("table".into(), self.table.clone().into());
        m.insert("name".into(), name.into());
        m
    }

    fn set(&self, name: &str, ty: Value, interval: bool) -> Value {
        let mut s = self.obj(name);
        s.insert("type".into(), ty);
        if interval {
            s.insert("flags".into(), json!(["interval"]));
        }
        json!({"add": {"set": s}})
    }

    fn base_chain(&self, name: &str, ty: &str, hook: &str, prio: i32) -> Value {
        let mut c = self.obj(name);
        c.insert("type".into(), ty.into());
        c.insert("hook".into(), hook.into());
        c.insert("prio".into(), prio.into());
        c.insert("policy".into(), "accept".into());
        json!({"add": {"chain": c}})
    }

    fn rule(&self, chain: &str, comment: &str, expr: Vec<Value>) -> Value {
        let mut r = serde_json::Map::new();
        r.insert("family".into(), FAMILY.into());
        r.insert("table".into(), self.table.clone().into());
        r.insert("chain".into(), chain.into());
        r.insert("expr".into(), Value::Array(expr));
        r.insert("comment".into(), comment.into());
        json!({"add": {"rule": r}})
    }

    /// Table, sets and base chains (created if missing), chains flushed and refilled with
    /// the static rules. Safe to repeat in every transaction.
    fn base(&self) -> Vec<Value> {
        let iif = || json!({"meta": {"key": "iifname"}});
        let oif = || json!({"meta": {"key": "oifname"}});
        let is =
            |left: Value, right: &str| json!({"match": {"op": "==", "left": left, "right": right}});
        vec![
            json!({"add": {"table": self.table_obj()}}),
            self.set("bridges", json!("ifname"), false),
            self.set("same_bridge", json!(["ifname", "ifname"]), false),
            self.set("internal_bridges", json!("ifname"), false),
            self.set("masq_subnets", json!("ipv4_addr"), true),
            self.base_chain("forward", "filter", "forward", 0),
            self.base_chain("postrouting", "nat", "postrouting", 100),
            json!({"flush": {"chain": self.obj("forward")}}),
            json!({"flush": {"chain": self.obj("postrouting")}}),
            self.rule(
                "forward",
                "apex: traffic within one network",
                vec![
                    is(json!({"concat": [iif(), oif()]}), "@same_bridge"),
                    json!({"accept": null}),
                ],
            ),
            self.rule(
                "forward",
                "apex: networks are isolated from each other",
                vec![
                    is(iif(), "@bridges"),
                    is(oif(), "@bridges"),
                    json!({"drop": null}),
                ],
            ),
            self.rule(
                "forward",
                "apex: internal networks do not reach out",
                vec![is(iif(), "@internal_bridges"), json!({"drop": null})],
            ),
            self.rule(
                "forward",
                "apex: internal networks are not reachable",
                vec![is(oif(), "@internal_bridges"), json!({"drop": null})],
            ),
            self.rule(
                "forward",
                "apex: replies to containers",
                vec![
                    is(oif(), "@bridges"),
                    json!({"match": {"op": "in", "left": {"ct": {"key": "state"}},
                                     "right": ["established", "related"]}}),
                    json!({"accept": null}),
                ],
            ),
            self.rule(
                "forward",
                "apex: no unsolicited inbound (publish ports instead)",
                vec![is(oif(), "@bridges"), json!({"drop": null})],
            ),
            self.rule(
                "postrouting",
                "apex: NAT for non-internal networks",
                vec![
                    is(
                        json!({"payload": {"protocol": "ip", "field": "saddr"}}),
                        "@masq_subnets",
                    ),
                    json!({"match": {"op": "!=", "left": oif(), "right": "@bridges"}}),
                    json!({"masquerade": null}),
                ],
            ),
        ]
    }

    fn element(&self, verb: &str, set: &str, elem: Value) -> Value {
        let mut e = self.obj(set);
        e.insert("elem".into(), json!([elem]));
        json!({ verb: {"element": e} })
    }

    /// Elements every network has, plus those of its internal flag.
    fn elements(&self, verb: &str, net: &FirewallNetwork) -> Vec<Value> {
        let b = net.bridge.as_str();
        let mut v = vec![
            self.element(verb, "bridges", json!(b)),
            self.element(verb, "same_bridge", json!({"concat": [b, b]})),
        ];
        v.extend(self.flag_elements(verb, net));
        v
    }

    /// The element that depends on the internal flag.
    fn flag_elements(&self, verb: &str, net: &FirewallNetwork) -> Vec<Value> {
        if net.internal {
            vec![self.element(verb, "internal_bridges", json!(net.bridge))]
        } else {
            let n = net.subnet.trunc();
            vec![self.element(
                verb,
                "masq_subnets",
                json!({"prefix": {"addr": n.network().to_string(), "len": n.prefix_len()}}),
            )]
        }
    }
}

fn ruleset(mut cmds: Vec<Value>) -> Value {
    cmds.insert(0, json!({"metainfo": {"json_schema_version": 1}}));
    json!({ "nftables": cmds })
}

/// Runs `nft -j -f -` with `ruleset` on stdin: one atomic transaction.
pub async fn nft_apply(ruleset: &Value) -> Result<()> {
    let input = serde_json::to_vec(ruleset).expect("a JSON value serializes");
    let out = run_nft(&["-j", "-f", "-"], Some(&input)).await?;
    if !out.status.success() {
        return Err(Error::Nft(format!(
            "ruleset rejected ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// `nft -j list table <family> <name>`, `None` if the table does not exist.
pub async fn nft_list_table(family: &str, name: &str) -> Result<Option<Value>> {
    let out = run_nft(&["-j", "list", "table", family, name], None).await?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(Error::Nft(format!(
            "cannot list table {family} {name}: {}",
            err.trim()
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map(Some)
        .map_err(|e| Error::Nft(format!("unparsable `nft -j list` output: {e}")))
}

async fn run_nft(args: &[&str], stdin: Option<&[u8]>) -> Result<std::process::Output> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io("cannot run nft (is the nftables package installed?)", e))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input)
            .await
            .map_err(|e| Error::io("cannot write to nft", e))?;
    }
    child
        .wait_with_output()
        .await
        .map_err(|e| Error::io("nft did not finish", e))
}

/// The elements of set `name` in a `nft -j list table` document: bridge names as strings,
/// concatenations as `"a . b"`, prefixes as CIDR strings.
pub fn set_elements(listing: &Value, name: &str) -> Vec<String> {
    let Some(items) = listing.get("nftables").and_then(Value::as_array) else {
        return Vec::new();
    };
    for item in items {
        let Some(set) = item.get("set") else { continue };
        if set.get("name").and_then(Value::as_str) != Some(name) {
            continue;
        }
        let elems = set
            .get("elem")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        return elems.iter().map(render_elem).collect();
    }
    Vec::new()
}

fn render_elem(v: &Value) -> String {
    if let Some(s) = v.as_str() {
        return s.to_string();
    }
    if let Some(parts) = v.get("concat").and_then(Value::as_array) {
        return parts
            .iter()
            .map(render_elem)
            .collect::<Vec<_>>()
            .join(" . ");
    }
    if let Some(p) = v.get("prefix") {
        let addr = p.get("addr").and_then(Value::as_str).unwrap_or("?");
        let len = p.get("len").and_then(Value::as_u64).unwrap_or(0);
        return format!("{addr}/{len}");
    }
    if let Some(r) = v.get("range").and_then(Value::as_array) {
        // nft may print an interval as a range: turn an exact CIDR range back into a prefix.
        let a: Option<Ipv4Addr> = r
            .first()
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok());
        let b: Option<Ipv4Addr> = r
            .get(1)
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok());
        if let (Some(a), Some(b)) = (a, b) {
            if let Some(net) = ipnet::Ipv4Subnets::new(a, b, 0).next() {
                if net.broadcast() == b {
                    return net.to_string();
                }
            }
            return format!("{a}-{b}");
        }
    }
    if let Some(e) = v.get("elem") {
        return render_elem(e.get("val").unwrap_or(e));
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(bridge: &str, subnet: &str, internal: bool) -> FirewallNetwork {
        FirewallNetwork {
            bridge: bridge.into(),
            subnet: subnet.parse().unwrap(),
            internal,
        }
    }

    #[test]
    fn rulesets_are_single_transactions_scoped_to_our_table() {
        let fw = Firewall::new("apex");
        for rs in [
            fw.add_network_ruleset(&net("apx0", "10.213.0.0/24", false)),
            fw.remove_network_ruleset(&net("apx0", "10.213.0.0/24", true)),
            fw.sync_ruleset(&[net("a", "10.213.1.0/24", false)]),
        ] {
            let cmds = rs["nftables"].as_array().unwrap();
            assert!(cmds[0].get("metainfo").is_some());
            for cmd in &cmds[1..] {
                let (_, body) = cmd.as_object().unwrap().iter().next().unwrap();
                let (_, obj) = body.as_object().unwrap().iter().next().unwrap();
                let table = obj.get("table").or_else(|| obj.get("name")).unwrap();
                assert_eq!(obj["family"], "inet", "{cmd}");
                assert!(table == "apex" || obj.get("table").is_none(), "{cmd}");
            }
        }
    }

    #[test]
    fn element_rendering() {
        assert_eq!(render_elem(&json!("br0")), "br0");
        assert_eq!(render_elem(&json!({"concat": ["a", "a"]})), "a . a");
        assert_eq!(
            render_elem(&json!({"prefix": {"addr": "10.1.2.0", "len": 24}})),
            "10.1.2.0/24"
        );
        assert_eq!(
            render_elem(&json!({"range": ["10.1.2.0", "10.1.2.255"]})),
            "10.1.2.0/24"
        );
        assert_eq!(
            render_elem(&json!({"elem": {"val": "br1", "comment": "x"}})),
            "br1"
        );
    }
}
