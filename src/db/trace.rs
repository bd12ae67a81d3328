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

    /// Deletes the spans that started, and the notifications published, before `cutoff`;
    /// returns how many of each went.
    pub fn prune_history(&self, cutoff: chrono::DateTime<chrono::Utc>) -> Result<(usize, usize)> {
        let tx = self.begin()?;
        let spans = tx.execute("DELETE FROM trace_spans WHERE start_us < ?1", [cutoff.timestamp_micros()])?;
        // `created_at` is the notifier's fixed-width UTC text (nova's "2026-11-28 05:00:00.123456"),
        // so text order is time order. (An ISO "T" timestamp of the cutoff's day sorts after it
        // and stays a day longer; nothing is deleted early.)
        let notes = tx.execute(
            "DELETE FROM notifications WHERE created_at < ?1",
            [cutoff.format("%Y-%m-%d %H:%M:%S").to_string()],
        )?;
        tx.commit()?;
        Ok((spans, notes))
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

    #[test]
    fn history_older_than_the_cutoff_goes() {
        use crate::db::notifications::Notification;
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        let day = |d: u32| chrono::DateTime::parse_from_rfc3339(&format!("2026-11-{d:02}T12:00:00Z")).unwrap().to_utc();
        let span = |id: &str, d: u32| SpanRow {
            request_id: "req".into(),
            span_id: id.into(),
            parent_id: None,
            service: "api".into(),
            name: "create".into(),
            start_us: day(d).timestamp_micros(),
            duration_us: 1,
            attrs: serde_json::json!({}),
        };
        db.insert_trace_spans(&[span("old", 1), span("new", 20)]).unwrap();
        let note = |id: &str, d: u32| Notification {
            message_id: id.into(),
            event_type: "compute.instance.create.end".into(),
            publisher_id: "compute.host".into(),
            priority: "INFO".into(),
            request_id: None,
            instance_uuid: None,
            payload: serde_json::json!({}),
            timestamp: day(d).format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        };
        db.insert_notification(&note("n-old", 1)).unwrap();
        db.insert_notification(&note("n-new", 20)).unwrap();
        assert_eq!(db.prune_history(day(10)).unwrap(), (1, 1));
        let left: Vec<String> = db.trace_spans("req").unwrap().into_iter().map(|s| s.span_id).collect();
        assert_eq!(left, ["new"]);
        assert_eq!(db.prune_history(day(10)).unwrap(), (0, 0), "nothing more to prune");
    }
}
