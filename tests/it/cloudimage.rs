//! A real cloud image, end to end: `novabox image build debian` (cached between runs by its
//! inputs in `target/tmp/image-cache`, see `image_cache`), booted under TCG in user-mode
//! networking with a generated keypair and user_data through the config drive; cloud-init
//! must finish, and `novabox ssh` logs in as the image's `debian` user.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use serde_json::json;

use crate::common::{self, assert_ok, stderr, stdout, TestHome};
use crate::guests::{deb_cache, require_qemu, Up};

/// Where built images are kept across test runs (`cargo clean` empties it). The first run
/// builds (a few minutes, downloading about 100 MB of packages from the host's Debian mirror);
/// later runs with the same builder script and inputs reuse the result.
pub fn image_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("image-cache")
}

async fn demo_client(home: &TestHome) -> novabox::client::Client {
    let config = novabox::config::Config::load(&home.path().join("novabox.toml")).expect("config");
    let secrets =
        novabox::secrets::Secrets::load(&home.path().join("secrets.toml")).expect("secrets").expect("secrets");
    novabox::client::Client::login(&config.auth_url(), "demo", &secrets.demo_password, "demo").await.expect("login")
}

fn console(home: &TestHome, name: &str) -> String {
    stdout(&common::run(home.novabox().args(["server", "console-log", name])))
}

