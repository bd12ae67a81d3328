//! The compute API on its own: typed requests refused in nova's words, the allowed-state
//! table and its 409, and the one mapping of errors to nova's statuses.

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::create::sanitize_hostname;
use super::*;
use crate::api::compute::microversion::Microversion;
use crate::api::testing::Cloud;
use crate::bus::Context;
use crate::compute::states::ServerAction;
use crate::rpcapi::RequestedNetworks;

const V: Microversion = Microversion(79);

fn rejected(body: Value, v: Microversion) -> ApiError {
    ApiError::from(CreateRequest::parse(&body, v).expect_err("refused"))
}

fn boot(extra: Value) -> Value {
    let mut server = json!({"name": "a", "imageRef": "i", "flavorRef": "1", "networks": "none"});
    for (k, v) in extra.as_object().into_iter().flatten() {
        server[k] = v.clone();
    }
    json!({ "server": server })
}

/// A server group's uuid, for the `group` hint.
const G: &str = "0b5d52a4-7bb1-4a4e-8a0b-9c1f0e2f3a44";

#[test]
fn create_takes_what_nova_takes() {
    let r = CreateRequest::parse(&boot(json!({})), V).unwrap();
    assert_eq!((r.name.as_str(), r.image_id.as_str(), r.flavor_ref.as_str()), ("a", "i", "1"));
    assert!(matches!(r.networks, RequestedNetworks::None));
    assert_eq!(r.security_groups, ["default"]);
    assert_eq!((r.max_count, r.return_reservation_id), (1, false));
    assert_eq!(r.block_devices.len(), 1, "the image becomes the boot disk");
    // A flavor given as a link or a number, counts as strings, hints under either name.
    let body = json!({"server": {"name": "a", "imageRef": "http://x/images/i", "flavorRef": 42, "networks": "auto",
        "min_count": "2", "max_count": 3, "return_reservation_id": "true"}, "os:scheduler_hints": {"group": [G]}});
    let r = CreateRequest::parse(&body, V).unwrap();
    assert_eq!((r.image_id.as_str(), r.flavor_ref.as_str(), r.max_count), ("i", "42", 3));
    assert!(r.return_reservation_id);
    assert_eq!((r.hints.clone(), r.group.as_deref()), (json!({"group": [G]}), Some(G)));
    // The group hint is a uuid (or a list of one), as nova's schema has it.
    let mut bad = boot(json!({}));
    bad["os:scheduler_hints"] = json!({"group": "g"});
    let e = rejected(bad, V);
    assert_eq!(
        e.message,
        "Invalid input for field/attribute group. Value: g. 'g' is not valid under any of the given schemas"
    );
    // Before 2.37 `networks` may be left out: one port on the default network.
    let old = json!({"server": {"name": "a", "imageRef": "i", "flavorRef": "1"}});
    assert!(matches!(CreateRequest::parse(&old, Microversion(1)).unwrap().networks, RequestedNetworks::Auto));
}

#[test]
fn unknown_fields_are_named_as_nova_names_them() {
    let e = rejected(boot(json!({"bogus": 1})), V);
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert_eq!(e.message, "Additional properties are not allowed ('bogus' was unexpected)");
    let e = rejected(json!({"server": {"name": "a"}, "extra": {}}), V);
    assert_eq!(e.message, "Additional properties are not allowed ('extra' was unexpected)");
    let bdm = json!({"block_device_mapping_v2": [{"boot_index": 0, "uuid": "i", "source_type": "image", "wheels": 4}]});
    assert_eq!(rejected(boot(bdm), V).message, "Additional properties are not allowed ('wheels' was unexpected)");
    let groups = json!({"security_groups": [{"name": "web", "rules": []}]});
    assert_eq!(rejected(boot(groups), V).message, "Additional properties are not allowed ('rules' was unexpected)");
    let net = json!({"networks": [{"uuid": "n", "mac": "x"}]});
    assert_eq!(rejected(boot(net), V).message, "Additional properties are not allowed ('mac' was unexpected)");
    // Keys of later microversions are unknown before them.
    let e = rejected(boot(json!({"description": "d"})), Microversion(18));
    assert_eq!(e.message, "Additional properties are not allowed ('description' was unexpected)");
    let e = rejected(boot(json!({"hypervisor_hostname": "h"})), Microversion(73));
    assert_eq!(e.message, "Additional properties are not allowed ('hypervisor_hostname' was unexpected)");
    assert!(CreateRequest::parse(&boot(json!({"hypervisor_hostname": "h"})), Microversion(74)).is_ok());
}

