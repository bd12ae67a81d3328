//! `delete`: through the instance's compute host when it is up, else nova's "local delete"
//! here, which releases the instance's volumes and ports and removes the row.

use super::{ComputeApi, ComputeError, Result};
use crate::api::context::Auth;
use crate::compute::states::{TaskState, VmState};
use crate::db::instances::{Instance, InstanceUpdate};

impl ComputeApi<'_> {
    pub async fn delete(&self, auth: &Auth, id: &str) -> Result<()> {
        let inst = self.get(auth, id)?;
        if inst.locked && !auth.is_admin() {
            return Err(ComputeError::Locked(id.to_string()));
        }
        // nova's `reclaim_instance_interval`: a launched server on a live host is only
        // powered off and kept (SOFT_DELETED); a soft-deleted one is deleted for good.
        if self.state.config.compute.reclaim_instance_interval > 0
            && inst.vm_state != VmState::SoftDeleted
            && inst.launched_at.is_some()
        {
            if let Some(host) = self.live_host(&inst)? {
                return self.soft_delete(auth, &inst, &host).await;
            }
        }
        self.delete_now(auth, &inst).await
    }

    /// Powers the server off and marks it SOFT_DELETED, through its compute host.
    async fn soft_delete(&self, auth: &Auth, inst: &Instance, host: &str) -> Result<()> {
        let id = &inst.uuid;
        let u = InstanceUpdate { task_state: Some(Some(TaskState::SoftDeleting)), ..Default::default() };
        let inst = self
            .update_with_action(auth, id, "delete", &u)?
            .map_err(|_| ComputeError::InstanceNotFound(id.to_string()))?;
        self.state
            .compute_api()
            .soft_delete_instance(&auth.context, host, &inst)
            .await
            .map_err(ComputeError::NotDelivered)
    }

    /// nova's `_delete_instance` (also `forceDelete`): through the host, else locally.
    pub(super) async fn delete_now(&self, auth: &Auth, inst: &Instance) -> Result<()> {
        let id = inst.uuid.as_str();
        if inst.locked && !auth.is_admin() {
            return Err(ComputeError::Locked(id.to_string()));
        }
        if inst.task_state == Some(TaskState::Deleting) {
            return Ok(());
        }
        let host = self.live_host(inst)?;
        let u = InstanceUpdate { task_state: Some(Some(TaskState::Deleting)), ..Default::default() };
        let inst = self
            .update_with_action(auth, id, "delete", &u)?
            .map_err(|_| ComputeError::InstanceNotFound(id.to_string()))?;
        match host {
            Some(h) => {
                if let Err(e) = self.state.compute_api().terminate_instance(&auth.context, &h, &inst).await {
                    tracing::warn!(instance = %id, error = %e, "terminate not delivered; deleting locally");
                    self.local_delete(auth, &inst)?;
                }
            }
            // Never scheduled, or its compute service is down: nova's "local delete".
            None => self.local_delete(auth, &inst)?,
        }
        Ok(())
    }

    fn local_delete(&self, auth: &Auth, inst: &Instance) -> Result<()> {
        let state = self.state;
        state.db.with(|db| crate::volumes::release_instance_volumes(db, &state.home, &inst.uuid)).map_err(|e| {
            tracing::error!(instance = %inst.uuid, error = %e, "volumes not released");
            ComputeError::VolumesNotReleased(e.to_string())
        })?;
        state.db.tx(|db| -> crate::db::Result<()> {
            crate::conductor::release_network(db, &inst.uuid)?;
            db.destroy_instance(&inst.uuid)?;
            db.finish_instance_action(&auth.context.request_id, &inst.uuid, None)
        })?;
        Ok(())
    }
}
