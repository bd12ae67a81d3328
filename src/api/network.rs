//! Network v2.0 (neutron), what compute and the standard clients need: networks, subnets,
//! ports and security groups with their rules, neutron's JSON shapes, list filters
//! (`?name=x&fields=id`), sorting and paging, and `NeutronError` bodies with neutron's types.
//!
//! Tenancy as neutron: a project sees its own resources, shared (and external) networks and
//! their subnets, and the ports on networks it owns; another project's resource is 404;
//! admins see everything.

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::context::Auth;
use super::fault::{ApiError, ApiResult};
use super::{base_url, AppState};
use crate::cidr::Ipv4Cidr;
use crate::db::network::{
    default_pools, validate_pools, FixedIpRequest, HostRoute, Network, NewPort, NewSubnet, Pool, Port, SecurityGroup,
    SecurityGroupRule, Subnet, DEFAULT_SECURITY_GROUP,
};
use crate::db::{Db, DbError};

pub fn router() -> Router<AppState> {
    Router::new()
        // A fallback of our own, so unknown paths under the prefix get this service's error body.
        .fallback(|| async { ApiError::not_found("The resource could not be found.") })
        .route("/", get(versions))
        .route("/v2.0", get(resources))
        .route("/v2.0/", get(resources))
        .route("/v2.0/extensions", get(list_extensions))
        .route("/v2.0/extensions/{alias}", get(show_extension))
        .route("/v2.0/networks", get(list_networks).post(create_network))
        .route("/v2.0/networks/{id}", get(show_network).put(update_network).delete(delete_network))
        .route("/v2.0/subnets", get(list_subnets).post(create_subnet))
        .route("/v2.0/subnets/{id}", get(show_subnet).put(update_subnet).delete(delete_subnet))
        .route("/v2.0/ports", get(list_ports).post(create_port))
        .route("/v2.0/ports/{id}", get(show_port).put(update_port).delete(delete_port))
        .route("/v2.0/security-groups", get(list_groups).post(create_group))
        .route("/v2.0/security-groups/{id}", get(show_group).put(update_group).delete(delete_group))
        .route("/v2.0/security-group-rules", get(list_rules).post(create_rule))
        .route("/v2.0/security-group-rules/{id}", get(show_rule).delete(delete_rule))
        .route("/v2.0/quotas", get(quotas::list))
        .route("/v2.0/quotas/project", get(quotas::own_project))
        .route("/v2.0/quotas/tenant", get(quotas::own_tenant))
        .route("/v2.0/quotas/{id}", get(quotas::show).put(quotas::update).delete(quotas::delete))
        .route("/v2.0/quotas/{id}/default", get(quotas::defaults))
        .route("/v2.0/quotas/{id}/details", get(quotas::details))
}

mod quotas;

// ---------------------------------------------------------------------------------------
// Discovery

pub(super) async fn versions(headers: HeaderMap, State(state): State<AppState>) -> Json<Value> {
    let base = base_url(&headers, &state.config);
    Json(json!({"versions": [{
        "id": "v2.0",
        "status": "CURRENT",
        "links": [{"rel": "self", "href": format!("{base}/network/v2.0/")}],
    }]}))
}

const COLLECTIONS: &[(&str, &str)] = &[
    ("network", "networks"),
    ("subnet", "subnets"),
    ("port", "ports"),
    ("security_group", "security-groups"),
    ("security_group_rule", "security-group-rules"),
];

async fn resources(headers: HeaderMap, State(state): State<AppState>) -> Json<Value> {
    let base = base_url(&headers, &state.config);
    let resources: Vec<Value> = COLLECTIONS
        .iter()
        .map(|(name, collection)| {
            json!({
                "name": name,
                "collection": collection,
                "links": [{"rel": "self", "href": format!("{base}/network/v2.0/{collection}")}],
            })
        })
        .collect();
    Json(json!({ "resources": resources }))
}

/// Only what novabox implements: clients decide what to send from this list.
const EXTENSIONS: &[(&str, &str, &str)] = &[
    ("security-group", "security-group", "The security groups extension."),
    ("port-security", "Port Security", "Provides port security"),
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external application"),
    ("external-net", "Neutron external network", "Adds external network attribute to network resource."),
    ("provider", "Provider Network", "Expose mapping of virtual networks to physical networks"),
    ("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    ("network_availability_zone", "Network Availability Zone", "Availability zone support for network."),
    ("standard-attr-description", "standard-attr-description", "Extension to add descriptions to standard attributes"),
    (
        "standard-attr-timestamp",
        "Resource timestamps",
        "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes.",
    ),
    (
        "standard-attr-revisions",
        "Resource revision numbers",
        "This extension will display the revision number of neutron resources.",
    ),
    ("project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled."),
    ("quotas", "Quota management support", "Expose functions for quotas management per project"),
    ("quota_details", "Quota details management support", "Expose functions for quotas usage statistics per project"),
];

fn extension_json(alias: &str, name: &str, description: &str) -> Value {
    json!({"alias": alias, "name": name, "description": description, "updated": "2019-01-01T00:00:00-00:00", "links": []})
}

async fn list_extensions(_auth: Auth) -> Json<Value> {
    Json(json!({"extensions": EXTENSIONS.iter().map(|(a, n, d)| extension_json(a, n, d)).collect::<Vec<_>>()}))
}

async fn show_extension(_auth: Auth, Path(alias): Path<String>) -> ApiResult<Json<Value>> {
    let (a, n, d) = EXTENSIONS
        .iter()
        .find(|(a, _, _)| *a == alias)
        .ok_or_else(|| ApiError::not_found(format!("Extension with alias {alias} does not exist")))?;
    Ok(Json(json!({"extension": extension_json(a, n, d)})))
}

// ---------------------------------------------------------------------------------------
// Errors and request bodies

fn not_found(kind: &'static str, message: String) -> ApiError {
    ApiError::not_found(message).with_kind(kind)
}
fn invalid(message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Invalid input for operation: {message}.")).with_kind("InvalidInput")
}
fn invalid_attr(key: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Invalid input for {key}. Reason: {reason}.")).with_kind("InvalidInput")
}
fn policy(action: &str) -> ApiError {
    ApiError::forbidden(format!("({action}) is disallowed by policy")).with_kind("PolicyNotAuthorized")
}
fn net_not_found(id: &str) -> ApiError {
    not_found("NetworkNotFound", format!("Network {id} could not be found."))
}
fn subnet_not_found(id: &str) -> ApiError {
    not_found("SubnetNotFound", format!("Subnet {id} could not be found."))
}
fn port_not_found(id: &str) -> ApiError {
    not_found("PortNotFound", format!("Port {id} could not be found."))
}
fn group_not_found(id: &str) -> ApiError {
    not_found("SecurityGroupNotFound", format!("Security group {id} does not exist"))
}
fn rule_not_found(id: &str) -> ApiError {
    not_found("SecurityGroupRuleNotFound", format!("Security group rule {id} does not exist"))
}

/// The object under `key` in a request body (`{"network": {...}}`), checked against the
/// attributes the resource has.
fn resource_body(body: &Bytes, key: &str, allowed: &[&str]) -> ApiResult<Map<String, Value>> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::bad_request("Malformed request body").with_kind("HTTPBadRequest"))?;
    let Some(Value::Object(obj)) = v.get(key).cloned() else {
        return Err(
            ApiError::bad_request(format!("Unable to find '{key}' in request body")).with_kind("HTTPBadRequest")
        );
    };
    let unknown: Vec<&str> = obj.keys().map(String::as_str).filter(|k| !allowed.contains(k)).collect();
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(format!("Unrecognized attribute(s) '{}'", unknown.join(", ")))
            .with_kind("HTTPBadRequest"));
    }
    Ok(obj)
}

