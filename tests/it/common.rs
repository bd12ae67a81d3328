//! Helpers shared by the end-to-end tests.

use std::path::Path;
use std::process::{Command, Output};

/// The `novabox` binary under test, with its home in `home` and no inherited log filter.
pub fn novabox(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_novabox"));
    cmd.env("NOVABOX_HOME", home).env_remove("NOVABOX_LOG").env_remove("RUST_LOG");
    cmd
}

/// Runs `cmd` and fails the test with its output when it does not exit 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("cannot run novabox");
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// True when rabbitmq-server is installed; otherwise panics unless NOVABOX_SKIP_RABBITMQ=1,
/// so CI (which installs it) never skips silently.
pub fn rabbitmq_available() -> bool {
    if novabox::supervise::rabbitmq::is_installed() {
        return true;
    }
    if std::env::var_os("NOVABOX_SKIP_RABBITMQ").is_some_and(|v| v == "1") {
        eprintln!("rabbitmq-server is not installed and NOVABOX_SKIP_RABBITMQ=1: skipping");
        return false;
    }
    panic!("this test needs rabbitmq-server (scripts/install-deps); set NOVABOX_SKIP_RABBITMQ=1 to skip it");
}
