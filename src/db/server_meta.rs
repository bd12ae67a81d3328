//! What a server's owner keeps on it besides its state: metadata items, tags (2.26), and the
//! password its guest posted to the metadata service (`os-server-password`). Rows only: the
//! limits and the states that allow a change are the compute API's.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};

use super::{Db, Result};

impl Db {
    /// Sets the given metadata items of an instance, keeping the others.
    pub fn set_instance_metadata_items(&self, uuid: &str, items: &BTreeMap<String, String>) -> Result<()> {
        let tx = self.begin()?;
        for (k, v) in items {
            tx.execute(
                "INSERT INTO instance_metadata (instance_uuid, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (instance_uuid, key) DO UPDATE SET value = excluded.value",
                params![uuid, k, v],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces all of an instance's metadata with `items`.
    pub fn replace_instance_metadata(&self, uuid: &str, items: &BTreeMap<String, String>) -> Result<()> {
        let tx = self.begin()?;
        tx.execute("DELETE FROM instance_metadata WHERE instance_uuid = ?1", [uuid])?;
        self.set_instance_metadata_items(uuid, items)?;
        tx.commit()?;
        Ok(())
    }

    /// Removes one metadata item; false when the instance had no such key.
    pub fn delete_instance_metadata_item(&self, uuid: &str, key: &str) -> Result<bool> {
        let n =
            self.conn().execute("DELETE FROM instance_metadata WHERE instance_uuid = ?1 AND key = ?2", [uuid, key])?;
        Ok(n > 0)
    }

    /// An instance's tags, in order.
    pub fn instance_tags(&self, uuid: &str) -> Result<Vec<String>> {
        let mut stmt =
            self.conn().prepare_cached("SELECT tag FROM instance_tags WHERE instance_uuid = ?1 ORDER BY tag")?;
        let rows = stmt.query_map([uuid], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Replaces an instance's tags with `tags` (a tag given twice is kept once); returns them.
    pub fn replace_instance_tags(&self, uuid: &str, tags: &[String]) -> Result<Vec<String>> {
        let tx = self.begin()?;
        tx.execute("DELETE FROM instance_tags WHERE instance_uuid = ?1", [uuid])?;
        for t in tags {
            tx.execute("INSERT OR IGNORE INTO instance_tags (instance_uuid, tag) VALUES (?1, ?2)", [uuid, t])?;
        }
        let now = self.instance_tags(uuid)?;
        tx.commit()?;
        Ok(now)
    }

    /// Adds one tag; false when the instance had it already.
    pub fn add_instance_tag(&self, uuid: &str, tag: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute("INSERT OR IGNORE INTO instance_tags (instance_uuid, tag) VALUES (?1, ?2)", [uuid, tag])?;
        Ok(n > 0)
    }

    pub fn instance_has_tag(&self, uuid: &str, tag: &str) -> Result<bool> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM instance_tags WHERE instance_uuid = ?1 AND tag = ?2", [uuid, tag], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Removes one tag; false when the instance did not have it.
    pub fn delete_instance_tag(&self, uuid: &str, tag: &str) -> Result<bool> {
        let n = self.conn().execute("DELETE FROM instance_tags WHERE instance_uuid = ?1 AND tag = ?2", [uuid, tag])?;
        Ok(n > 0)
    }

    pub fn delete_instance_tags(&self, uuid: &str) -> Result<()> {
        self.conn().execute("DELETE FROM instance_tags WHERE instance_uuid = ?1", [uuid])?;
        Ok(())
    }

    /// The password the guest posted, if any (nova's `extract_password`).
    pub fn instance_password(&self, uuid: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row("SELECT password FROM instance_passwords WHERE instance_uuid = ?1", [uuid], |r| r.get(0))
            .optional()?)
    }

    /// Keeps the password a guest posts, unless one is there already (nova's metadata
    /// service takes it once; an empty one counts as none). False when one was there.
    pub fn set_instance_password_once(&self, uuid: &str, password: &str) -> Result<bool> {
        let n = self.conn().execute(
            "INSERT INTO instance_passwords (instance_uuid, password) VALUES (?1, ?2)
             ON CONFLICT (instance_uuid) DO UPDATE SET password = excluded.password
             WHERE instance_passwords.password = ''",
            [uuid, password],
        )?;
        Ok(n > 0)
    }

    /// Forgets the password (`DELETE os-server-password`): the guest may post a new one.
    pub fn clear_instance_password(&self, uuid: &str) -> Result<()> {
        self.conn().execute("DELETE FROM instance_passwords WHERE instance_uuid = ?1", [uuid])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::OpenOptions;

    #[test]
    fn metadata_tags_and_password_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite"), OpenOptions::default()).unwrap();
        let n = crate::db::instances::tests::new_instance(&db, "vm");
        let uuid = db.create_instance(&n).unwrap().uuid;
        let meta = |db: &Db| db.instance_by_uuid(&uuid, false).unwrap().unwrap().metadata;
        let items = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();

        db.set_instance_metadata_items(&uuid, &items(&[("a", "1"), ("k", "new")])).unwrap();
        assert_eq!(meta(&db), items(&[("a", "1"), ("k", "new")]), "merged over the boot's k=v");
        db.replace_instance_metadata(&uuid, &items(&[("b", "2")])).unwrap();
        assert_eq!(meta(&db), items(&[("b", "2")]));
        assert!(db.delete_instance_metadata_item(&uuid, "b").unwrap());
        assert!(!db.delete_instance_metadata_item(&uuid, "b").unwrap());

        assert!(db.add_instance_tag(&uuid, "web").unwrap());
        assert!(!db.add_instance_tag(&uuid, "web").unwrap());
        assert!(db.instance_has_tag(&uuid, "web").unwrap() && !db.instance_has_tag(&uuid, "db").unwrap());
        let tags = db.replace_instance_tags(&uuid, &["z".into(), "a".into(), "z".into()]).unwrap();
        assert_eq!(tags, ["a", "z"]);
        assert!(db.delete_instance_tag(&uuid, "a").unwrap() && !db.delete_instance_tag(&uuid, "a").unwrap());
        db.delete_instance_tags(&uuid).unwrap();
        assert!(db.instance_tags(&uuid).unwrap().is_empty());

        assert_eq!(db.instance_password(&uuid).unwrap(), None);
        assert!(db.set_instance_password_once(&uuid, "").unwrap(), "an empty one counts as none");
        assert!(db.set_instance_password_once(&uuid, "sekrit").unwrap());
        assert!(!db.set_instance_password_once(&uuid, "other").unwrap(), "only once");
        assert_eq!(db.instance_password(&uuid).unwrap().as_deref(), Some("sekrit"));
        db.clear_instance_password(&uuid).unwrap();
        assert!(db.set_instance_password_once(&uuid, "again").unwrap(), "a cleared one can be posted again");
    }

    /// Guests racing to post a password (or one guest posting twice at once): one wins.
    #[test]
    fn one_of_racing_password_posts_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite"), OpenOptions::default()).unwrap();
        let uuid = db.create_instance(&crate::db::instances::tests::new_instance(&db, "vm")).unwrap().uuid;
        let db = crate::db::SharedDb::new(db);
        let won: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..12)
                .map(|i| {
                    let (db, uuid) = (&db, &uuid);
                    s.spawn(move || db.with(|db| db.set_instance_password_once(uuid, &format!("pw{i}"))).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(won.iter().filter(|w| **w).count(), 1);
        let kept = db.with(|db| db.instance_password(&uuid)).unwrap().unwrap();
        assert_eq!(kept, format!("pw{}", won.iter().position(|w| *w).unwrap()));
    }

    #[test]
    fn tag_filters_select_in_sql_as_nova_s() {
        use crate::db::instances::{InstanceFilter, TagFilter};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite"), OpenOptions::default()).unwrap();
        let mut names = BTreeMap::new();
        for (name, tags) in [("ab", &["a", "b"][..]), ("a", &["a"][..]), ("c", &["c"][..]), ("none", &[][..])] {
            let uuid = db.create_instance(&crate::db::instances::tests::new_instance(&db, name)).unwrap().uuid;
            let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
            db.replace_instance_tags(&uuid, &tags).unwrap();
            names.insert(uuid, name);
        }
        let v = |list: &[&str]| Some(list.iter().map(|t| t.to_string()).collect::<Vec<_>>());
        let found = |tags: TagFilter| {
            let list = db.list_instances(&InstanceFilter { tags, ..Default::default() }).unwrap();
            let mut got: Vec<&str> = list.iter().map(|i| names[&i.uuid]).collect();
            got.sort();
            got
        };
        assert_eq!(found(TagFilter { all: v(&["a", "b"]), ..Default::default() }), ["ab"]);
        assert_eq!(found(TagFilter { any: v(&["b", "c"]), ..Default::default() }), ["ab", "c"]);
        assert_eq!(found(TagFilter { not_all: v(&["a", "b"]), ..Default::default() }), ["a", "c", "none"]);
        assert_eq!(found(TagFilter { not_any: v(&["a", "c"]), ..Default::default() }), ["none"]);
        assert_eq!(found(TagFilter { all: v(&["a"]), not_any: v(&["b"]), ..Default::default() }), ["a"]);
        assert!(found(TagFilter { all: v(&[""]), ..Default::default() }).is_empty(), "`tags=` asks for the tag \"\"");
        // A value is bound, never spliced into the statement.
        assert!(found(TagFilter { any: v(&["a') OR 1=1 --"]), ..Default::default() }).is_empty());
    }
}
