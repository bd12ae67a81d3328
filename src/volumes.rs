//! The volume store: one qcow2 file per volume in the home's `volumes/`
//! (`volume-<id>.qcow2`, as cinder's LVM and NFS drivers name theirs). Files are written
//! under a temporary name and renamed into place, so a volume file is either whole or absent.
//! The API (create, delete) and the conductor (boot from volume, instance deletion) use it;
//! compute hosts only read the paths they are given.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

use crate::compute::virt::ImageMeta;
use crate::db::{DbError, SharedDb};
use crate::home::Home;

pub mod status;
pub use status::{AttachStatus, VolumeStatus};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volumes need qemu-img, which is not installed: sudo apt-get install qemu-utils")]
    NoQemuImg,
    #[error("cannot run qemu-img: {0}")]
    Spawn(std::io::Error),
    #[error("qemu-img {what} failed: {detail}")]
    QemuImg { what: &'static str, detail: String },
    #[error("image {id} has no data on this host (is it active?)")]
    NoImageData { id: String },
    #[error("image {id} has disk_format {format:?}; volumes are made from qcow2, raw or ami images")]
    ImageFormat { id: String, format: String },
    #[error("image {id} has a backing file or external data file; upload a self-contained image")]
    ImageNotSelfContained { id: String },
    #[error("image {id} is {image_gb} GiB, larger than the volume ({size} GiB); ask for a bigger volume")]
    ImageTooLarge { id: String, image_gb: u64, size: i64 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The file name of a volume inside `volumes/`.
pub fn file_name(volume_id: &str) -> String {
    format!("volume-{volume_id}.qcow2")
}

/// The absolute path of a volume file, refusing names that would leave `volumes/`.
pub fn file_path(home: &Home, rel: &str) -> Option<PathBuf> {
    let ok = !rel.is_empty() && !rel.contains('/') && !rel.starts_with('.');
    ok.then(|| home.volumes_dir().join(rel))
}

fn qemu_img() -> Result<PathBuf, VolumeError> {
    crate::hostpkgs::find_program("qemu-img").ok_or(VolumeError::NoQemuImg)
}

async fn run(what: &'static str, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, VolumeError> {
    let out = tokio::process::Command::new(qemu_img()?)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(VolumeError::Spawn)?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let detail = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim().to_string();
        return Err(VolumeError::QemuImg { what, detail });
    }
    Ok(out.stdout)
}

/// The format qemu-img reads an image's bytes with: AMIs are raw root disks.
fn image_format(image: &ImageMeta) -> Result<&'static str, VolumeError> {
    match image.disk_format.as_deref().unwrap_or("") {
        "qcow2" => Ok("qcow2"),
        "raw" | "ami" => Ok("raw"),
        other => Err(VolumeError::ImageFormat { id: image.id.clone(), format: other.to_string() }),
    }
}

/// Writes the volume's file: blank, or the image converted to qcow2 and grown to `size_gb`.
pub async fn create_file(path: &Path, size_gb: i64, image: Option<&ImageMeta>) -> Result<(), VolumeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| VolumeError::Io { path: dir.to_path_buf(), source })?;
    let tmp = dir.join(format!(".{}.part", path.file_name().and_then(|n| n.to_str()).unwrap_or("volume")));
    let result = write_tmp(&tmp, size_gb, image).await;
    let result = result.and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|source| VolumeError::Io { path: path.to_path_buf(), source })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

async fn write_tmp(tmp: &Path, size_gb: i64, image: Option<&ImageMeta>) -> Result<(), VolumeError> {
    let size = format!("{}G", size_gb);
    let Some(image) = image else {
        run(
            "create",
            &["create".as_ref(), "-q".as_ref(), "-f".as_ref(), "qcow2".as_ref(), tmp.as_os_str(), size.as_ref()],
        )
        .await?;
        return Ok(());
    };
    let src = image
        .file
        .as_deref()
        .map(Path::new)
        .filter(|f| f.is_file())
        .ok_or_else(|| VolumeError::NoImageData { id: image.id.clone() })?;
    let format = image_format(image)?;
    let info =
        run("info", &["info".as_ref(), "-f".as_ref(), format.as_ref(), "--output=json".as_ref(), src.as_os_str()])
            .await?;
    let info: Value = serde_json::from_slice(&info)
        .map_err(|e| VolumeError::QemuImg { what: "info", detail: format!("unreadable output: {e}") })?;
    // A backing or data file named inside an uploaded image would let it read any host file.
    if info.get("backing-filename").is_some() || info.pointer("/format-specific/data/data-file").is_some() {
        return Err(VolumeError::ImageNotSelfContained { id: image.id.clone() });
    }
    let virtual_size = info.get("virtual-size").and_then(Value::as_u64).unwrap_or(0);
    if virtual_size > (size_gb.max(0) as u64) << 30 {
        let image_gb = virtual_size.div_ceil(1 << 30);
        return Err(VolumeError::ImageTooLarge { id: image.id.clone(), image_gb, size: size_gb });
    }
    run(
        "convert",
        &[
            "convert".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            format.as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            src.as_os_str(),
            tmp.as_os_str(),
        ],
    )
    .await?;
    run("resize", &["resize".as_ref(), "-q".as_ref(), "-f".as_ref(), "qcow2".as_ref(), tmp.as_os_str(), size.as_ref()])
        .await?;
    Ok(())
}

