//! Fault injection (issue 23) at compute's RPC methods: the table is asked before a request
//! is handled, and an injected failure ends as the real one would.

use super::*;

impl ComputeManager {
    /// Asks the fault table before an RPC method is handled.
    pub(super) async fn rpc_fault(&self, ctx: &Context, request: &ComputeRequest) -> Option<crate::faults::Injected> {
        use ComputeRequest as R;
        if !self.faults.enabled() {
            return None;
        }
        let (method, instance) = match request {
            R::BuildAndRunInstance { instance, .. } => ("build_and_run_instance", Some(instance)),
            R::TerminateInstance { instance } => ("terminate_instance", Some(instance)),
            R::StopInstance { instance } => ("stop_instance", Some(instance)),
            R::StartInstance { instance } => ("start_instance", Some(instance)),
            R::RebootInstance { instance, .. } => ("reboot_instance", Some(instance)),
            R::AttachVolume { instance, .. } => ("attach_volume", Some(instance)),
            R::DetachVolume { instance, .. } => ("detach_volume", Some(instance)),
            R::GetConsoleOutput { instance, .. } => ("get_console_output", Some(instance)),
            R::RefreshSecurityGroups { .. } => ("refresh_security_groups", None),
            R::RefreshRouters {} => ("refresh_routers", None),
            R::GetHostUptime {} => ("get_host_uptime", None),
            R::PauseInstance { instance } => ("pause_instance", Some(instance)),
            R::UnpauseInstance { instance } => ("unpause_instance", Some(instance)),
            R::SuspendInstance { instance } => ("suspend_instance", Some(instance)),
            R::ResumeInstance { instance } => ("resume_instance", Some(instance)),
            R::TriggerCrashDump { instance } => ("trigger_crash_dump", Some(instance)),
            R::SoftDeleteInstance { instance } => ("soft_delete_instance", Some(instance)),
            R::RestoreInstance { instance } => ("restore_instance", Some(instance)),
            R::RebuildInstance { instance, .. } => ("rebuild_instance", Some(instance)),
            R::ResizeInstance { instance, .. } => ("resize_instance", Some(instance)),
            R::ConfirmResize { instance } => ("confirm_resize", Some(instance)),
            R::RevertResize { instance, .. } => ("revert_resize", Some(instance)),
            R::SnapshotInstance { instance, .. } => ("snapshot_instance", Some(instance)),
        };
        match instance {
            Some(inst) => self.fault_at(ctx, method, inst).await,
            None => {
                let call = crate::faults::StepCall { service: "compute", step: method, ..Default::default() };
                self.faults.inject(ctx, call, None, &self.host).await
            }
        }
    }

    /// Ends an RPC method a fault fired for as the real failure of that method ends: a
    /// build in ERROR with the fault and a notification, an action's fault recorded and its
    /// task_state cleared, a volume operation reported failed, a call answered with the error.
    pub(super) async fn injected_rpc(
        &self,
        ctx: &Context,
        request: ComputeRequest,
        injected: crate::faults::Injected,
    ) -> Result<Value, RemoteError> {
        use crate::faults::Injected;
        use ComputeRequest as R;
        let message = match injected {
            Injected::Error(message) => message,
            Injected::Kill => return Ok(Value::Null),
            Injected::Drop => {
                // A lost call is one whose caller waits until it gives up.
                if matches!(request, R::GetConsoleOutput { .. }) {
                    tokio::time::sleep(Duration::from_secs(self.config.bus.call_timeout_secs + 1)).await;
                }
                return Ok(Value::Null);
            }
        };
        let request_kind = match &request {
            R::ResizeInstance { .. } | R::ConfirmResize { .. } | R::RevertResize { .. } => Kind::Resize,
            _ => Kind::Other,
        };
        match request {
            R::BuildAndRunInstance { instance, .. } => {
                let lock = self.lock_for(&instance.uuid);
                let _held = lock.lock().await;
                self.set_error(ctx, &instance, &message).await;
                self.notifier.instance(ctx, "compute.instance.create.error", &instance).await;
            }
            R::TerminateInstance { instance } => {
                // As a failed destroy: the fault is recorded, the server stays `deleting`.
                let _ = self.conductor.instance_fault_create(ctx, &instance.uuid, 500, &message, &self.host).await;
            }
            R::StopInstance { instance }
            | R::StartInstance { instance }
            | R::RebootInstance { instance, .. }
            | R::PauseInstance { instance }
            | R::UnpauseInstance { instance }
            | R::SuspendInstance { instance }
            | R::ResumeInstance { instance }
            | R::TriggerCrashDump { instance }
            | R::SoftDeleteInstance { instance }
            | R::RestoreInstance { instance } => {
                let _ = self.conductor.instance_fault_create(ctx, &instance.uuid, 500, &message, &self.host).await;
                let u = InstanceUpdate { task_state: Some(None), ..Default::default() };
                let _ = self.conductor.instance_update(ctx, &instance.uuid, &u).await;
                let _ = self.conductor.action_finish(ctx, &instance.uuid, Some(&message)).await;
            }
            // As the real failures of issue 16's long actions end (see `lifecycle`).
            R::RebuildInstance { instance, .. }
            | R::ResizeInstance { instance, .. }
            | R::ConfirmResize { instance }
            | R::RevertResize { instance, .. } => {
                let lock = self.lock_for(&instance.uuid);
                let _held = lock.lock().await;
                if matches!(request_kind, Kind::Resize) {
                    let _ = self.conductor.migration_status(ctx, &instance.uuid, "error").await;
                }
                self.action_failed(ctx, &instance, &message, true).await;
            }
            R::SnapshotInstance { instance, image_id, .. } => {
                let _ = self.conductor.image_discard(ctx, &image_id).await;
                self.action_failed(ctx, &instance, &message, false).await;
            }
            R::AttachVolume { instance, volume } => {
                let _ = self.conductor.volume_attach_done(ctx, &volume.volume_id, &instance.uuid, Some(&message)).await;
            }
            R::DetachVolume { instance, volume_id } => {
                let _ = self.conductor.volume_detach_done(ctx, &volume_id, &instance.uuid, Some(&message)).await;
            }
            R::GetConsoleOutput { .. } => return Err(RemoteError::new(RemoteErrorKind::ConsoleNotAvailable, message)),
            R::GetHostUptime {} => return Err(RemoteError::new(RemoteErrorKind::InvalidRequest, message)),
            R::RefreshSecurityGroups { .. } => {
                return Err(RemoteError::new(RemoteErrorKind::SecurityGroupError, message))
            }
            R::RefreshRouters {} => return Err(RemoteError::new(RemoteErrorKind::NetworkError, message)),
        }
        Ok(Value::Null)
    }
}

/// Which failed requests have a resize record to mark.
enum Kind {
    Resize,
    Other,
}
