//! The SQLite database: opening it safely, migrations, and typed queries per table.
//! No SQL lives outside this module.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{Migrations, M};

pub mod aggregates;
pub mod appcreds;
mod conn;
pub mod console_tokens;
pub(crate) use conn::Conn;
pub mod flavors;
pub mod identity;
mod identity_extra;
pub mod images;
pub mod instance_actions;
pub mod instances;
pub mod keypairs;
pub mod lifecycle;
pub mod listing;
pub mod network;
pub mod notifications;
pub mod quotas;
pub mod server_groups;
pub mod server_meta;
pub mod services;
pub mod tokens;
pub mod trace;
mod tx;
pub mod usage;
pub mod volumes;

/// SQLite's `application_id` for novabox databases ("NOVA"), so a foreign file is never
/// mistaken for ours and migrated.
const APPLICATION_ID: i32 = 0x4e4f_5641;

/// Every migration, oldest first. Never edit one that has shipped: add another.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_neutron_attributes.sql"),
    include_str!("migrations/0003_port_preserve_on_delete.sql"),
    include_str!("migrations/0004_volumes.sql"),
    include_str!("migrations/0005_instance_ssh_forward.sql"),
    include_str!("migrations/0006_trace_spans_unique.sql"),
    include_str!("migrations/0007_tokens_per_user.sql"),
    include_str!("migrations/0009_instances_keep_their_flavor.sql"),
    include_str!("migrations/0010_identity_admin.sql"),
    include_str!("migrations/0013_boot_path_indexes.sql"),
    include_str!("migrations/0015_server_groups.sql"),
    include_str!("migrations/0016_instance_lock.sql"),
    include_str!("migrations/0017_routers_floating_ips.sql"),
    include_str!("migrations/0018_provider_networks.sql"),
    include_str!("migrations/0020_server_meta.sql"),
    include_str!("migrations/0021_resizes_and_rebuilds.sql"),
    include_str!("migrations/0022_console_auth_tokens.sql"),
    include_str!("migrations/0023_aggregates.sql"),
    include_str!("migrations/0024_tempest_papercuts.sql"),
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "{path} was written by a newer novabox (schema version {found}; this novabox knows up \
         to {supported}). Nothing was changed. Upgrade novabox, or use another --home."
    )]
    TooNew { path: PathBuf, found: i64, supported: usize },
    #[error(
        "{path} is not a novabox database (it holds other tables). Nothing was changed. \
         Move it away or use another --home."
    )]
    Foreign { path: PathBuf },
    #[error(
        "{path} is damaged: {detail}. Nothing was changed. Restore it from a backup \
         (novabox keeps novabox.db.bak-* beside it before each migration), or move it away and \
         run `novabox init` for a fresh one."
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot open {path}: {source}. Check that the state directory is writable.")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("migrating {path} to schema version {SCHEMA_VERSION} failed: {detail}. Nothing was changed.")]
    Migrate { path: PathBuf, detail: String },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// What neutron refuses (a full network, an address in use, a group in use...).
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    /// A list's marker names no row; each API says so in its own words.
    #[error("marker [{0}] not found")]
    MarkerNotFound(String),
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// One connection to a home's database.
pub struct Db {
    conn: conn::Conn,
    path: PathBuf,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Log every statement with its duration (`--sql-echo`, `[db] echo`).
    pub echo: bool,
}

