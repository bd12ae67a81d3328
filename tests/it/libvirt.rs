//! The libvirt driver through the whole stack: `novabox init --driver libvirt`, `novabox up` as
//! a child process, and the `novabox server` client booting, stopping, starting and deleting a
//! real guest (TCG) that libvirt runs. Needs the `libvirt` cargo feature.
//!
//! The daemon: a running one is used as it is; as root, when none runs, the test starts
//! `virtlogd` and `libvirtd` itself (pid files in its temp dir) and stops them by pid at the
//! end; as another user, `qemu:///session` (libvirt starts a private daemon for the user).
//! Where no daemon can run, it falls back to `test:///default`, libvirt's in-process test
//! driver, for what that can test (connecting; a guest it cannot run fails cleanly), and
//! prints which one it used.

#[cfg(not(feature = "libvirt"))]
#[test]
fn libvirt_guest_boots_stops_starts_and_is_deleted_needs_libvirt() {
    eprintln!(
        "SKIPPED: novabox was built without the `libvirt` feature; run `cargo test --features libvirt` \
         (needs libvirt-dev and pkg-config) to test the libvirt driver"
    );
}

#[cfg(feature = "libvirt")]
mod with_libvirt {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use serde_json::Value;

    use crate::common::{self, assert_ok, stdout, TestHome};
    use crate::guests::{deb_cache, pids_mentioning, server, wait_console, wait_status, Up};

    fn virsh(uri: &str, args: &[&str]) -> std::process::Output {
        common::run(Command::new("virsh").arg("-c").arg(uri).args(args))
    }

    fn answers(uri: &str) -> bool {
        Command::new("virsh").arg("-c").arg(uri).arg("version").output().is_ok_and(|o| o.status.success())
    }

