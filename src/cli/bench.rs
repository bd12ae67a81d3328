//! `novabox bench bus`: cast throughput and call round-trip latency of each bus.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use novabox::bus::amqp::{AmqpBus, AmqpOptions};
use novabox::bus::local::LocalBus;
use novabox::bus::{Bus, Context, Handler, Message, RemoteError};
use novabox::config::Config;
use novabox::home::Home;
use novabox::secrets::Secrets;
use novabox::supervise::rabbitmq::{self, RabbitMq};

use super::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Cast throughput and call round-trip p50/p99 of the local and AMQP buses
    Bus(BusArgs),
    /// Boot N servers with C concurrent clients through the REST API on the fake driver
    Boot(super::bench_boot::BootArgs),
    /// A real guest's boot through novabox next to a bare qemu boot of the same guest
    Guest(super::bench_guest::GuestArgs),
    /// Time CI mode (`up --driver fake --bus local --detach --wait`), or a first `up` on a new home
    Up(super::bench_up::UpBenchArgs),
    /// Unrelated requests' latency while clients flood the API with wrong passwords
    Logins(super::bench_logins::LoginsArgs),
    /// Floating IP associate to first reply from outside, next to the same DNAT made by hand (root)
    Fip(super::bench_fip::FipArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    All,
    Local,
    Amqp,
}

#[derive(Debug, Args)]
pub struct BusArgs {
    /// Casts to send for the throughput figure
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub messages: usize,
    /// Calls (one at a time) for the latency figures
    #[arg(long, default_value_t = 2_000, value_name = "N")]
    pub calls: usize,
    /// Use this broker instead of starting a private one in a temp dir
    #[arg(long, value_name = "URL")]
    pub amqp_url: Option<String>,
    /// Which implementations to measure
    #[arg(long, value_enum, default_value_t = Which::All)]
    pub only: Which,
    /// Handlers running at once per server (the bus pool size)
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub pool_size: usize,
}

