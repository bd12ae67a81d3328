//! Images: create, show, delete, the list with glance's filters, sorting and paging, JSON-patch
//! updates and tags.

use super::*;
use crate::api::listing::{self, Dialect, Direction, Page, PageEnd, Params, Start};

pub(super) async fn create_image(State(state): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let Value::Object(body) = parse_json_body(&body)? else {
        return Err(ApiError::bad_request("Request body must be a JSON object."));
    };
    let mut new =
        NewImage { owner: Some(auth.project_id().to_string()), visibility: "shared".into(), ..NewImage::default() };
    for (key, v) in &body {
        check_writable_key(key)?;
        match key.as_str() {
            "id" => {
                let id = v.as_str().filter(|s| uuid::Uuid::parse_str(s).is_ok());
                new.id = Some(id.ok_or_else(|| schema_error(format!("id: {v} is not a valid uuid")))?.to_string());
            }
            "name" => new.name = name_value(v)?,
            "visibility" => new.visibility = visibility_value(&auth, v)?,
            "protected" => {
                new.protected = v.as_bool().ok_or_else(|| schema_error(format!("{v} is not of type 'boolean'")))?
            }
            "disk_format" => new.disk_format = enum_value(v, DISK_FORMATS, true)?,
            "container_format" => new.container_format = enum_value(v, CONTAINER_FORMATS, true)?,
            "min_disk" => new.min_disk = non_negative(key, v)?,
            "min_ram" => new.min_ram = non_negative(key, v)?,
            "tags" => new.tags = tags_value(v)?,
            "owner" => new.owner = owner_value(&auth, v)?,
            _ => {
                new.properties.insert(key.clone(), string_property(key, v)?);
            }
        }
    }
    let img = state.db.with(|db| db.create_image(&new))?;
    tracing::info!(image_id = %img.id, name = ?img.name, "image created");
    Ok(image_response(StatusCode::CREATED, &img))
}

pub(super) async fn show_image(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let img = load_visible(&state, &auth, &id)?;
    Ok(image_response(StatusCode::OK, &img))
}

