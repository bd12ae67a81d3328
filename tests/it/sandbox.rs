//! The sandbox experience end to end, driving the binary as a user does: `up --detach`,
//! `status`, a boot, `trace`, `events`, `logs`, `smoke`, `down`, with the fake driver and the
//! in-process bus; and two homes side by side.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::guests::pids_mentioning;

/// Detached stacks are stopped by pid at the end of each test even when it fails halfway.
struct Detached<'a> {
    home: &'a TestHome,
    pid: i32,
}

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        let _ = run(self.home.novabox().arg("down"));
    }
}

fn up_detached(home: &TestHome) -> (Detached<'_>, Value) {
    // The detached stack inherits the environment: keep SQL in the trace for `trace --sql`.
    let out = run(home
        .novabox()
        .env("NOVABOX_TRACE", "sql")
        .args(["up", "--driver", "fake", "--bus", "local", "--detach", "--wait", "--json"]));
    assert_ok(&out);
    let ready: Value = serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
    let pid = ready["pid"].as_i64().expect("pid") as i32;
    (Detached { home, pid }, ready)
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn wait_dead(pid: i32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while alive(pid) && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(std::time::Instant::now() < deadline, "pid {pid} still running");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_str(stdout(out).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

#[test]
fn sandbox_lifecycle_up_status_boot_trace_events_logs_smoke_down() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));

    // Down: status says so, with its documented exit code.
    let out = run(home.novabox().args(["status", "--json"]));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(json_of(&out)["running"], false);

    let (stack, ready) = up_detached(&home);
    assert!(ready["api_url"].is_string() && ready["credentials"]["demo"]["password"].is_string(), "{ready}");

    // A second up says so and succeeds.
    let out = run(home.novabox().args(["up", "--detach"]));
    assert_ok(&out);
    assert!(stdout(&out).contains("already running"), "{}", stdout(&out));

    let out = run(home.novabox().args(["status", "--json"]));
    assert_ok(&out);
    let st = json_of(&out);
    assert_eq!(st["running"], true);
    assert_eq!(st["pid"].as_i64(), Some(stack.pid as i64));
    let binaries: Vec<&str> = st["services"].as_array().unwrap().iter().filter_map(|s| s["binary"].as_str()).collect();
    for b in ["novabox-conductor", "novabox-scheduler", "novabox-compute"] {
        assert!(binaries.contains(&b), "{binaries:?}");
    }
    assert!(st["services"].as_array().unwrap().iter().all(|s| s["up"] == true), "{st}");

    // Smoke on the running stack (it leaves its image, `smoke-blob`, for the boot below).
    let out = run(home.novabox().arg("smoke"));
    assert_ok(&out);
    assert!(stdout(&out).contains("smoke passed"), "{}", stdout(&out));

    // Boot a server through the CLI.
    let out = run(home.novabox().args(["server", "create", "demo1", "--image", "smoke-blob", "--wait", "--json"]));
    assert_ok(&out);
    let server = json_of(&out);
    assert_eq!(server["status"], "ACTIVE", "{server}");
    let id = server["id"].as_str().unwrap().to_string();

    let out = run(home.novabox().args(["status", "--json"]));
    let st = json_of(&out);
    let guest = st["guests"].as_array().unwrap().iter().find(|g| g["id"] == id.as_str()).cloned();
    assert_eq!(guest.as_ref().map(|g| g["vm_state"].clone()), Some(Value::from("active")), "{st}");

    // Trace: the api, scheduler and compute steps of the boot, in order, with durations.
    let out = run(home.novabox().args(["trace", "demo1", "--sql"]));
    assert_ok(&out);
    let tree = stdout(&out);
    eprintln!("{tree}");
    let pos = |needle: &str| tree.find(needle).unwrap_or_else(|| panic!("no {needle:?} in\n{tree}"));
    let api = pos("1. [api] POST");
    let validate = pos("[api] validate");
    let create = pos("[api] db.instance_create");
    let cast = pos("[api] rpc.cast scheduler build_instances");
    let select = pos("[scheduler] select_host");
    let build = pos("[compute] handle build_and_run_instance");
    let networking = pos("[compute] networking");
    let spawning = pos("[compute] spawning");
    assert!(api < validate && validate < create && create < cast && cast < select, "{tree}");
    assert!(select < build && build < networking && networking < spawning, "{tree}");
    assert!(tree.contains(" ms\n"), "{tree}");
    assert!(tree.contains("sql "), "{tree}");

    // Events: the create.start/end of that server.
    let out = run(home.novabox().args(["events", "--json", "--server", &id]));
    assert_ok(&out);
    let events: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let types: Vec<&str> = events.iter().filter_map(|e| e["event_type"].as_str()).collect();
    assert_eq!(types, ["compute.instance.create.start", "compute.instance.create.end"]);
    let request_id = events[0]["request_id"].as_str().expect("request id").to_string();

    // Logs of that request: compute lines, each with that request id only.
    let out = run(home.novabox().args(["logs", "--request-id", &request_id]));
    assert_ok(&out);
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert!(!lines.is_empty(), "no log lines for {request_id}");
    assert!(lines.iter().all(|l| l.contains(&format!("request_id={request_id}"))), "{lines:#?}");
    let out = run(home.novabox().args(["logs", "compute", "--request-id", &request_id]));
    assert!(stdout(&out).lines().count() > 0, "no compute lines for {request_id}");
    assert!(stdout(&out).lines().all(|l| l.contains("service=\"compute\"")));

    // A deleted server is still traceable by name.
    let out = run(home.novabox().args(["server", "delete", "demo1", "--wait"]));
    assert_ok(&out);
    let out = run(home.novabox().args(["trace", "demo1"]));
    assert_ok(&out);
    assert!(stdout(&out).contains("[compute] spawning"), "{}", stdout(&out));
    let out = run(home.novabox().args(["trace", "no-such-server"]));
    assert_eq!(out.status.code(), Some(8));

    // Down stops the process; nothing is left running; status says it is down.
    let pid = stack.pid;
    let out = run(home.novabox().arg("down"));
    assert_ok(&out);
    wait_dead(pid);
    assert!(!home.path().join("run/novabox.pid").exists());
    let out = run(home.novabox().arg("status"));
    assert_eq!(out.status.code(), Some(4));
    assert!(stdout(&out).contains("not running"), "{}", stdout(&out));

    // Purge needs confirmation; --yes gives it.
    let out = run(home.novabox().args(["down", "--purge"]).stdin(std::process::Stdio::null()));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(home.path().join("novabox.toml").exists());
    let out = run(home.novabox().args(["down", "--purge", "--yes"]));
    assert_ok(&out);
    assert!(!home.path().exists());
    drop(stack);
}

