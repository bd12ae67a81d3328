//! What the cloud is made of and how much a project may use: hypervisors, services,
//! availability zones, limits and quota sets.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use std::collections::BTreeMap;

use serde_json::Map;

use super::aggregates::{Zones, INTERNAL_ZONE};
use super::microversion::Microversion;
use super::parse_body;
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::AppState;
use crate::db::services::{is_up, ComputeNode, Service};

/// nova's service timestamps: no zone suffix, microseconds.
fn nova_time(ts: &Option<String>) -> Value {
    match ts {
        Some(t) => json!(format!("{}.000000", t.trim_end_matches('Z'))),
        None => Value::Null,
    }
}

/// The binary as nova names it. novabox registers its services as `novabox-*` (what `novabox
/// status` shows); nova's API says `nova-compute`, `nova-scheduler`, `nova-conductor`, and
/// clients filter on those names (tempest lists `?binary=nova-compute`).
pub(crate) fn nova_binary(binary: &str) -> String {
    match binary.strip_prefix("novabox-") {
        Some(rest) => format!("nova-{rest}"),
        None => binary.to_string(),
    }
}

fn service_json(s: &Service, state: &AppState, v: Microversion, zones: &Zones) -> Value {
    let up = is_up(s, state.config.compute.service_down_secs);
    let zone = if s.binary == crate::compute::BINARY { zones.of(&s.host) } else { INTERNAL_ZONE };
    let mut o = json!({
        "id": if v.at_least(53) { json!(s.uuid) } else { json!(s.id) },
        "binary": nova_binary(&s.binary),
        "host": s.host,
        "zone": zone,
        "status": if s.disabled { "disabled" } else { "enabled" },
        "state": if up { "up" } else { "down" },
        "updated_at": nova_time(&s.last_seen_at),
        "disabled_reason": s.disabled_reason,
    });
    if v.at_least(11) {
        o["forced_down"] = json!(s.forced_down);
    }
    o
}

