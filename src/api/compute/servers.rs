//! Servers: each handler extracts a typed request, calls the compute API
//! (`crate::compute::api`) and renders nova's view for the microversion; list and show in
//! nova's shapes.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use serde_json::{json, Value};
use sha2::{Digest, Sha224};

use super::microversion::Microversion;
use super::{links, parse_body};
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::{base_url, AppState};
pub(crate) use crate::compute::api::{view_data, ViewData};
use crate::compute::api::{Action, ComputeApi, CreateRequest, Outcome, UpdateRequest};
use crate::compute::states;
use crate::db::instances::Instance;

/// nova's launched_at format: microseconds and no zone suffix (gophercloud parses it so).
fn usage_time(ts: &Option<String>) -> Value {
    match ts {
        Some(t) => json!(format!("{}.000000", t.trim_end_matches('Z'))),
        None => Value::Null,
    }
}

/// nova stores `accessIPv6` in its shortest form (its `IPAddress` column type), so it shows
/// `::babe:dc0c:1602` for `0000:0000:0000:0000:0000:babe:220.12.22.2`; tempest compares.
fn shortened_ipv6(given: &str) -> String {
    given.parse::<std::net::Ipv6Addr>().map(|a| a.to_string()).unwrap_or_else(|_| given.to_string())
}

pub(super) fn server_view(inst: &Instance, d: &ViewData, base: &str, v: Microversion, auth: &Auth) -> Value {
    let st = states::status(inst.vm_state, inst.task_state);
    let host_id = match &inst.host {
        Some(h) => hex::encode(Sha224::digest(format!("{}{}", inst.project_id, h).as_bytes())),
        None => String::new(),
    };
    let image = match &inst.image_ref {
        Some(id) if !id.is_empty() => {
            json!({"id": id, "links": [{"rel": "bookmark", "href": format!("{base}/compute/images/{id}")}]})
        }
        _ => json!(""),
    };
    let flavor = if v.at_least(47) {
        let f = &inst.flavor;
        json!({
            "vcpus": f.vcpus, "ram": f.memory_mb, "disk": f.root_gb, "ephemeral": f.ephemeral_gb,
            "swap": f.swap, "original_name": f.name, "extra_specs": f.extra_specs,
        })
    } else {
        json!({"id": inst.flavor.flavorid, "links": [{"rel": "bookmark", "href": format!("{base}/compute/flavors/{}", inst.flavor.flavorid)}]})
    };
    let mut o = json!({
        "id": inst.uuid,
        "name": inst.display_name,
        "status": st,
        "tenant_id": inst.project_id,
        "user_id": inst.user_id,
        "metadata": inst.metadata,
        "hostId": host_id,
        "image": image,
        "flavor": flavor,
        "created": inst.created_at,
        "updated": inst.updated_at.clone().unwrap_or_else(|| inst.created_at.clone()),
        "addresses": d.addresses,
        "accessIPv4": inst.access_ip_v4.clone().unwrap_or_default(),
        "accessIPv6": inst.access_ip_v6.as_deref().map(shortened_ipv6).unwrap_or_default(),
        "links": links(base, "servers", &inst.uuid),
        "OS-DCF:diskConfig": if inst.auto_disk_config { "AUTO" } else { "MANUAL" },
        "OS-EXT-AZ:availability_zone": inst.availability_zone.clone().unwrap_or_default(),
        "config_drive": inst.config_drive,
        "key_name": inst.key_name,
        "OS-SRV-USG:launched_at": usage_time(&inst.launched_at),
        "OS-SRV-USG:terminated_at": usage_time(&inst.terminated_at),
        "OS-EXT-STS:task_state": inst.task_state,
        "OS-EXT-STS:vm_state": inst.vm_state,
        "OS-EXT-STS:power_state": inst.power_state,
        "os-extended-volumes:volumes_attached": d.volumes.iter().map(|id| {
            if v.at_least(3) { json!({"id": id, "delete_on_termination": false}) } else { json!({"id": id}) }
        }).collect::<Vec<_>>(),
    });
    if let Some(progress) = states::progress(inst.vm_state, inst.task_state, inst.progress) {
        o["progress"] = json!(progress);
    }
    if !d.security_groups.is_empty() {
        o["security_groups"] = d.security_groups.iter().map(|n| json!({"name": n})).collect();
    }
    if auth.is_admin() {
        o["OS-EXT-SRV-ATTR:host"] = json!(inst.host);
        o["OS-EXT-SRV-ATTR:hypervisor_hostname"] = json!(inst.node);
        o["OS-EXT-SRV-ATTR:instance_name"] = json!(format!("instance-{}", &inst.uuid[..8]));
        if v.at_least(3) {
            o["OS-EXT-SRV-ATTR:reservation_id"] =
                json!(inst.reservation_id.clone().unwrap_or_else(|| format!("r-{}", &inst.uuid[..8])));
            o["OS-EXT-SRV-ATTR:launch_index"] = json!(0);
            o["OS-EXT-SRV-ATTR:hostname"] = json!(inst.hostname);
            o["OS-EXT-SRV-ATTR:kernel_id"] = json!(inst.kernel_id.clone().unwrap_or_default());
            o["OS-EXT-SRV-ATTR:ramdisk_id"] = json!(inst.ramdisk_id.clone().unwrap_or_default());
            o["OS-EXT-SRV-ATTR:root_device_name"] = json!("/dev/vda");
            o["OS-EXT-SRV-ATTR:user_data"] = json!(inst.user_data);
        }
        if v.at_least(16) {
            o["host_status"] = json!(match d.host_up {
                Some(true) => "UP",
                Some(false) => "DOWN",
                None => "",
            });
        }
    }
    if v.at_least(9) {
        o["locked"] = json!(inst.locked);
    }
    if v.at_least(19) {
        o["description"] = json!(inst.display_description);
    }
    if v.at_least(26) {
        o["tags"] = json!(d.tags);
    }
    if v.at_least(63) {
        o["trusted_image_certificates"] = Value::Null;
    }
    if v.at_least(73) {
        o["locked_reason"] = json!(inst.locked_reason);
    }
    if let Some(f) = &d.fault {
        let mut fault = json!({"code": f.code, "created": f.created_at, "message": f.message});
        if auth.is_admin() {
            fault["details"] = json!(f.details);
        }
        o["fault"] = fault;
    }
    o
}