#[test]
fn debian_cloud_image_boots_runs_cloud_init_and_takes_ssh_needs_qemu() {
    require_qemu();
    assert!(novabox::hostpkgs::find_program("mmdebstrap").is_some(), "mmdebstrap is missing: run scripts/install-deps");
    assert!(novabox::hostpkgs::find_program("ssh").is_some(), "ssh is missing: run scripts/install-deps");
    let home = TestHome::new();
    let out = common::run(
        home.init_cmd(&["--driver", "qemu", "--bus", "local", "--accel", "tcg", "--network-mode", "user"])
            .env("NOVABOX_DEB_CACHE", deb_cache()),
    );
    assert_ok(&out);

    // Too small a disk is refused before anything is built.
    let small = common::run(home.novabox().args(["image", "build", "debian", "--size", "512M", "--no-import"]));
    assert!(!small.status.success());
    assert!(stderr(&small).contains("the disk is too small"), "{}", stderr(&small));

    let mut up = Up::start(&home);
    let started = Instant::now();
    let built = common::run(
        home.novabox().args(["image", "build", "debian", "--name", "deb"]).env("NOVABOX_IMAGE_CACHE", image_cache()),
    );
    assert_ok(&built);
    let text = stdout(&built);
    assert!(text.contains("imported deb ("), "{text}");
    eprintln!("image build: {:.0?} ({})", started.elapsed(), text.lines().next().unwrap_or(""));

    // novabox generates the pair and keeps the private key where `novabox ssh` looks.
    let kp = common::run(home.novabox().args(["keypair", "create", "k"]));
    assert_ok(&kp);
    let key = home.path().join("keys/k");
    assert!(key.is_file(), "{}", stdout(&kp));

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (id, public_key) = runtime.block_on(async {
        let c = demo_client(&home).await;
        let kp = c.compute(Method::GET, "/os-keypairs/k", None).await.unwrap();
        let public_key = kp["keypair"]["public_key"].as_str().unwrap().to_string();
        let images = c.image(Method::GET, "/images?name=deb", None).await.unwrap();
        let image = &images["images"][0];
        assert_eq!(image["os_distro"], "debian", "{image:#}");
        assert_eq!(image["os_version"], "12", "{image:#}");
        assert_eq!(image["hw_qemu_guest_agent"], "yes", "{image:#}");
        assert_eq!(image["min_disk"], 2, "{image:#}");
        let user_data = "#cloud-config\nruncmd:\n  - [sh, -c, 'echo novabox-user-data-ran > /var/tmp/user-data']\n";
        let body = json!({"server": {
            "name": "vm", "imageRef": image["id"], "flavorRef": "2", "networks": "auto", "key_name": "k",
            "user_data": base64::engine::general_purpose::STANDARD.encode(user_data),
        }});
        let created = c.compute(Method::POST, "/servers", Some(body)).await.unwrap();
        let id = created["server"]["id"].as_str().unwrap().to_string();
        c.wait_for(&id, "ACTIVE", Duration::from_secs(300)).await.unwrap();
        (id, public_key)
    });
    let booted = Instant::now();

    // cloud-init's last stage prints this on the console when every module has run.
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let text = console(&home, "vm");
        if text.contains(" finished at ") && text.contains("Cloud-init v.") {
            break;
        }
        assert!(Instant::now() < deadline, "cloud-init never finished on vm:\n{text}\n{}", up.log());
        std::thread::sleep(Duration::from_secs(3));
    }
    let text = console(&home, "vm");
    assert!(!text.contains("Failed to start cloud-"), "a cloud-init unit failed:\n{text}");

    // sshd starts before cloud-init's final stage; still, a slow TCG guest gets retries.
    let deadline = Instant::now() + Duration::from_secs(120);
    let login = loop {
        let out = common::run(home.novabox().args(["ssh", "vm", "--", "hostname"]));
        if out.status.success() {
            break out;
        }
        assert!(Instant::now() < deadline, "no ssh login: {}\n{}", stderr(&out), console(&home, "vm"));
        std::thread::sleep(Duration::from_secs(3));
    };
    eprintln!("server ACTIVE to ssh login: {:.0?}", booted.elapsed());
    assert_eq!(stdout(&login).trim(), "vm");
    assert!(stderr(&login).contains("+ ssh -i "), "the command is printed: {}", stderr(&login));
    assert!(stderr(&login).contains("debian@127.0.0.1"), "{}", stderr(&login));

    // Every module succeeded (a failed one makes the status `error`); sudo finds the hostname.
    let st = common::run(home.novabox().args(["ssh", "vm", "--", "cloud-init", "status", "--long"]));
    assert!(stdout(&st).contains("status: done"), "{}{}", stdout(&st), stderr(&st));
    let sudo = common::run(home.novabox().args(["ssh", "vm", "--", "sudo", "-n", "true"]));
    assert_ok(&sudo);
    assert!(!stderr(&sudo).contains("unable to resolve host"), "{}", stderr(&sudo));

    // --identity names the key explicitly; user_data's runcmd ran as root.
    let ident = key.to_string_lossy().to_string();
    let ran = common::run(home.novabox().args(["ssh", "vm", "--identity", &ident, "--", "cat", "/var/tmp/user-data"]));
    assert_ok(&ran);
    assert_eq!(stdout(&ran).trim(), "novabox-user-data-ran");
    // The key cloud-init installed is the keypair's.
    let keys = common::run(home.novabox().args(["ssh", "vm", "--", "cat", ".ssh/authorized_keys"]));
    assert_ok(&keys);
    let key_body = public_key.split_whitespace().nth(1).unwrap_or(&public_key);
    assert!(stdout(&keys).contains(key_body), "{}\nwanted {public_key}", stdout(&keys));

    runtime.block_on(async {
        let c = demo_client(&home).await;
        c.compute(Method::DELETE, &format!("/servers/{id}"), None).await.unwrap();
        c.wait_for(&id, "DELETED", Duration::from_secs(120)).await.unwrap();
    });
    let status = up.stop().expect("novabox up stops on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", up.log());
}

/// An unreachable mirror is refused at the first step, in words, with nothing left behind.
#[test]
fn image_build_refuses_an_unreachable_mirror() {
    let home = TestHome::new();
    let mirror = format!("http://127.0.0.1:{}/debian", common::free_port());
    let out = common::run(
        home.novabox()
            .args(["image", "build", "debian", "--no-import"])
            .env("NOVABOX_DEBIAN_MIRROR", &mirror)
            .env("NOVABOX_IMAGE_CACHE", home.path().join("cache")),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("the Debian mirror {mirror} cannot be reached")), "{}", stderr(&out));
    let left: Vec<_> = std::fs::read_dir(home.path().join("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "debs")
        .collect();
    assert!(left.is_empty(), "a failed build left {left:?}");
}
