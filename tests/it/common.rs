//! Helpers shared by the end-to-end tests: the binary, a private home, free ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary home, and a per-user cache of its own (so no test reads or fills the user's);
/// both removed when dropped.
pub struct TestHome {
    dir: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl TestHome {
    pub fn new() -> TestHome {
        TestHome { dir: tempfile::tempdir().expect("temp home"), cache: tempfile::tempdir().expect("temp cache") }
    }

    /// The per-user cache (`NOVABOX_CACHE_DIR`) the binary gets for this home.
    pub fn cache_dir(&self) -> &Path {
        self.cache.path()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `novabox --home <this home>`, with nothing inherited that could point elsewhere.
    pub fn novabox(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_novabox"));
        cmd.env_remove("NOVABOX_HOME")
            .env_remove("NOVABOX_LOG")
            .env(novabox::home::CACHE_ENV, self.cache_dir())
            .arg("--home")
            .arg(self.path());
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
    /// Replaces each `from` with its `to` in this home's novabox.toml, failing when a `from` is
    /// not there: an edit that matched nothing would leave the test on the defaults it meant
    /// to change, and passing for the wrong reason.
    pub fn edit_config(&self, edits: &[(&str, &str)]) {
        let file = self.path().join("novabox.toml");
        let mut text = std::fs::read_to_string(&file).expect("novabox.toml");
        for (from, to) in edits {
            assert!(text.contains(from), "{from:?} is not in novabox.toml:\n{text}");
            text = text.replace(from, to);
        }
        std::fs::write(&file, text).expect("novabox.toml");
    }

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

/// A running `novabox up` of a test home, stopped (SIGTERM, by pid) when dropped.
pub struct Stack {
    child: std::process::Child,
    /// The ready document `up --json` printed.
    pub ready: serde_json::Value,
}

impl TestHome {
    /// Starts `novabox up --json` with the extra flags and waits for it to be ready.
    pub fn up(&self, extra: &[&str]) -> Stack {
        use std::io::BufRead;
        let mut cmd = self.novabox();
        cmd.args(["up", "--json"]).args(extra);
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("start novabox up");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        // Keep draining stderr so a chatty stack never blocks on a full pipe; keep it for failures.
        let log = self.path().join("up.stderr");
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(log).expect("log");
            let _ = std::io::copy(&mut std::io::BufReader::new(stderr), &mut f);
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let err = std::fs::read_to_string(self.path().join("up.stderr")).unwrap_or_default();
                panic!("novabox up did not become ready:\n{err}");
            }
        };
        let ready = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad ready line {line:?}: {e}"));
        Stack { child, ready }
    }

    /// The stack's log so far, for assertion messages.
    pub fn up_log(&self) -> String {
        std::fs::read_to_string(self.path().join("up.stderr")).unwrap_or_default()
    }
}

impl Stack {
    pub fn auth_url(&self) -> String {
        self.ready["auth_url"].as_str().expect("auth_url").to_string()
    }

    pub fn password(&self, user: &str) -> String {
        self.ready["credentials"][user]["password"].as_str().expect("password").to_string()
    }

    /// A logged-in API client as `user` (demo or admin) in the project of the same name.
    pub async fn client(&self, user: &str) -> novabox::client::Client {
        novabox::client::Client::login(&self.auth_url(), user, &self.password(user), user).await.expect("login")
    }

    /// The pid of the `novabox up` process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the stack with SIGKILL (no clean-up of any kind, as a crash or power cut) and reaps it.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the stack gracefully and returns its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}
