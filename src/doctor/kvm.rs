//! The KVM checks: modules and their parameters, PVM, the /dev/kvm node, and (on the live host
//! only) opening it, its API version, creating a VM and the capabilities qemu needs.

use std::io;

use super::cpu::{CpuInfo, Vendor};
use super::environment::{Environment, Platform};
use super::host::{param_is_on, HostRoot};
use super::kvm_ioctl::{KvmDevice, EXPECTED_API_VERSION};
use super::{Check, Status};

/// What the decision needs to know about KVM.
#[derive(Debug, Clone, Default)]
pub struct KvmFacts {
    /// `kvm_intel` or `kvm_amd` when loaded.
    pub hardware_module: Option<&'static str>,
    /// `kvm_pvm` is loaded: /dev/kvm runs only PVM guest kernels.
    pub pvm: bool,
    pub device_exists: bool,
    /// Open, API version, KVM_CREATE_VM and capabilities all passed. `None` when they were not
    /// tried (fixture roots, or the device is missing).
    pub ioctls_ok: Option<bool>,
}

impl KvmFacts {
    /// KVM that a normal guest can be expected to use, before any probe boot proves it.
    pub fn looks_usable(&self, cpu: &CpuInfo) -> bool {
        self.device_exists && !self.pvm && cpu.virt_flag().is_some() && self.ioctls_ok != Some(false)
    }
}

const NOT_ON_FIXTURE: &str = "not run against a fixture root";

pub fn run_checks(host: &HostRoot, cpu: &CpuInfo, env: &Environment, checks: &mut Vec<Check>) -> KvmFacts {
    let mut facts = KvmFacts {
        hardware_module: ["kvm_intel", "kvm_amd"].into_iter().find(|m| host.module_loaded(m)),
        pvm: host.module_loaded("kvm_pvm"),
        device_exists: host.exists("/dev/kvm"),
        ioctls_ok: None,
    };
    checks.push(check_modules(host, cpu, env, &facts));
    checks.push(check_nested(host, &facts));
    checks.push(check_tdp(host, env, &facts));
    checks.push(check_pvm(&facts));
    checks.push(check_device(cpu, env, &facts));

    let ids = ["kvm.access", "kvm.api_version", "kvm.create_vm", "kvm.capabilities"];
    if !host.is_live() {
        checks.extend(ids.iter().map(|id| Check::new(id, Status::Note, NOT_ON_FIXTURE, "")));
        return facts;
    }
    if !facts.device_exists {
        checks.extend(ids.iter().map(|id| Check::new(id, Status::Note, "skipped: there is no /dev/kvm", "")));
        return facts;
    }
    let device = match KvmDevice::open(&host.path("/dev/kvm")) {
        Ok(d) => {
            checks.push(Check::pass("kvm.access", "/dev/kvm opens read-write"));
            d
        }
        Err(e) => {
            checks.push(check_access_error(host, &e));
            checks.extend(
                ids[1..].iter().map(|id| Check::new(id, Status::Note, "skipped: /dev/kvm cannot be opened", "")),
            );
            facts.ioctls_ok = Some(false);
            return facts;
        }
    };
    let mut ok = true;
    let version = device.api_version();
    if version == EXPECTED_API_VERSION {
        checks.push(Check::pass("kvm.api_version", format!("KVM_GET_API_VERSION is {version}")));
    } else {
        ok = false;
        checks.push(Check::fail(
            "kvm.api_version",
            format!("KVM_GET_API_VERSION is {version}, not {EXPECTED_API_VERSION}: qemu will refuse this KVM"),
            "this kernel's KVM is too old or not KVM at all; upgrade the kernel",
        ));
    }
    match device.create_vm() {
        Ok(()) => checks.push(Check::pass("kvm.create_vm", "KVM_CREATE_VM works")),
        Err(e) => {
            ok = false;
            checks.push(check_create_vm_error(&e, env));
        }
    }
    let missing = device.missing_qemu_capabilities();
    if missing.is_empty() {
        checks.push(Check::pass("kvm.capabilities", "KVM has every capability qemu requires"));
    } else {
        ok = false;
        checks.push(Check::fail(
            "kvm.capabilities",
            format!("KVM lacks capabilities qemu requires: {}", missing.join(", ")),
            "qemu -accel kvm will not start on this kernel; upgrade the kernel (guests run under TCG until then)",
        ));
    }
    facts.ioctls_ok = Some(ok);
    facts
}

