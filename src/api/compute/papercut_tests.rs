//! The small gaps tempest's compute tests found (issue 17), each answered as nova answers it,
//! through the real router over a real database.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::api::hostile_input::SinkBus;
use crate::api::testing::{Cloud, Reply};

fn cloud() -> Cloud {
    Cloud::new().with_bus(Arc::new(SinkBus))
}

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

fn names(r: &Reply, list: &str, key: &str) -> Vec<String> {
    let body = r.json();
    let items = body[list].as_array().cloned().unwrap_or_default();
    let mut out: Vec<String> = items.iter().filter_map(|i| i[key].as_str().map(str::to_string)).collect();
    out.sort();
    out
}

#[tokio::test]
async fn services_are_named_as_nova_names_them_and_filter_by_host_and_binary() {
    let c = cloud();
    let admin = c.token("admin").await;
    c.state
        .db
        .with(|db| -> crate::db::Result<()> {
            db.service_heartbeat("h1", crate::compute::BINARY, "compute.h1")?;
            db.service_heartbeat("h1", crate::scheduler::BINARY, "scheduler")?;
            db.service_heartbeat("h2", crate::conductor::BINARY, "conductor")?;
            Ok(())
        })
        .unwrap();
    let list = |q: &'static str| {
        let (c, admin) = (&c, &admin);
        async move { at(c, "2.1", Method::GET, &format!("/compute/v2.1/os-services{q}"), admin, None).await }
    };
    let all = list("").await;
    assert_eq!(names(&all, "services", "binary"), ["nova-compute", "nova-conductor", "nova-scheduler"]);
    assert_eq!(names(&list("?binary=nova-compute").await, "services", "binary"), ["nova-compute"]);
    assert_eq!(names(&list("?host=h1").await, "services", "binary"), ["nova-compute", "nova-scheduler"]);
    assert_eq!(names(&list("?host=h2&binary=nova-conductor").await, "services", "host"), ["h2"]);
    assert!(names(&list("?host=h1&binary=xxx").await, "services", "host").is_empty());
    assert!(names(&list("?host=xxx&binary=nova-compute").await, "services", "host").is_empty());
    assert_eq!(names(&list("?xxx=nova-compute").await, "services", "binary").len(), 3, "unknown keys are ignored");
    assert_eq!(crate::api::compute::hosts::nova_binary("novabox-compute"), "nova-compute");
}

