//! `/servers/{id}/metadata` and `/servers/{id}/metadata/{key}`: nova's `server_metadata`
//! controller. Bodies are checked as nova's schemas check them; the change itself (lock,
//! state, quota) is the compute API's.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{parse_body, validation};
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::AppState;
use crate::compute::api::{ComputeApi, MetadataChange};

type Body = Result<Json<Value>, axum::extract::rejection::JsonRejection>;

/// The one member `key` of a body that may hold nothing else (nova's `required` and
/// `additionalProperties: false`).
pub(super) fn only_member<'a>(body: &'a Value, key: &str) -> ApiResult<&'a Value> {
    let obj = body.as_object().ok_or_else(|| ApiError::bad_request(format!("{body} is not of type 'object'")))?;
    if let Some(extra) = obj.keys().find(|k| *k != key) {
        return Err(ApiError::bad_request(format!("Additional properties are not allowed ('{extra}' was unexpected)")));
    }
    obj.get(key).ok_or_else(|| ApiError::bad_request(format!("'{key}' is a required property")))
}

/// nova's `metadata` schema: keys of 1-255 characters of its alphabet, string values of at
/// most 255. The quota is counted on what the server ends with, by the compute API.
fn metadata_of(value: &Value) -> ApiResult<BTreeMap<String, String>> {
    validation::metadata(value, -1)
}

pub async fn index(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"metadata": ComputeApi::new(&state).metadata(&auth, &id)?})))
}

/// `POST`: the items are merged into the server's metadata; the answer is all of it.
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let (body, _) = parse_body::<Value>(body)?;
    let items = metadata_of(only_member(&body, "metadata")?)?;
    let after = ComputeApi::new(&state).change_metadata(&auth, &id, MetadataChange::Merge(items))?;
    Ok(Json(json!({ "metadata": after })))
}

/// `PUT`: the server's metadata becomes exactly the items.
pub async fn update_all(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let (body, _) = parse_body::<Value>(body)?;
    let items = metadata_of(only_member(&body, "metadata")?)?;
    let after = ComputeApi::new(&state).change_metadata(&auth, &id, MetadataChange::Replace(items))?;
    Ok(Json(json!({ "metadata": after })))
}

pub async fn show(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let value = ComputeApi::new(&state).metadata_item(&auth, &id, &key)?;
    Ok(Json(json!({"meta": {key: value}})))
}

/// `PUT /metadata/{key}`: `{"meta": {key: value}}`, one item, named as the path names it.
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, key)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let (body, _) = parse_body::<Value>(body)?;
    let meta = only_member(&body, "meta")?;
    let count = meta.as_object().map_or(0, |m| m.len());
    if meta.is_object() && count != 1 {
        let why = if count == 0 { "does not have enough properties" } else { "has too many properties" };
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute meta. Value: {meta}. {meta} {why}"
        )));
    }
    let items = metadata_of(meta)?;
    if !items.contains_key(&key) {
        return Err(ApiError::bad_request("Request body and URI mismatch"));
    }
    ComputeApi::new(&state).change_metadata(&auth, &id, MetadataChange::Merge(items.clone()))?;
    Ok(Json(json!({ "meta": items })))
}

pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    ComputeApi::new(&state).change_metadata(&auth, &id, MetadataChange::Delete(key))?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_hold_their_one_member() {
        assert_eq!(only_member(&json!({"metadata": {}}), "metadata").unwrap(), &json!({}));
        let e = only_member(&json!({"metadata": {}, "x": 1}), "metadata").unwrap_err();
        assert_eq!(e.message, "Additional properties are not allowed ('x' was unexpected)");
        assert_eq!(only_member(&json!({}), "meta").unwrap_err().message, "'meta' is a required property");
        assert_eq!(only_member(&json!([]), "meta").unwrap_err().message, "[] is not of type 'object'");
        assert!(metadata_of(&json!({"a/b": "1"})).is_err(), "nova's key alphabet");
        assert!(metadata_of(&json!({"k": "x".repeat(256)})).is_err());
        assert!(metadata_of(&json!({"k": 1})).is_err());
        assert_eq!(metadata_of(&json!({"k": "v"})).unwrap().len(), 1);
    }
}
