//! Log output for the command line: stderr, filtered by -v or NOVABOX_LOG.
//!
//! The line format is tracing-subscriber's `fmt` with span fields and no colours when stderr
//! is not a terminal (a detached stack writes `logs/novabox.log`):
//!
//! ```text
//! 2026-11-27T23:59:01.123456Z  INFO api{service="api" request_id=req-… method=POST path=…}: novabox::api::…: message
//! ```
//!
//! Every line logged while serving a request or a bus message carries the `service` and the
//! `request_id` of its span, which is what `novabox logs SERVICE --request-id ID` filters on.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::GlobalArgs;

pub fn init(global: &GlobalArgs) {
    let level = match global.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let mut filter = std::env::var("NOVABOX_LOG").unwrap_or_else(|_| format!("{level},novabox={level}"));
    if global.sql_echo {
        filter.push_str(",novabox::sql=info");
    }
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    // The span recorder sees novabox's spans whatever the log level, for `novabox trace`.
    // NOVABOX_TRACE=off leaves it out (to measure what it costs, or to save that cost);
    // NOVABOX_TRACE=sql also keeps each span's SQL statements for `trace --sql`.
    let mode = std::env::var("NOVABOX_TRACE").unwrap_or_default();
    let recording = mode != "off" && mode != "0";
    let recorder = recording.then(|| {
        novabox::trace::SpanRecorder::new()
            .with_sql(mode == "sql")
            .with_filter(tracing_subscriber::filter::Targets::new().with_target("novabox", tracing::Level::INFO))
    });
    let _ = tracing_subscriber::registry().with(recorder).with(fmt).try_init();
}
