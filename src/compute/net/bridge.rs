//! Bridges and taps. Each link novabox creates carries the alias `novabox:<tag>`, which is how
//! a later start tells its own bridge from someone else's, and how `down` finds what to delete.

use std::net::Ipv4Addr;

use super::host::{self, Link, Route};
use super::NetError;
use crate::cidr::Ipv4Cidr;

/// The alias that marks a link as this home's.
pub fn alias(tag: &str) -> String {
    format!("novabox:{tag}")
}

/// What a bridge's preflight found.
#[derive(Debug, PartialEq, Eq)]
pub enum Existing {
    /// No link of that name: it will be created.
    Absent,
    /// Our own bridge from an earlier start.
    Ours,
}

/// Checks, before anything changes, that `bridge` with `cidr` can be set up: no link of that name
/// that is not ours, and no route (other than through our own bridge) overlapping the CIDR.
pub fn preflight(
    links: &[Link],
    routes: &[Route],
    bridge: &str,
    cidr: &Ipv4Cidr,
    tag: &str,
) -> Result<Existing, NetError> {
    let existing = match links.iter().find(|l| l.ifname == bridge) {
        None => Existing::Absent,
        Some(l) if l.ifalias.as_deref() == Some(alias(tag).as_str()) => Existing::Ours,
        Some(l) => {
            return Err(NetError::ForeignLink {
                name: bridge.to_string(),
                owner: l.ifalias.clone().unwrap_or_else(|| "another program".into()),
            })
        }
    };
    for r in routes {
        if r.dev.as_deref() == Some(bridge) {
            continue;
        }
        let Some(dst) = route_cidr(&r.dst) else { continue };
        if dst.overlaps(cidr) {
            return Err(NetError::Overlap {
                cidr: cidr.to_string(),
                route: r.dst.clone(),
                dev: r.dev.clone().unwrap_or_else(|| "?".into()),
            });
        }
    }
    Ok(existing)
}

/// A route's destination as a CIDR; `default` and host routes of other families are skipped.
fn route_cidr(dst: &str) -> Option<Ipv4Cidr> {
    if dst == "default" {
        return None;
    }
    let (addr, prefix) = match dst.split_once('/') {
        Some((a, p)) => (a.parse::<Ipv4Addr>().ok()?, p.parse::<u8>().ok()?),
        None => (dst.parse::<Ipv4Addr>().ok()?, 32),
    };
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix.min(32)) };
    Ipv4Cidr::new_const((u32::from(addr) & mask).to_be_bytes(), prefix)
}

/// Creates (or completes) the bridge with the host's address (the gateway, or the DHCP
/// port's when a router holds the gateway) and brings it up. Another address of `cidr` on
/// our bridge is one the host held before a router took or gave back the gateway: removed.
pub fn ensure_bridge(
    bridge: &str,
    cidr: &Ipv4Cidr,
    address: Ipv4Addr,
    tag: &str,
    existing: Existing,
) -> Result<(), NetError> {
    if existing == Existing::Absent {
        host::run("ip", &["link", "add", "name", bridge, "type", "bridge"])?;
        host::run("ip", &["link", "set", "dev", bridge, "alias", &alias(tag)])?;
    }
    let addr = format!("{address}/{}", cidr.prefix());
    let shown = host::run("ip", &["-4", "-o", "addr", "show", "dev", bridge])?;
    for old in stale_addresses(&shown, cidr, &addr) {
        host::run("ip", &["addr", "del", &old, "dev", bridge])?;
    }
    if !shown.split_whitespace().any(|w| w == addr) {
        host::run("ip", &["addr", "add", &addr, "dev", bridge])?;
    }
    host::run("ip", &["link", "set", "dev", bridge, "up"])?;
    Ok(())
}

/// The addresses of `cidr` in `ip -4 -o addr show` output other than `keep`.
fn stale_addresses(shown: &str, cidr: &Ipv4Cidr, keep: &str) -> Vec<String> {
    shown
        .split_whitespace()
        .filter(|w| w.contains('/') && *w != keep)
        .filter(|w| w.split_once('/').and_then(|(a, _)| a.parse::<Ipv4Addr>().ok()).is_some_and(|a| cidr.contains(a)))
        .map(str::to_string)
        .collect()
}