#[test]
fn wrong_types_and_missing_fields_are_400s_that_name_the_field() {
    let e = rejected(boot(json!({"name": 5})), V);
    assert_eq!(
        (e.status, e.message.as_str()),
        (StatusCode::BAD_REQUEST, "Invalid input for field/attribute name. Value: 5. 5 is not of type 'string'")
    );
    let e = rejected(boot(json!({"key_name": ["k"]})), V);
    assert_eq!(
        e.message,
        "Invalid input for field/attribute key_name. Value: [\"k\"]. [\"k\"] is not of type 'string'"
    );
    let e = rejected(boot(json!({"block_device_mapping_v2": [{"uuid": 7}]})), V);
    assert_eq!(e.message, "Invalid input for field/attribute uuid. Value: 7. 7 is not of type 'string'");
    assert_eq!(
        rejected(json!({"server": {"imageRef": "i", "flavorRef": "1"}}), V).message,
        "'name' is a required property"
    );
    assert_eq!(rejected(boot(json!({"flavorRef": null})), V).message, "'flavorRef' is a required property");
    assert!(rejected(json!({}), V).message.contains("'server' is a required property"));
    assert!(rejected(json!([1]), V).message.contains("is not of type 'object'"));
    let no_net = json!({"server": {"name": "a", "imageRef": "i", "flavorRef": "1"}});
    assert!(rejected(no_net, V).message.contains("'networks' is a required property"));
}

#[test]
fn values_are_checked_as_nova_checks_them() {
    for extra in [
        json!({"name": "x".repeat(256)}),
        json!({"user_data": "%%%"}),
        json!({"min_count": 0}),
        json!({"min_count": 3, "max_count": 2}),
        json!({"max_count": 101}),
        json!({"accessIPv4": "not-an-ip"}),
        json!({"networks": [{"uuid": "n", "fixed_ip": "10.0.0"}]}),
        json!({"networks": [{"tag": "t"}]}),
        json!({"networks": "everything"}),
        json!({"metadata": null}),
        json!({"config_drive": "perhaps"}),
        json!({"return_reservation_id": "perhaps"}),
        json!({"block_device_mapping": []}),
        json!({"block_device_mapping_v2": [{"source_type": "tape"}]}),
        json!({"block_device_mapping_v2": [{"source_type": "image", "destination_type": "volume", "boot_index": 0}]}),
        json!({"block_device_mapping_v2": [{"boot_index": 0, "uuid": "other", "source_type": "image"}]}),
    ] {
        let e = rejected(boot(extra.clone()), V);
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{extra}: {}", e.message);
    }
}

#[test]
fn a_boot_volume_or_block_device_gives_the_image() {
    let body = json!({"server": {"name": "a", "imageRef": "img", "flavorRef": "1", "networks": "auto",
        "block_device_mapping_v2": [{"boot_index": 0, "uuid": "img", "source_type": "image", "destination_type": "local", "delete_on_termination": true}]}});
    let r = CreateRequest::parse(&body, V).unwrap();
    assert_eq!(r.image_id, "img");
    assert_eq!(r.block_devices.len(), 1);
    let volume = uuid::Uuid::new_v4().to_string();
    let body = json!({"server": {"name": "a", "flavorRef": "1", "networks": "none",
        "block_device_mapping_v2": [{"boot_index": "0", "uuid": volume, "source_type": "volume", "destination_type": "volume"}]}});
    let r = CreateRequest::parse(&body, V).unwrap();
    assert_eq!(r.image_id, "", "found from the volume on create");
    assert_eq!(r.block_devices[0].volume_id.as_deref(), Some(volume.as_str()));
    assert!(!r.block_devices[0].delete_on_termination, "a volume outlives its server unless asked");
    let none = json!({"server": {"name": "a", "flavorRef": "1", "networks": "none"}});
    assert!(rejected(none, V).message.starts_with("An image is required"));
}

