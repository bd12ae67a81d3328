//! Fault injection (issue 23): rules that make a step of the real pipeline fail, wait, lose
//! its message or kill the compute service, and API routes answer an error status, so a CI
//! job can test how its code handles what real clouds do. Off unless `[faults] enabled = true`
//! or `up --faults`; see docs/faults.md.
//!
//! The [`FaultTable`] is shared by the services of `novabox up` (scheduler, conductor,
//! compute, API). Each hook asks it before doing the work ([`FaultTable::inject`] for steps
//! between services, [`FaultTable::check_route`] for API calls). Asking costs one relaxed
//! atomic load while no rule exists and no server carries a trigger, so a stack with faults
//! off (or on, with an empty table) pays nothing measurable; with rules, a read lock held
//! only to clone an `Arc` of the list, so adding a rule never waits for a request and a
//! request never waits for another.
//!
//! Rules live in memory: `novabox down`/`up` clears them (a CI job adds the rules it wants
//! after `up`). The clock they expire by is the test clock (`crate::clock`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tracing::Instrument;

use crate::bus::Context;
use crate::rpcapi::Notifier;

pub mod catalog;
pub mod rule;

pub use rule::{Effect, Rule, RuleError, RuleSpec, StepCall};

/// The metadata keys of the triggers a server can carry (when faults are enabled):
/// `novabox:fault = STEP:Exception[:reason]` and `novabox:delay = STEP:SECONDS`.
pub const FAULT_KEY: &str = "novabox:fault";
pub const DELAY_KEY: &str = "novabox:delay";

/// The event type of the notification each firing publishes (`novabox events` shows it).
pub const INJECTED_EVENT: &str = "novabox.fault.injected";

/// One rule in the table, with its counters.
#[derive(Debug)]
struct Entry {
    id: String,
    rule: Rule,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    /// Steps or requests that matched (whether it fired or not).
    seen: AtomicU64,
    fired: AtomicU64,
}

/// A rule as `fault list` and the API show it.
#[derive(Debug, Clone, Serialize)]
pub struct RuleView {
    pub id: String,
    #[serde(flatten)]
    pub spec: RuleSpec,
    pub effect: &'static str,
    pub seen: u64,
    pub fired: u64,
    /// Fired its `times`, or expired: it matches nothing more.
    pub spent: bool,
    pub created_at: String,
    pub expires_at: Option<String>,
}

/// A rule that fired for one step or request.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// The rule's id, or `metadata` for a server's own trigger.
    pub rule_id: String,
    pub effect: Effect,
}

/// What a step must do after asking the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Injected {
    /// Fail as the real failure would, with this message (nova's exception text).
    Error(String),
    /// Lose the message: do nothing more, leave every state as it is.
    Drop,
    /// The compute service is dying: stop where it is, clean nothing up.
    Kill,
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("no fault rule {0}")]
    NotFound(String),
    #[error("the table holds {MAX_RULES} rules already; remove some (`novabox fault rm ID` or `clear`)")]
    Full,
}

/// The most rules at once: each request walks them all.
pub const MAX_RULES: usize = 1000;

pub struct FaultTable {
    enabled: bool,
    rules: RwLock<Arc<Vec<Arc<Entry>>>>,
    /// Rules in the table: 0 lets every hook return at once.
    live: AtomicUsize,
    /// A kill's restart delay, bumped generation first, for the compute supervisor.
    kills: tokio::sync::watch::Sender<(u64, Duration)>,
    notifier: OnceLock<Notifier>,
}

impl std::fmt::Debug for FaultTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultTable").field("enabled", &self.enabled).field("rules", &self.live).finish()
    }
}

impl FaultTable {
    pub fn new(enabled: bool) -> FaultTable {
        FaultTable {
            enabled,
            rules: RwLock::new(Arc::new(Vec::new())),
            live: AtomicUsize::new(0),
            kills: tokio::sync::watch::channel((0, Duration::ZERO)).0,
            notifier: OnceLock::new(),
        }
    }

