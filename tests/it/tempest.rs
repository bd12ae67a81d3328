//! tempest from PyPI (`scripts/install-tempest`) against `novabox up`, configured by
//! `scripts/tempest` as DevStack's `lib/tempest` configures it: dynamic credentials (tempest
//! makes and removes its own projects and users in every class), DevStack's feature flags.
//! What cannot apply is in `tests/tempest/exclude-*.txt`, each line with its reason, and in
//! docs/compatibility.md. Run with `--nocapture` to see tempest's own output.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn script() -> PathBuf {
    manifest_dir().join("scripts/tempest")
}

/// What `scripts/tempest run --summary` wrote.
struct Summary(serde_json::Value);

impl Summary {
    fn count(&self, key: &str) -> u64 {
        self.0[key].as_u64().unwrap_or_else(|| panic!("no {key} in {}", self.0))
    }

    fn passed(&self, test: &str) -> bool {
        self.0["passes"].as_array().is_some_and(|p| p.iter().any(|t| t.as_str().is_some_and(|t| t.starts_with(test))))
    }
}

/// Writes the workspace's tempest.conf from the running stack of `home`.
fn configure(home: &TestHome, ws: &Path) {
    let out = run(Command::new(script())
        .args(["configure", "--workspace"])
        .arg(ws)
        .arg("--clouds-yaml")
        .arg(home.clouds_yaml())
        .arg("--home")
        .arg(home.path())
        .args(["--novabox", env!("CARGO_BIN_EXE_novabox")])
        .env_remove("OS_CLOUD")
        .env_remove("NOVABOX_HOME"));
    assert_ok(&out);
}

/// `tempest run` in the workspace with these tests and exclusions on both cores; prints
/// tempest's output and the counts.
fn tempest_run(home: &TestHome, ws: &Path, regex: &str, exclude: &str) -> Summary {
    let summary = ws.join("summary.json");
    let out = run(Command::new(script())
        .args(["run", "--workspace"])
        .arg(ws)
        .arg("--summary")
        .arg(&summary)
        .args(["--", "--regex", regex, "--concurrency", "2", "--exclude-list"])
        .arg(manifest_dir().join("tests/tempest").join(exclude)));
    println!("{}", stdout(&out));
    let text = std::fs::read_to_string(&summary)
        .unwrap_or_else(|e| panic!("no summary ({e}):\n{}\n{}\n{}", stdout(&out), stderr(&out), home.up_log()));
    let s = Summary(serde_json::from_str(&text).expect("summary JSON"));
    println!(
        "tempest {regex}: passed {} failed {} skipped {}",
        s.count("passed"),
        s.count("failed"),
        s.count("skipped")
    );
    s
}

/// The requests tempest logged (`Request (Class:method): 201 POST http://...`) with this
/// method whose URL contains `path`.
fn requests(ws: &Path, method: &str, path: &str) -> Vec<String> {
    let log = std::fs::read_to_string(ws.join("tempest.log")).expect("tempest.log");
    log.lines()
        .filter(|l| l.contains("Request (") && l.contains(&format!(" {method} ")) && l.contains(path))
        .map(str::to_string)
        .collect()
}

#[test]
fn tempest_identity_v3_passes_with_dynamic_credentials() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    // DevStack's keystone lockout options, which its tempest.conf repeats: the lockout test
    // then waits out 10 s rather than novabox's default minute.
    home.edit_config(&[
        ("lockout_failure_attempts = 10", "lockout_failure_attempts = 2"),
        ("lockout_duration_secs = 60", "lockout_duration_secs = 10"),
    ]);
    let _stack = home.up(&[]);
    let ws = home.path().join("tempest");
    configure(&home, &ws);
    let conf = std::fs::read_to_string(ws.join("etc/tempest.conf")).expect("tempest.conf");
    assert!(conf.contains("use_dynamic_credentials = True"), "{conf}");
    assert!(conf.contains("user_lockout_failure_attempts = 2"), "{conf}");

    let s = tempest_run(&home, &ws, r"^tempest\.api\.identity\.", "exclude-identity.txt");
    assert_eq!(s.count("failed"), 0, "tempest failures: {}\ntempest.log is in {}", s.0["failures"], ws.display());
    // What this session fixed and what dynamic credentials lean on, so a run that tested
    // nothing (a bad regex, every class skipped) cannot pass.
    for test in [
        "tempest.api.identity.admin.v3.test_tokens.TokensV3TestJSON.test_rescope_token",
        "tempest.api.identity.admin.v3.test_roles.RolesV3TestJSON.test_implied_roles_create_check_show_delete",
        "tempest.api.identity.admin.v3.test_roles.RolesV3TestJSON.test_role_create_update_show_list",
        "tempest.api.identity.v3.test_domains.DefaultDomainTestJSON.test_default_domain_exists",
        "tempest.api.identity.v3.test_api_discovery.TestApiDiscovery.test_list_api_versions",
        "tempest.api.identity.v3.test_application_credentials.ApplicationCredentialsV3Test.test_create_application_credential_expires",
        "tempest.api.identity.v3.test_users.IdentityV3UsersTest.test_user_account_lockout",
        // Project tags and users' extra attributes (migration 0024).
        "tempest.api.identity.admin.v3.test_project_tags.IdentityV3ProjectTagsTest.test_list_update_delete_project_tags",
        "tempest.api.identity.admin.v3.test_projects.ProjectsTestJSON.test_project_get_equals_list",
        "tempest.api.identity.admin.v3.test_users.UsersV3TestJSON.test_user_update",
        "tempest.api.identity.admin.v3.test_projects.ProjectsTestJSON.test_associate_user_to_project",
    ] {
        assert!(s.passed(test), "{test} did not pass: {}", s.0);
    }
    // Identity classes ask for no network resources: dynamic credentials made projects and
    // users, never a network or a router.
    for kind in ["/v2.0/networks", "/v2.0/routers", "/v2.0/subnets"] {
        let made = requests(&ws, "POST", kind);
        assert!(made.is_empty(), "tempest made {kind}: {made:?}");
    }
    assert!(!requests(&ws, "POST", "/v3/projects").is_empty(), "dynamic credentials made no project");
}
