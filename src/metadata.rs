//! The metadata service at 169.254.169.254: what a guest reads about itself over HTTP when
//! it has no config drive (cloud-init's OpenStack and EC2 datasources).
//!
//! A guest is known by where its request comes from alone: the network it arrived on and its
//! source address -> the port on that network with that fixed IP -> the instance the port is
//! bound to, which must be of the port's own project (nova answers 404 when the port's
//! project is not the instance's, so a port that merely names another project's server gets
//! nothing). Nothing the guest sends (headers, paths) can name another instance, and an
//! address no port or more than one port holds answers 404, never someone else's data. The
//! bodies come from the config drive's builders, so both sources say the same.
//!
//! In bridge mode each network has its own bridge, and the service has one listener per
//! bridge, bound to it (`SO_BINDTODEVICE`; Linux lets several sockets share
//! 169.254.169.254:80 when each is bound to another device). A listener knows its network, as
//! neutron's metadata proxy knows the network of its namespace, so another project's network
//! with the same CIDR (and a port holding the same address) cannot shadow a guest. Listeners
//! follow the networks' bridges as they appear and go ([`serve_bridges`]). The host takes
//! 169.254.169.254/32 on the default bridge ([`ensure_address`]); guests of every network
//! reach it through their gateway.
//!
//! `[metadata] listen` elsewhere (tests serve it on loopback) is one listener that cannot tell
//! networks apart: there the address is looked up on every network, and among the ports
//! holding it only those bound to an instance of their own project count.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use serde_json::Value;

use crate::compute::virt::configdrive;
use crate::compute::virt::GuestSpec;
use crate::db::SharedDb;

/// The address every cloud's guests expect the metadata service on.
pub use crate::network::METADATA_ADDRESS as ADDRESS;

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

/// What a listener serves: the database, and the network its requests arrive from (`None`:
/// a listener that cannot tell, see the module's documentation).
#[derive(Clone)]
struct Listener {
    db: SharedDb,
    network_id: Option<String>,
}

/// The guest whose port holds `ip` on `network_id` (any network when `None`), or `None`
/// (unknown, deleted, ambiguous, or a port naming another project's instance).
fn guest_at(db: &SharedDb, network_id: Option<&str>, ip: Ipv4Addr) -> Option<Guest> {
    db.with(|db| {
        let ports = match network_id {
            Some(net) => db.ports_on_network(net),
            None => db.ports(),
        };
        let ports = match ports {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "metadata: cannot read ports");
                return None;
            }
        };
        let mut found = Vec::new();
        for port in ports.iter().filter(|p| !p.device_id.is_empty() && p.fixed_ips.iter().any(|f| f.ip_address == ip)) {
            let Some(inst) = db.instance_by_uuid(&port.device_id, false).ok().flatten() else { continue };
            if inst.project_id != port.project_id {
                // nova's words: the port's project is not the instance's, so no answer.
                tracing::warn!(
                    %ip, port_id = %port.id, tenant_id = %port.project_id, instance_id = %inst.uuid,
                    "metadata: Tenant_id of the port does not match tenant_id of the instance; answering 404"
                );
                continue;
            }
            found.push(inst);
        }
        let [inst] = found.as_slice() else {
            if found.len() > 1 {
                tracing::warn!(%ip, instances = found.len(), "metadata: address held by several guests, answering 404");
            }
            return None;
        };
        let vifs = crate::conductor::network::vifs(db, &inst.uuid).ok()?;
        Some(Guest { spec: crate::compute::manager::guest_spec(inst, None, vifs, Vec::new()), ip })
    })
}

/// The service's routes for requests arriving from `network_id` (any network when `None`):
/// everything under one handler, since every answer depends on who asks.
fn router(db: SharedDb, network_id: Option<String>) -> Router {
    Router::new().fallback(answer).with_state(Listener { db, network_id })
}

/// Serves the metadata routes on `listener` until `shutdown` resolves, for guests of any
/// network (the listener cannot tell them apart).
pub async fn serve(
    listener: tokio::net::TcpListener,
    db: SharedDb,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_network(listener, db, None, shutdown).await
}