    /// The table of a stack with faults off: every hook returns at once, the API is 404.
    pub fn disabled() -> Arc<FaultTable> {
        Arc::new(FaultTable::new(false))
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// True while the table holds a rule (spent ones too): hooks skip costly look-ups otherwise.
    pub fn has_rules(&self) -> bool {
        self.enabled && self.live.load(Ordering::Relaxed) > 0
    }

    /// Where firings are published as notifications (set once by the stack).
    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Kill requests: the generation goes up by one per kill, with the restart delay.
    pub fn kills(&self) -> tokio::sync::watch::Receiver<(u64, Duration)> {
        self.kills.subscribe()
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Entry>>> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn replace(&self, f: impl FnOnce(&mut Vec<Arc<Entry>>)) {
        let mut guard = self.rules.write().unwrap_or_else(|e| e.into_inner());
        let mut list = guard.as_ref().clone();
        f(&mut list);
        self.live.store(list.len(), Ordering::Relaxed);
        *guard = Arc::new(list);
    }

    /// Checks `spec` and adds it; the new rule's view.
    pub fn add(&self, spec: &RuleSpec) -> Result<RuleView, FaultError> {
        let rule = spec.check()?;
        if self.live.load(Ordering::Relaxed) >= MAX_RULES {
            return Err(FaultError::Full);
        }
        let now = crate::clock::now();
        let expires_at = rule.expires_in.and_then(|d| chrono::Duration::from_std(d).ok()).map(|d| now + d);
        let entry = Arc::new(Entry {
            id: uuid::Uuid::new_v4().to_string(),
            rule,
            created_at: now,
            expires_at,
            seen: AtomicU64::new(0),
            fired: AtomicU64::new(0),
        });
        let view = view(&entry, now);
        tracing::warn!(rule = %entry.id, spec = ?entry.rule.spec, "fault rule added");
        self.replace(|list| list.push(entry));
        Ok(view)
    }

    pub fn list(&self) -> Vec<RuleView> {
        let now = crate::clock::now();
        self.snapshot().iter().map(|e| view(e, now)).collect()
    }

    pub fn get(&self, id: &str) -> Result<RuleView, FaultError> {
        let now = crate::clock::now();
        self.snapshot().iter().find(|e| e.id == id).map(|e| view(e, now)).ok_or_else(|| FaultError::NotFound(id.into()))
    }

    pub fn remove(&self, id: &str) -> Result<(), FaultError> {
        let mut found = false;
        self.replace(|list| {
            let before = list.len();
            list.retain(|e| e.id != id);
            found = list.len() != before;
        });
        if found {
            Ok(())
        } else {
            Err(FaultError::NotFound(id.into()))
        }
    }

    /// Removes every rule; how many there were.
    pub fn clear(&self) -> usize {
        let mut n = 0;
        self.replace(|list| {
            n = list.len();
            list.clear();
        });
        n
    }

    /// The rule that fires for this step, counting the match on every rule it matched on
    /// the way. Rules are asked in the order they were added; one fires at most.
    pub fn check_step(&self, call: &StepCall<'_>) -> Option<Firing> {
        if !self.enabled || self.live.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.first_firing(crate::clock::now(), |r| r.matches_step(call))
    }

    /// The rule that fires for this API request (`path` with its service prefix).
    pub fn check_route(&self, method: &str, path: &str) -> Option<Firing> {
        if !self.enabled || self.live.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.first_firing(crate::clock::now(), |r| r.matches_route(method, path))
    }

    fn first_firing(&self, now: DateTime<Utc>, matches: impl Fn(&Rule) -> bool) -> Option<Firing> {
        for e in self.snapshot().iter() {
            if e.expires_at.is_some_and(|t| t <= now) || !matches(&e.rule) {
                continue;
            }
            let seen = e.seen.fetch_add(1, Ordering::Relaxed) + 1;
            if seen <= e.rule.after {
                continue;
            }
            if e.rule.probability.is_some_and(|p| rand::random::<f64>() >= p) {
                continue;
            }
            let limit = e.rule.times.unwrap_or(u64::MAX);
            if e.fired.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| (f < limit).then_some(f + 1)).is_err() {
                continue;
            }
            return Some(Firing { rule_id: e.id.clone(), effect: e.rule.effect.clone() });
        }
        None
    }

    /// Asks the table (and the server's own triggers) before a step, applies a delay here,
    /// and says what the step must do instead of its work, if anything. Each firing is a
    /// `fault.injected` span under the step (so `novabox trace` marks it), a warning in the
    /// log and a `novabox.fault.injected` notification.
    pub async fn inject(
        &self,
        ctx: &Context,
        call: StepCall<'_>,
        metadata: Option<&BTreeMap<String, String>>,
        host: &str,
    ) -> Option<Injected> {
        if !self.enabled {
            return None;
        }
        let firing = self.check_step(&call).or_else(|| metadata.and_then(|m| metadata_trigger(m, &call)))?;
        let uuid = call.instance_uuid.unwrap_or_default();
        let span = tracing::warn_span!(
            "fault.injected",
            injected = true,
            rule = %firing.rule_id,
            effect = firing.effect.kind(),
            step = %format!("{} {}", call.service, call.step),
        );
        let outcome = async {
            tracing::warn!(rule = %firing.rule_id, instance = uuid, "fault injected at {} {}: {:?}", call.service, call.step, firing.effect);
            self.notify(ctx, &call, &firing).await;
            match &firing.effect {
                Effect::Delay(d) => {
                    tokio::time::sleep(*d).await;
                    None
                }
                Effect::Error { .. } => Some(Injected::Error(firing.effect.error_message(uuid, host))),
                Effect::Drop => Some(Injected::Drop),
                Effect::Kill { restart_after } => {
                    self.kills.send_modify(|(generation, delay)| {
                        *generation += 1;
                        *delay = *restart_after;
                    });
                    Some(Injected::Kill)
                }
                // Refused for steps when the rule was added; a status reaches only the API.
                Effect::Status { .. } => None,
            }
        }
        .instrument(span)
        .await;
        outcome
    }

    /// Publishes a firing at an API route as a notification.
    pub async fn announce_route(&self, method: &str, path: &str, firing: &Firing) {
        let Some(notifier) = self.notifier.get() else { return };
        let payload = json!({
            "rule_id": firing.rule_id,
            "effect": firing.effect.kind(),
            "service": "api",
            "step": format!("{method} {path}"),
        });
        notifier.publish(&Context::admin(Context::new_request_id()), INJECTED_EVENT, None, payload).await;
    }

    async fn notify(&self, ctx: &Context, call: &StepCall<'_>, firing: &Firing) {
        let Some(notifier) = self.notifier.get() else { return };
        let payload = json!({
            "rule_id": firing.rule_id,
            "effect": firing.effect.kind(),
            "service": call.service,
            "step": call.step,
            "instance_id": call.instance_uuid,
            "display_name": call.instance_name,
            "tenant_id": call.project_id,
        });
        notifier.publish(ctx, INJECTED_EVENT, call.instance_uuid, payload).await;
    }
}

fn view(e: &Entry, now: DateTime<Utc>) -> RuleView {
    let fired = e.fired.load(Ordering::Relaxed);
    let fmt = |t: &DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    RuleView {
        id: e.id.clone(),
        spec: e.rule.spec.clone(),
        effect: e.rule.effect.kind(),
        seen: e.seen.load(Ordering::Relaxed),
        fired,
        spent: e.rule.times.is_some_and(|t| fired >= t) || e.expires_at.is_some_and(|t| t <= now),
        created_at: fmt(&e.created_at),
        expires_at: e.expires_at.as_ref().map(fmt),
    }
}

/// The trigger a server's metadata sets for this step: `novabox:fault = STEP:Exception[:reason]`
/// fails it with nova's exception, `novabox:delay = STEP:SECONDS` holds it. A trigger that
/// does not parse is logged and ignored: the server was made by a job that cannot see the
/// log's warning, but the fault's absence tells it as much.
pub fn metadata_trigger(metadata: &BTreeMap<String, String>, call: &StepCall<'_>) -> Option<Firing> {
    let step_is =
        |name: &str| catalog::find_step(call.service, name).is_some_and(|s| s.name == call.step && s.instance);
    if let Some(value) = metadata.get(FAULT_KEY) {
        let mut parts = value.splitn(3, ':');
        let (step, exception, reason) = (parts.next().unwrap_or_default(), parts.next(), parts.next());
        if step_is(step) {
            match exception.and_then(catalog::find_exception) {
                Some(e) => {
                    return Some(Firing {
                        rule_id: "metadata".into(),
                        effect: Effect::Error { exception: Some(e), reason: reason.map(str::to_string) },
                    })
                }
                None => tracing::warn!(
                    value,
                    valid = %catalog::exception_names().join(", "),
                    "{FAULT_KEY} names no known exception; ignored"
                ),
            }
        }
    }
    if let Some(value) = metadata.get(DELAY_KEY) {
        let (step, secs) = value.split_once(':').unwrap_or((value, ""));
        if step_is(step) {
            match secs.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s <= rule::MAX_DELAY_SECS => {
                    return Some(Firing {
                        rule_id: "metadata".into(),
                        effect: Effect::Delay(Duration::from_secs_f64(s)),
                    })
                }
                _ => tracing::warn!(value, "{DELAY_KEY} wants STEP:SECONDS (0 to 3600); ignored"),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> RuleSpec {
        serde_json::from_value(json).unwrap()
    }

    fn spawn_of(uuid: &'static str) -> StepCall<'static> {
        StepCall {
            service: "compute",
            step: "spawn",
            instance_uuid: Some(uuid),
            instance_name: Some("vm"),
            project_id: Some("p"),
        }
    }

    #[test]
    fn times_after_and_counts() {
        let t = FaultTable::new(true);
        let v = t.add(&spec(json!({"method": "spawn", "error": "NoValidHost", "times": 2, "after": 1}))).unwrap();
        let fired: Vec<bool> = (0..5).map(|_| t.check_step(&spawn_of("u")).is_some()).collect();
        assert_eq!(fired, [false, true, true, false, false]);
        let seen = t.get(&v.id).unwrap();
        assert_eq!((seen.seen, seen.fired, seen.spent), (5, 2, true));
        // Another step is not counted.
        assert!(t.check_step(&StepCall { step: "spawning", ..spawn_of("u") }).is_none());
        assert_eq!(t.get(&v.id).unwrap().seen, 5);
    }

    #[test]
    fn a_disabled_table_never_fires() {
        let t = FaultTable::new(false);
        t.add(&spec(json!({"method": "spawn", "drop": true}))).unwrap();
        assert!(t.check_step(&spawn_of("u")).is_none());
        assert!(t.check_route("GET", "/compute/v2.1/servers").is_none());
    }

    #[test]
    fn probability_fires_about_that_often() {
        let t = FaultTable::new(true);
        t.add(&spec(json!({"method": "spawn", "drop": true, "probability": 0.25}))).unwrap();
        let n = (0..4000).filter(|_| t.check_step(&spawn_of("u")).is_some()).count();
        assert!((700..1300).contains(&n), "{n} of 4000 at p=0.25");
    }

    #[test]
    fn rules_expire_by_the_test_clock_and_can_be_removed() {
        let t = FaultTable::new(true);
        let v = t.add(&spec(json!({"route": "/compute/**", "status": 503, "expires_in": 60}))).unwrap();
        assert!(t.check_route("GET", "/compute/v2.1/servers").is_some());
        // Asked as if the clock had moved 61 s (the process's clock is shared by the tests).
        let later = crate::clock::now() + chrono::Duration::seconds(61);
        assert!(t.first_firing(later, |r| r.matches_route("GET", "/compute/v2.1/servers")).is_none());
        assert!(view(&t.snapshot()[0], later).spent);
        assert!(t.remove(&v.id).is_ok());
        assert!(matches!(t.remove(&v.id), Err(FaultError::NotFound(_))));
        assert!(t.check_route("GET", "/compute/v2.1/servers").is_none());
        t.add(&spec(json!({"route": "/compute/**", "status": 503}))).unwrap();
        t.add(&spec(json!({"method": "spawn", "drop": true}))).unwrap();
        assert_eq!(t.clear(), 2);
        assert!(t.list().is_empty());
    }

    #[test]
    fn the_first_matching_rule_fires() {
        let t = FaultTable::new(true);
        t.add(&spec(json!({"server": "other", "error": "NoValidHost"}))).unwrap();
        t.add(&spec(json!({"service": "compute", "drop": true}))).unwrap();
        t.add(&spec(json!({"method": "spawn", "error": "NoValidHost"}))).unwrap();
        assert_eq!(t.check_step(&spawn_of("u")).unwrap().effect, Effect::Drop);
        let views = t.list();
        assert_eq!(views.iter().map(|v| v.seen).collect::<Vec<_>>(), [0, 1, 0]);
    }

    #[test]
    fn metadata_triggers_name_a_step_and_an_exception_or_seconds() {
        let md = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let spawn = spawn_of("u1");
        let fired = metadata_trigger(&md(FAULT_KEY, "spawn:NoValidHost"), &spawn).unwrap();
        assert_eq!(
            fired.effect.error_message("u1", "h"),
            "No valid host was found. There are not enough hosts available."
        );
        let fired = metadata_trigger(&md(FAULT_KEY, "driver.spawn:BuildAbortException:disk gone"), &spawn).unwrap();
        assert_eq!(fired.effect.error_message("u1", "h"), "Build of instance u1 aborted: disk gone");
        assert!(metadata_trigger(&md(FAULT_KEY, "spawning:NoValidHost"), &spawn).is_none());
        assert!(metadata_trigger(&md(FAULT_KEY, "spawn:NoSuchError"), &spawn).is_none());
        let spawning = StepCall { step: "spawning", ..spawn };
        let held = metadata_trigger(&md(DELAY_KEY, "spawning:10"), &spawning).unwrap();
        assert_eq!(held.effect, Effect::Delay(Duration::from_secs(10)));
        assert!(metadata_trigger(&md(DELAY_KEY, "spawning:forever"), &spawning).is_none());
        assert!(metadata_trigger(&md(DELAY_KEY, "spawning:10"), &spawn).is_none());
    }

    /// The hooks' cost while nothing can fire: a guard on the fast path (one field and one
    /// atomic load), far above what it costs (a few ns) and far below what a lock and a walk
    /// of the rules would cost if they crept into it.
    #[test]
    fn asking_an_empty_or_disabled_table_costs_next_to_nothing() {
        let call = spawn_of("u");
        for table in [FaultTable::new(false), FaultTable::new(true)] {
            let started = std::time::Instant::now();
            for _ in 0..1_000_000 {
                assert!(table.check_step(std::hint::black_box(&call)).is_none());
            }
            let per = started.elapsed() / 1_000_000;
            eprintln!("enabled={}: {per:?} per check", table.enabled());
            assert!(per < Duration::from_micros(1), "{per:?} per check of an empty table");
        }
        // Rules that do not match: the request walks them, without waiting for anyone.
        let t = FaultTable::new(true);
        for i in 0..50 {
            t.add(&spec(json!({"server": format!("other-{i}"), "drop": true}))).unwrap();
        }
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            assert!(t.check_step(&call).is_none());
        }
        eprintln!("50 rules, none matching: {:?} per check", started.elapsed() / 10_000);
    }

    #[tokio::test]
    async fn inject_applies_delays_and_returns_the_rest() {
        let t = FaultTable::new(true);
        let ctx = Context::admin("req-1");
        t.add(&spec(json!({"method": "spawning", "delay": 0.2, "times": 1}))).unwrap();
        t.add(&spec(json!({"method": "spawn", "error": "BuildAbortException", "message": "no disk"}))).unwrap();
        t.add(&spec(json!({"method": "networking", "kill": true, "restart_after": 7}))).unwrap();
        let started = std::time::Instant::now();
        let spawning = StepCall { step: "spawning", ..spawn_of("u1") };
        assert_eq!(t.inject(&ctx, spawning, None, "h").await, None);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(
            t.inject(&ctx, spawn_of("u1"), None, "h").await,
            Some(Injected::Error("Build of instance u1 aborted: no disk".into()))
        );
        let kills = t.kills();
        let networking = StepCall { step: "networking", ..spawn_of("u1") };
        assert_eq!(t.inject(&ctx, networking, None, "h").await, Some(Injected::Kill));
        assert_eq!(*kills.borrow(), (1, Duration::from_secs(7)));
        // Off: nothing, even with a trigger in the metadata.
        let off = FaultTable::new(false);
        let md = BTreeMap::from([(FAULT_KEY.to_string(), "spawn:NoValidHost".to_string())]);
        assert_eq!(off.inject(&ctx, spawn_of("u1"), Some(&md), "h").await, None);
    }
}
