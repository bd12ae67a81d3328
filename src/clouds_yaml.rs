//! Writes a cloud entry into `clouds.yaml` (openstacksdk's client config), merging with what
//! is there: other clouds, comments aside, are kept exactly as they were.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

#[derive(Debug, thiserror::Error)]
pub enum CloudsYamlError {
    #[error("cannot read {file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error(
        "{file} is not valid YAML ({message}); novabox will not overwrite it. Fix it, or pass \
         --clouds-yaml PATH to write the novabox entry elsewhere."
    )]
    Parse { file: PathBuf, message: String },
    #[error("{file} has no `clouds:` mapping at its top; novabox will not overwrite it. Fix it, or pass --clouds-yaml PATH.")]
    Shape { file: PathBuf },
    #[error("cannot write {file}: {source}")]
    Write { file: PathBuf, source: std::io::Error },
}

/// One cloud entry, with password authentication.
#[derive(Debug, Clone)]
pub struct CloudEntry<'a> {
    pub name: &'a str,
    pub auth_url: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    /// Ignored when `system_scope` is given.
    pub project_name: &'a str,
    pub region: &'a str,
    /// A system-scoped entry (`all`), as DevStack's `devstack-system-admin`: keystone refuses
    /// a project and the system scope together, so the project keys are left out.
    pub system_scope: Option<&'a str>,
}

impl CloudEntry<'_> {
    fn to_value(&self) -> Value {
        let mut auth = Mapping::new();
        for (k, v) in [
            ("auth_url", self.auth_url),
            ("username", self.username),
            ("password", self.password),
            ("user_domain_id", "default"),
        ] {
            auth.insert(k.into(), v.into());
        }
        match self.system_scope {
            Some(scope) => {
                auth.insert("system_scope".into(), scope.into());
            }
            None => {
                auth.insert("project_name".into(), self.project_name.into());
                auth.insert("project_domain_id".into(), "default".into());
            }
        }
        let mut cloud = Mapping::new();
        cloud.insert("auth".into(), Value::Mapping(auth));
        cloud.insert("region_name".into(), self.region.into());
        cloud.insert("interface".into(), "public".into());
        cloud.insert("identity_api_version".into(), 3.into());
        Value::Mapping(cloud)
    }
}

/// The default location: `$XDG_CONFIG_HOME/openstack/clouds.yaml` or `~/.config/openstack/clouds.yaml`.
pub fn default_path() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(Path::new(&x).join("openstack/clouds.yaml"));
    }
    std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| Path::new(&h).join(".config/openstack/clouds.yaml"))
}

/// Adds or replaces the given entries, keeping every other cloud and top-level key.
pub fn merge(file: &Path, entries: &[CloudEntry<'_>]) -> Result<(), CloudsYamlError> {
    let mut doc = match std::fs::read_to_string(file) {
        Ok(text) if text.trim().is_empty() => Value::Mapping(Mapping::new()),
        Ok(text) => serde_yaml::from_str::<Value>(&text)
            .map_err(|e| CloudsYamlError::Parse { file: file.to_path_buf(), message: e.to_string() })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Mapping(Mapping::new()),
        Err(source) => return Err(CloudsYamlError::Read { file: file.to_path_buf(), source }),
    };
    let shape = || CloudsYamlError::Shape { file: file.to_path_buf() };
    let top = doc.as_mapping_mut().ok_or_else(shape)?;
    let clouds = top.entry("clouds".into()).or_insert_with(|| Value::Mapping(Mapping::new()));
    if clouds.is_null() {
        *clouds = Value::Mapping(Mapping::new());
    }
    let clouds = clouds.as_mapping_mut().ok_or_else(shape)?;
    for entry in entries {
        clouds.insert(entry.name.into(), entry.to_value());
    }
    let text = serde_yaml::to_string(&doc).unwrap_or_default();
    let write = |source| CloudsYamlError::Write { file: file.to_path_buf(), source };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(write)?;
    }
    crate::home::write_atomic(file, text.as_bytes(), 0o600).map_err(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(name: &'a str, password: &'a str) -> CloudEntry<'a> {
        CloudEntry {
            name,
            auth_url: "http://127.0.0.1:8774/identity/v3",
            username: "demo",
            password,
            project_name: "demo",
            region: "RegionOne",
            system_scope: None,
        }
    }

    #[test]
    fn keeps_other_clouds_and_keys() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("clouds.yaml");
        std::fs::write(
            &f,
            "clouds:\n  work:\n    auth:\n      auth_url: https://keystone.example/v3\n      username: me\n    region_name: X\ncache:\n  expiration_time: 3\n",
        )
        .unwrap();
        merge(&f, &[entry("novabox", "pw1")]).unwrap();
        merge(&f, &[entry("novabox", "pw2")]).unwrap();
        let v: Value = serde_yaml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        assert_eq!(v["clouds"]["work"]["auth"]["username"], "me");
        assert_eq!(v["cache"]["expiration_time"], 3);
        assert_eq!(v["clouds"]["novabox"]["auth"]["password"], "pw2");
        assert_eq!(v["clouds"]["novabox"]["region_name"], "RegionOne");
    }

    #[test]
    fn refuses_to_clobber_invalid_yaml() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("clouds.yaml");
        std::fs::write(&f, "clouds: [unclosed\n").unwrap();
        assert!(matches!(merge(&f, &[entry("novabox", "x")]), Err(CloudsYamlError::Parse { .. })));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "clouds: [unclosed\n");
        std::fs::write(&f, "- a list\n").unwrap();
        assert!(matches!(merge(&f, &[entry("novabox", "x")]), Err(CloudsYamlError::Shape { .. })));
    }

    #[test]
    fn a_system_scoped_entry_has_no_project() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("clouds.yaml");
        merge(&f, &[CloudEntry { system_scope: Some("all"), ..entry("sys", "x") }]).unwrap();
        let v: Value = serde_yaml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        assert_eq!(v["clouds"]["sys"]["auth"]["system_scope"], "all");
        assert!(v["clouds"]["sys"]["auth"].get("project_name").is_none());
        assert!(v["clouds"]["sys"]["auth"].get("project_domain_id").is_none());
    }

    #[test]
    fn creates_missing_file_and_dirs() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("a/b/clouds.yaml");
        merge(&f, &[entry("novabox", "x")]).unwrap();
        assert!(std::fs::read_to_string(&f).unwrap().contains("novabox"));
    }
}
