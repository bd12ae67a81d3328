//! Compute request checks that nova makes with its JSON schemas and in `compute/api.py`, in
//! nova's words: names, metadata and its quota, flavor fields, time filters, forced hosts, the
//! kernel and ramdisk an image links to, and who may see a private flavor.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::db::flavors::Flavor;
use crate::db::Db;
use crate::home::Home;
use crate::images::{MetaError, Viewer};
use crate::policy::{Action, Target};

/// nova's database limit for integer columns (`nova/db/constants.py` `MAX_INT`).
pub const MAX_INT: i64 = 0x7FFF_FFFF;
/// nova's limit for float columns (`SQL_SP_FLOAT_MAX`).
const SQL_SP_FLOAT_MAX: f64 = 3.40282e+38;

/// What nova's `name` format refuses: control and format characters anywhere, whitespace at
/// either end (`parameter_types.valid_name_regex`: printable characters, no leading or
/// trailing whitespace).
fn printable(c: char) -> bool {
    !(c.is_control()
        || matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}')
        || matches!(c, '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E000}'..='\u{F8FF}'))
}

/// A `name` as nova's schema takes it: 1 to 255 printable characters, not starting or ending
/// with whitespace. `field` names the attribute in the length errors.
pub fn name(field: &str, value: &str) -> ApiResult<()> {
    let len = value.chars().count();
    if len == 0 {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {field}. Value: {value}. '{value}' is too short"
        )));
    }
    if len > 255 {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {field}. Value: {value}. '{value}' is too long"
        )));
    }
    let edge = |c: Option<char>| c.is_some_and(char::is_whitespace);
    if !value.chars().all(printable) || edge(value.chars().next()) || edge(value.chars().last()) {
        return Err(ApiError::bad_request(
            "An invalid 'name' value was provided. The name must be: printable characters. \
             Can not start or end with whitespace.",
        ));
    }
    Ok(())
}

/// A server's description (2.19): at most 255 printable characters, whitespace anywhere.
pub fn description(value: &str) -> ApiResult<()> {
    if value.chars().count() > 255 {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute description. Value: {value}. '{value}' is too long"
        )));
    }
    if !value.chars().all(|c| printable(c) || c == ' ') {
        return Err(ApiError::bad_request(
            "Invalid input for field/attribute description. It must be printable characters.",
        ));
    }
    Ok(())
}

/// Server metadata as nova's schema takes it (keys of `[a-zA-Z0-9-_:. ]{1,255}`, string values
/// of at most 255 characters), and within the project's `metadata_items` quota (`limit`, -1
/// for none): over it is nova's 403.
pub fn metadata(value: &Value, limit: i64) -> ApiResult<BTreeMap<String, String>> {
    let m = value.as_object().ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid input for field/attribute metadata. Value: {value}. {value} is not of type 'object'"
        ))
    })?;
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let key_ok = (1..=255).contains(&k.chars().count())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_:. ".contains(c));
        if !key_ok {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute metadata. Value: {value}. Additional properties are not allowed \
                 ({} was unexpected)",
                Value::String(k.clone())
            )));
        }
        let v = v.as_str().ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for field/attribute {k}. Value: {v}. {v} is not of type 'string'"
            ))
        })?;
        if v.chars().count() > 255 {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute {k}. Value: {v}. '{v}' is too long"
            )));
        }
        out.insert(k.clone(), v.to_string());
    }
    metadata_quota(out.len(), limit)?;
    Ok(out)
}

/// nova's `_check_metadata_properties_quota`.
pub fn metadata_quota(items: usize, limit: i64) -> ApiResult<()> {
    if limit >= 0 && items as i64 > limit {
        return Err(ApiError::forbidden(format!("Maximum number of metadata items exceeds {limit}")));
    }
    Ok(())
}

