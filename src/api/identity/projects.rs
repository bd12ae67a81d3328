//! Projects: keystone's `/v3/projects`, `/v3/auth/projects` and `/v3/users/{id}/projects`.

use std::collections::HashMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::{
    bool_field, ensure_an_admin_remains, invalid, list_links, member, name_field, not_found, query_bool, string_field,
    url,
};
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::AppState;
use crate::db::identity::{IdentityFilter, Project, ProjectChange};
use crate::policy::{Action, Target};

/// keystone's limit on a project's name.
const NAME_MAX: usize = 64;

pub(super) fn project_json(p: &Project, self_url: String) -> Value {
    json!({
        "id": p.id, "name": p.name, "description": p.description, "enabled": p.enabled,
        "domain_id": p.domain_id, "is_domain": false, "parent_id": p.domain_id, "tags": [], "options": {},
        "links": {"self": self_url},
    })
}

fn render(headers: &HeaderMap, state: &AppState, p: &Project) -> Value {
    project_json(p, url(headers, state, &format!("projects/{}", p.id)))
}

fn render_list(headers: &HeaderMap, state: &AppState, projects: &[Project], path: &str) -> Json<Value> {
    Json(json!({
        "projects": projects.iter().map(|p| render(headers, state, p)).collect::<Vec<_>>(),
        "links": list_links(url(headers, state, path)),
    }))
}

/// The projects `user_id` has a role on.
fn projects_of(state: &AppState, user_id: &str) -> ApiResult<Vec<Project>> {
    state.db.with(|db| -> ApiResult<Vec<Project>> {
        let mut out = Vec::new();
        for p in db.projects()? {
            if !db.roles_of(user_id, &p.id)?.is_empty() {
                out.push(p);
            }
        }
        Ok(out)
    })
}

/// The projects the caller has a role on.
pub(super) async fn auth_projects(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Value>> {
    let projects = projects_of(&state, auth.user_id())?;
    Ok(render_list(&headers, &state, &projects, "auth/projects"))
}

pub(super) async fn user_projects(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityGetUser, &Target { user_id: Some(&user_id), ..Target::default() })?;
    let projects = projects_of(&state, &user_id)?;
    Ok(render_list(&headers, &state, &projects, &format!("users/{user_id}/projects")))
}

/// `GET /v3/projects` with keystone's filters `name`, `domain_id`, `enabled` (and `is_domain`:
/// novabox's domains are not projects, so `is_domain=true` lists none).
pub(super) async fn list(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:list_projects"), &Target::default())?;
    let filter = IdentityFilter {
        name: q.get("name").cloned(),
        domain_id: q.get("domain_id").cloned(),
        enabled: q.get("enabled").map(|v| query_bool(v)),
    };
    let mut projects = state.db.with(|db| db.projects_where(&filter))?;
    if q.get("is_domain").is_some_and(|v| query_bool(v)) {
        projects.clear();
    }
    if let Some(parent) = q.get("parent_id") {
        projects.retain(|p| &p.domain_id == parent);
    }
    Ok(render_list(&headers, &state, &projects, "projects"))
}

pub(super) async fn show(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityGetProject, &Target { project_id: Some(&id), ..Target::default() })?;
    let p = state.db.with(|db| db.project_by_id(&id))?.ok_or_else(|| not_found("project", &id))?;
    Ok(Json(json!({"project": render(&headers, &state, &p)})))
}

/// The attributes a create or update body sets.
fn change_from(obj: &serde_json::Map<String, Value>, creating: bool) -> ApiResult<(Option<String>, ProjectChange)> {
    let name = name_field(obj, creating, NAME_MAX)?;
    if bool_field(obj, "is_domain")? == Some(true) {
        return Err(invalid("is_domain", "novabox's domains are not projects; create a domain with POST /v3/domains"));
    }
    let domain_id = string_field(obj, "domain_id", !creating)?.flatten();
    if !creating && domain_id.is_some() {
        return Err(ApiError::bad_request("Update of `domain_id` is not allowed."));
    }
    let change = ProjectChange {
        name: name.clone(),
        description: string_field(obj, "description", true)?.map(Option::unwrap_or_default),
        enabled: bool_field(obj, "enabled")?,
        domain_id,
    };
    Ok((name, change))
}

pub(super) async fn create(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth.authorize(Action::IdentityAdmin("identity:create_project"), &Target::default())?;
    let obj = member(body, "project")?;
    let (name, mut change) = change_from(&obj, true)?;
    let name = name.ok_or_else(|| invalid("name", "'name' is a required property"))?;
    // A sub-project's parent must be its domain: novabox has no project hierarchy.
    let parent = string_field(&obj, "parent_id", true)?.flatten();
    let p = state.db.tx(|db| -> ApiResult<Project> {
        let domain_id = change.domain_id.clone().or(parent.clone()).unwrap_or_else(|| "default".into());
        if db.domain_by_id(&domain_id)?.is_none() {
            return Err(match &parent {
                Some(p) if change.domain_id.is_none() => {
                    invalid("parent_id", &format!("novabox has no project hierarchy; {p} is not a domain"))
                }
                _ => not_found("domain", &domain_id),
            });
        }
        change.domain_id = Some(domain_id);
        Ok(db.create_project(&name, &change)?)
    })?;
    Ok((StatusCode::CREATED, Json(json!({"project": render(&headers, &state, &p)}))))
}

pub(super) async fn update(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:update_project"), &Target::default())?;
    let obj = member(body, "project")?;
    let (_, change) = change_from(&obj, false)?;
    // A disabled project's tokens stop working at once: every request checks the project.
    let p = state.db.tx(|db| -> ApiResult<Project> {
        let p = db.update_project(&id, &change)?;
        ensure_an_admin_remains(db)?;
        Ok(p)
    })?;
    Ok(Json(json!({"project": render(&headers, &state, &p)})))
}

pub(super) async fn delete(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:delete_project"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        db.delete_project(&id)?;
        ensure_an_admin_remains(db)
    })?;
    Ok(StatusCode::NO_CONTENT)
}
