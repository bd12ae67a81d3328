//! `novabox bench bus` end to end: the table, and that the AMQP half leaves no broker behind.

use crate::common::{novabox, rabbitmq_available, run_ok};

#[test]
fn bench_bus_local_prints_a_table() {
    let home = tempfile::tempdir().unwrap();
    let out =
        run_ok(novabox(home.path()).args(["bench", "bus", "--only", "local", "--messages", "500", "--calls", "100"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let header = lines.next().unwrap_or_default();
    for column in ["implementation", "casts/s", "call p50", "call p99"] {
        assert!(header.contains(column), "{stdout}");
    }
    let row = lines.next().unwrap_or_default();
    assert!(row.starts_with("local"), "{stdout}");
    assert!(row.contains(" us") || row.contains(" ms"), "{stdout}");
}

#[test]
fn bench_bus_amqp_starts_and_removes_its_own_broker() {
    if !rabbitmq_available() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    // The benchmark's broker lives in the temp dir; point that at a directory of our own to see
    // what is left behind.
    let tmp = tempfile::tempdir().unwrap();
    let out = run_ok(novabox(home.path()).env("TMPDIR", tmp.path()).args([
        "bench",
        "bus",
        "--only",
        "amqp",
        "--messages",
        "500",
        "--calls",
        "100",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().nth(1).unwrap_or_default().starts_with("amqp"), "{stdout}");
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
