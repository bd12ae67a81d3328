//! Identity v3 (keystone): version discovery, password and token authentication with project
//! scope, token validation and revocation, and the admin listings clients use.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};

use super::context::{token_hash, Auth};
use super::fault::{ApiError, ApiResult};
use super::{base_url, AppState};
use crate::db::tokens::{NewToken, TokenRecord};
use crate::db::Db;
use crate::policy::{Action, Target};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(versions))
        .route("/v3", get(version))
        .route("/v3/", get(version))
        .route("/v3/auth/tokens", get(validate_token).head(check_token).post(issue_token).delete(revoke_token))
        .route("/v3/auth/catalog", get(auth_catalog))
        .route("/v3/auth/projects", get(auth_projects))
        .route("/v3/projects", get(list_projects))
        .route("/v3/projects/{id}", get(show_project))
        .route("/v3/users", get(list_users))
        .route("/v3/users/{id}/projects", get(user_projects))
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

async fn versions(headers: HeaderMap, State(state): State<AppState>) -> Response {
    let base = base_url(&headers, &state.config);
    (StatusCode::MULTIPLE_CHOICES, Json(json!({"versions": {"values": [version_doc(&base)]}}))).into_response()
}

async fn version(headers: HeaderMap, State(state): State<AppState>) -> Json<Value> {
    Json(json!({"version": version_doc(&base_url(&headers, &state.config))}))
}

#[derive(Debug, Deserialize)]
struct AuthRequest {
    auth: AuthBody,
}

#[derive(Debug, Deserialize)]
struct AuthBody {
    identity: Identity,
    #[serde(default)]
    scope: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Identity {
    methods: Vec<String>,
    #[serde(default)]
    password: Option<PasswordMethod>,
    #[serde(default)]
    token: Option<TokenMethod>,
}

#[derive(Debug, Deserialize)]
struct PasswordMethod {
    user: UserRef,
}

#[derive(Debug, Deserialize)]
struct UserRef {
    id: Option<String>,
    name: Option<String>,
    #[serde(default)]
    domain: Option<DomainRef>,
    password: String,
}

#[derive(Debug, Deserialize)]
struct DomainRef {
    id: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenMethod {
    id: String,
}

/// novabox has the one domain keystone starts with.
fn check_domain(domain: Option<&DomainRef>) -> ApiResult<()> {
    match domain {
        None => Ok(()),
        Some(d)
            if d.id.as_deref().is_none_or(|id| id == "default") && d.name.as_deref().is_none_or(|n| n == "Default") =>
        {
            Ok(())
        }
        Some(_) => Err(ApiError::unauthorized("The request you have made requires authentication.")),
    }
}

/// Who the request says it is: a user, the project a token scope would default to, and (for
/// a token made from a token) the expiry it may not outlive.
struct Subject {
    user_id: String,
    default_project: Option<String>,
    expires_no_later_than: Option<String>,
}

async fn issue_token(
    headers: HeaderMap,
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Json<AuthRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body.map_err(|e| ApiError::from_json_rejection(e, "Invalid authentication request"))?;
    let methods = req.auth.identity.methods.clone();
    let subject = authenticate(&state, &req.auth.identity, peer.map(|Extension(ConnectInfo(addr))| addr.ip())).await?;
    let ttl = state.config.api.token_ttl_secs;
    let per_user = state.config.api.max_tokens_per_user;

    let (token, record) = state.db.tx(|db| -> ApiResult<(String, TokenRecord)> {
        let project_id = match &req.auth.scope {
            None => subject.default_project.clone(),
            Some(scope) => Some(resolve_project_scope(db, scope)?),
        };
        if let Some(p) = &project_id {
            let enabled = db.project_by_id(p)?.map(|p| p.enabled).unwrap_or(false);
            if !enabled || db.roles_of(&subject.user_id, p)?.is_empty() {
                return Err(ApiError::unauthorized("The user has no role on the requested project."));
            }
        }

        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let audit_id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..16]);
        let issued_at = chrono::Utc::now();
        let mut expires_at =
            (issued_at + chrono::Duration::seconds(ttl as i64)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
        if let Some(parent) = &subject.expires_no_later_than {
            expires_at = expires_at.min(parent.clone());
        }
        db.insert_token(
            &NewToken {
                token_hash: &token_hash(&token),
                audit_id: &audit_id,
                user_id: &subject.user_id,
                project_id: project_id.as_deref(),
                methods: &methods,
                issued_at: &issued_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                expires_at: &expires_at,
            },
            per_user,
        )?;
        let record = db.valid_token(&token_hash(&token))?.ok_or_else(|| ApiError::internal("token vanished"))?;
        Ok((token, record))
    })?;

