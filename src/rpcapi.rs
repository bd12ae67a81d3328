//! Everything that crosses the bus, in one place: topic names, and typed clients for the
//! scheduler, conductor and compute services (nova's `rpcapi.py` modules), plus the notifier.
//! A service's handler and its client live apart; this file is the contract between them.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::bus::{Bus, BusError, Context, Message, RemoteError, RemoteErrorKind};
use crate::compute::virt::VolumeDisk;
use crate::db::instances::{Instance, InstanceUpdate};
use crate::db::notifications::Notification;
use crate::db::services::NodeReport;
use crate::network::vif::Vif;

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
    pub status: crate::volumes::VolumeStatus,
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

/// What the scheduler is asked (nova's `scheduler/rpcapi.py`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", content = "args", rename_all = "snake_case")]
pub enum SchedulerRequest {
    BuildInstances { instance_uuids: Vec<String>, request_spec: RequestSpec },
}

/// What compute hosts ask the conductor (nova's `conductor/rpcapi.py`), one variant per method.
/// On the wire a request is the `method` and `args` of a [`Message`], exactly as before the
/// requests were typed, so an older peer and a newer one still understand each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", content = "args", rename_all = "snake_case")]
pub enum ConductorRequest {
    InstanceUpdate {
        uuid: String,
        update: InstanceUpdate,
    },
    InstanceFaultCreate {
        uuid: String,
        code: i64,
        message: String,
        #[serde(default)]
        host: Option<String>,
    },
    InstanceDestroy {
        uuid: String,
    },
    InstancesOnHost {
        host: String,
    },
    ActionFinish {
        uuid: String,
        #[serde(default)]
        message: Option<String>,
    },
    ServiceReport {
        host: String,
        binary: String,
        topic: String,
        #[serde(default)]
        node: Option<NodeReport>,
    },
    AllocateNetwork {
        uuid: String,
        requested_networks: RequestedNetworks,
        host: String,
    },
    DeallocateNetwork {
        uuid: String,
    },
    NetworkInfo {
        uuid: String,
    },
    SecurityGroupFilters {
        host: String,
    },
    PortDevices {},
    /// Issue 19: the routers `host` plumbs (all of them on the router host, none elsewhere).
    RouterState {
        host: String,
    },
    ImageMeta {
        image_id: String,
        /// The project of the guest the image is for: its kernel and ramdisk are looked up as
        /// that project sees them. A caller that names none sees public images only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        project_id: Option<String>,
    },
    RecordSpans {
        spans: Vec<crate::trace::SpanRow>,
    },
    InstanceVolumes {
        uuid: String,
    },
    PrepareBlockDevices {
        uuid: String,
    },
    VolumeAttachDone {
        volume_id: String,
        instance_uuid: String,
        #[serde(default)]
        error: Option<String>,
    },
    VolumeDetachDone {
        volume_id: String,
        instance_uuid: String,
        #[serde(default)]
        error: Option<String>,
    },
    VolumesInFlight {
        host: String,
    },
    /// One step of an instance action began on a compute host (nova's `action_event_start`);
    /// it ends with the action (`action_finish`, `instance_destroy`).
    ActionEventStart {
        uuid: String,
        event: String,
        host: String,
        start_time: String,
    },
    // Issue 16: resizes and snapshots.
    /// The instance's latest resize (nova's migration) moves to `status`.
    MigrationStatus {
        instance_uuid: String,
        status: String,
    },
    /// An instance action a compute host starts itself (the resize auto-confirm).
    ActionStart {
        uuid: String,
        action: String,
    },
    /// A snapshot's file on this host becomes the data of the queued image `image_id`.
    ImageUpload {
        image_id: String,
        file: String,
        disk_format: String,
        #[serde(default)]
        rotation: Option<BackupRotation>,
    },
    /// A snapshot failed: its image goes, so no half image is left.
    ImageDiscard {
        image_id: String,
    },
    /// The instance's latest resize, for a restart to finish or revert it.
    LatestMigration {
        instance_uuid: String,
    },
    /// A restart cut the instance's snapshots off: their queued or saving images go.
    DiscardSnapshots {
        instance_uuid: String,
    },
}

/// `createBackup`'s rotation: after the upload only the newest `rotation` backups of this
/// type of the instance are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRotation {
    pub instance_uuid: String,
    pub backup_type: String,
    pub rotation: u32,
}

