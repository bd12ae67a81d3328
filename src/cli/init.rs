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
    /// Make the home look like DevStack to clients: clouds `devstack`, `devstack-admin`,
    /// `devstack-alt`, `devstack-system-admin`, an `openrc`, DevStack's flavors and ids,
    /// network `private` on 10.0.0.0/26 (new homes), the test image on any driver
    #[arg(long)]
    pub devstack: bool,
    /// With --devstack: one password for admin, demo and alt_demo, as DevStack's
    /// ADMIN_PASSWORD (which is read when this flag is absent) [default: the generated ones
    /// in secrets.toml]
    #[arg(long, value_name = "PASSWORD", requires = "devstack")]
    pub admin_password: Option<String>,
    /// Print what was made as one JSON document on stdout (the text goes to stderr)
    #[arg(long)]
    pub json: bool,
    /// `up` on a new home with `--json`: the summary goes to stderr, stdout is the ready line.
    #[arg(skip)]
    pub summary_on_stderr: bool,
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
            devstack: false,
            admin_password: None,
            json: false,
            summary_on_stderr: false,
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
    let interactive = !args.yes && !args.json && std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    // With --json, stdout is the document alone; the text goes to stderr.
    let to_stderr = args.json || args.summary_on_stderr;
    let say = |line: String| if to_stderr { eprintln!("{line}") } else { println!("{line}") };
    let devstack = args.devstack.then(|| novabox::devstack::Options {
        admin_password: args
            .admin_password
            .clone()
            .or_else(|| std::env::var("ADMIN_PASSWORD").ok().filter(|p| !p.is_empty())),
    });

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
            if args.devstack && args.cidr.is_none() {
                // Only a new config: an existing home keeps its network (the summary says so).
                config.network.cidr = novabox::devstack::PRIVATE_CIDR;
            }
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

    // 2. The state dir, database, users, projects, roles, flavors and the shared network, and
    // DevStack's flavors and password with --devstack.
    let made = bootstrap::provision(&home, &config, write_config, global.sql_echo, devstack.as_ref())?;
    for user in &made.passwords_reset {
        eprintln!("warning: {} was missing; the {user} password was reset", home.secrets_file().display());
    }

    // 3. clouds.yaml for standard clients, and DevStack's openrc.
    let clouds_file = if args.no_clouds_yaml {
        None
    } else {
        match args.clouds_yaml.clone().or_else(clouds_yaml::default_path) {
            Some(f) => {
                bootstrap::write_clouds_yaml(&f, &args.cloud_name, &config, &made.secrets)?;
                if devstack.is_some() {
                    novabox::devstack::write_clouds_yaml(&f, &config, &made.secrets)?;
                }
                Some(f)
            }
            None => {
                eprintln!("warning: no HOME to put clouds.yaml in; pass --clouds-yaml PATH");
                None
            }
        }
    };
    let openrc = match devstack {
        Some(_) => Some(novabox::devstack::write_openrc(&home, &config, &made.secrets)?),
        None => None,
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
        if !to_stderr {
            super::doctor::print_summary(&report);
        }
        say(format!(
            "doctor report  {} (novabox doctor for every check)",
            home.root().join(doctor::REPORT_FILE).display()
        ));
    }

    // 6. The test guest as image `tiny`, when this cloud can boot real guests (or --devstack).
    let cache = args.cache_dir.clone().or_else(novabox::home::user_cache_dir);
    let mut image_deferred = false;
    let mut image_error = None;
    let test_image = if args.doctor_in_up {
        if bootstrap::defer_test_image(&home, &config, args.devstack)? {
            image_deferred = true;
            say(format!(
                "image          {} (the test guest, imported while the stack starts)",
                novabox::images::TEST_IMAGE_NAME
            ));
        }
        None
    } else {
        bootstrap::test_image(&made.db, &home, &config, cache.as_deref(), args.devstack).unwrap_or_else(|e| {
            eprintln!("warning: {e}. Servers need an image: upload one, or fix this and run `novabox init` again.");
            image_error = Some(e.to_string());
            None
        })
    };
    // An image made by an earlier run (the import happens only into an empty store).
    let image = match &test_image {
        Some(t) => Some(t.ami.id.clone()),
        None => made
            .db
            .images()?
            .into_iter()
            .find(|i| i.name.as_deref() == Some(novabox::images::TEST_IMAGE_NAME))
            .map(|i| i.id),
    };
    // Why a DevStack home has no test image, for the summary.
    let image_missing = match (&image, image_deferred, image_error) {
        (Some(_), _, _) | (None, true, _) => None,
        (None, false, Some(e)) => Some(e),
        (None, false, None) if !bootstrap::wants_test_image(&config, args.devstack) => {
            Some("no guest boots here, or `[images] import_test_image` is off in novabox.toml".to_string())
        }
        (None, false, None) => {
            Some("the image store already has images; the test image goes only into an empty one".into())
        }
    };

    say(format!("novabox home   {}", home.root().display()));
    say(format!("config         {}{}", home.config_file().display(), if write_config { "" } else { " (kept)" }));
    say(format!("database       {} (schema v{})", home.db_file().display(), made.schema_version));
    say(format!("flavors        {} added", made.flavors_added));
    say(format!("network        {} ({}, shared)", made.network, config.network.cidr));
    say(format!("credentials    {} (admin and demo passwords)", home.secrets_file().display()));
    if let Some(t) = &test_image {
        say(format!(
            "image          {} {} (test guest: kernel {}, ramdisk {})",
            t.ami.id,
            novabox::images::TEST_IMAGE_NAME,
            t.kernel.id,
            t.ramdisk.id
        ));
    }
    let mut clouds = vec![args.cloud_name.clone(), format!("{}-admin", args.cloud_name)];
    if devstack.is_some() {
        clouds.extend(novabox::devstack::CLOUDS.iter().map(|c| c.to_string()));
    }
    if let Some(f) = &clouds_file {
        let names: Vec<String> = clouds.iter().map(|c| format!("`{c}`")).collect();
        say(format!("clouds.yaml    {} (clouds {})", f.display(), names.join(", ")));
    }
    if let Some(ds) = &made.devstack {
        let created = ds.flavors.iter().filter(|f| f.created).count();
        say(format!("devstack       flavors {} ({created} added)", devstack_flavor_list(ds)));
        for n in &ds.networks {
            say(format!("devstack       network {} {} ({} {})", n.name, n.id, n.subnet, n.cidr));
        }
        if let Some(r) = &ds.router {
            say(format!("devstack       router {} {} (private <-> public, project demo)", r.name, r.id));
        }
        if !ds.passwords_set.is_empty() {
            say(format!("devstack       password of {} set from --admin-password", ds.passwords_set.join(", ")));
        }
        for n in &ds.notes {
            say(format!("devstack       note: {n}"));
        }
        for n in &ds.not_created {
            say(format!("not created    {}: {}", n.name, n.reason));
        }
        if let Some(why) = &image_missing {
            say(format!("not created    image {}: {why}", novabox::images::TEST_IMAGE_NAME));
        }
    }
    if let Some(rc) = &openrc {
        say(format!("openrc         {} (source {} [username] [projectname])", rc.display(), rc.display()));
    }
    say(format!("auth url       {}", config.auth_url()));
    if args.json {
        println!(
            "{}",
            summary_json(
                &home,
                &config,
                &made,
                &clouds,
                clouds_file.as_deref(),
                openrc.as_deref(),
                image,
                image_deferred,
                image_missing
            )?
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn devstack_flavor_list(ds: &novabox::devstack::Provisioned) -> String {
    ds.flavors.iter().map(|f| format!("{} {}", f.name, f.id)).collect::<Vec<_>>().join(", ")
}

/// What a CI job needs from `init --json`: where the clouds and the openrc are, the auth URL,
/// the users' and projects' names and ids, and the ids of networks, image and flavors. No
/// password: they are in clouds.yaml, the openrc and secrets.toml, not in a job's log.
#[allow(clippy::too_many_arguments)]
fn summary_json(
    home: &novabox::home::Home,
    config: &Config,
    made: &bootstrap::Provisioned,
    clouds: &[String],
    clouds_file: Option<&std::path::Path>,
    openrc: Option<&std::path::Path>,
    image: Option<String>,
    image_pending: bool,
    image_missing: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    let mut users = serde_json::Map::new();
    for name in novabox::devstack::USERS {
        if let Some(u) = made.db.user_by_name(name)? {
            users.insert(name.into(), serde_json::json!({"id": u.id, "project_name": name}));
        }
    }
    let mut projects = serde_json::Map::new();
    for name in ["admin", "demo", "alt_demo", "service"] {
        if let Some(p) = made.db.project_by_name(name)? {
            projects.insert(name.into(), serde_json::json!({"id": p.id}));
        }
    }
    let flavors: Vec<serde_json::Value> = match &made.devstack {
        Some(ds) => ds.flavors.iter().map(|f| serde_json::json!({"id": f.id, "name": f.name})).collect(),
        None => made.db.flavors()?.into_iter().map(|f| serde_json::json!({"id": f.flavorid, "name": f.name})).collect(),
    };
    let networks: Vec<serde_json::Value> = match &made.devstack {
        Some(ds) => ds.networks.iter().map(serde_json::to_value).collect::<Result<_, _>>()?,
        None => made
            .db
            .network_by_name(&made.network)?
            .map(|n| serde_json::json!({"name": n.name, "id": n.id}))
            .into_iter()
            .collect(),
    };
    let mut not_created: Vec<serde_json::Value> = Vec::new();
    if let Some(ds) = &made.devstack {
        not_created.extend(ds.not_created.iter().map(|n| serde_json::json!({"name": n.name, "reason": n.reason})));
        if let Some(reason) = image_missing {
            not_created.push(
                serde_json::json!({"name": format!("image {}", novabox::images::TEST_IMAGE_NAME), "reason": reason}),
            );
        }
    }
    Ok(serde_json::json!({
        "home": home.root(),
        "devstack": made.devstack.is_some(),
        "auth_url": config.auth_url(),
        "region": config.host.region,
        "identity_api_version": 3,
        "clouds_yaml": clouds_file,
        "clouds": clouds,
        "openrc": openrc,
        "secrets": home.secrets_file(),
        "users": users,
        "projects": projects,
        "networks": networks,
        "router": made.devstack.as_ref().and_then(|d| d.router.as_ref()).map(serde_json::to_value).transpose()?,
        // Pending: `up` imports it while its broker starts; `openstack image show tiny` then.
        "image": image.map(|id| serde_json::json!({"id": id, "name": novabox::images::TEST_IMAGE_NAME})),
        "image_pending": image_pending,
        "flavors": flavors,
        "notes": made.devstack.as_ref().map(|d| d.notes.clone()).unwrap_or_default(),
        "not_created": not_created,
    }))
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
