//! The `doctor` phase of `novabox up`, the first one: the fast host checks (no probe boot,
//! under 0.1 s), so `up` stops before starting anything when the configured driver or bus
//! cannot run here, with the reason and the fix.
//!
//! The slow probe boot (which proves KVM or TCG works) runs only when the home has no saved
//! `doctor.json` (a new home: `up` leaves the doctor to this phase), the host changed since
//! it was saved (other CPU, KVM, nesting or environment findings) or the last start stopped
//! before its TCG probe finished, and only when guests will run under qemu. It runs in a
//! thread beside the next phase (the broker's start, seconds too). `up` waits only for what
//! can change the decision (the KVM probe, unless the host's facts rule KVM out): that report
//! replaces the saved one, and the compute service picks the accelerator from it. The TCG
//! probe, which proves guests boot when KVM does not, goes on while the stack starts.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::{Accel, Config, Driver};
use crate::doctor::{self, Report, Status};
use crate::home::Home;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("this host cannot run the configured stack: {0} (novabox doctor shows every check)")]
    Blocked(String),
    #[error("cannot save the doctor's report: {0}")]
    Save(String),
    #[error("the doctor's probe boot panicked; run `novabox doctor --boot-probe`")]
    Panicked,
}

/// The findings that describe the host itself (not ports or free disk, which change between
/// runs): when they differ from the saved report's, the saved decision may be wrong.
fn fingerprint(report: &Report) -> Vec<(String, Status)> {
    let mut f: Vec<(String, Status)> = report
        .checks
        .iter()
        .filter(|c| ["env.", "cpu.", "kvm."].iter().any(|p| c.id.starts_with(p)))
        .map(|c| (c.id.clone(), c.status))
        .collect();
    f.push((format!("{:?}/{:?}", report.environment.platform, report.environment.container), Status::Note));
    f
}

/// Why the probe boot runs, if it must.
fn probe_reason(saved: Option<&Report>, quick: &Report, config: &Config) -> Option<&'static str> {
    let guests_under_qemu = match config.compute.driver {
        Driver::Fake => false,
        Driver::Auto => quick.decision.driver != Driver::Fake,
        Driver::Qemu | Driver::Libvirt => true,
    };
    if !guests_under_qemu || config.compute.accel != Accel::Auto {
        return None;
    }
    match saved {
        None => Some("no saved doctor report"),
        Some(s) if fingerprint(s) != fingerprint(quick) => Some("the host changed since the saved doctor report"),
        Some(s) if s.tcg_pending => Some("the last start stopped before its TCG probe finished"),
        Some(_) => None,
    }
}

/// The checks that stop `up`: a program the configuration explicitly asks for is missing
/// (`driver = "qemu"` without qemu, `bus = "rabbitmq"` without rabbitmq-server). Everything
/// else the doctor finds has a fallback that `up` reports instead (TCG, user networking).
fn blocking(report: &Report) -> Vec<&doctor::Check> {
    report.checks.iter().filter(|c| c.status == Status::Fail && c.id.starts_with("host.program.")).collect()
}

