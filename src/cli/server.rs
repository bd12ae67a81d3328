//! `novabox server ...`: a thin client of the compute API, as the demo user (or `--admin`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use novabox::client::{Client, Resource};
use novabox::config::Config;
use novabox::secrets::Secrets;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Act as the admin user (in the admin project) instead of demo
    #[arg(long, global = true)]
    pub admin: bool,
    /// Print JSON
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: ServerCommand,
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Boot a server
    Create {
        name: String,
        /// Image name or id
        #[arg(long)]
        image: String,
        /// Flavor name or id
        #[arg(long, default_value = "m1.nano")]
        flavor: String,
        /// Network name or id (default: the default network)
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        key_name: Option<String>,
        /// Wait until ACTIVE
        #[arg(long)]
        wait: bool,
    },
    /// List servers
    List,
    /// Show one server
    Show { server: String },
    /// Delete a server
    Delete {
        server: String,
        /// Wait until it is gone
        #[arg(long)]
        wait: bool,
    },
    /// Print the server's console log
    ConsoleLog {
        server: String,
        /// Only the last N lines
        #[arg(long)]
        lines: Option<usize>,
    },
    /// Stop a server
    Stop { server: String },
    /// Start a stopped server
    Start { server: String },
    /// Reboot a server
    Reboot {
        server: String,
        #[arg(long)]
        hard: bool,
    },
}

pub async fn login(global: &GlobalArgs, admin: bool) -> anyhow::Result<Client> {
    let home = super::home(global)?;
    let config = Config::load(&home.config_file())?;
    let secrets = Secrets::load(&home.secrets_file())?
        .with_context(|| format!("{} is missing: run `novabox init`", home.secrets_file().display()))?;
    let (user, password) = if admin { ("admin", &secrets.admin_password) } else { ("demo", &secrets.demo_password) };
    Ok(Client::login(&config.auth_url(), user, password, user).await?)
}

/// Adds what novabox knows of a server beyond nova's body, from this home's database: the
/// user-mode ssh forward (`novabox:ssh_forward`), which standard clients must not see in the API.
pub(super) fn with_local_facts(global: &GlobalArgs, mut server: Value) -> Value {
    let forward = (|| -> anyhow::Result<Option<String>> {
        let home = super::home(global)?;
        let db = novabox::db::Db::open(&home.db_file(), novabox::db::OpenOptions::default())?;
        let id = server["id"].as_str().unwrap_or_default();
        Ok(db.instance_by_uuid(id, false)?.and_then(|i| i.ssh_forward))
    })();
    match forward {
        Ok(forward) => server["novabox:ssh_forward"] = json!(forward),
        Err(e) => tracing::debug!(error = %e, "no local facts for this server"),
    }
    server
}

fn print_server(s: &Value, json_out: bool) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
        return;
    }
    let addresses: Vec<String> = s["addresses"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(net, ips)| {
            let ips: Vec<&str> = ips.as_array().into_iter().flatten().filter_map(|i| i["addr"].as_str()).collect();
            format!("{net}={}", ips.join(","))
        })
        .collect();
    println!("id        {}", s["id"].as_str().unwrap_or_default());
    println!("name      {}", s["name"].as_str().unwrap_or_default());
    println!("status    {}", s["status"].as_str().unwrap_or_default());
    println!("task      {}", s["OS-EXT-STS:task_state"].as_str().unwrap_or("-"));
    println!("flavor    {}", s["flavor"]["original_name"].as_str().unwrap_or_default());
    println!("addresses {}", addresses.join("; "));
    if let Some(ssh) = s["novabox:ssh_forward"].as_str() {
        println!("ssh       {ssh} (forwarded to the guest's port 22)");
    }
    if let Some(f) = s["fault"]["message"].as_str() {
        println!("fault     {f}");
    }
}

pub fn run(global: &GlobalArgs, args: ServerArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_async(global, args))
}

async fn run_async(global: &GlobalArgs, args: ServerArgs) -> anyhow::Result<ExitCode> {
    let client = login(global, args.admin).await?;
    let wait = Duration::from_secs(600);
    match args.command {
        ServerCommand::Create { name, image, flavor, network, key_name, wait: do_wait } => {
            let image_id = client.find_id(Resource::Image, &image).await?;
            let flavor_id = client.find_id(Resource::Flavor, &flavor).await?;
            let networks = match network {
                Some(n) => json!([{ "uuid": client.find_id(Resource::Network, &n).await? }]),
                None => json!("auto"),
            };
            let mut server = json!({"name": name, "imageRef": image_id, "flavorRef": flavor_id, "networks": networks});
            if let Some(k) = key_name {
                server["key_name"] = json!(k);
            }
            let created = client.compute(Method::POST, "/servers", Some(json!({ "server": server }))).await?;
            let id = created["server"]["id"].as_str().unwrap_or_default().to_string();
            let shown = if do_wait {
                client.wait_for(&id, "ACTIVE", wait).await?
            } else {
                client.compute(Method::GET, &format!("/servers/{id}"), None).await?["server"].clone()
            };
            print_server(&with_local_facts(global, shown), args.json);
        }
        ServerCommand::List => {
            let list = client.compute(Method::GET, "/servers/detail", None).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&list["servers"])?);
            } else {
                println!("{:<36}  {:<20}  {:<8}  addresses", "id", "name", "status");
                for s in list["servers"].as_array().into_iter().flatten() {
                    let addrs: Vec<&str> = s["addresses"]
                        .as_object()
                        .into_iter()
                        .flat_map(|o| o.values())
                        .flat_map(|v| v.as_array().into_iter().flatten())
                        .filter_map(|a| a["addr"].as_str())
                        .collect();
                    println!(
                        "{:<36}  {:<20}  {:<8}  {}",
                        s["id"].as_str().unwrap_or_default(),
                        s["name"].as_str().unwrap_or_default(),
                        s["status"].as_str().unwrap_or_default(),
                        addrs.join(",")
                    );
                }
            }
        }
        ServerCommand::Show { server } => {
            print_server(&with_local_facts(global, client.find_server(&server).await?), args.json)
        }
        ServerCommand::Delete { server, wait: do_wait } => {
            let s = client.find_server(&server).await?;
            let id = s["id"].as_str().unwrap_or_default();
            client.compute(Method::DELETE, &format!("/servers/{id}"), None).await?;
            if do_wait {
                client.wait_for(id, "DELETED", wait).await?;
            }
            println!("deleted {id}");
        }
        ServerCommand::ConsoleLog { server, lines } => {
            let s = client.find_server(&server).await?;
            let id = s["id"].as_str().unwrap_or_default();
            let body = json!({"os-getConsoleOutput": {"length": lines.map(|l| l as i64).unwrap_or(-1)}});
            let out = client.compute(Method::POST, &format!("/servers/{id}/action"), Some(body)).await?;
            print!("{}", out["output"].as_str().unwrap_or_default());
        }
        ServerCommand::Stop { server } => server_action(&client, &server, json!({"os-stop": null})).await?,
        ServerCommand::Start { server } => server_action(&client, &server, json!({"os-start": null})).await?,
        ServerCommand::Reboot { server, hard } => {
            let body = json!({"reboot": {"type": if hard { "HARD" } else { "SOFT" }}});
            server_action(&client, &server, body).await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn server_action(client: &Client, server: &str, body: Value) -> anyhow::Result<()> {
    let s = client.find_server(server).await?;
    let id = s["id"].as_str().unwrap_or_default();
    client.compute(Method::POST, &format!("/servers/{id}/action"), Some(body)).await?;
    println!("accepted");
    Ok(())
}
