//! A guest's files in its instance dir, built the same way for every driver that runs qemu
//! (the qemu driver itself, and libvirt): the checked base image cache, the root disk as a
//! qcow2 overlay on it, the flavor's ephemeral and swap disks, AMI-style kernel and ramdisk,
//! and the config drive's tree. What a driver adds (qemu arguments, a libvirt domain) is its own.
//!
//! | file            | what                                                            |
//! |-----------------|-----------------------------------------------------------------|
//! | `disk`          | root disk: a qcow2 overlay on the cached base image             |
//! | `disk.eph0`     | ephemeral disk: qcow2 overlay on `_base/ephemeral_<N>G_ext4` (ext4 `ephemeral0`) |
//! | `disk.swap`     | swap disk: qcow2 overlay on `_base/swap_<N>M` (mkswap'ed)       |
//! | `kernel`, `ramdisk` | copies (hard links) of AMI-style kernel and ramdisk images  |
//! | `config-drive/` | the config drive's files (`configdrive::write`)                 |
//! | `disk.config`   | the same files as an ISO9660 image labelled `config-2` (iso9660 format) |
//!
//! Base images are hard links in `<instances>/_base/<image id>`, checked with `qemu-img` once,
//! and kept when guests are destroyed (and when the image is deleted from the store).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use super::{configdrive, disks, imagecache, GuestSpec, ImageMeta, VirtError};

/// How long a guest gets to shut down after the ACPI power button before it is stopped hard
/// (nova's `shutdown_timeout`). The image property `os_shutdown_timeout` overrides it.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// The kernel command line of AMI-style boots unless the image sets `os_command_line`.
/// `no_timer_check`: under TCG on a loaded host the kernel can time its IO-APIC timer check out
/// and panic ("IO-APIC + timer doesn't work"); cloud images (cirros) boot with it for that reason.
pub const DEFAULT_CMDLINE: &str = "root=/dev/vda console=tty0 console=ttyS0 no_timer_check";

fn failed(message: impl Into<String>) -> VirtError {
    VirtError::Failed(message.into())
}

/// What a driver attaches after `GuestFiles::prepare`.
#[derive(Debug)]
pub struct Prepared {
    /// qcow2 disks in the order the guest sees them: root (when any), ephemeral, swap.
    pub disks: Vec<PathBuf>,
    /// The kernel to boot directly (AMI style), its ramdisk and command line, in the instance dir.
    pub kernel: Option<KernelBoot>,
    /// The config drive's tree.
    pub config_drive: PathBuf,
    /// The config drive as an ISO9660 image (`disk.config`), when the driver asked for one.
    pub config_drive_iso: Option<PathBuf>,
    pub shutdown_timeout_secs: u64,
}

/// Builds guests' files with `qemu-img`, caching base images in `<instances>/_base`.
pub struct GuestFiles {
    qemu_img: PathBuf,
    base_dir: PathBuf,
    /// Builds `disk.config` when set (config_drive_format = iso9660).
    iso_tool: Option<disks::IsoTool>,
}

impl GuestFiles {
    pub fn new(qemu_img: PathBuf, instances_dir: &Path) -> GuestFiles {
        GuestFiles { qemu_img, base_dir: instances_dir.join("_base"), iso_tool: None }
    }

    /// ISO9660 config drives with this tool from now on; None for the tree only (vfat).
    pub fn set_iso_tool(&mut self, tool: Option<disks::IsoTool>) {
        self.iso_tool = tool;
    }

    pub fn iso_tool(&self) -> Option<&disks::IsoTool> {
        self.iso_tool.as_ref()
    }

