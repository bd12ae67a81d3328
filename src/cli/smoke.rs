//! `novabox smoke`: boot one server, check it, delete it. Every step prints its time; the first
//! failing step is named with its reason and the command exits with [`EXIT_SMOKE_FAILED`].

use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};

use novabox::images::ImageStatus;

use super::GlobalArgs;

/// `smoke` exit code when a step failed (the step and the reason are printed).
pub const EXIT_SMOKE_FAILED: u8 = 5;

/// The image smoke uploads on the fake driver when the cloud has none.
pub const SMOKE_IMAGE: &str = "smoke-blob";

#[derive(Debug, Args)]
pub struct SmokeArgs {
    /// Seconds to wait for the server to become ACTIVE, and again for it to be gone
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

struct Failed;

async fn step<T, E: std::fmt::Display>(name: &str, f: impl Future<Output = Result<T, E>>) -> Result<T, Failed> {
    let started = Instant::now();
    match f.await {
        Ok(v) => {
            println!("ok    {name:<24} {:>6} ms", started.elapsed().as_millis());
            Ok(v)
        }
        Err(e) => {
            println!("FAIL  {name:<24} {:>6} ms: {e}", started.elapsed().as_millis());
            Err(Failed)
        }
    }
}

pub fn run(global: &GlobalArgs, args: SmokeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let started = Instant::now();
    let outcome = runtime.block_on(smoke(global, &args));
    match outcome {
        Ok(()) => {
            println!("smoke passed in {} ms", started.elapsed().as_millis());
            Ok(ExitCode::SUCCESS)
        }
        Err(Failed) => {
            eprintln!("smoke failed; `novabox logs` and `novabox status` show more");
            Ok(ExitCode::from(EXIT_SMOKE_FAILED))
        }
    }
}

async fn smoke(global: &GlobalArgs, args: &SmokeArgs) -> Result<(), Failed> {
    let timeout = Duration::from_secs(args.timeout);
    let client = step("login", super::server::login(global, false)).await?;
    let fake = super::home(global)
        .ok()
        .and_then(|h| std::fs::read_to_string(h.run_dir().join("ready.json")).ok())
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|r| r["driver"] == "fake");
    let image = step("find an image", async {
        let list = client.image(Method::GET, "/images", None).await?;
        let active =
            list["images"].as_array().into_iter().flatten().find(|i| i["status"] == ImageStatus::Active.as_str());
        if let Some(id) = active.and_then(|i| i["id"].as_str()) {
            return Ok(id.to_string());
        }
        if !fake {
            anyhow::bail!("no active image; upload one (`openstack image create --file ...`) and run smoke again");
        }
        // The fake driver boots anything, so a few bytes make a usable image; it is kept
        // (as `smoke-blob`) for the next run.
        let body = json!({"name": SMOKE_IMAGE, "disk_format": "raw", "container_format": "bare"});
        let created = client.image(Method::POST, "/images", Some(body)).await?;
        let id = created["id"].as_str().ok_or_else(|| anyhow::anyhow!("no id in {created}"))?.to_string();
        client.upload_image(&id, vec![0u8; 4096]).await?;
        Ok(id)
    })
    .await?;
    let flavor = step("find a flavor", async {
        let list = client.compute(Method::GET, "/flavors/detail", None).await?;
        let smallest = list["flavors"].as_array().into_iter().flatten().min_by_key(|f| f["ram"].as_i64().unwrap_or(0));
        smallest.and_then(|f| f["id"].as_str()).map(str::to_string).ok_or_else(|| anyhow::anyhow!("no flavor"))
    })
    .await?;
    let name = format!("smoke-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let id = step("create server", async {
        let body = json!({"server": {"name": name, "imageRef": image, "flavorRef": flavor, "networks": "auto"}});
        let created = client.compute(Method::POST, "/servers", Some(body)).await?;
        created["server"]["id"].as_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("no id in {created}"))
    })
    .await?;
    println!("      server {name} ({id})");
    let active: Value = step("wait for ACTIVE", client.wait_for(&id, "ACTIVE", timeout)).await?;
    step("check it", async {
        let has_host =
            active["OS-EXT-SRV-ATTR:host"].is_string() || active["hostId"].as_str().is_some_and(|h| !h.is_empty());
        let has_address = active["addresses"].as_object().is_some_and(|a| !a.is_empty());
        match (has_host, has_address) {
            (true, true) => Ok(()),
            (false, _) => Err(anyhow::anyhow!("ACTIVE but placed on no host")),
            (_, false) => Err(anyhow::anyhow!("ACTIVE but has no address on the default network")),
        }
    })
    .await?;
    step("delete server", client.compute(Method::DELETE, &format!("/servers/{id}"), None)).await?;
    step("wait until gone", client.wait_for(&id, "DELETED", timeout)).await?;
    Ok(())
}
