//! The `doctor` phase of `novabox up`, the first one: the fast host checks (no probe boot,
//! under 0.1 s), so `up` stops before starting anything when the configured driver or bus
//! cannot run here, with the reason and the fix.
//!
//! The slow probe boot (which proves KVM or TCG works) runs only when the home has no saved
//! `doctor.json` (a new home: `up` leaves the doctor to this phase) or the host changed since
//! it was saved (other CPU, KVM, nesting or environment findings), and only when guests will
//! run under qemu. It runs in a thread beside the next phase (the broker's start, seconds
//! too), and `up` waits for it before the services start: its report replaces the saved one,
//! and the compute service picks the accelerator from it.

use std::path::Path;

use novabox::config::{Accel, Config, Driver};
use novabox::doctor::{self, Report, Status};
use novabox::home::Home;

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
        Some(_) => None,
    }
}

/// The checks that stop `up`: a program the configuration explicitly asks for is missing
/// (`driver = "qemu"` without qemu, `bus = "rabbitmq"` without rabbitmq-server). Everything
/// else the doctor finds has a fallback that `up` reports instead (TCG, user networking).
fn blocking(report: &Report) -> Vec<&doctor::Check> {
    report.checks.iter().filter(|c| c.status == Status::Fail && c.id.starts_with("host.program.")).collect()
}

/// The probe boot running beside `up`'s next phase. Dropping it waits for it too, so no probe
/// qemu outlives a start-up that failed meanwhile.
pub struct Probe(Option<std::thread::JoinHandle<anyhow::Result<()>>>);

impl Probe {
    pub fn running(&self) -> bool {
        self.0.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Waits for the probe and its saved report.
    pub fn finish(mut self) -> anyhow::Result<()> {
        match self.0.take().map(|t| t.join()) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(_)) => anyhow::bail!("the doctor's probe boot panicked; run `novabox doctor --boot-probe`"),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

/// Runs the phase; `Err` carries the reason and the fix, for `up` to fail fast with.
pub fn run(home: &Home, config: &Config) -> anyhow::Result<Probe> {
    let file = home.root().join(doctor::REPORT_FILE);
    let quick = doctor::run(config, &doctor::Options::for_home(home, Path::new("/"), false));
    let blockers = blocking(&quick);
    if !blockers.is_empty() {
        let what: Vec<String> = blockers.iter().map(|c| format!("{}; fix: {}", c.finding, c.fix)).collect();
        anyhow::bail!(
            "this host cannot run the configured stack: {} (novabox doctor shows every check)",
            what.join(". ")
        );
    }
    let saved = Report::load(&file).filter(|r| r.host_root == Path::new("/"));
    let mut probe = Probe(None);
    if let Some(why) = probe_reason(saved.as_ref(), &quick, config) {
        tracing::info!("doctor: {why}; booting the test guest to choose between KVM and TCG");
        let (home, config) = (home.clone(), config.clone());
        probe.0 = Some(std::thread::spawn(move || {
            let probed = doctor::run(&config, &doctor::Options::for_home(&home, Path::new("/"), true));
            probed.save(&file)?;
            tracing::info!(accel = ?probed.decision.accel, reason = %probed.decision.reason, "doctor: decision saved");
            Ok(())
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
