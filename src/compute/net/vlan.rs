//! Provider networks on the host: a flat network's bridge enslaves the interface its
//! physical network is mapped to; a VLAN network's bridge enslaves a VLAN sub-interface of it
//! (`<if>.<vid>`), so frames leave tagged and arrive untagged on the bridge. When the mapping
//! names a bridge (a bridge cannot be enslaved to another), a veth pair joins the two bridges
//! and plays the interface. What novabox creates carries its alias, so `down` removes the
//! sub-interfaces and veths; the mapped interface itself is only released (deleting the
//! bridge does that) and never deleted.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::bridge::alias;
use super::host::{self, Link};
use super::NetError;
use crate::network::provider::{vlan_ifname, NetworkType, Provider};

/// How a provider network's bridge reaches its physical network on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uplink {
    pub physical_network: String,
    /// The host interface or bridge `[network] physical_networks` maps it to.
    pub interface: String,
    /// The VLAN id of a vlan network; `None` for flat.
    pub vlan: Option<u16>,
}

impl Uplink {
    /// The uplink of `provider` through this host's mappings.
    pub fn of(provider: &Provider, physnets: &BTreeMap<String, String>) -> Result<Uplink, NetError> {
        let interface = physnets
            .get(&provider.physical_network)
            .ok_or_else(|| NetError::UnmappedPhysnet { physnet: provider.physical_network.clone() })?;
        let vlan = match provider.network_type {
            NetworkType::Flat => None,
            NetworkType::Vlan => Some(provider.segmentation_id.ok_or_else(|| NetError::Parse {
                what: "a VLAN network",
                detail: format!("no segmentation id on physical network {}", provider.physical_network),
            })?),
        };
        Ok(Uplink { physical_network: provider.physical_network.clone(), interface: interface.clone(), vlan })
    }
}

/// The two ends of the veth pair that joins `bridge` to a mapped bridge: ours (on the
/// network's side) and the peer (enslaved to the mapped bridge). Named from the network's
/// bridge so each network has its own pair.
pub fn veth_names(bridge: &str) -> (String, String) {
    let hash = bridge.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    (format!("npv{hash:08x}"), format!("npp{hash:08x}"))
}

fn is_bridge(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).join("bridge").exists()
}

fn find<'a>(links: &'a [Link], name: &str) -> Option<&'a Link> {
    links.iter().find(|l| l.ifname == name)
}

/// `name` enslaved to `bridge` and up; refused when another master has it.
fn enslave(links: &[Link], name: &str, bridge: &str, physnet: &str) -> Result<(), NetError> {
    match find(links, name).and_then(|l| l.master.as_deref()) {
        Some(m) if m != bridge => {
            return Err(NetError::UplinkInUse {
                interface: name.to_string(),
                master: m.to_string(),
                physnet: physnet.to_string(),
            })
        }
        _ => {}
    }
    host::run("ip", &["link", "set", "dev", name, "master", bridge])?;
    host::run("ip", &["link", "set", "dev", name, "up"])?;
    Ok(())
}

/// Checks that `name` is absent or ours: true when it has to be created.
fn absent_or_ours(links: &[Link], name: &str, tag: &str) -> Result<bool, NetError> {
    match find(links, name) {
        None => Ok(true),
        Some(l) if l.ifalias.as_deref() == Some(alias(tag).as_str()) => Ok(false),
        Some(l) => Err(NetError::ForeignLink {
            name: name.to_string(),
            owner: l.ifalias.clone().unwrap_or_else(|| "another program".into()),
        }),
    }
}

/// Connects `bridge` to its physical network (idempotent: `up` after `down`, or a replug).
pub fn ensure_uplink(uplink: &Uplink, bridge: &str, tag: &str) -> Result<(), NetError> {
    let mut links = host::links()?;
    if find(&links, &uplink.interface).is_none() {
        return Err(NetError::MissingUplink {
            physnet: uplink.physical_network.clone(),
            interface: uplink.interface.clone(),
        });
    }
    host::run("ip", &["link", "set", "dev", &uplink.interface, "up"])?;
    // The device that carries the physical network's frames on our side.
    let carrier = if is_bridge(&uplink.interface) {
        let (ours, peer) = veth_names(bridge);
        let create = absent_or_ours(&links, &ours, tag)?;
        absent_or_ours(&links, &peer, tag)?;
        if create {
            let _ = host::run("ip", &["link", "del", "dev", &peer]);
            host::run("ip", &["link", "add", "name", &ours, "type", "veth", "peer", "name", &peer])?;
            for end in [&ours, &peer] {
                host::run("ip", &["link", "set", "dev", end, "alias", &alias(tag)])?;
            }
            links = host::links()?;
        }
        enslave(&links, &peer, &uplink.interface, &uplink.physical_network)?;
        host::run("ip", &["link", "set", "dev", &ours, "up"])?;
        ours
    } else {
        uplink.interface.clone()
    };
    match uplink.vlan {
        None => enslave(&links, &carrier, bridge, &uplink.physical_network),
        Some(vid) => {
            let sub = vlan_ifname(&carrier, vid);
            if absent_or_ours(&links, &sub, tag)? {
                let id = vid.to_string();
                host::run("ip", &["link", "add", "link", &carrier, "name", &sub, "type", "vlan", "id", &id]).map_err(
                    |e| match e {
                        NetError::Command { detail, .. } if detail.contains("Unknown device type") => {
                            NetError::NoVlanSupport { physnet: uplink.physical_network.clone() }
                        }
                        e => e,
                    },
                )?;
                host::run("ip", &["link", "set", "dev", &sub, "alias", &alias(tag)])?;
                links = host::links()?;
            }
            enslave(&links, &sub, bridge, &uplink.physical_network)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uplink_follows_this_hosts_mapping() {
        let physnets = BTreeMap::from([("physnet1".to_string(), "eth1".to_string())]);
        let vlan = Provider {
            network_type: NetworkType::Vlan,
            physical_network: "physnet1".into(),
            segmentation_id: Some(100),
        };
        assert_eq!(
            Uplink::of(&vlan, &physnets).unwrap(),
            Uplink { physical_network: "physnet1".into(), interface: "eth1".into(), vlan: Some(100) }
        );
        let flat = Provider { network_type: NetworkType::Flat, segmentation_id: None, ..vlan.clone() };
        assert_eq!(Uplink::of(&flat, &physnets).unwrap().vlan, None);
        let elsewhere = Provider { physical_network: "physnet9".into(), ..vlan };
        let err = Uplink::of(&elsewhere, &physnets).unwrap_err().to_string();
        assert!(err.contains("physnet9") && err.contains("physical_networks"), "{err}");
    }

    #[test]
    fn veth_names_fit_and_differ_per_bridge() {
        let (a, b) = veth_names("nbr0123abcd");
        assert_eq!((a.len(), b.len()), (11, 11));
        assert_ne!(a, b);
        assert_ne!(veth_names("nbr0123abcd").0, veth_names("nbr0123abce").0);
    }
}
