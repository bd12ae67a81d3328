//! Issue 19: the external network, routers and floating IPs through neutron's API, with
//! neutron's answers to each refusal, and what the router host is sent of them.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::api::testing::{Cloud, Reply};
use crate::db::network::Network;

fn neutron_error(r: &Reply, status: StatusCode, kind: &str) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["NeutronError"]["type"], kind, "{v}");
    v["NeutronError"]["message"].as_str().unwrap_or_default().to_string()
}

async fn created(cloud: &Cloud, token: &str, uri: &str, body: Value, key: &str) -> Value {
    let r = cloud.post(uri, token, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{uri}: {}", r.text());
    r.json()[key].clone()
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_string()
}

/// `private` and `public` as `init` makes them, and a server of demo with a port on private.
fn networks(cloud: &Cloud) -> (Network, Network, String) {
    let config = cloud.state.config.clone();
    let private = cloud.state.db.with(|db| db.ensure_default_network(&config)).unwrap();
    let public = cloud.state.db.with(|db| db.ensure_public_network(&config)).unwrap();
    let again = cloud.state.db.with(|db| db.ensure_public_network(&config)).unwrap();
    assert_eq!(public.id, again.id, "made once");
    let private_subnet = private.subnets[0].clone();
    (private, public, private_subnet)
}

async fn router_with_gateway(cloud: &Cloud, token: &str, public: &Network, name: &str) -> Value {
    created(
        cloud,
        token,
        "/network/v2.0/routers",
        json!({"router": {"name": name, "external_gateway_info": {"network_id": public.id}}}),
        "router",
    )
    .await
}

#[tokio::test]
async fn the_public_network_is_external_seen_by_all_and_only_admins_make_external_networks() {
    let cloud = Cloud::new();
    let (private, public, _) = networks(&cloud);
    let (demo, admin) = (cloud.token("demo").await, cloud.token("admin").await);
    let n = cloud.get(&format!("/network/v2.0/networks/{}", public.id), &demo).await.json()["network"].clone();
    assert_eq!(
        (n["name"].as_str(), n["router:external"].as_bool(), n["shared"].as_bool()),
        (Some("public"), Some(true), Some(false))
    );
    let subnet =
        cloud.get(&format!("/network/v2.0/subnets/{}", s(&n["subnets"][0])), &demo).await.json()["subnet"].clone();
    assert_eq!((subnet["name"].as_str(), subnet["cidr"].as_str()), (Some("public-subnet"), Some("172.24.4.0/24")));
    assert_eq!((subnet["gateway_ip"].as_str(), subnet["enable_dhcp"].as_bool()), (Some("172.24.4.1"), Some(false)));

    // router:external is a list filter.
    let ext = cloud.get("/network/v2.0/networks?router:external=True", &demo).await.json();
    let ids: Vec<String> = ext["networks"].as_array().unwrap().iter().map(|n| s(&n["id"])).collect();
    assert_eq!(ids, vec![public.id.clone()]);
    let int = cloud.get("/network/v2.0/networks?router:external=false", &demo).await.json();
    let ids: Vec<String> = int["networks"].as_array().unwrap().iter().map(|n| s(&n["id"])).collect();
    assert_eq!(ids, vec![private.id.clone()]);

    let r =
        cloud.post("/network/v2.0/networks", &demo, json!({"network": {"name": "x", "router:external": true}})).await;
    let msg = neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized");
    assert_eq!(msg, "(rule:create_network:router:external) is disallowed by policy");
    let x = created(
        &cloud,
        &admin,
        "/network/v2.0/networks",
        json!({"network": {"name": "x", "router:external": true}}),
        "network",
    )
    .await;
    assert_eq!(x["router:external"], true);

    // Every project sees public; only admins (and routers, floating IPs) put ports on it.
    let r = cloud.post("/network/v2.0/ports", &demo, json!({"port": {"network_id": public.id}})).await;
    neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized");
    let _ = created(&cloud, &admin, "/network/v2.0/ports", json!({"port": {"network_id": public.id}}), "port").await;
}

#[tokio::test]
async fn routers_gateways_and_interfaces_with_neutrons_refusals() {
    let cloud = Cloud::new();
    let (private, public, private_subnet) = networks(&cloud);
    let (demo, alt, admin) = (cloud.token("demo").await, cloud.token("alt").await, cloud.token("admin").await);

    let r = router_with_gateway(&cloud, &demo, &public, "router1").await;
    let id = s(&r["id"]);
    assert_eq!((r["status"].as_str(), r["admin_state_up"].as_bool()), (Some("ACTIVE"), Some(true)));
    let gw = &r["external_gateway_info"];
    assert_eq!((gw["network_id"].as_str(), gw["enable_snat"].as_bool()), (Some(public.id.as_str()), Some(true)));
    let gw_ip = s(&gw["external_fixed_ips"][0]["ip_address"]);
    assert_eq!(gw_ip, "172.24.4.2", "the first address of public's pool");
    assert_eq!(r["routes"], json!([]));
    // Another project's router does not exist for it.
    neutron_error(
        &cloud.get(&format!("/network/v2.0/routers/{id}"), &alt).await,
        StatusCode::NOT_FOUND,
        "RouterNotFound",
    );
    assert!(cloud.get("/network/v2.0/routers", &alt).await.json()["routers"].as_array().unwrap().is_empty());

    // SNAT and a chosen gateway address are the admin's.
    let r = cloud
        .post(
            "/network/v2.0/routers",
            &demo,
            json!({"router": {"external_gateway_info": {"network_id": public.id, "enable_snat": false}}}),
        )
        .await;
    let msg = neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized");
    assert_eq!(msg, "(rule:create_router:external_gateway_info:enable_snat) is disallowed by policy");
    let admin_router = created(
        &cloud,
        &admin,
        "/network/v2.0/routers",
        json!({"router": {"external_gateway_info": {"network_id": public.id, "enable_snat": false,
               "external_fixed_ips": [{"ip_address": "172.24.4.77"}]}}}),
        "router",
    )
    .await;
    assert_eq!(admin_router["external_gateway_info"]["enable_snat"], false);
    assert_eq!(admin_router["external_gateway_info"]["external_fixed_ips"][0]["ip_address"], "172.24.4.77");
    // A gateway must be on an external network.
    let internal =
        created(&cloud, &demo, "/network/v2.0/networks", json!({"network": {"name": "n2"}}), "network").await;
    let r = cloud
        .put(
            &format!("/network/v2.0/routers/{id}"),
            &demo,
            json!({"router": {"external_gateway_info": {"network_id": internal["id"]}}}),
        )
        .await;
    let msg = neutron_error(&r, StatusCode::BAD_REQUEST, "BadRequest");
    assert_eq!(msg, format!("Bad router request: Network {} is not an external network.", s(&internal["id"])));

    // Interfaces by subnet: the port holds the subnet's gateway, owned by the router.
    let uri = format!("/network/v2.0/routers/{id}/add_router_interface");
    let r = cloud.put(&uri, &demo, json!({"subnet_id": private_subnet})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let info = r.json();
    assert_eq!((info["id"].as_str(), info["subnet_id"].as_str()), (Some(id.as_str()), Some(private_subnet.as_str())));
    let port_id = s(&info["port_id"]);
    let port = cloud.get(&format!("/network/v2.0/ports/{port_id}"), &demo).await.json()["port"].clone();
    assert_eq!(
        (port["device_owner"].as_str(), port["device_id"].as_str()),
        (Some("network:router_interface"), Some(id.as_str()))
    );
    assert_eq!(port["fixed_ips"][0]["ip_address"], "10.42.0.1");
    // The network got its DHCP port, whose address the host keeps.
    let dhcp = cloud.state.db.with(|db| db.ports_for_device(&format!("dhcp-{}", s(&port["network_id"])))).unwrap();
    assert_eq!(dhcp.len(), 1);
    assert_eq!(dhcp[0].device_owner, "network:dhcp");
    // The host keeps the DHCP port's address while the router is up, the gateway otherwise.
    let subnet = cloud.state.db.with(|db| db.subnet_by_id(&private_subnet)).unwrap().unwrap();
    let host = |cloud: &Cloud| cloud.state.db.with(|db| db.host_address(&subnet)).unwrap();
    assert_eq!(host(&cloud), Some(dhcp[0].fixed_ips[0].ip_address));
    let down =
        cloud.put(&format!("/network/v2.0/routers/{id}"), &demo, json!({"router": {"admin_state_up": false}})).await;
    assert_eq!(down.json()["router"]["admin_state_up"], false, "{}", down.text());
    assert_eq!(host(&cloud), None, "a router that is down routes nothing");
    cloud.put(&format!("/network/v2.0/routers/{id}"), &demo, json!({"router": {"admin_state_up": true}})).await;
    assert_eq!(host(&cloud), Some(dhcp[0].fixed_ips[0].ip_address));

    let r = cloud.put(&uri, &demo, json!({"subnet_id": private_subnet})).await;
    let msg = neutron_error(&r, StatusCode::BAD_REQUEST, "BadRequest");
    assert_eq!(msg, format!("Bad router request: Router already has a port on subnet {private_subnet}."));
    let other = router_with_gateway(&cloud, &demo, &public, "other").await;
    let r = cloud
        .put(
            &format!("/network/v2.0/routers/{}/add_router_interface", s(&other["id"])),
            &demo,
            json!({"subnet_id": private_subnet}),
        )
        .await;
    neutron_error(&r, StatusCode::CONFLICT, "IpAddressAlreadyAllocated");
    let r = cloud.put(&uri, &demo, json!({"subnet_id": private_subnet, "port_id": port_id})).await;
    neutron_error(&r, StatusCode::BAD_REQUEST, "BadRequest");
    let r = cloud.put(&uri, &demo, json!({})).await;
    neutron_error(&r, StatusCode::BAD_REQUEST, "BadRequest");
    let no_gw = created(
        &cloud,
        &demo,
        "/network/v2.0/subnets",
        json!({"subnet": {"network_id": internal["id"], "cidr": "10.50.0.0/24", "gateway_ip": null}}),
        "subnet",
    )
    .await;
    let r = cloud.put(&uri, &demo, json!({"subnet_id": no_gw["id"]})).await;
    let msg = neutron_error(&r, StatusCode::BAD_REQUEST, "BadRequest");
    assert_eq!(msg, "Bad router request: Subnet for router interface must have a gateway IP.");
    // An interface by port: the caller's own unowned port.
    let p =
        created(&cloud, &demo, "/network/v2.0/ports", json!({"port": {"network_id": internal["id"]}}), "port").await;
    let r = cloud.put(&uri, &demo, json!({"port_id": p["id"]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["subnet_id"], no_gw["id"]);

    // What is in use cannot go.
    let r = cloud.delete(&format!("/network/v2.0/routers/{id}"), &demo).await;
    assert_eq!(neutron_error(&r, StatusCode::CONFLICT, "RouterInUse"), format!("Router {id} still has ports"));
    neutron_error(
        &cloud.delete(&format!("/network/v2.0/subnets/{private_subnet}"), &admin).await,
        StatusCode::CONFLICT,
        "SubnetInUse",
    );
    let r = cloud.delete(&format!("/network/v2.0/ports/{port_id}"), &demo).await;
    let msg = neutron_error(&r, StatusCode::CONFLICT, "ServicePortInUse");
    assert_eq!(
        msg,
        format!(
            "Port {port_id} cannot be deleted directly via the port API: has device owner network:router_interface."
        )
    );
    neutron_error(
        &cloud.delete(&format!("/network/v2.0/networks/{}", public.id), &admin).await,
        StatusCode::CONFLICT,
        "NetworkInUse",
    );

    // extraroute: a next hop must be on one of the router's subnets.
    let r = cloud
        .put(
            &format!("/network/v2.0/routers/{id}"),
            &demo,
            json!({"router": {"routes": [{"destination": "10.9.0.0/16", "nexthop": "192.168.1.1"}]}}),
        )
        .await;
    neutron_error(&r, StatusCode::BAD_REQUEST, "InvalidRoutes");
    let r = cloud
        .put(
            &format!("/network/v2.0/routers/{id}"),
            &demo,
            json!({"router": {"routes": [{"destination": "10.9.0.0/16", "nexthop": "10.42.0.9"}], "name": "renamed"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["router"]["routes"], json!([{"destination": "10.9.0.0/16", "nexthop": "10.42.0.9"}]));
    assert_eq!(r.json()["router"]["name"], "renamed");

    // Removing: by subnet, then by port; an unknown one is neutron's 404. An interface a
    // route needs goes only after the route.
    let rm = format!("/network/v2.0/routers/{id}/remove_router_interface");
    let r = cloud.put(&rm, &demo, json!({"subnet_id": private_subnet})).await;
    neutron_error(&r, StatusCode::CONFLICT, "RouterInterfaceInUseByRoute");
    let r = cloud.put(&format!("/network/v2.0/routers/{id}"), &demo, json!({"router": {"routes": []}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = cloud.put(&rm, &demo, json!({"subnet_id": private_subnet})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["port_id"], port_id.as_str());
    assert_eq!(cloud.get(&format!("/network/v2.0/ports/{port_id}"), &demo).await.status, StatusCode::NOT_FOUND);
    let r = cloud.put(&rm, &demo, json!({"subnet_id": private_subnet})).await;
    neutron_error(&r, StatusCode::NOT_FOUND, "RouterInterfaceNotFoundForSubnet");
    let r = cloud.put(&rm, &demo, json!({"port_id": p["id"]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Clearing the gateway gives its address back; then the router goes.
    let r = cloud
        .put(&format!("/network/v2.0/routers/{id}"), &demo, json!({"router": {"external_gateway_info": {}}}))
        .await;
    assert_eq!(r.json()["router"]["external_gateway_info"], Value::Null, "{}", r.text());
    assert_eq!(cloud.delete(&format!("/network/v2.0/routers/{id}"), &demo).await.status, StatusCode::NO_CONTENT);
    neutron_error(
        &cloud.get(&format!("/network/v2.0/routers/{id}"), &demo).await,
        StatusCode::NOT_FOUND,
        "RouterNotFound",
    );
    let gw_ports = cloud.state.db.with(|db| db.ports_for_device(&id)).unwrap();
    assert!(gw_ports.is_empty(), "the gateway port went with the router: {gw_ports:?}");
    // The DHCP port the interface brought does not hold the subnet or the network.
    assert_eq!(
        cloud.delete(&format!("/network/v2.0/subnets/{private_subnet}"), &admin).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        cloud.delete(&format!("/network/v2.0/networks/{}", private.id), &admin).await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn floating_ips_associate_through_a_router_and_show_in_the_servers_addresses() {
    let cloud = Cloud::new();
    let (private, public, private_subnet) = networks(&cloud);
    let (demo, alt, admin) = (cloud.token("demo").await, cloud.token("alt").await, cloud.token("admin").await);
    let server = cloud.state.db.with(|db| {
        let mut n = crate::db::instances::tests::new_instance(db, "web");
        n.project_id = cloud.demo_project.clone();
        db.create_instance(&n).unwrap().uuid
    });
    let port = created(
        &cloud,
        &demo,
        "/network/v2.0/ports",
        json!({"port": {"network_id": private.id, "device_id": server, "device_owner": "compute:nova"}}),
        "port",
    )
    .await;
    let port_id = s(&port["id"]);
    let fixed = s(&port["fixed_ips"][0]["ip_address"]);

    let fip = created(
        &cloud,
        &demo,
        "/network/v2.0/floatingips",
        json!({"floatingip": {"floating_network_id": public.id}}),
        "floatingip",
    )
    .await;
    let fip_id = s(&fip["id"]);
    assert_eq!((fip["status"].as_str(), fip["port_id"].as_null()), (Some("DOWN"), Some(())));
    let address = s(&fip["floating_ip_address"]);
    assert!(address.starts_with("172.24.4."), "{address}");
    neutron_error(
        &cloud.get(&format!("/network/v2.0/floatingips/{fip_id}"), &alt).await,
        StatusCode::NOT_FOUND,
        "FloatingIPNotFound",
    );

    // No router joins private to public yet: neutron's 404.
    let uri = format!("/network/v2.0/floatingips/{fip_id}");
    let r = cloud.put(&uri, &demo, json!({"floatingip": {"port_id": port_id}})).await;
    let msg = neutron_error(&r, StatusCode::NOT_FOUND, "ExternalGatewayForFloatingIPNotFound");
    assert_eq!(
        msg,
        format!(
            "External network {} is not reachable from subnet {private_subnet}.  Therefore, cannot associate Port \
             {port_id} with a Floating IP.",
            public.id
        )
    );
    let router = router_with_gateway(&cloud, &demo, &public, "router1").await;
    let rid = s(&router["id"]);
    let r = cloud
        .put(&format!("/network/v2.0/routers/{rid}/add_router_interface"), &demo, json!({"subnet_id": private_subnet}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let r = cloud.put(&uri, &demo, json!({"floatingip": {"port_id": port_id}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let f = r.json()["floatingip"].clone();
    assert_eq!((f["status"].as_str(), f["router_id"].as_str()), (Some("ACTIVE"), Some(rid.as_str())));
    assert_eq!(f["fixed_ip_address"].as_str(), Some(fixed.as_str()));
    // nova's addresses: the floating IP after the fixed one, typed `floating`.
    let addresses = cloud.state.db.with(|db| crate::conductor::addresses(db, &server)).unwrap();
    let types: Vec<(&str, &str)> = addresses["private"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["addr"].as_str().unwrap(), a["OS-EXT-IPS:type"].as_str().unwrap()))
        .collect();
    assert_eq!(types, vec![(fixed.as_str(), "fixed"), (address.as_str(), "floating")]);

    // One floating IP per fixed IP and external network.
    let second = created(
        &cloud,
        &demo,
        "/network/v2.0/floatingips",
        json!({"floatingip": {"floating_network_id": public.id}}),
        "floatingip",
    )
    .await;
    let r = cloud
        .put(
            &format!("/network/v2.0/floatingips/{}", s(&second["id"])),
            &demo,
            json!({"floatingip": {"port_id": port_id}}),
        )
        .await;
    neutron_error(&r, StatusCode::CONFLICT, "FloatingIPPortAlreadyAssociated");
    // An address in use is neutron's 409; choosing one is the admin's.
    let r = cloud
        .post(
            "/network/v2.0/floatingips",
            &demo,
            json!({"floatingip": {"floating_network_id": public.id, "floating_ip_address": "172.24.4.200"}}),
        )
        .await;
    neutron_error(&r, StatusCode::FORBIDDEN, "PolicyNotAuthorized");
    let r = cloud
        .post(
            "/network/v2.0/floatingips",
            &admin,
            json!({"floatingip": {"floating_network_id": public.id, "floating_ip_address": address}}),
        )
        .await;
    neutron_error(&r, StatusCode::CONFLICT, "IpAddressAlreadyAllocated");
    // A network that is not external, or one the project cannot see.
    let r = cloud
        .post("/network/v2.0/floatingips", &demo, json!({"floatingip": {"floating_network_id": private.id}}))
        .await;
    neutron_error(&r, StatusCode::BAD_REQUEST, "BadRequest");
    let hidden =
        created(&cloud, &alt, "/network/v2.0/networks", json!({"network": {"name": "alt-net"}}), "network").await;
    let r = cloud
        .post("/network/v2.0/floatingips", &demo, json!({"floatingip": {"floating_network_id": hidden["id"]}}))
        .await;
    neutron_error(&r, StatusCode::NOT_FOUND, "NetworkNotFound");
    // alt cannot map its floating IP onto demo's port.
    let alt_fip = created(
        &cloud,
        &alt,
        "/network/v2.0/floatingips",
        json!({"floatingip": {"floating_network_id": public.id}}),
        "floatingip",
    )
    .await;
    let r = cloud
        .put(
            &format!("/network/v2.0/floatingips/{}", s(&alt_fip["id"])),
            &alt,
            json!({"floatingip": {"port_id": port_id}}),
        )
        .await;
    neutron_error(&r, StatusCode::NOT_FOUND, "PortNotFound");

    // The router's interface and gateway are held by the association.
    let r = cloud
        .put(
            &format!("/network/v2.0/routers/{rid}/remove_router_interface"),
            &demo,
            json!({"subnet_id": private_subnet}),
        )
        .await;
    neutron_error(&r, StatusCode::CONFLICT, "RouterInterfaceInUseByFloatingIP");
    let r = cloud
        .put(&format!("/network/v2.0/routers/{rid}"), &demo, json!({"router": {"external_gateway_info": null}}))
        .await;
    neutron_error(&r, StatusCode::CONFLICT, "RouterExternalGatewayInUseByFloatingIp");

    // What the router host is sent: the namespace, both legs, the NAT.
    let config = cloud.state.config.clone();
    let host = config.host.name.clone();
    let plan = cloud.state.db.with(|db| crate::conductor::routers::host_routers(db, &config, &host)).unwrap();
    let mine = plan.routers.iter().find(|r| r.id == rid).expect("the router is planned");
    assert_eq!(mine.namespace, format!("qrouter-{rid}"));
    assert_eq!(mine.interfaces.len(), 1);
    assert_eq!(mine.interfaces[0].vif.ips, vec!["10.42.0.1".to_string()]);
    assert!(
        mine.interfaces[0].device.starts_with("qr-")
            && mine.interfaces[0].vif.tap.as_deref().is_some_and(|t| t.starts_with("tap"))
    );
    let gw = mine.gateway.as_ref().expect("a gateway leg");
    assert_eq!((gw.vif.bridge.as_deref(), gw.vif.gateway.as_deref()), (Some("nbr-ex"), Some("172.24.4.1")));
    assert_eq!(mine.floating.len(), 1);
    assert_eq!(
        (mine.floating[0].floating_ip.to_string(), mine.floating[0].fixed_ip.to_string()),
        (address.clone(), fixed.clone())
    );
    // The host gives the routed subnet's gateway up and keeps its DHCP port's address.
    let vif = cloud.state.db.with(|db| crate::conductor::network::vifs(db, &server)).unwrap();
    let dhcp = cloud.state.db.with(|db| db.ports_for_device(&format!("dhcp-{}", private.id))).unwrap();
    assert_eq!(vif[0].host_address, Some(dhcp[0].fixed_ips[0].ip_address.to_string()));
    let elsewhere =
        cloud.state.db.with(|db| crate::conductor::routers::host_routers(db, &config, "another-host")).unwrap();
    assert!(elsewhere.routers.is_empty(), "routers live on the controller's host only");

    // Disassociate (`server remove floating ip`), then the server's port goes: no dangling row.
    let r = cloud.put(&uri, &demo, json!({"floatingip": {"port_id": null}})).await;
    assert_eq!(r.json()["floatingip"]["status"], "DOWN", "{}", r.text());
    let r = cloud.put(&uri, &demo, json!({"floatingip": {"port_id": port_id, "description": "web"}})).await;
    assert_eq!(r.json()["floatingip"]["description"], "web", "{}", r.text());
    cloud.state.db.with(|db| crate::conductor::release_network(db, &server)).unwrap();
    let f = cloud.get(&uri, &demo).await.json()["floatingip"].clone();
    assert_eq!(
        (f["port_id"].as_null(), f["fixed_ip_address"].as_null(), f["status"].as_str()),
        (Some(()), Some(()), Some("DOWN"))
    );
    assert_eq!(cloud.delete(&uri, &demo).await.status, StatusCode::NO_CONTENT);
    neutron_error(&cloud.get(&uri, &demo).await, StatusCode::NOT_FOUND, "FloatingIPNotFound");
}

#[tokio::test]
async fn router_and_floating_ip_quotas_are_neutrons() {
    let cloud = Cloud::new();
    let (_private, public, _) = networks(&cloud);
    let (demo, admin) = (cloud.token("demo").await, cloud.token("admin").await);
    let uri = format!("/network/v2.0/quotas/{}", cloud.demo_project);
    let r = cloud.put(&uri, &admin, json!({"quota": {"router": 1, "floatingip": 1}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    router_with_gateway(&cloud, &demo, &public, "r1").await;
    let r = cloud.post("/network/v2.0/routers", &demo, json!({"router": {"name": "r2"}})).await;
    assert_eq!(neutron_error(&r, StatusCode::CONFLICT, "OverQuota"), "Quota exceeded for resources: ['router'].");
    created(
        &cloud,
        &demo,
        "/network/v2.0/floatingips",
        json!({"floatingip": {"floating_network_id": public.id}}),
        "floatingip",
    )
    .await;
    let r =
        cloud.post("/network/v2.0/floatingips", &demo, json!({"floatingip": {"floating_network_id": public.id}})).await;
    neutron_error(&r, StatusCode::CONFLICT, "OverQuota");
    let d = cloud.get(&format!("{uri}/details"), &demo).await.json();
    assert_eq!((d["quota"]["router"]["used"].as_i64(), d["quota"]["floatingip"]["used"].as_i64()), (Some(1), Some(1)));
    // A refused create left no port on public behind (only the router's gateway and the floating IP's).
    let ports = cloud.state.db.with(|db| db.ports_on_network(&public.id)).unwrap();
    assert_eq!(ports.len(), 2, "{ports:?}");
}

#[tokio::test]
async fn extensions_list_the_l3_aliases_clients_test_for() {
    let cloud = Cloud::new();
    let demo = cloud.token("demo").await;
    let v = cloud.get("/network/v2.0/extensions", &demo).await.json();
    let aliases: Vec<&str> = v["extensions"].as_array().unwrap().iter().filter_map(|e| e["alias"].as_str()).collect();
    for a in ["router", "extraroute", "ext-gw-mode", "external-net"] {
        assert!(aliases.contains(&a), "{a} missing from {aliases:?}");
    }
    let v = cloud.get("/network/v2.0/", &demo).await.json();
    assert!(v["resources"].as_array().unwrap().iter().any(|r| r["collection"] == "floatingips"), "{v}");
}
