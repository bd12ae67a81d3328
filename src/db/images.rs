//! Images (glance): rows, extra properties, tags and members. Deleted images are soft-deleted
//! as glance does, so an `image_ref` kept by an instance still names a row.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, OptionalExtension, Row};

use super::{now, Db, DbError, Result};
use crate::images::{ImageStatus, MemberStatus};

/// An image as glance shows it, with its extra properties, tags and members.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub id: String,
    pub name: Option<String>,
    /// The owning project; `None` only for images imported without one.
    pub owner: Option<String>,
    pub status: ImageStatus,
    /// public, community, shared, private
    pub visibility: String,
    pub protected: bool,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub size: Option<i64>,
    pub virtual_size: Option<i64>,
    /// md5 of the data, as glance's `checksum`.
    pub checksum: Option<String>,
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    pub min_disk: i64,
    pub min_ram: i64,
    /// The data file, relative to the home's `images/`; set once the image is active.
    pub path: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Extra properties (`kernel_id`, `ramdisk_id`, `hw_*`, ...); values are strings in glance.
    pub properties: BTreeMap<String, String>,
    pub tags: BTreeSet<String>,
    pub members: Vec<ImageMember>,
}

impl Image {
    /// The status of `project_id`'s membership, if it is a member.
    pub fn member_status(&self, project_id: &str) -> Option<MemberStatus> {
        self.members.iter().find(|m| m.member == project_id).map(|m| m.status)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMember {
    pub image_id: String,
    pub member: String,
    pub status: MemberStatus,
    pub created_at: String,
}

/// What a new image record needs; it starts `queued`, without data.
#[derive(Debug, Clone, Default)]
pub struct NewImage {
    /// A client-chosen uuid, or `None` for a fresh one.
    pub id: Option<String>,
    pub name: Option<String>,
    pub owner: Option<String>,
    pub visibility: String,
    pub protected: bool,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub min_disk: i64,
    pub min_ram: i64,
    pub properties: BTreeMap<String, String>,
    pub tags: BTreeSet<String>,
}

/// The result of storing an image's bytes: where they are and what they hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredData {
    /// Relative to the home's `images/`.
    pub path: String,
    pub size: i64,
    pub virtual_size: Option<i64>,
    pub md5: String,
    pub sha512: String,
}

const COLUMNS: &str = "id, name, owner, status, visibility, protected, disk_format, container_format, size, \
                       virtual_size, checksum, os_hash_algo, os_hash_value, min_disk, min_ram, path, created_at, \
                       updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Image> {
    let created_at: String = r.get(16)?;
    let updated_at: Option<String> = r.get(17)?;
    Ok(Image {
        id: r.get(0)?,
        name: r.get(1)?,
        owner: r.get(2)?,
        status: r.get(3)?,
        visibility: r.get(4)?,
        protected: r.get(5)?,
        disk_format: r.get(6)?,
        container_format: r.get(7)?,
        size: r.get(8)?,
        virtual_size: r.get(9)?,
        checksum: r.get(10)?,
        os_hash_algo: r.get(11)?,
        os_hash_value: r.get(12)?,
        min_disk: r.get(13)?,
        min_ram: r.get(14)?,
        path: r.get(15)?,
        updated_at: updated_at.unwrap_or_else(|| created_at.clone()),
        created_at,
        properties: BTreeMap::new(),
        tags: BTreeSet::new(),
        members: Vec::new(),
    })
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl Db {
    /// Creates a `queued` image without data. A taken id is a `Conflict`.
    pub fn create_image(&self, new: &NewImage) -> Result<Image> {
        let id = new.id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let tx = self.begin()?;
        let ts = now();
        let inserted = tx.execute(
            "INSERT INTO images (id, name, owner, status, visibility, protected, disk_format, container_format,
                                 min_disk, min_ram, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?11, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
            params![
                id,
                new.name,
                new.owner,
                new.visibility,
                new.protected,
                new.disk_format,
                new.container_format,
                new.min_disk,
                new.min_ram,
                ts,
                ImageStatus::Queued
            ],
        );
        match inserted {
            Ok(_) => {}
            Err(e) if is_constraint(&e) => {
                return Err(DbError::Conflict(format!("Image with identifier {id} already exists!")))
            }
            Err(e) => return Err(e.into()),
        }
        for (k, v) in &new.properties {
            tx.execute("INSERT INTO image_properties (image_id, name, value) VALUES (?1, ?2, ?3)", params![id, k, v])?;
        }
        for t in &new.tags {
            tx.execute("INSERT INTO image_tags (image_id, tag) VALUES (?1, ?2)", params![id, t])?;
        }
        tx.commit()?;
        self.image_by_id(&id)?.ok_or_else(|| DbError::NotFound(format!("image {id} vanished")))
    }

    /// A live (not deleted) image with its properties, tags and members. The compute side
    /// uses this to find `kernel_id`/`ramdisk_id` and, with [`crate::images::file_path`], the
    /// data file of an active image.
    pub fn image_by_id(&self, id: &str) -> Result<Option<Image>> {
        let img = self
            .conn()
            .query_row(&format!("SELECT {COLUMNS} FROM images WHERE id = ?1 AND deleted = 0"), [id], from_row)
            .optional()?;
        match img {
            Some(mut img) => {
                self.load_image_details(std::slice::from_mut(&mut img))?;
                Ok(Some(img))
            }
            None => Ok(None),
        }
    }

    /// An image even if it was deleted (as a paging marker, which glance accepts deleted);
    /// without properties, tags or members.
    pub fn image_row_including_deleted(&self, id: &str) -> Result<Option<Image>> {
        Ok(self.conn().query_row(&format!("SELECT {COLUMNS} FROM images WHERE id = ?1"), [id], from_row).optional()?)
    }

    /// Every live image, oldest first. A sandbox holds tens of images, so the API filters,
    /// sorts and pages in memory rather than building SQL per filter.
    pub fn images(&self) -> Result<Vec<Image>> {
        let mut stmt =
            self.conn().prepare(&format!("SELECT {COLUMNS} FROM images WHERE deleted = 0 ORDER BY created_at, id"))?;
        let mut images = stmt.query_map([], from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        self.load_image_details(&mut images)?;
        Ok(images)
    }

    fn load_image_details(&self, images: &mut [Image]) -> Result<()> {
        let mut props = self.conn().prepare("SELECT name, value FROM image_properties WHERE image_id = ?1")?;
        let mut tags = self.conn().prepare("SELECT tag FROM image_tags WHERE image_id = ?1")?;
        let mut members = self.conn().prepare(
            "SELECT image_id, member, status, created_at FROM image_members WHERE image_id = ?1 ORDER BY created_at",
        )?;
        for img in images.iter_mut() {
            img.properties = props
                .query_map([&img.id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<BTreeMap<String, String>>>()?;
            img.tags = tags.query_map([&img.id], |r| r.get(0))?.collect::<rusqlite::Result<BTreeSet<String>>>()?;
            img.members = members
                .query_map([&img.id], |r| {
                    Ok(ImageMember { image_id: r.get(0)?, member: r.get(1)?, status: r.get(2)?, created_at: r.get(3)? })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
        }
        Ok(())
    }

    /// Writes back what a client may change (name, visibility, protected, formats, min_*,
    /// owner, properties, tags), in one transaction. Returns the stored image.
    pub fn save_image(&self, img: &Image) -> Result<Image> {
        let tx = self.begin()?;
        let changed = tx.execute(
            "UPDATE images SET name = ?2, visibility = ?3, protected = ?4, disk_format = ?5, container_format = ?6,
                    min_disk = ?7, min_ram = ?8, owner = ?9, updated_at = ?10
             WHERE id = ?1 AND deleted = 0",
            params![
                img.id,
                img.name,
                img.visibility,
                img.protected,
                img.disk_format,
                img.container_format,
                img.min_disk,
                img.min_ram,
                img.owner,
                now()
            ],
        )?;
        if changed == 0 {
            return Err(DbError::NotFound(format!("No image found with ID {}", img.id)));
        }
        tx.execute("DELETE FROM image_properties WHERE image_id = ?1", [&img.id])?;
        for (k, v) in &img.properties {
            tx.execute(
                "INSERT INTO image_properties (image_id, name, value) VALUES (?1, ?2, ?3)",
                params![img.id, k, v],
            )?;
        }
        tx.execute("DELETE FROM image_tags WHERE image_id = ?1", [&img.id])?;
        for t in &img.tags {
            tx.execute("INSERT INTO image_tags (image_id, tag) VALUES (?1, ?2)", params![img.id, t])?;
        }
        tx.commit()?;
        self.image_by_id(&img.id)?.ok_or_else(|| DbError::NotFound(format!("No image found with ID {}", img.id)))
    }

    /// Moves a live image from status `from` to `to`; false when it was not in `from` (another
    /// upload won, or it was deleted meanwhile).
    pub fn set_image_status(&self, id: &str, from: ImageStatus, to: ImageStatus) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE images SET status = ?3, updated_at = ?4 WHERE id = ?1 AND status = ?2 AND deleted = 0",
            params![id, from, to, now()],
        )?;
        Ok(n == 1)
    }

    /// Records stored data and makes a `saving` image `active`. False when the image is no
    /// longer saving (deleted during the upload): the caller then removes the file.
    pub fn finish_image_upload(&self, id: &str, data: &StoredData) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE images SET status = ?8, path = ?2, size = ?3, virtual_size = ?4, checksum = ?5,
                    os_hash_algo = 'sha512', os_hash_value = ?6, updated_at = ?7
             WHERE id = ?1 AND status = ?9 AND deleted = 0",
            params![
                id,
                data.path,
                data.size,
                data.virtual_size,
                data.md5,
                data.sha512,
                now(),
                ImageStatus::Active,
                ImageStatus::Saving
            ],
        )?;
        Ok(n == 1)
    }

    /// Soft-deletes a live image; returns its data file (relative to `images/`), if it had
    /// one, for the caller to remove. `NotFound` when there is no such live image.
    pub fn delete_image(&self, id: &str) -> Result<Option<String>> {
        let tx = self.begin()?;
        let path: Option<Option<String>> =
            tx.query_row("SELECT path FROM images WHERE id = ?1 AND deleted = 0", [id], |r| r.get(0)).optional()?;
        let Some(path) = path else {
            return Err(DbError::NotFound(format!("No image found with ID {id}")));
        };
        let ts = now();
        tx.execute(
            "UPDATE images SET status = ?3, deleted = 1, deleted_at = ?2, updated_at = ?2, path = NULL
             WHERE id = ?1",
            params![id, ts, ImageStatus::Deleted],
        )?;
        tx.execute("DELETE FROM image_members WHERE image_id = ?1", [id])?;
        tx.commit()?;
        Ok(path)
    }

    pub fn add_image_tag(&self, id: &str, tag: &str) -> Result<()> {
        self.conn().execute("INSERT OR IGNORE INTO image_tags (image_id, tag) VALUES (?1, ?2)", params![id, tag])?;
        self.touch_image(id)
    }

    /// False when the image did not carry `tag`.
    pub fn remove_image_tag(&self, id: &str, tag: &str) -> Result<bool> {
        let n = self.conn().execute("DELETE FROM image_tags WHERE image_id = ?1 AND tag = ?2", params![id, tag])?;
        self.touch_image(id)?;
        Ok(n == 1)
    }

    fn touch_image(&self, id: &str) -> Result<()> {
        self.conn().execute("UPDATE images SET updated_at = ?2 WHERE id = ?1", params![id, now()])?;
        Ok(())
    }

    /// Adds `member` (a project id) as `pending`; a second add is a `Conflict`.
    pub fn add_image_member(&self, image_id: &str, member: &str) -> Result<ImageMember> {
        let ts = now();
        match self.conn().execute(
            "INSERT INTO image_members (image_id, member, status, created_at) VALUES (?1, ?2, ?4, ?3)",
            params![image_id, member, ts, MemberStatus::Pending],
        ) {
            Ok(_) => {}
            Err(e) if is_constraint(&e) => {
                return Err(DbError::Conflict(format!("Member {member} already exists for image {image_id}.")))
            }
            Err(e) => return Err(e.into()),
        }
        Ok(ImageMember {
            image_id: image_id.into(),
            member: member.into(),
            status: MemberStatus::Pending,
            created_at: ts,
        })
    }

    /// False when `member` is not a member of the image.
    pub fn set_image_member_status(&self, image_id: &str, member: &str, status: MemberStatus) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE image_members SET status = ?3 WHERE image_id = ?1 AND member = ?2",
            params![image_id, member, status],
        )?;
        Ok(n == 1)
    }

