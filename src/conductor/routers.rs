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
