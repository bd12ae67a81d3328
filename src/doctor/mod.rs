//! `novabox doctor`: can this host run guests, under which accelerator, with which networking,
//! and the exact fix when it cannot.
//!
//! Every check has a stable id, a status, one line of finding and one line of fix. Files are
//! read below a host root (`/`, or a fixture tree in tests); what only the live host can
//! answer (KVM ioctls, the probe boot, ports, disk) is a NOTE under a fixture root.

pub mod cpu;
pub mod environment;
pub mod host;
pub mod kvm;
mod kvm_ioctl;
pub mod network;
pub mod probe;
pub mod resources;
pub mod startup;
mod sys;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::config::{Accel, Config, Driver, NetworkMode};
use crate::home::Home;
use environment::Environment;
use host::HostRoot;

/// Version of the JSON report. Bumped only when a field is removed or changes meaning; new
/// fields and new check ids may appear within a version.
pub const SCHEMA: u32 = 1;

/// The report `init` keeps in the home, which `up` reads back.
pub const REPORT_FILE: &str = "doctor.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Note,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Note => "NOTE",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub id: String,
    pub status: Status,
    pub finding: String,
    /// Empty when there is nothing to do.
    pub fix: String,
}

impl Check {
    pub fn new(id: &str, status: Status, finding: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { id: id.to_string(), status, finding: finding.into(), fix: fix.into() }
    }
    pub fn pass(id: &str, finding: impl Into<String>) -> Check {
        Check::new(id, Status::Pass, finding, "")
    }
    pub fn warn(id: &str, finding: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(id, Status::Warn, finding, fix)
    }
    pub fn fail(id: &str, finding: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(id, Status::Fail, finding, fix)
    }
}

/// What novabox will use on this host, for settings left at `auto`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// `kvm` or `tcg`.
    pub accel: Accel,
    /// `qemu`, `libvirt` or `fake`.
    pub driver: Driver,
    /// `bridge` or `user`.
    pub network: NetworkMode,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    pub host_root: PathBuf,
    pub environment: Environment,
    pub checks: Vec<Check>,
    pub decision: Decision,
    /// The TCG probe was left for later ([`Options::defer_tcg`]) and has not finished: the
    /// decision stands, the proof that guests boot under TCG is still to come.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tcg_pending: bool,
}

impl Report {
    pub fn has_failures(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    pub fn check(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    pub fn save(&self, file: &Path) -> Result<(), DoctorError> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| DoctorError::Encode(e.to_string()))?;
        json.push(b'\n');
        crate::home::write_atomic(file, &json, 0o600).map_err(|source| DoctorError::Write { file: file.into(), source })
    }

    /// `None` when there is no report (yet) or it is from another schema version.
    pub fn load(file: &Path) -> Option<Report> {
        let text = std::fs::read_to_string(file).ok()?;
        let report: Report = serde_json::from_str(&text).ok()?;
        (report.schema == SCHEMA).then_some(report)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("cannot encode the doctor report: {0}")]
    Encode(String),
    #[error("cannot write {file}: {source}")]
    Write { file: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone)]
pub struct Options {
    pub host_root: PathBuf,
    /// Boot the test guest (only on the live host).
    pub boot_probe: bool,
    /// Where the test guest is built and cached (`<home>/images/test-guest`).
    pub image_dir: PathBuf,
    /// The per-user cache a built test guest is taken from and kept in.
    pub cache_dir: Option<PathBuf>,
    /// Boot only what can change the decision (KVM, unless the host's facts rule it out) and
    /// leave the TCG probe pending, for [`prove_tcg`]: whatever it finds, guests run under
    /// TCG when KVM does not work, so `up` need not wait for it.
    pub defer_tcg: bool,
    /// Where the probe's serial console logs go.
    pub log_dir: PathBuf,
    /// Where guest disks will live, for the disk check.
    pub home_dir: PathBuf,
}

