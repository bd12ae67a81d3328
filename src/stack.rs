//! Runs the services of a cloud in one process: conductor, scheduler, compute and the API,
//! all on one bus. `novabox up` runs them all; `novabox service NAME` runs one, so a compute
//! service in another process (or on another host, with RabbitMQ) joins the same cloud.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{self, AppState};
use crate::bus::{Bus, BusError, Subscription};
use crate::compute::net::{self, HostNet};
use crate::compute::virt::fake::FakeDriver;
use crate::compute::virt::qemu::{QemuDriver, QemuUnavailable};
use crate::compute::virt::VirtDriver;
use crate::compute::ComputeManager;
use crate::conductor::{Conductor, NotificationStore};
use crate::config::{Config, Driver};
use crate::db::{Db, DbError, OpenOptions, SharedDb};
use crate::home::Home;
use crate::rpcapi::{ComputeApi, ConductorApi, Notifier, CONDUCTOR_TOPIC, NOTIFICATIONS_TOPIC, SCHEDULER_TOPIC};
use crate::scheduler::Scheduler;

pub mod detach;
mod down;
pub use down::{
    check_purge, down, grace, phase_file, pid_file, purge, ready_file, running, DownError, DownReport, Left,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    Api,
    Conductor,
    Scheduler,
    Compute,
}

impl Service {
    pub const ALL: [Service; 4] = [Service::Conductor, Service::Scheduler, Service::Compute, Service::Api];
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("message bus: {0}")]
    Bus(#[from] BusError),
    #[error(
        "the API cannot listen on {addr}: {reason}. Another program (or another novabox home) uses \
         that port; choose another with `[api] port` in the config or `novabox init --force --api-port PORT`."
    )]
    Listen { addr: SocketAddr, reason: std::io::Error },
    #[error(
        "the metadata service cannot listen on {addr}: {source}. Set another `[metadata] listen` \
         or `enabled = false` in the config."
    )]
    MetadataListen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Metadata(#[from] crate::metadata::MetadataError),
    #[error("the compute service could not register with the conductor: {0}. Is the conductor running on this bus?")]
    Register(BusError),
    #[error(transparent)]
    Qemu(#[from] QemuUnavailable),
    #[cfg(feature = "libvirt")]
    #[error(transparent)]
    Libvirt(#[from] crate::compute::virt::libvirt::LibvirtUnavailable),
    #[error(
        "compute driver `{0}` is not built into this novabox: rebuild it with `cargo build --release --features {0}` \
         (needs libvirt-dev and pkg-config), or set `[compute] driver = \"qemu\"` (or \"auto\")"
    )]
    DriverUnavailable(&'static str),
    #[error("volumes: {0}")]
    Volumes(#[from] crate::volumes::VolumeError),
    #[error("guest networking: {0}")]
    Network(#[from] crate::compute::net::NetError),
}

/// Reports each start-up phase as it begins (`database`, `services`, `first compute
/// registered`, `api`), so `up` can show progress and say where a failure happened.
pub type PhaseFn = Arc<dyn Fn(&'static str) + Send + Sync>;

/// What `run` tells its caller while starting: each phase, then readiness (once).
pub struct Hooks<R: FnOnce(Ready) + Send> {
    pub phase: PhaseFn,
    pub on_ready: R,
}

/// What `up` prints once everything is ready.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ready {
    pub api_url: Option<String>,
    pub driver: &'static str,
    /// How guests get their network: `bridge`, `user`, or `none` (no compute here).
    pub network: &'static str,
    pub services: Vec<String>,
}

/// The virt driver the config asks for. `auto` is qemu when qemu-system-x86_64 and qemu-img
/// are both installed, fake otherwise; the accelerator comes from the doctor's decision (KVM
/// only when its probe boot proved a normal guest runs under it).
pub fn make_driver(config: &Config, home: &Home) -> Result<Arc<dyn VirtDriver>, StackError> {
    let fake = || {
        let c = &config.compute;
        let delay = Duration::from_millis(c.fake_delay_ms);
        Arc::new(FakeDriver::new(delay, c.fake_vcpus as i64, c.fake_memory_mb as i64, c.fake_local_gb as i64))
            as Arc<dyn VirtDriver>
    };
    let qemu = || -> Result<Arc<dyn VirtDriver>, StackError> {
        let accel = crate::doctor::effective_accel(home, config);
        let driver = QemuDriver::new(home, accel)?.configure(&config.compute);
        tracing::info!(accel = %driver.host_resources().accel, "guests run under qemu");
        Ok(Arc::new(driver))
    };
    match config.compute.driver {
        Driver::Fake => Ok(fake()),
        Driver::Auto if QemuDriver::available() => {
            tracing::info!("compute driver auto: qemu (qemu-system-x86_64 and qemu-img are installed)");
            qemu()
        }
        Driver::Auto => {
            tracing::warn!(
                "compute driver auto: fake, no real guests (qemu-system-x86_64 or qemu-img is missing: \
                 sudo apt-get install qemu-system-x86 qemu-utils)"
            );
            Ok(fake())
        }
        Driver::Qemu => qemu(),
        #[cfg(feature = "libvirt")]
        Driver::Libvirt => {
            use crate::compute::virt::libvirt::LibvirtDriver;
            let accel = crate::doctor::effective_accel(home, config);
            let driver = LibvirtDriver::new(home, accel, &config.compute.libvirt_uri)?;
            tracing::info!(uri = %driver.uri(), accel = %driver.host_resources().accel, "guests run under libvirt");
            Ok(Arc::new(driver))
        }
        #[cfg(not(feature = "libvirt"))]
        Driver::Libvirt => Err(StackError::DriverUnavailable("libvirt")),
    }
}

/// Records heartbeats of a service that has the database (scheduler, conductor) directly.
fn db_heartbeats(
    db: SharedDb,
    config: Arc<Config>,
    binary: &'static str,
    topic: &'static str,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(config.compute.heartbeat_secs));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = db.with(|db| db.service_heartbeat(&config.host.name, binary, topic)) {
                tracing::warn!(binary, error = %e, "heartbeat not recorded");
            }
        }
    });
}