/// One integer flavor field as nova's schema bounds it (`flavor_param_positive` or
/// `_non_negative`): an integer or a string of digits, from `min` to [`MAX_INT`].
pub fn flavor_int(field: &str, value: Option<&Value>, min: i64, default: Option<i64>) -> ApiResult<i64> {
    let bad = |v: &Value, why: String| {
        ApiError::bad_request(format!("Invalid input for field/attribute {field}. Value: {}. {why}", plain(v)))
    };
    let v = match (value, default) {
        (None, Some(d)) => return Ok(d),
        (None, None) => return Err(ApiError::bad_request(format!("'{field}' is a required property"))),
        (Some(v), _) => v,
    };
    let n: i128 = match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => n.as_i64().map(i128::from).unwrap_or(i128::MAX),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().unwrap_or(i128::MAX),
        Value::String(s) => return Err(bad(v, format!("'{s}' does not match '^[0-9]+$'"))),
        other => return Err(bad(v, format!("{} is not of type 'integer', 'string'", python(other)))),
    };
    if n < i128::from(min) {
        return Err(bad(v, format!("{} is less than the minimum of {min}", python(v))));
    }
    if n > i128::from(MAX_INT) {
        return Err(bad(v, format!("{} is greater than the maximum of {MAX_INT}", python(v))));
    }
    Ok(n as i64)
}

/// A flavor's `rxtx_factor`: a positive number up to nova's float column limit.
pub fn rxtx_factor(value: Option<&Value>) -> ApiResult<f64> {
    let Some(v) = value else { return Ok(1.0) };
    let bad = |why: String| {
        ApiError::bad_request(format!("Invalid input for field/attribute rxtx_factor. Value: {}. {why}", plain(v)))
    };
    let f = match v {
        Value::Number(n) => n.as_f64().unwrap_or(f64::INFINITY),
        Value::String(s) => {
            let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
            let ok = match s.split_once('.') {
                Some((a, b)) => digits(a) && digits(b),
                None => digits(s),
            };
            if !ok {
                return Err(bad(format!("'{s}' does not match '^[0-9]+(\\.[0-9]+)?$'")));
            }
            s.parse().unwrap_or(f64::INFINITY)
        }
        other => return Err(bad(format!("{} is not of type 'number', 'string'", python(other)))),
    };
    if f <= 0.0 {
        return Err(bad(format!("{} is less than or equal to the minimum of 0", python(v))));
    }
    if !f.is_finite() || f > SQL_SP_FLOAT_MAX {
        return Err(bad(format!("{} is greater than the maximum of 3.40282e+38", python(v))));
    }
    Ok(f)
}

/// A flavor id as nova's schema takes it: 1 to 255 of `[a-zA-Z0-9. _-]`, no space at either end.
pub fn flavor_id(value: &str) -> ApiResult<()> {
    let ok = (1..=255).contains(&value.len())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || ". _-".contains(c))
        && !value.starts_with(' ')
        && !value.ends_with(' ');
    if !ok {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute id. Value: {value}. '{value}' does not match '^(?! )[a-zA-Z0-9. _-]+(?<! )$'"
        )));
    }
    Ok(())
}

/// A JSON value as Python prints it in a jsonschema message.
fn python(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    }
}

/// A value as nova puts it after "Value:" (strings without quotes).
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => python(other),
    }
}

/// A `changes-since` / `changes-before` filter: an ISO 8601 time (oslo's `parse_isotime`),
/// as the database writes times (UTC, seconds). Anything else is nova's 400.
pub fn changes_time(field: &str, value: &str) -> ApiResult<String> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
    let v = value.trim();
    let parsed = DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| DateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f%z").ok().map(|t| t.with_timezone(&Utc)))
        .or_else(|| NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc()))
        .or_else(|| NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M").ok().map(|t| t.and_utc()))
        .or_else(|| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc())
        });
    match parsed {
        Some(t) => Ok(t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        None => Err(ApiError::bad_request(format!(
            "Invalid input for query parameters {field}. Value: {value}. '{value}' is not a 'date-time'"
        ))),
    }
}