fn get_bool(obj: &Map<String, Value>, key: &str) -> ApiResult<Option<bool>> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(v) => Err(invalid_attr(key, format!("'{v}' is not a valid boolean value"))),
    }
}

fn get_str(obj: &Map<String, Value>, key: &str, max: usize) -> ApiResult<Option<String>> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if s.len() <= max => Ok(Some(s.clone())),
        Some(Value::String(s)) => Err(invalid_attr(key, format!("'{s}' exceeds maximum length of {max}"))),
        Some(v) => Err(invalid_attr(key, format!("'{v}' is not a valid string"))),
    }
}

/// Characters neutron's `name_string` validator refuses anywhere in a name: Unicode's "other"
/// categories (controls such as NUL, format characters, private use) and the line and
/// paragraph separators. Unassigned code points, which neutron refuses too, are let through:
/// Rust has no table of them.
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{0600}'..='\u{0605}' | '\u{061C}' | '\u{06DD}' | '\u{070F}' | '\u{08E2}' | '\u{180E}'
            | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E000}'..='\u{F8FF}' | '\u{F0000}'..='\u{10FFFF}')
}

/// Unicode's space separators, which a neutron name may hold inside but not at either end.
fn space_separator(c: char) -> bool {
    matches!(c, ' ' | '\u{00A0}' | '\u{1680}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}')
}

/// A resource's `name` as neutron's `type:name_string` checks it (networks, subnets, ports):
/// printable characters only, no space at either end.
fn get_name(obj: &Map<String, Value>, key: &str, max: usize) -> ApiResult<Option<String>> {
    let name = get_str(obj, key, max)?;
    if let Some(n) = &name {
        let edge = |c: Option<char>| c.is_some_and(|c| space_separator(c) || unprintable(c));
        if n.chars().any(unprintable) || edge(n.chars().next()) || edge(n.chars().last()) {
            return Err(invalid_attr(key, format!("'{n}' is not a valid string")));
        }
    }
    Ok(name)
}

/// Free text (descriptions, security group names: neutron's plain `type:string`). Any
/// character but NUL: neutron's validator would pass it, but none of its databases can store
/// one (PostgreSQL refuses it outright), and a NUL cut short the C strings of every tool that
/// later reads the row.
fn get_text(obj: &Map<String, Value>, key: &str, max: usize) -> ApiResult<Option<String>> {
    let text = get_str(obj, key, max)?;
    if let Some(t) = text.as_deref().filter(|t| t.contains('\0')) {
        return Err(invalid_attr(key, format!("'{t}' is not a valid string")));
    }
    Ok(text)
}

fn get_int(obj: &Map<String, Value>, key: &str) -> ApiResult<Option<i64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        Some(Value::String(s)) => {
            s.parse().map(Some).map_err(|_| invalid_attr(key, format!("'{s}' is not an integer")))
        }
        Some(v) => Err(invalid_attr(key, format!("'{v}' is not an integer"))),
    }
}

/// The project a new resource belongs to: the caller's, or (admins only) the one named.
fn owner_project(auth: &Auth, obj: &Map<String, Value>) -> ApiResult<String> {
    let named = get_str(obj, "project_id", 255)?.or(get_str(obj, "tenant_id", 255)?);
    match named {
        Some(p) if p != auth.project_id() && !auth.is_admin() => Err(ApiError::bad_request(
            "Specifying 'project_id' or 'tenant_id' other than the authenticated project in request requires admin \
             privileges",
        )
        .with_kind("HTTPBadRequest")),
        Some(p) => Ok(p),
        None => Ok(auth.project_id().to_string()),
    }
}

