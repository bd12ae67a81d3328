//! A rule as a user writes it ([`RuleSpec`], the API's body), checked into what the table
//! holds ([`Rule`]): what it matches, its effect, and when it fires. Pure code: no clock
//! reads, no I/O, so every refusal is unit-tested.

use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::catalog::{self, Exception, Step};

/// A rule as POST /novabox/v1/faults takes it (`{"fault": {...}}`), and `novabox fault add`
/// builds it. Matchers are ANDed; exactly one effect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    // What it matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_method: Option<String>,
    /// A server id, or a regular expression on its name (as nova's `name` filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    // Its effect.
    /// One of nova's exceptions by name (see `catalog::EXCEPTIONS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The reason in the exception's message, or the whole message of an error without a
    /// name, or the body's message of a status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Seconds to hold the step (or the request) before it goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<f64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kill: bool,
    /// After a kill: seconds until the compute service starts again (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_after: Option<u64>,
    // When it fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// Let this many matches pass before firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Seconds (by the test clock) until the rule is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
}

/// What a rule matches, checked.
#[derive(Debug, Clone)]
pub enum Target {
    /// An RPC step (or every step of a service, or every step when both are None), maybe
    /// narrowed to a server and a project.
    Step {
        service: Option<&'static str>,
        step: Option<&'static str>,
        server: Option<ServerMatch>,
        project: Option<String>,
    },
    /// An API route and method.
    Route { segments: Vec<String>, method: Option<String> },
}

/// A server by id, or by a pattern on its name.
#[derive(Debug, Clone)]
pub struct ServerMatch {
    pub text: String,
    pub name: Regex,
}

impl ServerMatch {
    pub fn matches(&self, uuid: Option<&str>, name: Option<&str>) -> bool {
        uuid.is_some_and(|u| u == self.text) || name.is_some_and(|n| self.name.is_match(n))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// One of nova's exceptions, or a message of the rule's own (`exception` None).
    Error {
        exception: Option<&'static Exception>,
        reason: Option<String>,
    },
    Status {
        status: u16,
        message: String,
        retry_after: Option<u64>,
    },
    Delay(Duration),
    Drop,
    Kill {
        restart_after: Duration,
    },
}

impl Effect {
    pub fn kind(&self) -> &'static str {
        match self {
            Effect::Error { .. } => "error",
            Effect::Status { .. } => "status",
            Effect::Delay(_) => "delay",
            Effect::Drop => "drop",
            Effect::Kill { .. } => "kill",
        }
    }

    /// The message an error leaves as the instance's fault.
    pub fn error_message(&self, uuid: &str, host: &str) -> String {
        match self {
            Effect::Error { exception: Some(e), reason } => e.message(reason.as_deref(), uuid, host),
            Effect::Error { exception: None, reason } => reason.clone().unwrap_or_default(),
            other => format!("injected {}", other.kind()),
        }
    }
}

/// The most seconds a delay may hold a step: longer than any client waits for a build.
pub const MAX_DELAY_SECS: f64 = 3600.0;
/// The most seconds a killed compute service stays down.
pub const MAX_RESTART_AFTER_SECS: u64 = 3600;

/// Why a rule was refused. Each message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("unknown service `{0}`; valid services: {list}", list = catalog::SERVICES.join(", "))]
    UnknownService(String),
    #[error("`{service}` has no step `{method}`; its steps: {list}", list = catalog::step_names(service).join(", "))]
    UnknownStep { service: String, method: String },
    #[error("no service has a step `{0}`; valid steps: {list}", list = all_steps())]
    UnknownMethod(String),
    #[error("`{0}` is a step of several services ({1}): name the service too")]
    AmbiguousMethod(String, String),
    #[error("unknown exception `{0}`; valid exceptions: {list}", list = catalog::exception_names().join(", "))]
    UnknownException(String),
    #[error("route `{0}` is not an API route: it must start with one of {list} (for example /compute/v2.1/servers)", list = catalog::ROUTE_PREFIXES.join(", "))]
    UnknownRoute(String),
    #[error("unknown HTTP method `{0}`; valid methods: {list}", list = catalog::HTTP_METHODS.join(", "))]
    UnknownHttpMethod(String),
    #[error("server `{0}` is neither a server id nor a valid name pattern: {1}")]
    BadServerPattern(String, String),
    #[error("a rule needs exactly one effect (error, status, delay, drop or kill); this one has {0}")]
    Effects(String),
    #[error("a rule must match something: a service and method, a route and method, a server or a project")]
    MatchesNothing,
    #[error("this rule can never match: {0}")]
    NeverMatches(String),
    #[error("`{field} = {value}` is not allowed: {reason}")]
    Invalid { field: &'static str, value: String, reason: String },
}

