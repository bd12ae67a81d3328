//! One dnsmasq per network: DHCP for the ports novabox knows (a static entry per MAC) and DNS
//! for guest names under `dns_domain`, bound to the network's bridge only. Its files live in
//! `<home>/net/<bridge>/`; plug and unplug rewrite the hosts files and send SIGHUP.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::NetError;
use crate::cidr::Ipv4Cidr;
use crate::supervise;

const TEMPLATE: &str = include_str!("../../../templates/dnsmasq.conf");
pub const PROGRAM: &str = "dnsmasq";

/// The files of one network's dnsmasq.
#[derive(Debug, Clone)]
pub struct Files {
    pub dir: PathBuf,
}

impl Files {
    pub fn new(dir: &Path) -> Files {
        Files { dir: dir.to_path_buf() }
    }
    pub fn conf(&self) -> PathBuf {
        self.dir.join("dnsmasq.conf")
    }
    pub fn pid(&self) -> PathBuf {
        self.dir.join("dnsmasq.pid")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("dnsmasq.log")
    }
    pub fn leases(&self) -> PathBuf {
        self.dir.join("dnsmasq.leases")
    }
    pub fn dhcp_hosts(&self) -> PathBuf {
        self.dir.join("dhcp-hosts")
    }
    pub fn dns_hosts(&self) -> PathBuf {
        self.dir.join("dns-hosts")
    }
    pub fn hosts_json(&self) -> PathBuf {
        self.dir.join("hosts.json")
    }
}

/// One guest port dnsmasq answers for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostEntry {
    pub ip: Ipv4Addr,
    pub hostname: String,
}

/// The config file's text for one network.
pub fn render_conf(
    files: &Files,
    network: &str,
    bridge: &str,
    cidr: &Ipv4Cidr,
    gateway: Ipv4Addr,
    dns_domain: &str,
) -> String {
    let mask = if cidr.prefix() == 0 { 0 } else { u32::MAX << (32 - cidr.prefix()) };
    let p = |p: PathBuf| p.display().to_string();
    TEMPLATE
        .replace("{network}", network)
        .replace("{bridge}", bridge)
        .replace("{gateway}", &gateway.to_string())
        .replace("{network_address}", &cidr.network().to_string())
        .replace("{netmask}", &Ipv4Addr::from(mask).to_string())
        .replace("{dns_domain}", dns_domain)
        .replace("{pid_file}", &p(files.pid()))
        .replace("{log_file}", &p(files.log()))
        .replace("{dhcp_hosts}", &p(files.dhcp_hosts()))
        .replace("{leases}", &p(files.leases()))
        .replace("{dns_hosts}", &p(files.dns_hosts()))
}

/// The config of a network whose gateway a router holds: dnsmasq listens on (and serves
/// DNS from) the host's own address, guests keep the router as their default gateway, and
/// a classless static route (option 121, which replaces option 3 where clients read it, so
/// it repeats the default) leads to the metadata service through the host, as neutron's
/// DHCP agent does for isolated metadata.
pub fn routed(conf: &str, gateway: Ipv4Addr, host: Ipv4Addr) -> String {
    let mut out = String::new();
    for line in conf.lines() {
        match line {
            l if l.starts_with("listen-address=") => out.push_str(&format!("listen-address={host}")),
            l if l.starts_with("dhcp-option=option:dns-server,") => {
                out.push_str(&format!("dhcp-option=option:dns-server,{host}"))
            }
            l => out.push_str(l),
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "dhcp-option=option:classless-static-route,{}/32,{host},0.0.0.0/0,{gateway}\n",
        crate::network::METADATA_ADDRESS
    ));
    out
}

/// `dhcp-hostsfile` lines (`mac,ip,hostname`) and `addn-hosts` lines (`ip name name.domain`).
pub fn render_hosts(entries: &BTreeMap<String, HostEntry>, dns_domain: &str) -> (String, String) {
    let mut dhcp = String::new();
    let mut dns = String::new();
    for (mac, e) in entries {
        dhcp.push_str(&format!("{mac},{},{}\n", e.ip, e.hostname));
        dns.push_str(&format!("{} {}.{dns_domain} {}\n", e.ip, e.hostname, e.hostname));
    }
    (dhcp, dns)
}

/// A hostname dnsmasq and DNS accept: letters, digits and inner hyphens, at most 63 long.
pub fn dns_label(name: &str) -> String {
    let cleaned: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(63).collect();
    let trimmed = cleaned.trim_matches('-');
    if trimmed.is_empty() {
        "guest".into()
    } else {
        trimmed.to_string()
    }
}

