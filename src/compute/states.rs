//! An instance's states, as nova names them (`vm_states.py`, `task_states.py`, `power_state.py`),
//! and the API status derived from them (`api/openstack/common.py`). The names are the wire
//! format and the database's, so they travel as the strings they always were.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

/// Declares a state enum with its upstream names, and its text, JSON and SQL conversions.
/// Image and volume statuses use it too (`images::status`, `volumes::status`).
macro_rules! states {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// Every name, in declaration order (a query filter checks against them).
            pub const NAMES: &'static [&'static str] = &[$($text,)+];

            /// The upstream name, as the database, the bus and the API carry it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::compute::states::UnknownState;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err($crate::compute::states::UnknownState::new(stringify!($name), other)),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <String as ::serde::Deserialize>::deserialize(d)?;
                text.parse().map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }

        impl ::rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> ::rusqlite::Result<::rusqlite::types::ToSqlOutput<'_>> {
                Ok(::rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl ::rusqlite::types::FromSql for $name {
            fn column_result(value: ::rusqlite::types::ValueRef<'_>) -> ::rusqlite::types::FromSqlResult<Self> {
                value.as_str()?.parse().map_err(|e| ::rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }
    };
}
pub(crate) use states;

/// A name that is not one of the enum's (a row or a message from a newer build, or a typo).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a {kind}")]
pub struct UnknownState {
    kind: &'static str,
    value: String,
}

impl UnknownState {
    pub(crate) fn new(kind: &'static str, value: &str) -> UnknownState {
        UnknownState { kind, value: value.to_string() }
    }
}

states! {
    /// Where an instance is in its life (nova's `vm_states`).
    VmState {
        Active = "active",
        Building = "building",
        Paused = "paused",
        Suspended = "suspended",
        Stopped = "stopped",
        Rescued = "rescued",
        Resized = "resized",
        SoftDeleted = "soft-delete",
        Deleted = "deleted",
        Error = "error",
        Shelved = "shelved",
        ShelvedOffloaded = "shelved_offloaded",
    }
}

states! {
    /// What is being done to an instance right now (nova's `task_states`); none when idle.
    TaskState {
        Scheduling = "scheduling",
        BlockDeviceMapping = "block_device_mapping",
        Networking = "networking",
        Spawning = "spawning",
        ImageSnapshot = "image_snapshot",
        ImageSnapshotPending = "image_snapshot_pending",
        ImagePendingUpload = "image_pending_upload",
        ImageUploading = "image_uploading",
        ImageBackup = "image_backup",
        UpdatingPassword = "updating_password",
        ResizePrep = "resize_prep",
        ResizeMigrating = "resize_migrating",
        ResizeMigrated = "resize_migrated",
        ResizeFinish = "resize_finish",
        ResizeReverting = "resize_reverting",
        ResizeConfirming = "resize_confirming",
        Rebooting = "rebooting",
        RebootPending = "reboot_pending",
        RebootStarted = "reboot_started",
        RebootingHard = "rebooting_hard",
        RebootPendingHard = "reboot_pending_hard",
        RebootStartedHard = "reboot_started_hard",
        Pausing = "pausing",
        Unpausing = "unpausing",
        Suspending = "suspending",
        Resuming = "resuming",
        PoweringOff = "powering-off",
        PoweringOn = "powering-on",
        Rescuing = "rescuing",
        Unrescuing = "unrescuing",
        Rebuilding = "rebuilding",
        RebuildBlockDeviceMapping = "rebuild_block_device_mapping",
        RebuildSpawning = "rebuild_spawning",
        Migrating = "migrating",
        Deleting = "deleting",
        SoftDeleting = "soft-deleting",
        Restoring = "restoring",
        Shelving = "shelving",
        ShelvingImagePendingUpload = "shelving_image_pending_upload",
        ShelvingImageUploading = "shelving_image_uploading",
        ShelvingOffloading = "shelving_offloading",
        Unshelving = "unshelving",
    }
}

/// What the hypervisor says of a guest (nova's `power_state`), stored as its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "i64", try_from = "i64")]
pub enum PowerState {
    NoState = 0,
    Running = 1,
    Paused = 3,
    Shutdown = 4,
    Crashed = 6,
    Suspended = 7,
}

impl From<PowerState> for i64 {
    fn from(p: PowerState) -> i64 {
        p as i64
    }
}

impl TryFrom<i64> for PowerState {
    type Error = UnknownState;
    fn try_from(n: i64) -> Result<PowerState, UnknownState> {
        Ok(match n {
            0 => PowerState::NoState,
            1 => PowerState::Running,
            3 => PowerState::Paused,
            4 => PowerState::Shutdown,
            6 => PowerState::Crashed,
            7 => PowerState::Suspended,
            other => return Err(UnknownState { kind: "PowerState", value: other.to_string() }),
        })
    }
}

impl ToSql for PowerState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(*self as i64))
    }
}

