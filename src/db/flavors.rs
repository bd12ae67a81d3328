//! Flavors (instance types) and their extra specs.

use rusqlite::{params, OptionalExtension, Row};

use super::{now, Db, DbError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Flavor {
    pub id: i64,
    pub flavorid: String,
    pub name: String,
    pub memory_mb: i64,
    pub vcpus: i64,
    pub root_gb: i64,
    pub ephemeral_gb: i64,
    pub swap: i64,
    pub rxtx_factor: f64,
    pub is_public: bool,
    pub description: Option<String>,
}

/// nova's flavor sort keys (its index schema's `sort_key` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlavorSortKey {
    CreatedAt,
    Description,
    Disabled,
    EphemeralGb,
    FlavorId,
    Id,
    IsPublic,
    MemoryMb,
    Name,
    RootGb,
    RxtxFactor,
    Swap,
    UpdatedAt,
    VcpuWeight,
    Vcpus,
}

impl crate::db::listing::SortColumn for FlavorSortKey {
    const ALL: &'static [(&'static str, FlavorSortKey)] = &[
        ("created_at", FlavorSortKey::CreatedAt),
        ("description", FlavorSortKey::Description),
        ("disabled", FlavorSortKey::Disabled),
        ("ephemeral_gb", FlavorSortKey::EphemeralGb),
        ("flavorid", FlavorSortKey::FlavorId),
        ("id", FlavorSortKey::Id),
        ("is_public", FlavorSortKey::IsPublic),
        ("memory_mb", FlavorSortKey::MemoryMb),
        ("name", FlavorSortKey::Name),
        ("root_gb", FlavorSortKey::RootGb),
        ("rxtx_factor", FlavorSortKey::RxtxFactor),
        ("swap", FlavorSortKey::Swap),
        ("updated_at", FlavorSortKey::UpdatedAt),
        ("vcpu_weight", FlavorSortKey::VcpuWeight),
        ("vcpus", FlavorSortKey::Vcpus),
    ];

    fn column(self) -> Option<&'static str> {
        use FlavorSortKey::*;
        Some(match self {
            // Rows are numbered as they are made.
            CreatedAt | Id => "id",
            Description => "description",
            EphemeralGb => "ephemeral_gb",
            FlavorId => "flavorid",
            IsPublic => "is_public",
            MemoryMb => "memory_mb",
            Name => "name",
            RootGb => "root_gb",
            RxtxFactor => "rxtx_factor",
            Swap => "swap",
            Vcpus => "vcpus",
            // The same for every listed flavor (disabled ones are not listed, none is updated
            // or weighted).
            Disabled | UpdatedAt | VcpuWeight => return None,
        })
    }
}

/// What a new flavor needs; the row id is the database's.
#[derive(Debug, Clone)]
pub struct NewFlavor<'a> {
    pub flavorid: &'a str,
    pub name: &'a str,
    pub memory_mb: i64,
    pub vcpus: i64,
    pub root_gb: i64,
    pub ephemeral_gb: i64,
    pub swap: i64,
    pub rxtx_factor: f64,
    pub is_public: bool,
    pub description: Option<&'a str>,
}

/// DevStack's flavors, plus m1.nano for tiny test guests.
pub const DEFAULT_FLAVORS: &[(&str, &str, i64, i64, i64)] = &[
    // (flavorid, name, memory_mb, vcpus, root_gb)
    ("1", "m1.tiny", 512, 1, 1),
    ("2", "m1.small", 2048, 1, 20),
    ("3", "m1.medium", 4096, 2, 40),
    ("4", "m1.large", 8192, 4, 80),
    ("5", "m1.xlarge", 16384, 8, 160),
    ("42", "m1.nano", 64, 1, 1),
];

const COLUMNS: &str =
    "id, flavorid, name, memory_mb, vcpus, root_gb, ephemeral_gb, swap, rxtx_factor, is_public, description";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Flavor> {
    Ok(Flavor {
        id: r.get(0)?,
        flavorid: r.get(1)?,
        name: r.get(2)?,
        memory_mb: r.get(3)?,
        vcpus: r.get(4)?,
        root_gb: r.get(5)?,
        ephemeral_gb: r.get(6)?,
        swap: r.get(7)?,
        rxtx_factor: r.get(8)?,
        is_public: r.get(9)?,
        description: r.get(10)?,
    })
}

impl Db {
    /// Adds the default flavors that are missing (by id or name); returns how many it added.
    pub fn seed_default_flavors(&self) -> Result<usize> {
        let mut added = 0;
        for &(flavorid, name, memory_mb, vcpus, root_gb) in DEFAULT_FLAVORS {
            let exists: bool = self.conn().query_row(
                "SELECT EXISTS (SELECT 1 FROM flavors WHERE flavorid = ?1 OR name = ?2)",
                params![flavorid, name],
                |r| r.get(0),
            )?;
            if !exists {
                self.create_flavor(&NewFlavor {
                    flavorid,
                    name,
                    memory_mb,
                    vcpus,
                    root_gb,
                    ephemeral_gb: 0,
                    swap: 0,
                    rxtx_factor: 1.0,
                    is_public: true,
                    description: None,
                })?;
                added += 1;
            }
        }
        Ok(added)
    }

