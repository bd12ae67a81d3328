//! The image store: image bytes live in `<home>/images/<id>`, written through a temporary
//! file and a rename, hashed (md5 for glance's `checksum`, sha512 for `os_hash_value`) on the
//! way in. The upload handler and `novabox init`'s import share [`ImageWriter`], so there is
//! one code path for storing bytes and their hashes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use sha2::Sha512;

use crate::db::images::{Image, NewImage, StoredData};
use crate::db::{Db, DbError};
use crate::home::Home;

pub mod status;
pub use status::{ImageStatus, MemberStatus};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "cannot write image data to {path}: {source}. Check the free space and permissions of the state directory."
    )]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the image data is larger than the limit of {limit_mb} MiB (`[images] max_upload_mb`)")]
    TooLarge { limit_mb: u64 },
    #[error("`{0}` is not a valid image id; image ids are uuids")]
    BadId(String),
    #[error("image {0} is not queued for data (another upload is running, or it has data already)")]
    NotQueued(String),
    #[error("cannot build the test image: {0}")]
    TestImage(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Writes one image's bytes to a temporary file beside their final place, hashing as it
/// goes. Nothing is visible under the final name until [`ImageWriter::finish`]; a writer
/// dropped before that (an error, a client gone mid-upload) removes its temporary file.
pub struct ImageWriter {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    rel: String,
    md5: Md5,
    sha512: Sha512,
    size: u64,
    max_bytes: u64,
    limit_mb: u64,
    /// The first bytes, enough to read a qcow2 header's virtual size.
    head: Vec<u8>,
}

const HEAD_LEN: usize = 32;

impl ImageWriter {
    /// Starts writing the data of `image_id` into `images_dir`, refusing more than
    /// `limit_mb` MiB.
    pub fn create(images_dir: &Path, image_id: &str, limit_mb: u64) -> Result<ImageWriter, ImageError> {
        // The id becomes a file name: only a uuid can never escape the directory.
        if uuid::Uuid::parse_str(image_id).is_err() || image_id.contains(['/', '.']) {
            return Err(ImageError::BadId(image_id.to_string()));
        }
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Write { path, source }
        };
        std::fs::create_dir_all(images_dir).map_err(write_err(images_dir))?;
        let dest = images_dir.join(image_id);
        let tmp = images_dir.join(format!(".{image_id}.part-{}", uuid::Uuid::new_v4().simple()));
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(write_err(&tmp))?
        };
        Ok(ImageWriter {
            file: Some(file),
            tmp,
            dest,
            rel: image_id.to_string(),
            md5: Md5::new(),
            sha512: Sha512::new(),
            size: 0,
            max_bytes: limit_mb.saturating_mul(1024 * 1024),
            limit_mb,
            head: Vec::with_capacity(HEAD_LEN),
        })
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        let size = self.size + chunk.len() as u64;
        if size > self.max_bytes {
            return Err(ImageError::TooLarge { limit_mb: self.limit_mb });
        }
        let Some(file) = self.file.as_mut() else {
            return Err(ImageError::Write { path: self.tmp.clone(), source: std::io::ErrorKind::BrokenPipe.into() });
        };
        file.write_all(chunk).map_err(|source| ImageError::Write { path: self.tmp.clone(), source })?;
        if self.head.len() < HEAD_LEN {
            let take = (HEAD_LEN - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.md5.update(chunk);
        self.sha512.update(chunk);
        self.size = size;
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Flushes the data to disk and moves it to its final name.
    pub fn finish(mut self, disk_format: Option<&str>) -> Result<StoredData, ImageError> {
        let file = self.file.take();
        if let Some(f) = file {
            f.sync_all().map_err(|source| ImageError::Write { path: self.tmp.clone(), source })?;
        }
        std::fs::rename(&self.tmp, &self.dest)
            .map_err(|source| ImageError::Write { path: self.dest.clone(), source })?;
        let virtual_size = virtual_size(disk_format, &self.head, self.size).map(|v| v as i64);
        Ok(StoredData {
            path: self.rel.clone(),
            size: self.size as i64,
            virtual_size,
            md5: hex::encode(self.md5.clone().finalize()),
            sha512: hex::encode(self.sha512.clone().finalize()),
        })
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        // Still holding the file means finish() never ran: nothing partial may stay behind.
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The size the guest sees: raw-like formats are their own size; qcow2 says it in its
/// header (big-endian u64 at offset 24, after the `QFI\xfb` magic). Unknown otherwise.
/// Upload temp files (`.<image id>.part-<random>`) untouched for this long belong to no live
/// upload: every write updates an upload's mtime.
pub const STALE_UPLOAD_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes upload temp files in `images_dir` whose mtime is older than `max_age` at `now`:
/// what an upload left when its process was killed (a clean failure removes its own). Returns
/// the removed files.
pub fn sweep_stale_uploads(
    images_dir: &Path,
    max_age: std::time::Duration,
    now: std::time::SystemTime,
) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(images_dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with('.') && name.contains(".part-")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|m| now.duration_since(m).is_ok_and(|age| age > max_age));
        if old && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "stale image upload removed");
            removed.push(entry.path());
        }
    }
    removed
}