async fn serve_network(
    listener: tokio::net::TcpListener,
    db: SharedDb,
    network_id: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::api::server::serve(listener, router(db, network_id), TIMEOUTS, shutdown).await
}

/// Guests are clients like any other: a half-sent request must not hold a connection forever.
const TIMEOUTS: crate::api::server::Timeouts = crate::api::server::Timeouts {
    header_read: std::time::Duration::from_secs(30),
    body_idle: std::time::Duration::from_secs(30),
};

/// How often the bridge listeners are checked against the networks' bridges: a guest on a
/// network whose bridge just appeared waits at most this long (cloud-init retries).
const RECONCILE: std::time::Duration = std::time::Duration::from_secs(1);

/// A listener bound to `bridge` for the guests of `network_id`.
fn bind_to_bridge(bridge: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind_device(Some(bridge.as_bytes()))?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The interface index of `bridge`, when it exists: a bridge deleted and made again has a new
/// one, and a socket bound to the old one hears nothing.
fn ifindex(bridge: &str) -> Option<u32> {
    let path = std::path::Path::new("/sys/class/net").join(bridge).join("ifindex");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// One listener per network bridge on `addr`, each bound to its bridge, until `stop` turns
/// true: networks' bridges that appear get one within [`RECONCILE`], bridges that go lose
/// theirs.
pub async fn serve_bridges(db: SharedDb, addr: SocketAddr, mut stop: tokio::sync::watch::Receiver<bool>) {
    struct Running {
        network_id: String,
        ifindex: u32,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    // Bridges whose bind failed, so the log says it once, not every second.
    let mut failing: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut ticker = tokio::time::interval(RECONCILE);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        let networks = match db.with(|db| db.networks()) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "metadata: cannot read networks");
                continue;
            }
        };
        let mut wanted: BTreeMap<String, (String, u32)> = BTreeMap::new();
        for n in networks {
            let bridge = crate::conductor::network::bridge_name(&n.id, n.bridge.as_deref());
            if let Some(index) = ifindex(&bridge) {
                wanted.insert(bridge, (n.id, index));
            }
        }
        running.retain(|bridge, r| {
            let keep = wanted.get(bridge).is_some_and(|(net, index)| *net == r.network_id && *index == r.ifindex);
            if !keep {
                tracing::info!(bridge, network_id = %r.network_id, "metadata: bridge gone, its listener stops");
                r.task.abort();
            }
            keep
        });
        for (bridge, (network_id, index)) in wanted {
            if running.contains_key(&bridge) {
                continue;
            }
            let listener = match bind_to_bridge(&bridge, addr) {
                Ok(l) => l,
                Err(e) => {
                    if failing.insert(bridge.clone()) {
                        tracing::warn!(bridge, %addr, error = %e, "metadata: cannot listen on this bridge; retrying");
                    }
                    continue;
                }
            };
            failing.remove(&bridge);
            tracing::info!(bridge, %network_id, %addr, "metadata service listening on the bridge");
            let mut halt = stop.clone();
            let task = tokio::spawn(serve_network(listener, db.clone(), Some(network_id.clone()), async move {
                let _ = halt.changed().await;
            }));
            running.insert(bridge, Running { network_id, ifindex: index, task });
        }
    }
    for (_, r) in running {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), r.task).await;
    }
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

async fn answer(
    State(at): State<Listener>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let ip = match peer.ip() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => return not_found(),
        },
    };
    let path = uri.path().trim_end_matches('/');
    let Some(g) = guest_at(&at.db, at.network_id.as_deref(), ip) else {
        tracing::info!(%ip, network_id = at.network_id.as_deref().unwrap_or("any"), path, "metadata: no guest at this address");
        return not_found();
    };
    tracing::debug!(%ip, instance_id = %g.spec.uuid, path, "metadata request");
    if path == "/openstack/latest/password" {
        return password(&at.db, &g.spec.uuid, &method, &body);
    }
    respond(&g, path)
}

/// The most a guest may post as its password: nova keeps it in four chunks of 255.
const PASSWORD_MAX: usize = 4 * 255;

