//! `novabox doctor` against fixture host roots (exact findings and fixes) and against this host
//! (KVM ioctls, the probe boot under TCG, init's saved report).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use novabox::config::Accel;
use novabox::doctor::probe::{self, TestImage};
use serde_json::Value;

use crate::common::{self, TestHome};

const SCENARIOS: &[&str] =
    &["bare-metal-intel-nested", "amd", "vmware-no-vhv", "vmware-vhv", "pvm-cloud-guest", "no-dev-kvm", "container"];

const CHECKS_FAILED: i32 = 2;

/// Runs `doctor --json` against a fixture root, from the source tree so `host_root` in the
/// report is the same relative path on every machine.
fn doctor_fixture(scenario: &str) -> (Value, Output) {
    let home = TestHome::new();
    let root = format!("tests/fixtures/hosts/{scenario}");
    let out = common::run(home.novabox().current_dir(common::manifest_dir()).args([
        "doctor",
        "--json",
        "--host-root",
        &root,
    ]));
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{scenario}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (json, out)
}

fn check<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["id"] == id))
        .unwrap_or_else(|| panic!("no check {id} in {report:#}"))
}

fn status<'a>(report: &'a Value, id: &str) -> &'a str {
    check(report, id)["status"].as_str().unwrap_or("")
}

fn fix<'a>(report: &'a Value, id: &str) -> &'a str {
    check(report, id)["fix"].as_str().unwrap_or("")
}

fn finding<'a>(report: &'a Value, id: &str) -> &'a str {
    check(report, id)["finding"].as_str().unwrap_or("")
}

