//! `os-server-groups`: nova's server groups. Before 2.64 a group shows `policies` (a list of
//! one) and an always-empty `metadata`; from 2.64 `policy` and `rules` (anti-affinity's
//! `max_server_per_host`). 2.13 adds `project_id` and `user_id`, 2.15 the soft policies.
//! The scheduler enforces the policies (`scheduler/filters.rs`, `weighers.rs`); members join
//! through the `group` scheduler hint on create (`compute/api/create.rs`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use super::microversion::Microversion;
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::AppState;
use crate::db::server_groups::{NewServerGroup, ServerGroup};
use crate::policy::{Action, Target};

/// The most groups one page holds (nova's `[api] max_limit`).
const MAX_LIMIT: usize = 1000;

/// The policies a group may have at microversion `v`: the soft ones came with 2.15.
fn policies(v: Microversion) -> &'static [&'static str] {
    if v.at_least(15) {
        &["anti-affinity", "affinity", "soft-anti-affinity", "soft-affinity"]
    } else {
        &["anti-affinity", "affinity"]
    }
}

/// A JSON value as Python prints it, which is how nova's schema errors quote values.
fn py(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{s}'"),
        Value::Array(a) => format!("[{}]", a.iter().map(py).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => {
            format!("{{{}}}", o.iter().map(|(k, v)| format!("'{k}': {}", py(v))).collect::<Vec<_>>().join(", "))
        }
    }
}

/// nova's message for a value its schema refuses at `field`.
fn invalid(field: &str, value: &Value, why: &str) -> ApiError {
    let shown = match value {
        Value::String(s) => s.clone(),
        other => py(other),
    };
    ApiError::bad_request(format!("Invalid input for field/attribute {field}. Value: {shown}. {why}"))
}

/// Refuses keys of `o` that are not `allowed`, as `additionalProperties: false` does.
fn only(field: Option<&str>, o: &Map<String, Value>, allowed: &[&str]) -> ApiResult<()> {
    let extra: Vec<String> = o.keys().filter(|k| !allowed.contains(&k.as_str())).map(|k| format!("'{k}'")).collect();
    if extra.is_empty() {
        return Ok(());
    }
    let verb = if extra.len() == 1 { "was" } else { "were" };
    let why = format!("Additional properties are not allowed ({} {verb} unexpected)", extra.join(", "));
    Err(match field {
        Some(f) => invalid(f, &Value::Object(o.clone()), &why),
        None => ApiError::bad_request(why),
    })
}

fn required(o: &Map<String, Value>, key: &str) -> ApiResult<Value> {
    o.get(key).cloned().ok_or_else(|| ApiError::bad_request(format!("'{key}' is a required property")))
}

fn one_of(field: &str, value: &Value, allowed: &[&str]) -> ApiResult<String> {
    match value.as_str() {
        Some(s) if allowed.contains(&s) => Ok(s.to_string()),
        Some(_) => {
            let list = allowed.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(", ");
            Err(invalid(field, value, &format!("{} is not one of [{list}]", py(value))))
        }
        None => Err(invalid(field, value, &format!("{} is not of type 'string'", py(value)))),
    }
}

/// A create body, checked as nova's schema for `v` checks it: (name, policy, max per host).
pub(crate) fn parse_create(body: &Value, v: Microversion) -> ApiResult<(String, String, Option<i64>)> {
    let top = body.as_object().ok_or_else(|| ApiError::bad_request(format!("{} is not of type 'object'", py(body))))?;
    only(None, top, &["server_group"])?;
    let sg = required(top, "server_group")?;
    let sg =
        sg.as_object().ok_or_else(|| invalid("server_group", &sg, &format!("{} is not of type 'object'", py(&sg))))?;
    let keys: &[&str] = if v.at_least(64) { &["name", "policy", "rules"] } else { &["name", "policies"] };
    only(Some("server_group"), sg, keys)?;
    let name = required(sg, "name")?;
    let name =
        name.as_str().ok_or_else(|| invalid("name", &name, &format!("{} is not of type 'string'", py(&name))))?;
    super::validation::name("name", name)?;
    if !v.at_least(64) {
        let list = required(sg, "policies")?;
        let items = list
            .as_array()
            .ok_or_else(|| invalid("policies", &list, &format!("{} is not of type 'array'", py(&list))))?;
        match items.len() {
            0 => return Err(invalid("policies", &list, &format!("{} is too short", py(&list)))),
            1 => {}
            _ => return Err(invalid("policies", &list, &format!("{} is too long", py(&list)))),
        }
        let policy = one_of("0", &items[0], policies(v))?;
        return Ok((name.to_string(), policy, None));
    }
    let policy = one_of("policy", &required(sg, "policy")?, policies(v))?;
    let mut max_per_host = None;
    if let Some(rules) = sg.get("rules") {
        let r = rules
            .as_object()
            .ok_or_else(|| invalid("rules", rules, &format!("{} is not of type 'object'", py(rules))))?;
        only(Some("rules"), r, &["max_server_per_host"])?;
        if let Some(m) = r.get("max_server_per_host") {
            max_per_host = Some(positive_integer("max_server_per_host", m)?);
        }
        if policy != "anti-affinity" && !r.is_empty() {
            return Err(ApiError::bad_request("Only anti-affinity policy supports rules."));
        }
    }
    Ok((name.to_string(), policy, max_per_host))
}

