//! The security-group model: neutron's groups and rules resolved into the allow rules of each
//! port ([`HostFilters`]), which the conductor sends to every compute host and
//! `compute::net::secgroups` renders into nftables. Also the rules neutron gives a new group.
//! Pure: the database hands in the rows, nothing here reads or writes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::model::{Port, SecurityGroup, SecurityGroupRule};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic to the guest.
    Ingress,
    /// Traffic from the guest.
    Egress,
}

/// What a rule matches on the far side of the port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Remote {
    Any,
    /// An IPv4 network, host bits cleared.
    Cidr {
        addr: Ipv4Addr,
        prefix: u8,
    },
    /// The addresses of the ports in this group (see [`HostFilters::groups`]).
    Group(String),
}

/// One allow rule of a port, already resolved to IPv4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRule {
    pub direction: Direction,
    /// IP protocol number; `None` for any.
    pub protocol: Option<u8>,
    /// TCP/UDP/SCTP/DCCP/UDP-lite destination ports, or for ICMP: (type, code).
    pub port_min: Option<u16>,
    pub port_max: Option<u16>,
    pub remote: Remote,
}

/// The filter of one port on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortFilter {
    pub port_id: String,
    /// The host device of the port (its tap).
    pub device: String,
    pub mac: String,
    pub ips: Vec<Ipv4Addr>,
    pub rules: Vec<FilterRule>,
}

/// Everything a compute host needs to filter its ports. Ports with port security disabled
/// are not in it: their traffic is not filtered at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFilters {
    pub ports: Vec<PortFilter>,
    /// Remote group id -> the IPv4 addresses of its member ports (on any host).
    pub groups: BTreeMap<String, BTreeSet<Ipv4Addr>>,
}

const PROTOCOL_NUMBERS: &[(&str, u8)] = &[
    ("icmp", 1),
    ("igmp", 2),
    ("ipip", 4),
    ("tcp", 6),
    ("egp", 8),
    ("udp", 17),
    ("dccp", 33),
    ("ipv6-encap", 41),
    ("rsvp", 46),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("ospf", 89),
    ("pgm", 113),
    ("vrrp", 112),
    ("sctp", 132),
    ("udplite", 136),
];
/// ICMP's protocol number: its rules carry a type and a code instead of ports.
pub const ICMP: u8 = 1;
/// Protocols whose rules carry destination port ranges.
pub const PORT_PROTOCOLS: &[u8] = &[6, 17, 33, 132, 136];

fn protocol_number(p: &str) -> Option<u8> {
    let p = p.to_ascii_lowercase();
    p.parse().ok().or_else(|| PROTOCOL_NUMBERS.iter().find(|(n, _)| *n == p).map(|(_, n)| *n))
}

/// neutron's rule as this host enforces it; `None` for rules it does not enforce (IPv6) or
/// cannot read (which the API's validation should have refused).
pub fn filter_rule(r: &SecurityGroupRule) -> Option<FilterRule> {
    if r.ethertype != "IPv4" {
        return None;
    }
    let direction = match r.direction.as_str() {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        other => {
            tracing::warn!(rule = %r.id, direction = other, "security group rule with an unknown direction ignored");
            return None;
        }
    };
    let protocol = match &r.protocol {
        None => None,
        Some(p) => match protocol_number(p) {
            Some(n) => Some(n),
            None => {
                tracing::warn!(rule = %r.id, protocol = %p, "security group rule with an unknown protocol ignored");
                return None;
            }
        },
    };
    let remote = match (&r.remote_ip_prefix, &r.remote_group_id) {
        (Some(prefix), _) => {
            let (addr, len) = prefix.split_once('/').unwrap_or((prefix, "32"));
            match (addr.parse::<Ipv4Addr>(), len.parse::<u8>()) {
                (Ok(addr), Ok(prefix)) if prefix <= 32 => {
                    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
                    Remote::Cidr { addr: Ipv4Addr::from(u32::from(addr) & mask), prefix }
                }
                _ => {
                    tracing::warn!(rule = %r.id, prefix, "security group rule with a bad remote prefix ignored");
                    return None;
                }
            }
        }
        (None, Some(g)) => Remote::Group(g.clone()),
        (None, None) => Remote::Any,
    };
    let port = |v: Option<i64>| v.and_then(|v| u16::try_from(v).ok());
    Some(FilterRule { direction, protocol, port_min: port(r.port_range_min), port_max: port(r.port_range_max), remote })
}

