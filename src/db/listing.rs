//! The SQL of a list page: ORDER BY several keys, a keyset that continues after a marker row,
//! and LIMIT. Column names come only from a [`SortColumn`] enum's table; every value the
//! caller gave (the marker, its sort values, the limit) is a bound parameter.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};

use super::{DbError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Asc,
    Desc,
}

impl Direction {
    fn sql(self) -> &'static str {
        match self {
            Direction::Asc => "ASC",
            Direction::Desc => "DESC",
        }
    }
}

/// A list's sort keys: the name each has on the wire and the column (or fixed expression)
/// it orders by. `None` is a key the API accepts but that is the same for every row of
/// novabox (nova's `launch_index`, say), so it does not change the order.
pub trait SortColumn: Copy + Eq + std::fmt::Debug + 'static {
    /// Every key and its wire name.
    const ALL: &'static [(&'static str, Self)];
    fn column(self) -> Option<&'static str>;

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }
    fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, k)| *k == self).map_or("", |(n, _)| n)
    }
}

/// One page of a list, in the order `sort` gives, after the row whose unique key is `marker`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSpec<C> {
    pub sort: Vec<(C, Direction)>,
    pub limit: Option<usize>,
    pub marker: Option<String>,
}

impl<C> Default for ListSpec<C> {
    fn default() -> Self {
        ListSpec { sort: Vec::new(), limit: None, marker: None }
    }
}

/// Where the rows of one list live: the table and its unique key (the marker's column).
pub(crate) struct Table {
    pub name: &'static str,
    pub key: &'static str,
}