fn read_only(obj: &Map<String, Value>, keys: &[&str]) -> ApiResult<()> {
    match keys.iter().find(|k| obj.contains_key(**k)) {
        Some(k) => {
            Err(ApiError::bad_request(format!("Cannot update read-only attribute {k}")).with_kind("HTTPBadRequest"))
        }
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Lists: filters, fields, sorting, paging

const CONTROL_PARAMS: &[&str] = &["fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse"];

fn matches_filter(value: &Value, wanted: &str, key: &str) -> bool {
    match value {
        Value::String(s) => s == wanted,
        Value::Bool(b) => {
            wanted.eq_ignore_ascii_case(if *b { "true" } else { "false" }) || wanted == if *b { "1" } else { "0" }
        }
        Value::Number(n) => n.to_string() == wanted,
        Value::Null => wanted.is_empty() || wanted == "None",
        // `fixed_ips=ip_address=10.0.0.3` / `fixed_ips=subnet_id=...` match one element's field.
        Value::Array(items) if key == "fixed_ips" => match wanted.split_once('=') {
            Some((field, v)) => items.iter().any(|i| i.get(field).and_then(Value::as_str) == Some(v)),
            None => false,
        },
        Value::Array(items) => items.iter().any(|i| i.as_str() == Some(wanted)),
        Value::Object(_) => false,
    }
}

fn json_cmp(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(Ordering::Equal)
        }
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (None | Some(Value::Null), None | Some(Value::Null)) => Ordering::Equal,
        (None | Some(Value::Null), _) => Ordering::Less,
        (_, None | Some(Value::Null)) => Ordering::Greater,
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}

/// Builds `{collection: [...]}` from `items` as neutron does for a `GET` with query `pairs`:
/// attribute filters (several values of one key mean any of them; unknown keys are ignored,
/// as neutron without the filter-validation extension), `sort_key`/`sort_dir`,
/// `limit`/`marker` with `<collection>_links`, then `fields`.
pub fn list_body(
    collection: &str,
    items: Vec<Value>,
    pairs: &[(String, String)],
    url: &str,
    not_found_kind: &'static str,
) -> ApiResult<Value> {
    let mut items: Vec<Value> = items
        .into_iter()
        .filter(|item| {
            pairs.iter().filter(|(k, _)| !CONTROL_PARAMS.contains(&k.as_str())).all(|(k, _)| match item.get(k) {
                None => true,
                Some(value) => pairs.iter().filter(|(k2, _)| k2 == k).any(|(_, v)| matches_filter(value, v, k)),
            })
        })
        .collect();

    let keys: Vec<&str> = pairs.iter().filter(|(k, _)| k == "sort_key").map(|(_, v)| v.as_str()).collect();
    let dirs: Vec<&str> = pairs.iter().filter(|(k, _)| k == "sort_dir").map(|(_, v)| v.as_str()).collect();
    if let Some(d) = dirs.iter().find(|d| **d != "asc" && **d != "desc") {
        return Err(invalid_attr("sort_dir", format!("'{d}' is not a valid sort direction")));
    }
    if !keys.is_empty() {
        if let Some(k) = keys.iter().find(|k| items.first().is_some_and(|i| i.get(**k).is_none())) {
            return Err(invalid_attr("sort_key", format!("'{k}' is not a valid sort key")));
        }
        items.sort_by(|a, b| {
            for (i, k) in keys.iter().enumerate() {
                let ord = json_cmp(a.get(*k), b.get(*k));
                let ord = if dirs.get(i).copied().unwrap_or("asc") == "desc" { ord.reverse() } else { ord };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            Ordering::Equal
        });
    }

    let limit = match pairs.iter().find(|(k, _)| k == "limit") {
        Some((_, v)) => match v.parse::<i64>() {
            Ok(n) if n > 0 => Some(n as usize),
            Ok(_) => None,
            Err(_) => return Err(invalid_attr("limit", format!("'{v}' is not an integer"))),
        },
        None => None,
    };
    let marker = pairs.iter().find(|(k, _)| k == "marker").map(|(_, v)| v.clone());
    let start = match &marker {
        Some(m) => {
            let pos = items.iter().position(|i| i.get("id").and_then(Value::as_str) == Some(m.as_str()));
            pos.map(|p| p + 1).ok_or_else(|| not_found(not_found_kind, format!("Marker {m} could not be found.")))?
        }
        None => 0,
    };
    let mut page: Vec<Value> = items.into_iter().skip(start).collect();
    let mut links = Vec::new();
    if let Some(limit) = limit {
        if page.len() > limit {
            page.truncate(limit);
            if let Some(last) = page.last().and_then(|i| i.get("id")).and_then(Value::as_str) {
                let mut q: Vec<String> = pairs
                    .iter()
                    .filter(|(k, _)| k != "marker")
                    .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                    .collect();
                q.push(format!("marker={}", encode(last)));
                links.push(json!({"rel": "next", "href": format!("{url}?{}", q.join("&"))}));
            }
        }
    }

    let fields: Vec<&str> = pairs.iter().filter(|(k, _)| k == "fields").map(|(_, v)| v.as_str()).collect();
    if !fields.is_empty() {
        for item in &mut page {
            if let Value::Object(m) = item {
                m.retain(|k, _| fields.contains(&k.as_str()));
            }
        }
    }
    let mut body = json!({ collection: page });
    if !links.is_empty() {
        body[format!("{collection}_links")] = Value::Array(links);
    }
    Ok(body)
}

/// Percent-encodes a query component (RFC 3986 unreserved characters stay).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Applies `?fields=` to a single resource, as neutron does on show.
fn select_fields(mut item: Value, pairs: &[(String, String)]) -> Value {
    let fields: Vec<&str> = pairs.iter().filter(|(k, _)| k == "fields").map(|(_, v)| v.as_str()).collect();
    if let (false, Value::Object(m)) = (fields.is_empty(), &mut item) {
        m.retain(|k, _| fields.contains(&k.as_str()));
    }
    item
}

fn collection_url(headers: &HeaderMap, state: &AppState, collection: &str) -> String {
    format!("{}/network/v2.0/{collection}", base_url(headers, &state.config))
}

// ---------------------------------------------------------------------------------------
// Tenancy

fn network_visible(auth: &Auth, n: &Network) -> bool {
    auth.owns(&n.project_id) || n.shared || n.external
}

fn load_network(db: &Db, auth: &Auth, id: &str) -> ApiResult<Network> {
    db.network_by_id(id)?.filter(|n| network_visible(auth, n)).ok_or_else(|| net_not_found(id))
}

fn subnet_visible(auth: &Auth, s: &Subnet, nets: &[Network]) -> bool {
    auth.owns(&s.project_id) || nets.iter().any(|n| n.id == s.network_id && network_visible(auth, n))
}

fn port_visible(auth: &Auth, p: &Port, nets: &[Network]) -> bool {
    // Network owners see the ports on their networks, as in neutron.
    auth.owns(&p.project_id) || nets.iter().any(|n| n.id == p.network_id && auth.owns(&n.project_id))
}

// ---------------------------------------------------------------------------------------
// Networks

fn network_json(n: &Network, admin: bool) -> Value {
    let mut v = json!({
        "id": n.id,
        "name": n.name,
        "description": n.description,
        "status": n.status,
        "admin_state_up": n.admin_state_up,
        "shared": n.shared,
        "subnets": n.subnets,
        "project_id": n.project_id,
        "tenant_id": n.project_id,
        "mtu": n.mtu,
        "router:external": n.external,
        "port_security_enabled": n.port_security_enabled,
        "availability_zones": ["nova"],
        "availability_zone_hints": [],
        "tags": [],
        "created_at": n.created_at,
        "updated_at": n.updated_at,
        "revision_number": n.revision_number,
    });
    if admin {
        // novabox networks are flat: the bridge is the "physical" network.
        let (kind, physnet) = match &n.bridge {
            Some(b) => ("flat", Value::String(b.clone())),
            None => ("local", Value::Null),
        };
        v["provider:network_type"] = json!(kind);
        v["provider:physical_network"] = physnet;
        v["provider:segmentation_id"] = Value::Null;
    }
    v
}

const NETWORK_ATTRS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "shared",
    "router:external",
    "mtu",
    "port_security_enabled",
    "project_id",
    "tenant_id",
    "availability_zone_hints",
    "provider:network_type",
    "provider:physical_network",
    "provider:segmentation_id",
];

/// Applies the changeable attributes of `obj` to `n`, checking admin-only ones.
fn apply_network_attrs(auth: &Auth, n: &mut Network, obj: &Map<String, Value>, creating: bool) -> ApiResult<()> {
    if let Some(name) = get_name(obj, "name", 255)? {
        n.name = name;
    }
    if let Some(d) = get_text(obj, "description", 255)? {
        n.description = d;
    }
    if let Some(b) = get_bool(obj, "admin_state_up")? {
        n.admin_state_up = b;
    }
    if let Some(shared) = get_bool(obj, "shared")? {
        if !auth.is_admin() && shared != n.shared {
            return Err(policy(if creating { "create_network:shared" } else { "update_network:shared" }));
        }
        n.shared = shared;
    }
    if let Some(ext) = get_bool(obj, "router:external")? {
        if !auth.is_admin() && ext != n.external {
            return Err(policy("create_network:router:external"));
        }
        n.external = ext;
    }
    if let Some(mtu) = get_int(obj, "mtu")? {
        if !(68..=9000).contains(&mtu) {
            return Err(invalid_attr("mtu", format!("'{mtu}' is not in range 68 through 9000")));
        }
        n.mtu = mtu;
    }
    if let Some(b) = get_bool(obj, "port_security_enabled")? {
        n.port_security_enabled = b;
    }
    if let Some(hints) = obj.get("availability_zone_hints") {
        let ok = hints.as_array().is_some_and(|a| a.iter().all(|z| z.as_str() == Some("nova")));
        if !ok {
            return Err(ApiError::not_found(
                "AvailabilityZone of resource network could not be found; novabox has only 'nova'.",
            )
            .with_kind("AvailabilityZoneNotFound"));
        }
    }
    let provider: Vec<&str> =
        NETWORK_ATTRS.iter().copied().filter(|k| k.starts_with("provider:") && obj.contains_key(*k)).collect();
    if !provider.is_empty() {
        if !auth.is_admin() {
            return Err(policy("create_network:provider:network_type"));
        }
        let kind = obj.get("provider:network_type").and_then(Value::as_str);
        if !matches!(kind, Some("flat" | "local") | None) {
            return Err(invalid(format!(
                "network type {} is not supported; novabox networks are flat or local",
                kind.unwrap_or_default()
            )));
        }
    }
    Ok(())
}

async fn list_networks(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let nets = state.db.with(|db| db.networks())?;
    let items = nets.iter().filter(|n| network_visible(&auth, n)).map(|n| network_json(n, auth.is_admin())).collect();
    let url = collection_url(&headers, &state, "networks");
    Ok(Json(list_body("networks", items, &pairs, &url, "NetworkNotFound")?))
}

async fn show_network(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let n = state.db.with(|db| load_network(db, &auth, &id))?;
    Ok(Json(json!({"network": select_fields(network_json(&n, auth.is_admin()), &pairs)})))
}

async fn create_network(State(state): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let obj = resource_body(&body, "network", NETWORK_ATTRS)?;
    let mut n = Network {
        id: String::new(),
        name: String::new(),
        project_id: owner_project(&auth, &obj)?,
        description: String::new(),
        shared: false,
        external: false,
        admin_state_up: true,
        status: "ACTIVE".into(),
        mtu: 1500,
        port_security_enabled: true,
        bridge: None,
        revision_number: 0,
        created_at: String::new(),
        updated_at: String::new(),
        subnets: Vec::new(),
    };
    apply_network_attrs(&auth, &mut n, &obj, true)?;
    let n = state.db.tx(|db| -> ApiResult<Network> {
        quotas::ensure_room(db, &n.project_id, "network")?;
        Ok(db.create_network(&n)?)
    })?;
    tracing::info!(network_id = %n.id, name = %n.name, "network created");
    Ok((StatusCode::CREATED, Json(json!({"network": network_json(&n, auth.is_admin())}))).into_response())
}

async fn update_network(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let mut allowed = NETWORK_ATTRS.to_vec();
    allowed.extend(["id", "status", "subnets"]);
    let obj = resource_body(&body, "network", &allowed)?;
    read_only(&obj, &["id", "project_id", "tenant_id", "status", "subnets"])?;
    let n = state.db.tx(|db| -> ApiResult<Network> {
        let mut n = load_network(db, &auth, &id)?;
        if !auth.owns(&n.project_id) {
            return Err(policy("update_network"));
        }
        apply_network_attrs(&auth, &mut n, &obj, false)?;
        Ok(db.save_network(&n)?)
    })?;
    Ok(Json(json!({"network": network_json(&n, auth.is_admin())})))
}

async fn delete_network(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.db.tx(|db| -> ApiResult<()> {
        let n = load_network(db, &auth, &id)?;
        if !auth.owns(&n.project_id) {
            return Err(policy("delete_network"));
        }
        db.delete_network(&id).map_err(|e| match e {
            DbError::Conflict(m) => ApiError::conflict(m).with_kind("NetworkInUse"),
            other => other.into(),
        })
    })?;
    tracing::info!(network_id = %id, "network deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Subnets

fn subnet_json(s: &Subnet) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "description": s.description,
        "network_id": s.network_id,
        "project_id": s.project_id,
        "tenant_id": s.project_id,
        "cidr": s.cidr.to_string(),
        "ip_version": 4,
        "gateway_ip": s.gateway_ip.map(|g| g.to_string()),
        "enable_dhcp": s.enable_dhcp,
        "allocation_pools": s.allocation_pools.iter().map(|p| json!({"start": p.start.to_string(), "end": p.end.to_string()})).collect::<Vec<_>>(),
        "dns_nameservers": s.dns_nameservers,
        "host_routes": s.host_routes.iter().map(|r| json!({"destination": r.destination, "nexthop": r.nexthop})).collect::<Vec<_>>(),
        "ipv6_ra_mode": null,
        "ipv6_address_mode": null,
        "subnetpool_id": null,
        "tags": [],
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "revision_number": s.revision_number,
    })
}