#[test]
fn hostnames_are_sanitized() {
    assert_eq!(sanitize_hostname("My Server_1"), "my-server-1");
    assert_eq!(sanitize_hostname("***"), "server");
    assert_eq!(sanitize_hostname(&"a".repeat(100)).len(), 63);
}

#[test]
fn updates_follow_the_microversion() {
    let body = json!({"server": {"name": "b", "description": null}});
    let r = UpdateRequest::parse(&body, V).unwrap();
    assert_eq!(r.name.as_deref(), Some("b"));
    let e =
        ApiError::from(UpdateRequest::parse(&json!({"server": {"description": "d"}}), Microversion(18)).unwrap_err());
    assert_eq!(e.message, "Additional properties are not allowed ('description' was unexpected)");
    let e = ApiError::from(UpdateRequest::parse(&json!({"server": {"flavorRef": "1"}}), V).unwrap_err());
    assert_eq!(e.message, "Additional properties are not allowed ('flavorRef' was unexpected)");
    assert!(UpdateRequest::parse(&json!({"server": {"name": " padded"}}), V).is_err());
}

#[test]
fn actions_are_typed_from_their_bodies() {
    let parse = |b: Value| Action::parse(&b, Microversion(1));
    assert_eq!(parse(json!({"os-stop": null})).unwrap(), Action::Stop);
    assert_eq!(parse(json!({"os-start": {}})).unwrap(), Action::Start);
    assert_eq!(parse(json!({"reboot": {"type": "hard"}})).unwrap(), Action::Reboot { hard: true });
    assert_eq!(parse(json!({"reboot": {"type": "SOFT"}})).unwrap(), Action::Reboot { hard: false });
    assert_eq!(
        parse(json!({"os-getConsoleOutput": {"length": "5"}})).unwrap(),
        Action::ConsoleOutput { length: Some(5) }
    );
    assert_eq!(parse(json!({"os-getConsoleOutput": {"length": -1}})).unwrap(), Action::ConsoleOutput { length: None });
    assert_eq!(parse(json!({"os-getConsoleOutput": null})).unwrap(), Action::ConsoleOutput { length: None });
    assert_eq!(
        parse(json!({"addSecurityGroup": {"name": "web"}})).unwrap(),
        Action::AddSecurityGroup { name: "web".into() }
    );
    let refused = |b: Value| ApiError::from(parse(b).unwrap_err());
    let e = refused(json!({"levitate": {}}));
    assert_eq!((e.status, e.message.as_str()), (StatusCode::BAD_REQUEST, "There is no such action: levitate"));
    assert_eq!(refused(json!({"os-stop": null, "os-start": null})).status, StatusCode::BAD_REQUEST);
    assert_eq!(refused(json!("os-stop")).status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused(json!({"reboot": {"type": "gentle"}})).message,
        "Argument 'type' for reboot must be a string SOFT or HARD"
    );
    assert_eq!(refused(json!({"reboot": {}})).message, "Argument 'type' for reboot must be a string SOFT or HARD");
    assert_eq!(
        refused(json!({"reboot": {"type": "HARD", "force": true}})).message,
        "Additional properties are not allowed ('force' was unexpected)"
    );
    assert_eq!(
        refused(json!({"os-getConsoleOutput": {"length": -2}})).message,
        "length must be a positive integer or -1"
    );
    assert_eq!(refused(json!({"addSecurityGroup": {"name": " "}})).status, StatusCode::BAD_REQUEST);
    // nova has no schema for the group actions: what is not `name` is ignored.
    assert_eq!(
        parse(json!({"removeSecurityGroup": {"name": "web", "id": 1}})).unwrap(),
        Action::RemoveSecurityGroup { name: "web".into() }
    );
}

