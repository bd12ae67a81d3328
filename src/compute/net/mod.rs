//! Host network plumbing for bridge mode, run by the compute side (which never opens the
//! database): a bridge per network with its gateway address, a tap per guest port, a dnsmasq
//! per network for DHCP and DNS, and an nftables table for NAT and forwarding. Everything
//! created is marked as novabox's, so `down` removes exactly that and nothing of docker or
//! libvirt.

pub mod secgroups;

use std::path::Path;

use sha2::{Digest, Sha256};

/// A short, stable tag for one home: two homes on one host never share an nft table, an
/// interface alias or a DOCKER-USER rule comment. Six hex digits of the path's SHA-256.
pub fn home_tag(home: &Path) -> String {
    let digest = Sha256::digest(home.as_os_str().as_encoded_bytes());
    digest.iter().take(3).map(|b| format!("{b:02x}")).collect()
}

/// nova's tap naming: `tap` + the first 11 characters of the port id (15 = IFNAMSIZ - 1).
pub fn tap_name(port_id: &str) -> String {
    let short: String = port_id.chars().take(11).collect();
    format!("tap{short}")
}

/// The nft table (family `inet`) holding NAT and forwarding for one home.
pub fn nat_table(tag: &str) -> String {
    format!("novabox_{tag}")
}

/// The nft table (family `bridge`) holding per-port security-group chains for one home.
pub fn sg_table(tag: &str) -> String {
    format!("novabox_sg_{tag}")
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
}
