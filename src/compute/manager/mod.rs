//! The compute manager: nova's state machine for one host. A build walks task_state
//! networking -> block_device_mapping -> spawning -> None; stop, start, reboot and delete go
//! through the driver and report back through the conductor. Work on one instance is
//! serialized by a per-instance lock, so a delete that arrives mid-build waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tracing::Instrument;

use super::net::HostNet;
use super::virt::{GuestSpec, ImageMeta, Vif, VirtDriver, VolumeDisk};
use crate::bus::{BusError, Context, Handler, Message, RemoteError, RemoteErrorKind};
use crate::compute::states::{PowerState, TaskState, VmState};
use crate::config::Config;
use crate::db::instances::{Instance, InstanceUpdate};
use crate::db::now;
use crate::db::services::NodeReport;
use crate::rpcapi::{
    compute_topic, ComputeRequest, ConductorApi, Notifier, RequestSpec, RequestedNetworks, RpcRequest,
};
use crate::volumes::VolumeStatus;

mod actions;
mod events;
mod faults;
mod lifecycle;

use actions::{PowerAction, StateAction};

pub struct ComputeManager {
    host: String,
    driver: Arc<dyn VirtDriver>,
    conductor: ConductorApi,
    notifier: Notifier,
    config: Arc<Config>,
    /// Security groups on this host's taps; `None` where nothing is filtered (tests).
    firewall: Option<Arc<super::net::secgroups::Firewall>>,
    /// Bridge-mode plumbing; `None` in user mode (guests get QEMU user networking).
    net: Option<Arc<HostNet>>,
    instance_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set once the service is stopping its guests: from then on a guest that is off is off
    /// because of the shutdown, and the power-state sync must not record it as SHUTOFF.
    host_stopping: std::sync::atomic::AtomicBool,
    /// Injected faults (issue 23); a disabled table unless the stack enables them.
    faults: Arc<crate::faults::FaultTable>,
}

/// Why a step of a build stopped.
enum Abort {
    /// The instance was deleted (or is being deleted): stop quietly, the delete cleans up.
    Deleted,
    /// A real failure: the instance goes to ERROR with this message.
    Failed(String),
    /// The instance was no longer waiting for a build: this request came twice (the broker
    /// delivers a cast again when it went away before the ack). Stop without touching it.
    Duplicate,
    /// A fault rule failed the step: ERROR with exactly this message (nova's exception text).
    Injected(String),
    /// A fault rule lost the step's message, or killed this service: leave everything as it is.
    Lost,
}

impl From<BusError> for Abort {
    fn from(e: BusError) -> Abort {
        match &e {
            BusError::Remote { error, .. }
                if error.kind == RemoteErrorKind::InstanceNotFound
                    || error.kind == RemoteErrorKind::UnexpectedDeletingTaskState =>
            {
                Abort::Deleted
            }
            _ => Abort::Failed(e.to_string()),
        }
    }
}

fn task_update(task: TaskState, expected: TaskState) -> InstanceUpdate {
    InstanceUpdate {
        task_state: Some(Some(task)),
        expected_task_state: Some(vec![Some(expected)]),
        ..Default::default()
    }
}

impl ComputeManager {
    pub fn new(
        host: String,
        driver: Arc<dyn VirtDriver>,
        conductor: ConductorApi,
        notifier: Notifier,
        config: Arc<Config>,
    ) -> ComputeManager {
        ComputeManager {
            host,
            driver,
            conductor,
            notifier,
            config,
            firewall: None,
            net: None,
            instance_locks: Mutex::new(HashMap::new()),
            host_stopping: Default::default(),
            faults: crate::faults::FaultTable::disabled(),
        }
    }

    /// Asks `faults` before each step (issue 23).
    pub fn with_faults(mut self, faults: Arc<crate::faults::FaultTable>) -> ComputeManager {
        self.faults = faults;
        self
    }

    /// Asks the fault table before `step` of `inst`'s work.
    async fn fault_at(&self, ctx: &Context, step: &str, inst: &Instance) -> Option<crate::faults::Injected> {
        if !self.faults.enabled() {
            return None;
        }
        let call = crate::faults::StepCall {
            service: "compute",
            step,
            instance_uuid: Some(&inst.uuid),
            instance_name: Some(&inst.display_name),
            project_id: Some(&inst.project_id),
        };
        self.faults.inject(ctx, call, Some(&inst.metadata), &self.host).await
    }

    /// A build step's fault as the way the build stops.
    async fn build_fault(&self, ctx: &Context, step: &str, inst: &Instance) -> Result<(), Abort> {
        use crate::faults::Injected;
        match self.fault_at(ctx, step, inst).await {
            None => Ok(()),
            Some(Injected::Error(message)) => Err(Abort::Injected(message)),
            Some(Injected::Drop | Injected::Kill) => Err(Abort::Lost),
        }
    }

