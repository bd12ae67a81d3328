//! `novabox ssh SERVER [-- CMD...]`: logs in to a server with its keypair's private key,
//! through the user-mode ssh forward (`novabox:ssh_forward`) or else the guest's first
//! address, as the image's `os_admin_user`. It prints the ssh command before running it, so
//! the same login works without novabox.
//!
//! The private key is `--identity FILE`, else the one novabox kept when it generated the
//! keypair: `<home>/keys/<key_name>` (written by `novabox keypair create`). The guest's host
//! key is new on every boot (cloud-init makes it), so it is kept in a known_hosts file per
//! server under the home, never in the user's own.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use reqwest::Method;
use serde_json::Value;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct SshArgs {
    /// Server name or id
    pub server: String,
    /// Private key file [default: the home's copy of the server's generated keypair]
    #[arg(long, short = 'i', value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Login name [default: the image's os_admin_user, else root]
    #[arg(long, short = 'l')]
    pub user: Option<String>,
    /// The server belongs to the admin project
    #[arg(long)]
    pub admin: bool,
    /// Seconds ssh waits for the connection
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u32,
    /// The command to run in the guest (after `--`); none opens a shell
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Where novabox keeps the private key of a keypair it generated.
pub fn key_file(home: &novabox::home::Home, key_name: &str) -> PathBuf {
    home.root().join("keys").join(key_name)
}

/// Host and port to reach the guest's sshd: the forward, else the first fixed address.
fn target(server: &Value) -> Option<(String, u16)> {
    if let Some(fwd) = server["novabox:ssh_forward"].as_str() {
        let (host, port) = fwd.rsplit_once(':')?;
        return Some((host.to_string(), port.parse().ok()?));
    }
    let addrs = server["addresses"].as_object()?;
    let all = addrs.values().flat_map(|v| v.as_array().into_iter().flatten());
    let ip = all.filter(|a| a["version"] == 4 || a["version"].is_null()).find_map(|a| a["addr"].as_str())?;
    Some((ip.to_string(), 22))
}

/// The ssh arguments (without the program name).
fn ssh_args(host: &str, port: u16, user: &str, identity: &Path, known_hosts: &Path, timeout: u32) -> Vec<String> {
    let mut a: Vec<String> = vec!["-i".into(), identity.display().to_string(), "-p".into(), port.to_string()];
    for opt in [
        "IdentitiesOnly=yes".to_string(),
        "BatchMode=yes".to_string(),
        // A new guest has a new host key; it is remembered per server, in the home.
        "StrictHostKeyChecking=accept-new".to_string(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        format!("ConnectTimeout={timeout}"),
        "LogLevel=ERROR".to_string(),
    ] {
        a.push("-o".into());
        a.push(opt);
    }
    a.push(format!("{user}@{host}"));
    a
}

/// Quotes a word for the printed command line only (the command itself runs without a shell).
fn shell_word(w: &str) -> String {
    if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c)) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

pub fn run(global: &GlobalArgs, args: SshArgs) -> anyhow::Result<ExitCode> {
    let home = super::home(global)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (server, image) = runtime.block_on(async {
        let client = super::server::login(global, args.admin).await?;
        let server = client.find_server(&args.server).await?;
        let image_id = server["image"]["id"].as_str().unwrap_or_default().to_string();
        let image = if image_id.is_empty() {
            Value::Null
        } else {
            client.image(Method::GET, &format!("/images/{image_id}"), None).await.unwrap_or(Value::Null)
        };
        anyhow::Ok((server, image))
    })?;
    let server = super::server::with_local_facts(global, server);
    let name = server["name"].as_str().unwrap_or_default();
    let id = server["id"].as_str().unwrap_or_default();
    if server["status"] != "ACTIVE" {
        bail!("server {name} is {}, not ACTIVE", server["status"].as_str().unwrap_or("unknown"));
    }
    let identity = match (&args.identity, server["key_name"].as_str()) {
        (Some(f), _) => f.clone(),
        (None, Some(k)) => {
            let f = key_file(&home, k);
            if !f.is_file() {
                bail!(
                    "server {name}'s keypair {k:?} has no private key in {} (novabox keeps only keys it generated); pass --identity FILE",
                    f.display()
                );
            }
            f
        }
        (None, None) => bail!("server {name} was booted without a keypair; pass --identity FILE"),
    };
    if !identity.is_file() {
        bail!("the identity file {} does not exist", identity.display());
    }
    let (host, port) =
        target(&server).with_context(|| format!("server {name} has neither an ssh forward nor an address"))?;
    let user = args
        .user
        .clone()
        .or_else(|| image["os_admin_user"].as_str().map(str::to_string))
        .unwrap_or_else(|| "root".to_string());
    let known = home.root().join("keys").join(format!("known_hosts-{id}"));
    if let Some(dir) = known.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let ssh = novabox::hostpkgs::find_program("ssh").context("ssh is missing: sudo apt-get install openssh-client")?;
    let mut argv = ssh_args(&host, port, &user, &identity, &known, args.connect_timeout);
    if !args.command.is_empty() {
        argv.push("--".into());
        argv.extend(args.command.iter().cloned());
    }
    let printed: Vec<String> = argv.iter().map(|w| shell_word(w)).collect();
    eprintln!("+ ssh {}", printed.join(" "));
    let status = std::process::Command::new(&ssh)
        .args(&argv)
        .status()
        .with_context(|| format!("cannot run {}", ssh.display()))?;
    // ssh's own exit code (the command's, or 255 for ssh's failures) is the answer.
    Ok(ExitCode::from(status.code().map(|c| c as u8).unwrap_or(super::EXIT_FAILURE)))
}

/// `novabox keypair ...`: the read commands, and `create`, which keeps a generated private key
/// where `novabox ssh` finds it (nova hands it out once and never again).
#[derive(Debug, clap::Subcommand)]
pub enum KeypairCommand {
    #[command(flatten)]
    Read(super::resources::ReadCommand),
    /// Create a keypair (generated unless --public-key); a generated private key is kept in
    /// <home>/keys/NAME, mode 0600, for `novabox ssh`
    Create {
        name: String,
        /// Import this public key file instead of generating a pair
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        /// Create it for the admin user
        #[arg(long)]
        admin: bool,
    },
}

pub fn keypair(global: &GlobalArgs, cmd: KeypairCommand) -> anyhow::Result<ExitCode> {
    let (name, public_key, admin) = match cmd {
        KeypairCommand::Read(c) => return super::resources::run(global, novabox::client::Resource::Keypair, c),
        KeypairCommand::Create { name, public_key, admin } => (name, public_key, admin),
    };
    let home = super::home(global)?;
    let file = key_file(&home, &name);
    // Checked first: a keypair created whose private key cannot be kept would be lost.
    if public_key.is_none() && file.exists() {
        bail!("{} already exists; remove it or pass --public-key", file.display());
    }
    let public = match &public_key {
        Some(f) => Some(std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let created = runtime.block_on(async {
        let client = super::server::login(global, admin).await?;
        let mut body = serde_json::json!({"keypair": {"name": name}});
        if let Some(p) = &public {
            body["keypair"]["public_key"] = serde_json::json!(p.trim());
        }
        anyhow::Ok(client.compute(Method::POST, "/os-keypairs", Some(body)).await?)
    })?;
    let kp = &created["keypair"];
    if let Some(private) = kp["private_key"].as_str() {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        novabox::home::write_atomic(&file, private.as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", file.display()))?;
        println!(
            "created keypair {name} ({}); private key in {}",
            kp["fingerprint"].as_str().unwrap_or(""),
            file.display()
        );
    } else {
        println!("imported keypair {name} ({})", kp["fingerprint"].as_str().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_forward_wins_over_the_address() {
        let mut s = json!({"addresses": {"private": [{"addr": "10.0.0.5", "version": 4}]}});
        assert_eq!(target(&s), Some(("10.0.0.5".to_string(), 22)));
        s["novabox:ssh_forward"] = json!("127.0.0.1:40022");
        assert_eq!(target(&s), Some(("127.0.0.1".to_string(), 40022)));
        assert_eq!(target(&json!({"addresses": {}})), None);
    }

    #[test]
    fn the_printed_command_quotes_what_a_shell_would_split() {
        let a = ssh_args("127.0.0.1", 2222, "debian", Path::new("/k/id"), Path::new("/k/kh"), 5);
        let line: Vec<String> = a.iter().map(|w| shell_word(w)).collect();
        let line = line.join(" ");
        assert!(line.starts_with("-i /k/id -p 2222 -o IdentitiesOnly=yes"), "{line}");
        assert!(line.ends_with("debian@127.0.0.1"), "{line}");
        assert_eq!(shell_word("echo hi; id"), "'echo hi; id'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
