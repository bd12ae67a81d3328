//! The fake driver: guests are entries in memory, optionally slow to start. It lets CI and
//! benchmarks exercise the whole control plane without a hypervisor.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{GuestSpec, HostResources, VirtDriver, VirtError, VolumeDisk};
use crate::compute::states::PowerState;

struct FakeGuest {
    power_state: PowerState,
    console: String,
    volumes: Vec<String>,
    /// NMIs received (`trigger_crash_dump`).
    nmis: u32,
    /// (memory_mb, vcpus, root_gb) of the machine, as a resize changes them.
    size: (i64, i64, i64),
    /// The size before a resize, until it is confirmed or reverted.
    kept: Option<(i64, i64, i64)>,
    /// The boot image's file and disk format: a snapshot of a fake guest is its image's bytes.
    image: Option<(String, String)>,
}

pub struct FakeDriver {
    guests: Mutex<HashMap<String, FakeGuest>>,
    delay: Duration,
    resources: HostResources,
}

impl FakeDriver {
    pub fn new(delay: Duration, vcpus: i64, memory_mb: i64, local_gb: i64) -> FakeDriver {
        FakeDriver {
            guests: Mutex::new(HashMap::new()),
            delay,
            resources: HostResources {
                hypervisor_type: "fake".into(),
                hypervisor_version: 1000,
                accel: "none".into(),
                vcpus,
                memory_mb,
                local_gb,
            },
        }
    }

    fn with_guest<T>(&self, uuid: &str, f: impl FnOnce(&mut FakeGuest) -> T) -> Result<T, VirtError> {
        let mut guests = self.guests.lock().unwrap_or_else(|e| e.into_inner());
        guests.get_mut(uuid).map(f).ok_or_else(|| VirtError::NotFound(uuid.to_string()))
    }
}