    /// False when `member` was not a member of the image.
    pub fn remove_image_member(&self, image_id: &str, member: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM image_members WHERE image_id = ?1 AND member = ?2", params![image_id, member])?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::OpenOptions;

    fn db() -> (tempfile::TempDir, Db) {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        (t, db)
    }

    fn new_image(name: &str) -> NewImage {
        NewImage {
            name: Some(name.into()),
            visibility: "shared".into(),
            disk_format: Some("qcow2".into()),
            container_format: Some("bare".into()),
            properties: [("hw_disk_bus".to_string(), "virtio".to_string())].into(),
            tags: ["a".to_string()].into(),
            ..NewImage::default()
        }
    }

    #[test]
    fn image_lifecycle_keeps_properties_and_soft_deletes() {
        let (_t, db) = db();
        let img = db.create_image(&new_image("cirros")).unwrap();
        assert_eq!(img.status, ImageStatus::Queued);
        assert_eq!(img.properties["hw_disk_bus"], "virtio");
        assert!(img.tags.contains("a"));
        assert!(img.updated_at.ends_with('Z'));

        let dup = db.create_image(&NewImage { id: Some(img.id.clone()), ..new_image("x") }).unwrap_err();
        assert!(matches!(dup, DbError::Conflict(_)));

        assert!(db.set_image_status(&img.id, ImageStatus::Queued, ImageStatus::Saving).unwrap());
        assert!(
            !db.set_image_status(&img.id, ImageStatus::Queued, ImageStatus::Saving).unwrap(),
            "second upload must lose"
        );
        let data =
            StoredData { path: img.id.clone(), size: 3, virtual_size: Some(3), md5: "m".into(), sha512: "s".into() };
        assert!(db.finish_image_upload(&img.id, &data).unwrap());
        let active = db.image_by_id(&img.id).unwrap().unwrap();
        assert_eq!(
            (active.status, active.size, active.os_hash_algo.as_deref()),
            (ImageStatus::Active, Some(3), Some("sha512"))
        );

        let mut changed = active.clone();
        changed.name = Some("renamed".into());
        changed.properties.insert("kernel_id".into(), "k".into());
        changed.tags.clear();
        let saved = db.save_image(&changed).unwrap();
        assert_eq!(saved.name.as_deref(), Some("renamed"));
        assert_eq!(saved.properties.len(), 2);
        assert!(saved.tags.is_empty());

        assert_eq!(db.delete_image(&img.id).unwrap().as_deref(), Some(img.id.as_str()));
        assert!(db.image_by_id(&img.id).unwrap().is_none());
        assert!(db.images().unwrap().is_empty());
        assert!(matches!(db.delete_image(&img.id), Err(DbError::NotFound(_))));
    }

    #[test]
    fn members_and_tags() {
        let (_t, db) = db();
        let img = db.create_image(&new_image("a")).unwrap();
        db.add_image_member(&img.id, "p2").unwrap();
        assert!(matches!(db.add_image_member(&img.id, "p2"), Err(DbError::Conflict(_))));
        assert_eq!(img.member_status("p2"), None);
        assert_eq!(db.image_by_id(&img.id).unwrap().unwrap().member_status("p2"), Some(MemberStatus::Pending));
        assert!(db.set_image_member_status(&img.id, "p2", MemberStatus::Accepted).unwrap());
        let img2 = db.image_by_id(&img.id).unwrap().unwrap();
        assert_eq!(img2.member_status("p2"), Some(MemberStatus::Accepted));
        assert!(db.remove_image_member(&img.id, "p2").unwrap());
        assert!(!db.remove_image_member(&img.id, "p2").unwrap());

        db.add_image_tag(&img.id, "b").unwrap();
        db.add_image_tag(&img.id, "b").unwrap();
        assert!(db.remove_image_tag(&img.id, "a").unwrap());
        assert!(!db.remove_image_tag(&img.id, "a").unwrap());
        let tags: Vec<_> = db.image_by_id(&img.id).unwrap().unwrap().tags.into_iter().collect();
        assert_eq!(tags, vec!["b".to_string()]);
    }
}
