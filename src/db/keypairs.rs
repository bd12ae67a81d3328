//! SSH keypairs, owned by users (not projects), as in nova.

use rusqlite::{params, OptionalExtension, Row};

use super::{now, Db, DbError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Keypair {
    pub id: i64,
    pub name: String,
    pub user_id: String,
    pub fingerprint: String,
    pub public_key: String,
    pub key_type: String,
    pub created_at: String,
}

const COLUMNS: &str = "id, name, user_id, fingerprint, public_key, type, created_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Keypair> {
    Ok(Keypair {
        id: r.get(0)?,
        name: r.get(1)?,
        user_id: r.get(2)?,
        fingerprint: r.get(3)?,
        public_key: r.get(4)?,
        key_type: r.get(5)?,
        created_at: r.get(6)?,
    })
}

impl Db {
    pub fn create_keypair(
        &self,
        user_id: &str,
        name: &str,
        public_key: &str,
        fingerprint: &str,
        key_type: &str,
    ) -> Result<Keypair> {
        let r = self.conn().execute(
            "INSERT INTO keypairs (name, user_id, fingerprint, public_key, type, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, user_id, fingerprint, public_key, key_type, now()],
        );
        match r {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                return Err(DbError::Conflict(format!("Key pair '{name}' already exists.")))
            }
            other => {
                other?;
            }
        }
        self.keypair(user_id, name)?.ok_or_else(|| DbError::Conflict("keypair vanished".into()))
    }

    pub fn keypair(&self, user_id: &str, name: &str) -> Result<Option<Keypair>> {
        let sql = format!("SELECT {COLUMNS} FROM keypairs WHERE user_id = ?1 AND name = ?2 AND deleted = 0");
        Ok(self.conn().query_row(&sql, params![user_id, name], from_row).optional()?)
    }

    pub fn keypairs(&self, user_id: &str) -> Result<Vec<Keypair>> {
        let sql = format!("SELECT {COLUMNS} FROM keypairs WHERE user_id = ?1 AND deleted = 0 ORDER BY name");
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map([user_id], from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_keypair(&self, user_id: &str, name: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE keypairs SET deleted = id, deleted_at = ?3 WHERE user_id = ?1 AND name = ?2 AND deleted = 0",
            params![user_id, name, now()],
        )? > 0)
    }
}