fn all_steps() -> String {
    catalog::STEPS.iter().map(|s| format!("{} {}", s.service, s.name)).collect::<Vec<_>>().join(", ")
}

fn invalid(field: &'static str, value: impl ToString, reason: &str) -> RuleError {
    RuleError::Invalid { field, value: value.to_string(), reason: reason.into() }
}

/// A checked rule: what the table holds (its counters live beside it, in the table).
#[derive(Debug, Clone)]
pub struct Rule {
    pub target: Target,
    pub effect: Effect,
    pub times: Option<u64>,
    pub probability: Option<f64>,
    pub after: u64,
    pub expires_in: Option<Duration>,
    /// The spec it came from, canonical names filled in, for `fault list`.
    pub spec: RuleSpec,
}

impl RuleSpec {
    /// Checks the spec. `refusal` says why a rule is refused, with the valid names.
    pub fn check(&self) -> Result<Rule, RuleError> {
        let mut spec = self.clone();
        let effect = self.effect()?;
        let rpc = self.service.is_some() || self.method.is_some();
        let http = self.route.is_some() || self.http_method.is_some();
        let instance_side = self.server.is_some() || self.project.is_some();
        if !rpc && !http && !instance_side {
            return Err(RuleError::MatchesNothing);
        }
        if rpc && http {
            return Err(RuleError::NeverMatches(
                "a request is either an API call (route) or a step between services (service, method), never both"
                    .into(),
            ));
        }
        let target = if http {
            if instance_side {
                return Err(RuleError::NeverMatches(
                    "a route rule answers before the request's token is read, so it cannot also name a server or a project".into(),
                ));
            }
            let Some(route) = &self.route else {
                return Err(RuleError::NeverMatches("an HTTP method alone names no route: add `route`".into()));
            };
            let path = route.split('?').next().unwrap_or_default();
            if !catalog::ROUTE_PREFIXES.iter().any(|p| path == *p || path.starts_with(&format!("{p}/"))) {
                return Err(RuleError::UnknownRoute(route.clone()));
            }
            let method = match &self.http_method {
                Some(m) => {
                    let upper = m.to_ascii_uppercase();
                    if !catalog::HTTP_METHODS.contains(&upper.as_str()) {
                        return Err(RuleError::UnknownHttpMethod(m.clone()));
                    }
                    spec.http_method = Some(upper.clone());
                    Some(upper)
                }
                None => None,
            };
            match &effect {
                Effect::Status { .. } | Effect::Delay(_) => {}
                other => {
                    return Err(RuleError::NeverMatches(format!(
                    "an API route answers a status or waits (`status`, `delay`); `{}` is for steps between services",
                    other.kind()
                )))
                }
            }
            let segments = path.trim_end_matches('/').split('/').skip(1).map(str::to_string).collect();
            Target::Route { segments, method }
        } else {
            let step = self.step()?;
            let service = match (&self.service, step) {
                (_, Some(s)) => Some(s.service),
                (Some(name), None) => Some(
                    *catalog::SERVICES
                        .iter()
                        .find(|s| **s == name.as_str())
                        .ok_or_else(|| RuleError::UnknownService(name.clone()))?,
                ),
                (None, None) => None,
            };
            spec.service = service.map(str::to_string);
            spec.method = step.map(|s| s.name.to_string());
            if let (Some(s), true) = (step, instance_side) {
                if !s.instance && self.server.is_some() {
                    return Err(RuleError::NeverMatches(format!(
                        "`{} {}` works on no single server, so `server` never matches it",
                        s.service, s.name
                    )));
                }
            }
            if matches!(effect, Effect::Status { .. }) {
                return Err(RuleError::NeverMatches(
                    "a step between services has no HTTP status: use `error` (nova's exceptions) there, `status` with a `route`".into(),
                ));
            }
            if matches!(effect, Effect::Kill { .. }) && service != Some("compute") {
                return Err(RuleError::NeverMatches(
                    "`kill` ends the compute service: name `service compute` (or a compute step)".into(),
                ));
            }
            let server = match &self.server {
                None => None,
                Some(text) => {
                    // An id matches itself; a name is a regular expression, as nova's filter.
                    let name =
                        Regex::new(text).map_err(|e| RuleError::BadServerPattern(text.clone(), e.to_string()))?;
                    Some(ServerMatch { text: text.clone(), name })
                }
            };
            if self.project.as_deref().is_some_and(str::is_empty) {
                return Err(invalid("project", "\"\"", "name a project id"));
            }
            Target::Step { service, step: step.map(|s| s.name), server, project: self.project.clone() }
        };
        if let Some(t) = self.times {
            if t == 0 {
                return Err(RuleError::NeverMatches("`times = 0` never fires".into()));
            }
        }
        if let Some(p) = self.probability {
            if !(p > 0.0 && p <= 1.0) {
                return Err(invalid("probability", p, "a probability fires when it is above 0 and at most 1"));
            }
        }
        if self.expires_in == Some(0) {
            return Err(RuleError::NeverMatches("`expires_in = 0` is over before it starts".into()));
        }
        Ok(Rule {
            target,
            effect,
            times: self.times,
            probability: self.probability,
            after: self.after.unwrap_or(0),
            expires_in: self.expires_in.map(Duration::from_secs),
            spec,
        })
    }