fn virtual_size(disk_format: Option<&str>, head: &[u8], size: u64) -> Option<u64> {
    if head.len() >= 32 && head[..4] == *b"QFI\xfb" {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[24..32]);
        return Some(u64::from_be_bytes(b));
    }
    match disk_format {
        Some("raw" | "iso" | "aki" | "ari" | "ami") => Some(size),
        _ => None,
    }
}

/// The data file of an active image, or `None` when it has no data yet (or was deleted).
pub fn file_path(home: &Home, image: &Image) -> Option<PathBuf> {
    match &image.path {
        Some(rel) if image.status.has_data() => Some(home.images_dir().join(rel)),
        _ => None,
    }
}

/// Removes an image's data file; a file already gone is fine.
pub fn remove_file(home: &Home, rel: &str) -> std::io::Result<()> {
    match std::fs::remove_file(home.images_dir().join(rel)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Imports the local file `path` as a new active image (what `novabox init` does with the
/// test image). The record and the data appear together: on any failure the half-made image
/// is deleted again.
#[allow(clippy::too_many_arguments)]
pub fn import_file(
    db: &Db,
    home: &Home,
    path: &Path,
    name: &str,
    disk_format: &str,
    container_format: &str,
    properties: &BTreeMap<String, String>,
    visibility: &str,
    owner: &str,
) -> Result<Image, ImageError> {
    let mut src = File::open(path).map_err(|source| ImageError::Read { path: path.to_path_buf(), source })?;
    let image = db.create_image(&NewImage {
        id: None,
        name: Some(name.to_string()),
        owner: Some(owner.to_string()),
        visibility: visibility.to_string(),
        protected: false,
        disk_format: Some(disk_format.to_string()),
        container_format: Some(container_format.to_string()),
        min_disk: 0,
        min_ram: 0,
        properties: properties.clone(),
        tags: Default::default(),
    })?;
    let stored = (|| {
        if !image.status.can_upload() || !db.set_image_status(&image.id, image.status, ImageStatus::Saving)? {
            return Err(ImageError::NotQueued(image.id.clone()));
        }
        // A local import is the operator's own file: `[images] max_upload_mb` guards the API only.
        let mut writer = ImageWriter::create(&home.images_dir(), &image.id, u64::MAX / (1024 * 1024))?;
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = src.read(&mut buf).map_err(|source| ImageError::Read { path: path.to_path_buf(), source })?;
            if n == 0 {
                break;
            }
            writer.write(&buf[..n])?;
        }
        let data = writer.finish(Some(disk_format))?;
        if !db.finish_image_upload(&image.id, &data)? {
            let _ = remove_file(home, &data.path);
            return Err(ImageError::NotQueued(image.id.clone()));
        }
        Ok(())
    })();
    if let Err(e) = stored {
        let _ = db.delete_image(&image.id);
        return Err(e);
    }
    Ok(db.image_by_id(&image.id)?.ok_or_else(|| DbError::NotFound(format!("image {} vanished", image.id)))?)
}

/// Whose eyes an image is looked up with. A guest gets only images its project could boot:
/// nova reads the image, its kernel and its ramdisk through glance with the user's context, so
/// another project's private image is "not found" there and never reaches a guest.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    pub project_id: &'a str,
    pub is_admin: bool,
}

impl Viewer<'_> {
    /// glance's visibility for booting: the owner's, public and community images, and shared
    /// ones the project accepted; an admin boots any.
    pub fn may_boot(&self, img: &Image) -> bool {
        self.is_admin
            || (!self.project_id.is_empty() && img.owner.as_deref() == Some(self.project_id))
            || matches!(img.visibility.as_str(), "public" | "community")
            || (img.visibility == "shared" && img.member_status(self.project_id).is_some_and(MemberStatus::lists_image))
    }
}

