//! Command-line interface: one file per subcommand. `anyhow` lives here and nowhere else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use novabox::client::Resource;

pub mod bench;
pub mod bench_boot;
pub mod bench_fip;
pub mod bench_guest;
pub mod bench_logins;
pub mod bench_up;
pub mod clock;
pub mod config;
pub mod console;
pub mod doctor;
pub mod events;
pub mod fault;
pub mod image;
pub mod image_build;
pub mod init;
pub mod logging;
pub mod logs;
pub mod resources;
pub mod server;
pub mod smoke;
pub mod ssh;
pub mod status;
pub mod trace;
pub mod up;

/// Generic failure: the message printed says what went wrong and what to do.
pub const EXIT_FAILURE: u8 = 1;
/// `novabox doctor`: the checks ran and at least one is FAIL.
pub const EXIT_CHECKS_FAILED: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "novabox", version, about = "A single-host OpenStack-style compute cloud", propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// State directory [default: ~/.local/share/novabox, or /var/lib/novabox for root]
    #[arg(long, global = true, env = "NOVABOX_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Log every SQL statement with its duration
    #[arg(long, global = true)]
    pub sql_echo: bool,
    /// More log output (-v info, -vv debug, -vvv trace); NOVABOX_LOG takes a full filter
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check whether this host can run guests (KVM or TCG) and print the fix when not
    Doctor(doctor::DoctorArgs),
    /// Create or update the state directory, config, database, users and clouds.yaml
    Init(init::InitArgs),
    /// Show the effective configuration
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Start the cloud: broker, conductor, scheduler, compute and the API
    Up(up::UpArgs),
    /// Stop what `up` started for this home
    Down(up::DownArgs),
    /// Services, heartbeats, endpoints, guests and disk use of this home (running or not)
    Status(status::StatusArgs),
    /// The stack's log, by service and by request id
    Logs(logs::LogsArgs),
    /// The compute.instance.* notifications, as they are published
    Events(events::EventsArgs),
    /// The boot of a server (or any request) as a numbered tree across services
    Trace(trace::TraceArgs),
    /// Boot, check and delete one server; non-zero with the failing step when one fails
    Smoke(smoke::SmokeArgs),
    /// Run one service alone (it joins the others over RabbitMQ)
    Service(up::ServiceArgs),
    /// Create, list, show, delete servers and read their console
    Server(server::ServerArgs),
    /// Attach to a server's serial console (detach with Ctrl-])
    Console(console::ConsoleArgs),
    /// Images: `image list`, `image show IMAGE`, `image import FILE|URL`
    Image(image::ImageArgs),
    /// Flavors, read-only: `flavor list`, `flavor show FLAVOR`
    #[command(subcommand)]
    Flavor(resources::ReadCommand),
    /// Networks, read-only: `network list`, `network show NETWORK`
    #[command(subcommand)]
    Network(resources::ReadCommand),
    /// Keypairs: `keypair list`, `keypair show NAME`, `keypair create NAME`
    #[command(subcommand)]
    Keypair(ssh::KeypairCommand),
    /// Log in to a server with its keypair: `ssh SERVER [-- CMD]`
    Ssh(ssh::SshArgs),
    /// Volumes, read-only: `volume list`, `volume show VOLUME`
    #[command(subcommand)]
    Volume(resources::ReadCommand),
    /// Inject failures into the running stack (admin; `up --faults`): `fault add|list|show|rm|clear`
    Fault(fault::FaultArgs),
    /// The running stack's test clock (admin; `up --faults`): `clock show|advance SECONDS|reset`
    Clock(clock::ClockArgs),
    /// Measure novabox: `bench bus`, `bench boot`, `bench guest`, `bench up`, `bench logins`, `bench fip`
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Doctor(args) => doctor::run(&cli.global, args),
        Command::Init(args) => init::run(&cli.global, args),
        Command::Config(cmd) => config::run(&cli.global, cmd),
        Command::Up(args) => up::up(&cli.global, args),
        Command::Down(args) => up::down(&cli.global, args),
        Command::Status(args) => status::run(&cli.global, args),
        Command::Logs(args) => logs::run(&cli.global, args),
        Command::Events(args) => events::run(&cli.global, args),
        Command::Smoke(args) => smoke::run(&cli.global, args),
        Command::Trace(args) => trace::run(&cli.global, args),
        Command::Service(args) => up::service(&cli.global, args),
        Command::Server(args) => server::run(&cli.global, args),
        Command::Console(args) => console::run(&cli.global, args),
        Command::Image(args) => image::run(&cli.global, args),
        Command::Flavor(cmd) => resources::run(&cli.global, Resource::Flavor, cmd),
        Command::Network(cmd) => resources::run(&cli.global, Resource::Network, cmd),
        Command::Keypair(cmd) => ssh::keypair(&cli.global, cmd),
        Command::Ssh(args) => ssh::run(&cli.global, args),
        Command::Volume(cmd) => resources::run(&cli.global, Resource::Volume, cmd),
        Command::Bench(cmd) => bench::run(&cli.global, cmd),
        Command::Fault(args) => fault::run(&cli.global, args),
        Command::Clock(args) => clock::run(&cli.global, args),
    }
}

/// The home named by the global flags.
pub fn home(global: &GlobalArgs) -> anyhow::Result<novabox::home::Home> {
    Ok(novabox::home::Home::resolve(global.home.as_deref())?)
}

/// The home's config, or the defaults before `init` has written one.
pub fn load_config(home: &novabox::home::Home) -> anyhow::Result<novabox::config::Config> {
    if home.is_initialized() {
        Ok(novabox::config::Config::load(&home.config_file())?)
    } else {
        Ok(novabox::config::Config::default())
    }
}
