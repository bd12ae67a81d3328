//! The Block Storage API in process: real router, real database, real qemu-img for the files.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::api::testing::Cloud;
use crate::volumes::VolumeStatus;

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
    c.state.db.with(|db| db.set_volume_status(&id, &[VolumeStatus::Available], VolumeStatus::InUse)).unwrap();
    let r = c.delete(&url, &demo).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["badRequest"]["message"].as_str().unwrap().contains("Volume status must be available"));
    assert!(file.is_file());
    c.state.db.with(|db| db.set_volume_status(&id, &[VolumeStatus::InUse], VolumeStatus::Available)).unwrap();

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

/// A response object against a tempest schema: every `required` key is there, and no key is
/// outside `required` and `optional` (`additionalProperties: false`).
fn assert_schema(what: &str, o: &Value, required: &[&str], optional: &[&str]) {
    let keys: Vec<&str> =
        o.as_object().unwrap_or_else(|| panic!("{what}: not an object: {o}")).keys().map(String::as_str).collect();
    for k in required {
        assert!(keys.contains(k), "{what}: required key {k} missing from {o}");
    }
    for k in &keys {
        assert!(required.contains(k) || optional.contains(k), "{what}: key {k} is not in the schema: {o}");
    }
}

// tempest/lib/api_schema/response/volume/volumes.py: `create_volume` (and `update_volume`),
// and `common_show_volume` (show and the detail list).
const VOLUME_REQUIRED: &[&str] = &[
    "attachments",
    "links",
    "encrypted",
    "updated_at",
    "replication_status",
    "id",
    "size",
    "user_id",
    "availability_zone",
    "metadata",
    "status",
    "description",
    "multiattach",
    "consistencygroup_id",
    "name",
    "bootable",
    "created_at",
    "volume_type",
    "snapshot_id",
    "source_volid",
];
const CREATE_OPTIONAL: &[&str] = &["migration_status", "group_id", "provider_id", "service_uuid", "shared_targets"];
const SHOW_OPTIONAL: &[&str] = &[
    "migration_status",
    "group_id",
    "provider_id",
    "service_uuid",
    "shared_targets",
    "os-vol-host-attr:host",
    "os-vol-tenant-attr:tenant_id",
    "os-vol-mig-status-attr:migstat",
    "os-vol-mig-status-attr:name_id",
    "volume_image_metadata",
];
// volume/quotas.py: `show_quota_set` (`additionalProperties` is any integer there: the
// per-type keys), and volume/limits.py.
const QUOTA_REQUIRED: &[&str] =
    &["id", "volumes", "snapshots", "backups", "per_volume_gigabytes", "gigabytes", "backup_gigabytes", "groups"];
const QUOTA_PER_TYPE: &[&str] = &["volumes___DEFAULT__", "gigabytes___DEFAULT__", "snapshots___DEFAULT__"];
const LIMITS_REQUIRED: &[&str] = &[
    "totalSnapshotsUsed",
    "maxTotalBackups",
    "maxTotalVolumeGigabytes",
    "maxTotalSnapshots",
    "maxTotalBackupGigabytes",
    "totalBackupGigabytesUsed",
    "maxTotalVolumes",
    "totalVolumesUsed",
    "totalBackupsUsed",
    "totalGigabytesUsed",
];

fn seed_volume(c: &Cloud, id: &str, size: i64, image: Option<&str>) {
    let user = c.state.db.with(|db| db.user_by_name("demo")).unwrap().unwrap().id;
    c.state
        .db
        .with(|db| {
            db.insert_volume(&crate::db::volumes::NewVolume {
                id: id.into(),
                name: Some(id.into()),
                description: None,
                project_id: c.demo_project.clone(),
                user_id: user.clone(),
                size,
                source_image_id: image.map(str::to_string),
                availability_zone: c.state.config.host.availability_zone.clone(),
                path: crate::volumes::file_name(id),
            })
        })
        .unwrap();
}

