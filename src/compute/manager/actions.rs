//! Stop, start, reboot and nova's state actions (issue 16) on this host: each runs the driver
//! under the instance's lock and reports the state it ends in through the conductor.

use super::*;

impl ComputeManager {
    /// Stop, start and reboot: run the driver call, then clear the task state.
    pub(super) async fn power_action(&self, ctx: &Context, inst: &Instance, action: PowerAction) {
        let lock = self.lock_for(&inst.uuid);
        let _held = lock.lock().await;
        let (event, expected, vm_state, power_after) = match action {
            PowerAction::Stop => ("power_off", vec![TaskState::PoweringOff], VmState::Stopped, PowerState::Shutdown),
            PowerAction::Start => ("power_on", vec![TaskState::PoweringOn], VmState::Active, PowerState::Running),
            PowerAction::Reboot { .. } => (
                "reboot",
                vec![
                    TaskState::Rebooting,
                    TaskState::RebootPending,
                    TaskState::RebootStarted,
                    TaskState::RebootingHard,
                ],
                VmState::Active,
                PowerState::Running,
            ),
        };
        self.notifier.instance(ctx, &format!("compute.instance.{event}.start"), inst).await;
        let result = match action {
            PowerAction::Stop => self.driver.power_off(&inst.uuid).await,
            PowerAction::Start => self.driver.power_on(&inst.uuid).await,
            PowerAction::Reboot { hard } => self.driver.reboot(&inst.uuid, hard).await,
        };
        let expected = Some(expected.into_iter().map(Some).collect());
        match result {
            Ok(()) => {
                let u = InstanceUpdate {
                    vm_state: Some(vm_state),
                    power_state: Some(power_after),
                    task_state: Some(None),
                    expected_task_state: expected,
                    // A start may have had to pick a new port (the saved one was taken).
                    ssh_forward: self.driver.ssh_forward(&inst.uuid).await,
                    ..Default::default()
                };
                match self.conductor.instance_update(ctx, &inst.uuid, &u).await {
                    Ok(updated) => {
                        self.notifier.instance(ctx, &format!("compute.instance.{event}.end"), &updated).await;
                        let _ = self.conductor.action_finish(ctx, &inst.uuid, None).await;
                    }
                    Err(e) => tracing::info!(instance = %inst.uuid, error = %e, "{event} result not recorded"),
                }
            }
            Err(e) => {
                let message = format!("{event} failed: {e}");
                tracing::warn!(instance = %inst.uuid, "{message}");
                let _ = self.conductor.instance_fault_create(ctx, &inst.uuid, 500, &message, &self.host).await;
                let u = InstanceUpdate { task_state: Some(None), expected_task_state: expected, ..Default::default() };
                let _ = self.conductor.instance_update(ctx, &inst.uuid, &u).await;
                let _ = self.conductor.action_finish(ctx, &inst.uuid, Some(&message)).await;
            }
        }
    }

