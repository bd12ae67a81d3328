//! nova's server groups (`os-server-groups`): rows and their members. The rules (policies,
//! quotas, who may see which group) live in `api/compute/server_groups.rs` and the scheduler.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension, Row};

use super::{now, Db, DbError, Result};

/// A group as stored, with the uuids of its members that are not deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerGroup {
    pub id: i64,
    pub uuid: String,
    pub name: String,
    pub project_id: String,
    pub user_id: String,
    pub policy: String,
    /// anti-affinity's `max_server_per_host` rule (2.64), when given.
    pub max_server_per_host: Option<i64>,
    pub members: Vec<String>,
    pub created_at: String,
}

/// What a create writes.
#[derive(Debug, Clone)]
pub struct NewServerGroup<'a> {
    pub name: &'a str,
    pub project_id: &'a str,
    pub user_id: &'a str,
    pub policy: &'a str,
    pub max_server_per_host: Option<i64>,
}

const COLUMNS: &str = "id, uuid, name, project_id, user_id, policy, max_server_per_host, created_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<ServerGroup> {
    Ok(ServerGroup {
        id: r.get(0)?,
        uuid: r.get(1)?,
        name: r.get(2)?,
        project_id: r.get(3)?,
        user_id: r.get(4)?,
        policy: r.get(5)?,
        max_server_per_host: r.get(6)?,
        members: Vec::new(),
        created_at: r.get(7)?,
    })
}

impl Db {
    pub fn create_server_group(&self, g: &NewServerGroup<'_>) -> Result<ServerGroup> {
        let uuid = uuid::Uuid::new_v4().to_string();
        self.conn().execute(
            "INSERT INTO server_groups (uuid, name, project_id, user_id, policy, max_server_per_host, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![uuid, g.name, g.project_id, g.user_id, g.policy, g.max_server_per_host, now()],
        )?;
        self.server_group(&uuid)?.ok_or_else(|| DbError::NotFound(format!("server group {uuid} vanished")))
    }

    /// One group by uuid, whoever owns it (nova looks it up first and asks its policy after).
    pub fn server_group(&self, uuid: &str) -> Result<Option<ServerGroup>> {
        let sql = format!("SELECT {COLUMNS} FROM server_groups WHERE uuid = ?1");
        let Some(mut g) = self.conn().query_row(&sql, [uuid], from_row).optional()? else { return Ok(None) };
        g.members = self.server_group_members(g.id)?;
        Ok(Some(g))
    }

