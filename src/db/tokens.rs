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
    /// Set for a domain-scoped token.
    pub domain_id: Option<String>,
    /// A system-scoped token.
    pub system: bool,
    /// The application credential the token was made with; its roles are the most it has.
    pub application_credential_id: Option<String>,
    pub methods: Vec<String>,
    pub issued_at: String,
    pub expires_at: String,
    pub roles: Vec<(String, String)>,
}

/// A token to store: only its hash, never the token.
#[derive(Debug, Clone, Copy)]
pub struct NewToken<'a> {
    pub token_hash: &'a str,
    pub audit_id: &'a str,
    pub user_id: &'a str,
    pub project_id: Option<&'a str>,
    pub domain_id: Option<&'a str>,
    pub system: bool,
    pub application_credential_id: Option<&'a str>,
    pub methods: &'a [String],
    pub issued_at: &'a str,
    pub expires_at: &'a str,
}

impl Db {
    /// Stores a token, and retires the user's oldest tokens beyond `max_per_user` (0: keep
    /// all), so however fast one user logs in the table stays bounded by users x the cap.
    pub fn insert_token(&self, t: &NewToken<'_>, max_per_user: u32) -> Result<()> {
        let methods = serde_json::to_string(t.methods).unwrap_or_else(|_| "[]".into());
        let tx = self.begin()?;
        tx.execute(
            "INSERT INTO tokens (token_hash, audit_id, user_id, project_id, domain_id, system, methods, issued_at,
                                 expires_at, application_credential_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                t.token_hash,
                t.audit_id,
                t.user_id,
                t.project_id,
                t.domain_id,
                t.system,
                methods,
                t.issued_at,
                t.expires_at,
                t.application_credential_id
            ],
        )?;
        // Expired tokens are useless; dropping them here keeps the table small without a timer.
        tx.execute("DELETE FROM tokens WHERE expires_at < ?1", [now()])?;
        if max_per_user > 0 {
            tx.execute(
                "DELETE FROM tokens WHERE token_hash IN (
                     SELECT token_hash FROM tokens WHERE user_id = ?1
                     ORDER BY issued_at DESC, rowid DESC LIMIT -1 OFFSET ?2)",
                params![t.user_id, max_per_user],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// How many tokens the table holds for `user_id`, revoked ones included.
    pub fn token_count(&self, user_id: &str) -> Result<u64> {
        Ok(self.conn().query_row("SELECT count(*) FROM tokens WHERE user_id = ?1", [user_id], |r| r.get(0))?)
    }

    /// The token's record when it is known, not revoked, not expired, and its user and
    /// project, and their domains, are enabled (a deleted one is disabled too), and the user
    /// still has a role on the project.
    pub fn valid_token(&self, token_hash: &str) -> Result<Option<TokenRecord>> {
        let row = self
            .conn()
            .query_row(
                "SELECT t.audit_id, t.user_id, u.name, t.project_id, p.name, t.methods, t.issued_at, t.expires_at,
                        t.domain_id, t.system, t.application_credential_id
                 FROM tokens t JOIN users u ON u.id = t.user_id JOIN domains ud ON ud.id = u.domain_id
                 LEFT JOIN projects p ON p.id = t.project_id LEFT JOIN domains pd ON pd.id = p.domain_id
                 LEFT JOIN domains sd ON sd.id = t.domain_id
                 WHERE t.token_hash = ?1 AND t.revoked = 0 AND t.expires_at > ?2 AND u.enabled = 1 AND ud.enabled = 1
                   AND (t.project_id IS NULL OR (p.enabled = 1 AND pd.enabled = 1))
                   AND (t.domain_id IS NULL OR sd.enabled = 1)",
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
                        domain_id: r.get(8)?,
                        system: r.get(9)?,
                        application_credential_id: r.get(10)?,
                        roles: Vec::new(),
                    })
                },
            )
            .optional()?;
        let Some(mut rec) = row else { return Ok(None) };
        if let Some(project_id) = &rec.project_id {
            // keystone lists the implied roles too: a member's token says reader as well.
            rec.roles = self.effective_roles(&rec.user_id, project_id)?.into_iter().map(|r| (r.id, r.name)).collect();
            if let Some(id) = &rec.application_credential_id {
                // An application credential's token has its roles (and what they imply), and
                // only while the user still holds them; it ends with the credential.
                let Some(cred) =
                    self.app_cred(id)?.filter(|c| c.expires_at.as_deref().is_none_or(|e| e > now().as_str()))
                else {
                    return Ok(None);
                };
                let implied = self.implied_roles()?;
                let mut allowed = cred.roles.clone();
                let mut i = 0;
                while i < allowed.len() {
                    let prior = allowed[i].clone();
                    for (p, r) in &implied {
                        if p.id == prior && !allowed.contains(&r.id) {
                            allowed.push(r.id.clone());
                        }
                    }
                    i += 1;
                }
                rec.roles.retain(|(id, _)| allowed.contains(id));
            }
            // keystone recomputes the roles at validation: a token of a user who lost every
            // role on its project (a revoked grant, a group left) is no longer valid.
            if rec.roles.is_empty() {
                return Ok(None);
            }
        } else if let Some(domain_id) = &rec.domain_id {
            rec.roles = self
                .effective_scoped_roles(&rec.user_id, "domain", domain_id)?
                .into_iter()
                .map(|r| (r.id, r.name))
                .collect();
            if rec.roles.is_empty() {
                return Ok(None);
            }
        } else if rec.system {
            rec.roles = self
                .effective_scoped_roles(&rec.user_id, "system", "all")?
                .into_iter()
                .map(|r| (r.id, r.name))
                .collect();
            if rec.roles.is_empty() {
                return Ok(None);
            }
        }
        Ok(Some(rec))
    }

    pub fn revoke_token(&self, token_hash: &str) -> Result<bool> {
        Ok(self.conn().execute("UPDATE tokens SET revoked = 1 WHERE token_hash = ?1", [token_hash])? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Db, OpenOptions};

    #[test]
    fn a_user_keeps_only_its_newest_tokens_and_others_are_untouched() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        let project = db.ensure_project("p", "").unwrap();
        let (u1, _) = db.ensure_user("u1", "x", &project).unwrap();
        let (u2, _) = db.ensure_user("u2", "x", &project).unwrap();
        let methods = vec!["password".to_string()];
        let insert = |hash: &str, user: &str, second: u32| {
            let issued = format!("2099-01-01T00:00:{second:02}Z");
            let token = NewToken {
                token_hash: hash,
                audit_id: hash,
                user_id: user,
                project_id: None,
                domain_id: None,
                system: false,
                application_credential_id: None,
                methods: &methods,
                issued_at: &issued,
                expires_at: "2099-12-31T00:00:00Z",
            };
            db.insert_token(&token, 3).unwrap();
        };
        insert("other", &u2, 0);
        for i in 0..6 {
            insert(&format!("t{i}"), &u1, i + 1);
        }
        assert_eq!(db.token_count(&u1).unwrap(), 3);
        assert_eq!(db.token_count(&u2).unwrap(), 1);
        for i in 0..3 {
            assert!(db.valid_token(&format!("t{i}")).unwrap().is_none(), "t{i} should be retired");
        }
        for i in 3..6 {
            assert!(db.valid_token(&format!("t{i}")).unwrap().is_some(), "t{i} should be kept");
        }
    }
}
