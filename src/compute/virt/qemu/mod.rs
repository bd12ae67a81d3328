//! The qemu driver: one `qemu-system-x86_64` process per guest, no libvirt.
//!
//! Everything of a guest lives in `<home>/instances/<uuid>/`:
//!
//! | file            | what                                                            |
//! |-----------------|-----------------------------------------------------------------|
//! | `launch.json`   | the qemu arguments, so power-on starts the same machine again   |
//! | `qemu.pid`      | the pid (qemu runs in the foreground, in its own process group) |
//! | `qmp.sock`      | the QMP monitor (status, ACPI power button, reset, quit)        |
//! | `console.log`   | the serial console, appended across power cycles                |
//! | `console.sock`  | the serial console's socket, for `novabox console`              |
//! | `qemu.log`      | qemu's own stderr                                               |
//! | `disk`          | root disk: a qcow2 overlay on the cached base image             |
//! | `disk.eph0`     | the flavor's ephemeral disk (ext4 `ephemeral0`), see `guestfiles` |
//! | `disk.swap`     | the flavor's swap disk                                          |
//! | `kernel`, `ramdisk` | copies (hard links) of AMI-style kernel and ramdisk images  |
//! | `disk.config`   | the config drive, ISO9660 `config-2` on a CD-ROM (iso9660 format) |
//! | `config-drive/` | its files; shown as a vfat `config-2` disk with format vfat     |
//! | `stopped`       | present while the guest is off because novabox turned it off    |
//! | `resize-kept/`  | `disk` and `launch.json` from before a resize, until confirmed or reverted |
//! | `snapshot-<image>.qcow2` | a snapshot's copy, until the image service has it       |
//!
//! Base images are hard links in `<home>/instances/_base/<image id>`, checked with `qemu-img`
//! once, and kept when guests are destroyed (and when the image is deleted from the store).
//!
//! Every guest gets a config drive, as nova's `force_config_drive = True`: novabox has no
//! metadata service yet, and the drive is how a guest learns its hostname and keys.
//!
//! The driver is split by job: `cmdline` builds the qemu command line and keeps it in
//! `launch.json`, `process` starts, watches and stops the qemu process, `console` is the
//! serial console, `volumes` hot-plugs volumes, `shutdown` stops every guest at once. The
//! guest's disk and config-drive files come from `super::guestfiles`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::guestfiles::GuestFiles;
use super::{disks, imagecache, qmp, GuestSpec, HostResources, VirtDriver, VirtError, VolumeDisk};
use crate::compute::states::PowerState;
use crate::config::{Accel, ConfigDriveFormat};
use crate::hostpkgs;

mod cmdline;
mod console;
mod lifecycle;
mod process;
mod shutdown;
mod suspend;
#[cfg(test)]
mod tests;
mod volumes;

pub use cmdline::{saved_args, ssh_port, SSH_FORWARD_ADDR};
pub use console::{claim_serial, SerialClaim, SerialClaimError, CONSOLE_SOCKET, VNC_SOCKET};
pub use shutdown::stop_leftover_guests;

use cmdline::accel_name;
use process::{qemu_alive, qemu_version};

pub const QEMU: &str = "qemu-system-x86_64";
pub const QEMU_IMG: &str = "qemu-img";

pub use super::guestfiles::DEFAULT_SHUTDOWN_TIMEOUT;

#[derive(Debug, thiserror::Error)]
pub enum QemuUnavailable {
    #[error("the qemu driver needs {program}, which is not installed: sudo apt-get install {package}")]
    Missing { program: &'static str, package: &'static str },
}

pub struct QemuDriver {
    /// How each guest's last qemu exited, by uuid: (pid, exited cleanly).
    exits: Arc<Mutex<HashMap<String, (i32, bool)>>>,
    instances: PathBuf,
    qemu: PathBuf,
    files: GuestFiles,
    accel: Accel,
    resources: HostResources,
    image_cache_max_age: Duration,
}

fn failed(message: impl Into<String>) -> VirtError {
    VirtError::Failed(message.into())
}

