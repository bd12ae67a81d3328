//! Subnets: their rows, with allocation pools, DNS servers and host routes as JSON.

use rusqlite::{params, OptionalExtension, Row};

use super::{json_text, new_id};
use crate::db::{now, Db, Result};
use crate::network::ipam::Pool;
use crate::network::model::*;
use crate::network::NetworkError;

const SUBNET_COLUMNS: &str = "id, network_id, name, project_id, description, cidr, gateway_ip, enable_dhcp, \
                              allocation_start, allocation_end, allocation_pools, dns_nameservers, host_routes, \
                              revision_number, created_at, updated_at";

fn text_err(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
}

fn subnet_from_row(r: &Row<'_>) -> rusqlite::Result<Subnet> {
    let cidr: String = r.get(5)?;
    let gateway: Option<String> = r.get(6)?;
    let start: String = r.get(8)?;
    let end: String = r.get(9)?;
    let pools: String = r.get(10)?;
    let dns: String = r.get(11)?;
    let routes: String = r.get(12)?;
    let mut allocation_pools: Vec<Pool> = serde_json::from_str(&pools).map_err(|e| text_err(10, e))?;
    if allocation_pools.is_empty() {
        // Rows from schema v1 keep their one pool in allocation_start/allocation_end.
        allocation_pools.push(Pool {
            start: start.parse().map_err(|e| text_err(8, e))?,
            end: end.parse().map_err(|e| text_err(9, e))?,
        });
    }
    let created_at: String = r.get(14)?;
    let updated_at: Option<String> = r.get(15)?;
    Ok(Subnet {
        id: r.get(0)?,
        network_id: r.get(1)?,
        name: r.get(2)?,
        project_id: r.get(3)?,
        description: r.get(4)?,
        cidr: cidr.parse().map_err(|e| text_err(5, e))?,
        gateway_ip: gateway.map(|g| g.parse()).transpose().map_err(|e| text_err(6, e))?,
        enable_dhcp: r.get(7)?,
        allocation_pools,
        dns_nameservers: serde_json::from_str(&dns).map_err(|e| text_err(11, e))?,
        host_routes: serde_json::from_str(&routes).map_err(|e| text_err(12, e))?,
        revision_number: r.get(13)?,
        updated_at: updated_at.unwrap_or_else(|| created_at.clone()),
        created_at,
    })
}

impl Db {
    pub fn subnets(&self) -> Result<Vec<Subnet>> {
        let mut stmt = self.conn().prepare(&format!("SELECT {SUBNET_COLUMNS} FROM subnets ORDER BY created_at, id"))?;
        let subnets = stmt.query_map([], subnet_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(subnets)
    }

    pub fn subnet_by_id(&self, id: &str) -> Result<Option<Subnet>> {
        Ok(self
            .conn()
            .query_row(&format!("SELECT {SUBNET_COLUMNS} FROM subnets WHERE id = ?1"), [id], subnet_from_row)
            .optional()?)
    }

    pub fn subnets_of(&self, network_id: &str) -> Result<Vec<Subnet>> {
        Ok(self.subnets()?.into_iter().filter(|s| s.network_id == network_id).collect())
    }

    /// Creates a subnet. Checks that the network exists and that the CIDR overlaps none of its
    /// other subnets (`SubnetOverlap` otherwise); the pools are the caller's to validate.
    pub fn create_subnet(&self, s: &NewSubnet) -> Result<Subnet> {
        let tx = self.begin()?;
        let net: Option<String> =
            tx.query_row("SELECT id FROM networks WHERE id = ?1", [&s.network_id], |r| r.get(0)).optional()?;
        if net.is_none() {
            return Err(NetworkError::NetworkNotFound(s.network_id.clone()).into());
        }
        for other in self.subnets_of(&s.network_id)? {
            if other.cidr.overlaps(&s.cidr) {
                return Err(
                    NetworkError::SubnetOverlap { cidr: s.cidr.to_string(), network_id: s.network_id.clone() }.into()
                );
            }
        }
        let id = new_id();
        let (start, end) =
            s.allocation_pools.first().map(|p| (p.start, p.end)).unwrap_or((s.cidr.network(), s.cidr.network()));
        tx.execute(
            "INSERT INTO subnets (id, network_id, name, project_id, description, cidr, ip_version, gateway_ip,
                                  enable_dhcp, allocation_start, allocation_end, allocation_pools, dns_nameservers,
                                  host_routes, revision_number, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 4, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 0, ?14, ?14)",
            params![
                id,
                s.network_id,
                s.name,
                s.project_id,
                s.description,
                s.cidr.to_string(),
                s.gateway_ip.map(|g| g.to_string()),
                s.enable_dhcp,
                start.to_string(),
                end.to_string(),
                json_text(&s.allocation_pools),
                json_text(&s.dns_nameservers),
                json_text(&s.host_routes),
                now()
            ],
        )?;
        tx.commit()?;
        self.subnet_by_id(&id)?.ok_or_else(|| NetworkError::SubnetNotFound(id).into())
    }

    /// Writes back name, description, enable_dhcp, dns_nameservers and host_routes.
    pub fn save_subnet(&self, s: &Subnet) -> Result<Subnet> {
        let n = self.conn().execute(
            "UPDATE subnets SET name = ?2, description = ?3, enable_dhcp = ?4, dns_nameservers = ?5, host_routes = ?6,
                    revision_number = revision_number + 1, updated_at = ?7
             WHERE id = ?1",
            params![
                s.id,
                s.name,
                s.description,
                s.enable_dhcp,
                json_text(&s.dns_nameservers),
                json_text(&s.host_routes),
                now()
            ],
        )?;
        if n == 0 {
            return Err(NetworkError::SubnetNotFound(s.id.clone()).into());
        }
        self.subnet_by_id(&s.id)?.ok_or_else(|| NetworkError::SubnetNotFound(s.id.clone()).into())
    }

    /// `SubnetInUse` while any port holds an address from it.
    pub fn delete_subnet(&self, id: &str) -> Result<()> {
        let tx = self.begin()?;
        // The network's DHCP port (issue 19) goes with the subnet, as neutron's does.
        self.release_dhcp_allocations(Some(id), None)?;
        let used: i64 = tx.query_row("SELECT count(*) FROM ip_allocations WHERE subnet_id = ?1", [id], |r| r.get(0))?;
        if used > 0 {
            return Err(NetworkError::SubnetInUse(id.to_string()).into());
        }
        if tx.execute("DELETE FROM subnets WHERE id = ?1", [id])? == 0 {
            return Err(NetworkError::SubnetNotFound(id.to_string()).into());
        }
        tx.commit()?;
        Ok(())
    }
}
