//! Instances, their faults, actions and metadata. State changes are single transactions;
//! `update_instance` can insist on the task state it expects (nova's `expected_task_state`),
//! which is how a delete that races a build is noticed instead of overwritten.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{now, Db, DbError, Result};
use crate::compute::states::{PowerState, TaskState, VmState};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub uuid: String,
    pub display_name: String,
    pub display_description: Option<String>,
    pub hostname: String,
    pub project_id: String,
    pub user_id: String,
    pub host: Option<String>,
    pub node: Option<String>,
    pub availability_zone: Option<String>,
    pub vm_state: VmState,
    pub task_state: Option<TaskState>,
    pub power_state: PowerState,
    pub flavor: FlavorSnapshot,
    pub image_ref: Option<String>,
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    pub key_name: Option<String>,
    pub key_data: Option<String>,
    pub user_data: Option<String>,
    pub config_drive: String,
    pub access_ip_v4: Option<String>,
    pub access_ip_v6: Option<String>,
    pub locked: bool,
    pub progress: i64,
    pub request_id: Option<String>,
    pub launched_at: Option<String>,
    pub terminated_at: Option<String>,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub deleted: bool,
    pub metadata: BTreeMap<String, String>,
    /// User networking: `addr:port` on the compute host forwarded to the guest's port 22.
    #[serde(default)]
    pub ssh_forward: Option<String>,
    /// Who locked it: "owner" or "admin" (nova's `locked_by`); none when unlocked.
    #[serde(default)]
    pub locked_by: Option<String>,
    /// The reason given to `lock` (2.73).
    #[serde(default)]
    pub locked_reason: Option<String>,
    /// The `r-` id shared by the servers of one create request (multiple create).
    #[serde(default)]
    pub reservation_id: Option<String>,
    /// `OS-DCF:diskConfig`: AUTO when true, MANUAL when false.
    #[serde(default)]
    pub auto_disk_config: bool,
}

/// The flavor as it was at boot; flavors may change or be deleted afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlavorSnapshot {
    pub flavorid: String,
    pub name: String,
    pub memory_mb: i64,
    pub vcpus: i64,
    pub root_gb: i64,
    pub ephemeral_gb: i64,
    pub swap: i64,
    #[serde(default)]
    pub extra_specs: BTreeMap<String, String>,
}

/// A new instance row and what is created with it.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub uuid: String,
    pub display_name: String,
    pub display_description: Option<String>,
    pub hostname: String,
    pub project_id: String,
    pub user_id: String,
    pub availability_zone: Option<String>,
    pub flavor: FlavorSnapshot,
    pub image_ref: Option<String>,
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    pub key_name: Option<String>,
    pub key_data: Option<String>,
    pub user_data: Option<String>,
    pub config_drive: bool,
    pub access_ip_v4: Option<String>,
    pub access_ip_v6: Option<String>,
    pub request_id: String,
    pub auto_disk_config: bool,
    pub metadata: BTreeMap<String, String>,
    pub security_group_ids: Vec<String>,
    pub block_devices: Vec<NewBlockDevice>,
    /// Tags given at create (2.52).
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewBlockDevice {
    pub source_type: String,
    pub destination_type: String,
    pub boot_index: Option<i64>,
    pub image_id: Option<String>,
    pub volume_id: Option<String>,
    pub volume_size: Option<i64>,
    pub delete_on_termination: bool,
}

/// A change to an instance. `None` fields are left alone; `task_state: Some(None)` clears it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_state: Option<VmState>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "double_option")]
    pub task_state: Option<Option<TaskState>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<PowerState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launched_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "double_option")]
    pub display_description: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_ip_v4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_ip_v6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_forward: Option<String>,
    /// Locks or unlocks (issue 16); `locked_by` and `locked_reason` go with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "double_option")]
    pub locked_by: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "double_option")]
    pub locked_reason: Option<Option<String>>,
    /// A resize's new (or, reverted, old) flavor, with the columns usage sums read (issue 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor: Option<Box<FlavorSnapshot>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_disk_config: Option<bool>,
    /// Refuse the update unless the current task state is one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_task_state: Option<Vec<Option<TaskState>>>,
    /// Refuse the update unless the current vm state is one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_vm_state: Option<Vec<VmState>>,
}

