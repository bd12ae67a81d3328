//! Rebuild, resize and snapshot on this host (issue 16), as nova's compute manager walks them:
//! each step's task state through the conductor (expecting the one before, so a delete that
//! came in between wins), `compute.instance.<action>.start/.end` notifications, a span per
//! step, and on failure the fault with ERROR (rebuild, resize) or the task reverted (a
//! snapshot, or a resize refused before it touched the guest, nova's `InstanceFaultRollback`).

use super::*;
use crate::db::instances::FlavorSnapshot;
use crate::db::lifecycle::Migration;
use crate::rpcapi::BackupRotation;

impl ComputeManager {
    /// The guest's spec with `flavor` instead of the row's (a resize's new or old one).
    async fn spec_with(
        &self,
        ctx: &Context,
        inst: &Instance,
        flavor: Option<&FlavorSnapshot>,
    ) -> Result<GuestSpec, String> {
        let mut inst = inst.clone();
        if let Some(f) = flavor {
            inst.flavor = f.clone();
        }
        let mut spec = self.guest_spec(ctx, &inst).await.map_err(|e| e.to_string())?;
        self.plug(&mut spec).await?;
        Ok(spec)
    }

    async fn step(
        &self,
        ctx: &Context,
        uuid: &str,
        task: TaskState,
        expected: &[TaskState],
    ) -> Result<Instance, String> {
        let u = InstanceUpdate {
            task_state: Some(Some(task)),
            expected_task_state: Some(expected.iter().copied().map(Some).collect()),
            ..Default::default()
        };
        self.conductor.instance_update(ctx, uuid, &u).await.map_err(|e| e.to_string())
    }

    /// Records a failure: the fault, the instance in ERROR (or only its task cleared), the
    /// action finished with the message.
    pub(super) async fn action_failed(&self, ctx: &Context, inst: &Instance, message: &str, error_out: bool) {
        tracing::warn!(instance = %inst.uuid, "{message}");
        let _ = self.conductor.instance_fault_create(ctx, &inst.uuid, 500, message, &self.host).await;
        let u = InstanceUpdate {
            task_state: Some(None),
            vm_state: error_out.then_some(VmState::Error),
            power_state: Some(self.driver.power_state(&inst.uuid).await),
            ..Default::default()
        };
        let _ = self.conductor.instance_update(ctx, &inst.uuid, &u).await;
        let _ = self.conductor.action_finish(ctx, &inst.uuid, Some(message)).await;
    }

