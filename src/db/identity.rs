//! Projects, users, roles and their assignments.

use rusqlite::{params, OptionalExtension};

use super::{new_hex_id, now, Db, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub name: String,
    pub password_hash: String,
    pub default_project_id: Option<String>,
    pub enabled: bool,
}

const PROJECT_COLUMNS: &str = "id, name, description, enabled";
const USER_COLUMNS: &str = "id, name, password_hash, default_project_id, enabled";

fn project_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project { id: r.get(0)?, name: r.get(1)?, description: r.get(2)?, enabled: r.get(3)? })
}

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        password_hash: r.get(2)?,
        default_project_id: r.get(3)?,
        enabled: r.get(4)?,
    })
}

impl Db {
    /// Returns the project's id, creating it when absent. Existing rows are never changed.
    pub fn ensure_project(&self, name: &str, description: &str) -> Result<String> {
        if let Some(p) = self.project_by_name(name)? {
            return Ok(p.id);
        }
        let id = new_hex_id();
        self.conn().execute(
            "INSERT INTO projects (id, name, description, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, name, description, now()],
        )?;
        Ok(id)
    }

    pub fn project_by_name(&self, name: &str) -> Result<Option<Project>> {
        let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE name = ?1");
        Ok(self.conn().query_row(&sql, [name], project_from_row).optional()?)
    }

    pub fn project_by_id(&self, id: &str) -> Result<Option<Project>> {
        let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?1");
        Ok(self.conn().query_row(&sql, [id], project_from_row).optional()?)
    }

    pub fn projects(&self) -> Result<Vec<Project>> {
        let mut stmt = self.conn().prepare(&format!("SELECT {PROJECT_COLUMNS} FROM projects ORDER BY name"))?;
        let rows = stmt.query_map([], project_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Creates the user with `password_hash` when absent; an existing user keeps its password.
    /// Returns the user's id and whether it was created now.
    pub fn ensure_user(&self, name: &str, password_hash: &str, default_project_id: &str) -> Result<(String, bool)> {
        if let Some(u) = self.user_by_name(name)? {
            return Ok((u.id, false));
        }
        let id = new_hex_id();
        self.conn().execute(
            "INSERT INTO users (id, name, password_hash, default_project_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, name, password_hash, default_project_id, now()],
        )?;
        Ok((id, true))
    }

    pub fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1");
        Ok(self.conn().query_row(&sql, [name], user_from_row).optional()?)
    }

    pub fn user_by_id(&self, id: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1");
        Ok(self.conn().query_row(&sql, [id], user_from_row).optional()?)
    }

    pub fn users(&self) -> Result<Vec<User>> {
        let mut stmt = self.conn().prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))?;
        let rows = stmt.query_map([], user_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Replaces a user's password hash (used when the plain password was lost).
    pub fn set_password_hash(&self, user_id: &str, password_hash: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE users SET password_hash = ?2, updated_at = ?3 WHERE id = ?1",
            params![user_id, password_hash, now()],
        )?;
        Ok(())
    }

    pub fn ensure_role(&self, name: &str) -> Result<String> {
        let existing: Option<String> =
            self.conn().query_row("SELECT id FROM roles WHERE name = ?1", [name], |r| r.get(0)).optional()?;
        if let Some(id) = existing {
            return Ok(id);
        }
        let id = new_hex_id();
        self.conn().execute("INSERT INTO roles (id, name) VALUES (?1, ?2)", params![id, name])?;
        Ok(id)
    }

    pub fn assign_role(&self, user_id: &str, project_id: &str, role_id: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO role_assignments (user_id, project_id, role_id) VALUES (?1, ?2, ?3)",
            params![user_id, project_id, role_id],
        )?;
        Ok(())
    }

    /// The names of the user's roles on the project.
    pub fn roles_of(&self, user_id: &str, project_id: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn().prepare(
            "SELECT r.name FROM role_assignments a JOIN roles r ON r.id = a.role_id
             WHERE a.user_id = ?1 AND a.project_id = ?2 ORDER BY r.name",
        )?;
        let rows = stmt.query_map(params![user_id, project_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use crate::db::{Db, OpenOptions};

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
}