/// The steps of a fake-driver boot that come last: the spawn, the create.end notification
/// stored, the action finished. A trace without them is not the whole boot.
const LAST_STEPS: [&str; 3] = [
    "[compute] driver.spawn (driver=fake)",
    "[conductor] handle notify on notifications.info compute.instance.create.end",
    "[conductor] handle action_finish on conductor",
];

/// The README's path, as a user follows it: `server create --wait`, then `trace` at once. The
/// spans of a boot's last steps are written a moment after the server goes ACTIVE, and `trace`
/// used to say "no spans recorded" every time; it must show the whole boot, every time.
#[test]
fn sandbox_trace_at_once_after_create_wait_shows_the_whole_boot_20_times() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let (stack, _) = up_detached(&home);
    assert_ok(&run(home.novabox().arg("smoke")));
    for i in 0..20 {
        let name = format!("t{i}");
        assert_ok(&run(home.novabox().args(["server", "create", &name, "--image", "smoke-blob", "--wait"])));
        let out = run(home.novabox().args(["trace", &name]));
        assert_ok(&out);
        let tree = stdout(&out);
        for step in ["1. [api] POST", "[scheduler] select_host", "[compute] spawning"].iter().chain(&LAST_STEPS) {
            assert!(tree.contains(step), "boot {i}: no {step:?} in\n{tree}");
        }
        assert!(!tree.contains("incomplete") && !tree.contains("in progress"), "boot {i}:\n{tree}");
        if i == 0 {
            // The JSON has the same whole tree: every span's parent is there, and every
            // message sent has its handler under it.
            let out = run(home.novabox().args(["trace", &name, "--json"]));
            assert_ok(&out);
            let spans = json_of(&out);
            let spans = spans.as_array().expect("a list of spans");
            let has = |id: &Value| spans.iter().any(|s| s["span_id"] == *id);
            let has_child = |id: &Value| spans.iter().any(|s| s["parent_id"] == *id);
            for s in spans {
                assert!(s["parent_id"].is_null() || has(&s["parent_id"]), "a parent is missing: {s}");
                if s["name"] == "rpc.cast" || s["name"] == "rpc.call" {
                    assert!(has_child(&s["span_id"]), "a message without its handler: {s}");
                }
            }
        }
        // The demo project's quota is 10 servers.
        assert_ok(&run(home.novabox().args(["server", "delete", &name, "--wait"])));
    }
    assert_ok(&run(home.novabox().arg("down")));
    wait_dead(stack.pid);
}