/// The instance, when the caller may see it. Another project's server is "not found".
pub(super) fn find(state: &AppState, auth: &Auth, id: &str) -> ApiResult<Instance> {
    Ok(ComputeApi::new(state).get(auth, id)?)
}

/// The compute host of an instance when its service is alive (for volume attachments).
pub(crate) fn compute_up_host(state: &AppState, inst: &Instance) -> ApiResult<Option<String>> {
    Ok(ComputeApi::new(state).live_host(inst)?)
}

pub async fn show(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (inst, d) = ComputeApi::new(&state).show(&auth, &id)?;
    let mut server = server_view(&inst, &d, &base_url(&headers, &state.config), v, &auth);
    if v.at_least(71) {
        server["server_groups"] = server_groups_of(&state, &inst.uuid)?;
    }
    Ok(Json(json!({ "server": server })))
}

#[tracing::instrument(name = "create_server", skip_all)]
pub async fn create(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let parsing = tracing::info_span!("parse_request").entered();
    let (body, _) = parse_body::<Value>(body)?;
    let req = CreateRequest::parse(&body, v)?;
    drop(parsing);
    let instances = ComputeApi::new(&state).create(&auth, &req).await?;
    let first = instances.first().ok_or_else(|| ApiError::internal("No server was created."))?;
    if req.return_reservation_id {
        let id = first.reservation_id.clone().unwrap_or_else(|| format!("r-{}", &first.uuid[..8]));
        let reservation = json!({ "reservation_id": id });
        return Ok((StatusCode::ACCEPTED, Json(reservation)).into_response());
    }
    let base = base_url(&headers, &state.config);
    let server = json!({
        "id": first.uuid,
        "links": links(&base, "servers", &first.uuid),
        "OS-DCF:diskConfig": if first.auto_disk_config { "AUTO" } else { "MANUAL" },
        "security_groups": req.security_groups.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
        "adminPass": req.admin_pass.clone().unwrap_or_else(|| crate::secrets::random_token(12)),
    });
    let location = format!("{base}/compute/v2.1/servers/{}", first.uuid);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(json!({ "server": server }))).into_response())
}

pub async fn update(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let (body, _) = parse_body::<Value>(body)?;
    let req = UpdateRequest::parse(&body, v)?;
    let (inst, d) = ComputeApi::new(&state).update(&auth, &id, &req)?;
    let mut server = update_view(server_view(&inst, &d, &base_url(&headers, &state.config), v, &auth), v);
    if v.at_least(71) {
        server["server_groups"] = server_groups_of(&state, &inst.uuid)?;
    }
    Ok(Json(json!({ "server": server })))
}

