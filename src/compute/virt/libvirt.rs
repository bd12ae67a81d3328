//! The libvirt driver (cargo feature `libvirt`): one persistent libvirt domain per guest,
//! named `novabox-<uuid>`, on the connection `[compute] libvirt_uri` (default `qemu:///system`).
//!
//! The guest's files are the qemu driver's (`guestfiles`: qcow2 overlay on the cached base
//! image, flavor disks, AMI kernel and ramdisk, config drive tree), in `<home>/instances/<uuid>/`,
//! plus:
//!
//! | file           | what                                                              |
//! |----------------|-------------------------------------------------------------------|
//! | `domain.xml`   | the domain as defined (`templates/libvirt-domain.xml`), so a libvirt that lost it gets it again at power-on |
//! | `libvirt.json` | the domain name and the shutdown timeout; marks a guest of this driver |
//! | `disk.config`  | the config drive as ISO9660 `config-2` (built by `guestfiles`) on an IDE CD-ROM: libvirt cannot label qemu's vvfat disks |
//! | `console.log`  | the serial console (a libvirt `file` chardev, appended across power cycles) |
//!
//! libvirt calls block, so each runs on tokio's blocking pool. Domain type `kvm` when the
//! doctor proved KVM works, `qemu` (TCG) otherwise.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::sys;

use super::disks;
use super::guestfiles::{path_str, read_tail, valid_mac, volume_serial as serial, GuestFiles, Prepared};
use super::{GuestSpec, HostResources, ShutdownReport, VirtDriver, VirtError, VolumeDisk};
use crate::compute::states::PowerState;
use crate::config::Accel;
use crate::hostpkgs;

/// The domain XML, with placeholders (see the file's comment).
const TEMPLATE: &str = include_str!("../../../templates/libvirt-domain.xml");
/// Kept of the console for `console_output` (nova's MAX_CONSOLE_BYTES).
const MAX_CONSOLE_BYTES: u64 = 100 * 1024;
/// Domains of novabox guests are named this and the instance uuid.
const DOMAIN_PREFIX: &str = "novabox-";
pub const DEFAULT_URI: &str = "qemu:///system";
const ISO_TOOL: &str = "genisoimage";

#[derive(Debug, thiserror::Error)]
pub enum LibvirtUnavailable {
    #[error("the libvirt driver needs {program}, which is not installed: sudo apt-get install {package}")]
    Missing { program: &'static str, package: &'static str },
    #[error(
        "cannot connect to libvirt at {uri}: {message}. Start libvirtd (with systemd: sudo systemctl start \
         libvirtd; without: sudo virtlogd --daemon && sudo libvirtd --daemon), or set `[compute] libvirt_uri`"
    )]
    Connect { uri: String, message: String },
}

/// What a guest's `libvirt.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GuestRecord {
    domain: String,
    shutdown_timeout_secs: u64,
}

pub struct LibvirtDriver {
    uri: String,
    /// Shared by all calls (a libvirt connection is thread-safe); replaced when it dies.
    conn: Mutex<Arc<Connect>>,
    instances: PathBuf,
    files: GuestFiles,
    accel: Accel,
    resources: HostResources,
}

fn failed(message: impl Into<String>) -> VirtError {
    VirtError::Failed(message.into())
}

fn lv(what: &str, e: virt::error::Error) -> VirtError {
    failed(format!("libvirt: {what}: {}", e.message()))
}

fn open(uri: &str) -> Result<Connect, LibvirtUnavailable> {
    Connect::open(Some(uri))
        .map_err(|e| LibvirtUnavailable::Connect { uri: uri.to_string(), message: e.message().to_string() })
}

impl LibvirtDriver {
    /// Connects to `uri` and checks the host tools the guests' files need.
    pub fn new(home: &crate::home::Home, accel: Accel, uri: &str) -> Result<LibvirtDriver, LibvirtUnavailable> {
        let qemu_img = hostpkgs::find_program(super::qemu::QEMU_IMG)
            .ok_or(LibvirtUnavailable::Missing { program: super::qemu::QEMU_IMG, package: "qemu-utils" })?;
        // libvirt cannot label qemu's vvfat disks, so the config drive is always ISO9660.
        let iso_tool =
            disks::find_iso_tool().ok_or(LibvirtUnavailable::Missing { program: ISO_TOOL, package: "genisoimage" })?;
        // libvirt prints every error to stderr by default; the driver returns them instead.
        virt::error::clear_error_callback();
        let conn = open(uri)?;
        let accel = if accel == Accel::Kvm { Accel::Kvm } else { Accel::Tcg };
        let (vcpus, memory_mb, local_gb) = super::probe_host(home.root());
        let resources = HostResources {
            hypervisor_type: "QEMU".into(),
            // libvirt encodes versions as qemu's: 7.2.22 is 7002022.
            hypervisor_version: conn.get_hyp_version().map(i64::from).unwrap_or(0),
            accel: if accel == Accel::Kvm { "kvm" } else { "tcg" }.into(),
            vcpus,
            memory_mb,
            local_gb,
        };
        let instances = home.instances_dir();
        let mut files = GuestFiles::new(qemu_img, &instances);
        files.set_iso_tool(Some(iso_tool));
        Ok(LibvirtDriver { uri: uri.to_string(), conn: Mutex::new(Arc::new(conn)), files, instances, accel, resources })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The live connection, reconnecting when libvirtd restarted since the last call.
    fn connection(&self) -> Result<Arc<Connect>, VirtError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if conn.is_alive().unwrap_or(false) {
            return Ok(conn.clone());
        }
        tracing::warn!(uri = %self.uri, "the libvirt connection is gone; reconnecting");
        *conn = Arc::new(open(&self.uri).map_err(|e| failed(e.to_string()))?);
        Ok(conn.clone())
    }

