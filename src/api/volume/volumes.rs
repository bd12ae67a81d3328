//! Volumes: create (blank or from an image), list, detail, show, update and delete, in
//! cinder's shapes at 3.0. Create and update answer cinder's base view; show and the detail
//! list add the attributes cinder's extensions add, each under its own policy.

use std::cmp::Ordering;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{check_project, timestamp, DEFAULT_TYPE_NAME};
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::listing::{self, Dialect, Direction, Page, Params};
use crate::api::{base_url, AppState};
use crate::db::volumes::{NewVolume, Volume, VolumeSortKey};
use crate::policy::{Action, Target};
use crate::volumes::{AttachStatus, VolumeStatus};

fn links(base: &str, project: &str, id: &str) -> Value {
    json!([
        {"rel": "self", "href": format!("{base}/volume/v3/{project}/volumes/{id}")},
        {"rel": "bookmark", "href": format!("{base}/volume/{project}/volumes/{id}")},
    ])
}

fn summary(v: &Volume, base: &str) -> Value {
    json!({"id": v.id, "name": v.name, "links": links(base, &v.project_id, &v.id)})
}

/// Which of cinder's views: the base one (create, update) or the base one with what the
/// volume extensions add (show, detail list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Base,
    Extended,
}

fn detail(v: &Volume, base: &str, auth: &Auth, view: View) -> Value {
    let attachments: Vec<Value> = match (&v.instance_uuid, v.attach_status) {
        (Some(server), AttachStatus::Attached) => vec![json!({
            "id": v.id,
            "attachment_id": v.attachment_id,
            "volume_id": v.id,
            "server_id": server,
            "host_name": null,
            "device": v.mountpoint,
            "attached_at": v.attached_at.as_deref().map(timestamp),
        })],
        _ => vec![],
    };
    let mut out = json!({
        "id": v.id,
        "name": v.name,
        "description": v.description,
        "status": v.status,
        "size": v.size,
        "availability_zone": v.availability_zone,
        "created_at": timestamp(&v.created_at),
        "updated_at": v.updated_at.as_deref().map(timestamp),
        "attachments": attachments,
        "bootable": if v.bootable { "true" } else { "false" },
        "encrypted": false,
        "multiattach": false,
        "metadata": {},
        "volume_type": DEFAULT_TYPE_NAME,
        "snapshot_id": null,
        "source_volid": null,
        "consistencygroup_id": null,
        "replication_status": null,
        "user_id": v.user_id,
        "links": links(base, &v.project_id, &v.id),
    });
    if auth.is_admin() {
        out["migration_status"] = Value::Null;
    }
    if view == View::Base {
        return out;
    }
    let target = Target { project_id: Some(&v.project_id), ..Target::default() };
    if auth.authorize(Action::VolumeTenantAttribute, &target).is_ok() {
        out["os-vol-tenant-attr:tenant_id"] = json!(v.project_id);
    }
    if auth.authorize(Action::VolumeHostAttribute, &target).is_ok() {
        out["os-vol-host-attr:host"] = json!(format!("novabox@qcow2#{}", v.availability_zone));
        out["os-vol-mig-status-attr:migstat"] = Value::Null;
        out["os-vol-mig-status-attr:name_id"] = Value::Null;
    }
    // cinder's image metadata extension adds the key only to volumes made from an image.
    if let Some(image) = &v.source_image_id {
        out["volume_image_metadata"] = json!({"image_id": image});
    }
    out
}

/// The volume when the caller may see it; another project's is "not found".
fn find(state: &AppState, auth: &Auth, id: &str) -> ApiResult<Volume> {
    match state.db.with(|db| db.volume(id))? {
        Some(v) if auth.owns(&v.project_id) => Ok(v),
        _ => Err(ApiError::not_found(format!("Volume {id} could not be found."))),
    }
}

/// Orders two volumes by one of cinder's sort keys.
fn compare(a: &Volume, b: &Volume, key: VolumeSortKey) -> Ordering {
    match key {
        VolumeSortKey::Id => a.id.cmp(&b.id),
        VolumeSortKey::Name => a.name.cmp(&b.name),
        VolumeSortKey::Status => a.status.cmp(&b.status),
        VolumeSortKey::Size => a.size.cmp(&b.size),
        VolumeSortKey::CreatedAt => a.created_at.cmp(&b.created_at),
        VolumeSortKey::UpdatedAt => a.updated_at.cmp(&b.updated_at),
        VolumeSortKey::AvailabilityZone => a.availability_zone.cmp(&b.availability_zone),
        VolumeSortKey::Bootable => a.bootable.cmp(&b.bootable),
        VolumeSortKey::ProjectId => a.project_id.cmp(&b.project_id),
        VolumeSortKey::UserId => a.user_id.cmp(&b.user_id),
    }
}

