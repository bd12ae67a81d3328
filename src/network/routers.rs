//! neutron's L3 as data and pure decisions: routers with their gateway and interfaces,
//! floating IPs, the checks neutron makes before it changes anything, and what a host needs
//! to plumb a router ([`HostRouter`]: a namespace with a veth per port, NAT and routes).
//!
//! The database stores routers and floating IPs (`db::network::{routers, floating_ips}`) and
//! calls these checks inside its transactions; the compute host applies [`HostRouter`]s
//! (`compute::net::router`).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::error::NetworkError;
use super::model::{FixedIp, HostRoute, Port, Subnet};
use super::vif::Vif;

/// neutron's device owners of a router's ports and of a floating IP's port.
pub const OWNER_ROUTER_INTERFACE: &str = "network:router_interface";
pub const OWNER_ROUTER_GATEWAY: &str = "network:router_gateway";
pub const OWNER_FLOATINGIP: &str = "network:floatingip";
pub const OWNER_DHCP: &str = "network:dhcp";

/// The external network `init` makes, as DevStack's.
pub const PUBLIC_NETWORK: &str = "public";
pub const PUBLIC_SUBNET: &str = "public-subnet";

/// The external network `init` makes, as DevStack's `public`: external (every project sees
/// it; only admins, routers and floating IPs get ports on it), not shared, with the subnet
/// `public-subnet` on `cidr` (gateway .1, held by the host on `bridge`; no DHCP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicNetwork {
    pub bridge: String,
    pub cidr: crate::cidr::Ipv4Cidr,
}

impl PublicNetwork {
    pub fn network(&self, admin_project_id: &str) -> super::model::Network {
        super::model::Network {
            description: "The external network of routers and floating IPs".into(),
            external: true,
            bridge: Some(self.bridge.clone()),
            ..super::model::Network::new(PUBLIC_NETWORK, admin_project_id)
        }
    }

