//! `os-instance-actions`: nova's `instance_actions` controller and what each microversion
//! changes in it. 2.21 reads deleted servers' actions; 2.51 shows a server's events to its
//! owner, the traceback only to those nova's `events` policy allows; 2.58 adds `updated_at`,
//! paging (`limit`, `marker`, `links`) and `changes-since` (2.66 `changes-before`); 2.62 the
//! event's `hostId` (and `host` for the `events` policy); 2.84 the event's `details` for the
//! `events:details` policy. novabox's maximum is below 2.84 today: the details are recorded
//! and the view shows them as soon as the maximum reaches 2.84.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use sha2::{Digest, Sha224};

use super::microversion::Microversion;
use super::validation;
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::listing::{self, Dialect, PageEnd, Params};
use crate::api::{base_url, AppState};
use crate::compute::api::ComputeApi;
use crate::db::instance_actions::{ActionEvent, ActionsQuery, InstanceAction};
use crate::policy::{Action, Target};

/// nova's `generate_hostid`: the host hashed with the project, so projects cannot compare
/// hosts; empty without a host.
fn host_id(host: Option<&str>, project_id: &str) -> String {
    match host {
        Some(h) if !h.is_empty() => hex::encode(Sha224::digest(format!("{project_id}{h}").as_bytes())),
        _ => String::new(),
    }
}

fn action_view(a: &InstanceAction, v: Microversion) -> Value {
    let mut o = json!({
        "action": a.action,
        "instance_uuid": a.instance_uuid,
        "request_id": a.request_id,
        "user_id": a.user_id,
        "project_id": a.project_id,
        "start_time": a.start_time,
        "message": a.message,
    });
    if v.at_least(58) {
        o["updated_at"] = json!(a.updated_at);
    }
    o
}

/// What a caller is shown of each event (nova's `show`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EventView {
    traceback: bool,
    host: bool,
    host_id: bool,
    details: bool,
}

impl EventView {
    /// None: no events at all (before 2.51, for those the `events` policy refuses).
    fn for_caller(may_see_events: bool, may_see_details: bool, v: Microversion) -> Option<EventView> {
        if !may_see_events && !v.at_least(51) {
            return None;
        }
        Some(EventView {
            traceback: may_see_events,
            host: may_see_events && v.at_least(62),
            host_id: v.at_least(62),
            details: v.at_least(84) && may_see_details,
        })
    }

    fn render(self, e: &ActionEvent, project_id: &str) -> Value {
        let mut o = json!({
            "event": e.event,
            "start_time": e.start_time,
            "finish_time": e.finish_time,
            "result": e.result,
        });
        if self.traceback {
            o["traceback"] = json!(e.traceback);
        }
        if self.host {
            o["host"] = json!(e.host.clone().unwrap_or_default());
        }
        if self.host_id {
            o["hostId"] = json!(host_id(e.host.as_deref(), project_id));
        }
        if self.details {
            o["details"] = json!(e.details);
        }
        o
    }
}

/// The query of a list: nothing before 2.58 (nova ignores what is there), then only the
/// paging and the time window its schema names.
fn query_of(params: &Params, v: Microversion) -> ApiResult<ActionsQuery> {
    if !v.at_least(58) {
        return Ok(ActionsQuery::default());
    }
    let known: &[&str] = if v.at_least(66) {
        &["limit", "marker", "changes-since", "changes-before"]
    } else {
        &["limit", "marker", "changes-since"]
    };
    if let Some(k) = params.keys().find(|k| !known.contains(k)) {
        return Err(ApiError::bad_request(format!("Additional properties are not allowed ('{k}' was unexpected)")));
    }
    let paging = listing::paging(params, Dialect::Nova)?;
    let (changes_since, changes_before) =
        validation::changes_window(params.last("changes-since"), params.last("changes-before"))?;
    Ok(ActionsQuery { changes_since, changes_before, limit: paging.limit, marker: paging.marker })
}

pub async fn index(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let params = Params(q);
    let query = query_of(&params, v)?;
    let (_, actions) = ComputeApi::new(&state).list_actions(&auth, &id, v.at_least(21), &query)?;
    let mut body = json!({"instanceActions": actions.iter().map(|a| action_view(a, v)).collect::<Vec<_>>()});
    if v.at_least(58) {
        let url = format!("{}/compute/v2.1/servers/{id}/os-instance-actions", base_url(&headers, &state.config));
        let end = PageEnd { full: query.limit.is_some_and(|l| actions.len() == l), more: false };
        let last = actions.last().map(|a| a.request_id.as_str());
        if let Some(link) = listing::next_link(Dialect::Nova, &url, &params, end, last) {
            body["links"] = json!([link]);
        }
    }
    Ok(Json(body))
}

