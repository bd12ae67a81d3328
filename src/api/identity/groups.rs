//! Groups, their members, and their roles on projects: a member of a group holds the group's
//! roles while it is a member.

use std::collections::HashMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::{ensure_an_admin_remains, invalid, list_links, member, name_field, not_found, string_field, url};
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::AppState;
use crate::db::identity::{Group, IdentityFilter, Role};
use crate::db::Db;
use crate::policy::{Action, Target};

fn render(headers: &HeaderMap, state: &AppState, g: &Group) -> Value {
    json!({
        "id": g.id, "name": g.name, "description": g.description, "domain_id": g.domain_id,
        "links": {"self": url(headers, state, &format!("groups/{}", g.id))},
    })
}

fn render_list(headers: &HeaderMap, state: &AppState, groups: &[Group], path: &str) -> Json<Value> {
    Json(json!({
        "groups": groups.iter().map(|g| render(headers, state, g)).collect::<Vec<_>>(),
        "links": list_links(url(headers, state, path)),
    }))
}

pub(super) async fn list(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:list_groups"), &Target::default())?;
    let filter = IdentityFilter { name: q.get("name").cloned(), domain_id: q.get("domain_id").cloned(), enabled: None };
    let groups = state.db.with(|db| db.groups_where(&filter))?;
    Ok(render_list(&headers, &state, &groups, "groups"))
}

pub(super) async fn show(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:get_group"), &Target::default())?;
    let g = state.db.with(|db| db.group_by_id(&id))?.ok_or_else(|| not_found("group", &id))?;
    Ok(Json(json!({"group": render(&headers, &state, &g)})))
}

pub(super) async fn create(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth.authorize(Action::IdentityAdmin("identity:create_group"), &Target::default())?;
    let obj = member(body, "group")?;
    let name = name_field(&obj, true, 64)?.ok_or_else(|| invalid("name", "'name' is a required property"))?;
    let description = string_field(&obj, "description", true)?.flatten().unwrap_or_default();
    let domain_id = string_field(&obj, "domain_id", false)?.flatten().unwrap_or_else(|| "default".into());
    let g = state.db.tx(|db| -> ApiResult<Group> {
        db.domain_by_id(&domain_id)?.ok_or_else(|| not_found("domain", &domain_id))?;
        Ok(db.create_group(&name, &description, &domain_id)?)
    })?;
    Ok((StatusCode::CREATED, Json(json!({"group": render(&headers, &state, &g)}))))
}

pub(super) async fn update(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:update_group"), &Target::default())?;
    let obj = member(body, "group")?;
    let name = name_field(&obj, false, 64)?;
    let description = string_field(&obj, "description", true)?.map(Option::unwrap_or_default);
    if obj.contains_key("domain_id") {
        return Err(ApiError::bad_request("Update of `domain_id` is not allowed."));
    }
    let g = state.db.with(|db| db.update_group(&id, name.as_deref(), description.as_deref()))?;
    Ok(Json(json!({"group": render(&headers, &state, &g)})))
}

