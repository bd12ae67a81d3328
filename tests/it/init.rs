//! `novabox init` and the config: idempotency, bad input, clouds.yaml merging, two homes.

use crate::common::*;

fn sqlite_count(db: &std::path::Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn init_twice_keeps_data_and_passwords() {
    let home = TestHome::new();
    let out = home.init(&["--driver", "fake", "--bus", "local"]);
    assert_ok(&out);
    let db = home.path().join("novabox.db");
    let secrets = std::fs::read_to_string(home.path().join("secrets.toml")).unwrap();
    assert_eq!(sqlite_count(&db, "SELECT count(*) FROM users"), 3);
    assert_eq!(sqlite_count(&db, "SELECT count(*) FROM flavors"), 6);
    // Data a user made must survive a second init.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("INSERT INTO flavors (flavorid, name, memory_mb, vcpus, root_gb, created_at) VALUES ('x', 'mine', 1, 1, 1, 'now')", [])
        .unwrap();
    let config_before = std::fs::read_to_string(home.path().join("novabox.toml")).unwrap();

    // Same flags again (the port flags differ: pass the stored ones back).
    let mut cmd = home.novabox();
    cmd.args(["init", "--yes", "--no-install"]).arg("--clouds-yaml").arg(home.clouds_yaml());
    let out = run(&mut cmd);
    assert_ok(&out);
    assert!(stdout(&out).contains("(kept)"), "{}", stdout(&out));
    assert_eq!(std::fs::read_to_string(home.path().join("secrets.toml")).unwrap(), secrets);
    assert_eq!(std::fs::read_to_string(home.path().join("novabox.toml")).unwrap(), config_before);
    assert_eq!(sqlite_count(&db, "SELECT count(*) FROM users"), 3);
    assert_eq!(sqlite_count(&db, "SELECT count(*) FROM flavors"), 7);
    assert_eq!(sqlite_count(&db, "SELECT count(*) FROM projects"), 4);
}

#[test]
fn changed_flags_need_force_and_force_keeps_the_database() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake"]));
    let port = free_port().to_string();
    let mut cmd = home.novabox();
    cmd.args(["init", "--yes", "--no-install", "--api-port", &port]).arg("--clouds-yaml").arg(home.clouds_yaml());
    let out = run(&mut cmd);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));

    let mut cmd = home.novabox();
    cmd.args(["init", "--yes", "--no-install", "--force", "--driver", "fake", "--api-port", &port])
        .arg("--clouds-yaml")
        .arg(home.clouds_yaml());
    assert_ok(&run(&mut cmd));
    let config = std::fs::read_to_string(home.path().join("novabox.toml")).unwrap();
    assert!(config.contains(&format!("port = {port}")), "{config}");
    assert_eq!(sqlite_count(&home.path().join("novabox.db"), "SELECT count(*) FROM users"), 3);
}