#[test]
fn every_row_of_the_table_waits_for_the_build_and_the_task() {
    for a in [
        ServerAction::Stop,
        ServerAction::Start,
        ServerAction::Reboot,
        ServerAction::RebootHard,
        ServerAction::Pause,
        ServerAction::Unpause,
        ServerAction::Suspend,
        ServerAction::Resume,
        ServerAction::TriggerCrashDump,
        ServerAction::Restore,
    ] {
        let g = a.guard();
        assert!(!g.vm_states.is_empty(), "{a:?} is allowed somewhere");
        assert!(!g.vm_states.contains(&VmState::Building), "{a:?} waits for the build");
        assert!(!g.vm_states.contains(&VmState::Deleted), "{a:?} is not for a deleted server");
    }
}

#[test]
fn errors_map_to_nova_s_statuses_and_texts() {
    let cases = [
        (ComputeError::InstanceNotFound("u1".into()), 404, "Instance u1 could not be found."),
        (ComputeError::Locked("u1".into()), 409, "Instance u1 is locked"),
        (
            ComputeError::InvalidState {
                action: "stop",
                uuid: "u1".into(),
                vm_state: VmState::Stopped,
                task_state: None,
            },
            409,
            "Cannot 'stop' instance u1 while it is in vm_state stopped",
        ),
        (
            ComputeError::HostUnavailable { action: "os-start", uuid: "u1".into() },
            409,
            "Cannot 'os-start' instance u1: its compute service is not available",
        ),
        (
            ComputeError::SecurityGroupNotFound { name: "web".into(), project: "p".into() },
            404,
            "Security group web not found for project p.",
        ),
        (ComputeError::QuotaExceeded("Quota exceeded for ram".into()), 403, "Quota exceeded for ram"),
        (
            ComputeError::NotDelivered(crate::bus::BusError::Closed),
            503,
            "The compute service did not take the request: the message bus is closed",
        ),
        (ComputeError::Db(DbError::NotFound("gone".into())), 404, "gone"),
        (ComputeError::Refused(ApiError::forbidden("policy")), 403, "policy"),
    ];
    for (error, status, text) in cases {
        let e = ApiError::from(error);
        assert_eq!((e.status.as_u16(), e.message.as_str()), (status, text));
    }
}

/// An auth for `project` without a token (the compute API takes the caller as given).
fn caller(project: &str, is_admin: bool) -> Auth {
    Auth {
        context: Context {
            request_id: Context::new_request_id(),
            user_id: Some("u".into()),
            project_id: Some(project.into()),
            is_admin,
            ..Context::default()
        },
        user_name: "u".into(),
        project_name: "p".into(),
    }
}

#[tokio::test]
async fn the_state_table_refuses_with_nova_s_409_and_nothing_changes() {
    let c = Cloud::new();
    let inst = c.state.db.with(|db| {
        let new = crate::db::instances::tests::new_instance(db, "vm");
        db.create_instance(&new).unwrap()
    });
    let api = ComputeApi::new(&c.state);
    let actions = || c.state.db.with(|db| db.list_instance_actions(&inst.uuid, &Default::default())).unwrap().len();
    let created = actions();
    let owner = caller(&inst.project_id, false);
    // Still building (and scheduling): stop is not allowed yet, in nova's words (which name the
    // task when one runs), and no action is recorded.
    let e = api.begin_action(&owner, &inst, ServerAction::Stop).unwrap_err();
    let expected = format!("Cannot 'stop' instance {} while it is in task_state scheduling", inst.uuid);
    assert_eq!(e.to_string(), expected);
    assert_eq!(ApiError::from(e).status, StatusCode::CONFLICT);
    assert_eq!(actions(), created);

    // Active: the first stop takes it, a second one meets the task it set.
    let u = InstanceUpdate { vm_state: Some(VmState::Active), task_state: Some(None), ..Default::default() };
    c.state.db.with(|db| db.update_instance(&inst.uuid, &u)).unwrap().unwrap();
    let stopping = api.begin_action(&owner, &inst, ServerAction::Stop).unwrap();
    assert_eq!(stopping.task_state, Some(TaskState::PoweringOff));
    let e = api.begin_action(&owner, &inst, ServerAction::Start).unwrap_err();
    let expected = format!("Cannot 'start' instance {} while it is in task_state powering-off", inst.uuid);
    assert_eq!(e.to_string(), expected);
    assert_eq!(actions(), created + 1, "one stop recorded, the refused start not");

    // Another project does not see the server at all.
    let stranger = caller("someone-else", false);
    let e = api.action(&stranger, &inst.uuid, Action::Stop).await.unwrap_err();
    assert!(matches!(e, ComputeError::InstanceNotFound(_)), "{e}");
    // No compute host: the action is refused before any state changes.
    let e = api.action(&owner, &inst.uuid, Action::Reboot { hard: true }).await.unwrap_err();
    assert!(matches!(e, ComputeError::HostUnavailable { action: "reboot", .. }), "{e}");
}

