//! Rows of issue 16's long actions: what a rebuild changes on the instance, and resizes as
//! nova's `migrations` table records them.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::instances::FlavorSnapshot;
use super::{now, Db, Result};

/// What a rebuild writes on the instance before the compute host starts (nova's API saves
/// them on the instance before its cast). `None` leaves a column as it is.
#[derive(Debug, Clone, Default)]
pub struct RebuildRow {
    pub image_ref: String,
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    pub display_name: Option<String>,
    pub display_description: Option<Option<String>>,
    pub access_ip_v4: Option<String>,
    pub access_ip_v6: Option<String>,
    /// (key_name, key_data); `Some((None, None))` clears the key.
    pub key: Option<(Option<String>, Option<String>)>,
    pub user_data: Option<Option<String>>,
    /// Replaces all the instance's metadata.
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
}

/// A resize, as nova's `Migration` object carries it between the API and compute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    pub id: i64,
    pub uuid: String,
    pub instance_uuid: String,
    pub source_compute: Option<String>,
    pub dest_compute: Option<String>,
    pub old_flavor: FlavorSnapshot,
    pub new_flavor: FlavorSnapshot,
    pub status: String,
    pub migration_type: String,
    pub created_at: String,
    pub updated_at: Option<String>,
}

const MIGRATION_COLUMNS: &str = "id, uuid, instance_uuid, source_compute, dest_compute, old_flavor, new_flavor, status,
    migration_type, created_at, updated_at";