    async fn qemu_img(&self, args: &[&str]) -> Result<std::process::Output, VirtError> {
        tokio::process::Command::new(&self.qemu_img)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| failed(format!("cannot run {}: {e}", self.qemu_img.display())))
    }

    /// `qemu-img info` of a file in the given format, refusing what is not a plain disk image.
    async fn inspect(&self, file: &Path, format: &str, what: &str) -> Result<Value, VirtError> {
        let path = path_str(file)?;
        let out = self.qemu_img(&["info", "-f", format, "--output=json", path]).await?;
        if !out.status.success() {
            return Err(failed(format!("{what} is not a valid {format} image: {}", last_line(&out.stderr))));
        }
        let info: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| failed(format!("cannot read qemu-img's description of {what}: {e}")))?;
        // A backing file or external data file in an uploaded image would let it read any file
        // on this host.
        if info.get("backing-filename").is_some() {
            return Err(failed(format!("{what} has a backing file; upload a self-contained image")));
        }
        if info.pointer("/format-specific/data/data-file").is_some() {
            return Err(failed(format!("{what} has an external data file; upload a self-contained image")));
        }
        if format == "qcow2" {
            let out = self.qemu_img(&["check", "-f", "qcow2", path]).await?;
            // 0: clean, 3: only leaked clusters (harmless). 1 and 2: damaged or truncated.
            if !matches!(out.status.code(), Some(0) | Some(3)) {
                let why = last_line(&out.stderr);
                let why = if why.is_empty() { last_line(&out.stdout) } else { why };
                return Err(failed(format!("{what} is damaged or truncated (qemu-img check: {why})")));
            }
        }
        Ok(info)
    }

    /// The checked base image for `image`, cached as a hard link so that deleting the image
    /// from the store does not pull the disk from under running guests.
    async fn base_image(&self, image: &ImageMeta, file: &Path, format: &str) -> Result<(PathBuf, u64), VirtError> {
        if uuid::Uuid::parse_str(&image.id).is_err() {
            return Err(failed(format!("image id {} is not a uuid", image.id)));
        }
        let base_dir = &self.base_dir;
        std::fs::create_dir_all(base_dir).map_err(|e| failed(format!("cannot create {}: {e}", base_dir.display())))?;
        let base = base_dir.join(&image.id);
        if base.is_file() {
            // Used now: the image cache keeps it at least image_cache_max_age_secs from here,
            // also in the moment before the guest's overlay names it.
            imagecache::touch(&base, crate::clock::system_now());
            let info = self.inspect(&base, format, &format!("image {}", image.id)).await?;
            return Ok((base, virtual_size(&info)));
        }
        let tmp = base_dir.join(format!(".{}.{}", image.id, uuid::Uuid::new_v4().simple()));
        link_or_copy(file, &tmp)?;
        let checked = self.inspect(&tmp, format, &format!("image {}", image.id)).await;
        let info = match checked {
            Ok(info) => info,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, &base).map_err(|e| failed(format!("cannot create {}: {e}", base.display())))?;
        Ok((base, virtual_size(&info)))
    }

    /// Builds the guest's disks, kernel and config drive tree in `dir`. On error, what it
    /// made is left in `dir` for the caller to remove with the dir.
    pub async fn prepare(&self, spec: &GuestSpec, dir: &Path) -> Result<Prepared, VirtError> {
        let image = spec
            .image
            .as_ref()
            .ok_or_else(|| failed("novabox boots from images only; booting from a volume is not supported yet"))?;
        if spec.memory_mb <= 0 || spec.vcpus <= 0 {
            return Err(failed(format!("the flavor has {} MB and {} vCPUs", spec.memory_mb, spec.vcpus)));
        }
        let plan = boot_plan(image)?;
        let root_bytes = (spec.root_gb.max(0) as u64) << 30;
        let disk = dir.join("disk");
        let mut disks: Vec<PathBuf> = Vec::new();
        if let Some(boot) = spec.volumes.iter().find(|v| v.boot) {
            // Boot from volume: the volume is the root disk; a kernel image still boots it.
            let file = PathBuf::from(&boot.path);
            if !file.is_absolute() || !file.is_file() {
                return Err(failed(format!("boot volume {} has no file at {}", boot.volume_id, boot.path)));
            }
            disks.push(file);
        } else if let Some((file, format)) = &plan.root {
            let (base, vsize) = self.base_image(image, file, format).await?;
            if root_bytes > 0 && vsize > root_bytes {
                return Err(failed(format!(
                    "the flavor's root disk ({} GiB) is smaller than the image ({})",
                    spec.root_gb,
                    human_bytes(vsize)
                )));
            }
            let mut args = vec!["create", "-q", "-f", "qcow2", "-F", format, "-b", path_str(&base)?, path_str(&disk)?];
            let size = root_bytes.to_string();
            if root_bytes > vsize {
                args.push(&size);
            }
            self.run_qemu_img(&args, "the root disk").await?;
            disks.push(disk);
        } else if root_bytes > 0 {
            // A kernel image boots without a root image; the flavor's root disk is blank.
            self.blank_disk(&disk, root_bytes).await?;
            disks.push(disk);
        }
        disks.extend(self.flavor_disks(spec, dir).await?);
        let config_drive = dir.join("config-drive");
        configdrive::write(&config_drive, spec).map_err(|e| failed(e.to_string()))?;
        let config_drive_iso = match &self.iso_tool {
            Some(tool) => {
                let iso = dir.join("disk.config");
                disks::build_iso(tool, &config_drive, &iso, configdrive::LABEL)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                Some(iso)
            }
            None => None,
        };

        let kernel = match plan.kernel {
            Some(k) => {
                let kernel = dir.join("kernel");
                link_or_copy(&k.kernel, &kernel)?;
                let ramdisk = match &k.ramdisk {
                    Some(r) => {
                        let ramdisk = dir.join("ramdisk");
                        link_or_copy(r, &ramdisk)?;
                        Some(ramdisk)
                    }
                    None => None,
                };
                Some(KernelBoot { kernel, ramdisk, cmdline: k.cmdline })
            }
            None => None,
        };
        let shutdown_timeout_secs = image
            .properties
            .get("os_shutdown_timeout")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT.as_secs());
        Ok(Prepared { disks, kernel, config_drive, config_drive_iso, shutdown_timeout_secs })
    }

    /// The flavor's ephemeral disk (`disk.eph0`, ext4 `ephemeral0`) and swap disk
    /// (`disk.swap`), in nova's order after the root disk: qcow2 overlays on formatted bases
    /// in the image cache. A full host disk says so.
    async fn flavor_disks(&self, spec: &GuestSpec, dir: &Path) -> Result<Vec<PathBuf>, VirtError> {
        let why = |e: disks::DiskError| {
            if e.is_no_space() {
                failed(format!("{e} (the disk holding {} is full: free space there)", self.base_dir.display()))
            } else {
                failed(e.to_string())
            }
        };
        let mut out = Vec::new();
        if spec.ephemeral_gb > 0 {
            let base = disks::ephemeral_base(&self.base_dir, spec.ephemeral_gb as u64).await.map_err(why)?;
            let eph = dir.join("disk.eph0");
            // A build starts from an empty dir; only a rebuild with `preserve_ephemeral` finds
            // the disk it kept (see `clear_for_rebuild`).
            if !eph.is_file() {
                self.overlay(&base, &eph, "the ephemeral disk").await?;
            }
            out.push(eph);
        }
        if spec.swap_mb > 0 {
            let base = disks::swap_base(&self.base_dir, spec.swap_mb as u64).await.map_err(why)?;
            let swap = dir.join("disk.swap");
            self.overlay(&base, &swap, "the swap disk").await?;
            out.push(swap);
        }
        Ok(out)
    }

    // Issue 16: what rebuild, resize and snapshot do to a guest's disks, for every driver
    // that runs qemu.

    /// The root disk grown to `bytes` with `qemu-img resize`; a smaller size is refused with
    /// nova's libvirt text.
    pub async fn grow(&self, disk: &Path, bytes: u64) -> Result<(), VirtError> {
        let have = self.disk_virtual_size(disk).await?;
        if bytes < have {
            return Err(failed("Unable to resize disk down."));
        }
        if bytes > have {
            self.run_qemu_img(
                &["resize", "-q", "-f", "qcow2", path_str(disk)?, &bytes.to_string()],
                "the grown root disk",
            )
            .await?;
        }
        Ok(())
    }

    /// One self-contained qcow2 of `disk` and its backing chain at `to`. `-U`: qemu holds the
    /// image's lock while it runs, so the caller stops the guest first for a consistent read.
    pub async fn flatten(&self, disk: &Path, to: &Path) -> Result<(), VirtError> {
        let out =
            self.qemu_img(&["convert", "-U", "-f", "qcow2", "-O", "qcow2", path_str(disk)?, path_str(to)?]).await?;
        if !out.status.success() {
            let _ = std::fs::remove_file(to);
            return Err(failed(format!("qemu-img convert failed: {}", last_line(&out.stderr))));
        }
        Ok(())
    }

    async fn disk_virtual_size(&self, disk: &Path) -> Result<u64, VirtError> {
        let out = self.qemu_img(&["info", "-U", "-f", "qcow2", "--output=json", path_str(disk)?]).await?;
        if !out.status.success() {
            return Err(failed(format!("qemu-img info failed: {}", last_line(&out.stderr))));
        }
        let info: Value =
            serde_json::from_slice(&out.stdout).map_err(|e| failed(format!("cannot read qemu-img info: {e}")))?;
        Ok(virtual_size(&info))
    }

    async fn overlay(&self, base: &Path, disk: &Path, what: &str) -> Result<(), VirtError> {
        self.run_qemu_img(&["create", "-q", "-f", "qcow2", "-F", "raw", "-b", path_str(base)?, path_str(disk)?], what)
            .await
    }

    async fn blank_disk(&self, path: &Path, bytes: u64) -> Result<(), VirtError> {
        self.run_qemu_img(&["create", "-q", "-f", "qcow2", path_str(path)?, &bytes.to_string()], "a blank disk").await
    }

    async fn run_qemu_img(&self, args: &[&str], what: &str) -> Result<(), VirtError> {
        let out = self.qemu_img(args).await?;
        if !out.status.success() {
            return Err(failed(format!("cannot create {what}: {}", last_line(&out.stderr))));
        }
        Ok(())
    }
}