/// GET /os-services: nova filters on `host` and `binary` (exact matches) and ignores any other
/// query parameter.
pub async fn services(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Query(query): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let default = state.config.host.availability_zone.as_str();
    let (list, zones) =
        state.db.with(|db| -> crate::db::Result<_> { Ok((db.services()?, Zones::load(db, default)?)) })?;
    let wanted = |key: &str| query.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let (host, binary) = (wanted("host"), wanted("binary"));
    let shown: Vec<Value> = list
        .iter()
        .filter(|s| host.is_none_or(|h| h == s.host))
        .filter(|s| binary.is_none_or(|b| b == nova_binary(&s.binary) || b == s.binary))
        .map(|s| service_json(s, &state, v, &zones))
        .collect();
    Ok(Json(json!({ "services": shown })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceUpdate {
    status: Option<String>,
    disabled_reason: Option<String>,
    forced_down: Option<bool>,
}

/// PUT /os-services/{id} (2.53+): enable, disable, force down.
pub async fn update_service(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    if !v.at_least(53) {
        return Err(ApiError::not_found("Use microversion 2.53 or later to update a service by id."));
    }
    let (_, u) = parse_body::<ServiceUpdate>(body)?;
    let svc = state
        .db
        .with(|db| db.service_by_id_or_uuid(&id))?
        .ok_or_else(|| ApiError::not_found(format!("Service {id} could not be found.")))?;
    let disabled = match u.status.as_deref() {
        None => svc.disabled,
        Some("enabled") => false,
        Some("disabled") => true,
        Some(other) => return Err(ApiError::bad_request(format!("Invalid status {other:?}: use enabled or disabled"))),
    };
    let reason = if disabled { u.disabled_reason.or(svc.disabled_reason.clone()) } else { None };
    let forced = u.forced_down.unwrap_or(svc.forced_down);
    state.db.with(|db| db.set_service_status(svc.id, disabled, reason.as_deref(), forced))?;
    let svc = state.db.with(|db| db.service_by_id_or_uuid(&id))?.unwrap_or(svc);
    let zones = state.db.with(|db| Zones::load(db, &state.config.host.availability_zone))?;
    Ok(Json(json!({"service": service_json(&svc, &state, v, &zones)})))
}

fn hypervisor_json(
    n: &ComputeNode,
    svc: Option<&Service>,
    state: &AppState,
    v: Microversion,
    detail: bool,
) -> ApiResult<Value> {
    let up = svc.is_some_and(|s| is_up(s, state.config.compute.service_down_secs));
    let disabled = svc.is_some_and(|s| s.disabled);
    let mut o = json!({
        "id": if v.at_least(53) { json!(n.uuid) } else { json!(n.id) },
        "hypervisor_hostname": n.report.hypervisor_hostname,
        "state": if up { "up" } else { "down" },
        "status": if disabled { "disabled" } else { "enabled" },
    });
    if detail {
        let (vcpus_used, mem_used, disk_used, running) = state.db.with(|db| db.host_usage(&n.host))?;
        let r = &n.report;
        let memory_used = mem_used.saturating_add(r.reserved_host_memory_mb);
        // A JSON string before 2.28, an object from 2.28 (tempest's schemas check the type).
        o["cpu_info"] = if v.at_least(28) { json!({}) } else { json!("{}") };
        o["current_workload"] = json!(0);
        o["disk_available_least"] = json!(r.local_gb.saturating_sub(disk_used));
        o["free_disk_gb"] = json!(r.local_gb.saturating_sub(disk_used));
        o["free_ram_mb"] = json!(r.memory_mb.saturating_sub(memory_used));
        o["host_ip"] = json!(r.host_ip);
        o["hypervisor_type"] = json!(r.hypervisor_type);
        o["hypervisor_version"] = json!(r.hypervisor_version);
        o["local_gb"] = json!(r.local_gb);
        o["local_gb_used"] = json!(disk_used);
        o["memory_mb"] = json!(r.memory_mb);
        o["memory_mb_used"] = json!(memory_used);
        o["running_vms"] = json!(running);
        o["vcpus"] = json!(r.vcpus);
        o["vcpus_used"] = json!(vcpus_used);
        o["service"] = json!({
            "host": n.host,
            "id": svc.map(|s| if v.at_least(53) { json!(s.uuid) } else { json!(s.id) }),
            "disabled_reason": svc.and_then(|s| s.disabled_reason.clone()),
        });
    }
    Ok(o)
}

fn hypervisor_list(state: &AppState, v: Microversion, detail: bool) -> ApiResult<Vec<Value>> {
    hypervisor_list_with(state, v, detail, false)
}

/// Every hypervisor; with `servers`, the servers on each (nova's `with_servers`, 2.53).
fn hypervisor_list_with(state: &AppState, v: Microversion, detail: bool, servers: bool) -> ApiResult<Vec<Value>> {
    let (nodes, services) =
        state.db.with(|db| -> crate::db::Result<_> { Ok((db.compute_nodes()?, db.services()?)) })?;
    nodes
        .iter()
        .map(|n| {
            let svc = services.iter().find(|s| s.host == n.host && s.binary == crate::compute::BINARY);
            let mut o = hypervisor_json(n, svc, state, v, detail)?;
            if servers {
                let uuids = state.db.with(|db| db.host_instance_uuids(&n.host))?;
                // Before 2.75 nova leaves the key out for a hypervisor with no servers.
                if !uuids.is_empty() || v.at_least(75) {
                    o["servers"] = uuids
                        .iter()
                        .map(|u| json!({"uuid": u, "name": format!("instance-{}", u.get(..8).unwrap_or(u))}))
                        .collect();
                }
            }
            Ok(o)
        })
        .collect()
}

/// nova's 2.53 query of the hypervisor lists: `hypervisor_hostname_pattern` (a substring, not
/// with paging) and `with_servers`; `limit` and `marker` (2.33).
fn hypervisor_query(
    state: &AppState,
    v: Microversion,
    detail: bool,
    query: &[(String, String)],
) -> ApiResult<Vec<Value>> {
    let get = |key: &str| query.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let pattern = get("hypervisor_hostname_pattern").filter(|_| v.at_least(53));
    let with_servers = match get("with_servers").filter(|_| v.at_least(53)) {
        Some(b) => super::validation::boolean("with_servers", Some(&Value::String(b)))?.unwrap_or(false),
        None => false,
    };
    let (limit, marker) = (get("limit").filter(|_| v.at_least(33)), get("marker").filter(|_| v.at_least(33)));
    if pattern.is_some() && (limit.is_some() || marker.is_some()) {
        return Err(ApiError::bad_request(
            "Paging over hypervisors with the hypervisor_hostname_pattern query parameter is not supported.",
        ));
    }
    let mut list = hypervisor_list_with(state, v, detail, with_servers)?;
    if let Some(p) = &pattern {
        list.retain(|h| h["hypervisor_hostname"].as_str().is_some_and(|n| n.contains(p.as_str())));
        if list.is_empty() {
            return Err(ApiError::not_found(format!("No hypervisor matching '{p}' could be found.")));
        }
    }
    if let Some(m) = &marker {
        let at = list
            .iter()
            .position(|h| h["id"].as_str() == Some(m) || h["id"].as_i64().is_some_and(|i| i.to_string() == *m))
            .ok_or_else(|| ApiError::bad_request(format!("marker [{m}] not found")))?;
        list.drain(..=at);
    }
    if let Some(l) = &limit {
        let n: usize = l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("Invalid input for query parameters limit. Value: {l}.")))?;
        list.truncate(n);
    }
    Ok(list)
}

pub async fn hypervisors(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Query(query): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    Ok(Json(json!({"hypervisors": hypervisor_query(&state, v, false, &query)?})))
}

pub async fn hypervisors_detail(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Query(query): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    Ok(Json(json!({"hypervisors": hypervisor_query(&state, v, true, &query)?})))
}

pub async fn hypervisor(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let with_servers = match query.iter().rev().find(|(k, _)| k == "with_servers").filter(|_| v.at_least(53)) {
        Some((_, b)) => super::validation::boolean("with_servers", Some(&Value::String(b.clone())))?.unwrap_or(false),
        None => false,
    };
    let list = hypervisor_list_with(&state, v, true, with_servers)?;
    let found = list
        .into_iter()
        .find(|h| h["id"].as_str() == Some(&id) || h["id"].as_i64().map(|i| i.to_string()) == Some(id.clone()))
        .ok_or_else(|| ApiError::not_found(format!("Hypervisor with ID {id} could not be found.")))?;
    Ok(Json(json!({ "hypervisor": found })))
}

/// GET /os-hypervisors/{id}/uptime (below 2.88): the host's `uptime` line, asked of its
/// compute service as nova asks it.
pub async fn hypervisor_uptime(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let not_found = || ApiError::not_found(format!("Hypervisor with ID {id} could not be found."));
    if v.at_least(88) {
        return Err(not_found());
    }
    let (nodes, services) =
        state.db.with(|db| -> crate::db::Result<_> { Ok((db.compute_nodes()?, db.services()?)) })?;
    let node = nodes.iter().find(|n| n.uuid == id || n.id.to_string() == id).ok_or_else(not_found)?;
    let svc = services.iter().find(|s| s.host == node.host && s.binary == crate::compute::BINARY);
    if !svc.is_some_and(|s| is_up(s, state.config.compute.service_down_secs)) {
        return Err(ApiError::bad_request("Compute service of host is unavailable at this time."));
    }
    let uptime = state.compute_api().get_host_uptime(&auth.context, &node.host).await.map_err(|e| match e {
        crate::bus::BusError::Remote { error, .. } => ApiError::bad_request(error.message),
        other => ApiError::bad_request(format!("Compute service of host is unavailable at this time: {other}")),
    })?;
    let mut o = hypervisor_json(node, svc, &state, v, false)?;
    o["uptime"] = json!(uptime);
    Ok(Json(json!({ "hypervisor": o })))
}

pub async fn hypervisor_statistics(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let list = hypervisor_list(&state, v, true)?;
    let sum = |k: &str| list.iter().map(|h| h[k].as_i64().unwrap_or(0)).fold(0i64, i64::saturating_add);
    let keys = [
        "current_workload",
        "disk_available_least",
        "free_disk_gb",
        "free_ram_mb",
        "local_gb",
        "local_gb_used",
        "memory_mb",
        "memory_mb_used",
        "running_vms",
        "vcpus",
        "vcpus_used",
    ];
    let mut stats = serde_json::Map::new();
    stats.insert("count".into(), json!(list.len()));
    for k in keys {
        stats.insert(k.into(), json!(sum(k)));
    }
    Ok(Json(json!({ "hypervisor_statistics": stats })))
}

/// GET /os-availability-zone: the zones of compute services, available while one of their
/// services is enabled (nova's index; hosts only in the detail).
pub async fn availability_zones(State(state): State<AppState>, _auth: Auth) -> ApiResult<Json<Value>> {
    let default = state.config.host.availability_zone.as_str();
    let (services, zones) =
        state.db.with(|db| -> crate::db::Result<_> { Ok((db.services()?, Zones::load(db, default)?)) })?;
    let mut available: BTreeMap<&str, bool> = BTreeMap::new();
    for s in services.iter().filter(|s| s.binary == crate::compute::BINARY) {
        *available.entry(zones.of(&s.host)).or_default() |= !s.disabled;
    }
    if available.is_empty() {
        // Before the first compute service registers, the configured zone is the cloud's.
        available.insert(default, true);
    }
    let list: Vec<Value> = available
        .iter()
        .map(|(zone, up)| json!({"zoneName": zone, "zoneState": {"available": up}, "hosts": null}))
        .collect();
    Ok(Json(json!({ "availabilityZoneInfo": list })))
}

/// GET /os-availability-zone/detail: each zone with its hosts and their services; the
/// services that are not compute services are in nova's internal zone.
pub async fn availability_zones_detail(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let default = state.config.host.availability_zone.as_str();
    let (services, zones) =
        state.db.with(|db| -> crate::db::Result<_> { Ok((db.services()?, Zones::load(db, default)?)) })?;
    let down_after = state.config.compute.service_down_secs;
    let mut by_zone: BTreeMap<&str, (bool, Map<String, Value>)> = BTreeMap::new();
    for s in &services {
        let compute = s.binary == crate::compute::BINARY;
        let zone = if compute { zones.of(&s.host) } else { INTERNAL_ZONE };
        let (available, hosts) = by_zone.entry(zone).or_insert_with(|| (false, Map::new()));
        *available |= !compute || !s.disabled;
        let entry = hosts.entry(s.host.clone()).or_insert_with(|| json!({}));
        entry[s.binary.replace("novabox-", "nova-")] = json!({
            "available": is_up(s, down_after) && !s.disabled,
            "active": !s.disabled,
            "updated_at": nova_time(&s.last_seen_at),
        });
    }
    let list: Vec<Value> = by_zone
        .into_iter()
        .map(|(zone, (available, hosts))| json!({"zoneName": zone, "zoneState": {"available": available}, "hosts": hosts}))
        .collect();
    Ok(Json(json!({ "availabilityZoneInfo": list })))
}

/// nova's quota resources at microversion `v`, as tempest's quotas schemas require them: 2.36
/// dropped the network ones (neutron answers those) and 2.57 the injected files (personality).
pub fn nova_quota_keys(v: Microversion) -> Vec<&'static str> {
    let mut keys =
        vec!["instances", "cores", "ram", "metadata_items", "key_pairs", "server_groups", "server_group_members"];
    if !v.at_least(36) {
        keys.extend(["floating_ips", "fixed_ips", "security_groups", "security_group_rules"]);
    }
    if !v.at_least(57) {
        keys.extend(["injected_files", "injected_file_content_bytes", "injected_file_path_bytes"]);
    }
    keys
}

