//! The private RabbitMQ broker of one home.
//!
//! Every home gets its own node: its own node name, AMQP port (`[bus] port`, loopback only),
//! Erlang cookie, mnesia and log directories, and its own `epmd` on a port of its own. Sharing
//! the host-wide epmd on 4369 would work, but epmd daemonizes and outlives every broker that
//! started it; owning one per home with a pid file lets `down` leave nothing behind, and homes
//! running side by side (tests) never meet.
//!
//! Layout below the home:
//! - `rabbitmq/`: `rabbitmq.conf`, `enabled_plugins`, an empty `rabbitmq-env.conf` (so the
//!   system's `/etc/rabbitmq/rabbitmq-env.conf` is not read), `.erlang.cookie` (the broker's
//!   `HOME`), and `mnesia/` (durable queues and persistent messages survive restarts here)
//! - `logs/rabbitmq/`: the broker's logs, `startup.log` (its stdout and stderr), `epmd.log`
//! - `run/rabbitmq.pid` (the wrapper script, leader of the broker's process group),
//!   `run/rabbitmq-epmd.pid`, `run/rabbitmq-beam.pid` (written by RabbitMQ itself),
//!   `run/rabbitmq.json` (ports and node name of the running broker) and `run/rabbitmq.lock`
//!   (serializes starting and stopping between processes of one home)

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Stopped, SuperviseError};
use crate::config::Config;
use crate::home::Home;
use crate::secrets::Secrets;

/// The user novabox creates in its private broker (there is no guest user).
pub const BROKER_USER: &str = "novabox";
const TEMPLATE: &str = include_str!("../../templates/rabbitmq.conf");
/// Debian's `/usr/sbin/rabbitmq-server` switches to the `rabbitmq` user when run as root, who
/// cannot write into a root-owned home; the real script lives here.
const DEBIAN_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const SERVER_NEEDLE: &str = "rabbitmq-server";
const EPMD_NEEDLE: &str = "epmd";
const BEAM_NEEDLE: &str = "beam";
/// Measured on a 2-core VM: about 7 s to start, 3 s to stop. Generous, as CI machines are slow.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RabbitError {
    #[error(
        "rabbitmq-server is not installed (looked for {DEBIAN_SERVER} and rabbitmq-server in PATH). \
         Install it with `scripts/install-deps` or `apt-get install rabbitmq-server`, \
         point [bus] url at an external broker, or use the in-process bus (`--bus local`)."
    )]
    NotInstalled,
    #[error(
        "epmd (Erlang's port mapper) is not installed; it comes with rabbitmq-server's \
         dependency erlang-base: `apt-get install erlang-base`"
    )]
    NoEpmd,
    #[error(
        "port {port} on 127.0.0.1 is already in use, so the private RabbitMQ cannot listen there. \
         Another broker may be running (`systemctl stop rabbitmq-server`), or choose another \
         port with `[bus] port` in {config}."
    )]
    PortInUse { port: u16, config: PathBuf },
    #[error(
        "the broker password in {file} must be letters and digits only; delete that line and rerun `novabox init`"
    )]
    BadPassword { file: PathBuf },
    #[error("cannot {what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("rabbitmq-server exited during start-up ({status}). Last lines of {log}:\n{tail}")]
    Exited { status: String, log: PathBuf, tail: String },
    #[error(
        "rabbitmq-server did not answer AMQP on 127.0.0.1:{port} within {}s (last error: {last}). \
         See {log}; it has been stopped.",
        waited.as_secs()
    )]
    NotReady { port: u16, waited: Duration, last: String, log: PathBuf },
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RabbitError {
    let what = what.into();
    move |source| RabbitError::Io { what, source }
}

/// A broker novabox can talk to.
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    /// `amqp://user:password@127.0.0.1:port/%2f`; contains the password, do not print it.
    pub url: String,
    /// The broker's process group leader; `None` for an external broker.
    pub pid: Option<i32>,
    /// True when this call started it (false when it was running already, or external).
    pub started: bool,
    /// How long start-up took, when this call started it.
    pub startup: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerStatus {
    /// `[bus] url` names a broker novabox does not manage.
    External,
    Running {
        pid: i32,
        port: u16,
        node: String,
        log_dir: PathBuf,
    },
    Stopped,
}

/// What `run/rabbitmq.json` records about the running broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    port: u16,
    dist_port: u16,
    epmd_port: u16,
    node: String,
}

/// The broker supervisor. Stateless: everything it knows is in the home.
pub struct RabbitMq;