pub fn run(global: &GlobalArgs, cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    let args = match cmd {
        BenchCommand::Bus(args) => args,
        BenchCommand::Boot(args) => return super::bench_boot::run(args),
        BenchCommand::Guest(args) => return super::bench_guest::run(global, args),
        BenchCommand::Up(args) => return super::bench_up::run(global, args),
        BenchCommand::Logins(args) => return super::bench_logins::run(args),
        BenchCommand::Fip(args) => return super::bench_fip::run(global, args),
    };
    if args.messages == 0 || args.calls == 0 {
        bail!("--messages and --calls must be at least 1");
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the async runtime")?;
    runtime.block_on(async {
        tokio::select! {
            r = bench_bus(&args) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

struct Row {
    name: String,
    casts_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

async fn bench_bus(args: &BusArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    if args.only != Which::Amqp {
        eprintln!("measuring the local bus ...");
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::new(args.pool_size));
        rows.push(measure("local", bus, args).await?);
    }
    if args.only != Which::Local {
        // Declared before the bus so the bus is dropped (and disconnects) first.
        let mut broker = None;
        let url = match &args.amqp_url {
            Some(url) => url.clone(),
            None => {
                if !rabbitmq::is_installed() {
                    if args.only == Which::Amqp {
                        bail!(rabbitmq::RabbitError::NotInstalled);
                    }
                    eprintln!("rabbitmq-server is not installed: skipping the AMQP bus (or pass --amqp-url)");
                    print_table(&rows);
                    return Ok(());
                }
                eprintln!("starting a private RabbitMQ in a temp dir ...");
                let b = BenchBroker::start().await?;
                let url = b.url.clone();
                broker = Some(b);
                url
            }
        };
        eprintln!("measuring the AMQP bus ...");
        let options = AmqpOptions { pool_size: args.pool_size, ..AmqpOptions::default() };
        let bus = Arc::new(AmqpBus::connect(&url, options).await?);
        rows.push(measure("amqp", bus.clone(), args).await?);
        bus.close().await;
        drop(broker);
    }
    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!("{:<16} {:>12} {:>12} {:>12}", "implementation", "casts/s", "call p50", "call p99");
    for r in rows {
        println!("{:<16} {:>12.0} {:>12} {:>12}", r.name, r.casts_per_sec, fmt_duration(r.p50), fmt_duration(r.p99));
    }
}

fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} us")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

struct Counter {
    handled: AtomicUsize,
    done: tokio::sync::Notify,
    target: usize,
}

#[async_trait::async_trait]
impl Handler for Counter {
    async fn handle(&self, _message: Message) -> Result<Value, RemoteError> {
        if self.handled.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.done.notify_one();
        }
        Ok(Value::Null)
    }
}

struct Echo;

#[async_trait::async_trait]
impl Handler for Echo {
    async fn handle(&self, message: Message) -> Result<Value, RemoteError> {
        Ok(message.args)
    }
}

fn message(method: &str, args: Value) -> Message {
    Message::new(method, args, Context::admin(Context::new_request_id()))
}

async fn measure(name: &str, bus: Arc<dyn Bus>, args: &BusArgs) -> anyhow::Result<Row> {
    let suffix = uuid::Uuid::new_v4().simple().to_string();

    // Throughput: 16 tasks cast as fast as the bus accepts (for AMQP: as the broker confirms),
    // timed until the server has handled the last one.
    let topic = format!("bench.cast.{suffix}");
    let counter =
        Arc::new(Counter { handled: AtomicUsize::new(0), done: tokio::sync::Notify::new(), target: args.messages });
    let _server = bus.serve(&topic, counter.clone()).await?;
    let started = Instant::now();
    let senders: Vec<_> = (0..16)
        .map(|k| {
            let bus = bus.clone();
            let topic = topic.clone();
            let n = args.messages;
            tokio::spawn(async move {
                for i in (k..n).step_by(16) {
                    bus.cast(&topic, message("count", json!({"i": i}))).await?;
                }
                Ok::<(), novabox::bus::BusError>(())
            })
        })
        .collect();
    for s in senders {
        s.await??;
    }
    tokio::time::timeout(Duration::from_secs(300), counter.done.notified())
        .await
        .context("the casts were not all handled within 300 s")?;
    let casts_per_sec = args.messages as f64 / started.elapsed().as_secs_f64();

    // Latency: one call at a time, after a warm-up.
    let topic = format!("bench.call.{suffix}");
    let _echo = bus.serve(&topic, Arc::new(Echo)).await?;
    for i in 0..100 {
        bus.call(&topic, message("echo", json!(i)), Duration::from_secs(10)).await?;
    }
    let mut samples = Vec::with_capacity(args.calls);
    for i in 0..args.calls {
        let t = Instant::now();
        bus.call(&topic, message("echo", json!(i)), Duration::from_secs(10)).await?;
        samples.push(t.elapsed());
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    Ok(Row { name: name.to_string(), casts_per_sec, p50: pct(0.50), p99: pct(0.99) })
}

/// A private broker in a temp dir; stopped by pid and removed when dropped (also when the
/// benchmark fails or is interrupted).
struct BenchBroker {
    home: Home,
    url: String,
}

impl BenchBroker {
    async fn start() -> anyhow::Result<BenchBroker> {
        let dir = std::env::temp_dir().join(format!("novabox-bench-{}", uuid::Uuid::new_v4().simple()));
        let home = Home::at(&dir);
        let mut guard = BenchBroker { home, url: String::new() };
        guard.home.create_dirs()?;
        let mut config = Config::default();
        config.bus.port = novabox::supervise::free_port().context("find a free port")?;
        let handle = RabbitMq::ensure_running(&guard.home, &config, &Secrets::generate()).await?;
        if let Some(t) = handle.startup {
            eprintln!("  broker ready in {:.1}s", t.as_secs_f64());
        }
        guard.url = handle.url;
        Ok(guard)
    }
}

impl Drop for BenchBroker {
    fn drop(&mut self) {
        if let Err(e) = RabbitMq::stop(&self.home) {
            eprintln!(
                "warning: stopping the benchmark's broker failed: {e}; its files stay in {}",
                self.home.root().display()
            );
            return;
        }
        let _ = std::fs::remove_dir_all(self.home.root());
    }
}

/// Runs the whole stack of `home` inside this process, hands its readiness to `measure`, and
/// stops it again (waiting up to 10 s), whatever `measure` returned: the benchmarks that time a
/// real guest (`bench guest`, `bench fip`) measure against a stack they own.
pub(super) async fn with_stack<F, Fut>(
    home: &Home,
    config: &Arc<Config>,
    secrets: &Secrets,
    measure: F,
) -> anyhow::Result<ExitCode>
where
    F: FnOnce(novabox::stack::Ready) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    use novabox::stack::{self, Service};
    let bus = novabox::bus::connect(config, home, secrets).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let stack_task = tokio::spawn(stack::run(
        home.clone(),
        config.clone(),
        bus,
        &Service::ALL,
        false,
        stack::Hooks {
            phase: Arc::new(|_| {}),
            on_ready: move |ready| {
                let _ = ready_tx.send(ready);
            },
        },
        stop_rx,
    ));
    let result = match ready_rx.await {
        Ok(ready) => measure(ready).await,
        Err(_) => Err(anyhow::anyhow!("the stack did not start")),
    };
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), stack_task).await;
    result
}
