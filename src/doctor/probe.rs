//! The probe boot: the offline test guest (a Debian kernel and a busybox initramfs) started
//! under qemu with a chosen accelerator, watched for its init marker on the serial console.
//! It is the final word on KVM, since a working /dev/kvm (PVM, broken nesting) may still hang
//! a normal guest kernel.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::Accel;
use crate::hostpkgs;

/// The recipe, embedded so an installed binary can build the guest without the source tree.
pub const MAKE_TEST_IMAGE_SCRIPT: &str = include_str!("../../scripts/make-test-image.sh");
/// Printed by the guest's /init once the kernel has handed over to user space.
pub const INIT_MARKER: &str = "novabox-guest: init reached";
/// The directory below `<home>/images` that holds the built guest.
pub const TEST_IMAGE_DIR: &str = "test-guest";

/// A normal guest under working KVM reaches its init in under 2 s; three times that is room
/// for a busy host. Past it the guest is stuck (as a normal kernel is under PVM), and waiting
/// longer only delays the TCG fallback.
pub const KVM_TIMEOUT: Duration = Duration::from_secs(6);
/// Software emulation boots the same guest in a few seconds on an idle core, much slower on a
/// loaded one.
pub const TCG_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "cannot build the test guest in {dir}: {detail}. Run `sh scripts/make-test-image.sh {dir}` to see why \
         (it needs busybox-static and dpkg-deb, and apt access the first time); the full log is {log}"
    )]
    Build { dir: PathBuf, log: PathBuf, detail: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("qemu-system-x86_64 is not installed: sudo apt-get install qemu-system-x86")]
    NoQemu,
    #[error("cannot start {program}: {source}")]
    Spawn { program: PathBuf, source: io::Error },
}

/// The kernel and initramfs of the test guest.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl TestImage {
    pub fn in_dir(dir: &Path) -> TestImage {
        TestImage { kernel: dir.join("vmlinuz"), initrd: dir.join("initrd.img") }
    }

    pub fn exists(&self) -> bool {
        self.kernel.is_file() && self.initrd.is_file()
    }
}

/// Where built test guests are kept below the per-user cache, one directory per inputs key.
pub const CACHED_GUESTS_DIR: &str = "test-guest";

/// Builds the test guest into `dir` with the embedded script unless it is there already.
///
/// With a per-user `cache` (see [`crate::home::user_cache_dir`]), a guest built before from
/// the same inputs (this recipe, the static busybox, the kernel package) is copied from there
/// instead: building means unpacking the kernel package, seconds of xz, for a result that is
/// the same for every home. A new build is kept there for the next home. The kernel package
/// is fetched into `NOVABOX_DEB_CACHE` (tests share one download), else `<cache>/debs`, else
/// `<dir>/cache`.
pub fn ensure_test_image(dir: &Path, cache: Option<&Path>) -> Result<TestImage, ProbeError> {
    let debs = std::env::var_os("NOVABOX_DEB_CACHE").filter(|v| !v.is_empty()).map(PathBuf::from);
    ensure_in(dir, cache, debs)
}

