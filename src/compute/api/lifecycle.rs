//! Issue 16's long actions as nova's `compute/api.py` starts them: `rebuild`, `resize` with
//! `confirmResize` and `revertResize`, and `createImage`/`createBackup`. Each checks what the
//! body names, then sets the task state (the allowed-state table's row), records the instance
//! action and writes what the action changes in one transaction, then casts to the host.

use std::collections::BTreeMap;

use super::create::bootable_image;
use super::requests::invalid;
use super::requests::lifecycle::{ImageRequest, Rebuild};
use super::{ComputeApi, ComputeError, Result};
use crate::api::compute::validation;
use crate::api::context::Auth;
use crate::compute::states::{self, ServerAction};
use crate::db::images::NewImage;
use crate::db::instances::{FlavorSnapshot, Instance, InstanceUpdate, UpdateError};
use crate::db::lifecycle::RebuildRow;
use crate::db::Db;
use crate::rpcapi::BackupRotation;

/// Image properties a snapshot never takes from its base image (nova's default
/// `non_inheritable_image_properties`, and what the snapshot sets itself).
const NOT_INHERITED: &[&str] = &[
    "cache_in_nova",
    "bittorrent",
    "img_signature_hash_method",
    "img_signature",
    "img_signature_key_type",
    "img_signature_certificate_uuid",
    "image_type",
    "instance_uuid",
    "base_image_ref",
    "backup_type",
    "owner_project_name",
    "owner_user_name",
    "user_id",
];

