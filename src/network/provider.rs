//! Provider networks (neutron's `provider` extension, ML2's flat and vlan type drivers): a
//! network an admin maps onto a physical network of the host, untagged (`flat`) or as one
//! 802.1Q VLAN of it (`vlan`). The physical networks are named in `[network]
//! physical_networks`, each mapped to a host interface or bridge; this module checks a request
//! against that map in neutron's words, and names the VLAN sub-interface the host makes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The lowest and highest VLAN id 802.1Q leaves usable (0 and 4095 are reserved).
pub const MIN_VLAN: u16 = 1;
pub const MAX_VLAN: u16 = 4094;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkType {
    Flat,
    Vlan,
}

impl NetworkType {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkType::Flat => "flat",
            NetworkType::Vlan => "vlan",
        }
    }
}

/// A network's segment on a physical network, as neutron shows it to admins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    pub network_type: NetworkType,
    pub physical_network: String,
    /// The VLAN id of a `vlan` network; `None` for `flat`.
    pub segmentation_id: Option<u16>,
}

/// The `provider:*` attributes of a create request, as given (each may be absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderRequest {
    pub network_type: Option<String>,
    pub physical_network: Option<String>,
    pub segmentation_id: Option<i64>,
}

/// The segment `req` asks for on this host's `physnets` (name -> interface), or neutron's
/// `InvalidInput` text saying why not. `local` (or nothing) is an ordinary novabox network:
/// `Ok(None)`. A vlan request without a segmentation id is given one by the database.
pub fn validate(req: &ProviderRequest, physnets: &BTreeMap<String, String>) -> Result<Option<Provider>, String> {
    let physnet = req.physical_network.as_deref().filter(|p| !p.is_empty());
    match req.network_type.as_deref() {
        None | Some("local") if physnet.is_none() && req.segmentation_id.is_none() => Ok(None),
        None => Err("network_type required".into()),
        Some("local") => {
            Err("provider:physical_network and provider:segmentation_id prohibited for local provider network".into())
        }
        Some("flat") => {
            if req.segmentation_id.is_some() {
                return Err("segmentation_id prohibited for flat provider network".into());
            }
            let physnet = physnet.ok_or("physical_network required for flat provider network")?;
            if !physnets.contains_key(physnet) {
                return Err(format!("physical_network '{physnet}' unknown for flat provider network"));
            }
            Ok(Some(Provider {
                network_type: NetworkType::Flat,
                physical_network: physnet.to_string(),
                segmentation_id: None,
            }))
        }
        Some("vlan") => {
            let Some(physnet) = physnet else {
                return Err(if req.segmentation_id.is_some() {
                    "segmentation_id requires physical_network for VLAN provider network".into()
                } else {
                    "physical_network required for VLAN provider network".into()
                });
            };
            if !physnets.contains_key(physnet) {
                return Err(format!("physical_network '{physnet}' unknown for VLAN provider network"));
            }
            let segmentation_id = match req.segmentation_id {
                None => None,
                Some(id) => Some(
                    u16::try_from(id)
                        .ok()
                        .filter(|id| (MIN_VLAN..=MAX_VLAN).contains(id))
                        .ok_or_else(|| format!("segmentation_id out of range ({MIN_VLAN} through {MAX_VLAN})"))?,
                ),
            };
            Ok(Some(Provider {
                network_type: NetworkType::Vlan,
                physical_network: physnet.to_string(),
                segmentation_id,
            }))
        }
        Some(other) => Err(format!("network_type value '{other}' not supported; novabox supports flat and vlan")),
    }
}

/// The lowest VLAN id of the physical network that no network in `used` has.
pub fn free_vlan(used: &[u16]) -> Option<u16> {
    (MIN_VLAN..=MAX_VLAN).find(|id| !used.contains(id))
}

