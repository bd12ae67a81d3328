//! Transactions: one state change, one SQLite transaction, even when it spans several of the
//! typed queries of this module.
//!
//! Each query that writes more than one row opens its own transaction with [`Db::begin`]. Run
//! inside [`SharedDb::tx`](super::SharedDb::tx) those nest as savepoints of the outer
//! transaction, so a caller can compose queries (check a quota, then insert; release ports, then
//! destroy the row) and either all of it is stored or none of it is.

use std::ops::Deref;

use super::conn::Conn;
use super::{Db, Result};

/// The savepoint name of nested transactions. SQLite keeps a stack of savepoints, and RELEASE or
/// ROLLBACK TO with a name act on the innermost one of that name, so one name serves any depth.
const SAVEPOINT: &str = "novabox_nested";

/// An open transaction (or savepoint, when nested). Dropped without [`Tx::commit`] it rolls
/// back, which is what an early `?` return or a panic needs.
pub(crate) struct Tx<'a> {
    conn: &'a Conn,
    nested: bool,
    finished: bool,
}

impl Db {
    /// Opens a transaction that takes SQLite's write lock at once (BEGIN IMMEDIATE): checks
    /// followed by writes must not interleave with another process's writes on this database
    /// (the API and a separate conductor, or a second `novabox` command). Inside a transaction
    /// already open on this connection it opens a savepoint instead, so it never fails with
    /// "cannot start a transaction within a transaction".
    pub(crate) fn begin(&self) -> Result<Tx<'_>> {
        let conn = self.conn();
        let nested = !conn.is_autocommit();
        if nested {
            conn.execute_batch(&format!("SAVEPOINT {SAVEPOINT}"))?;
        } else {
            conn.execute_batch("BEGIN IMMEDIATE")?;
        }
        Ok(Tx { conn, nested, finished: false })
    }

    /// Whether a transaction is open on this connection (for tests and assertions).
    pub fn in_transaction(&self) -> bool {
        !self.conn().is_autocommit()
    }
}

impl Tx<'_> {
    /// Stores the changes (or, nested, folds them into the outer transaction).
    pub(crate) fn commit(mut self) -> rusqlite::Result<()> {
        self.finished = true;
        if self.nested {
            self.conn.execute_batch(&format!("RELEASE {SAVEPOINT}"))
        } else {
            self.conn.execute_batch("COMMIT")
        }
    }

    fn rollback(&mut self) -> rusqlite::Result<()> {
        self.finished = true;
        if self.nested {
            // ROLLBACK TO keeps the savepoint on the stack; RELEASE pops it.
            self.conn.execute_batch(&format!("ROLLBACK TO {SAVEPOINT}; RELEASE {SAVEPOINT}"))
        } else {
            self.conn.execute_batch("ROLLBACK")
        }
    }
}

impl Deref for Tx<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Some errors (a full disk, an I/O error) make SQLite roll the whole transaction back
        // itself; then there is nothing left to undo and the error is expected.
        if self.conn.is_autocommit() {
            return;
        }
        if let Err(e) = self.rollback() {
            tracing::warn!(error = %e, "rolling back a transaction failed");
        }
    }
}

impl super::SharedDb {
    /// Runs `f` as one transaction: every write it makes through the `&Db` (including the
    /// transactions the typed queries open themselves) is stored when it returns `Ok`, and
    /// none is when it returns `Err` or panics. Use it for every state change that takes more
    /// than one statement; [`SharedDb::with`](super::SharedDb::with) is for reads and single
    /// statements.
    ///
    /// The write lock is taken at the start, so keep `f` short and free of I/O waits.
    pub fn tx<T, E: From<super::DbError>>(
        &self,
        f: impl FnOnce(&Db) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.with(|db| {
            let tx = db.begin()?;
            let out = f(db)?;
            tx.commit().map_err(super::DbError::from)?;
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DbError, OpenOptions, SharedDb};
    use super::*;

    fn shared() -> (tempfile::TempDir, SharedDb) {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        (t, SharedDb::new(db))
    }

    fn project_count(db: &SharedDb) -> usize {
        db.with(|d| d.projects()).unwrap().len()
    }

    #[test]
    fn a_failure_mid_closure_leaves_nothing_written() {
        let (_t, db) = shared();
        let before = project_count(&db);
        let r: std::result::Result<(), DbError> = db.tx(|d| {
            d.ensure_project("first", "")?;
            d.ensure_project("second", "")?;
            Err(DbError::Conflict("the third step failed".into()))
        });
        assert!(matches!(r, Err(DbError::Conflict(_))));
        assert_eq!(project_count(&db), before, "the first two writes survived a failed transaction");
        assert!(!db.with(|d| d.in_transaction()), "the transaction was left open");

        db.tx(|d| -> std::result::Result<(), DbError> {
            d.ensure_project("first", "")?;
            d.ensure_project("second", "")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(project_count(&db), before + 2);
    }

    #[test]
    fn a_panic_mid_closure_leaves_nothing_written() {
        let (_t, db) = shared();
        let before = project_count(&db);
        let db2 = db.clone();
        let joined = std::thread::spawn(move || {
            let _: std::result::Result<(), DbError> = db2.tx(|d| {
                d.ensure_project("doomed", "")?;
                panic!("a bug between two writes");
            });
        })
        .join();
        assert!(joined.is_err());
        // The lock is poisoned; `with` takes it over and the data is whole.
        assert_eq!(project_count(&db), before);
        assert!(!db.with(|d| d.in_transaction()));
    }

    #[test]
    fn queries_that_open_their_own_transaction_nest_inside_one() {
        let (_t, db) = shared();
        // `create_flavor` and `set_flavor_extra_specs` each open a transaction of their own.
        let r: std::result::Result<(), DbError> = db.tx(|d| {
            let f = d.create_flavor(&crate::db::flavors::NewFlavor {
                flavorid: "nest",
                name: "nest",
                memory_mb: 64,
                vcpus: 1,
                root_gb: 1,
                ephemeral_gb: 0,
                swap: 0,
                rxtx_factor: 1.0,
                is_public: true,
                description: None,
            })?;
            let specs = [("a".to_string(), "1".to_string())].into_iter().collect();
            d.set_flavor_extra_specs(f.id, &specs)?;
            Err(DbError::Conflict("and then it failed".into()))
        });
        assert!(r.is_err());
        assert!(db.with(|d| d.flavor_by_flavorid("nest")).unwrap().is_none());
    }

    #[test]
    fn a_failed_nested_step_is_undone_alone_when_the_caller_carries_on() {
        let (_t, db) = shared();
        let before = project_count(&db);
        db.tx(|d| -> std::result::Result<(), DbError> {
            d.ensure_project("kept", "")?;
            let inner: Result<()> = (|| {
                let tx = d.begin()?;
                tx.execute(
                    "INSERT INTO projects (id, name, description, created_at) VALUES ('x', 'undone', '', '')",
                    [],
                )?;
                Err(DbError::Conflict("inner step failed".into()))
            })();
            assert!(inner.is_err());
            Ok(())
        })
        .unwrap();
        let names: Vec<String> = db.with(|d| d.projects()).unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(names.len(), before + 1);
        assert!(names.contains(&"kept".to_string()) && !names.contains(&"undone".to_string()), "{names:?}");
    }
}