impl FromSql for PowerState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        PowerState::try_from(value.as_i64()?).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// The status the compute API shows for a (vm_state, task_state) pair, as nova derives it.
pub fn status(vm: VmState, task: Option<TaskState>) -> &'static str {
    use TaskState as T;
    use VmState as V;
    let rebuilding = matches!(task, Some(T::Rebuilding | T::RebuildBlockDeviceMapping | T::RebuildSpawning));
    let resizing = matches!(task, Some(T::ResizePrep | T::ResizeMigrating | T::ResizeMigrated | T::ResizeFinish));
    match vm {
        V::Active => match task {
            Some(T::Rebooting | T::RebootPending | T::RebootStarted) => "REBOOT",
            Some(T::RebootingHard | T::RebootPendingHard | T::RebootStartedHard) => "HARD_REBOOT",
            Some(T::UpdatingPassword) => "PASSWORD",
            Some(T::Migrating) => "MIGRATING",
            _ if rebuilding => "REBUILD",
            _ if resizing => "RESIZE",
            _ => "ACTIVE",
        },
        V::Building => "BUILD",
        V::Stopped if rebuilding => "REBUILD",
        V::Stopped if resizing => "RESIZE",
        V::Stopped => "SHUTOFF",
        V::Resized if task == Some(T::ResizeReverting) => "REVERT_RESIZE",
        V::Resized => "VERIFY_RESIZE",
        V::Paused if task == Some(T::Migrating) => "MIGRATING",
        V::Paused => "PAUSED",
        V::Suspended => "SUSPENDED",
        V::Rescued => "RESCUE",
        V::Error if rebuilding => "REBUILD",
        V::Error => "ERROR",
        V::Deleted => "DELETED",
        V::SoftDeleted => "SOFT_DELETED",
        V::Shelved => "SHELVED",
        V::ShelvedOffloaded => "SHELVED_OFFLOADED",
    }
}

/// The progress the server view shows (nova's view builder): 100 when active, the stored
/// figure while the server builds or moves, none in the other statuses.
pub fn progress(vm: VmState, task: Option<TaskState>, stored: i64) -> Option<i64> {
    match status(vm, task) {
        "ACTIVE" => Some(100),
        "BUILD" | "REBUILD" | "RESIZE" | "VERIFY_RESIZE" | "MIGRATING" => Some(stored),
        _ => None,
    }
}

/// The vm_states a `status=` list filter stands for (case-insensitive), as nova maps them back.
pub fn vm_states_for_status(status: &str) -> Option<&'static [VmState]> {
    use VmState as V;
    Some(match status.to_ascii_uppercase().as_str() {
        "ACTIVE" | "REBOOT" | "HARD_REBOOT" | "PASSWORD" | "MIGRATING" | "RESIZE" | "REBUILD" => &[V::Active],
        "BUILD" => &[V::Building],
        "SHUTOFF" => &[V::Stopped],
        "ERROR" => &[V::Error],
        "DELETED" => &[V::Deleted],
        "SOFT_DELETED" => &[V::SoftDeleted],
        "PAUSED" => &[V::Paused],
        "SUSPENDED" => &[V::Suspended],
        "RESCUE" => &[V::Rescued],
        "VERIFY_RESIZE" | "REVERT_RESIZE" => &[V::Resized],
        "SHELVED" => &[V::Shelved],
        "SHELVED_OFFLOADED" => &[V::ShelvedOffloaded],
        _ => return None,
    })
}

/// A state-changing action on a server, as nova's `compute/api.py` guards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAction {
    Stop,
    Start,
    Reboot,
    RebootHard,
    Pause,
    Unpause,
    Suspend,
    Resume,
    TriggerCrashDump,
    Restore,
    // Issue 16, items 4 to 6.
    Rebuild,
    Resize,
    ConfirmResize,
    RevertResize,
    CreateImage,
    CreateBackup,
}