/// The limits of nova's absolute view and the quota each comes from, at microversion `v`
/// (tempest's limits schemas: 2.36 drops the network ones, 2.39 `maxImageMeta`, 2.57 the
/// personality ones).
fn absolute_limit_names(v: Microversion) -> Vec<(&'static str, &'static str)> {
    let mut names = vec![
        ("maxServerMeta", "metadata_items"),
        ("maxTotalKeypairs", "key_pairs"),
        ("maxTotalInstances", "instances"),
        ("maxTotalCores", "cores"),
        ("maxTotalRAMSize", "ram"),
        ("maxServerGroups", "server_groups"),
        ("maxServerGroupMembers", "server_group_members"),
    ];
    if !v.at_least(36) {
        names.extend([
            ("maxTotalFloatingIps", "floating_ips"),
            ("maxSecurityGroups", "security_groups"),
            ("maxSecurityGroupRules", "security_group_rules"),
        ]);
    }
    if !v.at_least(39) {
        names.push(("maxImageMeta", "metadata_items"));
    }
    if !v.at_least(57) {
        names.extend([("maxPersonality", "injected_files"), ("maxPersonalitySize", "injected_file_content_bytes")]);
    }
    names
}

pub async fn limits(State(state): State<AppState>, auth: Auth, v: Microversion) -> ApiResult<Json<Value>> {
    let (q, (instances, cores, ram), groups) = state.db.with(|db| -> crate::db::Result<_> {
        let project = auth.project_id();
        Ok((db.quota_limits(project)?, db.project_usage(project)?, db.count_server_groups(project)?))
    })?;
    let mut absolute = serde_json::Map::new();
    for (name, quota) in absolute_limit_names(v) {
        absolute.insert(name.into(), json!(q.get(quota).copied().unwrap_or(-1)));
    }
    absolute.insert("totalInstancesUsed".into(), json!(instances));
    absolute.insert("totalCoresUsed".into(), json!(cores));
    absolute.insert("totalRAMUsed".into(), json!(ram));
    absolute.insert("totalServerGroupsUsed".into(), json!(groups));
    if !v.at_least(36) {
        // nova counts neither: floating IPs and groups are neutron's, as in a nova on neutron.
        absolute.insert("totalSecurityGroupsUsed".into(), json!(0));
        absolute.insert("totalFloatingIpsUsed".into(), json!(0));
    }
    Ok(Json(json!({"limits": {"rate": [], "absolute": absolute}})))
}

