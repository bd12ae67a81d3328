//! `novabox up`: start the whole stack (broker when RabbitMQ, conductor, scheduler, compute,
//! API) in the foreground, or in the background with `--detach`; `novabox down` stops it.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use novabox::config::{BusKind, Config};
use novabox::home::Home;
use novabox::secrets::Secrets;
use novabox::stack::{self, Ready, Service};
use novabox::supervise;

use super::init::{BusArg, DriverArg, InitArgs};
use super::GlobalArgs;

/// Exit code when the stack could not start (the message says which step and why).
pub const EXIT_START_FAILED: u8 = 3;
/// Exit code when a detached stack did not become ready within `--timeout` (it was stopped).
pub const EXIT_NOT_READY: u8 = 6;
/// Exit code of `down --purge` when the removal was not confirmed.
pub const EXIT_NOT_CONFIRMED: u8 = 7;

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Also delete this home (database, images, guests, logs) after confirmation
    #[arg(long)]
    pub purge: bool,
    /// Do not ask before --purge (for scripts)
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Run in the background; return once the API answers
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// The explicit form of --detach for scripts: return once the stack is ready
    #[arg(long)]
    pub wait: bool,
    /// Print the endpoints and credentials as JSON once ready
    #[arg(long)]
    pub json: bool,
    /// Consent to installing missing host packages when the home is new
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Message bus for this run (overrides the config)
    #[arg(long, value_enum)]
    pub bus: Option<BusArg>,
    /// Virt driver for this run (overrides the config)
    #[arg(long, value_enum)]
    pub driver: Option<DriverArg>,
    /// Seconds `--detach` waits for the stack to be ready
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Enable fault injection and the test clock for this run (as `[faults] enabled = true`)
    #[arg(long)]
    pub faults: bool,
    /// A new home is made as `novabox init --devstack` makes it (DevStack's clouds, openrc,
    /// flavors and networks); an existing one must have been
    #[arg(long)]
    pub devstack: bool,
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// Which service to run
    #[arg(value_enum)]
    pub service: Service,
}

use stack::{detach, phase_file, pid_file, ready_file};

/// Shows start-up phases with their elapsed times on stderr (drawn only on a terminal).
struct Phases {
    bar: indicatif::ProgressBar,
    current: Option<(String, Instant)>,
}

impl Phases {
    fn new() -> Phases {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        Phases { bar, current: None }
    }

    fn enter(&mut self, name: &str) {
        if self.current.as_ref().is_some_and(|(n, _)| n == name) {
            return;
        }
        self.finish_current("ok");
        self.bar.reset_elapsed();
        self.bar.set_message(name.to_string());
        self.current = Some((name.to_string(), Instant::now()));
    }

    fn finish_current(&mut self, mark: &str) {
        if let Some((name, at)) = self.current.take() {
            self.bar.println(format!("{mark:>4}  {name:<26} {:>6} ms", at.elapsed().as_millis()));
        }
    }

    fn current(&self) -> Option<&str> {
        self.current.as_ref().map(|(n, _)| n.as_str())
    }

    fn done(mut self, mark: &str) {
        self.finish_current(mark);
        self.bar.finish_and_clear();
    }
}

/// The pid of this home's running stack, if any.
pub fn running(home: &Home) -> anyhow::Result<Option<i32>> {
    Ok(stack::running(home)?)
}

fn effective_config(home: &Home, bus: Option<BusArg>, driver: Option<DriverArg>) -> anyhow::Result<Config> {
    let mut config = Config::load(&home.config_file())?;
    if let Some(b) = bus {
        config.bus.kind = b.into();
    }
    if let Some(d) = driver {
        config.compute.driver = d.into();
    }
    Ok(config)
}

pub fn up(global: &GlobalArgs, args: UpArgs) -> anyhow::Result<ExitCode> {
    let home = super::home(global)?;
    if let Some(pid) = running(&home)? {
        println!("novabox is already running for {} (pid {pid}); `novabox down` stops it", home.root().display());
        return Ok(ExitCode::SUCCESS);
    }
    if !home.is_initialized() {
        eprintln!("{} is new: initializing it first (phase provision)", home.root().display());
        // A run on the fake driver has no use for the (slow) probe boot.
        let fake = matches!(args.driver, Some(DriverArg::Fake));
        let mut init = InitArgs::for_up(args.yes, fake);
        init.devstack = args.devstack;
        init.summary_on_stderr = args.json;
        super::init::run(global, init)?;
    } else if args.devstack && !novabox::devstack::openrc_path(&home).exists() {
        // init decides the clouds.yaml file and names; `up` would have to guess them.
        bail!(
            "{} was not made with --devstack. Nothing was changed. Run `novabox init --devstack` \
             (with the --clouds-yaml you gave init, if any), then `novabox up`.",
            home.root().display()
        );
    }
    let mut config = effective_config(&home, args.bus, args.driver)?;
    config.faults.enabled |= args.faults;
    if args.detach || args.wait {
        return detach(&home, global, &args);
    }
    run_foreground(&home, global, config, &Service::ALL, args.json)
}