/// [`ensure_test_image`] with the kernel package's directory given (`NOVABOX_DEB_CACHE`).
fn ensure_in(dir: &Path, cache: Option<&Path>, debs: Option<PathBuf>) -> Result<TestImage, ProbeError> {
    let image = TestImage::in_dir(dir);
    let script = dir.join("make-test-image.sh");
    // Built by an older recipe (the script is kept beside the image): it lacks newer markers,
    // so build again. An image without the script came from elsewhere and is used as it is.
    let older_recipe = std::fs::read_to_string(&script).is_ok_and(|s| s != MAKE_TEST_IMAGE_SCRIPT);
    if image.exists() && !older_recipe {
        return Ok(image);
    }
    std::fs::create_dir_all(dir).map_err(|source| ProbeError::Write { path: dir.to_path_buf(), source })?;
    std::fs::write(&script, MAKE_TEST_IMAGE_SCRIPT)
        .map_err(|source| ProbeError::Write { path: script.clone(), source })?;
    let debs = debs.unwrap_or_else(|| deb_cache(dir, cache));
    let cached = cache.zip(inputs_key(&debs)).map(|(c, key)| c.join(CACHED_GUESTS_DIR).join(key));
    if let Some(from) = cached.as_deref().filter(|d| TestImage::in_dir(d).exists()) {
        match copy_guest(from, dir) {
            Ok(()) => {
                tracing::info!(from = %from.display(), "test guest taken from the cache");
                return Ok(image);
            }
            Err(e) => {
                tracing::warn!(from = %from.display(), error = %e, "cannot use the cached test guest; building it")
            }
        }
    }
    build(dir, &script, &debs)?;
    if let Some(cache) = cache {
        // Keyed again: a first build has only now downloaded the kernel package.
        if let Some(key) = inputs_key(&debs) {
            if let Err(e) = store_guest(dir, &cache.join(CACHED_GUESTS_DIR), &key) {
                tracing::warn!(cache = %cache.display(), error = %e, "cannot keep the test guest in the cache");
            }
        }
    }
    Ok(image)
}

fn build(dir: &Path, script: &Path, debs: &Path) -> Result<(), ProbeError> {
    let image = TestImage::in_dir(dir);
    let log = dir.join("build.log");
    let log_file = std::fs::File::create(&log).map_err(|source| ProbeError::Write { path: log.clone(), source })?;
    let log_err = log_file.try_clone().map_err(|source| ProbeError::Write { path: log.clone(), source })?;
    tracing::info!(dir = %dir.display(), "building the test guest");
    let status = Command::new("sh")
        .arg(script)
        .arg(dir)
        .env("NOVABOX_DEB_CACHE", debs)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .status()
        .map_err(|source| ProbeError::Spawn { program: "sh".into(), source })?;
    if !status.success() || !image.exists() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let detail = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("the script failed").to_string();
        return Err(ProbeError::Build { dir: dir.to_path_buf(), log, detail });
    }
    Ok(())
}

/// Where the script keeps the kernel package it downloads, unless `NOVABOX_DEB_CACHE` says.
fn deb_cache(dir: &Path, cache: Option<&Path>) -> PathBuf {
    cache.map(|c| c.join("debs")).unwrap_or_else(|| dir.join("cache"))
}

/// The kernel package the script would use: the newest `linux-image-*.deb` in `debs`, as its
/// `ls -t` picks it.
fn newest_kernel_deb(debs: &Path) -> Option<(PathBuf, std::fs::Metadata)> {
    std::fs::read_dir(debs)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("linux-image-") && n.ends_with(".deb")))
        .filter_map(|e| e.metadata().ok().map(|m| (e.path(), m)))
        .max_by_key(|(_, m)| m.modified().ok())
}

/// A key for everything the build depends on: the recipe, the static busybox copied into the
/// initramfs (path, size, mtime: an upgrade changes them) and the kernel package (its file
/// name carries the version). `None` while no kernel package is downloaded yet.
fn inputs_key(debs: &Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    let (deb, meta) = newest_kernel_deb(debs)?;
    let mut h = Sha256::new();
    h.update(MAKE_TEST_IMAGE_SCRIPT.as_bytes());
    for busybox in ["/bin/busybox", "/usr/bin/busybox"] {
        if let Ok(m) = std::fs::metadata(busybox) {
            let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            h.update(format!("{busybox} {} {mtime:?}\n", m.len()).as_bytes());
        }
    }
    h.update(deb.file_name()?.as_encoded_bytes());
    h.update(meta.len().to_le_bytes());
    Some(hex::encode(&h.finalize()[..12]))
}

const GUEST_FILES: [&str; 3] = ["vmlinuz", "initrd.img", "kernel-version"];

