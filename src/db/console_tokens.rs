//! nova's console auth tokens (`console_auth_tokens`): what a console URL carries. Only the
//! token's sha256 is stored; a token opens one console type of one instance until it expires,
//! and deleting the instance deletes its tokens (a trigger of migration 0022).

use rusqlite::{params, OptionalExtension};

use super::{now, Db, Result};

/// What a valid console token opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleToken {
    pub instance_uuid: String,
    /// nova's console type: `novnc` or `serial`.
    pub console_type: String,
    pub expires_at: String,
}

impl Db {
    /// Stores a console token by its hash, valid until `expires_at` (`db::now()`'s format).
    pub fn insert_console_token(
        &self,
        token_hash: &str,
        instance_uuid: &str,
        console_type: &str,
        expires_at: &str,
    ) -> Result<()> {
        let tx = self.begin()?;
        // Expired tokens open nothing; dropping them here keeps the table small without a timer.
        tx.execute("DELETE FROM console_auth_tokens WHERE expires_at <= ?1", [now()])?;
        tx.execute(
            "INSERT INTO console_auth_tokens (token_hash, instance_uuid, console_type, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token_hash, instance_uuid, console_type, now(), expires_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The token with this hash, when it has not expired and its instance is not deleted.
    pub fn valid_console_token(&self, token_hash: &str) -> Result<Option<ConsoleToken>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT t.instance_uuid, t.console_type, t.expires_at FROM console_auth_tokens t
                 JOIN instances i ON i.uuid = t.instance_uuid AND i.deleted = 0
                 WHERE t.token_hash = ?1 AND t.expires_at > ?2",
                params![token_hash, now()],
                |r| Ok(ConsoleToken { instance_uuid: r.get(0)?, console_type: r.get(1)?, expires_at: r.get(2)? }),
            )
            .optional()?)
    }

    /// Revokes every console token of an instance; returns how many there were.
    pub fn delete_console_tokens(&self, instance_uuid: &str) -> Result<usize> {
        Ok(self.conn().execute("DELETE FROM console_auth_tokens WHERE instance_uuid = ?1", [instance_uuid])?)
    }
}

#[cfg(test)]
mod tests {
    use crate::db::instances::tests::new_instance;
    use crate::db::{Db, OpenOptions};

    fn at(offset_secs: i64) -> String {
        (crate::clock::now() + chrono::Duration::seconds(offset_secs)).format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    #[test]
    fn a_token_opens_its_instance_until_it_expires_or_the_instance_is_deleted() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        let inst = db.create_instance(&new_instance(&db, "vm")).unwrap();
        db.insert_console_token("live", &inst.uuid, "serial", &at(600)).unwrap();
        db.insert_console_token("stale", &inst.uuid, "novnc", &at(-1)).unwrap();
        let found = db.valid_console_token("live").unwrap().expect("a live token");
        assert_eq!((found.instance_uuid.as_str(), found.console_type.as_str()), (inst.uuid.as_str(), "serial"));
        assert_eq!(db.valid_console_token("stale").unwrap(), None, "an expired token opened a console");
        assert_eq!(db.valid_console_token("nope").unwrap(), None);
        // The next insert sweeps the expired one out of the table.
        db.insert_console_token("other", &inst.uuid, "novnc", &at(600)).unwrap();
        assert_eq!(db.delete_console_tokens("none-such").unwrap(), 0);
        // Deleting the instance (by whatever path: the trigger) revokes its tokens.
        assert!(db.destroy_instance(&inst.uuid).unwrap());
        assert_eq!(db.valid_console_token("live").unwrap(), None, "a deleted server's token opened a console");
        assert_eq!(db.delete_console_tokens(&inst.uuid).unwrap(), 0, "the trigger left tokens behind");
    }
}
