//! Security groups and their rules.

use rusqlite::{params, OptionalExtension, Row};

use super::new_id;
use crate::db::{now, Conn, Db, Result};
use crate::network::model::*;
use crate::network::secgroups::initial_rules;
use crate::network::NetworkError;

const SG_COLUMNS: &str = "id, name, description, project_id, revision_number, created_at, updated_at";

fn sg_from_row(r: &Row<'_>) -> rusqlite::Result<SecurityGroup> {
    let created_at: String = r.get(5)?;
    let updated_at: Option<String> = r.get(6)?;
    Ok(SecurityGroup {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        project_id: r.get(3)?,
        revision_number: r.get(4)?,
        updated_at: updated_at.unwrap_or_else(|| created_at.clone()),
        created_at,
        rules: Vec::new(),
    })
}

const RULE_COLUMNS: &str = "id, security_group_id, project_id, direction, ethertype, protocol, port_range_min, \
                            port_range_max, remote_ip_prefix, remote_group_id, description, created_at";

fn rule_from_row(r: &Row<'_>) -> rusqlite::Result<SecurityGroupRule> {
    Ok(SecurityGroupRule {
        id: r.get(0)?,
        security_group_id: r.get(1)?,
        project_id: r.get(2)?,
        direction: r.get(3)?,
        ethertype: r.get(4)?,
        protocol: r.get(5)?,
        port_range_min: r.get(6)?,
        port_range_max: r.get(7)?,
        remote_ip_prefix: r.get(8)?,
        remote_group_id: r.get(9)?,
        description: r.get(10)?,
        created_at: r.get(11)?,
    })
}

