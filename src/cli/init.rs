//! `novabox init`: state dir, config, database, users and projects, flavors, clouds.yaml and
//! host packages. Safe to run again: nothing stored is lost, passwords are kept.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use dialoguer::{Confirm, Input, Select};

use novabox::bootstrap;
use novabox::cidr::Ipv4Cidr;
use novabox::clouds_yaml;
use novabox::config::{Accel, BusKind, Config, Driver, NetworkMode};
use novabox::doctor;
use novabox::hostpkgs;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Accept every default and consent to installing host packages; never prompt
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Rewrite the config from defaults and these flags (the database and images are kept)
    #[arg(long)]
    pub force: bool,
    /// Do not install missing host packages, only list them
    #[arg(long)]
    pub no_install: bool,
    /// API port (all services share one listener)
    #[arg(long, value_name = "PORT")]
    pub api_port: Option<u16>,
    /// Port of the private RabbitMQ
    #[arg(long, value_name = "PORT")]
    pub bus_port: Option<u16>,
    /// Message bus: auto (RabbitMQ when installed), rabbitmq, local
    #[arg(long, value_enum)]
    pub bus: Option<BusArg>,
    /// Virt driver: auto (qemu when installed), fake, qemu, libvirt
    #[arg(long, value_enum)]
    pub driver: Option<DriverArg>,
    /// Accelerator: auto (KVM when a probe guest boots under it), kvm, tcg
    #[arg(long, value_enum)]
    pub accel: Option<AccelArg>,
    /// Guest networking: auto (bridge when permitted), bridge, user
    #[arg(long, value_enum)]
    pub network_mode: Option<NetworkModeArg>,
    /// Bridge of the default network
    #[arg(long, value_name = "NAME")]
    pub bridge: Option<String>,
    /// CIDR of the default network
    #[arg(long, value_name = "CIDR")]
    pub cidr: Option<String>,
    /// Where to write the client config [default: ~/.config/openstack/clouds.yaml]
    #[arg(long, value_name = "PATH", env = "OS_CLIENT_CONFIG_FILE")]
    pub clouds_yaml: Option<PathBuf>,
    /// Name of the cloud entry (an admin entry NAME-admin is written too)
    #[arg(long, value_name = "NAME", default_value = "novabox")]
    pub cloud_name: String,
    /// Do not write clouds.yaml
    #[arg(long)]
    pub no_clouds_yaml: bool,
    /// Do not boot the test guest to choose between KVM and TCG (the choice is then unproven)
    #[arg(long)]
    pub no_boot_probe: bool,
    /// `up` on a new home: the doctor (with its probe boot) and the test guest's build and
    /// import are left to the stack's first start, which does them while the broker starts
    /// instead of before it.
    #[arg(skip)]
    pub doctor_in_up: bool,
    /// The per-user cache of built test guests [default: NOVABOX_CACHE_DIR, else
    /// ~/.cache/novabox]; `bench up --new-home` points it at a throwaway one.
    #[arg(skip)]
    pub cache_dir: Option<PathBuf>,
}

macro_rules! value_enum_mirror {
    ($arg:ident => $target:ty { $($variant:ident),+ }) => {
        #[derive(Debug, Clone, Copy, clap::ValueEnum)]
        pub enum $arg { $($variant),+ }
        impl From<$arg> for $target {
            fn from(a: $arg) -> $target {
                match a { $($arg::$variant => <$target>::$variant),+ }
            }
        }
    };
}
value_enum_mirror!(BusArg => BusKind { Auto, Rabbitmq, Local });
value_enum_mirror!(DriverArg => Driver { Auto, Fake, Qemu, Libvirt });
value_enum_mirror!(AccelArg => Accel { Auto, Kvm, Tcg });
value_enum_mirror!(NetworkModeArg => NetworkMode { Auto, Bridge, User });

