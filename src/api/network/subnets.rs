//! Subnets: IPv4 ranges of a network, with allocation pools, gateway, DNS servers and host routes.

use super::*;

pub(super) fn subnet_json(s: &Subnet) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "description": s.description,
        "network_id": s.network_id,
        "project_id": s.project_id,
        "tenant_id": s.project_id,
        "cidr": s.cidr.to_string(),
        "ip_version": 4,
        "gateway_ip": s.gateway_ip.map(|g| g.to_string()),
        "enable_dhcp": s.enable_dhcp,
        "allocation_pools": s.allocation_pools.iter().map(|p| json!({"start": p.start.to_string(), "end": p.end.to_string()})).collect::<Vec<_>>(),
        "dns_nameservers": s.dns_nameservers,
        "host_routes": s.host_routes.iter().map(|r| json!({"destination": r.destination, "nexthop": r.nexthop})).collect::<Vec<_>>(),
        "ipv6_ra_mode": null,
        "ipv6_address_mode": null,
        "subnetpool_id": null,
        "tags": [],
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "revision_number": s.revision_number,
    })
}

pub(super) const SUBNET_ATTRS: &[&str] = &[
    "network_id",
    "name",
    "description",
    "cidr",
    "ip_version",
    "gateway_ip",
    "allocation_pools",
    "enable_dhcp",
    "dns_nameservers",
    "host_routes",
    "project_id",
    "tenant_id",
    "ipv6_ra_mode",
    "ipv6_address_mode",
    "subnetpool_id",
    "use_default_subnetpool",
];

pub(super) fn parse_ipv4(key: &str, v: &Value) -> ApiResult<Ipv4Addr> {
    v.as_str()
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| invalid_attr(key, format!("'{v}' is not a valid IPv4 address")))
}

