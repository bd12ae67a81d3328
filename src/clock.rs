//! The test clock: every time-based behaviour of novabox reads the time here, so a CI job can
//! move it forward (`novabox clock advance SECONDS`) and watch tokens expire, services go
//! down or history age out without waiting.
//!
//! The clock is the real time plus an offset. The offset is 0 unless the fault API moved it,
//! and that API exists only when `[faults] enabled = true` (or `up --faults`): with faults off
//! the clock is the system clock at the cost of one relaxed atomic load. It only moves
//! forward: time going backwards would make expired tokens valid again and heartbeats come
//! from the future, which no real cloud does; `reset` is the one way back, to the real time.
//!
//! What reads it: `db::now()` (every timestamp written, token issue and expiry, heartbeats),
//! `db::services::is_up` (`service_down_secs`), token validation, the login lockout windows
//! (`api::logins`), the image cache's aging, and `[db] history_days`. Periodic work that
//! nova drives from time (`resize_confirm_window`, `reclaim_instance_interval`,
//! `shelved_offload_time`, none of which novabox has yet) must compare against
//! [`now`] too, never `Utc::now()`, so `clock advance` reaches it.
//!
//! One clock per process: the services of `novabox up` share it, as they share the host's
//! real clock. A service in another process (`novabox service compute`) keeps its own, at 0.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};

/// The real time plus an offset that only grows (until [`Clock::reset`]).
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

/// The clock of this process.
static CLOCK: Clock = Clock { offset_ms: AtomicI64::new(0) };

/// The process's clock (what the fault API moves).
pub fn global() -> &'static Clock {
    &CLOCK
}

/// Now, by the process's clock.
pub fn now() -> DateTime<Utc> {
    CLOCK.now()
}

/// Now as a `SystemTime` (file ages), by the process's clock.
pub fn system_now() -> SystemTime {
    CLOCK.system_now()
}

/// Now as an `Instant` (in-memory windows such as the login lockout), by the process's clock.
pub fn instant_now() -> Instant {
    CLOCK.instant_now()
}

/// The most the clock may be moved in one go: 10 years, far past any expiry a test wants,
/// and far from chrono's limits.
pub const MAX_ADVANCE_SECS: u64 = 10 * 365 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("the clock moves forward only: advance by 1 to {MAX_ADVANCE_SECS} seconds (got {0}); `clock reset` goes back to the real time")]
    BadAdvance(i64),
}

impl Clock {
    pub const fn new() -> Clock {
        Clock { offset_ms: AtomicI64::new(0) }
    }

    pub fn offset(&self) -> Duration {
        Duration::from_millis(self.offset_ms.load(Ordering::Relaxed).max(0) as u64)
    }

    pub fn now(&self) -> DateTime<Utc> {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        let real = Utc::now();
        if offset == 0 {
            return real;
        }
        real + chrono::Duration::milliseconds(offset)
    }

    pub fn system_now(&self) -> SystemTime {
        SystemTime::now() + self.offset()
    }

    pub fn instant_now(&self) -> Instant {
        Instant::now() + self.offset()
    }

    /// Moves the clock forward by `secs`; returns the new offset.
    pub fn advance(&self, secs: i64) -> Result<Duration, ClockError> {
        if secs <= 0 || secs as u64 > MAX_ADVANCE_SECS {
            return Err(ClockError::BadAdvance(secs));
        }
        let total = self.offset_ms.fetch_add(secs * 1000, Ordering::Relaxed) + secs * 1000;
        // Many advances could add up past chrono's range; hold the sum at the cap.
        let cap = (MAX_ADVANCE_SECS * 10 * 1000) as i64;
        if total > cap {
            self.offset_ms.store(cap, Ordering::Relaxed);
        }
        Ok(self.offset())
    }

    /// Back to the real time.
    pub fn reset(&self) {
        self.offset_ms.store(0, Ordering::Relaxed);
    }

    /// Writes the offset where the CLI's other commands (`status`, `events`) read it, so they
    /// see the stack's time; a zero offset removes the file.
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let ms = self.offset_ms.load(Ordering::Relaxed);
        if ms == 0 {
            return match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        crate::home::write_atomic(path, ms.to_string().as_bytes(), 0o644)
    }

    /// Takes the offset a running stack saved (none: the real time).
    pub fn load(&self, path: &std::path::Path) {
        let ms = std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse::<i64>().ok()).unwrap_or(0);
        self.offset_ms.store(ms.clamp(0, (MAX_ADVANCE_SECS * 10 * 1000) as i64), Ordering::Relaxed);
    }
}

/// Where a running stack keeps its clock's offset, beside its pid file.
pub fn offset_file(home: &crate::home::Home) -> std::path::PathBuf {
    home.run_dir().join("clock-offset-ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_moves_forward_only_and_resets_to_the_real_time() {
        let c = Clock::new();
        assert_eq!(c.offset(), Duration::ZERO);
        let before = Utc::now();
        assert_eq!(c.advance(3600).unwrap(), Duration::from_secs(3600));
        assert!(c.now() >= before + chrono::Duration::seconds(3600));
        assert!(c.instant_now() >= Instant::now() + Duration::from_secs(3599));
        assert!(c.system_now() >= SystemTime::now() + Duration::from_secs(3599));
        assert_eq!(c.advance(0), Err(ClockError::BadAdvance(0)));
        assert_eq!(c.advance(-5), Err(ClockError::BadAdvance(-5)));
        assert!(c.advance(MAX_ADVANCE_SECS as i64 + 1).is_err());
        assert_eq!(c.offset(), Duration::from_secs(3600), "a refused advance changes nothing");
        c.reset();
        assert_eq!(c.offset(), Duration::ZERO);
        assert!(c.now() < Utc::now() + chrono::Duration::seconds(5));
    }

    #[test]
    fn the_offset_survives_a_save_and_load() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("offset");
        let c = Clock::new();
        c.advance(90).unwrap();
        c.save(&path).unwrap();
        let other = Clock::new();
        other.load(&path);
        assert_eq!(other.offset(), Duration::from_secs(90));
        c.reset();
        c.save(&path).unwrap();
        assert!(!path.exists());
        other.load(&path);
        assert_eq!(other.offset(), Duration::ZERO);
    }

    #[test]
    fn many_advances_stay_within_range() {
        let c = Clock::new();
        for _ in 0..200 {
            c.advance(MAX_ADVANCE_SECS as i64).unwrap();
        }
        assert!(c.offset() <= Duration::from_secs(MAX_ADVANCE_SECS * 10));
        let _ = c.now();
    }
}
