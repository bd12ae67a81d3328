//! Spans recorded as the work happens, for `novabox trace`: a [`SpanRecorder`] layer keeps
//! every span that carries a `request_id` (or has a recorded parent), with its parent link,
//! service, start and duration, and the SQL statements run inside it. Closed spans go to an
//! in-memory buffer that [`flush_to`] writes to the `trace_spans` table in batches, from a
//! background task of the process that holds the database.
//!
//! Across the bus the parent link travels in the message context (`trace_parent`), so a
//! handler's span hangs under the `rpc.cast`/`rpc.call` span that sent it. Every message a
//! request sends goes out inside such a span (`crate::rpcapi`), so the stored spans alone say
//! whether the request's work is over ([`pending`]): each span's parent is stored (no step
//! still open) and each send has its handler under it (no message still in flight). A compute service
//! running in another process (`novabox service compute`, or on another host) has no
//! database: it ships its buffer to the conductor in `record_spans` casts instead (see
//! `stack`), and the conductor stores them.
//!
//! The cost on the hot path is one field visit per new span, a mutex push per closed span and
//! nothing for spans outside a request. Keeping each span's SQL is opt-in ([`SpanRecorder::with_sql`],
//! `NOVABOX_TRACE=sql`) because copying every statement costs much more than the spans.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One recorded span, as stored in `trace_spans`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRow {
    pub request_id: String,
    pub span_id: String,
    pub parent_id: Option<String>,
    pub service: String,
    pub name: String,
    pub start_us: i64,
    pub duration_us: i64,
    pub attrs: Value,
}

/// The most spans kept waiting for a flush; beyond it new ones are dropped (a process without
/// a database must not grow without bound).
const BUFFER_LIMIT: usize = 50_000;

static BUFFER: Mutex<Vec<SpanRow>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
static ACTIVE: AtomicBool = AtomicBool::new(false);
static SQL: AtomicBool = AtomicBool::new(false);

/// A span being recorded (kept in the span's extensions until it closes).
struct Open {
    row: SpanRow,
    started: Instant,
    sql: Vec<(String, u64)>,
}

/// The tracing layer that records request spans. Install it once per process.
pub struct SpanRecorder;

impl SpanRecorder {
    pub fn new() -> SpanRecorder {
        // Ids only need to be unique within a request; a random high half keeps two processes
        // serving the same request apart.
        NEXT_ID.store((uuid::Uuid::new_v4().as_u64_pair().0 & 0xffff_ffff) << 32, Ordering::Relaxed);
        ACTIVE.store(true, Ordering::Relaxed);
        SpanRecorder
    }

    /// Also keep the SQL statements of each span. Off by default: copying every statement's
    /// text costs about a fifth of the fake-driver boot throughput (`novabox bench boot`).
    pub fn with_sql(self, on: bool) -> SpanRecorder {
        SQL.store(on, Ordering::Relaxed);
        self
    }
}

impl Default for SpanRecorder {
    fn default() -> Self {
        SpanRecorder::new()
    }
}

#[derive(Default)]
struct Fields {
    request_id: Option<String>,
    service: Option<String>,
    trace_parent: Option<String>,
    attrs: Map<String, Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_string(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_string(field, format!("{value:?}"));
    }
}

impl Fields {
    fn record_string(&mut self, field: &Field, value: String) {
        match field.name() {
            "request_id" => self.request_id = Some(value),
            "service" => self.service = Some(value),
            "trace_parent" => self.trace_parent = Some(value).filter(|v| !v.is_empty()),
            name => {
                self.attrs.insert(name.to_string(), Value::String(value));
            }
        }
    }
}

/// The service a module belongs to, for spans that do not say.
fn service_of_target(target: &str) -> &'static str {
    let module = target.strip_prefix("novabox::").unwrap_or(target);
    match module.split("::").next().unwrap_or_default() {
        "api" => "api",
        "scheduler" => "scheduler",
        "compute" => "compute",
        "conductor" => "conductor",
        "db" => "db",
        _ => "other",
    }
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

impl<S> Layer<S> for SpanRecorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let parent = span.parent().and_then(|p| {
            p.extensions()
                .get::<Open>()
                .map(|o| (o.row.span_id.clone(), o.row.request_id.clone(), o.row.service.clone()))
        });
        let request_id = match (fields.request_id, &parent) {
            // Work under an empty request id is novabox's own plumbing (shipping spans).
            (Some(r), _) if r.is_empty() => return,
            (Some(r), _) => r,
            (None, Some((_, r, _))) => r.clone(),
            (None, None) => return,
        };
        let service = fields
            .service
            .map(|s| s.trim_matches('"').to_string())
            .or_else(|| parent.as_ref().map(|(_, _, s)| s.clone()))
            .unwrap_or_else(|| service_of_target(attrs.metadata().target()).to_string());
        // A link carried by a bus message names the sender exactly; prefer it to whatever
        // span happens to be current (the in-process bus may run a handler inside its caller).
        let parent_id = fields.trace_parent.or_else(|| parent.map(|(p, _, _)| p));
        let span_id = format!("{:016x}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let row = SpanRow {
            request_id,
            span_id,
            parent_id,
            service,
            name: attrs.metadata().name().to_string(),
            start_us: now_us(),
            duration_us: 0,
            attrs: Value::Object(fields.attrs),
        };
        span.extensions_mut().insert(Open { row, started: Instant::now(), sql: Vec::new() });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else { return };
        let mut row = open.row;
        row.duration_us = open.started.elapsed().as_micros() as i64;
        if !open.sql.is_empty() {
            if let Value::Object(m) = &mut row.attrs {
                let sql = open.sql.into_iter().map(|(sql, us)| serde_json::json!({"sql": sql, "us": us})).collect();
                m.insert("sql".into(), Value::Array(sql));
            }
        }
        let mut buffer = BUFFER.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.len() < BUFFER_LIMIT {
            buffer.push(row);
        }
    }
}

