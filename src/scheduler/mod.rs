//! The scheduler service: places instances on compute hosts. It reads hosts and their usage
//! from the database, runs the filters and weighers, records the choice on the instance and
//! casts the build to that host's compute service.

use std::sync::Arc;

use serde_json::Value;

use crate::bus::{Context, Handler, Message, RemoteError, RemoteErrorKind};
use crate::compute::states::{TaskState, VmState};
use crate::config::Config;
use crate::db::instances::{Instance, InstanceUpdate, UpdateError};
use crate::db::services::is_up;
use tracing::Instrument;

use crate::db::{now, SharedDb};
use crate::rpcapi::{ComputeApi, Notifier, RequestSpec, RpcRequest, SchedulerRequest};

pub mod filters;
pub mod weighers;

use filters::{filter_hosts, GroupPlacement, HostState, Request};

pub const BINARY: &str = "novabox-scheduler";

/// nova's fault message for NoValidHost.
pub const NO_VALID_HOST: &str = "No valid host was found. There are not enough hosts available.";

pub struct Scheduler {
    db: SharedDb,
    config: Arc<Config>,
    compute: ComputeApi,
    notifier: Notifier,
    /// Placement reads usage and then writes the choice; one placement at a time keeps two
    /// concurrent boots from both taking the last slot of a host.
    placing: tokio::sync::Mutex<()>,
    /// Injected faults (issue 23); a disabled table unless the stack enables them.
    faults: Arc<crate::faults::FaultTable>,
}

impl Scheduler {
    pub fn new(db: SharedDb, config: Arc<Config>, compute: ComputeApi, notifier: Notifier) -> Scheduler {
        Scheduler {
            db,
            config,
            compute,
            notifier,
            placing: tokio::sync::Mutex::new(()),
            faults: crate::faults::FaultTable::disabled(),
        }
    }

    /// Asks `faults` before placing each instance (issue 23).
    pub fn with_faults(mut self, faults: Arc<crate::faults::FaultTable>) -> Scheduler {
        self.faults = faults;
        self
    }

    /// Asks the fault table before placing `instance`.
    async fn fault_at(&self, ctx: &Context, instance: &Instance) -> Option<crate::faults::Injected> {
        if !self.faults.enabled() {
            return None;
        }
        let call = crate::faults::StepCall {
            service: "scheduler",
            step: "select_destinations",
            instance_uuid: Some(&instance.uuid),
            instance_name: Some(&instance.display_name),
            project_id: Some(&instance.project_id),
        };
        self.faults.inject(ctx, call, Some(&instance.metadata), &self.config.host.name).await
    }

    /// Every compute host with its capacity and what is placed on it now.
    fn host_states(&self) -> Result<Vec<HostState>, crate::db::DbError> {
        let down_after = self.config.compute.service_down_secs;
        self.db.with(|db| {
            let services = db.services()?;
            let zones = crate::db::aggregates::Zones::load(db, &self.config.host.availability_zone)?;
            let mut states = Vec::new();
            for node in db.compute_nodes()? {
                let Some(svc) = services.iter().find(|s| s.host == node.host && s.binary == crate::compute::BINARY)
                else {
                    continue;
                };
                let (vcpus_used, memory_used, disk_used, instances) = db.host_usage(&node.host)?;
                let r = &node.report;
                states.push(HostState {
                    host: node.host.clone(),
                    node: r.hypervisor_hostname.clone(),
                    enabled: !svc.disabled,
                    up: is_up(svc, down_after),
                    availability_zone: zones.of(&node.host).to_string(),
                    hypervisor_type: r.hypervisor_type.clone(),
                    vcpus: r.vcpus,
                    memory_mb: r.memory_mb,
                    local_gb: r.local_gb,
                    reserved_memory_mb: r.reserved_host_memory_mb,
                    vcpus_used,
                    memory_mb_used: memory_used,
                    local_gb_used: disk_used,
                    instances,
                    cpu_allocation_ratio: r.cpu_allocation_ratio,
                    ram_allocation_ratio: r.ram_allocation_ratio,
                    disk_allocation_ratio: r.disk_allocation_ratio,
                });
            }
            Ok(states)
        })
    }

