//! What `os-simple-tenant-usage` bills: instances that ran during a window, deleted ones
//! included (nova reads them with `read_deleted=yes`). The hour arithmetic is the API's.

use rusqlite::{params, OptionalExtension};

use super::{Db, DbError, Result};

/// One instance as the usage report needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub uuid: String,
    pub name: String,
    pub project_id: String,
    pub vm_state: String,
    pub flavor_name: String,
    pub memory_mb: i64,
    pub vcpus: i64,
    pub local_gb: i64,
    pub launched_at: String,
    pub terminated_at: Option<String>,
}

impl Db {
    /// Instances launched before `end` and not terminated by `begin` (both in the database's
    /// `YYYY-MM-DDTHH:MM:SSZ` form), of `project` or of all, ordered as nova pages them
    /// (project, then uuid), `limit` of them after `marker`. An unknown marker is an error
    /// in nova's words.
    pub fn instances_in_window(
        &self,
        begin: &str,
        end: &str,
        project: Option<&str>,
        limit: usize,
        marker: Option<&str>,
    ) -> Result<Vec<UsageRow>> {
        let after = match marker {
            None => None,
            Some(m) => Some(
                self.conn()
                    .query_row("SELECT project_id, uuid FROM instances WHERE uuid = ?1", [m], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })
                    .optional()?
                    .ok_or_else(|| DbError::NotFound(format!("Marker {m} could not be found.")))?,
            ),
        };
        let (after_project, after_uuid) = after.unzip();
        let mut stmt = self.conn().prepare(
            "SELECT uuid, display_name, project_id, vm_state, coalesce(json_extract(flavor, '$.name'), ''),
                    memory_mb, vcpus, root_gb + ephemeral_gb, launched_at, terminated_at
             FROM instances
             WHERE launched_at IS NOT NULL AND launched_at < ?2
               AND (terminated_at IS NULL OR terminated_at > ?1)
               AND (?3 IS NULL OR project_id = ?3)
               AND (?4 IS NULL OR project_id > ?4 OR (project_id = ?4 AND uuid > ?5))
             ORDER BY project_id, uuid LIMIT ?6",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![begin, end, project, after_project, after_uuid, limit], |r| {
            Ok(UsageRow {
                uuid: r.get(0)?,
                name: r.get(1)?,
                project_id: r.get(2)?,
                vm_state: r.get(3)?,
                flavor_name: r.get(4)?,
                memory_mb: r.get(5)?,
                vcpus: r.get(6)?,
                local_gb: r.get(7)?,
                launched_at: r.get(8)?,
                terminated_at: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// Tests bill instances that ended at a chosen time, which the clock cannot give them.
#[cfg(test)]
impl Db {
    pub(crate) fn set_terminated_at(&self, uuid: &str, at: &str) -> Result<()> {
        self.conn().execute("UPDATE instances SET terminated_at = ?1 WHERE uuid = ?2", [at, uuid])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::instances::tests::new_instance;
    use crate::db::instances::InstanceUpdate;
    use crate::db::OpenOptions;

    #[test]
    fn the_window_takes_what_ran_in_it_and_pages_by_project_and_uuid() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("d.db"), OpenOptions::default()).unwrap();
        let mut made = Vec::new();
        for (name, launched) in [("early", "2026-01-01T00:00:00Z"), ("late", "2026-03-01T00:00:00Z")] {
            let i = db.create_instance(&new_instance(&db, name)).unwrap();
            let u = InstanceUpdate { launched_at: Some(launched.into()), ..Default::default() };
            db.update_instance(&i.uuid, &u).unwrap().unwrap();
            made.push(i.uuid);
        }
        // Never launched: never billed.
        db.create_instance(&new_instance(&db, "pending")).unwrap();
        let rows = db.instances_in_window("2026-02-01T00:00:00Z", "2026-02-02T00:00:00Z", None, 10, None).unwrap();
        assert_eq!(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["early"]);
        assert_eq!((rows[0].flavor_name.as_str(), rows[0].vcpus), ("m1.nano", 1));
        db.destroy_instance(&made[0]).unwrap();
        let all = db.instances_in_window("2025-01-01T00:00:00Z", "2027-01-01T00:00:00Z", None, 10, None).unwrap();
        assert_eq!(all.len(), 2, "a deleted instance is still billed for the time it ran");
        let mut sorted = made.clone();
        sorted.sort();
        let first = db.instances_in_window("2025-01-01T00:00:00Z", "2027-01-01T00:00:00Z", None, 1, None).unwrap();
        assert_eq!(first[0].uuid, sorted[0]);
        let next =
            db.instances_in_window("2025-01-01T00:00:00Z", "2027-01-01T00:00:00Z", None, 1, Some(&sorted[0])).unwrap();
        assert_eq!(next[0].uuid, sorted[1]);
        let err = db.instances_in_window("2025-01-01T00:00:00Z", "2027-01-01T00:00:00Z", None, 1, Some("nope"));
        assert_eq!(err.unwrap_err().to_string(), "Marker nope could not be found.");
    }
}
