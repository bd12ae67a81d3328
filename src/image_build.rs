//! `novabox image build debian`: a Debian cloud image built from Debian's packages, cached by
//! its inputs.
//!
//! The build itself is `scripts/build-debian-image` (embedded, run with sh, as CI runs it): a
//! partitionless ext4 root disk made by mmdebstrap and `mkfs.ext4 -d`, plus the cloud kernel
//! and its initramfs. The guest boots by direct kernel boot (`kernel_id`/`ramdisk_id`), as the
//! test image does: no bootloader to install, no loop device, no partition table, so nothing
//! needs more than mmdebstrap's own privileges, and qemu under TCG skips the firmware's
//! bootloader stage.
//!
//! A build is kept in `<cache>/<key>/`, where the key hashes the builder script, the suite, the
//! package list and the disk size: the same inputs never build twice, and a changed script
//! builds anew. Downloaded packages are kept in `<cache>/debs/` for the next build.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// The builder, as CI runs it from `scripts/`.
pub const BUILDER: &str = include_str!("../scripts/build-debian-image");
/// The steps the builder announces (`build-debian-image: step N/6 ...`).
pub const STEPS: u64 = 6;
/// Below this the base system (about 700 MiB unpacked) leaves cloud-init no room to work.
pub const MIN_SIZE: u64 = 1 << 30;
/// Where builds are kept when `NOVABOX_IMAGE_CACHE` names no other place.
pub const CACHE_ENV: &str = "NOVABOX_IMAGE_CACHE";
/// The login cloud-init creates (Debian's `default_user`), recorded as `os_admin_user`.
pub const DEFAULT_USER: &str = "debian";
/// Direct kernel boot: the root disk is the whole virtio disk. `no_timer_check` as in
/// `compute::virt::guestfiles::DEFAULT_CMDLINE` (TCG on a loaded host).
pub const CMDLINE: &str = "root=/dev/vda rw console=tty0 console=ttyS0 no_timer_check";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Invalid(String),
    #[error("the disk is too small: {size} bytes, the image needs at least {MIN_SIZE} (1G); give a larger --size")]
    TooSmall { size: u64 },
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the image build failed:\n{0}")]
    Builder(String),
    #[error("qemu-img convert failed: {0}")]
    Convert(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn parse(s: &str) -> Result<DiskFormat, BuildError> {
        match s {
            "qcow2" => Ok(DiskFormat::Qcow2),
            "raw" => Ok(DiskFormat::Raw),
            other => Err(BuildError::Invalid(format!("--format {other:?} is not qcow2 or raw"))),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// What a build is made of; two equal specs give the same image.
#[derive(Debug, Clone)]
pub struct Spec {
    pub suite: String,
    pub size: u64,
    /// Packages beyond the base set, sorted and deduplicated.
    pub packages: Vec<String>,
}

impl Spec {
    pub fn new(suite: &str, size: &str, packages: &[String]) -> Result<Spec, BuildError> {
        let suite_ok =
            !suite.is_empty() && suite.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !suite_ok {
            return Err(BuildError::Invalid(format!("--suite {suite:?} is not a Debian suite name")));
        }
        let size = parse_size(size)?;
        if size < MIN_SIZE {
            return Err(BuildError::TooSmall { size });
        }
        let mut pkgs: Vec<String> = Vec::new();
        for p in packages.iter().flat_map(|p| p.split(',')).map(str::trim).filter(|p| !p.is_empty()) {
            // Debian policy's package name syntax; anything else would reach the shell.
            let valid = p.len() >= 2
                && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if !valid {
                return Err(BuildError::Invalid(format!("{p:?} is not a Debian package name")));
            }
            pkgs.push(p.to_string());
        }
        pkgs.sort();
        pkgs.dedup();
        Ok(Spec { suite: suite.to_string(), size, packages: pkgs })
    }

    /// The cache key: the builder's text and every input that changes the result.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        for part in [BUILDER, &self.suite, &self.size.to_string(), &self.packages.join(",")] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        hex::encode(&h.finalize()[..12])
    }

    /// Debian's release number for the suites it has numbered, which is what `os_version` holds.
    pub fn os_version(&self) -> String {
        match self.suite.as_str() {
            "bullseye" => "11",
            "bookworm" => "12",
            "trixie" => "13",
            "forky" => "14",
            other => other,
        }
        .to_string()
    }

    /// glance's `min_disk`, in whole GiB.
    pub fn min_disk_gb(&self) -> u64 {
        self.size.div_ceil(1 << 30)
    }
}

/// `2G`, `1536M`, `3GiB`, or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, BuildError> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| BuildError::Invalid(format!("--size {s:?} is not a size like 2G")))?;
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(BuildError::Invalid(format!("--size {s:?} is not a size like 2G"))),
    };
    n.checked_mul(mult).ok_or_else(|| BuildError::Invalid(format!("--size {s:?} is too large")))
}

