//! `novabox init --devstack`: the names a job written for DevStack expects, on top of what
//! every home has (the admin, demo and alt_demo users and projects, the admin's system role,
//! the shared network `private` with `private-subnet`). It adds DevStack's flavors with their
//! ids, its clouds.yaml entries and an `openrc` in the home, and says what it could not make.
//!
//! DevStack's own sources are the reference: `write_clouds_yaml` in functions-common (and
//! tools/update_clouds_yaml.py), `openrc`, `create_flavors` in lib/nova, the m1.nano/m1.micro
//! of lib/tempest, and the addresses of stackrc and lib/neutron_plugins/services/l3.
//!
//! Every step is safe to run again; nothing the user changed is overwritten, and what differs
//! from DevStack is reported instead (see [`Provisioned::notes`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cidr::Ipv4Cidr;
use crate::clouds_yaml::{self, CloudEntry, CloudsYamlError};
use crate::config::Config;
use crate::db::flavors::NewFlavor;
use crate::db::{Db, DbError};
use crate::home::Home;
use crate::secrets::{self, Secrets, SecretsError};

#[derive(Debug, thiserror::Error)]
pub enum DevstackError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    CloudsYaml(#[from] CloudsYamlError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the {0} user is missing after provisioning; the database may be damaged")]
    UserMissing(&'static str),
    #[error("the {0} project is missing after provisioning; the database may be damaged")]
    ProjectMissing(&'static str),
    #[error("the DevStack password is empty; give a non-empty --admin-password (or ADMIN_PASSWORD)")]
    EmptyPassword,
}

/// DevStack's private network: a /26 out of its default subnet pool `IPV4_ADDRS_SAFE_TO_USE`
/// (10.0.0.0/22, `SUBNETPOOL_SIZE_V4` 26), so the first subnet is 10.0.0.0/26, gateway 10.0.0.1.
/// A new home made with `--devstack` takes it as its default network's CIDR.
pub const PRIVATE_CIDR: Ipv4Cidr = match Ipv4Cidr::new_const([10, 0, 0, 0], 26) {
    Some(c) => c,
    None => panic!("10.0.0.0/26 is a valid CIDR"),
};

/// DevStack's `FLOATING_RANGE`, the `public` network's subnet.
pub const PUBLIC_CIDR: &str = "172.24.4.0/24";

/// DevStack's flavors: lib/nova's `create_flavors` (m1.tiny..m1.xlarge, cirros256, ds*) and
/// lib/tempest's m1.nano and m1.micro, whose RAM is `TEMPEST_FLAVOR_RAM` (192) and
/// `TEMPEST_FLAVOR_ALT_RAM` (256) and whose disk is CirrOS's size rounded up, 1 GB. DevStack
/// gives each `hw_rng:allowed=True`.
/// (flavorid, name, memory_mb, vcpus, root_gb)
pub const FLAVORS: &[(&str, &str, i64, i64, i64)] = &[
    ("42", "m1.nano", 192, 1, 1),
    ("84", "m1.micro", 256, 1, 1),
    ("1", "m1.tiny", 512, 1, 1),
    ("2", "m1.small", 2048, 1, 20),
    ("3", "m1.medium", 4096, 2, 40),
    ("4", "m1.large", 8192, 4, 80),
    ("5", "m1.xlarge", 16384, 8, 160),
    ("c1", "cirros256", 256, 1, 1),
    ("d1", "ds512M", 512, 1, 5),
    ("d2", "ds1G", 1024, 1, 10),
    ("d3", "ds2G", 2048, 2, 10),
    ("d4", "ds4G", 4096, 4, 20),
];

/// The users of DevStack's clouds.yaml entries; each signs in with its own password from
/// `secrets.toml`, or all with the one given by `--admin-password` (DevStack's single
/// `ADMIN_PASSWORD`).
pub const USERS: [&str; 3] = ["admin", "demo", "alt_demo"];

/// What the caller asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// One password for every DevStack user, as DevStack's `ADMIN_PASSWORD`; `None` keeps the
    /// generated ones.
    pub admin_password: Option<String>,
}

/// One DevStack name that was not made, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotCreated {
    pub name: String,
    pub reason: String,
}

