//! The Block Storage API in process: real router, real database, real qemu-img for the files.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::api::testing::Cloud;

async fn wait_status(c: &Cloud, url: &str, token: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c.get(url, token).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = r.json()["volume"].clone();
        if v["status"] == want {
            return v;
        }
        assert!(Instant::now() < deadline, "volume never became {want}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn versions_and_catalog_lead_clients_to_the_volume_service() {
    let c = Cloud::new();
    let r = c.call(axum::http::Method::GET, "/volume/", None, None).await;
    assert_eq!(r.status, StatusCode::MULTIPLE_CHOICES);
    let v = &r.json()["versions"][0];
    assert_eq!(v["id"], "v3.0");
    assert_eq!(v["version"], "3.0");
    let r = c.call(axum::http::Method::GET, "/volume/v3/", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["openstack-api-version"], "volume 3.0");

    let token = c.token("demo").await;
    let r = c.get("/identity/v3/auth/catalog", &token).await;
    let catalog = r.json()["catalog"].clone();
    for kind in ["block-storage", "volumev3"] {
        let svc = catalog.as_array().unwrap().iter().find(|s| s["type"] == kind).unwrap_or_else(|| panic!("{kind}"));
        let url = svc["endpoints"][0]["url"].as_str().unwrap();
        assert!(url.ends_with(&format!("/volume/v3/{}", c.demo_project)), "{url}");
    }
}

#[tokio::test]
async fn create_list_show_update_delete_needs_qemu() {
    let c = Cloud::new();
    let demo = c.token("demo").await;
    let alt = c.token("alt").await;
    let base = format!("/volume/v3/{}/volumes", c.demo_project);
    let r = c.post(&base, &demo, json!({"volume": {"size": 1, "name": "data", "description": "d"}})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let v = r.json()["volume"].clone();
    assert_eq!(v["status"], "creating");
    assert_eq!(v["size"], 1);
    assert_eq!(v["bootable"], "false");
    assert_eq!(v["attachments"], json!([]));
    assert!(!v["created_at"].as_str().unwrap().ends_with('Z'));
    let id = v["id"].as_str().unwrap().to_string();
    let url = format!("{base}/{id}");
    let shown = wait_status(&c, &url, &demo, "available").await;
    assert_eq!(shown["name"], "data");
    let file = c.state.home.volumes_dir().join(format!("volume-{id}.qcow2"));
    assert!(file.is_file());

    let list = c.get(&base, &demo).await.json();
    assert_eq!(list["volumes"].as_array().unwrap().len(), 1);
    assert_eq!(list["volumes"][0]["id"], id.as_str());
    assert!(list["volumes"][0].get("status").is_none(), "the summary has id, name and links only");
    let detail = c.get(&format!("{base}/detail?name=data"), &demo).await.json();
    assert_eq!(detail["volumes"][0]["status"], "available");
    assert_eq!(c.get(&format!("{base}/detail?name=other"), &demo).await.json()["volumes"], json!([]));

    let r = c.put(&url, &demo, json!({"volume": {"name": "renamed"}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["volume"]["name"], "renamed");
    assert_eq!(r.json()["volume"]["description"], "d");

    // Another project sees nothing of it, not even through its own URL.
    let alt_base = format!("/volume/v3/{}/volumes", c.alt_project);
    let r = c.get(&format!("{alt_base}/{id}"), &alt).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["itemNotFound"]["message"].as_str().unwrap().contains(&id));
    assert_eq!(c.get(&alt_base, &alt).await.json()["volumes"], json!([]));
    assert_eq!(c.delete(&format!("{alt_base}/{id}"), &alt).await.status, StatusCode::NOT_FOUND);
    let rename = json!({"volume": {"name": "taken"}});
    assert_eq!(c.put(&format!("{alt_base}/{id}"), &alt, rename).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.get(&url, &alt).await.status, StatusCode::BAD_REQUEST, "someone else's project in the URL");
    // The admin sees it with all_tenants.
    let admin = c.token("admin").await;
    let all = c.get(&format!("/volume/v3/{}/volumes/detail?all_tenants=1", c.admin_project), &admin).await.json();
    assert_eq!(all["volumes"].as_array().unwrap().len(), 1);

    // In use: delete refused, nothing changes.
    c.state.db.with(|db| db.set_volume_status(&id, &["available"], "in-use")).unwrap();
    let r = c.delete(&url, &demo).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["badRequest"]["message"].as_str().unwrap().contains("Volume status must be available"));
    assert!(file.is_file());
    c.state.db.with(|db| db.set_volume_status(&id, &["in-use"], "available")).unwrap();

    assert_eq!(c.delete(&url, &demo).await.status, StatusCode::ACCEPTED);
    assert_eq!(c.get(&url, &demo).await.status, StatusCode::NOT_FOUND);
    assert!(!file.exists(), "the volume file is removed");
    let leftovers: Vec<_> = std::fs::read_dir(c.state.home.volumes_dir()).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn bad_bodies_name_the_field() {
    let c = Cloud::new();
    let demo = c.token("demo").await;
    let base = format!("/volume/v3/{}/volumes", c.demo_project);
    for (body, field) in [
        (json!({}), "'volume'"),
        (json!({"volume": 3}), "volume"),
        (json!({"volume": {}}), "size"),
        (json!({"volume": {"size": 0}}), "size"),
        (json!({"volume": {"size": "x"}}), "size"),
        (json!({"volume": {"size": 1.5}}), "size"),
        (json!({"volume": {"size": 1, "name": 7}}), "name"),
        (json!({"volume": {"size": 1, "imageRef": "nope"}}), "imageRef"),
        (json!({"volume": {"size": 1, "snapshot_id": "s"}}), "snapshot_id"),
        (json!({"volume": {"size": 1, "availability_zone": "elsewhere"}}), "availability_zone"),
    ] {
        let r = c.post(&base, &demo, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        let msg = r.json()["badRequest"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(field), "{body}: {msg:?} should name {field}");
    }
    let r = c.call(axum::http::Method::POST, &base, Some(&demo), None).await;
    assert!(r.status.is_client_error());
    assert!(c.state.db.with(|db| db.volumes(None)).unwrap().is_empty(), "nothing stored");
}

#[tokio::test]
async fn quotas_hold_needs_qemu() {
    let c = Cloud::new();
    let demo = c.token("demo").await;
    let base = format!("/volume/v3/{}/volumes", c.demo_project);
    c.state.db.with(|db| db.set_volume_quota(&c.demo_project, "volumes", 2)).unwrap();
    c.state.db.with(|db| db.set_volume_quota(&c.demo_project, "gigabytes", 3)).unwrap();
    let r = c.post(&base, &demo, json!({"volume": {"size": 4}})).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert!(r.json()["overLimit"]["message"].as_str().unwrap().contains("gigabytes quota"));
    assert_eq!(c.post(&base, &demo, json!({"volume": {"size": 1}})).await.status, StatusCode::ACCEPTED);
    assert_eq!(c.post(&base, &demo, json!({"volume": {"size": "1"}})).await.status, StatusCode::ACCEPTED);
    let r = c.post(&base, &demo, json!({"volume": {"size": 1}})).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.json()["overLimit"]["message"].as_str().unwrap().contains("Maximum number of volumes allowed (2)"));
    // Another project has its own quota.
    let alt = c.token("alt").await;
    let r = c.post(&format!("/volume/v3/{}/volumes", c.alt_project), &alt, json!({"volume": {"size": 4}})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}
