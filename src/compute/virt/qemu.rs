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
//!
//! Base images are hard links in `<home>/instances/_base/<image id>`, checked with `qemu-img`
//! once, and kept when guests are destroyed (and when the image is deleted from the store).
//!
//! Every guest gets a config drive, as nova's `force_config_drive = True`: novabox has no
//! metadata service yet, and the drive is how a guest learns its hostname and keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::guestfiles::{last_line, path_str, read_tail, valid_mac, volume_serial as serial, GuestFiles};
use super::{configdrive, qmp, GuestSpec, HostResources, VirtDriver, VirtError, VolumeDisk};
use super::{disks, imagecache};
use crate::config::{Accel, ConfigDriveFormat};

mod shutdown;
use crate::compute::states::PowerState;
use crate::hostpkgs;
pub use shutdown::stop_leftover_guests;

pub const QEMU: &str = "qemu-system-x86_64";
pub const QEMU_IMG: &str = "qemu-img";

pub use super::guestfiles::DEFAULT_SHUTDOWN_TIMEOUT;
/// How long qemu may take from exec to a running machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Kept of the console for `console_output` (nova's MAX_CONSOLE_BYTES).
const MAX_CONSOLE_BYTES: u64 = 100 * 1024;
/// A unix socket path longer than this cannot be bound (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The serial console's socket in the instance dir (`novabox console` connects to it).
pub const CONSOLE_SOCKET: &str = "console.sock";

#[derive(Debug, thiserror::Error)]
pub enum QemuUnavailable {
    #[error("the qemu driver needs {program}, which is not installed: sudo apt-get install {package}")]
    Missing { program: &'static str, package: &'static str },
}

/// What power-on needs to start the same machine again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Launch {
    args: Vec<String>,
    shutdown_timeout_secs: u64,
    /// Volumes attached after the boot disk (hot-pluggable), added to `args` at each start.
    #[serde(default)]
    volumes: Vec<VolumeDisk>,
    /// The host port forwarded to the guest's port 22 (user networking only). Kept here so a
    /// guest keeps its port across power cycles and `down`/`up`; freed with the instance dir.
    #[serde(default)]
    ssh_port: Option<u16>,
}

/// Where ssh forwards of user-mode guests listen: loopback only, as the API does by default,
/// so a laptop's guests are not reachable from its network.
pub const SSH_FORWARD_ADDR: &str = "127.0.0.1";

/// A free TCP port on the forward address, or None when the OS gives none.
fn free_port() -> Option<u16> {
    std::net::TcpListener::bind((SSH_FORWARD_ADDR, 0)).ok()?.local_addr().ok().map(|a| a.port())
}

/// Whether `port` can be bound now on the forward address.
fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind((SSH_FORWARD_ADDR, port)).is_ok()
}

/// The qemu arguments with the ssh forward added to the first user-mode NIC (`net0`).
fn with_ssh_forward(args: &[String], port: Option<u16>) -> Vec<String> {
    let Some(port) = port else { return args.to_vec() };
    args.iter()
        .map(|a| if a == "user,id=net0" { format!("{a},hostfwd=tcp:{SSH_FORWARD_ADDR}:{port}-:22") } else { a.clone() })
        .collect()
}

