//! nova's host aggregates (`os-aggregates`) and the availability zones they define: an
//! aggregate whose metadata has `availability_zone` puts its hosts in that zone; a host in no
//! such aggregate is in the default zone (`[host] availability_zone`, nova's
//! `default_availability_zone`).

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Map, Value};

use super::microversion::Microversion;
use super::parse_body;
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::AppState;
use crate::db::aggregates::{Aggregate, AZ_KEY};
use crate::db::Db;
use crate::policy::{Action, Target};

/// nova's zone of the services that are not compute services.
pub const INTERNAL_ZONE: &str = "internal";

pub use crate::db::aggregates::Zones;

fn authorize(auth: &Auth, policy: &'static str) -> ApiResult<()> {
    auth.authorize(Action::ComputeAggregates(policy), &Target::default())
}

/// nova's timestamps of API database rows: no zone suffix, microseconds.
fn nova_time(ts: Option<&str>) -> Value {
    ts.map_or(Value::Null, |t| json!(format!("{}.000000", t.trim_end_matches('Z'))))
}

fn aggregate_json(a: &Aggregate, v: Microversion, full: bool) -> Value {
    let mut o = json!({
        "id": a.id,
        "name": a.name,
        "availability_zone": a.availability_zone(),
        "created_at": nova_time(Some(&a.created_at)),
        "updated_at": nova_time(a.updated_at.as_deref()),
        "deleted_at": null,
        "deleted": false,
    });
    if full {
        o["hosts"] = json!(a.hosts);
        o["metadata"] = json!(a.metadata);
    }
    if v.at_least(41) {
        o["uuid"] = json!(a.uuid);
    }
    o
}

/// The path's id: nova's aggregates are addressed by their integer id at every microversion.
fn find(db: &Db, id: &str) -> ApiResult<Aggregate> {
    let n: i64 = id.parse().map_err(|_| ApiError::bad_request("Invalid input received: id must be an integer"))?;
    db.aggregate(n)?.ok_or_else(|| ApiError::not_found(format!("Aggregate {id} could not be found.")))
}

/// nova's `parameter_types.name`: 1 to 255 characters, no leading or trailing whitespace.
fn valid_name(field: &str, v: &Value) -> ApiResult<String> {
    let bad = || ApiError::bad_request(format!("Invalid input for field/attribute {field}. Value: {v}."));
    let s = v.as_str().ok_or_else(bad)?;
    if s.is_empty() || s.chars().count() > 255 || s.trim() != s {
        return Err(bad());
    }
    Ok(s.to_string())
}

/// The zone an availability_zone field or metadata value names; null is none.
fn valid_zone(v: &Value) -> ApiResult<Option<String>> {
    match v {
        Value::Null => Ok(None),
        other => valid_name("availability_zone", other).map(Some),
    }
}

/// Which of nova's "Cannot ... aggregate" refusals an AZ clash is reported as.
#[derive(Clone, Copy)]
enum Doing {
    Add,
    Update,
    UpdateMeta,
}

fn invalid_action(doing: Doing, id: i64, reason: &str) -> ApiError {
    ApiError::bad_request(match doing {
        Doing::Add => format!("Cannot add host to aggregate {id}. Reason: {reason}."),
        Doing::Update => format!("Cannot update aggregate {id}. Reason: {reason}."),
        Doing::UpdateMeta => format!("Cannot update metadata of aggregate {id}. Reason: {reason}."),
    })
}

/// nova's `is_safe_to_update_az`: a host is in one zone only, so `zone` may not go to hosts
/// that another aggregate puts in a different zone.
fn check_zone(db: &Db, agg: &Aggregate, zone: &str, hosts: &[String], doing: Doing) -> ApiResult<()> {
    if zone.is_empty() {
        return Err(invalid_action(
            doing,
            agg.id,
            &format!("Aggregate {} does not support empty named availability zone", agg.name),
        ));
    }
    let mut conflicting: Vec<String> = Vec::new();
    for other in db.aggregates()?.iter().filter(|o| o.id != agg.id) {
        if let Some(z) = other.availability_zone().filter(|z| *z != zone) {
            if other.hosts.iter().any(|h| hosts.contains(h)) && !conflicting.iter().any(|c| c == z) {
                conflicting.push(z.to_string());
            }
        }
    }
    if !conflicting.is_empty() {
        let list = conflicting.iter().map(|z| format!("'{z}'")).collect::<Vec<_>>().join(", ");
        return Err(invalid_action(
            doing,
            agg.id,
            &format!("One or more hosts already in availability zone(s) [{list}]"),
        ));
    }
    Ok(())
}

