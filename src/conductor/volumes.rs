//! The volume side of compute, done where the database is: the volumes a guest has (for a
//! build or a restart), boot volumes made from their image during a build's
//! block_device_mapping step, and the outcome of attaches and detaches that compute did.

use serde_json::Value;

use super::{db_error, Conductor};
use crate::bus::{RemoteError, RemoteErrorKind};
use crate::compute::virt::VolumeDisk;
use crate::db::volumes::{NewVolume, VolumeAttachment};
use crate::db::Db;
use crate::home::Home;
use crate::rpcapi::VolumeInFlight;
use crate::volumes::VolumeStatus;

/// The disks of an instance's attached volumes, as a driver plugs them in.
pub fn volume_disks(db: &Db, home: &Home, instance_uuid: &str) -> crate::db::Result<Vec<VolumeDisk>> {
    Ok(db
        .instance_volume_attachments(instance_uuid)?
        .into_iter()
        .filter(|a| a.status == VolumeStatus::InUse)
        .filter_map(|a| disk(home, a))
        .collect())
}

/// The disk a driver plugs in for one attachment; `None` when its file path is not one of ours.
fn disk(home: &Home, a: VolumeAttachment) -> Option<VolumeDisk> {
    let path = a.path.as_deref().and_then(|rel| crate::volumes::file_path(home, rel))?;
    Some(VolumeDisk {
        volume_id: a.volume_id,
        path: path.to_string_lossy().into_owned(),
        boot: a.boot_index == Some(0),
    })
}

/// The outcome of an attach or a detach that compute did.
pub(super) struct VolumeOutcome<'a> {
    pub volume_id: &'a str,
    pub instance_uuid: &'a str,
    /// `None` when it went through.
    pub error: Option<&'a str>,
    /// The request that asked for it: its `attach_volume` or `detach_volume` action ends here.
    pub request_id: &'a str,
}

impl Conductor {
    pub(super) fn instance_volumes(&self, uuid: &str) -> Result<Value, RemoteError> {
        let disks = self.db.with(|db| volume_disks(db, &self.home, uuid)).map_err(db_error)?;
        Ok(serde_json::to_value(disks).unwrap_or(Value::Null))
    }

    /// Nova's `_prep_block_device`: every mapping with destination volume gets its volume,
    /// made from the image when its source is one, attached to the instance.
    pub(super) async fn prepare_block_devices(&self, uuid: &str) -> Result<Value, RemoteError> {
        let failed = |m: String| RemoteError::new(RemoteErrorKind::VolumeNotCreated, m);
        let (inst, bdms) = self
            .db
            .with(|db| -> crate::db::Result<_> { Ok((db.instance_by_uuid(uuid, false)?, db.block_devices(uuid)?)) })
            .map_err(db_error)?;
        let inst = inst.ok_or_else(|| {
            RemoteError::new(RemoteErrorKind::InstanceNotFound, format!("Instance {uuid} could not be found."))
        })?;
        for b in bdms.iter().filter(|b| b.destination_type == "volume") {
            let boot_index = b.boot_index.unwrap_or(-1);
            let device = if boot_index == 0 {
                "/dev/vda".to_string()
            } else {
                format!("/dev/vd{}", (b'b' + boot_index.clamp(0, 20) as u8) as char)
            };
            let volume_id = match (&b.volume_id, b.source_type.as_str()) {
                (Some(id), _) => id.clone(),
                (None, "image") => {
                    let image_id = b.image_id.clone().or(inst.image_ref.clone()).unwrap_or_default();
                    let id = uuid::Uuid::new_v4().to_string();
                    let image = self
                        .db
                        .with(|db| -> crate::db::Result<_> {
                            db.insert_volume(&NewVolume {
                                id: id.clone(),
                                name: Some(String::new()),
                                description: None,
                                project_id: inst.project_id.clone(),
                                user_id: inst.user_id.clone(),
                                size: b.volume_size.unwrap_or(1).max(1),
                                source_image_id: Some(image_id.clone()),
                                availability_zone: self.config.host.availability_zone.clone(),
                                path: crate::volumes::file_name(&id),
                            })?;
                            db.set_mapping_volume(uuid, boot_index, &id, &device)?;
                            crate::images::data_meta(db, &self.home, &image_id)
                        })
                        .map_err(db_error)?;
                    crate::volumes::build(&self.db, &self.home, &id, image.as_ref())
                        .await
                        .map_err(|e| failed(format!("volume {id} could not be created from image {image_id}: {e}")))?;
                    id
                }
                (None, other) => return Err(failed(format!("a mapping of source {other} needs a volume id"))),
            };
            let attached = self
                .db
                .with(|db| -> crate::db::Result<bool> {
                    db.set_mapping_volume(uuid, boot_index, &volume_id, &device)?;
                    Ok(db.claim_volume(&volume_id, uuid)? && db.finish_volume_attachment(&volume_id, uuid)?)
                })
                .map_err(db_error)?;
            if !attached {
                return Err(failed(format!("volume {volume_id} is not available")));
            }
        }
        self.instance_volumes(uuid)
    }

