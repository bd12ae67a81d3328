//! Standard OpenStack clients, unchanged, against `novabox up`: python-openstackclient and an
//! openstacksdk script, installed from PyPI by `scripts/install-clients`.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;

pub(crate) fn venv_bin(name: &str) -> PathBuf {
    let p = manifest_dir().join(".build/venv/bin").join(name);
    assert!(p.exists(), "{} is missing: run scripts/install-clients (scripts/test does)", p.display());
    p
}

pub(crate) fn image_file(home: &TestHome) -> PathBuf {
    let p = home.path().join("disk.raw");
    let bytes: Vec<u8> = (0..1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    std::fs::write(&p, bytes).unwrap();
    p
}

/// `openstack --os-cloud novabox args..` against this home, whatever its outcome.
pub(crate) fn osc_output(home: &TestHome, args: &[&str]) -> std::process::Output {
    run(Command::new(venv_bin("openstack"))
        .env("OS_CLIENT_CONFIG_FILE", home.clouds_yaml())
        .env_remove("OS_CLOUD")
        .args(["--os-cloud", "novabox"])
        .args(args))
}

pub(crate) fn osc(home: &TestHome, args: &[&str]) -> String {
    let out = osc_output(home, args);
    assert!(
        out.status.success(),
        "openstack {args:?} failed:\n{}\n{}\nstack log:\n{}",
        stdout(&out),
        stderr(&out),
        home.up_log()
    );
    stdout(&out)
}

pub(crate) fn osc_json(home: &TestHome, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-f", "json"]);
    let text = osc(home, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("openstack {args:?}: not JSON ({e}): {text}"))
}

fn wait_status(home: &TestHome, name: &str, want: &str) {
    for _ in 0..300 {
        let s = osc_json(home, &["server", "show", name]);
        if s["status"] == want {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{name} never reached {want}");
}

#[test]
fn openstackclient_flow_on_the_local_bus() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let _stack = home.up(&[]);
    let file = image_file(&home);

    let flavors = osc_json(&home, &["flavor", "list"]);
    assert!(flavors.as_array().unwrap().iter().any(|f| f["Name"] == "m1.nano"), "{flavors}");
    let image = osc_json(
        &home,
        &[
            "image",
            "create",
            "--file",
            file.to_str().unwrap(),
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "osc-image",
        ],
    );
    assert_eq!(image["status"], "active", "{image}");
    let images = osc_json(&home, &["image", "list"]);
    assert!(images.as_array().unwrap().iter().any(|i| i["Name"] == "osc-image"), "{images}");
    let networks = osc_json(&home, &["network", "list"]);
    assert!(networks.as_array().unwrap().iter().any(|n| n["Name"] == "private"), "{networks}");
    let key = osc(&home, &["keypair", "create", "osc-key"]);
    assert!(key.contains("PRIVATE KEY"), "{key}");

    let server = osc_json(
        &home,
        &[
            "server",
            "create",
            "--image",
            "osc-image",
            "--flavor",
            "m1.nano",
            "--network",
            "private",
            "--key-name",
            "osc-key",
            "--wait",
            "vm1",
        ],
    );
    assert_eq!(server["status"], "ACTIVE", "{server}");
    let list = osc_json(&home, &["server", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let shown = osc_json(&home, &["server", "show", "vm1"]);
    assert!(shown["addresses"].to_string().contains("private"), "{shown}");
    assert_eq!(shown["key_name"], "osc-key");

    let console = osc(&home, &["console", "log", "show", "vm1"]);
    assert!(console.contains("vm1"), "{console}");

    osc(&home, &["server", "stop", "vm1"]);
    wait_status(&home, "vm1", "SHUTOFF");
    osc(&home, &["server", "start", "vm1"]);
    wait_status(&home, "vm1", "ACTIVE");
    osc(&home, &["server", "delete", "--wait", "vm1"]);
    let list = osc_json(&home, &["server", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
}

#[test]
fn openstacksdk_flow_on_rabbitmq() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "rabbitmq"]));
    let stack = home.up(&[]);
    assert_eq!(stack.ready["bus"], "rabbitmq");
    let file = image_file(&home);
    let script = manifest_dir().join("tests/clients/sdk_flow.py");
    let out = run(Command::new(venv_bin("python"))
        .env("OS_CLIENT_CONFIG_FILE", home.clouds_yaml())
        .arg(script)
        .arg("novabox")
        .arg(&file));
    assert!(
        out.status.success(),
        "sdk flow failed:\n{}\n{}\nstack log:\n{}",
        stdout(&out),
        stderr(&out),
        home.up_log()
    );
    assert!(stdout(&out).contains("sdk flow: ok"));
    let status = stack.stop();
    assert!(status.success(), "up did not exit cleanly: {status:?}");
    // The private broker (and its epmd) went with the stack.
    for entry in std::fs::read_dir(home.path().join("run")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "pid") {
            if let Ok(Some(pid)) = novabox::supervise::read_pid_file(&path) {
                assert!(!novabox::supervise::is_alive(pid), "{} still running", path.display());
            }
        }
    }
}

fn wait_volume(home: &TestHome, name: &str, want: &str) -> serde_json::Value {
    for _ in 0..300 {
        let v = osc_json(home, &["volume", "show", name]);
        if v["status"] == want {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("volume {name} never reached {want}");
}

/// python-openstackclient's volume commands (through openstacksdk's block-storage service)
/// and `server add/remove volume` (compute's os-volume_attachments).
#[test]
fn openstackclient_volumes() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let _stack = home.up(&[]);
    let file = image_file(&home);
    osc(&home, &["image", "create", "--file", file.to_str().unwrap(), "--disk-format", "raw", "osc-image"]);
    let server = osc_json(
        &home,
        &["server", "create", "--image", "osc-image", "--flavor", "m1.nano", "--network", "private", "--wait", "vm1"],
    );
    assert_eq!(server["status"], "ACTIVE", "{server}");

    let created = osc_json(&home, &["volume", "create", "--size", "1", "--description", "from osc", "osc-vol"]);
    assert_eq!(created["size"], 1, "{created}");
    let shown = wait_volume(&home, "osc-vol", "available");
    assert_eq!(shown["description"], "from osc");
    let list = osc_json(&home, &["volume", "list"]);
    assert!(list.as_array().unwrap().iter().any(|v| v["Name"] == "osc-vol" && v["Size"] == 1), "{list}");

    osc(&home, &["server", "add", "volume", "vm1", "osc-vol"]);
    let shown = wait_volume(&home, "osc-vol", "in-use");
    assert!(shown["attachments"].to_string().contains(server["id"].as_str().unwrap()), "{shown}");

    osc(&home, &["server", "remove", "volume", "vm1", "osc-vol"]);
    wait_volume(&home, "osc-vol", "available");
    osc(&home, &["volume", "delete", "osc-vol"]);
    let list = osc_json(&home, &["volume", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    osc(&home, &["server", "delete", "--wait", "vm1"]);
}

/// The rows of `openstack quota show` / `limits show` (`-f json`: a list of one object per
/// resource), by the resource's name.
fn row<'a>(rows: &'a serde_json::Value, key: &str, name: &str) -> &'a serde_json::Value {
    rows.as_array().and_then(|a| a.iter().find(|r| r[key] == name)).unwrap_or_else(|| panic!("no {name} among {rows}"))
}

/// What a new user tries first about quotas and volumes (issue 17, item 6): `quota show`
/// with and without usage and `limits show` read nova, cinder and neutron together; the volume
/// type and zone lists; and a quota set by the admin holds on `volume create`.
#[test]
fn openstackclient_quotas_limits_types_and_zones() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let _stack = home.up(&[]);

    let quotas = osc_json(&home, &["quota", "show"]);
    assert_eq!(row(&quotas, "Resource", "instances")["Limit"], 10, "nova's");
    assert_eq!(row(&quotas, "Resource", "volumes")["Limit"], 10, "cinder's");
    assert_eq!(row(&quotas, "Resource", "gigabytes")["Limit"], 1000);
    assert_eq!(row(&quotas, "Resource", "per-volume-gigabytes")["Limit"], -1);
    assert_eq!(row(&quotas, "Resource", "ports")["Limit"], 500, "neutron's");

    let created = osc_json(&home, &["volume", "create", "--size", "2", "first"]);
    assert_eq!(created["size"], 2, "{created}");
    wait_volume(&home, "first", "available");
    let usage = osc_json(&home, &["quota", "show", "--usage"]);
    let volumes = row(&usage, "Resource", "volumes");
    assert_eq!((volumes["Limit"].as_i64(), volumes["In Use"].as_i64()), (Some(10), Some(1)), "{volumes}");
    assert_eq!(row(&usage, "Resource", "gigabytes")["In Use"], 2);

    let limits = osc_json(&home, &["limits", "show", "--absolute"]);
    assert_eq!(row(&limits, "Name", "max_total_volumes")["Value"], 10, "{limits}");
    assert_eq!(row(&limits, "Name", "total_gigabytes_used")["Value"], 2);
    assert_eq!(row(&limits, "Name", "max_total_instances")["Value"], 10);

    let types = osc_json(&home, &["volume", "type", "list"]);
    assert_eq!(types.as_array().map(Vec::len), Some(1), "{types}");
    assert_eq!(types[0]["Name"], "__DEFAULT__");
    let zones = osc_json(&home, &["availability", "zone", "list", "--volume"]);
    assert_eq!(zones[0]["Zone Name"], "nova", "{zones}");
    assert_eq!(zones[0]["Zone Status"], "available");

    // The admin allows demo two volumes; the third is refused with cinder's 413 and words.
    let admin = |args: &[&str]| {
        let mut all = vec!["--os-cloud", "novabox-admin"];
        all.extend(args);
        osc(&home, &all)
    };
    admin(&["quota", "set", "--volumes", "2", "demo"]);
    assert_eq!(row(&osc_json(&home, &["quota", "show"]), "Resource", "volumes")["Limit"], 2);
    osc_json(&home, &["volume", "create", "--size", "1", "second"]);
    let out = osc_output(&home, &["volume", "create", "--size", "1", "third"]);
    assert!(!out.status.success(), "over quota, yet: {}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("413"), "{err}");
    assert!(err.contains("Maximum number of volumes allowed (2) exceeded for quota 'volumes'."), "{err}");
    let names: Vec<String> = osc_json(&home, &["volume", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(!names.contains(&"third".to_string()), "{names:?}");
}

/// `openstack server add/remove security group` (compute's addSecurityGroup and
/// removeSecurityGroup actions): the group follows onto the server's port, and the refusals
/// are nova's.
#[test]
fn openstackclient_server_security_groups() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let _stack = home.up(&[]);
    let file = image_file(&home);
    osc(&home, &["image", "create", "--file", file.to_str().unwrap(), "--disk-format", "raw", "osc-image"]);
    for (name, net) in [("vm1", "private"), ("bare", "none")] {
        let mut args = vec!["server", "create", "--image", "osc-image", "--flavor", "m1.nano", "--wait"];
        args.extend(if net == "none" { ["--nic", "none"] } else { ["--network", net] });
        args.push(name);
        assert_eq!(osc_json(&home, &args)["status"], "ACTIVE");
    }
    let web = osc_json(&home, &["security", "group", "create", "web"]);
    let web_id = web["id"].as_str().unwrap().to_string();
    let port_groups = || -> Vec<String> {
        let ports = osc_json(&home, &["port", "list", "--server", "vm1"]);
        let id = ports[0]["ID"].as_str().expect("vm1 has a port").to_string();
        let port = osc_json(&home, &["port", "show", &id]);
        port["security_group_ids"].as_array().unwrap().iter().map(|g| g.as_str().unwrap().to_string()).collect()
    };
    let server_groups = || osc_json(&home, &["server", "show", "vm1"])["security_groups"].to_string();

    osc(&home, &["server", "add", "security", "group", "vm1", "web"]);
    assert!(port_groups().contains(&web_id), "{:?}", port_groups());
    assert!(server_groups().contains("web") && server_groups().contains("default"), "{}", server_groups());

    let refused = |args: &[&str]| -> String {
        let out = osc_output(&home, args);
        assert!(!out.status.success(), "openstack {args:?} should have failed:\n{}", stdout(&out));
        stderr(&out)
    };
    let err = refused(&["server", "add", "security", "group", "vm1", "web"]);
    assert!(err.contains("already associated"), "{err}");
    let err = refused(&["server", "add", "security", "group", "bare", "web"]);
    assert!(err.contains("port_security_enabled"), "{err}");

    osc(&home, &["server", "remove", "security", "group", "vm1", "web"]);
    assert!(!port_groups().contains(&web_id), "{:?}", port_groups());
    assert!(!server_groups().contains("web"), "{}", server_groups());
    let err = refused(&["server", "remove", "security", "group", "vm1", "web"]);
    assert!(err.contains("not associated"), "{err}");
    osc(&home, &["server", "delete", "--wait", "vm1", "bare"]);
}

/// `novabox`'s own read-only lists (`image|flavor|network|keypair|volume list|show`) show what
/// the full client sees, so `novabox` alone finds what `server create` needs.
#[test]
fn novabox_lists_and_shows_what_openstackclient_lists() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let stack = home.up(&[]);
    let file = image_file(&home);
    osc(&home, &["image", "create", "--file", file.to_str().unwrap(), "--disk-format", "raw", "img1"]);
    osc(&home, &["keypair", "create", "key1"]);
    osc(&home, &["volume", "create", "--size", "1", "vol1"]);
    wait_volume(&home, "vol1", "available");
    let novabox = |args: &[&str]| {
        let out = run(home.novabox().args(args));
        assert_ok(&out);
        stdout(&out)
    };
    let novabox_json = |args: &[&str]| -> serde_json::Value {
        let text = novabox(&[args, &["--json"]].concat());
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("novabox {args:?}: not JSON ({e}): {text}"))
    };

    // The names found through novabox's own lists boot a server.
    let out = novabox(&[
        "server",
        "create",
        "vm1",
        "--image",
        "img1",
        "--flavor",
        "m1.nano",
        "--network",
        "private",
        "--key-name",
        "key1",
        "--wait",
    ]);
    assert!(out.contains("ACTIVE"), "{out}");
    osc(&home, &["server", "add", "volume", "vm1", "vol1"]);
    wait_volume(&home, "vol1", "in-use");
    let server_id = osc_json(&home, &["server", "show", "vm1"])["id"].as_str().unwrap().to_string();

    // (resource, the name to find, novabox's key field, openstackclient's column of it)
    let kinds = [
        ("image", "img1", "id", "ID"),
        ("flavor", "m1.nano", "id", "ID"),
        ("network", "private", "id", "ID"),
        ("keypair", "key1", "name", "Name"),
        ("volume", "vol1", "id", "ID"),
    ];
    for (kind, name, key, column) in kinds {
        let mut ours: Vec<String> = novabox_json(&[kind, "list"])
            .as_array()
            .unwrap_or_else(|| panic!("{kind} list is not a list"))
            .iter()
            .map(|i| i[key].as_str().unwrap().to_string())
            .collect();
        let mut theirs: Vec<String> = osc_json(&home, &[kind, "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i[column].as_str().unwrap().to_string())
            .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{kind} list");
        assert!(!ours.is_empty(), "no {kind} at all");

        let table = novabox(&[kind, "list"]);
        assert!(table.lines().skip(1).any(|l| l.split("  ").any(|cell| cell.trim() == name)), "{kind}:\n{table}");

        // Shown by name and by id, the same object as openstackclient's.
        let shown = novabox_json(&[kind, "show", name]);
        let id = shown[key].as_str().unwrap_or_else(|| panic!("{kind} show: {shown}")).to_string();
        assert_eq!(shown["name"], name, "{shown}");
        assert_eq!(osc_json(&home, &[kind, "show", name])[key], shown[key], "{kind} show");
        assert_eq!(novabox_json(&[kind, "show", &id])[key], shown[key], "{kind} show by id");
        let table = novabox(&[kind, "show", name]);
        assert!(table.lines().any(|l| l.starts_with("name ") && l.trim_end().ends_with(name)), "{table}");

        let out = run(home.novabox().args([kind, "show", "no-such-thing"]));
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(stderr(&out).contains(&format!("no {kind} named or with id no-such-thing")), "{}", stderr(&out));
    }
    let volumes = novabox(&["volume", "list"]);
    assert!(volumes.contains("in-use") && volumes.contains(&format!("{server_id} on /dev/")), "{volumes}");

    // Glance pages its list by 25: the thin client follows `next` to the end.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let demo = stack.client("demo").await;
        for i in 0..30 {
            let body =
                serde_json::json!({"name": format!("queued-{i}"), "disk_format": "raw", "container_format": "bare"});
            demo.image(reqwest::Method::POST, "/images", Some(body)).await.unwrap();
        }
    });
    let images = novabox_json(&["image", "list"]);
    assert_eq!(images.as_array().unwrap().len(), 31, "{images}");
    let out = run(home.novabox().args(["image", "show", "queued-29"]));
    assert_ok(&out);
}
