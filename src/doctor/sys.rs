//! The doctor's only calls into libc and CPU instructions, kept together so the `unsafe` is in
//! one place (KVM ioctls have their own module, `kvm_ioctl`).

use std::path::Path;

/// The hypervisor vendor of CPUID leaf 0x40000000 (`VMwareVMware`, `KVMKVMKVM`,
/// `Microsoft Hv`, `VBoxVBoxVBox`), or `None` on bare metal.
#[cfg(target_arch = "x86_64")]
pub fn cpuid_hypervisor_vendor() -> Option<String> {
    use std::arch::x86_64::__cpuid;
    // Newer compilers made __cpuid safe; older ones (rust-version) need the block.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU and only reads identification registers.
    let (leaf1, leaf_hv) = unsafe { (__cpuid(1), __cpuid(0x4000_0000)) };
    // Leaf 0x40000000 means something only when CPUID.1:ECX.hypervisor (bit 31) is set;
    // on bare metal it returns unrelated data.
    if leaf1.ecx & (1 << 31) == 0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(12);
    for reg in [leaf_hv.ebx, leaf_hv.ecx, leaf_hv.edx] {
        bytes.extend_from_slice(&reg.to_le_bytes());
    }
    let text: String = String::from_utf8_lossy(&bytes).trim_end_matches('\0').trim().to_string();
    (!text.is_empty()).then_some(text)
}

#[cfg(not(target_arch = "x86_64"))]
pub fn cpuid_hypervisor_vendor() -> Option<String> {
    None
}

/// Bytes available to an unprivileged user on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the right
    // type; statvfs writes it fully on success, which is the only case in which it is read.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so the struct is initialized.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between libc targets
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_bytes_of_tmp_is_known() {
        assert!(super::free_bytes(std::path::Path::new("/tmp")).is_some());
        assert!(super::free_bytes(std::path::Path::new("/no/such/dir")).is_none());
    }
}