/// Builds a volume that is `creating` and records the outcome: `available`, or `error` with
/// the reason (logged, and shown by `novabox status`).
pub async fn build(db: &SharedDb, home: &Home, volume_id: &str, image: Option<&ImageMeta>) -> Result<(), VolumeError> {
    let volume = db.with(|db| db.volume(volume_id))?;
    let Some(volume) = volume else {
        return Err(DbError::NotFound(format!("Volume {volume_id} could not be found.")).into());
    };
    let rel = volume.path.clone().unwrap_or_else(|| file_name(volume_id));
    let path = file_path(home, &rel)
        .ok_or_else(|| VolumeError::Io { path: rel.clone().into(), source: std::io::ErrorKind::InvalidInput.into() })?;
    let result = create_file(&path, volume.size, image).await;
    let fault = result.as_ref().err().map(|e| e.to_string());
    match &fault {
        None => tracing::info!(volume = %volume_id, size = volume.size, "volume created"),
        Some(why) => tracing::warn!(volume = %volume_id, "volume create failed: {why}"),
    }
    let recorded = db.with(|db| db.finish_volume_create(volume_id, fault.as_deref()))?;
    if !recorded {
        // Deleted while it was being written: its file must not stay.
        let _ = std::fs::remove_file(&path);
    }
    result
}

/// Removes a volume that is `deleting`: its file, then its row.
pub fn delete(db: &crate::db::Db, home: &Home, volume: &crate::db::volumes::Volume) -> Result<(), VolumeError> {
    if let Some(path) = volume.path.as_deref().and_then(|rel| file_path(home, rel)) {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(VolumeError::Io { path, source }),
        }
    }
    db.delete_volume_row(&volume.id)?;
    Ok(())
}

/// Why a volume that was being written when novabox stopped is `error` now.
pub const LOST_CREATE: &str = "novabox stopped while this volume was being created; delete it and create it again";

/// Finishes what a crash interrupted, as cinder-volume's start-up does: a volume still
/// `creating` lost the task writing it (it ran in the stopped process) and becomes `error`
/// with its half-written file gone; a volume `deleting` is deleted. Runs before any service
/// serves, so nothing else can be writing a volume. Attaches and detaches in flight are for
/// their compute host, which finishes them when it starts (`ComputeManager::init_host`).
pub fn recover(db: &SharedDb, home: &Home) -> Result<(), VolumeError> {
    let volumes = db.with(|db| db.volumes(None))?;
    for v in volumes {
        let Some(path) = v.path.as_deref().and_then(|rel| file_path(home, rel)) else { continue };
        match v.status {
            VolumeStatus::Creating => {
                let dir = path.parent().unwrap_or(Path::new("."));
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("volume");
                for f in [path.clone(), dir.join(format!(".{name}.part"))] {
                    match std::fs::remove_file(&f) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(source) => return Err(VolumeError::Io { path: f, source }),
                    }
                }
                if db.with(|db| db.finish_volume_create(&v.id, Some(LOST_CREATE)))? {
                    tracing::warn!(volume = %v.id, "volume create lost in a restart; volume set to error");
                }
            }
            VolumeStatus::Deleting => {
                db.with(|db| delete(db, home, &v))?;
                tracing::info!(volume = %v.id, "finished a volume delete interrupted by a restart");
            }
            _ => {}
        }
    }
    Ok(())
}