impl Options {
    pub fn for_home(home: &Home, host_root: &Path, boot_probe: bool) -> Options {
        Options {
            host_root: host_root.to_path_buf(),
            boot_probe,
            image_dir: home.images_dir().join(probe::TEST_IMAGE_DIR),
            cache_dir: crate::home::user_cache_dir(),
            defer_tcg: false,
            log_dir: home.logs_dir(),
            home_dir: home.root().to_path_buf(),
        }
    }
}

/// Result of the probe boots: `None` when that accelerator was not tried.
#[derive(Debug, Clone, Copy, Default)]
struct ProbeFacts {
    kvm: Option<bool>,
    tcg: Option<bool>,
    /// The TCG probe was deferred (`Options::defer_tcg`).
    tcg_pending: bool,
}

/// Runs every check and decides accel, driver and network mode.
pub fn run(config: &Config, opts: &Options) -> Report {
    let host = HostRoot::new(&opts.host_root);
    let cpu = cpu::CpuInfo::read(&host);
    let env = environment::detect(&host, &cpu);
    let mut checks = vec![environment::check_platform(&env), environment::check_container(&env)];
    checks.push(cpu::check_virt_extensions(&cpu, &env, host.module_loaded("kvm_pvm")));
    checks.push(cpu::check_cores(&cpu));
    let kvm = kvm::run_checks(&host, &cpu, &env, &mut checks);
    let qemu_present = resources::program_present(&host, "qemu-system-x86_64");
    let probes = run_probes(&host, &cpu, &kvm, qemu_present, opts, &mut checks);
    let net = network::run_checks(&host, &env, &mut checks);
    checks.push(resources::check_memory(&host));
    checks.push(resources::check_disk(&host, &opts.home_dir));
    resources::check_ports(&host, config, &mut checks);
    resources::check_listen(config, &mut checks);
    resources::check_programs(&host, config, &mut checks);
    let decision = decide(&host, config, &cpu, &kvm, probes, net, qemu_present);
    Report {
        schema: SCHEMA,
        host_root: opts.host_root.clone(),
        environment: env,
        checks,
        decision,
        tcg_pending: probes.tcg_pending,
    }
}

/// What `probe.tcg` says while the TCG probe of a deferred run is still to come.
const TCG_PENDING: &str = "pending: boots after the decision, which it cannot change (guests run under TCG \
                           either way); novabox doctor shows its result";

/// Boots the TCG probe a [`Options::defer_tcg`] run left pending and puts its result in the
/// report: `probe.tcg` and, when the guest did not boot, the decision's reason (the
/// accelerator stays). Gives up when `stop` is set (the stack stops meanwhile), leaving it
/// pending for the next start. Returns whether the report changed.
pub fn prove_tcg(report: &mut Report, opts: &Options, stop: &AtomicBool) -> bool {
    if !report.tcg_pending {
        return false;
    }
    let image = match probe::ensure_test_image(&opts.image_dir, opts.cache_dir.as_deref()) {
        Ok(image) => image,
        Err(e) => {
            let check = Check::warn(
                "probe.tcg",
                format!("not run: {e}"),
                "install busybox-static, then run novabox doctor --boot-probe again",
            );
            set_check(report, check);
            report.tcg_pending = false;
            return true;
        }
    };
    let _ = std::fs::create_dir_all(&opts.log_dir);
    let console = opts.log_dir.join("doctor-probe-tcg.console.log");
    let outcome = probe::boot_unless(&image, Accel::Tcg, probe::TCG_TIMEOUT, &console, stop);
    if stop.load(Ordering::Relaxed) {
        return false;
    }
    let mut facts = ProbeFacts::default();
    set_check(report, tcg_check(outcome, &console, &mut facts));
    if facts.tcg == Some(false) {
        report.decision.reason.push_str("; the test guest did not boot under TCG either (see probe.tcg)");
    }
    report.tcg_pending = false;
    true
}

