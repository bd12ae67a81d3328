//! SSH keypairs: import a public key, or let the server generate a pair (below 2.92, as nova).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::{json, Value};

use super::microversion::Microversion;
use super::parse_body;
use crate::api::context::Auth;
use crate::api::fault::{ApiError, ApiResult};
use crate::api::listing::{self, Dialect, Paging, Params};
use crate::api::{base_url, AppState};
use crate::db::keypairs::Keypair;
use crate::policy::{Action, Target};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    keypair: NewKeypair,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeypair {
    name: String,
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default, rename = "type")]
    key_type: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

/// nova's fingerprint: MD5 of the key blob as colon-separated hex.
pub fn fingerprint(public_key: &str) -> Option<String> {
    let mut parts = public_key.split_whitespace();
    let kind = parts.next()?;
    if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-")) {
        return None;
    }
    let blob = base64::engine::general_purpose::STANDARD.decode(parts.next()?).ok()?;
    // The blob starts with its own algorithm name; a mismatch means a corrupted key.
    let name_len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    if blob.get(4..4 + name_len)? != kind.as_bytes() {
        return None;
    }
    let digest = Md5::digest(&blob);
    Some(digest.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
}

fn valid_name(name: &str) -> bool {
    (1..=255).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || " _-.@".contains(c))
}

/// A new ed25519 pair: (public key line, OpenSSH private key).
pub(super) fn generate(comment: &str) -> Result<(String, String), ApiError> {
    use argon2::password_hash::rand_core::OsRng;
    let mut key = ssh_key::PrivateKey::random(&mut OsRng, ssh_key::Algorithm::Ed25519)
        .map_err(|e| ApiError::internal(format!("key generation failed: {e}")))?;
    key.set_comment(comment);
    let private = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| ApiError::internal(format!("key encoding failed: {e}")))?
        .to_string();
    let public = key.public_key().to_openssh().map_err(|e| ApiError::internal(format!("key encoding failed: {e}")))?;
    Ok((public, private))
}

fn view(k: &Keypair, v: Microversion) -> Value {
    let mut o = json!({"name": k.name, "public_key": k.public_key, "fingerprint": k.fingerprint});
    if v.at_least(2) {
        o["type"] = json!(k.key_type);
    }
    o
}

pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let (_, CreateBody { keypair: b }) = parse_body::<CreateBody>(body)?;
    super::validation::name("name", &b.name)?;
    if !valid_name(&b.name) {
        return Err(ApiError::bad_request(
            "Keypair data is invalid: Keypair name contains unsafe characters or is not 1 to 255 long",
        ));
    }
    let key_type = b.key_type.unwrap_or_else(|| "ssh".into());
    if key_type != "ssh" && key_type != "x509" {
        return Err(ApiError::bad_request(format!("Invalid input for field/attribute type: {key_type}")));
    }
    let user_id = match b.user_id {
        Some(u) if u != auth.user_id() => {
            auth.require_admin()?;
            u
        }
        _ => auth.user_id().to_string(),
    };
    let (public_key, private_key) = match b.public_key {
        Some(pk) => (pk.trim().to_string(), None),
        None => {
            let (public, private) = generate(&format!("Generated-by-Nova {}", b.name))?;
            (public, Some(private))
        }
    };
    let fp = fingerprint(&public_key)
        .ok_or_else(|| ApiError::bad_request("Keypair data is invalid: failed to generate fingerprint"))?;
    // Count and insert in one transaction, so concurrent creates cannot pass the quota together.
    let kp = state.db.tx(|db| -> ApiResult<Keypair> {
        let limit = db.quota_limits(auth.project_id())?.get("key_pairs").copied().unwrap_or(-1);
        if limit >= 0 && db.keypairs(&user_id)?.len() as i64 >= limit {
            return Err(ApiError::forbidden("Quota exceeded, too many key pairs."));
        }
        Ok(db.create_keypair(&user_id, &b.name, &public_key, &fp, &key_type)?)
    })?;
    let mut o = view(&kp, v);
    o["user_id"] = json!(kp.user_id);
    if let Some(p) = private_key {
        o["private_key"] = json!(p);
    }
    let status = if v.at_least(2) { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({ "keypair": o }))).into_response())
}

