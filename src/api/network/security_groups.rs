//! Security groups and their rules, as neutron's API has them; compute enforces them per port.

use super::*;

/// Tells the compute hosts about a change to rules, a port's groups or a group's members,
/// so it takes effect on running guests without a restart.
pub(crate) async fn push_security_groups(state: &AppState, auth: &Auth) {
    crate::conductor::network::push_security_groups(&state.db, &state.compute_api(), &auth.context).await;
}

pub(super) fn rule_json(r: &SecurityGroupRule) -> Value {
    json!({
        "id": r.id,
        "security_group_id": r.security_group_id,
        "project_id": r.project_id,
        "tenant_id": r.project_id,
        "direction": r.direction,
        "ethertype": r.ethertype,
        "protocol": r.protocol,
        "port_range_min": r.port_range_min,
        "port_range_max": r.port_range_max,
        "remote_ip_prefix": r.remote_ip_prefix,
        "remote_group_id": r.remote_group_id,
        "description": r.description,
        "tags": [],
        "created_at": r.created_at,
        "updated_at": r.created_at,
        "revision_number": 0,
    })
}

pub(super) fn group_json(g: &SecurityGroup) -> Value {
    json!({
        "id": g.id,
        "name": g.name,
        "description": g.description,
        "project_id": g.project_id,
        "tenant_id": g.project_id,
        "security_group_rules": g.rules.iter().map(rule_json).collect::<Vec<_>>(),
        "tags": [],
        "created_at": g.created_at,
        "updated_at": g.updated_at,
        "revision_number": g.revision_number,
    })
}

pub(super) fn load_group(db: &Db, auth: &Auth, id: &str) -> ApiResult<SecurityGroup> {
    db.security_group_by_id(id)?.filter(|g| auth.owns(&g.project_id)).ok_or_else(|| group_not_found(id))
}

pub(super) async fn list_groups(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let groups = state.db.with(|db| -> ApiResult<_> {
        // Every project has a `default` group from the first time it looks.
        db.ensure_default_security_group(auth.project_id())?;
        Ok(db.security_groups()?)
    })?;
    let items = groups.iter().filter(|g| auth.owns(&g.project_id)).map(group_json).collect();
    let url = collection_url(&headers, &state, "security-groups");
    Ok(Json(list_body("security_groups", items, &pairs, &url, "SecurityGroupNotFound")?))
}

pub(super) async fn show_group(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let g = state.db.with(|db| load_group(db, &auth, &id))?;
    Ok(Json(json!({"security_group": select_fields(group_json(&g), &pairs)})))
}

pub(super) async fn create_group(State(state): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let obj = resource_body(&body, "security_group", &["name", "description", "project_id", "tenant_id"])?;
    let project_id = owner_project(&auth, &obj)?;
    let name = get_text(&obj, "name", 255)?.unwrap_or_default();
    let description = get_text(&obj, "description", 255)?.unwrap_or_default();
    if name == DEFAULT_SECURITY_GROUP {
        return Err(
            ApiError::conflict("Default security group already exists.").with_kind("SecurityGroupDefaultAlreadyExists")
        );
    }
    let g = state.db.tx(|db| -> ApiResult<SecurityGroup> {
        db.ensure_default_security_group(&project_id)?;
        quotas::ensure_room(db, &project_id, "security_group")?;
        Ok(db.create_security_group(&project_id, &name, &description)?)
    })?;
    Ok((StatusCode::CREATED, Json(json!({"security_group": group_json(&g)}))).into_response())
}

pub(super) async fn update_group(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let obj = resource_body(&body, "security_group", &["name", "description", "id", "project_id", "tenant_id"])?;
    read_only(&obj, &["id", "project_id", "tenant_id"])?;
    let g = state.db.tx(|db| -> ApiResult<SecurityGroup> {
        let mut g = load_group(db, &auth, &id)?;
        if let Some(n) = get_text(&obj, "name", 255)? {
            if g.name == DEFAULT_SECURITY_GROUP && n != g.name {
                return Err(ApiError::conflict("Updating default security group not allowed.")
                    .with_kind("SecurityGroupCannotUpdateDefault"));
            }
            if n == DEFAULT_SECURITY_GROUP && g.name != n {
                return Err(ApiError::conflict("Default security group already exists.")
                    .with_kind("SecurityGroupDefaultAlreadyExists"));
            }
            g.name = n;
        }
        if let Some(d) = get_text(&obj, "description", 255)? {
            g.description = d;
        }
        Ok(db.save_security_group(&g)?)
    })?;
    Ok(Json(json!({"security_group": group_json(&g)})))
}