/// Puts `from`'s guest files into `to`, each through a temporary name and a rename: a hard
/// link when both are on one filesystem (the files are never written in place, only
/// replaced), a copy otherwise.
fn copy_guest(from: &Path, to: &Path) -> io::Result<()> {
    for name in GUEST_FILES {
        let src = from.join(name);
        if !src.exists() && name == "kernel-version" {
            continue;
        }
        let tmp = to.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&src, &tmp).is_err() {
            std::fs::copy(&src, &tmp)?;
        }
        std::fs::rename(&tmp, to.join(name))?;
    }
    Ok(())
}

/// Keeps the guest built in `dir` as `<guests>/<key>`, made whole in a temporary directory and
/// renamed, so a home reading the cache never sees half of it. Another home that stored the
/// same key first wins.
fn store_guest(dir: &Path, guests: &Path, key: &str) -> io::Result<()> {
    let dest = guests.join(key);
    if TestImage::in_dir(&dest).exists() {
        return Ok(());
    }
    std::fs::create_dir_all(guests)?;
    let tmp = guests.join(format!(".{key}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = copy_guest(dir, &tmp).and_then(|()| std::fs::rename(&tmp, &dest));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        if TestImage::in_dir(&dest).exists() {
            return Ok(());
        }
    }
    result
}

#[derive(Debug, Clone)]
pub struct BootOutcome {
    /// The guest printed the marker (`INIT_MARKER` for `boot`) before the timeout.
    pub reached_init: bool,
    /// Time to the marker, or until qemu exited or the timeout.
    pub elapsed: Duration,
    /// When it failed: qemu's exit and last words, or "timed out".
    pub detail: String,
}

/// Boots the test guest under `accel` (`Kvm` or `Tcg`), waits for the init marker on the serial
/// console (written to `console`), and stops the qemu it started, by its pid.
pub fn boot(image: &TestImage, accel: Accel, timeout: Duration, console: &Path) -> Result<BootOutcome, ProbeError> {
    boot_until(image, accel, timeout, console, &[], INIT_MARKER)
}

/// Like `boot`, but gives up as soon as `stop` is set (the other accelerator's probe already
/// decided), with `detail` "stopped: not needed".
pub fn boot_unless(
    image: &TestImage,
    accel: Accel,
    timeout: Duration,
    console: &Path,
    stop: &AtomicBool,
) -> Result<BootOutcome, ProbeError> {
    watch_boot(image, accel, timeout, console, &[], INIT_MARKER, Some(stop))
}

/// Like `boot`, with extra qemu arguments (drives, NICs) and another console line to wait for
/// (`novabox-guest: ready` once the guest has read its config drive).
pub fn boot_until(
    image: &TestImage,
    accel: Accel,
    timeout: Duration,
    console: &Path,
    extra_args: &[std::ffi::OsString],
    marker: &str,
) -> Result<BootOutcome, ProbeError> {
    watch_boot(image, accel, timeout, console, extra_args, marker, None)
}

