//! What `novabox image import FILE|URL` does before an image exists in the store: fetch the
//! data (a local file, `file://`, or `http(s)://` streamed with reqwest) into a temporary file
//! while hashing it, verify the checksum the user gave, and find out with
//! `qemu-img info --output=json` what disk format it really is. Only data that passes all of
//! this is uploaded; the CLI does the upload through the image API.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use md5::{Digest, Md5};
use serde_json::Value;
use sha2::Sha256;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("--checksum {0:?} is not ALGORITHM:HEX; use sha256:<64 hex digits> or md5:<32 hex digits>")]
    ChecksumSpec(String),
    #[error("checksum mismatch: the {algorithm} of the data is {actual}, not {expected}; nothing was imported")]
    ChecksumMismatch { algorithm: &'static str, actual: String, expected: String },
    #[error("{0:?} is not something to import from: give a file path, or an http://, https:// or file:// URL")]
    Source(String),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot download {url}: {detail}")]
    Download { url: String, detail: String },
    #[error("cannot run qemu-img ({0}): sudo apt-get install qemu-utils")]
    QemuImg(String),
    #[error("{what} is not a disk image: {why}")]
    NotADisk { what: String, why: String },
}

/// Where the data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Url(String),
}

impl Source {
    pub fn parse(text: &str) -> Result<Source, ImportError> {
        if let Some(path) = text.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(ImportError::Source(text.to_string()));
            }
            return Ok(Source::File(PathBuf::from(percent_decode(path))));
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(Source::Url(text.to_string()));
        }
        if text.is_empty() || text.contains("://") {
            return Err(ImportError::Source(text.to_string()));
        }
        Ok(Source::File(PathBuf::from(text)))
    }

    /// The name an image gets when `--name` is not given: the last path segment.
    pub fn default_name(&self) -> String {
        let s = match self {
            Source::File(p) => p.to_string_lossy().into_owned(),
            Source::Url(u) => u.split(['?', '#']).next().unwrap_or(u).to_string(),
        };
        let last = s.trim_end_matches('/').rsplit('/').next().unwrap_or("").to_string();
        if last.is_empty() {
            "imported".into()
        } else {
            last
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A checksum the user expects, as `sha256:HEX` or `md5:HEX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: &'static str,
    pub hex: String,
}

impl Checksum {
    pub fn parse(text: &str) -> Result<Checksum, ImportError> {
        let bad = || ImportError::ChecksumSpec(text.to_string());
        let (algo, hex) = text.split_once(':').ok_or_else(bad)?;
        let (algorithm, len) = match algo.to_ascii_lowercase().as_str() {
            "sha256" => ("sha256", 64),
            "md5" => ("md5", 32),
            _ => return Err(bad()),
        };
        if hex.len() != len || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Checksum { algorithm, hex: hex.to_ascii_lowercase() })
    }

    pub fn verify(&self, digests: &Digests) -> Result<(), ImportError> {
        let actual = if self.algorithm == "sha256" { &digests.sha256 } else { &digests.md5 };
        if *actual != self.hex {
            return Err(ImportError::ChecksumMismatch {
                algorithm: self.algorithm,
                actual: actual.clone(),
                expected: self.hex.clone(),
            });
        }
        Ok(())
    }
}

/// What the fetched data hashed to (hex), and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub sha256: String,
    pub md5: String,
    pub size: u64,
}

/// Writes chunks to the temporary file and hashes them on the way.
struct Sink<'a> {
    file: std::fs::File,
    path: &'a Path,
    sha256: Sha256,
    md5: Md5,
    size: u64,
}

impl Sink<'_> {
    fn write(&mut self, chunk: &[u8]) -> Result<(), ImportError> {
        use std::io::Write;
        self.file.write_all(chunk).map_err(|source| ImportError::Write { path: self.path.to_path_buf(), source })?;
        self.sha256.update(chunk);
        self.md5.update(chunk);
        self.size += chunk.len() as u64;
        Ok(())
    }

    fn finish(self) -> Result<Digests, ImportError> {
        self.file.sync_all().map_err(|source| ImportError::Write { path: self.path.to_path_buf(), source })?;
        Ok(Digests {
            sha256: hex::encode(self.sha256.finalize()),
            md5: hex::encode(self.md5.finalize()),
            size: self.size,
        })
    }
}

/// Copies or downloads `source` into `dest` (created or truncated), calling `progress` with
/// the bytes so far and the total when known.
pub async fn fetch(
    source: &Source,
    dest: &Path,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<Digests, ImportError> {
    let file = std::fs::File::create(dest).map_err(|source| ImportError::Write { path: dest.to_path_buf(), source })?;
    let mut sink = Sink { file, path: dest, sha256: Sha256::new(), md5: Md5::new(), size: 0 };
    match source {
        Source::File(path) => {
            use std::io::Read;
            let read_err = |source| ImportError::Read { path: path.clone(), source };
            let mut f = std::fs::File::open(path).map_err(read_err)?;
            let meta = f.metadata().map_err(read_err)?;
            if !meta.is_file() {
                return Err(ImportError::Read {
                    path: path.clone(),
                    source: std::io::Error::other("not a regular file"),
                });
            }
            let total = Some(meta.len());
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(read_err)?;
                if n == 0 {
                    break;
                }
                sink.write(&buf[..n])?;
                progress(sink.size, total);
            }
        }
        Source::Url(url) => {
            use futures_util::StreamExt;
            let failed = |detail: String| ImportError::Download { url: url.clone(), detail };
            let http = reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(30))
                .read_timeout(std::time::Duration::from_secs(120))
                .build()
                .map_err(|e| failed(e.to_string()))?;
            let resp = http.get(url).send().await.map_err(|e| {
                let mut detail = error_chain(&e);
                if detail.contains("certificate") {
                    // openssl reads SSL_CERT_FILE/SSL_CERT_DIR, so a private CA needs no rebuild.
                    detail.push_str(
                        ". The server's certificate is not trusted here: add its CA to the system store \
                         (update-ca-certificates) or point SSL_CERT_FILE at it",
                    );
                }
                failed(detail)
            })?;
            if !resp.status().is_success() {
                return Err(failed(format!("the server answered {}", resp.status())));
            }
            let total = resp.content_length();
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| failed(error_chain(&e)))?;
                sink.write(&chunk)?;
                progress(sink.size, total);
            }
            if let Some(total) = total {
                if sink.size != total {
                    return Err(failed(format!("got {} of {total} bytes", sink.size)));
                }
            }
        }
    }
    sink.finish()
}

/// reqwest's message and its causes ("error sending request" alone says nothing).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cur = c.source();
    }
    text
}

/// glance's `disk_format` for a qemu-img format name; None for formats novabox does not take.
fn glance_format(qemu: &str) -> Option<&'static str> {
    Some(match qemu {
        "raw" => "raw",
        "qcow2" => "qcow2",
        "vmdk" => "vmdk",
        "vdi" => "vdi",
        "vpc" => "vhd",
        "vhdx" => "vhdx",
        "parallels" => "ploop",
        _ => return None,
    })
}

/// qemu-img's name for a glance `disk_format` it can inspect.
fn qemu_format(glance: &str) -> Option<&'static str> {
    Some(match glance {
        "raw" | "iso" => "raw",
        "qcow2" => "qcow2",
        "vmdk" => "vmdk",
        "vdi" => "vdi",
        "vhd" => "vpc",
        "vhdx" => "vhdx",
        "ploop" => "parallels",
        _ => return None,
    })
}

/// Checks `file` and returns its glance `disk_format`. `declared` is `--disk-format` (None or
/// "auto" to detect). Refused: what qemu-img cannot read in the format, a declared format the
/// data is not in, backing files and external data (they would read other files on this
/// host), damaged or truncated qcow2, and, when detecting, raw data with neither a partition
/// table nor a filesystem (random bytes are "raw" to qemu-img).
pub async fn detect_format(
    qemu_img: &Path,
    file: &Path,
    what: &str,
    declared: Option<&str>,
) -> Result<String, ImportError> {
    let declared = declared.filter(|d| *d != "auto");
    let not_disk = |why: String| ImportError::NotADisk { what: what.to_string(), why };
    if let Some(d @ ("ami" | "aki" | "ari")) = declared {
        // Kernels, ramdisks and AMI roots are not self-describing; qemu-img sees raw data.
        return Ok(d.to_string());
    }
    let probed = qemu_img_info(qemu_img, file, None).await?.map_err(not_disk)?;
    let probed_format = probed["format"].as_str().unwrap_or("").to_string();
    let format = match declared {
        Some(d) => {
            let q = qemu_format(d).ok_or_else(|| ImportError::NotADisk {
                what: what.to_string(),
                why: format!("novabox cannot check disk format {d:?}"),
            })?;
            if probed_format != q {
                return Err(not_disk(format!(
                    "it was declared {d} but qemu-img reads it as {probed_format}; use --disk-format auto"
                )));
            }
            d.to_string()
        }
        None => {
            let Some(g) = glance_format(&probed_format) else {
                return Err(not_disk(format!("qemu-img reads it as {probed_format:?}, which novabox does not import")));
            };
            if g == "raw" {
                match raw_content(file).map_err(|source| ImportError::Read { path: file.to_path_buf(), source })? {
                    Some(kind) => kind.to_string(),
                    None => {
                        return Err(not_disk(
                            "qemu-img sees only raw data, with no partition table and no filesystem; if it \
                             really is a raw disk image, pass --disk-format raw"
                                .into(),
                        ))
                    }
                }
            } else {
                g.to_string()
            }
        }
    };
    let q = qemu_format(&format).unwrap_or("raw");
    let info = qemu_img_info(qemu_img, file, Some(q)).await?.map_err(not_disk)?;
    if info.get("backing-filename").is_some() {
        return Err(not_disk("it has a backing file; import a self-contained image (qemu-img convert)".into()));
    }
    if info.pointer("/format-specific/data/data-file").is_some() {
        return Err(not_disk("it has an external data file; import a self-contained image".into()));
    }
    if let Some(extents) = info.pointer("/format-specific/data/extents").and_then(Value::as_array) {
        let own = file.to_string_lossy();
        if extents.iter().any(|e| e["filename"].as_str().is_some_and(|f| f != own)) {
            return Err(not_disk("its VMDK extents are other files; import a monolithic image".into()));
        }
    }
    if q == "qcow2" {
        let out = run(qemu_img, &["check", "-f", "qcow2", path_str(file)?]).await?;
        // 0: clean, 3: only leaked clusters (harmless); 1 and 2: damaged or truncated.
        if !matches!(out.status.code(), Some(0) | Some(3)) {
            let why = last_line(&out.stderr);
            let why = if why.is_empty() { last_line(&out.stdout) } else { why };
            return Err(not_disk(format!("the qcow2 image is damaged or truncated (qemu-img check: {why})")));
        }
    }
    Ok(format)
}

/// `qemu-img info --output=json` (with `-f` when given): Ok(Err(why)) when qemu-img refuses.
async fn qemu_img_info(
    qemu_img: &Path,
    file: &Path,
    format: Option<&str>,
) -> Result<Result<Value, String>, ImportError> {
    let mut args = vec!["info", "--output=json"];
    if let Some(f) = format {
        args.extend(["-f", f]);
    }
    args.push(path_str(file)?);
    let out = run(qemu_img, &args).await?;
    if !out.status.success() {
        return Ok(Err(format!("qemu-img cannot read it: {}", last_line(&out.stderr))));
    }
    Ok(serde_json::from_slice(&out.stdout).map_err(|e| format!("qemu-img's description is unreadable: {e}")))
}

async fn run(qemu_img: &Path, args: &[&str]) -> Result<std::process::Output, ImportError> {
    tokio::process::Command::new(qemu_img)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| ImportError::QemuImg(format!("{}: {e}", qemu_img.display())))
}

/// What a raw file holds when it is a disk: `iso` for an ISO9660 image, `raw` for a partition
/// table (MBR or GPT) or a filesystem novabox recognizes at its start; None for anything else.
pub fn raw_content(file: &Path) -> std::io::Result<Option<&'static str>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(34 * 1024);
    std::fs::File::open(file)?.take(34 * 1024).read_to_end(&mut head)?;
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0x8001, b"CD001") {
        return Ok(Some("iso"));
    }
    let found = at(510, &[0x55, 0xaa])          // MBR (and FAT boot sectors)
        || at(512, b"EFI PART")                  // GPT
        || at(1080, &[0x53, 0xef])               // ext2/3/4
        || at(0, b"XFSB")                        // XFS
        || at(4086, b"SWAPSPACE2"); // a bare swap area
    Ok(found.then_some("raw"))
}

fn path_str(p: &Path) -> Result<&str, ImportError> {
    p.to_str().ok_or_else(|| ImportError::Source(p.to_string_lossy().into_owned()))
}

fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_default_names() {
        assert_eq!(Source::parse("/tmp/a.qcow2").unwrap(), Source::File("/tmp/a.qcow2".into()));
        assert_eq!(Source::parse("file:///tmp/my%20disk.img").unwrap(), Source::File("/tmp/my disk.img".into()));
        assert!(matches!(Source::parse("http://h/x.img").unwrap(), Source::Url(_)));
        for bad in ["ftp://h/x", "file://relative", "", "s3://b/k"] {
            assert!(matches!(Source::parse(bad), Err(ImportError::Source(_))), "{bad}");
        }
        assert_eq!(Source::parse("http://h/dir/cirros.img?x=1").unwrap().default_name(), "cirros.img");
        assert_eq!(Source::parse("./disk.raw").unwrap().default_name(), "disk.raw");
    }

    #[test]
    fn checksums_parse_and_verify() {
        let d = Digests {
            sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            md5: "d41d8cd98f00b204e9800998ecf8427e".into(),
            size: 0,
        };
        Checksum::parse(&format!("sha256:{}", d.sha256.to_uppercase())).unwrap().verify(&d).unwrap();
        Checksum::parse(&format!("md5:{}", d.md5)).unwrap().verify(&d).unwrap();
        let e = Checksum::parse(&format!("md5:{}", "0".repeat(32))).unwrap().verify(&d).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch") && e.contains(&d.md5), "{e}");
        for bad in [
            "sha256:abc",
            "sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "nocolon",
            &format!("md5:{}", "g".repeat(32)),
        ] {
            assert!(matches!(Checksum::parse(bad), Err(ImportError::ChecksumSpec(_))), "{bad}");
        }
    }

    #[tokio::test]
    async fn fetch_copies_and_hashes() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::write(&src, b"").unwrap();
        let mut seen = Vec::new();
        let d =
            fetch(&Source::File(src.clone()), &t.path().join("dst"), |n, total| seen.push((n, total))).await.unwrap();
        assert_eq!(d.sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        std::fs::write(&src, vec![7u8; 3 << 20]).unwrap();
        let d = fetch(&Source::File(src), &t.path().join("dst"), |n, total| seen.push((n, total))).await.unwrap();
        assert_eq!(d.size, 3 << 20);
        assert_eq!(std::fs::read(t.path().join("dst")).unwrap().len(), 3 << 20);
        assert_eq!(seen.last(), Some(&(3 << 20, Some(3 << 20))));
        let e = fetch(&Source::File(t.path().join("missing")), &t.path().join("dst"), |_, _| {}).await.unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    fn qemu_img() -> PathBuf {
        crate::hostpkgs::find_program("qemu-img").expect("qemu-img is needed: run scripts/install-deps")
    }

    #[tokio::test]
    async fn detects_formats_and_refuses_what_is_not_a_disk() {
        let q = qemu_img();
        let t = tempfile::tempdir().unwrap();
        let qcow2 = t.path().join("a.qcow2");
        let ok = std::process::Command::new(&q).args(["create", "-q", "-f", "qcow2"]).arg(&qcow2).arg("64M").status();
        assert!(ok.unwrap().success());
        assert_eq!(detect_format(&q, &qcow2, "a", None).await.unwrap(), "qcow2");
        assert_eq!(detect_format(&q, &qcow2, "a", Some("auto")).await.unwrap(), "qcow2");
        assert_eq!(detect_format(&q, &qcow2, "a", Some("qcow2")).await.unwrap(), "qcow2");
        let e = detect_format(&q, &qcow2, "a", Some("raw")).await.unwrap_err().to_string();
        assert!(e.contains("declared raw but qemu-img reads it as qcow2"), "{e}");

        let truncated = t.path().join("t.qcow2");
        std::fs::write(&truncated, &std::fs::read(&qcow2).unwrap()[..1000]).unwrap();
        let e = detect_format(&q, &truncated, "t", None).await.unwrap_err().to_string();
        assert!(e.starts_with("t is not a disk image:"), "{e}");

        let random = t.path().join("random");
        std::fs::write(&random, (0..1u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>())
            .unwrap();
        let e = detect_format(&q, &random, "random", None).await.unwrap_err().to_string();
        assert!(e.contains("no partition table and no filesystem") && e.contains("--disk-format raw"), "{e}");
        assert_eq!(detect_format(&q, &random, "random", Some("raw")).await.unwrap(), "raw");

        let mut mbr = vec![0u8; 1 << 20];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        let disk = t.path().join("disk.raw");
        std::fs::write(&disk, &mbr).unwrap();
        assert_eq!(detect_format(&q, &disk, "disk", None).await.unwrap(), "raw");

        let overlay = t.path().join("overlay.qcow2");
        let ok = std::process::Command::new(&q)
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&qcow2)
            .arg(&overlay)
            .status();
        assert!(ok.unwrap().success());
        let e = detect_format(&q, &overlay, "o", None).await.unwrap_err().to_string();
        assert!(e.contains("backing file"), "{e}");
    }
}
