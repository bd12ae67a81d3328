//! What /proc/cpuinfo says: vendor, flags, how many CPUs; the vmx/svm and cores checks.

use std::collections::BTreeSet;

use super::environment::{self, Environment};
use super::host::HostRoot;
use super::Check;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

#[derive(Debug, Clone)]
pub struct CpuInfo {
    pub vendor: Vendor,
    pub model: String,
    pub flags: BTreeSet<String>,
    pub processors: usize,
}

impl CpuInfo {
    pub fn read(host: &HostRoot) -> CpuInfo {
        CpuInfo::parse(&host.read("/proc/cpuinfo").unwrap_or_default())
    }

    /// Reads the first processor's vendor, model and flags (they are the same on every CPU of a
    /// machine novabox runs on) and counts the `processor` entries.
    pub fn parse(text: &str) -> CpuInfo {
        let field = |name: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        let vendor = match field("vendor_id").as_deref() {
            Some("GenuineIntel") => Vendor::Intel,
            Some("AuthenticAMD") | Some("HygonGenuine") => Vendor::Amd,
            _ => Vendor::Other,
        };
        let flags = field("flags").unwrap_or_default().split_whitespace().map(str::to_string).collect();
        let processors = text.lines().filter(|l| l.split(':').next().map(str::trim) == Some("processor")).count();
        CpuInfo { vendor, model: field("model name").unwrap_or_default(), flags, processors }
    }

    pub fn has(&self, flag: &str) -> bool {
        self.flags.contains(flag)
    }

    /// `vmx` or `svm`, whichever this CPU shows.
    pub fn virt_flag(&self) -> Option<&'static str> {
        if self.has("vmx") {
            Some("vmx")
        } else if self.has("svm") {
            Some("svm")
        } else {
            None
        }
    }

    /// The name vendors use for the extension, for messages.
    pub fn virt_name(&self) -> &'static str {
        match self.vendor {
            Vendor::Intel => "Intel VT-x (vmx)",
            Vendor::Amd => "AMD-V (svm)",
            Vendor::Other => "VT-x/AMD-V (vmx/svm)",
        }
    }
}

/// `cpu.virt_extensions`: KVM on x86 needs vmx or svm, except through PVM.
pub fn check_virt_extensions(cpu: &CpuInfo, env: &Environment, pvm_loaded: bool) -> Check {
    const ID: &str = "cpu.virt_extensions";
    if let Some(flag) = cpu.virt_flag() {
        let whose = if env.container.is_some() { "the host CPU (seen from the container) has" } else { "the CPU has" };
        return Check::pass(ID, format!("{whose} {flag}: {} is available", cpu.virt_name()));
    }
    let finding = format!("no vmx or svm flag in /proc/cpuinfo: {} is not available {}", cpu.virt_name(), env.here());
    if pvm_loaded {
        return Check::warn(
            ID,
            format!("{finding}; /dev/kvm comes from PVM (kvm_pvm) instead, which runs only PVM guest kernels"),
            format!(
                "normal images run under TCG here; for hardware KVM: {}",
                environment::virt_extensions_fix(env, cpu)
            ),
        );
    }
    Check::fail(ID, finding, environment::virt_extensions_fix(env, cpu))
}

/// `cpu.cores`: guests share the host's CPUs with RabbitMQ, the API and qemu's own threads.
pub fn check_cores(cpu: &CpuInfo) -> Check {
    const ID: &str = "cpu.cores";
    match cpu.processors {
        0 => Check::warn(ID, "cannot count CPUs: /proc/cpuinfo lists no processor", "check that /proc is mounted"),
        1 => Check::warn(
            ID,
            "1 CPU: novabox's services and a guest will compete for it",
            "give this machine at least 2 CPUs",
        ),
        n => Check::pass(ID, format!("{n} CPUs ({})", if cpu.model.is_empty() { "unknown model" } else { &cpu.model })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\nflags\t\t: fpu vmx hypervisor\n\n\
                         processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\nflags\t\t: fpu vmx hypervisor\n";

    #[test]
    fn parses_vendor_flags_and_count() {
        let c = CpuInfo::parse(INTEL);
        assert_eq!(c.vendor, Vendor::Intel);
        assert_eq!(c.processors, 2);
        assert_eq!(c.virt_flag(), Some("vmx"));
        assert!(c.has("hypervisor"));
        assert_eq!(c.model, "Xeon");
    }

    #[test]
    fn empty_cpuinfo_has_nothing() {
        let c = CpuInfo::parse("");
        assert_eq!(c.vendor, Vendor::Other);
        assert_eq!(c.processors, 0);
        assert_eq!(c.virt_flag(), None);
    }
}
