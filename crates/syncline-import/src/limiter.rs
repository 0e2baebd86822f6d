//! The proactive limiter: at most `requests_per_second` requests per (source, credential), spaced evenly,
//! so a well-configured import rarely meets a 429 at all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct Limiter {
    /// (source, credential fingerprint) -> the earliest time the next request may go.
    next: Mutex<HashMap<(String, u64), Instant>>,
}

impl Limiter {
    /// Reserves the next slot and returns when it is; `None` when it falls after `deadline` (nothing reserved).
    pub(crate) fn reserve(
        &self,
        source: &str,
        credential: u64,
        per_second: f64,
        deadline: Instant,
    ) -> Option<Instant> {
        let interval = Duration::from_secs_f64(1.0 / per_second.max(0.001));
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let slot = next.entry((source.to_string(), credential)).or_insert(now);
        let at = (*slot).max(now);
        if at > deadline {
            return None;
        }
        *slot = at + interval;
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_spaced_per_source_and_credential() {
        let l = Limiter::default();
        let far = Instant::now() + Duration::from_secs(60);
        let a = l.reserve("s", 1, 10.0, far).unwrap();
        let b = l.reserve("s", 1, 10.0, far).unwrap();
        assert!(b - a >= Duration::from_millis(99));
        let c = l.reserve("s", 2, 10.0, far).unwrap();
        assert!(c < b, "another credential has its own budget");
        assert_eq!(l.reserve("s", 1, 0.01, Instant::now()), None);
    }
}
