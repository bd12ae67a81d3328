//! `init --devstack` and `up --devstack` as a job written for DevStack uses them: its clouds,
//! its `openrc`, its flavors, networks and the test image, driven by the real `openstack`
//! (from `.build/venv`) and by bash sourcing the openrc. Fake driver, local bus, temp homes
//! and free ports; the test guest is built from the shared kernel .deb cache.

use std::path::Path;
use std::process::{Command, Output};

use crate::clients::venv_bin;
use crate::common::*;

/// `init` with `--devstack` (or not) and `--json`; the parsed document.
fn init_json(home: &TestHome, devstack: bool, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--driver", "fake", "--bus", "local", "--json"];
    if devstack {
        args.push("--devstack");
    }
    args.extend(extra);
    let out =
        run(home.init_cmd(&args).env_remove("ADMIN_PASSWORD").env("NOVABOX_DEB_CACHE", crate::guests::deb_cache()));
    assert_ok(&out);
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("init --json: not JSON ({e}):\n{}", stdout(&out)))
}

/// `init` again on a made home, with no flag that could differ from its config.
fn rerun_json(home: &TestHome, devstack: bool) -> serde_json::Value {
    let mut cmd = home.novabox();
    cmd.args(["init", "--yes", "--no-install", "--no-boot-probe", "--json"])
        .arg("--clouds-yaml")
        .arg(home.clouds_yaml());
    if devstack {
        cmd.arg("--devstack");
    }
    let out = run(cmd.env_remove("ADMIN_PASSWORD").env("NOVABOX_DEB_CACHE", crate::guests::deb_cache()));
    assert_ok(&out);
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("init --json: not JSON ({e}):\n{}", stdout(&out)))
}

fn clouds(home: &TestHome) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(home.clouds_yaml()).expect("clouds.yaml")).expect("YAML")
}

/// `bash -c script` with only the venv's `openstack` and the system's PATH, and no OS_*
/// variable from the caller, so what the script sources is all that counts.
fn bash(home: &TestHome, script: &str) -> Output {
    let path = format!("{}:{}", venv_bin("openstack").parent().unwrap().display(), "/usr/bin:/bin");
    let mut cmd = Command::new("bash");
    cmd.env_clear().env("PATH", path).env("HOME", home.path()).current_dir(home.path()).args(["-c", script]);
    run(&mut cmd)
}

