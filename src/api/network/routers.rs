//! Routers (neutron's `router`, `extraroute` and `ext-gw-mode` extensions): CRUD, the
//! external gateway with SNAT, static routes, and interfaces added and removed by subnet or
//! by port. A change is pushed to the host that plumbs routers (`push_routers`).

use super::*;
use crate::db::network::GatewayRequest;
use crate::network::routers::{Router, OWNER_FLOATINGIP, OWNER_ROUTER_GATEWAY, OWNER_ROUTER_INTERFACE};
use crate::policy::Action;

pub(super) fn router_json(r: &Router) -> Value {
    let gateway = r.gateway.as_ref().map(|g| {
        json!({
            "network_id": g.network_id,
            "enable_snat": g.enable_snat,
            "external_fixed_ips": g.external_fixed_ips.iter()
                .map(|f| json!({"subnet_id": f.subnet_id, "ip_address": f.ip_address.to_string()}))
                .collect::<Vec<_>>(),
        })
    });
    json!({
        "id": r.id,
        "name": r.name,
        "description": r.description,
        "status": r.status,
        "admin_state_up": r.admin_state_up,
        "external_gateway_info": gateway,
        "routes": r.routes.iter().map(|h| json!({"destination": h.destination, "nexthop": h.nexthop})).collect::<Vec<_>>(),
        "project_id": r.project_id,
        "tenant_id": r.project_id,
        "availability_zones": ["nova"],
        "availability_zone_hints": [],
        "tags": [],
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "revision_number": r.revision_number,
    })
}

const ROUTER_ATTRS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "external_gateway_info",
    "routes",
    "project_id",
    "tenant_id",
    "availability_zone_hints",
];

fn router_not_found(id: &str) -> ApiError {
    NetworkError::RouterNotFound(id.to_string()).into()
}

fn load_router(db: &Db, auth: &Auth, id: &str) -> ApiResult<Router> {
    db.router_by_id(id)?.filter(|r| auth.owns(&r.project_id)).ok_or_else(|| router_not_found(id))
}

/// `external_gateway_info` of a body: `None` when absent, `Some(None)` to clear it. The
/// external network must be one the caller sees (404 otherwise); SNAT and chosen addresses
/// are the admin's (neutron's `*_router:external_gateway_info:*` rules).
fn gateway_request(
    db: &Db,
    auth: &Auth,
    obj: &Map<String, Value>,
    updating: bool,
) -> ApiResult<Option<Option<GatewayRequest>>> {
    let Some(v) = obj.get("external_gateway_info") else { return Ok(None) };
    let info = match v {
        Value::Null => return Ok(Some(None)),
        Value::Object(m) if m.is_empty() => return Ok(Some(None)),
        Value::Object(m) => m,
        _ => return Err(invalid_attr("external_gateway_info", format!("'{v}' is not a dictionary"))),
    };
    if let Some(k) = info.keys().find(|k| !matches!(k.as_str(), "network_id" | "enable_snat" | "external_fixed_ips")) {
        return Err(invalid_attr("external_gateway_info", format!("Unexpected keys supplied: {k}")));
    }
    let network_id = get_str(info, "network_id", 255)?.ok_or_else(|| {
        invalid_attr("external_gateway_info", "Validation of dictionary's keys failed. Expected keys: {'network_id'}")
    })?;
    let target = crate::policy::Target::default();
    let snat = get_bool(info, "enable_snat")?;
    if snat.is_some() {
        auth.authorize(
            if updating { Action::NetworkUpdateRouterSnat } else { Action::NetworkCreateRouterSnat },
            &target,
        )?;
    }
    let fixed_ips = info.get("external_fixed_ips").map(parse_fixed_ips).transpose()?.unwrap_or_default();
    if !fixed_ips.is_empty() {
        auth.authorize(
            if updating { Action::NetworkUpdateRouterFixedIps } else { Action::NetworkCreateRouterFixedIps },
            &target,
        )?;
    }
    load_network(db, auth, &network_id)?;
    Ok(Some(Some(GatewayRequest { network_id, enable_snat: snat.unwrap_or(true), fixed_ips })))
}

