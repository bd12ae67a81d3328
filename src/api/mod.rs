//! The HTTP API: one listener, DevStack-style prefixes (`/identity`, `/compute`, `/image`,
//! `/network`, `/volume`), each service with its own error format.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::middleware;
use axum::Router;

use crate::bus::Bus;
use crate::config::Config;
use crate::db::SharedDb;
use crate::home::Home;

pub mod compute;
mod console_assets;
pub mod console_proxy;
pub mod context;
pub mod fault;
#[cfg(test)]
mod hostile_input;
pub mod identity;
pub mod image;
pub mod listing;
pub mod logins;
pub mod network;
pub mod novabox;
pub mod server;
#[cfg(test)]
pub(crate) mod testing;
pub mod volume;

use fault::{render_faults, Family};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: SharedDb,
    pub config: Arc<Config>,
    pub bus: Arc<dyn Bus>,
    pub home: Home,
    /// Password checks and the login lockout, shared by every request.
    pub logins: Arc<logins::Logins>,
    /// Injected faults and the test clock's API (docs/faults.md); disabled unless asked for.
    pub faults: Arc<crate::faults::FaultTable>,
}

impl AppState {
    /// The typed client for compute hosts, with the configured call timeout.
    pub fn compute_api(&self) -> crate::rpcapi::ComputeApi {
        crate::rpcapi::ComputeApi::new(
            self.bus.clone(),
            std::time::Duration::from_secs(self.config.bus.call_timeout_secs),
        )
    }
}

/// Wraps a service's router so its errors, unknown routes and wrong methods get the
/// service's error body.
/// The family also rides along as a request extension, so [`context::Auth`] knows whose
/// default policy (the member persona for writes) applies.
/// Injected faults answer inside the renderer, so an injected 503 has the service's body.
fn service(router: Router<AppState>, family: Family) -> Router<AppState> {
    router
        .layer(middleware::from_fn(novabox::faults::inject_http))
        .layer(middleware::from_fn(move |req, next| render_faults(family, req, next)))
        .layer(axum::Extension(family))
}

pub fn router(state: AppState) -> Router {
    let body_limit = (state.config.api.max_body_kb as usize) * 1024;
    let faults = state.faults.clone();
    Router::new()
        .nest("/identity", service(identity::router(), Family::Identity))
        .route("/identity/", axum::routing::get(identity::versions))
        .nest("/compute", service(compute::router(), Family::Compute))
        .route("/compute/", axum::routing::get(compute::versions))
        .nest("/image", service(image::router(), Family::Image))
        // A nested "/" matches only "/image", but clients also ask for "/image/".
        .route("/image/", axum::routing::get(image::versions))
        .nest("/network", service(network::router(), Family::Network))
        .route("/network/", axum::routing::get(network::versions))
        .nest("/volume", service(volume::router(), Family::Volume))
        .route("/volume/", axum::routing::get(volume::versions))
        .nest("/novabox", service(novabox::router(), Family::Compute))
        // Issue 22: the console proxies and noVNC's client (plain answers, no service's body).
        .nest("/console", console_proxy::router())
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(faults))
        .layer(middleware::from_fn(context::request_id))
        .with_state(state)
}

/// The scheme and authority clients used to reach us, for links and the catalog: the Host
/// header when there is one (port forwards and Vagrant keep working), the config otherwise.
pub fn base_url(headers: &HeaderMap, config: &Config) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c)));
    match host {
        Some(h) => format!("http://{h}"),
        None => config.auth_url().trim_end_matches("/identity/v3").to_string(),
    }
}

/// Serves `app` (from [`router`]) on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    timeouts: server::Timeouts,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve(listener, app, timeouts, shutdown).await
}
