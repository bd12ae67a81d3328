//! The remote consoles (issue 22, item 1) end to end: nova's API and its errors on the fake
//! driver, then a real TCG guest's serial console and VNC screen through novabox's websocket
//! proxy, with URLs from python-openstackclient and tokens that expire, die with their server
//! and open only their own console.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{osc_json, osc_output};
use crate::common::{self, assert_ok, stderr, stdout, Stack, TestHome};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn base(stack: &Stack) -> String {
    stack.auth_url().trim_end_matches("/identity/v3").to_string()
}

/// A raw compute call: (status, body).
async fn compute(stack: &Stack, token: &str, method: Method, path: &str, version: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, format!("{}/compute/v2.1{path}", base(stack)))
        .header("x-auth-token", token)
        .header("openstack-api-version", format!("compute {version}"))
        .json(&body)
        .send()
        .await
        .expect("the API answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn remote_console(protocol: &str, kind: &str) -> Value {
    json!({"remote_console": {"protocol": protocol, "type": kind}})
}

/// Opens a console websocket; the HTTP status of a refused handshake otherwise.
async fn open(url: &str, binary: bool) -> Result<(Ws, Option<String>), u16> {
    let mut req = url.into_client_request().expect("a websocket URL");
    if binary {
        req.headers_mut().insert("sec-websocket-protocol", "binary".parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            let proto = resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).map(String::from);
            Ok((ws, proto))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket connect to {url} failed below HTTP: {e}"),
    }
}

/// The websocket of a noVNC page URL: its `path` query, on the page's host.
fn novnc_websocket(page: &str) -> String {
    let url = reqwest::Url::parse(page).expect("a URL");
    let path = url.query_pairs().find(|(k, _)| k == "path").map(|(_, v)| v.into_owned()).expect("a path");
    format!("ws://{}:{}/{path}", url.host_str().unwrap(), url.port().unwrap())
}

