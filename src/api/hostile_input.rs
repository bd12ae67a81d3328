//! Property tests of hostile input (issue 10): every JSON body the API accepts, fed random,
//! mistyped and nested values, is answered with a 2xx or a clear 4xx, never a 5xx or a panic.
//! The router runs in-process (see `testing`), over a bus that accepts builds and drops them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use super::testing::Cloud;
use super::AppState;
use crate::bus::{Bus, BusError, Handler, Message, Subscription};

/// Casts succeed (and go nowhere), so a valid server create gets as far as it can; calls fail
/// as with no compute host.
pub(crate) struct SinkBus;

#[async_trait::async_trait]
impl Bus for SinkBus {
    async fn cast(&self, _topic: &str, _message: Message) -> Result<(), BusError> {
        Ok(())
    }
    async fn call(&self, _topic: &str, _message: Message, _timeout: Duration) -> Result<Value, BusError> {
        Err(BusError::Closed)
    }
    async fn fanout(&self, _topic: &str, _message: Message) -> Result<(), BusError> {
        Ok(())
    }
    async fn serve(&self, _topic: &str, _handler: Arc<dyn Handler>) -> Result<Subscription, BusError> {
        Err(BusError::Closed)
    }
}

/// Field names the API's bodies use, so random objects hit real fields with wrong values.
const FIELDS: &[&str] = &[
    "server",
    "name",
    "imageRef",
    "flavorRef",
    "networks",
    "uuid",
    "port",
    "fixed_ip",
    "min_count",
    "max_count",
    "key_name",
    "security_groups",
    "user_data",
    "metadata",
    "availability_zone",
    "block_device_mapping_v2",
    "source_type",
    "destination_type",
    "boot_index",
    "volume_size",
    "OS-SCH-HNT:scheduler_hints",
    "adminPass",
    "accessIPv4",
    "description",
    "os-stop",
    "os-start",
    "reboot",
    "type",
    "os-getConsoleOutput",
    "length",
    "flavor",
    "ram",
    "vcpus",
    "disk",
    "id",
    "swap",
    "extra_specs",
    "OS-FLV-EXT-DATA:ephemeral",
    "rxtx_factor",
    "tenant",
    "host",
    "keypair",
    "public_key",
    "quota_set",
    "instances",
    "cores",
    "status",
    "disabled_reason",
    "disk_format",
    "container_format",
    "visibility",
    "tags",
    "min_disk",
    "min_ram",
    "protected",
    "member",
    "op",
    "path",
    "value",
    "network",
    "subnet",
    "network_id",
    "cidr",
    "ip_version",
    "gateway_ip",
    "allocation_pools",
    "start",
    "end",
    "enable_dhcp",
    "dns_nameservers",
    "fixed_ips",
    "subnet_id",
    "ip_address",
    "device_id",
    "mac_address",
    "security_group",
    "security_group_rule",
    "security_group_id",
    "direction",
    "protocol",
    "port_range_min",
    "port_range_max",
    "remote_ip_prefix",
    "ethertype",
    "admin_state_up",
    "shared",
    "auth",
    "identity",
    "methods",
    "password",
    "user",
    "domain",
    "scope",
    "project",
    "token",
    "description",
    "enabled",
    "email",
    "default_project_id",
    "domain_id",
    "parent_id",
    "role",
    "volume",
    "size",
    "volume_type",
    "snapshot_id",
    "source_volid",
    "volumeAttachment",
    "volumeId",
    "device",
    "delete_on_termination",
    "addSecurityGroup",
    "removeSecurityGroup",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        prop_oneof![Just(-1.5f64), Just(1e300), Just(0.5)].prop_map(|f| json!(f)),
        "[a-z0-9 ./_-]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("../../../etc/passwd"),
            Just("auto"),
            Just("none"),
            Just("1"),
            Just("10.0.0.0/24"),
            Just("00000000-0000-0000-0000-000000000000"),
            Just("\u{0}\u{202e}\u{fffd}"),
        ]
        .prop_map(|s| Value::String(s.into())),
        (1usize..4).prop_map(|k| Value::String("x".repeat(k * 300))),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Map<_, _>>())),
        ]
    })
}