#[async_trait::async_trait]
impl VirtDriver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn host_resources(&self) -> HostResources {
        self.resources.clone()
    }

    async fn spawn(&self, spec: &GuestSpec) -> Result<(), VirtError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let console = format!(
            "fake console of {} ({})\nhostname: {}\naddresses: {}\n",
            spec.name,
            spec.uuid,
            spec.hostname,
            spec.network_info.iter().flat_map(|v| v.ips.iter().cloned()).collect::<Vec<_>>().join(" ")
        );
        let volumes = spec.volumes.iter().map(|v| v.volume_id.clone()).collect();
        let guest = FakeGuest {
            power_state: PowerState::Running,
            console,
            volumes,
            nmis: 0,
            size: (spec.memory_mb, spec.vcpus, spec.root_gb),
            kept: None,
            image: image_of(spec),
        };
        self.guests.lock().unwrap_or_else(|e| e.into_inner()).insert(spec.uuid.clone(), guest);
        Ok(())
    }

    async fn rebuild(&self, spec: &GuestSpec, preserve_ephemeral: bool) -> Result<(), VirtError> {
        // A rebuild boots again: as slow as a first boot.
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let image = spec.image.as_ref().map(|i| i.id.clone()).unwrap_or_default();
        if self.with_guest(&spec.uuid, |_| ()).is_err() {
            // Gone (a server in ERROR after a restart): a rebuild makes it anew, as nova's.
            return self.spawn(spec).await;
        }
        self.with_guest(&spec.uuid, |g| {
            g.power_state = PowerState::Running;
            g.image = image_of(spec);
            let ephemeral = if preserve_ephemeral { "kept" } else { "new" };
            g.console.push_str(&format!(
                "rebuilt from image {image} (ephemeral disk {ephemeral})\nfake console of {} ({})\nhostname: {}\n",
                spec.name, spec.uuid, spec.hostname
            ));
        })
    }

    async fn migrate_disk_and_power_off(&self, uuid: &str) -> Result<(), VirtError> {
        self.with_guest(uuid, |g| {
            g.kept.get_or_insert(g.size);
            g.power_state = PowerState::Shutdown;
            g.console.push_str("powered off for a resize\n");
        })
    }

    async fn finish_migration(&self, spec: &GuestSpec, power_on: bool) -> Result<(), VirtError> {
        self.with_guest(&spec.uuid, |g| {
            let kept = g
                .kept
                .ok_or_else(|| VirtError::Failed(format!("guest {} was not prepared for a resize", spec.uuid)))?;
            if spec.root_gb < kept.2 {
                return Err(VirtError::Failed("Unable to resize disk down.".into()));
            }
            g.size = (spec.memory_mb, spec.vcpus, spec.root_gb);
            g.console.push_str(&size_line(g.size));
            if power_on {
                g.power_state = PowerState::Running;
            }
            Ok(())
        })?
    }

    async fn confirm_migration(&self, uuid: &str) -> Result<(), VirtError> {
        self.with_guest(uuid, |g| g.kept = None)
    }

    async fn finish_revert_migration(&self, spec: &GuestSpec, power_on: bool) -> Result<(), VirtError> {
        self.with_guest(&spec.uuid, |g| {
            if let Some(kept) = g.kept.take() {
                g.size = kept;
            }
            g.console.push_str(&format!("resize reverted\n{}", size_line(g.size)));
            g.power_state = if power_on { PowerState::Running } else { PowerState::Shutdown };
        })
    }

    /// The fake's disk is its boot image: the snapshot is a copy of that file.
    async fn snapshot(&self, uuid: &str, image_id: &str) -> Result<super::Snapshot, VirtError> {
        let image = self.with_guest(uuid, |g| g.image.clone())?;
        let (source, disk_format) =
            image.ok_or_else(|| VirtError::Failed(format!("guest {uuid} has no image file to snapshot")))?;
        if uuid::Uuid::parse_str(image_id).is_err() {
            return Err(VirtError::Failed(format!("image id {image_id:?} is not a uuid")));
        }
        let file = std::env::temp_dir().join(format!("novabox-fake-snapshot-{image_id}"));
        std::fs::copy(&source, &file).map_err(|e| VirtError::Failed(format!("cannot copy {source}: {e}")))?;
        Ok(super::Snapshot { file, disk_format })
    }

    async fn destroy(&self, uuid: &str) -> Result<(), VirtError> {
        self.guests.lock().unwrap_or_else(|e| e.into_inner()).remove(uuid);
        Ok(())
    }

    async fn power_off(&self, uuid: &str) -> Result<(), VirtError> {
        self.with_guest(uuid, |g| {
            g.power_state = PowerState::Shutdown;
            g.console.push_str("reboot: Power down\n");
        })
    }

    async fn power_on(&self, uuid: &str) -> Result<(), VirtError> {
        self.with_guest(uuid, |g| {
            g.power_state = PowerState::Running;
            g.console.push_str("booting again\n");
        })
    }

    async fn reboot(&self, uuid: &str, hard: bool) -> Result<(), VirtError> {
        self.with_guest(uuid, |g| {
            g.power_state = PowerState::Running;
            g.console.push_str(if hard { "hard reset\n" } else { "reboot: Restarting system\n" });
        })
    }

    async fn pause(&self, uuid: &str) -> Result<(), VirtError> {
        self.change_power(uuid, PowerState::Running, PowerState::Paused, "paused\n")
    }

    async fn unpause(&self, uuid: &str) -> Result<(), VirtError> {
        self.change_power(uuid, PowerState::Paused, PowerState::Running, "unpaused\n")
    }

    /// The fake's saved state is its entry: it stays, off, until resumed.
    async fn suspend(&self, uuid: &str) -> Result<(), VirtError> {
        self.change_power(uuid, PowerState::Running, PowerState::Shutdown, "memory saved, suspended\n")
    }

    async fn resume(&self, uuid: &str) -> Result<(), VirtError> {
        self.change_power(uuid, PowerState::Shutdown, PowerState::Running, "memory restored, resumed\n")
    }

    async fn trigger_crash_dump(&self, uuid: &str) -> Result<(), VirtError> {
        self.with_guest(uuid, |g| {
            if g.power_state == PowerState::Running || g.power_state == PowerState::Paused {
                g.nmis += 1;
                g.console.push_str("NMI received\n");
                Ok(())
            } else {
                Err(VirtError::Failed(format!("guest {uuid} is not running")))
            }
        })?
    }

    async fn power_state(&self, uuid: &str) -> PowerState {
        self.with_guest(uuid, |g| g.power_state).unwrap_or(PowerState::NoState)
    }

    async fn console_output(&self, uuid: &str) -> Result<String, VirtError> {
        self.with_guest(uuid, |g| g.console.clone())
    }

    async fn guests(&self) -> Vec<String> {
        self.guests.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    async fn attach_volume(&self, uuid: &str, disk: &VolumeDisk) -> Result<(), VirtError> {
        self.with_guest(uuid, |g| {
            if !g.volumes.contains(&disk.volume_id) {
                g.volumes.push(disk.volume_id.clone());
                g.console.push_str(&format!("volume {} attached\n", disk.volume_id));
            }
        })
    }

    async fn detach_volume(&self, uuid: &str, volume_id: &str) -> Result<(), VirtError> {
        self.with_guest(uuid, |g| {
            if let Some(at) = g.volumes.iter().position(|v| v == volume_id) {
                g.volumes.remove(at);
                g.console.push_str(&format!("volume {volume_id} detached\n"));
            }
        })
    }
}

/// The image file and format a fake guest "boots".
fn image_of(spec: &GuestSpec) -> Option<(String, String)> {
    let image = spec.image.as_ref()?;
    Some((image.file.clone()?, image.disk_format.clone().unwrap_or_else(|| "raw".into())))
}

