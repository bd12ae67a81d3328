//! Application credentials: `/v3/users/{id}/application_credentials`. A user makes one for a
//! program; it stands for the user in the project of the token that made it, with at most the
//! roles that token had, and is used with the `application_credential` auth method.

use std::collections::HashMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use base64::Engine;
use rand::RngCore;
use serde_json::{json, Value};

use super::{bool_field, invalid, list_links, member, name_field, not_found, string_field, url};
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::AppState;
use crate::db::appcreds::AppCred;
use crate::db::Db;
use crate::policy::{Action, Target};

fn render(headers: &HeaderMap, state: &AppState, db: &Db, a: &AppCred) -> ApiResult<Value> {
    let mut roles = Vec::new();
    for id in &a.roles {
        if let Some(r) = db.role_by_id(id)? {
            roles.push(json!({"id": r.id, "name": r.name, "domain_id": null}));
        }
    }
    Ok(json!({
        "id": a.id, "name": a.name, "description": a.description,
        "expires_at": a.expires_at.as_deref().map(keystone_time),
        "project_id": a.project_id, "user_id": a.user_id, "roles": roles, "unrestricted": a.unrestricted,
        "access_rules": [],
        "links": {"self": url(headers, state, &format!("users/{}/application_credentials/{}", a.user_id, a.id))},
    }))
}

/// keystone's `identity:*_application_credential`: the owner (or, to read and delete, an admin).
fn authorize_owner(auth: &Auth, user: &str) -> ApiResult<()> {
    auth.authorize(Action::IdentityGetUser, &Target { user_id: Some(user), ..Target::default() })
}

pub(super) async fn create(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(user): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if user != auth.user_id() {
        // Not even an admin makes one for someone else: it would carry that user's roles.
        return Err(ApiError::forbidden(
            "You are not authorized to perform the requested action: identity:create_application_credential.",
        ));
    }
    let made_by = headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .map(|t| state.db.with(|db| db.valid_token(&crate::api::context::token_hash(t))))
        .transpose()?
        .flatten()
        .and_then(|rec| rec.application_credential_id);
    if let Some(id) = made_by {
        // keystone: a restricted application credential cannot make (or outlive into) others.
        if state.db.with(|db| db.app_cred(&id))?.is_some_and(|c| !c.unrestricted) {
            return Err(ApiError::forbidden(
                "You are not authorized to perform the requested action: Using method 'application_credential' is not \
                 allowed for managing additional application credentials.",
            ));
        }
    }
    let obj = member(body, "application_credential")?;
    let name = name_field(&obj, true, 255)?.ok_or_else(|| invalid("name", "'name' is a required property"))?;
    let description = string_field(&obj, "description", true)?.flatten();
    let expires_at = string_field(&obj, "expires_at", true)?.flatten().map(|e| normalize_time(&e)).transpose()?;
    let unrestricted = bool_field(&obj, "unrestricted")?.unwrap_or(false);
    let secret = match string_field(&obj, "secret", true)?.flatten() {
        Some(s) if s.is_empty() => return Err(invalid("secret", "the secret must not be empty")),
        Some(s) => s,
        None => {
            let mut raw = [0u8; 48];
            rand::thread_rng().fill_bytes(&mut raw);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        }
    };
    let asked: Option<Vec<Value>> = match obj.get("roles") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(list.clone()),
        Some(v) => return Err(invalid("roles", &format!("{v} is not of type 'array'"))),
    };
    let secret_hash =
        state.logins.hash(secret.clone()).await.ok_or_else(|| ApiError::internal("The secret could not be hashed."))?;
    let project_id = auth.project_id().to_string();
    let caller_roles = auth.context.roles.clone();
    let cred = state.db.tx(|db| -> ApiResult<Value> {
        // The roles it delegates: those asked for (each one the caller's token has), or all of them.
        let mut roles = Vec::new();
        match &asked {
            None => {
                for name in &caller_roles {
                    roles.extend(db.role_by_name(name)?.map(|r| r.id));
                }
            }
            Some(list) => {
                for r in list {
                    let found = match (r.get("id").and_then(Value::as_str), r.get("name").and_then(Value::as_str)) {
                        (Some(id), _) => db.role_by_id(id)?,
                        (None, Some(name)) => db.role_by_name(name)?,
                        _ => return Err(invalid("roles", "each role needs an id or a name")),
                    };
                    match found {
                        Some(role) if caller_roles.contains(&role.name) => roles.push(role.id),
                        _ => {
                            return Err(ApiError::not_found(format!(
                                "Could not find role assignment with role: {r}, user or group: {user}, project, domain, or system: {project_id}."
                            )))
                        }
                    }
                }
            }
        }
        let cred = AppCred {
            id: crate::db::new_hex_id(),
            user_id: user.clone(),
            project_id: project_id.clone(),
            name: name.clone(),
            description: description.clone(),
            secret_hash,
            expires_at: expires_at.clone(),
            unrestricted,
            roles,
        };
        db.insert_app_cred(&cred)?;
        render(&headers, &state, db, &cred)
    })?;
    let mut cred = cred;
    // The secret is shown once, now; only its hash is kept.
    cred["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(json!({"application_credential": cred}))))
}

/// An `expires_at` as the database compares it (`...Z`), to the microsecond keystone keeps,
/// or keystone's 400.
fn normalize_time(t: &str) -> ApiResult<String> {
    let parsed = chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.with_timezone(&chrono::Utc))
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f").map(|n| n.and_utc()))
        .map_err(|_| invalid("expires_at", &format!("'{t}' is not a 'date-time'")))?;
    Ok(parsed.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

/// keystone shows an application credential's `expires_at` as oslo's `PERFECT_TIME_FORMAT`:
/// microseconds and no zone (`2026-12-06T07:35:47.088331`); clients compare it with the
/// `isoformat()` of the time they sent.
fn keystone_time(stored: &str) -> String {
    let t = stored.strip_suffix('Z').unwrap_or(stored);
    if t.contains('.') {
        t.to_string()
    } else {
        format!("{t}.000000")
    }
}

pub(super) async fn list(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path(user): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    authorize_owner(&auth, &user)?;
    let creds = state.db.with(|db| -> ApiResult<Vec<Value>> {
        db.user_by_id(&user)?.ok_or_else(|| not_found("user", &user))?;
        let mut out = Vec::new();
        for c in db.app_creds_of(&user)? {
            if q.get("name").is_none_or(|n| *n == c.name) {
                out.push(render(&headers, &state, db, &c)?);
            }
        }
        Ok(out)
    })?;
    let path = format!("users/{user}/application_credentials");
    Ok(Json(json!({"application_credentials": creds, "links": list_links(url(&headers, &state, &path))})))
}

pub(super) async fn show(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Path((user, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    authorize_owner(&auth, &user)?;
    let cred = state.db.with(|db| -> ApiResult<Value> {
        let c =
            db.app_cred(&id)?.filter(|c| c.user_id == user).ok_or_else(|| not_found("application credential", &id))?;
        render(&headers, &state, db, &c)
    })?;
    Ok(Json(json!({"application_credential": cred})))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path((user, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    authorize_owner(&auth, &user)?;
    state.db.tx(|db| -> ApiResult<()> {
        db.app_cred(&id)?.filter(|c| c.user_id == user).ok_or_else(|| not_found("application credential", &id))?;
        db.delete_app_cred(&id)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}
