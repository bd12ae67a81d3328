//! The guest toolkit end to end: a flavor's ephemeral and swap disks and the ISO9660 config
//! drive as the guest sees them, `novabox console` driven through a pipe, and
//! `novabox image import` from a file and over http. One TCG guest boot in all.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{self, assert_ok, stderr, stdout, TestHome};
use crate::guests::pids_mentioning;

/// Kills, by pid, every process whose command line names the test's home (its guests' qemu),
/// also when the test fails; `novabox up` itself is stopped by `Stack`'s own drop.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in pids_mentioning("guest=").into_iter().filter(|p| cmdline(*p).contains(&*self.0.to_string_lossy())) {
            // SAFETY: a qemu of this test's home, by its pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn cmdline(pid: i32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).into_owned()
}

fn novabox(home: &TestHome, args: &[&str]) -> std::process::Output {
    common::run(home.novabox().args(args))
}

fn wait_console(home: &TestHome, name: &str, marker: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = novabox(home, &["server", "console-log", name]);
        assert_ok(&out);
        let text = stdout(&out);
        if text.contains(marker) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {marker:?} on the console of {name}:\n{text}\n{}", home.up_log());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `novabox console` with `input` on a pipe; returns (exit ok, stdout, stderr).
fn console(home: &TestHome, server: &str, input: &[u8]) -> (bool, String, String) {
    let mut child = home
        .novabox()
        .args(["console", server, "--linger", "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("novabox console starts");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (out.status.success(), stdout(&out), stderr(&out))
}

#[test]
fn flavor_disks_iso_config_drive_and_console_needs_qemu() {
    crate::guests::require_qemu();
    assert!(
        novabox::compute::virt::disks::find_iso_tool().is_some(),
        "genisoimage or xorriso is missing: run scripts/install-deps"
    );
    let home = TestHome::new();
    let _reaper = Reaper(home.path().to_path_buf());
    let deb_cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deb-cache");
    let out = common::run(
        home.init_cmd(&["--driver", "qemu", "--bus", "local", "--accel", "tcg", "--network-mode", "user"])
            .env("NOVABOX_DEB_CACHE", deb_cache),
    );
    assert_ok(&out);
    let stack = home.up(&[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let admin = rt.block_on(stack.client("admin"));
    // A flavor with both: 1 GiB ephemeral, 64 MiB swap (public, so demo may use it).
    let flavor = json!({"flavor": {"name": "g.disks", "ram": 128, "vcpus": 1, "disk": 1,
        "OS-FLV-EXT-DATA:ephemeral": 1, "swap": 64}});
    rt.block_on(admin.compute(reqwest::Method::POST, "/flavors", Some(flavor))).expect("flavor created");

    let out =
        novabox(&home, &["server", "create", "disks", "--image", "tiny", "--flavor", "g.disks", "--wait", "--json"]);
    assert_ok(&out);
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let dir = home.path().join("instances").join(&id);

    // The guest reads hostname and key from the ISO9660 config-2 CD-ROM, and sees root (vda),
    // ephemeral (vdb, 1 GiB) and swap (vdc, 64 MiB), in 512-byte sectors.
    let text = wait_console(&home, "disks", "novabox-guest: ready");
    let text = if text.contains("novabox-guest: disk vdc") {
        text
    } else {
        wait_console(&home, "disks", "novabox-guest: disk vdc")
    };
    assert!(text.contains("novabox-guest: hostname disks"), "{text}");
    assert!(text.contains("novabox-guest: disk vdb 2097152"), "{text}");
    assert!(text.contains("novabox-guest: disk vdc 131072"), "{text}");
    for f in ["disk.config", "disk.eph0", "disk.swap"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }

    // The console, through a pipe: the shell runs what is typed and its output comes back.
    let token = format!("console-ok-{}", uuid::Uuid::new_v4().simple());
    let (ok, out, err) = console(&home, "disks", format!("echo {token}\n").as_bytes());
    assert!(ok, "{err}");
    assert!(err.contains("Detach with Ctrl-]"), "{err}");
    // The typed line echoes as "echo console-ok-..."; the command's output is the bare token.
    assert!(out.lines().any(|l| l.trim() == token), "no {token} answer on the console:\n{out}");
    // Ctrl-] detaches at once, without waiting for the guest to go quiet; the guest runs on.
    let (ok, _, err) = console(&home, "disks", b"\x1d");
    assert!(ok && err.contains("Detached"), "{err}");

    let (ok, _, err) = console(&home, "no-such-server", b"");
    assert!(!ok && err.contains("no server named or with id no-such-server"), "{err}");
    assert_ok(&novabox(&home, &["server", "stop", "disks"]));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = novabox(&home, &["server", "show", "disks", "--json"]);
        let s: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if s["status"] == "SHUTOFF" && s["OS-EXT-STS:task_state"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "never SHUTOFF: {s}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let (ok, _, err) = console(&home, "disks", b"");
    assert!(!ok && err.contains("is SHUTOFF, its guest is not running"), "{err}");

    assert_ok(&novabox(&home, &["server", "delete", "disks", "--wait"]));
    assert!(!dir.exists(), "the guest's disks stayed after delete");
    drop(stack);
}

#[test]
fn console_on_the_fake_driver_says_so() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let out = novabox(&home, &["console", "anything"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("fake driver, whose guests have no serial console"), "{}", stderr(&out));
}

/// Serves `body` to every GET on a loopback port until the test ends.
fn http_server(body: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut req = [0u8; 4096];
            let n = s.read(&mut req).unwrap_or(0);
            let found = String::from_utf8_lossy(&req[..n]).starts_with("GET /disk.qcow2 ");
            let head = if found {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
            };
            let _ = s.write_all(head.as_bytes());
            if found {
                let _ = s.write_all(&body);
            }
        }
    });
    format!("http://{addr}")
}

fn qcow2(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let out = common::run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&p).arg("64M"));
    assert_ok(&out);
    p
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[test]
fn image_import_from_file_and_http_checks_format_and_checksum() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let stack = home.up(&[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let demo = rt.block_on(stack.client("demo"));
    let images = || -> Vec<Value> {
        let list = rt.block_on(demo.image(reqwest::Method::GET, "/images", None)).unwrap();
        list["images"].as_array().cloned().unwrap_or_default()
    };
    let before = images().len();
    let src = tempfile::tempdir().unwrap();

    // A local qcow2: detected, stored, active.
    let file = qcow2(src.path(), "local.qcow2");
    let out = novabox(&home, &["image", "import", file.to_str().unwrap(), "--json"]);
    assert_ok(&out);
    let img: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((img["name"].as_str(), img["disk_format"].as_str()), (Some("local.qcow2"), Some("qcow2")));
    assert_eq!(img["status"], "active");

    // Over http from a loopback server, with the right sha256.
    let data = std::fs::read(qcow2(src.path(), "remote.qcow2")).unwrap();
    let base = http_server(data.clone());
    let url = format!("{base}/disk.qcow2");
    let sum = format!("sha256:{}", sha256_hex(&data));
    let out = novabox(&home, &["image", "import", &url, "--name", "from-http", "--checksum", &sum]);
    assert_ok(&out);
    assert!(stdout(&out).contains("disk_format qcow2"), "{}", stdout(&out));

    // Bad input: nothing is created, and no temporary file stays in the home.
    let bad_sum = format!("md5:{}", "0".repeat(32));
    let out = novabox(&home, &["image", "import", &url, "--name", "bad-sum", "--checksum", &bad_sum]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("checksum mismatch"), "{}", stderr(&out));
    let random = src.path().join("random.img");
    std::fs::write(&random, (0..1u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>())
        .unwrap();
    let out = novabox(&home, &["image", "import", random.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not a disk image"), "{}", stderr(&out));
    let truncated = src.path().join("truncated.qcow2");
    std::fs::write(&truncated, &data[..1000]).unwrap();
    let out = novabox(&home, &["image", "import", truncated.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not a disk image"), "{}", stderr(&out));
    let out = novabox(&home, &["image", "import", &format!("{base}/missing.img")]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));

    let names: Vec<String> = images().iter().filter_map(|i| i["name"].as_str().map(str::to_string)).collect();
    assert_eq!(names.len(), before + 2, "{names:?}");
    assert!(names.contains(&"local.qcow2".to_string()) && names.contains(&"from-http".to_string()), "{names:?}");
    // What a user sees with the standard client.
    let venv = common::manifest_dir().join(".build/venv/bin/openstack");
    assert!(venv.exists(), "{} is missing: run scripts/install-clients", venv.display());
    let out =
        common::run(Command::new(venv).env("OS_CLIENT_CONFIG_FILE", home.clouds_yaml()).env_remove("OS_CLOUD").args([
            "--os-cloud",
            "novabox",
            "image",
            "list",
            "-f",
            "value",
            "-c",
            "Name",
        ]));
    assert_ok(&out);
    let listed = stdout(&out);
    assert!(listed.lines().any(|l| l == "from-http") && listed.lines().any(|l| l == "local.qcow2"), "{listed}");
    assert!(!listed.contains("bad-sum"), "{listed}");
    let leftovers: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".import-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(stack);
}

/// An https server on loopback with a self-signed certificate made for this test, serving
/// `body` at /disk.qcow2. Returns the base URL, the certificate's path and the server process.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn https_server(dir: &Path, body: &[u8]) -> (String, PathBuf, KillOnDrop) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = common::run(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    assert_ok(&out);
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("disk.qcow2"), body).unwrap();
    let script = "import http.server, ssl, sys, functools\n\
        h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])\n\
        s = http.server.HTTPServer(('127.0.0.1', 0), h)\n\
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain(sys.argv[1], sys.argv[2])\n\
        s.socket = c.wrap_socket(s.socket, server_side=True)\n\
        print(s.server_address[1], flush=True)\n\
        s.serve_forever()\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(&cert)
        .arg(&key)
        .arg(&root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("https server said {line:?}"));
    (format!("https://127.0.0.1:{port}"), cert, KillOnDrop(child))
}

#[test]
fn image_import_over_https_trusts_only_known_certificates() {
    let home = TestHome::new();
    assert_ok(&home.init(&["--driver", "fake", "--bus", "local"]));
    let stack = home.up(&[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let demo = rt.block_on(stack.client("demo"));
    let image_names = || -> Vec<String> {
        let list = rt.block_on(demo.image(reqwest::Method::GET, "/images", None)).unwrap();
        list["images"].as_array().into_iter().flatten().filter_map(|i| i["name"].as_str().map(str::to_string)).collect()
    };
    let src = tempfile::tempdir().unwrap();
    let data = std::fs::read(qcow2(src.path(), "remote.qcow2")).unwrap();
    let (base, cert, _server) = https_server(src.path(), &data);
    let url = format!("{base}/disk.qcow2");

    // A certificate nobody vouches for: refused with what to do, nothing stored.
    let out = novabox(&home, &["image", "import", &url, "--name", "untrusted"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("SSL_CERT_FILE"), "{}", stderr(&out));
    assert!(!image_names().contains(&"untrusted".to_string()), "{:?}", image_names());

    // Trusted through SSL_CERT_FILE: downloaded over TLS and stored.
    let sum = format!("sha256:{}", sha256_hex(&data));
    let mut cmd = home.novabox();
    cmd.env("SSL_CERT_FILE", &cert).args(["image", "import", &url, "--name", "over-tls", "--checksum", &sum, "--json"]);
    let out = common::run(&mut cmd);
    assert_ok(&out);
    let img: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((img["name"].as_str(), img["status"].as_str()), (Some("over-tls"), Some("active")));
}
