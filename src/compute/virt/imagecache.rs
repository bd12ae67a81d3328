//! The qemu driver's image cache (`instances/_base/`), cleaned like nova's image cache manager:
//! a base no guest on this host uses is removed once it has been unused for
//! `[compute] image_cache_max_age_secs`; a base in use is never removed.
//!
//! "Unused for" is the base file's mtime: every pass touches the bases guests use (and the
//! driver touches a base when it boots a guest from it), so an unused base's mtime is the last
//! time anything used it. Which bases are in use is read from the guests' own disks: every
//! qcow2 file in an instance directory names its backing file in its header, so a guest
//! created by an earlier novabox process, or stopped, still counts.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Half-written copies (`.<image id>.<random>`) from a check that never finished are this old
/// before they go: a check in progress takes seconds.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Bases (and stale temporary copies) removed.
    pub removed: Vec<PathBuf>,
    /// Bases some guest uses.
    pub in_use: usize,
    /// Unused bases still younger than the maximum age.
    pub kept: usize,
}

/// One pass over `<instances>/_base` at time `now`.
pub fn cleanup(instances: &Path, max_age: Duration, now: SystemTime) -> std::io::Result<Report> {
    let base_dir = instances.join("_base");
    let mut report = Report::default();
    let entries = match std::fs::read_dir(&base_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e),
    };
    let in_use = bases_in_use(instances);
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
        let temp = entry.file_name().to_string_lossy().starts_with('.');
        if temp {
            if age > STALE_TEMP_AGE && std::fs::remove_file(&path).is_ok() {
                report.removed.push(path);
            }
            continue;
        }
        if in_use.contains(&path) {
            report.in_use += 1;
            touch(&path, now);
        } else if age > max_age {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(base = %path.display(), age_secs = age.as_secs(), "unused base image removed");
                    report.removed.push(path);
                }
                Err(e) => tracing::warn!(base = %path.display(), error = %e, "cannot remove an unused base image"),
            }
        } else {
            report.kept += 1;
        }
    }
    Ok(report)
}

/// Marks a base as used now (its mtime), so the next passes keep it at least `max_age` more.
pub fn touch(path: &Path, now: SystemTime) {
    if let Err(e) = std::fs::File::open(path).and_then(|f| f.set_modified(now)) {
        tracing::warn!(base = %path.display(), error = %e, "cannot mark a base image as used");
    }
}

/// The backing files of every qcow2 disk in every instance directory (`<instances>/<uuid>/*`).
fn bases_in_use(instances: &Path) -> HashSet<PathBuf> {
    let mut used = HashSet::new();
    let Ok(guests) = std::fs::read_dir(instances) else { return used };
    for guest in guests.flatten() {
        let dir = guest.path();
        if guest.file_name() == "_base" || !dir.is_dir() {
            continue;
        }
        let Ok(files) = std::fs::read_dir(&dir) else { continue };
        for file in files.flatten() {
            if let Some(backing) = qcow2_backing_file(&file.path()) {
                used.insert(if backing.is_absolute() { backing } else { dir.join(backing) });
            }
        }
    }
    used
}

