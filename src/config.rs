//! `novabox.toml`: every key has a default, unknown keys and bad values are errors that name
//! the file, the key and the value.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cidr::Ipv4Cidr;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error(
        "{file} is not a valid novabox config: {message}\n\
         Fix that line, or run `novabox init --force` to rewrite the config with defaults \
         (the database and images are kept)."
    )]
    Parse { file: PathBuf, message: String },
    #[error("{file}: `{key} = {value}` is not allowed: {reason}. Fix it in that file.")]
    Invalid { file: PathBuf, key: &'static str, value: String, reason: String },
    #[error("cannot write {file}: {source}")]
    Write { file: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub host: HostConfig,
    pub api: ApiConfig,
    pub bus: BusConfig,
    pub compute: ComputeConfig,
    pub network: NetworkConfig,
    pub images: ImagesConfig,
    pub db: DbConfig,
    pub metadata: MetadataConfig,
    pub faults: FaultsConfig,
    pub console: ConsoleConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// The compute host name, as `os-services` and `os-hypervisors` show it.
    pub name: String,
    pub region: String,
    pub availability_zone: String,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig { name: local_hostname(), region: "RegionOne".into(), availability_zone: "nova".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Loopback unless a user decides otherwise; `doctor` warns when it is not.
    pub listen: IpAddr,
    pub port: u16,
    pub token_ttl_secs: u64,
    /// Requests with larger bodies get 413. Image uploads have their own limit.
    pub max_body_kb: u64,
    /// Live tokens one user may hold; issuing one more retires that user's oldest. Keeps the
    /// token table bounded however fast a client logs in (keystone's fernet tokens are not
    /// stored at all; ours are, so that revocation and `down` stay simple). 0: no bound.
    pub max_tokens_per_user: u32,
    /// keystone's `[security_compliance] lockout_failure_attempts`: wrong passwords in a row
    /// before the account is locked for `lockout_duration_secs`. 0 turns the lockout off.
    pub lockout_failure_attempts: u32,
    /// keystone's `lockout_duration`, in seconds.
    pub lockout_duration_secs: u64,
    /// Wrong passwords one source address may send within `lockout_duration_secs` before its
    /// password logins are refused for that long, whichever users they name. 0: no limit.
    pub lockout_source_failures: u32,
    /// A client must send a request's headers within this many seconds, or the connection is
    /// closed (a half-sent header otherwise holds a connection forever).
    pub header_read_timeout_secs: u64,
    /// A request body (a JSON body, an image upload) may pause at most this long between two
    /// pieces; a stalled upload fails and its image goes back to `queued`.
    pub body_read_timeout_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: IpAddr::from([127, 0, 0, 1]),
            port: 8774,
            token_ttl_secs: 3600,
            max_body_kb: 256,
            max_tokens_per_user: 1000,
            lockout_failure_attempts: 10,
            lockout_duration_secs: 60,
            lockout_source_failures: 100,
            header_read_timeout_secs: 30,
            body_read_timeout_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// RabbitMQ when `rabbitmq-server` is installed, the in-process bus otherwise.
    Auto,
    Rabbitmq,
    Local,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    pub kind: BusKind,
    /// The port of the private RabbitMQ that novabox starts for this home.
    pub port: u16,
    /// An external broker (`amqp://user:pass@host:port/vhost`); novabox then starts none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How many messages one service handles at once, like nova's consumer pool.
    pub pool_size: u32,
    pub call_timeout_secs: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig { kind: BusKind::Auto, port: 5672, url: None, pool_size: 64, call_timeout_secs: 60 }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// qemu when qemu-system-x86_64 is installed, fake otherwise.
    Auto,
    Fake,
    Qemu,
    Libvirt,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when `doctor` proved a normal guest boots under it, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

/// How the config drive is presented to guests (nova's `config_drive_format`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConfigDriveFormat {
    /// An ISO9660 image built with genisoimage or xorriso, attached as a CD-ROM (nova's default).
    Iso9660,
    /// A read-only FAT disk made by qemu from the directory (no host tool needed).
    Vfat,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeConfig {
    pub driver: Driver,
    pub accel: Accel,
    /// Where the libvirt driver connects (`qemu:///system`, `qemu:///session`, `test:///default`).
    pub libvirt_uri: String,
    pub cpu_allocation_ratio: f64,
    pub ram_allocation_ratio: f64,
    pub disk_allocation_ratio: f64,
    pub reserved_host_memory_mb: u64,
    /// What the fake driver waits before a guest is "running", to mimic a slow hypervisor.
    pub fake_delay_ms: u64,
    /// The host the fake driver pretends to be (nova's fake driver is similarly roomy), so
    /// benchmarks and CI can place thousands of fake guests.
    pub fake_vcpus: u64,
    pub fake_memory_mb: u64,
    pub fake_local_gb: u64,
    pub heartbeat_secs: u64,
    /// A service whose last heartbeat is older than this is down for the scheduler.
    pub service_down_secs: u64,
    /// `iso9660` (falls back to `vfat`, with a warning, when no ISO tool is installed) or `vfat`.
    pub config_drive_format: ConfigDriveFormat,
    /// A cached base image no guest on this host has used for this long is removed (nova's
    /// `remove_unused_original_minimum_age_seconds`).
    pub image_cache_max_age_secs: u64,
    /// How long `down` (or Ctrl-C on `up`) lets guests shut down after the ACPI power button
    /// before stopping their qemu hard. Short on purpose: a sandbox is stopped often, and a
    /// guest without acpid would hold every `down` for nova's 60 s.
    pub shutdown_timeout_secs: u64,
    /// nova's `reclaim_instance_interval`: above 0, a deleted server is only powered off and
    /// SOFT_DELETED (`restore` brings it back, `forceDelete` deletes it now), and compute
    /// reclaims it once it has been soft-deleted this long (by the test clock). 0 deletes at once.
    pub reclaim_instance_interval: u64,
    /// nova's `resize_confirm_window`: above 0, a resize left in VERIFY_RESIZE this many
    /// seconds (by the test clock) is confirmed by compute. 0 waits for the user.
    pub resize_confirm_window: u64,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        // nova's defaults for the allocation ratios.
        ComputeConfig {
            driver: Driver::Auto,
            accel: Accel::Auto,
            libvirt_uri: "qemu:///system".into(),
            cpu_allocation_ratio: 16.0,
            ram_allocation_ratio: 1.5,
            disk_allocation_ratio: 1.0,
            reserved_host_memory_mb: 512,
            fake_delay_ms: 0,
            fake_vcpus: 1000,
            fake_memory_mb: 1024 * 1024,
            fake_local_gb: 100_000,
            heartbeat_secs: 10,
            service_down_secs: 60,
            config_drive_format: ConfigDriveFormat::Iso9660,
            image_cache_max_age_secs: 86400,
            shutdown_timeout_secs: 10,
            reclaim_instance_interval: 0,
            resize_confirm_window: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Bridge when novabox has CAP_NET_ADMIN, QEMU user networking otherwise.
    Auto,
    Bridge,
    User,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    pub mode: NetworkMode,
    pub bridge: String,
    #[serde(with = "cidr_string")]
    pub cidr: Ipv4Cidr,
    pub dns_domain: String,
    /// Provider networks' physical networks: a name admins give as
    /// `provider:physical_network`, mapped to the host interface or bridge that carries it
    /// (neutron's `bridge_mappings`), e.g. `physnet1 = "eth1"`.
    pub physical_networks: std::collections::BTreeMap<String, String>,
    /// The external network `public` (issue 19): its subnet, DevStack's 172.24.4.0/24 by
    /// default, and its bridge, where the host holds the gateway (.1) as DevStack's br-ex.
    #[serde(with = "cidr_string")]
    pub public_cidr: Ipv4Cidr,
    pub public_bridge: String,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            mode: NetworkMode::Auto,
            bridge: "nbr0".into(),
            cidr: Ipv4Cidr::DEFAULT_GUEST_NET,
            dns_domain: "novalocal".into(),
            physical_networks: Default::default(),
            public_cidr: Ipv4Cidr::DEFAULT_PUBLIC_NET,
            public_bridge: "nbr-ex".into(),
        }
    }
}

/// The default network `[network]` asks for, as the network module and the database take it.
impl From<&Config> for crate::network::DefaultNetwork {
    fn from(c: &Config) -> Self {
        crate::network::DefaultNetwork { bridge: c.network.bridge.clone(), cidr: c.network.cidr }
    }
}

impl From<&Config> for crate::network::routers::PublicNetwork {
    fn from(c: &Config) -> Self {
        crate::network::routers::PublicNetwork { bridge: c.network.public_bridge.clone(), cidr: c.network.public_cidr }
    }
}

/// The metadata service guests read at 169.254.169.254 (see `src/metadata.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    pub enabled: bool,
    /// Where it listens. At the default address, `up` serves it only when the bridge exists
    /// (bridge mode) and gives the bridge that address; anywhere else (tests: loopback) it
    /// simply binds there.
    pub listen: std::net::SocketAddr,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            enabled: true,
            listen: std::net::SocketAddr::new(std::net::IpAddr::V4(crate::network::METADATA_ADDRESS), 80),
        }
    }
}

