//! Password logins: the argon2 check off the async threads and outside the database lock, one
//! at a time, and the lockout of keystone's `[security_compliance]` options.
//!
//! A password check costs about 26 ms of one core. Run on a tokio worker under the database
//! lock, 40 clients sending wrong passwords stalled every other request for half a second.
//! Here the hash runs on the blocking pool, behind a semaphore of one permit per spare core,
//! so the other core keeps serving; and a user (or a source address) that keeps failing is
//! refused before any hashing, as keystone refuses a locked account.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::ApiConfig;

/// Why a login is refused before its password is even looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// keystone's AccountLocked (401).
    #[error("The account is locked for user: {user_id}.")]
    AccountLocked { user_id: String },
    /// Too many wrong passwords from one address (429, with Retry-After).
    #[error("Too many failed logins from {address}; password logins from it are refused for {retry_after_secs} s.")]
    SourceThrottled { address: IpAddr, retry_after_secs: u64 },
}

/// Consecutive failures of one user, or failures from one source within a window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// When the first failure of this run (user) or window (source) happened.
    first: Instant,
    locked_until: Option<Instant>,
}

#[derive(Default)]
struct Ledger {
    users: HashMap<String, Failures>,
    sources: HashMap<IpAddr, Failures>,
}

/// Entries past which stale ones are dropped: one entry per failing user or address, each
/// failure having cost a password hash, so the maps stay small without a timer.
const PRUNE_ABOVE: usize = 4096;

pub struct Logins {
    attempts: u32,
    duration: Duration,
    source_failures: u32,
    hashing: tokio::sync::Semaphore,
    ledger: Mutex<Ledger>,
}

