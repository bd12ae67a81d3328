//! `novabox clock show|advance SECONDS|reset`: the running stack's test clock, through its
//! admin API (`/novabox/v1/clock`, docs/faults.md). Token expiry, service heartbeats, image
//! cache aging and history pruning all read it.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct ClockArgs {
    /// Print the API's JSON
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: ClockCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClockCommand {
    /// The stack's time, the real time and the offset between them
    Show,
    /// Move the clock forward by SECONDS
    Advance { seconds: i64 },
    /// Back to the real time
    Reset,
}

pub fn run(global: &GlobalArgs, args: ClockArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = super::server::login(global, true).await?;
        let v = match args.command {
            ClockCommand::Show => client.novabox(Method::GET, "/clock", None).await?,
            ClockCommand::Advance { seconds } => {
                client.novabox(Method::POST, "/clock/advance", Some(json!({"seconds": seconds}))).await?
            }
            ClockCommand::Reset => client.novabox(Method::POST, "/clock/reset", None).await?,
        };
        if args.json {
            println!("{v}");
        } else {
            let c = &v["clock"];
            let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
            println!("now     {}", s(&c["now"]));
            println!("real    {}", s(&c["real"]));
            println!("offset  {} s", c["offset_seconds"].as_f64().unwrap_or(0.0));
        }
        Ok(ExitCode::SUCCESS)
    })
}