    /// Runs a blocking libvirt call on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connect) -> Result<T, VirtError> + Send + 'static,
    ) -> Result<T, VirtError> {
        let conn = self.connection()?;
        tokio::task::spawn_blocking(move || f(&conn)).await.map_err(|e| failed(format!("libvirt call failed: {e}")))?
    }

    fn dir(&self, uuid: &str) -> Result<PathBuf, VirtError> {
        // The uuid becomes a directory name: only a real uuid can never escape `instances/`.
        if uuid::Uuid::parse_str(uuid).is_err() {
            return Err(VirtError::NotFound(uuid.to_string()));
        }
        Ok(self.instances.join(uuid))
    }

    fn record(&self, dir: &Path, uuid: &str) -> Result<GuestRecord, VirtError> {
        let file = dir.join("libvirt.json");
        let text = match std::fs::read(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(VirtError::NotFound(uuid.to_string())),
            Err(e) => return Err(failed(format!("cannot read {}: {e}", file.display()))),
        };
        serde_json::from_slice(&text).map_err(|e| failed(format!("{} is damaged: {e}", file.display())))
    }

    /// The domain XML of a prepared guest.
    fn domain_xml(&self, spec: &GuestSpec, dir: &Path, prepared: &Prepared, iso: &Path) -> Result<String, VirtError> {
        let mut kernel = String::new();
        if let Some(k) = &prepared.kernel {
            kernel.push_str(&format!("    <kernel>{}</kernel>\n", escape(path_str(&k.kernel)?)));
            if let Some(r) = &k.ramdisk {
                kernel.push_str(&format!("    <initrd>{}</initrd>\n", escape(path_str(r)?)));
            }
            kernel.push_str(&format!("    <cmdline>{}</cmdline>\n", escape(&k.cmdline)));
        }
        let mut disks = String::new();
        for (i, d) in prepared.disks.iter().enumerate() {
            let dev = disk_name(i).ok_or_else(|| failed("a guest has at most 26 disks"))?;
            disks.push_str(&format!(
                "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      \
                 <source file='{}'/>\n      <target dev='{dev}' bus='virtio'/>\n    </disk>\n",
                escape(path_str(d)?)
            ));
        }
        for (n, v) in spec.volumes.iter().filter(|v| !v.boot).enumerate() {
            let dev = disk_name(prepared.disks.len() + n).ok_or_else(|| failed("a guest has at most 26 disks"))?;
            disks.push_str(&volume_xml(v, &dev)?);
        }
        disks.push_str(&format!(
            "    <disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      \
             <source file='{}'/>\n      <target dev='hdc' bus='ide'/>\n      <readonly/>\n    </disk>\n",
            escape(path_str(iso)?)
        ));
        // As the qemu driver: the tap compute plugged into the bridge (bridge mode; libvirt
        // must not manage it, novabox does), else QEMU user networking.
        let mut interfaces = String::new();
        for vif in &spec.network_info {
            let mac = valid_mac(&vif.mac)
                .ok_or_else(|| failed(format!("port {} has a bad MAC {:?}", vif.port_id, vif.mac)))?;
            let (kind, target) = match &vif.tap {
                Some(tap) => ("ethernet", format!("      <target dev='{}' managed='no'/>\n", escape(tap))),
                None => ("user", String::new()),
            };
            interfaces.push_str(&format!(
                "    <interface type='{kind}'>\n      <mac address='{mac}'/>\n{target}      <model type='virtio'/>\n    \
                 </interface>\n"
            ));
        }
        let cpu = if self.accel == Accel::Kvm { "  <cpu mode='host-passthrough'/>\n" } else { "" };
        // A privileged libvirtd runs qemu as its own user (libvirt-qemu), which cannot enter a
        // novabox home that is private to its owner: run it as the owner of the instance dir,
        // and leave the files' ownership alone.
        let seclabel = if self.uri.ends_with("/system") {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(dir).map_err(|e| failed(format!("cannot stat {}: {e}", dir.display())))?;
            format!(
                "  <seclabel type='static' model='dac' relabel='no'>\n    <label>+{}:+{}</label>\n  </seclabel>\n",
                meta.uid(),
                meta.gid()
            )
        } else {
            String::new()
        };
        let domain_type = if self.accel == Accel::Kvm { "kvm" } else { "qemu" };
        render(
            TEMPLATE,
            &[
                ("domain_type", Value::Text(domain_type.into())),
                ("name", Value::Text(domain_name(&spec.uuid))),
                ("uuid", Value::Text(spec.uuid.clone())),
                ("title", Value::Text(spec.name.clone())),
                ("memory_mb", Value::Text(spec.memory_mb.to_string())),
                ("vcpus", Value::Text(spec.vcpus.to_string())),
                ("kernel", Value::Xml(kernel)),
                ("cpu", Value::Xml(cpu.into())),
                ("disks", Value::Xml(disks)),
                ("interfaces", Value::Xml(interfaces)),
                ("console_log", Value::Text(path_str(&dir.join("console.log"))?.to_string())),
                // Issue 22: the screen, for novabox's noVNC proxy (a unix socket, no TCP port).
                ("vnc_socket", Value::Text(path_str(&dir.join("vnc.sock"))?.to_string())),
                ("seclabel", Value::Xml(seclabel)),
            ],
        )
    }

    async fn spawn_in(&self, spec: &GuestSpec, dir: &Path) -> Result<(), VirtError> {
        let prepared = self.files.prepare(spec, dir).await?;
        let iso = prepared.config_drive_iso.as_deref().ok_or_else(|| {
            failed("the libvirt driver needs an ISO9660 config drive: sudo apt-get install genisoimage")
        })?;
        let xml = self.domain_xml(spec, dir, &prepared, iso)?;
        crate::home::write_atomic(&dir.join("domain.xml"), xml.as_bytes(), 0o600)
            .map_err(|e| failed(format!("cannot write {}: {e}", dir.join("domain.xml").display())))?;
        let record =
            GuestRecord { domain: domain_name(&spec.uuid), shutdown_timeout_secs: prepared.shutdown_timeout_secs };
        let text = serde_json::to_vec_pretty(&record).map_err(|e| failed(e.to_string()))?;
        crate::home::write_atomic(&dir.join("libvirt.json"), &text, 0o600)
            .map_err(|e| failed(format!("cannot write {}: {e}", dir.join("libvirt.json").display())))?;
        let uuid = spec.uuid.clone();
        self.blocking(move |conn| {
            let dom = Domain::define_xml(conn, &xml).map_err(|e| lv("cannot define the domain", e))?;
            dom.create().map_err(|e| lv("cannot start the domain", e))?;
            tracing::info!(instance = %uuid, "libvirt domain started");
            Ok(())
        })
        .await
    }

    /// Stops (destroy) and undefines the guest's domain; true when there was one.
    async fn remove_domain(&self, uuid: &str) -> Result<bool, VirtError> {
        let uuid = uuid.to_string();
        self.blocking(move |conn| {
            let Some(dom) = lookup(conn, &uuid)? else { return Ok(false) };
            if dom.is_active().unwrap_or(false) {
                dom.destroy().map_err(|e| lv("cannot stop the domain", e))?;
            }
            // A suspended guest's managed save goes with it.
            dom.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
                .map_err(|e| lv("cannot undefine the domain", e))?;
            Ok(true)
        })
        .await
    }
}

