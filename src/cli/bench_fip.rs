//! `novabox bench fip`: how long a floating IP takes to answer once associated (issue 19),
//! next to the same DNAT added by hand with `nft` and `ip`, in the same run.
//!
//! Everything happens in namespaces of this process: it moves into a network namespace and a
//! mount namespace of its own first (as `ip netns exec` does, with its own /sys), so the
//! bridges, the router's `qrouter-*` namespace and the "outside" namespace are never the
//! host's and vanish with the process. In a throwaway home (qemu, bridge mode, in-process
//! bus) the stack runs in this process; a test guest boots on `private`, a router joins
//! `private` to `public`, and an outside namespace with only a route to `public` pings the
//! floating IP every 5 ms. Measured, alternately, `rounds` times each: from the associating
//! `PUT /v2.0/floatingips/{id}` to the first echo reply, and from running the three commands
//! that make the same DNAT by hand in the router's namespace to the first echo reply.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use reqwest::Method;
use serde_json::json;

use novabox::client::Client;
use novabox::config::Config;
use novabox::home::Home;
use novabox::secrets::Secrets;

use super::init::{AccelArg, BusArg, DriverArg, InitArgs, NetworkModeArg};
use super::GlobalArgs;

const TIMEOUT: Duration = Duration::from_secs(240);
const OUTSIDE: &str = "nbb-outside";

#[derive(Debug, Args)]
pub struct FipArgs {
    /// Accelerator: auto (the doctor's choice), kvm, tcg
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Associations measured each way
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub rounds: usize,
    /// Print the figures as JSON
    #[arg(long)]
    pub json: bool,
}

/// `novabox bench fip`.
pub fn run(global: &GlobalArgs, args: FipArgs) -> anyhow::Result<ExitCode> {
    if !novabox::compute::net::host::has_net_admin() {
        bail!("the floating IP benchmark builds bridges and namespaces: run it as root (sudo)");
    }
    if !novabox::compute::virt::qemu::QemuDriver::available() {
        bail!("the floating IP benchmark needs qemu-system-x86_64 and qemu-img: sudo apt-get install qemu-system-x86 qemu-utils");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    own_namespaces()?;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("nbf-{}", &tag[..12]));
    let result = fip_in(global, &args, &dir);
    let _ = novabox::stack::down(&Home::at(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Moves this process (before any thread) into a new network namespace and a mount namespace
/// whose mounts do not reach the host's, with a /sys of the new network namespace (what `ip
/// netns exec` does) and a /run/netns of its own: named namespaces made afterwards (`ip netns
/// add`) exist in this mount namespace only.
fn own_namespaces() -> anyhow::Result<()> {
    use std::ffi::CString;
    // SAFETY: plain syscalls on this process with constant, NUL-terminated arguments.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) != 0 {
            bail!("unshare: {}", std::io::Error::last_os_error());
        }
        let root = CString::new("/")?;
        let none = CString::new("none")?;
        if libc::mount(none.as_ptr(), root.as_ptr(), std::ptr::null(), libc::MS_SLAVE | libc::MS_REC, std::ptr::null())
            != 0
        {
            bail!("making / a slave mount: {}", std::io::Error::last_os_error());
        }
        // Named namespaces are files in /run/netns: a tmpfs of this mount namespace keeps the
        // router's and the outside's off the host's /run, and both go with the process.
        std::fs::create_dir_all("/run/netns")?;
        let netns = CString::new("/run/netns")?;
        let tmpfs = CString::new("tmpfs")?;
        if libc::mount(tmpfs.as_ptr(), netns.as_ptr(), tmpfs.as_ptr(), 0, std::ptr::null()) != 0 {
            bail!("mounting a tmpfs on /run/netns: {}", std::io::Error::last_os_error());
        }
        let sys = CString::new("/sys")?;
        let sysfs = CString::new("sysfs")?;
        libc::umount2(sys.as_ptr(), libc::MNT_DETACH);
        if libc::mount(sysfs.as_ptr(), sys.as_ptr(), sysfs.as_ptr(), 0, std::ptr::null()) != 0 {
            bail!("mounting /sys: {}", std::io::Error::last_os_error());
        }
    }
    sh("ip", &["link", "set", "lo", "up"])?;
    Ok(())
}

fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    novabox::compute::net::host::run(program, args).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The outside world: a namespace joined to this one by a veth, with a route to `public` only.
fn outside(public: &str) -> anyhow::Result<()> {
    sh("ip", &["netns", "add", OUTSIDE])?;
    sh("ip", &["link", "add", "nbb-out", "type", "veth", "peer", "name", "eth0", "netns", OUTSIDE])?;
    sh("ip", &["addr", "add", "192.0.2.1/24", "dev", "nbb-out"])?;
    sh("ip", &["link", "set", "nbb-out", "up"])?;
    for a in [
        &["addr", "add", "192.0.2.2/24", "dev", "eth0"][..],
        &["link", "set", "eth0", "up"],
        &["link", "set", "lo", "up"],
        &["route", "add", public, "via", "192.0.2.1"],
    ] {
        let mut full = vec!["-n", OUTSIDE];
        full.extend_from_slice(a);
        sh("ip", &full)?;
    }
    Ok(())
}

fn fip_in(global: &GlobalArgs, args: &FipArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    let home = Home::at(dir);
    home.create_dirs()?;
    if let Ok(user_home) = super::home(global) {
        let built = user_home.images_dir().join(novabox::doctor::probe::TEST_IMAGE_DIR);
        let ours = home.images_dir().join(novabox::doctor::probe::TEST_IMAGE_DIR);
        if novabox::doctor::probe::TestImage::in_dir(&built).exists() {
            std::fs::create_dir_all(&ours)?;
            for f in ["vmlinuz", "initrd.img"] {
                std::fs::copy(built.join(f), ours.join(f)).with_context(|| format!("copying the test guest's {f}"))?;
            }
        }
    }
    let bench_global = GlobalArgs { home: Some(dir.to_path_buf()), sql_echo: false, verbose: global.verbose };
    let mut init = InitArgs::for_up(false, true);
    init.no_install = true;
    init.no_clouds_yaml = true;
    init.driver = Some(DriverArg::Qemu);
    init.bus = Some(BusArg::Local);
    init.network_mode = Some(NetworkModeArg::Bridge);
    init.accel = Some(args.accel);
    init.api_port = Some(novabox::supervise::free_port()?);
    eprintln!("preparing a throwaway home in {}", dir.display());
    if super::init::run(&bench_global, init)? != ExitCode::SUCCESS {
        bail!("novabox init failed in the benchmark home");
    }
    let config = Arc::new(Config::load(&home.config_file())?);
    outside(&config.network.public_cidr.to_string())?;
    let secrets = Secrets::load(&home.secrets_file())?.context("the benchmark home has no secrets")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench(home, config, secrets, args))
}

