//! `POST /servers`: the create body as nova's schema takes it.

use std::collections::BTreeMap;

use base64::Engine;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{invalid, present, typed, unexpected};
use crate::api::compute::microversion::Microversion;
use crate::api::compute::validation;
use crate::compute::api::Result;
use crate::db::instances::NewBlockDevice;
use crate::rpcapi::{RequestedNetwork, RequestedNetworks};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    server: Option<ServerBody>,
    #[serde(rename = "OS-SCH-HNT:scheduler_hints")]
    hints: Option<Value>,
    #[serde(rename = "os:scheduler_hints")]
    os_hints: Option<Value>,
}

/// `server` of `POST /servers`, with every key nova's schema allows (some only from a
/// microversion on, checked in `parse`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerBody {
    name: Option<String>,
    #[serde(rename = "imageRef")]
    image_ref: Option<String>,
    #[serde(rename = "flavorRef", default, deserialize_with = "present")]
    flavor_ref: Option<Value>,
    #[serde(rename = "adminPass")]
    admin_pass: Option<String>,
    #[serde(default, deserialize_with = "present")]
    metadata: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    networks: Option<Value>,
    key_name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    security_groups: Option<Value>,
    user_data: Option<String>,
    availability_zone: Option<String>,
    block_device_mapping: Option<IgnoredAny>,
    block_device_mapping_v2: Option<Vec<BlockDeviceBody>>,
    #[serde(default, deserialize_with = "present")]
    config_drive: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    min_count: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    max_count: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    return_reservation_id: Option<Value>,
    #[serde(rename = "accessIPv4")]
    access_ip_v4: Option<String>,
    #[serde(rename = "accessIPv6")]
    access_ip_v6: Option<String>,
    #[serde(rename = "OS-DCF:diskConfig")]
    disk_config: Option<String>,
    description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    tags: Option<Value>,
    #[serde(rename = "personality")]
    _personality: Option<IgnoredAny>,
    #[serde(rename = "trusted_image_certificates")]
    _trusted_image_certificates: Option<IgnoredAny>,
    host: Option<String>,
    hypervisor_hostname: Option<String>,
}

/// One item of `block_device_mapping_v2`: nova's keys (the new ones and the legacy ones its
/// schema merges in); those novabox does not use are taken and ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockDeviceBody {
    source_type: Option<String>,
    destination_type: Option<String>,
    #[serde(default, deserialize_with = "present")]
    boot_index: Option<Value>,
    uuid: Option<String>,
    #[serde(default, deserialize_with = "present")]
    volume_size: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    delete_on_termination: Option<Value>,
    #[serde(rename = "image_id")]
    _image_id: Option<IgnoredAny>,
    #[serde(rename = "volume_id")]
    _volume_id: Option<IgnoredAny>,
    #[serde(rename = "virtual_name")]
    _virtual_name: Option<IgnoredAny>,
    #[serde(rename = "snapshot_id")]
    _snapshot_id: Option<IgnoredAny>,
    #[serde(rename = "device_name")]
    _device_name: Option<IgnoredAny>,
    #[serde(rename = "guest_format")]
    _guest_format: Option<IgnoredAny>,
    #[serde(rename = "device_type")]
    _device_type: Option<IgnoredAny>,
    #[serde(rename = "disk_bus")]
    _disk_bus: Option<IgnoredAny>,
    #[serde(rename = "no_device")]
    _no_device: Option<IgnoredAny>,
    #[serde(rename = "connection_info")]
    _connection_info: Option<IgnoredAny>,
    #[serde(rename = "tag")]
    _tag: Option<IgnoredAny>,
    #[serde(rename = "volume_type")]
    _volume_type: Option<IgnoredAny>,
}

/// One item of `networks`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkBody {
    uuid: Option<String>,
    port: Option<String>,
    fixed_ip: Option<String>,
    #[serde(rename = "tag")]
    _tag: Option<IgnoredAny>,
}

/// One item of `security_groups`: a group's name or id.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedGroup {
    name: Option<String>,
}

