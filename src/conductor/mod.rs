//! The conductor: the only way compute hosts change the database (nova's rule). Compute
//! services call it over the bus; it also stores the notifications published on the bus.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::bus::{Context, Handler, Message, RemoteError};
use crate::config::Config;
use crate::db::instances::{InstanceFilter, InstanceUpdate, UpdateError};
use crate::db::notifications::Notification;
use crate::db::services::NodeReport;
use crate::db::{DbError, SharedDb};
use crate::rpcapi::RequestedNetworks;

pub(crate) mod network;
mod volumes;

pub use network::{addresses, release_network};

pub const BINARY: &str = "novabox-conductor";

pub struct Conductor {
    db: SharedDb,
    config: Arc<Config>,
    home: crate::home::Home,
}

fn db_error(e: DbError) -> RemoteError {
    RemoteError::new("DBError", e.to_string())
}

/// So a handler's transaction (`SharedDb::tx`) can fail with either kind of error.
impl From<DbError> for RemoteError {
    fn from(e: DbError) -> RemoteError {
        db_error(e)
    }
}

fn args<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, RemoteError> {
    serde_json::from_value(v).map_err(|e| RemoteError::new("InvalidArguments", e.to_string()))
}

#[derive(Deserialize)]
struct Uuid {
    uuid: String,
}

impl Conductor {
    pub fn new(db: SharedDb, config: Arc<Config>, home: crate::home::Home) -> Conductor {
        Conductor { db, config, home }
    }

    fn instance_update(&self, a: Value) -> Result<Value, RemoteError> {
        #[derive(Deserialize)]
        struct A {
            uuid: String,
            update: InstanceUpdate,
        }
        let a: A = args(a)?;
        match self.db.with(|db| db.update_instance(&a.uuid, &a.update)).map_err(db_error)? {
            Ok(i) => Ok(serde_json::to_value(i).unwrap_or(Value::Null)),
            Err(UpdateError::NotFound) => {
                Err(RemoteError::new("InstanceNotFound", format!("Instance {} could not be found.", a.uuid)))
            }
            // The same update applied twice: the broker went away after the conductor
            // committed it but before the caller had the reply, and the call was delivered
            // again. The state is already what the caller asked for, so say so, instead of an
            // UnexpectedTaskState that made compute destroy a guest that had just gone ACTIVE.
            Err(UpdateError::UnexpectedState { vm_state, task_state })
                if already_applied(&a.update, &vm_state, &task_state) =>
            {
                tracing::info!(instance = %a.uuid, "instance update already applied (a redelivered call)");
                match self.db.with(|db| db.instance_by_uuid(&a.uuid, false)).map_err(db_error)? {
                    Some(i) => Ok(serde_json::to_value(i).unwrap_or(Value::Null)),
                    None => {
                        Err(RemoteError::new("InstanceNotFound", format!("Instance {} could not be found.", a.uuid)))
                    }
                }
            }
            Err(UpdateError::UnexpectedState { vm_state, task_state }) => {
                let kind = if task_state.as_deref() == Some("deleting") {
                    "UnexpectedDeletingTaskState"
                } else {
                    "UnexpectedTaskState"
                };
                Err(RemoteError::new(
                    kind,
                    format!("Instance {} is in vm_state {vm_state}, task_state {task_state:?}", a.uuid),
                ))
            }
        }
    }

    fn instance_fault_create(&self, a: Value) -> Result<Value, RemoteError> {
        #[derive(Deserialize)]
        struct A {
            uuid: String,
            code: i64,
            message: String,
            host: Option<String>,
        }
        let a: A = args(a)?;
        self.db
            .with(|db| db.add_instance_fault(&a.uuid, a.code, &a.message, "", a.host.as_deref()))
            .map_err(db_error)?;
        Ok(Value::Null)
    }

    fn instance_destroy(&self, ctx: &Context, a: Value) -> Result<Value, RemoteError> {
        let a: Uuid = args(a)?;
        // Volumes first: a volume file that cannot be removed leaves the instance in
        // `deleting` for the next try, rather than a volume attached to nothing.
        self.db
            .with(|db| crate::volumes::release_instance_volumes(db, &self.home, &a.uuid))
            .map_err(|e| RemoteError::new("VolumeError", e.to_string()))?;
        self.db
            .tx(|db| -> Result<(), DbError> {
                db.destroy_instance(&a.uuid)?;
                db.finish_instance_action(&ctx.request_id, &a.uuid, None)
            })
            .map_err(db_error)?;
        Ok(Value::Null)
    }