fn body_object<'a>(body: &'a Value, key: &str) -> ApiResult<&'a Map<String, Value>> {
    body.get(key).and_then(Value::as_object).ok_or_else(|| {
        ApiError::bad_request(format!("Invalid input for field/attribute {key}. '{key}' is a required property"))
    })
}

fn only_keys(o: &Map<String, Value>, allowed: &[&str]) -> ApiResult<()> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad_request(format!("Additional properties are not allowed ('{k}' was unexpected)"))),
        None => Ok(()),
    }
}

pub async fn list(State(state): State<AppState>, auth: Auth, v: Microversion) -> ApiResult<Json<Value>> {
    authorize(&auth, "os_compute_api:os-aggregates:index")?;
    let list = state.db.with(|db| db.aggregates())?;
    Ok(Json(json!({"aggregates": list.iter().map(|a| aggregate_json(a, v, true)).collect::<Vec<_>>()})))
}

pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    authorize(&auth, "os_compute_api:os-aggregates:create")?;
    let (body, _) = parse_body::<Value>(body)?;
    let o = body_object(&body, "aggregate")?;
    only_keys(o, &["name", "availability_zone"])?;
    let name = valid_name("name", o.get("name").unwrap_or(&Value::Null))?;
    let zone = valid_zone(o.get("availability_zone").unwrap_or(&Value::Null))?;
    let agg = state.db.tx(|db| db.create_aggregate(&name, zone.as_deref()))?;
    // nova's create answers without hosts and metadata, as it did before aggregates were objects.
    Ok(Json(json!({"aggregate": aggregate_json(&agg, v, false)})))
}

pub async fn show(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    authorize(&auth, "os_compute_api:os-aggregates:show")?;
    let agg = state.db.with(|db| find(db, &id))?;
    Ok(Json(json!({"aggregate": aggregate_json(&agg, v, true)})))
}

pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    authorize(&auth, "os_compute_api:os-aggregates:update")?;
    let (body, _) = parse_body::<Value>(body)?;
    let o = body_object(&body, "aggregate")?;
    only_keys(o, &["name", "availability_zone"])?;
    if o.is_empty() {
        return Err(ApiError::bad_request(
            "Invalid input for field/attribute aggregate. {} does not have enough properties",
        ));
    }
    let name = o.get("name").map(|n| valid_name("name", n)).transpose()?;
    let zone = o.get("availability_zone").map(valid_zone).transpose()?;
    let agg = state.db.tx(|db| -> ApiResult<Aggregate> {
        let agg = find(db, &id)?;
        if let Some(name) = &name {
            db.rename_aggregate(agg.id, name)?;
        }
        match &zone {
            Some(Some(z)) => {
                check_zone(db, &agg, z, &agg.hosts, Doing::Update)?;
                db.set_aggregate_metadata(agg.id, &[(AZ_KEY.into(), Some(z.clone()))])?;
            }
            Some(None) => db.set_aggregate_metadata(agg.id, &[(AZ_KEY.into(), None)])?,
            None => {}
        }
        find(db, &id)
    })?;
    Ok(Json(json!({"aggregate": aggregate_json(&agg, v, true)})))
}

/// DELETE answers 200 with no body, as nova's.
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<axum::http::StatusCode> {
    authorize(&auth, "os_compute_api:os-aggregates:delete")?;
    state.db.tx(|db| -> ApiResult<()> {
        let agg = find(db, &id)?;
        if !agg.hosts.is_empty() {
            // nova's InvalidAggregateActionDelete, worded as its remove-host sibling.
            return Err(ApiError::bad_request(format!(
                "Cannot remove host from aggregate {}. Reason: Host aggregate is not empty.",
                agg.id
            )));
        }
        db.delete_aggregate(agg.id)?;
        Ok(())
    })?;
    Ok(axum::http::StatusCode::OK)
}

