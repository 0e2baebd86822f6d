//! Reading a rate limit from an HTTP answer, by every signal the services send, and the backoff when they
//! send none. Pure: a status and headers in, a [`RateLimit`] out; no clock (an HTTP date or an epoch is an
//! absolute time, a number of seconds a relative one, and the runner adds the clock).
//!
//! The signals, in the order they are trusted:
//! - `Retry-After`, seconds or an HTTP date (RFC 9110 §10.2.3). Spotify's 429s carry it in seconds
//!   (developer.spotify.com/documentation/web-api/concepts/rate-limits), as do Xbox Live's
//!   (learn.microsoft.com/gaming/gdk/_content/gc/live/features/general/rate-limits, "Retry-After"), and
//!   GitHub's secondary limits (docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api).
//! - `X-RateLimit-Next-Available`: PlayStation's 429s, a Unix timestamp of the next allowed request (the
//!   PSN trophy API notes followed by psn-api users; an HTTP date is accepted too).
//! - `X-RateLimit-Reset`: GitHub's is epoch seconds; other APIs send a delta in seconds. A value below
//!   10⁹ (2001) is read as a delta, one above 10¹² as epoch milliseconds.
//! - `RateLimit-Reset` (the IETF draft's header): a delta in seconds.
//!
//! A 429 is always a rate limit. A 403 is one only when it says so: `X-RateLimit-Remaining: 0` (GitHub's
//! primary limit) or a `Retry-After` (GitHub's secondary limit), or (read by the connectors, which see the
//! body) a message naming a rate limit, waited out for [`UNSAID_403_LIMIT_MS`]; any other 403 is a
//! refusal, not a limit.
//! A 503 with a usable `Retry-After` is waited out the same way: RFC 9110 §10.2.3 says that, sent with a
//! 503, it tells "how long the service is expected to be unavailable to the client", so asking again
//! sooner (the quick retries of a transient failure) only fails again. A 503 without one stays a transient
//! failure.

use reqwest::header::HeaderMap;

use crate::source::RateLimit;

/// The wait after a 403 whose message says it is a rate limit, without a header saying until when
/// (GitHub's secondary limit: "wait for at least one minute").
pub(crate) const UNSAID_403_LIMIT_MS: u64 = 60_000;
/// The first wait when a rate limit says nothing about when it ends.
pub(crate) const FIRST_BACKOFF_MS: u64 = 2_000;
/// The longest wait [`backoff_ms`] gives.
pub(crate) const MAX_BACKOFF_MS: u64 = 5 * 60_000;

/// The rate limit an answer announces, if it is one.
pub(crate) fn rate_limit_of(status: u16, headers: &HeaderMap) -> Option<RateLimit> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let limited = match status {
        429 => true,
        403 => text("x-ratelimit-remaining") == Some("0") || text("retry-after").is_some(),
        503 => return text("retry-after").and_then(seconds_or_date),
        _ => false,
    };
    if !limited {
        return None;
    }
    Some(reset_of(headers).unwrap_or(RateLimit::Unsignalled))
}

/// For a successful answer that spent the window's last request (`X-RateLimit-Remaining: 0`, or the IETF
/// draft's `RateLimit-Remaining: 0`): when the window resets, if the answer says. GitHub's documentation
/// asks not to make requests until then (docs.github.com/rest/using-the-rest-api/best-practices-for-using-
/// the-rest-api, "Handle rate limit errors appropriately"): the next one would only be refused.
pub(crate) fn window_spent(headers: &HeaderMap) -> Option<RateLimit> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let spent = [text("x-ratelimit-remaining"), text("ratelimit-remaining")]
        .into_iter()
        .flatten()
        .any(|v| v == "0");
    spent.then(|| reset_of(headers)).flatten()
}

/// The reset the headers name, by the order of trust above.
fn reset_of(headers: &HeaderMap) -> Option<RateLimit> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    text("retry-after")
        .and_then(seconds_or_date)
        .or_else(|| text("x-ratelimit-next-available").and_then(epoch_or_date))
        .or_else(|| text("x-ratelimit-reset").and_then(epoch_or_delta))
        .or_else(|| text("ratelimit-reset").and_then(delta))
}

/// The wait after a rate limit without a signal: [`FIRST_BACKOFF_MS`], then twice the previous wait (when
/// the stream was already waiting for one, with nothing fetched since), at most [`MAX_BACKOFF_MS`].
pub(crate) fn backoff_ms(previous_wait_ms: Option<i64>) -> u64 {
    match previous_wait_ms {
        Some(ms) if ms > 0 => (ms as u64)
            .saturating_mul(2)
            .clamp(FIRST_BACKOFF_MS, MAX_BACKOFF_MS),
        _ => FIRST_BACKOFF_MS,
    }
}

fn delta(v: &str) -> Option<RateLimit> {
    let secs: f64 = v
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)?;
    Some(RateLimit::After {
        ms: (secs * 1000.0).ceil() as u64,
    })
}

