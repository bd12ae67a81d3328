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

/// keystone's limits on project tags: at most 80, each 1 to 255 characters without `,` or `/`.
const TAGS_MAX: usize = 80;
const TAG_MAX: usize = 255;

pub(super) fn project_json(p: &Project, tags: &[String], self_url: String) -> Value {
    json!({
        "id": p.id, "name": p.name, "description": p.description, "enabled": p.enabled,
        "domain_id": p.domain_id, "is_domain": false, "parent_id": p.domain_id, "tags": tags, "options": {},
        "links": {"self": self_url},
    })
}

fn render_tagged(headers: &HeaderMap, state: &AppState, p: &Project, tags: &[String]) -> Value {
    project_json(p, tags, url(headers, state, &format!("projects/{}", p.id)))
}

fn render(headers: &HeaderMap, state: &AppState, p: &Project) -> ApiResult<Value> {
    let tags = state.db.with(|db| db.project_tags(&p.id))?;
    Ok(render_tagged(headers, state, p, &tags))
}

fn render_list(headers: &HeaderMap, state: &AppState, projects: &[Project], path: &str) -> ApiResult<Json<Value>> {
    let tags = state.db.with(|db| db.all_project_tags())?;
    let tags_of = |p: &Project| tags.get(&p.id).map(|t| t.iter().cloned().collect::<Vec<_>>()).unwrap_or_default();
    Ok(Json(json!({
        "projects": projects.iter().map(|p| render_tagged(headers, state, p, &tags_of(p))).collect::<Vec<_>>(),
        "links": list_links(url(headers, state, path)),
    })))
}

fn check_tag(tag: &str) -> ApiResult<()> {
    if tag.is_empty() || tag.chars().count() > TAG_MAX || tag.contains(',') || tag.contains('/') {
        return Err(invalid("tags", &format!("'{tag}' must be 1 to {TAG_MAX} characters without ',' or '/'")));
    }
    Ok(())
}

/// A `tags` array as keystone's schema takes it: strings, unique, at most 80.
fn tags_field(obj: &serde_json::Map<String, Value>) -> ApiResult<Option<Vec<String>>> {
    let Some(v) = obj.get("tags") else { return Ok(None) };
    let list = v.as_array().ok_or_else(|| invalid("tags", &format!("{v} is not of type 'array'")))?;
    let mut tags: Vec<String> = Vec::with_capacity(list.len());
    for t in list {
        let t = t.as_str().ok_or_else(|| invalid("tags", &format!("{t} is not of type 'string'")))?;
        check_tag(t)?;
        if tags.iter().any(|have| have == t) {
            return Err(invalid("tags", &format!("{v} has non-unique elements")));
        }
        tags.push(t.to_string());
    }
    if tags.len() > TAGS_MAX {
        return Err(invalid("tags", &format!("{v} is too long")));
    }
    Ok(Some(tags))
}

/// keystone's tag filters on a project list: `tags` (all of), `tags-any`, `not-tags` (not
/// all of) and `not-tags-any` (none of), each a comma-separated list.
fn tag_filters_keep(q: &HashMap<String, String>, tags: Option<&std::collections::BTreeSet<String>>) -> bool {
    let empty = std::collections::BTreeSet::new();
    let has = tags.unwrap_or(&empty);
    let list = |k: &str| q.get(k).map(|v| v.split(',').map(str::to_string).collect::<Vec<_>>());
    let all = |want: &[String]| want.iter().all(|t| has.contains(t));
    let any = |want: &[String]| want.iter().any(|t| has.contains(t));
    list("tags").is_none_or(|w| all(&w))
        && list("tags-any").is_none_or(|w| any(&w))
        && list("not-tags").is_none_or(|w| !all(&w))
        && list("not-tags-any").is_none_or(|w| !any(&w))
}

/// `GET /v3/projects/{id}/tags`.
pub(super) async fn list_tags(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityGetProject, &Target { project_id: Some(&id), ..Target::default() })?;
    let tags = state.db.with(|db| -> ApiResult<Vec<String>> {
        db.project_by_id(&id)?.ok_or_else(|| not_found("project", &id))?;
        Ok(db.project_tags(&id)?)
    })?;
    Ok(Json(json!({ "tags": tags })))
}

