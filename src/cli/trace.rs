//! `novabox trace SERVER|REQUEST_ID`: the boot of a server as a numbered tree across services,
//! from the spans recorded while it happened (`trace_spans`, see `novabox::trace`).

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use std::time::{Duration, Instant};

use novabox::compute::states::VmState;
use novabox::db::instances::{Instance, InstanceFilter};
use novabox::db::{Db, OpenOptions};
use novabox::trace::{Pending, SpanRow};

use super::GlobalArgs;

/// `trace` exit code when the server or the request has no recorded spans.
pub const EXIT_NO_TRACE: u8 = 8;

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// A server (name or id) or a request id (`req-…`)
    pub target: String,
    /// Also show the SQL statements each step ran
    #[arg(long)]
    pub sql: bool,
    /// Print the spans as JSON (flat, with parent ids)
    #[arg(long)]
    pub json: bool,
}

/// The request to trace and the server it created, for a server named or with id `target`, or
/// a request id (the server is then the one that request created, if any).
fn request_of(db: &Db, target: &str) -> anyhow::Result<Option<(String, Option<Instance>)>> {
    let all = db.list_instances(&InstanceFilter { include_deleted: true, ..Default::default() })?;
    if target.starts_with("req-") {
        let created = all.into_iter().find(|i| i.request_id.as_deref() == Some(target));
        return Ok(Some((target.to_string(), created)));
    }
    let by_id = all.iter().find(|i| i.uuid == target);
    // A live server wins; a deleted one is still traceable by name when it is the only one.
    let live: Vec<_> = all.iter().filter(|i| i.display_name == target && !i.deleted).collect();
    let by_name = if live.is_empty() { all.iter().filter(|i| i.display_name == target).collect() } else { live };
    let inst = match (by_id, by_name.as_slice()) {
        (Some(i), _) => i,
        (None, [one]) => *one,
        (None, []) => return Ok(None),
        (None, _) => anyhow::bail!("several servers are named {target}; use its id"),
    };
    Ok(inst.request_id.clone().map(|r| (r, Some(inst.clone()))))
}

