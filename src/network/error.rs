//! What neutron refuses, in neutron's words. The database returns these from the checks it
//! makes inside its transactions; the network API maps each to neutron's error type and HTTP
//! status in one place (`api::network::errors`); the conductor repeats the text in a boot's
//! fault.

use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("Network {0} could not be found.")]
    NetworkNotFound(String),
    #[error("Subnet {0} could not be found.")]
    SubnetNotFound(String),
    /// A port asked for an address from a subnet that is not on its network.
    #[error("Subnet {subnet_id} could not be found on network {network_id}.")]
    SubnetNotOnNetwork { subnet_id: String, network_id: String },
    #[error("Port {0} could not be found.")]
    PortNotFound(String),
    #[error("Security group {0} does not exist")]
    SecurityGroupNotFound(String),
    #[error("Security group rule {0} does not exist")]
    SecurityGroupRuleNotFound(String),
    #[error("Unable to complete operation for network {network_id}. The mac address {mac} is in use.")]
    MacAddressInUse { network_id: String, mac: String },
    #[error("IP address {0} is not a valid IP for the specified subnet.")]
    InvalidIpForSubnet(Ipv4Addr),
    #[error("IP address {ip} already allocated in subnet {subnet_id}")]
    IpAddressAlreadyAllocated { ip: Ipv4Addr, subnet_id: String },
    /// Every address of the network's subnets is taken.
    #[error("No more IP addresses available on network {network_id}.")]
    IpAddressGenerationFailure { network_id: String },
    #[error("Unable to complete operation on network {0}. There are one or more ports still in use on the network.")]
    NetworkInUse(String),
    #[error("Unable to complete operation on subnet {0}: One or more ports have an IP allocation from this subnet.")]
    SubnetInUse(String),
    #[error("Security Group {0} in use.")]
    SecurityGroupInUse(String),
    #[error("Security group rule already exists. Rule id is {0}.")]
    SecurityGroupRuleExists(String),
    #[error(
        "Invalid input for operation: Requested subnet with cidr: {cidr} for network: {network_id} overlaps with \
         another subnet."
    )]
    SubnetOverlap { cidr: String, network_id: String },
    /// nova's boot with a port that another device already has.
    #[error("Port {0} is not free to be bound.")]
    PortNotFree(String),
    #[error("Quota exceeded for resources: ['{0}'].")]
    OverQuota(String),
    // Issue 19, provider networks (ML2's flat and vlan type drivers).
    #[error("Unable to create the network. The VLAN {vlan_id} on physical network {physical_network} is in use.")]
    VlanIdInUse { vlan_id: u16, physical_network: String },
    #[error("Unable to create the flat network. Physical network {0} is in use.")]
    FlatNetworkInUse(String),
    /// Every VLAN id of the physical network is taken.
    #[error("Unable to create the network. No tenant network is available for allocation.")]
    NoNetworkAvailable,
    // Issue 19: routers and floating IPs (neutron-lib's l3 exceptions).
    #[error("Router {0} could not be found")]
    RouterNotFound(String),
    #[error("Router {0} still has ports")]
    RouterInUse(String),
    #[error("Router {router_id} does not have an interface with id {port_id}")]
    RouterInterfaceNotFound { router_id: String, port_id: String },
    #[error("Router {router_id} has no interface on subnet {subnet_id}")]
    RouterInterfaceNotFoundForSubnet { router_id: String, subnet_id: String },
    #[error("Floating IP {0} could not be found")]
    FloatingIpNotFound(String),
    #[error(
        "External network {external_network_id} is not reachable from subnet {subnet_id}.  Therefore, cannot \
         associate Port {port_id} with a Floating IP."
    )]
    ExternalGatewayForFloatingIpNotFound { external_network_id: String, subnet_id: String, port_id: String },
    #[error(
        "Cannot associate floating IP {floating_ip_address} ({fip_id}) with port {port_id} using fixed IP \
         {fixed_ip}, as that fixed IP already has a floating IP on external network {net_id}."
    )]
    FloatingIpPortAlreadyAssociated {
        floating_ip_address: Ipv4Addr,
        fip_id: String,
        port_id: String,
        fixed_ip: Ipv4Addr,
        net_id: String,
    },
    #[error(
        "Gateway cannot be updated for router {router_id}, since a gateway to external network {net_id} is \
         required by one or more floating IPs."
    )]
    RouterExternalGatewayInUseByFloatingIp { router_id: String, net_id: String },
    #[error(
        "Router interface for subnet {subnet_id} on router {router_id} cannot be deleted, as it is required by \
         one or more floating IPs."
    )]
    RouterInterfaceInUseByFloatingIp { router_id: String, subnet_id: String },
    #[error(
        "Router interface for subnet {subnet_id} on router {router_id} cannot be deleted, as it is required by \
         one or more routes."
    )]
    RouterInterfaceInUseByRoute { router_id: String, subnet_id: String },
    #[error("Unable to complete operation on port {port_id} for network {network_id}. Port already has an attached device {device_id}.")]
    PortInUse { network_id: String, port_id: String, device_id: String },
    #[error("Port {port_id} cannot be deleted directly via the port API: {reason}.")]
    ServicePortInUse { port_id: String, reason: String },
    /// neutron's generic `BadRequest`, worded per resource.
    #[error("Bad {resource} request: {msg}.")]
    BadRequest { resource: &'static str, msg: String },
}

/// neutron's `OverQuota` text, which a boot's fault repeats when its port is over quota.
pub fn over_quota_message(resource: &str) -> String {
    NetworkError::OverQuota(resource.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_neutrons() {
        assert_eq!(over_quota_message("port"), "Quota exceeded for resources: ['port'].");
        assert_eq!(
            NetworkError::IpAddressGenerationFailure { network_id: "n1".into() }.to_string(),
            "No more IP addresses available on network n1."
        );
        assert_eq!(
            NetworkError::MacAddressInUse { network_id: "n1".into(), mac: "fa:16:3e:00:00:01".into() }.to_string(),
            "Unable to complete operation for network n1. The mac address fa:16:3e:00:00:01 is in use."
        );
    }
}
