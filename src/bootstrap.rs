//! What `novabox init` provisions (and `up` on a new home): the state dir and database, the
//! config, identity (users, projects, roles, the admin's system role), flavors, the shared
//! network, clouds.yaml, the doctor's report and the test image. Every step is safe to run
//! again: nothing stored is lost and passwords are kept.
//!
//! The command line decides the config (flags, prompts), asks before installing host
//! packages, and prints what these functions return; none of them prompts or prints.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::clouds_yaml::{self, CloudEntry, CloudsYamlError};
use crate::config::{Config, ConfigError, Driver};
use crate::db::{Db, DbError, OpenOptions};
use crate::doctor::{self, DoctorError, Report};
use crate::home::{Home, HomeError};
use crate::images::{ImageError, TestImages};
use crate::secrets::{self, Secrets, SecretsError};

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "the API port {addr} cannot be used ({source}). Nothing was changed. Choose another with \
         `novabox init --api-port PORT`."
    )]
    PortTaken { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    CloudsYaml(#[from] CloudsYamlError),
    #[error(transparent)]
    Doctor(#[from] DoctorError),
    #[error("the default role {0} is missing after it was created; the database may be damaged")]
    RoleMissing(&'static str),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Devstack(#[from] crate::devstack::DevstackError),
}

/// A port taken by another program is reported now, not when `up` fails to bind.
pub fn check_port_free(config: &Config) -> Result<(), BootstrapError> {
    let addr = SocketAddr::new(config.api.listen, config.api.port);
    std::net::TcpListener::bind(addr).map(drop).map_err(|source| BootstrapError::PortTaken { addr, source })
}

/// What [`provision`] made or found.
pub struct Provisioned {
    pub db: Db,
    pub secrets: Secrets,
    /// Default flavors added now (0 when they were there).
    pub flavors_added: usize,
    /// The shared network every project's guests boot on.
    pub network: String,
    pub schema_version: i64,
    /// Users whose password was reset because `secrets.toml` was missing while they existed.
    pub passwords_reset: Vec<&'static str>,
    /// What `--devstack` added or found; `None` without it.
    pub devstack: Option<crate::devstack::Provisioned>,
}

/// The state dir, the database (which refuses to be newer, damaged or foreign), the config
/// when `write_config`, then users, projects, roles, flavors and the default network, and
/// DevStack's names when `devstack` is given.
pub fn provision(
    home: &Home,
    config: &Config,
    write_config: bool,
    sql_echo: bool,
    devstack: Option<&crate::devstack::Options>,
) -> Result<Provisioned, BootstrapError> {
    home.create_dirs()?;
    let db = Db::open(&home.db_file(), OpenOptions { echo: sql_echo || config.db.echo })?;
    db.check_integrity()?;
    if write_config {
        config.save(&home.config_file())?;
    }
    let (mut secrets, passwords_reset) = provision_identity(home, &db)?;
    // DevStack's flavors go first: on a new home its m1.nano (192 MB) is the one made.
    let mut devstack = devstack.map(|opts| crate::devstack::provision(home, &db, &mut secrets, opts)).transpose()?;
    let flavors_added = db.seed_default_flavors()?;
    let network = db.ensure_default_network(config)?.name;
    db.ensure_public_network(config)?;
    if let Some(made) = devstack.as_mut() {
        crate::devstack::finish(&db, made)?;
    }
    let schema_version = db.schema_version()?;
    Ok(Provisioned { db, secrets, flavors_added, network, schema_version, passwords_reset, devstack })
}

/// Creates admin, demo and alt_demo users and projects with generated passwords (kept in
/// `secrets.toml`), keeping existing ones, and keystone's bootstrap roles.
fn provision_identity(home: &Home, db: &Db) -> Result<(Secrets, Vec<&'static str>), BootstrapError> {
    let stored = Secrets::load(&home.secrets_file())?;
    let lost = stored.is_none() && db.user_by_name("admin")?.is_some();
    let secrets = match stored {
        Some(mut s) if s.alt_demo_password.is_empty() => {
            s.alt_demo_password = secrets::random_token(20);
            s.save(&home.secrets_file())?;
            s
        }
        Some(s) => s,
        None => {
            let s = Secrets::generate();
            s.save(&home.secrets_file())?;
            s
        }
    };
    let admin_project = db.ensure_project("admin", "Bootstrap project for the admin user")?;
    let demo_project = db.ensure_project("demo", "Project for the demo user")?;
    let alt_project = db.ensure_project("alt_demo", "A second project, to try isolation between projects")?;
    db.ensure_project("service", "Project for novabox's own services")?;
    let roles = db.ensure_default_roles()?;
    let role = |name: &'static str| roles.get(name).cloned().ok_or(BootstrapError::RoleMissing(name));
    let (admin_role, member_role, reader_role) = (role("admin")?, role("member")?, role("reader")?);
    let mut reset = Vec::new();
    for (name, password, project, roles) in [
        ("admin", &secrets.admin_password, &admin_project, vec![&admin_role, &member_role, &reader_role]),
        ("demo", &secrets.demo_password, &demo_project, vec![&member_role, &reader_role]),
        ("alt_demo", &secrets.alt_demo_password, &alt_project, vec![&member_role, &reader_role]),
    ] {
        let (user_id, created) = db.ensure_user(name, &secrets::hash_password(password)?, project)?;
        if lost && !created {
            db.set_password_hash(&user_id, &secrets::hash_password(password)?)?;
            reset.push(name);
        }
        for role in roles {
            db.assign_role(&user_id, project, role)?;
        }
    }
    // admin can act in the demo project too, as in DevStack.
    if let Some(admin) = db.user_by_name("admin")? {
        db.assign_role(&admin.id, &demo_project, &admin_role)?;
        // keystone's bootstrap makes the admin an admin of the system too.
        db.assign_scoped_role(&crate::db::identity::ScopedAssignment {
            actor_type: "user".into(),
            actor_id: admin.id.clone(),
            scope_type: "system".into(),
            scope_id: "all".into(),
            role_id: admin_role.clone(),
        })?;
    }
    Ok((secrets, reset))
}

/// The cloud `name` (demo in project demo) and `name-admin` in `file`, merged with what is
/// there.
pub fn write_clouds_yaml(file: &Path, name: &str, config: &Config, secrets: &Secrets) -> Result<(), BootstrapError> {
    let auth_url = config.auth_url();
    let admin_name = format!("{name}-admin");
    let region = &config.host.region;
    clouds_yaml::merge(
        file,
        &[
            CloudEntry {
                name,
                auth_url: &auth_url,
                username: "demo",
                password: &secrets.demo_password,
                project_name: "demo",
                region,
                system_scope: None,
            },
            CloudEntry {
                name: &admin_name,
                auth_url: &auth_url,
                username: "admin",
                password: &secrets.admin_password,
                project_name: "admin",
                region,
                system_scope: None,
            },
        ],
    )?;
    Ok(())
}

/// `init`'s doctor step: the checks on the live host (with the probe boot when asked), kept
/// in the home for `up`. A FAIL does not stop `init`: the decision already falls back (TCG,
/// user networking).
pub fn doctor(home: &Home, config: &Config, boot_probe: bool) -> Result<Report, BootstrapError> {
    let opts = doctor::Options::for_home(home, Path::new("/"), boot_probe);
    let report = doctor::run(config, &opts);
    report.save(&home.root().join(doctor::REPORT_FILE))?;
    Ok(report)
}

/// Whether this home wants the test image: when it boots real guests, and with `--devstack`
/// on any driver, as a DevStack always has its CirrOS image for jobs to boot by name.
pub fn wants_test_image(config: &Config, devstack: bool) -> bool {
    config.images.import_test_image && (devstack || real_guests(config))
}

/// Whether this cloud boots real guests (and so wants the test image).
pub fn real_guests(config: &Config) -> bool {
    match config.compute.driver {
        Driver::Fake => false,
        Driver::Auto => crate::compute::virt::qemu::QemuDriver::available(),
        Driver::Qemu | Driver::Libvirt => true,
    }
}

/// The test guest as image `tiny` when [`wants_test_image`] and the image store is empty;
/// `None` otherwise. `cache` is the per-user cache of built guests.
pub fn test_image(
    db: &Db,
    home: &Home,
    config: &Config,
    cache: Option<&Path>,
    devstack: bool,
) -> Result<Option<TestImages>, ImageError> {
    if !wants_test_image(config, devstack) {
        return Ok(None);
    }
    crate::images::import_test_image(db, home, cache)
}

/// Present while the test image is still to be imported by the stack's first start.
pub fn test_image_pending_file(home: &Home) -> PathBuf {
    home.run_dir().join("test-image.pending")
}

/// `up` on a new home: instead of building the test guest before the stack starts, leave it
/// to the stack's doctor phase, which builds and imports it while the broker starts (both take
/// seconds). Returns whether there is a test image to import at all.
pub fn defer_test_image(home: &Home, config: &Config, devstack: bool) -> Result<bool, BootstrapError> {
    if !wants_test_image(config, devstack) {
        return Ok(false);
    }
    let file = test_image_pending_file(home);
    std::fs::write(&file, b"").map_err(|source| BootstrapError::Write { path: file, source })?;
    Ok(true)
}

/// Imports the test image [`defer_test_image`] left for this start, if any (the mark says it
/// is wanted: [`wants_test_image`] was asked then). The mark goes whatever the outcome, as
/// `init` tries once too: a failure is reported, and `novabox init` tries again.
pub fn import_pending_test_image(
    home: &Home,
    config: &Config,
    cache: Option<&Path>,
) -> Result<Option<TestImages>, BootstrapError> {
    let file = test_image_pending_file(home);
    if !file.exists() {
        return Ok(None);
    }
    let result = (|| {
        let db = Db::open(&home.db_file(), OpenOptions { echo: config.db.echo })?;
        Ok(crate::images::import_test_image(&db, home, cache)?)
    })();
    let _ = std::fs::remove_file(&file);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioning_twice_keeps_passwords_and_a_lost_secrets_file_resets_them() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path());
        let mut config = Config::default();
        config.compute.driver = Driver::Fake;
        let first = provision(&home, &config, true, false, None).unwrap();
        assert!(home.is_initialized() && first.flavors_added > 0 && first.passwords_reset.is_empty());
        let again = provision(&home, &config, false, false, None).unwrap();
        assert_eq!(again.secrets.admin_password, first.secrets.admin_password);
        assert_eq!(again.flavors_added, 0);
        assert_eq!(again.network, first.network);
        std::fs::remove_file(home.secrets_file()).unwrap();
        let lost = provision(&home, &config, false, false, None).unwrap();
        assert_eq!(lost.passwords_reset, ["admin", "demo", "alt_demo"]);
        assert_ne!(lost.secrets.admin_password, first.secrets.admin_password);
        assert!(
            test_image(&lost.db, &home, &config, None, false).unwrap().is_none(),
            "the fake driver boots no test guest"
        );
        assert!(lost.devstack.is_none() && lost.db.flavor_by_flavorid("84").unwrap().is_none(), "no DevStack flavors");
    }

    #[test]
    fn devstack_provisioning_gives_its_flavors_network_and_one_password_and_says_what_is_missing() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path());
        let mut config = Config::default();
        config.compute.driver = Driver::Fake;
        config.network.cidr = crate::devstack::PRIVATE_CIDR;
        let opts = crate::devstack::Options { admin_password: Some("secret".into()) };
        let made = provision(&home, &config, true, false, Some(&opts)).unwrap();
        let ds = made.devstack.as_ref().unwrap();
        assert_eq!(made.flavors_added, 0, "DevStack's flavors cover novabox's ids");
        assert_eq!(ds.flavors.len(), crate::devstack::FLAVORS.len());
        assert_eq!(made.db.flavor_by_flavorid("42").unwrap().unwrap().memory_mb, 192);
        assert_eq!(ds.passwords_set, ["admin", "demo", "alt_demo"]);
        for user in crate::devstack::USERS {
            let row = made.db.user_by_name(user).unwrap().unwrap();
            assert!(secrets::verify_password("secret", &row.password_hash), "{user}");
        }
        let stored = Secrets::load(&home.secrets_file()).unwrap().unwrap();
        assert_eq!((stored.admin_password.as_str(), stored.alt_demo_password.as_str()), ("secret", "secret"));
        let private = &ds.networks[0];
        assert_eq!((private.name.as_str(), private.subnet.as_str()), ("private", "private-subnet"));
        assert_eq!(
            (private.cidr.as_str(), private.gateway_ip.map(|g| g.to_string())),
            ("10.0.0.0/26", Some("10.0.0.1".into()))
        );
        assert!(ds.notes.is_empty(), "{:?}", ds.notes);
        assert!(ds.not_created.is_empty(), "{:?}", ds.not_created);
        let public = &ds.networks[1];
        assert_eq!((public.name.as_str(), public.cidr.as_str()), ("public", "172.24.4.0/24"));
        let router = ds.router.clone().expect("router1");
        assert_eq!(router.name, "router1");
        let demo = made.db.project_by_name("demo").unwrap().unwrap();
        assert_eq!(router.project_id, demo.id);
        let interfaces = made.db.router_interfaces(&router.id).unwrap();
        assert!(
            interfaces.iter().any(|p| p.fixed_ips.iter().any(|f| f.subnet_id == private.subnet_id)),
            "{interfaces:?}"
        );

        // Again, and without the password: the same rows, nothing reset.
        let again = provision(&home, &config, false, false, Some(&Default::default())).unwrap();
        let ds2 = again.devstack.unwrap();
        assert!(ds2.flavors.iter().all(|f| !f.created) && ds2.passwords_set.is_empty());
        assert_eq!(ds2.networks, ds.networks);
        assert_eq!(ds2.router, ds.router, "router1 is made once");
        assert_eq!(again.secrets.demo_password, "secret");
        assert_eq!(again.db.flavors().unwrap().len(), crate::devstack::FLAVORS.len());
    }

    #[test]
    fn a_taken_api_port_is_refused_before_anything_is_written() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = Config::default();
        config.api.listen = "127.0.0.1".parse().unwrap();
        config.api.port = taken.local_addr().unwrap().port();
        let err = check_port_free(&config).unwrap_err();
        assert!(err.to_string().contains("--api-port"), "{err}");
    }
}