/// Bridge mode's plumbing with the default network set up (checked before any change), or
/// `None` for QEMU user networking: mode `user`, mode `auto` without CAP_NET_ADMIN, or the
/// fake driver, whose guests have no network devices to plug.
async fn host_network(config: &Config, home: &Home, driver: &str) -> Result<Option<Arc<HostNet>>, StackError> {
    let mode = net::resolve_mode(config.network.mode, net::host::has_net_admin())?;
    if mode == net::Mode::User || driver == "fake" {
        tracing::info!(mode = mode.as_str(), driver, "guest networking: QEMU user networking, no bridge");
        return Ok(None);
    }
    let host_net = Arc::new(HostNet::new(home, config));
    let default = HostNet::default_net(config);
    let setup = host_net.clone();
    let public = HostNet::public_net(config);
    tokio::task::spawn_blocking(move || setup.ensure_network(&default).and_then(|_| setup.ensure_network(&public)))
        .await
        .map_err(|e| {
            StackError::Network(net::NetError::Command { command: "network setup".into(), detail: e.to_string() })
        })??;
    tracing::info!(bridge = %config.network.bridge, cidr = %config.network.cidr, tag = host_net.tag(), "guest networking: bridge mode");
    Ok(Some(host_net))
}

/// Starts the given services and runs until `shutdown` turns true. Calls `on_ready` once all
/// of them accept work.
pub async fn run(
    home: Home,
    config: Arc<Config>,
    bus: Arc<dyn Bus>,
    services: &[Service],
    sql_echo: bool,
    hooks: Hooks<impl FnOnce(Ready) + Send>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StackError> {
    let Hooks { phase, on_ready } = hooks;
    let started_at = crate::db::now();
    phase("database");
    let needs_db = services.iter().any(|s| *s != Service::Compute);
    let db = if needs_db {
        Some(SharedDb::new(Db::open(&home.db_file(), OpenOptions { echo: sql_echo || config.db.echo })?))
    } else {
        None
    };
    // With API, scheduler and conductor all here and none serving yet, no build or delete
    // begun before this start can still be in flight: finish or fail what a crash left.
    if let (Some(db), true) =
        (&db, [Service::Api, Service::Scheduler, Service::Conductor].iter().all(|s| services.contains(s)))
    {
        crate::conductor::recover_after_restart(db, &started_at)?;
        crate::volumes::recover(db, &home)?;
    }
    // Issue 19: homes made before the external network existed get it at their next start.
    if let (Some(db), true) = (&db, services.contains(&Service::Api)) {
        db.with(|d| d.ensure_public_network(&config))?;
    }
    let timeout = Duration::from_secs(config.bus.call_timeout_secs);
    let mut subscriptions: Vec<Subscription> = Vec::new();
    let host = config.host.name.clone();
    let mut ready = Ready { api_url: None, driver: "none", network: "none", services: Vec::new() };
    let mut compute = None;

    phase("services");
    // One table for the services of this process (docs/faults.md); with faults off every
    // hook returns at its first check.
    let faults = Arc::new(crate::faults::FaultTable::new(config.faults.enabled));
    if services.contains(&Service::Api) {
        // A new stack starts at the real time: the offset of one that ended is stale.
        let _ = std::fs::remove_file(crate::clock::offset_file(&home));
    }
    if faults.enabled() {
        faults.set_notifier(Notifier::new(bus.clone(), format!("faults.{host}")));
        tracing::warn!("fault injection and the test clock are enabled ([faults] enabled or up --faults)");
    }
    if let (Some(db), true) = (&db, services.contains(&Service::Conductor)) {
        let conductor = Arc::new(Conductor::new(db.clone(), config.clone(), home.clone()).with_faults(faults.clone()));
        subscriptions.push(bus.serve(CONDUCTOR_TOPIC, conductor).await?);
        subscriptions.push(bus.serve(NOTIFICATIONS_TOPIC, Arc::new(NotificationStore::new(db.clone()))).await?);
        db.with(|d| d.service_heartbeat(&host, crate::conductor::BINARY, CONDUCTOR_TOPIC))?;
        db_heartbeats(db.clone(), config.clone(), crate::conductor::BINARY, CONDUCTOR_TOPIC, shutdown.clone());
        ready.services.push("conductor".into());
    }
    if let (Some(db), true) = (&db, services.contains(&Service::Scheduler)) {
        let scheduler = Arc::new(
            Scheduler::new(
                db.clone(),
                config.clone(),
                ComputeApi::new(bus.clone(), timeout),
                Notifier::new(bus.clone(), format!("scheduler.{host}")),
            )
            .with_faults(faults.clone()),
        );
        subscriptions.push(bus.serve(SCHEDULER_TOPIC, scheduler).await?);
        db.with(|d| d.service_heartbeat(&host, crate::scheduler::BINARY, SCHEDULER_TOPIC))?;
        db_heartbeats(db.clone(), config.clone(), crate::scheduler::BINARY, SCHEDULER_TOPIC, shutdown.clone());
        ready.services.push("scheduler".into());
    }
    if services.contains(&Service::Compute) {
        let driver = make_driver(&config, &home)?;
        ready.driver = driver.name();
        let net = host_network(&config, &home, driver.name()).await?;
        ready.network = if net.is_some() { "bridge" } else { "user" };
        let make = ComputeParts {
            host: host.clone(),
            driver,
            net,
            bus: bus.clone(),
            timeout,
            config: config.clone(),
            home: home.clone(),
            faults: faults.clone(),
        };
        let manager = make.manager();
        // Serve first so builds cast during start-up queue for us, then register and reconcile.
        let subscription = bus.serve(&manager.topic(), manager.clone()).await?;
        phase("first compute registered");
        manager.init_host().await.map_err(StackError::Register)?;
        ready.services.push("compute".into());
        if faults.enabled() {
            // A `kill` rule ends this service and starts it again, as a supervisor would.
            let current = Arc::new(std::sync::Mutex::new(manager.clone()));
            tokio::spawn(supervise_compute(make, subscription, current.clone(), shutdown.clone()));
            compute = Some(ComputeHandle::Supervised(current));
        } else {
            tokio::spawn(manager.clone().run_periodic_tasks(shutdown.clone()));
            subscriptions.push(subscription);
            compute = Some(ComputeHandle::Plain(manager));
        }
    }
    let mut api_task = None;
    if let (Some(db), true) = (&db, services.contains(&Service::Api)) {
        phase("api");
        let addr = SocketAddr::new(config.api.listen, config.api.port);
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|reason| StackError::Listen { addr, reason })?;
        // Uploads a killed API process left half-written (a live upload's writes keep its mtime fresh).
        crate::images::sweep_stale_uploads(
            &home.images_dir(),
            crate::images::STALE_UPLOAD_AGE,
            std::time::SystemTime::now(),
        );
        let state = AppState {
            db: db.clone(),
            config: config.clone(),
            bus: bus.clone(),
            home: home.clone(),
            logins: Arc::new(crate::api::logins::Logins::new(&config.api)),
            faults: faults.clone(),
        };
        // Built here, not in the task, so a routing mistake fails `up` instead of one request.
        let app = api::router(state);
        let mut stop = shutdown.clone();
        let timeouts = api::server::Timeouts::from_config(&config.api);
        api_task = Some(tokio::spawn(api::serve(listener, app, timeouts, async move {
            let _ = stop.changed().await;
        })));
        ready.api_url = Some(config.auth_url().trim_end_matches("/identity/v3").to_string());
        ready.services.push("api".into());
    }
    let mut metadata_task = None;
    if let (Some(db), true) = (&db, services.contains(&Service::Api) && config.metadata.enabled) {
        metadata_task = start_metadata(&config, db.clone(), shutdown.clone()).await?;
    }
    let span_shipper = match &db {
        // The services' connection, not a second one: a second writer makes their deferred
        // read-then-write transactions fail with "database is locked" under load.
        Some(db) => {
            spawn_trace_flusher(db.clone(), config.db.history_days, shutdown.clone());
            None
        }
        // No database here (a compute service of its own): the conductor stores our spans.
        None => Some(ConductorApi::new(bus.clone(), timeout)),
    };
    if let Some(conductor) = &span_shipper {
        spawn_span_shipper(conductor.clone(), shutdown.clone());
    }
    on_ready(ready);

    let _ = shutdown.changed().await;
    tracing::info!("shutting down");
    if let Some(task) = api_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    if let Some(task) = metadata_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    for s in subscriptions {
        s.stop();
    }
    if let Some(handle) = compute {
        let manager = match handle {
            ComputeHandle::Plain(m) => m,
            ComputeHandle::Supervised(current) => current.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        if let Err(e) = manager.shutdown_guests().await {
            tracing::error!(error = %e, "guests left running");
        }
    }
    if let Some(db) = &db {
        crate::trace::flush_to(db);
    }
    if let Some(conductor) = &span_shipper {
        ship_spans(conductor).await;
    }
    Ok(())
}

/// What a compute service is made of, kept so a killed one can be made again.
struct ComputeParts {
    host: String,
    driver: Arc<dyn VirtDriver>,
    net: Option<Arc<HostNet>>,
    bus: Arc<dyn Bus>,
    timeout: Duration,
    config: Arc<Config>,
    home: Home,
    faults: Arc<crate::faults::FaultTable>,
}

impl ComputeParts {
    fn manager(&self) -> Arc<ComputeManager> {
        let host = &self.host;
        let mut manager = ComputeManager::new(
            host.clone(),
            self.driver.clone(),
            ConductorApi::new(self.bus.clone(), self.timeout),
            Notifier::new(self.bus.clone(), format!("compute.{host}")),
            self.config.clone(),
        )
        .with_faults(self.faults.clone());
        if let Some(net) = &self.net {
            manager = manager.with_net(net.clone()).with_firewall(crate::compute::net::secgroups::Firewall::new(
                crate::compute::net::home_tag(self.home.root()),
                self.config.network.bridge.clone(),
            ));
        }
        Arc::new(manager)
    }
}

/// The compute service of this process, for the guests' shutdown at the end.
enum ComputeHandle {
    Plain(Arc<ComputeManager>),
    /// Under [`supervise_compute`]: the incarnation running now.
    Supervised(Arc<std::sync::Mutex<Arc<ComputeManager>>>),
}

/// Runs the compute service so that a fault rule's `kill` ends it as a dead process ends:
/// it stops taking messages (they wait on the bus), stops its heartbeats and periodic tasks,
/// and the work it was doing stops where it was. After the rule's `restart_after` it starts
/// again as a new service on the same host and guests, and its `init_host` recovers what the
/// death left (a build cut short goes to ERROR, as nova's does).
async fn supervise_compute(
    parts: ComputeParts,
    mut subscription: Subscription,
    current: Arc<std::sync::Mutex<Arc<ComputeManager>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut kills = parts.faults.kills();
    kills.borrow_and_update();
    loop {
        let manager = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(manager.run_periodic_tasks(stop_rx));
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = stop_tx.send(true);
                subscription.stop();
                return;
            }
            changed = kills.changed() => if changed.is_err() { return },
        }
        let restart_after = kills.borrow_and_update().1;
        subscription.stop();
        let _ = stop_tx.send(true);
        tracing::error!(host = %parts.host, ?restart_after, "compute service killed by a fault rule; it starts again after the delay");
        tokio::select! {
            _ = tokio::time::sleep(restart_after) => {}
            _ = shutdown.changed() => return,
        }
        let manager = parts.manager();
        subscription = loop {
            match parts.bus.serve(&manager.topic(), manager.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::error!(error = %e, "the restarted compute service cannot take messages; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        *current.lock().unwrap_or_else(|e| e.into_inner()) = manager.clone();
        match manager.init_host().await {
            Ok(()) => {
                tracing::warn!(host = %parts.host, "compute service started again after a kill; init_host recovered its instances")
            }
            Err(e) => tracing::error!(error = %e, "the restarted compute service could not register"),
        }
    }
}

/// Sends the recorded spans to the conductor every 250 ms, from a compute service that has no
/// database, so `novabox trace` shows a remote host's steps too.
fn spawn_span_shipper(conductor: ConductorApi, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            ship_spans(&conductor).await;
        }
    });
}

