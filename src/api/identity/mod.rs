//! Identity v3 (keystone): version discovery, tokens, and the admin API clients and tempest
//! use to set themselves up: domains, projects, users, groups, roles and role assignments.
//!
//! Who may call what is keystone's default policy, from [`crate::policy`]: writes and reads
//! of other users' or projects' records are for admins; a user may read itself and its project.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::fault::{ApiError, ApiResult};
use super::{base_url, AppState};

mod appcreds;
mod domains;
mod groups;
mod projects;
mod roles;
mod tokens;
mod users;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(versions))
        .route("/v3", get(version))
        .route("/v3/", get(version))
        .route(
            "/v3/auth/tokens",
            get(tokens::validate_token)
                .head(tokens::check_token)
                .post(tokens::issue_token)
                .delete(tokens::revoke_token),
        )
        .route("/v3/auth/catalog", get(tokens::auth_catalog))
        .route("/v3/auth/projects", get(projects::auth_projects))
        .route("/v3/auth/domains", get(domains::auth_domains))
        .route("/v3/domains", get(domains::list).post(domains::create))
        .route("/v3/domains/{id}", get(domains::show).patch(domains::update).delete(domains::delete))
        .route("/v3/projects", get(projects::list).post(projects::create))
        .route("/v3/projects/{id}", get(projects::show).patch(projects::update).delete(projects::delete))
        .route(
            "/v3/projects/{id}/tags",
            get(projects::list_tags).put(projects::replace_tags).delete(projects::delete_tags),
        )
        .route(
            "/v3/projects/{id}/tags/{tag}",
            get(projects::check_tag_exists).put(projects::add_tag).delete(projects::delete_tag),
        )
        .route("/v3/projects/{project}/users/{user}/roles", get(roles::list_grants))
        .route(
            "/v3/projects/{project}/users/{user}/roles/{role}",
            put(roles::grant).head(roles::check_grant).get(roles::check_grant).delete(roles::revoke),
        )
        .route("/v3/projects/{project}/groups/{group}/roles", get(groups::list_grants))
        .route(
            "/v3/projects/{project}/groups/{group}/roles/{role}",
            put(groups::grant).head(groups::check_grant).get(groups::check_grant).delete(groups::revoke),
        )
        .route("/v3/domains/{domain}/{kind}/{actor}/roles", get(roles::domain_grants))
        .route(
            "/v3/domains/{domain}/{kind}/{actor}/roles/{role}",
            put(roles::domain_grant_put)
                .head(roles::domain_grant_check)
                .get(roles::domain_grant_check)
                .delete(roles::domain_grant_delete),
        )
        .route("/v3/system/{kind}/{actor}/roles", get(roles::system_grants))
        .route(
            "/v3/system/{kind}/{actor}/roles/{role}",
            put(roles::system_grant_put)
                .head(roles::system_grant_check)
                .get(roles::system_grant_check)
                .delete(roles::system_grant_delete),
        )
        .route("/v3/auth/system", get(domains::auth_system))
        .route("/v3/groups", get(groups::list).post(groups::create))
        .route("/v3/groups/{id}", get(groups::show).patch(groups::update).delete(groups::delete))
        .route("/v3/groups/{id}/users", get(groups::list_members))
        .route(
            "/v3/groups/{group}/users/{user}",
            put(groups::add_member).head(groups::check_member).get(groups::check_member).delete(groups::remove_member),
        )
        .route("/v3/users/{id}/groups", get(groups::user_groups))
        .route("/v3/users/{user}/application_credentials", get(appcreds::list).post(appcreds::create))
        .route("/v3/users/{user}/application_credentials/{id}", get(appcreds::show).delete(appcreds::delete))
        .route("/v3/users", get(users::list).post(users::create))
        .route("/v3/users/{id}", get(users::show).patch(users::update).delete(users::delete))
        .route("/v3/users/{id}/password", post(users::change_password))
        .route("/v3/users/{id}/projects", get(projects::user_projects))
        .route("/v3/roles", get(roles::list).post(roles::create))
        .route("/v3/roles/{id}", get(roles::show).patch(roles::update).delete(roles::delete))
        .route("/v3/roles/{prior}/implies", get(roles::list_inferences))
        .route(
            "/v3/roles/{prior}/implies/{implied}",
            put(roles::create_inference)
                .get(roles::show_inference)
                .head(roles::check_inference)
                .delete(roles::delete_inference),
        )
        .route("/v3/role_inferences", get(roles::inferences))
        .route("/v3/role_assignments", get(roles::assignments))
        .fallback(|| async { ApiError::not_found("The resource could not be found.") })
}

