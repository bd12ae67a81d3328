//! Host resources and programs: memory, disk, the ports novabox listens on, and the binaries
//! the config needs (the list itself lives in `hostpkgs`).

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;

use super::host::HostRoot;
use super::{Check, Status};
use crate::config::{BusKind, Config, Driver, NetworkMode};
use crate::hostpkgs::{self, Requirement};

const MIB: u64 = 1024 * 1024;
const NOT_ON_FIXTURE: &str = "not run against a fixture root";

pub fn check_memory(host: &HostRoot) -> Check {
    const ID: &str = "host.memory";
    let available_kb = host.read("/proc/meminfo").and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:")?.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    let Some(kb) = available_kb else {
        return Check::warn(ID, "cannot read MemAvailable from /proc/meminfo", "check that /proc is mounted");
    };
    let mib = kb / 1024;
    if mib < 512 {
        Check::fail(ID, format!("{mib} MiB of memory available: too little for any guest"), "free memory or add RAM")
    } else if mib < 2048 {
        Check::warn(
            ID,
            format!("{mib} MiB of memory available: room for one or two small guests"),
            "give this machine at least 2 GiB free for RabbitMQ, the services and guests",
        )
    } else {
        Check::pass(ID, format!("{mib} MiB of memory available"))
    }
}

/// Free space where the home (images, instance disks) lives.
pub fn check_disk(host: &HostRoot, home: &Path) -> Check {
    const ID: &str = "host.disk";
    if !host.is_live() {
        return Check::new(ID, Status::Note, NOT_ON_FIXTURE, "");
    }
    // Before init the home does not exist yet: measure the directory it will be created in.
    let existing = home.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let Some(bytes) = super::sys::free_bytes(existing) else {
        return Check::warn(ID, format!("cannot measure free space at {}", existing.display()), "");
    };
    let mib = bytes / MIB;
    let at = home.display();
    if mib < 512 {
        Check::fail(ID, format!("{mib} MiB free for {at}: images and guest disks will not fit"), "free disk space")
    } else if mib < 5 * 1024 {
        Check::warn(
            ID,
            format!("{mib} MiB free for {at}: enough for the test image, tight for real ones"),
            "free disk space or choose another --home",
        )
    } else {
        Check::pass(ID, format!("{} GiB free for {at}", mib / 1024))
    }
}

/// `host.port.api` and `host.port.bus`: ports taken by another program fail at `up`; if novabox
/// itself is up, they are taken by novabox, hence WARN.
pub fn check_ports(host: &HostRoot, config: &Config, checks: &mut Vec<Check>) {
    let mut ports = vec![("host.port.api", "api.port", config.api.listen, config.api.port, "--api-port")];
    if config.bus.url.is_none() && config.bus.kind != BusKind::Local {
        ports.push(("host.port.bus", "bus.port", IpAddr::from([127, 0, 0, 1]), config.bus.port, "--bus-port"));
    }
    for (id, key, ip, port, flag) in ports {
        if !host.is_live() {
            checks.push(Check::new(id, Status::Note, NOT_ON_FIXTURE, ""));
            continue;
        }
        let addr = SocketAddr::new(ip, port);
        checks.push(match TcpListener::bind(addr) {
            Ok(_) => Check::pass(id, format!("{key} {addr} is free")),
            Err(e) => Check::warn(
                id,
                format!("{key} {addr} cannot be bound ({e}); fine if novabox itself is up"),
                format!(
                    "see who holds it with ss -ltnp 'sport = :{port}', or choose another with novabox init {flag} PORT"
                ),
            ),
        });
    }
}

/// `host.listen`: every listener on loopback unless the config says otherwise. The API listens
/// on `[api] listen`; the private RabbitMQ, its epmd and Erlang distribution are always bound to
/// 127.0.0.1. A listener on another address is reachable from the network: WARN, so a user who
/// did not mean it sees it (tokens and passwords then cross the network without TLS).
pub fn check_listen(config: &Config, checks: &mut Vec<Check>) {
    const ID: &str = "host.listen";
    let listen = config.api.listen;
    if listen.is_loopback() {
        checks.push(Check::pass(
            ID,
            format!("the API listens on {listen} (loopback only); so does the private RabbitMQ"),
        ));
    } else {
        checks.push(Check::warn(
            ID,
            format!(
                "api.listen is {listen}: the API (and the passwords and tokens sent to it, over plain HTTP) is                  reachable from other hosts"
            ),
            "if that is not what you want, set `listen = \"127.0.0.1\"` under [api] in novabox.toml",
        ));
    }
}

