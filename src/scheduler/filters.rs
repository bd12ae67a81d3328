//! Host filters: each says whether one host can take one instance, and why not.

use std::collections::BTreeMap;

use crate::db::instances::FlavorSnapshot;

/// One candidate host as the scheduler sees it: capacity, what is placed there, liveness.
#[derive(Debug, Clone)]
pub struct HostState {
    pub host: String,
    pub node: String,
    pub enabled: bool,
    pub up: bool,
    pub availability_zone: String,
    pub hypervisor_type: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub local_gb: i64,
    pub reserved_memory_mb: i64,
    pub vcpus_used: i64,
    pub memory_mb_used: i64,
    pub local_gb_used: i64,
    pub instances: i64,
    pub cpu_allocation_ratio: f64,
    pub ram_allocation_ratio: f64,
    pub disk_allocation_ratio: f64,
}

impl HostState {
    pub fn free_ram_mb(&self) -> f64 {
        self.memory_mb as f64 * self.ram_allocation_ratio - (self.memory_mb_used + self.reserved_memory_mb) as f64
    }
    pub fn free_vcpus(&self) -> f64 {
        self.vcpus as f64 * self.cpu_allocation_ratio - self.vcpus_used as f64
    }
    pub fn free_disk_gb(&self) -> f64 {
        self.local_gb as f64 * self.disk_allocation_ratio - self.local_gb_used as f64
    }
}

/// What is being placed.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub flavor: &'a FlavorSnapshot,
    pub availability_zone: Option<&'a str>,
    /// `hypervisor_type` image property, when the image asks for one.
    pub hypervisor_type: Option<&'a str>,
    /// Scheduler hint `force_host` (admin), as nova's `host` on create.
    pub force_host: Option<&'a str>,
    /// Scheduler hint `force_node` (admin), as nova's `hypervisor_hostname` on create.
    pub force_node: Option<&'a str>,
    /// The server group the instance is a member of, if any.
    pub group: Option<&'a GroupPlacement>,
}

/// A server group as placement sees it: its policy and where its other members are.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPlacement {
    pub policy: String,
    /// anti-affinity's `max_server_per_host`; nova's default is one.
    pub max_server_per_host: Option<i64>,
    /// Hosts of the group's other live members, with how many on each.
    pub hosts: BTreeMap<String, i64>,
}

