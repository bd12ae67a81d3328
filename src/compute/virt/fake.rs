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
        self.guests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.uuid.clone(), FakeGuest { power_state: PowerState::Running, console, volumes, nmis: 0 });
        Ok(())
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

impl FakeDriver {
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
        d.destroy("u1").await.unwrap();
        d.destroy("u1").await.unwrap();
        assert_eq!(d.power_state("u1").await, PowerState::NoState);
        assert!(matches!(d.power_off("u1").await, Err(VirtError::NotFound(_))));
    }
}
