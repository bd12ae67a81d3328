//! Projects, users, roles and their assignments.

use rusqlite::{params, OptionalExtension};

use super::{new_hex_id, now, Db, DbError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub domain_id: String,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub name: String,
    pub password_hash: String,
    pub default_project_id: Option<String>,
    pub enabled: bool,
    pub domain_id: String,
    pub email: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub id: String,
    pub name: String,
}

/// A role of a user on a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub user_id: String,
    pub project_id: String,
    pub role_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub description: String,
    pub domain_id: String,
}

/// A group's role on a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupAssignment {
    pub group_id: String,
    pub project_id: String,
    pub role_id: String,
}

/// A role on a domain or on the system, of a user or a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedAssignment {
    /// `user` or `group`.
    pub actor_type: String,
    pub actor_id: String,
    /// `domain` or `system`.
    pub scope_type: String,
    /// The domain's id, or `all` for the system.
    pub scope_id: String,
    pub role_id: String,
}

/// Which rows a listing keeps; `None` keeps all.
#[derive(Debug, Clone, Default)]
pub struct IdentityFilter {
    pub name: Option<String>,
    pub domain_id: Option<String>,
    pub enabled: Option<bool>,
}

/// The attributes of a new project or user, and the changes of an update (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct ProjectChange {
    pub name: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub domain_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub name: Option<String>,
    pub password_hash: Option<String>,
    /// `Some(None)` clears it.
    pub default_project_id: Option<Option<String>>,
    pub enabled: Option<bool>,
    pub domain_id: Option<String>,
    pub email: Option<Option<String>>,
    pub description: Option<Option<String>>,
}

const PROJECT_COLUMNS: &str = "id, name, description, enabled, domain_id";
const USER_COLUMNS: &str = "id, name, password_hash, default_project_id, enabled, domain_id, email, description";
const DOMAIN_COLUMNS: &str = "id, name, description, enabled";

fn project_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project { id: r.get(0)?, name: r.get(1)?, description: r.get(2)?, enabled: r.get(3)?, domain_id: r.get(4)? })
}

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        password_hash: r.get(2)?,
        default_project_id: r.get(3)?,
        enabled: r.get(4)?,
        domain_id: r.get(5)?,
        email: r.get(6)?,
        description: r.get(7)?,
    })
}

fn domain_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Domain> {
    Ok(Domain { id: r.get(0)?, name: r.get(1)?, description: r.get(2)?, enabled: r.get(3)? })
}

fn group_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Group> {
    Ok(Group { id: r.get(0)?, name: r.get(1)?, description: r.get(2)?, domain_id: r.get(3)? })
}

fn role_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Role> {
    Ok(Role { id: r.get(0)?, name: r.get(1)? })
}

/// `AND column = ?` clauses for a filter, with their values.
fn filter_sql(f: &IdentityFilter) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut sql = String::new();
    let mut values = Vec::new();
    if let Some(n) = &f.name {
        values.push(Value::Text(n.clone()));
        sql.push_str(&format!(" AND name = ?{}", values.len()));
    }
    if let Some(d) = &f.domain_id {
        values.push(Value::Text(d.clone()));
        sql.push_str(&format!(" AND domain_id = ?{}", values.len()));
    }
    if let Some(e) = f.enabled {
        values.push(Value::Integer(e as i64));
        sql.push_str(&format!(" AND enabled = ?{}", values.len()));
    }
    (sql, values)
}

impl Db {
    /// Returns the project's id, creating it when absent. Existing rows are never changed.
    pub fn ensure_project(&self, name: &str, description: &str) -> Result<String> {
        if let Some(p) = self.project_by_name(name)? {
            return Ok(p.id);
        }
        let change = ProjectChange { description: Some(description.into()), ..ProjectChange::default() };
        Ok(self.create_project(name, &change)?.id)
    }

    /// Creates a project; a name already taken is a conflict in keystone's words.
    pub fn create_project(&self, name: &str, c: &ProjectChange) -> Result<Project> {
        let domain_id = c.domain_id.clone().unwrap_or_else(|| "default".into());
        if self.project_by_name(name)?.is_some() {
            return Err(DbError::Conflict(format!(
                "Conflict occurred attempting to store project - Duplicate entry found with name {name} at domain ID {domain_id}."
            )));
        }
        let id = new_hex_id();
        self.conn().execute(
            "INSERT INTO projects (id, name, description, domain_id, enabled, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, name, c.description.clone().unwrap_or_default(), domain_id, c.enabled.unwrap_or(true), now()],
        )?;
        self.project_by_id(&id)?.ok_or_else(|| DbError::NotFound(format!("Could not find project: {id}.")))
    }