/// A body for an endpoint whose top-level key is `key`: mostly `{key: {...random fields}}`,
/// sometimes anything at all, sometimes bytes that are not JSON.
fn body_for(key: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => arb_json().prop_map(move |v| {
            let inner = if v.is_object() { v } else { json!({ "name": v }) };
            json!({ key: inner }).to_string().into_bytes()
        }),
        2 => arb_json().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// Every route that takes a JSON body: method, path, top-level key, who calls it.
fn endpoints(
    server: &str,
    image: &str,
    network: &str,
    volume: &str,
    project: &str,
) -> Vec<(Method, String, &'static str, bool)> {
    vec![
        (Method::POST, "/identity/v3/auth/tokens".into(), "auth", false),
        (Method::POST, "/identity/v3/projects".into(), "project", true),
        (Method::POST, "/identity/v3/users".into(), "user", true),
        (Method::POST, "/identity/v3/roles".into(), "role", true),
        (Method::POST, "/identity/v3/domains".into(), "domain", true),
        (Method::POST, "/compute/v2.1/servers".into(), "server", false),
        (Method::PUT, format!("/compute/v2.1/servers/{server}"), "server", false),
        (Method::POST, format!("/compute/v2.1/servers/{server}/action"), "os-stop", false),
        (Method::POST, format!("/compute/v2.1/servers/{server}/action"), "addSecurityGroup", false),
        (Method::POST, "/compute/v2.1/os-keypairs".into(), "keypair", false),
        (Method::POST, "/compute/v2.1/flavors".into(), "flavor", true),
        (Method::POST, "/compute/v2.1/flavors/1/os-extra_specs".into(), "extra_specs", true),
        (Method::POST, "/compute/v2.1/flavors/1/action".into(), "addTenantAccess", true),
        (Method::PUT, "/compute/v2.1/os-services/1".into(), "status", true),
        (Method::PUT, format!("/compute/v2.1/os-quota-sets/{project}"), "quota_set", true),
        (Method::POST, "/image/v2/images".into(), "name", false),
        (Method::PATCH, format!("/image/v2/images/{image}"), "op", false),
        (Method::POST, format!("/image/v2/images/{image}/members"), "member", false),
        (Method::POST, "/network/v2.0/networks".into(), "network", false),
        (Method::PUT, format!("/network/v2.0/networks/{network}"), "network", false),
        (Method::POST, "/network/v2.0/subnets".into(), "subnet", false),
        (Method::POST, "/network/v2.0/ports".into(), "port", false),
        (Method::POST, "/network/v2.0/security-groups".into(), "security_group", false),
        (Method::POST, "/network/v2.0/security-group-rules".into(), "security_group_rule", false),
        (Method::PUT, format!("/network/v2.0/quotas/{project}"), "quota", true),
        (Method::POST, format!("/volume/v3/{project}/volumes"), "volume", false),
        (Method::PUT, format!("/volume/v3/{project}/volumes/{volume}"), "volume", false),
        (Method::PUT, format!("/volume/v3/{project}/os-quota-sets/{project}"), "quota_set", true),
        (Method::POST, format!("/compute/v2.1/servers/{server}/os-volume_attachments"), "volumeAttachment", false),
    ]
}

#[test]
fn every_json_body_gets_2xx_or_a_clear_4xx() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let cloud = Cloud::new();
    let state = AppState { bus: Arc::new(SinkBus), ..cloud.state.clone() };
    let app = super::router(state);
    let (demo, admin) = rt.block_on(async { (cloud.token("demo").await, cloud.token("admin").await) });
    // Real resources, so the update routes reach their body parsing.
    let (server, image, network) = rt.block_on(async {
        let img = cloud
            .post("/image/v2/images", &demo, json!({"name": "i", "disk_format": "raw", "container_format": "bare"}))
            .await
            .json();
        let image = img["id"].as_str().expect("image").to_string();
        let upload = Request::put(format!("/image/v2/images/{image}/file"))
            .header("x-auth-token", &demo)
            .header("content-type", "application/octet-stream")
            .body(Body::from(vec![0u8; 1024]))
            .expect("request");
        assert!(cloud.send(upload).await.status.is_success());
        let net = cloud.post("/network/v2.0/networks", &demo, json!({"network": {"name": "n"}})).await.json();
        let network = net["network"]["id"].as_str().expect("network").to_string();
        let body = json!({"server": {"name": "s", "imageRef": image, "flavorRef": "1", "networks": "none"}});
        let req = Request::post("/compute/v2.1/servers")
            .header("x-auth-token", &demo)
            .header("openstack-api-version", "compute 2.79")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("infallible");
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
        let v: Value = serde_json::from_slice(&bytes).expect("json");
        (v["server"]["id"].as_str().unwrap_or_else(|| panic!("server: {v}")).to_string(), image, network)
    });
    // A volume row is enough for its update route (no qemu-img needed to make its file).
    let volume = uuid::Uuid::new_v4().to_string();
    let row = crate::db::volumes::NewVolume {
        id: volume.clone(),
        name: Some("v".into()),
        description: None,
        project_id: cloud.demo_project.clone(),
        user_id: cloud.state.db.with(|db| db.user_by_name("demo")).expect("db").expect("demo").id,
        size: 1,
        source_image_id: None,
        availability_zone: "nova".into(),
        path: crate::volumes::file_name(&volume),
    };
    cloud.state.db.with(|db| db.insert_volume(&row)).expect("volume row");
    let routes = endpoints(&server, &image, &network, &volume, &cloud.demo_project);
    let cases = std::env::var("NOVABOX_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let mut runner = TestRunner::new(RunnerConfig { cases, failure_persistence: None, ..RunnerConfig::default() });
    let strategy = (0..routes.len()).prop_flat_map(|i| (Just(i), body_for(routes[i].2)));
    let sent = std::cell::Cell::new(0usize);
    runner
        .run(&strategy, |(i, body)| {
            let (method, path, _, as_admin) = &routes[i];
            let token = if *as_admin { &admin } else { &demo };
            let content_type = if *method == Method::PATCH {
                "application/openstack-images-v2.1-json-patch"
            } else {
                "application/json"
            };
            let req = Request::builder()
                .method(method.clone())
                .uri(path.as_str())
                .header("host", "127.0.0.1:8774")
                .header("x-auth-token", token.as_str())
                .header("openstack-api-version", "compute 2.79")
                .header("content-type", content_type)
                .body(Body::from(body.clone()))
                .expect("request");
            let status = rt.block_on(async { app.clone().oneshot(req).await.expect("infallible").status() });
            sent.set(sent.get() + 1);
            prop_assert!(
                status.is_success() || status.is_client_error(),
                "{method} {path} answered {status} to {}",
                String::from_utf8_lossy(&body)
            );
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    println!("RELIABILITY fuzz-api: {} generated bodies over {} routes, none answered 5xx", sent.get(), routes.len());
}

/// novabox.toml: the default file with random lines replaced by random values, or random text,
/// is either loaded or refused with an error naming the file; never a panic.
#[test]
fn any_novabox_toml_loads_or_is_refused_cleanly() {
    let default = crate::config::Config::default().to_toml();
    let lines: Vec<String> = default.lines().map(str::to_string).collect();
    let value = prop_oneof![
        Just("\"\"".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("99999999999999999999".to_string()),
        Just("1.5e308".to_string()),
        Just("true".to_string()),
        Just("[1, \"a\"]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("\"../../../etc/passwd\"".to_string()),
        Just("\"0.0.0.0\"".to_string()),
        "\"[ -~]{0,40}\"".prop_map(|s| s.replace('\\', "")),
    ];
    let edits = prop::collection::vec((0..lines.len(), value), 1..6);
    let text = prop_oneof![
        4 => edits.prop_map(move |edits| {
            let mut l = lines.clone();
            for (i, v) in edits {
                if let Some((key, _)) = l[i].split_once(" = ") {
                    l[i] = format!("{key} = {v}");
                } else {
                    l[i] = v;
                }
            }
            l.join("\n")
        }),
        1 => "[ -~\n]{0,200}",
    ];
    let cases = std::env::var("NOVABOX_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mut runner = TestRunner::new(RunnerConfig { cases, failure_persistence: None, ..RunnerConfig::default() });
    let file = std::path::Path::new("/fuzz/novabox.toml");
    let (loaded, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&text, |t| {
            match crate::config::Config::parse(&t, file) {
                Ok(_) => loaded.set(loaded.get() + 1),
                Err(e) => {
                    prop_assert!(e.to_string().contains("novabox.toml"), "error without the file: {e}");
                    refused.set(refused.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "RELIABILITY fuzz-config: {} generated novabox.toml files, {} loaded, {} refused with the file named",
        loaded.get() + refused.get(),
        loaded.get(),
        refused.get()
    );
}
