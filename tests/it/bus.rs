//! `novabox bench bus` end to end: the table, and that the AMQP half leaves no broker behind.

use crate::common::{assert_ok, run, stdout, TestHome};

/// True when rabbitmq-server is installed; otherwise panics unless NOVABOX_SKIP_RABBITMQ=1,
/// so CI (which installs it) never skips silently.
fn rabbitmq_available() -> bool {
    if novabox::supervise::rabbitmq::is_installed() {
        return true;
    }
    if std::env::var_os("NOVABOX_SKIP_RABBITMQ").is_some_and(|v| v == "1") {
        eprintln!("rabbitmq-server is not installed and NOVABOX_SKIP_RABBITMQ=1: skipping");
        return false;
    }
    panic!("this test needs rabbitmq-server (scripts/install-deps); set NOVABOX_SKIP_RABBITMQ=1 to skip it");
}

#[test]
fn bench_bus_local_prints_a_table() {
    let home = TestHome::new();
    let out = run(home.novabox().args(["bench", "bus", "--only", "local", "--messages", "500", "--calls", "100"]));
    assert_ok(&out);
    let text = stdout(&out);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    for column in ["implementation", "casts/s", "call p50", "call p99"] {
        assert!(header.contains(column), "{text}");
    }
    let row = lines.next().unwrap_or_default();
    assert!(row.starts_with("local"), "{text}");
    assert!(row.contains(" us") || row.contains(" ms"), "{text}");
}

#[test]
fn bench_bus_amqp_starts_and_removes_its_own_broker() {
    if !rabbitmq_available() {
        return;
    }
    let home = TestHome::new();
    // The benchmark's broker lives in the temp dir; point that at a directory of our own to see
    // what is left behind.
    let tmp = tempfile::tempdir().unwrap();
    let out = run(home.novabox().env("TMPDIR", tmp.path()).args([
        "bench",
        "bus",
        "--only",
        "amqp",
        "--messages",
        "500",
        "--calls",
        "100",
    ]));
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.lines().nth(1).unwrap_or_default().starts_with("amqp"), "{text}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "the benchmark left {left:?}");
    // No process still runs from that directory (the broker, its VM or its epmd).
    let needle = tmp.path().to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let text = String::from_utf8_lossy(&cmdline).into_owned() + &String::from_utf8_lossy(&environ);
        assert!(!text.contains(&needle), "process {:?} still runs from the benchmark's temp dir", entry.path());
    }
}
