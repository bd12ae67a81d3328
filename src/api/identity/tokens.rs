//! Tokens: password and token authentication with project scope, validation, revocation,
//! and the service catalog.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::context::{token_hash, Auth};
use crate::api::fault::{ApiError, ApiResult};
use crate::api::{base_url, AppState};
use crate::db::tokens::{NewToken, TokenRecord};
use crate::db::Db;
use crate::policy::{Action, Target};

#[derive(Debug, Deserialize)]
pub(super) struct AuthRequest {
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
    #[serde(default)]
    application_credential: Option<AppCredMethod>,
}

/// keystone's `application_credential` method: the credential by id, or by name with its user.
#[derive(Debug, Deserialize)]
struct AppCredMethod {
    id: Option<String>,
    name: Option<String>,
    secret: String,
    #[serde(default)]
    user: Option<AppCredUser>,
}

#[derive(Debug, Deserialize)]
struct AppCredUser {
    id: Option<String>,
    name: Option<String>,
    #[serde(default)]
    domain: Option<DomainRef>,
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

/// Whether a name's domain, as the request gives it (by id or name; none means the default
/// domain), is `domain_id`.
fn domain_matches(db: &Db, domain: Option<&DomainRef>, domain_id: &str) -> ApiResult<bool> {
    Ok(match domain {
        None => domain_id == "default",
        Some(DomainRef { id: Some(id), .. }) => id == domain_id,
        Some(DomainRef { name: Some(name), .. }) => db.domain_by_name(name)?.is_some_and(|d| d.id == domain_id),
        Some(_) => false,
    })
}

/// Who the request says it is: a user, the project a token scope would default to, and (for
/// a token made from a token) the expiry it may not outlive.
struct Subject {
    user_id: String,
    default_project: Option<String>,
    expires_no_later_than: Option<String>,
    /// Set when the subject is an application credential: the token is bound to its project.
    app_cred: Option<String>,
    /// The methods of the token a token was made from: keystone's new token lists them beside
    /// `token` (a password token rescoped says `["password", "token"]`).
    parent_methods: Vec<String>,
}

pub(super) async fn issue_token(
    headers: HeaderMap,
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Json<AuthRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body.map_err(|e| ApiError::from_json_rejection(e, "Invalid authentication request"))?;
    let subject = authenticate(&state, &req.auth.identity, peer.map(|Extension(ConnectInfo(addr))| addr.ip())).await?;
    let mut methods = subject.parent_methods.clone();
    for m in &req.auth.identity.methods {
        if !methods.contains(m) {
            methods.push(m.clone());
        }
    }
    let ttl = state.config.api.token_ttl_secs;
    let per_user = state.config.api.max_tokens_per_user;

    let (token, body) = state.db.tx(|db| -> ApiResult<(String, Value)> {
        let scope = match &req.auth.scope {
            None => subject.default_project.clone().map(Scope::Project).unwrap_or(Scope::Unscoped),
            Some(scope) => resolve_scope(db, scope)?,
        };
        if subject.app_cred.is_some() && subject.default_project.clone().map(Scope::Project) != Some(scope.clone()) {
            // keystone binds an application credential to the project it was made in.
            return Err(ApiError::unauthorized(
                "An application credential's token is scoped to its own project; ask for no other scope.",
            ));
        }
        match &scope {
            Scope::Project(p) => {
                // A project of a disabled domain is as disabled as the domain, as in keystone.
                let enabled = match db.project_by_id(p)? {
                    Some(p) => p.enabled && db.domain_by_id(&p.domain_id)?.is_some_and(|d| d.enabled),
                    None => false,
                };
                if !enabled || db.roles_of(&subject.user_id, p)?.is_empty() {
                    return Err(ApiError::unauthorized("The user has no role on the requested project."));
                }
            }
            Scope::Domain(d) => {
                let enabled = db.domain_by_id(d)?.is_some_and(|d| d.enabled);
                if !enabled || db.effective_scoped_roles(&subject.user_id, "domain", d)?.is_empty() {
                    return Err(ApiError::unauthorized("The user has no role on the requested domain."));
                }
            }
            Scope::System => {
                if db.effective_scoped_roles(&subject.user_id, "system", "all")?.is_empty() {
                    return Err(ApiError::unauthorized("The user has no role on the system."));
                }
            }
            Scope::Unscoped => {}
        }
        let project_id = match &scope {
            Scope::Project(p) => Some(p.clone()),
            _ => None,
        };
        let domain_id = match &scope {
            Scope::Domain(d) => Some(d.clone()),
            _ => None,
        };

        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let audit_id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..16]);
        let issued_at = crate::clock::now();
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
                domain_id: domain_id.as_deref(),
                system: scope == Scope::System,
                application_credential_id: subject.app_cred.as_deref(),
                methods: &methods,
                issued_at: &issued_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                expires_at: &expires_at,
            },
            per_user,
        )?;
        let record = db.valid_token(&token_hash(&token))?.ok_or_else(|| ApiError::internal("token vanished"))?;
        let body = token_body(db, &record, &base_url(&headers, &state.config), &state.config.host.region)?;
        Ok((token, body))
    })?;

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
        let user = match (&pw.user.id, &pw.user.name) {
            (Some(id), _) => state.db.with(|db| db.user_by_id(id))?,
            (None, Some(name)) => state.db.with(|db| -> ApiResult<_> {
                // Names are unique across domains here, so the domain only has to agree.
                let user = db.user_by_name(name)?;
                Ok(match user {
                    Some(u) if domain_matches(db, pw.user.domain.as_ref(), &u.domain_id)? => Some(u),
                    _ => None,
                })
            })?,
            (None, None) => return Err(ApiError::bad_request("Expecting to find id or name in user.")),
        };
        state.logins.check(user.as_ref().map(|u| u.id.as_str()), source).map_err(refused)?;
        let domain_enabled = match &user {
            Some(u) => state.db.with(|db| db.domain_by_id(&u.domain_id))?.is_some_and(|d| d.enabled),
            None => false,
        };
        let Some(user) = user.filter(|u| u.enabled && domain_enabled) else {
            state.logins.failed(None, source);
            return Err(unauthorized());
        };
        if !state.logins.verify(pw.user.password.clone(), user.password_hash.clone()).await {
            state.logins.failed(Some(&user.id), source);
            return Err(unauthorized());
        }
        state.logins.succeeded(&user.id);
        Ok(Subject {
            user_id: user.id,
            default_project: user.default_project_id,
            expires_no_later_than: None,
            app_cred: None,
            parent_methods: Vec::new(),
        })
    } else if identity.methods.iter().any(|m| m == "token") {
        let t = identity.token.as_ref().ok_or_else(|| ApiError::bad_request("Expecting to find token in identity."))?;
        // keystone answers a token it cannot validate (revoked, expired, unknown) with its
        // TokenNotFound, a 404, not a 401; tempest checks that after a password change.
        let rec = state
            .db
            .with(|db| db.valid_token(&token_hash(&t.id)))?
            .ok_or_else(|| ApiError::not_found("Failed to validate token"))?;
        // A token made from a token never outlives it, as in keystone.
        Ok(Subject {
            user_id: rec.user_id,
            default_project: rec.project_id,
            expires_no_later_than: Some(rec.expires_at),
            app_cred: rec.application_credential_id,
            parent_methods: rec.methods,
        })
    } else if identity.methods.iter().any(|m| m == "application_credential") {
        let a = identity
            .application_credential
            .as_ref()
            .ok_or_else(|| ApiError::bad_request("Expecting to find application_credential in identity."))?;
        let cred = state.db.with(|db| -> ApiResult<_> {
            if let Some(id) = &a.id {
                return Ok(db.app_cred(id)?);
            }
            let (Some(name), Some(user)) = (&a.name, &a.user) else {
                return Err(ApiError::bad_request(
                    "Expecting to find id, or name and user, in application_credential.",
                ));
            };
            let owner = match (&user.id, &user.name) {
                (Some(id), _) => db.user_by_id(id)?,
                (None, Some(n)) => db
                    .user_by_name(n)?
                    .filter(|u| domain_matches(db, user.domain.as_ref(), &u.domain_id).unwrap_or(false)),
                (None, None) => return Err(ApiError::bad_request("Expecting to find id or name in user.")),
            };
            Ok(match owner {
                Some(u) => db.app_cred_by_name(&u.id, name)?,
                None => None,
            })
        })?;
        let Some(cred) = cred else {
            state.logins.failed(None, source);
            return Err(unauthorized());
        };
        state.logins.check(Some(&cred.user_id), source).map_err(refused)?;
        let now = crate::db::now();
        if cred.expires_at.as_deref().is_some_and(|e| e <= now.as_str()) {
            return Err(unauthorized());
        }
        if !state.logins.verify(a.secret.clone(), cred.secret_hash.clone()).await {
            state.logins.failed(Some(&cred.user_id), source);
            return Err(unauthorized());
        }
        state.logins.succeeded(&cred.user_id);
        Ok(Subject {
            user_id: cred.user_id,
            default_project: Some(cred.project_id),
            expires_no_later_than: cred.expires_at,
            app_cred: Some(cred.id),
            parent_methods: Vec::new(),
        })
    } else {
        Err(ApiError::unauthorized("Only the password, token and application_credential methods are supported."))
    }
}

