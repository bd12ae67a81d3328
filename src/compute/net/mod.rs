//! Host network plumbing for bridge mode, run by the compute side (which never opens the
//! database): a bridge per network with its gateway address, a tap per guest port, a dnsmasq
//! per network for DHCP and DNS, and an nftables table for NAT and forwarding. Everything
//! created is marked as novabox's, so `down` removes exactly that and nothing of docker or
//! libvirt.

pub mod secgroups;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cidr::Ipv4Cidr;
use crate::config::{Config, NetworkMode};
use crate::home::Home;

use crate::network::vif::Vif;
pub use crate::network::vif::{tap_name, PortDevice};

pub mod bridge;
pub mod dnsmasq;
pub mod host;
pub mod nat;
pub mod router;
pub mod vlan;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "network mode \"bridge\" needs CAP_NET_ADMIN to create bridges, taps and NAT rules: run novabox as \
         root (sudo), or set `[network] mode = \"user\"` (or \"auto\") in novabox.toml for QEMU user networking"
    )]
    NoPermission,
    #[error(
        "the guest network {cidr} overlaps the host route {route} (dev {dev}); nothing was changed. Pick a free \
         range with `[network] cidr = \"...\"` in novabox.toml (or a subnet with another cidr)"
    )]
    Overlap { cidr: String, route: String, dev: String },
    #[error(
        "an interface named {name} exists and was not created by this novabox (owner: {owner}); nothing was \
         changed. Choose another name with `[network] bridge = \"...\"` in novabox.toml"
    )]
    ForeignLink { name: String, owner: String },
    #[error("{program} is needed for bridge networking but cannot run ({detail}): run scripts/install-deps")]
    Missing { program: String, detail: String },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("cannot read the output of {what}: {detail}")]
    Parse { what: &'static str, detail: String },
    #[error("dnsmasq did not start: {detail} (its log: {log})")]
    Dnsmasq { log: PathBuf, detail: String },
    #[error("port {port} lacks {what} for bridge mode; the conductor should have filled it")]
    IncompleteVif { port: String, what: &'static str },
    #[error("cannot write {0}: {1}")]
    Io(PathBuf, String),
    // Provider networks (`vlan.rs`).
    #[error(
        "physical network {physnet} is not mapped on this host: add `{physnet} = \"<interface>\"` under \
         `[network.physical_networks]` in novabox.toml"
    )]
    UnmappedPhysnet { physnet: String },
    #[error(
        "physical network {physnet} is mapped to {interface} (`[network] physical_networks`), but this host has \
         no interface {interface}; nothing was changed"
    )]
    MissingUplink { physnet: String, interface: String },
    #[error(
        "{interface} (physical network {physnet}) is already enslaved to {master}; nothing was changed. Map the \
         physical network to a free interface, or to a bridge"
    )]
    UplinkInUse { interface: String, master: String, physnet: String },
    #[error(
        "this kernel cannot make VLAN interfaces (802.1Q: CONFIG_VLAN_8021Q, module 8021q), which the vlan network \
         on physical network {physnet} needs: run `modprobe 8021q`, or use a flat network"
    )]
    NoVlanSupport { physnet: String },
}

/// A short, stable tag for one home: two homes on one host never share an nft table, an
/// interface alias or a DOCKER-USER rule comment. Six hex digits of the path's SHA-256.
pub fn home_tag(home: &Path) -> String {
    let digest = Sha256::digest(home.as_os_str().as_encoded_bytes());
    digest.iter().take(3).map(|b| format!("{b:02x}")).collect()
}

/// The nft table (family `inet`) holding NAT and forwarding for one home.
pub fn nat_table(tag: &str) -> String {
    format!("novabox_{tag}")
}

/// The nft table (family `bridge`) holding per-port security-group chains for one home.
pub fn sg_table(tag: &str) -> String {
    format!("novabox_sg_{tag}")
}

/// Loads an nft script in one transaction (all of it or nothing): for the security-group
/// chains in `sg_table`, which hang off the same plumbing.
pub fn apply_nft(script: &str) -> Result<(), NetError> {
    host::run_input("nft", &["-f", "-"], Some(script)).map(|_| ())
}

