//! nova's host aggregates: rows, their hosts and their metadata. The rules (who may, which
//! availability zones may overlap) live in `api/compute/aggregates.rs`.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension, Row};

use super::{now, Db, DbError, Result};

/// The metadata key that makes an aggregate an availability zone.
pub const AZ_KEY: &str = "availability_zone";

/// An aggregate as stored, with its hosts (sorted) and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub id: i64,
    pub uuid: String,
    pub name: String,
    pub hosts: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: Option<String>,
}

impl Aggregate {
    /// The availability zone this aggregate defines, if it defines one.
    pub fn availability_zone(&self) -> Option<&str> {
        self.metadata.get(AZ_KEY).map(String::as_str)
    }
}

/// Where each compute host is: its aggregate's zone, or the default one (nova's
/// `default_availability_zone`, novabox's `[host] availability_zone`).
#[derive(Debug, Clone)]
pub struct Zones {
    by_host: BTreeMap<String, String>,
    default: String,
}

impl Zones {
    pub fn load(db: &Db, default: &str) -> Result<Zones> {
        Ok(Zones { by_host: db.host_availability_zones()?, default: default.to_string() })
    }

    pub fn of(&self, host: &str) -> &str {
        self.by_host.get(host).map_or(self.default.as_str(), String::as_str)
    }
}