/// A login refused before its password was looked at, as keystone (or, for a flooding
/// address, any HTTP service) answers it.
fn refused(r: crate::api::logins::Refused) -> ApiError {
    match r {
        crate::api::logins::Refused::AccountLocked { .. } => ApiError::unauthorized(r.to_string()),
        crate::api::logins::Refused::SourceThrottled { retry_after_secs, .. } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, r.to_string()).with_retry_after(retry_after_secs)
        }
    }
}

/// What a token is scoped to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    Project(String),
    Domain(String),
    System,
    Unscoped,
}

/// A domain named by id, or by name, in a scope or a project's `domain`.
fn domain_ref_of(d: &Value) -> DomainRef {
    DomainRef {
        id: d.get("id").and_then(Value::as_str).map(str::to_string),
        name: d.get("name").and_then(Value::as_str).map(str::to_string),
    }
}

fn resolve_scope(db: &Db, scope: &Value) -> ApiResult<Scope> {
    if let Some(system) = scope.get("system") {
        if system.get("all").and_then(Value::as_bool) == Some(true) {
            return Ok(Scope::System);
        }
        return Err(ApiError::bad_request("Expecting to find all in system scope: the system is {\"all\": true}."));
    }
    if let Some(domain) = scope.get("domain") {
        let not_found = || ApiError::unauthorized("The requested domain was not found.");
        let d = domain_ref_of(domain);
        let found = match (&d.id, &d.name) {
            (Some(id), _) => db.domain_by_id(id)?,
            (None, Some(name)) => db.domain_by_name(name)?,
            (None, None) => return Err(ApiError::bad_request("Expecting to find id or name in domain scope.")),
        };
        return found.map(|d| Scope::Domain(d.id)).ok_or_else(not_found);
    }
    let project = scope
        .get("project")
        .ok_or_else(|| ApiError::bad_request("Expecting to find project, domain or system in scope."))?;
    let not_found = || ApiError::unauthorized("The requested project was not found.");
    if let Some(id) = project.get("id").and_then(Value::as_str) {
        return db.project_by_id(id)?.map(|p| Scope::Project(p.id)).ok_or_else(not_found);
    }
    if let Some(name) = project.get("name").and_then(Value::as_str) {
        let domain = project.get("domain").map(domain_ref_of);
        return match db.project_by_name(name)? {
            Some(p) if domain_matches(db, domain.as_ref(), &p.domain_id)? => Ok(Scope::Project(p.id)),
            _ => Err(not_found()),
        };
    }
    Err(ApiError::bad_request("Expecting to find id or name in project scope."))
}