/// The backing file named in a qcow2 header; None for other files and qcow2 without one.
/// Header (big-endian): magic `QFI\xfb`, version u32, backing_file_offset u64,
/// backing_file_size u32.
pub fn qcow2_backing_file(path: &Path) -> Option<PathBuf> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::ffi::OsStringExt;
    let mut f = std::fs::File::open(path).ok()?;
    let mut head = [0u8; 20];
    f.read_exact(&mut head).ok()?;
    if &head[..4] != b"QFI\xfb" {
        return None;
    }
    let offset = u64::from_be_bytes(head[8..16].try_into().ok()?);
    let size = u32::from_be_bytes(head[16..20].try_into().ok()?);
    // qemu limits the name to 1023 bytes.
    if offset == 0 || size == 0 || size > 1023 {
        return None;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut name = vec![0u8; size as usize];
    f.read_exact(&mut name).ok()?;
    Some(PathBuf::from(std::ffi::OsString::from_vec(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    /// A minimal qcow2 header naming `backing` (all the cache reads of a guest's disk).
    fn overlay(path: &Path, backing: &Path) {
        let name = backing.to_str().unwrap().as_bytes();
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[8..16].copy_from_slice(&200u64.to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        h[200..200 + name.len()].copy_from_slice(name);
        std::fs::write(path, h).unwrap();
    }

    fn aged(path: &Path, age: Duration, now: SystemTime) {
        std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
            .set_modified(now - age)
            .unwrap();
    }

    #[test]
    fn removes_only_old_unused_bases_and_stale_temps() {
        let t = tempfile::tempdir().unwrap();
        let instances = t.path();
        let base = instances.join("_base");
        std::fs::create_dir_all(&base).unwrap();
        let now = SystemTime::now();
        let used_old = base.join("11111111-1111-4111-8111-111111111111");
        let unused_old = base.join("22222222-2222-4222-8222-222222222222");
        let unused_young = base.join("33333333-3333-4333-8333-333333333333");
        let used_by_stopped = base.join("44444444-4444-4444-8444-444444444444");
        let stale_temp = base.join(".22222222-2222-4222-8222-222222222222.abc");
        let fresh_temp = base.join(".33333333-3333-4333-8333-333333333333.def");
        aged(&used_old, 10 * DAY, now);
        aged(&unused_old, DAY + Duration::from_secs(1), now);
        aged(&unused_young, DAY - Duration::from_secs(60), now);
        aged(&used_by_stopped, 30 * DAY, now);
        aged(&stale_temp, Duration::from_secs(2 * 3600), now);
        aged(&fresh_temp, Duration::from_secs(60), now);
        // Guests: one running on `used_old`, one (stopped, or from an earlier process) on
        // `used_by_stopped`, and non-qcow2 files that must not confuse the scan.
        let g1 = instances.join("aaaaaaaa-0000-4000-8000-000000000001");
        let g2 = instances.join("aaaaaaaa-0000-4000-8000-000000000002");
        std::fs::create_dir_all(&g1).unwrap();
        std::fs::create_dir_all(&g2).unwrap();
        overlay(&g1.join("disk"), &used_old);
        std::fs::write(g1.join("disk.eph0"), vec![0u8; 4096]).unwrap();
        std::fs::write(g1.join("console.log"), b"QFI").unwrap();
        overlay(&g2.join("disk"), &used_by_stopped);

        let report = cleanup(instances, DAY, now).unwrap();
        let mut removed = report.removed.clone();
        removed.sort();
        assert_eq!(removed, vec![stale_temp.clone(), unused_old.clone()]);
        assert_eq!((report.in_use, report.kept), (2, 1));
        assert!(used_old.exists() && used_by_stopped.exists() && unused_young.exists() && fresh_temp.exists());
        // In-use bases were touched: their unused time starts over when the guest goes.
        let mtime = std::fs::metadata(&used_old).unwrap().modified().unwrap();
        assert!(now.duration_since(mtime).unwrap_or_default() < Duration::from_secs(1));

        // The guest on `used_old` is deleted: the base stays for max_age, then goes.
        std::fs::remove_dir_all(&g1).unwrap();
        // (Meanwhile the young base and the fresh temp have aged past their limits.)
        let report = cleanup(instances, DAY, now + DAY - Duration::from_secs(1)).unwrap();
        let mut removed = report.removed.clone();
        removed.sort();
        assert_eq!(removed, vec![fresh_temp.clone(), unused_young.clone()]);
        assert!(used_old.exists());
        let report = cleanup(instances, DAY, now + DAY + Duration::from_secs(2)).unwrap();
        assert_eq!(report.removed, vec![used_old.clone()]);
        assert!(!used_old.exists() && !unused_young.exists());
        assert!(used_by_stopped.exists(), "a stopped guest's base is in use");
    }

    #[test]
    fn no_cache_dir_is_nothing_to_do() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(cleanup(t.path(), DAY, SystemTime::now()).unwrap(), Report::default());
    }

    #[test]
    fn reads_backing_files_of_real_qcow2_overlays() {
        let Some(qemu_img) = crate::hostpkgs::find_program("qemu-img") else {
            panic!("qemu-img is needed: run scripts/install-deps");
        };
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base.raw");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let disk = t.path().join("disk");
        let out = std::process::Command::new(qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(&disk)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(qcow2_backing_file(&disk), Some(base.clone()));
        assert_eq!(qcow2_backing_file(&base), None);
        assert_eq!(qcow2_backing_file(&t.path().join("missing")), None);
    }
}
