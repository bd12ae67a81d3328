//! `novabox image list|show` (see `resources`), and `novabox image import FILE|URL`: a disk image from a file or the web into the image
//! service, checked first (see `novabox::image_import`): copied or downloaded into a temporary
//! file under the home with a progress bar, checksum verified, format found with qemu-img.
//! Only then is the image created through the image API (POST /v2/images, PUT .../file), so
//! it is in `openstack image list` like any other; a failed upload deletes it again.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::json;

use novabox::image_import::{self, Checksum, Source};
use novabox::images::ImageStatus;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List the images (a table; --json prints glance's objects)
    List(super::resources::ListArgs),
    /// Show one image, by name or id
    Show(super::resources::ShowArgs),
    /// Import a qcow2/raw/... disk image from a file or an http(s):// or file:// URL
    Import(ImportArgs),
    /// Build a cloud image from distribution packages and import it: `image build debian`
    #[command(subcommand)]
    Build(super::image_build::BuildCommand),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A file path, or an http:// or file:// URL
    pub source: String,
    /// Image name [default: the file name]
    #[arg(long)]
    pub name: Option<String>,
    /// auto (detect with qemu-img), or qcow2, raw, vmdk, vdi, vhd, vhdx, iso, ploop, ami, aki, ari
    #[arg(long, default_value = "auto")]
    pub disk_format: String,
    /// Expected checksum of the data, sha256:HEX or md5:HEX; a mismatch imports nothing
    #[arg(long, value_name = "ALGO:HEX")]
    pub checksum: Option<String>,
    /// Visible to every project (done as the admin user, as glance only lets admins publish)
    #[arg(long)]
    pub public: bool,
    /// Import as the admin user (in the admin project) instead of demo
    #[arg(long)]
    pub admin: bool,
    /// Print the created image as JSON
    #[arg(long)]
    pub json: bool,
}

const FORMATS: &[&str] = &["auto", "qcow2", "raw", "vmdk", "vdi", "vhd", "vhdx", "iso", "ploop", "ami", "aki", "ari"];

pub fn run(global: &GlobalArgs, args: ImageArgs) -> anyhow::Result<ExitCode> {
    use super::resources::{self, ReadCommand};
    use novabox::client::Resource;
    match args.command {
        ImageCommand::List(a) => resources::run(global, Resource::Image, ReadCommand::List(a)),
        ImageCommand::Show(a) => resources::run(global, Resource::Image, ReadCommand::Show(a)),
        ImageCommand::Import(a) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(import(global, a))
        }
        ImageCommand::Build(cmd) => super::image_build::run(global, cmd),
    }
}

fn bar(len: Option<u64>, what: &str) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template = if len.is_some() {
        "{msg:9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg:9} {spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

async fn import(global: &GlobalArgs, args: ImportArgs) -> anyhow::Result<ExitCode> {
    // Everything the user typed is checked before a byte moves.
    if !FORMATS.contains(&args.disk_format.as_str()) {
        bail!("--disk-format {:?} is not one of {}", args.disk_format, FORMATS.join(", "));
    }
    let source = Source::parse(&args.source)?;
    let checksum = args.checksum.as_deref().map(Checksum::parse).transpose()?;
    let name = args.name.clone().unwrap_or_else(|| source.default_name());
    if name.trim().is_empty() || name.len() > 255 {
        bail!("the image name must have 1 to 255 characters");
    }
    let qemu_img = novabox::hostpkgs::find_program("qemu-img")
        .context("qemu-img is needed to check images: sudo apt-get install qemu-utils")?;
    let home = super::home(global)?;
    let client = super::server::login(global, args.admin || args.public).await?;

    // 1. The data, into a temporary file in the home (removed on every way out).
    let tmp = tempfile::Builder::new()
        .prefix(".import-")
        .tempfile_in(home.root())
        .with_context(|| format!("cannot create a temporary file in {}", home.root().display()))?;
    let verb = if matches!(source, Source::Url(_)) { "download" } else { "copy" };
    let mut pb: Option<ProgressBar> = None;
    let digests = image_import::fetch(&source, tmp.path(), |done, total| {
        pb.get_or_insert_with(|| bar(total, verb)).set_position(done);
    })
    .await;
    if let Some(pb) = pb.take() {
        pb.finish_and_clear();
    }
    let digests = digests?;

    // 2. The checksum, before anything exists in the image service.
    if let Some(c) = &checksum {
        c.verify(&digests)?;
    }
    // 3. What it is.
    let declared = Some(args.disk_format.as_str());
    let disk_format = image_import::detect_format(&qemu_img, tmp.path(), &args.source, declared).await?;
    let container_format = match disk_format.as_str() {
        f @ ("ami" | "aki" | "ari") => f,
        _ => "bare",
    };

    // 4. The image, then its data; a failed upload takes the image with it.
    let visibility = if args.public { "public" } else { "private" };
    let body = json!({"name": name, "disk_format": disk_format, "container_format": container_format, "visibility": visibility});
    let created = client.image(Method::POST, "/images", Some(body)).await?;
    let id = created["id"].as_str().context("the image API answered an image without id")?.to_string();
    let uploaded = upload(&client, &id, tmp.path(), digests.size).await;
    let checked = match uploaded {
        Ok(()) => verify_stored(&client, &id, &digests.md5).await,
        Err(e) => Err(e),
    };
    if let Err(e) = checked {
        if let Err(d) = client.image(Method::DELETE, &format!("/images/{id}"), None).await {
            eprintln!("warning: the half-imported image {id} could not be deleted: {d}");
        }
        return Err(e);
    }
    let image = client.image(Method::GET, &format!("/images/{id}"), None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&image)?);
    } else {
        println!("imported {name} ({id})");
        println!("  disk_format {disk_format}, {} bytes, {visibility}", digests.size);
        println!("  sha256 {}", digests.sha256);
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams the checked file to the image API, with a progress bar.
pub(super) async fn upload(
    client: &novabox::client::Client,
    id: &str,
    path: &std::path::Path,
    size: u64,
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await.with_context(|| format!("cannot read {}", path.display()))?;
    let pb = bar(Some(size), "upload");
    let counter = pb.clone();
    let stream = futures_util::stream::unfold(file, move |mut f| {
        let counter = counter.clone();
        async move {
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    counter.inc(n as u64);
                    Some((Ok::<_, std::io::Error>(buf), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        }
    });
    let result = client.upload_image_body(id, reqwest::Body::wrap_stream(stream)).await;
    pb.finish_and_clear();
    Ok(result?)
}

/// The stored image is active and holds exactly the bytes that were checked.
pub(super) async fn verify_stored(client: &novabox::client::Client, id: &str, md5: &str) -> anyhow::Result<()> {
    // The upload answers once the data is stored; a moment's grace for a slow status update.
    for _ in 0..50 {
        let image = client.image(Method::GET, &format!("/images/{id}"), None).await?;
        if image["status"] == ImageStatus::Active.as_str() {
            if image["checksum"].as_str() != Some(md5) {
                bail!("the image service stored different data (md5 {}, sent {md5})", image["checksum"]);
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("image {id} did not become active after its upload")
}