/// How guests get their network on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bridge,
    User,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Bridge => "bridge",
            Mode::User => "user",
        }
    }
}

/// The mode to run in: `auto` picks bridge when this process has CAP_NET_ADMIN.
pub fn resolve_mode(mode: NetworkMode, net_admin: bool) -> Result<Mode, NetError> {
    match (mode, net_admin) {
        (NetworkMode::User, _) => Ok(Mode::User),
        (NetworkMode::Bridge, true) | (NetworkMode::Auto, true) => Ok(Mode::Bridge),
        (NetworkMode::Bridge, false) => Err(NetError::NoPermission),
        (NetworkMode::Auto, false) => Ok(Mode::User),
    }
}

/// One network as the host sees it: a bridge with the gateway address on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeNet {
    pub network: String,
    pub bridge: String,
    pub cidr: String,
    pub gateway: Ipv4Addr,
    /// A provider network's way onto its physical network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<vlan::Uplink>,
    /// The host's address on the bridge when a router holds the gateway (issue 19); the
    /// host holds the gateway itself otherwise.
    #[serde(default)]
    pub host_ip: Option<Ipv4Addr>,
    /// Whether a dnsmasq serves the network (not the external network's bridge).
    #[serde(default = "yes")]
    pub dhcp: bool,
}

fn yes() -> bool {
    true
}

impl BridgeNet {
    fn cidr(&self) -> Result<Ipv4Cidr, NetError> {
        self.cidr
            .parse()
            .map_err(|e: crate::cidr::CidrError| NetError::Parse { what: "a subnet cidr", detail: e.to_string() })
    }

    fn from_vif(vif: &Vif, physnets: &BTreeMap<String, String>) -> Result<BridgeNet, NetError> {
        let missing = |what| NetError::IncompleteVif { port: vif.port_id.clone(), what };
        let bridge = vif.bridge.clone().ok_or_else(|| missing("a bridge"))?;
        if !bridge::valid_ifname(&bridge) {
            return Err(missing("a valid bridge name"));
        }
        let cidr = vif.cidr.clone().ok_or_else(|| missing("a subnet"))?;
        let gateway = vif.gateway.as_deref().and_then(|g| g.parse().ok()).ok_or_else(|| missing("a gateway"))?;
        let uplink = vif.provider.as_ref().map(|p| vlan::Uplink::of(p, physnets)).transpose()?;
        let host_ip = vif.host_address.as_deref().and_then(|a| a.parse().ok());
        Ok(BridgeNet { network: vif.network_name.clone(), bridge, cidr, gateway, uplink, host_ip, dhcp: true })
    }

    /// The address the host holds on the bridge.
    pub fn host_address(&self) -> Ipv4Addr {
        self.host_ip.unwrap_or(self.gateway)
    }
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: Vec<String>,
    pub dnsmasqs: usize,
    pub tables: Vec<String>,
    pub docker_rules: usize,
}

/// The host plumbing of one home in bridge mode. Calls block (they run `ip`, `nft`,
/// dnsmasq); one at a time, as the hosts files are read, changed and written.
pub struct HostNet {
    home: Home,
    tag: String,
    dns_domain: String,
    physnets: BTreeMap<String, String>,
    lock: std::sync::Mutex<()>,
}