impl Logins {
    pub fn new(config: &ApiConfig) -> Logins {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Logins {
            attempts: config.lockout_failure_attempts,
            duration: Duration::from_secs(config.lockout_duration_secs),
            source_failures: config.lockout_source_failures,
            // Leave a core to everything else; one permit on a 2-core host.
            hashing: tokio::sync::Semaphore::new(cores.saturating_sub(1).max(1)),
            ledger: Mutex::new(Ledger::default()),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses a login from `source` for `user_id` (when the name was known) while either is
    /// locked out.
    pub fn check(&self, user_id: Option<&str>, source: Option<IpAddr>) -> Result<(), Refused> {
        let now = crate::clock::instant_now();
        let ledger = self.ledger();
        if let Some(ip) = source {
            if let Some(until) = ledger.sources.get(&ip).and_then(|f| f.locked_until).filter(|t| *t > now) {
                let retry_after_secs = (until - now).as_secs().max(1);
                return Err(Refused::SourceThrottled { address: ip, retry_after_secs });
            }
        }
        if let Some(id) = user_id {
            if ledger.users.get(id).and_then(|f| f.locked_until).is_some_and(|t| t > now) {
                return Err(Refused::AccountLocked { user_id: id.to_string() });
            }
        }
        Ok(())
    }

    /// Checks `password` against the stored argon2 `hash` on the blocking pool, one check per
    /// spare core at a time.
    pub async fn verify(&self, password: String, hash: String) -> bool {
        let Ok(_permit) = self.hashing.acquire().await else { return false };
        tokio::task::spawn_blocking(move || crate::secrets::verify_password(&password, &hash)).await.unwrap_or(false)
    }

    /// Hashes a new password on the blocking pool, sharing the permits of [`Logins::verify`]
    /// (a hash costs what a check does). `None` when the hasher failed.
    pub async fn hash(&self, password: String) -> Option<String> {
        let _permit = self.hashing.acquire().await.ok()?;
        tokio::task::spawn_blocking(move || crate::secrets::hash_password(&password).ok()).await.ok().flatten()
    }

    /// Counts a wrong password (or an unknown user) against the user and the source.
    pub fn failed(&self, user_id: Option<&str>, source: Option<IpAddr>) {
        let now = crate::clock::instant_now();
        let window = self.duration;
        let mut ledger = self.ledger();
        if ledger.users.len() + ledger.sources.len() > PRUNE_ABOVE {
            let live = |f: &mut Failures| f.locked_until.is_some_and(|t| t > now) || now - f.first < window;
            ledger.users.retain(|_, f| live(f));
            ledger.sources.retain(|_, f| live(f));
        }
        if let (Some(id), true) = (user_id, self.attempts > 0) {
            let f = ledger.users.entry(id.to_string()).or_insert(Failures { count: 0, first: now, locked_until: None });
            if f.locked_until.is_some_and(|t| t <= now) {
                *f = Failures { count: 0, first: now, locked_until: None };
            }
            f.count += 1;
            if f.count >= self.attempts {
                f.locked_until = Some(now + window);
                tracing::warn!(user_id = id, failures = f.count, "account locked after repeated wrong passwords");
            }
        }
        if let (Some(ip), true) = (source, self.source_failures > 0) {
            let f = ledger.sources.entry(ip).or_insert(Failures { count: 0, first: now, locked_until: None });
            if now - f.first >= window {
                *f = Failures { count: 0, first: now, locked_until: None };
            }
            f.count += 1;
            if f.count >= self.source_failures {
                f.locked_until = Some(now + window);
                tracing::warn!(%ip, failures = f.count, "password logins from this address refused for a while");
            }
        }
    }

    /// A right password ends the user's run of failures, as keystone resets its count.
    pub fn succeeded(&self, user_id: &str) {
        self.ledger().users.remove(user_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logins(attempts: u32, secs: u64, source_failures: u32) -> Logins {
        Logins::new(&ApiConfig {
            lockout_failure_attempts: attempts,
            lockout_duration_secs: secs,
            lockout_source_failures: source_failures,
            ..ApiConfig::default()
        })
    }

    #[test]
    fn a_user_is_locked_after_the_attempts_and_a_success_resets_the_count() {
        let l = logins(3, 60, 0);
        l.failed(Some("u1"), None);
        l.failed(Some("u1"), None);
        l.succeeded("u1");
        l.failed(Some("u1"), None);
        l.failed(Some("u1"), None);
        assert_eq!(l.check(Some("u1"), None), Ok(()), "a success in between resets the run");
        l.failed(Some("u1"), None);
        assert_eq!(l.check(Some("u1"), None), Err(Refused::AccountLocked { user_id: "u1".into() }));
        assert_eq!(l.check(Some("u2"), None), Ok(()), "other users are not affected");
    }

    #[test]
    fn a_lock_ends_after_its_duration() {
        let l = logins(1, 1, 0);
        l.failed(Some("u1"), None);
        assert!(l.check(Some("u1"), None).is_err());
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(l.check(Some("u1"), None), Ok(()));
        // The next failure starts a new run rather than extending the old one.
        l.failed(Some("u1"), None);
        assert!(l.check(Some("u1"), None).is_err());
    }

    #[test]
    fn a_source_is_throttled_whatever_users_it_names() {
        let l = logins(0, 60, 3);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for user in ["a", "b", "c"] {
            assert_eq!(l.check(Some(user), Some(ip)), Ok(()));
            l.failed(Some(user), Some(ip));
        }
        match l.check(Some("d"), Some(ip)) {
            Err(Refused::SourceThrottled { retry_after_secs, .. }) => assert!(retry_after_secs >= 59),
            other => panic!("{other:?}"),
        }
        assert_eq!(l.check(Some("d"), Some("192.0.2.8".parse().unwrap())), Ok(()));
        // attempts = 0 turns the user lockout off.
        assert_eq!(l.check(Some("a"), None), Ok(()));
    }

    #[tokio::test]
    async fn verify_checks_the_real_hash() {
        let l = logins(3, 60, 0);
        let hash = crate::secrets::hash_password("right").unwrap();
        assert!(l.verify("right".into(), hash.clone()).await);
        assert!(!l.verify("wrong".into(), hash).await);
    }
}
