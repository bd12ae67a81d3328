//! `os-simple-tenant-usage` (`openstack usage list|show`): the hours each instance ran in a
//! window `[start, end)`, and the hours times its vCPUs, RAM and disk, per project, with
//! nova's arithmetic. From 2.40 the instances are paged (`limit`, `marker`) and a full page
//! carries a `next` link; from 2.75 unknown query parameters are refused.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use serde_json::{json, Map, Value};

use super::microversion::Microversion;
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::{base_url, AppState};
use crate::db::usage::UsageRow;
use crate::db::DbError;
use crate::policy::{Action, Target};

/// The most instances one page bills (nova's `[api] max_limit`).
const MAX_LIMIT: usize = 1000;

/// How nova prints a naive UTC time in these bodies.
fn nova_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// `start` or `end` in one of the three forms nova takes (no zone: they are UTC).
fn parse_time(value: &str) -> ApiResult<DateTime<Utc>> {
    let fractional = value.contains('.');
    let forms: [(&str, bool); 3] =
        [("%Y-%m-%dT%H:%M:%S", true), ("%Y-%m-%dT%H:%M:%S%.f", fractional), ("%Y-%m-%d %H:%M:%S%.f", fractional)];
    forms
        .iter()
        .filter(|(_, applies)| *applies)
        .find_map(|(form, _)| NaiveDateTime::parse_from_str(value, form).ok())
        .map(|t| t.and_utc())
        .ok_or_else(|| ApiError::bad_request("Invalid datetime string: Datetime is in invalid format"))
}

/// A time stored by the database (`...Z`), or None when it is unreadable.
fn stored_time(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value).ok().map(|t| t.with_timezone(&Utc))
}

/// nova's `_hours_for`: the part of `[start, stop]` the instance was running, in hours.
fn hours_for(
    launched: DateTime<Utc>,
    terminated: Option<DateTime<Utc>>,
    start: DateTime<Utc>,
    stop: DateTime<Utc>,
) -> f64 {
    if terminated.is_some_and(|t| t < start) || launched > stop {
        return 0.0;
    }
    let from = launched.max(start);
    let to = terminated.map_or(stop, |t| t.min(stop));
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 3_600_000_000.0
}

/// The query as nova reads it for this call.
#[derive(Debug)]
struct UsageQuery {
    start: DateTime<Utc>,
    stop: DateTime<Utc>,
    detailed: bool,
    limit: usize,
    marker: Option<String>,
    /// What a `next` link repeats, sorted by name as nova's links are.
    params: Vec<(String, String)>,
}

fn parse_query(q: &[(String, String)], v: Microversion, list: bool) -> ApiResult<UsageQuery> {
    let first = |key: &str| q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let mut known = vec!["start", "end"];
    if list {
        known.push("detailed");
    }
    if v.at_least(40) {
        known.extend(["limit", "marker"]);
    }
    let unknown: Vec<String> =
        q.iter().filter(|(k, _)| !known.contains(&k.as_str())).map(|(k, _)| format!("'{k}'")).collect();
    if v.at_least(75) && !unknown.is_empty() {
        let verb = if unknown.len() == 1 { "was" } else { "were" };
        return Err(ApiError::bad_request(format!(
            "Additional properties are not allowed ({} {verb} unexpected)",
            unknown.join(", ")
        )));
    }
    let now = crate::clock::now();
    let start = first("start").filter(|s| !s.is_empty()).map(parse_time).transpose()?;
    let end = first("end").filter(|s| !s.is_empty()).map(parse_time).transpose()?;
    let start_at = start.unwrap_or(now);
    let end_at = end.unwrap_or(now);
    // Both default to now; nova reads the clock for each, so two defaults are a tiny window.
    if (start.is_some() || end.is_some()) && start_at >= end_at {
        return Err(ApiError::bad_request("Invalid start time. The start time cannot occur after the end time."));
    }
    let stop = end_at.min(now);
    let (mut limit, mut marker) = (MAX_LIMIT, None);
    if v.at_least(40) {
        if let Some(l) = first("limit") {
            if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for query parameters limit. Value: {l}. '{l}' does not match '^[0-9]*$'"
                )));
            }
            limit = l.parse::<usize>().unwrap_or(usize::MAX).min(MAX_LIMIT);
        }
        marker = first("marker").map(str::to_string);
    }
    let mut params: Vec<(String, String)> =
        q.iter().filter(|(k, _)| known.contains(&k.as_str()) && k != "marker").cloned().collect();
    params.sort();
    params.dedup_by(|a, b| a.0 == b.0);
    Ok(UsageQuery { start: start_at, stop, detailed: list && first("detailed") == Some("1"), limit, marker, params })
}

