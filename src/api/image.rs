//! Image v2 (glance): version discovery, images (list with filters, sorting and paging,
//! create, show, JSON-patch update, delete), image data upload and download, tags, members
//! and the JSON schemas clients may read. Errors are glance's plain-text webob bodies.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use super::context::Auth;
use super::fault::{ApiError, ApiResult};
use super::{base_url, AppState};
use crate::db::images::{Image, NewImage};
use crate::images::{self, ImageError, ImageWriter};

pub fn router() -> Router<AppState> {
    Router::new()
        // A fallback of our own, so unknown paths under the prefix get this service's error body.
        .fallback(|| async { ApiError::not_found("The resource could not be found.") })
        .route("/", get(versions))
        .route("/versions", get(versions_explicit))
        .route("/v2", get(versions))
        .route("/v2/", get(versions))
        .route("/v2/images", get(list_images).post(create_image))
        .route("/v2/images/{id}", get(show_image).patch(update_image).delete(delete_image))
        // Image data is bounded by `[images] max_upload_mb`, enforced while streaming, not by
        // the API's general body limit.
        .route("/v2/images/{id}/file", put(upload).get(download).layer(DefaultBodyLimit::disable()))
        .route("/v2/images/{id}/tags/{tag}", put(add_tag).delete(remove_tag))
        .route("/v2/images/{id}/members", get(list_members).post(add_member))
        .route("/v2/images/{id}/members/{member}", get(show_member).put(update_member).delete(remove_member))
        .route("/v2/schemas/image", get(|| async { Json(image_schema()) }))
        .route("/v2/schemas/images", get(|| async { Json(images_schema()) }))
        .route("/v2/schemas/member", get(|| async { Json(member_schema()) }))
        .route("/v2/schemas/members", get(|| async { Json(members_schema()) }))
}

/// glance's defaults for `disk_formats` and `container_formats`.
pub const DISK_FORMATS: &[&str] = &["ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"];
pub const CONTAINER_FORMATS: &[&str] = &["ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"];
const VISIBILITIES: &[&str] = &["public", "community", "shared", "private"];
const STATUSES: &[&str] =
    &["queued", "saving", "active", "killed", "deleted", "pending_delete", "deactivated", "uploading", "importing"];

/// Set by glance itself; clients get 403 for them, as from glance.
const READ_ONLY: &[&str] = &[
    "created_at",
    "updated_at",
    "status",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "size",
    "virtual_size",
    "direct_url",
    "self",
    "file",
    "schema",
    "stores",
];
const RESERVED: &[&str] = &["location", "locations", "deleted", "deleted_at"];

/// The API versions advertised. Up to 2.5 (community visibility); 2.6 and later add the
/// interoperable import API, which novabox does not have.
const VERSIONS: &[&str] = &["v2.5", "v2.4", "v2.3", "v2.2", "v2.1", "v2.0"];

fn versions_doc(base: &str) -> Value {
    let versions: Vec<Value> = VERSIONS
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({
                "id": v,
                "status": if i == 0 { "CURRENT" } else { "SUPPORTED" },
                "links": [{"rel": "self", "href": format!("{base}/image/v2/")}],
            })
        })
        .collect();
    json!({ "versions": versions })
}

/// `GET /`: glance answers 300 Multiple Choices with the versions list.
pub(super) async fn versions(headers: HeaderMap, State(state): State<AppState>) -> Response {
    (StatusCode::MULTIPLE_CHOICES, Json(versions_doc(&base_url(&headers, &state.config)))).into_response()
}

/// `GET /versions` asks for the list explicitly, so glance answers 200.
async fn versions_explicit(headers: HeaderMap, State(state): State<AppState>) -> Json<Value> {
    Json(versions_doc(&base_url(&headers, &state.config)))
}

// ---------------------------------------------------------------------------------------
// Visibility and ownership

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("No image found with ID {id}"))
}

/// glance's rule for seeing one image: admins see all; others see their own, public and
/// community images, and shared images they are a member of (in any member status).
pub fn can_see(auth: &Auth, img: &Image) -> bool {
    if auth.is_admin() || img.owner.as_deref() == Some(auth.project_id()) {
        return true;
    }
    match img.visibility.as_str() {
        "public" | "community" => true,
        "shared" => img.member_status(auth.project_id()).is_some(),
        _ => false,
    }
}

fn load_visible(state: &AppState, auth: &Auth, id: &str) -> ApiResult<Image> {
    let img = state.db.with(|db| db.image_by_id(id))?;
    img.filter(|i| can_see(auth, i)).ok_or_else(|| not_found(id))
}

/// An image the caller may change: 404 when it cannot even see it, 403 when it only can see it.
fn load_owned(state: &AppState, auth: &Auth, id: &str) -> ApiResult<Image> {
    let img = load_visible(state, auth, id)?;
    if auth.is_admin() || img.owner.as_deref() == Some(auth.project_id()) {
        Ok(img)
    } else {
        Err(ApiError::forbidden(format!("You are not permitted to modify image {id}.")))
    }
}

