//! Everything that crosses the bus, in one place: topic names, and typed clients for the
//! scheduler, conductor and compute services (nova's `rpcapi.py` modules), plus the notifier.
//! A service's handler and its client live apart; this file is the contract between them.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::bus::{Bus, BusError, Context, Message};
use crate::compute::virt::{Vif, VolumeDisk};
use crate::db::instances::{Instance, InstanceUpdate};
use crate::db::notifications::Notification;
use crate::db::services::NodeReport;

pub const SCHEDULER_TOPIC: &str = "scheduler";
pub const CONDUCTOR_TOPIC: &str = "conductor";
pub const NOTIFICATIONS_TOPIC: &str = "notifications.info";

/// The most spans one `record_spans` cast carries, so a busy compute host sends messages of a
/// bounded size (a span row is a few hundred bytes; more with `NOVABOX_TRACE=sql`).
pub const SPAN_BATCH: usize = 500;

pub fn compute_topic(host: &str) -> String {
    format!("compute.{host}")
}

/// How a server asked to be connected (`networks` in POST /servers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestedNetworks {
    /// One port on the default network.
    Auto,
    /// No network at all.
    None,
    List(Vec<RequestedNetwork>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestedNetwork {
    pub network_id: Option<String>,
    pub port_id: Option<String>,
    pub fixed_ip: Option<String>,
}

/// An attach (`attaching`) or detach (`detaching`) that a restart cut off, for the compute
/// host of its instance to finish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeInFlight {
    pub instance_uuid: String,
    pub status: String,
    pub disk: VolumeDisk,
}

/// What the scheduler needs to place one instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestSpec {
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub scheduler_hints: Value,
    #[serde(default)]
    pub image_properties: Value,
    pub requested_networks: RequestedNetworks,
    /// The boot image as the compute host will read it.
    #[serde(default)]
    pub image: Option<crate::compute::virt::ImageMeta>,
}

/// Decodes a reply, mapping a shape mismatch to a bus codec error.
fn decode<T: DeserializeOwned>(v: Value) -> Result<T, BusError> {
    Ok(serde_json::from_value(v)?)
}

#[derive(Clone)]
pub struct SchedulerApi {
    bus: Arc<dyn Bus>,
}

impl SchedulerApi {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        SchedulerApi { bus }
    }
    pub async fn build_instances(&self, ctx: &Context, uuids: &[String], spec: &RequestSpec) -> Result<(), BusError> {
        let args = json!({"instance_uuids": uuids, "request_spec": spec});
        let span = tracing::info_span!("rpc.cast", topic = SCHEDULER_TOPIC, method = "build_instances");
        async { self.bus.cast(SCHEDULER_TOPIC, Message::new("build_instances", args, ctx.clone())).await }
            .instrument(span)
            .await
    }
}

#[derive(Clone)]
pub struct ConductorApi {
    bus: Arc<dyn Bus>,
    timeout: Duration,
}

