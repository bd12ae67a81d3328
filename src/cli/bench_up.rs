//! `novabox bench up`: how long CI mode takes to be ready. Runs the real binary, as a CI job
//! does: `init` a fresh home, then `up --driver fake --bus local --detach --wait --json`, then
//! `down`, several times, in a throwaway home on free ports.
//!
//! `--new-home` times instead what a user's first `novabox up --yes` does on a new home with
//! this host's defaults (qemu, RabbitMQ when installed, the probe boot): init as `up` runs it,
//! then the stack until ready, and beside it the bare operation the probe wraps (one qemu boot
//! of the test guest under TCG). User networking, as a benchmark must not build bridges on
//! the host; no package installs.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

#[derive(Debug, Args)]
pub struct UpBenchArgs {
    /// How many up/down rounds to time
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Time a first `up --yes` on a new home instead (qemu, the probe boot, the broker)
    #[arg(long)]
    pub new_home: bool,
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

pub fn run(global: &super::GlobalArgs, args: UpBenchArgs) -> anyhow::Result<ExitCode> {
    if args.new_home {
        return new_home(global);
    }
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

/// The first `up --yes` on a new home, and the bare probe boot it wraps.
fn new_home(global: &super::GlobalArgs) -> anyhow::Result<ExitCode> {
    use super::init::{InitArgs, NetworkModeArg};
    use novabox::doctor::probe;
    let dir = tempfile::tempdir().context("cannot create a temporary home")?;
    let home = dir.path().join("home");
    let port = |what: &str| novabox::supervise::free_port().with_context(|| format!("no free port for {what}"));
    // As `up --yes` initializes a new home, on free ports and without touching the user's
    // clouds.yaml or the host's interfaces.
    let mut init = InitArgs::for_up(true, false);
    init.no_install = true;
    init.network_mode = Some(NetworkModeArg::User);
    init.api_port = Some(port("the API")?);
    init.bus_port = Some(port("the broker")?);
    init.clouds_yaml = Some(dir.path().join("clouds.yaml"));
    let bench_global = super::GlobalArgs { home: Some(home.clone()), sql_echo: false, verbose: global.verbose };
    let started = Instant::now();
    if super::init::run(&bench_global, init)? != ExitCode::SUCCESS {
        bail!("novabox init failed in the benchmark home");
    }
    let init_took = started.elapsed();
    let up = timed(novabox(&home)?.args(["up", "--detach", "--wait", "--json"]));
    let down = timed(novabox(&home)?.arg("down"));
    let up = up?;
    down?;
    let report = novabox::doctor::Report::load(&home.join(novabox::doctor::REPORT_FILE))
        .context("the first up saved no doctor report")?;
    let finding =
        |id: &str| report.check(id).map(|c| format!("{} {}", c.status.as_str(), c.finding)).unwrap_or_default();

    // The bare operation: the same test guest booted once under TCG by qemu, nothing else.
    let image = probe::TestImage::in_dir(&home.join("images").join(probe::TEST_IMAGE_DIR));
    let console = dir.path().join("bare-probe.console.log");
    let bare = probe::boot(&image, novabox::config::Accel::Tcg, probe::TCG_TIMEOUT, &console)?;
    if !bare.reached_init {
        bail!("the bare TCG boot of the test guest failed: {}", bare.detail);
    }
    println!("first up --yes on a new home (qemu, probe boot, {} cores)", std::thread::available_parallelism()?.get());
    println!("  init (as up runs it)                      {}", ms(init_took));
    println!("  up --detach --wait (doctor probe, broker) {}", ms(up));
    println!("  total                                     {}", ms(init_took + up));
    println!("  decision: accel {:?} ({})", report.decision.accel, report.decision.reason);
    println!("  probe.kvm: {}", finding("probe.kvm"));
    println!("  probe.tcg: {}", finding("probe.tcg"));
    println!("bare qemu boot of the test guest under TCG  {}", ms(bare.elapsed));
    Ok(ExitCode::SUCCESS)
}
