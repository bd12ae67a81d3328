//! Volumes through a real `novabox up`: the Block Storage API, attach and detach through
//! compute, boot from volume, and what a server's deletion does to its volumes. The fake
//! driver proves the control plane; one real (TCG) guest sees a volume hot-plugged.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

/// An API session against a running stack, from its ready document.
pub(super) struct Api {
    base: String,
    token: String,
    project: String,
}

impl Api {
    pub(super) async fn login(ready: &Value, user: &str) -> Api {
        let auth_url = ready["auth_url"].as_str().expect("auth_url").to_string();
        let password = ready["credentials"][user]["password"].as_str().expect("password");
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {"name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": user, "domain": {"id": "default"}}},
        }});
        let resp = reqwest::Client::new().post(format!("{auth_url}/auth/tokens")).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 201);
        let token = resp.headers()["x-subject-token"].to_str().unwrap().to_string();
        let v: Value = resp.json().await.unwrap();
        let project = v["token"]["project"]["id"].as_str().unwrap().to_string();
        Api { base: auth_url.replace("/identity/v3", ""), token, project }
    }

    pub(super) async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let path = path.replace("{project}", &self.project);
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .header("x-auth-token", &self.token)
            .header("openstack-api-version", "compute 2.79");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub(super) async fn create_volume(&self, body: Value) -> String {
        let (s, v) = self.call(Method::POST, "/volume/v3/{project}/volumes", Some(body)).await;
        assert_eq!(s, 202, "{v}");
        v["volume"]["id"].as_str().unwrap().to_string()
    }

    async fn volume(&self, id: &str) -> (StatusCode, Value) {
        let (s, v) = self.call(Method::GET, &format!("/volume/v3/{{project}}/volumes/{id}"), None).await;
        (s, v["volume"].clone())
    }

    pub(super) async fn wait_volume(&self, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (s, v) = self.volume(id).await;
            if want == "gone" && s == 404 {
                return Value::Null;
            }
            if v["status"] == want {
                return v;
            }
            assert!(Instant::now() < deadline, "volume {id} never {want}: {s} {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_server(&self, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (s, v) = self.call(Method::GET, &format!("/compute/v2.1/servers/{id}"), None).await;
            if want == "gone" && s == 404 {
                return Value::Null;
            }
            let server = v["server"].clone();
            if server["status"] == want && server["OS-EXT-STS:task_state"].is_null() {
                return server;
            }
            assert!(Instant::now() < deadline, "server {id} never {want}: {s} {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A small raw image of the caller's (the fake driver's clouds have no test image).
    async fn upload_image(&self) -> String {
        let body = json!({"name": "blob", "disk_format": "raw", "container_format": "bare"});
        let (s, v) = self.call(Method::POST, "/image/v2/images", Some(body)).await;
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let resp = reqwest::Client::new()
            .put(format!("{}/image/v2/images/{id}/file", self.base))
            .header("x-auth-token", &self.token)
            .header("content-type", "application/octet-stream")
            .body(vec![7u8; 65536])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        id
    }
}

/// Sets the status of a volume still attached to its instance behind the stack's back, as a
/// crash before the outcome was recorded leaves it (the stack is not running). False when the
/// volume was no longer attached (the operation finished before the kill).
fn set_volume_status(home: &Path, id: &str, status: &str) -> bool {
    let db = rusqlite::Connection::open(home.join("novabox.db")).unwrap();
    let sql = "UPDATE volumes SET status = ?2 WHERE id = ?1 AND instance_uuid IS NOT NULL";
    db.execute(sql, [id, status]).unwrap() == 1
}

fn volume_file(home: &Path, id: &str) -> std::path::PathBuf {
    home.join("volumes").join(format!("volume-{id}.qcow2"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_detach_boot_from_volume_and_delete_on_the_fake_driver() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let stack = home.up(&[]);
    let demo = Api::login(&stack.ready, "demo").await;
    let alt = Api::login(&stack.ready, "alt_demo").await;
    let image = demo.upload_image().await;

    let vol = demo.create_volume(json!({"volume": {"size": 1, "name": "data"}})).await;
    demo.wait_volume(&vol, "available").await;
    assert!(volume_file(home.path(), &vol).is_file());

    let (s, v) = demo
        .call(
            Method::POST,
            "/compute/v2.1/servers",
            Some(json!({"server": {"name": "vm", "imageRef": image, "flavorRef": "1", "networks": "none"}})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let server = v["server"]["id"].as_str().unwrap().to_string();
    demo.wait_server(&server, "ACTIVE").await;
    let attachments = format!("/compute/v2.1/servers/{server}/os-volume_attachments");

    // Bad bodies name the field; another project's server or volume is not found.
    let (s, v) = demo.call(Method::POST, &attachments, Some(json!({"volumeAttachment": {}}))).await;
    assert_eq!(s, 400);
    assert!(v["badRequest"]["message"].as_str().unwrap().contains("volumeId"), "{v}");
    let (s, v) =
        demo.call(Method::POST, &attachments, Some(json!({"volumeAttachment": {"volumeId": vol, "colour": 1}}))).await;
    assert_eq!(s, 400);
    assert!(v["badRequest"]["message"].as_str().unwrap().contains("colour"), "{v}");
    let (s, _) = alt.call(Method::POST, &attachments, Some(json!({"volumeAttachment": {"volumeId": vol}}))).await;
    assert_eq!(s, 404);
    let (s, _) = alt.volume(&vol).await;
    assert_eq!(s, 404);

    let body = json!({"volumeAttachment": {"volumeId": vol, "tag": "data", "delete_on_termination": false}});
    let (s, v) = demo.call(Method::POST, &attachments, Some(body)).await;
    assert_eq!(s, 200, "{v}");
    let a = &v["volumeAttachment"];
    assert_eq!(a["volumeId"], vol.as_str());
    assert_eq!(a["serverId"], server.as_str());
    assert_eq!(a["device"], "/dev/vdb");
    assert_eq!(a["tag"], "data");
    assert_eq!(a["delete_on_termination"], false);
    let v = demo.wait_volume(&vol, "in-use").await;
    assert_eq!(v["attachments"][0]["server_id"], server.as_str());
    assert_eq!(v["attachments"][0]["device"], "/dev/vdb");
    let (s, v) = demo.call(Method::GET, &attachments, None).await;
    assert_eq!(s, 200);
    assert_eq!(v["volumeAttachments"].as_array().unwrap().len(), 1, "{v}");
    let (_, v) = demo.call(Method::GET, &format!("/compute/v2.1/servers/{server}"), None).await;
    assert_eq!(v["server"]["os-extended-volumes:volumes_attached"][0]["id"], vol.as_str(), "{v}");
    let (_, v) = demo
        .call(Method::POST, &format!("/compute/v2.1/servers/{server}/action"), Some(json!({"os-getConsoleOutput": {}})))
        .await;
    assert!(v["output"].as_str().unwrap().contains(&format!("volume {vol} attached")), "{v}");

    // In use: not deletable, not attachable twice.
    let (s, v) = demo.call(Method::DELETE, &format!("/volume/v3/{{project}}/volumes/{vol}"), None).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["badRequest"]["message"].as_str().unwrap().contains("must be available"), "{v}");
    let (s, _) = demo.call(Method::POST, &attachments, Some(json!({"volumeAttachment": {"volumeId": vol}}))).await;
    assert_eq!(s, 400);

    let (s, v) = demo.call(Method::DELETE, &format!("{attachments}/{vol}"), None).await;
    assert_eq!(s, 202, "{v}");
    let v = demo.wait_volume(&vol, "available").await;
    assert_eq!(v["attachments"], json!([]));
    let (s, _) = demo.call(Method::DELETE, &format!("{attachments}/{vol}"), None).await;
    assert_eq!(s, 404, "no longer attached");

    // Attached again with delete_on_termination: deleting the server deletes the volume.
    let body = json!({"volumeAttachment": {"volumeId": vol, "delete_on_termination": true}});
    assert_eq!(demo.call(Method::POST, &attachments, Some(body)).await.0, 200);
    demo.wait_volume(&vol, "in-use").await;
    let keep = demo.create_volume(json!({"volume": {"size": 1}})).await;
    demo.wait_volume(&keep, "available").await;
    assert_eq!(
        demo.call(Method::POST, &attachments, Some(json!({"volumeAttachment": {"volumeId": keep}}))).await.0,
        200
    );
    demo.wait_volume(&keep, "in-use").await;
    let (s, _) = demo.call(Method::DELETE, &format!("/compute/v2.1/servers/{server}"), None).await;
    assert_eq!(s, 204);
    demo.wait_server(&server, "gone").await;
    demo.wait_volume(&vol, "gone").await;
    assert!(!volume_file(home.path(), &vol).exists(), "a delete_on_termination volume's file is removed");
    demo.wait_volume(&keep, "available").await;

    // Boot from volume: made from the image during block_device_mapping, deleted with the server.
    let bfv = json!({"server": {"name": "bfv", "flavorRef": "1", "networks": "none", "block_device_mapping_v2": [
        {"boot_index": 0, "uuid": image, "source_type": "image", "destination_type": "volume", "volume_size": 1, "delete_on_termination": true}
    ]}});
    let (s, v) = demo.call(Method::POST, "/compute/v2.1/servers", Some(bfv)).await;
    assert_eq!(s, 202, "{v}");
    let server = v["server"]["id"].as_str().unwrap().to_string();
    demo.wait_server(&server, "ACTIVE").await;
    let (_, v) = demo.call(Method::GET, &format!("/compute/v2.1/servers/{server}/os-volume_attachments"), None).await;
    let root = v["volumeAttachments"][0].clone();
    assert_eq!(root["device"], "/dev/vda", "{v}");
    let root_id = root["volumeId"].as_str().unwrap().to_string();
    let rv = demo.wait_volume(&root_id, "in-use").await;
    assert_eq!(rv["bootable"], "true");
    assert_eq!(rv["volume_image_metadata"]["image_id"], image.as_str());
    let (s, v) = demo
        .call(Method::DELETE, &format!("/compute/v2.1/servers/{server}/os-volume_attachments/{root_id}"), None)
        .await;
    assert_eq!(s, 400, "the root volume stays: {v}");
    assert_eq!(demo.call(Method::DELETE, &format!("/compute/v2.1/servers/{server}"), None).await.0, 204);
    demo.wait_server(&server, "gone").await;
    demo.wait_volume(&root_id, "gone").await;

    // An existing bootable volume boots a server and stays when it goes (nova's default for
    // source volume); a blank one is refused with the reason.
    let boot = demo.create_volume(json!({"volume": {"size": 1, "imageRef": image}})).await;
    demo.wait_volume(&boot, "available").await;
    let body = |id: &str| {
        json!({"server": {"name": "from-vol", "flavorRef": "1", "networks": "none", "block_device_mapping_v2": [
            {"boot_index": 0, "uuid": id, "source_type": "volume", "destination_type": "volume"}
        ]}})
    };
    let (s, v) = demo.call(Method::POST, "/compute/v2.1/servers", Some(body(&keep))).await;
    assert_eq!(s, 400);
    assert!(v["badRequest"]["message"].as_str().unwrap().contains("not bootable"), "{v}");
    let (s, v) = demo.call(Method::POST, "/compute/v2.1/servers", Some(body(&boot))).await;
    assert_eq!(s, 202, "{v}");
    let server = v["server"]["id"].as_str().unwrap().to_string();
    demo.wait_server(&server, "ACTIVE").await;
    demo.wait_volume(&boot, "in-use").await;
    assert_eq!(demo.call(Method::DELETE, &format!("/compute/v2.1/servers/{server}"), None).await.0, 204);
    demo.wait_server(&server, "gone").await;
    demo.wait_volume(&boot, "available").await;

    for id in [&keep, &boot] {
        assert_eq!(demo.call(Method::DELETE, &format!("/volume/v3/{{project}}/volumes/{id}"), None).await.0, 202);
    }
    let left: Vec<_> =
        std::fs::read_dir(home.path().join("volumes")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "volume files left: {left:?}");
}

/// A real guest (TCG) notices a hot-plugged volume, and lets it go on detach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_guest_sees_a_volume_attached_and_detached_needs_qemu() {
    use crate::guests::{deb_cache, qemu_of, server, wait_console, Up};
    crate::guests::require_qemu();
    let home = TestHome::new();
    let out = run(home
        .init_cmd(&["--driver", "qemu", "--bus", "local", "--accel", "tcg", "--network-mode", "user"])
        .env("NOVABOX_DEB_CACHE", deb_cache()));
    assert_ok(&out);
    let up = Up::start(&home);
    let ready: Value =
        serde_json::from_str(&std::fs::read_to_string(home.path().join("run/ready.json")).unwrap()).unwrap();
    let demo = Api::login(&ready, "demo").await;

    let out = server(&home, &["create", "vol-guest", "--image", "tiny", "--flavor", "m1.tiny", "--wait", "--json"]);
    assert_ok(&out);
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let text = wait_console(&home, "vol-guest", "novabox-guest: ready", 1);
    let disks_at_boot = text.matches("novabox-guest: disk ").count();

    let vol = demo.create_volume(json!({"volume": {"size": 1, "name": "hotplug"}})).await;
    demo.wait_volume(&vol, "available").await;
    let attachments = format!("/compute/v2.1/servers/{id}/os-volume_attachments");
    let (s, v) = demo.call(Method::POST, &attachments, Some(json!({"volumeAttachment": {"volumeId": vol}}))).await;
    assert_eq!(s, 200, "{v}\n{}", up.log());
    demo.wait_volume(&vol, "in-use").await;
    let text = wait_console(&home, "vol-guest", "novabox-guest: disk ", disks_at_boot + 1);
    let new_disk = text.lines().filter(|l| l.contains("novabox-guest: disk ")).nth(disks_at_boot).unwrap().to_string();
    assert!(new_disk.contains("novabox-guest: disk vd") && new_disk.trim_end().ends_with(" 2097152"), "{new_disk}");
    let launch_file = home.path().join("instances").join(&id).join("launch.json");
    let launch = std::fs::read_to_string(&launch_file).unwrap();
    assert!(launch.contains(&vol), "the volume is kept for the next start: {launch}");
    let guest_pid = qemu_of(&id);

    // kill -9 right after the hot-plug, before launch.json or the database heard of it: the
    // state such a crash leaves is made exactly (the guest has the disk, nothing else knows).
    // The restart finishes the attach, and the guest keeps its one new disk.
    up.kill9();
    let mut saved: Value = serde_json::from_str(&launch).unwrap();
    saved["volumes"].as_array_mut().unwrap().retain(|v| v["volume_id"] != json!(vol));
    std::fs::write(&launch_file, serde_json::to_vec(&saved).unwrap()).unwrap();
    assert!(set_volume_status(home.path(), &vol, "attaching"));
    let up = Up::start(&home);
    // Without the restart finishing it the volume would stay `attaching`; had the retry
    // refused the disk the guest has already, it would be `available`.
    demo.wait_volume(&vol, "in-use").await;
    assert!(std::fs::read_to_string(&launch_file).unwrap().contains(&vol), "{}", up.log());
    assert_eq!(qemu_of(&id), guest_pid, "the guest ran on through the crash");

    // A detach whose outcome the crash kept from the database: finished at the restart.
    let (s, v) = demo.call(Method::DELETE, &format!("{attachments}/{vol}"), None).await;
    assert_eq!(s, 202, "{v}");
    up.kill9();
    // (Already `available` when the detach beat the kill: the end state is the same.)
    set_volume_status(home.path(), &vol, "detaching");
    let up = Up::start(&home);
    let v = demo.wait_volume(&vol, "available").await;
    assert_eq!(v["attachments"], json!([]), "{}", up.log());
    let launch = std::fs::read_to_string(&launch_file).unwrap();
    assert!(!launch.contains(&vol), "{launch}");
    assert_eq!(qemu_of(&id), guest_pid, "the guest kept running");
    let text = wait_console(&home, "vol-guest", "novabox-guest: ready", 1);
    assert_eq!(text.matches("novabox-guest: disk ").count(), disks_at_boot + 1, "one hot-plug, not two:\n{text}");

    assert_eq!(demo.call(Method::DELETE, &format!("/volume/v3/{{project}}/volumes/{vol}"), None).await.0, 202);
    demo.wait_volume(&vol, "gone").await;
    assert!(!volume_file(home.path(), &vol).exists());
    assert_ok(&server(&home, &["delete", "vol-guest", "--wait"]));
    assert!(qemu_of(&id).is_empty());

    // Boot from volume: the AMI's kernel and ramdisk boot, the new 1 GiB volume is the root disk.
    let image = {
        let (_, v) = demo.call(Method::GET, "/image/v2/images?name=tiny", None).await;
        v["images"][0]["id"].as_str().expect("image tiny").to_string()
    };
    let bfv = json!({"server": {"name": "bfv-guest", "flavorRef": "1", "networks": "none", "block_device_mapping_v2": [
        {"boot_index": 0, "uuid": image, "source_type": "image", "destination_type": "volume", "volume_size": 1, "delete_on_termination": true}
    ]}});
    let (s, v) = demo.call(Method::POST, "/compute/v2.1/servers", Some(bfv)).await;
    assert_eq!(s, 202, "{v}");
    let bfv_id = v["server"]["id"].as_str().unwrap().to_string();
    demo.wait_server(&bfv_id, "ACTIVE").await;
    let text = wait_console(&home, "bfv-guest", "novabox-guest: ready", 1);
    assert!(text.contains("novabox-guest: disk vda 2097152"), "the volume is the root disk:\n{text}");
    assert!(!home.path().join("instances").join(&bfv_id).join("disk").exists(), "no root overlay");
    assert_ok(&server(&home, &["delete", "bfv-guest", "--wait"]));
    assert!(qemu_of(&bfv_id).is_empty());
    let left: Vec<_> =
        std::fs::read_dir(home.path().join("volumes")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "volume files left: {left:?}");
}