async fn bench(home: Home, config: Arc<Config>, secrets: Secrets, args: &FipArgs) -> anyhow::Result<ExitCode> {
    let (h, c, s) = (&home, &config, &secrets);
    super::bench::with_stack(h, c, s, |ready| async move {
        if ready.network != "bridge" || ready.driver != "qemu" {
            bail!("the stack runs {} networking with {}, not bridge with qemu", ready.network, ready.driver);
        }
        measure(h, c, s, args).await
    })
    .await
}

async fn measure(home: &Home, config: &Config, secrets: &Secrets, args: &FipArgs) -> anyhow::Result<ExitCode> {
    let c = Client::login(&config.auth_url(), "demo", &secrets.demo_password, "demo").await?;
    // The stack imports the test guest in the background at its first start.
    let start = Instant::now();
    let image = loop {
        let list = c.image(Method::GET, "/images?name=tiny", None).await?;
        let active = list["images"].as_array().into_iter().flatten().find(|i| i["status"] == "active");
        if let Some(id) = active.and_then(|i| i["id"].as_str()) {
            break id.to_string();
        }
        if start.elapsed() > TIMEOUT {
            bail!("the test guest `tiny` was not imported within {}s", TIMEOUT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let body = json!({"server": {"name": "fip-bench", "imageRef": image, "flavorRef": "1", "networks": "auto"}});
    let id = c.compute(Method::POST, "/servers", Some(body)).await?["server"]["id"]
        .as_str()
        .context("no server id")?
        .to_string();
    c.wait_for(&id, "ACTIVE", TIMEOUT).await?;
    let console = home.instances_dir().join(&id).join("console.log");
    let start = Instant::now();
    while !std::fs::read_to_string(&console).unwrap_or_default().contains("novabox-guest: ip ") {
        if start.elapsed() > TIMEOUT {
            bail!("the guest got no address within {}s", TIMEOUT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let port = c.network(Method::GET, &format!("/ports?device_id={id}"), None).await?["ports"][0].clone();
    let port_id = port["id"].as_str().context("the server has no port")?.to_string();
    let fixed: Ipv4Addr = port["fixed_ips"][0]["ip_address"].as_str().unwrap_or_default().parse()?;
    let groups = c.network(Method::GET, "/security-groups?name=default", None).await?;
    let group = groups["security_groups"][0]["id"].as_str().context("no default group")?.to_string();
    let rule = json!({"security_group_rule": {"security_group_id": group, "direction": "ingress", "protocol": "icmp"}});
    c.network(Method::POST, "/security-group-rules", Some(rule)).await?;
    let public = c.network(Method::GET, "/networks?name=public", None).await?["networks"][0]["id"]
        .as_str()
        .context("no public network")?
        .to_string();
    let subnet = c.network(Method::GET, "/subnets?name=private-subnet", None).await?["subnets"][0]["id"]
        .as_str()
        .context("no private-subnet")?
        .to_string();
    let router = c
        .network(
            Method::POST,
            "/routers",
            Some(json!({"router": {"name": "bench", "external_gateway_info": {"network_id": public}}})),
        )
        .await?["router"]
        .clone();
    let router_id = router["id"].as_str().context("no router id")?.to_string();
    c.network(Method::PUT, &format!("/routers/{router_id}/add_router_interface"), Some(json!({"subnet_id": subnet})))
        .await?;
    let fip = c
        .network(Method::POST, "/floatingips", Some(json!({"floatingip": {"floating_network_id": public}})))
        .await?["floatingip"]
        .clone();
    let fip_id = fip["id"].as_str().context("no floating IP id")?.to_string();
    let address: Ipv4Addr = fip["floating_ip_address"].as_str().unwrap_or_default().parse()?;
    let ns = novabox::network::routers::namespace(&router_id);
    // The gateway port belongs to no project, so demo does not see it: read the device in the namespace.
    let deadline = Instant::now() + TIMEOUT;
    let qg = loop {
        let links = sh("ip", &["-n", &ns, "-o", "link", "show"]).unwrap_or_default();
        if let Some(q) = links.split_whitespace().find(|w| w.starts_with("qg-")) {
            break q.trim_end_matches(':').split('@').next().unwrap_or_default().to_string();
        }
        if Instant::now() > deadline {
            bail!("the router's namespace {ns} got no gateway");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let fip_uri = format!("/floatingips/{fip_id}");
    let (mut through_api, mut by_hand) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // novabox: the API call that associates, to the first reply.
        let t = Instant::now();
        c.network(Method::PUT, &fip_uri, Some(json!({"floatingip": {"port_id": port_id}}))).await?;
        through_api.push(first_reply(address, t).await?);
        c.network(Method::PUT, &fip_uri, Some(json!({"floatingip": {"port_id": null}}))).await?;
        silent(address).await?;

        // By hand: the same DNAT, SNAT and address in the router's namespace.
        let t = Instant::now();
        let nft = |rule: String| {
            let ns = ns.clone();
            move || sh("ip", &["netns", "exec", &ns, "nft", &rule])
        };
        let dnat = format!("add rule ip novabox_router prerouting ip daddr {address} dnat to {fixed}");
        let snat =
            format!("add rule ip novabox_router postrouting ip saddr {fixed} oifname \"{qg}\" snat to {address}");
        tokio::task::spawn_blocking(nft(dnat)).await??;
        tokio::task::spawn_blocking(nft(snat)).await??;
        sh("ip", &["-n", &ns, "addr", "add", &format!("{address}/32"), "dev", &qg])?;
        by_hand.push(first_reply(address, t).await?);
        // Undone by novabox itself: a refresh makes the namespace match the rows again.
        c.network(
            Method::PUT,
            &format!("/routers/{router_id}"),
            Some(json!({"router": {"name": format!("bench-{round}")}})),
        )
        .await?;
        silent(address).await?;
    }
    c.compute(Method::DELETE, &format!("/servers/{id}"), None).await?;
    through_api.sort();
    by_hand.sort();
    let median = |v: &[Duration]| v[v.len() / 2].as_secs_f64() * 1000.0;
    let (api_ms, hand_ms) = (median(&through_api), median(&by_hand));
    if args.json {
        let ms = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>();
        println!(
            "{}",
            json!({"rounds": args.rounds, "novabox_ms": ms(&through_api), "by_hand_ms": ms(&by_hand),
                   "novabox_median_ms": api_ms, "by_hand_median_ms": hand_ms})
        );
    } else {
        println!("floating IP associate to first echo reply from outside, {} rounds, median:", args.rounds);
        println!("  novabox  PUT /v2.0/floatingips/{{id}} -> reply  {api_ms:>8.1} ms");
        println!("  by hand  nft add rule x2 + ip addr add -> reply  {hand_ms:>8.1} ms");
        println!("  overhead {:>+8.1} ms", api_ms - hand_ms);
    }
    Ok(ExitCode::SUCCESS)
}

/// Pings `to` from the outside namespace every 5 ms until a reply; the time since `since`.
async fn first_reply(to: Ipv4Addr, since: Instant) -> anyhow::Result<Duration> {
    tokio::task::spawn_blocking(move || {
        in_outside(|| {
            let sock = IcmpSocket::open()?;
            let mut seq = 0u16;
            while since.elapsed() < Duration::from_secs(60) {
                seq = seq.wrapping_add(1);
                sock.send(to, seq)?;
                if sock.reply_within(to, Duration::from_millis(5))? {
                    return Ok(since.elapsed());
                }
            }
            bail!("{to} did not answer within 60 s")
        })
    })
    .await?
}

/// Waits until `to` has not answered for half a second (the NAT is gone).
async fn silent(to: Ipv4Addr) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        in_outside(|| {
            let sock = IcmpSocket::open()?;
            let start = Instant::now();
            let mut quiet_since = Instant::now();
            let mut seq = 1000u16;
            while start.elapsed() < Duration::from_secs(60) {
                seq = seq.wrapping_add(1);
                sock.send(to, seq)?;
                if sock.reply_within(to, Duration::from_millis(20))? {
                    quiet_since = Instant::now();
                }
                if quiet_since.elapsed() > Duration::from_millis(500) {
                    return Ok(());
                }
            }
            bail!("{to} still answers after 60 s")
        })
    })
    .await?
}

/// Runs `f` on a thread inside the outside namespace.
fn in_outside<T: Send>(f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    use std::os::fd::AsRawFd;
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{OUTSIDE}")).context("the outside namespace")?;
            // SAFETY: setns on this short-lived thread only, with an open namespace fd.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the outside thread panicked"))?
    })
}

/// A raw ICMP socket sending echo requests and reading echo replies, with an echo id of its
/// own: a router's conntrack entry of an earlier id would still DNAT the same id after its
/// rule went, so each measurement uses a fresh one.
struct IcmpSocket(std::os::fd::OwnedFd, [u8; 2]);

impl IcmpSocket {
    fn open() -> anyhow::Result<IcmpSocket> {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2); the descriptor is owned by the returned value.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        if fd < 0 {
            bail!("raw ICMP socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor socket(2) just returned.
        Ok(IcmpSocket(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }, rand::random::<u16>().to_be_bytes()))
    }

    fn send(&self, to: Ipv4Addr, seq: u16) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd;
        let mut pkt = [8u8, 0, 0, 0, self.1[0], self.1[1], (seq >> 8) as u8, seq as u8];
        let sum = checksum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(to).to_be() },
            sin_zero: [0; 8],
        };
        // SAFETY: sendto with a buffer and address that live through the call.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // No route or neighbour yet is what "no reply yet" looks like here.
            if !matches!(e.raw_os_error(), Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN)) {
                bail!("sendto: {e}");
            }
        }
        Ok(())
    }

    /// True when an echo reply of ours from `from` arrives within `wait`.
    fn reply_within(&self, from: Ipv4Addr, wait: Duration) -> anyhow::Result<bool> {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let mut pfd = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: poll on one descriptor we own.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if r <= 0 {
                return Ok(false);
            }
            let mut buf = [0u8; 1500];
            // SAFETY: recv into a buffer that lives through the call.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 28 {
                continue;
            }
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
            if src == from && buf.get(ihl) == Some(&0) && buf.get(ihl + 4..ihl + 6) == Some(&self.1[..]) {
                return Ok(true);
            }
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_checksum_is_the_internet_checksum() {
        // An echo request with id 0x4e42, seq 1: the checksum makes the whole sum 0xffff.
        let mut pkt = [8u8, 0, 0, 0, 0x4e, 0x42, 0, 1];
        let sum = checksum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&pkt), 0);
    }
}
