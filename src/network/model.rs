//! neutron's resources as novabox keeps them: networks, subnets, ports with their addresses,
//! security groups with their rules. Plain data, shared by the database that stores them
//! (`db::network`), the rules that decide them (this module's siblings) and the API that shows
//! them.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::ipam::Pool;
use crate::cidr::Ipv4Cidr;

/// The network `init` creates for every project to boot on.
pub const DEFAULT_NETWORK: &str = "private";
pub const DEFAULT_SUBNET: &str = "private-subnet";
/// neutron's name for the per-project group every port gets unless told otherwise.
pub const DEFAULT_SECURITY_GROUP: &str = "default";

#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub description: String,
    pub shared: bool,
    /// neutron's `router:external`.
    pub external: bool,
    pub admin_state_up: bool,
    pub status: String,
    pub mtu: i64,
    pub port_security_enabled: bool,
    /// The Linux bridge behind it, when novabox plumbs one.
    pub bridge: Option<String>,
    /// Its segment on a physical network of the host (`provider:*`), when an admin made it one.
    pub provider: Option<super::provider::Provider>,
    pub revision_number: i64,
    pub created_at: String,
    pub updated_at: String,
    /// Ids of its subnets, oldest first.
    pub subnets: Vec<String>,
}

impl Network {
    /// A network to create, with neutron's defaults: private, up, MTU 1500, port security on.
    pub fn new(name: impl Into<String>, project_id: impl Into<String>) -> Network {
        Network {
            id: String::new(),
            name: name.into(),
            project_id: project_id.into(),
            description: String::new(),
            shared: false,
            external: false,
            admin_state_up: true,
            status: "ACTIVE".into(),
            mtu: 1500,
            port_security_enabled: true,
            bridge: None,
            provider: None,
            revision_number: 0,
            created_at: String::new(),
            updated_at: String::new(),
            subnets: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    pub destination: String,
    pub nexthop: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subnet {
    pub id: String,
    pub network_id: String,
    pub name: String,
    pub project_id: String,
    pub description: String,
    pub cidr: Ipv4Cidr,
    pub gateway_ip: Option<Ipv4Addr>,
    pub enable_dhcp: bool,
    pub allocation_pools: Vec<Pool>,
    pub dns_nameservers: Vec<String>,
    pub host_routes: Vec<HostRoute>,
    pub revision_number: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl Subnet {
    /// Whether `ip` may be a port's address here: inside the CIDR, and neither its network
    /// address, its broadcast address nor its gateway.
    pub fn can_hold(&self, ip: Ipv4Addr) -> bool {
        let reserved = ip == self.cidr.network() || ip == self.cidr.broadcast() || Some(ip) == self.gateway_ip;
        self.cidr.contains(ip) && !reserved
    }
}

/// What a new subnet needs; validated by the caller (see [`super::ipam::validate_pools`]).
#[derive(Debug, Clone)]
pub struct NewSubnet {
    pub network_id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    pub cidr: Ipv4Cidr,
    pub gateway_ip: Option<Ipv4Addr>,
    pub enable_dhcp: bool,
    pub allocation_pools: Vec<Pool>,
    pub dns_nameservers: Vec<String>,
    pub host_routes: Vec<HostRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub id: String,
    pub network_id: String,
    /// The network's name, which nova shows as the key of a server's `addresses`.
    pub network_name: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    pub mac_address: String,
    pub device_id: String,
    pub device_owner: String,
    /// DOWN until a compute host plugs it, then ACTIVE.
    pub status: String,
    pub admin_state_up: bool,
    pub port_security_enabled: bool,
    /// The compute host it is bound to (`binding:host_id`).
    pub binding_host: Option<String>,
    pub tap_name: Option<String>,
    pub fixed_ips: Vec<FixedIp>,
    pub security_groups: Vec<String>,
    pub revision_number: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// An address wanted on a new port: a subnet, an address, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FixedIpRequest {
    pub subnet_id: Option<String>,
    pub ip_address: Option<Ipv4Addr>,
}

/// A port to create. The compute boot path sets the first five fields and leaves the rest
/// to `Default`; [`super::ports::plan`] decides the rest.
#[derive(Debug, Clone, Default)]
pub struct NewPort {
    pub network_id: String,
    pub project_id: String,
    pub device_id: String,
    pub device_owner: String,
    /// Exactly the groups the port gets (the caller resolves "default").
    pub security_group_ids: Vec<String>,
    pub name: String,
    pub description: String,
    /// Empty: one address from the first subnet with room.
    pub fixed_ips: Vec<FixedIpRequest>,
    /// `None`: a fresh random `fa:16:3e:xx:xx:xx`.
    pub mac_address: Option<String>,
    /// `None` means up.
    pub admin_state_up: Option<bool>,
    /// `None`: the network's setting.
    pub port_security_enabled: Option<bool>,
    pub binding_host: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub revision_number: i64,
    pub created_at: String,
    pub updated_at: String,
    pub rules: Vec<SecurityGroupRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroupRule {
    pub id: String,
    pub security_group_id: String,
    pub project_id: String,
    /// ingress, egress
    pub direction: String,
    /// IPv4, IPv6
    pub ethertype: String,
    /// tcp, udp, icmp, a number, or `None` for any
    pub protocol: Option<String>,
    pub port_range_min: Option<i64>,
    pub port_range_max: Option<i64>,
    pub remote_ip_prefix: Option<String>,
    pub remote_group_id: Option<String>,
    pub description: String,
    pub created_at: String,
}

impl SecurityGroupRule {
    /// Two rules are duplicates when they match the same traffic (neutron ignores the id,
    /// description and times).
    pub fn same_match(&self, other: &SecurityGroupRule) -> bool {
        self.security_group_id == other.security_group_id
            && self.direction == other.direction
            && self.ethertype == other.ethertype
            && self.protocol == other.protocol
            && self.port_range_min == other.port_range_min
            && self.port_range_max == other.port_range_max
            && self.remote_ip_prefix == other.remote_ip_prefix
            && self.remote_group_id == other.remote_group_id
    }
}