/// Distinguishes "absent" from "null" for fields that can be cleared.
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<T: Serialize, S: Serializer>(v: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().and_then(|inner| inner.as_ref()).serialize(s)
    }
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        Ok(Some(Option::<T>::deserialize(d)?))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub code: i64,
    pub message: String,
    pub details: String,
    pub created_at: String,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub project_id: Option<String>,
    pub host: Option<String>,
    pub vm_states: Option<Vec<VmState>>,
    pub uuids: Option<Vec<String>>,
    pub changes_since: Option<String>,
    /// Changed at or before this time (`changes-before`, 2.66).
    pub changes_before: Option<String>,
    /// Deleted instances too.
    pub include_deleted: bool,
    /// Deleted instances only (nova's admin `deleted=true`).
    pub only_deleted: bool,
    /// Columns that must equal one of the values.
    pub exact: Vec<(InstanceExact, Vec<String>)>,
    /// Regular expressions a column's text must match somewhere (nova's `name` and the
    /// other regex filters; the caller checks that each compiles).
    pub regex: Vec<(InstanceText, String)>,
    /// A regular expression one of the instance's IPv4 (`ip`) or IPv6 (`ip6`) addresses
    /// must match.
    pub ip: Option<String>,
    pub ip6: Option<String>,
    /// The tag filters (2.26).
    pub tags: TagFilter,
    /// Order, limit and marker (a uuid); no sort keys is nova's default order, newest first.
    pub page: crate::db::listing::ListSpec<InstanceSortKey>,
}

/// nova's tag filters: each list is what one query parameter named, split at commas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagFilter {
    /// `tags`: the instance has every one of these.
    pub all: Option<Vec<String>>,
    /// `tags-any`: at least one.
    pub any: Option<Vec<String>>,
    /// `not-tags`: not every one of these (it may have some).
    pub not_all: Option<Vec<String>>,
    /// `not-tags-any`: none of these.
    pub not_any: Option<Vec<String>>,
}

/// Columns an instance list can require to equal a value; the text of each is fixed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceExact {
    UserId,
    ImageRef,
    VmState,
    TaskState,
    Uuid,
    /// The flavor id in the instance's snapshot of its flavor.
    FlavorId,
    /// `1` or `0`.
    Locked,
}

impl InstanceExact {
    fn column(self) -> &'static str {
        match self {
            InstanceExact::UserId => "user_id",
            InstanceExact::ImageRef => "image_ref",
            InstanceExact::VmState => "vm_state",
            InstanceExact::TaskState => "task_state",
            InstanceExact::Uuid => "uuid",
            InstanceExact::FlavorId => "json_extract(flavor, '$.flavorid')",
            InstanceExact::Locked => "locked",
        }
    }
}

/// Columns (or what novabox shows for them) an instance list can match a regex against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceText {
    DisplayName,
    DisplayDescription,
    Hostname,
    KeyName,
    Node,
    AvailabilityZone,
    ConfigDrive,
    CreatedAt,
    LaunchedAt,
    TerminatedAt,
    KernelId,
    RamdiskId,
    AccessIpV4,
    AccessIpV6,
    PowerState,
    Progress,
    ReservationId,
    LaunchIndex,
    RootDeviceName,
    AutoDiskConfig,
}

impl InstanceText {
    fn column(self) -> &'static str {
        match self {
            InstanceText::DisplayName => "display_name",
            InstanceText::DisplayDescription => "display_description",
            InstanceText::Hostname => "hostname",
            InstanceText::KeyName => "key_name",
            InstanceText::Node => "node",
            InstanceText::AvailabilityZone => "availability_zone",
            InstanceText::ConfigDrive => "config_drive",
            InstanceText::CreatedAt => "created_at",
            InstanceText::LaunchedAt => "launched_at",
            InstanceText::TerminatedAt => "terminated_at",
            InstanceText::KernelId => "kernel_id",
            InstanceText::RamdiskId => "ramdisk_id",
            InstanceText::AccessIpV4 => "access_ip_v4",
            InstanceText::AccessIpV6 => "access_ip_v6",
            InstanceText::PowerState => "power_state",
            InstanceText::Progress => "progress",
            // What the server view shows for these.
            InstanceText::ReservationId => "coalesce(reservation_id, 'r-' || substr(uuid, 1, 8))",
            InstanceText::LaunchIndex => "'0'",
            InstanceText::RootDeviceName => "'/dev/vda'",
            InstanceText::AutoDiskConfig => "'0'",
        }
    }
}

/// nova's server sort keys (`VALID_SORT_KEYS`) that novabox can order by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceSortKey {
    AccessIpV4,
    AccessIpV6,
    AutoDiskConfig,
    AvailabilityZone,
    ConfigDrive,
    CreatedAt,
    DisplayDescription,
    DisplayName,
    Host,
    Hostname,
    ImageRef,
    InstanceTypeId,
    KernelId,
    KeyName,
    LaunchIndex,
    LaunchedAt,
    Locked,
    LockedBy,
    Node,
    PowerState,
    Progress,
    ProjectId,
    RamdiskId,
    RootDeviceName,
    TaskState,
    TerminatedAt,
    UpdatedAt,
    UserId,
    Uuid,
    VmState,
    /// The row id: creation order (nova's default second key).
    Id,
}

