//! The network side of a boot, done where the database is: ports for an instance's
//! requested networks, released on delete, and the `addresses` view built from them.

use serde_json::{json, Map, Value};

use crate::bus::{Context, RemoteError, RemoteErrorKind};
use crate::config::Config;
use crate::db::{Db, DbError};
use crate::network::model::{FixedIpRequest, NewPort, Port};
use crate::network::secgroups::{self, HostFilters};
use crate::network::vif::{tap_name, PortDevice, Vif};
use crate::policy::{Action, Target};
use crate::rpcapi::RequestedNetworks;

// Named here by the metadata service and the network API.
pub use crate::network::error::over_quota_message;
pub use crate::network::vif::bridge_name;

fn remote(e: DbError) -> RemoteError {
    RemoteError::new(RemoteErrorKind::NetworkError, e.to_string())
}

/// One more port for the instance's project, or neutron's refusal.
fn port_quota(db: &Db, project_id: &str) -> Result<(), RemoteError> {
    if db.network_quota_allows(project_id, "port", 1).map_err(remote)? {
        Ok(())
    } else {
        Err(RemoteError::new(RemoteErrorKind::OverQuota, over_quota_message("port")))
    }
}

pub(crate) fn vif(db: &Db, p: &Port) -> Result<Vif, DbError> {
    let network = db.network_by_id(&p.network_id)?;
    let subnet = match p.fixed_ips.first() {
        Some(f) => db.subnet_by_id(&f.subnet_id)?,
        None => None,
    };
    let mut vif = Vif::of_port(p, network.as_ref(), subnet.as_ref());
    // Issue 19: when a router holds the subnet's gateway, the host keeps the DHCP port's address.
    if let Some(s) = &subnet {
        vif.host_address = db.host_address(s)?.map(|a| a.to_string());
    }
    Ok(vif)
}

fn vifs_of(db: &Db, ports: &[Port]) -> Result<Vec<Vif>, RemoteError> {
    ports.iter().map(|p| vif(db, p).map_err(remote)).collect()
}

/// Creates (or binds) the ports of a new instance, all in one transaction. `caller` is the
/// context of the request that asked for the boot: nova makes a server's ports with the
/// user's token, so what neutron's policy refuses the user (a chosen address on a network of
/// another project) fails the boot here too.
pub fn allocate(
    db: &Db,
    config: &Config,
    uuid: &str,
    requested: &RequestedNetworks,
    host: &str,
    caller: &Context,
) -> Result<Vec<Vif>, RemoteError> {
    let inst = db.instance_by_uuid(uuid, false).map_err(remote)?.ok_or_else(|| {
        RemoteError::new(RemoteErrorKind::InstanceNotFound, format!("Instance {uuid} could not be found."))
    })?;
    // Ports made by an interrupted earlier attempt are reused, not duplicated.
    let existing = db.instance_ports(uuid).map_err(remote)?;
    if !existing.is_empty() {
        return vifs_of(db, &existing);
    }
    let sg_ids = db.instance_security_group_ids(uuid).map_err(remote)?;
    let new_port = |network_id: String| NewPort {
        network_id,
        project_id: inst.project_id.clone(),
        device_id: uuid.to_string(),
        device_owner: "compute:nova".into(),
        security_group_ids: sg_ids.clone(),
        binding_host: Some(host.to_string()),
        ..NewPort::default()
    };
    let ports = match requested {
        RequestedNetworks::None => Vec::new(),
        RequestedNetworks::Auto => {
            let net = db.ensure_default_network(config).map_err(remote)?;
            port_quota(db, &inst.project_id)?;
            vec![db.allocate_port(&new_port(net.id)).map_err(remote)?]
        }
        RequestedNetworks::List(list) => {
            let mut out = Vec::new();
            for r in list {
                let port = match (&r.port_id, &r.network_id) {
                    (Some(port_id), _) => {
                        // As nova: a port of another project is never the instance's, even
                        // when an admin asked for it.
                        let usable =
                            db.port_by_id(port_id).map_err(remote)?.is_some_and(|p| p.project_id == inst.project_id);
                        if !usable {
                            return Err(RemoteError::new(
                                RemoteErrorKind::PortNotUsable,
                                format!("Port {port_id} not usable for instance {uuid}."),
                            ));
                        }
                        db.bind_port(port_id, uuid, "compute:nova", host).map_err(remote)?
                    }
                    (None, Some(net)) => {
                        // Issue 19: the external network is every project's to see, not to
                        // plug a server into (neutron refuses the port nova would make).
                        let n = db.network_by_id(net).map_err(remote)?;
                        if n.as_ref().is_some_and(|n| {
                            n.external
                                && !n.shared
                                && !caller.is_admin
                                && caller.project_id.as_deref() != Some(&n.project_id)
                        }) {
                            return Err(RemoteError::new(
                                RemoteErrorKind::PolicyNotAuthorized,
                                "(rule:create_port) is disallowed by policy",
                            ));
                        }
                        let mut p = new_port(net.clone());
                        if let Some(ip) = &r.fixed_ip {
                            let owner =
                                db.network_by_id(net).map_err(remote)?.map(|n| n.project_id).unwrap_or_default();
                            let target = Target { network_project_id: Some(&owner), ..Target::default() };
                            crate::policy::check(caller, Action::NetworkPortFixedIps, &target).map_err(|denied| {
                                RemoteError::new(RemoteErrorKind::PolicyNotAuthorized, denied.to_string())
                            })?;
                            let ip_address = ip.parse().map_err(|_| {
                                RemoteError::new(
                                    RemoteErrorKind::InvalidRequest,
                                    format!("fixed_ip {ip} is not an IPv4 address"),
                                )
                            })?;
                            p.fixed_ips = vec![FixedIpRequest { subnet_id: None, ip_address: Some(ip_address) }];
                        }
                        port_quota(db, &inst.project_id)?;
                        db.allocate_port(&p).map_err(remote)?
                    }
                    (None, None) => {
                        return Err(RemoteError::new(RemoteErrorKind::InvalidRequest, "network or port required"))
                    }
                };
                out.push(port);
            }
            out
        }
    };
    vifs_of(db, &ports)
}

