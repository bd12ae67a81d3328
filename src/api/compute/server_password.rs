//! `os-server-password`: the password a guest posted to the metadata service (nova's
//! `server_password` controller).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::api::context::Auth;
use crate::api::fault::ApiResult;
use crate::api::AppState;
use crate::compute::api::ComputeApi;

pub async fn show(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"password": ComputeApi::new(&state).password(&auth, &id)?})))
}

pub async fn clear(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    ComputeApi::new(&state).clear_password(&auth, &id)?;
    Ok(StatusCode::NO_CONTENT)
}