impl RabbitMq {
    /// Returns a broker for this home: the external one when `[bus] url` is set, the private
    /// one when it is running already, or a newly started private one once it answers AMQP.
    pub async fn ensure_running(home: &Home, config: &Config, secrets: &Secrets) -> Result<BrokerHandle, RabbitError> {
        if let Some(url) = &config.bus.url {
            return Ok(BrokerHandle { url: url.clone(), pid: None, started: false, startup: None });
        }
        let paths = Paths::new(home);
        // Two processes of one home (`up` and `service compute`) must not both start one.
        let lock_file = paths.lock_file.clone();
        let _lock = tokio::task::spawn_blocking(move || HomeLock::acquire(&lock_file))
            .await
            .map_err(|e| RabbitError::Io { what: "wait for the broker lock".into(), source: io::Error::other(e) })??;
        let url = amqp_url(&secrets.rabbit_password, config.bus.port);
        if let Some(pid) = super::running_pid(&paths.pid_file, SERVER_NEEDLE)? {
            let state = read_state(&paths.state_file);
            if state.as_ref().is_some_and(|s| s.port == config.bus.port) {
                wait_ready(&url, config.bus.port, Some(pid), START_TIMEOUT, &paths).await?;
                return Ok(BrokerHandle { url, pid: Some(pid), started: false, startup: None });
            }
            // Running with another port than the config now says: restart it on the new one.
            tracing::info!(pid, "the private RabbitMQ listens on another port than [bus] port; restarting it");
            stop_unlocked(&paths)?;
        }
        let started = Instant::now();
        let pid = start(home, config, secrets, &paths)?;
        if let Err(e) = wait_ready(&url, config.bus.port, Some(pid), START_TIMEOUT, &paths).await {
            let _ = stop_unlocked(&paths);
            return Err(e);
        }
        let startup = started.elapsed();
        tracing::info!(pid, port = config.bus.port, "private RabbitMQ ready in {:.1}s", startup.as_secs_f64());
        Ok(BrokerHandle { url, pid: Some(pid), started: true, startup: Some(startup) })
    }

    /// Stops the private broker and its epmd by pid (SIGTERM, then SIGKILL after a timeout).
    /// Blocking; safe to call when nothing runs.
    pub fn stop(home: &Home) -> Result<Stopped, RabbitError> {
        let paths = Paths::new(home);
        let _lock = HomeLock::acquire(&paths.lock_file)?;
        stop_unlocked(&paths)
    }

    pub fn status(home: &Home, config: &Config) -> Result<BrokerStatus, RabbitError> {
        if config.bus.url.is_some() {
            return Ok(BrokerStatus::External);
        }
        let paths = Paths::new(home);
        let Some(pid) = super::running_pid(&paths.pid_file, SERVER_NEEDLE)? else {
            return Ok(BrokerStatus::Stopped);
        };
        let state = read_state(&paths.state_file);
        Ok(BrokerStatus::Running {
            pid,
            port: state.as_ref().map_or(config.bus.port, |s| s.port),
            node: state.map_or_else(|| node_name(home), |s| s.node),
            log_dir: paths.log_dir,
        })
    }

    /// Where the broker of `home` writes its logs.
    pub fn log_dir(home: &Home) -> PathBuf {
        Paths::new(home).log_dir
    }
}

fn stop_unlocked(paths: &Paths) -> Result<Stopped, RabbitError> {
    let outcome = super::stop_pid_file(&paths.pid_file, SERVER_NEEDLE, STOP_TIMEOUT)?;
    // Normally gone with its process group; an orphaned VM is not.
    super::stop_pid_file(&paths.beam_pid_file, BEAM_NEEDLE, STOP_TIMEOUT)?;
    super::stop_pid_file(&paths.epmd_pid_file, EPMD_NEEDLE, Duration::from_secs(5))?;
    let _ = std::fs::remove_file(&paths.state_file);
    Ok(outcome)
}

/// An exclusive `flock` on `run/rabbitmq.lock`, held while the broker of a home is started or
/// stopped; released when dropped (or when the process dies).
struct HomeLock {
    _file: std::fs::File,
}

impl HomeLock {
    fn acquire(path: &Path) -> Result<HomeLock, RabbitError> {
        use std::os::fd::AsRawFd;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(format!("open {}", path.display())))?;
        // SAFETY: flock on a descriptor we own; blocks until the other holder is done.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(RabbitError::Io { what: format!("lock {}", path.display()), source: e });
            }
        }
        Ok(HomeLock { _file: file })
    }
}