    let body = token_body(&record, &base_url(&headers, &state.config), &state.config.host.region);
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    resp.headers_mut().insert("x-subject-token", token.parse().map_err(|_| ApiError::internal("bad token"))?);
    Ok(resp)
}

/// Checks the password or the token of an auth request. A password is checked off the async
/// threads and outside the database lock, and only while neither the user nor the source is
/// locked out ([`super::logins`]).
async fn authenticate(state: &AppState, identity: &Identity, source: Option<std::net::IpAddr>) -> ApiResult<Subject> {
    let unauthorized = || ApiError::unauthorized("The request you have made requires authentication.");
    if identity.methods.iter().any(|m| m == "password") {
        let pw = identity.password.as_ref().ok_or_else(|| {
            ApiError::bad_request("Expecting to find password in identity: the password method needs it.")
        })?;
        check_domain(pw.user.domain.as_ref())?;
        let user = match (&pw.user.id, &pw.user.name) {
            (Some(id), _) => state.db.with(|db| db.user_by_id(id))?,
            (None, Some(name)) => state.db.with(|db| db.user_by_name(name))?,
            (None, None) => return Err(ApiError::bad_request("Expecting to find id or name in user.")),
        };
        state.logins.check(user.as_ref().map(|u| u.id.as_str()), source).map_err(refused)?;
        let Some(user) = user.filter(|u| u.enabled) else {
            state.logins.failed(None, source);
            return Err(unauthorized());
        };
        if !state.logins.verify(pw.user.password.clone(), user.password_hash.clone()).await {
            state.logins.failed(Some(&user.id), source);
            return Err(unauthorized());
        }
        state.logins.succeeded(&user.id);
        Ok(Subject { user_id: user.id, default_project: user.default_project_id, expires_no_later_than: None })
    } else if identity.methods.iter().any(|m| m == "token") {
        let t = identity.token.as_ref().ok_or_else(|| ApiError::bad_request("Expecting to find token in identity."))?;
        let rec = state.db.with(|db| db.valid_token(&token_hash(&t.id)))?.ok_or_else(unauthorized)?;
        // A token made from a token never outlives it, as in keystone.
        Ok(Subject {
            user_id: rec.user_id,
            default_project: rec.project_id,
            expires_no_later_than: Some(rec.expires_at),
        })
    } else {
        Err(ApiError::unauthorized("Only the password and token methods are supported."))
    }
}

/// A login refused before its password was looked at, as keystone (or, for a flooding
/// address, any HTTP service) answers it.
fn refused(r: super::logins::Refused) -> ApiError {
    match r {
        super::logins::Refused::AccountLocked { .. } => ApiError::unauthorized(r.to_string()),
        super::logins::Refused::SourceThrottled { retry_after_secs, .. } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, r.to_string()).with_retry_after(retry_after_secs)
        }
    }
}

fn resolve_project_scope(db: &Db, scope: &Value) -> ApiResult<String> {
    let project = scope.get("project").ok_or_else(|| {
        ApiError::unauthorized("Only project scope is supported; ask for a token scoped to a project.")
    })?;
    let not_found = || ApiError::unauthorized("The requested project was not found.");
    if let Some(id) = project.get("id").and_then(Value::as_str) {
        return db.project_by_id(id)?.map(|p| p.id).ok_or_else(not_found);
    }
    if let Some(name) = project.get("name").and_then(Value::as_str) {
        let domain = project.get("domain").map(|d| DomainRef {
            id: d.get("id").and_then(Value::as_str).map(str::to_string),
            name: d.get("name").and_then(Value::as_str).map(str::to_string),
        });
        check_domain(domain.as_ref())?;
        return db.project_by_name(name)?.map(|p| p.id).ok_or_else(not_found);
    }
    Err(ApiError::bad_request("Expecting to find id or name in project scope."))
}

