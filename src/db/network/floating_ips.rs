//! Floating IPs: their rows, the external network's port that holds each address, and the
//! association with an internal port's fixed IP through a router.

use std::net::Ipv4Addr;

use rusqlite::{params, Row};

use super::new_id;
use crate::db::{now, Db, Result};
use crate::network::model::*;
use crate::network::routers::{self, FloatingIp, OWNER_FLOATINGIP};
use crate::network::NetworkError;

const FIP_COLUMNS: &str = "id, project_id, description, floating_network_id, floating_port_id, floating_ip_address, \
                           port_id, fixed_ip_address, router_id, revision_number, created_at, updated_at";

fn parse_ip(idx: usize, s: String) -> rusqlite::Result<Ipv4Addr> {
    s.parse().map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e)))
}

fn fip_from_row(r: &Row<'_>) -> rusqlite::Result<FloatingIp> {
    let fixed: Option<String> = r.get(7)?;
    let created_at: String = r.get(10)?;
    let updated_at: Option<String> = r.get(11)?;
    Ok(FloatingIp {
        id: r.get(0)?,
        project_id: r.get(1)?,
        description: r.get(2)?,
        floating_network_id: r.get(3)?,
        floating_port_id: r.get(4)?,
        floating_ip_address: parse_ip(5, r.get(5)?)?,
        port_id: r.get(6)?,
        fixed_ip_address: fixed.map(|f| parse_ip(7, f)).transpose()?,
        router_id: r.get(8)?,
        revision_number: r.get(9)?,
        updated_at: updated_at.unwrap_or_else(|| created_at.clone()),
        created_at,
    })
}

/// What a floating IP is to be associated with: an internal port and one of its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Association {
    pub port_id: String,
    pub fixed_ip: Option<Ipv4Addr>,
}

impl Db {
    pub fn floating_ips(&self) -> Result<Vec<FloatingIp>> {
        let mut stmt =
            self.conn().prepare(&format!("SELECT {FIP_COLUMNS} FROM floatingips ORDER BY created_at, id"))?;
        let out = stmt.query_map([], fip_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(out)
    }

    pub fn floating_ip_by_id(&self, id: &str) -> Result<Option<FloatingIp>> {
        Ok(self.floating_ips()?.into_iter().find(|f| f.id == id))
    }

    /// Creates a floating IP of `project_id` on the external network, with the address asked
    /// for or the next free one, associated when `assoc` says so; one transaction.
    pub fn create_floating_ip(
        &self,
        project_id: &str,
        network_id: &str,
        address: Option<Ipv4Addr>,
        subnet_id: Option<&str>,
        description: &str,
        assoc: Option<&Association>,
    ) -> Result<FloatingIp> {
        let tx = self.begin()?;
        let net = self.network_by_id(network_id)?.ok_or_else(|| NetworkError::NetworkNotFound(network_id.into()))?;
        if !net.external {
            return Err(NetworkError::BadRequest {
                resource: "floatingip",
                msg: format!("Network {network_id} is not a valid external network"),
            }
            .into());
        }
        let id = new_id();
        let want = if address.is_some() || subnet_id.is_some() {
            vec![FixedIpRequest { subnet_id: subnet_id.map(str::to_string), ip_address: address }]
        } else {
            Vec::new()
        };
        let port = self.allocate_port(&NewPort {
            network_id: network_id.to_string(),
            // neutron's floating IP port belongs to no project.
            project_id: String::new(),
            device_id: id.clone(),
            device_owner: OWNER_FLOATINGIP.into(),
            fixed_ips: want,
            port_security_enabled: Some(false),
            ..NewPort::default()
        })?;
        let ip = port
            .fixed_ips
            .first()
            .map(|f| f.ip_address)
            .ok_or_else(|| NetworkError::IpAddressGenerationFailure { network_id: network_id.to_string() })?;
        tx.execute(
            "INSERT INTO floatingips (id, project_id, description, floating_network_id, floating_port_id,
                                      floating_ip_address, revision_number, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?7)",
            params![id, project_id, description, network_id, port.id, ip.to_string(), now()],
        )?;
        if let Some(a) = assoc {
            self.associate_floating_ip(&id, Some(a), None)?;
        }
        tx.commit()?;
        self.floating_ip_by_id(&id)?.ok_or_else(|| NetworkError::FloatingIpNotFound(id).into())
    }

