use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use md5::Digest;
use serde_json::{json, Value};

use super::*;
use crate::api::testing::Cloud;
use crate::bus::Context;

fn auth(project: &str, admin: bool) -> Auth {
    Auth {
        context: Context {
            request_id: "req-test".into(),
            user_id: Some("u".into()),
            project_id: Some(project.into()),
            roles: vec![],
            is_admin: admin,
            remote_address: None,
            timestamp: String::new(),
            trace_parent: None,
        },
        user_name: "u".into(),
        project_name: project.into(),
    }
}

fn image(id: &str, owner: &str, visibility: &str, name: &str) -> Image {
    Image {
        id: id.into(),
        name: Some(name.into()),
        owner: Some(owner.into()),
        status: ImageStatus::Queued,
        visibility: visibility.into(),
        protected: false,
        disk_format: None,
        container_format: None,
        size: None,
        virtual_size: None,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        min_disk: 0,
        min_ram: 0,
        path: None,
        created_at: format!("2026-01-01T00:00:0{}Z", id.len() % 10),
        updated_at: "2026-01-01T00:00:00Z".into(),
        properties: Default::default(),
        tags: Default::default(),
        members: vec![],
    }
}

fn pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap())
        .map(|(a, b)| (a.into(), b.into()))
        .collect()
}

#[test]
fn list_query_parsing() {
    let q = parse_list_query(&pairs("")).unwrap();
    assert_eq!(q.limit, 25);
    assert_eq!(q.sort, vec![("created_at".to_string(), false), ("id".to_string(), false)]);
    let q = parse_list_query(&pairs("sort=name:asc,size&limit=5000&tag=a&tag=b&status=in:active,queued")).unwrap();
    assert_eq!(q.limit, 1000);
    assert_eq!(&q.sort[..2], &[("name".to_string(), true), ("size".to_string(), false)]);
    assert_eq!(q.tags, vec!["a", "b"]);
    assert_eq!(q.equals, vec![("status".to_string(), vec!["active".to_string(), "queued".to_string()])]);
    for bad_query in
        ["limit=x", "limit=-1", "sort_key=bogus", "sort_dir=up", "visibility=secret", "sort=name&sort_key=id"]
    {
        let e = parse_list_query(&pairs(bad_query)).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad_query}");
    }
}

#[test]
fn list_visibility_rules() {
    let mut shared = image("s", "p1", "shared", "s");
    shared.members.push(crate::db::images::ImageMember {
        image_id: "s".into(),
        member: "p2".into(),
        status: MemberStatus::Pending,
        created_at: String::new(),
    });
    let all = vec![
        image("a", "p1", "private", "a"),
        image("bb", "p1", "public", "b"),
        image("ccc", "p1", "community", "c"),
        shared,
    ];
    let names = |a: &Auth, q: &str| -> Vec<String> {
        let q = parse_list_query(&pairs(q)).unwrap();
        let (page, _) = select_images(a, &q, all.clone(), None).unwrap();
        let mut v: Vec<String> = page.into_iter().map(|i| i.id).collect();
        v.sort();
        v
    };
    let p2 = auth("p2", false);
    assert_eq!(names(&p2, ""), vec!["bb"]);
    assert_eq!(names(&p2, "member_status=pending"), vec!["bb", "s"]);
    assert_eq!(names(&p2, "visibility=community"), vec!["ccc"]);
    assert_eq!(names(&p2, "visibility=private"), Vec::<String>::new());
    assert_eq!(names(&auth("p1", false), ""), vec!["a", "bb", "ccc", "s"]);
    assert_eq!(names(&auth("p9", true), "visibility=private"), vec!["a"]);
    assert!(can_see(&p2, &all[3]) && !can_see(&p2, &all[0]) && can_see(&p2, &all[2]));
}