/// What nova's `PUT /servers/{id}` and rebuild answer below 2.75: the server without the extension
/// attributes GET shows (availability zone, config drive, key, usage, extended status and
/// server attributes, volumes, security groups, host status) and addresses without their type
/// and MAC. Tempest's `update_server` schema allows no other key; from 2.75 PUT shows all.
fn update_view(mut server: Value, v: Microversion) -> Value {
    if v.at_least(75) {
        return server;
    }
    if let Some(o) = server.as_object_mut() {
        o.retain(|k, _| {
            !(k.starts_with("OS-EXT-AZ:")
                || k.starts_with("OS-SRV-USG:")
                || k.starts_with("OS-EXT-STS:")
                || k.starts_with("OS-EXT-SRV-ATTR:")
                || matches!(
                    k.as_str(),
                    "config_drive"
                        | "key_name"
                        | "os-extended-volumes:volumes_attached"
                        | "security_groups"
                        | "host_status"
                ))
        });
    }
    if let Some(nets) = server["addresses"].as_object_mut() {
        for addrs in nets.values_mut() {
            for a in addrs.as_array_mut().into_iter().flatten() {
                if let Some(a) = a.as_object_mut() {
                    a.remove("OS-EXT-IPS:type");
                    a.remove("OS-EXT-IPS-MAC:mac_addr");
                }
            }
        }
    }
    server
}

/// 2.71's `server_groups` of a server: the uuid of its group, or nothing.
fn server_groups_of(state: &AppState, uuid: &str) -> ApiResult<Value> {
    Ok(json!(state.db.with(|db| db.server_group_of(uuid))?.into_iter().collect::<Vec<_>>()))
}

pub async fn delete(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    ComputeApi::new(&state).delete(&auth, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn action(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let (body, _) = parse_body::<Value>(body)?;
    // Issue 22: the console actions below 2.6 answer a URL of novabox's console proxy.
    if let Some(answer) = super::remote_consoles::legacy_action(&state, &headers, &auth, v, &id, &body).await? {
        return Ok(answer);
    }
    let action = Action::parse(&body, v)?;
    Ok(match ComputeApi::new(&state).action(&auth, &id, action).await? {
        Outcome::Accepted => StatusCode::ACCEPTED.into_response(),
        Outcome::ConsoleOutput(output) => Json(json!({ "output": output })).into_response(),
        // Issue 16: nova answers a rebuild with the server (REBUILD) and its admin password,
        // in the same view as PUT's (all of GET's keys only from 2.75; groups from 2.71).
        Outcome::Rebuilt(inst, admin_pass) => {
            let d = ComputeApi::new(&state).view(&inst)?;
            let mut server = update_view(server_view(&inst, &d, &base_url(&headers, &state.config), v, &auth), v);
            // The rebuilt key (2.54) and user data (2.57) are part of rebuild's answer.
            if v.at_least(54) {
                server["key_name"] = json!(inst.key_name);
            }
            if v.at_least(57) {
                server["user_data"] = json!(inst.user_data);
            }
            // nova's rebuild view leaves the admin's `OS-EXT-SRV-ATTR:user_data` out (2.75's
            // full view included): `user_data` above is the rebuilt one.
            if let Some(o) = server.as_object_mut() {
                o.remove("OS-EXT-SRV-ATTR:user_data");
            }
            if v.at_least(71) {
                server["server_groups"] = server_groups_of(&state, &inst.uuid)?;
            }
            server["adminPass"] = json!(admin_pass);
            (StatusCode::ACCEPTED, Json(json!({ "server": server }))).into_response()
        }
        // Before 2.45 the image's URL in `Location` (nova's `generate_image_url`: the image
        // endpoint, then `images/<id>`); from 2.45 its id in the body.
        Outcome::ImageCreated(image_id) if v.at_least(45) => {
            (StatusCode::ACCEPTED, Json(json!({ "image_id": image_id }))).into_response()
        }
        Outcome::ImageCreated(image_id) => {
            let location = format!("{}/image/images/{image_id}", base_url(&headers, &state.config));
            (StatusCode::ACCEPTED, [(header::LOCATION, location)]).into_response()
        }
    })
}

pub async fn ips(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let addresses = ComputeApi::new(&state).addresses(&auth, &id)?;
    Ok(Json(json!({ "addresses": addresses })))
}

/// GET /servers/{id}/ips/{network}: the server's addresses on one network, by its name.
pub async fn ips_on_network(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, network)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let addresses = ComputeApi::new(&state).addresses(&auth, &id)?;
    let on = addresses
        .get(&network)
        .cloned()
        .ok_or_else(|| ApiError::not_found("Instance is not a member of specified network"))?;
    Ok(Json(json!({ network: on })))
}