    pub fn update_project(&self, id: &str, c: &ProjectChange) -> Result<Project> {
        let current =
            self.project_by_id(id)?.ok_or_else(|| DbError::NotFound(format!("Could not find project: {id}.")))?;
        if let Some(name) = c.name.as_deref().filter(|n| *n != current.name) {
            if self.project_by_name(name)?.is_some() {
                return Err(DbError::Conflict(format!(
                    "Conflict occurred attempting to store project - Duplicate entry found with name {name} at domain ID {}.",
                    current.domain_id
                )));
            }
        }
        self.conn().execute(
            "UPDATE projects SET name = ?2, description = ?3, enabled = ?4, updated_at = ?5 WHERE id = ?1",
            params![
                id,
                c.name.as_deref().unwrap_or(&current.name),
                c.description.as_deref().unwrap_or(&current.description),
                c.enabled.unwrap_or(current.enabled),
                now()
            ],
        )?;
        self.project_by_id(id)?.ok_or_else(|| DbError::NotFound(format!("Could not find project: {id}.")))
    }

    /// Deletes a project as keystone does: it is gone from identity, its role assignments
    /// and tokens with it. The row stays, marked deleted and renamed, because other services'
    /// rows still name it.
    pub fn delete_project(&self, id: &str) -> Result<()> {
        let tx = self.begin()?;
        let n = tx.execute(
            "UPDATE projects SET deleted = 1, enabled = 0, name = 'deleted:' || id, updated_at = ?2
             WHERE id = ?1 AND deleted = 0",
            params![id, now()],
        )?;
        if n == 0 {
            return Err(DbError::NotFound(format!("Could not find project: {id}.")));
        }
        tx.execute("DELETE FROM role_assignments WHERE project_id = ?1", [id])?;
        tx.execute("DELETE FROM group_role_assignments WHERE project_id = ?1", [id])?;
        tx.execute("UPDATE tokens SET revoked = 1 WHERE project_id = ?1", [id])?;
        tx.execute("UPDATE users SET default_project_id = NULL WHERE default_project_id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    pub fn project_by_name(&self, name: &str) -> Result<Option<Project>> {
        let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE name = ?1 AND deleted = 0");
        Ok(self.conn().query_row(&sql, [name], project_from_row).optional()?)
    }

    pub fn project_by_id(&self, id: &str) -> Result<Option<Project>> {
        let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?1 AND deleted = 0");
        Ok(self.conn().query_row(&sql, [id], project_from_row).optional()?)
    }

    pub fn projects(&self) -> Result<Vec<Project>> {
        self.projects_where(&IdentityFilter::default())
    }

    pub fn projects_where(&self, f: &IdentityFilter) -> Result<Vec<Project>> {
        let (clauses, values) = filter_sql(f);
        let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE deleted = 0{clauses} ORDER BY name");
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(values), project_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Creates the user with `password_hash` when absent; an existing user keeps its password.
    /// Returns the user's id and whether it was created now.
    pub fn ensure_user(&self, name: &str, password_hash: &str, default_project_id: &str) -> Result<(String, bool)> {
        if let Some(u) = self.user_by_name(name)? {
            return Ok((u.id, false));
        }
        let change = UserChange {
            password_hash: Some(password_hash.into()),
            default_project_id: Some(Some(default_project_id.into())),
            ..UserChange::default()
        };
        Ok((self.create_user(name, &change)?.id, true))
    }

    /// Creates a user; a name already taken is a conflict in keystone's words.
    pub fn create_user(&self, name: &str, c: &UserChange) -> Result<User> {
        let domain_id = c.domain_id.clone().unwrap_or_else(|| "default".into());
        if self.user_by_name(name)?.is_some() {
            return Err(DbError::Conflict(format!(
                "Conflict occurred attempting to store user - Duplicate entry found with name {name} at domain ID {domain_id}."
            )));
        }
        let id = new_hex_id();
        self.conn().execute(
            "INSERT INTO users (id, name, password_hash, default_project_id, enabled, domain_id, email, description, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                id,
                name,
                c.password_hash.clone().unwrap_or_default(),
                c.default_project_id.clone().flatten(),
                c.enabled.unwrap_or(true),
                domain_id,
                c.email.clone().flatten(),
                c.description.clone().flatten(),
                now()
            ],
        )?;
        self.user_by_id(&id)?.ok_or_else(|| DbError::NotFound(format!("Could not find user: {id}.")))
    }

    pub fn update_user(&self, id: &str, c: &UserChange) -> Result<User> {
        let cur = self.user_by_id(id)?.ok_or_else(|| DbError::NotFound(format!("Could not find user: {id}.")))?;
        if let Some(name) = c.name.as_deref().filter(|n| *n != cur.name) {
            if self.user_by_name(name)?.is_some() {
                return Err(DbError::Conflict(format!(
                    "Conflict occurred attempting to store user - Duplicate entry found with name {name} at domain ID {}.",
                    cur.domain_id
                )));
            }
        }
        self.conn().execute(
            "UPDATE users SET name = ?2, password_hash = ?3, default_project_id = ?4, enabled = ?5, email = ?6,
                 description = ?7, updated_at = ?8 WHERE id = ?1",
            params![
                id,
                c.name.as_deref().unwrap_or(&cur.name),
                c.password_hash.as_deref().unwrap_or(&cur.password_hash),
                c.default_project_id.clone().unwrap_or(cur.default_project_id),
                c.enabled.unwrap_or(cur.enabled),
                c.email.clone().unwrap_or(cur.email),
                c.description.clone().unwrap_or(cur.description),
                now()
            ],
        )?;
        self.user_by_id(id)?.ok_or_else(|| DbError::NotFound(format!("Could not find user: {id}.")))
    }

    /// Deletes a user as keystone does (assignments and tokens go too); the row stays, marked
    /// deleted and renamed, because instances and volumes name their user.
    pub fn delete_user(&self, id: &str) -> Result<()> {
        let tx = self.begin()?;
        let n = tx.execute(
            "UPDATE users SET deleted = 1, enabled = 0, name = 'deleted:' || id, password_hash = '', updated_at = ?2
             WHERE id = ?1 AND deleted = 0",
            params![id, now()],
        )?;
        if n == 0 {
            return Err(DbError::NotFound(format!("Could not find user: {id}.")));
        }
        tx.execute("DELETE FROM role_assignments WHERE user_id = ?1", [id])?;
        tx.execute("DELETE FROM group_members WHERE user_id = ?1", [id])?;
        tx.execute("DELETE FROM scoped_role_assignments WHERE actor_type = 'user' AND actor_id = ?1", [id])?;
        tx.execute("UPDATE tokens SET revoked = 1 WHERE user_id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    pub fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1 AND deleted = 0");
        Ok(self.conn().query_row(&sql, [name], user_from_row).optional()?)
    }

    pub fn user_by_id(&self, id: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1 AND deleted = 0");
        Ok(self.conn().query_row(&sql, [id], user_from_row).optional()?)
    }

    pub fn users(&self) -> Result<Vec<User>> {
        self.users_where(&IdentityFilter::default())
    }

    pub fn users_where(&self, f: &IdentityFilter) -> Result<Vec<User>> {
        let (clauses, values) = filter_sql(f);
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE deleted = 0{clauses} ORDER BY name");
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(values), user_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes every token of the user (after a password change, as keystone does).
    pub fn revoke_user_tokens(&self, user_id: &str) -> Result<()> {
        self.conn().execute("UPDATE tokens SET revoked = 1 WHERE user_id = ?1", [user_id])?;
        Ok(())
    }

    /// Replaces a user's password hash (used when the plain password was lost).
    pub fn set_password_hash(&self, user_id: &str, password_hash: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE users SET password_hash = ?2, updated_at = ?3 WHERE id = ?1",
            params![user_id, password_hash, now()],
        )?;
        Ok(())
    }

    pub fn domains_where(&self, f: &IdentityFilter) -> Result<Vec<Domain>> {
        let (clauses, values) = filter_sql(&IdentityFilter { domain_id: None, ..f.clone() });
        let sql = format!("SELECT {DOMAIN_COLUMNS} FROM domains WHERE 1 = 1{clauses} ORDER BY name");
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(values), domain_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn domain_by_id(&self, id: &str) -> Result<Option<Domain>> {
        let sql = format!("SELECT {DOMAIN_COLUMNS} FROM domains WHERE id = ?1");
        Ok(self.conn().query_row(&sql, [id], domain_from_row).optional()?)
    }

    pub fn domain_by_name(&self, name: &str) -> Result<Option<Domain>> {
        let sql = format!("SELECT {DOMAIN_COLUMNS} FROM domains WHERE name = ?1");
        Ok(self.conn().query_row(&sql, [name], domain_from_row).optional()?)
    }

    pub fn create_domain(&self, name: &str, description: &str, enabled: bool) -> Result<Domain> {
        if self.domain_by_name(name)?.is_some() {
            return Err(DbError::Conflict(format!(
                "Conflict occurred attempting to store domain - Duplicate entry found with name {name}."
            )));
        }
        let id = new_hex_id();
        self.conn().execute(
            "INSERT INTO domains (id, name, description, enabled, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, name, description, enabled, now()],
        )?;
        self.domain_by_id(&id)?.ok_or_else(|| DbError::NotFound(format!("Could not find domain: {id}.")))
    }

    pub fn update_domain(
        &self,
        id: &str,
        name: Option<&str>,
        description: Option<&str>,
        enabled: Option<bool>,
    ) -> Result<Domain> {
        let cur = self.domain_by_id(id)?.ok_or_else(|| DbError::NotFound(format!("Could not find domain: {id}.")))?;
        if let Some(n) = name.filter(|n| *n != cur.name) {
            if self.domain_by_name(n)?.is_some() {
                return Err(DbError::Conflict(format!(
                    "Conflict occurred attempting to store domain - Duplicate entry found with name {n}."
                )));
            }
        }
        self.conn().execute(
            "UPDATE domains SET name = ?2, description = ?3, enabled = ?4 WHERE id = ?1",
            params![
                id,
                name.unwrap_or(&cur.name),
                description.unwrap_or(&cur.description),
                enabled.unwrap_or(cur.enabled)
            ],
        )?;
        self.domain_by_id(id)?.ok_or_else(|| DbError::NotFound(format!("Could not find domain: {id}.")))
    }

    /// Deletes a domain with its projects, users and groups, as keystone does.
    pub fn delete_domain(&self, id: &str) -> Result<()> {
        let tx = self.begin()?;
        let projects: Vec<String> = self
            .projects_where(&IdentityFilter { domain_id: Some(id.into()), ..Default::default() })?
            .into_iter()
            .map(|p| p.id)
            .collect();
        for p in projects {
            self.delete_project(&p)?;
        }
        let users: Vec<String> = self
            .users_where(&IdentityFilter { domain_id: Some(id.into()), ..Default::default() })?
            .into_iter()
            .map(|u| u.id)
            .collect();
        for u in users {
            self.delete_user(&u)?;
        }
        let groups: Vec<String> = self
            .groups_where(&IdentityFilter { domain_id: Some(id.into()), ..Default::default() })?
            .into_iter()
            .map(|g| g.id)
            .collect();
        for g in groups {
            self.delete_group(&g)?;
        }
        tx.execute("DELETE FROM scoped_role_assignments WHERE scope_type = 'domain' AND scope_id = ?1", [id])?;
        if tx.execute("DELETE FROM domains WHERE id = ?1", [id])? == 0 {
            return Err(DbError::NotFound(format!("Could not find domain: {id}.")));
        }
        tx.commit()?;
        Ok(())
    }

    pub fn ensure_role(&self, name: &str) -> Result<String> {
        if let Some(r) = self.role_by_name(name)? {
            return Ok(r.id);
        }
        Ok(self.create_role(name)?.id)
    }

    pub fn create_role(&self, name: &str) -> Result<Role> {
        if self.role_by_name(name)?.is_some() {
            return Err(DbError::Conflict(format!(
                "Conflict occurred attempting to store role - Duplicate entry found with name {name}."
            )));
        }
        let id = new_hex_id();
        self.conn().execute("INSERT INTO roles (id, name) VALUES (?1, ?2)", params![id, name])?;
        Ok(Role { id, name: name.into() })
    }

    /// Deletes a role and every assignment and inference of it.
    pub fn delete_role(&self, id: &str) -> Result<()> {
        if self.conn().execute("DELETE FROM roles WHERE id = ?1", [id])? == 0 {
            return Err(DbError::NotFound(format!("Could not find role: {id}.")));
        }
        Ok(())
    }

    pub fn role_by_name(&self, name: &str) -> Result<Option<Role>> {
        Ok(self.conn().query_row("SELECT id, name FROM roles WHERE name = ?1", [name], role_from_row).optional()?)
    }

    pub fn role_by_id(&self, id: &str) -> Result<Option<Role>> {
        Ok(self.conn().query_row("SELECT id, name FROM roles WHERE id = ?1", [id], role_from_row).optional()?)
    }

    pub fn roles(&self) -> Result<Vec<Role>> {
        let mut stmt = self.conn().prepare("SELECT id, name FROM roles ORDER BY name")?;
        let rows = stmt.query_map([], role_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Makes keystone's default roles and their implications (idempotent); returns the roles'
    /// ids by name.
    pub fn ensure_default_roles(&self) -> Result<std::collections::HashMap<&'static str, String>> {
        let mut ids = std::collections::HashMap::new();
        for name in crate::policy::DEFAULT_ROLES {
            ids.insert(*name, self.ensure_role(name)?);
        }
        for (prior, implied) in crate::policy::IMPLIED_ROLES {
            if let (Some(p), Some(i)) = (ids.get(prior), ids.get(implied)) {
                self.ensure_implied_role(p, i)?;
            }
        }
        Ok(ids)
    }

    /// Records that `prior` implies `implied` (keystone's implied_role).
    pub fn ensure_implied_role(&self, prior_role_id: &str, implied_role_id: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO implied_roles (prior_role_id, implied_role_id) VALUES (?1, ?2)",
            params![prior_role_id, implied_role_id],
        )?;
        Ok(())
    }

    /// Renames a role; keystone's 409 when another role has the name.
    pub fn rename_role(&self, id: &str, name: &str) -> Result<Role> {
        if self.role_by_name(name)?.is_some_and(|r| r.id != id) {
            return Err(DbError::Conflict(format!(
                "Conflict occurred attempting to store role - Duplicate entry found with name {name}."
            )));
        }
        if self.conn().execute("UPDATE roles SET name = ?2 WHERE id = ?1", params![id, name])? == 0 {
            return Err(DbError::NotFound(format!("Could not find role: {id}.")));
        }
        Ok(Role { id: id.into(), name: name.into() })
    }

    /// Whether `prior` implies `implied` directly.
    pub fn implies(&self, prior_role_id: &str, implied_role_id: &str) -> Result<bool> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM implied_roles WHERE prior_role_id = ?1 AND implied_role_id = ?2",
                params![prior_role_id, implied_role_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Forgets that `prior` implies `implied`; false when it did not.
    pub fn delete_implied_role(&self, prior_role_id: &str, implied_role_id: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM implied_roles WHERE prior_role_id = ?1 AND implied_role_id = ?2",
            params![prior_role_id, implied_role_id],
        )? > 0)
    }

    /// Every (prior, implied) pair.
    pub fn implied_roles(&self) -> Result<Vec<(Role, Role)>> {
        let mut stmt = self.conn().prepare(
            "SELECT p.id, p.name, i.id, i.name FROM implied_roles x
             JOIN roles p ON p.id = x.prior_role_id JOIN roles i ON i.id = x.implied_role_id ORDER BY p.name, i.name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((Role { id: r.get(0)?, name: r.get(1)? }, Role { id: r.get(2)?, name: r.get(3)? }))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn assign_role(&self, user_id: &str, project_id: &str, role_id: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO role_assignments (user_id, project_id, role_id) VALUES (?1, ?2, ?3)",
            params![user_id, project_id, role_id],
        )?;
        Ok(())
    }

    /// Removes an assignment; false when there was none.
    pub fn unassign_role(&self, user_id: &str, project_id: &str, role_id: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM role_assignments WHERE user_id = ?1 AND project_id = ?2 AND role_id = ?3",
            params![user_id, project_id, role_id],
        )? > 0)
    }