/// A flavor as the home has it after provisioning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlavorRef {
    pub id: String,
    pub name: String,
    pub created: bool,
}

/// A network as the home has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkRef {
    pub name: String,
    pub id: String,
    pub subnet: String,
    pub subnet_id: String,
    pub cidr: String,
    pub gateway_ip: Option<Ipv4Addr>,
}

/// What [`provision`] made or found.
#[derive(Debug, Clone, Serialize)]
pub struct Provisioned {
    pub flavors: Vec<FlavorRef>,
    pub networks: Vec<NetworkRef>,
    /// `router1`, when it could be made.
    pub router: Option<RouterRef>,
    /// DevStack names this home does not have, with the reason (`router1: ...`).
    pub not_created: Vec<NotCreated>,
    /// Things that exist but differ from DevStack (kept as they are: the user's, or made
    /// before `--devstack`).
    pub notes: Vec<String>,
    /// Users whose password was set from `--admin-password` now.
    pub passwords_set: Vec<&'static str>,
}

/// DevStack's flavors, the password override and the networks; the clouds.yaml entries and the
/// openrc are written by [`write_clouds_yaml`] and [`write_openrc`] once the secrets are final.
/// Runs after [`crate::bootstrap::provision`]'s identity step and before its default flavors,
/// so a new home gets DevStack's m1.nano (192 MB) rather than novabox's (64 MB).
pub fn provision_flavors(db: &Db) -> Result<(Vec<FlavorRef>, Vec<String>), DevstackError> {
    let mut refs = Vec::new();
    let mut notes = Vec::new();
    let rng: BTreeMap<String, String> = [("hw_rng:allowed".to_string(), "True".to_string())].into();
    let existing = db.flavors()?;
    for &(flavorid, name, memory_mb, vcpus, root_gb) in FLAVORS {
        if let Some(f) = db.flavor_by_flavorid(flavorid)? {
            if f.name != name || (f.memory_mb, f.vcpus, f.root_gb) != (memory_mb, vcpus, root_gb) {
                notes.push(format!(
                    "flavor {flavorid} is {} ({} MB, {} vCPU, {} GB), kept; DevStack's is {name} ({memory_mb} MB, \
                     {vcpus} vCPU, {root_gb} GB)",
                    f.name, f.memory_mb, f.vcpus, f.root_gb
                ));
            }
            refs.push(FlavorRef { id: f.flavorid, name: f.name, created: false });
            continue;
        }
        if let Some(f) = existing.iter().find(|f| f.name == name) {
            notes.push(format!("flavor {name} has id {}, kept; DevStack's has id {flavorid}", f.flavorid));
            refs.push(FlavorRef { id: f.flavorid.clone(), name: f.name.clone(), created: false });
            continue;
        }
        let f = db.create_flavor(&NewFlavor {
            flavorid,
            name,
            memory_mb,
            vcpus,
            root_gb,
            ephemeral_gb: 0,
            swap: 0,
            rxtx_factor: 1.0,
            is_public: true,
            description: None,
        })?;
        db.set_flavor_extra_specs(f.id, &rng)?;
        refs.push(FlavorRef { id: f.flavorid, name: f.name, created: true });
    }
    Ok((refs, notes))
}

/// Gives every DevStack user `password` (DevStack's one `ADMIN_PASSWORD`), in the database and
/// in `secrets.toml`, when it is not theirs already. Returns the users changed.
pub fn set_password(
    home: &Home,
    db: &Db,
    secrets: &mut Secrets,
    password: &str,
) -> Result<Vec<&'static str>, DevstackError> {
    if password.is_empty() {
        return Err(DevstackError::EmptyPassword);
    }
    let mut changed = Vec::new();
    for user in USERS {
        let slot = match user {
            "admin" => &mut secrets.admin_password,
            "demo" => &mut secrets.demo_password,
            _ => &mut secrets.alt_demo_password,
        };
        if slot == password {
            continue;
        }
        let row = db.user_by_name(user)?.ok_or(DevstackError::UserMissing(user))?;
        db.set_password_hash(&row.id, &secrets::hash_password(password)?)?;
        *slot = password.to_string();
        changed.push(user);
    }
    if !changed.is_empty() {
        secrets.save(&home.secrets_file())?;
    }
    Ok(changed)
}

