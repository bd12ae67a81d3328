//! Fault injection and the test clock (issue 23, docs/faults.md), end to end: `novabox up
//! --faults` on the fake driver and the in-process bus, rules added with `novabox fault`, the
//! effects seen through openstacksdk, python-openstackclient and novabox's own client.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::clients::{image_file, osc_json, osc_output, venv_bin};
use crate::common::*;

/// A fake-driver stack on the in-process bus, with `up` flags `extra`.
fn fake_stack(extra: &[&str]) -> (TestHome, Stack) {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let stack = home.up(extra);
    (home, stack)
}

/// `novabox ARGS` against this home; stdout, failing the test (with the stack's log) on error.
fn novabox(home: &TestHome, args: &[&str]) -> String {
    let out = run(home.novabox().args(args));
    assert!(
        out.status.success(),
        "novabox {args:?} failed:\n{}\n{}\nstack log:\n{}",
        stdout(&out),
        stderr(&out),
        home.up_log()
    );
    stdout(&out)
}

fn novabox_json(home: &TestHome, args: &[&str]) -> Value {
    let text = novabox(home, args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("novabox {args:?}: not JSON ({e}): {text}"))
}

/// A raw request to the stack as `token` (or none), with status and body.
async fn raw(stack: &Stack, token: Option<&str>, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let base = stack.ready["api_url"].as_str().expect("api_url");
    let mut req = reqwest::Client::new().request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("x-auth-token", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// An image and a server booted through python-openstackclient; the server's JSON.
fn osc_boot(home: &TestHome, name: &str, extra: &[&str]) -> Value {
    let file = image_file(home);
    let images = osc_json(home, &["image", "list"]);
    if !images.as_array().into_iter().flatten().any(|i| i["Name"] == "fimg") {
        let file = file.to_str().unwrap();
        osc_json(home, &["image", "create", "--file", file, "--disk-format", "raw", "fimg"]);
    }
    let mut args = vec!["server", "create", "--image", "fimg", "--flavor", "m1.nano", "--network", "private"];
    args.extend_from_slice(extra);
    args.push(name);
    osc_json(home, &args)
}

fn wait_server(home: &TestHome, name: &str, want: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = osc_json(home, &["server", "show", name]);
        if s["status"] == want {
            return s;
        }
        assert!(Instant::now() < deadline, "{name} never reached {want}: {s}\nstack log:\n{}", home.up_log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_off_means_404_for_everyone_and_nothing_in_the_version_document() {
    let (home, stack) = fake_stack(&[]);
    let admin = stack.client("admin").await;
    for (method, path) in [
        (Method::GET, "/novabox/v1/faults"),
        (Method::POST, "/novabox/v1/faults"),
        (Method::GET, "/novabox/v1/clock"),
        (Method::POST, "/novabox/v1/clock/advance"),
    ] {
        let (status, body) = raw(&stack, Some(admin.token()), method.clone(), path, None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert!(body["itemNotFound"].is_object(), "{body}");
    }
    let (_, doc) = raw(&stack, None, Method::GET, "/novabox/v1", None).await;
    assert_eq!(doc["version"]["faults"]["enabled"], false, "{doc}");
    let (_, compute) = raw(&stack, None, Method::GET, "/compute/v2.1/", None).await;
    assert!(compute["version"].get("novabox:faults").is_none(), "{compute}");
    let out = run(home.novabox().args(["fault", "list"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("404") || stderr(&out).contains("could not be found"), "{}", stderr(&out));
    assert!(!novabox(&home, &["status"]).contains("faults"));
    drop(stack);
}

#[tokio::test(flavor = "multi_thread")]
async fn non_admins_get_403_and_bad_rules_are_refused_with_the_valid_names() {
    let (home, stack) = fake_stack(&["--faults"]);
    let demo = stack.client("demo").await;
    let admin = stack.client("admin").await;
    for (method, path) in [(Method::GET, "/novabox/v1/faults"), (Method::GET, "/novabox/v1/clock")] {
        let (status, body) = raw(&stack, Some(demo.token()), method, path, None).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["forbidden"]["message"], "Policy doesn't allow novabox:faults to be performed.", "{body}");
    }
    let (status, _) = raw(&stack, None, Method::GET, "/novabox/v1/faults", None).await;
    assert_eq!(status, 401);
    let bad = serde_json::json!({"fault": {"service": "compute", "method": "spawn", "error": "NoValidHosts"}});
    let (status, body) = raw(&stack, Some(admin.token()), Method::POST, "/novabox/v1/faults", Some(bad)).await;
    assert_eq!(status, 400, "{body}");
    let message = body["badRequest"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("NoValidHost, ") && message.contains("BuildAbortException"), "{message}");
    let out = run(home.novabox().args(["fault", "add", "compute", "spwan", "--error", "NoValidHost"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("`compute` has no step `spwan`; its steps:"), "{}", stderr(&out));
    let out = run(home.novabox().args(["fault", "add", "scheduler", "--kill"]));
    assert!(stderr(&out).contains("can never match"), "{}", stderr(&out));
    // Plainly said where a job looks.
    assert!(novabox(&home, &["status"]).contains("faults    ENABLED"));
    let (_, doc) = raw(&stack, None, Method::GET, "/novabox/v1", None).await;
    assert_eq!(doc["version"]["faults"]["enabled"], true, "{doc}");
    let (_, compute) = raw(&stack, None, Method::GET, "/compute/v2.1/", None).await;
    assert!(compute["version"]["novabox:faults"].as_str().is_some_and(|s| s.starts_with("enabled")), "{compute}");
    assert!(novabox(&home, &["fault", "list"]).contains("no fault rules"));
    drop(stack);
}

#[test]
fn openstacksdk_wait_for_server_fails_with_the_injected_no_valid_host() {
    let (home, stack) = fake_stack(&["--faults"]);
    novabox(&home, &["fault", "add", "compute", "spawn", "--error", "NoValidHost", "--times", "1"]);
    let out = run(Command::new(venv_bin("python"))
        .env("OS_CLIENT_CONFIG_FILE", home.clouds_yaml())
        .arg(manifest_dir().join("tests/clients/faults_sdk.py"))
        .args(["nvh", "novabox"])
        .arg(image_file(&home)));
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}\nstack log:\n{}", stderr(&out), home.up_log());
    assert!(text.contains("wait_for_server raised: ") && text.contains("failure state ERROR"), "{text}");
    assert!(text.contains("No valid host was found. There are not enough hosts available."), "{text}");
    assert!(text.contains("second server ACTIVE"), "{text}");
    let rules = novabox_json(&home, &["fault", "list", "--json"]);
    let rule = &rules["faults"][0];
    assert_eq!((rule["seen"].as_u64(), rule["fired"].as_u64(), &rule["spent"]), (Some(2), Some(1), &Value::Bool(true)));
    // The firing and the failure it caused are in `events` and in the boot's trace.
    let doomed = osc_json(&home, &["server", "show", "doomed"]);
    let id = doomed["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = novabox(&home, &["events", "--server", id]);
        if (events.contains("novabox.fault.injected") && events.contains("compute.instance.create.error"))
            || Instant::now() > deadline
        {
            break events;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(events.contains("novabox.fault.injected"), "{events}");
    assert!(events.contains("compute.instance.create.error"), "{events}");
    let trace = novabox(&home, &["trace", id, "--json"]);
    assert!(trace.contains("fault.injected"), "{trace}");
    drop(stack);
}

#[test]
fn python_openstackclient_shows_the_injected_503_body() {
    let (home, stack) = fake_stack(&["--faults"]);
    let add = [
        "fault",
        "add",
        "--route",
        "/compute/v2.1/flavors/detail",
        "--http-method",
        "GET",
        "--status",
        "503",
        "--retry-after",
        "1",
        "--times",
        "1",
    ];
    novabox(&home, &add);
    let out = osc_output(&home, &["flavor", "list"]);
    assert!(!out.status.success(), "the 503 did not reach the client: {}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("The server is currently unavailable. Please try again at a later time."), "{err}");
    assert!(err.contains("503"), "{err}");
    // Once only: the next call answers.
    let flavors = osc_json(&home, &["flavor", "list"]);
    assert!(flavors.as_array().unwrap().iter().any(|f| f["Name"] == "m1.nano"), "{flavors}");
    // A rule on one route never touches another.
    novabox(&home, &["fault", "add", "--route", "/network/**", "--status", "500"]);
    assert!(osc_json(&home, &["flavor", "list"]).as_array().is_some());
    drop(stack);
}

#[test]
fn openstacksdk_retries_a_429_after_its_retry_after() {
    let (home, stack) = fake_stack(&["--faults"]);
    let add = [
        "fault",
        "add",
        "--route",
        "/compute/v2.1/flavors/detail",
        "--status",
        "429",
        "--retry-after",
        "2",
        "--times",
        "1",
    ];
    novabox(&home, &add);
    let started = Instant::now();
    let out = run(Command::new(venv_bin("python"))
        .env("OS_CLIENT_CONFIG_FILE", home.clouds_yaml())
        .arg(manifest_dir().join("tests/clients/faults_sdk.py"))
        .args(["retry", "novabox"]));
    assert!(out.status.success(), "{}\n{}\nstack log:\n{}", stdout(&out), stderr(&out), home.up_log());
    assert!(stdout(&out).contains("flavors listed after a retry"), "{}", stdout(&out));
    assert!(started.elapsed() >= Duration::from_secs(2), "the SDK did not wait Retry-After");
    let rule = &novabox_json(&home, &["fault", "list", "--json"])["faults"][0];
    assert_eq!((rule["seen"].as_u64(), rule["fired"].as_u64()), (Some(2), Some(1)), "{rule}");
    drop(stack);
}

#[test]
fn a_server_held_in_spawning_shows_build_until_the_delay_ends() {
    let (home, stack) = fake_stack(&["--faults"]);
    // A server without the trigger is not held.
    assert_eq!(osc_boot(&home, "quick", &["--wait"])["status"], "ACTIVE");
    // Long enough that a loaded CI host's slow `openstack` calls still see it held.
    const HOLD: Duration = Duration::from_secs(15);
    let started = Instant::now();
    osc_boot(&home, "held", &["--property", "novabox:delay=spawning:15"]);
    let mut seen_spawning = false;
    let server = loop {
        let s = osc_json(&home, &["server", "show", "held"]);
        if s["status"] == "BUILD" && s["OS-EXT-STS:task_state"] == "spawning" {
            seen_spawning = true;
        }
        if s["status"] != "BUILD" {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "still BUILD after 90 s: {s}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(seen_spawning, "never seen in BUILD/spawning\nstack log:\n{}", home.up_log());
    assert_eq!(server["status"], "ACTIVE", "{server}");
    assert!(started.elapsed() >= HOLD, "ACTIVE after {:?}, before the delay ended", started.elapsed());
    // Measured by the server's own clock: created to launched.
    let build_secs = |name: &str| {
        let s = osc_json(&home, &["server", "show", name]);
        let parse = |k: &str, f: &str| {
            let v = s[k].as_str().unwrap_or_else(|| panic!("{k} missing: {s}"));
            chrono::NaiveDateTime::parse_from_str(v.split('.').next().unwrap_or(v), f).unwrap()
        };
        (parse("OS-SRV-USG:launched_at", "%Y-%m-%dT%H:%M:%S") - parse("created", "%Y-%m-%dT%H:%M:%SZ")).num_seconds()
    };
    assert!(build_secs("held") >= 15, "held built in {} s", build_secs("held"));
    assert!(build_secs("quick") < 15, "the server without a trigger took {} s", build_secs("quick"));
    drop(stack);
}

#[test]
fn a_killed_compute_restarts_into_init_host_recovery() {
    let (home, stack) = fake_stack(&["--faults"]);
    novabox(&home, &["fault", "add", "compute", "spawning", "--kill", "--restart-after", "2", "--times", "1"]);
    osc_boot(&home, "victim", &[]);
    let victim = wait_server(&home, "victim", "ERROR", Duration::from_secs(60));
    assert!(
        victim["fault"].to_string().contains("The compute service restarted while this instance was being built."),
        "{victim}"
    );
    let log = home.up_log();
    assert!(log.contains("compute service killed by a fault rule"), "{log}");
    assert!(log.contains("compute service started again after a kill"), "{log}");
    // The restarted service builds again.
    let after = osc_boot(&home, "survivor", &["--wait"]);
    assert_eq!(after["status"], "ACTIVE", "{after}");
    drop(stack);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_expires_after_the_clock_advances() {
    let (home, stack) = fake_stack(&["--faults"]);
    let demo = stack.client("demo").await;
    let (status, _) = raw(&stack, Some(demo.token()), Method::GET, "/compute/v2.1/flavors", None).await;
    assert_eq!(status, 200);
    let before = novabox_json(&home, &["clock", "show", "--json"]);
    assert_eq!(before["clock"]["offset_seconds"], 0.0, "{before}");
    // [api] token_ttl_secs is 3600.
    let moved = novabox_json(&home, &["clock", "advance", "3601", "--json"]);
    assert_eq!(moved["clock"]["offset_seconds"], 3601.0, "{moved}");
    let (status, body) = raw(&stack, Some(demo.token()), Method::GET, "/compute/v2.1/flavors", None).await;
    assert_eq!(status, 401, "{body}");
    // A new token is issued by the moved clock and works.
    let fresh = stack.client("demo").await;
    let (status, _) = raw(&stack, Some(fresh.token()), Method::GET, "/compute/v2.1/flavors", None).await;
    assert_eq!(status, 200);
    // Heartbeats are an hour old by the moved clock until the next ones come: status agrees.
    let status_doc = novabox_json(&home, &["status", "--json"]);
    assert_eq!(status_doc["faults"]["clock_offset_secs"], 3601, "{status_doc}");
    let out = run(home.novabox().args(["clock", "advance", "--", "-5"]));
    assert!(stderr(&out).contains("moves forward only"), "{}", stderr(&out));
    let reset = novabox_json(&home, &["clock", "reset", "--json"]);
    assert_eq!(reset["clock"]["offset_seconds"], 0.0, "{reset}");
    drop(stack);
}

#[test]
fn a_dropped_build_stays_in_build_and_a_conductor_error_fails_the_build() {
    let (home, stack) = fake_stack(&["--faults"]);
    novabox(&home, &["fault", "add", "scheduler", "select_destinations", "--drop", "--times", "1"]);
    osc_boot(&home, "lost", &[]);
    std::thread::sleep(Duration::from_secs(3));
    let lost = osc_json(&home, &["server", "show", "lost"]);
    assert_eq!((&lost["status"], &lost["OS-EXT-STS:task_state"]), (&Value::from("BUILD"), &Value::from("scheduling")));
    let add = [
        "fault",
        "add",
        "conductor",
        "allocate_network",
        "--error",
        "BuildAbortException",
        "--message",
        "no ports left",
        "--times",
        "1",
    ];
    novabox(&home, &add);
    osc_boot(&home, "nonet", &[]);
    let failed = wait_server(&home, "nonet", "ERROR", Duration::from_secs(60));
    let fault = failed["fault"].to_string();
    assert!(fault.contains("network allocation failed") && fault.contains("no ports left"), "{failed}");
    // A lost build is still the user's to delete.
    crate::clients::osc(&home, &["server", "delete", "--wait", "lost"]);
    let list = osc_json(&home, &["server", "list"]);
    assert!(!list.as_array().unwrap().iter().any(|s| s["Name"] == "lost"), "{list}");
    drop(stack);
}