    pub fn subnet(&self, network_id: &str, admin_project_id: &str) -> super::model::NewSubnet {
        let gateway = self.cidr.gateway();
        super::model::NewSubnet {
            network_id: network_id.to_string(),
            project_id: admin_project_id.to_string(),
            name: PUBLIC_SUBNET.into(),
            description: String::new(),
            cidr: self.cidr,
            gateway_ip: Some(gateway),
            enable_dhcp: false,
            allocation_pools: super::ipam::default_pools(&self.cidr, Some(gateway)),
            dns_nameservers: Vec::new(),
            host_routes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouterGateway {
    pub network_id: String,
    pub enable_snat: bool,
    /// The router's port on the external network (`network:router_gateway`).
    pub port_id: Option<String>,
    pub external_fixed_ips: Vec<FixedIp>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Router {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    pub admin_state_up: bool,
    pub status: String,
    pub gateway: Option<RouterGateway>,
    /// extraroute's static routes.
    pub routes: Vec<HostRoute>,
    pub revision_number: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl Router {
    pub fn new(project_id: impl Into<String>) -> Router {
        Router {
            id: String::new(),
            project_id: project_id.into(),
            name: String::new(),
            description: String::new(),
            admin_state_up: true,
            status: "ACTIVE".into(),
            gateway: None,
            routes: Vec::new(),
            revision_number: 0,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FloatingIp {
    pub id: String,
    pub project_id: String,
    pub description: String,
    pub floating_network_id: String,
    pub floating_port_id: String,
    pub floating_ip_address: Ipv4Addr,
    pub port_id: Option<String>,
    pub fixed_ip_address: Option<Ipv4Addr>,
    pub router_id: Option<String>,
    pub revision_number: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl FloatingIp {
    /// ACTIVE while associated (the router DNATs it), DOWN otherwise, as the L3 agent reports.
    pub fn status(&self) -> &'static str {
        if self.port_id.is_some() {
            "ACTIVE"
        } else {
            "DOWN"
        }
    }
}

fn bad_router(msg: String) -> NetworkError {
    NetworkError::BadRequest { resource: "router", msg }
}

/// neutron's checks before a router gets an interface on `subnet`: the subnet has a gateway
/// (when the interface takes it), is not already on this router, and overlaps none of the
/// router's other subnets. `router_subnets` are the subnets the router has interfaces on.
pub fn check_new_interface(subnet: &Subnet, router_subnets: &[Subnet], by_subnet: bool) -> Result<(), NetworkError> {
    if by_subnet && subnet.gateway_ip.is_none() {
        return Err(bad_router("Subnet for router interface must have a gateway IP".into()));
    }
    if router_subnets.iter().any(|s| s.id == subnet.id) {
        return Err(bad_router(format!("Router already has a port on subnet {}", subnet.id)));
    }
    if let Some(other) = router_subnets.iter().find(|s| s.cidr.overlaps(&subnet.cidr)) {
        return Err(bad_router(format!(
            "Cidr {} of subnet {} overlaps with cidr {} of subnet {}",
            subnet.cidr, subnet.id, other.cidr, other.id
        )));
    }
    Ok(())
}

/// A port brought as a router interface (`add_router_interface` by `port_id`): neutron wants
/// it unowned and with exactly one fixed IP.
pub fn check_interface_port(port: &Port) -> Result<(), NetworkError> {
    if !port.device_id.is_empty() || !port.device_owner.is_empty() {
        return Err(NetworkError::PortInUse {
            network_id: port.network_id.clone(),
            port_id: port.id.clone(),
            device_id: port.device_id.clone(),
        });
    }
    match port.fixed_ips.len() {
        0 => Err(bad_router("Router port must have at least one fixed IP".into())),
        1 => Ok(()),
        _ => Err(bad_router("Cannot have multiple IPv4 subnets on router port".into())),
    }
}

/// The router that can carry a floating IP of `external_network_id` to `port`'s fixed IP:
/// one with an interface on the fixed IP's subnet and its gateway on that external network
/// (`routers`: each router with the subnets of its interfaces). neutron's 404
/// `ExternalGatewayForFloatingIPNotFound` otherwise.
pub fn router_for_floating_ip<'a>(
    external_network_id: &str,
    port: &Port,
    fixed: &FixedIp,
    routers: &'a [(Router, Vec<String>)],
) -> Result<&'a Router, NetworkError> {
    routers
        .iter()
        .find(|(r, subnets)| {
            r.gateway.as_ref().is_some_and(|g| g.network_id == external_network_id)
                && subnets.contains(&fixed.subnet_id)
        })
        .map(|(r, _)| r)
        .ok_or_else(|| NetworkError::ExternalGatewayForFloatingIpNotFound {
            external_network_id: external_network_id.to_string(),
            subnet_id: fixed.subnet_id.clone(),
            port_id: port.id.clone(),
        })
}

/// The fixed IP of `port` a floating IP maps to: the one asked for (it must be the port's),
/// else the port's first.
pub fn choose_fixed_ip(port: &Port, wanted: Option<Ipv4Addr>) -> Result<FixedIp, NetworkError> {
    let bad = |msg: String| NetworkError::BadRequest { resource: "floatingip", msg };
    match wanted {
        Some(ip) => port
            .fixed_ips
            .iter()
            .find(|f| f.ip_address == ip)
            .cloned()
            .ok_or_else(|| bad(format!("Port {} does not have fixed ip {ip}", port.id))),
        None => {
            port.fixed_ips.first().cloned().ok_or_else(|| {
                bad(format!("Cannot add floating IP to port {} that has no fixed IPv4 addresses", port.id))
            })
        }
    }
}

/// The network namespace of a router, as neutron's L3 agent names it.
pub fn namespace(router_id: &str) -> String {
    format!("qrouter-{router_id}")
}

fn short(port_id: &str) -> String {
    port_id.chars().take(11).collect()
}

/// The namespace's end of an interface's veth (`qr-` + 11 characters of the port id).
pub fn qr_name(port_id: &str) -> String {
    format!("qr-{}", short(port_id))
}

/// The namespace's end of the gateway's veth.
pub fn qg_name(port_id: &str) -> String {
    format!("qg-{}", short(port_id))
}

/// One of a router's legs as the host plumbs it: the port as a [`Vif`] (its MAC, address,
/// network bridge and subnet), whose `tap` names the veth end on the bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterLeg {
    pub vif: Vif,
    /// The name inside the namespace (`qr-…`, `qg-…`).
    pub device: String,
}

/// A floating IP as the router NATs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nat {
    pub floating_ip: Ipv4Addr,
    pub fixed_ip: Ipv4Addr,
}

/// Everything a host needs to make one router: built by the conductor from the rows, applied
/// by `compute::net::router`, which makes the host match it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRouter {
    pub id: String,
    pub namespace: String,
    pub interfaces: Vec<RouterLeg>,
    pub gateway: Option<RouterLeg>,
    /// SNAT of the internal subnets out of the gateway (neutron's `enable_snat`).
    pub snat: bool,
    pub routes: Vec<HostRoute>,
    pub floating: Vec<Nat>,
}

/// The routers a host plumbs, all of them (a refresh replaces the host's routers with these).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostRouters {
    pub routers: Vec<HostRouter>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::ipam::Pool;

    fn subnet(id: &str, cidr: &str, gateway: Option<&str>) -> Subnet {
        Subnet {
            id: id.into(),
            network_id: "n".into(),
            name: id.into(),
            project_id: "p".into(),
            description: String::new(),
            cidr: cidr.parse().unwrap(),
            gateway_ip: gateway.map(|g| g.parse().unwrap()),
            enable_dhcp: true,
            allocation_pools: Vec::<Pool>::new(),
            dns_nameservers: Vec::new(),
            host_routes: Vec::new(),
            revision_number: 0,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn port(fixed: &[(&str, &str)]) -> Port {
        Port {
            id: "port-0123456789".into(),
            network_id: "n".into(),
            network_name: "private".into(),
            project_id: "p".into(),
            name: String::new(),
            description: String::new(),
            mac_address: "fa:16:3e:00:00:01".into(),
            device_id: String::new(),
            device_owner: String::new(),
            status: "DOWN".into(),
            admin_state_up: true,
            port_security_enabled: true,
            binding_host: None,
            tap_name: None,
            fixed_ips: fixed
                .iter()
                .map(|(s, ip)| FixedIp { subnet_id: s.to_string(), ip_address: ip.parse().unwrap() })
                .collect(),
            security_groups: Vec::new(),
            revision_number: 1,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn interfaces_are_checked_as_neutron_does() {
        let a = subnet("a", "10.0.0.0/24", Some("10.0.0.1"));
        let b = subnet("b", "10.0.0.0/25", Some("10.0.0.1"));
        let c = subnet("c", "10.1.0.0/24", None);
        assert!(check_new_interface(&a, &[], true).is_ok());
        let err = check_new_interface(&a, std::slice::from_ref(&a), true).unwrap_err();
        assert_eq!(err.to_string(), "Bad router request: Router already has a port on subnet a.");
        let err = check_new_interface(&b, std::slice::from_ref(&a), true).unwrap_err();
        assert!(err.to_string().contains("overlaps with cidr 10.0.0.0/24 of subnet a"), "{err}");
        let err = check_new_interface(&c, &[], true).unwrap_err();
        assert_eq!(err.to_string(), "Bad router request: Subnet for router interface must have a gateway IP.");
        assert!(check_new_interface(&c, &[a], false).is_ok(), "by port, no gateway is needed");

        assert!(check_interface_port(&port(&[("a", "10.0.0.5")])).is_ok());
        assert!(check_interface_port(&port(&[])).is_err());
        let mut owned = port(&[("a", "10.0.0.5")]);
        owned.device_id = "vm".into();
        assert!(matches!(check_interface_port(&owned), Err(NetworkError::PortInUse { .. })));
    }

    #[test]
    fn a_floating_ip_needs_a_router_from_the_fixed_ips_subnet_to_its_network() {
        let p = port(&[("a", "10.0.0.5")]);
        let fixed = choose_fixed_ip(&p, None).unwrap();
        let mut r = Router::new("p");
        r.id = "r1".into();
        let none = router_for_floating_ip("ext", &p, &fixed, &[(r.clone(), vec!["a".into()])]).unwrap_err();
        assert_eq!(
            none.to_string(),
            "External network ext is not reachable from subnet a.  Therefore, cannot associate Port port-0123456789 \
             with a Floating IP."
        );
        r.gateway = Some(RouterGateway {
            network_id: "ext".into(),
            enable_snat: true,
            port_id: None,
            external_fixed_ips: vec![],
        });
        let routers = [(r.clone(), vec!["b".into()]), (r.clone(), vec!["a".into()])];
        assert_eq!(router_for_floating_ip("ext", &p, &fixed, &routers).unwrap().id, "r1");
        assert!(router_for_floating_ip("other", &p, &fixed, &routers).is_err());
        assert!(choose_fixed_ip(&p, Some("10.0.0.9".parse().unwrap())).is_err());
        assert!(choose_fixed_ip(&port(&[]), None).is_err());
    }

    #[test]
    fn names_fit_linux_interfaces() {
        assert_eq!(qr_name("0123456789abcdef"), "qr-0123456789a");
        assert_eq!(qg_name("0123456789abcdef").len(), 14);
        assert_eq!(namespace("r-1"), "qrouter-r-1");
    }
}
