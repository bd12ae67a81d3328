//! `novabox bench up`: how long CI mode takes to be ready. Runs the real binary, as a CI job
//! does: `init` a fresh home, then `up --driver fake --bus local --detach --wait --json`, then
//! `down`, several times, in a throwaway home on free ports.
//!
//! `--new-home` times instead what a user's first `novabox up --yes` does on a new home with
//! this host's defaults (qemu, RabbitMQ when installed, the probe boot): init as `up` runs it,
//! then the stack until ready; first with an empty per-user cache (the test guest is built),
//! then on a second new home that finds it there; and beside it the bare operation the probe
//! wraps (one qemu boot of the test guest under TCG). User networking, as a benchmark must not
//! build bridges on the host; no package installs; a throwaway user cache.

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

/// One first `up --yes` on a new home (init as `up` runs it, then the stack until ready), with
/// the per-user cache of built test guests in `cache`.
struct FirstUp {
    init: Duration,
    up: Duration,
    report: novabox::doctor::Report,
    /// How long after ready the deferred TCG probe saved its result.
    proved_after: Option<Duration>,
}

fn first_up(
    global: &super::GlobalArgs,
    dir: &std::path::Path,
    name: &str,
    cache: &std::path::Path,
) -> anyhow::Result<FirstUp> {
    use super::init::{InitArgs, NetworkModeArg};
    let home = dir.join(name);
    let port = |what: &str| novabox::supervise::free_port().with_context(|| format!("no free port for {what}"));
    // As `up --yes` initializes a new home, on free ports and without touching the user's
    // clouds.yaml, cache or the host's interfaces.
    let mut init = InitArgs::for_up(true, false);
    init.no_install = true;
    init.network_mode = Some(NetworkModeArg::User);
    init.api_port = Some(port("the API")?);
    init.bus_port = Some(port("the broker")?);
    init.clouds_yaml = Some(dir.join(format!("{name}-clouds.yaml")));
    init.cache_dir = Some(cache.to_path_buf());
    let bench_global = super::GlobalArgs { home: Some(home.clone()), sql_echo: false, verbose: global.verbose };
    let started = Instant::now();
    if super::init::run(&bench_global, init)? != ExitCode::SUCCESS {
        bail!("novabox init failed in the benchmark home");
    }
    let init_took = started.elapsed();
    let up = timed(novabox(&home)?.env(novabox::home::CACHE_ENV, cache).args(["up", "--detach", "--wait", "--json"]));
    // The stack is ready once the decision is made; the TCG probe, which cannot change it,
    // may still be going. Wait for it (bounded) so the report shows its result.
    let file = home.join(novabox::doctor::REPORT_FILE);
    let ready_at = Instant::now();
    let deadline = ready_at + novabox::doctor::probe::TCG_TIMEOUT + Duration::from_secs(5);
    let mut report = novabox::doctor::Report::load(&file);
    let mut proved_after = None;
    while up.is_ok() && report.as_ref().is_some_and(|r| r.tcg_pending) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        report = novabox::doctor::Report::load(&file);
        if report.as_ref().is_some_and(|r| !r.tcg_pending) {
            proved_after = Some(ready_at.elapsed());
        }
    }
    // Ready means the test guest is bootable: the stack imported it beside the broker's start.
    let tiny = novabox::db::Db::open(&home.join("novabox.db"), Default::default())
        .and_then(|db| db.images())
        .map(|images| images.iter().any(|i| i.name.as_deref() == Some(novabox::images::TEST_IMAGE_NAME)));
    let down = timed(novabox(&home)?.arg("down"));
    let up = up?;
    down?;
    if !tiny.context("cannot read the benchmark home's images")? {
        bail!("the first up was ready without the test image `{}`", novabox::images::TEST_IMAGE_NAME);
    }
    let report = report.context("the first up saved no doctor report")?;
    Ok(FirstUp { init: init_took, up, report, proved_after })
}

/// The first `up --yes` on a new home, with an empty per-user cache (the test guest is built)
/// and again on a second new home with the cache the first one filled; and the bare probe
/// boot.
fn new_home(global: &super::GlobalArgs) -> anyhow::Result<ExitCode> {
    use novabox::doctor::probe;
    let dir = tempfile::tempdir().context("cannot create a temporary home")?;
    let cache = dir.path().join("user-cache");
    let cold = first_up(global, dir.path(), "home", &cache)?;
    let warm = first_up(global, dir.path(), "home2", &cache)?;
    let report = &cold.report;
    let finding =
        |id: &str| report.check(id).map(|c| format!("{} {}", c.status.as_str(), c.finding)).unwrap_or_default();

    // The bare operation: the same test guest booted once under TCG by qemu, nothing else.
    let image = probe::TestImage::in_dir(&dir.path().join("home").join("images").join(probe::TEST_IMAGE_DIR));
    let console = dir.path().join("bare-probe.console.log");
    let bare = probe::boot(&image, novabox::config::Accel::Tcg, probe::TCG_TIMEOUT, &console)?;
    if !bare.reached_init {
        bail!("the bare TCG boot of the test guest failed: {}", bare.detail);
    }
    println!("first up --yes on a new home (qemu, probe boot, {} cores)", std::thread::available_parallelism()?.get());
    for (what, run) in [("empty user cache: test guest built", &cold), ("test guest from the user cache", &warm)] {
        println!("  {what}");
        println!("    init (as up runs it)                      {}", ms(run.init));
        println!("    up --detach --wait (doctor, broker)       {}", ms(run.up));
        println!("    total                                     {}", ms(run.init + run.up));
        if let Some(after) = run.proved_after {
            println!("    TCG probe done after ready (not waited)   +{}", ms(after));
        }
    }
    println!("  decision: accel {:?} ({})", report.decision.accel, report.decision.reason);
    println!("  probe.kvm: {}", finding("probe.kvm"));
    println!("  probe.tcg: {}", finding("probe.tcg"));
    println!("bare qemu boot of the test guest under TCG  {}", ms(bare.elapsed));
    Ok(ExitCode::SUCCESS)
}
