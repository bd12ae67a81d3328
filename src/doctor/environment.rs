//! Where novabox runs: bare metal, a VM (and whose), a container. Decided from evidence that
//! is named in the finding, because the fixes differ per environment and a wrong guess sends
//! the user to the wrong settings dialog.

use serde::{Deserialize, Serialize};

use super::cpu::{CpuInfo, Vendor};
use super::host::HostRoot;
use super::{Check, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    BareMetal,
    Vmware,
    Virtualbox,
    HyperV,
    Wsl2,
    /// A KVM/QEMU guest: a cloud instance or a local qemu/libvirt VM.
    KvmGuest,
    Firecracker,
    /// A hypervisor we cannot name (the CPU says there is one).
    OtherVm,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    pub platform: Platform,
    /// For people: "VMware guest", "KVM/QEMU guest (Amazon EC2)".
    pub name: String,
    /// `docker`, `podman`, `lxc`, `kubernetes` or `container` when inside one.
    pub container: Option<String>,
    /// What the decision rests on, one fact per entry.
    pub evidence: Vec<String>,
}

impl Environment {
    /// "in this VMware guest", for findings.
    pub fn here(&self) -> String {
        let base = match self.platform {
            Platform::BareMetal => "on this bare-metal host".to_string(),
            _ => format!("in this {}", self.name),
        };
        match &self.container {
            Some(c) => format!("{base} ({c} container)"),
            None => base,
        }
    }
}

/// DMI strings that name a KVM/QEMU-based platform, with the cloud they belong to.
const KVM_DMI_VENDORS: &[(&str, &str)] = &[
    ("QEMU", "QEMU"),
    ("Amazon EC2", "Amazon EC2"),
    ("Google", "Google Compute Engine"),
    ("OpenStack Foundation", "OpenStack"),
    ("OpenStack Nova", "OpenStack"),
    ("DigitalOcean", "DigitalOcean"),
    ("Hetzner", "Hetzner Cloud"),
    ("Scaleway", "Scaleway"),
    ("Linode", "Linode"),
    ("Akamai", "Akamai/Linode"),
    ("Red Hat", "Red Hat KVM"),
    ("Oracle Corporation", "Oracle Cloud"),
    ("Alibaba Cloud", "Alibaba Cloud"),
    ("Tencent Cloud", "Tencent Cloud"),
];

pub fn detect(host: &HostRoot, cpu: &CpuInfo) -> Environment {
    let mut evidence = Vec::new();
    let hv_flag = cpu.has("hypervisor");
    if hv_flag {
        evidence.push("/proc/cpuinfo has the hypervisor flag".to_string());
    } else if !cpu.flags.is_empty() {
        evidence.push("/proc/cpuinfo has no hypervisor flag".to_string());
    }
    let dmi = |f: &str| host.read_line(&format!("/sys/class/dmi/id/{f}"));
    let vendor = dmi("sys_vendor");
    let product = dmi("product_name");
    let bios = dmi("bios_vendor");
    match (&vendor, &product) {
        (None, None) if !host.exists("/sys/class/dmi/id") => {
            evidence.push("no DMI (/sys/class/dmi/id is missing)".into())
        }
        _ => {
            if let Some(v) = &vendor {
                evidence.push(format!("DMI sys_vendor {v:?}"));
            }
            if let Some(p) = &product {
                evidence.push(format!("DMI product_name {p:?}"));
            }
        }
    }
    let cpuid = host.cpuid_hypervisor_vendor();
    if let Some(c) = &cpuid {
        evidence.push(format!("CPUID 0x40000000 {c:?}"));
    }
    let acpi_oem = acpi_oem_id(host);
    if let Some(o) = &acpi_oem {
        evidence.push(format!("ACPI FACP OEM id {o:?}"));
    }
    let osrelease = host.read_line("/proc/sys/kernel/osrelease").unwrap_or_default();

    let v = vendor.as_deref().unwrap_or("");
    let p = product.as_deref().unwrap_or("");
    let c = cpuid.as_deref().unwrap_or("");
    let o = acpi_oem.as_deref().unwrap_or("");
    let lower_release = osrelease.to_ascii_lowercase();
    let (platform, name) = if lower_release.contains("microsoft") && lower_release.contains("wsl") {
        evidence.push(format!("kernel release {osrelease:?}"));
        (Platform::Wsl2, "WSL2 VM".to_string())
    } else if v == "VMware, Inc." || p.starts_with("VMware") || c == "VMwareVMware" {
        (Platform::Vmware, "VMware guest".to_string())
    } else if p == "VirtualBox" || v == "innotek GmbH" || c == "VBoxVBoxVBox" {
        (Platform::Virtualbox, "VirtualBox guest".to_string())
    } else if (v == "Microsoft Corporation" && p == "Virtual Machine") || (c == "Microsoft Hv" && vendor.is_none()) {
        (Platform::HyperV, "Hyper-V guest".to_string())
    } else if o == "FIRECK" || v.contains("Firecracker") || p.contains("Firecracker") {
        (Platform::Firecracker, "Firecracker microVM".to_string())
    } else if let Some((_, cloud)) = KVM_DMI_VENDORS.iter().find(|(key, _)| v.starts_with(key)) {
        (Platform::KvmGuest, format!("KVM/QEMU guest ({cloud})"))
    } else if p.contains("KVM")
        || p.starts_with("Standard PC")
        || bios.as_deref() == Some("SeaBIOS")
        || o == "BOCHS"
        || c.starts_with("KVMKVMKVM")
        || c == "TCGTCGTCGTCG"
    {
        (Platform::KvmGuest, "KVM/QEMU guest".to_string())
    } else if hv_flag || !c.is_empty() {
        let name = if c.is_empty() { "virtual machine".to_string() } else { format!("virtual machine ({c})") };
        (Platform::OtherVm, name)
    } else {
        (Platform::BareMetal, "bare-metal host".to_string())
    };
    let container = detect_container(host, &mut evidence);
    Environment { platform, name, container, evidence }
}