/// Appends the keyset condition (as ` AND (...)`), ORDER BY and LIMIT of `spec` to `sql`,
/// pushing their values on `args` (numbered `?N` after those already there). The unique key
/// ends the order so that pages never overlap. A marker that names no row is
/// [`DbError::MarkerNotFound`]; deleted rows still count, as nova's marker lookup reads
/// deleted rows too.
pub(crate) fn page_sql<C: SortColumn>(
    conn: &Connection,
    table: &Table,
    spec: &ListSpec<C>,
    sql: &mut String,
    args: &mut Vec<Value>,
) -> Result<()> {
    let mut order: Vec<(&'static str, Direction)> =
        spec.sort.iter().filter_map(|(c, d)| c.column().map(|col| (col, *d))).collect();
    if !order.iter().any(|(c, _)| *c == table.key) {
        let last = order.last().map_or(Direction::Desc, |o| o.1);
        order.push((table.key, last));
    }
    if let Some(marker) = &spec.marker {
        let cols: Vec<&str> = order.iter().map(|(c, _)| *c).collect();
        let lookup = format!("SELECT {} FROM {} WHERE {} = ?1", cols.join(", "), table.name, table.key);
        let values: Option<Vec<Value>> = conn
            .query_row(&lookup, [marker], |r| (0..cols.len()).map(|i| r.get::<_, Value>(i)).collect())
            .optional()?;
        let values = values.ok_or_else(|| DbError::MarkerNotFound(marker.clone()))?;
        sql.push_str(&format!(" AND ({})", keyset(&order, &values, args)));
    }
    let by: Vec<String> = order.iter().map(|(c, d)| format!("{c} {}", d.sql())).collect();
    sql.push_str(&format!(" ORDER BY {}", by.join(", ")));
    if let Some(l) = spec.limit {
        args.push(Value::Integer(i64::try_from(l).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" LIMIT ?{}", args.len()));
    }
    Ok(())
}

/// Rows after the marker's `values` in `order`: equal on the first keys and after it on the
/// next one, for each key in turn. SQLite puts NULL first in ascending order and last in
/// descending order, and the comparisons say the same.
fn keyset(order: &[(&'static str, Direction)], values: &[Value], args: &mut Vec<Value>) -> String {
    let mut bind = |v: &Value| {
        args.push(v.clone());
        format!("?{}", args.len())
    };
    let mut alternatives = Vec::new();
    for (i, (col, dir)) in order.iter().enumerate() {
        let mut parts: Vec<String> =
            order[..i].iter().zip(values).map(|((c, _), v)| format!("{c} IS {}", bind(v))).collect();
        let after = match (dir, &values[i]) {
            (Direction::Asc, Value::Null) => format!("{col} IS NOT NULL"),
            (Direction::Asc, v) => format!("{col} > {}", bind(v)),
            (Direction::Desc, Value::Null) => "0".to_string(),
            (Direction::Desc, v) => format!("({col} < {} OR {col} IS NULL)", bind(v)),
        };
        parts.push(after);
        alternatives.push(format!("({})", parts.join(" AND ")));
    }
    alternatives.join(" OR ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Key {
        Name,
        Size,
        Constant,
    }

    impl SortColumn for Key {
        const ALL: &'static [(&'static str, Key)] = &[("name", Key::Name), ("size", Key::Size), ("k", Key::Constant)];
        fn column(self) -> Option<&'static str> {
            match self {
                Key::Name => Some("name"),
                Key::Size => Some("size"),
                Key::Constant => None,
            }
        }
    }

    const T: Table = Table { name: "t", key: "id" };

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE t (id TEXT PRIMARY KEY, name TEXT, size INTEGER);
             INSERT INTO t VALUES ('a', 'x', 3), ('b', 'x', NULL), ('c', 'y', 1), ('d', NULL, 2), ('e', 'x', 1);",
        )
        .unwrap();
        c
    }

    fn ids(c: &Connection, spec: &ListSpec<Key>) -> Result<Vec<String>> {
        let mut sql = "SELECT id FROM t WHERE 1 = 1".to_string();
        let mut args = Vec::new();
        page_sql(c, &T, spec, &mut sql, &mut args)?;
        let mut stmt = c.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every page, walked by marker, joins up to the whole ordered list with nothing twice.
    fn walk(c: &Connection, sort: Vec<(Key, Direction)>) -> Vec<String> {
        let whole = ids(c, &ListSpec { sort: sort.clone(), ..Default::default() }).unwrap();
        let mut seen = Vec::new();
        let mut marker = None;
        loop {
            let spec = ListSpec { sort: sort.clone(), limit: Some(2), marker: marker.clone() };
            let page = ids(c, &spec).unwrap();
            if page.is_empty() {
                break;
            }
            marker = page.last().cloned();
            seen.extend(page);
        }
        assert_eq!(seen, whole, "pages of {sort:?}");
        whole
    }

    #[test]
    fn pages_follow_every_order_with_nulls_and_ties() {
        let c = db();
        assert_eq!(walk(&c, vec![]), ["e", "d", "c", "b", "a"]);
        assert_eq!(walk(&c, vec![(Key::Name, Direction::Asc)]), ["d", "a", "b", "e", "c"]);
        assert_eq!(
            walk(&c, vec![(Key::Name, Direction::Desc), (Key::Size, Direction::Asc)]),
            ["c", "b", "e", "a", "d"]
        );
        assert_eq!(
            walk(&c, vec![(Key::Size, Direction::Desc), (Key::Name, Direction::Desc)]),
            ["a", "d", "c", "e", "b"]
        );
        assert_eq!(
            walk(&c, vec![(Key::Constant, Direction::Asc), (Key::Size, Direction::Asc)]),
            ["b", "c", "e", "d", "a"]
        );
    }

    #[test]
    fn an_unknown_marker_is_its_own_error_and_values_are_bound() {
        let c = db();
        let spec = ListSpec { marker: Some("nope' OR 1=1 --".into()), ..ListSpec::<Key>::default() };
        match ids(&c, &spec) {
            Err(DbError::MarkerNotFound(m)) => assert_eq!(m, "nope' OR 1=1 --"),
            other => panic!("{other:?}"),
        }
        let mut sql = String::new();
        let mut args = Vec::new();
        let spec = ListSpec { sort: vec![(Key::Name, Direction::Asc)], limit: Some(3), marker: Some("a".into()) };
        page_sql(&c, &T, &spec, &mut sql, &mut args).unwrap();
        assert!(!sql.contains("'x'") && !sql.contains(" 3"), "values are parameters: {sql}");
        assert_eq!(Key::from_name("size"), Some(Key::Size));
        assert_eq!(Key::from_name("size; DROP TABLE t"), None);
        assert_eq!(Key::Name.name(), "name");
    }
}