pub(super) async fn delete_image(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let img = load_owned(&state, &auth, &id)?;
    if img.protected {
        return Err(ApiError::forbidden(format!("Image {id} is protected and cannot be deleted.")));
    }
    let file = state.db.with(|db| db.delete_image(&id))?;
    if let Some(rel) = file {
        if let Err(e) = store::remove_file(&state.home, &rel) {
            // The record is gone; a leftover file only costs space, so say so and go on.
            tracing::warn!(image_id = %id, error = %e, "could not remove the data file of a deleted image");
        }
    }
    tracing::info!(image_id = %id, "image deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// List

pub(super) const SORT_KEYS: &[&str] = &[
    "name",
    "status",
    "container_format",
    "disk_format",
    "size",
    "id",
    "created_at",
    "updated_at",
    "visibility",
    "owner",
    "min_disk",
    "min_ram",
    "virtual_size",
    "protected",
];
pub(super) const DEFAULT_LIMIT: usize = 25;

/// A parsed `GET /v2/images` query.
#[derive(Debug, Default, PartialEq)]
pub struct ListQuery {
    pub limit: usize,
    pub marker: Option<String>,
    pub sort: Vec<(String, bool)>,
    pub visibility: Option<String>,
    pub member_status: String,
    /// Attribute and property filters: key, accepted values (`in:a,b` gives several).
    pub equals: Vec<(String, Vec<String>)>,
    pub tags: Vec<String>,
    pub size_min: Option<i64>,
    pub size_max: Option<i64>,
}

pub(super) fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

pub(super) fn values_of(v: &str) -> Vec<String> {
    match v.strip_prefix("in:") {
        Some(list) => list.split(',').map(|s| s.trim_matches('"').to_string()).collect(),
        None => vec![v.to_string()],
    }
}

pub fn parse_list_query(pairs: &[(String, String)]) -> ApiResult<ListQuery> {
    let mut q =
        ListQuery { limit: DEFAULT_LIMIT, member_status: MemberStatus::Accepted.to_string(), ..ListQuery::default() };
    let mut sort_keys: Vec<String> = Vec::new();
    let mut sort_dirs: Vec<String> = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "limit" => q.limit = Dialect::Glance.limit(Some(v))?.unwrap_or(DEFAULT_LIMIT),
            "marker" => q.marker = Some(v.clone()),
            "sort_key" => sort_keys.extend(v.split(',').map(str::to_string)),
            "sort_dir" => sort_dirs.extend(v.split(',').map(str::to_string)),
            "sort" => {
                for part in v.split(',') {
                    let (key, dir) = part.split_once(':').unwrap_or((part, "desc"));
                    q.sort.push((key.trim().to_string(), dir_is_asc(dir.trim())?));
                }
            }
            "visibility" => {
                if !VISIBILITIES.contains(&v.as_str()) && v != "all" {
                    return Err(bad(format!("Invalid visibility value: {v}")));
                }
                q.visibility = Some(v.clone());
            }
            "member_status" => {
                if v != "all" && v.parse::<MemberStatus>().is_err() {
                    return Err(bad(format!("Invalid status: {v}")));
                }
                q.member_status = v.clone();
            }
            "status" => {
                let vals = values_of(v);
                if let Some(s) = vals.iter().find(|s| !STATUSES.contains(&s.as_str())) {
                    return Err(bad(format!("Invalid status value: {s}")));
                }
                q.equals.push((k.clone(), vals));
            }
            "tag" => q.tags.push(v.clone()),
            "size_min" | "size_max" => {
                let n: i64 = v.parse().map_err(|_| bad(format!("Invalid value for {k}: {v}")))?;
                if k == "size_min" {
                    q.size_min = Some(n);
                } else {
                    q.size_max = Some(n);
                }
            }
            "protected" => {
                if v != "true" && v != "false" {
                    return Err(bad(format!("Invalid value for protected: {v}")));
                }
                q.equals.push((k.clone(), vec![v.clone()]));
            }
            // novabox has no hidden images: `os_hidden=true` lists none, anything else all.
            "os_hidden" => {
                if v == "true" {
                    q.equals.push(("id".into(), Vec::new()));
                }
            }
            _ => q.equals.push((k.clone(), values_of(v))),
        }
    }
    if !sort_keys.is_empty() || !sort_dirs.is_empty() {
        if !q.sort.is_empty() {
            return Err(bad("The 'sort' parameter cannot be combined with 'sort_key' or 'sort_dir'."));
        }
        if sort_dirs.len() > 1 && sort_dirs.len() != sort_keys.len() {
            return Err(bad("Number of sort dirs does not match the number of sort keys"));
        }
        let keys = if sort_keys.is_empty() { vec!["created_at".to_string()] } else { sort_keys };
        for (i, key) in keys.into_iter().enumerate() {
            let dir = sort_dirs.get(i).or(sort_dirs.first()).map(String::as_str).unwrap_or("desc");
            q.sort.push((key, dir_is_asc(dir)?));
        }
    }
    for (key, _) in &q.sort {
        if !SORT_KEYS.contains(&key.as_str()) {
            return Err(Dialect::Glance.bad_sort_key(key, SORT_KEYS));
        }
    }
    if q.sort.is_empty() {
        q.sort.push(("created_at".into(), false));
    }
    // A stable order across pages needs a unique last key.
    if !q.sort.iter().any(|(k, _)| k == "id") {
        let dir = q.sort.last().map(|s| s.1).unwrap_or(false);
        q.sort.push(("id".into(), dir));
    }
    Ok(q)
}

pub(super) fn dir_is_asc(dir: &str) -> ApiResult<bool> {
    Ok(listing::direction(dir, Dialect::Glance)? == Direction::Asc)
}

/// An attribute as a string for equality filters; `None` when the image does not have it.
pub(super) fn attr(img: &Image, key: &str) -> Option<String> {
    match key {
        "id" => Some(img.id.clone()),
        "name" => img.name.clone(),
        "owner" => img.owner.clone(),
        "status" => Some(img.status.to_string()),
        "disk_format" => img.disk_format.clone(),
        "container_format" => img.container_format.clone(),
        "protected" => Some(img.protected.to_string()),
        "checksum" => img.checksum.clone(),
        "os_hash_value" => img.os_hash_value.clone(),
        "min_disk" => Some(img.min_disk.to_string()),
        "min_ram" => Some(img.min_ram.to_string()),
        other => img.properties.get(other).cloned(),
    }
}

/// Whether `img` is in the list `auth` asked for, by glance's rules: without a visibility
/// filter a project lists its own, public, and shared-with-it (accepted) images; community
/// images appear only when asked for. Admins list everything.
pub(super) fn listed(auth: &Auth, q: &ListQuery, img: &Image) -> bool {
    let me = auth.project_id();
    let mine = img.owner.as_deref() == Some(me);
    let member_ok = |img: &Image| match img.member_status(me) {
        Some(s) => q.member_status == "all" || q.member_status == s.as_str(),
        None => false,
    };
    let visible = match q.visibility.as_deref() {
        None | Some("all") if auth.is_admin() => true,
        None => mine || img.visibility == "public" || (img.visibility == "shared" && member_ok(img)),
        Some("all") => {
            mine || matches!(img.visibility.as_str(), "public" | "community")
                || (img.visibility == "shared" && member_ok(img))
        }
        Some(v) if img.visibility != v => false,
        Some("public" | "community") => true,
        Some(_) if auth.is_admin() => true,
        Some("shared") => mine || member_ok(img),
        Some(_) => mine,
    };
    visible
        && q.equals.iter().all(|(k, vals)| attr(img, k).is_some_and(|a| vals.contains(&a)))
        && q.tags.iter().all(|t| img.tags.contains(t))
        && q.size_min.is_none_or(|m| img.size.is_some_and(|s| s >= m))
        && q.size_max.is_none_or(|m| img.size.is_some_and(|s| s <= m))
}

