//! Users: keystone's `/v3/users`, and a user's own password change.

use std::collections::HashMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{
    bool_field, ensure_an_admin_remains, invalid, list_links, member, name_field, not_found, query_bool, string_field,
    url,
};
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::AppState;
use crate::db::identity::{IdentityFilter, User, UserChange};
use crate::policy::{Action, Target};

/// keystone's limit on a user's name.
const NAME_MAX: usize = 255;

/// The user attributes keystone has columns or meaning for; any other key of a create or
/// update body is kept in `extra` and shown back beside them, as keystone does.
const KNOWN: &[&str] = &[
    "id",
    "name",
    "domain_id",
    "enabled",
    "password",
    "default_project_id",
    "description",
    "email",
    "options",
    "links",
    "password_expires_at",
    "federated",
];

/// The extra attributes of a body: its keys keystone has no column for.
fn extra_from(obj: &Map<String, Value>) -> Map<String, Value> {
    obj.iter().filter(|(k, _)| !KNOWN.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A user as keystone shows it, its extra attributes beside the rest.
pub(super) fn render_with_extra(headers: &HeaderMap, state: &AppState, u: &User) -> ApiResult<Value> {
    let extra = state.db.with(|db| db.user_extra(&u.id))?;
    let mut v = render(headers, state, u);
    if let Some(o) = v.as_object_mut() {
        for (k, val) in extra {
            o.entry(k).or_insert(val);
        }
    }
    Ok(v)
}

/// A user as keystone shows it: the optional attributes only when set, never the password.
pub(super) fn render(headers: &HeaderMap, state: &AppState, u: &User) -> Value {
    let mut v = json!({
        "id": u.id, "name": u.name, "domain_id": u.domain_id, "enabled": u.enabled,
        "password_expires_at": null, "options": {},
        "links": {"self": url(headers, state, &format!("users/{}", u.id))},
    });
    for (key, value) in
        [("default_project_id", &u.default_project_id), ("email", &u.email), ("description", &u.description)]
    {
        if let Some(value) = value {
            v[key] = json!(value);
        }
    }
    v
}

pub(super) async fn list(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:list_users"), &Target::default())?;
    let filter = IdentityFilter {
        name: q.get("name").cloned(),
        domain_id: q.get("domain_id").cloned(),
        enabled: q.get("enabled").map(|v| query_bool(v)),
    };
    let users = state.db.with(|db| db.users_where(&filter))?;
    let users = users.iter().map(|u| render_with_extra(&headers, &state, u)).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(json!({
        "users": users,
        "links": list_links(url(&headers, &state, "users")),
    })))
}

pub(super) async fn show(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityGetUser, &Target { user_id: Some(&id), ..Target::default() })?;
    let u = state.db.with(|db| db.user_by_id(&id))?.ok_or_else(|| not_found("user", &id))?;
    Ok(Json(json!({"user": render_with_extra(&headers, &state, &u)?})))
}

/// The attributes a create or update body sets, the password hashed off the async threads.
async fn change_from(state: &AppState, obj: &Map<String, Value>, creating: bool) -> ApiResult<UserChange> {
    let domain_id = string_field(obj, "domain_id", false)?.flatten();
    if !creating && domain_id.is_some() {
        return Err(ApiError::bad_request("Update of `domain_id` is not allowed."));
    }
    let mut change = UserChange {
        name: name_field(obj, creating, NAME_MAX)?,
        default_project_id: string_field(obj, "default_project_id", true)?,
        enabled: bool_field(obj, "enabled")?,
        domain_id,
        email: string_field(obj, "email", true)?,
        description: string_field(obj, "description", true)?,
        password_hash: None,
    };
    if let Some(password) = string_field(obj, "password", true)?.flatten() {
        let hash =
            state.logins.hash(password).await.ok_or_else(|| ApiError::internal("The password could not be hashed."))?;
        change.password_hash = Some(hash);
    }
    Ok(change)
}

