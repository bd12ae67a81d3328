//! `novabox bench guest`: how much novabox adds to a guest's boot (issue 7).
//!
//! In a throwaway home (qemu driver, in-process bus, accelerator from the doctor), the stack
//! runs in this process and the test guest `tiny` boots through the REST API. Measured: the
//! wall time from `POST /servers` to `novabox-guest: ready` on the console (read through the
//! API, as a user would). Then the same guest is stopped and the exact qemu command line the
//! driver saved is run by hand, timed from exec to the same marker: that is the bare qemu boot
//! with the same kernel, initramfs, disks, config drive and accelerator. The difference is
//! novabox's overhead: API, scheduling, bus, disk and config-drive preparation, polling.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};

use novabox::client::Client;
use novabox::config::Config;
use novabox::home::Home;
use novabox::secrets::Secrets;

use super::init::{AccelArg, BusArg, DriverArg, InitArgs, NetworkModeArg};
use super::GlobalArgs;

const READY: &str = "novabox-guest: ready";
const TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Args)]
pub struct GuestArgs {
    /// Accelerator: auto (the doctor's choice), kvm, tcg
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Flavor to boot
    #[arg(long, default_value = "m1.tiny")]
    pub flavor: String,
    /// Keep the throwaway home (its logs, console and disks) instead of removing it
    #[arg(long)]
    pub keep: bool,
}

/// `novabox bench guest`.
pub fn run(global: &GlobalArgs, args: GuestArgs) -> anyhow::Result<ExitCode> {
    if !novabox::compute::virt::qemu::QemuDriver::available() {
        bail!("the guest benchmark needs qemu-system-x86_64 and qemu-img: sudo apt-get install qemu-system-x86 qemu-utils");
    }
    // Short: the guest's console and QMP sockets live under it, and a unix socket path has
    // 107 bytes at most.
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("nbb-{}", &tag[..12]));
    let result = guest_in(global, &args, &dir);
    if args.keep {
        eprintln!("kept the benchmark home {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn guest_in(global: &GlobalArgs, args: &GuestArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    let home = Home::at(dir);
    home.create_dirs()?;
    // The user's built test guest saves a build (and a kernel download) when there is one.
    if let Ok(user_home) = super::home(global) {
        let built = user_home.images_dir().join(novabox::doctor::probe::TEST_IMAGE_DIR);
        let ours = home.images_dir().join(novabox::doctor::probe::TEST_IMAGE_DIR);
        if novabox::doctor::probe::TestImage::in_dir(&built).exists() {
            std::fs::create_dir_all(&ours)?;
            for f in ["vmlinuz", "initrd.img"] {
                std::fs::copy(built.join(f), ours.join(f)).with_context(|| format!("copying the test guest's {f}"))?;
            }
        }
    }
    let bench_global = GlobalArgs { home: Some(dir.to_path_buf()), sql_echo: false, verbose: global.verbose };
    let mut init = InitArgs::for_up(false, true);
    init.no_install = true;
    init.no_clouds_yaml = true;
    init.driver = Some(DriverArg::Qemu);
    init.bus = Some(BusArg::Local);
    // A benchmark must not build bridges on the host; the bare qemu run uses the same NIC.
    init.network_mode = Some(NetworkModeArg::User);
    init.accel = Some(args.accel);
    init.api_port = Some(novabox::supervise::free_port()?);
    eprintln!("preparing a throwaway home in {}", dir.display());
    let init_out = super::init::run(&bench_global, init)?;
    if init_out != ExitCode::SUCCESS {
        bail!("novabox init failed in the benchmark home");
    }
    let config = Arc::new(Config::load(&home.config_file())?);
    let secrets = Secrets::load(&home.secrets_file())?.context("the benchmark home has no secrets")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench(home, config, secrets, args))
}

async fn bench(home: Home, config: Arc<Config>, secrets: Secrets, args: &GuestArgs) -> anyhow::Result<ExitCode> {
    super::bench::with_stack(&home, &config, &secrets, |ready| async {
        measure(&home, &config, &secrets, args, ready.driver).await
    })
    .await
}

