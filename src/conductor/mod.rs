//! The conductor: the only way compute hosts change the database (nova's rule). Compute
//! services call it over the bus; it also stores the notifications published on the bus.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::bus::{Context, Handler, Message, RemoteError, RemoteErrorKind};
use crate::compute::states::{TaskState, VmState};
use crate::config::Config;
use crate::db::instances::{InstanceFilter, InstanceUpdate, UpdateError};
use crate::db::services::NodeReport;
use crate::db::{DbError, SharedDb};
use crate::rpcapi::{ConductorRequest, NotificationMessage, RequestedNetworks, RpcRequest};

mod lifecycle;
pub(crate) mod network;
pub(crate) mod routers;
mod volumes;

pub use network::{addresses, release_network};

pub const BINARY: &str = "novabox-conductor";

pub struct Conductor {
    db: SharedDb,
    config: Arc<Config>,
    home: crate::home::Home,
    /// Injected faults (issue 23); a disabled table unless the stack enables them.
    faults: Arc<crate::faults::FaultTable>,
}

fn db_error(e: DbError) -> RemoteError {
    RemoteError::new(RemoteErrorKind::DbError, e.to_string())
}

/// So a handler's transaction (`SharedDb::tx`) can fail with either kind of error.
impl From<DbError> for RemoteError {
    fn from(e: DbError) -> RemoteError {
        db_error(e)
    }
}

impl Conductor {
    pub fn new(db: SharedDb, config: Arc<Config>, home: crate::home::Home) -> Conductor {
        Conductor { db, config, home, faults: crate::faults::FaultTable::disabled() }
    }

    /// Asks `faults` before each method (issue 23).
    pub fn with_faults(mut self, faults: Arc<crate::faults::FaultTable>) -> Conductor {
        self.faults = faults;
        self
    }

    /// Asks the fault table before `message` is handled; the answer instead of handling it,
    /// when a rule fired: the error as a remote error (the caller fails as on a real one), or
    /// a lost message (a call's caller waits out its timeout, as for a lost reply).
    async fn fault_at(&self, message: &Message) -> Option<Result<Value, RemoteError>> {
        use crate::faults::Injected;
        let step = crate::faults::catalog::find_step("conductor", &message.method)?;
        let uuid = ["uuid", "instance_uuid"].iter().find_map(|k| message.args.get(*k).and_then(Value::as_str));
        // The name and project of the instance, for rules that name a server or a project:
        // read only while rules exist.
        let instance = match uuid {
            Some(u) if self.faults.has_rules() => self.db.with(|db| db.instance_by_uuid(u, true)).ok().flatten(),
            _ => None,
        };
        let ctx = &message.context;
        let call = crate::faults::StepCall {
            service: "conductor",
            step: step.name,
            instance_uuid: uuid,
            instance_name: instance.as_ref().map(|i| i.display_name.as_str()),
            project_id: instance.as_ref().map(|i| i.project_id.as_str()).or(ctx.project_id.as_deref()),
        };
        match self.faults.inject(ctx, call, None, &self.config.host.name).await? {
            Injected::Error(text) => Some(Err(RemoteError::new(RemoteErrorKind::Other, text))),
            Injected::Drop | Injected::Kill => {
                if step.name != "action_finish" {
                    tokio::time::sleep(std::time::Duration::from_secs(self.config.bus.call_timeout_secs + 1)).await;
                }
                Some(Ok(Value::Null))
            }
        }
    }