/// POST /os-aggregates/{id}/action: `add_host`, `remove_host`, `set_metadata`.
pub async fn action(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let (body, _) = parse_body::<Value>(body)?;
    let Some((name, args)) = body.as_object().and_then(|o| if o.len() == 1 { o.iter().next() } else { None }) else {
        return Err(ApiError::bad_request("Invalid request body: name exactly one action."));
    };
    let agg = match name.as_str() {
        "add_host" | "remove_host" => {
            let adding = name == "add_host";
            authorize(
                &auth,
                if adding {
                    "os_compute_api:os-aggregates:add_host"
                } else {
                    "os_compute_api:os-aggregates:remove_host"
                },
            )?;
            let o = body_object(&body, name)?;
            only_keys(o, &["host"])?;
            let host = valid_name("host", o.get("host").unwrap_or(&Value::Null))?;
            state.db.tx(|db| -> ApiResult<Aggregate> {
                let agg = find(db, &id)?;
                let known = db.services()?.iter().any(|s| s.binary == crate::compute::BINARY && s.host == host);
                if !known {
                    return Err(ApiError::not_found(format!("Compute host {host} could not be found.")));
                }
                if adding {
                    if let Some(z) = agg.availability_zone() {
                        check_zone(db, &agg, z, std::slice::from_ref(&host), Doing::Add)?;
                    }
                    if !db.add_aggregate_host(agg.id, &host)? {
                        return Err(ApiError::conflict(format!("Aggregate {} already has host {host}.", agg.id)));
                    }
                } else if !db.remove_aggregate_host(agg.id, &host)? {
                    return Err(ApiError::not_found(format!("Aggregate {} has no host {host}.", agg.id)));
                }
                find(db, &id)
            })?
        }
        "set_metadata" => {
            authorize(&auth, "os_compute_api:os-aggregates:set_metadata")?;
            let o = body_object(&body, name)?;
            only_keys(o, &["metadata"])?;
            let meta = body_object(args, "metadata")?;
            let mut changes = Vec::new();
            for (k, val) in meta {
                // nova's metadata key pattern: letters, digits and `-_:. `, 1 to 255 of them.
                let allowed = |c: char| c.is_ascii_alphanumeric() || "-_:. ".contains(c);
                if k.is_empty() || k.chars().count() > 255 || !k.chars().all(allowed) {
                    return Err(ApiError::bad_request(format!(
                        "Invalid input for field/attribute metadata. Key: {k}."
                    )));
                }
                let val = match val {
                    Value::Null => None,
                    Value::String(s) if s.chars().count() <= 255 => Some(s.clone()),
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "Invalid input for field/attribute {k}. Value: {other}."
                        )))
                    }
                };
                changes.push((k.clone(), val));
            }
            state.db.tx(|db| -> ApiResult<Aggregate> {
                let agg = find(db, &id)?;
                if let Some((_, Some(z))) = changes.iter().find(|(k, _)| k == AZ_KEY) {
                    check_zone(db, &agg, z, &agg.hosts, Doing::UpdateMeta)?;
                }
                db.set_aggregate_metadata(agg.id, &changes)?;
                find(db, &id)
            })?
        }
        other => return Err(ApiError::bad_request(format!("There is no such action: {other}"))),
    };
    Ok(Json(json!({"aggregate": aggregate_json(&agg, v, true)})))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use serde_json::{json, Value};

    use crate::api::testing::{Cloud, Reply};

    async fn at(c: &Cloud, method: Method, uri: &str, token: &str, version: &str, body: Option<Value>) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(format!("/compute/v2.1{uri}"))
            .header("x-auth-token", token)
            .header("openstack-api-version", format!("compute {version}"))
            .header("content-type", "application/json");
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        c.send(req.body(body).unwrap()).await
    }

    fn message(r: &Reply) -> String {
        let v = r.json();
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|e| e["message"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    fn compute_hosts(c: &Cloud, hosts: &[&str]) {
        for h in hosts {
            c.state.db.with(|db| db.service_heartbeat(h, crate::compute::BINARY, &format!("compute.{h}"))).unwrap();
        }
    }

    #[tokio::test]
    async fn aggregates_are_admin_only_and_answer_novas_codes_and_texts() {
        let c = Cloud::new();
        compute_hosts(&c, &["h1", "h2"]);
        let (demo, admin) = (c.token("demo").await, c.token("admin").await);

        let r = at(&c, Method::GET, "/os-aggregates", &demo, "2.1", None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(message(&r), "Policy doesn't allow os_compute_api:os-aggregates:index to be performed.");
        let body = json!({"aggregate": {"name": "rack1", "availability_zone": "az1"}});
        let r = at(&c, Method::POST, "/os-aggregates", &demo, "2.1", Some(body.clone())).await;
        assert_eq!(message(&r), "Policy doesn't allow os_compute_api:os-aggregates:create to be performed.");

        // Create answers without hosts and metadata; 2.41 adds the uuid.
        let r = at(&c, Method::POST, "/os-aggregates", &admin, "2.40", Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let a = r.json()["aggregate"].clone();
        assert_eq!((a["name"].as_str(), a["availability_zone"].as_str()), (Some("rack1"), Some("az1")));
        for k in ["hosts", "metadata", "uuid"] {
            assert!(a.get(k).is_none(), "{k} in {a}");
        }
        let id = a["id"].as_i64().unwrap();
        let r = at(&c, Method::POST, "/os-aggregates", &admin, "2.41", Some(body)).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(message(&r), "Aggregate rack1 already exists.");
        for bad in [
            json!({"aggregate": {"name": ""}}),
            json!({"aggregate": {"name": " x"}}),
            json!({"aggregate": {}}),
            json!({"aggregate": {"name": "x", "zone": "a"}}),
            json!({"name": "x"}),
        ] {
            let r = at(&c, Method::POST, "/os-aggregates", &admin, "2.41", Some(bad.clone())).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
        }
        let r = at(&c, Method::GET, &format!("/os-aggregates/{id}"), &admin, "2.41", None).await;
        let a = r.json()["aggregate"].clone();
        assert!(a["uuid"].is_string(), "{a}");
        assert_eq!(a["metadata"], json!({"availability_zone": "az1"}));
        assert_eq!(a["hosts"], json!([]));
        let r = at(&c, Method::GET, "/os-aggregates/999", &admin, "2.41", None).await;
        assert_eq!((r.status, message(&r).as_str()), (StatusCode::NOT_FOUND, "Aggregate 999 could not be found."));

        // Hosts: unknown ones 404, twice 409, missing on remove 404.
        let action_url = format!("/os-aggregates/{id}/action");
        let act = |b: Value| at(&c, Method::POST, &action_url, &admin, "2.41", Some(b));
        let r = act(json!({"add_host": {"host": "nowhere"}})).await;
        assert_eq!(
            (r.status, message(&r).as_str()),
            (StatusCode::NOT_FOUND, "Compute host nowhere could not be found.")
        );
        let r = act(json!({"add_host": {"host": "h1"}})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["aggregate"]["hosts"], json!(["h1"]));
        let r = act(json!({"add_host": {"host": "h1"}})).await;
        assert_eq!((r.status, message(&r)), (StatusCode::CONFLICT, format!("Aggregate {id} already has host h1.")));
        let r = act(json!({"remove_host": {"host": "h2"}})).await;
        assert_eq!((r.status, message(&r)), (StatusCode::NOT_FOUND, format!("Aggregate {id} has no host h2.")));

        // A host is in one zone: another aggregate with another zone cannot take h1.
        let r = at(
            &c,
            Method::POST,
            "/os-aggregates",
            &admin,
            "2.41",
            Some(json!({"aggregate": {"name": "rack2", "availability_zone": "az2"}})),
        )
        .await;
        let other = r.json()["aggregate"]["id"].as_i64().unwrap();
        let url = format!("/os-aggregates/{other}/action");
        let r = at(&c, Method::POST, &url, &admin, "2.41", Some(json!({"add_host": {"host": "h1"}}))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert_eq!(message(&r), format!("Cannot add host to aggregate {other}. Reason: One or more hosts already in availability zone(s) ['az1']."));
        // A plain aggregate (no zone) may share h1, but then cannot become another zone.
        let r =
            at(&c, Method::POST, "/os-aggregates", &admin, "2.41", Some(json!({"aggregate": {"name": "ssd"}}))).await;
        let plain = r.json()["aggregate"]["id"].as_i64().unwrap();
        let url = format!("/os-aggregates/{plain}/action");
        let r = at(&c, Method::POST, &url, &admin, "2.41", Some(json!({"add_host": {"host": "h1"}}))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let r = at(
            &c,
            Method::POST,
            &url,
            &admin,
            "2.41",
            Some(json!({"set_metadata": {"metadata": {"availability_zone": "az9", "ssd": "yes"}}})),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert!(
            message(&r).starts_with(&format!("Cannot update metadata of aggregate {plain}. Reason:")),
            "{}",
            r.text()
        );
        let r = at(
            &c,
            Method::PUT,
            &format!("/os-aggregates/{plain}"),
            &admin,
            "2.41",
            Some(json!({"aggregate": {"availability_zone": "az9"}})),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert!(message(&r).starts_with(&format!("Cannot update aggregate {plain}. Reason:")), "{}", r.text());
        let r = at(
            &c,
            Method::PUT,
            &format!("/os-aggregates/{plain}"),
            &admin,
            "2.41",
            Some(json!({"aggregate": {"name": "rack1"}})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
        // set_metadata: a null value removes the key.
        let r = at(
            &c,
            Method::POST,
            &url,
            &admin,
            "2.41",
            Some(json!({"set_metadata": {"metadata": {"ssd": "yes", "raid": "1"}}})),
        )
        .await;
        assert_eq!(r.json()["aggregate"]["metadata"], json!({"ssd": "yes", "raid": "1"}));
        let r = at(&c, Method::POST, &url, &admin, "2.41", Some(json!({"set_metadata": {"metadata": {"raid": null}}})))
            .await;
        assert_eq!(r.json()["aggregate"]["metadata"], json!({"ssd": "yes"}));
        for bad in [json!({"a/b": "x"}), json!({"": "x"}), json!({"k": 5}), json!({"k": "x".repeat(256)})] {
            let body = json!({"set_metadata": {"metadata": bad.clone()}});
            let r = at(&c, Method::POST, &url, &admin, "2.41", Some(body)).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
        }

        // The zones follow: h1 in az1, h2 in the default zone, the other services internal.
        let r = at(&c, Method::GET, "/os-availability-zone", &demo, "2.1", None).await;
        let zones = r.json()["availabilityZoneInfo"].clone();
        assert_eq!(zones.as_array().map(Vec::len), Some(2), "{zones}");
        assert!(zones.as_array().unwrap().iter().any(|z| z["zoneName"] == "az1" && z["hosts"].is_null()), "{zones}");
        assert!(zones.as_array().unwrap().iter().any(|z| z["zoneName"] == "nova"), "{zones}");
        let r = at(&c, Method::GET, "/os-availability-zone/detail", &admin, "2.1", None).await;
        let zones = r.json()["availabilityZoneInfo"].clone();
        let zone =
            |name: &str| zones.as_array().unwrap().iter().find(|z| z["zoneName"] == name).cloned().unwrap_or_default();
        assert!(zone("az1")["hosts"]["h1"]["nova-compute"].is_object(), "{zones}");
        assert!(zone("nova")["hosts"]["h2"]["nova-compute"].is_object(), "{zones}");
        let r = at(&c, Method::GET, "/os-services", &admin, "2.53", None).await;
        let h1 = r.json()["services"].as_array().unwrap().iter().find(|s| s["host"] == "h1").cloned().unwrap();
        assert_eq!(h1["zone"], "az1");

        // Delete: not while it has hosts (nova's wording), then 200 with no body.
        let r = at(&c, Method::DELETE, &format!("/os-aggregates/{id}"), &admin, "2.41", None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            message(&r),
            format!("Cannot remove host from aggregate {id}. Reason: Host aggregate is not empty.")
        );
        let r = act(json!({"remove_host": {"host": "h1"}})).await;
        assert_eq!(r.json()["aggregate"]["hosts"], json!([]));
        let r = at(&c, Method::DELETE, &format!("/os-aggregates/{id}"), &admin, "2.41", None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(r.text().is_empty(), "{}", r.text());
        let r = at(&c, Method::GET, "/os-aggregates", &admin, "2.41", None).await;
        assert_eq!(r.json()["aggregates"].as_array().map(Vec::len), Some(2));
    }
}
