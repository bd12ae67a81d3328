//! Routers: their rows, their gateway port on an external network and their interface ports.
//! The checks are `network::routers`'; each change here is one transaction, so a refused
//! request leaves no port behind.

use rusqlite::{params, OptionalExtension, Row};

use super::{json_text, new_id};
use crate::db::{now, Db, Result};
use crate::network::model::*;
use crate::network::routers::{self, Router, RouterGateway, OWNER_DHCP, OWNER_ROUTER_GATEWAY, OWNER_ROUTER_INTERFACE};
use crate::network::NetworkError;

const ROUTER_COLUMNS: &str = "id, project_id, name, description, admin_state_up, status, gw_network_id, gw_port_id, \
                              enable_snat, routes, revision_number, created_at, updated_at";

fn router_from_row(r: &Row<'_>) -> rusqlite::Result<Router> {
    let gw_network: Option<String> = r.get(6)?;
    let routes: String = r.get(9)?;
    let created_at: String = r.get(11)?;
    let updated_at: Option<String> = r.get(12)?;
    Ok(Router {
        id: r.get(0)?,
        project_id: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        admin_state_up: r.get(4)?,
        status: r.get(5)?,
        gateway: gw_network.map(|network_id| RouterGateway {
            network_id,
            enable_snat: r.get(8).unwrap_or(true),
            port_id: r.get(7).unwrap_or(None),
            external_fixed_ips: Vec::new(),
        }),
        routes: serde_json::from_str(&routes).unwrap_or_default(),
        revision_number: r.get(10)?,
        updated_at: updated_at.unwrap_or_else(|| created_at.clone()),
        created_at,
    })
}

/// How a gateway is asked for: the external network, SNAT, and optionally its addresses.
#[derive(Debug, Clone, Default)]
pub struct GatewayRequest {
    pub network_id: String,
    pub enable_snat: bool,
    pub fixed_ips: Vec<FixedIpRequest>,
}

impl Db {
    pub fn routers(&self) -> Result<Vec<Router>> {
        let mut stmt = self.conn().prepare(&format!("SELECT {ROUTER_COLUMNS} FROM routers ORDER BY created_at, id"))?;
        let mut out = stmt.query_map([], router_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        for r in &mut out {
            if let Some(g) = &mut r.gateway {
                if let Some(port) = g.port_id.as_deref() {
                    g.external_fixed_ips = self.port_by_id(port)?.map(|p| p.fixed_ips).unwrap_or_default();
                }
            }
        }
        Ok(out)
    }

    pub fn router_by_id(&self, id: &str) -> Result<Option<Router>> {
        Ok(self.routers()?.into_iter().find(|r| r.id == id))
    }

    fn require_router(&self, id: &str) -> Result<Router> {
        self.router_by_id(id)?.ok_or_else(|| NetworkError::RouterNotFound(id.to_string()).into())
    }

    /// Creates a router, and its gateway when `gateway` asks for one, in one transaction.
    pub fn create_router(&self, r: &Router, gateway: Option<&GatewayRequest>) -> Result<Router> {
        let tx = self.begin()?;
        let id = new_id();
        tx.execute(
            "INSERT INTO routers (id, project_id, name, description, admin_state_up, status, routes, revision_number,
                                  created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'ACTIVE', ?6, 1, ?7, ?7)",
            params![id, r.project_id, r.name, r.description, r.admin_state_up, json_text(&r.routes), now()],
        )?;
        if let Some(g) = gateway {
            self.set_router_gateway(&id, Some(g))?;
        }
        tx.commit()?;
        self.require_router(&id)
    }

    /// Writes back name, description, admin_state_up and routes; bumps the revision.
    pub fn save_router(&self, r: &Router) -> Result<Router> {
        let n = self.conn().execute(
            "UPDATE routers SET name = ?2, description = ?3, admin_state_up = ?4, routes = ?5,
                    revision_number = revision_number + 1, updated_at = ?6
             WHERE id = ?1",
            params![r.id, r.name, r.description, r.admin_state_up, json_text(&r.routes), now()],
        )?;
        if n == 0 {
            return Err(NetworkError::RouterNotFound(r.id.clone()).into());
        }
        self.require_router(&r.id)
    }