fn set_check(report: &mut Report, check: Check) {
    match report.checks.iter_mut().find(|c| c.id == check.id) {
        Some(c) => *c = check,
        None => report.checks.push(check),
    }
}

/// Why the KVM probe cannot succeed on this host, from its facts alone: then it is not run
/// (it would only wait for its timeout) and the report says why.
fn kvm_probe_skipped(cpu: &cpu::CpuInfo, kvm: &kvm::KvmFacts) -> Option<Check> {
    if !kvm.device_exists || kvm.ioctls_ok == Some(false) {
        return Some(Check::new("probe.kvm", Status::Note, "not run: KVM is not usable (see the kvm.* checks)", ""));
    }
    if kvm.pvm && cpu.virt_flag().is_none() {
        return Some(Check::new(
            "probe.kvm",
            Status::Note,
            "skipped: kvm_pvm is loaded and the CPU shows no vmx/svm, so /dev/kvm is PVM's and a normal guest \
             kernel cannot run under it (it hangs until the probe's timeout); guests run under TCG",
            "",
        ));
    }
    None
}

/// Whether the two probe boots may run side by side: each keeps one core busy.
fn probes_in_parallel() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

fn run_probes(
    host: &HostRoot,
    cpu: &cpu::CpuInfo,
    kvm: &kvm::KvmFacts,
    qemu_present: bool,
    opts: &Options,
    checks: &mut Vec<Check>,
) -> ProbeFacts {
    let mut facts = ProbeFacts::default();
    let kvm_skipped = kvm_probe_skipped(cpu, kvm);
    let not_run = if !host.is_live() {
        Some((Status::Note, "not run against a fixture root".to_string(), ""))
    } else if !opts.boot_probe {
        Some((Status::Note, "not run (novabox doctor --boot-probe, or novabox init, boots a test guest)".into(), ""))
    } else if !qemu_present {
        Some((Status::Warn, "not run: qemu-system-x86_64 is missing".into(), "sudo apt-get install qemu-system-x86"))
    } else {
        None
    };
    let image = match not_run {
        Some(why) => Err(why),
        None => probe::ensure_test_image(&opts.image_dir, opts.cache_dir.as_deref()).map_err(|e| {
            (
                Status::Warn,
                format!("not run: {e}"),
                "install busybox-static, then run novabox doctor --boot-probe again",
            )
        }),
    };
    let image = match image {
        Ok(image) => image,
        Err((status, finding, fix)) => {
            checks.push(kvm_skipped.unwrap_or_else(|| Check::new("probe.kvm", status, finding.clone(), fix)));
            checks.push(Check::new("probe.tcg", status, finding, fix));
            return facts;
        }
    };
    let _ = std::fs::create_dir_all(&opts.log_dir);
    let console = |accel: Accel| {
        let name = if accel == Accel::Kvm { "kvm" } else { "tcg" };
        opts.log_dir.join(format!("doctor-probe-{name}.console.log"))
    };
    let stop_tcg = AtomicBool::new(false);
    let tcg_probe = || {
        let console = console(Accel::Tcg);
        (probe::boot_unless(&image, Accel::Tcg, probe::TCG_TIMEOUT, &console, &stop_tcg), console)
    };
    std::thread::scope(|scope| {
        // Where the host has the cores, TCG boots beside KVM, so a KVM that fails costs no
        // more than the TCG boot that follows it anyway; a KVM that works stops it early.
        let early_tcg =
            (kvm_skipped.is_none() && probes_in_parallel() && !opts.defer_tcg).then(|| scope.spawn(tcg_probe));
        match kvm_skipped {
            Some(check) => checks.push(check),
            None => {
                let console = console(Accel::Kvm);
                let outcome = probe::boot(&image, Accel::Kvm, probe::KVM_TIMEOUT, &console);
                checks.push(kvm_check(outcome, &console, cpu, kvm, &mut facts));
            }
        }
        if facts.kvm == Some(true) {
            stop_tcg.store(true, Ordering::Relaxed);
            if let Some(t) = early_tcg {
                let _ = t.join();
            }
            checks.push(Check::new("probe.tcg", Status::Note, "not needed: guests boot under KVM", ""));
            return;
        }
        if opts.defer_tcg {
            facts.tcg_pending = true;
            checks.push(Check::new("probe.tcg", Status::Note, TCG_PENDING, ""));
            return;
        }
        let (outcome, console) = match early_tcg.map(|t| t.join()) {
            Some(Ok(done)) => done,
            // The probe thread panicked (a bug); boot again here to still have an answer.
            Some(Err(_)) | None => tcg_probe(),
        };
        checks.push(tcg_check(outcome, &console, &mut facts));
    });
    facts
}

