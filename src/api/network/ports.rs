//! Ports: a network's attachments, with their fixed IPs, MAC, security groups, binding and the
//! attributes neutron's policy gives only to the network's owner.

use super::*;

pub(super) fn port_json(p: &Port, admin: bool) -> Value {
    let mut v = json!({
        "id": p.id,
        "name": p.name,
        "description": p.description,
        "network_id": p.network_id,
        "project_id": p.project_id,
        "tenant_id": p.project_id,
        "mac_address": p.mac_address,
        "admin_state_up": p.admin_state_up,
        "status": p.status,
        "device_id": p.device_id,
        "device_owner": p.device_owner,
        "fixed_ips": p.fixed_ips.iter().map(|f| json!({"subnet_id": f.subnet_id, "ip_address": f.ip_address.to_string()})).collect::<Vec<_>>(),
        "security_groups": p.security_groups,
        "port_security_enabled": p.port_security_enabled,
        "binding:vnic_type": "normal",
        "tags": [],
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "revision_number": p.revision_number,
    });
    // neutron shows the binding details to admins only (nova reads them as admin).
    if admin {
        let bound = p.binding_host.as_deref().is_some_and(|h| !h.is_empty());
        v["binding:host_id"] = json!(p.binding_host.clone().unwrap_or_default());
        v["binding:vif_type"] = json!(if bound { "bridge" } else { "unbound" });
        v["binding:vif_details"] = if bound { json!({"port_filter": true}) } else { json!({}) };
        v["binding:profile"] = json!({});
    }
    v
}

pub(super) const PORT_ATTRS: &[&str] = &[
    "network_id",
    "name",
    "description",
    "admin_state_up",
    "mac_address",
    "fixed_ips",
    "device_id",
    "device_owner",
    "security_groups",
    "port_security_enabled",
    "project_id",
    "tenant_id",
    "binding:host_id",
    "binding:vnic_type",
    "binding:profile",
];

pub(super) fn parse_fixed_ips(v: &Value) -> ApiResult<Vec<FixedIpRequest>> {
    let arr = v.as_array().ok_or_else(|| invalid_attr("fixed_ips", format!("'{v}' is not a list")))?;
    arr.iter()
        .map(|item| {
            let subnet_id = item.get("subnet_id").and_then(Value::as_str).map(str::to_string);
            let ip_address = item.get("ip_address").map(|ip| parse_ipv4("fixed_ips", ip)).transpose()?;
            if subnet_id.is_none() && ip_address.is_none() {
                return Err(invalid_attr("fixed_ips", "each entry needs a subnet_id or an ip_address"));
            }
            Ok(FixedIpRequest { subnet_id, ip_address })
        })
        .collect()
}

