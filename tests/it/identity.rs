//! Keystone's admin API and the personas, through python-openstackclient against `novabox up`:
//! an admin makes a project and two users, a member boots in it, a reader only looks.

use std::process::Command;

use crate::clients::{image_file, osc, osc_json, osc_output, venv_bin};
use crate::common::*;

/// `openstack` as `user` in `project`, with the password auth options a user would export.
fn osc_as(home: &TestHome, stack: &Stack, user: &str, project: &str, args: &[&str]) -> std::process::Output {
    run(Command::new(venv_bin("openstack"))
        .env_remove("OS_CLOUD")
        .env("OS_CLIENT_CONFIG_FILE", home.path().join("no-clouds.yaml"))
        .env("OS_AUTH_URL", stack.auth_url())
        .env("OS_IDENTITY_API_VERSION", "3")
        .env("OS_USERNAME", user)
        .env("OS_PASSWORD", format!("{user}-secret"))
        .env("OS_PROJECT_NAME", project)
        .env("OS_USER_DOMAIN_NAME", "Default")
        .env("OS_PROJECT_DOMAIN_ID", "default")
        .env("OS_REGION_NAME", "RegionOne")
        .args(args))
}

fn osc_as_ok(home: &TestHome, stack: &Stack, user: &str, project: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-f", "json"]);
    let out = osc_as(home, stack, user, project, &all);
    assert!(
        out.status.success(),
        "openstack {args:?} as {user}:\n{}\n{}\n{}",
        stdout(&out),
        stderr(&out),
        home.up_log()
    );
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", stdout(&out)))
}

/// `openstack --os-cloud novabox-admin args.. -f json`.
fn admin_json(home: &TestHome, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--os-cloud", "novabox-admin"];
    all.extend(args);
    osc_json(home, &all)
}

fn admin(home: &TestHome, args: &[&str]) -> String {
    let mut all = vec!["--os-cloud", "novabox-admin"];
    all.extend(args);
    osc(home, &all)
}

#[test]
fn openstackclient_admin_makes_a_project_with_a_member_and_a_reader() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let stack = home.up(&[]);

    let project = admin_json(&home, &["project", "create", "--description", "team one", "team1"]);
    assert_eq!(project["name"], "team1", "{project}");
    assert_eq!(project["domain_id"], "default", "{project}");
    for user in ["alice", "rita"] {
        let password = format!("{user}-secret");
        let u = admin_json(&home, &["user", "create", "--project", "team1", "--password", &password, user]);
        assert_eq!(u["name"], user, "{u}");
    }
    admin(&home, &["role", "add", "--project", "team1", "--user", "alice", "member"]);
    admin(&home, &["role", "add", "--project", "team1", "--user", "rita", "reader"]);
    // A second project of the same name is keystone's 409.
    let again = osc_output(&home, &["--os-cloud", "novabox-admin", "project", "create", "team1"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("Duplicate entry") && stderr(&again).contains("409"), "{}", stderr(&again));

    // The member works in its project: an image, a network, a server.
    let file = image_file(&home);
    let args = [
        "image",
        "create",
        "--file",
        file.to_str().unwrap(),
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "img1",
    ];
    assert_eq!(osc_as_ok(&home, &stack, "alice", "team1", &args)["status"], "active");
    osc_as_ok(&home, &stack, "alice", "team1", &["network", "create", "net1"]);
    let args = ["subnet", "create", "--network", "net1", "--subnet-range", "10.77.0.0/24", "sub1"];
    osc_as_ok(&home, &stack, "alice", "team1", &args);
    let args = ["server", "create", "--image", "img1", "--flavor", "m1.nano", "--network", "net1", "--wait", "vm1"];
    let server = osc_as_ok(&home, &stack, "alice", "team1", &args);
    assert_eq!(server["status"], "ACTIVE", "{server}");

    // The reader sees it, and is refused a server of its own in nova's words.
    let list = osc_as_ok(&home, &stack, "rita", "team1", &["server", "list"]);
    assert!(list.as_array().unwrap().iter().any(|s| s["Name"] == "vm1"), "{list}");
    let args = ["server", "create", "--image", "img1", "--flavor", "m1.nano", "--network", "net1", "vm2"];
    let refused = osc_as(&home, &stack, "rita", "team1", &args);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(err.contains("Policy doesn't allow") && err.contains("403"), "{err}");
    let refused = osc_as(&home, &stack, "rita", "team1", &["network", "create", "net2"]);
    assert!(!refused.status.success() && stderr(&refused).contains("disallowed by policy"), "{}", stderr(&refused));

    // The listings an admin reads.
    let domains = admin_json(&home, &["domain", "list"]);
    assert!(domains.as_array().unwrap().iter().any(|d| d["ID"] == "default" && d["Name"] == "Default"), "{domains}");
    let projects = admin_json(&home, &["project", "list"]);
    for name in ["admin", "demo", "team1"] {
        assert!(projects.as_array().unwrap().iter().any(|p| p["Name"] == name), "{name}: {projects}");
    }
    let users = admin_json(&home, &["user", "list"]);
    for name in ["admin", "demo", "alice", "rita"] {
        assert!(users.as_array().unwrap().iter().any(|u| u["Name"] == name), "{name}: {users}");
    }
    let assignments = admin_json(&home, &["role", "assignment", "list", "--names", "--project", "team1"]);
    let rows: Vec<(String, String)> = assignments
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["User"].as_str().unwrap_or("").to_string(), a["Role"].as_str().unwrap_or("").to_string()))
        .collect();
    assert!(rows.contains(&("alice@Default".into(), "member".into())), "{assignments}");
    assert!(rows.contains(&("rita@Default".into(), "reader".into())), "{assignments}");
    assert_eq!(rows.len(), 2, "{assignments}");

    // A non-admin may not administer identity.
    let refused = osc_as(&home, &stack, "alice", "team1", &["user", "list"]);
    assert!(!refused.status.success() && stderr(&refused).contains("403"), "{}", stderr(&refused));

    // Tear down as tempest does: the server goes, then the users and the project.
    let deleted = osc_as(&home, &stack, "alice", "team1", &["server", "delete", "--wait", "vm1"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    admin(&home, &["user", "delete", "alice", "rita"]);
    admin(&home, &["project", "delete", "team1"]);
    let projects = admin_json(&home, &["project", "list"]);
    assert!(!projects.as_array().unwrap().iter().any(|p| p["Name"] == "team1"), "{projects}");
    let gone = osc_as(&home, &stack, "alice", "team1", &["server", "list"]);
    assert!(!gone.status.success(), "a deleted user cannot log in");
}
