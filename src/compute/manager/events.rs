//! The instance-action events of this host's work, as nova's `@wrap_instance_event` names
//! them (`compute_` and the manager method): each request that carries out a recorded action
//! opens its event before the work, and the action's finish (`action_finish`, or the
//! conductor's `instance_destroy` for a delete) closes it with the result.

use crate::bus::Context;
use crate::rpcapi::ComputeRequest;

/// The event a request runs as and the instance it is for; None for requests that are not
/// an instance action (security group refreshes, console output).
pub(super) fn event_of(request: &ComputeRequest) -> Option<(&'static str, &str)> {
    use ComputeRequest as R;
    let (event, instance) = match request {
        R::BuildAndRunInstance { instance, .. } => ("compute__do_build_and_run_instance", instance),
        R::TerminateInstance { instance } => ("compute_terminate_instance", instance),
        R::StopInstance { instance } => ("compute_stop_instance", instance),
        R::StartInstance { instance } => ("compute_start_instance", instance),
        R::RebootInstance { instance, .. } => ("compute_reboot_instance", instance),
        R::PauseInstance { instance } => ("compute_pause_instance", instance),
        R::UnpauseInstance { instance } => ("compute_unpause_instance", instance),
        R::SuspendInstance { instance } => ("compute_suspend_instance", instance),
        R::ResumeInstance { instance } => ("compute_resume_instance", instance),
        R::TriggerCrashDump { instance } => ("compute_trigger_crash_dump", instance),
        R::SoftDeleteInstance { instance } => ("compute_soft_delete_instance", instance),
        R::RestoreInstance { instance } => ("compute_restore_instance", instance),
        R::AttachVolume { instance, .. } => ("compute_attach_volume", instance),
        R::DetachVolume { instance, .. } => ("compute_detach_volume", instance),
        R::RebuildInstance { instance, .. } => ("compute_rebuild_instance", instance),
        // novabox resizes on its one host in one request: nova's prep_resize, resize_instance
        // and finish_resize steps, recorded under the middle one.
        R::ResizeInstance { instance, .. } => ("compute_resize_instance", instance),
        R::ConfirmResize { instance } => ("compute_confirm_resize", instance),
        R::RevertResize { instance, .. } => ("compute_revert_resize", instance),
        R::SnapshotInstance { instance, rotation: None, .. } => ("compute_snapshot_instance", instance),
        R::SnapshotInstance { instance, rotation: Some(_), .. } => ("compute_backup_instance", instance),
        _ => return None,
    };
    Some((event, instance.uuid.as_str()))
}

impl super::ComputeManager {
    /// Opens the event of `request`, if it has one. A conductor that does not answer costs
    /// the event, not the work: nova's reporter would fail the step, but a guest left half
    /// stopped for want of a history row is the worse outcome.
    pub(super) async fn start_event(&self, ctx: &Context, request: &ComputeRequest) {
        let Some((event, uuid)) = event_of(request) else { return };
        if let Err(e) = self.conductor.action_event_start(ctx, uuid, event, &self.host).await {
            tracing::warn!(instance = %uuid, event, error = %e, "instance action event not recorded");
        }
    }
}