async fn measure(
    home: &Home,
    config: &Config,
    secrets: &Secrets,
    args: &GuestArgs,
    driver: &str,
) -> anyhow::Result<ExitCode> {
    if driver != "qemu" {
        bail!("the stack runs the {driver} driver, not qemu");
    }
    let client = Client::login(&config.auth_url(), "demo", &secrets.demo_password, "demo").await?;
    let image = find(&client.image(Method::GET, "/images", None).await?["images"], "tiny")?;
    let flavor = find(&client.compute(Method::GET, "/flavors", None).await?["flavors"], &args.flavor)?;
    let accel = novabox::doctor::effective_accel(home, config);
    let accel = format!("{accel:?}").to_lowercase();

    // 1. Through novabox.
    let body = json!({"server": {"name": "bench", "imageRef": image, "flavorRef": flavor, "networks": "auto"}});
    let start = Instant::now();
    let created = client.compute(Method::POST, "/servers", Some(body)).await?;
    let id = created["server"]["id"].as_str().context("no server id in the response")?.to_string();
    let mut active: Option<Duration> = None;
    loop {
        if active.is_none() {
            let s = client.compute(Method::GET, &format!("/servers/{id}"), None).await?;
            match s["server"]["status"].as_str() {
                Some("ACTIVE") => active = Some(start.elapsed()),
                Some("ERROR") => bail!("the server went to ERROR: {}", s["server"]["fault"]["message"]),
                _ => {}
            }
        }
        if active.is_some() {
            // The last lines are enough (the marker is the newest line when it comes) and keep
            // the polling cheap next to a guest that needs the CPU.
            let action = json!({"os-getConsoleOutput": {"length": 20}});
            let out = client.compute(Method::POST, &format!("/servers/{id}/action"), Some(action)).await?;
            if out["output"].as_str().unwrap_or_default().contains(READY) {
                break;
            }
        }
        if start.elapsed() > TIMEOUT {
            bail!("no {READY:?} on the console within {}s", TIMEOUT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let novabox_boot = start.elapsed();
    let active = active.unwrap_or(novabox_boot);

    // 2. The same machine by hand: stop the server, run its saved qemu command line.
    client.compute(Method::POST, &format!("/servers/{id}/action"), Some(json!({"os-stop": null}))).await?;
    client.wait_for(&id, "SHUTOFF", TIMEOUT).await?;
    let qemu_args = novabox::compute::virt::qemu::saved_args(&home.instances_dir(), &id)?;
    let instance_dir = home.instances_dir().join(&id);
    let bare = tokio::task::spawn_blocking(move || bare_boot(&instance_dir, &qemu_args)).await??;

    client.compute(Method::DELETE, &format!("/servers/{id}"), None).await?;
    client.wait_for(&id, "DELETED", TIMEOUT).await?;

    let overhead = novabox_boot.as_secs_f64() - bare.as_secs_f64();
    println!("guest boot, test guest `tiny` on {}, accel {accel}:", args.flavor);
    println!(
        "  novabox  POST /servers -> {READY:?}  {:>7.2} s  (ACTIVE after {:.2} s)",
        novabox_boot.as_secs_f64(),
        active.as_secs_f64()
    );
    println!("  bare     qemu-system-x86_64 exec -> {READY:?}  {:>7.2} s  (same command line)", bare.as_secs_f64());
    println!(
        "  overhead {:>+7.2} s ({:+.0}%)",
        overhead,
        if bare.is_zero() { 0.0 } else { 100.0 * overhead / bare.as_secs_f64() }
    );
    Ok(ExitCode::SUCCESS)
}

fn find(list: &Value, name: &str) -> anyhow::Result<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == name || i["id"] == name)
        .and_then(|i| i["id"].as_str())
        .map(str::to_string)
        .with_context(|| format!("no image or flavor named {name}"))
}

/// Runs qemu with `args` in `dir` and times it from exec to a new ready marker on the console
/// (the file is appended to, so only markers after the existing ones count); then stops it by
/// its pid.
fn bare_boot(dir: &Path, args: &[String]) -> anyhow::Result<Duration> {
    use std::os::unix::process::CommandExt;
    let console: PathBuf = dir.join("console.log");
    let count = || std::fs::read_to_string(&console).map(|t| t.matches(READY).count()).unwrap_or(0);
    let before = count();
    let qemu = novabox::hostpkgs::find_program("qemu-system-x86_64").context("qemu-system-x86_64 is missing")?;
    let start = Instant::now();
    let mut child = std::process::Command::new(qemu)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start qemu")?;
    let outcome = loop {
        if count() > before {
            break Ok(start.elapsed());
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(anyhow::anyhow!("the bare qemu exited ({status}) before the guest was ready"));
        }
        if start.elapsed() > TIMEOUT {
            break Err(anyhow::anyhow!("the bare qemu boot did not reach {READY:?} within {}s", TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = novabox::supervise::stop_pid(child.id() as i32, Duration::from_secs(5));
    let _ = child.wait();
    outcome
}
