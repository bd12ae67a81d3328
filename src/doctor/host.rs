//! The host as the checks see it: files under a root directory (`/` for the real host, a
//! fixture tree in tests) plus the few facts that only the live host can answer.

use std::path::{Path, PathBuf};

/// Where fixture roots keep what has no file on a real host (the CPUID hypervisor leaf).
pub const FIXTURE_DIR: &str = "novabox-fixture";

#[derive(Debug, Clone)]
pub struct HostRoot {
    root: PathBuf,
    live: bool,
}

impl HostRoot {
    /// `root` is live when it resolves to `/`: only then are ioctls, CPUID, sockets and child
    /// processes meaningful, since they cannot be redirected into a directory.
    pub fn new(root: &Path) -> HostRoot {
        let live = std::fs::canonicalize(root).map(|p| p == Path::new("/")).unwrap_or(false);
        HostRoot { root: root.to_path_buf(), live }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// `rel` is an absolute host path such as `/proc/cpuinfo`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel)).ok()
    }

    /// The first line, trimmed; `None` when missing or empty (sysfs attributes, DMI fields).
    pub fn read_line(&self, rel: &str) -> Option<String> {
        let text = self.read(rel)?;
        let line = text.lines().next().unwrap_or("").trim().to_string();
        (!line.is_empty()).then_some(line)
    }

    pub fn read_bytes(&self, rel: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(rel)).ok()
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    /// The hypervisor vendor string of CPUID leaf 0x40000000, e.g. `VMwareVMware`. Fixture roots
    /// provide it as `novabox-fixture/cpuid-0x40000000`.
    pub fn cpuid_hypervisor_vendor(&self) -> Option<String> {
        if self.live {
            super::sys::cpuid_hypervisor_vendor()
        } else {
            self.read_line(&format!("{FIXTURE_DIR}/cpuid-0x40000000"))
        }
    }

    /// A kernel module is loaded when `/sys/module/<name>` exists (this also holds when
    /// `/proc/modules` is missing, as on kernels without module unloading) or it is listed in
    /// `/proc/modules`. Built-in modules with parameters also appear under /sys/module.
    pub fn module_loaded(&self, name: &str) -> bool {
        if self.path(&format!("/sys/module/{name}")).is_dir() {
            return true;
        }
        self.read("/proc/modules")
            .map(|m| m.lines().any(|l| l.split_whitespace().next() == Some(name)))
            .unwrap_or(false)
    }

    /// A module parameter such as `/sys/module/kvm_intel/parameters/nested`.
    pub fn module_param(&self, module: &str, param: &str) -> Option<String> {
        self.read_line(&format!("/sys/module/{module}/parameters/{param}"))
    }

    /// A field of `/proc/self/status` (`CapEff`, `Groups`, `Uid`).
    pub fn self_status(&self, field: &str) -> Option<String> {
        let text = self.read("/proc/self/status")?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == field).then(|| v.trim().to_string())
        })
    }
}

/// Reads a sysfs boolean parameter: `Y`/`N` for bool params, `1`/`0` for int ones (kvm_amd).
pub fn param_is_on(value: &str) -> bool {
    matches!(value.trim(), "Y" | "y" | "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_root_is_not_live_and_reads_below_it() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("sys/module/kvm_pvm")).unwrap();
        std::fs::create_dir_all(t.path().join("proc")).unwrap();
        std::fs::write(t.path().join("proc/modules"), "kvm_intel 1 0 - Live 0x0\n").unwrap();
        let h = HostRoot::new(t.path());
        assert!(!h.is_live());
        assert!(h.module_loaded("kvm_pvm"));
        assert!(h.module_loaded("kvm_intel"));
        assert!(!h.module_loaded("kvm_amd"));
        assert!(HostRoot::new(Path::new("/")).is_live());
    }

    #[test]
    fn params_read_both_spellings() {
        assert!(param_is_on("Y\n") && param_is_on("1") && !param_is_on("N") && !param_is_on("0"));
    }
}