impl crate::db::listing::SortColumn for InstanceSortKey {
    const ALL: &'static [(&'static str, InstanceSortKey)] = &[
        ("access_ip_v4", InstanceSortKey::AccessIpV4),
        ("access_ip_v6", InstanceSortKey::AccessIpV6),
        ("auto_disk_config", InstanceSortKey::AutoDiskConfig),
        ("availability_zone", InstanceSortKey::AvailabilityZone),
        ("config_drive", InstanceSortKey::ConfigDrive),
        ("created_at", InstanceSortKey::CreatedAt),
        ("display_description", InstanceSortKey::DisplayDescription),
        ("display_name", InstanceSortKey::DisplayName),
        ("host", InstanceSortKey::Host),
        ("hostname", InstanceSortKey::Hostname),
        ("image_ref", InstanceSortKey::ImageRef),
        ("instance_type_id", InstanceSortKey::InstanceTypeId),
        ("kernel_id", InstanceSortKey::KernelId),
        ("key_name", InstanceSortKey::KeyName),
        ("launch_index", InstanceSortKey::LaunchIndex),
        ("launched_at", InstanceSortKey::LaunchedAt),
        ("locked", InstanceSortKey::Locked),
        ("locked_by", InstanceSortKey::LockedBy),
        ("node", InstanceSortKey::Node),
        ("power_state", InstanceSortKey::PowerState),
        ("progress", InstanceSortKey::Progress),
        ("project_id", InstanceSortKey::ProjectId),
        ("ramdisk_id", InstanceSortKey::RamdiskId),
        ("root_device_name", InstanceSortKey::RootDeviceName),
        ("task_state", InstanceSortKey::TaskState),
        ("terminated_at", InstanceSortKey::TerminatedAt),
        ("updated_at", InstanceSortKey::UpdatedAt),
        ("user_id", InstanceSortKey::UserId),
        ("uuid", InstanceSortKey::Uuid),
        ("vm_state", InstanceSortKey::VmState),
        ("id", InstanceSortKey::Id),
    ];

    fn column(self) -> Option<&'static str> {
        use InstanceSortKey::*;
        Some(match self {
            AccessIpV4 => "access_ip_v4",
            AccessIpV6 => "access_ip_v6",
            AvailabilityZone => "availability_zone",
            ConfigDrive => "config_drive",
            CreatedAt => "created_at",
            DisplayDescription => "display_description",
            DisplayName => "display_name",
            Host => "host",
            Hostname => "hostname",
            ImageRef => "image_ref",
            InstanceTypeId => "json_extract(flavor, '$.flavorid')",
            KernelId => "kernel_id",
            KeyName => "key_name",
            LaunchedAt => "launched_at",
            // novabox does not record who locked a server; locked ones sort together.
            Locked | LockedBy => "locked",
            Node => "node",
            PowerState => "power_state",
            Progress => "progress",
            ProjectId => "project_id",
            RamdiskId => "ramdisk_id",
            TaskState => "task_state",
            TerminatedAt => "terminated_at",
            UpdatedAt => "updated_at",
            UserId => "user_id",
            Uuid => "uuid",
            VmState => "vm_state",
            Id => "id",
            // The same for every novabox server: no order to give.
            AutoDiskConfig | LaunchIndex | RootDeviceName => return None,
        })
    }
}

const COLUMNS: &str = "uuid, display_name, display_description, hostname, project_id, user_id, host, node,
    availability_zone, vm_state, task_state, power_state, flavor, image_ref, kernel_id, ramdisk_id,
    key_name, key_data, user_data, config_drive, access_ip_v4, access_ip_v6, locked, progress, request_id,
    launched_at, terminated_at, created_at, updated_at, deleted, id, ssh_forward, locked_by, locked_reason,
    reservation_id, auto_disk_config";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Instance> {
    let flavor: String = r.get(12)?;
    Ok(Instance {
        uuid: r.get(0)?,
        display_name: r.get(1)?,
        display_description: r.get(2)?,
        hostname: r.get(3)?,
        project_id: r.get(4)?,
        user_id: r.get(5)?,
        host: r.get(6)?,
        node: r.get(7)?,
        availability_zone: r.get(8)?,
        vm_state: r.get(9)?,
        task_state: r.get(10)?,
        power_state: r.get(11)?,
        flavor: serde_json::from_str(&flavor)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(12, rusqlite::types::Type::Text, Box::new(e)))?,
        image_ref: r.get(13)?,
        kernel_id: r.get(14)?,
        ramdisk_id: r.get(15)?,
        key_name: r.get(16)?,
        key_data: r.get(17)?,
        user_data: r.get(18)?,
        config_drive: r.get(19)?,
        access_ip_v4: r.get(20)?,
        access_ip_v6: r.get(21)?,
        locked: r.get(22)?,
        progress: r.get(23)?,
        request_id: r.get(24)?,
        launched_at: r.get(25)?,
        terminated_at: r.get(26)?,
        created_at: r.get(27)?,
        updated_at: r.get(28)?,
        deleted: r.get::<_, i64>(29)? != 0,
        metadata: BTreeMap::new(),
        ssh_forward: r.get(31)?,
        locked_by: r.get(32)?,
        locked_reason: r.get(33)?,
        reservation_id: r.get(34)?,
        auto_disk_config: r.get(35)?,
    })
}