/// A create request that passed nova's schema for its microversion.
#[derive(Debug)]
pub struct CreateRequest {
    pub name: String,
    pub description: Option<String>,
    /// The image to boot; empty when booting from a volume (its image is found on create).
    pub image_id: String,
    pub flavor_ref: String,
    pub networks: RequestedNetworks,
    pub key_name: Option<String>,
    pub security_groups: Vec<String>,
    pub user_data: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub availability_zone: Option<String>,
    pub config_drive: bool,
    pub access_ip_v4: Option<String>,
    pub access_ip_v6: Option<String>,
    /// `OS-DCF:diskConfig`: AUTO is true; nova's default is MANUAL.
    pub auto_disk_config: bool,
    pub admin_pass: Option<String>,
    /// Fewer than this fitting in the project's quota refuses the request (nova's min_count).
    pub min_count: usize,
    pub max_count: usize,
    pub block_devices: Vec<NewBlockDevice>,
    pub hints: Value,
    /// The `group` scheduler hint: the server group the servers join (issue 17).
    pub group: Option<String>,
    /// `zone:host:node` of `availability_zone` (the zone itself is in `availability_zone`).
    pub forced: validation::Destination,
    /// 2.74's `host` and `hypervisor_hostname`.
    pub requested: validation::Destination,
    pub return_reservation_id: bool,
    /// The servers' tags (2.52).
    pub tags: Vec<String>,
}