/// How a step reads in the tree; `sender` is the span that sent the message a handler handles.
fn label(s: &SpanRow, sender: Option<&SpanRow>) -> String {
    let a = |k: &str| s.attrs.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    match s.name.as_str() {
        "rpc" => {
            // A notification's handler says which one it stored.
            match sender.and_then(|p| p.attrs.get("event_type")).and_then(Value::as_str) {
                Some(event) => format!("handle {} on {} {event}", a("method"), a("topic")),
                None => format!("handle {} on {}", a("method"), a("topic")),
            }
        }
        "rpc.cast" | "rpc.call" => {
            let event = a("event_type");
            let head = format!("{} {} {}", s.name, a("topic"), a("method"));
            if event.is_empty() {
                head
            } else {
                format!("{head} {event}")
            }
        }
        "api" => format!("{} {}", a("method"), a("path")),
        _ => {
            let extra: Vec<String> = s
                .attrs
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.as_str() != "sql" && k.as_str() != "trace_parent")
                .map(|(k, v)| format!("{k}={}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect();
            if extra.is_empty() {
                s.name.clone()
            } else {
                format!("{} ({})", s.name, extra.join(", "))
            }
        }
    }
}

fn ms(us: i64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// Prints the tree: steps numbered 1, 2, ...; their parts 1-1, 1-1-1, ... as in nova's boot
/// notes. Work started by an `rpc.cast` is fire and forget, so it is a new top-level step (the
/// scheduler's, then the compute host's) rather than a part of the step that cast it; a call
/// waits for its reply and stays nested.
pub fn render(spans: &[SpanRow], sql: bool) -> String {
    let by_id: HashMap<&str, &SpanRow> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut children: HashMap<Option<&str>, Vec<&SpanRow>> = HashMap::new();
    for s in spans {
        let parent = s.parent_id.as_deref().filter(|p| by_id.get(p).is_some_and(|p| p.name != "rpc.cast"));
        children.entry(parent).or_default().push(s);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start_us);
    }
    let t0 = spans.iter().map(|s| s.start_us).min().unwrap_or(0);
    let mut out = String::new();
    #[allow(clippy::too_many_arguments)]
    fn walk(
        out: &mut String,
        by_id: &HashMap<&str, &SpanRow>,
        children: &HashMap<Option<&str>, Vec<&SpanRow>>,
        parent: Option<&str>,
        prefix: &str,
        depth: usize,
        t0: i64,
        sql: bool,
    ) {
        for (i, s) in children.get(&parent).into_iter().flatten().enumerate() {
            let num = if prefix.is_empty() { format!("{}", i + 1) } else { format!("{prefix}-{}", i + 1) };
            let indent = "  ".repeat(depth);
            let sender = s.parent_id.as_deref().and_then(|p| by_id.get(p).copied());
            let head = format!("{indent}{num}. [{}] {}", s.service, label(s, sender));
            out.push_str(&format!("{head:<72} +{:>9}  {:>9}\n", ms(s.start_us - t0), ms(s.duration_us)));
            if sql {
                for q in s.attrs.get("sql").and_then(Value::as_array).into_iter().flatten() {
                    let text = q["sql"].as_str().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
                    out.push_str(&format!("{indent}     sql {} us: {text}\n", q["us"]));
                }
            }
            walk(out, by_id, children, Some(&s.span_id), &num, depth + 1, t0, sql);
        }
    }
    walk(&mut out, &by_id, &children, None, "", 0, t0, sql);
    out
}

/// How long `trace` waits for a running stack to write the rest of a finished request: the
/// stack writes spans every 250 ms, and a compute service in another process ships its spans
/// to the conductor every 250 ms first, so a request over is whole well within this.
const SETTLE_WAIT: Duration = Duration::from_secs(3);
/// How long `trace` waits for the first spans of a boot still in progress.
const FIRST_SPANS_WAIT: Duration = Duration::from_millis(600);
const POLL: Duration = Duration::from_millis(25);

/// What `trace` found.
enum Found {
    /// The request's work is over and every span of it is stored.
    Whole(Vec<SpanRow>),
    /// The boot is still going: the server's state, and the spans so far.
    InProgress(String, Vec<SpanRow>),
    /// What is stored when waiting longer was pointless (the stack is not running) or the
    /// wait ran out.
    Partial(Vec<SpanRow>, Pending),
}

/// The boot's state when `request_id` created `server` and it is still building.
fn building(db: &Db, server: Option<&Instance>, request_id: &str) -> anyhow::Result<Option<String>> {
    let Some(server) = server else { return Ok(None) };
    if server.request_id.as_deref() != Some(request_id) {
        return Ok(None);
    }
    let now = db.instance_by_uuid(&server.uuid, true)?;
    Ok(now
        .filter(|i| i.vm_state == VmState::Building && !i.deleted)
        .map(|i| format!("BUILD, task {}", i.task_state.map(|t| t.as_str()).unwrap_or("none"))))
}

/// Reads the request's spans, waiting (bounded) while a running stack still has some of a
/// finished request to write: the spans of a boot's last steps are written a moment after the
/// server went ACTIVE, and `trace` right after `server create --wait` must show them.
fn collect(db: &Db, request_id: &str, server: Option<&Instance>, stack_running: bool) -> anyhow::Result<Found> {
    let start = Instant::now();
    loop {
        let spans = db.trace_spans(request_id)?;
        let waited = start.elapsed();
        if let Some(state) = building(db, server, request_id)? {
            if !spans.is_empty() || !stack_running || waited >= FIRST_SPANS_WAIT {
                return Ok(Found::InProgress(state, spans));
            }
        } else {
            let pending = novabox::trace::pending(&spans);
            if pending.is_settled() && !spans.is_empty() {
                return Ok(Found::Whole(spans));
            }
            if !stack_running || waited >= SETTLE_WAIT {
                return Ok(Found::Partial(spans, pending));
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Whether something may still write this home's spans: the stack `up` runs, or a conductor
/// run on its own (`novabox service conductor`) that heartbeats.
fn recording(home: &novabox::home::Home, db: &Db) -> anyhow::Result<bool> {
    if super::up::running(home)?.is_some() {
        return Ok(true);
    }
    let down_after = super::load_config(home)?.compute.service_down_secs;
    Ok(db
        .services()?
        .iter()
        .any(|s| s.binary == novabox::conductor::BINARY && novabox::db::services::is_up(s, down_after)))
}

pub fn run(global: &GlobalArgs, args: TraceArgs) -> anyhow::Result<ExitCode> {
    let home = super::home(global)?;
    if !home.is_initialized() {
        anyhow::bail!("{} is not initialized: run `novabox up` first", home.root().display());
    }
    let db = Db::open(&home.db_file(), OpenOptions::default())?;
    let Some((request_id, server)) = request_of(&db, &args.target)? else {
        eprintln!("no server named or with id {} (a request id starts with req-)", args.target);
        return Ok(ExitCode::from(EXIT_NO_TRACE));
    };
    let stack_running = recording(&home, &db)?;
    let (spans, note) = match collect(&db, &request_id, server.as_ref(), stack_running)? {
        Found::Whole(spans) => (spans, None),
        Found::InProgress(state, spans) => {
            let what = if spans.is_empty() { "no steps recorded yet".to_string() } else { "the steps so far".into() };
            (
                spans,
                Some(format!(
                    "the boot is still in progress ({state}): {what}; run `novabox trace` again for the rest"
                )),
            )
        }
        Found::Partial(spans, pending) if !spans.is_empty() => {
            let mut why = Vec::new();
            if pending.open_steps > 0 {
                why.push(format!("{} steps whose parent step has not been recorded", pending.open_steps));
            }
            if !pending.in_flight.is_empty() {
                why.push(format!("no handler recorded yet for: {}", pending.in_flight.join(", ")));
            }
            let when = if stack_running {
                format!("after waiting {}s", SETTLE_WAIT.as_secs())
            } else {
                "and the stack is not running to record the rest".into()
            };
            (spans, Some(format!("this trace may be incomplete {when} ({})", why.join("; "))))
        }
        Found::Partial(..) => {
            let why = if stack_running {
                format!("the running stack recorded none within {}s", SETTLE_WAIT.as_secs())
            } else {
                "the stack is not running; spans are recorded only by a stack started by this novabox".into()
            };
            eprintln!("no spans recorded for {request_id}: {why}");
            return Ok(ExitCode::from(EXIT_NO_TRACE));
        }
    };
    if args.json {
        if let Some(note) = &note {
            eprintln!("{note}");
        }
        println!("{}", serde_json::to_string_pretty(&spans)?);
        return Ok(ExitCode::SUCCESS);
    }
    if spans.is_empty() {
        println!("request {request_id}: no spans yet");
    } else {
        println!("request {request_id}: {} spans (step, service, start offset, duration)", spans.len());
    }
    if args.sql && !spans.iter().any(|s| s.attrs.get("sql").is_some()) {
        println!("(no SQL was recorded: start the stack with NOVABOX_TRACE=sql to keep it)");
    }
    print!("{}", render(&spans, args.sql));
    if let Some(note) = note {
        println!("({note})");
    }
    Ok(ExitCode::SUCCESS)
}
