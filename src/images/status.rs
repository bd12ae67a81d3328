//! An image's status as glance names it (`glance/domain/__init__.py`), and the moves between
//! statuses glance allows. The names are the wire format and the database's.

use crate::compute::states::states;

states! {
    /// Where an image is in its life.
    ImageStatus {
        /// The record exists; no data yet.
        Queued = "queued",
        /// Data is being uploaded.
        Saving = "saving",
        /// Data is being staged for the interoperable import.
        Uploading = "uploading",
        /// Staged data is being imported.
        Importing = "importing",
        /// Data stored: the image can be downloaded and booted.
        Active = "active",
        /// An upload failed for good (glance v1; v2 goes back to queued instead).
        Killed = "killed",
        Deleted = "deleted",
        /// Deleted, with the data not yet scrubbed.
        PendingDelete = "pending_delete",
        /// Data withheld from non-admins by an admin.
        Deactivated = "deactivated",
    }
}

states! {
    /// A project's answer to an image shared with it (glance's image member status).
    MemberStatus {
        /// Shared with the project, which has not answered: the image is not in its list.
        Pending = "pending",
        Accepted = "accepted",
        Rejected = "rejected",
    }
}

impl MemberStatus {
    /// Whether the member's project lists and boots the image: only once it accepted it.
    pub fn lists_image(self) -> bool {
        self == MemberStatus::Accepted
    }
}

impl ImageStatus {
    /// The statuses an image may move to from this one: glance's `Image.valid_state_targets`.
    pub fn targets(self) -> &'static [ImageStatus] {
        use ImageStatus::*;
        match self {
            Queued => &[Saving, Uploading, Importing, Active, Deleted],
            // Back to queued: a failed v2 upload can simply be retried.
            Saving => &[Active, Killed, Deleted, Queued],
            Uploading => &[Importing, Queued, Deleted],
            Importing => &[Active, Deleted, Queued],
            Active => &[PendingDelete, Deleted, Deactivated],
            Killed => &[Deleted],
            PendingDelete => &[Deleted, Active],
            Deleted => &[],
            Deactivated => &[Active, Deleted],
        }
    }

    /// Whether glance lets an image in this status become `to`.
    pub fn can_become(self, to: ImageStatus) -> bool {
        self.targets().contains(&to)
    }

    /// Whether image data may be uploaded now: an upload moves the image to `saving`.
    pub fn can_upload(self) -> bool {
        self.can_become(ImageStatus::Saving)
    }

    /// Whether `disk_format` and `container_format` may still change: glance fixes them once
    /// data has started to arrive.
    pub fn formats_settable(self) -> bool {
        self == ImageStatus::Queued
    }

    /// Whether the image's data can be read: downloaded, booted, made into a volume.
    pub fn has_data(self) -> bool {
        self == ImageStatus::Active
    }
}

#[cfg(test)]
mod tests {
    use super::ImageStatus::{self, *};
    use super::MemberStatus;

    #[test]
    fn member_statuses_are_glance_s() {
        assert_eq!(MemberStatus::NAMES, ["pending", "accepted", "rejected"]);
        for m in MemberStatus::ALL {
            assert_eq!(m.as_str().parse::<MemberStatus>(), Ok(*m));
        }
        assert!("all".parse::<MemberStatus>().is_err(), "`all` is a list filter, not a status");
        let listed: Vec<_> = MemberStatus::ALL.iter().filter(|m| m.lists_image()).collect();
        assert_eq!(listed, [&MemberStatus::Accepted]);
    }

    #[test]
    fn names_are_glance_s_and_round_trip() {
        for s in ImageStatus::ALL {
            assert_eq!(s.as_str().parse::<ImageStatus>(), Ok(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        assert_eq!(ImageStatus::NAMES.len(), ImageStatus::ALL.len());
        assert_eq!(PendingDelete.as_str(), "pending_delete");
        assert!("Active".parse::<ImageStatus>().is_err(), "glance's names are lower case");
        assert!(serde_json::from_value::<ImageStatus>(serde_json::json!("gone")).is_err());

        let db = rusqlite::Connection::open_in_memory().unwrap();
        let back: ImageStatus = db.query_row("SELECT ?1", [Deactivated], |r| r.get(0)).unwrap();
        assert_eq!(back, Deactivated);
        let text: String = db.query_row("SELECT ?1", [Queued], |r| r.get(0)).unwrap();
        assert_eq!(text, "queued");
    }

    #[test]
    fn only_a_queued_image_takes_data() {
        let uploadable: Vec<_> = ImageStatus::ALL.iter().filter(|s| s.can_upload()).collect();
        assert_eq!(uploadable, [&Queued]);
        assert!(!Saving.can_upload(), "a second upload while one runs is a conflict");
        assert!(!Active.can_upload(), "an image's data is immutable once active");
        let settable: Vec<_> = ImageStatus::ALL.iter().filter(|s| s.formats_settable()).collect();
        assert_eq!(settable, [&Queued]);
        assert!(Active.has_data() && !Queued.has_data() && !Saving.has_data() && !Deleted.has_data());
    }

    #[test]
    fn the_transition_table_is_glance_s() {
        // A failed upload goes back to queued, and a finished one to active.
        assert!(Saving.can_become(Queued));
        assert!(Saving.can_become(Active));
        assert!(!Queued.can_become(Killed));
        assert!(!Active.can_become(Queued), "data cannot be replaced");
        assert!(Deactivated.can_become(Active));
        assert!(Deleted.targets().is_empty(), "deleted is final");
        for s in ImageStatus::ALL {
            assert!(!s.can_become(*s), "{s} to itself is no move");
            if *s != Deleted {
                assert!(s.can_become(Deleted), "every live image can be deleted, {s} too");
            }
        }
    }
}