    /// Enforces security groups on this host's taps with `firewall`.
    pub fn with_firewall(mut self, firewall: super::net::secgroups::Firewall) -> ComputeManager {
        self.firewall = Some(Arc::new(firewall));
        self
    }

    /// Fetches this host's filters from the conductor and applies them (a no-op without a
    /// bridge). Errors say what failed; callers decide whether that stops them.
    async fn refresh_security_groups(&self, ctx: &Context) -> Result<(), String> {
        let Some(fw) = &self.firewall else { return Ok(()) };
        if !fw.active() {
            return Ok(());
        }
        let filters = self.conductor.security_group_filters(ctx, &self.host).await.map_err(|e| e.to_string())?;
        fw.refresh(filters).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Issue 19: fetches the routers this host plumbs from the conductor and makes the host
    /// match them (a no-op without a bridge: the fake driver and user mode plug nothing). One
    /// fetch-and-apply at a time, so an older answer never lands after a newer one.
    async fn refresh_routers(&self, ctx: &Context) -> Result<(), String> {
        static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let Some(net) = self.net.clone() else { return Ok(()) };
        let _turn = ONE_AT_A_TIME.lock().await;
        let want = self.conductor.router_state(ctx, &self.host).await.map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || net.apply_routers(&want))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("plumbing the routers failed: {e}"))
    }

    /// Bridge mode: guests' ports are plugged into bridges through `net`.
    pub fn with_net(mut self, net: Arc<HostNet>) -> ComputeManager {
        self.net = Some(net);
        self
    }

    /// Plugs the guest's ports (bridge mode) or drops their taps so the driver uses user
    /// networking. True when a tap had to be made anew.
    async fn plug(&self, spec: &mut GuestSpec) -> Result<bool, String> {
        let Some(net) = self.net.clone() else {
            for vif in &mut spec.network_info {
                vif.tap = None;
            }
            return Ok(false);
        };
        let hostname = spec.hostname.clone();
        let vifs = spec.network_info.clone();
        tokio::task::spawn_blocking(move || net.plug(&hostname, &vifs))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("plugging the network failed: {e}"))
    }

    /// Removes the guest's taps and DHCP entries (bridge mode); failures are logged only.
    async fn unplug(&self, ctx: &Context, uuid: &str) {
        let Some(net) = self.net.clone() else { return };
        let vifs: Vec<Vif> = match self.conductor.network_info(ctx, uuid).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(instance = %uuid, error = %e, "cannot learn the ports to unplug");
                return;
            }
        };
        match tokio::task::spawn_blocking(move || net.unplug(&vifs)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(instance = %uuid, error = %e, "unplugging the network failed"),
            Err(e) => tracing::warn!(instance = %uuid, error = %e, "unplug task failed"),
        }
    }

    pub fn topic(&self) -> String {
        compute_topic(&self.host)
    }

    fn lock_for(&self, uuid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.instance_locks.lock().unwrap_or_else(|e| e.into_inner());
        // Drop locks nobody holds any more, so the map does not grow with every instance ever built.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(uuid.to_string()).or_default().clone()
    }

    pub fn node_report(&self) -> NodeReport {
        let r = self.driver.host_resources();
        let c = &self.config.compute;
        NodeReport {
            hypervisor_hostname: self.host.clone(),
            hypervisor_type: r.hypervisor_type,
            hypervisor_version: r.hypervisor_version,
            accel: r.accel,
            host_ip: "127.0.0.1".into(),
            vcpus: r.vcpus,
            memory_mb: r.memory_mb,
            local_gb: r.local_gb,
            cpu_allocation_ratio: c.cpu_allocation_ratio,
            ram_allocation_ratio: c.ram_allocation_ratio,
            disk_allocation_ratio: c.disk_allocation_ratio,
            reserved_host_memory_mb: c.reserved_host_memory_mb as i64,
        }
    }

    /// Heartbeat with this node's resources.
    pub async fn report(&self) -> Result<(), BusError> {
        let ctx = Context::admin(Context::new_request_id());
        self.conductor.service_report(&ctx, &self.host, super::BINARY, &self.topic(), Some(&self.node_report())).await
    }

    /// Registers the service and reconciles what the database says with what the driver has,
    /// as nova's `init_host` does after a restart.
    pub async fn init_host(&self) -> Result<(), BusError> {
        self.report().await?;
        let ctx = Context::admin(Context::new_request_id());
        if let Err(e) = self.refresh_security_groups(&ctx).await {
            tracing::error!(error = %e, "security groups not applied at start");
        }
        if let Err(e) = self.refresh_routers(&ctx).await {
            tracing::error!(error = %e, "routers not restored at start");
        }
        // Guests first: a guest is only made after its row names this host, so every guest in
        // this list is in the instance list that follows unless its row is gone.
        let guests = self.driver.guests().await;
        let instances = self.conductor.instances_on_host(&ctx, &self.host).await?;
        self.reap_deleted_guests(&guests, &instances).await;
        for inst in instances {
            let lock = self.lock_for(&inst.uuid);
            let _held = lock.lock().await;
            self.reconcile(&ctx, &inst, guests.contains(&inst.uuid)).await;
        }
        self.finish_volume_work(&ctx).await;
        self.sweep_network(&ctx).await;
        Ok(())
    }

    /// Finishes the attaches and detaches a restart cut off, as the user asked for them: the
    /// cast that carried them died with an in-process bus, or comes again on RabbitMQ and
    /// then finds them done (the drivers' attach and detach are idempotent, and a second
    /// outcome changes nothing in the database).
    async fn finish_volume_work(&self, ctx: &Context) {
        let work = match self.conductor.volumes_in_flight(ctx, &self.host).await {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot learn the volume attaches and detaches to finish");
                return;
            }
        };
        for w in work {
            tracing::info!(instance = %w.instance_uuid, volume = %w.disk.volume_id, status = %w.status,
                "finishing a volume operation interrupted by a restart");
            match w.status {
                VolumeStatus::Attaching => self.attach_volume(ctx, &w.instance_uuid, &w.disk).await,
                VolumeStatus::Detaching => self.detach_volume(ctx, &w.instance_uuid, &w.disk.volume_id).await,
                other => tracing::warn!(volume = %w.disk.volume_id, status = %other, "not a volume operation"),
            }
        }
    }

    /// Bridge mode: removes taps and DHCP entries whose port is gone. A guest reaped without
    /// its row, or an unplug that a crash cut short, leaves them, and no delete will come for
    /// them. Errors are logged; the next sweep tries again.
    async fn sweep_network(&self, ctx: &Context) {
        let Some(net) = self.net.clone() else { return };
        if let Err(e) = self.try_sweep_network(ctx, net).await {
            tracing::warn!(error = %e, "stale taps not swept; the next sweep tries again");
        }
    }

    async fn try_sweep_network(&self, ctx: &Context, net: Arc<HostNet>) -> Result<(), String> {
        let lister = net.clone();
        let before = tokio::task::spawn_blocking(move || lister.plugged())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if before.is_empty() {
            return Ok(());
        }
        let ports = self.conductor.port_devices(ctx).await.map_err(|e| e.to_string())?;
        let stale = tokio::task::spawn_blocking(move || net.sweep(&before, &ports))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if !stale.is_empty() {
            tracing::info!(taps = stale.taps.len(), dhcp_entries = stale.macs.len(), "swept what deleted ports left");
        }
        Ok(())
    }

    /// Destroys guests whose instance is deleted or was never on this host, as nova's
    /// `running_deleted_instance_action = reap`. The API deletes locally when the terminate
    /// cannot be delivered (broker down, this service down), and nothing else would stop
    /// those guests or free their disks.
    async fn reap_deleted_guests(&self, guests: &[String], instances: &[Instance]) {
        for uuid in guests {
            if instances.iter().any(|i| &i.uuid == uuid) {
                continue;
            }
            let lock = self.lock_for(uuid);
            let _held = lock.lock().await;
            tracing::warn!(instance = %uuid, "guest of a deleted instance still here; destroying it");
            if let Err(e) = self.driver.destroy(uuid).await {
                tracing::warn!(instance = %uuid, error = %e, "cannot destroy the guest of a deleted instance");
            }
        }
    }

    async fn reconcile(&self, ctx: &Context, inst: &Instance, driver_has_it: bool) {
        // Issue 16's long actions settle first; the guest is then brought in line below.
        let settled = self.recover_interrupted(ctx, inst, driver_has_it).await;
        let inst = settled.as_ref().unwrap_or(inst);
        let uuid = &inst.uuid;
        match (inst.vm_state, inst.task_state) {
            (_, Some(TaskState::Deleting)) => {
                tracing::info!(instance = %uuid, "finishing a delete interrupted by a restart");
                self.terminate(ctx, inst).await;
            }
            (VmState::Building, _) => {
                tracing::warn!(instance = %uuid, "build interrupted by a compute restart");
                let _ = self.driver.destroy(uuid).await;
                self.unplug(ctx, uuid).await;
                let _ = self.conductor.deallocate_network(ctx, uuid).await;
                self.set_error(ctx, inst, "The compute service restarted while this instance was being built.").await;
            }
            // A server in VERIFY_RESIZE runs with its new flavor, as an active one.
            (VmState::Resized, None) if inst.power_state != PowerState::Running => {}
            (VmState::Active, _) | (VmState::Resized, None) => {
                let state = if driver_has_it { self.driver.power_state(uuid).await } else { PowerState::NoState };
                // Taps come back first (after `down` removed them), so the guest finds its link.
                let plugged = match self.guest_spec(ctx, inst).await {
                    Ok(mut spec) => self.plug(&mut spec).await.map(|fresh| (spec, fresh)),
                    Err(e) => Err(e.to_string()),
                };
                let result = match (plugged, driver_has_it, state) {
                    (Err(e), _, _) => Err(e),
                    // A running qemu holding a tap that `down` deleted has no link: restart it.
                    (Ok((_, true)), true, PowerState::Running) => {
                        self.driver.reboot(uuid, true).await.map_err(|e| e.to_string())
                    }
                    (Ok(_), true, PowerState::Running) => Ok(()),
                    (Ok(_), true, _) => self.driver.power_on(uuid).await.map_err(|e| e.to_string()),
                    // Nova's resume_guests_state_on_host_boot: guests that were running run again.
                    (Ok((spec, _)), false, _) => self.driver.spawn(&spec).await.map_err(|e| e.to_string()),
                };
                match result {
                    Ok(()) => {
                        let u = InstanceUpdate {
                            power_state: Some(PowerState::Running),
                            task_state: Some(None),
                            ssh_forward: self.driver.ssh_forward(uuid).await,
                            ..Default::default()
                        };
                        let _ = self.conductor.instance_update(ctx, uuid, &u).await;
                    }
                    Err(e) => {
                        self.set_error(ctx, inst, &format!("Could not resume the guest after a restart: {e}")).await
                    }
                }
            }
            (VmState::Stopped | VmState::Suspended, None) => {
                // Its taps are needed again when it is started (or resumed).
                if let Ok(mut spec) = self.guest_spec(ctx, inst).await {
                    if let Err(e) = self.plug(&mut spec).await {
                        tracing::warn!(instance = %uuid, error = %e, "cannot plug a stopped guest's ports");
                    }
                }
            }
            (_, Some(_)) => {
                let u = InstanceUpdate { task_state: Some(None), ..Default::default() };
                let _ = self.conductor.instance_update(ctx, uuid, &u).await;
            }
            _ => {}
        }
    }

    /// The spec of a guest that exists already (restarting it after a host restart).
    async fn guest_spec(&self, ctx: &Context, inst: &Instance) -> Result<GuestSpec, BusError> {
        let vifs: Vec<Vif> = self.conductor.network_info(ctx, &inst.uuid).await?;
        let image = match &inst.image_ref {
            Some(id) if !id.is_empty() => self.conductor.image_meta(ctx, id, &inst.project_id).await?,
            _ => None,
        };
        let volumes = self.conductor.instance_volumes(ctx, &inst.uuid).await?;
        Ok(guest_spec(inst, image, vifs, volumes))
    }

    #[tracing::instrument(name = "build_and_run_instance", skip_all, fields(instance = %inst.uuid))]
    async fn build_and_run(&self, ctx: &Context, inst: Instance, spec: RequestSpec) {
        let lock = self.lock_for(&inst.uuid);
        let _held = lock.lock().await;
        tracing::info!(instance = %inst.uuid, vm_state = %VmState::Building, "build started");
        self.notifier.instance(ctx, "compute.instance.create.start", &inst).await;
        match self.build_steps(ctx, &inst, &spec).await {
            Ok(active) => {
                tracing::info!(instance = %inst.uuid, vm_state = %VmState::Active, "build finished");
                self.notifier.instance(ctx, "compute.instance.create.end", &active).await;
                let _ = self.conductor.action_finish(ctx, &inst.uuid, None).await;
            }
            Err(Abort::Deleted) => {
                tracing::info!(instance = %inst.uuid, "deleted during its build; the delete cleans up");
            }
            Err(Abort::Duplicate) => {
                tracing::info!(instance = %inst.uuid, "build request delivered again; the instance has moved on");
            }
            Err(Abort::Lost) => {
                tracing::warn!(instance = %inst.uuid, "build stopped by an injected fault; its state stays as it is");
            }
            Err(failure @ (Abort::Failed(_) | Abort::Injected(_))) => {
                let message = match failure {
                    Abort::Injected(message) => message,
                    Abort::Failed(why) => format!("Build of instance {} aborted: {why}", inst.uuid),
                    _ => unreachable!("matched above"),
                };
                tracing::warn!(instance = %inst.uuid, "build failed: {message}");
                let _ = self.driver.destroy(&inst.uuid).await;
                self.unplug(ctx, &inst.uuid).await;
                let _ = self.conductor.deallocate_network(ctx, &inst.uuid).await;
                self.set_error(ctx, &inst, &message).await;
                self.notifier.instance(ctx, "compute.instance.create.error", &inst).await;
            }
        }
    }

    async fn build_steps(&self, ctx: &Context, inst: &Instance, spec: &RequestSpec) -> Result<Instance, Abort> {
        let uuid = &inst.uuid;
        let vifs = async {
            // A build delivered twice finds its instance no longer `scheduling`: leave it alone.
            self.conductor
                .instance_update(ctx, uuid, &task_update(TaskState::Networking, TaskState::Scheduling))
                .await
                .map_err(|e| match e {
                    BusError::Remote { error, .. } if error.kind == RemoteErrorKind::UnexpectedTaskState => {
                        Abort::Duplicate
                    }
                    other => Abort::from(other),
                })?;
            self.build_fault(ctx, "networking", inst).await?;
            self.conductor.allocate_network(ctx, uuid, &spec.requested_networks, &self.host).await.map_err(|e| {
                match Abort::from(e) {
                    Abort::Failed(why) => Abort::Failed(format!("network allocation failed: {why}")),
                    other => other,
                }
            })
        }
        .instrument(tracing::info_span!("networking"))
        .await?;
        // Before the guest exists, so its tap is never unfiltered.
        self.refresh_security_groups(ctx)
            .instrument(tracing::info_span!("security_groups"))
            .await
            .map_err(|e| Abort::Failed(format!("security groups could not be applied: {e}")))?;
        let volumes = async {
            self.conductor
                .instance_update(ctx, uuid, &task_update(TaskState::BlockDeviceMapping, TaskState::Networking))
                .await?;
            self.build_fault(ctx, "block_device_mapping", inst).await?;
            self.conductor.prepare_block_devices(ctx, uuid).await.map_err(|e| match Abort::from(e) {
                Abort::Failed(why) => Abort::Failed(format!("block device setup failed: {why}")),
                other => other,
            })
        }
        .instrument(tracing::info_span!("block_device_mapping"))
        .await?;
        async {
            self.conductor
                .instance_update(ctx, uuid, &task_update(TaskState::Spawning, TaskState::BlockDeviceMapping))
                .await?;
            self.build_fault(ctx, "spawning", inst).await?;
            let mut guest = guest_spec(inst, spec.image.clone(), vifs, volumes);
            self.plug(&mut guest).await.map_err(Abort::Failed)?;
            async {
                self.build_fault(ctx, "spawn", inst).await?;
                self.driver.spawn(&guest).await.map_err(|e| Abort::Failed(e.to_string()))
            }
            .instrument(tracing::info_span!("driver.spawn", driver = self.driver.name()))
            .await?;
            let done = InstanceUpdate {
                vm_state: Some(VmState::Active),
                task_state: Some(None),
                power_state: Some(PowerState::Running),
                launched_at: Some(now()),
                expected_task_state: Some(vec![Some(TaskState::Spawning)]),
                ssh_forward: self.driver.ssh_forward(uuid).await,
                ..Default::default()
            };
            Ok(self.conductor.instance_update(ctx, uuid, &done).await?)
        }
        .instrument(tracing::info_span!("spawning"))
        .await
    }

    async fn set_error(&self, ctx: &Context, inst: &Instance, message: &str) {
        let _ = self.conductor.instance_fault_create(ctx, &inst.uuid, 500, message, &self.host).await;
        let u = InstanceUpdate { vm_state: Some(VmState::Error), task_state: Some(None), ..Default::default() };
        let _ = self.conductor.instance_update(ctx, &inst.uuid, &u).await;
        let _ = self.conductor.action_finish(ctx, &inst.uuid, Some(message)).await;
    }

    async fn terminate(&self, ctx: &Context, inst: &Instance) {
        self.notifier.instance(ctx, "compute.instance.delete.start", inst).await;
        if let Err(e) = self.driver.destroy(&inst.uuid).await {
            // The row stays in `deleting`; the next restart or delete tries again.
            tracing::error!(instance = %inst.uuid, error = %e, "could not destroy the guest");
            let _ = self.conductor.instance_fault_create(ctx, &inst.uuid, 500, &e.to_string(), &self.host).await;
            return;
        }
        self.unplug(ctx, &inst.uuid).await;
        let _ = self.conductor.deallocate_network(ctx, &inst.uuid).await;
        if let Err(e) = self.refresh_security_groups(ctx).await {
            tracing::warn!(instance = %inst.uuid, error = %e, "security groups not refreshed after delete");
        }
        if let Err(e) = self.conductor.instance_destroy(ctx, &inst.uuid).await {
            tracing::error!(instance = %inst.uuid, error = %e, "guest destroyed but the row was not");
            return;
        }
        self.notifier.instance(ctx, "compute.instance.delete.end", inst).await;
    }

    /// Stops this host's guests as the service goes down (`novabox down`, Ctrl-C): ACPI, then
    /// hard after `[compute] shutdown_timeout_secs`. Their instances stay ACTIVE in the
    /// database, as nova leaves them across a host reboot, and `init_host` starts them again.
    pub async fn shutdown_guests(&self) -> Result<super::virt::ShutdownReport, super::virt::VirtError> {
        // Wait for work in progress on each guest (a build, a power-state sync) and keep it out.
        let mut held = Vec::new();
        for uuid in self.driver.guests().await {
            held.push(self.lock_for(&uuid).lock_owned().await);
        }
        self.host_stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        let timeout = Duration::from_secs(self.config.compute.shutdown_timeout_secs);
        let report = self.driver.shutdown_all(timeout).await?;
        drop(held);
        if !report.clean.is_empty() || !report.hard.is_empty() {
            tracing::info!(
                clean = report.clean.len(),
                hard = report.hard.len(),
                "guests stopped for the service shutdown; they start again with the service"
            );
        }
        Ok(report)
    }

    /// Plugs a reserved volume into the guest and reports the outcome to the conductor.
    #[tracing::instrument(name = "attach_volume", skip_all, fields(instance = %uuid, volume = %volume.volume_id))]
    async fn attach_volume(&self, ctx: &Context, uuid: &str, volume: &VolumeDisk) {
        let lock = self.lock_for(uuid);
        let _held = lock.lock().await;
        let result = self.driver.attach_volume(uuid, volume).await;
        let error = result.err().map(|e| e.to_string());
        match &error {
            None => tracing::info!("volume attached"),
            Some(why) => tracing::warn!("volume attach failed: {why}"),
        }
        if let Err(e) = self.conductor.volume_attach_done(ctx, &volume.volume_id, uuid, error.as_deref()).await {
            tracing::error!(error = %e, "attach outcome not recorded");
        }
    }

    #[tracing::instrument(name = "detach_volume", skip_all, fields(instance = %uuid, volume = %volume_id))]
    async fn detach_volume(&self, ctx: &Context, uuid: &str, volume_id: &str) {
        let lock = self.lock_for(uuid);
        let _held = lock.lock().await;
        let result = self.driver.detach_volume(uuid, volume_id).await;
        let error = result.err().map(|e| e.to_string());
        match &error {
            None => tracing::info!("volume detached"),
            Some(why) => tracing::warn!("volume detach failed: {why}"),
        }
        if let Err(e) = self.conductor.volume_detach_done(ctx, volume_id, uuid, error.as_deref()).await {
            tracing::error!(error = %e, "detach outcome not recorded");
        }
    }

    /// Brings the database in line with guests that stopped on their own (nova's
    /// `_sync_power_states`): a running instance whose guest is gone or off becomes SHUTOFF;
    /// guests of deleted instances are destroyed.
    pub async fn sync_power_states(&self) -> Result<(), BusError> {
        let ctx = Context::admin(Context::new_request_id());
        let guests = self.driver.guests().await;
        let instances = self.conductor.instances_on_host(&ctx, &self.host).await?;
        self.reap_deleted_guests(&guests, &instances).await;
        for inst in instances {
            if inst.task_state.is_some() || !matches!(inst.vm_state, VmState::Active | VmState::Paused) {
                continue;
            }
            let lock = self.lock_for(&inst.uuid);
            let _held = lock.lock().await;
            if self.host_stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
            let actual = self.driver.power_state(&inst.uuid).await;
            if actual != inst.power_state {
                tracing::warn!(instance = %inst.uuid, db = ?inst.power_state, driver = ?actual, "power state changed");
                // A paused guest that is gone (the host restarted) is stopped, as nova's sync
                // stops it; one that runs again was unpaused behind the API's back.
                let stopped = match inst.vm_state {
                    VmState::Paused => {
                        matches!(actual, PowerState::Shutdown | PowerState::Crashed | PowerState::NoState)
                    }
                    _ => actual != PowerState::Running,
                };
                let u = InstanceUpdate {
                    power_state: Some(actual),
                    vm_state: stopped.then_some(VmState::Stopped),
                    expected_task_state: Some(vec![None]),
                    expected_vm_state: Some(vec![inst.vm_state]),
                    ..Default::default()
                };
                let _ = self.conductor.instance_update(&ctx, &inst.uuid, &u).await;
            }
        }
        Ok(())
    }

    /// Deletes for good the soft-deleted instances of this host whose
    /// `reclaim_instance_interval` has passed (nova's `_reclaim_queued_deletes`), by the test
    /// clock, so `novabox clock advance` reclaims them.
    pub async fn reclaim_queued_deletes(&self) -> Result<(), BusError> {
        let interval = self.config.compute.reclaim_instance_interval;
        if interval == 0 {
            return Ok(());
        }
        let ctx = Context::admin(Context::new_request_id());
        let now = crate::clock::now();
        for inst in self.conductor.instances_on_host(&ctx, &self.host).await? {
            if inst.vm_state != VmState::SoftDeleted || inst.task_state.is_some() {
                continue;
            }
            let since = inst.updated_at.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            let old_enough =
                since.is_some_and(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds() >= interval as i64);
            if !old_enough {
                continue;
            }
            let lock = self.lock_for(&inst.uuid);
            let _held = lock.lock().await;
            // Only while it is still soft-deleted and idle: a restore may have just begun.
            let u = InstanceUpdate {
                task_state: Some(Some(TaskState::Deleting)),
                expected_task_state: Some(vec![None]),
                expected_vm_state: Some(vec![VmState::SoftDeleted]),
                ..Default::default()
            };
            if let Ok(deleting) = self.conductor.instance_update(&ctx, &inst.uuid, &u).await {
                tracing::info!(instance = %inst.uuid, interval, "reclaiming a soft-deleted instance");
                self.terminate(&ctx, &deleting).await;
            }
        }
        Ok(())
    }

    /// Heartbeats and power-state sync until `shutdown` turns true.
    pub async fn run_periodic_tasks(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let period = Duration::from_secs(self.config.compute.heartbeat_secs);
        let mut ticker = tokio::time::interval(period);
        ticker.tick().await;
        let mut n: u64 = 0;
        let mut last_offset = crate::clock::global().offset();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            n += 1;
            if let Err(e) = self.report().await {
                tracing::warn!(error = %e, "heartbeat not delivered");
            }
            if n % 3 == 0 {
                if let Err(e) = self.sync_power_states().await {
                    tracing::warn!(error = %e, "power state sync failed");
                }
                if let Err(e) = self.reclaim_queued_deletes().await {
                    tracing::warn!(error = %e, "soft-deleted instances not reclaimed");
                }
                if let Err(e) = self.confirm_expired_resizes().await {
                    tracing::warn!(error = %e, "resizes past their confirm window not confirmed");
                }
                // After the sync, which reaps guests whose rows are gone: their taps go next.
                self.sweep_network(&Context::admin(Context::new_request_id())).await;
            }
            // A crashed dnsmasq leaves guests without DHCP renewals and DNS: start it again.
            if let Some(net) = self.net.clone() {
                let _ = tokio::task::spawn_blocking(move || net.check_dnsmasq()).await;
            }
            // The image cache every 60 heartbeats (10 min by default; nova checks every 40),
            // first soon after start-up, and at the next heartbeat after the test clock moved.
            let offset = crate::clock::global().offset();
            let clock_moved = offset != std::mem::replace(&mut last_offset, offset);
            if n % 60 == 2 || clock_moved {
                self.driver.manage_image_cache().await;
            }
        }
    }
}

