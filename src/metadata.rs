//! The metadata service at 169.254.169.254: what a guest reads about itself over HTTP when
//! it has no config drive (cloud-init's OpenStack and EC2 datasources).
//!
//! A guest is known by the source address of its request alone: source IP -> the port with
//! that fixed IP -> the instance the port is bound to. Nothing the guest sends (headers,
//! paths) can name another instance, and an address no port or more than one port holds
//! (overlapping subnets on two bridges) answers 404, never someone else's data. The bodies
//! come from the config drive's builders, so both sources say the same.
//!
//! `up` runs it beside the API when the bridge exists: the host takes 169.254.169.254/32 on
//! the bridge ([`ensure_address`]) and guests reach it through their default gateway.
//! `[metadata] listen` moves it (tests serve it on loopback).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use serde_json::Value;

use crate::compute::virt::configdrive;
use crate::compute::virt::GuestSpec;
use crate::db::SharedDb;

/// The address every cloud's guests expect the metadata service on.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("cannot run `ip` to give bridge {bridge} the metadata address: {source}; install iproute2")]
    IpMissing { bridge: String, source: std::io::Error },
    #[error("cannot add {ADDRESS}/32 to bridge {bridge}: {stderr}")]
    Address { bridge: String, stderr: String },
}

/// Gives `bridge` the metadata address (idempotent). `novabox down` removes it with the bridge.
pub fn ensure_address(bridge: &str) -> Result<(), MetadataError> {
    let out = std::process::Command::new("ip")
        .args(["addr", "replace", &format!("{ADDRESS}/32"), "dev", bridge])
        .output()
        .map_err(|source| MetadataError::IpMissing { bridge: bridge.into(), source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(MetadataError::Address {
            bridge: bridge.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        })
    }
}

/// One guest as the metadata service sees it.
struct Guest {
    spec: GuestSpec,
    ip: Ipv4Addr,
}

/// The guest whose port holds `ip`, or `None` (unknown, deleted, or ambiguous).
fn guest_at(db: &SharedDb, ip: Ipv4Addr) -> Option<Guest> {
    db.with(|db| {
        let ports = match db.ports() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "metadata: cannot read ports");
                return None;
            }
        };
        let holders: Vec<_> = ports
            .into_iter()
            .filter(|p| !p.device_id.is_empty() && p.fixed_ips.iter().any(|f| f.ip_address == ip))
            .collect();
        let [port] = holders.as_slice() else {
            if holders.len() > 1 {
                tracing::warn!(%ip, ports = holders.len(), "metadata: address held by several ports, answering 404");
            }
            return None;
        };
        let inst = db.instance_by_uuid(&port.device_id, false).ok().flatten()?;
        let vifs = crate::conductor::network::vifs(db, &inst.uuid).ok()?;
        Some(Guest { spec: crate::compute::manager::guest_spec(&inst, None, vifs, Vec::new()), ip })
    })
}

/// The service's routes: everything under one handler, since every answer depends on who asks.
pub fn router(db: SharedDb) -> Router {
    Router::new().fallback(answer).with_state(db)
}

/// Serves the metadata routes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    db: SharedDb,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(db).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

fn text(body: impl Into<String>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

fn json(v: &Value) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 Not Found\n").into_response()
}

/// The user data as the guest gave it at boot, decoded.
fn user_data(spec: &GuestSpec) -> Option<Vec<u8>> {
    let b64 = spec.user_data.as_deref()?;
    base64::engine::general_purpose::STANDARD.decode(b64.trim().as_bytes()).ok()
}

/// EC2's instance id: `i-` and eight hex digits, here the uuid's first eight.
fn ec2_id(uuid: &str) -> String {
    format!("i-{}", uuid.chars().filter(|c| c.is_ascii_hexdigit()).take(8).collect::<String>())
}

async fn answer(State(db): State<SharedDb>, ConnectInfo(peer): ConnectInfo<SocketAddr>, uri: Uri) -> Response {
    let ip = match peer.ip() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => return not_found(),
        },
    };
    let path = uri.path().trim_end_matches('/');
    let Some(g) = guest_at(&db, ip) else {
        tracing::info!(%ip, path, "metadata: no guest at this address");
        return not_found();
    };
    tracing::debug!(%ip, instance_id = %g.spec.uuid, path, "metadata request");
    respond(&g, path)
}

