//! What a guest gets of the network: one [`Vif`] per port, built where the database is (the
//! conductor) and sent to the compute host, which plugs it (`compute::net`) and hands it to
//! the driver. Also the names both sides must agree on: the tap of a port, the bridge of a
//! network.

use serde::{Deserialize, Serialize};

use super::model::{Network, Port, Subnet};

/// One network interface of a guest, as the network side allocated it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Vif {
    pub port_id: String,
    pub network_id: String,
    pub network_name: String,
    pub mac: String,
    pub ips: Vec<String>,
    /// The Linux bridge of the port's network (bridge mode), as the conductor named it.
    #[serde(default)]
    pub bridge: Option<String>,
    /// The subnet of the port's fixed IP, `10.42.0.0/24`.
    #[serde(default)]
    pub cidr: Option<String>,
    /// The subnet's gateway, which novabox puts on the bridge.
    #[serde(default)]
    pub gateway: Option<String>,
    /// The guest's tap device ([`tap_name`]); `None` means QEMU user networking.
    #[serde(default)]
    pub tap: Option<String>,
    /// The network's segment on a physical network of the host (flat or VLAN), which the
    /// compute host connects to the bridge through its own `[network] physical_networks`.
    #[serde(default)]
    pub provider: Option<super::provider::Provider>,
    /// The address the host keeps on the bridge when a router holds the subnet's gateway
    /// (the network's DHCP port's); `None`: the host holds the gateway itself.
    #[serde(default)]
    pub host_address: Option<String>,
}

impl Vif {
    /// The VIF of `port`, on `network` (its bridge), addressed from `subnet` (the subnet of its
    /// first fixed IP). Either may be missing when it was deleted under the port; the compute
    /// host then refuses to plug in bridge mode rather than guess.
    pub fn of_port(port: &Port, network: Option<&Network>, subnet: Option<&Subnet>) -> Vif {
        Vif {
            port_id: port.id.clone(),
            network_id: port.network_id.clone(),
            network_name: port.network_name.clone(),
            mac: port.mac_address.clone(),
            ips: port.fixed_ips.iter().map(|f| f.ip_address.to_string()).collect(),
            bridge: Some(bridge_name(&port.network_id, network.and_then(|n| n.bridge.as_deref()))),
            cidr: subnet.map(|s| s.cidr.to_string()),
            gateway: subnet.and_then(|s| s.gateway_ip).map(|g| g.to_string()),
            tap: Some(tap_name(&port.id)),
            provider: network.and_then(|n| n.provider.clone()),
            host_address: None,
        }
    }
}

/// A port as a compute host's sweep sees it: the tap and MAC it is plugged with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortDevice {
    pub tap: String,
    pub mac: String,
}

impl PortDevice {
    pub fn of_port(port: &Port) -> PortDevice {
        PortDevice { tap: tap_name(&port.id), mac: port.mac_address.clone() }
    }
}

/// nova's tap naming: `tap` + the first 11 characters of the port id (15 = IFNAMSIZ - 1).
pub fn tap_name(port_id: &str) -> String {
    let short: String = port_id.chars().take(11).collect();
    format!("tap{short}")
}

/// The bridge of a network: the one recorded on it (the default network's is `[network]
/// bridge`), else `nbr` + the first 8 characters of its id.
pub fn bridge_name(network_id: &str, recorded: Option<&str>) -> String {
    match recorded {
        Some(b) if !b.is_empty() => b.to_string(),
        _ => format!("nbr{}", network_id.chars().filter(|c| *c != '-').take(8).collect::<String>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::model::FixedIp;

    fn port() -> Port {
        Port {
            id: "0123456789abcdef-port".into(),
            network_id: "7e57-ab12-cd34".into(),
            network_name: "private".into(),
            project_id: "p".into(),
            name: String::new(),
            description: String::new(),
            mac_address: "fa:16:3e:00:00:01".into(),
            device_id: "vm".into(),
            device_owner: "compute:nova".into(),
            status: "DOWN".into(),
            admin_state_up: true,
            port_security_enabled: true,
            binding_host: None,
            tap_name: None,
            fixed_ips: vec![FixedIp { subnet_id: "s".into(), ip_address: "10.42.0.5".parse().unwrap() }],
            security_groups: Vec::new(),
            revision_number: 1,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn names_fit_linux_interfaces() {
        assert_eq!(tap_name("0123456789abcdef"), "tap0123456789a");
        assert_eq!(tap_name("0123456789abcdef").len(), 14);
        assert_eq!(bridge_name("7e57-ab12-cd34", None), "nbr7e57ab12");
        assert_eq!(bridge_name("7e57-ab12-cd34", Some("")), "nbr7e57ab12", "an empty record is no bridge");
        assert_eq!(bridge_name("7e57-ab12-cd34", Some("nbr0")), "nbr0");
    }

    #[test]
    fn a_vif_carries_what_the_host_plugs() {
        let mut net = Network::new("private", "admin");
        net.bridge = Some("nbr0".into());
        let subnet = Subnet {
            id: "s".into(),
            network_id: net.id.clone(),
            name: "private-subnet".into(),
            project_id: "admin".into(),
            description: String::new(),
            cidr: "10.42.0.0/24".parse().unwrap(),
            gateway_ip: Some("10.42.0.1".parse().unwrap()),
            enable_dhcp: true,
            allocation_pools: Vec::new(),
            dns_nameservers: Vec::new(),
            host_routes: Vec::new(),
            revision_number: 0,
            created_at: String::new(),
            updated_at: String::new(),
        };
        let v = Vif::of_port(&port(), Some(&net), Some(&subnet));
        assert_eq!(v.bridge.as_deref(), Some("nbr0"));
        assert_eq!(v.tap.as_deref(), Some("tap0123456789a"));
        assert_eq!((v.cidr.as_deref(), v.gateway.as_deref()), (Some("10.42.0.0/24"), Some("10.42.0.1")));
        assert_eq!(v.ips, ["10.42.0.5"]);

        let orphan = Vif::of_port(&port(), None, None);
        assert_eq!(orphan.bridge.as_deref(), Some("nbr7e57ab12"), "the bridge is still named");
        assert_eq!((orphan.cidr, orphan.gateway), (None, None));
        assert_eq!(
            PortDevice::of_port(&port()),
            PortDevice { tap: "tap0123456789a".into(), mac: "fa:16:3e:00:00:01".into() }
        );
    }

    #[test]
    fn old_vifs_without_plumbing_fields_still_decode() {
        let v: Vif = serde_json::from_value(serde_json::json!({
            "port_id": "p", "network_id": "n", "network_name": "private", "mac": "fa:16:3e:00:00:01", "ips": []
        }))
        .unwrap();
        assert_eq!((v.bridge, v.tap), (None, None));
    }
}
