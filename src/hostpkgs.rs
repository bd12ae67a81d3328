//! Host programs the chosen setup needs, the Debian packages that bring them, and installing
//! the missing ones with apt (only after the user agreed).

use std::path::PathBuf;

use crate::config::{BusKind, Config, Driver, NetworkMode};

/// One program novabox runs, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub program: &'static str,
    pub package: &'static str,
    pub needed_for: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("apt-get is not on this host; install these packages with your package manager: {0}")]
    NoApt(String),
    #[error("installing packages needs root; run `sudo apt-get install {0}` and then `novabox init` again")]
    NotRoot(String),
    #[error("`apt-get install {packages}` failed ({detail}); run it yourself to see why, then `novabox init` again")]
    Failed { packages: String, detail: String },
}

/// Debian puts daemons in sbin, which is not on every user's PATH.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/lib/rabbitmq/bin"];

/// Finds a host program on PATH or in the sbin directories.
pub fn find_program(program: &str) -> Option<PathBuf> {
    which::which(program)
        .ok()
        .or_else(|| EXTRA_DIRS.iter().map(|d| PathBuf::from(d).join(program)).find(|p| is_executable(p)))
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Everything the config asks for. `auto` settings ask for what makes the full stack possible;
/// without it they fall back (local bus, fake driver, user networking) rather than fail.
pub fn requirements(config: &Config) -> Vec<Requirement> {
    let mut reqs = Vec::new();
    let mut add = |program, package, needed_for| reqs.push(Requirement { program, package, needed_for });
    if config.bus.url.is_none() && config.bus.kind != BusKind::Local {
        add("rabbitmq-server", "rabbitmq-server", "the message bus (RabbitMQ)");
    }
    match config.compute.driver {
        Driver::Fake => {}
        Driver::Auto | Driver::Qemu => {
            add("qemu-system-x86_64", "qemu-system-x86", "running guests");
            add("qemu-img", "qemu-utils", "guest disks");
        }
        Driver::Libvirt => {
            add("libvirtd", "libvirt-daemon-system", "running guests through libvirt");
            add("virsh", "libvirt-clients", "running guests through libvirt");
            add("qemu-img", "qemu-utils", "guest disks");
        }
    }
    if config.compute.driver != Driver::Fake {
        add("busybox", "busybox-static", "building the offline test image");
        if config.compute.config_drive_format == crate::config::ConfigDriveFormat::Iso9660 {
            add("genisoimage", "genisoimage", "ISO9660 config drives; vfat ones without it");
        }
    }
    if config.compute.driver != Driver::Fake && config.network.mode != NetworkMode::User {
        add("ip", "iproute2", "bridges and taps");
        add("dnsmasq", "dnsmasq-base", "DHCP and DNS for guests");
        add("nft", "nftables", "NAT and security groups");
    }
    reqs
}

/// The requirements whose program is not found on this host.
pub fn missing(reqs: &[Requirement]) -> Vec<Requirement> {
    reqs.iter().filter(|r| find_program(r.program).is_none()).cloned().collect()
}

/// Unique package names, in first-seen order.
pub fn package_names(reqs: &[Requirement]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for r in reqs {
        if !names.contains(&r.package) {
            names.push(r.package);
        }
    }
    names
}

/// Runs `apt-get update` and `apt-get install -y` for the packages, showing apt's output.
pub fn apt_install(packages: &[&str]) -> Result<(), InstallError> {
    let list = packages.join(" ");
    if find_program("apt-get").is_none() {
        return Err(InstallError::NoApt(list));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(InstallError::NotRoot(list));
    }
    let failed = |detail: String| InstallError::Failed { packages: list.clone(), detail };
    duct::cmd!("apt-get", "update", "-q").stdout_to_stderr().run().map_err(|e| failed(e.to_string()))?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    duct::cmd("apt-get", args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout_to_stderr()
        .run()
        .map_err(|e| failed(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_local_user_needs_nothing() {
        let mut c = Config::default();
        c.compute.driver = Driver::Fake;
        c.bus.kind = BusKind::Local;
        c.network.mode = NetworkMode::User;
        assert!(requirements(&c).is_empty());
    }

    #[test]
    fn defaults_ask_for_the_full_stack_once_each() {
        let reqs = requirements(&Config::default());
        let pkgs = package_names(&reqs);
        for p in [
            "rabbitmq-server",
            "qemu-system-x86",
            "qemu-utils",
            "dnsmasq-base",
            "nftables",
            "busybox-static",
            "genisoimage",
        ] {
            assert!(pkgs.contains(&p), "{p} missing from {pkgs:?}");
        }
        let mut dedup = pkgs.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), pkgs.len());
    }

    #[test]
    fn external_broker_needs_no_rabbitmq_package() {
        let mut c = Config::default();
        c.bus.url = Some("amqp://a:b@127.0.0.1:5672/%2f".into());
        assert!(!package_names(&requirements(&c)).contains(&"rabbitmq-server"));
    }

    #[test]
    fn finds_programs_in_sbin() {
        assert!(find_program("sh").is_some());
        assert!(find_program("definitely-not-a-program-novabox").is_none());
    }
}
