//! Roles, their implications, and role assignments on projects.

use std::collections::HashMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::{ensure_an_admin_remains, invalid, list_links, member, name_field, not_found, query_bool, url};
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::AppState;
use crate::db::identity::{Assignment, Role};
use crate::db::Db;
use crate::policy::{Action, Target};

fn render(headers: &HeaderMap, state: &AppState, r: &Role) -> Value {
    json!({
        "id": r.id, "name": r.name, "domain_id": null, "description": null, "options": {},
        "links": {"self": url(headers, state, &format!("roles/{}", r.id))},
    })
}

pub(super) async fn list(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:list_roles"), &Target::default())?;
    let mut roles = state.db.with(|db| db.roles())?;
    if let Some(name) = q.get("name") {
        roles.retain(|r| &r.name == name);
    }
    Ok(Json(json!({
        "roles": roles.iter().map(|r| render(&headers, &state, r)).collect::<Vec<_>>(),
        "links": list_links(url(&headers, &state, "roles")),
    })))
}

pub(super) async fn show(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:get_role"), &Target::default())?;
    let r = state.db.with(|db| db.role_by_id(&id))?.ok_or_else(|| not_found("role", &id))?;
    Ok(Json(json!({"role": render(&headers, &state, &r)})))
}

pub(super) async fn create(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth.authorize(Action::IdentityAdmin("identity:create_role"), &Target::default())?;
    let obj = member(body, "role")?;
    let name = name_field(&obj, true, 255)?.ok_or_else(|| invalid("name", "'name' is a required property"))?;
    let r = state.db.with(|db| db.create_role(&name))?;
    Ok((StatusCode::CREATED, Json(json!({"role": render(&headers, &state, &r)}))))
}