struct Paths {
    base: PathBuf,
    mnesia: PathBuf,
    log_dir: PathBuf,
    startup_log: PathBuf,
    pid_file: PathBuf,
    epmd_pid_file: PathBuf,
    beam_pid_file: PathBuf,
    state_file: PathBuf,
    lock_file: PathBuf,
}

impl Paths {
    fn new(home: &Home) -> Paths {
        let base = home.root().join("rabbitmq");
        let log_dir = home.logs_dir().join("rabbitmq");
        Paths {
            mnesia: base.join("mnesia"),
            startup_log: log_dir.join("startup.log"),
            pid_file: home.run_dir().join("rabbitmq.pid"),
            epmd_pid_file: home.run_dir().join("rabbitmq-epmd.pid"),
            beam_pid_file: home.run_dir().join("rabbitmq-beam.pid"),
            state_file: home.run_dir().join("rabbitmq.json"),
            lock_file: home.run_dir().join("rabbitmq.lock"),
            base,
            log_dir,
        }
    }
}

fn amqp_url(password: &str, port: u16) -> String {
    format!("amqp://{BROKER_USER}:{password}@127.0.0.1:{port}/%2f")
}

/// A node name unique to the home, so two homes never share mnesia or a cookie by accident.
fn node_name(home: &Home) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(home.root().as_os_str().as_encoded_bytes());
    format!("novabox-{}@localhost", hex::encode(&digest[..4]))
}

fn read_state(file: &Path) -> Option<RunState> {
    serde_json::from_slice(&std::fs::read(file).ok()?).ok()
}

/// True when a rabbitmq-server novabox can start is installed.
pub fn is_installed() -> bool {
    find_server().is_ok()
}

fn find_server() -> Result<PathBuf, RabbitError> {
    if Path::new(DEBIAN_SERVER).is_file() {
        return Ok(PathBuf::from(DEBIAN_SERVER));
    }
    which::which("rabbitmq-server").map_err(|_| RabbitError::NotInstalled)
}

fn find_epmd() -> Result<PathBuf, RabbitError> {
    which::which("epmd").or_else(|_| {
        let p = PathBuf::from("/usr/lib/erlang/bin/epmd");
        if p.is_file() {
            Ok(p)
        } else {
            Err(RabbitError::NoEpmd)
        }
    })
}