/// The guest's domain, None when libvirt does not know it.
impl LibvirtDriver {
    /// Runs `f` on the guest's domain, which must be running.
    async fn on_active(
        &self,
        uuid: &str,
        what: &'static str,
        f: impl FnOnce(&Domain) -> Result<(), virt::error::Error> + Send + 'static,
    ) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        self.record(&dir, uuid)?;
        let id = uuid.to_string();
        self.blocking(move |conn| {
            let dom = lookup(conn, &id)?.ok_or_else(|| failed(format!("guest {id} is not running")))?;
            if !dom.is_active().unwrap_or(false) {
                return Err(failed(format!("guest {id} is not running")));
            }
            f(&dom).map_err(|e| lv(&format!("cannot {what} the guest"), e))
        })
        .await
    }
}

impl LibvirtDriver {
    /// Resumes a domain paused for a snapshot.
    async fn on_paused_resume(&self, uuid: &str) -> Result<(), VirtError> {
        let id = uuid.to_string();
        self.blocking(move |conn| {
            let dom = lookup(conn, &id)?.ok_or_else(|| failed(format!("guest {id} is gone")))?;
            dom.resume().map(|_| ()).map_err(|e| lv("cannot resume the guest", e))
        })
        .await
    }
}

fn lookup(conn: &Connect, uuid: &str) -> Result<Option<Domain>, VirtError> {
    match Domain::lookup_by_uuid_string(conn, uuid) {
        Ok(dom) => Ok(Some(dom)),
        Err(e) if e.code() == ErrorNumber::NoDomain => Ok(None),
        Err(e) => Err(lv("cannot look the domain up", e)),
    }
}

