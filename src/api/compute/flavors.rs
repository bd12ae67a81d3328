//! Flavors: list, detail, show; create, delete and extra specs for admins.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::microversion::Microversion;
use super::{links, parse_body};
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::listing::{self, Dialect, Direction, Page, Params};
use crate::api::{base_url, AppState};
use crate::db::flavors::{Flavor, FlavorSortKey, NewFlavor};
use crate::policy::{Action, Target};

use super::validation;

fn view(f: &Flavor, specs: Option<&BTreeMap<String, String>>, base: &str, v: Microversion, detail: bool) -> Value {
    let mut o = json!({"id": f.flavorid, "name": f.name, "links": links(base, "flavors", &f.flavorid)});
    if v.at_least(55) {
        o["description"] = json!(f.description);
    }
    if detail {
        o["ram"] = json!(f.memory_mb);
        o["disk"] = json!(f.root_gb);
        o["vcpus"] = json!(f.vcpus);
        o["OS-FLV-EXT-DATA:ephemeral"] = json!(f.ephemeral_gb);
        o["OS-FLV-DISABLED:disabled"] = json!(false);
        // Before 2.75 nova showed a swap of 0 as "".
        o["swap"] = if f.swap == 0 && !v.at_least(75) { json!("") } else { json!(f.swap) };
        o["rxtx_factor"] = json!(f.rxtx_factor);
        o["os-flavor-access:is_public"] = json!(f.is_public);
        if v.at_least(61) {
            o["extra_specs"] = json!(specs.cloned().unwrap_or_default());
        }
    }
    o
}

/// A flavor with its extra specs and the projects given access to it (private ones only).
type Listed = (Flavor, BTreeMap<String, String>, Vec<String>);

fn with_details(db: &crate::db::Db, f: Flavor) -> crate::db::Result<Listed> {
    let specs = db.flavor_extra_specs(f.id)?;
    let access = if f.is_public { Vec::new() } else { db.flavor_access(f.id)? };
    Ok((f, specs, access))
}

/// True when the policy lets the caller see every private flavor (nova: admins).
fn sees_private(auth: &Auth) -> bool {
    auth.authorize(Action::ComputeFlavorPrivate, &Target::default()).is_ok()
}

/// Orders two flavors by one of nova's sort keys.
fn compare(a: &Listed, b: &Listed, key: FlavorSortKey) -> Ordering {
    let (a, b) = (&a.0, &b.0);
    match key {
        FlavorSortKey::CreatedAt | FlavorSortKey::Id => a.id.cmp(&b.id),
        FlavorSortKey::Description => a.description.cmp(&b.description),
        FlavorSortKey::EphemeralGb => a.ephemeral_gb.cmp(&b.ephemeral_gb),
        FlavorSortKey::FlavorId => a.flavorid.cmp(&b.flavorid),
        FlavorSortKey::IsPublic => a.is_public.cmp(&b.is_public),
        FlavorSortKey::MemoryMb => a.memory_mb.cmp(&b.memory_mb),
        FlavorSortKey::Name => a.name.cmp(&b.name),
        FlavorSortKey::RootGb => a.root_gb.cmp(&b.root_gb),
        FlavorSortKey::RxtxFactor => a.rxtx_factor.total_cmp(&b.rxtx_factor),
        FlavorSortKey::Swap => a.swap.cmp(&b.swap),
        FlavorSortKey::Vcpus => a.vcpus.cmp(&b.vcpus),
        FlavorSortKey::Disabled | FlavorSortKey::UpdatedAt | FlavorSortKey::VcpuWeight => Ordering::Equal,
    }
}

/// `minRam`/`minDisk` as nova reads them: an integer, or its 400.
fn min_filter(params: &Params, key: &str) -> ApiResult<Option<i64>> {
    params
        .last(key)
        .map(|v| v.trim().parse::<i64>().map_err(|_| ApiError::bad_request(format!("Invalid {key} filter [{v}]"))))
        .transpose()
}