    /// Associates the floating IP with a port's fixed IP (through the router that joins that
    /// subnet to the floating IP's network), or with `None` disassociates it. `description`
    /// is written when given.
    pub fn associate_floating_ip(
        &self,
        id: &str,
        assoc: Option<&Association>,
        description: Option<&str>,
    ) -> Result<FloatingIp> {
        let tx = self.begin()?;
        let fip = self.floating_ip_by_id(id)?.ok_or_else(|| NetworkError::FloatingIpNotFound(id.into()))?;
        let (port_id, fixed, router_id) = match assoc {
            None => (None, None, None),
            Some(a) => {
                let port = self.port_by_id(&a.port_id)?.ok_or_else(|| NetworkError::PortNotFound(a.port_id.clone()))?;
                let fixed = routers::choose_fixed_ip(&port, a.fixed_ip)?;
                let routers_now = self.routers_with_subnets()?;
                let router = routers::router_for_floating_ip(&fip.floating_network_id, &port, &fixed, &routers_now)?;
                let taken = self.floating_ips()?.into_iter().find(|o| {
                    o.id != fip.id
                        && o.floating_network_id == fip.floating_network_id
                        && o.port_id.as_deref() == Some(port.id.as_str())
                        && o.fixed_ip_address == Some(fixed.ip_address)
                });
                if let Some(o) = taken {
                    return Err(NetworkError::FloatingIpPortAlreadyAssociated {
                        floating_ip_address: fip.floating_ip_address,
                        fip_id: fip.id.clone(),
                        port_id: port.id.clone(),
                        fixed_ip: fixed.ip_address,
                        net_id: o.floating_network_id,
                    }
                    .into());
                }
                (Some(port.id), Some(fixed.ip_address.to_string()), Some(router.id.clone()))
            }
        };
        tx.execute(
            "UPDATE floatingips SET port_id = ?2, fixed_ip_address = ?3, router_id = ?4,
                    description = coalesce(?5, description), revision_number = revision_number + 1, updated_at = ?6
             WHERE id = ?1",
            params![id, port_id, fixed, router_id, description, now()],
        )?;
        tx.commit()?;
        self.floating_ip_by_id(id)?.ok_or_else(|| NetworkError::FloatingIpNotFound(id.into()).into())
    }

    /// Writes a new description only.
    pub fn describe_floating_ip(&self, id: &str, description: &str) -> Result<FloatingIp> {
        let n = self.conn().execute(
            "UPDATE floatingips SET description = ?2, revision_number = revision_number + 1, updated_at = ?3
             WHERE id = ?1",
            params![id, description, now()],
        )?;
        if n == 0 {
            return Err(NetworkError::FloatingIpNotFound(id.into()).into());
        }
        self.floating_ip_by_id(id)?.ok_or_else(|| NetworkError::FloatingIpNotFound(id.into()).into())
    }

    /// Deletes the floating IP and the external port that held its address.
    pub fn delete_floating_ip(&self, id: &str) -> Result<()> {
        let tx = self.begin()?;
        let fip = self.floating_ip_by_id(id)?.ok_or_else(|| NetworkError::FloatingIpNotFound(id.into()))?;
        tx.execute("DELETE FROM floatingips WHERE id = ?1", [id])?;
        tx.execute("DELETE FROM ports WHERE id = ?1", [&fip.floating_port_id])?;
        tx.commit()?;
        Ok(())
    }

    /// The floating IPs mapped to an instance's ports: (port id, floating address, fixed).
    pub fn floating_ips_of_ports(&self, port_ids: &[String]) -> Result<Vec<FloatingIp>> {
        Ok(self
            .floating_ips()?
            .into_iter()
            .filter(|f| f.port_id.as_ref().is_some_and(|p| port_ids.contains(p)))
            .collect())
    }

    pub fn count_floating_ips(&self, project_id: &str) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM floatingips WHERE project_id = ?1", [project_id], |r| r.get(0))?)
    }
}
