//! The server list: `GET /servers` and `GET /servers/detail` with nova's filters, sorting and
//! paging (nova's `servers.py` `_get_servers` and its query schemas), through the one
//! listing model.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::microversion::Microversion;
use super::servers::{server_view, view_data, ViewData};
use super::{links, validation};
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::listing::{self, Dialect, Direction, ListSpec, PageEnd, Params};
use crate::api::{base_url, AppState};
use crate::compute::states::{self, VmState};
use crate::db::instances::{Instance, InstanceExact, InstanceFilter, InstanceSortKey, InstanceText, TagFilter};
use crate::policy::{Action, Target};

/// The query parameters nova's schema knows, with the microversion that brought each.
const SCHEMA_PARAMS: &[(&str, u32)] = &[
    ("user_id", 1),
    ("project_id", 1),
    ("tenant_id", 1),
    ("launch_index", 1),
    ("image_ref", 1),
    ("image", 1),
    ("kernel_id", 1),
    ("ramdisk_id", 1),
    ("hostname", 1),
    ("key_name", 1),
    ("power_state", 1),
    ("vm_state", 1),
    ("task_state", 1),
    ("host", 1),
    ("node", 1),
    ("flavor", 1),
    ("reservation_id", 1),
    ("launched_at", 1),
    ("terminated_at", 1),
    ("availability_zone", 1),
    ("name", 1),
    ("display_name", 1),
    ("description", 1),
    ("display_description", 1),
    ("locked_by", 1),
    ("uuid", 1),
    ("root_device_name", 1),
    ("config_drive", 1),
    ("access_ip_v4", 1),
    ("access_ip_v6", 1),
    ("auto_disk_config", 1),
    ("progress", 1),
    ("sort_key", 1),
    ("sort_dir", 1),
    ("all_tenants", 1),
    ("soft_deleted", 1),
    ("deleted", 1),
    ("status", 1),
    ("changes-since", 1),
    ("ip", 1),
    ("ip6", 1),
    ("created_at", 1),
    ("limit", 1),
    ("marker", 1),
    ("tags", 26),
    ("tags-any", 26),
    ("not-tags", 26),
    ("not-tags-any", 26),
    ("changes-before", 66),
    ("locked", 73),
];

/// Filters of other tables: nova's schema names them so that it can refuse them (400).
const JOINED_TABLE_PARAMS: &[&str] = &[
    "block_device_mapping",
    "services",
    "metadata",
    "system_metadata",
    "info_cache",
    "security_groups",
    "pci_devices",
];

/// The filters nova gives every user (`_get_server_search_options`), with the microversion
/// that brought each; the rest of the schema is for those the policy allows all filters.
const USER_FILTERS: &[(&str, u32)] = &[
    ("reservation_id", 1),
    ("name", 1),
    ("status", 1),
    ("image", 1),
    ("flavor", 1),
    ("ip", 1),
    ("changes-since", 1),
    ("all_tenants", 1),
    ("ip6", 5),
    ("tags", 26),
    ("tags-any", 26),
    ("not-tags", 26),
    ("not-tags-any", 26),
    ("changes-before", 66),
    ("locked", 73),
    ("availability_zone", 83),
    ("config_drive", 83),
    ("key_name", 83),
    ("created_at", 83),
    ("launched_at", 83),
    ("terminated_at", 83),
    ("power_state", 83),
    ("task_state", 83),
    ("vm_state", 83),
    ("progress", 83),
    ("user_id", 83),
];

/// Sort keys nova's schema took before 2.75 and then ignores (`SERVER_LIST_IGNORE_SORT_KEY`).
const IGNORED_SORT_KEYS: &[&str] = &[
    "architecture",
    "cell_name",
    "cleaned",
    "default_ephemeral_device",
    "default_swap_device",
    "deleted",
    "deleted_at",
    "disable_terminate",
    "ephemeral_gb",
    "ephemeral_key_uuid",
    "id",
    "key_data",
    "launched_on",
    "locked",
    "memory_mb",
    "os_type",
    "reservation_id",
    "root_gb",
    "shutdown_terminate",
    "user_data",
    "vcpus",
    "vm_mode",
];

