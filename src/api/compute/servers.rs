//! Servers: create (validate, write the instance, cast to the scheduler), list and show in
//! nova's shapes per microversion, update, delete, and the power actions.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha224};

use super::microversion::Microversion;
use super::{links, parse_body, validation};
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::{base_url, AppState};
use crate::compute::states::{self, ServerAction, TaskState, VmState};
use crate::db::instances::{FlavorSnapshot, Instance, InstanceUpdate, NewBlockDevice, NewInstance, UpdateError};
use crate::db::services::{is_up, Service};
use crate::db::Db;
use crate::rpcapi::{RequestSpec, RequestedNetwork, RequestedNetworks, SchedulerApi};

/// nova's launched_at format: microseconds and no zone suffix (gophercloud parses it so).
fn usage_time(ts: &Option<String>) -> Value {
    match ts {
        Some(t) => json!(format!("{}.000000", t.trim_end_matches('Z'))),
        None => Value::Null,
    }
}

/// Everything the server view needs besides the instance row.
pub(super) struct ViewData {
    addresses: Value,
    security_groups: Vec<String>,
    fault: Option<crate::db::instances::Fault>,
    host_up: Option<bool>,
    volumes: Vec<String>,
}

/// True when the compute service of `host` is among `services` and alive.
fn compute_up(state: &AppState, services: &[Service], host: &str) -> bool {
    services.iter().any(|s| {
        s.host == host && s.binary == crate::compute::BINARY && is_up(s, state.config.compute.service_down_secs)
    })
}

/// `services` is read once by the caller, not once per server of a listing.
pub(super) fn view_data(
    state: &AppState,
    db: &Db,
    services: &[Service],
    inst: &Instance,
) -> crate::db::Result<ViewData> {
    let host_up = inst.host.as_deref().map(|h| compute_up(state, services, h));
    let volumes = db
        .block_devices(&inst.uuid)?
        .into_iter()
        .filter(|b| b.destination_type == "volume")
        .filter_map(|b| b.volume_id)
        .collect();
    Ok(ViewData {
        addresses: crate::conductor::addresses(db, &inst.uuid)?,
        security_groups: db.instance_security_group_names(&inst.uuid)?,
        fault: if matches!(inst.vm_state, VmState::Error | VmState::Deleted) {
            db.latest_instance_fault(&inst.uuid)?
        } else {
            None
        },
        host_up,
        volumes,
    })
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
        "accessIPv6": inst.access_ip_v6.clone().unwrap_or_default(),
        "links": links(base, "servers", &inst.uuid),
        "OS-DCF:diskConfig": "MANUAL",
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
    if matches!(st, "ACTIVE" | "BUILD" | "REBUILD" | "RESIZE" | "VERIFY_RESIZE" | "MIGRATING") {
        o["progress"] = json!(if st == "ACTIVE" { 100 } else { inst.progress });
    }
    if !d.security_groups.is_empty() {
        o["security_groups"] = d.security_groups.iter().map(|n| json!({"name": n})).collect();
    }
    if auth.is_admin() {
        o["OS-EXT-SRV-ATTR:host"] = json!(inst.host);
        o["OS-EXT-SRV-ATTR:hypervisor_hostname"] = json!(inst.node);
        o["OS-EXT-SRV-ATTR:instance_name"] = json!(format!("instance-{}", &inst.uuid[..8]));
        if v.at_least(3) {
            o["OS-EXT-SRV-ATTR:reservation_id"] = json!(format!("r-{}", &inst.uuid[..8]));
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
        o["tags"] = json!([]);
    }
    if v.at_least(63) {
        o["trusted_image_certificates"] = Value::Null;
    }
    if v.at_least(73) {
        o["locked_reason"] = Value::Null;
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

/// An image a project may boot: visible to it and active.
pub(crate) fn bootable_image(db: &Db, id: &str, project: &str, is_admin: bool) -> ApiResult<crate::db::images::Image> {
    let viewer = crate::images::Viewer { project_id: project, is_admin };
    let image = db
        .image_by_id(id)?
        .filter(|i| viewer.may_boot(i))
        .ok_or_else(|| ApiError::bad_request(format!("Image {id} could not be found.")))?;
    if image.status != "active" {
        return Err(ApiError::bad_request(format!("Image {id} is not active.")));
    }
    Ok(image)
}

/// Boot from volume: an existing volume must be the caller's, available, and made from an
/// image (whose kernel and properties the guest boots with: `image_id` becomes it); new
/// volumes from an image must fit the project's volume quotas.
fn check_boot_volumes(
    db: &Db,
    bdms: &[NewBlockDevice],
    project: &str,
    count: i64,
    image_id: &mut String,
) -> ApiResult<()> {
    let mut new_gb = 0;
    let mut new_count = 0;
    for b in bdms.iter().filter(|b| b.destination_type == "volume") {
        match (b.source_type.as_str(), &b.volume_id) {
            ("volume", Some(id)) => {
                if count > 1 {
                    return Err(ApiError::bad_request(
                        "Block Device Mapping is Invalid: one volume cannot boot several servers",
                    ));
                }
                let vol = db.volume(id)?.filter(|v| v.project_id == project).ok_or_else(|| {
                    ApiError::bad_request(format!("Block Device Mapping is Invalid: failed to get volume {id}."))
                })?;
                if vol.status != "available" {
                    return Err(ApiError::bad_request(format!(
                        "Invalid volume: volume '{id}' status must be 'available'. Currently in '{}'",
                        vol.status
                    )));
                }
                let source = vol.source_image_id.filter(|_| vol.bootable).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Block Device Mapping is Invalid: volume {id} is not bootable; novabox boots volumes made from an image"
                    ))
                })?;
                if image_id.is_empty() {
                    *image_id = source;
                }
            }
            _ => {
                new_count += count;
                new_gb += b.volume_size.unwrap_or(1) * count;
            }
        }
    }
    if new_count > 0 {
        let (used, used_gb) = db.volume_usage(project)?;
        let (max, max_gb) = db.volume_quotas(project)?;
        if (max >= 0 && used + new_count > max) || (max_gb >= 0 && used_gb + new_gb > max_gb) {
            return Err(ApiError::forbidden(format!(
                "Quota exceeded for volumes: Requested {new_count} ({new_gb}G), but already used {used} of {max} volumes \
                 and {used_gb}G of {max_gb}G"
            )));
        }
    }
    Ok(())
}