impl QemuDriver {
    /// The driver for the home's `instances/` directory; fails when qemu or qemu-img is missing.
    pub fn new(home: &crate::home::Home, accel: Accel) -> Result<QemuDriver, QemuUnavailable> {
        let qemu = hostpkgs::find_program(QEMU)
            .ok_or(QemuUnavailable::Missing { program: QEMU, package: "qemu-system-x86" })?;
        let qemu_img = hostpkgs::find_program(QEMU_IMG)
            .ok_or(QemuUnavailable::Missing { program: QEMU_IMG, package: "qemu-utils" })?;
        let accel = if accel == Accel::Kvm { Accel::Kvm } else { Accel::Tcg };
        let (vcpus, memory_mb, local_gb) = super::probe_host(home.root());
        let resources = HostResources {
            hypervisor_type: "QEMU".into(),
            hypervisor_version: qemu_version(&qemu).unwrap_or(0),
            accel: accel_name(accel).into(),
            vcpus,
            memory_mb,
            local_gb,
        };
        let instances = home.instances_dir();
        let files = GuestFiles::new(qemu_img, &instances);
        let mut driver = QemuDriver {
            exits: Default::default(),
            instances,
            qemu,
            files,
            accel,
            resources,
            image_cache_max_age: Duration::from_secs(86400),
        };
        driver.set_config_drive_format(ConfigDriveFormat::Iso9660);
        Ok(driver)
    }

    /// Applies the `[compute]` settings the driver reads: config drive format, image cache age.
    pub fn configure(mut self, compute: &crate::config::ComputeConfig) -> QemuDriver {
        self.set_config_drive_format(compute.config_drive_format);
        self.image_cache_max_age = Duration::from_secs(compute.image_cache_max_age_secs);
        self
    }

    fn set_config_drive_format(&mut self, format: ConfigDriveFormat) {
        let tool = match format {
            ConfigDriveFormat::Vfat => None,
            ConfigDriveFormat::Iso9660 => {
                let tool = disks::find_iso_tool();
                if tool.is_none() {
                    tracing::warn!(
                        "config drives are vfat, not iso9660: neither genisoimage nor xorriso is installed \
                         (sudo apt-get install genisoimage)"
                    );
                }
                tool
            }
        };
        self.files.set_iso_tool(tool);
    }

    /// The config drive format guests of this driver get (after any fallback).
    pub fn config_drive_format(&self) -> ConfigDriveFormat {
        if self.files.iso_tool().is_some() {
            ConfigDriveFormat::Iso9660
        } else {
            ConfigDriveFormat::Vfat
        }
    }

    /// True when both programs the driver runs are installed.
    pub fn available() -> bool {
        hostpkgs::find_program(QEMU).is_some() && hostpkgs::find_program(QEMU_IMG).is_some()
    }

    fn dir(&self, uuid: &str) -> Result<PathBuf, VirtError> {
        // The uuid becomes a directory name: only a real uuid can never escape `instances/`.
        if uuid::Uuid::parse_str(uuid).is_err() {
            return Err(VirtError::NotFound(uuid.to_string()));
        }
        Ok(self.instances.join(uuid))
    }

    async fn spawn_in(&self, spec: &GuestSpec, dir: &std::path::Path) -> Result<(), VirtError> {
        let launch = self.prepare(spec, dir).await?;
        self.save_launch(dir, &launch)?;
        self.start(&spec.uuid, dir, &launch).await
    }
}