impl HostNet {
    pub fn new(home: &Home, config: &Config) -> HostNet {
        HostNet {
            home: home.clone(),
            tag: home_tag(home.root()),
            dns_domain: config.network.dns_domain.clone(),
            physnets: config.network.physical_networks.clone(),
            lock: std::sync::Mutex::new(()),
        }
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The default network of the config, which `up` sets up before serving.
    pub fn default_net(config: &Config) -> BridgeNet {
        BridgeNet {
            network: crate::network::model::DEFAULT_NETWORK.to_string(),
            bridge: config.network.bridge.clone(),
            cidr: config.network.cidr.to_string(),
            gateway: config.network.cidr.gateway(),
            uplink: None,
            host_ip: None,
            dhcp: true,
        }
    }

    /// The external network's bridge (`[network] public_bridge`): the host holds its gateway,
    /// as DevStack's br-ex holds 172.24.4.1; no DHCP.
    pub fn public_net(config: &Config) -> BridgeNet {
        BridgeNet {
            network: crate::network::routers::PUBLIC_NETWORK.to_string(),
            bridge: config.network.public_bridge.clone(),
            cidr: config.network.public_cidr.to_string(),
            gateway: config.network.public_cidr.gateway(),
            uplink: None,
            host_ip: None,
            dhcp: false,
        }
    }

    fn dir(home: &Home, bridge: &str) -> PathBuf {
        home.root().join("net").join(bridge)
    }

    /// The bridge, its gateway address, its dnsmasq and the NAT table; refuses (changing
    /// nothing) a CIDR overlapping a host route or a link of that name that is not ours.
    pub fn ensure_network(&self, net: &BridgeNet) -> Result<(), NetError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.ensure_network_locked(net)
    }

    fn ensure_network_locked(&self, net: &BridgeNet) -> Result<(), NetError> {
        let cidr = net.cidr()?;
        let existing = bridge::preflight(&host::links()?, &host::routes()?, &net.bridge, &cidr, &self.tag)?;
        for program in ["nft", dnsmasq::PROGRAM] {
            if !host::has(program) {
                return Err(NetError::Missing { program: program.into(), detail: "not on the PATH".into() });
            }
        }
        let dir = Self::dir(&self.home, &net.bridge);
        std::fs::create_dir_all(&dir).map_err(|e| NetError::Io(dir.clone(), e.to_string()))?;
        bridge::ensure_bridge(&net.bridge, &cidr, net.host_address(), &self.tag, existing)?;
        if let Some(uplink) = &net.uplink {
            vlan::ensure_uplink(uplink, &net.bridge, &self.tag)?;
        }
        let state = serde_json::to_vec_pretty(net).map_err(|e| NetError::Io(dir.clone(), e.to_string()))?;
        dnsmasq::write(&dir.join("network.json"), &state)?;
        nat::apply(&self.tag, &self.bridged()?)?;
        let files = dnsmasq::Files::new(&dir);
        if !net.dhcp {
            tracing::info!(bridge = %net.bridge, cidr = %net.cidr, "network ready (no DHCP)");
            return Ok(());
        }
        let mut conf = dnsmasq::render_conf(&files, &net.network, &net.bridge, &cidr, net.gateway, &self.dns_domain);
        if let Some(host_ip) = net.host_ip {
            conf = dnsmasq::routed(&conf, net.gateway, host_ip);
        }
        let changed = std::fs::read_to_string(files.conf()).ok().as_deref() != Some(conf.as_str());
        dnsmasq::write(&files.conf(), conf.as_bytes())?;
        if changed && dnsmasq::running(&files).is_some() {
            dnsmasq::stop(&files)?;
        }
        let pid = dnsmasq::start(&files)?;
        tracing::info!(bridge = %net.bridge, cidr = %net.cidr, dnsmasq = pid, "network ready");
        Ok(())
    }