/// Creates the guest's tap (unless it exists and is ours) and attaches it to `bridge`.
/// True when the tap had to be created: a running qemu holding the old one lost its link.
pub fn ensure_tap(links: &[Link], tap: &str, bridge: &str, tag: &str) -> Result<bool, NetError> {
    let created = match links.iter().find(|l| l.ifname == tap) {
        None => {
            host::run("ip", &["tuntap", "add", "dev", tap, "mode", "tap"])?;
            host::run("ip", &["link", "set", "dev", tap, "alias", &alias(tag)])?;
            true
        }
        Some(l) if l.ifalias.as_deref() == Some(alias(tag).as_str()) => false,
        Some(l) => {
            return Err(NetError::ForeignLink {
                name: tap.to_string(),
                owner: l.ifalias.clone().unwrap_or_else(|| "another program".into()),
            })
        }
    };
    host::run("ip", &["link", "set", "dev", tap, "master", bridge])?;
    host::run("ip", &["link", "set", "dev", tap, "up"])?;
    Ok(created)
}

/// Deletes a link when it exists and is ours; anything else is left alone.
pub fn delete_if_ours(links: &[Link], name: &str, tag: &str) -> Result<(), NetError> {
    if links.iter().any(|l| l.ifname == name && l.ifalias.as_deref() == Some(alias(tag).as_str())) {
        host::run("ip", &["link", "del", "dev", name])?;
    }
    Ok(())
}

/// Every link this home created.
pub fn ours<'a>(links: &'a [Link], tag: &str) -> Vec<&'a Link> {
    let mine = alias(tag);
    links.iter().filter(|l| l.ifalias.as_deref() == Some(mine.as_str())).collect()
}

/// A valid Linux interface name (what `ip` accepts, and safe in nft and dnsmasq files).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, alias: Option<&str>) -> Link {
        Link { ifname: name.into(), ifalias: alias.map(Into::into), master: None }
    }
    fn route(dst: &str, dev: &str) -> Route {
        Route { dst: dst.into(), dev: Some(dev.into()) }
    }

    #[test]
    fn preflight_refuses_foreign_links_and_overlapping_routes() {
        let cidr: Ipv4Cidr = "10.42.0.0/24".parse().unwrap();
        let links = vec![link("docker0", None), link("nbr0", Some("novabox:aaaaaa")), link("virbr0", None)];
        let routes = vec![route("default", "eth0"), route("172.17.0.0/16", "docker0"), route("10.42.0.0/24", "nbr0")];
        assert_eq!(preflight(&links, &routes, "nbr0", &cidr, "aaaaaa").unwrap(), Existing::Ours);
        assert_eq!(preflight(&links, &[], "nbr1", &cidr, "aaaaaa").unwrap(), Existing::Absent);
        let err = preflight(&links, &routes, "virbr0", &cidr, "aaaaaa").unwrap_err().to_string();
        assert!(err.contains("virbr0") && err.contains("not created by this novabox"), "{err}");
        // Another home's bridge is foreign too.
        assert!(preflight(&links, &routes, "nbr0", &cidr, "bbbbbb").is_err());
        let docker: Ipv4Cidr = "172.17.5.0/24".parse().unwrap();
        let err = preflight(&links, &routes, "nbr1", &docker, "aaaaaa").unwrap_err().to_string();
        assert!(err.contains("172.17.0.0/16") && err.contains("docker0") && err.contains("cidr"), "{err}");
        // A VPN's host route inside the range overlaps as well.
        let err = preflight(&[], &[route("10.42.0.9", "tun0")], "nbr1", &cidr, "aaaaaa").unwrap_err();
        assert!(err.to_string().contains("tun0"));
    }

    #[test]
    fn only_other_addresses_of_the_subnet_are_stale() {
        let cidr: Ipv4Cidr = "10.42.0.0/24".parse().unwrap();
        let shown =
            "5: nbr0    inet 10.42.0.1/24 scope global nbr0\n5: nbr0    inet 169.254.169.254/32 scope global nbr0\n";
        assert!(stale_addresses(shown, &cidr, "10.42.0.1/24").is_empty());
        assert_eq!(stale_addresses(shown, &cidr, "10.42.0.2/24"), vec!["10.42.0.1/24".to_string()]);
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(valid_ifname("nbr0"));
        assert!(valid_ifname("tap0123456789a"));
        assert!(!valid_ifname("this-name-is-too-long"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname("x\";"));
    }
}
