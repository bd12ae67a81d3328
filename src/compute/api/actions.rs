//! `action`: the server actions of `POST /servers/{id}/action`. An action that changes the
//! instance's state takes its row of the allowed-state table (`ServerAction::guard`) and sets
//! its task state in one conditional update, then casts to the instance's compute host.

use super::create::project_security_group;
use super::{Action, ComputeApi, ComputeError, Result};
use crate::api::context::Auth;
use crate::compute::states::{self, ServerAction, VmState};
use crate::db::instances::{Instance, InstanceUpdate, UpdateError};
use crate::db::network::SecurityGroup;
use crate::policy::{self, Target};

/// What an accepted action gives back.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Accepted; the work goes on on the compute host (202).
    Accepted,
    /// `os-getConsoleOutput`'s text.
    ConsoleOutput(String),
    /// `rebuild`: the instance as it now is (REBUILD) and the admin password to show.
    Rebuilt(Box<Instance>, String),
    /// `createImage` and `createBackup`: the new image's id.
    ImageCreated(String),
}

impl ComputeApi<'_> {
    pub async fn action(&self, auth: &Auth, id: &str, action: Action) -> Result<Outcome> {
        let inst = self.get(auth, id)?;
        let rpc = self.state.compute_api();
        let ctx = &auth.context;
        let name = action.name();
        match action {
            Action::Stop => {
                let (host, i) = self.begin(auth, &inst, name, ServerAction::Stop)?;
                rpc.stop_instance(ctx, &host, &i).await.map_err(ComputeError::NotDelivered)?;
            }
            Action::Start => {
                let (host, i) = self.begin(auth, &inst, name, ServerAction::Start)?;
                rpc.start_instance(ctx, &host, &i).await.map_err(ComputeError::NotDelivered)?;
            }
            Action::Reboot { hard } => {
                let guarded = if hard { ServerAction::RebootHard } else { ServerAction::Reboot };
                let (host, i) = self.begin(auth, &inst, name, guarded)?;
                rpc.reboot_instance(ctx, &host, &i, hard).await.map_err(ComputeError::NotDelivered)?;
            }
            Action::ConsoleOutput { length } => {
                let host = self.needs_host(&inst, name)?;
                let output = rpc.get_console_output(ctx, &host, &inst, length).await.map_err(|e| match e {
                    crate::bus::BusError::Remote { error, .. } => ComputeError::Conflict(error.message),
                    other => ComputeError::NotDelivered(other),
                })?;
                return Ok(Outcome::ConsoleOutput(output));
            }
            Action::AddSecurityGroup { name } => self.change_security_group(auth, &inst, &name, true).await?,
            Action::RemoveSecurityGroup { name } => self.change_security_group(auth, &inst, &name, false).await?,
            Action::Pause => {
                let (host, i) = self.begin(auth, &inst, name, ServerAction::Pause)?;
                rpc.pause_instance(ctx, &host, &i).await.map_err(ComputeError::NotDelivered)?;
            }
            Action::Unpause => {
                let (host, i) = self.begin(auth, &inst, name, ServerAction::Unpause)?;
                rpc.unpause_instance(ctx, &host, &i).await.map_err(ComputeError::NotDelivered)?;
            }
            Action::Suspend => {
                let (host, i) = self.begin(auth, &inst, name, ServerAction::Suspend)?;
                rpc.suspend_instance(ctx, &host, &i).await.map_err(ComputeError::NotDelivered)?;
            }
            Action::Resume => {
                let (host, i) = self.begin(auth, &inst, name, ServerAction::Resume)?;
                rpc.resume_instance(ctx, &host, &i).await.map_err(ComputeError::NotDelivered)?;
            }
            Action::TriggerCrashDump => {
                let (host, i) = self.begin(auth, &inst, name, ServerAction::TriggerCrashDump)?;
                rpc.trigger_crash_dump(ctx, &host, &i).await.map_err(ComputeError::NotDelivered)?;
            }
            Action::Restore => {
                let (host, i) = self.begin(auth, &inst, name, ServerAction::Restore)?;
                rpc.restore_instance(ctx, &host, &i).await.map_err(ComputeError::NotDelivered)?;
            }
            Action::ForceDelete => self.delete_now(auth, &inst).await?,
            Action::Lock { reason } => self.lock(auth, &inst, reason)?,
            Action::Unlock => self.unlock(auth, &inst)?,
            Action::ResetState { state } => self.reset_state(auth, &inst, state)?,
            Action::Rebuild(req) => {
                let (rebuilt, admin_pass) = self.rebuild(auth, &inst, &req).await?;
                return Ok(Outcome::Rebuilt(Box::new(rebuilt), admin_pass));
            }
            Action::Resize { flavor_ref } => self.resize(auth, &inst, &flavor_ref).await?,
            Action::ConfirmResize => self.finish_resize(auth, &inst, true).await?,
            Action::RevertResize => self.finish_resize(auth, &inst, false).await?,
            Action::CreateImage(req) => return Ok(Outcome::ImageCreated(self.create_image(auth, &inst, &req).await?)),
        }
        Ok(Outcome::Accepted)
    }

    /// The instance's live compute host, for an action only that host can do.
    fn needs_host(&self, inst: &Instance, action: &'static str) -> Result<String> {
        self.live_host(inst)?.ok_or_else(|| ComputeError::HostUnavailable { action, uuid: inst.uuid.clone() })
    }

    /// The host, then the task state of a guarded action (see [`ComputeApi::begin_action`]).
    fn begin(
        &self,
        auth: &Auth,
        inst: &Instance,
        name: &'static str,
        action: ServerAction,
    ) -> Result<(String, Instance)> {
        let host = self.needs_host(inst, name)?;
        Ok((host, self.begin_action(auth, inst, action)?))
    }

    /// Sets the task state of an action, refusing as nova does when the instance is not in a
    /// state that allows it (409). The check and the change are one conditional update, so two
    /// racing actions cannot both start.
    pub fn begin_action(&self, auth: &Auth, inst: &Instance, action: ServerAction) -> Result<Instance> {
        let states::Guard { name: action, vm_states, task } = action.guard();
        if inst.locked && !auth.is_admin() {
            return Err(ComputeError::Locked(inst.uuid.clone()));
        }
        let u = InstanceUpdate {
            task_state: Some(task),
            expected_task_state: Some(vec![None]),
            expected_vm_state: Some(vm_states.to_vec()),
            ..Default::default()
        };
        match self.update_with_action(auth, &inst.uuid, action, &u)? {
            Ok(i) => Ok(i),
            Err(UpdateError::NotFound) => Err(ComputeError::InstanceNotFound(inst.uuid.clone())),
            Err(UpdateError::UnexpectedState { vm_state, task_state }) => {
                Err(ComputeError::InvalidState { action, uuid: inst.uuid.clone(), vm_state, task_state })
            }
        }
    }

    /// Applies `u` and, when it applied, records the instance action `action` for the caller,
    /// in one transaction: every action and delete starts this way.
    pub(super) fn update_with_action(
        &self,
        auth: &Auth,
        uuid: &str,
        action: &str,
        u: &InstanceUpdate,
    ) -> Result<std::result::Result<Instance, UpdateError>> {
        Ok(self.state.db.tx(|db| -> crate::db::Result<_> {
            let r = db.update_instance(uuid, u)?;
            if r.is_ok() {
                db.start_instance_action(uuid, action, &auth.context.request_id, auth.user_id(), auth.project_id())?;
            }
            Ok(r)
        })?)
    }

    /// `lock`, as nova's: the owner locking a locked server changes nothing; otherwise the
    /// server is locked by its owner or by an admin, with the reason (2.73), and the action is
    /// recorded. Only the API is involved: a lock is a row, not something the guest sees.
    fn lock(&self, auth: &Auth, inst: &Instance, reason: Option<String>) -> Result<()> {
        let is_owner = inst.project_id == auth.project_id();
        if inst.locked && is_owner {
            return Ok(());
        }
        let u = InstanceUpdate {
            locked: Some(true),
            locked_by: Some(Some(if is_owner { "owner" } else { "admin" }.to_string())),
            // nova keeps an earlier reason when the new lock gives none.
            locked_reason: reason.map(Some),
            ..Default::default()
        };
        self.api_action(auth, inst, "lock", &u)
    }

    /// `unlock`: a lock taken by an admin is lifted by the owner only with nova's
    /// `unlock_override` policy (an admin's).
    fn unlock(&self, auth: &Auth, inst: &Instance) -> Result<()> {
        let expected = if inst.project_id == auth.project_id() { "owner" } else { "admin" };
        if inst.locked_by.as_deref().is_some_and(|by| by != expected) {
            let target = Target { project_id: Some(&inst.project_id), ..Target::default() };
            auth.authorize(policy::Action::ComputeLockOverride, &target)?;
        }
        let u = InstanceUpdate {
            locked: Some(false),
            locked_by: Some(None),
            locked_reason: Some(None),
            ..Default::default()
        };
        self.api_action(auth, inst, "unlock", &u)
    }

    /// `os-resetState` (admin): the vm_state forced, the task state cleared, whatever they
    /// were; recorded as nova records it (`reset_state`).
    fn reset_state(&self, auth: &Auth, inst: &Instance, state: VmState) -> Result<()> {
        let target = Target { project_id: Some(&inst.project_id), ..Target::default() };
        auth.authorize(policy::Action::ComputeResetState, &target)?;
        let u = InstanceUpdate { vm_state: Some(state), task_state: Some(None), ..Default::default() };
        self.api_action(auth, inst, "reset_state", &u)
    }

    /// An action done entirely in the API: the change and its instance action, started and
    /// finished, in one transaction.
    fn api_action(&self, auth: &Auth, inst: &Instance, action: &str, u: &InstanceUpdate) -> Result<()> {
        let ctx = &auth.context;
        let result = self.state.db.tx(|db| -> crate::db::Result<_> {
            let r = db.update_instance(&inst.uuid, u)?;
            if r.is_ok() {
                db.start_instance_action(&inst.uuid, action, &ctx.request_id, auth.user_id(), auth.project_id())?;
                db.finish_instance_action(&ctx.request_id, &inst.uuid, None)?;
            }
            Ok(r)
        })?;
        result.map(|_| ()).map_err(|_| ComputeError::InstanceNotFound(inst.uuid.clone()))
    }

    /// `addSecurityGroup` (`add`) and `removeSecurityGroup`, as nova proxies them to neutron:
    /// the group of the instance and of every port it has changes, and the compute hosts get
    /// the new filters at once.
    async fn change_security_group(&self, auth: &Auth, inst: &Instance, name: &str, add: bool) -> Result<()> {
        let group = self.named_group(inst, name)?;
        let db = &self.state.db;
        let ports = db.with(|db| db.instance_ports(&inst.uuid))?;
        // Groups apply through ports, as in nova with neutron: an instance without one, or with
        // port security off on one, cannot take a group.
        if add && (ports.is_empty() || ports.iter().any(|p| !p.port_security_enabled)) {
            return Err(ComputeError::Invalid(
                "Network requires port_security_enabled and subnet associated in order to apply security groups."
                    .into(),
            ));
        }
        let member = db.with(|db| db.instance_security_group_ids(&inst.uuid))?.contains(&group.id);
        match (add, member) {
            (true, true) => {
                return Err(ComputeError::Invalid(format!(
                    "Security group {} is already associated with the instance {}",
                    group.name, inst.uuid
                )))
            }
            (false, false) => {
                return Err(ComputeError::Invalid(format!(
                    "Security group {} not associated with the instance {}",
                    group.name, inst.uuid
                )))
            }
            _ => {}
        }
        db.with(|db| db.change_instance_security_group(&inst.uuid, &group.id, add))?;
        crate::conductor::network::push_security_groups(db, &self.state.compute_api(), &auth.context).await;
        Ok(())
    }

    /// The group `name` names, by name or id, among the instance's project's groups.
    fn named_group(&self, inst: &Instance, name: &str) -> Result<SecurityGroup> {
        let project = &inst.project_id;
        self.state
            .db
            .with(|db| project_security_group(db, project, name))?
            .ok_or_else(|| ComputeError::SecurityGroupNotFound { name: name.to_string(), project: project.to_string() })
    }
}
