//! Provider networks (neutron's `provider` extension): the `provider:*` attributes of a
//! network, which only admins may set or see (neutron's `create_network:provider:*` and
//! `get_network:provider:*` policies), checked against `[network] physical_networks`.

use std::collections::BTreeMap;

use super::*;
use crate::config::{Config, NetworkMode};
use crate::network::provider::{self, Provider, ProviderRequest};
use crate::policy::{Action, Target};

const ATTRS: [(&str, &str, &str); 3] = [
    ("provider:network_type", "create_network:provider:network_type", "update_network:provider:network_type"),
    (
        "provider:physical_network",
        "create_network:provider:physical_network",
        "update_network:provider:physical_network",
    ),
    ("provider:segmentation_id", "create_network:provider:segmentation_id", "update_network:provider:segmentation_id"),
];

/// Whether the caller sees a network's `provider:*` attributes.
pub(super) fn sees_provider(auth: &Auth) -> bool {
    auth.authorize(Action::NetworkProviderAttribute("get_network:provider:network_type"), &Target::default()).is_ok()
}

/// The attributes of `n` an admin sees. An ordinary network is shown as before provider
/// networks existed: its bridge is its "physical" network.
pub(super) fn provider_json(v: &mut Value, n: &Network) {
    let (kind, physnet, segment) = match (&n.provider, &n.bridge) {
        (Some(p), _) => (p.network_type.as_str(), json!(p.physical_network), json!(p.segmentation_id)),
        (None, Some(b)) => ("flat", json!(b), Value::Null),
        (None, None) => ("local", Value::Null, Value::Null),
    };
    v["provider:network_type"] = json!(kind);
    v["provider:physical_network"] = physnet;
    v["provider:segmentation_id"] = segment;
}

/// The `provider:*` attributes of a request body, each authorized by its own policy rule.
fn request(auth: &Auth, obj: &Map<String, Value>, creating: bool) -> ApiResult<Option<ProviderRequest>> {
    let given: Vec<_> = ATTRS.iter().filter(|(key, _, _)| obj.contains_key(*key)).collect();
    if given.is_empty() {
        return Ok(None);
    }
    for (_, create, update) in &given {
        auth.authorize(Action::NetworkProviderAttribute(if creating { create } else { update }), &Target::default())?;
    }
    let text = |key: &str| -> ApiResult<Option<String>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => get_str(obj, key, 64),
        }
    };
    Ok(Some(ProviderRequest {
        network_type: text("provider:network_type")?,
        physical_network: text("provider:physical_network")?,
        segmentation_id: get_int(obj, "provider:segmentation_id")?,
    }))
}

/// The provider segment a create asks for, or `None` for an ordinary network. Refused with
/// 400 when the host cannot plumb it: in user mode (no CAP_NET_ADMIN) novabox has no bridges.
pub(super) fn for_create(config: &Config, auth: &Auth, obj: &Map<String, Value>) -> ApiResult<Option<Provider>> {
    let Some(req) = request(auth, obj, true)? else { return Ok(None) };
    let wanted = validate(&req, &config.network.physical_networks)?;
    if wanted.is_some() {
        // As `up` decides (`[network] mode = "bridge"` without the capability never starts).
        let bridged = match config.network.mode {
            NetworkMode::Bridge => true,
            NetworkMode::User => false,
            NetworkMode::Auto => crate::compute::net::host::has_net_admin(),
        };
        if !bridged {
            return Err(invalid(
                "provider networks need bridge networking, and this novabox runs with QEMU user networking \
                 ([network] mode = \"user\", or \"auto\" without CAP_NET_ADMIN). Run novabox as root with \
                 [network] mode = \"bridge\" or \"auto\" to create flat or vlan networks",
            ));
        }
    }
    Ok(wanted)
}

fn validate(req: &ProviderRequest, physnets: &BTreeMap<String, String>) -> ApiResult<Option<Provider>> {
    provider::validate(req, physnets).map_err(invalid)
}

/// An update may repeat a network's provider attributes but not change them (ML2 cannot move
/// a network with ports to another segment).
pub(super) fn check_update(auth: &Auth, n: &Network, obj: &Map<String, Value>) -> ApiResult<()> {
    let Some(req) = request(auth, obj, false)? else { return Ok(()) };
    let mut now = json!({});
    provider_json(&mut now, n);
    let same = |key: &str, given: Value| !obj.contains_key(key) || now[key] == given;
    let unchanged = same("provider:network_type", json!(req.network_type))
        && same("provider:physical_network", json!(req.physical_network))
        && same("provider:segmentation_id", json!(req.segmentation_id));
    if unchanged {
        Ok(())
    } else {
        Err(invalid("Plugin does not support updating provider attributes"))
    }
}