/// nova's quota set of `project`: its resources at `v` only, with usage when `detail`.
fn quota_view(state: &AppState, project: &str, v: Microversion, detail: bool) -> ApiResult<Value> {
    let (q, (instances, cores, ram), groups) = state.db.with(|db| -> crate::db::Result<_> {
        Ok((db.quota_limits(project)?, db.project_usage(project)?, db.count_server_groups(project)?))
    })?;
    let mut o = json!({ "id": project });
    for k in nova_quota_keys(v) {
        let limit = q.get(k).copied().unwrap_or(-1);
        let used = match k {
            "instances" => instances,
            "cores" => cores,
            "ram" => ram,
            "server_groups" => groups,
            _ => 0,
        };
        o[k] = if detail { json!({"limit": limit, "in_use": used, "reserved": 0}) } else { json!(limit) };
    }
    Ok(o)
}

/// GET /os-quota-sets/{project}/defaults: the default class, whatever the project has set.
pub async fn quota_set_defaults(
    State(state): State<AppState>,
    _auth: Auth,
    v: Microversion,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    let defaults = state.db.with(|db| db.quota_class(crate::db::quotas::DEFAULT_CLASS))?;
    let mut o = json!({ "id": project });
    for k in nova_quota_keys(v) {
        o[k] = json!(defaults.get(k).copied().unwrap_or(-1));
    }
    Ok(Json(json!({ "quota_set": o })))
}

