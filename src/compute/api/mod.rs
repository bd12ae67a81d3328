//! The compute API, nova's `compute/api.py`: what a server request means, apart from HTTP.
//! The handlers in `src/api/compute/servers.rs` extract a typed request (`requests.rs`), call
//! an operation here and render what it returns; the checks against the database, the quota,
//! the writes and the casts to the scheduler and the compute hosts happen here. Every
//! operation fails with a [`ComputeError`], which becomes nova's status and text in one place.

use axum::http::StatusCode;

use crate::api::context::Auth;
use crate::api::fault::ApiError;
use crate::api::AppState;
use crate::bus::BusError;
use crate::compute::states::{self, TaskState, VmState};
use crate::db::instances::{Fault, Instance, InstanceUpdate};
use crate::db::services::{is_up, Service};
use crate::db::{Db, DbError};

mod actions;
mod create;
mod delete;
mod instance_actions;
mod lifecycle;
pub mod requests;
mod server_meta;

pub use actions::Outcome;
pub(crate) use create::bootable_image;
pub use requests::{Action, CreateRequest, UpdateRequest};
pub use server_meta::{tag_error, tag_list, MetadataChange, MAX_TAGS};

pub type Result<T> = std::result::Result<T, ComputeError>;

/// Why a server operation was refused or failed. Each variant is one of nova's answers; the
/// status and text it gets on the wire are in `From<ComputeError> for ApiError`.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("Instance {0} could not be found.")]
    InstanceNotFound(String),
    #[error("Instance {0} is locked")]
    Locked(String),
    /// nova's `InstanceInvalidState`, from the allowed-state table (`ServerAction::guard`).
    #[error("{}", states::invalid_state_message(.action, .uuid, *.vm_state, *.task_state))]
    InvalidState { action: &'static str, uuid: String, vm_state: VmState, task_state: Option<TaskState> },
    /// The action needs the instance's compute service, which is down (or the instance has
    /// no host yet).
    #[error("Cannot '{action}' instance {uuid}: its compute service is not available")]
    HostUnavailable { action: &'static str, uuid: String },
    #[error("There is no such action: {0}")]
    NoSuchAction(String),
    #[error("Security group {name} not found for project {project}.")]
    SecurityGroupNotFound { name: String, project: String },
    /// The body or what it names breaks one of nova's rules (400).
    #[error("{0}")]
    Invalid(String),
    /// A resource the request names is in a state that forbids it (409).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("The compute service did not take the request: {0}")]
    NotDelivered(BusError),
    #[error("The build request could not be sent to the scheduler: {0}")]
    SchedulerUnreachable(BusError),
    #[error("The server's volumes could not be released: {0}")]
    VolumesNotReleased(String),
    #[error(transparent)]
    Db(#[from] DbError),
    /// A rule shared with the rest of the compute HTTP API (`api/compute/validation.rs`, the
    /// flavor checks) refused, already in nova's words.
    #[error("{}", .0.message)]
    Refused(ApiError),
}

impl From<ApiError> for ComputeError {
    fn from(e: ApiError) -> ComputeError {
        ComputeError::Refused(e)
    }
}

impl From<ComputeError> for ApiError {
    fn from(e: ComputeError) -> ApiError {
        use ComputeError as E;
        let status = match &e {
            E::Db(_) | E::Refused(_) => None,
            E::InstanceNotFound(_) | E::SecurityGroupNotFound { .. } => Some(StatusCode::NOT_FOUND),
            E::Locked(_) | E::InvalidState { .. } | E::HostUnavailable { .. } | E::Conflict(_) => {
                Some(StatusCode::CONFLICT)
            }
            E::NoSuchAction(_) | E::Invalid(_) => Some(StatusCode::BAD_REQUEST),
            E::QuotaExceeded(_) => Some(StatusCode::FORBIDDEN),
            E::NotDelivered(_) | E::SchedulerUnreachable(_) => Some(StatusCode::SERVICE_UNAVAILABLE),
            E::VolumesNotReleased(_) => Some(StatusCode::INTERNAL_SERVER_ERROR),
        };
        match status {
            Some(status) => ApiError::new(status, e.to_string()),
            None => e.into_shared(),
        }
    }
}

impl ComputeError {
    /// The errors whose status and text are decided elsewhere: the database's and the shared
    /// validation's.
    fn into_shared(self) -> ApiError {
        match self {
            ComputeError::Db(db) => ApiError::from(db),
            ComputeError::Refused(api) => api,
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// Everything the server view needs besides the instance row.
pub struct ViewData {
    pub addresses: serde_json::Value,
    pub security_groups: Vec<String>,
    pub fault: Option<Fault>,
    pub host_up: Option<bool>,
    pub volumes: Vec<String>,
    /// The server's tags (2.26).
    pub tags: Vec<String>,
}

/// True when the compute service of `host` is among `services` and alive.
fn compute_up(state: &AppState, services: &[Service], host: &str) -> bool {
    services.iter().any(|s| {
        s.host == host && s.binary == crate::compute::BINARY && is_up(s, state.config.compute.service_down_secs)
    })
}

/// `services` is read once by the caller, not once per server of a listing.
pub fn view_data(state: &AppState, db: &Db, services: &[Service], inst: &Instance) -> crate::db::Result<ViewData> {
    let host_up = inst.host.as_deref().map(|h| compute_up(state, services, h));
    let volumes = db
        .block_devices(&inst.uuid)?
        .into_iter()
        .filter(|b| b.destination_type == "volume")
        .filter_map(|b| b.volume_id)
        .collect();
    Ok(ViewData {
        addresses: crate::conductor::addresses(db, &inst.uuid)?,
        security_groups: db.instance_security_group_names(&inst.uuid)?,
        fault: if matches!(inst.vm_state, VmState::Error | VmState::Deleted) {
            db.latest_instance_fault(&inst.uuid)?
        } else {
            None
        },
        host_up,
        volumes,
        tags: db.instance_tags(&inst.uuid)?,
    })
}

/// nova's `compute.api.API` for one request: the operations on servers.
pub struct ComputeApi<'a> {
    state: &'a AppState,
}

impl<'a> ComputeApi<'a> {
    pub fn new(state: &'a AppState) -> ComputeApi<'a> {
        ComputeApi { state }
    }

    /// The instance, when the caller may see it. Another project's server is "not found".
    pub fn get(&self, auth: &Auth, id: &str) -> Result<Instance> {
        match self.state.db.with(|db| db.instance_by_uuid(id, false))? {
            Some(i) if auth.owns(&i.project_id) => Ok(i),
            _ => Err(ComputeError::InstanceNotFound(id.to_string())),
        }
    }

    /// What the server view shows besides the row.
    pub fn view(&self, inst: &Instance) -> Result<ViewData> {
        Ok(self.state.db.with(|db| view_data(self.state, db, &db.services()?, inst))?)
    }

    /// The instance and its view, for `GET /servers/{id}`.
    pub fn show(&self, auth: &Auth, id: &str) -> Result<(Instance, ViewData)> {
        let inst = self.get(auth, id)?;
        let data = self.view(&inst)?;
        Ok((inst, data))
    }

    /// The addresses of a server by network, as the server view shows them.
    pub fn addresses(&self, auth: &Auth, id: &str) -> Result<serde_json::Value> {
        let inst = self.get(auth, id)?;
        Ok(self.state.db.with(|db| crate::conductor::addresses(db, &inst.uuid))?)
    }

    /// Renames a server or changes its description or access addresses.
    pub fn update(&self, auth: &Auth, id: &str, req: &UpdateRequest) -> Result<(Instance, ViewData)> {
        self.get(auth, id)?;
        let update = InstanceUpdate {
            display_name: req.name.clone(),
            display_description: req.description.clone(),
            access_ip_v4: req.access_ip_v4.clone(),
            access_ip_v6: req.access_ip_v6.clone(),
            auto_disk_config: req.auto_disk_config,
            ..Default::default()
        };
        let inst = self
            .state
            .db
            .with(|db| db.update_instance(id, &update))?
            .map_err(|_| ComputeError::InstanceNotFound(id.to_string()))?;
        let data = self.view(&inst)?;
        Ok((inst, data))
    }

    /// The compute host of an instance when its service is alive; None means "handle it here".
    pub fn live_host(&self, inst: &Instance) -> Result<Option<String>> {
        let Some(host) = inst.host.clone() else { return Ok(None) };
        let services = self.state.db.with(|db| db.services())?;
        Ok(compute_up(self.state, &services, &host).then_some(host))
    }
}

#[cfg(test)]
mod tests;