/// The filter of `port` given all security groups (the port's are looked up by id), or
/// `None` when the port is not filtered (port security off).
pub fn port_filter(port: &Port, device: String, groups: &[SecurityGroup]) -> Option<PortFilter> {
    if !port.port_security_enabled {
        return None;
    }
    let mut rules: Vec<FilterRule> = Vec::new();
    for g in groups.iter().filter(|g| port.security_groups.contains(&g.id)) {
        for r in g.rules.iter().filter_map(filter_rule) {
            if !rules.contains(&r) {
                rules.push(r);
            }
        }
    }
    Some(PortFilter {
        port_id: port.id.clone(),
        device,
        mac: port.mac_address.to_ascii_lowercase(),
        ips: port.fixed_ips.iter().map(|f| f.ip_address).collect(),
        rules,
    })
}

/// [`HostFilters`] for the ports of `ports` bound to this host (`on_host`), with the member
/// addresses of every group a rule refers to, taken from `all_ports`.
pub fn host_filters(
    on_host: &[Port],
    all_ports: &[Port],
    groups: &[SecurityGroup],
    device: impl Fn(&Port) -> String,
) -> HostFilters {
    let ports: Vec<PortFilter> = on_host.iter().filter_map(|p| port_filter(p, device(p), groups)).collect();
    let mut members: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for p in &ports {
        for r in &p.rules {
            if let Remote::Group(g) = &r.remote {
                members.entry(g.clone()).or_default();
            }
        }
    }
    for p in all_ports {
        for g in &p.security_groups {
            if let Some(set) = members.get_mut(g) {
                set.extend(p.fixed_ips.iter().map(|f| f.ip_address));
            }
        }
    }
    HostFilters { ports, groups: members }
}

/// The rules neutron gives a new group `group_id` of `project_id`: egress anywhere over IPv4
/// and IPv6 and, for the project's own `default` group (`default_group`, the one made for it,
/// not one a user named so), ingress from the group's own members. Ids and times are the
/// database's to fill in.
pub fn initial_rules(group_id: &str, project_id: &str, default_group: bool) -> Vec<SecurityGroupRule> {
    let rule = |direction: &str, ethertype: &str, remote_group_id: Option<String>| SecurityGroupRule {
        id: String::new(),
        security_group_id: group_id.to_string(),
        project_id: project_id.to_string(),
        direction: direction.into(),
        ethertype: ethertype.into(),
        protocol: None,
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: None,
        remote_group_id,
        description: String::new(),
        created_at: String::new(),
    };
    let mut rules = vec![rule("egress", "IPv4", None), rule("egress", "IPv6", None)];
    if default_group {
        rules.push(rule("ingress", "IPv4", Some(group_id.to_string())));
        rules.push(rule("ingress", "IPv6", Some(group_id.to_string())));
    }
    rules
}

