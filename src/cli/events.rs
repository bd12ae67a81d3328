//! `novabox events [-f]`: the `compute.instance.*` notifications, as the conductor stored them
//! from the bus (topic `notifications.info`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use novabox::db::{Db, OpenOptions};

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events as they are published (Ctrl-C stops)
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
    /// Only the events of this server (id)
    #[arg(long)]
    pub server: Option<String>,
}

pub fn run(global: &GlobalArgs, args: EventsArgs) -> anyhow::Result<ExitCode> {
    let home = super::home(global)?;
    if !home.is_initialized() {
        anyhow::bail!("{} is not initialized: run `novabox up` first", home.root().display());
    }
    let db = Db::open(&home.db_file(), OpenOptions::default())?;
    let mut after = 0;
    loop {
        let batch = db.notifications_after(after, 500)?;
        for (id, n) in &batch {
            after = *id;
            // Injected faults show beside the notifications they cause (docs/faults.md).
            if !n.event_type.starts_with("compute.instance.") && n.event_type != novabox::faults::INJECTED_EVENT {
                continue;
            }
            if args.server.as_deref().is_some_and(|s| n.instance_uuid.as_deref() != Some(s)) {
                continue;
            }
            if args.json {
                println!("{}", serde_json::to_string(n)?);
            } else {
                println!(
                    "{}  {:<36}  {}  {}  {}",
                    n.timestamp,
                    n.event_type,
                    n.instance_uuid.as_deref().unwrap_or("-"),
                    n.publisher_id,
                    n.request_id.as_deref().unwrap_or("-")
                );
            }
        }
        if batch.len() == 500 {
            continue;
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // Polling the table keeps `events` independent of the bus kind and of the stack's process.
        std::thread::sleep(Duration::from_millis(250));
    }
}