/// A boot still in progress shows the steps so far and says so; once ACTIVE, the whole boot.
#[test]
fn sandbox_trace_of_a_boot_in_progress_says_so() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    home.edit_config(&[("fake_delay_ms = 0", "fake_delay_ms = 3000")]);
    let (stack, _) = up_detached(&home);
    assert_ok(&run(home.novabox().arg("smoke")));
    let out = run(home.novabox().args(["server", "create", "slow", "--image", "smoke-blob", "--json"]));
    assert_ok(&out);
    assert_eq!(json_of(&out)["status"], "BUILD");
    let out = run(home.novabox().args(["trace", "slow"]));
    assert_ok(&out);
    let tree = stdout(&out);
    assert!(tree.contains("the boot is still in progress (BUILD, task "), "{tree}");
    assert!(tree.contains("1. [api] POST"), "the steps so far are shown:\n{tree}");
    assert!(!tree.contains("driver.spawn"), "{tree}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(home.novabox().args(["server", "show", "slow", "--json"]));
        if json_of(&out)["status"] == "ACTIVE" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the slow boot never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run(home.novabox().args(["trace", "slow"]));
    assert_ok(&out);
    let tree = stdout(&out);
    for step in LAST_STEPS {
        assert!(tree.contains(step), "no {step:?} in\n{tree}");
    }
    assert!(!tree.contains("in progress"), "{tree}");
    assert_ok(&run(home.novabox().arg("down")));
    wait_dead(stack.pid);
}

#[test]
fn sandbox_smoke_fails_with_the_step_when_nothing_runs() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let out = run(home.novabox().arg("smoke"));
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    assert!(stdout(&out).contains("FAIL  login"), "{}", stdout(&out));
}

#[test]
fn sandbox_two_homes_side_by_side() {
    let a = TestHome::new();
    let b = TestHome::new();
    assert_ok(&a.init(&["--driver", "fake", "--bus", "local"]));
    assert_ok(&b.init(&["--driver", "fake", "--bus", "local"]));
    let (sa, ra) = up_detached(&a);
    let (sb, rb) = up_detached(&b);
    assert_ne!(ra["api_url"], rb["api_url"]);
    assert_ne!(sa.pid, sb.pid);
    for h in [&a, &b] {
        let out = run(h.novabox().arg("smoke"));
        assert_ok(&out);
    }
    let (pa, pb) = (sa.pid, sb.pid);
    assert_ok(&run(a.novabox().arg("down")));
    wait_dead(pa);
    assert!(alive(pb), "stopping home a stopped home b");
    assert_ok(&run(b.novabox().args(["status"])));
    // NOVABOX_HOME names a home as --home does.
    let out = run(std::process::Command::new(env!("CARGO_BIN_EXE_novabox"))
        .env("NOVABOX_HOME", b.path())
        .args(["status", "--json"]));
    assert_ok(&out);
    assert_eq!(json_of(&out)["pid"].as_i64(), Some(pb as i64));
    let out = run(std::process::Command::new(env!("CARGO_BIN_EXE_novabox"))
        .env("NOVABOX_HOME", a.path())
        .args(["status", "--json"]));
    assert_eq!(json_of(&out)["running"], false, "home a is down");
    assert_ok(&run(b.novabox().arg("down")));
    wait_dead(pb);
    drop((sa, sb));
}

