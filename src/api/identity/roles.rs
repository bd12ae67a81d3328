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
use crate::db::identity::{Role, ScopedAssignment};
use crate::db::Db;
use crate::policy::{Action, Target};

pub(super) fn render(headers: &HeaderMap, state: &AppState, r: &Role) -> Value {
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

pub(super) async fn update(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:update_role"), &Target::default())?;
    let obj = member(body, "role")?;
    let r = state.db.tx(|db| -> ApiResult<Role> {
        let r = db.role_by_id(&id)?.ok_or_else(|| not_found("role", &id))?;
        match name_field(&obj, false, 255)? {
            Some(name) => Ok(db.rename_role(&id, &name)?),
            None => Ok(r),
        }
    })?;
    Ok(Json(json!({"role": render(&headers, &state, &r)})))
}

/// A role as an inference rule shows it.
fn brief(headers: &HeaderMap, state: &AppState, r: &Role) -> Value {
    json!({"id": r.id, "name": r.name, "links": {"self": url(headers, state, &format!("roles/{}", r.id))}})
}

/// The prior and implied roles of an inference rule's URL, each looked up (404 in keystone's words).
fn inference_parts(db: &Db, prior: &str, implied: &str) -> ApiResult<(Role, Role)> {
    let p = db.role_by_id(prior)?.ok_or_else(|| not_found("role", prior))?;
    let i = db.role_by_id(implied)?.ok_or_else(|| not_found("role", implied))?;
    Ok((p, i))
}

fn inference_json(headers: &HeaderMap, state: &AppState, p: &Role, i: &Role) -> Value {
    json!({
        "role_inference": {"prior_role": brief(headers, state, p), "implies": brief(headers, state, i)},
        "links": {"self": url(headers, state, &format!("roles/{}/implies/{}", p.id, i.id))},
    })
}

/// `PUT /v3/roles/{prior}/implies/{implied}`. As keystone's default `prohibited_implied_role`,
/// nothing may imply `admin`, so no grant can make an admin by inference.
pub(super) async fn create_inference(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path((prior, implied)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth.authorize(Action::IdentityAdmin("identity:create_implied_role"), &Target::default())?;
    let (p, i) = state.db.tx(|db| -> ApiResult<(Role, Role)> {
        let (p, i) = inference_parts(db, &prior, &implied)?;
        if i.name == "admin" {
            return Err(ApiError::forbidden(format!("{} cannot be an implied roles.", i.id)));
        }
        db.ensure_implied_role(&p.id, &i.id)?;
        Ok((p, i))
    })?;
    Ok((StatusCode::CREATED, Json(inference_json(&headers, &state, &p, &i))))
}

/// The rule, or keystone's 404 for a pair that is not one.
fn existing_inference(db: &Db, prior: &str, implied: &str) -> ApiResult<(Role, Role)> {
    let (p, i) = inference_parts(db, prior, implied)?;
    if !db.implies(&p.id, &i.id)? {
        return Err(ApiError::not_found(format!("{prior} does not imply {implied}.")));
    }
    Ok((p, i))
}

pub(super) async fn show_inference(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path((prior, implied)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:get_implied_role"), &Target::default())?;
    let (p, i) = state.db.with(|db| existing_inference(db, &prior, &implied))?;
    Ok(Json(inference_json(&headers, &state, &p, &i)))
}

pub(super) async fn check_inference(
    State(state): State<AppState>,
    auth: Auth,
    Path((prior, implied)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:check_implied_role"), &Target::default())?;
    state.db.with(|db| existing_inference(db, &prior, &implied))?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn delete_inference(
    State(state): State<AppState>,
    auth: Auth,
    Path((prior, implied)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:delete_implied_role"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        let (p, i) = existing_inference(db, &prior, &implied)?;
        db.delete_implied_role(&p.id, &i.id)?;
        // admin implies nothing that makes an admin, but an admin may hold the cloud only
        // through what a rule implied; the guard says so rather than strand the cloud.
        ensure_an_admin_remains(db)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v3/roles/{prior}/implies`: the roles `prior` implies directly.
pub(super) async fn list_inferences(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(prior): Path<String>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:list_implied_roles"), &Target::default())?;
    let (p, implied) = state.db.with(|db| -> ApiResult<(Role, Vec<Role>)> {
        let p = db.role_by_id(&prior)?.ok_or_else(|| not_found("role", &prior))?;
        let implied = db.implied_roles()?.into_iter().filter(|(x, _)| x.id == p.id).map(|(_, i)| i).collect();
        Ok((p, implied))
    })?;
    Ok(Json(json!({
        "role_inference": {
            "prior_role": brief(&headers, &state, &p),
            "implies": implied.iter().map(|i| brief(&headers, &state, i)).collect::<Vec<_>>(),
        },
        "links": {"self": url(&headers, &state, &format!("roles/{}/implies", p.id))},
    })))
}

/// `GET /v3/role_inferences`: each role that implies others, with the roles it implies.
pub(super) async fn inferences(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:list_role_inference_rules"), &Target::default())?;
    let pairs = state.db.with(|db| db.implied_roles())?;
    let brief = |r: &Role| brief(&headers, &state, r);
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
    project_grant_parts(db, project, role, || {
        db.user_by_id(user)?.ok_or_else(|| not_found("user", user))?;
        Ok(())
    })
}

/// What a grant on a project names must exist, checked in keystone's order: the project,
/// the subject (`subject_exists`: a user or a group), then the role when one is named.
pub(super) fn project_grant_parts(
    db: &Db,
    project: &str,
    role: Option<&str>,
    subject_exists: impl FnOnce() -> ApiResult<()>,
) -> ApiResult<Option<Role>> {
    db.project_by_id(project)?.ok_or_else(|| not_found("project", project))?;
    subject_exists()?;
    match role {
        Some(r) => Ok(Some(db.role_by_id(r)?.ok_or_else(|| not_found("role", r))?)),
        None => Ok(None),
    }
}

/// The roles of a list of assignments, in its order; an assignment whose role is gone is skipped.
pub(super) fn roles_of<'a>(db: &Db, role_ids: impl IntoIterator<Item = &'a str>) -> ApiResult<Vec<Role>> {
    let mut roles = Vec::new();
    for id in role_ids {
        roles.extend(db.role_by_id(id)?);
    }
    Ok(roles)
}

pub(super) fn no_grant(project: &str, user: &str, role: &str) -> ApiError {
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
        let assignments = db.assignments(Some(&user), Some(&project), None)?;
        roles_of(db, assignments.iter().map(|a| a.role_id.as_str()))
    })?;
    Ok(Json(json!({
        "roles": roles.iter().map(|r| render(&headers, &state, r)).collect::<Vec<_>>(),
        "links": list_links(url(&headers, &state, &format!("projects/{project}/users/{user}/roles"))),
    })))
}

/// Who holds an assignment: a user, or a group (whose members hold it, effectively).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Actor {
    User(String),
    Group(String),
}

/// One row of `/v3/role_assignments`; `via_group` is set for a user's row that comes from a
/// group's assignment (effective listings only).
#[derive(Debug, Clone, PartialEq, Eq)]
enum On {
    Project(String),
    Domain(String),
    System,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    actor: Actor,
    on: On,
    role_id: String,
    via_group: Option<String>,
}

/// `GET /v3/role_assignments` with keystone's filters `user.id`, `group.id`,
/// `scope.project.id`, `scope.domain.id`, `scope.system`, `role.id`, `effective` (group assignments become their members', and
/// implied roles are listed too) and `include_names`.
pub(super) async fn assignments(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:list_role_assignments"), &Target::default())?;
    // keystone takes the flag's presence as true unless it says otherwise.
    let effective = q.get("effective").is_some_and(|v| v.is_empty() || query_bool(v));
    let names = q.get("include_names").is_some_and(|v| v.is_empty() || query_bool(v));
    let (user, group) = (q.get("user.id"), q.get("group.id"));
    let (project, role) = (q.get("scope.project.id"), q.get("role.id"));
    let (domain, system) = (q.get("scope.domain.id"), q.get("scope.system"));
    let rows = state.db.with(|db| -> ApiResult<Vec<Value>> {
        let mut held: Vec<Row> = Vec::new();
        for a in db.assignments(None, None, None)? {
            let on = On::Project(a.project_id);
            held.push(Row { actor: Actor::User(a.user_id), on, role_id: a.role_id, via_group: None });
        }
        for a in db.group_assignments(None, None, None)? {
            let on = On::Project(a.project_id);
            held.push(Row { actor: Actor::Group(a.group_id), on, role_id: a.role_id, via_group: None });
        }
        for a in db.scoped_assignments(None, None, None, None)? {
            let on = if a.scope_type == "system" { On::System } else { On::Domain(a.scope_id) };
            let actor = if a.actor_type == "group" { Actor::Group(a.actor_id) } else { Actor::User(a.actor_id) };
            held.push(Row { actor, on, role_id: a.role_id, via_group: None });
        }
        held.retain(|r| match &r.on {
            On::Project(p) => domain.is_none() && system.is_none() && project.is_none_or(|want| want == p),
            On::Domain(d) => project.is_none() && system.is_none() && domain.is_none_or(|want| want == d),
            On::System => project.is_none() && domain.is_none(),
        });
        let mut stored: Vec<Row> = Vec::new();
        for r in held {
            match (&r.actor, effective) {
                (Actor::Group(g), true) => {
                    for member in db.group_members(g)? {
                        stored.push(Row { actor: Actor::User(member), via_group: Some(g.clone()), ..r.clone() });
                    }
                }
                _ => stored.push(r),
            }
        }
        let implied = if effective { db.implied_roles()? } else { Vec::new() };
        let mut out: Vec<Row> = Vec::new();
        for a in stored {
            // Each assignment with every role it implies, transitively.
            let mut todo = vec![a.role_id.clone()];
            while let Some(role_id) = todo.pop() {
                let row = Row { role_id: role_id.clone(), ..a.clone() };
                if out.contains(&row) {
                    continue;
                }
                out.push(row);
                todo.extend(implied.iter().filter(|(p, _)| p.id == role_id).map(|(_, i)| i.id.clone()));
            }
        }
        out.retain(|r| {
            let user_ok = user.is_none_or(|u| r.actor == Actor::User(u.clone()));
            let group_ok = group.is_none_or(|g| r.actor == Actor::Group(g.clone()) || r.via_group.as_ref() == Some(g));
            user_ok && group_ok && role.is_none_or(|id| &r.role_id == id)
        });
        out.iter().map(|r| assignment_json(db, &headers, &state, r, names)).collect()
    })?;
    Ok(Json(json!({"role_assignments": rows, "links": list_links(url(&headers, &state, "role_assignments"))})))
}

fn assignment_json(db: &Db, headers: &HeaderMap, state: &AppState, a: &Row, names: bool) -> ApiResult<Value> {
    let domain = |id: &str| -> ApiResult<Value> {
        let name = db.domain_by_id(id)?.map(|d| d.name).unwrap_or_default();
        Ok(json!({"id": id, "name": name}))
    };
    let mut role = json!({"id": a.role_id});
    let (key, mut actor, grant_path) = match &a.actor {
        Actor::User(id) => ("user", json!({"id": id}), format!("users/{id}")),
        Actor::Group(id) => ("group", json!({"id": id}), format!("groups/{id}")),
    };
    if names {
        if let Some(r) = db.role_by_id(&a.role_id)? {
            role["name"] = json!(r.name);
        }
        match &a.actor {
            Actor::User(id) => {
                if let Some(u) = db.user_by_id(id)? {
                    actor["name"] = json!(u.name);
                    actor["domain"] = domain(&u.domain_id)?;
                }
            }
            Actor::Group(id) => {
                if let Some(g) = db.group_by_id(id)? {
                    actor["name"] = json!(g.name);
                    actor["domain"] = domain(&g.domain_id)?;
                }
            }
        }
    }
    let (scope, scope_path) = match &a.on {
        On::Project(id) => {
            let mut project = json!({"id": id});
            if names {
                if let Some(p) = db.project_by_id(id)? {
                    project["name"] = json!(p.name);
                    project["domain"] = domain(&p.domain_id)?;
                }
            }
            (json!({"project": project}), format!("projects/{id}"))
        }
        On::Domain(id) => {
            let d = if names { domain(id)? } else { json!({"id": id}) };
            (json!({"domain": d}), format!("domains/{id}"))
        }
        On::System => (json!({"system": {"all": true}}), "system".to_string()),
    };
    let links = match (&a.via_group, &a.actor) {
        (Some(g), Actor::User(u)) => json!({
            "assignment": url(headers, state, &format!("{scope_path}/groups/{g}/roles/{}", a.role_id)),
            "membership": url(headers, state, &format!("groups/{g}/users/{u}")),
        }),
        _ => json!({"assignment": url(headers, state, &format!("{scope_path}/{grant_path}/roles/{}", a.role_id))}),
    };
    Ok(json!({"role": role, key: actor, "scope": scope, "links": links}))
}

/// A grant on a domain or on the system: `/v3/domains/{d}/{users|groups}/{a}/roles[/{r}]` and
/// `/v3/system/{users|groups}/{a}/roles[/{r}]`.
struct ScopedGrant {
    scope_type: &'static str,
    scope_id: String,
    actor_type: &'static str,
    actor_id: String,
}

impl ScopedGrant {
    /// Looks up every part of the URL (404 in keystone's words).
    fn check(&self, db: &Db, role: Option<&str>) -> ApiResult<()> {
        if self.scope_type == "domain" {
            db.domain_by_id(&self.scope_id)?.ok_or_else(|| not_found("domain", &self.scope_id))?;
        }
        match self.actor_type {
            "user" => drop(db.user_by_id(&self.actor_id)?.ok_or_else(|| not_found("user", &self.actor_id))?),
            _ => drop(db.group_by_id(&self.actor_id)?.ok_or_else(|| not_found("group", &self.actor_id))?),
        }
        if let Some(r) = role {
            db.role_by_id(r)?.ok_or_else(|| not_found("role", r))?;
        }
        Ok(())
    }

    fn row(&self, role_id: &str) -> ScopedAssignment {
        ScopedAssignment {
            actor_type: self.actor_type.into(),
            actor_id: self.actor_id.clone(),
            scope_type: self.scope_type.into(),
            scope_id: self.scope_id.clone(),
            role_id: role_id.into(),
        }
    }
}

fn actor_type(kind: &str) -> ApiResult<&'static str> {
    match kind {
        "users" => Ok("user"),
        "groups" => Ok("group"),
        _ => Err(ApiError::not_found("The resource could not be found.")),
    }
}

fn domain_grant(domain: String, kind: &str, actor: String) -> ApiResult<ScopedGrant> {
    Ok(ScopedGrant { scope_type: "domain", scope_id: domain, actor_type: actor_type(kind)?, actor_id: actor })
}

fn system_grant(kind: &str, actor: String) -> ApiResult<ScopedGrant> {
    Ok(ScopedGrant { scope_type: "system", scope_id: "all".into(), actor_type: actor_type(kind)?, actor_id: actor })
}

async fn put_scoped(state: &AppState, auth: &Auth, g: ScopedGrant, role: String) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:create_grant"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        g.check(db, Some(&role))?;
        Ok(db.assign_scoped_role(&g.row(&role))?)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn check_scoped(state: &AppState, auth: &Auth, g: ScopedGrant, role: String) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:check_grant"), &Target::default())?;
    state.db.with(|db| -> ApiResult<StatusCode> {
        g.check(db, Some(&role))?;
        let held =
            db.scoped_assignments(Some(g.actor_type), Some(&g.actor_id), Some(g.scope_type), Some(&g.scope_id))?;
        if held.iter().any(|a| a.role_id == role) {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(no_grant(&g.scope_id, &g.actor_id, &role))
        }
    })
}

async fn delete_scoped(state: &AppState, auth: &Auth, g: ScopedGrant, role: String) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:revoke_grant"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        g.check(db, Some(&role))?;
        if !db.unassign_scoped_role(&g.row(&role))? {
            return Err(no_grant(&g.scope_id, &g.actor_id, &role));
        }
        ensure_an_admin_remains(db)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_scoped(
    headers: &HeaderMap,
    state: &AppState,
    auth: &Auth,
    g: ScopedGrant,
    path: String,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:list_grants"), &Target::default())?;
    let roles = state.db.with(|db| -> ApiResult<Vec<Role>> {
        g.check(db, None)?;
        let assignments =
            db.scoped_assignments(Some(g.actor_type), Some(&g.actor_id), Some(g.scope_type), Some(&g.scope_id))?;
        roles_of(db, assignments.iter().map(|a| a.role_id.as_str()))
    })?;
    Ok(Json(json!({
        "roles": roles.iter().map(|r| render(headers, state, r)).collect::<Vec<_>>(),
        "links": list_links(url(headers, state, &path)),
    })))
}

pub(super) async fn domain_grant_put(
    State(state): State<AppState>,
    auth: Auth,
    Path((domain, kind, actor, role)): Path<(String, String, String, String)>,
) -> ApiResult<StatusCode> {
    put_scoped(&state, &auth, domain_grant(domain, &kind, actor)?, role).await
}

pub(super) async fn domain_grant_check(
    State(state): State<AppState>,
    auth: Auth,
    Path((domain, kind, actor, role)): Path<(String, String, String, String)>,
) -> ApiResult<StatusCode> {
    check_scoped(&state, &auth, domain_grant(domain, &kind, actor)?, role).await
}

pub(super) async fn domain_grant_delete(
    State(state): State<AppState>,
    auth: Auth,
    Path((domain, kind, actor, role)): Path<(String, String, String, String)>,
) -> ApiResult<StatusCode> {
    delete_scoped(&state, &auth, domain_grant(domain, &kind, actor)?, role).await
}

pub(super) async fn domain_grants(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path((domain, kind, actor)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let path = format!("domains/{domain}/{kind}/{actor}/roles");
    list_scoped(&headers, &state, &auth, domain_grant(domain, &kind, actor)?, path).await
}

pub(super) async fn system_grant_put(
    State(state): State<AppState>,
    auth: Auth,
    Path((kind, actor, role)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    put_scoped(&state, &auth, system_grant(&kind, actor)?, role).await
}

pub(super) async fn system_grant_check(
    State(state): State<AppState>,
    auth: Auth,
    Path((kind, actor, role)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    check_scoped(&state, &auth, system_grant(&kind, actor)?, role).await
}

pub(super) async fn system_grant_delete(
    State(state): State<AppState>,
    auth: Auth,
    Path((kind, actor, role)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    delete_scoped(&state, &auth, system_grant(&kind, actor)?, role).await
}

pub(super) async fn system_grants(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path((kind, actor)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let path = format!("system/{kind}/{actor}/roles");
    list_scoped(&headers, &state, &auth, system_grant(&kind, actor)?, path).await
}