pub fn vifs(db: &Db, uuid: &str) -> Result<Vec<Vif>, RemoteError> {
    vifs_of(db, &db.instance_ports(uuid).map_err(remote)?)
}

pub fn deallocate(db: &Db, uuid: &str) -> Result<(), RemoteError> {
    release_network(db, uuid).map_err(remote)
}

/// Deletes the ports novabox made for the instance and unbinds those the user brought.
pub fn release_network(db: &Db, uuid: &str) -> Result<(), DbError> {
    db.release_instance_ports(uuid)
}

/// nova's `addresses`: network name -> list of fixed IPs with their MAC.
pub fn addresses(db: &Db, uuid: &str) -> Result<Value, DbError> {
    let mut out = Map::new();
    let ports = db.instance_ports(uuid)?;
    let port_ids: Vec<String> = ports.iter().map(|p| p.id.clone()).collect();
    let floating = db.floating_ips_of_ports(&port_ids)?;
    for p in ports {
        let entry = out.entry(p.network_name.clone()).or_insert_with(|| json!([]));
        if let Some(list) = entry.as_array_mut() {
            for f in &p.fixed_ips {
                list.push(json!({
                    "version": 4,
                    "addr": f.ip_address.to_string(),
                    "OS-EXT-IPS:type": "fixed",
                    "OS-EXT-IPS-MAC:mac_addr": p.mac_address,
                }));
            }
            // Issue 19: a floating IP follows the fixed IP it maps to, as nova lists it.
            for f in floating.iter().filter(|f| f.port_id.as_deref() == Some(p.id.as_str())) {
                list.push(json!({
                    "version": 4,
                    "addr": f.floating_ip_address.to_string(),
                    "OS-EXT-IPS:type": "floating",
                    "OS-EXT-IPS-MAC:mac_addr": p.mac_address,
                }));
            }
        }
    }
    Ok(Value::Object(out))
}

/// The security group filters of every port bound to `host`, as its compute applies them.
pub fn host_filters(db: &Db, host: &str) -> Result<HostFilters, DbError> {
    let all = db.ports()?;
    let on_host: Vec<Port> =
        all.iter().filter(|p| p.binding_host.as_deref() == Some(host) && !p.device_id.is_empty()).cloned().collect();
    let groups = db.security_groups()?;
    Ok(secgroups::host_filters(&on_host, &all, &groups, |p| tap_name(&p.id)))
}

/// Every port's tap and MAC, on any host: what a compute's sweep must leave plugged. All
/// ports, bound or not, so that nothing a port could still use is ever swept.
pub fn port_devices(db: &Db) -> Result<Vec<PortDevice>, DbError> {
    Ok(db.ports()?.iter().map(PortDevice::of_port).collect())
}

/// After a rule, a port's groups or a group's members changed: sends every compute host its
/// new filters (neutron's security group agent notification). A host that misses it gets
/// the current filters again at its next build, delete or restart; the API request that
/// caused it does not fail.
pub async fn push_security_groups(db: &crate::db::SharedDb, compute: &crate::rpcapi::ComputeApi, ctx: &Context) {
    let per_host = db.with(|db| -> Result<Vec<(String, HostFilters)>, DbError> {
        let mut hosts: Vec<String> =
            db.services()?.into_iter().filter(|s| s.binary == crate::compute::BINARY).map(|s| s.host).collect();
        hosts.sort();
        hosts.dedup();
        hosts.into_iter().map(|h| Ok((h.clone(), host_filters(db, &h)?))).collect()
    });
    match per_host {
        Ok(list) => {
            for (host, filters) in list {
                if let Err(e) = compute.refresh_security_groups(ctx, &host, &filters).await {
                    tracing::warn!(host, error = %e, "security group update not sent");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot compute security group filters"),
    }
}
