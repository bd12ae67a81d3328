//! `novabox down`: stop what `up` started for a home, and what a stack killed with SIGKILL
//! left behind (guests, the broker, bridges, taps, dnsmasqs, nft tables, DOCKER-USER rules).
//! Everything is found through this home's pid files and tags and stopped by pid: nothing
//! another program (or another home) made is touched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::home::Home;
use crate::supervise::{self, Stopped, SuperviseError};

/// The pid file of a home's running stack (`novabox up`, foreground or detached).
pub fn pid_file(home: &Home) -> PathBuf {
    home.run_dir().join("novabox.pid")
}

/// The ready document a stack writes once it serves (a detached `up` waits for it).
pub fn ready_file(home: &Home) -> PathBuf {
    home.run_dir().join("ready.json")
}

/// The start-up phase a stack is in, for the progress a detached `up` shows; a failed start
/// leaves its last phase there.
pub fn phase_file(home: &Home) -> PathBuf {
    home.run_dir().join("phase")
}

/// The pid of this home's running stack, if any.
pub fn running(home: &Home) -> Result<Option<i32>, SuperviseError> {
    supervise::running_pid(&pid_file(home), "novabox")
}

/// How long `down` gives a running stack before SIGKILL: it stops its guests first (ACPI,
/// then hard after `shutdown_timeout_secs`), then its services and broker.
pub fn grace(home: &Home) -> Duration {
    let guests = if home.is_initialized() {
        crate::config::Config::load(&home.config_file()).map(|c| c.compute.shutdown_timeout_secs).unwrap_or(10)
    } else {
        crate::config::Config::default().compute.shutdown_timeout_secs
    };
    Duration::from_secs(guests + 30)
}

#[derive(Debug, thiserror::Error)]
pub enum DownError {
    #[error("cannot stop novabox (pid {pid}): {source}")]
    Stack { pid: i32, source: SuperviseError },
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    #[error("{0} does not look like a novabox home (no novabox.toml); not deleting it")]
    NotAHome(PathBuf),
    #[error("cannot delete {path}: {source}")]
    Purge { path: PathBuf, source: std::io::Error },
}

/// Something `down` could not stop or remove, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Left {
    pub what: String,
    pub why: String,
}

/// What `down` did.
#[derive(Debug, Default, Serialize)]
pub struct DownReport {
    /// The stack's process (pid), stopped by its pid file; it stopped its own guests,
    /// services and broker.
    pub stack: Option<i32>,
    /// How the stack's process ended: after SIGTERM, or killed when it outlived [`grace`].
    pub stack_killed: bool,
    /// Guests a stack killed with -9 left running, stopped by their pid files (uuid, qemu
    /// pid). They stay ACTIVE in the database and the next `up` starts them again.
    pub guests: Vec<(String, i32)>,
    /// The private RabbitMQ, stopped here because its stack could not.
    pub broker: bool,
    /// dnsmasq processes stopped.
    pub dnsmasqs: usize,
    /// Bridges, taps and VXLAN links removed.
    pub links: Vec<String>,
    /// nft tables removed.
    pub tables: Vec<String>,
    /// DOCKER-USER rules removed.
    pub docker_rules: usize,
    /// What is still there, and why.
    pub left: Vec<Left>,
}

impl DownReport {
    /// Whether anything was running or set up at all.
    pub fn stopped_anything(&self) -> bool {
        self.stack.is_some() || !self.guests.is_empty() || self.broker || self.dnsmasqs > 0 || !self.links.is_empty()
    }
}

/// Stops this home's stack, then anything it left behind after a crash. Errors only when the
/// stack's own process cannot be stopped; what else stays is in [`DownReport::left`].
pub fn down(home: &Home) -> Result<DownReport, DownError> {
    let mut report = DownReport::default();
    if let Some(pid) = running(home)? {
        let outcome = supervise::stop_pid(pid, grace(home)).map_err(|source| DownError::Stack { pid, source })?;
        report.stack = Some(pid);
        report.stack_killed = outcome == Stopped::Killed;
    }
    // Guests of a stack killed with -9 are still running; stop them by their pid files.
    report.guests = crate::compute::virt::qemu::stop_leftover_guests(&home.instances_dir(), Duration::from_secs(5));
    // A stack killed with -9 cannot stop its broker; do it here.
    match crate::supervise::rabbitmq::RabbitMq::stop(home) {
        Ok(Stopped::Gracefully | Stopped::Killed) => report.broker = true,
        Ok(Stopped::NotRunning) => {}
        Err(e) => report.left.push(Left { what: "RabbitMQ".into(), why: e.to_string() }),
    }
    // Bridges, taps, dnsmasqs, nft tables and DOCKER-USER rules of this home: all of them,
    // and nothing another program made.
    match crate::compute::net::down(home) {
        Ok(r) => {
            report.dnsmasqs = r.dnsmasqs;
            report.links = r.links;
            report.tables = r.tables;
            report.docker_rules = r.docker_rules;
        }
        Err(e) => report.left.push(Left { what: "the guest network".into(), why: e.to_string() }),
    }
    for file in [ready_file(home), pid_file(home)] {
        remove_if_exists(&file);
    }
    Ok(report)
}

/// Deletes the home once the stack is down. Refuses a directory that is not a novabox home,
/// so a mistyped `--home` cannot remove someone's files. The caller asks for confirmation.
pub fn purge(home: &Home) -> Result<(), DownError> {
    check_purge(home)?;
    let root = home.root();
    std::fs::remove_dir_all(root).map_err(|source| DownError::Purge { path: root.to_path_buf(), source })
}

/// Whether `purge` would refuse this directory (checked before asking the user).
pub fn check_purge(home: &Home) -> Result<(), DownError> {
    if !home.is_initialized() && !home.db_file().exists() {
        return Err(DownError::NotAHome(home.root().to_path_buf()));
    }
    Ok(())
}

fn remove_if_exists(p: &Path) {
    let _ = std::fs::remove_file(p);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_on_a_home_with_nothing_running_reports_nothing_and_clears_stale_files() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path());
        home.create_dirs().unwrap();
        // A stale pid file naming a process that is not a novabox stack (this test's parent
        // shell may reuse numbers; pid 1 is never our stack).
        std::fs::write(pid_file(&home), b"1\n").unwrap();
        std::fs::write(ready_file(&home), b"{}").unwrap();
        let report = down(&home).unwrap();
        assert!(!report.stopped_anything(), "{report:?}");
        assert!(!pid_file(&home).exists() && !ready_file(&home).exists());
    }

    #[test]
    fn purge_refuses_a_directory_that_is_not_a_home() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("precious.txt"), b"x").unwrap();
        let home = Home::at(t.path());
        assert!(matches!(check_purge(&home), Err(DownError::NotAHome(_))));
        assert!(matches!(purge(&home), Err(DownError::NotAHome(_))));
        assert!(t.path().join("precious.txt").exists());
        std::fs::write(home.config_file(), b"").unwrap();
        purge(&home).unwrap();
        assert!(!t.path().exists());
    }
}