// ---------------------------------------------------------------------------------------
// JSON shapes

fn image_json(img: &Image) -> Value {
    let mut m = Map::new();
    // Extra properties first, so a base attribute can never be shadowed by one.
    for (k, v) in &img.properties {
        m.insert(k.clone(), Value::String(v.clone()));
    }
    let base = json!({
        "id": img.id,
        "name": img.name,
        "status": img.status,
        "visibility": img.visibility,
        "protected": img.protected,
        "disk_format": img.disk_format,
        "container_format": img.container_format,
        "min_disk": img.min_disk,
        "min_ram": img.min_ram,
        "size": img.size,
        "virtual_size": img.virtual_size,
        "checksum": img.checksum,
        "os_hash_algo": img.os_hash_algo,
        "os_hash_value": img.os_hash_value,
        "owner": img.owner,
        "tags": img.tags.iter().collect::<Vec<_>>(),
        "created_at": img.created_at,
        "updated_at": img.updated_at,
        "self": format!("/v2/images/{}", img.id),
        "file": format!("/v2/images/{}/file", img.id),
        "schema": "/v2/schemas/image",
    });
    if let Value::Object(b) = base {
        m.extend(b);
    }
    Value::Object(m)
}

fn image_response(status: StatusCode, img: &Image) -> Response {
    (status, Json(image_json(img))).into_response()
}

// ---------------------------------------------------------------------------------------
// Validation shared by create and update

fn schema_error(message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Provided object does not match schema 'image': {message}"))
}

fn check_writable_key(key: &str) -> ApiResult<()> {
    if READ_ONLY.contains(&key) {
        return Err(ApiError::forbidden(format!("Attribute '{key}' is read-only.")));
    }
    if RESERVED.contains(&key) || key.starts_with("os_glance") {
        return Err(ApiError::forbidden(format!("Attribute '{key}' is reserved.")));
    }
    Ok(())
}

fn enum_value(v: &Value, allowed: &[&str], nullable: bool) -> ApiResult<Option<String>> {
    match v {
        Value::Null if nullable => Ok(None),
        Value::String(s) if allowed.contains(&s.as_str()) => Ok(Some(s.clone())),
        other => Err(schema_error(format!("{other} is not one of {allowed:?}"))),
    }
}

fn non_negative(key: &str, v: &Value) -> ApiResult<i64> {
    v.as_i64().filter(|n| *n >= 0).ok_or_else(|| schema_error(format!("{key}: {v} is not a non-negative integer")))
}

/// A NUL cannot be stored faithfully by the databases glance runs on (PostgreSQL refuses it,
/// C clients cut the string there), so a text field holding one is refused before it is stored.
fn without_nul<'a>(key: &str, s: &'a str) -> ApiResult<&'a str> {
    if s.contains('\0') {
        return Err(schema_error(format!("{key}: {s:?} contains a NUL character")));
    }
    Ok(s)
}

fn name_value(v: &Value) -> ApiResult<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.len() <= 255 => Ok(Some(without_nul("name", s)?.to_string())),
        other => Err(schema_error(format!("name: {other} is not a string of at most 255"))),
    }
}

fn string_property(key: &str, v: &Value) -> ApiResult<String> {
    if key.is_empty() || key.len() > 255 {
        return Err(schema_error(format!("property name {key:?} must have 1 to 255 characters")));
    }
    without_nul("property name", key)?;
    match v {
        Value::String(s) if s.len() <= 65535 => Ok(without_nul(key, s)?.to_string()),
        other => Err(schema_error(format!("{key}: {other} is not of type 'string'"))),
    }
}

fn tags_value(v: &Value) -> ApiResult<BTreeSet<String>> {
    let arr = v.as_array().ok_or_else(|| schema_error(format!("tags: {v} is not of type 'array'")))?;
    arr.iter()
        .map(|t| match t.as_str() {
            Some(s) if !s.is_empty() && s.len() <= 255 => Ok(without_nul("tags", s)?.to_string()),
            _ => Err(schema_error(format!("tags: {t} is not a string of 1 to 255 characters"))),
        })
        .collect()
}

fn visibility_value(auth: &Auth, v: &Value) -> ApiResult<String> {
    let vis = enum_value(v, VISIBILITIES, false)?.unwrap_or_default();
    if vis == "public" {
        auth.authorize(crate::policy::Action::ImagePublicize, &crate::policy::Target::default())?;
    }
    Ok(vis)
}