/// nova's `positive_integer`: an integer, or a string of digits, at least 1.
fn positive_integer(field: &str, value: &Value) -> ApiResult<i64> {
    let n = match value {
        Value::Number(n) => {
            n.as_i64().ok_or_else(|| invalid(field, value, &format!("{n} is not of type 'integer', 'string'")))?
        }
        Value::String(s) => {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(field, value, &format!("'{s}' does not match '^[0-9]*$'")));
            }
            s.parse().map_err(|_| invalid(field, value, &format!("'{s}' is too large")))?
        }
        other => return Err(invalid(field, other, &format!("{} is not of type 'integer', 'string'", py(other)))),
    };
    if n < 1 {
        return Err(invalid(field, value, &format!("{n} is less than the minimum of 1")));
    }
    Ok(n)
}

/// A group as nova shows it at `v`.
pub fn view(g: &ServerGroup, v: Microversion) -> Value {
    let mut o = json!({"id": g.uuid, "name": g.name, "members": g.members});
    if v.at_least(64) {
        o["policy"] = json!(g.policy);
        o["rules"] = match g.max_server_per_host {
            Some(n) => json!({"max_server_per_host": n}),
            None => json!({}),
        };
    } else {
        o["policies"] = json!([g.policy]);
        o["metadata"] = json!({});
    }
    if v.at_least(13) {
        o["project_id"] = json!(g.project_id);
        o["user_id"] = json!(g.user_id);
    }
    o
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Instance group {id} could not be found."))
}

/// The group `id`, if the caller's policy lets it act on it: nova finds the group first (404)
/// and asks the policy with the group's project after (403).
fn group_for(state: &AppState, auth: &Auth, id: &str, action: Action) -> ApiResult<ServerGroup> {
    let g = state.db.with(|db| db.server_group(id))?.ok_or_else(|| not_found(id))?;
    auth.authorize(action, &Target { project_id: Some(&g.project_id), ..Target::default() })?;
    Ok(g)
}

pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body.map_err(|e| ApiError::from_json_rejection(e, "Malformed request body"))?;
    let (name, policy, max_server_per_host) = parse_create(&body, v)?;
    // Count and insert in one transaction, so concurrent creates cannot pass the quota together.
    let g = state.db.tx(|db| -> ApiResult<ServerGroup> {
        let limit = db.quota_limits(auth.project_id())?.get("server_groups").copied().unwrap_or(-1);
        if limit >= 0 && db.count_server_groups(auth.project_id())? >= limit {
            return Err(ApiError::forbidden("Quota exceeded, too many server groups."));
        }
        Ok(db.create_server_group(&NewServerGroup {
            name: &name,
            project_id: auth.project_id(),
            user_id: auth.user_id(),
            policy: &policy,
            max_server_per_host,
        })?)
    })?;
    Ok(Json(json!({ "server_group": view(&g, v) })))
}

pub async fn show(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let g = group_for(&state, &auth, &id, Action::ComputeServerGroupShow)?;
    Ok(Json(json!({ "server_group": view(&g, v) })))
}

