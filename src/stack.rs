//! Runs the services of a cloud in one process: conductor, scheduler, compute and the API,
//! all on one bus. `novabox up` runs them all; `novabox service NAME` runs one, so a compute
//! service in another process (or on another host, with RabbitMQ) joins the same cloud.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{self, AppState};
use crate::bus::{Bus, BusError, Subscription};
use crate::compute::virt::fake::FakeDriver;
use crate::compute::virt::VirtDriver;
use crate::compute::ComputeManager;
use crate::conductor::{Conductor, NotificationStore};
use crate::config::{Config, Driver};
use crate::db::{Db, DbError, OpenOptions, SharedDb};
use crate::home::Home;
use crate::rpcapi::{ComputeApi, ConductorApi, Notifier, CONDUCTOR_TOPIC, NOTIFICATIONS_TOPIC, SCHEDULER_TOPIC};
use crate::scheduler::Scheduler;

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
        "the API cannot listen on {addr}: {source}. Another program (or another novabox home) uses \
         that port; choose another with `[api] port` in the config or `novabox init --force --api-port PORT`."
    )]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("the compute service could not register with the conductor: {0}. Is the conductor running on this bus?")]
    Register(BusError),
    #[error(
        "compute driver `{0}` is not available in this novabox yet; set `[compute] driver = \"fake\"` (or \"auto\")"
    )]
    DriverUnavailable(&'static str),
}

/// What `up` prints once everything is ready.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ready {
    pub api_url: Option<String>,
    pub driver: &'static str,
    pub services: Vec<String>,
}

/// The virt driver the config asks for.
pub fn make_driver(config: &Config, _home: &Home) -> Result<Arc<dyn VirtDriver>, StackError> {
    match config.compute.driver {
        Driver::Fake | Driver::Auto => {
            let c = &config.compute;
            let delay = Duration::from_millis(c.fake_delay_ms);
            Ok(Arc::new(FakeDriver::new(delay, c.fake_vcpus as i64, c.fake_memory_mb as i64, c.fake_local_gb as i64)))
        }
        Driver::Qemu => Err(StackError::DriverUnavailable("qemu")),
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

/// Starts the given services and runs until `shutdown` turns true. Calls `on_ready` once all
/// of them accept work.
pub async fn run(
    home: Home,
    config: Arc<Config>,
    bus: Arc<dyn Bus>,
    services: &[Service],
    sql_echo: bool,
    on_ready: impl FnOnce(Ready) + Send,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StackError> {
    let started_at = crate::db::now();
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
    }
    let timeout = Duration::from_secs(config.bus.call_timeout_secs);
    let mut subscriptions: Vec<Subscription> = Vec::new();
    let host = config.host.name.clone();
    let mut ready = Ready { api_url: None, driver: "none", services: Vec::new() };

    if let (Some(db), true) = (&db, services.contains(&Service::Conductor)) {
        let conductor = Arc::new(Conductor::new(db.clone(), config.clone(), home.clone()));
        subscriptions.push(bus.serve(CONDUCTOR_TOPIC, conductor).await?);
        subscriptions.push(bus.serve(NOTIFICATIONS_TOPIC, Arc::new(NotificationStore::new(db.clone()))).await?);
        db.with(|d| d.service_heartbeat(&host, crate::conductor::BINARY, CONDUCTOR_TOPIC))?;
        db_heartbeats(db.clone(), config.clone(), crate::conductor::BINARY, CONDUCTOR_TOPIC, shutdown.clone());
        ready.services.push("conductor".into());
    }
    if let (Some(db), true) = (&db, services.contains(&Service::Scheduler)) {
        let scheduler = Arc::new(Scheduler::new(
            db.clone(),
            config.clone(),
            ComputeApi::new(bus.clone(), timeout),
            Notifier::new(bus.clone(), format!("scheduler.{host}")),
        ));
        subscriptions.push(bus.serve(SCHEDULER_TOPIC, scheduler).await?);
        db.with(|d| d.service_heartbeat(&host, crate::scheduler::BINARY, SCHEDULER_TOPIC))?;
        db_heartbeats(db.clone(), config.clone(), crate::scheduler::BINARY, SCHEDULER_TOPIC, shutdown.clone());
        ready.services.push("scheduler".into());
    }
    if services.contains(&Service::Compute) {
        let driver = make_driver(&config, &home)?;
        ready.driver = driver.name();
        let manager = Arc::new(ComputeManager::new(
            host.clone(),
            driver,
            ConductorApi::new(bus.clone(), timeout),
            Notifier::new(bus.clone(), format!("compute.{host}")),
            config.clone(),
        ));
        // Serve first so builds cast during start-up queue for us, then register and reconcile.
        subscriptions.push(bus.serve(&manager.topic(), manager.clone()).await?);
        manager.init_host().await.map_err(StackError::Register)?;
        tokio::spawn(manager.clone().run_periodic_tasks(shutdown.clone()));
        ready.services.push("compute".into());
    }
    let mut api_task = None;
    if let (Some(db), true) = (&db, services.contains(&Service::Api)) {
        let addr = SocketAddr::new(config.api.listen, config.api.port);
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| StackError::Listen { addr, source })?;
        let state = AppState { db: db.clone(), config: config.clone(), bus: bus.clone(), home: home.clone() };
        // Built here, not in the task, so a routing mistake fails `up` instead of one request.
        let app = api::router(state);
        let mut stop = shutdown.clone();
        api_task = Some(tokio::spawn(api::serve(listener, app, async move {
            let _ = stop.changed().await;
        })));
        ready.api_url = Some(config.auth_url().trim_end_matches("/identity/v3").to_string());
        ready.services.push("api".into());
    }
    on_ready(ready);

    let _ = shutdown.changed().await;
    tracing::info!("shutting down");
    if let Some(task) = api_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    for s in subscriptions {
        s.stop();
    }
    Ok(())
}