/// The probe running beside `up`'s next phase. It first decides (the KVM probe, unless the
/// host's facts rule KVM out) and saves that report, which `up` waits for; then it boots the
/// TCG probe, which cannot change the decision, while the stack starts and serves, and saves
/// the report again. Dropping it stops a TCG probe still running (the stack is going down;
/// the report stays pending, so the next `up` probes again) and waits for the thread, so no
/// probe qemu outlives `up`.
pub struct Probe {
    decided: Option<std::sync::mpsc::Receiver<Result<(), String>>>,
    decided_flag: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn none() -> Probe {
        Probe {
            decided: None,
            decided_flag: Arc::new(AtomicBool::new(true)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    /// True until the decision is saved.
    pub fn deciding(&self) -> bool {
        self.decided.is_some() && !self.decided_flag.load(Ordering::Acquire)
    }

    /// Waits for the decision and its saved report (not for the TCG probe after it).
    pub fn decided(&mut self) -> Result<(), StartupError> {
        match self.decided.take().map(|rx| rx.recv()) {
            None => Ok(()),
            Some(Ok(result)) => result.map_err(StartupError::Save),
            Some(Err(_)) => Err(StartupError::Panicked),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the phase; `Err` carries the reason and the fix, for `up` to fail fast with.
pub fn run(home: &Home, config: &Config) -> Result<Probe, StartupError> {
    let file = home.root().join(doctor::REPORT_FILE);
    let quick = doctor::run(config, &doctor::Options::for_home(home, Path::new("/"), false));
    let blockers = blocking(&quick);
    if !blockers.is_empty() {
        let what: Vec<String> = blockers.iter().map(|c| format!("{}; fix: {}", c.finding, c.fix)).collect();
        return Err(StartupError::Blocked(what.join(". ")));
    }
    let saved = Report::load(&file).filter(|r| r.host_root == Path::new("/"));
    let mut probe = Probe::none();
    let why = probe_reason(saved.as_ref(), &quick, config);
    let import = crate::bootstrap::test_image_pending_file(home).exists();
    if why.is_some() || import {
        if let Some(why) = why {
            tracing::info!("doctor: {why}; booting the test guest to choose between KVM and TCG");
        }
        let (home, config) = (home.clone(), config.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let (flag, stop) = (Arc::new(AtomicBool::new(false)), probe.stop.clone());
        probe.decided_flag = flag.clone();
        probe.decided = Some(rx);
        probe.thread = Some(std::thread::spawn(move || {
            // A new home's test guest, built (or taken from the user cache) and imported here
            // beside the broker's start; the probe boots the same guest.
            match crate::bootstrap::import_pending_test_image(&home, &config, crate::home::user_cache_dir().as_deref())
            {
                Ok(Some(t)) => tracing::info!(image = %t.ami.id, "the test guest is image `tiny`"),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("{e}. Servers need an image: upload one, or fix this and run `novabox init` again.")
                }
            }
            if why.is_none() {
                flag.store(true, Ordering::Release);
                let _ = tx.send(Ok(()));
                return;
            }
            let mut opts = doctor::Options::for_home(&home, Path::new("/"), true);
            opts.defer_tcg = true;
            let mut report = doctor::run(&config, &opts);
            let saved = report.save(&file).map_err(|e| e.to_string());
            let ok = saved.is_ok();
            flag.store(true, Ordering::Release);
            let _ = tx.send(saved);
            tracing::info!(accel = ?report.decision.accel, reason = %report.decision.reason, "doctor: decision saved");
            if ok && doctor::prove_tcg(&mut report, &opts, &stop) {
                match report.save(&file) {
                    Err(e) => tracing::warn!(error = %e, "doctor: cannot save the TCG probe's result"),
                    Ok(()) => match report.check("probe.tcg") {
                        Some(c) if c.status == Status::Pass => tracing::info!("doctor: {}", c.finding),
                        Some(c) => tracing::warn!("doctor: {}; {}", c.finding, c.fix),
                        None => {}
                    },
                }
            }
        }));
    }
    let warnings = quick.checks.iter().filter(|c| c.status == Status::Fail).count();
    if warnings > 0 {
        tracing::warn!(
            "doctor: {warnings} check(s) FAIL with a fallback; `novabox doctor` says which and how to fix them"
        );
    }
    Ok(probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Report {
        let text = std::fs::read_to_string(format!("{}/tests/fixtures/hosts/{name}.json", env!("CARGO_MANIFEST_DIR")))
            .expect("fixture report");
        serde_json::from_str(&text).expect("fixture parses")
    }

    #[test]
    fn probe_runs_without_a_saved_report_or_on_another_host_and_never_for_fake() {
        let here = fixture("vmware-vhv");
        let mut config = Config::default();
        config.compute.driver = Driver::Qemu;
        assert_eq!(probe_reason(None, &here, &config), Some("no saved doctor report"));
        assert_eq!(probe_reason(Some(&here), &here, &config), None);
        let other = fixture("vmware-no-vhv");
        assert_eq!(probe_reason(Some(&other), &here, &config), Some("the host changed since the saved doctor report"));
        let mut pending = here.clone();
        pending.tcg_pending = true;
        assert_eq!(
            probe_reason(Some(&pending), &here, &config),
            Some("the last start stopped before its TCG probe finished")
        );
        config.compute.accel = Accel::Tcg;
        assert_eq!(probe_reason(None, &here, &config), None, "an explicit accel needs no probe");
        config.compute.accel = Accel::Auto;
        config.compute.driver = Driver::Fake;
        assert_eq!(probe_reason(None, &here, &config), None);
    }

    #[test]
    fn only_missing_required_programs_block() {
        let mut report = fixture("vmware-vhv");
        assert!(blocking(&report).is_empty());
        report.checks.push(doctor::Check::fail("kvm.device", "no /dev/kvm", "load kvm"));
        assert!(blocking(&report).is_empty(), "TCG is the fallback");
        report.checks.push(doctor::Check::fail("host.program.qemu-system-x86_64", "missing", "apt"));
        assert_eq!(blocking(&report).len(), 1);
    }
}