#[tokio::test]
async fn volume_bodies_have_cinders_keys_for_each_request() {
    let c = Cloud::new();
    let demo = c.token("demo").await;
    let admin = c.token("admin").await;
    let base = format!("/volume/v3/{}/volumes", c.demo_project);
    let r = c.post(&base, &demo, json!({"volume": {"size": 1}})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let created = r.json()["volume"].clone();
    assert_schema("create", &created, VOLUME_REQUIRED, CREATE_OPTIONAL);
    assert!(created.get("migration_status").is_none(), "admins only");
    let id = created["id"].as_str().unwrap().to_string();
    let r = c.put(&format!("{base}/{id}"), &demo, json!({"volume": {"name": "n"}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_schema("update", &r.json()["volume"], VOLUME_REQUIRED, CREATE_OPTIONAL);

    seed_volume(&c, "11111111-1111-4111-8111-111111111111", 1, Some("22222222-2222-4222-8222-222222222222"));
    let url = format!("{base}/11111111-1111-4111-8111-111111111111");
    let mine = c.get(&url, &demo).await.json()["volume"].clone();
    assert_schema("show", &mine, VOLUME_REQUIRED, SHOW_OPTIONAL);
    for admin_only in ["os-vol-tenant-attr:tenant_id", "os-vol-host-attr:host", "os-vol-mig-status-attr:migstat"] {
        assert!(mine.get(admin_only).is_none(), "{admin_only} is cinder's admin-only attribute: {mine}");
    }
    assert_eq!(mine["volume_image_metadata"]["image_id"], "22222222-2222-4222-8222-222222222222");
    let blank = c.get(&format!("{base}/{id}"), &demo).await.json()["volume"].clone();
    assert!(blank.get("volume_image_metadata").is_none(), "only volumes made from an image: {blank}");

    let theirs = c.get(&url, &admin).await.json()["volume"].clone();
    assert_schema("show (admin)", &theirs, VOLUME_REQUIRED, SHOW_OPTIONAL);
    assert_eq!(theirs["os-vol-tenant-attr:tenant_id"], c.demo_project.as_str());
    let host = theirs["os-vol-host-attr:host"].as_str().unwrap();
    let (backend, pool) = host.split_once('#').unwrap();
    assert!(backend.contains('@') && !pool.is_empty(), "tempest's pattern .+@.+#.+: {host}");
    let all = c.get(&format!("/volume/v3/{}/volumes/detail?all_tenants=1", c.admin_project), &admin).await.json();
    for v in all["volumes"].as_array().unwrap() {
        assert_schema("detail (admin)", v, VOLUME_REQUIRED, SHOW_OPTIONAL);
        assert!(v.get("os-vol-tenant-attr:tenant_id").is_some());
    }
    let list = c.get(&format!("{base}/detail"), &demo).await.json();
    assert_eq!(list["volumes"].as_array().unwrap().len(), 2);
    for v in list["volumes"].as_array().unwrap() {
        assert_schema("detail", v, VOLUME_REQUIRED, SHOW_OPTIONAL);
        assert!(v.get("os-vol-tenant-attr:tenant_id").is_none());
    }
    for v in c.get(&base, &demo).await.json()["volumes"].as_array().unwrap() {
        assert_schema("list", v, &["links", "id", "name"], &[]);
    }
}

#[tokio::test]
async fn microversions_other_than_3_0_are_refused_as_cinder() {
    let c = Cloud::new();
    let demo = c.token("demo").await;
    let url = format!("/volume/v3/{}/types", c.demo_project);
    let ask = |v: &str| {
        axum::http::Request::builder()
            .uri(&url)
            .header("x-auth-token", &demo)
            .header("openstack-api-version", format!("volume {v}"))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    for ok in ["3.0", "latest"] {
        let r = c.send(ask(ok)).await;
        assert_eq!(r.status, StatusCode::OK, "{ok}: {}", r.text());
        assert_eq!(r.headers["openstack-api-version"], "volume 3.0");
    }
    let r = c.send(ask("3.50")).await;
    assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(
        r.json()["notAcceptable"]["message"],
        "Version 3.50 is not supported by the API. Minimum is 3.0 and maximum is 3.0."
    );
    let r = c.send(ask("three")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["badRequest"]["message"].as_str().unwrap().contains("invalid format"));
    // Another service's version is not the volume API's business.
    let other = axum::http::Request::builder()
        .uri(&url)
        .header("x-auth-token", &demo)
        .header("openstack-api-version", "compute 2.90")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(c.send(other).await.status, StatusCode::OK);
}

#[tokio::test]
async fn quota_sets_and_limits_have_cinders_keys_and_rules() {
    let c = Cloud::new();
    let demo = c.token("demo").await;
    let alt = c.token("alt").await;
    let admin = c.token("admin").await;
    let d = c.demo_project.clone();
    let url = format!("/volume/v3/{d}/os-quota-sets/{d}");
    seed_volume(&c, "33333333-3333-4333-8333-333333333333", 2, None);

    let q = c.get(&url, &demo).await.json()["quota_set"].clone();
    assert_schema("show_quota_set", &q, QUOTA_REQUIRED, QUOTA_PER_TYPE);
    assert_eq!(q["id"], d.as_str());
    assert_eq!((q["volumes"].as_i64(), q["gigabytes"].as_i64()), (Some(10), Some(1000)));
    let q = c.get(&format!("{url}?usage=true"), &demo).await.json()["quota_set"].clone();
    assert_schema("show_quota_set_usage", &q, QUOTA_REQUIRED, QUOTA_PER_TYPE);
    for (k, v) in q.as_object().unwrap().iter().filter(|(k, _)| *k != "id") {
        assert_schema(k, v, &["reserved", "limit", "in_use"], &["allocated"]);
    }
    assert_eq!(q["volumes"], json!({"limit": 10, "in_use": 1, "reserved": 0}));
    assert_eq!(q["gigabytes"]["in_use"], 2);
    assert_eq!(q["volumes___DEFAULT__"]["in_use"], 1);
    let defaults = c.get(&format!("{url}/defaults"), &demo).await.json()["quota_set"].clone();
    assert_schema("defaults", &defaults, QUOTA_REQUIRED, QUOTA_PER_TYPE);

    // Another project's quotas are the admin's to see; setting them is the admin's alone.
    let alt_url = format!("/volume/v3/{}/os-quota-sets/{d}", c.alt_project);
    let r = c.get(&alt_url, &alt).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["forbidden"]["message"], "Policy doesn't allow volume_extension:quotas:show to be performed.");
    assert_eq!(
        c.get(&format!("/volume/v3/{}/os-quota-sets/{d}", c.admin_project), &admin).await.status,
        StatusCode::OK
    );
    let r = c.put(&url, &demo, json!({"quota_set": {"volumes": 100}})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.json()["forbidden"]["message"],
        "Policy doesn't allow volume_extension:quotas:update to be performed."
    );
    assert_eq!(c.delete(&url, &demo).await.status, StatusCode::FORBIDDEN);

    let admin_url = format!("/volume/v3/{}/os-quota-sets/{d}", c.admin_project);
    for (body, says) in [
        (json!({}), "Missing required element quota_set in request body."),
        (json!({"quota_set": {"volumes": 1, "cores": 2, "ports": 3}}), "Bad key(s) in quota set: cores,ports"),
        (json!({"quota_set": {"volumes": "many"}}), "Invalid input received: volumes must be an integer."),
        (json!({"quota_set": {"volumes": -2}}), "Invalid input received: volumes must be >= -1"),
        (
            json!({"quota_set": {"gigabytes": 1}}),
            "Invalid input received: Quota gigabytes limit must be equal or greater than existing resources.",
        ),
    ] {
        let r = c.put(&admin_url, &admin, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert_eq!(r.json()["badRequest"]["message"], says, "{body}");
    }
    assert_eq!(c.get(&url, &demo).await.json()["quota_set"]["volumes"], 10, "a refused update changes nothing");
    let r = c.put(&admin_url, &admin, json!({"quota_set": {"volumes": 1, "gigabytes": "5", "id": d}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let set = r.json()["quota_set"].clone();
    // update_quota_set: show's schema without `id` required.
    assert_schema("update_quota_set", &set, &QUOTA_REQUIRED[1..], QUOTA_PER_TYPE);
    assert_eq!((set["volumes"].as_i64(), set["gigabytes"].as_i64()), (Some(1), Some(5)));
    let missing = format!("/volume/v3/{}/os-quota-sets/no-such-project", c.admin_project);
    assert_eq!(c.put(&missing, &admin, json!({"quota_set": {"volumes": 1}})).await.status, StatusCode::NOT_FOUND);

    let limits = c.get(&format!("/volume/v3/{d}/limits"), &demo).await.json();
    assert_schema("limits", &limits["limits"], &["rate", "absolute"], &[]);
    let abs = &limits["limits"]["absolute"];
    assert_schema("absolute", abs, LIMITS_REQUIRED, &[]);
    assert_eq!((abs["maxTotalVolumes"].as_i64(), abs["totalVolumesUsed"].as_i64()), (Some(1), Some(1)));
    assert_eq!((abs["maxTotalVolumeGigabytes"].as_i64(), abs["totalGigabytesUsed"].as_i64()), (Some(5), Some(2)));

    // cinder's rows never show up among nova's.
    let nova = c.get(&format!("/compute/v2.1/os-quota-sets/{d}"), &demo).await.json();
    assert!(nova["quota_set"].get("volumes").is_none() && nova["quota_set"].get("gigabytes").is_none(), "{nova}");

    let r = c.delete(&admin_url, &admin).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    assert_eq!(c.get(&url, &demo).await.json()["quota_set"]["volumes"], 10, "back to the defaults");
}

#[tokio::test]
async fn create_holds_every_cinder_quota_in_cinders_words() {
    let c = Cloud::new();
    let demo = c.token("demo").await;
    let base = format!("/volume/v3/{}/volumes", c.demo_project);
    seed_volume(&c, "44444444-4444-4444-8444-444444444444", 2, None);
    let set = |k: &'static str, n: i64| {
        let (db, p) = (c.state.db.clone(), c.demo_project.clone());
        db.with(move |db| {
            db.delete_volume_quotas(&p)?;
            db.set_volume_quota(&p, k, n)
        })
        .unwrap();
    };
    let over = |r: &crate::api::testing::Reply| {
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
        r.json()["overLimit"]["message"].as_str().unwrap().to_string()
    };
    set("per_volume_gigabytes", 3);
    let r = c.post(&base, &demo, json!({"volume": {"size": 4}})).await;
    assert_eq!(over(&r), "VolumeSizeExceedsLimit: Requested volume size 4G is larger than maximum allowed limit 3G.");
    set("gigabytes___DEFAULT__", 3);
    let r = c.post(&base, &demo, json!({"volume": {"size": 2}})).await;
    assert_eq!(
        over(&r),
        "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed gigabytes___DEFAULT__ \
         quota. Requested 2G, quota is 3G and 2G has been consumed."
    );
    set("volumes", 1);
    let r = c.post(&base, &demo, json!({"volume": {"size": 1}})).await;
    assert_eq!(over(&r), "VolumeLimitExceeded: Maximum number of volumes allowed (1) exceeded for quota 'volumes'.");
    set("volumes___DEFAULT__", 1);
    let r = c.post(&base, &demo, json!({"volume": {"size": 1}})).await;
    assert_eq!(
        over(&r),
        "VolumeLimitExceeded: Maximum number of volumes allowed (1) exceeded for quota 'volumes___DEFAULT__'."
    );
    assert_eq!(c.state.db.with(|db| db.volumes(None)).unwrap().len(), 1, "nothing was made");
}

#[tokio::test]
async fn the_default_type_zones_and_extensions_read_as_cinders() {
    let c = Cloud::new();
    let demo = c.token("demo").await;
    let admin = c.token("admin").await;
    let d = c.demo_project.clone();
    // tempest's volume_types.py `common_show_volume_type`.
    let type_required = &["name", "is_public", "description", "id"];
    let type_optional = &["extra_specs", "os-volume-type-access:is_public", "qos_specs_id"];
    let list = c.get(&format!("/volume/v3/{d}/types"), &demo).await.json();
    assert_schema("list_volume_types", &list, &["volume_types"], &[]);
    let t = list["volume_types"][0].clone();
    assert_schema("volume type", &t, type_required, type_optional);
    assert_eq!(t["name"], "__DEFAULT__");
    let id = t["id"].as_str().unwrap();
    for which in [id, "default"] {
        let r = c.get(&format!("/volume/v3/{d}/types/{which}"), &demo).await;
        assert_eq!(r.status, StatusCode::OK, "{which}");
        assert_eq!(r.json()["volume_type"]["id"], id);
    }
    let shown = c.get(&format!("/volume/v3/{}/types/{id}", c.admin_project), &admin).await.json();
    assert_schema("show_volume_type (admin)", &shown["volume_type"], type_required, type_optional);
    let r = c.get(&format!("/volume/v3/{d}/types/nope"), &demo).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["itemNotFound"]["message"], "Volume type nope could not be found.");
    // A volume may name the type by id as well as by name.
    let r = c.post(&format!("/volume/v3/{d}/volumes"), &demo, json!({"volume": {"size": 1, "volume_type": id}})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["volume"]["volume_type"], "__DEFAULT__");

    let zones = c.get(&format!("/volume/v3/{d}/os-availability-zone"), &demo).await.json();
    let z = &zones["availabilityZoneInfo"][0];
    assert_schema("zone", z, &["zoneName", "zoneState"], &[]);
    assert_eq!(z["zoneName"], c.state.config.host.availability_zone.as_str());

    let ext = c.get(&format!("/volume/v3/{d}/extensions"), &demo).await.json();
    let list = ext["extensions"].as_array().unwrap();
    assert!(list.iter().any(|e| e["alias"] == "os-quota-sets"));
    for e in list {
        // tempest's volume/extensions.py.
        assert_schema("extension", e, &["updated", "links", "alias", "name", "description"], &["namespace"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_never_pass_the_quota_together() {
    use tower::ServiceExt;
    let c = Cloud::new();
    let demo = c.token("demo").await;
    c.state.db.with(|db| db.set_volume_quota(&c.demo_project, "volumes", 3)).unwrap();
    let uri = format!("/volume/v3/{}/volumes", c.demo_project);
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (app, uri, demo) = (c.app.clone(), uri.clone(), demo.clone());
            tokio::spawn(async move {
                let req = axum::http::Request::builder()
                    .method("POST")
                    .uri(uri)
                    .header("x-auth-token", demo)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(json!({"volume": {"size": 1}}).to_string()))
                    .unwrap();
                app.oneshot(req).await.unwrap().status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let made = statuses.iter().filter(|s| **s == StatusCode::ACCEPTED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::PAYLOAD_TOO_LARGE).count();
    assert_eq!((made, refused), (3, 9), "{statuses:?}");
    assert_eq!(c.state.db.with(|db| db.volume_usage(&c.demo_project)).unwrap().0, 3);
}