/// extraroute's routes: each a CIDR and a next hop on one of the router's subnets.
fn parse_router_routes(db: &Db, router_id: Option<&str>, v: &Value) -> ApiResult<Vec<HostRoute>> {
    let routes = parse_routes(v).map_err(|_| {
        ApiError::bad_request(format!(
            "Invalid format for routes: {v}, the routes are not a list of destination and nexthop"
        ))
        .with_kind("InvalidRoutes")
    })?;
    let subnets: Vec<Subnet> = match router_id {
        Some(id) => db
            .router_interfaces(id)?
            .iter()
            .flat_map(|p| p.fixed_ips.clone())
            .filter_map(|f| db.subnet_by_id(&f.subnet_id).ok().flatten())
            .collect(),
        None => Vec::new(),
    };
    for r in &routes {
        let hop: Ipv4Addr = r.nexthop.parse().map_err(|_| invalid_attr("routes", "bad nexthop"))?;
        if !subnets.iter().any(|s| s.cidr.contains(hop)) {
            return Err(ApiError::bad_request(format!(
                "Invalid format for routes: [{{'destination': '{}', 'nexthop': '{}'}}], the nexthop is not connected \
                 with router",
                r.destination, r.nexthop
            ))
            .with_kind("InvalidRoutes"));
        }
    }
    Ok(routes)
}

pub(super) async fn list_routers(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let routers = state.db.with(|db| db.routers())?;
    let items = routers.iter().filter(|r| auth.owns(&r.project_id)).map(router_json).collect();
    let url = collection_url(&headers, &state, "routers");
    Ok(Json(list_body("routers", items, &pairs, &url, "RouterNotFound")?))
}

pub(super) async fn show_router(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let r = state.db.with(|db| load_router(db, &auth, &id))?;
    Ok(Json(json!({"router": select_fields(router_json(&r), &pairs)})))
}

pub(super) async fn create_router(State(state): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let obj = resource_body(&body, "router", ROUTER_ATTRS)?;
    let mut r = Router::new(owner_project(&auth, &obj)?);
    r.name = get_name(&obj, "name", 255)?.unwrap_or_default();
    r.description = get_text(&obj, "description", 255)?.unwrap_or_default();
    r.admin_state_up = get_bool(&obj, "admin_state_up")?.unwrap_or(true);
    let r = state.db.tx(|db| -> ApiResult<Router> {
        if let Some(v) = obj.get("routes") {
            // A new router has no interface, so no next hop is connected yet.
            r.routes = parse_router_routes(db, None, v)?;
        }
        let gateway = gateway_request(db, &auth, &obj, false)?.flatten();
        quotas::ensure_room(db, &r.project_id, "router")?;
        Ok(db.create_router(&r, gateway.as_ref())?)
    })?;
    tracing::info!(router_id = %r.id, name = %r.name, "router created");
    push_routers(&state, &auth).await;
    Ok((StatusCode::CREATED, Json(json!({"router": router_json(&r)}))).into_response())
}

pub(super) async fn update_router(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let mut allowed = ROUTER_ATTRS.to_vec();
    allowed.extend(["id", "status"]);
    let obj = resource_body(&body, "router", &allowed)?;
    read_only(&obj, &["id", "project_id", "tenant_id", "status"])?;
    let r = state.db.tx(|db| -> ApiResult<Router> {
        let mut r = load_router(db, &auth, &id)?;
        if let Some(n) = get_name(&obj, "name", 255)? {
            r.name = n;
        }
        if let Some(d) = get_text(&obj, "description", 255)? {
            r.description = d;
        }
        if let Some(b) = get_bool(&obj, "admin_state_up")? {
            r.admin_state_up = b;
        }
        if let Some(v) = obj.get("routes") {
            r.routes = if v.is_null() { Vec::new() } else { parse_router_routes(db, Some(&id), v)? };
        }
        db.save_router(&r)?;
        if let Some(gateway) = gateway_request(db, &auth, &obj, true)? {
            db.set_router_gateway(&id, gateway.as_ref())?;
        }
        load_router(db, &auth, &id)
    })?;
    push_routers(&state, &auth).await;
    Ok(Json(json!({"router": router_json(&r)})))
}