/// Runs `f` on the recorded span that is current, if any.
fn with_current<T>(f: impl FnOnce(&mut Open) -> T) -> Option<T> {
    if !ACTIVE.load(Ordering::Relaxed) {
        return None;
    }
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            let span = registry.span(id)?;
            let mut ext = span.extensions_mut();
            ext.get_mut::<Open>().map(f)
        })
        .flatten()
}

/// The id of the current recorded span, to carry across the bus as the parent of the work
/// a message causes.
pub fn current_span_id() -> Option<String> {
    with_current(|o| o.row.span_id.clone())
}

/// Notes an SQL statement run inside the current recorded span (for `trace --sql`).
pub fn record_sql(sql: &str, micros: u64) {
    if !SQL.load(Ordering::Relaxed) {
        return;
    }
    with_current(|o| {
        if o.sql.len() < 200 {
            o.sql.push((sql.trim().to_string(), micros));
        }
    });
}

/// Puts back spans that could not be delivered (oldest first), within the buffer's limit.
pub fn requeue(mut rows: Vec<SpanRow>) {
    let mut buffer = BUFFER.lock().unwrap_or_else(|e| e.into_inner());
    let room = BUFFER_LIMIT.saturating_sub(buffer.len());
    rows.truncate(room);
    rows.append(&mut buffer);
    *buffer = rows;
}

/// Takes the closed spans waiting to be written.
pub fn drain() -> Vec<SpanRow> {
    std::mem::take(&mut *BUFFER.lock().unwrap_or_else(|e| e.into_inner()))
}

/// What a request's stored spans say is not over yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// Stored spans whose parent is not stored: that step is still open (or closed and not
    /// yet written).
    pub open_steps: usize,
    /// Messages sent (`rpc.cast`, `rpc.call`) with no handler stored under them: still on the
    /// bus, being handled, or handled and not yet written. As `rpc.cast TOPIC METHOD`.
    pub in_flight: Vec<String>,
}

impl Pending {
    /// Nothing is left: these spans are the whole of the request's work so far.
    pub fn is_settled(&self) -> bool {
        self.open_steps == 0 && self.in_flight.is_empty()
    }
}

/// What is not over in `spans` (the spans of one request). Spans close children first and are
/// written in the order they closed, so a missing parent means an open step; a send without a
/// handler means work the request caused that is not recorded yet.
pub fn pending(spans: &[SpanRow]) -> Pending {
    use std::collections::HashSet;
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let parents: HashSet<&str> = spans.iter().filter_map(|s| s.parent_id.as_deref()).collect();
    let open_steps = spans.iter().filter(|s| s.parent_id.as_deref().is_some_and(|p| !ids.contains(p))).count();
    let in_flight = spans
        .iter()
        .filter(|s| (s.name == "rpc.cast" || s.name == "rpc.call") && !parents.contains(s.span_id.as_str()))
        .map(|s| {
            let a = |k: &str| s.attrs.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            format!("{} {} {}", s.name, a("topic"), a("method"))
        })
        .collect();
    Pending { open_steps, in_flight }
}

/// Writes the waiting spans to the database. The insert runs outside any span, so it does not
/// record itself.
pub fn flush_to(db: &crate::db::SharedDb) {
    let rows = drain();
    if rows.is_empty() {
        return;
    }
    if let Err(e) = db.with(|d| d.insert_trace_spans(&rows)) {
        tracing::warn!(error = %e, spans = rows.len(), "trace spans not recorded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, name: &str) -> SpanRow {
        SpanRow {
            request_id: "req-1".into(),
            span_id: id.into(),
            parent_id: parent.map(str::to_string),
            service: "api".into(),
            name: name.into(),
            start_us: 0,
            duration_us: 1,
            attrs: serde_json::json!({"topic": "compute.vm", "method": "build_and_run_instance"}),
        }
    }

    #[test]
    fn a_send_without_its_handler_is_in_flight() {
        let spans = [span("a", None, "api"), span("b", Some("a"), "rpc.cast")];
        let p = pending(&spans);
        assert_eq!(p.open_steps, 0);
        assert_eq!(p.in_flight, ["rpc.cast compute.vm build_and_run_instance"]);
        assert!(!p.is_settled());
    }

    #[test]
    fn a_span_whose_parent_is_not_stored_is_an_open_step() {
        // The compute's spawning step is written; its build step has not closed yet.
        let spans = [span("a", None, "api"), span("b", Some("a"), "rpc.cast"), span("d", Some("c"), "spawning")];
        let p = pending(&spans);
        assert_eq!(p.open_steps, 1);
        assert!(!p.is_settled());
    }

    #[test]
    fn sends_with_handlers_and_stored_parents_are_settled() {
        let spans = [
            span("a", None, "api"),
            span("b", Some("a"), "rpc.cast"),
            span("c", Some("b"), "rpc"),
            span("d", Some("c"), "rpc.call"),
            span("e", Some("d"), "rpc"),
        ];
        assert!(pending(&spans).is_settled());
        assert!(pending(&[]).is_settled(), "nothing recorded is nothing pending; the caller decides what that means");
    }
}