/// DELETE /os-quota-sets/{project}: the project's own limits go; the default class applies.
pub async fn delete_quota_set(
    State(state): State<AppState>,
    auth: Auth,
    Path(project): Path<String>,
) -> ApiResult<axum::http::StatusCode> {
    auth.require_admin()?;
    state.db.with(|db| db.delete_quotas(&project))?;
    Ok(axum::http::StatusCode::ACCEPTED)
}

/// The resources of a quota class at `v`, as nova's quota-class API shows them: the server
/// group ones only from 2.50, which also drops the network ones; 2.57 drops the injected files.
fn quota_class_keys(v: Microversion) -> Vec<&'static str> {
    let mut keys = vec!["instances", "cores", "ram", "metadata_items", "key_pairs"];
    if v.at_least(50) {
        keys.extend(["server_groups", "server_group_members"]);
    } else {
        keys.extend(["floating_ips", "fixed_ips", "security_groups", "security_group_rules"]);
    }
    if !v.at_least(57) {
        keys.extend(["injected_files", "injected_file_content_bytes", "injected_file_path_bytes"]);
    }
    keys
}

fn quota_class_view(state: &AppState, class: &str, v: Microversion) -> ApiResult<serde_json::Map<String, Value>> {
    let limits = state.db.with(|db| db.quota_class(class))?;
    Ok(quota_class_keys(v).into_iter().map(|k| (k.to_string(), json!(limits.get(k).copied().unwrap_or(-1)))).collect())
}

/// GET /os-quota-class-sets/{class}: a class's limits (`default` is every project's default).
pub async fn quota_class_set(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(class): Path<String>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let mut o = quota_class_view(&state, &class, v)?;
    o.insert("id".into(), json!(class));
    Ok(Json(json!({ "quota_class_set": o })))
}

/// PUT /os-quota-class-sets/{class}: admins change a class's limits (-1 is unlimited).
pub async fn update_quota_class_set(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(class): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    if class.is_empty() || class.len() > 255 {
        return Err(ApiError::bad_request("The quota class name must be 1 to 255 characters."));
    }
    let (body, _) = parse_body::<Value>(body)?;
    let set = body
        .get("quota_class_set")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("'quota_class_set' is a required property"))?;
    let known = quota_class_keys(v);
    let mut changes = Vec::new();
    for (k, val) in set {
        if !known.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("Additional properties are not allowed ('{k}' was unexpected)")));
        }
        let n = val
            .as_i64()
            .or_else(|| val.as_str().and_then(|s| s.parse().ok()))
            .filter(|n| *n >= -1 && *n <= i32::MAX as i64)
            .ok_or_else(|| ApiError::bad_request(format!("Invalid input for field/attribute {k}: {val}")))?;
        changes.push((k.clone(), n));
    }
    state.db.tx(|db| -> crate::db::Result<()> {
        for (k, n) in &changes {
            db.set_quota_class(&class, k, *n)?;
        }
        Ok(())
    })?;
    Ok(Json(json!({ "quota_class_set": quota_class_view(&state, &class, v)? })))
}

pub async fn quota_set(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    own_quota_set(&state, &auth, v, &project, false)
}

pub async fn quota_set_detail(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    own_quota_set(&state, &auth, v, &project, true)
}

/// A project reads its own quotas; admins read anyone's.
fn own_quota_set(
    state: &AppState,
    auth: &Auth,
    v: Microversion,
    project: &str,
    detail: bool,
) -> ApiResult<Json<Value>> {
    if project != auth.project_id() {
        auth.require_admin()?;
    }
    Ok(Json(json!({"quota_set": quota_view(state, project, v, detail)?})))
}

