//! Networks: their rows, and the default network every project boots on.

use rusqlite::{params, Row};

use super::new_id;
use crate::config::Config;
use crate::db::{now, Db, DbError, Result};
use crate::network::model::*;
use crate::network::provider::{NetworkType, Provider};
use crate::network::{DefaultNetwork, NetworkError};

const NETWORK_COLUMNS: &str = "id, name, project_id, description, shared, external, admin_state_up, status, mtu, \
                               port_security_enabled, bridge, revision_number, created_at, updated_at, \
                               network_type, physical_network, vlan";

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
        provider: provider_from_row(r.get(14)?, r.get(15)?, r.get(16)?),
        updated_at: updated_at.unwrap_or_else(|| created_at.clone()),
        created_at,
        subnets: Vec::new(),
    })
}

/// A provider segment from its columns; a row of a type this build does not know is shown as
/// an ordinary network rather than failing every list.
fn provider_from_row(kind: Option<String>, physnet: Option<String>, vlan: Option<i64>) -> Option<Provider> {
    let network_type = match kind.as_deref()? {
        "flat" => NetworkType::Flat,
        "vlan" => NetworkType::Vlan,
        _ => return None,
    };
    Some(Provider {
        network_type,
        physical_network: physnet?,
        segmentation_id: vlan.and_then(|v| u16::try_from(v).ok()),
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

    /// Creates a network; `subnets` in `net` is ignored. A provider segment is checked against
    /// the segments of the other networks (`FlatNetworkInUse`, `VlanIdInUse`), and a VLAN
    /// network asking for no id gets the lowest free one of its physical network.
    pub fn create_network(&self, net: &Network) -> Result<Network> {
        let id = if net.id.is_empty() { new_id() } else { net.id.clone() };
        let ts = now();
        let provider = net.provider.as_ref().map(|p| self.claim_segment(p)).transpose()?;
        self.conn().execute(
            "INSERT INTO networks (id, name, project_id, description, shared, external, admin_state_up, status, mtu,
                                   port_security_enabled, bridge, revision_number, created_at, updated_at,
                                   network_type, physical_network, vlan)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1, ?12, ?12, ?13, ?14, ?15)",
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
                ts,
                provider.as_ref().map(|p| p.network_type.as_str()),
                provider.as_ref().map(|p| p.physical_network.as_str()),
                provider.as_ref().and_then(|p| p.segmentation_id),
            ],
        )?;
        self.network_by_id(&id)?.ok_or_else(|| NetworkError::NetworkNotFound(id).into())
    }

    /// `want` with its VLAN id filled in, when no other network has that segment.
    fn claim_segment(&self, want: &Provider) -> Result<Provider> {
        let mut stmt = self.conn().prepare(
            "SELECT network_type, vlan FROM networks WHERE physical_network = ?1 AND network_type IS NOT NULL",
        )?;
        let taken = stmt
            .query_map([&want.physical_network], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let vlans: Vec<u16> = taken.iter().filter_map(|(_, v)| v.and_then(|v| u16::try_from(v).ok())).collect();
        match (want.network_type, want.segmentation_id) {
            (NetworkType::Flat, _) if taken.iter().any(|(kind, _)| kind == "flat") => {
                Err(NetworkError::FlatNetworkInUse(want.physical_network.clone()).into())
            }
            (NetworkType::Flat, _) => Ok(want.clone()),
            (NetworkType::Vlan, Some(vid)) if vlans.contains(&vid) => {
                Err(NetworkError::VlanIdInUse { vlan_id: vid, physical_network: want.physical_network.clone() }.into())
            }
            (NetworkType::Vlan, Some(_)) => Ok(want.clone()),
            (NetworkType::Vlan, None) => {
                let vid = crate::network::provider::free_vlan(&vlans).ok_or(NetworkError::NoNetworkAvailable)?;
                Ok(Provider { segmentation_id: Some(vid), ..want.clone() })
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::OpenOptions;

    fn provider(kind: NetworkType, physnet: &str, vlan: Option<u16>) -> Network {
        Network {
            provider: Some(Provider { network_type: kind, physical_network: physnet.into(), segmentation_id: vlan }),
            ..Network::new("p", "admin")
        }
    }

    #[test]
    fn a_physical_network_carries_one_flat_network_and_each_vlan_once() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        let flat = db.create_network(&provider(NetworkType::Flat, "physnet1", None)).unwrap();
        assert_eq!(flat.provider.as_ref().map(|p| p.network_type), Some(NetworkType::Flat));
        let err = db.create_network(&provider(NetworkType::Flat, "physnet1", None)).unwrap_err();
        assert!(matches!(err, DbError::Network(NetworkError::FlatNetworkInUse(ref p)) if p == "physnet1"), "{err}");
        db.create_network(&provider(NetworkType::Flat, "physnet2", None)).unwrap();

        let v = db.create_network(&provider(NetworkType::Vlan, "physnet1", Some(100))).unwrap();
        assert_eq!(v.provider.unwrap().segmentation_id, Some(100));
        let err = db.create_network(&provider(NetworkType::Vlan, "physnet1", Some(100))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Unable to create the network. The VLAN 100 on physical network physnet1 is in use."
        );
        db.create_network(&provider(NetworkType::Vlan, "physnet2", Some(100))).unwrap();
        db.create_network(&provider(NetworkType::Vlan, "physnet1", Some(1))).unwrap();
        let auto = db.create_network(&provider(NetworkType::Vlan, "physnet1", None)).unwrap();
        assert_eq!(auto.provider.unwrap().segmentation_id, Some(2), "the lowest free id");
        assert_eq!(db.create_network(&Network::new("plain", "admin")).unwrap().provider, None);

        // The index holds even for a writer that skips the check.
        let dup = db.conn().execute(
            "INSERT INTO networks (id, name, project_id, created_at, network_type, physical_network, vlan)
             VALUES ('x', 'x', 'admin', 'now', 'vlan', 'physnet1', 100)",
            [],
        );
        assert!(dup.is_err(), "{dup:?}");
    }
}