/// cinder's sort: `sort=key[:dir],...`, or the older `sort_key`/`sort_dir` (not both);
/// the database's order (newest first) unless asked otherwise.
fn sort_of(params: &Params) -> ApiResult<Vec<(VolumeSortKey, Direction)>> {
    let names =
        match params.last("sort") {
            Some(_) if params.has("sort_key") || params.has("sort_dir") => return Err(ApiError::bad_request(
                "The 'sort_key' and 'sort_dir' parameters are deprecated and cannot be used with the 'sort' parameter.",
            )),
            Some(sort) => sort
                .split(',')
                .map(|part| {
                    let (key, dir) = part.split_once(':').unwrap_or((part, "desc"));
                    Ok((key.trim().to_string(), listing::direction(dir.trim(), Dialect::Cinder)?))
                })
                .collect::<ApiResult<Vec<_>>>()?,
            None => listing::sort_names(params, Dialect::Cinder, Direction::Desc)?,
        };
    // No keys keeps the database's order: newest first, then the later row first.
    let mut sort = listing::typed_sort(names, Dialect::Cinder)?;
    if let Some(&(_, last)) = sort.last() {
        sort.push((VolumeSortKey::Id, last));
    }
    Ok(sort)
}

fn listed(state: &AppState, auth: &Auth, params: &Params) -> ApiResult<Page<Volume>> {
    let all_tenants = params.last("all_tenants");
    let all = auth.is_admin() && all_tenants.is_some_and(|v| !matches!(v, "0" | "false" | "False"));
    let project = if all { params.last("project_id").map(str::to_string) } else { Some(auth.project_id().to_string()) };
    let paging = listing::paging(params, Dialect::Cinder)?;
    let sort = sort_of(params)?;
    let mut list = state.db.with(|db| db.volumes(project.as_deref()))?;
    let name = params.last("name");
    let status = params.last("status");
    list.retain(|v| name.is_none_or(|n| v.name.as_deref() == Some(n)));
    list.retain(|v| status.is_none_or(|s| v.status.as_str() == s));
    list.sort_by(|a, b| listing::compare_by(a, b, &sort, compare));
    listing::page_by_id(list, &paging, |v| &v.id, |m| Dialect::Cinder.marker_not_found("volume", m))
}

/// `{"volumes": [...]}` with cinder's `volumes_links` when the page is full.
fn list_body(
    base: &str,
    project_id: &str,
    path: &str,
    params: &Params,
    page: &Page<Volume>,
    items: Vec<Value>,
) -> Value {
    let mut body = json!({ "volumes": items });
    let url = format!("{base}/volume/v3/{project_id}/{path}");
    let last = page.items.last().map(|v| v.id.as_str());
    listing::add_next_link(&mut body, Dialect::Cinder, "volumes", &url, params, page.end, last);
    body
}

pub async fn list(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(project_id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    let params = Params(q);
    let base = base_url(&headers, &state.config);
    let page = listed(&state, &auth, &params)?;
    let items = page.items.iter().map(|v| summary(v, &base)).collect();
    Ok(Json(list_body(&base, &project_id, "volumes", &params, &page, items)))
}

pub async fn list_detail(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(project_id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    let params = Params(q);
    let base = base_url(&headers, &state.config);
    let page = listed(&state, &auth, &params)?;
    let items = page.items.iter().map(|v| detail(v, &base, &auth, View::Extended)).collect();
    Ok(Json(list_body(&base, &project_id, "volumes/detail", &params, &page, items)))
}

pub async fn show(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path((project_id, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    let v = find(&state, &auth, &id)?;
    Ok(Json(json!({"volume": detail(&v, &base_url(&headers, &state.config), &auth, View::Extended)})))
}

fn body_object(body: Result<Json<Value>, axum::extract::rejection::JsonRejection>) -> ApiResult<Map<String, Value>> {
    let Json(v) = body.map_err(|e| ApiError::from_json_rejection(e, "Malformed request body"))?;
    match v.get("volume") {
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(_) => Err(ApiError::bad_request("Invalid input for field/attribute volume: it must be an object.")),
        None => Err(ApiError::bad_request("Missing required element 'volume' in request body.")),
    }
}

/// An optional string field of at most `max` characters.
fn text_field(o: &Map<String, Value>, key: &str, max: usize) -> ApiResult<Option<String>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {key}: longer than {max} characters."
        ))),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {key}. Value: {other}. It is not a string."
        ))),
    }
}

/// `size` as cinder's schema takes it: an integer, or a string of one, at least 1.
fn size_field(o: &Map<String, Value>) -> ApiResult<i64> {
    let bad = |v: &Value, why: &str| {
        ApiError::bad_request(format!("Invalid input for field/attribute size. Value: {v}. {why}"))
    };
    let v = o.get("size").ok_or_else(|| {
        ApiError::bad_request("Invalid input for field/attribute size: it is required (the volume's size in GiB).")
    })?;
    let n = match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| bad(v, "It is not an integer."))?,
        Value::String(s) => s.trim().parse::<i64>().map_err(|_| bad(v, "It is not an integer."))?,
        _ => return Err(bad(v, "It is not an integer.")),
    };
    if n < 1 {
        return Err(bad(v, &format!("{n} is less than the minimum of 1.")));
    }
    if n > 1 << 20 {
        return Err(bad(v, "It is larger than 1048576 GiB."));
    }
    Ok(n)
}

