//! nova's instance actions and their events (`os-instance-actions`): an action is a request
//! taken on a server (recorded by the API with `start_instance_action`), an event one step of
//! it on a service (`compute_stop_instance`, ...), recorded by the conductor for the compute
//! host that ran it.

use rusqlite::{params, OptionalExtension, Row};

use super::{now, Db, DbError, Result};

/// One action as `os-instance-actions` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceAction {
    pub id: i64,
    pub action: String,
    pub instance_uuid: String,
    pub request_id: String,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub start_time: String,
    pub finish_time: Option<String>,
    /// nova's "Error" once one of its events failed.
    pub message: Option<String>,
    /// When the action or one of its events last changed (2.58).
    pub updated_at: Option<String>,
}

/// One event of an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionEvent {
    pub event: String,
    pub host: Option<String>,
    pub start_time: String,
    pub finish_time: Option<String>,
    /// "Success" or "Error"; none while the event runs.
    pub result: Option<String>,
    pub traceback: Option<String>,
    /// What went wrong, in words a user can read (2.84).
    pub details: Option<String>,
}

/// Which actions of a server to list (2.58's paging and 2.58/2.66's time window).
#[derive(Debug, Clone, Default)]
pub struct ActionsQuery {
    /// Changed at or after this time.
    pub changes_since: Option<String>,
    /// Changed at or before this time.
    pub changes_before: Option<String>,
    pub limit: Option<usize>,
    /// The request id of the last action of the previous page.
    pub marker: Option<String>,
}

/// How an event ended, for [`Db::finish_action_events`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult<'a> {
    Success,
    /// The failure's text, kept as the event's traceback and details.
    Error(&'a str),
}

const ACTION_COLUMNS: &str =
    "id, action, instance_uuid, request_id, user_id, project_id, start_time, finish_time, message, updated_at";