    fn step(&self) -> Result<Option<&'static Step>, RuleError> {
        let Some(method) = &self.method else { return Ok(None) };
        match &self.service {
            Some(service) => {
                if !catalog::SERVICES.contains(&service.as_str()) {
                    return Err(RuleError::UnknownService(service.clone()));
                }
                catalog::find_step(service, method)
                    .map(Some)
                    .ok_or_else(|| RuleError::UnknownStep { service: service.clone(), method: method.clone() })
            }
            None => match catalog::steps_named(method).as_slice() {
                [] => Err(RuleError::UnknownMethod(method.clone())),
                [one] => Ok(Some(*one)),
                many => Err(RuleError::AmbiguousMethod(
                    method.clone(),
                    many.iter().map(|s| s.service).collect::<Vec<_>>().join(", "),
                )),
            },
        }
    }

    fn effect(&self) -> Result<Effect, RuleError> {
        let mut named = Vec::new();
        if self.error.is_some() || (self.message.is_some() && self.status.is_none()) {
            named.push("error");
        }
        if self.status.is_some() {
            named.push("status");
        }
        if self.delay.is_some() {
            named.push("delay");
        }
        if self.drop {
            named.push("drop");
        }
        if self.kill {
            named.push("kill");
        }
        if named.len() != 1 {
            let which = if named.is_empty() { "none".to_string() } else { named.join(" and ") };
            return Err(RuleError::Effects(which));
        }
        if self.retry_after.is_some() && self.status.is_none() {
            return Err(invalid("retry_after", self.retry_after.unwrap_or_default(), "it goes with a `status`"));
        }
        if self.restart_after.is_some() && !self.kill {
            return Err(invalid("restart_after", self.restart_after.unwrap_or_default(), "it goes with `kill`"));
        }
        Ok(match named[0] {
            "error" => {
                let exception = match &self.error {
                    Some(name) => {
                        Some(catalog::find_exception(name).ok_or_else(|| RuleError::UnknownException(name.clone()))?)
                    }
                    None => None,
                };
                if exception.is_none() && self.message.as_deref().is_none_or(|m| m.trim().is_empty()) {
                    return Err(invalid("message", "\"\"", "an error of your own needs a message"));
                }
                Effect::Error { exception, reason: self.message.clone() }
            }
            "status" => {
                let status = self.status.unwrap_or_default();
                if !(400..=599).contains(&status) {
                    return Err(invalid("status", status, "an injected status is an error, 400 to 599"));
                }
                let message = self.message.clone().unwrap_or_else(|| catalog::status_message(status));
                Effect::Status { status, message, retry_after: self.retry_after }
            }
            "delay" => {
                let secs = self.delay.unwrap_or_default();
                if !(secs > 0.0 && secs <= MAX_DELAY_SECS) {
                    return Err(invalid("delay", secs, "a delay is more than 0 and at most 3600 seconds"));
                }
                Effect::Delay(Duration::from_secs_f64(secs))
            }
            "drop" => Effect::Drop,
            _ => {
                let secs = self.restart_after.unwrap_or(5);
                if secs > MAX_RESTART_AFTER_SECS {
                    return Err(invalid("restart_after", secs, "at most 3600 seconds"));
                }
                Effect::Kill { restart_after: Duration::from_secs(secs) }
            }
        })
    }
}