fn owner_value(auth: &Auth, v: &Value) -> ApiResult<Option<String>> {
    let owner = match v {
        Value::Null => None,
        Value::String(s) if s.len() <= 255 => Some(s.clone()),
        other => return Err(schema_error(format!("owner: {other} is not of type 'string'"))),
    };
    if !auth.is_admin() && owner.as_deref() != Some(auth.project_id()) {
        return Err(ApiError::forbidden(format!(
            "You are not permitted to create or change images owned by '{}'.",
            owner.unwrap_or_default()
        )));
    }
    Ok(owner)
}

fn parse_json_body(body: &Bytes) -> ApiResult<Value> {
    serde_json::from_slice(body).map_err(|_| ApiError::bad_request("Malformed JSON in request body."))
}

// ---------------------------------------------------------------------------------------
// Create, show, delete

async fn create_image(State(state): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let Value::Object(body) = parse_json_body(&body)? else {
        return Err(ApiError::bad_request("Request body must be a JSON object."));
    };
    let mut new =
        NewImage { owner: Some(auth.project_id().to_string()), visibility: "shared".into(), ..NewImage::default() };
    for (key, v) in &body {
        check_writable_key(key)?;
        match key.as_str() {
            "id" => {
                let id = v.as_str().filter(|s| uuid::Uuid::parse_str(s).is_ok());
                new.id = Some(id.ok_or_else(|| schema_error(format!("id: {v} is not a valid uuid")))?.to_string());
            }
            "name" => new.name = name_value(v)?,
            "visibility" => new.visibility = visibility_value(&auth, v)?,
            "protected" => {
                new.protected = v.as_bool().ok_or_else(|| schema_error(format!("{v} is not of type 'boolean'")))?
            }
            "disk_format" => new.disk_format = enum_value(v, DISK_FORMATS, true)?,
            "container_format" => new.container_format = enum_value(v, CONTAINER_FORMATS, true)?,
            "min_disk" => new.min_disk = non_negative(key, v)?,
            "min_ram" => new.min_ram = non_negative(key, v)?,
            "tags" => new.tags = tags_value(v)?,
            "owner" => new.owner = owner_value(&auth, v)?,
            _ => {
                new.properties.insert(key.clone(), string_property(key, v)?);
            }
        }
    }
    let img = state.db.with(|db| db.create_image(&new))?;
    tracing::info!(image_id = %img.id, name = ?img.name, "image created");
    Ok(image_response(StatusCode::CREATED, &img))
}