#[test]
fn json_patch_rules() {
    let owner = auth("p1", false);
    let mut img = image("a", "p1", "private", "a");
    img.properties.insert("old".into(), "1".into());
    let ops = json!([
        {"op": "replace", "path": "/name", "value": "new"},
        {"op": "add", "path": "/hw_disk_bus", "value": "scsi"},
        {"op": "remove", "path": "/old"},
        {"op": "replace", "path": "/protected", "value": true},
        {"op": "add", "path": "/tags", "value": ["x"]},
        {"op": "replace", "path": "/a~1b", "value": "slash"},
    ]);
    let e = apply_patch(&owner, &mut img.clone(), &ops).unwrap_err();
    assert_eq!(e.status, StatusCode::CONFLICT, "replace of a missing property: {}", e.message);
    let ops = json!(ops.as_array().unwrap()[..5].to_vec());
    apply_patch(&owner, &mut img, &ops).unwrap();
    assert_eq!(img.name.as_deref(), Some("new"));
    assert_eq!(img.properties.keys().collect::<Vec<_>>(), vec!["hw_disk_bus"]);
    assert!(img.protected && img.tags.contains("x"));

    let cases = [
        (json!([{"op": "replace", "path": "/status", "value": "active"}]), StatusCode::FORBIDDEN),
        (json!([{"op": "add", "path": "/deleted", "value": "1"}]), StatusCode::FORBIDDEN),
        (json!([{"op": "replace", "path": "/visibility", "value": "public"}]), StatusCode::FORBIDDEN),
        (json!([{"op": "remove", "path": "/name"}]), StatusCode::FORBIDDEN),
        (json!([{"op": "move", "path": "/name", "value": "x"}]), StatusCode::BAD_REQUEST),
        (json!([{"op": "add", "path": "/a/b", "value": "x"}]), StatusCode::BAD_REQUEST),
        (json!([{"op": "add", "path": "/n", "value": 3}]), StatusCode::BAD_REQUEST),
        (json!([{"op": "replace", "path": "/disk_format", "value": "floppy"}]), StatusCode::BAD_REQUEST),
        (json!({"op": "add"}), StatusCode::BAD_REQUEST),
    ];
    for (ops, status) in cases {
        let e = apply_patch(&owner, &mut img.clone(), &ops).unwrap_err();
        assert_eq!(e.status, status, "{ops}: {}", e.message);
    }
    apply_patch(&auth("p9", true), &mut img, &json!([{"op": "replace", "path": "/visibility", "value": "public"}]))
        .unwrap();
    assert_eq!(img.visibility, "public");
}

// ---------------------------------------------------------------------------------------
// Through the router