    fn instances_on_host(&self, a: Value) -> Result<Value, RemoteError> {
        #[derive(Deserialize)]
        struct A {
            host: String,
        }
        let a: A = args(a)?;
        let list = self
            .db
            .with(|db| db.list_instances(&InstanceFilter { host: Some(a.host), ..Default::default() }))
            .map_err(db_error)?;
        Ok(serde_json::to_value(list).unwrap_or(Value::Null))
    }

    fn action_finish(&self, ctx: &Context, a: Value) -> Result<Value, RemoteError> {
        #[derive(Deserialize)]
        struct A {
            uuid: String,
            message: Option<String>,
        }
        let a: A = args(a)?;
        self.db
            .with(|db| db.finish_instance_action(&ctx.request_id, &a.uuid, a.message.as_deref()))
            .map_err(db_error)?;
        Ok(Value::Null)
    }

    fn service_report(&self, a: Value) -> Result<Value, RemoteError> {
        #[derive(Deserialize)]
        struct A {
            host: String,
            binary: String,
            topic: String,
            node: Option<NodeReport>,
        }
        let a: A = args(a)?;
        let service = self
            .db
            .tx(|db| -> Result<_, DbError> {
                let s = db.service_heartbeat(&a.host, &a.binary, &a.topic)?;
                if let Some(node) = &a.node {
                    db.upsert_compute_node(&a.host, node)?;
                }
                Ok(s)
            })
            .map_err(db_error)?;
        Ok(json!({"disabled": service.disabled}))
    }

    fn allocate_network(&self, context: &Context, a: Value) -> Result<Value, RemoteError> {
        #[derive(Deserialize)]
        struct A {
            uuid: String,
            requested_networks: RequestedNetworks,
            host: String,
        }
        let a: A = args(a)?;
        // One transaction: a failure on the second port must not leave the first behind, or
        // the retry would take it for a finished allocation.
        let vifs =
            self.db.tx(|db| network::allocate(db, &self.config, &a.uuid, &a.requested_networks, &a.host, context))?;
        Ok(serde_json::to_value(vifs).unwrap_or(Value::Null))
    }

    fn network_info(&self, a: Value) -> Result<Value, RemoteError> {
        let a: Uuid = args(a)?;
        let vifs = self.db.with(|db| network::vifs(db, &a.uuid))?;
        Ok(serde_json::to_value(vifs).unwrap_or(Value::Null))
    }

    fn security_group_filters(&self, a: Value) -> Result<Value, RemoteError> {
        #[derive(Deserialize)]
        struct A {
            host: String,
        }
        let a: A = args(a)?;
        let filters = self.db.with(|db| network::host_filters(db, &a.host)).map_err(db_error)?;
        Ok(serde_json::to_value(filters).unwrap_or(Value::Null))
    }

    fn port_devices(&self) -> Result<Value, RemoteError> {
        let ports = self.db.with(network::port_devices).map_err(db_error)?;
        Ok(serde_json::to_value(ports).unwrap_or(Value::Null))
    }

    fn image_meta(&self, a: Value) -> Result<Value, RemoteError> {
        #[derive(Deserialize)]
        struct A {
            image_id: String,
        }
        let a: A = args(a)?;
        let meta = self.db.with(|db| crate::images::image_meta(db, &self.home, &a.image_id)).map_err(db_error)?;
        Ok(serde_json::to_value(meta).unwrap_or(Value::Null))
    }

    /// Stores spans a compute service in another process recorded (it has no database), so
    /// `novabox trace` shows that host's steps too.
    fn record_spans(&self, a: Value) -> Result<Value, RemoteError> {
        #[derive(Deserialize)]
        struct A {
            spans: Vec<crate::trace::SpanRow>,
        }
        let a: A = args(a)?;
        if a.spans.len() > crate::rpcapi::SPAN_BATCH {
            return Err(RemoteError::new(
                "InvalidArguments",
                format!("{} spans in one record_spans; at most {}", a.spans.len(), crate::rpcapi::SPAN_BATCH),
            ));
        }
        let spans: Vec<_> = a.spans.into_iter().filter(|s| !s.request_id.is_empty()).collect();
        self.db.with(|db| db.insert_trace_spans(&spans)).map_err(db_error)?;
        Ok(Value::Null)
    }