fn listed(state: &AppState, auth: &Auth, params: &Params) -> ApiResult<Page<Listed>> {
    let min_ram = min_filter(params, "minRam")?;
    let min_disk = min_filter(params, "minDisk")?;
    let paging = listing::paging(params, Dialect::Nova)?;
    // nova sorts flavors by one key, `flavorid` ascending unless asked otherwise.
    let key = params.last("sort_key").unwrap_or("flavorid");
    let dir = listing::direction(params.last("sort_dir").unwrap_or("asc"), Dialect::Nova)?;
    let sort: Vec<(FlavorSortKey, Direction)> = listing::typed_sort(vec![(key.to_string(), dir)], Dialect::Nova)?;
    let all = state.db.with(|db| -> crate::db::Result<Vec<Listed>> {
        db.flavors()?.into_iter().map(|f| with_details(db, f)).collect()
    })?;
    // nova honours `is_public` for admins only; others always get the public flavors and the
    // private ones their project may use.
    // Admins' values are read as oslo's strict `bool_from_string`, and `none` is every flavor.
    let is_public = params.last("is_public");
    let public_filter = match is_public.map(|p| p.trim().to_ascii_lowercase()).as_deref() {
        _ if !sees_private(auth) => Some(true),
        None | Some("1" | "t" | "true" | "on" | "y" | "yes") => Some(true),
        Some("0" | "f" | "false" | "off" | "n" | "no") => Some(false),
        Some("none") => None,
        Some(_) => {
            return Err(ApiError::bad_request(format!("Invalid is_public filter [{}]", is_public.unwrap_or_default())));
        }
    };
    let mine = |access: &[String]| access.iter().any(|p| p == auth.project_id());
    let mut out: Vec<_> = all
        .into_iter()
        .filter(|(f, _, _)| min_ram.is_none_or(|m| f.memory_mb >= m))
        .filter(|(f, _, _)| min_disk.is_none_or(|m| f.root_gb >= m))
        .filter(|(f, _, access)| match public_filter {
            Some(true) => f.is_public || mine(access),
            Some(false) => !f.is_public,
            None => true,
        })
        .filter(|(f, _, access)| validation::flavor_visible(auth, f, access))
        .collect();
    out.sort_by(|a, b| listing::compare_by(a, b, &sort, compare).then(a.0.id.cmp(&b.0.id)));
    listing::page_by_id(out, &paging, |(f, _, _)| &f.flavorid, |m| Dialect::Nova.marker_not_found("", m))
}

pub async fn list(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    flavor_list(&headers, &state, &auth, v, &Params(q), false)
}

pub async fn list_detail(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    flavor_list(&headers, &state, &auth, v, &Params(q), true)
}

fn flavor_list(
    headers: &HeaderMap,
    state: &AppState,
    auth: &Auth,
    v: Microversion,
    params: &Params,
    detail: bool,
) -> ApiResult<Json<Value>> {
    let base = base_url(headers, &state.config);
    let page = listed(state, auth, params)?;
    let flavors: Vec<Value> = page.items.iter().map(|(f, s, _)| view(f, Some(s), &base, v, detail)).collect();
    let mut body = json!({ "flavors": flavors });
    let path = if detail { "flavors/detail" } else { "flavors" };
    let last = page.items.last().map(|(f, _, _)| f.flavorid.as_str());
    let url = format!("{base}/compute/v2.1/{path}");
    listing::add_next_link(&mut body, Dialect::Nova, "flavors", &url, params, page.end, last);
    Ok(Json(body))
}

/// A flavor the caller may see and boot, or None: another project's private flavor is "not
/// found", as nova's database query has it.
pub(crate) fn visible_flavor(db: &crate::db::Db, auth: &Auth, flavorid: &str) -> crate::db::Result<Option<Flavor>> {
    let Some(f) = db.flavor_by_flavorid(flavorid)? else { return Ok(None) };
    let (f, _, access) = with_details(db, f)?;
    Ok(validation::flavor_visible(auth, &f, &access).then_some(f))
}

fn find(state: &AppState, auth: &Auth, id: &str) -> ApiResult<Listed> {
    state
        .db
        .with(|db| -> crate::db::Result<Option<Listed>> {
            match visible_flavor(db, auth, id)? {
                Some(f) => Ok(Some(with_details(db, f)?)),
                None => Ok(None),
            }
        })?
        .ok_or_else(|| ApiError::not_found(format!("Flavor {id} could not be found.")))
}

pub async fn show(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (f, specs, _) = find(&state, &auth, &id)?;
    Ok(Json(json!({"flavor": view(&f, Some(&specs), &base_url(&headers, &state.config), v, true)})))
}

/// The fields nova's create schema allows in `flavor`.
const CREATE_KEYS: &[&str] = &[
    "name",
    "ram",
    "vcpus",
    "disk",
    "id",
    "OS-FLV-EXT-DATA:ephemeral",
    "swap",
    "rxtx_factor",
    "os-flavor-access:is_public",
    "description",
];

