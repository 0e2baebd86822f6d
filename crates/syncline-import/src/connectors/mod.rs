//! The connectors, one module per third-party API, and the HTTP helper they share: one GET, with the
//! response status classified into a [`SourceError`].

mod playstation;
mod rest;
mod spotify;
mod steam;
mod xbox;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use syncline_core::ImportPhase;

use crate::config::{SourceConfig, SourceKind};
use crate::source::{PageRequest, Source, SourceError};

/// Builds the runtime source a configuration names.
pub fn build_source(config: &SourceConfig) -> Arc<dyn Source> {
    let http = http_client();
    let base = |default: &str| config.base_url.clone().unwrap_or_else(|| default.into());
    match config.kind {
        SourceKind::Steam => Arc::new(steam::Steam::new(
            http,
            base("https://api.steampowered.com"),
        )),
        SourceKind::Spotify => {
            Arc::new(spotify::Spotify::new(http, base("https://api.spotify.com")))
        }
        SourceKind::Playstation => Arc::new(playstation::PlayStation::new(
            http,
            base("https://m.np.playstation.com"),
        )),
        SourceKind::Xbox => Arc::new(xbox::Xbox::new(http, config.base_url.clone())),
        SourceKind::Rest => match (&config.rest, &config.base_url) {
            (Some(rest), Some(base)) => Arc::new(rest::Rest::new(http, base, rest.clone())),
            // Read from TOML, a rest source always has both; built by hand without them, it offers no
            // stream, so mapping any stream to a table is refused at startup.
            _ => Arc::new(rest::Rest::unconfigured(http)),
        },
    }
}

/// The HTTP client of a source (from [`syncline_http::client_builder`]: rustls, the OS roots plus
/// `SSL_CERT_FILE`): a 30-second timeout, a `syncline/VERSION` user agent (some APIs, GitHub's
/// among them, refuse requests without one), and redirects followed only within the origin of the
/// request, so a header carrying a credential never goes to another host.
pub(crate) fn http_client() -> reqwest::Client {
    syncline_http::client_builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("syncline/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt
                .previous()
                .first()
                .is_some_and(|first| first.origin() == attempt.url().origin());
            if same_origin && attempt.previous().len() < 5 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }))
        .build()
        .expect("an HTTP client with the default TLS settings builds")
}

/// The parsed body of a successful GET, the `X-RateLimit-Remaining` (or `RateLimit-Remaining`) it came
/// with, whether it spent the window, and its `Link` field (every field line, joined).
pub(crate) struct Fetched {
    pub body: Value,
    pub remaining: Option<u64>,
    /// The answer spent the window's last request, and says when it resets.
    pub window_spent: Option<crate::source::RateLimit>,
    pub link: Option<String>,
}

/// One GET of JSON. Never puts the url in an error: it may carry a key.
pub(crate) async fn get_json(
    request: reqwest::RequestBuilder,
    ok_statuses: &[StatusCode],
) -> Result<Fetched, SourceError> {
    let response = request.send().await.map_err(|e| {
        if let Some(tls) = syncline_http::tls_failure(&e) {
            return SourceError::Tls(tls.to_string());
        }
        SourceError::Transient(if e.is_timeout() {
            "timed out".into()
        } else {
            "could not reach the API".into()
        })
    })?;
    let status = response.status();
    let remaining = header_u64(response.headers(), "x-ratelimit-remaining")
        .or_else(|| header_u64(response.headers(), "ratelimit-remaining"));
    let window_spent = crate::ratelimit::window_spent(response.headers());
    // A `Link` field may come as several field lines, one link each: they are one comma-separated list
    // (RFC 9110 §5.3, RFC 8288 §3), so `rel="next"` may be on any of them.
    let links: Vec<&str> = response
        .headers()
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let link = (!links.is_empty()).then(|| links.join(", "));
    if let Some(limit) = crate::ratelimit::rate_limit_of(status.as_u16(), response.headers()) {
        return Err(SourceError::RateLimited(limit));
    }
    if status == StatusCode::UNAUTHORIZED {
        return Err(SourceError::Auth(format!(
            "the API answered 401{}: connect the account again",
            said(response).await
        )));
    }
    if status == StatusCode::FORBIDDEN {
        let said = said(response).await;
        // GitHub's secondary rate limit may come as a bare 403 that only says so: "otherwise wait for at
        // least one minute before retrying" (docs.github.com/rest/using-the-rest-api/rate-limits-for-the-
        // rest-api, "Exceeding the rate limit").
        if said.to_ascii_lowercase().contains("rate limit") {
            return Err(SourceError::RateLimited(crate::source::RateLimit::After {
                ms: crate::ratelimit::UNSAID_403_LIMIT_MS,
            }));
        }
        return Err(SourceError::Forbidden(format!(
            "the API answered 403{said}: the connection lacks a scope or permission for this"
        )));
    }
    // A 408 asks the client to repeat the request on a new connection (RFC 9110 §15.5.9).
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return Err(SourceError::Transient(format!(
            "the API answered {}: the service is down or overloaded",
            status.as_u16()
        )));
    }
    if !status.is_success() && !ok_statuses.contains(&status) {
        return Err(SourceError::Permanent(format!(
            "the API answered {}{}",
            status.as_u16(),
            said(response).await
        )));
    }
    let body = response
        .json::<Value>()
        .await
        .map_err(|_| SourceError::Transient("the API sent an unreadable body".into()))?;
    Ok(Fetched {
        body,
        remaining,
        window_spent,
        link,
    })
}

/// What an error answer says, as ` ("…")`: the `message` (or Steam's `playerstats.error`,
/// `error_description`, `error`) of a JSON body,
/// or the first line of a text one, at most 160 characters; empty when it says nothing.
pub(crate) async fn said(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    let json: Option<Value> = serde_json::from_str(&text).ok();
    let message = json
        .as_ref()
        .and_then(|v| {
            [
                "/error/message",
                "/playerstats/error",
                "/message",
                "/error_description",
                "/error",
                "/Message",
            ]
            .iter()
            .find_map(|p| v.pointer(p)?.as_str().map(str::to_string))
        })
        .unwrap_or_else(|| text.lines().next().unwrap_or("").to_string());
    let message: String = message.trim().chars().take(160).collect();
    if message.is_empty() {
        String::new()
    } else {
        format!(" (\"{message}\")")
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The failure for a stream the source does not offer.
pub(crate) fn unknown_stream(stream: &str) -> SourceError {
    SourceError::Permanent(format!("unknown stream `{stream}`"))
}

/// A checkpoint that is a position (an offset, an index): the number, `0` when there is no checkpoint.
pub(crate) fn offset<T: FromStr + Default>(checkpoint: Option<&str>) -> Result<T, SourceError> {
    checkpoint
        .map(str::parse::<T>)
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|_| SourceError::Permanent("a bad checkpoint".into()))
}

/// For a stream walked newest first, in the incremental phase: an item whose time is not after the last
/// walk's watermark, so that walk fetched it and everything after it. Times compare as text (RFC 3339).
pub(crate) fn seen_before(req: &PageRequest<'_>, time: Option<&str>) -> bool {
    req.phase == ImportPhase::Incremental
        && matches!((req.watermark, time), (Some(mark), Some(time)) if time <= mark)
}

/// A string field as a JSON value, or `null`.
pub(crate) fn str_at(v: &Value, pointer: &str) -> Value {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(|s| Value::String(s.to_string()))
        .unwrap_or(Value::Null)
}

/// A safe record id from an API id: characters outside `[A-Za-z0-9_.-]` become `_`, at most 64.
pub(crate) fn safe_id(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}