fn check_modules(host: &HostRoot, cpu: &CpuInfo, env: &Environment, facts: &KvmFacts) -> Check {
    const ID: &str = "kvm.modules";
    let loaded: Vec<&str> =
        ["kvm", "kvm_intel", "kvm_amd", "kvm_pvm"].into_iter().filter(|m| host.module_loaded(m)).collect();
    let list = if loaded.is_empty() { "none".to_string() } else { loaded.join(", ") };
    if let Some(m) = facts.hardware_module {
        return Check::pass(ID, format!("{m} is loaded (KVM modules: {list})"));
    }
    if facts.pvm {
        return Check::warn(
            ID,
            format!("only kvm_pvm provides KVM (KVM modules: {list}): no hardware KVM module is loaded"),
            "normal guests run under TCG here; PVM guest kernels can use /dev/kvm",
        );
    }
    let module = match cpu.vendor {
        Vendor::Amd => "kvm_amd",
        _ => "kvm_intel",
    };
    if cpu.virt_flag().is_none() {
        return Check::fail(
            ID,
            format!("no KVM module is loaded (KVM modules: {list}) and the CPU shows no vmx/svm"),
            format!("fix cpu.virt_extensions first: {module} loads once the CPU shows vmx/svm"),
        );
    }
    if env.container.is_some() {
        return Check::fail(
            ID,
            format!("no KVM module is loaded on the host (KVM modules: {list})"),
            format!("on the host (not in the container) run sudo modprobe {module}"),
        );
    }
    Check::fail(
        ID,
        format!("no KVM module is loaded (KVM modules: {list}) although the CPU has {}", cpu.virt_name()),
        format!(
            "sudo modprobe {module} (and add it to /etc/modules); if it says \"Operation not supported\", \
             the extension is disabled in the firmware"
        ),
    )
}

fn check_nested(host: &HostRoot, facts: &KvmFacts) -> Check {
    const ID: &str = "kvm.nested";
    let Some(m) = facts.hardware_module else {
        return Check::new(ID, Status::Note, "no kvm_intel/kvm_amd loaded: nothing to nest", "");
    };
    match host.module_param(m, "nested") {
        Some(v) if param_is_on(&v) => Check::pass(ID, format!("{m} nested={v}: guests may run KVM themselves")),
        Some(v) => Check::new(
            ID,
            Status::Note,
            format!("{m} nested={v}: guests cannot run KVM themselves (novabox's own guests do not need it)"),
            format!("to allow it: echo 'options {m} nested=1' | sudo tee /etc/modprobe.d/{m}.conf, then reload {m}"),
        ),
        None => Check::new(ID, Status::Note, format!("{m} has no nested parameter"), ""),
    }
}

fn check_tdp(host: &HostRoot, env: &Environment, facts: &KvmFacts) -> Check {
    const ID: &str = "kvm.tdp";
    let Some(m) = facts.hardware_module else {
        return Check::new(ID, Status::Note, "no kvm_intel/kvm_amd loaded: no EPT/NPT to check", "");
    };
    let (param, name) = if m == "kvm_amd" { ("npt", "NPT") } else { ("ept", "EPT") };
    match host.module_param(m, param) {
        Some(v) if param_is_on(&v) => Check::pass(ID, format!("{m} {param}={v}: guests use {name} (fast paging)")),
        Some(v) => {
            let fix = if env.platform == Platform::Vmware {
                "power the VM off and tick \"Virtualize Intel VT-x/EPT or AMD-V/RVI\" (Workstation) or \
                 \"Enable hypervisor applications\" (Fusion), which also exposes EPT/RVI"
                    .to_string()
            } else {
                format!("load {m} with {param}=1 (/etc/modprobe.d/{m}.conf) and check the firmware enables it")
            };
            Check::warn(ID, format!("{m} {param}={v}: guests use shadow paging and run slowly"), fix)
        }
        None => Check::new(ID, Status::Note, format!("{m} has no {param} parameter"), ""),
    }
}

fn check_pvm(facts: &KvmFacts) -> Check {
    const ID: &str = "kvm.pvm";
    if !facts.pvm {
        return Check::pass(ID, "kvm_pvm is not loaded: any /dev/kvm here is hardware KVM");
    }
    Check::warn(
        ID,
        "kvm_pvm is loaded: /dev/kvm works without vmx/svm through PVM, but only PVM guest kernels run under it; \
         a normal guest kernel hangs",
        "novabox runs normal images under TCG here (slow but working); only images with a PVM-enabled kernel could use KVM",
    )
}

fn check_device(cpu: &CpuInfo, env: &Environment, facts: &KvmFacts) -> Check {
    const ID: &str = "kvm.device";
    if facts.device_exists {
        let via = if facts.pvm && facts.hardware_module.is_none() { " (provided by kvm_pvm)" } else { "" };
        return Check::pass(ID, format!("/dev/kvm exists{via}"));
    }
    let fix = if env.container.is_some() {
        "pass the device into the container: docker/podman run --device /dev/kvm (Kubernetes: a device plugin or a \
         privileged pod), after making sure the host itself has /dev/kvm"
            .to_string()
    } else if facts.hardware_module.is_some() || facts.pvm {
        "the module is loaded but the node is missing: sudo mknod /dev/kvm c 10 232 (and check udev is running)"
            .to_string()
    } else if cpu.virt_flag().is_some() {
        let module = if cpu.vendor == Vendor::Amd { "kvm_amd" } else { "kvm_intel" };
        format!("sudo modprobe {module}; if that fails, enable the extension in the firmware")
    } else {
        "fix cpu.virt_extensions first: /dev/kvm appears when kvm_intel or kvm_amd loads".to_string()
    };
    Check::fail(ID, format!("/dev/kvm does not exist {}", env.here()), fix)
}

