//! The qemu process of a guest: started in its own process group with its pid file, reaped
//! by a waiter thread that notes how it exited, found again by pid (and its command line,
//! so a reused pid is never taken for it), stopped through QMP and then by pid.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::super::guestfiles::last_line;
use super::super::{qmp, VirtError};
use super::cmdline::{accel_name, volume_args, with_ssh_forward, Launch};
use super::{failed, QemuDriver};

/// How long qemu may take from exec to a running machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl QemuDriver {
    /// The pid of the guest's qemu while it runs.
    pub(super) fn live_pid(&self, dir: &Path, uuid: &str) -> Option<i32> {
        let pid = crate::supervise::read_pid_file(&dir.join("qemu.pid")).ok().flatten()?;
        qemu_alive(pid, uuid).then_some(pid)
    }

    /// Starts qemu for the guest in `dir` and waits until the machine runs.
    pub(super) async fn start(&self, uuid: &str, dir: &Path, launch: &Launch) -> Result<(), VirtError> {
        self.start_with(uuid, dir, launch, None).await
    }

    /// Starts qemu; with `incoming`, the machine's state is loaded from that file (a
    /// suspended guest) and it runs on from where it was saved.
    pub(super) async fn start_with(
        &self,
        uuid: &str,
        dir: &Path,
        launch: &Launch,
        incoming: Option<&Path>,
    ) -> Result<(), VirtError> {
        use std::os::unix::process::CommandExt;
        let incoming_args = match incoming {
            Some(file) => vec!["-incoming".to_string(), super::suspend::exec_uri("cat <", file)?],
            None => Vec::new(),
        };
        let launch = &self.keep_ssh_port(uuid, dir, launch)?;
        let launch = &if incoming.is_none() { self.with_vnc(dir, launch)? } else { launch.clone() };
        for stale in ["qmp.sock", "console.sock", "vnc.sock", "stopped"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let log_path = dir.join("qemu.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| failed(format!("cannot open {}: {e}", log_path.display())))?;
        let log_err = log.try_clone().map_err(|e| failed(format!("cannot open {}: {e}", log_path.display())))?;
        let mut child = std::process::Command::new(&self.qemu)
            .args(with_ssh_forward(&launch.args, launch.ssh_port))
            .args(volume_args(&launch.volumes)?)
            .args(&incoming_args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a Ctrl-C meant for `novabox up` must not kill the guests.
            .process_group(0)
            .spawn()
            .map_err(|e| failed(format!("cannot start {}: {e}", self.qemu.display())))?;
        let pid = child.id();
        tracing::info!(instance = %uuid, pid, accel = accel_name(self.accel), "qemu started");
        if let Err(e) = crate::supervise::write_pid_file(&dir.join("qemu.pid"), pid) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(e.to_string()));
        }
        // Reap qemu when it exits and note how, so a crash can be told from a shutdown. In
        // memory, not in the instance dir: a file written there could race a destroy's removal.
        let exits = self.exits.clone();
        let id = uuid.to_string();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let clean = status.success();
                tracing::info!(instance = %id, pid, %status, "qemu exited");
                exits.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (pid as i32, clean));
            }
        });
        let qmp = dir.join("qmp.sock");
        let started = Instant::now();
        loop {
            if !qemu_alive(pid as i32, uuid) {
                let log = std::fs::read(&log_path).unwrap_or_default();
                return Err(failed(format!("qemu exited at start: {}", last_line(&log))));
            }
            match qmp::status(&qmp).await.as_deref() {
                Ok("running") => return Ok(()),
                // The saved state is loaded; a guest saved while stopped (suspend stops it
                // first) stays stopped until told to go on.
                Ok("paused" | "postmigrate") if incoming.is_some() => {
                    let _ = qmp::execute(&qmp, "cont").await;
                }
                _ => {}
            }
            if started.elapsed() > START_TIMEOUT {
                self.kill(uuid, dir).await;
                return Err(failed(format!("qemu did not start the machine within {}s", START_TIMEOUT.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the guest's qemu now: QMP `quit`, then signals by pid.
    pub(super) async fn kill(&self, uuid: &str, dir: &Path) {
        let Some(pid) = self.live_pid(dir, uuid) else { return };
        let _ = qmp::execute(&dir.join("qmp.sock"), "quit").await;
        if self.wait_dead(dir, uuid, Duration::from_secs(3)).await {
            return;
        }
        let stopped =
            tokio::task::spawn_blocking(move || crate::supervise::stop_pid(pid, Duration::from_secs(3))).await;
        if let Ok(Err(e)) = stopped {
            tracing::warn!(instance = %uuid, pid, error = %e, "cannot stop qemu");
        }
    }

    pub(super) async fn wait_dead(&self, dir: &Path, uuid: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.live_pid(dir, uuid).is_none() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// True while `pid` is the qemu of this guest (its `-name guest=<uuid>`, which a pager or
/// `tail` on the guest's files would not have). A zombie has an empty command line, so it
/// counts as dead without being reaped here (the waiter thread reaps it and records the exit).
pub(super) fn qemu_alive(pid: i32, uuid: &str) -> bool {
    let needle = format!("guest={uuid},");
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
}

/// libvirt's version encoding (7.2.22 is 7002022), from `qemu-system-x86_64 --version`.
pub(super) fn qemu_version(qemu: &Path) -> Option<i64> {
    let out = std::process::Command::new(qemu).arg("--version").stdin(Stdio::null()).output().ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_version(text: &str) -> Option<i64> {
    let v = text.split_whitespace().skip_while(|w| *w != "version").nth(1)?;
    let mut parts = v.split(['.', '-', '(']).map(|p| p.parse::<i64>().ok());
    let (major, minor, micro) = (parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0));
    Some(major * 1_000_000 + minor * 1000 + micro)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_versions() {
        let text = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright";
        assert_eq!(parse_version(text), Some(7_002_022));
        assert_eq!(parse_version("QEMU emulator version 9.1.0\n"), Some(9_001_000));
        assert_eq!(parse_version("nonsense"), None);
    }
}