    /// Every network set up under this home (from `net/*/network.json`), for the NAT table.
    fn networks(&self) -> Vec<BridgeNet> {
        let Ok(entries) = std::fs::read_dir(self.home.root().join("net")) else { return Vec::new() };
        let mut out: Vec<BridgeNet> = entries
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("network.json")).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        out.sort_by(|a, b| a.bridge.cmp(&b.bridge));
        out
    }

    fn bridged(&self) -> Result<Vec<nat::Bridged>, NetError> {
        self.networks()
            .iter()
            .map(|n| Ok(nat::Bridged { bridge: n.bridge.clone(), cidr: n.cidr()?, masquerade: n.uplink.is_none() }))
            .collect()
    }

    /// Plugs a guest's ports: network, tap on its bridge, a DHCP/DNS entry. True when a tap had
    /// to be created (a guest already running on the old one must be restarted to reach it).
    pub fn plug(&self, hostname: &str, vifs: &[Vif]) -> Result<bool, NetError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut created = false;
        for vif in vifs {
            let net = BridgeNet::from_vif(vif, &self.physnets)?;
            let tap =
                vif.tap.clone().ok_or_else(|| NetError::IncompleteVif { port: vif.port_id.clone(), what: "a tap" })?;
            let dir = Self::dir(&self.home, &net.bridge);
            let known: Option<BridgeNet> =
                std::fs::read(dir.join("network.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let files = dnsmasq::Files::new(&dir);
            if known.as_ref() != Some(&net) || (net.dhcp && dnsmasq::running(&files).is_none()) {
                self.ensure_network_locked(&net)?;
            }
            created |= bridge::ensure_tap(&host::links()?, &tap, &net.bridge, &self.tag)?;
            let mut entries = dnsmasq::load_entries(&files);
            if let Some(ip) = vif.ips.first().and_then(|i| i.parse().ok()) {
                entries.insert(
                    vif.mac.to_ascii_lowercase(),
                    dnsmasq::HostEntry { ip, hostname: dnsmasq::dns_label(hostname) },
                );
            }
            dnsmasq::store_entries(&files, &entries, &self.dns_domain)?;
            dnsmasq::reload(&files);
            tracing::info!(port = %vif.port_id, %tap, bridge = %net.bridge, "port plugged");
        }
        Ok(created)
    }

    /// Removes a guest's taps and DHCP/DNS entries. Missing pieces are not an error.
    pub fn unplug(&self, vifs: &[Vif]) -> Result<(), NetError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let links = host::links()?;
        for vif in vifs {
            if let Some(tap) = &vif.tap {
                bridge::delete_if_ours(&links, tap, &self.tag)?;
            }
            if let Some(b) = &vif.bridge {
                let files = dnsmasq::Files::new(&Self::dir(&self.home, b));
                let mut entries = dnsmasq::load_entries(&files);
                if entries.remove(&vif.mac.to_ascii_lowercase()).is_some() {
                    dnsmasq::store_entries(&files, &entries, &self.dns_domain)?;
                    dnsmasq::reload(&files);
                }
            }
        }
        Ok(())
    }

    /// What this home has plugged right now: its taps and the MACs in its DHCP hosts files.
    /// The first half of a sweep; see [`HostNet::sweep`].
    pub fn plugged(&self) -> Result<Plugged, NetError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let bridges: BTreeSet<String> = self.networks().into_iter().map(|n| n.bridge).collect();
        let taps = bridge::ours(&host::links()?, &self.tag)
            .into_iter()
            .filter(|l| l.ifname.starts_with("tap") && !bridges.contains(&l.ifname))
            .map(|l| l.ifname.clone())
            .collect();
        let macs = bridges
            .iter()
            .flat_map(|b| dnsmasq::load_entries(&dnsmasq::Files::new(&Self::dir(&self.home, b))).into_keys())
            .collect();
        Ok(Plugged { taps, macs })
    }

    /// Removes the taps and DHCP entries of `before` whose port is not in `ports`: what a guest
    /// reaped without its row (or an unplug cut short by a crash) left behind. `before` must
    /// be taken before `ports` was read: everything in it was plugged for a port that existed
    /// then, so one missing from `ports` was deleted since, never one a build is plugging now.
    pub fn sweep(&self, before: &Plugged, ports: &[PortDevice]) -> Result<Plugged, NetError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let stale = before.stale(ports);
        if !stale.taps.is_empty() {
            let links = host::links()?;
            for tap in &stale.taps {
                bridge::delete_if_ours(&links, tap, &self.tag)?;
                tracing::warn!(%tap, "removed a tap whose port is gone");
            }
        }
        if !stale.macs.is_empty() {
            for net in self.networks() {
                let files = dnsmasq::Files::new(&Self::dir(&self.home, &net.bridge));
                let mut entries = dnsmasq::load_entries(&files);
                let count = entries.len();
                entries.retain(|mac, _| !stale.macs.contains(mac));
                if entries.len() != count {
                    dnsmasq::store_entries(&files, &entries, &self.dns_domain)?;
                    dnsmasq::reload(&files);
                    tracing::warn!(bridge = %net.bridge, removed = count - entries.len(), "removed DHCP entries of ports that are gone");
                }
            }
        }
        Ok(stale)
    }

    /// Restarts any dnsmasq of this home that died (the compute's periodic task calls this).
    pub fn check_dnsmasq(&self) -> Vec<String> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut restarted = Vec::new();
        for net in self.networks() {
            let files = dnsmasq::Files::new(&Self::dir(&self.home, &net.bridge));
            if !net.dhcp || dnsmasq::running(&files).is_some() {
                continue;
            }
            tracing::warn!(bridge = %net.bridge, "dnsmasq is not running; restarting it");
            match dnsmasq::start(&files) {
                Ok(_) => restarted.push(net.bridge.clone()),
                Err(e) => tracing::error!(bridge = %net.bridge, error = %e, "cannot restart dnsmasq"),
            }
        }
        restarted
    }
}