pub(crate) fn guest_spec(
    inst: &Instance,
    image: Option<ImageMeta>,
    network_info: Vec<Vif>,
    volumes: Vec<VolumeDisk>,
) -> GuestSpec {
    GuestSpec {
        uuid: inst.uuid.clone(),
        name: inst.display_name.clone(),
        hostname: inst.hostname.clone(),
        project_id: inst.project_id.clone(),
        memory_mb: inst.flavor.memory_mb,
        vcpus: inst.flavor.vcpus,
        root_gb: inst.flavor.root_gb,
        ephemeral_gb: inst.flavor.ephemeral_gb,
        swap_mb: inst.flavor.swap,
        image,
        user_data: inst.user_data.clone(),
        key_name: inst.key_name.clone(),
        key_data: inst.key_data.clone(),
        metadata: inst.metadata.clone(),
        config_drive: !inst.config_drive.is_empty(),
        availability_zone: inst.availability_zone.clone(),
        network_info,
        volumes,
    }
}

#[async_trait::async_trait]
impl Handler for ComputeManager {
    async fn handle(&self, message: Message) -> Result<Value, RemoteError> {
        use ComputeRequest as R;
        let (request, ctx) = ComputeRequest::from_message(message)?;
        if let Some(injected) = self.rpc_fault(&ctx, &request).await {
            return self.injected_rpc(&ctx, request, injected).await;
        }
        self.start_event(&ctx, &request).await;
        match request {
            R::BuildAndRunInstance { instance, request_spec } => {
                let spec = request_spec.map(|spec| *spec).unwrap_or(RequestSpec {
                    availability_zone: None,
                    scheduler_hints: Value::Null,
                    image_properties: Value::Null,
                    requested_networks: RequestedNetworks::Auto,
                    image: None,
                });
                self.build_and_run(&ctx, instance, spec).await;
            }
            R::TerminateInstance { instance } => {
                let lock = self.lock_for(&instance.uuid);
                let _held = lock.lock().await;
                self.terminate(&ctx, &instance).await;
            }
            R::StopInstance { instance } => self.power_action(&ctx, &instance, PowerAction::Stop).await,
            R::StartInstance { instance } => self.power_action(&ctx, &instance, PowerAction::Start).await,
            R::RebootInstance { instance, hard } => {
                self.power_action(&ctx, &instance, PowerAction::Reboot { hard }).await
            }
            R::RefreshSecurityGroups { filters } => {
                if let Some(fw) = &self.firewall {
                    fw.refresh(filters)
                        .await
                        .map_err(|e| RemoteError::new(RemoteErrorKind::SecurityGroupError, e.to_string()))?;
                }
            }
            R::RefreshRouters {} => {
                self.refresh_routers(&ctx).await.map_err(|e| RemoteError::new(RemoteErrorKind::NetworkError, e))?
            }
            R::AttachVolume { instance, volume } => self.attach_volume(&ctx, &instance.uuid, &volume).await,
            R::DetachVolume { instance, volume_id } => self.detach_volume(&ctx, &instance.uuid, &volume_id).await,
            R::PauseInstance { instance } => self.state_action(&ctx, &instance, StateAction::Pause).await,
            R::UnpauseInstance { instance } => self.state_action(&ctx, &instance, StateAction::Unpause).await,
            R::SuspendInstance { instance } => self.state_action(&ctx, &instance, StateAction::Suspend).await,
            R::ResumeInstance { instance } => self.state_action(&ctx, &instance, StateAction::Resume).await,
            R::TriggerCrashDump { instance } => self.trigger_crash_dump(&ctx, &instance).await,
            R::SoftDeleteInstance { instance } => self.state_action(&ctx, &instance, StateAction::SoftDelete).await,
            R::RestoreInstance { instance } => self.state_action(&ctx, &instance, StateAction::Restore).await,
            R::RebuildInstance { instance, preserve_ephemeral } => {
                self.rebuild_instance(&ctx, &instance, preserve_ephemeral).await
            }
            R::ResizeInstance { instance, migration } => self.resize_instance(&ctx, &instance, &migration).await,
            R::ConfirmResize { instance } => self.confirm_resize(&ctx, &instance).await,
            R::RevertResize { instance, migration } => self.revert_resize(&ctx, &instance, &migration).await,
            R::SnapshotInstance { instance, image_id, rotation } => {
                self.snapshot_instance(&ctx, &instance, &image_id, rotation.as_ref()).await
            }
            R::GetConsoleOutput { instance, length } => {
                let out = self
                    .driver
                    .console_output(&instance.uuid)
                    .await
                    .map_err(|e| RemoteError::new(RemoteErrorKind::ConsoleNotAvailable, e.to_string()))?;
                return Ok(json!(tail_lines(&out, length)));
            }
            R::GetHostUptime {} => return Ok(json!(host_uptime().await?)),
        }
        Ok(Value::Null)
    }
}