pub async fn show(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path((id, request_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (inst, action, events) = ComputeApi::new(&state).action_with_events(&auth, &id, &request_id, v.at_least(21))?;
    let target = Target { project_id: Some(&inst.project_id), ..Target::default() };
    let may_see_events = auth.authorize(Action::ComputeInstanceActionsEvents, &target).is_ok();
    let may_see_details = auth.authorize(Action::ComputeInstanceActionsEventsDetails, &target).is_ok();
    let mut body = action_view(&action, v);
    if let Some(view) = EventView::for_caller(may_see_events, may_see_details, v) {
        // Events recorded without a project (periodic tasks) hash with the server's.
        let project = action.project_id.clone().unwrap_or_else(|| inst.project_id.clone());
        body["events"] = events.iter().map(|e| view.render(e, &project)).collect();
    }
    Ok(Json(json!({ "instanceAction": body })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> ActionEvent {
        ActionEvent {
            event: "compute_stop_instance".into(),
            host: Some("h1".into()),
            start_time: "2026-01-01T00:00:00Z".into(),
            finish_time: Some("2026-01-01T00:00:01Z".into()),
            result: Some("Error".into()),
            traceback: Some("power_off failed".into()),
            details: Some("power_off failed".into()),
        }
    }

    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort();
        k
    }

    #[test]
    fn events_by_microversion_and_policy() {
        // Before 2.51 only those the events policy allows see events, with the traceback.
        assert_eq!(EventView::for_caller(false, false, Microversion(50)), None);
        let admin_50 = EventView::for_caller(true, true, Microversion(50)).unwrap();
        assert_eq!(
            keys(&admin_50.render(&event(), "p")),
            ["event", "finish_time", "result", "start_time", "traceback"]
        );
        // From 2.51 the owner sees them, without the traceback.
        let owner_51 = EventView::for_caller(false, false, Microversion(51)).unwrap();
        assert_eq!(keys(&owner_51.render(&event(), "p")), ["event", "finish_time", "result", "start_time"]);
        // 2.62: hostId for all, host for the policy's.
        let owner_62 = EventView::for_caller(false, false, Microversion(62)).unwrap().render(&event(), "p");
        assert_eq!(owner_62["hostId"], json!(host_id(Some("h1"), "p")));
        assert!(owner_62.get("host").is_none());
        let admin_79 = EventView::for_caller(true, true, Microversion(79)).unwrap().render(&event(), "p");
        assert_eq!((admin_79["host"].clone(), admin_79.get("details")), (json!("h1"), None));
        // 2.84: details, for the details policy only.
        let admin_84 = EventView::for_caller(true, true, Microversion(84)).unwrap().render(&event(), "p");
        assert_eq!(admin_84["details"], "power_off failed");
        let owner_84 = EventView::for_caller(false, false, Microversion(84)).unwrap().render(&event(), "p");
        assert!(owner_84.get("details").is_none());
        assert_eq!(host_id(None, "p"), "");
        assert_ne!(host_id(Some("h1"), "p"), host_id(Some("h1"), "q"), "per project");
    }

    #[test]
    fn queries_by_microversion() {
        let p = |s: &[(&str, &str)]| Params(s.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        assert_eq!(query_of(&p(&[("bogus", "1"), ("limit", "x")]), Microversion(57)).unwrap().limit, None);
        let e = query_of(&p(&[("changes-before", "2026-01-01T00:00:00Z")]), Microversion(65)).unwrap_err();
        assert_eq!(e.message, "Additional properties are not allowed ('changes-before' was unexpected)");
        let q = query_of(&p(&[("limit", "2"), ("marker", "req-1")]), Microversion(58)).unwrap();
        assert_eq!((q.limit, q.marker.as_deref()), (Some(2), Some("req-1")));
        assert_eq!(query_of(&p(&[("limit", "-1")]), Microversion(58)).unwrap_err().status, 400);
        assert_eq!(query_of(&p(&[("changes-since", "yesterday")]), Microversion(58)).unwrap_err().status, 400);
        let e = query_of(
            &p(&[("changes-since", "2026-01-02T00:00:00Z"), ("changes-before", "2026-01-01T00:00:00Z")]),
            Microversion(66),
        )
        .unwrap_err();
        assert_eq!(e.message, "The value of changes-since must be less than or equal to changes-before.");
    }
}
