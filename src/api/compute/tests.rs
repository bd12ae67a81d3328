//! What a hostile tenant tried against the compute API (issue 14), through the real router
//! over a real database: each test is one attack, answered as nova answers it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::api::hostile_input::SinkBus;
use crate::api::testing::{Cloud, Reply};

/// A cloud whose builds are accepted and go nowhere (no scheduler runs here).
fn cloud() -> Cloud {
    Cloud::new().with_bus(Arc::new(SinkBus))
}

async fn call_at(c: &Cloud, version: &str, method: Method, uri: &str, token: &str, body: Option<Value>) -> Reply {
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

/// An active image owned by `owner`, with `properties`.
fn image(c: &Cloud, name: &str, format: &str, owner: &str, visibility: &str, properties: &[(&str, &str)]) -> String {
    let src = c.state.home.root().join(format!("{name}.src"));
    std::fs::write(&src, b"image bytes").unwrap();
    let props: BTreeMap<String, String> = properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let db = c.state.db.clone();
    db.with(|db| crate::images::import_file(db, &c.state.home, &src, name, format, format, &props, visibility, owner))
        .unwrap()
        .id
}

fn boot(image: &str, flavor: &str) -> Value {
    // No `networks`: these calls speak 2.1, where it is optional.
    json!({"server": {"name": "vm", "imageRef": image, "flavorRef": flavor}})
}

fn message(r: &Reply) -> String {
    let body = r.json();
    body.as_object().and_then(|o| o.values().next()).and_then(|f| f["message"].as_str()).unwrap_or_default().into()
}

#[tokio::test]
async fn another_projects_private_ramdisk_never_boots() {
    let c = cloud();
    let alt = c.token("alt").await;
    let kernel = image(&c, "kernel", "aki", &c.admin_project, "public", &[]);
    let secret = image(&c, "demo-ramdisk", "ari", &c.demo_project, "private", &[]);
    let own = image(&c, "alt-ramdisk", "ari", &c.alt_project, "private", &[]);
    let stolen =
        image(&c, "alt-ami", "ami", &c.alt_project, "private", &[("kernel_id", &kernel), ("ramdisk_id", &secret)]);
    let r = c.post("/compute/v2.1/servers", &alt, boot(&stolen, "1")).await;
    assert_eq!((r.status, message(&r).as_str()), (StatusCode::BAD_REQUEST, "Can not find requested image"));
    let r = c.get("/compute/v2.1/servers", &alt).await;
    assert_eq!(r.json()["servers"].as_array().map(Vec::len), Some(0), "nothing was created: {}", r.text());
    // A kernel of another project's is refused the same way; the owner's own links boot.
    let k2 = image(&c, "alt-ami-2", "ami", &c.alt_project, "private", &[("kernel_id", &secret)]);
    assert_eq!(c.post("/compute/v2.1/servers", &alt, boot(&k2, "1")).await.status, StatusCode::BAD_REQUEST);
    let fine =
        image(&c, "alt-ami-3", "ami", &c.alt_project, "private", &[("kernel_id", &kernel), ("ramdisk_id", &own)]);
    let r = c.post("/compute/v2.1/servers", &alt, boot(&fine, "1")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
}

#[tokio::test]
async fn flavor_fields_are_bounded_and_usage_cannot_overflow() {
    let c = cloud();
    let admin = c.token("admin").await;
    let base = json!({"name": "f", "ram": 64, "vcpus": 1, "disk": 1});
    for (field, value) in [
        ("OS-FLV-EXT-DATA:ephemeral", json!(9223372036854775807i64)),
        ("swap", json!(9223372036854775807i64)),
        ("swap", json!(-1)),
        ("ram", json!(0)),
        ("vcpus", json!(2147483648i64)),
        ("disk", json!("lots")),
        ("rxtx_factor", json!(0)),
        ("id", json!(" padded")),
        ("name", json!("nul\u{0}name")),
    ] {
        let mut body = base.clone();
        body[field] = value.clone();
        let r = c.post("/compute/v2.1/flavors", &admin, json!({ "flavor": body })).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}={value}: {}", r.text());
    }
    let r = c
        .post(
            "/compute/v2.1/flavors",
            &admin,
            json!({"flavor": {"name": "edge", "ram": 2147483647, "vcpus": 1,
        "disk": 0, "OS-FLV-EXT-DATA:ephemeral": 2147483647, "swap": 2147483647, "id": "edge"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "the largest values nova takes: {}", r.text());
}

#[tokio::test]
async fn a_flavor_that_was_used_can_be_deleted_and_its_servers_keep_it() {
    let c = cloud();
    let (admin, demo) = (c.token("admin").await, c.token("demo").await);
    let img = image(&c, "disk", "raw", &c.admin_project, "public", &[]);
    let flavor = json!({"flavor": {"name": "short-lived", "ram": 96, "vcpus": 1, "disk": 1, "swap": 32, "id": "gone"}});
    let r = c.post("/compute/v2.1/flavors", &admin, flavor).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = c.post("/compute/v2.1/servers", &demo, boot(&img, "gone")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let kept = r.json()["server"]["id"].as_str().unwrap().to_string();
    let r = c.post("/compute/v2.1/servers", &demo, boot(&img, "gone")).await;
    let deleted = r.json()["server"]["id"].as_str().unwrap().to_string();
    assert_eq!(c.delete(&format!("/compute/v2.1/servers/{deleted}"), &demo).await.status, StatusCode::NO_CONTENT);

    let r = c.delete("/compute/v2.1/flavors/gone", &admin).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(c.get("/compute/v2.1/flavors/gone", &admin).await.status, StatusCode::NOT_FOUND);
    let show = format!("/compute/v2.1/servers/{kept}");
    let r = call_at(&c, "2.47", Method::GET, &show, &demo, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let f = &r.json()["server"]["flavor"];
    assert_eq!(
        (f["original_name"].as_str(), f["ram"].as_i64(), f["swap"].as_i64()),
        (Some("short-lived"), Some(96), Some(32))
    );
    let r = c.get(&show, &demo).await;
    assert_eq!(r.json()["server"]["flavor"]["id"], "gone", "{}", r.text());
    // The id is free again, for a new flavor that has nothing to do with the old servers.
    let again = json!({"flavor": {"name": "short-lived", "ram": 128, "vcpus": 2, "disk": 1, "id": "gone"}});
    assert_eq!(c.post("/compute/v2.1/flavors", &admin, again).await.status, StatusCode::OK);
    let r = call_at(&c, "2.47", Method::GET, &show, &demo, None).await;
    assert_eq!(r.json()["server"]["flavor"]["ram"], 96);
}

#[tokio::test]
async fn key_pair_and_metadata_quotas_are_enforced() {
    let c = cloud();
    let (admin, demo) = (c.token("admin").await, c.token("demo").await);
    let public = super::keypairs::generate("quota").unwrap().0;
    let key = |name: String| json!({"keypair": {"name": name, "public_key": public}});
    for i in 0..100 {
        let r = c.post("/compute/v2.1/os-keypairs", &demo, key(format!("k{i}"))).await;
        assert_eq!(r.status, StatusCode::OK, "key {i}: {}", r.text());
    }
    let r = c.post("/compute/v2.1/os-keypairs", &demo, key("k100".into())).await;
    assert_eq!((r.status, message(&r).as_str()), (StatusCode::FORBIDDEN, "Quota exceeded, too many key pairs."));
    assert_eq!(c.get("/compute/v2.1/os-keypairs", &demo).await.json()["keypairs"].as_array().map(Vec::len), Some(100));
    // The quota is the project's, for an admin to raise.
    let uri = format!("/compute/v2.1/os-quota-sets/{}", c.demo_project);
    assert_eq!(c.put(&uri, &admin, json!({"quota_set": {"key_pairs": 101}})).await.status, StatusCode::OK);
    assert_eq!(c.post("/compute/v2.1/os-keypairs", &demo, key("k100".into())).await.status, StatusCode::OK);

    let img = image(&c, "disk", "raw", &c.admin_project, "public", &[]);
    let meta = |n: usize| -> Value { Value::Object((0..n).map(|i| (format!("m{i}"), json!("v"))).collect()) };
    let mut body = boot(&img, "1");
    body["server"]["metadata"] = meta(129);
    let r = c.post("/compute/v2.1/servers", &demo, body.clone()).await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (StatusCode::FORBIDDEN, "Maximum number of metadata items exceeds 128")
    );
    body["server"]["metadata"] = meta(128);
    assert_eq!(c.post("/compute/v2.1/servers", &demo, body).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn forcing_or_requesting_a_host_is_for_admins() {
    let c = cloud();
    let (admin, demo) = (c.token("admin").await, c.token("demo").await);
    let img = image(&c, "disk", "raw", &c.admin_project, "public", &[]);
    let forced = "Policy doesn't allow os_compute_api:servers:create:forced_host to be performed.";
    let mut by_zone = boot(&img, "1");
    by_zone["server"]["availability_zone"] = json!("nova:some-host");
    let r = c.post("/compute/v2.1/servers", &demo, by_zone.clone()).await;
    assert_eq!((r.status, message(&r).as_str()), (StatusCode::FORBIDDEN, forced));
    let mut by_hint = boot(&img, "1");
    by_hint["os:scheduler_hints"] = json!({"force_host": "some-host"});
    let r = c.post("/compute/v2.1/servers", &demo, by_hint).await;
    assert_eq!((r.status, message(&r).as_str()), (StatusCode::FORBIDDEN, forced));
    let mut by_body = boot(&img, "1");
    by_body["server"]["host"] = json!("some-host");
    by_body["server"]["networks"] = json!("none");
    let r = call_at(&c, "2.73", Method::POST, "/compute/v2.1/servers", &demo, Some(by_body.clone())).await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (StatusCode::BAD_REQUEST, "Additional properties are not allowed ('host' was unexpected)")
    );
    let r = call_at(&c, "2.74", Method::POST, "/compute/v2.1/servers", &demo, Some(by_body.clone())).await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (StatusCode::FORBIDDEN, "Policy doesn't allow compute:servers:create:requested_destination to be performed.")
    );
    // An admin may, for a host that exists; none is registered in this cloud.
    let r = call_at(&c, "2.74", Method::POST, "/compute/v2.1/servers", &admin, Some(by_body)).await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (StatusCode::BAD_REQUEST, "Compute host some-host could not be found.")
    );
    let r = c.post("/compute/v2.1/servers", &admin, by_zone).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = c.get("/compute/v2.1/servers?all_tenants=1", &admin).await;
    assert_eq!(r.json()["servers"].as_array().map(Vec::len), Some(0), "{}", r.text());
}

#[tokio::test]
async fn private_flavors_are_for_admins_and_projects_given_access() {
    let c = cloud();
    let (admin, demo, alt) = (c.token("admin").await, c.token("demo").await, c.token("alt").await);
    let img = image(&c, "disk", "raw", &c.admin_project, "public", &[]);
    let private = json!({"flavor": {"name": "secret", "ram": 64, "vcpus": 1, "disk": 1, "id": "secret",
        "os-flavor-access:is_public": false}});
    let r = c.post("/compute/v2.1/flavors", &admin, private).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let ids = |r: Reply| -> Vec<String> {
        r.json()["flavors"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap().to_string()).collect()
    };
    let secret = "secret".to_string();
    for token in [&demo, &alt] {
        for uri in ["/compute/v2.1/flavors?is_public=none", "/compute/v2.1/flavors/detail?is_public=false"] {
            assert!(!ids(c.get(uri, token).await).contains(&secret), "{uri}");
        }
        assert_eq!(c.get("/compute/v2.1/flavors/secret", token).await.status, StatusCode::NOT_FOUND);
        let r = c.post("/compute/v2.1/servers", token, boot(&img, "secret")).await;
        assert_eq!((r.status, message(&r).as_str()), (StatusCode::BAD_REQUEST, "Flavor secret could not be found."));
    }
    assert!(ids(c.get("/compute/v2.1/flavors?is_public=none", &admin).await).contains(&secret));
    let share = json!({"addTenantAccess": {"tenant": c.demo_project}});
    let r = c.post("/compute/v2.1/flavors/secret/action", &demo, share.clone()).await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (
            StatusCode::FORBIDDEN,
            "Policy doesn't allow os_compute_api:os-flavor-access:add_tenant_access to be performed."
        )
    );
    let r = c.get("/compute/v2.1/flavors/secret/os-flavor-access", &admin).await;
    assert_eq!(r.json()["flavor_access"], json!([]), "{}", r.text());
    let r = c.post("/compute/v2.1/flavors/secret/action", &admin, share).await;
    assert_eq!(r.json()["flavor_access"][0]["tenant_id"], json!(c.demo_project), "{}", r.text());
    assert!(ids(c.get("/compute/v2.1/flavors", &demo).await).contains(&secret));
    assert_eq!(c.get("/compute/v2.1/flavors/secret", &demo).await.status, StatusCode::OK);
    assert_eq!(c.post("/compute/v2.1/servers", &demo, boot(&img, "secret")).await.status, StatusCode::ACCEPTED);
    assert_eq!(c.get("/compute/v2.1/flavors/secret", &alt).await.status, StatusCode::NOT_FOUND);
    let unshare = json!({"removeTenantAccess": {"tenant": c.demo_project}});
    assert_eq!(c.post("/compute/v2.1/flavors/secret/action", &admin, unshare).await.status, StatusCode::OK);
    assert_eq!(c.get("/compute/v2.1/flavors/secret", &demo).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn time_filters_and_names_are_validated() {
    let c = cloud();
    let demo = c.token("demo").await;
    let r = c.get("/compute/v2.1/servers?changes-since=garbage", &demo).await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (
            StatusCode::BAD_REQUEST,
            "Invalid input for query parameters changes-since. Value: garbage. 'garbage' is not a 'date-time'"
        )
    );
    let r = call_at(&c, "2.66", Method::GET, "/compute/v2.1/servers/detail?changes-before=garbage", &demo, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = call_at(&c, "2.65", Method::GET, "/compute/v2.1/servers?changes-before=garbage", &demo, None).await;
    assert_eq!(r.status, StatusCode::OK, "before 2.66 nova ignores changes-before: {}", r.text());
    let uri = "/compute/v2.1/servers?changes-since=2030-01-02T00:00:00Z&changes-before=2030-01-01T00:00:00Z";
    let r = call_at(&c, "2.66", Method::GET, uri, &demo, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = c.get("/compute/v2.1/servers?changes-since=2020-01-01T00:00:00Z", &demo).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let img = image(&c, "disk", "raw", &c.admin_project, "public", &[]);
    let invalid = "An invalid 'name' value was provided. The name must be: printable characters. \
                   Can not start or end with whitespace.";
    for name in ["nul\u{0}byte", " padded", "bell\u{7}"] {
        let mut body = boot(&img, "1");
        body["server"]["name"] = json!(name);
        let r = c.post("/compute/v2.1/servers", &demo, body).await;
        assert_eq!((r.status, message(&r).as_str()), (StatusCode::BAD_REQUEST, invalid), "{name:?}");
        let r = c.post("/compute/v2.1/os-keypairs", &demo, json!({"keypair": {"name": name}})).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "keypair {name:?}: {}", r.text());
    }
    let mut body = boot(&img, "1");
    body["server"]["metadata"] = json!({"k\u{0}": "v"});
    assert_eq!(c.post("/compute/v2.1/servers", &demo, body).await.status, StatusCode::BAD_REQUEST);
    let r = c.post("/compute/v2.1/servers", &demo, boot(&img, "1")).await;
    let id = r.json()["server"]["id"].as_str().unwrap().to_string();
    let r = c.put(&format!("/compute/v2.1/servers/{id}"), &demo, json!({"server": {"name": "x\u{0}"}})).await;
    assert_eq!((r.status, message(&r).as_str()), (StatusCode::BAD_REQUEST, invalid));
    let r = call_at(
        &c,
        "2.19",
        Method::PUT,
        &format!("/compute/v2.1/servers/{id}"),
        &demo,
        Some(json!({"server": {"description": "x\u{0}"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
}

/// The compute API's errors reach the client in nova's fault body, with nova's status and
/// text: body rules at create and on actions, and an action no compute host can take.
#[tokio::test]
async fn the_compute_api_s_refusals_come_back_in_nova_s_words() {
    let c = cloud();
    let demo = c.token("demo").await;
    let img = image(&c, "disk", "raw", &c.admin_project, "public", &[]);
    let mut body = boot(&img, "1");
    body["server"]["flavour"] = json!("1");
    let r = c.post("/compute/v2.1/servers", &demo, body).await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (StatusCode::BAD_REQUEST, "Additional properties are not allowed ('flavour' was unexpected)")
    );
    assert!(r.json()["badRequest"].is_object(), "nova's fault body: {}", r.text());
    let r = c.post("/compute/v2.1/servers", &demo, boot(&img, "1")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.json()["server"]["id"].as_str().unwrap().to_string();
    let action = format!("/compute/v2.1/servers/{id}/action");
    let r = c.post(&action, &demo, json!({"levitate": null})).await;
    assert_eq!((r.status, message(&r).as_str()), (StatusCode::BAD_REQUEST, "There is no such action: levitate"));
    let r = c.post(&action, &demo, json!({"reboot": {"type": "HARD", "force": true}})).await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (StatusCode::BAD_REQUEST, "Additional properties are not allowed ('force' was unexpected)")
    );
    // Never scheduled here (no scheduler runs): no compute host can take a stop.
    let r = c.post(&action, &demo, json!({"os-stop": null})).await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (
            StatusCode::CONFLICT,
            format!("Cannot 'os-stop' instance {id}: its compute service is not available").as_str()
        )
    );
    assert!(r.json()["conflictingRequest"].is_object(), "{}", r.text());
}

#[tokio::test]
async fn flavors_and_keypairs_page_sort_and_link_through_the_one_listing() {
    let c = cloud();
    let (admin, demo) = (c.token("admin").await, c.token("demo").await);
    let r = c.get("/compute/v2.1/flavors", &demo).await;
    assert_eq!(ids_of(&r, "flavors", "id"), ["1", "2", "3", "4", "42", "5"], "nova's default: flavorid ascending");
    let r = c.get("/compute/v2.1/flavors/detail?sort_key=memory_mb&sort_dir=desc&limit=2&minDisk=1", &demo).await;
    assert_eq!(ids_of(&r, "flavors", "name"), ["m1.xlarge", "m1.large"]);
    let next = r.json()["flavors_links"][0]["href"].as_str().unwrap_or_default().to_string();
    assert!(next.ends_with("/compute/v2.1/flavors/detail?sort_key=memory_mb&sort_dir=desc&limit=2&minDisk=1&marker=4"));
    let r = c.get("/compute/v2.1/flavors?marker=42&minRam=64", &demo).await;
    assert_eq!((ids_of(&r, "flavors", "id"), r.json().get("flavors_links").is_none()), (vec!["5".to_string()], true));
    for (query, words) in [
        ("marker=nope", "marker [nope] not found"),
        ("minRam=lots", "Invalid minRam filter [lots]"),
        ("sort_key=bogus", "'bogus' is not one of"),
        ("limit=-1", "does not match"),
    ] {
        let r = c.get(&format!("/compute/v2.1/flavors?{query}"), &demo).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(message(&r).contains(words), "{query}: {}", r.text());
    }

    let public = super::keypairs::generate("paged").unwrap().0;
    for name in ["k3", "k1", "k2"] {
        let body = json!({"keypair": {"name": name, "public_key": public}});
        assert_eq!(c.post("/compute/v2.1/os-keypairs", &demo, body).await.status, StatusCode::OK);
    }
    let r = call_at(&c, "2.35", Method::GET, "/compute/v2.1/os-keypairs?limit=2", &demo, None).await;
    assert_eq!(ids_of(&r, "keypairs", "name"), ["k1", "k2"]);
    assert!(r.json()["keypairs_links"][0]["href"]
        .as_str()
        .is_some_and(|h| h.ends_with("os-keypairs?limit=2&marker=k2")));
    let r = call_at(&c, "2.35", Method::GET, "/compute/v2.1/os-keypairs?marker=k2", &demo, None).await;
    assert_eq!(ids_of(&r, "keypairs", "name"), ["k3"]);
    let r = call_at(&c, "2.35", Method::GET, "/compute/v2.1/os-keypairs?marker=k9", &demo, None).await;
    assert_eq!((r.status, message(&r).as_str()), (StatusCode::BAD_REQUEST, "Marker k9 could not be found."));
    let r = call_at(&c, "2.34", Method::GET, "/compute/v2.1/os-keypairs?limit=1&marker=k9", &demo, None).await;
    assert_eq!(ids_of(&r, "keypairs", "name").len(), 3, "no paging before 2.35");
    let demo_user = call_at(&c, "2.10", Method::GET, "/compute/v2.1/os-keypairs/k1", &demo, None).await.json()
        ["keypair"]["user_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let uri = format!("/compute/v2.1/os-keypairs?user_id={demo_user}");
    let r = call_at(&c, "2.10", Method::GET, &uri, &admin, None).await;
    assert_eq!(ids_of(&r, "keypairs", "name"), ["k1", "k2", "k3"], "an admin lists another user's keypairs");
    let r = call_at(&c, "2.10", Method::GET, "/compute/v2.1/os-keypairs?user_id=someone-else", &demo, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call_at(&c, "2.79", Method::GET, "/compute/v2.1/os-keypairs?bogus=1", &demo, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

fn ids_of(r: &Reply, collection: &str, key: &str) -> Vec<String> {
    let body = r.json();
    let items = body[collection].as_array().cloned().unwrap_or_default();
    items.iter().map(|i| i.get("keypair").unwrap_or(i)[key].as_str().unwrap_or_default().to_string()).collect()
}

/// `PUT /servers/{id}` answers as nova's update view: below 2.75 without the extension keys
/// GET shows (tempest's `update_server` schema refuses them), from 2.75 with all of them.
#[tokio::test]
async fn an_update_shows_the_basic_server_below_2_75_and_everything_from_it() {
    let c = cloud();
    let demo = c.token("demo").await;
    let img = image(&c, "disk", "raw", &c.admin_project, "public", &[]);
    let r = c.post("/compute/v2.1/servers", &demo, boot(&img, "1")).await;
    let id = r.json()["server"]["id"].as_str().unwrap().to_string();
    let uri = format!("/compute/v2.1/servers/{id}");
    let extensions = [
        "OS-EXT-AZ:availability_zone",
        "OS-EXT-STS:vm_state",
        "OS-SRV-USG:launched_at",
        "config_drive",
        "key_name",
        "os-extended-volumes:volumes_attached",
    ];
    for v in ["2.1", "2.74"] {
        let r = call_at(&c, v, Method::PUT, &uri, &demo, Some(json!({"server": {"name": "renamed"}}))).await;
        assert_eq!(r.status, StatusCode::OK, "{v}: {}", r.text());
        let server = r.json()["server"].clone();
        assert_eq!(server["name"], "renamed");
        for k in [
            "id",
            "status",
            "image",
            "flavor",
            "user_id",
            "tenant_id",
            "created",
            "updated",
            "metadata",
            "links",
            "addresses",
            "hostId",
            "OS-DCF:diskConfig",
            "accessIPv4",
            "accessIPv6",
        ] {
            assert!(server.get(k).is_some(), "{v}: {k} missing: {server}");
        }
        for k in extensions {
            assert!(server.get(k).is_none(), "{v}: {k} shown: {server}");
        }
    }
    let r = call_at(&c, "2.75", Method::PUT, &uri, &demo, Some(json!({"server": {"name": "again"}}))).await;
    let server = r.json()["server"].clone();
    for k in extensions {
        assert!(server.get(k).is_some(), "2.75: {k} missing: {server}");
    }
    let shown = call_at(&c, "2.1", Method::GET, &uri, &demo, None).await.json();
    assert!(shown["server"].get("OS-EXT-STS:vm_state").is_some(), "GET keeps them: {shown}");
}

/// `accessIPv6` comes back in the shortest form, as nova's column stores it.
#[tokio::test]
async fn access_ipv6_is_shown_shortened() {
    let c = cloud();
    let demo = c.token("demo").await;
    let img = image(&c, "disk", "raw", &c.admin_project, "public", &[]);
    let mut body = boot(&img, "1");
    body["server"]["accessIPv6"] = json!("0000:0000:0000:0000:0000:babe:220.12.22.2");
    let r = c.post("/compute/v2.1/servers", &demo, body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.json()["server"]["id"].as_str().unwrap().to_string();
    let shown = c.get(&format!("/compute/v2.1/servers/{id}"), &demo).await.json();
    assert_eq!(shown["server"]["accessIPv6"], "::babe:dc0c:1602", "{shown}");
}

/// Rebuild answers in PUT's view (tempest's `rebuild_server` schemas): no extension keys
/// below 2.75, `key_name` from 2.54, `user_data` from 2.57, `server_groups` from 2.71, and
/// never the admin's `OS-EXT-SRV-ATTR:user_data`.
#[tokio::test]
async fn a_rebuild_answers_in_the_update_view_per_microversion() {
    use crate::compute::states::VmState;
    use crate::db::instances::InstanceUpdate;
    let c = cloud();
    let admin = c.token("admin").await;
    let img = image(&c, "disk", "raw", &c.admin_project, "public", &[]);
    let r = c.post("/compute/v2.1/servers", &admin, boot(&img, "1")).await;
    let id = r.json()["server"]["id"].as_str().unwrap().to_string();
    let uri = format!("/compute/v2.1/servers/{id}/action");
    let rebuild = json!({"rebuild": {"imageRef": img}});
    // A compute host that is up, holding the server (no compute runs here: the cast is lost).
    c.state.db.with(|db| db.service_heartbeat("h1", crate::compute::BINARY, "compute.h1")).unwrap();
    let cases: [(&str, &[&str], &[&str]); 4] = [
        ("2.1", &["adminPass", "image"], &["OS-EXT-STS:vm_state", "key_name", "user_data", "server_groups"]),
        ("2.54", &["key_name"], &["OS-EXT-STS:vm_state", "user_data"]),
        ("2.71", &["key_name", "user_data", "server_groups"], &["OS-EXT-SRV-ATTR:host"]),
        ("2.75", &["OS-EXT-STS:vm_state", "OS-EXT-SRV-ATTR:host", "user_data"], &["OS-EXT-SRV-ATTR:user_data"]),
    ];
    for (v, shown, hidden) in cases {
        let active = InstanceUpdate {
            vm_state: Some(VmState::Active),
            task_state: Some(None),
            host: Some("h1".into()),
            ..Default::default()
        };
        c.state.db.with(|db| db.update_instance(&id, &active)).unwrap().unwrap();
        let r = call_at(&c, v, Method::POST, &uri, &admin, Some(rebuild.clone())).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{v}: {}", r.text());
        let server = r.json()["server"].clone();
        for k in shown {
            assert!(server.get(*k).is_some(), "{v}: {k} missing: {server}");
        }
        for k in hidden {
            assert!(server.get(*k).is_none(), "{v}: {k} shown: {server}");
        }
    }
}