#[test]
fn sandbox_up_fails_fast_with_phase_reason_and_log() {
    let home = TestHome::new();
    let port = free_port().to_string();
    let out = run(home
        .novabox()
        .args([
            "init",
            "--yes",
            "--no-install",
            "--no-boot-probe",
            "--driver",
            "fake",
            "--bus",
            "local",
            "--api-port",
            &port,
            "--bus-port",
            &free_port().to_string(),
        ])
        .arg("--clouds-yaml")
        .arg(home.clouds_yaml()));
    assert_ok(&out);
    // Something else takes the port after init checked it.
    let _taken = std::net::TcpListener::bind(format!("127.0.0.1:{port}")).expect("bind");
    let out = run(home.novabox().args(["up", "--detach", "--wait", "--json"]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("phase `api`"), "{err}");
    assert!(err.contains(&port) && err.contains("novabox.log"), "{err}");
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(!home.path().join("run/novabox.pid").exists());
}

#[test]
fn sandbox_up_after_a_crash_resumes_from_disk() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let (stack, _) = up_detached(&home);
    assert_ok(&run(home.novabox().arg("smoke")));
    let out = run(home.novabox().args(["server", "create", "keep", "--image", "smoke-blob", "--wait", "--json"]));
    assert_ok(&out);
    let id = json_of(&out)["id"].as_str().unwrap().to_string();
    // SAFETY: kill(2) on the stack we started; -9 is the crash being simulated.
    unsafe { libc::kill(stack.pid, libc::SIGKILL) };
    wait_dead(stack.pid);
    // The pid file is stale now; up must not believe it.
    let (stack2, _) = up_detached(&home);
    assert_ne!(stack2.pid, stack.pid);
    let out = run(home.novabox().args(["server", "show", &id, "--json"]));
    assert_ok(&out);
    assert_eq!(json_of(&out)["status"], "ACTIVE", "{}", stdout(&out));
    assert_ok(&run(home.novabox().arg("down")));
    wait_dead(stack2.pid);
    drop((stack, stack2));
}

/// Kills (by pid) every process left with this home on its command line, even when the test
/// failed halfway: detached stacks and their qemu guests.
struct KillLeftovers(std::path::PathBuf);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        for pid in pids_mentioning(&self.0.to_string_lossy()) {
            // SAFETY: a process this test started (its command line names this test's home).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The live qemu of a guest, by its pid file.
fn guest_qemu(home: &TestHome, id: &str) -> Option<i32> {
    let pid: i32 =
        std::fs::read_to_string(home.path().join("instances").join(id).join("qemu.pid")).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline).contains(&format!("guest={id},")).then_some(pid)
}

fn console_count(home: &TestHome, id: &str, marker: &str) -> usize {
    std::fs::read_to_string(home.path().join("instances").join(id).join("console.log"))
        .map(|t| t.matches(marker).count())
        .unwrap_or(0)
}