/// nova's `handle_password`: GET reads what was posted, POST sets it once (409 after, until
/// `os-server-password` clears it), and nothing else.
fn password(db: &SharedDb, uuid: &str, method: &Method, body: &[u8]) -> Response {
    let stored = |r: crate::db::Result<Response>| {
        r.unwrap_or_else(|e| {
            tracing::error!(instance_id = %uuid, error = %e, "metadata: cannot read or keep the password");
            (StatusCode::INTERNAL_SERVER_ERROR, "500 Internal Server Error\n").into_response()
        })
    };
    match *method {
        Method::GET => stored(db.with(|db| db.instance_password(uuid)).map(|p| text(p.unwrap_or_default()))),
        Method::POST => {
            if body.len() > PASSWORD_MAX {
                return (StatusCode::BAD_REQUEST, "Request is too large.").into_response();
            }
            let posted = String::from_utf8_lossy(body);
            stored(db.with(|db| db.set_instance_password_once(uuid, &posted)).map(|set| {
                if set {
                    StatusCode::OK.into_response()
                } else {
                    (StatusCode::CONFLICT, "409 Conflict\n").into_response()
                }
            }))
        }
        _ => (StatusCode::BAD_REQUEST, "GET and POST only are supported.").into_response(),
    }
}

fn respond(g: &Guest, path: &str) -> Response {
    let spec = &g.spec;
    let user = user_data(spec);
    match path {
        "" => text("latest\nopenstack\n"),
        "/openstack" => text("latest\n"),
        "/openstack/latest" => {
            let mut files =
                "meta_data.json\nnetwork_data.json\npassword\nvendor_data.json\nvendor_data2.json\n".to_string();
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

    async fn post(base: &str, from: &str, path: &str, body: &str) -> (u16, String) {
        let client = reqwest::Client::builder().local_address(from.parse::<IpAddr>().unwrap()).build().unwrap();
        let r = client.post(format!("{base}{path}")).body(body.to_string()).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// nova's password handler: each guest posts its own, once, at most 1020 bytes; what it
    /// posted is what it (and `os-server-password`) reads; metadata changed through the API
    /// is what the next read of meta_data.json says.
    #[tokio::test]
    async fn guests_post_their_password_once_and_read_current_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let (db, [alpha, beta]) = two_guests(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, db.clone(), async move {
            let _ = stopped.await;
        }));
        let path = "/openstack/latest/password";
        assert!(get(&base, "127.0.0.2", "/openstack/latest").await.1.contains("password\n"));
        assert_eq!(get(&base, "127.0.0.2", path).await, (200, String::new()), "none yet");
        assert_eq!(post(&base, "127.0.0.2", path, &"x".repeat(1021)).await.0, 400, "too large");
        assert_eq!(post(&base, "127.0.0.2", path, "c2VjcmV0").await.0, 200);
        assert_eq!(post(&base, "127.0.0.2", path, "b3RoZXI=").await.0, 409, "only once");
        assert_eq!(get(&base, "127.0.0.2", path).await.1, "c2VjcmV0");
        assert_eq!(get(&base, "127.0.0.3", path).await.1, "", "each guest its own");
        assert_eq!(db.with(|db| db.instance_password(&alpha)).unwrap().as_deref(), Some("c2VjcmV0"));
        db.with(|db| db.clear_instance_password(&alpha)).unwrap();
        assert_eq!(post(&base, "127.0.0.2", path, "bmV3").await.0, 200, "cleared, it may post again");
        let client = reqwest::Client::builder().local_address("127.0.0.2".parse::<IpAddr>().unwrap()).build().unwrap();
        let put = client.put(format!("{base}{path}")).body("x").send().await.unwrap();
        assert_eq!(put.status().as_u16(), 400);

        let items = [("role".to_string(), "db".to_string())].into_iter().collect();
        db.with(|db| db.replace_instance_metadata(&beta, &items)).unwrap();
        let (_, body) = get(&base, "127.0.0.3", "/openstack/latest/meta_data.json").await;
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["meta"], serde_json::json!({"role": "db"}));

        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    /// A port of project `alt` on network `net` with `ip` and `device_id`.
    fn alt_port(db: &SharedDb, net: &str, ip: &str, device_id: &str) {
        db.with(|db| {
            let alt = db.ensure_project("alt", "").unwrap();
            db.allocate_port(&NewPort {
                network_id: net.into(),
                project_id: alt,
                device_id: device_id.into(),
                device_owner: "compute:nova".into(),
                fixed_ips: vec![crate::db::network::FixedIpRequest {
                    subnet_id: None,
                    ip_address: Some(ip.parse().unwrap()),
                }],
                ..NewPort::default()
            })
            .unwrap();
        });
    }

    /// Another project's network with the same CIDR as the default one (overlap is allowed
    /// across networks, as in neutron).
    fn alt_network(db: &SharedDb) -> String {
        db.with(|db| {
            let alt = db.ensure_project("alt", "").unwrap();
            let n = db.create_network(&crate::db::network::Network::new("alt-net", alt.clone())).unwrap();
            let cidr: crate::cidr::Ipv4Cidr = "127.0.0.0/24".parse().unwrap();
            db.create_subnet(&crate::db::network::NewSubnet {
                network_id: n.id.clone(),
                project_id: alt,
                name: String::new(),
                description: String::new(),
                cidr,
                gateway_ip: Some(cidr.gateway()),
                enable_dhcp: true,
                allocation_pools: crate::network::ipam::default_pools(&cidr, Some(cidr.gateway())),
                dns_nameservers: Vec::new(),
                host_routes: Vec::new(),
            })
            .unwrap();
            n.id
        })
    }

    /// Issue 14: a port of another project that names a guest as its device gets nothing, and
    /// another project's port holding a guest's address on an overlapping network does not
    /// switch the guest's metadata off.
    #[tokio::test]
    async fn ports_of_other_projects_neither_read_nor_shadow_a_guest() {
        let dir = tempfile::tempdir().unwrap();
        let (db, [alpha, _beta]) = two_guests(dir.path());
        let default_net = db.with(|db| db.networks()).unwrap()[0].id.clone();
        let alt_net = alt_network(&db);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, db.clone(), async move {
            let _ = stopped.await;
        }));

        // alt's port on the shared network naming alpha (the attack of issue 14): 404, and
        // nothing of alpha's in the answer.
        alt_port(&db, &default_net, "127.0.0.7", &alpha);
        for path in ["/openstack/latest/meta_data.json", "/openstack/latest/user_data", "/latest/meta-data/hostname"] {
            let (code, body) = get(&base, "127.0.0.7", path).await;
            assert_eq!(code, 404, "{path}: {body}");
            assert!(!body.contains(&alpha) && !body.contains("alpha"), "{body}");
        }
        // Nor is it one of alpha's NICs.
        let vifs = db.with(|db| crate::conductor::network::vifs(db, &alpha)).unwrap();
        assert_eq!(vifs.len(), 1, "{vifs:?}");
        assert_eq!(vifs[0].ips, vec!["127.0.0.2".to_string()]);

        // alt's port holding alpha's address on alt's own network, bound to nothing real:
        // alpha still reads its metadata on the all-networks listener.
        alt_port(&db, &alt_net, "127.0.0.2", "no-such-instance");
        let (code, body) = get(&base, "127.0.0.2", "/openstack/latest/meta_data.json").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["uuid"], alpha.as_str());

        // Bound to an instance of alt's own: the all-networks listener cannot tell them
        // apart (404 for both), a listener of the network the request came from can.
        let alt_guest = db.with(|db| {
            let mut n = crate::db::instances::tests::new_instance(db, "alt-guest");
            n.project_id = db.ensure_project("alt", "").unwrap();
            db.create_instance(&n).unwrap().uuid
        });
        alt_port(&db, &alt_net, "127.0.0.3", &alt_guest);
        assert_eq!(get(&base, "127.0.0.3", "/openstack/latest/meta_data.json").await.0, 404);
        let on_default = guest_at(&db, Some(&default_net), "127.0.0.2".parse().unwrap()).map(|g| g.spec.uuid);
        assert_eq!(on_default.as_deref(), Some(alpha.as_str()));
        let on_alt = guest_at(&db, Some(&alt_net), "127.0.0.3".parse().unwrap()).map(|g| g.spec.uuid);
        assert_eq!(on_alt.as_deref(), Some(alt_guest.as_str()));
        assert!(guest_at(&db, Some(&alt_net), "127.0.0.2".parse().unwrap()).is_none(), "no guest behind that port");

        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
