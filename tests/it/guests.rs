//! Real guests through the whole stack: `novabox init` with the qemu driver imports the test
//! guest as `tiny`, `novabox up` runs as a child process, and the `novabox server` client
//! boots, stops, starts and deletes a server through the REST API. TCG, one guest at a time.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, assert_ok, stdout, TestHome};

/// The kernel .deb cache shared with the doctor tests, so only the first run needs apt.
pub fn deb_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deb-cache")
}

/// Every process whose command line mentions `needle` (here: a test's own home).
pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
                .filter(|pid| *pid != me)
                .filter(|pid| {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    String::from_utf8_lossy(&cmdline).contains(needle)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `novabox up` for one home; on drop (also when the test fails) it is stopped by its pid, and
/// so is any qemu left with this home's path on its command line.
pub struct Up {
    child: Child,
    home: PathBuf,
    /// Whether dropping this also kills the home's guests (not after `kill9`: they outlive it).
    reap_guests: bool,
}

impl Up {
    pub fn start(home: &TestHome) -> Up {
        let log = std::fs::File::create(home.path().join("up.log")).unwrap();
        let child = home
            .novabox()
            .arg("up")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("novabox up starts");
        let up = Up { child, home: home.path().to_path_buf(), reap_guests: true };
        let ready = home.path().join("run/ready.json");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "novabox up not ready:\n{}", up.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        up
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("up.log")).unwrap_or_default()
    }

    /// SIGKILL by pid, as a crash: the guests, in their own processes, go on running. The
    /// stale `run/ready.json` is removed so the next `start` waits for the new stack.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.home.join("run/ready.json"));
        self.reap_guests = false;
    }

    /// SIGTERM by pid, then wait for the exit.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: signalling the child this test started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
        if !self.reap_guests {
            return;
        }
        for pid in pids_mentioning(&self.home.to_string_lossy()) {
            // SAFETY: a qemu this test's stack started (its command line names this test's home).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

pub fn server(home: &TestHome, args: &[&str]) -> std::process::Output {
    common::run(home.novabox().arg("server").args(args))
}

pub fn status(home: &TestHome, name: &str) -> Value {
    let out = server(home, &["show", name, "--json"]);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).expect("server show --json")
}

pub fn wait_status(home: &TestHome, up: &Up, name: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = status(home, name);
        if s["status"] == want && s["OS-EXT-STS:task_state"].is_null() {
            return s;
        }
        assert!(Instant::now() < deadline, "{name} never {want}: {s:#}\n{}", up.log());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits for `marker` to be on the console `count` times, through the compute API.
pub fn wait_console(home: &TestHome, name: &str, marker: &str, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = server(home, &["console-log", name]);
        assert_ok(&out);
        let text = stdout(&out);
        if text.matches(marker).count() >= count {
            return text;
        }
        assert!(Instant::now() < deadline, "no {count}x {marker:?} on the console of {name}:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Fails (never skips) when qemu is not installed: CI installs it, and a skipped guest test
/// would pass for the wrong reason.
pub fn require_qemu() {
    assert!(
        novabox::compute::virt::qemu::QemuDriver::available(),
        "qemu-system-x86_64 and qemu-img are missing: run scripts/install-deps"
    );
}

pub(super) fn qemu_of(instance: &str) -> Vec<i32> {
    pids_mentioning(&format!("guest={instance}"))
}

#[test]
fn boots_stops_starts_and_deletes_a_real_guest_needs_qemu() {
    require_qemu();
    let home = TestHome::new();
    // TCG on purpose: without a probe boot, KVM would be a guess. User networking: this test
    // runs in the host's own network namespace, where it must not create bridges.
    let out = common::run(
        home.init_cmd(&["--driver", "qemu", "--bus", "local", "--accel", "tcg", "--network-mode", "user"])
            .env("NOVABOX_DEB_CACHE", deb_cache()),
    );
    assert_ok(&out);
    assert!(stdout(&out).contains(" tiny (test guest"), "{}", stdout(&out));
    // Only into an empty store: a second init imports nothing.
    let again = common::run(home.novabox().args(["init", "--yes", "--no-install", "--no-boot-probe"]));
    assert_ok(&again);
    assert!(!stdout(&again).contains("tiny (test guest"));

    // Heartbeats every second, so the power-state sync (every third) notices a dead qemu soon.
    home.edit_config(&[("heartbeat_secs = 10", "heartbeat_secs = 1")]);

    let mut up = Up::start(&home);
    assert!(up.log().contains("driver qemu"), "{}", up.log());

    let out = server(&home, &["create", "e2e-guest", "--image", "tiny", "--flavor", "m1.tiny", "--wait", "--json"]);
    assert_ok(&out);
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["status"], "ACTIVE", "{created:#}");
    let id = created["id"].as_str().unwrap().to_string();
    let dir = home.path().join("instances").join(&id);
    assert!(dir.join("console.log").is_file());
    assert_eq!(qemu_of(&id).len(), 1, "one qemu per guest");

    let text = wait_console(&home, "e2e-guest", "novabox-guest: ready", 1);
    assert!(text.contains("novabox-guest: init reached"), "{text}");
    assert!(text.contains("novabox-guest: hostname e2e-guest"), "{text}");

    // User networking: a loopback port forwarded to the guest's port 22, where the test
    // image answers an ssh banner; reported by the API, `server show` and `status`.
    let forward = status(&home, "e2e-guest")["novabox:ssh_forward"].as_str().map(str::to_string);
    let forward = forward.expect("a user-mode guest has an ssh forward");
    assert!(forward.starts_with("127.0.0.1:"), "{forward}");
    assert_eq!(read_banner(&forward), "SSH-2.0-novabox-test");
    let shown = server(&home, &["show", "e2e-guest"]);
    assert!(stdout(&shown).contains(&format!("ssh       {forward}")), "{}", stdout(&shown));
    let st = common::run(home.novabox().args(["status", "--json"]));
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["guests"][0]["ssh"], forward.as_str(), "{st:#}");

    assert_ok(&server(&home, &["stop", "e2e-guest"]));
    let s = wait_status(&home, &up, "e2e-guest", "SHUTOFF");
    assert_eq!(s["OS-EXT-STS:power_state"], 4, "{s:#}");
    assert!(qemu_of(&id).is_empty(), "a stopped guest has no qemu");

    assert_ok(&server(&home, &["start", "e2e-guest"]));
    wait_status(&home, &up, "e2e-guest", "ACTIVE");
    wait_console(&home, "e2e-guest", "novabox-guest: ready", 2);
    // The port stays the guest's across power cycles (an ssh config may name it).
    assert_eq!(status(&home, "e2e-guest")["novabox:ssh_forward"], forward.as_str());

    // qemu dies behind novabox's back: the periodic sync marks the server SHUTOFF (crashed).
    let pids = qemu_of(&id);
    assert_eq!(pids.len(), 1);
    // SAFETY: signalling the qemu this test's stack started, by its pid.
    assert_eq!(unsafe { libc::kill(pids[0], libc::SIGKILL) }, 0);
    let s = wait_status(&home, &up, "e2e-guest", "SHUTOFF");
    assert_eq!(s["OS-EXT-STS:power_state"], 6, "crashed: {s:#}");

    assert_ok(&server(&home, &["delete", "e2e-guest", "--wait"]));
    assert!(qemu_of(&id).is_empty(), "qemu left after delete");
    assert!(!dir.exists(), "instance dir left after delete");
    assert!(std::net::TcpStream::connect(&forward).is_err(), "{forward} still listens after delete");
    assert!(home.path().join("instances/_base").read_dir().unwrap().next().is_some(), "base image kept");

    let status = up.stop().expect("novabox up stops on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", up.log());
    assert!(pids_mentioning(&home.path().to_string_lossy()).is_empty());
}

/// The first line a TCP server at `addr` sends, retried while the guest's network comes up
/// (its DHCP client and listener start in the background after boot).
fn read_banner(addr: &str) -> String {
    use std::io::BufRead;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        match std::net::TcpStream::connect(addr) {
            Ok(stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut line = String::new();
                match std::io::BufReader::new(stream).read_line(&mut line) {
                    Ok(n) if n > 0 => return line.trim_end().to_string(),
                    other => last = format!("{other:?}"),
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("no banner from {addr} within 60s: {last}");
}

/// Asking for the qemu driver on a host without qemu fails `up` with the package to install.
#[test]
fn qemu_driver_without_qemu_names_the_package() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    // qemu lives in /usr/bin, which this PATH lacks (the sbin fallbacks do not hold it).
    let out = common::run(home.novabox().env("PATH", "/nonexistent").args(["up", "--driver", "qemu"]));
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(err.contains("sudo apt-get install qemu-system-x86"), "{err}");
    assert!(!home.path().join("run/ready.json").exists());
}