fn kvm_check(
    outcome: Result<probe::BootOutcome, probe::ProbeError>,
    console: &Path,
    cpu: &cpu::CpuInfo,
    kvm: &kvm::KvmFacts,
    facts: &mut ProbeFacts,
) -> Check {
    match outcome {
        Ok(o) if o.reached_init => {
            facts.kvm = Some(true);
            Check::pass(
                "probe.kvm",
                format!("the test guest reached its init under KVM in {:.1} s", o.elapsed.as_secs_f64()),
            )
        }
        Ok(o) => {
            facts.kvm = Some(false);
            let why = if kvm.pvm && cpu.virt_flag().is_none() {
                " (expected with PVM: only PVM guest kernels run under this KVM)"
            } else {
                ""
            };
            Check::fail(
                "probe.kvm",
                format!("a normal guest kernel did not boot under KVM: {}{why}", o.detail),
                format!("guests run under TCG instead; the serial console is in {}", console.display()),
            )
        }
        Err(e) => {
            facts.kvm = Some(false);
            Check::fail("probe.kvm", format!("cannot run the KVM probe: {e}"), "guests run under TCG instead")
        }
    }
}

fn tcg_check(outcome: Result<probe::BootOutcome, probe::ProbeError>, console: &Path, facts: &mut ProbeFacts) -> Check {
    match outcome {
        Ok(o) if o.reached_init => {
            facts.tcg = Some(true);
            Check::pass(
                "probe.tcg",
                format!(
                    "the test guest reached its init under TCG in {:.1} s (software emulation: slow but working)",
                    o.elapsed.as_secs_f64()
                ),
            )
        }
        Ok(o) => {
            facts.tcg = Some(false);
            Check::fail(
                "probe.tcg",
                format!("the test guest did not boot under TCG either: {}", o.detail),
                format!("see the serial console in {} and the qemu installation", console.display()),
            )
        }
        Err(e) => {
            facts.tcg = Some(false);
            Check::fail("probe.tcg", format!("cannot run the TCG probe: {e}"), "check the qemu installation")
        }
    }
}

