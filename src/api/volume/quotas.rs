//! cinder's quota sets (`os-quota-sets`: show with or without usage, defaults, update and
//! delete) and absolute limits, and the quota check of a volume create with cinder's 413s.
//!
//! The resources are cinder's: volumes, gigabytes, snapshots, backups, backup_gigabytes,
//! per_volume_gigabytes, groups, and the per-type `volumes___DEFAULT__`,
//! `gigabytes___DEFAULT__`, `snapshots___DEFAULT__` of the one volume type. novabox has no
//! snapshots, backups or groups: their limits are kept and shown, their use is always 0.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::check_project;
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::AppState;
use crate::db::quotas::VOLUME_DEFAULTS;
use crate::db::Db;
use crate::policy::{Action, Target};

/// How much of each resource the project uses, by cinder's resource names.
fn usage(db: &Db, project: &str) -> crate::db::Result<BTreeMap<&'static str, i64>> {
    let (volumes, gigabytes) = db.volume_usage(project)?;
    let mut used: BTreeMap<&'static str, i64> = VOLUME_DEFAULTS.iter().map(|(k, _)| (*k, 0)).collect();
    // Every volume is of the one type, so the per-type use is the project's whole use.
    for (k, n) in [
        ("volumes", volumes),
        ("gigabytes", gigabytes),
        ("volumes___DEFAULT__", volumes),
        ("gigabytes___DEFAULT__", gigabytes),
    ] {
        used.insert(k, n);
    }
    Ok(used)
}

fn over_limit(message: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
}

/// Whether the project may have one more volume of `size` GiB, in cinder's words when not:
/// the per-volume limit first, then the gigabytes, then the count (cinder's order).
pub(super) fn check_create(db: &Db, project: &str, size: i64) -> ApiResult<()> {
    let limits = db.volume_quota_limits(project)?;
    let used = usage(db, project)?;
    let limit = |k: &str| limits.get(k).copied().unwrap_or(-1);
    let per_volume = limit("per_volume_gigabytes");
    if per_volume >= 0 && size > per_volume {
        return Err(over_limit(format!(
            "VolumeSizeExceedsLimit: Requested volume size {size}G is larger than maximum allowed limit {per_volume}G."
        )));
    }
    for name in ["gigabytes", "gigabytes___DEFAULT__"] {
        let (max, consumed) = (limit(name), used.get(name).copied().unwrap_or(0));
        if max >= 0 && consumed + size > max {
            return Err(over_limit(format!(
                "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed {name} quota. \
                 Requested {size}G, quota is {max}G and {consumed}G has been consumed."
            )));
        }
    }
    for name in ["volumes", "volumes___DEFAULT__"] {
        let (max, consumed) = (limit(name), used.get(name).copied().unwrap_or(0));
        if max >= 0 && consumed + 1 > max {
            return Err(over_limit(format!(
                "VolumeLimitExceeded: Maximum number of volumes allowed ({max}) exceeded for quota '{name}'."
            )));
        }
    }
    Ok(())
}

/// The quota set's body: limits only, or cinder's `{limit, in_use, reserved}` per resource.
fn quota_set(db: &Db, project: &str, with_usage: bool) -> crate::db::Result<Map<String, Value>> {
    let limits = db.volume_quota_limits(project)?;
    let used = if with_usage { Some(usage(db, project)?) } else { None };
    let mut o = Map::new();
    for (k, limit) in limits {
        let v = match &used {
            Some(used) => json!({"limit": limit, "in_use": used.get(k.as_str()).copied().unwrap_or(0), "reserved": 0}),
            None => json!(limit),
        };
        o.insert(k, v);
    }
    Ok(o)
}

#[derive(Debug, Default, Deserialize)]
pub struct ShowQuery {
    usage: Option<String>,
}

/// oslo's `bool_from_string`, which cinder reads `usage` with: anything else is false.
fn truthy(s: &str) -> bool {
    matches!(s.trim().to_ascii_lowercase().as_str(), "1" | "t" | "true" | "on" | "y" | "yes")
}

/// GET /v3/{project}/os-quota-sets/{target}[?usage=true]: the target project's, to itself
/// and to admins.
pub async fn show(
    State(state): State<AppState>,
    auth: Auth,
    Path((project_id, target)): Path<(String, String)>,
    Query(q): Query<ShowQuery>,
) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    auth.authorize(Action::VolumeQuotaShow, &Target { project_id: Some(&target), ..Target::default() })?;
    let with_usage = q.usage.as_deref().is_some_and(truthy);
    let mut o = state.db.with(|db| quota_set(db, &target, with_usage))?;
    o.insert("id".into(), json!(target));
    Ok(Json(json!({ "quota_set": o })))
}

