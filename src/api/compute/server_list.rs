//! The server list: `GET /servers` and `GET /servers/detail` with nova's filters, sorting and
//! paging.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::microversion::Microversion;
use super::servers::{server_view, view_data, ViewData};
use super::{links, validation};
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::{base_url, AppState};
use crate::compute::states;
use crate::db::instances::{Instance, InstanceFilter};

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    name: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    marker: Option<String>,
    #[serde(rename = "changes-since")]
    changes_since: Option<String>,
    #[serde(rename = "changes-before")]
    changes_before: Option<String>,
    all_tenants: Option<String>,
    project_id: Option<String>,
    tenant_id: Option<String>,
    host: Option<String>,
    deleted: Option<String>,
}

/// The most items one page of a list holds (nova's `[api] max_limit`).
const MAX_LIMIT: usize = 1000;

fn truthy(v: &Option<String>) -> bool {
    match v.as_deref() {
        None => false,
        Some(s) => !matches!(s.to_ascii_lowercase().as_str(), "0" | "false" | "no" | "off"),
    }
}

fn listed(state: &AppState, auth: &Auth, q: &ListQuery, v: Microversion) -> ApiResult<(Vec<Instance>, Vec<ViewData>)> {
    // Before 2.66 nova drops `changes-before` as an unknown filter.
    let (since, before) =
        validation::changes_window(q.changes_since.as_deref(), q.changes_before.as_deref().filter(|_| v.at_least(66)))?;
    let all_tenants = auth.is_admin() && (q.all_tenants.as_deref() == Some("") || truthy(&q.all_tenants));
    let project_id =
        if all_tenants { q.project_id.clone().or(q.tenant_id.clone()) } else { Some(auth.project_id().to_string()) };
    let vm_states = match &q.status {
        Some(s) => {
            let states = states::vm_states_for_status(s)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid status value: {s}")))?;
            Some(states.to_vec())
        }
        None => None,
    };
    let filter = InstanceFilter {
        project_id,
        host: if auth.is_admin() { q.host.clone() } else { None },
        name: validation::name_filter(q.name.as_deref())?,
        vm_states,
        uuids: None,
        include_deleted: auth.is_admin() && truthy(&q.deleted) || since.is_some() || before.is_some(),
        changes_since: since,
        changes_before: before,
        // nova's `[api] max_limit`: a larger limit is capped, not refused.
        limit: q.limit.map(|l| l.min(MAX_LIMIT)),
        marker: q.marker.clone(),
    };
    let result = state.db.with(|db| -> crate::db::Result<_> {
        let list = db.list_instances(&filter)?;
        let services = db.services()?;
        let data = list.iter().map(|i| view_data(state, db, &services, i)).collect::<crate::db::Result<Vec<_>>>()?;
        Ok((list, data))
    });
    match result {
        Err(crate::db::DbError::Conflict(m)) => Err(ApiError::bad_request(m)),
        other => Ok(other?),
    }
}

fn next_link(base: &str, list: &[Instance], q: &ListQuery, path: &str) -> Option<Value> {
    let limit = q.limit?;
    let last = list.last()?;
    (list.len() == limit).then(
        || json!([{"rel": "next", "href": format!("{base}/compute/v2.1/{path}?limit={limit}&marker={}", last.uuid)}]),
    )
}

pub async fn list(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let base = base_url(&headers, &state.config);
    let (list, _) = listed(&state, &auth, &q, v)?;
    let servers: Vec<Value> = list
        .iter()
        .map(|i| json!({"id": i.uuid, "name": i.display_name, "links": links(&base, "servers", &i.uuid)}))
        .collect();
    let mut body = json!({ "servers": servers });
    if let Some(next) = next_link(&base, &list, &q, "servers") {
        body["servers_links"] = next;
    }
    Ok(Json(body))
}

pub async fn list_detail(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let base = base_url(&headers, &state.config);
    let (list, data) = listed(&state, &auth, &q, v)?;
    let servers: Vec<Value> = list.iter().zip(&data).map(|(i, d)| server_view(i, d, &base, v, &auth)).collect();
    let mut body = json!({ "servers": servers });
    if let Some(next) = next_link(&base, &list, &q, "servers/detail") {
        body["servers_links"] = next;
    }
    Ok(Json(body))
}
