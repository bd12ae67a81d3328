//! nova's remote consoles: `POST /servers/{id}/remote-consoles` (2.6 and later) and, below
//! 2.6, the `os-getVNCConsole`/`os-getSerialConsole` actions. Each answer is a URL carrying a
//! fresh console auth token, which novabox's own proxy (`api::console_proxy`) checks when the
//! browser or client connects.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::microversion::Microversion;
use super::parse_body;
use crate::api::context::{token_hash, Auth};
use crate::api::fault::{ApiError, ApiResult};
use crate::api::{base_url, AppState};
use crate::compute::api::ComputeApi;
use crate::compute::states::VmState;
use crate::config::Driver;
use crate::db::instances::Instance;

/// The consoles novabox serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleType {
    NoVnc,
    Serial,
}

impl ConsoleType {
    pub fn name(self) -> &'static str {
        match self {
            ConsoleType::NoVnc => "novnc",
            ConsoleType::Serial => "serial",
        }
    }
}

/// nova's schema of the protocol and type (2.6; 2.8 adds mks/webmks).
fn protocols(v: Microversion) -> &'static [&'static str] {
    if v.at_least(8) {
        &["vnc", "spice", "rdp", "serial", "mks"]
    } else {
        &["vnc", "spice", "rdp", "serial"]
    }
}

fn types(v: Microversion) -> &'static [&'static str] {
    if v.at_least(8) {
        &["novnc", "xvpvnc", "rdp-html5", "spice-html5", "serial", "webmks"]
    } else {
        &["novnc", "xvpvnc", "rdp-html5", "spice-html5", "serial"]
    }
}

/// jsonschema's "is not one of" text, values shown as Python's repr.
fn not_one_of(field: &str, value: &Value, allowed: &[&str]) -> ApiError {
    let (shown, repr) = match value.as_str() {
        Some(text) => (text.to_string(), format!("'{text}'")),
        None => (value.to_string(), value.to_string()),
    };
    let list = allowed.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ");
    ApiError::bad_request(format!(
        "Invalid input for field/attribute {field}. Value: {shown}. {repr} is not one of [{list}]"
    ))
}

fn required(field: &str, parent: &str) -> ApiError {
    ApiError::bad_request(format!(
        "Invalid input for field/attribute {parent}. Value: {{}}. '{field}' is a required property"
    ))
}

fn no_extra(obj: &serde_json::Map<String, Value>, allowed: &[&str], field: &str) -> Result<(), ApiError> {
    let mut extra: Vec<&str> = obj.keys().map(String::as_str).filter(|k| !allowed.contains(k)).collect();
    if extra.is_empty() {
        return Ok(());
    }
    extra.sort_unstable();
    let list = extra.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ");
    let verb = if extra.len() == 1 { "was" } else { "were" };
    Err(ApiError::bad_request(format!(
        "Invalid input for field/attribute {field}. Value: {}. Additional properties are not allowed ({list} {verb} unexpected)",
        Value::Object(obj.clone())
    )))
}

/// The body of `POST /remote-consoles`, checked as nova's schema does, then the pair as nova's
/// compute API does: the protocol and type novabox serves, or nova's 400 for the rest.
pub fn parse_create(body: &Value, v: Microversion) -> Result<(String, ConsoleType), ApiError> {
    let root = body.as_object().ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid input for field/attribute body. Value: {body}. {body} is not of type 'object'"
        ))
    })?;
    no_extra(root, &["remote_console"], "body")?;
    let rc = root.get("remote_console").ok_or_else(|| required("remote_console", "body"))?;
    let rc_obj = rc.as_object().ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid input for field/attribute remote_console. Value: {rc}. {rc} is not of type 'object'"
        ))
    })?;
    let protocol = rc_obj.get("protocol").ok_or_else(|| required("protocol", "remote_console"))?;
    let kind = rc_obj.get("type").ok_or_else(|| required("type", "remote_console"))?;
    let protocol_name = protocol.as_str().filter(|p| protocols(v).contains(p));
    let Some(protocol_name) = protocol_name else { return Err(not_one_of("protocol", protocol, protocols(v))) };
    let kind_name = kind.as_str().filter(|t| types(v).contains(t));
    let Some(kind_name) = kind_name else { return Err(not_one_of("type", kind, types(v))) };
    no_extra(rc_obj, &["protocol", "type"], "remote_console")?;
    let console = console_of(protocol_name, kind_name)?;
    Ok((protocol_name.to_string(), console))
}