/// The host's `uptime` line, read as nova's libvirt driver reads it (`env LANG=C uptime`):
/// the fake driver's host is this real host too.
async fn host_uptime() -> Result<String, RemoteError> {
    let failed = |why: String| RemoteError::new(RemoteErrorKind::InvalidRequest, format!("uptime failed: {why}"));
    let out = tokio::process::Command::new("uptime")
        .env("LANG", "C")
        .env("LC_ALL", "C")
        .output()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

/// The last `length` lines of `text` (all when None), as nova's compute manager cuts them:
/// split on newlines, so a trailing newline ends in an empty last line that counts (tempest
/// asks for 3 and counts `output.split('\n')`).
fn tail_lines(text: &str, length: Option<usize>) -> String {
    match length {
        None => text.to_string(),
        Some(0) => String::new(),
        Some(n) => {
            let lines: Vec<&str> = text.split('\n').collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail_lines_keeps_the_end() {
        assert_eq!(super::tail_lines("a\nb\nc\n", Some(2)), "c\n");
        assert_eq!(super::tail_lines("a\nb\nc\n", Some(3)).split('\n').count(), 3, "nova's count of lines");
        assert_eq!(super::tail_lines("a\nb", Some(5)), "a\nb");
        assert_eq!(super::tail_lines("a\nb\nc\n", None), "a\nb\nc\n");
        assert_eq!(super::tail_lines("a\nb", Some(0)), "");
    }
}
