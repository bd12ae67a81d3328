//! Host weighers: among the hosts that passed the filters, prefer the emptiest (nova's
//! default RAM weigher spreads instances), with free vCPUs as the tie-breaker. A member of a
//! soft-affinity or soft-anti-affinity group weighs its group first (nova's
//! ServerGroupSoftAffinityWeigher and ServerGroupSoftAntiAffinityWeigher): nova adds their
//! normalized weights to the RAM weigher's, where a spread-out RAM weight can cancel the
//! group's; here the group's preference always wins, as a large multiplier makes it in nova.

use super::filters::{GroupPlacement, HostState};

/// How much a soft group policy likes a host: its members there (affinity) or minus them
/// (anti-affinity); 0 for every host otherwise.
fn group_weight(h: &HostState, group: Option<&GroupPlacement>) -> i64 {
    let Some(g) = group else { return 0 };
    let here = g.hosts.get(&h.host).copied().unwrap_or(0);
    match g.policy.as_str() {
        "soft-affinity" => here,
        "soft-anti-affinity" => -here,
        _ => 0,
    }
}

/// Picks the best host, or None when the list is empty.
pub fn best<'h>(hosts: &[&'h HostState], group: Option<&GroupPlacement>) -> Option<&'h HostState> {
    hosts.iter().copied().max_by(|a, b| {
        group_weight(a, group)
            .cmp(&group_weight(b, group))
            .then(a.free_ram_mb().total_cmp(&b.free_ram_mb()))
            .then(a.free_vcpus().total_cmp(&b.free_vcpus()))
            // Deterministic among equals: the name that sorts first wins.
            .then(b.host.cmp(&a.host))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::filters::tests::{group, host};

    #[test]
    fn spreads_by_free_ram() {
        let mut busy = host("busy");
        busy.memory_mb_used = 2048;
        let idle = host("idle");
        assert_eq!(best(&[&busy, &idle], None).unwrap().host, "idle");
        assert!(best(&[], None).is_none());
    }

    #[test]
    fn soft_groups_weigh_their_members_before_free_ram() {
        let mut busy = host("busy");
        busy.memory_mb_used = 2048;
        let idle = host("idle");
        let together = group("soft-affinity", None, &[("busy", 1)]);
        assert_eq!(best(&[&busy, &idle], Some(&together)).unwrap().host, "busy");
        let apart = group("soft-anti-affinity", None, &[("idle", 2), ("busy", 1)]);
        assert_eq!(best(&[&busy, &idle], Some(&apart)).unwrap().host, "busy");
        // The hard policies are the filters' business; they do not weigh.
        let hard = group("affinity", None, &[("busy", 1)]);
        assert_eq!(best(&[&busy, &idle], Some(&hard)).unwrap().host, "idle");
    }
}