#[test]
fn bad_config_is_refused_with_key_and_file_and_nothing_changes() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake"]));
    let cfg = home.path().join("novabox.toml");
    let broken = "[api]\nprot = 80\n";
    std::fs::write(&cfg, broken).unwrap();
    let db_before = std::fs::read(home.path().join("novabox.db")).unwrap();
    let mut cmd = home.novabox();
    cmd.args(["init", "--yes", "--no-install"]).arg("--clouds-yaml").arg(home.clouds_yaml());
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("prot") && err.contains(cfg.to_str().unwrap()), "{err}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), broken);
    assert_eq!(std::fs::read(home.path().join("novabox.db")).unwrap(), db_before);

    std::fs::write(&cfg, "[compute]\ncpu_allocation_ratio = \"lots\"\n").unwrap();
    let out = run(home.novabox().args(["config", "show"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cpu_allocation_ratio"), "{}", stderr(&out));
}

#[test]
fn newer_database_is_refused_untouched() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake"]));
    let db = home.path().join("novabox.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        c.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let mut cmd = home.novabox();
    cmd.args(["init", "--yes", "--no-install"]).arg("--clouds-yaml").arg(home.clouds_yaml());
    let out = run(&mut cmd);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("newer novabox"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[test]
fn corrupt_database_is_refused_untouched() {
    let home = TestHome::new();
    std::fs::create_dir_all(home.path()).unwrap();
    let db = home.path().join("novabox.db");
    std::fs::write(&db, vec![0x42u8; 8192]).unwrap();
    let out = home.init(&["--driver", "fake"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&db).unwrap(), vec![0x42u8; 8192]);
    assert!(!home.path().join("novabox.toml").exists(), "config written despite the refusal");
}

#[test]
fn clouds_yaml_merge_keeps_other_clouds() {
    let home = TestHome::new();
    let other = "clouds:\n  work:\n    auth:\n      auth_url: https://keystone.example.com/v3\n      username: alice\n";
    std::fs::write(home.clouds_yaml(), other).unwrap();
    assert_ok(&home.init(&["--driver", "fake"]));
    let text = std::fs::read_to_string(home.clouds_yaml()).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(v["clouds"]["work"]["auth"]["username"], "alice");
    assert_eq!(v["clouds"]["novabox"]["auth"]["username"], "demo");
    assert_eq!(v["clouds"]["novabox-admin"]["auth"]["username"], "admin");
    let pw = v["clouds"]["novabox"]["auth"]["password"].as_str().unwrap().to_string();
    assert!(pw.len() >= 16);
    // The database holds only a hash of it.
    let hash: String = rusqlite::Connection::open(home.path().join("novabox.db"))
        .unwrap()
        .query_row("SELECT password_hash FROM users WHERE name = 'demo'", [], |r| r.get(0))
        .unwrap();
    assert!(hash.starts_with("$argon2id$") && !hash.contains(&pw));
}

#[test]
fn unwritable_home_is_a_clear_error() {
    let home = TestHome::new();
    let file = home.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_novabox"));
    cmd.env_remove("NOVABOX_HOME").arg("--home").arg(file.join("home")).args(["init", "--yes", "--no-install"]);
    cmd.arg("--clouds-yaml").arg(home.clouds_yaml());
    let out = run(&mut cmd);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot be created or written"), "{}", stderr(&out));
}

#[test]
fn two_homes_side_by_side() {
    let a = TestHome::new();
    let b = TestHome::new();
    assert_ok(&a.init(&["--driver", "fake"]));
    assert_ok(&b.init(&["--driver", "fake"]));
    let sa = std::fs::read_to_string(a.path().join("secrets.toml")).unwrap();
    let sb = std::fs::read_to_string(b.path().join("secrets.toml")).unwrap();
    assert_ne!(sa, sb, "two homes share secrets");
    let ca = std::fs::read_to_string(a.path().join("novabox.toml")).unwrap();
    let cb = std::fs::read_to_string(b.path().join("novabox.toml")).unwrap();
    assert_ne!(ca, cb, "two homes share ports");
}

#[test]
fn api_port_in_use_is_refused() {
    let home = TestHome::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut cmd = home.novabox();
    cmd.args(["init", "--yes", "--no-install", "--driver", "fake", "--api-port", &port])
        .arg("--clouds-yaml")
        .arg(home.clouds_yaml());
    let out = run(&mut cmd);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot be used"), "{}", stderr(&out));
    assert!(!home.path().join("novabox.toml").exists());
}

#[test]
fn up_on_a_port_taken_after_init_says_why_once() {
    let home = TestHome::new();
    let port = free_port().to_string();
    let mut cmd = home.novabox();
    cmd.args(["init", "--yes", "--no-install", "--driver", "fake", "--bus", "local", "--api-port", &port])
        .arg("--clouds-yaml")
        .arg(home.clouds_yaml());
    assert_ok(&run(&mut cmd));
    let _taken = std::net::TcpListener::bind(format!("127.0.0.1:{port}")).unwrap();
    let out = run(home.novabox().args(["up"]));
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&port), "the message names the port: {err}");
    assert_eq!(err.matches("in use").count(), 1, "the reason is said once: {err}");
}

/// The test guest is built once per user, not once per home: a second new home takes the one
/// a first home built from the per-user cache (`NOVABOX_CACHE_DIR`), without running the
/// build script (seconds of xz), and boots the same kernel and initramfs.
#[test]
fn a_second_home_takes_the_test_guest_from_the_user_cache_needs_qemu() {
    crate::guests::require_qemu();
    let (a, b) = (TestHome::new(), TestHome::new());
    for h in [&a, &b] {
        let out = run(h
            .init_cmd(&["--driver", "qemu", "--bus", "local", "--network-mode", "user"])
            .env("NOVABOX_DEB_CACHE", crate::guests::deb_cache())
            .env(novabox::home::CACHE_ENV, a.cache_dir()));
        assert_ok(&out);
        assert!(stdout(&out).contains("(test guest: kernel "), "{}", stdout(&out));
    }
    let guest = |h: &TestHome| h.path().join("images").join("test-guest");
    assert!(guest(&a).join("build.log").exists(), "the first home built the guest");
    assert!(!guest(&b).join("build.log").exists(), "the second home built the guest again");
    for file in ["vmlinuz", "initrd.img"] {
        assert_eq!(std::fs::read(guest(&a).join(file)).unwrap(), std::fs::read(guest(&b).join(file)).unwrap());
    }
    let kept: Vec<String> = std::fs::read_dir(a.cache_dir().join("test-guest"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 1, "one guest, no temporary left: {kept:?}");
    assert!(std::fs::read_dir(b.cache_dir()).unwrap().next().is_none(), "b's own cache was not used");
}
