//! Per-project quota limits: nova's defaults unless a project has its own row, neutron's for
//! the network resources and cinder's for the block storage ones. All live in one table; a
//! `network.` or `volume.` prefix keeps neutron's and cinder's rows apart from nova's, so that
//! neutron's `port` or cinder's `volumes` never shows up among nova's limits (nor the reverse).

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
    // nova-network's resources: nova still stores and answers them below microversion 2.36
    // (its own defaults), though neutron is what counts ports and groups.
    ("floating_ips", 10),
    ("fixed_ips", -1),
    ("security_groups", 10),
    ("security_group_rules", 20),
];

/// The quota class whose limits are every project's defaults.
pub const DEFAULT_CLASS: &str = "default";

impl Db {
    /// Every quota of the project, defaults filled in. -1 means unlimited.
    pub fn quota_limits(&self, project_id: &str) -> Result<BTreeMap<String, i64>> {
        let mut limits = self.quota_class(DEFAULT_CLASS)?;
        let mut stmt = self.conn().prepare_cached(
            "SELECT resource, hard_limit FROM quotas
             WHERE project_id = ?1 AND resource NOT LIKE 'network.%' AND resource NOT LIKE 'volume.%'",
        )?;
        for row in stmt.query_map([project_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (k, v) = row?;
            limits.insert(k, v);
        }
        Ok(limits)
    }

    /// The project's limits of one service whose rows carry `prefix` (`network.`, `volume.`),
    /// that service's `defaults` filled in; rows of resources the service does not have are
    /// ignored.
    fn prefixed_quota_limits(
        &self,
        project_id: &str,
        prefix: &str,
        defaults: &[(&str, i64)],
    ) -> Result<BTreeMap<String, i64>> {
        let mut limits: BTreeMap<String, i64> = defaults.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let mut stmt = self.conn().prepare_cached(
            "SELECT substr(resource, length(?2) + 1), hard_limit FROM quotas
             WHERE project_id = ?1 AND substr(resource, 1, length(?2)) = ?2",
        )?;
        for row in stmt.query_map(params![project_id, prefix], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (k, v) = row?;
            if limits.contains_key(&k) {
                limits.insert(k, v);
            }
        }
        Ok(limits)
    }

    /// Drops the project's own limits of the service whose rows carry `prefix`; how many.
    fn delete_prefixed_quotas(&self, project_id: &str, prefix: &str) -> Result<usize> {
        Ok(self.conn().execute(
            "DELETE FROM quotas WHERE project_id = ?1 AND substr(resource, 1, length(?2)) = ?2",
            params![project_id, prefix],
        )?)
    }

    /// The limits of a quota class: nova's built-in defaults, overridden by the class's rows.
    /// The `default` class is every project's default.
    pub fn quota_class(&self, class_name: &str) -> Result<BTreeMap<String, i64>> {
        let mut limits: BTreeMap<String, i64> = DEFAULTS.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let mut stmt =
            self.conn().prepare_cached("SELECT resource, hard_limit FROM quota_classes WHERE class_name = ?1")?;
        for row in stmt.query_map([class_name], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (k, v) = row?;
            limits.insert(k, v);
        }
        Ok(limits)
    }

    pub fn set_quota_class(&self, class_name: &str, resource: &str, hard_limit: i64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO quota_classes (class_name, resource, hard_limit) VALUES (?1, ?2, ?3)
             ON CONFLICT (class_name, resource) DO UPDATE SET hard_limit = excluded.hard_limit",
            params![class_name, resource, hard_limit],
        )?;
        Ok(())
    }

