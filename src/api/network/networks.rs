//! Networks: list, show, create, update, delete, with neutron's shared, external and provider attributes.

use super::*;

pub(super) fn network_json(n: &Network, admin: bool) -> Value {
    let mut v = json!({
        "id": n.id,
        "name": n.name,
        "description": n.description,
        "status": n.status,
        "admin_state_up": n.admin_state_up,
        "shared": n.shared,
        "subnets": n.subnets,
        "project_id": n.project_id,
        "tenant_id": n.project_id,
        "mtu": n.mtu,
        "router:external": n.external,
        "port_security_enabled": n.port_security_enabled,
        "availability_zones": ["nova"],
        "availability_zone_hints": [],
        "tags": [],
        "created_at": n.created_at,
        "updated_at": n.updated_at,
        "revision_number": n.revision_number,
    });
    if admin {
        provider::provider_json(&mut v, n);
    }
    v
}

pub(super) const NETWORK_ATTRS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "shared",
    "router:external",
    "mtu",
    "port_security_enabled",
    "project_id",
    "tenant_id",
    "availability_zone_hints",
    "provider:network_type",
    "provider:physical_network",
    "provider:segmentation_id",
];

/// Applies the changeable attributes of `obj` to `n`, checking admin-only ones.
pub(super) fn apply_network_attrs(
    auth: &Auth,
    n: &mut Network,
    obj: &Map<String, Value>,
    creating: bool,
) -> ApiResult<()> {
    if let Some(name) = get_name(obj, "name", 255)? {
        n.name = name;
    }
    if let Some(d) = get_text(obj, "description", 255)? {
        n.description = d;
    }
    if let Some(b) = get_bool(obj, "admin_state_up")? {
        n.admin_state_up = b;
    }
    if let Some(shared) = get_bool(obj, "shared")? {
        if !auth.is_admin() && shared != n.shared {
            return Err(policy(if creating { "create_network:shared" } else { "update_network:shared" }));
        }
        n.shared = shared;
    }
    if let Some(ext) = get_bool(obj, "router:external")? {
        if ext != n.external {
            use crate::policy::Action;
            let action = if creating { Action::NetworkCreateExternal } else { Action::NetworkUpdateExternal };
            auth.authorize(action, &crate::policy::Target { project_id: Some(&n.project_id), ..Default::default() })?;
        }
        n.external = ext;
    }
    if let Some(mtu) = get_int(obj, "mtu")? {
        if !(68..=9000).contains(&mtu) {
            return Err(invalid_attr("mtu", format!("'{mtu}' is not in range 68 through 9000")));
        }
        n.mtu = mtu;
    }
    if let Some(b) = get_bool(obj, "port_security_enabled")? {
        n.port_security_enabled = b;
    }
    if let Some(hints) = obj.get("availability_zone_hints") {
        let ok = hints.as_array().is_some_and(|a| a.iter().all(|z| z.as_str() == Some("nova")));
        if !ok {
            return Err(ApiError::not_found(
                "AvailabilityZone of resource network could not be found; novabox has only 'nova'.",
            )
            .with_kind("AvailabilityZoneNotFound"));
        }
    }
    // provider:* are checked by the create and update handlers (`provider.rs`).
    Ok(())
}

pub(super) async fn list_networks(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let nets = state.db.with(|db| db.networks())?;
    let admin = provider::sees_provider(&auth);
    let items = nets.iter().filter(|n| network_visible(&auth, n)).map(|n| network_json(n, admin)).collect();
    let url = collection_url(&headers, &state, "networks");
    Ok(Json(list_body("networks", items, &pairs, &url, "NetworkNotFound")?))
}

pub(super) async fn show_network(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let n = state.db.with(|db| load_network(db, &auth, &id))?;
    Ok(Json(json!({"network": select_fields(network_json(&n, provider::sees_provider(&auth)), &pairs)})))
}

pub(super) async fn create_network(State(state): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let obj = resource_body(&body, "network", NETWORK_ATTRS)?;
    let mut n = Network::new("", owner_project(&auth, &obj)?);
    apply_network_attrs(&auth, &mut n, &obj, true)?;
    n.provider = provider::for_create(&state.config, &auth, &obj)?;
    let n = state.db.tx(|db| -> ApiResult<Network> {
        quotas::ensure_room(db, &n.project_id, "network")?;
        Ok(db.create_network(&n)?)
    })?;
    tracing::info!(network_id = %n.id, name = %n.name, "network created");
    Ok((StatusCode::CREATED, Json(json!({"network": network_json(&n, provider::sees_provider(&auth))})))
        .into_response())
}

pub(super) async fn update_network(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let mut allowed = NETWORK_ATTRS.to_vec();
    allowed.extend(["id", "status", "subnets"]);
    let obj = resource_body(&body, "network", &allowed)?;
    read_only(&obj, &["id", "project_id", "tenant_id", "status", "subnets"])?;
    let n = state.db.tx(|db| -> ApiResult<Network> {
        let mut n = load_network(db, &auth, &id)?;
        if !auth.owns(&n.project_id) {
            return Err(policy("update_network"));
        }
        apply_network_attrs(&auth, &mut n, &obj, false)?;
        provider::check_update(&auth, &n, &obj)?;
        Ok(db.save_network(&n)?)
    })?;
    Ok(Json(json!({"network": network_json(&n, provider::sees_provider(&auth))})))
}

pub(super) async fn delete_network(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.db.tx(|db| -> ApiResult<()> {
        let n = load_network(db, &auth, &id)?;
        if !auth.owns(&n.project_id) {
            return Err(policy("delete_network"));
        }
        Ok(db.delete_network(&id)?)
    })?;
    tracing::info!(network_id = %id, "network deleted");
    Ok(StatusCode::NO_CONTENT)
}