    /// Sets, changes or (with `None`) clears the router's gateway. The gateway's port is
    /// replaced when the network or the asked-for addresses change; a gateway that floating
    /// IPs of this router need cannot go to another network or away.
    pub fn set_router_gateway(&self, router_id: &str, want: Option<&GatewayRequest>) -> Result<Router> {
        let tx = self.begin()?;
        let r = self.require_router(router_id)?;
        let current = r.gateway.clone();
        let same_net = match (&current, want) {
            (Some(c), Some(w)) => c.network_id == w.network_id,
            _ => false,
        };
        if let Some(w) = want {
            let net = self
                .network_by_id(&w.network_id)?
                .ok_or_else(|| NetworkError::NetworkNotFound(w.network_id.clone()))?;
            if !net.external {
                return Err(NetworkError::BadRequest {
                    resource: "router",
                    msg: format!("Network {} is not an external network", net.id),
                }
                .into());
            }
        }
        let keeps_port = same_net
            && want.is_some_and(|w| {
                w.fixed_ips.is_empty()
                    || current.as_ref().is_some_and(|c| {
                        w.fixed_ips.iter().all(|f| {
                            c.external_fixed_ips.iter().any(|e| {
                                f.ip_address.is_none_or(|ip| ip == e.ip_address)
                                    && f.subnet_id.as_ref().is_none_or(|s| s == &e.subnet_id)
                            })
                        })
                    })
            });
        if let (Some(c), false) = (&current, same_net) {
            let fips: i64 = tx.query_row(
                "SELECT count(*) FROM floatingips WHERE router_id = ?1 AND floating_network_id = ?2",
                params![router_id, c.network_id],
                |row| row.get(0),
            )?;
            if fips > 0 {
                return Err(NetworkError::RouterExternalGatewayInUseByFloatingIp {
                    router_id: router_id.to_string(),
                    net_id: c.network_id.clone(),
                }
                .into());
            }
        }
        let mut port_id = current.as_ref().and_then(|c| c.port_id.clone());
        if !keeps_port {
            tx.execute("UPDATE routers SET gw_port_id = NULL WHERE id = ?1", [router_id])?;
            if let Some(old) = port_id.take() {
                tx.execute("DELETE FROM ports WHERE id = ?1", [&old])?;
            }
            if let Some(w) = want {
                let port = self.allocate_port(&NewPort {
                    network_id: w.network_id.clone(),
                    // neutron's gateway port belongs to no project.
                    project_id: String::new(),
                    device_id: router_id.to_string(),
                    device_owner: OWNER_ROUTER_GATEWAY.into(),
                    fixed_ips: w.fixed_ips.clone(),
                    port_security_enabled: Some(false),
                    ..NewPort::default()
                })?;
                port_id = Some(port.id);
            }
        }
        tx.execute(
            "UPDATE routers SET gw_network_id = ?2, gw_port_id = ?3, enable_snat = ?4,
                    revision_number = revision_number + 1, updated_at = ?5
             WHERE id = ?1",
            params![router_id, want.map(|w| w.network_id.clone()), port_id, want.is_none_or(|w| w.enable_snat), now()],
        )?;
        tx.commit()?;
        self.require_router(router_id)
    }

    /// The router's interface ports, oldest first.
    pub fn router_interfaces(&self, router_id: &str) -> Result<Vec<Port>> {
        Ok(self.ports_for_device(router_id)?.into_iter().filter(|p| p.device_owner == OWNER_ROUTER_INTERFACE).collect())
    }

    /// Every router with the subnets its interfaces are on.
    pub fn routers_with_subnets(&self) -> Result<Vec<(Router, Vec<String>)>> {
        self.routers()?
            .into_iter()
            .map(|r| {
                let subnets =
                    self.router_interfaces(&r.id)?.into_iter().flat_map(|p| p.fixed_ips).map(|f| f.subnet_id).collect();
                Ok((r, subnets))
            })
            .collect()
    }

