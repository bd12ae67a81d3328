//! Per-project quota limits: nova's defaults unless a project has its own row.

use std::collections::BTreeMap;

use rusqlite::params;

use super::{Db, Result};

/// nova's default quotas.
pub const DEFAULTS: &[(&str, i64)] = &[
    ("instances", 10),
    ("cores", 20),
    ("ram", 51200),
    ("key_pairs", 100),
    ("metadata_items", 128),
    ("server_groups", 10),
    ("server_group_members", 10),
    ("injected_files", 5),
    ("injected_file_content_bytes", 10240),
    ("injected_file_path_bytes", 255),
];

impl Db {
    /// Every quota of the project, defaults filled in. -1 means unlimited.
    pub fn quota_limits(&self, project_id: &str) -> Result<BTreeMap<String, i64>> {
        let mut limits: BTreeMap<String, i64> = DEFAULTS.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let mut stmt = self.conn().prepare_cached("SELECT resource, hard_limit FROM quotas WHERE project_id = ?1")?;
        for row in stmt.query_map([project_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (k, v) = row?;
            limits.insert(k, v);
        }
        Ok(limits)
    }

    pub fn set_quota(&self, project_id: &str, resource: &str, hard_limit: i64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO quotas (project_id, resource, hard_limit) VALUES (?1, ?2, ?3)
             ON CONFLICT (project_id, resource) DO UPDATE SET hard_limit = excluded.hard_limit",
            params![project_id, resource, hard_limit],
        )?;
        Ok(())
    }
}
