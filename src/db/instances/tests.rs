//! The instance queries against a real SQLite database.

use super::*;
use crate::db::{Db, OpenOptions};

pub(crate) fn new_instance(db: &Db, name: &str) -> NewInstance {
    let project = db.ensure_project("p", "").unwrap();
    let (user, _) = db.ensure_user("u", "h", &project).unwrap();
    db.seed_default_flavors().unwrap();
    let f = db.flavor_by_flavorid("42").unwrap().unwrap();
    NewInstance {
        uuid: uuid::Uuid::new_v4().to_string(),
        display_name: name.into(),
        display_description: None,
        hostname: name.into(),
        project_id: project,
        user_id: user,
        availability_zone: None,
        flavor: FlavorSnapshot {
            flavorid: f.flavorid,
            name: f.name,
            memory_mb: f.memory_mb,
            vcpus: f.vcpus,
            root_gb: f.root_gb,
            ephemeral_gb: 0,
            swap: 0,
            extra_specs: BTreeMap::new(),
        },
        image_ref: Some("img".into()),
        kernel_id: None,
        ramdisk_id: None,
        key_name: None,
        key_data: None,
        user_data: None,
        config_drive: false,
        access_ip_v4: None,
        access_ip_v6: None,
        request_id: "req-1".into(),
        auto_disk_config: false,
        metadata: [("k".to_string(), "v".to_string())].into(),
        security_group_ids: vec![],
        tags: vec![],
        block_devices: vec![NewBlockDevice {
            source_type: "image".into(),
            destination_type: "local".into(),
            boot_index: Some(0),
            image_id: Some("img".into()),
            volume_id: None,
            volume_size: None,
            delete_on_termination: true,
        }],
    }
}

#[test]
fn create_update_with_expectations_and_destroy() {
    let t = tempfile::tempdir().unwrap();
    let db = Db::open(&t.path().join("d.db"), OpenOptions::default()).unwrap();
    let n = new_instance(&db, "vm1");
    let i = db.create_instance(&n).unwrap();
    assert_eq!((i.vm_state, i.task_state), (VmState::Building, Some(TaskState::Scheduling)));
    assert_eq!(i.metadata.get("k").map(String::as_str), Some("v"));
    assert_eq!(db.block_devices(&i.uuid).unwrap().len(), 1);

    let u = InstanceUpdate {
        task_state: Some(Some(TaskState::Networking)),
        expected_task_state: Some(vec![Some(TaskState::Scheduling)]),
        ..Default::default()
    };
    let i = db.update_instance(&i.uuid, &u).unwrap().unwrap();
    assert_eq!(i.task_state, Some(TaskState::Networking));
    // The same expectation no longer holds.
    let err = db.update_instance(&i.uuid, &u).unwrap().unwrap_err();
    assert!(matches!(err, UpdateError::UnexpectedState { .. }));

    let done = InstanceUpdate {
        vm_state: Some(VmState::Active),
        task_state: Some(None),
        power_state: Some(PowerState::Running),
        ..Default::default()
    };
    let i = db.update_instance(&i.uuid, &done).unwrap().unwrap();
    assert_eq!(i.task_state, None);
    assert_eq!(db.project_usage(&i.project_id).unwrap(), (1, 1, 64));

    assert!(db.destroy_instance(&i.uuid).unwrap());
    assert!(!db.destroy_instance(&i.uuid).unwrap());
    assert!(db.instance_by_uuid(&i.uuid, false).unwrap().is_none());
    assert_eq!(db.instance_by_uuid(&i.uuid, true).unwrap().unwrap().vm_state, VmState::Deleted);
    assert_eq!(db.update_instance(&i.uuid, &done).unwrap().unwrap_err(), UpdateError::NotFound);
    assert_eq!(db.project_usage(&i.project_id).unwrap(), (0, 0, 0));
}