pub fn load_entries(files: &Files) -> BTreeMap<String, HostEntry> {
    std::fs::read(files.hosts_json()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Writes the entries (our JSON first, then both dnsmasq files), each atomically.
pub fn store_entries(files: &Files, entries: &BTreeMap<String, HostEntry>, dns_domain: &str) -> Result<(), NetError> {
    let json = serde_json::to_vec_pretty(entries).map_err(|e| NetError::Io(files.hosts_json(), e.to_string()))?;
    write(&files.hosts_json(), &json)?;
    let (dhcp, dns) = render_hosts(entries, dns_domain);
    write(&files.dhcp_hosts(), dhcp.as_bytes())?;
    write(&files.dns_hosts(), dns.as_bytes())
}

pub fn write(path: &Path, bytes: &[u8]) -> Result<(), NetError> {
    crate::home::write_atomic(path, bytes, 0o600).map_err(|e| NetError::Io(path.to_path_buf(), e.to_string()))
}

/// The running dnsmasq of these files, if any.
pub fn running(files: &Files) -> Option<i32> {
    supervise::running_pid(&files.pid(), PROGRAM).ok().flatten()
}

/// Starts dnsmasq with the written config unless it runs already. dnsmasq daemonizes itself
/// once it has bound its sockets, so a bind failure comes back here as an error.
pub fn start(files: &Files) -> Result<i32, NetError> {
    if let Some(pid) = running(files) {
        return Ok(pid);
    }
    for f in [files.leases(), files.dhcp_hosts(), files.dns_hosts()] {
        if !f.exists() {
            write(&f, b"")?;
        }
    }
    let conf = format!("--conf-file={}", files.conf().display());
    super::host::run(PROGRAM, &[&conf]).map_err(|e| NetError::Dnsmasq { log: files.log(), detail: e.to_string() })?;
    supervise::read_pid_file(&files.pid())
        .ok()
        .flatten()
        .ok_or_else(|| NetError::Dnsmasq { log: files.log(), detail: "it wrote no pid file".into() })
}

/// Makes dnsmasq re-read its hosts files.
pub fn reload(files: &Files) {
    if let Some(pid) = running(files) {
        // SAFETY: a signal to the dnsmasq whose pid file and command line we just checked.
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }
}

pub fn stop(files: &Files) -> Result<bool, NetError> {
    let stopped = supervise::stop_pid_file(&files.pid(), PROGRAM, Duration::from_secs(5))
        .map_err(|e| NetError::Io(files.pid(), e.to_string()))?;
    Ok(!matches!(stopped, supervise::Stopped::NotRunning))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_config_bound_to_the_bridge() {
        let files = Files::new(Path::new("/h/net/nbr0"));
        let cidr: Ipv4Cidr = "10.42.0.0/24".parse().unwrap();
        let conf = render_conf(&files, "private", "nbr0", &cidr, cidr.gateway(), "novalocal");
        for line in [
            "interface=nbr0",
            "bind-interfaces",
            "listen-address=10.42.0.1",
            "dhcp-range=10.42.0.0,static,255.255.255.0,12h",
            "pid-file=/h/net/nbr0/dnsmasq.pid",
            "dhcp-hostsfile=/h/net/nbr0/dhcp-hosts",
            "domain=novalocal",
            "dhcp-option=option:router,10.42.0.1",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} missing from\n{conf}");
        }
        assert!(!conf.contains('{'), "placeholder left:\n{conf}");
    }

    #[test]
    fn a_routed_network_keeps_the_router_as_gateway_and_the_host_for_dns_and_metadata() {
        let files = Files::new(Path::new("/h/net/nbr0"));
        let cidr: Ipv4Cidr = "10.42.0.0/24".parse().unwrap();
        let conf = render_conf(&files, "private", "nbr0", &cidr, cidr.gateway(), "novalocal");
        let conf = routed(&conf, cidr.gateway(), "10.42.0.2".parse().unwrap());
        for line in [
            "listen-address=10.42.0.2",
            "dhcp-option=option:dns-server,10.42.0.2",
            "dhcp-option=option:router,10.42.0.1",
            "dhcp-option=option:classless-static-route,169.254.169.254/32,10.42.0.2,0.0.0.0/0,10.42.0.1",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} missing from\n{conf}");
        }
        assert!(!conf.contains("listen-address=10.42.0.1"), "{conf}");
    }

    #[test]
    fn renders_host_entries_and_clean_names() {
        let mut e = BTreeMap::new();
        e.insert(
            "fa:16:3e:00:00:02".to_string(),
            HostEntry { ip: "10.42.0.5".parse().unwrap(), hostname: "vm-a".into() },
        );
        let (dhcp, dns) = render_hosts(&e, "novalocal");
        assert_eq!(dhcp, "fa:16:3e:00:00:02,10.42.0.5,vm-a\n");
        assert_eq!(dns, "10.42.0.5 vm-a.novalocal vm-a\n");
        assert_eq!(dns_label("My Server_1"), "my-server-1");
        assert_eq!(dns_label("--"), "guest");
    }

    /// dnsmasq itself accepts what we render.
    #[test]
    fn dnsmasq_accepts_the_config() {
        if !super::super::host::has(PROGRAM) {
            eprintln!("dnsmasq not installed; skipping its syntax check");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path());
        let cidr: Ipv4Cidr = "10.42.0.0/24".parse().unwrap();
        std::fs::write(files.conf(), render_conf(&files, "private", "nbr0", &cidr, cidr.gateway(), "novalocal"))
            .unwrap();
        let conf = format!("--conf-file={}", files.conf().display());
        let out = super::super::host::run(PROGRAM, &["--test", &conf]);
        assert!(out.is_ok(), "{out:?}");
    }
}