fn token_body(rec: &TokenRecord, base: &str, region: &str) -> Value {
    let domain = json!({"id": "default", "name": "Default"});
    let mut token = json!({
        "methods": rec.methods,
        "user": {"id": rec.user_id, "name": rec.user_name, "domain": domain, "password_expires_at": null},
        "audit_ids": [rec.audit_id],
        "issued_at": with_micros(&rec.issued_at),
        "expires_at": with_micros(&rec.expires_at),
    });
    if let (Some(pid), Some(pname)) = (&rec.project_id, &rec.project_name) {
        token["project"] = json!({"id": pid, "name": pname, "domain": domain});
        token["is_domain"] = json!(false);
        token["roles"] = rec.roles.iter().map(|(id, name)| json!({"id": id, "name": name})).collect();
        token["catalog"] = catalog(base, region, pid);
    }
    json!({ "token": token })
}

/// keystone writes token times with microseconds: `2026-11-27T10:00:00.000000Z`.
fn with_micros(ts: &str) -> String {
    match ts.strip_suffix('Z') {
        Some(s) if !s.contains('.') => format!("{s}.000000Z"),
        _ => ts.to_string(),
    }
}

/// The service catalog. Compute's URL includes its version; image and network do not, since
/// clients append `v2/` and `v2.0/` themselves.
/// Block storage is listed twice, as DevStack does: `block-storage` (what openstacksdk looks
/// for first) and the older `volumev3`, both with the project in the URL.
fn catalog(base: &str, region: &str, project_id: &str) -> Value {
    let services = [
        ("identity", "keystone", format!("{base}/identity")),
        ("compute", "nova", format!("{base}/compute/v2.1")),
        ("image", "glance", format!("{base}/image")),
        ("network", "neutron", format!("{base}/network")),
        ("block-storage", "cinder", format!("{base}/volume/v3/{project_id}")),
        ("volumev3", "cinderv3", format!("{base}/volume/v3/{project_id}")),
    ];
    services
        .iter()
        .map(|(kind, name, url)| {
            let endpoints: Vec<Value> = ["public", "internal", "admin"]
                .iter()
                .map(|iface| {
                    json!({
                        "id": stable_id(&format!("{kind}-{iface}")),
                        "interface": iface,
                        "region": region,
                        "region_id": region,
                        "url": url,
                    })
                })
                .collect();
            json!({"id": stable_id(kind), "type": kind, "name": name, "endpoints": endpoints})
        })
        .collect()
}

/// An id that stays the same across restarts without being stored.
fn stable_id(seed: &str) -> String {
    token_hash(seed)[..32].to_string()
}

fn subject(headers: &HeaderMap) -> ApiResult<String> {
    headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request("The X-Subject-Token header is required."))
}

/// The subject token's record, for a caller the policy lets see it: keystone's
/// `identity:validate_token` allows the token's own user, and admins.
fn subject_record(state: &AppState, headers: &HeaderMap, auth: &Auth) -> ApiResult<(String, TokenRecord)> {
    let subject = subject(headers)?;
    let record = state
        .db
        .with(|db| db.valid_token(&token_hash(&subject)))?
        .ok_or_else(|| ApiError::not_found("Could not find token."))?;
    auth.authorize(Action::IdentityValidateToken, &Target { user_id: Some(&record.user_id), ..Target::default() })?;
    Ok((subject, record))
}

async fn validate_token(headers: HeaderMap, State(state): State<AppState>, auth: Auth) -> ApiResult<Response> {
    let (subject, record) = subject_record(&state, &headers, &auth)?;
    let body = token_body(&record, &base_url(&headers, &state.config), &state.config.host.region);
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert("x-subject-token", subject.parse().map_err(|_| ApiError::internal("bad token"))?);
    Ok(resp)
}