pub async fn create(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::ComputeFlavorManage, &Target::default())?;
    let (body, _) = parse_body::<Value>(body)?;
    if let Some(k) = body.as_object().and_then(|o| o.keys().find(|k| *k != "flavor")) {
        return Err(ApiError::bad_request(format!("Additional properties are not allowed ('{k}' was unexpected)")));
    }
    let b = body
        .get("flavor")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("'flavor' is a required property"))?;
    if let Some(k) = b.keys().find(|k| !CREATE_KEYS.contains(&k.as_str()) || (*k == "description" && !v.at_least(55))) {
        return Err(ApiError::bad_request(format!("Additional properties are not allowed ('{k}' was unexpected)")));
    }
    let name = match b.get("name") {
        Some(Value::String(n)) => n.as_str(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute name. Value: {other}. {other} is not of type 'string'"
            )))
        }
        None => return Err(ApiError::bad_request("'name' is a required property")),
    };
    validation::name("name", name)?;
    let ram = validation::flavor_int("ram", b.get("ram"), 1, None)?;
    let vcpus = validation::flavor_int("vcpus", b.get("vcpus"), 1, None)?;
    let disk = validation::flavor_int("disk", b.get("disk"), 0, None)?;
    let ephemeral =
        validation::flavor_int("OS-FLV-EXT-DATA:ephemeral", b.get("OS-FLV-EXT-DATA:ephemeral"), 0, Some(0))?;
    let swap = validation::flavor_int("swap", b.get("swap"), 0, Some(0))?;
    let rxtx_factor = validation::rxtx_factor(b.get("rxtx_factor"))?;
    let is_public =
        validation::boolean("os-flavor-access:is_public", b.get("os-flavor-access:is_public"))?.unwrap_or(true);
    let description = match b.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) if d.chars().count() <= 65535 && !d.chars().any(char::is_control) => Some(d.clone()),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute description. Value: {other}. It must be printable text of at most \
                 65535 characters"
            )))
        }
    };
    let id = match b.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute id. Value: {other}. {other} is not of type 'string', 'number', 'null'"
        )))
        }
    };
    if let Some(id) = &id {
        validation::flavor_id(id)?;
    }
    let id = id.filter(|i| i != "auto").unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let new = NewFlavor {
        flavorid: &id,
        name,
        memory_mb: ram,
        vcpus,
        root_gb: disk,
        ephemeral_gb: ephemeral,
        swap,
        rxtx_factor,
        is_public,
        description: description.as_deref(),
    };
    let f = state.db.with(|db| db.create_flavor(&new)).map_err(|e| match e {
        crate::db::DbError::Conflict(_) => {
            ApiError::conflict(format!("Flavor with name {name} or ID {id} already exists."))
        }
        other => other.into(),
    })?;
    Ok(Json(json!({"flavor": view(&f, None, &base_url(&headers, &state.config), v, true)})))
}

/// Deleting a flavor leaves the servers made from it as they are: each keeps its own copy
/// (nova's instance_extra), so they show and run with the flavor they were built with.
pub async fn delete(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    auth.authorize(Action::ComputeFlavorManage, &Target::default())?;
    if state.db.with(|db| db.delete_flavor(&id))? {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(ApiError::not_found(format!("Flavor {id} could not be found.")))
    }
}

pub async fn extra_specs(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let (_, specs, _) = find(&state, &auth, &id)?;
    Ok(Json(json!({ "extra_specs": specs })))
}

pub async fn extra_spec(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (_, specs, _) = find(&state, &auth, &id)?;
    let value = specs
        .get(&key)
        .ok_or_else(|| ApiError::not_found(format!("Flavor {id} has no extra specs with key {key}.")))?;
    Ok(Json(json!({ key: value })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecsBody {
    extra_specs: BTreeMap<String, String>,
}

pub async fn set_extra_specs(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::ComputeFlavorManage, &Target::default())?;
    let (_, SpecsBody { extra_specs }) = parse_body::<SpecsBody>(body)?;
    if extra_specs.keys().any(|k| k.is_empty() || k.len() > 255) || extra_specs.values().any(|v| v.len() > 255) {
        return Err(ApiError::bad_request("Extra spec keys and values must be 1 to 255 characters."));
    }
    let (f, _, _) = find(&state, &auth, &id)?;
    state.db.with(|db| db.set_flavor_extra_specs(f.id, &extra_specs))?;
    Ok(Json(json!({ "extra_specs": extra_specs })))
}

/// PUT /flavors/{id}/os-extra_specs/{key}: one spec, whose key the body must repeat.
pub async fn set_extra_spec(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, key)): Path<(String, String)>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::ComputeFlavorManage, &Target::default())?;
    let (_, item) = parse_body::<BTreeMap<String, Value>>(body)?;
    if item.len() > 1 {
        return Err(ApiError::bad_request("Request body contains too many items"));
    }
    let Some(value) = item.get(&key) else {
        return Err(ApiError::bad_request("Request body and URI mismatch"));
    };
    // nova's schema takes strings and numbers and booleans, and stores them as text.
    let value = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute {key}. Value: {other}. {other} is not of type 'string', 'number', \
                 'boolean'"
            )))
        }
    };
    if key.is_empty() || key.len() > 255 || value.len() > 255 {
        return Err(ApiError::bad_request("Extra spec keys and values must be 1 to 255 characters."));
    }
    let (f, _, _) = find(&state, &auth, &id)?;
    let one = BTreeMap::from([(key.clone(), value.clone())]);
    state.db.with(|db| db.set_flavor_extra_specs(f.id, &one))?;
    Ok(Json(json!({ key: value })))
}