/// The whole report of every scenario is pinned in `tests/fixtures/hosts/<scenario>.json`:
/// every id, status, finding and fix. `NOVABOX_BLESS=1` rewrites them after a deliberate change
/// (review the diff).
#[test]
fn fixture_reports_match_their_expected_json() {
    let bless = std::env::var_os("NOVABOX_BLESS").is_some();
    let mut mismatched = Vec::new();
    for scenario in SCENARIOS {
        // The binary's own bytes: this pins key order and formatting too.
        let (_, out) = doctor_fixture(scenario);
        let text = String::from_utf8(out.stdout).unwrap();
        let expected_file = common::manifest_dir().join(format!("tests/fixtures/hosts/{scenario}.json"));
        if bless {
            std::fs::write(&expected_file, &text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_default();
        if expected != text {
            mismatched.push(format!("--- {}\n+++ actual\n{text}", expected_file.display()));
        }
    }
    assert!(mismatched.is_empty(), "reports differ (NOVABOX_BLESS=1 to accept):\n{}", mismatched.join("\n"));
}

#[test]
fn fixture_exit_codes_say_whether_any_check_failed() {
    for scenario in SCENARIOS {
        let (json, out) = doctor_fixture(scenario);
        let any_fail = json["checks"].as_array().unwrap().iter().any(|c| c["status"] == "FAIL");
        let expected = if any_fail { CHECKS_FAILED } else { 0 };
        assert_eq!(out.status.code(), Some(expected), "{scenario}");
    }
}

fn keys(v: &Value) -> Vec<&str> {
    // serde_json's map is sorted; the key order on the wire is pinned by the expected files.
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

#[test]
fn fixture_json_shape_is_stable() {
    let (json, _) = doctor_fixture("bare-metal-intel-nested");
    assert_eq!(keys(&json), ["checks", "decision", "environment", "host_root", "schema"]);
    assert_eq!(json["schema"], 1);
    assert_eq!(keys(&json["environment"]), ["container", "evidence", "name", "platform"]);
    for c in json["checks"].as_array().unwrap() {
        assert_eq!(keys(c), ["finding", "fix", "id", "status"]);
        assert!(["PASS", "NOTE", "WARN", "FAIL"].contains(&c["status"].as_str().unwrap()));
    }
    assert_eq!(keys(&json["decision"]), ["accel", "driver", "network", "reason"]);
}

#[test]
fn fixture_bare_metal_intel_nested_picks_kvm_and_bridge() {
    let (r, _) = doctor_fixture("bare-metal-intel-nested");
    assert_eq!(r["environment"]["platform"], "bare-metal");
    assert_eq!(status(&r, "cpu.virt_extensions"), "PASS");
    assert_eq!(finding(&r, "kvm.nested"), "kvm_intel nested=Y: guests may run KVM themselves");
    assert_eq!(finding(&r, "kvm.tdp"), "kvm_intel ept=Y: guests use EPT (fast paging)");
    assert_eq!(r["decision"]["accel"], "kvm");
    assert_eq!(r["decision"]["network"], "bridge");
}

#[test]
fn fixture_amd_reads_kvm_amd_int_parameters() {
    let (r, _) = doctor_fixture("amd");
    assert_eq!(finding(&r, "cpu.virt_extensions"), "the CPU has svm: AMD-V (svm) is available");
    assert_eq!(finding(&r, "kvm.nested"), "kvm_amd nested=1: guests may run KVM themselves");
    assert_eq!(finding(&r, "kvm.tdp"), "kvm_amd npt=1: guests use NPT (fast paging)");
    assert_eq!(status(&r, "net.cap_net_admin"), "WARN");
    assert_eq!(r["decision"]["network"], "user");
}

#[test]
fn fixture_vmware_without_vhv_names_the_vmx_line_and_ui_options() {
    let (r, out) = doctor_fixture("vmware-no-vhv");
    assert_eq!(out.status.code(), Some(CHECKS_FAILED));
    assert_eq!(r["environment"]["platform"], "vmware");
    let evidence = r["environment"]["evidence"].to_string();
    assert!(evidence.contains("VMware, Inc.") && evidence.contains("VMwareVMware"), "{evidence}");
    assert_eq!(status(&r, "cpu.virt_extensions"), "FAIL");
    assert_eq!(
        fix(&r, "cpu.virt_extensions"),
        "power the VM off (shut down, not suspend), then add vhv.enable = \"TRUE\" to its .vmx file, or tick the \
         option: VMware Fusion: Settings > Processors & Memory > Advanced > \"Enable hypervisor applications in this \
         virtual machine\"; VMware Workstation: VM Settings > Processors > \"Virtualize Intel VT-x/EPT or \
         AMD-V/RVI\"; then power it on"
    );
    assert_eq!(status(&r, "kvm.device"), "FAIL");
    assert_eq!(r["decision"]["accel"], "tcg");
    assert_eq!(finding(&r, "probe.kvm"), "not run: KVM is not usable (see the kvm.* checks)");
}

#[test]
fn fixture_vmware_with_vhv_uses_kvm() {
    let (r, out) = doctor_fixture("vmware-vhv");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(r["environment"]["platform"], "vmware");
    assert_eq!(finding(&r, "cpu.virt_extensions"), "the CPU has vmx: Intel VT-x (vmx) is available");
    assert_eq!(status(&r, "kvm.nested"), "NOTE");
    assert_eq!(r["decision"]["accel"], "kvm");
}

#[test]
fn fixture_pvm_guest_reports_pvm_and_chooses_tcg() {
    let (r, _) = doctor_fixture("pvm-cloud-guest");
    assert_eq!(r["environment"]["platform"], "firecracker");
    assert_eq!(r["environment"]["container"], Value::Null, "a leftover /.dockerenv on a disk root is no container");
    assert_eq!(status(&r, "kvm.device"), "PASS");
    assert_eq!(finding(&r, "kvm.device"), "/dev/kvm exists (provided by kvm_pvm)");
    assert_eq!(status(&r, "kvm.pvm"), "WARN");
    assert!(finding(&r, "kvm.pvm").contains("only PVM guest kernels run under it; a normal guest kernel hangs"));
    assert_eq!(status(&r, "cpu.virt_extensions"), "WARN");
    assert_eq!(r["decision"]["accel"], "tcg");
    assert_eq!(r["decision"]["reason"], "/dev/kvm is PVM-only, normal guests need TCG");
    // The facts decide it: the KVM probe would only wait for its timeout, so it never runs,
    // and the report says why (even where probes could run, see boot_probe_decides...).
    assert_eq!(status(&r, "probe.kvm"), "NOTE");
    assert!(finding(&r, "probe.kvm").starts_with("skipped: kvm_pvm is loaded and the CPU shows no vmx/svm"), "{r:#}");
    assert_eq!(finding(&r, "probe.tcg"), "not run against a fixture root");
}

#[test]
fn fixture_no_dev_kvm_says_to_load_the_module() {
    let (r, _) = doctor_fixture("no-dev-kvm");
    assert_eq!(status(&r, "kvm.modules"), "FAIL");
    assert!(fix(&r, "kvm.modules").starts_with("sudo modprobe kvm_intel"));
    assert_eq!(status(&r, "kvm.device"), "FAIL");
    assert_eq!(r["decision"]["accel"], "tcg");
    assert_eq!(finding(&r, "probe.kvm"), "not run: KVM is not usable (see the kvm.* checks)");
}

#[test]
fn fixture_container_says_to_pass_the_device() {
    let (r, _) = doctor_fixture("container");
    assert_eq!(r["environment"]["container"], "docker");
    assert_eq!(status(&r, "kvm.device"), "FAIL");
    assert!(fix(&r, "kvm.device").contains("--device /dev/kvm"), "{}", fix(&r, "kvm.device"));
    assert_eq!(fix(&r, "net.cap_net_admin"), "start the container with --cap-add NET_ADMIN, or accept user networking");
    assert_eq!(r["decision"]["network"], "user");
}

#[test]
fn fixture_other_hypervisors_get_their_own_fix() {
    for (scenario, platform, needle) in [
        ("kvm-cloud-guest", "kvm-guest", "GCP: --enable-nested-virtualization"),
        ("wsl2", "wsl2", "nestedVirtualization=true under [wsl2]"),
        ("virtualbox", "virtualbox", "--nested-hw-virt on"),
    ] {
        let (r, _) = doctor_fixture(scenario);
        assert_eq!(r["environment"]["platform"], platform, "{scenario}");
        assert_eq!(status(&r, "cpu.virt_extensions"), "FAIL", "{scenario}");
        assert!(fix(&r, "cpu.virt_extensions").contains(needle), "{scenario}: {}", fix(&r, "cpu.virt_extensions"));
        assert_eq!(r["decision"]["accel"], "tcg", "{scenario}");
    }
}

#[test]
fn fixture_roots_skip_live_only_checks_with_a_note() {
    for scenario in SCENARIOS {
        let (r, _) = doctor_fixture(scenario);
        for id in ["kvm.access", "kvm.api_version", "kvm.create_vm", "kvm.capabilities", "probe.tcg"] {
            assert_eq!(status(&r, id), "NOTE", "{scenario} {id}");
            assert_eq!(finding(&r, id), "not run against a fixture root", "{scenario} {id}");
        }
        // Unless the fixture's own facts already rule KVM out (no /dev/kvm, PVM without
        // vmx/svm): then the report says that instead, as on a live host.
        assert_eq!(status(&r, "probe.kvm"), "NOTE", "{scenario}");
        let kvm = finding(&r, "probe.kvm");
        assert!(
            kvm == "not run against a fixture root"
                || kvm.starts_with("not run: KVM is not usable")
                || kvm.starts_with("skipped: kvm_pvm is loaded"),
            "{scenario}: {kvm}"
        );
    }
}

#[test]
fn human_output_shows_findings_fixes_and_decision() {
    let home = TestHome::new();
    let out = common::run(home.novabox().current_dir(common::manifest_dir()).args([
        "doctor",
        "--host-root",
        "tests/fixtures/hosts/vmware-no-vhv",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL  cpu.virt_extensions"), "{text}");
    assert!(text.contains("fix: power the VM off"), "{text}");
    assert!(text.contains("decision       accel tcg"), "{text}");
    assert_eq!(out.status.code(), Some(CHECKS_FAILED));
}

/// Against this machine, without a probe: the ioctl checks run (whatever their result).
#[test]
fn live_host_runs_the_kvm_ioctl_checks() {
    let home = TestHome::new();
    let out = common::run(home.novabox().args(["doctor", "--json"]));
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(matches!(out.status.code(), Some(0) | Some(CHECKS_FAILED)), "{out:?}");
    assert_eq!(r["host_root"], "/");
    assert_ne!(finding(&r, "kvm.access"), "not run against a fixture root");
    assert_eq!(status(&r, "probe.kvm"), "NOTE");
    if Path::new("/dev/kvm").exists() && Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(status(&r, "kvm.pvm"), "WARN");
    }
}

/// The test guest, built once per test run with the script (the kernel .deb is cached in the
/// target dir, so only the first run needs apt).
fn test_guest() -> &'static TestImage {
    static IMAGE: OnceLock<TestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp.join("test-guest");
        let image = TestImage::in_dir(&dir);
        if !image.exists() {
            let out = common::run(
                std::process::Command::new("sh")
                    .arg(common::manifest_dir().join("scripts/make-test-image.sh"))
                    .arg(&dir)
                    .env("NOVABOX_DEB_CACHE", deb_cache()),
            );
            assert!(out.status.success(), "make-test-image.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        image
    })
}

fn deb_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deb-cache")
}

fn require_qemu() {
    assert!(
        novabox::hostpkgs::find_program("qemu-system-x86_64").is_some(),
        "qemu-system-x86_64 is missing: run scripts/install-deps"
    );
}

#[test]
fn probe_boots_the_test_guest_under_tcg_needs_qemu() {
    require_qemu();
    let image = test_guest();
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let outcome = probe::boot(image, Accel::Tcg, probe::TCG_TIMEOUT, &console).expect("qemu starts");
    assert!(outcome.reached_init, "{outcome:?}\n{}", std::fs::read_to_string(&console).unwrap_or_default());
    assert!(outcome.elapsed < probe::TCG_TIMEOUT);
    assert!(std::fs::read_to_string(&console).unwrap().contains(probe::INIT_MARKER));
}

#[test]
fn probe_reports_a_timeout_without_leaving_qemu_behind_needs_qemu() {
    require_qemu();
    let image = test_guest();
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("c.log");
    let outcome = probe::boot(image, Accel::Tcg, Duration::from_millis(300), &console).unwrap();
    assert!(!outcome.reached_init);
    assert_eq!(outcome.detail, "no \"novabox-guest: init reached\" within 300 ms");
    // The console path is unique to this test: no process may still have it on its command line.
    let needle = console.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&cmdline).contains(&needle), "qemu left running: {:?}", entry.path());
    }
}

