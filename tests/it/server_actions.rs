//! Issue 16's long actions through python-openstackclient: rebuild, resize with confirm and
//! revert (and the confirm window), createImage and createBackup; on the fake driver, and on
//! a real guest under the qemu driver.

use std::time::Duration;

use serde_json::{json, Value};

use crate::clients::{image_file, osc, osc_json, osc_output};
use crate::common::{assert_ok, run, stderr, stdout, TestHome};

/// Polls `server show` until the server is in `want` with no task running.
fn wait(home: &TestHome, server: &str, want: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while std::time::Instant::now() < deadline {
        let s = osc_json(home, &["server", "show", server]);
        if s["status"] == want && s["OS-EXT-STS:task_state"].is_null() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{server} never reached {want}: {}\n{}", osc(home, &["server", "show", server]), home.up_log());
}

/// The flavor's name in `server show` (a dict from 2.47, which the client asks for).
fn flavor(server: &Value) -> &str {
    server["flavor"]["name"].as_str().or_else(|| server["flavor"].as_str()).unwrap_or_default()
}

/// The command's stderr, asserting it failed.
fn refused(home: &TestHome, args: &[&str]) -> String {
    let out = osc_output(home, args);
    assert!(!out.status.success(), "openstack {args:?} should have failed:\n{}", stdout(&out));
    stderr(&out)
}

/// nova's 409 for an action in the wrong vm_state.
fn conflict(home: &TestHome, id: &str, args: &[&str], action: &str, vm_state: &str) {
    let err = refused(home, args);
    let text = format!("Cannot '{action}' instance {id} while it is in vm_state {vm_state}");
    assert!(err.contains(&text) && err.contains("409"), "{args:?}: {err}");
}

/// Runs `code` with openstacksdk's connection `c` to the demo cloud; returns what it raised.
fn sdk(home: &TestHome, code: &str) -> String {
    let script = format!(
        "import openstack\nc = openstack.connect(cloud='novabox')\ntry:\n    {code}\n    print('no error')\nexcept Exception as e:\n    print(e)\n"
    );
    let out = run(std::process::Command::new(crate::clients::venv_bin("python"))
        .env("OS_CLIENT_CONFIG_FILE", home.clouds_yaml())
        .env_remove("OS_CLOUD")
        .args(["-c", &script]));
    assert_ok(&out);
    stdout(&out)
}

fn notifications(home: &TestHome, id: &str) -> Vec<String> {
    let db = rusqlite::Connection::open(home.path().join("novabox.db")).unwrap();
    let mut stmt = db.prepare("SELECT event_type FROM notifications WHERE instance_uuid = ?1 ORDER BY id").unwrap();
    let events = stmt.query_map([id], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
    events
}

fn action_names(home: &TestHome, server: &str) -> Vec<String> {
    let events = osc_json(home, &["server", "event", "list", server]);
    let mut names: Vec<String> =
        events.as_array().unwrap().iter().map(|e| e["Action"].as_str().unwrap_or_default().to_string()).collect();
    names.reverse();
    names
}

/// The last event of the newest instance action of `action`: its name and traceback.
fn last_event(home: &TestHome, id: &str, action: &str) -> (String, String) {
    let db = rusqlite::Connection::open(home.path().join("novabox.db")).unwrap();
    db.query_row(
        "SELECT e.event, coalesce(e.traceback, '') FROM instance_action_events e \
         JOIN instance_actions a ON a.id = e.action_id \
         WHERE a.instance_uuid = ?1 AND a.action = ?2 ORDER BY a.id DESC, e.id DESC LIMIT 1",
        [id, action],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// The message the newest instance action of `action` ended with (None: it succeeded).
fn action_message(home: &TestHome, id: &str, action: &str) -> Option<String> {
    let db = rusqlite::Connection::open(home.path().join("novabox.db")).unwrap();
    db.query_row(
        "SELECT message FROM instance_actions WHERE instance_uuid = ?1 AND action = ?2 ORDER BY id DESC LIMIT 1",
        [id, action],
        |r| r.get(0),
    )
    .unwrap()
}

/// Every action of items 4 to 6 through the client on the fake driver: the states each walks
/// (REBUILD visible while a slow rebuild runs), nova's 409 and 400 texts, the instance actions
/// and notifications, a resize confirmed by the clock past `resize_confirm_window`, a snapshot
/// with nova's properties that boots, and backups rotated.
#[test]
fn openstackclient_rebuild_resize_snapshot_and_backup_on_the_fake_driver() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    home.edit_config(&[
        ("heartbeat_secs = 10", "heartbeat_secs = 1"),
        ("fake_delay_ms = 0", "fake_delay_ms = 3000"),
        ("resize_confirm_window = 0", "resize_confirm_window = 3600"),
    ]);
    // `--faults` for `novabox clock advance`.
    let _stack = home.up(&["--faults"]);
    let file = image_file(&home);
    let file = file.to_str().unwrap();
    osc(&home, &["image", "create", "--file", file, "--disk-format", "raw", "img"]);
    osc(&home, &["image", "create", "--file", file, "--disk-format", "raw", "img2"]);
    let img2 = osc_json(&home, &["image", "show", "img2"])["id"].as_str().unwrap().to_string();
    let vm = osc_json(
        &home,
        &["server", "create", "--image", "img", "--flavor", "m1.nano", "--nic", "none", "--wait", "vm"],
    );
    let id = vm["id"].as_str().unwrap().to_string();

    // Rebuild: REBUILD while it runs, then the new image, name and metadata, same id.
    // nova answers with the server as it is now: REBUILD, task rebuilding.
    let during =
        osc_json(&home, &["server", "rebuild", "--image", "img2", "--name", "vm2", "--property", "role=db", &id]);
    assert_eq!(
        (during["status"].as_str(), during["OS-EXT-STS:task_state"].as_str()),
        (Some("REBUILD"), Some("rebuilding")),
        "{during}"
    );
    assert!(during["adminPass"].as_str().is_some_and(|p| !p.is_empty()), "{during}");
    let rebuilt = wait(&home, &id, "ACTIVE");
    assert_eq!((rebuilt["id"].as_str(), rebuilt["name"].as_str()), (Some(id.as_str()), Some("vm2")));
    assert!(rebuilt["image"].as_str().is_some_and(|i| i.contains(&img2)), "{rebuilt}");
    assert_eq!(rebuilt["properties"], json!({"role": "db"}), "{rebuilt}");
    let console = osc(&home, &["console", "log", "show", &id]);
    assert!(console.contains(&format!("rebuilt from image {img2}")) && console.contains("hostname: vm"), "{console}");
    // A stopped server is rebuilt and stays off; a paused one cannot be.
    osc(&home, &["server", "stop", &id]);
    wait(&home, &id, "SHUTOFF");
    osc(&home, &["server", "rebuild", &id]);
    assert_eq!(wait(&home, &id, "SHUTOFF")["OS-EXT-STS:power_state"], 4);
    osc(&home, &["server", "start", &id]);
    wait(&home, &id, "ACTIVE");
    osc(&home, &["server", "pause", &id]);
    wait(&home, &id, "PAUSED");
    // The client checks the status itself before a rebuild; openstacksdk lets nova answer.
    let err = sdk(&home, &format!("c.compute.rebuild_server('{id}', image='{img2}')"));
    assert!(err.contains(&format!("Cannot 'rebuild' instance {id} while it is in vm_state paused")), "{err}");
    conflict(&home, &id, &["server", "resize", "--flavor", "m1.tiny", &id], "resize", "paused");
    osc(&home, &["server", "unpause", &id]);
    wait(&home, &id, "ACTIVE");

    // Resize: the same flavor is nova's 400; VERIFY_RESIZE shows the new flavor; revert
    // restores the old one; confirm keeps the new one.
    let err = refused(&home, &["server", "resize", "--flavor", "m1.nano", &id]);
    assert!(err.contains("When resizing, instances must change flavor!") && err.contains("400"), "{err}");
    conflict(&home, &id, &["server", "resize", "confirm", &id], "confirmResize", "active");
    conflict(&home, &id, &["server", "resize", "revert", &id], "revertResize", "active");
    osc(&home, &["server", "resize", "--flavor", "m1.tiny", &id]);
    let verify = wait(&home, &id, "VERIFY_RESIZE");
    assert_eq!((flavor(&verify), verify["OS-EXT-STS:vm_state"].as_str()), ("m1.tiny", Some("resized")));
    conflict(&home, &id, &["server", "image", "create", "--name", "no", &id], "createImage", "resized");
    conflict(&home, &id, &["server", "resize", "--flavor", "m1.small", &id], "resize", "resized");
    osc(&home, &["server", "resize", "revert", &id]);
    let reverted = wait(&home, &id, "ACTIVE");
    assert_eq!(flavor(&reverted), "m1.nano", "{reverted}");
    osc(&home, &["server", "resize", "--flavor", "m1.small", &id]);
    wait(&home, &id, "VERIFY_RESIZE");
    osc(&home, &["server", "resize", "confirm", &id]);
    assert_eq!(flavor(&wait(&home, &id, "ACTIVE")), "m1.small");
    let console = osc(&home, &["console", "log", "show", &id]);
    assert!(console.contains("booted with 2048 MB, 1 vCPUs, a 20 GiB root disk"), "{console}");
    // Shrinking the root disk is refused on the host as nova's libvirt driver refuses it: the
    // server goes back to ACTIVE, its flavor unchanged, the action ends with nova's text.
    osc(&home, &["server", "resize", "--flavor", "m1.tiny", &id]);
    let back = wait(&home, &id, "ACTIVE");
    assert_eq!(flavor(&back), "m1.small", "{back}");
    // nova's action says "Error"; the text is its event's traceback (admin only).
    assert_eq!(action_message(&home, &id, "resize").as_deref(), Some("Error"));
    let (event, traceback) = last_event(&home, &id, "resize");
    assert_eq!(event, "compute_resize_instance");
    assert!(traceback.contains("Resize error: Unable to resize disk down."), "{traceback}");
    // The confirm window: past it by the stack's clock, compute confirms on its own.
    osc(&home, &["server", "resize", "--flavor", "m1.medium", &id]);
    wait(&home, &id, "VERIFY_RESIZE");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(osc_json(&home, &["server", "show", &id])["status"], "VERIFY_RESIZE", "confirmed within the window");
    assert_ok(&run(home.novabox().args(["clock", "advance", "3601"])));
    assert_eq!(flavor(&wait(&home, &id, "ACTIVE")), "m1.medium");

    // Each resize is one of nova's migrations (admin only), newest first.
    let migrations = osc_json(&home, &["--os-cloud", "novabox-admin", "server", "migration", "list", "--server", &id]);
    let rows: Vec<(String, String)> = migrations
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["Status"].as_str().unwrap_or_default().into(), m["Type"].as_str().unwrap_or_default().into()))
        .collect();
    let resize = |status: &str| (status.to_string(), "resize".to_string());
    assert_eq!(rows, [resize("confirmed"), resize("error"), resize("confirmed"), resize("reverted")], "{migrations}");
    assert!(refused(&home, &["server", "migration", "list"]).contains("403"));

    // createImage: queued, then active, with nova's properties; it boots.
    osc(&home, &["server", "image", "create", "--name", "snap", "--property", "purpose=test", "--wait", &id]);
    let snap = osc_json(&home, &["image", "show", "snap"]);
    assert_eq!(snap["status"], "active", "{snap}");
    let props = &snap["properties"];
    for (k, v) in [
        ("image_type", "snapshot"),
        ("instance_uuid", id.as_str()),
        ("base_image_ref", img2.as_str()),
        ("owner_project_name", "demo"),
        ("owner_user_name", "demo"),
        ("purpose", "test"),
    ] {
        assert_eq!(props[k].as_str(), Some(v), "{k}: {snap}");
    }
    assert_eq!(snap["visibility"], "private");
    // min_disk is the server's root disk, as nova's snapshot metadata has it: a smaller
    // flavor cannot boot it.
    assert_eq!(snap["min_disk"], 40, "{snap}");
    let from_snap = osc_json(
        &home,
        &["server", "create", "--image", "snap", "--flavor", "m1.medium", "--nic", "none", "--wait", "from-snap"],
    );
    assert_eq!(from_snap["status"], "ACTIVE", "{from_snap}");
    // Before 2.45 the image's URL is in `Location` (2.45 on: `image_id` in the body, above);
    // openstacksdk reads either.
    osc(&home, &["--os-compute-api-version", "2.1", "server", "image", "create", "--name", "snap21", "--wait", &id]);
    assert_eq!(osc_json(&home, &["image", "show", "snap21"])["status"], "active");
    wait(&home, &id, "ACTIVE");

    // createBackup with rotation 1: the older backup of the type goes.
    osc(&home, &["server", "backup", "create", "--name", "bk1", "--type", "daily", "--rotate", "1", "--wait", &id]);
    wait(&home, &id, "ACTIVE");
    osc(&home, &["server", "backup", "create", "--name", "bk2", "--type", "daily", "--rotate", "1", "--wait", &id]);
    wait(&home, &id, "ACTIVE");
    let mut backups = Vec::new();
    for _ in 0..100 {
        let images = osc_json(&home, &["image", "list", "--long"]);
        backups = images
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["Name"].as_str().is_some_and(|n| n.starts_with("bk")))
            .map(|i| i["Name"].as_str().unwrap().to_string())
            .collect();
        if backups == ["bk2"] {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(backups, ["bk2"], "rotation keeps the newest backup only");
    let bk2 = osc_json(&home, &["image", "show", "bk2"]);
    assert_eq!(
        (bk2["properties"]["image_type"].as_str(), bk2["properties"]["backup_type"].as_str()),
        (Some("backup"), Some("daily"))
    );
    // A bad rotation is nova's 400 naming the field.
    let err = refused(&home, &["server", "backup", "create", "--type", "daily", "--rotate", "-1", &id]);
    assert!(
        err.contains("Invalid input for field/attribute rotation. Value: -1. -1 is less than the minimum of 0"),
        "{err}"
    );

    let names = action_names(&home, &id);
    let want = [
        "create",
        "rebuild",
        "stop",
        "rebuild",
        "start",
        "pause",
        "unpause",
        "resize",
        "revertResize",
        "resize",
        "confirmResize",
        "resize",
        "resize",
        "confirmResize",
        "createImage",
        "createImage",
        "createBackup",
        "createBackup",
    ];
    assert_eq!(names, want);
    let notified = notifications(&home, &id);
    for event in [
        "rebuild.start",
        "rebuild.end",
        "resize.start",
        "resize.end",
        "finish_resize.start",
        "finish_resize.end",
        "resize.confirm.start",
        "resize.confirm.end",
        "resize.revert.start",
        "resize.revert.end",
        "snapshot.start",
        "snapshot.end",
    ] {
        let event = format!("compute.instance.{event}");
        assert!(notified.contains(&event), "{event} missing from {notified:?}");
    }
    osc(&home, &["server", "delete", "--wait", &id, "from-snap"]);
}

/// The guest's MemTotal in kB, from the last `novabox-guest: memory` line of its console.
fn guest_memory_kb(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|l| l.split("novabox-guest: memory ").nth(1))
        .filter_map(|kb| kb.trim().parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no memory line on the console:\n{console}"))
}

/// The size in sectors the guest saw its root disk (vda) at, at its last boot.
fn guest_root_sectors(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|l| l.split("novabox-guest: disk vda ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no vda line on the console:\n{console}"))
}

/// A real guest under TCG through python-openstackclient: after a rebuild the console shows it
/// booting again; after a resize it sees the new RAM and root disk, and a revert gives back
/// the old ones; a snapshot of it (the test image's kernel and ramdisk inherited) boots.
#[test]
fn openstackclient_rebuild_resize_and_snapshot_a_real_guest_needs_qemu() {
    use crate::guests::{deb_cache, require_qemu, wait_console, Up};
    require_qemu();
    let home = TestHome::new();
    let out = run(home
        .init_cmd(&["--driver", "qemu", "--bus", "local", "--accel", "tcg", "--network-mode", "user"])
        .env("NOVABOX_DEB_CACHE", deb_cache()));
    assert_ok(&out);
    assert!(
        stdout(&out).contains(" tiny (test guest"),
        "the test guest was not imported:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    home.edit_config(&[("heartbeat_secs = 10", "heartbeat_secs = 1")]);
    let up = Up::start(&home);
    osc(
        &home,
        &["--os-cloud", "novabox-admin", "flavor", "create", "--ram", "768", "--disk", "2", "--vcpus", "2", "r.big"],
    );
    let vm = osc_json(
        &home,
        &["server", "create", "--image", "tiny", "--flavor", "m1.tiny", "--nic", "none", "--wait", "vm"],
    );
    let id = vm["id"].as_str().unwrap().to_string();
    let first = wait_console(&home, "vm", "novabox-guest: ready", 1);
    let small_kb = guest_memory_kb(&first);
    assert!((256 * 1024..512 * 1024).contains(&small_kb), "m1.tiny has 512 MB: {small_kb} kB");
    assert_eq!(guest_root_sectors(&first), 2 * 1024 * 1024, "a 1 GiB root disk");

    // Rebuild: the same server boots again from a fresh root disk.
    osc(&home, &["server", "rebuild", "--image", "tiny", "--wait", &id]);
    wait(&home, &id, "ACTIVE");
    let again = wait_console(&home, "vm", "novabox-guest: ready", 2);
    assert_eq!(again.matches("novabox-guest: init reached").count(), 2, "{again}");
    assert_eq!(crate::guests::qemu_of(&id).len(), 1, "one qemu after a rebuild\n{}", up.log());

    // Resize: the guest sees the new RAM and the grown root disk; revert gives back the old.
    osc(&home, &["server", "resize", "--flavor", "r.big", &id]);
    wait(&home, &id, "VERIFY_RESIZE");
    let resized = wait_console(&home, "vm", "novabox-guest: ready", 3);
    let big_kb = guest_memory_kb(&resized);
    assert!(big_kb > small_kb + 200 * 1024, "r.big has 768 MB: {big_kb} kB, before {small_kb} kB");
    assert_eq!(guest_root_sectors(&resized), 4 * 1024 * 1024, "the root disk grown to 2 GiB");
    osc(&home, &["server", "resize", "revert", &id]);
    assert_eq!(flavor(&wait(&home, &id, "ACTIVE")), "m1.tiny");
    let reverted = wait_console(&home, "vm", "novabox-guest: ready", 4);
    assert_eq!(guest_memory_kb(&reverted), small_kb, "the old RAM after a revert");
    assert_eq!(guest_root_sectors(&reverted), 2 * 1024 * 1024, "the old root disk after a revert");
    assert!(!home.path().join("instances").join(&id).join("resize-kept").exists());

    // Snapshot while it runs: a qcow2 image with the kernel and ramdisk of the test image; a
    // server booted from it boots.
    osc(&home, &["server", "image", "create", "--name", "snap", "--wait", &id]);
    let snap = osc_json(&home, &["image", "show", "snap"]);
    assert_eq!((snap["status"].as_str(), snap["disk_format"].as_str()), (Some("active"), Some("qcow2")), "{snap}");
    assert!(snap["properties"]["kernel_id"].is_string() && snap["properties"]["ramdisk_id"].is_string(), "{snap}");
    assert_eq!(wait(&home, &id, "ACTIVE")["OS-EXT-STS:power_state"], 1, "the guest runs on after its snapshot");
    let leftovers: Vec<_> = std::fs::read_dir(home.path().join("instances").join(&id))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("snapshot-"))
        .collect();
    assert!(leftovers.is_empty(), "the snapshot's copy is removed once stored");
    osc(&home, &["server", "create", "--image", "snap", "--flavor", "m1.tiny", "--nic", "none", "--wait", "from-snap"]);
    let booted = wait_console(&home, "from-snap", "novabox-guest: ready", 1);
    assert!(booted.contains("novabox-guest: init reached"), "{booted}");

    osc(&home, &["server", "delete", "--wait", "vm", "from-snap"]);
    drop(up);
}

/// A `novabox fault add` rule for this home.
fn fault(home: &TestHome, args: &[&str]) {
    assert_ok(&run(home.novabox().args(["fault", "add"]).args(args)));
}

/// Polls until the server has task `task` (held there by a delay rule).
fn wait_task(home: &TestHome, server: &str, task: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        if osc_json(home, &["server", "show", server])["OS-EXT-STS:task_state"] == task {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{server} never in task {task}: {}\n{}", osc(home, &["server", "show", server]), home.up_log());
}

/// kill -9 of `up` in the middle of a rebuild, a resize and a snapshot (each held at a step
/// by a delay rule), then `up` again: compute's `init_host` settles each as nova's
/// `_init_instance` does. No server stays in a task state, the resize is reverted (old
/// flavor, migration `error`), the rebuild is ERROR with its fault, the snapshot's image is
/// gone, and every guest runs again.
#[test]
fn kill9_during_rebuild_resize_and_snapshot_is_settled_at_restart() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    home.edit_config(&[("heartbeat_secs = 10", "heartbeat_secs = 1")]);
    let stack = home.up(&["--faults"]);
    let file = image_file(&home);
    osc(&home, &["image", "create", "--file", file.to_str().unwrap(), "--disk-format", "raw", "img"]);
    for name in ["rb", "rs", "sn"] {
        osc(&home, &["server", "create", "--image", "img", "--flavor", "m1.nano", "--nic", "none", "--wait", name]);
    }
    let id = |name: &str| osc_json(&home, &["server", "show", name])["id"].as_str().unwrap().to_string();
    let (rb, rs, sn) = (id("rb"), id("rs"), id("sn"));
    fault(&home, &["conductor", "instance_volumes", "--server", "^rb$", "--delay", "120", "--times", "1"]);
    fault(&home, &["conductor", "migration_status", "--server", "^rs$", "--delay", "120", "--times", "1"]);
    fault(&home, &["conductor", "image_upload", "--delay", "120", "--times", "1"]);
    osc(&home, &["server", "rebuild", "rb"]);
    osc(&home, &["server", "resize", "--flavor", "m1.tiny", "rs"]);
    osc(&home, &["server", "image", "create", "--name", "held", "sn"]);
    wait_task(&home, "rb", "rebuild_block_device_mapping");
    wait_task(&home, "rs", "resize_migrating");
    wait_task(&home, "sn", "image_uploading");
    assert_eq!(osc_json(&home, &["image", "show", "held"])["status"], "queued");
    stack.kill9();

    let _stack = home.up(&["--faults"]);
    let rebuilt = wait(&home, &rb, "ERROR");
    assert!(rebuilt["fault"].to_string().contains("restarted while this instance was being rebuilt"), "{rebuilt}");
    let resized = wait(&home, &rs, "ACTIVE");
    assert_eq!(flavor(&resized), "m1.nano", "the resize was reverted: {resized}");
    assert_eq!(resized["OS-EXT-STS:power_state"], 1);
    let snapped = wait(&home, &sn, "ACTIVE");
    assert_eq!(snapped["OS-EXT-STS:power_state"], 1);
    let images = osc(&home, &["image", "list", "-f", "value", "-c", "Name"]);
    assert!(!images.lines().any(|n| n == "held"), "the cut-off snapshot's image is gone: {images}");
    let db = rusqlite::Connection::open(home.path().join("novabox.db")).unwrap();
    let status: String = db
        .query_row("SELECT status FROM migrations WHERE instance_uuid = ?1 ORDER BY id DESC", [&rs], |r| r.get(0))
        .unwrap();
    assert_eq!(status, "error");
    let busy: i64 = db
        .query_row("SELECT count(*) FROM instances WHERE deleted = 0 AND task_state IS NOT NULL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0, "no server stays in a task state");
    let saving: i64 = db
        .query_row("SELECT count(*) FROM images WHERE status IN ('saving', 'queued') AND deleted = 0", [], |r| r.get(0))
        .unwrap();
    assert_eq!(saving, 0, "no image is left queued or saving");
    // The rebuild can be done again from ERROR, and the resize again.
    osc(&home, &["server", "rebuild", &rb]);
    wait(&home, &rb, "ACTIVE");
    osc(&home, &["server", "resize", "--flavor", "m1.tiny", &rs]);
    wait(&home, &rs, "VERIFY_RESIZE");
    osc(&home, &["server", "delete", "--wait", &rb, &rs, &sn]);
}
