//! Volumes (cinder's table) and their attachments to instances (nova's block device
//! mappings with destination `volume`). One volume has at most one attachment (no multiattach).
//!
//! Status moves as cinder's: `creating -> available | error`, `available -> attaching ->
//! in-use`, `in-use -> detaching -> available`, `available | error -> deleting -> (gone)`.
//! Every move is a compare-and-set on the status, so two requests racing for one volume
//! cannot both win.

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{now, Db, Result};
use crate::compute::states::VmState;
use crate::volumes::{AttachStatus, VolumeStatus};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub project_id: String,
    pub user_id: String,
    /// GiB.
    pub size: i64,
    pub status: VolumeStatus,
    pub attach_status: AttachStatus,
    pub instance_uuid: Option<String>,
    pub mountpoint: Option<String>,
    pub attachment_id: Option<String>,
    pub attached_at: Option<String>,
    pub source_image_id: Option<String>,
    pub bootable: bool,
    pub availability_zone: String,
    /// The qcow2 file, relative to the home's `volumes/`.
    pub path: Option<String>,
    pub fault: Option<String>,
    pub created_at: String,
    pub updated_at: Option<String>,
}

/// cinder's volume sort keys that novabox volumes have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeSortKey {
    Id,
    Name,
    Status,
    Size,
    CreatedAt,
    UpdatedAt,
    AvailabilityZone,
    Bootable,
    ProjectId,
    UserId,
}

impl crate::db::listing::SortColumn for VolumeSortKey {
    const ALL: &'static [(&'static str, VolumeSortKey)] = &[
        ("id", VolumeSortKey::Id),
        ("name", VolumeSortKey::Name),
        ("status", VolumeSortKey::Status),
        ("size", VolumeSortKey::Size),
        ("created_at", VolumeSortKey::CreatedAt),
        ("updated_at", VolumeSortKey::UpdatedAt),
        ("availability_zone", VolumeSortKey::AvailabilityZone),
        ("bootable", VolumeSortKey::Bootable),
        ("project_id", VolumeSortKey::ProjectId),
        ("user_id", VolumeSortKey::UserId),
    ];

    fn column(self) -> Option<&'static str> {
        Some(match self {
            VolumeSortKey::Id => "id",
            VolumeSortKey::Name => "name",
            VolumeSortKey::Status => "status",
            VolumeSortKey::Size => "size",
            VolumeSortKey::CreatedAt => "created_at",
            VolumeSortKey::UpdatedAt => "updated_at",
            VolumeSortKey::AvailabilityZone => "availability_zone",
            VolumeSortKey::Bootable => "bootable",
            VolumeSortKey::ProjectId => "project_id",
            VolumeSortKey::UserId => "user_id",
        })
    }
}

const COLUMNS: &str = "id, name, description, project_id, user_id, size, status, attach_status, instance_uuid,
    mountpoint, attachment_id, attached_at, source_image_id, bootable, availability_zone, path, fault,
    created_at, updated_at";

fn volume_row(r: &Row<'_>) -> rusqlite::Result<Volume> {
    Ok(Volume {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        project_id: r.get(3)?,
        user_id: r.get(4)?,
        size: r.get(5)?,
        status: r.get(6)?,
        attach_status: r.get(7)?,
        instance_uuid: r.get(8)?,
        mountpoint: r.get(9)?,
        attachment_id: r.get(10)?,
        attached_at: r.get(11)?,
        source_image_id: r.get(12)?,
        bootable: r.get(13)?,
        availability_zone: r.get(14)?,
        path: r.get(15)?,
        fault: r.get(16)?,
        created_at: r.get(17)?,
        updated_at: r.get(18)?,
    })
}

#[derive(Debug, Clone)]
pub struct NewVolume {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub project_id: String,
    pub user_id: String,
    pub size: i64,
    pub source_image_id: Option<String>,
    pub availability_zone: String,
    pub path: String,
}

/// A volume as an instance has it: what the driver needs to plug it in, and what nova's
/// `os-volume_attachments` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeAttachment {
    pub volume_id: String,
    pub instance_uuid: String,
    /// `/dev/vdX` as nova reports it (the guest names its disks itself).
    pub device: Option<String>,
    pub tag: Option<String>,
    pub delete_on_termination: bool,
    pub boot_index: Option<i64>,
    /// The volume's status (`attaching`, `in-use`, `detaching`).
    pub status: VolumeStatus,
    pub path: Option<String>,
}

