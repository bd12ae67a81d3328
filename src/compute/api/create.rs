//! `create`: check what a boot request names against the database and the project's quotas,
//! write its instances in one transaction, and hand them to the scheduler.

use serde_json::{json, Value};

use super::requests::invalid;
use super::{ComputeApi, ComputeError, CreateRequest, Result};
use crate::api::compute::validation;
use crate::api::context::Auth;
use crate::compute::states::VmState;
use crate::db::instances::{FlavorSnapshot, Instance, InstanceUpdate, NewBlockDevice, NewInstance};
use crate::db::Db;
use crate::rpcapi::{RequestSpec, RequestedNetworks, SchedulerApi};

impl ComputeApi<'_> {
    /// Boots up to `req.max_count` servers (as many as the quota allows, at least `min_count`); they are written (building, scheduling) and cast to
    /// the scheduler before this returns.
    pub async fn create(&self, auth: &Auth, req: &CreateRequest) -> Result<Vec<Instance>> {
        let ctx = auth.context.clone();
        let destination = validation::destination(auth, req.forced.clone(), &req.hints, req.requested.clone())?;

        // Validate against the database and write the instances, all in one transaction so quotas
        // hold under concurrent creates (from this process or another on the same database) and
        // a failure on the second of several instances stores none of them.
        type Created = (Vec<Instance>, Value, Option<crate::compute::virt::ImageMeta>);
        let (instances, image_props, image_meta) = self.state.db.tx(|db| -> Result<Created> {
            let validating =
                tracing::info_span!("validate", what = "flavor, image, keypair, networks, quotas").entered();
            let flavor = crate::api::compute::flavors::visible_flavor(db, auth, &req.flavor_ref)?
                .ok_or_else(|| invalid(format!("Flavor {} could not be found.", req.flavor_ref)))?;
            let extra_specs = db.flavor_extra_specs(flavor.id)?;
            let mut image_id = req.image_id.clone();
            let boot_from_volume =
                req.block_devices.iter().any(|b| b.destination_type == "volume" && b.boot_index == Some(0));
            check_boot_volumes(db, &req.block_devices, auth.project_id(), req.max_count as i64, &mut image_id)?;
            let image = bootable_image(db, &image_id, auth.project_id(), auth.is_admin())?;
            let meta = validation::boot_image_meta(db, &self.state.home, &image.id, auth)?;
            validation::known_destination(db, &destination)?;
            let root_bytes = flavor.root_gb.saturating_mul(1 << 30);
            // Booted from a volume, the flavor's root disk is not used (nova's rule).
            if !boot_from_volume
                && flavor.root_gb > 0
                && (image.size.unwrap_or(0) > root_bytes || image.min_disk > flavor.root_gb)
            {
                return Err(invalid("Flavor's disk is too small for requested image."));
            }
            if image.min_ram > flavor.memory_mb {
                return Err(invalid("Flavor's memory is too small for requested image."));
            }
            if let Some(az) = &req.availability_zone {
                let default = &self.state.config.host.availability_zone;
                if !db.available_zones(default)?.contains(az) {
                    return Err(invalid("The requested availability zone is not available"));
                }
            }
            let key_data = match &req.key_name {
                Some(k) => Some(
                    db.keypair(auth.user_id(), k)?
                        .ok_or_else(|| invalid(format!("Invalid key_name provided: {k}")))?
                        .public_key,
                ),
                None => None,
            };
            let mut sg_ids = Vec::new();
            for name in &req.security_groups {
                sg_ids.push(security_group_id(db, auth.project_id(), name)?);
            }
            check_requested_networks(db, &req.networks, auth.project_id(), auth.is_admin())?;
            let group = join_group(db, auth, req)?;

            // Quotas: nova counts instances, cores and RAM per project.
            let (used_instances, used_cores, used_ram) = db.project_usage(auth.project_id())?;
            let limits = db.quota_limits(auth.project_id())?;
            validation::metadata_quota(req.metadata.len(), limits.get("metadata_items").copied().unwrap_or(-1))?;
            // nova's all-or-nothing check: as many as fit, up to max_count; fewer than min_count
            // fitting refuses the request with the first resource that does not fit.
            let mut count = req.max_count as i64;
            let mut over = None;
            for (resource, used, each) in [
                ("instances", used_instances, 1),
                ("cores", used_cores, flavor.vcpus),
                ("ram", used_ram, flavor.memory_mb),
            ] {
                let limit = limits.get(resource).copied().unwrap_or(-1);
                if limit < 0 || each <= 0 {
                    continue;
                }
                let fits = (limit - used).max(0) / each;
                if fits < count {
                    count = fits;
                    over.get_or_insert((resource, used, each, limit));
                }
            }
            if count < req.min_count as i64 {
                let (resource, used, each, limit) = over.unwrap_or(("instances", used_instances, 1, 0));
                return Err(ComputeError::QuotaExceeded(format!(
                    "Quota exceeded for {resource}: Requested {}, but already used {used} of {limit} {resource}",
                    each.saturating_mul(req.max_count as i64)
                )));
            }
            let count = count as usize;
            // One id for the servers of this request (nova's `r-` plus eight characters).
            let reservation_id = format!("r-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);

            drop(validating);
            let _creating = tracing::info_span!("db.instance_create", count).entered();
            let snapshot = FlavorSnapshot {
                flavorid: flavor.flavorid.clone(),
                name: flavor.name.clone(),
                memory_mb: flavor.memory_mb,
                vcpus: flavor.vcpus,
                root_gb: flavor.root_gb,
                ephemeral_gb: flavor.ephemeral_gb,
                swap: flavor.swap,
                extra_specs,
            };
            let mut created = Vec::new();
            for i in 0..count {
                // nova's multi_instance_display_name_template, `%(name)s-%(count)d`, counting from 1.
                let name = if count > 1 { format!("{}-{}", req.name, i + 1) } else { req.name.clone() };
                let new = NewInstance {
                    uuid: uuid::Uuid::new_v4().to_string(),
                    hostname: sanitize_hostname(&name),
                    display_name: name,
                    display_description: req.description.clone(),
                    project_id: auth.project_id().to_string(),
                    user_id: auth.user_id().to_string(),
                    availability_zone: req
                        .availability_zone
                        .clone()
                        .or(Some(self.state.config.host.availability_zone.clone())),
                    flavor: snapshot.clone(),
                    image_ref: Some(image.id.clone()),
                    kernel_id: meta.as_ref().and_then(|m| m.kernel.as_ref()).map(|k| k.id.clone()),
                    ramdisk_id: meta.as_ref().and_then(|m| m.ramdisk.as_ref()).map(|r| r.id.clone()),
                    key_name: req.key_name.clone(),
                    key_data: key_data.clone(),
                    user_data: req.user_data.clone(),
                    config_drive: req.config_drive,
                    access_ip_v4: req.access_ip_v4.clone(),
                    access_ip_v6: req.access_ip_v6.clone(),
                    auto_disk_config: req.auto_disk_config,
                    request_id: ctx.request_id.clone(),
                    metadata: req.metadata.clone(),
                    security_group_ids: sg_ids.clone(),
                    block_devices: req.block_devices.clone(),
                    tags: req.tags.clone(),
                };
                let mut instance = db.create_instance(&new)?;
                db.set_reservation_id(&instance.uuid, &reservation_id)?;
                instance.reservation_id = Some(reservation_id.clone());
                if let Some(g) = &group {
                    db.add_server_group_member(g.id, &instance.uuid)?;
                }
                created.push(instance);
            }
            let props = json!(image.properties);
            Ok((created, props, meta))
        })?;

        let spec = RequestSpec {
            availability_zone: req.availability_zone.clone(),
            scheduler_hints: validation::hints_with(&req.hints, &destination),
            image_properties: image_props,
            requested_networks: req.networks.clone(),
            image: image_meta,
        };
        let uuids: Vec<String> = instances.iter().map(|i| i.uuid.clone()).collect();
        if let Err(e) = SchedulerApi::new(self.state.bus.clone()).build_instances(&ctx, &uuids, &spec).await {
            // The request never reached the scheduler: say so on the instances rather than
            // leaving them in BUILD forever.
            let error = ComputeError::SchedulerUnreachable(e);
            let message = error.to_string();
            self.state.db.tx(|db| -> crate::db::Result<()> {
                for uuid in &uuids {
                    db.add_instance_fault(uuid, 500, &message, "", None)?;
                    let u =
                        InstanceUpdate { vm_state: Some(VmState::Error), task_state: Some(None), ..Default::default() };
                    let _ = db.update_instance(uuid, &u)?;
                }
                Ok(())
            })?;
            return Err(error);
        }

        Ok(instances)
    }
}

