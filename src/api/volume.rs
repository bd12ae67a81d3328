//! Block Storage v3 (cinder), the small part compute and the standard clients need: version
//! documents, volumes create (blank or from an image), list, detail, show, update and delete,
//! with cinder's shapes at microversion 3.0 and cinder's fault bodies (nova's format).
//! Attaching goes through compute (`os-volume_attachments`), as in OpenStack.
//!
//! Tenancy as cinder: a project sees its own volumes, admins all with `all_tenants`; another
//! project's volume is 404. Quotas `volumes` and `gigabytes` (cinder's defaults 10 and 1000).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::context::Auth;
use super::fault::{ApiError, ApiResult};
use super::{base_url, AppState};
use crate::db::volumes::{NewVolume, Volume};

/// The one microversion implemented; advertised as both min and max so clients never ask
/// for shapes this service does not produce.
pub const VERSION: &str = "3.0";

pub fn router() -> Router<AppState> {
    let v3 = Router::new()
        .route("/", get(version))
        .route("/{project_id}/volumes", get(list).post(create))
        .route("/{project_id}/volumes/detail", get(list_detail))
        .route("/{project_id}/volumes/{id}", get(show).put(update).delete(delete));
    Router::new()
        .route("/", get(versions))
        .route("/v3/", get(version))
        .nest("/v3", v3)
        .fallback(|| async { ApiError::not_found("The resource could not be found.") })
        .layer(middleware::from_fn(version_header))
}

/// Every answer names the microversion it was made with, as cinder's.
async fn version_header(req: axum::extract::Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert("openstack-api-version", HeaderValue::from_static("volume 3.0"));
    h.insert("vary", HeaderValue::from_static("OpenStack-API-Version"));
    resp
}

fn version_doc(base: &str) -> Value {
    json!({
        "id": "v3.0",
        "status": "CURRENT",
        "version": VERSION,
        "min_version": VERSION,
        "updated": "2016-02-08T12:20:21Z",
        "links": [
            {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
            {"rel": "self", "href": format!("{base}/volume/v3/")},
        ],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}],
    })
}

/// `GET /volume/`: 300 Multiple Choices with the one version, as cinder.
pub async fn versions(headers: HeaderMap, State(state): State<AppState>) -> Response {
    let doc = json!({"versions": [version_doc(&base_url(&headers, &state.config))]});
    (StatusCode::MULTIPLE_CHOICES, Json(doc)).into_response()
}

async fn version(headers: HeaderMap, State(state): State<AppState>) -> Json<Value> {
    Json(json!({"versions": [version_doc(&base_url(&headers, &state.config))]}))
}

/// The project in the URL must be the token's (cinder's "Malformed request url").
fn check_project(auth: &Auth, project_id: &str) -> ApiResult<()> {
    if project_id == auth.project_id() || auth.is_admin() {
        Ok(())
    } else {
        Err(ApiError::bad_request("Malformed request url: the project in the URL is not the token's project."))
    }
}

/// cinder's timestamps: no zone, microseconds.
fn timestamp(ts: &str) -> String {
    format!("{}.000000", ts.trim_end_matches('Z'))
}

fn links(base: &str, project: &str, id: &str) -> Value {
    json!([
        {"rel": "self", "href": format!("{base}/volume/v3/{project}/volumes/{id}")},
        {"rel": "bookmark", "href": format!("{base}/volume/{project}/volumes/{id}")},
    ])
}

fn summary(v: &Volume, base: &str) -> Value {
    json!({"id": v.id, "name": v.name, "links": links(base, &v.project_id, &v.id)})
}

