//! Ports with their addresses and security groups; binding them to instances.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use rusqlite::{params, OptionalExtension, Row};

use super::new_id;
use crate::db::{now, Conn, Db, Result};
use crate::network::model::*;
use crate::network::{ports, NetworkError};

const PORT_COLUMNS: &str = "p.id, p.network_id, n.name, p.project_id, p.name, p.description, p.mac_address, \
                            p.device_id, p.device_owner, p.status, p.admin_state_up, p.port_security_enabled, \
                            p.binding_host, p.tap_name, p.revision_number, p.created_at, p.updated_at";

/// The condition for "a port of instance `?1`": it names the instance as its device and
/// belongs to the instance's project (as [`Db::instance_ports`], for unjoined statements).
const OWN_PORT: &str = "device_id = ?1 AND project_id = (SELECT i.project_id FROM instances i WHERE i.uuid = ?1)";

fn port_from_row(r: &Row<'_>) -> rusqlite::Result<Port> {
    let created_at: String = r.get(15)?;
    let updated_at: Option<String> = r.get(16)?;
    Ok(Port {
        id: r.get(0)?,
        network_id: r.get(1)?,
        network_name: r.get(2)?,
        project_id: r.get(3)?,
        name: r.get(4)?,
        description: r.get(5)?,
        mac_address: r.get(6)?,
        device_id: r.get(7)?,
        device_owner: r.get(8)?,
        status: r.get(9)?,
        admin_state_up: r.get(10)?,
        port_security_enabled: r.get(11)?,
        binding_host: r.get(12)?,
        tap_name: r.get(13)?,
        revision_number: r.get(14)?,
        updated_at: updated_at.unwrap_or_else(|| created_at.clone()),
        created_at,
        fixed_ips: Vec::new(),
        security_groups: Vec::new(),
    })
}

