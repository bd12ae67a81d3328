//! A volume's status and attach status as cinder names them (`cinder/objects/fields.py`), and
//! which of cinder's actions each status allows. The names are the wire format and the
//! database's.

use crate::compute::states::states;

states! {
    /// Where a volume is in its life (cinder's `VolumeStatus`, and `deleted`, which cinder
    /// writes on the row it soft-deletes).
    VolumeStatus {
        Creating = "creating",
        Available = "available",
        Reserved = "reserved",
        Attaching = "attaching",
        InUse = "in-use",
        Detaching = "detaching",
        Maintenance = "maintenance",
        Deleting = "deleting",
        Deleted = "deleted",
        AwaitingTransfer = "awaiting-transfer",
        Error = "error",
        ErrorDeleting = "error_deleting",
        Managing = "managing",
        ErrorManaging = "error_managing",
        BackingUp = "backing-up",
        ErrorBackingUp = "error_backing-up",
        RestoringBackup = "restoring-backup",
        ErrorRestoring = "error_restoring",
        Extending = "extending",
        ErrorExtending = "error_extending",
        Downloading = "downloading",
        Uploading = "uploading",
        Retyping = "retyping",
    }
}

states! {
    /// Whether a volume is attached (cinder's `VolumeAttachStatus`).
    AttachStatus {
        Attached = "attached",
        Attaching = "attaching",
        Detached = "detached",
        Reserved = "reserved",
        ErrorAttaching = "error_attaching",
        ErrorDetaching = "error_detaching",
        Deleted = "deleted",
    }
}

impl VolumeStatus {
    /// The statuses a delete may start from: cinder's `volume_api.delete` without `force`.
    pub const DELETABLE: &'static [VolumeStatus] = &[
        VolumeStatus::Available,
        VolumeStatus::Error,
        VolumeStatus::ErrorRestoring,
        VolumeStatus::ErrorExtending,
        VolumeStatus::ErrorManaging,
    ];
    /// The statuses an attach may reserve a volume in: cinder's `reserve_volume` without
    /// multiattach, which novabox does not have.
    pub const ATTACHABLE: &'static [VolumeStatus] = &[VolumeStatus::Available];
    /// The statuses a detach may start from: cinder's `begin_detaching`.
    pub const DETACHABLE: &'static [VolumeStatus] = &[VolumeStatus::InUse];
    /// The statuses of an attach or detach that compute has yet to finish.
    pub const IN_FLIGHT: &'static [VolumeStatus] = &[VolumeStatus::Attaching, VolumeStatus::Detaching];

    pub fn can_delete(self) -> bool {
        VolumeStatus::DELETABLE.contains(&self)
    }

    pub fn can_attach(self) -> bool {
        VolumeStatus::ATTACHABLE.contains(&self)
    }

    pub fn can_detach(self) -> bool {
        VolumeStatus::DETACHABLE.contains(&self)
    }

    /// How a create ends: `available`, or `error` when it failed.
    pub fn after_create(failed: bool) -> VolumeStatus {
        if failed {
            VolumeStatus::Error
        } else {
            VolumeStatus::Available
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AttachStatus, VolumeStatus};

    #[test]
    fn names_are_cinder_s_and_round_trip() {
        for s in VolumeStatus::ALL {
            assert_eq!(s.as_str().parse::<VolumeStatus>(), Ok(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        for s in AttachStatus::ALL {
            assert_eq!(s.as_str().parse::<AttachStatus>(), Ok(*s));
        }
        assert_eq!(VolumeStatus::InUse.as_str(), "in-use");
        assert_eq!(VolumeStatus::ErrorBackingUp.as_str(), "error_backing-up");
        assert!("in_use".parse::<VolumeStatus>().is_err());

        let db = rusqlite::Connection::open_in_memory().unwrap();
        let (v, a): (VolumeStatus, AttachStatus) = db
            .query_row("SELECT ?1, ?2", rusqlite::params![VolumeStatus::InUse, AttachStatus::Attached], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((v, a), (VolumeStatus::InUse, AttachStatus::Attached));
        let text: String = db.query_row("SELECT ?1", [VolumeStatus::InUse], |r| r.get(0)).unwrap();
        assert_eq!(text, "in-use");
        // A list of statuses travels to SQL as a JSON array of names (`json_each`).
        assert_eq!(serde_json::to_string(VolumeStatus::IN_FLIGHT).unwrap(), r#"["attaching","detaching"]"#);
    }

    #[test]
    fn what_each_status_allows() {
        use VolumeStatus::*;
        let deletable: Vec<_> = VolumeStatus::ALL.iter().copied().filter(|s| s.can_delete()).collect();
        assert_eq!(deletable, [Available, Error, ErrorManaging, ErrorRestoring, ErrorExtending]);
        for busy in [Creating, Attaching, InUse, Detaching, Deleting, Deleted] {
            assert!(!busy.can_delete(), "{busy} cannot be deleted");
        }
        let attachable: Vec<_> = VolumeStatus::ALL.iter().copied().filter(|s| s.can_attach()).collect();
        assert_eq!(attachable, [Available], "no multiattach: an in-use volume is not attached again");
        let detachable: Vec<_> = VolumeStatus::ALL.iter().copied().filter(|s| s.can_detach()).collect();
        assert_eq!(detachable, [InUse]);
        assert!(!Attaching.can_detach(), "a detach waits for the attach to finish");
        assert_eq!(VolumeStatus::after_create(false), Available);
        assert_eq!(VolumeStatus::after_create(true), Error);
    }
}