/// The id and name of a domain, as a token shows its user's and project's.
fn domain_ref(db: &Db, id: &str) -> ApiResult<Value> {
    let name = db.domain_by_id(id)?.map(|d| d.name).unwrap_or_default();
    Ok(json!({"id": id, "name": name}))
}

fn token_body(db: &Db, rec: &TokenRecord, base: &str, region: &str) -> ApiResult<Value> {
    let user_domain = db.user_by_id(&rec.user_id)?.map(|u| u.domain_id).unwrap_or_else(|| "default".into());
    let mut token = json!({
        "methods": rec.methods,
        "user": {"id": rec.user_id, "name": rec.user_name, "domain": domain_ref(db, &user_domain)?, "password_expires_at": null},
        "audit_ids": [rec.audit_id],
        "issued_at": with_micros(&rec.issued_at),
        "expires_at": with_micros(&rec.expires_at),
    });
    if let Some(id) = &rec.application_credential_id {
        if let Some(cred) = db.app_cred(id)? {
            token["application_credential"] =
                json!({"id": cred.id, "name": cred.name, "restricted": !cred.unrestricted});
        }
    }
    if let (Some(pid), Some(pname)) = (&rec.project_id, &rec.project_name) {
        let project_domain = db.project_by_id(pid)?.map(|p| p.domain_id).unwrap_or_else(|| "default".into());
        token["project"] = json!({"id": pid, "name": pname, "domain": domain_ref(db, &project_domain)?});
        token["is_domain"] = json!(false);
        token["roles"] = rec.roles.iter().map(|(id, name)| json!({"id": id, "name": name})).collect();
        token["catalog"] = catalog(base, region, pid);
    } else if let Some(did) = &rec.domain_id {
        token["domain"] = domain_ref(db, did)?;
        token["roles"] = rec.roles.iter().map(|(id, name)| json!({"id": id, "name": name})).collect();
        token["catalog"] = catalog(base, region, "");
    } else if rec.system {
        token["system"] = json!({"all": true});
        token["roles"] = rec.roles.iter().map(|(id, name)| json!({"id": id, "name": name})).collect();
        token["catalog"] = catalog(base, region, "");
    }
    Ok(json!({ "token": token }))
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
        // keystone leaves out an endpoint whose URL needs a project when the token has none.
        .filter(|(kind, _, _)| !project_id.is_empty() || !matches!(*kind, "block-storage" | "volumev3"))
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

pub(super) async fn validate_token(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Response> {
    let (subject, record) = subject_record(&state, &headers, &auth)?;
    let base = base_url(&headers, &state.config);
    let body = state.db.with(|db| token_body(db, &record, &base, &state.config.host.region))?;
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert("x-subject-token", subject.parse().map_err(|_| ApiError::internal("bad token"))?);
    Ok(resp)
}

pub(super) async fn check_token(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<StatusCode> {
    subject_record(&state, &headers, &auth).map(|_| StatusCode::OK)
}

pub(super) async fn revoke_token(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<StatusCode> {
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

pub(super) async fn auth_catalog(headers: HeaderMap, State(state): State<AppState>, auth: Auth) -> Json<Value> {
    let base = base_url(&headers, &state.config);
    Json(json!({"catalog": catalog(&base, &state.config.host.region, auth.project_id()), "links": {"self": null}}))
}

#[cfg(test)]
mod tests {
    #[test]
    fn micros_are_added_once() {
        assert_eq!(super::with_micros("2026-01-01T00:00:00Z"), "2026-01-01T00:00:00.000000Z");
        assert_eq!(super::with_micros("2026-01-01T00:00:00.5Z"), "2026-01-01T00:00:00.5Z");
        assert!(crate::db::now().ends_with('Z'));
    }
}