impl Db {
    fn load_rules(&self, groups: &mut [SecurityGroup]) -> Result<()> {
        let mut stmt = self.conn().prepare(&format!(
            "SELECT {RULE_COLUMNS} FROM security_group_rules WHERE security_group_id = ?1 ORDER BY created_at, id"
        ))?;
        for g in groups.iter_mut() {
            g.rules = stmt.query_map([&g.id], rule_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        }
        Ok(())
    }

    pub fn security_groups(&self) -> Result<Vec<SecurityGroup>> {
        let mut stmt =
            self.conn().prepare(&format!("SELECT {SG_COLUMNS} FROM security_groups ORDER BY created_at, id"))?;
        let mut groups = stmt.query_map([], sg_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        self.load_rules(&mut groups)?;
        Ok(groups)
    }

    pub fn security_group_by_id(&self, id: &str) -> Result<Option<SecurityGroup>> {
        let g = self
            .conn()
            .query_row(&format!("SELECT {SG_COLUMNS} FROM security_groups WHERE id = ?1"), [id], sg_from_row)
            .optional()?;
        match g {
            Some(mut g) => {
                self.load_rules(std::slice::from_mut(&mut g))?;
                Ok(Some(g))
            }
            None => Ok(None),
        }
    }

    /// A project's group by name (nova's boot request names groups, not ids).
    pub fn security_group_by_name(&self, project_id: &str, name: &str) -> Result<Option<SecurityGroup>> {
        let id: Option<String> = self
            .conn()
            .query_row(
                "SELECT id FROM security_groups WHERE project_id = ?1 AND name = ?2 ORDER BY created_at LIMIT 1",
                params![project_id, name],
                |r| r.get(0),
            )
            .optional()?;
        match id {
            Some(id) => self.security_group_by_id(&id),
            None => Ok(None),
        }
    }

    /// The id of `project_id`'s `default` group, creating it with neutron's default rules
    /// (`network::secgroups::initial_rules`) the first time it is needed.
    pub fn ensure_default_security_group(&self, project_id: &str) -> Result<String> {
        let tx = self.begin()?;
        if let Some(g) = self.security_group_by_name(project_id, DEFAULT_SECURITY_GROUP)? {
            return Ok(g.id);
        }
        let id = insert_group(&tx, project_id, DEFAULT_SECURITY_GROUP, "Default security group", true)?;
        tx.commit()?;
        tracing::info!(project_id, security_group_id = %id, "created the default security group");
        Ok(id)
    }

    /// Creates a group with neutron's two egress rules (a new group lets everything out).
    pub fn create_security_group(&self, project_id: &str, name: &str, description: &str) -> Result<SecurityGroup> {
        let tx = self.begin()?;
        let id = insert_group(&tx, project_id, name, description, false)?;
        tx.commit()?;
        self.security_group_by_id(&id)?.ok_or_else(|| NetworkError::SecurityGroupNotFound(id).into())
    }

    pub fn save_security_group(&self, g: &SecurityGroup) -> Result<SecurityGroup> {
        let n = self.conn().execute(
            "UPDATE security_groups SET name = ?2, description = ?3, revision_number = revision_number + 1,
                    updated_at = ?4
             WHERE id = ?1",
            params![g.id, g.name, g.description, now()],
        )?;
        if n == 0 {
            return Err(NetworkError::SecurityGroupNotFound(g.id.clone()).into());
        }
        self.security_group_by_id(&g.id)?.ok_or_else(|| NetworkError::SecurityGroupNotFound(g.id.clone()).into())
    }

    /// `SecurityGroupInUse` while a port uses the group.
    pub fn delete_security_group(&self, id: &str) -> Result<()> {
        let tx = self.begin()?;
        let used: i64 =
            tx.query_row("SELECT count(*) FROM port_security_groups WHERE security_group_id = ?1", [id], |r| r.get(0))?;
        if used > 0 {
            return Err(NetworkError::SecurityGroupInUse(id.to_string()).into());
        }
        if tx.execute("DELETE FROM security_groups WHERE id = ?1", [id])? == 0 {
            return Err(NetworkError::SecurityGroupNotFound(id.to_string()).into());
        }
        tx.commit()?;
        Ok(())
    }

    pub fn security_group_rule_by_id(&self, id: &str) -> Result<Option<SecurityGroupRule>> {
        Ok(self
            .conn()
            .query_row(&format!("SELECT {RULE_COLUMNS} FROM security_group_rules WHERE id = ?1"), [id], rule_from_row)
            .optional()?)
    }

    /// Adds a validated rule; a rule matching the same traffic is `SecurityGroupRuleExists`
    /// naming it.
    pub fn create_security_group_rule(&self, rule: &SecurityGroupRule) -> Result<SecurityGroupRule> {
        let tx = self.begin()?;
        let group = self
            .security_group_by_id(&rule.security_group_id)?
            .ok_or_else(|| NetworkError::SecurityGroupNotFound(rule.security_group_id.clone()))?;
        if let Some(dup) = group.rules.iter().find(|r| r.same_match(rule)) {
            return Err(NetworkError::SecurityGroupRuleExists(dup.id.clone()).into());
        }
        let id = insert_rule(&tx, rule, &now())?;
        tx.execute(
            "UPDATE security_groups SET revision_number = revision_number + 1, updated_at = ?2 WHERE id = ?1",
            params![rule.security_group_id, now()],
        )?;
        tx.commit()?;
        self.security_group_rule_by_id(&id)?.ok_or_else(|| NetworkError::SecurityGroupRuleNotFound(id).into())
    }

    pub fn delete_security_group_rule(&self, id: &str) -> Result<()> {
        if self.conn().execute("DELETE FROM security_group_rules WHERE id = ?1", [id])? == 0 {
            return Err(NetworkError::SecurityGroupRuleNotFound(id.to_string()).into());
        }
        Ok(())
    }
}

/// A new group with the rules neutron gives it; its id.
fn insert_group(tx: &Conn, project_id: &str, name: &str, description: &str, default: bool) -> Result<String> {
    let id = new_id();
    let ts = now();
    tx.execute(
        "INSERT INTO security_groups (id, name, description, project_id, revision_number, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5)",
        params![id, name, description, project_id, ts],
    )?;
    for rule in initial_rules(&id, project_id, default) {
        insert_rule(tx, &rule, &ts)?;
    }
    Ok(id)
}

/// One rule row (a fresh id unless the rule has one); its id.
fn insert_rule(tx: &Conn, rule: &SecurityGroupRule, created_at: &str) -> Result<String> {
    let id = if rule.id.is_empty() { new_id() } else { rule.id.clone() };
    tx.execute(
        "INSERT INTO security_group_rules (id, security_group_id, project_id, direction, ethertype, protocol,
                                           port_range_min, port_range_max, remote_ip_prefix, remote_group_id,
                                           description, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            id,
            rule.security_group_id,
            rule.project_id,
            rule.direction,
            rule.ethertype,
            rule.protocol,
            rule.port_range_min,
            rule.port_range_max,
            rule.remote_ip_prefix,
            rule.remote_group_id,
            rule.description,
            created_at
        ],
    )?;
    Ok(id)
}