fn check_access_error(host: &HostRoot, e: &io::Error) -> Check {
    const ID: &str = "kvm.access";
    if e.kind() != io::ErrorKind::PermissionDenied {
        return Check::fail(ID, format!("/dev/kvm cannot be opened: {e}"), "check dmesg for KVM errors");
    }
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(host.path("/dev/kvm")).ok();
    let mode = meta.as_ref().map(|m| m.mode() & 0o777).unwrap_or(0);
    let gid = meta.as_ref().map(|m| m.gid()).unwrap_or(0);
    let group = group_name(host, gid).unwrap_or_else(|| gid.to_string());
    let uid: Option<u32> =
        host.self_status("Uid").and_then(|v| v.split_whitespace().nth(1).and_then(|s| s.parse().ok()));
    let user = uid.and_then(|u| user_name(host, u)).unwrap_or_else(|| "$USER".to_string());
    let members = group_members(host, &group);
    let process_gids: Vec<u32> =
        host.self_status("Groups").unwrap_or_default().split_whitespace().filter_map(|g| g.parse().ok()).collect();
    Check::fail(
        ID,
        format!("/dev/kvm is mode {mode:04o} group {group} and this user ({user}) may not open it read-write"),
        access_fix(&user, mode, &group, gid, &members, &process_gids),
    )
}

/// The fix for EACCES on /dev/kvm: which group, and whether a new login is all that is missing.
fn access_fix(user: &str, mode: u32, group: &str, gid: u32, members: &[String], process_gids: &[u32]) -> String {
    if mode & 0o060 != 0o060 {
        return format!(
            "/dev/kvm gives its group no read-write access: add a udev rule \
             KERNEL==\"kvm\", GROUP=\"kvm\", MODE=\"0660\" (/etc/udev/rules.d/65-kvm.rules), run \
             sudo udevadm trigger, add yourself with sudo usermod -aG kvm {user}, or run novabox as root"
        );
    }
    if members.iter().any(|m| m == user) && !process_gids.contains(&gid) {
        return format!(
            "{user} was added to group {group} but this session started before that: log out and in again \
             (or run newgrp {group})"
        );
    }
    format!("sudo usermod -aG {group} {user}, then log out and in again")
}

fn group_name(host: &HostRoot, gid: u32) -> Option<String> {
    host.read("/etc/group")?.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse::<u32>().ok() == Some(gid)).then(|| f[0].to_string())
    })
}

fn group_members(host: &HostRoot, group: &str) -> Vec<String> {
    host.read("/etc/group")
        .and_then(|text| {
            text.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[0] == group).then(|| f[3].split(',').map(str::to_string).collect())
            })
        })
        .unwrap_or_default()
}

fn user_name(host: &HostRoot, uid: u32) -> Option<String> {
    host.read("/etc/passwd")?.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[0].to_string())
    })
}

fn check_create_vm_error(e: &io::Error, env: &Environment) -> Check {
    const ID: &str = "kvm.create_vm";
    if e.raw_os_error() == Some(libc::EBUSY) {
        let fix = if env.platform == Platform::BareMetal {
            "another hypervisor holds VT-x/AMD-V (VirtualBox or VMware Workstation running on this host): stop its \
             VMs or unload its kernel modules (vboxdrv), then run novabox doctor again"
        } else {
            "another hypervisor inside this machine holds VT-x/AMD-V (such as VirtualBox): stop its VMs or unload \
             its modules (vboxdrv)"
        };
        return Check::fail(ID, format!("KVM_CREATE_VM failed with EBUSY: {e}"), fix);
    }
    Check::fail(
        ID,
        format!("KVM_CREATE_VM failed: {e}"),
        "check dmesg for the KVM error; guests run under TCG until it is fixed",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_fix_spots_a_missing_relogin() {
        let members = vec!["alice".to_string()];
        let fix = access_fix("alice", 0o660, "kvm", 108, &members, &[1000, 27]);
        assert!(fix.contains("log out and in again") && fix.contains("newgrp kvm"), "{fix}");
        let fix = access_fix("bob", 0o660, "kvm", 108, &members, &[1000]);
        assert_eq!(fix, "sudo usermod -aG kvm bob, then log out and in again");
        let fix = access_fix("alice", 0o600, "root", 0, &[], &[]);
        assert!(fix.contains("udev rule"), "{fix}");
    }

    #[test]
    fn ebusy_names_virtualbox() {
        let env = Environment {
            platform: Platform::BareMetal,
            name: "bare-metal host".into(),
            container: None,
            evidence: vec![],
        };
        let c = check_create_vm_error(&io::Error::from_raw_os_error(libc::EBUSY), &env);
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.contains("VirtualBox"), "{}", c.fix);
    }
}
