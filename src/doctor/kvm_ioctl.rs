//! Every KVM ioctl novabox makes, through rust-vmm's `kvm-ioctls`. Nothing else in the crate
//! talks to /dev/kvm, so the system-call surface is reviewable in one page.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// The API version every KVM since Linux 2.6.22 reports; anything else is unusable.
pub const EXPECTED_API_VERSION: i32 = 12;

/// KVM_CAP_IOEVENTFD_ANY_LENGTH, which `kvm_ioctls::Cap` does not name.
const CAP_IOEVENTFD_ANY_LENGTH: u64 = 122;

/// An open /dev/kvm.
pub struct KvmDevice {
    kvm: Kvm,
}

impl KvmDevice {
    /// Opens the device read-write, as qemu does.
    pub fn open(path: &Path) -> io::Result<KvmDevice> {
        let c =
            CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let kvm = Kvm::new_with_path(&c).map_err(io::Error::from)?;
        Ok(KvmDevice { kvm })
    }

    /// KVM_GET_API_VERSION.
    pub fn api_version(&self) -> i32 {
        self.kvm.get_api_version()
    }

    /// KVM_CREATE_VM, closing the VM again at once. EBUSY means another hypervisor holds the
    /// CPU's virtualization extensions.
    pub fn create_vm(&self) -> io::Result<()> {
        self.kvm.create_vm().map(drop).map_err(io::Error::from)
    }

    /// The capabilities qemu's KVM accelerator refuses to start without (accel/kvm and
    /// target/i386 `kvm_required_capabilites` in qemu 7.x), by name, that this KVM lacks.
    pub fn missing_qemu_capabilities(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        let caps = [
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::DestroyMemoryRegionWorks, "KVM_CAP_DESTROY_MEMORY_REGION_WORKS"),
            (Cap::JoinMemoryRegionsWorks, "KVM_CAP_JOIN_MEMORY_REGIONS_WORKS"),
            (Cap::InternalErrorData, "KVM_CAP_INTERNAL_ERROR_DATA"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
            (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
            (Cap::MpState, "KVM_CAP_MP_STATE"),
        ];
        for (cap, name) in caps {
            if !self.kvm.check_extension(cap) {
                missing.push(name);
            }
        }
        if self.kvm.check_extension_raw(CAP_IOEVENTFD_ANY_LENGTH as _) <= 0 {
            missing.push("KVM_CAP_IOEVENTFD_ANY_LENGTH");
        }
        missing
    }
}