/// The OEM id of the ACPI FADT (bytes 10..16 of the table header): `FIRECK` for Firecracker,
/// `BOCHS` for qemu. Readable by root only on most hosts; absent evidence is no evidence.
fn acpi_oem_id(host: &HostRoot) -> Option<String> {
    let bytes = host.read_bytes("/sys/firmware/acpi/tables/FACP")?;
    let oem = bytes.get(10..16)?;
    let text = String::from_utf8_lossy(oem).trim_end_matches(['\0', ' ']).to_string();
    (!text.is_empty()).then_some(text)
}

/// Container runtimes leave markers, but a VM root file system built from a container image
/// keeps `/.dockerenv` too: that marker alone counts only when `/` is not a block device.
fn detect_container(host: &HostRoot, evidence: &mut Vec<String>) -> Option<String> {
    if host.exists("/run/.containerenv") {
        evidence.push("/run/.containerenv exists".into());
        return Some("podman".into());
    }
    if let Some(environ) = host.read_bytes("/proc/1/environ") {
        for var in environ.split(|b| *b == 0) {
            if let Some(value) = var.strip_prefix(b"container=") {
                let value = String::from_utf8_lossy(value).to_string();
                evidence.push(format!("pid 1 has container={value}"));
                return Some(value);
            }
        }
    }
    if let Some(cgroup) = host.read("/proc/1/cgroup") {
        for (needle, kind) in [
            ("kubepods", "kubernetes"),
            ("/docker", "docker"),
            ("libpod", "podman"),
            ("/lxc", "lxc"),
            ("containerd", "container"),
        ] {
            if cgroup.contains(needle) {
                evidence.push(format!("/proc/1/cgroup mentions {needle}"));
                return Some(kind.into());
            }
        }
    }
    let root_mount = root_mount(host);
    if host.exists("/.dockerenv") {
        match &root_mount {
            Some((fstype, source)) if source.starts_with("/dev/") => {
                evidence.push(format!(
                    "/.dockerenv exists but / is {fstype} on {source}, a disk of its own: a leftover of the image build, not a container"
                ));
            }
            Some((fstype, _)) => {
                evidence.push(format!("/.dockerenv exists and / is {fstype}"));
                return Some("docker".into());
            }
            None => {
                evidence.push("/.dockerenv exists".into());
                return Some("docker".into());
            }
        }
    }
    None
}

/// File system type and source of `/`, from /proc/self/mountinfo.
fn root_mount(host: &HostRoot) -> Option<(String, String)> {
    let text = host.read("/proc/self/mountinfo")?;
    text.lines().rev().find_map(|line| {
        let mut fields = line.split_whitespace();
        let mount_point = fields.nth(4)?;
        if mount_point != "/" {
            return None;
        }
        let mut rest = line.split(" - ").nth(1)?.split_whitespace();
        Some((rest.next()?.to_string(), rest.next()?.to_string()))
    })
}

/// `env.platform`: always a NOTE; the evidence is the point.
pub fn check_platform(env: &Environment) -> Check {
    let evidence = if env.evidence.is_empty() { "no evidence found".to_string() } else { env.evidence.join("; ") };
    Check::new("env.platform", Status::Note, format!("{} (evidence: {evidence})", env.name), "")
}

