//! `/novabox/v1/faults` and `/novabox/v1/clock`: admin only (`novabox:faults` in the policy
//! table), and 404 for everyone while faults are off, as if the routes did not exist.

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::AppState;
use crate::faults::{Effect, FaultError, FaultTable, RuleSpec};
use crate::policy::{Action, Target};

/// The caller may use the fault API: faults on (else 404) and an admin (else 403).
fn allowed(state: &AppState, auth: &Auth) -> ApiResult<()> {
    if !state.faults.enabled() {
        return Err(ApiError::not_found("The resource could not be found."));
    }
    auth.authorize(Action::NovaboxFaults, &Target::default())
}

/// 404 before the token is even read while faults are off.
fn enabled(state: &AppState) -> ApiResult<()> {
    if state.faults.enabled() {
        Ok(())
    } else {
        Err(ApiError::not_found("The resource could not be found."))
    }
}

impl From<FaultError> for ApiError {
    fn from(e: FaultError) -> ApiError {
        match e {
            FaultError::NotFound(_) => ApiError::not_found(e.to_string()),
            FaultError::Rule(_) => ApiError::bad_request(e.to_string()),
            FaultError::Full => ApiError::conflict(e.to_string()),
        }
    }
}

pub async fn list(State(state): State<AppState>, auth: Result<Auth, ApiError>) -> ApiResult<Json<Value>> {
    enabled(&state)?;
    allowed(&state, &auth?)?;
    Ok(Json(json!({"faults": state.faults.list()})))
}

pub async fn add(
    State(state): State<AppState>,
    auth: Result<Auth, ApiError>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Response> {
    enabled(&state)?;
    let auth = auth?;
    allowed(&state, &auth)?;
    let (_, wrapped): (Value, Wrapped) = crate::api::compute::parse_body(body)?;
    let view = state.faults.add(&wrapped.fault)?;
    tracing::warn!(user = auth.user_id(), rule = %view.id, "fault rule added through the API");
    Ok((StatusCode::CREATED, Json(json!({"fault": view}))).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped {
    fault: RuleSpec,
}

pub async fn show(
    State(state): State<AppState>,
    auth: Result<Auth, ApiError>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    enabled(&state)?;
    allowed(&state, &auth?)?;
    Ok(Json(json!({"fault": state.faults.get(&id)?})))
}

pub async fn remove(
    State(state): State<AppState>,
    auth: Result<Auth, ApiError>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    enabled(&state)?;
    allowed(&state, &auth?)?;
    state.faults.remove(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn clear(State(state): State<AppState>, auth: Result<Auth, ApiError>) -> ApiResult<Json<Value>> {
    enabled(&state)?;
    allowed(&state, &auth?)?;
    Ok(Json(json!({"cleared": state.faults.clear()})))
}

fn clock_doc() -> Value {
    let clock = crate::clock::global();
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    json!({"clock": {
        "now": fmt(clock.now()),
        "real": fmt(chrono::Utc::now()),
        "offset_seconds": clock.offset().as_secs_f64(),
    }})
}

/// Shares the offset with the CLI's other commands; they show the real time if this fails.
fn save_clock(state: &AppState) {
    if let Err(e) = crate::clock::global().save(&crate::clock::offset_file(&state.home)) {
        tracing::warn!(error = %e, "the clock's offset is not shared with `novabox status`");
    }
}

pub async fn clock_show(State(state): State<AppState>, auth: Result<Auth, ApiError>) -> ApiResult<Json<Value>> {
    enabled(&state)?;
    allowed(&state, &auth?)?;
    Ok(Json(clock_doc()))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    seconds: i64,
}

pub async fn clock_advance(
    State(state): State<AppState>,
    auth: Result<Auth, ApiError>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    enabled(&state)?;
    let auth = auth?;
    allowed(&state, &auth)?;
    let (_, advance): (Value, Advance) = crate::api::compute::parse_body(body)?;
    let offset = crate::clock::global().advance(advance.seconds).map_err(|e| ApiError::bad_request(e.to_string()))?;
    tracing::warn!(user = auth.user_id(), seconds = advance.seconds, offset = ?offset, "test clock advanced");
    save_clock(&state);
    Ok(Json(clock_doc()))
}

pub async fn clock_reset(State(state): State<AppState>, auth: Result<Auth, ApiError>) -> ApiResult<Json<Value>> {
    enabled(&state)?;
    let auth = auth?;
    allowed(&state, &auth)?;
    crate::clock::global().reset();
    tracing::warn!(user = auth.user_id(), "test clock reset to the real time");
    save_clock(&state);
    Ok(Json(clock_doc()))
}

/// The API side of fault injection: a layer inside each service's router (so its error is
/// rendered in that service's own body) that answers a matching request with the rule's
/// status and `Retry-After`, or holds it for the rule's delay. Costs one atomic load while
/// the table is empty.
pub async fn inject_http(req: Request<Body>, next: Next) -> Response {
    let Some(faults) = req.extensions().get::<std::sync::Arc<FaultTable>>().filter(|f| f.has_rules()).cloned() else {
        return next.run(req).await;
    };
    let path = match req.extensions().get::<OriginalUri>() {
        Some(OriginalUri(uri)) => uri.path().to_string(),
        None => req.uri().path().to_string(),
    };
    let method = req.method().as_str().to_string();
    let Some(firing) = faults.check_route(&method, &path) else { return next.run(req).await };
    let span = tracing::warn_span!(
        "fault.injected",
        injected = true,
        rule = %firing.rule_id,
        effect = firing.effect.kind(),
        step = %format!("{method} {path}"),
    );
    let _entered = span.enter();
    tracing::warn!(rule = %firing.rule_id, "fault injected at {method} {path}: {:?}", firing.effect);
    drop(_entered);
    faults.announce_route(&method, &path, &firing).await;
    match firing.effect {
        Effect::Status { status, message, retry_after } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut err = ApiError::new(status, message);
            if let Some(secs) = retry_after {
                err = err.with_retry_after(secs);
            }
            err.into_response()
        }
        Effect::Delay(d) => {
            use tracing::Instrument;
            tokio::time::sleep(d).instrument(span).await;
            next.run(req).await
        }
        // Refused for routes when the rule was added.
        _ => next.run(req).await,
    }
}