fn migration_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Migration> {
    let flavor = |i: usize| -> rusqlite::Result<FlavorSnapshot> {
        let text: String = r.get(i)?;
        serde_json::from_str(&text)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
    };
    Ok(Migration {
        id: r.get(0)?,
        uuid: r.get(1)?,
        instance_uuid: r.get(2)?,
        source_compute: r.get(3)?,
        dest_compute: r.get(4)?,
        old_flavor: flavor(5)?,
        new_flavor: flavor(6)?,
        status: r.get(7)?,
        migration_type: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

impl Db {
    /// Writes what a rebuild changes on the instance (call inside the transaction that sets
    /// its task state).
    pub fn rebuild_instance_row(&self, uuid: &str, r: &RebuildRow) -> Result<()> {
        let c = self.conn();
        c.execute(
            "UPDATE instances SET image_ref = ?2, kernel_id = ?3, ramdisk_id = ?4, updated_at = ?5
             WHERE uuid = ?1 AND deleted = 0",
            params![uuid, r.image_ref, r.kernel_id, r.ramdisk_id, now()],
        )?;
        if let Some(n) = &r.display_name {
            c.execute("UPDATE instances SET display_name = ?2 WHERE uuid = ?1", params![uuid, n])?;
        }
        if let Some(d) = &r.display_description {
            c.execute("UPDATE instances SET display_description = ?2 WHERE uuid = ?1", params![uuid, d])?;
        }
        if let Some(a) = &r.access_ip_v4 {
            c.execute("UPDATE instances SET access_ip_v4 = ?2 WHERE uuid = ?1", params![uuid, a])?;
        }
        if let Some(a) = &r.access_ip_v6 {
            c.execute("UPDATE instances SET access_ip_v6 = ?2 WHERE uuid = ?1", params![uuid, a])?;
        }
        if let Some((name, data)) = &r.key {
            c.execute("UPDATE instances SET key_name = ?2, key_data = ?3 WHERE uuid = ?1", params![uuid, name, data])?;
        }
        if let Some(u) = &r.user_data {
            c.execute("UPDATE instances SET user_data = ?2 WHERE uuid = ?1", params![uuid, u])?;
        }
        if let Some(m) = &r.metadata {
            c.execute("DELETE FROM instance_metadata WHERE instance_uuid = ?1", [uuid])?;
            for (k, v) in m {
                c.execute(
                    "INSERT INTO instance_metadata (instance_uuid, key, value) VALUES (?1, ?2, ?3)",
                    params![uuid, k, v],
                )?;
            }
        }
        Ok(())
    }

    /// Records a resize of `instance_uuid` on `host` (nova's status `pre-migrating`).
    pub fn create_migration(
        &self,
        instance_uuid: &str,
        host: &str,
        old: &FlavorSnapshot,
        new: &FlavorSnapshot,
    ) -> Result<Migration> {
        let uuid = uuid::Uuid::new_v4().to_string();
        let (old, new) =
            (serde_json::to_string(old).unwrap_or_default(), serde_json::to_string(new).unwrap_or_default());
        self.conn().execute(
            "INSERT INTO migrations (uuid, instance_uuid, source_compute, dest_compute, source_node, dest_node,
                 old_flavor, new_flavor, status, migration_type, created_at)
             VALUES (?1, ?2, ?3, ?3, ?3, ?3, ?4, ?5, 'pre-migrating', 'resize', ?6)",
            params![uuid, instance_uuid, host, old, new, now()],
        )?;
        Ok(self.migration(&uuid)?.expect("the row just written"))
    }

    pub fn migration(&self, uuid: &str) -> Result<Option<Migration>> {
        let sql = format!("SELECT {MIGRATION_COLUMNS} FROM migrations WHERE uuid = ?1");
        Ok(self.conn().query_row(&sql, [uuid], migration_row).optional()?)
    }

    /// The instance's latest resize, whatever its status.
    pub fn latest_migration(&self, instance_uuid: &str) -> Result<Option<Migration>> {
        let sql =
            format!("SELECT {MIGRATION_COLUMNS} FROM migrations WHERE instance_uuid = ?1 ORDER BY id DESC LIMIT 1");
        Ok(self.conn().query_row(&sql, [instance_uuid], migration_row).optional()?)
    }

    /// Moves the instance's latest resize to `status`; false when it has none.
    pub fn set_migration_status(&self, instance_uuid: &str, status: &str) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE migrations SET status = ?2, updated_at = ?3
             WHERE id = (SELECT max(id) FROM migrations WHERE instance_uuid = ?1)",
            params![instance_uuid, status, now()],
        )?;
        Ok(n > 0)
    }

    /// Every resize, newest first, for `os-migrations`.
    pub fn migrations(&self) -> Result<Vec<Migration>> {
        let sql = format!("SELECT {MIGRATION_COLUMNS} FROM migrations ORDER BY id DESC");
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map([], migration_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::instances::tests::new_instance;
    use crate::db::OpenOptions;

    #[test]
    fn a_rebuild_rewrites_the_row_and_a_resize_is_recorded() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        let inst = db.create_instance(&new_instance(&db, "vm")).unwrap();
        let row = RebuildRow {
            image_ref: "img2".into(),
            display_name: Some("renamed".into()),
            key: Some((None, None)),
            user_data: Some(Some("aGk=".into())),
            metadata: Some([("a".to_string(), "b".to_string())].into()),
            ..Default::default()
        };
        db.rebuild_instance_row(&inst.uuid, &row).unwrap();
        let after = db.instance_by_uuid(&inst.uuid, false).unwrap().unwrap();
        assert_eq!(after.image_ref.as_deref(), Some("img2"));
        assert_eq!(after.display_name, "renamed");
        assert_eq!((after.key_name, after.user_data.as_deref()), (None, Some("aGk=")));
        assert_eq!(after.metadata.len(), 1);

        assert_eq!(db.latest_migration(&inst.uuid).unwrap(), None);
        let mut bigger = inst.flavor.clone();
        bigger.memory_mb *= 2;
        let m = db.create_migration(&inst.uuid, "h1", &inst.flavor, &bigger).unwrap();
        assert_eq!((m.status.as_str(), m.migration_type.as_str()), ("pre-migrating", "resize"));
        assert!(db.set_migration_status(&inst.uuid, "finished").unwrap());
        let latest = db.latest_migration(&inst.uuid).unwrap().unwrap();
        assert_eq!((latest.status.as_str(), latest.new_flavor.memory_mb), ("finished", bigger.memory_mb));
        assert_eq!(db.migrations().unwrap().len(), 1);
        assert!(!db.set_migration_status("nobody", "finished").unwrap());
    }
}