impl Db {
    /// Opens (creating when absent) and migrates the database at `path`. Refuses a file that
    /// is not SQLite, not ours, damaged, or newer than this build, without writing to it.
    pub fn open(path: &Path, opts: OpenOptions) -> Result<Db> {
        let existed = path.exists();
        if !existed {
            // Create it owner-only before SQLite does (SQLite copies the mode to -wal and -shm).
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
                DbError::Open { path: path.to_path_buf(), source: rusqlite::Error::InvalidPath(e.to_string().into()) }
            })?;
        }
        if existed {
            check_sqlite_header(path)?;
        }
        let open_err = |source| DbError::Open { path: path.to_path_buf(), source };
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        // Statements are always profiled so `novabox trace --sql` can show what each step ran;
        // outside a recorded span that costs one thread-local lookup per statement.
        let profile = if opts.echo { echo_statement } else { record_statement };
        conn.trace_v2(rusqlite::trace::TraceEventCodes::SQLITE_TRACE_PROFILE, Some(profile));
        conn.busy_timeout(Duration::from_secs(10)).map_err(open_err)?;
        let corrupt = |e: rusqlite::Error| DbError::Corrupt { path: path.to_path_buf(), detail: e.to_string() };

        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(corrupt)?;
        let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(corrupt)?;
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))
            .map_err(corrupt)?;
        if tables > 0 && app_id != APPLICATION_ID {
            return Err(DbError::Foreign { path: path.to_path_buf() });
        }
        if version > SCHEMA_VERSION as i64 {
            return Err(DbError::TooNew { path: path.to_path_buf(), found: version, supported: SCHEMA_VERSION });
        }
        if existed && version > 0 && (version as usize) < SCHEMA_VERSION {
            // A migration that goes wrong in a way SQLite cannot roll back (a full disk at the
            // wrong moment) must still leave the user a way back.
            let backup = path.with_extension(format!("db.bak-v{version}"));
            conn.execute("VACUUM INTO ?1", [backup.to_string_lossy()]).map_err(corrupt)?;
        }

        conn.pragma_update(None, "journal_mode", "WAL").map_err(corrupt)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(corrupt)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(corrupt)?;
        add_regexp(&conn).map_err(open_err)?;

        let migrations = Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect());
        migrations
            .to_latest(&mut conn)
            .map_err(|e| DbError::Migrate { path: path.to_path_buf(), detail: e.to_string() })?;
        conn.pragma_update(None, "application_id", APPLICATION_ID).map_err(corrupt)?;
        Ok(Db { conn: conn::Conn::new(conn), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// SQLite's own consistency check; cheap on a sandbox-sized database.
    pub fn check_integrity(&self) -> Result<()> {
        let verdict: String = self.conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if verdict == "ok" {
            Ok(())
        } else {
            Err(DbError::Corrupt { path: self.path.clone(), detail: verdict })
        }
    }

    pub(crate) fn conn(&self) -> &conn::Conn {
        &self.conn
    }
}

/// SQLite's `REGEXP` operator (it has the syntax but no function behind it), for nova's `name`
/// list filter. Each pattern is compiled once per statement. Rust's regex engine runs in
/// linear time, so no pattern can stall the database.
fn add_regexp(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function("regexp", 2, FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC, |ctx| {
        let re: std::sync::Arc<regex::Regex> =
            ctx.get_or_create_aux(0, |pattern| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                Ok(regex::RegexBuilder::new(pattern.as_str()?).size_limit(1 << 20).build()?)
            })?;
        Ok(ctx.get_raw(1).as_str().is_ok_and(|text| re.is_match(text)))
    })
}

/// Refuses files that are not SQLite before SQLite touches them (it would happily turn an
/// empty or foreign file into a fresh database).
fn check_sqlite_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut header = [0u8; 16];
    let mut file = std::fs::File::open(path)
        .map_err(|e| DbError::Corrupt { path: path.to_path_buf(), detail: format!("cannot read it: {e}") })?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        // SQLite itself creates zero-length files before the first write; treat as new.
        return Ok(());
    }
    let ok = file.read_exact(&mut header).is_ok() && &header == b"SQLite format 3\0";
    if ok {
        Ok(())
    } else {
        Err(DbError::Corrupt { path: path.to_path_buf(), detail: "it is not an SQLite database file".into() })
    }
}