#[test]
fn init_devstack_makes_devstacks_names_reports_what_it_did_not_and_reruns_the_same() {
    let home = TestHome::new();
    let doc = init_json(&home, true, &[]);
    assert_eq!(doc["devstack"], true, "{doc}");
    for cloud in ["devstack", "devstack-admin", "devstack-alt", "devstack-system-admin", "novabox"] {
        assert!(doc["clouds"].as_array().unwrap().iter().any(|c| c == cloud), "{cloud}: {doc}");
    }
    let want: Vec<(&str, &str)> = novabox::devstack::FLAVORS.iter().map(|f| (f.0, f.1)).collect();
    let got: Vec<(&str, &str)> = doc["flavors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["id"].as_str().unwrap(), f["name"].as_str().unwrap()))
        .collect();
    assert_eq!(got, want);
    let private = &doc["networks"][0];
    assert_eq!(private["name"], "private", "{doc}");
    assert_eq!(private["subnet"], "private-subnet");
    assert_eq!(private["cidr"], "10.0.0.0/26");
    assert_eq!(private["gateway_ip"], "10.0.0.1");
    assert!(doc["image"]["id"].is_string(), "the test image on the fake driver too: {doc}");
    let not_created: Vec<(&str, &str)> = doc["not_created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["reason"].as_str().unwrap()))
        .collect();
    assert!(not_created.is_empty(), "{doc}");
    assert_eq!(doc["networks"][1]["name"], "public", "{doc}");
    assert_eq!(doc["networks"][1]["cidr"], "172.24.4.0/24", "{doc}");
    assert_eq!(doc["router"]["name"], "router1", "{doc}");
    assert_eq!(doc["router"]["project_id"], doc["projects"]["demo"]["id"], "{doc}");
    assert!(doc.to_string().find("password").is_none(), "no password in the CI document: {doc}");
    assert_eq!(doc["users"]["demo"]["project_name"], "demo");
    assert!(doc["projects"]["alt_demo"]["id"].is_string(), "{doc}");

    // clouds.yaml as DevStack's write_clouds_yaml makes it.
    let c = clouds(&home);
    let secrets = std::fs::read_to_string(home.path().join("secrets.toml")).unwrap();
    for (cloud, user, project) in
        [("devstack", "demo", "demo"), ("devstack-admin", "admin", "admin"), ("devstack-alt", "alt_demo", "alt_demo")]
    {
        let auth = &c["clouds"][cloud]["auth"];
        assert_eq!(auth["username"].as_str(), Some(user), "{cloud}");
        assert_eq!(auth["project_name"].as_str(), Some(project), "{cloud}");
        assert_eq!(auth["user_domain_id"].as_str(), Some("default"));
        assert!(secrets.contains(auth["password"].as_str().unwrap()), "{cloud}: a generated password");
        assert_eq!(c["clouds"][cloud]["region_name"].as_str(), Some("RegionOne"));
        assert_eq!(auth["auth_url"], serde_yaml::Value::from(doc["auth_url"].as_str().unwrap()));
    }
    let sys = &c["clouds"]["devstack-system-admin"]["auth"];
    assert_eq!(sys["system_scope"].as_str(), Some("all"));
    assert!(sys.get("project_name").is_none(), "{sys:?}");

    let openrc = doc["openrc"].as_str().expect("openrc path");
    assert_eq!(Path::new(openrc), home.path().join("openrc"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(openrc).unwrap().permissions().mode() & 0o777, 0o600, "it holds passwords");

    // Again: the same ids, nothing added, nothing changed.
    let again = rerun_json(&home, true);
    for key in ["flavors", "networks", "router", "image", "users", "projects", "not_created", "clouds"] {
        assert_eq!(again[key], doc[key], "{key} changed on a rerun");
    }
    assert_eq!(clouds(&home), c, "clouds.yaml changed on a rerun");

    // A rerun without --devstack adds nothing of DevStack's and removes nothing.
    let plain = rerun_json(&home, false);
    assert_eq!(plain["devstack"], false);
    assert_eq!(plain["not_created"], serde_json::json!([]));
    assert_eq!(plain["openrc"], serde_json::Value::Null);
    assert_eq!(clouds(&home), c);
}

#[test]
fn without_devstack_nothing_of_devstacks_is_added() {
    let home = TestHome::new();
    let doc = init_json(&home, false, &[]);
    assert_eq!(doc["devstack"], false);
    let c = clouds(&home);
    let names: Vec<&str> = c["clouds"].as_mapping().unwrap().keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(names, ["novabox", "novabox-admin"]);
    assert!(!home.path().join("openrc").exists());
    let flavors: Vec<&str> = doc["flavors"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    for devstacks in ["m1.micro", "cirros256", "ds512M", "ds1G", "ds2G", "ds4G"] {
        assert!(!flavors.contains(&devstacks), "{devstacks} in {flavors:?}");
    }
    assert_eq!(doc["image"], serde_json::Value::Null, "the fake driver gets no test image without --devstack");
    assert_ne!(doc["networks"][0]["id"], serde_json::Value::Null);
    let config = std::fs::read_to_string(home.path().join("novabox.toml")).unwrap();
    assert!(!config.contains("10.0.0.0/26"), "{config}");
}

#[test]
fn admin_password_gives_every_devstack_user_the_one_password_as_devstack_does() {
    let home = TestHome::new();
    let out = run(home
        .init_cmd(&["--driver", "fake", "--bus", "local", "--devstack"])
        .env("ADMIN_PASSWORD", "s3cret 'quoted' $x")
        .env("NOVABOX_DEB_CACHE", crate::guests::deb_cache()));
    assert_ok(&out);
    let c = clouds(&home);
    for cloud in ["devstack", "devstack-admin", "devstack-alt", "devstack-system-admin", "novabox"] {
        assert_eq!(c["clouds"][cloud]["auth"]["password"].as_str(), Some("s3cret 'quoted' $x"), "{cloud}");
    }
    let _stack = home.up(&[]);
    let out = bash(&home, "source ./openrc alt_demo alt_demo && openstack token issue -f value -c user_id");
    assert_ok(&out);
    // Without --devstack the flag is refused rather than ignored.
    let other = TestHome::new();
    let out = other.init(&["--driver", "fake", "--admin-password", "x"]);
    assert!(!out.status.success() && stderr(&out).contains("--devstack"), "{}", stderr(&out));
}

/// Stops a detached stack when the test ends, whatever its outcome.
struct Down<'a>(&'a TestHome);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = run(self.0.novabox().arg("down"));
    }
}

#[test]
fn up_devstack_on_a_home_made_without_it_is_refused_and_changes_nothing() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let before = std::fs::read_to_string(home.clouds_yaml()).unwrap();
    let out = run(home.novabox().args(["up", "--devstack", "--detach", "--wait"]));
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("novabox init --devstack"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(home.clouds_yaml()).unwrap(), before);
    assert!(!home.path().join("openrc").exists());
}

