//! `novabox image build debian`: builds a Debian cloud image from Debian's packages (see
//! `novabox::image_build`), or finds it in the cache, and imports it into the image service as
//! three images, as DevStack stores a UEC image: `NAME-kernel` (aki), `NAME-ramdisk` (ari) and
//! `NAME` (the root disk, qcow2 or raw) whose `kernel_id`/`ramdisk_id` name the other two.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};

use novabox::image_build::{self, DiskFormat, Progress, Spec};

use super::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum BuildCommand {
    /// A Debian cloud image: cloud kernel, cloud-init (ConfigDrive, OpenStack), openssh-server,
    /// qemu-guest-agent and a `debian` user without password; built with mmdebstrap, cached by its inputs
    Debian(DebianArgs),
}

#[derive(Debug, Args)]
pub struct DebianArgs {
    /// Debian suite
    #[arg(long, default_value = "bookworm")]
    pub suite: String,
    /// Root disk size (at least 1G)
    #[arg(long, default_value = "2G")]
    pub size: String,
    /// Extra packages, comma-separated
    #[arg(long, value_delimiter = ',')]
    pub packages: Vec<String>,
    /// Image name [default: debian-SUITE]
    #[arg(long)]
    pub name: Option<String>,
    /// Disk format of the root disk image
    #[arg(long, default_value = "qcow2")]
    pub format: String,
    /// Visible to every project (imported as the admin user, as glance only lets admins publish)
    #[arg(long)]
    pub public: bool,
    /// Only build (or find in the cache) and print the files; import nothing
    #[arg(long)]
    pub no_import: bool,
}

pub fn run(global: &GlobalArgs, cmd: BuildCommand) -> anyhow::Result<ExitCode> {
    let BuildCommand::Debian(args) = cmd;
    // Everything the user typed is checked before anything is built.
    let spec = Spec::new(&args.suite, &args.size, &args.packages)?;
    let format = DiskFormat::parse(&args.format)?;
    let name = args.name.clone().unwrap_or_else(|| format!("debian-{}", spec.suite));
    if name.trim().is_empty() || name.len() > 240 {
        anyhow::bail!("the image name must have 1 to 240 characters");
    }
    let qemu_img = novabox::hostpkgs::find_program("qemu-img")
        .context("qemu-img is needed to convert the disk: sudo apt-get install qemu-utils")?;
    let home = super::home(global)?;
    let cache = image_build::cache_root(home.root());

    let started = Instant::now();
    let pb = ProgressBar::new(image_build::STEPS);
    if let Ok(style) = ProgressStyle::with_template("{elapsed:>4} [{bar:20}] {pos}/{len} {msg}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(format!("debian {} {} ({})", spec.suite, args.size, spec.key()));
    let built = image_build::build(&spec, &cache, |p| match p {
        Progress::Step(n, text) => {
            pb.set_position(n);
            pb.set_message(text.to_string());
        }
        Progress::Line(line) => {
            if global.verbose > 0 {
                pb.println(line);
            }
        }
    });
    pb.finish_and_clear();
    let built = built?;
    let disk = image_build::disk_in(&built, format, &qemu_img)?;
    let how = if built.cached { "cached" } else { "built" };
    println!("{how} {} in {:.0?} ({})", built.dir.display(), started.elapsed(), spec.key());
    if args.no_import {
        println!("  disk    {}", disk.display());
        println!("  kernel  {}", built.kernel.display());
        println!("  ramdisk {}", built.initrd.display());
        return Ok(ExitCode::SUCCESS);
    }

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (id, new) = runtime.block_on(import(global, &args, &spec, format, &name, &built, &disk))?;
    let what = if new { "imported" } else { "already imported (same build)" };
    println!("{what} {name} ({id}): log in as {} with `novabox ssh SERVER`", image_build::DEFAULT_USER);
    Ok(ExitCode::SUCCESS)
}

async fn import(
    global: &GlobalArgs,
    args: &DebianArgs,
    spec: &Spec,
    format: DiskFormat,
    name: &str,
    built: &image_build::Built,
    disk: &Path,
) -> anyhow::Result<(String, bool)> {
    let client = super::server::login(global, args.public).await?;
    let visibility = if args.public { "public" } else { "private" };
    // The same build already imported under this name is the result; a second copy would only
    // make the name ambiguous for `server create --image`.
    let same =
        client.image(Method::GET, &format!("/images?name={}", novabox::api::listing::encode(name)), None).await?;
    let found = same["images"].as_array().into_iter().flatten().find(|i| {
        i["novabox_build"] == spec.key().as_str() && i["status"] == "active" && i["visibility"] == visibility
    });
    if let Some(id) = found.and_then(|i| i["id"].as_str()) {
        return Ok((id.to_string(), false));
    }
    let mut made: Vec<String> = Vec::new();
    let result = async {
        let kernel = one(&client, &format!("{name}-kernel"), "aki", visibility, json!({}), &built.kernel).await?;
        made.push(kernel.clone());
        let ramdisk = one(&client, &format!("{name}-ramdisk"), "ari", visibility, json!({}), &built.initrd).await?;
        made.push(ramdisk.clone());
        let extra = json!({
            "kernel_id": kernel,
            "ramdisk_id": ramdisk,
            "os_command_line": image_build::CMDLINE,
            "os_distro": "debian",
            "os_version": spec.os_version(),
            "os_admin_user": image_build::DEFAULT_USER,
            "hw_qemu_guest_agent": "yes",
            "hw_disk_bus": "virtio",
            "min_disk": spec.min_disk_gb(),
            // systemd, cloud-init and sshd want more than the test guest's 128 MB.
            "min_ram": 512,
            "novabox_build": spec.key(),
        });
        let id = one(&client, name, format.as_str(), visibility, extra, disk).await?;
        made.push(id.clone());
        anyhow::Ok(id)
    }
    .await;
    if result.is_err() {
        // All three or none: a disk whose kernel is gone cannot boot.
        for id in made {
            if let Err(e) = client.image(Method::DELETE, &format!("/images/{id}"), None).await {
                eprintln!("warning: the half-imported image {id} could not be deleted: {e}");
            }
        }
    }
    result.map(|id| (id, true))
}

/// Creates one image with `extra` properties, uploads `file` and checks what was stored.
async fn one(
    client: &novabox::client::Client,
    name: &str,
    disk_format: &str,
    visibility: &str,
    extra: Value,
    file: &Path,
) -> anyhow::Result<String> {
    let container_format = if matches!(disk_format, "aki" | "ari") { disk_format } else { "bare" };
    let mut body = json!({"name": name, "disk_format": disk_format, "container_format": container_format, "visibility": visibility});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let created = client.image(Method::POST, "/images", Some(body)).await?;
    let id = created["id"].as_str().context("the image API answered an image without id")?.to_string();
    let md5 = md5_of(file)?;
    let size = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?.len();
    let stored = async {
        super::image::upload(client, &id, file, size).await?;
        super::image::verify_stored(client, &id, &md5).await
    }
    .await;
    if let Err(e) = stored {
        if let Err(d) = client.image(Method::DELETE, &format!("/images/{id}"), None).await {
            eprintln!("warning: the half-imported image {id} could not be deleted: {d}");
        }
        return Err(e);
    }
    Ok(id)
}

fn md5_of(file: &Path) -> anyhow::Result<String> {
    use md5::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut h = md5::Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", file.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