/// nova's compute API on a pair: a type of another protocol is "invalid", a protocol novabox
/// has no proxy for (spice, rdp, mks, VNC's retired xvpvnc) "unavailable"; both are 400.
fn console_of(protocol: &str, kind: &str) -> Result<ConsoleType, ApiError> {
    match (protocol, kind) {
        ("vnc", "novnc") => Ok(ConsoleType::NoVnc),
        ("serial", "serial") => Ok(ConsoleType::Serial),
        ("vnc", "xvpvnc") => Err(unavailable(kind)),
        ("vnc" | "serial", other) => Err(ApiError::bad_request(format!("Invalid console type {other}"))),
        (_, other) => Err(unavailable(other)),
    }
}

fn unavailable(kind: &str) -> ApiError {
    ApiError::bad_request(format!("Unavailable console type {kind}."))
}

fn not_ready(id: &str, why: &str) -> ApiError {
    ApiError::conflict(format!("Instance {id} is not ready: {why}"))
}

/// The legacy actions' bodies: `{"os-getVNCConsole": {"type": "novnc"}}` and
/// `{"os-getSerialConsole": {"type": "serial"}}`.
fn parse_legacy(action: &str, args: &Value) -> Result<ConsoleType, ApiError> {
    let (allowed, protocol): (&[&str], &str) = match action {
        "os-getVNCConsole" => (&["novnc", "xvpvnc"], "vnc"),
        _ => (&["serial"], "serial"),
    };
    let obj = args.as_object().ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid input for field/attribute {action}. Value: {args}. {args} is not of type 'object'"
        ))
    })?;
    let kind = obj.get("type").ok_or_else(|| required("type", action))?;
    let Some(kind_name) = kind.as_str().filter(|t| allowed.contains(t)) else {
        return Err(not_one_of("type", kind, allowed));
    };
    no_extra(obj, &["type"], action)?;
    console_of(protocol, kind_name)
}

/// Whether the instance's guest can be reached by the proxy for this console, in nova's
/// errors: 400 when there is no such console at all, 409 while the guest is not running.
pub(crate) fn check_reachable(state: &AppState, inst: &Instance, console: ConsoleType) -> Result<(), ApiError> {
    let kind = console.name();
    // The file each driver keeps in a guest's dir on this host.
    let guest_file = match state.config.compute.driver {
        Driver::Fake => {
            return Err(ApiError::bad_request(format!(
                "Unavailable console type {kind}. (This cloud runs the fake driver, whose guests have no consoles.)"
            )))
        }
        // libvirt's serial port is a `file` chardev (console.log): nothing can type into it.
        // Its screen is a VNC socket in the guest's dir, as the qemu driver's.
        Driver::Libvirt if console == ConsoleType::Serial => {
            return Err(ApiError::bad_request(format!(
                "Unavailable console type {kind}. (On the libvirt driver the serial port only \
                 writes console.log, which `openstack console log show` reads; the novnc console works.)"
            )))
        }
        Driver::Libvirt => "libvirt.json",
        Driver::Auto | Driver::Qemu => "launch.json",
    };
    if inst.vm_state != VmState::Active || inst.task_state.is_some() || inst.host.is_none() {
        return Err(ApiError::conflict(format!("Instance {} is not ready", inst.uuid)));
    }
    let dir = state.home.instances_dir().join(&inst.uuid);
    if !dir.join(guest_file).is_file() {
        return Err(ApiError::bad_request(format!(
            "Unavailable console type {kind}. (The guest is not on this host's {} driver.)",
            if guest_file == "libvirt.json" { "libvirt" } else { "qemu" }
        )));
    }
    if guest_file == "libvirt.json" && !dir.join(crate::compute::virt::qemu::VNC_SOCKET).exists() {
        return Err(not_ready(
            &inst.uuid,
            "its libvirt domain has no VNC server (it was defined before novabox gave guests one); \
             create the server again to get one",
        ));
    }
    let socket = match console {
        ConsoleType::Serial => crate::compute::virt::qemu::CONSOLE_SOCKET,
        ConsoleType::NoVnc => crate::compute::virt::qemu::VNC_SOCKET,
    };
    if !dir.join(socket).exists() {
        return Err(match console {
            ConsoleType::NoVnc if dir.join(crate::compute::virt::qemu::CONSOLE_SOCKET).exists() => not_ready(
                &inst.uuid,
                "its guest was started before novabox gave guests a VNC server; \
                 stop and start the server to get one (its serial console works meanwhile)",
            ),
            _ => not_ready(&inst.uuid, "its guest's qemu is not running"),
        });
    }
    Ok(())
}