/// What to boot: a root image, a kernel, or both.
#[derive(Debug)]
pub struct BootPlan {
    pub root: Option<(PathBuf, &'static str)>,
    pub kernel: Option<KernelBoot>,
}

#[derive(Debug)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub ramdisk: Option<PathBuf>,
    pub cmdline: String,
}

fn image_file(image: &ImageMeta, role: &str) -> Result<PathBuf, VirtError> {
    match &image.file {
        Some(f) if Path::new(f).is_file() => Ok(PathBuf::from(f)),
        _ => Err(failed(format!("the {role} image {} has no data on this host (is it active?)", image.id))),
    }
}

/// Reads the image's format and its AMI links: `qcow2` and `raw` boot from disk, `ami` from
/// its kernel (`kernel_id`) with its raw image as root disk, `aki` is itself the kernel
/// (with `ramdisk_id`), and any image with `kernel_id` boots that kernel directly.
pub fn boot_plan(image: &ImageMeta) -> Result<BootPlan, VirtError> {
    let format = image.disk_format.as_deref().unwrap_or("");
    let linked = |key: &str, resolved: &Option<Box<ImageMeta>>, role: &str| -> Result<Option<PathBuf>, VirtError> {
        match (image.properties.get(key), resolved) {
            (None, _) => Ok(None),
            (Some(id), None) => {
                Err(failed(format!("the {role} image {id} named by {key} of image {} does not exist", image.id)))
            }
            (Some(_), Some(meta)) => image_file(meta, role).map(Some),
        }
    };
    let cmdline = image.properties.get("os_command_line").cloned().unwrap_or_else(|| DEFAULT_CMDLINE.into());
    let ramdisk = linked("ramdisk_id", &image.ramdisk, "ramdisk")?;
    match format {
        "qcow2" | "raw" | "ami" => {
            let root = Some((image_file(image, "boot")?, if format == "qcow2" { "qcow2" } else { "raw" }));
            let kernel = linked("kernel_id", &image.kernel, "kernel")?;
            if format == "ami" && kernel.is_none() {
                return Err(failed(format!("the AMI image {} has no kernel_id", image.id)));
            }
            Ok(BootPlan { root, kernel: kernel.map(|kernel| KernelBoot { kernel, ramdisk, cmdline }) })
        }
        "aki" => Ok(BootPlan {
            root: None,
            kernel: Some(KernelBoot { kernel: image_file(image, "kernel")?, ramdisk, cmdline }),
        }),
        "ari" => Err(failed(format!("image {} is a ramdisk (ari); boot its AMI or kernel image instead", image.id))),
        other => Err(failed(format!(
            "novabox cannot boot disk_format {other:?} (image {}); use qcow2, raw, ami or aki",
            image.id
        ))),
    }
}