/// A CIDR as a route destination or a rule's remote prefix: any prefix length, IPv4 or IPv6,
/// host bits allowed (neutron keeps what it is given).
pub(super) fn parse_prefix(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

pub(super) fn parse_dns(v: &Value) -> ApiResult<Vec<String>> {
    let arr = v.as_array().ok_or_else(|| invalid_attr("dns_nameservers", format!("'{v}' is not a list")))?;
    let mut out: Vec<String> = Vec::new();
    for item in arr {
        let ip = parse_ipv4("dns_nameservers", item)?.to_string();
        if out.contains(&ip) {
            return Err(invalid_attr("dns_nameservers", format!("Duplicate nameserver '{ip}'")));
        }
        out.push(ip);
    }
    Ok(out)
}

pub(super) fn parse_routes(v: &Value) -> ApiResult<Vec<HostRoute>> {
    let arr = v.as_array().ok_or_else(|| invalid_attr("host_routes", format!("'{v}' is not a list")))?;
    arr.iter()
        .map(|r| {
            let dest = r.get("destination").and_then(Value::as_str).unwrap_or_default();
            if !matches!(parse_prefix(dest), Some((IpAddr::V4(_), _))) {
                return Err(invalid_attr("host_routes", format!("'{dest}' is not a valid IPv4 CIDR")));
            }
            let hop = parse_ipv4("host_routes", r.get("nexthop").unwrap_or(&Value::Null))?;
            Ok(HostRoute { destination: dest.to_string(), nexthop: hop.to_string() })
        })
        .collect()
}

/// Checks a subnet create request and makes it a [`NewSubnet`] (the network is checked by
/// the caller).
pub fn new_subnet(obj: &Map<String, Value>, project_id: String) -> ApiResult<NewSubnet> {
    let ip_version = match obj.get("ip_version") {
        None => 4,
        Some(v) if v == &json!(4) || v == &json!("4") => 4,
        Some(v) if v == &json!(6) || v == &json!("6") => 6,
        Some(v) => return Err(invalid_attr("ip_version", format!("'{v}' is not in [4, 6]"))),
    };
    if obj.get("subnetpool_id").is_some_and(|v| !v.is_null()) {
        return Err(invalid("subnetpool_id is not supported by novabox"));
    }
    // neutron's checks of the IPv6 modes come first, for v6 subnets and v4 ones alike.
    super::ipv6_subnets::check_modes(obj, ip_version)?;
    if ip_version == 6 {
        return Err(invalid("IPv6 subnets are not supported by novabox yet; use ip_version 4"));
    }
    let network_id = get_str(obj, "network_id", 255)?.ok_or_else(|| {
        ApiError::bad_request("Failed to parse request. Required attribute 'network_id' not specified")
            .with_kind("HTTPBadRequest")
    })?;
    let cidr_text = get_str(obj, "cidr", 64)?.ok_or_else(|| {
        ApiError::bad_request(
            "Failed to parse request. Required attribute 'cidr' not specified; subnet pools are not supported",
        )
        .with_kind("HTTPBadRequest")
    })?;
    let cidr: Ipv4Cidr = cidr_text.parse().map_err(|e| invalid_attr("cidr", e))?;
    let usable = |ip: Ipv4Addr| cidr.contains(ip) && ip != cidr.network() && ip != cidr.broadcast();
    let gateway_ip = match obj.get("gateway_ip") {
        None => Some(cidr.gateway()),
        Some(Value::Null) => None,
        Some(v) => {
            let g = parse_ipv4("gateway_ip", v)?;
            if !usable(g) {
                return Err(invalid(format!("Gateway ip {g} is not valid on subnet {cidr}")));
            }
            Some(g)
        }
    };
    let allocation_pools = match obj.get("allocation_pools") {
        None | Some(Value::Null) => default_pools(&cidr, gateway_ip),
        Some(Value::Array(items)) => items
            .iter()
            .map(|p| {
                Ok(Pool {
                    start: parse_ipv4("allocation_pools", p.get("start").unwrap_or(&Value::Null))?,
                    end: parse_ipv4("allocation_pools", p.get("end").unwrap_or(&Value::Null))?,
                })
            })
            .collect::<ApiResult<Vec<Pool>>>()?,
        Some(v) => return Err(invalid_attr("allocation_pools", format!("'{v}' is not a list"))),
    };
    if let Err(m) = validate_pools(&cidr, gateway_ip, &allocation_pools) {
        return Err(if m.starts_with("Gateway ip") {
            ApiError::conflict(m).with_kind("GatewayConflictWithAllocationPools")
        } else {
            ApiError::bad_request(m).with_kind("InvalidAllocationPool")
        });
    }
    Ok(NewSubnet {
        network_id,
        project_id,
        name: get_name(obj, "name", 255)?.unwrap_or_default(),
        description: get_text(obj, "description", 255)?.unwrap_or_default(),
        cidr,
        gateway_ip,
        enable_dhcp: get_bool(obj, "enable_dhcp")?.unwrap_or(true),
        allocation_pools,
        dns_nameservers: obj.get("dns_nameservers").map(parse_dns).transpose()?.unwrap_or_default(),
        host_routes: obj.get("host_routes").map(parse_routes).transpose()?.unwrap_or_default(),
    })
}

pub(super) async fn list_subnets(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let (nets, subnets) = state.db.with(|db| -> ApiResult<_> { Ok((db.networks()?, db.subnets()?)) })?;
    let items = subnets.iter().filter(|s| subnet_visible(&auth, s, &nets)).map(subnet_json).collect();
    let url = collection_url(&headers, &state, "subnets");
    Ok(Json(list_body("subnets", items, &pairs, &url, "SubnetNotFound")?))
}

pub(super) fn load_subnet(db: &Db, auth: &Auth, id: &str) -> ApiResult<Subnet> {
    let nets = db.networks()?;
    db.subnet_by_id(id)?.filter(|s| subnet_visible(auth, s, &nets)).ok_or_else(|| subnet_not_found(id))
}

pub(super) async fn show_subnet(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let s = state.db.with(|db| load_subnet(db, &auth, &id))?;
    Ok(Json(json!({"subnet": select_fields(subnet_json(&s), &pairs)})))
}

pub(super) async fn create_subnet(State(state): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let obj = resource_body(&body, "subnet", SUBNET_ATTRS)?;
    let new = new_subnet(&obj, owner_project(&auth, &obj)?)?;
    let s = state.db.tx(|db| -> ApiResult<Subnet> {
        let net = load_network(db, &auth, &new.network_id)?;
        if !auth.owns(&net.project_id) {
            return Err(policy("create_subnet"));
        }
        quotas::ensure_room(db, &new.project_id, "subnet")?;
        Ok(db.create_subnet(&new)?)
    })?;
    tracing::info!(subnet_id = %s.id, cidr = %s.cidr, "subnet created");
    Ok((StatusCode::CREATED, Json(json!({"subnet": subnet_json(&s)}))).into_response())
}

pub(super) async fn update_subnet(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let mut allowed = SUBNET_ATTRS.to_vec();
    allowed.push("id");
    let obj = resource_body(&body, "subnet", &allowed)?;
    read_only(&obj, &["id", "network_id", "cidr", "ip_version", "project_id", "tenant_id", "subnetpool_id"])?;
    if let Some(k) =
        ["gateway_ip", "allocation_pools", "ipv6_ra_mode", "ipv6_address_mode"].iter().find(|k| obj.contains_key(**k))
    {
        return Err(invalid(format!("updating {k} is not supported by novabox; create a new subnet")));
    }
    let s = state.db.tx(|db| -> ApiResult<Subnet> {
        let mut s = load_subnet(db, &auth, &id)?;
        if !auth.owns(&s.project_id) {
            return Err(policy("update_subnet"));
        }
        if let Some(n) = get_name(&obj, "name", 255)? {
            s.name = n;
        }
        if let Some(d) = get_text(&obj, "description", 255)? {
            s.description = d;
        }
        if let Some(b) = get_bool(&obj, "enable_dhcp")? {
            s.enable_dhcp = b;
        }
        if let Some(v) = obj.get("dns_nameservers") {
            s.dns_nameservers = parse_dns(v)?;
        }
        if let Some(v) = obj.get("host_routes") {
            s.host_routes = parse_routes(v)?;
        }
        Ok(db.save_subnet(&s)?)
    })?;
    Ok(Json(json!({"subnet": subnet_json(&s)})))
}

pub(super) async fn delete_subnet(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.db.tx(|db| -> ApiResult<()> {
        let s = load_subnet(db, &auth, &id)?;
        if !auth.owns(&s.project_id) {
            return Err(policy("delete_subnet"));
        }
        Ok(db.delete_subnet(&id)?)
    })?;
    Ok(StatusCode::NO_CONTENT)
}