/// Python's `urlencode`: unreserved characters as they are, spaces as `+`, the rest escaped.
fn urlencode(pairs: &[(String, String)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => (b as char).to_string(),
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

/// One instance's usage, as nova's `server_usages` item.
fn server_usage(r: &UsageRow, q: &UsageQuery, now: DateTime<Utc>) -> Option<(Value, f64)> {
    let launched = stored_time(&r.launched_at)?;
    let terminated = r.terminated_at.as_deref().and_then(stored_time);
    let hours = hours_for(launched, terminated, q.start, q.stop);
    let uptime = (terminated.unwrap_or(now) - launched).num_seconds().max(0);
    let state = if terminated.is_some() { "terminated" } else { r.vm_state.as_str() };
    let usage = json!({
        "instance_id": r.uuid,
        "name": r.name,
        "tenant_id": r.project_id,
        "flavor": r.flavor_name,
        "hours": hours,
        "memory_mb": r.memory_mb,
        "local_gb": r.local_gb,
        "vcpus": r.vcpus,
        "started_at": nova_time(launched),
        "ended_at": terminated.map(nova_time),
        "state": state,
        "uptime": uptime,
    });
    Some((usage, hours))
}

/// The project summaries of `rows` (in the order their projects first appear) and every
/// instance's usage.
fn summarize(rows: &[UsageRow], q: &UsageQuery, detailed: bool) -> (Vec<Value>, Vec<Value>) {
    let now = crate::clock::now();
    let mut summaries: Vec<Map<String, Value>> = Vec::new();
    let mut all = Vec::new();
    for r in rows {
        let Some((usage, hours)) = server_usage(r, q, now) else { continue };
        if summaries.last().and_then(|s| s["tenant_id"].as_str()) != Some(r.project_id.as_str()) {
            let mut s = Map::new();
            s.insert("tenant_id".into(), json!(r.project_id));
            if detailed {
                s.insert("server_usages".into(), json!([]));
            }
            for k in ["total_local_gb_usage", "total_vcpus_usage", "total_memory_mb_usage", "total_hours"] {
                s.insert(k.into(), json!(0.0));
            }
            s.insert("start".into(), json!(nova_time(q.start)));
            s.insert("stop".into(), json!(nova_time(q.stop)));
            summaries.push(s);
        }
        let Some(s) = summaries.last_mut() else { continue };
        let mut add = |key: &str, amount: f64| {
            let total = s.get(key).and_then(Value::as_f64).unwrap_or(0.0) + amount;
            s.insert(key.into(), json!(total));
        };
        add("total_local_gb_usage", r.local_gb as f64 * hours);
        add("total_vcpus_usage", r.vcpus as f64 * hours);
        add("total_memory_mb_usage", r.memory_mb as f64 * hours);
        add("total_hours", hours);
        if let Some(Value::Array(list)) = s.get_mut("server_usages") {
            list.push(usage.clone());
        }
        all.push(usage);
    }
    (summaries.into_iter().map(Value::Object).collect(), all)
}

/// The instances of the window, one page of them; an unknown marker is nova's 400.
fn rows(state: &AppState, q: &UsageQuery, project: Option<&str>) -> ApiResult<Vec<UsageRow>> {
    // Stored times have whole seconds: `terminated > start` holds exactly when it holds for
    // the start's whole second, and `launched < end` when it holds for the end rounded up.
    let begin = q.start.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let end_up = if q.stop.timestamp_subsec_nanos() > 0 { q.stop + Duration::seconds(1) } else { q.stop };
    let end = end_up.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let limit = if q.limit == 0 { MAX_LIMIT } else { q.limit };
    state.db.with(|db| db.instances_in_window(&begin, &end, project, limit, q.marker.as_deref())).map_err(|e| match e {
        DbError::NotFound(m) => ApiError::bad_request(m),
        other => other.into(),
    })
}

/// nova's `next` link: present when the page is full.
fn next_link(base: &str, path: &str, q: &UsageQuery, page: &[Value]) -> Option<Value> {
    let limit = if q.limit == 0 { MAX_LIMIT } else { q.limit };
    let last = page.last()?["instance_id"].as_str()?.to_string();
    if page.len() != limit {
        return None;
    }
    let mut params = q.params.clone();
    params.push(("marker".into(), last));
    Some(json!([{"rel": "next", "href": format!("{base}/compute/v2.1/{path}?{}", urlencode(&params))}]))
}

pub async fn list(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::ComputeUsageList, &Target::default())?;
    let q = parse_query(&q, v, true)?;
    let rows = rows(&state, &q, None)?;
    let (summaries, all) = summarize(&rows, &q, q.detailed);
    let mut body = json!({ "tenant_usages": summaries });
    if v.at_least(40) {
        if let Some(next) = next_link(&base_url(&headers, &state.config), "os-simple-tenant-usage", &q, &all) {
            body["tenant_usages_links"] = next;
        }
    }
    Ok(Json(body))
}

pub async fn show(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(project): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::ComputeUsageShow, &Target { project_id: Some(&project), ..Target::default() })?;
    let q = parse_query(&q, v, false)?;
    let rows = rows(&state, &q, Some(&project))?;
    let (summaries, all) = summarize(&rows, &q, true);
    let usage = summaries.into_iter().next().unwrap_or_else(|| json!({}));
    let mut body = json!({ "tenant_usage": usage });
    if v.at_least(40) {
        let path = format!("os-simple-tenant-usage/{project}");
        if let Some(next) = next_link(&base_url(&headers, &state.config), &path, &q, &all) {
            body["tenant_usage_links"] = next;
        }
    }
    Ok(Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap()
    }

    #[test]
    fn hours_count_only_the_part_inside_the_window() {
        let (start, stop) = (t("2026-01-01T00:00:00"), t("2026-01-02T00:00:00"));
        // Ran all day and beyond: 24 hours.
        assert_eq!(hours_for(t("2025-12-01T00:00:00"), None, start, stop), 24.0);
        // Launched at 18:00, terminated at 19:30: 1.5 hours.
        assert_eq!(hours_for(t("2026-01-01T18:00:00"), Some(t("2026-01-01T19:30:00")), start, stop), 1.5);
        // Terminated before the window, or launched after it: nothing.
        assert_eq!(hours_for(t("2025-01-01T00:00:00"), Some(t("2025-12-31T23:59:59")), start, stop), 0.0);
        assert_eq!(hours_for(t("2026-01-03T00:00:00"), None, start, stop), 0.0);
        // Launched inside, still running: up to the stop.
        assert_eq!(hours_for(t("2026-01-01T23:45:00"), None, start, stop), 0.25);
    }

    #[test]
    fn times_take_nova_forms_only() {
        assert_eq!(t("2026-01-01T10:00:00.500000").timestamp_subsec_micros(), 500_000);
        assert!(parse_time("2026-01-01 10:00:00.5").is_ok());
        for bad in ["2026-01-01 10:00:00", "2026-01-01T10:00:00Z", "yesterday", "2026-01-01"] {
            let e = parse_time(bad).unwrap_err();
            assert_eq!(e.message, "Invalid datetime string: Datetime is in invalid format", "{bad}");
        }
        assert_eq!(nova_time(t("2026-01-01T10:00:00")), "2026-01-01T10:00:00.000000");
    }

    #[test]
    fn queries_follow_the_microversion() {
        let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let e =
            parse_query(&q(&[("start", "2026-01-02T00:00:00"), ("end", "2026-01-01T00:00:00")]), Microversion(1), true);
        assert_eq!(e.unwrap_err().message, "Invalid start time. The start time cannot occur after the end time.");
        // Paging is 2.40's; before it, `limit` is ignored like any unknown parameter.
        let p = parse_query(&q(&[("start", "2026-01-01T00:00:00"), ("limit", "2")]), Microversion(39), true).unwrap();
        assert_eq!(p.limit, MAX_LIMIT);
        let p = parse_query(&q(&[("start", "2026-01-01T00:00:00"), ("limit", "2")]), Microversion(40), true).unwrap();
        assert_eq!(p.limit, 2);
        assert!(parse_query(&q(&[("limit", "-2")]), Microversion(40), true).is_err());
        assert!(parse_query(&q(&[("detailed", "1")]), Microversion(75), false).is_err(), "show has no `detailed`");
        assert!(parse_query(&q(&[("detailed", "1")]), Microversion(75), true).unwrap().detailed);
        assert_eq!(urlencode(&[("end".into(), "2026-01-01 00:00:00.5".into())]), "end=2026-01-01+00%3A00%3A00.5");
    }

    mod api {
        use axum::body::Body;
        use axum::http::{Method, Request, StatusCode};
        use serde_json::json;

        use crate::api::testing::{Cloud, Reply};
        use crate::db::instances::tests::new_instance;
        use crate::db::instances::InstanceUpdate;

        async fn at(c: &Cloud, version: &str, uri: &str, token: &str) -> Reply {
            let req = Request::builder()
                .method(Method::GET)
                .uri(uri)
                .header("host", "127.0.0.1:8774")
                .header("x-auth-token", token)
                .header("openstack-api-version", format!("compute {version}"));
            c.send(req.body(Body::empty()).expect("request")).await
        }

        #[tokio::test]
        async fn usage_is_the_admins_to_list_and_each_projects_to_show() {
            let c = Cloud::new();
            let (admin, demo) = (c.token("admin").await, c.token("demo").await);
            let mut uuids = Vec::new();
            for (name, project, launched, terminated) in [
                ("a", c.demo_project.clone(), "2026-01-01T06:00:00Z", None),
                ("b", c.demo_project.clone(), "2026-01-01T12:00:00Z", Some("2026-01-01T18:00:00Z")),
                ("c", c.alt_project.clone(), "2026-01-01T00:00:00Z", None),
            ] {
                let mut n = c.state.db.with(|db| Ok::<_, ()>(new_instance(db, name))).unwrap();
                n.project_id = project;
                let i = c.state.db.with(|db| db.create_instance(&n)).unwrap();
                let u = InstanceUpdate { launched_at: Some(launched.into()), ..Default::default() };
                c.state.db.with(|db| db.update_instance(&i.uuid, &u)).unwrap().unwrap();
                if let Some(t) = terminated {
                    c.state.db.with(|db| db.destroy_instance(&i.uuid)).unwrap();
                    c.state.db.with(|db| db.set_terminated_at(&i.uuid, t)).unwrap();
                }
                uuids.push(i.uuid);
            }
            let window = "start=2026-01-01T00:00:00&end=2026-01-02T00:00:00";
            let r = at(&c, "2.1", &format!("/compute/v2.1/os-simple-tenant-usage?{window}&detailed=1"), &admin).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let usages = r.json()["tenant_usages"].clone();
            assert_eq!(usages.as_array().map(Vec::len), Some(2), "{usages}");
            let demo_usage =
                usages.as_array().unwrap().iter().find(|u| u["tenant_id"] == json!(c.demo_project)).unwrap();
            // 18 hours of a, 6 of b; m1.nano has one vCPU, 64 MB and 1 GB.
            assert_eq!(demo_usage["total_hours"], json!(24.0));
            assert_eq!(demo_usage["total_vcpus_usage"], json!(24.0));
            assert_eq!(demo_usage["total_memory_mb_usage"], json!(24.0 * 64.0));
            assert_eq!(demo_usage["start"], "2026-01-01T00:00:00.000000");
            let b = demo_usage["server_usages"].as_array().unwrap().iter().find(|s| s["name"] == "b").unwrap();
            assert_eq!(
                (b["state"].clone(), b["hours"].clone(), b["uptime"].clone()),
                (json!("terminated"), json!(6.0), json!(21600))
            );
            assert_eq!(b["ended_at"], "2026-01-01T18:00:00.000000");

            let r = at(&c, "2.1", &format!("/compute/v2.1/os-simple-tenant-usage?{window}"), &admin).await;
            assert!(r.json()["tenant_usages"][0].get("server_usages").is_none(), "only `detailed` lists servers");
            let r = at(&c, "2.1", &format!("/compute/v2.1/os-simple-tenant-usage?{window}"), &demo).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN);
            let r =
                at(&c, "2.1", &format!("/compute/v2.1/os-simple-tenant-usage/{}?{window}", c.alt_project), &demo).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN);
            let own = format!("/compute/v2.1/os-simple-tenant-usage/{}?{window}", c.demo_project);
            let r = at(&c, "2.1", &own, &demo).await;
            assert_eq!(r.json()["tenant_usage"]["server_usages"].as_array().map(Vec::len), Some(2), "{}", r.text());
            // Nothing in the window: an empty object.
            let empty = format!(
                "/compute/v2.1/os-simple-tenant-usage/{}?start=2020-01-01T00:00:00&end=2020-01-02T00:00:00",
                c.demo_project
            );
            assert_eq!(at(&c, "2.1", &empty, &demo).await.json(), json!({"tenant_usage": {}}));

            // 2.40 pages by project and uuid, with a next link while pages are full.
            let r = at(&c, "2.40", &format!("{own}&limit=1"), &demo).await;
            let first = r.json()["tenant_usage"]["server_usages"][0]["instance_id"].as_str().unwrap().to_string();
            let next = r.json()["tenant_usage_links"][0]["href"].as_str().unwrap().to_string();
            assert!(next.ends_with(&format!("marker={first}")), "{next}");
            assert!(next.contains("limit=1&start=2026-01-01T00%3A00%3A00"), "{next}");
            let r = at(&c, "2.40", &format!("{own}&limit=1&marker={first}"), &demo).await;
            let second = r.json()["tenant_usage"]["server_usages"][0]["instance_id"].as_str().unwrap().to_string();
            assert_ne!(first, second);
            let r = at(&c, "2.40", &format!("{own}&marker=nope"), &demo).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST);
            let r = at(&c, "2.1", "/compute/v2.1/os-simple-tenant-usage?start=garbage", &admin).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST);
        }
    }
}