fn detail(v: &Volume, base: &str, auth: &Auth) -> Value {
    let attachments: Vec<Value> = match (&v.instance_uuid, v.attach_status.as_str()) {
        (Some(server), "attached") => vec![json!({
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
    let mut view = json!({
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
        "volume_type": "__DEFAULT__",
        "snapshot_id": null,
        "source_volid": null,
        "consistencygroup_id": null,
        "replication_status": null,
        "user_id": v.user_id,
        "os-vol-tenant-attr:tenant_id": v.project_id,
        "links": links(base, &v.project_id, &v.id),
    });
    if let Some(image) = &v.source_image_id {
        view["volume_image_metadata"] = json!({"image_id": image});
    }
    if auth.is_admin() {
        view["os-vol-host-attr:host"] = json!(format!("novabox@qcow2#{}", v.availability_zone));
        view["migration_status"] = Value::Null;
        view["os-vol-mig-status-attr:migstat"] = Value::Null;
        view["os-vol-mig-status-attr:name_id"] = Value::Null;
    }
    view
}

/// The volume when the caller may see it; another project's is "not found".
fn find(state: &AppState, auth: &Auth, id: &str) -> ApiResult<Volume> {
    match state.db.with(|db| db.volume(id))? {
        Some(v) if auth.owns(&v.project_id) => Ok(v),
        _ => Err(ApiError::not_found(format!("Volume {id} could not be found."))),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    all_tenants: Option<String>,
    project_id: Option<String>,
    name: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    marker: Option<String>,
}

fn listed(state: &AppState, auth: &Auth, q: &ListQuery) -> ApiResult<Vec<Volume>> {
    let all = auth.is_admin() && q.all_tenants.as_deref().is_some_and(|v| !matches!(v, "0" | "false" | "False"));
    let project = if all { q.project_id.clone() } else { Some(auth.project_id().to_string()) };
    let mut list = state.db.with(|db| db.volumes(project.as_deref()))?;
    list.retain(|v| q.name.as_ref().is_none_or(|n| v.name.as_ref() == Some(n)));
    list.retain(|v| q.status.as_ref().is_none_or(|s| &v.status == s));
    if let Some(marker) = &q.marker {
        let at = list
            .iter()
            .position(|v| &v.id == marker)
            .ok_or_else(|| ApiError::bad_request(format!("Invalid marker: volume {marker} could not be found.")))?;
        list.drain(..=at);
    }
    if let Some(limit) = q.limit {
        list.truncate(limit);
    }
    Ok(list)
}

pub async fn list(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(project_id): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    let base = base_url(&headers, &state.config);
    let list = listed(&state, &auth, &q)?;
    Ok(Json(json!({"volumes": list.iter().map(|v| summary(v, &base)).collect::<Vec<_>>()})))
}

pub async fn list_detail(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(project_id): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    let base = base_url(&headers, &state.config);
    let list = listed(&state, &auth, &q)?;
    Ok(Json(json!({"volumes": list.iter().map(|v| detail(v, &base, &auth)).collect::<Vec<_>>()})))
}

pub async fn show(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path((project_id, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    let v = find(&state, &auth, &id)?;
    Ok(Json(json!({"volume": detail(&v, &base_url(&headers, &state.config), &auth)})))
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
        if t != "__DEFAULT__" {
            return Err(ApiError::not_found(format!("Volume type with name {t} could not be found.")));
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let (volume, image) = state.db.tx(|db| -> ApiResult<_> {
        let image = match &image_ref {
            Some(image_id) => {
                let img = super::compute::servers::bootable_image(db, image_id, auth.project_id(), auth.is_admin())
                    .map_err(|e| ApiError::bad_request(format!("Invalid input for field/attribute imageRef: {}", e.message)))?;
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
        let (used_volumes, used_gb) = db.volume_usage(auth.project_id())?;
        let (max_volumes, max_gb) = db.volume_quotas(auth.project_id())?;
        if max_volumes >= 0 && used_volumes + 1 > max_volumes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("VolumeLimitExceeded: Maximum number of volumes allowed ({max_volumes}) exceeded for quota 'volumes'."),
            ));
        }
        if max_gb >= 0 && used_gb + size > max_gb {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed gigabytes quota. \
                     Requested {size}G, quota is {max_gb}G and {used_gb}G has been consumed."
                ),
            ));
        }
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
    Ok((StatusCode::ACCEPTED, Json(json!({"volume": detail(&volume, &base, &auth)}))).into_response())
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
    Ok(Json(json!({"volume": detail(&v, &base_url(&headers, &state.config), &auth)})))
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
        if !db.set_volume_status(&id, &["available", "error"], "deleting")? {
            return Err(ApiError::bad_request(format!("{DELETE_REFUSED} (volume {id} is {})", v.status)));
        }
        let deleting =
            db.volume(&id)?.ok_or_else(|| ApiError::not_found(format!("Volume {id} could not be found.")))?;
        crate::volumes::delete(db, &state.home, &deleting).map_err(|e| {
            tracing::error!(volume = %id, error = %e, "volume delete failed");
            // Back to error: the user can see it failed and try again.
            let _ = db.set_volume_status(&id, &["deleting"], "error");
            ApiError::internal(format!("The volume could not be deleted: {e}"))
        })
    });
    result?;
    tracing::info!(volume = %id, "volume deleted");
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests;
