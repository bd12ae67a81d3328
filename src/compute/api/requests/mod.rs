//! The server API's bodies as types, checked as nova's JSON schemas check them for the
//! request's microversion (`nova/api/openstack/compute/schemas/servers.py`). Where nova's
//! schema says `additionalProperties: false` the struct denies unknown fields; where it takes
//! several JSON types (`flavorRef`, `min_count`, `boot_index`, ...) the field stays a `Value`
//! and is checked here, in nova's words.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_path_to_error::Segment;

use super::{ComputeError, Result};
use crate::api::compute::microversion::Microversion;
use crate::api::compute::validation;

mod action;
mod create;
pub mod lifecycle;

pub use action::Action;
pub use create::CreateRequest;

pub(super) fn invalid(message: impl Into<String>) -> ComputeError {
    ComputeError::Invalid(message.into())
}

/// nova's text for a key its schema does not allow.
pub(super) fn unexpected(key: &str) -> ComputeError {
    invalid(format!("Additional properties are not allowed ('{key}' was unexpected)"))
}

/// Reads `value` as `T`, refusing as nova's schema validator does: an unknown field is named
/// as unexpected, a missing one as required, a wrong type with the field and the value.
pub(crate) fn typed<T: DeserializeOwned>(value: &Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| schema_error(value, e))
}

fn schema_error(root: &Value, e: serde_path_to_error::Error<serde_json::Error>) -> ComputeError {
    let path: Vec<Segment> = e.path().iter().cloned().collect();
    let reason = e.into_inner().to_string();
    let quoted = |prefix: &str| reason.strip_prefix(prefix).and_then(|r| r.split('`').next()).map(str::to_string);
    if let Some(field) = quoted("unknown field `") {
        return unexpected(&field);
    }
    if let Some(field) = quoted("missing field `") {
        return invalid(format!("'{field}' is a required property"));
    }
    let field = path
        .iter()
        .rev()
        .find_map(|s| match s {
            Segment::Map { key } => Some(key.as_str()),
            _ => None,
        })
        .unwrap_or("body");
    let mut at = Some(root);
    for s in &path {
        at = match s {
            Segment::Map { key } => at.and_then(|v| v.get(key)),
            Segment::Seq { index } => at.and_then(|v| v.get(index)),
            _ => None,
        };
    }
    match (reason.strip_prefix("invalid type: ").and_then(|r| r.split("expected ").nth(1)), at) {
        (Some(expected), Some(value)) => {
            let kind = match expected {
                "a string" => "string",
                "a boolean" => "boolean",
                "a sequence" => "array",
                e if e.starts_with("struct") || e == "a map" => "object",
                e => e,
            };
            invalid(format!(
                "Invalid input for field/attribute {field}. Value: {value}. {value} is not of type '{kind}'"
            ))
        }
        _ => invalid(format!("Invalid input for field/attribute {field}: {reason}")),
    }
}

/// A field that may be JSON null, kept as the value so null is refused where nova refuses it
/// rather than read as absent.
pub(super) fn present<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    server: UpdateServer,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateServer {
    name: Option<String>,
    description: Option<Option<String>>,
    #[serde(rename = "accessIPv4")]
    access_ip_v4: Option<String>,
    #[serde(rename = "accessIPv6")]
    access_ip_v6: Option<String>,
    #[serde(rename = "OS-DCF:diskConfig")]
    disk_config: Option<String>,
}

/// `PUT /servers/{id}`: what to change; `description: Some(None)` clears it.
#[derive(Debug)]
pub struct UpdateRequest {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub access_ip_v4: Option<String>,
    pub access_ip_v6: Option<String>,
    /// `OS-DCF:diskConfig`: true for AUTO.
    pub auto_disk_config: Option<bool>,
}

/// `OS-DCF:diskConfig` as nova's schema reads it: AUTO or MANUAL.
pub(super) fn disk_config(value: Option<&str>) -> Result<Option<bool>> {
    match value {
        None => Ok(None),
        Some("AUTO") => Ok(Some(true)),
        Some("MANUAL") => Ok(Some(false)),
        Some(other) => Err(invalid(format!(
            "Invalid input for field/attribute OS-DCF:diskConfig. Value: {other}. '{other}' is not one of ['AUTO', \
             'MANUAL']"
        ))),
    }
}

impl UpdateRequest {
    pub fn parse(body: &Value, v: Microversion) -> Result<UpdateRequest> {
        let UpdateBody { server: u } = typed(body)?;
        if let Some(n) = &u.name {
            validation::name("name", n)?;
        }
        if u.description.is_some() && !v.at_least(19) {
            return Err(unexpected("description"));
        }
        if let Some(Some(d)) = &u.description {
            validation::description(d)?;
        }
        Ok(UpdateRequest {
            name: u.name,
            description: u.description,
            access_ip_v4: u.access_ip_v4,
            access_ip_v6: u.access_ip_v6,
            auto_disk_config: disk_config(u.disk_config.as_deref())?,
        })
    }
}
