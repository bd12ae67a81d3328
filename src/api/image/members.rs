//! Image members: sharing a `shared` image with other projects, who accept or reject it.

use super::*;

pub(super) fn member_json(m: &crate::db::images::ImageMember) -> Value {
    json!({
        "image_id": m.image_id, "member_id": m.member, "status": m.status,
        "created_at": m.created_at, "updated_at": m.created_at, "schema": "/v2/schemas/member",
    })
}

pub(super) fn shared_only(img: &Image) -> ApiResult<()> {
    if img.visibility == "shared" {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("Only shared images have members; image {} is {}.", img.id, img.visibility)))
    }
}

pub(super) fn is_owner(auth: &Auth, img: &Image) -> bool {
    auth.is_admin() || img.owner.as_deref() == Some(auth.project_id())
}

pub(super) async fn list_members(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let img = load_visible(&state, &auth, &id)?;
    shared_only(&img)?;
    let members: Vec<Value> = img
        .members
        .iter()
        .filter(|m| is_owner(&auth, &img) || m.member == auth.project_id())
        .map(member_json)
        .collect();
    Ok(Json(json!({"members": members, "schema": "/v2/schemas/members"})))
}

pub(super) async fn add_member(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let img = load_owned(&state, &auth, &id)?;
    shared_only(&img)?;
    let body = parse_json_body(&body)?;
    let member = body
        .get("member")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty() && m.len() <= 255)
        .ok_or_else(|| bad("Request body must have a `member` with a project id."))?;
    let m = state.db.with(|db| db.add_image_member(&id, member))?;
    Ok(Json(member_json(&m)))
}

pub(super) fn find_member(auth: &Auth, img: &Image, member: &str) -> ApiResult<crate::db::images::ImageMember> {
    img.members
        .iter()
        .find(|m| m.member == member && (is_owner(auth, img) || m.member == auth.project_id()))
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("{member} is not a member of image {}.", img.id)))
}

pub(super) async fn show_member(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, member)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let img = load_visible(&state, &auth, &id)?;
    shared_only(&img)?;
    Ok(Json(member_json(&find_member(&auth, &img, &member)?)))
}

pub(super) async fn update_member(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, member)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let img = load_visible(&state, &auth, &id)?;
    shared_only(&img)?;
    let mut m = find_member(&auth, &img, &member)?;
    // Only the consumer decides whether it wants a shared image, as in glance.
    if member != auth.project_id() {
        return Err(ApiError::forbidden("Only the member itself may change its membership status."));
    }
    let body = parse_json_body(&body)?;
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<MemberStatus>().ok())
        .ok_or_else(|| bad("Request body must have a `status` of pending, accepted or rejected."))?;
    state.db.with(|db| db.set_image_member_status(&id, &member, status))?;
    m.status = status;
    Ok(Json(member_json(&m)))
}

pub(super) async fn remove_member(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, member)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let img = load_owned(&state, &auth, &id)?;
    shared_only(&img)?;
    if !state.db.with(|db| db.remove_image_member(&id, &member))? {
        return Err(ApiError::not_found(format!("{member} is not a member of image {id}.")));
    }
    Ok(StatusCode::NO_CONTENT)
}