/// `private` (the home's default network) and `public`; what is missing goes to `not_created`.
pub fn networks(
    db: &Db,
    not_created: &mut Vec<NotCreated>,
    notes: &mut Vec<String>,
) -> Result<Vec<NetworkRef>, DevstackError> {
    let mut refs = Vec::new();
    match network_ref(db, crate::network::model::DEFAULT_NETWORK)? {
        Some(private) => {
            if private.cidr != PRIVATE_CIDR.to_string() {
                notes.push(format!(
                    "network private has {} {}, kept (made before --devstack or with --cidr); DevStack's is {}",
                    private.subnet, private.cidr, PRIVATE_CIDR
                ));
            }
            refs.push(private);
        }
        None => not_created.push(NotCreated {
            name: "private".into(),
            reason: "the home's default network is missing; run `novabox init` again".into(),
        }),
    }
    refs.extend(public_network(db, not_created)?);
    Ok(refs)
}

/// DevStack's `public` (external, subnet `public-subnet`), which every home has (made by
/// [`crate::bootstrap::provision`] from `[network] public_cidr`); a home whose `public` is gone
/// says so.
fn public_network(db: &Db, not_created: &mut Vec<NotCreated>) -> Result<Option<NetworkRef>, DevstackError> {
    if let Some(public) = network_ref(db, crate::network::routers::PUBLIC_NETWORK)? {
        return Ok(Some(public));
    }
    not_created.push(NotCreated {
        name: "public".into(),
        reason: format!("the external network is missing; run `novabox init` again (DevStack's is {PUBLIC_CIDR})"),
    });
    Ok(None)
}

/// DevStack's router between `private` and `public`, owned by the demo project as DevStack's
/// `create_neutron_initial_network` makes it, with SNAT on. The router host plumbs it when `up`
/// starts (or at once, when this runs beside a running stack's next router change).
pub const ROUTER_NAME: &str = "router1";

/// A router as the home has it after provisioning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouterRef {
    pub name: String,
    pub id: String,
    pub project_id: String,
}

fn router1(
    db: &Db,
    networks: &[NetworkRef],
    not_created: &mut Vec<NotCreated>,
) -> Result<Option<RouterRef>, DevstackError> {
    let by_name = |name: &str| networks.iter().find(|n| n.name == name);
    let (Some(private), Some(public)) =
        (by_name(crate::network::model::DEFAULT_NETWORK), by_name(crate::network::routers::PUBLIC_NETWORK))
    else {
        not_created.push(NotCreated { name: ROUTER_NAME.into(), reason: "it joins private and public".into() });
        return Ok(None);
    };
    let demo = db.project_by_name("demo")?.ok_or(DevstackError::ProjectMissing("demo"))?;
    let router = db.create_with_gateway_and_interface(&demo.id, ROUTER_NAME, &public.id, &private.subnet_id)?;
    Ok(Some(RouterRef { name: router.name, id: router.id, project_id: router.project_id }))
}

fn network_ref(db: &Db, name: &str) -> Result<Option<NetworkRef>, DevstackError> {
    let Some(net) = db.network_by_name(name)? else { return Ok(None) };
    let subnet = match net.subnets.first() {
        Some(id) => db.subnet_by_id(id)?,
        None => None,
    };
    Ok(subnet.map(|s| NetworkRef {
        name: net.name.clone(),
        id: net.id.clone(),
        subnet: s.name,
        subnet_id: s.id,
        cidr: s.cidr.to_string(),
        gateway_ip: s.gateway_ip,
    }))
}