/// GET /v3/{project}/os-quota-sets/{target}/defaults: cinder's defaults, whatever is set.
pub async fn defaults(auth: Auth, Path((project_id, target)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    auth.authorize(Action::VolumeQuotaShow, &Target { project_id: Some(&target), ..Target::default() })?;
    let mut o: Map<String, Value> = VOLUME_DEFAULTS.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    o.insert("id".into(), json!(target));
    Ok(Json(json!({ "quota_set": o })))
}

/// A limit as cinder's `validate_integer` takes it: an integer or a string of one, -1 or more.
fn limit_value(key: &str, v: &Value) -> ApiResult<i64> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
    .ok_or_else(|| ApiError::bad_request(format!("Invalid input received: {key} must be an integer.")))?;
    if n < -1 {
        return Err(ApiError::bad_request(format!("Invalid input received: {key} must be >= -1")));
    }
    if n > i64::from(i32::MAX) {
        return Err(ApiError::bad_request(format!("Invalid input received: {key} must be <= {}", i32::MAX)));
    }
    Ok(n)
}

/// PUT /v3/{project}/os-quota-sets/{target}: admins set limits; none may go below what the
/// project already uses (cinder refuses that too).
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path((project_id, target)): Path<(String, String)>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    auth.authorize(Action::VolumeQuotaUpdate, &Target { project_id: Some(&target), ..Target::default() })?;
    let Json(body) = body.map_err(|e| ApiError::from_json_rejection(e, "Malformed request body"))?;
    let set = body
        .get("quota_set")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("Missing required element quota_set in request body."))?;
    let known = |k: &str| VOLUME_DEFAULTS.iter().any(|(name, _)| *name == k);
    // cinder takes these in the body and ignores them.
    let ignored = |k: &str| matches!(k, "id" | "tenant_id");
    let bad: Vec<&str> = set.keys().map(String::as_str).filter(|k| !known(k) && !ignored(k)).collect();
    if !bad.is_empty() {
        return Err(ApiError::bad_request(format!("Bad key(s) in quota set: {}", bad.join(","))));
    }
    let mut changes = Vec::new();
    for (k, v) in set.iter().filter(|(k, _)| known(k)) {
        changes.push((k.clone(), limit_value(k, v)?));
    }
    let view = state.db.tx(|db| -> ApiResult<_> {
        if db.project_by_id(&target)?.is_none() {
            return Err(ApiError::not_found(format!("Project ID {target} could not be found.")));
        }
        let used = usage(db, &target)?;
        for (k, n) in &changes {
            if *n >= 0 && *n < used.get(k.as_str()).copied().unwrap_or(0) {
                return Err(ApiError::bad_request(format!(
                    "Invalid input received: Quota {k} limit must be equal or greater than existing resources."
                )));
            }
            db.set_volume_quota(&target, k, *n)?;
        }
        Ok(quota_set(db, &target, false)?)
    })?;
    Ok(Json(json!({ "quota_set": view })))
}

/// DELETE /v3/{project}/os-quota-sets/{target}: back to the defaults (200, no body).
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path((project_id, target)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_project(&auth, &project_id)?;
    auth.authorize(Action::VolumeQuotaDelete, &Target { project_id: Some(&target), ..Target::default() })?;
    state.db.with(|db| db.delete_volume_quotas(&target))?;
    Ok(StatusCode::OK)
}

/// GET /v3/{project}/limits: the absolute limits of the token's project and its use, as
/// cinder's used-limits view; no rate limits.
pub async fn limits(
    State(state): State<AppState>,
    auth: Auth,
    Path(project_id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    let project = auth.project_id().to_string();
    let (limits, used) = state
        .db
        .with(|db| -> crate::db::Result<_> { Ok((db.volume_quota_limits(&project)?, usage(db, &project)?)) })?;
    let limit = |k: &str| limits.get(k).copied().unwrap_or(-1);
    let in_use = |k: &str| used.get(k).copied().unwrap_or(0);
    Ok(Json(json!({"limits": {"rate": [], "absolute": {
        "maxTotalVolumes": limit("volumes"),
        "maxTotalSnapshots": limit("snapshots"),
        "maxTotalVolumeGigabytes": limit("gigabytes"),
        "maxTotalBackups": limit("backups"),
        "maxTotalBackupGigabytes": limit("backup_gigabytes"),
        "totalVolumesUsed": in_use("volumes"),
        "totalGigabytesUsed": in_use("gigabytes"),
        "totalSnapshotsUsed": in_use("snapshots"),
        "totalBackupsUsed": in_use("backups"),
        "totalBackupGigabytesUsed": in_use("backup_gigabytes"),
    }}})))
}
