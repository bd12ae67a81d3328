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
use crate::images::{self as store, ImageError, ImageStatus, ImageWriter, MemberStatus};

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
const STATUSES: &[&str] = ImageStatus::NAMES;

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

mod data;
mod images;
mod members;
mod schemas;

use data::*;
use images::*;
use members::*;
use schemas::*;

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