impl ConductorApi {
    pub fn new(bus: Arc<dyn Bus>, timeout: Duration) -> Self {
        ConductorApi { bus, timeout }
    }
    async fn call<T: DeserializeOwned>(&self, ctx: &Context, method: &str, args: Value) -> Result<T, BusError> {
        let span = tracing::info_span!("rpc.call", topic = CONDUCTOR_TOPIC, method);
        let reply =
            async { self.bus.call(CONDUCTOR_TOPIC, Message::new(method, args, ctx.clone()), self.timeout).await }
                .instrument(span)
                .await?;
        decode(reply)
    }
    pub async fn instance_update(
        &self,
        ctx: &Context,
        uuid: &str,
        update: &InstanceUpdate,
    ) -> Result<Instance, BusError> {
        self.call(ctx, "instance_update", json!({"uuid": uuid, "update": update})).await
    }
    pub async fn instance_fault_create(
        &self,
        ctx: &Context,
        uuid: &str,
        code: i64,
        message: &str,
        host: &str,
    ) -> Result<(), BusError> {
        self.call(ctx, "instance_fault_create", json!({"uuid": uuid, "code": code, "message": message, "host": host}))
            .await
    }
    pub async fn instance_destroy(&self, ctx: &Context, uuid: &str) -> Result<(), BusError> {
        self.call(ctx, "instance_destroy", json!({"uuid": uuid})).await
    }
    pub async fn allocate_network(
        &self,
        ctx: &Context,
        uuid: &str,
        requested: &RequestedNetworks,
        host: &str,
    ) -> Result<Vec<Vif>, BusError> {
        self.call(ctx, "allocate_network", json!({"uuid": uuid, "requested_networks": requested, "host": host})).await
    }
    /// The interfaces an instance already has (for restarting a guest).
    pub async fn network_info(&self, ctx: &Context, uuid: &str) -> Result<Vec<Vif>, BusError> {
        self.call(ctx, "network_info", json!({"uuid": uuid})).await
    }
    /// An image as a compute host reads it (for restarting guests).
    pub async fn image_meta(
        &self,
        ctx: &Context,
        image_id: &str,
    ) -> Result<Option<crate::compute::virt::ImageMeta>, BusError> {
        self.call(ctx, "image_meta", json!({"image_id": image_id})).await
    }
    /// The security group filters of every port bound to `host`.
    pub async fn security_group_filters(
        &self,
        ctx: &Context,
        host: &str,
    ) -> Result<crate::compute::net::secgroups::HostFilters, BusError> {
        self.call(ctx, "security_group_filters", json!({"host": host})).await
    }
    /// Every port's tap and MAC, for sweeping what deleted ports left plugged.
    pub async fn port_devices(&self, ctx: &Context) -> Result<Vec<crate::compute::net::PortDevice>, BusError> {
        self.call(ctx, "port_devices", json!({})).await
    }
    /// The volumes an instance has attached (for restarting a guest).
    pub async fn instance_volumes(&self, ctx: &Context, uuid: &str) -> Result<Vec<VolumeDisk>, BusError> {
        self.call(ctx, "instance_volumes", json!({"uuid": uuid})).await
    }
    /// Creates and attaches the volumes a build maps (boot from volume); returns them all.
    pub async fn prepare_block_devices(&self, ctx: &Context, uuid: &str) -> Result<Vec<VolumeDisk>, BusError> {
        self.call(ctx, "prepare_block_devices", json!({"uuid": uuid})).await
    }
    /// Attaches and detaches on `host` that a restart cut off.
    pub async fn volumes_in_flight(&self, ctx: &Context, host: &str) -> Result<Vec<VolumeInFlight>, BusError> {
        self.call(ctx, "volumes_in_flight", json!({"host": host})).await
    }
    /// The outcome of an attach: `error` None means the guest has the volume.
    pub async fn volume_attach_done(
        &self,
        ctx: &Context,
        volume_id: &str,
        instance_uuid: &str,
        error: Option<&str>,
    ) -> Result<(), BusError> {
        let args = json!({"volume_id": volume_id, "instance_uuid": instance_uuid, "error": error});
        self.call::<Value>(ctx, "volume_attach_done", args).await.map(|_| ())
    }
    pub async fn volume_detach_done(
        &self,
        ctx: &Context,
        volume_id: &str,
        instance_uuid: &str,
        error: Option<&str>,
    ) -> Result<(), BusError> {
        let args = json!({"volume_id": volume_id, "instance_uuid": instance_uuid, "error": error});
        self.call::<Value>(ctx, "volume_detach_done", args).await.map(|_| ())
    }
    pub async fn deallocate_network(&self, ctx: &Context, uuid: &str) -> Result<(), BusError> {
        self.call(ctx, "deallocate_network", json!({"uuid": uuid})).await
    }
    pub async fn instances_on_host(&self, ctx: &Context, host: &str) -> Result<Vec<Instance>, BusError> {
        self.call(ctx, "instances_on_host", json!({"host": host})).await
    }
    pub async fn action_finish(&self, ctx: &Context, uuid: &str, message: Option<&str>) -> Result<(), BusError> {
        self.bus
            .cast(
                CONDUCTOR_TOPIC,
                Message::new("action_finish", json!({"uuid": uuid, "message": message}), ctx.clone()),
            )
            .await
    }
    /// Spans recorded by a compute service without a database, for the conductor to store
    /// (see `crate::trace`). Cast under an empty request id, which the span recorder ignores:
    /// shipping spans must not record spans of its own to ship.
    pub async fn record_spans(&self, spans: &[crate::trace::SpanRow]) -> Result<(), BusError> {
        let msg = Message::new("record_spans", json!({"spans": spans}), Context::admin(""));
        self.bus.cast(CONDUCTOR_TOPIC, msg).await
    }
    /// A compute service's heartbeat with its node's resources.
    pub async fn service_report(
        &self,
        ctx: &Context,
        host: &str,
        binary: &str,
        topic: &str,
        node: Option<&NodeReport>,
    ) -> Result<(), BusError> {
        let args = json!({"host": host, "binary": binary, "topic": topic, "node": node});
        self.call::<Value>(ctx, "service_report", args).await.map(|_| ())
    }
}

/// Casts to one compute host.
#[derive(Clone)]
pub struct ComputeApi {
    bus: Arc<dyn Bus>,
    timeout: Duration,
}