pub type Filter = fn(&HostState, &Request<'_>) -> Result<(), String>;

/// The filters in the order they run, with their names for the "no valid host" reason.
pub const FILTERS: &[(&str, Filter)] = &[
    ("ComputeFilter", compute),
    ("AvailabilityZoneFilter", availability_zone),
    ("ForceHostFilter", force_host),
    ("RamFilter", ram),
    ("CoreFilter", cores),
    ("DiskFilter", disk),
    ("ImagePropertiesFilter", image_properties),
    ("ServerGroupAffinityFilter", group_affinity),
    ("ServerGroupAntiAffinityFilter", group_anti_affinity),
];

fn compute(h: &HostState, _: &Request<'_>) -> Result<(), String> {
    match (h.enabled, h.up) {
        (false, _) => Err("compute service disabled".into()),
        (_, false) => Err("compute service down (no recent heartbeat)".into()),
        _ => Ok(()),
    }
}

fn availability_zone(h: &HostState, r: &Request<'_>) -> Result<(), String> {
    match r.availability_zone {
        Some(az) if az != h.availability_zone => Err(format!("in zone {}, not {az}", h.availability_zone)),
        _ => Ok(()),
    }
}

fn force_host(h: &HostState, r: &Request<'_>) -> Result<(), String> {
    match (r.force_host, r.force_node) {
        (Some(want), _) if want != h.host => Err(format!("not the requested host {want}")),
        (_, Some(want)) if want != h.node => Err(format!("not the requested node {want}")),
        _ => Ok(()),
    }
}

fn ram(h: &HostState, r: &Request<'_>) -> Result<(), String> {
    let free = h.free_ram_mb();
    if free < r.flavor.memory_mb as f64 {
        return Err(format!("{free:.0} MB RAM free, {} MB needed", r.flavor.memory_mb));
    }
    Ok(())
}

fn cores(h: &HostState, r: &Request<'_>) -> Result<(), String> {
    let free = h.free_vcpus();
    if free < r.flavor.vcpus as f64 {
        return Err(format!("{free:.0} vCPUs free, {} needed", r.flavor.vcpus));
    }
    Ok(())
}

fn disk(h: &HostState, r: &Request<'_>) -> Result<(), String> {
    let need = r.flavor.root_gb as f64 + r.flavor.ephemeral_gb as f64 + r.flavor.swap as f64 / 1024.0;
    let free = h.free_disk_gb();
    if free < need {
        return Err(format!("{free:.0} GB disk free, {need:.0} GB needed"));
    }
    Ok(())
}

fn image_properties(h: &HostState, r: &Request<'_>) -> Result<(), String> {
    match r.hypervisor_type {
        Some(want) if !want.eq_ignore_ascii_case(&h.hypervisor_type) => {
            Err(format!("hypervisor {} but the image needs {want}", h.hypervisor_type))
        }
        _ => Ok(()),
    }
}

/// nova's ServerGroupAffinityFilter: once a member is placed, the rest follow it.
fn group_affinity(h: &HostState, r: &Request<'_>) -> Result<(), String> {
    match r.group {
        Some(g) if g.policy == "affinity" && !g.hosts.is_empty() && !g.hosts.contains_key(&h.host) => {
            let on: Vec<&str> = g.hosts.keys().map(String::as_str).collect();
            Err(format!("the group's members are on {}", on.join(", ")))
        }
        _ => Ok(()),
    }
}

/// nova's ServerGroupAntiAffinityFilter: at most `max_server_per_host` members on a host.
fn group_anti_affinity(h: &HostState, r: &Request<'_>) -> Result<(), String> {
    let Some(g) = r.group.filter(|g| g.policy == "anti-affinity") else { return Ok(()) };
    let max = g.max_server_per_host.unwrap_or(1);
    let here = g.hosts.get(&h.host).copied().unwrap_or(0);
    if here >= max {
        return Err(format!("{here} of the group's members already here, max_server_per_host is {max}"));
    }
    Ok(())
}

/// The hosts that pass every filter; for the rest, the first filter that refused and why.
pub fn filter_hosts<'h>(hosts: &'h [HostState], req: &Request<'_>) -> (Vec<&'h HostState>, Vec<String>) {
    let mut passed = Vec::new();
    let mut reasons = Vec::new();
    'hosts: for h in hosts {
        for (name, f) in FILTERS {
            if let Err(why) = f(h, req) {
                reasons.push(format!("{}: {name}: {why}", h.host));
                continue 'hosts;
            }
        }
        passed.push(h);
    }
    (passed, reasons)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn host(name: &str) -> HostState {
        HostState {
            host: name.into(),
            node: name.into(),
            enabled: true,
            up: true,
            availability_zone: "nova".into(),
            hypervisor_type: "fake".into(),
            vcpus: 2,
            memory_mb: 4096,
            local_gb: 20,
            reserved_memory_mb: 512,
            vcpus_used: 0,
            memory_mb_used: 0,
            local_gb_used: 0,
            instances: 0,
            cpu_allocation_ratio: 16.0,
            ram_allocation_ratio: 1.0,
            disk_allocation_ratio: 1.0,
        }
    }

    pub fn flavor(ram: i64, vcpus: i64, disk: i64) -> FlavorSnapshot {
        FlavorSnapshot {
            flavorid: "x".into(),
            name: "x".into(),
            memory_mb: ram,
            vcpus,
            root_gb: disk,
            ephemeral_gb: 0,
            swap: 0,
            extra_specs: Default::default(),
        }
    }

    fn req(f: &FlavorSnapshot) -> Request<'_> {
        Request {
            flavor: f,
            availability_zone: None,
            hypervisor_type: None,
            force_host: None,
            force_node: None,
            group: None,
        }
    }

    pub fn group(policy: &str, max: Option<i64>, hosts: &[(&str, i64)]) -> GroupPlacement {
        GroupPlacement {
            policy: policy.into(),
            max_server_per_host: max,
            hosts: hosts.iter().map(|(h, n)| (h.to_string(), *n)).collect(),
        }
    }

    fn names<'h>(passed: &[&'h HostState]) -> Vec<&'h str> {
        passed.iter().map(|h| h.host.as_str()).collect()
    }

    #[test]
    fn affinity_follows_the_first_member_and_anti_affinity_avoids_it() {
        let hosts = vec![host("a"), host("b")];
        let f = flavor(64, 1, 1);
        let empty = group("affinity", None, &[]);
        let (passed, _) = filter_hosts(&hosts, &Request { group: Some(&empty), ..req(&f) });
        assert_eq!(names(&passed), ["a", "b"], "the first member may go anywhere");
        let on_b = group("affinity", None, &[("b", 1)]);
        let (passed, reasons) = filter_hosts(&hosts, &Request { group: Some(&on_b), ..req(&f) });
        assert_eq!(names(&passed), ["b"]);
        assert_eq!(reasons, ["a: ServerGroupAffinityFilter: the group's members are on b"]);
        let anti = group("anti-affinity", None, &[("b", 1)]);
        let (passed, reasons) = filter_hosts(&hosts, &Request { group: Some(&anti), ..req(&f) });
        assert_eq!(names(&passed), ["a"]);
        assert!(reasons[0].starts_with("b: ServerGroupAntiAffinityFilter:"), "{reasons:?}");
        // max_server_per_host lets that many share a host, and no more.
        let two = group("anti-affinity", Some(2), &[("a", 2), ("b", 1)]);
        let (passed, _) = filter_hosts(&hosts, &Request { group: Some(&two), ..req(&f) });
        assert_eq!(names(&passed), ["b"]);
        // The soft policies never filter: the weighers decide.
        let soft = group("soft-anti-affinity", None, &[("a", 3), ("b", 3)]);
        assert_eq!(filter_hosts(&hosts, &Request { group: Some(&soft), ..req(&f) }).0.len(), 2);
    }

    #[test]
    fn capacity_filters_use_ratios_and_reservation() {
        let h = host("a");
        assert!(ram(&h, &req(&flavor(3584, 1, 1))).is_ok());
        assert!(ram(&h, &req(&flavor(3585, 1, 1))).is_err());
        assert!(cores(&h, &req(&flavor(64, 32, 1))).is_ok());
        assert!(cores(&h, &req(&flavor(64, 33, 1))).is_err());
        assert!(disk(&h, &req(&flavor(64, 1, 21))).is_err());
    }

    #[test]
    fn down_disabled_and_wrong_zone_hosts_are_refused_with_reasons() {
        let mut down = host("down");
        down.up = false;
        let mut off = host("off");
        off.enabled = false;
        let mut elsewhere = host("elsewhere");
        elsewhere.availability_zone = "az2".into();
        let good = host("good");
        let hosts = vec![down, off, elsewhere, good];
        let f = flavor(64, 1, 1);
        let r = Request { availability_zone: Some("nova"), ..req(&f) };
        let (passed, reasons) = filter_hosts(&hosts, &r);
        assert_eq!(passed.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(), vec!["good"]);
        assert_eq!(reasons.len(), 3);
        assert!(reasons[0].contains("down"), "{reasons:?}");
    }
}
