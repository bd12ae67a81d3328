//! The disks a guest gets besides its root disk, built with host tools so that every driver
//! (qemu today, libvirt later) attaches the same files:
//!
//! - the config drive as an ISO9660 image labelled `config-2` (nova's default
//!   `config_drive_format = iso9660`), made with `genisoimage` or `xorriso`;
//! - the flavor's ephemeral disk: a sparse raw file formatted ext4, labelled `ephemeral0`
//!   (nova's `virt_mkfs` default for Linux guests), so cloud-init mounts it as /mnt;
//! - the flavor's swap disk: a sparse raw file set up with `mkswap`.
//!
//! Like nova, the formatted ephemeral and swap disks are built once per size as raw files in
//! the image cache (`_base/ephemeral_<N>G_ext4`, `_base/swap_<N>M`) and each guest gets a
//! qcow2 overlay on them: formatting happens once per size, not once per boot, and the image
//! cache removes such a base when no guest has used it for its maximum age.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::hostpkgs;

/// The filesystem label of the ephemeral disk (nova's `_ephemeral_label`-like `ephemeral0`).
pub const EPHEMERAL_LABEL: &str = "ephemeral0";

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("{program} is not installed, but the {what} needs it: sudo apt-get install {package}")]
    Missing { program: &'static str, package: &'static str, what: &'static str },
    #[error("cannot run {program}: {source}")]
    Run { program: String, source: std::io::Error },
    #[error("{program} failed to build the {what} {path}: {detail}")]
    Failed { program: String, what: &'static str, path: PathBuf, detail: String },
    #[error("the path {0} is not UTF-8")]
    Path(PathBuf),
}

impl DiskError {
    /// True when the host's disk is full (nothing but freeing space helps).
    pub fn is_no_space(&self) -> bool {
        match self {
            DiskError::Create { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            DiskError::Failed { detail, .. } => detail.contains("No space left on device"),
            _ => false,
        }
    }
}

/// An ISO9660 image builder found on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoTool {
    pub program: PathBuf,
    /// `xorriso` speaks mkisofs' options only after `-as mkisofs`.
    xorriso: bool,
}

/// genisoimage (what nova runs), then mkisofs, then xorriso; None when none is installed.
pub fn find_iso_tool() -> Option<IsoTool> {
    for name in ["genisoimage", "mkisofs"] {
        if let Some(program) = hostpkgs::find_program(name) {
            return Some(IsoTool { program, xorriso: false });
        }
    }
    hostpkgs::find_program("xorriso").map(|program| IsoTool { program, xorriso: true })
}

/// Builds `iso` from the tree in `dir` with volume label `label`, with nova's options: Rock
/// Ridge and Joliet, lower-case and multi-dot names kept, so `openstack/latest/meta_data.json`
/// reads the same whether the guest's isofs uses Rock Ridge or not.
pub async fn build_iso(tool: &IsoTool, dir: &Path, iso: &Path, label: &str) -> Result<(), DiskError> {
    let mut args: Vec<&str> = Vec::new();
    if tool.xorriso {
        args.extend(["-as", "mkisofs"]);
    }
    args.extend(["-o", utf8(iso)?, "-ldots", "-allow-lowercase", "-allow-multidot", "-l"]);
    args.extend(["-publisher", "novabox", "-quiet", "-J", "-r", "-V", label, utf8(dir)?]);
    let result = run(&tool.program, &args, "config drive", iso).await;
    if result.is_err() {
        let _ = std::fs::remove_file(iso);
    }
    result
}

/// A sparse raw file of `bytes`, formatted ext4 with label `label`.
pub async fn ephemeral_disk(path: &Path, bytes: u64, label: &str) -> Result<(), DiskError> {
    let mkfs = hostpkgs::find_program("mkfs.ext4").ok_or(DiskError::Missing {
        program: "mkfs.ext4",
        package: "e2fsprogs",
        what: "ephemeral disk",
    })?;
    sparse_file(path, bytes)?;
    // -F: it is a file, not a block device; -q: mke2fs' progress is noise in the logs.
    // lazy_itable_init: the guest initializes inode tables in the background, as on a real
    // first boot, instead of this host writing them all now.
    let args = ["-F", "-q", "-L", label, "-E", "lazy_itable_init=1,lazy_journal_init=1", utf8(path)?];
    let result = run(&mkfs, &args, "ephemeral disk", path).await;
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// A sparse raw file of `bytes` with a swap signature.
pub async fn swap_disk(path: &Path, bytes: u64) -> Result<(), DiskError> {
    let mkswap = hostpkgs::find_program("mkswap").ok_or(DiskError::Missing {
        program: "mkswap",
        package: "util-linux",
        what: "swap disk",
    })?;
    sparse_file(path, bytes)?;
    let result = run(&mkswap, &[utf8(path)?], "swap disk", path).await;
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// The cached formatted ephemeral disk of `gb` GiB in `base_dir`, built when missing.
pub async fn ephemeral_base(base_dir: &Path, gb: u64) -> Result<PathBuf, DiskError> {
    let name = format!("ephemeral_{gb}G_ext4");
    cached(base_dir, &name, |tmp| async move { ephemeral_disk(&tmp, gb << 30, EPHEMERAL_LABEL).await }).await
}

/// The cached swap disk of `mb` MiB in `base_dir`, built when missing.
pub async fn swap_base(base_dir: &Path, mb: u64) -> Result<PathBuf, DiskError> {
    let name = format!("swap_{mb}M");
    cached(base_dir, &name, |tmp| async move { swap_disk(&tmp, mb << 20).await }).await
}

/// `base_dir/name`, built by `build` under a temporary name and then linked into place, which
/// fails when another build got there first (that one is kept: guests may already use it).
async fn cached<F, Fut>(base_dir: &Path, name: &str, build: F) -> Result<PathBuf, DiskError>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<(), DiskError>>,
{
    let base = base_dir.join(name);
    if base.is_file() {
        super::imagecache::touch(&base, crate::clock::system_now());
        return Ok(base);
    }
    std::fs::create_dir_all(base_dir).map_err(|source| DiskError::Create { path: base_dir.to_path_buf(), source })?;
    let tmp = base_dir.join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
    build(tmp.clone()).await?;
    let linked = std::fs::hard_link(&tmp, &base);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(base),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(base),
        Err(source) => Err(DiskError::Create { path: base, source }),
    }
}

fn sparse_file(path: &Path, bytes: u64) -> Result<(), DiskError> {
    let error = |source| DiskError::Create { path: path.to_path_buf(), source };
    // create_new: an existing disk (another guest's, or this one's) is never overwritten.
    let f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(error)?;
    f.set_len(bytes).map_err(|e| {
        let _ = std::fs::remove_file(path);
        error(e)
    })
}

async fn run(program: &Path, args: &[&str], what: &'static str, path: &Path) -> Result<(), DiskError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| DiskError::Run { program: program.display().to_string(), source })?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let detail = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim().to_string();
    Err(DiskError::Failed { program: program.display().to_string(), what, path: path.to_path_buf(), detail })
}

fn utf8(p: &Path) -> Result<&str, DiskError> {
    p.to_str().ok_or_else(|| DiskError::Path(p.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blkid_label(path: &Path) -> Option<String> {
        let blkid = hostpkgs::find_program("blkid")?;
        let out = std::process::Command::new(blkid).args(["-o", "value", "-s", "LABEL"]).arg(path).output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    #[tokio::test]
    async fn ephemeral_disk_is_ext4_with_its_label_and_sparse() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("disk.eph0");
        ephemeral_disk(&p, 256 << 20, EPHEMERAL_LABEL).await.unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), 256 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 64 << 20, "the file is sparse: {} blocks", meta.blocks());
        // The ext4 superblock: magic 0xEF53 at 1024+56, volume name at 1024+120.
        let head = std::fs::read(&p).map(|d| d[..2048].to_vec()).unwrap();
        assert_eq!(&head[1024 + 56..1024 + 58], &[0x53, 0xef]);
        assert_eq!(&head[1024 + 120..1024 + 120 + EPHEMERAL_LABEL.len()], EPHEMERAL_LABEL.as_bytes());
        if let Some(label) = blkid_label(&p) {
            assert_eq!(label, EPHEMERAL_LABEL);
        }
        // Never over an existing file (a guest's disk must not be formatted twice).
        assert!(matches!(ephemeral_disk(&p, 1 << 20, "x").await, Err(DiskError::Create { .. })));
        assert!(p.exists(), "the existing disk is left alone");
    }

    #[tokio::test]
    async fn bases_are_built_once_and_reused() {
        let t = tempfile::tempdir().unwrap();
        let a = ephemeral_base(t.path(), 1).await.unwrap();
        assert_eq!(a, t.path().join("ephemeral_1G_ext4"));
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let first = ino(&a);
        assert_eq!(ephemeral_base(t.path(), 1).await.unwrap(), a);
        assert_eq!(ino(&a), first, "the cached base is reused, not rebuilt");
        let s = swap_base(t.path(), 64).await.unwrap();
        assert_eq!(std::fs::metadata(&s).unwrap().len(), 64 << 20);
        let names: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporary files stay: {names:?}");
    }

    #[tokio::test]
    async fn swap_disk_has_the_swap_signature() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("disk.swap");
        swap_disk(&p, 64 << 20).await.unwrap();
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 64 << 20);
        // The signature ends the first 4 KiB page.
        assert_eq!(&data[4096 - 10..4096], b"SWAPSPACE2");
    }

    #[tokio::test]
    async fn a_disk_too_small_to_format_fails_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("disk.swap");
        let e = swap_disk(&p, 4096).await.unwrap_err();
        assert!(matches!(e, DiskError::Failed { .. }), "{e}");
        assert!(e.to_string().contains("swap disk"), "{e}");
        assert!(!p.exists());
    }

    #[tokio::test]
    async fn iso_config_drive_has_label_and_files() {
        let Some(tool) = find_iso_tool() else {
            panic!("genisoimage or xorriso is needed: run scripts/install-deps");
        };
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("openstack/latest")).unwrap();
        std::fs::write(tree.join("openstack/latest/meta_data.json"), b"{\"hostname\":\"h\"}").unwrap();
        let iso = t.path().join("disk.config");
        build_iso(&tool, &tree, &iso, "config-2").await.unwrap();
        let data = std::fs::read(&iso).unwrap();
        // The primary volume descriptor at sector 16: type 1, "CD001", the volume id at 40.
        let pvd = &data[16 * 2048..17 * 2048];
        assert_eq!(&pvd[1..6], b"CD001");
        assert_eq!(std::str::from_utf8(&pvd[40..72]).unwrap().trim_end(), "config-2");
        // Rock Ridge keeps the real (lower-case, dotted) name.
        assert!(data.windows(14).any(|w| w == b"meta_data.json"));

        let e = build_iso(&tool, &t.path().join("missing"), &t.path().join("bad.iso"), "config-2").await.unwrap_err();
        assert!(matches!(e, DiskError::Failed { .. }), "{e}");
        assert!(!t.path().join("bad.iso").exists(), "no half-written ISO stays");
    }
}