/// Writes the broker's files, starts epmd and then rabbitmq-server; returns the broker's pid
/// without waiting for it.
fn start(home: &Home, config: &Config, secrets: &Secrets, paths: &Paths) -> Result<i32, RabbitError> {
    let server = find_server()?;
    let epmd = find_epmd()?;
    let port = config.bus.port;
    // When only the wrapper script was killed, the Erlang VM it started lives on, orphaned,
    // and holds the port: stop it by the pid it wrote.
    super::stop_pid_file(&paths.beam_pid_file, BEAM_NEEDLE, STOP_TIMEOUT)?;
    if !super::port_is_free(port) {
        return Err(RabbitError::PortInUse { port, config: home.config_file() });
    }
    if secrets.rabbit_password.is_empty() || !secrets.rabbit_password.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(RabbitError::BadPassword { file: home.secrets_file() });
    }
    // An epmd left by a crashed run would hold nothing of ours; stop it before choosing ports.
    super::stop_pid_file(&paths.epmd_pid_file, EPMD_NEEDLE, Duration::from_secs(5))?;

    for dir in [&paths.base, &paths.mnesia, &paths.log_dir, &home.run_dir()] {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    let conf = paths.base.join("rabbitmq.conf");
    let text = TEMPLATE
        .replace("{port}", &port.to_string())
        .replace("{user}", BROKER_USER)
        .replace("{password}", &secrets.rabbit_password);
    crate::home::write_atomic(&conf, text.as_bytes(), 0o600).map_err(io_err(format!("write {}", conf.display())))?;
    let plugins = paths.base.join("enabled_plugins");
    crate::home::write_atomic(&plugins, b"[].\n", 0o600).map_err(io_err(format!("write {}", plugins.display())))?;
    let env_file = paths.base.join("rabbitmq-env.conf");
    crate::home::write_atomic(
        &env_file,
        b"# intentionally empty: novabox passes everything in the environment\n",
        0o600,
    )
    .map_err(io_err(format!("write {}", env_file.display())))?;
    // Erlang refuses a cookie file others can read.
    let cookie = paths.base.join(".erlang.cookie");
    crate::home::write_atomic(&cookie, secrets.erlang_cookie.as_bytes(), 0o400)
        .map_err(io_err(format!("write {}", cookie.display())))?;

    let epmd_port = super::free_port().map_err(io_err("find a free port for epmd"))?;
    let dist_port = loop {
        let p = super::free_port().map_err(io_err("find a free port for Erlang distribution"))?;
        if p != epmd_port && p != port {
            break p;
        }
    };
    let node = node_name(home);

    let epmd_log = open_log(&paths.log_dir.join("epmd.log"))?;
    let epmd_child = Command::new(&epmd)
        .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(epmd_log.try_clone().map_err(io_err("duplicate a log handle"))?)
        .stderr(epmd_log)
        .process_group(0)
        .spawn()
        .map_err(io_err(format!("start {}", epmd.display())))?;
    super::write_pid_file(&paths.epmd_pid_file, epmd_child.id())?;
    // If rabbit finds no epmd on its port it starts a daemonized one we could not stop.
    wait_port(epmd_port, Duration::from_secs(10)).map_err(|_| RabbitError::Io {
        what: format!("start epmd on port {epmd_port}"),
        source: io::ErrorKind::TimedOut.into(),
    })?;

    let log = open_log(&paths.startup_log)?;
    let base = &paths.base;
    let mut cmd = Command::new(&server);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .env("HOME", base)
        .env("RABBITMQ_CONF_ENV_FILE", &env_file)
        .env("RABBITMQ_CONFIG_FILE", &conf)
        .env("RABBITMQ_ADVANCED_CONFIG_FILE", base.join("advanced.config"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
        .env("RABBITMQ_NODENAME", &node)
        .env("RABBITMQ_USE_LONGNAME", "false")
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("RABBITMQ_MNESIA_BASE", &paths.mnesia)
        .env("RABBITMQ_LOG_BASE", &paths.log_dir)
        .env("RABBITMQ_PID_FILE", &paths.beam_pid_file)
        // Distribution (used only by rabbitmqctl) listens on loopback, not on every interface.
        .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
        .env("ERL_EPMD_PORT", epmd_port.to_string())
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .current_dir(base)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io_err("duplicate a log handle"))?)
        .stderr(log)
        .process_group(0);
    let child = cmd.spawn().map_err(io_err(format!("start {}", server.display())))?;
    let pid = child.id();
    super::write_pid_file(&paths.pid_file, pid)?;
    let state = RunState { port, dist_port, epmd_port, node };
    let json = serde_json::to_vec_pretty(&state).map_err(|e| io_err("encode broker state")(io::Error::other(e)))?;
    crate::home::write_atomic(&paths.state_file, &json, 0o600)
        .map_err(io_err(format!("write {}", paths.state_file.display())))?;
    tracing::info!(pid, port, node = %state.node, "started the private RabbitMQ");
    Ok(pid as i32)
}

fn open_log(path: &Path) -> Result<std::fs::File, RabbitError> {
    std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io_err(format!("open {}", path.display())))
}