/// What a new attachment records in the block device mappings.
#[derive(Debug, Clone)]
pub struct NewAttachment {
    pub volume_id: String,
    pub instance_uuid: String,
    pub device: String,
    pub tag: Option<String>,
    pub delete_on_termination: bool,
}

impl Db {
    pub fn insert_volume(&self, v: &NewVolume) -> Result<Volume> {
        let ts = now();
        self.conn().execute(
            "INSERT INTO volumes (id, name, description, project_id, user_id, size, status, source_image_id,
                bootable, availability_zone, path, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?12, ?7, ?8, ?9, ?10, ?11, ?11)",
            params![
                v.id,
                v.name,
                v.description,
                v.project_id,
                v.user_id,
                v.size,
                v.source_image_id,
                v.source_image_id.is_some(),
                v.availability_zone,
                v.path,
                ts,
                VolumeStatus::Creating
            ],
        )?;
        self.volume(&v.id)?.ok_or_else(|| super::DbError::NotFound(format!("Volume {} vanished", v.id)))
    }

    /// The volume unless deleted.
    pub fn volume(&self, id: &str) -> Result<Option<Volume>> {
        let sql = format!("SELECT {COLUMNS} FROM volumes WHERE id = ?1 AND deleted = 0");
        Ok(self.conn().query_row(&sql, [id], volume_row).optional()?)
    }

    /// Volumes of one project (all projects with None), newest first as cinder lists them.
    pub fn volumes(&self, project_id: Option<&str>) -> Result<Vec<Volume>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM volumes WHERE deleted = 0 AND (?1 IS NULL OR project_id = ?1)
             ORDER BY created_at DESC, rowid DESC"
        );
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map([project_id], volume_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// (volumes, gigabytes) the project holds, for its quotas.
    pub fn volume_usage(&self, project_id: &str) -> Result<(i64, i64)> {
        Ok(self.conn().query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM volumes WHERE project_id = ?1 AND deleted = 0",
            [project_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    /// (count, GiB) of every volume, for `novabox status`.
    pub fn volume_totals(&self) -> Result<(i64, i64)> {
        Ok(self.conn().query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM volumes WHERE deleted = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    /// The project's `volumes` and `gigabytes` limits (-1: unlimited).
    pub fn volume_quotas(&self, project_id: &str) -> Result<(i64, i64)> {
        let limits = self.volume_quota_limits(project_id)?;
        let get = |k: &str| limits.get(k).copied().unwrap_or(-1);
        Ok((get("volumes"), get("gigabytes")))
    }

    /// Moves the status from one of `from` to `to`; false when it was in none of them.
    pub fn set_volume_status(&self, id: &str, from: &[VolumeStatus], to: VolumeStatus) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE volumes SET status = ?2, updated_at = ?3
             WHERE id = ?1 AND deleted = 0 AND status IN (SELECT value FROM json_each(?4))",
            params![id, to, now(), status_list(from)],
        )?;
        Ok(n > 0)
    }

    /// The end of a create: `available` with the image's bootable flag, or `error` with why.
    pub fn finish_volume_create(&self, id: &str, fault: Option<&str>) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE volumes SET status = ?2, fault = ?3, updated_at = ?4 WHERE id = ?1 AND deleted = 0 AND status = ?5",
            params![id, VolumeStatus::after_create(fault.is_some()), fault, now(), VolumeStatus::Creating],
        )?;
        Ok(n > 0)
    }

    pub fn update_volume_text(&self, id: &str, name: Option<&str>, description: Option<&str>) -> Result<()> {
        self.conn().execute(
            "UPDATE volumes SET name = coalesce(?2, name), description = coalesce(?3, description), updated_at = ?4
             WHERE id = ?1 AND deleted = 0",
            params![id, name, description, now()],
        )?;
        Ok(())
    }

    /// Soft-deletes a volume that is `deleting`.
    pub fn delete_volume_row(&self, id: &str) -> Result<bool> {
        let ts = now();
        let n = self.conn().execute(
            "UPDATE volumes SET deleted = 1, deleted_at = ?2, updated_at = ?2, status = ?3
             WHERE id = ?1 AND deleted = 0 AND status = ?4",
            params![id, ts, VolumeStatus::Deleted, VolumeStatus::Deleting],
        )?;
        Ok(n > 0)
    }

    /// Reserves an `available` volume for an instance (`attaching`) and records the mapping,
    /// in one transaction. False when the volume was not available.
    pub fn reserve_volume_attachment(&self, a: &NewAttachment) -> Result<bool> {
        let tx = self.begin()?;
        let ts = now();
        let n = tx.execute(
            "UPDATE volumes SET status = ?4, instance_uuid = ?2, updated_at = ?3
             WHERE id = ?1 AND deleted = 0 AND status IN (SELECT value FROM json_each(?5))",
            params![a.volume_id, a.instance_uuid, ts, VolumeStatus::Attaching, status_list(VolumeStatus::ATTACHABLE)],
        )?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO block_device_mappings (instance_uuid, source_type, destination_type, device_name,
                volume_id, delete_on_termination, tag, created_at)
             VALUES (?1, 'volume', 'volume', ?2, ?3, ?4, ?5, ?6)",
            params![a.instance_uuid, a.device, a.volume_id, a.delete_on_termination, a.tag, ts],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Takes an `available` volume for an instance whose mapping names it (boot from volume).
    pub fn claim_volume(&self, volume_id: &str, instance_uuid: &str) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE volumes SET status = ?4, instance_uuid = ?2, updated_at = ?3
             WHERE id = ?1 AND deleted = 0
               AND (status IN (SELECT value FROM json_each(?5)) OR (status = ?4 AND instance_uuid = ?2))",
            params![volume_id, instance_uuid, now(), VolumeStatus::Attaching, status_list(VolumeStatus::ATTACHABLE)],
        )?;
        Ok(n > 0)
    }

    /// The attach went through: the volume is `in-use` by the instance.
    pub fn finish_volume_attachment(&self, volume_id: &str, instance_uuid: &str) -> Result<bool> {
        let ts = now();
        let n = self.conn().execute(
            "UPDATE volumes SET status = ?5, attach_status = ?6, attachment_id = ?3, attached_at = ?4,
                mountpoint = (SELECT device_name FROM block_device_mappings
                              WHERE volume_id = ?1 AND instance_uuid = ?2 AND deleted = 0),
                updated_at = ?4
             WHERE id = ?1 AND deleted = 0 AND instance_uuid = ?2 AND status IN (?7, ?8)",
            params![
                volume_id,
                instance_uuid,
                uuid::Uuid::new_v4().to_string(),
                ts,
                VolumeStatus::InUse,
                AttachStatus::Attached,
                VolumeStatus::Attaching,
                VolumeStatus::Available
            ],
        )?;
        Ok(n > 0)
    }

    /// The volume is no longer attached to the instance (a detach finished, an attach failed,
    /// the instance went): `available`, and its mapping gone.
    pub fn release_volume_attachment(&self, volume_id: &str, instance_uuid: &str) -> Result<()> {
        self.release_volume_attachment_from(volume_id, instance_uuid, None).map(|_| ())
    }

    /// As [`Db::release_volume_attachment`], but only while the volume is in `status` when one
    /// is given: the outcome of an attach or detach that arrives twice (a redelivered cast, a
    /// restart finishing it too) must not undo what happened in between. False when the
    /// volume was not attached to the instance in that status.
    pub fn release_volume_attachment_from(
        &self,
        volume_id: &str,
        instance_uuid: &str,
        status: Option<VolumeStatus>,
    ) -> Result<bool> {
        let tx = self.begin()?;
        let ts = now();
        let n = tx.execute(
            "UPDATE volumes SET status = ?5, attach_status = ?6, instance_uuid = NULL,
                mountpoint = NULL, attachment_id = NULL, attached_at = NULL, updated_at = ?3
             WHERE id = ?1 AND deleted = 0 AND instance_uuid = ?2 AND (?4 IS NULL OR status = ?4)",
            params![volume_id, instance_uuid, ts, status, VolumeStatus::Available, AttachStatus::Detached],
        )?;
        if n == 0 && status.is_some() {
            return Ok(false);
        }
        tx.execute(
            "UPDATE block_device_mappings SET deleted = id, deleted_at = ?3
             WHERE volume_id = ?1 AND instance_uuid = ?2 AND deleted = 0",
            params![volume_id, instance_uuid, ts],
        )?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Attaches and detaches a restart cut off on `host`: volumes `attaching` or `detaching`
    /// for an instance there that is settled (ACTIVE or SHUTOFF, no task). A boot volume
    /// `attaching` for an instance still building is the build's, which its reconcile ends.
    pub fn volumes_in_flight(&self, host: &str) -> Result<Vec<VolumeAttachment>> {
        let mut stmt = self.conn().prepare(
            "SELECT v.id, v.instance_uuid FROM volumes v JOIN instances i ON i.uuid = v.instance_uuid AND i.deleted = 0
             WHERE v.deleted = 0 AND v.status IN (SELECT value FROM json_each(?4)) AND i.host = ?1
               AND i.vm_state IN (?2, ?3) AND i.task_state IS NULL
             ORDER BY v.updated_at, v.id",
        )?;
        let in_flight = status_list(VolumeStatus::IN_FLIGHT);
        let pairs = stmt
            .query_map(rusqlite::params![host, VmState::Active, VmState::Stopped, in_flight], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::new();
        for (volume_id, instance_uuid) in pairs {
            // The mapping carries the device and flags; a volume without one (its reservation
            // half-written, which one transaction rules out) is skipped, not guessed at.
            if let Some(a) =
                self.instance_volume_attachments(&instance_uuid)?.into_iter().find(|a| a.volume_id == volume_id)
            {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// The volumes an instance has (attached or on their way), in mapping order.
    pub fn instance_volume_attachments(&self, instance_uuid: &str) -> Result<Vec<VolumeAttachment>> {
        let mut stmt = self.conn().prepare(
            "SELECT b.volume_id, b.device_name, b.tag, b.delete_on_termination, b.boot_index, v.status, v.path
             FROM block_device_mappings b JOIN volumes v ON v.id = b.volume_id AND v.deleted = 0
             WHERE b.instance_uuid = ?1 AND b.deleted = 0 AND b.destination_type = 'volume'
             ORDER BY coalesce(b.boot_index, 1000), b.id",
        )?;
        let rows = stmt.query_map([instance_uuid], |r| {
            Ok(VolumeAttachment {
                volume_id: r.get(0)?,
                instance_uuid: instance_uuid.to_string(),
                device: r.get(1)?,
                tag: r.get(2)?,
                delete_on_termination: r.get(3)?,
                boot_index: r.get(4)?,
                status: r.get(5)?,
                path: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Device names the instance's mappings use already.
    pub fn instance_device_names(&self, instance_uuid: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn().prepare(
            "SELECT device_name FROM block_device_mappings
             WHERE instance_uuid = ?1 AND deleted = 0 AND device_name IS NOT NULL",
        )?;
        let rows = stmt.query_map([instance_uuid], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Boot-from-volume: the mapping of source `image` gets the volume created for it.
    pub fn set_mapping_volume(
        &self,
        instance_uuid: &str,
        boot_index: i64,
        volume_id: &str,
        device: &str,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE block_device_mappings SET volume_id = ?3, device_name = ?4, updated_at = ?5
             WHERE instance_uuid = ?1 AND boot_index = ?2 AND deleted = 0 AND destination_type = 'volume'",
            params![instance_uuid, boot_index, volume_id, device, now()],
        )?;
        Ok(())
    }
}

/// Statuses as the JSON array `json_each` reads in SQL.
fn status_list(statuses: &[VolumeStatus]) -> String {
    serde_json::to_string(statuses).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::db::OpenOptions;

    pub(crate) fn db_with_project() -> (tempfile::TempDir, Db) {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        db.conn()
            .execute_batch(
                "INSERT INTO projects (id, name, created_at) VALUES ('p', 'p', 'now');
                 INSERT INTO users (id, name, password_hash, created_at) VALUES ('u', 'u', 'x', 'now');",
            )
            .unwrap();
        (t, db)
    }

    pub(crate) fn new_volume(id: &str, size: i64) -> NewVolume {
        NewVolume {
            id: id.into(),
            name: Some(id.into()),
            description: None,
            project_id: "p".into(),
            user_id: "u".into(),
            size,
            source_image_id: None,
            availability_zone: "nova".into(),
            path: format!("{id}.qcow2"),
        }
    }

    #[test]
    fn in_flight_work_is_listed_and_a_late_outcome_undoes_nothing() {
        use crate::compute::states::{TaskState, VmState};
        use crate::db::instances::InstanceUpdate;
        let (_t, db) = db_with_project();
        let inst = db.create_instance(&crate::db::instances::tests::new_instance(&db, "vm")).unwrap();
        let settle = |vm: VmState, task: Option<TaskState>| {
            let u = InstanceUpdate {
                vm_state: Some(vm),
                task_state: Some(task),
                host: Some("h1".into()),
                ..Default::default()
            };
            db.update_instance(&inst.uuid, &u).unwrap().unwrap();
        };
        settle(VmState::Active, None);
        for id in ["v1", "v2"] {
            db.insert_volume(&new_volume(id, 1)).unwrap();
            assert!(db.finish_volume_create(id, None).unwrap());
            let a = NewAttachment {
                volume_id: id.into(),
                instance_uuid: inst.uuid.clone(),
                device: format!("/dev/vd{}", if id == "v1" { 'b' } else { 'c' }),
                tag: None,
                delete_on_termination: false,
            };
            assert!(db.reserve_volume_attachment(&a).unwrap());
        }
        assert!(db.finish_volume_attachment("v2", &inst.uuid).unwrap());
        assert!(db.set_volume_status("v2", &[VolumeStatus::InUse], VolumeStatus::Detaching).unwrap());
        let in_flight = |host: &str| -> Vec<(String, VolumeStatus)> {
            db.volumes_in_flight(host).unwrap().into_iter().map(|a| (a.volume_id, a.status)).collect()
        };
        assert_eq!(in_flight("h1"), [("v1".into(), VolumeStatus::Attaching), ("v2".into(), VolumeStatus::Detaching)]);
        assert!(in_flight("h2").is_empty(), "another host's volumes are not this host's work");
        // A build or a delete in progress owns its volumes.
        settle(VmState::Active, Some(TaskState::Deleting));
        assert!(in_flight("h1").is_empty());
        settle(VmState::Stopped, None);
        assert_eq!(in_flight("h1").len(), 2);

        // The attach finished; the same outcome reported as a failure later releases nothing.
        assert!(db.finish_volume_attachment("v1", &inst.uuid).unwrap());
        assert!(!db.release_volume_attachment_from("v1", &inst.uuid, Some(VolumeStatus::Attaching)).unwrap());
        let v1 = db.volume("v1").unwrap().unwrap();
        assert_eq!((v1.status, v1.attach_status), (VolumeStatus::InUse, AttachStatus::Attached));
        assert_eq!(db.instance_volume_attachments(&inst.uuid).unwrap().len(), 2);
        // The detach finishes once; a second report finds nothing to do.
        assert!(db.release_volume_attachment_from("v2", &inst.uuid, Some(VolumeStatus::Detaching)).unwrap());
        assert!(!db.release_volume_attachment_from("v2", &inst.uuid, Some(VolumeStatus::Detaching)).unwrap());
        let v2 = db.volume("v2").unwrap().unwrap();
        assert_eq!((v2.status, v2.attach_status), (VolumeStatus::Available, AttachStatus::Detached));
        assert_eq!(db.instance_volume_attachments(&inst.uuid).unwrap().len(), 1);
        assert!(in_flight("h1").is_empty());
    }

    #[test]
    fn status_moves_are_compare_and_set() {
        let (_t, db) = db_with_project();
        let v = db.insert_volume(&new_volume("v1", 2)).unwrap();
        assert_eq!((v.status, v.attach_status), (VolumeStatus::Creating, AttachStatus::Detached));
        assert_eq!(db.volume_usage("p").unwrap(), (1, 2));
        assert!(db.finish_volume_create("v1", None).unwrap());
        assert!(!db.finish_volume_create("v1", Some("late")).unwrap(), "only a creating volume finishes");
        let a = NewAttachment {
            volume_id: "v1".into(),
            instance_uuid: "i1".into(),
            device: "/dev/vdb".into(),
            tag: Some("t".into()),
            delete_on_termination: false,
        };
        // The mapping references an instance: without one the foreign key refuses it, and the
        // reservation rolls back whole.
        assert!(db.reserve_volume_attachment(&a).is_err());
        assert_eq!(db.volume("v1").unwrap().unwrap().status, VolumeStatus::Available);
        assert!(!db.set_volume_status("v1", VolumeStatus::DETACHABLE, VolumeStatus::Detaching).unwrap());
        assert!(db.set_volume_status("v1", VolumeStatus::DELETABLE, VolumeStatus::Deleting).unwrap());
        assert!(db.delete_volume_row("v1").unwrap());
        assert!(db.volume("v1").unwrap().is_none());
        assert_eq!(db.volume_usage("p").unwrap(), (0, 0));
        assert_eq!(db.volume_quotas("p").unwrap(), (10, 1000));
        db.set_volume_quota("p", "volumes", 1).unwrap();
        assert_eq!(db.volume_quotas("p").unwrap(), (1, 1000));
    }
}
