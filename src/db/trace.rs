//! `trace_spans`: the spans of each request, written in batches by `crate::trace`.

use rusqlite::params;

use super::{Db, Result};
use crate::trace::SpanRow;

impl Db {
    /// Stores a batch of spans in one transaction; spans stored already (a batch delivered
    /// twice) are skipped.
    pub fn insert_trace_spans(&self, rows: &[SpanRow]) -> Result<()> {
        let tx = self.begin()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO trace_spans (request_id, span_id, parent_id, service, name, start_us, duration_us, attrs)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for r in rows {
                stmt.execute(params![
                    r.request_id,
                    r.span_id,
                    r.parent_id,
                    r.service,
                    r.name,
                    r.start_us,
                    r.duration_us,
                    r.attrs.to_string()
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The spans of one request, oldest first.
    pub fn trace_spans(&self, request_id: &str) -> Result<Vec<SpanRow>> {
        let mut stmt = self.conn().prepare(
            "SELECT request_id, span_id, parent_id, service, name, start_us, duration_us, attrs
             FROM trace_spans WHERE request_id = ?1 ORDER BY start_us, id",
        )?;
        let rows = stmt.query_map(params![request_id], |r| {
            let attrs: String = r.get(7)?;
            Ok(SpanRow {
                request_id: r.get(0)?,
                span_id: r.get(1)?,
                parent_id: r.get(2)?,
                service: r.get(3)?,
                name: r.get(4)?,
                start_us: r.get(5)?,
                duration_us: r.get(6)?,
                attrs: serde_json::from_str(&attrs).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::OpenOptions;

    #[test]
    fn a_batch_delivered_twice_is_stored_once() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        let span = |id: &str| SpanRow {
            request_id: "req-1".into(),
            span_id: id.into(),
            parent_id: None,
            service: "compute".into(),
            name: "spawning".into(),
            start_us: 1,
            duration_us: 2,
            attrs: serde_json::json!({}),
        };
        let batch = [span("a"), span("b")];
        db.insert_trace_spans(&batch).unwrap();
        db.insert_trace_spans(&batch).unwrap();
        db.insert_trace_spans(&[span("c")]).unwrap();
        let ids: Vec<String> = db.trace_spans("req-1").unwrap().into_iter().map(|s| s.span_id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }
}
