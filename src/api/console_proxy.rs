//! The console proxies on the API listener (issue 22), as nova's novncproxy and serialproxy:
//!
//! | path                                   | what                                              |
//! |----------------------------------------|---------------------------------------------------|
//! | `/console/serial?token=`               | websocket to the guest's serial socket            |
//! | `/console/novnc/websockify?token=`     | websocket to qemu's VNC server (websockify's binary framing) |
//! | `/console/novnc/vnc_lite.html?path=`   | noVNC's client, and its files under `/console/novnc/` |
//!
//! Every websocket connect checks its token (`console_auth_tokens`, by sha256): it must be
//! unexpired by the test clock, of this console type, and its server not deleted. The serial
//! socket takes one client at a time, shared with `novabox console` through
//! `qemu::claim_serial`: the second is refused with who holds it (409 before the upgrade).

use std::collections::HashMap;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::compute::remote_consoles::ConsoleType;
use super::context::token_hash;
use super::AppState;
use crate::compute::states::VmState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/serial", get(serial))
        .route("/novnc/websockify", get(novnc))
        .route("/novnc/{*file}", get(asset))
}

/// The pages' policy: scripts, styles and images of this origin only, no inline script, and
/// websockets back to this host; no framing by other sites (clickjacking a live console).
fn csp(headers: &HeaderMap) -> String {
    let connect = match host_of(headers) {
        Some(h) => format!("'self' ws://{h} wss://{h}"),
        None => "'self'".to_string(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src {connect}; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

fn host_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c)))
}

fn content_type(file: &str) -> &'static str {
    match file.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    }
}

/// noVNC's files, embedded (scripts/update-novnc).
async fn asset(headers: HeaderMap, Path(file): Path<String>) -> Response {
    let Some((_, body)) = super::console_assets::ASSETS.iter().find(|(name, _)| *name == file) else {
        return (StatusCode::NOT_FOUND, "no such file of the console client\n").into_response();
    };
    let mut resp = (StatusCode::OK, *body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&file)));
    if let Ok(v) = HeaderValue::from_str(&csp(&headers)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The page's URL carries the token: never send it on as a referrer.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A refused websocket connect, answered as plain text (no client shows a JSON body of a
/// handshake).
#[derive(Debug)]
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let Refused(status, mut text) = self;
        text.push('\n');
        (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused(status, message.into())
}

/// What a connect's token opens: the instance's uuid, after every check nova's proxies make.
fn check_connect(
    state: &AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    console: ConsoleType,
) -> Result<String, Refused> {
    // Cross-site websocket hijacking: a page of another origin must not ride a token it saw.
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or(origin);
        if Some(origin_host) != host_of(headers) {
            return Err(refuse(StatusCode::FORBIDDEN, format!("Origin {origin} is not this console proxy's host.")));
        }
    }
    let invalid = || refuse(StatusCode::UNAUTHORIZED, "The token is invalid or has expired.");
    let token = query.get("token").filter(|t| !t.is_empty()).ok_or_else(invalid)?;
    let found = state
        .db
        .with(|db| db.valid_console_token(&token_hash(token)))
        .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("The console tokens cannot be read: {e}")))?;
    let record = found.filter(|t| t.console_type == console.name()).ok_or_else(invalid)?;
    let inst = state
        .db
        .with(|db| db.instance_by_uuid(&record.instance_uuid, false))
        .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("The server cannot be read: {e}")))?
        .ok_or_else(invalid)?;
    if inst.vm_state != VmState::Active {
        return Err(refuse(StatusCode::CONFLICT, format!("Instance {} is not ready", inst.uuid)));
    }
    Ok(inst.uuid)
}

type Upgrade = Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

fn not_a_websocket() -> Refused {
    refuse(
        StatusCode::BAD_REQUEST,
        "This is a websocket URL: connect with a websocket client (or open the console page).",
    )
}

async fn connect_guest(path: &std::path::Path, uuid: &str) -> Result<tokio::net::UnixStream, Refused> {
    tokio::net::UnixStream::connect(path).await.map_err(|e| {
        tracing::info!(instance = %uuid, socket = %path.display(), error = %e, "console socket unreachable");
        refuse(StatusCode::CONFLICT, format!("Instance {uuid} is not ready: its guest's qemu does not answer"))
    })
}