/// Starts `novabox up` again as a background process with its output in logs/, and waits for
/// the ready file it writes.
fn detach(home: &Home, global: &GlobalArgs, args: &UpArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the novabox executable")?;
    let mut cmd: Vec<OsString> = vec!["up".into()];
    if global.sql_echo {
        cmd.push("--sql-echo".into());
    }
    for _ in 0..global.verbose.max(1) {
        cmd.push("-v".into());
    }
    if let Some(b) = args.bus {
        cmd.extend(["--bus".into(), format!("{b:?}").to_lowercase().into()]);
    }
    if let Some(d) = args.driver {
        cmd.extend(["--driver".into(), format!("{d:?}").to_lowercase().into()]);
    }
    if args.faults {
        cmd.push("--faults".into());
    }
    let log_path = detach::log_file(home);
    let mut child = detach::spawn(home, &exe, &cmd)?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut phases = Phases::new();
    phases.enter("start");
    loop {
        if let Ok(name) = std::fs::read_to_string(phase_file(home)) {
            phases.enter(name.trim());
        }
        if let Ok(text) = std::fs::read_to_string(ready_file(home)) {
            phases.done("ok");
            if args.json {
                println!("{text}");
            } else {
                let ready: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                println!("novabox is up (pid {}), logs in {}", child.id(), log_path.display());
                println!("  api     {}", ready["api_url"].as_str().unwrap_or("-"));
                println!("  driver  {}", ready["driver"].as_str().unwrap_or("-"));
                println!("  network {}", ready["network"].as_str().unwrap_or("-"));
                println!("  stop it with `novabox --home {} down`", home.root().display());
            }
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            // A failed stack leaves its last phase on disk for exactly this message.
            if let Ok(name) = std::fs::read_to_string(phase_file(home)) {
                phases.enter(name.trim());
            }
            let phase = phases.current().unwrap_or("start").to_string();
            phases.done("FAIL");
            let _ = std::fs::remove_file(phase_file(home));
            let why = detach::last_error_line(&log_path).unwrap_or_else(|| format!("it exited with {status}"));
            eprintln!(
                "error: novabox up failed in phase `{phase}`: {why}\n  read {} for the whole story",
                log_path.display()
            );
            return Ok(ExitCode::from(EXIT_START_FAILED));
        }
        if Instant::now() > deadline {
            phases.done("FAIL");
            let _ = supervise::stop_pid(child.id() as i32, Duration::from_secs(10));
            eprintln!("error: novabox up was not ready within {} s; read {}", args.timeout, log_path.display());
            return Ok(ExitCode::from(EXIT_NOT_READY));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_foreground(
    home: &Home,
    global: &GlobalArgs,
    config: Config,
    services: &[Service],
    json: bool,
) -> anyhow::Result<ExitCode> {
    home.check_writable()?;
    let started = Instant::now();
    let secrets = Secrets::load(&home.secrets_file())?
        .ok_or_else(|| anyhow::anyhow!("{} is missing: run `novabox init`", home.secrets_file().display()))?;
    let owns_stack = services.len() == Service::ALL.len();
    if owns_stack {
        supervise::write_pid_file(&pid_file(home), std::process::id())?;
        let _ = novabox::home::write_atomic(&phase_file(home), b"doctor", 0o600);
    }
    tracing::info!(phase = "doctor", "starting");
    // The probe boot, when one is due, runs beside the broker's start (both take seconds);
    // the services wait for its decision.
    let mut probe = match novabox::doctor::startup::run(home, &config) {
        Ok(probe) => probe,
        Err(e) => {
            if owns_stack {
                let _ = std::fs::remove_file(pid_file(home));
            }
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(EXIT_START_FAILED));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let config = Arc::new(config);
    let result = runtime.block_on(async {
        let bus_kind = novabox::bus::resolve_kind(&config);
        let phase_path = phase_file(home);
        let phase: stack::PhaseFn = Arc::new(move |name: &'static str| {
            tracing::info!(phase = name, "starting");
            if owns_stack {
                let _ = novabox::home::write_atomic(&phase_path, name.as_bytes(), 0o600);
            }
        });
        phase("broker");
        let bus = novabox::bus::connect(&config, home, &secrets).await.context("starting the message bus")?;
        if probe.deciding() {
            phase("doctor probe");
        }
        tokio::task::block_in_place(|| probe.decided())?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = stop_tx.send(true);
        });
        let ready_path = ready_file(home);
        let secrets_for_ready = secrets.clone();
        let config_for_ready = config.clone();
        let on_ready = move |ready: Ready| {
            let doc =
                detach::ready_document(&ready, &config_for_ready, &secrets_for_ready, bus_kind, started.elapsed());
            if owns_stack {
                let _ = novabox::home::write_atomic(&ready_path, doc.to_string().as_bytes(), 0o600);
            }
            if json {
                println!("{doc}");
            } else {
                println!(
                    "novabox up in {} ms: {} on the {} bus, driver {}, network {}",
                    started.elapsed().as_millis(),
                    ready.services.join(", "),
                    format!("{bus_kind:?}").to_lowercase(),
                    ready.driver,
                    ready.network
                );
                if let Some(url) = &ready.api_url {
                    println!("  api {url}  (clouds.yaml entries `novabox`, `novabox-admin`; Ctrl-C stops)");
                }
            }
            let _ = std::io::stdout().flush();
        };
        let outcome = stack::run(
            home.clone(),
            config.clone(),
            bus.clone(),
            services,
            global.sql_echo,
            stack::Hooks { phase, on_ready },
            stop_rx,
        )
        .await;
        // Close our side first, so stopping the broker is not seen as a fault to recover from.
        bus.close().await;
        if owns_stack && bus_kind == BusKind::Rabbitmq && config.bus.url.is_none() {
            if let Err(e) = novabox::supervise::rabbitmq::RabbitMq::stop(home) {
                eprintln!("warning: stopping RabbitMQ: {e}");
            }
        }
        outcome.map_err(anyhow::Error::from)
    });
    // A TCG probe still going is stopped now, before the pid file goes.
    drop(probe);
    if owns_stack {
        let _ = std::fs::remove_file(ready_file(home));
        if result.is_ok() {
            let _ = std::fs::remove_file(phase_file(home));
        }
        let _ = std::fs::remove_file(pid_file(home));
    }
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(EXIT_START_FAILED))
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `novabox service NAME`: one service in this process, joining the stack over RabbitMQ.
pub fn service(global: &GlobalArgs, args: ServiceArgs) -> anyhow::Result<ExitCode> {
    let home = super::home(global)?;
    let config = Config::load(&home.config_file())?;
    if novabox::bus::resolve_kind(&config) != BusKind::Rabbitmq {
        bail!(
            "running one service alone needs the RabbitMQ bus so the others can reach it; set `[bus] kind = \
             \"rabbitmq\"` (or give `[bus] url`) in {}",
            home.config_file().display()
        );
    }
    run_foreground(&home, global, config, &[args.service], false)
}

/// `novabox down`: stop this home's stack (it stops its broker itself), then anything it
/// left behind after a crash.
pub fn down(global: &GlobalArgs, args: DownArgs) -> anyhow::Result<ExitCode> {
    let home = super::home(global)?;
    if let Some(pid) = stack::running(&home)? {
        let grace = stack::grace(&home).as_secs().saturating_sub(30);
        println!("stopping novabox (pid {pid}): guests (ACPI, up to {grace} s, then hard), services, broker");
    }
    let report = stack::down(&home)?;
    if let Some(pid) = report.stack {
        println!("stopped novabox (pid {pid}){}", if report.stack_killed { " with SIGKILL" } else { "" });
    }
    for (uuid, pid) in &report.guests {
        println!("stopped guest {uuid} (qemu pid {pid}) left by a stack that did not stop cleanly");
    }
    if report.broker {
        println!("stopped RabbitMQ");
    }
    if report.dnsmasqs > 0 {
        println!("stopped {} dnsmasq", report.dnsmasqs);
    }
    if !report.links.is_empty() {
        println!("removed {}", report.links.join(", "));
    }
    for t in &report.tables {
        println!("removed nft table {t}");
    }
    if report.docker_rules > 0 {
        println!("removed {} DOCKER-USER rules", report.docker_rules);
    }
    for left in &report.left {
        eprintln!("warning: {} is left: {}", left.what, left.why);
    }
    if !report.stopped_anything() {
        println!("nothing was running for {}", home.root().display());
    }
    if args.purge {
        return purge(&home, args.yes);
    }
    Ok(ExitCode::SUCCESS)
}

/// Deletes the home once the stack is down, after confirmation.
fn purge(home: &Home, yes: bool) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let root = home.root();
    if !root.exists() {
        println!("{} does not exist; nothing to purge", root.display());
        return Ok(ExitCode::SUCCESS);
    }
    stack::check_purge(home)?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            eprintln!("not deleting {} without confirmation: add --yes", root.display());
            return Ok(ExitCode::from(EXIT_NOT_CONFIRMED));
        }
        let confirmed = dialoguer::Confirm::new()
            .with_prompt(format!("Delete {} and everything in it (database, images, guests, logs)?", root.display()))
            .default(false)
            .interact()?;
        if !confirmed {
            eprintln!("kept {}", root.display());
            return Ok(ExitCode::from(EXIT_NOT_CONFIRMED));
        }
    }
    stack::purge(home)?;
    println!("deleted {}", root.display());
    Ok(ExitCode::SUCCESS)
}