pub(super) async fn delete_group(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.db.tx(|db| -> ApiResult<()> {
        let g = load_group(db, &auth, &id)?;
        // As neutron: only an admin may remove a project's default group.
        if g.name == DEFAULT_SECURITY_GROUP && !auth.is_admin() {
            return Err(ApiError::conflict("Insufficient rights for removing default security group.")
                .with_kind("SecurityGroupCannotRemoveDefault"));
        }
        Ok(db.delete_security_group(&id)?)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// Rules

pub(super) const PORT_PROTOCOLS: &[&str] = &["tcp", "udp", "dccp", "sctp", "udplite", "6", "17", "33", "132", "136"];
pub(super) const ICMP_PROTOCOLS: &[&str] = &["icmp", "icmpv6", "ipv6-icmp", "1", "58"];
pub(super) const PROTOCOL_NAMES: &[&str] = &[
    "ah",
    "dccp",
    "egp",
    "esp",
    "gre",
    "icmp",
    "icmpv6",
    "igmp",
    "ipip",
    "ipv6-encap",
    "ipv6-frag",
    "ipv6-icmp",
    "ipv6-nonxt",
    "ipv6-opts",
    "ipv6-route",
    "ospf",
    "pgm",
    "rsvp",
    "sctp",
    "tcp",
    "udp",
    "udplite",
    "vrrp",
];

pub(super) const RULE_ATTRS: &[&str] = &[
    "security_group_id",
    "direction",
    "ethertype",
    "protocol",
    "port_range_min",
    "port_range_max",
    "remote_ip_prefix",
    "remote_group_id",
    "description",
    "project_id",
    "tenant_id",
];

pub(super) fn rule_error(kind: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message).with_kind(kind)
}

/// Checks a rule as neutron does (direction, ethertype, protocol, port or ICMP type/code
/// ranges, remote prefix or group) and returns it ready to store. Whether the groups exist
/// is the caller's to check.
pub fn validate_rule(obj: &Map<String, Value>, project_id: &str) -> ApiResult<SecurityGroupRule> {
    let security_group_id = get_str(obj, "security_group_id", 255)?.ok_or_else(|| {
        ApiError::bad_request("Failed to parse request. Required attribute 'security_group_id' not specified")
            .with_kind("HTTPBadRequest")
    })?;
    let direction = get_str(obj, "direction", 16)?.ok_or_else(|| {
        ApiError::bad_request("Failed to parse request. Required attribute 'direction' not specified")
            .with_kind("HTTPBadRequest")
    })?;
    if direction != "ingress" && direction != "egress" {
        return Err(invalid_attr("direction", format!("{direction} is not in valid_values ['ingress', 'egress']")));
    }
    let ethertype = match get_str(obj, "ethertype", 16)?.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("ipv4") => "IPv4",
        Some("ipv6") => "IPv6",
        Some(other) => {
            return Err(invalid_attr("ethertype", format!("{other} is not in valid_values ['IPv4', 'IPv6']")))
        }
    };
    let protocol = match obj.get("protocol") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 255) => Some(n.to_string()),
        Some(Value::String(s)) => {
            let s = s.to_ascii_lowercase();
            if s == "any" {
                None
            } else if PROTOCOL_NAMES.contains(&s.as_str()) || s.parse::<u8>().is_ok() {
                Some(s)
            } else {
                return Err(rule_error(
                    "SecurityGroupRuleInvalidProtocol",
                    format!(
                        "Security group rule protocol {s} not supported. Only protocol values {PROTOCOL_NAMES:?} and \
                         integer representations [0 to 255] are supported."
                    ),
                ));
            }
        }
        Some(v) => {
            return Err(rule_error(
                "SecurityGroupRuleInvalidProtocol",
                format!("Security group rule protocol {v} not supported."),
            ))
        }
    };
    let min = get_int(obj, "port_range_min")?;
    let max = get_int(obj, "port_range_max")?;
    match protocol.as_deref() {
        _ if min.is_none() && max.is_none() => {}
        None => {
            return Err(rule_error(
                "SecurityGroupProtocolRequiredWithPorts",
                "Must also specify protocol if port range is given.",
            ))
        }
        Some(p) if PORT_PROTOCOLS.contains(&p) => {
            for port in [min, max].into_iter().flatten() {
                if !(1..=65535).contains(&port) {
                    return Err(rule_error("SecurityGroupInvalidPortValue", format!("Invalid value for port {port}.")));
                }
            }
            if let (Some(a), Some(b)) = (min, max) {
                if a > b {
                    return Err(rule_error(
                        "SecurityGroupInvalidPortRange",
                        "For TCP/UDP protocols, port_range_min must be <= port_range_max",
                    ));
                }
            }
        }
        Some(p) if ICMP_PROTOCOLS.contains(&p) => {
            if min.is_none() {
                return Err(rule_error(
                    "SecurityGroupMissingIcmpType",
                    format!(
                        "ICMP code (port-range-max) {} is provided but ICMP type (port-range-min) is missing.",
                        max.unwrap_or_default()
                    ),
                ));
            }
            for (field, attr, value) in [("type", "port_range_min", min), ("code", "port_range_max", max)] {
                if let Some(v) = value.filter(|v| !(0..=255).contains(v)) {
                    return Err(rule_error(
                        "SecurityGroupInvalidIcmpValue",
                        format!("Invalid value for ICMP {field} ({attr}) {v}. It must be 0 to 255."),
                    ));
                }
            }
        }
        Some(p) => {
            return Err(rule_error(
                "SecurityGroupInvalidProtocolForPortRange",
                format!("Invalid protocol {p} for port range, only supported for TCP, UDP, UDPLITE, SCTP and DCCP."),
            ))
        }
    }
    let remote_ip_prefix = match get_str(obj, "remote_ip_prefix", 64)? {
        None => None,
        Some(p) => {
            let with_len = if p.contains('/') {
                p.clone()
            } else if p.contains(':') {
                format!("{p}/128")
            } else {
                format!("{p}/32")
            };
            let (addr, _) = parse_prefix(&with_len)
                .ok_or_else(|| invalid_attr("remote_ip_prefix", format!("'{p}' is not a valid CIDR")))?;
            if addr.is_ipv4() != (ethertype == "IPv4") {
                return Err(rule_error(
                    "SecurityGroupRuleParameterConflict",
                    format!("Conflicting value ethertype {ethertype} for CIDR {p}"),
                ));
            }
            Some(with_len)
        }
    };
    let remote_group_id = get_str(obj, "remote_group_id", 255)?;
    if remote_ip_prefix.is_some() && remote_group_id.is_some() {
        return Err(rule_error(
            "SecurityGroupRemoteGroupAndRemoteIpPrefix",
            "Only remote_ip_prefix or remote_group_id may be provided.",
        ));
    }
    Ok(SecurityGroupRule {
        id: String::new(),
        security_group_id,
        project_id: project_id.to_string(),
        direction,
        ethertype: ethertype.to_string(),
        protocol,
        port_range_min: min,
        port_range_max: max,
        remote_ip_prefix,
        remote_group_id,
        description: get_text(obj, "description", 255)?.unwrap_or_default(),
        created_at: String::new(),
    })
}