/// What a fake guest's console says of its machine at boot, as the test image's
/// `novabox-guest: memory` line does.
fn size_line((memory_mb, vcpus, root_gb): (i64, i64, i64)) -> String {
    format!("booted with {memory_mb} MB, {vcpus} vCPUs, a {root_gb} GiB root disk\n")
}

impl FakeDriver {
    /// The guest's (memory_mb, vcpus, root_gb), for tests.
    pub fn size(&self, uuid: &str) -> Option<(i64, i64, i64)> {
        self.with_guest(uuid, |g| g.size).ok()
    }

    /// Moves the guest from power state `from` to `to`, as a hypervisor refuses a pause of a
    /// guest that is not running.
    fn change_power(&self, uuid: &str, from: PowerState, to: PowerState, line: &str) -> Result<(), VirtError> {
        self.with_guest(uuid, |g| {
            if g.power_state != from {
                return Err(VirtError::Failed(format!("guest {uuid} is {:?}, not {from:?}", g.power_state)));
            }
            g.power_state = to;
            g.console.push_str(line);
            Ok(())
        })?
    }

    /// The NMIs a guest received, for tests.
    pub fn nmis(&self, uuid: &str) -> u32 {
        self.with_guest(uuid, |g| g.nmis).unwrap_or(0)
    }

    /// The volumes a guest has, for tests.
    pub fn volumes(&self, uuid: &str) -> Vec<String> {
        self.with_guest(uuid, |g| g.volumes.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lifecycle() {
        let d = FakeDriver::new(Duration::ZERO, 2, 2048, 10);
        let spec = GuestSpec::for_test("u1", "vm");
        d.spawn(&spec).await.unwrap();
        assert_eq!(d.power_state("u1").await, PowerState::Running);
        d.power_off("u1").await.unwrap();
        assert_eq!(d.power_state("u1").await, PowerState::Shutdown);
        d.power_on("u1").await.unwrap();
        assert!(d.console_output("u1").await.unwrap().contains("hostname: vm"));
        let disk = VolumeDisk { volume_id: "v1".into(), path: "/nowhere".into(), boot: false };
        d.attach_volume("u1", &disk).await.unwrap();
        d.attach_volume("u1", &disk).await.unwrap();
        assert_eq!(d.volumes("u1"), vec!["v1".to_string()]);
        d.detach_volume("u1", "v1").await.unwrap();
        assert!(d.volumes("u1").is_empty());
        assert!(d.attach_volume("nobody", &disk).await.is_err());
        d.pause("u1").await.unwrap();
        assert_eq!(d.power_state("u1").await, PowerState::Paused);
        assert!(d.pause("u1").await.is_err(), "a paused guest cannot be paused again");
        d.trigger_crash_dump("u1").await.unwrap();
        assert_eq!(d.nmis("u1"), 1);
        d.unpause("u1").await.unwrap();
        d.suspend("u1").await.unwrap();
        assert_eq!(d.power_state("u1").await, PowerState::Shutdown);
        assert!(d.trigger_crash_dump("u1").await.is_err(), "no NMI reaches a saved guest");
        assert!(d.unpause("u1").await.is_err());
        d.resume("u1").await.unwrap();
        assert_eq!(d.power_state("u1").await, PowerState::Running);
        // Issue 16: a resize keeps the old size until confirmed or reverted.
        let mut bigger = spec.clone();
        (bigger.memory_mb, bigger.root_gb) = (128, 2);
        assert!(d.finish_migration(&bigger, true).await.is_err(), "not prepared");
        d.migrate_disk_and_power_off("u1").await.unwrap();
        assert_eq!(d.power_state("u1").await, PowerState::Shutdown);
        d.finish_migration(&bigger, true).await.unwrap();
        assert_eq!(d.size("u1"), Some((128, 1, 2)));
        d.finish_revert_migration(&spec, true).await.unwrap();
        assert_eq!((d.size("u1"), d.power_state("u1").await), (Some((64, 1, 1)), PowerState::Running));
        d.migrate_disk_and_power_off("u1").await.unwrap();
        let mut smaller = spec.clone();
        smaller.root_gb = 0;
        assert!(d.finish_migration(&smaller, true).await.unwrap_err().to_string().contains("resize disk down"));
        d.finish_migration(&bigger, false).await.unwrap();
        d.confirm_migration("u1").await.unwrap();
        assert_eq!(d.size("u1"), Some((128, 1, 2)));
        d.rebuild(&spec, true).await.unwrap();
        assert!(d.console_output("u1").await.unwrap().contains("ephemeral disk kept"));
        assert!(d.snapshot("u1", "6f0b1f43-5a4f-4f5e-9c1b-1f2e3d4c5b6a").await.is_err(), "no image file");
        d.destroy("u1").await.unwrap();
        d.destroy("u1").await.unwrap();
        assert_eq!(d.power_state("u1").await, PowerState::NoState);
        assert!(matches!(d.power_off("u1").await, Err(VirtError::NotFound(_))));
    }
}
