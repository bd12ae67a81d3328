//! Flavors: list, detail, show; create, delete and extra specs for admins.

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
use crate::api::{base_url, AppState};
use crate::db::flavors::{Flavor, NewFlavor};

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(rename = "minRam")]
    min_ram: Option<i64>,
    #[serde(rename = "minDisk")]
    min_disk: Option<i64>,
    is_public: Option<String>,
    limit: Option<usize>,
    marker: Option<String>,
}

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

fn listed(state: &AppState, q: &ListQuery) -> ApiResult<Vec<(Flavor, BTreeMap<String, String>)>> {
    let all = state.db.with(|db| -> crate::db::Result<Vec<(Flavor, BTreeMap<String, String>)>> {
        let mut out = Vec::new();
        for f in db.flavors()? {
            let specs = db.flavor_extra_specs(f.id)?;
            out.push((f, specs));
        }
        Ok(out)
    })?;
    let public_filter = match q.is_public.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("true") | Some("1") | Some("yes") => Some(true),
        Some("false") | Some("0") | Some("no") => Some(false),
        Some("none") => None,
        Some(other) => return Err(ApiError::bad_request(format!("Invalid is_public filter [{other}]"))),
    };
    let mut out: Vec<_> = all
        .into_iter()
        .filter(|(f, _)| q.min_ram.is_none_or(|m| f.memory_mb >= m))
        .filter(|(f, _)| q.min_disk.is_none_or(|m| f.root_gb >= m))
        .filter(|(f, _)| public_filter.is_none_or(|p| f.is_public == p))
        .collect();
    if let Some(marker) = &q.marker {
        let pos = out
            .iter()
            .position(|(f, _)| &f.flavorid == marker)
            .ok_or_else(|| ApiError::bad_request(format!("marker [{marker}] not found")))?;
        out.drain(..=pos);
    }
    if let Some(l) = q.limit {
        out.truncate(l);
    }
    Ok(out)
}

pub async fn list(
    headers: HeaderMap,
    State(state): State<AppState>,
    _auth: Auth,
    v: Microversion,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    flavor_list(&headers, &state, v, &q, false)
}

pub async fn list_detail(
    headers: HeaderMap,
    State(state): State<AppState>,
    _auth: Auth,
    v: Microversion,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    flavor_list(&headers, &state, v, &q, true)
}

fn flavor_list(
    headers: &HeaderMap,
    state: &AppState,
    v: Microversion,
    q: &ListQuery,
    detail: bool,
) -> ApiResult<Json<Value>> {
    let base = base_url(headers, &state.config);
    let flavors: Vec<Value> = listed(state, q)?.iter().map(|(f, s)| view(f, Some(s), &base, v, detail)).collect();
    Ok(Json(json!({ "flavors": flavors })))
}

fn find(state: &AppState, id: &str) -> ApiResult<(Flavor, BTreeMap<String, String>)> {
    state
        .db
        .with(|db| -> crate::db::Result<Option<(Flavor, BTreeMap<String, String>)>> {
            match db.flavor_by_flavorid(id)? {
                Some(f) => {
                    let specs = db.flavor_extra_specs(f.id)?;
                    Ok(Some((f, specs)))
                }
                None => Ok(None),
            }
        })?
        .ok_or_else(|| ApiError::not_found(format!("Flavor {id} could not be found.")))
}

pub async fn show(
    headers: HeaderMap,
    State(state): State<AppState>,
    _auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (f, specs) = find(&state, &id)?;
    Ok(Json(json!({"flavor": view(&f, Some(&specs), &base_url(&headers, &state.config), v, true)})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    flavor: NewFlavorBody,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFlavorBody {
    name: String,
    ram: i64,
    vcpus: i64,
    disk: i64,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "OS-FLV-EXT-DATA:ephemeral")]
    ephemeral: Option<i64>,
    #[serde(default)]
    swap: Option<i64>,
    #[serde(default)]
    rxtx_factor: Option<f64>,
    #[serde(default, rename = "os-flavor-access:is_public")]
    is_public: Option<bool>,
    #[serde(default)]
    description: Option<String>,
}

pub async fn create(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let (_, CreateBody { flavor: b }) = parse_body::<CreateBody>(body)?;
    let name = b.name.trim();
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::bad_request("Invalid input for field/attribute name: must be 1 to 255 characters."));
    }
    for (field, value, min) in [("ram", b.ram, 1), ("vcpus", b.vcpus, 1), ("disk", b.disk, 0)] {
        if value < min || value > i32::MAX as i64 {
            return Err(ApiError::bad_request(format!("Invalid input for field/attribute {field}: {value}")));
        }
    }
    let id = b.id.filter(|i| !i.is_empty() && i != "auto").unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if id.len() > 255 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_. ".contains(c)) {
        return Err(ApiError::bad_request("Invalid input for field/attribute id."));
    }
    let new = NewFlavor {
        flavorid: &id,
        name,
        memory_mb: b.ram,
        vcpus: b.vcpus,
        root_gb: b.disk,
        ephemeral_gb: b.ephemeral.unwrap_or(0).max(0),
        swap: b.swap.unwrap_or(0).max(0),
        rxtx_factor: b.rxtx_factor.unwrap_or(1.0),
        is_public: b.is_public.unwrap_or(true),
        description: b.description.as_deref(),
    };
    let f = state.db.with(|db| db.create_flavor(&new)).map_err(|e| match e {
        crate::db::DbError::Conflict(_) => {
            ApiError::conflict(format!("Flavor with name {name} or ID {id} already exists."))
        }
        other => other.into(),
    })?;
    Ok(Json(json!({"flavor": view(&f, None, &base_url(&headers, &state.config), v, true)})))
}

pub async fn delete(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    auth.require_admin()?;
    if state.db.with(|db| db.delete_flavor(&id))? {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(ApiError::not_found(format!("Flavor {id} could not be found.")))
    }
}

pub async fn extra_specs(State(state): State<AppState>, _auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let (_, specs) = find(&state, &id)?;
    Ok(Json(json!({ "extra_specs": specs })))
}

pub async fn extra_spec(
    State(state): State<AppState>,
    _auth: Auth,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (_, specs) = find(&state, &id)?;
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
    auth.require_admin()?;
    let (_, SpecsBody { extra_specs }) = parse_body::<SpecsBody>(body)?;
    if extra_specs.keys().any(|k| k.is_empty() || k.len() > 255) || extra_specs.values().any(|v| v.len() > 255) {
        return Err(ApiError::bad_request("Extra spec keys and values must be 1 to 255 characters."));
    }
    let (f, _) = find(&state, &id)?;
    state.db.with(|db| db.set_flavor_extra_specs(f.id, &extra_specs))?;
    Ok(Json(json!({ "extra_specs": extra_specs })))
}

pub async fn delete_extra_spec(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    auth.require_admin()?;
    let (f, _) = find(&state, &id)?;
    if state.db.with(|db| db.delete_flavor_extra_spec(f.id, &key))? {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::not_found(format!("Flavor {id} has no extra specs with key {key}.")))
    }
}