    /// The stored assignments matching the filters (`None`: any).
    pub fn assignments(
        &self,
        user_id: Option<&str>,
        project_id: Option<&str>,
        role_id: Option<&str>,
    ) -> Result<Vec<Assignment>> {
        let mut stmt = self.conn().prepare(
            "SELECT user_id, project_id, role_id FROM role_assignments
             WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR project_id = ?2) AND (?3 IS NULL OR role_id = ?3)
             ORDER BY user_id, project_id, role_id",
        )?;
        let rows = stmt.query_map(params![user_id, project_id, role_id], |r| {
            Ok(Assignment { user_id: r.get(0)?, project_id: r.get(1)?, role_id: r.get(2)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The names of the user's roles on the project, as assigned to it or to its groups.
    pub fn roles_of(&self, user_id: &str, project_id: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn().prepare(
            "SELECT r.name FROM roles r WHERE r.id IN (
                 SELECT role_id FROM role_assignments WHERE user_id = ?1 AND project_id = ?2
                 UNION SELECT g.role_id FROM group_role_assignments g JOIN group_members m ON m.group_id = g.group_id
                 WHERE m.user_id = ?1 AND g.project_id = ?2)
             ORDER BY r.name",
        )?;
        let rows = stmt.query_map(params![user_id, project_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The user's roles on the project with every role they imply, as a token lists them.
    pub fn effective_roles(&self, user_id: &str, project_id: &str) -> Result<Vec<Role>> {
        let mut stmt = self.conn().prepare(
            "WITH RECURSIVE eff(role_id) AS (
                 SELECT role_id FROM role_assignments WHERE user_id = ?1 AND project_id = ?2
                 UNION SELECT g.role_id FROM group_role_assignments g JOIN group_members m ON m.group_id = g.group_id
                 WHERE m.user_id = ?1 AND g.project_id = ?2
                 UNION SELECT x.implied_role_id FROM implied_roles x JOIN eff ON eff.role_id = x.prior_role_id)
             SELECT r.id, r.name FROM eff JOIN roles r ON r.id = eff.role_id ORDER BY r.name",
        )?;
        let rows = stmt.query_map(params![user_id, project_id], role_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn create_group(&self, name: &str, description: &str, domain_id: &str) -> Result<Group> {
        if self.group_by_name(name)?.is_some() {
            return Err(DbError::Conflict(format!(
                "Conflict occurred attempting to store group - Duplicate entry found with name {name} at domain ID {domain_id}."
            )));
        }
        let id = new_hex_id();
        self.conn().execute(
            "INSERT INTO groups (id, name, description, domain_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, name, description, domain_id, now()],
        )?;
        Ok(Group { id, name: name.into(), description: description.into(), domain_id: domain_id.into() })
    }

    pub fn update_group(&self, id: &str, name: Option<&str>, description: Option<&str>) -> Result<Group> {
        let cur = self.group_by_id(id)?.ok_or_else(|| DbError::NotFound(format!("Could not find group: {id}.")))?;
        if let Some(n) = name.filter(|n| *n != cur.name) {
            if self.group_by_name(n)?.is_some() {
                return Err(DbError::Conflict(format!(
                    "Conflict occurred attempting to store group - Duplicate entry found with name {n} at domain ID {}.",
                    cur.domain_id
                )));
            }
        }
        self.conn().execute(
            "UPDATE groups SET name = ?2, description = ?3 WHERE id = ?1",
            params![id, name.unwrap_or(&cur.name), description.unwrap_or(&cur.description)],
        )?;
        self.group_by_id(id)?.ok_or_else(|| DbError::NotFound(format!("Could not find group: {id}.")))
    }

    /// Deletes a group with its memberships and role assignments.
    pub fn delete_group(&self, id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM scoped_role_assignments WHERE actor_type = 'group' AND actor_id = ?1", [id])?;
        if self.conn().execute("DELETE FROM groups WHERE id = ?1", [id])? == 0 {
            return Err(DbError::NotFound(format!("Could not find group: {id}.")));
        }
        Ok(())
    }

    pub fn group_by_id(&self, id: &str) -> Result<Option<Group>> {
        let sql = "SELECT id, name, description, domain_id FROM groups WHERE id = ?1";
        Ok(self.conn().query_row(sql, [id], group_from_row).optional()?)
    }

    pub fn group_by_name(&self, name: &str) -> Result<Option<Group>> {
        let sql = "SELECT id, name, description, domain_id FROM groups WHERE name = ?1";
        Ok(self.conn().query_row(sql, [name], group_from_row).optional()?)
    }

    pub fn groups_where(&self, f: &IdentityFilter) -> Result<Vec<Group>> {
        let (clauses, values) = filter_sql(&IdentityFilter { enabled: None, ..f.clone() });
        let sql = format!("SELECT id, name, description, domain_id FROM groups WHERE 1 = 1{clauses} ORDER BY name");
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(values), group_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Adds a member (idempotent).
    pub fn add_group_member(&self, group_id: &str, user_id: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO group_members (group_id, user_id) VALUES (?1, ?2)",
            params![group_id, user_id],
        )?;
        Ok(())
    }

    /// Removes a member; false when it was none.
    pub fn remove_group_member(&self, group_id: &str, user_id: &str) -> Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2", params![group_id, user_id])?
            > 0)
    }

    /// The members of a group.
    pub fn group_members(&self, group_id: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn().prepare("SELECT user_id FROM group_members WHERE group_id = ?1 ORDER BY user_id")?;
        let rows = stmt.query_map([group_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The groups of a user.
    pub fn groups_of(&self, user_id: &str) -> Result<Vec<Group>> {
        let mut stmt = self.conn().prepare(
            "SELECT g.id, g.name, g.description, g.domain_id FROM groups g JOIN group_members m ON m.group_id = g.id
             WHERE m.user_id = ?1 ORDER BY g.name",
        )?;
        let rows = stmt.query_map([user_id], group_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn assign_group_role(&self, group_id: &str, project_id: &str, role_id: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO group_role_assignments (group_id, project_id, role_id) VALUES (?1, ?2, ?3)",
            params![group_id, project_id, role_id],
        )?;
        Ok(())
    }

    pub fn unassign_group_role(&self, group_id: &str, project_id: &str, role_id: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM group_role_assignments WHERE group_id = ?1 AND project_id = ?2 AND role_id = ?3",
            params![group_id, project_id, role_id],
        )? > 0)
    }

    /// The stored group assignments matching the filters (`None`: any).
    pub fn group_assignments(
        &self,
        group_id: Option<&str>,
        project_id: Option<&str>,
        role_id: Option<&str>,
    ) -> Result<Vec<GroupAssignment>> {
        let mut stmt = self.conn().prepare(
            "SELECT group_id, project_id, role_id FROM group_role_assignments
             WHERE (?1 IS NULL OR group_id = ?1) AND (?2 IS NULL OR project_id = ?2) AND (?3 IS NULL OR role_id = ?3)
             ORDER BY group_id, project_id, role_id",
        )?;
        let rows = stmt.query_map(params![group_id, project_id, role_id], |r| {
            Ok(GroupAssignment { group_id: r.get(0)?, project_id: r.get(1)?, role_id: r.get(2)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn assign_scoped_role(&self, a: &ScopedAssignment) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO scoped_role_assignments (actor_type, actor_id, scope_type, scope_id, role_id)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![a.actor_type, a.actor_id, a.scope_type, a.scope_id, a.role_id],
        )?;
        Ok(())
    }

    /// Removes a domain or system assignment; false when there was none.
    pub fn unassign_scoped_role(&self, a: &ScopedAssignment) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM scoped_role_assignments
             WHERE actor_type = ?1 AND actor_id = ?2 AND scope_type = ?3 AND scope_id = ?4 AND role_id = ?5",
            params![a.actor_type, a.actor_id, a.scope_type, a.scope_id, a.role_id],
        )? > 0)
    }

    /// The stored domain and system assignments matching the filters (`None`: any).
    pub fn scoped_assignments(
        &self,
        actor_type: Option<&str>,
        actor_id: Option<&str>,
        scope_type: Option<&str>,
        scope_id: Option<&str>,
    ) -> Result<Vec<ScopedAssignment>> {
        let mut stmt = self.conn().prepare(
            "SELECT actor_type, actor_id, scope_type, scope_id, role_id FROM scoped_role_assignments
             WHERE (?1 IS NULL OR actor_type = ?1) AND (?2 IS NULL OR actor_id = ?2)
               AND (?3 IS NULL OR scope_type = ?3) AND (?4 IS NULL OR scope_id = ?4)
             ORDER BY actor_type, actor_id, scope_type, scope_id, role_id",
        )?;
        let rows = stmt.query_map(params![actor_type, actor_id, scope_type, scope_id], |r| {
            Ok(ScopedAssignment {
                actor_type: r.get(0)?,
                actor_id: r.get(1)?,
                scope_type: r.get(2)?,
                scope_id: r.get(3)?,
                role_id: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The user's roles on a domain (`scope_type` `domain`) or the system (`system`, `all`),
    /// its own and its groups', with every role they imply.
    pub fn effective_scoped_roles(&self, user_id: &str, scope_type: &str, scope_id: &str) -> Result<Vec<Role>> {
        let mut stmt = self.conn().prepare(
            "WITH RECURSIVE eff(role_id) AS (
                 SELECT role_id FROM scoped_role_assignments
                 WHERE scope_type = ?2 AND scope_id = ?3 AND (
                     (actor_type = 'user' AND actor_id = ?1)
                     OR (actor_type = 'group' AND actor_id IN (SELECT group_id FROM group_members WHERE user_id = ?1)))
                 UNION SELECT x.implied_role_id FROM implied_roles x JOIN eff ON eff.role_id = x.prior_role_id)
             SELECT r.id, r.name FROM eff JOIN roles r ON r.id = eff.role_id ORDER BY r.name",
        )?;
        let rows = stmt.query_map(params![user_id, scope_type, scope_id], role_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The enabled users holding `role_id` on some enabled project (themselves or by a group),
    /// or on the system.
    pub fn holders_of(&self, role_id: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn().prepare(
            "SELECT DISTINCT a.user_id FROM (
                 SELECT user_id, project_id, role_id FROM role_assignments
                 UNION SELECT m.user_id, g.project_id, g.role_id FROM group_role_assignments g
                 JOIN group_members m ON m.group_id = g.group_id) a
             JOIN users u ON u.id = a.user_id JOIN projects p ON p.id = a.project_id
             WHERE a.role_id = ?1 AND u.deleted = 0 AND u.enabled = 1 AND p.deleted = 0 AND p.enabled = 1
             UNION SELECT u.id FROM scoped_role_assignments s JOIN users u ON u.id = s.actor_id
             WHERE s.actor_type = 'user' AND s.scope_type = 'system' AND s.role_id = ?1 AND u.deleted = 0 AND u.enabled = 1",
        )?;
        let rows = stmt.query_map([role_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use crate::db::{Db, DbError, OpenOptions};

    #[test]
    fn ensure_is_idempotent_and_keeps_passwords() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("d.db"), OpenOptions::default()).unwrap();
        let p1 = db.ensure_project("demo", "").unwrap();
        let p2 = db.ensure_project("demo", "other").unwrap();
        assert_eq!(p1, p2);
        let (u1, created) = db.ensure_user("demo", "hash-1", &p1).unwrap();
        assert!(created);
        let (u2, created) = db.ensure_user("demo", "hash-2", &p1).unwrap();
        assert!(!created);
        assert_eq!(u1, u2);
        assert_eq!(db.user_by_name("demo").unwrap().unwrap().password_hash, "hash-1");
        let r = db.ensure_role("member").unwrap();
        db.assign_role(&u1, &p1, &r).unwrap();
        db.assign_role(&u1, &p1, &r).unwrap();
        assert_eq!(db.roles_of(&u1, &p1).unwrap(), vec!["member".to_string()]);
    }

    #[test]
    fn an_existing_cloud_gains_the_default_domain_and_implied_roles_on_upgrade() {
        use rusqlite_migration::{Migrations, M};
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("novabox.db");
        let all = crate::db::MIGRATIONS;
        let ours = all.iter().position(|m| m.contains("CREATE TABLE implied_roles")).unwrap();
        {
            // The database as the previous release left it: its roles and an admin.
            let mut c = rusqlite::Connection::open(&path).unwrap();
            Migrations::new(all[..ours].iter().map(|sql| M::up(sql)).collect()).to_latest(&mut c).unwrap();
            c.pragma_update(None, "application_id", super::super::APPLICATION_ID).unwrap();
            c.execute_batch(
                "INSERT INTO projects (id, name, created_at) VALUES ('p', 'admin', 'x');
                 INSERT INTO users (id, name, password_hash, created_at) VALUES ('u', 'admin', 'h', 'x');
                 INSERT INTO roles (id, name) VALUES ('ra', 'admin'), ('rm', 'member'), ('rr', 'reader');
                 INSERT INTO role_assignments VALUES ('u', 'p', 'ra');",
            )
            .unwrap();
        }
        let db = Db::open(&path, OpenOptions::default()).unwrap();
        let names: Vec<String> = db.effective_roles("u", "p").unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["admin", "manager", "member", "reader"]);
        assert_eq!(db.user_by_id("u").unwrap().unwrap().domain_id, "default");
        assert_eq!(db.domain_by_id("default").unwrap().unwrap().name, "Default");
        assert!(db.role_by_name("service").unwrap().is_some());
        // Running the bootstrap again changes nothing.
        db.ensure_default_roles().unwrap();
        assert_eq!(db.implied_roles().unwrap().len(), 3);
    }

    #[test]
    fn a_deleted_project_frees_its_name_and_keeps_its_row_for_other_services() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("d.db"), OpenOptions::default()).unwrap();
        let p = db.ensure_project("p", "").unwrap();
        let (u, _) = db.ensure_user("u", "h", &p).unwrap();
        let r = db.ensure_role("member").unwrap();
        db.assign_role(&u, &p, &r).unwrap();
        db.delete_project(&p).unwrap();
        assert!(db.project_by_id(&p).unwrap().is_none());
        assert!(db.assignments(Some(&u), None, None).unwrap().is_empty());
        assert_eq!(db.user_by_id(&u).unwrap().unwrap().default_project_id, None);
        let rows: i64 = db.conn().query_row("SELECT count(*) FROM projects WHERE id = ?1", [&p], |r| r.get(0)).unwrap();
        assert_eq!(rows, 1, "the row stays for instances and volumes that name it");
        assert_ne!(db.ensure_project("p", "").unwrap(), p, "the name is free again");
        assert!(matches!(db.delete_project(&p), Err(DbError::NotFound(_))));
    }
}
