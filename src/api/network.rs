//! Network v2.0 (neutron).

use axum::Router;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
}