/// `changes-since` and `changes-before` together: each a time, the first not after the second.
pub fn changes_window(since: Option<&str>, before: Option<&str>) -> ApiResult<(Option<String>, Option<String>)> {
    let since = since.map(|t| changes_time("changes-since", t)).transpose()?;
    let before = before.map(|t| changes_time("changes-before", t)).transpose()?;
    if let (Some(s), Some(b)) = (&since, &before) {
        if b < s {
            return Err(ApiError::bad_request(
                "The value of changes-since must be less than or equal to changes-before.",
            ));
        }
    }
    Ok((since, before))
}

/// A host or node name in a create body (2.74): nova's `fqdn` schema.
pub fn host_name(field: &str, value: Option<&str>) -> ApiResult<Option<String>> {
    match value {
        Some(s)
            if s.is_empty() || s.len() > 255 || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) =>
        {
            Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute {field}. Value: {s}. '{s}' does not match '^[a-zA-Z0-9-._]*$'"
            )))
        }
        other => Ok(other.map(str::to_string)),
    }
}

/// nova's `parse_availability_zone`: `zone`, `zone:host`, `zone::node` or `zone:host:node`.
/// Returns (zone, host, node); an empty part is absent.
pub fn availability_zone(value: &str) -> ApiResult<(Option<String>, Option<String>, Option<String>)> {
    let part = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let parts: Vec<&str> = value.split(':').collect();
    match parts.as_slice() {
        [zone] => Ok((part(zone), None, None)),
        [zone, host] => Ok((part(zone), part(host), None)),
        [zone, host, node] => Ok((part(zone), part(host), part(node))),
        _ => Err(ApiError::bad_request("Invalid input received: Unable to parse availability_zone")),
    }
}

/// The hosts a create asks for, each guarded by nova's policy: `zone:host[:node]` and the
/// `force_host` hint (forced, `os_compute_api:servers:create:forced_host`), and from 2.74 the
/// body's `host` / `hypervisor_hostname` (requested,
/// `compute:servers:create:requested_destination`). A denial is nova's 403.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destination {
    pub host: Option<String>,
    pub node: Option<String>,
}

pub fn destination(auth: &Auth, forced: Destination, hints: &Value, requested: Destination) -> ApiResult<Destination> {
    let target = Target { project_id: Some(auth.project_id()), ..Target::default() };
    let hint = |k: &str| hints.get(k).and_then(Value::as_str).map(str::to_string);
    let forced = Destination { host: forced.host.or(hint("force_host")), node: forced.node.or(hint("force_node")) };
    if forced != Destination::default() {
        auth.authorize(Action::ComputeForcedHost, &target)?;
    }
    if requested != Destination::default() {
        auth.authorize(Action::ComputeRequestedDestination, &target)?;
        if forced != Destination::default() {
            return Err(ApiError::bad_request(
                "One mechanism with host and/or hypervisor_hostname and another mechanism with zone:host:node are \
                 mutually exclusive.",
            ));
        }
        return Ok(requested);
    }
    Ok(forced)
}