#[test]
fn issue_16_action_bodies_are_checked_as_nova_s_schemas() {
    let at = |b: Value, v: u32| Action::parse(&b, Microversion(v));
    for (key, action) in [
        ("pause", Action::Pause),
        ("unpause", Action::Unpause),
        ("suspend", Action::Suspend),
        ("resume", Action::Resume),
    ] {
        assert_eq!(at(json!({ key: null }), 1).unwrap(), action);
        assert_eq!(action.name(), key);
    }
    // lock: anything before 2.73, where nova's schema has no properties.
    assert_eq!(at(json!({"lock": {"locked_reason": "x"}}), 72).unwrap(), Action::Lock { reason: None });
    assert_eq!(at(json!({"lock": null}), 73).unwrap(), Action::Lock { reason: None });
    assert_eq!(
        at(json!({"lock": {"locked_reason": "maintenance"}}), 73).unwrap(),
        Action::Lock { reason: Some("maintenance".into()) }
    );
    let refused = |b: Value, v: u32| ApiError::from(at(b, v).unwrap_err());
    let e = refused(json!({"lock": {"reason": "x"}}), 73);
    assert_eq!(
        (e.status, e.message.as_str()),
        (StatusCode::BAD_REQUEST, "Additional properties are not allowed ('reason' was unexpected)")
    );
    assert_eq!(refused(json!({"lock": {"locked_reason": ""}}), 73).status, StatusCode::BAD_REQUEST);
    assert!(refused(json!({"lock": {"locked_reason": "x".repeat(256)}}), 73).message.contains("too long"));
    assert!(refused(json!({"lock": {"locked_reason": 5}}), 73).message.contains("is not of type 'string'"));
    assert!(refused(json!({"lock": "why"}), 73).message.contains("is not of type ['object', 'null']"));
    assert_eq!(at(json!({"unlock": null}), 90).unwrap(), Action::Unlock);
    assert_eq!(at(json!({"restore": null}), 1).unwrap(), Action::Restore);
    assert_eq!(at(json!({"forceDelete": null}), 1).unwrap(), Action::ForceDelete);

    assert_eq!(
        at(json!({"os-resetState": {"state": "error"}}), 1).unwrap(),
        Action::ResetState { state: VmState::Error }
    );
    assert_eq!(
        at(json!({"os-resetState": {"state": "active"}}), 1).unwrap(),
        Action::ResetState { state: VmState::Active }
    );
    let e = refused(json!({"os-resetState": {"state": "stopped"}}), 1);
    assert_eq!(
        e.message,
        "Invalid input for field/attribute state. Value: stopped. 'stopped' is not one of ['active', 'error']"
    );
    assert_eq!(refused(json!({"os-resetState": {}}), 1).message, "'state' is a required property");
    assert_eq!(refused(json!({"os-resetState": null}), 1).status, StatusCode::BAD_REQUEST);

    // trigger_crash_dump exists from 2.17 on, and takes only null.
    assert_eq!(at(json!({"trigger_crash_dump": null}), 17).unwrap(), Action::TriggerCrashDump);
    assert_eq!(refused(json!({"trigger_crash_dump": null}), 16).status, StatusCode::NOT_FOUND);
    assert!(refused(json!({"trigger_crash_dump": {}}), 17).message.contains("is not of type 'null'"));
}

