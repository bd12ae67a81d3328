//! The connection as the typed queries see it: every statement is compiled once and kept.
//!
//! Compiling SQL (parse, plan, code generation) took a quarter of the stack's CPU in
//! `bench boot`, because `Connection::execute` and `query_row` compile their statement on each
//! call. [`Conn`] shadows those methods with versions that go through rusqlite's statement
//! cache, so every query in `src/db` is cached without each call site having to ask.

use std::ops::Deref;

use rusqlite::{CachedStatement, Connection, Params, Row};

/// Distinct statements kept compiled. The typed queries have a few hundred texts; list queries
/// built from filters add variants, which the least recently used ones make room for.
const STATEMENT_CACHE: usize = 512;

pub(crate) struct Conn(Connection);

impl Conn {
    pub(crate) fn new(conn: Connection) -> Conn {
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Conn(conn)
    }

    pub(crate) fn execute<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.0.prepare_cached(sql)?.execute(params)
    }

    pub(crate) fn query_row<T, P: Params, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.0.prepare_cached(sql)?.query_row(params, f)
    }

    pub(crate) fn prepare(&self, sql: &str) -> rusqlite::Result<CachedStatement<'_>> {
        self.0.prepare_cached(sql)
    }
}

impl Deref for Conn {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_compiled_once_and_reused() {
        let conn = Conn::new(Connection::open_in_memory().unwrap());
        conn.execute("CREATE TABLE t (v INTEGER)", []).unwrap();
        for v in 0..3 {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [v]).unwrap();
        }
        let sum: i64 = conn.query_row("SELECT sum(v) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(sum, 3);
        // The insert is in the cache: flushing it finds it there, and a fresh prepare after
        // the flush still works.
        let cached = conn.0.prepare_cached("INSERT INTO t (v) VALUES (?1)").unwrap();
        drop(cached);
        conn.flush_prepared_statement_cache();
        assert_eq!(conn.prepare("SELECT count(*) FROM t").unwrap().query_row([], |r| r.get::<_, i64>(0)).unwrap(), 3);
    }
}
