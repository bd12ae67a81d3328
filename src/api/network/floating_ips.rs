//! Floating IPs (neutron's `router` extension): an address of an external network, mapped
//! by a router to a port's fixed IP. Created, associated and disassociated (PUT with
//! `port_id`), deleted; each change is pushed to the router host.

use super::routers::push_routers;
use super::*;
use crate::db::network::Association;
use crate::network::routers::FloatingIp;
use crate::policy::Action;

pub(super) fn floating_ip_json(f: &FloatingIp) -> Value {
    json!({
        "id": f.id,
        "floating_ip_address": f.floating_ip_address.to_string(),
        "floating_network_id": f.floating_network_id,
        "router_id": f.router_id,
        "port_id": f.port_id,
        "fixed_ip_address": f.fixed_ip_address.map(|ip| ip.to_string()),
        "status": f.status(),
        "project_id": f.project_id,
        "tenant_id": f.project_id,
        "description": f.description,
        "tags": [],
        "created_at": f.created_at,
        "updated_at": f.updated_at,
        "revision_number": f.revision_number,
    })
}

const FIP_ATTRS: &[&str] = &[
    "floating_network_id",
    "floating_ip_address",
    "subnet_id",
    "port_id",
    "fixed_ip_address",
    "description",
    "project_id",
    "tenant_id",
];

fn fip_not_found(id: &str) -> ApiError {
    NetworkError::FloatingIpNotFound(id.to_string()).into()
}

fn load_fip(db: &Db, auth: &Auth, id: &str) -> ApiResult<FloatingIp> {
    db.floating_ip_by_id(id)?.filter(|f| auth.owns(&f.project_id)).ok_or_else(|| fip_not_found(id))
}

/// The association a body asks for: `None` when `port_id` is absent, `Some(None)` for a
/// disassociation. The port must be one the caller sees and of the floating IP's project.
fn association(
    db: &Db,
    auth: &Auth,
    obj: &Map<String, Value>,
    project_id: &str,
) -> ApiResult<Option<Option<Association>>> {
    let fixed_ip = match obj.get("fixed_ip_address") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_ipv4("fixed_ip_address", v)?),
    };
    match obj.get("port_id") {
        None if fixed_ip.is_some() => Err(ApiError::bad_request(
            "Bad floatingip request: fixed_ip_address cannot be specified without a port_id.",
        )
        .with_kind("BadRequest")),
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(port_id)) => {
            let port = load_port(db, auth, port_id)?;
            if port.project_id != project_id {
                return Err(NetworkError::BadRequest {
                    resource: "floatingip",
                    msg: format!(
                        "Cannot create floating IP and bind it to Port {port_id}, since that port is owned by a \
                         different tenant"
                    ),
                }
                .into());
            }
            Ok(Some(Some(Association { port_id: port.id, fixed_ip })))
        }
        Some(v) => Err(invalid_attr("port_id", format!("'{v}' is not a valid UUID"))),
    }
}

pub(super) async fn list_floating_ips(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let fips = state.db.with(|db| db.floating_ips())?;
    let items = fips.iter().filter(|f| auth.owns(&f.project_id)).map(floating_ip_json).collect();
    let url = collection_url(&headers, &state, "floatingips");
    Ok(Json(list_body("floatingips", items, &pairs, &url, "FloatingIPNotFound")?))
}

pub(super) async fn show_floating_ip(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let f = state.db.with(|db| load_fip(db, &auth, &id))?;
    Ok(Json(json!({"floatingip": select_fields(floating_ip_json(&f), &pairs)})))
}

pub(super) async fn create_floating_ip(State(state): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let obj = resource_body(&body, "floatingip", FIP_ATTRS)?;
    let project_id = owner_project(&auth, &obj)?;
    let network_id = get_str(&obj, "floating_network_id", 255)?.ok_or_else(|| {
        ApiError::bad_request("Failed to parse request. Required attribute 'floating_network_id' not specified")
            .with_kind("HTTPBadRequest")
    })?;
    let address = match obj.get("floating_ip_address") {
        None | Some(Value::Null) => None,
        Some(v) => {
            auth.authorize(Action::NetworkFloatingIpAddress, &crate::policy::Target::default())?;
            Some(parse_ipv4("floating_ip_address", v)?)
        }
    };
    let subnet_id = get_str(&obj, "subnet_id", 255)?;
    let description = get_text(&obj, "description", 255)?.unwrap_or_default();
    let f = state.db.tx(|db| -> ApiResult<FloatingIp> {
        // An external network the project cannot see does not exist for it.
        load_network(db, &auth, &network_id)?;
        let assoc = association(db, &auth, &obj, &project_id)?.flatten();
        quotas::ensure_room(db, &project_id, "floatingip")?;
        Ok(db.create_floating_ip(
            &project_id,
            &network_id,
            address,
            subnet_id.as_deref(),
            &description,
            assoc.as_ref(),
        )?)
    })?;
    tracing::info!(floatingip_id = %f.id, address = %f.floating_ip_address, "floating IP created");
    push_routers(&state, &auth).await;
    Ok((StatusCode::CREATED, Json(json!({"floatingip": floating_ip_json(&f)}))).into_response())
}

pub(super) async fn update_floating_ip(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let obj = resource_body(&body, "floatingip", &["port_id", "fixed_ip_address", "description"])?;
    let description = get_text(&obj, "description", 255)?;
    let f = state.db.tx(|db| -> ApiResult<FloatingIp> {
        let f = load_fip(db, &auth, &id)?;
        match association(db, &auth, &obj, &f.project_id)? {
            Some(assoc) => Ok(db.associate_floating_ip(&id, assoc.as_ref(), description.as_deref())?),
            None => match description {
                Some(d) => Ok(db.describe_floating_ip(&id, &d)?),
                None => Ok(f),
            },
        }
    })?;
    push_routers(&state, &auth).await;
    Ok(Json(json!({"floatingip": floating_ip_json(&f)})))
}

pub(super) async fn delete_floating_ip(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.db.tx(|db| -> ApiResult<()> {
        load_fip(db, &auth, &id)?;
        Ok(db.delete_floating_ip(&id)?)
    })?;
    tracing::info!(floatingip_id = %id, "floating IP deleted");
    push_routers(&state, &auth).await;
    Ok(StatusCode::NO_CONTENT)
}