/// The TCG probe that runs beside the KVM one stops as soon as KVM has decided, instead of
/// booting on for nothing; its qemu is gone afterwards.
#[test]
fn probe_stops_when_the_other_probe_decided_needs_qemu() {
    require_qemu();
    let image = test_guest();
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("stopped.log");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let outcome = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        probe::boot_unless(image, Accel::Tcg, probe::TCG_TIMEOUT, &console, &stop).unwrap()
    });
    assert!(!outcome.reached_init, "{outcome:?}");
    assert_eq!(outcome.detail, "stopped: not needed");
    assert!(outcome.elapsed < Duration::from_secs(5), "{outcome:?}");
    let needle = console.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&cmdline).contains(&needle), "qemu left running: {:?}", entry.path());
    }
}

/// The test guest reads hostname and key from a config drive (here a vfat one that qemu builds
/// from a directory, which needs no ISO tool on the host).
#[test]
fn test_guest_reads_its_config_drive_needs_qemu() {
    require_qemu();
    let image = test_guest();
    let dir = tempfile::tempdir().unwrap();
    let latest = dir.path().join("drive/openstack/latest");
    std::fs::create_dir_all(&latest).unwrap();
    std::fs::write(
        latest.join("meta_data.json"),
        r#"{"uuid": "6f1c", "hostname": "demo-1", "name": "demo",
           "public_keys": {"mykey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 test@novabox"}}"#,
    )
    .unwrap();
    let drive =
        format!("driver=vvfat,node-name=cfg,dir={},label=config-2,read-only=on", dir.path().join("drive").display());
    let args: Vec<std::ffi::OsString> =
        ["-blockdev", &drive, "-device", "virtio-blk-pci,drive=cfg"].iter().map(|a| a.into()).collect();
    let console = dir.path().join("console.log");
    let outcome =
        probe::boot_until(image, Accel::Tcg, probe::TCG_TIMEOUT, &console, &args, "novabox-guest: ready").unwrap();
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(outcome.reached_init, "{outcome:?}\n{text}");
    assert!(
        text.contains("novabox-guest: hostname demo-1\n") || text.contains("novabox-guest: hostname demo-1\r\n"),
        "{text}"
    );
    assert!(text.contains("novabox-guest: public-key ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 test@novabox"), "{text}");
}