    fn instance_update(&self, uuid: &str, update: &InstanceUpdate) -> Result<Value, RemoteError> {
        match self.db.with(|db| db.update_instance(uuid, update)).map_err(db_error)? {
            Ok(i) => Ok(serde_json::to_value(i).unwrap_or(Value::Null)),
            Err(UpdateError::NotFound) => {
                Err(RemoteError::new(RemoteErrorKind::InstanceNotFound, format!("Instance {uuid} could not be found.")))
            }
            // The same update applied twice: the broker went away after the conductor
            // committed it but before the caller had the reply, and the call was delivered
            // again. The state is already what the caller asked for, so say so, instead of an
            // UnexpectedTaskState that made compute destroy a guest that had just gone ACTIVE.
            Err(UpdateError::UnexpectedState { vm_state, task_state })
                if already_applied(update, vm_state, task_state) =>
            {
                tracing::info!(instance = %uuid, "instance update already applied (a redelivered call)");
                match self.db.with(|db| db.instance_by_uuid(uuid, false)).map_err(db_error)? {
                    Some(i) => Ok(serde_json::to_value(i).unwrap_or(Value::Null)),
                    None => Err(RemoteError::new(
                        RemoteErrorKind::InstanceNotFound,
                        format!("Instance {uuid} could not be found."),
                    )),
                }
            }
            Err(UpdateError::UnexpectedState { vm_state, task_state }) => {
                let kind = if task_state == Some(TaskState::Deleting) {
                    RemoteErrorKind::UnexpectedDeletingTaskState
                } else {
                    RemoteErrorKind::UnexpectedTaskState
                };
                Err(RemoteError::new(
                    kind,
                    format!("Instance {uuid} is in vm_state {vm_state}, task_state {task_state:?}"),
                ))
            }
        }
    }

    fn instance_fault_create(
        &self,
        uuid: &str,
        code: i64,
        message: &str,
        host: Option<&str>,
    ) -> Result<Value, RemoteError> {
        self.db.with(|db| db.add_instance_fault(uuid, code, message, "", host)).map_err(db_error)?;
        Ok(Value::Null)
    }

    fn instance_destroy(&self, ctx: &Context, uuid: &str) -> Result<Value, RemoteError> {
        // Volumes first: a volume file that cannot be removed leaves the instance in
        // `deleting` for the next try, rather than a volume attached to nothing.
        self.db
            .with(|db| crate::volumes::release_instance_volumes(db, &self.home, uuid))
            .map_err(|e| RemoteError::new(RemoteErrorKind::VolumeError, e.to_string()))?;
        self.db
            .tx(|db| -> Result<(), DbError> {
                db.destroy_instance(uuid)?;
                db.finish_instance_action(&ctx.request_id, uuid, None)
            })
            .map_err(db_error)?;
        Ok(Value::Null)
    }

    fn instances_on_host(&self, host: String) -> Result<Value, RemoteError> {
        let list = self
            .db
            .with(|db| db.list_instances(&InstanceFilter { host: Some(host), ..Default::default() }))
            .map_err(db_error)?;
        Ok(serde_json::to_value(list).unwrap_or(Value::Null))
    }

    fn action_finish(&self, ctx: &Context, uuid: &str, message: Option<&str>) -> Result<Value, RemoteError> {
        self.db.with(|db| db.finish_instance_action(&ctx.request_id, uuid, message)).map_err(db_error)?;
        Ok(Value::Null)
    }

    fn service_report(
        &self,
        host: &str,
        binary: &str,
        topic: &str,
        node: Option<&NodeReport>,
    ) -> Result<Value, RemoteError> {
        let service = self
            .db
            .tx(|db| -> Result<_, DbError> {
                let s = db.service_heartbeat(host, binary, topic)?;
                if let Some(node) = node {
                    db.upsert_compute_node(host, node)?;
                }
                Ok(s)
            })
            .map_err(db_error)?;
        Ok(json!({"disabled": service.disabled}))
    }

    fn allocate_network(
        &self,
        context: &Context,
        uuid: &str,
        requested: &RequestedNetworks,
        host: &str,
    ) -> Result<Value, RemoteError> {
        // One transaction: a failure on the second port must not leave the first behind, or
        // the retry would take it for a finished allocation.
        let vifs = self.db.tx(|db| network::allocate(db, &self.config, uuid, requested, host, context))?;
        Ok(serde_json::to_value(vifs).unwrap_or(Value::Null))
    }

    fn network_info(&self, uuid: &str) -> Result<Value, RemoteError> {
        let vifs = self.db.with(|db| network::vifs(db, uuid))?;
        Ok(serde_json::to_value(vifs).unwrap_or(Value::Null))
    }

    fn security_group_filters(&self, host: &str) -> Result<Value, RemoteError> {
        let filters = self.db.with(|db| network::host_filters(db, host)).map_err(db_error)?;
        Ok(serde_json::to_value(filters).unwrap_or(Value::Null))
    }