async fn show_image(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Response> {
    let img = load_visible(&state, &auth, &id)?;
    Ok(image_response(StatusCode::OK, &img))
}

async fn delete_image(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let img = load_owned(&state, &auth, &id)?;
    if img.protected {
        return Err(ApiError::forbidden(format!("Image {id} is protected and cannot be deleted.")));
    }
    let file = state.db.with(|db| db.delete_image(&id))?;
    if let Some(rel) = file {
        if let Err(e) = images::remove_file(&state.home, &rel) {
            // The record is gone; a leftover file only costs space, so say so and go on.
            tracing::warn!(image_id = %id, error = %e, "could not remove the data file of a deleted image");
        }
    }
    tracing::info!(image_id = %id, "image deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// List

const SORT_KEYS: &[&str] = &[
    "name",
    "status",
    "container_format",
    "disk_format",
    "size",
    "id",
    "created_at",
    "updated_at",
    "visibility",
    "owner",
    "min_disk",
    "min_ram",
    "virtual_size",
    "protected",
];
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 1000;

/// A parsed `GET /v2/images` query.
#[derive(Debug, Default, PartialEq)]
pub struct ListQuery {
    pub limit: usize,
    pub marker: Option<String>,
    pub sort: Vec<(String, bool)>,
    pub visibility: Option<String>,
    pub member_status: String,
    /// Attribute and property filters: key, accepted values (`in:a,b` gives several).
    pub equals: Vec<(String, Vec<String>)>,
    pub tags: Vec<String>,
    pub size_min: Option<i64>,
    pub size_max: Option<i64>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

fn values_of(v: &str) -> Vec<String> {
    match v.strip_prefix("in:") {
        Some(list) => list.split(',').map(|s| s.trim_matches('"').to_string()).collect(),
        None => vec![v.to_string()],
    }
}

pub fn parse_list_query(pairs: &[(String, String)]) -> ApiResult<ListQuery> {
    let mut q = ListQuery { limit: DEFAULT_LIMIT, member_status: "accepted".into(), ..ListQuery::default() };
    let mut sort_keys: Vec<String> = Vec::new();
    let mut sort_dirs: Vec<String> = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "limit" => {
                let n: i64 = v.parse().map_err(|_| bad("limit param must be an integer"))?;
                if n < 0 {
                    return Err(bad("limit param must be positive"));
                }
                q.limit = (n as usize).min(MAX_LIMIT);
            }
            "marker" => q.marker = Some(v.clone()),
            "sort_key" => sort_keys.extend(v.split(',').map(str::to_string)),
            "sort_dir" => sort_dirs.extend(v.split(',').map(str::to_string)),
            "sort" => {
                for part in v.split(',') {
                    let (key, dir) = part.split_once(':').unwrap_or((part, "desc"));
                    q.sort.push((key.trim().to_string(), dir_is_asc(dir.trim())?));
                }
            }
            "visibility" => {
                if !VISIBILITIES.contains(&v.as_str()) && v != "all" {
                    return Err(bad(format!("Invalid visibility value: {v}")));
                }
                q.visibility = Some(v.clone());
            }
            "member_status" => {
                if !["pending", "accepted", "rejected", "all"].contains(&v.as_str()) {
                    return Err(bad(format!("Invalid status: {v}")));
                }
                q.member_status = v.clone();
            }
            "status" => {
                let vals = values_of(v);
                if let Some(s) = vals.iter().find(|s| !STATUSES.contains(&s.as_str())) {
                    return Err(bad(format!("Invalid status value: {s}")));
                }
                q.equals.push((k.clone(), vals));
            }
            "tag" => q.tags.push(v.clone()),
            "size_min" | "size_max" => {
                let n: i64 = v.parse().map_err(|_| bad(format!("Invalid value for {k}: {v}")))?;
                if k == "size_min" {
                    q.size_min = Some(n);
                } else {
                    q.size_max = Some(n);
                }
            }
            "protected" => {
                if v != "true" && v != "false" {
                    return Err(bad(format!("Invalid value for protected: {v}")));
                }
                q.equals.push((k.clone(), vec![v.clone()]));
            }
            // novabox has no hidden images: `os_hidden=true` lists none, anything else all.
            "os_hidden" => {
                if v == "true" {
                    q.equals.push(("id".into(), Vec::new()));
                }
            }
            _ => q.equals.push((k.clone(), values_of(v))),
        }
    }
    if !sort_keys.is_empty() || !sort_dirs.is_empty() {
        if !q.sort.is_empty() {
            return Err(bad("The 'sort' parameter cannot be combined with 'sort_key' or 'sort_dir'."));
        }
        if sort_dirs.len() > 1 && sort_dirs.len() != sort_keys.len() {
            return Err(bad("Number of sort dirs does not match the number of sort keys"));
        }
        let keys = if sort_keys.is_empty() { vec!["created_at".to_string()] } else { sort_keys };
        for (i, key) in keys.into_iter().enumerate() {
            let dir = sort_dirs.get(i).or(sort_dirs.first()).map(String::as_str).unwrap_or("desc");
            q.sort.push((key, dir_is_asc(dir)?));
        }
    }
    for (key, _) in &q.sort {
        if !SORT_KEYS.contains(&key.as_str()) {
            return Err(bad(format!(
                "Invalid sort key: {key}. It must be one of the following: {}.",
                SORT_KEYS.join(", ")
            )));
        }
    }
    if q.sort.is_empty() {
        q.sort.push(("created_at".into(), false));
    }
    // A stable order across pages needs a unique last key.
    if !q.sort.iter().any(|(k, _)| k == "id") {
        let dir = q.sort.last().map(|s| s.1).unwrap_or(false);
        q.sort.push(("id".into(), dir));
    }
    Ok(q)
}

fn dir_is_asc(dir: &str) -> ApiResult<bool> {
    match dir {
        "asc" => Ok(true),
        "desc" => Ok(false),
        other => Err(bad(format!("Invalid sort direction: {other}"))),
    }
}

/// An attribute as a string for equality filters; `None` when the image does not have it.
fn attr(img: &Image, key: &str) -> Option<String> {
    match key {
        "id" => Some(img.id.clone()),
        "name" => img.name.clone(),
        "owner" => img.owner.clone(),
        "status" => Some(img.status.clone()),
        "disk_format" => img.disk_format.clone(),
        "container_format" => img.container_format.clone(),
        "protected" => Some(img.protected.to_string()),
        "checksum" => img.checksum.clone(),
        "os_hash_value" => img.os_hash_value.clone(),
        "min_disk" => Some(img.min_disk.to_string()),
        "min_ram" => Some(img.min_ram.to_string()),
        other => img.properties.get(other).cloned(),
    }
}

/// Whether `img` is in the list `auth` asked for, by glance's rules: without a visibility
/// filter a project lists its own, public, and shared-with-it (accepted) images; community
/// images appear only when asked for. Admins list everything.
fn listed(auth: &Auth, q: &ListQuery, img: &Image) -> bool {
    let me = auth.project_id();
    let mine = img.owner.as_deref() == Some(me);
    let member_ok = |img: &Image| match img.member_status(me) {
        Some(s) => q.member_status == "all" || q.member_status == s,
        None => false,
    };
    let visible = match q.visibility.as_deref() {
        None | Some("all") if auth.is_admin() => true,
        None => mine || img.visibility == "public" || (img.visibility == "shared" && member_ok(img)),
        Some("all") => {
            mine || matches!(img.visibility.as_str(), "public" | "community")
                || (img.visibility == "shared" && member_ok(img))
        }
        Some(v) if img.visibility != v => false,
        Some("public" | "community") => true,
        Some(_) if auth.is_admin() => true,
        Some("shared") => mine || member_ok(img),
        Some(_) => mine,
    };
    visible
        && q.equals.iter().all(|(k, vals)| attr(img, k).is_some_and(|a| vals.contains(&a)))
        && q.tags.iter().all(|t| img.tags.contains(t))
        && q.size_min.is_none_or(|m| img.size.is_some_and(|s| s >= m))
        && q.size_max.is_none_or(|m| img.size.is_some_and(|s| s <= m))
}

#[derive(PartialEq, PartialOrd)]
enum SortValue {
    Int(Option<i64>),
    Text(Option<String>),
}

fn sort_value(img: &Image, key: &str) -> SortValue {
    match key {
        "size" => SortValue::Int(img.size),
        "virtual_size" => SortValue::Int(img.virtual_size),
        "min_disk" => SortValue::Int(Some(img.min_disk)),
        "min_ram" => SortValue::Int(Some(img.min_ram)),
        "protected" => SortValue::Int(Some(img.protected as i64)),
        "created_at" => SortValue::Text(Some(img.created_at.clone())),
        "updated_at" => SortValue::Text(Some(img.updated_at.clone())),
        "visibility" => SortValue::Text(Some(img.visibility.clone())),
        other => SortValue::Text(attr(img, other)),
    }
}

fn compare(a: &Image, b: &Image, sort: &[(String, bool)]) -> Ordering {
    for (key, asc) in sort {
        let ord = sort_value(a, key).partial_cmp(&sort_value(b, key)).unwrap_or(Ordering::Equal);
        let ord = if *asc { ord } else { ord.reverse() };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// Filters, sorts and pages `all` for `auth`, continuing after `marker` (the image the
/// previous page ended with); returns the page and whether another follows.
pub fn select_images(
    auth: &Auth,
    q: &ListQuery,
    all: Vec<Image>,
    marker: Option<&Image>,
) -> ApiResult<(Vec<Image>, bool)> {
    let mut list: Vec<Image> = all.into_iter().filter(|i| listed(auth, q, i)).collect();
    list.sort_by(|a, b| compare(a, b, &q.sort));
    // Position by the marker's sort values, not its place in the list: the marker may have
    // been deleted (or have left the filter) since the previous page, as when a client
    // deletes while it pages.
    let start = match marker {
        Some(m) => list.iter().position(|i| compare(i, m, &q.sort) == Ordering::Greater).unwrap_or(list.len()),
        None => 0,
    };
    let page: Vec<Image> = list.into_iter().skip(start).take(q.limit).collect();
    // glance offers a next page whenever this one is full.
    let more = q.limit > 0 && page.len() == q.limit;
    Ok((page, more))
}

/// Percent-encodes a query component (RFC 3986 unreserved characters stay).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn list_images(
    State(state): State<AppState>,
    auth: Auth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let q = parse_list_query(&pairs)?;
    let (all, marker) = state.db.with(|db| -> ApiResult<_> {
        let marker = match &q.marker {
            Some(m) => Some(
                db.image_row_including_deleted(m)?
                    .filter(|i| i.status == "deleted" || can_see(&auth, i))
                    .ok_or_else(|| bad(format!("Invalid marker. Image {m} could not be found.")))?,
            ),
            None => None,
        };
        Ok((db.images()?, marker))
    })?;
    let (page, more) = select_images(&auth, &q, all, marker.as_ref())?;
    let mut body = json!({
        "images": page.iter().map(image_json).collect::<Vec<_>>(),
        "first": "/v2/images",
        "schema": "/v2/schemas/images",
    });
    if let (true, Some(last)) = (more, page.last()) {
        let mut params: Vec<String> =
            pairs.iter().filter(|(k, _)| k != "marker").map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
        params.push(format!("marker={}", encode(&last.id)));
        body["next"] = json!(format!("/v2/images?{}", params.join("&")));
    }
    Ok(Json(body))
}

// ---------------------------------------------------------------------------------------
// Update (JSON patch)

pub const PATCH_MEDIA_TYPE: &str = "application/openstack-images-v2.1-json-patch";

/// Applies glance's JSON-patch operations (`add`, `replace`, `remove` on one top-level
/// attribute or property each) to `img`, checking what the caller may change.
pub fn apply_patch(auth: &Auth, img: &mut Image, ops: &Value) -> ApiResult<()> {
    let ops = ops.as_array().ok_or_else(|| bad("Request body must be a JSON array of operation objects."))?;
    for op in ops {
        let obj = op.as_object().ok_or_else(|| bad("Operations must be JSON objects."))?;
        let kind = obj.get("op").and_then(Value::as_str).unwrap_or_default();
        if !["add", "replace", "remove"].contains(&kind) {
            return Err(bad(format!("Invalid operation: `{kind}`: expected add, replace or remove.")));
        }
        let pointer =
            obj.get("path").and_then(Value::as_str).ok_or_else(|| bad("Unable to find `path` in operation."))?;
        let Some(raw) = pointer.strip_prefix('/').filter(|r| !r.is_empty() && !r.contains('/')) else {
            return Err(bad(format!("Invalid JSON pointer for this resource: '{pointer}'")));
        };
        let key = raw.replace("~1", "/").replace("~0", "~");
        let value = obj.get("value");
        if kind != "remove" && value.is_none() {
            return Err(bad(format!("Operation \"{kind}\" requires a member named \"value\".")));
        }
        check_writable_key(&key)?;
        let base = matches!(
            key.as_str(),
            "id" | "name"
                | "visibility"
                | "protected"
                | "disk_format"
                | "container_format"
                | "min_disk"
                | "min_ram"
                | "tags"
                | "owner"
        );
        if base {
            let Some(v) = value.filter(|_| kind != "remove") else {
                return Err(ApiError::forbidden(format!("Attribute '{key}' cannot be removed.")));
            };
            match key.as_str() {
                "id" => return Err(ApiError::forbidden("Attribute 'id' is read-only.")),
                "name" => img.name = name_value(v)?,
                "visibility" => img.visibility = visibility_value(auth, v)?,
                "protected" => {
                    img.protected = v.as_bool().ok_or_else(|| schema_error(format!("{v} is not of type 'boolean'")))?
                }
                "disk_format" | "container_format" => {
                    if img.status != "queued" {
                        return Err(ApiError::forbidden(format!(
                            "Attribute {key} can be only replaced for a queued image."
                        )));
                    }
                    if key == "disk_format" {
                        img.disk_format = enum_value(v, DISK_FORMATS, true)?;
                    } else {
                        img.container_format = enum_value(v, CONTAINER_FORMATS, true)?;
                    }
                }
                "min_disk" => img.min_disk = non_negative(&key, v)?,
                "min_ram" => img.min_ram = non_negative(&key, v)?,
                "tags" => img.tags = tags_value(v)?,
                _ => img.owner = owner_value(auth, v)?,
            }
            continue;
        }
        if kind != "add" && !img.properties.contains_key(&key) {
            return Err(ApiError::conflict(format!("Property {key} does not exist.")));
        }
        match value.filter(|_| kind != "remove") {
            Some(v) => {
                img.properties.insert(key.clone(), string_property(&key, v)?);
            }
            None => {
                img.properties.remove(&key);
            }
        }
    }
    Ok(())
}

async fn update_image(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if ctype.split(';').next().map(str::trim) != Some(PATCH_MEDIA_TYPE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Unsupported Content-Type: use {PATCH_MEDIA_TYPE}"),
        ));
    }
    let mut img = load_owned(&state, &auth, &id)?;
    let ops = parse_json_body(&body)?;
    apply_patch(&auth, &mut img, &ops)?;
    let saved = state.db.with(|db| db.save_image(&img))?;
    Ok(image_response(StatusCode::OK, &saved))
}

// ---------------------------------------------------------------------------------------
// Data

async fn upload(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let img = load_owned(&state, &auth, &id)?;
    // glance takes image data only as application/octet-stream, and says so with a 415.
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let media = ctype.and_then(|c| c.split(';').next()).map(str::trim);
    if !media.is_some_and(|m| m.eq_ignore_ascii_case("application/octet-stream")) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Invalid content type {}", ctype.unwrap_or("None")),
        ));
    }
    let limit_mb = state.config.images.max_upload_mb;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Image exceeds the size limit of {limit_mb} MiB (`[images] max_upload_mb`)."),
        )
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit_mb.saturating_mul(1024 * 1024)) {
        return Err(too_large());
    }
    if img.status != "queued" || !state.db.with(|db| db.set_image_status(&id, "queued", "saving"))? {
        return Err(ApiError::conflict(format!(
            "Image status transition from {} to saving is not allowed",
            img.status
        )));
    }

    // From here on, any way out but success (an error, or the client going away, which drops
    // this future) puts the image back to queued so the client can simply try again; the
    // writer removes its partial file the same way.
    let saving = BackToQueued { state: &state, id: &id, armed: true };
    let result = store_body(&state, &id, body, img.disk_format.clone(), limit_mb).await;
    let data = match result {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(image_id = %id, error = %e, "image upload failed");
            return Err(match e {
                ImageError::TooLarge { .. } => too_large(),
                ImageError::Read { .. } => bad(format!("Error reading the image data: {e}")),
                other => ApiError::internal(other.to_string()),
            });
        }
    };
    let finished = state.db.with(|db| db.finish_image_upload(&id, &data));
    if !matches!(finished, Ok(true)) {
        let _ = images::remove_file(&state.home, &data.path);
        finished?;
        return Err(ApiError::new(StatusCode::GONE, format!("Image {id} was deleted during the upload.")));
    }
    saving.disarm();
    tracing::info!(image_id = %id, size = data.size, checksum = %data.md5, "image data stored");
    Ok(StatusCode::NO_CONTENT)
}