/// Why [`image_meta`] could not describe an image.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// A linked kernel or ramdisk that does not exist, or that the viewer may not boot.
    #[error("Image {0} could not be found.")]
    LinkedNotFound(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<MetaError> for DbError {
    fn from(e: MetaError) -> DbError {
        match e {
            MetaError::LinkedNotFound(_) => DbError::NotFound(e.to_string()),
            MetaError::Db(e) => e,
        }
    }
}

/// An image as a compute host reads it: its file's absolute path, with AMI-style kernel and
/// ramdisk images (the `kernel_id` / `ramdisk_id` properties, `nokernel` meaning none) resolved
/// the same way, each as `viewer` may see it. None when the image itself does not exist; an
/// error when a linked one is missing or not the viewer's to boot.
pub fn image_meta(
    db: &crate::db::Db,
    home: &Home,
    id: &str,
    viewer: &Viewer<'_>,
) -> Result<Option<crate::compute::virt::ImageMeta>, MetaError> {
    let Some(img) = db.image_by_id(id)? else { return Ok(None) };
    let no_kernel = img.properties.get("kernel_id").is_some_and(|k| k == "nokernel");
    let linked = |key: &str| -> Result<Option<Box<crate::compute::virt::ImageMeta>>, MetaError> {
        let Some(other) = img.properties.get(key).filter(|_| !no_kernel) else { return Ok(None) };
        // An AMI's kernel is an AKI, never another AMI: one level is all there is.
        let found = db.image_by_id(other)?.filter(|i| viewer.may_boot(i));
        let linked = found.ok_or_else(|| MetaError::LinkedNotFound(other.clone()))?;
        Ok(Some(Box::new(meta_of(home, &linked, None, None))))
    };
    let (kernel, ramdisk) = (linked("kernel_id")?, linked("ramdisk_id")?);
    Ok(Some(meta_of(home, &img, kernel, ramdisk)))
}

/// The image alone, its kernel and ramdisk left out: what a volume made from it holds (its
/// bytes), which no visibility of linked images can change.
pub fn data_meta(db: &Db, home: &Home, id: &str) -> Result<Option<crate::compute::virt::ImageMeta>, DbError> {
    Ok(db.image_by_id(id)?.map(|img| meta_of(home, &img, None, None)))
}

fn meta_of(
    home: &Home,
    img: &Image,
    kernel: Option<Box<crate::compute::virt::ImageMeta>>,
    ramdisk: Option<Box<crate::compute::virt::ImageMeta>>,
) -> crate::compute::virt::ImageMeta {
    crate::compute::virt::ImageMeta {
        id: img.id.clone(),
        name: img.name.clone(),
        disk_format: img.disk_format.clone(),
        container_format: img.container_format.clone(),
        size: img.size,
        file: file_path(home, img).map(|p| p.to_string_lossy().into_owned()),
        kernel,
        ramdisk,
        properties: img.properties.clone(),
    }
}

/// The images `import_test_image` made.
#[derive(Debug, Clone)]
pub struct TestImages {
    /// `tiny`, the one to boot.
    pub ami: Image,
    pub kernel: Image,
    pub ramdisk: Image,
}

/// The name users boot the test guest by.
pub const TEST_IMAGE_NAME: &str = "tiny";
/// The test guest's kernel needs more than m1.nano's 64 MB to unpack itself.
pub const TEST_IMAGE_MIN_RAM_MB: i64 = 128;

/// Imports the offline test guest (built with the doctor's embedded script unless already in
/// `<home>/images/test-guest`) when the image store is empty; `None` when it is not.
///
/// The guest is a kernel and an initramfs with no disk, so it is stored the way DevStack stores
/// CirrOS's UEC tarball: `tiny-kernel` (aki), `tiny-ramdisk` (ari), and `tiny` (ami), whose
/// data is a blank 1 MiB raw disk and whose `kernel_id`/`ramdisk_id` name the other two. All
/// three are public and owned by the admin project. `os_shutdown_timeout` is 0 because the
/// busybox guest has no ACPI handler: waiting for a clean shutdown would only waste a minute.
///
/// `cache` is the per-user cache a guest built for another home is taken from (see
/// [`crate::doctor::probe::ensure_test_image`]).
pub fn import_test_image(db: &Db, home: &Home, cache: Option<&Path>) -> Result<Option<TestImages>, ImageError> {
    if !db.images()?.is_empty() {
        return Ok(None);
    }
    let dir = home.images_dir().join(crate::doctor::probe::TEST_IMAGE_DIR);
    let guest =
        crate::doctor::probe::ensure_test_image(&dir, cache).map_err(|e| ImageError::TestImage(e.to_string()))?;
    let blank = dir.join("blank.img");
    std::fs::write(&blank, vec![0u8; 1 << 20]).map_err(|source| ImageError::Write { path: blank.clone(), source })?;
    let owner = db.ensure_project("admin", "Bootstrap project for the admin user")?;
    let mut made: Vec<Image> = Vec::new();
    let result = (|| {
        let none = BTreeMap::new();
        let kernel = import_file(db, home, &guest.kernel, "tiny-kernel", "aki", "aki", &none, "public", &owner)?;
        made.push(kernel.clone());
        let ramdisk = import_file(db, home, &guest.initrd, "tiny-ramdisk", "ari", "ari", &none, "public", &owner)?;
        made.push(ramdisk.clone());
        let props: BTreeMap<String, String> = [
            ("kernel_id".to_string(), kernel.id.clone()),
            ("ramdisk_id".to_string(), ramdisk.id.clone()),
            ("os_shutdown_timeout".to_string(), "0".to_string()),
        ]
        .into();
        let mut ami = import_file(db, home, &blank, TEST_IMAGE_NAME, "ami", "ami", &props, "public", &owner)?;
        made.push(ami.clone());
        ami.min_ram = TEST_IMAGE_MIN_RAM_MB;
        let ami = db.save_image(&ami)?;
        Ok(Some(TestImages { ami, kernel, ramdisk }))
    })();
    let _ = std::fs::remove_file(&blank);
    if result.is_err() {
        // All three or none: a lone kernel would keep the next `init` from trying again.
        for img in made {
            if let Ok(Some(rel)) = db.delete_image(&img.id) {
                let _ = remove_file(home, &rel);
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::OpenOptions;

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn writer_hashes_and_renames() {
        let t = tempfile::tempdir().unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        let mut w = ImageWriter::create(t.path(), &id, 1).unwrap();
        w.write(b"hello ").unwrap();
        w.write(b"world").unwrap();
        let d = w.finish(Some("raw")).unwrap();
        assert_eq!(d.md5, "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert!(d.sha512.starts_with("309ecc489c12d6eb4cc40f50c902f2b4d0ed77ee511a7c7a9bcd3ca86d4cd86f"));
        assert_eq!((d.size, d.virtual_size), (11, Some(11)));
        assert_eq!(files_in(t.path()), vec![id.clone()]);
        assert_eq!(std::fs::read(t.path().join(&id)).unwrap(), b"hello world");
    }

    #[test]
    fn writer_over_limit_or_dropped_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        let mut w = ImageWriter::create(t.path(), &id, 1).unwrap();
        w.write(&vec![0u8; 1024 * 1024]).unwrap();
        assert!(matches!(w.write(b"x"), Err(ImageError::TooLarge { limit_mb: 1 })));
        drop(w);
        assert!(files_in(t.path()).is_empty());
        assert!(matches!(ImageWriter::create(t.path(), "../etc", 1), Err(ImageError::BadId(_))));
    }

    #[test]
    fn sweeps_only_stale_upload_parts() {
        let t = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        let hour = STALE_UPLOAD_AGE;
        let id = "6f1c7a3e-0000-4000-8000-000000000001";
        let stale = t.path().join(format!(".{id}.part-aaaa"));
        let live = t.path().join(format!(".{id}.part-bbbb"));
        let image = t.path().join(id);
        let other = t.path().join(".keep");
        for (p, age) in [(&stale, hour * 2), (&live, hour / 2), (&image, hour * 48), (&other, hour * 48)] {
            std::fs::write(p, b"x").unwrap();
            std::fs::File::options().write(true).open(p).unwrap().set_modified(now - age).unwrap();
        }
        assert_eq!(sweep_stale_uploads(t.path(), hour, now), vec![stale.clone()]);
        assert!(!stale.exists() && live.exists() && image.exists() && other.exists());
        assert!(sweep_stale_uploads(&t.path().join("missing"), hour, now).is_empty());
    }

    #[test]
    fn reads_qcow2_virtual_size() {
        let mut head = b"QFI\xfb".to_vec();
        head.extend_from_slice(&[0, 0, 0, 3]);
        head.extend_from_slice(&[0u8; 16]);
        head.extend_from_slice(&(1u64 << 30).to_be_bytes());
        assert_eq!(virtual_size(Some("qcow2"), &head, 200), Some(1 << 30));
        assert_eq!(virtual_size(Some("qcow2"), b"short", 5), None);
        assert_eq!(virtual_size(Some("raw"), b"short", 5), Some(5));
    }

    #[test]
    fn test_image_is_imported_once_as_ami_aki_ari() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path());
        home.create_dirs().unwrap();
        // A built guest is reused: no script runs in this test.
        let guest = home.images_dir().join(crate::doctor::probe::TEST_IMAGE_DIR);
        std::fs::create_dir_all(&guest).unwrap();
        std::fs::write(guest.join("vmlinuz"), b"kernel").unwrap();
        std::fs::write(guest.join("initrd.img"), b"initrd").unwrap();
        let db = Db::open(&home.db_file(), OpenOptions::default()).unwrap();
        let made = import_test_image(&db, &home, None).unwrap().unwrap();
        assert_eq!(made.ami.name.as_deref(), Some("tiny"));
        assert_eq!((made.ami.visibility.as_str(), made.ami.min_ram), ("public", TEST_IMAGE_MIN_RAM_MB));
        assert_eq!(made.ami.size, Some(1 << 20));
        let viewer = Viewer { project_id: "someone", is_admin: false };
        let meta = image_meta(&db, &home, &made.ami.id, &viewer).unwrap().unwrap();
        assert_eq!(meta.disk_format.as_deref(), Some("ami"));
        let kernel = meta.kernel.unwrap();
        assert_eq!(std::fs::read(kernel.file.unwrap()).unwrap(), b"kernel");
        assert_eq!(kernel.disk_format.as_deref(), Some("aki"));
        assert_eq!(std::fs::read(meta.ramdisk.unwrap().file.unwrap()).unwrap(), b"initrd");
        assert!(!guest.join("blank.img").exists());
        assert!(import_test_image(&db, &home, None).unwrap().is_none(), "only into an empty store");
        assert_eq!(db.images().unwrap().len(), 3);
    }

    #[test]
    fn linked_kernel_and_ramdisk_are_resolved_only_when_the_viewer_may_boot_them() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path());
        home.create_dirs().unwrap();
        let db = Db::open(&home.db_file(), OpenOptions::default()).unwrap();
        let (demo, alt) = (db.ensure_project("demo", "").unwrap(), db.ensure_project("alt", "").unwrap());
        let src = t.path().join("blob");
        std::fs::write(&src, b"bytes").unwrap();
        let none = BTreeMap::new();
        let kernel = import_file(&db, &home, &src, "k", "aki", "aki", &none, "public", &demo).unwrap();
        let secret = import_file(&db, &home, &src, "demo-only", "ari", "ari", &none, "private", &demo).unwrap();
        // alt's own image names a public kernel and demo's private ramdisk (issue 14).
        let props: BTreeMap<String, String> =
            [("kernel_id".to_string(), kernel.id.clone()), ("ramdisk_id".to_string(), secret.id.clone())].into();
        let ami = import_file(&db, &home, &src, "alt-ami", "ami", "ami", &props, "private", &alt).unwrap();
        let as_alt = Viewer { project_id: &alt, is_admin: false };
        let err = image_meta(&db, &home, &ami.id, &as_alt).unwrap_err();
        assert!(matches!(&err, MetaError::LinkedNotFound(id) if *id == secret.id), "{err}");
        // A shared image is alt's only once alt accepted it.
        let mut shared = secret.clone();
        shared.visibility = "shared".into();
        db.save_image(&shared).unwrap();
        db.add_image_member(&secret.id, &alt).unwrap();
        assert!(image_meta(&db, &home, &ami.id, &as_alt).is_err(), "a pending member may not boot it");
        db.set_image_member_status(&secret.id, &alt, MemberStatus::Accepted).unwrap();
        let meta = image_meta(&db, &home, &ami.id, &as_alt).unwrap().unwrap();
        assert_eq!(meta.ramdisk.unwrap().id, secret.id);
        // `nokernel` means neither, as nova reads it.
        let mut bare = ami.clone();
        bare.properties.insert("kernel_id".into(), "nokernel".into());
        db.save_image(&bare).unwrap();
        let meta = image_meta(&db, &home, &ami.id, &Viewer { project_id: &alt, is_admin: false }).unwrap().unwrap();
        assert!(meta.kernel.is_none() && meta.ramdisk.is_none());
    }

    #[test]
    fn import_file_makes_an_active_image() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path());
        home.create_dirs().unwrap();
        let db = Db::open(&home.db_file(), OpenOptions::default()).unwrap();
        let owner = db.ensure_project("admin", "").unwrap();
        let src = t.path().join("tiny.img");
        std::fs::write(&src, b"guest bytes").unwrap();
        let props: BTreeMap<String, String> = [("hw_rng_model".to_string(), "virtio".to_string())].into();
        let img = import_file(&db, &home, &src, "tiny", "raw", "bare", &props, "public", &owner).unwrap();
        assert_eq!(img.status, ImageStatus::Active);
        assert_eq!(img.size, Some(11));
        assert_eq!(img.properties["hw_rng_model"], "virtio");
        let path = file_path(&home, &img).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"guest bytes");

        let missing = import_file(&db, &home, &t.path().join("nope"), "x", "raw", "bare", &props, "public", &owner);
        assert!(matches!(missing, Err(ImageError::Read { .. })));
        assert_eq!(db.images().unwrap().len(), 1, "a failed import must leave no record");
    }
}
