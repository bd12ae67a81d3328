//! Security groups enforced per port with nftables, one `bridge`-family table per home.
//!
//! Guest-to-guest traffic on one bridge is bridged, never routed, so `inet` forward hooks do
//! not see it (unless br_netfilter is loaded, which would change every bridge on the host,
//! docker's too). A `bridge` table sees every frame that enters or leaves a port: frames a
//! guest sends (`iifname` its tap: egress) and frames sent to it (`oifname` its tap: ingress),
//! in the `forward` hook for guest to guest and the `input`/`output` hooks for guest to host
//! (gateway, DNS, metadata).
//!
//! The compute host has no database: the conductor or API side computes [`HostFilters`]
//! (every port bound to this host with the union of its groups' rules, and the addresses of
//! every group some rule names as its remote group; see `crate::network::secgroups`, the
//! model) and sends it over the bus. Here it is only rendered ([`render`], pure) and loaded ([`Nft::apply`]) as one script, so the kernel
//! swaps the whole table in one transaction: no moment with half a rule set.
//!
//! Replies: where the kernel has bridge conntrack (`nf_conntrack_bridge`, Debian's kernels),
//! `ct state established,related accept` lets replies back in. Kernels built without it
//! (some cloud and microVM kernels) get a stateless approximation: TCP segments that are not
//! a bare SYN, ICMP errors and echo replies, and DNS answers pass; new connections still need
//! a rule. [`Nft::bridge_conntrack`] asks the kernel which applies.
//!
//! IPv6 is dropped on filtered ports (novabox hands out IPv4 only); IPv6 rules are ignored.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

// The model lives in `network::secgroups`; its types stay reachable here for the callers that
// name them by this path.
pub use crate::network::secgroups::{
    filter_rule, host_filters, port_filter, Direction, FilterRule, HostFilters, PortFilter, Remote,
};
use crate::network::secgroups::{ICMP, PORT_PROTOCOLS};

#[derive(Debug, thiserror::Error)]
pub enum SecGroupError {
    #[error("could not run `nft` ({0}); install the nftables package (scripts/install-deps does)")]
    NftMissing(std::io::Error),
    #[error("nft refused the security group table {table}: {stderr}")]
    Nft { table: String, stderr: String },
}

type Result<T> = std::result::Result<T, SecGroupError>;

/// The table of one home: `novabox_sg_<tag>`, family `bridge`.
pub fn table_name(tag: &str) -> String {
    super::sg_table(tag)
}

/// nft identifiers: letters, digits and `_`; ids are uuids, so this is one-to-one for them.
fn ident(prefix: &str, id: &str) -> String {
    let body: String = id.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{prefix}_{body}")
}

