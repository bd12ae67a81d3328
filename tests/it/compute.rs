//! The compute API against a real `novabox up` (fake driver, local bus): nova's error
//! shapes and codes, tenancy, quotas, scheduling failures, microversions.

use std::time::Duration;

use novabox::client::ClientError;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

pub(crate) async fn raw(
    stack: &Stack,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let base = stack.auth_url().replace("/identity/v3", "");
    let mut req = reqwest::Client::new().request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("x-auth-token", t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub(crate) async fn token(stack: &Stack, user: &str) -> String {
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {"name": user, "domain": {"id": "default"}, "password": stack.password(user)}}},
        "scope": {"project": {"name": user, "domain": {"id": "default"}}},
    }});
    let base = stack.auth_url();
    let resp = reqwest::Client::new().post(format!("{base}/auth/tokens")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    resp.headers()["x-subject-token"].to_str().unwrap().to_string()
}

pub(crate) async fn first_image(stack: &Stack, tok: &str) -> String {
    let (status, _, v) = raw(stack, Some(tok), Method::GET, "/image/v2/images", None, &[]).await;
    assert_eq!(status, 200);
    if let Some(id) = v["images"].as_array().and_then(|l| l.first()).and_then(|i| i["id"].as_str()) {
        return id.to_string();
    }
    let (status, _, img) = raw(
        stack,
        Some(tok),
        Method::POST,
        "/image/v2/images",
        Some(r#"{"name": "blob", "disk_format": "raw", "container_format": "bare", "visibility": "public"}"#),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{img}");
    let id = img["id"].as_str().unwrap().to_string();
    let base = stack.auth_url().replace("/identity/v3", "");
    let resp = reqwest::Client::new()
        .put(format!("{base}/image/v2/images/{id}/file"))
        .header("x-auth-token", tok)
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    id
}

pub(crate) fn server_body(image: &str, flavor: &str, name: &str) -> String {
    json!({"server": {"name": name, "imageRef": image, "flavorRef": flavor, "networks": "none"}}).to_string()
}

const V279: (&str, &str) = ("openstack-api-version", "compute 2.79");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nova_errors_tenancy_quotas_and_microversions() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let stack = home.up(&[]);
    let admin = token(&stack, "admin").await;
    let demo = token(&stack, "demo").await;
    let alt = token(&stack, "alt_demo").await;
    let image = first_image(&stack, &admin).await;

    // Version documents need no token; microversion negotiation.
    let (s, _, v) = raw(&stack, None, Method::GET, "/compute/", None, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(v["versions"][0]["version"], "2.79");
    let (s, h, v) = raw(
        &stack,
        Some(&demo),
        Method::GET,
        "/compute/v2.1/flavors",
        None,
        &[("openstack-api-version", "compute 2.999")],
    )
    .await;
    assert_eq!(s, 406, "{v}");
    assert!(v["notAcceptable"]["message"].as_str().unwrap().contains("2.79"), "{v}");
    assert_eq!(h["openstack-api-version"], "compute 2.1");
    let (s, h, _) = raw(&stack, Some(&demo), Method::GET, "/compute/v2.1/flavors", None, &[V279]).await;
    assert_eq!(s, 200);
    assert_eq!(h["openstack-api-version"], "compute 2.79");
    assert!(h["vary"].to_str().unwrap().contains("OpenStack-API-Version"));

    // Authentication.
    let (s, _, v) = raw(&stack, Some("not-a-token"), Method::GET, "/compute/v2.1/servers", None, &[]).await;
    assert_eq!(s, 401);
    assert!(v["unauthorized"]["message"].is_string(), "{v}");
    let (s, h, v) = raw(&stack, None, Method::POST, "/identity/v3/auth/tokens",
        Some(r#"{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "demo", "domain": {"id": "default"}, "password": "wrong"}}}}}"#), &[]).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], 401);
    assert!(h.contains_key("www-authenticate"));

    // Malformed and invalid bodies: 400 with the field named.
    let (s, _, v) = raw(&stack, Some(&demo), Method::POST, "/compute/v2.1/servers", Some("{not json"), &[V279]).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["badRequest"]["message"].is_string(), "{v}");
    let extra =
        json!({"server": {"name": "a", "imageRef": image, "flavorRef": "42", "networks": "none", "colour": "red"}});
    let (s, _, v) =
        raw(&stack, Some(&demo), Method::POST, "/compute/v2.1/servers", Some(&extra.to_string()), &[V279]).await;
    assert_eq!(s, 400);
    assert!(v["badRequest"]["message"].as_str().unwrap().contains("colour"), "{v}");
    let long = server_body(&image, "42", &"x".repeat(256));
    let (s, _, _) = raw(&stack, Some(&demo), Method::POST, "/compute/v2.1/servers", Some(&long), &[V279]).await;
    assert_eq!(s, 400);
    let (s, _, v) = raw(
        &stack,
        Some(&demo),
        Method::POST,
        "/compute/v2.1/servers",
        Some(&server_body("no-such-image", "42", "a")),
        &[V279],
    )
    .await;
    assert_eq!(s, 400);
    assert!(v["badRequest"]["message"].as_str().unwrap().contains("no-such-image"), "{v}");
    let (s, _, v) = raw(
        &stack,
        Some(&demo),
        Method::POST,
        "/compute/v2.1/servers",
        Some(&server_body(&image, "999", "a")),
        &[V279],
    )
    .await;
    assert_eq!(s, 400);
    assert!(v["badRequest"]["message"].as_str().unwrap().contains("Flavor 999"), "{v}");
    let (s, _, v) = raw(&stack, Some(&demo), Method::GET, "/compute/v2.1/no-such-thing", None, &[]).await;
    assert_eq!(s, 404);
    assert!(v["itemNotFound"].is_object(), "{v}");
    let (s, _, v) = raw(&stack, Some(&demo), Method::PATCH, "/compute/v2.1/servers", None, &[]).await;
    assert_eq!(s, 405, "{v}");

    // A server of demo's is invisible to alt_demo, visible to admin with all_tenants.
    let (s, _, v) = raw(
        &stack,
        Some(&demo),
        Method::POST,
        "/compute/v2.1/servers",
        Some(&server_body(&image, "42", "mine")),
        &[V279],
    )
    .await;
    assert_eq!(s, 202, "{v}");
    assert!(v["server"]["adminPass"].is_string());
    let id = v["server"]["id"].as_str().unwrap().to_string();
    let client = stack.client("demo").await;
    let server = client.wait_for(&id, "ACTIVE", Duration::from_secs(30)).await.expect("ACTIVE");
    assert_eq!(server["OS-EXT-STS:vm_state"], "active");
    assert!(server["OS-SRV-USG:launched_at"].as_str().unwrap().ends_with(".000000"), "{server}");
    assert!(server["created"].as_str().unwrap().ends_with('Z'));
    // A client written for nova polls with a regular expression for the name.
    // And a limit above nova's max_limit is capped, not refused.
    let queries =
        [("status=ACTIVE&name=^mi", 1), ("name=^mine$", 1), ("name=in", 1), ("name=^ine", 0), ("limit=5000", 1)];
    for (query, want) in queries {
        let (s, _, v) =
            raw(&stack, Some(&demo), Method::GET, &format!("/compute/v2.1/servers?{query}"), None, &[]).await;
        assert_eq!((s.as_u16(), v["servers"].as_array().map(Vec::len)), (200, Some(want)), "{query}: {v}");
    }
    let (s, _, v) = raw(&stack, Some(&demo), Method::GET, "/compute/v2.1/servers?name=(", None, &[]).await;
    assert_eq!(s, 400, "a name filter that is not a regular expression: {v}");
    // Standard bodies carry only standard keys: tempest's schemas allow no other.
    let keys: Vec<&String> = server.as_object().unwrap().keys().filter(|k| k.starts_with("novabox")).collect();
    assert!(keys.is_empty(), "novabox keys in nova's server body: {keys:?}");
    for path in [format!("/compute/v2.1/servers/{id}")] {
        let (s, _, v) = raw(&stack, Some(&alt), Method::GET, &path, None, &[]).await;
        assert_eq!(s, 404, "{v}");
        assert!(v["itemNotFound"].is_object(), "{v}");
        let (s, _, _) = raw(&stack, Some(&alt), Method::DELETE, &path, None, &[]).await;
        assert_eq!(s, 404);
    }
    let (_, _, v) = raw(&stack, Some(&alt), Method::GET, "/compute/v2.1/servers", None, &[]).await;
    assert_eq!(v["servers"].as_array().unwrap().len(), 0);
    let (_, _, v) = raw(&stack, Some(&admin), Method::GET, "/compute/v2.1/servers?all_tenants=1", None, &[]).await;
    assert_eq!(v["servers"].as_array().unwrap().len(), 1);
    let (s, _, _) = raw(&stack, Some(&demo), Method::GET, "/compute/v2.1/os-hypervisors", None, &[]).await;
    assert_eq!(s, 403, "non-admins cannot use admin APIs");
    let (s, _, v) = raw(&stack, Some(&admin), Method::GET, "/compute/v2.1/os-hypervisors/detail", None, &[V279]).await;
    assert_eq!(s, 200);
    assert_eq!(v["hypervisors"][0]["running_vms"], 1, "{v}");

    // Actions in the wrong state are 409.
    let (s, _, v) = raw(
        &stack,
        Some(&demo),
        Method::POST,
        &format!("/compute/v2.1/servers/{id}/action"),
        Some(r#"{"os-start": null}"#),
        &[],
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["conflictingRequest"]["message"].as_str().unwrap().contains("vm_state active"), "{v}");
    let (s, _, _) = raw(
        &stack,
        Some(&demo),
        Method::POST,
        &format!("/compute/v2.1/servers/{id}/action"),
        Some(r#"{"os-fly": null}"#),
        &[],
    )
    .await;
    assert_eq!(s, 400);

    // Quotas: m1.xlarge x3 is 24 cores, over the default 20.
    let three =
        json!({"server": {"name": "big", "imageRef": image, "flavorRef": "5", "networks": "none", "min_count": 3}});
    let (s, _, v) =
        raw(&stack, Some(&demo), Method::POST, "/compute/v2.1/servers", Some(&three.to_string()), &[V279]).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["forbidden"]["message"].as_str().unwrap().contains("Quota exceeded for cores"), "{v}");

    // A flavor no host can hold ends in ERROR with nova's fault, not in BUILD forever.
    let huge = json!({"flavor": {"name": "huge", "ram": 64, "vcpus": 1, "disk": 1_000_000_000, "id": "huge"}});
    let (s, _, v) =
        raw(&stack, Some(&admin), Method::POST, "/compute/v2.1/flavors", Some(&huge.to_string()), &[]).await;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = raw(
        &stack,
        Some(&admin),
        Method::POST,
        "/compute/v2.1/servers",
        Some(&server_body(&image, "huge", "nohost")),
        &[V279],
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let nohost = v["server"]["id"].as_str().unwrap().to_string();
    let admin_client = stack.client("admin").await;
    let err = admin_client.wait_for(&nohost, "ACTIVE", Duration::from_secs(30)).await.unwrap_err();
    assert!(err.to_string().contains("No valid host"), "{err}");
    let shown = admin_client.compute(Method::GET, &format!("/servers/{nohost}"), None).await.unwrap();
    assert_eq!(shown["server"]["status"], "ERROR");
    assert_eq!(shown["server"]["fault"]["code"], 500);
    // An ERROR server with no host is deleted at once.
    admin_client.compute(Method::DELETE, &format!("/servers/{nohost}"), None).await.unwrap();
    match admin_client.compute(Method::GET, &format!("/servers/{nohost}"), None).await {
        Err(ClientError::Api { status, .. }) => assert_eq!(status, 404),
        other => panic!("still there: {other:?}"),
    }

    // Delete and wait until it is gone.
    client.compute(Method::DELETE, &format!("/servers/{id}"), None).await.unwrap();
    client.wait_for(&id, "DELETED", Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_stored_and_compute_restart_reconciles() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let stack = home.up(&[]);
    let admin = token(&stack, "admin").await;
    let image = first_image(&stack, &admin).await;
    let client = stack.client("demo").await;
    let created = client
        .compute(Method::POST, "/servers", Some(serde_json::from_str(&server_body(&image, "42", "keeper")).unwrap()))
        .await
        .unwrap();
    let id = created["server"]["id"].as_str().unwrap().to_string();
    client.wait_for(&id, "ACTIVE", Duration::from_secs(30)).await.unwrap();
    // create.end is published after the instance turns ACTIVE; the in-process bus keeps
    // nothing across a stop, so let it be stored before stopping.
    for _ in 0..100 {
        if events_of(&home, &id).len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The fake driver forgets its guests when the process goes; on the next `up` the compute
    // manager finds the instance ACTIVE in the database and starts it again.
    let status = stack.stop();
    assert!(status.success());
    let stack = home.up(&[]);
    let client = stack.client("demo").await;
    let s = client.wait_for(&id, "ACTIVE", Duration::from_secs(30)).await.unwrap();
    assert_eq!(s["OS-EXT-STS:power_state"], 1);
    let out = client
        .compute(Method::POST, &format!("/servers/{id}/action"), Some(json!({"os-getConsoleOutput": {}})))
        .await
        .unwrap();
    assert!(out["output"].as_str().unwrap().contains("keeper"), "{out}");

    assert_eq!(events_of(&home, &id), vec!["compute.instance.create.start", "compute.instance.create.end"]);
}

/// The notifications stored for an instance, oldest first.
fn events_of(home: &TestHome, id: &str) -> Vec<String> {
    let db = rusqlite::Connection::open(home.path().join("novabox.db")).unwrap();
    let mut stmt = db.prepare("SELECT event_type FROM notifications WHERE instance_uuid = ?1 ORDER BY id").unwrap();
    let events = stmt.query_map([id], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
    events
}

/// A second compute host is another process (another home, another host name) pointed at the
/// first home's broker: it registers, the scheduler sees it, and a boot can land on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_compute_host_joins_over_rabbitmq() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "rabbitmq"]));
    let stack = home.up(&[]);
    let config = std::fs::read_to_string(home.path().join("novabox.toml")).unwrap();
    let bus_port = config
        .lines()
        .skip_while(|l| l.trim() != "[bus]")
        .find_map(|l| l.trim().strip_prefix("port = "))
        .unwrap()
        .to_string();
    let secrets: toml::Value =
        toml::from_str(&std::fs::read_to_string(home.path().join("secrets.toml")).unwrap()).unwrap();
    let url = format!("amqp://novabox:{}@127.0.0.1:{bus_port}/%2f", secrets["rabbit_password"].as_str().unwrap());

    let second = TestHome::new();
    assert_ok(&second.init(&["--driver", "fake", "--bus", "rabbitmq"]));
    let cfg = second.path().join("novabox.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replacen("[host]\n", "[host]\nname = \"second-host\"\n", 1);
    let text =
        text.lines().filter(|l| !l.starts_with("name = ") || l.contains("second-host")).collect::<Vec<_>>().join("\n");
    let text = text.replacen("[bus]\n", &format!("[bus]\nurl = \"{url}\"\n"), 1);
    std::fs::write(&cfg, text).unwrap();
    let mut compute = second.novabox();
    compute.args(["service", "compute"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = novabox::supervise::stop_pid(self.0.id() as i32, Duration::from_secs(10));
            let _ = self.0.wait();
        }
    }
    let _reap = Reap(compute.spawn().unwrap());

    let admin = stack.client("admin").await;
    let mut hosts = Vec::new();
    // The second host starts its own process and joins the broker: seconds on a loaded machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        let h = admin.compute(Method::GET, "/os-hypervisors", None).await.unwrap();
        hosts = h["hypervisors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["hypervisor_hostname"].as_str().unwrap().to_string())
            .collect();
        if hosts.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hosts.contains(&"second-host".to_string()), "{hosts:?}\n{}", home.up_log());

    let tok = token(&stack, "admin").await;
    let image = first_image(&stack, &tok).await;
    let body = json!({"server": {"name": "remote", "imageRef": image, "flavorRef": "42", "networks": "none"},
        "OS-SCH-HNT:scheduler_hints": {"force_host": "second-host"}});
    let created = admin.compute(Method::POST, "/servers", Some(body)).await.unwrap();
    let id = created["server"]["id"].as_str().unwrap().to_string();
    let server = admin.wait_for(&id, "ACTIVE", Duration::from_secs(60)).await.unwrap();
    assert_eq!(server["OS-EXT-SRV-ATTR:host"], "second-host");
    // The remote compute has no database: its spans reach the trace through the conductor.
    // `trace` right after ACTIVE waits for both writers (the local one, and the conductor
    // storing what the remote compute ships).
    let out = run(home.novabox().args(["trace", &id]));
    assert_ok(&out);
    let tree = stdout(&out);
    assert!(!tree.contains("incomplete"), "{tree}");
    let select = tree.find("[scheduler] select_host").unwrap_or_else(|| panic!("no scheduler step:\n{tree}"));
    let build = tree.find("[compute] handle build_and_run_instance on compute.second-host");
    let spawning = tree.find("[compute] spawning");
    assert!(build.is_some_and(|b| select < b) && spawning > build, "the remote compute's steps are missing:\n{tree}");
    admin.compute(Method::DELETE, &format!("/servers/{id}"), None).await.unwrap();
    admin.wait_for(&id, "DELETED", Duration::from_secs(60)).await.unwrap();
}

/// `openstack --os-cloud <cloud> args.. -f json` (python-openstackclient from `.build/venv`).
fn openstack_json(home: &TestHome, cloud: &str, args: &[&str]) -> Value {
    let bin = manifest_dir().join(".build/venv/bin/openstack");
    assert!(bin.exists(), "{} is missing: run scripts/install-clients", bin.display());
    let out = run(std::process::Command::new(bin)
        .env("OS_CLIENT_CONFIG_FILE", home.clouds_yaml())
        .env_remove("OS_CLOUD")
        .args(["--os-cloud", cloud])
        .args(args)
        .args(["-f", "json"]));
    assert!(out.status.success(), "openstack {args:?}:\n{}\n{}", stdout(&out), stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("openstack -f json")
}

fn names(list: &Value) -> Vec<String> {
    let items = list.as_array().expect("a list");
    items.iter().map(|s| s["name"].as_str().or(s["Name"].as_str()).unwrap_or_default().to_string()).collect()
}

/// Issue 17 item 2: nova's server list filters, sort keys, limit, marker and `servers_links`,
/// as python-openstackclient pages through them and as raw HTTP meets nova's 400s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_list_filters_sorts_and_pages_as_nova() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let stack = home.up(&[]);
    let admin = token(&stack, "admin").await;
    let demo = token(&stack, "demo").await;
    let image = first_image(&stack, &admin).await;
    let client = stack.client("demo").await;
    let mut ids = Vec::new();
    for (name, networks) in [("x-b", "none"), ("x-a", "auto"), ("other", "none"), ("x-c", "none")] {
        let body = json!({"server": {"name": name, "imageRef": image, "flavorRef": "42", "networks": networks}});
        let (s, _, v) =
            raw(&stack, Some(&demo), Method::POST, "/compute/v2.1/servers", Some(&body.to_string()), &[V279]).await;
        assert_eq!(s, 202, "{v}");
        ids.push(v["server"]["id"].as_str().unwrap().to_string());
    }
    let mut addr = String::new();
    for id in &ids {
        let server = client.wait_for(id, "ACTIVE", Duration::from_secs(60)).await.expect("ACTIVE");
        if let Some(nets) = server["addresses"].as_object().filter(|n| !n.is_empty()) {
            addr = nets.values().next().and_then(|a| a[0]["addr"].as_str()).expect("an address").to_string();
        }
    }
    assert!(!addr.is_empty(), "x-a has an address on the default network");
    let one_ip = format!("ip=^{}$", addr.replace('.', "\\."));
    let list = |tok: &str, query: &str, version: &'static str| {
        let (tok, query) = (tok.to_string(), query.to_string());
        let stack = &stack;
        async move {
            let path = format!("/compute/v2.1/servers/detail?{query}");
            raw(stack, Some(&tok), Method::GET, &path, None, &[("openstack-api-version", version)]).await
        }
    };

    // Filters every user has, and nova's regex on the name and the addresses.
    for (query, want) in [
        ("name=^x-&status=ACTIVE", 3),
        ("status=SHUTOFF", 0),
        ("status=ACTIVE&status=SHUTOFF", 4),
        ("flavor=42", 4),
        ("flavor=1", 0),
        (&format!("image={image}") as &str, 4),
        ("image=nope", 0),
        (one_ip.as_str(), 1),
        ("ip=^203\\.0\\.113\\.", 0),
        ("ip6=.", 0),
        ("changes-since=2000-01-01T00:00:00Z", 4),
        ("changes-since=2999-01-01T00:00:00Z", 0),
        ("locked=false", 4),
        ("locked=true", 0),
        ("tags=a", 0),
        ("not-tags=a", 4),
        // Unknown and admin-only filters from a member are stripped, as nova strips them.
        ("bogus=1", 4),
        ("host=nowhere&node=nowhere&key_name=zzz", 4),
    ] {
        let (s, _, v) = list(&demo, query, "compute 2.73").await;
        assert_eq!((s.as_u16(), v["servers"].as_array().map(Vec::len)), (200, Some(want)), "{query}: {v}");
    }
    // The same filters are the admin's to use, with all_tenants.
    for (query, want) in [
        ("all_tenants=1&host=nowhere", 0),
        ("all_tenants=1&node=.", 4),
        ("all_tenants=1&key_name=zzz", 0),
        ("all_tenants=1&vm_state=active&task_state=", 0),
        ("all_tenants=1&vm_state=active", 4),
        ("all_tenants=1&availability_zone=zzz", 0),
        ("all_tenants=1&config_drive=.*", 4),
        ("all_tenants=1&launched_at=^2", 4),
    ] {
        let (s, _, v) = list(&admin, query, "compute 2.73").await;
        assert_eq!((s.as_u16(), v["servers"].as_array().map(Vec::len)), (200, Some(want)), "{query}: {v}");
    }

    // Several sort keys, limit, marker, and the next link that carries the query on.
    let (s, _, v) = list(&demo, "sort_key=display_name&sort_dir=asc&limit=2", "compute 2.79").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(names(&v["servers"]), ["other", "x-a"]);
    let next = v["servers_links"][0]["href"].as_str().expect("servers_links when the page is full").to_string();
    assert_eq!(v["servers_links"][0]["rel"], "next");
    assert!(next.contains("sort_key=display_name") && next.contains(&format!("marker={}", ids[1])), "{next}");
    let path = &next[next.find("/compute/").expect("an absolute link")..];
    let (_, _, v) = raw(&stack, Some(&demo), Method::GET, path, None, &[V279]).await;
    assert_eq!(names(&v["servers"]), ["x-b", "x-c"]);
    let (_, _, v) = list(&demo, &format!("sort_key=display_name&sort_dir=asc&marker={}", ids[3]), "compute 2.79").await;
    assert_eq!(names(&v["servers"]), Vec::<String>::new());
    assert!(v.get("servers_links").is_none(), "{v}");
    let (_, _, v) = list(&demo, "sort_key=vcpus&sort_key=display_name&sort_dir=desc", "compute 2.1").await;
    assert_eq!(names(&v["servers"]), ["x-c", "x-b", "x-a", "other"], "an ignored key before 2.75: {v}");
    let (_, _, v) = list(&demo, "limit=5000", "compute 2.79").await;
    assert_eq!(v["servers"].as_array().map(Vec::len), Some(4), "a limit above max_limit is capped");

    // nova's 400s (and 403s) in its words.
    for (tok, query, version, status, words) in [
        (&demo, "limit=-1", "compute 2.79", 400, "does not match '^[0-9]*$'"),
        (&demo, "limit=two", "compute 2.79", 400, "does not match '^[0-9]*$'"),
        (&demo, "marker=nope", "compute 2.79", 400, "marker [nope] not found"),
        (&demo, "sort_key=bogus", "compute 2.79", 400, "'bogus' is not one of"),
        (&demo, "sort_key=vcpus", "compute 2.79", 400, "'vcpus' is not one of"),
        (&demo, "sort_key=display_name&sort_dir=sideways", "compute 2.79", 400, "must be 'desc' or 'asc'"),
        (&demo, "sort_key=host", "compute 2.79", 403, "Only administrators can sort servers by host"),
        (&demo, "changes-since=yesterday", "compute 2.79", 400, "changes-since"),
        (&demo, "bogus=1", "compute 2.79", 400, "('bogus' was unexpected)"),
        (&demo, "locked=maybe", "compute 2.79", 400, "Unrecognized value 'maybe'"),
        (&demo, "status=DELETED", "compute 2.79", 403, "Only administrators may list deleted instances"),
        (&demo, "name=(", "compute 2.79", 400, "regular expression"),
        (&admin, "all_tenants=1&metadata=x", "compute 2.73", 400, "Invalid filter field: metadata."),
    ] {
        let (s, _, v) = list(tok, query, version).await;
        let message = v.as_object().and_then(|o| o.values().next()).and_then(|e| e["message"].as_str());
        assert_eq!(s.as_u16(), status, "{query}: {v}");
        assert!(message.is_some_and(|m| m.contains(words)), "{query}: {v}");
    }

    // A deleted server is the admin's to list with `deleted`.
    client.compute(Method::DELETE, &format!("/servers/{}", ids[2]), None).await.expect("delete");
    client.wait_for(&ids[2], "DELETED", Duration::from_secs(60)).await.expect("DELETED");
    let (_, _, v) = list(&admin, "all_tenants=1&deleted=true", "compute 2.79").await;
    assert_eq!(names(&v["servers"]), ["other"], "{v}");
    let (_, _, v) = list(&demo, "deleted=true", "compute 2.1").await;
    assert_eq!(v["servers"].as_array().map(Vec::len), Some(3), "a member's `deleted` is stripped: {v}");

    // python-openstackclient: `--limit` asks for one page, `--marker` for the one after.
    let cli = |args: &[&str]| names(&openstack_json(&home, "novabox", args));
    let page = cli(&["server", "list", "--name", "^x-", "--status", "ACTIVE", "--limit", "2"]);
    assert_eq!(page, ["x-c", "x-a"], "newest first, two of three");
    let rest = cli(&["server", "list", "--name", "^x-", "--status", "ACTIVE", "--limit", "2", "--marker", &ids[1]]);
    assert_eq!(rest, ["x-b"]);
    let before = openstack_json(&home, "novabox", &["server", "list"]);
    assert_eq!(names(&before), ["x-c", "x-a", "x-b"], "newest first");
    let first = before[0]["ID"].as_str().expect("an ID column");
    let after = openstack_json(&home, "novabox", &["server", "list", "--marker", first]);
    assert_eq!(names(&after), ["x-a", "x-b"], "--marker continues after the newest");
    let few = openstack_json(&home, "novabox", &["server", "list", "--max-items", "1", "--sort-column", "Name"]);
    assert_eq!(few.as_array().map(Vec::len), Some(1));
    let flavored = openstack_json(&home, "novabox-admin", &["server", "list", "--all-projects", "--flavor", "42"]);
    assert_eq!(flavored.as_array().map(Vec::len), Some(3));
    assert!(stack.stop().success());
}

/// Server groups through python-openstackclient on one host (issue 17): anti-affinity's
/// second server cannot be placed and goes to ERROR with nova's NoValidHost, affinity's two
/// servers share the host; the shapes per microversion are checked over raw HTTP against
/// tempest's server group schemas (v2_1, v2_13, v2_64) and 2.71's `server_groups`; then
/// `openstack usage show|list` bills what ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openstackclient_server_groups_and_usage_on_one_host() {
    use crate::clients::{image_file, osc, osc_json};
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let stack = home.up(&[]);
    let file = image_file(&home);
    let img =
        ["image", "create", "--file", file.to_str().unwrap(), "--disk-format", "raw", "--container-format", "bare"];
    osc_json(&home, &[&img[..], &["groups-image"]].concat());

    let anti = osc_json(&home, &["server", "group", "create", "--policy", "anti-affinity", "apart"]);
    let anti_id = anti["id"].as_str().expect("group id").to_string();
    let together = osc_json(&home, &["server", "group", "create", "--policy", "affinity", "together"]);
    let together_id = together["id"].as_str().expect("group id").to_string();
    let boot = |name: &str, group: &str, wait: bool| {
        let hint = format!("group={group}");
        let mut args = vec!["server", "create", "--image", "groups-image", "--flavor", "m1.nano"];
        args.extend(["--network", "private", "--hint", &hint]);
        if wait {
            args.push("--wait");
        }
        args.push(name);
        osc_json(&home, &args)
    };
    assert_eq!(boot("a1", &anti_id, true)["status"], "ACTIVE");
    boot("a2", &anti_id, false);
    let mut shown = Value::Null;
    for _ in 0..300 {
        shown = osc_json(&home, &["server", "show", "a2"]);
        if shown["status"] != "BUILD" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shown["status"], "ERROR", "{shown}");
    assert!(
        shown["fault"].to_string().contains("No valid host was found. There are not enough hosts available."),
        "{shown}"
    );
    assert_eq!(boot("t1", &together_id, true)["status"], "ACTIVE");
    assert_eq!(boot("t2", &together_id, true)["status"], "ACTIVE");

    let groups = osc_json(&home, &["server", "group", "list"]);
    assert_eq!(groups.as_array().map(Vec::len), Some(2), "{groups}");
    let shown = osc_json(&home, &["server", "group", "show", "together"]);
    assert_eq!(
        shown["members"].as_array().map(Vec::len).or_else(|| shown["members"].as_str().map(|m| m.split(',').count())),
        Some(2),
        "{shown}"
    );

    // Raw shapes: exactly the keys of tempest's schemas at each microversion.
    let demo = token(&stack, "demo").await;
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        k.sort();
        k
    };
    let path = format!("/compute/v2.1/os-server-groups/{anti_id}");
    let at = |v: &'static str| [("openstack-api-version", v)];
    let (s, _, g) = raw(&stack, Some(&demo), Method::GET, &path, None, &at("compute 2.1")).await;
    assert_eq!(s, 200, "{g}");
    assert_eq!(keys(&g["server_group"]), ["id", "members", "metadata", "name", "policies"]);
    let (_, _, g) = raw(&stack, Some(&demo), Method::GET, &path, None, &at("compute 2.13")).await;
    assert_eq!(keys(&g["server_group"]), ["id", "members", "metadata", "name", "policies", "project_id", "user_id"]);
    let (_, _, g) = raw(&stack, Some(&demo), Method::GET, &path, None, &at("compute 2.64")).await;
    assert_eq!(keys(&g["server_group"]), ["id", "members", "name", "policy", "project_id", "rules", "user_id"]);
    assert_eq!(g["server_group"]["members"].as_array().map(Vec::len), Some(2), "the ERROR member stays a member: {g}");
    let a1 = osc_json(&home, &["server", "show", "a1"]);
    let (_, _, s71) = raw(
        &stack,
        Some(&demo),
        Method::GET,
        &format!("/compute/v2.1/servers/{}", a1["id"].as_str().unwrap()),
        None,
        &at("compute 2.71"),
    )
    .await;
    assert_eq!(s71["server"]["server_groups"], json!([anti_id]), "{s71}");

    // Usage: the three servers that launched are billed (the one that never found a host
    // is not); the admin lists every project, a member sees its own.
    // (OSC's JSON gives `Servers` as the server usages themselves, or as their count.)
    let servers = |v: &Value| v.as_array().map(|a| a.len() as i64).or_else(|| v.as_i64());
    let usage = osc_json(&home, &["usage", "show"]);
    assert_eq!(servers(&usage["Servers"]), Some(3), "{usage}");
    assert!(usage["CPU Hours"].as_f64().is_some_and(|h| h > 0.0), "{usage}");
    let listed = osc_json(&home, &["--os-cloud", "novabox-admin", "usage", "list"]);
    // Only demo ran servers. openstacksdk asks `detailed=True`, and nova details only for
    // `detailed=1`, so OSC's list has no server count against nova either.
    let rows = listed.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "{listed}");
    assert!(rows[0]["CPU Hours"].as_f64().is_some_and(|h| h >= usage["CPU Hours"].as_f64().unwrap_or(0.0)), "{listed}");
    let admin = token(&stack, "admin").await;
    let (s, _, u) = raw(
        &stack,
        Some(&admin),
        Method::GET,
        "/compute/v2.1/os-simple-tenant-usage?detailed=1&start=2000-01-01T00:00:00",
        None,
        &[],
    )
    .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["tenant_usages"][0]["server_usages"].as_array().map(Vec::len), Some(3), "{u}");

    osc(&home, &["server", "delete", "--wait", "a1", "a2", "t1", "t2"]);
    osc(&home, &["server", "group", "delete", "apart", "together"]);
    let groups = osc_json(&home, &["server", "group", "list"]);
    assert_eq!(groups.as_array().map(Vec::len), Some(0), "{groups}");
}

/// Issue 16's state actions through python-openstackclient on the fake driver: each walks
/// nova's states, refuses the wrong state with nova's 409, is recorded as an instance action
/// and notified; a locked server refuses its owner; only an admin resets a state.
#[test]
fn openstackclient_pause_suspend_lock_reset_state_and_dump() {
    use crate::clients::{image_file, osc, osc_json, osc_output};
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let _stack = home.up(&[]);
    let file = image_file(&home);
    osc(&home, &["image", "create", "--file", file.to_str().unwrap(), "--disk-format", "raw", "img"]);
    let vm = osc_json(
        &home,
        &["server", "create", "--image", "img", "--flavor", "m1.nano", "--nic", "none", "--wait", "vm"],
    );
    let id = vm["id"].as_str().unwrap().to_string();
    let wait = |want: &str| -> serde_json::Value {
        for _ in 0..200 {
            let s = osc_json(&home, &["server", "show", "vm"]);
            if s["status"] == want && s["OS-EXT-STS:task_state"].is_null() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("vm never reached {want}\n{}", home.up_log());
    };
    let refused = |args: &[&str]| -> String {
        let out = osc_output(&home, args);
        assert!(!out.status.success(), "openstack {args:?} should have failed:\n{}", stdout(&out));
        stderr(&out)
    };
    let conflict = |args: &[&str], action: &str, vm_state: &str| {
        let err = refused(args);
        let text = format!("Cannot '{action}' instance {id} while it is in vm_state {vm_state}");
        assert!(err.contains(&text) && err.contains("409"), "{args:?}: {err}");
    };

    conflict(&["server", "unpause", "vm"], "unpause", "active");
    conflict(&["server", "resume", "vm"], "resume", "active");
    osc(&home, &["server", "pause", "vm"]);
    let paused = wait("PAUSED");
    assert_eq!(paused["OS-EXT-STS:vm_state"], "paused");
    assert_eq!(paused["OS-EXT-STS:power_state"], 3, "{paused}");
    conflict(&["server", "pause", "vm"], "pause", "paused");
    conflict(&["server", "suspend", "vm"], "suspend", "paused");
    osc(&home, &["server", "unpause", "vm"]);
    wait("ACTIVE");

    osc(&home, &["server", "suspend", "vm"]);
    let suspended = wait("SUSPENDED");
    assert_eq!(suspended["OS-EXT-STS:vm_state"], "suspended");
    conflict(&["server", "pause", "vm"], "pause", "suspended");
    conflict(&["server", "stop", "vm"], "stop", "suspended");
    osc(&home, &["server", "resume", "vm"]);
    assert_eq!(wait("ACTIVE")["OS-EXT-STS:power_state"], 1);

    // Locked by the owner with a reason (2.73): shown, and only an admin acts on it.
    osc(&home, &["--os-compute-api-version", "2.73", "server", "lock", "--reason", "backup running", "vm"]);
    let locked = osc_json(&home, &["--os-compute-api-version", "2.73", "server", "show", "vm"]);
    assert_eq!(
        (locked["locked"].clone(), locked["locked_reason"].clone()),
        (json!(true), json!("backup running")),
        "{locked}"
    );
    let err = refused(&["server", "pause", "vm"]);
    assert!(err.contains(&format!("Instance {id} is locked")) && err.contains("409"), "{err}");
    assert_eq!(osc_json(&home, &["server", "show", "vm"])["status"], "ACTIVE", "a refused action changes nothing");
    osc(&home, &["--os-cloud", "novabox-admin", "server", "pause", &id]);
    wait("PAUSED");
    osc(&home, &["server", "unlock", "vm"]);
    let unlocked = osc_json(&home, &["--os-compute-api-version", "2.73", "server", "show", "vm"]);
    assert_eq!((unlocked["locked"].clone(), unlocked["locked_reason"].clone()), (json!(false), json!(null)));
    osc(&home, &["server", "unpause", "vm"]);
    wait("ACTIVE");

    // trigger_crash_dump (2.17): the fake guest notes the NMI on its console.
    osc(&home, &["--os-compute-api-version", "2.17", "server", "dump", "create", "vm"]);
    let mut console = String::new();
    for _ in 0..50 {
        console = osc(&home, &["console", "log", "show", "vm"]);
        if console.contains("NMI received") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(console.contains("NMI received"), "{console}");

    // os-resetState: an admin's; the owner meets nova's policy text.
    let err = refused(&["server", "set", "--state", "error", "--auto-approve", "vm"]);
    assert!(err.contains("os_compute_api:os-admin-actions:reset_state") && err.contains("403"), "{err}");
    osc(&home, &["--os-cloud", "novabox-admin", "server", "set", "--state", "error", "--auto-approve", &id]);
    assert_eq!(osc_json(&home, &["server", "show", "vm"])["status"], "ERROR");
    osc(&home, &["--os-cloud", "novabox-admin", "server", "set", "--state", "active", "--auto-approve", &id]);
    assert_eq!(osc_json(&home, &["server", "show", "vm"])["status"], "ACTIVE");

    // Every action is in os-instance-actions, finished without an error, and the host's
    // actions were notified.
    let events = osc_json(&home, &["server", "event", "list", "vm"]);
    let mut names: Vec<String> =
        events.as_array().unwrap().iter().map(|e| e["Action"].as_str().unwrap_or_default().to_string()).collect();
    names.reverse();
    let want = [
        "create",
        "pause",
        "unpause",
        "suspend",
        "resume",
        "lock",
        "pause",
        "unlock",
        "unpause",
        "trigger_crash_dump",
        "reset_state",
        "reset_state",
    ];
    assert_eq!(names, want, "{events}");
    let notified = events_of(&home, &id);
    for action in ["pause", "unpause", "suspend", "resume", "trigger_crash_dump"] {
        for phase in ["start", "end"] {
            let event = format!("compute.instance.{action}.{phase}");
            assert!(notified.contains(&event), "{event} missing from {notified:?}");
        }
    }
    osc(&home, &["server", "delete", "--wait", "vm"]);
}

/// `[compute] reclaim_instance_interval` through python-openstackclient: a delete only powers
/// the server off (SOFT_DELETED), `server restore` brings it back, `server delete --force`
/// deletes it at once, and compute reclaims one whose interval passed by the test clock.
#[test]
fn openstackclient_soft_delete_restore_force_delete_and_reclaim() {
    use crate::clients::{image_file, osc, osc_json, osc_output};
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    home.edit_config(&[
        ("heartbeat_secs = 10", "heartbeat_secs = 1"),
        ("reclaim_instance_interval = 0", "reclaim_instance_interval = 3600"),
    ]);
    let _stack = home.up(&["--faults"]);
    let file = image_file(&home);
    osc(&home, &["image", "create", "--file", file.to_str().unwrap(), "--disk-format", "raw", "img"]);
    let boot = |name: &str| -> String {
        let s = osc_json(
            &home,
            &["server", "create", "--image", "img", "--flavor", "m1.nano", "--nic", "none", "--wait", name],
        );
        s["id"].as_str().unwrap().to_string()
    };
    let (kept, reclaimed) = (boot("kept"), boot("reclaimed"));
    let wait = |id: &str, want: &str| -> serde_json::Value {
        for _ in 0..300 {
            let s = osc_json(&home, &["server", "show", id]);
            if s["status"] == want && s["OS-EXT-STS:task_state"].is_null() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{id} never reached {want}\n{}", home.up_log());
    };
    let gone = |id: &str| -> bool {
        for _ in 0..300 {
            let out = osc_output(&home, &["server", "show", id]);
            if !out.status.success() {
                return stderr(&out).to_lowercase().contains("no server");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };

    osc(&home, &["server", "delete", &kept]);
    let soft = wait(&kept, "SOFT_DELETED");
    assert_eq!(
        (soft["OS-EXT-STS:vm_state"].clone(), soft["OS-EXT-STS:power_state"].clone()),
        (json!("soft-delete"), json!(4))
    );
    let err = stderr(&osc_output(&home, &["server", "pause", &kept]));
    assert!(err.contains(&format!("Cannot 'pause' instance {kept} while it is in vm_state soft-delete")), "{err}");
    osc(&home, &["server", "restore", &kept]);
    assert_eq!(wait(&kept, "ACTIVE")["OS-EXT-STS:power_state"], 1);
    let err = stderr(&osc_output(&home, &["server", "restore", &kept]));
    assert!(err.contains(&format!("Cannot 'restore' instance {kept} while it is in vm_state active")), "{err}");
    let events = osc_json(&home, &["server", "event", "list", &kept]);
    let names: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["Action"].as_str()).collect();
    assert_eq!(names, ["restore", "delete", "create"], "{events}");

    osc(&home, &["server", "delete", &kept]);
    wait(&kept, "SOFT_DELETED");
    osc(&home, &["server", "delete", "--force", &kept]);
    assert!(gone(&kept), "forceDelete deletes a soft-deleted server");

    osc(&home, &["server", "delete", &reclaimed]);
    wait(&reclaimed, "SOFT_DELETED");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(osc_json(&home, &["server", "show", &reclaimed])["status"], "SOFT_DELETED", "kept within the interval");
    assert_ok(&run(home.novabox().args(["clock", "advance", "3601"])));
    assert!(gone(&reclaimed), "not reclaimed after the interval:\n{}", home.up_log());
}

/// `os-hypervisors/{id}/uptime` (below 2.88) asks the compute host for its `uptime` line over
/// the bus, as nova does (tempest's test_get_hypervisor_uptime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hypervisors_uptime_comes_from_its_compute_host() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let stack = home.up(&[]);
    let admin = token(&stack, "admin").await;
    let demo = token(&stack, "demo").await;
    let mut hypervisors = Value::Null;
    for _ in 0..100 {
        hypervisors = raw(&stack, Some(&admin), Method::GET, "/compute/v2.1/os-hypervisors", None, &[]).await.2;
        if hypervisors["hypervisors"].as_array().is_some_and(|l| !l.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = hypervisors["hypervisors"][0]["id"].to_string();
    let path = format!("/compute/v2.1/os-hypervisors/{id}/uptime");
    let (s, _, v) = raw(&stack, Some(&admin), Method::GET, &path, None, &[]).await;
    assert_eq!(s, 200, "{v}\n{}", home.up_log());
    let h = &v["hypervisor"];
    assert!(h["uptime"].as_str().is_some_and(|u| u.contains(" up ") && u.contains("load average")), "{v}");
    assert_eq!(h["hypervisor_hostname"], hypervisors["hypervisors"][0]["hypervisor_hostname"]);
    assert_eq!(raw(&stack, Some(&demo), Method::GET, &path, None, &[]).await.0, 403);
    let (s, _, _) = raw(&stack, Some(&admin), Method::GET, "/compute/v2.1/os-hypervisors/999/uptime", None, &[]).await;
    assert_eq!(s, 404);
}
