//! `os-volume_attachments`: nova's attach and detach of volumes. The API reserves the volume
//! (`attaching` / `detaching`) and records the mapping, then casts to the server's compute
//! host, which plugs the disk in and reports back through the conductor, as nova does.
//! Shapes up to 2.79: `tag` from 2.70 in answers (accepted from 2.49), `delete_on_termination`
//! from 2.79.

use crate::compute::states::VmState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use super::microversion::Microversion;
use super::servers::{compute_up_host, find};
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::AppState;
use crate::compute::virt::VolumeDisk;
use crate::db::instances::Instance;
use crate::db::volumes::{NewAttachment, VolumeAttachment};
use crate::volumes::VolumeStatus;

fn view(a: &VolumeAttachment, v: Microversion) -> Value {
    let mut out = json!({
        "id": a.volume_id,
        "volumeId": a.volume_id,
        "serverId": a.instance_uuid,
        "device": a.device,
    });
    if v.at_least(70) {
        out["tag"] = json!(a.tag);
    }
    if v.at_least(79) {
        out["delete_on_termination"] = json!(a.delete_on_termination);
    }
    out
}

/// The instance must be settled (no task) in a state nova attaches in, on a live host.
fn ready_host(state: &AppState, inst: &Instance, action: &str) -> ApiResult<String> {
    let settled =
        inst.task_state.is_none() && matches!(inst.vm_state, VmState::Active | VmState::Stopped | VmState::Paused);
    if !settled {
        let at = match &inst.task_state {
            Some(t) => format!("task_state {t}"),
            None => format!("vm_state {}", inst.vm_state),
        };
        return Err(ApiError::conflict(format!("Cannot '{action}' instance {} while it is in {at}", inst.uuid)));
    }
    match compute_up_host(state, inst)? {
        Some(h) => Ok(h),
        None => Err(ApiError::conflict(format!(
            "Cannot '{action}' instance {}: its compute service is down; start it (novabox up) and retry.",
            inst.uuid
        ))),
    }
}

pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let inst = find(&state, &auth, &id)?;
    let list = state.db.with(|db| db.instance_volume_attachments(&inst.uuid))?;
    Ok(Json(json!({"volumeAttachments": list.iter().map(|a| view(a, v)).collect::<Vec<_>>()})))
}