/// Returns a `saving` image to `queued` when dropped armed.
struct BackToQueued<'a> {
    state: &'a AppState,
    id: &'a str,
    armed: bool,
}

impl BackToQueued<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for BackToQueued<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.state.db.with(|db| db.set_image_status(self.id, "saving", "queued")) {
                tracing::error!(image_id = %self.id, error = %e, "could not return a failed upload to queued");
            }
        }
    }
}

/// Streams the request body into the store. File writes and hashing run on the blocking pool,
/// one chunk at a time, so a large upload never stalls the runtime.
async fn store_body(
    state: &AppState,
    id: &str,
    body: Body,
    disk_format: Option<String>,
    limit_mb: u64,
) -> Result<crate::db::images::StoredData, ImageError> {
    let images_dir = state.home.images_dir();
    let mut writer = ImageWriter::create(&images_dir, id, limit_mb)?;
    let mut stream = body.into_data_stream();
    let read_err = |e: axum::Error| ImageError::Read {
        path: "the request body".into(),
        source: std::io::Error::other(e.to_string()),
    };
    let join_err = |e: tokio::task::JoinError| ImageError::Write {
        path: images_dir.clone(),
        source: std::io::Error::other(e.to_string()),
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(read_err)?;
        writer =
            tokio::task::spawn_blocking(move || writer.write(&chunk).map(|_| writer)).await.map_err(join_err)??;
    }
    tokio::task::spawn_blocking(move || writer.finish(disk_format.as_deref())).await.map_err(join_err)?
}