    /// Drops the project's own compute limits (nova's `DELETE os-quota-sets`): it is back on
    /// the default class. neutron's and cinder's rows stay.
    pub fn delete_quotas(&self, project_id: &str) -> Result<usize> {
        Ok(self.conn().execute(
            "DELETE FROM quotas WHERE project_id = ?1 AND resource NOT LIKE 'network.%' AND resource NOT LIKE 'volume.%'",
            [project_id],
        )?)
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

/// neutron's default quotas (`[quotas] quota_<resource>`), in neutron's resource names.
/// Routers and floating IPs are in neutron's quota body although novabox has none yet.
pub const NETWORK_DEFAULTS: &[(&str, i64)] = &[
    ("network", 100),
    ("subnet", 100),
    ("port", 500),
    ("router", 10),
    ("floatingip", 50),
    ("security_group", 10),
    ("security_group_rule", 100),
];

/// What starts the `quotas.resource` of a neutron resource.
const NETWORK_PREFIX: &str = "network.";

fn network_key(resource: &str) -> String {
    format!("{NETWORK_PREFIX}{resource}")
}

/// Network quotas: neutron's quota driver.
impl Db {
    /// The project's network limits, neutron's defaults filled in. -1 means unlimited.
    pub fn network_quota_limits(&self, project_id: &str) -> Result<BTreeMap<String, i64>> {
        self.prefixed_quota_limits(project_id, NETWORK_PREFIX, NETWORK_DEFAULTS)
    }

    pub fn set_network_quota(&self, project_id: &str, resource: &str, hard_limit: i64) -> Result<()> {
        self.set_quota(project_id, &network_key(resource), hard_limit)
    }

    /// Drops the project's own network limits (back to the defaults); false when it had none.
    pub fn delete_network_quotas(&self, project_id: &str) -> Result<bool> {
        Ok(self.delete_prefixed_quotas(project_id, NETWORK_PREFIX)? > 0)
    }

    /// The projects that have network limits of their own, sorted.
    pub fn network_quota_projects(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn()
            .prepare("SELECT DISTINCT project_id FROM quotas WHERE resource LIKE 'network.%' ORDER BY project_id")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many of each network resource the project has (neutron's `used`).
    pub fn network_usage(&self, project_id: &str) -> Result<BTreeMap<String, i64>> {
        let count = |table: &str| -> Result<i64> {
            Ok(self.conn().query_row(
                &format!("SELECT count(*) FROM {table} WHERE project_id = ?1"),
                [project_id],
                |r| r.get(0),
            )?)
        };
        let mut used: BTreeMap<String, i64> = NETWORK_DEFAULTS.iter().map(|(k, _)| (k.to_string(), 0)).collect();
        for (resource, table) in [
            ("network", "networks"),
            ("subnet", "subnets"),
            ("port", "ports"),
            ("security_group", "security_groups"),
            ("security_group_rule", "security_group_rules"),
            ("router", "routers"),
            ("floatingip", "floatingips"),
        ] {
            used.insert(resource.to_string(), count(table)?);
        }
        Ok(used)
    }

    /// Whether the project may have `more` of `resource` on top of what it has: its limit
    /// is unlimited (-1) or not reached by the sum.
    pub fn network_quota_allows(&self, project_id: &str, resource: &str, more: i64) -> Result<bool> {
        let limit = self.network_quota_limits(project_id)?.get(resource).copied().unwrap_or(-1);
        if limit < 0 {
            return Ok(true);
        }
        let used = self.network_usage(project_id)?.get(resource).copied().unwrap_or(0);
        Ok(used.saturating_add(more) <= limit)
    }
}

/// cinder's default quotas (`[DEFAULT] quota_<resource>`); the per-type ones of the one volume
/// type, `__DEFAULT__`, are unlimited as cinder's are until an admin sets them.
pub const VOLUME_DEFAULTS: &[(&str, i64)] = &[
    ("volumes", 10),
    ("snapshots", 10),
    ("gigabytes", 1000),
    ("backups", 10),
    ("backup_gigabytes", 1000),
    ("per_volume_gigabytes", -1),
    ("groups", 10),
    ("volumes___DEFAULT__", -1),
    ("snapshots___DEFAULT__", -1),
    ("gigabytes___DEFAULT__", -1),
];

/// What starts the `quotas.resource` of a cinder resource.
const VOLUME_PREFIX: &str = "volume.";

fn volume_key(resource: &str) -> String {
    format!("{VOLUME_PREFIX}{resource}")
}

/// Block storage quotas: cinder's quota driver.
impl Db {
    /// The project's block storage limits, cinder's defaults filled in. -1 means unlimited.
    pub fn volume_quota_limits(&self, project_id: &str) -> Result<BTreeMap<String, i64>> {
        self.prefixed_quota_limits(project_id, VOLUME_PREFIX, VOLUME_DEFAULTS)
    }

    pub fn set_volume_quota(&self, project_id: &str, resource: &str, hard_limit: i64) -> Result<()> {
        self.set_quota(project_id, &volume_key(resource), hard_limit)
    }

    /// Drops the project's own block storage limits (back to the defaults).
    pub fn delete_volume_quotas(&self, project_id: &str) -> Result<()> {
        self.delete_prefixed_quotas(project_id, VOLUME_PREFIX).map(|_| ())
    }
}

#[cfg(test)]
mod volume_tests {
    use crate::db::{Db, OpenOptions};

    #[test]
    fn volume_limits_are_cinders_and_apart_from_novas() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        let p = db.ensure_project("p", "").unwrap();
        assert_eq!(db.volume_quota_limits(&p).unwrap()["volumes"], 10);
        assert_eq!(db.volume_quota_limits(&p).unwrap()["per_volume_gigabytes"], -1);
        db.set_volume_quota(&p, "volumes", 2).unwrap();
        db.set_quota(&p, "instances", 3).unwrap();
        db.set_network_quota(&p, "port", 4).unwrap();
        assert_eq!(db.volume_quota_limits(&p).unwrap()["volumes"], 2);
        let nova = db.quota_limits(&p).unwrap();
        assert!(nova.keys().all(|k| !k.contains("volume") && !k.contains("gigabytes")), "{nova:?}");
        db.delete_volume_quotas(&p).unwrap();
        assert_eq!(db.volume_quota_limits(&p).unwrap()["volumes"], 10);
        assert_eq!(db.quota_limits(&p).unwrap()["instances"], 3, "nova's rows stay");
        assert_eq!(db.network_quota_limits(&p).unwrap()["port"], 4, "neutron's rows stay");
    }
}

#[cfg(test)]
mod network_tests {
    use crate::db::{Db, OpenOptions};

    #[test]
    fn network_limits_are_neutrons_and_apart_from_novas() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        let p = db.ensure_project("p", "").unwrap();
        assert_eq!(db.network_quota_limits(&p).unwrap()["port"], 500);
        db.set_network_quota(&p, "port", 2).unwrap();
        db.set_quota(&p, "instances", 3).unwrap();
        assert_eq!(db.network_quota_limits(&p).unwrap()["port"], 2);
        let nova = db.quota_limits(&p).unwrap();
        assert_eq!(nova["instances"], 3);
        assert!(nova.keys().all(|k| !k.contains("port")), "{nova:?}");
        assert_eq!(db.network_quota_projects().unwrap(), vec![p.clone()]);
        assert!(db.network_quota_allows(&p, "port", 2).unwrap());
        assert!(!db.network_quota_allows(&p, "port", 3).unwrap());
        assert!(db.delete_network_quotas(&p).unwrap());
        assert!(!db.delete_network_quotas(&p).unwrap());
        assert_eq!(db.network_quota_limits(&p).unwrap()["port"], 500);
        assert_eq!(db.quota_limits(&p).unwrap()["instances"], 3, "nova's rows stay");
    }
}
