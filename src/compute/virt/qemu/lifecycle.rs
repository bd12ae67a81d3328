//! Rebuild, resize and snapshot on the qemu driver (issue 16).
//!
//! - Rebuild: qemu stopped, the guest's files made anew from the spec (a fresh root overlay
//!   on the new image, a new config drive) in the same instance dir; the console log stays,
//!   so the console shows the guest booting again, and with `preserve_ephemeral` so does
//!   `disk.eph0` (`guestfiles::clear_for_rebuild`).
//! - Resize: the guest powered off (ACPI, then hard after its timeout), `disk` and
//!   `launch.json` copied to `resize-kept/`; the root overlay grown with `qemu-img resize`,
//!   `-m` and `-smp` of the saved command line set to the new flavor, and qemu started again.
//!   Confirm removes `resize-kept/`; revert stops qemu and moves the kept files back.
//! - Snapshot: the running guest stopped with QMP `stop` (qemu drains and flushes its disks),
//!   `qemu-img convert -U` of the root overlay and its backing chain into one qcow2, then
//!   QMP `cont`. The guest is frozen only for the copy.

use std::time::Instant;

use super::super::guestfiles::{clear_for_rebuild, remove_snapshot_files, snapshot_file};
use super::super::{qmp, GuestSpec, Snapshot, VirtError};
use super::cmdline::Launch;
use super::{failed, QemuDriver};

/// What a resize keeps for a revert, in the instance dir.
const KEPT: &str = "resize-kept";

impl QemuDriver {
    pub(super) async fn rebuild_guest(&self, spec: &GuestSpec, preserve_ephemeral: bool) -> Result<(), VirtError> {
        let uuid = &spec.uuid;
        let dir = self.dir(uuid)?;
        // The old disk is thrown away, so there is nothing to shut down cleanly for. A guest
        // whose files are gone or half made (ERROR after a restart) is simply made anew.
        self.kill(uuid, &dir).await;
        if let Some(pid) = self.live_pid(&dir, uuid) {
            return Err(failed(format!("qemu (pid {pid}) of guest {uuid} does not stop")));
        }
        std::fs::create_dir_all(&dir).map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
        clear_for_rebuild(&dir, preserve_ephemeral)?;
        let launch = self.prepare(spec, &dir).await?;
        self.save_launch(&dir, &launch)?;
        self.start(uuid, &dir, &launch).await
    }

