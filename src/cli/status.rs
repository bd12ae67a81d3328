//! `novabox status`: what runs for this home, read from its pid file, ready file and database,
//! so it works (and says so) when the stack is down.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use serde_json::{json, Value};

use novabox::db::instances::InstanceFilter;
use novabox::db::{Db, OpenOptions};

use super::GlobalArgs;

/// `status` exit code when the stack of this home is not running (everything else printed).
pub const EXIT_NOT_RUNNING: u8 = 4;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// Seconds since an API timestamp (`2026-11-27T23:59:01Z`), when it parses.
fn age_secs(ts: &str) -> Option<i64> {
    let t = chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%SZ").ok()?;
    Some((novabox::clock::now().naive_utc() - t).num_seconds())
}

/// Bytes used under `dir`, not following symlinks.
fn disk_used(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_used(&e.path()),
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                // Allocated blocks, so sparse qcow2 files count as what they take.
                m.blocks() * 512
            }
            Err(_) => 0,
        })
        .sum()
}

pub fn run(global: &GlobalArgs, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let home = super::home(global)?;
    if !home.is_initialized() {
        if args.json {
            println!("{}", json!({"home": home.root(), "initialized": false, "running": false}));
        } else {
            println!("{} is not initialized: run `novabox up` (or `novabox init`)", home.root().display());
        }
        return Ok(ExitCode::from(EXIT_NOT_RUNNING));
    }
    let config = super::load_config(&home)?;
    let pid = super::up::running(&home)?;
    let ready: Value = std::fs::read_to_string(home.run_dir().join("ready.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let faults = pid.is_some() && ready["faults"] == true;
    if faults {
        // The stack's time, so heartbeat ages and up/down agree with what it sees.
        novabox::clock::global().load(&novabox::clock::offset_file(&home));
    }
    let db = Db::open(&home.db_file(), OpenOptions::default())?;
    let down_after = config.compute.service_down_secs;
    let services: Vec<Value> = db
        .services()?
        .iter()
        .map(|s| {
            let age = s.last_seen_at.as_deref().and_then(age_secs);
            json!({
                "binary": s.binary, "host": s.host, "disabled": s.disabled,
                "up": pid.is_some() && novabox::db::services::is_up(s, down_after),
                "heartbeat_age_secs": age,
            })
        })
        .collect();
    // A guest runs under its host's accelerator (kvm or tcg; "none" for the fake driver).
    let accel_of: std::collections::HashMap<String, String> =
        db.compute_nodes()?.into_iter().map(|n| (n.host, n.report.accel)).collect();
    let guests: Vec<Value> = db
        .list_instances(&InstanceFilter::default())?
        .iter()
        .map(|i| {
            let addresses = novabox::conductor::addresses(&db, &i.uuid).unwrap_or(Value::Null);
            let accel = i.host.as_ref().and_then(|h| accel_of.get(h));
            // Only guests of this host have files here; another host's are not counted.
            let dir = home.instances_dir().join(&i.uuid);
            let disk = dir.is_dir().then(|| disk_used(&dir));
            json!({
                "id": i.uuid, "name": i.display_name, "vm_state": i.vm_state, "task_state": i.task_state,
                "host": i.host, "accel": accel, "addresses": addresses, "disk_used_bytes": disk,
                "ssh": i.ssh_forward,
            })
        })
        .collect();
    let (volume_count, volume_gb) = db.volume_totals()?;
    let bus = if ready["bus"].is_string() {
        ready["bus"].clone()
    } else {
        json!(format!("{:?}", novabox::bus::resolve_kind(&config)).to_lowercase())
    };
    let broker_pid = std::fs::read_to_string(home.run_dir().join("rabbitmq.pid")).ok().map(|s| s.trim().to_string());
    let doc = json!({
        "home": home.root(),
        "initialized": true,
        "running": pid.is_some(),
        "pid": pid,
        "bus": bus,
        "broker_pid": broker_pid,
        "driver": ready["driver"],
        "network": ready["network"],
        "endpoints": {"api": ready["api_url"], "auth_url": config.auth_url()},
        "services": services,
        "guests": guests,
        "volumes": {"count": volume_count, "gigabytes": volume_gb},
        "disk_used_bytes": disk_used(home.root()),
        "logs": home.logs_dir().join("novabox.log"),
        "faults": {
            "enabled": faults,
            "clock_offset_secs": novabox::clock::global().offset().as_secs(),
        },
    });
    if args.json {
        println!("{doc}");
    } else {
        print_human(&doc);
    }
    Ok(if pid.is_some() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_RUNNING) })
}

fn print_human(doc: &Value) {
    let s = |v: &Value| {
        v.as_str().map(str::to_string).unwrap_or_else(|| if v.is_null() { "-".into() } else { v.to_string() })
    };
    match doc["pid"].as_i64() {
        Some(pid) => println!("novabox is running (pid {pid}) for {}", s(&doc["home"])),
        None => println!("novabox is not running for {} (`novabox up` starts it)", s(&doc["home"])),
    }
    println!("  bus       {}", s(&doc["bus"]));
    if !doc["broker_pid"].is_null() {
        println!("  broker    pid {}", s(&doc["broker_pid"]));
    }
    println!("  driver    {}", s(&doc["driver"]));
    println!("  network   {}", s(&doc["network"]));
    println!("  api       {}", s(&doc["endpoints"]["api"]));
    println!("  auth_url  {}", s(&doc["endpoints"]["auth_url"]));
    println!("  logs      {}", s(&doc["logs"]));
    println!("  disk      {:.1} MiB", doc["disk_used_bytes"].as_f64().unwrap_or(0.0) / 1048576.0);
    if doc["faults"]["enabled"] == true {
        println!(
            "  faults    ENABLED: admins can inject failures (`novabox fault list`); test clock +{} s (docs/faults.md)",
            doc["faults"]["clock_offset_secs"].as_u64().unwrap_or(0)
        );
    }
    println!("services:");
    for svc in doc["services"].as_array().into_iter().flatten() {
        let state = if svc["up"] == true { "up" } else { "down" };
        let age = svc["heartbeat_age_secs"].as_i64().map(|a| format!("{a}s ago")).unwrap_or_else(|| "never".into());
        println!("  {:<20} {:<12} {:<5} heartbeat {age}", s(&svc["binary"]), s(&svc["host"]), state);
    }
    println!(
        "  volumes   {} ({} GiB)",
        doc["volumes"]["count"].as_i64().unwrap_or(0),
        doc["volumes"]["gigabytes"].as_i64().unwrap_or(0)
    );
    println!("guests:");
    let guests = doc["guests"].as_array().cloned().unwrap_or_default();
    if guests.is_empty() {
        println!("  (none)");
    }
    for g in guests {
        let addrs: Vec<String> = g["addresses"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(net, ips)| {
                ips.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["addr"].as_str())
                    .map(move |a| format!("{net}={a}"))
            })
            .collect();
        let disk = g["disk_used_bytes"].as_f64().map(|b| format!("{:.1} MiB", b / 1048576.0));
        println!(
            "  {}  {:<16} {:<9} {:<12} {:<5} {:>10}  {}",
            s(&g["id"]),
            s(&g["name"]),
            s(&g["vm_state"]),
            s(&g["task_state"]),
            s(&g["accel"]),
            disk.unwrap_or_else(|| "-".into()),
            addrs.join(",")
        );
        if let Some(ssh) = g["ssh"].as_str() {
            println!("      ssh {ssh}");
        }
    }
}
