//! Networks, subnets, ports with their IP allocations, and security groups (neutron): their
//! rows and SQL. The types are the network module's (`crate::network::model`), re-exported
//! here; what a new port gets and what neutron refuses are decided there too
//! (`network::ports`, `network::NetworkError`), and applied here inside one transaction.
//!
//! The compute boot path uses [`Db::ensure_default_network`], [`Db::ensure_default_security_group`],
//! [`Db::allocate_port`], [`Db::ports_for_device`] and [`Db::release_ports_for_device`]; the
//! network API uses the rest. IPv4 only.

mod floating_ips;
mod networks;
mod ports;
mod routers;
mod secgroups;
mod subnets;

pub use floating_ips::Association;
pub use routers::GatewayRequest;

use serde::Serialize;

pub use crate::network::model::{
    FixedIp, FixedIpRequest, HostRoute, Network, NewPort, NewSubnet, Port, SecurityGroup, SecurityGroupRule, Subnet,
    DEFAULT_NETWORK, DEFAULT_SECURITY_GROUP, DEFAULT_SUBNET,
};

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn json_text<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::Config;
    use crate::db::{Db, DbError, OpenOptions};
    use crate::network::ipam::Pool;
    use crate::network::NetworkError;

    fn db() -> (tempfile::TempDir, Db) {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        db.ensure_project("admin", "").unwrap();
        (t, db)
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn default_network_needs_the_admin_project() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        let err = db.ensure_default_network(&Config::default()).unwrap_err();
        assert!(matches!(err, DbError::NotFound(ref m) if m.contains("novabox init")), "{err}");
    }

    #[test]
    fn default_network_is_created_once() {
        let (_t, db) = db();
        let config = Config::default();
        let a = db.ensure_default_network(&config).unwrap();
        let b = db.ensure_default_network(&config).unwrap();
        assert_eq!(a.id, b.id);
        assert!(a.shared);
        assert_eq!(a.name, "private");
        assert_eq!(a.bridge.as_deref(), Some("nbr0"));
        assert_eq!(db.networks().unwrap().len(), 1);
        let subnets = db.subnets_of(&a.id).unwrap();
        assert_eq!(subnets.len(), 1);
        let s = &subnets[0];
        assert_eq!(s.name, "private-subnet");
        assert_eq!(s.cidr.to_string(), "10.42.0.0/24");
        assert_eq!(s.gateway_ip, Some(ip("10.42.0.1")));
        assert_eq!(s.allocation_pools, vec![Pool { start: ip("10.42.0.2"), end: ip("10.42.0.254") }]);
    }

    #[test]
    fn allocate_until_exhausted_then_release() {
        let (_t, db) = db();
        let mut config = Config::default();
        config.network.cidr = "192.168.7.0/29".parse().unwrap();
        let net = db.ensure_default_network(&config).unwrap();
        let sg = db.ensure_default_security_group("p1").unwrap();
        assert_eq!(db.ensure_default_security_group("p1").unwrap(), sg, "created once");
        let new = |device: &str| NewPort {
            network_id: net.id.clone(),
            project_id: "p1".into(),
            device_id: device.into(),
            device_owner: "compute:nova".into(),
            security_group_ids: vec![sg.clone()],
            ..NewPort::default()
        };
        // /29: .0 network, .1 gateway, .7 broadcast: .2 to .6 for guests.
        let mut macs = BTreeSet::new();
        for (i, want) in ["192.168.7.2", "192.168.7.3", "192.168.7.4", "192.168.7.5", "192.168.7.6"].iter().enumerate()
        {
            let p = db.allocate_port(&new(&format!("vm{i}"))).unwrap();
            assert_eq!(p.fixed_ips.len(), 1);
            assert_eq!(p.fixed_ips[0].ip_address, ip(want));
            assert_eq!(p.network_name, "private");
            assert_eq!(p.security_groups, vec![sg.clone()]);
            assert_eq!(p.status, "DOWN");
            macs.insert(p.mac_address);
        }
        assert_eq!(macs.len(), 5, "MACs must be unique");
        assert_eq!(db.ports_on_network(&net.id).unwrap().len(), 5);
        let err = db.allocate_port(&new("vm9")).unwrap_err();
        assert!(matches!(err, DbError::Network(NetworkError::IpAddressGenerationFailure { .. })), "{err}");
        assert!(db.ports_for_device("vm9").unwrap().is_empty(), "a failed allocation leaves no port");

        assert_eq!(db.ports_for_device("vm2").unwrap().len(), 1);
        assert_eq!(db.release_ports_for_device("vm2").unwrap(), 1);
        assert!(db.ports_for_device("vm2").unwrap().is_empty());
        let p = db.allocate_port(&new("vm10")).unwrap();
        assert_eq!(p.fixed_ips[0].ip_address, ip("192.168.7.4"), "released addresses are reused");

        // Explicit addresses.
        db.release_ports_for_device("vm0").unwrap();
        let subnet_id = net.subnets.first().cloned().unwrap_or_default();
        let subnet_id = if subnet_id.is_empty() { db.subnets_of(&net.id).unwrap()[0].id.clone() } else { subnet_id };
        let mut want = new("vm11");
        want.fixed_ips = vec![FixedIpRequest { subnet_id: None, ip_address: Some(ip("192.168.7.3")) }];
        assert!(
            matches!(db.allocate_port(&want), Err(DbError::Network(NetworkError::IpAddressAlreadyAllocated { .. }))),
            "taken"
        );
        want.fixed_ips = vec![FixedIpRequest { subnet_id: Some(subnet_id), ip_address: Some(ip("192.168.7.1")) }];
        assert!(
            matches!(db.allocate_port(&want), Err(DbError::Network(NetworkError::InvalidIpForSubnet(_)))),
            "the gateway"
        );
        want.fixed_ips = vec![FixedIpRequest { subnet_id: None, ip_address: Some(ip("192.168.7.2")) }];
        assert_eq!(db.allocate_port(&want).unwrap().fixed_ips[0].ip_address, ip("192.168.7.2"));

        assert!(
            matches!(db.delete_network(&net.id), Err(DbError::Network(NetworkError::NetworkInUse(_)))),
            "ports still on it"
        );
        let subnet = &db.subnets_of(&net.id).unwrap()[0];
        assert!(matches!(db.delete_subnet(&subnet.id), Err(DbError::Network(NetworkError::SubnetInUse(_)))));
        assert!(matches!(db.delete_security_group(&sg), Err(DbError::Network(NetworkError::SecurityGroupInUse(_)))));
    }

    #[test]
    fn default_group_rules_and_duplicates() {
        let (_t, db) = db();
        let id = db.ensure_default_security_group("p1").unwrap();
        let g = db.security_group_by_id(&id).unwrap().unwrap();
        assert_eq!(g.name, "default");
        let mut shape: Vec<(String, String, bool)> = g
            .rules
            .iter()
            .map(|r| (r.direction.clone(), r.ethertype.clone(), r.remote_group_id.as_deref() == Some(&id)))
            .collect();
        shape.sort();
        assert_eq!(
            shape,
            vec![
                ("egress".into(), "IPv4".into(), false),
                ("egress".into(), "IPv6".into(), false),
                ("ingress".into(), "IPv4".into(), true),
                ("ingress".into(), "IPv6".into(), true),
            ]
        );
        let mut rule = g.rules[0].clone();
        rule.id = String::new();
        let err = db.create_security_group_rule(&rule).unwrap_err();
        assert!(
            matches!(err, DbError::Network(NetworkError::SecurityGroupRuleExists(ref id)) if id == &g.rules[0].id),
            "{err}"
        );
        rule.protocol = Some("tcp".into());
        rule.port_range_min = Some(22);
        rule.port_range_max = Some(22);
        db.create_security_group_rule(&rule).unwrap();
        assert_eq!(db.security_group_by_id(&id).unwrap().unwrap().rules.len(), 5);
    }

    /// Two connections to one database (the API and a conductor of its own process, say)
    /// allocating on one /27 at once: every port gets an address no other port has, the 29th
    /// and later are refused as a full network, and no refused attempt leaves a port behind.
    #[test]
    fn two_connections_racing_never_share_an_address() {
        let (t, db) = db();
        let mut config = Config::default();
        config.network.cidr = "10.77.0.0/27".parse().unwrap();
        let net = db.ensure_default_network(&config).unwrap();
        let path = t.path().join("novabox.db");
        let outcomes: Vec<(usize, usize)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..2)
                .map(|w| {
                    let (path, net_id) = (path.clone(), net.id.clone());
                    s.spawn(move || {
                        let db = Db::open(&path, OpenOptions::default()).unwrap();
                        let (mut made, mut full) = (0, 0);
                        for i in 0..20 {
                            let new = NewPort {
                                network_id: net_id.clone(),
                                project_id: "p1".into(),
                                device_id: format!("vm-{w}-{i}"),
                                ..NewPort::default()
                            };
                            match db.allocate_port(&new) {
                                Ok(_) => made += 1,
                                Err(DbError::Network(NetworkError::IpAddressGenerationFailure { .. })) => full += 1,
                                Err(e) => panic!("worker {w}: {e}"),
                            }
                        }
                        (made, full)
                    })
                })
                .collect();
            workers.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let made: usize = outcomes.iter().map(|o| o.0).sum();
        let full: usize = outcomes.iter().map(|o| o.1).sum();
        // /27: .0 network, .1 gateway, .31 broadcast: 29 addresses for ports.
        assert_eq!((made, full), (29, 11), "{outcomes:?}");
        let ports = db.ports_on_network(&net.id).unwrap();
        assert_eq!(ports.len(), 29, "a refused allocation leaves no port");
        let ips: BTreeSet<Ipv4Addr> = ports.iter().flat_map(|p| p.fixed_ips.iter().map(|f| f.ip_address)).collect();
        assert_eq!(ips.len(), 29, "no address is held twice");
        let macs: BTreeSet<&str> = ports.iter().map(|p| p.mac_address.as_str()).collect();
        assert_eq!(macs.len(), 29, "no MAC is held twice");
    }
}
