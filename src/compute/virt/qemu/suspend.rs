//! Suspend and resume on the qemu driver: the guest's memory and device state saved to a file
//! through QMP `migrate`, qemu quit, and the same machine started again with `-incoming`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::super::guestfiles::path_str;
use super::super::{qmp, VirtError};
use super::{failed, QemuDriver};

/// A suspended guest's memory and device state, in its instance dir.
pub(super) const SAVED_STATE: &str = "memory.state";
/// The mark of a guest whose qemu exited because it was suspended (as `stopped` marks a
/// power-off), so the exit is neither a crash nor the guest shutting itself down.
pub(super) const SUSPENDED: &str = "suspended";
/// How long saving a guest's memory may take (a few GiB to a local disk).
const SAVE_TIMEOUT: Duration = Duration::from_secs(600);

/// Suspend and resume (issue 16): the guest is stopped, its RAM and device state go to
/// `memory.state` through QMP `migrate` to an `exec:` URI (what libvirt's managed save does
/// under the hood), and qemu quits; resume starts the same machine with `-incoming` from the
/// file and lets it go on, so its clock and processes continue where they were.
impl QemuDriver {
    /// The QMP socket of a guest whose qemu runs.
    pub(super) fn running_qmp(&self, uuid: &str) -> Result<PathBuf, VirtError> {
        let dir = self.dir(uuid)?;
        self.launch(&dir, uuid)?;
        if self.live_pid(&dir, uuid).is_none() {
            return Err(failed(format!("guest {uuid} is not running")));
        }
        Ok(dir.join("qmp.sock"))
    }

    pub(super) async fn save_state(&self, uuid: &str) -> Result<(), VirtError> {
        let qmp = self.running_qmp(uuid)?;
        let dir = self.dir(uuid)?;
        let state = dir.join(SAVED_STATE);
        let uri = exec_uri("cat >", &state)?;
        let _ = std::fs::remove_file(&state);
        // Stopped first: a running guest dirties memory as it is copied, so the save could
        // chase it; stopped, it is one pass and the state is one consistent point.
        qmp::execute(&qmp, "stop").await.map_err(|e| failed(format!("cannot stop the guest to save it: {e}")))?;
        match self.migrate_to_file(&qmp, &uri).await {
            Ok(()) => {}
            Err(e) => {
                // Nothing is lost: the guest goes on running as before.
                let _ = qmp::execute(&qmp, "cont").await;
                let _ = std::fs::remove_file(&state);
                return Err(e);
            }
        }
        std::fs::write(dir.join(SUSPENDED), b"")
            .map_err(|e| failed(format!("cannot mark the guest suspended: {e}")))?;
        self.kill(uuid, &dir).await;
        if let Some(pid) = self.live_pid(&dir, uuid) {
            return Err(failed(format!("the guest is saved but qemu (pid {pid}) does not stop")));
        }
        tracing::info!(instance = %uuid, bytes = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0), "guest suspended");
        Ok(())
    }

    async fn migrate_to_file(&self, qmp: &Path, uri: &str) -> Result<(), VirtError> {
        // qemu throttles a migration to 128 MiB/s by default, which is meant for a network.
        let unthrottled = serde_json::json!({"max-bandwidth": i64::MAX / 2});
        let _ = qmp::execute_with(qmp, "migrate-set-parameters", unthrottled).await;
        qmp::execute_with(qmp, "migrate", serde_json::json!({"uri": uri}))
            .await
            .map_err(|e| failed(format!("cannot save the guest's memory: {e}")))?;
        let started = Instant::now();
        loop {
            let info = qmp::execute(qmp, "query-migrate").await.map_err(|e| failed(format!("query-migrate: {e}")))?;
            match info.get("status").and_then(serde_json::Value::as_str) {
                Some("completed") => return Ok(()),
                Some(s @ ("failed" | "cancelled")) => {
                    let why = info.get("error-desc").and_then(serde_json::Value::as_str).unwrap_or(s);
                    return Err(failed(format!("saving the guest's memory failed: {why}")));
                }
                _ => {}
            }
            if started.elapsed() > SAVE_TIMEOUT {
                let _ = qmp::execute(qmp, "migrate_cancel").await;
                return Err(failed(format!("saving the guest's memory took over {}s", SAVE_TIMEOUT.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(super) async fn restore_state(&self, uuid: &str) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        let launch = self.launch(&dir, uuid)?;
        let state = dir.join(SAVED_STATE);
        if self.live_pid(&dir, uuid).is_some() {
            if state.exists() {
                return Err(failed(format!("guest {uuid} runs, yet has a saved state to resume from")));
            }
            return Ok(());
        }
        if !state.is_file() {
            return Err(failed(format!("guest {uuid} has no saved state ({}) to resume from", state.display())));
        }
        self.start_with(uuid, &dir, &launch, Some(&state)).await?;
        // The guest runs from memory now; its saved state would only take disk space.
        let _ = std::fs::remove_file(&state);
        let _ = std::fs::remove_file(dir.join(SUSPENDED));
        tracing::info!(instance = %uuid, "guest resumed");
        Ok(())
    }
}

/// A QMP `exec:` URI running `command` on `file` through the shell, the path single-quoted
/// (a path with a quote in it is refused rather than escaped).
pub(super) fn exec_uri(command: &str, file: &Path) -> Result<String, VirtError> {
    let path = path_str(file)?;
    if path.contains('\'') {
        return Err(failed(format!("the path {path} has a quote in it; use another --home")));
    }
    Ok(format!("exec:{command} '{path}'"))
}
