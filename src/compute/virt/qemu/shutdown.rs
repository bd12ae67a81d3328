//! Stopping every guest when the compute service goes down (`novabox down`, Ctrl-C on `up`),
//! and the qemu processes a crashed stack left behind.
//!
//! Kept apart from the per-guest power actions in `qemu.rs`: these stop the host's guests
//! without marking them stopped, so that the next `up` finds them ACTIVE and starts them again
//! (nova's `resume_guests_state_on_host_boot`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::super::{qmp, ShutdownReport, VirtDriver, VirtError};
use super::{failed, qemu_alive, QemuDriver};

impl QemuDriver {
    /// Presses every running guest's ACPI power button at once, waits up to `timeout` for all
    /// of them, then stops the rest hard (QMP `quit`, then signals by pid), in parallel, so a
    /// host with many guests is down within about `timeout` plus a few seconds.
    pub(super) async fn shutdown_guests(&self, timeout: Duration) -> Result<ShutdownReport, VirtError> {
        let mut running: Vec<(String, PathBuf)> = Vec::new();
        for uuid in self.guests().await {
            let dir = self.dir(&uuid)?;
            if self.live_pid(&dir, &uuid).is_some() {
                running.push((uuid, dir));
            }
        }
        if running.is_empty() {
            return Ok(ShutdownReport::default());
        }
        tracing::info!(guests = running.len(), timeout_secs = timeout.as_secs(), "shutting guests down (ACPI)");
        for (uuid, dir) in &running {
            // A guest whose monitor does not answer is stopped hard below.
            if let Err(e) = qmp::execute(&dir.join("qmp.sock"), "system_powerdown").await {
                tracing::warn!(instance = %uuid, error = %e, "cannot press the ACPI power button");
            }
        }
        let deadline = Instant::now() + timeout;
        while running.iter().any(|(uuid, dir)| self.live_pid(dir, uuid).is_some()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut report = ShutdownReport::default();
        let mut hard = Vec::new();
        for (uuid, dir) in &running {
            if self.live_pid(dir, uuid).is_some() {
                hard.push((uuid.clone(), dir.clone()));
            } else {
                report.clean.push(uuid.clone());
            }
        }
        if !hard.is_empty() {
            tracing::info!(
                guests = hard.len(),
                "no clean shutdown within {}s (the guest ignores ACPI); stopping qemu",
                timeout.as_secs()
            );
        }
        futures_util::future::join_all(hard.iter().map(|(uuid, dir)| self.kill(uuid, dir))).await;
        let stuck: Vec<String> = hard
            .iter()
            .filter_map(|(uuid, dir)| self.live_pid(dir, uuid).map(|pid| format!("{uuid} (qemu pid {pid})")))
            .collect();
        if !stuck.is_empty() {
            return Err(failed(format!("these guests do not stop: {}", stuck.join(", "))));
        }
        report.hard = hard.into_iter().map(|(uuid, _)| uuid).collect();
        Ok(report)
    }
}

/// Stops, by the pid in each guest's `qemu.pid`, every qemu still running under
/// `instances_dir`: what a stack killed with SIGKILL could not stop itself. A pid is only
/// signalled while its command line names that guest, so a reused pid is left alone. Blocking
/// (`down` is synchronous). Returns the (uuid, pid) pairs it stopped.
pub fn stop_leftover_guests(instances_dir: &Path, timeout: Duration) -> Vec<(String, i32)> {
    let Ok(entries) = std::fs::read_dir(instances_dir) else { return Vec::new() };
    let mut stopped = Vec::new();
    for entry in entries.flatten() {
        let Some(uuid) = entry.file_name().to_str().map(str::to_string) else { continue };
        if uuid::Uuid::parse_str(&uuid).is_err() {
            continue;
        }
        let Ok(Some(pid)) = crate::supervise::read_pid_file(&entry.path().join("qemu.pid")) else { continue };
        if !qemu_alive(pid, &uuid) {
            continue;
        }
        match crate::supervise::stop_pid(pid, timeout) {
            Ok(_) => stopped.push((uuid, pid)),
            Err(e) => tracing::warn!(instance = %uuid, pid, error = %e, "cannot stop a leftover qemu"),
        }
    }
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// A process that looks like a guest's qemu (its command line names the guest) and one
    /// that does not: only the first is stopped.
    #[test]
    fn leftovers_are_stopped_by_pid_only_when_they_are_that_guest() {
        let t = tempfile::tempdir().unwrap();
        let guest = uuid::Uuid::new_v4().to_string();
        let other = uuid::Uuid::new_v4().to_string();
        let spawn = |arg: &str| {
            std::process::Command::new("sh").args(["-c", "sleep 300 & wait", arg]).process_group(0).spawn().unwrap()
        };
        let mut looks_like_qemu = spawn(&format!("guest={guest},debug-threads=on"));
        let mut unrelated = spawn("something-else");
        for (uuid, pid) in [(&guest, looks_like_qemu.id()), (&other, unrelated.id())] {
            std::fs::create_dir_all(t.path().join(uuid)).unwrap();
            crate::supervise::write_pid_file(&t.path().join(uuid).join("qemu.pid"), pid).unwrap();
        }
        std::fs::create_dir_all(t.path().join("_base")).unwrap();
        let stopped = stop_leftover_guests(t.path(), Duration::from_secs(5));
        assert_eq!(stopped, vec![(guest.clone(), looks_like_qemu.id() as i32)]);
        // is_alive reaps our own dead child, so wait() can no longer be asked.
        assert!(!crate::supervise::is_alive(looks_like_qemu.id() as i32), "the guest's qemu still runs");
        assert!(crate::supervise::is_alive(unrelated.id() as i32), "an unrelated process was stopped");
        unrelated.kill().unwrap();
        let _ = unrelated.wait();
        let _ = looks_like_qemu.wait();
    }
}