/// Rows for tests of the model and of what renders it.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn rule(direction: &str, protocol: Option<&str>, min: Option<i64>, max: Option<i64>) -> SecurityGroupRule {
        SecurityGroupRule {
            id: "r".into(),
            security_group_id: "g".into(),
            project_id: "p".into(),
            direction: direction.into(),
            ethertype: "IPv4".into(),
            protocol: protocol.map(Into::into),
            port_range_min: min,
            port_range_max: max,
            remote_ip_prefix: None,
            remote_group_id: None,
            description: String::new(),
            created_at: String::new(),
        }
    }

    pub fn port(id: &str, ip: &str, groups: &[&str]) -> Port {
        Port {
            id: id.into(),
            network_id: "n".into(),
            network_name: "private".into(),
            project_id: "p".into(),
            name: String::new(),
            description: String::new(),
            mac_address: "FA:16:3E:00:00:01".into(),
            device_id: "vm".into(),
            device_owner: "compute:nova".into(),
            status: "ACTIVE".into(),
            admin_state_up: true,
            port_security_enabled: true,
            binding_host: Some("h".into()),
            tap_name: None,
            fixed_ips: vec![crate::network::model::FixedIp { subnet_id: "s".into(), ip_address: ip.parse().unwrap() }],
            security_groups: groups.iter().map(|g| g.to_string()).collect(),
            revision_number: 1,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    pub fn group(id: &str, rules: Vec<SecurityGroupRule>) -> SecurityGroup {
        SecurityGroup {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            project_id: "p".into(),
            revision_number: 1,
            created_at: String::new(),
            updated_at: String::new(),
            rules: rules.into_iter().map(|r| SecurityGroupRule { security_group_id: id.into(), ..r }).collect(),
        }
    }

    /// neutron's default group: egress anywhere, ingress from the group's own members.
    pub fn default_group() -> SecurityGroup {
        let mut from_self = rule("ingress", None, None, None);
        from_self.remote_group_id = Some("default-id".into());
        let mut v6 = rule("egress", None, None, None);
        v6.ethertype = "IPv6".into();
        group("default-id", vec![rule("egress", None, None, None), v6, from_self])
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn rules_resolve_to_protocol_numbers_and_clean_prefixes() {
        let r = filter_rule(&rule("ingress", Some("TCP"), Some(22), Some(22))).unwrap();
        assert_eq!(
            (r.direction, r.protocol, r.port_min, r.port_max),
            (Direction::Ingress, Some(6), Some(22), Some(22))
        );
        assert_eq!(filter_rule(&rule("egress", Some("132"), None, None)).unwrap().protocol, Some(132));
        let mut cidr = rule("egress", None, None, None);
        cidr.remote_ip_prefix = Some("10.1.2.3".into());
        assert_eq!(
            filter_rule(&cidr).unwrap().remote,
            Remote::Cidr { addr: "10.1.2.3".parse().unwrap(), prefix: 32 },
            "a bare address is a /32"
        );
        cidr.remote_ip_prefix = Some("10.1.2.3/0".into());
        assert_eq!(filter_rule(&cidr).unwrap().remote, Remote::Cidr { addr: "0.0.0.0".parse().unwrap(), prefix: 0 });
        cidr.remote_ip_prefix = Some("10.1.2.3/33".into());
        assert_eq!(filter_rule(&cidr), None, "a prefix longer than 32 is not enforced");
        let mut big = rule("ingress", Some("tcp"), Some(70000), None);
        big.remote_group_id = Some("g2".into());
        let r = filter_rule(&big).unwrap();
        assert_eq!((r.port_min, r.remote), (None, Remote::Group("g2".into())), "out-of-range ports are dropped");
    }

    #[test]
    fn a_port_gets_the_union_of_its_groups_rules_once() {
        let a = port("aaaa-1", "10.42.0.5", &["default-id", "web"]);
        let web =
            group("web", vec![rule("ingress", Some("tcp"), Some(80), Some(80)), rule("egress", None, None, None)]);
        let f = port_filter(&a, "tapaaaa".into(), &[default_group(), web]).unwrap();
        assert_eq!(f.rules.len(), 3, "egress any (in both groups, kept once), ingress from default, tcp/80");
        assert_eq!(f.ips, vec!["10.42.0.5".parse::<Ipv4Addr>().unwrap()]);
        let mut open = a.clone();
        open.port_security_enabled = false;
        assert_eq!(port_filter(&open, "tapaaaa".into(), &[default_group()]), None);
    }

    #[test]
    fn new_groups_get_neutrons_rules() {
        let shape = |rules: Vec<SecurityGroupRule>| -> Vec<(String, String, Option<String>)> {
            rules.into_iter().map(|r| (r.direction, r.ethertype, r.remote_group_id)).collect()
        };
        assert_eq!(
            shape(initial_rules("g1", "p", false)),
            [("egress".into(), "IPv4".into(), None), ("egress".into(), "IPv6".into(), None)]
        );
        assert_eq!(
            shape(initial_rules("g1", "p", true)),
            [
                ("egress".into(), "IPv4".into(), None),
                ("egress".into(), "IPv6".into(), None),
                ("ingress".into(), "IPv4".into(), Some("g1".into())),
                ("ingress".into(), "IPv6".into(), Some("g1".into())),
            ]
        );
    }
}
