//! Routers on the host, as neutron's L3 agent makes them: one network namespace per router
//! (`qrouter-<id>`), a veth per interface whose host end (`tap<port id>`) is on the
//! network's bridge and whose namespace end (`qr-<port id>`) holds the port's address, a
//! veth from the namespace (`qg-…`) to the public bridge holding the gateway's address and
//! the floating IPs, forwarding on, static routes, and one nftables table in the namespace
//! for SNAT and the floating IPs' DNAT/SNAT.
//!
//! [`HostNet::apply_routers`] makes the host match a [`HostRouters`] exactly: it is called
//! with every router after each change and at start, so a crash between two steps is
//! repaired by the next call. A namespace is this home's when `<home>/net/routers/<id>`
//! exists (written before the namespace is made); others are never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;

use super::bridge::{self, alias};
use super::host::{self, Link};
use super::{BridgeNet, HostNet, NetError};
use crate::cidr::Ipv4Cidr;
use crate::home::Home;
use crate::network::routers::{HostRouter, HostRouters, RouterLeg};

/// The nft table in each router's namespace.
pub const ROUTER_TABLE: &str = "novabox_router";

fn markers(home: &Home) -> PathBuf {
    home.root().join("net").join("routers")
}

/// The router ids this home has made namespaces for.
fn marked(home: &Home) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(markers(home)) else { return BTreeSet::new() };
    entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect()
}

fn namespaces() -> Result<BTreeSet<String>, NetError> {
    let out = host::run("ip", &["netns", "list"])?;
    Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

fn ns_links(ns: &str) -> Result<Vec<Link>, NetError> {
    host::parse_links(&host::run("ip", &["-n", ns, "-json", "link", "show"])?)
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    family: String,
    local: String,
    prefixlen: u8,
}

#[derive(Debug, Deserialize)]
struct IfAddrs {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

/// The IPv4 addresses (`a.b.c.d/len`) on `dev` in `ns`.
fn addresses(ns: &str, dev: &str) -> Result<BTreeSet<String>, NetError> {
    let out = host::run("ip", &["-n", ns, "-json", "addr", "show", "dev", dev])?;
    let parsed: Vec<IfAddrs> = if out.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&out).map_err(|e| NetError::Parse { what: "ip -json addr", detail: e.to_string() })?
    };
    Ok(parsed
        .into_iter()
        .flat_map(|i| i.addr_info)
        .filter(|a| a.family == "inet")
        .map(|a| format!("{}/{}", a.local, a.prefixlen))
        .collect())
}

#[derive(Debug, Deserialize)]
struct RouteEntry {
    dst: String,
}

fn static_routes(ns: &str) -> Result<BTreeSet<String>, NetError> {
    let out = host::run("ip", &["-n", ns, "-json", "-4", "route", "show", "proto", "static"])?;
    if out.trim().is_empty() {
        return Ok(BTreeSet::new());
    }
    let routes: Vec<RouteEntry> =
        serde_json::from_str(&out).map_err(|e| NetError::Parse { what: "ip -json route", detail: e.to_string() })?;
    Ok(routes.into_iter().map(|r| r.dst).collect())
}

/// What one leg puts in the namespace: its device, the addresses on it.
fn leg_addresses(leg: &RouterLeg, extra: &[Ipv4Addr]) -> Result<BTreeSet<String>, NetError> {
    let cidr: Ipv4Cidr = leg
        .vif
        .cidr
        .as_deref()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| NetError::IncompleteVif { port: leg.vif.port_id.clone(), what: "a subnet" })?;
    let mut out: BTreeSet<String> = leg.vif.ips.iter().map(|ip| format!("{ip}/{}", cidr.prefix())).collect();
    out.extend(extra.iter().map(|ip| format!("{ip}/32")));
    Ok(out)
}