/// The id of a security group named (or identified) on create; `default` is made on demand.
fn security_group_id(db: &Db, project: &str, name: &str) -> ApiResult<String> {
    project_security_group(db, project, name)?
        .map(|g| g.id)
        .ok_or_else(|| ApiError::bad_request(format!("Security group {name} not found for project {project}.")))
}

/// A project's security group named by name or id, as nova's create and its
/// add/removeSecurityGroup actions name them; `default` is made when the project has none yet.
pub(super) fn project_security_group(
    db: &Db,
    project: &str,
    name: &str,
) -> crate::db::Result<Option<crate::db::network::SecurityGroup>> {
    if name == "default" {
        let id = db.ensure_default_security_group(project)?;
        return db.security_group_by_id(&id);
    }
    match db.security_group_by_name(project, name)? {
        Some(g) => Ok(Some(g)),
        None => Ok(db.security_group_by_id(name)?.filter(|g| g.project_id == project)),
    }
}

/// Networks and ports named on create must exist, be visible, and (ports) be free.
fn check_requested_networks(db: &Db, requested: &RequestedNetworks, project: &str, is_admin: bool) -> ApiResult<()> {
    let RequestedNetworks::List(list) = requested else { return Ok(()) };
    for r in list {
        if let Some(port_id) = &r.port_id {
            let port = db
                .port_by_id(port_id)?
                .filter(|p| is_admin || p.project_id == project)
                .ok_or_else(|| ApiError::bad_request(format!("Port {port_id} could not be found.")))?;
            if !port.device_id.is_empty() {
                return Err(ApiError::conflict(format!("Port {port_id} is still in use.")));
            }
        } else if let Some(net_id) = &r.network_id {
            db.network_by_id(net_id)?
                .filter(|n| is_admin || n.shared || n.project_id == project)
                .ok_or_else(|| ApiError::bad_request(format!("Network {net_id} could not be found.")))?;
        }
    }
    Ok(())
}

/// The instance, when the caller may see it. Another project's server is "not found".
pub(super) fn find(state: &AppState, auth: &Auth, id: &str) -> ApiResult<Instance> {
    let inst = state.db.with(|db| db.instance_by_uuid(id, false))?;
    match inst {
        Some(i) if auth.owns(&i.project_id) => Ok(i),
        _ => Err(ApiError::not_found(format!("Instance {id} could not be found."))),
    }
}

pub async fn show(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let inst = find(&state, &auth, &id)?;
    let d = state.db.with(|db| view_data(&state, db, &db.services()?, &inst))?;
    let mut server = server_view(&inst, &d, &base_url(&headers, &state.config), v, &auth);
    if v.at_least(71) {
        server["server_groups"] = json!([]);
    }
    Ok(Json(json!({ "server": server })))
}

/// The keys nova's create schema allows inside `server`.
const CREATE_KEYS: &[&str] = &[
    "name",
    "imageRef",
    "flavorRef",
    "adminPass",
    "metadata",
    "networks",
    "key_name",
    "security_groups",
    "user_data",
    "availability_zone",
    "block_device_mapping",
    "block_device_mapping_v2",
    "config_drive",
    "min_count",
    "max_count",
    "return_reservation_id",
    "accessIPv4",
    "accessIPv6",
    "OS-DCF:diskConfig",
    "description",
    "tags",
    "personality",
    "trusted_image_certificates",
    "host",
    "hypervisor_hostname",
];

fn str_field<'a>(o: &'a Map<String, Value>, key: &str) -> ApiResult<Option<&'a str>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {key}. Value: {other}. {other} is not of type 'string'"
        ))),
    }
}