#[tokio::test]
async fn lock_unlock_and_reset_state_as_nova_s_api_does_them() {
    let c = Cloud::new();
    let inst = c.state.db.with(|db| {
        let new = crate::db::instances::tests::new_instance(db, "vm");
        db.create_instance(&new).unwrap()
    });
    let api = ComputeApi::new(&c.state);
    let owner = caller(&inst.project_id, false);
    let admin = caller("admin-project", true);
    let row = || api.get(&admin, &inst.uuid).unwrap();
    let actions = || {
        let list = c.state.db.with(|db| db.list_instance_actions(&inst.uuid, &Default::default())).unwrap();
        list.into_iter().map(|a| a.action).collect::<Vec<_>>()
    };
    let u = InstanceUpdate { vm_state: Some(VmState::Active), task_state: Some(None), ..Default::default() };
    c.state.db.with(|db| db.update_instance(&inst.uuid, &u)).unwrap().unwrap();

    // An admin locks the owner's server, with a reason.
    api.action(&admin, &inst.uuid, Action::Lock { reason: Some("disk check".into()) }).await.unwrap();
    let locked = row();
    assert!(locked.locked);
    assert_eq!((locked.locked_by.as_deref(), locked.locked_reason.as_deref()), (Some("admin"), Some("disk check")));
    assert_eq!(actions().first().map(String::as_str), Some("lock"));
    // The owner is refused every guarded action, in nova's words, and nothing changes.
    for action in [ServerAction::Pause, ServerAction::Suspend, ServerAction::Stop, ServerAction::TriggerCrashDump] {
        let e = api.begin_action(&owner, &locked, action).unwrap_err();
        let e = ApiError::from(e);
        assert_eq!((e.status, e.message.clone()), (StatusCode::CONFLICT, format!("Instance {} is locked", inst.uuid)));
    }
    assert_eq!(row().task_state, None);
    // ... and cannot lift an admin's lock without nova's unlock_override policy.
    let e = ApiError::from(api.action(&owner, &inst.uuid, Action::Unlock).await.unwrap_err());
    assert_eq!(e.status, StatusCode::FORBIDDEN);
    assert_eq!(e.message, "Policy doesn't allow os_compute_api:os-lock-server:unlock:unlock_override to be performed.");
    assert!(row().locked);
    // The admin can act on the locked server, and unlock it.
    let pausing = api.begin_action(&admin, &locked, ServerAction::Pause).unwrap();
    assert_eq!(pausing.task_state, Some(TaskState::Pausing));
    api.action(&admin, &inst.uuid, Action::Unlock).await.unwrap();
    let unlocked = row();
    assert!(!unlocked.locked && unlocked.locked_by.is_none() && unlocked.locked_reason.is_none());

    // The owner locks its own server, then unlocks it itself.
    api.action(&owner, &inst.uuid, Action::Lock { reason: None }).await.unwrap();
    assert_eq!(row().locked_by.as_deref(), Some("owner"));
    api.action(&owner, &inst.uuid, Action::Unlock).await.unwrap();
    assert!(!row().locked);

    // os-resetState: admin only (the stuck pause's task is cleared), refused to the owner.
    let e =
        ApiError::from(api.action(&owner, &inst.uuid, Action::ResetState { state: VmState::Error }).await.unwrap_err());
    assert_eq!(e.status, StatusCode::FORBIDDEN);
    assert_eq!(row().task_state, Some(TaskState::Pausing));
    api.action(&admin, &inst.uuid, Action::ResetState { state: VmState::Error }).await.unwrap();
    let reset = row();
    assert_eq!((reset.vm_state, reset.task_state), (VmState::Error, None));
    assert_eq!(actions().first().map(String::as_str), Some("reset_state"));
    let finished = c.state.db.with(|db| db.list_instance_actions(&inst.uuid, &Default::default())).unwrap();
    assert!(finished[0].finish_time.is_some(), "an API-only action is finished at once: {:?}", finished[0]);
}