/// One round of shipping: the buffered spans in casts of at most `SPAN_BATCH`. Spans a cast
/// could not deliver go back to the buffer for the next round.
async fn ship_spans(conductor: &ConductorApi) {
    let mut rows = crate::trace::drain();
    while !rows.is_empty() {
        let rest = rows.split_off(rows.len().min(crate::rpcapi::SPAN_BATCH));
        if let Err(e) = conductor.record_spans(&rows).await {
            tracing::warn!(error = %e, spans = rows.len() + rest.len(), "trace spans not shipped; retrying later");
            rows.extend(rest);
            crate::trace::requeue(rows);
            return;
        }
        rows = rest;
    }
}

/// Starts the metadata service beside the API. At 169.254.169.254 it needs the bridge: with
/// no bridge (user networking) guests reach no metadata service anyway, so it is skipped;
/// with one it listens on every network's bridge.
async fn start_metadata(
    config: &Config,
    db: SharedDb,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>, StackError> {
    let addr = config.metadata.listen;
    if addr.ip() == std::net::IpAddr::V4(crate::metadata::ADDRESS) {
        let bridge = &config.network.bridge;
        if !std::path::Path::new("/sys/class/net").join(bridge).exists() {
            tracing::info!(bridge, "no bridge, so no metadata service (guests use the config drive)");
            return Ok(None);
        }
        crate::metadata::ensure_address(bridge)?;
        // One listener per network bridge, so a request's network is known (see metadata.rs).
        return Ok(Some(tokio::spawn(async move {
            crate::metadata::serve_bridges(db, addr, stop).await;
            Ok(())
        })));
    }
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|source| StackError::MetadataListen { addr, source })?;
    tracing::info!(%addr, "metadata service listening");
    Ok(Some(tokio::spawn(crate::metadata::serve(listener, db, async move {
        let _ = stop.changed().await;
    }))))
}

