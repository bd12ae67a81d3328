use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::*;
use crate::api::testing::{Cloud, Reply};

fn neutron_error(r: &Reply, status: StatusCode, kind: &str) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    let err = &v["NeutronError"];
    assert_eq!(err["type"], kind, "{v}");
    assert_eq!(err["detail"], "", "{v}");
    err["message"].as_str().unwrap_or_default().to_string()
}

fn ids(v: &Value, collection: &str) -> Vec<String> {
    v[collection].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect()
}

async fn created(cloud: &Cloud, token: &str, uri: &str, body: Value, key: &str) -> Value {
    let r = cloud.post(uri, token, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{uri}: {}", r.text());
    r.json()[key].clone()
}

#[test]
fn list_body_filters_sorts_pages_and_selects_fields() {
    let items = vec![
        json!({"id": "a", "name": "x", "shared": true, "fixed_ips": [{"ip_address": "10.0.0.2", "subnet_id": "s"}]}),
        json!({"id": "b", "name": "y", "shared": false, "fixed_ips": []}),
        json!({"id": "c", "name": "x", "shared": false, "fixed_ips": [{"ip_address": "10.0.0.3", "subnet_id": "s"}]}),
    ];
    let q = |s: &str| -> Vec<(String, String)> {
        s.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap())
            .map(|(a, b)| (a.into(), b.into()))
            .collect()
    };
    let run = |s: &str| list_body("things", items.clone(), &q(s), "http://h/network/v2.0/things", "NotFound").unwrap();
    assert_eq!(ids(&run("name=x"), "things"), vec!["a", "c"]);
    assert_eq!(ids(&run("name=x&name=y&shared=False"), "things"), vec!["b", "c"]);
    assert_eq!(ids(&run("unknown=1"), "things"), vec!["a", "b", "c"]);
    let v = list_body("things", items.clone(), &[("fixed_ips".into(), "ip_address=10.0.0.3".into())], "u", "NotFound")
        .unwrap();
    assert_eq!(ids(&v, "things"), vec!["c"]);
    assert_eq!(ids(&run("sort_key=name&sort_dir=desc&sort_key=id&sort_dir=desc"), "things"), vec!["b", "c", "a"]);
    let v = run("limit=2");
    assert_eq!(ids(&v, "things"), vec!["a", "b"]);
    assert_eq!(v["things_links"][0]["href"], "http://h/network/v2.0/things?limit=2&marker=b");
    let v = run("limit=2&marker=b");
    assert_eq!(ids(&v, "things"), vec!["c"]);
    assert!(v.get("things_links").is_none());
    let v = run("fields=id&fields=name");
    assert_eq!(v["things"][0], json!({"id": "a", "name": "x"}));
    assert!(list_body("t", items.clone(), &q("marker=zzz"), "u", "NotFound").is_err());
    assert!(list_body("t", items, &q("sort_dir=sideways"), "u", "NotFound").is_err());
}

#[test]
fn rule_validation() {
    let ok = |v: Value| validate_rule(v.as_object().unwrap(), "p").unwrap();
    let r = ok(
        json!({"security_group_id": "g", "direction": "ingress", "protocol": "TCP", "port_range_min": 22, "port_range_max": "22"}),
    );
    assert_eq!(
        (r.protocol.as_deref(), r.port_range_min, r.port_range_max, r.ethertype.as_str()),
        (Some("tcp"), Some(22), Some(22), "IPv4")
    );
    let r = ok(
        json!({"security_group_id": "g", "direction": "egress", "ethertype": "ipv6", "protocol": "any", "remote_ip_prefix": "::/0"}),
    );
    assert_eq!((r.protocol, r.ethertype.as_str()), (None, "IPv6"));
    let r = ok(
        json!({"security_group_id": "g", "direction": "ingress", "protocol": 1, "port_range_min": 8, "port_range_max": 0}),
    );
    assert_eq!(r.protocol.as_deref(), Some("1"));
    let r = ok(json!({"security_group_id": "g", "direction": "ingress", "remote_ip_prefix": "10.0.0.5"}));
    assert_eq!(r.remote_ip_prefix.as_deref(), Some("10.0.0.5/32"));

    let cases = [
        (json!({"security_group_id": "g", "direction": "sideways"}), "InvalidInput"),
        (json!({"security_group_id": "g", "direction": "ingress", "ethertype": "IPX"}), "InvalidInput"),
        (
            json!({"security_group_id": "g", "direction": "ingress", "protocol": "bogus"}),
            "SecurityGroupRuleInvalidProtocol",
        ),
        (
            json!({"security_group_id": "g", "direction": "ingress", "protocol": 256}),
            "SecurityGroupRuleInvalidProtocol",
        ),
        (
            json!({"security_group_id": "g", "direction": "ingress", "port_range_min": 22}),
            "SecurityGroupProtocolRequiredWithPorts",
        ),
        (
            json!({"security_group_id": "g", "direction": "ingress", "protocol": "tcp", "port_range_min": 90, "port_range_max": 80}),
            "SecurityGroupInvalidPortRange",
        ),
        (
            json!({"security_group_id": "g", "direction": "ingress", "protocol": "udp", "port_range_min": 0, "port_range_max": 80}),
            "SecurityGroupInvalidPortValue",
        ),
        (
            json!({"security_group_id": "g", "direction": "ingress", "protocol": "tcp", "port_range_min": 1, "port_range_max": 70000}),
            "SecurityGroupInvalidPortValue",
        ),
        (
            json!({"security_group_id": "g", "direction": "ingress", "protocol": "icmp", "port_range_max": 0}),
            "SecurityGroupMissingIcmpType",
        ),
        (
            json!({"security_group_id": "g", "direction": "ingress", "protocol": "icmp", "port_range_min": 300}),
            "SecurityGroupInvalidIcmpValue",
        ),
        (
            json!({"security_group_id": "g", "direction": "ingress", "protocol": "gre", "port_range_min": 1}),
            "SecurityGroupInvalidProtocolForPortRange",
        ),
        (
            json!({"security_group_id": "g", "direction": "ingress", "remote_ip_prefix": "::/0"}),
            "SecurityGroupRuleParameterConflict",
        ),
        (json!({"security_group_id": "g", "direction": "ingress", "remote_ip_prefix": "10.0.0.0/33"}), "InvalidInput"),
        (
            json!({"security_group_id": "g", "direction": "ingress", "remote_ip_prefix": "10.0.0.0/8", "remote_group_id": "g"}),
            "SecurityGroupRemoteGroupAndRemoteIpPrefix",
        ),
        (json!({"direction": "ingress"}), "HTTPBadRequest"),
    ];
    for (body, kind) in cases {
        let e = validate_rule(body.as_object().unwrap(), "p").unwrap_err();
        assert_eq!((e.status, e.kind), (StatusCode::BAD_REQUEST, Some(kind)), "{body}: {}", e.message);
    }
}

