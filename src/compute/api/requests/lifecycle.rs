//! The bodies of issue 16's long actions, checked as nova's schemas check them
//! (`schemas/servers.py` `rebuild*` and `resize`, `schemas/create_backup.py`, and
//! `servers.py`'s `create_image`): `rebuild`, `resize`, `createImage` and `createBackup`.

use std::collections::BTreeMap;

use base64::Engine;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use super::{invalid, present, typed, unexpected};
use crate::api::compute::microversion::Microversion;
use crate::api::compute::validation;
use crate::compute::api::Result;

/// `rebuild`: what changes besides the root disk. `None` leaves a field as it is; for
/// `key_name` and `user_data`, `Some(None)` clears it (2.54, 2.57).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rebuild {
    pub image_ref: String,
    pub name: Option<String>,
    pub admin_pass: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub preserve_ephemeral: bool,
    pub description: Option<Option<String>>,
    pub access_ip_v4: Option<String>,
    pub access_ip_v6: Option<String>,
    pub key_name: Option<Option<String>>,
    pub user_data: Option<Option<String>>,
}

/// `createImage` and `createBackup`: the image's name and extra properties, and for a backup
/// its type and how many of that type to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRequest {
    pub name: String,
    pub metadata: BTreeMap<String, String>,
    pub backup: Option<Backup>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub backup_type: String,
    pub rotation: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RebuildBody {
    #[serde(rename = "imageRef", default, deserialize_with = "present")]
    image_ref: Option<Value>,
    name: Option<String>,
    #[serde(rename = "adminPass")]
    admin_pass: Option<String>,
    #[serde(default, deserialize_with = "present")]
    metadata: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    preserve_ephemeral: Option<Value>,
    #[serde(rename = "OS-DCF:diskConfig")]
    _disk_config: Option<String>,
    #[serde(rename = "accessIPv4")]
    access_ip_v4: Option<String>,
    #[serde(rename = "accessIPv6")]
    access_ip_v6: Option<String>,
    #[serde(default, deserialize_with = "present")]
    personality: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    key_name: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    user_data: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    trusted_image_certificates: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    hostname: Option<Value>,
}

