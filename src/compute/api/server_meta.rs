//! What an owner keeps on a server besides its state, as nova's compute API changes it: the
//! metadata items (`update_instance_metadata`, `delete_instance_metadata`), the tags (nova's
//! `server_tags` controller) and the password the guest posted (`os-server-password`). None
//! of them is an instance action in nova, and none reaches the compute host: the metadata
//! service reads them from the database on every request, while the config drive keeps what
//! the server booted with, as nova's does.

use std::collections::BTreeMap;

use super::{ComputeApi, ComputeError, Result};
use crate::api::compute::validation;
use crate::api::context::Auth;
use crate::api::fault::ApiError;
use crate::compute::states::VmState;
use crate::db::instances::Instance;
use crate::db::Db;

/// The most tags a server can have (nova's `MAX_TAG_COUNT`).
pub const MAX_TAGS: usize = 50;
/// The longest tag (nova's `MAX_TAG_LENGTH`), in characters.
pub const MAX_TAG_LENGTH: usize = 60;

/// The vm_states in which nova changes a server's metadata and tags.
const CHANGEABLE: &[VmState] = &[VmState::Active, VmState::Paused, VmState::Suspended, VmState::Stopped];

/// A change to a server's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataChange {
    /// `POST /metadata` and `PUT /metadata/{key}`: these items set, the others kept.
    Merge(BTreeMap<String, String>),
    /// `PUT /metadata`: exactly these items.
    Replace(BTreeMap<String, String>),
    /// `DELETE /metadata/{key}`.
    Delete(String),
}

/// Why a tag is not one nova takes (its `tag` schema: 1 to 60 characters, no `,` or `/`), in
/// the words of jsonschema's message; None when it is fine.
pub fn tag_error(tag: &str) -> Option<String> {
    let n = tag.chars().count();
    if n == 0 {
        Some("'' is too short".to_string())
    } else if n > MAX_TAG_LENGTH {
        Some(format!("'{tag}' is too long"))
    } else if tag.contains([',', '/']) {
        Some(format!("'{tag}' does not match '^[^,/]*$'"))
    } else {
        None
    }
}

/// A list of tags as nova's schemas take one (`tags` of `PUT /tags` and, from 2.52, of a
/// create): an array of at most 50 tags, refused in the validator's words.
pub fn tag_list(value: &serde_json::Value) -> std::result::Result<Vec<String>, ApiError> {
    let bad = |at: &str, value: &serde_json::Value, why: String| {
        ApiError::bad_request(format!("Invalid input for field/attribute {at}. Value: {value}. {why}"))
    };
    let list = value.as_array().ok_or_else(|| bad("tags", value, format!("{value} is not of type 'array'")))?;
    if list.len() > MAX_TAGS {
        return Err(bad("tags", value, format!("{value} is too long")));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let at = i.to_string();
        let tag = item.as_str().ok_or_else(|| bad(&at, item, format!("{item} is not of type 'string'")))?;
        if let Some(why) = tag_error(tag) {
            return Err(bad(&at, item, why));
        }
        out.push(tag.to_string());
    }
    Ok(out)
}

fn not_found(message: String) -> ComputeError {
    ComputeError::Refused(ApiError::not_found(message))
}

/// nova's `check_instance_state` for metadata: the vm_state first, then no task running.
fn check_state(inst: &Instance, action: &'static str, task_too: bool) -> Result<()> {
    let uuid = inst.uuid.clone();
    if !CHANGEABLE.contains(&inst.vm_state) {
        return Err(ComputeError::InvalidState { action, uuid, vm_state: inst.vm_state, task_state: None });
    }
    if task_too && inst.task_state.is_some() {
        return Err(ComputeError::InvalidState { action, uuid, vm_state: inst.vm_state, task_state: inst.task_state });
    }
    Ok(())
}

