//! This worker's own clock, for what it records for people (when a run started
//! and ended). Nothing that decides who holds what reads it: leases, claims and
//! schedules go by the state store's clock (`StateStore::now`).
//!
//! `FLOWGATE_TEST_CLOCK_SKEW` (for example `60s` or `-60s`) shifts it, so tests
//! can run workers whose clocks disagree without touching the system clock.

use std::sync::OnceLock;

use chrono::{DateTime, TimeDelta, Utc};

fn skew() -> TimeDelta {
    static SKEW: OnceLock<TimeDelta> = OnceLock::new();
    *SKEW.get_or_init(|| {
        let Ok(text) = std::env::var("FLOWGATE_TEST_CLOCK_SKEW") else {
            return TimeDelta::zero();
        };
        let (sign, body) = match text.trim().strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, text.trim().trim_start_matches('+')),
        };
        crate::units::parse_duration(body)
            .ok()
            .and_then(|d| TimeDelta::from_std(d).ok())
            .map(|d| d * sign)
            .unwrap_or_else(TimeDelta::zero)
    })
}

/// Now, by this worker's clock.
pub fn now() -> DateTime<Utc> {
    Utc::now() + skew()
}