impl InitArgs {
    /// What `up` uses to initialize a new home: defaults, no prompts, and package installs
    /// only with the user's `--yes`. The doctor runs in `up`'s own doctor phase, beside the
    /// broker's start, except for a fake-driver run that has no use for the probe boot.
    pub fn for_up(yes: bool, fake: bool) -> InitArgs {
        InitArgs {
            yes,
            no_boot_probe: fake,
            doctor_in_up: !fake,
            force: false,
            no_install: !yes,
            api_port: None,
            bus_port: None,
            bus: None,
            driver: None,
            accel: None,
            network_mode: None,
            bridge: None,
            cidr: None,
            clouds_yaml: std::env::var_os("OS_CLIENT_CONFIG_FILE").map(PathBuf::from),
            cloud_name: "novabox".into(),
            no_clouds_yaml: false,
            cache_dir: None,
        }
    }

    /// Applies the flags that were given to `config`.
    fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        if let Some(p) = self.api_port {
            config.api.port = p;
        }
        if let Some(p) = self.bus_port {
            config.bus.port = p;
        }
        if let Some(b) = self.bus {
            config.bus.kind = b.into();
        }
        if let Some(d) = self.driver {
            config.compute.driver = d.into();
        }
        if let Some(a) = self.accel {
            config.compute.accel = a.into();
        }
        if let Some(m) = self.network_mode {
            config.network.mode = m.into();
        }
        if let Some(b) = &self.bridge {
            config.network.bridge = b.clone();
        }
        if let Some(c) = &self.cidr {
            config.network.cidr = c.parse::<Ipv4Cidr>().with_context(|| format!("--cidr {c}"))?;
        }
        Ok(())
    }
}

