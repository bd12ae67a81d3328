//! Virt drivers: what the compute manager asks of a hypervisor. `fake` keeps guests in
//! memory (CI, benchmarks); real drivers run qemu, directly (`qemu`) or through libvirt
//! (`libvirt`, behind the cargo feature of that name).

use serde::{Deserialize, Serialize};

pub mod configdrive;
pub mod disks;
pub mod fake;
pub mod guestfiles;
pub mod imagecache;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod qemu;
mod qmp;

#[derive(Debug, thiserror::Error)]
pub enum VirtError {
    #[error("guest {0} does not exist on this host")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

/// Everything a driver needs to create a guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestSpec {
    pub uuid: String,
    pub name: String,
    pub hostname: String,
    pub project_id: String,
    pub memory_mb: i64,
    pub vcpus: i64,
    pub root_gb: i64,
    pub ephemeral_gb: i64,
    pub swap_mb: i64,
    /// The boot image, when booting from one.
    pub image: Option<ImageMeta>,
    /// Base64 as the API received it.
    pub user_data: Option<String>,
    pub key_name: Option<String>,
    pub key_data: Option<String>,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub config_drive: bool,
    pub availability_zone: Option<String>,
    pub network_info: Vec<Vif>,
    /// Attached volumes; the one with `boot` is the root disk (boot from volume).
    #[serde(default)]
    pub volumes: Vec<VolumeDisk>,
}

/// A volume as a driver plugs it in: a qcow2 file on this host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeDisk {
    pub volume_id: String,
    /// Absolute path of the volume's qcow2 file.
    pub path: String,
    /// The guest boots from it (nova's boot_index 0).
    #[serde(default)]
    pub boot: bool,
}

/// What a driver needs of an image: where its bytes are on this host and how to read them.
/// Kernel and ramdisk images (AMI style, `kernel_id`/`ramdisk_id`) come resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageMeta {
    pub id: String,
    pub name: Option<String>,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub size: Option<i64>,
    /// Absolute path of the image file in the home's image store.
    pub file: Option<String>,
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
    pub kernel: Option<Box<ImageMeta>>,
    pub ramdisk: Option<Box<ImageMeta>>,
}

/// One network interface of a guest: the network module's model, named here too because
/// every driver takes it.
pub use crate::network::vif::Vif;

/// The host's capacity as a driver sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostResources {
    pub hypervisor_type: String,
    pub hypervisor_version: i64,
    pub accel: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub local_gb: i64,
}