#[tokio::test]
async fn an_unknown_status_lists_nothing_before_2_38_and_is_refused_from_it() {
    let c = cloud();
    let demo = c.token("demo").await;
    let r = at(&c, "2.37", Method::GET, "/compute/v2.1/servers?status=invalid_status", &demo, None).await;
    assert_eq!((r.status, r.json()["servers"].clone()), (StatusCode::OK, json!([])), "{}", r.text());
    let r = at(&c, "2.38", Method::GET, "/compute/v2.1/servers?status=invalid_status", &demo, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = at(&c, "2.38", Method::GET, "/compute/v2.1/servers?status=active", &demo, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn a_limit_of_zero_is_an_empty_page_without_links() {
    let c = cloud();
    let admin = c.token("admin").await;
    let r = at(&c, "2.1", Method::GET, "/compute/v2.1/flavors?limit=0", &admin, None).await;
    assert_eq!(r.json(), json!({"flavors": []}), "{}", r.text());
    let r = at(&c, "2.1", Method::GET, "/compute/v2.1/flavors?limit=1", &admin, None).await;
    assert_eq!(r.json()["flavors"].as_array().map(Vec::len), Some(1));
    let r = at(&c, "2.1", Method::GET, "/compute/v2.1/servers/detail?limit=0", &admin, None).await;
    assert_eq!(r.json(), json!({"servers": []}), "{}", r.text());
}

#[tokio::test]
async fn flavor_is_public_reads_every_spelling_nova_reads() {
    let c = cloud();
    let admin = c.token("admin").await;
    let private = json!({"flavor": {"name": "p", "ram": 64, "vcpus": 1, "disk": 1, "id": "p1",
        "os-flavor-access:is_public": false}});
    assert_eq!(c.post("/compute/v2.1/flavors", &admin, private).await.status, StatusCode::OK);
    let ids = |r: Reply| names(&r, "flavors", "id");
    for no in ["f", "0", "false", "n", "no", "off", "FALSE", " F "] {
        let r = c.get(&format!("/compute/v2.1/flavors?is_public={}", no.replace(' ', "%20")), &admin).await;
        assert_eq!(ids(r), ["p1"], "is_public={no}");
    }
    for yes in ["t", "1", "true", "y", "yes", "on", "True"] {
        let r = c.get(&format!("/compute/v2.1/flavors?is_public={yes}"), &admin).await;
        assert!(!ids(r).contains(&"p1".to_string()), "is_public={yes}");
    }
    let all = ids(c.get("/compute/v2.1/flavors?is_public=None", &admin).await);
    assert!(all.contains(&"p1".to_string()) && all.len() > 1, "{all:?}");
    assert_eq!(c.get("/compute/v2.1/flavors?is_public=maybe", &admin).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn flavor_extra_spec_items_and_description_update() {
    let c = cloud();
    let admin = c.token("admin").await;
    let demo = c.token("demo").await;
    let spec = "/compute/v2.1/flavors/1/os-extra_specs/hw:cpu_policy";
    let r = c.put(spec, &admin, json!({"hw:cpu_policy": "dedicated"})).await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({"hw:cpu_policy": "dedicated"})), "{}", r.text());
    assert_eq!(c.get(spec, &demo).await.json(), json!({"hw:cpu_policy": "dedicated"}));
    assert_eq!(c.put(spec, &admin, json!({"other": "x"})).await.status, StatusCode::BAD_REQUEST);
    let two = json!({"hw:cpu_policy": "shared", "b": "c"});
    assert_eq!(c.put(spec, &admin, two).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(c.put(spec, &demo, json!({"hw:cpu_policy": "shared"})).await.status, StatusCode::FORBIDDEN);
    assert_eq!(c.delete(spec, &admin).await.status, StatusCode::OK);
    assert_eq!(c.get(spec, &admin).await.status, StatusCode::NOT_FOUND);

    let body = json!({"flavor": {"description": "updated"}});
    let r = at(&c, "2.55", Method::PUT, "/compute/v2.1/flavors/1", &admin, Some(body.clone())).await;
    assert_eq!((r.status, r.json()["flavor"]["description"].clone()), (StatusCode::OK, json!("updated")));
    let r = at(&c, "2.55", Method::GET, "/compute/v2.1/flavors/1", &demo, None).await;
    assert_eq!(r.json()["flavor"]["description"], "updated");
    let r = at(&c, "2.54", Method::PUT, "/compute/v2.1/flavors/1", &admin, Some(body.clone())).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = at(&c, "2.55", Method::PUT, "/compute/v2.1/flavors/1", &demo, Some(body)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r =
        at(&c, "2.55", Method::PUT, "/compute/v2.1/flavors/1", &admin, Some(json!({"flavor": {"name": "x"}}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn quota_sets_reset_to_the_default_class_which_admins_change() {
    let c = cloud();
    let admin = c.token("admin").await;
    let demo = c.token("demo").await;
    let d = c.demo_project.clone();
    let set = format!("/compute/v2.1/os-quota-sets/{d}");
    assert_eq!(c.put(&set, &admin, json!({"quota_set": {"ram": 5120}})).await.status, StatusCode::OK);
    assert_eq!(c.get(&set, &admin).await.json()["quota_set"]["ram"], 5120);
    assert_eq!(c.delete(&set, &demo).await.status, StatusCode::FORBIDDEN);
    assert_eq!(c.delete(&set, &admin).await.status, StatusCode::ACCEPTED);
    assert_eq!(c.get(&set, &admin).await.json()["quota_set"]["ram"], 51200);

    let class = "/compute/v2.1/os-quota-class-sets/default";
    let shown = c.get(class, &admin).await.json()["quota_class_set"].clone();
    assert_eq!((shown["id"].clone(), shown["instances"].clone()), (json!("default"), json!(10)));
    assert!(shown.get("server_groups").is_none(), "nova shows the group quotas from 2.50: {shown}");
    let r = at(&c, "2.57", Method::GET, class, &admin, None).await.json()["quota_class_set"].clone();
    assert!(r.get("server_groups").is_some() && r.get("injected_files").is_none() && r.get("fixed_ips").is_none());
    let r = c.put(class, &admin, json!({"quota_class_set": {"instances": 110, "ram": 51300}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        (r.json()["quota_class_set"]["instances"].clone(), r.json()["quota_class_set"].get("id")),
        (json!(110), None)
    );
    assert_eq!(c.get(&set, &demo).await.json()["quota_set"]["instances"], 110, "the class is every default");
    assert_eq!(c.get(&format!("{set}/defaults"), &demo).await.json()["quota_set"]["ram"], 51300);
    assert_eq!(c.put(class, &demo, json!({"quota_class_set": {"instances": 1}})).await.status, StatusCode::FORBIDDEN);
    assert_eq!(c.get(class, &demo).await.status, StatusCode::FORBIDDEN);
    let r = c.put(class, &admin, json!({"quota_class_set": {"bogus": 1}})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_admin_reaches_another_users_keypair_with_user_id_from_2_10() {
    let c = cloud();
    let admin = c.token("admin").await;
    let demo = c.token("demo").await;
    let demo_id = c.state.db.with(|db| db.user_by_name("demo")).unwrap().unwrap().id;
    let public = super::keypairs::generate("k").unwrap().0;
    let r = c.post("/compute/v2.1/os-keypairs", &demo, json!({"keypair": {"name": "k", "public_key": public}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let show = format!("/compute/v2.1/os-keypairs/k?user_id={demo_id}");
    assert_eq!(at(&c, "2.10", Method::GET, &show, &admin, None).await.json()["keypair"]["user_id"], demo_id);
    assert_eq!(
        at(&c, "2.9", Method::GET, &show, &admin, None).await.status,
        StatusCode::NOT_FOUND,
        "ignored below 2.10"
    );
    let admin_id = c.state.db.with(|db| db.user_by_name("admin")).unwrap().unwrap().id;
    let theirs = format!("/compute/v2.1/os-keypairs/k?user_id={admin_id}");
    assert_eq!(at(&c, "2.10", Method::DELETE, &theirs, &demo, None).await.status, StatusCode::FORBIDDEN);
    assert_eq!(at(&c, "2.10", Method::DELETE, &show, &admin, None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.get("/compute/v2.1/os-keypairs/k", &demo).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn disk_config_is_kept_from_create_and_update() {
    let c = cloud();
    let demo = c.token("demo").await;
    let src = c.state.home.root().join("img.src");
    std::fs::write(&src, b"image bytes").unwrap();
    let props = std::collections::BTreeMap::new();
    let db = c.state.db.clone();
    let image = db
        .with(|db| {
            crate::images::import_file(db, &c.state.home, &src, "img", "raw", "raw", &props, "public", &c.demo_project)
        })
        .unwrap()
        .id;
    let boot =
        |dc: &str| json!({"server": {"name": "vm", "imageRef": image, "flavorRef": "1", "OS-DCF:diskConfig": dc}});
    let r = c.post("/compute/v2.1/servers", &demo, boot("AUTO")).await;
    assert_eq!((r.status, r.json()["server"]["OS-DCF:diskConfig"].clone()), (StatusCode::ACCEPTED, json!("AUTO")));
    let id = r.json()["server"]["id"].as_str().unwrap().to_string();
    let server = format!("/compute/v2.1/servers/{id}");
    assert_eq!(c.get(&server, &demo).await.json()["server"]["OS-DCF:diskConfig"], "AUTO");
    let r = c.put(&server, &demo, json!({"server": {"OS-DCF:diskConfig": "MANUAL"}})).await;
    assert_eq!((r.status, r.json()["server"]["OS-DCF:diskConfig"].clone()), (StatusCode::OK, json!("MANUAL")));
    assert_eq!(c.get(&server, &demo).await.json()["server"]["OS-DCF:diskConfig"], "MANUAL");
    assert_eq!(
        c.put(&server, &demo, json!({"server": {"OS-DCF:diskConfig": "auto"}})).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(c.post("/compute/v2.1/servers", &demo, boot("SOMETIMES")).await.status, StatusCode::BAD_REQUEST);
    let r = c
        .post("/compute/v2.1/servers", &demo, json!({"server": {"name": "m", "imageRef": image, "flavorRef": "1"}}))
        .await;
    assert_eq!(r.json()["server"]["OS-DCF:diskConfig"], "MANUAL", "nova's default");
}