/// The VLAN sub-interface of `interface` for `vid`: `<interface>.<vid>` as `ip` and the
/// kernel's own vconfig name it, or, when that passes IFNAMSIZ (15 characters), the
/// interface's name cut short so the `.<vid>` suffix still fits (still unique per VLAN, and
/// two long names sharing a prefix get a hash of the full name in between).
pub fn vlan_ifname(interface: &str, vid: u16) -> String {
    let suffix = format!(".{vid}");
    let full = format!("{interface}{suffix}");
    if full.len() <= 15 {
        return full;
    }
    let hash = interface.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let tag = format!("{:04x}", hash & 0xffff);
    let keep = 15 - suffix.len() - tag.len();
    let head: String = interface.chars().take(keep).collect();
    format!("{head}{tag}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn physnets() -> BTreeMap<String, String> {
        BTreeMap::from([("physnet1".to_string(), "eth1".to_string()), ("ext".to_string(), "br-ex".to_string())])
    }

    fn req(kind: Option<&str>, physnet: Option<&str>, seg: Option<i64>) -> ProviderRequest {
        ProviderRequest {
            network_type: kind.map(Into::into),
            physical_network: physnet.map(Into::into),
            segmentation_id: seg,
        }
    }

    #[test]
    fn flat_and_vlan_requests_are_checked_as_ml2_does() {
        let p = physnets();
        assert_eq!(validate(&req(None, None, None), &p), Ok(None));
        assert_eq!(validate(&req(Some("local"), None, None), &p), Ok(None));
        assert_eq!(
            validate(&req(Some("flat"), Some("physnet1"), None), &p),
            Ok(Some(Provider {
                network_type: NetworkType::Flat,
                physical_network: "physnet1".into(),
                segmentation_id: None
            }))
        );
        assert_eq!(
            validate(&req(Some("vlan"), Some("ext"), Some(4094)), &p).unwrap().unwrap().segmentation_id,
            Some(4094)
        );
        assert_eq!(validate(&req(Some("vlan"), Some("ext"), None), &p).unwrap().unwrap().segmentation_id, None);
        let refused = [
            (req(Some("flat"), Some("physnet1"), Some(5)), "segmentation_id prohibited for flat provider network"),
            (req(Some("flat"), None, None), "physical_network required for flat provider network"),
            (req(Some("flat"), Some("nope"), None), "physical_network 'nope' unknown for flat provider network"),
            (req(Some("vlan"), Some("nope"), Some(5)), "physical_network 'nope' unknown for VLAN provider network"),
            (req(Some("vlan"), None, Some(5)), "segmentation_id requires physical_network for VLAN provider network"),
            (req(Some("vlan"), Some("ext"), Some(0)), "segmentation_id out of range (1 through 4094)"),
            (req(Some("vlan"), Some("ext"), Some(4095)), "segmentation_id out of range (1 through 4094)"),
            (req(Some("vlan"), Some("ext"), Some(-1)), "segmentation_id out of range (1 through 4094)"),
            (req(None, Some("ext"), None), "network_type required"),
            (
                req(Some("vxlan"), None, Some(5)),
                "network_type value 'vxlan' not supported; novabox supports flat and vlan",
            ),
            (
                req(Some("geneve"), None, None),
                "network_type value 'geneve' not supported; novabox supports flat and vlan",
            ),
            (req(Some("gre"), None, None), "network_type value 'gre' not supported; novabox supports flat and vlan"),
        ];
        for (r, want) in refused {
            assert_eq!(validate(&r, &p), Err(want.to_string()), "{r:?}");
        }
    }

    #[test]
    fn vlan_interfaces_fit_ifnamsiz() {
        assert_eq!(vlan_ifname("eth1", 100), "eth1.100");
        assert_eq!(vlan_ifname("veth-0123456", 10), "veth-0123456.10");
        let long = vlan_ifname("enp0s31f6-uplink", 4094);
        assert_eq!(long.len(), 15, "{long}");
        assert!(long.starts_with("enp0s") && long.ends_with(".4094"), "{long}");
        assert_ne!(long, vlan_ifname("enp0s31f6-uplinl", 4094), "two long names sharing a prefix differ");
        assert_eq!(free_vlan(&[1, 2, 4]), Some(3));
        assert_eq!(free_vlan(&(1..=4094).collect::<Vec<_>>()), None);
    }
}