/// `down` stops a real (TCG) guest: ACPI first, then hard after `shutdown_timeout_secs` (the
/// busybox test guest has no acpid); the server stays ACTIVE, and the next `up` boots it again.
#[test]
fn sandbox_down_stops_guests_and_up_starts_them_again_needs_qemu() {
    crate::guests::require_qemu();
    let home = TestHome::new();
    let _cleanup = KillLeftovers(home.path().to_path_buf());
    let deb_cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deb-cache");
    let out = run(home
        .init_cmd(&["--driver", "qemu", "--bus", "local", "--accel", "tcg", "--network-mode", "user"])
        .env("NOVABOX_DEB_CACHE", deb_cache));
    assert_ok(&out);
    home.edit_config(&[("shutdown_timeout_secs = 10", "shutdown_timeout_secs = 2")]);

    let up = || {
        let out = run(home.novabox().args(["up", "--detach", "--wait", "--json"]));
        assert_ok(&out);
        json_of(&out)["pid"].as_i64().expect("pid") as i32
    };
    let stack = up();
    let out = run(home
        .novabox()
        .args(["server", "create", "g1", "--image", "tiny", "--flavor", "m1.tiny", "--wait", "--json"]));
    assert_ok(&out);
    let id = json_of(&out)["id"].as_str().unwrap().to_string();
    let qemu = guest_qemu(&home, &id).expect("the guest's qemu runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while console_count(&home, &id, "novabox-guest: ready") < 1 {
        assert!(std::time::Instant::now() < deadline, "the guest never booted");
        std::thread::sleep(Duration::from_millis(250));
    }

    // Status shows the guest with its accelerator, addresses and the disk it uses.
    let st = json_of(&run(home.novabox().args(["status", "--json"])));
    let guest = st["guests"].as_array().unwrap().iter().find(|g| g["id"] == id.as_str()).cloned().unwrap();
    assert_eq!(guest["accel"], "tcg", "{guest}");
    assert!(guest["disk_used_bytes"].as_u64().is_some_and(|b| b > 0), "{guest}");
    assert!(guest["addresses"].as_object().is_some_and(|a| !a.is_empty()), "{guest}");
    let out = run(home.novabox().arg("status"));
    assert!(
        stdout(&out).lines().any(|l| l.contains(&id) && l.contains(" tcg ") && l.contains(" MiB")),
        "{}",
        stdout(&out)
    );

    let out = run(home.novabox().arg("down"));
    assert_ok(&out);
    wait_dead(stack);
    wait_dead(qemu);
    assert_eq!(guest_qemu(&home, &id), None, "qemu left running after down");
    assert!(pids_mentioning(&home.path().to_string_lossy()).is_empty(), "something of this home still runs");
    let log = std::fs::read_to_string(home.path().join("logs/novabox.log")).unwrap();
    assert!(log.contains("no clean shutdown within 2s"), "the hard path was not taken:\n{log}");
    // Stopped by the host going down, not by the user: still ACTIVE (read with the stack down).
    let st = json_of(&run(home.novabox().args(["status", "--json"])));
    let guest = st["guests"].as_array().unwrap().iter().find(|g| g["id"] == id.as_str()).cloned().unwrap();
    assert_eq!(guest["vm_state"], "active", "{st}");

    // In the foreground this time: SIGTERM (as Ctrl-C) stops the guest the same way.
    let log = std::fs::File::create(home.path().join("up.log")).unwrap();
    let mut foreground = home
        .novabox()
        .arg("up")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("novabox up");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !home.path().join("run/ready.json").exists() {
        assert!(
            foreground.try_wait().unwrap().is_none(),
            "up exited: {}",
            std::fs::read_to_string(home.path().join("up.log")).unwrap()
        );
        assert!(std::time::Instant::now() < deadline, "up not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run(home.novabox().args(["server", "show", &id, "--json"]));
    assert_ok(&out);
    let server = json_of(&out);
    assert_eq!(
        (server["status"].as_str(), server["OS-EXT-STS:power_state"].as_i64()),
        (Some("ACTIVE"), Some(1)),
        "{server}"
    );
    let again = guest_qemu(&home, &id).expect("up starts the guest again");
    assert_ne!(again, qemu);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while console_count(&home, &id, "novabox-guest: ready") < 2 {
        assert!(std::time::Instant::now() < deadline, "the guest did not boot again");
        std::thread::sleep(Duration::from_millis(250));
    }
    // SAFETY: signalling the `novabox up` this test started, by its pid.
    unsafe { libc::kill(foreground.id() as i32, libc::SIGTERM) };
    let status = foreground.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", std::fs::read_to_string(home.path().join("up.log")).unwrap());
    wait_dead(again);
    assert_eq!(guest_qemu(&home, &id), None, "qemu left running after Ctrl-C");

    let stack = up();
    let again = guest_qemu(&home, &id).expect("up starts the guest again");
    // A stack killed with -9 cannot stop its guests: down does, by their pid files.
    // SAFETY: kill(2) on the stack this test started; -9 is the crash being simulated.
    unsafe { libc::kill(stack, libc::SIGKILL) };
    wait_dead(stack);
    assert!(guest_qemu(&home, &id).is_some(), "the guest died with the stack");
    let out = run(home.novabox().arg("down"));
    assert_ok(&out);
    assert!(stdout(&out).contains(&format!("stopped guest {id}")), "{}", stdout(&out));
    wait_dead(again);
    assert!(pids_mentioning(&home.path().to_string_lossy()).is_empty(), "something of this home still runs");
}

/// A `novabox logs -f` / `events -f` running in the background; its lines arrive on a channel.
/// Stopped by pid (SIGTERM, as Ctrl-C would) when dropped, also when the test fails.
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follower {
    fn start(cmd: &mut std::process::Command) -> Follower {
        use std::io::BufRead;
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the follower");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    /// Waits for a line containing every needle; returns the lines seen so far.
    fn wait_for(&self, needles: &[&str], seen: &mut Vec<String>) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if needles.iter().all(|n| line.contains(n)) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {needles:?} within 30 s; got:\n{}", seen.join("\n")),
            }
        }
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling the follower this test started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait for the follower")
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `logs -f compute` and `events -f` started before a boot print that boot's lines and events
/// as they happen, and stop on SIGTERM.
#[test]
fn sandbox_logs_and_events_follow_a_boot() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    // Started before the stack: the follower waits for the log file to appear.
    let mut logs = Follower::start(home.novabox().args(["logs", "-f", "compute"]));
    let (stack, _) = up_detached(&home);
    assert_ok(&run(home.novabox().arg("smoke")));
    let mut events = Follower::start(home.novabox().args(["events", "-f", "--json"]));
    // What smoke did is printed first; wait for its last event so only new ones follow.
    let mut seen = Vec::new();
    events.wait_for(&["compute.instance.delete.end"], &mut seen);

    let out = run(home.novabox().args(["server", "create", "followed", "--image", "smoke-blob", "--wait", "--json"]));
    assert_ok(&out);
    let id = json_of(&out)["id"].as_str().unwrap().to_string();
    let end = events.wait_for(&["compute.instance.create.end", &id], &mut seen);
    let event: Value = serde_json::from_str(&end).unwrap();
    let request_id = event["request_id"].as_str().expect("request id").to_string();
    let mut log_lines = Vec::new();
    let line = logs.wait_for(&[&format!("request_id={request_id}"), &id], &mut log_lines);
    assert!(line.contains("service=\"compute\""), "{line}");
    assert!(log_lines.iter().all(|l| logs_service_is_compute(l)), "{log_lines:#?}");

    for f in [&mut logs, &mut events] {
        let status = f.stop();
        use std::os::unix::process::ExitStatusExt;
        assert!(status.success() || status.signal() == Some(libc::SIGTERM), "{status:?}");
    }
    assert_ok(&run(home.novabox().arg("down")));
    wait_dead(stack.pid);
    drop(stack);
}

/// The innermost span of a log line is the compute service's.
fn logs_service_is_compute(line: &str) -> bool {
    line.rfind("service=").is_some_and(|at| line[at..].starts_with("service=\"compute\""))
}

/// The doctor phase comes first and stops `up` before anything starts when the configured
/// driver cannot run here, with the phase, the reason and the fix.
#[test]
fn sandbox_up_doctor_phase_fails_fast_when_the_driver_cannot_run() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    // qemu lives in /usr/bin, which this PATH lacks.
    let out = run(home.novabox().env("PATH", "/nonexistent").args(["up", "--driver", "qemu", "--detach", "--wait"]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("phase `doctor`"), "{err}");
    assert!(
        err.contains("qemu-system-x86_64 is missing") && err.contains("sudo apt-get install qemu-system-x86"),
        "{err}"
    );
    let log = std::fs::read_to_string(home.path().join("logs/novabox.log")).unwrap();
    assert!(!log.contains("phase=\"broker\""), "it went on after the doctor:\n{log}");
    assert!(!home.path().join("run/novabox.pid").exists());
    assert!(!home.path().join("run/ready.json").exists());
}

/// The Vagrantfile cannot be run here (no vagrant, no nested hypervisor), so check what can be:
/// Ruby syntax; what it configures, by evaluating it against a stub of Vagrant's config API
/// (tests/fixtures/vagrant/stub.rb); the provisioning shell's syntax; and its pure part, the
/// edit of `[api] listen`, against a config the real `init` wrote.
#[test]
fn sandbox_vagrantfile_parses_configures_nested_virt_and_its_listen_edit_works() {
    let vagrantfile = manifest_dir().join("Vagrantfile");
    let ruby = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new("ruby")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ruby ({e}): run scripts/install-deps"))
    };
    let out = ruby(&["-c".as_ref(), vagrantfile.as_os_str()]);
    assert_ok(&out);
    let stub = manifest_dir().join("tests/fixtures/vagrant/stub.rb");
    let out = ruby(&[stub.as_os_str(), vagrantfile.as_os_str()]);
    assert_ok(&out);
    let v: Value = serde_json::from_slice(&out.stdout).expect("stub output");
    let vm = &v["vm"];
    assert!(vm["box"].as_str().is_some_and(|b| b.contains("debian")), "{vm}");

    let port = novabox::config::Config::default().api.port;
    let forward = &vm["network"][0];
    assert_eq!(forward["args"][0], "forwarded_port", "{forward}");
    assert_eq!(forward["kw"]["guest"], port, "the forward must reach novabox's default API port: {forward}");
    assert_eq!(forward["kw"]["host_ip"], "127.0.0.1", "the host side stays on loopback: {forward}");

    let provider = |name: &str| -> Value {
        vm["provider"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["args"][0] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} provider: {vm}"))
    };
    assert_eq!(provider("vmware_desktop")["block"]["vmx"]["vhv.enable"], "TRUE");
    let libvirt = provider("libvirt")["block"].clone();
    assert_eq!((libvirt["nested"].as_bool(), libvirt["cpu_mode"].as_str()), (Some(true), Some("host-passthrough")));
    let customize = provider("virtualbox")["block"]["customize"][0]["args"][0].clone();
    assert_eq!(customize, serde_json::json!(["modifyvm", "id", "--nested-hw-virt", "on"]));

    // Provisioning: valid shell; installs, inits, then starts the stack on every boot.
    let scripts: Vec<(String, String)> = vm["provision"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (p["args"][0].as_str().unwrap_or("").to_string(), p["kw"]["inline"].as_str().expect("inline").to_string())
        })
        .collect();
    for (name, script) in &scripts {
        let mut sh = std::process::Command::new("bash");
        sh.arg("-n")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = sh.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "provisioner {name}: {}", stderr(&out));
    }
    let install = &scripts.iter().find(|(n, _)| n == "install").expect("install provisioner").1;
    assert!(install.contains("novabox init --yes"), "{install}");
    let up = vm["provision"].as_array().unwrap().iter().find(|p| p["args"][0] == "up").expect("up provisioner");
    assert_eq!(up["kw"]["run"], "always");
    assert!(up["kw"]["inline"].as_str().unwrap().contains("novabox up --detach --wait"));

    // The listen edit, from `sed` to the end of its check, on a config `init` wrote.
    let start = install.find("sed -i").expect("the listen edit");
    let end = install[start..].find("\n    }").expect("the end of its check") + start + "\n    }".len();
    let edit = &install[start..end];
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let run_edit = || run(std::process::Command::new("bash").args(["-euc", edit]).env("NOVABOX_HOME", home.path()));
    assert_ok(&run_edit());
    let out = run(home.novabox().args(["config", "show", "--json"]));
    assert_ok(&out);
    assert_eq!(json_of(&out)["api"]["listen"], "0.0.0.0");
    // A config it cannot edit fails the provisioning with what to do, instead of going on.
    home.edit_config(&[("listen = \"0.0.0.0\"", "listen = \"::1\"")]);
    let out = run_edit();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("set it to \"0.0.0.0\" by hand"), "{}", stderr(&out));
}