fn watch_boot(
    image: &TestImage,
    accel: Accel,
    timeout: Duration,
    console: &Path,
    extra_args: &[std::ffi::OsString],
    marker: &str,
    stop: Option<&AtomicBool>,
) -> Result<BootOutcome, ProbeError> {
    let qemu = hostpkgs::find_program("qemu-system-x86_64").ok_or(ProbeError::NoQemu)?;
    let accel_name = if accel == Accel::Kvm { "kvm" } else { "tcg" };
    let _ = std::fs::remove_file(console);
    std::fs::write(console, b"").map_err(|source| ProbeError::Write { path: console.to_path_buf(), source })?;
    let mut serial = std::ffi::OsString::from("file:");
    serial.push(console);
    let mut cmd = Command::new(&qemu);
    // -nodefaults, as the qemu driver runs guests: no default NIC whose PXE ROM and no VGA
    // the firmware would initialize first (seconds under TCG).
    cmd.args(["-nodefaults", "-accel", accel_name, "-m", "256", "-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(serial)
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet no_timer_check"])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| ProbeError::Spawn { program: qemu.clone(), source })?;
    tracing::debug!(pid = child.id(), accel = accel_name, "probe guest started");
    let outcome = loop {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        if text.contains(marker) {
            break BootOutcome { reached_init: true, elapsed: start.elapsed(), detail: String::new() };
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut stderr);
                }
                let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
                let detail =
                    if last.is_empty() { format!("qemu exited ({status})") } else { format!("qemu exited: {last}") };
                return Ok(BootOutcome { reached_init: false, elapsed: start.elapsed(), detail });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot poll the probe qemu");
            }
        }
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            break BootOutcome { reached_init: false, elapsed: start.elapsed(), detail: "stopped: not needed".into() };
        }
        if start.elapsed() >= timeout {
            break BootOutcome {
                reached_init: false,
                elapsed: start.elapsed(),
                detail: format!("no {marker:?} within {}", human_duration(timeout)),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Our own child, stopped through its pid; reaped so no zombie is left.
    if let Err(e) = child.kill() {
        tracing::warn!(error = %e, pid = child.id(), "cannot stop the probe qemu");
    }
    let _ = child.wait();
    Ok(outcome)
}

fn human_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_script_prints_the_marker_it_is_watched_for() {
        assert!(MAKE_TEST_IMAGE_SCRIPT.contains(&format!("echo \"{INIT_MARKER}\"")));
        assert!(MAKE_TEST_IMAGE_SCRIPT.contains("novabox-guest: ready"));
    }

    #[test]
    fn existing_image_is_reused_without_building() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("vmlinuz"), b"k").unwrap();
        std::fs::write(t.path().join("initrd.img"), b"i").unwrap();
        let image = ensure_test_image(t.path(), None).unwrap();
        assert_eq!(image.kernel, t.path().join("vmlinuz"));
        assert!(!t.path().join("build.log").exists());
    }

    /// A guest kept in the cache under the key of today's inputs is copied into a new home
    /// without running the script; other inputs (another kernel package) miss it.
    #[test]
    fn a_cached_guest_of_the_same_inputs_is_copied_not_built() {
        let t = tempfile::tempdir().unwrap();
        let (cache, built) = (t.path().join("cache"), t.path().join("built"));
        let debs = cache.join("debs");
        std::fs::create_dir_all(&debs).unwrap();
        std::fs::create_dir_all(&built).unwrap();
        std::fs::write(debs.join("linux-image-6.1.0-1-amd64_6.1.1-1_amd64.deb"), b"deb").unwrap();
        for (name, bytes) in [("vmlinuz", &b"kernel"[..]), ("initrd.img", b"initrd"), ("kernel-version", b"6.1\n")] {
            std::fs::write(built.join(name), bytes).unwrap();
        }
        let key = inputs_key(&debs).expect("a kernel package is there");
        store_guest(&built, &cache.join(CACHED_GUESTS_DIR), &key).unwrap();
        assert!(std::fs::read_dir(cache.join(CACHED_GUESTS_DIR)).unwrap().count() == 1, "no temporary left");

        // The kernel package in <cache>/debs, whatever NOVABOX_DEB_CACHE says in this process.
        let home = t.path().join("home-guest");
        let image = ensure_in(&home, Some(&cache), None).unwrap();
        assert_eq!(std::fs::read(&image.kernel).unwrap(), b"kernel");
        assert_eq!(std::fs::read(&image.initrd).unwrap(), b"initrd");
        assert!(!home.join("build.log").exists(), "the script ran");
        assert_eq!(std::fs::read_to_string(home.join("make-test-image.sh")).unwrap(), MAKE_TEST_IMAGE_SCRIPT);

        std::fs::write(debs.join("linux-image-6.1.0-2-amd64_6.1.2-1_amd64.deb"), b"newer deb").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(debs.join("linux-image-6.1.0-2-amd64_6.1.2-1_amd64.deb"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_ne!(inputs_key(&debs), Some(key), "another kernel package is another key");
    }
}
