//! `novabox fault add|list|show|rm|clear`: the fault table of the running stack, through its
//! admin API (`/novabox/v1/faults`, docs/faults.md). The stack must run with faults enabled.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use novabox::faults::RuleSpec;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct FaultArgs {
    /// Print the API's JSON
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: FaultCommand,
}

#[derive(Debug, Subcommand)]
pub enum FaultCommand {
    /// Add a rule: what it matches, one effect, and when it fires
    ///
    /// Examples: `fault add compute spawn --error NoValidHost --times 1`;
    /// `fault add --route /compute/v2.1/servers --http-method POST --status 503 --retry-after 2 --times 1`;
    /// `fault add compute spawning --delay 10 --server web-1`; `fault add compute networking --kill`
    Add(Box<AddArgs>),
    /// The rules, with how often each matched and fired
    List,
    /// One rule
    Show { id: String },
    /// Remove a rule
    Rm { id: String },
    /// Remove every rule
    Clear,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The service whose step it matches: scheduler, compute or conductor
    pub service: Option<String>,
    /// The step (RPC method or build step, as `novabox trace` names them), e.g. spawn, spawning,
    /// select_destinations, allocate_network
    pub method: Option<String>,
    /// An API route instead of a step, e.g. /compute/v2.1/servers (`*` one segment, `**` the rest)
    #[arg(long)]
    pub route: Option<String>,
    /// The route's HTTP method (any when not given)
    #[arg(long)]
    pub http_method: Option<String>,
    /// Only for this server: its id, or a regular expression on its name
    #[arg(long)]
    pub server: Option<String>,
    /// Only for this project (its id)
    #[arg(long)]
    pub project: Option<String>,
    /// Effect: fail with nova's exception (NoValidHost, BuildAbortException, InstanceFaultRollback, ...)
    #[arg(long)]
    pub error: Option<String>,
    /// The exception's reason, an error's own message, or a status's body message
    #[arg(long)]
    pub message: Option<String>,
    /// Effect (routes): answer this HTTP status with the service's error body
    #[arg(long)]
    pub status: Option<u16>,
    /// With --status: the Retry-After header, in seconds
    #[arg(long)]
    pub retry_after: Option<u64>,
    /// Effect: hold the step (or request) this many seconds, then go on
    #[arg(long)]
    pub delay: Option<f64>,
    /// Effect: lose the message; the server stays in the state it was in
    #[arg(long)]
    pub drop: bool,
    /// Effect: kill the compute service; it starts again (init_host) after --restart-after seconds
    #[arg(long)]
    pub kill: bool,
    /// With --kill: seconds until the compute service starts again (default 5)
    #[arg(long)]
    pub restart_after: Option<u64>,
    /// Fire at most N times
    #[arg(long)]
    pub times: Option<u64>,
    /// Fire with this probability (0 < p <= 1) each time it matches
    #[arg(long)]
    pub probability: Option<f64>,
    /// Let the first N matches pass
    #[arg(long)]
    pub after: Option<u64>,
    /// Remove the rule after this many seconds (by the test clock)
    #[arg(long)]
    pub expires_in: Option<u64>,
}

impl AddArgs {
    fn spec(&self) -> RuleSpec {
        RuleSpec {
            service: self.service.clone(),
            method: self.method.clone(),
            route: self.route.clone(),
            http_method: self.http_method.clone(),
            server: self.server.clone(),
            project: self.project.clone(),
            error: self.error.clone(),
            message: self.message.clone(),
            status: self.status,
            retry_after: self.retry_after,
            delay: self.delay,
            drop: self.drop,
            kill: self.kill,
            restart_after: self.restart_after,
            times: self.times,
            probability: self.probability,
            after: self.after,
            expires_in: self.expires_in,
        }
    }
}

pub fn run(global: &GlobalArgs, args: FaultArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = super::server::login(global, true).await?;
        match args.command {
            FaultCommand::Add(add) => {
                // Checked here too, so a typo is refused with the valid names without a round trip.
                let spec = add.spec();
                spec.check()?;
                let v = client.novabox(Method::POST, "/faults", Some(json!({"fault": spec}))).await?;
                if args.json {
                    println!("{v}");
                } else {
                    println!("added fault rule {}", v["fault"]["id"].as_str().unwrap_or("-"));
                    print_rules(std::slice::from_ref(&v["fault"]));
                }
            }
            FaultCommand::List => {
                let v = client.novabox(Method::GET, "/faults", None).await?;
                if args.json {
                    println!("{v}");
                } else {
                    let rules = v["faults"].as_array().cloned().unwrap_or_default();
                    if rules.is_empty() {
                        println!("no fault rules");
                    }
                    print_rules(&rules);
                }
            }
            FaultCommand::Show { id } => {
                let v = client.novabox(Method::GET, &format!("/faults/{id}"), None).await?;
                if args.json {
                    println!("{v}");
                } else {
                    println!("{}", serde_json::to_string_pretty(&v["fault"])?);
                }
            }
            FaultCommand::Rm { id } => {
                client.novabox(Method::DELETE, &format!("/faults/{id}"), None).await?;
                if !args.json {
                    println!("removed fault rule {id}");
                }
            }
            FaultCommand::Clear => {
                let v = client.novabox(Method::DELETE, "/faults", None).await?;
                if args.json {
                    println!("{v}");
                } else {
                    println!("removed {} fault rules", v["cleared"].as_u64().unwrap_or(0));
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// One line per rule: id, what it matches, its effect, its counts.
fn print_rules(rules: &[Value]) {
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    println!("{:<36}  {:<44}  {:<28}  {:>5}  {:>5}  state", "id", "matches", "effect", "seen", "fired");
    for r in rules {
        let mut matches = Vec::new();
        for key in ["service", "method", "http_method", "route"] {
            if let Some(v) = r.get(key).filter(|v| !v.is_null()) {
                matches.push(s(v));
            }
        }
        for key in ["server", "project"] {
            if let Some(v) = r.get(key).filter(|v| !v.is_null()) {
                matches.push(format!("{key}={}", s(v)));
            }
        }
        let effect = match r["effect"].as_str().unwrap_or_default() {
            "error" => format!("error {}", r.get("error").map(s).unwrap_or_else(|| "(message)".into())),
            "status" => match r.get("retry_after") {
                Some(ra) => format!("status {} retry-after {}", s(&r["status"]), s(ra)),
                None => format!("status {}", s(&r["status"])),
            },
            "delay" => format!("delay {} s", s(&r["delay"])),
            other => other.to_string(),
        };
        let mut when = Vec::new();
        for key in ["times", "probability", "after"] {
            if let Some(v) = r.get(key).filter(|v| !v.is_null()) {
                when.push(format!("{key} {}", s(v)));
            }
        }
        let state = if r["spent"] == true { "spent" } else { "active" };
        let effect = if when.is_empty() { effect } else { format!("{effect} ({})", when.join(", ")) };
        println!(
            "{:<36}  {:<44}  {:<28}  {:>5}  {:>5}  {state}",
            s(&r["id"]),
            matches.join(" "),
            effect,
            r["seen"].as_u64().unwrap_or(0),
            r["fired"].as_u64().unwrap_or(0)
        );
    }
}