    /// The server group `instance` is a member of, as the filters and weighers need it.
    fn group_placement(&self, instance: &str) -> Result<Option<GroupPlacement>, crate::db::DbError> {
        self.db.with(|db| {
            let Some(uuid) = db.server_group_of(instance)? else { return Ok(None) };
            let Some(g) = db.server_group(&uuid)? else { return Ok(None) };
            Ok(Some(GroupPlacement {
                hosts: db.server_group_hosts(g.id, instance)?,
                policy: g.policy,
                max_server_per_host: g.max_server_per_host,
            }))
        })
    }

    /// Chooses a host and records it on the instance. Err is the "no valid host" reason.
    async fn place(&self, instance: &Instance, spec: &RequestSpec) -> Result<Result<Instance, String>, RemoteError> {
        let hosts = self.host_states().map_err(|e| RemoteError::new(RemoteErrorKind::DbError, e.to_string()))?;
        let hint = |key: &str| spec.scheduler_hints.get(key).and_then(Value::as_str);
        // Membership was written with the instance (the `group` hint), so the database, not
        // the hint, says which group this is; the members placed before it are on their hosts.
        let group = self
            .group_placement(&instance.uuid)
            .map_err(|e| RemoteError::new(RemoteErrorKind::DbError, e.to_string()))?;
        let req = Request {
            flavor: &instance.flavor,
            availability_zone: spec.availability_zone.as_deref().filter(|az| !az.is_empty()),
            hypervisor_type: spec.image_properties.get("hypervisor_type").and_then(Value::as_str),
            force_host: hint("force_host"),
            force_node: hint("force_node"),
            group: group.as_ref(),
        };
        let (passed, reasons) = filter_hosts(&hosts, &req);
        let Some(chosen) = weighers::best(&passed, group.as_ref()) else {
            let why =
                if hosts.is_empty() { "no compute host has registered yet".to_string() } else { reasons.join("; ") };
            return Ok(Err(why));
        };
        tracing::info!(instance = %instance.uuid, host = %chosen.host, candidates = passed.len(), "host selected");
        let update = InstanceUpdate {
            host: Some(chosen.host.clone()),
            node: Some(chosen.node.clone()),
            scheduled_at: Some(now()),
            expected_task_state: Some(vec![Some(TaskState::Scheduling)]),
            ..Default::default()
        };
        // The instance is in its host's zone, whatever it asked for (nova's conductor sets it).
        let zone = chosen.availability_zone.clone();
        let placed = self.db.tx(|db| -> crate::db::Result<_> {
            let placed = db.update_instance(&instance.uuid, &update)?;
            if placed.is_ok() {
                db.set_instance_availability_zone(&instance.uuid, &zone)?;
            }
            Ok(placed.map(|mut i| {
                i.availability_zone = Some(zone.clone());
                i
            }))
        });
        match placed {
            Ok(Ok(i)) => Ok(Ok(i)),
            Ok(Err(UpdateError::NotFound)) => {
                Err(RemoteError::new(RemoteErrorKind::InstanceNotFound, "deleted while scheduling"))
            }
            Ok(Err(UpdateError::UnexpectedState { task_state, .. })) => Err(RemoteError::new(
                RemoteErrorKind::UnexpectedTaskState,
                format!("task state changed to {task_state:?} while scheduling"),
            )),
            Err(e) => Err(RemoteError::new(RemoteErrorKind::DbError, e.to_string())),
        }
    }