fn echo_statement(event: rusqlite::trace::TraceEvent<'_>) {
    if let rusqlite::trace::TraceEvent::Profile(stmt, took) = event {
        // Expanded SQL shows the bound values, which is what one wants when reading a trace.
        let sql = stmt.expanded_sql().unwrap_or_else(|| stmt.sql().into_owned());
        tracing::info!(target: "novabox::sql", micros = took.as_micros() as u64, "{}", sql.trim());
        crate::trace::record_sql(&sql, took.as_micros() as u64);
    }
}

fn record_statement(event: rusqlite::trace::TraceEvent<'_>) {
    if let rusqlite::trace::TraceEvent::Profile(stmt, took) = event {
        crate::trace::record_sql(&stmt.sql(), took.as_micros() as u64);
    }
}

/// Now, as the API shows it: UTC, seconds, trailing Z.
pub fn now() -> String {
    // The test clock, so `novabox clock advance` reaches every timestamp and expiry.
    crate::clock::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A keystone-style id: a uuid4 as 32 hex characters.
pub fn new_hex_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_and_reopens_at_latest_version() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("novabox.db");
        let db = Db::open(&p, OpenOptions::default()).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION as i64);
        db.check_integrity().unwrap();
        drop(db);
        let db = Db::open(&p, OpenOptions::default()).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION as i64);
        let mode: String = db.conn().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = db.conn().query_row("PRAGMA foreign_keys", [], |r| r.get(0)).unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn refuses_newer_schema_without_touching_it() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("novabox.db");
        drop(Db::open(&p, OpenOptions::default()).unwrap());
        {
            let c = Connection::open(&p).unwrap();
            c.pragma_update(None, "user_version", 999).unwrap();
            c.pragma_update(None, "journal_mode", "DELETE").unwrap();
        }
        let before = std::fs::read(&p).unwrap();
        let err = Db::open(&p, OpenOptions::default()).err().expect("must refuse");
        assert!(matches!(err, DbError::TooNew { found: 999, .. }), "{err}");
        assert!(err.to_string().contains("newer novabox"));
        assert_eq!(std::fs::read(&p).unwrap(), before, "the file was modified");
    }

    #[test]
    fn refuses_garbage_and_foreign_files() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("novabox.db");
        std::fs::write(&p, b"this is not a database at all, just some text").unwrap();
        let err = Db::open(&p, OpenOptions::default()).err().unwrap();
        assert!(matches!(err, DbError::Corrupt { .. }), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"this is not a database at all, just some text");

        let q = t.path().join("other.db");
        Connection::open(&q).unwrap().execute_batch("CREATE TABLE x(a)").unwrap();
        let err = Db::open(&q, OpenOptions::default()).err().unwrap();
        assert!(matches!(err, DbError::Foreign { .. }), "{err}");
    }
}

/// The database shared by the services of one process. SQLite serialises writers anyway;
/// one connection behind a mutex keeps every query short, and [`SharedDb::tx`] makes a state
/// change of several queries one transaction.
#[derive(Clone)]
pub struct SharedDb(std::sync::Arc<std::sync::Mutex<Db>>);

impl SharedDb {
    pub fn new(db: Db) -> SharedDb {
        SharedDb(std::sync::Arc::new(std::sync::Mutex::new(db)))
    }

    /// Runs `f` with the connection, outside any transaction of its own: for reads and for
    /// single writes. A change of more than one statement goes through [`SharedDb::tx`].
    /// A panic in another holder does not make the data unusable (its transaction was rolled
    /// back), so a poisoned lock is taken over.
    ///
    /// The lock is held for a query's microseconds, on the calling thread: nothing slow may run
    /// under it (password hashing runs on the blocking pool, see `api::logins`). Handing every
    /// contended wait to `block_in_place` was tried and cost a third of `bench boot`'s
    /// throughput in thread hand-offs; a dedicated database thread is the way to take the
    /// queries off the async workers.
    pub fn with<T>(&self, f: impl FnOnce(&Db) -> T) -> T {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }
}
