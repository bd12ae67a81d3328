//! `up --detach`: the stack started again as a background process of its own (its own process
//! group, so a Ctrl-C meant for the shell does not reach it), its output in `logs/novabox.log`,
//! and what the parent reads while it waits: the phase file, the ready document, and the
//! failure's one-line reason from the log.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{BusKind, Config};
use crate::home::Home;
use crate::secrets::Secrets;

use super::{phase_file, ready_file, Ready};

/// A detached stack's log at least this big is moved aside when the next one starts.
pub const LOG_ROTATE_BYTES: u64 = 64 << 20;

/// The log of a detached stack.
pub fn log_file(home: &Home) -> PathBuf {
    home.logs_dir().join("novabox.log")
}

#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error("cannot open the log {path}: {source}")]
    Log { path: PathBuf, source: std::io::Error },
    #[error("cannot start novabox in the background: {0}")]
    Spawn(std::io::Error),
}

/// Starts `exe --home <home> <args>` in the background with stdin closed and its output
/// appended to [`log_file`] (rotated first), after removing the ready and phase files an
/// earlier run left, so the parent sees only this run's.
pub fn spawn(home: &Home, exe: &Path, args: &[OsString]) -> Result<std::process::Child, DetachError> {
    use std::os::unix::process::CommandExt;
    let path = log_file(home);
    rotate_log(&path);
    let log_err = |source| DetachError::Log { path: path.clone(), source };
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(log_err)?;
    let _ = std::fs::remove_file(ready_file(home));
    let _ = std::fs::remove_file(phase_file(home));
    let stderr = log.try_clone().map_err(log_err)?;
    std::process::Command::new(exe)
        .arg("--home")
        .arg(home.root())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(DetachError::Spawn)
}

/// Moves a log of [`LOG_ROTATE_BYTES`] or more to `<name>.1` (replacing the one there), so
/// stacks started again and again keep at most about twice that.
pub fn rotate_log(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= LOG_ROTATE_BYTES) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        if let Err(e) = std::fs::rename(path, &old) {
            tracing::warn!(path = %path.display(), error = %e, "cannot rotate the log");
        }
    }
}

/// The last `error:` line a failed detached start-up wrote to its log, for the one-line reason.
pub fn last_error_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|l| l.strip_prefix("error: ")).map(str::to_string)
}

/// The ready document: what `up --json` prints and a detached stack writes to its ready file
/// (endpoints, driver, network, bus, services, pid, time to ready, and the credentials).
pub fn ready_document(
    ready: &Ready,
    config: &Config,
    secrets: &Secrets,
    bus: BusKind,
    took: Duration,
) -> serde_json::Value {
    serde_json::json!({
        "api_url": ready.api_url,
        "auth_url": config.auth_url(),
        "region": config.host.region,
        "driver": ready.driver,
        "network": ready.network,
        "bus": format!("{bus:?}").to_lowercase(),
        "services": ready.services,
        "pid": std::process::id(),
        "ready_ms": took.as_millis() as u64,
        "faults": config.faults.enabled,
        "credentials": {
            "admin": {"username": "admin", "password": secrets.admin_password, "project_name": "admin"},
            "demo": {"username": "demo", "password": secrets.demo_password, "project_name": "demo"},
            "alt_demo": {"username": "alt_demo", "password": secrets.alt_demo_password, "project_name": "alt_demo"},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_big_log_is_moved_aside_and_a_small_one_kept() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("novabox.log");
        std::fs::write(&log, b"small").unwrap();
        rotate_log(&log);
        assert_eq!(std::fs::read(&log).unwrap(), b"small");
        std::fs::File::create(&log).unwrap().set_len(LOG_ROTATE_BYTES).unwrap();
        std::fs::write(t.path().join("novabox.log.1"), b"older").unwrap();
        rotate_log(&log);
        assert!(!log.exists());
        assert_eq!(std::fs::metadata(t.path().join("novabox.log.1")).unwrap().len(), LOG_ROTATE_BYTES);
    }

    #[test]
    fn the_last_error_line_is_the_reason() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("novabox.log");
        std::fs::write(&log, "error: first\nINFO something\nerror: the broker's port is taken\nbye\n").unwrap();
        assert_eq!(last_error_line(&log).as_deref(), Some("the broker's port is taken"));
        assert_eq!(last_error_line(&t.path().join("missing")), None);
    }
}
