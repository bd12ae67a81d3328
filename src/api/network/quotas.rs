//! neutron's quota API (`quotas` and `quota_details` extensions) and the check every create
//! makes against it: per-project limits of networks, subnets, ports, security groups and
//! their rules, neutron's defaults unless an admin set others.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use super::super::context::Auth;
use super::super::fault::{ApiError, ApiResult};
use super::super::AppState;
use crate::db::Db;
use crate::policy::{Action, Target};

/// neutron's `OverQuota`: "Quota exceeded for resources: ['port']."
pub(crate) fn over_quota(resource: &str) -> ApiError {
    ApiError::conflict(crate::conductor::network::over_quota_message(resource)).with_kind("OverQuota")
}

/// Refuses one more `resource` for `project_id` when its limit is reached. Called inside the
/// transaction that creates it, so two creates cannot both take the last one.
pub(super) fn ensure_room(db: &Db, project_id: &str, resource: &str) -> ApiResult<()> {
    if db.network_quota_allows(project_id, resource, 1)? {
        Ok(())
    } else {
        Err(over_quota(resource))
    }
}

/// The largest limit neutron stores (its database's integer).
const MAX_LIMIT: i64 = 2_147_483_647;

fn target(project_id: &str) -> Target<'_> {
    Target { project_id: Some(project_id), ..Target::default() }
}

/// Another project's quota is for admins (`get_quota`); one's own is always readable.
fn authorize_show(auth: &Auth, project_id: &str) -> ApiResult<()> {
    if project_id == auth.project_id() {
        Ok(())
    } else {
        auth.authorize(Action::NetworkQuotaShow, &target(project_id))
    }
}

fn limits_json(limits: &std::collections::BTreeMap<String, i64>) -> Value {
    Value::Object(limits.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

/// `GET /v2.0/quotas`: every project that has limits of its own (admins only).
pub(super) async fn list(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Value>> {
    auth.authorize(Action::NetworkQuotaShow, &target(auth.project_id()))?;
    let quotas = state.db.with(|db| -> ApiResult<Vec<Value>> {
        let mut out = Vec::new();
        for project in db.network_quota_projects()? {
            let mut q = limits_json(&db.network_quota_limits(&project)?);
            q["project_id"] = json!(project);
            q["tenant_id"] = json!(project);
            out.push(q);
        }
        Ok(out)
    })?;
    Ok(Json(json!({ "quotas": quotas })))
}

/// `GET /v2.0/quotas/project` (and the deprecated `/tenant`): the caller's project.
pub(super) async fn own_project(auth: Auth) -> Json<Value> {
    Json(json!({"project": {"project_id": auth.project_id()}}))
}

pub(super) async fn own_tenant(auth: Auth) -> Json<Value> {
    Json(json!({"tenant": {"tenant_id": auth.project_id()}}))
}

pub(super) async fn show(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    authorize_show(&auth, &id)?;
    let limits = state.db.with(|db| db.network_quota_limits(&id))?;
    Ok(Json(json!({ "quota": limits_json(&limits) })))
}

pub(super) async fn defaults(auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    authorize_show(&auth, &id)?;
    let limits = crate::db::quotas::NETWORK_DEFAULTS.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    Ok(Json(json!({ "quota": limits_json(&limits) })))
}

/// `GET /v2.0/quotas/{project}/details`: limit, used and reserved (always 0: novabox
/// creates in one transaction, so nothing is ever reserved).
pub(super) async fn details(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if id != auth.project_id() && !auth.is_admin() {
        // neutron answers this one with AdminRequired rather than a policy denial.
        return Err(ApiError::forbidden(
            "User does not have admin privileges: Only admin is authorized to access quotas for another project.",
        )
        .with_kind("AdminRequired"));
    }
    let (limits, used) =
        state.db.with(|db| -> crate::db::Result<_> { Ok((db.network_quota_limits(&id)?, db.network_usage(&id)?)) })?;
    let body: Map<String, Value> = limits
        .iter()
        .map(|(k, limit)| {
            (k.clone(), json!({"limit": limit, "used": used.get(k).copied().unwrap_or(0), "reserved": 0}))
        })
        .collect();
    Ok(Json(json!({ "quota": body })))
}

/// `PUT /v2.0/quotas/{project}`: admins set limits (-1 is unlimited). As neutron since
/// 2025.1, a limit below what the project already uses is refused unless `force` is true.
pub(super) async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::NetworkQuotaManage, &target(&id))?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::bad_request("Malformed request body").with_kind("HTTPBadRequest"))?;
    let Some(Value::Object(mut quota)) = v.get("quota").cloned() else {
        return Err(ApiError::bad_request("Unable to find 'quota' in request body").with_kind("HTTPBadRequest"));
    };
    let force = matches!(quota.remove("force"), Some(Value::Bool(true)));
    quota.remove("check_limit");
    let known: Vec<&str> = crate::db::quotas::NETWORK_DEFAULTS.iter().map(|(k, _)| *k).collect();
    let unknown: Vec<&str> = quota.keys().map(String::as_str).filter(|k| !known.contains(k)).collect();
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(format!("Unrecognized attribute(s) '{}'", unknown.join(", ")))
            .with_kind("HTTPBadRequest"));
    }
    let mut changes = Vec::new();
    for (k, val) in &quota {
        let n = match val {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        }
        .ok_or_else(|| invalid(k, format!("'{val}' is not an integer")))?;
        if n < -1 {
            return Err(invalid(k, format!("'{n}' is too small - must be at least '-1'")));
        }
        if n > MAX_LIMIT {
            return Err(invalid(k, format!("'{n}' is too large - must be no larger than '{MAX_LIMIT}'")));
        }
        changes.push((k.clone(), n));
    }
    let limits = state.db.tx(|db| -> ApiResult<_> {
        if db.project_by_id(&id)?.is_none() {
            return Err(ApiError::not_found(format!("Project {id} could not be found.")).with_kind("ProjectNotFound"));
        }
        let used = db.network_usage(&id)?;
        for (k, n) in &changes {
            let in_use = used.get(k).copied().unwrap_or(0);
            if !force && *n != -1 && in_use > *n {
                return Err(ApiError::bad_request(format!(
                    "Quota limit {n} for {k} must be greater than or equal to already used {in_use}"
                ))
                .with_kind("HTTPBadRequest"));
            }
            db.set_network_quota(&id, k, *n)?;
        }
        Ok(db.network_quota_limits(&id)?)
    })?;
    Ok(Json(json!({ "quota": limits_json(&limits) })))
}

fn invalid(key: &str, reason: String) -> ApiError {
    ApiError::bad_request(format!("Invalid input for {key}. Reason: {reason}.")).with_kind("InvalidInput")
}

/// `DELETE /v2.0/quotas/{project}`: back to the defaults.
pub(super) async fn delete(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    auth.authorize(Action::NetworkQuotaDelete, &target(&id))?;
    if state.db.with(|db| db.delete_network_quotas(&id))? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("Quota for project {id} could not be found.")).with_kind("TenantQuotaNotFound"))
    }
}