/// `GET /os-keypairs`: the caller's keypairs, by name; another user's for the policy's
/// admins (`user_id`, 2.10); paged by name from 2.35.
pub async fn list(
    headers: HeaderMap,
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let params = Params(q);
    let known: &[&str] = match (v.at_least(10), v.at_least(35)) {
        (_, true) => &["user_id", "limit", "marker"],
        (true, false) => &["user_id"],
        _ => &[],
    };
    // nova's schema strips unknown parameters until 2.75 and refuses them after.
    if v.at_least(75) {
        if let Some(k) = params.keys().find(|k| !known.contains(k)) {
            return Err(ApiError::bad_request(format!("Additional properties are not allowed ('{k}' was unexpected)")));
        }
    }
    let params = Params(params.0.into_iter().filter(|(k, _)| known.contains(&k.as_str())).collect());
    let user_id = params.last("user_id").unwrap_or(auth.user_id()).to_string();
    if user_id != auth.user_id() {
        auth.authorize(Action::ComputeKeypairsOtherUser, &Target { user_id: Some(&user_id), ..Target::default() })?;
    }
    let paging = listing::paging(&params, Dialect::Nova)?;
    let list = state.db.with(|db| db.keypairs(&user_id))?;
    let paging = if v.at_least(35) { paging } else { Paging::default() };
    // Keypairs pass on nova's `MarkerNotFound` text, not the servers' `marker [x] not found`.
    let page = listing::page_by_id(
        list,
        &paging,
        |k| &k.name,
        |m| ApiError::bad_request(format!("Marker {m} could not be found.")),
    )?;
    let keypairs: Vec<Value> = page.items.iter().map(|k| json!({ "keypair": view(k, v) })).collect();
    let mut body = json!({ "keypairs": keypairs });
    let url = format!("{}/compute/v2.1/os-keypairs", base_url(&headers, &state.config));
    let last = page.items.last().map(|k| k.name.as_str());
    listing::add_next_link(&mut body, Dialect::Nova, "keypairs", &url, &params, page.end, last);
    Ok(Json(body))
}

/// Whose keypair a show or delete means: from 2.10 an admin may name another user with
/// `?user_id=` (nova ignores the parameter before 2.10).
fn whose(auth: &Auth, v: Microversion, q: &[(String, String)]) -> ApiResult<String> {
    let asked = q.iter().rev().find(|(k, _)| k == "user_id").map(|(_, u)| u.as_str()).filter(|_| v.at_least(10));
    match asked {
        Some(u) if u != auth.user_id() => {
            auth.authorize(Action::ComputeKeypairsOtherUser, &Target { user_id: Some(u), ..Target::default() })?;
            Ok(u.to_string())
        }
        _ => Ok(auth.user_id().to_string()),
    }
}

pub async fn show(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(name): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let user_id = whose(&auth, v, &q)?;
    let k = state
        .db
        .with(|db| db.keypair(&user_id, &name))?
        .ok_or_else(|| ApiError::not_found(format!("Keypair {name} not found for user {user_id}")))?;
    let mut o = view(&k, v);
    o["user_id"] = json!(k.user_id);
    o["id"] = json!(k.id);
    // nova shows keypair times without a zone suffix.
    o["created_at"] = json!(format!("{}.000000", k.created_at.trim_end_matches('Z')));
    o["updated_at"] = Value::Null;
    o["deleted"] = json!(false);
    o["deleted_at"] = Value::Null;
    Ok(Json(json!({ "keypair": o })))
}

pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Path(name): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<StatusCode> {
    let user_id = whose(&auth, v, &q)?;
    if !state.db.with(|db| db.delete_keypair(&user_id, &name))? {
        return Err(ApiError::not_found(format!("Keypair {name} not found for user {user_id}")));
    }
    Ok(if v.at_least(2) { StatusCode::NO_CONTENT } else { StatusCode::ACCEPTED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_nova_fingerprints() {
        let (public, private) = generate("Generated-by-Nova k").unwrap();
        assert!(public.starts_with("ssh-ed25519 "));
        assert!(private.contains("BEGIN OPENSSH PRIVATE KEY"));
        let fp = fingerprint(&public).unwrap();
        assert_eq!(fp.len(), 47);
        assert_eq!(fp.matches(':').count(), 15);
    }

    #[test]
    fn rejects_garbage_keys_and_names() {
        assert!(fingerprint("not a key").is_none());
        assert!(fingerprint("ssh-rsa AAAA!!!").is_none());
        // A valid blob under the wrong algorithm name.
        let (public, _) = generate("x").unwrap();
        let swapped = public.replacen("ssh-ed25519", "ssh-rsa", 1);
        assert!(fingerprint(&swapped).is_none());
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(valid_name("my key-1.2@x"));
    }
}