#[test]
fn subnet_validation() {
    let obj = |v: Value| v.as_object().unwrap().clone();
    let s = new_subnet(&obj(json!({"network_id": "n", "cidr": "10.1.0.0/24", "ip_version": 4})), "p".into()).unwrap();
    assert_eq!(s.gateway_ip, Some("10.1.0.1".parse().unwrap()));
    assert_eq!(
        s.allocation_pools,
        vec![Pool { start: "10.1.0.2".parse().unwrap(), end: "10.1.0.254".parse().unwrap() }]
    );
    let s =
        new_subnet(&obj(json!({"network_id": "n", "cidr": "10.1.0.0/24", "gateway_ip": null})), "p".into()).unwrap();
    assert_eq!((s.gateway_ip, s.allocation_pools[0].start), (None, "10.1.0.1".parse().unwrap()));
    let cases = [
        (json!({"network_id": "n", "cidr": "fd00::/64", "ip_version": 6}), StatusCode::BAD_REQUEST, "IPv6"),
        (json!({"network_id": "n", "cidr": "10.1.0.5/24"}), StatusCode::BAD_REQUEST, "did you mean 10.1.0.0/24"),
        (json!({"network_id": "n", "cidr": "banana"}), StatusCode::BAD_REQUEST, "banana"),
        (json!({"network_id": "n"}), StatusCode::BAD_REQUEST, "cidr"),
        (json!({"cidr": "10.1.0.0/24"}), StatusCode::BAD_REQUEST, "network_id"),
        (
            json!({"network_id": "n", "cidr": "10.1.0.0/24", "gateway_ip": "10.2.0.1"}),
            StatusCode::BAD_REQUEST,
            "Gateway",
        ),
        (
            json!({"network_id": "n", "cidr": "10.1.0.0/24", "allocation_pools": [{"start": "10.1.0.1", "end": "10.1.0.9"}]}),
            StatusCode::CONFLICT,
            "conflicts",
        ),
        (
            json!({"network_id": "n", "cidr": "10.1.0.0/24", "allocation_pools": [{"start": "10.1.0.9", "end": "10.1.0.3"}]}),
            StatusCode::BAD_REQUEST,
            "start is after",
        ),
        (
            json!({"network_id": "n", "cidr": "10.1.0.0/24", "dns_nameservers": ["8.8.8.8", "8.8.8.8"]}),
            StatusCode::BAD_REQUEST,
            "Duplicate",
        ),
        (
            json!({"network_id": "n", "cidr": "10.1.0.0/24", "host_routes": [{"destination": "x", "nexthop": "10.1.0.1"}]}),
            StatusCode::BAD_REQUEST,
            "host_routes",
        ),
    ];
    for (body, status, needle) in cases {
        let e = new_subnet(&obj(body.clone()), "p".into()).unwrap_err();
        assert_eq!(e.status, status, "{body}: {}", e.message);
        assert!(e.message.contains(needle), "{body}: {}", e.message);
    }
}