    fn port_devices(&self) -> Result<Value, RemoteError> {
        let ports = self.db.with(network::port_devices).map_err(db_error)?;
        Ok(serde_json::to_value(ports).unwrap_or(Value::Null))
    }

    fn image_meta(&self, image_id: &str, project_id: &str) -> Result<Value, RemoteError> {
        let viewer = crate::images::Viewer { project_id, is_admin: false };
        let meta = self
            .db
            .with(|db| crate::images::image_meta(db, &self.home, image_id, &viewer))
            .map_err(|e| db_error(e.into()))?;
        Ok(serde_json::to_value(meta).unwrap_or(Value::Null))
    }

    /// Stores spans a compute service in another process recorded (it has no database), so
    /// `novabox trace` shows that host's steps too.
    fn record_spans(&self, spans: Vec<crate::trace::SpanRow>) -> Result<Value, RemoteError> {
        if spans.len() > crate::rpcapi::SPAN_BATCH {
            return Err(RemoteError::new(
                RemoteErrorKind::InvalidArguments,
                format!("{} spans in one record_spans; at most {}", spans.len(), crate::rpcapi::SPAN_BATCH),
            ));
        }
        let spans: Vec<_> = spans.into_iter().filter(|s| !s.request_id.is_empty()).collect();
        self.db.with(|db| db.insert_trace_spans(&spans)).map_err(db_error)?;
        Ok(Value::Null)
    }

    fn deallocate_network(&self, uuid: &str) -> Result<Value, RemoteError> {
        self.db.with(|db| network::deallocate(db, uuid))?;
        Ok(Value::Null)
    }
}

#[async_trait::async_trait]
impl Handler for Conductor {
    async fn handle(&self, message: Message) -> Result<Value, RemoteError> {
        use ConductorRequest as R;
        if self.faults.enabled() {
            if let Some(answer) = self.fault_at(&message).await {
                return answer;
            }
        }
        let (request, ctx) = ConductorRequest::from_message(message)?;
        match request {
            R::InstanceUpdate { uuid, update } => self.instance_update(&uuid, &update),
            R::InstanceFaultCreate { uuid, code, message, host } => {
                self.instance_fault_create(&uuid, code, &message, host.as_deref())
            }
            R::InstanceDestroy { uuid } => self.instance_destroy(&ctx, &uuid),
            R::InstancesOnHost { host } => self.instances_on_host(host),
            R::ActionFinish { uuid, message } => self.action_finish(&ctx, &uuid, message.as_deref()),
            R::ServiceReport { host, binary, topic, node } => {
                self.service_report(&host, &binary, &topic, node.as_ref())
            }
            R::AllocateNetwork { uuid, requested_networks, host } => {
                self.allocate_network(&ctx, &uuid, &requested_networks, &host)
            }
            R::DeallocateNetwork { uuid } => self.deallocate_network(&uuid),
            R::NetworkInfo { uuid } => self.network_info(&uuid),
            R::SecurityGroupFilters { host } => self.security_group_filters(&host),
            R::PortDevices {} => self.port_devices(),
            R::RouterState { host } => {
                let routers = self.db.with(|db| routers::host_routers(db, &self.config, &host)).map_err(db_error)?;
                Ok(serde_json::to_value(routers).unwrap_or(Value::Null))
            }
            R::ImageMeta { image_id, project_id } => {
                self.image_meta(&image_id, project_id.as_deref().unwrap_or_default())
            }
            R::RecordSpans { spans } => self.record_spans(spans),
            R::InstanceVolumes { uuid } => self.instance_volumes(&uuid),
            R::PrepareBlockDevices { uuid } => self.prepare_block_devices(&uuid).await,
            R::VolumeAttachDone { volume_id, instance_uuid, error } => {
                self.volume_attach_done(volumes::VolumeOutcome {
                    volume_id: &volume_id,
                    instance_uuid: &instance_uuid,
                    error: error.as_deref(),
                    request_id: &ctx.request_id,
                })
            }
            R::VolumeDetachDone { volume_id, instance_uuid, error } => {
                self.volume_detach_done(volumes::VolumeOutcome {
                    volume_id: &volume_id,
                    instance_uuid: &instance_uuid,
                    error: error.as_deref(),
                    request_id: &ctx.request_id,
                })
            }
            R::VolumesInFlight { host } => self.volumes_in_flight(&host),
            R::ActionEventStart { uuid, event, host, start_time } => {
                self.db
                    .with(|db| db.start_action_event(&uuid, &ctx.request_id, &event, Some(&host), &start_time))
                    .map_err(db_error)?;
                Ok(Value::Null)
            }
            R::MigrationStatus { instance_uuid, status } => self.migration_status(&instance_uuid, &status),
            R::ActionStart { uuid, action } => self.action_start(&ctx, &uuid, &action),
            R::ImageUpload { image_id, file, disk_format, rotation } => {
                self.image_upload(&image_id, &file, &disk_format, rotation.as_ref())
            }
            R::ImageDiscard { image_id } => self.image_discard(&image_id),
            R::LatestMigration { instance_uuid } => self.latest_migration(&instance_uuid),
            R::DiscardSnapshots { instance_uuid } => self.discard_snapshots(&instance_uuid),
        }
    }
}

