//! Guest networking prerequisites: tap devices, vhost-net and the right to make bridges.

use super::environment::Environment;
use super::host::HostRoot;
use super::Check;

/// Bit of CAP_NET_ADMIN in the capability sets of /proc/self/status.
const CAP_NET_ADMIN_BIT: u32 = 12;

#[derive(Debug, Clone, Copy, Default)]
pub struct NetFacts {
    pub tun: bool,
    pub cap_net_admin: bool,
}

pub fn run_checks(host: &HostRoot, env: &Environment, checks: &mut Vec<Check>) -> NetFacts {
    let in_container = env.container.is_some();
    let tun = host.exists("/dev/net/tun");
    checks.push(if tun {
        Check::pass("net.tun", "/dev/net/tun exists: guests can have tap devices")
    } else {
        Check::warn(
            "net.tun",
            "/dev/net/tun does not exist: no tap devices, so no bridge networking",
            if in_container {
                "start the container with --device /dev/net/tun"
            } else {
                "sudo modprobe tun; until then guests use QEMU user networking"
            },
        )
    });
    checks.push(if host.exists("/dev/vhost-net") {
        Check::pass("net.vhost_net", "/dev/vhost-net exists: virtio-net runs in the kernel")
    } else {
        Check::warn(
            "net.vhost_net",
            "/dev/vhost-net does not exist: virtio-net falls back to qemu's slower userspace path",
            if in_container {
                "load vhost_net on the host and start the container with --device /dev/vhost-net"
            } else {
                "sudo modprobe vhost_net"
            },
        )
    });
    let cap_net_admin = host
        .self_status("CapEff")
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .map(|caps| caps & (1 << CAP_NET_ADMIN_BIT) != 0)
        .unwrap_or(false);
    checks.push(if cap_net_admin {
        Check::pass("net.cap_net_admin", "novabox has CAP_NET_ADMIN: bridge mode is possible")
    } else {
        Check::warn(
            "net.cap_net_admin",
            "novabox lacks CAP_NET_ADMIN: it cannot create bridges, taps or NAT rules, so guests use QEMU user networking",
            if in_container {
                "start the container with --cap-add NET_ADMIN, or accept user networking"
            } else {
                "run novabox as root (or give the binary cap_net_admin), or accept user networking"
            },
        )
    });
    NetFacts { tun, cap_net_admin }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cap_net_admin_from_status() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("proc/self")).unwrap();
        std::fs::write(t.path().join("proc/self/status"), "Name:\tx\nCapEff:\t0000000000001000\n").unwrap();
        let env = Environment {
            platform: super::super::environment::Platform::BareMetal,
            name: "bare-metal host".into(),
            container: None,
            evidence: vec![],
        };
        let mut checks = Vec::new();
        let facts = run_checks(&HostRoot::new(t.path()), &env, &mut checks);
        assert!(facts.cap_net_admin && !facts.tun);
    }
}