/// What the API and the scheduler ask a compute host (nova's `compute/rpcapi.py`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", content = "args", rename_all = "snake_case")]
pub enum ComputeRequest {
    BuildAndRunInstance {
        instance: Instance,
        /// Boxed: a request spec is large, and the other requests should not pay for it.
        #[serde(default)]
        request_spec: Option<Box<RequestSpec>>,
    },
    TerminateInstance {
        instance: Instance,
    },
    StopInstance {
        instance: Instance,
    },
    StartInstance {
        instance: Instance,
    },
    RebootInstance {
        instance: Instance,
        #[serde(default)]
        hard: bool,
    },
    RefreshSecurityGroups {
        filters: crate::network::secgroups::HostFilters,
    },
    /// Issue 19: the routers changed; the host asks the conductor for them (`router_state`).
    RefreshRouters {},
    AttachVolume {
        instance: Instance,
        volume: VolumeDisk,
    },
    DetachVolume {
        instance: Instance,
        volume_id: String,
    },
    GetConsoleOutput {
        instance: Instance,
        #[serde(default)]
        length: Option<usize>,
    },
    // Issue 16: the state actions.
    PauseInstance {
        instance: Instance,
    },
    UnpauseInstance {
        instance: Instance,
    },
    SuspendInstance {
        instance: Instance,
    },
    ResumeInstance {
        instance: Instance,
    },
    TriggerCrashDump {
        instance: Instance,
    },
    SoftDeleteInstance {
        instance: Instance,
    },
    RestoreInstance {
        instance: Instance,
    },
    // Issue 16: rebuild, resize and snapshot.
    RebuildInstance {
        instance: Instance,
        #[serde(default)]
        preserve_ephemeral: bool,
    },
    ResizeInstance {
        instance: Instance,
        migration: crate::db::lifecycle::Migration,
    },
    ConfirmResize {
        instance: Instance,
    },
    RevertResize {
        instance: Instance,
        migration: crate::db::lifecycle::Migration,
    },
    SnapshotInstance {
        instance: Instance,
        image_id: String,
        #[serde(default)]
        rotation: Option<BackupRotation>,
    },
    /// The host's `uptime` line (nova's get_host_uptime, for os-hypervisors' uptime).
    GetHostUptime {},
}

/// What is published on [`NOTIFICATIONS_TOPIC`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", content = "args", rename_all = "snake_case")]
pub enum NotificationMessage {
    Notify(Notification),
}

/// A typed request of one topic: an enum whose variants are the topic's methods.
pub trait RpcRequest: Serialize + DeserializeOwned {
    /// The request as a bus message: its variant name is the method, its fields the args.
    fn to_message(&self, ctx: &Context) -> Result<Message, BusError> {
        let mut value = serde_json::to_value(self)?;
        let method = value.get("method").and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
            BusError::Codec(serde::ser::Error::custom("a request must serialize to {\"method\", \"args\"}"))
        })?;
        let args = value.get_mut("args").map(Value::take).unwrap_or_else(|| json!({}));
        Ok(Message::new(method, args, ctx.clone()))
    }

    /// The request a message carries, with its context; a method the topic does not have, or
    /// args that do not fit it, is a [`RemoteErrorKind::InvalidArguments`] naming both.
    fn from_message(message: Message) -> Result<(Self, Context), RemoteError> {
        let Message { method, args, context } = message;
        let args = if args.is_null() { json!({}) } else { args };
        serde_json::from_value(json!({"method": method, "args": args})).map(|r| (r, context)).map_err(|e| {
            RemoteError::new(RemoteErrorKind::InvalidArguments, format!("cannot take {method} with these args: {e}"))
        })
    }
}

impl RpcRequest for SchedulerRequest {}
impl RpcRequest for ConductorRequest {}
impl RpcRequest for ComputeRequest {}
impl RpcRequest for NotificationMessage {}

