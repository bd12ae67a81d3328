//! `novabox console NAME|ID`: the guest's serial console (ttyS0) in this terminal, through the
//! socket the qemu driver gives every guest (`instances/<uuid>/console.sock`). Ctrl-] detaches,
//! as with telnet and `virsh console`; the guest keeps running.
//!
//! With a terminal on stdin it runs in raw mode (keys go to the guest as typed, Ctrl-C too) and
//! the terminal is restored on every way out: detach, the guest's qemu going away, an error, a
//! panic, SIGTERM or SIGHUP. Without one (a pipe), stdin is sent as it is, and after its end the
//! guest's output is still printed until it has been quiet for `--linger` seconds, so a script
//! can type a command and read the answer.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use novabox::config::Driver;

use super::GlobalArgs;

/// Ctrl-]: the detach key.
const DETACH: u8 = 0x1d;

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Server name or id
    pub server: String,
    /// Look the server up as the admin user (in the admin project) instead of demo
    #[arg(long)]
    pub admin: bool,
    /// Without a terminal on stdin: after stdin ends, keep printing the guest's output until it
    /// has been quiet this long
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub linger: f64,
}

pub fn run(global: &GlobalArgs, args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    if !(args.linger.is_finite() && args.linger >= 0.0 && args.linger <= 3600.0) {
        bail!("--linger {} is not a number of seconds from 0 to 3600", args.linger);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_async(global, args))
}

async fn run_async(global: &GlobalArgs, args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let home = super::home(global)?;
    let config = super::load_config(&home)?;
    match config.compute.driver {
        Driver::Fake => bail!(
            "this home runs the fake driver, whose guests have no serial console; \
             `novabox init --driver qemu` for real guests"
        ),
        Driver::Libvirt => bail!("this home runs the libvirt driver: use `virsh console <instance id>`"),
        Driver::Auto | Driver::Qemu => {}
    }
    let client = super::server::login(global, args.admin).await?;
    let server = client.find_server(&args.server).await?;
    let id = server["id"].as_str().context("the API answered a server without id")?.to_string();
    let name = server["name"].as_str().unwrap_or(&args.server).to_string();
    let dir = home.instances_dir().join(&id);
    if !dir.join("launch.json").is_file() {
        bail!(
            "server {name} ({id}) has no guest under {}: it is not on this host's qemu driver \
             (status {}, or `novabox up` runs the fake driver)",
            home.instances_dir().display(),
            server["status"].as_str().unwrap_or("?")
        );
    }
    let status = server["status"].as_str().unwrap_or("?");
    if status != "ACTIVE" {
        bail!("server {name} is {status}, its guest is not running: `novabox server start {name}` first");
    }
    // One client at a time (see `claim_serial`): a browser on the websocket proxy included.
    let _claim =
        novabox::compute::virt::qemu::claim_serial(&dir, &format!("novabox console (pid {})", std::process::id()))
            .with_context(|| format!("cannot attach to server {name}"))?;
    let socket = dir.join(novabox::compute::virt::qemu::CONSOLE_SOCKET);
    let stream = match tokio::net::UnixStream::connect(&socket).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            bail!(
                "the guest of server {name} is not running (no qemu behind {}): `novabox server start {name}`",
                socket.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot connect to {}", socket.display())),
    };
    let tty = Terminal::is_tty();
    eprint!(
        "Connected to the serial console of {name} ({id}). Detach with Ctrl-] .{}",
        if tty { "\r\n" } else { "\n" }
    );
    let raw = if tty { Some(Terminal::raw().context("cannot put the terminal in raw mode")?) } else { None };
    let end = relay(stream, tty, Duration::from_secs_f64(args.linger)).await;
    // Back to a cooked terminal before anything else is printed.
    drop(raw);
    match end? {
        End::Detached => eprintln!("\nDetached from {name}; the guest keeps running."),
        End::GuestGone => eprintln!("\nThe console of {name} closed: its qemu stopped."),
        End::InputDone | End::Signal => eprintln!(),
    }
    Ok(ExitCode::SUCCESS)
}

enum End {
    Detached,
    GuestGone,
    InputDone,
    Signal,
}

/// Copies stdin to the guest and the guest to stdout until one of the ways out.
async fn relay(stream: tokio::net::UnixStream, tty: bool, linger: Duration) -> anyhow::Result<End> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut from_guest, mut to_guest) = stream.into_split();
    // stdin on a thread of its own: a blocking read there never holds up the exit.
    let (tx, mut input) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    // Without a tty, Ctrl-C is still a signal: end cleanly rather than die mid-write.
    let mut int = signal(SignalKind::interrupt())?;
    let mut stdout = std::io::stdout();
    let mut buf = vec![0u8; 4096];
    let mut input_open = true;
    loop {
        // Once stdin has ended, only the guest's output counts, until it is quiet.
        let quiet = async {
            if input_open {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(linger).await
            }
        };
        tokio::select! {
            n = from_guest.read(&mut buf) => {
                let n = n.context("reading the console socket")?;
                if n == 0 {
                    return Ok(End::GuestGone);
                }
                stdout.write_all(&buf[..n]).and_then(|_| stdout.flush()).context("writing to stdout")?;
            }
            chunk = input.recv(), if input_open => {
                let Some(chunk) = chunk else {
                    input_open = false;
                    if tty {
                        return Ok(End::InputDone);
                    }
                    continue;
                };
                let (send, detach) = match chunk.iter().position(|b| *b == DETACH) {
                    Some(i) => (&chunk[..i], true),
                    None => (&chunk[..], false),
                };
                if !send.is_empty() {
                    to_guest.write_all(send).await.context("writing to the console socket")?;
                }
                if detach {
                    return Ok(End::Detached);
                }
            }
            _ = quiet => return Ok(End::InputDone),
            _ = term.recv() => return Ok(End::Signal),
            _ = hup.recv() => return Ok(End::Signal),
            _ = int.recv() => return Ok(End::Signal),
        }
    }
}

/// The terminal on stdin in raw mode; the saved settings come back when this is dropped
/// (also while a panic unwinds).
struct Terminal {
    saved: libc::termios,
}

impl Terminal {
    fn is_tty() -> bool {
        // SAFETY: isatty only inspects the descriptor.
        unsafe { libc::isatty(std::io::stdin().as_raw_fd()) == 1 }
    }

    fn raw() -> std::io::Result<Terminal> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it for a valid descriptor.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is stdin, `saved` a valid out-parameter.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the struct in place.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `fd` is stdin and `raw` a complete termios from tcgetattr.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Terminal { saved })
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings tcgetattr returned for the same descriptor.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}