fn virtual_size(info: &Value) -> u64 {
    info.get("virtual-size").and_then(Value::as_u64).unwrap_or(0)
}

pub fn path_str(p: &Path) -> Result<&str, VirtError> {
    p.to_str().ok_or_else(|| failed(format!("the path {} is not UTF-8", p.display())))
}

/// Hard-links `from` to `to` (same filesystem, no copy), copying when that is not possible.
pub fn link_or_copy(from: &Path, to: &Path) -> Result<(), VirtError> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| failed(format!("cannot copy {} to {}: {e}", from.display(), to.display())))
}

pub fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// The last `max` bytes of the file, starting at a line boundary; empty when it is missing.
pub fn read_tail(path: &Path, max: u64) -> Result<String, VirtError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(failed(format!("cannot read {}: {e}", path.display()))),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start)).map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
    if start > 0 {
        if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            buf.drain(..=nl);
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The serial a volume's disk carries, so the guest (and the driver) can find it again: the
/// first 20 characters of the volume id, virtio-blk's limit, as nova sets it.
pub fn volume_serial(volume_id: &str) -> String {
    volume_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(20).collect()
}

/// The MAC in canonical lower case when it is six hex pairs; anything else could smuggle
/// options into a qemu argument or XML.
pub fn valid_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then(|| mac.to_ascii_lowercase())
}

