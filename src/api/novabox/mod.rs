//! novabox's own API under `/novabox/v1`: the fault table and the test clock (issue 23,
//! docs/faults.md). Errors have nova's body, since the callers are compute users' CI jobs.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::AppState;

pub mod faults;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(versions))
        .route("/v1", get(version))
        .route("/v1/", get(version))
        .route("/v1/faults", get(faults::list).post(faults::add).delete(faults::clear))
        .route("/v1/faults/{id}", get(faults::show).delete(faults::remove))
        .route("/v1/clock", get(faults::clock_show))
        .route("/v1/clock/advance", post(faults::clock_advance))
        .route("/v1/clock/reset", post(faults::clock_reset))
}

/// What this API offers, without a token: whether faults (and the clock) are enabled is
/// the first thing a CI job wants to know, and it is not a secret.
fn version_doc(state: &AppState) -> Value {
    let enabled = state.faults.enabled();
    json!({
        "id": "v1",
        "status": "CURRENT",
        "faults": {
            "enabled": enabled,
            "description": if enabled {
                "fault injection and the test clock are ENABLED: admins can make this cloud fail on purpose"
            } else {
                "fault injection and the test clock are disabled ([faults] enabled = true or `novabox up --faults` enables them)"
            },
        },
    })
}

async fn versions(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"versions": [version_doc(&state)]}))
}

async fn version(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"version": version_doc(&state)}))
}