/// The host port forwarded to the guest's ssh port, from its `launch.json` (user mode only).
pub fn ssh_port(instances_dir: &Path, uuid: &str) -> Option<u16> {
    let text = std::fs::read(instances_dir.join(uuid).join("launch.json")).ok()?;
    serde_json::from_slice::<Launch>(&text).ok()?.ssh_port
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

    /// The pid of the guest's qemu while it runs.
    fn live_pid(&self, dir: &Path, uuid: &str) -> Option<i32> {
        let pid = crate::supervise::read_pid_file(&dir.join("qemu.pid")).ok().flatten()?;
        qemu_alive(pid, uuid).then_some(pid)
    }

    /// Builds the guest's files and its qemu arguments.
    async fn prepare(&self, spec: &GuestSpec, dir: &Path) -> Result<Launch, VirtError> {
        let prepared = self.files.prepare(spec, dir).await?;
        let disks = &prepared.disks;
        let qmp = dir.join("qmp.sock");
        // console.sock is the longer of the two sockets.
        let console = dir.join(CONSOLE_SOCKET);
        if console.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(failed(format!(
                "the console socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --home",
                console.display()
            )));
        }
        let mut args: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));
        push(&["-name", &format!("guest={},debug-threads=on", spec.uuid), "-uuid", &spec.uuid]);
        push(&["-nodefaults", "-no-user-config", "-display", "none", "-msg", "timestamp=on"]);
        push(&["-machine", "pc", "-accel", accel_name(self.accel)]);
        if self.accel == Accel::Kvm {
            push(&["-cpu", "host"]);
        }
        push(&["-m", &spec.memory_mb.to_string(), "-smp", &spec.vcpus.to_string(), "-rtc", "base=utc"]);
        push(&["-qmp", &format!("unix:{},server=on,wait=off", opt_path(&qmp)?)]);
        push(&["-chardev", &serial_chardev(dir)?]);
        push(&["-serial", "chardev:serial0"]);
        if let Some(k) = &prepared.kernel {
            push(&["-kernel", path_str(&k.kernel)?]);
            if let Some(ramdisk) = &k.ramdisk {
                push(&["-initrd", path_str(ramdisk)?]);
            }
            push(&["-append", &k.cmdline]);
        }
        for (i, d) in disks.iter().enumerate() {
            push(&["-drive", &format!("if=none,id=disk{i},format=qcow2,file={}", opt_path(d)?)]);
            let boot = if i == 0 { ",bootindex=1" } else { "" };
            push(&["-device", &format!("virtio-blk-pci,drive=disk{i}{boot}")]);
        }
        let config_drive = config_drive_args(&prepared)?;
        let config_drive: Vec<&str> = config_drive.iter().map(String::as_str).collect();
        push(&config_drive);
        // A port with a tap (bridge mode, plugged by compute::net before the spawn) uses it;
        // without one the guest gets QEMU user networking (mode user, no CAP_NET_ADMIN).
        for (i, vif) in spec.network_info.iter().enumerate() {
            let mac = valid_mac(&vif.mac)
                .ok_or_else(|| failed(format!("port {} has a bad MAC {:?}", vif.port_id, vif.mac)))?;
            match &vif.tap {
                Some(tap) if crate::compute::net::bridge::valid_ifname(tap) => {
                    push(&["-netdev", &format!("tap,id=net{i},ifname={tap},script=no,downscript=no")])
                }
                Some(tap) => return Err(failed(format!("port {} has a bad tap name {tap:?}", vif.port_id))),
                None => push(&["-netdev", &format!("user,id=net{i}")]),
            }
            push(&["-device", &format!("virtio-net-pci,netdev=net{i},mac={mac}")]);
        }
        let volumes = spec.volumes.iter().filter(|v| !v.boot).cloned().collect();
        // The port itself is picked (and re-checked) at each start, see `start`.
        let user_nic = spec.network_info.first().is_some_and(|vif| vif.tap.is_none());
        let ssh_port = if user_nic { Some(0) } else { None };
        Ok(Launch { args, shutdown_timeout_secs: prepared.shutdown_timeout_secs, volumes, ssh_port })
    }

    /// Starts qemu for the guest in `dir` and waits until the machine runs.
    async fn start(&self, uuid: &str, dir: &Path, launch: &Launch) -> Result<(), VirtError> {
        self.start_with(uuid, dir, launch, None).await
    }

    /// Starts qemu; with `incoming`, the machine's state is loaded from that file (a
    /// suspended guest) and it runs on from where it was saved.
    async fn start_with(
        &self,
        uuid: &str,
        dir: &Path,
        launch: &Launch,
        incoming: Option<&Path>,
    ) -> Result<(), VirtError> {
        use std::os::unix::process::CommandExt;
        let incoming_args = match incoming {
            Some(file) => vec!["-incoming".to_string(), exec_uri("cat <", file)?],
            None => Vec::new(),
        };
        let launch = &self.keep_ssh_port(uuid, dir, launch)?;
        for stale in ["qmp.sock", "console.sock", "stopped"] {
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

    /// The launch with a usable ssh forward port: the saved one while it is free, else a new
    /// one (saved, and logged, since a user's ssh config may name the old one).
    fn keep_ssh_port(&self, uuid: &str, dir: &Path, launch: &Launch) -> Result<Launch, VirtError> {
        let mut launch = launch.clone();
        let Some(saved) = launch.ssh_port else { return Ok(launch) };
        if saved != 0 && port_free(saved) {
            return Ok(launch);
        }
        let port = free_port().ok_or_else(|| failed(format!("no free TCP port on {SSH_FORWARD_ADDR} for ssh")))?;
        if saved != 0 {
            tracing::warn!(instance = %uuid, old = saved, new = port, "the guest's ssh port is taken by another program; forwarding a new one");
        }
        launch.ssh_port = Some(port);
        self.save_launch(dir, &launch)?;
        tracing::info!(instance = %uuid, port, addr = SSH_FORWARD_ADDR, "ssh forward");
        Ok(launch)
    }

    /// Stops the guest's qemu now: QMP `quit`, then signals by pid.
    async fn kill(&self, uuid: &str, dir: &Path) {
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

    async fn wait_dead(&self, dir: &Path, uuid: &str, timeout: Duration) -> bool {
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

    fn launch(&self, dir: &Path, uuid: &str) -> Result<Launch, VirtError> {
        let file = dir.join("launch.json");
        let text = match std::fs::read(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(VirtError::NotFound(uuid.to_string())),
            Err(e) => return Err(failed(format!("cannot read {}: {e}", file.display()))),
        };
        serde_json::from_slice(&text).map_err(|e| failed(format!("{} is damaged: {e}", file.display())))
    }

    async fn spawn_in(&self, spec: &GuestSpec, dir: &Path) -> Result<(), VirtError> {
        let launch = self.prepare(spec, dir).await?;
        let text = serde_json::to_vec_pretty(&launch).map_err(|e| failed(e.to_string()))?;
        crate::home::write_atomic(&dir.join("launch.json"), &text, 0o600)
            .map_err(|e| failed(format!("cannot write {}: {e}", dir.join("launch.json").display())))?;
        self.start(&spec.uuid, dir, &launch).await
    }
}

/// A suspended guest's memory and device state, in its instance dir.
const SAVED_STATE: &str = "memory.state";
/// The mark of a guest whose qemu exited because it was suspended (as `stopped` marks a
/// power-off), so the exit is neither a crash nor the guest shutting itself down.
const SUSPENDED: &str = "suspended";
/// How long saving a guest's memory may take (a few GiB to a local disk).
const SAVE_TIMEOUT: Duration = Duration::from_secs(600);

/// Suspend and resume (issue 16): the guest is stopped, its RAM and device state go to
/// `memory.state` through QMP `migrate` to an `exec:` URI (what libvirt's managed save does
/// under the hood), and qemu quits; resume starts the same machine with `-incoming` from the
/// file and lets it go on, so its clock and processes continue where they were.
impl QemuDriver {
    /// The QMP socket of a guest whose qemu runs.
    fn running_qmp(&self, uuid: &str) -> Result<PathBuf, VirtError> {
        let dir = self.dir(uuid)?;
        self.launch(&dir, uuid)?;
        if self.live_pid(&dir, uuid).is_none() {
            return Err(failed(format!("guest {uuid} is not running")));
        }
        Ok(dir.join("qmp.sock"))
    }

    async fn save_state(&self, uuid: &str) -> Result<(), VirtError> {
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

    async fn restore_state(&self, uuid: &str) -> Result<(), VirtError> {
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
fn exec_uri(command: &str, file: &Path) -> Result<String, VirtError> {
    let path = path_str(file)?;
    if path.contains('\'') {
        return Err(failed(format!("the path {path} has a quote in it; use another --home")));
    }
    Ok(format!("exec:{command} '{path}'"))
}

/// How long a guest gets to let go of a volume after `device_del` (the guest's ACPI hotplug
/// handler ejects it; a TCG guest can be slow) before novabox gives up on the detach.
const DETACH_TIMEOUT: Duration = Duration::from_secs(20);

/// Volumes: the qcow2 file as a `-blockdev` node with a virtio-blk device, both named after
/// the volume, hot-plugged through QMP while the guest runs and kept in `launch.json` so that
/// every later start of the guest has them.
impl QemuDriver {
    fn save_launch(&self, dir: &Path, launch: &Launch) -> Result<(), VirtError> {
        let text = serde_json::to_vec_pretty(launch).map_err(|e| failed(e.to_string()))?;
        crate::home::write_atomic(&dir.join("launch.json"), &text, 0o600)
            .map_err(|e| failed(format!("cannot write {}: {e}", dir.join("launch.json").display())))
    }

    async fn attach_volume_to(&self, uuid: &str, disk: &VolumeDisk) -> Result<(), VirtError> {
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

    async fn detach_volume_from(&self, uuid: &str, volume_id: &str) -> Result<(), VirtError> {
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

/// The block node and device ids of a volume: a letter and 24 hex digits of its id (node
/// names are at most 31 characters).
fn volume_names(volume_id: &str) -> Result<(String, String), VirtError> {
    let hex = uuid::Uuid::parse_str(volume_id)
        .map_err(|_| failed(format!("volume id {volume_id:?} is not a uuid")))?
        .simple()
        .to_string();
    Ok((format!("n{}", &hex[..24]), format!("v{}", &hex[..24])))
}

fn volume_file(disk: &VolumeDisk) -> Result<PathBuf, VirtError> {
    let file = PathBuf::from(&disk.path);
    if !file.is_absolute() || !file.is_file() {
        return Err(failed(format!("volume {} has no file at {}", disk.volume_id, disk.path)));
    }
    Ok(file)
}

/// The command-line arguments of the attached (not boot) volumes.
fn volume_args(volumes: &[VolumeDisk]) -> Result<Vec<String>, VirtError> {
    let mut args = Vec::new();
    for v in volumes {
        let (node, device) = volume_names(&v.volume_id)?;
        let file = opt_path(&volume_file(v)?)?;
        args.push("-blockdev".to_string());
        args.push(format!("driver=qcow2,node-name={node},file.driver=file,file.filename={file}"));
        args.push("-device".to_string());
        args.push(format!("virtio-blk-pci,drive={node},id={device},serial={}", serial(&v.volume_id)));
    }
    Ok(args)
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
        if dir.join("stopped").exists() || dir.join(SUSPENDED).exists() {
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
        read_tail(&dir.join("console.log"), MAX_CONSOLE_BYTES)
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

/// The qemu arguments a guest was started with (its `launch.json`), for `novabox bench guest`
/// to boot the very same machine without novabox around it.
pub fn saved_args(instances_dir: &Path, uuid: &str) -> Result<Vec<String>, VirtError> {
    if uuid::Uuid::parse_str(uuid).is_err() {
        return Err(VirtError::NotFound(uuid.to_string()));
    }
    let file = instances_dir.join(uuid).join("launch.json");
    let text = std::fs::read(&file).map_err(|e| failed(format!("cannot read {}: {e}", file.display())))?;
    let launch: Launch =
        serde_json::from_slice(&text).map_err(|e| failed(format!("{} is damaged: {e}", file.display())))?;
    Ok(launch.args)
}

/// The serial console: a unix socket for `novabox console` that also logs everything the
/// guest writes to `console.log` (appended across power cycles), connected or not.
fn serial_chardev(dir: &Path) -> Result<String, VirtError> {
    Ok(format!(
        "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
        opt_path(&dir.join(CONSOLE_SOCKET))?,
        opt_path(&dir.join("console.log"))?
    ))
}

/// The config drive's qemu arguments: the ISO9660 image on an IDE CD-ROM as nova attaches it
/// (it takes no virtio disk name, so the flavor's disks stay vdb, vdc), or qemu's read-only
/// vvfat view of the tree as a virtio disk after them.
fn config_drive_args(prepared: &super::guestfiles::Prepared) -> Result<Vec<String>, VirtError> {
    Ok(match &prepared.config_drive_iso {
        Some(iso) => vec![
            "-drive".into(),
            format!("if=none,id=config,media=cdrom,readonly=on,format=raw,file={}", opt_path(iso)?),
            "-device".into(),
            "ide-cd,drive=config,bus=ide.1".into(),
        ],
        None => vec![
            "-blockdev".into(),
            format!(
                "driver=vvfat,node-name=config,dir={},label={},read-only=on",
                opt_path(&prepared.config_drive)?,
                configdrive::LABEL
            ),
            "-device".into(),
            "virtio-blk-pci,drive=config".into(),
        ],
    })
}

fn accel_name(accel: Accel) -> &'static str {
    if accel == Accel::Kvm {
        "kvm"
    } else {
        "tcg"
    }
}

/// True while `pid` is the qemu of this guest (its `-name guest=<uuid>`, which a pager or
/// `tail` on the guest's files would not have). A zombie has an empty command line, so it
/// counts as dead without being reaped here (the waiter thread reaps it and records the exit).
fn qemu_alive(pid: i32, uuid: &str) -> bool {
    let needle = format!("guest={uuid},");
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
}

/// libvirt's version encoding (7.2.22 is 7002022), from `qemu-system-x86_64 --version`.
fn qemu_version(qemu: &Path) -> Option<i64> {
    let out = std::process::Command::new(qemu).arg("--version").stdin(Stdio::null()).output().ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_version(text: &str) -> Option<i64> {
    let v = text.split_whitespace().skip_while(|w| *w != "version").nth(1)?;
    let mut parts = v.split(['.', '-', '(']).map(|p| p.parse::<i64>().ok());
    let (major, minor, micro) = (parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0));
    Some(major * 1_000_000 + minor * 1000 + micro)
}

/// A path inside a qemu `key=value,...` option: commas are doubled.
fn opt_path(p: &Path) -> Result<String, VirtError> {
    Ok(path_str(p)?.replace(',', ",,"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::virt::{ImageMeta, Vif};
    use crate::doctor::probe::{self, TestImage};
    use crate::home::Home;

    #[test]
    fn a_node_or_device_in_use_means_plugged_already() {
        assert!(duplicate(&qmp::QmpError::Command("Duplicate nodes with node-name='n0123'".into())));
        assert!(duplicate(&qmp::QmpError::Command("Duplicate device ID 'v0123' for virtio-blk-pci".into())));
        assert!(!duplicate(&qmp::QmpError::Command("Could not open '/x': No such file".into())));
        assert!(!duplicate(&qmp::QmpError::Closed));
    }

    #[test]
    fn parses_qemu_versions() {
        let text = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright";
        assert_eq!(parse_version(text), Some(7_002_022));
        assert_eq!(parse_version("QEMU emulator version 9.1.0\n"), Some(9_001_000));
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn ssh_forward_goes_on_the_first_user_nic_only() {
        let args: Vec<String> =
            ["-netdev", "user,id=net0", "-netdev", "user,id=net1"].iter().map(|s| s.to_string()).collect();
        let fwd = with_ssh_forward(&args, Some(2222));
        assert_eq!(fwd[1], "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22");
        assert_eq!(fwd[3], "user,id=net1");
        assert_eq!(with_ssh_forward(&args, None), args);
    }

    #[test]
    fn a_busy_saved_ssh_port_is_replaced_and_saved() {
        let fx = fixture();
        let uuid = new_uuid();
        let dir = fx.home.instances_dir().join(&uuid);
        std::fs::create_dir_all(&dir).unwrap();
        let busy = std::net::TcpListener::bind((SSH_FORWARD_ADDR, 0)).unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        let launch = Launch { args: vec![], shutdown_timeout_secs: 1, volumes: vec![], ssh_port: Some(busy_port) };
        let kept = fx.driver.keep_ssh_port(&uuid, &dir, &launch).unwrap();
        let port = kept.ssh_port.unwrap();
        assert!(port != busy_port && port != 0);
        assert_eq!(ssh_port(&fx.home.instances_dir(), &uuid), Some(port));
        // A free saved port is kept as it is.
        let again = fx.driver.keep_ssh_port(&uuid, &dir, &kept).unwrap();
        assert_eq!(again.ssh_port, Some(port));
    }

    #[test]
    fn macs_are_checked_and_paths_escaped() {
        assert_eq!(valid_mac("FA:16:3e:00:00:0a").as_deref(), Some("fa:16:3e:00:00:0a"));
        assert_eq!(valid_mac("fa:16:3e:00:00:0a,id=x"), None);
        assert_eq!(valid_mac("fa:16:3e:00:00"), None);
        assert_eq!(opt_path(Path::new("/a,b/c")).unwrap(), "/a,,b/c");
    }

    use crate::compute::virt::guestfiles::tests::meta;

    #[test]
    fn unavailable_names_the_package() {
        let e = QemuUnavailable::Missing { program: QEMU_IMG, package: "qemu-utils" };
        assert!(e.to_string().ends_with("sudo apt-get install qemu-utils"));
    }

    // ---- Real guests (TCG). One boot at a time is all this host can afford.

    /// The test guest, built with the doctor's script into the target dir (the kernel .deb is
    /// cached there too, so only the first run needs apt).
    fn test_guest() -> TestImage {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp/test-guest");
        probe::ensure_test_image(&dir).expect("the test guest builds (busybox-static, apt)")
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        home: Home,
        driver: QemuDriver,
    }

    impl Drop for Fixture {
        /// A failed assertion must not leave a guest running: stop, by pid, every qemu whose
        /// command line names this fixture's home.
        fn drop(&mut self) {
            let needle = self.home.root().to_string_lossy().into_owned();
            let Ok(entries) = std::fs::read_dir("/proc") else { return };
            for pid in entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())) {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                if cmdline.contains("guest=") && cmdline.contains(&needle) {
                    // SAFETY: a qemu this test started (its command line names the test's home).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }

    fn fixture() -> Fixture {
        assert!(QemuDriver::available(), "qemu-system-x86_64 and qemu-img are needed: run scripts/install-deps");
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        home.create_dirs().unwrap();
        let driver = QemuDriver::new(&home, Accel::Tcg).unwrap();
        Fixture { _tmp: tmp, home, driver }
    }

    fn new_uuid() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// The test guest as the store holds it after `import_test_image`: an AMI (blank raw root)
    /// linked to an AKI kernel and an ARI ramdisk.
    fn ami(home: &Home) -> ImageMeta {
        let guest = test_guest();
        let blank = home.images_dir().join("blank.img");
        std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
        let mut ami = meta(&new_uuid(), "ami", Some(&blank));
        let kernel = meta(&new_uuid(), "aki", Some(&guest.kernel));
        let ramdisk = meta(&new_uuid(), "ari", Some(&guest.initrd));
        ami.properties.insert("kernel_id".into(), kernel.id.clone());
        ami.properties.insert("ramdisk_id".into(), ramdisk.id.clone());
        // The busybox guest has no ACPI handler: do not wait a minute for it at power-off.
        ami.properties.insert("os_shutdown_timeout".into(), "1".into());
        ami.kernel = Some(Box::new(kernel));
        ami.ramdisk = Some(Box::new(ramdisk));
        ami
    }

    fn spec_with(image: ImageMeta) -> GuestSpec {
        let mut spec = GuestSpec::for_test(&new_uuid(), "qemu-test");
        spec.hostname = "qemu-test-1".into();
        spec.memory_mb = 128;
        spec.swap_mb = 16;
        spec.ephemeral_gb = 1;
        spec.key_name = Some("k".into());
        spec.key_data = Some("ssh-ed25519 AAAAtest driver@novabox".into());
        spec.image = Some(image);
        spec.network_info = vec![Vif {
            port_id: new_uuid(),
            network_id: new_uuid(),
            network_name: "private".into(),
            mac: "fa:16:3e:12:34:56".into(),
            ips: vec!["10.42.0.9".into()],
            ..Default::default()
        }];
        spec
    }

    /// Waits until `marker` appears `count` times on the console.
    async fn wait_console(d: &QemuDriver, uuid: &str, marker: &str, count: usize) -> String {
        let deadline = Instant::now() + probe::TCG_TIMEOUT;
        loop {
            let text = d.console_output(uuid).await.unwrap();
            if text.matches(marker).count() >= count {
                return text;
            }
            assert!(Instant::now() < deadline, "no {count}x {marker:?} on the console:\n{text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn qemu_pid(home: &Home, uuid: &str) -> i32 {
        crate::supervise::read_pid_file(&home.instances_dir().join(uuid).join("qemu.pid")).unwrap().unwrap()
    }

    /// Types `line` on the guest's serial console (the test guest runs a shell there): a
    /// Ctrl-C first, so whatever half line busybox's line editor holds is dropped, then the
    /// line a key at a time, as a person types.
    async fn type_line(home: &Home, uuid: &str, line: &str) {
        use tokio::io::AsyncWriteExt;
        let socket = home.instances_dir().join(uuid).join(CONSOLE_SOCKET);
        let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
        s.write_all(b"\x03").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        for b in format!("{line}\n").bytes() {
            s.write_all(&[b]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        s.flush().await.unwrap();
    }

    /// The values the guest printed as lines `KEY=value` (not the shell's echo of the command).
    fn printed(console: &str, key: &str) -> Vec<String> {
        console.lines().filter_map(|l| l.trim().strip_prefix(&format!("{key}="))).map(str::to_string).collect()
    }

    /// Asks the guest `echo KEY=$(command)` on its console, again every few seconds while no
    /// answer comes (the line editor may eat a line typed while it queries the terminal).
    async fn ask(d: &QemuDriver, home: &Home, uuid: &str, key: &str, command: &str) -> String {
        let deadline = Instant::now() + probe::TCG_TIMEOUT;
        loop {
            type_line(home, uuid, &format!("echo {key}={command}")).await;
            let retry = Instant::now() + Duration::from_secs(5);
            while Instant::now() < retry {
                let text = d.console_output(uuid).await.unwrap();
                if let Some(v) = printed(&text, key).first() {
                    return v.clone();
                }
                assert!(Instant::now() < deadline, "the guest did not answer {key}:\n{text}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// The guest's uptime in whole seconds, asked on its console under the key `key`.
    async fn uptime(d: &QemuDriver, home: &Home, uuid: &str, key: &str) -> u64 {
        let v = ask(d, home, uuid, key, "$(cut -d. -f1 /proc/uptime)").await;
        v.parse().unwrap_or_else(|_| panic!("uptime {v:?}"))
    }

    /// Issue 16 on a real guest: a paused guest runs nothing (what is typed on its console is
    /// answered only after unpause); a suspended guest has no qemu and its memory in a file,
    /// and after resume it runs on without a boot, its uptime continuing; an NMI reaches the
    /// guest's kernel.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pause_freezes_and_suspend_resume_keeps_the_guest_running_needs_qemu() {
        let f = fixture();
        let d = &f.driver;
        let spec = spec_with(ami(&f.home));
        let uuid = spec.uuid.clone();
        let dir = f.home.instances_dir().join(&uuid);
        d.spawn(&spec).await.unwrap();
        wait_console(d, &uuid, "novabox-guest: ready", 1).await;
        let first = uptime(d, &f.home, &uuid, "UP1").await;

        d.pause(&uuid).await.unwrap();
        assert_eq!(d.power_state(&uuid).await, PowerState::Paused);
        type_line(&f.home, &uuid, "echo MARK=typed-while-paused").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let text = d.console_output(&uuid).await.unwrap();
        assert!(printed(&text, "MARK").is_empty(), "a paused guest answered:\n{text}");
        d.unpause(&uuid).await.unwrap();
        assert_eq!(d.power_state(&uuid).await, PowerState::Running);
        assert_eq!(ask(d, &f.home, &uuid, "MARK", "typed-while-paused").await, "typed-while-paused");

        let before = uptime(d, &f.home, &uuid, "UP2").await;
        assert!(before >= first);
        let pid = qemu_pid(&f.home, &uuid);
        d.suspend(&uuid).await.unwrap();
        assert!(!qemu_alive(pid, &uuid), "qemu still runs after suspend");
        assert!(dir.join(SAVED_STATE).metadata().unwrap().len() > 1 << 20, "the memory is saved");
        assert_eq!(d.power_state(&uuid).await, PowerState::Shutdown);
        assert!(d.pause(&uuid).await.is_err(), "a suspended guest cannot be paused");
        tokio::time::sleep(Duration::from_secs(2)).await;
        d.resume(&uuid).await.unwrap();
        assert_eq!(d.power_state(&uuid).await, PowerState::Running);
        assert!(!dir.join(SAVED_STATE).exists() && !dir.join(SUSPENDED).exists());
        let after = uptime(d, &f.home, &uuid, "UP3").await;
        assert!(after >= before, "uptime went back from {before}s to {after}s: the guest booted again");
        let text = d.console_output(&uuid).await.unwrap();
        assert_eq!(text.matches("novabox-guest: init reached").count(), 1, "resumed, not booted:\n{text}");
        assert!(d.resume(&uuid).await.is_ok(), "resuming a running guest changes nothing");

        d.trigger_crash_dump(&uuid).await.unwrap();
        let text = wait_console(d, &uuid, "NMI", 1).await;
        assert!(text.contains("NMI"), "{text}");

        d.destroy(&uuid).await.unwrap();
        assert!(!dir.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn guest_boots_power_cycles_reboots_and_is_destroyed_needs_qemu() {
        let f = fixture();
        let d = &f.driver;
        let image = ami(&f.home);
        let base = f.home.instances_dir().join("_base").join(&image.id);
        let spec = spec_with(image);
        let uuid = spec.uuid.clone();
        let dir = f.home.instances_dir().join(&uuid);

        d.spawn(&spec).await.unwrap();
        assert_eq!(d.power_state(&uuid).await, PowerState::Running);
        assert_eq!(d.guests().await, vec![uuid.clone()]);
        let text = wait_console(d, &uuid, "novabox-guest: ready", 1).await;
        assert!(text.contains("novabox-guest: init reached"), "{text}");
        assert!(text.contains("novabox-guest: hostname qemu-test-1"), "{text}");
        assert!(text.contains("novabox-guest: public-key ssh-ed25519 AAAAtest driver@novabox"), "{text}");
        for file in ["disk", "disk.eph0", "disk.swap", "disk.config", "kernel", "ramdisk", "qmp.sock", "qemu.pid"] {
            assert!(dir.join(file).exists(), "{file} missing");
        }
        assert!(dir.join(CONSOLE_SOCKET).exists() && dir.join("launch.json").exists());
        for base in ["ephemeral_1G_ext4", "swap_16M"] {
            assert!(f.home.instances_dir().join("_base").join(base).is_file(), "{base} not cached");
        }
        // Root (1 GiB blank, AMI), then ephemeral (1 GiB) and swap (16 MiB), in 512-byte sectors;
        // the ISO config drive is a CD-ROM, not a virtio disk.
        let text = wait_console(d, &uuid, "novabox-guest: disk vdc", 1).await;
        assert!(text.contains("novabox-guest: disk vda 2097152"), "{text}");
        assert!(text.contains("novabox-guest: disk vdb 2097152"), "{text}");
        assert!(text.contains("novabox-guest: disk vdc 32768"), "{text}");
        assert!(!text.contains("novabox-guest: disk vdd"), "{text}");
        assert!(base.is_file());
        let args = std::fs::read_to_string(dir.join("launch.json")).unwrap();
        assert!(args.contains("mac=fa:16:3e:12:34:56") && args.contains("tcg"), "{args}");

        let pid = qemu_pid(&f.home, &uuid);
        d.power_off(&uuid).await.unwrap();
        assert!(!qemu_alive(pid, &uuid));
        assert_eq!(d.power_state(&uuid).await, PowerState::Shutdown);
        d.power_off(&uuid).await.unwrap();
        assert_eq!(d.guests().await, vec![uuid.clone()], "a stopped guest is still a guest");

        d.power_on(&uuid).await.unwrap();
        assert_eq!(d.power_state(&uuid).await, PowerState::Running);
        wait_console(d, &uuid, "novabox-guest: ready", 2).await;

        d.reboot(&uuid, false).await.unwrap();
        wait_console(d, &uuid, "novabox-guest: ready", 3).await;
        let pid = qemu_pid(&f.home, &uuid);
        d.reboot(&uuid, true).await.unwrap();
        assert_ne!(qemu_pid(&f.home, &uuid), pid, "a hard reboot starts a new qemu");
        let text = wait_console(d, &uuid, "novabox-guest: ready", 4).await;
        assert_eq!(text.matches("novabox-guest: hostname qemu-test-1").count(), 4);

        // qemu dies behind the driver's back: the guest is no longer running.
        let pid = qemu_pid(&f.home, &uuid);
        // SAFETY: signalling the qemu this test started, by its pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.power_state(&uuid).await == PowerState::Running {
            assert!(Instant::now() < deadline, "a killed qemu still shows as running");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.power_state(&uuid).await != PowerState::Crashed {
            assert!(Instant::now() < deadline, "a killed qemu is a crash: {:?}", d.power_state(&uuid).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        d.power_on(&uuid).await.unwrap();
        let pid = qemu_pid(&f.home, &uuid);
        d.destroy(&uuid).await.unwrap();
        assert!(!qemu_alive(pid, &uuid));
        assert!(!dir.exists());
        assert!(base.is_file(), "the base image is kept");
        assert_eq!(d.power_state(&uuid).await, PowerState::NoState);
        assert!(d.guests().await.is_empty());
        d.destroy(&uuid).await.unwrap();
        assert!(matches!(d.power_on(&uuid).await, Err(VirtError::NotFound(_))));
    }

    /// Bad images and flavors fail the spawn with the reason, and leave nothing behind.
    #[tokio::test]
    async fn bad_input_fails_cleanly_needs_qemu() {
        let f = fixture();
        let d = &f.driver;
        let store = f.home.images_dir();
        let too_big_id = new_uuid();
        let cases: Vec<(ImageMeta, i64, &str)> = {
            let random = store.join("random");
            std::fs::write(
                &random,
                (0..1 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>(),
            )
            .unwrap();
            let full = store.join("full.qcow2");
            let out = std::process::Command::new(QEMU_IMG)
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&full)
                .arg("2G")
                .output()
                .unwrap();
            assert!(out.status.success());
            let not_a_kernel = store.join("not-a-kernel");
            std::fs::write(&not_a_kernel, b"not a kernel").unwrap();
            let truncated = store.join("truncated.qcow2");
            std::fs::write(&truncated, &std::fs::read(&full).unwrap()[..1000]).unwrap();
            let mut no_kernel = meta(&new_uuid(), "ami", Some(&random));
            no_kernel.properties.insert("kernel_id".into(), "0000-gone".into());
            vec![
                (meta(&new_uuid(), "qcow2", Some(&random)), 1, "is not a valid qcow2 image"),
                (meta(&new_uuid(), "qcow2", Some(&truncated)), 1, "is damaged or truncated"),
                (
                    meta(&too_big_id, "qcow2", Some(&full)),
                    1,
                    "the flavor's root disk (1 GiB) is smaller than the image (2.0 GiB)",
                ),
                (no_kernel, 1, "the kernel image 0000-gone named by kernel_id"),
                (meta(&new_uuid(), "qcow2", None), 1, "has no data on this host"),
                // Gets as far as starting qemu, which refuses the kernel. (qemu takes most
                // header-less garbage as an old zImage and runs it: only a guest that never
                // boots shows that.)
                (meta(&new_uuid(), "aki", Some(&not_a_kernel)), 1, "qemu exited at start: qemu: invalid kernel header"),
            ]
        };
        for (image, root_gb, why) in cases {
            let mut spec = spec_with(image);
            spec.root_gb = root_gb;
            match d.spawn(&spec).await {
                Err(VirtError::Failed(m)) => assert!(m.contains(why), "{m:?} should say {why:?}"),
                other => panic!("{why}: {other:?}"),
            }
            assert!(!f.home.instances_dir().join(&spec.uuid).exists(), "{why}: the instance dir stayed");
        }
        let mut spec = spec_with(meta(&new_uuid(), "qcow2", None));
        spec.uuid = "../escape".into();
        assert!(d.spawn(&spec).await.is_err());
        // Only the good (if too big) image is cached; no half-checked copies stay.
        let cached: Vec<String> = std::fs::read_dir(f.home.instances_dir().join("_base"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            // The flavor's formatted disks are cached too once a build gets that far.
            .filter(|n| !n.starts_with("ephemeral_") && !n.starts_with("swap_"))
            .collect();
        assert_eq!(cached, vec![too_big_id], "bad images must not be cached");
    }
}
