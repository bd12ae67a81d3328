//! Networks, subnets, ports with their IP allocations, and security groups (neutron).
//!
//! The compute boot path uses [`Db::ensure_default_network`], [`Db::ensure_default_security_group`],
//! [`Db::allocate_port`], [`Db::ports_for_device`] and [`Db::release_ports_for_device`]; the
//! network API uses the rest. IPv4 only.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{now, Db, DbError, Result};
use crate::cidr::Ipv4Cidr;
use crate::config::Config;
use crate::network::ipam::{default_pools, next_free_ip, random_mac, Pool};

/// The network `init` creates for every project to boot on.
pub const DEFAULT_NETWORK: &str = "private";
pub const DEFAULT_SUBNET: &str = "private-subnet";
/// neutron's name for the per-project group every port gets unless told otherwise.
pub const DEFAULT_SECURITY_GROUP: &str = "default";

#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub description: String,
    pub shared: bool,
    /// neutron's `router:external`.
    pub external: bool,
    pub admin_state_up: bool,
    pub status: String,
    pub mtu: i64,
    pub port_security_enabled: bool,
    /// The Linux bridge behind it, when novabox plumbs one.
    pub bridge: Option<String>,
    pub revision_number: i64,
    pub created_at: String,
    pub updated_at: String,
    /// Ids of its subnets, oldest first.
    pub subnets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    pub destination: String,
    pub nexthop: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subnet {
    pub id: String,
    pub network_id: String,
    pub name: String,
    pub project_id: String,
    pub description: String,
    pub cidr: Ipv4Cidr,
    pub gateway_ip: Option<Ipv4Addr>,
    pub enable_dhcp: bool,
    pub allocation_pools: Vec<Pool>,
    pub dns_nameservers: Vec<String>,
    pub host_routes: Vec<HostRoute>,
    pub revision_number: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// What a new subnet needs; validated by the caller (see [`validate_pools`]).
#[derive(Debug, Clone)]
pub struct NewSubnet {
    pub network_id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    pub cidr: Ipv4Cidr,
    pub gateway_ip: Option<Ipv4Addr>,
    pub enable_dhcp: bool,
    pub allocation_pools: Vec<Pool>,
    pub dns_nameservers: Vec<String>,
    pub host_routes: Vec<HostRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub id: String,
    pub network_id: String,
    /// The network's name, which nova shows as the key of a server's `addresses`.
    pub network_name: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    pub mac_address: String,
    pub device_id: String,
    pub device_owner: String,
    /// DOWN until a compute host plugs it, then ACTIVE.
    pub status: String,
    pub admin_state_up: bool,
    pub port_security_enabled: bool,
    /// The compute host it is bound to (`binding:host_id`).
    pub binding_host: Option<String>,
    pub tap_name: Option<String>,
    pub fixed_ips: Vec<FixedIp>,
    pub security_groups: Vec<String>,
    pub revision_number: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// An address wanted on a new port: a subnet, an address, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FixedIpRequest {
    pub subnet_id: Option<String>,
    pub ip_address: Option<Ipv4Addr>,
}

/// What [`Db::allocate_port`] needs. The compute boot path sets the first five fields and
/// leaves the rest to `Default`.
#[derive(Debug, Clone, Default)]
pub struct NewPort {
    pub network_id: String,
    pub project_id: String,
    pub device_id: String,
    pub device_owner: String,
    /// Exactly the groups the port gets (the caller resolves "default").
    pub security_group_ids: Vec<String>,
    pub name: String,
    pub description: String,
    /// Empty: one address from the first subnet with room.
    pub fixed_ips: Vec<FixedIpRequest>,
    /// `None`: a fresh random `fa:16:3e:xx:xx:xx`.
    pub mac_address: Option<String>,
    /// `None` means up.
    pub admin_state_up: Option<bool>,
    /// `None`: the network's setting.
    pub port_security_enabled: Option<bool>,
    pub binding_host: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub revision_number: i64,
    pub created_at: String,
    pub updated_at: String,
    pub rules: Vec<SecurityGroupRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroupRule {
    pub id: String,
    pub security_group_id: String,
    pub project_id: String,
    /// ingress, egress
    pub direction: String,
    /// IPv4, IPv6
    pub ethertype: String,
    /// tcp, udp, icmp, a number, or `None` for any
    pub protocol: Option<String>,
    pub port_range_min: Option<i64>,
    pub port_range_max: Option<i64>,
    pub remote_ip_prefix: Option<String>,
    pub remote_group_id: Option<String>,
    pub description: String,
    pub created_at: String,
}

impl SecurityGroupRule {
    /// Two rules are duplicates when they match the same traffic (neutron ignores the id,
    /// description and times).
    pub fn same_match(&self, other: &SecurityGroupRule) -> bool {
        self.security_group_id == other.security_group_id
            && self.direction == other.direction
            && self.ethertype == other.ethertype
            && self.protocol == other.protocol
            && self.port_range_min == other.port_range_min
            && self.port_range_max == other.port_range_max
            && self.remote_ip_prefix == other.remote_ip_prefix
            && self.remote_group_id == other.remote_group_id
    }
}

// ---------------------------------------------------------------------------------------
// Rows

const NETWORK_COLUMNS: &str = "id, name, project_id, description, shared, external, admin_state_up, status, mtu, \
                               port_security_enabled, bridge, revision_number, created_at, updated_at";

fn network_from_row(r: &Row<'_>) -> rusqlite::Result<Network> {
    let created_at: String = r.get(12)?;
    let updated_at: Option<String> = r.get(13)?;
    Ok(Network {
        id: r.get(0)?,
        name: r.get(1)?,
        project_id: r.get(2)?,
        description: r.get(3)?,
        shared: r.get(4)?,
        external: r.get(5)?,
        admin_state_up: r.get(6)?,
        status: r.get(7)?,
        mtu: r.get(8)?,
        port_security_enabled: r.get(9)?,
        bridge: r.get(10)?,
        revision_number: r.get(11)?,
        updated_at: updated_at.unwrap_or_else(|| created_at.clone()),
        created_at,
        subnets: Vec::new(),
    })
}

const SUBNET_COLUMNS: &str = "id, network_id, name, project_id, description, cidr, gateway_ip, enable_dhcp, \
                              allocation_start, allocation_end, allocation_pools, dns_nameservers, host_routes, \
                              revision_number, created_at, updated_at";

fn text_err(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
}

fn subnet_from_row(r: &Row<'_>) -> rusqlite::Result<Subnet> {
    let cidr: String = r.get(5)?;
    let gateway: Option<String> = r.get(6)?;
    let start: String = r.get(8)?;
    let end: String = r.get(9)?;
    let pools: String = r.get(10)?;
    let dns: String = r.get(11)?;
    let routes: String = r.get(12)?;
    let mut allocation_pools: Vec<Pool> = serde_json::from_str(&pools).map_err(|e| text_err(10, e))?;
    if allocation_pools.is_empty() {
        // Rows from schema v1 keep their one pool in allocation_start/allocation_end.
        allocation_pools.push(Pool {
            start: start.parse().map_err(|e| text_err(8, e))?,
            end: end.parse().map_err(|e| text_err(9, e))?,
        });
    }
    let created_at: String = r.get(14)?;
    let updated_at: Option<String> = r.get(15)?;
    Ok(Subnet {
        id: r.get(0)?,
        network_id: r.get(1)?,
        name: r.get(2)?,
        project_id: r.get(3)?,
        description: r.get(4)?,
        cidr: cidr.parse().map_err(|e| text_err(5, e))?,
        gateway_ip: gateway.map(|g| g.parse()).transpose().map_err(|e| text_err(6, e))?,
        enable_dhcp: r.get(7)?,
        allocation_pools,
        dns_nameservers: serde_json::from_str(&dns).map_err(|e| text_err(11, e))?,
        host_routes: serde_json::from_str(&routes).map_err(|e| text_err(12, e))?,
        revision_number: r.get(13)?,
        updated_at: updated_at.unwrap_or_else(|| created_at.clone()),
        created_at,
    })
}

const PORT_COLUMNS: &str = "p.id, p.network_id, n.name, p.project_id, p.name, p.description, p.mac_address, \
                            p.device_id, p.device_owner, p.status, p.admin_state_up, p.port_security_enabled, \
                            p.binding_host, p.tap_name, p.revision_number, p.created_at, p.updated_at";

/// The condition for "a port of instance `?1`": it names the instance as its device and
/// belongs to the instance's project (as [`Db::instance_ports`], for unjoined statements).
const OWN_PORT: &str = "device_id = ?1 AND project_id = (SELECT i.project_id FROM instances i WHERE i.uuid = ?1)";

fn port_from_row(r: &Row<'_>) -> rusqlite::Result<Port> {
    let created_at: String = r.get(15)?;
    let updated_at: Option<String> = r.get(16)?;
    Ok(Port {
        id: r.get(0)?,
        network_id: r.get(1)?,
        network_name: r.get(2)?,
        project_id: r.get(3)?,
        name: r.get(4)?,
        description: r.get(5)?,
        mac_address: r.get(6)?,
        device_id: r.get(7)?,
        device_owner: r.get(8)?,
        status: r.get(9)?,
        admin_state_up: r.get(10)?,
        port_security_enabled: r.get(11)?,
        binding_host: r.get(12)?,
        tap_name: r.get(13)?,
        revision_number: r.get(14)?,
        updated_at: updated_at.unwrap_or_else(|| created_at.clone()),
        created_at,
        fixed_ips: Vec::new(),
        security_groups: Vec::new(),
    })
}

const SG_COLUMNS: &str = "id, name, description, project_id, revision_number, created_at, updated_at";

fn sg_from_row(r: &Row<'_>) -> rusqlite::Result<SecurityGroup> {
    let created_at: String = r.get(5)?;
    let updated_at: Option<String> = r.get(6)?;
    Ok(SecurityGroup {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        project_id: r.get(3)?,
        revision_number: r.get(4)?,
        updated_at: updated_at.unwrap_or_else(|| created_at.clone()),
        created_at,
        rules: Vec::new(),
    })
}

const RULE_COLUMNS: &str = "id, security_group_id, project_id, direction, ethertype, protocol, port_range_min, \
                            port_range_max, remote_ip_prefix, remote_group_id, description, created_at";

fn rule_from_row(r: &Row<'_>) -> rusqlite::Result<SecurityGroupRule> {
    Ok(SecurityGroupRule {
        id: r.get(0)?,
        security_group_id: r.get(1)?,
        project_id: r.get(2)?,
        direction: r.get(3)?,
        ethertype: r.get(4)?,
        protocol: r.get(5)?,
        port_range_min: r.get(6)?,
        port_range_max: r.get(7)?,
        remote_ip_prefix: r.get(8)?,
        remote_group_id: r.get(9)?,
        description: r.get(10)?,
        created_at: r.get(11)?,
    })
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn json_text<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

impl Db {
    // -----------------------------------------------------------------------------------
    // Networks

    pub fn networks(&self) -> Result<Vec<Network>> {
        let mut stmt =
            self.conn().prepare(&format!("SELECT {NETWORK_COLUMNS} FROM networks ORDER BY created_at, id"))?;
        let mut nets = stmt.query_map([], network_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        let mut subs = self.conn().prepare("SELECT id FROM subnets WHERE network_id = ?1 ORDER BY created_at, id")?;
        for n in &mut nets {
            n.subnets = subs.query_map([&n.id], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
        }
        Ok(nets)
    }

    pub fn network_by_id(&self, id: &str) -> Result<Option<Network>> {
        Ok(self.networks()?.into_iter().find(|n| n.id == id))
    }

    /// The oldest network called `name` (names are not unique in neutron; novabox's own
    /// `private` is created first).
    pub fn network_by_name(&self, name: &str) -> Result<Option<Network>> {
        Ok(self.networks()?.into_iter().find(|n| n.name == name))
    }

    /// Creates a network; `subnets` in `net` is ignored.
    pub fn create_network(&self, net: &Network) -> Result<Network> {
        let id = if net.id.is_empty() { new_id() } else { net.id.clone() };
        let ts = now();
        self.conn().execute(
            "INSERT INTO networks (id, name, project_id, description, shared, external, admin_state_up, status, mtu,
                                   port_security_enabled, bridge, revision_number, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1, ?12, ?12)",
            params![
                id,
                net.name,
                net.project_id,
                net.description,
                net.shared,
                net.external,
                net.admin_state_up,
                net.status,
                net.mtu,
                net.port_security_enabled,
                net.bridge,
                ts
            ],
        )?;
        self.network_by_id(&id)?.ok_or_else(|| DbError::NotFound(format!("Network {id} could not be found.")))
    }

    /// Writes back the changeable attributes and bumps the revision.
    pub fn save_network(&self, net: &Network) -> Result<Network> {
        let n = self.conn().execute(
            "UPDATE networks SET name = ?2, description = ?3, shared = ?4, external = ?5, admin_state_up = ?6,
                    mtu = ?7, port_security_enabled = ?8, revision_number = revision_number + 1, updated_at = ?9
             WHERE id = ?1",
            params![
                net.id,
                net.name,
                net.description,
                net.shared,
                net.external,
                net.admin_state_up,
                net.mtu,
                net.port_security_enabled,
                now()
            ],
        )?;
        if n == 0 {
            return Err(DbError::NotFound(format!("Network {} could not be found.", net.id)));
        }
        self.network_by_id(&net.id)?.ok_or_else(|| DbError::NotFound(format!("Network {} could not be found.", net.id)))
    }

    /// Deletes a network and its subnets. A `Conflict` while any port is on it.
    pub fn delete_network(&self, id: &str) -> Result<()> {
        let tx = self.begin()?;
        let ports: i64 = tx.query_row("SELECT count(*) FROM ports WHERE network_id = ?1", [id], |r| r.get(0))?;
        if ports > 0 {
            return Err(DbError::Conflict(format!(
                "Unable to complete operation on network {id}. There are one or more ports still in use on the network."
            )));
        }
        if tx.execute("DELETE FROM networks WHERE id = ?1", [id])? == 0 {
            return Err(DbError::NotFound(format!("Network {id} could not be found.")));
        }
        tx.commit()?;
        Ok(())
    }

    /// The shared network `private` with the subnet `private-subnet` on `[network] cidr`
    /// (gateway .1, pool .2 to the last host), owned by the `admin` project. Created once;
    /// later calls return it. `init` calls this; the boot path may too.
    pub fn ensure_default_network(&self, config: &Config) -> Result<Network> {
        // One transaction with the write lock taken first: two boots racing (or a kill
        // between network and subnet) must not leave two default networks or one without
        // its subnet.
        let tx = self.begin()?;
        let net = self.ensure_default_network_locked(config)?;
        tx.commit()?;
        Ok(net)
    }

    fn ensure_default_network_locked(&self, config: &Config) -> Result<Network> {
        let admin = self.project_by_name("admin")?.ok_or_else(|| {
            DbError::NotFound("the admin project does not exist yet; run `novabox init` first".into())
        })?;
        let existing = self.networks()?.into_iter().find(|n| n.name == DEFAULT_NETWORK && n.project_id == admin.id);
        let net = match existing {
            Some(n) => n,
            None => self.create_network(&Network {
                id: String::new(),
                name: DEFAULT_NETWORK.into(),
                project_id: admin.id.clone(),
                description: "The network novabox guests boot on by default".into(),
                shared: true,
                external: false,
                admin_state_up: true,
                status: "ACTIVE".into(),
                mtu: 1500,
                port_security_enabled: true,
                bridge: Some(config.network.bridge.clone()),
                revision_number: 0,
                created_at: String::new(),
                updated_at: String::new(),
                subnets: Vec::new(),
            })?,
        };
        if net.subnets.is_empty() {
            let cidr = config.network.cidr;
            let gateway = cidr.gateway();
            self.create_subnet(&NewSubnet {
                network_id: net.id.clone(),
                project_id: admin.id,
                name: DEFAULT_SUBNET.into(),
                description: String::new(),
                cidr,
                gateway_ip: Some(gateway),
                enable_dhcp: true,
                allocation_pools: default_pools(&cidr, Some(gateway)),
                dns_nameservers: Vec::new(),
                host_routes: Vec::new(),
            })?;
            return self
                .network_by_id(&net.id)?
                .ok_or_else(|| DbError::NotFound(format!("Network {} could not be found.", net.id)));
        }
        Ok(net)
    }

    // -----------------------------------------------------------------------------------
    // Subnets

    pub fn subnets(&self) -> Result<Vec<Subnet>> {
        let mut stmt = self.conn().prepare(&format!("SELECT {SUBNET_COLUMNS} FROM subnets ORDER BY created_at, id"))?;
        let subnets = stmt.query_map([], subnet_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(subnets)
    }

    pub fn subnet_by_id(&self, id: &str) -> Result<Option<Subnet>> {
        Ok(self
            .conn()
            .query_row(&format!("SELECT {SUBNET_COLUMNS} FROM subnets WHERE id = ?1"), [id], subnet_from_row)
            .optional()?)
    }

    pub fn subnets_of(&self, network_id: &str) -> Result<Vec<Subnet>> {
        Ok(self.subnets()?.into_iter().filter(|s| s.network_id == network_id).collect())
    }

    /// Creates a subnet. Checks that the network exists and that the CIDR overlaps none of its
    /// other subnets (`Conflict` otherwise); the pools are the caller's to validate.
    pub fn create_subnet(&self, s: &NewSubnet) -> Result<Subnet> {
        let tx = self.begin()?;
        let net: Option<String> =
            tx.query_row("SELECT id FROM networks WHERE id = ?1", [&s.network_id], |r| r.get(0)).optional()?;
        if net.is_none() {
            return Err(DbError::NotFound(format!("Network {} could not be found.", s.network_id)));
        }
        for other in self.subnets_of(&s.network_id)? {
            if other.cidr.overlaps(&s.cidr) {
                return Err(DbError::Conflict(format!(
                    "Invalid input for operation: Requested subnet with cidr: {} for network: {} overlaps with \
                     another subnet.",
                    s.cidr, s.network_id
                )));
            }
        }
        let id = new_id();
        let (start, end) =
            s.allocation_pools.first().map(|p| (p.start, p.end)).unwrap_or((s.cidr.network(), s.cidr.network()));
        tx.execute(
            "INSERT INTO subnets (id, network_id, name, project_id, description, cidr, ip_version, gateway_ip,
                                  enable_dhcp, allocation_start, allocation_end, allocation_pools, dns_nameservers,
                                  host_routes, revision_number, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 4, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 0, ?14, ?14)",
            params![
                id,
                s.network_id,
                s.name,
                s.project_id,
                s.description,
                s.cidr.to_string(),
                s.gateway_ip.map(|g| g.to_string()),
                s.enable_dhcp,
                start.to_string(),
                end.to_string(),
                json_text(&s.allocation_pools),
                json_text(&s.dns_nameservers),
                json_text(&s.host_routes),
                now()
            ],
        )?;
        tx.commit()?;
        self.subnet_by_id(&id)?.ok_or_else(|| DbError::NotFound(format!("Subnet {id} could not be found.")))
    }

    /// Writes back name, description, enable_dhcp, dns_nameservers and host_routes.
    pub fn save_subnet(&self, s: &Subnet) -> Result<Subnet> {
        let n = self.conn().execute(
            "UPDATE subnets SET name = ?2, description = ?3, enable_dhcp = ?4, dns_nameservers = ?5, host_routes = ?6,
                    revision_number = revision_number + 1, updated_at = ?7
             WHERE id = ?1",
            params![
                s.id,
                s.name,
                s.description,
                s.enable_dhcp,
                json_text(&s.dns_nameservers),
                json_text(&s.host_routes),
                now()
            ],
        )?;
        if n == 0 {
            return Err(DbError::NotFound(format!("Subnet {} could not be found.", s.id)));
        }
        self.subnet_by_id(&s.id)?.ok_or_else(|| DbError::NotFound(format!("Subnet {} could not be found.", s.id)))
    }

    /// A `Conflict` while any port holds an address from it.
    pub fn delete_subnet(&self, id: &str) -> Result<()> {
        let tx = self.begin()?;
        let used: i64 = tx.query_row("SELECT count(*) FROM ip_allocations WHERE subnet_id = ?1", [id], |r| r.get(0))?;
        if used > 0 {
            return Err(DbError::Conflict(format!(
                "Unable to complete operation on subnet {id}: One or more ports have an IP allocation from this subnet."
            )));
        }
        if tx.execute("DELETE FROM subnets WHERE id = ?1", [id])? == 0 {
            return Err(DbError::NotFound(format!("Subnet {id} could not be found.")));
        }
        tx.commit()?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Ports

    fn load_port_details(&self, ports: &mut [Port]) -> Result<()> {
        let mut ips = self.conn().prepare("SELECT subnet_id, ip_address FROM ip_allocations WHERE port_id = ?1")?;
        let mut sgs = self.conn().prepare(
            "SELECT security_group_id FROM port_security_groups WHERE port_id = ?1 ORDER BY security_group_id",
        )?;
        for p in ports.iter_mut() {
            let raw = ips
                .query_map([&p.id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            p.fixed_ips = raw
                .into_iter()
                .filter_map(|(subnet_id, ip)| ip.parse().ok().map(|ip_address| FixedIp { subnet_id, ip_address }))
                .collect();
            p.fixed_ips.sort_by_key(|f| u32::from(f.ip_address));
            p.security_groups = sgs.query_map([&p.id], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
        }
        Ok(())
    }

    fn query_ports(&self, filter: &str, param: &[&dyn rusqlite::ToSql]) -> Result<Vec<Port>> {
        let mut stmt = self.conn().prepare(&format!(
            "SELECT {PORT_COLUMNS} FROM ports p JOIN networks n ON n.id = p.network_id {filter}
             ORDER BY p.created_at, p.id"
        ))?;
        let mut ports = stmt.query_map(param, port_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        self.load_port_details(&mut ports)?;
        Ok(ports)
    }

    pub fn ports(&self) -> Result<Vec<Port>> {
        self.query_ports("", &[])
    }

    pub fn port_by_id(&self, id: &str) -> Result<Option<Port>> {
        Ok(self.query_ports("WHERE p.id = ?1", &[&id])?.pop())
    }

    /// The ports of one device (an instance uuid), oldest first.
    pub fn ports_for_device(&self, device_id: &str) -> Result<Vec<Port>> {
        self.query_ports("WHERE p.device_id = ?1", &[&device_id])
    }

    /// The ports of an instance: those naming it as their device *and* of its own project.
    /// A port of another project that names the instance (neutron lets a device_id be any
    /// string) is never the instance's: not in its `addresses`, not a NIC of its guest, not
    /// a way to its metadata.
    pub fn instance_ports(&self, instance_uuid: &str) -> Result<Vec<Port>> {
        self.query_ports(
            "WHERE p.device_id = ?1 AND p.project_id = (SELECT i.project_id FROM instances i WHERE i.uuid = ?1)",
            &[&instance_uuid],
        )
    }

    /// nova's add/removeSecurityGroup: the group joins (or leaves) the instance and every port
    /// it has, in one transaction; each port's revision goes up.
    pub fn change_instance_security_group(&self, instance_uuid: &str, group_id: &str, add: bool) -> Result<()> {
        let tx = self.begin()?;
        let ts = now();
        if add {
            tx.execute(
                "INSERT OR IGNORE INTO instance_security_groups (instance_uuid, security_group_id) VALUES (?1, ?2)",
                params![instance_uuid, group_id],
            )?;
            tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO port_security_groups (port_id, security_group_id)
                     SELECT id, ?2 FROM ports WHERE {OWN_PORT}"
                ),
                params![instance_uuid, group_id],
            )?;
        } else {
            tx.execute(
                "DELETE FROM instance_security_groups WHERE instance_uuid = ?1 AND security_group_id = ?2",
                params![instance_uuid, group_id],
            )?;
            tx.execute(
                &format!(
                    "DELETE FROM port_security_groups WHERE security_group_id = ?2
                       AND port_id IN (SELECT id FROM ports WHERE {OWN_PORT})"
                ),
                params![instance_uuid, group_id],
            )?;
        }
        tx.execute(
            &format!("UPDATE ports SET revision_number = revision_number + 1, updated_at = ?2 WHERE {OWN_PORT}"),
            params![instance_uuid, ts],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The ports of one network, oldest first (what a DHCP server for it hands out).
    pub fn ports_on_network(&self, network_id: &str) -> Result<Vec<Port>> {
        self.query_ports("WHERE p.network_id = ?1", &[&network_id])
    }

    /// Deletes every port of `device_id` with its addresses; returns how many went.
    pub fn release_ports_for_device(&self, device_id: &str) -> Result<usize> {
        Ok(self.conn().execute("DELETE FROM ports WHERE device_id = ?1", [device_id])?)
    }

    /// Creates a port in one transaction: the row, a unique MAC, its addresses (the ones
    /// asked for, or the next free one of the first subnet with room) and its security
    /// groups. `NoFreeIp` when the subnets are full, `Conflict` for a taken address or MAC,
    /// `NotFound` for a missing network, subnet or group; an address outside its subnet is
    /// `Conflict` with neutron's message too.
    pub fn allocate_port(&self, new: &NewPort) -> Result<Port> {
        let tx = self.begin()?;
        let net_security: Option<bool> = tx
            .query_row("SELECT port_security_enabled FROM networks WHERE id = ?1", [&new.network_id], |r| r.get(0))
            .optional()?;
        let Some(net_security) = net_security else {
            return Err(DbError::NotFound(format!("Network {} could not be found.", new.network_id)));
        };
        let subnets = self.subnets_of(&new.network_id)?;
        let id = new_id();
        let mac = match &new.mac_address {
            Some(m) => {
                if mac_taken(&tx, m)? {
                    return Err(DbError::Conflict(format!(
                        "Unable to complete operation for network {}. The mac address {m} is in use.",
                        new.network_id
                    )));
                }
                m.to_lowercase()
            }
            None => loop {
                let m = random_mac();
                if !mac_taken(&tx, &m)? {
                    break m;
                }
            },
        };
        let ts = now();
        tx.execute(
            "INSERT INTO ports (id, network_id, project_id, name, description, mac_address, device_id, device_owner,
                                status, admin_state_up, port_security_enabled, binding_host, revision_number,
                                created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'DOWN', ?9, ?10, ?11, 1, ?12, ?12)",
            params![
                id,
                new.network_id,
                new.project_id,
                new.name,
                new.description,
                mac,
                new.device_id,
                new.device_owner,
                new.admin_state_up.unwrap_or(true),
                new.port_security_enabled.unwrap_or(net_security),
                new.binding_host,
                ts
            ],
        )?;

        let used = |subnet_id: &str| -> Result<BTreeSet<Ipv4Addr>> {
            let mut stmt = tx.prepare("SELECT ip_address FROM ip_allocations WHERE subnet_id = ?1")?;
            let ips = stmt.query_map([subnet_id], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(ips.iter().filter_map(|s| s.parse().ok()).collect())
        };
        let mut wanted: Vec<(Subnet, Option<Ipv4Addr>)> = Vec::new();
        for req in &new.fixed_ips {
            let subnet = match (&req.subnet_id, req.ip_address) {
                (Some(sid), _) => subnets.iter().find(|s| &s.id == sid).cloned().ok_or_else(|| {
                    DbError::NotFound(format!("Subnet {sid} could not be found on network {}.", new.network_id))
                })?,
                (None, Some(ip)) => subnets.iter().find(|s| s.cidr.contains(ip)).cloned().ok_or_else(|| {
                    DbError::Conflict(format!("IP address {ip} is not a valid IP for the specified subnet."))
                })?,
                (None, None) => continue,
            };
            wanted.push((subnet, req.ip_address));
        }
        if new.fixed_ips.is_empty() {
            // One address, from the first subnet that still has one.
            let mut chosen = None;
            for s in &subnets {
                if let Some(ip) = next_free_ip(&s.allocation_pools, &used(&s.id)?) {
                    chosen = Some((s.clone(), Some(ip)));
                    break;
                }
            }
            match chosen {
                Some(c) => wanted.push(c),
                None if subnets.is_empty() => {}
                None => return Err(DbError::NoFreeIp { network_id: new.network_id.clone() }),
            }
        }
        for (subnet, ip) in wanted {
            let taken = used(&subnet.id)?;
            let ip = match ip {
                Some(ip) => {
                    let reserved =
                        ip == subnet.cidr.network() || ip == subnet.cidr.broadcast() || Some(ip) == subnet.gateway_ip;
                    if !subnet.cidr.contains(ip) || reserved {
                        return Err(DbError::Conflict(format!(
                            "IP address {ip} is not a valid IP for the specified subnet."
                        )));
                    }
                    if taken.contains(&ip) {
                        return Err(DbError::Conflict(format!(
                            "IP address {ip} already allocated in subnet {}",
                            subnet.id
                        )));
                    }
                    ip
                }
                None => next_free_ip(&subnet.allocation_pools, &taken)
                    .ok_or_else(|| DbError::NoFreeIp { network_id: new.network_id.clone() })?,
            };
            tx.execute(
                "INSERT INTO ip_allocations (port_id, subnet_id, ip_address) VALUES (?1, ?2, ?3)",
                params![id, subnet.id, ip.to_string()],
            )?;
        }
        set_port_groups(&tx, &id, &new.security_group_ids)?;
        tx.commit()?;
        self.port_by_id(&id)?.ok_or_else(|| DbError::NotFound(format!("Port {id} could not be found.")))
    }

    /// Writes back name, description, admin_state_up, port_security_enabled, device_id,
    /// device_owner, binding host and the security groups; bumps the revision.
    pub fn save_port(&self, p: &Port) -> Result<Port> {
        let tx = self.begin()?;
        let n = tx.execute(
            "UPDATE ports SET name = ?2, description = ?3, admin_state_up = ?4, port_security_enabled = ?5,
                    device_id = ?6, device_owner = ?7, binding_host = ?8, status = ?9,
                    revision_number = revision_number + 1, updated_at = ?10
             WHERE id = ?1",
            params![
                p.id,
                p.name,
                p.description,
                p.admin_state_up,
                p.port_security_enabled,
                p.device_id,
                p.device_owner,
                p.binding_host,
                p.status,
                now()
            ],
        )?;
        if n == 0 {
            return Err(DbError::NotFound(format!("Port {} could not be found.", p.id)));
        }
        set_port_groups(&tx, &p.id, &p.security_groups)?;
        tx.commit()?;
        self.port_by_id(&p.id)?.ok_or_else(|| DbError::NotFound(format!("Port {} could not be found.", p.id)))
    }

    /// What a compute host reports once it has plugged (or unplugged) a port: the host, the
    /// tap device and the status (ACTIVE, DOWN).
    pub fn set_port_binding(
        &self,
        port_id: &str,
        host: Option<&str>,
        tap_name: Option<&str>,
        status: &str,
    ) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE ports SET binding_host = ?2, tap_name = ?3, status = ?4, revision_number = revision_number + 1,
                    updated_at = ?5
             WHERE id = ?1",
            params![port_id, host, tap_name, status, now()],
        )?;
        if n == 0 {
            return Err(DbError::NotFound(format!("Port {port_id} could not be found.")));
        }
        Ok(())
    }

    pub fn delete_port(&self, id: &str) -> Result<()> {
        if self.conn().execute("DELETE FROM ports WHERE id = ?1", [id])? == 0 {
            return Err(DbError::NotFound(format!("Port {id} could not be found.")));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Security groups

    fn load_rules(&self, groups: &mut [SecurityGroup]) -> Result<()> {
        let mut stmt = self.conn().prepare(&format!(
            "SELECT {RULE_COLUMNS} FROM security_group_rules WHERE security_group_id = ?1 ORDER BY created_at, id"
        ))?;
        for g in groups.iter_mut() {
            g.rules = stmt.query_map([&g.id], rule_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        }
        Ok(())
    }

    pub fn security_groups(&self) -> Result<Vec<SecurityGroup>> {
        let mut stmt =
            self.conn().prepare(&format!("SELECT {SG_COLUMNS} FROM security_groups ORDER BY created_at, id"))?;
        let mut groups = stmt.query_map([], sg_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        self.load_rules(&mut groups)?;
        Ok(groups)
    }

    pub fn security_group_by_id(&self, id: &str) -> Result<Option<SecurityGroup>> {
        let g = self
            .conn()
            .query_row(&format!("SELECT {SG_COLUMNS} FROM security_groups WHERE id = ?1"), [id], sg_from_row)
            .optional()?;
        match g {
            Some(mut g) => {
                self.load_rules(std::slice::from_mut(&mut g))?;
                Ok(Some(g))
            }
            None => Ok(None),
        }
    }

    /// A project's group by name (nova's boot request names groups, not ids).
    pub fn security_group_by_name(&self, project_id: &str, name: &str) -> Result<Option<SecurityGroup>> {
        let id: Option<String> = self
            .conn()
            .query_row(
                "SELECT id FROM security_groups WHERE project_id = ?1 AND name = ?2 ORDER BY created_at LIMIT 1",
                params![project_id, name],
                |r| r.get(0),
            )
            .optional()?;
        match id {
            Some(id) => self.security_group_by_id(&id),
            None => Ok(None),
        }
    }

    /// The id of `project_id`'s `default` group, creating it with neutron's default rules
    /// (egress anywhere over IPv4 and IPv6; ingress from members of the group itself) the
    /// first time it is needed.
    pub fn ensure_default_security_group(&self, project_id: &str) -> Result<String> {
        let tx = self.begin()?;
        if let Some(g) = self.security_group_by_name(project_id, DEFAULT_SECURITY_GROUP)? {
            return Ok(g.id);
        }
        let id = new_id();
        let ts = now();
        tx.execute(
            "INSERT INTO security_groups (id, name, description, project_id, revision_number, created_at, updated_at)
             VALUES (?1, ?2, 'Default security group', ?3, 1, ?4, ?4)",
            params![id, DEFAULT_SECURITY_GROUP, project_id, ts],
        )?;
        for (direction, ethertype, remote_group) in [
            ("egress", "IPv4", None),
            ("egress", "IPv6", None),
            ("ingress", "IPv4", Some(&id)),
            ("ingress", "IPv6", Some(&id)),
        ] {
            tx.execute(
                "INSERT INTO security_group_rules (id, security_group_id, project_id, direction, ethertype,
                                                   remote_group_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![new_id(), id, project_id, direction, ethertype, remote_group, ts],
            )?;
        }
        tx.commit()?;
        tracing::info!(project_id, security_group_id = %id, "created the default security group");
        Ok(id)
    }

    /// Creates a group with neutron's two egress rules (a new group lets everything out).
    pub fn create_security_group(&self, project_id: &str, name: &str, description: &str) -> Result<SecurityGroup> {
        let tx = self.begin()?;
        let id = new_id();
        let ts = now();
        tx.execute(
            "INSERT INTO security_groups (id, name, description, project_id, revision_number, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5)",
            params![id, name, description, project_id, ts],
        )?;
        for ethertype in ["IPv4", "IPv6"] {
            tx.execute(
                "INSERT INTO security_group_rules (id, security_group_id, project_id, direction, ethertype, created_at)
                 VALUES (?1, ?2, ?3, 'egress', ?4, ?5)",
                params![new_id(), id, project_id, ethertype, ts],
            )?;
        }
        tx.commit()?;
        self.security_group_by_id(&id)?.ok_or_else(|| DbError::NotFound(format!("Security group {id} does not exist")))
    }

    pub fn save_security_group(&self, g: &SecurityGroup) -> Result<SecurityGroup> {
        let n = self.conn().execute(
            "UPDATE security_groups SET name = ?2, description = ?3, revision_number = revision_number + 1,
                    updated_at = ?4
             WHERE id = ?1",
            params![g.id, g.name, g.description, now()],
        )?;
        if n == 0 {
            return Err(DbError::NotFound(format!("Security group {} does not exist", g.id)));
        }
        self.security_group_by_id(&g.id)?
            .ok_or_else(|| DbError::NotFound(format!("Security group {} does not exist", g.id)))
    }

    /// A `Conflict` while a port uses the group.
    pub fn delete_security_group(&self, id: &str) -> Result<()> {
        let tx = self.begin()?;
        let used: i64 =
            tx.query_row("SELECT count(*) FROM port_security_groups WHERE security_group_id = ?1", [id], |r| r.get(0))?;
        if used > 0 {
            return Err(DbError::Conflict(format!("Security Group {id} in use.")));
        }
        if tx.execute("DELETE FROM security_groups WHERE id = ?1", [id])? == 0 {
            return Err(DbError::NotFound(format!("Security group {id} does not exist")));
        }
        tx.commit()?;
        Ok(())
    }

    pub fn security_group_rule_by_id(&self, id: &str) -> Result<Option<SecurityGroupRule>> {
        Ok(self
            .conn()
            .query_row(&format!("SELECT {RULE_COLUMNS} FROM security_group_rules WHERE id = ?1"), [id], rule_from_row)
            .optional()?)
    }

    /// Adds a validated rule; a rule matching the same traffic is a `Conflict` naming it.
    pub fn create_security_group_rule(&self, rule: &SecurityGroupRule) -> Result<SecurityGroupRule> {
        let tx = self.begin()?;
        let group = self
            .security_group_by_id(&rule.security_group_id)?
            .ok_or_else(|| DbError::NotFound(format!("Security group {} does not exist", rule.security_group_id)))?;
        if let Some(dup) = group.rules.iter().find(|r| r.same_match(rule)) {
            return Err(DbError::Conflict(format!("Security group rule already exists. Rule id is {}.", dup.id)));
        }
        let id = if rule.id.is_empty() { new_id() } else { rule.id.clone() };
        tx.execute(
            "INSERT INTO security_group_rules (id, security_group_id, project_id, direction, ethertype, protocol,
                                               port_range_min, port_range_max, remote_ip_prefix, remote_group_id,
                                               description, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                id,
                rule.security_group_id,
                rule.project_id,
                rule.direction,
                rule.ethertype,
                rule.protocol,
                rule.port_range_min,
                rule.port_range_max,
                rule.remote_ip_prefix,
                rule.remote_group_id,
                rule.description,
                now()
            ],
        )?;
        tx.execute(
            "UPDATE security_groups SET revision_number = revision_number + 1, updated_at = ?2 WHERE id = ?1",
            params![rule.security_group_id, now()],
        )?;
        tx.commit()?;
        self.security_group_rule_by_id(&id)?
            .ok_or_else(|| DbError::NotFound(format!("Security group rule {id} does not exist")))
    }

    pub fn delete_security_group_rule(&self, id: &str) -> Result<()> {
        if self.conn().execute("DELETE FROM security_group_rules WHERE id = ?1", [id])? == 0 {
            return Err(DbError::NotFound(format!("Security group rule {id} does not exist")));
        }
        Ok(())
    }
}

fn mac_taken(tx: &Connection, mac: &str) -> Result<bool> {
    Ok(tx.query_row("SELECT EXISTS (SELECT 1 FROM ports WHERE lower(mac_address) = lower(?1))", [mac], |r| r.get(0))?)
}

fn set_port_groups(tx: &Connection, port_id: &str, groups: &[String]) -> Result<()> {
    tx.execute("DELETE FROM port_security_groups WHERE port_id = ?1", [port_id])?;
    for g in groups {
        let exists: bool =
            tx.query_row("SELECT EXISTS (SELECT 1 FROM security_groups WHERE id = ?1)", [g], |r| r.get(0))?;
        if !exists {
            return Err(DbError::NotFound(format!("Security group {g} does not exist")));
        }
        tx.execute(
            "INSERT OR IGNORE INTO port_security_groups (port_id, security_group_id) VALUES (?1, ?2)",
            params![port_id, g],
        )?;
    }
    Ok(())
}

/// Ports and instances: binding a user's port to a server, and letting go of them all.
impl Db {
    /// Hands an existing, unbound port to an instance; it survives the instance's deletion.
    pub fn bind_port(&self, port_id: &str, device_id: &str, device_owner: &str, host: &str) -> Result<Port> {
        let n = self.conn().execute(
            "UPDATE ports SET device_id = ?2, device_owner = ?3, binding_host = ?4, preserve_on_delete = 1,
                revision_number = revision_number + 1, updated_at = ?5
             WHERE id = ?1 AND device_id = ''",
            params![port_id, device_id, device_owner, host, now()],
        )?;
        if n == 0 {
            return Err(DbError::Conflict(format!("Port {port_id} is not free to be bound.")));
        }
        self.port_by_id(port_id)?.ok_or_else(|| DbError::NotFound(format!("Port {port_id} could not be found.")))
    }

    /// Deletes the ports novabox made for `device_id` and unbinds the ones a user brought.
    pub fn release_instance_ports(&self, device_id: &str) -> Result<()> {
        let tx = self.begin()?;
        // Only the instance's own project's ports: another project's port that merely names
        // it is neither deleted nor unbound by this instance's end.
        tx.execute(&format!("DELETE FROM ports WHERE {OWN_PORT} AND preserve_on_delete = 0"), [device_id])?;
        tx.execute(
            &format!(
                "UPDATE ports SET device_id = '', device_owner = '', binding_host = NULL, status = 'DOWN',
                    preserve_on_delete = 0, revision_number = revision_number + 1, updated_at = ?2
                 WHERE {OWN_PORT}"
            ),
            params![device_id, now()],
        )?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::OpenOptions;

    fn db() -> (tempfile::TempDir, Db) {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        db.ensure_project("admin", "").unwrap();
        (t, db)
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn default_network_needs_the_admin_project() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("novabox.db"), OpenOptions::default()).unwrap();
        let err = db.ensure_default_network(&Config::default()).unwrap_err();
        assert!(matches!(err, DbError::NotFound(ref m) if m.contains("novabox init")), "{err}");
    }

    #[test]
    fn default_network_is_created_once() {
        let (_t, db) = db();
        let config = Config::default();
        let a = db.ensure_default_network(&config).unwrap();
        let b = db.ensure_default_network(&config).unwrap();
        assert_eq!(a.id, b.id);
        assert!(a.shared);
        assert_eq!(a.name, "private");
        assert_eq!(a.bridge.as_deref(), Some("nbr0"));
        assert_eq!(db.networks().unwrap().len(), 1);
        let subnets = db.subnets_of(&a.id).unwrap();
        assert_eq!(subnets.len(), 1);
        let s = &subnets[0];
        assert_eq!(s.name, "private-subnet");
        assert_eq!(s.cidr.to_string(), "10.42.0.0/24");
        assert_eq!(s.gateway_ip, Some(ip("10.42.0.1")));
        assert_eq!(s.allocation_pools, vec![Pool { start: ip("10.42.0.2"), end: ip("10.42.0.254") }]);
    }

    #[test]
    fn allocate_until_exhausted_then_release() {
        let (_t, db) = db();
        let mut config = Config::default();
        config.network.cidr = "192.168.7.0/29".parse().unwrap();
        let net = db.ensure_default_network(&config).unwrap();
        let sg = db.ensure_default_security_group("p1").unwrap();
        assert_eq!(db.ensure_default_security_group("p1").unwrap(), sg, "created once");
        let new = |device: &str| NewPort {
            network_id: net.id.clone(),
            project_id: "p1".into(),
            device_id: device.into(),
            device_owner: "compute:nova".into(),
            security_group_ids: vec![sg.clone()],
            ..NewPort::default()
        };
        // /29: .0 network, .1 gateway, .7 broadcast: .2 to .6 for guests.
        let mut macs = BTreeSet::new();
        for (i, want) in ["192.168.7.2", "192.168.7.3", "192.168.7.4", "192.168.7.5", "192.168.7.6"].iter().enumerate()
        {
            let p = db.allocate_port(&new(&format!("vm{i}"))).unwrap();
            assert_eq!(p.fixed_ips.len(), 1);
            assert_eq!(p.fixed_ips[0].ip_address, ip(want));
            assert_eq!(p.network_name, "private");
            assert_eq!(p.security_groups, vec![sg.clone()]);
            assert_eq!(p.status, "DOWN");
            macs.insert(p.mac_address);
        }
        assert_eq!(macs.len(), 5, "MACs must be unique");
        assert_eq!(db.ports_on_network(&net.id).unwrap().len(), 5);
        let err = db.allocate_port(&new("vm9")).unwrap_err();
        assert!(matches!(err, DbError::NoFreeIp { .. }), "{err}");
        assert!(db.ports_for_device("vm9").unwrap().is_empty(), "a failed allocation leaves no port");

        assert_eq!(db.ports_for_device("vm2").unwrap().len(), 1);
        assert_eq!(db.release_ports_for_device("vm2").unwrap(), 1);
        assert!(db.ports_for_device("vm2").unwrap().is_empty());
        let p = db.allocate_port(&new("vm10")).unwrap();
        assert_eq!(p.fixed_ips[0].ip_address, ip("192.168.7.4"), "released addresses are reused");

        // Explicit addresses.
        db.release_ports_for_device("vm0").unwrap();
        let subnet_id = net.subnets.first().cloned().unwrap_or_default();
        let subnet_id = if subnet_id.is_empty() { db.subnets_of(&net.id).unwrap()[0].id.clone() } else { subnet_id };
        let mut want = new("vm11");
        want.fixed_ips = vec![FixedIpRequest { subnet_id: None, ip_address: Some(ip("192.168.7.3")) }];
        assert!(matches!(db.allocate_port(&want), Err(DbError::Conflict(_))), "taken");
        want.fixed_ips = vec![FixedIpRequest { subnet_id: Some(subnet_id), ip_address: Some(ip("192.168.7.1")) }];
        assert!(matches!(db.allocate_port(&want), Err(DbError::Conflict(_))), "the gateway");
        want.fixed_ips = vec![FixedIpRequest { subnet_id: None, ip_address: Some(ip("192.168.7.2")) }];
        assert_eq!(db.allocate_port(&want).unwrap().fixed_ips[0].ip_address, ip("192.168.7.2"));

        assert!(matches!(db.delete_network(&net.id), Err(DbError::Conflict(_))), "ports still on it");
        let subnet = &db.subnets_of(&net.id).unwrap()[0];
        assert!(matches!(db.delete_subnet(&subnet.id), Err(DbError::Conflict(_))));
        assert!(matches!(db.delete_security_group(&sg), Err(DbError::Conflict(_))));
    }

    #[test]
    fn default_group_rules_and_duplicates() {
        let (_t, db) = db();
        let id = db.ensure_default_security_group("p1").unwrap();
        let g = db.security_group_by_id(&id).unwrap().unwrap();
        assert_eq!(g.name, "default");
        let mut shape: Vec<(String, String, bool)> = g
            .rules
            .iter()
            .map(|r| (r.direction.clone(), r.ethertype.clone(), r.remote_group_id.as_deref() == Some(&id)))
            .collect();
        shape.sort();
        assert_eq!(
            shape,
            vec![
                ("egress".into(), "IPv4".into(), false),
                ("egress".into(), "IPv6".into(), false),
                ("ingress".into(), "IPv4".into(), true),
                ("ingress".into(), "IPv6".into(), true),
            ]
        );
        let mut rule = g.rules[0].clone();
        rule.id = String::new();
        let err = db.create_security_group_rule(&rule).unwrap_err();
        assert!(matches!(err, DbError::Conflict(ref m) if m.contains(&g.rules[0].id)), "{err}");
        rule.protocol = Some("tcp".into());
        rule.port_range_min = Some(22);
        rule.port_range_max = Some(22);
        db.create_security_group_rule(&rule).unwrap();
        assert_eq!(db.security_group_by_id(&id).unwrap().unwrap().rules.len(), 5);
    }
}