async fn create(cloud: &Cloud, token: &str, body: Value) -> Value {
    let r = cloud.post("/image/v2/images", token, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    r.json()
}

async fn upload(
    cloud: &Cloud,
    token: &str,
    id: &str,
    data: Vec<u8>,
    content_length: bool,
) -> crate::api::testing::Reply {
    let mut req = Request::builder()
        .method(Method::PUT)
        .uri(format!("/image/v2/images/{id}/file"))
        .header("x-auth-token", token)
        .header("content-type", "application/octet-stream");
    if content_length {
        req = req.header("content-length", data.len());
    }
    cloud.send(req.body(Body::from(data)).unwrap()).await
}

async fn patch(cloud: &Cloud, token: &str, id: &str, ops: Value) -> crate::api::testing::Reply {
    let req = Request::builder()
        .method(Method::PATCH)
        .uri(format!("/image/v2/images/{id}"))
        .header("x-auth-token", token)
        .header("content-type", PATCH_MEDIA_TYPE)
        .body(Body::from(ops.to_string()))
        .unwrap();
    cloud.send(req).await
}

fn image_files(cloud: &Cloud) -> Vec<String> {
    std::fs::read_dir(cloud.state.home.images_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn versions_need_no_token() {
    let cloud = Cloud::new();
    for uri in ["/image", "/image/"] {
        let r = cloud.call(Method::GET, uri, None, None).await;
        assert_eq!(r.status, StatusCode::MULTIPLE_CHOICES, "{uri}");
    }
    let r = cloud.call(Method::GET, "/image", None, None).await;
    assert_eq!(r.status, StatusCode::MULTIPLE_CHOICES);
    let v = r.json();
    assert_eq!(v["versions"][0]["status"], "CURRENT");
    assert_eq!(v["versions"][0]["links"][0]["href"], "http://127.0.0.1:8774/image/v2/");
    let r = cloud.call(Method::GET, "/image/versions", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = cloud.call(Method::GET, "/image/v2/images", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/plain"), "glance errors are text");
    assert!(r.text().starts_with("401 Unauthorized\n\n"), "{}", r.text());
}

#[tokio::test]
async fn create_upload_download_delete_round_trip() {
    let cloud = Cloud::new();
    let demo = cloud.token("demo").await;
    let img = create(
        &cloud,
        &demo,
        json!({"name": "cirros", "disk_format": "qcow2", "container_format": "bare", "tags": ["t1"],
               "kernel_id": "k-1", "hw_disk_bus": "virtio", "min_ram": 64}),
    )
    .await;
    let id = img["id"].as_str().unwrap().to_string();
    assert_eq!(img["status"], "queued");
    assert_eq!(img["visibility"], "shared");
    assert_eq!(img["protected"], false);
    assert_eq!(img["owner"], cloud.demo_project.as_str());
    assert_eq!(img["kernel_id"], "k-1");
    assert_eq!(img["hw_disk_bus"], "virtio");
    assert_eq!(img["tags"], json!(["t1"]));
    assert_eq!(img["min_ram"], 64);
    assert_eq!(img["self"], format!("/v2/images/{id}"));
    assert_eq!(img["file"], format!("/v2/images/{id}/file"));
    assert_eq!(img["schema"], "/v2/schemas/image");
    assert!(img["created_at"].as_str().unwrap().ends_with('Z'));
    for k in ["size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value"] {
        assert!(img[k].is_null(), "{k} must be null before upload");
    }

    let r = cloud.get(&format!("/image/v2/images/{id}/file"), &demo).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "no data yet");

    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let r = upload(&cloud, &demo, &id, data.clone(), true).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let shown = cloud.get(&format!("/image/v2/images/{id}"), &demo).await.json();
    let md5 = hex::encode(md5::Md5::digest(&data));
    let sha = hex::encode(sha2::Sha512::digest(&data));
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["size"], data.len());
    assert_eq!(shown["checksum"], md5.as_str());
    assert_eq!(shown["os_hash_algo"], "sha512");
    assert_eq!(shown["os_hash_value"], sha.as_str());

    let r = cloud.get(&format!("/image/v2/images/{id}/file"), &demo).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-md5"], md5.as_str());
    assert_eq!(r.headers["content-type"], "application/octet-stream");
    assert_eq!(r.body.as_ref(), &data[..]);

    let r = upload(&cloud, &demo, &id, b"again".to_vec(), true).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "active images take no new data");

    // The compute side's view.
    let stored = cloud.state.db.with(|db| db.image_by_id(&id)).unwrap().unwrap();
    assert_eq!(stored.properties["kernel_id"], "k-1");
    let path = crate::images::file_path(&cloud.state.home, &stored).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);

    let r = cloud.delete(&format!("/image/v2/images/{id}"), &demo).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(!path.exists(), "data file must go with the image");
    let r = cloud.get(&format!("/image/v2/images/{id}"), &demo).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.text(), format!("404 Not Found\n\nNo image found with ID {id}\n\n   "));
}

#[tokio::test]
async fn upload_over_the_limit_is_413_and_leaves_nothing() {
    let cloud = Cloud::with_config(|c| c.images.max_upload_mb = 1);
    let demo = cloud.token("demo").await;
    let img = create(&cloud, &demo, json!({"name": "big", "disk_format": "raw", "container_format": "bare"})).await;
    let id = img["id"].as_str().unwrap();
    let too_big = vec![7u8; 1024 * 1024 + 1];
    // Once streamed without a length (caught while writing), once refused up front.
    for content_length in [false, true] {
        let r = upload(&cloud, &demo, id, too_big.clone(), content_length).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
        assert!(image_files(&cloud).is_empty(), "partial data left: {:?}", image_files(&cloud));
        let shown = cloud.get(&format!("/image/v2/images/{id}"), &demo).await.json();
        assert_eq!(shown["status"], "queued");
    }
    let r = upload(&cloud, &demo, id, vec![1u8; 1024 * 1024], false).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "exactly the limit is fine: {}", r.text());
    assert_eq!(image_files(&cloud), vec![id.to_string()]);
}

