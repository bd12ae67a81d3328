//! `novabox doctor`: prints the report as a table or as JSON; the exit code says whether any
//! check failed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use novabox::doctor::{self, Report, Status};

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON (schema documented in docs/doctor.md)
    #[arg(long)]
    pub json: bool,
    /// Boot the test guest under KVM (and TCG when KVM fails) to prove which one works
    #[arg(long)]
    pub boot_probe: bool,
    /// Read /proc, /sys and DMI below DIR instead of / (host fixtures in tests)
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub host_root: PathBuf,
}

pub fn run(global: &GlobalArgs, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let home = super::home(global)?;
    let config = super::load_config(&home)?;
    let opts = doctor::Options::for_home(&home, &args.host_root, args.boot_probe);
    if args.boot_probe && !args.json {
        eprintln!(
            "booting the test guest (up to {} s)...",
            (doctor::probe::KVM_TIMEOUT + doctor::probe::TCG_TIMEOUT).as_secs()
        );
    }
    let report = doctor::run(&config, &opts);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(exit_code(&report))
}

/// 0 when no check failed, `EXIT_CHECKS_FAILED` otherwise.
pub fn exit_code(report: &Report) -> ExitCode {
    if report.has_failures() {
        ExitCode::from(super::EXIT_CHECKS_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

pub fn print_table(report: &Report) {
    let env = &report.environment;
    println!(
        "host           {}{}",
        env.name,
        env.container.as_ref().map(|c| format!(" ({c} container)")).unwrap_or_default()
    );
    if report.host_root != std::path::Path::new("/") {
        println!("host root      {}", report.host_root.display());
    }
    let width = report.checks.iter().map(|c| c.id.len()).max().unwrap_or(0);
    for c in &report.checks {
        println!("{}  {:<width$}  {}", c.status.as_str(), c.id, c.finding);
        if !c.fix.is_empty() {
            println!("      {:<width$}  fix: {}", "", c.fix);
        }
    }
    print_decision(report);
}

/// Decision and counts, for `init`.
pub fn print_summary(report: &Report) {
    for c in report.checks.iter().filter(|c| c.status == Status::Fail) {
        println!("FAIL           {}: {}", c.id, c.finding);
    }
    print_decision(report);
}

fn print_decision(report: &Report) {
    let count = |s| report.checks.iter().filter(|c| c.status == s).count();
    let d = &report.decision;
    println!(
        "decision       accel {}, driver {}, network {} ({})",
        name(&d.accel),
        name(&d.driver),
        name(&d.network),
        d.reason
    );
    println!(
        "checks         {} PASS, {} NOTE, {} WARN, {} FAIL",
        count(Status::Pass),
        count(Status::Note),
        count(Status::Warn),
        count(Status::Fail)
    );
}

/// The lowercase name serde gives a config enum.
fn name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}