pub(super) async fn delete_router(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.db.tx(|db| -> ApiResult<()> {
        load_router(db, &auth, &id)?;
        Ok(db.delete_router(&id)?)
    })?;
    tracing::info!(router_id = %id, "router deleted");
    push_routers(&state, &auth).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `add_router_interface` / `remove_router_interface`: a subnet or a port.
fn interface_body(body: &Bytes) -> ApiResult<(Option<String>, Option<String>)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::bad_request("Malformed request body").with_kind("HTTPBadRequest"))?;
    let Value::Object(obj) = v else {
        return Err(ApiError::bad_request("Malformed request body").with_kind("HTTPBadRequest"));
    };
    Ok((get_str(&obj, "subnet_id", 255)?, get_str(&obj, "port_id", 255)?))
}

fn interface_json(r: &Router, port: &Port) -> Value {
    let subnets: Vec<&str> = port.fixed_ips.iter().map(|f| f.subnet_id.as_str()).collect();
    json!({
        "id": r.id,
        "tenant_id": r.project_id,
        "project_id": r.project_id,
        "port_id": port.id,
        "network_id": port.network_id,
        "subnet_id": subnets.first(),
        "subnet_ids": subnets,
    })
}

pub(super) async fn add_router_interface(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let (subnet_id, port_id) = interface_body(&body)?;
    let (r, port) = state.db.tx(|db| -> ApiResult<(Router, Port)> {
        let r = load_router(db, &auth, &id)?;
        let port = match (subnet_id.as_deref(), port_id.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(NetworkError::BadRequest {
                    resource: "router",
                    msg: "Cannot specify both subnet-id and port-id".into(),
                }
                .into())
            }
            (None, None) => {
                return Err(NetworkError::BadRequest {
                    resource: "router",
                    msg: "Either subnet_id or port_id must be specified".into(),
                }
                .into())
            }
            (Some(sid), None) => {
                load_subnet(db, &auth, sid)?;
                db.add_router_interface_subnet(&id, sid, &r.project_id)?
            }
            (None, Some(pid)) => {
                let p = load_port(db, &auth, pid)?;
                if p.project_id != r.project_id && !auth.is_admin() {
                    return Err(port_not_found(pid));
                }
                db.add_router_interface_port(&id, pid)?
            }
        };
        Ok((r, port))
    })?;
    tracing::info!(router_id = %id, port_id = %port.id, "router interface added");
    push_routers(&state, &auth).await;
    Ok(Json(interface_json(&r, &port)))
}

pub(super) async fn remove_router_interface(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let (subnet_id, port_id) = interface_body(&body)?;
    let (r, port) = state.db.tx(|db| -> ApiResult<(Router, Port)> {
        let r = load_router(db, &auth, &id)?;
        let port = db.remove_router_interface(&id, subnet_id.as_deref(), port_id.as_deref())?;
        Ok((r, port))
    })?;
    tracing::info!(router_id = %id, port_id = %port.id, "router interface removed");
    push_routers(&state, &auth).await;
    Ok(Json(interface_json(&r, &port)))
}

/// neutron refuses to delete a router's or a floating IP's port through the port API.
pub(super) fn check_port_deletable(p: &Port) -> ApiResult<()> {
    if [OWNER_ROUTER_INTERFACE, OWNER_ROUTER_GATEWAY, OWNER_FLOATINGIP].contains(&p.device_owner.as_str()) {
        return Err(NetworkError::ServicePortInUse {
            port_id: p.id.clone(),
            reason: format!("has device owner {}", p.device_owner),
        }
        .into());
    }
    Ok(())
}

/// Sends the router host its routers again (the L3 agent's notification). A host that
/// misses it gets them at its next start; the request that caused it does not fail.
pub(crate) async fn push_routers(state: &AppState, auth: &Auth) {
    crate::conductor::routers::push_routers(&state.db, &state.compute_api(), &state.config, &auth.context).await;
}