/// A hostname derived from the display name, as nova does (RFC 952 characters, 63 max).
fn sanitize_hostname(name: &str) -> String {
    let mut h: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    h = h.trim_matches('-').to_string();
    h.truncate(63);
    if h.is_empty() {
        "server".into()
    } else {
        h
    }
}

#[derive(Debug)]
struct ParsedCreate {
    name: String,
    description: Option<String>,
    image_id: Option<String>,
    flavor_ref: String,
    networks: RequestedNetworks,
    key_name: Option<String>,
    security_groups: Vec<String>,
    user_data: Option<String>,
    metadata: BTreeMap<String, String>,
    availability_zone: Option<String>,
    config_drive: bool,
    access_ip_v4: Option<String>,
    access_ip_v6: Option<String>,
    admin_pass: Option<String>,
    max_count: usize,
    block_devices: Vec<NewBlockDevice>,
    hints: Value,
    /// `zone:host:node` of `availability_zone` (the zone itself is in `availability_zone`).
    forced: validation::Destination,
    /// 2.74's `host` and `hypervisor_hostname`.
    requested: validation::Destination,
}

fn parse_create(body: &Value, v: Microversion) -> ApiResult<ParsedCreate> {
    let server = body
        .get("server")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("Invalid input: 'server' is a required property"))?;
    for key in body.as_object().into_iter().flat_map(|o| o.keys()) {
        if key != "server" && key != "OS-SCH-HNT:scheduler_hints" && key != "os:scheduler_hints" {
            return Err(ApiError::bad_request(format!(
                "Additional properties are not allowed ('{key}' was unexpected)"
            )));
        }
    }
    for key in server.keys() {
        if !CREATE_KEYS.contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Additional properties are not allowed ('{key}' was unexpected)"
            )));
        }
    }
    let name = str_field(server, "name")?.ok_or_else(|| ApiError::bad_request("'name' is a required property"))?;
    validation::name("name", name)?;
    for key in ["host", "hypervisor_hostname"] {
        if server.contains_key(key) && !v.at_least(74) {
            return Err(ApiError::bad_request(format!(
                "Additional properties are not allowed ('{key}' was unexpected)"
            )));
        }
    }
    let description = str_field(server, "description")?.map(str::to_string);
    if description.is_some() && !v.at_least(19) {
        return Err(ApiError::bad_request("Additional properties are not allowed ('description' was unexpected)"));
    }
    if let Some(d) = &description {
        validation::description(d)?;
    }
    let flavor_ref = match server.get("flavorRef") {
        Some(Value::String(s)) if !s.is_empty() => s.rsplit('/').next().unwrap_or(s).to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(ApiError::bad_request("'flavorRef' is a required property")),
    };
    let mut image_id =
        str_field(server, "imageRef")?.filter(|s| !s.is_empty()).map(|s| s.rsplit('/').next().unwrap_or(s).to_string());

    let mut block_devices = Vec::new();
    if let Some(bdms) = server.get("block_device_mapping_v2") {
        let list = bdms.as_array().ok_or_else(|| ApiError::bad_request("block_device_mapping_v2 must be a list"))?;
        for b in list {
            let get = |k: &str| b.get(k).and_then(Value::as_str).map(str::to_string);
            let source = get("source_type").unwrap_or_else(|| "blank".into());
            let dest = get("destination_type").unwrap_or_else(|| "local".into());
            if !["image", "volume", "blank", "snapshot"].contains(&source.as_str())
                || !["local", "volume"].contains(&dest.as_str())
            {
                return Err(ApiError::bad_request(format!(
                    "Block Device Mapping is Invalid: source {source}, destination {dest}"
                )));
            }
            let boot_index = match b.get("boot_index") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => n.as_i64(),
                Some(Value::String(s)) => {
                    Some(s.parse().map_err(|_| ApiError::bad_request("boot_index must be an integer"))?)
                }
                Some(_) => return Err(ApiError::bad_request("boot_index must be an integer")),
            };
            let uuid = get("uuid");
            if source == "image" && boot_index == Some(0) {
                if let (Some(a), Some(b)) = (&image_id, &uuid) {
                    if a != b {
                        return Err(ApiError::bad_request("imageRef and the boot block device name different images"));
                    }
                }
                image_id = image_id.or(uuid.clone());
            }
            let volume_size = match b.get("volume_size") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n >= 1) => n.as_i64(),
                Some(Value::String(s)) if s.parse::<i64>().is_ok_and(|n| n >= 1) => s.parse().ok(),
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid input for field/attribute volume_size. Value: {other}. It must be an integer of at least 1."
                    )))
                }
            };
            if dest == "volume" {
                match source.as_str() {
                    "image" if volume_size.is_none() => return Err(ApiError::bad_request(
                        "Block Device Mapping is Invalid: volume_size is required for source image, destination volume",
                    )),
                    "image" => {}
                    "volume" if uuid.as_deref().is_some_and(|u| uuid::Uuid::parse_str(u).is_ok()) => {}
                    "volume" => {
                        return Err(ApiError::bad_request(
                            "Block Device Mapping is Invalid: source volume needs the volume's id in uuid",
                        ))
                    }
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "Block Device Mapping is Invalid: source {other}, destination volume is not supported; \
                             use source image or volume"
                        )))
                    }
                }
                if boot_index != Some(0) {
                    return Err(ApiError::bad_request(
                        "Block Device Mapping is Invalid: only the boot volume (boot_index 0) can be mapped at create; \
                         attach other volumes with os-volume_attachments",
                    ));
                }
            }
            block_devices.push(NewBlockDevice {
                source_type: source.clone(),
                destination_type: dest.clone(),
                boot_index,
                image_id: if source == "image" { uuid.clone() } else { None },
                volume_id: if source == "volume" { uuid.clone() } else { None },
                volume_size,
                // nova's default for volumes is false: a volume outlives its server unless asked.
                delete_on_termination: validation::boolean("delete_on_termination", b.get("delete_on_termination"))?
                    .unwrap_or(dest != "volume"),
            });
        }
    }
    if server.contains_key("block_device_mapping") {
        return Err(ApiError::bad_request("block_device_mapping (v1) is not supported; use block_device_mapping_v2"));
    }
    let boot_volume = block_devices
        .iter()
        .find(|b| b.source_type == "volume" && b.destination_type == "volume")
        .and_then(|b| b.volume_id.clone());
    let Some(image) = image_id.clone().or(boot_volume.as_ref().map(|_| String::new())) else {
        return Err(ApiError::bad_request(
            "An image is required: give imageRef or a boot block device of source image",
        ));
    };
    if block_devices.is_empty() {
        block_devices.push(NewBlockDevice {
            source_type: "image".into(),
            destination_type: "local".into(),
            boot_index: Some(0),
            image_id: Some(image.clone()),
            volume_id: None,
            volume_size: None,
            delete_on_termination: true,
        });
    }

    let networks = match server.get("networks") {
        None => {
            if v.at_least(37) {
                return Err(ApiError::bad_request("'networks' is a required property (since microversion 2.37)"));
            }
            RequestedNetworks::Auto
        }
        Some(Value::String(s)) if s == "auto" && v.at_least(37) => RequestedNetworks::Auto,
        Some(Value::String(s)) if s == "none" && v.at_least(37) => RequestedNetworks::None,
        Some(Value::Array(list)) => {
            let mut out = Vec::new();
            for n in list {
                let o = n.as_object().ok_or_else(|| ApiError::bad_request("Each network must be an object"))?;
                for k in o.keys() {
                    if !["uuid", "port", "fixed_ip", "tag"].contains(&k.as_str()) {
                        return Err(ApiError::bad_request(format!(
                            "Additional properties are not allowed ('{k}' was unexpected)"
                        )));
                    }
                }
                let req = RequestedNetwork {
                    network_id: str_field(o, "uuid")?.map(str::to_string),
                    port_id: str_field(o, "port")?.map(str::to_string),
                    fixed_ip: str_field(o, "fixed_ip")?.map(str::to_string),
                };
                if req.network_id.is_none() && req.port_id.is_none() {
                    return Err(ApiError::bad_request("Bad networks format: network uuid or port is required"));
                }
                if let Some(ip) = &req.fixed_ip {
                    ip.parse::<std::net::IpAddr>()
                        .map_err(|_| ApiError::bad_request(format!("Invalid fixed IP address ({ip})")))?;
                }
                out.push(req);
            }
            RequestedNetworks::List(out)
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!("Invalid input for field/attribute networks. Value: {other}")))
        }
    };

    let security_groups = match server.get("security_groups") {
        None => vec!["default".to_string()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|g| {
                g.get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::bad_request("Each security group needs a name"))
            })
            .collect::<ApiResult<_>>()?,
        Some(_) => return Err(ApiError::bad_request("security_groups must be a list")),
    };
    let user_data = str_field(server, "user_data")?.map(str::to_string);
    if let Some(ud) = &user_data {
        if ud.len() > 65535 {
            return Err(ApiError::bad_request(
                "User data too large. User data must be no larger than 65535 bytes once base64 encoded.",
            ));
        }
        base64::engine::general_purpose::STANDARD
            .decode(ud.trim())
            .map_err(|_| ApiError::bad_request("Invalid input for field/attribute user_data: not valid base64"))?;
    }
    // The quota is the project's: `create` checks the count against it.
    let metadata = server.get("metadata").map(|m| validation::metadata(m, -1)).transpose()?.unwrap_or_default();
    let count = |k: &str| -> ApiResult<Option<usize>> {
        match server.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|n| *n >= 1)
                .map(|n| Some(n as usize))
                .ok_or_else(|| ApiError::bad_request(format!("{k} must be at least 1"))),
            Some(Value::String(s)) => s
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .map(Some)
                .ok_or_else(|| ApiError::bad_request(format!("{k} must be at least 1"))),
            Some(_) => Err(ApiError::bad_request(format!("{k} must be an integer"))),
        }
    };
    let min_count = count("min_count")?.unwrap_or(1);
    let max_count = count("max_count")?.unwrap_or(min_count);
    if min_count > max_count {
        return Err(ApiError::bad_request("min_count must be <= max_count"));
    }
    if max_count > 100 {
        return Err(ApiError::bad_request("max_count must be at most 100"));
    }
    let config_drive = validation::boolean("config_drive", server.get("config_drive"))?.unwrap_or(false);
    let ip = |k: &str| -> ApiResult<Option<String>> {
        match str_field(server, k)? {
            Some(s) if !s.is_empty() => {
                s.parse::<std::net::IpAddr>().map_err(|_| ApiError::bad_request(format!("Invalid {k}: {s}")))?;
                Ok(Some(s.to_string()))
            }
            _ => Ok(None),
        }
    };
    let hints =
        body.get("OS-SCH-HNT:scheduler_hints").or_else(|| body.get("os:scheduler_hints")).cloned().unwrap_or(json!({}));
    let (availability_zone, forced_host, forced_node) =
        match str_field(server, "availability_zone")?.filter(|s| !s.is_empty()) {
            Some(az) => validation::availability_zone(az)?,
            None => (None, None, None),
        };
    let host_field = |k: &str| validation::host_name(k, str_field(server, k)?);
    Ok(ParsedCreate {
        name: name.to_string(),
        description,
        image_id: Some(image),
        flavor_ref,
        networks,
        key_name: str_field(server, "key_name")?.map(str::to_string),
        security_groups,
        user_data,
        metadata,
        availability_zone,
        forced: validation::Destination { host: forced_host, node: forced_node },
        requested: validation::Destination { host: host_field("host")?, node: host_field("hypervisor_hostname")? },
        config_drive,
        access_ip_v4: ip("accessIPv4")?,
        access_ip_v6: ip("accessIPv6")?,
        admin_pass: str_field(server, "adminPass")?.map(str::to_string),
        max_count,
        block_devices,
        hints,
    })
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
    let p = parse_create(&body, v)?;
    drop(parsing);
    let ctx = auth.context.clone();
    let destination = validation::destination(&auth, p.forced.clone(), &p.hints, p.requested.clone())?;

    // Validate against the database and write the instances, all in one transaction so quotas
    // hold under concurrent creates (from this process or another on the same database) and
    // a failure on the second of several instances stores none of them.
    type Created = (Vec<Instance>, Value, Option<crate::compute::virt::ImageMeta>);
    let (instances, image_props, image_meta) = state.db.tx(|db| -> ApiResult<Created> {
        let validating = tracing::info_span!("validate", what = "flavor, image, keypair, networks, quotas").entered();
        let flavor = super::flavors::visible_flavor(db, &auth, &p.flavor_ref)?
            .ok_or_else(|| ApiError::bad_request(format!("Flavor {} could not be found.", p.flavor_ref)))?;
        let extra_specs = db.flavor_extra_specs(flavor.id)?;
        let mut image_id = p.image_id.clone().unwrap_or_default();
        let boot_from_volume =
            p.block_devices.iter().any(|b| b.destination_type == "volume" && b.boot_index == Some(0));
        check_boot_volumes(db, &p.block_devices, auth.project_id(), p.max_count as i64, &mut image_id)?;
        let image = bootable_image(db, &image_id, auth.project_id(), auth.is_admin())?;
        let meta = validation::boot_image_meta(db, &state.home, &image.id, &auth)?;
        validation::known_destination(db, &destination)?;
        let root_bytes = flavor.root_gb.saturating_mul(1 << 30);
        // Booted from a volume, the flavor's root disk is not used (nova's rule).
        if !boot_from_volume
            && flavor.root_gb > 0
            && (image.size.unwrap_or(0) > root_bytes || image.min_disk > flavor.root_gb)
        {
            return Err(ApiError::bad_request("Flavor's disk is too small for requested image."));
        }
        if image.min_ram > flavor.memory_mb {
            return Err(ApiError::bad_request("Flavor's memory is too small for requested image."));
        }
        if let Some(az) = &p.availability_zone {
            if az != &state.config.host.availability_zone {
                return Err(ApiError::bad_request(format!("The requested availability zone is not available: {az}")));
            }
        }
        let key_data = match &p.key_name {
            Some(k) => Some(
                db.keypair(auth.user_id(), k)?
                    .ok_or_else(|| ApiError::bad_request(format!("Invalid key_name provided: {k}")))?
                    .public_key,
            ),
            None => None,
        };
        let mut sg_ids = Vec::new();
        for name in &p.security_groups {
            sg_ids.push(security_group_id(db, auth.project_id(), name)?);
        }
        check_requested_networks(db, &p.networks, auth.project_id(), auth.is_admin())?;

        // Quotas: nova counts instances, cores and RAM per project.
        let (used_instances, used_cores, used_ram) = db.project_usage(auth.project_id())?;
        let limits = db.quota_limits(auth.project_id())?;
        validation::metadata_quota(p.metadata.len(), limits.get("metadata_items").copied().unwrap_or(-1))?;
        let n = p.max_count as i64;
        for (resource, used, each) in
            [("instances", used_instances, 1), ("cores", used_cores, flavor.vcpus), ("ram", used_ram, flavor.memory_mb)]
        {
            let limit = limits.get(resource).copied().unwrap_or(-1);
            if limit >= 0 && used.saturating_add(each.saturating_mul(n)) > limit {
                return Err(ApiError::forbidden(format!(
                    "Quota exceeded for {resource}: Requested {}, but already used {used} of {limit} {resource}",
                    each.saturating_mul(n)
                )));
            }
        }

        drop(validating);
        let _creating = tracing::info_span!("db.instance_create", count = p.max_count).entered();
        let snapshot = FlavorSnapshot {
            flavorid: flavor.flavorid.clone(),
            name: flavor.name.clone(),
            memory_mb: flavor.memory_mb,
            vcpus: flavor.vcpus,
            root_gb: flavor.root_gb,
            ephemeral_gb: flavor.ephemeral_gb,
            swap: flavor.swap,
            extra_specs,
        };
        let mut created = Vec::new();
        for i in 0..p.max_count {
            let name = if p.max_count > 1 { format!("{}-{}", p.name, i + 1) } else { p.name.clone() };
            let new = NewInstance {
                uuid: uuid::Uuid::new_v4().to_string(),
                hostname: sanitize_hostname(&name),
                display_name: name,
                display_description: p.description.clone(),
                project_id: auth.project_id().to_string(),
                user_id: auth.user_id().to_string(),
                availability_zone: p.availability_zone.clone().or(Some(state.config.host.availability_zone.clone())),
                flavor: snapshot.clone(),
                image_ref: Some(image.id.clone()),
                kernel_id: meta.as_ref().and_then(|m| m.kernel.as_ref()).map(|k| k.id.clone()),
                ramdisk_id: meta.as_ref().and_then(|m| m.ramdisk.as_ref()).map(|r| r.id.clone()),
                key_name: p.key_name.clone(),
                key_data: key_data.clone(),
                user_data: p.user_data.clone(),
                config_drive: p.config_drive,
                access_ip_v4: p.access_ip_v4.clone(),
                access_ip_v6: p.access_ip_v6.clone(),
                request_id: ctx.request_id.clone(),
                metadata: p.metadata.clone(),
                security_group_ids: sg_ids.clone(),
                block_devices: p.block_devices.clone(),
            };
            created.push(db.create_instance(&new)?);
        }
        let props = json!(image.properties);
        Ok((created, props, meta))
    })?;

    let spec = RequestSpec {
        availability_zone: p.availability_zone.clone(),
        scheduler_hints: validation::hints_with(&p.hints, &destination),
        image_properties: image_props,
        requested_networks: p.networks.clone(),
        image: image_meta,
    };
    let uuids: Vec<String> = instances.iter().map(|i| i.uuid.clone()).collect();
    if let Err(e) = SchedulerApi::new(state.bus.clone()).build_instances(&ctx, &uuids, &spec).await {
        // The request never reached the scheduler: say so on the instances rather than
        // leaving them in BUILD forever.
        let message = format!("The build request could not be sent to the scheduler: {e}");
        state.db.tx(|db| -> crate::db::Result<()> {
            for uuid in &uuids {
                db.add_instance_fault(uuid, 500, &message, "", None)?;
                let u = InstanceUpdate { vm_state: Some(VmState::Error), task_state: Some(None), ..Default::default() };
                let _ = db.update_instance(uuid, &u)?;
            }
            Ok(())
        })?;
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message));
    }

    let base = base_url(&headers, &state.config);
    let first = &instances[0];
    let admin_pass = p.admin_pass.clone().unwrap_or_else(|| crate::secrets::random_token(12));
    let mut server = json!({
        "id": first.uuid,
        "links": links(&base, "servers", &first.uuid),
        "OS-DCF:diskConfig": "MANUAL",
        "security_groups": p.security_groups.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
        "adminPass": admin_pass,
    });
    if validation::boolean("return_reservation_id", body["server"].get("return_reservation_id"))? == Some(true) {
        server = json!({"reservation_id": format!("r-{}", &first.uuid[..8])});
        return Ok((StatusCode::ACCEPTED, Json(server)).into_response());
    }
    let location = format!("{base}/compute/v2.1/servers/{}", first.uuid);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(json!({ "server": server }))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    server: UpdateServer,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateServer {
    name: Option<String>,
    description: Option<Option<String>>,
    #[serde(rename = "accessIPv4")]
    access_ip_v4: Option<String>,
    #[serde(rename = "accessIPv6")]
    access_ip_v6: Option<String>,
    #[serde(rename = "OS-DCF:diskConfig")]
    _disk_config: Option<String>,
}