async fn serial(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: Upgrade,
) -> Response {
    let uuid = match check_connect(&state, &headers, &query, ConsoleType::Serial) {
        Ok(u) => u,
        Err(refused) => return refused.into_response(),
    };
    let Ok(ws) = ws else { return not_a_websocket().into_response() };
    let dir = state.home.instances_dir().join(&uuid);
    let claim =
        match crate::compute::virt::qemu::claim_serial(&dir, "a websocket client of novabox's serial console proxy") {
            Ok(c) => c,
            Err(e) => return refuse(StatusCode::CONFLICT, e.to_string()).into_response(),
        };
    let stream = match connect_guest(&dir.join(crate::compute::virt::qemu::CONSOLE_SOCKET), &uuid).await {
        Ok(s) => s,
        Err(refused) => return refused.into_response(),
    };
    tracing::info!(instance = %uuid, "serial console websocket opened");
    ws.protocols(["binary"]).on_upgrade(move |socket| async move {
        relay(socket, stream, true).await;
        drop(claim);
        tracing::info!(instance = %uuid, "serial console websocket closed");
    })
}

async fn novnc(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: Upgrade,
) -> Response {
    let uuid = match check_connect(&state, &headers, &query, ConsoleType::NoVnc) {
        Ok(u) => u,
        Err(refused) => return refused.into_response(),
    };
    let Ok(ws) = ws else { return not_a_websocket().into_response() };
    let dir = state.home.instances_dir().join(&uuid);
    let socket = dir.join(crate::compute::virt::qemu::VNC_SOCKET);
    if !socket.exists() && dir.join(crate::compute::virt::qemu::CONSOLE_SOCKET).exists() {
        return refuse(
            StatusCode::CONFLICT,
            format!("Instance {uuid} is not ready: its guest was started before novabox gave guests a VNC server; stop and start it"),
        )
        .into_response();
    }
    let stream = match connect_guest(&socket, &uuid).await {
        Ok(s) => s,
        Err(refused) => return refused.into_response(),
    };
    tracing::info!(instance = %uuid, "VNC console websocket opened");
    // websockify's framing: raw RFB bytes in binary frames, `binary` echoed when asked.
    ws.protocols(["binary"]).on_upgrade(move |socket| async move {
        relay(socket, stream, false).await;
        tracing::info!(instance = %uuid, "VNC console websocket closed");
    })
}

/// Copies bytes both ways until either side ends. The guest's bytes go out in binary frames;
/// text frames are taken as bytes for the serial console (nova-serialproxy's clients send
/// them), and end a VNC session, where they would be a protocol error.
async fn relay(mut ws: WebSocket, stream: tokio::net::UnixStream, text_ok: bool) {
    let (mut from_guest, mut to_guest) = stream.into_split();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = from_guest.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = ws.send(Message::Close(None)).await;
                    return;
                }
                Ok(n) => {
                    if ws.send(Message::Binary(axum::body::Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return;
                    }
                }
            },
            msg = ws.recv() => {
                let data: axum::body::Bytes = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) if text_ok => axum::body::Bytes::copy_from_slice(t.as_str().as_bytes()),
                    // Pings are answered by the websocket layer itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return,
                };
                if to_guest.write_all(&data).await.is_err() {
                    let _ = ws.send(Message::Close(None)).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pages_policy_allows_this_host_s_websockets_and_no_inline_script() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8774"));
        let p = csp(&h);
        assert!(p.contains("script-src 'self';"), "{p}");
        assert!(p.contains("connect-src 'self' ws://127.0.0.1:8774 wss://127.0.0.1:8774;"), "{p}");
        assert!(!p.contains("unsafe-inline"), "{p}");
        h.insert(header::HOST, HeaderValue::from_static("evil; script-src *"));
        assert!(csp(&h).contains("connect-src 'self';"), "a hostile Host header reached the policy");
    }

    #[test]
    fn the_client_s_files_are_embedded() {
        for f in ["vnc_lite.html", "lite.js", "core/rfb.js", "LICENSE.txt", "vendor/pako/lib/zlib/inflate.js"] {
            assert!(crate::api::console_assets::ASSETS.iter().any(|(n, _)| *n == f), "{f} missing");
        }
    }
}