const COLUMNS: &str = "id, uuid, name, created_at, updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Aggregate> {
    Ok(Aggregate {
        id: r.get(0)?,
        uuid: r.get(1)?,
        name: r.get(2)?,
        hosts: Vec::new(),
        metadata: BTreeMap::new(),
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

impl Db {
    /// Creates an aggregate, with `availability_zone` metadata when `az` is given. A name in
    /// use is a [`DbError::Conflict`].
    pub fn create_aggregate(&self, name: &str, az: Option<&str>) -> Result<Aggregate> {
        let uuid = uuid::Uuid::new_v4().to_string();
        let inserted = self.conn().execute(
            "INSERT INTO aggregates (uuid, name, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
            params![uuid, name, now()],
        )?;
        if inserted == 0 {
            return Err(DbError::Conflict(format!("Aggregate {name} already exists.")));
        }
        let agg =
            self.aggregate_by_uuid(&uuid)?.ok_or_else(|| DbError::NotFound(format!("aggregate {uuid} vanished")))?;
        if let Some(az) = az {
            self.set_aggregate_metadata(agg.id, &[(AZ_KEY.to_string(), Some(az.to_string()))])?;
        }
        self.aggregate(agg.id)?.ok_or_else(|| DbError::NotFound(format!("aggregate {uuid} vanished")))
    }

    /// One aggregate by its integer id.
    pub fn aggregate(&self, id: i64) -> Result<Option<Aggregate>> {
        let sql = format!("SELECT {COLUMNS} FROM aggregates WHERE id = ?1");
        let Some(mut a) = self.conn().query_row(&sql, [id], from_row).optional()? else { return Ok(None) };
        self.fill_aggregate(&mut a)?;
        Ok(Some(a))
    }

    fn aggregate_by_uuid(&self, uuid: &str) -> Result<Option<Aggregate>> {
        let sql = format!("SELECT {COLUMNS} FROM aggregates WHERE uuid = ?1");
        let Some(mut a) = self.conn().query_row(&sql, [uuid], from_row).optional()? else { return Ok(None) };
        self.fill_aggregate(&mut a)?;
        Ok(Some(a))
    }

    fn fill_aggregate(&self, a: &mut Aggregate) -> Result<()> {
        let mut stmt = self.conn().prepare("SELECT host FROM aggregate_hosts WHERE aggregate_id = ?1 ORDER BY host")?;
        a.hosts = stmt.query_map([a.id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        let mut stmt = self.conn().prepare("SELECT key, value FROM aggregate_metadata WHERE aggregate_id = ?1")?;
        a.metadata = stmt.query_map([a.id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        Ok(())
    }

    /// Every aggregate, oldest first.
    pub fn aggregates(&self) -> Result<Vec<Aggregate>> {
        let ids: Vec<i64> = {
            let mut stmt = self.conn().prepare("SELECT id FROM aggregates ORDER BY id")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(a) = self.aggregate(id)? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Renames an aggregate; a name another aggregate has is a [`DbError::Conflict`].
    pub fn rename_aggregate(&self, id: i64, name: &str) -> Result<()> {
        let taken: Option<i64> = self
            .conn()
            .query_row("SELECT id FROM aggregates WHERE name = ?1 AND id != ?2", params![name, id], |r| r.get(0))
            .optional()?;
        if taken.is_some() {
            return Err(DbError::Conflict(format!("Aggregate {name} already exists.")));
        }
        self.conn()
            .execute("UPDATE aggregates SET name = ?1, updated_at = ?2 WHERE id = ?3", params![name, now(), id])?;
        Ok(())
    }

    /// Sets (Some) or removes (None) metadata keys of an aggregate.
    pub fn set_aggregate_metadata(&self, id: i64, changes: &[(String, Option<String>)]) -> Result<()> {
        for (k, v) in changes {
            match v {
                Some(v) => self.conn().execute(
                    "INSERT INTO aggregate_metadata (aggregate_id, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (aggregate_id, key) DO UPDATE SET value = excluded.value",
                    params![id, k, v],
                )?,
                None => self
                    .conn()
                    .execute("DELETE FROM aggregate_metadata WHERE aggregate_id = ?1 AND key = ?2", params![id, k])?,
            };
        }
        self.conn().execute("UPDATE aggregates SET updated_at = ?1 WHERE id = ?2", params![now(), id])?;
        Ok(())
    }

    /// Adds a host; false when it was already a member.
    pub fn add_aggregate_host(&self, id: i64, host: &str) -> Result<bool> {
        let n = self.conn().execute(
            "INSERT INTO aggregate_hosts (aggregate_id, host) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![id, host],
        )?;
        Ok(n > 0)
    }

    /// Removes a host; false when it was not a member.
    pub fn remove_aggregate_host(&self, id: i64, host: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM aggregate_hosts WHERE aggregate_id = ?1 AND host = ?2", params![id, host])?;
        Ok(n > 0)
    }

    /// Deletes an aggregate with its hosts and metadata; false when there was none.
    pub fn delete_aggregate(&self, id: i64) -> Result<bool> {
        Ok(self.conn().execute("DELETE FROM aggregates WHERE id = ?1", [id])? > 0)
    }

    /// The availability zone of each host that is in an aggregate defining one. A host in
    /// several (nova forbids differing zones) gets the first by aggregate id.
    pub fn host_availability_zones(&self) -> Result<BTreeMap<String, String>> {
        let mut stmt = self.conn().prepare(
            "SELECT h.host, m.value FROM aggregate_hosts h
             JOIN aggregate_metadata m ON m.aggregate_id = h.aggregate_id AND m.key = ?1
             ORDER BY h.aggregate_id DESC",
        )?;
        let rows = stmt.query_map([AZ_KEY], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        // Later rows (lower ids) overwrite: the oldest aggregate wins.
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every availability zone some aggregate defines, hosts or not.
    pub fn aggregate_availability_zones(&self) -> Result<Vec<String>> {
        let mut stmt =
            self.conn().prepare("SELECT DISTINCT value FROM aggregate_metadata WHERE key = ?1 ORDER BY value")?;
        let rows = stmt.query_map([AZ_KEY], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The zones a server may ask for: those of enabled compute services (nova's
    /// `get_availability_zones(get_only_available=True)`).
    pub fn available_zones(&self, default: &str) -> Result<Vec<String>> {
        let zones = Zones::load(self, default)?;
        let mut out: Vec<String> = self
            .services()?
            .iter()
            .filter(|s| s.binary == crate::compute::BINARY && !s.disabled)
            .map(|s| zones.of(&s.host).to_string())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Records the zone an instance was placed in (nova's conductor does this after scheduling).
    pub fn set_instance_availability_zone(&self, uuid: &str, az: &str) -> Result<()> {
        self.conn().execute("UPDATE instances SET availability_zone = ?1 WHERE uuid = ?2", params![az, uuid])?;
        Ok(())
    }

    /// Takes back a placement (its request could not be placed whole): no host, no node.
    pub fn unschedule_instance(&self, uuid: &str) -> Result<()> {
        self.conn().execute("UPDATE instances SET host = NULL, node = NULL WHERE uuid = ?1", [uuid])?;
        Ok(())
    }

    /// Marks the servers of one multiple create with their shared reservation id.
    pub fn set_reservation_id(&self, uuid: &str, reservation_id: &str) -> Result<()> {
        self.conn()
            .execute("UPDATE instances SET reservation_id = ?1 WHERE uuid = ?2", params![reservation_id, uuid])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::OpenOptions;

    #[test]
    fn names_are_unique_metadata_sets_and_removes_and_zones_follow_hosts() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("d.db"), OpenOptions::default()).unwrap();
        let a = db.create_aggregate("rack1", Some("az1")).unwrap();
        assert_eq!(a.availability_zone(), Some("az1"));
        assert!(
            matches!(db.create_aggregate("rack1", None), Err(DbError::Conflict(m)) if m == "Aggregate rack1 already exists.")
        );
        let b = db.create_aggregate("gpu", None).unwrap();
        assert!(matches!(db.rename_aggregate(b.id, "rack1"), Err(DbError::Conflict(_))));
        db.rename_aggregate(b.id, "gpus").unwrap();

        assert!(db.add_aggregate_host(a.id, "h1").unwrap());
        assert!(!db.add_aggregate_host(a.id, "h1").unwrap(), "already a member");
        assert!(db.add_aggregate_host(b.id, "h2").unwrap());
        let zones = db.host_availability_zones().unwrap();
        assert_eq!(zones.get("h1").map(String::as_str), Some("az1"));
        assert_eq!(zones.get("h2"), None, "gpus defines no zone");

        db.set_aggregate_metadata(
            b.id,
            &[("ssd".into(), Some("true".into())), ("availability_zone".into(), Some("az2".into()))],
        )
        .unwrap();
        assert_eq!(db.host_availability_zones().unwrap().get("h2").map(String::as_str), Some("az2"));
        db.set_aggregate_metadata(b.id, &[("availability_zone".into(), None)]).unwrap();
        let b = db.aggregate(b.id).unwrap().unwrap();
        assert_eq!(b.name, "gpus");
        assert_eq!(b.metadata.get("ssd").map(String::as_str), Some("true"));
        assert_eq!(b.availability_zone(), None);
        assert_eq!(db.aggregate_availability_zones().unwrap(), vec!["az1".to_string()]);

        assert!(db.remove_aggregate_host(a.id, "h1").unwrap());
        assert!(!db.remove_aggregate_host(a.id, "h1").unwrap());
        assert!(db.delete_aggregate(a.id).unwrap());
        assert_eq!(db.aggregate(a.id).unwrap(), None);
        assert_eq!(db.aggregates().unwrap().len(), 1);
    }
}