    pub(super) async fn resize_power_off(&self, uuid: &str) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        self.launch(&dir, uuid)?;
        let kept = dir.join(KEPT);
        if kept.join("launch.json").is_file() {
            // Already kept (a resize delivered twice): the kept files are the originals.
            return self.power_off_for_resize(uuid).await;
        }
        self.power_off_for_resize(uuid).await?;
        let _ = std::fs::remove_dir_all(&kept);
        std::fs::create_dir_all(&kept).map_err(|e| failed(format!("cannot create {}: {e}", kept.display())))?;
        for f in ["disk", "launch.json"] {
            if dir.join(f).is_file() {
                std::fs::copy(dir.join(f), kept.join(f))
                    .map_err(|e| failed(format!("cannot keep {f} for a revert: {e}")))?;
            }
        }
        Ok(())
    }

    async fn power_off_for_resize(&self, uuid: &str) -> Result<(), VirtError> {
        use super::super::VirtDriver;
        self.power_off(uuid).await
    }

    pub(super) async fn finish_resize(&self, spec: &GuestSpec, power_on: bool) -> Result<(), VirtError> {
        let uuid = &spec.uuid;
        let dir = self.dir(uuid)?;
        let launch = self.launch(&dir, uuid)?;
        if !dir.join(KEPT).join("launch.json").is_file() {
            return Err(failed(format!("guest {uuid} was not prepared for a resize")));
        }
        let disk = dir.join("disk");
        if disk.is_file() && spec.root_gb > 0 {
            self.files.grow(&disk, (spec.root_gb as u64) << 30).await?;
        }
        let launch = with_size(&launch, spec.memory_mb, spec.vcpus)?;
        self.save_launch(&dir, &launch)?;
        if power_on {
            let _ = std::fs::remove_file(dir.join("stopped"));
            self.start(uuid, &dir, &launch).await?;
        }
        Ok(())
    }

    pub(super) async fn confirm_resize(&self, uuid: &str) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        match std::fs::remove_dir_all(dir.join(KEPT)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(failed(format!("cannot remove the disks kept for a revert: {e}")))
            }
            _ => Ok(()),
        }
    }

    pub(super) async fn revert_resize(&self, spec: &GuestSpec, power_on: bool) -> Result<(), VirtError> {
        let uuid = &spec.uuid;
        let dir = self.dir(uuid)?;
        let kept = dir.join(KEPT);
        if !kept.join("launch.json").is_file() {
            return Err(failed(format!("guest {uuid} has no disks kept from before its resize")));
        }
        // The resized guest's state goes with its disk: stop it hard.
        self.kill(uuid, &dir).await;
        if let Some(pid) = self.live_pid(&dir, uuid) {
            return Err(failed(format!("qemu (pid {pid}) of guest {uuid} does not stop")));
        }
        for f in ["disk", "launch.json"] {
            if kept.join(f).is_file() {
                std::fs::rename(kept.join(f), dir.join(f))
                    .map_err(|e| failed(format!("cannot restore {f} from before the resize: {e}")))?;
            }
        }
        let _ = std::fs::remove_dir_all(&kept);
        let launch = self.launch(&dir, uuid)?;
        if power_on {
            let _ = std::fs::remove_file(dir.join("stopped"));
            self.start(uuid, &dir, &launch).await
        } else {
            std::fs::write(dir.join("stopped"), b"").map_err(|e| failed(format!("cannot mark the guest stopped: {e}")))
        }
    }

    pub(super) async fn snapshot_disk(&self, uuid: &str, image_id: &str) -> Result<Snapshot, VirtError> {
        let dir = self.dir(uuid)?;
        self.launch(&dir, uuid)?;
        let file = snapshot_file(&dir, image_id)?;
        let disk = dir.join("disk");
        if !disk.is_file() {
            return Err(failed(format!("guest {uuid} has no root disk of its own to snapshot")));
        }
        let qmp_sock = dir.join("qmp.sock");
        // Only a running guest is stopped (and continued): a paused one stays paused, and a
        // stopped or suspended one has no process writing its disk.
        let running = self.live_pid(&dir, uuid).is_some() && qmp::status(&qmp_sock).await.is_ok_and(|s| s == "running");
        if running {
            qmp::execute(&qmp_sock, "stop")
                .await
                .map_err(|e| failed(format!("cannot stop the guest for a snapshot: {e}")))?;
        }
        let started = Instant::now();
        let copied = self.files.flatten(&disk, &file).await;
        let frozen = started.elapsed();
        if running {
            if let Err(e) = qmp::execute(&qmp_sock, "cont").await {
                tracing::error!(instance = %uuid, error = %e, "the guest could not be continued after its snapshot");
            }
        }
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&file);
            return Err(e);
        }
        tracing::info!(instance = %uuid, frozen_ms = frozen.as_millis() as u64, running, "root disk copied for a snapshot");
        Ok(Snapshot { file, disk_format: "qcow2".into() })
    }

    pub(super) fn remove_snapshot_files(&self, uuid: &str) -> Result<(), VirtError> {
        remove_snapshot_files(&self.dir(uuid)?)
    }
}

/// The launch with `-m` and `-smp` set to a new flavor's RAM and vCPUs.
fn with_size(launch: &Launch, memory_mb: i64, vcpus: i64) -> Result<Launch, VirtError> {
    if memory_mb <= 0 || vcpus <= 0 {
        return Err(failed(format!("the flavor has {memory_mb} MB and {vcpus} vCPUs")));
    }
    let mut launch = launch.clone();
    let mut set = |flag: &str, value: String| -> Result<(), VirtError> {
        let at = launch
            .args
            .iter()
            .position(|a| a == flag)
            .filter(|at| at + 1 < launch.args.len())
            .ok_or_else(|| failed(format!("the saved command line has no {flag}")))?;
        launch.args[at + 1] = value;
        Ok(())
    };
    set("-m", memory_mb.to_string())?;
    set("-smp", vcpus.to_string())?;
    Ok(launch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resize_changes_memory_and_cpus_only() {
        let launch = Launch {
            args: ["-name", "g", "-m", "64", "-smp", "1", "-rtc", "base=utc"].map(String::from).to_vec(),
            shutdown_timeout_secs: 5,
            volumes: vec![],
            ssh_port: None,
        };
        let bigger = with_size(&launch, 128, 2).unwrap();
        assert_eq!(bigger.args, ["-name", "g", "-m", "128", "-smp", "2", "-rtc", "base=utc"]);
        assert!(with_size(&launch, 0, 1).is_err());
        let broken = Launch { args: vec!["-m".into()], ..launch };
        assert!(with_size(&broken, 64, 1).is_err());
    }
}