pub(super) fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The groups a port of `project_id` gets: the ones named (each must exist and be the
/// project's), or the project's `default` group.
pub(super) fn resolve_groups(db: &Db, auth: &Auth, project_id: &str, named: Option<&Value>) -> ApiResult<Vec<String>> {
    let Some(v) = named else {
        return Ok(vec![db.ensure_default_security_group(project_id)?]);
    };
    let arr = v.as_array().ok_or_else(|| invalid_attr("security_groups", format!("'{v}' is not a list")))?;
    let mut out: Vec<String> = Vec::new();
    for g in arr {
        let id = g.as_str().ok_or_else(|| invalid_attr("security_groups", format!("'{g}' is not a valid UUID")))?;
        let group = db.security_group_by_id(id)?.filter(|sg| sg.project_id == project_id || auth.is_admin());
        let group = group.ok_or_else(|| group_not_found(id))?;
        if !out.contains(&group.id) {
            out.push(group.id);
        }
    }
    Ok(out)
}

/// neutron's attribute rules for a port body (`create_port:<attr>`, `update_port:<attr>`),
/// asked of the policy table with the owner of the port's network as the target: a chosen
/// address or MAC, port security and the network's own device owners belong to the
/// network's owner (and admins), the binding host to admins. Attributes that are absent
/// need nothing, as in neutron, whatever their value would default to.
pub(super) fn authorize_port_attrs(
    auth: &Auth,
    obj: &Map<String, Value>,
    net: &Network,
    updating: bool,
) -> ApiResult<()> {
    use crate::policy::Action::*;
    let target = crate::policy::Target { network_project_id: Some(&net.project_id), ..Default::default() };
    let chosen_ip = obj
        .get("fixed_ips")
        .and_then(Value::as_array)
        .is_some_and(|ips| ips.iter().any(|f| f.get("ip_address").is_some_and(|ip| !ip.is_null())));
    let network_device = obj.get("device_owner").and_then(Value::as_str).is_some_and(|o| o.starts_with("network:"));
    let asked = [
        (chosen_ip, NetworkPortFixedIps, NetworkPortUpdateFixedIps),
        (obj.contains_key("mac_address"), NetworkPortMacAddress, NetworkPortUpdateMacAddress),
        (obj.contains_key("port_security_enabled"), NetworkPortSecurity, NetworkPortUpdateSecurity),
        (network_device, NetworkPortDeviceOwner, NetworkPortUpdateDeviceOwner),
        (obj.contains_key("binding:host_id"), NetworkPortBinding, NetworkPortUpdateBinding),
    ];
    for (_, create, update) in asked.into_iter().filter(|(asked, _, _)| *asked) {
        auth.authorize(if updating { update } else { create }, &target)?;
    }
    Ok(())
}

/// A non-admin may point a port's `device_id` only at a server of the port's own project.
/// neutron checks this for routers (`DeviceIDNotOwnedByTenant`); for servers the metadata
/// service and the server's addresses trust the link, so novabox checks it for them too, with
/// neutron's answer.
pub(super) fn check_device_id(db: &Db, auth: &Auth, device_id: &str, port_project: &str) -> ApiResult<()> {
    if auth.is_admin() || device_id.is_empty() {
        return Ok(());
    }
    match db.instance_by_uuid(device_id, true)? {
        Some(inst) if inst.project_id != port_project => Err(ApiError::conflict(format!(
            "The following device_id {device_id} is not owned by your tenant or matches another tenants router."
        ))
        .with_kind("DeviceIDNotOwnedByTenant")),
        _ => Ok(()),
    }
}

pub(super) fn check_binding_attrs(obj: &Map<String, Value>) -> ApiResult<()> {
    if obj.get("binding:vnic_type").is_some_and(|v| v != "normal") {
        return Err(invalid_attr("binding:vnic_type", "only 'normal' is supported"));
    }
    if obj.get("binding:profile").is_some_and(|v| !v.is_null() && v != &json!({})) {
        return Err(invalid_attr("binding:profile", "novabox takes no binding profile"));
    }
    Ok(())
}

pub(super) fn port_security_conflict() -> ApiError {
    ApiError::conflict(
        "Port has security group associated. Cannot disable port security or ip address until security group is removed",
    )
    .with_kind("PortSecurityPortHasSecurityGroup")
}

pub(super) async fn list_ports(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let (nets, ports) = state.db.with(|db| -> ApiResult<_> { Ok((db.networks()?, db.ports()?)) })?;
    let items = ports.iter().filter(|p| port_visible(&auth, p, &nets)).map(|p| port_json(p, auth.is_admin())).collect();
    let url = collection_url(&headers, &state, "ports");
    Ok(Json(list_body("ports", items, &pairs, &url, "PortNotFound")?))
}

pub(super) fn load_port(db: &Db, auth: &Auth, id: &str) -> ApiResult<Port> {
    let nets = db.networks()?;
    db.port_by_id(id)?.filter(|p| port_visible(auth, p, &nets)).ok_or_else(|| port_not_found(id))
}

pub(super) async fn show_port(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let p = state.db.with(|db| load_port(db, &auth, &id))?;
    Ok(Json(json!({"port": select_fields(port_json(&p, auth.is_admin()), &pairs)})))
}

pub(super) async fn create_port(State(state): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let obj = resource_body(&body, "port", PORT_ATTRS)?;
    check_binding_attrs(&obj)?;
    let project_id = owner_project(&auth, &obj)?;
    let network_id = get_str(&obj, "network_id", 255)?.ok_or_else(|| {
        ApiError::bad_request("Failed to parse request. Required attribute 'network_id' not specified")
            .with_kind("HTTPBadRequest")
    })?;
    let mac_address = get_str(&obj, "mac_address", 17)?;
    if let Some(m) = &mac_address {
        if !valid_mac(m) {
            return Err(invalid_attr("mac_address", format!("'{m}' is not a valid MAC address")));
        }
    }
    let fixed_ips = obj.get("fixed_ips").map(parse_fixed_ips).transpose()?.unwrap_or_default();
    let port_security = get_bool(&obj, "port_security_enabled")?;
    let p = state.db.tx(|db| -> ApiResult<Port> {
        let net = load_network(db, &auth, &network_id)?;
        // An external network is seen by every project, but only its owner (and admins,
        // routers, floating IPs) put ports on it, as DevStack's `public`.
        if net.external && !net.shared && !auth.owns(&net.project_id) {
            return Err(policy("create_port"));
        }
        authorize_port_attrs(&auth, &obj, &net, false)?;
        let device_id = get_str(&obj, "device_id", 255)?.unwrap_or_default();
        check_device_id(db, &auth, &device_id, &project_id)?;
        quotas::ensure_room(db, &project_id, "port")?;
        let security = port_security.unwrap_or(net.port_security_enabled);
        let groups = match (security, obj.get("security_groups")) {
            (false, Some(v)) if v.as_array().is_some_and(|a| !a.is_empty()) => return Err(port_security_conflict()),
            (false, _) => Vec::new(),
            (true, named) => resolve_groups(db, &auth, &project_id, named)?,
        };
        db.allocate_port(&NewPort {
            network_id: net.id.clone(),
            project_id: project_id.clone(),
            device_id,
            device_owner: get_str(&obj, "device_owner", 255)?.unwrap_or_default(),
            security_group_ids: groups,
            name: get_name(&obj, "name", 255)?.unwrap_or_default(),
            description: get_text(&obj, "description", 255)?.unwrap_or_default(),
            fixed_ips: fixed_ips.clone(),
            mac_address: mac_address.clone(),
            admin_state_up: get_bool(&obj, "admin_state_up")?,
            port_security_enabled: Some(security),
            binding_host: get_str(&obj, "binding:host_id", 255)?.filter(|h| !h.is_empty()),
        })
        .map_err(ApiError::from)
    })?;
    tracing::info!(port_id = %p.id, network_id = %p.network_id, mac = %p.mac_address, "port created");
    push_security_groups(&state, &auth).await;
    Ok((StatusCode::CREATED, Json(json!({"port": port_json(&p, auth.is_admin())}))).into_response())
}

pub(super) async fn update_port(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let mut allowed = PORT_ATTRS.to_vec();
    allowed.extend(["id", "status"]);
    let obj = resource_body(&body, "port", &allowed)?;
    read_only(&obj, &["id", "network_id", "project_id", "tenant_id", "status"])?;
    check_binding_attrs(&obj)?;
    let p = state.db.tx(|db| -> ApiResult<Port> {
        let mut p = load_port(db, &auth, &id)?;
        if !auth.owns(&p.project_id) {
            return Err(policy("update_port"));
        }
        let net = db.network_by_id(&p.network_id)?.ok_or_else(|| net_not_found(&p.network_id))?;
        authorize_port_attrs(&auth, &obj, &net, true)?;
        if let Some(k) = ["fixed_ips", "mac_address"].iter().find(|k| obj.contains_key(**k)) {
            return Err(invalid(format!("updating {k} is not supported by novabox; create a new port")));
        }
        if let Some(n) = get_name(&obj, "name", 255)? {
            p.name = n;
        }
        if let Some(d) = get_text(&obj, "description", 255)? {
            p.description = d;
        }
        if let Some(b) = get_bool(&obj, "admin_state_up")? {
            p.admin_state_up = b;
        }
        if let Some(d) = get_str(&obj, "device_id", 255)? {
            check_device_id(db, &auth, &d, &p.project_id)?;
            p.device_id = d;
        }
        if let Some(d) = get_str(&obj, "device_owner", 255)? {
            p.device_owner = d;
        }
        if let Some(h) = get_str(&obj, "binding:host_id", 255)? {
            p.binding_host = Some(h).filter(|h| !h.is_empty());
        }
        if let Some(v) = obj.get("security_groups") {
            p.security_groups = resolve_groups(db, &auth, &p.project_id, Some(v))?;
        }
        if let Some(b) = get_bool(&obj, "port_security_enabled")? {
            p.port_security_enabled = b;
        }
        if !p.port_security_enabled && !p.security_groups.is_empty() {
            return Err(port_security_conflict());
        }
        Ok(db.save_port(&p)?)
    })?;
    push_security_groups(&state, &auth).await;
    Ok(Json(json!({"port": port_json(&p, auth.is_admin())})))
}

pub(super) async fn delete_port(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.db.tx(|db| -> ApiResult<()> {
        let p = load_port(db, &auth, &id)?;
        if !auth.owns(&p.project_id) {
            return Err(policy("delete_port"));
        }
        super::routers::check_port_deletable(&p)?;
        Ok(db.delete_port(&id)?)
    })?;
    push_security_groups(&state, &auth).await;
    Ok(StatusCode::NO_CONTENT)
}
