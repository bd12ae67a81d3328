//! Notifications (`compute.instance.*`) as published on the bus, kept for `novabox events`.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Db, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub message_id: String,
    pub event_type: String,
    pub publisher_id: String,
    pub priority: String,
    pub request_id: Option<String>,
    pub instance_uuid: Option<String>,
    pub payload: serde_json::Value,
    pub timestamp: String,
}

impl Db {
    /// Stores a notification once; a redelivered message is ignored.
    pub fn insert_notification(&self, n: &Notification) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO notifications (message_id, event_type, publisher_id, priority, request_id,
                instance_uuid, payload, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                n.message_id,
                n.event_type,
                n.publisher_id,
                n.priority,
                n.request_id,
                n.instance_uuid,
                n.payload.to_string(),
                n.timestamp
            ],
        )?;
        Ok(())
    }

    /// Notifications after row `after_id`, oldest first, with their row ids.
    pub fn notifications_after(&self, after_id: i64, limit: usize) -> Result<Vec<(i64, Notification)>> {
        let mut stmt = self.conn().prepare(
            "SELECT id, message_id, event_type, publisher_id, priority, request_id, instance_uuid, payload, created_at
             FROM notifications WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after_id, limit as i64], |r| {
            let payload: String = r.get(7)?;
            Ok((
                r.get(0)?,
                Notification {
                    message_id: r.get(1)?,
                    event_type: r.get(2)?,
                    publisher_id: r.get(3)?,
                    priority: r.get(4)?,
                    request_id: r.get(5)?,
                    instance_uuid: r.get(6)?,
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                    timestamp: r.get(8)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