/// PUT /flavors/{id} (2.55): an admin changes a flavor's description, its one mutable field.
pub async fn update(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    // Below 2.55 nova has no such method, and says 404 as for any versioned one.
    if !v.at_least(55) {
        return Err(ApiError::not_found("The resource could not be found."));
    }
    auth.authorize(Action::ComputeFlavorManage, &Target::default())?;
    let (body, _) = parse_body::<Value>(body)?;
    let b = body
        .get("flavor")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("'flavor' is a required property"))?;
    if let Some(k) = b.keys().find(|k| *k != "description") {
        return Err(ApiError::bad_request(format!("Additional properties are not allowed ('{k}' was unexpected)")));
    }
    let description = match b.get("description") {
        None => return Err(ApiError::bad_request("'description' is a required property")),
        Some(Value::Null) => None,
        Some(Value::String(d)) if d.chars().count() <= 65535 && !d.chars().any(char::is_control) => Some(d.clone()),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute description. Value: {other}. It must be printable text of at most \
                 65535 characters"
            )))
        }
    };
    let (f, specs, _) = find(&state, &auth, &id)?;
    state.db.with(|db| db.set_flavor_description(f.id, description.as_deref()))?;
    let (f, _, _) = find(&state, &auth, &f.flavorid)?;
    Ok(Json(json!({"flavor": view(&f, Some(&specs), &base_url(&headers, &state.config), v, true)})))
}

pub async fn delete_extra_spec(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    auth.authorize(Action::ComputeFlavorManage, &Target::default())?;
    let (f, _, _) = find(&state, &auth, &id)?;
    if state.db.with(|db| db.delete_flavor_extra_spec(f.id, &key))? {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::not_found(format!("Flavor {id} has no extra specs with key {key}.")))
    }
}

/// `GET /flavors/{id}/os-flavor-access`: the projects that may use a private flavor.
pub async fn access_list(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    auth.authorize(Action::ComputeFlavorPrivate, &Target::default())?;
    let (f, _, access) = find(&state, &auth, &id)?;
    if f.is_public {
        return Err(ApiError::not_found("Access list not available for public flavors."));
    }
    Ok(Json(access_view(&f, &access)))
}

fn access_view(f: &Flavor, access: &[String]) -> Value {
    let list: Vec<Value> = access.iter().map(|p| json!({"flavor_id": f.flavorid, "tenant_id": p})).collect();
    json!({ "flavor_access": list })
}

/// `POST /flavors/{id}/action`: `addTenantAccess` and `removeTenantAccess`, nova's way of
/// sharing a private flavor with a project (`openstack flavor set --project`).
pub async fn action(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let (body, _) = parse_body::<Value>(body)?;
    let (add, args) = match (body.get("addTenantAccess"), body.get("removeTenantAccess")) {
        (Some(a), None) => (true, a),
        (None, Some(r)) => (false, r),
        _ => {
            return Err(ApiError::bad_request("Malformed request body: addTenantAccess or removeTenantAccess expected"))
        }
    };
    let action = if add { Action::ComputeFlavorAccessAdd } else { Action::ComputeFlavorAccessRemove };
    auth.authorize(action, &Target::default())?;
    let tenant = args
        .get("tenant")
        .and_then(Value::as_str)
        .filter(|t| (1..=255).contains(&t.len()) && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .ok_or_else(|| ApiError::bad_request("Invalid input for field/attribute tenant: a project id is required"))?;
    let (f, _, _) = find(&state, &auth, &id)?;
    if f.is_public && add {
        return Err(ApiError::conflict("Can not add access to a public flavor."));
    }
    let changed =
        state
            .db
            .with(|db| if add { db.add_flavor_access(f.id, tenant) } else { db.remove_flavor_access(f.id, tenant) });
    match (add, changed) {
        (_, Ok(true)) => {}
        (true, Ok(false)) => {
            return Err(ApiError::conflict(format!(
                "Flavor access already exists for flavor {id} and project {tenant} combination."
            )))
        }
        (false, Ok(false)) => {
            return Err(ApiError::not_found(format!("Flavor access not found for {id} / {tenant} combination.")))
        }
        (_, Err(crate::db::DbError::NotFound(_))) => {
            return Err(ApiError::bad_request(format!("Project ID {tenant} is not a valid project.")))
        }
        (_, Err(e)) => return Err(e.into()),
    }
    let access = state.db.with(|db| db.flavor_access(f.id))?;
    Ok(Json(access_view(&f, &access)))
}