    /// The libvirt the test talks to, and the daemons it started (stopped by pid on drop).
    struct Daemon {
        uri: String,
        started: Vec<(&'static str, PathBuf)>,
        _dir: tempfile::TempDir,
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            // libvirtd first: it talks to virtlogd.
            for (name, pid_file) in self.started.iter().rev() {
                let pid = std::fs::read_to_string(pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok());
                if let Some(pid) = pid {
                    eprintln!("libvirt test: stopping the {name} it started (pid {pid})");
                    // SAFETY: signalling a daemon this test started, by the pid it wrote.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
    }

    fn daemon() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon { uri: "test:///default".into(), started: Vec::new(), _dir: dir };
        if Command::new("virsh").arg("--version").output().is_err() {
            eprintln!("libvirt test: virsh is missing (libvirt-clients); falling back to test:///default");
            return d;
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let uri = if root { "qemu:///system" } else { "qemu:///session" };
        if answers(uri) {
            eprintln!("libvirt test: using the running libvirt at {uri}");
            d.uri = uri.into();
            return d;
        }
        if root {
            for name in ["virtlogd", "libvirtd"] {
                let pid_file = d._dir.path().join(format!("{name}.pid"));
                let program =
                    ["/usr/sbin", "/usr/bin", "/sbin"].iter().map(|p| Path::new(p).join(name)).find(|p| p.is_file());
                let Some(program) = program else {
                    eprintln!("libvirt test: {name} is not installed (libvirt-daemon-system)");
                    break;
                };
                let out = common::run(Command::new(program).arg("--daemon").arg("--pid-file").arg(&pid_file));
                if !out.status.success() {
                    eprintln!("libvirt test: {name} does not start: {}", common::stderr(&out));
                    break;
                }
                d.started.push((name, pid_file));
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while d.started.len() == 2 && Instant::now() < deadline {
                if answers(uri) {
                    eprintln!("libvirt test: started virtlogd and libvirtd; using {uri}");
                    d.uri = uri.into();
                    return d;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        eprintln!("libvirt test: no libvirt daemon is possible here; falling back to test:///default");
        d
    }

    /// Removes, on drop, the domains of this test's guests that are still defined (a failed
    /// assertion must not leave a guest in libvirt).
    struct Domains<'a> {
        uri: &'a str,
        ids: Vec<String>,
    }

    impl Drop for Domains<'_> {
        fn drop(&mut self) {
            for id in &self.ids {
                let name = format!("novabox-{id}");
                let _ = Command::new("virsh").arg("-c").arg(self.uri).args(["destroy", &name]).output();
                let _ = Command::new("virsh").arg("-c").arg(self.uri).args(["undefine", &name]).output();
            }
        }
    }

    fn init(home: &TestHome, uri: &str) {
        let out = common::run(
            home.init_cmd(&["--driver", "libvirt", "--bus", "local", "--accel", "tcg", "--network-mode", "user"])
                .env("NOVABOX_DEB_CACHE", deb_cache()),
        );
        assert_ok(&out);
        assert!(stdout(&out).contains(" tiny (test guest"), "{}", stdout(&out));
        // Heartbeats every second, so the power-state sync (every third) notices a dead qemu soon.
        home.edit_config(&[
            ("libvirt_uri = \"qemu:///system\"", &format!("libvirt_uri = \"{uri}\"")),
            ("heartbeat_secs = 10", "heartbeat_secs = 1"),
            ("shutdown_timeout_secs = 10", "shutdown_timeout_secs = 2"),
        ]);
    }

    fn create(home: &TestHome, name: &str) -> Value {
        let out = server(home, &["create", name, "--image", "tiny", "--flavor", "m1.tiny", "--wait", "--json"]);
        assert!(out.status.success() || !common::stdout(&out).is_empty(), "{}", common::stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    #[test]
    fn libvirt_guest_boots_stops_starts_and_is_deleted_needs_libvirt() {
        let t0 = Instant::now();
        let step = |what: &str| eprintln!("libvirt test: {what} at {:.1}s", t0.elapsed().as_secs_f64());
        let daemon = daemon();
        let uri = daemon.uri.clone();
        let home = TestHome::new();
        init(&home, &uri);
        let mut up = Up::start(&home);
        assert!(up.log().contains("driver libvirt"), "{}", up.log());
        let mut domains = Domains { uri: &uri, ids: Vec::new() };

        if uri == "test:///default" {
            // The test driver runs no qemu: the guest cannot start, and fails cleanly.
            eprintln!("libvirt test: checked against test:///default only (connect, clean failure)");
            let out = server(&home, &["create", "lv-guest", "--image", "tiny", "--flavor", "m1.tiny", "--wait"]);
            assert!(!out.status.success(), "{}", stdout(&out));
            let shown = server(&home, &["show", "lv-guest", "--json"]);
            let s: Value = serde_json::from_slice(&shown.stdout).unwrap();
            assert_eq!(s["status"], "ERROR", "{s:#}");
            assert!(s["fault"]["message"].as_str().unwrap_or("").contains("libvirt"), "{s:#}");
            let instances: Vec<_> = std::fs::read_dir(home.path().join("instances"))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name() != "_base")
                .collect();
            assert!(instances.is_empty(), "a failed guest left {instances:?}");
            assert!(up.stop().is_some_and(|s| s.success()), "{}", up.log());
            return;
        }

        step("created");
        let created = create(&home, "lv-guest");
        let id = created["id"].as_str().unwrap_or_default().to_string();
        domains.ids.push(id.clone());
        assert_eq!(created["status"], "ACTIVE", "{created:#}\n{}", up.log());
        let name = format!("novabox-{id}");
        let dir = home.path().join("instances").join(&id);
        for file in ["disk", "disk.config", "domain.xml", "libvirt.json", "kernel", "ramdisk"] {
            assert!(dir.join(file).exists(), "{file} missing");
        }
        let xml = std::fs::read_to_string(dir.join("domain.xml")).unwrap();
        assert!(xml.contains("<domain type='qemu'>"), "TCG asked for: {xml}");
        assert_eq!(stdout(&virsh(&uri, &["domstate", &name])).trim(), "running");

        let text = wait_console(&home, "lv-guest", "novabox-guest: ready", 1);
        assert!(text.contains("novabox-guest: init reached"), "{text}");
        assert!(text.contains("novabox-guest: hostname lv-guest"), "config drive: {text}");

        step("booted");
        // Issue 22: the screen through novabox's noVNC proxy (libvirt's VNC socket in the
        // guest's dir); the serial port only writes console.log, and the API says so.
        let novnc = crate::clients::osc_json(&home, &["console", "url", "show", "--novnc", "lv-guest"]);
        let page = novnc["url"].as_str().unwrap_or_default().to_string();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        assert_eq!(rt.block_on(crate::consoles::first_vnc_bytes(&page)), b"RFB 003.008\n");
        let serial = crate::clients::osc_output(&home, &["console", "url", "show", "--serial", "lv-guest"]);
        assert!(!serial.status.success(), "{}", stdout(&serial));
        assert!(common::stderr(&serial).contains("the novnc console works"), "{}", common::stderr(&serial));
        // Stopping the stack stops its guests (ACPI, then hard); libvirt keeps the domain
        // defined, and `up` starts it again (nova's resume_guests_state_on_host_boot).
        assert!(up.stop().is_some_and(|s| s.success()), "{}", up.log());
        assert_eq!(stdout(&virsh(&uri, &["domstate", &name])).trim(), "shut off", "stopped with the stack");
        // Up::start waits for ready.json: not the one the last `up` left.
        let _ = std::fs::remove_file(home.path().join("run/ready.json"));
        // Shadowed, not dropped: dropping an Up kills every process naming this home.
        let mut up = Up::start(&home);
        wait_status(&home, &up, "lv-guest", "ACTIVE");
        assert_eq!(stdout(&virsh(&uri, &["domstate", &name])).trim(), "running");
        wait_console(&home, "lv-guest", "novabox-guest: ready", 2);

        step("resumed");
        assert_ok(&server(&home, &["stop", "lv-guest"]));
        let s = wait_status(&home, &up, "lv-guest", "SHUTOFF");
        assert_eq!(s["OS-EXT-STS:power_state"], 4, "{s:#}");
        assert_eq!(stdout(&virsh(&uri, &["domstate", &name])).trim(), "shut off");

        assert_ok(&server(&home, &["start", "lv-guest"]));
        wait_status(&home, &up, "lv-guest", "ACTIVE");
        wait_console(&home, "lv-guest", "novabox-guest: ready", 3);

        step("restarted");
        // A volume hot-plugged through libvirt: the guest sees a new disk; detached again, it
        // is available, and libvirt's persistent definition no longer has it.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ready: Value =
            serde_json::from_str(&std::fs::read_to_string(home.path().join("run/ready.json")).unwrap()).unwrap();
        let demo = rt.block_on(crate::volumes::Api::login(&ready, "demo"));
        let disks_before =
            wait_console(&home, "lv-guest", "novabox-guest: ready", 3).matches("novabox-guest: disk ").count();
        let vol = rt.block_on(demo.create_volume(serde_json::json!({"volume": {"size": 1, "name": "lv-vol"}})));
        rt.block_on(demo.wait_volume(&vol, "available"));
        let attachments = format!("/compute/v2.1/servers/{id}/os-volume_attachments");
        let body = serde_json::json!({"volumeAttachment": {"volumeId": vol}});
        let (s, v) = rt.block_on(demo.call(reqwest::Method::POST, &attachments, Some(body)));
        assert_eq!(s, 200, "{v}\n{}", up.log());
        rt.block_on(demo.wait_volume(&vol, "in-use"));
        let text = wait_console(&home, "lv-guest", "novabox-guest: disk ", disks_before + 1);
        let new_disk = text.lines().filter(|l| l.contains("novabox-guest: disk ")).nth(disks_before).unwrap();
        assert!(new_disk.trim_end().ends_with(" 2097152"), "{new_disk}");
        assert!(stdout(&virsh(&uri, &["dumpxml", "--inactive", &name])).contains(&vol[..20]), "persistent");
        let (s, v) = rt.block_on(demo.call(reqwest::Method::DELETE, &format!("{attachments}/{vol}"), None));
        assert_eq!(s, 202, "{v}");
        rt.block_on(demo.wait_volume(&vol, "available"));
        assert!(!stdout(&virsh(&uri, &["dumpxml", "--inactive", &name])).contains(&vol[..20]), "detached");
        step("volume attached and detached");
        // qemu dies behind libvirt's back: libvirt says crashed, the power sync shows it.
        let pids = pids_mentioning(&format!("guest={name}"));
        assert_eq!(pids.len(), 1, "one qemu per guest");
        // SAFETY: signalling the qemu this test's guest runs in, by its pid.
        assert_eq!(unsafe { libc::kill(pids[0], libc::SIGKILL) }, 0);
        let s = wait_status(&home, &up, "lv-guest", "SHUTOFF");
        assert_eq!(s["OS-EXT-STS:power_state"], 6, "crashed: {s:#}");

        step("crash seen");
        assert_ok(&server(&home, &["delete", "lv-guest", "--wait"]));
        let all = stdout(&virsh(&uri, &["list", "--all", "--name"]));
        assert!(!all.contains(&name), "the domain is still defined: {all}");
        assert!(pids_mentioning(&format!("guest={name}")).is_empty(), "qemu left after delete");
        assert!(!dir.exists(), "instance dir left after delete");
        assert!(home.path().join("instances/_base").read_dir().unwrap().next().is_some(), "base image kept");

        let status = up.stop().expect("novabox up stops on SIGTERM");
        assert!(status.success(), "{status:?}\n{}", up.log());
    }
}