    /// `rebuild`: rebuilding -> rebuild_block_device_mapping -> rebuild_spawning -> none; a
    /// server that was SHUTOFF is off again afterwards, as nova leaves it.
    pub(super) async fn rebuild_instance(&self, ctx: &Context, inst: &Instance, preserve_ephemeral: bool) {
        let lock = self.lock_for(&inst.uuid);
        let _held = lock.lock().await;
        let span = tracing::info_span!("rebuild_instance", instance = %inst.uuid, driver = self.driver.name());
        async {
            self.notifier.instance(ctx, "compute.instance.rebuild.start", inst).await;
            match self.rebuild_steps(ctx, inst, preserve_ephemeral).await {
                Ok(done) => {
                    tracing::info!(vm_state = %done.vm_state, "rebuild done");
                    self.notifier.instance(ctx, "compute.instance.rebuild.end", &done).await;
                    let _ = self.conductor.action_finish(ctx, &inst.uuid, None).await;
                }
                Err(why) => {
                    let message = format!("Rebuild of instance {} failed: {why}", inst.uuid);
                    self.action_failed(ctx, inst, &message, true).await;
                    self.notifier.instance(ctx, "compute.instance.rebuild.error", inst).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn rebuild_steps(
        &self,
        ctx: &Context,
        inst: &Instance,
        preserve_ephemeral: bool,
    ) -> Result<Instance, String> {
        let uuid = &inst.uuid;
        let spec = async {
            self.step(ctx, uuid, TaskState::RebuildBlockDeviceMapping, &[TaskState::Rebuilding]).await?;
            self.spec_with(ctx, inst, None).await
        }
        .instrument(tracing::info_span!("rebuild_block_device_mapping"))
        .await?;
        async {
            self.step(ctx, uuid, TaskState::RebuildSpawning, &[TaskState::RebuildBlockDeviceMapping]).await?;
            self.driver.rebuild(&spec, preserve_ephemeral).await.map_err(|e| e.to_string())?;
            let stopped = inst.vm_state == VmState::Stopped;
            if stopped {
                self.driver.power_off(uuid).await.map_err(|e| e.to_string())?;
            }
            let u = InstanceUpdate {
                vm_state: Some(if stopped { VmState::Stopped } else { VmState::Active }),
                task_state: Some(None),
                power_state: Some(self.driver.power_state(uuid).await),
                launched_at: Some(now()),
                expected_task_state: Some(vec![Some(TaskState::RebuildSpawning)]),
                ssh_forward: self.driver.ssh_forward(uuid).await,
                ..Default::default()
            };
            self.conductor.instance_update(ctx, uuid, &u).await.map_err(|e| e.to_string())
        }
        .instrument(tracing::info_span!("rebuild_spawning"))
        .await
    }

    /// `resize` on this host: resize_prep -> resize_migrating (guest off, disks kept) ->
    /// resize_migrated -> resize_finish (disk grown, new flavor) -> VERIFY_RESIZE.
    pub(super) async fn resize_instance(&self, ctx: &Context, inst: &Instance, migration: &Migration) {
        let lock = self.lock_for(&inst.uuid);
        let _held = lock.lock().await;
        let span = tracing::info_span!("resize_instance", instance = %inst.uuid, driver = self.driver.name());
        async {
            let (old, new) = (&migration.old_flavor, &migration.new_flavor);
            // The libvirt driver's refusal, before anything is touched: the instance goes
            // back to where it was (nova's InstanceFaultRollback).
            if new.root_gb < old.root_gb && inst.image_ref.as_deref().is_some_and(|i| !i.is_empty()) {
                let _ = self.conductor.migration_status(ctx, &inst.uuid, "error").await;
                self.action_failed(ctx, inst, "Resize error: Unable to resize disk down.", false).await;
                return;
            }
            match self.resize_steps(ctx, inst, new).await {
                Ok(done) => {
                    let _ = self.conductor.migration_status(ctx, &inst.uuid, "finished").await;
                    self.notifier.instance(ctx, "compute.instance.finish_resize.end", &done).await;
                    let _ = self.conductor.action_finish(ctx, &inst.uuid, None).await;
                }
                Err(why) => {
                    let _ = self.conductor.migration_status(ctx, &inst.uuid, "error").await;
                    let message = format!("Resize of instance {} failed: {why}", inst.uuid);
                    self.action_failed(ctx, inst, &message, true).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn resize_steps(&self, ctx: &Context, inst: &Instance, new: &FlavorSnapshot) -> Result<Instance, String> {
        let uuid = &inst.uuid;
        let was_running = inst.vm_state == VmState::Active;
        async {
            let migrating = self.step(ctx, uuid, TaskState::ResizeMigrating, &[TaskState::ResizePrep]).await?;
            let _ = self.conductor.migration_status(ctx, uuid, "migrating").await;
            self.notifier.instance(ctx, "compute.instance.resize.start", &migrating).await;
            self.driver.migrate_disk_and_power_off(uuid).await.map_err(|e| e.to_string())?;
            let migrated = self.step(ctx, uuid, TaskState::ResizeMigrated, &[TaskState::ResizeMigrating]).await?;
            let _ = self.conductor.migration_status(ctx, uuid, "post-migrating").await;
            self.notifier.instance(ctx, "compute.instance.resize.end", &migrated).await;
            Ok::<_, String>(())
        }
        .instrument(tracing::info_span!("resize_migrating"))
        .await?;
        async {
            let finishing = self.step(ctx, uuid, TaskState::ResizeFinish, &[TaskState::ResizeMigrated]).await?;
            self.notifier.instance(ctx, "compute.instance.finish_resize.start", &finishing).await;
            let spec = self.spec_with(ctx, inst, Some(new)).await?;
            self.driver.finish_migration(&spec, was_running).await.map_err(|e| e.to_string())?;
            let u = InstanceUpdate {
                vm_state: Some(VmState::Resized),
                task_state: Some(None),
                power_state: Some(self.driver.power_state(uuid).await),
                flavor: Some(Box::new(new.clone())),
                expected_task_state: Some(vec![Some(TaskState::ResizeFinish)]),
                ssh_forward: self.driver.ssh_forward(uuid).await,
                ..Default::default()
            };
            self.conductor.instance_update(ctx, uuid, &u).await.map_err(|e| e.to_string())
        }
        .instrument(tracing::info_span!("resize_finish"))
        .await
    }

    /// `confirmResize` (or the auto-confirm): what was kept for a revert goes; the server is
    /// ACTIVE, or SHUTOFF when it was resized while off.
    pub(super) async fn confirm_resize(&self, ctx: &Context, inst: &Instance) {
        let lock = self.lock_for(&inst.uuid);
        let _held = lock.lock().await;
        let span = tracing::info_span!("confirm_resize", instance = %inst.uuid, driver = self.driver.name());
        async {
            self.notifier.instance(ctx, "compute.instance.resize.confirm.start", inst).await;
            match self.driver.confirm_migration(&inst.uuid).await {
                Ok(()) => {
                    let power = self.driver.power_state(&inst.uuid).await;
                    let u = InstanceUpdate {
                        vm_state: Some(if power == PowerState::Running { VmState::Active } else { VmState::Stopped }),
                        task_state: Some(None),
                        power_state: Some(power),
                        expected_task_state: Some(vec![Some(TaskState::ResizeConfirming)]),
                        ..Default::default()
                    };
                    match self.conductor.instance_update(ctx, &inst.uuid, &u).await {
                        Ok(done) => {
                            let _ = self.conductor.migration_status(ctx, &inst.uuid, "confirmed").await;
                            self.notifier.instance(ctx, "compute.instance.resize.confirm.end", &done).await;
                            let _ = self.conductor.action_finish(ctx, &inst.uuid, None).await;
                        }
                        Err(e) => tracing::info!(error = %e, "confirm not recorded"),
                    }
                }
                Err(e) => {
                    let _ = self.conductor.migration_status(ctx, &inst.uuid, "error").await;
                    let message = format!("Confirming the resize of instance {} failed: {e}", inst.uuid);
                    self.action_failed(ctx, inst, &message, true).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    /// `revertResize`: the old disk, machine and flavor back; ACTIVE when the guest ran.
    pub(super) async fn revert_resize(&self, ctx: &Context, inst: &Instance, migration: &Migration) {
        let lock = self.lock_for(&inst.uuid);
        let _held = lock.lock().await;
        let span = tracing::info_span!("revert_resize", instance = %inst.uuid, driver = self.driver.name());
        async {
            self.notifier.instance(ctx, "compute.instance.resize.revert.start", inst).await;
            let power_on = self.driver.power_state(&inst.uuid).await == PowerState::Running;
            let old = &migration.old_flavor;
            let reverted = async {
                let spec = self.spec_with(ctx, inst, Some(old)).await?;
                self.driver.finish_revert_migration(&spec, power_on).await.map_err(|e| e.to_string())
            }
            .await;
            match reverted {
                Ok(()) => {
                    let u = InstanceUpdate {
                        vm_state: Some(if power_on { VmState::Active } else { VmState::Stopped }),
                        task_state: Some(None),
                        power_state: Some(self.driver.power_state(&inst.uuid).await),
                        flavor: Some(Box::new(old.clone())),
                        expected_task_state: Some(vec![Some(TaskState::ResizeReverting)]),
                        ssh_forward: self.driver.ssh_forward(&inst.uuid).await,
                        ..Default::default()
                    };
                    match self.conductor.instance_update(ctx, &inst.uuid, &u).await {
                        Ok(done) => {
                            let _ = self.conductor.migration_status(ctx, &inst.uuid, "reverted").await;
                            self.notifier.instance(ctx, "compute.instance.resize.revert.end", &done).await;
                            let _ = self.conductor.action_finish(ctx, &inst.uuid, None).await;
                        }
                        Err(e) => tracing::info!(error = %e, "revert not recorded"),
                    }
                }
                Err(why) => {
                    let _ = self.conductor.migration_status(ctx, &inst.uuid, "error").await;
                    let message = format!("Reverting the resize of instance {} failed: {why}", inst.uuid);
                    self.action_failed(ctx, inst, &message, true).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    /// `createImage` / `createBackup`: image_snapshot (or image_backup) ->
    /// image_pending_upload -> image_uploading -> none. A failure deletes the image and leaves
    /// the server as it was, with the fault.
    pub(super) async fn snapshot_instance(
        &self,
        ctx: &Context,
        inst: &Instance,
        image_id: &str,
        rotation: Option<&BackupRotation>,
    ) {
        let lock = self.lock_for(&inst.uuid);
        let _held = lock.lock().await;
        let span = tracing::info_span!("snapshot_instance", instance = %inst.uuid, image = image_id, driver = self.driver.name());
        async {
            self.notifier.instance(ctx, "compute.instance.snapshot.start", inst).await;
            match self.snapshot_steps(ctx, inst, image_id, rotation).await {
                Ok(done) => {
                    self.notifier.instance(ctx, "compute.instance.snapshot.end", &done).await;
                    let _ = self.conductor.action_finish(ctx, &inst.uuid, None).await;
                }
                Err(why) => {
                    let _ = self.conductor.image_discard(ctx, image_id).await;
                    let message = format!("Snapshot of instance {} failed: {why}", inst.uuid);
                    self.action_failed(ctx, inst, &message, false).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn snapshot_steps(
        &self,
        ctx: &Context,
        inst: &Instance,
        image_id: &str,
        rotation: Option<&BackupRotation>,
    ) -> Result<Instance, String> {
        let uuid = &inst.uuid;
        self.step(ctx, uuid, TaskState::ImagePendingUpload, &[TaskState::ImageSnapshot, TaskState::ImageBackup])
            .await?;
        let snapshot = self
            .driver
            .snapshot(uuid, image_id)
            .instrument(tracing::info_span!("driver.snapshot"))
            .await
            .map_err(|e| e.to_string())?;
        let uploaded = async {
            self.step(ctx, uuid, TaskState::ImageUploading, &[TaskState::ImagePendingUpload]).await?;
            let file = snapshot.file.to_str().ok_or("the snapshot's path is not UTF-8")?;
            self.conductor
                .image_upload(ctx, image_id, file, &snapshot.disk_format, rotation)
                .await
                .map_err(|e| e.to_string())
        }
        .instrument(tracing::info_span!("image_uploading"))
        .await;
        let _ = std::fs::remove_file(&snapshot.file);
        uploaded?;
        let u = InstanceUpdate {
            task_state: Some(None),
            expected_task_state: Some(vec![Some(TaskState::ImageUploading)]),
            ..Default::default()
        };
        self.conductor.instance_update(ctx, uuid, &u).await.map_err(|e| e.to_string())
    }

    /// nova's `_poll_unconfirmed_resizes`: resizes left in VERIFY_RESIZE longer than
    /// `[compute] resize_confirm_window` (by the stack's clock) are confirmed, recorded as a
    /// `confirmResize` action of the service.
    pub async fn confirm_expired_resizes(&self) -> Result<(), BusError> {
        let window = self.config.compute.resize_confirm_window;
        if window == 0 {
            return Ok(());
        }
        let ctx = Context::admin(Context::new_request_id());
        let now = crate::clock::now();
        for inst in self.conductor.instances_on_host(&ctx, &self.host).await? {
            if inst.vm_state != VmState::Resized || inst.task_state.is_some() {
                continue;
            }
            let since = inst.updated_at.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            if since.is_none_or(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds() < window as i64) {
                continue;
            }
            let u = InstanceUpdate {
                task_state: Some(Some(TaskState::ResizeConfirming)),
                expected_task_state: Some(vec![None]),
                expected_vm_state: Some(vec![VmState::Resized]),
                ..Default::default()
            };
            if let Ok(confirming) = self.conductor.instance_update(&ctx, &inst.uuid, &u).await {
                tracing::info!(instance = %inst.uuid, window, "confirming a resize past its confirm window");
                let _ = self.conductor.action_start(&ctx, &inst.uuid, "confirmResize").await;
                let _ = self.conductor.migration_status(&ctx, &inst.uuid, "confirming").await;
                self.confirm_resize(&ctx, &confirming).await;
            }
        }
        Ok(())
    }

    /// `init_host` for an instance a restart caught in one of these actions, settled as
    /// nova's `_init_instance` settles them: an interrupted rebuild is ERROR (rebuild it
    /// again); a resize not yet in VERIFY_RESIZE is reverted, one being confirmed or reverted
    /// is finished; a snapshot's image is deleted and a guest frozen for its copy runs on.
    /// Returns the instance as it now is, for the rest of `reconcile`; None when its task is
    /// none of these.
    pub(super) async fn recover_interrupted(
        &self,
        ctx: &Context,
        inst: &Instance,
        driver_has_it: bool,
    ) -> Option<Instance> {
        use TaskState as T;
        let task = inst.task_state?;
        let uuid = &inst.uuid;
        let settle = |vm_state: Option<VmState>, flavor: Option<FlavorSnapshot>| InstanceUpdate {
            vm_state,
            task_state: Some(None),
            flavor: flavor.map(Box::new),
            expected_task_state: Some(vec![Some(task)]),
            ..Default::default()
        };
        let (update, message) = match task {
            T::Rebuilding | T::RebuildBlockDeviceMapping | T::RebuildSpawning => {
                let message = "The compute service restarted while this instance was being rebuilt; rebuild it again.";
                let _ = self.conductor.instance_fault_create(ctx, uuid, 500, message, &self.host).await;
                (settle(Some(VmState::Error), None), Some(message.to_string()))
            }
            T::ResizePrep | T::ResizeMigrating | T::ResizeMigrated | T::ResizeFinish => {
                // The row still has the old flavor (the new one is only written with VERIFY_RESIZE).
                if driver_has_it && task != T::ResizePrep {
                    let power_on = inst.vm_state == VmState::Active;
                    match self.spec_with(ctx, inst, None).await {
                        Ok(spec) => {
                            if let Err(e) = self.driver.finish_revert_migration(&spec, power_on).await {
                                tracing::info!(instance = %uuid, error = %e, "nothing of the resize to revert");
                            }
                        }
                        Err(e) => tracing::warn!(instance = %uuid, error = %e, "cannot revert the cut-off resize"),
                    }
                }
                let _ = self.conductor.migration_status(ctx, uuid, "error").await;
                let message = "The compute service restarted during the resize, which was reverted.";
                (settle(None, None), Some(message.to_string()))
            }
            T::ResizeReverting => {
                let old = match self.conductor.latest_migration(ctx, uuid).await {
                    Ok(Some(m)) => m.old_flavor,
                    _ => inst.flavor.clone(),
                };
                let power_on = inst.power_state == PowerState::Running;
                if driver_has_it {
                    if let Ok(spec) = self.spec_with(ctx, inst, Some(&old)).await {
                        if let Err(e) = self.driver.finish_revert_migration(&spec, power_on).await {
                            tracing::info!(instance = %uuid, error = %e, "the revert had already been done");
                        }
                    }
                }
                let _ = self.conductor.migration_status(ctx, uuid, "reverted").await;
                let vm = if power_on { VmState::Active } else { VmState::Stopped };
                (settle(Some(vm), Some(old)), None)
            }
            T::ResizeConfirming => {
                if driver_has_it {
                    let _ = self.driver.confirm_migration(uuid).await;
                }
                let _ = self.conductor.migration_status(ctx, uuid, "confirmed").await;
                let vm = if inst.power_state == PowerState::Running { VmState::Active } else { VmState::Stopped };
                (settle(Some(vm), None), None)
            }
            T::ImageSnapshot | T::ImageBackup | T::ImagePendingUpload | T::ImageUploading => {
                let _ = self.conductor.discard_snapshots(ctx, uuid).await;
                if let Err(e) = self.driver.discard_snapshot_files(uuid).await {
                    tracing::warn!(instance = %uuid, error = %e, "snapshot copy left behind");
                }
                if driver_has_it
                    && inst.vm_state == VmState::Active
                    && self.driver.power_state(uuid).await == PowerState::Paused
                {
                    let _ = self.driver.unpause(uuid).await;
                }
                let message = "The compute service restarted during the snapshot; its image was deleted.";
                (settle(None, None), Some(message.to_string()))
            }
            _ => return None,
        };
        tracing::warn!(instance = %uuid, task = %task, "{} interrupted by a compute restart", task);
        let settled = self.conductor.instance_update(ctx, uuid, &update).await.ok();
        let _ = self.conductor.action_finish(ctx, uuid, message.as_deref()).await;
        settled
    }
}