/// `PUT /v3/projects/{id}/tags`: the project's tags become the body's.
pub(super) async fn replace_tags(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:update_project_tags"), &Target::default())?;
    let Json(body) = body.map_err(|e| ApiError::from_json_rejection(e, "Malformed request body"))?;
    let obj = body.as_object().cloned().unwrap_or_default();
    let tags = tags_field(&obj)?.ok_or_else(|| invalid("tags", "'tags' is a required property"))?;
    let tags = state.db.tx(|db| -> ApiResult<Vec<String>> {
        db.project_by_id(&id)?.ok_or_else(|| not_found("project", &id))?;
        db.set_project_tags(&id, &tags)?;
        Ok(db.project_tags(&id)?)
    })?;
    Ok(Json(json!({ "tags": tags })))
}

/// `DELETE /v3/projects/{id}/tags`.
pub(super) async fn delete_tags(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:delete_project_tags"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        db.project_by_id(&id)?.ok_or_else(|| not_found("project", &id))?;
        Ok(db.set_project_tags(&id, &[])?)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v3/projects/{id}/tags/{tag}`: 204 when the project has it, else 404.
pub(super) async fn check_tag_exists(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityGetProject, &Target { project_id: Some(&id), ..Target::default() })?;
    let tags = state.db.with(|db| -> ApiResult<Vec<String>> {
        db.project_by_id(&id)?.ok_or_else(|| not_found("project", &id))?;
        Ok(db.project_tags(&id)?)
    })?;
    if tags.contains(&tag) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found("tag", &tag))
    }
}

/// `PUT /v3/projects/{id}/tags/{tag}`: 201, with the tag's address.
pub(super) async fn add_tag(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<(StatusCode, [(axum::http::HeaderName, String); 1])> {
    auth.authorize(Action::IdentityAdmin("identity:create_project_tag"), &Target::default())?;
    check_tag(&tag)?;
    state.db.tx(|db| -> ApiResult<()> {
        db.project_by_id(&id)?.ok_or_else(|| not_found("project", &id))?;
        let tags = db.project_tags(&id)?;
        if !tags.contains(&tag) && tags.len() >= TAGS_MAX {
            return Err(invalid("tags", &format!("a project has at most {TAGS_MAX} tags")));
        }
        Ok(db.add_project_tag(&id, &tag)?)
    })?;
    let location = url(&headers, &state, &format!("projects/{id}/tags/{}", crate::api::listing::encode(&tag)));
    Ok((StatusCode::CREATED, [(axum::http::header::LOCATION, location)]))
}

/// `DELETE /v3/projects/{id}/tags/{tag}`.
pub(super) async fn delete_tag(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:delete_project_tag"), &Target::default())?;
    let removed = state.db.tx(|db| -> ApiResult<bool> {
        db.project_by_id(&id)?.ok_or_else(|| not_found("project", &id))?;
        Ok(db.delete_project_tag(&id, &tag)?)
    })?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found("tag", &tag))
    }
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
    render_list(&headers, &state, &projects, "auth/projects")
}

pub(super) async fn user_projects(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityGetUser, &Target { user_id: Some(&user_id), ..Target::default() })?;
    let projects = projects_of(&state, &user_id)?;
    render_list(&headers, &state, &projects, &format!("users/{user_id}/projects"))
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
    if ["tags", "tags-any", "not-tags", "not-tags-any"].iter().any(|k| q.contains_key(*k)) {
        let tags = state.db.with(|db| db.all_project_tags())?;
        projects.retain(|p| tag_filters_keep(&q, tags.get(&p.id)));
    }
    render_list(&headers, &state, &projects, "projects")
}

pub(super) async fn show(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityGetProject, &Target { project_id: Some(&id), ..Target::default() })?;
    let p = state.db.with(|db| db.project_by_id(&id))?.ok_or_else(|| not_found("project", &id))?;
    Ok(Json(json!({"project": render(&headers, &state, &p)?})))
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
    let tags = tags_field(&obj)?;
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
        let p = db.create_project(&name, &change)?;
        if let Some(tags) = &tags {
            db.set_project_tags(&p.id, tags)?;
        }
        Ok(p)
    })?;
    Ok((StatusCode::CREATED, Json(json!({"project": render(&headers, &state, &p)?}))))
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
    let tags = tags_field(&obj)?;
    // A disabled project's tokens stop working at once: every request checks the project.
    let p = state.db.tx(|db| -> ApiResult<Project> {
        let p = db.update_project(&id, &change)?;
        if let Some(tags) = &tags {
            db.set_project_tags(&p.id, tags)?;
        }
        ensure_an_admin_remains(db)?;
        Ok(p)
    })?;
    Ok(Json(json!({"project": render(&headers, &state, &p)?})))
}

pub(super) async fn delete(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:delete_project"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        db.delete_project(&id)?;
        ensure_an_admin_remains(db)
    })?;
    Ok(StatusCode::NO_CONTENT)
}
