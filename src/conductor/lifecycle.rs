//! The conductor's part of issue 16's long actions: resize records, instance actions a compute
//! host starts itself, and a snapshot's bytes into the image store (nova's compute uploads to
//! glance; novabox's compute has no database, so the conductor, beside the store, takes them).

use std::io::Read;

use serde_json::Value;

use super::{db_error, Conductor};
use crate::bus::{Context, RemoteError, RemoteErrorKind};
use crate::images::{ImageError, ImageStatus, ImageWriter};
use crate::rpcapi::BackupRotation;

impl Conductor {
    pub(super) fn migration_status(&self, instance_uuid: &str, status: &str) -> Result<Value, RemoteError> {
        self.db.with(|db| db.set_migration_status(instance_uuid, status)).map_err(db_error)?;
        Ok(Value::Null)
    }

    pub(super) fn action_start(&self, ctx: &Context, uuid: &str, action: &str) -> Result<Value, RemoteError> {
        let user = ctx.user_id.clone().unwrap_or_default();
        let project = ctx.project_id.clone().unwrap_or_default();
        self.db
            .with(|db| db.start_instance_action(uuid, action, &ctx.request_id, &user, &project))
            .map_err(db_error)?;
        Ok(Value::Null)
    }

    /// The queued image takes the file's bytes (`saving` while they are copied, `active` after),
    /// then older backups beyond the rotation go. On any failure the image is deleted: no half
    /// image stays.
    pub(super) fn image_upload(
        &self,
        image_id: &str,
        file: &str,
        disk_format: &str,
        rotation: Option<&BackupRotation>,
    ) -> Result<Value, RemoteError> {
        if let Err(e) = self.store_snapshot(image_id, file, disk_format) {
            self.discard(image_id);
            return Err(RemoteError::new(RemoteErrorKind::Other, format!("the snapshot was not stored: {e}")));
        }
        if let Some(r) = rotation {
            self.rotate_backups(r);
        }
        Ok(Value::Null)
    }

    fn store_snapshot(&self, image_id: &str, file: &str, disk_format: &str) -> Result<(), ImageError> {
        let db = &self.db;
        let mut image =
            db.with(|db| db.image_by_id(image_id))?.ok_or_else(|| ImageError::NotQueued(image_id.to_string()))?;
        image.disk_format = Some(disk_format.to_string());
        image.container_format = Some("bare".into());
        db.with(|db| db.save_image(&image))?;
        if !db.with(|db| db.set_image_status(image_id, ImageStatus::Queued, ImageStatus::Saving))? {
            return Err(ImageError::NotQueued(image_id.to_string()));
        }
        let path = std::path::Path::new(file);
        let mut src =
            std::fs::File::open(path).map_err(|source| ImageError::Read { path: path.to_path_buf(), source })?;
        // A snapshot is the cloud's own data, not an upload: `[images] max_upload_mb` does not apply.
        let mut writer = ImageWriter::create(&self.home.images_dir(), image_id, u64::MAX / (1024 * 1024))?;
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = src.read(&mut buf).map_err(|source| ImageError::Read { path: path.to_path_buf(), source })?;
            if n == 0 {
                break;
            }
            writer.write(&buf[..n])?;
        }
        let data = writer.finish(Some(disk_format))?;
        if !db.with(|db| db.finish_image_upload(image_id, &data))? {
            let _ = crate::images::remove_file(&self.home, &data.path);
            return Err(ImageError::NotQueued(image_id.to_string()));
        }
        Ok(())
    }

    pub(super) fn latest_migration(&self, instance_uuid: &str) -> Result<Value, RemoteError> {
        let m = self.db.with(|db| db.latest_migration(instance_uuid)).map_err(db_error)?;
        Ok(serde_json::to_value(m).unwrap_or(Value::Null))
    }

    /// Deletes the instance's snapshot and backup images that never got their data (queued,
    /// or saving when the upload died): a restart cut their snapshot off.
    pub(super) fn discard_snapshots(&self, instance_uuid: &str) -> Result<Value, RemoteError> {
        let images = self.db.with(|db| db.images()).map_err(db_error)?;
        for image in images {
            let ours = image.properties.get("instance_uuid").is_some_and(|u| u == instance_uuid)
                && image.properties.get("image_type").is_some_and(|t| t == "snapshot" || t == "backup");
            if ours && matches!(image.status, ImageStatus::Queued | ImageStatus::Saving) {
                tracing::info!(image = %image.id, instance = instance_uuid, status = %image.status, "deleting a snapshot a restart cut off");
                self.discard(&image.id);
            }
        }
        Ok(Value::Null)
    }

    pub(super) fn image_discard(&self, image_id: &str) -> Result<Value, RemoteError> {
        self.discard(image_id);
        Ok(Value::Null)
    }

    fn discard(&self, image_id: &str) {
        match self.db.with(|db| db.delete_image(image_id)) {
            Ok(Some(rel)) => {
                let _ = crate::images::remove_file(&self.home, &rel);
            }
            Ok(None) | Err(crate::db::DbError::NotFound(_)) => {}
            Err(e) => tracing::warn!(image = image_id, error = %e, "the failed snapshot's image was not deleted"),
        }
    }

    /// nova's `_rotate_backups`: the instance's backups of this type, newest first; those past
    /// `rotation` are deleted.
    fn rotate_backups(&self, r: &BackupRotation) {
        let images = match self.db.with(|db| db.images()) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "backups not rotated");
                return;
            }
        };
        let prop = |i: &crate::db::images::Image, k: &str| i.properties.get(k).cloned().unwrap_or_default();
        let mut backups: Vec<_> = images
            .into_iter()
            .filter(|i| {
                prop(i, "image_type") == "backup"
                    && prop(i, "instance_uuid") == r.instance_uuid
                    && prop(i, "backup_type") == r.backup_type
                    && i.status == ImageStatus::Active
            })
            .collect();
        backups.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
        for old in backups.iter().skip(r.rotation as usize) {
            tracing::info!(image = %old.id, backup_type = %r.backup_type, "rotating out an old backup");
            self.discard(&old.id);
        }
    }
}