fn wait_port(port: u16, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Polls until an AMQP handshake with our credentials succeeds; fails early when the broker
/// process exits.
async fn wait_ready(
    url: &str,
    port: u16,
    pid: Option<i32>,
    timeout: Duration,
    paths: &Paths,
) -> Result<(), RabbitError> {
    let started = Instant::now();
    let mut last = String::from("no answer yet");
    loop {
        if let Some(pid) = pid {
            if !super::is_alive(pid) {
                return Err(RabbitError::Exited {
                    status: "see the log".into(),
                    log: paths.startup_log.clone(),
                    tail: log_tail(&paths.startup_log, 20),
                });
            }
        }
        // Only try the handshake once the port is open: a refused TCP connect is cheap.
        if std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok() {
            let attempt = tokio::time::timeout(
                Duration::from_secs(5),
                lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
            )
            .await;
            match attempt {
                Ok(Ok(conn)) => {
                    let _ = conn.close(200, "readiness probe".into()).await;
                    return Ok(());
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "AMQP handshake timed out".into(),
            }
        }
        if started.elapsed() >= timeout {
            return Err(RabbitError::NotReady { port, waited: timeout, last, log: paths.startup_log.clone() });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_differ_per_home() {
        let a = node_name(&Home::at(Path::new("/tmp/a")));
        let b = node_name(&Home::at(Path::new("/tmp/b")));
        assert_ne!(a, b);
        assert!(a.starts_with("novabox-") && a.ends_with("@localhost"), "{a}");
    }

    #[test]
    fn template_fills_every_placeholder() {
        let text = TEMPLATE.replace("{port}", "1").replace("{user}", "u").replace("{password}", "p");
        assert!(!text.contains('{'), "{text}");
        assert!(text.contains("listeners.tcp.1 = 127.0.0.1:1"));
    }

    #[tokio::test]
    async fn port_in_use_is_reported_before_anything_starts() {
        if find_server().is_err() {
            eprintln!("rabbitmq-server not installed; skipping");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path());
        home.create_dirs().unwrap();
        let hold = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = Config::default();
        config.bus.port = hold.local_addr().unwrap().port();
        let err = RabbitMq::ensure_running(&home, &config, &Secrets::generate()).await.unwrap_err();
        assert!(matches!(err, RabbitError::PortInUse { .. }), "{err}");
        assert!(err.to_string().contains("[bus] port"), "{err}");
        assert_eq!(RabbitMq::status(&home, &config).unwrap(), BrokerStatus::Stopped);
    }

    /// Stops the broker of a test home even when the test fails.
    struct StopOnDrop(Home);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            let _ = RabbitMq::stop(&self.0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lifecycle_start_reuse_recover_orphan_stop() {
        if !is_installed() {
            assert!(
                std::env::var_os("NOVABOX_SKIP_RABBITMQ").is_some_and(|v| v == "1"),
                "this test needs rabbitmq-server (scripts/install-deps); set NOVABOX_SKIP_RABBITMQ=1 to skip it"
            );
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path());
        home.create_dirs().unwrap();
        let _guard = StopOnDrop(home.clone());
        let mut config = Config::default();
        config.bus.port = super::super::free_port().unwrap();
        let secrets = Secrets::generate();

        // Two at once (say `up` and `service compute`): one starts it, the other reuses it.
        let (a, b) = tokio::join!(
            RabbitMq::ensure_running(&home, &config, &secrets),
            RabbitMq::ensure_running(&home, &config, &secrets)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.started != b.started, "started twice or not at all");
        assert_eq!(a.pid, b.pid);
        let first = if a.started { a } else { b };
        let pid = first.pid.unwrap();
        assert!(first.url.contains(&format!("novabox:{}@127.0.0.1:{}", secrets.rabbit_password, config.bus.port)));
        let BrokerStatus::Running { pid: spid, port, .. } = RabbitMq::status(&home, &config).unwrap() else {
            panic!("not running")
        };
        assert_eq!((spid, port), (pid, config.bus.port));
        // Everything lives in the home.
        assert!(t.path().join("rabbitmq/mnesia").read_dir().unwrap().next().is_some());
        assert!(t.path().join("logs/rabbitmq/startup.log").is_file());
        use std::os::unix::fs::PermissionsExt;
        let cookie = std::fs::metadata(t.path().join("rabbitmq/.erlang.cookie")).unwrap();
        assert_eq!(cookie.permissions().mode() & 0o777, 0o400);
        // No guest user.
        let guest = format!("amqp://guest:guest@127.0.0.1:{}/%2f", config.bus.port);
        assert!(lapin::Connection::connect(&guest, lapin::ConnectionProperties::default()).await.is_err());

        let again = RabbitMq::ensure_running(&home, &config, &secrets).await.unwrap();
        assert!(!again.started);
        assert_eq!(again.pid, Some(pid));

        // Kill only the wrapper script: the VM lives on, orphaned, holding the port. The next
        // start must clean that up instead of failing with "port in use".
        // SAFETY: pid is the broker's wrapper script, started by this test.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        while super::super::is_alive(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!super::super::port_is_free(config.bus.port), "the VM should still hold the port");
        let third = RabbitMq::ensure_running(&home, &config, &secrets).await.unwrap();
        assert!(third.started);

        assert_eq!(RabbitMq::stop(&home).unwrap(), Stopped::Gracefully);
        assert_eq!(RabbitMq::status(&home, &config).unwrap(), BrokerStatus::Stopped);
        assert!(super::super::port_is_free(config.bus.port));
        for f in ["rabbitmq.pid", "rabbitmq-epmd.pid", "rabbitmq-beam.pid", "rabbitmq.json"] {
            assert!(!home.run_dir().join(f).exists(), "{f} left behind");
        }
    }

    #[test]
    fn external_url_is_used_as_is() {
        let mut config = Config::default();
        config.bus.url = Some("amqp://u:p@10.0.0.1:5672/%2f".into());
        let home = Home::at(Path::new("/nonexistent"));
        assert_eq!(RabbitMq::status(&home, &config).unwrap(), BrokerStatus::External);
    }
}