pub async fn delete(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    group_for(&state, &auth, &id, Action::ComputeServerGroupDelete)?;
    if !state.db.with(|db| db.delete_server_group(&id))? {
        return Err(not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `limit` or `offset`: nova's `non_negative_integer` for a query parameter.
fn non_negative(field: &str, value: &str) -> ApiResult<usize> {
    let bad = |why: String| {
        ApiError::bad_request(format!("Invalid input for query parameters {field}. Value: {value}. {why}"))
    };
    if value.is_empty() {
        return Err(bad(format!("'{value}' is too short")));
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("'{value}' does not match '^[0-9]*$'")));
    }
    // Past usize every page is simply everything (or nothing, for an offset).
    Ok(value.parse().unwrap_or(usize::MAX))
}

pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let (mut all_projects, mut limit, mut offset) = (false, None, 0);
    let mut unknown = Vec::new();
    for (k, val) in &q {
        match k.as_str() {
            "all_projects" => all_projects = true,
            "limit" => limit = Some(non_negative("limit", val)?),
            "offset" => offset = non_negative("offset", val)?,
            _ => unknown.push(format!("'{k}'")),
        }
    }
    // 2.75 closed the query string; before it nova ignored what it did not know.
    if v.at_least(75) && !unknown.is_empty() {
        let verb = if unknown.len() == 1 { "was" } else { "were" };
        return Err(ApiError::bad_request(format!(
            "Additional properties are not allowed ({} {verb} unexpected)",
            unknown.join(", ")
        )));
    }
    // A caller the policy refuses every project gets its own groups, as nova answers it.
    let everyone = all_projects
        && auth.is_admin()
        && auth.authorize(Action::ComputeServerGroupListAllProjects, &Target::default()).is_ok();
    let project = if everyone { None } else { Some(auth.project_id()) };
    let groups = state.db.with(|db| db.server_groups(project))?;
    // nova's `limited`: no limit, or 0, means max_limit.
    let limit = limit.filter(|l| *l > 0).unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
    let page: Vec<Value> = groups.iter().skip(offset).take(limit).map(|g| view(g, v)).collect();
    Ok(Json(json!({ "server_groups": page })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: Value, v: u32) -> String {
        parse_create(&body, Microversion(v)).unwrap_err().message
    }

    #[test]
    fn create_bodies_are_checked_as_nova_checks_them_per_microversion() {
        let ok = parse_create(&json!({"server_group": {"name": "g", "policies": ["affinity"]}}), Microversion(1));
        assert_eq!(ok.unwrap(), ("g".into(), "affinity".into(), None));
        assert_eq!(
            err(json!({"server_group": {"name": "g", "policies": ["soft-affinity"]}}), 14),
            "Invalid input for field/attribute 0. Value: soft-affinity. 'soft-affinity' is not one of \
             ['anti-affinity', 'affinity']"
        );
        assert!(parse_create(&json!({"server_group": {"name": "g", "policies": ["soft-affinity"]}}), Microversion(15))
            .is_ok());
        assert_eq!(
            err(json!({"server_group": {"name": "g", "policies": ["affinity", "anti-affinity"]}}), 15),
            "Invalid input for field/attribute policies. Value: ['affinity', 'anti-affinity']. \
             ['affinity', 'anti-affinity'] is too long"
        );
        assert_eq!(err(json!({"server_group": {"name": "g"}}), 2), "'policies' is a required property");
        // 2.64 replaced the list with one policy and rules.
        assert_eq!(
            err(json!({"server_group": {"name": "g", "policies": ["affinity"]}}), 64).split(". ").last(),
            Some("Additional properties are not allowed ('policies' was unexpected)")
        );
        assert_eq!(err(json!({"server_group": {"name": "g"}}), 64), "'policy' is a required property");
        let anti =
            json!({"server_group": {"name": "g", "policy": "anti-affinity", "rules": {"max_server_per_host": "3"}}});
        assert_eq!(parse_create(&anti, Microversion(64)).unwrap(), ("g".into(), "anti-affinity".into(), Some(3)));
        assert_eq!(
            err(json!({"server_group": {"name": "g", "policy": "affinity", "rules": {"max_server_per_host": 2}}}), 64),
            "Only anti-affinity policy supports rules."
        );
        assert_eq!(
            err(
                json!({"server_group": {"name": "g", "policy": "anti-affinity", "rules": {"max_server_per_host": 0}}}),
                64
            ),
            "Invalid input for field/attribute max_server_per_host. Value: 0. 0 is less than the minimum of 1"
        );
        assert!(err(json!({"server_group": {"name": "g", "policy": "anti-affinity", "rules": {"x": 1}}}), 64)
            .ends_with("Additional properties are not allowed ('x' was unexpected)"));
        assert!(err(json!({"server_group": {"name": " g", "policy": "affinity"}}), 64).contains("whitespace"));
        assert_eq!(err(json!({"nope": {}}), 64), "Additional properties are not allowed ('nope' was unexpected)");
    }

    #[test]
    fn views_follow_the_microversion() {
        let g = ServerGroup {
            id: 1,
            uuid: "u".into(),
            name: "g".into(),
            project_id: "p".into(),
            user_id: "w".into(),
            policy: "anti-affinity".into(),
            max_server_per_host: Some(2),
            members: vec!["m".into()],
            created_at: "t".into(),
        };
        let keys = |v: u32| {
            let o = view(&g, Microversion(v));
            let mut k: Vec<String> = o.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(1), ["id", "members", "metadata", "name", "policies"]);
        assert_eq!(keys(13), ["id", "members", "metadata", "name", "policies", "project_id", "user_id"]);
        assert_eq!(keys(64), ["id", "members", "name", "policy", "project_id", "rules", "user_id"]);
        assert_eq!(view(&g, Microversion(64))["rules"], json!({"max_server_per_host": 2}));
        assert_eq!(view(&g, Microversion(63))["policies"], json!(["anti-affinity"]));
    }

    #[test]
    fn paging_parameters_are_non_negative_integers() {
        assert_eq!(non_negative("limit", "5").unwrap(), 5);
        assert_eq!(
            non_negative("limit", "-1").unwrap_err().message,
            "Invalid input for query parameters limit. Value: -1. '-1' does not match '^[0-9]*$'"
        );
        assert!(non_negative("offset", "").is_err());
    }

    mod api {
        use std::sync::Arc;

        use axum::body::Body;
        use axum::http::{Method, Request, StatusCode};
        use serde_json::{json, Value};

        use crate::api::hostile_input::SinkBus;
        use crate::api::testing::{Cloud, Reply};

        const GROUPS: &str = "/compute/v2.1/os-server-groups";

        async fn at(c: &Cloud, version: &str, method: Method, uri: &str, token: &str, body: Option<Value>) -> Reply {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .header("host", "127.0.0.1:8774")
                .header("x-auth-token", token)
                .header("openstack-api-version", format!("compute {version}"))
                .header("content-type", "application/json");
            let body = body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty);
            c.send(req.body(body).expect("request")).await
        }

        fn message(r: &Reply) -> String {
            let body = r.json();
            body.as_object()
                .and_then(|o| o.values().next())
                .and_then(|f| f["message"].as_str())
                .unwrap_or_default()
                .into()
        }

        fn keys(o: &Value) -> Vec<String> {
            let mut k: Vec<String> = o.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
            k.sort();
            k
        }

        #[tokio::test]
        async fn groups_are_created_shown_listed_and_deleted_as_nova_does() {
            let c = Cloud::new();
            let (admin, demo, alt, reader) =
                (c.token("admin").await, c.token("demo").await, c.token("alt").await, c.token("reader").await);
            let body = json!({"server_group": {"name": "g", "policies": ["anti-affinity"]}});
            let r = at(&c, "2.1", Method::POST, GROUPS, &demo, Some(body.clone())).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let g = r.json()["server_group"].clone();
            // v2_1/server_groups.py: exactly these keys; 2.13 adds the owners.
            assert_eq!(keys(&g), ["id", "members", "metadata", "name", "policies"]);
            assert_eq!((g["policies"].clone(), g["members"].clone()), (json!(["anti-affinity"]), json!([])));
            let id = g["id"].as_str().unwrap().to_string();
            let one = format!("{GROUPS}/{id}");
            let r = at(&c, "2.13", Method::GET, &one, &demo, None).await;
            assert_eq!(
                keys(&r.json()["server_group"]),
                ["id", "members", "metadata", "name", "policies", "project_id", "user_id"]
            );
            assert_eq!(r.json()["server_group"]["project_id"], json!(c.demo_project));
            let r = at(&c, "2.64", Method::GET, &one, &reader, None).await;
            assert_eq!(r.status, StatusCode::OK, "a reader of the project sees it");
            assert_eq!(
                keys(&r.json()["server_group"]),
                ["id", "members", "name", "policy", "project_id", "rules", "user_id"]
            );
            assert_eq!(
                (r.json()["server_group"]["policy"].clone(), r.json()["server_group"]["rules"].clone()),
                (json!("anti-affinity"), json!({}))
            );

            // Another project's group: nova finds it and its policy refuses.
            let r = at(&c, "2.64", Method::GET, &one, &alt, None).await;
            assert_eq!(
                (r.status, message(&r).as_str()),
                (StatusCode::FORBIDDEN, "Policy doesn't allow os_compute_api:os-server-groups:show to be performed.")
            );
            let r = at(&c, "2.64", Method::DELETE, &one, &alt, None).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN);
            let missing = format!("{GROUPS}/{}", uuid::Uuid::new_v4());
            let r = at(&c, "2.64", Method::GET, &missing, &demo, None).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND);
            assert!(message(&r).starts_with("Instance group "), "{}", r.text());
            // A reader may look but not create.
            assert_eq!(
                at(&c, "2.1", Method::POST, GROUPS, &reader, Some(body.clone())).await.status,
                StatusCode::FORBIDDEN
            );

            let rules =
                json!({"server_group": {"name": "h", "policy": "anti-affinity", "rules": {"max_server_per_host": 2}}});
            let r = at(&c, "2.64", Method::POST, GROUPS, &alt, Some(rules)).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_eq!(r.json()["server_group"]["rules"], json!({"max_server_per_host": 2}));

            // Each project lists its own; all_projects is the admin's, and ignored for others.
            let count = |r: Reply| r.json()["server_groups"].as_array().map(Vec::len);
            assert_eq!(count(at(&c, "2.1", Method::GET, GROUPS, &demo, None).await), Some(1));
            assert_eq!(
                count(at(&c, "2.1", Method::GET, &format!("{GROUPS}?all_projects=1"), &demo, None).await),
                Some(1)
            );
            assert_eq!(
                count(at(&c, "2.1", Method::GET, &format!("{GROUPS}?all_projects=1"), &admin, None).await),
                Some(2)
            );
            assert_eq!(
                count(
                    at(&c, "2.1", Method::GET, &format!("{GROUPS}?all_projects&limit=1&offset=1"), &admin, None).await
                ),
                Some(1)
            );
            assert_eq!(count(at(&c, "2.1", Method::GET, GROUPS, &admin, None).await), Some(0));
            let r = at(&c, "2.1", Method::GET, &format!("{GROUPS}?limit=-1"), &demo, None).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST);
            // Unknown query parameters: ignored before 2.75, refused from it.
            assert_eq!(at(&c, "2.74", Method::GET, &format!("{GROUPS}?x=1"), &demo, None).await.status, StatusCode::OK);
            let r = at(&c, "2.75", Method::GET, &format!("{GROUPS}?x=1"), &demo, None).await;
            assert_eq!(
                (r.status, message(&r).as_str()),
                (StatusCode::BAD_REQUEST, "Additional properties are not allowed ('x' was unexpected)")
            );

            let r = at(&c, "2.1", Method::DELETE, &one, &demo, None).await;
            assert_eq!(r.status, StatusCode::NO_CONTENT);
            assert_eq!(at(&c, "2.1", Method::GET, &one, &demo, None).await.status, StatusCode::NOT_FOUND);
            assert_eq!(at(&c, "2.1", Method::DELETE, &one, &demo, None).await.status, StatusCode::NOT_FOUND);
        }

        #[tokio::test]
        async fn the_group_quota_holds_and_limits_count_the_groups() {
            let c = Cloud::new();
            let (admin, demo) = (c.token("admin").await, c.token("demo").await);
            let uri = format!("/compute/v2.1/os-quota-sets/{}", c.demo_project);
            assert_eq!(c.put(&uri, &admin, json!({"quota_set": {"server_groups": 1}})).await.status, StatusCode::OK);
            let body = json!({"server_group": {"name": "g", "policies": ["affinity"]}});
            assert_eq!(at(&c, "2.1", Method::POST, GROUPS, &demo, Some(body.clone())).await.status, StatusCode::OK);
            let r = at(&c, "2.1", Method::POST, GROUPS, &demo, Some(body)).await;
            assert_eq!(
                (r.status, message(&r).as_str()),
                (StatusCode::FORBIDDEN, "Quota exceeded, too many server groups.")
            );
            let r = c.get("/compute/v2.1/limits", &demo).await;
            assert_eq!(r.json()["limits"]["absolute"]["totalServerGroupsUsed"], json!(1));
            assert_eq!(r.json()["limits"]["absolute"]["maxServerGroups"], json!(1));
            let r = c.get(&format!("{uri}/detail"), &admin).await;
            assert_eq!(r.json()["quota_set"]["server_groups"]["in_use"], json!(1), "{}", r.text());
        }

        #[tokio::test]
        async fn the_group_hint_makes_members_within_their_quota() {
            let c = Cloud::new().with_bus(Arc::new(SinkBus));
            let (admin, demo, alt) = (c.token("admin").await, c.token("demo").await, c.token("alt").await);
            let src = c.state.home.root().join("disk.src");
            std::fs::write(&src, b"image bytes").unwrap();
            let db = c.state.db.clone();
            let img = db
                .with(|db| {
                    crate::images::import_file(
                        db,
                        &c.state.home,
                        &src,
                        "disk",
                        "raw",
                        "bare",
                        &Default::default(),
                        "public",
                        &c.admin_project,
                    )
                })
                .unwrap()
                .id;
            let r = at(
                &c,
                "2.15",
                Method::POST,
                GROUPS,
                &demo,
                Some(json!({"server_group": {"name": "g", "policies": ["soft-affinity"]}})),
            )
            .await;
            let group = r.json()["server_group"]["id"].as_str().unwrap().to_string();
            let boot = |hint: Value| json!({"server": {"name": "vm", "imageRef": img, "flavorRef": "1"}, "os:scheduler_hints": hint});

            let r = at(&c, "2.71", Method::POST, "/compute/v2.1/servers", &demo, Some(json!({"server": {"name": "vm", "imageRef": img, "flavorRef": "1", "networks": "none"}, "os:scheduler_hints": {"group": group}}))).await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
            let member = r.json()["server"]["id"].as_str().unwrap().to_string();
            let r = at(&c, "2.71", Method::GET, &format!("/compute/v2.1/servers/{member}"), &demo, None).await;
            assert_eq!(r.json()["server"]["server_groups"], json!([group]));
            let r = at(&c, "2.70", Method::GET, &format!("/compute/v2.1/servers/{member}"), &demo, None).await;
            assert!(r.json()["server"].get("server_groups").is_none(), "2.71 added it");
            let r = at(&c, "2.1", Method::GET, &format!("{GROUPS}/{group}"), &demo, None).await;
            assert_eq!(r.json()["server_group"]["members"], json!([member]));

            // The hint's form, the group's existence and its owner are checked before anything is made.
            let r = c.post("/compute/v2.1/servers", &demo, boot(json!({"group": "not-a-uuid"}))).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
            let r = c.post("/compute/v2.1/servers", &alt, boot(json!({"group": group}))).await;
            assert_eq!(
                (r.status, message(&r)),
                (StatusCode::BAD_REQUEST, format!("Instance group {group} could not be found."))
            );

            let uri = format!("/compute/v2.1/os-quota-sets/{}", c.demo_project);
            assert_eq!(
                c.put(&uri, &admin, json!({"quota_set": {"server_group_members": 1}})).await.status,
                StatusCode::OK
            );
            let r = c.post("/compute/v2.1/servers", &demo, boot(json!({"group": [group]}))).await;
            assert_eq!(
                (r.status, message(&r).as_str()),
                (StatusCode::FORBIDDEN, "Quota exceeded, too many servers in group")
            );
            let r = c.get("/compute/v2.1/servers", &demo).await;
            assert_eq!(r.json()["servers"].as_array().map(Vec::len), Some(1), "the refused boot made nothing");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_creates_cannot_pass_the_group_quota_together() {
            let c = Cloud::new();
            let (admin, demo) = (c.token("admin").await, c.token("demo").await);
            let uri = format!("/compute/v2.1/os-quota-sets/{}", c.demo_project);
            assert_eq!(c.put(&uri, &admin, json!({"quota_set": {"server_groups": 3}})).await.status, StatusCode::OK);
            let creates = (0..12).map(|i| {
                let body = json!({"server_group": {"name": format!("g{i}"), "policies": ["affinity"]}});
                at(&c, "2.1", Method::POST, GROUPS, &demo, Some(body))
            });
            let replies = futures_util::future::join_all(creates).await;
            let made = replies.iter().filter(|r| r.status == StatusCode::OK).count();
            let refused = replies.iter().filter(|r| r.status == StatusCode::FORBIDDEN).count();
            assert_eq!((made, refused), (3, 9), "{:?}", replies.iter().map(Reply::text).collect::<Vec<_>>());
            let r = at(&c, "2.1", Method::GET, GROUPS, &demo, None).await;
            assert_eq!(r.json()["server_groups"].as_array().map(Vec::len), Some(3));
        }
    }
}
