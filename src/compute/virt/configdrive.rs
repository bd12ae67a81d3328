//! The OpenStack config drive: the files a guest reads its identity from (cloud-init's
//! ConfigDrive datasource, or the test guest's /init) when there is no metadata service.
//!
//! The driver writes the tree into a directory and qemu presents it to the guest as a
//! read-only FAT disk labelled `config-2` (qemu's `vvfat` block driver). cloud-init and nova
//! (`config_drive_format = vfat`) both accept a vfat config drive, and no ISO tool is needed
//! on the host. Only `openstack/latest` is written: every cloud-init since 0.7 reads it.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Value};

use super::GuestSpec;

/// The filesystem label cloud-init looks for.
pub const LABEL: &str = "config-2";

#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    #[error("cannot write the config drive file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the user data is not valid base64: {0}")]
    UserData(base64::DecodeError),
}

/// `openstack/latest/meta_data.json`, with the keys nova writes that guests use.
pub fn meta_data(spec: &GuestSpec) -> Value {
    let mut public_keys = serde_json::Map::new();
    let mut keys = Vec::new();
    if let Some(data) = &spec.key_data {
        let name = spec.key_name.clone().unwrap_or_else(|| "key".into());
        public_keys.insert(name.clone(), json!(data));
        keys.push(json!({"name": name, "type": "ssh", "data": data}));
    }
    json!({
        "uuid": spec.uuid,
        "name": spec.name,
        "hostname": spec.hostname,
        "launch_index": 0,
        "availability_zone": spec.availability_zone,
        "project_id": spec.project_id,
        "public_keys": public_keys,
        "keys": keys,
        "meta": spec.metadata,
        "devices": [],
    })
}

/// `openstack/latest/network_data.json`: one link per NIC, configured by DHCP (with QEMU user
/// networking the addresses come from qemu's own DHCP server, not from the allocation).
pub fn network_data(spec: &GuestSpec) -> Value {
    let mut links = Vec::new();
    let mut networks = Vec::new();
    for (i, vif) in spec.network_info.iter().enumerate() {
        // Nova names links after the tap device: "tap" and the port id's first 11 characters.
        let link = format!("tap{}", vif.port_id.chars().take(11).collect::<String>());
        links.push(json!({
            "id": link,
            "vif_id": vif.port_id,
            "type": "phy",
            "ethernet_mac_address": vif.mac,
            "mtu": 1500,
        }));
        networks.push(json!({
            "id": format!("network{i}"),
            "type": "ipv4_dhcp",
            "link": link,
            "network_id": vif.network_id,
        }));
    }
    json!({"links": links, "networks": networks, "services": []})
}

/// Writes the drive's tree into `dir` (created if needed).
pub fn write(dir: &Path, spec: &GuestSpec) -> Result<(), ConfigDriveError> {
    let latest = dir.join("openstack/latest");
    let w = |path: &Path, data: &[u8]| {
        std::fs::write(path, data).map_err(|source| ConfigDriveError::Write { path: path.to_path_buf(), source })
    };
    std::fs::create_dir_all(&latest).map_err(|source| ConfigDriveError::Write { path: latest.clone(), source })?;
    // One line each: the test guest's /init reads meta_data.json with sed.
    let encode = |v: &Value| serde_json::to_vec(v).unwrap_or_default();
    w(&latest.join("meta_data.json"), &encode(&meta_data(spec)))?;
    w(&latest.join("network_data.json"), &encode(&network_data(spec)))?;
    w(&latest.join("vendor_data.json"), b"{}")?;
    w(&latest.join("vendor_data2.json"), b"{}")?;
    if let Some(b64) = &spec.user_data {
        let data = base64::engine::general_purpose::STANDARD
            .decode(b64.trim().as_bytes())
            .map_err(ConfigDriveError::UserData)?;
        w(&latest.join("user_data"), &data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::virt::Vif;

    fn spec() -> GuestSpec {
        let mut s = GuestSpec::for_test("6f1c7a3e-0000-4000-8000-000000000001", "demo");
        s.hostname = "demo-1".into();
        s.key_name = Some("mykey".into());
        s.key_data = Some("ssh-ed25519 AAAA test@novabox".into());
        s.metadata.insert("role".into(), "web".into());
        s.availability_zone = Some("nova".into());
        s.user_data = Some(base64::engine::general_purpose::STANDARD.encode("#!/bin/sh\necho hi\n"));
        s.network_info = vec![Vif {
            port_id: "0123456789abcdef".into(),
            network_id: "net-1".into(),
            network_name: "private".into(),
            mac: "fa:16:3e:00:00:01".into(),
            ips: vec!["10.42.0.5".into()],
            ..Default::default()
        }];
        s
    }

    #[test]
    fn writes_the_openstack_layout() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), &spec()).unwrap();
        let latest = t.path().join("openstack/latest");
        let meta_text = std::fs::read_to_string(latest.join("meta_data.json")).unwrap();
        assert!(!meta_text.contains('\n'), "one line, for the test guest's sed");
        let meta: Value = serde_json::from_str(&meta_text).unwrap();
        assert_eq!(meta["uuid"], "6f1c7a3e-0000-4000-8000-000000000001");
        assert_eq!(meta["hostname"], "demo-1");
        assert_eq!(meta["name"], "demo");
        assert_eq!(meta["launch_index"], 0);
        assert_eq!(meta["availability_zone"], "nova");
        assert_eq!(meta["project_id"], "p");
        assert_eq!(meta["public_keys"]["mykey"], "ssh-ed25519 AAAA test@novabox");
        assert_eq!(meta["keys"][0]["type"], "ssh");
        assert_eq!(meta["meta"]["role"], "web");
        assert_eq!(std::fs::read(latest.join("user_data")).unwrap(), b"#!/bin/sh\necho hi\n");
        let net: Value = serde_json::from_slice(&std::fs::read(latest.join("network_data.json")).unwrap()).unwrap();
        assert_eq!(net["links"][0]["id"], "tap0123456789a");
        assert_eq!(net["links"][0]["ethernet_mac_address"], "fa:16:3e:00:00:01");
        assert_eq!(net["networks"][0]["link"], "tap0123456789a");
        assert_eq!(net["networks"][0]["type"], "ipv4_dhcp");
    }

    #[test]
    fn the_test_guests_sed_finds_hostname_and_key() {
        // The same patterns as scripts/make-test-image.sh, as a regex-free check: the compact
        // JSON must have `"hostname":"` and the first key right after `"public_keys":{`.
        let text = serde_json::to_string(&meta_data(&spec())).unwrap();
        assert!(text.contains("\"hostname\":\"demo-1\""), "{text}");
        assert!(text.contains("\"public_keys\":{\"mykey\":\"ssh-ed25519 AAAA test@novabox\"}"), "{text}");
    }

    #[test]
    fn no_key_no_user_data_and_bad_user_data() {
        let t = tempfile::tempdir().unwrap();
        let mut s = GuestSpec::for_test("u", "n");
        write(t.path(), &s).unwrap();
        let meta: Value =
            serde_json::from_slice(&std::fs::read(t.path().join("openstack/latest/meta_data.json")).unwrap()).unwrap();
        assert_eq!(meta["public_keys"], json!({}));
        assert!(!t.path().join("openstack/latest/user_data").exists());
        s.user_data = Some("not base64!".into());
        assert!(matches!(write(t.path(), &s), Err(ConfigDriveError::UserData(_))));
    }
}