pub(super) async fn list_rules(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let groups = state.db.with(|db| -> ApiResult<_> {
        db.ensure_default_security_group(auth.project_id())?;
        Ok(db.security_groups()?)
    })?;
    let items =
        groups.iter().filter(|g| auth.owns(&g.project_id)).flat_map(|g| g.rules.iter().map(rule_json)).collect();
    let url = collection_url(&headers, &state, "security-group-rules");
    Ok(Json(list_body("security_group_rules", items, &pairs, &url, "SecurityGroupRuleNotFound")?))
}

pub(super) fn load_rule(db: &Db, auth: &Auth, id: &str) -> ApiResult<SecurityGroupRule> {
    db.security_group_rule_by_id(id)?.filter(|r| auth.owns(&r.project_id)).ok_or_else(|| rule_not_found(id))
}

pub(super) async fn show_rule(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let r = state.db.with(|db| load_rule(db, &auth, &id))?;
    Ok(Json(json!({"security_group_rule": select_fields(rule_json(&r), &pairs)})))
}

pub(super) async fn create_rule(State(state): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let obj = resource_body(&body, "security_group_rule", RULE_ATTRS)?;
    let rule = state.db.tx(|db| -> ApiResult<SecurityGroupRule> {
        let group_id = get_str(&obj, "security_group_id", 255)?.unwrap_or_default();
        // The rule belongs to the group's project, whoever (an admin) creates it.
        let group = db.security_group_by_id(&group_id)?.filter(|g| auth.owns(&g.project_id));
        let project = group.as_ref().map(|g| g.project_id.clone()).unwrap_or_else(|| auth.project_id().to_string());
        let rule = validate_rule(&obj, &project)?;
        if group.is_none() {
            return Err(group_not_found(&rule.security_group_id));
        }
        quotas::ensure_room(db, &project, "security_group_rule")?;
        if let Some(remote) = &rule.remote_group_id {
            load_group(db, &auth, remote)?;
        }
        Ok(db.create_security_group_rule(&rule)?)
    })?;
    push_security_groups(&state, &auth).await;
    Ok((StatusCode::CREATED, Json(json!({"security_group_rule": rule_json(&rule)}))).into_response())
}

pub(super) async fn delete_rule(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.db.tx(|db| -> ApiResult<()> {
        load_rule(db, &auth, &id)?;
        Ok(db.delete_security_group_rule(&id)?)
    })?;
    push_security_groups(&state, &auth).await;
    Ok(StatusCode::NO_CONTENT)
}