/// The guest's domain, defined again from its `domain.xml` when libvirt lost it (another
/// libvirtd, or its state wiped): the files are the guest, libvirt only runs it.
fn lookup_or_define(conn: &Connect, uuid: &str, dir: &Path) -> Result<Domain, VirtError> {
    if let Some(dom) = lookup(conn, uuid)? {
        return Ok(dom);
    }
    let file = dir.join("domain.xml");
    let xml = std::fs::read_to_string(&file).map_err(|e| failed(format!("cannot read {}: {e}", file.display())))?;
    tracing::warn!(instance = %uuid, "libvirt does not know the domain; defining it again from {}", file.display());
    Domain::define_xml(conn, &xml).map_err(|e| lv("cannot define the domain", e))
}

fn wait_inactive(dom: &Domain, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !dom.is_active().unwrap_or(true) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[async_trait::async_trait]
impl VirtDriver for LibvirtDriver {
    fn name(&self) -> &'static str {
        "libvirt"
    }

    fn host_resources(&self) -> HostResources {
        self.resources.clone()
    }

    async fn spawn(&self, spec: &GuestSpec) -> Result<(), VirtError> {
        let dir = self.dir(&spec.uuid).map_err(|_| failed(format!("instance id {:?} is not a uuid", spec.uuid)))?;
        let uuid = spec.uuid.clone();
        let active =
            self.blocking(move |conn| Ok(lookup(conn, &uuid)?.is_some_and(|d| d.is_active().unwrap_or(false))));
        if active.await? {
            return Err(failed(format!("guest {} is already running on this host", spec.uuid)));
        }
        // Left over from an earlier attempt: the spec wins.
        self.remove_domain(&spec.uuid).await?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
        let result = self.spawn_in(spec, &dir).await;
        if result.is_err() {
            // Nothing of a failed build stays, in libvirt or in `instances/`.
            if let Err(e) = self.remove_domain(&spec.uuid).await {
                tracing::warn!(instance = %spec.uuid, error = %e, "cannot remove the failed domain");
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    async fn destroy(&self, uuid: &str) -> Result<(), VirtError> {
        let Ok(dir) = self.dir(uuid) else { return Ok(()) };
        self.remove_domain(uuid).await?;
        if !dir.exists() {
            return Ok(());
        }
        std::fs::remove_dir_all(&dir).map_err(|e| failed(format!("cannot remove {}: {e}", dir.display())))
    }

    async fn power_off(&self, uuid: &str) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        let record = self.record(&dir, uuid)?;
        let id = uuid.to_string();
        self.blocking(move |conn| {
            let Some(dom) = lookup(conn, &id)? else { return Ok(()) };
            if !dom.is_active().unwrap_or(false) {
                return Ok(());
            }
            // The ACPI power button first, as nova's clean shutdown; a guest that ignores it
            // (no acpid, as the busybox test guest) is stopped hard after the timeout.
            let timeout = Duration::from_secs(record.shutdown_timeout_secs);
            if dom.shutdown().is_ok() && wait_inactive(&dom, timeout) {
                return Ok(());
            }
            tracing::info!(instance = %id, "no clean shutdown within {}s; destroying the domain", timeout.as_secs());
            match dom.destroy() {
                Ok(()) => Ok(()),
                // It stopped between the check and the destroy.
                Err(_) if !dom.is_active().unwrap_or(true) => Ok(()),
                Err(e) => Err(lv("cannot stop the domain", e)),
            }
        })
        .await
    }

    async fn power_on(&self, uuid: &str) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        self.record(&dir, uuid)?;
        let id = uuid.to_string();
        self.blocking(move |conn| {
            let dom = lookup_or_define(conn, &id, &dir)?;
            if dom.is_active().unwrap_or(false) {
                return Ok(());
            }
            dom.create().map(|_| ()).map_err(|e| lv("cannot start the domain", e))
        })
        .await
    }

    /// As the qemu driver: a soft reboot resets the running machine (`virDomainReset`; the
    /// busybox test guest has no ACPI handler for a reboot request), a hard one destroys the
    /// domain and starts it again, a new qemu process with the same disks, as nova does.
    async fn reboot(&self, uuid: &str, hard: bool) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        self.record(&dir, uuid)?;
        let id = uuid.to_string();
        self.blocking(move |conn| {
            let dom = lookup_or_define(conn, &id, &dir)?;
            if dom.is_active().unwrap_or(false) {
                if !hard {
                    return dom.reset().map(|_| ()).map_err(|e| lv("cannot reset the guest", e));
                }
                dom.destroy().map_err(|e| lv("cannot stop the domain", e))?;
            }
            dom.create().map(|_| ()).map_err(|e| lv("cannot start the domain", e))
        })
        .await
    }

    // Issue 16: as nova's libvirt driver. Pause is `virDomainSuspend` (the vCPUs stop, the
    // process stays); suspend is a managed save (the state goes to libvirt's save file and the
    // domain is off), and starting a domain with a managed save restores it.
    async fn pause(&self, uuid: &str) -> Result<(), VirtError> {
        self.on_active(uuid, "pause", |dom| dom.suspend().map(|_| ())).await
    }

    async fn unpause(&self, uuid: &str) -> Result<(), VirtError> {
        self.on_active(uuid, "unpause", |dom| dom.resume().map(|_| ())).await
    }

    async fn suspend(&self, uuid: &str) -> Result<(), VirtError> {
        self.on_active(uuid, "suspend", |dom| dom.managed_save(0).map(|_| ())).await
    }

    async fn resume(&self, uuid: &str) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        self.record(&dir, uuid)?;
        let id = uuid.to_string();
        self.blocking(move |conn| {
            let dom = lookup_or_define(conn, &id, &dir)?;
            if dom.is_active().unwrap_or(false) {
                return Ok(());
            }
            if !dom.has_managed_save(0).unwrap_or(false) {
                return Err(failed(format!("guest {id} has no saved state to resume from")));
            }
            dom.create().map(|_| ()).map_err(|e| lv("cannot restore the domain", e))
        })
        .await
    }

    // Issue 16. A rebuild undefines the domain and makes it anew from the spec in the same
    // dir (the console log and, with `preserve_ephemeral`, the ephemeral disk kept); a
    // snapshot pauses a running domain (`virDomainSuspend`), copies the root overlay with
    // `qemu-img convert -U` and resumes it. Resize is not done by this driver yet: the
    // trait's default refuses it, and the action ends with that fault.
    async fn rebuild(&self, spec: &GuestSpec, preserve_ephemeral: bool) -> Result<(), VirtError> {
        let dir = self.dir(&spec.uuid)?;
        self.record(&dir, &spec.uuid)?;
        self.remove_domain(&spec.uuid).await?;
        super::guestfiles::clear_for_rebuild(&dir, preserve_ephemeral)?;
        self.spawn_in(spec, &dir).await
    }

    async fn snapshot(&self, uuid: &str, image_id: &str) -> Result<super::Snapshot, VirtError> {
        let dir = self.dir(uuid)?;
        self.record(&dir, uuid)?;
        let file = super::guestfiles::snapshot_file(&dir, image_id)?;
        let disk = dir.join("disk");
        if !disk.is_file() {
            return Err(failed(format!("guest {uuid} has no root disk of its own to snapshot")));
        }
        let id = uuid.to_string();
        let paused = self
            .blocking(move |conn| {
                let Some(dom) = lookup(conn, &id)? else { return Ok(false) };
                let running = dom.get_state().is_ok_and(|(state, _)| state == sys::VIR_DOMAIN_RUNNING);
                if running {
                    dom.suspend().map_err(|e| lv("cannot pause the guest for a snapshot", e))?;
                }
                Ok(running)
            })
            .await?;
        let copied = self.files.flatten(&disk, &file).await;
        if paused {
            if let Err(e) = self.on_paused_resume(uuid).await {
                tracing::error!(instance = %uuid, error = %e, "the guest could not be resumed after its snapshot");
            }
        }
        copied?;
        Ok(super::Snapshot { file, disk_format: "qcow2".into() })
    }

    async fn discard_snapshot_files(&self, uuid: &str) -> Result<(), VirtError> {
        super::guestfiles::remove_snapshot_files(&self.dir(uuid)?)
    }

    async fn power_state(&self, uuid: &str) -> PowerState {
        let Ok(dir) = self.dir(uuid) else { return PowerState::NoState };
        if !dir.join("libvirt.json").is_file() {
            return PowerState::NoState;
        }
        let id = uuid.to_string();
        let state = self
            .blocking(move |conn| match lookup(conn, &id)? {
                Some(dom) => dom.get_state().map(Some).map_err(|e| lv("cannot read the domain's state", e)),
                None => Ok(None),
            })
            .await;
        match state {
            Ok(Some((state, reason))) => power_state_of(state, reason),
            // Defined again at the next power-on.
            Ok(None) => PowerState::Shutdown,
            Err(e) => {
                tracing::warn!(instance = %uuid, error = %e, "power state unknown");
                PowerState::NoState
            }
        }
    }

    async fn console_output(&self, uuid: &str) -> Result<String, VirtError> {
        let dir = self.dir(uuid)?;
        self.record(&dir, uuid)?;
        read_tail(&dir.join("console.log"), MAX_CONSOLE_BYTES)
    }

    /// Plugs the volume in (live when the domain runs) and into its persistent definition,
    /// so later starts have it; `domain.xml` follows for a libvirt that loses the domain.
    async fn attach_volume(&self, uuid: &str, disk: &VolumeDisk) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        self.record(&dir, uuid)?;
        if !Path::new(&disk.path).is_file() {
            return Err(failed(format!("volume {} has no file at {}", disk.volume_id, disk.path)));
        }
        let (id, disk) = (uuid.to_string(), disk.clone());
        self.blocking(move |conn| {
            let dom = lookup_or_define(conn, &id, &dir)?;
            let xml = dom.get_xml_desc(0).map_err(|e| lv("cannot read the domain", e))?;
            if xml.contains(&format!("<serial>{}</serial>", serial(&disk.volume_id))) {
                return Ok(());
            }
            let dev = (0..26)
                .filter_map(disk_name)
                .find(|d| !xml.contains(&format!("dev='{d}'")))
                .ok_or_else(|| failed("a guest has at most 26 disks"))?;
            let fragment = volume_xml(&disk, &dev)?;
            dom.attach_device_flags(&fragment, affect(&dom)).map_err(|e| lv("cannot attach the volume", e))?;
            save_definition(&dom, &dir)
        })
        .await
    }

    /// Asks the guest to let the disk go (ACPI hotplug) and waits for it, as the qemu driver.
    async fn detach_volume(&self, uuid: &str, volume_id: &str) -> Result<(), VirtError> {
        let dir = self.dir(uuid)?;
        self.record(&dir, uuid)?;
        let (id, volume_id) = (uuid.to_string(), volume_id.to_string());
        self.blocking(move |conn| {
            let dom = lookup_or_define(conn, &id, &dir)?;
            let xml = dom.get_xml_desc(0).map_err(|e| lv("cannot read the domain", e))?;
            let Some(fragment) = disk_element(&xml, &serial(&volume_id)) else { return Ok(()) };
            dom.detach_device_flags(&fragment, affect(&dom)).map_err(|e| lv("cannot detach the volume", e))?;
            let deadline = Instant::now() + VOLUME_RELEASE_TIMEOUT;
            while disk_element(&dom.get_xml_desc(0).unwrap_or_default(), &serial(&volume_id)).is_some() {
                if Instant::now() >= deadline {
                    return Err(failed(format!(
                        "the guest did not release volume {volume_id} within {}s; try again",
                        VOLUME_RELEASE_TIMEOUT.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            save_definition(&dom, &dir)
        })
        .await
    }

    /// `novabox down`: the ACPI power button for every running guest at once, then destroy
    /// what is still running after `timeout`. The domains stay defined and their instances
    /// ACTIVE, so the next `up` starts them (nova's resume_guests_state_on_host_boot).
    async fn shutdown_all(&self, timeout: Duration) -> Result<ShutdownReport, VirtError> {
        let uuids = self.guests().await;
        self.blocking(move |conn| {
            let mut running = Vec::new();
            for uuid in uuids {
                if let Some(dom) = lookup(conn, &uuid)? {
                    if dom.is_active().unwrap_or(false) {
                        let _ = dom.shutdown();
                        running.push((uuid, dom));
                    }
                }
            }
            let deadline = Instant::now() + timeout;
            let mut report = ShutdownReport::default();
            for (uuid, dom) in running {
                if wait_inactive(&dom, deadline.saturating_duration_since(Instant::now())) {
                    report.clean.push(uuid);
                } else {
                    if let Err(e) = dom.destroy() {
                        tracing::warn!(instance = %uuid, error = %e, "cannot stop the domain");
                    }
                    report.hard.push(uuid);
                }
            }
            Ok(report)
        })
        .await
    }

    async fn guests(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.instances) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|name| uuid::Uuid::parse_str(name).is_ok())
            .filter(|name| self.instances.join(name).join("libvirt.json").is_file())
            .collect()
    }
}

/// Nova's mapping of libvirt's domain states (`nova.virt.libvirt.guest.LIBVIRT_POWER_STATE`),
/// plus one detail: a domain whose qemu died (shut off, reason `crashed`) is a crash, which
/// the compute's power sync reports as such.
fn power_state_of(state: sys::virDomainState, reason: i32) -> PowerState {
    match state {
        sys::VIR_DOMAIN_RUNNING | sys::VIR_DOMAIN_BLOCKED => PowerState::Running,
        sys::VIR_DOMAIN_PAUSED => PowerState::Paused,
        sys::VIR_DOMAIN_SHUTDOWN => PowerState::Shutdown,
        sys::VIR_DOMAIN_SHUTOFF if reason as u32 == sys::VIR_DOMAIN_SHUTOFF_CRASHED => PowerState::Crashed,
        sys::VIR_DOMAIN_SHUTOFF => PowerState::Shutdown,
        sys::VIR_DOMAIN_CRASHED => PowerState::Crashed,
        sys::VIR_DOMAIN_PMSUSPENDED => PowerState::Suspended,
        _ => PowerState::NoState,
    }
}

/// How long a guest gets to let go of a volume after the detach request.
const VOLUME_RELEASE_TIMEOUT: Duration = Duration::from_secs(20);

/// A volume as a virtio disk; its serial (the volume id, as nova sets it) finds it again.
fn volume_xml(v: &VolumeDisk, dev: &str) -> Result<String, VirtError> {
    Ok(format!(
        "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      \
         <source file='{}'/>\n      <target dev='{dev}' bus='virtio'/>\n      <serial>{}</serial>\n    </disk>\n",
        escape(path_str(Path::new(&v.path))?),
        escape(&serial(&v.volume_id))
    ))
}

/// The `<disk>` element of the domain XML that carries `serial`, as libvirt wrote it.
fn disk_element(xml: &str, serial: &str) -> Option<String> {
    let needle = format!("<serial>{serial}</serial>");
    let at = xml.find(&needle)?;
    let start = xml[..at].rfind("<disk ")?;
    let end = at + xml[at..].find("</disk>")? + "</disk>".len();
    Some(xml[start..end].to_string())
}

/// Live and persistent for a running domain, persistent only for a stopped one.
fn affect(dom: &Domain) -> u32 {
    if dom.is_active().unwrap_or(false) {
        sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG
    } else {
        sys::VIR_DOMAIN_AFFECT_CONFIG
    }
}

/// Keeps `domain.xml` equal to libvirt's persistent definition after a device change.
fn save_definition(dom: &Domain, dir: &Path) -> Result<(), VirtError> {
    let xml = dom.get_xml_desc(sys::VIR_DOMAIN_XML_INACTIVE).map_err(|e| lv("cannot read the domain", e))?;
    crate::home::write_atomic(&dir.join("domain.xml"), xml.as_bytes(), 0o600)
        .map_err(|e| failed(format!("cannot write {}: {e}", dir.join("domain.xml").display())))
}

fn domain_name(uuid: &str) -> String {
    format!("{DOMAIN_PREFIX}{uuid}")
}

/// `vda`, `vdb`, ... for the i-th virtio disk.
fn disk_name(i: usize) -> Option<String> {
    (i < 26).then(|| format!("vd{}", (b'a' + i as u8) as char))
}

/// A value for the domain template.
enum Value {
    /// Text, XML-escaped on the way in.
    Text(String),
    /// A fragment the driver built from escaped values.
    Xml(String),
}

/// XML-escapes text for element content and single- or double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Fills the template's placeholders: `{{name}}` with the escaped text, `{{{name}}}` with a
/// fragment. A placeholder without a value, or a value of the wrong kind, is an error: a
/// half-filled domain must never reach libvirt.
fn render(template: &str, values: &[(&str, Value)]) -> Result<String, VirtError> {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let raw = rest[start..].starts_with("{{{");
        let (open, close) = if raw { ("{{{", "}}}") } else { ("{{", "}}") };
        let after = &rest[start + open.len()..];
        let end = after.find(close).ok_or_else(|| failed("the domain template has an unclosed placeholder"))?;
        let key = &after[..end];
        let value = values
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| failed(format!("the domain template's placeholder {key:?} has no value")))?;
        match (value, raw) {
            (Value::Text(t), false) => out.push_str(&escape(t)),
            (Value::Xml(x), true) => out.push_str(x),
            _ => return Err(failed(format!("the domain template uses {key:?} with the wrong number of braces"))),
        }
        rest = &after[end + close.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::Home;

    fn all_values(title: &str) -> Vec<(&'static str, Value)> {
        let text = |s: &str| Value::Text(s.to_string());
        vec![
            ("domain_type", text("qemu")),
            ("name", text("novabox-x")),
            ("uuid", text("u")),
            ("title", text(title)),
            ("memory_mb", text("64")),
            ("vcpus", text("1")),
            ("kernel", Value::Xml(String::new())),
            ("cpu", Value::Xml(String::new())),
            ("disks", Value::Xml("    <disk/>\n".into())),
            ("interfaces", Value::Xml(String::new())),
            ("console_log", text("/h/it's <here>/console.log")),
            ("vnc_socket", text("/h/vnc.sock")),
            ("seclabel", Value::Xml(String::new())),
        ]
    }

    #[test]
    fn the_template_renders_with_values_escaped() {
        let xml = render(TEMPLATE, &all_values("a&b <c> \"d\"")).unwrap();
        assert!(!xml.contains("{{") && !xml.contains("}}"), "{xml}");
        assert!(xml.contains("<title>a&amp;b &lt;c&gt; &quot;d&quot;</title>"), "{xml}");
        assert!(xml.contains("<source path='/h/it&apos;s &lt;here&gt;/console.log' append='on'/>"), "{xml}");
        assert!(xml.contains("<domain type='qemu'>") && xml.contains("    <disk/>\n"), "{xml}");
        assert!(xml.contains("<graphics type='vnc' socket='/h/vnc.sock'/>"), "{xml}");
    }

    #[test]
    fn a_placeholder_without_its_value_is_an_error() {
        let mut values = all_values("t");
        values.retain(|(k, _)| *k != "vcpus");
        let e = render(TEMPLATE, &values).unwrap_err().to_string();
        assert!(e.contains("\"vcpus\" has no value"), "{e}");
        let e = render("<a>{{{title}}}</a>", &all_values("t")).unwrap_err().to_string();
        assert!(e.contains("wrong number of braces"), "{e}");
        assert!(render("<a>{{title</a>", &all_values("t")).is_err());
    }

    #[test]
    fn libvirt_states_map_to_nova_power_states() {
        assert_eq!(power_state_of(sys::VIR_DOMAIN_RUNNING, 1), PowerState::Running);
        assert_eq!(power_state_of(sys::VIR_DOMAIN_BLOCKED, 0), PowerState::Running);
        assert_eq!(power_state_of(sys::VIR_DOMAIN_PAUSED, 0), PowerState::Paused);
        assert_eq!(
            power_state_of(sys::VIR_DOMAIN_SHUTOFF, sys::VIR_DOMAIN_SHUTOFF_DESTROYED as i32),
            PowerState::Shutdown
        );
        assert_eq!(
            power_state_of(sys::VIR_DOMAIN_SHUTOFF, sys::VIR_DOMAIN_SHUTOFF_CRASHED as i32),
            PowerState::Crashed
        );
        assert_eq!(power_state_of(sys::VIR_DOMAIN_CRASHED, 0), PowerState::Crashed);
        assert_eq!(power_state_of(sys::VIR_DOMAIN_PMSUSPENDED, 0), PowerState::Suspended);
        assert_eq!(power_state_of(0, 0), PowerState::NoState);
        assert_eq!(disk_name(0).as_deref(), Some("vda"));
        assert_eq!(disk_name(25).as_deref(), Some("vdz"));
        assert_eq!(disk_name(26), None);
        assert_eq!(valid_mac("fa:16:3e:00:00:0a'/>").as_deref(), None);
    }

    /// libvirt's in-process test driver: no daemon, no qemu, but a real connection.
    #[tokio::test]
    async fn connects_and_knows_no_guest_yet_on_the_test_driver() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path());
        home.create_dirs().unwrap();
        let d = LibvirtDriver::new(&home, Accel::Tcg, "test:///default").expect("genisoimage and qemu-img installed");
        assert_eq!(d.name(), "libvirt");
        assert_eq!(d.host_resources().accel, "tcg");
        assert!(d.host_resources().hypervisor_version > 0);
        let uuid = uuid::Uuid::new_v4().to_string();
        assert_eq!(d.power_state(&uuid).await, PowerState::NoState);
        assert!(matches!(d.power_on(&uuid).await, Err(VirtError::NotFound(_))));
        assert!(matches!(d.console_output(&uuid).await, Err(VirtError::NotFound(_))));
        d.destroy(&uuid).await.unwrap();
        d.destroy("../escape").await.unwrap();
        assert!(d.guests().await.is_empty());
    }

    #[test]
    fn an_unreachable_libvirt_says_how_to_start_it() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path());
        let uri = format!("qemu+unix:///system?socket={}/none.sock", t.path().display());
        let Err(e) = LibvirtDriver::new(&home, Accel::Tcg, &uri) else { panic!("connected to {uri}") };
        let e = e.to_string();
        assert!(e.contains("cannot connect to libvirt at qemu+unix") && e.contains("libvirtd --daemon"), "{e}");
    }
}
