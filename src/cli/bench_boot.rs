//! `novabox bench boot`: N servers booted by C concurrent clients through the REST API on the
//! fake driver, against a `novabox up` in its own temporary home (a child process, measured
//! from outside as a user would see it).

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};

use novabox::client::Client;

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Servers to boot
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub servers: usize,
    /// Concurrent API clients
    #[arg(short = 'c', long, default_value_t = 16)]
    pub concurrency: usize,
    /// Message bus of the stack under test
    #[arg(long, default_value = "local")]
    pub bus: String,
}

/// The stack under test, stopped by pid when dropped.
pub(super) struct Stack {
    pub(super) child: Child,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = novabox::supervise::stop_pid(self.child.id() as i32, Duration::from_secs(20));
        let _ = self.child.wait();
    }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU time (user + system) the process has used so far. Unlike wall-clock throughput it does not
/// depend on what else the machine runs, so it compares builds measured on a busy machine.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of proc_pid_stat(5): 11 and 12 counted from the state.
    let hz = clock_ticks_per_sec();
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / hz)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

pub(super) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Initializes `home` for the fake driver, applies `config_edits` (each `from` replaced by its
/// `to` in novabox.toml) and starts `up`.
pub(super) fn start_stack(
    home: &Path,
    bus: &str,
    config_edits: &[(&str, &str)],
) -> anyhow::Result<(Stack, Value, Duration)> {
    let exe = std::env::current_exe()?;
    let port = free_port()?;
    let bus_port = free_port()?;
    let init = Command::new(&exe)
        .arg("--home")
        .arg(home)
        .args(["init", "--yes", "--no-install", "--no-boot-probe", "--driver", "fake", "--bus", bus])
        // Room for thousands of ports; the fake driver plumbs nothing, so no host route is touched.
        .args(["--cidr", "10.200.0.0/16", "--network-mode", "user"])
        .args(["--api-port", &port.to_string(), "--bus-port", &bus_port.to_string()])
        .arg("--clouds-yaml")
        .arg(home.join("clouds.yaml"))
        .output()?;
    if !init.status.success() {
        bail!("init failed: {}", String::from_utf8_lossy(&init.stderr));
    }
    if !config_edits.is_empty() {
        let file = home.join("novabox.toml");
        let mut text = std::fs::read_to_string(&file)?;
        for (from, to) in config_edits {
            if !text.contains(from) {
                bail!("{from:?} is not in {}", file.display());
            }
            text = text.replace(from, to);
        }
        std::fs::write(&file, text)?;
    }
    let started = Instant::now();
    let mut child = Command::new(&exe)
        .arg("--home")
        .arg(home)
        .args(["up", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let took = started.elapsed();
    let ready: Value = serde_json::from_str(&line).with_context(|| format!("up did not get ready: {line:?}"))?;
    Ok((Stack { child }, ready, took))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn run(args: BootArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.servers == 0 || args.concurrency == 0 {
        bail!("-n and -c must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    let (stack, ready, up_took) = start_stack(dir.path(), &args.bus, &[])?;
    let pid = stack.child.id();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let auth = ready["auth_url"].as_str().context("no auth_url")?.to_string();
        let pw = |u: &str| ready["credentials"][u]["password"].as_str().unwrap_or_default().to_string();
        let admin = Client::login(&auth, "admin", &pw("admin"), "admin").await?;
        let demo = Arc::new(Client::login(&auth, "demo", &pw("demo"), "demo").await?);
        // Let the demo project hold all the servers, and give them an image to boot.
        let projects = admin.request_identity("/projects").await?;
        let demo_id = projects["projects"]
            .as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == "demo"))
            .and_then(|p| p["id"].as_str())
            .context("no demo project")?
            .to_string();
        let n = args.servers as i64;
        admin
            .compute(
                Method::PUT,
                &format!("/os-quota-sets/{demo_id}"),
                Some(json!({"quota_set": {"instances": n, "cores": n, "ram": n * 64}})),
            )
            .await?;
        // Each server has a port: neutron's port quota (500 by default) must hold them too.
        admin.network(Method::PUT, &format!("/quotas/{demo_id}"), Some(json!({"quota": {"port": -1}}))).await?;
        let image = admin
            .image(
                Method::POST,
                "/images",
                Some(json!({"name": "bench", "disk_format": "raw", "container_format": "bare", "visibility": "public"})),
            )
            .await?;
        let image_id = image["id"].as_str().context("no image id")?.to_string();
        admin.upload_image(&image_id, vec![0u8; 1 << 20]).await?;
        let idle_rss = rss_mib(pid);

        // Boot.
        let cpu_before = cpu_time(pid);
        let started = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let (demo, next, image_id) = (demo.clone(), next.clone(), image_id.clone());
            let total = args.servers;
            tasks.push(tokio::spawn(async move {
                let mut out: Vec<(String, Duration)> = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        return Ok::<_, anyhow::Error>(out);
                    }
                    let t0 = Instant::now();
                    let body = json!({"server": {"name": format!("bench-{i}"), "imageRef": image_id, "flavorRef": "42", "networks": "auto"}});
                    let created = demo.compute(Method::POST, "/servers", Some(body)).await?;
                    let id = created["server"]["id"].as_str().context("no id")?.to_string();
                    demo.wait_for(&id, "ACTIVE", Duration::from_secs(120)).await?;
                    out.push((id, t0.elapsed()));
                }
            }));
        }
        let mut ids = Vec::new();
        let mut latencies = Vec::new();
        for t in tasks {
            for (id, d) in t.await?? {
                ids.push(id);
                latencies.push(d);
            }
        }
        let boot_wall = started.elapsed();
        let boot_cpu = cpu_time(pid).saturating_sub(cpu_before);
        let active_rss = rss_mib(pid);
        latencies.sort();

        // Delete.
        let started = Instant::now();
        let ids = Arc::new(ids);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let (demo, next, ids) = (demo.clone(), next.clone(), ids.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(id) = ids.get(i) else { return Ok::<_, anyhow::Error>(()) };
                    demo.compute(Method::DELETE, &format!("/servers/{id}"), None).await?;
                    demo.wait_for(id, "DELETED", Duration::from_secs(120)).await?;
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        let delete_wall = started.elapsed();

        println!("novabox bench boot: {} servers, {} concurrent clients, fake driver, {} bus", args.servers, args.concurrency, args.bus);
        println!("  up -> API ready        {:>8.0} ms", up_took.as_secs_f64() * 1000.0);
        println!("  boots/s                {:>8.1}", args.servers as f64 / boot_wall.as_secs_f64());
        println!("  create->ACTIVE p50     {:>8.1} ms", percentile(&latencies, 0.50).as_secs_f64() * 1000.0);
        println!("  create->ACTIVE p95     {:>8.1} ms", percentile(&latencies, 0.95).as_secs_f64() * 1000.0);
        println!("  stack CPU per boot     {:>8.2} ms", boot_cpu.as_secs_f64() * 1000.0 / args.servers as f64);
        println!("  delete all             {:>8.0} ms ({:.1} deletes/s)", delete_wall.as_secs_f64() * 1000.0, args.servers as f64 / delete_wall.as_secs_f64());
        println!("  stack RSS idle         {idle_rss:>8.1} MiB");
        println!("  stack RSS {:>5} ACTIVE {active_rss:>8.1} MiB", args.servers);
        drop(stack);
        Ok(std::process::ExitCode::SUCCESS)
    })
}
