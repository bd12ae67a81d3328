//! Per-request plumbing: the request id every response carries and every log line and bus
//! message repeats, and the authenticated caller.

use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::fault::ApiError;
use super::AppState;
use crate::bus::Context;

/// The id of the request being served (`req-<uuid>`), as nova's `x-openstack-request-id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Assigns the request id, puts it in a tracing span around the whole request and in the
/// response headers.
pub async fn request_id(mut req: Request<Body>, next: Next) -> Response {
    let id = Context::new_request_id();
    req.extensions_mut().insert(RequestId(id.clone()));
    let span =
        tracing::info_span!("api", service = "api", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-openstack-request-id", v.clone());
        resp.headers_mut().insert("x-compute-request-id", v);
    }
    resp
}

/// The sha256 of a token, which is what the database keeps.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// An authenticated caller: a valid `X-Auth-Token` scoped to a project (or, for keystone's
/// own API, to a domain or the system).
#[derive(Debug, Clone)]
pub struct Auth {
    pub context: Context,
    pub user_name: String,
    pub project_name: String,
}

impl Auth {
    pub fn project_id(&self) -> &str {
        self.context.project_id.as_deref().unwrap_or_default()
    }
    pub fn user_id(&self) -> &str {
        self.context.user_id.as_deref().unwrap_or_default()
    }
    pub fn is_admin(&self) -> bool {
        self.context.is_admin
    }
    /// nova's "admin_api" rule.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("Policy doesn't allow this operation to be performed; it needs the admin role."))
        }
    }
    /// Asks the policy table whether the caller may take `action` on `target`; a denial is a
    /// 403 in the service's own words.
    pub fn authorize(&self, action: crate::policy::Action, target: &crate::policy::Target<'_>) -> Result<(), ApiError> {
        Ok(crate::policy::check(&self.context, action, target)?)
    }
    /// True when the caller may act on a resource owned by `project_id`.
    pub fn owns(&self, project_id: &str) -> bool {
        self.is_admin() || self.project_id() == project_id
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let unauthorized = || ApiError::unauthorized("The request you have made requires authentication.");
        let token = parts.headers.get("x-auth-token").and_then(|v| v.to_str().ok()).ok_or_else(unauthorized)?;
        let hash = token_hash(token);
        let record = state.db.with(|db| db.valid_token(&hash))?.ok_or_else(unauthorized)?;
        let family = parts.extensions.get::<super::fault::Family>().copied();
        // Only keystone's own API takes domain- and system-scoped tokens; every other service
        // acts in a project.
        let scoped_elsewhere =
            (record.domain_id.is_some() || record.system) && family == Some(super::fault::Family::Identity);
        if record.project_id.is_none() && !scoped_elsewhere {
            return Err(ApiError::unauthorized(
                "This token is not scoped to a project; ask for a project-scoped token.",
            ));
        }
        let project_id = record.project_id.clone();
        let request_id =
            parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_else(Context::new_request_id);
        let remote_address =
            parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_string());
        // The token's roles include the implied ones (an admin is a member and a reader too).
        let roles: Vec<String> = record.roles.iter().map(|(_, name)| name.clone()).collect();
        let auth = Auth {
            context: Context {
                request_id,
                user_id: Some(record.user_id),
                project_id,
                is_admin: roles.iter().any(|r| r == "admin"),
                roles,
                remote_address,
                timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                trace_parent: None,
            },
            user_name: record.user_name,
            project_name: record.project_name.unwrap_or_default(),
        };
        // The personas: whatever changes state in a service needs what its default policy
        // asks (a member of the project), checked here once rather than in every handler.
        if let Some(family) = family {
            if let Some(action) = crate::policy::write_action(family.policy_service(), &parts.method, parts.uri.path())
            {
                auth.authorize(action, &crate::policy::Target::default())?;
            }
        }
        Ok(auth)
    }
}