/// True when `u` moves state (vm_state or task_state) and the instance is already in exactly
/// the state `u` would leave it in: a repeat of an update that was applied.
fn already_applied(u: &InstanceUpdate, vm_state: VmState, task_state: Option<TaskState>) -> bool {
    let moves = u.vm_state.is_some() || u.task_state.is_some();
    moves && u.vm_state.is_none_or(|v| v == vm_state) && u.task_state.is_none_or(|t| t == task_state)
}

/// The fault of a build whose request died with the process that carried it.
pub const LOST_BUILD_MESSAGE: &str =
    "The build request was lost: novabox stopped before the scheduler placed this instance. Delete it and boot again.";

/// What a restart of the whole stack must clean up before it accepts work, beyond what each
/// compute service's `init_host` does for the instances on its host (nova leaves both cases
/// stuck forever; novabox does not):
/// - builds cast to the scheduler but never placed (a kill between the API's insert and the
///   scheduler's choice): nothing will ever move them, so they go to ERROR with
///   [`LOST_BUILD_MESSAGE`];
/// - deletes of instances with no host that the API had begun (ports released, row not yet
///   destroyed): the API answers 204 to a second delete of a `deleting` instance, so no one
///   else would finish them.
///
/// Only `novabox up` calls this, when API, scheduler and conductor run in this one process and
/// before they serve: then no process can still be handling these instances. (With RabbitMQ a
/// confirmed build request may still wait in the broker's queue; the scheduler then finds the
/// instance no longer `scheduling` and drops the request, so the ERROR and its fault stand.)
/// Both steps are idempotent, so a kill during this cleanup is finished by the next start.
pub fn recover_after_restart(db: &SharedDb, started_at: &str) -> Result<(), DbError> {
    let failed = db.with(|db| db.fail_lost_builds(started_at, LOST_BUILD_MESSAGE))?;
    for uuid in &failed {
        tracing::warn!(instance = %uuid, "build request lost in a restart; instance set to ERROR");
    }
    let deletes = db.with(|db| db.hostless_deletes())?;
    for uuid in &deletes {
        tracing::info!(instance = %uuid, "finishing a delete interrupted by a restart");
        // One transaction, so a kill leaves either the `deleting` row with its ports (the
        // next start finishes it) or neither.
        db.tx(|db| -> Result<(), DbError> {
            release_network(db, uuid)?;
            db.destroy_instance(uuid)?;
            Ok(())
        })?;
    }
    Ok(())
}

/// Stores the notifications published on `notifications.info` for `novabox events`.
pub struct NotificationStore {
    db: SharedDb,
}

impl NotificationStore {
    pub fn new(db: SharedDb) -> Self {
        NotificationStore { db }
    }
}

#[async_trait::async_trait]
impl Handler for NotificationStore {
    async fn handle(&self, message: Message) -> Result<Value, RemoteError> {
        let (NotificationMessage::Notify(n), _) = NotificationMessage::from_message(message)?;
        self.db.with(|db| db.insert_notification(&n)).map_err(db_error)?;
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Db, OpenOptions};