fn respond(g: &Guest, path: &str) -> Response {
    let spec = &g.spec;
    let user = user_data(spec);
    match path {
        "" => text("latest\nopenstack\n"),
        "/openstack" => text("latest\n"),
        "/openstack/latest" => {
            let mut files = "meta_data.json\nnetwork_data.json\nvendor_data.json\nvendor_data2.json\n".to_string();
            if user.is_some() {
                files += "user_data\n";
            }
            text(files)
        }
        "/openstack/latest/meta_data.json" => json(&configdrive::meta_data(spec)),
        "/openstack/latest/network_data.json" => json(&configdrive::network_data(spec)),
        "/openstack/latest/vendor_data.json" | "/openstack/latest/vendor_data2.json" => json(&serde_json::json!({})),
        "/openstack/latest/user_data" | "/latest/user-data" => match user {
            Some(bytes) => bytes.into_response(),
            None => not_found(),
        },
        "/latest" => text(if user.is_some() { "meta-data/\nuser-data\n" } else { "meta-data/\n" }),
        "/latest/meta-data" => {
            let mut keys = "hostname\ninstance-id\nlocal-hostname\nlocal-ipv4\nplacement/\n".to_string();
            if spec.key_data.is_some() {
                keys += "public-keys/\n";
            }
            text(keys)
        }
        "/latest/meta-data/instance-id" => text(ec2_id(&spec.uuid)),
        "/latest/meta-data/hostname" | "/latest/meta-data/local-hostname" => text(spec.hostname.clone()),
        "/latest/meta-data/local-ipv4" => text(g.ip.to_string()),
        "/latest/meta-data/placement" => text("availability-zone\n"),
        "/latest/meta-data/placement/availability-zone" => text(spec.availability_zone.clone().unwrap_or_default()),
        "/latest/meta-data/public-keys" => match &spec.key_data {
            Some(_) => text(format!("0={}\n", spec.key_name.clone().unwrap_or_else(|| "key".into()))),
            None => not_found(),
        },
        "/latest/meta-data/public-keys/0" => match &spec.key_data {
            Some(_) => text("openssh-key\n"),
            None => not_found(),
        },
        "/latest/meta-data/public-keys/0/openssh-key" => match &spec.key_data {
            Some(k) => text(format!("{k}\n")),
            None => not_found(),
        },
        _ => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::db::network::NewPort;
    use crate::db::{Db, OpenOptions};

    /// Two guests with ports on a 127.0.0.0/24 network, so the test can speak from each
    /// guest's address over loopback (the kernel lets any 127/8 address be a source).
    fn two_guests(dir: &std::path::Path) -> (SharedDb, [String; 2]) {
        let db = Db::open(&dir.join("db.sqlite"), OpenOptions::default()).unwrap();
        db.ensure_project("admin", "").unwrap();
        let mut config = Config::default();
        config.network.cidr = "127.0.0.0/24".parse().unwrap();
        let net = db.ensure_default_network(&config).unwrap();
        let mut uuids = Vec::new();
        for (name, key) in [("alpha", Some("ssh-ed25519 AAAA alpha@test")), ("beta", None)] {
            let mut n = crate::db::instances::tests::new_instance(&db, name);
            n.key_name = key.map(|_| "k1".to_string());
            n.key_data = key.map(Into::into);
            n.user_data = Some(base64::engine::general_purpose::STANDARD.encode(format!("#!/bin/sh\necho {name}\n")));
            let inst = db.create_instance(&n).unwrap();
            db.allocate_port(&NewPort {
                network_id: net.id.clone(),
                project_id: inst.project_id.clone(),
                device_id: inst.uuid.clone(),
                device_owner: "compute:nova".into(),
                ..NewPort::default()
            })
            .unwrap();
            uuids.push(inst.uuid);
        }
        (SharedDb::new(db), [uuids[0].clone(), uuids[1].clone()])
    }

    async fn get(base: &str, from: &str, path: &str) -> (u16, String) {
        let client = reqwest::Client::builder().local_address(from.parse::<IpAddr>().unwrap()).build().unwrap();
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    #[tokio::test]
    async fn answers_each_guest_by_source_address_and_strangers_404() {
        let dir = tempfile::tempdir().unwrap();
        let (db, [alpha, beta]) = two_guests(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, db, async move {
            let _ = stopped.await;
        }));

        // Ports got .2 and .3 (the gateway keeps .1).
        let (code, body) = get(&base, "127.0.0.2", "/openstack/latest/meta_data.json").await;
        assert_eq!(code, 200, "{body}");
        let meta: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(meta["uuid"], alpha.as_str());
        assert_eq!(meta["hostname"], "alpha");
        assert_eq!(meta["public_keys"]["k1"], "ssh-ed25519 AAAA alpha@test");
        assert_eq!(meta["meta"]["k"], "v");
        let (_, body) = get(&base, "127.0.0.3", "/openstack/latest/meta_data.json").await;
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["uuid"], beta.as_str());

        assert_eq!(get(&base, "127.0.0.2", "/openstack").await, (200, "latest\n".into()));
        assert_eq!(get(&base, "127.0.0.2", "/openstack/latest/user_data").await.1, "#!/bin/sh\necho alpha\n");
        assert_eq!(get(&base, "127.0.0.3", "/latest/user-data").await.1, "#!/bin/sh\necho beta\n");
        let (_, net) = get(&base, "127.0.0.3", "/openstack/latest/network_data.json").await;
        assert_eq!(serde_json::from_str::<Value>(&net).unwrap()["networks"][0]["type"], "ipv4_dhcp");

        // EC2 paths.
        assert_eq!(get(&base, "127.0.0.2", "/latest/meta-data/instance-id").await.1, format!("i-{}", &alpha[..8]));
        assert_eq!(get(&base, "127.0.0.2", "/latest/meta-data/hostname").await.1, "alpha");
        assert_eq!(get(&base, "127.0.0.3", "/latest/meta-data/local-ipv4").await.1, "127.0.0.3");
        assert_eq!(get(&base, "127.0.0.2", "/latest/meta-data/public-keys/").await.1, "0=k1\n");
        assert_eq!(
            get(&base, "127.0.0.2", "/latest/meta-data/public-keys/0/openssh-key").await.1,
            "ssh-ed25519 AAAA alpha@test\n"
        );
        assert!(get(&base, "127.0.0.2", "/latest/meta-data/").await.1.contains("public-keys/"));
        assert_eq!(get(&base, "127.0.0.3", "/latest/meta-data/public-keys/0/openssh-key").await.0, 404, "no key");

        // Nobody's address, and unknown paths: 404, nobody's data.
        let (code, body) = get(&base, "127.0.0.9", "/openstack/latest/meta_data.json").await;
        assert_eq!(code, 404);
        assert!(!body.contains(&alpha) && !body.contains(&beta));
        assert_eq!(get(&base, "127.0.0.2", "/openstack/latest/secrets").await.0, 404);

        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