/// Regex filters: the query parameter and what it matches.
const TEXT_FILTERS: &[(&str, InstanceText)] = &[
    ("name", InstanceText::DisplayName),
    ("display_name", InstanceText::DisplayName),
    ("description", InstanceText::DisplayDescription),
    ("display_description", InstanceText::DisplayDescription),
    ("hostname", InstanceText::Hostname),
    ("key_name", InstanceText::KeyName),
    ("node", InstanceText::Node),
    ("availability_zone", InstanceText::AvailabilityZone),
    ("config_drive", InstanceText::ConfigDrive),
    ("created_at", InstanceText::CreatedAt),
    ("launched_at", InstanceText::LaunchedAt),
    ("terminated_at", InstanceText::TerminatedAt),
    ("kernel_id", InstanceText::KernelId),
    ("ramdisk_id", InstanceText::RamdiskId),
    ("access_ip_v4", InstanceText::AccessIpV4),
    ("access_ip_v6", InstanceText::AccessIpV6),
    ("power_state", InstanceText::PowerState),
    ("progress", InstanceText::Progress),
    ("reservation_id", InstanceText::ReservationId),
    ("launch_index", InstanceText::LaunchIndex),
    ("root_device_name", InstanceText::RootDeviceName),
    ("auto_disk_config", InstanceText::AutoDiskConfig),
];

/// Filters that must equal one of their values (several values of one parameter).
const EXACT_FILTERS: &[(&str, InstanceExact)] = &[
    ("user_id", InstanceExact::UserId),
    ("image", InstanceExact::ImageRef),
    ("image_ref", InstanceExact::ImageRef),
    ("vm_state", InstanceExact::VmState),
    ("task_state", InstanceExact::TaskState),
    ("uuid", InstanceExact::Uuid),
    ("flavor", InstanceExact::FlavorId),
];

fn in_schema(key: &str, v: Microversion) -> bool {
    SCHEMA_PARAMS.iter().any(|(k, since)| *k == key && v.at_least(*since)) || JOINED_TABLE_PARAMS.contains(&key)
}

/// `value` as Python's `strutils.bool_from_string(strict=True)` reads it.
fn strict_bool(value: &str) -> ApiResult<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "on" | "y" | "yes" => Ok(true),
        "0" | "f" | "false" | "off" | "n" | "no" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "Invalid input received: Unrecognized value '{value}', acceptable values are: '0', '1', 'f', 'false', \
             'n', 'no', 'off', 'on', 't', 'true', 'y', 'yes'"
        ))),
    }
}

/// True unless the value is one of the words for false (nova's lenient reading).
fn truthy(value: &str) -> bool {
    !matches!(value.to_ascii_lowercase().as_str(), "0" | "f" | "false" | "n" | "no" | "off")
}

fn regex_param(key: &str, pattern: &str) -> ApiResult<String> {
    match regex::RegexBuilder::new(pattern).size_limit(1 << 20).build() {
        Ok(_) => Ok(pattern.to_string()),
        Err(e) => {
            Err(ApiError::bad_request(format!("Invalid regular expression in the {key} filter {pattern:?}: {e}")))
        }
    }
}

/// The sort of a request: nova's pairing of keys and directions, the keys it ignores before
/// 2.75, and `host`/`node` for admins only.
fn sort_of(params: &Params, v: Microversion, is_admin: bool) -> ApiResult<Vec<(InstanceSortKey, Direction)>> {
    let mut names = listing::sort_names(params, Dialect::Nova, Direction::Desc)?;
    let ignored = |k: &str| IGNORED_SORT_KEYS.contains(&k) && !(k == "locked" && v.at_least(73));
    if !v.at_least(75) {
        names.retain(|(k, _)| !ignored(k));
    }
    if let Some((k, _)) = names.iter().find(|(k, _)| (k == "host" || k == "node") && !is_admin) {
        return Err(ApiError::forbidden(format!("Only administrators can sort servers by {k}")));
    }
    let valid = |k: &str| (k != "locked" || v.at_least(73)) && k != "id";
    if let Some((k, _)) = names.iter().find(|(k, _)| !valid(k) || ignored(k)) {
        let allowed: Vec<&str> = <InstanceSortKey as listing::SortColumn>::ALL
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| valid(n) && !(v.at_least(75) && ignored(n)))
            .collect();
        return Err(Dialect::Nova.bad_sort_key(k, &allowed));
    }
    listing::typed_sort(names, Dialect::Nova)
}

