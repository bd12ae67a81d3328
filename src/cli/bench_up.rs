//! `novabox bench up`: how long CI mode takes to be ready. Runs the real binary, as a CI job
//! does: `init` a fresh home, then `up --driver fake --bus local --detach --wait --json`, then
//! `down`, several times, in a throwaway home on free ports.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

#[derive(Debug, Args)]
pub struct UpBenchArgs {
    /// How many up/down rounds to time
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

fn novabox(home: &std::path::Path) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find the novabox executable")?;
    let mut cmd = Command::new(exe);
    cmd.env_remove("NOVABOX_HOME").env_remove("NOVABOX_LOG").arg("--home").arg(home);
    Ok(cmd)
}

fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

pub fn run(args: UpBenchArgs) -> anyhow::Result<ExitCode> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let dir = tempfile::tempdir().context("cannot create a temporary home")?;
    let home = dir.path().join("home");
    let port = |what: &str| novabox::supervise::free_port().with_context(|| format!("no free port for {what}"));
    let init = timed(
        novabox(&home)?
            .args(["init", "--yes", "--no-install", "--no-boot-probe", "--driver", "fake", "--bus", "local"])
            .args(["--api-port", &port("the API")?.to_string(), "--bus-port", &port("the broker")?.to_string()])
            .arg("--clouds-yaml")
            .arg(dir.path().join("clouds.yaml")),
    )?;
    let mut ups = Vec::new();
    for _ in 0..args.rounds {
        let took =
            timed(novabox(&home)?.args(["up", "--driver", "fake", "--bus", "local", "--detach", "--wait", "--json"]));
        // Always stop what was started, even when the measurement failed.
        let down = timed(novabox(&home)?.arg("down"));
        ups.push(took?);
        down?;
    }
    ups.sort();
    let median = ups[ups.len() / 2];
    println!("init (fresh home, fake driver, local bus)   {}", ms(init));
    println!(
        "up --detach --wait (ready, {} rounds)      min {}  median {}  max {}",
        ups.len(),
        ms(ups[0]),
        ms(median),
        ms(ups[ups.len() - 1])
    );
    println!("first CI run (init + up)                    {}", ms(init + ups[0]));
    Ok(ExitCode::SUCCESS)
}