/// What an action needs and sets: nova's `@check_instance_state` and the task it starts.
pub struct Guard {
    /// The name nova's 409 gives the action ("Cannot 'stop' instance ...").
    pub name: &'static str,
    /// The vm_states the action is allowed in; the task state must be none.
    pub vm_states: &'static [VmState],
    /// The task state the action sets while it runs; none for an action that changes no
    /// state (nova's `trigger_crash_dump`).
    pub task: Option<TaskState>,
}

impl ServerAction {
    /// The table of allowed states, one row per action, as nova's decorators have them.
    pub fn guard(self) -> Guard {
        use VmState as V;
        match self {
            ServerAction::Stop => {
                Guard { name: "stop", vm_states: &[V::Active, V::Error], task: Some(TaskState::PoweringOff) }
            }
            ServerAction::Start => Guard { name: "start", vm_states: &[V::Stopped], task: Some(TaskState::PoweringOn) },
            ServerAction::Reboot => Guard { name: "reboot", vm_states: &[V::Active], task: Some(TaskState::Rebooting) },
            ServerAction::RebootHard => Guard {
                name: "reboot",
                vm_states: &[V::Active, V::Stopped, V::Error],
                task: Some(TaskState::RebootingHard),
            },
            ServerAction::Pause => Guard { name: "pause", vm_states: &[V::Active], task: Some(TaskState::Pausing) },
            ServerAction::Unpause => {
                Guard { name: "unpause", vm_states: &[V::Paused], task: Some(TaskState::Unpausing) }
            }
            ServerAction::Suspend => {
                Guard { name: "suspend", vm_states: &[V::Active], task: Some(TaskState::Suspending) }
            }
            ServerAction::Resume => {
                Guard { name: "resume", vm_states: &[V::Suspended], task: Some(TaskState::Resuming) }
            }
            // nova's ALLOW_TRIGGER_CRASH_DUMP; the NMI changes no state, so no task runs.
            ServerAction::Restore => {
                Guard { name: "restore", vm_states: &[V::SoftDeleted], task: Some(TaskState::Restoring) }
            }
            ServerAction::TriggerCrashDump => Guard {
                name: "trigger_crash_dump",
                vm_states: &[V::Active, V::Paused, V::Rescued, V::Resized, V::Error],
                task: None,
            },
            ServerAction::Rebuild => Guard {
                name: "rebuild",
                vm_states: &[V::Active, V::Stopped, V::Error],
                task: Some(TaskState::Rebuilding),
            },
            ServerAction::Resize => {
                Guard { name: "resize", vm_states: &[V::Active, V::Stopped], task: Some(TaskState::ResizePrep) }
            }
            // nova marks a confirm on the migration only; novabox takes a task state too, so a
            // second confirm or a revert cannot start while one runs (the status stays
            // VERIFY_RESIZE, as nova's).
            ServerAction::ConfirmResize => {
                Guard { name: "confirmResize", vm_states: &[V::Resized], task: Some(TaskState::ResizeConfirming) }
            }
            ServerAction::RevertResize => {
                Guard { name: "revertResize", vm_states: &[V::Resized], task: Some(TaskState::ResizeReverting) }
            }
            ServerAction::CreateImage => Guard {
                name: "createImage",
                vm_states: &[V::Active, V::Stopped, V::Paused, V::Suspended],
                task: Some(TaskState::ImageSnapshot),
            },
            ServerAction::CreateBackup => Guard {
                name: "createBackup",
                vm_states: &[V::Active, V::Stopped, V::Paused, V::Suspended],
                task: Some(TaskState::ImageBackup),
            },
        }
    }
}