/// A new token for `console` of `inst`, stored hashed, and the URL that carries it.
fn issue(state: &AppState, headers: &HeaderMap, inst: &Instance, console: ConsoleType) -> ApiResult<String> {
    let token = crate::secrets::random_token(40);
    let ttl = chrono::Duration::seconds(state.config.console.token_ttl_secs.min(86_400) as i64);
    let expires = (crate::clock::now() + ttl).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let hash = token_hash(&token);
    state.db.with(|db| db.insert_console_token(&hash, &inst.uuid, console.name(), &expires))?;
    let base = base_url(headers, &state.config);
    Ok(console_url(&base, console, &token))
}

/// Where a console's client goes: noVNC's page (its `path` is the websocket, relative to the
/// page's host, as noVNC's vnc_lite.html reads it), or the serial websocket itself, as
/// nova's serialproxy URLs are.
pub fn console_url(base: &str, console: ConsoleType, token: &str) -> String {
    match console {
        ConsoleType::NoVnc => {
            format!("{base}/console/novnc/vnc_lite.html?path=console%2Fnovnc%2Fwebsockify%3Ftoken%3D{token}")
        }
        ConsoleType::Serial => {
            let ws = base.strip_prefix("http").map(|rest| format!("ws{rest}")).unwrap_or_else(|| base.to_string());
            format!("{ws}/console/serial?token={token}")
        }
    }
}

/// The server, the policy check, the reachability check and a token, for either API.
async fn console_for(
    state: &AppState,
    headers: &HeaderMap,
    auth: &Auth,
    id: &str,
    console: ConsoleType,
) -> ApiResult<String> {
    let inst = ComputeApi::new(state).get(auth, id)?;
    auth.authorize(
        crate::policy::Action::ComputeRemoteConsoles,
        &crate::policy::Target { project_id: Some(&inst.project_id), ..Default::default() },
    )?;
    check_reachable(state, &inst, console)?;
    issue(state, headers, &inst, console)
}

pub async fn create(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    if !v.at_least(6) {
        return Err(ApiError::not_found("The resource could not be found."));
    }
    let (body, _) = parse_body::<Value>(body)?;
    // nova looks the server up before it reads the pair: an unknown server is 404 whatever
    // the body asks.
    ComputeApi::new(&state).get(&auth, &id)?;
    let (protocol, console) = parse_create(&body, v)?;
    let url = console_for(&state, &headers, &auth, &id, console).await?;
    Ok(Json(json!({"remote_console": {"protocol": protocol, "type": console.name(), "url": url}})).into_response())
}