    /// Places every instance of the request, then casts each build. As nova's scheduler, a
    /// request is placed whole or not at all: when one instance finds no host (a full cloud,
    /// an anti-affinity group with fewer hosts than members), every instance of the request
    /// goes to ERROR with NoValidHost and none is built. Whatever else goes wrong here (the
    /// scheduler's own database errors), no instance stays in BUILD.
    async fn build_instances(&self, ctx: &Context, uuids: &[String], spec: &RequestSpec) -> Result<Value, RemoteError> {
        let mut placed_all: Vec<Instance> = Vec::new();
        let mut no_host: Option<String> = None;
        {
            // One request at a time: what the first instances take counts for the next.
            let _one_at_a_time = self.placing.lock().await;
            for uuid in uuids {
                let instance = match self.db.with(|db| db.instance_by_uuid(uuid, false)) {
                    Ok(Some(i)) => i,
                    Ok(None) => {
                        tracing::info!(instance = %uuid, "deleted before it was scheduled");
                        continue;
                    }
                    Err(e) => {
                        self.fail(ctx, uuid, NO_VALID_HOST, &format!("the instance could not be read: {e}")).await;
                        continue;
                    }
                };
                let selecting = tracing::info_span!("select_host", instance = %uuid);
                let placed = async {
                    match self.fault_at(ctx, &instance).await {
                        None => Ok(self.place(&instance, spec).await),
                        Some(injected) => Err(injected),
                    }
                }
                .instrument(selecting)
                .await;
                let placed = match placed {
                    Ok(placed) => placed,
                    // An injected fault's message is the whole fault (nova's exception text).
                    Err(crate::faults::Injected::Error(message)) => {
                        self.fail(ctx, uuid, &message, "injected by a novabox fault rule").await;
                        continue;
                    }
                    // A lost request: the instance stays `scheduling`, as when the cast never arrives.
                    Err(crate::faults::Injected::Drop | crate::faults::Injected::Kill) => continue,
                };
                match placed {
                    Ok(Ok(placed)) => placed_all.push(placed),
                    // The reasons name hosts: they go to the fault's details, which only admins see.
                    Ok(Err(why)) => {
                        no_host = Some(why);
                        break;
                    }
                    // Deleted, or its task state moved on (a delete), while it was being placed:
                    // the delete owns it now.
                    Err(e)
                        if matches!(
                            e.kind,
                            RemoteErrorKind::InstanceNotFound | RemoteErrorKind::UnexpectedTaskState
                        ) =>
                    {
                        tracing::info!(instance = %uuid, error = %e, "not scheduled")
                    }
                    Err(e) => self.fail(ctx, uuid, NO_VALID_HOST, &e.to_string()).await,
                }
            }
            if let Some(why) = &no_host {
                // Give back what the placed ones took before anything else is placed.
                for i in &placed_all {
                    if let Err(e) = self.db.with(|db| db.unschedule_instance(&i.uuid)) {
                        tracing::error!(instance = %i.uuid, error = %e, "could not give back its host");
                    }
                }
                tracing::info!(count = uuids.len(), reason = %why, "the request cannot be placed whole");
            }
        }
        if let Some(why) = no_host {
            let details = if uuids.len() > 1 {
                format!("{why} (the request's {} instances are placed all or none)", uuids.len())
            } else {
                why
            };
            for uuid in uuids {
                let pending = matches!(
                    self.db.with(|db| db.instance_by_uuid(uuid, false)),
                    Ok(Some(i)) if i.vm_state == VmState::Building
                );
                if pending {
                    self.fail(ctx, uuid, NO_VALID_HOST, &details).await;
                }
            }
            return Ok(Value::Null);
        }
        for placed in placed_all {
            let host = placed.host.clone().unwrap_or_default();
            if let Err(e) = self.compute.build_and_run_instance(ctx, &host, &placed, spec).await {
                let msg = "Build of instance aborted: the build request could not reach its compute host.";
                self.fail(ctx, &placed.uuid, msg, &format!("compute host {host}: {e}")).await;
            }
        }
        Ok(Value::Null)
    }

    /// Puts an instance that cannot be built into ERROR with a fault, as nova's conductor does:
    /// `message` for its owner, `details` (which may name hosts) for admins.
    async fn fail(&self, ctx: &Context, uuid: &str, message: &str, details: &str) {
        tracing::warn!(instance = %uuid, details, "{message}");
        let update = InstanceUpdate { vm_state: Some(VmState::Error), task_state: Some(None), ..Default::default() };
        let result = self.db.tx(|db| -> Result<Option<Instance>, crate::db::DbError> {
            db.add_instance_fault(uuid, 500, message, details, None)?;
            // nova's conductor reports its failed step as an event of the create action.
            let host = Some(self.config.host.name.as_str());
            db.start_action_event(uuid, &ctx.request_id, "conductor_schedule_and_build_instances", host, &now())?;
            db.finish_instance_action(&ctx.request_id, uuid, Some(message))?;
            Ok(db.update_instance(uuid, &update)?.ok())
        });
        match result {
            Ok(Some(i)) => self.notifier.instance(ctx, "compute.instance.create.error", &i).await,
            Ok(None) => {}
            Err(e) => tracing::error!(instance = %uuid, error = %e, "could not record the failure"),
        }
    }
}

#[async_trait::async_trait]
impl Handler for Scheduler {
    async fn handle(&self, message: Message) -> Result<Value, RemoteError> {
        match SchedulerRequest::from_message(message)? {
            (SchedulerRequest::BuildInstances { instance_uuids, request_spec }, ctx) => {
                self.build_instances(&ctx, &instance_uuids, &request_spec).await
            }
        }
    }
}
