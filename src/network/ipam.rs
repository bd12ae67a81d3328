//! IP address management, as neutron's IPAM does it: allocation pools, the next free address,
//! MAC addresses. Pure functions: the database keeps the rows and the allocations, and calls
//! these inside its transaction.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::cidr::Ipv4Cidr;

/// A range of a subnet's addresses that ports are given addresses from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

/// neutron's default pool: every host address of `cidr` except the gateway.
pub fn default_pools(cidr: &Ipv4Cidr, gateway: Option<Ipv4Addr>) -> Vec<Pool> {
    let first = u32::from(cidr.network()) + 1;
    let last = u32::from(cidr.broadcast()) - 1;
    match gateway.map(u32::from) {
        Some(g) if g == first => vec![Pool { start: Ipv4Addr::from(first + 1), end: Ipv4Addr::from(last) }],
        Some(g) if g == last => vec![Pool { start: Ipv4Addr::from(first), end: Ipv4Addr::from(last - 1) }],
        Some(g) if g > first && g < last => vec![
            Pool { start: Ipv4Addr::from(first), end: Ipv4Addr::from(g - 1) },
            Pool { start: Ipv4Addr::from(g + 1), end: Ipv4Addr::from(last) },
        ],
        _ => vec![Pool { start: Ipv4Addr::from(first), end: Ipv4Addr::from(last) }],
    }
}

/// Why a set of allocation pools is not acceptable, in neutron's words.
pub fn validate_pools(cidr: &Ipv4Cidr, gateway: Option<Ipv4Addr>, pools: &[Pool]) -> std::result::Result<(), String> {
    let usable = |ip: Ipv4Addr| cidr.contains(ip) && ip != cidr.network() && ip != cidr.broadcast();
    for p in pools {
        if !usable(p.start) || !usable(p.end) {
            return Err(format!("The allocation pool {}-{} spans beyond the subnet cidr {cidr}.", p.start, p.end));
        }
        if u32::from(p.start) > u32::from(p.end) {
            return Err(format!("The allocation pool {}-{} is not valid: its start is after its end.", p.start, p.end));
        }
        if let Some(g) = gateway {
            if u32::from(p.start) <= u32::from(g) && u32::from(g) <= u32::from(p.end) {
                return Err(format!("Gateway ip {g} conflicts with allocation pool {}-{}.", p.start, p.end));
            }
        }
    }
    for (i, a) in pools.iter().enumerate() {
        for b in &pools[i + 1..] {
            if u32::from(a.start) <= u32::from(b.end) && u32::from(b.start) <= u32::from(a.end) {
                return Err(format!(
                    "Found overlapping allocation pools: {}-{} and {}-{}.",
                    a.start, a.end, b.start, b.end
                ));
            }
        }
    }
    Ok(())
}

/// The lowest address of `pools` not in `used`.
pub fn next_free_ip(pools: &[Pool], used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    pools.iter().find_map(|p| (u32::from(p.start)..=u32::from(p.end)).map(Ipv4Addr::from).find(|ip| !used.contains(ip)))
}

/// A locally administered MAC in OpenStack's `fa:16:3e` prefix.
pub fn random_mac() -> String {
    let mut rng = rand::thread_rng();
    format!("fa:16:3e:{:02x}:{:02x}:{:02x}", rng.gen::<u8>(), rng.gen::<u8>(), rng.gen::<u8>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn pools_and_next_free() {
        let c: Ipv4Cidr = "10.0.0.0/24".parse().unwrap();
        assert_eq!(
            default_pools(&c, Some(ip("10.0.0.1"))),
            vec![Pool { start: ip("10.0.0.2"), end: ip("10.0.0.254") }]
        );
        assert_eq!(default_pools(&c, Some(ip("10.0.0.100"))).len(), 2);
        assert_eq!(default_pools(&c, None), vec![Pool { start: ip("10.0.0.1"), end: ip("10.0.0.254") }]);
        let pools =
            [Pool { start: ip("10.0.0.5"), end: ip("10.0.0.6") }, Pool { start: ip("10.0.0.9"), end: ip("10.0.0.9") }];
        let mut used = BTreeSet::from([ip("10.0.0.5")]);
        assert_eq!(next_free_ip(&pools, &used), Some(ip("10.0.0.6")));
        used.insert(ip("10.0.0.6"));
        assert_eq!(next_free_ip(&pools, &used), Some(ip("10.0.0.9")));
        used.insert(ip("10.0.0.9"));
        assert_eq!(next_free_ip(&pools, &used), None);

        assert!(validate_pools(&c, Some(ip("10.0.0.1")), &pools).is_ok());
        let bad = [
            vec![Pool { start: ip("10.0.0.0"), end: ip("10.0.0.9") }],
            vec![Pool { start: ip("10.0.0.9"), end: ip("10.0.0.5") }],
            vec![Pool { start: ip("10.0.1.1"), end: ip("10.0.1.5") }],
            vec![Pool { start: ip("10.0.0.1"), end: ip("10.0.0.5") }],
            vec![
                Pool { start: ip("10.0.0.2"), end: ip("10.0.0.5") },
                Pool { start: ip("10.0.0.5"), end: ip("10.0.0.6") },
            ],
        ];
        for p in bad {
            assert!(validate_pools(&c, Some(ip("10.0.0.1")), &p).is_err(), "{p:?}");
        }
        let mac = random_mac();
        assert!(mac.starts_with("fa:16:3e:") && mac.len() == 17, "{mac}");
    }
}