/// Device names go between quotes into the script: only what Linux allows in an interface
/// name and nothing that could end the string.
fn valid_device(d: &str) -> bool {
    !d.is_empty() && d.len() <= 15 && d.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn valid_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn render_rule(r: &FilterRule) -> String {
    let mut m = vec!["ether type ip".to_string()];
    let addr = match r.direction {
        Direction::Ingress => "ip saddr",
        Direction::Egress => "ip daddr",
    };
    match &r.remote {
        Remote::Any => {}
        Remote::Cidr { addr: a, prefix } => m.push(format!("{addr} {a}/{prefix}")),
        Remote::Group(g) => m.push(format!("{addr} @{}", ident("g", g))),
    }
    match r.protocol {
        None => {}
        Some(ICMP) => {
            m.push("ip protocol icmp".into());
            if let Some(t) = r.port_min {
                m.push(format!("icmp type {t}"));
                if let Some(c) = r.port_max {
                    m.push(format!("icmp code {c}"));
                }
            }
        }
        Some(p) => {
            m.push(format!("meta l4proto {p}"));
            if PORT_PROTOCOLS.contains(&p) {
                match (r.port_min, r.port_max) {
                    (Some(a), Some(b)) if a != b => m.push(format!("th dport {a}-{b}")),
                    (Some(a), _) | (None, Some(a)) => m.push(format!("th dport {a}")),
                    (None, None) => {}
                }
            }
        }
    }
    m.push("return".into());
    m.join(" ")
}

/// Replies to traffic a rule allowed, for kernels without bridge conntrack (see the module
/// docs): everything but a new TCP connection, ICMP answers and errors, DNS answers.
const STATELESS_REPLIES: &[&str] = &[
    "meta l4proto tcp tcp flags & (syn | ack) != syn return",
    "icmp type { echo-reply, destination-unreachable, time-exceeded, parameter-problem } return",
    "udp sport 53 return",
];

/// The whole table as one `nft -f` script that replaces any previous version of it
/// atomically. `stateful`: the kernel has bridge conntrack.
pub fn render(tag: &str, filters: &HostFilters, stateful: bool) -> String {
    let table = table_name(tag);
    let ports: Vec<&PortFilter> = filters
        .ports
        .iter()
        .filter(|p| {
            let ok = valid_device(&p.device) && valid_mac(&p.mac);
            if !ok {
                tracing::error!(port = %p.port_id, device = %p.device, mac = %p.mac,
                    "port left out of the security group table: bad device name or MAC");
            }
            ok
        })
        .collect();
    let mut s = String::new();
    // Declaring then deleting makes the script work whether or not the table exists yet.
    s += &format!("table bridge {table} {{}}\ndelete table bridge {table}\ntable bridge {table} {{\n");
    let used_groups: BTreeSet<&String> = ports
        .iter()
        .flat_map(|p| p.rules.iter())
        .filter_map(|r| match &r.remote {
            Remote::Group(g) => Some(g),
            _ => None,
        })
        .collect();
    for g in used_groups {
        s += &format!("\tset {} {{\n\t\ttype ipv4_addr\n", ident("g", g));
        let members = filters.groups.get(g).cloned().unwrap_or_default();
        if !members.is_empty() {
            let list: Vec<String> = members.iter().map(|a| a.to_string()).collect();
            s += &format!("\t\telements = {{ {} }}\n", list.join(", "));
        }
        s += "\t}\n";
    }
    // A frame between two guests passes the sender's egress chain and then the receiver's
    // ingress chain: port chains end in `return` when they allow (an `accept` there would be
    // final for the whole hook and skip the other side) and `drop` when they do not.
    let base = |hook: &str, jumps: &[(&str, &str)]| {
        let mut c = format!("\tchain {hook} {{\n\t\ttype filter hook {hook} priority filter; policy accept;\n");
        if stateful {
            c += "\t\tct state established,related accept\n";
        }
        for (side, chain) in jumps {
            for p in &ports {
                c += &format!("\t\t{side} \"{}\" jump {}\n", p.device, ident(chain, &p.port_id));
            }
        }
        c += "\t}\n";
        c
    };
    s += &base("forward", &[("iifname", "eg"), ("oifname", "in")]);
    s += &base("input", &[("iifname", "eg")]);
    s += &base("output", &[("oifname", "in")]);
    for p in &ports {
        // Egress: the guest may speak only with its own MAC and addresses.
        s += &format!("\tchain {} {{\n", ident("eg", &p.port_id));
        s += &format!("\t\tether saddr != {} drop\n", p.mac);
        s += "\t\tether type arp return\n";
        s += "\t\tudp sport 68 udp dport 67 return\n";
        if !p.ips.is_empty() {
            let ips: Vec<String> = p.ips.iter().map(|a| a.to_string()).collect();
            s += &format!("\t\tether type ip ip saddr != {{ {} }} drop\n", ips.join(", "));
        }
        s += &port_rules(p, Direction::Egress, stateful);
        s += "\t}\n";
        // Ingress.
        s += &format!("\tchain {} {{\n", ident("in", &p.port_id));
        s += "\t\tether type arp return\n";
        s += "\t\tudp sport 67 udp dport 68 return\n";
        s += &port_rules(p, Direction::Ingress, stateful);
        s += "\t}\n";
    }
    s += "}\n";
    s
}

fn port_rules(p: &PortFilter, direction: Direction, stateful: bool) -> String {
    let mut s = String::new();
    if !stateful {
        for r in STATELESS_REPLIES {
            s += &format!("\t\t{r}\n");
        }
    }
    for r in p.rules.iter().filter(|r| r.direction == direction) {
        s += &format!("\t\t{}\n", render_rule(r));
    }
    s += "\t\tdrop\n";
    s
}

/// Runs `nft`, in a network namespace when given one (tests).
#[derive(Debug, Clone, Default)]
pub struct Nft {
    pub netns: Option<String>,
}

impl Nft {
    fn command(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "nft"]);
                c
            }
            None => Command::new("nft"),
        }
    }

    fn run(&self, args: &[&str], script: &str, table: &str) -> Result<()> {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(SecGroupError::NftMissing)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).map_err(SecGroupError::NftMissing)?;
        }
        let out = child.wait_with_output().map_err(SecGroupError::NftMissing)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(SecGroupError::Nft {
                table: table.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Checks a script against the kernel without changing anything (`nft -c -f -`).
    pub fn check(&self, script: &str) -> Result<()> {
        self.run(&["-c", "-f", "-"], script, "(check)")
    }

    /// Whether this kernel can match conntrack state in `bridge` tables.
    pub fn bridge_conntrack(&self) -> bool {
        let probe = "table bridge novabox_probe {\n\tchain c {\n\t\tct state established accept\n\t}\n}\n";
        self.check(probe).is_ok()
    }

    /// Replaces this home's table with `filters`, in one transaction.
    pub fn apply(&self, tag: &str, filters: &HostFilters) -> Result<()> {
        let stateful = self.bridge_conntrack();
        let script = render(tag, filters, stateful);
        self.run(&["-f", "-"], &script, &table_name(tag))?;
        tracing::info!(table = %table_name(tag), ports = filters.ports.len(), stateful, "security groups applied");
        Ok(())
    }

    /// Removes this home's table; fine when it is not there.
    pub fn teardown(&self, tag: &str) -> Result<()> {
        let t = table_name(tag);
        self.run(&["-f", "-"], &format!("table bridge {t} {{}}\ndelete table bridge {t}\n"), &t)
    }
}

/// A compute host's view: the nft runner, its home's tag and the bridge its guests use.
/// Filters are applied only when the bridge exists; with QEMU user networking (or the fake
/// driver) there are no taps, so nothing to filter and nothing is written.
pub struct Firewall {
    nft: Nft,
    tag: String,
    bridge: String,
    /// One apply at a time, in the order the updates arrived.
    applying: tokio::sync::Mutex<()>,
}

impl Firewall {
    pub fn new(tag: String, bridge: String) -> Firewall {
        Firewall { nft: Nft::default(), tag, bridge, applying: tokio::sync::Mutex::new(()) }
    }

    pub fn active(&self) -> bool {
        std::path::Path::new("/sys/class/net").join(&self.bridge).exists()
    }

    /// Applies `filters` when active; `Ok(false)` when there was nothing to do.
    pub async fn refresh(&self, filters: HostFilters) -> Result<bool> {
        if !self.active() {
            return Ok(false);
        }
        let _held = self.applying.lock().await;
        let (nft, tag) = (self.nft.clone(), self.tag.clone());
        tokio::task::spawn_blocking(move || nft.apply(&tag, &filters))
            .await
            .map_err(|e| SecGroupError::Nft { table: table_name(&self.tag), stderr: e.to_string() })??;
        Ok(true)
    }
}

/// What `novabox down` calls: removes the security group table of the home tagged `tag`.
pub fn teardown(tag: &str) -> Result<()> {
    Nft::default().teardown(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::model::{Port, SecurityGroup};
    use crate::network::secgroups::fixtures::{default_group, group, port, rule};

    #[test]
    fn rules_resolve_protocols_ports_and_remotes() {
        let r = filter_rule(&rule("ingress", Some("tcp"), Some(22), Some(22))).unwrap();
        assert_eq!((r.protocol, r.port_min, r.remote.clone()), (Some(6), Some(22), Remote::Any));
        assert_eq!(render_rule(&r), "ether type ip meta l4proto 6 th dport 22 return");

        let mut cidr = rule("egress", Some("udp"), Some(1000), Some(2000));
        cidr.remote_ip_prefix = Some("10.1.2.3/16".into());
        let r = filter_rule(&cidr).unwrap();
        assert_eq!(r.remote, Remote::Cidr { addr: "10.1.0.0".parse().unwrap(), prefix: 16 }, "host bits cleared");
        assert_eq!(render_rule(&r), "ether type ip ip daddr 10.1.0.0/16 meta l4proto 17 th dport 1000-2000 return");

        let r = filter_rule(&rule("ingress", Some("icmp"), Some(8), Some(0))).unwrap();
        assert_eq!(render_rule(&r), "ether type ip ip protocol icmp icmp type 8 icmp code 0 return");
        let r = filter_rule(&rule("ingress", Some("47"), None, None)).unwrap();
        assert_eq!(render_rule(&r), "ether type ip meta l4proto 47 return");

        let mut v6 = rule("ingress", None, None, None);
        v6.ethertype = "IPv6".into();
        assert_eq!(filter_rule(&v6), None, "IPv6 rules are not enforced");
        assert_eq!(filter_rule(&rule("sideways", None, None, None)), None);
        assert_eq!(filter_rule(&rule("ingress", Some("bogus"), None, None)), None);
    }

    #[test]
    fn default_group_lets_members_in_and_everything_out() {
        let a = port("aaaa-1", "10.42.0.5", &["default-id"]);
        let b = port("bbbb-2", "10.42.0.6", &["default-id"]);
        let elsewhere = port("cccc-3", "10.42.0.7", &["default-id"]);
        let f = host_filters(&[a.clone(), b.clone()], &[a, b, elsewhere], &[default_group()], |p| {
            format!("tap{}", &p.id[..4])
        });
        assert_eq!(f.ports.len(), 2);
        assert_eq!(f.ports[0].rules.len(), 2, "egress any + ingress from the group; IPv6 left out");
        assert_eq!(f.ports[0].mac, "fa:16:3e:00:00:01", "MACs lower-cased for nft");
        let members: Vec<String> = f.groups["default-id"].iter().map(|a| a.to_string()).collect();
        assert_eq!(members, ["10.42.0.5", "10.42.0.6", "10.42.0.7"], "members on every host count");

        let script = render("t1", &f, true);
        assert!(script.starts_with("table bridge novabox_sg_t1 {}\ndelete table bridge novabox_sg_t1\n"));
        assert!(script.contains("elements = { 10.42.0.5, 10.42.0.6, 10.42.0.7 }"), "{script}");
        assert!(script.contains("iifname \"tapaaaa\" jump eg_aaaa_1"), "{script}");
        assert!(script.contains("oifname \"tapbbbb\" jump in_bbbb_2"), "{script}");
        assert!(script.contains("ip saddr @g_default_id return"), "{script}");
        assert!(script.contains("ct state established,related accept"));
        assert!(!render("t1", &f, false).contains("ct state"), "stateless needs no conntrack");
    }

    #[test]
    fn unfiltered_and_malformed_ports_stay_out_of_the_table() {
        let mut open = port("open", "10.42.0.5", &["default-id"]);
        open.port_security_enabled = false;
        let f = host_filters(std::slice::from_ref(&open), &[], &[default_group()], |_| "tapopen".into());
        assert!(f.ports.is_empty());

        let mut evil = port("evil", "10.42.0.9", &["default-id"]);
        evil.mac_address = "fa:16:3e:00:00:01\" accept".into();
        let f = host_filters(&[evil], &[], &[default_group()], |_| "tapevil".into());
        let script = render("t1", &f, true);
        assert!(!script.contains("tapevil"), "{script}");
    }

    #[test]
    fn filters_cross_the_bus_as_json() {
        let a = port("aaaa-1", "10.42.0.5", &["default-id"]);
        let f =
            host_filters(std::slice::from_ref(&a), std::slice::from_ref(&a), &[default_group()], |_| "tapaaaa".into());
        let back: HostFilters = serde_json::from_value(serde_json::to_value(&f).unwrap()).unwrap();
        assert_eq!(back, f);
    }

    fn have_root_and_nft() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        root && Command::new("nft").arg("--version").output().is_ok_and(|o| o.status.success())
    }

    /// The kernel accepts what `render` writes, in both modes (bridge conntrack only where
    /// the kernel has it). Runs in a namespace of its own, so the host's tables are untouched.
    #[test]
    fn root_rendered_tables_pass_nft_check() {
        if !have_root_and_nft() {
            eprintln!("skipped: needs root and nft");
            return;
        }
        let ns = netns::Netns::new("sgchk");
        let nft = Nft { netns: Some(ns.name.clone()) };
        let a = port("aaaa-1", "10.42.0.5", &["default-id", "web"]);
        let mut web = group(
            "web",
            vec![
                rule("ingress", Some("tcp"), Some(80), Some(443)),
                rule("ingress", Some("icmp"), Some(8), None),
                rule("ingress", Some("sctp"), Some(9), Some(9)),
                rule("egress", Some("gre"), None, None),
            ],
        );
        let mut cidr = rule("ingress", Some("udp"), None, None);
        cidr.remote_ip_prefix = Some("192.168.0.0/16".into());
        web.rules.push(cidr);
        let f = host_filters(std::slice::from_ref(&a), std::slice::from_ref(&a), &[default_group(), web], |_| {
            "tapaaaa".into()
        });
        nft.check(&render("chk", &f, false)).unwrap();
        if nft.bridge_conntrack() {
            nft.check(&render("chk", &f, true)).unwrap();
        } else {
            eprintln!("this kernel has no bridge conntrack: only the stateless table was checked");
        }
        // Applying twice replaces, and teardown removes, even when there is nothing.
        nft.apply("chk", &f).unwrap();
        nft.apply("chk", &HostFilters::default()).unwrap();
        nft.teardown("chk").unwrap();
        nft.teardown("chk").unwrap();
    }

    /// A bridge in a namespace of its own with three "guests" (namespaces behind veth pairs
    /// named like taps). Guests a and b start in groups that let nothing in; a rule on b's
    /// group allows ICMP from a only. Then the rule goes, and a's pings stop, without restart.
    #[test]
    fn root_security_groups_enforced_on_a_bridge_both_ways() {
        if !have_root_and_nft() {
            eprintln!("skipped: needs root and nft");
            return;
        }
        let host = netns::Netns::new("sgh");
        host.ip(&["link", "add", "br0", "type", "bridge"]);
        host.ip(&["link", "set", "br0", "up"]);
        let guests: Vec<(netns::Netns, Port)> = [("a", "10.9.0.2"), ("b", "10.9.0.3"), ("c", "10.9.0.4")]
            .iter()
            .enumerate()
            .map(|(i, (name, ip))| {
                let g = netns::Netns::new(&format!("sg{name}"));
                let mut p = port(&format!("{name}{name}{name}-port"), ip, &[&format!("grp-{name}")]);
                p.mac_address = format!("fa:16:3e:00:00:0{}", i + 1);
                let tap = format!("tap{name}");
                host.ip(&["link", "add", &tap, "type", "veth", "peer", "name", "eth0", "netns", &g.name]);
                host.ip(&["link", "set", &tap, "master", "br0", "up"]);
                g.ip(&["link", "set", "eth0", "address", &p.mac_address]);
                g.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
                g.ip(&["link", "set", "eth0", "up"]);
                (g, p)
            })
            .collect();
        let (a, b, c) = (&guests[0].0, &guests[1].0, &guests[2].0);
        let ports: Vec<Port> = guests.iter().map(|(_, p)| p.clone()).collect();
        let nft = Nft { netns: Some(host.name.clone()) };
        let apply = |groups: &[SecurityGroup]| {
            let f = host_filters(&ports, &ports, groups, |p| format!("tap{}", &p.id[..1]));
            nft.apply("t", &f).unwrap();
        };
        assert!(a.ping("10.9.0.3"), "no table yet: the bridge forwards");

        let egress = || rule("egress", None, None, None);
        let mut icmp_from_a = rule("ingress", Some("icmp"), None, None);
        icmp_from_a.remote_ip_prefix = Some("10.9.0.2/32".into());
        let mut with_rule = vec![
            group("grp-a", vec![egress()]),
            group("grp-b", vec![egress(), icmp_from_a]),
            group("grp-c", vec![egress()]),
        ];
        apply(&with_rule);
        assert!(a.ping("10.9.0.3"), "b allows ICMP from a");
        assert!(!c.ping("10.9.0.3"), "b does not allow ICMP from c");
        assert!(!b.ping("10.9.0.2"), "a allows nothing in, b's echo to a is dropped");

        // A remote-group rule: c lets in members of grp-b, i.e. b, and not a.
        let mut from_b = rule("ingress", None, None, None);
        from_b.remote_group_id = Some("grp-b".into());
        with_rule[2].rules.push(from_b);
        apply(&with_rule);
        assert!(b.ping("10.9.0.4"), "c allows its remote group's member b");
        assert!(!a.ping("10.9.0.4"), "a is not in c's remote group");

        // Removing b's rule takes effect at the next apply.
        with_rule[1].rules.truncate(1);
        apply(&with_rule);
        assert!(!a.ping("10.9.0.3"), "the rule is gone, so is a's ICMP to b");

        // A guest cannot send with an address it was not given: b lets ICMP in from the
        // whole subnet, c's real address gets through, its made-up one does not.
        let mut icmp_from_subnet = rule("ingress", Some("icmp"), None, None);
        icmp_from_subnet.remote_ip_prefix = Some("10.9.0.0/24".into());
        with_rule[1].rules.push(icmp_from_subnet);
        apply(&with_rule);
        assert!(c.ping("10.9.0.3"), "b allows ICMP from the subnet");
        c.ip(&["addr", "add", "10.9.0.99/24", "dev", "eth0"]);
        let spoofed = Command::new("ip")
            .args(["netns", "exec", &c.name, "busybox", "ping", "-c", "1", "-W", "1", "-I", "10.9.0.99", "10.9.0.3"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(!spoofed, "spoofed source address dropped");
        nft.teardown("t").unwrap();
        assert!(a.ping("10.9.0.3"), "after teardown the bridge forwards again");
    }

    /// Network namespaces for tests, deleted on drop even when the test fails.
    pub(crate) mod netns {
        use std::process::Command;

        pub struct Netns {
            pub name: String,
        }

        impl Netns {
            pub fn new(label: &str) -> Netns {
                let name = format!("nbx-{label}-{}", std::process::id());
                let ok = Command::new("ip").args(["netns", "add", &name]).status().is_ok_and(|s| s.success());
                assert!(ok, "ip netns add {name} failed");
                Netns { name }
            }
            /// Runs `ip -n <ns> <args>` and panics with its error on failure.
            pub fn ip(&self, args: &[&str]) {
                let out = Command::new("ip").arg("-n").arg(&self.name).args(args).output().expect("run ip");
                assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            /// Whether one ping from inside the namespace to `to` is answered within a second.
            pub fn ping(&self, to: &str) -> bool {
                Command::new("ip")
                    .args(["netns", "exec", &self.name, "busybox", "ping", "-c", "1", "-W", "1", to])
                    .output()
                    .is_ok_and(|o| o.status.success())
            }
        }

        impl Drop for Netns {
            fn drop(&mut self) {
                let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
            }
        }
    }
}
