//! NAT and forwarding: one nftables table per home (`inet novabox_<tag>`) masquerading each
//! network's CIDR out of any interface but its bridge, and accepting forwarded traffic of the
//! bridges. Docker's iptables FORWARD policy DROP still drops what our table accepted (every
//! base chain votes), so when a `DOCKER-USER` chain exists, ACCEPT rules for our bridges go
//! there too, commented `novabox:<tag>`, and only those are removed again.

use super::host;
use super::NetError;
use crate::cidr::Ipv4Cidr;

/// One bridged network as NAT sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridged {
    pub bridge: String,
    pub cidr: Ipv4Cidr,
    /// False for a provider network: as in neutron its traffic is not NATed, and a frame it
    /// bridges onto the physical network's own bridge would otherwise be masqueraded there
    /// (br_netfilter runs bridged IPv4 through these hooks).
    pub masquerade: bool,
}

/// The whole table, replaced in one nft transaction (create, delete, create: atomic, and it
/// works whether or not the table existed).
pub fn render(tag: &str, nets: &[Bridged]) -> String {
    let table = super::nat_table(tag);
    let mut s = format!("table inet {table} {{}}\ndelete table inet {table}\ntable inet {table} {{\n");
    s.push_str("  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
    for n in nets.iter().filter(|n| n.masquerade) {
        s.push_str(&format!("    ip saddr {} oifname != \"{}\" masquerade\n", n.cidr, n.bridge));
    }
    s.push_str("  }\n  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    for n in nets {
        s.push_str(&format!("    iifname \"{}\" accept\n", n.bridge));
        s.push_str(&format!("    oifname \"{}\" ct state established,related accept\n", n.bridge));
    }
    s.push_str("  }\n}\n");
    s
}

pub fn apply(tag: &str, nets: &[Bridged]) -> Result<(), NetError> {
    host::run_input("nft", &["-f", "-"], Some(&render(tag, nets)))?;
    host::run("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
    docker_user(tag, nets)
}

/// Deletes `family name` when it exists; true when it did.
pub fn delete_table(family: &str, name: &str) -> Result<bool, NetError> {
    let listed = host::run("nft", &["list", "tables", family])?;
    if listed.lines().any(|l| l.trim() == format!("table {family} {name}")) {
        host::run("nft", &["delete", "table", family, name])?;
        return Ok(true);
    }
    Ok(false)
}

fn comment(tag: &str) -> String {
    format!("novabox:{tag}")
}

/// ACCEPT rules for our bridges at the top of `DOCKER-USER`, when Docker made that chain.
fn docker_user(tag: &str, nets: &[Bridged]) -> Result<(), NetError> {
    if !host::has("iptables") || host::run("iptables", &["-n", "-L", "DOCKER-USER"]).is_err() {
        return Ok(());
    }
    let c = comment(tag);
    for n in nets {
        for dir in ["-i", "-o"] {
            let rule =
                ["DOCKER-USER", dir, n.bridge.as_str(), "-m", "comment", "--comment", c.as_str(), "-j", "ACCEPT"];
            let mut check = vec!["-C"];
            check.extend(rule);
            if host::run("iptables", &check).is_err() {
                let mut insert = vec!["-I"];
                insert.extend(rule);
                host::run("iptables", &insert)?;
            }
        }
    }
    Ok(())
}

/// The `-D` arguments for exactly our rules in `iptables -S DOCKER-USER` output.
pub fn our_docker_rules(listing: &str, tag: &str) -> Vec<Vec<String>> {
    let marker = format!("--comment {}", comment(tag));
    listing
        .lines()
        .filter(|l| {
            l.starts_with("-A DOCKER-USER ")
                && (l.contains(&marker) || l.contains(&format!("--comment \"{}\"", comment(tag))))
        })
        .map(|l| {
            let mut args: Vec<String> = l.split_whitespace().map(|w| w.trim_matches('"').to_string()).collect();
            args[0] = "-D".into();
            args
        })
        .collect()
}

/// Removes our DOCKER-USER rules; the number removed.
pub fn remove_docker_rules(tag: &str) -> Result<usize, NetError> {
    if !host::has("iptables") {
        return Ok(0);
    }
    let Ok(listing) = host::run("iptables", &["-S", "DOCKER-USER"]) else { return Ok(0) };
    let rules = our_docker_rules(&listing, tag);
    for r in &rules {
        let args: Vec<&str> = r.iter().map(String::as_str).collect();
        host::run("iptables", &args)?;
    }
    Ok(rules.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> Vec<Bridged> {
        vec![
            Bridged { bridge: "nbr0".into(), cidr: "10.42.0.0/24".parse().unwrap(), masquerade: true },
            Bridged { bridge: "nbr1a2b3c4d".into(), cidr: "10.43.0.0/24".parse().unwrap(), masquerade: true },
            Bridged { bridge: "nbrprov0".into(), cidr: "10.50.0.0/24".parse().unwrap(), masquerade: false },
        ]
    }

    #[test]
    fn renders_one_table_per_home() {
        let s = render("abc123", &nets());
        assert!(s.starts_with("table inet novabox_abc123 {}\ndelete table inet novabox_abc123\n"), "{s}");
        assert!(s.contains("ip saddr 10.42.0.0/24 oifname != \"nbr0\" masquerade"), "{s}");
        assert!(s.contains("iifname \"nbr1a2b3c4d\" accept"), "{s}");
        assert!(
            s.contains("iifname \"nbrprov0\" accept") && !s.contains("10.50.0.0/24"),
            "a provider network is not NATed: {s}"
        );
    }

    /// nft itself accepts the script (syntax check only, `-c` changes nothing).
    #[test]
    fn nft_accepts_the_script() {
        if !host::has("nft") || !host::has_net_admin() {
            eprintln!("nft or CAP_NET_ADMIN missing; skipping its syntax check");
            return;
        }
        let out = host::run_input("nft", &["-c", "-f", "-"], Some(&render("abc123", &nets())));
        assert!(out.is_ok(), "{out:?}");
    }

    #[test]
    fn finds_exactly_our_docker_user_rules() {
        let listing = "-N DOCKER-USER\n\
            -A DOCKER-USER -i nbr0 -m comment --comment novabox:abc123 -j ACCEPT\n\
            -A DOCKER-USER -i nbr0 -m comment --comment novabox:ffffff -j ACCEPT\n\
            -A DOCKER-USER -i eth0 -j ACCEPT\n\
            -A DOCKER-USER -j RETURN\n";
        let rules = our_docker_rules(listing, "abc123");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].join(" "), "-D DOCKER-USER -i nbr0 -m comment --comment novabox:abc123 -j ACCEPT");
    }
}
