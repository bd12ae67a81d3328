//! Domains: the `default` domain keystone starts with, and others an admin makes.
//!
//! Names of projects and users are unique across all domains here (keystone: within one),
//! because the tables predate domains; see docs/identity.md.

use std::collections::HashMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::{bool_field, invalid, list_links, member, name_field, not_found, query_bool, string_field, url};
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::AppState;
use crate::db::identity::{Domain, IdentityFilter};
use crate::policy::{Action, Target};

fn render(headers: &HeaderMap, state: &AppState, d: &Domain) -> Value {
    json!({
        "id": d.id, "name": d.name, "description": d.description, "enabled": d.enabled, "tags": [], "options": {},
        "links": {"self": url(headers, state, &format!("domains/{}", d.id))},
    })
}

pub(super) async fn list(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:list_domains"), &Target::default())?;
    let filter = IdentityFilter {
        name: q.get("name").cloned(),
        domain_id: None,
        enabled: q.get("enabled").map(|v| query_bool(v)),
    };
    let domains = state.db.with(|db| db.domains_where(&filter))?;
    Ok(Json(json!({
        "domains": domains.iter().map(|d| render(&headers, &state, d)).collect::<Vec<_>>(),
        "links": list_links(url(&headers, &state, "domains")),
    })))
}

/// The domains the caller may scope to: those it has a role on, itself or by a group.
pub(super) async fn auth_domains(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Value>> {
    let domains = state.db.with(|db| -> ApiResult<Vec<Domain>> {
        let mut out = Vec::new();
        for d in db.domains_where(&IdentityFilter { enabled: Some(true), ..Default::default() })? {
            if !db.effective_scoped_roles(auth.user_id(), "domain", &d.id)?.is_empty() {
                out.push(d);
            }
        }
        Ok(out)
    })?;
    Ok(Json(json!({
        "domains": domains.iter().map(|d| render(&headers, &state, d)).collect::<Vec<_>>(),
        "links": list_links(url(&headers, &state, "auth/domains")),
    })))
}

/// `GET /v3/auth/system`: `[{"all": true}]` when the caller has a role on the system.
pub(super) async fn auth_system(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Value>> {
    let has = !state.db.with(|db| db.effective_scoped_roles(auth.user_id(), "system", "all"))?.is_empty();
    let system = if has { json!([{"all": true}]) } else { json!([]) };
    Ok(Json(json!({"system": system, "links": list_links(url(&headers, &state, "auth/system"))})))
}

/// keystone lets a caller read the domain of the project its token is scoped to.
pub(super) async fn show(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let own = state.db.with(|db| db.project_by_id(auth.project_id()))?.is_some_and(|p| p.domain_id == id);
    if !own {
        auth.authorize(Action::IdentityAdmin("identity:get_domain"), &Target::default())?;
    }
    let d = state.db.with(|db| db.domain_by_id(&id))?.ok_or_else(|| not_found("domain", &id))?;
    Ok(Json(json!({"domain": render(&headers, &state, &d)})))
}

pub(super) async fn create(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth.authorize(Action::IdentityAdmin("identity:create_domain"), &Target::default())?;
    let obj = member(body, "domain")?;
    let name = name_field(&obj, true, 64)?.ok_or_else(|| invalid("name", "'name' is a required property"))?;
    let description = string_field(&obj, "description", true)?.flatten().unwrap_or_default();
    let enabled = bool_field(&obj, "enabled")?.unwrap_or(true);
    let d = state.db.with(|db| db.create_domain(&name, &description, enabled))?;
    Ok((StatusCode::CREATED, Json(json!({"domain": render(&headers, &state, &d)}))))
}

pub(super) async fn update(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:update_domain"), &Target::default())?;
    let obj = member(body, "domain")?;
    let name = name_field(&obj, false, 64)?;
    let description = string_field(&obj, "description", true)?.map(Option::unwrap_or_default);
    let enabled = bool_field(&obj, "enabled")?;
    if id == "default" && enabled == Some(false) {
        // Every bootstrap user and project lives there; disabling it locks everyone out.
        return Err(ApiError::forbidden("The default domain cannot be disabled: novabox's own users live in it."));
    }
    let d = state.db.with(|db| db.update_domain(&id, name.as_deref(), description.as_deref(), enabled))?;
    Ok(Json(json!({"domain": render(&headers, &state, &d)})))
}

/// Deletes a disabled domain with its projects and users; an enabled one is refused, as
/// keystone refuses it.
pub(super) async fn delete(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:delete_domain"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        let d = db.domain_by_id(&id)?.ok_or_else(|| not_found("domain", &id))?;
        if d.enabled {
            return Err(ApiError::forbidden(
                "You are not authorized to perform the requested action: Cannot delete a domain that is enabled, \
                 please disable it first.",
            ));
        }
        db.delete_domain(&id)?;
        super::ensure_an_admin_remains(db)
    })?;
    Ok(StatusCode::NO_CONTENT)
}