/// A DevStack-style job script, unchanged: clouds by name, then the openrc.
#[test]
fn a_devstack_script_runs_unchanged_against_init_devstack() {
    let home = TestHome::new();
    init_json(&home, true, &[]);
    let up = run(home.novabox().args(["up", "--devstack", "--detach", "--wait"]));
    let _down = Down(&home);
    assert_ok(&up);
    let osc = |args: &[&str]| {
        run(Command::new(venv_bin("openstack"))
            .env("OS_CLIENT_CONFIG_FILE", home.clouds_yaml())
            .env_remove("OS_CLOUD")
            .args(args))
    };
    let server = osc(&[
        "--os-cloud",
        "devstack",
        "server",
        "create",
        "--flavor",
        "m1.nano",
        "--image",
        novabox::images::TEST_IMAGE_NAME,
        "--network",
        "private",
        "--wait",
        "vm",
        "-f",
        "json",
    ]);
    assert_ok(&server);
    let server: serde_json::Value = serde_json::from_slice(&server.stdout).unwrap();
    assert_eq!(server["status"], "ACTIVE", "{server}");
    assert!(server["addresses"].to_string().contains("10.0.0."), "DevStack's private range: {server}");

    // DevStack's floating IP path: a floating IP from `public`, through router1, on vm.
    let fip = osc(&["--os-cloud", "devstack", "floating", "ip", "create", "public", "-f", "json"]);
    assert_ok(&fip);
    let fip: serde_json::Value = serde_json::from_slice(&fip.stdout).unwrap();
    let address = fip["floating_ip_address"].as_str().unwrap_or_else(|| panic!("{fip}")).to_string();
    assert!(address.starts_with("172.24.4."), "{fip}");
    assert_ok(&osc(&["--os-cloud", "devstack", "server", "add", "floating", "ip", "vm", &address]));
    let shown = osc(&["--os-cloud", "devstack", "floating", "ip", "show", &address, "-f", "json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let router = osc(&["--os-cloud", "devstack", "router", "show", "router1", "-f", "json"]);
    assert_ok(&router);
    let router: serde_json::Value = serde_json::from_slice(&router.stdout).unwrap();
    assert_eq!(shown["router_id"], router["id"], "the floating IP goes through router1: {shown}");

    let hypervisors = osc(&["--os-cloud", "devstack-admin", "hypervisor", "list", "-f", "json"]);
    assert_ok(&hypervisors);
    let hypervisors: serde_json::Value = serde_json::from_slice(&hypervisors.stdout).unwrap();
    assert_eq!(hypervisors.as_array().map(Vec::len), Some(1), "{hypervisors}");
    // The member cloud may not; the other project does not see vm.
    let refused = osc(&["--os-cloud", "devstack", "hypervisor", "list"]);
    assert!(!refused.status.success(), "{}", stdout(&refused));
    let alt = osc(&["--os-cloud", "devstack-alt", "server", "list", "-f", "value", "-c", "Name"]);
    assert_ok(&alt);
    assert_eq!(stdout(&alt).trim(), "", "alt_demo sees demo's server");
    let system = osc(&["--os-cloud", "devstack-system-admin", "token", "issue", "-f", "json"]);
    assert_ok(&system);
    assert!(stdout(&system).contains("\"system\""), "{}", stdout(&system));

    let out = bash(
        &home,
        "set -e; source openrc demo demo && openstack server list -f value -c Name && echo user=$OS_USERNAME",
    );
    assert_ok(&out);
    assert_eq!(stdout(&out), "vm\nuser=demo\n");
    // No arguments: demo in demo, as DevStack's.
    let out = bash(&home, "set -e; source openrc; openstack server list -f value -c Name");
    assert_ok(&out);
    assert_eq!(stdout(&out), "vm\n");
    let out = bash(
        &home,
        "set -e; source openrc admin admin && openstack hypervisor list -f value -c State \
         && openstack project list -f value -c Name | sort | tr '\\n' ' '",
    );
    assert_ok(&out);
    assert_eq!(stdout(&out), "up\nadmin alt_demo demo service ");
    // An unknown user gets no password (and is told), not someone else's.
    let out = bash(&home, "source openrc nobody demo; echo pw=${OS_PASSWORD:-none}");
    assert_eq!(stdout(&out), "pw=none\n");
    assert!(stderr(&out).contains("no password known for nobody"), "{}", stderr(&out));
}

/// `down` for a home outside a `TestHome` (the CI script's), when the test ends.
struct DownAt(std::path::PathBuf);

impl Drop for DownAt {
    fn drop(&mut self) {
        let _ = run(Command::new(env!("CARGO_BIN_EXE_novabox")).arg("--home").arg(&self.0).arg("down"));
    }
}

/// `KEY=VALUE` lines, as GitHub reads `$GITHUB_ENV` and `$GITHUB_OUTPUT`.
fn key_values(file: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The action's script as a runner runs it (with the binary given, as a restored cache gives
/// it, and the runner's packages already there): what it exports works with `openstack`, and
/// the openrc is where a DevStack-based script looks for it (`$DEVSTACK_PATH/openrc`).
#[test]
fn the_ci_action_script_exports_a_working_devstack_cloud() {
    let t = TestHome::new();
    let (home, user) = (t.path().join("novabox"), t.path().join("user"));
    let (github_env, github_path, github_output) =
        (t.path().join("github_env"), t.path().join("github_path"), t.path().join("github_output"));
    std::fs::create_dir_all(&user).unwrap();
    let mut cmd = Command::new(manifest_dir().join("scripts/ci-action"));
    for var in ["OS_CLOUD", "OS_CLIENT_CONFIG_FILE", "NOVABOX_HOME", "XDG_CONFIG_HOME", "RUNNER_TEMP", "ADMIN_PASSWORD"]
    {
        cmd.env_remove(var);
    }
    cmd.env("HOME", &user)
        .env("NOVABOX_BIN", env!("CARGO_BIN_EXE_novabox"))
        .env("NOVABOX_INSTALL_DEPS", "false")
        .env("NOVABOX_HOME", &home)
        .env("NOVABOX_DRIVER", "fake")
        .env("NOVABOX_API_PORT", free_port().to_string())
        .env("NOVABOX_BUS_PORT", free_port().to_string())
        .env(novabox::home::CACHE_ENV, t.cache_dir())
        .env("NOVABOX_DEB_CACHE", crate::guests::deb_cache())
        .env("NOVABOX_IMAGE_NAME", "cirros-novabox-tiny-uec")
        .env("GITHUB_ENV", &github_env)
        .env("GITHUB_PATH", &github_path)
        .env("GITHUB_OUTPUT", &github_output);
    let out = run(&mut cmd);
    let _down = DownAt(home.clone());
    assert_ok(&out);

    let env = key_values(&github_env);
    assert_eq!(env.get("OS_CLOUD").map(String::as_str), Some("devstack"), "{env:?}");
    let clouds_yaml = user.join(".config/openstack/clouds.yaml");
    assert_eq!(env["OS_CLIENT_CONFIG_FILE"], clouds_yaml.to_str().unwrap(), "the user's default clouds.yaml");
    assert_eq!(env["NOVABOX_HOME"], home.to_str().unwrap());
    assert_eq!(env["DEVSTACK_PATH"], home.to_str().unwrap());
    let path: Vec<String> = std::fs::read_to_string(&github_path).unwrap().lines().map(String::from).collect();
    let venv = venv_bin("openstack").parent().unwrap().to_path_buf();
    assert_eq!(
        path,
        [Path::new(env!("CARGO_BIN_EXE_novabox")).parent().unwrap(), &venv].map(|p| p.to_str().unwrap().to_string())
    );
    let outputs = key_values(&github_output);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&outputs["init-json"]).unwrap()).unwrap();
    assert_eq!(outputs["openrc"], home.join("openrc").to_str().unwrap());
    assert_eq!(outputs["auth-url"], doc["auth_url"].as_str().unwrap());

    // A later step: only what the action exported, plus the runner's PATH.
    let step = |script: &str| {
        let mut cmd = Command::new("bash");
        cmd.env_clear()
            .env("HOME", &user)
            .env("PATH", format!("{}:/usr/bin:/bin", path.join(":")))
            .envs(&env)
            .args(["-c", script]);
        run(&mut cmd)
    };
    let out =
        step("set -e; openstack flavor show m1.nano -f value -c id; openstack network show private -f value -c id");
    assert_ok(&out);
    assert_eq!(stdout(&out), format!("42\n{}\n", doc["networks"][0]["id"].as_str().unwrap()));
    let out = step(
        "set -e; openstack --os-cloud devstack-admin hypervisor list -f value -c State; \
         novabox --home \"$NOVABOX_HOME\" status >/dev/null && echo novabox-on-path",
    );
    assert_ok(&out);
    assert_eq!(stdout(&out), "up\nnovabox-on-path\n");
    // gophercloud's and terraform-provider-openstack's stackenv: cd to DEVSTACK_PATH, source
    // openrc admin admin, append exports to openrc, source it again. OS_CLOUD is dropped there
    // as those jobs never set it.
    let out = step(
        "set -e; unset OS_CLOUD; cd \"$DEVSTACK_PATH\"; source openrc admin admin; \
         _NETWORK_ID=$(openstack network show private -c id -f value); \
         echo export OS_NETWORK_ID=\"$_NETWORK_ID\" >> openrc; source openrc admin admin; \
         openstack network show \"$OS_NETWORK_ID\" -f value -c name; echo $OS_USERNAME/$OS_PROJECT_NAME",
    );
    assert_ok(&out);
    assert_eq!(stdout(&out), "private\nadmin/admin\n");
    // The image as gophercloud's stackenv finds it.
    let out = step("openstack image list | grep -i cirros | head -n 1 | awk -F'|' '{print $2}' | tr -d ' '");
    assert_eq!(stdout(&out).trim(), doc["image"]["id"].as_str().unwrap(), "{}", stderr(&out));
}