/// The instance filter of a request, as nova builds its search options.
pub(super) fn filter_of(params: &Params, auth: &Auth, v: Microversion) -> ApiResult<InstanceFilter> {
    // From 2.75 the schema refuses what it does not know; before, nova strips it.
    if v.at_least(75) {
        if let Some(k) = params.keys().find(|k| !in_schema(k, v)) {
            return Err(ApiError::bad_request(format!("Additional properties are not allowed ('{k}' was unexpected)")));
        }
    }
    let all_filters = auth.authorize(Action::ComputeServersAllFilters, &Target::default()).is_ok();
    let allowed = |k: &str| {
        listing::CONTROL_PARAMS.contains(&k)
            || (all_filters && in_schema(k, v))
            || USER_FILTERS.iter().any(|(f, since)| *f == k && v.at_least(*since))
    };
    let kept = Params(params.0.iter().filter(|(k, _)| allowed(k)).cloned().collect());
    let joined: Vec<&str> = kept.keys().filter(|k| JOINED_TABLE_PARAMS.contains(k)).collect();
    if !joined.is_empty() {
        return Err(ApiError::bad_request(format!("Invalid filter field: {}.", joined.join(", "))));
    }

    let mut f = InstanceFilter::default();
    let statuses = kept.all("status");
    if !statuses.is_empty() {
        let mut vm_states: Vec<VmState> = Vec::new();
        for s in &statuses {
            let found = states::vm_states_for_status(s).unwrap_or_default();
            vm_states.extend(found.iter().filter(|st| !vm_states.contains(st)).collect::<Vec<_>>());
        }
        // nova skips the statuses it does not know; when none is known it lists nothing
        // before 2.38 and answers 400 from 2.38.
        if vm_states.is_empty() && v.at_least(38) {
            return Err(ApiError::bad_request(format!("Invalid status value: {}", statuses.join(","))));
        }
        if vm_states == [VmState::Deleted] {
            if !auth.is_admin() {
                return Err(ApiError::forbidden("Only administrators may list deleted instances"));
            }
            f.only_deleted = true;
        }
        f.vm_states = Some(vm_states);
    }
    // Before 2.66 `changes-before` is not a filter (and was stripped above).
    let (since, before) = validation::changes_window(kept.last("changes-since"), kept.last("changes-before"))?;
    match kept.last("deleted") {
        Some(d) if truthy(d) => f.only_deleted = true,
        Some(_) => {}
        // Recently deleted servers are among the changes.
        None => f.include_deleted = since.is_some() || before.is_some(),
    }
    f.changes_since = since;
    f.changes_before = before;

    let all_tenants = kept.last("all_tenants").is_some_and(|a| a.is_empty() || truthy(a))
        && auth.authorize(Action::ComputeServersAllTenants, &Target::default()).is_ok();
    f.project_id = if all_tenants {
        kept.last("project_id").or(kept.last("tenant_id")).map(str::to_string)
    } else {
        Some(auth.project_id().to_string())
    };
    f.host = kept.last("host").map(str::to_string);
    for (key, field) in EXACT_FILTERS {
        let values = kept.all(key);
        if !values.is_empty() {
            f.exact.push((*field, values.into_iter().map(str::to_string).collect()));
        }
    }
    for (key, field) in TEXT_FILTERS {
        if let Some(pattern) = kept.last(key) {
            f.regex.push((*field, regex_param(key, pattern)?));
        }
    }
    f.ip = kept.last("ip").map(|p| regex_param("ip", p)).transpose()?;
    f.ip6 = kept.last("ip6").map(|p| regex_param("ip6", p)).transpose()?;
    if let Some(l) = kept.last("locked") {
        f.exact.push((InstanceExact::Locked, vec![if strict_bool(l)? { "1" } else { "0" }.to_string()]));
    }
    // nova splits each at commas, empty parts included (`tags=` asks for the tag "", which no
    // server can have).
    let tags = |key: &str| kept.last(key).map(|t| t.split(',').map(str::to_string).collect::<Vec<_>>());
    f.tags = TagFilter {
        all: tags("tags"),
        any: tags("tags-any"),
        not_all: tags("not-tags"),
        not_any: tags("not-tags-any"),
    };

    let paging = listing::paging(params, Dialect::Nova)?;
    f.page = ListSpec { sort: sort_of(&kept, v, auth.is_admin())?, limit: paging.limit, marker: paging.marker };
    Ok(f)
}

