//! `novabox trace SERVER|REQUEST_ID`: the boot of a server as a numbered tree across services,
//! from the spans recorded while it happened (`trace_spans`, see `novabox::trace`).

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use novabox::db::instances::InstanceFilter;
use novabox::db::{Db, OpenOptions};
use novabox::trace::SpanRow;

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

/// The create request of a server named or with id `target`.
fn request_of(db: &Db, target: &str) -> anyhow::Result<Option<String>> {
    if target.starts_with("req-") {
        return Ok(Some(target.to_string()));
    }
    let all = db.list_instances(&InstanceFilter { include_deleted: true, ..Default::default() })?;
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
    Ok(inst.request_id.clone())
}

/// How a step reads in the tree.
fn label(s: &SpanRow) -> String {
    let a = |k: &str| s.attrs.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    match s.name.as_str() {
        "rpc" => format!("handle {} on {}", a("method"), a("topic")),
        "rpc.cast" | "rpc.call" => format!("{} {} {}", s.name, a("topic"), a("method")),
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
    fn walk(
        out: &mut String,
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
            let head = format!("{indent}{num}. [{}] {}", s.service, label(s));
            out.push_str(&format!("{head:<72} +{:>9}  {:>9}\n", ms(s.start_us - t0), ms(s.duration_us)));
            if sql {
                for q in s.attrs.get("sql").and_then(Value::as_array).into_iter().flatten() {
                    let text = q["sql"].as_str().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
                    out.push_str(&format!("{indent}     sql {} us: {text}\n", q["us"]));
                }
            }
            walk(out, children, Some(&s.span_id), &num, depth + 1, t0, sql);
        }
    }
    walk(&mut out, &children, None, "", 0, t0, sql);
    out
}

pub fn run(global: &GlobalArgs, args: TraceArgs) -> anyhow::Result<ExitCode> {
    let home = super::home(global)?;
    if !home.is_initialized() {
        anyhow::bail!("{} is not initialized: run `novabox up` first", home.root().display());
    }
    let db = Db::open(&home.db_file(), OpenOptions::default())?;
    let Some(request_id) = request_of(&db, &args.target)? else {
        eprintln!("no server named or with id {} (a request id starts with req-)", args.target);
        return Ok(ExitCode::from(EXIT_NO_TRACE));
    };
    let spans = db.trace_spans(&request_id)?;
    if spans.is_empty() {
        eprintln!(
            "no spans recorded for {request_id}: spans are written a moment after the work (try again), and only by \
             a stack started by this novabox"
        );
        return Ok(ExitCode::from(EXIT_NO_TRACE));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&spans)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("request {request_id}: {} spans (step, service, start offset, duration)", spans.len());
    if args.sql && !spans.iter().any(|s| s.attrs.get("sql").is_some()) {
        println!("(no SQL was recorded: start the stack with NOVABOX_TRACE=sql to keep it)");
    }
    print!("{}", render(&spans, args.sql));
    Ok(ExitCode::SUCCESS)
}