fn decide(
    host: &HostRoot,
    config: &Config,
    cpu: &cpu::CpuInfo,
    kvm: &kvm::KvmFacts,
    probes: ProbeFacts,
    net: network::NetFacts,
    qemu_present: bool,
) -> Decision {
    let mut reasons = Vec::new();
    let accel = match config.compute.accel {
        Accel::Kvm => {
            reasons.push("accel kvm set in the config".to_string());
            Accel::Kvm
        }
        Accel::Tcg => {
            reasons.push("accel tcg set in the config".to_string());
            Accel::Tcg
        }
        Accel::Auto => match probes.kvm {
            Some(true) => {
                reasons.push("a test guest booted under KVM".to_string());
                Accel::Kvm
            }
            Some(false) if probes.tcg == Some(false) => {
                reasons.push("the test guest booted under neither KVM nor TCG (see probe.tcg)".to_string());
                Accel::Tcg
            }
            Some(false) => {
                reasons.push("a test guest did not boot under KVM, TCG is the fallback".to_string());
                Accel::Tcg
            }
            None if probes.tcg == Some(false) => {
                reasons
                    .push("KVM was not probed and the test guest did not boot under TCG (see probe.tcg)".to_string());
                Accel::Tcg
            }
            None if kvm.pvm && cpu.virt_flag().is_none() => {
                reasons.push("/dev/kvm is PVM-only, normal guests need TCG".to_string());
                Accel::Tcg
            }
            None if kvm.looks_usable(cpu) => {
                reasons.push("KVM looks usable (not proven by a probe boot)".to_string());
                Accel::Kvm
            }
            None => {
                reasons.push("KVM is not usable, guests run under TCG".to_string());
                Accel::Tcg
            }
        },
    };
    let driver = match config.compute.driver {
        Driver::Auto if qemu_present => Driver::Qemu,
        Driver::Auto => {
            reasons.push("qemu-system-x86_64 is missing, so the fake driver".to_string());
            Driver::Fake
        }
        d => d,
    };
    let bridge_programs = ["ip", "dnsmasq", "nft"].iter().all(|p| resources::program_present(host, p));
    let network = match config.network.mode {
        NetworkMode::Auto if net.cap_net_admin && net.tun && bridge_programs => NetworkMode::Bridge,
        NetworkMode::Auto => {
            let why = if !net.cap_net_admin {
                "no CAP_NET_ADMIN"
            } else if !net.tun {
                "no /dev/net/tun"
            } else {
                "ip, dnsmasq or nft missing"
            };
            reasons.push(format!("user networking ({why})"));
            NetworkMode::User
        }
        m => m,
    };
    Decision { accel, driver, network, reason: reasons.join("; ") }
}

/// What `up` uses: the decision of the report `init` saved in the home (or, without one, of a
/// quick doctor run without a probe boot), with every setting the config names explicitly
/// taking precedence. Never `Auto` in any field.
pub fn effective_decision(home: &Home, config: &Config) -> Decision {
    let saved = Report::load(&home.root().join(REPORT_FILE)).filter(|r| r.host_root == Path::new("/"));
    let mut decision = match saved {
        Some(report) => report.decision,
        None => run(config, &Options::for_home(home, Path::new("/"), false)).decision,
    };
    if config.compute.accel != Accel::Auto {
        decision.accel = config.compute.accel;
    }
    if config.compute.driver != Driver::Auto {
        decision.driver = config.compute.driver;
    }
    if config.network.mode != NetworkMode::Auto {
        decision.network = config.network.mode;
    }
    decision
}

/// The accelerator guests use (`Kvm` or `Tcg`); see `effective_decision`.
pub fn effective_accel(home: &Home, config: &Config) -> Accel {
    if config.compute.accel != Accel::Auto {
        return config.compute.accel;
    }
    effective_decision(home, config).accel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_serializes_uppercase_and_orders_by_severity() {
        assert_eq!(serde_json::to_string(&Status::Fail).unwrap(), "\"FAIL\"");
        assert!(Status::Fail > Status::Warn && Status::Warn > Status::Note && Status::Note > Status::Pass);
    }

    #[test]
    fn report_round_trips_and_other_schemas_are_ignored() {
        let t = tempfile::tempdir().unwrap();
        let opts = Options {
            host_root: t.path().to_path_buf(),
            boot_probe: false,
            image_dir: t.path().join("img"),
            cache_dir: None,
            defer_tcg: false,
            log_dir: t.path().join("logs"),
            home_dir: t.path().to_path_buf(),
        };
        let report = run(&Config::default(), &opts);
        let file = t.path().join("doctor.json");
        report.save(&file).unwrap();
        assert_eq!(Report::load(&file), Some(report.clone()));
        let text = std::fs::read_to_string(&file).unwrap().replace("\"schema\": 1", "\"schema\": 99");
        std::fs::write(&file, text).unwrap();
        assert_eq!(Report::load(&file), None);
    }

    #[test]
    fn configured_accel_wins() {
        let t = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.compute.accel = Accel::Tcg;
        assert_eq!(effective_accel(&Home::at(t.path()), &c), Accel::Tcg);
    }
}
