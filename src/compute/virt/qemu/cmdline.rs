//! The qemu command line of a guest: built once from its spec (`prepare`), kept in the
//! instance's `launch.json` so every power-on starts the same machine, with the attached
//! volumes and the ssh forward of user networking added at each start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::super::guestfiles::{path_str, valid_mac, volume_serial as serial, Prepared};
use super::super::{configdrive, GuestSpec, VirtError, VolumeDisk};
use super::{console, failed, QemuDriver};
use crate::config::Accel;

/// What power-on needs to start the same machine again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Launch {
    pub(super) args: Vec<String>,
    pub(super) shutdown_timeout_secs: u64,
    /// Volumes attached after the boot disk (hot-pluggable), added to `args` at each start.
    #[serde(default)]
    pub(super) volumes: Vec<VolumeDisk>,
    /// The host port forwarded to the guest's port 22 (user networking only). Kept here so a
    /// guest keeps its port across power cycles and `down`/`up`; freed with the instance dir.
    #[serde(default)]
    pub(super) ssh_port: Option<u16>,
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
pub(super) fn with_ssh_forward(args: &[String], port: Option<u16>) -> Vec<String> {
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

impl QemuDriver {
    /// Builds the guest's files and its qemu arguments.
    pub(super) async fn prepare(&self, spec: &GuestSpec, dir: &Path) -> Result<Launch, VirtError> {
        let prepared = self.files.prepare(spec, dir).await?;
        let disks = &prepared.disks;
        let qmp = dir.join("qmp.sock");
        console::check_socket_path(dir)?;
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
        push(&["-chardev", &console::serial_chardev(dir)?]);
        push(&["-serial", "chardev:serial0"]);
        // The graphical console (issue 22): a VGA card and qemu's VNC server on a unix socket
        // only novabox's websocket proxy reaches, never a TCP port.
        push(&["-vga", "std", "-vnc", &console::vnc_display(dir)?]);
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

    /// The launch with a usable ssh forward port: the saved one while it is free, else a new
    /// one (saved, and logged, since a user's ssh config may name the old one).
    pub(super) fn keep_ssh_port(&self, uuid: &str, dir: &Path, launch: &Launch) -> Result<Launch, VirtError> {
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

    /// A guest created before novabox gave guests a screen (issue 22) gets one at its next
    /// cold start, kept in `launch.json`; never on resume, since a saved machine must come back
    /// on the devices it was saved with.
    pub(super) fn with_vnc(&self, dir: &Path, launch: &Launch) -> Result<Launch, VirtError> {
        if launch.args.iter().any(|a| a == "-vnc") {
            return Ok(launch.clone());
        }
        let mut launch = launch.clone();
        launch.args.extend(["-vga".to_string(), "std".to_string(), "-vnc".to_string(), console::vnc_display(dir)?]);
        self.save_launch(dir, &launch)?;
        Ok(launch)
    }

    pub(super) fn launch(&self, dir: &Path, uuid: &str) -> Result<Launch, VirtError> {
        let file = dir.join("launch.json");
        let text = match std::fs::read(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(VirtError::NotFound(uuid.to_string())),
            Err(e) => return Err(failed(format!("cannot read {}: {e}", file.display()))),
        };
        serde_json::from_slice(&text).map_err(|e| failed(format!("{} is damaged: {e}", file.display())))
    }

    pub(super) fn save_launch(&self, dir: &Path, launch: &Launch) -> Result<(), VirtError> {
        let text = serde_json::to_vec_pretty(launch).map_err(|e| failed(e.to_string()))?;
        crate::home::write_atomic(&dir.join("launch.json"), &text, 0o600)
            .map_err(|e| failed(format!("cannot write {}: {e}", dir.join("launch.json").display())))
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

/// The config drive's qemu arguments: the ISO9660 image on an IDE CD-ROM as nova attaches it
/// (it takes no virtio disk name, so the flavor's disks stay vdb, vdc), or qemu's read-only
/// vvfat view of the tree as a virtio disk after them.
fn config_drive_args(prepared: &Prepared) -> Result<Vec<String>, VirtError> {
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

pub(super) fn accel_name(accel: Accel) -> &'static str {
    if accel == Accel::Kvm {
        "kvm"
    } else {
        "tcg"
    }
}

/// A path inside a qemu `key=value,...` option: commas are doubled.
pub(super) fn opt_path(p: &Path) -> Result<String, VirtError> {
    Ok(path_str(p)?.replace(',', ",,"))
}

/// The block node and device ids of a volume: a letter and 24 hex digits of its id (node
/// names are at most 31 characters).
pub(super) fn volume_names(volume_id: &str) -> Result<(String, String), VirtError> {
    let hex = uuid::Uuid::parse_str(volume_id)
        .map_err(|_| failed(format!("volume id {volume_id:?} is not a uuid")))?
        .simple()
        .to_string();
    Ok((format!("n{}", &hex[..24]), format!("v{}", &hex[..24])))
}

pub(super) fn volume_file(disk: &VolumeDisk) -> Result<PathBuf, VirtError> {
    let file = PathBuf::from(&disk.path);
    if !file.is_absolute() || !file.is_file() {
        return Err(failed(format!("volume {} has no file at {}", disk.volume_id, disk.path)));
    }
    Ok(file)
}

/// The command-line arguments of the attached (not boot) volumes.
pub(super) fn volume_args(volumes: &[VolumeDisk]) -> Result<Vec<String>, VirtError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::virt::guestfiles::valid_mac;

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
    fn macs_are_checked_and_paths_escaped() {
        assert_eq!(valid_mac("FA:16:3e:00:00:0a").as_deref(), Some("fa:16:3e:00:00:0a"));
        assert_eq!(valid_mac("fa:16:3e:00:00:0a,id=x"), None);
        assert_eq!(valid_mac("fa:16:3e:00:00"), None);
        assert_eq!(opt_path(Path::new("/a,b/c")).unwrap(), "/a,,b/c");
    }
}