impl Db {
    /// Creates the instance with its metadata, block devices, security groups and the
    /// `create` action, all or nothing.
    pub fn create_instance(&self, n: &NewInstance) -> Result<Instance> {
        let tx = self.begin()?;
        let ts = now();
        tx.execute(
            &format!(
                "INSERT INTO instances (uuid, display_name, display_description, hostname, project_id, user_id,
                    availability_zone, vm_state, task_state, power_state, flavor, memory_mb, vcpus, root_gb,
                    ephemeral_gb, image_ref, kernel_id, ramdisk_id, key_name, key_data, user_data, config_drive,
                    access_ip_v4, access_ip_v6, request_id, created_at, updated_at, auto_disk_config)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '{}', '{}', {}, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                    ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?23, ?24)",
                VmState::Building,
                TaskState::Scheduling,
                i64::from(PowerState::NoState),
            ),
            params![
                n.uuid,
                n.display_name,
                n.display_description,
                n.hostname,
                n.project_id,
                n.user_id,
                n.availability_zone,
                serde_json::to_string(&n.flavor).unwrap_or_default(),
                n.flavor.memory_mb,
                n.flavor.vcpus,
                n.flavor.root_gb,
                n.flavor.ephemeral_gb,
                n.image_ref,
                n.kernel_id,
                n.ramdisk_id,
                n.key_name,
                n.key_data,
                n.user_data,
                if n.config_drive { "True" } else { "" },
                n.access_ip_v4,
                n.access_ip_v6,
                n.request_id,
                ts,
                n.auto_disk_config,
            ],
        )?;
        for (k, v) in &n.metadata {
            tx.execute(
                "INSERT INTO instance_metadata (instance_uuid, key, value) VALUES (?1, ?2, ?3)",
                params![n.uuid, k, v],
            )?;
        }
        for t in &n.tags {
            tx.execute("INSERT OR IGNORE INTO instance_tags (instance_uuid, tag) VALUES (?1, ?2)", params![n.uuid, t])?;
        }
        for sg in &n.security_group_ids {
            tx.execute(
                "INSERT OR IGNORE INTO instance_security_groups (instance_uuid, security_group_id) VALUES (?1, ?2)",
                params![n.uuid, sg],
            )?;
        }
        for b in &n.block_devices {
            tx.execute(
                "INSERT INTO block_device_mappings (instance_uuid, source_type, destination_type, boot_index,
                    image_id, volume_id, volume_size, delete_on_termination, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    n.uuid,
                    b.source_type,
                    b.destination_type,
                    b.boot_index,
                    b.image_id,
                    b.volume_id,
                    b.volume_size,
                    b.delete_on_termination,
                    ts
                ],
            )?;
        }
        tx.execute(
            "INSERT INTO instance_actions (action, instance_uuid, request_id, user_id, project_id, start_time, updated_at)
             VALUES ('create', ?1, ?2, ?3, ?4, ?5, ?5)",
            params![n.uuid, n.request_id, n.user_id, n.project_id, ts],
        )?;
        tx.commit()?;
        self.instance_by_uuid(&n.uuid, false)?.ok_or_else(|| DbError::Conflict("instance vanished".into()))
    }

    pub fn instance_by_uuid(&self, uuid: &str, include_deleted: bool) -> Result<Option<Instance>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM instances WHERE uuid = ?1 {}",
            if include_deleted { "" } else { "AND deleted = 0" }
        );
        let inst = self.conn().query_row(&sql, [uuid], from_row).optional()?;
        match inst {
            Some(mut i) => {
                i.metadata = self.instance_metadata(&i.uuid)?;
                Ok(Some(i))
            }
            None => Ok(None),
        }
    }

    fn instance_metadata(&self, uuid: &str) -> Result<BTreeMap<String, String>> {
        let mut stmt =
            self.conn().prepare_cached("SELECT key, value FROM instance_metadata WHERE instance_uuid = ?1")?;
        let rows = stmt.query_map([uuid], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Instances newest first, as nova lists them.
    pub fn list_instances(&self, f: &InstanceFilter) -> Result<Vec<Instance>> {
        use crate::db::listing::{page_sql, Direction, ListSpec, Table};
        let mut sql = format!("SELECT {COLUMNS} FROM instances WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        // Binds a value and gives its placeholder.
        fn bind(args: &mut Vec<rusqlite::types::Value>, v: &str) -> String {
            args.push(v.to_string().into());
            format!("?{}", args.len())
        }
        // Tags as nova's query builds them: "has all" is one EXISTS per tag, "has any" one
        // EXISTS with IN; the `not-` forms negate them.
        let has = |args: &mut Vec<rusqlite::types::Value>, tags: &[String]| {
            let list: Vec<String> = tags.iter().map(|t| bind(args, t)).collect();
            format!(
                "EXISTS (SELECT 1 FROM instance_tags t WHERE t.instance_uuid = instances.uuid AND t.tag IN ({}))",
                list.join(", ")
            )
        };
        let has_all = |args: &mut Vec<rusqlite::types::Value>, tags: &[String]| {
            let each: Vec<String> = tags.iter().map(|t| has(args, std::slice::from_ref(t))).collect();
            format!("({})", each.join(" AND "))
        };
        if let Some(tags) = f.tags.all.as_deref().filter(|t| !t.is_empty()) {
            let cond = has_all(&mut args, tags);
            sql.push_str(&format!(" AND {cond}"));
        }
        if let Some(tags) = f.tags.any.as_deref().filter(|t| !t.is_empty()) {
            let cond = has(&mut args, tags);
            sql.push_str(&format!(" AND {cond}"));
        }
        if let Some(tags) = f.tags.not_all.as_deref().filter(|t| !t.is_empty()) {
            let cond = has_all(&mut args, tags);
            sql.push_str(&format!(" AND NOT {cond}"));
        }
        if let Some(tags) = f.tags.not_any.as_deref().filter(|t| !t.is_empty()) {
            let cond = has(&mut args, tags);
            sql.push_str(&format!(" AND NOT {cond}"));
        }
        if f.only_deleted {
            sql.push_str(" AND deleted != 0");
        } else if !f.include_deleted {
            sql.push_str(" AND deleted = 0");
        }
        if let Some(p) = &f.project_id {
            sql.push_str(&format!(" AND project_id = {}", bind(&mut args, p)));
        }
        if let Some(h) = &f.host {
            sql.push_str(&format!(" AND host = {}", bind(&mut args, h)));
        }
        for (field, values) in &f.exact {
            let alternatives: Vec<String> =
                values.iter().map(|v| format!("{} = {}", field.column(), bind(&mut args, v))).collect();
            let any = if alternatives.is_empty() { "0".to_string() } else { alternatives.join(" OR ") };
            sql.push_str(&format!(" AND ({any})"));
        }
        for (field, pattern) in &f.regex {
            sql.push_str(&format!(" AND CAST({} AS TEXT) REGEXP {}", field.column(), bind(&mut args, pattern)));
        }
        // The addresses of the instance's own ports, as the server view lists them.
        let on_ports = " AND EXISTS (SELECT 1 FROM ports p JOIN ip_allocations a ON a.port_id = p.id
            WHERE p.device_id = instances.uuid AND p.project_id = instances.project_id AND a.ip_address REGEXP";
        if let Some(ip) = &f.ip {
            sql.push_str(&format!("{on_ports} {} AND instr(a.ip_address, ':') = 0)", bind(&mut args, ip)));
        }
        if let Some(ip6) = &f.ip6 {
            sql.push_str(&format!("{on_ports} {} AND instr(a.ip_address, ':') > 0)", bind(&mut args, ip6)));
        }
        if let Some(c) = &f.changes_since {
            sql.push_str(&format!(" AND updated_at >= {}", bind(&mut args, c)));
        }
        if let Some(c) = &f.changes_before {
            sql.push_str(&format!(" AND updated_at <= {}", bind(&mut args, c)));
        }
        if let Some(states) = &f.vm_states {
            // The names of an enum, never the caller's text, go into the statement.
            let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
            sql.push_str(&format!(" AND vm_state IN ({})", list.join(",")));
        }
        if let Some(uuids) = &f.uuids {
            let list: Vec<String> = uuids.iter().map(|s| format!("'{}'", s.replace('\'', "''"))).collect();
            sql.push_str(&format!(" AND uuid IN ({})", list.join(",")));
        }
        let mut spec = f.page.clone();
        if spec.sort.is_empty() {
            spec = ListSpec {
                sort: vec![(InstanceSortKey::CreatedAt, Direction::Desc), (InstanceSortKey::Id, Direction::Desc)],
                ..spec
            };
        }
        page_sql(self.conn(), &Table { name: "instances", key: "uuid" }, &spec, &mut sql, &mut args)?;
        let mut stmt = self.conn().prepare(&sql)?;
        let mut list: Vec<Instance> =
            stmt.query_map(rusqlite::params_from_iter(args), from_row)?.collect::<rusqlite::Result<_>>()?;
        for i in &mut list {
            i.metadata = self.instance_metadata(&i.uuid)?;
        }
        Ok(list)
    }

    /// Applies `u` if the expectations hold. Returns the updated instance, or
    /// `UpdateError::NotFound` / `UpdateError::UnexpectedState` (with what was found).
    pub fn update_instance(&self, uuid: &str, u: &InstanceUpdate) -> Result<Result<Instance, UpdateError>> {
        let tx = self.begin()?;
        let current: Option<(VmState, Option<TaskState>)> = tx
            .query_row("SELECT vm_state, task_state FROM instances WHERE uuid = ?1 AND deleted = 0", [uuid], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((vm_state, task_state)) = current else { return Ok(Err(UpdateError::NotFound)) };
        if let Some(expected) = &u.expected_task_state {
            if !expected.contains(&task_state) {
                return Ok(Err(UpdateError::UnexpectedState { vm_state, task_state }));
            }
        }
        if let Some(expected) = &u.expected_vm_state {
            if !expected.contains(&vm_state) {
                return Ok(Err(UpdateError::UnexpectedState { vm_state, task_state }));
            }
        }
        let mut sets: Vec<String> = vec!["updated_at = ?1".into()];
        let mut args: Vec<rusqlite::types::Value> = vec![now().into()];
        let mut set = |col: &str, v: rusqlite::types::Value| {
            args.push(v);
            sets.push(format!("{col} = ?{}", args.len()));
        };
        if let Some(v) = u.vm_state {
            set("vm_state", v.as_str().to_string().into());
        }
        if let Some(t) = u.task_state {
            set("task_state", t.map_or(rusqlite::types::Value::Null, |t| t.as_str().to_string().into()));
        }
        if let Some(p) = u.power_state {
            set("power_state", i64::from(p).into());
        }
        if let Some(h) = &u.host {
            set("host", h.clone().into());
        }
        if let Some(n) = &u.node {
            set("node", n.clone().into());
        }
        if let Some(l) = &u.launched_at {
            set("launched_at", l.clone().into());
        }
        if let Some(s) = &u.scheduled_at {
            set("scheduled_at", s.clone().into());
        }
        if let Some(n) = &u.display_name {
            set("display_name", n.clone().into());
        }
        if let Some(d) = &u.display_description {
            set("display_description", d.clone().map_or(rusqlite::types::Value::Null, Into::into));
        }
        if let Some(a) = &u.access_ip_v4 {
            set("access_ip_v4", a.clone().into());
        }
        if let Some(a) = &u.access_ip_v6 {
            set("access_ip_v6", a.clone().into());
        }
        if let Some(f) = &u.ssh_forward {
            set("ssh_forward", f.clone().into());
        }
        if let Some(l) = u.locked {
            set("locked", i64::from(l).into());
        }
        if let Some(b) = &u.locked_by {
            set("locked_by", b.clone().map_or(rusqlite::types::Value::Null, Into::into));
        }
        if let Some(r) = &u.locked_reason {
            set("locked_reason", r.clone().map_or(rusqlite::types::Value::Null, Into::into));
        }
        if let Some(f) = &u.flavor {
            set("flavor", serde_json::to_string(f).unwrap_or_default().into());
            set("memory_mb", f.memory_mb.into());
            set("vcpus", f.vcpus.into());
            set("root_gb", f.root_gb.into());
            set("ephemeral_gb", f.ephemeral_gb.into());
        }
        if let Some(a) = u.auto_disk_config {
            set("auto_disk_config", i64::from(a).into());
        }
        args.push(uuid.to_string().into());
        let sql = format!("UPDATE instances SET {} WHERE uuid = ?{} AND deleted = 0", sets.join(", "), args.len());
        tx.execute(&sql, rusqlite::params_from_iter(args))?;
        tx.commit()?;
        match self.instance_by_uuid(uuid, false)? {
            Some(i) => Ok(Ok(i)),
            None => Ok(Err(UpdateError::NotFound)),
        }
    }

    /// Marks the instance deleted (nova's soft delete: the row stays, `deleted` = its id),
    /// with its block device mappings. Returns false when it was already gone.
    pub fn destroy_instance(&self, uuid: &str) -> Result<bool> {
        let tx = self.begin()?;
        let ts = now();
        let n = tx.execute(
            "UPDATE instances SET deleted = id, deleted_at = ?2, terminated_at = ?2, updated_at = ?2,
                vm_state = ?3, task_state = NULL, power_state = ?4
             WHERE uuid = ?1 AND deleted = 0",
            params![uuid, ts, VmState::Deleted, PowerState::NoState],
        )?;
        tx.execute(
            "UPDATE block_device_mappings SET deleted = id, deleted_at = ?2 WHERE instance_uuid = ?1 AND deleted = 0",
            params![uuid, ts],
        )?;
        tx.execute("DELETE FROM instance_security_groups WHERE instance_uuid = ?1", [uuid])?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Builds whose request was lost: instances still `building`/`scheduling` with no host
    /// that were created no later than `before` (as `now()` writes it: whole seconds, so a
    /// kill and a restart within one second still count; the caller guarantees no new build
    /// can appear in that second). They go to
    /// ERROR with a fault saying so, each in one transaction with its fault and its action.
    /// Returns their uuids.
    ///
    /// Only safe when nothing else can be carrying their build request: `novabox up` calls it
    /// at start-up, before its API and scheduler accept work (see `stack::run`).
    pub fn fail_lost_builds(&self, before: &str, message: &str) -> Result<Vec<String>> {
        let tx = self.begin()?;
        let uuids: Vec<String> = {
            let mut stmt = tx.prepare(
                "SELECT uuid FROM instances WHERE deleted = 0 AND vm_state = ?2
                   AND task_state = ?3 AND host IS NULL AND created_at <= ?1",
            )?;
            let rows = stmt.query_map(params![before, VmState::Building, TaskState::Scheduling], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let ts = now();
        for uuid in &uuids {
            tx.execute(
                "UPDATE instances SET vm_state = ?3, task_state = NULL, updated_at = ?2
                 WHERE uuid = ?1 AND deleted = 0",
                params![uuid, ts, VmState::Error],
            )?;
            tx.execute(
                "INSERT INTO instance_faults (instance_uuid, code, message, details, host, created_at)
                 VALUES (?1, 500, ?2, '', NULL, ?3)",
                params![uuid, message, ts],
            )?;
            tx.execute(
                "UPDATE instance_action_events SET finish_time = ?2, result = 'Error', traceback = ?3, details = ?3
                 WHERE finish_time IS NULL AND action_id IN
                     (SELECT id FROM instance_actions WHERE instance_uuid = ?1 AND finish_time IS NULL)",
                params![uuid, ts, message],
            )?;
            tx.execute(
                "UPDATE instance_actions SET finish_time = ?2, updated_at = ?2, message = 'Error'
                 WHERE instance_uuid = ?1 AND finish_time IS NULL",
                params![uuid, ts],
            )?;
        }
        tx.commit()?;
        Ok(uuids)
    }

    /// Deletes that no compute service will finish: `deleting` instances with no host (the
    /// API's local delete was interrupted). The caller releases their ports and destroys them.
    pub fn hostless_deletes(&self) -> Result<Vec<String>> {
        let mut stmt =
            self.conn().prepare("SELECT uuid FROM instances WHERE deleted = 0 AND task_state = ?1 AND host IS NULL")?;
        let rows = stmt.query_map([TaskState::Deleting], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn add_instance_fault(
        &self,
        uuid: &str,
        code: i64,
        message: &str,
        details: &str,
        host: Option<&str>,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO instance_faults (instance_uuid, code, message, details, host, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![uuid, code, message, details, host, now()],
        )?;
        Ok(())
    }

    pub fn latest_instance_fault(&self, uuid: &str) -> Result<Option<Fault>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT code, message, details, created_at FROM instance_faults WHERE instance_uuid = ?1
                 ORDER BY id DESC LIMIT 1",
                [uuid],
                |r| Ok(Fault { code: r.get(0)?, message: r.get(1)?, details: r.get(2)?, created_at: r.get(3)? }),
            )
            .optional()?)
    }

    /// Records that an action (stop, start, reboot, delete, ...) was asked for.
    pub fn start_instance_action(
        &self,
        uuid: &str,
        action: &str,
        request_id: &str,
        user_id: &str,
        project_id: &str,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO instance_actions (action, instance_uuid, request_id, user_id, project_id, start_time, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![action, uuid, request_id, user_id, project_id, now()],
        )?;
        Ok(())
    }

    /// Closes the action a request started and the events still running in it; `failure` is
    /// what went wrong, kept in the events (nova's traceback and details) while the action's
    /// message says "Error", as nova's.
    pub fn finish_instance_action(&self, request_id: &str, uuid: &str, failure: Option<&str>) -> Result<()> {
        use super::instance_actions::EventResult;
        let tx = self.begin()?;
        self.finish_action_events(uuid, request_id, failure.map_or(EventResult::Success, EventResult::Error))?;
        let ts = now();
        self.conn().execute(
            "UPDATE instance_actions SET finish_time = ?3, updated_at = ?3, message = coalesce(?4, message)
             WHERE request_id = ?1 AND instance_uuid = ?2 AND finish_time IS NULL",
            params![request_id, uuid, ts, failure.map(|_| "Error")],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// (instances, vcpus, memory_mb) a project uses, for quotas.
    pub fn project_usage(&self, project_id: &str) -> Result<(i64, i64, i64)> {
        let (count, [vcpus, memory_mb]) = self.usage_sums("project_id", project_id, ["vcpus", "memory_mb"])?;
        Ok((count, vcpus, memory_mb))
    }

    /// (vcpus, memory_mb, root_gb + ephemeral_gb, instances) placed on a host: derived from the
    /// instances themselves, so usage can never drift from what exists.
    pub fn host_usage(&self, host: &str) -> Result<(i64, i64, i64, i64)> {
        let (count, [vcpus, memory_mb, root_gb, ephemeral_gb]) =
            self.usage_sums("host", host, ["vcpus", "memory_mb", "root_gb", "ephemeral_gb"])?;
        Ok((vcpus, memory_mb, root_gb.saturating_add(ephemeral_gb), count))
    }

    /// The number of live instances whose `filter` column is `value`, and the sums of their
    /// `columns`. SQLite's `sum` fails on an integer overflow and its `+` turns into floating
    /// point, so one absurd flavor (issue 14) could stop every placement and quota check.
    /// `total` always sums in floating point, exactly for any realistic usage (below 2^53),
    /// and Rust's float-to-integer cast saturates past `i64::MAX`: the scan stays in SQLite,
    /// which is what keeps placement fast with thousands of instances.
    fn usage_sums<const N: usize>(&self, filter: &str, value: &str, columns: [&str; N]) -> Result<(i64, [i64; N])> {
        let totals: Vec<String> = columns.iter().map(|c| format!("total({c})")).collect();
        // `total` reads text as 0; a row whose usage is not a number is an error to report,
        // as reading it one row at a time was, not usage to ignore.
        let unreadable: Vec<String> =
            columns.iter().map(|c| format!("typeof({c}) NOT IN ('integer', 'real')")).collect();
        let sql = format!(
            "SELECT count(*), coalesce(sum({}), 0), {} FROM instances WHERE {filter} = ?1 AND deleted = 0",
            unreadable.join(" OR "),
            totals.join(", ")
        );
        let mut stmt = self.conn().prepare_cached(&sql)?;
        let (count, bad, sums) = stmt.query_row([value], |row| {
            let mut sums = [0i64; N];
            for (i, sum) in sums.iter_mut().enumerate() {
                *sum = row.get::<_, f64>(i + 2)? as i64;
            }
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, sums))
        })?;
        if bad > 0 {
            let what = format!("{bad} instance row(s) of {filter} {value} hold usage that is not a number");
            return Err(rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.into()).into());
        }
        Ok((count, sums))
    }

    pub fn block_devices(&self, uuid: &str) -> Result<Vec<NewBlockDevice>> {
        let mut stmt = self.conn().prepare(
            "SELECT source_type, destination_type, boot_index, image_id, volume_id, volume_size, delete_on_termination
             FROM block_device_mappings WHERE instance_uuid = ?1 AND deleted = 0 ORDER BY id",
        )?;
        let rows = stmt.query_map([uuid], |r| {
            Ok(NewBlockDevice {
                source_type: r.get(0)?,
                destination_type: r.get(1)?,
                boot_index: r.get(2)?,
                image_id: r.get(3)?,
                volume_id: r.get(4)?,
                volume_size: r.get(5)?,
                delete_on_termination: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn instance_security_group_ids(&self, uuid: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT security_group_id FROM instance_security_groups WHERE instance_uuid = ?1")?;
        let rows = stmt.query_map([uuid], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The names of the security groups of an instance.
    pub fn instance_security_group_names(&self, uuid: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT g.name FROM instance_security_groups a JOIN security_groups g ON g.id = a.security_group_id
             WHERE a.instance_uuid = ?1 ORDER BY g.name",
        )?;
        let rows = stmt.query_map([uuid], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// Why `update_instance` refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateError {
    NotFound,
    UnexpectedState { vm_state: VmState, task_state: Option<TaskState> },
}

#[cfg(test)]
pub(crate) mod tests;