/// Casts inside an `rpc.cast` span. Every message a request sends goes out this way (or
/// through [`traced_call`]): the handler's span hangs under the send, so `novabox trace` can
/// tell a message still in flight from a request whose work is over (`crate::trace::pending`).
async fn traced_cast(bus: &dyn Bus, topic: &str, mut message: Message) -> Result<(), BusError> {
    let span = tracing::info_span!("rpc.cast", topic, method = %message.method);
    async move {
        // The message was built outside this span: make the send, not its caller, the
        // handler's parent.
        message.context.trace_parent = crate::trace::current_span_id();
        bus.cast(topic, message).await
    }
    .instrument(span)
    .await
}

/// Calls inside an `rpc.call` span (see [`traced_cast`]).
async fn traced_call(bus: &dyn Bus, topic: &str, mut message: Message, timeout: Duration) -> Result<Value, BusError> {
    let span = tracing::info_span!("rpc.call", topic, method = %message.method);
    async move {
        message.context.trace_parent = crate::trace::current_span_id();
        bus.call(topic, message, timeout).await
    }
    .instrument(span)
    .await
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
        let request = SchedulerRequest::BuildInstances { instance_uuids: uuids.to_vec(), request_spec: spec.clone() };
        traced_cast(&*self.bus, SCHEDULER_TOPIC, request.to_message(ctx)?).await
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
    async fn call<T: DeserializeOwned>(&self, ctx: &Context, request: ConductorRequest) -> Result<T, BusError> {
        decode(traced_call(&*self.bus, CONDUCTOR_TOPIC, request.to_message(ctx)?, self.timeout).await?)
    }
    pub async fn instance_update(
        &self,
        ctx: &Context,
        uuid: &str,
        update: &InstanceUpdate,
    ) -> Result<Instance, BusError> {
        self.call(ctx, ConductorRequest::InstanceUpdate { uuid: uuid.into(), update: update.clone() }).await
    }
    pub async fn instance_fault_create(
        &self,
        ctx: &Context,
        uuid: &str,
        code: i64,
        message: &str,
        host: &str,
    ) -> Result<(), BusError> {
        let request = ConductorRequest::InstanceFaultCreate {
            uuid: uuid.into(),
            code,
            message: message.into(),
            host: Some(host.into()),
        };
        self.call(ctx, request).await
    }
    pub async fn instance_destroy(&self, ctx: &Context, uuid: &str) -> Result<(), BusError> {
        self.call(ctx, ConductorRequest::InstanceDestroy { uuid: uuid.into() }).await
    }
    pub async fn allocate_network(
        &self,
        ctx: &Context,
        uuid: &str,
        requested: &RequestedNetworks,
        host: &str,
    ) -> Result<Vec<Vif>, BusError> {
        let request = ConductorRequest::AllocateNetwork {
            uuid: uuid.into(),
            requested_networks: requested.clone(),
            host: host.into(),
        };
        self.call(ctx, request).await
    }
    /// The interfaces an instance already has (for restarting a guest).
    pub async fn network_info(&self, ctx: &Context, uuid: &str) -> Result<Vec<Vif>, BusError> {
        self.call(ctx, ConductorRequest::NetworkInfo { uuid: uuid.into() }).await
    }
    /// An image as a compute host reads it (for restarting guests).
    pub async fn image_meta(
        &self,
        ctx: &Context,
        image_id: &str,
        project_id: &str,
    ) -> Result<Option<crate::compute::virt::ImageMeta>, BusError> {
        self.call(ctx, ConductorRequest::ImageMeta { image_id: image_id.into(), project_id: Some(project_id.into()) })
            .await
    }
    /// The security group filters of every port bound to `host`.
    pub async fn security_group_filters(
        &self,
        ctx: &Context,
        host: &str,
    ) -> Result<crate::network::secgroups::HostFilters, BusError> {
        self.call(ctx, ConductorRequest::SecurityGroupFilters { host: host.into() }).await
    }
    /// The routers `host` plumbs.
    pub async fn router_state(
        &self,
        ctx: &Context,
        host: &str,
    ) -> Result<crate::network::routers::HostRouters, BusError> {
        self.call(ctx, ConductorRequest::RouterState { host: host.into() }).await
    }
    /// Every port's tap and MAC, for sweeping what deleted ports left plugged.
    pub async fn port_devices(&self, ctx: &Context) -> Result<Vec<crate::network::vif::PortDevice>, BusError> {
        self.call(ctx, ConductorRequest::PortDevices {}).await
    }
    /// The volumes an instance has attached (for restarting a guest).
    pub async fn instance_volumes(&self, ctx: &Context, uuid: &str) -> Result<Vec<VolumeDisk>, BusError> {
        self.call(ctx, ConductorRequest::InstanceVolumes { uuid: uuid.into() }).await
    }
    /// Creates and attaches the volumes a build maps (boot from volume); returns them all.
    pub async fn prepare_block_devices(&self, ctx: &Context, uuid: &str) -> Result<Vec<VolumeDisk>, BusError> {
        self.call(ctx, ConductorRequest::PrepareBlockDevices { uuid: uuid.into() }).await
    }
    /// Attaches and detaches on `host` that a restart cut off.
    pub async fn volumes_in_flight(&self, ctx: &Context, host: &str) -> Result<Vec<VolumeInFlight>, BusError> {
        self.call(ctx, ConductorRequest::VolumesInFlight { host: host.into() }).await
    }
    /// The outcome of an attach: `error` None means the guest has the volume.
    pub async fn volume_attach_done(
        &self,
        ctx: &Context,
        volume_id: &str,
        instance_uuid: &str,
        error: Option<&str>,
    ) -> Result<(), BusError> {
        let request = ConductorRequest::VolumeAttachDone {
            volume_id: volume_id.into(),
            instance_uuid: instance_uuid.into(),
            error: error.map(str::to_string),
        };
        self.call::<Value>(ctx, request).await.map(|_| ())
    }
    pub async fn volume_detach_done(
        &self,
        ctx: &Context,
        volume_id: &str,
        instance_uuid: &str,
        error: Option<&str>,
    ) -> Result<(), BusError> {
        let request = ConductorRequest::VolumeDetachDone {
            volume_id: volume_id.into(),
            instance_uuid: instance_uuid.into(),
            error: error.map(str::to_string),
        };
        self.call::<Value>(ctx, request).await.map(|_| ())
    }
    pub async fn deallocate_network(&self, ctx: &Context, uuid: &str) -> Result<(), BusError> {
        self.call(ctx, ConductorRequest::DeallocateNetwork { uuid: uuid.into() }).await
    }
    pub async fn instances_on_host(&self, ctx: &Context, host: &str) -> Result<Vec<Instance>, BusError> {
        self.call(ctx, ConductorRequest::InstancesOnHost { host: host.into() }).await
    }
    /// A call, not a cast: the event must be stored before the action that ends it finishes.
    pub async fn action_event_start(&self, ctx: &Context, uuid: &str, event: &str, host: &str) -> Result<(), BusError> {
        let request = ConductorRequest::ActionEventStart {
            uuid: uuid.into(),
            event: event.into(),
            host: host.into(),
            start_time: crate::db::now(),
        };
        self.call::<Value>(ctx, request).await.map(|_| ())
    }
    pub async fn action_finish(&self, ctx: &Context, uuid: &str, message: Option<&str>) -> Result<(), BusError> {
        let request = ConductorRequest::ActionFinish { uuid: uuid.into(), message: message.map(str::to_string) };
        traced_cast(&*self.bus, CONDUCTOR_TOPIC, request.to_message(ctx)?).await
    }
    // Issue 16: resizes and snapshots.
    pub async fn migration_status(&self, ctx: &Context, instance_uuid: &str, status: &str) -> Result<(), BusError> {
        let request = ConductorRequest::MigrationStatus { instance_uuid: instance_uuid.into(), status: status.into() };
        self.call::<Value>(ctx, request).await.map(|_| ())
    }
    pub async fn action_start(&self, ctx: &Context, uuid: &str, action: &str) -> Result<(), BusError> {
        let request = ConductorRequest::ActionStart { uuid: uuid.into(), action: action.into() };
        self.call::<Value>(ctx, request).await.map(|_| ())
    }
    pub async fn image_upload(
        &self,
        ctx: &Context,
        image_id: &str,
        file: &str,
        disk_format: &str,
        rotation: Option<&BackupRotation>,
    ) -> Result<(), BusError> {
        let request = ConductorRequest::ImageUpload {
            image_id: image_id.into(),
            file: file.into(),
            disk_format: disk_format.into(),
            rotation: rotation.cloned(),
        };
        self.call::<Value>(ctx, request).await.map(|_| ())
    }
    pub async fn image_discard(&self, ctx: &Context, image_id: &str) -> Result<(), BusError> {
        self.call::<Value>(ctx, ConductorRequest::ImageDiscard { image_id: image_id.into() }).await.map(|_| ())
    }
    pub async fn latest_migration(
        &self,
        ctx: &Context,
        instance_uuid: &str,
    ) -> Result<Option<crate::db::lifecycle::Migration>, BusError> {
        self.call(ctx, ConductorRequest::LatestMigration { instance_uuid: instance_uuid.into() }).await
    }
    pub async fn discard_snapshots(&self, ctx: &Context, instance_uuid: &str) -> Result<(), BusError> {
        let request = ConductorRequest::DiscardSnapshots { instance_uuid: instance_uuid.into() };
        self.call::<Value>(ctx, request).await.map(|_| ())
    }
    /// Spans recorded by a compute service without a database, for the conductor to store
    /// (see `crate::trace`). Cast under an empty request id, which the span recorder ignores:
    /// shipping spans must not record spans of its own to ship.
    pub async fn record_spans(&self, spans: &[crate::trace::SpanRow]) -> Result<(), BusError> {
        let request = ConductorRequest::RecordSpans { spans: spans.to_vec() };
        self.bus.cast(CONDUCTOR_TOPIC, request.to_message(&Context::admin(""))?).await
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
        let request = ConductorRequest::ServiceReport {
            host: host.into(),
            binary: binary.into(),
            topic: topic.into(),
            node: node.cloned(),
        };
        self.call::<Value>(ctx, request).await.map(|_| ())
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
    async fn cast(&self, ctx: &Context, host: &str, request: ComputeRequest) -> Result<(), BusError> {
        traced_cast(&*self.bus, &compute_topic(host), request.to_message(ctx)?).await
    }
    pub async fn build_and_run_instance(
        &self,
        ctx: &Context,
        host: &str,
        instance: &Instance,
        spec: &RequestSpec,
    ) -> Result<(), BusError> {
        let request = ComputeRequest::BuildAndRunInstance {
            instance: instance.clone(),
            request_spec: Some(Box::new(spec.clone())),
        };
        self.cast(ctx, host, request).await
    }
    pub async fn terminate_instance(&self, ctx: &Context, host: &str, instance: &Instance) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::TerminateInstance { instance: instance.clone() }).await
    }
    pub async fn stop_instance(&self, ctx: &Context, host: &str, instance: &Instance) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::StopInstance { instance: instance.clone() }).await
    }
    pub async fn start_instance(&self, ctx: &Context, host: &str, instance: &Instance) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::StartInstance { instance: instance.clone() }).await
    }
    pub async fn reboot_instance(
        &self,
        ctx: &Context,
        host: &str,
        instance: &Instance,
        hard: bool,
    ) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::RebootInstance { instance: instance.clone(), hard }).await
    }
    /// Replaces the host's security group filters with `filters`.
    pub async fn refresh_security_groups(
        &self,
        ctx: &Context,
        host: &str,
        filters: &crate::network::secgroups::HostFilters,
    ) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::RefreshSecurityGroups { filters: filters.clone() }).await
    }
    /// Tells the router host to fetch and apply its routers again.
    pub async fn refresh_routers(&self, ctx: &Context, host: &str) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::RefreshRouters {}).await
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
        self.cast(ctx, host, ComputeRequest::AttachVolume { instance: instance.clone(), volume: volume.clone() }).await
    }
    pub async fn detach_volume(
        &self,
        ctx: &Context,
        host: &str,
        instance: &Instance,
        volume_id: &str,
    ) -> Result<(), BusError> {
        let request = ComputeRequest::DetachVolume { instance: instance.clone(), volume_id: volume_id.into() };
        self.cast(ctx, host, request).await
    }
    pub async fn get_console_output(
        &self,
        ctx: &Context,
        host: &str,
        instance: &Instance,
        length: Option<usize>,
    ) -> Result<String, BusError> {
        let request = ComputeRequest::GetConsoleOutput { instance: instance.clone(), length };
        decode(traced_call(&*self.bus, &compute_topic(host), request.to_message(ctx)?, self.timeout).await?)
    }
    pub async fn get_host_uptime(&self, ctx: &Context, host: &str) -> Result<String, BusError> {
        let request = ComputeRequest::GetHostUptime {};
        decode(traced_call(&*self.bus, &compute_topic(host), request.to_message(ctx)?, self.timeout).await?)
    }
    // Issue 16: casts, as nova's; the host reports the outcome through the conductor.
    pub async fn pause_instance(&self, ctx: &Context, host: &str, instance: &Instance) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::PauseInstance { instance: instance.clone() }).await
    }
    pub async fn unpause_instance(&self, ctx: &Context, host: &str, instance: &Instance) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::UnpauseInstance { instance: instance.clone() }).await
    }
    pub async fn suspend_instance(&self, ctx: &Context, host: &str, instance: &Instance) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::SuspendInstance { instance: instance.clone() }).await
    }
    pub async fn resume_instance(&self, ctx: &Context, host: &str, instance: &Instance) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::ResumeInstance { instance: instance.clone() }).await
    }
    pub async fn trigger_crash_dump(&self, ctx: &Context, host: &str, instance: &Instance) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::TriggerCrashDump { instance: instance.clone() }).await
    }
    pub async fn soft_delete_instance(&self, ctx: &Context, host: &str, instance: &Instance) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::SoftDeleteInstance { instance: instance.clone() }).await
    }
    pub async fn restore_instance(&self, ctx: &Context, host: &str, instance: &Instance) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::RestoreInstance { instance: instance.clone() }).await
    }
    // Issue 16: rebuild, resize and snapshot; casts, as nova's.
    pub async fn rebuild_instance(
        &self,
        ctx: &Context,
        host: &str,
        instance: &Instance,
        preserve_ephemeral: bool,
    ) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::RebuildInstance { instance: instance.clone(), preserve_ephemeral }).await
    }
    pub async fn resize_instance(
        &self,
        ctx: &Context,
        host: &str,
        instance: &Instance,
        migration: &crate::db::lifecycle::Migration,
    ) -> Result<(), BusError> {
        let request = ComputeRequest::ResizeInstance { instance: instance.clone(), migration: migration.clone() };
        self.cast(ctx, host, request).await
    }
    pub async fn confirm_resize(&self, ctx: &Context, host: &str, instance: &Instance) -> Result<(), BusError> {
        self.cast(ctx, host, ComputeRequest::ConfirmResize { instance: instance.clone() }).await
    }
    pub async fn revert_resize(
        &self,
        ctx: &Context,
        host: &str,
        instance: &Instance,
        migration: &crate::db::lifecycle::Migration,
    ) -> Result<(), BusError> {
        let request = ComputeRequest::RevertResize { instance: instance.clone(), migration: migration.clone() };
        self.cast(ctx, host, request).await
    }
    pub async fn snapshot_instance(
        &self,
        ctx: &Context,
        host: &str,
        instance: &Instance,
        image_id: &str,
        rotation: Option<&BackupRotation>,
    ) -> Result<(), BusError> {
        let request = ComputeRequest::SnapshotInstance {
            instance: instance.clone(),
            image_id: image_id.into(),
            rotation: rotation.cloned(),
        };
        self.cast(ctx, host, request).await
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
            "state_description": instance.task_state.map(|t| t.as_str()).unwrap_or_default(),
            "instance_type": instance.flavor.name,
            "memory_mb": instance.flavor.memory_mb,
            "vcpus": instance.flavor.vcpus,
            "root_gb": instance.flavor.root_gb,
            "image_ref_url": instance.image_ref,
            "launched_at": instance.launched_at,
        });
        self.publish(ctx, event_type, Some(&instance.uuid), payload).await;
    }

    /// Publishes any notification (`compute.instance.*` above; novabox's own, such as a fault
    /// injected). Logs a failure: a lost notification must never fail what it describes.
    pub async fn publish(&self, ctx: &Context, event_type: &str, instance_uuid: Option<&str>, payload: Value) {
        let n = Notification {
            message_id: uuid::Uuid::new_v4().to_string(),
            event_type: event_type.to_string(),
            publisher_id: self.publisher_id.clone(),
            priority: "INFO".into(),
            request_id: Some(ctx.request_id.clone()),
            instance_uuid: instance_uuid.map(str::to_string),
            payload,
            timestamp: crate::clock::now().format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        };
        let message = match NotificationMessage::Notify(n).to_message(ctx) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(event_type, error = %e, "notification not encoded");
                return;
            }
        };
        let span = tracing::info_span!("rpc.cast", topic = NOTIFICATIONS_TOPIC, method = "notify", event_type);
        let mut message = message;
        let sent = async {
            message.context.trace_parent = crate::trace::current_span_id();
            self.bus.cast(NOTIFICATIONS_TOPIC, message).await
        }
        .instrument(span)
        .await;
        if let Err(e) = sent {
            tracing::warn!(event_type, error = %e, "notification not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Db, OpenOptions};

    /// A message as the build before typed requests wrote it: `args` built field by field with
    /// `json!`, exactly as its clients did.
    fn old(method: &str, args: Value) -> Message {
        Message { method: method.into(), args, context: Context::admin("req-old") }
    }

    /// Decodes an old message into the typed request, encodes that again, and checks the
    /// result is the same message: an old compute talks to a new conductor, and back.
    fn round_trips<R: RpcRequest>(message: Message) -> R {
        let (method, args) = (message.method.clone(), message.args.clone());
        let (request, ctx) = R::from_message(message).unwrap_or_else(|e| panic!("{method}: {e}"));
        assert_eq!(ctx.request_id, "req-old");
        let again = request.to_message(&ctx).expect("encode");
        assert_eq!(again.method, method);
        assert_eq!(again.args, args, "{method}: the args changed shape");
        request
    }

    #[test]
    fn messages_in_the_old_format_decode_and_encode_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        let instance = db.create_instance(&crate::db::instances::tests::new_instance(&db, "vm")).unwrap();
        let spec = RequestSpec {
            availability_zone: Some("nova".into()),
            scheduler_hints: json!({"group": "g1"}),
            image_properties: json!({}),
            requested_networks: RequestedNetworks::List(vec![RequestedNetwork {
                network_id: Some("n1".into()),
                port_id: None,
                fixed_ip: Some("10.0.0.5".into()),
            }]),
            image: None,
        };
        let update = InstanceUpdate {
            vm_state: Some(crate::compute::states::VmState::Active),
            task_state: Some(None),
            ..Default::default()
        };
        let disk = VolumeDisk { volume_id: "v1".into(), path: "/tmp/v1.qcow2".into(), boot: false };
        let migration = db.create_migration(&instance.uuid, "h1", &instance.flavor, &instance.flavor).unwrap();

        round_trips::<SchedulerRequest>(old(
            "build_instances",
            json!({"instance_uuids": [instance.uuid], "request_spec": spec}),
        ));
        for (method, args) in [
            ("instance_update", json!({"uuid": "u1", "update": update})),
            ("instance_fault_create", json!({"uuid": "u1", "code": 500, "message": "boom", "host": "h1"})),
            ("instance_destroy", json!({"uuid": "u1"})),
            ("allocate_network", json!({"uuid": "u1", "requested_networks": "auto", "host": "h1"})),
            ("allocate_network", json!({"uuid": "u1", "requested_networks": spec.requested_networks, "host": "h1"})),
            ("network_info", json!({"uuid": "u1"})),
            ("image_meta", json!({"image_id": "i1"})),
            // Since issue 14 compute names the guest's project, whose eyes the kernel is looked up with.
            ("image_meta", json!({"image_id": "i1", "project_id": "p1"})),
            ("security_group_filters", json!({"host": "h1"})),
            ("port_devices", json!({})),
            ("router_state", json!({"host": "h1"})),
            ("instance_volumes", json!({"uuid": "u1"})),
            ("prepare_block_devices", json!({"uuid": "u1"})),
            ("volumes_in_flight", json!({"host": "h1"})),
            ("volume_attach_done", json!({"volume_id": "v1", "instance_uuid": "u1", "error": null})),
            ("volume_detach_done", json!({"volume_id": "v1", "instance_uuid": "u1", "error": "gone"})),
            ("deallocate_network", json!({"uuid": "u1"})),
            ("instances_on_host", json!({"host": "h1"})),
            ("action_finish", json!({"uuid": "u1", "message": null})),
            (
                "action_event_start",
                json!({"uuid": "u1", "event": "compute_stop_instance", "host": "h1", "start_time": "2026-01-01T00:00:00Z"}),
            ),
            ("record_spans", json!({"spans": []})),
            ("service_report", json!({"host": "h1", "binary": "novabox-compute", "topic": "compute", "node": null})),
            ("migration_status", json!({"instance_uuid": "u1", "status": "finished"})),
            ("action_start", json!({"uuid": "u1", "action": "confirmResize"})),
            (
                "image_upload",
                json!({"image_id": "i1", "file": "/tmp/s", "disk_format": "qcow2",
                "rotation": {"instance_uuid": "u1", "backup_type": "daily", "rotation": 2}}),
            ),
            ("image_discard", json!({"image_id": "i1"})),
            ("latest_migration", json!({"instance_uuid": "u1"})),
            ("discard_snapshots", json!({"instance_uuid": "u1"})),
        ] {
            round_trips::<ConductorRequest>(old(method, args));
        }
        for (method, args) in [
            ("build_and_run_instance", json!({"instance": instance, "request_spec": spec})),
            ("terminate_instance", json!({"instance": instance})),
            ("stop_instance", json!({"instance": instance})),
            ("start_instance", json!({"instance": instance})),
            ("reboot_instance", json!({"instance": instance, "hard": true})),
            ("attach_volume", json!({"instance": instance, "volume": disk})),
            ("detach_volume", json!({"instance": instance, "volume_id": "v1"})),
            ("get_console_output", json!({"instance": instance, "length": 10})),
            ("get_host_uptime", json!({})),
            ("refresh_security_groups", json!({"filters": {"ports": [], "groups": {}}})),
            ("refresh_routers", json!({})),
            ("pause_instance", json!({"instance": instance})),
            ("unpause_instance", json!({"instance": instance})),
            ("suspend_instance", json!({"instance": instance})),
            ("resume_instance", json!({"instance": instance})),
            ("trigger_crash_dump", json!({"instance": instance})),
            ("soft_delete_instance", json!({"instance": instance})),
            ("restore_instance", json!({"instance": instance})),
            ("rebuild_instance", json!({"instance": instance, "preserve_ephemeral": true})),
            ("resize_instance", json!({"instance": instance, "migration": migration})),
            ("confirm_resize", json!({"instance": instance})),
            ("revert_resize", json!({"instance": instance, "migration": migration})),
            ("snapshot_instance", json!({"instance": instance, "image_id": "i1", "rotation": null})),
        ] {
            round_trips::<ComputeRequest>(old(method, args));
        }
    }

    #[test]
    fn a_message_recorded_off_the_wire_decodes() {
        // The bytes of a cast as the previous build put them on RabbitMQ.
        let wire = r#"{"method":"instance_destroy","args":{"uuid":"5a1c"},
            "context":{"request_id":"req-1","user_id":"u","project_id":"p","roles":["member"],
                       "is_admin":false,"remote_address":"127.0.0.1","timestamp":"2026-11-28T10:00:00.000000Z"}}"#;
        let message: Message = serde_json::from_str(wire).unwrap();
        let (request, ctx) = ConductorRequest::from_message(message).unwrap();
        assert!(matches!(request, ConductorRequest::InstanceDestroy { uuid } if uuid == "5a1c"));
        assert_eq!(ctx.project_id.as_deref(), Some("p"));
    }

    #[test]
    fn an_unknown_method_or_wrong_args_is_a_typed_error_naming_them() {
        let err = ConductorRequest::from_message(old("launch_rockets", json!({}))).unwrap_err();
        assert_eq!(err.kind, RemoteErrorKind::InvalidArguments);
        assert!(err.message.contains("launch_rockets"), "{err}");
        let err = ConductorRequest::from_message(old("instance_destroy", json!({"uuid": 7}))).unwrap_err();
        assert_eq!(err.kind, RemoteErrorKind::InvalidArguments);
        assert!(err.message.contains("instance_destroy"), "{err}");
    }

    #[test]
    fn remote_error_kinds_keep_their_wire_names() {
        let e = RemoteError::new(RemoteErrorKind::DbError, "x");
        assert_eq!(serde_json::to_value(&e).unwrap(), json!({"kind": "DBError", "message": "x"}));
        assert_eq!(e.to_string(), "DBError: x");
        let newer: RemoteError = serde_json::from_value(json!({"kind": "SomethingNew", "message": "y"})).unwrap();
        assert_eq!(newer.kind, RemoteErrorKind::Other);
    }
}