    /// The second requested network does not exist: the port made for the first must not
    /// stay behind, or a retry would take it for a finished allocation and boot the guest
    /// with one NIC instead of two.
    #[test]
    fn a_failed_second_port_leaves_no_first_port() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        db.ensure_project("admin", "").unwrap();
        let config = Config::default();
        let net = db.ensure_default_network(&config).unwrap();
        let inst = db.create_instance(&crate::db::instances::tests::new_instance(&db, "vm")).unwrap();
        let db = SharedDb::new(db);
        let conductor = Conductor::new(db.clone(), Arc::new(config), crate::home::Home::at(t.path()));
        let requested = |second: &str| {
            RequestedNetworks::List(
                [net.id.as_str(), second]
                    .iter()
                    .map(|id| crate::rpcapi::RequestedNetwork {
                        network_id: Some(id.to_string()),
                        port_id: None,
                        fixed_ip: None,
                    })
                    .collect(),
            )
        };

        let ctx = Context::default();
        let err = conductor.allocate_network(&ctx, &inst.uuid, &requested("no-such-network"), "h1").unwrap_err();
        assert_eq!(err.kind, RemoteErrorKind::NetworkError, "{err}");
        assert_eq!(db.with(|d| d.ports_for_device(&inst.uuid)).unwrap(), vec![], "a half allocation was stored");

        let vifs = conductor.allocate_network(&ctx, &inst.uuid, &requested(&net.id), "h1").unwrap();
        assert_eq!(vifs.as_array().map(Vec::len), Some(2), "{vifs}");
    }

    /// Issue 14: what a boot may not do with the network, as nova and neutron refuse it: bind
    /// another project's port, choose an address on a network of another project, or make a
    /// port past the project's port quota. Each fails the allocation, leaving no port.
    #[test]
    fn boots_get_neutrons_refusals_for_ports() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        let admin = db.ensure_project("admin", "").unwrap();
        let config = Config::default();
        let net = db.ensure_default_network(&config).unwrap();
        let inst = db.create_instance(&crate::db::instances::tests::new_instance(&db, "vm")).unwrap();
        let other = db
            .allocate_port(&crate::db::network::NewPort {
                network_id: net.id.clone(),
                project_id: admin.clone(),
                ..Default::default()
            })
            .unwrap();
        let db = SharedDb::new(db);
        let conductor = Conductor::new(db.clone(), Arc::new(config), crate::home::Home::at(t.path()));
        let member = Context { project_id: Some(inst.project_id.clone()), ..Context::default() };
        let requested = |request: Value| -> RequestedNetworks {
            RequestedNetworks::List(vec![serde_json::from_value(request).expect("a requested network")])
        };
        let boot =
            |ctx: &Context, request: Value| conductor.allocate_network(ctx, &inst.uuid, &requested(request), "h1");

        let err = boot(&member, json!({"network_id": null, "port_id": other.id, "fixed_ip": null})).unwrap_err();
        assert_eq!(err.kind, RemoteErrorKind::PortNotUsable);
        assert_eq!(err.message, format!("Port {} not usable for instance {}.", other.id, inst.uuid));
        let chosen = json!({"network_id": net.id, "port_id": null, "fixed_ip": "10.42.0.99"});
        let err = boot(&member, chosen.clone()).unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str()),
            (RemoteErrorKind::PolicyNotAuthorized, "(rule:create_port:fixed_ips:ip_address) is disallowed by policy")
        );
        let admin_ctx = Context { project_id: Some(admin.clone()), is_admin: true, ..Context::default() };
        db.with(|d| d.set_network_quota(&inst.project_id, "port", 0)).unwrap();
        let err = boot(&admin_ctx, chosen.clone()).unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str()),
            (RemoteErrorKind::OverQuota, "Quota exceeded for resources: ['port'].")
        );
        assert_eq!(db.with(|d| d.instance_ports(&inst.uuid)).unwrap(), vec![]);
        db.with(|d| d.set_network_quota(&inst.project_id, "port", -1)).unwrap();
        let vifs = boot(&admin_ctx, chosen);
        assert_eq!(vifs.unwrap()[0]["ips"], json!(["10.42.0.99"]), "an admin may choose the address");
    }
}
