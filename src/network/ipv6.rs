//! IPv6 subnets as neutron decides them: the `ipv6_ra_mode` / `ipv6_address_mode` pair and
//! its refusals, which addresses a port gets by itself (SLAAC and DHCPv6-stateless ports take
//! the EUI-64 address of their MAC, as the guest's kernel will), the default allocation
//! pool, and what dnsmasq must be told to send router advertisements and answer DHCPv6 in
//! each mode. Pure functions; the texts are neutron's.

use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};

/// A value of `ipv6_ra_mode` or `ipv6_address_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ipv6Mode {
    #[serde(rename = "slaac")]
    Slaac,
    #[serde(rename = "dhcpv6-stateless")]
    Dhcpv6Stateless,
    #[serde(rename = "dhcpv6-stateful")]
    Dhcpv6Stateful,
}

impl Ipv6Mode {
    pub fn parse(s: &str) -> Option<Ipv6Mode> {
        match s {
            "slaac" => Some(Ipv6Mode::Slaac),
            "dhcpv6-stateless" => Some(Ipv6Mode::Dhcpv6Stateless),
            "dhcpv6-stateful" => Some(Ipv6Mode::Dhcpv6Stateful),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ipv6Mode::Slaac => "slaac",
            Ipv6Mode::Dhcpv6Stateless => "dhcpv6-stateless",
            Ipv6Mode::Dhcpv6Stateful => "dhcpv6-stateful",
        }
    }
}

/// neutron's refusal of a value that is not a mode (the attribute's `type:values` check).
pub fn invalid_mode(key: &str, value: &str) -> String {
    format!("Invalid input for {key}. Reason: '{value}' is not in ['dhcpv6-stateful', 'dhcpv6-stateless', 'slaac'].")
}

/// The modes a subnet create asks for, with what else decides whether they are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeRequest {
    pub ip_version: u8,
    pub ra_mode: Option<Ipv6Mode>,
    pub address_mode: Option<Ipv6Mode>,
    pub enable_dhcp: bool,
    /// The CIDR's prefix length.
    pub prefix_len: u8,
}

/// Whether ports of such a subnet address themselves (SLAAC, or DHCPv6-stateless which only
/// hands out options): neutron's `is_auto_address_subnet`. An address mode decides; without
/// one, the RA mode does.
pub fn is_auto_address(ra_mode: Option<Ipv6Mode>, address_mode: Option<Ipv6Mode>) -> bool {
    let auto = |m: Ipv6Mode| matches!(m, Ipv6Mode::Slaac | Ipv6Mode::Dhcpv6Stateless);
    match address_mode {
        Some(m) => auto(m),
        None => ra_mode.is_some_and(auto),
    }
}

/// neutron's checks of the modes on create (`_validate_subnet`, `_validate_ipv6_attributes`),
/// in its order and words (each an `InvalidInput` message, without neutron's prefix).
pub fn validate_modes(req: &ModeRequest, cidr: &str) -> Result<(), String> {
    if req.ip_version == 4 {
        if req.ra_mode.is_some() {
            return Err("ipv6_ra_mode is not valid when ip_version is 4".into());
        }
        if req.address_mode.is_some() {
            return Err("ipv6_address_mode is not valid when ip_version is 4".into());
        }
        return Ok(());
    }
    if (req.ra_mode.is_some() || req.address_mode.is_some()) && !req.enable_dhcp {
        return Err("ipv6_ra_mode or ipv6_address_mode cannot be set when enable_dhcp is set to False.".into());
    }
    if let (Some(ra), Some(addr)) = (req.ra_mode, req.address_mode) {
        if ra != addr {
            return Err(format!(
                "ipv6_ra_mode set to '{}' with ipv6_address_mode set to '{}' is not valid. If both attributes are \
                 set, they must be the same value",
                ra.as_str(),
                addr.as_str()
            ));
        }
    }
    if is_auto_address(req.ra_mode, req.address_mode) && req.prefix_len != 64 {
        return Err(format!(
            "Invalid CIDR {cidr} for IPv6 address mode. OpenStack uses the EUI-64 address format, which requires the \
             prefix to be /64."
        ));
    }
    Ok(())
}