fn version_doc(base: &str) -> Value {
    json!({
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{base}/identity/v3/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    })
}

pub(super) async fn versions(headers: HeaderMap, State(state): State<AppState>) -> Response {
    let base = base_url(&headers, &state.config);
    (StatusCode::MULTIPLE_CHOICES, Json(json!({"versions": {"values": [version_doc(&base)]}}))).into_response()
}

async fn version(headers: HeaderMap, State(state): State<AppState>) -> Json<Value> {
    Json(json!({"version": version_doc(&base_url(&headers, &state.config))}))
}

/// The URL of an identity resource, for `links`.
fn url(headers: &HeaderMap, state: &AppState, path: &str) -> String {
    format!("{}/identity/v3/{path}", base_url(headers, &state.config))
}

/// A collection's `links`, as keystone writes them for an unpaginated list.
fn list_links(self_url: String) -> Value {
    json!({"self": self_url, "next": null, "previous": null})
}

/// A JSON body's top-level object `key` (`{"project": {...}}`), or keystone's 400 naming it.
fn member(body: Result<Json<Value>, JsonRejection>, key: &str) -> ApiResult<Map<String, Value>> {
    let Json(body) = body.map_err(|e| ApiError::from_json_rejection(e, "Malformed request body"))?;
    match body.get(key) {
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(invalid(key, "is not of type 'object'")),
        None => Err(invalid(key, &format!("'{key}' is a required property"))),
    }
}

/// keystone's schema validation error.
fn invalid(field: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("Invalid input for field '{field}': {why}."))
}

/// An optional string field; `nullable` says whether `null` is allowed (it reads as `Some(None)`).
fn string_field(obj: &Map<String, Value>, field: &str, nullable: bool) -> ApiResult<Option<Option<String>>> {
    match obj.get(field) {
        None => Ok(None),
        Some(Value::Null) if nullable => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
        Some(v) => Err(invalid(field, &format!("{v} is not of type 'string'"))),
    }
}

/// A name: a string of 1 to `max` characters that is not only blanks.
fn name_field(obj: &Map<String, Value>, required: bool, max: usize) -> ApiResult<Option<String>> {
    match string_field(obj, "name", false)? {
        None if required => Err(invalid("name", "'name' is a required property")),
        None => Ok(None),
        Some(Some(n)) if n.trim().is_empty() => Err(invalid("name", "the name must not be empty")),
        Some(Some(n)) if n.chars().count() > max => Err(invalid("name", &format!("'{n}' is too long"))),
        Some(n) => Ok(n),
    }
}

fn bool_field(obj: &Map<String, Value>, field: &str) -> ApiResult<Option<bool>> {
    match obj.get(field) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(invalid(field, &format!("{v} is not of type 'boolean'"))),
    }
}

/// A query's boolean as keystone reads it: `0`, `false`, `f`, `no`, `n`, `off` (any case) are
/// false, anything else true.
fn query_bool(v: &str) -> bool {
    !matches!(v.to_ascii_lowercase().as_str(), "0" | "false" | "f" | "no" | "n" | "off")
}

fn not_found(kind: &str, id: &str) -> ApiError {
    ApiError::not_found(format!("Could not find {kind}: {id}."))
}

/// Refuses a change that would leave no enabled user holding the admin role on an enabled
/// project: nobody could administer the cloud afterwards. Called inside the change's
/// transaction, after it, so the change rolls back with the refusal.
fn ensure_an_admin_remains(db: &crate::db::Db) -> ApiResult<()> {
    let Some(admin) = db.role_by_name("admin")? else { return Ok(()) };
    if db.holders_of(&admin.id)?.is_empty() {
        return Err(ApiError::forbidden(
            "You are not authorized to perform the requested action: it would leave no enabled user with the admin \
             role on an enabled project, and no one could administer the cloud.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod extra_tests;
#[cfg(test)]
mod tests;
