//! Networking decided as pure code, apart from the database that stores it (`src/db/network/`)
//! and the host plumbing that applies it (`src/compute/net/`):
//! - [`model`]: neutron's resources (networks, subnets, ports, security groups) as data;
//! - [`ipam`]: allocation pools, the next free address, MACs;
//! - [`ipv6`]: IPv6 address modes, EUI-64 addresses, v6 pools and dnsmasq's RA/DHCPv6 lines;
//! - [`ports`]: what a new port gets, planned before the database writes it;
//! - [`vif`]: what a guest gets of a port, and the tap and bridge names;
//! - [`provider`]: flat and VLAN provider networks on the host's physical networks;
//! - [`routers`]: routers and floating IPs (neutron's L3), and what a host plumbs of them;
//! - [`secgroups`]: security groups resolved into each port's allow rules;
//! - [`error`]: what neutron refuses, in its words.
//!
//! Nothing here reads the database, the configuration or the host.

pub mod error;
pub mod ipam;
pub mod ipv6;
pub mod model;
pub mod ports;
pub mod provider;
pub mod routers;
pub mod secgroups;
pub mod vif;

pub use error::NetworkError;

/// The address every cloud's guests expect the metadata service on. Here, rather than in the
/// metadata service, so that configuration can name it without depending on that service.
pub const METADATA_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 254);

/// The network `init` makes for every project to boot on: `private` with the subnet
/// `private-subnet` on `cidr` (gateway .1, one pool from .2 to the last host), on `bridge`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultNetwork {
    pub bridge: String,
    pub cidr: crate::cidr::Ipv4Cidr,
}

impl DefaultNetwork {
    /// The network, shared, owned by the admin project.
    pub fn network(&self, admin_project_id: &str) -> model::Network {
        model::Network {
            description: "The network novabox guests boot on by default".into(),
            shared: true,
            bridge: Some(self.bridge.clone()),
            ..model::Network::new(model::DEFAULT_NETWORK, admin_project_id)
        }
    }

    /// Its subnet.
    pub fn subnet(&self, network_id: &str, admin_project_id: &str) -> model::NewSubnet {
        let gateway = self.cidr.gateway();
        model::NewSubnet {
            network_id: network_id.to_string(),
            project_id: admin_project_id.to_string(),
            name: model::DEFAULT_SUBNET.into(),
            description: String::new(),
            cidr: self.cidr,
            gateway_ip: Some(gateway),
            enable_dhcp: true,
            allocation_pools: ipam::default_pools(&self.cidr, Some(gateway)),
            dns_nameservers: Vec::new(),
            host_routes: Vec::new(),
        }
    }
}