pub fn run(global: &GlobalArgs, args: InitArgs) -> anyhow::Result<ExitCode> {
    let home = super::home(global)?;
    let interactive = !args.yes && std::io::stdin().is_terminal() && std::io::stderr().is_terminal();

    // 1. Decide the config, refusing bad input before anything is written.
    let existing = if home.is_initialized() { Some(Config::load(&home.config_file())?) } else { None };
    let (config, write_config) = match (&existing, args.force) {
        (Some(current), false) => {
            let mut wanted = current.clone();
            args.apply(&mut wanted)?;
            if &wanted != current {
                bail!(
                    "{} already exists and differs from the flags given. Nothing was changed. \
                     Edit the file, or run `novabox init --force` with the flags to rewrite it \
                     (the database, passwords and images are kept).",
                    home.config_file().display()
                );
            }
            (wanted, false)
        }
        _ => {
            let mut config = Config::default();
            args.apply(&mut config)?;
            if interactive {
                ask(&mut config)?;
            }
            (config, true)
        }
    };
    config.validate(&home.config_file())?;
    if write_config {
        bootstrap::check_port_free(&config)?;
    }

    // 2. The state dir, database, users, projects, roles, flavors and the shared network.
    let made = bootstrap::provision(&home, &config, write_config, global.sql_echo)?;
    for user in &made.passwords_reset {
        eprintln!("warning: {} was missing; the {user} password was reset", home.secrets_file().display());
    }

    // 3. clouds.yaml for standard clients.
    let clouds_file = if args.no_clouds_yaml {
        None
    } else {
        match args.clouds_yaml.clone().or_else(clouds_yaml::default_path) {
            Some(f) => {
                bootstrap::write_clouds_yaml(&f, &args.cloud_name, &config, &made.secrets)?;
                Some(f)
            }
            None => {
                eprintln!("warning: no HOME to put clouds.yaml in; pass --clouds-yaml PATH");
                None
            }
        }
    };

    // 4. Host packages.
    let missing = hostpkgs::missing(&hostpkgs::requirements(&config));
    if !missing.is_empty() {
        eprintln!("Host packages this setup needs but does not have:");
        for r in &missing {
            eprintln!("  {:<18} for {} ({})", r.package, r.needed_for, r.program);
        }
        let names = hostpkgs::package_names(&missing);
        let consent = if args.no_install {
            false
        } else if args.yes {
            true
        } else if interactive {
            Confirm::new()
                .with_prompt(format!("Install them now with apt-get ({})?", names.join(" ")))
                .default(true)
                .interact()?
        } else {
            false
        };
        if consent {
            hostpkgs::apt_install(&names)?;
        } else {
            eprintln!(
                "Skipped. Install later with `apt-get install {}`; until then novabox falls back \
                 where it can (local bus, fake driver, user networking).",
                names.join(" ")
            );
        }
    }

    // 5. What this host can run; `auto` accel, driver and network come from this report.
    if args.doctor_in_up {
        eprintln!("doctor: the stack decides KVM or TCG while its message broker starts");
    } else {
        let probe = !args.no_boot_probe && config.compute.driver != Driver::Fake;
        if probe {
            eprintln!("doctor: booting the test guest to choose between KVM and TCG (--no-boot-probe skips this)...");
        }
        let report = bootstrap::doctor(&home, &config, probe)?;
        super::doctor::print_summary(&report);
        println!("doctor report  {} (novabox doctor for every check)", home.root().join(doctor::REPORT_FILE).display());
    }

    // 6. The test guest as image `tiny`, when this cloud can boot real guests.
    let cache = args.cache_dir.clone().or_else(novabox::home::user_cache_dir);
    let test_image = if args.doctor_in_up {
        if bootstrap::defer_test_image(&home, &config)? {
            println!(
                "image          {} (the test guest, imported while the stack starts)",
                novabox::images::TEST_IMAGE_NAME
            );
        }
        None
    } else {
        bootstrap::test_image(&made.db, &home, &config, cache.as_deref()).unwrap_or_else(|e| {
            eprintln!("warning: {e}. Servers need an image: upload one, or fix this and run `novabox init` again.");
            None
        })
    };

    println!("novabox home   {}", home.root().display());
    println!("config         {}{}", home.config_file().display(), if write_config { "" } else { " (kept)" });
    println!("database       {} (schema v{})", home.db_file().display(), made.schema_version);
    println!("flavors        {} added", made.flavors_added);
    println!("network        {} ({}, shared)", made.network, config.network.cidr);
    println!("credentials    {} (admin and demo passwords)", home.secrets_file().display());
    if let Some(t) = &test_image {
        println!(
            "image          {} {} (test guest: kernel {}, ramdisk {})",
            t.ami.id,
            novabox::images::TEST_IMAGE_NAME,
            t.kernel.id,
            t.ramdisk.id
        );
    }
    if let Some(f) = clouds_file {
        println!("clouds.yaml    {} (clouds `{}` and `{}-admin`)", f.display(), args.cloud_name, args.cloud_name);
    }
    println!("auth url       {}", config.auth_url());
    Ok(ExitCode::SUCCESS)
}

fn ask(config: &mut Config) -> anyhow::Result<()> {
    config.api.port = Input::new().with_prompt("API port").default(config.api.port).interact_text()?;
    let bus = [BusKind::Auto, BusKind::Rabbitmq, BusKind::Local];
    let i = Select::new()
        .with_prompt("Message bus")
        .items(&["auto (RabbitMQ when installed)", "rabbitmq", "local (in-process)"])
        .default(bus.iter().position(|b| *b == config.bus.kind).unwrap_or(0))
        .interact()?;
    config.bus.kind = bus[i];
    let drivers = [Driver::Auto, Driver::Qemu, Driver::Libvirt, Driver::Fake];
    let i = Select::new()
        .with_prompt("Virt driver")
        .items(&["auto (qemu when installed)", "qemu", "libvirt", "fake (no real guests)"])
        .default(drivers.iter().position(|d| *d == config.compute.driver).unwrap_or(0))
        .interact()?;
    config.compute.driver = drivers[i];
    let modes = [NetworkMode::Auto, NetworkMode::Bridge, NetworkMode::User];
    let i = Select::new()
        .with_prompt("Guest networking")
        .items(&["auto (bridge when permitted)", "bridge", "user (no root needed)"])
        .default(modes.iter().position(|m| *m == config.network.mode).unwrap_or(0))
        .interact()?;
    config.network.mode = modes[i];
    Ok(())
}
