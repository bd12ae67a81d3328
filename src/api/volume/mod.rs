//! Block Storage v3 (cinder), the part compute and the standard clients call: version
//! documents, volumes (create blank or from an image, list, detail, show, update, delete),
//! quota sets and limits, the one volume type, availability zones and extensions, with
//! cinder's shapes at microversion 3.0 and cinder's fault bodies (nova's format). Attaching
//! goes through compute (`os-volume_attachments`), as in OpenStack.
//!
//! Tenancy as cinder: a project sees its own volumes, admins all with `all_tenants`; another
//! project's volume is 404. A URL naming another project than the token's is 400.

mod quotas;
mod types;
mod volumes;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::context::Auth;
use super::fault::{ApiError, ApiResult};
use super::{base_url, AppState};

pub use types::DEFAULT_TYPE_NAME;

/// The one microversion implemented; advertised as both min and max so clients never ask
/// for shapes this service does not produce.
pub const VERSION: &str = "3.0";

pub fn router() -> Router<AppState> {
    let v3 = Router::new()
        .route("/", get(version))
        .route("/{project_id}/volumes", get(volumes::list).post(volumes::create))
        .route("/{project_id}/volumes/detail", get(volumes::list_detail))
        .route("/{project_id}/volumes/{id}", get(volumes::show).put(volumes::update).delete(volumes::delete))
        .route("/{project_id}/os-quota-sets/{target}", get(quotas::show).put(quotas::update).delete(quotas::delete))
        .route("/{project_id}/os-quota-sets/{target}/defaults", get(quotas::defaults))
        .route("/{project_id}/limits", get(quotas::limits))
        .route("/{project_id}/types", get(types::list))
        .route("/{project_id}/types/{id}", get(types::show))
        .route("/{project_id}/os-availability-zone", get(types::availability_zones))
        .route("/{project_id}/extensions", get(types::extensions));
    Router::new()
        .route("/", get(versions))
        .route("/v3/", get(version))
        .nest("/v3", v3)
        .fallback(|| async { ApiError::not_found("The resource could not be found.") })
        .layer(middleware::from_fn(negotiate))
}

/// The microversion a request asks for, as cinder reads `OpenStack-API-Version: volume 3.X`:
/// none or `latest` is the one implemented, a malformed one 400, any other 406.
fn requested(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get_all("openstack-api-version").iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        v.split(',').map(str::trim).find_map(|part| {
            let (service, version) = part.split_once(' ')?;
            service.eq_ignore_ascii_case("volume").then(|| version.trim().to_string())
        })
    }) else {
        return Ok(());
    };
    if value.eq_ignore_ascii_case("latest") {
        return Ok(());
    }
    let parsed =
        value.split_once('.').and_then(|(major, minor)| Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?)));
    match parsed {
        None => Err(ApiError::bad_request(format!(
            "API Version String {value} is of invalid format. Must be of format MajorNum.MinorNum."
        ))),
        Some((3, 0)) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!("Version {value} is not supported by the API. Minimum is {VERSION} and maximum is {VERSION}."),
        )),
    }
}

/// Checks the asked microversion on the API's resources (the version documents take any),
/// and names the one every answer was made with, as cinder's.
async fn negotiate(req: Request, next: Next) -> Response {
    let path = req.uri().path().trim_end_matches('/');
    let resource = path.contains("/v3/");
    let mut resp = match requested(req.headers()) {
        Err(e) if resource => e.into_response(),
        _ => next.run(req).await,
    };
    let h = resp.headers_mut();
    h.insert("openstack-api-version", HeaderValue::from_static("volume 3.0"));
    h.insert("vary", HeaderValue::from_static("OpenStack-API-Version"));
    resp
}

fn version_doc(base: &str) -> Value {
    json!({
        "id": "v3.0",
        "status": "CURRENT",
        "version": VERSION,
        "min_version": VERSION,
        "updated": "2016-02-08T12:20:21Z",
        "links": [
            {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
            {"rel": "self", "href": format!("{base}/volume/v3/")},
        ],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}],
    })
}

/// `GET /volume/`: 300 Multiple Choices with the one version, as cinder.
pub async fn versions(headers: HeaderMap, State(state): State<AppState>) -> Response {
    let doc = json!({"versions": [version_doc(&base_url(&headers, &state.config))]});
    (StatusCode::MULTIPLE_CHOICES, Json(doc)).into_response()
}

async fn version(headers: HeaderMap, State(state): State<AppState>) -> Json<Value> {
    Json(json!({"versions": [version_doc(&base_url(&headers, &state.config))]}))
}

/// The project in the URL must be the token's (cinder's "Malformed request url").
fn check_project(auth: &Auth, project_id: &str) -> ApiResult<()> {
    if project_id == auth.project_id() || auth.is_admin() {
        Ok(())
    } else {
        Err(ApiError::bad_request("Malformed request url: the project in the URL is not the token's project."))
    }
}

/// cinder's timestamps: no zone, microseconds.
fn timestamp(ts: &str) -> String {
    format!("{}.000000", ts.trim_end_matches('Z'))
}

#[cfg(test)]
mod tests;
