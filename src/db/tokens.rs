//! Keystone tokens: only their sha256 is stored, so a copy of the database cannot be replayed.

use rusqlite::{params, OptionalExtension};

use super::{now, Db, Result};

/// What a valid token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub audit_id: String,
    pub user_id: String,
    pub user_name: String,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
    pub methods: Vec<String>,
    pub issued_at: String,
    pub expires_at: String,
    pub roles: Vec<(String, String)>,
}

impl Db {
    #[allow(clippy::too_many_arguments)] // one column each; a struct would only rename them
    pub fn insert_token(
        &self,
        token_hash: &str,
        audit_id: &str,
        user_id: &str,
        project_id: Option<&str>,
        methods: &[String],
        issued_at: &str,
        expires_at: &str,
    ) -> Result<()> {
        let methods = serde_json::to_string(methods).unwrap_or_else(|_| "[]".into());
        self.conn().execute(
            "INSERT INTO tokens (token_hash, audit_id, user_id, project_id, methods, issued_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![token_hash, audit_id, user_id, project_id, methods, issued_at, expires_at],
        )?;
        // Expired tokens are useless; dropping them here keeps the table small without a timer.
        self.conn().execute("DELETE FROM tokens WHERE expires_at < ?1", [now()])?;
        Ok(())
    }

    /// The token's record when it is known, not revoked, not expired, and its user and
    /// project are enabled.
    pub fn valid_token(&self, token_hash: &str) -> Result<Option<TokenRecord>> {
        let row = self
            .conn()
            .query_row(
                "SELECT t.audit_id, t.user_id, u.name, t.project_id, p.name, t.methods, t.issued_at, t.expires_at
                 FROM tokens t JOIN users u ON u.id = t.user_id LEFT JOIN projects p ON p.id = t.project_id
                 WHERE t.token_hash = ?1 AND t.revoked = 0 AND t.expires_at > ?2 AND u.enabled = 1
                   AND (t.project_id IS NULL OR p.enabled = 1)",
                params![token_hash, now()],
                |r| {
                    Ok(TokenRecord {
                        audit_id: r.get(0)?,
                        user_id: r.get(1)?,
                        user_name: r.get(2)?,
                        project_id: r.get(3)?,
                        project_name: r.get(4)?,
                        methods: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
                        issued_at: r.get(6)?,
                        expires_at: r.get(7)?,
                        roles: Vec::new(),
                    })
                },
            )
            .optional()?;
        let Some(mut rec) = row else { return Ok(None) };
        if let Some(project_id) = &rec.project_id {
            let mut stmt = self.conn().prepare(
                "SELECT r.id, r.name FROM role_assignments a JOIN roles r ON r.id = a.role_id
                 WHERE a.user_id = ?1 AND a.project_id = ?2 ORDER BY r.name",
            )?;
            rec.roles = stmt
                .query_map(params![rec.user_id, project_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
        }
        Ok(Some(rec))
    }

    pub fn revoke_token(&self, token_hash: &str) -> Result<bool> {
        Ok(self.conn().execute("UPDATE tokens SET revoked = 1 WHERE token_hash = ?1", [token_hash])? > 0)
    }
}