#[test]
fn list_pages_newest_first() {
    let t = tempfile::tempdir().unwrap();
    let db = Db::open(&t.path().join("d.db"), OpenOptions::default()).unwrap();
    let uuids: Vec<String> =
        (0..5).map(|i| db.create_instance(&new_instance(&db, &format!("vm{i}"))).unwrap().uuid).collect();
    let spec = |marker: Option<&String>| crate::db::listing::ListSpec {
        limit: Some(2),
        marker: marker.cloned(),
        ..Default::default()
    };
    let page = db.list_instances(&InstanceFilter { page: spec(None), ..Default::default() }).unwrap();
    assert_eq!(page.iter().map(|i| i.uuid.clone()).collect::<Vec<_>>(), vec![uuids[4].clone(), uuids[3].clone()]);
    let next = db.list_instances(&InstanceFilter { page: spec(Some(&uuids[3])), ..Default::default() }).unwrap();
    assert_eq!(next[0].uuid, uuids[2]);
    let named = |pattern: &str| -> usize {
        let regex = vec![(InstanceText::DisplayName, pattern.to_string())];
        db.list_instances(&InstanceFilter { regex, ..Default::default() }).unwrap().len()
    };
    assert_eq!(named("vm4"), 1, "a plain name matches anywhere, as before");
    assert_eq!(named("^vm"), 5, "nova's name filter is a regular expression");
    assert_eq!(named("^vm[13]$"), 2);
    assert_eq!(named("^m"), 0);
    assert_eq!(named("m.*2"), 1);
}

#[test]
fn usage_sums_saturate_instead_of_turning_to_float() {
    let t = tempfile::tempdir().unwrap();
    let db = Db::open(&t.path().join("d.db"), OpenOptions::default()).unwrap();
    for name in ["a", "b"] {
        let mut n = new_instance(&db, name);
        // What an older novabox let a flavor hold (issue 14): sums past i64 in SQLite.
        n.flavor.root_gb = i64::MAX;
        n.flavor.ephemeral_gb = i64::MAX;
        n.flavor.vcpus = i64::MAX;
        let i = db.create_instance(&n).unwrap();
        let u = InstanceUpdate { host: Some("h1".into()), ..Default::default() };
        db.update_instance(&i.uuid, &u).unwrap().unwrap();
    }
    assert_eq!(db.host_usage("h1").unwrap(), (i64::MAX, 128, i64::MAX, 2));
    let project = db.ensure_project("p", "").unwrap();
    assert_eq!(db.project_usage(&project).unwrap(), (2, i64::MAX, 128));
    assert_eq!(db.host_usage("nowhere").unwrap(), (0, 0, 0, 0));
}

#[test]
fn instances_made_before_0009_survive_it_and_their_flavor_can_be_deleted() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("d.db");
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        let upto = crate::db::MIGRATIONS.iter().position(|m| m.contains("DROP COLUMN flavor_id")).unwrap();
        let old = rusqlite_migration::Migrations::new(
            crate::db::MIGRATIONS[..upto].iter().map(|m| rusqlite_migration::M::up(m)).collect(),
        );
        old.to_latest(&mut conn).unwrap();
        conn.pragma_update(None, "application_id", crate::db::APPLICATION_ID).unwrap();
        conn.execute_batch(
            r#"INSERT INTO projects (id, name, created_at) VALUES ('p1', 'p', 'x');
            INSERT INTO users (id, name, password_hash, created_at) VALUES ('u1', 'u', 'h', 'x');
            INSERT INTO flavors (id, flavorid, name, memory_mb, vcpus, root_gb, created_at)
                VALUES (7, 'old', 'm1.old', 96, 1, 1, 'x');
            INSERT INTO instances (uuid, display_name, hostname, project_id, user_id, vm_state, flavor_id,
                flavor, memory_mb, vcpus, root_gb, created_at)
                VALUES ('i1', 'vm', 'vm', 'p1', 'u1', 'active', 7,
                '{"flavorid":"old","name":"m1.old","memory_mb":96,"vcpus":1,"root_gb":1,"ephemeral_gb":0,"swap":0}',
                96, 1, 1, 'x');
            INSERT INTO instance_metadata (instance_uuid, key, value) VALUES ('i1', 'k', 'v');"#,
        )
        .unwrap();
    }
    let db = Db::open(&path, OpenOptions::default()).unwrap();
    assert!(db.delete_flavor("old").unwrap(), "a flavor an instance was built from can go");
    let i = db.instance_by_uuid("i1", false).unwrap().unwrap();
    assert_eq!((i.flavor.name.as_str(), i.flavor.memory_mb), ("m1.old", 96));
    assert_eq!(i.metadata.get("k").map(String::as_str), Some("v"), "children of instances are kept");
    assert_eq!(db.project_usage("p1").unwrap(), (1, 1, 96));
}