pub async fn update(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let (_, UpdateBody { server: u }) = parse_body::<UpdateBody>(body)?;
    find(&state, &auth, &id)?;
    if let Some(n) = &u.name {
        validation::name("name", n)?;
    }
    if u.description.is_some() && !v.at_least(19) {
        return Err(ApiError::bad_request("Additional properties are not allowed ('description' was unexpected)"));
    }
    if let Some(Some(d)) = &u.description {
        validation::description(d)?;
    }
    let update = InstanceUpdate {
        display_name: u.name.clone(),
        display_description: u.description.clone(),
        access_ip_v4: u.access_ip_v4.clone(),
        access_ip_v6: u.access_ip_v6.clone(),
        ..Default::default()
    };
    let inst = match state.db.with(|db| db.update_instance(&id, &update))? {
        Ok(i) => i,
        Err(_) => return Err(ApiError::not_found(format!("Instance {id} could not be found."))),
    };
    let d = state.db.with(|db| view_data(&state, db, &db.services()?, &inst))?;
    Ok(Json(json!({"server": server_view(&inst, &d, &base_url(&headers, &state.config), v, &auth)})))
}

/// The compute host of an instance when its service is alive (for volume attachments).
pub(crate) fn compute_up_host(state: &AppState, inst: &Instance) -> ApiResult<Option<String>> {
    live_host(state, inst)
}