async fn download(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Response> {
    let img = load_visible(&state, &auth, &id)?;
    let Some(path) = images::file_path(&state.home, &img) else {
        // glance answers 204 for an image without data.
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::error!(image_id = %id, path = %path.display(), error = %e, "image data file missing");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("The data of image {id} is not available."))
    })?;
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
    if let Some(size) = img.size {
        h.insert(header::CONTENT_LENGTH, size.into());
    }
    // glance sends the md5 hex digest here (not base64 as RFC 1864 would have it).
    if let Some(md5) = img.checksum.as_deref().and_then(|c| header::HeaderValue::from_str(c).ok()) {
        h.insert("content-md5", md5);
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------------
// Tags

async fn add_tag(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    load_owned(&state, &auth, &id)?;
    if tag.is_empty() || tag.len() > 255 {
        return Err(bad("Image tag must have 1 to 255 characters."));
    }
    state.db.with(|db| db.add_image_tag(&id, &tag))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_tag(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    load_owned(&state, &auth, &id)?;
    if !state.db.with(|db| db.remove_image_tag(&id, &tag))? {
        return Err(ApiError::not_found(format!("Tag {tag} not found.")));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Members

fn member_json(m: &crate::db::images::ImageMember) -> Value {
    json!({
        "image_id": m.image_id, "member_id": m.member, "status": m.status,
        "created_at": m.created_at, "updated_at": m.created_at, "schema": "/v2/schemas/member",
    })
}

fn shared_only(img: &Image) -> ApiResult<()> {
    if img.visibility == "shared" {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("Only shared images have members; image {} is {}.", img.id, img.visibility)))
    }
}

fn is_owner(auth: &Auth, img: &Image) -> bool {
    auth.is_admin() || img.owner.as_deref() == Some(auth.project_id())
}

async fn list_members(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let img = load_visible(&state, &auth, &id)?;
    shared_only(&img)?;
    let members: Vec<Value> = img
        .members
        .iter()
        .filter(|m| is_owner(&auth, &img) || m.member == auth.project_id())
        .map(member_json)
        .collect();
    Ok(Json(json!({"members": members, "schema": "/v2/schemas/members"})))
}

async fn add_member(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let img = load_owned(&state, &auth, &id)?;
    shared_only(&img)?;
    let body = parse_json_body(&body)?;
    let member = body
        .get("member")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty() && m.len() <= 255)
        .ok_or_else(|| bad("Request body must have a `member` with a project id."))?;
    let m = state.db.with(|db| db.add_image_member(&id, member))?;
    Ok(Json(member_json(&m)))
}

fn find_member(auth: &Auth, img: &Image, member: &str) -> ApiResult<crate::db::images::ImageMember> {
    img.members
        .iter()
        .find(|m| m.member == member && (is_owner(auth, img) || m.member == auth.project_id()))
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("{member} is not a member of image {}.", img.id)))
}