/// The done criterion of `novabox doctor --boot-probe` on any host: one of KVM and TCG boots the
/// guest and the decision follows the probe. On a PVM host, KVM must be reported as failing.
#[test]
fn boot_probe_decides_from_a_real_boot_needs_qemu() {
    require_qemu();
    test_guest(); // fills the kernel cache the binary's own build uses
    let home = TestHome::new();
    let out =
        common::run(home.novabox().env("NOVABOX_DEB_CACHE", deb_cache()).args(["doctor", "--json", "--boot-probe"]));
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert!(home.path().join("images/test-guest/vmlinuz").is_file(), "the binary builds its own copy");
    let kvm = status(&r, "probe.kvm");
    let tcg = status(&r, "probe.tcg");
    if kvm == "PASS" {
        assert_eq!(tcg, "NOTE");
        assert_eq!(r["decision"]["accel"], "kvm");
    } else {
        assert_eq!(tcg, "PASS", "{:#}", check(&r, "probe.tcg"));
        assert!(finding(&r, "probe.tcg").starts_with("the test guest reached its init under TCG in "));
        assert_eq!(r["decision"]["accel"], "tcg");
    }
    let pvm_only = Path::new("/sys/module/kvm_pvm").exists()
        && !std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .split_whitespace()
            .any(|f| f == "vmx" || f == "svm");
    if pvm_only && Path::new("/dev/kvm").exists() {
        // Skipped, not waited out: a normal kernel hangs under PVM's KVM.
        assert_eq!(kvm, "NOTE", "{:#}", check(&r, "probe.kvm"));
        assert!(finding(&r, "probe.kvm").starts_with("skipped: kvm_pvm is loaded"), "{:#}", check(&r, "probe.kvm"));
        assert_eq!(r["decision"]["reason"], "/dev/kvm is PVM-only, normal guests need TCG");
    }
}

/// init saves the report where `up` reads it, and the `auto` accel comes from it.
#[test]
fn init_saves_the_report_and_effective_accel_reads_it() {
    let home = TestHome::new();
    let out = common::run(home.novabox().args([
        "init",
        "--yes",
        "--no-install",
        "--no-clouds-yaml",
        "--no-boot-probe",
        "--api-port",
        &common::free_port().to_string(),
        "--bus-port",
        &common::free_port().to_string(),
    ]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("decision       accel "), "{stdout}");
    let file = home.path().join("doctor.json");
    let mut report = novabox::doctor::Report::load(&file).expect("doctor.json");
    let h = novabox::home::Home::at(home.path());
    let config = novabox::config::Config::load(&h.config_file()).unwrap();
    assert_eq!(novabox::doctor::effective_accel(&h, &config), report.decision.accel);
    // The saved decision, not a new look at the host, is what counts.
    report.decision.accel = if report.decision.accel == Accel::Kvm { Accel::Tcg } else { Accel::Kvm };
    report.save(&file).unwrap();
    assert_eq!(novabox::doctor::effective_accel(&h, &config), report.decision.accel);
}