/// The cloud names [`write_clouds_yaml`] writes, in its order.
pub const CLOUDS: [&str; 4] = ["devstack", "devstack-admin", "devstack-alt", "devstack-system-admin"];

/// DevStack's four main clouds.yaml entries, merged with what is there (as the `novabox` ones
/// are): `devstack` (demo in demo), `devstack-admin` (admin in admin), `devstack-alt` (alt_demo
/// in alt_demo) and `devstack-system-admin` (admin, `system_scope: all`).
pub fn write_clouds_yaml(file: &Path, config: &Config, secrets: &Secrets) -> Result<(), DevstackError> {
    let auth_url = config.auth_url();
    let region = &config.host.region;
    let entry = |name, username, password, project_name| CloudEntry {
        name,
        auth_url: &auth_url,
        username,
        password,
        project_name,
        region,
        system_scope: None,
    };
    clouds_yaml::merge(
        file,
        &[
            entry(CLOUDS[0], "demo", &secrets.demo_password, "demo"),
            entry(CLOUDS[1], "admin", &secrets.admin_password, "admin"),
            entry(CLOUDS[2], "alt_demo", &secrets.alt_demo_password, "alt_demo"),
            CloudEntry { system_scope: Some("all"), ..entry(CLOUDS[3], "admin", &secrets.admin_password, "") },
        ],
    )?;
    Ok(())
}

/// Where [`write_openrc`] puts the file.
pub fn openrc_path(home: &Home) -> PathBuf {
    home.root().join("openrc")
}

/// An `openrc` used as DevStack's: `source openrc [username] [projectname]`, demo and demo by
/// default, or what `OS_USERNAME`/`OS_PROJECT_NAME` already say. DevStack gives every user
/// `ADMIN_PASSWORD`; here each known user gets its own password from `secrets.toml`, and any
/// other user `ADMIN_PASSWORD` when set. It holds the passwords, so it is owner-readable only.
pub fn write_openrc(home: &Home, config: &Config, secrets: &Secrets) -> Result<PathBuf, DevstackError> {
    let path = openrc_path(home);
    let text = openrc_text(config, secrets);
    crate::home::write_atomic(&path, text.as_bytes(), 0o600)
        .map_err(|source| DevstackError::Write { path: path.clone(), source })?;
    Ok(path)
}

fn openrc_text(config: &Config, secrets: &Secrets) -> String {
    let q = shell_quote;
    format!(
        r#"#!/usr/bin/env bash
# Written by `novabox init --devstack`; rewritten by each run of it. Keep private: it holds
# the passwords of secrets.toml.
#
# source openrc [username] [projectname]
#
# Sets the OS_* variables for USERNAME in PROJECTNAME, as DevStack's openrc does: demo and demo
# by default, or what OS_USERNAME and OS_PROJECT_NAME already say. admin, demo and alt_demo get
# their own passwords; any other user gets ADMIN_PASSWORD when it is set.

if [ -n "$1" ]; then
    OS_USERNAME=$1
fi
if [ -n "$2" ]; then
    OS_PROJECT_NAME=$2
fi

export OS_AUTH_TYPE=password
export OS_PROJECT_NAME=${{OS_PROJECT_NAME:-demo}}
export OS_USERNAME=${{OS_USERNAME:-demo}}
case "$OS_USERNAME" in
    admin) export OS_PASSWORD={admin} ;;
    demo) export OS_PASSWORD={demo} ;;
    alt_demo) export OS_PASSWORD={alt} ;;
    *)
        if [ -n "${{ADMIN_PASSWORD:-}}" ]; then
            export OS_PASSWORD=$ADMIN_PASSWORD
        else
            unset OS_PASSWORD
            echo "openrc: no password known for $OS_USERNAME; export OS_PASSWORD (or ADMIN_PASSWORD)" >&2
        fi
        ;;