    fn deallocate_network(&self, a: Value) -> Result<Value, RemoteError> {
        let a: Uuid = args(a)?;
        self.db.with(|db| network::deallocate(db, &a.uuid))?;
        Ok(Value::Null)
    }
}

#[async_trait::async_trait]
impl Handler for Conductor {
    async fn handle(&self, message: Message) -> Result<Value, RemoteError> {
        let Message { method, args, context } = message;
        match method.as_str() {
            "instance_update" => self.instance_update(args),
            "instance_fault_create" => self.instance_fault_create(args),
            "instance_destroy" => self.instance_destroy(&context, args),
            "instances_on_host" => self.instances_on_host(args),
            "action_finish" => self.action_finish(&context, args),
            "service_report" => self.service_report(args),
            "allocate_network" => self.allocate_network(&context, args),
            "deallocate_network" => self.deallocate_network(args),
            "network_info" => self.network_info(args),
            "security_group_filters" => self.security_group_filters(args),
            "port_devices" => self.port_devices(),
            "image_meta" => self.image_meta(args),
            "record_spans" => self.record_spans(args),
            "instance_volumes" => self.instance_volumes(args),
            "prepare_block_devices" => self.prepare_block_devices(args).await,
            "volume_attach_done" => self.volume_attach_done(args),
            "volume_detach_done" => self.volume_detach_done(args),
            "volumes_in_flight" => self.volumes_in_flight(args),
            other => Err(RemoteError::new("UnknownMethod", format!("the conductor has no method {other}"))),
        }
    }
}

/// True when `u` moves state (vm_state or task_state) and the instance is already in exactly
/// the state `u` would leave it in: a repeat of an update that was applied.
fn already_applied(u: &InstanceUpdate, vm_state: &str, task_state: &Option<String>) -> bool {
    let moves = u.vm_state.is_some() || u.task_state.is_some();
    moves
        && u.vm_state.as_deref().is_none_or(|v| v == vm_state)
        && u.task_state.as_ref().is_none_or(|t| t == task_state)
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
        let n: Notification = args(message.args)?;
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
        let args = |second: &str| {
            json!({
                "uuid": inst.uuid,
                "host": "h1",
                "requested_networks": {"list": [
                    {"network_id": net.id, "port_id": null, "fixed_ip": null},
                    {"network_id": second, "port_id": null, "fixed_ip": null},
                ]},
            })
        };

        let ctx = Context::default();
        let err = conductor.allocate_network(&ctx, args("no-such-network")).unwrap_err();
        assert_eq!(err.kind, "NetworkError", "{err}");
        assert_eq!(db.with(|d| d.ports_for_device(&inst.uuid)).unwrap(), vec![], "a half allocation was stored");

        let vifs = conductor.allocate_network(&ctx, args(&net.id)).unwrap();
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
        let boot = |request: Value| json!({"uuid": inst.uuid, "host": "h1", "requested_networks": {"list": [request]}});

        let err = conductor.allocate_network(&member, boot(json!({"port_id": other.id}))).unwrap_err();
        assert_eq!(err.kind, "PortNotUsable");
        assert_eq!(err.message, format!("Port {} not usable for instance {}.", other.id, inst.uuid));
        let chosen = json!({"network_id": net.id, "fixed_ip": "10.42.0.99"});
        let err = conductor.allocate_network(&member, boot(chosen.clone())).unwrap_err();
        assert_eq!(
            (err.kind.as_str(), err.message.as_str()),
            ("PolicyNotAuthorized", "(rule:create_port:fixed_ips:ip_address) is disallowed by policy")
        );
        let admin_ctx = Context { project_id: Some(admin.clone()), is_admin: true, ..Context::default() };
        db.with(|d| d.set_network_quota(&inst.project_id, "port", 0)).unwrap();
        let err = conductor.allocate_network(&admin_ctx, boot(chosen)).unwrap_err();
        assert_eq!((err.kind.as_str(), err.message.as_str()), ("OverQuota", "Quota exceeded for resources: ['port']."));
        assert_eq!(db.with(|d| d.instance_ports(&inst.uuid)).unwrap(), vec![]);
        db.with(|d| d.set_network_quota(&inst.project_id, "port", -1)).unwrap();
        let vifs =
            conductor.allocate_network(&admin_ctx, boot(json!({"network_id": net.id, "fixed_ip": "10.42.0.99"})));
        assert_eq!(vifs.unwrap()[0]["ips"], json!(["10.42.0.99"]), "an admin may choose the address");
    }
}