/// The compute host of an instance when its service is alive; None means "handle it here".
fn live_host(state: &AppState, inst: &Instance) -> ApiResult<Option<String>> {
    let Some(host) = inst.host.clone() else { return Ok(None) };
    let services = state.db.with(|db| db.services())?;
    Ok(compute_up(state, &services, &host).then_some(host))
}

/// Sets the task state of an action, refusing as nova does when the instance is not in a
/// state that allows it (409). The check and the change are one conditional update, so two
/// racing actions cannot both start.
fn begin_action(state: &AppState, auth: &Auth, inst: &Instance, action: ServerAction) -> ApiResult<Instance> {
    let states::Guard { name: action, vm_states, task } = action.guard();
    if inst.locked && !auth.is_admin() {
        return Err(ApiError::conflict(format!("Instance {} is locked", inst.uuid)));
    }
    let u = InstanceUpdate {
        task_state: Some(Some(task)),
        expected_task_state: Some(vec![None]),
        expected_vm_state: Some(vm_states.to_vec()),
        ..Default::default()
    };
    let result = state.db.tx(|db| -> crate::db::Result<_> {
        let r = db.update_instance(&inst.uuid, &u)?;
        if r.is_ok() {
            db.start_instance_action(&inst.uuid, action, &auth.context.request_id, auth.user_id(), auth.project_id())?;
        }
        Ok(r)
    })?;
    match result {
        Ok(i) => Ok(i),
        Err(UpdateError::NotFound) => Err(ApiError::not_found(format!("Instance {} could not be found.", inst.uuid))),
        Err(UpdateError::UnexpectedState { vm_state, task_state }) => {
            Err(ApiError::conflict(states::invalid_state_message(action, &inst.uuid, vm_state, task_state)))
        }
    }
}