impl CreateRequest {
    pub fn parse(body: &Value, v: Microversion) -> Result<CreateRequest> {
        let CreateBody { server, hints, os_hints } = typed(body)?;
        let s = server.ok_or_else(|| invalid("Invalid input: 'server' is a required property"))?;
        let name = s.name.ok_or_else(|| invalid("'name' is a required property"))?;
        validation::name("name", &name)?;
        if !v.at_least(74) {
            if s.host.is_some() {
                return Err(unexpected("host"));
            }
            if s.hypervisor_hostname.is_some() {
                return Err(unexpected("hypervisor_hostname"));
            }
        }
        if s.description.is_some() && !v.at_least(19) {
            return Err(unexpected("description"));
        }
        if let Some(d) = &s.description {
            validation::description(d)?;
        }
        let flavor_ref = match s.flavor_ref {
            Some(Value::String(f)) if !f.is_empty() => f.rsplit('/').next().unwrap_or(&f).to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(invalid("'flavorRef' is a required property")),
        };
        let mut image_id =
            s.image_ref.filter(|r| !r.is_empty()).map(|r| r.rsplit('/').next().unwrap_or(&r).to_string());
        let mut block_devices = Vec::new();
        for b in s.block_device_mapping_v2.unwrap_or_default() {
            block_devices.push(block_device(b, &mut image_id)?);
        }
        if s.block_device_mapping.is_some() {
            return Err(invalid("block_device_mapping (v1) is not supported; use block_device_mapping_v2"));
        }
        let boots_a_volume = block_devices.iter().any(|b| b.source_type == "volume" && b.destination_type == "volume");
        let image_id = match image_id {
            Some(id) => id,
            None if boots_a_volume => String::new(),
            None => return Err(invalid("An image is required: give imageRef or a boot block device of source image")),
        };
        if block_devices.is_empty() {
            block_devices.push(NewBlockDevice {
                source_type: "image".into(),
                destination_type: "local".into(),
                boot_index: Some(0),
                image_id: Some(image_id.clone()),
                volume_id: None,
                volume_size: None,
                delete_on_termination: true,
            });
        }
        let networks = networks(s.networks, v)?;
        let security_groups = match s.security_groups {
            None => vec!["default".to_string()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|g| {
                    let named = g.is_object().then(|| typed::<NamedGroup>(g)).transpose()?;
                    named.and_then(|g| g.name).ok_or_else(|| invalid("Each security group needs a name"))
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(invalid("security_groups must be a list")),
        };
        if let Some(ud) = &s.user_data {
            if ud.len() > 65535 {
                return Err(invalid(
                    "User data too large. User data must be no larger than 65535 bytes once base64 encoded.",
                ));
            }
            base64::engine::general_purpose::STANDARD
                .decode(ud.trim())
                .map_err(|_| invalid("Invalid input for field/attribute user_data: not valid base64"))?;
        }
        // The quota is the project's: `create` checks the count against it.
        let metadata = s.metadata.map(|m| validation::metadata(&m, -1)).transpose()?.unwrap_or_default();
        let min_count = count("min_count", s.min_count)?.unwrap_or(1);
        let max_count = count("max_count", s.max_count)?.unwrap_or(min_count);
        if min_count > max_count {
            return Err(invalid("min_count must be <= max_count"));
        }
        if max_count > 100 {
            return Err(invalid("max_count must be at most 100"));
        }
        let tags = match s.tags {
            Some(_) if !v.at_least(52) => return Err(unexpected("tags")),
            Some(t) => crate::compute::api::tag_list(&t)?,
            None => Vec::new(),
        };
        let config_drive = validation::boolean("config_drive", s.config_drive.as_ref())?.unwrap_or(false);
        let return_reservation_id =
            validation::boolean("return_reservation_id", s.return_reservation_id.as_ref())?.unwrap_or(false);
        let (availability_zone, forced_host, forced_node) = match s.availability_zone.filter(|z| !z.is_empty()) {
            Some(az) => validation::availability_zone(&az)?,
            None => (None, None, None),
        };
        Ok(CreateRequest {
            name,
            description: s.description,
            image_id,
            flavor_ref,
            networks,
            key_name: s.key_name,
            security_groups,
            user_data: s.user_data,
            metadata,
            availability_zone,
            forced: validation::Destination { host: forced_host, node: forced_node },
            requested: validation::Destination {
                host: validation::host_name("host", s.host.as_deref())?,
                node: validation::host_name("hypervisor_hostname", s.hypervisor_hostname.as_deref())?,
            },
            config_drive,
            access_ip_v4: ip("accessIPv4", s.access_ip_v4)?,
            access_ip_v6: ip("accessIPv6", s.access_ip_v6)?,
            auto_disk_config: super::disk_config(s.disk_config.as_deref())?.unwrap_or(false),
            admin_pass: s.admin_pass,
            min_count,
            max_count,
            block_devices,
            group: group_hint(hints.as_ref().or(os_hints.as_ref()))?,
            hints: hints.or(os_hints).unwrap_or(json!({})),
            return_reservation_id,
            tags,
        })
    }
}

/// The `group` scheduler hint: a uuid, or a list of one (nova's schema takes both forms).
fn group_hint(hints: Option<&Value>) -> Result<Option<String>> {
    let Some(g) = hints.and_then(|h| h.get("group")) else { return Ok(None) };
    let refuse = || {
        let (shown, quoted) = match g.as_str() {
            Some(s) => (s.to_string(), format!("'{s}'")),
            None => (g.to_string(), g.to_string()),
        };
        invalid(format!(
            "Invalid input for field/attribute group. Value: {shown}. {quoted} is not valid under any of the given schemas"
        ))
    };
    let is_uuid = |s: &str| uuid::Uuid::parse_str(s).is_ok();
    match g {
        Value::String(s) if is_uuid(s) => Ok(Some(s.clone())),
        Value::Array(a) if a.is_empty() => Ok(None),
        Value::Array(a) if a.len() == 1 => match a[0].as_str() {
            Some(s) if is_uuid(s) => Ok(Some(s.to_string())),
            _ => Err(refuse()),
        },
        _ => Err(refuse()),
    }
}

/// One block device of `block_device_mapping_v2`; the boot image it names becomes `image_id`.
fn block_device(b: BlockDeviceBody, image_id: &mut Option<String>) -> Result<NewBlockDevice> {
    let source = b.source_type.unwrap_or_else(|| "blank".into());
    let dest = b.destination_type.unwrap_or_else(|| "local".into());
    if !["image", "volume", "blank", "snapshot"].contains(&source.as_str())
        || !["local", "volume"].contains(&dest.as_str())
    {
        return Err(invalid(format!("Block Device Mapping is Invalid: source {source}, destination {dest}")));
    }
    let boot_index = match b.boot_index {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => Some(s.parse().map_err(|_| invalid("boot_index must be an integer"))?),
        Some(_) => return Err(invalid("boot_index must be an integer")),
    };
    let uuid = b.uuid;
    if source == "image" && boot_index == Some(0) {
        if let (Some(a), Some(b)) = (&*image_id, &uuid) {
            if a != b {
                return Err(invalid("imageRef and the boot block device name different images"));
            }
        }
        if image_id.is_none() {
            *image_id = uuid.clone();
        }
    }
    let volume_size = match b.volume_size {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n >= 1) => n.as_i64(),
        Some(Value::String(s)) if s.parse::<i64>().is_ok_and(|n| n >= 1) => s.parse().ok(),
        Some(other) => {
            return Err(invalid(format!(
                "Invalid input for field/attribute volume_size. Value: {other}. It must be an integer of at least 1."
            )))
        }
    };
    if dest == "volume" {
        match source.as_str() {
            "image" if volume_size.is_none() => {
                return Err(invalid(
                    "Block Device Mapping is Invalid: volume_size is required for source image, destination volume",
                ))
            }
            "image" => {}
            "volume" if uuid.as_deref().is_some_and(|u| uuid::Uuid::parse_str(u).is_ok()) => {}
            "volume" => {
                return Err(invalid("Block Device Mapping is Invalid: source volume needs the volume's id in uuid"))
            }
            other => {
                return Err(invalid(format!(
                    "Block Device Mapping is Invalid: source {other}, destination volume is not supported; \
                     use source image or volume"
                )))
            }
        }
        if boot_index != Some(0) {
            return Err(invalid(
                "Block Device Mapping is Invalid: only the boot volume (boot_index 0) can be mapped at create; \
                 attach other volumes with os-volume_attachments",
            ));
        }
    }
    Ok(NewBlockDevice {
        image_id: if source == "image" { uuid.clone() } else { None },
        volume_id: if source == "volume" { uuid } else { None },
        volume_size,
        boot_index,
        // nova's default for volumes is false: a volume outlives its server unless asked.
        delete_on_termination: validation::boolean("delete_on_termination", b.delete_on_termination.as_ref())?
            .unwrap_or(dest != "volume"),
        source_type: source,
        destination_type: dest,
    })
}

/// `networks`: required from 2.37, where "auto" and "none" are its two words.
fn networks(value: Option<Value>, v: Microversion) -> Result<RequestedNetworks> {
    match value {
        None if v.at_least(37) => Err(invalid("'networks' is a required property (since microversion 2.37)")),
        None => Ok(RequestedNetworks::Auto),
        Some(Value::String(s)) if s == "auto" && v.at_least(37) => Ok(RequestedNetworks::Auto),
        Some(Value::String(s)) if s == "none" && v.at_least(37) => Ok(RequestedNetworks::None),
        Some(Value::Array(list)) => {
            let mut out = Vec::new();
            for n in &list {
                if !n.is_object() {
                    return Err(invalid("Each network must be an object"));
                }
                let n: NetworkBody = typed(n)?;
                if n.uuid.is_none() && n.port.is_none() {
                    return Err(invalid("Bad networks format: network uuid or port is required"));
                }
                if let Some(ip) = &n.fixed_ip {
                    ip.parse::<std::net::IpAddr>().map_err(|_| invalid(format!("Invalid fixed IP address ({ip})")))?;
                }
                out.push(RequestedNetwork { network_id: n.uuid, port_id: n.port, fixed_ip: n.fixed_ip });
            }
            Ok(RequestedNetworks::List(out))
        }
        Some(other) => Err(invalid(format!("Invalid input for field/attribute networks. Value: {other}"))),
    }
}

/// `min_count` / `max_count`: an integer of at least 1, or its digits as a string.
fn count(field: &str, value: Option<Value>) -> Result<Option<usize>> {
    let at_least_one = || invalid(format!("{field} must be at least 1"));
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_u64().filter(|n| *n >= 1).map(|n| Some(n as usize)).ok_or_else(at_least_one),
        Some(Value::String(s)) => s.parse::<usize>().ok().filter(|n| *n >= 1).map(Some).ok_or_else(at_least_one),
        Some(_) => Err(invalid(format!("{field} must be an integer"))),
    }
}

fn ip(field: &str, value: Option<String>) -> Result<Option<String>> {
    match value.filter(|s| !s.is_empty()) {
        Some(s) => {
            s.parse::<std::net::IpAddr>().map_err(|_| invalid(format!("Invalid {field}: {s}")))?;
            Ok(Some(s))
        }
        None => Ok(None),
    }
}