/// The server group the `group` hint names, if the caller's project owns it (or the caller is
/// an admin), with room for `max_count` more members under the `server_group_members` quota.
fn join_group(db: &Db, auth: &Auth, req: &CreateRequest) -> Result<Option<crate::db::server_groups::ServerGroup>> {
    let Some(uuid) = &req.group else { return Ok(None) };
    // nova's InstanceGroupNotFound on create is a 400; another project's group is not found.
    let group = db
        .server_group(uuid)?
        .filter(|g| auth.owns(&g.project_id))
        .ok_or_else(|| invalid(format!("Instance group {uuid} could not be found.")))?;
    let limit = db.quota_limits(auth.project_id())?.get("server_group_members").copied().unwrap_or(-1);
    if limit >= 0 && (group.members.len() + req.max_count) as i64 > limit {
        return Err(ComputeError::QuotaExceeded("Quota exceeded, too many servers in group".into()));
    }
    Ok(Some(group))
}

/// An image a project may boot: visible to it and active.
pub(crate) fn bootable_image(db: &Db, id: &str, project: &str, is_admin: bool) -> Result<crate::db::images::Image> {
    let viewer = crate::images::Viewer { project_id: project, is_admin };
    let image = db
        .image_by_id(id)?
        .filter(|i| viewer.may_boot(i))
        .ok_or_else(|| invalid(format!("Image {id} could not be found.")))?;
    if !image.status.has_data() {
        return Err(invalid(format!("Image {id} is not active.")));
    }
    Ok(image)
}