/// An instance is going away: its volumes are detached, and those with
/// `delete_on_termination` deleted with their files.
pub fn release_instance_volumes(db: &crate::db::Db, home: &Home, instance_uuid: &str) -> Result<(), VolumeError> {
    for a in db.instance_volume_attachments(instance_uuid)? {
        db.release_volume_attachment(&a.volume_id, instance_uuid)?;
        if a.delete_on_termination
            && db.set_volume_status(&a.volume_id, VolumeStatus::DELETABLE, VolumeStatus::Deleting)?
        {
            if let Some(v) = db.volume(&a.volume_id)? {
                delete(db, home, &v)?;
                tracing::info!(volume = %a.volume_id, instance = %instance_uuid, "volume deleted with its instance");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_volumes() {
        let home = Home::at(Path::new("/h"));
        assert_eq!(file_path(&home, &file_name("abc")).unwrap(), Path::new("/h/volumes/volume-abc.qcow2"));
        assert!(file_path(&home, "../x").is_none());
        assert!(file_path(&home, ".hidden").is_none());
        assert!(file_path(&home, "").is_none());
    }

    #[test]
    fn a_restart_fails_lost_creates_and_finishes_deletes() {
        let (t, db) = crate::db::volumes::tests::db_with_project();
        let db = SharedDb::new(db);
        let home = Home::at(t.path());
        let dir = t.path().join("volumes");
        std::fs::create_dir_all(&dir).unwrap();
        let add = |id: &str, status: VolumeStatus| {
            let mut v = crate::db::volumes::tests::new_volume(id, 1);
            v.path = file_name(id);
            db.with(|db| {
                db.insert_volume(&v)?;
                db.set_volume_status(id, &[VolumeStatus::Creating], status)
            })
            .unwrap();
            std::fs::write(dir.join(file_name(id)), b"x").unwrap();
        };
        add("creating-one", VolumeStatus::Creating);
        std::fs::write(dir.join(format!(".{}.part", file_name("creating-one"))), b"half").unwrap();
        add("deleting-one", VolumeStatus::Deleting);
        add("kept-one", VolumeStatus::Available);

        recover(&db, &home).unwrap();
        let lost = db.with(|db| db.volume("creating-one")).unwrap().unwrap();
        assert_eq!(lost.status, VolumeStatus::Error);
        assert_eq!(lost.fault.as_deref(), Some(LOST_CREATE));
        assert!(db.with(|db| db.volume("deleting-one")).unwrap().is_none());
        assert_eq!(db.with(|db| db.volume("kept-one")).unwrap().unwrap().status, VolumeStatus::Available);
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, vec![file_name("kept-one")], "only the kept volume's file stays");
    }

    #[tokio::test]
    async fn blank_and_from_image_needs_qemu() {
        let t = tempfile::tempdir().unwrap();
        let blank = t.path().join("v1.qcow2");
        create_file(&blank, 1, None).await.unwrap();
        let out = std::process::Command::new("qemu-img").arg("info").arg(&blank).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("qcow2") && text.contains("1 GiB"), "{text}");

        let raw = t.path().join("img.raw");
        std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
        let image = ImageMeta {
            id: "img".into(),
            name: None,
            disk_format: Some("raw".into()),
            container_format: Some("bare".into()),
            size: Some(1 << 20),
            file: Some(raw.to_string_lossy().into_owned()),
            properties: Default::default(),
            kernel: None,
            ramdisk: None,
        };
        let from = t.path().join("v2.qcow2");
        create_file(&from, 1, Some(&image)).await.unwrap();
        // Without -s, qemu-img compares the grown tail against zeros: equal means the image's
        // bytes arrived whole.
        let out = std::process::Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "qcow2"])
            .arg(&raw)
            .arg(&from)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        assert!(String::from_utf8_lossy(&std::fs::read(&from).unwrap()[..4]).starts_with("QFI"));

        let mut vmdk = image.clone();
        vmdk.disk_format = Some("vmdk".into());
        let e = create_file(&t.path().join("v3.qcow2"), 1, Some(&vmdk)).await.unwrap_err();
        assert!(e.to_string().contains("disk_format \"vmdk\""), "{e}");
        let mut gone = image.clone();
        gone.file = None;
        assert!(matches!(
            create_file(&t.path().join("v4"), 1, Some(&gone)).await,
            Err(VolumeError::NoImageData { .. })
        ));
        // Nothing half-written stays.
        let mut names: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["img.raw", "v1.qcow2", "v2.qcow2"]);
    }
}
