//! API errors. Handlers return one error type; each service's router renders it in that
//! service's own body format (nova's fault, keystone's error, neutron's NeutronError, ...),
//! so unknown routes and wrong methods get the right shape too.

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::db::DbError;

/// An error with the HTTP status and a message for the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// A machine name for the error, where a service has them (neutron's `type`).
    pub kind: Option<&'static str>,
    /// Seconds a client should wait before asking again (`Retry-After`, with 429 and 503).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind: None, retry_after: None }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    /// A JSON body axum could not take: 413 when it was over `[api] max_body_kb` (axum reports
    /// that as a failure to buffer the body, which read as a malformed body, 400, before), 400
    /// with `context` and the reason otherwise.
    pub fn from_json_rejection(e: axum::extract::rejection::JsonRejection, context: &str) -> ApiError {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request is too large.");
        }
        ApiError::bad_request(format!("{context}: {}", e.body_text()))
    }
    pub fn with_kind(mut self, kind: &'static str) -> ApiError {
        self.kind = Some(kind);
        self
    }
    pub fn with_retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        match e {
            DbError::Conflict(m) => ApiError::conflict(m),
            DbError::NotFound(m) => ApiError::not_found(m),
            // neutron's type and status, from the network API's one mapping.
            DbError::Network(e) => e.into(),
            other => {
                tracing::error!(error = %other, "database error");
                ApiError::internal("The server has either erred or is incapable of performing the requested operation.")
            }
        }
    }
}

impl From<crate::policy::Denied> for ApiError {
    fn from(denied: crate::policy::Denied) -> ApiError {
        ApiError::forbidden(denied.to_string()).with_kind("PolicyNotAuthorized")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The body is written by the service's renderer (`render_faults`); this default only
        // shows when a route is outside every service.
        let mut resp =
            (self.status, axum::Json(json!({"error": {"code": self.status.as_u16(), "message": self.message}})))
                .into_response();
        resp.extensions_mut().insert(self);
        resp
    }
}

/// The error body formats of the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Identity,
    Compute,
    Image,
    Network,
    /// cinder: the same fault body as nova's.
    Volume,
}

impl Family {
    /// The service whose policy file speaks for this family.
    pub fn policy_service(self) -> crate::policy::Service {
        use crate::policy::Service;
        match self {
            Family::Identity => Service::Identity,
            Family::Compute => Service::Compute,
            Family::Image => Service::Image,
            Family::Network => Service::Network,
            Family::Volume => Service::Volume,
        }
    }

    pub fn render(self, err: &ApiError) -> Response {
        let status = err.status;
        let code = status.as_u16();
        let title = status.canonical_reason().unwrap_or("Error");
        let mut resp = match self {
            Family::Identity => {
                (status, axum::Json(json!({"error": {"code": code, "title": title, "message": err.message}})))
                    .into_response()
            }
            Family::Compute | Family::Volume => {
                let key = match code {
                    400 => "badRequest",
                    401 => "unauthorized",
                    403 => "forbidden",
                    404 => "itemNotFound",
                    405 => "badMethod",
                    409 => "conflictingRequest",
                    413 | 429 => "overLimit",
                    415 => "badMediaType",
                    406 => "notAcceptable",
                    501 => "notImplemented",
                    503 => "serviceUnavailable",
                    _ => "computeFault",
                };
                (status, axum::Json(json!({ key: {"code": code, "message": err.message} }))).into_response()
            }
            Family::Network => {
                let kind = err.kind.unwrap_or(match code {
                    400 => "HTTPBadRequest",
                    401 => "HTTPUnauthorized",
                    403 => "HTTPForbidden",
                    404 => "HTTPNotFound",
                    405 => "HTTPMethodNotAllowed",
                    409 => "Conflict",
                    413 => "HTTPRequestEntityTooLarge",
                    415 => "HTTPUnsupportedMediaType",
                    429 => "HTTPTooManyRequests",
                    503 => "HTTPServiceUnavailable",
                    _ => "HTTPInternalServerError",
                });
                (status, axum::Json(json!({"NeutronError": {"type": kind, "message": err.message, "detail": ""}})))
                    .into_response()
            }
            Family::Image => {
                // glance answers errors in webob's plain-text format.
                let text = format!("{code} {title}\n\n{}\n\n   ", err.message);
                (status, [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], text).into_response()
            }
        };
        if let Some(secs) = err.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED && self == Family::Identity {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Keystone uri=\"/identity\""));
        }
        resp
    }
}

/// Middleware that renders `ApiError`s, axum's own 404/405/413/415/422 rejections, in the
/// family's format. Keeps headers set by handlers and middleware.
pub async fn render_faults(family: Family, req: Request<Body>, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let err = match resp.extensions().get::<ApiError>() {
        Some(e) => e.clone(),
        None => {
            let message = match status {
                StatusCode::NOT_FOUND => "The resource could not be found.".to_string(),
                StatusCode::METHOD_NOT_ALLOWED => "The method is not allowed for the requested URL.".to_string(),
                StatusCode::PAYLOAD_TOO_LARGE => "Request is too large.".to_string(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => "The request body must be JSON.".to_string(),
                _ => {
                    // axum's JSON rejections carry a useful text body: keep it.
                    let (_, body) = resp.into_parts();
                    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
                    let text = String::from_utf8_lossy(&bytes).to_string();
                    let code =
                        if status == StatusCode::UNPROCESSABLE_ENTITY { StatusCode::BAD_REQUEST } else { status };
                    return family.render(&ApiError::new(code, text));
                }
            };
            ApiError::new(status, message)
        }
    };
    let (parts, _) = resp.into_parts();
    let mut rendered = family.render(&err);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rendered.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rendered
}
