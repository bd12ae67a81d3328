//! Host weighers: among the hosts that passed the filters, prefer the emptiest (nova's
//! default RAM weigher spreads instances), with free vCPUs as the tie-breaker.

use super::filters::HostState;

/// Picks the best host, or None when the list is empty.
pub fn best<'h>(hosts: &[&'h HostState]) -> Option<&'h HostState> {
    hosts.iter().copied().max_by(|a, b| {
        a.free_ram_mb()
            .total_cmp(&b.free_ram_mb())
            .then(a.free_vcpus().total_cmp(&b.free_vcpus()))
            // Deterministic among equals: the name that sorts first wins.
            .then(b.host.cmp(&a.host))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::filters::tests::host;

    #[test]
    fn spreads_by_free_ram() {
        let mut busy = host("busy");
        busy.memory_mb_used = 2048;
        let idle = host("idle");
        assert_eq!(best(&[&busy, &idle]).unwrap().host, "idle");
        assert!(best(&[]).is_none());
    }
}