pub async fn delete(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let inst = find(&state, &auth, &id)?;
    if inst.locked && !auth.is_admin() {
        return Err(ApiError::conflict(format!("Instance {id} is locked")));
    }
    if inst.task_state == Some(TaskState::Deleting) {
        return Ok(StatusCode::NO_CONTENT);
    }
    let host = live_host(&state, &inst)?;
    let u = InstanceUpdate { task_state: Some(Some(TaskState::Deleting)), ..Default::default() };
    let inst = match state.db.tx(|db| -> crate::db::Result<_> {
        let r = db.update_instance(&id, &u)?;
        db.start_instance_action(&id, "delete", &auth.context.request_id, auth.user_id(), auth.project_id())?;
        Ok(r)
    })? {
        Ok(i) => i,
        Err(_) => return Err(ApiError::not_found(format!("Instance {id} could not be found."))),
    };
    match host {
        Some(h) => {
            if let Err(e) = state.compute_api().terminate_instance(&auth.context, &h, &inst).await {
                tracing::warn!(instance = %id, error = %e, "terminate not delivered; deleting locally");
                local_delete(&state, &auth, &inst)?;
            }
        }
        // Never scheduled, or its compute service is down: nova's "local delete".
        None => local_delete(&state, &auth, &inst)?,
    }
    Ok(StatusCode::NO_CONTENT)
}

