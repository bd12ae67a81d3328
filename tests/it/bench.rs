//! The benchmarks of the README, run end to end at small sizes so they cannot rot unseen:
//! `bench guest` once failed on every run (a console socket path over 107 bytes) and no test
//! noticed. These check that each runs and prints its table, not how fast anything is: the
//! numbers are the benchmarks' business.

use crate::common::{assert_ok, run, stdout, TestHome};

/// The number after `label` on its line of `text`.
fn number_after(text: &str, label: &str) -> f64 {
    let line = text.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no {label:?} in:\n{text}"));
    line[line.find(label).unwrap_or(0) + label.len()..]
        .split_whitespace()
        .find_map(|w| w.trim_start_matches('+').parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {line:?}"))
}

#[test]
fn bench_boot_and_bench_up_print_their_tables() {
    let home = TestHome::new();
    let out = run(home.novabox().args(["bench", "boot", "-n", "20", "-c", "4"]));
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("20 servers, 4 concurrent clients, fake driver, local bus"), "{text}");
    assert!(number_after(&text, "boots/s") > 0.0, "{text}");
    assert!(number_after(&text, "create->ACTIVE p95") > 0.0, "{text}");
    assert!(number_after(&text, "stack RSS    20 ACTIVE") > 0.0, "{text}");

    let out = run(home.novabox().args(["bench", "up", "--rounds", "1"]));
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("up --detach --wait (ready, 1 rounds)"), "{text}");
    assert!(number_after(&text, "first CI run (init + up)") > 0.0, "{text}");
}

#[test]
fn bench_guest_boots_the_test_guest_both_ways_needs_qemu() {
    crate::guests::require_qemu();
    let home = TestHome::new();
    let out = run(home
        .novabox()
        .args(["bench", "guest", "--accel", "tcg"])
        .env("NOVABOX_DEB_CACHE", crate::guests::deb_cache()));
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("accel tcg"), "{text}");
    let novabox = number_after(&text, "novabox  POST /servers -> \"novabox-guest: ready\"");
    let bare = number_after(&text, "bare     qemu-system-x86_64 exec -> \"novabox-guest: ready\"");
    assert!(novabox > 0.0 && bare > 0.0, "{text}");
    assert!(text.contains("overhead"), "{text}");
}

/// A user's first `up --yes` on a new home: init leaves the doctor to the stack, which boots
/// the test guest beside the broker's start and saves the report the compute service reads.
#[test]
fn bench_up_new_home_probes_beside_the_broker_needs_qemu() {
    crate::guests::require_qemu();
    let home = TestHome::new();
    let out =
        run(home.novabox().args(["bench", "up", "--new-home"]).env("NOVABOX_DEB_CACHE", crate::guests::deb_cache()));
    assert_ok(&out);
    let text = stdout(&out);
    assert!(number_after(&text, "total") > 0.0, "{text}");
    // The second new home takes the test guest the first one built from the user cache.
    assert!(text.contains("test guest from the user cache"), "{text}");
    assert!(number_after(&text, "bare qemu boot of the test guest under TCG") > 0.0, "{text}");
    // The stack's own doctor phase probed: one accelerator passed (KVM, or TCG when KVM did
    // not boot or was ruled out by the host's facts).
    assert!(text.contains("probe.kvm: PASS") || text.contains("probe.tcg: PASS"), "{text}");
}
