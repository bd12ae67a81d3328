//! Volumes: the qcow2 file as a `-blockdev` node with a virtio-blk device, both named after
//! the volume, hot-plugged through QMP while the guest runs and kept in `launch.json` so that
//! every later start of the guest has them (see `cmdline::volume_args`).

use std::path::Path;
use std::time::{Duration, Instant};

use super::super::guestfiles::{path_str, volume_serial as serial};
use super::super::{qmp, VirtError, VolumeDisk};
use super::cmdline::{volume_file, volume_names};
use super::{failed, QemuDriver};

/// How long a guest gets to let go of a volume after `device_del` (the guest's ACPI hotplug
/// handler ejects it; a TCG guest can be slow) before novabox gives up on the detach.
const DETACH_TIMEOUT: Duration = Duration::from_secs(20);

impl QemuDriver {
    pub(super) async fn attach_volume_to(&self, uuid: &str, disk: &VolumeDisk) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        let mut launch = self.launch(&dir, uuid)?;
        if launch.volumes.iter().any(|v| v.volume_id == disk.volume_id) {
            return Ok(());
        }
        let file = volume_file(disk)?;
        let (node, device) = volume_names(&disk.volume_id)?;
        if self.live_pid(&dir, uuid).is_some() {
            let qmp = dir.join("qmp.sock");
            let filename = path_str(&file)?;
            let node_args = serde_json::json!({
                "driver": "qcow2", "node-name": node, "file": {"driver": "file", "filename": filename},
            });
            // A crash between the hot-plug and saving launch.json leaves the guest with the
            // disk and the file without it: the retry finds the node and device there already.
            match qmp::execute_with(&qmp, "blockdev-add", node_args).await {
                Ok(_) => {}
                Err(e) if duplicate(&e) => tracing::info!(instance = %uuid, node, "volume node already open"),
                Err(e) => return Err(failed(format!("cannot open volume {}: {e}", disk.volume_id))),
            }
            let dev_args = serde_json::json!({
                "driver": "virtio-blk-pci", "drive": node, "id": device, "serial": serial(&disk.volume_id),
            });
            match qmp::execute_with(&qmp, "device_add", dev_args).await {
                Ok(_) => {}
                Err(e) if duplicate(&e) => tracing::info!(instance = %uuid, device, "volume already plugged in"),
                Err(e) => {
                    let _ = qmp::execute_with(&qmp, "blockdev-del", serde_json::json!({"node-name": node})).await;
                    return Err(failed(format!("cannot plug volume {} into the guest: {e}", disk.volume_id)));
                }
            }
        }
        launch.volumes.push(disk.clone());
        self.save_launch(&dir, &launch)
    }

    pub(super) async fn detach_volume_from(&self, uuid: &str, volume_id: &str) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        let mut launch = self.launch(&dir, uuid)?;
        if !launch.volumes.iter().any(|v| v.volume_id == volume_id) {
            return Ok(());
        }
        let (node, device) = volume_names(volume_id)?;
        if self.live_pid(&dir, uuid).is_some() {
            let qmp = dir.join("qmp.sock");
            let args = serde_json::json!({"id": device});
            match qmp::execute_and_wait_device_event(
                &qmp,
                "device_del",
                args,
                "DEVICE_DELETED",
                &device,
                DETACH_TIMEOUT,
            )
            .await
            {
                Ok(true) => {}
                Ok(false) => tracing::warn!(instance = %uuid, volume = %volume_id, "no DEVICE_DELETED in time"),
                // Not there any more (a detach that timed out before finished since).
                Err(qmp::QmpError::Command(m)) if m.contains("not found") => {}
                // An unplug asked for before a restart is still going on in the guest.
                Err(qmp::QmpError::Command(m)) if m.contains("in the process of unplug") => {
                    if !wait_device_gone(&qmp, &device, DETACH_TIMEOUT).await {
                        tracing::warn!(instance = %uuid, volume = %volume_id, "earlier unplug not done in time");
                    }
                }
                Err(e) => return Err(failed(format!("cannot unplug volume {volume_id}: {e}"))),
            }
            // Refused while the guest still holds the device: the detach failed, say so.
            if let Err(e) = qmp::execute_with(&qmp, "blockdev-del", serde_json::json!({"node-name": node})).await {
                let gone = matches!(&e, qmp::QmpError::Command(m) if m.contains("not found"));
                if !gone {
                    return Err(failed(format!(
                        "the guest did not release volume {volume_id} within {}s ({e}); try again",
                        DETACH_TIMEOUT.as_secs()
                    )));
                }
            }
        }
        launch.volumes.retain(|v| v.volume_id != volume_id);
        self.save_launch(&dir, &launch)
    }
}

/// Polls until the guest has let `device` go (an unplug asked for earlier); false on timeout
/// or when QMP cannot tell.
async fn wait_device_gone(qmp: &Path, device: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let Ok(list) = qmp::execute_with(qmp, "qom-list", serde_json::json!({"path": "/machine/peripheral"})).await
        else {
            return false;
        };
        if !list.as_array().is_some_and(|props| props.iter().any(|p| p["name"] == device)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// QEMU refusing a node or device id that is in use ("Duplicate nodes with node-name=...",
/// "Duplicate device ID ..."): the volume is plugged in already.
fn duplicate(e: &qmp::QmpError) -> bool {
    matches!(e, qmp::QmpError::Command(m) if m.starts_with("Duplicate"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_or_device_in_use_means_plugged_already() {
        assert!(duplicate(&qmp::QmpError::Command("Duplicate nodes with node-name='n0123'".into())));
        assert!(duplicate(&qmp::QmpError::Command("Duplicate device ID 'v0123' for virtio-blk-pci".into())));
        assert!(!duplicate(&qmp::QmpError::Command("Could not open '/x': No such file".into())));
        assert!(!duplicate(&qmp::QmpError::Closed));
    }
}