/// nova's InstanceInvalidState text, naming the task state when one runs, else the vm_state.
pub fn invalid_state_message(action: &str, uuid: &str, vm: VmState, task: Option<TaskState>) -> String {
    match task {
        Some(t) => format!("Cannot '{action}' instance {uuid} while it is in task_state {t}"),
        None => format!("Cannot '{action}' instance {uuid} while it is in vm_state {vm}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_json_and_sql() {
        for v in VmState::ALL {
            assert_eq!(v.as_str().parse::<VmState>(), Ok(*v));
            assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(v.as_str()));
        }
        for t in TaskState::ALL {
            assert_eq!(t.as_str().parse::<TaskState>(), Ok(*t));
        }
        assert_eq!(VmState::SoftDeleted.as_str(), "soft-delete");
        assert_eq!(TaskState::PoweringOff.as_str(), "powering-off");
        assert!("sleeping".parse::<VmState>().is_err());
        assert_eq!(serde_json::to_value(PowerState::Shutdown).unwrap(), serde_json::json!(4));
        assert_eq!(serde_json::from_value::<PowerState>(serde_json::json!(7)).unwrap(), PowerState::Suspended);
        assert!(serde_json::from_value::<PowerState>(serde_json::json!(2)).is_err());

        let db = rusqlite::Connection::open_in_memory().unwrap();
        let (v, t, p): (VmState, Option<TaskState>, PowerState) = db
            .query_row(
                "SELECT ?1, ?2, ?3",
                rusqlite::params![VmState::Resized, TaskState::Deleting, PowerState::Running],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((v, t, p), (VmState::Resized, Some(TaskState::Deleting), PowerState::Running));
    }

    #[test]
    fn status_is_derived_as_nova_does() {
        use TaskState as T;
        use VmState as V;
        assert_eq!(status(V::Active, None), "ACTIVE");
        assert_eq!(status(V::Active, Some(T::Deleting)), "ACTIVE");
        assert_eq!(status(V::Active, Some(T::RebootStartedHard)), "HARD_REBOOT");
        assert_eq!(status(V::Stopped, Some(T::RebuildSpawning)), "REBUILD");
        assert_eq!(status(V::Resized, Some(T::ResizeReverting)), "REVERT_RESIZE");
        assert_eq!(status(V::Building, Some(T::Spawning)), "BUILD");
        assert_eq!(status(V::Active, Some(T::PoweringOff)), "ACTIVE");
        assert_eq!(status(V::Active, Some(T::Rebooting)), "REBOOT");
        assert_eq!(status(V::Active, Some(T::RebootingHard)), "HARD_REBOOT");
        assert_eq!(status(V::Stopped, Some(T::PoweringOn)), "SHUTOFF");
        assert_eq!(status(V::Error, None), "ERROR");
        for v in VmState::ALL {
            let shown = status(*v, None);
            assert!(
                vm_states_for_status(shown).is_some_and(|states| states.contains(v)),
                "{v} shows as {shown}, which a status filter does not map back"
            );
        }
    }

    #[test]
    fn the_guard_table_and_nova_s_conflict_text() {
        assert!(ServerAction::Stop.guard().vm_states.contains(&VmState::Error));
        assert!(!ServerAction::Reboot.guard().vm_states.contains(&VmState::Stopped));
        assert!(ServerAction::RebootHard.guard().vm_states.contains(&VmState::Stopped));
        // Issue 16: the rows of nova's compute/api.py decorators.
        let rows = [
            (ServerAction::Pause, "pause", &[VmState::Active][..], Some(TaskState::Pausing)),
            (ServerAction::Unpause, "unpause", &[VmState::Paused][..], Some(TaskState::Unpausing)),
            (ServerAction::Suspend, "suspend", &[VmState::Active][..], Some(TaskState::Suspending)),
            (ServerAction::Resume, "resume", &[VmState::Suspended][..], Some(TaskState::Resuming)),
            (ServerAction::Restore, "restore", &[VmState::SoftDeleted][..], Some(TaskState::Restoring)),
            (
                ServerAction::Rebuild,
                "rebuild",
                &[VmState::Active, VmState::Stopped, VmState::Error][..],
                Some(TaskState::Rebuilding),
            ),
            (ServerAction::Resize, "resize", &[VmState::Active, VmState::Stopped][..], Some(TaskState::ResizePrep)),
            (ServerAction::RevertResize, "revertResize", &[VmState::Resized][..], Some(TaskState::ResizeReverting)),
        ];
        for (action, name, states, task) in rows {
            let g = action.guard();
            assert_eq!((g.name, g.vm_states, g.task), (name, states, task), "{action:?}");
        }
        let dump = ServerAction::TriggerCrashDump.guard();
        assert_eq!((dump.name, dump.task), ("trigger_crash_dump", None));
        assert!(dump.vm_states.contains(&VmState::Paused) && !dump.vm_states.contains(&VmState::Stopped));
        assert_eq!(status(VmState::Paused, None), "PAUSED");
        assert_eq!(status(VmState::Suspended, Some(TaskState::Resuming)), "SUSPENDED");
        assert_eq!(
            invalid_state_message("pause", "u1", VmState::Stopped, None),
            "Cannot 'pause' instance u1 while it is in vm_state stopped"
        );
        assert_eq!(
            invalid_state_message("stop", "u1", VmState::Active, Some(TaskState::PoweringOff)),
            "Cannot 'stop' instance u1 while it is in task_state powering-off"
        );
    }
}