impl Db {
    fn load_port_details(&self, ports: &mut [Port]) -> Result<()> {
        let mut ips = self.conn().prepare("SELECT subnet_id, ip_address FROM ip_allocations WHERE port_id = ?1")?;
        let mut sgs = self.conn().prepare(
            "SELECT security_group_id FROM port_security_groups WHERE port_id = ?1 ORDER BY security_group_id",
        )?;
        for p in ports.iter_mut() {
            let raw = ips
                .query_map([&p.id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            p.fixed_ips = raw
                .into_iter()
                .filter_map(|(subnet_id, ip)| ip.parse().ok().map(|ip_address| FixedIp { subnet_id, ip_address }))
                .collect();
            p.fixed_ips.sort_by_key(|f| u32::from(f.ip_address));
            p.security_groups = sgs.query_map([&p.id], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
        }
        Ok(())
    }

    fn query_ports(&self, filter: &str, param: &[&dyn rusqlite::ToSql]) -> Result<Vec<Port>> {
        let mut stmt = self.conn().prepare(&format!(
            "SELECT {PORT_COLUMNS} FROM ports p JOIN networks n ON n.id = p.network_id {filter}
             ORDER BY p.created_at, p.id"
        ))?;
        let mut ports = stmt.query_map(param, port_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        self.load_port_details(&mut ports)?;
        Ok(ports)
    }

    pub fn ports(&self) -> Result<Vec<Port>> {
        self.query_ports("", &[])
    }

    pub fn port_by_id(&self, id: &str) -> Result<Option<Port>> {
        Ok(self.query_ports("WHERE p.id = ?1", &[&id])?.pop())
    }

    /// The ports of one device (an instance uuid), oldest first.
    pub fn ports_for_device(&self, device_id: &str) -> Result<Vec<Port>> {
        self.query_ports("WHERE p.device_id = ?1", &[&device_id])
    }

    /// The ports of an instance: those naming it as their device *and* of its own project.
    /// A port of another project that names the instance (neutron lets a device_id be any
    /// string) is never the instance's: not in its `addresses`, not a NIC of its guest, not
    /// a way to its metadata.
    pub fn instance_ports(&self, instance_uuid: &str) -> Result<Vec<Port>> {
        self.query_ports(
            "WHERE p.device_id = ?1 AND p.project_id = (SELECT i.project_id FROM instances i WHERE i.uuid = ?1)",
            &[&instance_uuid],
        )
    }

    /// nova's add/removeSecurityGroup: the group joins (or leaves) the instance and every port
    /// it has, in one transaction; each port's revision goes up.
    pub fn change_instance_security_group(&self, instance_uuid: &str, group_id: &str, add: bool) -> Result<()> {
        let tx = self.begin()?;
        let ts = now();
        if add {
            tx.execute(
                "INSERT OR IGNORE INTO instance_security_groups (instance_uuid, security_group_id) VALUES (?1, ?2)",
                params![instance_uuid, group_id],
            )?;
            tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO port_security_groups (port_id, security_group_id)
                     SELECT id, ?2 FROM ports WHERE {OWN_PORT}"
                ),
                params![instance_uuid, group_id],
            )?;
        } else {
            tx.execute(
                "DELETE FROM instance_security_groups WHERE instance_uuid = ?1 AND security_group_id = ?2",
                params![instance_uuid, group_id],
            )?;
            tx.execute(
                &format!(
                    "DELETE FROM port_security_groups WHERE security_group_id = ?2
                       AND port_id IN (SELECT id FROM ports WHERE {OWN_PORT})"
                ),
                params![instance_uuid, group_id],
            )?;
        }
        tx.execute(
            &format!("UPDATE ports SET revision_number = revision_number + 1, updated_at = ?2 WHERE {OWN_PORT}"),
            params![instance_uuid, ts],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The ports of one network, oldest first (what a DHCP server for it hands out).
    pub fn ports_on_network(&self, network_id: &str) -> Result<Vec<Port>> {
        self.query_ports("WHERE p.network_id = ?1", &[&network_id])
    }

    /// Deletes every port of `device_id` with its addresses; returns how many went.
    pub fn release_ports_for_device(&self, device_id: &str) -> Result<usize> {
        Ok(self.conn().execute("DELETE FROM ports WHERE device_id = ?1", [device_id])?)
    }

    /// Creates a port in one transaction: reads what is taken, lets `network::ports` decide
    /// the MAC and the addresses, and writes the row, its addresses and its security groups.
    /// `NetworkNotFound`, `MacAddressInUse`, the address errors of [`ports::plan`] and
    /// `SecurityGroupNotFound` refuse it; nothing is written then.
    pub fn allocate_port(&self, new: &NewPort) -> Result<Port> {
        let tx = self.begin()?;
        let net_security: Option<bool> = tx
            .query_row("SELECT port_security_enabled FROM networks WHERE id = ?1", [&new.network_id], |r| r.get(0))
            .optional()?;
        let Some(net_security) = net_security else {
            return Err(NetworkError::NetworkNotFound(new.network_id.clone()).into());
        };
        let subnets = self.subnets_of(&new.network_id)?;
        let mac = ports::choose_mac(&new.network_id, new.mac_address.as_deref(), |m| mac_taken(&tx, m))?;
        let mut used: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
        {
            let mut stmt = tx.prepare(
                "SELECT a.subnet_id, a.ip_address FROM ip_allocations a JOIN subnets s ON s.id = a.subnet_id
                 WHERE s.network_id = ?1",
            )?;
            let rows = stmt.query_map([&new.network_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (subnet_id, ip) = row?;
                if let Ok(ip) = ip.parse() {
                    used.entry(subnet_id).or_default().insert(ip);
                }
            }
        }
        let plan = ports::plan(new, net_security, &subnets, used)?;
        let port = self.insert_port(&tx, new, &mac, plan)?;
        tx.commit()?;
        Ok(port)
    }

    /// Writes a planned port, its addresses and its groups inside the caller's transaction.
    fn insert_port(&self, tx: &Conn, new: &NewPort, mac: &str, plan: ports::PortPlan) -> Result<Port> {
        let id = new_id();
        tx.execute(
            "INSERT INTO ports (id, network_id, project_id, name, description, mac_address, device_id, device_owner,
                                status, admin_state_up, port_security_enabled, binding_host, revision_number,
                                created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'DOWN', ?9, ?10, ?11, 1, ?12, ?12)",
            params![
                id,
                new.network_id,
                new.project_id,
                new.name,
                new.description,
                mac,
                new.device_id,
                new.device_owner,
                plan.admin_state_up,
                plan.port_security_enabled,
                new.binding_host,
                now()
            ],
        )?;
        for f in &plan.fixed_ips {
            tx.execute(
                "INSERT INTO ip_allocations (port_id, subnet_id, ip_address) VALUES (?1, ?2, ?3)",
                params![id, f.subnet_id, f.ip_address.to_string()],
            )?;
        }
        set_port_groups(tx, &id, &new.security_group_ids)?;
        self.port_by_id(&id)?.ok_or_else(|| NetworkError::PortNotFound(id).into())
    }

    /// Writes back name, description, admin_state_up, port_security_enabled, device_id,
    /// device_owner, binding host and the security groups; bumps the revision.
    pub fn save_port(&self, p: &Port) -> Result<Port> {
        let tx = self.begin()?;
        let n = tx.execute(
            "UPDATE ports SET name = ?2, description = ?3, admin_state_up = ?4, port_security_enabled = ?5,
                    device_id = ?6, device_owner = ?7, binding_host = ?8, status = ?9,
                    revision_number = revision_number + 1, updated_at = ?10
             WHERE id = ?1",
            params![
                p.id,
                p.name,
                p.description,
                p.admin_state_up,
                p.port_security_enabled,
                p.device_id,
                p.device_owner,
                p.binding_host,
                p.status,
                now()
            ],
        )?;
        if n == 0 {
            return Err(NetworkError::PortNotFound(p.id.clone()).into());
        }
        set_port_groups(&tx, &p.id, &p.security_groups)?;
        tx.commit()?;
        self.port_by_id(&p.id)?.ok_or_else(|| NetworkError::PortNotFound(p.id.clone()).into())
    }

    /// What a compute host reports once it has plugged (or unplugged) a port: the host, the
    /// tap device and the status (ACTIVE, DOWN).
    pub fn set_port_binding(
        &self,
        port_id: &str,
        host: Option<&str>,
        tap_name: Option<&str>,
        status: &str,
    ) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE ports SET binding_host = ?2, tap_name = ?3, status = ?4, revision_number = revision_number + 1,
                    updated_at = ?5
             WHERE id = ?1",
            params![port_id, host, tap_name, status, now()],
        )?;
        if n == 0 {
            return Err(NetworkError::PortNotFound(port_id.to_string()).into());
        }
        Ok(())
    }

    pub fn delete_port(&self, id: &str) -> Result<()> {
        if self.conn().execute("DELETE FROM ports WHERE id = ?1", [id])? == 0 {
            return Err(NetworkError::PortNotFound(id.to_string()).into());
        }
        Ok(())
    }
}

/// MACs are stored in lower case (`ports::choose_mac`), so the unique index answers this.
fn mac_taken(tx: &Conn, mac: &str) -> Result<bool> {
    Ok(tx.query_row("SELECT EXISTS (SELECT 1 FROM ports WHERE mac_address = lower(?1))", [mac], |r| r.get(0))?)
}

fn set_port_groups(tx: &Conn, port_id: &str, groups: &[String]) -> Result<()> {
    tx.execute("DELETE FROM port_security_groups WHERE port_id = ?1", [port_id])?;
    for g in groups {
        let exists: bool =
            tx.query_row("SELECT EXISTS (SELECT 1 FROM security_groups WHERE id = ?1)", [g], |r| r.get(0))?;
        if !exists {
            return Err(NetworkError::SecurityGroupNotFound(g.clone()).into());
        }
        tx.execute(
            "INSERT OR IGNORE INTO port_security_groups (port_id, security_group_id) VALUES (?1, ?2)",
            params![port_id, g],
        )?;
    }
    Ok(())
}

/// Ports and instances: binding a user's port to a server, and letting go of them all.
impl Db {
    /// Hands an existing, unbound port to an instance; it survives the instance's deletion.
    pub fn bind_port(&self, port_id: &str, device_id: &str, device_owner: &str, host: &str) -> Result<Port> {
        let n = self.conn().execute(
            "UPDATE ports SET device_id = ?2, device_owner = ?3, binding_host = ?4, preserve_on_delete = 1,
                revision_number = revision_number + 1, updated_at = ?5
             WHERE id = ?1 AND device_id = ''",
            params![port_id, device_id, device_owner, host, now()],
        )?;
        if n == 0 {
            return Err(NetworkError::PortNotFree(port_id.to_string()).into());
        }
        self.port_by_id(port_id)?.ok_or_else(|| NetworkError::PortNotFound(port_id.to_string()).into())
    }

    /// Deletes the ports novabox made for `device_id` and unbinds the ones a user brought.
    pub fn release_instance_ports(&self, device_id: &str) -> Result<()> {
        let tx = self.begin()?;
        // Only the instance's own project's ports: another project's port that merely names
        // it is neither deleted nor unbound by this instance's end.
        tx.execute(&format!("DELETE FROM ports WHERE {OWN_PORT} AND preserve_on_delete = 0"), [device_id])?;
        tx.execute(
            &format!(
                "UPDATE ports SET device_id = '', device_owner = '', binding_host = NULL, status = 'DOWN',
                    preserve_on_delete = 0, revision_number = revision_number + 1, updated_at = ?2
                 WHERE {OWN_PORT}"
            ),
            params![device_id, now()],
        )?;
        tx.commit()?;
        Ok(())
    }
}