async fn check_token(headers: HeaderMap, State(state): State<AppState>, auth: Auth) -> ApiResult<StatusCode> {
    subject_record(&state, &headers, &auth).map(|_| StatusCode::OK)
}

async fn revoke_token(headers: HeaderMap, State(state): State<AppState>, auth: Auth) -> ApiResult<StatusCode> {
    let subject = subject(&headers)?;
    let hash = token_hash(&subject);
    let owner =
        state.db.with(|db| db.valid_token(&hash))?.ok_or_else(|| ApiError::not_found("Could not find token."))?;
    if owner.user_id != auth.user_id() && !auth.is_admin() {
        return Err(ApiError::forbidden("You may revoke only your own tokens."));
    }
    state.db.with(|db| db.revoke_token(&hash))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn auth_catalog(headers: HeaderMap, State(state): State<AppState>, auth: Auth) -> Json<Value> {
    let base = base_url(&headers, &state.config);
    Json(json!({"catalog": catalog(&base, &state.config.host.region, auth.project_id()), "links": {"self": null}}))
}

fn project_json(p: &crate::db::identity::Project) -> Value {
    json!({
        "id": p.id, "name": p.name, "description": p.description, "enabled": p.enabled,
        "domain_id": "default", "is_domain": false, "parent_id": "default", "tags": [], "options": {},
        "links": {"self": null},
    })
}

/// The projects the caller has a role on.
async fn auth_projects(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Value>> {
    let projects = state.db.with(|db| -> ApiResult<Vec<Value>> {
        let mut out = Vec::new();
        for p in db.projects()? {
            if !db.roles_of(auth.user_id(), &p.id)?.is_empty() {
                out.push(project_json(&p));
            }
        }
        Ok(out)
    })?;
    Ok(Json(json!({"projects": projects, "links": {"self": null, "next": null, "previous": null}})))
}

async fn user_projects(
    State(state): State<AppState>,
    auth: Auth,
    axum::extract::Path(user_id): axum::extract::Path<String>,
) -> ApiResult<Json<Value>> {
    if user_id != auth.user_id() {
        auth.require_admin()?;
    }
    let projects = state.db.with(|db| -> ApiResult<Vec<Value>> {
        let mut out = Vec::new();
        for p in db.projects()? {
            if !db.roles_of(&user_id, &p.id)?.is_empty() {
                out.push(project_json(&p));
            }
        }
        Ok(out)
    })?;
    Ok(Json(json!({"projects": projects, "links": {"self": null, "next": null, "previous": null}})))
}

async fn list_projects(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let projects = state.db.with(|db| db.projects())?;
    Ok(Json(json!({
        "projects": projects.iter().map(project_json).collect::<Vec<_>>(),
        "links": {"self": null, "next": null, "previous": null},
    })))
}

async fn show_project(
    State(state): State<AppState>,
    auth: Auth,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Json<Value>> {
    if id != auth.project_id() {
        auth.require_admin()?;
    }
    let p = state
        .db
        .with(|db| db.project_by_id(&id))?
        .ok_or_else(|| ApiError::not_found(format!("Could not find project: {id}.")))?;
    Ok(Json(json!({"project": project_json(&p)})))
}

async fn list_users(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let users = state.db.with(|db| db.users())?;
    let users: Vec<Value> = users
        .iter()
        .map(|u| {
            json!({
                "id": u.id, "name": u.name, "enabled": u.enabled, "domain_id": "default",
                "default_project_id": u.default_project_id, "password_expires_at": null, "options": {},
                "links": {"self": null},
            })
        })
        .collect();
    Ok(Json(json!({"users": users, "links": {"self": null, "next": null, "previous": null}})))
}

/// Checks that the stored `now()` format compares correctly with expiry strings.
#[cfg(test)]
mod tests {
    #[test]
    fn micros_are_added_once() {
        assert_eq!(super::with_micros("2026-01-01T00:00:00Z"), "2026-01-01T00:00:00.000000Z");
        assert_eq!(super::with_micros("2026-01-01T00:00:00.5Z"), "2026-01-01T00:00:00.5Z");
        assert!(crate::db::now().ends_with('Z'));
    }
}
