//! Keystone's application credentials: rows only; who may use them is the API's business.

use rusqlite::{params, OptionalExtension};

use super::{now, Db, DbError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCred {
    pub id: String,
    pub user_id: String,
    pub project_id: String,
    pub name: String,
    pub description: Option<String>,
    pub secret_hash: String,
    pub expires_at: Option<String>,
    pub unrestricted: bool,
    /// The ids of the roles it delegates.
    pub roles: Vec<String>,
}

const COLUMNS: &str = "id, user_id, project_id, name, description, secret_hash, expires_at, unrestricted, roles";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AppCred> {
    Ok(AppCred {
        id: r.get(0)?,
        user_id: r.get(1)?,
        project_id: r.get(2)?,
        name: r.get(3)?,
        description: r.get(4)?,
        secret_hash: r.get(5)?,
        expires_at: r.get(6)?,
        unrestricted: r.get(7)?,
        roles: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or_default(),
    })
}

impl Db {
    /// Stores an application credential; a name the user already used is a conflict.
    pub fn insert_app_cred(&self, a: &AppCred) -> Result<()> {
        let taken: Option<String> = self
            .conn()
            .query_row(
                "SELECT id FROM application_credentials WHERE user_id = ?1 AND name = ?2",
                params![a.user_id, a.name],
                |r| r.get(0),
            )
            .optional()?;
        if taken.is_some() {
            return Err(DbError::Conflict(format!(
                "Conflict occurred attempting to store application_credential - Duplicate entry found with name {}.",
                a.name
            )));
        }
        let roles = serde_json::to_string(&a.roles).unwrap_or_else(|_| "[]".into());
        self.conn().execute(
            "INSERT INTO application_credentials
                 (id, user_id, project_id, name, description, secret_hash, expires_at, unrestricted, roles, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                a.id,
                a.user_id,
                a.project_id,
                a.name,
                a.description,
                a.secret_hash,
                a.expires_at,
                a.unrestricted,
                roles,
                now()
            ],
        )?;
        Ok(())
    }

    pub fn app_cred(&self, id: &str) -> Result<Option<AppCred>> {
        let sql = format!("SELECT {COLUMNS} FROM application_credentials WHERE id = ?1");
        Ok(self.conn().query_row(&sql, [id], from_row).optional()?)
    }

    pub fn app_cred_by_name(&self, user_id: &str, name: &str) -> Result<Option<AppCred>> {
        let sql = format!("SELECT {COLUMNS} FROM application_credentials WHERE user_id = ?1 AND name = ?2");
        Ok(self.conn().query_row(&sql, params![user_id, name], from_row).optional()?)
    }

    pub fn app_creds_of(&self, user_id: &str) -> Result<Vec<AppCred>> {
        let sql = format!("SELECT {COLUMNS} FROM application_credentials WHERE user_id = ?1 ORDER BY name");
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map([user_id], from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes it and revokes the tokens made with it.
    pub fn delete_app_cred(&self, id: &str) -> Result<bool> {
        let tx = self.begin()?;
        let n = tx.execute("DELETE FROM application_credentials WHERE id = ?1", [id])?;
        tx.execute("UPDATE tokens SET revoked = 1 WHERE application_credential_id = ?1", [id])?;
        tx.commit()?;
        Ok(n > 0)
    }
}
