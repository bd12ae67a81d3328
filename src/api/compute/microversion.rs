//! Compute API microversions: `OpenStack-API-Version: compute 2.X` (or the legacy
//! `X-OpenStack-Nova-API-Version`). No header means 2.1, `latest` means the maximum,
//! a malformed value is 400 and one out of range 406. Every response echoes the version.

use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::fault::ApiError;

/// The lowest and highest `2.X` this API implements exactly.
pub const MIN: Microversion = Microversion(1);
pub const MAX: Microversion = Microversion(79);

/// The minor number of `2.X`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Microversion(pub u32);

impl Microversion {
    pub fn at_least(self, minor: u32) -> bool {
        self.0 >= minor
    }
}

impl std::fmt::Display for Microversion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "2.{}", self.0)
    }
}

/// Parses the requested version out of the headers.
fn requested(headers: &axum::http::HeaderMap) -> Result<Microversion, ApiError> {
    let modern = headers.get_all("openstack-api-version").iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        // "compute 2.60" (several services may be listed, comma separated)
        v.split(',').map(str::trim).find_map(|part| {
            let (service, version) = part.split_once(' ')?;
            service.eq_ignore_ascii_case("compute").then(|| version.trim().to_string())
        })
    });
    let legacy =
        || headers.get("x-openstack-nova-api-version").and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string());
    let Some(value) = modern.or_else(legacy) else { return Ok(MIN) };
    if value.eq_ignore_ascii_case("latest") {
        return Ok(MAX);
    }
    let bad =
        || ApiError::bad_request(format!("Invalid API version request: {value:?}; use `compute 2.N` or `latest`."));
    let (major, minor) = value.split_once('.').ok_or_else(bad)?;
    let (major, minor): (u32, u32) = (major.parse().map_err(|_| bad())?, minor.parse().map_err(|_| bad())?);
    let v = Microversion(minor);
    if major != 2 || v < MIN || v > MAX {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!("Version {value} is not supported by the API. Minimum is {MIN} and maximum is {MAX}."),
        ));
    }
    Ok(v)
}

/// Negotiates the version, makes it available to handlers, and echoes it on every response.
pub async fn negotiate(mut req: Request<Body>, next: Next) -> Response {
    let (mut resp, v) = match requested(req.headers()) {
        Ok(v) => {
            req.extensions_mut().insert(v);
            (next.run(req).await, v)
        }
        Err(e) => (e.into_response(), MIN),
    };
    let h = resp.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("compute {v}")) {
        h.insert("openstack-api-version", value);
    }
    if let Ok(value) = HeaderValue::from_str(&v.to_string()) {
        h.insert("x-openstack-nova-api-version", value);
    }
    h.append("vary", HeaderValue::from_static("OpenStack-API-Version, X-OpenStack-Nova-API-Version"));
    resp
}

impl<S: Send + Sync> FromRequestParts<S> for Microversion {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Microversion>().copied().unwrap_or(MIN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn negotiation_rules() {
        assert_eq!(requested(&HeaderMap::new()).unwrap(), MIN);
        assert_eq!(requested(&with("openstack-api-version", "compute latest")).unwrap(), MAX);
        assert_eq!(requested(&with("openstack-api-version", "compute 2.47")).unwrap(), Microversion(47));
        assert_eq!(requested(&with("openstack-api-version", "volume 3.1, compute 2.60")).unwrap(), Microversion(60));
        assert_eq!(requested(&with("x-openstack-nova-api-version", "2.9")).unwrap(), Microversion(9));
        assert_eq!(requested(&with("openstack-api-version", "compute 2.200")).unwrap_err().status, 406);
        assert_eq!(requested(&with("openstack-api-version", "compute 3.0")).unwrap_err().status, 406);
        assert_eq!(requested(&with("openstack-api-version", "compute two")).unwrap_err().status, 400);
    }
}
