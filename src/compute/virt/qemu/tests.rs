//! The driver against real guests (TCG): the test guest booted, power-cycled, rebooted,
//! killed and destroyed, and bad images refused. One boot at a time is all this host can afford.

use std::path::Path;
use std::time::{Duration, Instant};

use super::cmdline::Launch;
use super::suspend::{SAVED_STATE, SUSPENDED};
use super::*;
use crate::compute::states::PowerState;
use crate::compute::virt::guestfiles::tests::meta;
use crate::compute::virt::{ImageMeta, Vif};
use crate::doctor::probe::{self, TestImage};
use crate::home::Home;

/// The test guest, built with the doctor's script into the target dir (the kernel .deb is
/// cached there too, so only the first run needs apt).
fn test_guest() -> TestImage {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp/test-guest");
    probe::ensure_test_image(&dir, None).expect("the test guest builds (busybox-static, apt)")
}

struct Fixture {
    _tmp: tempfile::TempDir,
    home: Home,
    driver: QemuDriver,
}

impl Drop for Fixture {
    /// A failed assertion must not leave a guest running: stop, by pid, every qemu whose
    /// command line names this fixture's home.
    fn drop(&mut self) {
        let needle = self.home.root().to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for pid in entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("guest=") && cmdline.contains(&needle) {
                // SAFETY: a qemu this test started (its command line names the test's home).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn fixture() -> Fixture {
    assert!(QemuDriver::available(), "qemu-system-x86_64 and qemu-img are needed: run scripts/install-deps");
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::at(tmp.path());
    home.create_dirs().unwrap();
    let driver = QemuDriver::new(&home, Accel::Tcg).unwrap();
    Fixture { _tmp: tmp, home, driver }
}

fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The test guest as the store holds it after `import_test_image`: an AMI (blank raw root)
/// linked to an AKI kernel and an ARI ramdisk.
fn ami(home: &Home) -> ImageMeta {
    let guest = test_guest();
    let blank = home.images_dir().join("blank.img");
    std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
    let mut ami = meta(&new_uuid(), "ami", Some(&blank));
    let kernel = meta(&new_uuid(), "aki", Some(&guest.kernel));
    let ramdisk = meta(&new_uuid(), "ari", Some(&guest.initrd));
    ami.properties.insert("kernel_id".into(), kernel.id.clone());
    ami.properties.insert("ramdisk_id".into(), ramdisk.id.clone());
    // The busybox guest has no ACPI handler: do not wait a minute for it at power-off.
    ami.properties.insert("os_shutdown_timeout".into(), "1".into());
    ami.kernel = Some(Box::new(kernel));
    ami.ramdisk = Some(Box::new(ramdisk));
    ami
}

fn spec_with(image: ImageMeta) -> GuestSpec {
    let mut spec = GuestSpec::for_test(&new_uuid(), "qemu-test");
    spec.hostname = "qemu-test-1".into();
    spec.memory_mb = 128;
    spec.swap_mb = 16;
    spec.ephemeral_gb = 1;
    spec.key_name = Some("k".into());
    spec.key_data = Some("ssh-ed25519 AAAAtest driver@novabox".into());
    spec.image = Some(image);
    spec.network_info = vec![Vif {
        port_id: new_uuid(),
        network_id: new_uuid(),
        network_name: "private".into(),
        mac: "fa:16:3e:12:34:56".into(),
        ips: vec!["10.42.0.9".into()],
        ..Default::default()
    }];
    spec
}

/// Waits until `marker` appears `count` times on the console.
async fn wait_console(d: &QemuDriver, uuid: &str, marker: &str, count: usize) -> String {
    let deadline = Instant::now() + probe::TCG_TIMEOUT;
    loop {
        let text = d.console_output(uuid).await.unwrap();
        if text.matches(marker).count() >= count {
            return text;
        }
        assert!(Instant::now() < deadline, "no {count}x {marker:?} on the console:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn qemu_pid(home: &Home, uuid: &str) -> i32 {
    crate::supervise::read_pid_file(&home.instances_dir().join(uuid).join("qemu.pid")).unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_boots_power_cycles_reboots_and_is_destroyed_needs_qemu() {
    let f = fixture();
    let d = &f.driver;
    let image = ami(&f.home);
    let base = f.home.instances_dir().join("_base").join(&image.id);
    let spec = spec_with(image);
    let uuid = spec.uuid.clone();
    let dir = f.home.instances_dir().join(&uuid);

    d.spawn(&spec).await.unwrap();
    assert_eq!(d.power_state(&uuid).await, PowerState::Running);
    assert_eq!(d.guests().await, vec![uuid.clone()]);
    let text = wait_console(d, &uuid, "novabox-guest: ready", 1).await;
    assert!(text.contains("novabox-guest: init reached"), "{text}");
    assert!(text.contains("novabox-guest: hostname qemu-test-1"), "{text}");
    assert!(text.contains("novabox-guest: public-key ssh-ed25519 AAAAtest driver@novabox"), "{text}");
    for file in ["disk", "disk.eph0", "disk.swap", "disk.config", "kernel", "ramdisk", "qmp.sock", "qemu.pid"] {
        assert!(dir.join(file).exists(), "{file} missing");
    }
    assert!(dir.join(CONSOLE_SOCKET).exists() && dir.join("launch.json").exists());
    for base in ["ephemeral_1G_ext4", "swap_16M"] {
        assert!(f.home.instances_dir().join("_base").join(base).is_file(), "{base} not cached");
    }
    // Root (1 GiB blank, AMI), then ephemeral (1 GiB) and swap (16 MiB), in 512-byte sectors;
    // the ISO config drive is a CD-ROM, not a virtio disk.
    let text = wait_console(d, &uuid, "novabox-guest: disk vdc", 1).await;
    assert!(text.contains("novabox-guest: disk vda 2097152"), "{text}");
    assert!(text.contains("novabox-guest: disk vdb 2097152"), "{text}");
    assert!(text.contains("novabox-guest: disk vdc 32768"), "{text}");
    assert!(!text.contains("novabox-guest: disk vdd"), "{text}");
    assert!(base.is_file());
    let args = std::fs::read_to_string(dir.join("launch.json")).unwrap();
    assert!(args.contains("mac=fa:16:3e:12:34:56") && args.contains("tcg"), "{args}");

    let pid = qemu_pid(&f.home, &uuid);
    d.power_off(&uuid).await.unwrap();
    assert!(!qemu_alive(pid, &uuid));
    assert_eq!(d.power_state(&uuid).await, PowerState::Shutdown);
    d.power_off(&uuid).await.unwrap();
    assert_eq!(d.guests().await, vec![uuid.clone()], "a stopped guest is still a guest");

    d.power_on(&uuid).await.unwrap();
    assert_eq!(d.power_state(&uuid).await, PowerState::Running);
    wait_console(d, &uuid, "novabox-guest: ready", 2).await;

    d.reboot(&uuid, false).await.unwrap();
    wait_console(d, &uuid, "novabox-guest: ready", 3).await;
    let pid = qemu_pid(&f.home, &uuid);
    d.reboot(&uuid, true).await.unwrap();
    assert_ne!(qemu_pid(&f.home, &uuid), pid, "a hard reboot starts a new qemu");
    let text = wait_console(d, &uuid, "novabox-guest: ready", 4).await;
    assert_eq!(text.matches("novabox-guest: hostname qemu-test-1").count(), 4);

    // qemu dies behind the driver's back: the guest is no longer running.
    let pid = qemu_pid(&f.home, &uuid);
    // SAFETY: signalling the qemu this test started, by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.power_state(&uuid).await == PowerState::Running {
        assert!(Instant::now() < deadline, "a killed qemu still shows as running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.power_state(&uuid).await != PowerState::Crashed {
        assert!(Instant::now() < deadline, "a killed qemu is a crash: {:?}", d.power_state(&uuid).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    d.power_on(&uuid).await.unwrap();
    let pid = qemu_pid(&f.home, &uuid);
    d.destroy(&uuid).await.unwrap();
    assert!(!qemu_alive(pid, &uuid));
    assert!(!dir.exists());
    assert!(base.is_file(), "the base image is kept");
    assert_eq!(d.power_state(&uuid).await, PowerState::NoState);
    assert!(d.guests().await.is_empty());
    d.destroy(&uuid).await.unwrap();
    assert!(matches!(d.power_on(&uuid).await, Err(VirtError::NotFound(_))));
}

/// Bad images and flavors fail the spawn with the reason, and leave nothing behind.
#[tokio::test]
async fn bad_input_fails_cleanly_needs_qemu() {
    let f = fixture();
    let d = &f.driver;
    let store = f.home.images_dir();
    let too_big_id = new_uuid();
    let cases: Vec<(ImageMeta, i64, &str)> = {
        let random = store.join("random");
        std::fs::write(
            &random,
            (0..1 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>(),
        )
        .unwrap();
        let full = store.join("full.qcow2");
        let out = std::process::Command::new(QEMU_IMG)
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&full)
            .arg("2G")
            .output()
            .unwrap();
        assert!(out.status.success());
        let not_a_kernel = store.join("not-a-kernel");
        std::fs::write(&not_a_kernel, b"not a kernel").unwrap();
        let truncated = store.join("truncated.qcow2");
        std::fs::write(&truncated, &std::fs::read(&full).unwrap()[..1000]).unwrap();
        let mut no_kernel = meta(&new_uuid(), "ami", Some(&random));
        no_kernel.properties.insert("kernel_id".into(), "0000-gone".into());
        vec![
            (meta(&new_uuid(), "qcow2", Some(&random)), 1, "is not a valid qcow2 image"),
            (meta(&new_uuid(), "qcow2", Some(&truncated)), 1, "is damaged or truncated"),
            (
                meta(&too_big_id, "qcow2", Some(&full)),
                1,
                "the flavor's root disk (1 GiB) is smaller than the image (2.0 GiB)",
            ),
            (no_kernel, 1, "the kernel image 0000-gone named by kernel_id"),
            (meta(&new_uuid(), "qcow2", None), 1, "has no data on this host"),
            // Gets as far as starting qemu, which refuses the kernel. (qemu takes most
            // header-less garbage as an old zImage and runs it: only a guest that never
            // boots shows that.)
            (meta(&new_uuid(), "aki", Some(&not_a_kernel)), 1, "qemu exited at start: qemu: invalid kernel header"),
        ]
    };
    for (image, root_gb, why) in cases {
        let mut spec = spec_with(image);
        spec.root_gb = root_gb;
        match d.spawn(&spec).await {
            Err(VirtError::Failed(m)) => assert!(m.contains(why), "{m:?} should say {why:?}"),
            other => panic!("{why}: {other:?}"),
        }
        assert!(!f.home.instances_dir().join(&spec.uuid).exists(), "{why}: the instance dir stayed");
    }
    let mut spec = spec_with(meta(&new_uuid(), "qcow2", None));
    spec.uuid = "../escape".into();
    assert!(d.spawn(&spec).await.is_err());
    // Only the good (if too big) image is cached; no half-checked copies stay.
    let cached: Vec<String> = std::fs::read_dir(f.home.instances_dir().join("_base"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // The flavor's formatted disks are cached too once a build gets that far.
        .filter(|n| !n.starts_with("ephemeral_") && !n.starts_with("swap_"))
        .collect();
    assert_eq!(cached, vec![too_big_id], "bad images must not be cached");
}

#[test]
fn a_busy_saved_ssh_port_is_replaced_and_saved() {
    let fx = fixture();
    let uuid = new_uuid();
    let dir = fx.home.instances_dir().join(&uuid);
    std::fs::create_dir_all(&dir).unwrap();
    let busy = std::net::TcpListener::bind((SSH_FORWARD_ADDR, 0)).unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let launch = Launch { args: vec![], shutdown_timeout_secs: 1, volumes: vec![], ssh_port: Some(busy_port) };
    let kept = fx.driver.keep_ssh_port(&uuid, &dir, &launch).unwrap();
    let port = kept.ssh_port.unwrap();
    assert!(port != busy_port && port != 0);
    assert_eq!(ssh_port(&fx.home.instances_dir(), &uuid), Some(port));
    // A free saved port is kept as it is.
    let again = fx.driver.keep_ssh_port(&uuid, &dir, &kept).unwrap();
    assert_eq!(again.ssh_port, Some(port));
}

/// Types `line` on the guest's serial console (the test guest runs a shell there): a
/// Ctrl-C first, so whatever half line busybox's line editor holds is dropped, then the
/// line a key at a time, as a person types.
async fn type_line(home: &Home, uuid: &str, line: &str) {
    use tokio::io::AsyncWriteExt;
    let socket = home.instances_dir().join(uuid).join(CONSOLE_SOCKET);
    let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
    s.write_all(b"\x03").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for b in format!("{line}\n").bytes() {
        s.write_all(&[b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.flush().await.unwrap();
}

/// The values the guest printed as lines `KEY=value` (not the shell's echo of the command).
fn printed(console: &str, key: &str) -> Vec<String> {
    console.lines().filter_map(|l| l.trim().strip_prefix(&format!("{key}="))).map(str::to_string).collect()
}

/// Asks the guest `echo KEY=$(command)` on its console, again every few seconds while no
/// answer comes (the line editor may eat a line typed while it queries the terminal).
async fn ask(d: &QemuDriver, home: &Home, uuid: &str, key: &str, command: &str) -> String {
    let deadline = Instant::now() + probe::TCG_TIMEOUT;
    loop {
        type_line(home, uuid, &format!("echo {key}={command}")).await;
        let retry = Instant::now() + Duration::from_secs(5);
        while Instant::now() < retry {
            let text = d.console_output(uuid).await.unwrap();
            if let Some(v) = printed(&text, key).first() {
                return v.clone();
            }
            assert!(Instant::now() < deadline, "the guest did not answer {key}:\n{text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The guest's uptime in whole seconds, asked on its console under the key `key`.
async fn uptime(d: &QemuDriver, home: &Home, uuid: &str, key: &str) -> u64 {
    let v = ask(d, home, uuid, key, "$(cut -d. -f1 /proc/uptime)").await;
    v.parse().unwrap_or_else(|_| panic!("uptime {v:?}"))
}

/// Issue 16 on a real guest: a paused guest runs nothing (what is typed on its console is
/// answered only after unpause); a suspended guest has no qemu and its memory in a file,
/// and after resume it runs on without a boot, its uptime continuing; an NMI reaches the
/// guest's kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_freezes_and_suspend_resume_keeps_the_guest_running_needs_qemu() {
    let f = fixture();
    let d = &f.driver;
    let spec = spec_with(ami(&f.home));
    let uuid = spec.uuid.clone();
    let dir = f.home.instances_dir().join(&uuid);
    d.spawn(&spec).await.unwrap();
    wait_console(d, &uuid, "novabox-guest: ready", 1).await;
    let first = uptime(d, &f.home, &uuid, "UP1").await;

    d.pause(&uuid).await.unwrap();
    assert_eq!(d.power_state(&uuid).await, PowerState::Paused);
    type_line(&f.home, &uuid, "echo MARK=typed-while-paused").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = d.console_output(&uuid).await.unwrap();
    assert!(printed(&text, "MARK").is_empty(), "a paused guest answered:\n{text}");
    d.unpause(&uuid).await.unwrap();
    assert_eq!(d.power_state(&uuid).await, PowerState::Running);
    assert_eq!(ask(d, &f.home, &uuid, "MARK", "typed-while-paused").await, "typed-while-paused");

    let before = uptime(d, &f.home, &uuid, "UP2").await;
    assert!(before >= first);
    let pid = qemu_pid(&f.home, &uuid);
    d.suspend(&uuid).await.unwrap();
    assert!(!qemu_alive(pid, &uuid), "qemu still runs after suspend");
    assert!(dir.join(SAVED_STATE).metadata().unwrap().len() > 1 << 20, "the memory is saved");
    assert_eq!(d.power_state(&uuid).await, PowerState::Shutdown);
    assert!(d.pause(&uuid).await.is_err(), "a suspended guest cannot be paused");
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.resume(&uuid).await.unwrap();
    assert_eq!(d.power_state(&uuid).await, PowerState::Running);
    assert!(!dir.join(SAVED_STATE).exists() && !dir.join(SUSPENDED).exists());
    let after = uptime(d, &f.home, &uuid, "UP3").await;
    assert!(after >= before, "uptime went back from {before}s to {after}s: the guest booted again");
    let text = d.console_output(&uuid).await.unwrap();
    assert_eq!(text.matches("novabox-guest: init reached").count(), 1, "resumed, not booted:\n{text}");
    assert!(d.resume(&uuid).await.is_ok(), "resuming a running guest changes nothing");

    d.trigger_crash_dump(&uuid).await.unwrap();
    let text = wait_console(d, &uuid, "NMI", 1).await;
    assert!(text.contains("NMI"), "{text}");

    d.destroy(&uuid).await.unwrap();
    assert!(!dir.exists());
}

/// Issue 22: a guest whose `launch.json` predates the VNC server gets one at its next cold
/// start, once; a launch that has one is left alone.
#[test]
fn an_old_launch_gets_a_vnc_server_once() {
    let f = fixture();
    let dir = f.home.instances_dir().join(new_uuid());
    std::fs::create_dir_all(&dir).unwrap();
    let old = super::cmdline::Launch {
        args: vec!["-name".into(), "guest=x".into()],
        shutdown_timeout_secs: 1,
        volumes: Vec::new(),
        ssh_port: None,
    };
    let new = f.driver.with_vnc(&dir, &old).unwrap();
    let vnc = format!("unix:{}", dir.join(super::VNC_SOCKET).display());
    assert_eq!(new.args[2..], ["-vga", "std", "-vnc", vnc.as_str()]);
    let saved = f.driver.launch(&dir, "x").unwrap();
    assert_eq!(saved.args, new.args, "not kept in launch.json");
    assert_eq!(f.driver.with_vnc(&dir, &saved).unwrap().args, new.args, "added twice");
}