/// Programs found under a fixture root are looked up in the usual directories below it; on the
/// live host `hostpkgs::find_program` (PATH and sbin) decides.
pub fn program_present(host: &HostRoot, program: &str) -> bool {
    if host.is_live() {
        return hostpkgs::find_program(program).is_some();
    }
    ["/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/lib/rabbitmq/bin"]
        .iter()
        .any(|d| host.path(&format!("{d}/{program}")).is_file())
}

/// `host.program.<name>`: FAIL when the config asks for it explicitly, WARN when `auto` would
/// fall back without it.
pub fn check_programs(host: &HostRoot, config: &Config, checks: &mut Vec<Check>) {
    for req in hostpkgs::requirements(config) {
        let id = format!("host.program.{}", req.program);
        if program_present(host, req.program) {
            checks.push(Check::pass(&id, format!("{} found (for {})", req.program, req.needed_for)));
            continue;
        }
        let explicit = explicitly_required(config, &req);
        let finding = format!("{} is missing (for {})", req.program, req.needed_for);
        let fix = format!("sudo apt-get install {} (or novabox init installs it)", req.package);
        checks.push(if explicit { Check::fail(&id, finding, fix) } else { Check::warn(&id, finding, fix) });
    }
}

fn explicitly_required(config: &Config, req: &Requirement) -> bool {
    match req.program {
        "rabbitmq-server" => config.bus.kind == BusKind::Rabbitmq,
        "qemu-system-x86_64" => matches!(config.compute.driver, Driver::Qemu | Driver::Libvirt),
        "libvirtd" | "virsh" => config.compute.driver == Driver::Libvirt,
        "qemu-img" => matches!(config.compute.driver, Driver::Qemu | Driver::Libvirt),
        "genisoimage" => config.compute.driver == Driver::Libvirt,
        "ip" | "dnsmasq" | "nft" => config.network.mode == NetworkMode::Bridge,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_beyond_loopback_is_a_warning() {
        let mut c = Config::default();
        let mut checks = Vec::new();
        check_listen(&c, &mut checks);
        assert_eq!(checks[0].status, Status::Pass);
        c.api.listen = "0.0.0.0".parse().unwrap();
        checks.clear();
        check_listen(&c, &mut checks);
        assert_eq!(checks[0].status, Status::Warn);
        assert!(checks[0].finding.contains("0.0.0.0"), "{:?}", checks[0]);
    }

    #[test]
    fn memory_thresholds() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("proc")).unwrap();
        let h = HostRoot::new(t.path());
        std::fs::write(t.path().join("proc/meminfo"), "MemTotal: 9 kB\nMemAvailable:     1048576 kB\n").unwrap();
        assert_eq!(check_memory(&h).status, Status::Warn);
        std::fs::write(t.path().join("proc/meminfo"), "MemAvailable:     8388608 kB\n").unwrap();
        assert_eq!(check_memory(&h).status, Status::Pass);
    }

    #[test]
    fn explicit_driver_makes_missing_qemu_fatal() {
        let t = tempfile::tempdir().unwrap();
        let h = HostRoot::new(t.path());
        let mut c = Config::default();
        let mut checks = Vec::new();
        check_programs(&h, &c, &mut checks);
        let qemu = checks.iter().find(|c| c.id == "host.program.qemu-system-x86_64").unwrap();
        assert_eq!(qemu.status, Status::Warn);
        c.compute.driver = Driver::Qemu;
        checks.clear();
        check_programs(&h, &c, &mut checks);
        let qemu = checks.iter().find(|c| c.id == "host.program.qemu-system-x86_64").unwrap();
        assert_eq!(qemu.status, Status::Fail);
    }
}