/// A sandbox left running keeps its history bounded: traces and notifications older than
/// `[db] history_days` go at start (and hourly); recent ones stay.
#[test]
fn history_older_than_history_days_is_deleted() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    home.edit_config(&[("history_days = 14", "history_days = 3")]);
    let db = rusqlite::Connection::open(home.path().join("novabox.db")).unwrap();
    let now = chrono::Utc::now();
    for (id, at) in [("old", now - chrono::Duration::days(4)), ("recent", now - chrono::Duration::days(2))] {
        db.execute(
            "INSERT INTO trace_spans (request_id, span_id, service, name, start_us, duration_us)
             VALUES (?1, ?1, 'api', 'create', ?2, 1)",
            rusqlite::params![format!("req-{id}"), at.timestamp_micros()],
        )
        .unwrap();
        db.execute(
            "INSERT INTO notifications (message_id, event_type, publisher_id, payload, created_at)
             VALUES (?1, 'compute.instance.create.end', 'compute.test', '{}', ?2)",
            rusqlite::params![format!("m-{id}"), at.format("%Y-%m-%d %H:%M:%S%.6f").to_string()],
        )
        .unwrap();
    }
    let left = |table: &str, column: &str| -> Vec<String> {
        let mut stmt = db
            .prepare(&format!(
                "SELECT {column} FROM {table} WHERE {column} LIKE '%-old' OR {column} LIKE '%-recent' ORDER BY 1"
            ))
            .unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
    };
    let stack = home.up(&[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while left("trace_spans", "request_id").len() > 1 {
        assert!(std::time::Instant::now() < deadline, "old spans not deleted: {:?}", left("trace_spans", "request_id"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(left("trace_spans", "request_id"), ["req-recent"]);
    assert_eq!(left("notifications", "message_id"), ["m-recent"]);
    assert!(stack.stop().success());
}

/// The first start of a new home boots the probe guest beside the broker's start. A start-up
/// that fails meanwhile (here: the broker's port is taken) stops the probe, so no probe qemu
/// outlives the failed `up`, and keeps the decision: a report saved, with the TCG probe either
/// done or marked pending (so the next `up` boots it again).
#[test]
fn sandbox_up_failing_beside_the_probe_leaves_no_probe_qemu_needs_qemu() {
    crate::guests::require_qemu();
    let home = TestHome::new();
    let _cleanup = KillLeftovers(home.path().to_path_buf());
    let out = run(home
        .init_cmd(&["--driver", "qemu", "--bus", "rabbitmq", "--network-mode", "user"])
        .env("NOVABOX_DEB_CACHE", crate::guests::deb_cache()));
    assert_ok(&out);
    // As a new home that `up` initialized: no saved report, so the stack probes.
    std::fs::remove_file(home.path().join("doctor.json")).expect("init saved a report");
    let config = std::fs::read_to_string(home.path().join("novabox.toml")).unwrap();
    let bus: toml::Value = toml::from_str(&config).unwrap();
    let port = bus["bus"]["port"].as_integer().expect("bus port");
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port as u16)).expect("bind the broker's port");
    let out = run(home.novabox().args(["up", "--detach", "--wait"]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("phase `broker`") || stderr(&out).contains("phase `doctor probe`"),
        "{}",
        stderr(&out)
    );
    let consoles = home.path().join("logs").to_string_lossy().into_owned();
    assert!(pids_mentioning(&consoles).is_empty(), "a probe qemu outlived the failed up");
    let report = novabox::doctor::Report::load(&home.path().join("doctor.json")).expect("the probe saved its report");
    let tcg_done = report.check("probe.tcg").is_some_and(|c| c.status != novabox::doctor::Status::Note);
    let kvm_passed = report.check("probe.kvm").is_some_and(|c| c.status == novabox::doctor::Status::Pass);
    assert!(tcg_done || kvm_passed || report.tcg_pending, "{report:?}");
    if report.tcg_pending {
        let finding = &report.check("probe.tcg").expect("probe.tcg").finding;
        assert!(finding.starts_with("pending: "), "{report:?}");
    }
}