pub(super) async fn delete(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:delete_role"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        db.delete_role(&id)?;
        ensure_an_admin_remains(db)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v3/role_inferences`: each role that implies others, with the roles it implies.
pub(super) async fn inferences(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:list_role_inference_rules"), &Target::default())?;
    let pairs = state.db.with(|db| db.implied_roles())?;
    let brief = |r: &Role| json!({"id": r.id, "name": r.name, "links": {"self": url(&headers, &state, &format!("roles/{}", r.id))}});
    let mut rules: Vec<(Role, Vec<Value>)> = Vec::new();
    for (prior, implied) in &pairs {
        match rules.iter_mut().find(|(p, _)| p.id == prior.id) {
            Some((_, list)) => list.push(brief(implied)),
            None => rules.push((prior.clone(), vec![brief(implied)])),
        }
    }
    let rules: Vec<Value> =
        rules.iter().map(|(p, implies)| json!({"prior_role": brief(p), "implies": implies})).collect();
    Ok(Json(json!({"role_inferences": rules, "links": {"self": url(&headers, &state, "role_inferences")}})))
}

/// The project, user and role of a grant URL, each looked up (404 in keystone's words).
fn grant_parts(db: &Db, project: &str, user: &str, role: Option<&str>) -> ApiResult<Option<Role>> {
    db.project_by_id(project)?.ok_or_else(|| not_found("project", project))?;
    db.user_by_id(user)?.ok_or_else(|| not_found("user", user))?;
    match role {
        Some(r) => Ok(Some(db.role_by_id(r)?.ok_or_else(|| not_found("role", r))?)),
        None => Ok(None),
    }
}

fn no_grant(project: &str, user: &str, role: &str) -> ApiError {
    ApiError::not_found(format!(
        "Could not find role assignment with role: {role}, user or group: {user}, project, domain, or system: {project}."
    ))
}

pub(super) async fn grant(
    State(state): State<AppState>,
    auth: Auth,
    Path((project, user, role)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:create_grant"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        grant_parts(db, &project, &user, Some(&role))?;
        Ok(db.assign_role(&user, &project, &role)?)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `HEAD` (and `GET`) of a grant: 204 when it exists.
pub(super) async fn check_grant(
    State(state): State<AppState>,
    auth: Auth,
    Path((project, user, role)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:check_grant"), &Target::default())?;
    state.db.with(|db| -> ApiResult<StatusCode> {
        grant_parts(db, &project, &user, Some(&role))?;
        if db.assignments(Some(&user), Some(&project), Some(&role))?.is_empty() {
            return Err(no_grant(&project, &user, &role));
        }
        Ok(StatusCode::NO_CONTENT)
    })
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    auth: Auth,
    Path((project, user, role)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:revoke_grant"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        grant_parts(db, &project, &user, Some(&role))?;
        if !db.unassign_role(&user, &project, &role)? {
            return Err(no_grant(&project, &user, &role));
        }
        ensure_an_admin_remains(db)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v3/projects/{p}/users/{u}/roles`: the roles assigned (not implied) there.
pub(super) async fn list_grants(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path((project, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:list_grants"), &Target::default())?;
    let roles = state.db.with(|db| -> ApiResult<Vec<Role>> {
        grant_parts(db, &project, &user, None)?;
        let mut roles = Vec::new();
        for a in db.assignments(Some(&user), Some(&project), None)? {
            roles.extend(db.role_by_id(&a.role_id)?);
        }
        Ok(roles)
    })?;
    Ok(Json(json!({
        "roles": roles.iter().map(|r| render(&headers, &state, r)).collect::<Vec<_>>(),
        "links": list_links(url(&headers, &state, &format!("projects/{project}/users/{user}/roles"))),
    })))
}

/// `GET /v3/role_assignments` with keystone's filters `user.id`, `scope.project.id`,
/// `role.id`, `effective` (implied roles listed too) and `include_names`.
pub(super) async fn assignments(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:list_role_assignments"), &Target::default())?;
    if q.contains_key("group.id") || q.contains_key("scope.domain.id") || q.contains_key("scope.system") {
        // novabox has no groups and assigns roles on projects only: such filters match nothing.
        return Ok(Json(
            json!({"role_assignments": [], "links": list_links(url(&headers, &state, "role_assignments"))}),
        ));
    }
    // keystone takes the flag's presence as true unless it says otherwise.
    let effective = q.get("effective").is_some_and(|v| v.is_empty() || query_bool(v));
    let names = q.get("include_names").is_some_and(|v| v.is_empty() || query_bool(v));
    let (user, project, role) = (q.get("user.id"), q.get("scope.project.id"), q.get("role.id"));
    let rows = state.db.with(|db| -> ApiResult<Vec<Value>> {
        let stored = db.assignments(user.map(String::as_str), project.map(String::as_str), None)?;
        let implied = if effective { db.implied_roles()? } else { Vec::new() };
        let mut out: Vec<Assignment> = Vec::new();
        for a in stored {
            // Each assignment with every role it implies, transitively.
            let mut todo = vec![a.role_id.clone()];
            while let Some(role_id) = todo.pop() {
                let row = Assignment { role_id: role_id.clone(), ..a.clone() };
                if out.contains(&row) {
                    continue;
                }
                out.push(row);
                todo.extend(implied.iter().filter(|(p, _)| p.id == role_id).map(|(_, i)| i.id.clone()));
            }
        }
        out.retain(|a| role.is_none_or(|r| &a.role_id == r));
        out.iter().map(|a| assignment_json(db, &headers, &state, a, names)).collect()
    })?;
    Ok(Json(json!({"role_assignments": rows, "links": list_links(url(&headers, &state, "role_assignments"))})))
}

fn assignment_json(db: &Db, headers: &HeaderMap, state: &AppState, a: &Assignment, names: bool) -> ApiResult<Value> {
    let mut role = json!({"id": a.role_id});
    let mut user = json!({"id": a.user_id});
    let mut project = json!({"id": a.project_id});
    if names {
        let domain = |id: &str| -> ApiResult<Value> {
            let name = db.domain_by_id(id)?.map(|d| d.name).unwrap_or_default();
            Ok(json!({"id": id, "name": name}))
        };
        if let Some(r) = db.role_by_id(&a.role_id)? {
            role["name"] = json!(r.name);
        }
        if let Some(u) = db.user_by_id(&a.user_id)? {
            user["name"] = json!(u.name);
            user["domain"] = domain(&u.domain_id)?;
        }
        if let Some(p) = db.project_by_id(&a.project_id)? {
            project["name"] = json!(p.name);
            project["domain"] = domain(&p.domain_id)?;
        }
    }
    let link = url(headers, state, &format!("projects/{}/users/{}/roles/{}", a.project_id, a.user_id, a.role_id));
    Ok(json!({"role": role, "user": user, "scope": {"project": project}, "links": {"assignment": link}}))
}
