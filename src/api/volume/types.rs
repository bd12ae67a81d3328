//! The one volume type (`__DEFAULT__`, which cinder creates on every deployment), the
//! availability zones and the extension list: what clients read to fill their forms.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::check_project;
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::AppState;

/// The name of cinder's default volume type, the only one novabox has.
pub const DEFAULT_TYPE_NAME: &str = "__DEFAULT__";

/// Its id. cinder draws one at install time; novabox has one type everywhere, so one id.
pub const DEFAULT_TYPE_ID: &str = "c3a3a5e4-4b5e-4e0b-9f5c-6f1b0a1d2e3f";

/// Whether `name_or_id` names the default type, as cinder looks a type up by either.
pub(super) fn is_default(name_or_id: &str) -> bool {
    name_or_id == DEFAULT_TYPE_NAME || name_or_id == DEFAULT_TYPE_ID
}

fn default_type(auth: &Auth) -> Value {
    let mut t = json!({
        "id": DEFAULT_TYPE_ID,
        "name": DEFAULT_TYPE_NAME,
        "description": "Default Volume Type",
        "is_public": true,
        "extra_specs": {},
        "os-volume-type-access:is_public": true,
    });
    // cinder shows the QoS link to admins only.
    if auth.is_admin() {
        t["qos_specs_id"] = Value::Null;
    }
    t
}

/// GET /v3/{project}/types.
pub async fn list(auth: Auth, Path(project_id): Path<String>) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    Ok(Json(json!({"volume_types": [default_type(&auth)]})))
}

/// GET /v3/{project}/types/{id}; `default` is the project's default type.
pub async fn show(auth: Auth, Path((project_id, id)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    if id != "default" && id != DEFAULT_TYPE_ID {
        return Err(ApiError::not_found(format!("Volume type {id} could not be found.")));
    }
    Ok(Json(json!({"volume_type": default_type(&auth)})))
}

/// GET /v3/{project}/os-availability-zone: this host's zone, where volumes are made.
pub async fn availability_zones(
    State(state): State<AppState>,
    auth: Auth,
    Path(project_id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    Ok(Json(json!({"availabilityZoneInfo": [
        {"zoneName": state.config.host.availability_zone, "zoneState": {"available": true}}
    ]})))
}

/// GET /v3/{project}/extensions: the cinder extensions whose resources or keys this service
/// serves, in cinder's words.
pub async fn extensions(auth: Auth, Path(project_id): Path<String>) -> ApiResult<Json<Value>> {
    check_project(&auth, &project_id)?;
    let ext = |name: &str, alias: &str, description: &str, updated: &str| json!({"name": name, "alias": alias, "description": description, "updated": updated, "links": []});
    Ok(Json(json!({"extensions": [
        ext("AvailabilityZones", "os-availability-zone", "Describe Availability Zones.", "2013-06-27T00:00:00+00:00"),
        ext("Quotas", "os-quota-sets", "Quota management support.", "2011-08-08T00:00:00+00:00"),
        ext("UsedLimits", "os-used-limits", "Provide data on limited resources that are being used.",
            "2013-10-03T00:00:00+00:00"),
        ext("VolumeTenantAttribute", "os-vol-tenant-attr", "Expose the internal project_id as an attribute of a volume.",
            "2011-11-03T00:00:00+00:00"),
        ext("VolumeHostAttribute", "os-vol-host-attr", "Expose host as an attribute of a volume.",
            "2011-11-03T00:00:00+00:00"),
        ext("VolumeMigStatusAttribute", "os-vol-mig-status-attr",
            "Expose migration_status as an attribute of a volume.", "2013-08-08T00:00:00+00:00"),
        ext("VolumeImageMetadata", "os-vol-image-meta", "Show image metadata associated with the volume.",
            "2012-12-07T00:00:00+00:00"),
        ext("VolumeTypeAccess", "os-volume-type-access", "Volume type access support.", "2014-06-26T00:00:00Z"),
    ]})))
}