fn action_row(r: &Row<'_>) -> rusqlite::Result<InstanceAction> {
    Ok(InstanceAction {
        id: r.get(0)?,
        action: r.get(1)?,
        instance_uuid: r.get(2)?,
        request_id: r.get(3)?,
        user_id: r.get(4)?,
        project_id: r.get(5)?,
        start_time: r.get(6)?,
        finish_time: r.get(7)?,
        message: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

impl Db {
    /// The actions of an instance, newest first (nova orders by creation, then id), within the
    /// query's window and after its marker. A marker that names no action of this instance is
    /// [`DbError::MarkerNotFound`].
    pub fn list_instance_actions(&self, uuid: &str, q: &ActionsQuery) -> Result<Vec<InstanceAction>> {
        if q.limit == Some(0) {
            return Ok(Vec::new());
        }
        let mut sql = format!("SELECT {ACTION_COLUMNS} FROM instance_actions WHERE instance_uuid = ?1");
        let mut args: Vec<rusqlite::types::Value> = vec![uuid.to_string().into()];
        let bind = |args: &mut Vec<rusqlite::types::Value>, v: rusqlite::types::Value| {
            args.push(v);
            format!("?{}", args.len())
        };
        if let Some(since) = &q.changes_since {
            let p = bind(&mut args, since.clone().into());
            sql.push_str(&format!(" AND updated_at >= {p}"));
        }
        if let Some(before) = &q.changes_before {
            let p = bind(&mut args, before.clone().into());
            sql.push_str(&format!(" AND updated_at <= {p}"));
        }
        if let Some(marker) = &q.marker {
            let at = self.instance_action(uuid, marker)?.ok_or_else(|| DbError::MarkerNotFound(marker.clone()))?;
            let start = bind(&mut args, at.start_time.into());
            let id = bind(&mut args, at.id.into());
            sql.push_str(&format!(" AND (start_time < {start} OR (start_time = {start} AND id < {id}))"));
        }
        sql.push_str(" ORDER BY start_time DESC, id DESC");
        if let Some(limit) = q.limit {
            let p = bind(&mut args, i64::try_from(limit).unwrap_or(i64::MAX).into());
            sql.push_str(&format!(" LIMIT {p}"));
        }
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), action_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The action `request_id` took on an instance (the newest, should a request have taken
    /// several).
    pub fn instance_action(&self, uuid: &str, request_id: &str) -> Result<Option<InstanceAction>> {
        let sql = format!(
            "SELECT {ACTION_COLUMNS} FROM instance_actions WHERE instance_uuid = ?1 AND request_id = ?2
             ORDER BY start_time DESC, id DESC LIMIT 1"
        );
        Ok(self.conn().query_row(&sql, params![uuid, request_id], action_row).optional()?)
    }

    /// The events of an action, newest first as nova lists them.
    pub fn action_events(&self, action_id: i64) -> Result<Vec<ActionEvent>> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT event, host, start_time, finish_time, result, traceback, details FROM instance_action_events
             WHERE action_id = ?1 ORDER BY start_time DESC, id DESC",
        )?;
        let rows = stmt.query_map([action_id], |r| {
            Ok(ActionEvent {
                event: r.get(0)?,
                host: r.get(1)?,
                start_time: r.get(2)?,
                finish_time: r.get(3)?,
                result: r.get(4)?,
                traceback: r.get(5)?,
                details: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records that `event` started on `host` for the action `request_id` took on the
    /// instance, and moves the action's `updated_at`. An action no one recorded (a request
    /// that is not an action, such as a volume attach) gets no event: false.
    pub fn start_action_event(
        &self,
        uuid: &str,
        request_id: &str,
        event: &str,
        host: Option<&str>,
        start_time: &str,
    ) -> Result<bool> {
        let tx = self.begin()?;
        let Some(action) = self.instance_action(uuid, request_id)? else { return Ok(false) };
        tx.execute(
            "INSERT INTO instance_action_events (action_id, event, host, start_time) VALUES (?1, ?2, ?3, ?4)",
            params![action.id, event, host, start_time],
        )?;
        tx.execute("UPDATE instance_actions SET updated_at = ?2 WHERE id = ?1", params![action.id, start_time])?;
        tx.commit()?;
        Ok(true)
    }

    /// Ends every event of the action that is still running, as nova's event reporter does
    /// when the step returns or raises: the result, and on a failure the text as the
    /// traceback and the details, with the action's message "Error". A finished action (a
    /// report delivered twice) keeps what it says.
    pub fn finish_action_events(&self, uuid: &str, request_id: &str, result: EventResult<'_>) -> Result<()> {
        let Some(action) = self.instance_action(uuid, request_id)? else { return Ok(()) };
        let ts = now();
        let (word, text) = match result {
            EventResult::Success => ("Success", None),
            EventResult::Error(text) => ("Error", Some(text)),
        };
        let tx = self.begin()?;
        let n = tx.execute(
            "UPDATE instance_action_events SET finish_time = ?2, result = ?3, traceback = ?4, details = ?4
             WHERE action_id = ?1 AND finish_time IS NULL",
            params![action.id, ts, word, text],
        )?;
        if n > 0 || text.is_some() {
            tx.execute(
                "UPDATE instance_actions SET updated_at = ?2, message = coalesce(?3, message)
                 WHERE id = ?1 AND finish_time IS NULL",
                params![action.id, ts, text.map(|_| "Error")],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::OpenOptions;

    fn db_with_instance() -> (tempfile::TempDir, Db, String) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite"), OpenOptions::default()).unwrap();
        let n = crate::db::instances::tests::new_instance(&db, "vm");
        let uuid = db.create_instance(&n).unwrap().uuid;
        (dir, db, uuid)
    }

    #[test]
    fn events_start_and_finish_under_their_action_and_move_updated_at() {
        let (_dir, db, uuid) = db_with_instance();
        db.start_instance_action(&uuid, "stop", "req-stop", "u", "p").unwrap();
        let stop = db.instance_action(&uuid, "req-stop").unwrap().unwrap();
        assert_eq!(stop.updated_at.as_deref(), Some(stop.start_time.as_str()), "set when the action starts");
        assert!(db
            .start_action_event(&uuid, "req-stop", "compute_stop_instance", Some("h1"), "2030-01-01T00:00:00Z")
            .unwrap());
        assert_eq!(
            db.instance_action(&uuid, "req-stop").unwrap().unwrap().updated_at.as_deref(),
            Some("2030-01-01T00:00:00Z")
        );
        let running = db.action_events(stop.id).unwrap();
        assert_eq!((running.len(), running[0].finish_time.clone(), running[0].result.clone()), (1, None, None));
        db.finish_action_events(&uuid, "req-stop", EventResult::Error("power_off failed: gone")).unwrap();
        let done = db.action_events(stop.id).unwrap();
        assert_eq!(done[0].result.as_deref(), Some("Error"));
        assert_eq!(done[0].details.as_deref(), Some("power_off failed: gone"));
        assert_eq!(done[0].host.as_deref(), Some("h1"));
        assert_eq!(db.instance_action(&uuid, "req-stop").unwrap().unwrap().message.as_deref(), Some("Error"));
        // A report delivered twice does not turn a finished success into an error.
        db.start_instance_action(&uuid, "attach_volume", "req-attach", "u", "p").unwrap();
        db.finish_instance_action("req-attach", &uuid, None).unwrap();
        db.finish_instance_action("req-attach", &uuid, Some("late failure")).unwrap();
        assert_eq!(db.instance_action(&uuid, "req-attach").unwrap().unwrap().message, None);
        // A request that recorded no action gets no event.
        assert!(!db
            .start_action_event(&uuid, "req-none", "compute_attach_volume", None, "2030-01-01T00:00:00Z")
            .unwrap());
    }

    #[test]
    fn pages_follow_the_marker_newest_first_and_an_unknown_marker_is_refused() {
        let (_dir, db, uuid) = db_with_instance();
        for r in ["req-1", "req-2", "req-3"] {
            db.start_instance_action(&uuid, "reboot", r, "u", "p").unwrap();
        }
        let all = db.list_instance_actions(&uuid, &ActionsQuery::default()).unwrap();
        let ids: Vec<&str> = all.iter().map(|a| a.request_id.as_str()).collect();
        assert_eq!(ids[..3], ["req-3", "req-2", "req-1"]);
        assert_eq!(ids.len(), 4, "and the create");
        let page = |marker: &str, limit| {
            let q = ActionsQuery { limit: Some(limit), marker: Some(marker.into()), ..Default::default() };
            db.list_instance_actions(&uuid, &q).map(|l| l.into_iter().map(|a| a.request_id).collect::<Vec<_>>())
        };
        assert_eq!(page("req-3", 2).unwrap(), ["req-2", "req-1"]);
        assert!(matches!(page("req-9", 2), Err(DbError::MarkerNotFound(m)) if m == "req-9"));
        let none = ActionsQuery { limit: Some(0), ..Default::default() };
        assert!(db.list_instance_actions(&uuid, &none).unwrap().is_empty());
        let later = ActionsQuery { changes_since: Some("2999-01-01T00:00:00Z".into()), ..Default::default() };
        assert!(db.list_instance_actions(&uuid, &later).unwrap().is_empty());
        let earlier = ActionsQuery { changes_before: Some("2999-01-01T00:00:00Z".into()), ..Default::default() };
        assert_eq!(db.list_instance_actions(&uuid, &earlier).unwrap().len(), 4);
    }
}
