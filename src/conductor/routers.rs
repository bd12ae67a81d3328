//! Routers as the host that plumbs them needs them (neutron's L3 agent's view), built where
//! the database is: every router of the cloud with its interfaces, gateway, routes and
//! floating IPs. Routers live on one host, the controller's (`[host] name` of the API), as
//! DevStack's all-in-one L3 agent; another compute host gets none.

use crate::config::Config;
use crate::db::{Db, DbError};
use crate::network::routers::{self, HostRouter, HostRouters, Nat, RouterLeg};

/// The routers `host` must have: all of them (up ones) on the router host, none elsewhere.
pub fn host_routers(db: &Db, config: &Config, host: &str) -> Result<HostRouters, DbError> {
    if host != config.host.name {
        return Ok(HostRouters::default());
    }
    let fips = db.floating_ips()?;
    let mut out = Vec::new();
    for r in db.routers()?.into_iter().filter(|r| r.admin_state_up) {
        let mut interfaces = Vec::new();
        for p in db.router_interfaces(&r.id)? {
            interfaces.push(RouterLeg { vif: super::network::vif(db, &p)?, device: routers::qr_name(&p.id) });
        }
        let gateway = match r.gateway.as_ref().and_then(|g| g.port_id.clone()) {
            Some(port_id) => match db.port_by_id(&port_id)? {
                Some(p) => Some(RouterLeg { vif: super::network::vif(db, &p)?, device: routers::qg_name(&p.id) }),
                None => None,
            },
            None => None,
        };
        let floating = fips
            .iter()
            .filter(|f| f.router_id.as_deref() == Some(r.id.as_str()))
            .filter_map(|f| f.fixed_ip_address.map(|fixed| Nat { floating_ip: f.floating_ip_address, fixed_ip: fixed }))
            .collect();
        out.push(HostRouter {
            namespace: routers::namespace(&r.id),
            snat: r.gateway.as_ref().is_some_and(|g| g.enable_snat),
            routes: r.routes.clone(),
            id: r.id,
            interfaces,
            gateway,
            floating,
        });
    }
    Ok(HostRouters { routers: out })
}

/// After a router or floating IP changed: tells the router host to fetch its routers again.
/// A host that misses it gets them at its next start; the API request does not fail.
pub async fn push_routers(
    db: &crate::db::SharedDb,
    compute: &crate::rpcapi::ComputeApi,
    config: &Config,
    ctx: &crate::bus::Context,
) {
    let host = config.host.name.clone();
    let present = db.with(|db| -> Result<bool, DbError> {
        Ok(db.services()?.iter().any(|s| s.binary == crate::compute::BINARY && s.host == host))
    });
    if !matches!(present, Ok(true)) {
        return;
    }
    if let Err(e) = compute.refresh_routers(ctx, &host).await {
        tracing::warn!(host, error = %e, "router update not sent");
    }
}

#[cfg(test)]
mod tests {
    use crate::bus::{Context, RemoteErrorKind};
    use crate::config::Config;
    use crate::db::{Db, OpenOptions};
    use crate::rpcapi::RequestedNetworks;

    /// A member's server cannot be plugged into `public` (neutron refuses the port nova would
    /// make); an admin's can.
    #[test]
    fn servers_of_members_are_not_plugged_into_the_external_network() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        let admin = db.ensure_project("admin", "").unwrap();
        let config = Config::default();
        let public = db.ensure_public_network(&config).unwrap();
        let inst = db.create_instance(&crate::db::instances::tests::new_instance(&db, "vm")).unwrap();
        let requested = RequestedNetworks::List(vec![serde_json::from_value(
            serde_json::json!({"network_id": public.id, "port_id": null, "fixed_ip": null}),
        )
        .unwrap()]);
        let member = Context { project_id: Some(inst.project_id.clone()), ..Context::default() };
        let err = crate::conductor::network::allocate(&db, &config, &inst.uuid, &requested, "h1", &member).unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str()),
            (RemoteErrorKind::PolicyNotAuthorized, "(rule:create_port) is disallowed by policy")
        );
        assert!(db.instance_ports(&inst.uuid).unwrap().is_empty());
        let admin_ctx = Context { project_id: Some(admin), is_admin: true, ..Context::default() };
        let vifs = crate::conductor::network::allocate(&db, &config, &inst.uuid, &requested, "h1", &admin_ctx).unwrap();
        assert_eq!(vifs.len(), 1);
        assert_eq!(vifs[0].network_id, public.id);
    }
}