#[tokio::test]
async fn discovery_and_error_shapes() {
    let cloud = Cloud::new();
    for uri in ["/network", "/network/"] {
        let r = cloud.call(Method::GET, uri, None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        assert_eq!(r.json()["versions"][0]["id"], "v2.0");
        assert_eq!(r.json()["versions"][0]["links"][0]["href"], "http://127.0.0.1:8774/network/v2.0/");
    }
    let r = cloud.call(Method::GET, "/network/v2.0/networks", None, None).await;
    neutron_error(&r, StatusCode::UNAUTHORIZED, "HTTPUnauthorized");
    let demo = cloud.token("demo").await;
    let v = cloud.get("/network/v2.0/extensions", &demo).await.json();
    let aliases: Vec<&str> = v["extensions"].as_array().unwrap().iter().map(|e| e["alias"].as_str().unwrap()).collect();
    for a in ["security-group", "port-security", "binding", "standard-attr-description", "standard-attr-timestamp"] {
        assert!(aliases.contains(&a), "{a} missing from {aliases:?}");
    }
    assert_eq!(cloud.get("/network/v2.0/extensions/security-group", &demo).await.status, StatusCode::OK);
    let r = cloud.get("/network/v2.0/networks/nope", &demo).await;
    let msg = neutron_error(&r, StatusCode::NOT_FOUND, "NetworkNotFound");
    assert_eq!(msg, "Network nope could not be found.");
    let r = cloud.get("/network/v2.0/bogus", &demo).await;
    neutron_error(&r, StatusCode::NOT_FOUND, "HTTPNotFound");
    let r = cloud.call(Method::PATCH, "/network/v2.0/networks", Some(&demo), None).await;
    neutron_error(&r, StatusCode::METHOD_NOT_ALLOWED, "HTTPMethodNotAllowed");
    let r = cloud.post("/network/v2.0/networks", &demo, json!({"network": {"name": "x", "color": "red"}})).await;
    neutron_error(&r, StatusCode::BAD_REQUEST, "HTTPBadRequest");
    let r = cloud.post("/network/v2.0/networks", &demo, json!({"net": {}})).await;
    neutron_error(&r, StatusCode::BAD_REQUEST, "HTTPBadRequest");
}

#[tokio::test]
async fn networks_subnets_and_tenancy() {
    let cloud = Cloud::new();
    let config = cloud.state.config.clone();
    let private = cloud.state.db.with(|db| db.ensure_default_network(&config)).unwrap();
    let (demo, alt, admin) = (cloud.token("demo").await, cloud.token("alt").await, cloud.token("admin").await);

    // The shared default network is visible to everyone; provider details to admins only.
    let v = cloud.get("/network/v2.0/networks", &demo).await.json();
    assert_eq!(ids(&v, "networks"), vec![private.id.clone()]);
    let n = &v["networks"][0];
    assert_eq!(
        (n["name"].as_str(), n["shared"].as_bool(), n["status"].as_str()),
        (Some("private"), Some(true), Some("ACTIVE"))
    );
    assert!(n.get("provider:network_type").is_none());
    let n = cloud.get(&format!("/network/v2.0/networks/{}", private.id), &admin).await.json();
    assert_eq!(n["network"]["provider:network_type"], "flat");
    assert_eq!(n["network"]["provider:physical_network"], "nbr0");

    let net = created(
        &cloud,
        &demo,
        "/network/v2.0/networks",
        json!({"network": {"name": "mine", "description": "d"}}),
        "network",
    )
    .await;
    let net_id = net["id"].as_str().unwrap().to_string();
    for key in [
        "id",
        "name",
        "status",
        "admin_state_up",
        "shared",
        "subnets",
        "project_id",
        "tenant_id",
        "mtu",
        "router:external",
        "availability_zones",
        "description",
        "tags",
        "created_at",
        "updated_at",
        "revision_number",
        "port_security_enabled",
    ] {
        assert!(net.get(key).is_some(), "network lacks {key}: {net}");
    }
    assert_eq!(net["project_id"], cloud.demo_project.as_str());
    assert!(net["created_at"].as_str().unwrap().ends_with('Z'));
    let r = cloud.post("/network/v2.0/networks", &demo, json!({"network": {"name": "s", "shared": true}})).await;
    neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized");
    let r = cloud
        .post("/network/v2.0/networks", &demo, json!({"network": {"name": "s", "project_id": cloud.alt_project}}))
        .await;
    neutron_error(&r, StatusCode::BAD_REQUEST, "HTTPBadRequest");

    // Another project's network does not exist for alt.
    neutron_error(
        &cloud.get(&format!("/network/v2.0/networks/{net_id}"), &alt).await,
        StatusCode::NOT_FOUND,
        "NetworkNotFound",
    );
    neutron_error(
        &cloud.delete(&format!("/network/v2.0/networks/{net_id}"), &alt).await,
        StatusCode::NOT_FOUND,
        "NetworkNotFound",
    );
    assert_eq!(ids(&cloud.get("/network/v2.0/networks", &alt).await.json(), "networks"), vec![private.id.clone()]);
    let all = cloud.get("/network/v2.0/networks", &admin).await.json();
    assert_eq!(ids(&all, "networks").len(), 2);
    // A shared network can be used but not changed by others.
    let r =
        cloud.put(&format!("/network/v2.0/networks/{}", private.id), &demo, json!({"network": {"name": "x"}})).await;
    neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized");

    let v = cloud.get("/network/v2.0/networks?name=mine&fields=id&fields=name", &demo).await.json();
    assert_eq!(v["networks"], json!([{"id": net_id, "name": "mine"}]));
    let v = cloud.get("/network/v2.0/networks?shared=true", &demo).await.json();
    assert_eq!(ids(&v, "networks"), vec![private.id.clone()]);
    let v = cloud.get("/network/v2.0/networks?limit=1", &demo).await.json();
    assert_eq!(v["networks"].as_array().unwrap().len(), 1);
    assert!(v["networks_links"][0]["href"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:8774/network/v2.0/networks?"));

    let r = cloud
        .put(&format!("/network/v2.0/networks/{net_id}"), &demo, json!({"network": {"name": "renamed", "mtu": 1400}}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        (r.json()["network"]["name"].as_str(), r.json()["network"]["mtu"].as_i64()),
        (Some("renamed"), Some(1400))
    );
    assert!(r.json()["network"]["revision_number"].as_i64().unwrap() > net["revision_number"].as_i64().unwrap());
    let r = cloud.put(&format!("/network/v2.0/networks/{net_id}"), &demo, json!({"network": {"id": "x"}})).await;
    neutron_error(&r, StatusCode::BAD_REQUEST, "HTTPBadRequest");

    // Subnets.
    let subnet = created(
        &cloud,
        &demo,
        "/network/v2.0/subnets",
        json!({"subnet": {"network_id": net_id, "cidr": "10.9.0.0/24", "ip_version": 4, "name": "sn", "dns_nameservers": ["10.9.0.1"]}}),
        "subnet",
    )
    .await;
    assert_eq!(subnet["gateway_ip"], "10.9.0.1");
    assert_eq!(subnet["allocation_pools"], json!([{"start": "10.9.0.2", "end": "10.9.0.254"}]));
    assert_eq!(subnet["enable_dhcp"], true);
    assert_eq!(subnet["ip_version"], 4);
    let subnet_id = subnet["id"].as_str().unwrap().to_string();
    let r = cloud
        .post(
            "/network/v2.0/subnets",
            &demo,
            json!({"subnet": {"network_id": net_id, "cidr": "10.9.0.0/16", "ip_version": 4}}),
        )
        .await;
    let msg = neutron_error(&r, StatusCode::BAD_REQUEST, "InvalidInput");
    assert!(msg.contains("overlaps"), "{msg}");
    let r = cloud
        .post(
            "/network/v2.0/subnets",
            &demo,
            json!({"subnet": {"network_id": net_id, "cidr": "fd00::/64", "ip_version": 6}}),
        )
        .await;
    let msg = neutron_error(&r, StatusCode::BAD_REQUEST, "InvalidInput");
    assert!(msg.contains("IPv6"), "{msg}");
    let r = cloud
        .post(
            "/network/v2.0/subnets",
            &alt,
            json!({"subnet": {"network_id": private.id, "cidr": "10.8.0.0/24", "ip_version": 4}}),
        )
        .await;
    neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized");
    let n = cloud.get(&format!("/network/v2.0/networks/{net_id}"), &demo).await.json();
    assert_eq!(n["network"]["subnets"], json!([subnet_id]));
    let v = cloud.get("/network/v2.0/subnets", &alt).await.json();
    assert_eq!(v["subnets"].as_array().unwrap().len(), 1, "alt sees the shared network's subnet only");
    neutron_error(
        &cloud.get(&format!("/network/v2.0/subnets/{subnet_id}"), &alt).await,
        StatusCode::NOT_FOUND,
        "SubnetNotFound",
    );
    let r = cloud
        .put(
            &format!("/network/v2.0/subnets/{subnet_id}"),
            &demo,
            json!({"subnet": {"name": "sn2", "enable_dhcp": false}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["subnet"]["enable_dhcp"], false);
    let r = cloud
        .put(&format!("/network/v2.0/subnets/{subnet_id}"), &demo, json!({"subnet": {"cidr": "10.7.0.0/24"}}))
        .await;
    neutron_error(&r, StatusCode::BAD_REQUEST, "HTTPBadRequest");

    // In use: a port keeps the network and the subnet.
    let port = created(&cloud, &demo, "/network/v2.0/ports", json!({"port": {"network_id": net_id}}), "port").await;
    let r = cloud.delete(&format!("/network/v2.0/networks/{net_id}"), &demo).await;
    neutron_error(&r, StatusCode::CONFLICT, "NetworkInUse");
    let r = cloud.delete(&format!("/network/v2.0/subnets/{subnet_id}"), &demo).await;
    neutron_error(&r, StatusCode::CONFLICT, "SubnetInUse");
    assert_eq!(
        cloud.delete(&format!("/network/v2.0/ports/{}", port["id"].as_str().unwrap()), &demo).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(cloud.delete(&format!("/network/v2.0/subnets/{subnet_id}"), &demo).await.status, StatusCode::NO_CONTENT);
    assert_eq!(cloud.delete(&format!("/network/v2.0/networks/{net_id}"), &demo).await.status, StatusCode::NO_CONTENT);
    neutron_error(
        &cloud.get(&format!("/network/v2.0/networks/{net_id}"), &demo).await,
        StatusCode::NOT_FOUND,
        "NetworkNotFound",
    );
}

#[tokio::test]
async fn ports_allocate_filter_and_exhaust() {
    let cloud = Cloud::new();
    let (demo, alt, admin) = (cloud.token("demo").await, cloud.token("alt").await, cloud.token("admin").await);
    let net = created(&cloud, &demo, "/network/v2.0/networks", json!({"network": {"name": "small"}}), "network").await;
    let net_id = net["id"].as_str().unwrap().to_string();
    // .1 gateway, .2-.6 to hand out.
    let subnet = created(
        &cloud,
        &demo,
        "/network/v2.0/subnets",
        json!({"subnet": {"network_id": net_id, "cidr": "10.5.0.0/29", "ip_version": 4}}),
        "subnet",
    )
    .await;
    let subnet_id = subnet["id"].as_str().unwrap().to_string();

    let p1 = created(
        &cloud,
        &demo,
        "/network/v2.0/ports",
        json!({"port": {"network_id": net_id, "name": "p1", "device_id": "vm-1", "device_owner": "compute:nova"}}),
        "port",
    )
    .await;
    assert_eq!(p1["fixed_ips"], json!([{"subnet_id": subnet_id, "ip_address": "10.5.0.2"}]));
    assert!(p1["mac_address"].as_str().unwrap().starts_with("fa:16:3e:"));
    assert_eq!(
        (p1["status"].as_str(), p1["admin_state_up"].as_bool(), p1["port_security_enabled"].as_bool()),
        (Some("DOWN"), Some(true), Some(true))
    );
    assert!(p1.get("binding:host_id").is_none(), "binding details are admin-only");
    assert_eq!(p1["binding:vnic_type"], "normal");
    // The project's default group was created for it.
    let groups = cloud.get("/network/v2.0/security-groups?name=default", &demo).await.json();
    assert_eq!(p1["security_groups"], json!([groups["security_groups"][0]["id"]]));

    let p2 = created(
        &cloud,
        &demo,
        "/network/v2.0/ports",
        json!({"port": {"network_id": net_id, "fixed_ips": [{"ip_address": "10.5.0.5"}]}}),
        "port",
    )
    .await;
    assert_eq!(p2["fixed_ips"][0]["ip_address"], "10.5.0.5");
    let r = cloud
        .post(
            "/network/v2.0/ports",
            &demo,
            json!({"port": {"network_id": net_id, "fixed_ips": [{"ip_address": "10.5.0.5"}]}}),
        )
        .await;
    neutron_error(&r, StatusCode::CONFLICT, "IpAddressAlreadyAllocated");
    let r = cloud
        .post(
            "/network/v2.0/ports",
            &demo,
            json!({"port": {"network_id": net_id, "fixed_ips": [{"subnet_id": subnet_id, "ip_address": "10.5.0.1"}]}}),
        )
        .await;
    neutron_error(&r, StatusCode::BAD_REQUEST, "InvalidIpForSubnet");
    let r = cloud
        .post("/network/v2.0/ports", &demo, json!({"port": {"network_id": net_id, "mac_address": p1["mac_address"]}}))
        .await;
    neutron_error(&r, StatusCode::CONFLICT, "MacAddressInUse");
    for want in ["10.5.0.3", "10.5.0.4", "10.5.0.6"] {
        let p = created(&cloud, &demo, "/network/v2.0/ports", json!({"port": {"network_id": net_id}}), "port").await;
        assert_eq!(p["fixed_ips"][0]["ip_address"], want);
    }
    let r = cloud.post("/network/v2.0/ports", &demo, json!({"port": {"network_id": net_id}})).await;
    neutron_error(&r, StatusCode::CONFLICT, "IpAddressGenerationFailure");

    let v = cloud.get("/network/v2.0/ports?fixed_ips=ip_address%3D10.5.0.5", &demo).await.json();
    assert_eq!(ids(&v, "ports"), vec![p2["id"].as_str().unwrap()]);
    let v = cloud.get("/network/v2.0/ports?device_id=vm-1", &demo).await.json();
    assert_eq!(ids(&v, "ports"), vec![p1["id"].as_str().unwrap()]);
    let v =
        cloud.get(&format!("/network/v2.0/ports?network_id={net_id}&device_owner=compute:nova"), &demo).await.json();
    assert_eq!(v["ports"].as_array().unwrap().len(), 1);
    let v = cloud
        .get(&format!("/network/v2.0/ports?mac_address={}", p1["mac_address"].as_str().unwrap()), &demo)
        .await
        .json();
    assert_eq!(v["ports"].as_array().unwrap().len(), 1);
    assert!(cloud.get("/network/v2.0/ports", &alt).await.json()["ports"].as_array().unwrap().is_empty());
    let p1_uri = format!("/network/v2.0/ports/{}", p1["id"].as_str().unwrap());
    neutron_error(&cloud.get(&p1_uri, &alt).await, StatusCode::NOT_FOUND, "PortNotFound");
    let admin_view = cloud.get(&p1_uri, &admin).await.json();
    assert_eq!(admin_view["port"]["binding:vif_type"], "unbound");
    assert_eq!(admin_view["port"]["binding:host_id"], "");

    // Updates: name, groups, port security, binding (admin only).
    let sg = created(
        &cloud,
        &demo,
        "/network/v2.0/security-groups",
        json!({"security_group": {"name": "web"}}),
        "security_group",
    )
    .await;
    let r = cloud.put(&p1_uri, &demo, json!({"port": {"name": "renamed", "security_groups": [sg["id"]]}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["port"]["security_groups"], json!([sg["id"]]));
    let r = cloud.put(&p1_uri, &demo, json!({"port": {"port_security_enabled": false}})).await;
    neutron_error(&r, StatusCode::CONFLICT, "PortSecurityPortHasSecurityGroup");
    let r = cloud.put(&p1_uri, &demo, json!({"port": {"port_security_enabled": false, "security_groups": []}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = cloud.put(&p1_uri, &demo, json!({"port": {"binding:host_id": "h1"}})).await;
    neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized");
    let r = cloud.put(&p1_uri, &admin, json!({"port": {"binding:host_id": "h1"}})).await;
    assert_eq!(r.json()["port"]["binding:vif_type"], "bridge");
    let r = cloud.put(&p1_uri, &demo, json!({"port": {"security_groups": ["no-such-group"]}})).await;
    neutron_error(&r, StatusCode::NOT_FOUND, "SecurityGroupNotFound");

    // The library view the boot path uses.
    let ports = cloud.state.db.with(|db| db.ports_for_device("vm-1")).unwrap();
    assert_eq!((ports.len(), ports[0].network_name.as_str()), (1, "small"));
    assert_eq!(cloud.state.db.with(|db| db.release_ports_for_device("vm-1")).unwrap(), 1);
    neutron_error(&cloud.get(&p1_uri, &demo).await, StatusCode::NOT_FOUND, "PortNotFound");
    let p = created(&cloud, &demo, "/network/v2.0/ports", json!({"port": {"network_id": net_id}}), "port").await;
    assert_eq!(p["fixed_ips"][0]["ip_address"], "10.5.0.2", "released addresses come back");
}

#[tokio::test]
async fn security_groups_and_rules() {
    let cloud = Cloud::new();
    let (demo, alt) = (cloud.token("demo").await, cloud.token("alt").await);
    let v = cloud.get("/network/v2.0/security-groups", &demo).await.json();
    let groups = v["security_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    let default = &groups[0];
    assert_eq!(default["name"], "default");
    let default_id = default["id"].as_str().unwrap().to_string();
    let mut rules: Vec<(String, String, Value)> = default["security_group_rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["direction"].as_str().unwrap().into(),
                r["ethertype"].as_str().unwrap().into(),
                r["remote_group_id"].clone(),
            )
        })
        .collect();
    rules.sort_by(|a, b| (a.0.as_str(), a.1.as_str()).cmp(&(b.0.as_str(), b.1.as_str())));
    assert_eq!(
        rules,
        vec![
            ("egress".into(), "IPv4".into(), Value::Null),
            ("egress".into(), "IPv6".into(), Value::Null),
            ("ingress".into(), "IPv4".into(), json!(default_id)),
            ("ingress".into(), "IPv6".into(), json!(default_id)),
        ]
    );
    // Listing again does not make a second default group.
    let v = cloud.get("/network/v2.0/security-groups", &demo).await.json();
    assert_eq!(v["security_groups"].as_array().unwrap().len(), 1);
    let v = cloud.get("/network/v2.0/security-group-rules", &demo).await.json();
    assert_eq!(v["security_group_rules"].as_array().unwrap().len(), 4);

    let r = cloud.post("/network/v2.0/security-groups", &demo, json!({"security_group": {"name": "default"}})).await;
    neutron_error(&r, StatusCode::CONFLICT, "SecurityGroupDefaultAlreadyExists");
    let r = cloud.delete(&format!("/network/v2.0/security-groups/{default_id}"), &demo).await;
    neutron_error(&r, StatusCode::CONFLICT, "SecurityGroupCannotRemoveDefault");
    let r = cloud
        .put(
            &format!("/network/v2.0/security-groups/{default_id}"),
            &demo,
            json!({"security_group": {"name": "other"}}),
        )
        .await;
    neutron_error(&r, StatusCode::CONFLICT, "SecurityGroupCannotUpdateDefault");

    let web = created(
        &cloud,
        &demo,
        "/network/v2.0/security-groups",
        json!({"security_group": {"name": "web", "description": "http"}}),
        "security_group",
    )
    .await;
    let web_id = web["id"].as_str().unwrap().to_string();
    assert_eq!(web["security_group_rules"].as_array().unwrap().len(), 2, "a new group lets everything out");
    let rule_body = json!({"security_group_rule": {"security_group_id": web_id, "direction": "ingress", "protocol": "tcp",
                                                    "port_range_min": 80, "port_range_max": 80, "remote_ip_prefix": "0.0.0.0/0"}});
    let rule =
        created(&cloud, &demo, "/network/v2.0/security-group-rules", rule_body.clone(), "security_group_rule").await;
    assert_eq!(
        (rule["protocol"].as_str(), rule["port_range_min"].as_i64(), rule["ethertype"].as_str()),
        (Some("tcp"), Some(80), Some("IPv4"))
    );
    let r = cloud.post("/network/v2.0/security-group-rules", &demo, rule_body).await;
    let msg = neutron_error(&r, StatusCode::CONFLICT, "SecurityGroupRuleExists");
    assert!(msg.contains(rule["id"].as_str().unwrap()), "{msg}");
    let r = cloud
        .post("/network/v2.0/security-group-rules", &demo, json!({"security_group_rule": {"security_group_id": web_id, "direction": "ingress", "protocol": "tcp", "port_range_min": 90, "port_range_max": 80}}))
        .await;
    neutron_error(&r, StatusCode::BAD_REQUEST, "SecurityGroupInvalidPortRange");
    let r = cloud
        .post("/network/v2.0/security-group-rules", &demo, json!({"security_group_rule": {"security_group_id": web_id, "direction": "ingress", "protocol": "icmp", "port_range_max": 0}}))
        .await;
    neutron_error(&r, StatusCode::BAD_REQUEST, "SecurityGroupMissingIcmpType");
    let r = cloud
        .post("/network/v2.0/security-group-rules", &demo, json!({"security_group_rule": {"security_group_id": web_id, "direction": "ingress", "remote_group_id": "nope"}}))
        .await;
    neutron_error(&r, StatusCode::NOT_FOUND, "SecurityGroupNotFound");

    // Tenancy: alt sees neither the group nor its rules, and cannot add to it.
    neutron_error(
        &cloud.get(&format!("/network/v2.0/security-groups/{web_id}"), &alt).await,
        StatusCode::NOT_FOUND,
        "SecurityGroupNotFound",
    );
    neutron_error(
        &cloud.get(&format!("/network/v2.0/security-group-rules/{}", rule["id"].as_str().unwrap()), &alt).await,
        StatusCode::NOT_FOUND,
        "SecurityGroupRuleNotFound",
    );
    let r = cloud
        .post(
            "/network/v2.0/security-group-rules",
            &alt,
            json!({"security_group_rule": {"security_group_id": web_id, "direction": "ingress"}}),
        )
        .await;
    neutron_error(&r, StatusCode::NOT_FOUND, "SecurityGroupNotFound");
    let alt_groups = cloud.get("/network/v2.0/security-groups", &alt).await.json();
    assert_eq!(alt_groups["security_groups"].as_array().unwrap().len(), 1, "alt has only its own default");
    assert_ne!(alt_groups["security_groups"][0]["id"], json!(default_id));

    let r = cloud
        .put(
            &format!("/network/v2.0/security-groups/{web_id}"),
            &demo,
            json!({"security_group": {"description": "https"}}),
        )
        .await;
    assert_eq!(r.json()["security_group"]["description"], "https");
    assert_eq!(
        cloud
            .delete(&format!("/network/v2.0/security-group-rules/{}", rule["id"].as_str().unwrap()), &demo)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        cloud.delete(&format!("/network/v2.0/security-groups/{web_id}"), &demo).await.status,
        StatusCode::NO_CONTENT
    );
    neutron_error(
        &cloud.get(&format!("/network/v2.0/security-groups/{web_id}"), &demo).await,
        StatusCode::NOT_FOUND,
        "SecurityGroupNotFound",
    );
}

/// Rule and membership changes reach the compute host of the affected ports as new filters
/// over the bus (the real in-process bus), so they apply to running guests without restart.
#[tokio::test]
async fn security_group_changes_are_pushed_to_compute_hosts() {
    use crate::bus::{Bus, Handler, Message, RemoteError};
    use crate::compute::net::secgroups::{Direction, HostFilters, Remote};

    struct Recorder(tokio::sync::mpsc::UnboundedSender<HostFilters>);
    #[async_trait::async_trait]
    impl Handler for Recorder {
        async fn handle(&self, m: Message) -> Result<Value, RemoteError> {
            assert_eq!(m.method, "refresh_security_groups");
            let f: HostFilters = serde_json::from_value(m.args["filters"].clone()).unwrap();
            let _ = self.0.send(f);
            Ok(Value::Null)
        }
    }
    let bus: std::sync::Arc<dyn Bus> = std::sync::Arc::new(crate::bus::local::LocalBus::new(2));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _sub = bus.serve("compute.h1", std::sync::Arc::new(Recorder(tx))).await.unwrap();
    let cloud = Cloud::new().with_bus(bus);
    cloud.state.db.with(|db| db.service_heartbeat("h1", crate::compute::BINARY, "compute.h1")).unwrap();
    let (demo, admin) = (cloud.token("demo").await, cloud.token("admin").await);
    async fn recv(rx: &mut tokio::sync::mpsc::UnboundedReceiver<HostFilters>) -> HostFilters {
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.unwrap().unwrap()
    }

    let net = created(&cloud, &demo, "/network/v2.0/networks", json!({"network": {"name": "n"}}), "network").await;
    let body = json!({"subnet": {"network_id": net["id"], "cidr": "10.6.0.0/24", "ip_version": 4}});
    created(&cloud, &demo, "/network/v2.0/subnets", body, "subnet").await;
    let body = json!({"port": {"network_id": net["id"], "device_id": "vm-1", "device_owner": "compute:nova",
        "binding:host_id": "h1"}});
    let port = created(&cloud, &admin, "/network/v2.0/ports", body, "port").await;
    let port_id = port["id"].as_str().unwrap().to_string();
    let f = recv(&mut rx).await;
    assert_eq!(f.ports.len(), 1, "the new bound port is filtered on h1: {f:?}");
    assert_eq!(f.ports[0].device, crate::compute::net::tap_name(&port_id));
    assert_eq!(f.ports[0].ips, vec!["10.6.0.2".parse::<std::net::Ipv4Addr>().unwrap()]);
    // The port's project's default group: egress anywhere, ingress from itself, whose members are this port.
    let sg = port["security_groups"][0].as_str().unwrap().to_string();
    assert!(f.ports[0].rules.iter().any(|r| r.remote == Remote::Group(sg.clone())));
    assert_eq!(f.groups[&sg].len(), 1);

    let body = json!({"security_group_rule": {"security_group_id": sg, "direction": "ingress", "protocol": "icmp",
        "remote_ip_prefix": "192.168.7.0/24"}});
    let rule = created(&cloud, &admin, "/network/v2.0/security-group-rules", body, "security_group_rule").await;
    let f = recv(&mut rx).await;
    let icmp = |f: &HostFilters| {
        f.ports[0].rules.iter().any(|r| {
            r.direction == Direction::Ingress
                && r.protocol == Some(1)
                && r.remote == Remote::Cidr { addr: "192.168.7.0".parse().unwrap(), prefix: 24 }
        })
    };
    assert!(icmp(&f), "the new rule is on the port: {f:?}");

    let r = cloud.delete(&format!("/network/v2.0/security-group-rules/{}", rule["id"].as_str().unwrap()), &admin).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(!icmp(&recv(&mut rx).await), "the deleted rule is gone");

    // Leaving every group (port security off) takes the port out of the table.
    let body = json!({"port": {"security_groups": [], "port_security_enabled": false}});
    let r = cloud.put(&format!("/network/v2.0/ports/{port_id}"), &admin, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(recv(&mut rx).await.ports.is_empty());
}

/// A server row of `project` (no boot: the network API only needs it to exist).
fn server_of(cloud: &Cloud, project: &str, name: &str) -> String {
    cloud.state.db.with(|db| {
        let mut n = crate::db::instances::tests::new_instance(db, name);
        n.project_id = project.to_string();
        db.create_instance(&n).unwrap().uuid
    })
}

/// Issue 14: alt pointed its own port's device_id at demo's server, then read demo's
/// metadata from the port's address. neutron's answer for another project's device is 409
/// DeviceIDNotOwnedByTenant; the server's addresses never show another project's port.
#[tokio::test]
async fn device_id_may_name_only_a_server_of_the_ports_project() {
    let cloud = Cloud::new();
    let config = cloud.state.config.clone();
    let private = cloud.state.db.with(|db| db.ensure_default_network(&config)).unwrap();
    let (demo, alt, admin) = (cloud.token("demo").await, cloud.token("alt").await, cloud.token("admin").await);
    let victim = server_of(&cloud, &cloud.demo_project, "victim");
    let mine = server_of(&cloud, &cloud.alt_project, "mine");

    let port = created(&cloud, &alt, "/network/v2.0/ports", json!({"port": {"network_id": private.id}}), "port").await;
    let port_id = port["id"].as_str().unwrap().to_string();
    let r = cloud.put(&format!("/network/v2.0/ports/{port_id}"), &alt, json!({"port": {"device_id": victim}})).await;
    let msg = neutron_error(&r, StatusCode::CONFLICT, "DeviceIDNotOwnedByTenant");
    assert_eq!(
        msg,
        format!("The following device_id {victim} is not owned by your tenant or matches another tenants router.")
    );
    let r = cloud
        .post(
            "/network/v2.0/ports",
            &alt,
            json!({"port": {"network_id": private.id, "device_id": victim, "device_owner": "compute:nova"}}),
        )
        .await;
    neutron_error(&r, StatusCode::CONFLICT, "DeviceIDNotOwnedByTenant");
    let p = cloud.get(&format!("/network/v2.0/ports/{port_id}"), &alt).await.json();
    assert_eq!(p["port"]["device_id"], "", "the refused update changed nothing");

    // Its own server, or any string that is no server (neutron keeps device_id free-form).
    for device in [mine.as_str(), "dhcp-agent-1", ""] {
        let r =
            cloud.put(&format!("/network/v2.0/ports/{port_id}"), &alt, json!({"port": {"device_id": device}})).await;
        assert_eq!(r.status, StatusCode::OK, "{device}: {}", r.text());
    }
    // Admins may (nova binds ports as admin), but such a port is still not the server's.
    let r = cloud.put(&format!("/network/v2.0/ports/{port_id}"), &admin, json!({"port": {"device_id": victim}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let own = created(
        &cloud,
        &demo,
        "/network/v2.0/ports",
        json!({"port": {"network_id": private.id, "device_id": victim, "device_owner": "compute:nova"}}),
        "port",
    )
    .await;
    let addresses = cloud.state.db.with(|db| crate::conductor::addresses(db, &victim)).unwrap();
    let shown: Vec<&str> = addresses["private"].as_array().unwrap().iter().filter_map(|a| a["addr"].as_str()).collect();
    assert_eq!(shown, vec![own["fixed_ips"][0]["ip_address"].as_str().unwrap()], "{addresses}");
    let nics = cloud.state.db.with(|db| crate::conductor::network::vifs(db, &victim)).unwrap();
    assert_eq!(nics.iter().map(|v| v.port_id.as_str()).collect::<Vec<_>>(), vec![own["id"].as_str().unwrap()]);
    // The server's end takes its own port only; alt's stays.
    cloud.state.db.with(|db| crate::conductor::release_network(db, &victim)).unwrap();
    assert_eq!(cloud.get(&format!("/network/v2.0/ports/{port_id}"), &alt).await.status, StatusCode::OK);
}

/// Issue 14: a project that does not own the shared network created ports without port
/// security, with a chosen address and as the network's DHCP port. neutron leaves those to
/// the network's owner and admins (`admin_or_network_owner`), on create and on update.
#[tokio::test]
async fn port_attributes_of_a_shared_network_belong_to_its_owner() {
    let cloud = Cloud::new();
    let config = cloud.state.config.clone();
    let private = cloud.state.db.with(|db| db.ensure_default_network(&config)).unwrap();
    let subnet_id = private.subnets[0].clone();
    let (alt, admin) = (cloud.token("alt").await, cloud.token("admin").await);
    let net = private.id.as_str();

    let denied = [
        (json!({"port_security_enabled": false}), "create_port:port_security_enabled"),
        (json!({"port_security_enabled": true}), "create_port:port_security_enabled"),
        (json!({"fixed_ips": [{"ip_address": "10.42.0.77"}]}), "create_port:fixed_ips:ip_address"),
        (
            json!({"fixed_ips": [{"subnet_id": subnet_id, "ip_address": "10.42.0.77"}]}),
            "create_port:fixed_ips:ip_address",
        ),
        (json!({"device_owner": "network:dhcp"}), "create_port:device_owner"),
        (json!({"mac_address": "fa:16:3e:00:00:01"}), "create_port:mac_address"),
        (json!({"binding:host_id": "elsewhere"}), "create_port:binding:host_id"),
    ];
    for (extra, rule) in &denied {
        let mut body = json!({"network_id": net});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let r = cloud.post("/network/v2.0/ports", &alt, json!({"port": body})).await;
        let msg = neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized");
        assert_eq!(msg, format!("(rule:{rule}) is disallowed by policy"), "{extra}");
    }
    let ports = cloud.get("/network/v2.0/ports", &alt).await.json();
    assert_eq!(ids(&ports, "ports"), Vec::<String>::new(), "a refused create left a port");

    // What a user of a shared network may choose: the subnet, and a compute device owner.
    let p = created(
        &cloud,
        &alt,
        "/network/v2.0/ports",
        json!({"port": {"network_id": net, "fixed_ips": [{"subnet_id": subnet_id}], "device_owner": "compute:nova"}}),
        "port",
    )
    .await;
    let port_id = p["id"].as_str().unwrap();
    for (extra, rule) in [
        (json!({"port_security_enabled": false, "security_groups": []}), "update_port:port_security_enabled"),
        (json!({"device_owner": "network:router_interface"}), "update_port:device_owner"),
        (json!({"fixed_ips": [{"ip_address": "10.42.0.78"}]}), "update_port:fixed_ips:ip_address"),
        (json!({"mac_address": "fa:16:3e:00:00:02"}), "update_port:mac_address"),
        (json!({"binding:host_id": "elsewhere"}), "update_port:binding:host_id"),
    ] {
        let r = cloud.put(&format!("/network/v2.0/ports/{port_id}"), &alt, json!({"port": extra})).await;
        let msg = neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized");
        assert_eq!(msg, format!("(rule:{rule}) is disallowed by policy"));
    }
    let p = cloud.get(&format!("/network/v2.0/ports/{port_id}"), &alt).await.json();
    assert_eq!(
        (p["port"]["port_security_enabled"].as_bool(), p["port"]["device_owner"].as_str()),
        (Some(true), Some("compute:nova"))
    );

    // The network's owner (here the admin) may do all of it...
    let p = created(
        &cloud,
        &admin,
        "/network/v2.0/ports",
        json!({"port": {"network_id": net, "port_security_enabled": false, "fixed_ips": [{"ip_address": "10.42.0.77"}],
                        "device_owner": "network:dhcp", "mac_address": "fa:16:3e:00:00:01"}}),
        "port",
    )
    .await;
    assert_eq!(p["fixed_ips"][0]["ip_address"], "10.42.0.77");
    // ...and so may alt on a network of its own.
    let own = created(&cloud, &alt, "/network/v2.0/networks", json!({"network": {"name": "own"}}), "network").await;
    let own_id = own["id"].as_str().unwrap();
    created(
        &cloud,
        &alt,
        "/network/v2.0/subnets",
        json!({"subnet": {"network_id": own_id, "cidr": "10.9.0.0/24", "ip_version": 4}}),
        "subnet",
    )
    .await;
    let p = created(
        &cloud,
        &alt,
        "/network/v2.0/ports",
        json!({"port": {"network_id": own_id, "port_security_enabled": false, "fixed_ips": [{"ip_address": "10.9.0.9"}],
                        "device_owner": "network:dhcp", "mac_address": "fa:16:3e:00:00:03"}}),
        "port",
    )
    .await;
    assert_eq!(p["port_security_enabled"], false);
    // The binding host stays the admin's (nova's), even on one's own network.
    let r =
        cloud.post("/network/v2.0/ports", &alt, json!({"port": {"network_id": own_id, "binding:host_id": "h"}})).await;
    neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized");
}

/// Issue 14: names with NUL bytes were stored. neutron's `name_string` refuses control and
/// format characters and surrounding spaces in network, subnet and port names; free text
/// (descriptions, security group names) refuses NUL.
#[tokio::test]
async fn names_with_control_characters_are_refused() {
    let cloud = Cloud::new();
    let demo = cloud.token("demo").await;
    let net = created(&cloud, &demo, "/network/v2.0/networks", json!({"network": {"name": "n"}}), "network").await;
    let net_id = net["id"].as_str().unwrap();
    let bad_names = ["a\u{0}b", "tab\tin", " lead", "trail ", "zero\u{200B}width", "line\u{2028}sep", "\u{7f}"];
    for name in bad_names {
        let cases = [
            ("/network/v2.0/networks", json!({"network": {"name": name}})),
            ("/network/v2.0/subnets", json!({"subnet": {"name": name, "network_id": net_id, "cidr": "10.8.0.0/24"}})),
            ("/network/v2.0/ports", json!({"port": {"name": name, "network_id": net_id}})),
        ];
        for (uri, body) in cases {
            let r = cloud.post(uri, &demo, body).await;
            let msg = neutron_error(&r, StatusCode::BAD_REQUEST, "InvalidInput");
            assert_eq!(msg, format!("Invalid input for name. Reason: '{name}' is not a valid string."), "{uri}");
        }
        let r = cloud.put(&format!("/network/v2.0/networks/{net_id}"), &demo, json!({"network": {"name": name}})).await;
        neutron_error(&r, StatusCode::BAD_REQUEST, "InvalidInput");
    }
    for (uri, key) in [
        ("/network/v2.0/networks", "network"),
        ("/network/v2.0/security-groups", "security_group"),
        ("/network/v2.0/ports", "port"),
    ] {
        for field in ["description", "name"] {
            if key != "security_group" && field == "name" {
                continue;
            }
            let mut body = json!({field: "x\u{0}y"});
            if key == "port" {
                body["network_id"] = json!(net_id);
            }
            let r = cloud.post(uri, &demo, json!({key: body})).await;
            let msg = neutron_error(&r, StatusCode::BAD_REQUEST, "InvalidInput");
            assert_eq!(msg, format!("Invalid input for {field}. Reason: 'x\u{0}y' is not a valid string."));
        }
    }
    // Spaces inside a name, any script, and multi-line descriptions are fine.
    let ok = created(
        &cloud,
        &demo,
        "/network/v2.0/networks",
        json!({"network": {"name": "réseau de test", "description": "line 1\nline 2"}}),
        "network",
    )
    .await;
    assert_eq!(ok["name"], "réseau de test");
    let names: Vec<String> = cloud.get("/network/v2.0/networks", &demo).await.json()["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.iter().all(|n| !n.contains('\u{0}')), "{names:?}");
}

/// Issue 14: networks, subnets, ports and security groups had no quota. neutron's defaults
/// apply per project, a create past the limit is 409 OverQuota, and the quota API is
/// neutron's (`quotas`, `quota_details`).
#[tokio::test]
async fn quotas_limit_each_project_with_neutrons_api() {
    let cloud = Cloud::new();
    let (demo, alt, admin) = (cloud.token("demo").await, cloud.token("alt").await, cloud.token("admin").await);
    let (d, a) = (cloud.demo_project.clone(), cloud.alt_project.clone());
    let exts = cloud.get("/network/v2.0/extensions", &demo).await.json();
    for alias in ["quotas", "quota_details"] {
        assert!(exts["extensions"].as_array().unwrap().iter().any(|e| e["alias"] == alias), "{alias}");
    }

    let q = cloud.get(&format!("/network/v2.0/quotas/{d}"), &demo).await.json();
    assert_eq!(
        q["quota"],
        json!({"network": 100, "subnet": 100, "port": 500, "router": 10, "floatingip": 50,
               "security_group": 10, "security_group_rule": 100})
    );
    assert_eq!(cloud.get(&format!("/network/v2.0/quotas/{d}/default"), &demo).await.json(), q);
    assert_eq!(cloud.get("/network/v2.0/quotas/project", &demo).await.json(), json!({"project": {"project_id": d}}));
    // Another project's quota, and the list of all, are the admin's.
    let r = cloud.get(&format!("/network/v2.0/quotas/{a}"), &demo).await;
    assert_eq!(
        neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized"),
        "(rule:get_quota) is disallowed by policy"
    );
    neutron_error(&cloud.get("/network/v2.0/quotas", &demo).await, StatusCode::FORBIDDEN, "PolicyNotAuthorized");
    neutron_error(
        &cloud.get(&format!("/network/v2.0/quotas/{a}/details"), &demo).await,
        StatusCode::FORBIDDEN,
        "AdminRequired",
    );
    let r = cloud.put(&format!("/network/v2.0/quotas/{d}"), &demo, json!({"quota": {"port": 1000}})).await;
    assert_eq!(
        neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized"),
        "(rule:update_quota) is disallowed by policy"
    );

    // The admin sets demo's ports to 2: the third is refused, alt is not affected.
    let r =
        cloud.put(&format!("/network/v2.0/quotas/{d}"), &admin, json!({"quota": {"port": 2, "network": "3"}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!((r.json()["quota"]["port"].as_i64(), r.json()["quota"]["network"].as_i64()), (Some(2), Some(3)));
    let net = created(&cloud, &demo, "/network/v2.0/networks", json!({"network": {"name": "q"}}), "network").await;
    let net_id = net["id"].as_str().unwrap();
    created(
        &cloud,
        &demo,
        "/network/v2.0/subnets",
        json!({"subnet": {"network_id": net_id, "cidr": "10.7.0.0/24"}}),
        "subnet",
    )
    .await;
    for _ in 0..2 {
        created(&cloud, &demo, "/network/v2.0/ports", json!({"port": {"network_id": net_id}}), "port").await;
    }
    let r = cloud.post("/network/v2.0/ports", &demo, json!({"port": {"network_id": net_id}})).await;
    assert_eq!(neutron_error(&r, StatusCode::CONFLICT, "OverQuota"), "Quota exceeded for resources: ['port'].");
    assert_eq!(ids(&cloud.get("/network/v2.0/ports", &demo).await.json(), "ports").len(), 2);
    let alt_net = created(&cloud, &alt, "/network/v2.0/networks", json!({"network": {"name": "a"}}), "network").await;
    assert_eq!(alt_net["project_id"], a.as_str());

    // Below what is used: refused unless forced.
    let r = cloud.put(&format!("/network/v2.0/quotas/{d}"), &admin, json!({"quota": {"port": 1}})).await;
    let msg = neutron_error(&r, StatusCode::BAD_REQUEST, "HTTPBadRequest");
    assert_eq!(msg, "Quota limit 1 for port must be greater than or equal to already used 2");
    for (body, kind) in [
        (json!({"quota": {"port": -2}}), "InvalidInput"),
        (json!({"quota": {"port": "many"}}), "InvalidInput"),
        (json!({"quota": {"port": 2_147_483_648_i64}}), "InvalidInput"),
        (json!({"quota": {"ports": 5}}), "HTTPBadRequest"),
    ] {
        neutron_error(
            &cloud.put(&format!("/network/v2.0/quotas/{d}"), &admin, body).await,
            StatusCode::BAD_REQUEST,
            kind,
        );
    }
    let r = cloud.put(&format!("/network/v2.0/quotas/{d}"), &admin, json!({"quota": {"port": 1, "force": true}})).await;
    assert_eq!(r.json()["quota"]["port"], 1);
    let details = cloud.get(&format!("/network/v2.0/quotas/{d}/details"), &demo).await.json();
    assert_eq!(details["quota"]["port"], json!({"limit": 1, "used": 2, "reserved": 0}));
    assert_eq!(details["quota"]["network"], json!({"limit": 3, "used": 1, "reserved": 0}));
    let all = cloud.get("/network/v2.0/quotas", &admin).await.json();
    let listed: Vec<&str> = all["quotas"].as_array().unwrap().iter().filter_map(|q| q["project_id"].as_str()).collect();
    assert_eq!(listed, vec![d.as_str()], "only projects with limits of their own");
    // nova's quota set does not see neutron's limits.
    let nova = cloud.get(&format!("/compute/v2.1/os-quota-sets/{d}"), &demo).await.json();
    assert!(nova["quota_set"].get("port").is_none() && nova["quota_set"].get("network.port").is_none(), "{nova}");

    // Security groups count the project's default one; rules count every group's.
    let r = cloud.put(&format!("/network/v2.0/quotas/{d}"), &admin, json!({"quota": {"security_group": 2}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let g = created(
        &cloud,
        &demo,
        "/network/v2.0/security-groups",
        json!({"security_group": {"name": "g1"}}),
        "security_group",
    )
    .await;
    let r = cloud.post("/network/v2.0/security-groups", &demo, json!({"security_group": {"name": "g2"}})).await;
    assert_eq!(
        neutron_error(&r, StatusCode::CONFLICT, "OverQuota"),
        "Quota exceeded for resources: ['security_group']."
    );
    let details = cloud.get(&format!("/network/v2.0/quotas/{d}/details"), &demo).await.json();
    let used = details["quota"]["security_group_rule"]["used"].as_i64().unwrap();
    assert_eq!(used, 6, "the default group's 4 rules and g1's 2 egress rules: {details}");
    let r = cloud
        .put(&format!("/network/v2.0/quotas/{d}"), &admin, json!({"quota": {"security_group_rule": used + 2}}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let gid = g["id"].as_str().unwrap();
    let rule = |port: i64| {
        json!({"security_group_rule": {"security_group_id": gid, "direction": "ingress",
        "protocol": "tcp", "port_range_min": port, "port_range_max": port}})
    };
    for port in [22, 80] {
        let r = cloud.post("/network/v2.0/security-group-rules", &demo, rule(port)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
    let r = cloud.post("/network/v2.0/security-group-rules", &demo, rule(443)).await;
    assert_eq!(
        neutron_error(&r, StatusCode::CONFLICT, "OverQuota"),
        "Quota exceeded for resources: ['security_group_rule']."
    );

    // DELETE goes back to the defaults; a second one finds nothing.
    assert_eq!(cloud.delete(&format!("/network/v2.0/quotas/{d}"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(cloud.get(&format!("/network/v2.0/quotas/{d}"), &demo).await.json()["quota"]["port"], 500);
    neutron_error(
        &cloud.delete(&format!("/network/v2.0/quotas/{d}"), &admin).await,
        StatusCode::NOT_FOUND,
        "TenantQuotaNotFound",
    );
    neutron_error(
        &cloud.delete(&format!("/network/v2.0/quotas/{a}"), &demo).await,
        StatusCode::FORBIDDEN,
        "PolicyNotAuthorized",
    );
}

#[tokio::test]
async fn provider_networks_are_admin_only_checked_and_unique_per_segment() {
    let cloud = Cloud::with_config(|c| {
        c.network.mode = crate::config::NetworkMode::Bridge;
        c.network.physical_networks.insert("physnet1".into(), "eth1".into());
    });
    let (demo, admin) = (cloud.token("demo").await, cloud.token("admin").await);
    let net = |body: Value| json!({"network": body});

    // Members may neither set nor see the provider attributes.
    let r =
        cloud.post("/network/v2.0/networks", &demo, net(json!({"name": "v", "provider:network_type": "vlan"}))).await;
    let m = neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized");
    assert_eq!(m, "(rule:create_network:provider:network_type) is disallowed by policy");
    let r = cloud.post("/network/v2.0/networks", &demo, net(json!({"provider:segmentation_id": 5}))).await;
    assert_eq!(
        neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized"),
        "(rule:create_network:provider:segmentation_id) is disallowed by policy"
    );

    let v = created(
        &cloud,
        &admin,
        "/network/v2.0/networks",
        net(json!({"name": "v100", "shared": true, "provider:network_type": "vlan",
                   "provider:physical_network": "physnet1", "provider:segmentation_id": 100})),
        "network",
    )
    .await;
    assert_eq!(
        (&v["provider:network_type"], &v["provider:physical_network"], &v["provider:segmentation_id"]),
        (&json!("vlan"), &json!("physnet1"), &json!(100))
    );
    let id = v["id"].as_str().unwrap();
    let shown = cloud.get(&format!("/network/v2.0/networks/{id}"), &demo).await.json();
    assert_eq!(shown["network"]["name"], "v100");
    assert!(shown["network"].get("provider:segmentation_id").is_none(), "{shown}");
    let shown = cloud.get(&format!("/network/v2.0/networks/{id}"), &admin).await.json();
    assert_eq!(shown["network"]["provider:segmentation_id"], 100);

    // The same VLAN on the same physical network: 409; a flat one once.
    let again = net(json!({"provider:network_type": "vlan", "provider:physical_network": "physnet1",
                           "provider:segmentation_id": "100"}));
    let r = cloud.post("/network/v2.0/networks", &admin, again).await;
    assert_eq!(
        neutron_error(&r, StatusCode::CONFLICT, "VlanIdInUse"),
        "Unable to create the network. The VLAN 100 on physical network physnet1 is in use."
    );
    let flat = net(json!({"provider:network_type": "flat", "provider:physical_network": "physnet1"}));
    let f = created(&cloud, &admin, "/network/v2.0/networks", flat.clone(), "network").await;
    assert_eq!((&f["provider:network_type"], &f["provider:segmentation_id"]), (&json!("flat"), &Value::Null));
    let r = cloud.post("/network/v2.0/networks", &admin, flat).await;
    assert_eq!(
        neutron_error(&r, StatusCode::CONFLICT, "FlatNetworkInUse"),
        "Unable to create the flat network. Physical network physnet1 is in use."
    );
    let auto = net(json!({"provider:network_type": "vlan", "provider:physical_network": "physnet1"}));
    let a = created(&cloud, &admin, "/network/v2.0/networks", auto, "network").await;
    assert_eq!(a["provider:segmentation_id"], 1, "the lowest free VLAN id");

    // Bad values: neutron's 400s.
    for (body, want) in [
        (
            json!({"provider:network_type": "vlan", "provider:physical_network": "physnet9", "provider:segmentation_id": 7}),
            "Invalid input for operation: physical_network 'physnet9' unknown for VLAN provider network.",
        ),
        (
            json!({"provider:network_type": "flat", "provider:physical_network": "nope"}),
            "Invalid input for operation: physical_network 'nope' unknown for flat provider network.",
        ),
        (
            json!({"provider:network_type": "vlan", "provider:physical_network": "physnet1", "provider:segmentation_id": 4095}),
            "Invalid input for operation: segmentation_id out of range (1 through 4094).",
        ),
        (
            json!({"provider:network_type": "vxlan", "provider:segmentation_id": 1000}),
            "Invalid input for operation: network_type value 'vxlan' not supported; novabox supports flat and vlan.",
        ),
        (
            json!({"provider:network_type": "vlan", "provider:physical_network": "physnet1", "provider:segmentation_id": "x"}),
            "Invalid input for provider:segmentation_id. Reason: 'x' is not an integer.",
        ),
    ] {
        let r = cloud.post("/network/v2.0/networks", &admin, net(body.clone())).await;
        assert_eq!(neutron_error(&r, StatusCode::BAD_REQUEST, "InvalidInput"), want, "{body}");
    }

    // Repeating the attributes on update is fine; changing them is not.
    let uri = format!("/network/v2.0/networks/{id}");
    let r = cloud.put(&uri, &admin, net(json!({"name": "v", "provider:segmentation_id": 100}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = cloud.put(&uri, &admin, net(json!({"provider:segmentation_id": 101}))).await;
    assert_eq!(
        neutron_error(&r, StatusCode::BAD_REQUEST, "InvalidInput"),
        "Invalid input for operation: Plugin does not support updating provider attributes."
    );
    let r = cloud.put(&uri, &demo, net(json!({"provider:segmentation_id": 100}))).await;
    neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized");
}

#[tokio::test]
async fn provider_networks_are_refused_in_user_mode() {
    let cloud = Cloud::with_config(|c| {
        c.network.mode = crate::config::NetworkMode::User;
        c.network.physical_networks.insert("physnet1".into(), "eth1".into());
    });
    let admin = cloud.token("admin").await;
    let body = json!({"network": {"provider:network_type": "flat", "provider:physical_network": "physnet1"}});
    let r = cloud.post("/network/v2.0/networks", &admin, body).await;
    let m = neutron_error(&r, StatusCode::BAD_REQUEST, "InvalidInput");
    assert!(m.contains("QEMU user networking") && m.contains("mode = \"bridge\""), "{m}");
    let n = cloud.get("/network/v2.0/networks", &admin).await.json();
    assert!(n["networks"].as_array().unwrap().is_empty(), "nothing was created: {n}");
}

#[tokio::test]
async fn ipv6_modes_are_checked_as_neutron_does() {
    let cloud = Cloud::new();
    let demo = cloud.token("demo").await;
    let net = created(&cloud, &demo, "/network/v2.0/networks", json!({"network": {"name": "v6"}}), "network").await;
    let id = net["id"].as_str().unwrap();
    let subnet = |extra: Value| {
        let mut s = json!({"network_id": id, "cidr": "2001:db8::/64", "ip_version": 6});
        s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"subnet": s})
    };
    for (body, want) in [
        (
            json!({"subnet": {"network_id": id, "cidr": "10.9.0.0/24", "ip_version": 4, "ipv6_ra_mode": "slaac"}}),
            "Invalid input for operation: ipv6_ra_mode is not valid when ip_version is 4.",
        ),
        (
            subnet(json!({"ipv6_ra_mode": "slaac", "ipv6_address_mode": "dhcpv6-stateful"})),
            "Invalid input for operation: ipv6_ra_mode set to 'slaac' with ipv6_address_mode set to \
             'dhcpv6-stateful' is not valid. If both attributes are set, they must be the same value.",
        ),
        (
            subnet(json!({"ipv6_address_mode": "slaac", "enable_dhcp": false})),
            "Invalid input for operation: ipv6_ra_mode or ipv6_address_mode cannot be set when enable_dhcp is set \
             to False..",
        ),
        (
            subnet(json!({"ipv6_ra_mode": "dhcpv6-pd"})),
            "Invalid input for ipv6_ra_mode. Reason: 'dhcpv6-pd' is not in ['dhcpv6-stateful', 'dhcpv6-stateless', \
             'slaac'].",
        ),
        (
            json!({"subnet": {"network_id": id, "cidr": "2001:db8::/80", "ip_version": 6,
                              "ipv6_address_mode": "slaac"}}),
            "Invalid input for operation: Invalid CIDR 2001:db8::/80 for IPv6 address mode. OpenStack uses the \
             EUI-64 address format, which requires the prefix to be /64..",
        ),
    ] {
        let r = cloud.post("/network/v2.0/subnets", &demo, body.clone()).await;
        assert_eq!(neutron_error(&r, StatusCode::BAD_REQUEST, "InvalidInput"), want, "{body}");
    }
}