impl ComputeApi<'_> {
    /// `rebuild`: the instance keeps its id, ports, addresses and volumes; its image, name,
    /// metadata, key and user data change as asked. Returns the instance (REBUILD) and the
    /// admin password the response shows.
    pub(super) async fn rebuild(&self, auth: &Auth, inst: &Instance, req: &Rebuild) -> Result<(Instance, String)> {
        let host = self.needs_host_for(inst, "rebuild")?;
        let home = &self.state.home;
        let rebuilt = self.state.db.tx(|db| -> Result<Instance> {
            let image = bootable_image(db, &req.image_ref, auth.project_id(), auth.is_admin())?;
            if volume_backed(db, &inst.uuid)? && inst.image_ref.as_deref() != Some(req.image_ref.as_str()) {
                return Err(invalid("Unable to rebuild with a different image for a volume-backed server."));
            }
            let f = &inst.flavor;
            if f.root_gb > 0
                && (image.size.unwrap_or(0) > f.root_gb.saturating_mul(1 << 30) || image.min_disk > f.root_gb)
            {
                return Err(invalid("Flavor's disk is too small for requested image."));
            }
            if image.min_ram > f.memory_mb {
                return Err(invalid("Flavor's memory is too small for requested image."));
            }
            let meta = validation::boot_image_meta(db, home, &image.id, auth)?;
            let key = match &req.key_name {
                None => None,
                Some(None) => Some((None, None)),
                Some(Some(name)) => {
                    let k = db
                        .keypair(&inst.user_id, name)?
                        .ok_or_else(|| invalid(format!("Keypair {name} not found for user {}", inst.user_id)))?;
                    Some((Some(name.clone()), Some(k.public_key)))
                }
            };
            if let Some(m) = &req.metadata {
                let limit = db.quota_limits(&inst.project_id)?.get("metadata_items").copied().unwrap_or(-1);
                validation::metadata_quota(m.len(), limit)?;
            }
            guarded(db, auth, inst, ServerAction::Rebuild, "rebuild")?;
            let row = RebuildRow {
                image_ref: image.id.clone(),
                kernel_id: meta.as_ref().and_then(|m| m.kernel.as_ref()).map(|k| k.id.clone()),
                ramdisk_id: meta.as_ref().and_then(|m| m.ramdisk.as_ref()).map(|r| r.id.clone()),
                display_name: req.name.clone(),
                display_description: req.description.clone(),
                access_ip_v4: req.access_ip_v4.clone(),
                access_ip_v6: req.access_ip_v6.clone(),
                key,
                user_data: req.user_data.clone(),
                metadata: req.metadata.clone(),
            };
            db.rebuild_instance_row(&inst.uuid, &row)?;
            db.instance_by_uuid(&inst.uuid, false)?.ok_or_else(|| ComputeError::InstanceNotFound(inst.uuid.clone()))
        })?;
        self.state
            .compute_api()
            .rebuild_instance(&auth.context, &host, &rebuilt, req.preserve_ephemeral)
            .await
            .map_err(ComputeError::NotDelivered)?;
        let admin_pass = req.admin_pass.clone().unwrap_or_else(|| crate::secrets::random_token(12));
        Ok((rebuilt, admin_pass))
    }

    /// `resize` to the flavor `flavor_ref` on this (the only) host, as nova's with
    /// `allow_resize_to_same_host`: the flavor must change, the project's quota must hold the
    /// growth in cores and RAM, and a resize is recorded as nova's migration.
    pub(super) async fn resize(&self, auth: &Auth, inst: &Instance, flavor_ref: &str) -> Result<()> {
        let host = self.needs_host_for(inst, "resize")?;
        let (resizing, migration) = self.state.db.tx(|db| -> Result<_> {
            let flavor = crate::api::compute::flavors::visible_flavor(db, auth, flavor_ref)?
                .ok_or_else(|| invalid("Unable to locate requested flavor."))?;
            let old = &inst.flavor;
            if flavor.flavorid == old.flavorid {
                return Err(invalid("When resizing, instances must change flavor!"));
            }
            if flavor.root_gb == 0 && old.root_gb != 0 && !volume_backed(db, &inst.uuid)? {
                return Err(invalid(
                    "Server disk was unable to be resized because: Resize to zero disk flavor is not allowed.",
                ));
            }
            let new = FlavorSnapshot {
                flavorid: flavor.flavorid.clone(),
                name: flavor.name.clone(),
                memory_mb: flavor.memory_mb,
                vcpus: flavor.vcpus,
                root_gb: flavor.root_gb,
                ephemeral_gb: flavor.ephemeral_gb,
                swap: flavor.swap,
                extra_specs: db.flavor_extra_specs(flavor.id)?,
            };
            // nova counts only the growth of an upsize against the quota.
            let (_, used_cores, used_ram) = db.project_usage(&inst.project_id)?;
            let limits = db.quota_limits(&inst.project_id)?;
            for (resource, used, delta) in
                [("cores", used_cores, new.vcpus - old.vcpus), ("ram", used_ram, new.memory_mb - old.memory_mb)]
            {
                let limit = limits.get(resource).copied().unwrap_or(-1);
                if delta > 0 && limit >= 0 && used.saturating_add(delta) > limit {
                    return Err(ComputeError::QuotaExceeded(format!(
                        "Quota exceeded for {resource}: Requested {delta}, but already used {used} of {limit} {resource}"
                    )));
                }
            }
            let i = guarded(db, auth, inst, ServerAction::Resize, "resize")?;
            let migration = db.create_migration(&inst.uuid, &host, old, &new)?;
            Ok((i, migration))
        })?;
        self.state
            .compute_api()
            .resize_instance(&auth.context, &host, &resizing, &migration)
            .await
            .map_err(ComputeError::NotDelivered)
    }

    /// `confirmResize` and `revertResize` of a server in VERIFY_RESIZE.
    pub(super) async fn finish_resize(&self, auth: &Auth, inst: &Instance, confirm: bool) -> Result<()> {
        let (name, action, status) = if confirm {
            ("confirmResize", ServerAction::ConfirmResize, "confirming")
        } else {
            ("revertResize", ServerAction::RevertResize, "reverting")
        };
        let host = self.needs_host_for(inst, name)?;
        let (i, migration) = self.state.db.tx(|db| -> Result<_> {
            let i = guarded(db, auth, inst, action, name)?;
            let migration = db
                .latest_migration(&inst.uuid)?
                .filter(|m| m.status == "finished")
                .ok_or_else(|| invalid("Instance has not been resized."))?;
            db.set_migration_status(&inst.uuid, status)?;
            Ok((i, migration))
        })?;
        let rpc = self.state.compute_api();
        let sent = if confirm {
            rpc.confirm_resize(&auth.context, &host, &i).await
        } else {
            rpc.revert_resize(&auth.context, &host, &i, &migration).await
        };
        sent.map_err(ComputeError::NotDelivered)
    }

    /// `createImage` and `createBackup`: a queued image with nova's snapshot properties, then
    /// the cast that fills it. Returns the image's id.
    pub(super) async fn create_image(&self, auth: &Auth, inst: &Instance, req: &ImageRequest) -> Result<String> {
        let (name, action) = match req.backup {
            None => ("createImage", ServerAction::CreateImage),
            Some(_) => ("createBackup", ServerAction::CreateBackup),
        };
        let host = self.needs_host_for(inst, name)?;
        let (snapshotting, image_id) = self.state.db.tx(|db| -> Result<_> {
            if volume_backed(db, &inst.uuid)? {
                return Err(ComputeError::Conflict(format!(
                    "Cannot '{name}' instance {}: snapshots of servers booted from volume are not supported by novabox yet",
                    inst.uuid
                )));
            }
            let limit = db.quota_limits(&inst.project_id)?.get("metadata_items").copied().unwrap_or(-1);
            // The base image's properties are inherited while it lives (nova keeps them in the
            // instance's system metadata; novabox reads the image, so a deleted base gives none).
            let base = match inst.image_ref.as_deref() {
                Some(id) if !id.is_empty() => match db.image_by_id(id)? {
                    Some(live) => Some(live),
                    None => db.image_row_including_deleted(id)?,
                },
                _ => None,
            };
            let mut properties: BTreeMap<String, String> = base
                .as_ref()
                .map(|b| b.properties.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| !NOT_INHERITED.contains(&k.as_str()) && !k.starts_with("os_glance"))
                .collect();
            properties.insert("image_type".into(), if req.backup.is_some() { "backup" } else { "snapshot" }.into());
            properties.insert("instance_uuid".into(), inst.uuid.clone());
            properties.insert("user_id".into(), auth.user_id().to_string());
            properties.insert("base_image_ref".into(), inst.image_ref.clone().unwrap_or_default());
            properties.insert("owner_project_name".into(), auth.project_name.clone());
            properties.insert("owner_user_name".into(), auth.user_name.clone());
            if let Some(b) = &req.backup {
                properties.insert("backup_type".into(), b.backup_type.clone());
            }
            validation::metadata_quota(req.metadata.len(), limit)?;
            properties.extend(req.metadata.clone());
            let i = guarded(db, auth, inst, action, name)?;
            let image = db.create_image(&NewImage {
                id: None,
                name: Some(req.name.clone()),
                owner: Some(inst.project_id.clone()),
                visibility: "private".into(),
                protected: false,
                disk_format: base.as_ref().and_then(|b| b.disk_format.clone()),
                container_format: Some("bare".into()),
                min_disk: base.as_ref().map_or(0, |b| b.min_disk).max(inst.flavor.root_gb),
                min_ram: base.as_ref().map_or(0, |b| b.min_ram),
                properties,
                tags: Default::default(),
            })?;
            Ok((i, image.id))
        })?;
        let rotation = req.backup.as_ref().map(|b| BackupRotation {
            instance_uuid: inst.uuid.clone(),
            backup_type: b.backup_type.clone(),
            rotation: b.rotation,
        });
        let sent = self
            .state
            .compute_api()
            .snapshot_instance(&auth.context, &host, &snapshotting, &image_id, rotation.as_ref())
            .await;
        if let Err(e) = sent {
            // Nothing will fill the image: it goes, and the server is left as it was.
            let db = &self.state.db;
            let _ = db.with(|db| db.delete_image(&image_id));
            let u = InstanceUpdate { task_state: Some(None), ..Default::default() };
            let _ = db.with(|db| db.update_instance(&inst.uuid, &u));
            return Err(ComputeError::NotDelivered(e));
        }
        Ok(image_id)
    }

    fn needs_host_for(&self, inst: &Instance, action: &'static str) -> Result<String> {
        self.live_host(inst)?.ok_or_else(|| ComputeError::HostUnavailable { action, uuid: inst.uuid.clone() })
    }
}

