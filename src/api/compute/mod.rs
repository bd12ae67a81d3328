//! Compute v2.1 (nova): version documents, servers, flavors, keypairs, server groups, usage,
//! hosts and limits.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::middleware;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{base_url, AppState};

pub mod aggregates;
pub mod flavors;
pub mod hosts;
pub mod instance_actions;
pub mod keypairs;
pub mod microversion;
pub mod migrations;
pub mod remote_consoles;
pub mod server_groups;
pub mod server_list;
pub mod server_metadata;
pub mod server_password;
pub mod server_security_groups;
pub mod server_tags;
pub mod servers;
pub mod usage;
pub mod validation;
pub mod volume_attachments;

pub fn router() -> Router<AppState> {
    let v21 = Router::new()
        .route("/", get(version))
        .route("/servers", get(server_list::list).post(servers::create))
        .route("/servers/detail", get(server_list::list_detail))
        .route("/servers/{id}", get(servers::show).put(servers::update).delete(servers::delete))
        .route("/servers/{id}/action", post(servers::action))
        .route("/servers/{id}/ips", get(servers::ips))
        .route(
            "/servers/{id}/metadata",
            get(server_metadata::index).post(server_metadata::create).put(server_metadata::update_all),
        )
        .route(
            "/servers/{id}/metadata/{key}",
            get(server_metadata::show).put(server_metadata::update).delete(server_metadata::delete),
        )
        .route(
            "/servers/{id}/tags",
            get(server_tags::index).put(server_tags::update_all).delete(server_tags::delete_all),
        )
        .route("/servers/{id}/tags/{tag}", get(server_tags::show).put(server_tags::update).delete(server_tags::delete))
        .route("/servers/{id}/os-server-password", get(server_password::show).delete(server_password::clear))
        .route("/servers/{id}/os-instance-actions", get(instance_actions::index))
        .route("/servers/{id}/os-instance-actions/{request_id}", get(instance_actions::show))
        .route("/servers/{id}/ips/{network}", get(servers::ips_on_network))
        .route("/servers/{id}/os-security-groups", get(server_security_groups::list))
        .route("/servers/{id}/remote-consoles", post(remote_consoles::create))
        .route("/servers/{id}/os-volume_attachments", get(volume_attachments::list).post(volume_attachments::create))
        .route(
            "/servers/{id}/os-volume_attachments/{volume_id}",
            get(volume_attachments::show).delete(volume_attachments::delete),
        )
        .route("/flavors", get(flavors::list).post(flavors::create))
        .route("/flavors/detail", get(flavors::list_detail))
        .route("/flavors/{id}", get(flavors::show).put(flavors::update).delete(flavors::delete))
        .route("/flavors/{id}/action", post(flavors::action))
        .route("/flavors/{id}/os-flavor-access", get(flavors::access_list))
        .route("/flavors/{id}/os-extra_specs", get(flavors::extra_specs).post(flavors::set_extra_specs))
        .route(
            "/flavors/{id}/os-extra_specs/{key}",
            get(flavors::extra_spec).put(flavors::set_extra_spec).delete(flavors::delete_extra_spec),
        )
        .route("/os-keypairs", get(keypairs::list).post(keypairs::create))
        .route("/os-keypairs/{name}", get(keypairs::show).delete(keypairs::delete))
        .route("/os-server-groups", get(server_groups::list).post(server_groups::create))
        .route("/os-server-groups/{id}", get(server_groups::show).delete(server_groups::delete))
        .route("/os-simple-tenant-usage", get(usage::list))
        .route("/os-simple-tenant-usage/{project}", get(usage::show))
        .route("/os-hypervisors", get(hosts::hypervisors))
        .route("/os-hypervisors/detail", get(hosts::hypervisors_detail))
        .route("/os-hypervisors/statistics", get(hosts::hypervisor_statistics))
        .route("/os-hypervisors/{id}", get(hosts::hypervisor))
        .route("/os-hypervisors/{id}/uptime", get(hosts::hypervisor_uptime))
        .route("/os-services", get(hosts::services))
        .route("/os-services/{id}", axum::routing::put(hosts::update_service))
        .route("/os-aggregates", get(aggregates::list).post(aggregates::create))
        .route("/os-aggregates/{id}", get(aggregates::show).put(aggregates::update).delete(aggregates::delete))
        .route("/os-aggregates/{id}/action", post(aggregates::action))
        .route("/os-availability-zone", get(hosts::availability_zones))
        .route("/os-availability-zone/detail", get(hosts::availability_zones_detail))
        .route("/limits", get(hosts::limits))
        .route(
            "/os-quota-sets/{project}",
            get(hosts::quota_set).put(hosts::update_quota_set).delete(hosts::delete_quota_set),
        )
        .route("/os-quota-class-sets/{class}", get(hosts::quota_class_set).put(hosts::update_quota_class_set))
        .route("/os-quota-sets/{project}/detail", get(hosts::quota_set_detail))
        .route("/os-quota-sets/{project}/defaults", get(hosts::quota_set_defaults))
        // Issue 16: resizes as nova's migrations.
        .route("/os-migrations", get(migrations::list));
    Router::new()
        .route("/", get(versions))
        .route("/v2.1/", get(version))
        .nest("/v2.1", v21)
        // A fallback of our own, so unknown paths under the prefix get nova's error body.
        .fallback(|| async { super::fault::ApiError::not_found("The resource could not be found.") })
        .layer(middleware::from_fn(microversion::negotiate))
}

fn version_doc(base: &str) -> Value {
    json!({
        "id": "v2.1",
        "status": "CURRENT",
        "version": microversion::MAX.to_string(),
        "min_version": microversion::MIN.to_string(),
        "updated": "2013-07-23T11:33:21Z",
        "links": [
            {"rel": "self", "href": format!("{base}/compute/v2.1/")},
            {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
        ],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}],
    })
}

/// Says plainly, only while they are on, that faults can be injected here (issue 23); with
/// faults off the document is nova's exactly (tempest's schema allows no other key).
fn with_faults_note(mut doc: Value, state: &AppState) -> Value {
    if state.faults.enabled() {
        doc["novabox:faults"] =
            json!("enabled: this cloud fails on purpose when an admin asks it to (/novabox/v1/faults)");
    }
    doc
}

pub async fn versions(headers: HeaderMap, State(state): State<AppState>) -> Json<Value> {
    Json(json!({"versions": [with_faults_note(version_doc(&base_url(&headers, &state.config)), &state)]}))
}

async fn version(headers: HeaderMap, State(state): State<AppState>) -> Json<Value> {
    Json(json!({"version": with_faults_note(version_doc(&base_url(&headers, &state.config)), &state)}))
}

/// `{base}/compute/v2.1/{project}/{kind}/{id}` and its bookmark, as nova's links.
pub fn links(base: &str, kind: &str, id: &str) -> Value {
    json!([
        {"rel": "self", "href": format!("{base}/compute/v2.1/{kind}/{id}")},
        {"rel": "bookmark", "href": format!("{base}/compute/{kind}/{id}")},
    ])
}

/// Parses a JSON body, turning syntax and type errors into nova's 400 (and too large into 413).
pub fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(Value, T), super::fault::ApiError> {
    let Json(v) = body.map_err(|e| super::fault::ApiError::from_json_rejection(e, "Malformed request body"))?;
    let t = serde_json::from_value(v.clone())
        .map_err(|e| super::fault::ApiError::bad_request(format!("Invalid input for field/attribute: {e}")))?;
    Ok((v, t))
}

#[cfg(test)]
mod papercut_tests;
#[cfg(test)]
mod tests;
