//! The proactive limiter: at most `requests_per_second` requests per (source, credential), spaced evenly,
//! so a well-configured import rarely meets a 429 at all.
//!
//! One [`governor`] keyed limiter per source (a GCRA with a burst of one), keyed by the credential's
//! fingerprint. It only ever delays a request: it never fails one, and it never waits past the step's
//! deadline.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::time::Instant;

/// Above this many remembered credentials, keys indistinguishable from fresh ones are dropped.
const HOUSEKEEPING_KEYS: usize = 4_096;

#[derive(Default)]
pub(crate) struct Limiter {
    /// source -> (its spacing between requests, its limiter keyed by credential fingerprint).
    sources: Mutex<HashMap<String, Arc<SourceLimiter>>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limiter(..)")
    }
}

struct SourceLimiter {
    spacing: Duration,
    keyed: DefaultKeyedRateLimiter<u64>,
}

impl Limiter {
    /// Waits for the next permit of (`source`, `credential`) at `per_second`, and takes it. `false`: no
    /// permit comes before `deadline` (nothing taken, returned at once).
    pub(crate) async fn until_ready(
        &self,
        source: &str,
        credential: u64,
        per_second: f64,
        deadline: Instant,
    ) -> bool {
        let limiter = self.for_source(source, per_second);
        loop {
            let wait = match limiter.keyed.check_key(&credential) {
                Ok(()) => {
                    if limiter.keyed.len() > HOUSEKEEPING_KEYS {
                        limiter.keyed.retain_recent();
                    }
                    return true;
                }
                Err(not_until) => not_until.wait_time_from(DefaultClock::default().now()),
            };
            let at = Instant::now() + wait;
            if at > deadline {
                return false;
            }
            tokio::time::sleep_until(at).await;
        }
    }

    /// The source's limiter; a new one when its rate changed.
    fn for_source(&self, source: &str, per_second: f64) -> Arc<SourceLimiter> {
        let spacing = Duration::from_secs_f64(1.0 / per_second.clamp(0.001, 1e9));
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        match sources.get(source) {
            Some(l) if l.spacing == spacing => l.clone(),
            _ => {
                let quota = Quota::with_period(spacing)
                    .expect("a positive spacing")
                    .allow_burst(NonZeroU32::MIN);
                let l = Arc::new(SourceLimiter {
                    spacing,
                    keyed: DefaultKeyedRateLimiter::hashmap(quota),
                });
                sources.insert(source.to_string(), l.clone());
                l
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_are_spaced_per_source_and_credential() {
        let l = Limiter::default();
        let far = Instant::now() + Duration::from_secs(60);
        let started = Instant::now();
        assert!(l.until_ready("s", 1, 10.0, far).await);
        assert!(l.until_ready("s", 1, 10.0, far).await);
        assert!(l.until_ready("s", 1, 10.0, far).await);
        assert!(
            started.elapsed() >= Duration::from_millis(195),
            "three permits at 10/s span 200 ms"
        );
        let other = Instant::now();
        assert!(l.until_ready("s", 2, 10.0, far).await);
        assert!(l.until_ready("t", 1, 10.0, far).await);
        assert!(
            other.elapsed() < Duration::from_millis(50),
            "another credential or source has its own budget"
        );
    }

    #[tokio::test]
    async fn a_permit_past_the_deadline_is_refused_at_once_and_not_taken() {
        let l = Limiter::default();
        assert!(l.until_ready("s", 1, 0.01, Instant::now()).await);
        let started = Instant::now();
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(!l.until_ready("s", 1, 0.01, soon).await);
        assert!(started.elapsed() < Duration::from_millis(50));
        // A faster rate replaces the source's limiter.
        assert!(l.until_ready("s", 1, 1_000.0, soon).await);
    }
}