const SUBNET_ATTRS: &[&str] = &[
    "network_id",
    "name",
    "description",
    "cidr",
    "ip_version",
    "gateway_ip",
    "allocation_pools",
    "enable_dhcp",
    "dns_nameservers",
    "host_routes",
    "project_id",
    "tenant_id",
    "ipv6_ra_mode",
    "ipv6_address_mode",
    "subnetpool_id",
    "use_default_subnetpool",
];

fn parse_ipv4(key: &str, v: &Value) -> ApiResult<Ipv4Addr> {
    v.as_str()
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| invalid_attr(key, format!("'{v}' is not a valid IPv4 address")))
}

/// A CIDR as a route destination or a rule's remote prefix: any prefix length, IPv4 or IPv6,
/// host bits allowed (neutron keeps what it is given).
fn parse_prefix(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

fn parse_dns(v: &Value) -> ApiResult<Vec<String>> {
    let arr = v.as_array().ok_or_else(|| invalid_attr("dns_nameservers", format!("'{v}' is not a list")))?;
    let mut out: Vec<String> = Vec::new();
    for item in arr {
        let ip = parse_ipv4("dns_nameservers", item)?.to_string();
        if out.contains(&ip) {
            return Err(invalid_attr("dns_nameservers", format!("Duplicate nameserver '{ip}'")));
        }
        out.push(ip);
    }
    Ok(out)
}

fn parse_routes(v: &Value) -> ApiResult<Vec<HostRoute>> {
    let arr = v.as_array().ok_or_else(|| invalid_attr("host_routes", format!("'{v}' is not a list")))?;
    arr.iter()
        .map(|r| {
            let dest = r.get("destination").and_then(Value::as_str).unwrap_or_default();
            if !matches!(parse_prefix(dest), Some((IpAddr::V4(_), _))) {
                return Err(invalid_attr("host_routes", format!("'{dest}' is not a valid IPv4 CIDR")));
            }
            let hop = parse_ipv4("host_routes", r.get("nexthop").unwrap_or(&Value::Null))?;
            Ok(HostRoute { destination: dest.to_string(), nexthop: hop.to_string() })
        })
        .collect()
}

/// Checks a subnet create request and makes it a [`NewSubnet`] (the network is checked by
/// the caller).
pub fn new_subnet(obj: &Map<String, Value>, project_id: String) -> ApiResult<NewSubnet> {
    match obj.get("ip_version") {
        None => {}
        Some(v) if v == &json!(4) || v == &json!("4") => {}
        Some(v) if v == &json!(6) || v == &json!("6") => {
            return Err(invalid("IPv6 subnets are not supported by novabox; use ip_version 4"))
        }
        Some(v) => return Err(invalid_attr("ip_version", format!("'{v}' is not in [4, 6]"))),
    }
    for k in ["ipv6_ra_mode", "ipv6_address_mode", "subnetpool_id"] {
        if obj.get(k).is_some_and(|v| !v.is_null()) {
            return Err(invalid(format!("{k} is not supported by novabox")));
        }
    }
    let network_id = get_str(obj, "network_id", 255)?.ok_or_else(|| {
        ApiError::bad_request("Failed to parse request. Required attribute 'network_id' not specified")
            .with_kind("HTTPBadRequest")
    })?;
    let cidr_text = get_str(obj, "cidr", 64)?.ok_or_else(|| {
        ApiError::bad_request(
            "Failed to parse request. Required attribute 'cidr' not specified; subnet pools are not supported",
        )
        .with_kind("HTTPBadRequest")
    })?;
    let cidr: Ipv4Cidr = cidr_text.parse().map_err(|e| invalid_attr("cidr", e))?;
    let usable = |ip: Ipv4Addr| cidr.contains(ip) && ip != cidr.network() && ip != cidr.broadcast();
    let gateway_ip = match obj.get("gateway_ip") {
        None => Some(cidr.gateway()),
        Some(Value::Null) => None,
        Some(v) => {
            let g = parse_ipv4("gateway_ip", v)?;
            if !usable(g) {
                return Err(invalid(format!("Gateway ip {g} is not valid on subnet {cidr}")));
            }
            Some(g)
        }
    };
    let allocation_pools = match obj.get("allocation_pools") {
        None | Some(Value::Null) => default_pools(&cidr, gateway_ip),
        Some(Value::Array(items)) => items
            .iter()
            .map(|p| {
                Ok(Pool {
                    start: parse_ipv4("allocation_pools", p.get("start").unwrap_or(&Value::Null))?,
                    end: parse_ipv4("allocation_pools", p.get("end").unwrap_or(&Value::Null))?,
                })
            })
            .collect::<ApiResult<Vec<Pool>>>()?,
        Some(v) => return Err(invalid_attr("allocation_pools", format!("'{v}' is not a list"))),
    };
    if let Err(m) = validate_pools(&cidr, gateway_ip, &allocation_pools) {
        return Err(if m.starts_with("Gateway ip") {
            ApiError::conflict(m).with_kind("GatewayConflictWithAllocationPools")
        } else {
            ApiError::bad_request(m).with_kind("InvalidAllocationPool")
        });
    }
    Ok(NewSubnet {
        network_id,
        project_id,
        name: get_name(obj, "name", 255)?.unwrap_or_default(),
        description: get_text(obj, "description", 255)?.unwrap_or_default(),
        cidr,
        gateway_ip,
        enable_dhcp: get_bool(obj, "enable_dhcp")?.unwrap_or(true),
        allocation_pools,
        dns_nameservers: obj.get("dns_nameservers").map(parse_dns).transpose()?.unwrap_or_default(),
        host_routes: obj.get("host_routes").map(parse_routes).transpose()?.unwrap_or_default(),
    })
}

async fn list_subnets(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let (nets, subnets) = state.db.with(|db| -> ApiResult<_> { Ok((db.networks()?, db.subnets()?)) })?;
    let items = subnets.iter().filter(|s| subnet_visible(&auth, s, &nets)).map(subnet_json).collect();
    let url = collection_url(&headers, &state, "subnets");
    Ok(Json(list_body("subnets", items, &pairs, &url, "SubnetNotFound")?))
}

fn load_subnet(db: &Db, auth: &Auth, id: &str) -> ApiResult<Subnet> {
    let nets = db.networks()?;
    db.subnet_by_id(id)?.filter(|s| subnet_visible(auth, s, &nets)).ok_or_else(|| subnet_not_found(id))
}

async fn show_subnet(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let s = state.db.with(|db| load_subnet(db, &auth, &id))?;
    Ok(Json(json!({"subnet": select_fields(subnet_json(&s), &pairs)})))
}

async fn create_subnet(State(state): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let obj = resource_body(&body, "subnet", SUBNET_ATTRS)?;
    let new = new_subnet(&obj, owner_project(&auth, &obj)?)?;
    let s = state.db.tx(|db| -> ApiResult<Subnet> {
        let net = load_network(db, &auth, &new.network_id)?;
        if !auth.owns(&net.project_id) {
            return Err(policy("create_subnet"));
        }
        quotas::ensure_room(db, &new.project_id, "subnet")?;
        db.create_subnet(&new).map_err(|e| match e {
            DbError::Conflict(m) => ApiError::bad_request(m).with_kind("InvalidInput"),
            other => other.into(),
        })
    })?;
    tracing::info!(subnet_id = %s.id, cidr = %s.cidr, "subnet created");
    Ok((StatusCode::CREATED, Json(json!({"subnet": subnet_json(&s)}))).into_response())
}

async fn update_subnet(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let mut allowed = SUBNET_ATTRS.to_vec();
    allowed.push("id");
    let obj = resource_body(&body, "subnet", &allowed)?;
    read_only(&obj, &["id", "network_id", "cidr", "ip_version", "project_id", "tenant_id", "subnetpool_id"])?;
    if let Some(k) =
        ["gateway_ip", "allocation_pools", "ipv6_ra_mode", "ipv6_address_mode"].iter().find(|k| obj.contains_key(**k))
    {
        return Err(invalid(format!("updating {k} is not supported by novabox; create a new subnet")));
    }
    let s = state.db.tx(|db| -> ApiResult<Subnet> {
        let mut s = load_subnet(db, &auth, &id)?;
        if !auth.owns(&s.project_id) {
            return Err(policy("update_subnet"));
        }
        if let Some(n) = get_name(&obj, "name", 255)? {
            s.name = n;
        }
        if let Some(d) = get_text(&obj, "description", 255)? {
            s.description = d;
        }
        if let Some(b) = get_bool(&obj, "enable_dhcp")? {
            s.enable_dhcp = b;
        }
        if let Some(v) = obj.get("dns_nameservers") {
            s.dns_nameservers = parse_dns(v)?;
        }
        if let Some(v) = obj.get("host_routes") {
            s.host_routes = parse_routes(v)?;
        }
        Ok(db.save_subnet(&s)?)
    })?;
    Ok(Json(json!({"subnet": subnet_json(&s)})))
}

async fn delete_subnet(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.db.tx(|db| -> ApiResult<()> {
        let s = load_subnet(db, &auth, &id)?;
        if !auth.owns(&s.project_id) {
            return Err(policy("delete_subnet"));
        }
        db.delete_subnet(&id).map_err(|e| match e {
            DbError::Conflict(m) => ApiError::conflict(m).with_kind("SubnetInUse"),
            other => other.into(),
        })
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Ports

fn port_json(p: &Port, admin: bool) -> Value {
    let mut v = json!({
        "id": p.id,
        "name": p.name,
        "description": p.description,
        "network_id": p.network_id,
        "project_id": p.project_id,
        "tenant_id": p.project_id,
        "mac_address": p.mac_address,
        "admin_state_up": p.admin_state_up,
        "status": p.status,
        "device_id": p.device_id,
        "device_owner": p.device_owner,
        "fixed_ips": p.fixed_ips.iter().map(|f| json!({"subnet_id": f.subnet_id, "ip_address": f.ip_address.to_string()})).collect::<Vec<_>>(),
        "security_groups": p.security_groups,
        "port_security_enabled": p.port_security_enabled,
        "binding:vnic_type": "normal",
        "tags": [],
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "revision_number": p.revision_number,
    });
    // neutron shows the binding details to admins only (nova reads them as admin).
    if admin {
        let bound = p.binding_host.as_deref().is_some_and(|h| !h.is_empty());
        v["binding:host_id"] = json!(p.binding_host.clone().unwrap_or_default());
        v["binding:vif_type"] = json!(if bound { "bridge" } else { "unbound" });
        v["binding:vif_details"] = if bound { json!({"port_filter": true}) } else { json!({}) };
        v["binding:profile"] = json!({});
    }
    v
}

const PORT_ATTRS: &[&str] = &[
    "network_id",
    "name",
    "description",
    "admin_state_up",
    "mac_address",
    "fixed_ips",
    "device_id",
    "device_owner",
    "security_groups",
    "port_security_enabled",
    "project_id",
    "tenant_id",
    "binding:host_id",
    "binding:vnic_type",
    "binding:profile",
];

fn parse_fixed_ips(v: &Value) -> ApiResult<Vec<FixedIpRequest>> {
    let arr = v.as_array().ok_or_else(|| invalid_attr("fixed_ips", format!("'{v}' is not a list")))?;
    arr.iter()
        .map(|item| {
            let subnet_id = item.get("subnet_id").and_then(Value::as_str).map(str::to_string);
            let ip_address = item.get("ip_address").map(|ip| parse_ipv4("fixed_ips", ip)).transpose()?;
            if subnet_id.is_none() && ip_address.is_none() {
                return Err(invalid_attr("fixed_ips", "each entry needs a subnet_id or an ip_address"));
            }
            Ok(FixedIpRequest { subnet_id, ip_address })
        })
        .collect()
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The groups a port of `project_id` gets: the ones named (each must exist and be the
/// project's), or the project's `default` group.
fn resolve_groups(db: &Db, auth: &Auth, project_id: &str, named: Option<&Value>) -> ApiResult<Vec<String>> {
    let Some(v) = named else {
        return Ok(vec![db.ensure_default_security_group(project_id)?]);
    };
    let arr = v.as_array().ok_or_else(|| invalid_attr("security_groups", format!("'{v}' is not a list")))?;
    let mut out: Vec<String> = Vec::new();
    for g in arr {
        let id = g.as_str().ok_or_else(|| invalid_attr("security_groups", format!("'{g}' is not a valid UUID")))?;
        let group = db.security_group_by_id(id)?.filter(|sg| sg.project_id == project_id || auth.is_admin());
        let group = group.ok_or_else(|| group_not_found(id))?;
        if !out.contains(&group.id) {
            out.push(group.id);
        }
    }
    Ok(out)
}

/// neutron's attribute rules for a port body (`create_port:<attr>`, `update_port:<attr>`),
/// asked of the policy table with the owner of the port's network as the target: a chosen
/// address or MAC, port security and the network's own device owners belong to the
/// network's owner (and admins), the binding host to admins. Attributes that are absent
/// need nothing, as in neutron, whatever their value would default to.
fn authorize_port_attrs(auth: &Auth, obj: &Map<String, Value>, net: &Network, updating: bool) -> ApiResult<()> {
    use crate::policy::Action::*;
    let target = crate::policy::Target { network_project_id: Some(&net.project_id), ..Default::default() };
    let chosen_ip = obj
        .get("fixed_ips")
        .and_then(Value::as_array)
        .is_some_and(|ips| ips.iter().any(|f| f.get("ip_address").is_some_and(|ip| !ip.is_null())));
    let network_device = obj.get("device_owner").and_then(Value::as_str).is_some_and(|o| o.starts_with("network:"));
    let asked = [
        (chosen_ip, NetworkPortFixedIps, NetworkPortUpdateFixedIps),
        (obj.contains_key("mac_address"), NetworkPortMacAddress, NetworkPortUpdateMacAddress),
        (obj.contains_key("port_security_enabled"), NetworkPortSecurity, NetworkPortUpdateSecurity),
        (network_device, NetworkPortDeviceOwner, NetworkPortUpdateDeviceOwner),
        (obj.contains_key("binding:host_id"), NetworkPortBinding, NetworkPortUpdateBinding),
    ];
    for (_, create, update) in asked.into_iter().filter(|(asked, _, _)| *asked) {
        auth.authorize(if updating { update } else { create }, &target)?;
    }
    Ok(())
}

/// A non-admin may point a port's `device_id` only at a server of the port's own project.
/// neutron checks this for routers (`DeviceIDNotOwnedByTenant`); for servers the metadata
/// service and the server's addresses trust the link, so novabox checks it for them too, with
/// neutron's answer.
fn check_device_id(db: &Db, auth: &Auth, device_id: &str, port_project: &str) -> ApiResult<()> {
    if auth.is_admin() || device_id.is_empty() {
        return Ok(());
    }
    match db.instance_by_uuid(device_id, true)? {
        Some(inst) if inst.project_id != port_project => Err(ApiError::conflict(format!(
            "The following device_id {device_id} is not owned by your tenant or matches another tenants router."
        ))
        .with_kind("DeviceIDNotOwnedByTenant")),
        _ => Ok(()),
    }
}

fn check_binding_attrs(obj: &Map<String, Value>) -> ApiResult<()> {
    if obj.get("binding:vnic_type").is_some_and(|v| v != "normal") {
        return Err(invalid_attr("binding:vnic_type", "only 'normal' is supported"));
    }
    if obj.get("binding:profile").is_some_and(|v| !v.is_null() && v != &json!({})) {
        return Err(invalid_attr("binding:profile", "novabox takes no binding profile"));
    }
    Ok(())
}

/// neutron's error types for what allocation can refuse.
fn allocation_error(e: DbError) -> ApiError {
    match e {
        DbError::Conflict(m) if m.contains("not a valid IP") => {
            ApiError::bad_request(m).with_kind("InvalidIpForSubnet")
        }
        DbError::Conflict(m) if m.contains("already allocated") => {
            ApiError::conflict(m).with_kind("IpAddressAlreadyAllocated")
        }
        DbError::Conflict(m) if m.contains("mac address") => ApiError::conflict(m).with_kind("MacAddressInUse"),
        DbError::NotFound(m) if m.starts_with("Subnet") => {
            ApiError::bad_request(format!("Invalid input for operation: {m}")).with_kind("InvalidInput")
        }
        DbError::NotFound(m) if m.starts_with("Security group") => {
            ApiError::not_found(m).with_kind("SecurityGroupNotFound")
        }
        other => other.into(),
    }
}

fn port_security_conflict() -> ApiError {
    ApiError::conflict(
        "Port has security group associated. Cannot disable port security or ip address until security group is removed",
    )
    .with_kind("PortSecurityPortHasSecurityGroup")
}

async fn list_ports(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let (nets, ports) = state.db.with(|db| -> ApiResult<_> { Ok((db.networks()?, db.ports()?)) })?;
    let items = ports.iter().filter(|p| port_visible(&auth, p, &nets)).map(|p| port_json(p, auth.is_admin())).collect();
    let url = collection_url(&headers, &state, "ports");
    Ok(Json(list_body("ports", items, &pairs, &url, "PortNotFound")?))
}

fn load_port(db: &Db, auth: &Auth, id: &str) -> ApiResult<Port> {
    let nets = db.networks()?;
    db.port_by_id(id)?.filter(|p| port_visible(auth, p, &nets)).ok_or_else(|| port_not_found(id))
}

async fn show_port(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let p = state.db.with(|db| load_port(db, &auth, &id))?;
    Ok(Json(json!({"port": select_fields(port_json(&p, auth.is_admin()), &pairs)})))
}

async fn create_port(State(state): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let obj = resource_body(&body, "port", PORT_ATTRS)?;
    check_binding_attrs(&obj)?;
    let project_id = owner_project(&auth, &obj)?;
    let network_id = get_str(&obj, "network_id", 255)?.ok_or_else(|| {
        ApiError::bad_request("Failed to parse request. Required attribute 'network_id' not specified")
            .with_kind("HTTPBadRequest")
    })?;
    let mac_address = get_str(&obj, "mac_address", 17)?;
    if let Some(m) = &mac_address {
        if !valid_mac(m) {
            return Err(invalid_attr("mac_address", format!("'{m}' is not a valid MAC address")));
        }
    }
    let fixed_ips = obj.get("fixed_ips").map(parse_fixed_ips).transpose()?.unwrap_or_default();
    let port_security = get_bool(&obj, "port_security_enabled")?;
    let p = state.db.tx(|db| -> ApiResult<Port> {
        let net = load_network(db, &auth, &network_id)?;
        authorize_port_attrs(&auth, &obj, &net, false)?;
        let device_id = get_str(&obj, "device_id", 255)?.unwrap_or_default();
        check_device_id(db, &auth, &device_id, &project_id)?;
        quotas::ensure_room(db, &project_id, "port")?;
        let security = port_security.unwrap_or(net.port_security_enabled);
        let groups = match (security, obj.get("security_groups")) {
            (false, Some(v)) if v.as_array().is_some_and(|a| !a.is_empty()) => return Err(port_security_conflict()),
            (false, _) => Vec::new(),
            (true, named) => resolve_groups(db, &auth, &project_id, named)?,
        };
        db.allocate_port(&NewPort {
            network_id: net.id.clone(),
            project_id: project_id.clone(),
            device_id,
            device_owner: get_str(&obj, "device_owner", 255)?.unwrap_or_default(),
            security_group_ids: groups,
            name: get_name(&obj, "name", 255)?.unwrap_or_default(),
            description: get_text(&obj, "description", 255)?.unwrap_or_default(),
            fixed_ips: fixed_ips.clone(),
            mac_address: mac_address.clone(),
            admin_state_up: get_bool(&obj, "admin_state_up")?,
            port_security_enabled: Some(security),
            binding_host: get_str(&obj, "binding:host_id", 255)?.filter(|h| !h.is_empty()),
        })
        .map_err(allocation_error)
    })?;
    tracing::info!(port_id = %p.id, network_id = %p.network_id, mac = %p.mac_address, "port created");
    push_security_groups(&state, &auth).await;
    Ok((StatusCode::CREATED, Json(json!({"port": port_json(&p, auth.is_admin())}))).into_response())
}

async fn update_port(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let mut allowed = PORT_ATTRS.to_vec();
    allowed.extend(["id", "status"]);
    let obj = resource_body(&body, "port", &allowed)?;
    read_only(&obj, &["id", "network_id", "project_id", "tenant_id", "status"])?;
    check_binding_attrs(&obj)?;
    let p = state.db.tx(|db| -> ApiResult<Port> {
        let mut p = load_port(db, &auth, &id)?;
        if !auth.owns(&p.project_id) {
            return Err(policy("update_port"));
        }
        let net = db.network_by_id(&p.network_id)?.ok_or_else(|| net_not_found(&p.network_id))?;
        authorize_port_attrs(&auth, &obj, &net, true)?;
        if let Some(k) = ["fixed_ips", "mac_address"].iter().find(|k| obj.contains_key(**k)) {
            return Err(invalid(format!("updating {k} is not supported by novabox; create a new port")));
        }
        if let Some(n) = get_name(&obj, "name", 255)? {
            p.name = n;
        }
        if let Some(d) = get_text(&obj, "description", 255)? {
            p.description = d;
        }
        if let Some(b) = get_bool(&obj, "admin_state_up")? {
            p.admin_state_up = b;
        }
        if let Some(d) = get_str(&obj, "device_id", 255)? {
            check_device_id(db, &auth, &d, &p.project_id)?;
            p.device_id = d;
        }
        if let Some(d) = get_str(&obj, "device_owner", 255)? {
            p.device_owner = d;
        }
        if let Some(h) = get_str(&obj, "binding:host_id", 255)? {
            p.binding_host = Some(h).filter(|h| !h.is_empty());
        }
        if let Some(v) = obj.get("security_groups") {
            p.security_groups = resolve_groups(db, &auth, &p.project_id, Some(v))?;
        }
        if let Some(b) = get_bool(&obj, "port_security_enabled")? {
            p.port_security_enabled = b;
        }
        if !p.port_security_enabled && !p.security_groups.is_empty() {
            return Err(port_security_conflict());
        }
        db.save_port(&p).map_err(allocation_error)
    })?;
    push_security_groups(&state, &auth).await;
    Ok(Json(json!({"port": port_json(&p, auth.is_admin())})))
}

async fn delete_port(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.db.tx(|db| -> ApiResult<()> {
        let p = load_port(db, &auth, &id)?;
        if !auth.owns(&p.project_id) {
            return Err(policy("delete_port"));
        }
        Ok(db.delete_port(&id)?)
    })?;
    push_security_groups(&state, &auth).await;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Security groups

/// Tells the compute hosts about a change to rules, a port's groups or a group's members,
/// so it takes effect on running guests without a restart.
pub(crate) async fn push_security_groups(state: &AppState, auth: &Auth) {
    crate::conductor::network::push_security_groups(&state.db, &state.compute_api(), &auth.context).await;
}

fn rule_json(r: &SecurityGroupRule) -> Value {
    json!({
        "id": r.id,
        "security_group_id": r.security_group_id,
        "project_id": r.project_id,
        "tenant_id": r.project_id,
        "direction": r.direction,
        "ethertype": r.ethertype,
        "protocol": r.protocol,
        "port_range_min": r.port_range_min,
        "port_range_max": r.port_range_max,
        "remote_ip_prefix": r.remote_ip_prefix,
        "remote_group_id": r.remote_group_id,
        "description": r.description,
        "tags": [],
        "created_at": r.created_at,
        "updated_at": r.created_at,
        "revision_number": 0,
    })
}

fn group_json(g: &SecurityGroup) -> Value {
    json!({
        "id": g.id,
        "name": g.name,
        "description": g.description,
        "project_id": g.project_id,
        "tenant_id": g.project_id,
        "security_group_rules": g.rules.iter().map(rule_json).collect::<Vec<_>>(),
        "tags": [],
        "created_at": g.created_at,
        "updated_at": g.updated_at,
        "revision_number": g.revision_number,
    })
}

fn load_group(db: &Db, auth: &Auth, id: &str) -> ApiResult<SecurityGroup> {
    db.security_group_by_id(id)?.filter(|g| auth.owns(&g.project_id)).ok_or_else(|| group_not_found(id))
}

async fn list_groups(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let groups = state.db.with(|db| -> ApiResult<_> {
        // Every project has a `default` group from the first time it looks.
        db.ensure_default_security_group(auth.project_id())?;
        Ok(db.security_groups()?)
    })?;
    let items = groups.iter().filter(|g| auth.owns(&g.project_id)).map(group_json).collect();
    let url = collection_url(&headers, &state, "security-groups");
    Ok(Json(list_body("security_groups", items, &pairs, &url, "SecurityGroupNotFound")?))
}

async fn show_group(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let g = state.db.with(|db| load_group(db, &auth, &id))?;
    Ok(Json(json!({"security_group": select_fields(group_json(&g), &pairs)})))
}

async fn create_group(State(state): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let obj = resource_body(&body, "security_group", &["name", "description", "project_id", "tenant_id"])?;
    let project_id = owner_project(&auth, &obj)?;
    let name = get_text(&obj, "name", 255)?.unwrap_or_default();
    let description = get_text(&obj, "description", 255)?.unwrap_or_default();
    if name == DEFAULT_SECURITY_GROUP {
        return Err(
            ApiError::conflict("Default security group already exists.").with_kind("SecurityGroupDefaultAlreadyExists")
        );
    }
    let g = state.db.tx(|db| -> ApiResult<SecurityGroup> {
        db.ensure_default_security_group(&project_id)?;
        quotas::ensure_room(db, &project_id, "security_group")?;
        Ok(db.create_security_group(&project_id, &name, &description)?)
    })?;
    Ok((StatusCode::CREATED, Json(json!({"security_group": group_json(&g)}))).into_response())
}

async fn update_group(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let obj = resource_body(&body, "security_group", &["name", "description", "id", "project_id", "tenant_id"])?;
    read_only(&obj, &["id", "project_id", "tenant_id"])?;
    let g = state.db.tx(|db| -> ApiResult<SecurityGroup> {
        let mut g = load_group(db, &auth, &id)?;
        if let Some(n) = get_text(&obj, "name", 255)? {
            if g.name == DEFAULT_SECURITY_GROUP && n != g.name {
                return Err(ApiError::conflict("Updating default security group not allowed.")
                    .with_kind("SecurityGroupCannotUpdateDefault"));
            }
            if n == DEFAULT_SECURITY_GROUP && g.name != n {
                return Err(ApiError::conflict("Default security group already exists.")
                    .with_kind("SecurityGroupDefaultAlreadyExists"));
            }
            g.name = n;
        }
        if let Some(d) = get_text(&obj, "description", 255)? {
            g.description = d;
        }
        Ok(db.save_security_group(&g)?)
    })?;
    Ok(Json(json!({"security_group": group_json(&g)})))
}

async fn delete_group(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.db.tx(|db| -> ApiResult<()> {
        let g = load_group(db, &auth, &id)?;
        // As neutron: only an admin may remove a project's default group.
        if g.name == DEFAULT_SECURITY_GROUP && !auth.is_admin() {
            return Err(ApiError::conflict("Insufficient rights for removing default security group.")
                .with_kind("SecurityGroupCannotRemoveDefault"));
        }
        db.delete_security_group(&id).map_err(|e| match e {
            DbError::Conflict(m) => ApiError::conflict(m).with_kind("SecurityGroupInUse"),
            other => other.into(),
        })
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Security group rules

const PORT_PROTOCOLS: &[&str] = &["tcp", "udp", "dccp", "sctp", "udplite", "6", "17", "33", "132", "136"];
const ICMP_PROTOCOLS: &[&str] = &["icmp", "icmpv6", "ipv6-icmp", "1", "58"];
const PROTOCOL_NAMES: &[&str] = &[
    "ah",
    "dccp",
    "egp",
    "esp",
    "gre",
    "icmp",
    "icmpv6",
    "igmp",
    "ipip",
    "ipv6-encap",
    "ipv6-frag",
    "ipv6-icmp",
    "ipv6-nonxt",
    "ipv6-opts",
    "ipv6-route",
    "ospf",
    "pgm",
    "rsvp",
    "sctp",
    "tcp",
    "udp",
    "udplite",
    "vrrp",
];

const RULE_ATTRS: &[&str] = &[
    "security_group_id",
    "direction",
    "ethertype",
    "protocol",
    "port_range_min",
    "port_range_max",
    "remote_ip_prefix",
    "remote_group_id",
    "description",
    "project_id",
    "tenant_id",
];

fn rule_error(kind: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message).with_kind(kind)
}

/// Checks a rule as neutron does (direction, ethertype, protocol, port or ICMP type/code
/// ranges, remote prefix or group) and returns it ready to store. Whether the groups exist
/// is the caller's to check.
pub fn validate_rule(obj: &Map<String, Value>, project_id: &str) -> ApiResult<SecurityGroupRule> {
    let security_group_id = get_str(obj, "security_group_id", 255)?.ok_or_else(|| {
        ApiError::bad_request("Failed to parse request. Required attribute 'security_group_id' not specified")
            .with_kind("HTTPBadRequest")
    })?;
    let direction = get_str(obj, "direction", 16)?.ok_or_else(|| {
        ApiError::bad_request("Failed to parse request. Required attribute 'direction' not specified")
            .with_kind("HTTPBadRequest")
    })?;
    if direction != "ingress" && direction != "egress" {
        return Err(invalid_attr("direction", format!("{direction} is not in valid_values ['ingress', 'egress']")));
    }
    let ethertype = match get_str(obj, "ethertype", 16)?.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("ipv4") => "IPv4",
        Some("ipv6") => "IPv6",
        Some(other) => {
            return Err(invalid_attr("ethertype", format!("{other} is not in valid_values ['IPv4', 'IPv6']")))
        }
    };
    let protocol = match obj.get("protocol") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 255) => Some(n.to_string()),
        Some(Value::String(s)) => {
            let s = s.to_ascii_lowercase();
            if s == "any" {
                None
            } else if PROTOCOL_NAMES.contains(&s.as_str()) || s.parse::<u8>().is_ok() {
                Some(s)
            } else {
                return Err(rule_error(
                    "SecurityGroupRuleInvalidProtocol",
                    format!(
                        "Security group rule protocol {s} not supported. Only protocol values {PROTOCOL_NAMES:?} and \
                         integer representations [0 to 255] are supported."
                    ),
                ));
            }
        }
        Some(v) => {
            return Err(rule_error(
                "SecurityGroupRuleInvalidProtocol",
                format!("Security group rule protocol {v} not supported."),
            ))
        }
    };
    let min = get_int(obj, "port_range_min")?;
    let max = get_int(obj, "port_range_max")?;
    match protocol.as_deref() {
        _ if min.is_none() && max.is_none() => {}
        None => {
            return Err(rule_error(
                "SecurityGroupProtocolRequiredWithPorts",
                "Must also specify protocol if port range is given.",
            ))
        }
        Some(p) if PORT_PROTOCOLS.contains(&p) => {
            for port in [min, max].into_iter().flatten() {
                if !(1..=65535).contains(&port) {
                    return Err(rule_error("SecurityGroupInvalidPortValue", format!("Invalid value for port {port}.")));
                }
            }
            if let (Some(a), Some(b)) = (min, max) {
                if a > b {
                    return Err(rule_error(
                        "SecurityGroupInvalidPortRange",
                        "For TCP/UDP protocols, port_range_min must be <= port_range_max",
                    ));
                }
            }
        }
        Some(p) if ICMP_PROTOCOLS.contains(&p) => {
            if min.is_none() {
                return Err(rule_error(
                    "SecurityGroupMissingIcmpType",
                    format!(
                        "ICMP code (port-range-max) {} is provided but ICMP type (port-range-min) is missing.",
                        max.unwrap_or_default()
                    ),
                ));
            }
            for (field, attr, value) in [("type", "port_range_min", min), ("code", "port_range_max", max)] {
                if let Some(v) = value.filter(|v| !(0..=255).contains(v)) {
                    return Err(rule_error(
                        "SecurityGroupInvalidIcmpValue",
                        format!("Invalid value for ICMP {field} ({attr}) {v}. It must be 0 to 255."),
                    ));
                }
            }
        }
        Some(p) => {
            return Err(rule_error(
                "SecurityGroupInvalidProtocolForPortRange",
                format!("Invalid protocol {p} for port range, only supported for TCP, UDP, UDPLITE, SCTP and DCCP."),
            ))
        }
    }
    let remote_ip_prefix = match get_str(obj, "remote_ip_prefix", 64)? {
        None => None,
        Some(p) => {
            let with_len = if p.contains('/') {
                p.clone()
            } else if p.contains(':') {
                format!("{p}/128")
            } else {
                format!("{p}/32")
            };
            let (addr, _) = parse_prefix(&with_len)
                .ok_or_else(|| invalid_attr("remote_ip_prefix", format!("'{p}' is not a valid CIDR")))?;
            if addr.is_ipv4() != (ethertype == "IPv4") {
                return Err(rule_error(
                    "SecurityGroupRuleParameterConflict",
                    format!("Conflicting value ethertype {ethertype} for CIDR {p}"),
                ));
            }
            Some(with_len)
        }
    };
    let remote_group_id = get_str(obj, "remote_group_id", 255)?;
    if remote_ip_prefix.is_some() && remote_group_id.is_some() {
        return Err(rule_error(
            "SecurityGroupRemoteGroupAndRemoteIpPrefix",
            "Only remote_ip_prefix or remote_group_id may be provided.",
        ));
    }
    Ok(SecurityGroupRule {
        id: String::new(),
        security_group_id,
        project_id: project_id.to_string(),
        direction,
        ethertype: ethertype.to_string(),
        protocol,
        port_range_min: min,
        port_range_max: max,
        remote_ip_prefix,
        remote_group_id,
        description: get_text(obj, "description", 255)?.unwrap_or_default(),
        created_at: String::new(),
    })
}

async fn list_rules(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let groups = state.db.with(|db| -> ApiResult<_> {
        db.ensure_default_security_group(auth.project_id())?;
        Ok(db.security_groups()?)
    })?;
    let items =
        groups.iter().filter(|g| auth.owns(&g.project_id)).flat_map(|g| g.rules.iter().map(rule_json)).collect();
    let url = collection_url(&headers, &state, "security-group-rules");
    Ok(Json(list_body("security_group_rules", items, &pairs, &url, "SecurityGroupRuleNotFound")?))
}

fn load_rule(db: &Db, auth: &Auth, id: &str) -> ApiResult<SecurityGroupRule> {
    db.security_group_rule_by_id(id)?.filter(|r| auth.owns(&r.project_id)).ok_or_else(|| rule_not_found(id))
}

async fn show_rule(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let r = state.db.with(|db| load_rule(db, &auth, &id))?;
    Ok(Json(json!({"security_group_rule": select_fields(rule_json(&r), &pairs)})))
}

async fn create_rule(State(state): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let obj = resource_body(&body, "security_group_rule", RULE_ATTRS)?;
    let rule = state.db.tx(|db| -> ApiResult<SecurityGroupRule> {
        let group_id = get_str(&obj, "security_group_id", 255)?.unwrap_or_default();
        // The rule belongs to the group's project, whoever (an admin) creates it.
        let group = db.security_group_by_id(&group_id)?.filter(|g| auth.owns(&g.project_id));
        let project = group.as_ref().map(|g| g.project_id.clone()).unwrap_or_else(|| auth.project_id().to_string());
        let rule = validate_rule(&obj, &project)?;
        if group.is_none() {
            return Err(group_not_found(&rule.security_group_id));
        }
        quotas::ensure_room(db, &project, "security_group_rule")?;
        if let Some(remote) = &rule.remote_group_id {
            load_group(db, &auth, remote)?;
        }
        db.create_security_group_rule(&rule).map_err(|e| match e {
            DbError::Conflict(m) => ApiError::conflict(m).with_kind("SecurityGroupRuleExists"),
            other => other.into(),
        })
    })?;
    push_security_groups(&state, &auth).await;
    Ok((StatusCode::CREATED, Json(json!({"security_group_rule": rule_json(&rule)}))).into_response())
}

async fn delete_rule(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.db.tx(|db| -> ApiResult<()> {
        load_rule(db, &auth, &id)?;
        Ok(db.delete_security_group_rule(&id)?)
    })?;
    push_security_groups(&state, &auth).await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests;
