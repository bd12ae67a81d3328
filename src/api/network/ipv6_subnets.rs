//! IPv6 subnets in the network API: `ipv6_ra_mode` and `ipv6_address_mode` checked as
//! neutron checks them (`network::ipv6`), before anything else of the subnet.

use super::*;
use crate::network::ipv6::{validate_modes, Ipv6Mode, ModeRequest};

fn mode(obj: &Map<String, Value>, key: &str) -> ApiResult<Option<Ipv6Mode>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_str().and_then(Ipv6Mode::parse).map(Some).ok_or_else(|| {
            let shown = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            invalid_attr(key, format!("'{shown}' is not in ['dhcpv6-stateful', 'dhcpv6-stateless', 'slaac']"))
        }),
    }
}

/// neutron's 400s for the modes of a subnet create of `ip_version`.
pub(super) fn check_modes(obj: &Map<String, Value>, ip_version: u8) -> ApiResult<()> {
    let ra_mode = mode(obj, "ipv6_ra_mode")?;
    let address_mode = mode(obj, "ipv6_address_mode")?;
    let cidr = obj.get("cidr").and_then(Value::as_str).unwrap_or_default();
    let prefix_len = cidr.split_once('/').and_then(|(_, l)| l.parse().ok()).unwrap_or(0);
    let req = ModeRequest {
        ip_version,
        ra_mode,
        address_mode,
        enable_dhcp: get_bool(obj, "enable_dhcp")?.unwrap_or(true),
        prefix_len,
    };
    validate_modes(&req, cidr).map_err(invalid)
}