/// An image to boot on the fake driver: the first one, or a small upload.
async fn any_image(stack: &Stack, token: &str) -> String {
    let http = reqwest::Client::new();
    let images: Value = http
        .get(format!("{}/image/v2/images", base(stack)))
        .header("x-auth-token", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    if let Some(id) = images["images"][0]["id"].as_str() {
        return id.to_string();
    }
    let img: Value = http
        .post(format!("{}/image/v2/images", base(stack)))
        .header("x-auth-token", token)
        .json(&json!({"name": "blob", "disk_format": "raw", "container_format": "bare"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = img["id"].as_str().expect("an image id").to_string();
    let resp = http
        .put(format!("{}/image/v2/images/{id}/file", base(stack)))
        .header("x-auth-token", token)
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_console_api_errors_and_tokens_on_the_fake_driver() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let stack = home.up(&[]);
    let demo = stack.client("demo").await;
    let alt = stack.client("alt_demo").await;
    let image = any_image(&stack, demo.token()).await;
    let body = json!({"server": {"name": "f1", "imageRef": image, "flavorRef": "1", "networks": "none"}});
    let created = demo.compute(Method::POST, "/servers", Some(body)).await.expect("server created");
    let id = created["server"]["id"].as_str().unwrap().to_string();
    demo.wait_for(&id, "ACTIVE", Duration::from_secs(60)).await.unwrap();
    let path = format!("/servers/{id}/remote-consoles");

    // nova's validation: the schema, then the pair.
    let (s, v) = compute(&stack, demo.token(), Method::POST, &path, "2.6", remote_console("vnc", "serial")).await;
    assert_eq!((s, v["badRequest"]["message"].as_str()), (400, Some("Invalid console type serial")), "{v}");
    let (s, v) = compute(&stack, demo.token(), Method::POST, &path, "2.79", remote_console("telnet", "serial")).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) =
        compute(&stack, demo.token(), Method::POST, &path, "2.79", remote_console("spice", "spice-html5")).await;
    assert_eq!((s, v["badRequest"]["message"].as_str()), (400, Some("Unavailable console type spice-html5.")), "{v}");
    // The fake driver's guests have no console: nova's 400, saying why.
    let (s, v) = compute(&stack, demo.token(), Method::POST, &path, "2.79", remote_console("serial", "serial")).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["badRequest"]["message"].as_str().unwrap().contains("fake driver"), "{v}");
    // Unknown server, another project's server: 404; below 2.6 the resource does not exist.
    let (s, _) = compute(&stack, demo.token(), Method::POST, "/servers/nope/remote-consoles", "2.6", json!({})).await;
    assert_eq!(s, 404);
    let (s, v) = compute(&stack, alt.token(), Method::POST, &path, "2.79", remote_console("serial", "serial")).await;
    assert_eq!(s, 404, "another project's server: {v}");
    let (s, _) = compute(&stack, demo.token(), Method::POST, &path, "2.5", remote_console("serial", "serial")).await;
    assert_eq!(s, 404);
    // The legacy actions: below 2.6 only.
    let action = format!("/servers/{id}/action");
    let legacy = json!({"os-getSerialConsole": {"type": "serial"}});
    let (s, v) = compute(&stack, demo.token(), Method::POST, &action, "2.1", legacy.clone()).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) =
        compute(&stack, demo.token(), Method::POST, &action, "2.1", json!({"os-getVNCConsole": {"type": "serial"}}))
            .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = compute(&stack, demo.token(), Method::POST, &action, "2.6", legacy).await;
    assert_eq!(s, 404);

    // The proxy: no token, a made-up token, a plain GET.
    let ws = base(&stack).replacen("http", "ws", 1);
    assert_eq!(open(&format!("{ws}/console/serial"), false).await.err(), Some(401));
    assert_eq!(open(&format!("{ws}/console/serial?token=made-up"), false).await.err(), Some(401));
    assert_eq!(open(&format!("{ws}/console/novnc/websockify?token=made-up"), true).await.err(), Some(401));
    // Another site's page cannot open a console websocket, whatever token it has.
    let mut req = format!("{ws}/console/serial?token=made-up").into_client_request().unwrap();
    req.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        other => panic!("a cross-site websocket was not refused: {:?}", other.map(|(_, r)| r.status())),
    }
    // The noVNC page, with its Content-Security-Policy.
    let page = reqwest::get(format!("{}/console/novnc/vnc_lite.html?path=x", base(&stack))).await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(page.text().await.unwrap().contains("lite.js"));
    let rfb = reqwest::get(format!("{}/console/novnc/core/rfb.js", base(&stack))).await.unwrap();
    assert_eq!(rfb.status(), 200);
    assert!(rfb.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    let missing = reqwest::get(format!("{}/console/novnc/../novabox.toml", base(&stack))).await.unwrap();
    assert_eq!(missing.status(), 404);
    drop(stack);
}

/// Reads from the websocket until `want` says the collected bytes are enough.
async fn read_until(ws: &mut Ws, buf: &mut Vec<u8>, timeout: Duration, want: impl Fn(&[u8]) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !want(buf) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => buf.extend_from_slice(&b),
            Ok(Some(Ok(Message::Text(t)))) => panic!("the proxy sent a text frame: {t}"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) | Err(_) => return false,
        }
    }
    true
}

/// Takes `n` bytes from the front of what the websocket delivered, reading more as needed.
async fn take(ws: &mut Ws, buf: &mut Vec<u8>, n: usize) -> Vec<u8> {
    assert!(read_until(ws, buf, Duration::from_secs(30), |b| b.len() >= n).await, "the VNC stream ended early");
    buf.drain(..n).collect()
}