impl ComputeApi<'_> {
    /// The instance as it is inside the caller's transaction (the state a change is checked
    /// against is the state it is made in).
    fn current(&self, db: &Db, uuid: &str) -> Result<Instance> {
        db.instance_by_uuid(uuid, false)?.ok_or_else(|| ComputeError::InstanceNotFound(uuid.to_string()))
    }

    pub fn metadata(&self, auth: &Auth, id: &str) -> Result<BTreeMap<String, String>> {
        Ok(self.get(auth, id)?.metadata)
    }

    /// One item, or nova's 404.
    pub fn metadata_item(&self, auth: &Auth, id: &str, key: &str) -> Result<String> {
        self.get(auth, id)?.metadata.remove(key).ok_or_else(|| not_found("Metadata item was not found".into()))
    }

    /// Changes a server's metadata as nova does: a locked server only by an admin (409), only
    /// in the states nova allows with no task running (409), and never past the caller's
    /// `metadata_items` quota (403). Returns the metadata after the change.
    pub fn change_metadata(&self, auth: &Auth, id: &str, change: MetadataChange) -> Result<BTreeMap<String, String>> {
        let inst = self.get(auth, id)?;
        self.state.db.tx(|db| {
            let inst = self.current(db, &inst.uuid)?;
            // nova looks the key up before the lock and the state.
            if let MetadataChange::Delete(key) = &change {
                if !inst.metadata.contains_key(key) {
                    return Err(not_found("Metadata item was not found".into()));
                }
            }
            if inst.locked && !auth.is_admin() {
                return Err(ComputeError::Locked(inst.uuid.clone()));
            }
            let action =
                if matches!(change, MetadataChange::Delete(_)) { "delete metadata" } else { "update metadata" };
            check_state(&inst, action, true)?;
            let mut after = inst.metadata.clone();
            match change {
                MetadataChange::Merge(items) => {
                    after.extend(items.clone());
                    self.metadata_quota(db, auth, after.len())?;
                    db.set_instance_metadata_items(&inst.uuid, &items)?;
                }
                MetadataChange::Replace(items) => {
                    self.metadata_quota(db, auth, items.len())?;
                    db.replace_instance_metadata(&inst.uuid, &items)?;
                    after = items;
                }
                MetadataChange::Delete(key) => {
                    after.remove(&key);
                    db.delete_instance_metadata_item(&inst.uuid, &key)?;
                }
            }
            Ok(after)
        })
    }

    /// nova counts metadata items against the caller's project's quota.
    fn metadata_quota(&self, db: &Db, auth: &Auth, items: usize) -> Result<()> {
        let limits = db.quota_limits(auth.project_id())?;
        Ok(validation::metadata_quota(items, limits.get("metadata_items").copied().unwrap_or(-1))?)
    }

    pub fn tags(&self, auth: &Auth, id: &str) -> Result<Vec<String>> {
        let inst = self.get(auth, id)?;
        Ok(self.state.db.with(|db| db.instance_tags(&inst.uuid))?)
    }

    /// `GET /tags/{tag}`: whether the server has it (nova's 404 otherwise).
    pub fn check_tag(&self, auth: &Auth, id: &str, tag: &str) -> Result<()> {
        let inst = self.get(auth, id)?;
        if self.state.db.with(|db| db.instance_has_tag(&inst.uuid, tag))? {
            Ok(())
        } else {
            Err(not_found(format!("Server {id} has no tag '{tag}'")))
        }
    }

    /// `PUT /tags/{tag}`: true when the tag is new (201), false when the server had it (204).
    /// nova checks the state, then the tag, then the count (so a server with the most tags
    /// refuses even one it has).
    pub fn add_tag(&self, auth: &Auth, id: &str, tag: &str) -> Result<bool> {
        let inst = self.get(auth, id)?;
        self.state.db.tx(|db| {
            let inst = self.current(db, &inst.uuid)?;
            check_state(&inst, "update tag", false)?;
            if let Some(err) = tag_error(tag) {
                return Err(ComputeError::Invalid(format!(
                    "Tag '{tag}' is invalid. It must be a non empty string without characters '/' and ','. \
                     Validation error message: {err}"
                )));
            }
            if db.instance_tags(&inst.uuid)?.len() >= MAX_TAGS {
                return Err(ComputeError::Invalid(format!(
                    "The number of tags exceeded the per-server limit {MAX_TAGS}"
                )));
            }
            Ok(db.add_instance_tag(&inst.uuid, tag)?)
        })
    }

    /// `PUT /tags`: the server's tags become `tags` (already checked against nova's schema).
    pub fn replace_tags(&self, auth: &Auth, id: &str, tags: &[String]) -> Result<Vec<String>> {
        let inst = self.get(auth, id)?;
        self.state.db.tx(|db| {
            let inst = self.current(db, &inst.uuid)?;
            check_state(&inst, "update tags", false)?;
            Ok(db.replace_instance_tags(&inst.uuid, tags)?)
        })
    }

    /// `DELETE /tags/{tag}`.
    pub fn delete_tag(&self, auth: &Auth, id: &str, tag: &str) -> Result<()> {
        let inst = self.get(auth, id)?;
        self.state.db.tx(|db| {
            let inst = self.current(db, &inst.uuid)?;
            check_state(&inst, "delete tag", false)?;
            if db.delete_instance_tag(&inst.uuid, tag)? {
                Ok(())
            } else {
                Err(not_found(format!("Instance {} has no tag '{tag}'", inst.uuid)))
            }
        })
    }

    /// `DELETE /tags`.
    pub fn delete_tags(&self, auth: &Auth, id: &str) -> Result<()> {
        let inst = self.get(auth, id)?;
        self.state.db.tx(|db| {
            let inst = self.current(db, &inst.uuid)?;
            check_state(&inst, "delete tags", false)?;
            Ok(db.delete_instance_tags(&inst.uuid)?)
        })
    }

    /// `os-server-password`: what the guest posted, or "" (nova's `password or ''`).
    pub fn password(&self, auth: &Auth, id: &str) -> Result<String> {
        let inst = self.get(auth, id)?;
        Ok(self.state.db.with(|db| db.instance_password(&inst.uuid))?.unwrap_or_default())
    }

    /// `DELETE os-server-password`: forgets it, so the guest may post another (the guest's own
    /// password does not change).
    pub fn clear_password(&self, auth: &Auth, id: &str) -> Result<()> {
        let inst = self.get(auth, id)?;
        Ok(self.state.db.with(|db| db.clear_instance_password(&inst.uuid))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::Cloud;
    use crate::bus::Context;
    use crate::db::instances::InstanceUpdate;

    fn owner(project: &str) -> Auth {
        let context = Context {
            request_id: Context::new_request_id(),
            user_id: Some("u".into()),
            project_id: Some(project.into()),
            ..Context::default()
        };
        Auth { context, user_name: "u".into(), project_name: "p".into() }
    }

    /// Racing writers cannot pass the limits together: each check and its write are one
    /// transaction. 16 threads add one item each under a quota of 5 (the server has one),
    /// 60 add a tag each to a server that takes 50.
    #[test]
    fn concurrent_writers_stop_at_the_quota_and_the_tag_limit() {
        let c = Cloud::new();
        let inst = c.state.db.with(|db| {
            let inst = db.create_instance(&crate::db::instances::tests::new_instance(db, "vm")).unwrap();
            let active =
                InstanceUpdate { vm_state: Some(VmState::Active), task_state: Some(None), ..Default::default() };
            db.update_instance(&inst.uuid, &active).unwrap().unwrap();
            db.set_quota(&inst.project_id, "metadata_items", 5).unwrap();
            inst
        });
        let auth = owner(&inst.project_id);
        let outcomes: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let (state, auth, uuid) = (&c.state, &auth, &inst.uuid);
                    s.spawn(move || {
                        let items = [(format!("k{i}"), "v".to_string())].into_iter().collect();
                        match ComputeApi::new(state).change_metadata(auth, uuid, MetadataChange::Merge(items)) {
                            Ok(_) => true,
                            Err(e) => {
                                assert_eq!(ApiError::from(e).status, 403);
                                false
                            }
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 4);
        assert_eq!(ComputeApi::new(&c.state).metadata(&auth, &inst.uuid).unwrap().len(), 5);

        let added: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..60)
                .map(|i| {
                    let (state, auth, uuid) = (&c.state, &auth, &inst.uuid);
                    s.spawn(move || ComputeApi::new(state).add_tag(auth, uuid, &format!("t{i}")).is_ok())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(added.iter().filter(|ok| **ok).count(), MAX_TAGS);
        assert_eq!(ComputeApi::new(&c.state).tags(&auth, &inst.uuid).unwrap().len(), MAX_TAGS);
    }

    #[test]
    fn tags_follow_nova_s_schema() {
        assert_eq!(tag_error("web"), None);
        assert_eq!(tag_error(&"é".repeat(60)), None, "characters, not bytes");
        assert!(tag_error(&"x".repeat(61)).is_some_and(|e| e.ends_with("is too long")));
        assert_eq!(tag_error(""), Some("'' is too short".into()));
        assert_eq!(tag_error("a,b"), Some("'a,b' does not match '^[^,/]*$'".into()));
        assert!(tag_error("a/b").is_some());
    }
}