/// Empties a guest's dir for a rebuild: everything goes but the console log (so the console
/// shows the guest booting again) and, with `preserve_ephemeral`, the ephemeral disk.
pub fn clear_for_rebuild(dir: &Path, preserve_ephemeral: bool) -> Result<(), VirtError> {
    let entries = std::fs::read_dir(dir).map_err(|e| failed(format!("cannot read {}: {e}", dir.display())))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let keep = name == "console.log" || (preserve_ephemeral && name == "disk.eph0");
        if keep {
            continue;
        }
        let path = e.path();
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.map_err(|err| failed(format!("cannot remove {}: {err}", path.display())))?;
    }
    Ok(())
}

/// The file a snapshot of the guest in `dir` is copied to for the image service.
pub fn snapshot_file(dir: &Path, image_id: &str) -> Result<PathBuf, VirtError> {
    // The id becomes a file name: only a uuid can never escape the dir.
    if uuid::Uuid::parse_str(image_id).is_err() {
        return Err(failed(format!("image id {image_id:?} is not a uuid")));
    }
    Ok(dir.join(format!("snapshot-{image_id}.qcow2")))
}

/// Removes the snapshot copies in `dir` (a restart cut their upload off).
pub fn remove_snapshot_files(dir: &Path) -> Result<(), VirtError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("snapshot-") {
            std::fs::remove_file(e.path())
                .map_err(|err| failed(format!("cannot remove {}: {err}", e.path().display())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn meta(id: &str, format: &str, file: Option<&Path>) -> ImageMeta {
        ImageMeta {
            id: id.into(),
            name: Some(format!("{format} image")),
            disk_format: Some(format.into()),
            container_format: Some(format.into()),
            size: None,
            file: file.map(|f| f.to_string_lossy().into_owned()),
            properties: Default::default(),
            kernel: None,
            ramdisk: None,
        }
    }

    #[test]
    fn boot_plans() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let plan = boot_plan(&meta("q", "qcow2", Some(&f))).unwrap();
        assert_eq!(plan.root.as_ref().map(|r| r.1), Some("qcow2"));
        assert!(plan.kernel.is_none());

        let mut aki = meta("k", "aki", Some(&f));
        aki.properties.insert("ramdisk_id".into(), "r".into());
        aki.ramdisk = Some(Box::new(meta("r", "ari", Some(&f))));
        let plan = boot_plan(&aki).unwrap();
        assert!(plan.root.is_none());
        let k = plan.kernel.unwrap();
        assert_eq!(k.ramdisk.as_deref(), Some(f.as_path()));
        assert_eq!(k.cmdline, DEFAULT_CMDLINE);

        let mut ami = meta("a", "ami", Some(&f));
        let e = boot_plan(&ami).unwrap_err().to_string();
        assert!(e.contains("has no kernel_id"), "{e}");
        ami.properties.insert("kernel_id".into(), "gone".into());
        let e = boot_plan(&ami).unwrap_err().to_string();
        assert!(e.contains("the kernel image gone named by kernel_id of image a does not exist"), "{e}");
        ami.kernel = Some(Box::new(meta("gone", "aki", None)));
        let e = boot_plan(&ami).unwrap_err().to_string();
        assert!(e.contains("has no data on this host"), "{e}");

        let e = boot_plan(&meta("v", "vmdk", Some(&f))).unwrap_err().to_string();
        assert!(e.contains("cannot boot disk_format \"vmdk\""), "{e}");
        assert!(boot_plan(&meta("r", "ari", Some(&f))).is_err());
    }

    #[test]
    fn console_tail_starts_at_a_line() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("console.log");
        assert_eq!(read_tail(&f, 10).unwrap(), "");
        std::fs::write(&f, "first line\nsecond\nthird\n").unwrap();
        assert_eq!(read_tail(&f, 10).unwrap(), "third\n");
        assert_eq!(read_tail(&f, 1000).unwrap(), "first line\nsecond\nthird\n");
    }
}
