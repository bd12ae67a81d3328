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
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::context::Auth;
use super::fault::{ApiError, ApiResult};
use super::listing::{self, Dialect, Direction, Params};
use super::{base_url, AppState};
use crate::cidr::Ipv4Cidr;
use crate::db::network::{
    FixedIpRequest, HostRoute, Network, NewPort, NewSubnet, Port, SecurityGroup, SecurityGroupRule, Subnet,
    DEFAULT_SECURITY_GROUP,
};
use crate::db::Db;
use crate::network::ipam::{default_pools, validate_pools, Pool};
use crate::network::NetworkError;

mod errors;

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
        // Issue 19: routers and floating IPs.
        .route("/v2.0/routers", get(list_routers).post(create_router))
        .route("/v2.0/routers/{id}", get(show_router).put(update_router).delete(delete_router))
        .route("/v2.0/routers/{id}/add_router_interface", put(add_router_interface))
        .route("/v2.0/routers/{id}/remove_router_interface", put(remove_router_interface))
        .route("/v2.0/floatingips", get(list_floating_ips).post(create_floating_ip))
        .route("/v2.0/floatingips/{id}", get(show_floating_ip).put(update_floating_ip).delete(delete_floating_ip))
        .route("/v2.0/quotas", get(quotas::list))
        .route("/v2.0/quotas/project", get(quotas::own_project))
        .route("/v2.0/quotas/tenant", get(quotas::own_tenant))
        .route("/v2.0/quotas/{id}", get(quotas::show).put(quotas::update).delete(quotas::delete))
        .route("/v2.0/quotas/{id}/default", get(quotas::defaults))
        .route("/v2.0/quotas/{id}/details", get(quotas::details))
}

mod floating_ips;
mod ipv6_subnets;
mod networks;
mod ports;
mod provider;
mod quotas;
mod routers;
mod security_groups;
mod subnets;

use floating_ips::*;
use networks::*;
use ports::*;
use routers::*;
pub(crate) use security_groups::push_security_groups;
use security_groups::*;
use subnets::*;

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
    ("router", "routers"),
    ("floatingip", "floatingips"),
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
    // Issue 19: what tempest's and openstacksdk's L3 tests look for.
    (
        "router",
        "Neutron L3 Router",
        "Router abstraction for basic L3 forwarding between L2 Neutron networks and access to external networks via \
         a NAT gateway.",
    ),
    ("extraroute", "Neutron Extra Route", "Extra routes configuration for L3 router"),
    (
        "ext-gw-mode",
        "Neutron L3 Configurable external gateway mode",
        "Extension of the router abstraction for specifying whether SNAT should occur on the external gateway",
    ),
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
    NetworkError::NetworkNotFound(id.to_string()).into()
}
fn subnet_not_found(id: &str) -> ApiError {
    NetworkError::SubnetNotFound(id.to_string()).into()
}
fn port_not_found(id: &str) -> ApiError {
    NetworkError::PortNotFound(id.to_string()).into()
}
fn group_not_found(id: &str) -> ApiError {
    NetworkError::SecurityGroupNotFound(id.to_string()).into()
}
fn rule_not_found(id: &str) -> ApiError {
    NetworkError::SecurityGroupRuleNotFound(id.to_string()).into()
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

/// What a neutron list query holds besides filters: the listing's own and neutron's.
fn control_param(key: &str) -> bool {
    listing::CONTROL_PARAMS.contains(&key) || matches!(key, "fields" | "page_reverse")
}

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
            pairs.iter().filter(|(k, _)| !control_param(k)).all(|(k, _)| match item.get(k) {
                None => true,
                Some(value) => pairs.iter().filter(|(k2, _)| k2 == k).any(|(_, v)| matches_filter(value, v, k)),
            })
        })
        .collect();

    let params = Params(pairs.to_vec());
    let sort = listing::sort_names(&params, Dialect::Neutron, Direction::Asc)?;
    let paging = listing::paging(&params, Dialect::Neutron)?;
    // Any attribute of the resource is a sort key; one the rows lack is neutron's 400.
    if let Some((k, _)) = sort.iter().find(|(k, _)| items.first().is_some_and(|i| i.get(k).is_none())) {
        return Err(Dialect::Neutron.bad_sort_key(k, &[]));
    }
    let sort: Vec<(&str, Direction)> = sort.iter().map(|(k, d)| (k.as_str(), *d)).collect();
    items.sort_by(|a, b| listing::compare_by(a, b, &sort, |a, b, k| json_cmp(a.get(k), b.get(k))));
    let id = |i: &Value| i.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut page = listing::page_by_id(
        items,
        &paging,
        |i| i.get("id").and_then(Value::as_str).unwrap_or(""),
        |m| Dialect::Neutron.marker_not_found("", m).with_kind(not_found_kind),
    )?;
    let last = page.items.last().map(id);

    let fields: Vec<&str> = pairs.iter().filter(|(k, _)| k == "fields").map(|(_, v)| v.as_str()).collect();
    if !fields.is_empty() {
        for item in &mut page.items {
            if let Value::Object(m) = item {
                m.retain(|k, _| fields.contains(&k.as_str()));
            }
        }
    }
    let mut body = json!({ collection: page.items });
    listing::add_next_link(&mut body, Dialect::Neutron, collection, url, &params, page.end, last.as_deref());
    Ok(body)
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

#[cfg(test)]
mod l3_tests;
#[cfg(test)]
mod tests;