/// The cache root: `$NOVABOX_IMAGE_CACHE`, else `<home>/cache/images`.
pub fn cache_root(home_root: &Path) -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => home_root.join("cache").join("images"),
    }
}

/// A finished build's files.
#[derive(Debug, Clone)]
pub struct Built {
    pub dir: PathBuf,
    pub disk: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Whether it came from the cache.
    pub cached: bool,
}

/// What the caller sees of a running build.
#[derive(Debug)]
pub enum Progress<'a> {
    /// Step `n` of [`STEPS`] began.
    Step(u64, &'a str),
    /// Any other line the builder printed.
    Line(&'a str),
}

fn finished(dir: &Path) -> Option<Built> {
    let b = Built {
        dir: dir.to_path_buf(),
        disk: dir.join("disk.raw"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        cached: true,
    };
    (dir.join("done").is_file() && b.disk.is_file() && b.kernel.is_file() && b.initrd.is_file()).then_some(b)
}

/// Reads `build-debian-image: step N/6 TEXT` lines.
fn parse_step(line: &str) -> Option<(u64, &str)> {
    let rest = line.strip_prefix("build-debian-image: step ")?;
    let (frac, text) = rest.split_once(' ')?;
    let (n, _) = frac.split_once('/')?;
    Some((n.parse().ok()?, text))
}

/// Builds the image for `spec` under `cache`, or finds it there.
pub fn build(spec: &Spec, cache: &Path, mut progress: impl FnMut(Progress<'_>)) -> Result<Built, BuildError> {
    let dir = cache.join(spec.key());
    if let Some(b) = finished(&dir) {
        return Ok(b);
    }
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    // A half-written build from an interrupted run is never trusted.
    let tmp = cache.join(format!("{}.partial", spec.key()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let script = tmp.join("build-debian-image");
    std::fs::write(&script, BUILDER).map_err(io(&script))?;
    let mut child = Command::new("sh")
        .arg(&script)
        .arg(&tmp)
        .arg(&spec.suite)
        // mke2fs reads a bare number as blocks, not bytes.
        .arg(format!("{}k", spec.size / 1024))
        .arg(spec.packages.join(","))
        .env("NOVABOX_DEB_CACHE", cache.join("debs"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BuildError::Spawn { program: "sh".into(), source })?;
    // The last lines are the error message when it fails; mmdebstrap says what went wrong there.
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            match parse_step(&line) {
                Some((n, text)) => progress(Progress::Step(n, text)),
                None => progress(Progress::Line(&line)),
            }
            if tail.len() == 25 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child.wait().map_err(|source| BuildError::Spawn { program: "sh".into(), source })?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        let errors: Vec<&str> = tail.iter().map(String::as_str).filter(|l| l.contains("error")).collect();
        let shown = if errors.is_empty() { tail.iter().map(String::as_str).collect() } else { errors };
        return Err(BuildError::Builder(shown.join("\n")));
    }
    let _ = std::fs::remove_file(&script);
    let done = tmp.join("done");
    std::fs::write(&done, format!("{}\n", spec.key())).map_err(io(&done))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    let mut b = finished(&dir).ok_or_else(|| BuildError::Builder(format!("{} is incomplete", dir.display())))?;
    b.cached = false;
    Ok(b)
}

/// The disk in `format`: the raw file itself, or a qcow2 converted once and kept beside it.
pub fn disk_in(built: &Built, format: DiskFormat, qemu_img: &Path) -> Result<PathBuf, BuildError> {
    if format == DiskFormat::Raw {
        return Ok(built.disk.clone());
    }
    let out = built.dir.join("disk.qcow2");
    if out.is_file() {
        return Ok(out);
    }
    let tmp = built.dir.join("disk.qcow2.partial");
    let result = Command::new(qemu_img)
        .args(["convert", "-f", "raw", "-O", "qcow2", "-c"])
        .arg(&built.disk)
        .arg(&tmp)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BuildError::Spawn { program: qemu_img.display().to_string(), source })?;
    if !result.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(BuildError::Convert(String::from_utf8_lossy(&result.stderr).trim().to_string()));
    }
    std::fs::rename(&tmp, &out).map_err(io(&out))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_small_disks_are_refused() {
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1536M").unwrap(), 1536 << 20);
        assert_eq!(parse_size("3GiB").unwrap(), 3 << 30);
        assert!(parse_size("2X").is_err());
        assert!(parse_size("").is_err());
        let e = Spec::new("bookworm", "512M", &[]).unwrap_err();
        assert!(e.to_string().contains("the disk is too small"), "{e}");
        let s = Spec::new("bookworm", "2G", &[]).unwrap();
        assert_eq!((s.min_disk_gb(), s.os_version().as_str()), (2, "12"));
        assert_eq!(Spec::new("bookworm", "1536M", &[]).unwrap().min_disk_gb(), 2);
    }

    #[test]
    fn the_key_follows_every_input_and_ignores_package_order() {
        let a = Spec::new("bookworm", "2G", &["vim,curl".into()]).unwrap();
        let b = Spec::new("bookworm", "2G", &["curl".into(), "vim".into(), "curl".into()]).unwrap();
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), Spec::new("trixie", "2G", &["vim,curl".into()]).unwrap().key());
        assert_ne!(a.key(), Spec::new("bookworm", "3G", &["vim,curl".into()]).unwrap().key());
        assert_ne!(a.key(), Spec::new("bookworm", "2G", &["vim".into()]).unwrap().key());
    }

    #[test]
    fn names_that_could_reach_the_shell_are_refused() {
        for bad in ["a;rm -rf /", "$(x)", "Vim", "x"] {
            assert!(Spec::new("bookworm", "2G", &[bad.into()]).is_err(), "{bad}");
        }
        assert!(Spec::new("book worm", "2G", &[]).is_err());
        assert!(Spec::new("bookworm", "2G", &["g++,libc6-dev".into()]).is_ok());
    }

    #[test]
    fn step_lines_are_read() {
        assert_eq!(parse_step("build-debian-image: step 2/6 installing packages"), Some((2, "installing packages")));
        assert_eq!(parse_step("I: extracting archives..."), None);
    }

    #[test]
    fn a_finished_build_is_reused_without_running_anything() {
        let cache = tempfile::tempdir().unwrap();
        let spec = Spec::new("bookworm", "2G", &[]).unwrap();
        let dir = cache.path().join(spec.key());
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["disk.raw", "vmlinuz", "initrd.img", "done"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let mut lines = 0;
        let b = build(&spec, cache.path(), |_| lines += 1).unwrap();
        assert!(b.cached);
        assert_eq!(lines, 0);
        // Without its `done` marker the same directory is a half build, not a result.
        std::fs::remove_file(dir.join("done")).unwrap();
        assert!(finished(&dir).is_none());
    }
}
