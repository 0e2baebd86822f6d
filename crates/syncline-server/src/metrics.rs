//! Prometheus metrics, all in one place: request counts and durations per route, records pushed and pulled,
//! conflicts, rejections. Rendered as text at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub records_pushed: AtomicU64,
    pub records_pulled: AtomicU64,
    pub tombstones_pulled: AtomicU64,
    pub push_conflicts: AtomicU64,
    pub records_rejected: AtomicU64,
    pub bulk_rows_invalid: AtomicU64,
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records one finished request.
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route.to_string(), status))
            .or_default() += 1;
        let mut durations = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        let h = durations.entry(route.to_string()).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "syncline_records_pushed_total",
                "Records applied by push and bulk requests.",
                &self.records_pushed,
            ),
            (
                "syncline_records_pulled_total",
                "Live records sent by pulls.",
                &self.records_pulled,
            ),
            (
                "syncline_tombstones_pulled_total",
                "Deleted ids sent by pulls.",
                &self.tombstones_pulled,
            ),
            (
                "syncline_push_conflicts_total",
                "Pushes refused with 409 conflict.",
                &self.push_conflicts,
            ),
            (
                "syncline_records_rejected_total",
                "Pushed records rejected as invalid.",
                &self.records_rejected,
            ),
            (
                "syncline_bulk_rows_invalid_total",
                "Invalid rows in refused bulk requests.",
                &self.bulk_rows_invalid,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP syncline_http_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE syncline_http_requests_total counter");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "syncline_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP syncline_http_request_duration_seconds HTTP request durations by route."
        );
        let _ = writeln!(
            out,
            "# TYPE syncline_http_request_duration_seconds histogram"
        );
        for (route, h) in self
            .durations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "syncline_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "syncline_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "syncline_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "syncline_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        out
    }
}