fn http_date(v: &str) -> Option<RateLimit> {
    let at = httpdate::parse_http_date(v).ok()?;
    let ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    Some(RateLimit::At {
        epoch_ms: i64::try_from(ms).ok()?,
    })
}

fn seconds_or_date(v: &str) -> Option<RateLimit> {
    delta(v).or_else(|| http_date(v))
}

fn epoch(n: u64) -> RateLimit {
    let epoch_ms = if n >= 1_000_000_000_000 { n } else { n * 1000 };
    RateLimit::At {
        epoch_ms: epoch_ms.min(i64::MAX as u64) as i64,
    }
}

fn epoch_or_date(v: &str) -> Option<RateLimit> {
    v.parse::<u64>().ok().map(epoch).or_else(|| http_date(v))
}

fn epoch_or_delta(v: &str) -> Option<RateLimit> {
    match v.parse::<u64>() {
        Ok(n) if n >= 1_000_000_000 => Some(epoch(n)),
        Ok(n) => Some(RateLimit::After { ms: n * 1000 }),
        Err(_) => delta(v).or_else(|| http_date(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn check(status: u16, headers: &[(&str, &str)], expected: Option<RateLimit>) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        assert_eq!(
            rate_limit_of(status, &map),
            expected,
            "{status} {headers:?}"
        );
    }

    const fn after(ms: u64) -> Option<RateLimit> {
        Some(RateLimit::After { ms })
    }

    const fn at(epoch_ms: i64) -> Option<RateLimit> {
        Some(RateLimit::At { epoch_ms })
    }

    #[test]
    fn every_signal_gives_its_reset() {
        // Retry-After in seconds, and as an HTTP date (RFC 9110's example date).
        check(429, &[("retry-after", "7")], after(7_000));
        check(429, &[("Retry-After", " 0 ")], after(0));
        check(
            429,
            &[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")],
            at(784_111_777_000),
        );
        // PlayStation: a Unix timestamp.
        check(
            429,
            &[("x-ratelimit-next-available", "1767225603")],
            at(1_767_225_603_000),
        );
        // X-RateLimit-Reset: epoch seconds (GitHub), epoch milliseconds, or a delta.
        check(
            429,
            &[("x-ratelimit-reset", "1767225600")],
            at(1_767_225_600_000),
        );
        check(
            429,
            &[("x-ratelimit-reset", "1767225600123")],
            at(1_767_225_600_123),
        );
        check(429, &[("x-ratelimit-reset", "30")], after(30_000));
        // The IETF draft's RateLimit-Reset: a delta.
        check(429, &[("ratelimit-reset", "12")], after(12_000));
        // Retry-After wins over the window's reset.
        check(
            429,
            &[("retry-after", "3"), ("x-ratelimit-reset", "1767225600")],
            after(3_000),
        );
    }

    #[test]
    fn a_403_or_a_503_is_a_rate_limit_only_when_it_says_so() {
        check(
            403,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1767225600"),
            ],
            at(1_767_225_600_000),
        );
        check(403, &[("retry-after", "60")], after(60_000));
        check(403, &[("x-ratelimit-remaining", "12")], None);
        check(403, &[], None);
        check(401, &[("retry-after", "5")], None);
        // RFC 9110 §10.2.3: a 503's Retry-After says how long the service will be unavailable.
        check(503, &[("retry-after", "120")], after(120_000));
        check(
            503,
            &[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")],
            at(784_111_777_000),
        );
        check(503, &[], None);
        check(503, &[("retry-after", "soon")], None);
        check(500, &[("retry-after", "5")], None);
        check(200, &[("x-ratelimit-remaining", "0")], None);
    }

    #[test]
    fn a_spent_window_names_its_reset() {
        let map = |headers: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        assert_eq!(
            window_spent(&map(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1767225600")
            ])),
            at(1_767_225_600_000)
        );
        assert_eq!(
            window_spent(&map(&[
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", "9")
            ])),
            after(9_000)
        );
        assert_eq!(
            window_spent(&map(&[
                ("x-ratelimit-remaining", "1"),
                ("x-ratelimit-reset", "1767225600")
            ])),
            None
        );
        assert_eq!(window_spent(&map(&[("x-ratelimit-remaining", "0")])), None);
    }

    #[test]
    fn a_rate_limit_without_a_usable_signal_is_unsignalled() {
        check(429, &[], Some(RateLimit::Unsignalled));
        check(
            429,
            &[("retry-after", "soon")],
            Some(RateLimit::Unsignalled),
        );
        check(429, &[("retry-after", "-5")], Some(RateLimit::Unsignalled));
    }

    #[test]
    fn the_backoff_doubles_from_two_seconds_up_to_five_minutes() {
        assert_eq!(backoff_ms(None), 2_000);
        assert_eq!(backoff_ms(Some(0)), 2_000);
        assert_eq!(backoff_ms(Some(2_000)), 4_000);
        assert_eq!(backoff_ms(Some(4_000)), 8_000);
        assert_eq!(backoff_ms(Some(500)), 2_000);
        assert_eq!(backoff_ms(Some(200_000)), 300_000);
        assert_eq!(backoff_ms(Some(300_000)), 300_000);
    }
}
