//! `/servers/{id}/tags` and `/servers/{id}/tags/{tag}` (2.26): nova's `server_tags`
//! controller. Earlier microversions do not have the resource (404, as nova).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::microversion::Microversion;
use super::parse_body;
use super::server_metadata::only_member;
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::{base_url, AppState};
use crate::compute::api::{tag_list, ComputeApi};

fn since_2_26(v: Microversion) -> ApiResult<()> {
    if v.at_least(26) {
        Ok(())
    } else {
        Err(ApiError::not_found("The resource could not be found."))
    }
}

/// `{"tags": [...]}` as nova's `update_all` schema takes it: an array of at most 50 tags.
fn tags_of(body: &Value) -> ApiResult<Vec<String>> {
    tag_list(only_member(body, "tags")?)
}

pub async fn index(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    since_2_26(v)?;
    Ok(Json(json!({"tags": ComputeApi::new(&state).tags(&auth, &id)?})))
}

pub async fn update_all(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    since_2_26(v)?;
    let (body, _) = parse_body::<Value>(body)?;
    let tags = ComputeApi::new(&state).replace_tags(&auth, &id, &tags_of(&body)?)?;
    Ok(Json(json!({ "tags": tags })))
}

pub async fn delete_all(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    since_2_26(v)?;
    ComputeApi::new(&state).delete_tags(&auth, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// 204 when the server has the tag, nova's 404 when not.
pub async fn show(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    since_2_26(v)?;
    ComputeApi::new(&state).check_tag(&auth, &id, &tag)?;
    Ok(StatusCode::NO_CONTENT)
}

/// 201 with the tag's address when it is new, 204 when the server had it. The body must be
/// empty or null (nova's schema for it is `null`).
pub async fn update(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path((id, tag)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    since_2_26(v)?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("Malformed request body: {e}")))?;
        if !value.is_null() {
            return Err(ApiError::bad_request(format!("{value} is not of type 'null'")));
        }
    }
    if !ComputeApi::new(&state).add_tag(&auth, &id, &tag)? {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let base = base_url(&headers, &state.config);
    let location = format!("{base}/compute/v2.1/servers/{id}/tags/{}", crate::api::listing::encode(&tag));
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    since_2_26(v)?;
    ComputeApi::new(&state).delete_tag(&auth, &id, &tag)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_all_schema() {
        assert_eq!(tags_of(&json!({"tags": ["a", "b"]})).unwrap(), ["a", "b"]);
        assert_eq!(tags_of(&json!({"tags": []})).unwrap(), Vec::<String>::new());
        let e = tags_of(&json!({"tags": ["ok", "a/b"]})).unwrap_err();
        assert_eq!(e.message, "Invalid input for field/attribute 1. Value: \"a/b\". 'a/b' does not match '^[^,/]*$'");
        assert!(tags_of(&json!({"tags": "a"})).unwrap_err().message.ends_with("is not of type 'array'"));
        assert!(tags_of(&json!({"tags": [1]})).unwrap_err().message.ends_with("1 is not of type 'string'"));
        let many: Vec<String> = (0..51).map(|i| format!("t{i}")).collect();
        assert!(tags_of(&json!({ "tags": many })).unwrap_err().message.ends_with("is too long"));
        assert_eq!(tags_of(&json!({})).unwrap_err().message, "'tags' is a required property");
    }
}