    pub fn create_flavor(&self, f: &NewFlavor<'_>) -> Result<Flavor> {
        let inserted = self.conn().execute(
            "INSERT INTO flavors (flavorid, name, memory_mb, vcpus, root_gb, ephemeral_gb, swap, rxtx_factor, is_public,
                description, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                f.flavorid,
                f.name,
                f.memory_mb,
                f.vcpus,
                f.root_gb,
                f.ephemeral_gb,
                f.swap,
                f.rxtx_factor,
                f.is_public,
                f.description,
                now()
            ],
        );
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                return Err(DbError::Conflict(format!(
                    "a flavor with id {} or name {} already exists",
                    f.flavorid, f.name
                )))
            }
            Err(e) => return Err(e.into()),
        }
        self.flavor_by_flavorid(f.flavorid)?.ok_or_else(|| DbError::Conflict("flavor vanished".into()))
    }

    pub fn flavor_by_flavorid(&self, flavorid: &str) -> Result<Option<Flavor>> {
        Ok(self
            .conn()
            .query_row(&format!("SELECT {COLUMNS} FROM flavors WHERE flavorid = ?1"), [flavorid], from_row)
            .optional()?)
    }

    pub fn flavors(&self) -> Result<Vec<Flavor>> {
        let mut stmt = self
            .conn()
            .prepare(&format!("SELECT {COLUMNS} FROM flavors WHERE disabled = 0 ORDER BY memory_mb, flavorid"))?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl Db {
    /// The one field of a flavor nova lets change after creation (2.55).
    pub fn set_flavor_description(&self, flavor_row_id: i64, description: Option<&str>) -> Result<()> {
        self.conn()
            .execute("UPDATE flavors SET description = ?2 WHERE id = ?1", params![flavor_row_id, description])?;
        Ok(())
    }

    /// Removes a flavor; instances keep their snapshot of it.
    pub fn delete_flavor(&self, flavorid: &str) -> Result<bool> {
        Ok(self.conn().execute("DELETE FROM flavors WHERE flavorid = ?1", [flavorid])? > 0)
    }

    pub fn flavor_extra_specs(&self, flavor_row_id: i64) -> Result<std::collections::BTreeMap<String, String>> {
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT key, value FROM flavor_extra_specs WHERE flavor_id = ?1 ORDER BY key")?;
        let rows = stmt.query_map([flavor_row_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_flavor_extra_specs(
        &self,
        flavor_row_id: i64,
        specs: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let tx = self.begin()?;
        for (k, v) in specs {
            tx.execute(
                "INSERT INTO flavor_extra_specs (flavor_id, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (flavor_id, key) DO UPDATE SET value = excluded.value",
                params![flavor_row_id, k, v],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The projects given access to a private flavor.
    pub fn flavor_access(&self, flavor_row_id: i64) -> Result<Vec<String>> {
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT project_id FROM flavor_projects WHERE flavor_id = ?1 ORDER BY project_id")?;
        let rows = stmt.query_map([flavor_row_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Gives `project_id` access to a flavor: false when it had it already. A project that
    /// does not exist is `NotFound`.
    pub fn add_flavor_access(&self, flavor_row_id: i64, project_id: &str) -> Result<bool> {
        let r = self.conn().execute(
            "INSERT OR IGNORE INTO flavor_projects (flavor_id, project_id) VALUES (?1, ?2)",
            params![flavor_row_id, project_id],
        );
        match r {
            Ok(n) => Ok(n > 0),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(DbError::NotFound(format!("project {project_id} does not exist")))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn remove_flavor_access(&self, flavor_row_id: i64, project_id: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM flavor_projects WHERE flavor_id = ?1 AND project_id = ?2",
            params![flavor_row_id, project_id],
        )? > 0)
    }

    pub fn delete_flavor_extra_spec(&self, flavor_row_id: i64, key: &str) -> Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM flavor_extra_specs WHERE flavor_id = ?1 AND key = ?2", params![flavor_row_id, key])?
            > 0)
    }
}

#[cfg(test)]
mod tests {
    use crate::db::{Db, OpenOptions};

    #[test]
    fn seeding_twice_adds_nothing_the_second_time() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("d.db"), OpenOptions::default()).unwrap();
        assert_eq!(db.seed_default_flavors().unwrap(), 6);
        assert_eq!(db.seed_default_flavors().unwrap(), 0);
        let nano = db.flavor_by_flavorid("42").unwrap().unwrap();
        assert_eq!((nano.name.as_str(), nano.memory_mb), ("m1.nano", 64));
        assert_eq!(db.flavors().unwrap().first().unwrap().name, "m1.nano");
    }
}