/// Checks the references a change makes: the domain and the default project exist.
fn check_references(db: &crate::db::Db, change: &UserChange) -> ApiResult<()> {
    if let Some(d) = &change.domain_id {
        db.domain_by_id(d)?.ok_or_else(|| not_found("domain", d))?;
    }
    if let Some(Some(p)) = &change.default_project_id {
        if db.project_by_id(p)?.is_none() {
            return Err(invalid("default_project_id", &format!("Could not find project: {p}")));
        }
    }
    Ok(())
}

pub(super) async fn create(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth.authorize(Action::IdentityAdmin("identity:create_user"), &Target::default())?;
    let obj = member(body, "user")?;
    let change = change_from(&state, &obj, true).await?;
    let name = change.name.clone().ok_or_else(|| invalid("name", "'name' is a required property"))?;
    let extra = extra_from(&obj);
    let u = state.db.tx(|db| -> ApiResult<User> {
        check_references(db, &change)?;
        let u = db.create_user(&name, &change)?;
        db.set_user_extra(&u.id, &extra)?;
        Ok(u)
    })?;
    Ok((StatusCode::CREATED, Json(json!({"user": render_with_extra(&headers, &state, &u)?}))))
}

pub(super) async fn update(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::IdentityAdmin("identity:update_user"), &Target::default())?;
    let obj = member(body, "user")?;
    let change = change_from(&state, &obj, false).await?;
    // A disabled user's tokens stop working at once: every request checks the user.
    let more = extra_from(&obj);
    let u = state.db.tx(|db| -> ApiResult<User> {
        check_references(db, &change)?;
        let u = db.update_user(&id, &change)?;
        // keystone merges an update's extra attributes into those the user has.
        if !more.is_empty() {
            let mut extra = db.user_extra(&id)?;
            extra.extend(more.clone());
            db.set_user_extra(&id, &extra)?;
        }
        if change.password_hash.is_some() {
            db.revoke_user_tokens(&id)?;
        }
        ensure_an_admin_remains(db)?;
        Ok(u)
    })?;
    Ok(Json(json!({"user": render_with_extra(&headers, &state, &u)?})))
}

pub(super) async fn delete(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    auth.authorize(Action::IdentityAdmin("identity:delete_user"), &Target::default())?;
    state.db.tx(|db| -> ApiResult<()> {
        db.delete_user(&id)?;
        ensure_an_admin_remains(db)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v3/users/{id}/password`: a user changes its own password, proving the old one (as
/// in keystone, no token is needed: the original password is the proof). Its tokens are
/// revoked, and a wrong original password counts towards the lockout.
pub(super) async fn change_password(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let obj = member(body, "user")?;
    let original = string_field(&obj, "original_password", false)?
        .flatten()
        .ok_or_else(|| invalid("original_password", "'original_password' is a required property"))?;
    let password = string_field(&obj, "password", false)?
        .flatten()
        .ok_or_else(|| invalid("password", "'password' is a required property"))?;
    let unauthorized = || ApiError::unauthorized("The request you have made requires authentication.");
    let user = state.db.with(|db| db.user_by_id(&id))?;
    state
        .logins
        .check(user.as_ref().map(|u| u.id.as_str()), None)
        .map_err(|r| ApiError::unauthorized(r.to_string()))?;
    let Some(user) = user.filter(|u| u.enabled) else { return Err(unauthorized()) };
    if !state.logins.verify(original, user.password_hash.clone()).await {
        state.logins.failed(Some(&user.id), None);
        return Err(unauthorized());
    }
    state.logins.succeeded(&user.id);
    let hash =
        state.logins.hash(password).await.ok_or_else(|| ApiError::internal("The password could not be hashed."))?;
    state.db.tx(|db| -> ApiResult<()> {
        db.set_password_hash(&user.id, &hash)?;
        Ok(db.revoke_user_tokens(&user.id)?)
    })?;
    Ok(StatusCode::NO_CONTENT)
}