/// The nft script of one router's namespace, replacing its table in one transaction.
pub fn render_nat(r: &HostRouter) -> String {
    let t = ROUTER_TABLE;
    let mut s = format!("table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n");
    s.push_str("  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n");
    for n in &r.floating {
        s.push_str(&format!("    ip daddr {} dnat to {}\n", n.floating_ip, n.fixed_ip));
    }
    s.push_str("  }\n  chain output {\n    type nat hook output priority -100; policy accept;\n");
    for n in &r.floating {
        s.push_str(&format!("    ip daddr {} dnat to {}\n", n.floating_ip, n.fixed_ip));
    }
    s.push_str("  }\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
    if let Some(gw) = &r.gateway {
        for n in &r.floating {
            s.push_str(&format!("    ip saddr {} oifname \"{}\" snat to {}\n", n.fixed_ip, gw.device, n.floating_ip));
        }
        if let (true, Some(ip)) = (r.snat, gw.vif.ips.first()) {
            for leg in &r.interfaces {
                if let Some(cidr) = &leg.vif.cidr {
                    s.push_str(&format!("    ip saddr {cidr} oifname \"{}\" snat to {ip}\n", gw.device));
                }
            }
        }
    }
    s.push_str("  }\n}\n");
    s
}

impl HostNet {
    /// Makes this host's routers exactly `want` (see the module's documentation). Steps
    /// that change what guests see go in an order that never puts one address in two
    /// places: legs that go are removed first, then the bridges' host addresses move (the
    /// host gives a subnet's gateway up to the router, or takes it back), then new legs come.
    pub fn apply_routers(&self, want: &HostRouters) -> Result<(), NetError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: BTreeMap<&str, &HostRouter> = want.routers.iter().map(|r| (r.id.as_str(), r)).collect();
        let existing = namespaces()?;
        for id in marked(&self.home) {
            if !wanted.contains_key(id.as_str()) {
                remove_router(&self.home, &id, &existing)?;
                tracing::info!(router = %id, "router removed");
            }
        }
        for r in &want.routers {
            if existing.contains(&r.namespace) {
                self.prune_legs(r)?;
            }
        }
        self.move_host_addresses(want)?;
        // One router that cannot be made must not keep the others from being made.
        let mut first_error = None;
        for r in &want.routers {
            if let Err(e) = self.ensure_router(r, &existing) {
                tracing::error!(router = %r.id, error = %e, "router not plumbed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes the namespace's links that no leg of `r` wants (a removed interface).
    fn prune_legs(&self, r: &HostRouter) -> Result<(), NetError> {
        let legs: BTreeSet<&str> = r.interfaces.iter().chain(r.gateway.iter()).map(|l| l.device.as_str()).collect();
        for l in ns_links(&r.namespace)? {
            let ours = l.ifname.starts_with("qr-") || l.ifname.starts_with("qg-");
            if ours && !legs.contains(l.ifname.as_str()) {
                host::run("ip", &["-n", &r.namespace, "link", "del", "dev", &l.ifname])?;
                tracing::info!(router = %r.id, device = %l.ifname, "router leg removed");
            }
        }
        Ok(())
    }

    /// Each routed network's bridge keeps the DHCP port's address instead of the gateway;
    /// a network no router has the gateway of any more gets it back.
    fn move_host_addresses(&self, want: &HostRouters) -> Result<(), NetError> {
        let mut routed: BTreeMap<String, BridgeNet> = BTreeMap::new();
        for leg in want.routers.iter().flat_map(|r| r.interfaces.iter()) {
            match BridgeNet::from_vif(&leg.vif, &self.physnets) {
                Ok(net) => {
                    routed.insert(net.bridge.clone(), net);
                }
                Err(e) => {
                    tracing::warn!(port = %leg.vif.port_id, error = %e, "router interface without a bridge subnet")
                }
            }
        }
        for known in self.networks() {
            if known.host_ip.is_some() && !routed.contains_key(&known.bridge) {
                self.ensure_network_locked(&BridgeNet { host_ip: None, ..known })?;
            }
        }
        for net in routed.values() {
            let dir = Self::dir(&self.home, &net.bridge);
            let known: Option<BridgeNet> =
                std::fs::read(dir.join("network.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
            if known.as_ref() != Some(net) {
                self.ensure_network_locked(net)?;
            }
        }
        Ok(())
    }

    fn ensure_router(&self, r: &HostRouter, existing: &BTreeSet<String>) -> Result<(), NetError> {
        let ns = &r.namespace;
        if !existing.contains(ns) {
            let dir = markers(&self.home);
            std::fs::create_dir_all(&dir).map_err(|e| NetError::Io(dir.clone(), e.to_string()))?;
            super::dnsmasq::write(&dir.join(&r.id), ns.as_bytes())?;
            host::run("ip", &["netns", "add", ns])?;
            tracing::info!(router = %r.id, namespace = %ns, "router namespace created");
        } else if !marked(&self.home).contains(&r.id) {
            // Made by someone else (the marker is written before `ip netns add`).
            return Err(NetError::ForeignLink { name: ns.clone(), owner: "another program".into() });
        }
        host::run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        for key in ["net.ipv4.ip_forward=1", "net.ipv4.conf.default.arp_notify=1", "net.ipv4.conf.all.arp_notify=1"] {
            host::run("ip", &["netns", "exec", ns, "sysctl", "-q", "-w", key])?;
        }
        let links = host::links()?;
        let inside = ns_links(ns)?;
        for leg in &r.interfaces {
            self.ensure_leg(r, leg, &links, &inside, &[])?;
        }
        if let Some(gw) = &r.gateway {
            let fips: Vec<Ipv4Addr> = r.floating.iter().map(|n| n.floating_ip).collect();
            self.ensure_leg(r, gw, &links, &inside, &fips)?;
            match gw.vif.gateway.as_deref() {
                Some(next) => {
                    host::run("ip", &["-n", ns, "route", "replace", "default", "via", next, "dev", &gw.device])?;
                }
                None => {
                    let _ = host::run("ip", &["-n", ns, "route", "del", "default"]);
                }
            }
        } else {
            let _ = host::run("ip", &["-n", ns, "route", "del", "default"]);
        }
        let wanted_routes: BTreeSet<String> = r.routes.iter().map(|h| h.destination.clone()).collect();
        for dst in static_routes(ns)? {
            if !wanted_routes.contains(&dst) {
                host::run("ip", &["-n", ns, "route", "del", &dst, "proto", "static"])?;
            }
        }
        for h in &r.routes {
            let added =
                host::run("ip", &["-n", ns, "route", "replace", &h.destination, "via", &h.nexthop, "proto", "static"]);
            if let Err(e) = added {
                // The API checks each next hop is on one of the router's subnets; a route the
                // kernel still refuses is reported, not a reason to leave the NAT unmade.
                tracing::warn!(router = %r.id, destination = %h.destination, nexthop = %h.nexthop, error = %e, "static route not added");
            }
        }
        host::run_input("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(&render_nat(r)))?;
        Ok(())
    }

    /// One veth: its host end on the network's bridge, its namespace end with the port's MAC
    /// and exactly the wanted addresses (`extra`: the floating IPs, on the gateway).
    fn ensure_leg(
        &self,
        r: &HostRouter,
        leg: &RouterLeg,
        links: &[Link],
        inside: &[Link],
        extra: &[Ipv4Addr],
    ) -> Result<(), NetError> {
        let ns = &r.namespace;
        let missing = |what| NetError::IncompleteVif { port: leg.vif.port_id.clone(), what };
        let tap = leg.vif.tap.clone().ok_or_else(|| missing("a tap"))?;
        let bridge_name = leg.vif.bridge.clone().ok_or_else(|| missing("a bridge"))?;
        if !bridge::valid_ifname(&tap) || !bridge::valid_ifname(&leg.device) || !bridge::valid_ifname(&bridge_name) {
            return Err(missing("valid interface names"));
        }
        if !links.iter().any(|l| l.ifname == bridge_name) {
            return Err(NetError::Command {
                command: format!("plug router {} into {bridge_name}", r.id),
                detail: format!("the bridge {bridge_name} does not exist"),
            });
        }
        let host_end = links.iter().find(|l| l.ifname == tap);
        if let Some(l) = host_end {
            if l.ifalias.as_deref() != Some(alias(&self.tag).as_str()) {
                return Err(NetError::ForeignLink {
                    name: tap.clone(),
                    owner: l.ifalias.clone().unwrap_or_else(|| "another program".into()),
                });
            }
        }
        let ns_end = inside.iter().any(|l| l.ifname == leg.device);
        if host_end.is_none() || !ns_end {
            if host_end.is_some() {
                host::run("ip", &["link", "del", "dev", &tap])?;
            }
            if ns_end {
                host::run("ip", &["-n", ns, "link", "del", "dev", &leg.device])?;
            }
            host::run("ip", &["link", "add", &tap, "type", "veth", "peer", "name", &leg.device, "netns", ns])?;
            host::run("ip", &["link", "set", "dev", &tap, "alias", &alias(&self.tag)])?;
            host::run("ip", &["-n", ns, "link", "set", "dev", &leg.device, "address", &leg.vif.mac])?;
            host::run("ip", &["-n", ns, "link", "set", "dev", &leg.device, "alias", &alias(&self.tag)])?;
            tracing::info!(router = %r.id, device = %leg.device, %tap, bridge = %bridge_name, "router leg created");
        }
        if host_end.and_then(|l| l.master.as_deref()) != Some(bridge_name.as_str()) {
            host::run("ip", &["link", "set", "dev", &tap, "master", &bridge_name])?;
        }
        host::run("ip", &["link", "set", "dev", &tap, "up"])?;
        let want = leg_addresses(leg, extra)?;
        let have = addresses(ns, &leg.device)?;
        for a in have.difference(&want) {
            host::run("ip", &["-n", ns, "addr", "del", a, "dev", &leg.device])?;
        }
        for a in want.difference(&have) {
            host::run("ip", &["-n", ns, "addr", "add", a, "dev", &leg.device])?;
        }
        // Brought up after its addresses: with arp_notify the kernel announces them, so guests
        // that knew the gateway at the host bridge's MAC learn the router's at once.
        host::run("ip", &["-n", ns, "link", "set", "dev", &leg.device, "up"])?;
        Ok(())
    }
}

/// Deletes a router's namespace (its veths go with it) and its marker.
fn remove_router(home: &Home, id: &str, existing: &BTreeSet<String>) -> Result<(), NetError> {
    let ns = crate::network::routers::namespace(id);
    if existing.contains(&ns) {
        host::run("ip", &["netns", "del", &ns])?;
    }
    let marker = markers(home).join(id);
    std::fs::remove_file(&marker)
        .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
        .map_err(|e| NetError::Io(marker, e.to_string()))
}

/// `down`: every router namespace of this home; the names removed.
pub fn down(home: &Home) -> Result<Vec<String>, NetError> {
    let ids = marked(home);
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let existing = namespaces()?;
    let mut removed = Vec::new();
    for id in ids {
        remove_router(home, &id, &existing)?;
        removed.push(crate::network::routers::namespace(&id));
    }
    Ok(removed)
}

/// The namespaces this home holds now (for `status` and the tests).
pub fn router_namespaces(home: &Home) -> Vec<String> {
    marked(home).iter().map(|id| crate::network::routers::namespace(id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::routers::Nat;
    use crate::network::vif::Vif;

    fn leg(port: &str, device: &str, ip: &str, cidr: &str, gateway: &str) -> RouterLeg {
        RouterLeg {
            vif: Vif {
                port_id: port.into(),
                ips: vec![ip.into()],
                cidr: Some(cidr.into()),
                gateway: Some(gateway.into()),
                bridge: Some("nbr0".into()),
                tap: Some(format!("tap{port}")),
                mac: "fa:16:3e:00:00:01".into(),
                ..Default::default()
            },
            device: device.into(),
        }
    }

    fn router(snat: bool) -> HostRouter {
        HostRouter {
            id: "r1".into(),
            namespace: "qrouter-r1".into(),
            interfaces: vec![leg("p1", "qr-p1", "10.42.0.1", "10.42.0.0/24", "10.42.0.1")],
            gateway: Some(leg("p2", "qg-p2", "172.24.4.5", "172.24.4.0/24", "172.24.4.1")),
            snat,
            routes: Vec::new(),
            floating: vec![Nat { floating_ip: "172.24.4.9".parse().unwrap(), fixed_ip: "10.42.0.7".parse().unwrap() }],
        }
    }

    #[test]
    fn nat_has_snat_only_when_asked_and_one_dnat_per_floating_ip() {
        let s = render_nat(&router(true));
        assert!(s.starts_with("table ip novabox_router {}\ndelete table ip novabox_router\n"), "{s}");
        assert!(s.contains("ip daddr 172.24.4.9 dnat to 10.42.0.7"), "{s}");
        assert!(s.contains("ip saddr 10.42.0.7 oifname \"qg-p2\" snat to 172.24.4.9"), "{s}");
        assert!(s.contains("ip saddr 10.42.0.0/24 oifname \"qg-p2\" snat to 172.24.4.5"), "{s}");
        let s = render_nat(&router(false));
        assert!(!s.contains("snat to 172.24.4.5"), "{s}");
        assert!(s.contains("snat to 172.24.4.9"), "floating IPs are SNATed without enable_snat too:\n{s}");
        let mut r = router(true);
        r.gateway = None;
        assert!(!render_nat(&r).contains("snat"), "no gateway, no NAT out");
    }

    #[test]
    fn legs_hold_their_address_and_the_gateway_the_floating_ips() {
        let r = router(true);
        let a = leg_addresses(&r.interfaces[0], &[]).unwrap();
        assert_eq!(a, BTreeSet::from(["10.42.0.1/24".to_string()]));
        let g = leg_addresses(r.gateway.as_ref().unwrap(), &["172.24.4.9".parse().unwrap()]).unwrap();
        assert_eq!(g, BTreeSet::from(["172.24.4.5/24".to_string(), "172.24.4.9/32".to_string()]));
    }

    /// nft itself accepts the script (syntax check only, `-c` changes nothing).
    #[test]
    fn nft_accepts_the_router_script() {
        if !host::has("nft") || !host::has_net_admin() {
            eprintln!("nft or CAP_NET_ADMIN missing; skipping its syntax check");
            return;
        }
        let out = host::run_input("nft", &["-c", "-f", "-"], Some(&render_nat(&router(true))));
        assert!(out.is_ok(), "{out:?}");
    }
}