/// True when the instance boots from a volume (nova's `is_volume_backed_instance`).
fn volume_backed(db: &Db, uuid: &str) -> crate::db::Result<bool> {
    Ok(db.block_devices(uuid)?.iter().any(|b| b.destination_type == "volume" && b.boot_index == Some(0)))
}

/// The allowed-state check and the task state of `action`, with its instance action, on the
/// transaction's `db` (see `ComputeApi::begin_action`, which does the same in a transaction of
/// its own).
fn guarded(db: &Db, auth: &Auth, inst: &Instance, action: ServerAction, name: &'static str) -> Result<Instance> {
    let states::Guard { vm_states, task, .. } = action.guard();
    if inst.locked && !auth.is_admin() {
        return Err(ComputeError::Locked(inst.uuid.clone()));
    }
    let u = InstanceUpdate {
        task_state: Some(task),
        expected_task_state: Some(vec![None]),
        expected_vm_state: Some(vm_states.to_vec()),
        ..Default::default()
    };
    match db.update_instance(&inst.uuid, &u)? {
        Ok(i) => {
            let ctx = &auth.context;
            // nova's instance action names (`instance_actions.py`) are the 409's names.
            db.start_instance_action(&inst.uuid, name, &ctx.request_id, auth.user_id(), auth.project_id())?;
            Ok(i)
        }
        Err(UpdateError::NotFound) => Err(ComputeError::InstanceNotFound(inst.uuid.clone())),
        Err(UpdateError::UnexpectedState { vm_state, task_state }) => {
            Err(ComputeError::InvalidState { action: name, uuid: inst.uuid.clone(), vm_state, task_state })
        }
    }
}