/// `env.container`: containers need /dev/kvm and NET_ADMIN passed in explicitly.
pub fn check_container(env: &Environment) -> Check {
    match &env.container {
        None => Check::pass("env.container", "not in a container"),
        Some(kind) => Check::new(
            "env.container",
            Status::Note,
            format!("inside a {kind} container: devices and capabilities are whatever the container was given"),
            "start the container with --device /dev/kvm --device /dev/net/tun --cap-add NET_ADMIN for KVM and bridges",
        ),
    }
}

/// The fix when the CPU shows no vmx/svm, for this environment.
pub fn virt_extensions_fix(env: &Environment, cpu: &CpuInfo) -> String {
    let firmware_name = match cpu.vendor {
        Vendor::Intel => "\"Intel Virtualization Technology\" (VT-x)",
        Vendor::Amd => "\"SVM Mode\" (AMD-V)",
        Vendor::Other => "the CPU's virtualization extensions (VT-x or AMD-V)",
    };
    match env.platform {
        Platform::Vmware => "power the VM off (shut down, not suspend), then add vhv.enable = \"TRUE\" to its .vmx file, or \
            tick the option: VMware Fusion: Settings > Processors & Memory > Advanced > \"Enable hypervisor applications in \
            this virtual machine\"; VMware Workstation: VM Settings > Processors > \"Virtualize Intel VT-x/EPT or AMD-V/RVI\"; \
            then power it on"
            .to_string(),
        Platform::Virtualbox => "power the VM off, then enable nested virtualization: VBoxManage modifyvm <vm> \
            --nested-hw-virt on (Settings > System > Processor > \"Enable Nested VT-x/AMD-V\")"
            .to_string(),
        Platform::HyperV => "with the VM off, on the Windows host run Set-VMProcessor -VMName <vm> \
            -ExposeVirtualizationExtensions $true"
            .to_string(),
        Platform::Wsl2 => "add nestedVirtualization=true under [wsl2] in %UserProfile%\\.wslconfig, run wsl --shutdown in \
            Windows and start the distribution again"
            .to_string(),
        Platform::KvmGuest => "this VM's host does not pass vmx/svm through: on your own KVM host load kvm_intel/kvm_amd with \
            nested=1 and give the VM -cpu host (libvirt: <cpu mode='host-passthrough'>); in a cloud pick an instance type \
            with nested virtualization (GCP: --enable-nested-virtualization; Azure: Dv3/Ev3 or newer; AWS: a *.metal type)"
            .to_string(),
        Platform::Firecracker => "Firecracker never exposes vmx/svm to its guests: run novabox on bare metal or in a VM with \
            nested virtualization"
            .to_string(),
        Platform::OtherVm => "enable nested virtualization for this VM in its hypervisor (expose vmx/svm to the guest), \
            then power it off and on again"
            .to_string(),
        Platform::BareMetal if env.container.is_some() => format!(
            "the host CPU has no vmx/svm: enable {firmware_name} in the host's BIOS/UEFI setup and power-cycle it"
        ),
        Platform::BareMetal => {
            format!("enable {firmware_name} in the BIOS/UEFI setup, then power-cycle the machine (a reboot is not always enough)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(platform: Platform) -> Environment {
        Environment { platform, name: "x".into(), container: None, evidence: vec![] }
    }

    #[test]
    fn vmware_fix_names_vmx_line_power_off_and_both_ui_options() {
        let cpu = CpuInfo::parse("vendor_id : GenuineIntel\n");
        let fix = virt_extensions_fix(&env(Platform::Vmware), &cpu);
        assert!(fix.contains("vhv.enable = \"TRUE\""), "{fix}");
        assert!(fix.contains("power the VM off") && fix.contains("not suspend"), "{fix}");
        assert!(fix.contains("Processors & Memory > Advanced"), "{fix}");
        assert!(fix.contains("Virtualize Intel VT-x/EPT or AMD-V/RVI"), "{fix}");
    }

    #[test]
    fn wsl_fix_names_wslconfig() {
        let fix = virt_extensions_fix(&env(Platform::Wsl2), &CpuInfo::parse(""));
        assert!(fix.contains("nestedVirtualization=true"), "{fix}");
    }

    #[test]
    fn root_mount_reads_fstype_and_source() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("proc/self")).unwrap();
        std::fs::write(
            t.path().join("proc/self/mountinfo"),
            "22 27 0:21 / /proc rw - proc proc rw\n27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n",
        )
        .unwrap();
        let h = HostRoot::new(t.path());
        assert_eq!(root_mount(&h), Some(("ext4".into(), "/dev/vda".into())));
    }
}
