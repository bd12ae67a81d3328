//! `novabox logs [-f] [SERVICE] [--request-id ID]`: the detached stack's log, `logs/novabox.log`.
//!
//! Filtering is exact because every line logged inside a request or a bus message carries its
//! span fields (see `cli::logging`): `service="compute"` and `request_id=req-…`. A line nested
//! in spans of several services (the in-process bus runs a handler inside its caller's span)
//! belongs to the innermost one, the last `service=` on the line.

use std::io::{BufRead, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::GlobalArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogService {
    Api,
    Conductor,
    Scheduler,
    Compute,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Only this service's lines
    #[arg(value_enum)]
    pub service: Option<LogService>,
    /// Only the lines of this request (`req-…`, as in the `x-openstack-request-id` header)
    #[arg(long)]
    pub request_id: Option<String>,
    /// Keep printing new lines (Ctrl-C stops)
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// The service a log line belongs to: the innermost span's `service` field.
pub fn line_service(line: &str) -> Option<&str> {
    let at = line.rfind("service=")?;
    let rest = line[at + "service=".len()..].trim_start_matches('"');
    let end = rest.find(|c: char| !c.is_ascii_alphanumeric() && c != '_').unwrap_or(rest.len());
    Some(&rest[..end])
}

/// True when the line carries exactly this request id (not one that merely starts with it).
pub fn line_has_request(line: &str, request_id: &str) -> bool {
    let needle = format!("request_id={request_id}");
    line.match_indices(&needle).any(|(at, _)| {
        let next = line[at + needle.len()..].chars().next();
        !matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == '-')
    })
}

fn wanted(line: &str, args: &LogsArgs) -> bool {
    if let Some(s) = args.service {
        let name = format!("{s:?}").to_lowercase();
        if line_service(line) != Some(name.as_str()) {
            return false;
        }
    }
    match &args.request_id {
        Some(id) => line_has_request(line, id),
        None => true,
    }
}

pub fn run(global: &GlobalArgs, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let home = super::home(global)?;
    let path = home.logs_dir().join("novabox.log");
    let mut waiting = false;
    let file = loop {
        match std::fs::File::open(&path) {
            Ok(f) => break f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !args.follow => {
                eprintln!("no log yet at {} (a detached `novabox up` writes it)", path.display());
                return Ok(ExitCode::SUCCESS);
            }
            // Following before the first `up --detach`: wait for the log to appear.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !waiting {
                    eprintln!("waiting for {} (a detached `novabox up` writes it)", path.display());
                    waiting = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    };
    let mut reader = std::io::BufReader::new(file);
    let mut out = std::io::stdout().lock();
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n > 0 && line.ends_with('\n') {
            if wanted(&line, &args) {
                out.write_all(line.as_bytes())?;
            }
            continue;
        }
        if !args.follow {
            if n > 0 && wanted(&line, &args) {
                writeln!(out, "{line}")?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        // A partial last line: read it again whole once the writer finishes it.
        if n > 0 {
            reader.seek(SeekFrom::Current(-(n as i64)))?;
        }
        out.flush()?;
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn innermost_service_and_exact_request_id() {
        let line = "2026-11-27T23:59:01Z  INFO api{service=\"api\" request_id=req-1a method=POST}:rpc{service=\"scheduler\" topic=\"scheduler\" request_id=req-1a}: novabox::scheduler: host selected";
        assert_eq!(line_service(line), Some("scheduler"));
        assert!(line_has_request(line, "req-1a"));
        assert!(!line_has_request(line, "req-1"));
        assert_eq!(line_service("INFO novabox::stack: shutting down"), None);
    }
}