fn local_delete(state: &AppState, auth: &Auth, inst: &Instance) -> ApiResult<()> {
    state.db.with(|db| crate::volumes::release_instance_volumes(db, &state.home, &inst.uuid)).map_err(|e| {
        tracing::error!(instance = %inst.uuid, error = %e, "volumes not released");
        ApiError::internal(format!("The server's volumes could not be released: {e}"))
    })?;
    state.db.tx(|db| -> crate::db::Result<()> {
        crate::conductor::release_network(db, &inst.uuid)?;
        db.destroy_instance(&inst.uuid)?;
        db.finish_instance_action(&auth.context.request_id, &inst.uuid, None)
    })?;
    Ok(())
}

pub async fn action(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let (body, _) = parse_body::<Value>(body)?;
    let obj = body
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| ApiError::bad_request("Malformed request body: one action expected"))?;
    let (name, args) = obj.iter().next().ok_or_else(|| ApiError::bad_request("Malformed request body"))?;
    let inst = find(&state, &auth, &id)?;
    let compute = state.compute_api();
    let ctx = &auth.context;
    let needs_host = || {
        live_host(&state, &inst)?.ok_or_else(|| {
            ApiError::conflict(format!("Cannot '{name}' instance {id}: its compute service is not available"))
        })
    };
    match name.as_str() {
        "os-stop" => {
            let host = needs_host()?;
            let i = begin_action(&state, &auth, &inst, ServerAction::Stop)?;
            compute.stop_instance(ctx, &host, &i).await.map_err(unavailable)?;
        }
        "os-start" => {
            let host = needs_host()?;
            let i = begin_action(&state, &auth, &inst, ServerAction::Start)?;
            compute.start_instance(ctx, &host, &i).await.map_err(unavailable)?;
        }
        "reboot" => {
            let kind = args.get("type").and_then(Value::as_str).unwrap_or("");
            let hard = match kind.to_ascii_uppercase().as_str() {
                "SOFT" => false,
                "HARD" => true,
                _ => return Err(ApiError::bad_request("Argument 'type' for reboot must be a string SOFT or HARD")),
            };
            let host = needs_host()?;
            let action = if hard { ServerAction::RebootHard } else { ServerAction::Reboot };
            let i = begin_action(&state, &auth, &inst, action)?;
            compute.reboot_instance(ctx, &host, &i, hard).await.map_err(unavailable)?;
        }
        "os-getConsoleOutput" => {
            let length = match args.get("length") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => match n.as_i64() {
                    Some(-1) => None,
                    Some(l) if l >= 0 => Some(l as usize),
                    _ => return Err(ApiError::bad_request("length must be a positive integer or -1")),
                },
                Some(Value::String(s)) => {
                    Some(s.parse::<usize>().map_err(|_| ApiError::bad_request("length must be an integer"))?)
                }
                Some(_) => return Err(ApiError::bad_request("length must be an integer")),
            };
            let host = needs_host()?;
            let output = compute.get_console_output(ctx, &host, &inst, length).await.map_err(|e| match e {
                crate::bus::BusError::Remote { error, .. } => ApiError::conflict(error.message),
                other => unavailable(other),
            })?;
            return Ok(Json(json!({ "output": output })).into_response());
        }
        "addSecurityGroup" => super::server_security_groups::change(&state, &auth, &inst, args, true).await?,
        "removeSecurityGroup" => super::server_security_groups::change(&state, &auth, &inst, args, false).await?,
        other => return Err(ApiError::bad_request(format!("There is no such action: {other}"))),
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

