//! How a new port is made, decided as pure code: its MAC, its addresses (the ones asked for,
//! or the next free one of the first subnet with room), and neutron's defaults for the rest.
//! The database reads what is taken and applies the plan inside one transaction
//! (`Db::allocate_port`), so nothing else allocates between the decision and the write.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::error::NetworkError;
use super::ipam::{next_free_ip, random_mac};
use super::model::{FixedIp, NewPort, Subnet};

/// What a new port gets, before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPlan {
    pub admin_state_up: bool,
    pub port_security_enabled: bool,
    pub fixed_ips: Vec<FixedIp>,
}

/// The port's MAC: the one asked for (lower-cased) unless `taken` says another port has it,
/// else a fresh random one that no port has.
pub fn choose_mac<E: From<NetworkError>>(
    network_id: &str,
    requested: Option<&str>,
    mut taken: impl FnMut(&str) -> Result<bool, E>,
) -> Result<String, E> {
    match requested {
        Some(m) if taken(m)? => {
            Err(NetworkError::MacAddressInUse { network_id: network_id.to_string(), mac: m.to_string() }.into())
        }
        Some(m) => Ok(m.to_lowercase()),
        None => loop {
            let m = random_mac();
            if !taken(&m)? {
                return Ok(m);
            }
        },
    }
}