/// Where a step runs, as the hooks describe it to the table.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepCall<'a> {
    pub service: &'a str,
    pub step: &'a str,
    pub instance_uuid: Option<&'a str>,
    pub instance_name: Option<&'a str>,
    pub project_id: Option<&'a str>,
}

impl Rule {
    /// Whether the rule's target is this step (counters and odds aside).
    pub fn matches_step(&self, call: &StepCall<'_>) -> bool {
        let Target::Step { service, step, server, project } = &self.target else { return false };
        service.is_none_or(|s| s == call.service)
            && step.is_none_or(|s| s == call.step)
            && server.as_ref().is_none_or(|m| m.matches(call.instance_uuid, call.instance_name))
            && project.as_deref().is_none_or(|p| call.project_id == Some(p))
    }

    /// Whether the rule's target is this API request: `path` is the whole path (with its
    /// service prefix). `*` in a rule's route stands for one segment, a final `**` for any rest.
    pub fn matches_route(&self, method: &str, path: &str) -> bool {
        let Target::Route { segments, method: want } = &self.target else { return false };
        if want.as_deref().is_some_and(|m| m != method) {
            return false;
        }
        let got: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let mut i = 0;
        for (n, seg) in segments.iter().enumerate() {
            if seg == "**" && n == segments.len() - 1 {
                return true;
            }
            let Some(g) = got.get(i) else { return false };
            let wild = seg == "*" || (seg.starts_with('{') && seg.ends_with('}'));
            if !wild && seg != g {
                return false;
            }
            i += 1;
        }
        i == got.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> RuleSpec {
        serde_json::from_value(json).unwrap()
    }

    fn refusal(json: serde_json::Value) -> String {
        spec(json).check().unwrap_err().to_string()
    }

    #[test]
    fn unknown_names_are_refused_with_the_valid_ones() {
        let e = refusal(serde_json::json!({"service": "nova", "method": "spawn", "error": "NoValidHost"}));
        assert!(e.contains("unknown service `nova`") && e.contains("scheduler, compute, conductor"), "{e}");
        let e = refusal(serde_json::json!({"service": "compute", "method": "spwan", "error": "NoValidHost"}));
        assert!(e.contains("`compute` has no step `spwan`") && e.contains("spawning"), "{e}");
        let e = refusal(serde_json::json!({"method": "frobnicate", "drop": true}));
        assert!(e.contains("no service has a step `frobnicate`") && e.contains("conductor allocate_network"), "{e}");
        let e = refusal(serde_json::json!({"service": "compute", "method": "spawn", "error": "NoValidHosts"}));
        assert!(e.contains("unknown exception `NoValidHosts`") && e.contains("BuildAbortException"), "{e}");
        let e = refusal(serde_json::json!({"route": "/nova/servers", "status": 503}));
        assert!(e.contains("/compute") && e.contains("not an API route"), "{e}");
        let e = refusal(serde_json::json!({"route": "/compute/v2.1/servers", "http_method": "FETCH", "status": 503}));
        assert!(e.contains("valid methods: GET"), "{e}");
    }

    #[test]
    fn rules_that_can_never_match_are_refused() {
        for (json, why) in [
            (serde_json::json!({"error": "NoValidHost"}), "must match something"),
            (serde_json::json!({"service": "compute", "route": "/compute/v2.1/servers", "status": 503}), "never both"),
            (serde_json::json!({"route": "/compute/v2.1/servers", "project": "p1", "status": 503}), "token"),
            (serde_json::json!({"http_method": "GET", "status": 503}), "add `route`"),
            (serde_json::json!({"service": "compute", "method": "spawn", "status": 503}), "no HTTP status"),
            (serde_json::json!({"route": "/compute/v2.1/servers", "error": "NoValidHost"}), "steps between services"),
            (serde_json::json!({"service": "scheduler", "kill": true}), "ends the compute service"),
            (
                serde_json::json!({"service": "conductor", "method": "service_report", "server": "vm1", "drop": true}),
                "no single server",
            ),
            (
                serde_json::json!({"service": "compute", "method": "spawn", "error": "NoValidHost", "times": 0}),
                "never fires",
            ),
            (
                serde_json::json!({"service": "compute", "method": "spawn", "drop": true, "expires_in": 0}),
                "over before",
            ),
        ] {
            let e = refusal(json.clone());
            assert!(e.contains(why), "{json}: {e}");
        }
        assert!(
            refusal(serde_json::json!({"service": "compute", "drop": true, "kill": true})).contains("drop and kill")
        );
        assert!(refusal(serde_json::json!({"service": "compute"})).contains("has none"));
        assert!(refusal(serde_json::json!({"service": "compute", "drop": true, "probability": 0.0}))
            .contains("probability"));
        assert!(refusal(serde_json::json!({"route": "/compute/x", "status": 200})).contains("400 to 599"));
        assert!(refusal(serde_json::json!({"service": "compute", "delay": 0})).contains("delay"));
        assert!(refusal(serde_json::json!({"server": "(", "drop": true})).contains("name pattern"));
    }

    #[test]
    fn names_are_made_canonical_and_aliases_accepted() {
        let r = spec(serde_json::json!({"method": "driver.spawn", "error": "NoValidHost"})).check().unwrap();
        assert_eq!((r.spec.service.as_deref(), r.spec.method.as_deref()), (Some("compute"), Some("spawn")));
        let r = spec(serde_json::json!({"service": "scheduler", "method": "select_host", "error": "NoValidHost"}))
            .check()
            .unwrap();
        assert_eq!(r.spec.method.as_deref(), Some("select_destinations"));
        let r = spec(serde_json::json!({"route": "/compute/v2.1/servers", "http_method": "post", "status": 429, "retry_after": 2}))
            .check()
            .unwrap();
        assert_eq!(r.spec.http_method.as_deref(), Some("POST"));
        assert_eq!(
            r.effect,
            Effect::Status { status: 429, message: "This request was rate-limited.".into(), retry_after: Some(2) }
        );
    }

    #[test]
    fn steps_match_on_every_given_part() {
        let r = spec(
            serde_json::json!({"service": "compute", "method": "spawn", "server": "^web-", "error": "NoValidHost"}),
        )
        .check()
        .unwrap();
        let call = StepCall {
            service: "compute",
            step: "spawn",
            instance_uuid: Some("u1"),
            instance_name: Some("web-1"),
            project_id: Some("p1"),
        };
        assert!(r.matches_step(&call));
        assert!(!r.matches_step(&StepCall { instance_name: Some("db-1"), ..call }));
        assert!(!r.matches_step(&StepCall { step: "spawning", ..call }));
        let by_id = spec(serde_json::json!({"server": "u1", "project": "p1", "drop": true})).check().unwrap();
        assert!(by_id.matches_step(&StepCall { instance_name: Some("zzz"), ..call }));
        assert!(by_id.matches_step(&StepCall { service: "scheduler", step: "select_destinations", ..call }));
        assert!(!by_id.matches_step(&StepCall { project_id: Some("p2"), ..call }));
        assert!(!by_id.matches_route("GET", "/compute/v2.1/servers"));
    }

    #[test]
    fn routes_match_segments_with_wildcards() {
        let r = |route: &str, method: Option<&str>| {
            spec(serde_json::json!({"route": route, "http_method": method, "status": 503})).check().unwrap()
        };
        let servers = r("/compute/v2.1/servers", Some("POST"));
        assert!(servers.matches_route("POST", "/compute/v2.1/servers"));
        assert!(servers.matches_route("POST", "/compute/v2.1/servers/"));
        assert!(!servers.matches_route("GET", "/compute/v2.1/servers"));
        assert!(!servers.matches_route("POST", "/compute/v2.1/servers/detail"));
        let one = r("/compute/v2.1/servers/{id}", None);
        assert!(one.matches_route("GET", "/compute/v2.1/servers/abc"));
        assert!(one.matches_route("DELETE", "/compute/v2.1/servers/abc"));
        assert!(!one.matches_route("GET", "/compute/v2.1/servers/abc/action"));
        let all = r("/network/**", None);
        assert!(all.matches_route("GET", "/network/v2.0/ports"));
        assert!(!all.matches_route("GET", "/compute/v2.1/servers"));
    }
}
