//! Helpers shared by the end-to-end tests: the binary, a private home, free ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary home; removed when dropped.
pub struct TestHome {
    dir: tempfile::TempDir,
}

impl TestHome {
    pub fn new() -> TestHome {
        TestHome { dir: tempfile::tempdir().expect("temp home") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `novabox --home <this home>`, with nothing inherited that could point elsewhere.
    pub fn novabox(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_novabox"));
        cmd.env_remove("NOVABOX_HOME").env_remove("NOVABOX_LOG").arg("--home").arg(self.path());
        cmd
    }
}

/// The source tree, so fixture paths work whatever the test's working directory.
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Runs the command and returns its output, panicking with stderr when it could not start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

impl TestHome {
    /// Where this home's clouds.yaml goes (never the user's own).
    pub fn clouds_yaml(&self) -> PathBuf {
        self.path().join("clouds.yaml")
    }

    /// `novabox init` for tests: no prompts, no apt, its own clouds.yaml and API port.
    pub fn init(&self, extra: &[&str]) -> Output {
        run(&mut self.init_cmd(extra))
    }

    /// The command `init` runs, for tests that need to add to its environment.
    pub fn init_cmd(&self, extra: &[&str]) -> Command {
        let port = free_port().to_string();
        let mut cmd = self.novabox();
        cmd.args([
            "init",
            "--yes",
            "--no-install",
            "--no-boot-probe",
            "--api-port",
            &port,
            "--bus-port",
            &free_port().to_string(),
        ])
        .arg("--clouds-yaml")
        .arg(self.clouds_yaml())
        .args(extra);
        cmd
    }
}

/// Asserts the command succeeded, showing its output when it did not.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