    /// Attaches and detaches on a host that a restart cut off, for its compute to finish.
    pub(super) fn volumes_in_flight(&self, host: &str) -> Result<Value, RemoteError> {
        let list = self.db.with(|db| db.volumes_in_flight(host)).map_err(db_error)?;
        let work: Vec<VolumeInFlight> = list
            .into_iter()
            .filter_map(|att| {
                let (instance_uuid, status) = (att.instance_uuid.clone(), att.status);
                disk(&self.home, att).map(|disk| VolumeInFlight { instance_uuid, status, disk })
            })
            .collect();
        Ok(serde_json::to_value(work).unwrap_or(Value::Null))
    }

    /// Compute plugged the volume in (or could not: `error`).
    pub(super) fn volume_attach_done(&self, a: VolumeOutcome<'_>) -> Result<Value, RemoteError> {
        let attaching = Some(VolumeStatus::Attaching);
        // The outcome and its fault together, or neither.
        self.db
            .tx(|db| -> crate::db::Result<()> {
                match a.error {
                    None => {
                        db.finish_volume_attachment(a.volume_id, a.instance_uuid)?;
                    }
                    // Only an attach still pending fails: a second report of one that went
                    // through (a redelivered cast) must not take the volume from the guest.
                    Some(why) if db.release_volume_attachment_from(a.volume_id, a.instance_uuid, attaching)? => {
                        db.add_instance_fault(a.instance_uuid, 500, &format!("Volume attach failed: {why}"), "", None)?;
                    }
                    Some(why) => tracing::info!(volume = %a.volume_id, "late attach failure ignored: {why}"),
                }
                db.finish_instance_action(a.request_id, a.instance_uuid, a.error)
            })
            .map_err(db_error)?;
        Ok(Value::Null)
    }

    /// Compute unplugged the volume (or could not: it stays in-use).
    pub(super) fn volume_detach_done(&self, a: VolumeOutcome<'_>) -> Result<Value, RemoteError> {
        // The outcome and its fault together, or neither.
        self.db
            .tx(|db| -> crate::db::Result<()> {
                match a.error {
                    None => {
                        let detaching = Some(VolumeStatus::Detaching);
                        db.release_volume_attachment_from(a.volume_id, a.instance_uuid, detaching).map(|_| ())?
                    }
                    Some(why) => {
                        db.set_volume_status(a.volume_id, &[VolumeStatus::Detaching], VolumeStatus::InUse)?;
                        db.add_instance_fault(a.instance_uuid, 500, &format!("Volume detach failed: {why}"), "", None)?
                    }
                }
                db.finish_instance_action(a.request_id, a.instance_uuid, a.error)
            })
            .map_err(db_error)?;
        Ok(Value::Null)
    }
}