/// Writes the recorded spans to `trace_spans` in batches, a few times a second, so recording
/// stays off the request path; at start and hourly, deletes spans and notifications older
/// than `[db] history_days`.
fn spawn_trace_flusher(db: SharedDb, history_days: u32, mut stop: watch::Receiver<bool>) {
    const TICK: Duration = Duration::from_millis(250);
    const PRUNE_EVERY: u64 = 3600 * 1000 / TICK.as_millis() as u64;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(TICK);
        let mut last_offset = crate::clock::global().offset();
        for n in 0u64.. {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            let db = db.clone();
            // A moved test clock prunes at once, so a job sees history age out without waiting
            // for the hourly pass.
            let offset = crate::clock::global().offset();
            let clock_moved = offset != std::mem::replace(&mut last_offset, offset);
            // SQLite is blocking; keep it off the runtime's worker threads.
            let _ = tokio::task::spawn_blocking(move || {
                crate::trace::flush_to(&db);
                if history_days > 0 && (n % PRUNE_EVERY == 0 || clock_moved) {
                    prune_history(&db, history_days);
                }
            })
            .await;
        }
    });
}

fn prune_history(db: &SharedDb, days: u32) {
    // Days before the calendar's start (a huge setting) leave nothing to delete.
    let Some(cutoff) = crate::clock::now().checked_sub_signed(chrono::Duration::days(i64::from(days))) else { return };
    match db.with(|db| db.prune_history(cutoff)) {
        Ok((0, 0)) => {}
        Ok((spans, notifications)) => {
            tracing::info!(spans, notifications, days, "deleted history older than [db] history_days")
        }
        Err(e) => tracing::warn!(error = %e, "cannot delete old traces and notifications"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Accel;

    #[test]
    fn driver_follows_the_config() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path());
        let mut config = Config::default();
        config.compute.driver = Driver::Fake;
        assert_eq!(make_driver(&config, &home).unwrap().name(), "fake");
        config.compute.driver = Driver::Auto;
        config.compute.accel = Accel::Tcg;
        let auto = make_driver(&config, &home).unwrap();
        let qemu = QemuDriver::available();
        assert_eq!(auto.name(), if qemu { "qemu" } else { "fake" });
        config.compute.driver = Driver::Qemu;
        match make_driver(&config, &home) {
            Ok(d) => {
                assert!(qemu);
                let r = d.host_resources();
                assert_eq!((r.hypervisor_type.as_str(), r.accel.as_str()), ("QEMU", "tcg"));
            }
            Err(e) => assert!(!qemu && e.to_string().contains("sudo apt-get install"), "{e}"),
        }
    }
}