    fn router_subnets(&self, router_id: &str) -> Result<Vec<Subnet>> {
        let mut out = Vec::new();
        for p in self.router_interfaces(router_id)? {
            for f in p.fixed_ips {
                if let Some(s) = self.subnet_by_id(&f.subnet_id)? {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// `add_router_interface` by subnet: a new port of `project_id` holding the subnet's
    /// gateway address. The network then gets its DHCP port, whose address the host keeps
    /// on the bridge once the router has the gateway.
    pub fn add_router_interface_subnet(&self, router_id: &str, subnet_id: &str, project_id: &str) -> Result<Port> {
        let tx = self.begin()?;
        self.require_router(router_id)?;
        let subnet = self.subnet_by_id(subnet_id)?.ok_or_else(|| NetworkError::SubnetNotFound(subnet_id.into()))?;
        routers::check_new_interface(&subnet, &self.router_subnets(router_id)?, true)?;
        let gateway = subnet.gateway_ip.ok_or_else(|| NetworkError::SubnetNotFound(subnet_id.into()))?;
        let taken: Option<String> = tx
            .query_row(
                "SELECT port_id FROM ip_allocations WHERE subnet_id = ?1 AND ip_address = ?2",
                params![subnet_id, gateway.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        if taken.is_some() {
            return Err(NetworkError::IpAddressAlreadyAllocated { ip: gateway, subnet_id: subnet_id.into() }.into());
        }
        self.ensure_dhcp_port(&subnet)?;
        let port = self.insert_gateway_holder(&subnet, gateway, router_id, project_id)?;
        tx.execute(
            "UPDATE routers SET revision_number = revision_number + 1, updated_at = ?2 WHERE id = ?1",
            params![router_id, now()],
        )?;
        tx.commit()?;
        Ok(port)
    }

    /// A port holding the subnet's gateway address, which `ports::plan` would refuse (the
    /// gateway is no guest's address): the router's own.
    fn insert_gateway_holder(
        &self,
        subnet: &Subnet,
        gateway: std::net::Ipv4Addr,
        router_id: &str,
        project_id: &str,
    ) -> Result<Port> {
        let port = self.allocate_port(&NewPort {
            network_id: subnet.network_id.clone(),
            project_id: project_id.to_string(),
            device_id: router_id.to_string(),
            device_owner: OWNER_ROUTER_INTERFACE.into(),
            // Any address of the subnet for now; replaced by the gateway below.
            fixed_ips: vec![FixedIpRequest { subnet_id: Some(subnet.id.clone()), ip_address: None }],
            port_security_enabled: Some(false),
            ..NewPort::default()
        })?;
        self.conn().execute(
            "UPDATE ip_allocations SET ip_address = ?2 WHERE port_id = ?1 AND subnet_id = ?3",
            params![port.id, gateway.to_string(), subnet.id],
        )?;
        self.port_by_id(&port.id)?.ok_or_else(|| NetworkError::PortNotFound(port.id.clone()).into())
    }

    /// The network's DHCP port (neutron's `network:dhcp`), made once.
    fn ensure_dhcp_port(&self, subnet: &Subnet) -> Result<Port> {
        let device = format!("dhcp-{}", subnet.network_id);
        if let Some(p) = self.ports_for_device(&device)?.into_iter().find(|p| p.device_owner == OWNER_DHCP) {
            return Ok(p);
        }
        let owner: String =
            self.conn()
                .query_row("SELECT project_id FROM networks WHERE id = ?1", [&subnet.network_id], |r| r.get(0))?;
        self.allocate_port(&NewPort {
            network_id: subnet.network_id.clone(),
            project_id: owner,
            device_id: device,
            device_owner: OWNER_DHCP.into(),
            fixed_ips: vec![FixedIpRequest { subnet_id: Some(subnet.id.clone()), ip_address: None }],
            port_security_enabled: Some(false),
            ..NewPort::default()
        })
    }

    /// The address the host keeps on a network's bridge: its DHCP port's when a router holds
    /// `subnet`'s gateway, else `None` (the host holds the gateway).
    pub fn host_address(&self, subnet: &Subnet) -> Result<Option<std::net::Ipv4Addr>> {
        let Some(gateway) = subnet.gateway_ip else { return Ok(None) };
        let routed: bool = self.conn().query_row(
            // Only a router that is up routes; one set down gives the gateway back to the host.
            "SELECT EXISTS (SELECT 1 FROM ip_allocations a JOIN ports p ON p.id = a.port_id
                                      JOIN routers r ON r.id = p.device_id AND r.admin_state_up = 1
                             WHERE a.subnet_id = ?1 AND a.ip_address = ?2 AND p.device_owner = ?3)",
            params![subnet.id, gateway.to_string(), OWNER_ROUTER_INTERFACE],
            |r| r.get(0),
        )?;
        if !routed {
            return Ok(None);
        }
        let device = format!("dhcp-{}", subnet.network_id);
        Ok(self
            .ports_for_device(&device)?
            .into_iter()
            .flat_map(|p| p.fixed_ips)
            .find(|f| f.subnet_id == subnet.id)
            .map(|f| f.ip_address))
    }

    /// `add_router_interface` by port: the caller's unowned port becomes the interface.
    pub fn add_router_interface_port(&self, router_id: &str, port_id: &str) -> Result<Port> {
        let tx = self.begin()?;
        self.require_router(router_id)?;
        let port = self.port_by_id(port_id)?.ok_or_else(|| NetworkError::PortNotFound(port_id.into()))?;
        routers::check_interface_port(&port)?;
        let subnet_id = &port.fixed_ips[0].subnet_id;
        let subnet = self.subnet_by_id(subnet_id)?.ok_or_else(|| NetworkError::SubnetNotFound(subnet_id.clone()))?;
        routers::check_new_interface(&subnet, &self.router_subnets(router_id)?, false)?;
        if subnet.gateway_ip == Some(port.fixed_ips[0].ip_address) {
            self.ensure_dhcp_port(&subnet)?;
        }
        tx.execute(
            "UPDATE ports SET device_id = ?2, device_owner = ?3, port_security_enabled = 0,
                    revision_number = revision_number + 1, updated_at = ?4
             WHERE id = ?1",
            params![port_id, router_id, OWNER_ROUTER_INTERFACE, now()],
        )?;
        tx.execute("DELETE FROM port_security_groups WHERE port_id = ?1", [port_id])?;
        tx.commit()?;
        self.port_by_id(port_id)?.ok_or_else(|| NetworkError::PortNotFound(port_id.into()).into())
    }

    /// `remove_router_interface` by subnet or port: deletes the interface's port, unless a
    /// floating IP of this router maps to an address of its subnet.
    pub fn remove_router_interface(
        &self,
        router_id: &str,
        subnet_id: Option<&str>,
        port_id: Option<&str>,
    ) -> Result<Port> {
        let tx = self.begin()?;
        self.require_router(router_id)?;
        let interfaces = self.router_interfaces(router_id)?;
        let port = match (port_id, subnet_id) {
            (Some(pid), sid) => {
                let p = interfaces.iter().find(|p| p.id == pid).cloned().ok_or_else(|| {
                    NetworkError::RouterInterfaceNotFound { router_id: router_id.into(), port_id: pid.into() }
                })?;
                if let Some(sid) = sid {
                    if !p.fixed_ips.iter().any(|f| f.subnet_id == sid) {
                        return Err(NetworkError::BadRequest {
                            resource: "router",
                            msg: format!("Subnet {sid} is not on port {pid}"),
                        }
                        .into());
                    }
                }
                p
            }
            (None, Some(sid)) => {
                interfaces.iter().find(|p| p.fixed_ips.iter().any(|f| f.subnet_id == sid)).cloned().ok_or_else(
                    || NetworkError::RouterInterfaceNotFoundForSubnet {
                        router_id: router_id.into(),
                        subnet_id: sid.into(),
                    },
                )?
            }
            (None, None) => {
                return Err(NetworkError::BadRequest {
                    resource: "router",
                    msg: "Either subnet_id or port_id must be specified".into(),
                }
                .into())
            }
        };
        let routes = self.require_router(router_id)?.routes;
        for f in &port.fixed_ips {
            let subnet = self.subnet_by_id(&f.subnet_id)?;
            let needed_by_route = routes
                .iter()
                .any(|r| r.nexthop.parse().is_ok_and(|hop| subnet.as_ref().is_some_and(|s| s.cidr.contains(hop))));
            if needed_by_route {
                return Err(NetworkError::RouterInterfaceInUseByRoute {
                    router_id: router_id.into(),
                    subnet_id: f.subnet_id.clone(),
                }
                .into());
            }
            let in_use = self.floating_ips()?.into_iter().any(|fip| {
                fip.router_id.as_deref() == Some(router_id)
                    && fip.fixed_ip_address.is_some_and(|ip| subnet.as_ref().is_some_and(|s| s.cidr.contains(ip)))
            });
            if in_use {
                return Err(NetworkError::RouterInterfaceInUseByFloatingIp {
                    router_id: router_id.into(),
                    subnet_id: f.subnet_id.clone(),
                }
                .into());
            }
        }
        tx.execute("DELETE FROM ports WHERE id = ?1", [&port.id])?;
        tx.execute(
            "UPDATE routers SET revision_number = revision_number + 1, updated_at = ?2 WHERE id = ?1",
            params![router_id, now()],
        )?;
        tx.commit()?;
        Ok(port)
    }

    /// Deletes a router: `RouterInUse` while it has interfaces; its gateway port goes with it.
    pub fn delete_router(&self, id: &str) -> Result<()> {
        let tx = self.begin()?;
        let r = self.require_router(id)?;
        if !self.router_interfaces(id)?.is_empty() {
            return Err(NetworkError::RouterInUse(id.to_string()).into());
        }
        tx.execute("UPDATE floatingips SET router_id = NULL WHERE router_id = ?1", [id])?;
        tx.execute("DELETE FROM routers WHERE id = ?1", [id])?;
        if let Some(p) = r.gateway.and_then(|g| g.port_id) {
            tx.execute("DELETE FROM ports WHERE id = ?1", [&p])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The external network `public` (`[network] public_cidr`, `public_bridge`), owned by the
    /// admin project: made once, by `init` and by every `up` (homes made before it existed).
    pub fn ensure_public_network(&self, config: &crate::config::Config) -> Result<Network> {
        let want = routers::PublicNetwork::from(config);
        let tx = self.begin()?;
        let admin = self.project_by_name("admin")?.ok_or_else(|| {
            crate::db::DbError::NotFound("the admin project does not exist yet; run `novabox init` first".into())
        })?;
        let existing = self
            .networks()?
            .into_iter()
            .find(|n| n.name == routers::PUBLIC_NETWORK && n.project_id == admin.id && n.external);
        let net = match existing {
            Some(n) => n,
            None => self.create_network(&want.network(&admin.id))?,
        };
        if net.subnets.is_empty() {
            self.create_subnet(&want.subnet(&net.id, &admin.id))?;
        }
        tx.commit()?;
        self.network_by_id(&net.id)?.ok_or_else(|| NetworkError::NetworkNotFound(net.id.clone()).into())
    }

    /// DevStack's `router1` for `init --devstack`: a router `name` of `project_id` with its
    /// gateway on `external_network_id` and an interface on `subnet_id`. Idempotent: an
    /// existing router of that name and project is completed, not duplicated. The caller
    /// tells the router host afterwards (`conductor::routers::push_routers`), or `up` does.
    pub fn create_with_gateway_and_interface(
        &self,
        project_id: &str,
        name: &str,
        external_network_id: &str,
        subnet_id: &str,
    ) -> Result<Router> {
        let tx = self.begin()?;
        let existing = self.routers()?.into_iter().find(|r| r.project_id == project_id && r.name == name);
        let gateway =
            GatewayRequest { network_id: external_network_id.to_string(), enable_snat: true, fixed_ips: Vec::new() };
        let router = match existing {
            Some(r) if r.gateway.is_some() => r,
            Some(r) => self.set_router_gateway(&r.id, Some(&gateway))?,
            None => {
                let mut r = Router::new(project_id);
                r.name = name.to_string();
                self.create_router(&r, Some(&gateway))?
            }
        };
        let has_interface =
            self.router_interfaces(&router.id)?.iter().any(|p| p.fixed_ips.iter().any(|f| f.subnet_id == subnet_id));
        if !has_interface {
            self.add_router_interface_subnet(&router.id, subnet_id, project_id)?;
        }
        tx.commit()?;
        self.require_router(&router.id)
    }

    /// Before a subnet (or a network) is deleted: when nothing but the network's DHCP port
    /// holds an address of it, the DHCP port lets go of them, and goes when it holds no other.
    /// Anything else holding an address still makes the delete `SubnetInUse` (`NetworkInUse`).
    pub(super) fn release_dhcp_allocations(&self, subnet_id: Option<&str>, network_id: Option<&str>) -> Result<()> {
        let (scope, key) = match (subnet_id, network_id) {
            (Some(s), _) => ("a.subnet_id = ?1", s),
            (None, Some(n)) => ("p.network_id = ?1", n),
            (None, None) => return Ok(()),
        };
        let others: i64 = self.conn().query_row(
            &format!(
                "SELECT count(*) FROM ports p LEFT JOIN ip_allocations a ON a.port_id = p.id
                  WHERE {scope} AND p.device_owner != '{OWNER_DHCP}'"
            ),
            [key],
            |r| r.get(0),
        )?;
        if others > 0 {
            return Ok(());
        }
        let dhcp: Vec<String> = {
            let mut stmt = self.conn().prepare(&format!(
                "SELECT DISTINCT p.id FROM ports p LEFT JOIN ip_allocations a ON a.port_id = p.id
                  WHERE {scope} AND p.device_owner = '{OWNER_DHCP}'"
            ))?;
            let rows = stmt.query_map([key], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for port in dhcp {
            if let Some(s) = subnet_id {
                self.conn()
                    .execute("DELETE FROM ip_allocations WHERE port_id = ?1 AND subnet_id = ?2", params![port, s])?;
            }
            let left: i64 =
                self.conn()
                    .query_row("SELECT count(*) FROM ip_allocations WHERE port_id = ?1", [&port], |r| r.get(0))?;
            if left == 0 || network_id.is_some() {
                self.conn().execute("DELETE FROM ports WHERE id = ?1", [&port])?;
            }
        }
        Ok(())
    }

    /// How many routers a project has (its `router` quota's use).
    pub fn count_routers(&self, project_id: &str) -> Result<i64> {
        Ok(self.conn().query_row("SELECT count(*) FROM routers WHERE project_id = ?1", [project_id], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::db::{Db, DbError, OpenOptions};
    use crate::network::NetworkError;

    #[test]
    fn devstacks_router1_is_made_once_with_its_gateway_and_interface() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        db.ensure_project("admin", "").unwrap();
        let config = Config::default();
        let private = db.ensure_default_network(&config).unwrap();
        let public = db.ensure_public_network(&config).unwrap();
        let subnet = private.subnets[0].clone();
        let a = db.create_with_gateway_and_interface("demo", "router1", &public.id, &subnet).unwrap();
        let b = db.create_with_gateway_and_interface("demo", "router1", &public.id, &subnet).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(db.routers().unwrap().len(), 1);
        let gw = b.gateway.expect("a gateway");
        assert_eq!((gw.network_id.as_str(), gw.external_fixed_ips.len()), (public.id.as_str(), 1));
        let ifaces = db.router_interfaces(&b.id).unwrap();
        assert_eq!(ifaces.len(), 1);
        assert_eq!(ifaces[0].fixed_ips[0].ip_address.to_string(), "10.42.0.1");
        let s = db.subnet_by_id(&subnet).unwrap().unwrap();
        let host = db.host_address(&s).unwrap().expect("the host moves off the gateway");
        assert_ne!(host.to_string(), "10.42.0.1");
        assert!(matches!(db.delete_router(&b.id), Err(DbError::Network(NetworkError::RouterInUse(_)))));
        // A failed interface (the gateway is taken) leaves no port behind.
        let before = db.ports().unwrap().len();
        let other = db.create_with_gateway_and_interface("alt", "router1", &public.id, &subnet).unwrap_err();
        assert!(matches!(other, DbError::Network(NetworkError::IpAddressAlreadyAllocated { .. })), "{other}");
        assert_eq!(db.ports().unwrap().len(), before, "the refused request wrote nothing");
        assert_eq!(db.routers().unwrap().len(), 1);
    }
}
