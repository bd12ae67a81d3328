//! What keystone keeps beside a project's and a user's columns: project tags, and the user
//! attributes it has no column for (`extra`).

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::params;

use super::{Db, DbError, Result};

impl Db {
    /// The project's tags, in order.
    pub fn project_tags(&self, project_id: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn().prepare_cached("SELECT tag FROM project_tags WHERE project_id = ?1 ORDER BY tag")?;
        let rows = stmt.query_map([project_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every project's tags, for listing and filtering.
    pub fn all_project_tags(&self) -> Result<BTreeMap<String, BTreeSet<String>>> {
        let mut stmt = self.conn().prepare_cached("SELECT project_id, tag FROM project_tags")?;
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (p, t) = row?;
            out.entry(p).or_default().insert(t);
        }
        Ok(out)
    }

    /// Replaces the project's tags (inside the caller's transaction when there is one).
    pub fn set_project_tags(&self, project_id: &str, tags: &[String]) -> Result<()> {
        self.conn().execute("DELETE FROM project_tags WHERE project_id = ?1", [project_id])?;
        for t in tags {
            self.add_project_tag(project_id, t)?;
        }
        Ok(())
    }

    /// Adds one tag; adding a tag the project has is no change.
    pub fn add_project_tag(&self, project_id: &str, tag: &str) -> Result<()> {
        let added = self.conn().execute(
            "INSERT INTO project_tags (project_id, tag) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![project_id, tag],
        );
        match added {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(DbError::NotFound(format!("project {project_id}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes one tag; false when the project had no such tag.
    pub fn delete_project_tag(&self, project_id: &str, tag: &str) -> Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM project_tags WHERE project_id = ?1 AND tag = ?2", params![project_id, tag])?
            > 0)
    }

    /// The user's extra attributes (a JSON object), empty when it has none.
    pub fn user_extra(&self, user_id: &str) -> Result<serde_json::Map<String, serde_json::Value>> {
        let text: Option<String> = rusqlite::OptionalExtension::optional(self.conn().query_row(
            "SELECT extra FROM users WHERE id = ?1",
            [user_id],
            |r| r.get(0),
        ))?;
        // A value that is not an object was never written by novabox; it shows as none.
        Ok(text
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default())
    }

    pub fn set_user_extra(&self, user_id: &str, extra: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
        let text = serde_json::Value::Object(extra.clone()).to_string();
        self.conn().execute("UPDATE users SET extra = ?2 WHERE id = ?1", params![user_id, text])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::db::identity::{ProjectChange, UserChange};
    use crate::db::{Db, OpenOptions};

    #[test]
    fn tags_and_extras_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("n.db"), OpenOptions::default()).unwrap();
        let change = ProjectChange { domain_id: Some("default".into()), ..ProjectChange::default() };
        let p = db.create_project("tagged", &change).unwrap();
        db.set_project_tags(&p.id, &["b".into(), "a".into()]).unwrap();
        db.add_project_tag(&p.id, "a").unwrap();
        assert_eq!(db.project_tags(&p.id).unwrap(), ["a", "b"]);
        assert!(db.delete_project_tag(&p.id, "a").unwrap() && !db.delete_project_tag(&p.id, "a").unwrap());
        assert!(db.add_project_tag("nope", "x").is_err(), "a tag needs its project");
        assert_eq!(db.all_project_tags().unwrap()[&p.id].len(), 1);
        let u = db.create_user("u", &UserChange { password_hash: Some("x".into()), ..UserChange::default() }).unwrap();
        assert!(db.user_extra(&u.id).unwrap().is_empty());
        let extra = serde_json::json!({"project_id": "p"}).as_object().cloned().unwrap();
        db.set_user_extra(&u.id, &extra).unwrap();
        assert_eq!(db.user_extra(&u.id).unwrap(), extra);
    }
}