#[async_trait::async_trait]
impl VirtDriver for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn host_resources(&self) -> HostResources {
        self.resources.clone()
    }

    async fn spawn(&self, spec: &GuestSpec) -> Result<(), VirtError> {
        let dir = self.dir(&spec.uuid).map_err(|_| failed(format!("instance id {:?} is not a uuid", spec.uuid)))?;
        if self.live_pid(&dir, &spec.uuid).is_some() {
            return Err(failed(format!("guest {} is already running on this host", spec.uuid)));
        }
        // Left over from an earlier attempt: the spec wins.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
        let result = self.spawn_in(spec, &dir).await;
        if result.is_err() {
            // Nothing of a failed build stays in `instances/`.
            self.kill(&spec.uuid, &dir).await;
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    async fn destroy(&self, uuid: &str) -> Result<(), VirtError> {
        let Ok(dir) = self.dir(uuid) else { return Ok(()) };
        if !dir.exists() {
            return Ok(());
        }
        self.kill(uuid, &dir).await;
        if let Some(pid) = self.live_pid(&dir, uuid) {
            return Err(failed(format!("qemu (pid {pid}) of guest {uuid} does not stop")));
        }
        std::fs::remove_dir_all(&dir).map_err(|e| failed(format!("cannot remove {}: {e}", dir.display())))
    }

    async fn power_off(&self, uuid: &str) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        let launch = self.launch(&dir, uuid)?;
        if self.live_pid(&dir, uuid).is_some() {
            // The ACPI power button first, as nova's clean shutdown; a guest that ignores it
            // (no acpid, as the busybox test guest) is stopped hard after the timeout.
            let _ = qmp::execute(&dir.join("qmp.sock"), "system_powerdown").await;
            let timeout = Duration::from_secs(launch.shutdown_timeout_secs);
            if !self.wait_dead(&dir, uuid, timeout).await {
                tracing::info!(instance = %uuid, "no clean shutdown within {}s; stopping qemu", timeout.as_secs());
                self.kill(uuid, &dir).await;
            }
            if let Some(pid) = self.live_pid(&dir, uuid) {
                return Err(failed(format!("qemu (pid {pid}) does not stop")));
            }
        }
        std::fs::write(dir.join("stopped"), b"").map_err(|e| failed(format!("cannot mark the guest stopped: {e}")))
    }

    async fn power_on(&self, uuid: &str) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        let launch = self.launch(&dir, uuid)?;
        if self.live_pid(&dir, uuid).is_some() {
            return Ok(());
        }
        self.start(uuid, &dir, &launch).await
    }

    /// Soft and hard reboots differ in how: a soft one resets the running machine (QMP
    /// `system_reset`; nova would press ACPI reboot first, which the busybox test guest
    /// cannot handle), a hard one starts a new qemu process with the same disks, as nova
    /// recreates the domain. A guest that is not running is started either way.
    async fn reboot(&self, uuid: &str, hard: bool) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        let launch = self.launch(&dir, uuid)?;
        if self.live_pid(&dir, uuid).is_some() {
            if !hard {
                return qmp::execute(&dir.join("qmp.sock"), "system_reset")
                    .await
                    .map(|_| ())
                    .map_err(|e| failed(format!("cannot reset the guest: {e}")));
            }
            self.kill(uuid, &dir).await;
        }
        self.start(uuid, &dir, &launch).await
    }

    async fn power_state(&self, uuid: &str) -> PowerState {
        let Ok(dir) = self.dir(uuid) else { return PowerState::NoState };
        if !dir.join("launch.json").is_file() {
            return PowerState::NoState;
        }
        if self.live_pid(&dir, uuid).is_some() {
            return match qmp::status(&dir.join("qmp.sock")).await.as_deref() {
                Ok("paused") | Ok("suspended") => PowerState::Paused,
                Ok("shutdown") => PowerState::Shutdown,
                Ok("guest-panicked") | Ok("internal-error") | Ok("io-error") => PowerState::Crashed,
                // Running, or a monitor busy with another client: the process is there.
                _ => PowerState::Running,
            };
        }
        if dir.join("stopped").exists() || dir.join(suspend::SUSPENDED).exists() {
            return PowerState::Shutdown;
        }
        // Not stopped by us: qemu exited on its own. Killed by a signal (or failed) is a crash;
        // a clean exit is the guest powering itself off. Without a record (qemu started by an
        // earlier novabox process, or not reaped yet) it is simply off.
        let pid = crate::supervise::read_pid_file(&dir.join("qemu.pid")).ok().flatten();
        match self.exits.lock().unwrap_or_else(|e| e.into_inner()).get(uuid) {
            Some((exited, false)) if Some(*exited) == pid => PowerState::Crashed,
            _ => PowerState::Shutdown,
        }
    }

    async fn console_output(&self, uuid: &str) -> Result<String, VirtError> {
        let dir = self.dir(uuid)?;
        if !dir.join("launch.json").is_file() {
            return Err(VirtError::NotFound(uuid.to_string()));
        }
        console::read(&dir)
    }

    async fn attach_volume(&self, uuid: &str, disk: &VolumeDisk) -> Result<(), VirtError> {
        self.attach_volume_to(uuid, disk).await
    }

    async fn pause(&self, uuid: &str) -> Result<(), VirtError> {
        let qmp = self.running_qmp(uuid)?;
        qmp::execute(&qmp, "stop").await.map(|_| ()).map_err(|e| failed(format!("cannot pause the guest: {e}")))
    }

    async fn unpause(&self, uuid: &str) -> Result<(), VirtError> {
        let qmp = self.running_qmp(uuid)?;
        qmp::execute(&qmp, "cont").await.map(|_| ()).map_err(|e| failed(format!("cannot unpause the guest: {e}")))
    }

    async fn suspend(&self, uuid: &str) -> Result<(), VirtError> {
        self.save_state(uuid).await
    }

    async fn resume(&self, uuid: &str) -> Result<(), VirtError> {
        self.restore_state(uuid).await
    }

    async fn trigger_crash_dump(&self, uuid: &str) -> Result<(), VirtError> {
        let qmp = self.running_qmp(uuid)?;
        qmp::execute(&qmp, "inject-nmi").await.map(|_| ()).map_err(|e| failed(format!("cannot inject an NMI: {e}")))
    }

    async fn detach_volume(&self, uuid: &str, volume_id: &str) -> Result<(), VirtError> {
        self.detach_volume_from(uuid, volume_id).await
    }

    async fn rebuild(&self, spec: &GuestSpec, preserve_ephemeral: bool) -> Result<(), VirtError> {
        self.rebuild_guest(spec, preserve_ephemeral).await
    }

    async fn migrate_disk_and_power_off(&self, uuid: &str) -> Result<(), VirtError> {
        self.resize_power_off(uuid).await
    }

    async fn finish_migration(&self, spec: &GuestSpec, power_on: bool) -> Result<(), VirtError> {
        self.finish_resize(spec, power_on).await
    }

    async fn confirm_migration(&self, uuid: &str) -> Result<(), VirtError> {
        self.confirm_resize(uuid).await
    }

    async fn finish_revert_migration(&self, spec: &GuestSpec, power_on: bool) -> Result<(), VirtError> {
        self.revert_resize(spec, power_on).await
    }

    async fn snapshot(&self, uuid: &str, image_id: &str) -> Result<super::Snapshot, VirtError> {
        self.snapshot_disk(uuid, image_id).await
    }

    async fn discard_snapshot_files(&self, uuid: &str) -> Result<(), VirtError> {
        self.remove_snapshot_files(uuid)
    }

    async fn ssh_forward(&self, uuid: &str) -> Option<String> {
        ssh_port(&self.instances, uuid).map(|port| format!("{SSH_FORWARD_ADDR}:{port}"))
    }

    async fn guests(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.instances) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|name| uuid::Uuid::parse_str(name).is_ok())
            .filter(|name| self.instances.join(name).join("launch.json").is_file())
            .collect()
    }

    async fn manage_image_cache(&self) {
        let (instances, max_age) = (self.instances.clone(), self.image_cache_max_age);
        let pass =
            tokio::task::spawn_blocking(move || imagecache::cleanup(&instances, max_age, crate::clock::system_now()));
        match pass.await {
            Ok(Ok(report)) => tracing::debug!(
                removed = report.removed.len(),
                in_use = report.in_use,
                kept = report.kept,
                "image cache checked"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot check the image cache"),
            Err(e) => tracing::warn!(error = %e, "the image cache check failed"),
        }
    }

    async fn shutdown_all(&self, timeout: Duration) -> Result<super::ShutdownReport, VirtError> {
        self.shutdown_guests(timeout).await
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn unavailable_names_the_package() {
        let e = QemuUnavailable::Missing { program: QEMU_IMG, package: "qemu-utils" };
        assert!(e.to_string().ends_with("sudo apt-get install qemu-utils"));
    }
}