#[tokio::test]
async fn create_validates_like_glance() {
    let cloud = Cloud::new();
    let demo = cloud.token("demo").await;
    let cases = [
        (json!({"name": "x", "status": "active"}), StatusCode::FORBIDDEN, "Attribute 'status' is read-only."),
        (json!({"name": "x", "deleted": true}), StatusCode::FORBIDDEN, "Attribute 'deleted' is reserved."),
        (json!({"name": "x", "disk_format": "floppy"}), StatusCode::BAD_REQUEST, "floppy"),
        (json!({"name": "x", "container_format": "tarball"}), StatusCode::BAD_REQUEST, "tarball"),
        (json!({"name": "x", "visibility": "public"}), StatusCode::FORBIDDEN, "publicize_image"),
        (json!({"name": "x", "min_ram": -1}), StatusCode::BAD_REQUEST, "min_ram"),
        (json!({"name": "x", "hw_cpu_cores": 2}), StatusCode::BAD_REQUEST, "'string'"),
        (json!({"id": "not-a-uuid"}), StatusCode::BAD_REQUEST, "uuid"),
        (json!({"owner": "someone-else"}), StatusCode::FORBIDDEN, "someone-else"),
        (json!(["x"]), StatusCode::BAD_REQUEST, "JSON object"),
        (json!({"name": "a\0b"}), StatusCode::BAD_REQUEST, "NUL"),
        (json!({"name": "x", "os_distro": "deb\0ian"}), StatusCode::BAD_REQUEST, "NUL"),
        (json!({"name": "x", "tags": ["t\0"]}), StatusCode::BAD_REQUEST, "NUL"),
    ];
    for (body, status, needle) in cases {
        let r = cloud.post("/image/v2/images", &demo, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.text().contains(needle), "{body}: {}", r.text());
    }
    let id = uuid::Uuid::new_v4().to_string();
    create(&cloud, &demo, json!({"id": id, "name": null})).await;
    let r = cloud.post("/image/v2/images", &demo, json!({"id": id})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn tenancy_and_sharing() {
    let cloud = Cloud::new();
    let (demo, alt, admin) = (cloud.token("demo").await, cloud.token("alt").await, cloud.token("admin").await);
    let private = create(&cloud, &demo, json!({"name": "mine", "visibility": "private"})).await;
    let shared = create(&cloud, &demo, json!({"name": "ours"})).await;
    let community = create(&cloud, &demo, json!({"name": "everyone", "visibility": "community"})).await;
    let (private, shared, community) =
        (private["id"].as_str().unwrap(), shared["id"].as_str().unwrap(), community["id"].as_str().unwrap());

    let names = |v: Value| -> Vec<String> {
        let mut n: Vec<String> =
            v["images"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_string()).collect();
        n.sort();
        n
    };
    assert_eq!(cloud.get(&format!("/image/v2/images/{private}"), &alt).await.status, StatusCode::NOT_FOUND);
    assert_eq!(cloud.delete(&format!("/image/v2/images/{private}"), &alt).await.status, StatusCode::NOT_FOUND);
    assert_eq!(cloud.get(&format!("/image/v2/images/{shared}"), &alt).await.status, StatusCode::NOT_FOUND);
    assert_eq!(cloud.get(&format!("/image/v2/images/{community}"), &alt).await.status, StatusCode::OK);
    let r = patch(&cloud, &alt, community, json!([{"op": "replace", "path": "/name", "value": "x"}])).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "visible but not owned");
    assert!(names(cloud.get("/image/v2/images", &alt).await.json()).is_empty());
    assert_eq!(names(cloud.get("/image/v2/images?visibility=community", &alt).await.json()), vec!["everyone"]);
    assert_eq!(names(cloud.get("/image/v2/images", &demo).await.json()), vec!["everyone", "mine", "ours"]);
    assert_eq!(names(cloud.get("/image/v2/images", &admin).await.json()), vec!["everyone", "mine", "ours"]);

    // Sharing: the owner adds alt; alt sees it at once but lists it only once it accepts.
    let r =
        cloud.post(&format!("/image/v2/images/{shared}/members"), &demo, json!({"member": cloud.alt_project})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "pending");
    assert_eq!(cloud.get(&format!("/image/v2/images/{shared}"), &alt).await.status, StatusCode::OK);
    assert!(names(cloud.get("/image/v2/images", &alt).await.json()).is_empty());
    let member_uri = format!("/image/v2/images/{shared}/members/{}", cloud.alt_project);
    assert_eq!(cloud.put(&member_uri, &demo, json!({"status": "accepted"})).await.status, StatusCode::FORBIDDEN);
    let r = cloud.put(&member_uri, &alt, json!({"status": "accepted"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(names(cloud.get("/image/v2/images", &alt).await.json()), vec!["ours"]);
    let r = cloud.post(&format!("/image/v2/images/{private}/members"), &demo, json!({"member": "x"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "only shared images have members");

    let public = create(&cloud, &admin, json!({"name": "pub", "visibility": "public"})).await;
    assert_eq!(public["owner"], cloud.admin_project.as_str());
    assert_eq!(names(cloud.get("/image/v2/images", &alt).await.json()), vec!["ours", "pub"]);
}

#[tokio::test]
async fn patch_tags_and_protection() {
    let cloud = Cloud::new();
    let demo = cloud.token("demo").await;
    let img = create(&cloud, &demo, json!({"name": "a", "os_distro": "cirros"})).await;
    let id = img["id"].as_str().unwrap();
    let r = patch(
        &cloud,
        &demo,
        id,
        json!([
            {"op": "replace", "path": "/name", "value": "b"},
            {"op": "add", "path": "/ramdisk_id", "value": "r-1"},
            {"op": "remove", "path": "/os_distro"},
            {"op": "replace", "path": "/protected", "value": true},
        ]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["name"].as_str(), v["ramdisk_id"].as_str(), v["protected"].as_bool()),
        (Some("b"), Some("r-1"), Some(true))
    );
    assert!(v.get("os_distro").is_none());

    let r = cloud
        .send(
            Request::builder()
                .method(Method::PATCH)
                .uri(format!("/image/v2/images/{id}"))
                .header("x-auth-token", &demo)
                .header("content-type", "application/json")
                .body(Body::from("[]"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = patch(&cloud, &demo, id, json!([{"op": "remove", "path": "/nope"}])).await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    let r = cloud.delete(&format!("/image/v2/images/{id}"), &demo).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "protected");
    assert!(r.text().contains("is protected"));

    assert_eq!(
        cloud.put(&format!("/image/v2/images/{id}/tags/blue"), &demo, json!(null)).await.status,
        StatusCode::NO_CONTENT
    );
    let v = cloud.get("/image/v2/images?tag=blue", &demo).await.json();
    assert_eq!(v["images"].as_array().unwrap().len(), 1);
    assert_eq!(cloud.delete(&format!("/image/v2/images/{id}/tags/blue"), &demo).await.status, StatusCode::NO_CONTENT);
    assert_eq!(cloud.delete(&format!("/image/v2/images/{id}/tags/blue"), &demo).await.status, StatusCode::NOT_FOUND);

    // Unprotected the way tempest's image client does it: glance's 2.0 patch format.
    let r = cloud
        .send(
            Request::builder()
                .method(Method::PATCH)
                .uri(format!("/image/v2/images/{id}"))
                .header("x-auth-token", &demo)
                .header("content-type", "application/openstack-images-v2.0-json-patch")
                .body(Body::from(
                    json!([{"replace": "/protected", "value": false}, {"add": "/os_version", "value": "12"}])
                        .to_string(),
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!((r.json()["protected"].as_bool(), r.json()["os_version"].as_str()), (Some(false), Some("12")));
    assert_eq!(cloud.delete(&format!("/image/v2/images/{id}"), &demo).await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn list_pages_sorts_and_filters() {
    let cloud = Cloud::new();
    let demo = cloud.token("demo").await;
    for name in ["c", "a", "b"] {
        create(&cloud, &demo, json!({"name": name, "disk_format": if name == "b" { "raw" } else { "qcow2" }})).await;
    }
    let v = cloud.get("/image/v2/images?sort_key=name&sort_dir=asc&limit=2", &demo).await.json();
    let names: Vec<&str> = v["images"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(v["first"], "/v2/images");
    assert_eq!(v["schema"], "/v2/schemas/images");
    let next = v["next"].as_str().expect("a full page has a next link");
    assert_eq!(query_counts(next).get("marker"), Some(&1));
    let v = cloud.get(&format!("/image{next}"), &demo).await.json();
    let names: Vec<&str> = v["images"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["c"]);
    assert!(v.get("next").is_none());

    let v = cloud.get("/image/v2/images?disk_format=raw", &demo).await.json();
    assert_eq!(v["images"].as_array().unwrap().len(), 1);
    let v = cloud.get("/image/v2/images?name=in:a,c&sort=name:desc", &demo).await.json();
    let names: Vec<&str> = v["images"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["c", "a"]);
    // Paging goes on after the marker is deleted, as in glance.
    let v = cloud.get("/image/v2/images?sort_key=name&sort_dir=asc&limit=1", &demo).await.json();
    let first = v["images"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(cloud.delete(&format!("/image/v2/images/{first}"), &demo).await.status, StatusCode::NO_CONTENT);
    let v = cloud.get(&format!("/image{}", v["next"].as_str().unwrap()), &demo).await.json();
    let names: Vec<&str> = v["images"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["b"]);
    let r = cloud.get("/image/v2/images?marker=nope", &demo).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().starts_with("400 Bad Request"), "{}", r.text());

    for s in ["/image/v2/schemas/image", "/image/v2/schemas/images", "/image/v2/schemas/member"] {
        let r = cloud.get(s, &demo).await;
        assert_eq!(r.status, StatusCode::OK, "{s}");
        assert!(r.json()["name"].is_string());
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_get_glance_errors() {
    let cloud = Cloud::new();
    let demo = cloud.token("demo").await;
    let r = cloud.get("/image/v2/bogus", &demo).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().starts_with("404 Not Found"), "{}", r.text());
    let r = cloud.call(Method::POST, "/image/v2/schemas/image", Some(&demo), None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.text().starts_with("405 Method Not Allowed"), "{}", r.text());
}

#[tokio::test]
async fn short_upload_returns_to_queued_and_leaves_nothing() {
    let cloud = Cloud::new();
    let demo = cloud.token("demo").await;
    let img = create(&cloud, &demo, json!({"name": "cut", "disk_format": "raw", "container_format": "bare"})).await;
    let id = img["id"].as_str().unwrap();
    // The client sends some data, then the connection breaks.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![1u8; 64 * 1024]), Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "gone"))];
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("/image/v2/images/{id}/file"))
        .header("x-auth-token", &demo)
        .header("content-type", "application/octet-stream")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let r = cloud.send(req).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(image_files(&cloud).is_empty(), "partial data left: {:?}", image_files(&cloud));
    assert_eq!(cloud.get(&format!("/image/v2/images/{id}"), &demo).await.json()["status"], "queued");

    // A client that goes away mid-upload drops the handler: the image must not stay saving.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Vec<u8>, std::io::Error>>();
    tx.send(Ok(vec![2u8; 1024])).unwrap();
    let rx = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("/image/v2/images/{id}/file"))
        .header("x-auth-token", &demo)
        .header("content-type", "application/octet-stream")
        .body(Body::from_stream(rx))
        .unwrap();
    let pending = tower::ServiceExt::oneshot(cloud.app.clone(), req);
    // Let the handler start and mark the image saving, then abandon the request.
    let abandoned = tokio::time::timeout(std::time::Duration::from_millis(300), pending).await;
    assert!(abandoned.is_err(), "the upload cannot finish while the body is open");
    drop(tx);
    assert_eq!(cloud.get(&format!("/image/v2/images/{id}"), &demo).await.json()["status"], "queued");
    assert!(image_files(&cloud).is_empty(), "partial data left: {:?}", image_files(&cloud));
}
