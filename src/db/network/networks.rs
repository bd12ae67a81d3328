//! Networks: their rows, and the default network every project boots on.

use rusqlite::{params, Row};

use super::new_id;
use crate::config::Config;
use crate::db::{now, Db, DbError, Result};
use crate::network::model::*;
use crate::network::{DefaultNetwork, NetworkError};

const NETWORK_COLUMNS: &str = "id, name, project_id, description, shared, external, admin_state_up, status, mtu, \
                               port_security_enabled, bridge, revision_number, created_at, updated_at";

fn network_from_row(r: &Row<'_>) -> rusqlite::Result<Network> {
    let created_at: String = r.get(12)?;
    let updated_at: Option<String> = r.get(13)?;
    Ok(Network {
        id: r.get(0)?,
        name: r.get(1)?,
        project_id: r.get(2)?,
        description: r.get(3)?,
        shared: r.get(4)?,
        external: r.get(5)?,
        admin_state_up: r.get(6)?,
        status: r.get(7)?,
        mtu: r.get(8)?,
        port_security_enabled: r.get(9)?,
        bridge: r.get(10)?,
        revision_number: r.get(11)?,
        updated_at: updated_at.unwrap_or_else(|| created_at.clone()),
        created_at,
        subnets: Vec::new(),
    })
}

impl Db {
    pub fn networks(&self) -> Result<Vec<Network>> {
        let mut stmt =
            self.conn().prepare(&format!("SELECT {NETWORK_COLUMNS} FROM networks ORDER BY created_at, id"))?;
        let mut nets = stmt.query_map([], network_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        let mut subs = self.conn().prepare("SELECT id FROM subnets WHERE network_id = ?1 ORDER BY created_at, id")?;
        for n in &mut nets {
            n.subnets = subs.query_map([&n.id], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
        }
        Ok(nets)
    }

    pub fn network_by_id(&self, id: &str) -> Result<Option<Network>> {
        Ok(self.networks()?.into_iter().find(|n| n.id == id))
    }

    /// The oldest network called `name` (names are not unique in neutron; novabox's own
    /// `private` is created first).
    pub fn network_by_name(&self, name: &str) -> Result<Option<Network>> {
        Ok(self.networks()?.into_iter().find(|n| n.name == name))
    }

    /// Creates a network; `subnets` in `net` is ignored.
    pub fn create_network(&self, net: &Network) -> Result<Network> {
        let id = if net.id.is_empty() { new_id() } else { net.id.clone() };
        let ts = now();
        self.conn().execute(
            "INSERT INTO networks (id, name, project_id, description, shared, external, admin_state_up, status, mtu,
                                   port_security_enabled, bridge, revision_number, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1, ?12, ?12)",
            params![
                id,
                net.name,
                net.project_id,
                net.description,
                net.shared,
                net.external,
                net.admin_state_up,
                net.status,
                net.mtu,
                net.port_security_enabled,
                net.bridge,
                ts
            ],
        )?;
        self.network_by_id(&id)?.ok_or_else(|| NetworkError::NetworkNotFound(id).into())
    }

    /// Writes back the changeable attributes and bumps the revision.
    pub fn save_network(&self, net: &Network) -> Result<Network> {
        let n = self.conn().execute(
            "UPDATE networks SET name = ?2, description = ?3, shared = ?4, external = ?5, admin_state_up = ?6,
                    mtu = ?7, port_security_enabled = ?8, revision_number = revision_number + 1, updated_at = ?9
             WHERE id = ?1",
            params![
                net.id,
                net.name,
                net.description,
                net.shared,
                net.external,
                net.admin_state_up,
                net.mtu,
                net.port_security_enabled,
                now()
            ],
        )?;
        if n == 0 {
            return Err(NetworkError::NetworkNotFound(net.id.clone()).into());
        }
        self.network_by_id(&net.id)?.ok_or_else(|| NetworkError::NetworkNotFound(net.id.clone()).into())
    }

    /// Deletes a network and its subnets; `NetworkInUse` while any port is on it.
    pub fn delete_network(&self, id: &str) -> Result<()> {
        let tx = self.begin()?;
        // The network's DHCP port (issue 19) goes with the network, as neutron's does.
        self.release_dhcp_allocations(None, Some(id))?;
        let ports: i64 = tx.query_row("SELECT count(*) FROM ports WHERE network_id = ?1", [id], |r| r.get(0))?;
        if ports > 0 {
            return Err(NetworkError::NetworkInUse(id.to_string()).into());
        }
        if tx.execute("DELETE FROM networks WHERE id = ?1", [id])? == 0 {
            return Err(NetworkError::NetworkNotFound(id.to_string()).into());
        }
        tx.commit()?;
        Ok(())
    }

    /// The default network `[network]` asks for (see [`DefaultNetwork`]), owned by the `admin`
    /// project. Created once; later calls return it. `init` calls this; the boot path may too.
    pub fn ensure_default_network(&self, config: &Config) -> Result<Network> {
        // One transaction with the write lock taken first: two boots racing (or a kill
        // between network and subnet) must not leave two default networks or one without
        // its subnet.
        let tx = self.begin()?;
        let net = self.ensure_default_network_locked(&DefaultNetwork::from(config))?;
        tx.commit()?;
        Ok(net)
    }

    fn ensure_default_network_locked(&self, want: &DefaultNetwork) -> Result<Network> {
        let admin = self.project_by_name("admin")?.ok_or_else(|| {
            DbError::NotFound("the admin project does not exist yet; run `novabox init` first".into())
        })?;
        let existing = self.networks()?.into_iter().find(|n| n.name == DEFAULT_NETWORK && n.project_id == admin.id);
        let net = match existing {
            Some(n) => n,
            None => self.create_network(&want.network(&admin.id))?,
        };
        if net.subnets.is_empty() {
            self.create_subnet(&want.subnet(&net.id, &admin.id))?;
            return self.network_by_id(&net.id)?.ok_or_else(|| NetworkError::NetworkNotFound(net.id.clone()).into());
        }
        Ok(net)
    }
}