fn be16(b: &[u8]) -> usize {
    u16::from_be_bytes([b[0], b[1]]) as usize
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// A minimal RFB 3.8 client: no authentication, ClientInit, one full FramebufferUpdateRequest
/// in the server's own pixel format and raw encoding; returns (width, height, pixels).
async fn rfb_framebuffer(ws: &mut Ws) -> (usize, usize, Vec<Vec<u8>>) {
    let mut buf = Vec::new();
    let version = take(ws, &mut buf, 12).await;
    assert_eq!(&version, b"RFB 003.008\n");
    ws.send(Message::Binary(b"RFB 003.008\n".to_vec().into())).await.unwrap();
    let count = take(ws, &mut buf, 1).await[0] as usize;
    assert!(count > 0, "the VNC server refused the connection");
    let types = take(ws, &mut buf, count).await;
    assert!(types.contains(&1), "qemu's VNC server asks for authentication: {types:?}");
    ws.send(Message::Binary(vec![1u8].into())).await.unwrap();
    assert_eq!(be32(&take(ws, &mut buf, 4).await), 0, "security handshake failed");
    ws.send(Message::Binary(vec![1u8].into())).await.unwrap(); // ClientInit, shared
    let init = take(ws, &mut buf, 24).await;
    let (width, height, bpp) = (be16(&init[0..]), be16(&init[2..]), init[4] as usize);
    let name_len = be32(&init[20..]);
    take(ws, &mut buf, name_len).await;
    assert!(width > 0 && height > 0 && bpp % 8 == 0, "{width}x{height} at {bpp} bpp");
    let mut req = vec![3u8, 0, 0, 0, 0, 0];
    req.extend_from_slice(&(width as u16).to_be_bytes());
    req.extend_from_slice(&(height as u16).to_be_bytes());
    ws.send(Message::Binary(req.into())).await.unwrap();
    let mut pixels = Vec::new();
    let mut covered = 0usize;
    // Raw rectangles until the whole screen has come (qemu may split it).
    while covered < width * height {
        let header = take(ws, &mut buf, 4).await;
        assert_eq!(header[0], 0, "expected a FramebufferUpdate, got message type {}", header[0]);
        for _ in 0..be16(&header[2..]) {
            let rect = take(ws, &mut buf, 12).await;
            let (w, h) = (be16(&rect[4..]), be16(&rect[6..]));
            let encoding = be32(&rect[8..]) as i32;
            if encoding != 0 {
                // A pseudo-encoding (desktop size and the like) carries no pixels here.
                continue;
            }
            let data = take(ws, &mut buf, w * h * bpp / 8).await;
            pixels.extend(data.chunks(bpp / 8).map(|p| p.to_vec()));
            covered += w * h;
        }
    }
    (width, height, pixels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_and_novnc_consoles_of_a_real_guest_needs_qemu() {
    crate::guests::require_qemu();
    let home = TestHome::new();
    let out = common::run(
        home.init_cmd(&["--driver", "qemu", "--bus", "local", "--accel", "tcg", "--network-mode", "user"])
            .env("NOVABOX_DEB_CACHE", crate::guests::deb_cache()),
    );
    assert_ok(&out);
    let stack = home.up(&["--faults"]);
    let reaper = Reaper(home.path().to_path_buf());
    let out = common::run(
        home.novabox().args(["server", "create", "vm1", "--image", "tiny", "--flavor", "m1.tiny", "--wait", "--json"]),
    );
    assert_ok(&out);
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"].as_str().unwrap().to_string();
    crate::guests::wait_console(&home, "vm1", "novabox-guest: ready", 1);

    // python-openstackclient's own command gives the URL (2.6+: remote-consoles).
    let serial = osc_json(&home, &["console", "url", "show", "--serial", "vm1"]);
    let url = serial["url"].as_str().expect("a url").to_string();
    assert!(url.starts_with("ws://") && url.contains("/console/serial?token="), "{serial}");
    let (mut ws, _) = open(&url, false).await.expect("the serial websocket opens");

    // While it is attached, `novabox console` and a second websocket are refused, clearly.
    let busy = common::run(home.novabox().args(["console", "vm1", "--linger", "0"]));
    assert!(!busy.status.success() && stderr(&busy).contains("in use by a websocket client"), "{}", stderr(&busy));
    assert_eq!(open(&url, false).await.err(), Some(409), "a second serial client");

    // A text frame, as nova-serialproxy's clients send: the guest's shell answers.
    let marker = format!("hello-{}", uuid::Uuid::new_v4().simple());
    ws.send(Message::Text(format!("echo {marker}\n").into())).await.unwrap();
    let mut got = Vec::new();
    let answered = read_until(&mut ws, &mut got, Duration::from_secs(60), |b| {
        String::from_utf8_lossy(b).lines().any(|l| l.trim() == marker)
    })
    .await;
    assert!(answered, "no {marker} from the guest:\n{}", String::from_utf8_lossy(&got));
    // Binary frames work as well.
    let marker2 = format!("bin-{}", uuid::Uuid::new_v4().simple());
    ws.send(Message::Binary(format!("echo {marker2}\r").into_bytes().into())).await.unwrap();
    let mut got = Vec::new();
    let answered = read_until(&mut ws, &mut got, Duration::from_secs(60), |b| {
        String::from_utf8_lossy(b).lines().any(|l| l.trim() == marker2)
    })
    .await;
    assert!(answered, "no {marker2} from the guest:\n{}", String::from_utf8_lossy(&got));
    ws.close(None).await.ok();
    drop(ws);
    // Once it left, `novabox console` attaches again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = common::run(home.novabox().args(["console", "vm1", "--linger", "0"]));
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the console stayed claimed: {}", stderr(&out));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // noVNC: the page URL's websocket reaches qemu's VNC server, websockify's way.
    let novnc = osc_json(&home, &["console", "url", "show", "--novnc", "vm1"]);
    let page = novnc["url"].as_str().expect("a url").to_string();
    assert!(page.contains("/console/novnc/vnc_lite.html?path="), "{novnc}");
    let page_resp = reqwest::get(&page).await.unwrap();
    assert_eq!(page_resp.status(), 200);
    assert!(page_resp.headers().contains_key("content-security-policy"));
    let vnc_url = novnc_websocket(&page);
    // A noVNC token opens VNC only.
    assert_eq!(open(&vnc_url.replace("/console/novnc/websockify", "/console/serial"), false).await.err(), Some(401));
    let (mut vnc, proto) = open(&vnc_url, true).await.expect("the VNC websocket opens");
    assert_eq!(proto.as_deref(), Some("binary"), "websockify echoes the binary subprotocol");
    let (w, h, pixels) = rfb_framebuffer(&mut vnc).await;
    assert_eq!(pixels.len(), w * h);
    // Without a display device qemu's VNC shows its own 640x480 "Guest has not initialized
    // the display" notice, which is not one colour either; the guest's VGA text screen is 720x400.
    assert_ne!((w, h), (640, 480), "qemu's placeholder screen, not the guest's");
    let first = &pixels[0];
    assert!(pixels.iter().any(|p| p != first), "the {w}x{h} framebuffer is all one colour");
    drop(vnc);

    // A guest whose qemu has no VNC server (started before novabox gave guests one): nova's
    // 409 with the way out; its next cold start adds the server to its launch.json.
    let dir = home.path().join("instances").join(&id);
    std::fs::remove_file(dir.join("vnc.sock")).unwrap();
    let demo = stack.client("demo").await;
    let rc = format!("/servers/{id}/remote-consoles");
    let (s, v) = compute(&stack, demo.token(), Method::POST, &rc, "2.6", remote_console("vnc", "novnc")).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["conflictingRequest"]["message"].as_str().unwrap().contains("stop and start"), "{v}");
    let launch = dir.join("launch.json");
    let mut saved: Value = serde_json::from_slice(&std::fs::read(&launch).unwrap()).unwrap();
    let args: Vec<Value> = saved["args"].as_array().unwrap().clone();
    let at = args.iter().position(|a| a == "-vga").expect("-vga in launch.json");
    saved["args"] = Value::from(args[..at].iter().chain(&args[at + 4..]).cloned().collect::<Vec<_>>());
    std::fs::write(&launch, serde_json::to_vec(&saved).unwrap()).unwrap();
    assert_ok(&common::run(home.novabox().args(["server", "stop", "vm1"])));
    wait_status(&home, "vm1", "SHUTOFF").await;
    assert_ok(&common::run(home.novabox().args(["server", "start", "vm1"])));
    wait_status(&home, "vm1", "ACTIVE").await;
    let restarted: Value = serde_json::from_slice(&std::fs::read(&launch).unwrap()).unwrap();
    assert!(restarted["args"].as_array().unwrap().iter().any(|a| a == "-vnc"), "{restarted}");
    let (s, v) = compute(&stack, demo.token(), Method::POST, &rc, "2.6", remote_console("vnc", "novnc")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(first_vnc_bytes(v["remote_console"]["url"].as_str().unwrap()).await, b"RFB 003.008\n");

    // Another project cannot get a URL for it.
    let alt = stack.client("alt_demo").await;
    let (s, _) = compute(
        &stack,
        alt.token(),
        Method::POST,
        &format!("/servers/{id}/remote-consoles"),
        "2.6",
        remote_console("vnc", "novnc"),
    )
    .await;
    assert_eq!(s, 404);

    // The legacy action, below 2.6.
    let (s, v) = compute(
        &stack,
        demo.token(),
        Method::POST,
        &format!("/servers/{id}/action"),
        "2.1",
        json!({"os-getSerialConsole": {"type": "serial"}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["console"]["type"], "serial", "{v}");
    let legacy_url = v["console"]["url"].as_str().unwrap().to_string();

    // Tokens expire by [console] token_ttl_secs (600) on the test clock.
    let expiring = osc_json(&home, &["console", "url", "show", "--serial", "vm1"])["url"].as_str().unwrap().to_string();
    let out = common::run(home.novabox().args(["clock", "advance", "601"]));
    assert_ok(&out);
    assert_eq!(open(&expiring, false).await.err(), Some(401), "an expired token");
    assert_eq!(open(&legacy_url, false).await.err(), Some(401), "an expired token");
    assert_ok(&common::run(home.novabox().args(["clock", "reset"])));

    // Deleting the server revokes its tokens (even with the clock back).
    let doomed = osc_json(&home, &["console", "url", "show", "--serial", "vm1"])["url"].as_str().unwrap().to_string();
    let out = osc_output(&home, &["server", "delete", "--wait", "vm1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(open(&doomed, false).await.err(), Some(401), "a deleted server's token");
    let _ = stdout(&out);
    drop(reaper);
    drop(stack);
}

/// The first bytes qemu's VNC server sends through the proxy, from a noVNC page URL.
pub(crate) async fn first_vnc_bytes(page: &str) -> Vec<u8> {
    let (mut ws, proto) = open(&novnc_websocket(page), true).await.expect("the VNC websocket opens");
    assert_eq!(proto.as_deref(), Some("binary"));
    let mut buf = Vec::new();
    take(&mut ws, &mut buf, 12).await
}

/// Waits for the server's status with no task in flight.
async fn wait_status(home: &TestHome, name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = osc_json(home, &["server", "show", name]);
        if s["status"] == want && s["OS-EXT-STS:task_state"].is_null() {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never {want}: {s}\n{}", home.up_log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Kills, by pid, any qemu left with this test's home on its command line.
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let home = self.0.to_string_lossy().into_owned();
        for pid in crate::guests::pids_mentioning(&home) {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains("guest=") {
                // SAFETY: a qemu of this test's home, by its pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}