pub(super) async fn delete(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:delete_group"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        db.delete_group(&id)?;
        ensure_an_admin_remains(db)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// The group and user of a membership URL, each looked up.
fn membership_parts(db: &Db, group: &str, user: &str) -> ApiResult<()> {
    db.group_by_id(group)?.ok_or_else(|| not_found("group", group))?;
    db.user_by_id(user)?.ok_or_else(|| not_found("user", user))?;
    Ok(())
}

pub(super) async fn add_member(
    State(state): State<AppState>,
    auth: Auth,
    Path((group, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:add_user_to_group"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        membership_parts(db, &group, &user)?;
        Ok(db.add_group_member(&group, &user)?)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

fn not_member(group: &str, user: &str) -> ApiError {
    ApiError::not_found(format!("User {user} is not a member of group {group}."))
}

/// `HEAD` (and `GET`) of a membership: 204 when the user is a member.
pub(super) async fn check_member(
    State(state): State<AppState>,
    auth: Auth,
    Path((group, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:check_user_in_group"), &Target::default())?;
    state.db.with(|db| -> ApiResult<StatusCode> {
        membership_parts(db, &group, &user)?;
        if db.group_members(&group)?.contains(&user) {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(not_member(&group, &user))
        }
    })
}

pub(super) async fn remove_member(
    State(state): State<AppState>,
    auth: Auth,
    Path((group, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:remove_user_from_group"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        membership_parts(db, &group, &user)?;
        if !db.remove_group_member(&group, &user)? {
            return Err(not_member(&group, &user));
        }
        ensure_an_admin_remains(db)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_members(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(group): Path<String>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:list_users_in_group"), &Target::default())?;
    let users = state.db.with(|db| -> ApiResult<Vec<crate::db::identity::User>> {
        db.group_by_id(&group)?.ok_or_else(|| not_found("group", &group))?;
        let mut users = Vec::new();
        for id in db.group_members(&group)? {
            users.extend(db.user_by_id(&id)?);
        }
        Ok(users)
    })?;
    Ok(Json(json!({
        "users": users.iter().map(|u| super::users::render(&headers, &state, u)).collect::<Vec<_>>(),
        "links": list_links(url(&headers, &state, &format!("groups/{group}/users"))),
    })))
}

/// `GET /v3/users/{id}/groups`: the user itself, or an admin.
pub(super) async fn user_groups(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityGetUser, &Target { user_id: Some(&user), ..Target::default() })?;
    let groups = state.db.with(|db| -> ApiResult<Vec<Group>> {
        db.user_by_id(&user)?.ok_or_else(|| not_found("user", &user))?;
        Ok(db.groups_of(&user)?)
    })?;
    Ok(render_list(&headers, &state, &groups, &format!("users/{user}/groups")))
}

/// The project, group and role of a group grant URL, each looked up.
fn grant_parts(db: &Db, project: &str, group: &str, role: Option<&str>) -> ApiResult<Option<Role>> {
    super::roles::project_grant_parts(db, project, role, || {
        db.group_by_id(group)?.ok_or_else(|| not_found("group", group))?;
        Ok(())
    })
}

pub(super) async fn grant(
    State(state): State<AppState>,
    auth: Auth,
    Path((project, group, role)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:create_grant"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        grant_parts(db, &project, &group, Some(&role))?;
        Ok(db.assign_group_role(&group, &project, &role)?)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn check_grant(
    State(state): State<AppState>,
    auth: Auth,
    Path((project, group, role)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:check_grant"), &Target::default())?;
    state.db.with(|db| -> ApiResult<StatusCode> {
        grant_parts(db, &project, &group, Some(&role))?;
        if db.group_assignments(Some(&group), Some(&project), Some(&role))?.is_empty() {
            return Err(super::roles::no_grant(&project, &group, &role));
        }
        Ok(StatusCode::NO_CONTENT)
    })
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    auth: Auth,
    Path((project, group, role)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:revoke_grant"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        grant_parts(db, &project, &group, Some(&role))?;
        if !db.unassign_group_role(&group, &project, &role)? {
            return Err(super::roles::no_grant(&project, &group, &role));
        }
        ensure_an_admin_remains(db)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_grants(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path((project, group)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:list_grants"), &Target::default())?;
    let roles = state.db.with(|db| -> ApiResult<Vec<Role>> {
        grant_parts(db, &project, &group, None)?;
        let assignments = db.group_assignments(Some(&group), Some(&project), None)?;
        super::roles::roles_of(db, assignments.iter().map(|a| a.role_id.as_str()))
    })?;
    Ok(Json(json!({
        "roles": roles.iter().map(|r| super::roles::render(&headers, &state, r)).collect::<Vec<_>>(),
        "links": list_links(url(&headers, &state, &format!("projects/{project}/groups/{group}/roles"))),
    })))
}
