//! The [`Source`] trait every connector implements, and what crosses it: a page request from a checkpoint,
//! the page that comes back, and failures classified so the runner knows what to do with them.

use std::future::Future;
use std::pin::Pin;

use serde_json::{Map, Value};
use syncline_core::ImportPhase;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A user's credential for one source: a JSON object whose fields the connector knows (`access_token`,
/// `api_key`, `steam_id`, ...). Its `Debug` never shows the values.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(Map<String, Value>);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Credential {
    pub fn new(fields: Map<String, Value>) -> Credential {
        Credential(fields)
    }

    /// A string field, or an `Auth` failure naming the missing field (never its value).
    pub fn field(&self, name: &str) -> Result<&str, SourceError> {
        self.0
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| SourceError::Auth(format!("the connection has no `{name}`")))
    }

    /// A number field (`expires_at`), if there is one.
    pub(crate) fn number(&self, name: &str) -> Option<i64> {
        self.0.get(name).and_then(Value::as_i64)
    }

    /// Every field.
    pub(crate) fn fields(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Every text field, as (name, value): for keeping the values out of what is stored or shown.
    pub(crate) fn texts(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.as_str()?)))
    }

    /// A stable fingerprint for per-credential rate limiting (not a secret-preserving hash; kept in memory).
    pub(crate) fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        Value::Object(self.0.clone()).to_string().hash(&mut h);
        h.finish()
    }
}

/// Which page to fetch.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<'a> {
    pub stream: &'a str,
    pub phase: ImportPhase,
    /// Where to start; `None`: the beginning.
    pub checkpoint: Option<&'a str>,
    /// In the incremental phase: the newest item of the last completed walk. The connector stops at it.
    pub watermark: Option<&'a str>,
    pub page_size: usize,
}

/// One page of a stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// Rows for the stream's table: JSON objects with an `id` and the row's columns. Columns the table does
    /// not declare are left out by the runner.
    pub records: Vec<Value>,
    /// The checkpoint after this page; `None`: the stream is complete.
    pub next: Option<String>,
    /// What the source says the stream holds.
    pub total: Option<u64>,
    /// A marker of the newest item on this page (for streams walked newest first).
    pub newest: Option<String>,
    /// Requests left in the current rate-limit window, when the source says.
    pub remaining: Option<u64>,
    /// This page spent the window's last request and the source said when the window resets: the stream
    /// waits until then instead of asking for a page that would be refused.
    pub window_spent: Option<RateLimit>,
}

/// When a rate-limited source takes requests again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// `Retry-After: N` seconds.
    After { ms: u64 },
    /// An absolute reset time (epoch ms), e.g. from `X-RateLimit-Reset`.
    At { epoch_ms: i64 },
    /// A rate limit that did not say when it ends: the runner backs off exponentially.
    Unsignalled,
}

/// A failure of a source, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Worth retrying soon (timeouts, 5xx, 408, connection resets); code `upstream_unavailable` once retries are
    /// spent.
    #[error("the source is unavailable: {0}")]
    Transient(String),
    #[error("the source is rate limiting requests")]
    RateLimited(RateLimit),
    /// The credential is missing, wrong or expired: the user must connect again (code `auth_expired`).
    #[error("the source refused the credential: {0}")]
    Auth(String),
    /// The credential is fine, but the profile's privacy settings hide what was asked for (code
    /// `profile_private`): Steam's private game details, PlayStation's private trophies.
    #[error("the profile is private: {0}")]
    Private(String),
    /// The credential is fine, but it lacks a scope or permission for what was asked (code
    /// `missing_permission`): a 403 that is neither a rate limit nor a private profile.
    #[error("the source refused the request: {0}")]
    Forbidden(String),
    /// Will not work however often it is tried.
    #[error("the source failed: {0}")]
    Permanent(String),
    /// The TLS handshake failed (code `tls_failed`); the message names the host and the reason. Not
    /// retried: a certificate does not change by itself.
    #[error("{0}")]
    Tls(String),
}

/// A third-party API, walked stream by stream from checkpoints.
pub trait Source: Send + Sync + 'static {
    /// The streams this source offers, in the order they are imported.
    fn streams(&self) -> &'static [&'static str];

    /// The string fields a credential for this source must carry (what a connect form asks for).
    fn credential_fields(&self) -> Vec<String>;

    /// Fetches one page.
    fn fetch<'a>(
        &'a self,
        credential: &'a Credential,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, SourceError>>;
}