/// Fault injection and the test clock (docs/faults.md): off unless asked for, since they let
/// an admin break the cloud on purpose.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsConfig {
    /// `/novabox/v1/faults` and `/novabox/v1/clock` answer (admins only), and servers'
    /// `novabox:fault`/`novabox:delay` metadata triggers fire. `up --faults` sets it for one run.
    pub enabled: bool,
}

/// The remote consoles (issue 22): nova's `[consoleauth] token_ttl`, here `[console]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// How long a console URL's token opens the console, in seconds (nova's default: 600).
    pub token_ttl_secs: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig { token_ttl_secs: 600 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Import the offline-built test image as `tiny` when the image store is empty.
    pub import_test_image: bool,
    pub max_upload_mb: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig { import_test_image: true, max_upload_mb: 20 * 1024 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DbConfig {
    /// Log every SQL statement with its duration (like sqlalchemy's echo).
    pub echo: bool,
    /// Boot traces (`novabox trace`) and notifications (`novabox events`) older than this many
    /// days are deleted, at start and hourly; 0 keeps them all. A sandbox left running for
    /// months would otherwise grow its database with every request.
    pub history_days: u32,
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig { echo: false, history_days: 14 }
    }
}

mod cidr_string {
    use super::Ipv4Cidr;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &Ipv4Cidr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(c)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Ipv4Cidr {
    pub const DEFAULT_PUBLIC_NET: Ipv4Cidr = match Ipv4Cidr::new_const([172, 24, 4, 0], 24) {
        Some(c) => c,
        None => panic!("bad public network"),
    };
    pub const DEFAULT_GUEST_NET: Ipv4Cidr = match Ipv4Cidr::new_const([10, 42, 0, 0], 24) {
        Some(c) => c,
        None => panic!("bad default network"),
    };
}

impl Config {
    /// Reads and validates `file`. A missing file is an error here: callers that accept
    /// defaults (before `init`) check `Home::is_initialized` first.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(file).map_err(|source| ConfigError::Read { file: file.to_path_buf(), source })?;
        Config::parse(&text, file)
    }

    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(file)?;
        Ok(config)
    }

    /// Checks what types alone cannot: ranges, names and combinations.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: &dyn fmt::Display, reason: &str| {
            Err(ConfigError::Invalid {
                file: file.to_path_buf(),
                key,
                value: value.to_string(),
                reason: reason.to_string(),
            })
        };
        if !is_valid_hostname(&self.host.name) {
            return invalid("host.name", &self.host.name, "use letters, digits, '-' and '.' (at most 255)");
        }
        if self.host.region.trim().is_empty() {
            return invalid("host.region", &"\"\"", "a region name is required");
        }
        if self.host.availability_zone.trim().is_empty() {
            return invalid("host.availability_zone", &"\"\"", "an availability zone name is required");
        }
        // A token must outlive the page load that uses it, and a day is far past nova's 600 s.
        if !(10..=86_400).contains(&self.console.token_ttl_secs) {
            return invalid("console.token_ttl_secs", &self.console.token_ttl_secs, "use 10 to 86400 seconds");
        }
        if self.api.port == 0 {
            return invalid("api.port", &0, "use a port from 1 to 65535");
        }
        if self.api.token_ttl_secs < 60 {
            return invalid("api.token_ttl_secs", &self.api.token_ttl_secs, "tokens must live at least 60 s");
        }
        if self.api.max_body_kb == 0 {
            return invalid("api.max_body_kb", &0, "must be at least 1");
        }
        if self.api.lockout_failure_attempts > 0 && self.api.lockout_duration_secs == 0 {
            return invalid("api.lockout_duration_secs", &0, "a lockout needs a duration of at least 1 s");
        }
        if self.api.header_read_timeout_secs == 0 {
            return invalid("api.header_read_timeout_secs", &0, "give clients at least 1 s to send headers");
        }
        if self.api.body_read_timeout_secs == 0 {
            return invalid("api.body_read_timeout_secs", &0, "give clients at least 1 s between body pieces");
        }
        if self.bus.port == 0 {
            return invalid("bus.port", &0, "use a port from 1 to 65535");
        }
        if self.bus.port == self.api.port {
            return invalid("bus.port", &self.bus.port, "the broker and the API need different ports");
        }
        if let Some(url) = &self.bus.url {
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return invalid("bus.url", &format!("{url:?}"), "an AMQP URL starts with amqp:// or amqps://");
            }
        }
        if self.bus.pool_size == 0 || self.bus.pool_size > 4096 {
            return invalid("bus.pool_size", &self.bus.pool_size, "use 1 to 4096");
        }
        if self.bus.call_timeout_secs == 0 {
            return invalid("bus.call_timeout_secs", &0, "must be at least 1");
        }
        // A libvirt URI is `driver[+transport]://[host]/path`, e.g. qemu:///system.
        let uri = &self.compute.libvirt_uri;
        if !uri.split_once("://").is_some_and(|(scheme, _)| {
            !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+')
        }) || uri.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return invalid(
                "compute.libvirt_uri",
                &format!("{uri:?}"),
                "use a libvirt URI such as \"qemu:///system\" or \"qemu:///session\"",
            );
        }
        for (key, v) in [
            ("compute.cpu_allocation_ratio", self.compute.cpu_allocation_ratio),
            ("compute.ram_allocation_ratio", self.compute.ram_allocation_ratio),
            ("compute.disk_allocation_ratio", self.compute.disk_allocation_ratio),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 1000.0) {
                return invalid(key, &v, "use a ratio above 0 and at most 1000");
            }
        }
        for (key, v) in [
            ("compute.fake_vcpus", self.compute.fake_vcpus),
            ("compute.fake_memory_mb", self.compute.fake_memory_mb),
            ("compute.fake_local_gb", self.compute.fake_local_gb),
        ] {
            if v == 0 || v > i32::MAX as u64 {
                return invalid(key, &v, "use a positive number");
            }
        }
        if self.compute.heartbeat_secs == 0 {
            return invalid("compute.heartbeat_secs", &0, "must be at least 1");
        }
        if self.compute.service_down_secs <= self.compute.heartbeat_secs {
            return invalid(
                "compute.service_down_secs",
                &self.compute.service_down_secs,
                "must be longer than compute.heartbeat_secs, or every service looks down",
            );
        }
        if self.compute.image_cache_max_age_secs < 60 {
            return invalid(
                "compute.image_cache_max_age_secs",
                &self.compute.image_cache_max_age_secs,
                "use at least 60 seconds, or a base image could go between two boots of it",
            );
        }
        if !is_valid_ifname(&self.network.bridge) {
            return invalid(
                "network.bridge",
                &format!("{:?}", self.network.bridge),
                "an interface name has 1 to 15 letters, digits, '-' or '_'",
            );
        }
        for (name, interface) in &self.network.physical_networks {
            let shown = format!("{{ {name:?} = {interface:?} }}");
            let name_ok = (1..=64).contains(&name.len())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !name_ok {
                return invalid(
                    "network.physical_networks",
                    &shown,
                    "a physical network name has 1 to 64 letters, digits, '-', '_' or '.'",
                );
            }
            let if_ok = (1..=15).contains(&interface.len())
                && interface.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !if_ok {
                return invalid(
                    "network.physical_networks",
                    &shown,
                    &format!(
                        "physical network {name:?} must map to a host interface or bridge name (1 to 15 letters, \
                         digits, '-', '_' or '.')"
                    ),
                );
            }
            if interface == &self.network.bridge || interface == &self.network.public_bridge {
                return invalid(
                    "network.physical_networks",
                    &shown,
                    &format!(
                        "physical network {name:?} cannot be one of novabox's own bridges (network.bridge, \
                         network.public_bridge)"
                    ),
                );
            }
        }
        if !is_valid_ifname(&self.network.public_bridge) || self.network.public_bridge == self.network.bridge {
            return invalid(
                "network.public_bridge",
                &format!("{:?}", self.network.public_bridge),
                "an interface name has 1 to 15 letters, digits, '-' or '_', and differs from network.bridge",
            );
        }
        if self.network.public_cidr.overlaps(&self.network.cidr) || self.network.public_cidr.prefix() > 29 {
            return invalid(
                "network.public_cidr",
                &self.network.public_cidr,
                "must not overlap network.cidr, and needs room for a gateway, routers and floating IPs (/29 or larger)",
            );
        }
        if self.images.max_upload_mb == 0 {
            return invalid("images.max_upload_mb", &0, "must be at least 1");
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# novabox configuration. Every key is optional; `novabox config show` prints the\n\
             # effective values. Unknown keys are errors.\n\n{body}"
        )
    }

    /// Writes the config atomically, owner-readable only.
    pub fn save(&self, file: &Path) -> Result<(), ConfigError> {
        crate::home::write_atomic(file, self.to_toml().as_bytes(), 0o600)
            .map_err(|source| ConfigError::Write { file: file.to_path_buf(), source })
    }

    /// The URL clients use for the identity service.
    pub fn auth_url(&self) -> String {
        let host = match self.api.listen {
            IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_string(),
            IpAddr::V6(a) if a.is_unspecified() => "[::1]".to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        };
        format!("http://{host}:{}/identity/v3", self.api.port)
    }
}

fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn is_valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn local_hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = raw.trim();
    if is_valid_hostname(name) {
        name.to_string()
    } else {
        "localhost".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/x/novabox.toml"))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.api.port, 8774);
        assert_eq!(c.bus.kind, BusKind::Auto);
        assert_eq!(c.network.cidr.to_string(), "10.42.0.0/24");
        assert!(c.api.listen.is_loopback());
    }

    #[test]
    fn round_trips_through_toml() {
        let mut c = Config::default();
        c.api.port = 9999;
        c.compute.driver = Driver::Fake;
        c.bus.url = Some("amqp://u:p@127.0.0.1:5999/%2f".into());
        let back = parse(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = parse("[api]\nprot = 1\n").unwrap_err().to_string();
        assert!(err.contains("/x/novabox.toml"), "{err}");
        assert!(err.contains("prot"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn wrong_type_names_key() {
        let err = parse("[api]\nport = \"eighty\"\n").unwrap_err().to_string();
        assert!(err.contains("port"), "{err}");
        let err = parse("[api]\nport = 70000\n").unwrap_err().to_string();
        assert!(err.contains("70000"), "{err}");
    }

    #[test]
    fn bad_enum_value_lists_choices() {
        let err = parse("[compute]\ndriver = \"xen\"\n").unwrap_err().to_string();
        assert!(err.contains("xen") && err.contains("qemu"), "{err}");
    }

    #[test]
    fn validation_names_key_and_value() {
        let err = parse("[api]\nport = 0\n").unwrap_err().to_string();
        assert!(err.contains("`api.port = 0`"), "{err}");
        let c = parse("[network.physical_networks]\nphysnet1 = \"eth1\"\next = \"br-ex\"\n").unwrap();
        assert_eq!(c.network.physical_networks.get("physnet1").map(String::as_str), Some("eth1"));
        for bad in ["physnet1 = \"an-interface-name-too-long\"", "\"bad name\" = \"eth1\"", "p = \"nbr0\""] {
            let err = parse(&format!("[network.physical_networks]\n{bad}\n")).unwrap_err().to_string();
            assert!(err.contains("network.physical_networks"), "{err}");
        }
        let err = parse("[network]\nbridge = \"this-name-is-too-long\"\n").unwrap_err().to_string();
        assert!(err.contains("network.bridge"), "{err}");
        let err = parse("[network]\ncidr = \"10.42.0.1/24\"\n").unwrap_err().to_string();
        assert!(err.contains("did you mean 10.42.0.0/24"), "{err}");
        let err = parse("[compute]\nram_allocation_ratio = -1.0\n").unwrap_err().to_string();
        assert!(err.contains("compute.ram_allocation_ratio"), "{err}");
        let err = parse("[bus]\nport = 8774\n").unwrap_err().to_string();
        assert!(err.contains("bus.port"), "{err}");
    }

    #[test]
    fn config_drive_format_and_image_cache_age() {
        let c = parse("").unwrap();
        assert_eq!(c.compute.config_drive_format, ConfigDriveFormat::Iso9660);
        assert_eq!(c.compute.image_cache_max_age_secs, 86400);
        let c = parse("[compute]\nconfig_drive_format = \"vfat\"\n").unwrap();
        assert_eq!(c.compute.config_drive_format, ConfigDriveFormat::Vfat);
        let err = parse("[compute]\nconfig_drive_format = \"udf\"\n").unwrap_err().to_string();
        assert!(err.contains("udf") && err.contains("iso9660") && err.contains("vfat"), "{err}");
        let err = parse("[compute]\nimage_cache_max_age_secs = 5\n").unwrap_err().to_string();
        assert!(err.contains("compute.image_cache_max_age_secs = 5"), "{err}");
    }

    #[test]
    fn auth_url_avoids_unspecified_address() {
        let mut c = Config::default();
        c.api.listen = "0.0.0.0".parse().unwrap();
        c.api.port = 1234;
        assert_eq!(c.auth_url(), "http://127.0.0.1:1234/identity/v3");
    }
}