/// Boot from volume: an existing volume must be the caller's, available, and made from an
/// image (whose kernel and properties the guest boots with: `image_id` becomes it); new
/// volumes from an image must fit the project's volume quotas.
fn check_boot_volumes(
    db: &Db,
    bdms: &[NewBlockDevice],
    project: &str,
    count: i64,
    image_id: &mut String,
) -> Result<()> {
    let mut new_gb = 0;
    let mut new_count = 0;
    for b in bdms.iter().filter(|b| b.destination_type == "volume") {
        match (b.source_type.as_str(), &b.volume_id) {
            ("volume", Some(id)) => {
                if count > 1 {
                    return Err(invalid("Block Device Mapping is Invalid: one volume cannot boot several servers"));
                }
                let vol = db
                    .volume(id)?
                    .filter(|v| v.project_id == project)
                    .ok_or_else(|| invalid(format!("Block Device Mapping is Invalid: failed to get volume {id}.")))?;
                if !vol.status.can_attach() {
                    return Err(invalid(format!(
                        "Invalid volume: volume '{id}' status must be 'available'. Currently in '{}'",
                        vol.status
                    )));
                }
                let source = vol.source_image_id.filter(|_| vol.bootable).ok_or_else(|| {
                    invalid(format!(
                        "Block Device Mapping is Invalid: volume {id} is not bootable; novabox boots volumes made from an image"
                    ))
                })?;
                if image_id.is_empty() {
                    *image_id = source;
                }
            }
            _ => {
                new_count += count;
                new_gb += b.volume_size.unwrap_or(1) * count;
            }
        }
    }
    if new_count > 0 {
        let (used, used_gb) = db.volume_usage(project)?;
        let (max, max_gb) = db.volume_quotas(project)?;
        if (max >= 0 && used + new_count > max) || (max_gb >= 0 && used_gb + new_gb > max_gb) {
            return Err(ComputeError::QuotaExceeded(format!(
                "Quota exceeded for volumes: Requested {new_count} ({new_gb}G), but already used {used} of {max} volumes \
                 and {used_gb}G of {max_gb}G"
            )));
        }
    }
    Ok(())
}

/// The id of a security group named (or identified) on create; `default` is made on demand.
fn security_group_id(db: &Db, project: &str, name: &str) -> Result<String> {
    project_security_group(db, project, name)?
        .map(|g| g.id)
        .ok_or_else(|| invalid(format!("Security group {name} not found for project {project}.")))
}

/// A project's security group named by name or id, as nova's create and its
/// add/removeSecurityGroup actions name them; `default` is made when the project has none yet.
pub(super) fn project_security_group(
    db: &Db,
    project: &str,
    name: &str,
) -> crate::db::Result<Option<crate::db::network::SecurityGroup>> {
    if name == "default" {
        let id = db.ensure_default_security_group(project)?;
        return db.security_group_by_id(&id);
    }
    match db.security_group_by_name(project, name)? {
        Some(g) => Ok(Some(g)),
        None => Ok(db.security_group_by_id(name)?.filter(|g| g.project_id == project)),
    }
}

/// Networks and ports named on create must exist, be visible, and (ports) be free.
fn check_requested_networks(db: &Db, requested: &RequestedNetworks, project: &str, is_admin: bool) -> Result<()> {
    let RequestedNetworks::List(list) = requested else { return Ok(()) };
    for r in list {
        if let Some(port_id) = &r.port_id {
            let port = db
                .port_by_id(port_id)?
                .filter(|p| is_admin || p.project_id == project)
                .ok_or_else(|| invalid(format!("Port {port_id} could not be found.")))?;
            if !port.device_id.is_empty() {
                return Err(ComputeError::Conflict(format!("Port {port_id} is still in use.")));
            }
        } else if let Some(net_id) = &r.network_id {
            db.network_by_id(net_id)?
                .filter(|n| is_admin || n.shared || n.project_id == project)
                .ok_or_else(|| invalid(format!("Network {net_id} could not be found.")))?;
        }
    }
    Ok(())
}

/// A hostname derived from the display name, as nova does (RFC 952 characters, 63 max).
pub(super) fn sanitize_hostname(name: &str) -> String {
    let mut h: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    h = h.trim_matches('-').to_string();
    h.truncate(63);
    if h.is_empty() {
        "server".into()
    } else {
        h
    }
}