/// nova's rebuild schema for microversion `v`.
pub fn rebuild(args: &Value, v: Microversion) -> Result<Rebuild> {
    if !args.is_object() {
        return Err(invalid(format!(
            "Invalid input for field/attribute rebuild. Value: {args}. {args} is not of type 'object'"
        )));
    }
    let b: RebuildBody = typed(args)?;
    // Keys of later microversions are unknown before them, as nova's schema per version has it.
    for (key, present, since) in [
        ("description", b.description.is_some(), 19),
        ("key_name", b.key_name.is_some(), 54),
        ("user_data", b.user_data.is_some(), 57),
        ("trusted_image_certificates", b.trusted_image_certificates.is_some(), 63),
        // 2.90 is above novabox's maximum: `hostname` is never allowed yet.
        ("hostname", b.hostname.is_some(), 90),
    ] {
        if present && !v.at_least(since) {
            return Err(unexpected(key));
        }
    }
    if b.personality.is_some() && v.at_least(57) {
        return Err(unexpected("personality"));
    }
    if b.trusted_image_certificates.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(invalid("Image certificate validation is not supported by novabox."));
    }
    let image_ref = match b.image_ref {
        None => return Err(invalid("'imageRef' is a required property")),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(invalid(format!(
                "Invalid input for field/attribute imageRef. Value: {other}. {other} is not of type 'string'"
            )))
        }
    };
    if uuid::Uuid::parse_str(&image_ref).is_err() {
        // nova's `image_id` format check: a uuid (a URL's last part is no longer taken).
        return Err(invalid(format!(
            "Invalid input for field/attribute imageRef. Value: {image_ref}. '{image_ref}' is not a 'uuid'"
        )));
    }
    if let Some(n) = &b.name {
        validation::name("name", n)?;
    }
    let metadata = b.metadata.map(|m| validation::metadata(&m, -1)).transpose()?;
    let preserve_ephemeral = validation::boolean("preserve_ephemeral", b.preserve_ephemeral.as_ref())?.unwrap_or(false);
    let description = match b.description {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(d)) => {
            validation::description(&d)?;
            Some(Some(d))
        }
        Some(other) => return Err(not_string_or_null("description", &other)),
    };
    let key_name = match b.key_name {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(k)) => {
            validation::name("key_name", &k)?;
            Some(Some(k))
        }
        Some(other) => return Err(not_string_or_null("key_name", &other)),
    };
    let user_data = match b.user_data {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(u)) => {
            if u.len() > 65535 {
                return Err(invalid(format!(
                    "Invalid input for field/attribute user_data. Value: {u}. '{u}' is too long"
                )));
            }
            base64::engine::general_purpose::STANDARD.decode(u.trim()).map_err(|_| {
                invalid(format!("Invalid input for field/attribute user_data. Value: {u}. '{u}' is not a 'base64'"))
            })?;
            Some(Some(u))
        }
        Some(other) => return Err(not_string_or_null("user_data", &other)),
    };
    Ok(Rebuild {
        image_ref,
        name: b.name,
        admin_pass: b.admin_pass,
        metadata,
        preserve_ephemeral,
        description,
        access_ip_v4: b.access_ip_v4,
        access_ip_v6: b.access_ip_v6,
        key_name,
        user_data,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeBody {
    #[serde(rename = "flavorRef", default, deserialize_with = "present")]
    flavor_ref: Option<Value>,
    #[serde(rename = "OS-DCF:diskConfig")]
    _disk_config: Option<String>,
}

/// nova's resize schema: `flavorRef`, a string or an integer, is required.
pub fn resize(args: &Value) -> Result<String> {
    if !args.is_object() {
        return Err(invalid(format!(
            "Invalid input for field/attribute resize. Value: {args}. {args} is not of type 'object'"
        )));
    }
    let b: ResizeBody = typed(args)?;
    match b.flavor_ref {
        None => Err(invalid("'flavorRef' is a required property")),
        Some(Value::String(s)) if s.is_empty() => {
            Err(invalid("Invalid input for field/attribute flavorRef. Value: . '' is too short"))
        }
        Some(Value::String(s)) => Ok(s),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Some(other) => Err(invalid(format!(
            "Invalid input for field/attribute flavorRef. Value: {other}. {other} is not of type 'string', 'integer'"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageBody {
    #[serde(default, deserialize_with = "present")]
    name: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    metadata: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    #[serde(default, deserialize_with = "present")]
    name: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    metadata: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    backup_type: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    rotation: Option<Value>,
    // Ignored by nova since the 2.x API, but its schema allows it.
    #[serde(rename = "OS-DCF:diskConfig")]
    _disk_config: Option<IgnoredAny>,
}

/// `createImage`: `name` required; `metadata` becomes the image's properties.
pub fn create_image(args: &Value) -> Result<ImageRequest> {
    if !args.is_object() {
        return Err(invalid(format!(
            "Invalid input for field/attribute createImage. Value: {args}. {args} is not of type 'object'"
        )));
    }
    let b: ImageBody = typed(args)?;
    Ok(ImageRequest { name: image_name(b.name)?, metadata: image_metadata(b.metadata)?, backup: None })
}

/// `createBackup`: `name`, `backup_type` and `rotation` (a non-negative integer, or a string
/// of digits) required.
pub fn create_backup(args: &Value) -> Result<ImageRequest> {
    if !args.is_object() {
        return Err(invalid(format!(
            "Invalid input for field/attribute createBackup. Value: {args}. {args} is not of type 'object'"
        )));
    }
    let b: BackupBody = typed(args)?;
    let name = image_name(b.name)?;
    let backup_type = match b.backup_type {
        None => return Err(invalid("'backup_type' is a required property")),
        Some(Value::String(t)) => t,
        Some(other) => {
            return Err(invalid(format!(
                "Invalid input for field/attribute backup_type. Value: {other}. {other} is not of type 'string'"
            )))
        }
    };
    // nova's `non_negative_integer`: an integer or a string of digits, at least 0.
    let field = |why: String| invalid(format!("Invalid input for field/attribute rotation. {why}"));
    let rotation = match b.rotation {
        None => return Err(invalid("'rotation' is a required property")),
        Some(Value::Number(n)) if n.as_i64().is_some_and(|r| r < 0) => {
            return Err(field(format!("Value: {n}. {n} is less than the minimum of 0")))
        }
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|r| u32::try_from(r).ok())
            .ok_or_else(|| field(format!("Value: {n}. {n} is not of type 'integer', 'string'")))?,
        Some(Value::String(s)) if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => {
            s.parse().map_err(|_| field(format!("Value: {s}. '{s}' is too large")))?
        }
        Some(Value::String(s)) => return Err(field(format!("Value: {s}. '{s}' does not match '^[0-9]*$'"))),
        Some(other) => return Err(field(format!("Value: {other}. {other} is not of type 'integer', 'string'"))),
    };
    Ok(ImageRequest { name, metadata: image_metadata(b.metadata)?, backup: Some(Backup { backup_type, rotation }) })
}

fn image_name(name: Option<Value>) -> Result<String> {
    match name {
        None => Err(invalid("'name' is a required property")),
        Some(Value::String(n)) => {
            validation::name("name", &n)?;
            Ok(n)
        }
        Some(other) => Err(invalid(format!(
            "Invalid input for field/attribute name. Value: {other}. {other} is not of type 'string'"
        ))),
    }
}

fn image_metadata(metadata: Option<Value>) -> Result<BTreeMap<String, String>> {
    Ok(metadata.map(|m| validation::metadata(&m, -1)).transpose()?.unwrap_or_default())
}

fn not_string_or_null(field: &str, value: &Value) -> crate::compute::api::ComputeError {
    invalid(format!(
        "Invalid input for field/attribute {field}. Value: {value}. {value} is not of type 'string', 'null'"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const IMG: &str = "6f0b1f43-5a4f-4f5e-9c1b-1f2e3d4c5b6a";

    fn mv(n: u32) -> Microversion {
        Microversion(n)
    }

    #[test]
    fn rebuild_follows_nova_s_schema_per_microversion() {
        let r = rebuild(
            &json!({"imageRef": IMG, "name": "new", "metadata": {"a": "b"}, "preserve_ephemeral": "yes"}),
            mv(1),
        )
        .unwrap();
        assert_eq!(r.image_ref, IMG);
        assert_eq!(r.name.as_deref(), Some("new"));
        assert!(r.preserve_ephemeral);
        assert_eq!(r.metadata.unwrap().get("a").map(String::as_str), Some("b"));
        let err = |body: Value, v: u32| rebuild(&body, mv(v)).unwrap_err().to_string();
        assert_eq!(err(json!({"name": "x"}), 1), "'imageRef' is a required property");
        assert!(err(json!({"imageRef": "nope"}), 1).contains("is not a 'uuid'"));
        assert_eq!(
            err(json!({"imageRef": IMG, "key_name": "k"}), 53),
            "Additional properties are not allowed ('key_name' was unexpected)"
        );
        assert_eq!(
            err(json!({"imageRef": IMG, "user_data": "aGk="}), 56),
            "Additional properties are not allowed ('user_data' was unexpected)"
        );
        assert_eq!(
            err(json!({"imageRef": IMG, "hostname": "h"}), 79),
            "Additional properties are not allowed ('hostname' was unexpected)"
        );
        assert_eq!(
            err(json!({"imageRef": IMG, "personality": []}), 57),
            "Additional properties are not allowed ('personality' was unexpected)"
        );
        assert_eq!(
            err(json!({"imageRef": IMG, "bogus": 1}), 1),
            "Additional properties are not allowed ('bogus' was unexpected)"
        );
        assert!(err(json!({"imageRef": IMG, "user_data": "%%%"}), 57).contains("is not a 'base64'"));
        let cleared = rebuild(&json!({"imageRef": IMG, "key_name": null, "user_data": null}), mv(57)).unwrap();
        assert_eq!((cleared.key_name, cleared.user_data), (Some(None), Some(None)));
        assert!(rebuild(&json!({"imageRef": IMG, "personality": []}), mv(56)).is_ok());
    }

    #[test]
    fn resize_and_image_bodies() {
        assert_eq!(resize(&json!({"flavorRef": 2})).unwrap(), "2");
        assert_eq!(resize(&json!({"flavorRef": "m1.small"})).unwrap(), "m1.small");
        assert_eq!(resize(&json!({})).unwrap_err().to_string(), "'flavorRef' is a required property");
        assert!(resize(&json!({"flavorRef": "1", "x": 1})).unwrap_err().to_string().contains("'x' was unexpected"));
        let i = create_image(&json!({"name": "snap", "metadata": {"k": "v"}})).unwrap();
        assert_eq!((i.name.as_str(), i.backup), ("snap", None));
        assert_eq!(create_image(&json!({})).unwrap_err().to_string(), "'name' is a required property");
        let b = create_backup(&json!({"name": "b", "backup_type": "daily", "rotation": "2"})).unwrap();
        assert_eq!(b.backup, Some(Backup { backup_type: "daily".into(), rotation: 2 }));
        assert_eq!(
            create_backup(&json!({"name": "b", "rotation": 1})).unwrap_err().to_string(),
            "'backup_type' is a required property"
        );
        assert!(create_backup(&json!({"name": "b", "backup_type": "d", "rotation": -1})).is_err());
    }
}
