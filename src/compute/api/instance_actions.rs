//! `os-instance-actions`: the actions recorded on a server and the events of one, as nova's
//! `InstanceActionAPI` reads them. What a caller sees of the events is the view's business
//! (`src/api/compute/instance_actions.rs`); here only which server and which rows.

use super::{ComputeApi, ComputeError, Result};
use crate::api::context::Auth;
use crate::api::fault::ApiError;
use crate::db::instance_actions::{ActionEvent, ActionsQuery, InstanceAction};
use crate::db::instances::Instance;

impl ComputeApi<'_> {
    /// The server, deleted ones too when `read_deleted` (nova from 2.21).
    pub fn get_maybe_deleted(&self, auth: &Auth, id: &str, read_deleted: bool) -> Result<Instance> {
        match self.state.db.with(|db| db.instance_by_uuid(id, read_deleted))? {
            Some(i) if auth.owns(&i.project_id) => Ok(i),
            _ => Err(ComputeError::InstanceNotFound(id.to_string())),
        }
    }

    /// The actions of a server, newest first, within the query's window and page. A marker
    /// that names no action of this server is nova's 400.
    pub fn list_actions(
        &self,
        auth: &Auth,
        id: &str,
        read_deleted: bool,
        q: &ActionsQuery,
    ) -> Result<(Instance, Vec<InstanceAction>)> {
        let inst = self.get_maybe_deleted(auth, id, read_deleted)?;
        match self.state.db.with(|db| db.list_instance_actions(&inst.uuid, q)) {
            Ok(list) => Ok((inst, list)),
            Err(crate::db::DbError::MarkerNotFound(m)) => {
                Err(ComputeError::Refused(ApiError::bad_request(format!("Marker {m} could not be found."))))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One action, by the request that took it, with its events (newest first).
    pub fn action_with_events(
        &self,
        auth: &Auth,
        id: &str,
        request_id: &str,
        read_deleted: bool,
    ) -> Result<(Instance, InstanceAction, Vec<ActionEvent>)> {
        let inst = self.get_maybe_deleted(auth, id, read_deleted)?;
        let found = self.state.db.with(|db| -> crate::db::Result<_> {
            let Some(action) = db.instance_action(&inst.uuid, request_id)? else { return Ok(None) };
            let events = db.action_events(action.id)?;
            Ok(Some((action, events)))
        })?;
        let (action, events) = found
            .ok_or_else(|| ComputeError::Refused(ApiError::not_found(format!("Action {request_id} not found"))))?;
        Ok((inst, action, events))
    }
}