/// The legacy console actions, when `body` is one: `Some(answer)`, else `None` for the other
/// actions' parser.
pub async fn legacy_action(
    state: &AppState,
    headers: &HeaderMap,
    auth: &Auth,
    v: Microversion,
    id: &str,
    body: &Value,
) -> ApiResult<Option<Response>> {
    const LEGACY: &[&str] = &["os-getVNCConsole", "os-getSerialConsole", "os-getSPICEConsole", "os-getRDPConsole"];
    let Some((action, args)) = body.as_object().and_then(|o| o.iter().find(|(k, _)| LEGACY.contains(&k.as_str())))
    else {
        return Ok(None);
    };
    // Replaced by remote-consoles in 2.6: nova's dispatcher no longer knows them.
    if v.at_least(6) {
        return Err(ApiError::not_found("The resource could not be found."));
    }
    ComputeApi::new(state).get(auth, id)?;
    let console = match action.as_str() {
        "os-getSPICEConsole" | "os-getRDPConsole" => {
            let kind = args.get("type").and_then(Value::as_str).unwrap_or("");
            return Err(unavailable(kind));
        }
        _ => parse_legacy(action, args)?,
    };
    let url = console_for(state, headers, auth, id, console).await?;
    Ok(Some(Json(json!({"console": {"type": console.name(), "url": url}})).into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(minor: u32) -> Microversion {
        Microversion(minor)
    }

    #[test]
    fn the_pairs_novabox_serves_and_nova_s_400s_for_the_rest() {
        let ok = parse_create(&json!({"remote_console": {"protocol": "vnc", "type": "novnc"}}), v(6)).unwrap();
        assert_eq!(ok, ("vnc".to_string(), ConsoleType::NoVnc));
        let ok = parse_create(&json!({"remote_console": {"protocol": "serial", "type": "serial"}}), v(79)).unwrap();
        assert_eq!(ok.1, ConsoleType::Serial);
        let err = parse_create(&json!({"remote_console": {"protocol": "vnc", "type": "serial"}}), v(6)).unwrap_err();
        assert_eq!((err.status.as_u16(), err.message.as_str()), (400, "Invalid console type serial"));
        let err = parse_create(&json!({"remote_console": {"protocol": "spice", "type": "spice-html5"}}), v(6));
        assert_eq!(err.unwrap_err().message, "Unavailable console type spice-html5.");
        let err = parse_create(&json!({"remote_console": {"protocol": "vnc", "type": "xvpvnc"}}), v(6));
        assert_eq!(err.unwrap_err().message, "Unavailable console type xvpvnc.");
    }

    #[test]
    fn the_schema_refuses_unknown_values_missing_and_extra_keys() {
        let err = parse_create(&json!({"remote_console": {"protocol": "telnet", "type": "serial"}}), v(6)).unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
        assert!(
            err.message.starts_with("Invalid input for field/attribute protocol. Value: telnet."),
            "{}",
            err.message
        );
        // mks exists from 2.8 only.
        assert!(parse_create(&json!({"remote_console": {"protocol": "mks", "type": "webmks"}}), v(6)).is_err());
        let err = parse_create(&json!({"remote_console": {"protocol": "mks", "type": "webmks"}}), v(8)).unwrap_err();
        assert_eq!(err.message, "Unavailable console type webmks.");
        let err = parse_create(&json!({"remote_console": {"protocol": "vnc"}}), v(6)).unwrap_err();
        assert!(err.message.ends_with("'type' is a required property"), "{}", err.message);
        let err =
            parse_create(&json!({"remote_console": {"protocol": "vnc", "type": "novnc", "x": 1}}), v(6)).unwrap_err();
        assert!(err.message.contains("Additional properties are not allowed ('x' was unexpected)"), "{}", err.message);
        assert!(parse_create(&json!({"console": {}}), v(6)).is_err());
        assert!(parse_create(&json!([]), v(6)).is_err());
        assert!(parse_create(&json!({"remote_console": {"protocol": 1, "type": "novnc"}}), v(6)).is_err());
    }

    #[test]
    fn legacy_bodies_take_their_own_types() {
        assert_eq!(parse_legacy("os-getVNCConsole", &json!({"type": "novnc"})).unwrap(), ConsoleType::NoVnc);
        assert_eq!(parse_legacy("os-getSerialConsole", &json!({"type": "serial"})).unwrap(), ConsoleType::Serial);
        assert!(parse_legacy("os-getVNCConsole", &json!({"type": "serial"})).is_err());
        assert!(parse_legacy("os-getSerialConsole", &json!({})).is_err());
    }

    #[test]
    fn urls_carry_the_token_where_novnc_and_serial_clients_read_it() {
        let url = console_url("http://127.0.0.1:8774", ConsoleType::NoVnc, "abc");
        assert_eq!(
            url,
            "http://127.0.0.1:8774/console/novnc/vnc_lite.html?path=console%2Fnovnc%2Fwebsockify%3Ftoken%3Dabc"
        );
        assert_eq!(console_url("http://h:1", ConsoleType::Serial, "abc"), "ws://h:1/console/serial?token=abc");
    }
}