esac
export OS_REGION_NAME={region}
export OS_AUTH_URL={auth_url}
export OS_IDENTITY_API_VERSION=3
export OS_USER_DOMAIN_ID=${{OS_USER_DOMAIN_ID:-"default"}}
export OS_PROJECT_DOMAIN_ID=${{OS_PROJECT_DOMAIN_ID:-"default"}}
"#,
        admin = q(&secrets.admin_password),
        demo = q(&secrets.demo_password),
        alt = q(&secrets.alt_demo_password),
        region = q(&config.host.region),
        auth_url = q(&config.auth_url()),
    )
}

/// `s` as one word for sh and bash, whatever it holds (a password from `--admin-password` may
/// hold quotes or `$`).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r#"'\''"#))
}

/// Flavors, the password override and the networks, in the order `init` needs them. The
/// caller runs this between identity and the default flavors (see [`provision_flavors`]).
pub fn provision(home: &Home, db: &Db, secrets: &mut Secrets, options: &Options) -> Result<Provisioned, DevstackError> {
    let passwords_set = match &options.admin_password {
        Some(pw) => set_password(home, db, secrets, pw)?,
        None => Vec::new(),
    };
    let (flavors, notes) = provision_flavors(db)?;
    Ok(Provisioned { flavors, networks: Vec::new(), router: None, not_created: Vec::new(), notes, passwords_set })
}

/// The networks part of [`provision`], once the default network exists.
pub fn finish(db: &Db, made: &mut Provisioned) -> Result<(), DevstackError> {
    made.networks = networks(db, &mut made.not_created, &mut made.notes)?;
    made.router = router1(db, &made.networks, &mut made.not_created)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavors_are_devstacks_and_a_changed_one_is_kept_and_reported() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("db.sqlite"), Default::default()).unwrap();
        let (first, notes) = provision_flavors(&db).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(first.len(), FLAVORS.len());
        assert!(first.iter().all(|f| f.created));
        let nano = db.flavor_by_flavorid("42").unwrap().unwrap();
        assert_eq!((nano.name.as_str(), nano.memory_mb, nano.root_gb), ("m1.nano", 192, 1));
        let ds = db.flavor_by_flavorid("d1").unwrap().unwrap();
        assert_eq!((ds.name.as_str(), ds.memory_mb, ds.vcpus, ds.root_gb), ("ds512M", 512, 1, 5));
        assert_eq!(db.flavor_extra_specs(ds.id).unwrap()["hw_rng:allowed"], "True");
        // Again: nothing new, nothing reported.
        let (again, notes) = provision_flavors(&db).unwrap();
        assert!(notes.is_empty() && again.iter().all(|f| !f.created), "{notes:?}");
        assert_eq!(db.flavors().unwrap().len(), FLAVORS.len());

        // A home whose m1.nano is novabox's 64 MB one keeps it and says so.
        let t2 = tempfile::tempdir().unwrap();
        let db2 = Db::open(&t2.path().join("db.sqlite"), Default::default()).unwrap();
        db2.seed_default_flavors().unwrap();
        let (refs, notes) = provision_flavors(&db2).unwrap();
        assert_eq!(db2.flavor_by_flavorid("42").unwrap().unwrap().memory_mb, 64);
        assert!(notes.iter().any(|n| n.contains("flavor 42 is m1.nano (64 MB")), "{notes:?}");
        assert!(refs.iter().any(|f| f.name == "m1.micro" && f.created));
    }

    #[test]
    fn openrc_quotes_any_password() {
        let mut s = Secrets::generate();
        s.admin_password = "it's $HOME `x`".into();
        let text = openrc_text(&Config::default(), &s);
        assert!(text.contains(r#"admin) export OS_PASSWORD='it'\''s $HOME `x`' ;;"#), "{text}");
        assert!(text.contains("export OS_AUTH_URL='http://"), "{text}");
    }

    #[test]
    fn the_private_cidr_is_devstacks_first_pool_subnet() {
        assert_eq!(PRIVATE_CIDR.to_string(), "10.0.0.0/26");
        assert_eq!(PRIVATE_CIDR.gateway().to_string(), "10.0.0.1");
    }
}