/// PUT /os-quota-sets/{project}: admins set a project's limits (-1 is unlimited).
pub async fn update_quota_set(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(project): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let (body, _) = parse_body::<Value>(body)?;
    let set = body
        .get("quota_set")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("'quota_set' is a required property"))?;
    let known = nova_quota_keys(v);
    let mut changes = Vec::new();
    for (k, val) in set {
        if k == "force" {
            continue;
        }
        if !known.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("Additional properties are not allowed ('{k}' was unexpected)")));
        }
        let n = val
            .as_i64()
            .or_else(|| val.as_str().and_then(|s| s.parse().ok()))
            .filter(|n| *n >= -1 && *n <= i32::MAX as i64)
            .ok_or_else(|| ApiError::bad_request(format!("Invalid input for field/attribute {k}: {val}")))?;
        changes.push((k.clone(), n));
    }
    if state.db.with(|db| db.project_by_id(&project))?.is_none() {
        return Err(ApiError::bad_request(format!("Project {project} could not be found.")));
    }
    state.db.tx(|db| -> crate::db::Result<()> {
        for (k, n) in &changes {
            db.set_quota(&project, k, *n)?;
        }
        Ok(())
    })?;
    let mut view = quota_view(&state, &project, v, false)?;
    if let Some(o) = view.as_object_mut() {
        o.remove("id");
    }
    Ok(Json(json!({ "quota_set": view })))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use serde_json::{json, Value};

    use crate::api::testing::{Cloud, Reply};

    async fn at(c: &Cloud, method: Method, uri: &str, token: &str, version: &str, body: Option<Value>) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("x-auth-token", token)
            .header("openstack-api-version", format!("compute {version}"))
            .header("content-type", "application/json");
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        c.send(req.body(body).unwrap()).await
    }

    /// Exactly the keys of a tempest schema whose `additionalProperties` is false: all of
    /// `required`, any of `optional`, nothing else.
    fn assert_schema(what: &str, o: &Value, required: &[&str], optional: &[&str]) {
        let keys: Vec<&str> =
            o.as_object().unwrap_or_else(|| panic!("{what}: {o}")).keys().map(String::as_str).collect();
        for k in required {
            assert!(keys.contains(k), "{what}: required key {k} missing from {o}");
        }
        for k in &keys {
            assert!(required.contains(k) || optional.contains(k), "{what}: key {k} is not in the schema: {o}");
        }
    }

    /// tempest's compute quotas schemas: v2_1/quotas.py `get_quota_set`'s required keys
    /// (`id` aside), less what v2_36 and v2_57 remove; server groups are optional there.
    fn quota_required(minor: u32) -> Vec<&'static str> {
        let mut keys = vec!["instances", "cores", "ram", "metadata_items", "key_pairs"];
        if minor < 36 {
            keys.extend(["floating_ips", "fixed_ips", "security_groups", "security_group_rules"]);
        }
        if minor < 57 {
            keys.extend(["injected_files", "injected_file_content_bytes", "injected_file_path_bytes"]);
        }
        keys
    }
    const QUOTA_OPTIONAL: &[&str] = &["server_groups", "server_group_members"];

    /// v2_1/limits.py's required absolute limits, less what v2_36, v2_39 and v2_57 remove.
    fn limits_required(minor: u32) -> Vec<&'static str> {
        let mut keys = vec![
            "maxServerMeta",
            "maxTotalCores",
            "maxTotalInstances",
            "maxTotalKeypairs",
            "maxTotalRAMSize",
            "totalCoresUsed",
            "totalInstancesUsed",
            "totalRAMUsed",
        ];
        if minor < 36 {
            keys.extend([
                "maxSecurityGroupRules",
                "maxSecurityGroups",
                "maxTotalFloatingIps",
                "totalFloatingIpsUsed",
                "totalSecurityGroupsUsed",
            ]);
        }
        if minor < 39 {
            keys.push("maxImageMeta");
        }
        if minor < 57 {
            keys.extend(["maxPersonality", "maxPersonalitySize"]);
        }
        keys
    }
    const LIMITS_OPTIONAL: &[&str] = &["maxServerGroupMembers", "maxServerGroups", "totalServerGroupsUsed"];

    #[tokio::test]
    async fn a_hypervisors_cpu_info_is_a_string_before_2_28_and_an_object_after() {
        let c = Cloud::new();
        let admin = c.token("admin").await;
        let report = crate::db::services::NodeReport {
            hypervisor_hostname: "vm".into(),
            hypervisor_type: "fake".into(),
            hypervisor_version: 1,
            accel: "none".into(),
            host_ip: "127.0.0.1".into(),
            vcpus: 2,
            memory_mb: 2048,
            local_gb: 20,
            cpu_allocation_ratio: 16.0,
            ram_allocation_ratio: 1.5,
            disk_allocation_ratio: 1.0,
            reserved_host_memory_mb: 0,
        };
        c.state.db.with(|db| db.upsert_compute_node("vm", &report)).unwrap();
        for (v, want) in [("2.1", json!("{}")), ("2.27", json!("{}")), ("2.28", json!({})), ("2.79", json!({}))] {
            let r = at(&c, Method::GET, "/compute/v2.1/os-hypervisors/detail", &admin, v, None).await;
            assert_eq!(r.status, StatusCode::OK, "{v}: {}", r.text());
            assert_eq!(r.json()["hypervisors"][0]["cpu_info"], want, "{v}");
        }
    }

    #[tokio::test]
    async fn quota_sets_and_limits_have_novas_keys_per_microversion_and_nothing_else() {
        let c = Cloud::new();
        let (demo, admin) = (c.token("demo").await, c.token("admin").await);
        let d = c.demo_project.clone();
        // Rows of all three services for the project: only nova's may show.
        c.state
            .db
            .with(|db| -> crate::db::Result<()> {
                db.set_volume_quota(&d, "volumes", 3)?;
                db.set_network_quota(&d, "port", 4)?;
                db.set_quota(&d, "instances", 5)
            })
            .unwrap();
        for minor in [1, 35, 36, 38, 39, 56, 57, 79] {
            let v = format!("2.{minor}");
            let required = quota_required(minor);
            let r = at(&c, Method::GET, &format!("/compute/v2.1/os-quota-sets/{d}"), &demo, &v, None).await;
            assert_eq!(r.status, StatusCode::OK, "{v}: {}", r.text());
            let q = r.json()["quota_set"].clone();
            assert_schema(&format!("get_quota_set {v}"), &q, &[required.as_slice(), &["id"]].concat(), QUOTA_OPTIONAL);
            assert_eq!(q["instances"], 5, "{v}");
            let r = at(&c, Method::GET, &format!("/compute/v2.1/os-quota-sets/{d}/detail"), &demo, &v, None).await;
            let q = r.json()["quota_set"].clone();
            assert_schema(&format!("details {v}"), &q, &[required.as_slice(), &["id"]].concat(), QUOTA_OPTIONAL);
            for (k, item) in q.as_object().unwrap().iter().filter(|(k, _)| *k != "id") {
                assert_schema(k, item, &["reserved", "limit", "in_use"], &[]);
            }
            let r = at(&c, Method::GET, &format!("/compute/v2.1/os-quota-sets/{d}/defaults"), &demo, &v, None).await;
            let q = r.json()["quota_set"].clone();
            assert_schema(&format!("defaults {v}"), &q, &[required.as_slice(), &["id"]].concat(), QUOTA_OPTIONAL);
            assert_eq!(q["instances"], 10, "{v}: the defaults, not the project's");

            let r = at(&c, Method::GET, "/compute/v2.1/limits", &demo, &v, None).await;
            let limits = r.json()["limits"].clone();
            assert_schema(&format!("limits {v}"), &limits, &["absolute", "rate"], &[]);
            assert_schema(&format!("absolute {v}"), &limits["absolute"], &limits_required(minor), LIMITS_OPTIONAL);
            assert_eq!(limits["absolute"]["maxTotalInstances"], 5);

            let body = json!({"quota_set": {"cores": 30}});
            let url = format!("/compute/v2.1/os-quota-sets/{d}");
            let r = at(&c, Method::PUT, &url, &admin, &v, Some(body)).await;
            assert_eq!(r.status, StatusCode::OK, "{v}: {}", r.text());
            assert_schema(&format!("update_quota_set {v}"), &r.json()["quota_set"], &required, QUOTA_OPTIONAL);
        }
        // What a microversion dropped, it no longer takes.
        let url = format!("/compute/v2.1/os-quota-sets/{d}");
        let r = at(&c, Method::PUT, &url, &admin, "2.36", Some(json!({"quota_set": {"floating_ips": 3}}))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        let r = at(&c, Method::PUT, &url, &admin, "2.35", Some(json!({"quota_set": {"floating_ips": 3}}))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["quota_set"]["floating_ips"], 3);
        let r = at(&c, Method::PUT, &url, &admin, "2.1", Some(json!({"quota_set": {"volumes": 3}}))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "cinder's resource is not nova's: {}", r.text());
    }

    fn report(name: &str) -> crate::db::services::NodeReport {
        crate::db::services::NodeReport {
            hypervisor_hostname: name.into(),
            hypervisor_type: "fake".into(),
            hypervisor_version: 1,
            accel: "none".into(),
            host_ip: "127.0.0.1".into(),
            vcpus: 4,
            memory_mb: 4096,
            local_gb: 40,
            cpu_allocation_ratio: 1.0,
            ram_allocation_ratio: 1.0,
            disk_allocation_ratio: 1.0,
            reserved_host_memory_mb: 0,
        }
    }

    /// nova 2.53's services and hypervisors: nova's binary names and filters, the hostname
    /// pattern (not with paging, 404 when nothing matches) and `with_servers`.
    #[tokio::test]
    async fn services_and_hypervisors_take_novas_2_53_queries() {
        let c = Cloud::new();
        let admin = c.token("admin").await;
        let placed = c
            .state
            .db
            .with(|db| -> crate::db::Result<String> {
                for h in ["alpha", "beta"] {
                    db.service_heartbeat(h, crate::compute::BINARY, &format!("compute.{h}"))?;
                    db.upsert_compute_node(h, &report(&format!("{h}.node")))?;
                }
                db.service_heartbeat("alpha", crate::scheduler::BINARY, "scheduler")?;
                let i = db.create_instance(&crate::db::instances::tests::new_instance(db, "on-beta"))?;
                let u = crate::db::instances::InstanceUpdate { host: Some("beta".into()), ..Default::default() };
                db.update_instance(&i.uuid, &u)?.map_err(|e| crate::db::DbError::Conflict(format!("{e:?}")))?;
                Ok(i.uuid)
            })
            .unwrap();
        let get = |uri: String| {
            let admin = admin.clone();
            let c = &c;
            async move { at(c, Method::GET, &uri, &admin, "2.53", None).await }
        };

        let r = get("/compute/v2.1/os-services?binary=nova-compute".into()).await;
        let services = r.json()["services"].clone();
        let hosts: Vec<&str> = services.as_array().unwrap().iter().filter_map(|s| s["host"].as_str()).collect();
        assert_eq!(hosts, ["alpha", "beta"], "{services}");
        let r = get("/compute/v2.1/os-services?host=alpha&binary=nova-scheduler".into()).await;
        let services = r.json()["services"].clone();
        assert_eq!(services.as_array().map(Vec::len), Some(1), "{services}");
        assert_eq!(
            (services[0]["binary"].as_str(), services[0]["zone"].as_str()),
            (Some("nova-scheduler"), Some("internal"))
        );

        let r = get("/compute/v2.1/os-hypervisors?hypervisor_hostname_pattern=bet".into()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let list = r.json()["hypervisors"].clone();
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
        assert_eq!(list[0]["hypervisor_hostname"], "beta.node");
        assert!(list[0].get("servers").is_none(), "only with with_servers: {list}");
        let r = get("/compute/v2.1/os-hypervisors?hypervisor_hostname_pattern=gamma".into()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
        assert_eq!(r.json()["itemNotFound"]["message"], "No hypervisor matching 'gamma' could be found.");
        let r = get("/compute/v2.1/os-hypervisors?hypervisor_hostname_pattern=a&limit=1".into()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());

        let r = get("/compute/v2.1/os-hypervisors/detail?with_servers=true".into()).await;
        let list = r.json()["hypervisors"].clone();
        let beta = list.as_array().unwrap().iter().find(|h| h["hypervisor_hostname"] == "beta.node").cloned().unwrap();
        assert_eq!(beta["servers"][0]["uuid"], placed.as_str(), "{beta}");
        let alpha =
            list.as_array().unwrap().iter().find(|h| h["hypervisor_hostname"] == "alpha.node").cloned().unwrap();
        assert!(alpha.get("servers").is_none(), "nova leaves it out before 2.75: {alpha}");
        let r = get("/compute/v2.1/os-hypervisors?with_servers=maybe".into()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());

        // Paging by uuid: the one after the first.
        let r = get("/compute/v2.1/os-hypervisors".into()).await;
        let all = r.json()["hypervisors"].clone();
        let first = all[0]["id"].as_str().unwrap().to_string();
        let r = get(format!("/compute/v2.1/os-hypervisors?limit=1&marker={first}")).await;
        let page = r.json()["hypervisors"].clone();
        assert_eq!(page.as_array().map(Vec::len), Some(1), "{page}");
        assert_eq!(page[0]["id"], all[1]["id"]);
        let show = get(format!("/compute/v2.1/os-hypervisors/{}?with_servers=1", beta["id"].as_str().unwrap())).await;
        assert_eq!(show.json()["hypervisor"]["servers"][0]["uuid"], placed.as_str(), "{}", show.text());
    }
}