async fn show_member(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, member)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let img = load_visible(&state, &auth, &id)?;
    shared_only(&img)?;
    Ok(Json(member_json(&find_member(&auth, &img, &member)?)))
}

async fn update_member(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, member)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let img = load_visible(&state, &auth, &id)?;
    shared_only(&img)?;
    let mut m = find_member(&auth, &img, &member)?;
    // Only the consumer decides whether it wants a shared image, as in glance.
    if member != auth.project_id() {
        return Err(ApiError::forbidden("Only the member itself may change its membership status."));
    }
    let body = parse_json_body(&body)?;
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .filter(|s| ["pending", "accepted", "rejected"].contains(s))
        .ok_or_else(|| bad("Request body must have a `status` of pending, accepted or rejected."))?;
    state.db.with(|db| db.set_image_member_status(&id, &member, status))?;
    m.status = status.to_string();
    Ok(Json(member_json(&m)))
}

async fn remove_member(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, member)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let img = load_owned(&state, &auth, &id)?;
    shared_only(&img)?;
    if !state.db.with(|db| db.remove_image_member(&id, &member))? {
        return Err(ApiError::not_found(format!("{member} is not a member of image {id}.")));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Schemas

fn image_schema() -> Value {
    let nullable_str = |desc: &str| json!({"type": ["null", "string"], "description": desc});
    let read_only = |t: Value, desc: &str| json!({"type": t, "readOnly": true, "description": desc});
    json!({
        "name": "image",
        "additionalProperties": {"type": "string"},
        "properties": {
            "id": {"type": "string", "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$",
                   "description": "An identifier for the image"},
            "name": {"type": ["null", "string"], "maxLength": 255, "description": "Descriptive name for the image"},
            "status": read_only(json!("string"), "Status of the image"),
            "visibility": {"type": "string", "enum": VISIBILITIES, "description": "Scope of image accessibility"},
            "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
            "checksum": read_only(json!(["null", "string"]), "md5 hash of image contents."),
            "os_hash_algo": read_only(json!(["null", "string"]), "Algorithm to calculate the os_hash_value"),
            "os_hash_value": read_only(json!(["null", "string"]), "Hexdigest of the image contents"),
            "owner": nullable_str("Owner of the image"),
            "size": read_only(json!(["null", "integer"]), "Size of image file in bytes"),
            "virtual_size": read_only(json!(["null", "integer"]), "Virtual size of image in bytes"),
            "container_format": {"type": ["null", "string"], "enum": CONTAINER_FORMATS.iter().map(|s| json!(s)).chain([Value::Null]).collect::<Vec<_>>(),
                                 "description": "Format of the container"},
            "disk_format": {"type": ["null", "string"], "enum": DISK_FORMATS.iter().map(|s| json!(s)).chain([Value::Null]).collect::<Vec<_>>(),
                            "description": "Format of the disk"},
            "created_at": read_only(json!("string"), "Date and time of image registration"),
            "updated_at": read_only(json!("string"), "Date and time of the last image modification"),
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}, "description": "List of strings related to the image"},
            "self": read_only(json!("string"), "An image self url"),
            "file": read_only(json!("string"), "An image file url"),
            "schema": read_only(json!("string"), "An image schema url"),
            "min_ram": {"type": "integer", "description": "Amount of ram (in MB) required to boot image."},
            "min_disk": {"type": "integer", "description": "Amount of disk space (in GB) required to boot image."},
            "kernel_id": {"type": ["null", "string"], "description": "ID of image stored in Glance that should be used as the kernel when booting an AMI-style image.", "is_base": false},
            "ramdisk_id": {"type": ["null", "string"], "description": "ID of image stored in Glance that should be used as the ramdisk when booting an AMI-style image.", "is_base": false},
        },
        "links": [
            {"rel": "self", "href": "{self}"},
            {"rel": "enclosure", "href": "{file}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    })
}

fn images_schema() -> Value {
    json!({
        "name": "images",
        "properties": {
            "images": {"type": "array", "items": image_schema()},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    })
}

fn member_schema() -> Value {
    json!({
        "name": "member",
        "properties": {
            "created_at": {"type": "string", "description": "Date and time of image member creation"},
            "image_id": {"type": "string", "description": "An identifier for the image"},
            "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
            "schema": {"type": "string", "readOnly": true},
            "status": {"type": "string", "enum": ["pending", "accepted", "rejected"], "description": "The status of this image member"},
            "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
        },
    })
}

fn members_schema() -> Value {
    json!({
        "name": "members",
        "properties": {"members": {"type": "array", "items": member_schema()}, "schema": {"type": "string"}},
        "links": [{"rel": "schema", "href": "{schema}"}],
    })
}

/// Maps one query key to how many times it appears, for tests of the `next` link.
#[cfg(test)]
fn query_counts(link: &str) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for pair in link.split_once('?').map(|x| x.1).unwrap_or("").split('&') {
        *m.entry(pair.split('=').next().unwrap_or("").to_string()).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests;