#[async_trait::async_trait]
pub trait VirtDriver: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn host_resources(&self) -> HostResources;
    /// Creates and starts the guest; returns when it is running.
    async fn spawn(&self, spec: &GuestSpec) -> Result<(), VirtError>;
    /// Stops and removes the guest and everything the driver made for it. Idempotent.
    async fn destroy(&self, uuid: &str) -> Result<(), VirtError>;
    async fn power_off(&self, uuid: &str) -> Result<(), VirtError>;
    async fn power_on(&self, uuid: &str) -> Result<(), VirtError>;
    async fn reboot(&self, uuid: &str, hard: bool) -> Result<(), VirtError>;
    /// Nova's power state of the guest (`db::instances::power`), NOSTATE when unknown.
    async fn power_state(&self, uuid: &str) -> crate::compute::states::PowerState;
    async fn console_output(&self, uuid: &str) -> Result<String, VirtError>;
    /// The uuids of the guests the driver knows.
    async fn guests(&self) -> Vec<String>;
    /// User networking: the host `addr:port` forwarded to the guest's port 22, if any.
    async fn ssh_forward(&self, _uuid: &str) -> Option<String> {
        None
    }
    /// Plugs a volume into the guest (hotplug when it runs) and keeps it across restarts.
    async fn attach_volume(&self, uuid: &str, disk: &VolumeDisk) -> Result<(), VirtError> {
        let _ = (uuid, disk);
        Err(VirtError::Failed(format!("the {} driver cannot attach volumes", self.name())))
    }
    /// Unplugs a volume; the guest no longer has it, now or after a restart. Idempotent.
    async fn detach_volume(&self, uuid: &str, volume_id: &str) -> Result<(), VirtError> {
        let _ = (uuid, volume_id);
        Err(VirtError::Failed(format!("the {} driver cannot detach volumes", self.name())))
    }
    // Issue 16: the state actions. A driver that cannot do one says so, and the manager
    // records that as the action's fault.
    /// Freezes the guest's vCPUs; its memory and devices stay (nova's `pause`).
    async fn pause(&self, uuid: &str) -> Result<(), VirtError> {
        let _ = uuid;
        Err(VirtError::Failed(format!("the {} driver cannot pause guests", self.name())))
    }
    async fn unpause(&self, uuid: &str) -> Result<(), VirtError> {
        let _ = uuid;
        Err(VirtError::Failed(format!("the {} driver cannot unpause guests", self.name())))
    }
    /// Saves the guest's memory and device state to disk and stops its process (nova's
    /// `suspend`: libvirt's managed save).
    async fn suspend(&self, uuid: &str) -> Result<(), VirtError> {
        let _ = uuid;
        Err(VirtError::Failed(format!("the {} driver cannot suspend guests", self.name())))
    }
    /// Restores a suspended guest from its saved state: it runs on where it stopped.
    async fn resume(&self, uuid: &str) -> Result<(), VirtError> {
        let _ = uuid;
        Err(VirtError::Failed(format!("the {} driver cannot resume guests", self.name())))
    }
    /// Sends the guest a non-maskable interrupt (a kernel configured for it dumps and panics).
    async fn trigger_crash_dump(&self, uuid: &str) -> Result<(), VirtError> {
        let _ = uuid;
        Err(VirtError::Failed(format!("the {} driver cannot inject an NMI", self.name())))
    }
    // Issue 16: rebuild, resize and snapshot. A driver that cannot do one says so, and the
    // manager records that as the action's fault.
    /// Stops the guest, replaces its root disk with a fresh one from `spec.image` and boots it
    /// again with `spec` (ports and volumes as they are; the config drive written anew).
    /// `preserve_ephemeral` keeps the ephemeral disk's contents.
    async fn rebuild(&self, spec: &GuestSpec, preserve_ephemeral: bool) -> Result<(), VirtError> {
        let _ = (spec, preserve_ephemeral);
        Err(VirtError::Failed(format!("the {} driver cannot rebuild guests", self.name())))
    }
    /// The first half of a resize (nova's `migrate_disk_and_power_off`): the guest stops and
    /// its disks and machine are kept aside for a revert.
    async fn migrate_disk_and_power_off(&self, uuid: &str) -> Result<(), VirtError> {
        let _ = uuid;
        Err(VirtError::Failed(format!("the {} driver cannot resize guests", self.name())))
    }
    /// The second half (nova's `finish_migration`): the root disk grown to `spec.root_gb`, and
    /// `spec`'s vCPUs and RAM from this boot on; started when `power_on`.
    async fn finish_migration(&self, spec: &GuestSpec, power_on: bool) -> Result<(), VirtError> {
        let _ = (spec, power_on);
        Err(VirtError::Failed(format!("the {} driver cannot resize guests", self.name())))
    }
    /// Drops what `migrate_disk_and_power_off` kept aside. Idempotent.
    async fn confirm_migration(&self, uuid: &str) -> Result<(), VirtError> {
        let _ = uuid;
        Err(VirtError::Failed(format!("the {} driver cannot resize guests", self.name())))
    }
    /// Back to the disks and machine kept aside (`spec` has the old flavor); started when
    /// `power_on`.
    async fn finish_revert_migration(&self, spec: &GuestSpec, power_on: bool) -> Result<(), VirtError> {
        let _ = (spec, power_on);
        Err(VirtError::Failed(format!("the {} driver cannot resize guests", self.name())))
    }
    /// Copies the guest's root disk, at one consistent point, to a file of its own for the
    /// image service; the caller removes the file once it is stored.
    async fn snapshot(&self, uuid: &str, image_id: &str) -> Result<Snapshot, VirtError> {
        let _ = (uuid, image_id);
        Err(VirtError::Failed(format!("the {} driver cannot snapshot guests", self.name())))
    }
    /// Removes snapshot copies a restart left (the upload they waited for died with it).
    async fn discard_snapshot_files(&self, uuid: &str) -> Result<(), VirtError> {
        let _ = uuid;
        Ok(())
    }
    /// Periodic housekeeping of cached images (nova's image cache manager). Drivers without
    /// an image cache have nothing to do.
    async fn manage_image_cache(&self) {}
    /// Stops every running guest because this compute service is going down (`novabox down`,
    /// Ctrl-C): the ACPI power button for all of them at once, up to `timeout`, then hard.
    /// Unlike `power_off` nothing marks them stopped, so the service's next start runs them
    /// again (nova's behaviour across a host reboot). Drivers whose guests end with the
    /// process (fake) have nothing to do.
    async fn shutdown_all(&self, _timeout: std::time::Duration) -> Result<ShutdownReport, VirtError> {
        Ok(ShutdownReport::default())
    }
}

/// A snapshot's data: a file on this host and its disk format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub file: std::path::PathBuf,
    pub disk_format: String,
}

/// How `shutdown_all` went: which guests shut down on the power button, which were stopped hard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    pub clean: Vec<String>,
    pub hard: Vec<String>,
}

/// What this host has: cores from the scheduler's view of the OS, memory from /proc/meminfo,
/// disk from the state directory's filesystem.
pub fn probe_host(state_dir: &std::path::Path) -> (i64, i64, i64) {
    let vcpus = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<i64>().ok()))
        })
        .map(|kb| kb / 1024)
        .unwrap_or(1024);
    let local_gb = disk_gb(state_dir).unwrap_or(10);
    (vcpus, memory_mb, local_gb)
}

fn disk_gb(path: &std::path::Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_blocks as i64).saturating_mul(st.f_frsize as i64) / (1 << 30))
}

impl GuestSpec {
    /// A minimal spec for driver tests.
    pub fn for_test(uuid: &str, name: &str) -> GuestSpec {
        GuestSpec {
            uuid: uuid.into(),
            name: name.into(),
            hostname: name.into(),
            project_id: "p".into(),
            memory_mb: 64,
            vcpus: 1,
            root_gb: 1,
            ephemeral_gb: 0,
            swap_mb: 0,
            image: None,
            user_data: None,
            key_name: None,
            key_data: None,
            metadata: Default::default(),
            config_drive: false,
            availability_zone: None,
            network_info: vec![],
            volumes: vec![],
        }
    }
}