#[tracing::instrument(name = "create_volume", skip_all)]
pub async fn create(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(project_id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    check_project(&auth, &project_id)?;
    let o = body_object(body)?;
    for unsupported in ["snapshot_id", "source_volid", "backup_id", "consistencygroup_id", "group_id"] {
        if o.get(unsupported).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute {unsupported}: novabox creates volumes blank or from an image \
                 (imageRef) only."
            )));
        }
    }
    let size = size_field(&o)?;
    let name = text_field(&o, "name", 255)?;
    let description = text_field(&o, "description", 255)?;
    let image_ref = text_field(&o, "imageRef", 255)?.filter(|s| !s.is_empty());
    let az = text_field(&o, "availability_zone", 255)?;
    if let Some(az) = &az {
        if az != &state.config.host.availability_zone {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute availability_zone: Availability zone '{az}' is invalid; this \
                 novabox has '{}'.",
                state.config.host.availability_zone
            )));
        }
    }
    if let Some(t) = text_field(&o, "volume_type", 255)? {
        if !super::types::is_default(&t) {
            return Err(ApiError::not_found(format!("Volume type with name {t} could not be found.")));
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let (volume, image) = state.db.tx(|db| -> ApiResult<_> {
        let image = match &image_ref {
            Some(image_id) => {
                let img = crate::compute::api::bootable_image(db, image_id, auth.project_id(), auth.is_admin())
                    .map_err(|e| {
                        let e = ApiError::from(e);
                        ApiError::bad_request(format!("Invalid input for field/attribute imageRef: {}", e.message))
                    })?;
                let needed = img.virtual_size.or(img.size).unwrap_or(0).max(img.min_disk << 30);
                if needed > size << 30 {
                    return Err(ApiError::bad_request(format!(
                        "Invalid input for field/attribute size: image {image_id} needs {} GiB, more than the \
                         requested size of {size} GiB.",
                        (needed as u64).div_ceil(1 << 30)
                    )));
                }
                crate::images::data_meta(db, &state.home, image_id)?
            }
            None => None,
        };
        // The check and the insert under one lock, so concurrent creates cannot both pass.
        super::quotas::check_create(db, auth.project_id(), size)?;
        let volume = db.insert_volume(&NewVolume {
            id: id.clone(),
            name: name.clone(),
            description: description.clone(),
            project_id: auth.project_id().to_string(),
            user_id: auth.user_id().to_string(),
            size,
            source_image_id: image_ref.clone(),
            availability_zone: state.config.host.availability_zone.clone(),
            path: crate::volumes::file_name(&id),
        })?;
        Ok((volume, image))
    })?;
    // Written in the background as cinder-volume does; the volume shows `creating` until then.
    let (db, home) = (state.db.clone(), state.home.clone());
    let vid = id.clone();
    tokio::spawn(async move {
        let _ = crate::volumes::build(&db, &home, &vid, image.as_ref()).await;
    });
    let base = base_url(&headers, &state.config);
    Ok((StatusCode::ACCEPTED, Json(json!({"volume": detail(&volume, &base, &auth, View::Base)}))).into_response())
}

pub async fn update(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path((project_id, id)): Path<(String, String)>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    let o = body_object(body)?;
    find(&state, &auth, &id)?;
    if let Some(key) =
        o.keys().find(|k| !["name", "description", "display_name", "display_description"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {key}: only name and description can be updated."
        )));
    }
    let name = text_field(&o, "name", 255)?.or(text_field(&o, "display_name", 255)?);
    let description = text_field(&o, "description", 255)?.or(text_field(&o, "display_description", 255)?);
    state.db.with(|db| db.update_volume_text(&id, name.as_deref(), description.as_deref()))?;
    let v = find(&state, &auth, &id)?;
    Ok(Json(json!({"volume": detail(&v, &base_url(&headers, &state.config), &auth, View::Base)})))
}

/// What cinder says when a volume cannot be deleted in its state.
const DELETE_REFUSED: &str = "Invalid volume: Volume status must be available or error or error_restoring or \
     error_extending or error_managing and must not be migrating, attached, belong to a group, have snapshots, \
     awaiting a transfer, or be disassociated from snapshots after volume transfer.";

pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path((project_id, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_project(&auth, &project_id)?;
    let v = find(&state, &auth, &id)?;
    let result = state.db.with(|db| -> ApiResult<()> {
        if !db.set_volume_status(&id, VolumeStatus::DELETABLE, VolumeStatus::Deleting)? {
            return Err(ApiError::bad_request(format!("{DELETE_REFUSED} (volume {id} is {})", v.status)));
        }
        let deleting =
            db.volume(&id)?.ok_or_else(|| ApiError::not_found(format!("Volume {id} could not be found.")))?;
        crate::volumes::delete(db, &state.home, &deleting).map_err(|e| {
            tracing::error!(volume = %id, error = %e, "volume delete failed");
            // Back to error: the user can see it failed and try again.
            let _ = db.set_volume_status(&id, &[VolumeStatus::Deleting], VolumeStatus::Error);
            ApiError::internal(format!("The volume could not be deleted: {e}"))
        })
    });
    result?;
    tracing::info!(volume = %id, "volume deleted");
    Ok(StatusCode::ACCEPTED)
}