/// The scheduler hints with the destination the create settled on: the scheduler reads
/// `force_host` and `force_node`.
pub fn hints_with(hints: &Value, d: &Destination) -> Value {
    let mut out = match hints {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    out.remove("force_host");
    out.remove("force_node");
    if let Some(h) = &d.host {
        out.insert("force_host".into(), Value::String(h.clone()));
    }
    if let Some(n) = &d.node {
        out.insert("force_node".into(), Value::String(n.clone()));
    }
    Value::Object(out)
}

/// A destination's host and node must be compute hosts novabox knows (only admins get here).
pub fn known_destination(db: &Db, d: &Destination) -> ApiResult<()> {
    let nodes = db.compute_nodes()?;
    if let Some(h) = &d.host {
        if !nodes.iter().any(|n| &n.host == h) {
            return Err(ApiError::bad_request(format!("Compute host {h} could not be found.")));
        }
    }
    if let Some(n) = &d.node {
        if !nodes.iter().any(|c| &c.report.hypervisor_hostname == n) {
            return Err(ApiError::bad_request(format!("Compute host {n} could not be found.")));
        }
    }
    Ok(())
}

/// The boot image as the guest will get it, with its kernel and ramdisk looked up as the
/// caller sees them: nova's `_handle_kernel_and_ramdisk` fetches both through glance with the
/// user's context and fails the create when either is not found.
pub fn boot_image_meta(
    db: &Db,
    home: &Home,
    image_id: &str,
    auth: &Auth,
) -> ApiResult<Option<crate::compute::virt::ImageMeta>> {
    let viewer = Viewer { project_id: auth.project_id(), is_admin: auth.is_admin() };
    crate::images::image_meta(db, home, image_id, &viewer).map_err(|e| match e {
        MetaError::LinkedNotFound(_) => ApiError::bad_request("Can not find requested image"),
        MetaError::Db(e) => e.into(),
    })
}

/// Whether the caller may see (and boot) a flavor: public ones, every one for those the
/// policy lets see private flavors (admins), and private ones its project was given access to.
pub fn flavor_visible(auth: &Auth, flavor: &Flavor, access: &[String]) -> bool {
    flavor.is_public
        || auth.authorize(Action::ComputeFlavorPrivate, &Target::default()).is_ok()
        || access.iter().any(|p| p == auth.project_id())
}

/// The `name` list filter, a regular expression as in nova (its database matches it with
/// REGEXP, anywhere in the name). One that does not compile is a 400 here, not a failed query.
pub fn name_filter(name: Option<&str>) -> ApiResult<Option<String>> {
    let Some(pattern) = name else { return Ok(None) };
    match regex::RegexBuilder::new(pattern).size_limit(1 << 20).build() {
        Ok(_) => Ok(Some(pattern.to_string())),
        Err(e) => Err(ApiError::bad_request(format!("Invalid regular expression in the name filter {pattern:?}: {e}"))),
    }
}

/// nova's `parameter_types.boolean`: JSON booleans and the strings Python's
/// `strutils.bool_from_string` knows, in any case. Absent or null is `None`; anything else is
/// nova's 400 naming the field and the accepted values.
pub fn boolean(field: &str, value: Option<&Value>) -> ApiResult<Option<bool>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if ["true", "1", "on", "yes"].contains(&s.to_ascii_lowercase().as_str()) => {
            Ok(Some(true))
        }
        Some(Value::String(s)) if ["false", "0", "off", "no"].contains(&s.to_ascii_lowercase().as_str()) => {
            Ok(Some(false))
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {field}. Value: {other}. {other} is not one of [True, 'True', \
             'TRUE', 'true', '1', 'ON', 'On', 'on', 'YES', 'Yes', 'yes', False, 'False', 'FALSE', 'false', '0', \
             'OFF', 'Off', 'off', 'NO', 'No', 'no']"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_refuse_control_characters_and_edge_whitespace() {
        assert!(name("name", "web-1 (prod) é").is_ok());
        for bad in ["a\u{0}b", "tab\there", " lead", "trail ", "\u{200B}zw", "nl\n"] {
            let e = name("name", bad).unwrap_err();
            assert_eq!(e.status, 400, "{bad:?}");
            assert!(e.message.starts_with("An invalid 'name' value was provided."), "{bad:?}: {}", e.message);
        }
        assert!(name("name", "").unwrap_err().message.contains("is too short"));
        assert!(name("name", &"x".repeat(256)).unwrap_err().message.contains("is too long"));
        assert!(description(" spaced  out ").is_ok() && description("nul\u{0}").is_err());
    }

    #[test]
    fn metadata_keys_follow_novas_pattern_and_the_quota() {
        assert_eq!(metadata(&json!({"a-b_c:d. e": "v\u{0}"}), 128).unwrap().len(), 1);
        assert_eq!(metadata(&json!({"k\u{0}": "v"}), 128).unwrap_err().status, 400);
        assert_eq!(metadata(&json!({"k": 1}), 128).unwrap_err().status, 400);
        assert_eq!(metadata(&json!({"k": "x".repeat(256)}), 128).unwrap_err().status, 400);
        let many: Map<String, Value> = (0..129).map(|i| (format!("k{i}"), json!("v"))).collect();
        let e = metadata(&Value::Object(many.clone()), 128).unwrap_err();
        assert_eq!((e.status.as_u16(), e.message.as_str()), (403, "Maximum number of metadata items exceeds 128"));
        assert!(metadata(&Value::Object(many), -1).is_ok());
    }

    #[test]
    fn flavor_fields_are_bounded_as_nova_bounds_them() {
        let huge = json!(9223372036854775807i64);
        let e = flavor_int("OS-FLV-EXT-DATA:ephemeral", Some(&huge), 0, Some(0)).unwrap_err();
        assert_eq!(
            e.message,
            "Invalid input for field/attribute OS-FLV-EXT-DATA:ephemeral. Value: 9223372036854775807. \
             9223372036854775807 is greater than the maximum of 2147483647"
        );
        assert!(flavor_int("swap", Some(&json!(u64::MAX)), 0, Some(0)).is_err());
        assert!(flavor_int("swap", Some(&json!(-1)), 0, Some(0))
            .unwrap_err()
            .message
            .contains("less than the minimum of 0"));
        assert!(flavor_int("ram", Some(&json!(0)), 1, None).is_err());
        assert!(flavor_int("ram", Some(&json!(1.5)), 1, None).unwrap_err().message.contains("not of type"));
        assert!(flavor_int("ram", None, 1, None).unwrap_err().message.contains("required"));
        assert_eq!(flavor_int("ram", Some(&json!("512")), 1, None).unwrap(), 512);
        assert_eq!(flavor_int("swap", None, 0, Some(0)).unwrap(), 0);
        assert_eq!(flavor_int("vcpus", Some(&json!(MAX_INT)), 1, None).unwrap(), MAX_INT);
        assert!(rxtx_factor(Some(&json!(0))).is_err());
        assert!(rxtx_factor(Some(&json!(1e39))).is_err());
        assert!(rxtx_factor(Some(&json!("x"))).is_err());
        assert_eq!(rxtx_factor(Some(&json!("2.5"))).unwrap(), 2.5);
        assert!(flavor_id(" a").is_err() && flavor_id("a\u{0}").is_err() && flavor_id("m1.tiny_2-x").is_ok());
    }

    #[test]
    fn time_filters_parse_iso8601_or_answer_400() {
        assert_eq!(changes_time("changes-since", "2026-01-02T03:04:05Z").unwrap(), "2026-01-02T03:04:05Z");
        assert_eq!(changes_time("changes-since", "2026-01-02T04:04:05+01:00").unwrap(), "2026-01-02T03:04:05Z");
        assert_eq!(changes_time("changes-since", "2026-01-02T03:04:05.123456").unwrap(), "2026-01-02T03:04:05Z");
        assert_eq!(changes_time("changes-since", "2026-01-02").unwrap(), "2026-01-02T00:00:00Z");
        let e = changes_time("changes-since", "garbage").unwrap_err();
        assert_eq!(
            e.message,
            "Invalid input for query parameters changes-since. Value: garbage. 'garbage' is not a 'date-time'"
        );
    }

    #[test]
    fn availability_zones_parse_as_nova_parses_them() {
        assert_eq!(availability_zone("nova").unwrap(), (Some("nova".into()), None, None));
        assert_eq!(availability_zone("nova:h1").unwrap(), (Some("nova".into()), Some("h1".into()), None));
        assert_eq!(availability_zone(":h1").unwrap(), (None, Some("h1".into()), None));
        assert_eq!(availability_zone("nova::n1").unwrap(), (Some("nova".into()), None, Some("n1".into())));
        assert!(availability_zone("a:b:c:d").is_err());
    }

    #[test]
    fn booleans_are_novas() {
        use serde_json::json;
        for (v, want) in [
            (json!(true), true),
            (json!("True"), true),
            (json!("yes"), true),
            (json!("OFF"), false),
            (json!(false), false),
        ] {
            assert_eq!(boolean("f", Some(&v)).unwrap(), Some(want), "{v}");
        }
        assert_eq!(boolean("f", None).unwrap(), None);
        assert!(boolean("f", Some(&json!("maybe"))).unwrap_err().message.contains("field/attribute f"));
        assert!(boolean("f", Some(&json!(1))).is_err());
    }
}