fn listed(
    state: &AppState,
    auth: &Auth,
    params: &Params,
    v: Microversion,
) -> ApiResult<(Vec<Instance>, Vec<ViewData>)> {
    let filter = filter_of(params, auth, v)?;
    let result = state.db.with(|db| -> crate::db::Result<_> {
        let list = db.list_instances(&filter)?;
        let services = db.services()?;
        let data = list.iter().map(|i| view_data(state, db, &services, i)).collect::<crate::db::Result<Vec<_>>>()?;
        Ok((list, data))
    });
    match result {
        Err(crate::db::DbError::MarkerNotFound(m)) => Err(Dialect::Nova.marker_not_found("", &m)),
        other => Ok(other?),
    }
}

pub async fn list(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    respond(&headers, &state, &auth, v, Params(q), false)
}

pub async fn list_detail(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    respond(&headers, &state, &auth, v, Params(q), true)
}

/// `{"servers": [...]}`, brief or detailed, with nova's `servers_links` when the page is full.
fn respond(
    headers: &HeaderMap,
    state: &AppState,
    auth: &Auth,
    v: Microversion,
    params: Params,
    detail: bool,
) -> ApiResult<Json<Value>> {
    let base = base_url(headers, &state.config);
    let (list, data) = listed(state, auth, &params, v)?;
    let servers: Vec<Value> = if detail {
        list.iter().zip(&data).map(|(i, d)| server_view(i, d, &base, v, auth)).collect()
    } else {
        list.iter()
            .map(|i| json!({"id": i.uuid, "name": i.display_name, "links": links(&base, "servers", &i.uuid)}))
            .collect()
    };
    let limit = listing::paging(&params, Dialect::Nova)?.limit;
    let end = PageEnd { full: limit.is_some_and(|l| l > 0 && list.len() == l), more: false };
    let mut body = json!({ "servers": servers });
    let path = if detail { "servers/detail" } else { "servers" };
    let url = format!("{base}/compute/v2.1/{path}");
    let last = list.last().map(|i| i.uuid.as_str());
    listing::add_next_link(&mut body, Dialect::Nova, "servers", &url, &params, end, last);
    Ok(Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Context;

    fn caller(admin: bool) -> Auth {
        let context = Context {
            user_id: Some("u".into()),
            project_id: Some("p".into()),
            roles: vec![if admin { "admin" } else { "member" }.into()],
            is_admin: admin,
            ..Context::default()
        };
        Auth { context, user_name: "u".into(), project_name: "p".into() }
    }

    fn q(query: &str) -> Params {
        Params(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn members_get_nova_s_filters_for_their_microversion_and_admins_all() {
        let member = caller(false);
        let f = filter_of(&q("name=^a&host=h&node=n&user_id=x&bogus=1&all_tenants=1"), &member, Microversion(79)).err();
        assert!(f.is_some_and(|e| e.message.contains("('bogus' was unexpected)")), "2.75 refuses unknown keys");
        let f =
            filter_of(&q("name=^a&host=h&node=n&user_id=x&bogus=1&all_tenants=1"), &member, Microversion(74)).unwrap();
        assert_eq!(f.project_id.as_deref(), Some("p"), "all_tenants is the policy's");
        assert_eq!((f.host, f.regex.clone()), (None, vec![(InstanceText::DisplayName, "^a".to_string())]));
        assert!(f.exact.is_empty(), "user_id is everyone's only from 2.83: {:?}", f.exact);
        let f = filter_of(&q("locked=true&ip6=::1"), &member, Microversion(72)).unwrap();
        assert!(f.exact.is_empty() && f.ip6.is_some(), "locked comes at 2.73, ip6 at 2.5");
        let f = filter_of(&q("locked=yes&tags=a,b&not-tags=c"), &member, Microversion(73)).unwrap();
        assert_eq!(f.exact, vec![(InstanceExact::Locked, vec!["1".to_string()])]);
        assert_eq!(f.tags.all, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!((f.tags.not_all, f.tags.any), (Some(vec!["c".to_string()]), None));
        let f = filter_of(&q("not-tags-any=c&tags="), &member, Microversion(73)).unwrap();
        assert_eq!((f.tags.all, f.tags.not_any), (Some(vec![String::new()]), Some(vec!["c".to_string()])));
        assert_eq!(filter_of(&q("tags=a"), &member, Microversion(25)).unwrap().tags, TagFilter::default());

        let admin = caller(true);
        let f = filter_of(&q("all_tenants=&tenant_id=t&host=h&node=^n&user_id=x&deleted=1"), &admin, Microversion(1))
            .unwrap();
        assert_eq!((f.project_id.as_deref(), f.host.as_deref(), f.only_deleted), (Some("t"), Some("h"), true));
        assert_eq!(f.regex, vec![(InstanceText::Node, "^n".to_string())]);
        assert_eq!(f.exact, vec![(InstanceExact::UserId, vec!["x".to_string()])]);
        let f = filter_of(&q("all_tenants=0&project_id=t"), &admin, Microversion(1)).unwrap();
        assert_eq!(f.project_id.as_deref(), Some("p"), "all_tenants=0 is the caller's own");
        let e = filter_of(&q("security_groups=x"), &admin, Microversion(1)).unwrap_err();
        assert_eq!(e.message, "Invalid filter field: security_groups.");
        assert!(filter_of(&q("security_groups=x"), &member, Microversion(1)).is_ok(), "a member's is stripped");
    }

    #[test]
    fn sort_keys_by_microversion_and_persona() {
        let member = caller(false);
        let sort = |query: &str, v: u32| filter_of(&q(query), &member, Microversion(v)).map(|f| f.page.sort);
        assert_eq!(sort("", 79).unwrap(), vec![]);
        assert_eq!(
            sort("sort_key=vcpus&sort_key=display_name&sort_key=uuid&sort_dir=asc", 74).unwrap(),
            vec![(InstanceSortKey::DisplayName, Direction::Asc), (InstanceSortKey::Uuid, Direction::Asc)],
            "ignored before 2.75, the first direction for the rest"
        );
        assert!(sort("sort_key=vcpus", 75).unwrap_err().message.contains("'vcpus' is not one of"));
        assert!(sort("sort_key=locked", 72).unwrap().is_empty());
        assert_eq!(sort("sort_key=locked", 73).unwrap(), vec![(InstanceSortKey::Locked, Direction::Desc)]);
        assert!(sort("sort_key=id", 79).is_err() && sort("sort_key=id", 1).unwrap().is_empty());
        assert_eq!(sort("sort_key=node", 79).unwrap_err().status, 403);
        let admin = filter_of(&q("sort_key=node"), &caller(true), Microversion(79)).unwrap();
        assert_eq!(admin.page.sort, vec![(InstanceSortKey::Node, Direction::Desc)]);
        let f = filter_of(&q("limit=0&marker=m"), &member, Microversion(79)).unwrap();
        assert_eq!((f.page.limit, f.page.marker.as_deref()), (Some(0), Some("m")));
    }
}