    /// Pause, unpause, suspend and resume (issue 16), as nova's compute manager: the
    /// `.start` notification, the driver, then the new state with the power state the driver
    /// reports, expecting the task the API set; on failure the fault, and the task reverted or
    /// the instance in ERROR (see [`StateAction::errors_out`]).
    pub(super) async fn state_action(&self, ctx: &Context, inst: &Instance, action: StateAction) {
        let lock = self.lock_for(&inst.uuid);
        let _held = lock.lock().await;
        let (event, task, vm_state) = action.plan();
        let span =
            tracing::info_span!("state_action", action = event, instance = %inst.uuid, driver = self.driver.name());
        async {
            self.notifier.instance(ctx, &format!("compute.instance.{event}.start"), inst).await;
            let result = async {
                match action {
                    StateAction::Pause => self.driver.pause(&inst.uuid).await,
                    StateAction::Unpause => self.driver.unpause(&inst.uuid).await,
                    StateAction::Suspend => self.driver.suspend(&inst.uuid).await,
                    StateAction::Resume => self.driver.resume(&inst.uuid).await,
                    StateAction::SoftDelete => self.driver.power_off(&inst.uuid).await,
                    StateAction::Restore => self.driver.power_on(&inst.uuid).await,
                }
            }
            .instrument(tracing::info_span!("driver", call = event))
            .await;
            let expected = Some(vec![Some(task)]);
            match result {
                Ok(()) => {
                    let u = InstanceUpdate {
                        vm_state: Some(vm_state),
                        power_state: Some(self.driver.power_state(&inst.uuid).await),
                        task_state: Some(None),
                        expected_task_state: expected,
                        ssh_forward: self.driver.ssh_forward(&inst.uuid).await,
                        ..Default::default()
                    };
                    match self.conductor.instance_update(ctx, &inst.uuid, &u).await {
                        Ok(updated) => {
                            tracing::info!(vm_state = %vm_state, "{event} done");
                            self.notifier.instance(ctx, &format!("compute.instance.{event}.end"), &updated).await;
                            let _ = self.conductor.action_finish(ctx, &inst.uuid, None).await;
                        }
                        Err(e) => tracing::info!(error = %e, "{event} result not recorded"),
                    }
                }
                Err(e) => {
                    let message = format!("{event} failed: {e}");
                    tracing::warn!("{message}");
                    let _ = self.conductor.instance_fault_create(ctx, &inst.uuid, 500, &message, &self.host).await;
                    let u = InstanceUpdate {
                        task_state: Some(None),
                        vm_state: action.errors_out().then_some(VmState::Error),
                        power_state: Some(self.driver.power_state(&inst.uuid).await),
                        expected_task_state: expected,
                        ..Default::default()
                    };
                    let _ = self.conductor.instance_update(ctx, &inst.uuid, &u).await;
                    let _ = self.conductor.action_finish(ctx, &inst.uuid, Some(&message)).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    /// `trigger_crash_dump`: an NMI to the guest. Nothing in the instance's state changes (the
    /// effect depends on how the guest's kernel is configured); a failure is the action's fault.
    #[tracing::instrument(name = "trigger_crash_dump", skip_all, fields(instance = %inst.uuid))]
    pub(super) async fn trigger_crash_dump(&self, ctx: &Context, inst: &Instance) {
        let lock = self.lock_for(&inst.uuid);
        let _held = lock.lock().await;
        self.notifier.instance(ctx, "compute.instance.trigger_crash_dump.start", inst).await;
        match self.driver.trigger_crash_dump(&inst.uuid).await {
            Ok(()) => {
                tracing::info!("NMI injected");
                self.notifier.instance(ctx, "compute.instance.trigger_crash_dump.end", inst).await;
                let _ = self.conductor.action_finish(ctx, &inst.uuid, None).await;
            }
            Err(e) => {
                let message = format!("trigger_crash_dump failed: {e}");
                tracing::warn!("{message}");
                let _ = self.conductor.instance_fault_create(ctx, &inst.uuid, 500, &message, &self.host).await;
                let _ = self.conductor.action_finish(ctx, &inst.uuid, Some(&message)).await;
            }
        }
    }
}

/// The state actions of issue 16: what each waits for, sets, and does when the driver fails.
#[derive(Clone, Copy, Debug)]
pub(super) enum StateAction {
    Pause,
    Unpause,
    Suspend,
    Resume,
    /// A delete deferred by `reclaim_instance_interval`: powered off, kept.
    SoftDelete,
    Restore,
}

impl StateAction {
    /// (notification event, the task it runs under, the vm_state it ends in)
    pub(super) fn plan(self) -> (&'static str, TaskState, VmState) {
        match self {
            StateAction::Pause => ("pause", TaskState::Pausing, VmState::Paused),
            StateAction::Unpause => ("unpause", TaskState::Unpausing, VmState::Active),
            StateAction::Suspend => ("suspend", TaskState::Suspending, VmState::Suspended),
            StateAction::Resume => ("resume", TaskState::Resuming, VmState::Active),
            StateAction::SoftDelete => ("soft_delete", TaskState::SoftDeleting, VmState::SoftDeleted),
            StateAction::Restore => ("restore", TaskState::Restoring, VmState::Active),
        }
    }

    /// nova's suspend and resume run the driver inside `_error_out_instance_on_exception`: a
    /// failed save or restore leaves the guest in an unknown state, so ERROR. A failed pause
    /// or unpause only reverts the task (`@reverts_task_state`): the guest is as it was.
    pub(super) fn errors_out(self) -> bool {
        matches!(self, StateAction::Suspend | StateAction::Resume)
    }
}

#[derive(Clone, Copy)]
pub(super) enum PowerAction {
    Stop,
    Start,
    Reboot { hard: bool },
}
