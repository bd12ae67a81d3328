//! Issues 16 and 17 against a real `novabox up` (fake driver, local bus): server metadata,
//! tags (2.26) and their list filters, `os-server-password`, and `os-instance-actions` with
//! the events each compute step records, through python-openstackclient and over HTTP with
//! nova's errors and each microversion's shapes (tempest's schemas, as key sets).

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::clients::{image_file, osc, osc_json, osc_output};
use crate::common::*;
use crate::compute::{first_image, raw, server_body, token};

fn names(list: &Value) -> BTreeSet<String> {
    list.as_array().unwrap().iter().map(|s| s["Name"].as_str().unwrap_or_default().to_string()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect()
}

/// `openstack server set|unset --property`, `--tag`, `server list --tags`, and `server event
/// list|show`, unchanged, on nova's microversions.
#[test]
fn openstackclient_properties_tags_and_server_events() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let _stack = home.up(&[]);
    let file = image_file(&home);
    osc(&home, &["image", "create", "--file", file.to_str().unwrap(), "--disk-format", "raw", "img"]);
    for name in ["vm", "other"] {
        let args = ["server", "create", "--image", "img", "--flavor", "m1.nano", "--nic", "none", "--property"];
        osc_json(&home, &[&args[..], &["role=web", "--wait", name]].concat());
    }
    let properties = |name: &str| osc_json(&home, &["server", "show", name])["properties"].clone();

    // Properties: set merges (POST /metadata), unset deletes one key at a time.
    osc(&home, &["server", "set", "--property", "k=v", "--property", "role=db", "vm"]);
    assert_eq!(properties("vm"), json!({"k": "v", "role": "db"}));
    osc(&home, &["server", "unset", "--property", "role", "vm"]);
    assert_eq!(properties("vm"), json!({"k": "v"}));
    assert_eq!(properties("other"), json!({"role": "web"}), "another server is untouched");

    // Tags from 2.26: set adds (PUT /tags/{tag}), unset removes, the list filters select.
    let v26 = ["--os-compute-api-version", "2.26"];
    osc(&home, &[&v26[..], &["server", "set", "--tag", "web", "--tag", "blue", "vm"]].concat());
    osc(&home, &[&v26[..], &["server", "set", "--tag", "db", "other"]].concat());
    let shown = osc_json(&home, &[&v26[..], &["server", "show", "vm"]].concat());
    assert_eq!(shown["tags"], json!(["blue", "web"]), "{shown}");
    let list = |filters: &[&str]| names(&osc_json(&home, &[&v26[..], &["server", "list"], filters].concat()));
    assert_eq!(list(&["--tags", "web"]), set(&["vm"]));
    assert_eq!(list(&["--tags", "web", "--tags", "blue"]), set(&["vm"]));
    assert_eq!(list(&["--tags", "web", "--tags", "db"]), set(&[]), "all of them");
    assert_eq!(list(&["--not-tags", "web"]), set(&["other"]));
    assert_eq!(list(&["--not-tags", "web", "--not-tags", "db"]), set(&["vm", "other"]), "not all of them");
    osc(&home, &[&v26[..], &["server", "unset", "--tag", "blue", "vm"]].concat());
    assert_eq!(osc_json(&home, &[&v26[..], &["server", "show", "vm"]].concat())["tags"], json!(["web"]));
    // Before 2.26 there are no tags: openstackclient says so itself.
    let refused = osc_output(&home, &["--os-compute-api-version", "2.25", "server", "set", "--tag", "x", "vm"]);
    assert!(!refused.status.success() && stderr(&refused).contains("2.26"), "{}", stderr(&refused));

    // Events: stop the server, then its actions newest first with their compute events.
    osc(&home, &["server", "stop", "vm"]);
    for _ in 0..200 {
        if osc_json(&home, &["server", "show", "vm"])["status"] == "SHUTOFF" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let v62 = ["--os-compute-api-version", "2.62"];
    let actions = osc_json(&home, &[&v62[..], &["server", "event", "list", "vm"]].concat());
    let listed: Vec<(&str, &str)> = actions
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["Action"].as_str().unwrap_or_default(), a["Request ID"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(listed.iter().map(|(a, _)| *a).collect::<Vec<_>>(), ["stop", "create"], "{actions}");
    for ((_, request_id), event) in listed.iter().zip(["compute_stop_instance", "compute__do_build_and_run_instance"]) {
        let shown = osc_json(&home, &[&v62[..], &["server", "event", "show", "vm", request_id]].concat());
        let events = shown["events"].as_array().unwrap_or_else(|| panic!("no events: {shown}"));
        assert_eq!(events.len(), 1, "{shown}");
        assert_eq!((events[0]["event"].as_str(), events[0]["result"].as_str()), (Some(event), Some("Success")));
        assert!(events[0]["host_id"].as_str().is_some_and(|h| h.len() == 56), "{shown}");
        assert!(events[0]["traceback"].is_null() && events[0]["host"].is_null(), "an owner's view: {shown}");
    }
    // The admin sees the host.
    let admin = ["--os-cloud", "novabox-admin", "--os-compute-api-version", "2.62"];
    let id = osc_json(&home, &["server", "show", "vm"])["id"].as_str().unwrap().to_string();
    let shown = osc_json(&home, &[&admin[..], &["server", "event", "show", &id, listed[0].1]].concat());
    assert!(shown["events"][0]["host"].as_str().is_some_and(|h| !h.is_empty()), "{shown}");

    // Volume hot-plug is an action too (nova's attach_volume, detach_volume), each ended by
    // compute's report.
    osc(&home, &["volume", "create", "--size", "1", "data"]);
    let volume_is = |want: &str| {
        for _ in 0..200 {
            if osc_json(&home, &["volume", "show", "data"])["status"] == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("volume never {want}\n{}", home.up_log());
    };
    volume_is("available");
    osc(&home, &["server", "add", "volume", "other", "data"]);
    volume_is("in-use");
    osc(&home, &["server", "remove", "volume", "other", "data"]);
    volume_is("available");
    let actions = osc_json(&home, &[&v62[..], &["server", "event", "list", "other"]].concat());
    let list = actions.as_array().unwrap();
    let names: Vec<&str> = list.iter().filter_map(|a| a["Action"].as_str()).collect();
    assert_eq!(names, ["detach_volume", "attach_volume", "create"], "{actions}");
    for (action, event) in list.iter().zip(["compute_detach_volume", "compute_attach_volume"]) {
        let request_id = action["Request ID"].as_str().unwrap();
        let shown = osc_json(&home, &[&v62[..], &["server", "event", "show", "other", request_id]].concat());
        assert_eq!(shown["events"][0]["event"], event, "{shown}");
        assert_eq!(shown["events"][0]["result"], "Success", "{shown}");
    }
}

/// The same over HTTP: every 400, 403, 404 and 409 nova gives, and the shapes of each
/// microversion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_tags_password_and_instance_actions_over_http() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let stack = home.up(&[]);
    let admin = token(&stack, "admin").await;
    let demo = token(&stack, "demo").await;
    let alt = token(&stack, "alt_demo").await;
    let image = first_image(&stack, &admin).await;
    let v =
        |minor: u32| ("openstack-api-version", if minor == 0 { String::new() } else { format!("compute 2.{minor}") });
    let call = |tok: &str, method: Method, path: &str, body: Option<&str>, minor: u32| {
        let (stack, tok, path, body) = (&stack, tok.to_string(), path.to_string(), body.map(str::to_string));
        let (h, value) = v(minor);
        async move {
            let headers: Vec<(&str, &str)> = if minor == 0 { vec![] } else { vec![(h, value.as_str())] };
            raw(stack, Some(&tok), method, &format!("/compute/v2.1{path}"), body.as_deref(), &headers).await
        }
    };
    let boot = |name: &'static str| {
        let call = &call;
        let image = image.clone();
        let demo = demo.clone();
        async move {
            let (s, _, b) = call(&demo, Method::POST, "/servers", Some(&server_body(&image, "42", name)), 79).await;
            assert_eq!(s, 202, "{b}");
            let id = b["server"]["id"].as_str().unwrap().to_string();
            for _ in 0..200 {
                let (_, _, s) = call(&demo, Method::GET, &format!("/servers/{id}"), None, 79).await;
                if s["server"]["status"] == "ACTIVE" {
                    return (id, s["server"]["tenant_id"].as_str().unwrap().to_string());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{name} never became ACTIVE");
        }
    };
    let (id, project) = boot("vm").await;
    let meta = format!("/servers/{id}/metadata");

    // Metadata: POST merges, PUT replaces, the item verbs; nova's answers.
    let (s, _, b) = call(&demo, Method::POST, &meta, Some(r#"{"metadata": {"a": "1", "b": "2"}}"#), 1).await;
    assert_eq!((s.as_u16(), b.clone()), (200, json!({"metadata": {"a": "1", "b": "2"}})));
    let (s, _, b) = call(&demo, Method::PUT, &meta, Some(r#"{"metadata": {"c": "3"}}"#), 1).await;
    assert_eq!((s.as_u16(), b), (200, json!({"metadata": {"c": "3"}})));
    let (s, _, b) = call(&demo, Method::PUT, &format!("{meta}/d"), Some(r#"{"meta": {"d": "4"}}"#), 1).await;
    assert_eq!((s.as_u16(), b), (200, json!({"meta": {"d": "4"}})));
    let (s, _, b) = call(&demo, Method::GET, &format!("{meta}/d"), None, 1).await;
    assert_eq!((s.as_u16(), b), (200, json!({"meta": {"d": "4"}})));
    let (s, _, b) = call(&demo, Method::GET, &meta, None, 1).await;
    assert_eq!((s.as_u16(), b), (200, json!({"metadata": {"c": "3", "d": "4"}})));
    let (s, _, _) = call(&demo, Method::DELETE, &format!("{meta}/c"), None, 1).await;
    assert_eq!(s, 204);
    for (method, path, body, status, text) in [
        (Method::GET, format!("{meta}/c"), None, 404, "Metadata item was not found"),
        (Method::DELETE, format!("{meta}/c"), None, 404, "Metadata item was not found"),
        (Method::PUT, format!("{meta}/x"), Some(r#"{"meta": {"y": "1"}}"#), 400, "Request body and URI mismatch"),
        (Method::PUT, format!("{meta}/x"), Some(r#"{"meta": {"x": "1", "y": "2"}}"#), 400, "has too many properties"),
        (Method::POST, meta.clone(), Some(r#"{"metadata": {"k": 1}}"#), 400, "is not of type 'string'"),
        (Method::POST, meta.clone(), Some(r#"{"metadata": {}, "x": 1}"#), 400, "('x' was unexpected)"),
        (Method::POST, meta.clone(), Some(r#"{"meta": {}}"#), 400, "('meta' was unexpected)"),
        (Method::PUT, meta.clone(), Some(r#"{"metadata": {"a/b": "1"}}"#), 400, "was unexpected"),
    ] {
        let (s, _, b) = call(&demo, method.clone(), &path, body, 1).await;
        assert_eq!(s.as_u16(), status, "{method} {path} {body:?}: {b}");
        assert!(b.to_string().contains(text), "{method} {path}: {b}");
    }
    let long = json!({"metadata": {"k": "x".repeat(256)}}).to_string();
    assert_eq!(call(&demo, Method::POST, &meta, Some(&long), 1).await.0, 400);
    // Another project's server is not found; nothing changed.
    let (s, _, b) = call(&alt, Method::POST, &meta, Some(r#"{"metadata": {"z": "1"}}"#), 1).await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(call(&demo, Method::GET, &meta, None, 1).await.2, json!({"metadata": {"d": "4"}}));

    // The metadata_items quota counts what the server would end with: 403.
    let quota = json!({"quota_set": {"metadata_items": 2}}).to_string();
    assert_eq!(call(&admin, Method::PUT, &format!("/os-quota-sets/{project}"), Some(&quota), 1).await.0, 200);
    let (s, _, b) = call(&demo, Method::POST, &meta, Some(r#"{"metadata": {"e": "5", "f": "6"}}"#), 1).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["forbidden"]["message"], "Maximum number of metadata items exceeds 2");
    assert_eq!(call(&demo, Method::POST, &meta, Some(r#"{"metadata": {"e": "5"}}"#), 1).await.0, 200);
    assert_eq!(
        call(&demo, Method::PUT, &meta, Some(r#"{"metadata": {"a": "1", "b": "2", "c": "3"}}"#), 1).await.0,
        403
    );

    // Tags: 404 before 2.26; nova's limits and texts after.
    let tags = format!("/servers/{id}/tags");
    assert_eq!(call(&demo, Method::GET, &tags, None, 25).await.0, 404);
    let (s, h, _) = call(&demo, Method::PUT, &format!("{tags}/web"), None, 26).await;
    assert_eq!(s, 201);
    assert!(h["location"].to_str().unwrap().ends_with(&format!("/compute/v2.1/servers/{id}/tags/web")));
    assert_eq!(call(&demo, Method::PUT, &format!("{tags}/web"), None, 26).await.0, 204, "had it");
    assert_eq!(call(&demo, Method::GET, &format!("{tags}/web"), None, 26).await.0, 204);
    let (s, _, b) = call(&demo, Method::GET, &format!("{tags}/db"), None, 26).await;
    assert_eq!(
        (s.as_u16(), b["itemNotFound"]["message"].clone()),
        (404, json!(format!("Server {id} has no tag 'db'")))
    );
    let (s, _, b) = call(&demo, Method::DELETE, &format!("{tags}/db"), None, 26).await;
    assert_eq!(
        (s.as_u16(), b["itemNotFound"]["message"].clone()),
        (404, json!(format!("Instance {id} has no tag 'db'")))
    );
    let (s, _, b) = call(&demo, Method::PUT, &format!("{tags}/a,b"), None, 26).await;
    assert_eq!(s, 400, "{b}");
    assert!(b["badRequest"]["message"].as_str().unwrap().starts_with("Tag 'a,b' is invalid."), "{b}");
    let (s, _, b) = call(&demo, Method::PUT, &format!("{tags}/{}", "x".repeat(61)), None, 26).await;
    assert!(s == 400 && b.to_string().contains("is too long"), "{b}");
    let (s, _, b) = call(&demo, Method::PUT, &tags, Some(r#"{"tags": ["b", "a", "b"]}"#), 26).await;
    assert_eq!((s.as_u16(), b), (200, json!({"tags": ["a", "b"]})));
    let fifty: Vec<String> = (0..50).map(|i| format!("t{i:02}")).collect();
    let body = json!({ "tags": fifty }).to_string();
    assert_eq!(call(&demo, Method::PUT, &tags, Some(&body), 26).await.0, 200);
    let (s, _, b) = call(&demo, Method::PUT, &format!("{tags}/one-more"), None, 26).await;
    assert_eq!(
        (s.as_u16(), b["badRequest"]["message"].clone()),
        (400, json!("The number of tags exceeded the per-server limit 50"))
    );
    let fifty_one = json!({ "tags": (0..51).map(|i| format!("t{i}")).collect::<Vec<_>>() }).to_string();
    assert_eq!(call(&demo, Method::PUT, &tags, Some(&fifty_one), 26).await.0, 400);
    assert_eq!(call(&demo, Method::PUT, &tags, Some(r#"{"tags": ["ok", "a/b"]}"#), 26).await.0, 400);
    assert_eq!(call(&demo, Method::PUT, &tags, Some(r#"{"tagz": []}"#), 26).await.0, 400);
    assert_eq!(call(&demo, Method::DELETE, &tags, None, 26).await.0, 204);
    assert_eq!(call(&demo, Method::GET, &tags, None, 26).await.2, json!({"tags": []}));
    assert_eq!(call(&alt, Method::PUT, &format!("{tags}/x"), None, 26).await.0, 404);
    assert_eq!(call(&demo, Method::PUT, &format!("{tags}/web"), None, 26).await.0, 201);
    // The server view carries them from 2.26 only.
    let server = call(&demo, Method::GET, &format!("/servers/{id}"), None, 26).await.2;
    assert_eq!(server["server"]["tags"], json!(["web"]));
    assert!(call(&demo, Method::GET, &format!("/servers/{id}"), None, 25).await.2["server"].get("tags").is_none());
    // The list filters; before 2.26 they are not filters at all.
    let (other, _) = boot("other").await;
    let listed = |query: &'static str, minor: u32| {
        let call = &call;
        let demo = demo.clone();
        async move {
            let b = call(&demo, Method::GET, &format!("/servers?{query}"), None, minor).await.2;
            b["servers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
                .collect::<BTreeSet<_>>()
        }
    };
    assert_eq!(listed("tags=web", 26).await, set(&["vm"]));
    assert_eq!(listed("tags-any=web,nothing", 26).await, set(&["vm"]));
    assert_eq!(listed("not-tags=web", 26).await, set(&["other"]));
    assert_eq!(listed("not-tags-any=web,x", 26).await, set(&["other"]));
    assert_eq!(listed("tags=web", 25).await, set(&["vm", "other"]));

    // Locked (by an admin), a server refuses its owner's metadata changes, not an admin's.
    let lock = r#"{"lock": null}"#;
    assert_eq!(call(&admin, Method::POST, &format!("/servers/{id}/action"), Some(lock), 1).await.0, 202);
    let (s, _, b) = call(&demo, Method::POST, &meta, Some(r#"{"metadata": {"g": "7"}}"#), 1).await;
    assert_eq!(
        (s.as_u16(), b["conflictingRequest"]["message"].clone()),
        (409, json!(format!("Instance {id} is locked")))
    );
    assert_eq!(call(&demo, Method::DELETE, &format!("{meta}/d"), None, 1).await.0, 409);
    assert_eq!(call(&admin, Method::DELETE, &format!("{meta}/d"), None, 1).await.0, 204);
    assert_eq!(
        call(&admin, Method::POST, &format!("/servers/{id}/action"), Some(r#"{"unlock": null}"#), 1).await.0,
        202
    );
    // In ERROR neither metadata nor tags change: nova's 409 words.
    let role = r#"{"metadata": {"role": "db"}}"#;
    assert_eq!(call(&demo, Method::POST, &format!("/servers/{other}/metadata"), Some(role), 1).await.0, 200);
    let reset = r#"{"os-resetState": {"state": "error"}}"#;
    assert_eq!(call(&admin, Method::POST, &format!("/servers/{other}/action"), Some(reset), 1).await.0, 202);
    let other_meta = format!("/servers/{other}/metadata");
    for (method, path, body, minor, action) in [
        (Method::POST, other_meta.clone(), Some(r#"{"metadata": {"g": "7"}}"#), 1, "update metadata"),
        (Method::DELETE, format!("{other_meta}/role"), None, 1, "delete metadata"),
        (Method::PUT, format!("/servers/{other}/tags/x"), None, 26, "update tag"),
        (Method::PUT, format!("/servers/{other}/tags"), Some(r#"{"tags": []}"#), 26, "update tags"),
        (Method::DELETE, format!("/servers/{other}/tags"), None, 26, "delete tags"),
    ] {
        let (s, _, b) = call(&demo, method, &path, body, minor).await;
        let want = format!("Cannot '{action}' instance {other} while it is in vm_state error");
        assert_eq!((s.as_u16(), b["conflictingRequest"]["message"].clone()), (409, json!(want)), "{path}");
    }
    // ... and reading them still works.
    assert_eq!(call(&demo, Method::GET, &other_meta, None, 1).await.0, 200);

    // os-server-password: "" until the guest posts one; DELETE clears; others' 404.
    let password = format!("/servers/{id}/os-server-password");
    assert_eq!(call(&demo, Method::GET, &password, None, 1).await.2, json!({"password": ""}));
    assert_eq!(call(&demo, Method::DELETE, &password, None, 1).await.0, 204);
    assert_eq!(call(&alt, Method::GET, &password, None, 1).await.0, 404);
    assert_eq!(call(&demo, Method::GET, "/servers/no-such-server/os-server-password", None, 1).await.0, 404);

    // Instance actions: a reboot's events as each microversion and persona sees them.
    let (s, _, _) =
        call(&demo, Method::POST, &format!("/servers/{id}/action"), Some(r#"{"reboot": {"type": "SOFT"}}"#), 1).await;
    assert_eq!(s, 202);
    let actions = format!("/servers/{id}/os-instance-actions");
    let mut reboot = Value::Null;
    for _ in 0..200 {
        let list = call(&demo, Method::GET, &actions, None, 58).await.2;
        reboot = list["instanceActions"][0].clone();
        let request_id = reboot["request_id"].as_str().unwrap_or_default().to_string();
        let shown = call(&demo, Method::GET, &format!("{actions}/{request_id}"), None, 51).await.2;
        if reboot["action"] == "reboot" && shown["instanceAction"]["events"][0]["result"] == "Success" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reboot["action"], "reboot", "{reboot}");
    let request_id = reboot["request_id"].as_str().unwrap().to_string();
    let one = format!("{actions}/{request_id}");
    let action_keys = set(&["action", "instance_uuid", "request_id", "user_id", "project_id", "start_time", "message"]);
    let with = |base: &BTreeSet<String>, more: &[&str]| {
        base.iter().cloned().chain(more.iter().map(|s| s.to_string())).collect::<BTreeSet<_>>()
    };
    let event_keys = set(&["event", "start_time", "finish_time", "result"]);
    // 2.1: the list's keys; the owner sees no events, the admin sees them with the traceback.
    let list = call(&demo, Method::GET, &actions, None, 1).await.2;
    assert_eq!(keys(&list), set(&["instanceActions"]));
    assert_eq!(keys(&list["instanceActions"][0]), action_keys);
    let owner_21 = call(&demo, Method::GET, &one, None, 1).await.2["instanceAction"].clone();
    assert_eq!(keys(&owner_21), action_keys, "{owner_21}");
    let admin_21 = call(&admin, Method::GET, &one, None, 1).await.2["instanceAction"].clone();
    assert_eq!(keys(&admin_21), with(&action_keys, &["events"]));
    assert_eq!(keys(&admin_21["events"][0]), with(&event_keys, &["traceback"]));
    assert_eq!(admin_21["events"][0]["event"], "compute_reboot_instance");
    // 2.51: the owner sees events, not the traceback.
    let owner_51 = call(&demo, Method::GET, &one, None, 51).await.2["instanceAction"].clone();
    assert_eq!(keys(&owner_51["events"][0]), event_keys, "{owner_51}");
    // 2.58: updated_at.
    let owner_58 = call(&demo, Method::GET, &one, None, 58).await.2["instanceAction"].clone();
    assert_eq!(keys(&owner_58), with(&action_keys, &["events", "updated_at"]));
    assert!(owner_58["updated_at"].as_str().is_some_and(|u| u >= owner_58["start_time"].as_str().unwrap()));
    // 2.62: hostId for everyone, host for the admin; no details before 2.84.
    let owner_62 = call(&demo, Method::GET, &one, None, 62).await.2["instanceAction"].clone();
    assert_eq!(keys(&owner_62["events"][0]), with(&event_keys, &["hostId"]));
    let admin_79 = call(&admin, Method::GET, &one, None, 79).await.2["instanceAction"].clone();
    assert_eq!(keys(&admin_79["events"][0]), with(&event_keys, &["hostId", "host", "traceback"]));
    assert_eq!(admin_79["events"][0]["hostId"], owner_62["events"][0]["hostId"]);
    let (s, _, b) = call(&demo, Method::GET, &format!("{actions}/req-none"), None, 1).await;
    assert_eq!((s.as_u16(), b["itemNotFound"]["message"].clone()), (404, json!("Action req-none not found")));
    // 2.58's paging and window.
    let page = call(&demo, Method::GET, &format!("{actions}?limit=1"), None, 58).await.2;
    assert_eq!(page["instanceActions"].as_array().map(Vec::len), Some(1));
    let next = page["links"][0]["href"].as_str().unwrap_or_else(|| panic!("no next link: {page}"));
    assert!(next.contains(&format!("marker={request_id}")) && next.contains("limit=1"), "{next}");
    let rest = call(&demo, Method::GET, &format!("{actions}?marker={request_id}"), None, 58).await.2;
    assert!(rest["instanceActions"].as_array().unwrap().iter().all(|a| a["request_id"] != request_id.as_str()));
    assert!(rest.get("links").is_none(), "{rest}");
    for (query, minor, text) in [
        ("marker=req-none", 58, "Marker req-none could not be found."),
        ("limit=-1", 58, "does not match"),
        ("changes-since=yesterday", 58, "changes-since"),
        ("bogus=1", 58, "('bogus' was unexpected)"),
        ("changes-before=2030-01-01T00:00:00Z", 65, "('changes-before' was unexpected)"),
    ] {
        let (s, _, b) = call(&demo, Method::GET, &format!("{actions}?{query}"), None, minor).await;
        assert_eq!(s, 400, "{query}: {b}");
        assert!(b["badRequest"]["message"].as_str().unwrap().contains(text), "{query}: {b}");
    }
    assert_eq!(call(&demo, Method::GET, &format!("{actions}?bogus=1"), None, 57).await.0, 200, "ignored before 2.58");
    let later = call(&demo, Method::GET, &format!("{actions}?changes-since=2999-01-01T00:00:00Z"), None, 58).await.2;
    assert_eq!(later["instanceActions"], json!([]));

    // 2.21: a deleted server's actions stay readable, the delete's event among them.
    assert_eq!(call(&demo, Method::DELETE, &format!("/servers/{other}"), None, 1).await.0, 204);
    let other_actions = format!("/servers/{other}/os-instance-actions");
    let mut deleted = Value::Null;
    for _ in 0..200 {
        deleted = call(&demo, Method::GET, &other_actions, None, 21).await.2;
        if deleted["instanceActions"][0]["action"] == "delete"
            && call(&demo, Method::GET, &format!("/servers/{other}"), None, 1).await.0 == 404
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(deleted["instanceActions"][0]["action"], "delete", "{deleted}");
    assert_eq!(call(&demo, Method::GET, &other_actions, None, 20).await.0, 404);
    let delete_id = deleted["instanceActions"][0]["request_id"].as_str().unwrap().to_string();
    let shown = call(&admin, Method::GET, &format!("{other_actions}/{delete_id}"), None, 21).await.2;
    assert_eq!(shown["instanceAction"]["events"][0]["event"], "compute_terminate_instance", "{shown}");
    assert_eq!(shown["instanceAction"]["events"][0]["result"], "Success", "{shown}");

    // Tags at create from 2.52 (each server of a multiple create gets them), refused before.
    let tagged = |minor: u32, tags: Value| {
        let body = json!({"server": {"name": "tagged", "imageRef": image, "flavorRef": "42", "networks": "none",
            "tags": tags, "min_count": 2}});
        let call = &call;
        let demo = demo.clone();
        async move { call(&demo, Method::POST, "/servers", Some(&body.to_string()), minor).await }
    };
    let (s, _, b) = tagged(51, json!(["a"])).await;
    assert_eq!(
        (s.as_u16(), b["badRequest"]["message"].clone()),
        (400, json!("Additional properties are not allowed ('tags' was unexpected)"))
    );
    assert_eq!(tagged(52, json!(["a,b"])).await.0, 400);
    let (s, _, b) = tagged(52, json!(["b", "a"])).await;
    assert_eq!(s, 202, "{b}");
    let list = call(&demo, Method::GET, "/servers?tags=a,b", None, 52).await.2;
    let servers = list["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{list}");
    for server in servers {
        let id = server["id"].as_str().unwrap();
        assert_eq!(
            call(&demo, Method::GET, &format!("/servers/{id}/tags"), None, 52).await.2,
            json!({"tags": ["a", "b"]})
        );
    }
}