impl ComputeApi {
    pub fn new(bus: Arc<dyn Bus>, timeout: Duration) -> Self {
        ComputeApi { bus, timeout }
    }
    async fn cast(&self, ctx: &Context, host: &str, method: &str, args: Value) -> Result<(), BusError> {
        let topic = compute_topic(host);
        let span = tracing::info_span!("rpc.cast", topic = %topic, method);
        async { self.bus.cast(&topic, Message::new(method, args, ctx.clone())).await }.instrument(span).await
    }
    pub async fn build_and_run_instance(
        &self,
        ctx: &Context,
        host: &str,
        instance: &Instance,
        spec: &RequestSpec,
    ) -> Result<(), BusError> {
        self.cast(ctx, host, "build_and_run_instance", json!({"instance": instance, "request_spec": spec})).await
    }
    pub async fn terminate_instance(&self, ctx: &Context, host: &str, instance: &Instance) -> Result<(), BusError> {
        self.cast(ctx, host, "terminate_instance", json!({"instance": instance})).await
    }
    pub async fn stop_instance(&self, ctx: &Context, host: &str, instance: &Instance) -> Result<(), BusError> {
        self.cast(ctx, host, "stop_instance", json!({"instance": instance})).await
    }
    pub async fn start_instance(&self, ctx: &Context, host: &str, instance: &Instance) -> Result<(), BusError> {
        self.cast(ctx, host, "start_instance", json!({"instance": instance})).await
    }
    pub async fn reboot_instance(
        &self,
        ctx: &Context,
        host: &str,
        instance: &Instance,
        hard: bool,
    ) -> Result<(), BusError> {
        self.cast(ctx, host, "reboot_instance", json!({"instance": instance, "hard": hard})).await
    }
    /// Replaces the host's security group filters with `filters`.
    pub async fn refresh_security_groups(
        &self,
        ctx: &Context,
        host: &str,
        filters: &crate::compute::net::secgroups::HostFilters,
    ) -> Result<(), BusError> {
        self.cast(ctx, host, "refresh_security_groups", json!({"filters": filters})).await
    }
    /// Cast, as nova's: the API reserved the volume (`attaching`); compute reports the outcome
    /// to the conductor.
    pub async fn attach_volume(
        &self,
        ctx: &Context,
        host: &str,
        instance: &Instance,
        volume: &VolumeDisk,
    ) -> Result<(), BusError> {
        self.cast(ctx, host, "attach_volume", json!({"instance": instance, "volume": volume})).await
    }
    pub async fn detach_volume(
        &self,
        ctx: &Context,
        host: &str,
        instance: &Instance,
        volume_id: &str,
    ) -> Result<(), BusError> {
        self.cast(ctx, host, "detach_volume", json!({"instance": instance, "volume_id": volume_id})).await
    }
    pub async fn get_console_output(
        &self,
        ctx: &Context,
        host: &str,
        instance: &Instance,
        length: Option<usize>,
    ) -> Result<String, BusError> {
        let msg = Message::new("get_console_output", json!({"instance": instance, "length": length}), ctx.clone());
        decode(self.bus.call(&compute_topic(host), msg, self.timeout).await?)
    }
}

/// Publishes `compute.instance.*` notifications on the bus.
#[derive(Clone)]
pub struct Notifier {
    bus: Arc<dyn Bus>,
    publisher_id: String,
}

impl Notifier {
    pub fn new(bus: Arc<dyn Bus>, publisher_id: impl Into<String>) -> Self {
        Notifier { bus, publisher_id: publisher_id.into() }
    }

    /// Publishes and logs; a lost notification must never fail the operation it describes.
    pub async fn instance(&self, ctx: &Context, event_type: &str, instance: &Instance) {
        let payload = json!({
            "instance_id": instance.uuid,
            "display_name": instance.display_name,
            "tenant_id": instance.project_id,
            "user_id": instance.user_id,
            "host": instance.host,
            "state": instance.vm_state,
            "state_description": instance.task_state.clone().unwrap_or_default(),
            "instance_type": instance.flavor.name,
            "memory_mb": instance.flavor.memory_mb,
            "vcpus": instance.flavor.vcpus,
            "root_gb": instance.flavor.root_gb,
            "image_ref_url": instance.image_ref,
            "launched_at": instance.launched_at,
        });
        let n = Notification {
            message_id: uuid::Uuid::new_v4().to_string(),
            event_type: event_type.to_string(),
            publisher_id: self.publisher_id.clone(),
            priority: "INFO".into(),
            request_id: Some(ctx.request_id.clone()),
            instance_uuid: Some(instance.uuid.clone()),
            payload,
            timestamp: chrono::Utc::now().format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        };
        let args = serde_json::to_value(&n).unwrap_or(Value::Null);
        if let Err(e) = self.bus.cast(NOTIFICATIONS_TOPIC, Message::new("notify", args, ctx.clone())).await {
            tracing::warn!(event_type, error = %e, "notification not published");
        }
    }
}