fn unavailable(e: crate::bus::BusError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("The compute service did not take the request: {e}"))
}

pub async fn ips(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let inst = find(&state, &auth, &id)?;
    let addresses = state.db.with(|db| crate::conductor::addresses(db, &inst.uuid))?;
    Ok(Json(json!({ "addresses": addresses })))
}

pub async fn metadata(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let inst = find(&state, &auth, &id)?;
    Ok(Json(json!({ "metadata": inst.metadata })))
}

pub async fn instance_actions(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let inst = find(&state, &auth, &id)?;
    let actions = state.db.with(|db| db.instance_actions(&inst.uuid))?;
    Ok(Json(json!({ "instanceActions": actions })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_sanitized() {
        assert_eq!(sanitize_hostname("My Server_1"), "my-server-1");
        assert_eq!(sanitize_hostname("***"), "server");
        assert_eq!(sanitize_hostname(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn create_rejects_what_nova_rejects() {
        let v = Microversion(79);
        let ok = json!({"server": {"name": "a", "imageRef": "i", "flavorRef": "1", "networks": "none"}});
        assert!(parse_create(&ok, v).is_ok());
        let extra = json!({"server": {"name": "a", "imageRef": "i", "flavorRef": "1", "networks": "none", "bogus": 1}});
        assert!(parse_create(&extra, v).unwrap_err().message.contains("bogus"));
        let no_net = json!({"server": {"name": "a", "imageRef": "i", "flavorRef": "1"}});
        assert!(parse_create(&no_net, v).unwrap_err().message.contains("networks"));
        assert!(parse_create(&no_net, Microversion(1)).is_ok());
        let long = json!({"server": {"name": "x".repeat(256), "imageRef": "i", "flavorRef": "1", "networks": "none"}});
        assert!(parse_create(&long, v).is_err());
        let bad_ud =
            json!({"server": {"name": "a", "imageRef": "i", "flavorRef": "1", "networks": "none", "user_data": "%%%"}});
        assert!(parse_create(&bad_ud, v).is_err());
        let wrong_type = json!({"server": {"name": 5, "imageRef": "i", "flavorRef": "1", "networks": "none"}});
        assert_eq!(parse_create(&wrong_type, v).unwrap_err().status, 400);
    }

    #[test]
    fn osc_style_bdm_gives_the_image() {
        let body = json!({"server": {"name": "a", "imageRef": "img", "flavorRef": "1", "networks": "auto",
            "block_device_mapping_v2": [{"boot_index": 0, "uuid": "img", "source_type": "image", "destination_type": "local", "delete_on_termination": true}]}});
        let p = parse_create(&body, Microversion(79)).unwrap();
        assert_eq!(p.image_id.as_deref(), Some("img"));
        assert_eq!(p.block_devices.len(), 1);
    }
}