pub async fn show(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path((id, volume_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let inst = find(&state, &auth, &id)?;
    let a = attachment(&state, &inst, &volume_id)?;
    Ok(Json(json!({"volumeAttachment": view(&a, v)})))
}

/// The attachment of `volume_id` to the instance, or nova's 404.
fn attachment(state: &AppState, inst: &Instance, volume_id: &str) -> ApiResult<VolumeAttachment> {
    let list = state.db.with(|db| db.instance_volume_attachments(&inst.uuid))?;
    list.into_iter()
        .find(|a| a.volume_id == volume_id)
        .ok_or_else(|| ApiError::not_found(format!("volume_id not found: {volume_id}")))
}

/// The next free `/dev/vdX` after the root disk, as nova's device name guess.
fn next_device(used: &[String]) -> String {
    (b'b'..=b'z')
        .map(|c| format!("/dev/vd{}", c as char))
        .find(|d| !used.contains(d))
        .unwrap_or_else(|| "/dev/vdz".into())
}

#[tracing::instrument(name = "attach_volume", skip_all, fields(instance = %id))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let (body, _) = super::parse_body::<Value>(body)?;
    let o: Map<String, Value> = match body.get("volumeAttachment") {
        Some(Value::Object(o)) => o.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute volumeAttachment: it is required and must be an object.",
            ))
        }
    };
    let mut allowed = vec!["volumeId", "device"];
    if v.at_least(49) {
        allowed.push("tag");
    }
    if v.at_least(79) {
        allowed.push("delete_on_termination");
    }
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute volumeAttachment. Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    let volume_id = match o.get("volumeId") {
        Some(Value::String(s)) if uuid::Uuid::parse_str(s).is_ok() => s.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute volumeId. Value: {other}. It is not a uuid."
            )))
        }
        None => {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute volumeId: 'volumeId' is a required property",
            ))
        }
    };
    let device = match o.get("device") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.starts_with("/dev/") && s.len() <= 20 && !s.contains(',') => Some(s.clone()),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute device. Value: {other}. Give a path like /dev/vdb or null."
            )))
        }
    };
    let tag = match o.get("tag") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 60 && !s.contains(['/', ',']) => Some(s.clone()),
        Some(other) => {
            return Err(ApiError::bad_request(format!("Invalid input for field/attribute tag. Value: {other}.")))
        }
    };
    let delete_on_termination =
        super::validation::boolean("delete_on_termination", o.get("delete_on_termination"))?.unwrap_or(false);

    let inst = find(&state, &auth, &id)?;
    let host = ready_host(&state, &inst, "attach_volume")?;
    let attachment = state.db.tx(|db| -> ApiResult<VolumeAttachment> {
        let volume = db
            .volume(&volume_id)?
            .filter(|vol| vol.project_id == inst.project_id)
            .ok_or_else(|| ApiError::not_found(format!("Volume {volume_id} could not be found.")))?;
        if volume.instance_uuid.as_deref() == Some(inst.uuid.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Invalid volume: volume {volume_id} is already attached to the instances: {}",
                inst.uuid
            )));
        }
        let used = db.instance_device_names(&inst.uuid)?;
        let device = match device {
            Some(d) if used.contains(&d) || d == "/dev/vda" => {
                return Err(ApiError::bad_request(format!("The supplied device path ({d}) is in use.")))
            }
            Some(d) => d,
            None => next_device(&used),
        };
        let new = NewAttachment {
            volume_id: volume_id.clone(),
            instance_uuid: inst.uuid.clone(),
            device: device.clone(),
            tag: tag.clone(),
            delete_on_termination,
        };
        if !db.reserve_volume_attachment(&new)? {
            return Err(ApiError::bad_request(format!(
                "Invalid volume: volume '{volume_id}' status must be 'available'. Currently in '{}'",
                volume.status
            )));
        }
        // nova records the attach as an instance action; compute's report ends it.
        db.start_instance_action(
            &inst.uuid,
            "attach_volume",
            &auth.context.request_id,
            auth.user_id(),
            auth.project_id(),
        )?;
        Ok(VolumeAttachment {
            volume_id: volume_id.clone(),
            instance_uuid: inst.uuid.clone(),
            device: Some(device),
            tag: tag.clone(),
            delete_on_termination,
            boot_index: None,
            status: VolumeStatus::Attaching,
            path: volume.path.clone(),
        })
    })?;
    let path = attachment
        .path
        .as_deref()
        .and_then(|rel| crate::volumes::file_path(&state.home, rel))
        .ok_or_else(|| ApiError::internal(format!("volume {volume_id} has no file")))?;
    let disk = VolumeDisk { volume_id: volume_id.clone(), path: path.to_string_lossy().into_owned(), boot: false };
    if let Err(e) = state.compute_api().attach_volume(&auth.context, &host, &inst, &disk).await {
        tracing::warn!(volume = %volume_id, error = %e, "attach not delivered");
        state.db.tx(|db| -> crate::db::Result<()> {
            db.release_volume_attachment(&volume_id, &inst.uuid)?;
            db.finish_instance_action(&auth.context.request_id, &inst.uuid, Some(&format!("not delivered: {e}")))
        })?;
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("The compute service did not take the request: {e}"),
        ));
    }
    Ok(Json(json!({"volumeAttachment": view(&attachment, v)})))
}

#[tracing::instrument(name = "detach_volume", skip_all, fields(instance = %id, volume = %volume_id))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, volume_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let inst = find(&state, &auth, &id)?;
    let a = attachment(&state, &inst, &volume_id)?;
    if a.boot_index == Some(0) {
        return Err(ApiError::bad_request("Cannot detach a root device volume"));
    }
    let host = ready_host(&state, &inst, "detach_volume")?;
    let detaching = state.db.tx(|db| -> crate::db::Result<bool> {
        let moved = db.set_volume_status(&volume_id, VolumeStatus::DETACHABLE, VolumeStatus::Detaching)?;
        if moved {
            let ctx = &auth.context;
            db.start_instance_action(&inst.uuid, "detach_volume", &ctx.request_id, auth.user_id(), auth.project_id())?;
        }
        Ok(moved)
    })?;
    if !detaching {
        return Err(ApiError::bad_request(format!(
            "Invalid volume: Unable to detach volume. Volume status must be 'in-use' and attach_status must be \
             'attached' to detach; it is '{}'.",
            a.status
        )));
    }
    if let Err(e) = state.compute_api().detach_volume(&auth.context, &host, &inst, &volume_id).await {
        tracing::warn!(error = %e, "detach not delivered");
        state.db.tx(|db| -> crate::db::Result<()> {
            db.set_volume_status(&volume_id, &[VolumeStatus::Detaching], VolumeStatus::InUse)?;
            db.finish_instance_action(&auth.context.request_id, &inst.uuid, Some(&format!("not delivered: {e}")))
        })?;
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("The compute service did not take the request: {e}"),
        ));
    }
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests {
    #[test]
    fn device_names_skip_used_ones() {
        assert_eq!(super::next_device(&[]), "/dev/vdb");
        assert_eq!(super::next_device(&["/dev/vdb".into(), "/dev/vdc".into()]), "/dev/vdd");
    }
}