/// The plan for `new` on a network whose port security is `network_port_security`, with
/// `subnets` (the network's, oldest first) and `used` (subnet id -> its allocated addresses).
/// Addresses planned for this port count as used for its later requests, as they would once
/// written.
pub fn plan(
    new: &NewPort,
    network_port_security: bool,
    subnets: &[Subnet],
    mut used: BTreeMap<String, BTreeSet<Ipv4Addr>>,
) -> Result<PortPlan, NetworkError> {
    let no_free = || NetworkError::IpAddressGenerationFailure { network_id: new.network_id.clone() };
    let mut wanted: Vec<(&Subnet, Option<Ipv4Addr>)> = Vec::new();
    for req in &new.fixed_ips {
        let subnet = match (&req.subnet_id, req.ip_address) {
            (Some(sid), _) => subnets.iter().find(|s| &s.id == sid).ok_or_else(|| {
                NetworkError::SubnetNotOnNetwork { subnet_id: sid.clone(), network_id: new.network_id.clone() }
            })?,
            (None, Some(ip)) => {
                subnets.iter().find(|s| s.cidr.contains(ip)).ok_or(NetworkError::InvalidIpForSubnet(ip))?
            }
            (None, None) => continue,
        };
        wanted.push((subnet, req.ip_address));
    }
    if new.fixed_ips.is_empty() {
        // One address, from the first subnet that still has one; none when there is no subnet.
        let empty = BTreeSet::new();
        let chosen = subnets
            .iter()
            .find_map(|s| next_free_ip(&s.allocation_pools, used.get(&s.id).unwrap_or(&empty)).map(|ip| (s, Some(ip))));
        match chosen {
            Some(c) => wanted.push(c),
            None if subnets.is_empty() => {}
            None => return Err(no_free()),
        }
    }
    let mut fixed_ips = Vec::new();
    for (subnet, ip) in wanted {
        let taken = used.entry(subnet.id.clone()).or_default();
        let ip = match ip {
            Some(ip) if !subnet.can_hold(ip) => return Err(NetworkError::InvalidIpForSubnet(ip)),
            Some(ip) if taken.contains(&ip) => {
                return Err(NetworkError::IpAddressAlreadyAllocated { ip, subnet_id: subnet.id.clone() })
            }
            Some(ip) => ip,
            None => next_free_ip(&subnet.allocation_pools, taken).ok_or_else(no_free)?,
        };
        taken.insert(ip);
        fixed_ips.push(FixedIp { subnet_id: subnet.id.clone(), ip_address: ip });
    }
    Ok(PortPlan {
        admin_state_up: new.admin_state_up.unwrap_or(true),
        port_security_enabled: new.port_security_enabled.unwrap_or(network_port_security),
        fixed_ips,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::ipam::Pool;
    use crate::network::model::FixedIpRequest;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn subnet(id: &str, cidr: &str, start: &str, end: &str) -> Subnet {
        let cidr: crate::cidr::Ipv4Cidr = cidr.parse().unwrap();
        Subnet {
            id: id.into(),
            network_id: "net".into(),
            name: id.into(),
            project_id: "p".into(),
            description: String::new(),
            gateway_ip: Some(cidr.gateway()),
            cidr,
            enable_dhcp: true,
            allocation_pools: vec![Pool { start: ip(start), end: ip(end) }],
            dns_nameservers: Vec::new(),
            host_routes: Vec::new(),
            revision_number: 0,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn port(fixed_ips: Vec<FixedIpRequest>) -> NewPort {
        NewPort { network_id: "net".into(), project_id: "p".into(), fixed_ips, ..NewPort::default() }
    }

    fn used(list: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<Ipv4Addr>> {
        list.iter().map(|(s, ips)| (s.to_string(), ips.iter().map(|i| ip(i)).collect())).collect()
    }

    fn want(subnet_id: Option<&str>, ip_address: Option<&str>) -> FixedIpRequest {
        FixedIpRequest { subnet_id: subnet_id.map(Into::into), ip_address: ip_address.map(ip) }
    }

    #[test]
    fn next_free_address_of_the_first_subnet_with_room() {
        let subnets =
            [subnet("a", "10.0.0.0/29", "10.0.0.2", "10.0.0.3"), subnet("b", "10.0.1.0/24", "10.0.1.2", "10.0.1.9")];
        let p = plan(&port(vec![]), true, &subnets, used(&[("a", &["10.0.0.2"])])).unwrap();
        assert_eq!(p.fixed_ips, vec![FixedIp { subnet_id: "a".into(), ip_address: ip("10.0.0.3") }]);
        assert!(p.admin_state_up && p.port_security_enabled, "neutron's defaults, the network's port security");

        let full = used(&[("a", &["10.0.0.2", "10.0.0.3"])]);
        let p = plan(&port(vec![]), false, &subnets, full.clone()).unwrap();
        assert_eq!(p.fixed_ips[0].ip_address, ip("10.0.1.2"), "a full subnet is skipped");
        assert!(!p.port_security_enabled);

        let err = plan(&port(vec![]), true, &subnets[..1], full).unwrap_err();
        assert_eq!(err, NetworkError::IpAddressGenerationFailure { network_id: "net".into() });
        assert!(plan(&port(vec![]), true, &[], used(&[])).unwrap().fixed_ips.is_empty(), "no subnet, no address");
    }

    #[test]
    fn asked_for_addresses_are_checked() {
        let subnets = [subnet("a", "10.0.0.0/29", "10.0.0.2", "10.0.0.6")];
        let taken = used(&[("a", &["10.0.0.3"])]);
        let check = |reqs: Vec<FixedIpRequest>| plan(&port(reqs), true, &subnets, taken.clone());
        assert_eq!(
            check(vec![want(None, Some("10.0.0.3"))]),
            Err(NetworkError::IpAddressAlreadyAllocated { ip: ip("10.0.0.3"), subnet_id: "a".into() })
        );
        for reserved in ["10.0.0.0", "10.0.0.1", "10.0.0.7"] {
            assert_eq!(
                check(vec![want(Some("a"), Some(reserved))]),
                Err(NetworkError::InvalidIpForSubnet(ip(reserved))),
                "network, gateway and broadcast are not a port's"
            );
        }
        assert_eq!(
            check(vec![want(None, Some("192.168.0.5"))]),
            Err(NetworkError::InvalidIpForSubnet(ip("192.168.0.5")))
        );
        assert_eq!(
            check(vec![want(Some("zz"), None)]),
            Err(NetworkError::SubnetNotOnNetwork { subnet_id: "zz".into(), network_id: "net".into() })
        );
        let p = check(vec![want(Some("a"), None), want(Some("a"), None), want(None, Some("10.0.0.6"))]).unwrap();
        let ips: Vec<String> = p.fixed_ips.iter().map(|f| f.ip_address.to_string()).collect();
        assert_eq!(ips, ["10.0.0.2", "10.0.0.4", "10.0.0.6"], "each planned address counts as taken");
        assert_eq!(
            check(vec![want(None, Some("10.0.0.5")), want(None, Some("10.0.0.5"))]),
            Err(NetworkError::IpAddressAlreadyAllocated { ip: ip("10.0.0.5"), subnet_id: "a".into() })
        );
        assert!(check(vec![want(None, None)]).unwrap().fixed_ips.is_empty(), "an empty request asks for nothing");
    }

    #[test]
    fn macs_are_unique() {
        let taken = |m: &str| Ok::<bool, NetworkError>(m == "fa:16:3e:00:00:01");
        assert_eq!(choose_mac("net", Some("FA:16:3E:00:00:02"), taken), Ok("fa:16:3e:00:00:02".into()));
        assert_eq!(
            choose_mac("net", Some("fa:16:3e:00:00:01"), taken),
            Err(NetworkError::MacAddressInUse { network_id: "net".into(), mac: "fa:16:3e:00:00:01".into() })
        );
        let mut tries = 0;
        let fresh = choose_mac("net", None, |_| {
            tries += 1;
            Ok::<bool, NetworkError>(tries < 3)
        })
        .unwrap();
        assert_eq!(tries, 3, "random MACs are drawn until one is free");
        assert!(fresh.starts_with("fa:16:3e:"), "{fresh}");
    }
}