/// Taps and DHCP entries (by lower-case MAC) of one home.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plugged {
    pub taps: BTreeSet<String>,
    pub macs: BTreeSet<String>,
}

impl Plugged {
    /// What of this belongs to none of `ports`.
    pub fn stale(&self, ports: &[PortDevice]) -> Plugged {
        let taps: BTreeSet<&str> = ports.iter().map(|p| p.tap.as_str()).collect();
        let macs: BTreeSet<String> = ports.iter().map(|p| p.mac.to_ascii_lowercase()).collect();
        Plugged {
            taps: self.taps.iter().filter(|t| !taps.contains(t.as_str())).cloned().collect(),
            macs: self.macs.iter().filter(|m| !macs.contains(*m)).cloned().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.taps.is_empty() && self.macs.is_empty()
    }
}

/// `novabox down`: removes every dnsmasq, link, nft table and DOCKER-USER rule this home made
/// (found by pid files, the `novabox:<tag>` alias, table names and rule comments), and
/// nothing else. Without CAP_NET_ADMIN only the dnsmasqs can be stopped; links or tables
/// left are reported as an error saying so.
pub fn down(home: &Home) -> Result<Removed, NetError> {
    let tag = home_tag(home.root());
    let mut removed = Removed::default();
    let net_dir = home.root().join("net");
    if let Ok(entries) = std::fs::read_dir(&net_dir) {
        for e in entries.flatten() {
            if dnsmasq::stop(&dnsmasq::Files::new(&e.path()))? {
                removed.dnsmasqs += 1;
            }
        }
    }
    // Routers first: deleting a namespace takes its veths with it.
    if host::has("ip") && host::has_net_admin() {
        removed.links.extend(router::down(home)?);
    }
    let links = if host::has("ip") { host::links()? } else { Vec::new() };
    let ours: Vec<_> = bridge::ours(&links, &tag).into_iter().cloned().collect();
    if !host::has_net_admin() {
        if !ours.is_empty() {
            return Err(NetError::NoPermission);
        }
        return Ok(removed);
    }
    // Taps first (they hang off the bridges), then the bridges and what others put on them.
    let (taps, bridges): (Vec<_>, Vec<_>) = ours.into_iter().partition(|l| l.master.is_some());
    for l in taps.iter().chain(bridges.iter()) {
        let _ = host::run("ip", &["addr", "del", "169.254.169.254/32", "dev", &l.ifname]);
        if let Err(e) = host::run("ip", &["link", "del", "dev", &l.ifname]) {
            // A router's veth goes with its namespace, which the kernel frees after
            // `ip netns del` returns, and a provider veth with its peer: listed above, gone
            // now, which is what was wanted.
            if host::links()?.iter().any(|x| x.ifname == l.ifname) {
                return Err(e);
            }
        }
        removed.links.push(l.ifname.clone());
    }
    if host::has("nft") {
        for (family, name) in [("inet", nat_table(&tag)), ("bridge", sg_table(&tag))] {
            if nat::delete_table(family, &name)? {
                removed.tables.push(format!("{family} {name}"));
            }
        }
    }
    removed.docker_rules = nat::remove_docker_rules(&tag)?;
    if net_dir.exists() {
        std::fs::remove_dir_all(&net_dir).map_err(|e| NetError::Io(net_dir.clone(), e.to_string()))?;
    }
    Ok(removed)
}

/// The hosts-file entries of a guest's ports, keyed by MAC (for tests and `status`).
pub fn host_entries(home: &Home, bridge: &str) -> BTreeMap<String, dnsmasq::HostEntry> {
    dnsmasq::load_entries(&dnsmasq::Files::new(&HostNet::dir(home, bridge)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_tag_is_short_stable_and_differs_per_home() {
        let a = home_tag(Path::new("/var/lib/novabox"));
        assert_eq!(a.len(), 6);
        assert_eq!(a, home_tag(Path::new("/var/lib/novabox")));
        assert_ne!(a, home_tag(Path::new("/tmp/other")));
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn tap_name_follows_nova_and_fits_ifnamsiz() {
        assert_eq!(tap_name("0123456789abcdef-0000"), "tap0123456789a");
        assert_eq!(tap_name("0123456789abcdef-0000").len(), 14);
        assert_eq!(tap_name("ab"), "tapab");
    }

    #[test]
    fn mode_follows_the_config_and_the_capability() {
        assert_eq!(resolve_mode(NetworkMode::Auto, true).unwrap(), Mode::Bridge);
        assert_eq!(resolve_mode(NetworkMode::Auto, false).unwrap(), Mode::User);
        assert_eq!(resolve_mode(NetworkMode::User, true).unwrap(), Mode::User);
        let err = resolve_mode(NetworkMode::Bridge, false).unwrap_err().to_string();
        assert!(err.contains("CAP_NET_ADMIN") && err.contains("mode = \"user\""), "{err}");
    }

    #[test]
    fn only_what_no_port_has_is_stale() {
        let plugged = Plugged {
            taps: ["tapaaaaaaaaaaa", "tapbbbbbbbbbbb"].map(String::from).into(),
            macs: ["fa:16:3e:00:00:01", "fa:16:3e:00:00:02"].map(String::from).into(),
        };
        let ports = [PortDevice { tap: "tapaaaaaaaaaaa".into(), mac: "FA:16:3E:00:00:01".into() }];
        let stale = plugged.stale(&ports);
        assert_eq!(stale.taps, ["tapbbbbbbbbbbb".to_string()].into());
        assert_eq!(stale.macs, ["fa:16:3e:00:00:02".to_string()].into());
        assert!(plugged
            .stale(&[ports[0].clone(), PortDevice { tap: "tapbbbbbbbbbbb".into(), mac: "fa:16:3e:00:00:02".into() }])
            .is_empty());
        // A port that was never plugged (user mode, port security off) changes nothing.
        assert_eq!(Plugged::default().stale(&ports), Plugged::default());
    }

    #[test]
    fn vifs_without_bridge_facts_are_refused() {
        let vif = Vif { port_id: "p1".into(), bridge: Some("nbr0".into()), ..Default::default() };
        let err = BridgeNet::from_vif(&vif, &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("p1") && err.contains("subnet"), "{err}");
        let vif = Vif {
            bridge: Some("nbr0".into()),
            cidr: Some("10.42.0.0/24".into()),
            gateway: Some("10.42.0.1".into()),
            network_name: "private".into(),
            ..Default::default()
        };
        let none = BTreeMap::new();
        assert_eq!(BridgeNet::from_vif(&vif, &none).unwrap().gateway, Ipv4Addr::new(10, 42, 0, 1));
        assert_eq!(BridgeNet::from_vif(&vif, &none).unwrap().host_address(), Ipv4Addr::new(10, 42, 0, 1));
        let routed = Vif { host_address: Some("10.42.0.2".into()), ..vif };
        let net = BridgeNet::from_vif(&routed, &none).unwrap();
        assert_eq!((net.gateway, net.host_address()), (Ipv4Addr::new(10, 42, 0, 1), Ipv4Addr::new(10, 42, 0, 2)));
    }
}