    /// The groups of `project`, or of every project when None, oldest first (nova's order).
    pub fn server_groups(&self, project: Option<&str>) -> Result<Vec<ServerGroup>> {
        let sql = format!("SELECT {COLUMNS} FROM server_groups WHERE ?1 IS NULL OR project_id = ?1 ORDER BY id");
        let mut groups: Vec<ServerGroup> = {
            let mut stmt = self.conn().prepare(&sql)?;
            let rows = stmt.query_map([project], from_row)?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut stmt = self.conn().prepare(
            "SELECT m.group_id, m.instance_uuid FROM server_group_members m
             JOIN server_groups g ON g.id = m.group_id
             JOIN instances i ON i.uuid = m.instance_uuid AND i.deleted = 0
             WHERE ?1 IS NULL OR g.project_id = ?1 ORDER BY i.id",
        )?;
        let mut members: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for row in stmt.query_map([project], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
            let (group, uuid) = row?;
            members.entry(group).or_default().push(uuid);
        }
        for g in &mut groups {
            g.members = members.remove(&g.id).unwrap_or_default();
        }
        Ok(groups)
    }

    fn server_group_members(&self, group_id: i64) -> Result<Vec<String>> {
        let mut stmt = self.conn().prepare(
            "SELECT m.instance_uuid FROM server_group_members m
             JOIN instances i ON i.uuid = m.instance_uuid AND i.deleted = 0
             WHERE m.group_id = ?1 ORDER BY i.id",
        )?;
        let rows = stmt.query_map([group_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes a group and its membership rows; false when there was no such group.
    pub fn delete_server_group(&self, uuid: &str) -> Result<bool> {
        Ok(self.conn().execute("DELETE FROM server_groups WHERE uuid = ?1", [uuid])? > 0)
    }

    /// How many groups a project has, for the `server_groups` quota.
    pub fn count_server_groups(&self, project_id: &str) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM server_groups WHERE project_id = ?1", [project_id], |r| r.get(0))?)
    }

    /// Makes an instance a member of a group.
    pub fn add_server_group_member(&self, group_id: i64, instance_uuid: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO server_group_members (group_id, instance_uuid) VALUES (?1, ?2)",
            params![group_id, instance_uuid],
        )?;
        Ok(())
    }

    /// The uuid of the group an instance belongs to (2.71's `server_groups` of a server).
    pub fn server_group_of(&self, instance_uuid: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT g.uuid FROM server_group_members m JOIN server_groups g ON g.id = m.group_id
                 WHERE m.instance_uuid = ?1",
                [instance_uuid],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The hosts the group's live members are placed on and how many on each, leaving out
    /// `except` (the instance being placed): what the affinity filters and weighers compare.
    pub fn server_group_hosts(&self, group_id: i64, except: &str) -> Result<BTreeMap<String, i64>> {
        let mut stmt = self.conn().prepare(
            "SELECT i.host, count(*) FROM server_group_members m
             JOIN instances i ON i.uuid = m.instance_uuid AND i.deleted = 0
             WHERE m.group_id = ?1 AND i.host IS NOT NULL AND i.uuid != ?2 GROUP BY i.host",
        )?;
        let rows = stmt.query_map(params![group_id, except], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::instances::tests::new_instance;
    use crate::db::instances::InstanceUpdate;
    use crate::db::OpenOptions;

    #[test]
    fn groups_list_their_live_members_and_the_hosts_they_are_on() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("d.db"), OpenOptions::default()).unwrap();
        let new = |name, project, policy| NewServerGroup {
            name,
            project_id: project,
            user_id: "u",
            policy,
            max_server_per_host: None,
        };
        let g = db.create_server_group(&new("g", "p1", "anti-affinity")).unwrap();
        let other = db.create_server_group(&new("o", "p2", "affinity")).unwrap();
        assert_eq!(db.count_server_groups("p1").unwrap(), 1);
        let mut uuids = Vec::new();
        for (name, host) in [("a", Some("h1")), ("b", Some("h1")), ("c", None), ("d", Some("h2"))] {
            let i = db.create_instance(&new_instance(&db, name)).unwrap();
            db.add_server_group_member(g.id, &i.uuid).unwrap();
            if let Some(h) = host {
                let u = InstanceUpdate { host: Some(h.into()), ..Default::default() };
                db.update_instance(&i.uuid, &u).unwrap().unwrap();
            }
            uuids.push(i.uuid);
        }
        db.destroy_instance(&uuids[3]).unwrap();
        let shown = db.server_group(&g.uuid).unwrap().unwrap();
        assert_eq!(shown.members, uuids[..3].to_vec(), "the deleted member is not shown");
        assert_eq!(db.server_group_hosts(g.id, &uuids[0]).unwrap(), BTreeMap::from([("h1".to_string(), 1)]));
        assert_eq!(db.server_group_hosts(g.id, "none").unwrap(), BTreeMap::from([("h1".to_string(), 2)]));
        assert_eq!(db.server_group_of(&uuids[1]).unwrap(), Some(g.uuid.clone()));
        assert_eq!(db.server_groups(Some("p1")).unwrap(), vec![shown.clone()]);
        assert_eq!(db.server_groups(None).unwrap().len(), 2);
        // A second group cannot take an instance that already has one.
        assert!(db.add_server_group_member(other.id, &uuids[0]).is_err());
        assert!(db.delete_server_group(&g.uuid).unwrap());
        assert!(!db.delete_server_group(&g.uuid).unwrap());
        assert_eq!(db.server_group_of(&uuids[1]).unwrap(), None, "membership goes with the group");
    }
}