#[derive(PartialEq, PartialOrd)]
pub(super) enum SortValue {
    Int(Option<i64>),
    Text(Option<String>),
}

pub(super) fn sort_value(img: &Image, key: &str) -> SortValue {
    match key {
        "size" => SortValue::Int(img.size),
        "virtual_size" => SortValue::Int(img.virtual_size),
        "min_disk" => SortValue::Int(Some(img.min_disk)),
        "min_ram" => SortValue::Int(Some(img.min_ram)),
        "protected" => SortValue::Int(Some(img.protected as i64)),
        "created_at" => SortValue::Text(Some(img.created_at.clone())),
        "updated_at" => SortValue::Text(Some(img.updated_at.clone())),
        "visibility" => SortValue::Text(Some(img.visibility.clone())),
        other => SortValue::Text(attr(img, other)),
    }
}

pub(super) fn compare(a: &Image, b: &Image, sort: &[(String, bool)]) -> Ordering {
    for (key, asc) in sort {
        let ord = sort_value(a, key).partial_cmp(&sort_value(b, key)).unwrap_or(Ordering::Equal);
        let ord = if *asc { ord } else { ord.reverse() };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// Filters, sorts and pages `all` for `auth`, continuing after `marker` (the image the
/// previous page ended with); returns the page and whether another follows.
pub fn select_images(
    auth: &Auth,
    q: &ListQuery,
    all: Vec<Image>,
    marker: Option<&Image>,
) -> ApiResult<(Vec<Image>, bool)> {
    let mut list: Vec<Image> = all.into_iter().filter(|i| listed(auth, q, i)).collect();
    list.sort_by(|a, b| compare(a, b, &q.sort));
    // Position by the marker's sort values, not its place in the list: the marker may have
    // been deleted (or have left the filter) since the previous page, as when a client
    // deletes while it pages.
    let after = |i: &Image| marker.is_some_and(|m| compare(i, m, &q.sort) == Ordering::Greater);
    let start = if marker.is_some() { Start::AfterRow(&after) } else { Start::First };
    let page = listing::page(list, start, Some(q.limit), |i| &i.id)
        .unwrap_or(Page { items: Vec::new(), end: PageEnd { full: false, more: false } });
    // glance offers a next page whenever this one is full.
    Ok((page.items, page.end.full))
}

pub(super) async fn list_images(
    State(state): State<AppState>,
    auth: Auth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let q = parse_list_query(&pairs)?;
    let (all, marker) = state.db.with(|db| -> ApiResult<_> {
        let marker = match &q.marker {
            Some(m) => Some(
                db.image_row_including_deleted(m)?
                    .filter(|i| i.status == ImageStatus::Deleted || can_see(&auth, i))
                    .ok_or_else(|| Dialect::Glance.marker_not_found("Image", m))?,
            ),
            None => None,
        };
        Ok((db.images()?, marker))
    })?;
    let (page, more) = select_images(&auth, &q, all, marker.as_ref())?;
    let mut body = json!({
        "images": page.iter().map(image_json).collect::<Vec<_>>(),
        "first": "/v2/images",
        "schema": "/v2/schemas/images",
    });
    let end = PageEnd { full: more, more };
    let last = page.last().map(|i| i.id.as_str());
    listing::add_next_link(&mut body, Dialect::Glance, "images", "/v2/images", &Params(pairs), end, last);
    Ok(Json(body))
}

// ---------------------------------------------------------------------------------------
// Update (JSON patch)

pub const PATCH_MEDIA_TYPE: &str = "application/openstack-images-v2.1-json-patch";
/// glance's older patch format, still accepted, and what tempest's image client sends: each
/// operation names itself as a key, `{"replace": "/name", "value": "x"}`.
pub const PATCH_MEDIA_TYPE_2_0: &str = "application/openstack-images-v2.0-json-patch";

/// Rewrites 2.0-style operations into RFC 6902 ones (`op` and `path`), which [`apply_patch`]
/// takes. An operation already in the new form, or not an object, is left for it to judge.
fn patch_ops_from_2_0(ops: Value) -> Value {
    let Value::Array(list) = ops else { return ops };
    Value::Array(
        list.into_iter()
            .map(|op| {
                let Value::Object(mut obj) = op else { return op };
                if obj.contains_key("op") {
                    return Value::Object(obj);
                }
                for kind in ["add", "replace", "remove"] {
                    if let Some(path) = obj.remove(kind) {
                        obj.insert("op".into(), json!(kind));
                        obj.insert("path".into(), path);
                        break;
                    }
                }
                Value::Object(obj)
            })
            .collect(),
    )
}

/// Applies glance's JSON-patch operations (`add`, `replace`, `remove` on one top-level
/// attribute or property each) to `img`, checking what the caller may change.
pub fn apply_patch(auth: &Auth, img: &mut Image, ops: &Value) -> ApiResult<()> {
    let ops = ops.as_array().ok_or_else(|| bad("Request body must be a JSON array of operation objects."))?;
    for op in ops {
        let obj = op.as_object().ok_or_else(|| bad("Operations must be JSON objects."))?;
        let kind = obj.get("op").and_then(Value::as_str).unwrap_or_default();
        if !["add", "replace", "remove"].contains(&kind) {
            return Err(bad(format!("Invalid operation: `{kind}`: expected add, replace or remove.")));
        }
        let pointer =
            obj.get("path").and_then(Value::as_str).ok_or_else(|| bad("Unable to find `path` in operation."))?;
        let Some(raw) = pointer.strip_prefix('/').filter(|r| !r.is_empty() && !r.contains('/')) else {
            return Err(bad(format!("Invalid JSON pointer for this resource: '{pointer}'")));
        };
        let key = raw.replace("~1", "/").replace("~0", "~");
        let value = obj.get("value");
        if kind != "remove" && value.is_none() {
            return Err(bad(format!("Operation \"{kind}\" requires a member named \"value\".")));
        }
        check_writable_key(&key)?;
        let base = matches!(
            key.as_str(),
            "id" | "name"
                | "visibility"
                | "protected"
                | "disk_format"
                | "container_format"
                | "min_disk"
                | "min_ram"
                | "tags"
                | "owner"
        );
        if base {
            let Some(v) = value.filter(|_| kind != "remove") else {
                return Err(ApiError::forbidden(format!("Attribute '{key}' cannot be removed.")));
            };
            match key.as_str() {
                "id" => return Err(ApiError::forbidden("Attribute 'id' is read-only.")),
                "name" => img.name = name_value(v)?,
                "visibility" => img.visibility = visibility_value(auth, v)?,
                "protected" => {
                    img.protected = v.as_bool().ok_or_else(|| schema_error(format!("{v} is not of type 'boolean'")))?
                }
                "disk_format" | "container_format" => {
                    if !img.status.formats_settable() {
                        return Err(ApiError::forbidden(format!(
                            "Attribute {key} can be only replaced for a queued image."
                        )));
                    }
                    if key == "disk_format" {
                        img.disk_format = enum_value(v, DISK_FORMATS, true)?;
                    } else {
                        img.container_format = enum_value(v, CONTAINER_FORMATS, true)?;
                    }
                }
                "min_disk" => img.min_disk = non_negative(&key, v)?,
                "min_ram" => img.min_ram = non_negative(&key, v)?,
                "tags" => img.tags = tags_value(v)?,
                _ => img.owner = owner_value(auth, v)?,
            }
            continue;
        }
        if kind != "add" && !img.properties.contains_key(&key) {
            return Err(ApiError::conflict(format!("Property {key} does not exist.")));
        }
        match value.filter(|_| kind != "remove") {
            Some(v) => {
                img.properties.insert(key.clone(), string_property(&key, v)?);
            }
            None => {
                img.properties.remove(&key);
            }
        }
    }
    Ok(())
}

pub(super) async fn update_image(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let media = ctype.split(';').next().map(str::trim).unwrap_or_default();
    if media != PATCH_MEDIA_TYPE && media != PATCH_MEDIA_TYPE_2_0 {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Unsupported Content-Type: use {PATCH_MEDIA_TYPE} or {PATCH_MEDIA_TYPE_2_0}"),
        ));
    }
    let mut img = load_owned(&state, &auth, &id)?;
    let ops = parse_json_body(&body)?;
    let ops = if media == PATCH_MEDIA_TYPE_2_0 { patch_ops_from_2_0(ops) } else { ops };
    apply_patch(&auth, &mut img, &ops)?;
    let saved = state.db.with(|db| db.save_image(&img))?;
    Ok(image_response(StatusCode::OK, &saved))
}

// ---------------------------------------------------------------------------------------
// Tags

pub(super) async fn add_tag(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    load_owned(&state, &auth, &id)?;
    if tag.is_empty() || tag.len() > 255 {
        return Err(bad("Image tag must have 1 to 255 characters."));
    }
    state.db.with(|db| db.add_image_tag(&id, &tag))?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn remove_tag(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    load_owned(&state, &auth, &id)?;
    if !state.db.with(|db| db.remove_image_tag(&id, &tag))? {
        return Err(ApiError::not_found(format!("Tag {tag} not found.")));
    }
    Ok(StatusCode::NO_CONTENT)
}