/// A MAC address (`fa:16:3e:12:34:56`, either case) as six bytes.
pub fn parse_mac(mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The address a port with `mac` gets on the /64 `prefix` by SLAAC (RFC 4291 appendix A, the
/// modified EUI-64 interface id: `ff:fe` in the middle, the universal/local bit flipped), as
/// neutron computes it for the port's `fixed_ips` and the guest's kernel for itself.
pub fn eui64(prefix: Ipv6Addr, mac: &str) -> Option<Ipv6Addr> {
    let m = parse_mac(mac)?;
    let iid = [m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]];
    let mut bytes = prefix.octets();
    bytes[8..].copy_from_slice(&iid);
    Some(Ipv6Addr::from(bytes))
}

/// The network address of `addr/prefix_len`.
pub fn network_of(addr: Ipv6Addr, prefix_len: u8) -> Ipv6Addr {
    let mask = if prefix_len == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix_len.min(128))) };
    Ipv6Addr::from(u128::from(addr) & mask)
}

/// neutron's default pools of a v6 subnet: every address after the subnet-router anycast
/// address (the network address) up to the last, less the gateway.
pub fn default_pools(network: Ipv6Addr, prefix_len: u8, gateway: Option<Ipv6Addr>) -> Vec<(Ipv6Addr, Ipv6Addr)> {
    let first = u128::from(network_of(network, prefix_len)) + 1;
    let host_bits = 128 - u32::from(prefix_len.min(128));
    let last = u128::from(network_of(network, prefix_len))
        | if host_bits == 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
    let range = |a: u128, b: u128| (Ipv6Addr::from(a), Ipv6Addr::from(b));
    match gateway.map(u128::from) {
        Some(g) if g == first && first < last => vec![range(first + 1, last)],
        Some(g) if g == last && first < last => vec![range(first, last - 1)],
        Some(g) if g > first && g < last => vec![range(first, g - 1), range(g + 1, last)],
        _ => vec![range(first, last)],
    }
}

/// dnsmasq's lines for a v6 subnet on `bridge` (whose gateway address gives dnsmasq the
/// prefix through `constructor:`): router advertisements always (there is no other router
/// on a novabox network), and DHCPv6 as the address mode asks: none for SLAAC (`ra-only`),
/// options only for DHCPv6-stateless (`ra-stateless`), addresses from `dhcp-host` lines for
/// DHCPv6-stateful (`static`). `None` when the subnet has no mode: neutron then leaves
/// addressing to an outside router and novabox sends nothing.
pub fn dnsmasq_lines(bridge: &str, prefix_len: u8, modes: (Option<Ipv6Mode>, Option<Ipv6Mode>)) -> Option<String> {
    let mode = modes.1.or(modes.0)?;
    let kind = match mode {
        Ipv6Mode::Slaac => "ra-only",
        Ipv6Mode::Dhcpv6Stateless => "ra-stateless",
        Ipv6Mode::Dhcpv6Stateful => "static",
    };
    Some(format!("enable-ra\ndhcp-range=::,constructor:{bridge},{kind},{prefix_len},12h\n"))
}

