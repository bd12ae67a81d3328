//! Host aggregates, the availability zones they define and multiple create, against a real
//! `novabox up` (fake driver) through python-openstackclient and the raw API (issue 17).

use std::process::Output;
use std::time::Duration;

use novabox::client::{Client, ClientError};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

/// `openstack --os-cloud <cloud> args..` (python-openstackclient from `.build/venv`).
fn openstack(home: &TestHome, cloud: &str, args: &[&str]) -> Output {
    let bin = manifest_dir().join(".build/venv/bin/openstack");
    assert!(bin.exists(), "{} is missing: run scripts/install-clients", bin.display());
    run(std::process::Command::new(bin)
        .env("OS_CLIENT_CONFIG_FILE", home.clouds_yaml())
        .env_remove("OS_CLOUD")
        .args(["--os-cloud", cloud])
        .args(args))
}

/// The same, `-f json`, which must succeed.
fn openstack_json(home: &TestHome, cloud: &str, args: &[&str]) -> Value {
    let out = openstack(home, cloud, &[args, &["-f", "json"]].concat());
    assert!(out.status.success(), "openstack {args:?}:\n{}\n{}", stdout(&out), stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("openstack -f json")
}

/// The same, which must fail with the HTTP `code` and nova's `words` in its error.
fn openstack_fails(home: &TestHome, cloud: &str, args: &[&str], code: u16, words: &str) {
    let out = openstack(home, cloud, args);
    assert!(!out.status.success(), "openstack {args:?} succeeded:\n{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("{code}: Client Error")), "openstack {args:?}: wanted {code} in:\n{err}");
    assert!(err.contains(words), "openstack {args:?}: wanted {words:?} in:\n{err}");
}

/// The API's answer to a call that must fail: its status and nova's message.
async fn refused(client: &Client, method: Method, path: &str, body: Option<Value>) -> (StatusCode, String) {
    match client.compute(method, path, body).await {
        Err(ClientError::Api { status, message, .. }) => (status, message),
        other => panic!("{path} did not fail: {other:?}"),
    }
}

/// An image to boot: the first the cloud has, or a small raw one.
async fn image(client: &Client) -> String {
    let list = client.image(Method::GET, "/images", None).await.expect("images");
    if let Some(id) = list["images"].as_array().and_then(|l| l.first()).and_then(|i| i["id"].as_str()) {
        return id.to_string();
    }
    let body = json!({"name": "blob", "disk_format": "raw", "container_format": "bare", "visibility": "public"});
    let img = client.image(Method::POST, "/images", Some(body)).await.expect("create image");
    let id = img["id"].as_str().expect("id").to_string();
    client.upload_image(&id, vec![0u8; 4096]).await.expect("upload");
    id
}

/// The compute hosts the cloud knows, once there are `n`.
async fn compute_hosts(admin: &Client, n: usize, home: &TestHome) -> Vec<String> {
    let mut hosts = Vec::new();
    for _ in 0..300 {
        let v = admin.compute(Method::GET, "/os-services?binary=nova-compute", None).await.expect("services");
        hosts = v["services"]
            .as_array()
            .expect("services")
            .iter()
            .filter(|s| s["binary"] == "nova-compute")
            .filter_map(|s| s["host"].as_str().map(str::to_string))
            .collect();
        if hosts.len() >= n {
            return hosts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{n} compute hosts never registered: {hosts:?}\n{}", home.up_log());
}

fn boot(image: &str, name: &str, extra: Value) -> Value {
    let mut server = json!({"name": name, "imageRef": image, "flavorRef": "42", "networks": "none"});
    if let (Some(s), Some(e)) = (server.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({ "server": server })
}

/// Every aggregate command of python-openstackclient, each refusal of nova's API with its code
/// and text, and the availability zone an aggregate defines reaching the zone list, the
/// services and a server booted into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_through_openstackclient_and_a_server_in_their_zone() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake"]));
    let stack = home.up(&[]);
    let admin = stack.client("admin").await;
    let demo = stack.client("demo").await;
    let host = compute_hosts(&admin, 1, &home).await.remove(0);
    let cli = |args: &[&str]| openstack_json(&home, "novabox-admin", args);

    let created = cli(&["aggregate", "create", "--zone", "az1", "rack1"]);
    assert_eq!((created["name"].as_str(), created["availability_zone"].as_str()), (Some("rack1"), Some("az1")));
    openstack_fails(&home, "novabox-admin", &["aggregate", "create", "rack1"], 409, "Aggregate rack1 already exists.");
    openstack_fails(&home, "novabox", &["aggregate", "list"], 403, "os_compute_api:os-aggregates:index");
    let id = created["id"].as_i64().expect("id");

    let added = cli(&["aggregate", "add", "host", "rack1", &host]);
    assert_eq!(added["hosts"], json!([host]), "{added}");
    openstack_fails(
        &home,
        "novabox-admin",
        &["aggregate", "add", "host", "rack1", &host],
        409,
        &format!("Aggregate {id} already has host {host}."),
    );
    openstack_fails(
        &home,
        "novabox-admin",
        &["aggregate", "add", "host", "rack1", "nowhere"],
        404,
        "Compute host nowhere could not be found.",
    );
    assert_ok(&openstack(&home, "novabox-admin", &["aggregate", "set", "--property", "ssd=true", "rack1"]));
    let shown = cli(&["aggregate", "show", "rack1"]);
    let props = shown["properties"].clone();
    assert_eq!(props["ssd"], "true", "{shown}");
    assert_ok(&openstack(&home, "novabox-admin", &["aggregate", "unset", "--property", "ssd", "rack1"]));
    let shown = cli(&["aggregate", "show", "rack1"]);
    assert!(shown["properties"].get("ssd").is_none(), "unset removes the key: {shown}");
    let listed = cli(&["aggregate", "list", "--long"]);
    assert!(listed.as_array().is_some_and(|l| l.iter().any(|a| a["Name"] == "rack1")), "{listed}");

    // A second zone cannot take a host that is already in az1.
    cli(&["aggregate", "create", "--zone", "az2", "rack2"]);
    openstack_fails(
        &home,
        "novabox-admin",
        &["aggregate", "add", "host", "rack2", &host],
        400,
        "One or more hosts already in availability zone(s) ['az1']",
    );
    let (status, message) = refused(&admin, Method::GET, "/os-aggregates/424242", None).await;
    assert_eq!((status.as_u16(), message.as_str()), (404, "Aggregate 424242 could not be found."));

    // The zone is az1's now: in the zone list, in the services, and where a server lands.
    let zones = openstack_json(&home, "novabox", &["availability", "zone", "list", "--compute"]);
    let names: Vec<&str> = zones.as_array().expect("zones").iter().filter_map(|z| z["Zone Name"].as_str()).collect();
    assert_eq!(names, ["az1"], "the one host is in az1; az2 has none: {zones}");
    let services = cli(&["compute", "service", "list", "--service", "nova-compute"]);
    assert_eq!(services[0]["Zone"], "az1", "{services}");

    let image = image(&admin).await;
    let (status, message) =
        refused(&demo, Method::POST, "/servers", Some(boot(&image, "lost", json!({"availability_zone": "az2"})))).await;
    assert_eq!(
        (status.as_u16(), message.as_str()),
        (400, "The requested availability zone is not available"),
        "a zone with no hosts is not available"
    );
    let (status, _) =
        refused(&demo, Method::POST, "/servers", Some(boot(&image, "lost", json!({"availability_zone": "nova"}))))
            .await;
    assert_eq!(status.as_u16(), 400, "no host is left in the default zone");
    let booted = demo
        .compute(Method::POST, "/servers", Some(boot(&image, "in-az1", json!({"availability_zone": "az1"}))))
        .await
        .expect("boot in az1");
    let sid = booted["server"]["id"].as_str().expect("id").to_string();
    let server = demo.wait_for(&sid, "ACTIVE", Duration::from_secs(60)).await.expect("ACTIVE");
    assert_eq!(server["OS-EXT-AZ:availability_zone"], "az1", "{server}");
    let shown = openstack_json(&home, "novabox", &["server", "show", &sid]);
    assert_eq!(shown["OS-EXT-AZ:availability_zone"], "az1", "{shown}");
    // A zone asked for by a member with a host (`az:host`) is an admin's to ask.
    let (status, _) = refused(
        &demo,
        Method::POST,
        "/servers",
        Some(boot(&image, "forced", json!({"availability_zone": format!("az1:{host}")}))),
    )
    .await;
    assert_eq!(status.as_u16(), 403);
    admin.compute(Method::DELETE, &format!("/servers/{sid}"), None).await.expect("delete");
    demo.wait_for(&sid, "DELETED", Duration::from_secs(60)).await.expect("DELETED");

    // os-services and os-hypervisors as 2.53 clients use them: `compute service set` finds the
    // service by host and nova's binary name; a zone whose only service is disabled is not
    // available, to the zone list and to a boot.
    let hypervisors = admin.compute(Method::GET, "/os-hypervisors", None).await.expect("hypervisors");
    let node = hypervisors["hypervisors"][0]["hypervisor_hostname"].as_str().expect("node").to_string();
    let matching = cli(&["hypervisor", "list", "--matching", &node[1..]]);
    assert_eq!(matching.as_array().map(Vec::len), Some(1), "{matching}");
    openstack_fails(
        &home,
        "novabox-admin",
        &["hypervisor", "list", "--matching", "no-such-node"],
        404,
        "No hypervisor matching",
    );
    assert_ok(&openstack(&home, "novabox-admin", &["compute", "service", "set", "--disable", &host, "nova-compute"]));
    let zones = openstack_json(&home, "novabox", &["availability", "zone", "list", "--compute"]);
    assert_eq!(zones[0]["Zone Name"], "az1", "{zones}");
    assert_eq!(zones[0]["Zone Status"], "not available", "{zones}");
    let (status, message) =
        refused(&demo, Method::POST, "/servers", Some(boot(&image, "off", json!({"availability_zone": "az1"})))).await;
    assert_eq!((status.as_u16(), message.as_str()), (400, "The requested availability zone is not available"));
    assert_ok(&openstack(&home, "novabox-admin", &["compute", "service", "set", "--enable", &host, "nova-compute"]));

    // Delete: not while it has hosts (400), then it is gone.
    openstack_fails(&home, "novabox-admin", &["aggregate", "delete", "rack1"], 400, "Host aggregate is not empty");
    let removed = cli(&["aggregate", "remove", "host", "rack1", &host]);
    assert_eq!(removed["hosts"], json!([]), "{removed}");
    assert_ok(&openstack(&home, "novabox-admin", &["aggregate", "delete", "rack1", "rack2"]));
    let listed = cli(&["aggregate", "list"]);
    assert_eq!(listed, json!([]));
    let zones = openstack_json(&home, "novabox", &["availability", "zone", "list", "--compute"]);
    assert_eq!(zones[0]["Zone Name"], "nova", "back in the default zone: {zones}");
}

/// Multiple create: `NAME-1..N`, one reservation id (and the list filter on it), nova's
/// all-or-nothing quota check, and a request the scheduler cannot place whole fails whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_create_shares_a_reservation_and_fails_whole() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake"]));
    let stack = home.up(&[]);
    let admin = stack.client("admin").await;
    let demo = stack.client("demo").await;
    compute_hosts(&admin, 1, &home).await;
    let image = image(&admin).await;

    let reply = demo
        .compute(
            Method::POST,
            "/servers",
            Some(boot(&image, "many", json!({"min_count": 2, "max_count": 3, "return_reservation_id": true}))),
        )
        .await
        .expect("multiple create");
    let reservation = reply["reservation_id"].as_str().unwrap_or_else(|| panic!("{reply}")).to_string();
    assert!(reservation.starts_with("r-") && reservation.len() == 10, "{reservation}");
    let listed = demo
        .compute(Method::GET, &format!("/servers/detail?reservation_id={reservation}"), None)
        .await
        .expect("list by reservation");
    let mut names: Vec<String> = listed["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    assert_eq!(names, ["many-1", "many-2", "many-3"]);
    let ids: Vec<String> = listed["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .collect();
    let shown = admin.compute(Method::GET, &format!("/servers/{}", ids[0]), None).await.expect("show");
    assert_eq!(shown["server"]["OS-EXT-SRV-ATTR:reservation_id"], reservation.as_str());
    let other = demo.compute(Method::GET, "/servers?reservation_id=r-00000000", None).await.expect("list");
    assert_eq!(other["servers"], json!([]));
    for id in &ids {
        demo.wait_for(id, "ACTIVE", Duration::from_secs(60)).await.expect("ACTIVE");
    }

    // Quota: 10 instances by default, 3 used; min_count 8 cannot fit, max_count 9 with
    // min_count 1 boots the 7 that fit.
    let (status, message) =
        refused(&demo, Method::POST, "/servers", Some(boot(&image, "over", json!({"min_count": 8})))).await;
    assert_eq!(status.as_u16(), 403, "{message}");
    assert_eq!(message, "Quota exceeded for instances: Requested 8, but already used 3 of 10 instances");
    let reply = demo
        .compute(
            Method::POST,
            "/servers",
            Some(boot(&image, "fit", json!({"max_count": 9, "return_reservation_id": true}))),
        )
        .await
        .expect("as many as fit");
    let fit = reply["reservation_id"].as_str().expect("reservation").to_string();
    let listed = demo.compute(Method::GET, &format!("/servers?reservation_id={fit}"), None).await.expect("list");
    let fit_ids: Vec<String> = listed["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(fit_ids.len(), 7, "{listed}");
    for id in ids.iter().chain(&fit_ids) {
        demo.compute(Method::DELETE, &format!("/servers/{id}"), None).await.expect("delete");
    }
    for id in ids.iter().chain(&fit_ids) {
        demo.wait_for(id, "DELETED", Duration::from_secs(60)).await.expect("DELETED");
    }

    // Two anti-affinity members on a one-host cloud: nova places the request whole or not at
    // all, so both end in ERROR with NoValidHost and neither runs.
    let group = demo
        .compute(
            Method::POST,
            "/os-server-groups",
            Some(json!({"server_group": {"name": "apart", "policy": "anti-affinity"}})),
        )
        .await
        .expect("group");
    let gid = group["server_group"]["id"].as_str().expect("group id").to_string();
    let mut body = boot(&image, "apart", json!({"min_count": 2, "return_reservation_id": true}));
    body["os:scheduler_hints"] = json!({"group": gid});
    let reply = demo.compute(Method::POST, "/servers", Some(body)).await.expect("boot the group");
    let r = reply["reservation_id"].as_str().expect("reservation").to_string();
    let listed = demo.compute(Method::GET, &format!("/servers?reservation_id={r}"), None).await.expect("list");
    let apart: Vec<String> = listed["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(apart.len(), 2);
    for id in &apart {
        let err = demo.wait_for(id, "ACTIVE", Duration::from_secs(60)).await.expect_err("no host for the pair");
        assert!(err.to_string().contains("No valid host"), "{err}");
        let shown = admin.compute(Method::GET, &format!("/servers/{id}"), None).await.expect("show");
        assert_eq!(shown["server"]["status"], "ERROR");
        assert!(shown["server"]["OS-EXT-SRV-ATTR:host"].is_null(), "the placement was given back: {shown}");
    }
}

/// Two compute hosts (the second another process on the same RabbitMQ) in two zones: the
/// AvailabilityZoneFilter sends each boot to the host of the zone it asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zone_filter_chooses_the_host_of_the_zone_asked_for() {
    if !novabox::supervise::rabbitmq::is_installed() {
        assert!(
            std::env::var("NOVABOX_SKIP_RABBITMQ").is_ok_and(|v| v == "1"),
            "this test needs rabbitmq-server (scripts/install-deps); set NOVABOX_SKIP_RABBITMQ=1 to skip it"
        );
        eprintln!("rabbitmq-server is not installed and NOVABOX_SKIP_RABBITMQ=1: skipping");
        return;
    }
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "rabbitmq"]));
    let stack = home.up(&[]);
    let config = std::fs::read_to_string(home.path().join("novabox.toml")).expect("config");
    let bus_port = config
        .lines()
        .skip_while(|l| l.trim() != "[bus]")
        .find_map(|l| l.trim().strip_prefix("port = "))
        .expect("[bus] port")
        .to_string();
    let secrets: toml::Value =
        toml::from_str(&std::fs::read_to_string(home.path().join("secrets.toml")).expect("secrets")).expect("toml");
    let password = secrets["rabbit_password"].as_str().expect("rabbit_password");
    let url = format!("amqp://novabox:{password}@127.0.0.1:{bus_port}/%2f");

    let second = TestHome::new();
    assert_ok(&second.init(&["--driver", "fake", "--bus", "rabbitmq"]));
    let cfg = second.path().join("novabox.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    let text = text.replacen("[host]\n", "[host]\nname = \"zone-two-host\"\n", 1);
    let text = text
        .lines()
        .filter(|l| !l.starts_with("name = ") || l.contains("zone-two-host"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = text.replacen("[bus]\n", &format!("[bus]\nurl = \"{url}\"\n"), 1);
    std::fs::write(&cfg, text).expect("write config");
    let mut compute = second.novabox();
    compute.args(["service", "compute"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = novabox::supervise::stop_pid(self.0.id() as i32, Duration::from_secs(10));
            let _ = self.0.wait();
        }
    }
    let _reap = Reap(compute.spawn().expect("start the second compute"));

    let admin = stack.client("admin").await;
    let demo = stack.client("demo").await;
    let hosts = compute_hosts(&admin, 2, &home).await;
    let first = hosts.iter().find(|h| *h != "zone-two-host").expect("the first host").clone();
    assert!(hosts.contains(&"zone-two-host".to_string()), "{hosts:?}");

    let agg = admin
        .compute(
            Method::POST,
            "/os-aggregates",
            Some(json!({"aggregate": {"name": "two", "availability_zone": "az-two"}})),
        )
        .await
        .expect("aggregate");
    let id = agg["aggregate"]["id"].as_i64().expect("id");
    admin
        .compute(
            Method::POST,
            &format!("/os-aggregates/{id}/action"),
            Some(json!({"add_host": {"host": "zone-two-host"}})),
        )
        .await
        .expect("add host");

    let image = image(&admin).await;
    // Several boots each way: with two hosts a lucky weigher could pass one boot by chance.
    let mut ids = Vec::new();
    for (i, zone, want) in [
        (0, "az-two", "zone-two-host"),
        (1, "nova", first.as_str()),
        (2, "az-two", "zone-two-host"),
        (3, "nova", first.as_str()),
    ] {
        let body = boot(&image, &format!("z{i}"), json!({"availability_zone": zone}));
        let created = demo.compute(Method::POST, "/servers", Some(body)).await.expect("boot");
        let sid = created["server"]["id"].as_str().expect("id").to_string();
        demo.wait_for(&sid, "ACTIVE", Duration::from_secs(60)).await.expect("ACTIVE");
        let shown = admin.compute(Method::GET, &format!("/servers/{sid}"), None).await.expect("show");
        assert_eq!(shown["server"]["OS-EXT-SRV-ATTR:host"], want, "{zone}: {shown}");
        assert_eq!(shown["server"]["OS-EXT-AZ:availability_zone"], zone, "{shown}");
        ids.push(sid);
    }
    let detail = admin.compute(Method::GET, "/os-availability-zone/detail", None).await.expect("detail");
    let zones = detail["availabilityZoneInfo"].as_array().expect("zones");
    let hosts_of = |name: &str| {
        zones.iter().find(|z| z["zoneName"] == name).map(|z| z["hosts"].clone()).unwrap_or_else(|| panic!("{detail}"))
    };
    assert!(hosts_of("az-two")["zone-two-host"]["nova-compute"].is_object(), "{detail}");
    assert!(hosts_of("nova")[first.as_str()]["nova-compute"].is_object(), "{detail}");
    assert!(hosts_of("internal")[first.as_str()]["nova-scheduler"].is_object(), "{detail}");
    for sid in &ids {
        demo.compute(Method::DELETE, &format!("/servers/{sid}"), None).await.expect("delete");
    }
    for sid in &ids {
        demo.wait_for(sid, "DELETED", Duration::from_secs(60)).await.expect("DELETED");
    }
}