/// A DHCPv6-stateful host line: dnsmasq matches the client's MAC and hands out `addr`.
pub fn dnsmasq_host(mac: &str, addr: Ipv6Addr, hostname: &str) -> String {
    format!("{},[{addr}],{hostname}\n", mac.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: u8, ra: Option<&str>, addr: Option<&str>, dhcp: bool, len: u8) -> ModeRequest {
        ModeRequest {
            ip_version: v,
            ra_mode: ra.and_then(Ipv6Mode::parse),
            address_mode: addr.and_then(Ipv6Mode::parse),
            enable_dhcp: dhcp,
            prefix_len: len,
        }
    }

    #[test]
    fn mode_combinations_are_neutrons() {
        for mode in ["slaac", "dhcpv6-stateless", "dhcpv6-stateful"] {
            assert_eq!(validate_modes(&req(6, Some(mode), Some(mode), true, 64), "2001:db8::/64"), Ok(()), "{mode}");
            assert_eq!(validate_modes(&req(6, Some(mode), None, true, 64), "2001:db8::/64"), Ok(()), "{mode}");
            assert_eq!(validate_modes(&req(6, None, Some(mode), true, 64), "2001:db8::/64"), Ok(()), "{mode}");
        }
        assert_eq!(
            validate_modes(&req(6, None, None, false, 120), "2001:db8::/64"),
            Ok(()),
            "no mode, no DHCP, any prefix"
        );
        assert_eq!(
            validate_modes(&req(6, Some("dhcpv6-stateful"), None, true, 120), "2001:db8::/64"),
            Ok(()),
            "stateful: any prefix"
        );
        assert_eq!(
            validate_modes(&req(6, Some("slaac"), Some("dhcpv6-stateful"), true, 64), "2001:db8::/64").unwrap_err(),
            "ipv6_ra_mode set to 'slaac' with ipv6_address_mode set to 'dhcpv6-stateful' is not valid. If both \
             attributes are set, they must be the same value"
        );
        assert_eq!(
            validate_modes(&req(6, Some("slaac"), None, false, 64), "2001:db8::/64").unwrap_err(),
            "ipv6_ra_mode or ipv6_address_mode cannot be set when enable_dhcp is set to False."
        );
        assert_eq!(
            validate_modes(&req(6, None, Some("slaac"), true, 80), "2001:db8::/80").unwrap_err(),
            "Invalid CIDR 2001:db8::/80 for IPv6 address mode. OpenStack uses the EUI-64 address format, which \
             requires the prefix to be /64."
        );
        assert!(validate_modes(&req(6, Some("dhcpv6-stateless"), None, true, 56), "2001:db8::/64").is_err());
        assert_eq!(
            validate_modes(&req(4, Some("slaac"), None, true, 24), "2001:db8::/64").unwrap_err(),
            "ipv6_ra_mode is not valid when ip_version is 4"
        );
        assert_eq!(
            validate_modes(&req(4, None, Some("slaac"), true, 24), "2001:db8::/64").unwrap_err(),
            "ipv6_address_mode is not valid when ip_version is 4"
        );
        assert_eq!(Ipv6Mode::parse("dhcpv6-pd"), None);
        assert!(invalid_mode("ipv6_ra_mode", "x").starts_with("Invalid input for ipv6_ra_mode. Reason: 'x' is not in"));
        assert!(is_auto_address(Some(Ipv6Mode::Slaac), None));
        assert!(!is_auto_address(Some(Ipv6Mode::Slaac), Some(Ipv6Mode::Dhcpv6Stateful)), "the address mode decides");
        assert!(!is_auto_address(None, None));
    }

    #[test]
    fn eui64_addresses_are_what_the_guest_picks() {
        let prefix: Ipv6Addr = "2001:db8::".parse().unwrap();
        // The universal/local bit of fa (1111 1010) flips to f8.
        assert_eq!(eui64(prefix, "fa:16:3e:12:34:56"), Some("2001:db8::f816:3eff:fe12:3456".parse().unwrap()));
        assert_eq!(eui64(prefix, "FA:16:3E:12:34:56"), eui64(prefix, "fa:16:3e:12:34:56"));
        assert_eq!(eui64(prefix, "00:00:00:00:00:01"), Some("2001:db8::200:ff:fe00:1".parse().unwrap()));
        assert_eq!(eui64(prefix, "fa:16:3e:12:34"), None);
        assert_eq!(eui64(prefix, "fa:16:3e:12:34:56:78"), None);
        assert_eq!(eui64(prefix, "fa:16:3e:12:34:zz"), None);
    }

    #[test]
    fn pools_and_dnsmasq_lines() {
        let net: Ipv6Addr = "2001:db8::".parse().unwrap();
        let gw: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let pools = default_pools(net, 64, Some(gw));
        assert_eq!(pools, vec![("2001:db8::2".parse().unwrap(), "2001:db8::ffff:ffff:ffff:ffff".parse().unwrap())]);
        assert_eq!(default_pools("2001:db8::5".parse().unwrap(), 126, None).len(), 1);
        assert_eq!(
            default_pools(net, 120, Some("2001:db8::80".parse().unwrap())),
            vec![
                ("2001:db8::1".parse().unwrap(), "2001:db8::7f".parse().unwrap()),
                ("2001:db8::81".parse().unwrap(), "2001:db8::ff".parse().unwrap())
            ]
        );
        assert_eq!(network_of("2001:db8::1234".parse().unwrap(), 120), "2001:db8::1200".parse::<Ipv6Addr>().unwrap());

        let slaac = dnsmasq_lines("nbr1", 64, (Some(Ipv6Mode::Slaac), Some(Ipv6Mode::Slaac))).unwrap();
        assert_eq!(slaac, "enable-ra\ndhcp-range=::,constructor:nbr1,ra-only,64,12h\n");
        assert!(dnsmasq_lines("nbr1", 64, (Some(Ipv6Mode::Dhcpv6Stateless), None)).unwrap().contains(",ra-stateless,"));
        assert!(dnsmasq_lines("nbr1", 64, (None, Some(Ipv6Mode::Dhcpv6Stateful))).unwrap().contains(",static,"));
        assert_eq!(dnsmasq_lines("nbr1", 64, (None, None)), None);
        assert_eq!(
            dnsmasq_host("FA:16:3E:00:00:01", "2001:db8::5".parse().unwrap(), "vm"),
            "fa:16:3e:00:00:01,[2001:db8::5],vm\n"
        );
    }
}
