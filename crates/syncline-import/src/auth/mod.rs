//! Connecting an account the way each service does it, and keeping it connected: a [`Session`] per source
//! turns what a person sends (`PUT /v1/connections/{source}`, or the code of an OAuth consent) into the
//! credential that is sealed and stored, and renews that credential's access token when it is about to
//! expire or was refused. The connectors never see this: they read the same credential fields as before
//! (`access_token`; Xbox's `uhs`, `token`, `xuid`), which a session keeps fresh.
//!
//! - Spotify: OAuth 2.0 authorization code, with PKCE when only `client_id` is configured and HTTP Basic
//!   client authentication when `client_secret` is too; refresh tokens may rotate
//!   (developer.spotify.com/documentation/web-api/tutorials/code-flow, code-pkce-flow, refreshing-tokens).
//! - PlayStation: the NPSSO cookie exchanged for a code and then tokens (`playstation.rs`).
//! - Xbox: a Microsoft account refresh token, then an Xbox Live user token and an XSTS token (`xbox.rs`).
//!
//! Sources without a session (Steam's Web API key, `rest`) store what they are given.
//!
//! A credential's `expires_at` is the access token's expiry in epoch milliseconds, computed from
//! `expires_in` when the token was issued; a credential without it (a bare access token pasted by hand)
//! is used until the service refuses it.

mod oauth;
mod playstation;
mod xbox;

use std::sync::Arc;
use syncline_core::ImportErrorCode;

use serde_json::{Map, Value};

pub(crate) use oauth::{OAuthClient, pkce_pair, random_token};

use crate::config::{SourceConfig, SourceKind};
use crate::source::{BoxFuture, Credential, RateLimit};
use oauth::ClientAuth;

/// Why a credential could not be obtained or renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// The service refused: the person must act (connect again, fix the app's configuration). `code`
    /// begins with `auth`, or is `tls_failed`.
    Refused {
        code: ImportErrorCode,
        message: String,
    },
    /// The service could not be reached or failed; worth trying again later.
    Unavailable(String),
    /// The service is rate limiting the sign-in (a 429 from a token endpoint, by the rules of
    /// [`crate::ratelimit`]): an import waits it out like an API's rate limit; a connect answers 429.
    RateLimited(RateLimit),
}

impl AuthFailure {
    pub(crate) fn refused(code: ImportErrorCode, message: impl Into<String>) -> AuthFailure {
        AuthFailure::Refused {
            code,
            message: message.into(),
        }
    }

    /// The rate limit of a sign-in service's answer, when it is one (Spotify's accounts service and
    /// Microsoft's token endpoint answer `429` with `Retry-After` in seconds:
    /// developer.spotify.com/documentation/web-api/concepts/rate-limits,
    /// learn.microsoft.com/entra/msal/dotnet/advanced/client-and-server-throttling).
    pub(crate) fn rate_limit(
        status: u16,
        headers: &reqwest::header::HeaderMap,
    ) -> Option<AuthFailure> {
        crate::ratelimit::rate_limit_of(status, headers).map(AuthFailure::RateLimited)
    }

    /// A request that never got an answer (or whose TLS handshake failed, code `tls_failed`). Never names
    /// the url: it may carry a secret.
    pub(crate) fn unreachable(what: &str, e: &reqwest::Error) -> AuthFailure {
        if let Some(tls) = syncline_http::tls_failure(e) {
            return AuthFailure::refused(ImportErrorCode::TlsFailed, format!("{what}: {tls}"));
        }
        AuthFailure::Unavailable(if e.is_timeout() {
            format!("{what} timed out")
        } else {
            format!("could not reach {what}")
        })
    }
}

/// Why a connection could not be made from what a person sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnectFailure {
    /// The body lacks what the source needs.
    Invalid(String),
    Auth(AuthFailure),
}

impl From<AuthFailure> for ConnectFailure {
    fn from(f: AuthFailure) -> ConnectFailure {
        ConnectFailure::Auth(f)
    }
}

/// How one source's account is connected and renewed.
pub(crate) trait Session: Send + Sync {
    /// What a connect form asks for.
    fn connect_fields(&self) -> Vec<String>;

    /// Turns what a person sent into the credential to store; may call the service (an NPSSO, a refresh
    /// token to renew at once).
    fn connect<'a>(
        &'a self,
        given: Map<String, Value>,
        now: i64,
    ) -> BoxFuture<'a, Result<Map<String, Value>, ConnectFailure>>;

    /// Whether this credential can be renewed (it carries what the service renews from).
    fn renewable(&self, credential: &Credential) -> bool;

    /// A fresh credential: new access token, expiry and, when the service rotated it, refresh token.
    fn renew<'a>(
        &'a self,
        credential: &'a Credential,
        now: i64,
    ) -> BoxFuture<'a, Result<Map<String, Value>, AuthFailure>>;

    /// The authorization server of the dashboard's consent flow, when the source has one configured.
    fn code_flow(&self) -> Option<&OAuthClient> {
        None
    }

    /// The credential from a consent's authorization code.
    fn exchange_code<'a>(
        &'a self,
        code: &'a str,
        redirect_uri: &'a str,
        verifier: Option<&'a str>,
        now: i64,
    ) -> BoxFuture<'a, Result<Map<String, Value>, AuthFailure>> {
        let _ = (code, redirect_uri, verifier, now);
        Box::pin(async {
            Err(AuthFailure::refused(
                ImportErrorCode::AuthUnsupported,
                "this source has no consent flow",
            ))
        })
    }
}

/// The session a source's configuration calls for; `None`: its credentials are stored as given.
pub(crate) fn build_session(
    config: &SourceConfig,
    http: reqwest::Client,
) -> Option<Arc<dyn Session>> {
    let a = &config.auth;
    match config.kind {
        SourceKind::Spotify => Some(Arc::new(Spotify {
            http,
            oauth: a.client_id.clone().map(|id| OAuthClient {
                auth_url: a
                    .auth_url
                    .clone()
                    .unwrap_or_else(|| "https://accounts.spotify.com/authorize".into()),
                token_url: a
                    .token_url
                    .clone()
                    .unwrap_or_else(|| "https://accounts.spotify.com/api/token".into()),
                client: match a.client_secret.clone() {
                    Some(secret) => ClientAuth::Basic { id, secret },
                    None => ClientAuth::Body { id, secret: None },
                },
                // What the connector reads: saved tracks and albums, followed artists, playlists.
                // (developer.spotify.com/documentation/web-api/concepts/scopes)
                scope: a.scope.clone().unwrap_or_else(|| {
                    "user-library-read user-follow-read playlist-read-private playlist-read-collaborative"
                        .into()
                }),
                scope_on_refresh: false,
            }),
        })),
        SourceKind::Playstation => Some(Arc::new(playstation::PlayStation::new(
            http,
            a.auth_base_url.clone(),
        ))),
        SourceKind::Xbox => Some(Arc::new(xbox::Xbox::new(http, a))),
        SourceKind::Steam | SourceKind::Rest => None,
    }
}

/// The refresh token a stored credential renews with; without one, the person must connect again.
fn stored_refresh_token(credential: &Credential) -> Result<&str, AuthFailure> {
    credential.field("refresh_token").map_err(|_| {
        AuthFailure::refused(
            ImportErrorCode::AuthExpired,
            "no refresh token: connect again",
        )
    })
}

/// A non-empty string field of what a person sent.
fn given<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    fields
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// A stored credential from a pasted access token (and refresh token, and `expires_in`, when given).
fn pasted_tokens(given_fields: &Map<String, Value>, now: i64) -> Option<Map<String, Value>> {
    let access = given(given_fields, "access_token")?;
    let mut out = Map::new();
    out.insert("access_token".into(), access.into());
    if let Some(refresh) = given(given_fields, "refresh_token") {
        out.insert("refresh_token".into(), refresh.into());
    }
    if let Some(secs) = given_fields.get("expires_in").and_then(Value::as_u64) {
        out.insert("expires_at".into(), (now + secs as i64 * 1000).into());
    }
    Some(out)
}

/// Spotify: pasted tokens, or the consent flow; renewed with the refresh token when a `client_id` is
/// configured (the token endpoint needs it).
struct Spotify {
    http: reqwest::Client,
    oauth: Option<OAuthClient>,
}

impl Spotify {
    async fn renew_from(
        &self,
        mut fields: Map<String, Value>,
        refresh: &str,
        now: i64,
    ) -> Result<Map<String, Value>, AuthFailure> {
        let oauth = self.oauth.as_ref().ok_or_else(|| {
            AuthFailure::refused(
                ImportErrorCode::AuthExpired,
                "the access token expired and no `client_id` is configured to renew it: connect again",
            )
        })?;
        oauth
            .refresh(&self.http, refresh)
            .await?
            .store_into(&mut fields, now);
        Ok(fields)
    }
}

impl Session for Spotify {
    fn connect_fields(&self) -> Vec<String> {
        vec!["access_token".into()]
    }

    fn connect<'a>(
        &'a self,
        given_fields: Map<String, Value>,
        now: i64,
    ) -> BoxFuture<'a, Result<Map<String, Value>, ConnectFailure>> {
        Box::pin(async move {
            if let Some(fields) = pasted_tokens(&given_fields, now) {
                return Ok(fields);
            }
            match given(&given_fields, "refresh_token") {
                Some(refresh) if self.oauth.is_some() => {
                    let mut fields = Map::new();
                    fields.insert("refresh_token".into(), refresh.into());
                    Ok(self.renew_from(fields, refresh, now).await?)
                }
                _ => Err(ConnectFailure::Invalid(
                    "a `spotify` connection needs `access_token` (with `refresh_token` to renew it), or \
                     `refresh_token` alone when a `client_id` is configured; or connect through the dashboard"
                        .into(),
                )),
            }
        })
    }

    fn renewable(&self, credential: &Credential) -> bool {
        self.oauth.is_some() && credential.field("refresh_token").is_ok()
    }

    fn renew<'a>(
        &'a self,
        credential: &'a Credential,
        now: i64,
    ) -> BoxFuture<'a, Result<Map<String, Value>, AuthFailure>> {
        Box::pin(async move {
            let refresh = stored_refresh_token(credential)?;
            self.renew_from(credential.fields().clone(), refresh, now)
                .await
        })
    }

    fn code_flow(&self) -> Option<&OAuthClient> {
        self.oauth.as_ref()
    }

    fn exchange_code<'a>(
        &'a self,
        code: &'a str,
        redirect_uri: &'a str,
        verifier: Option<&'a str>,
        now: i64,
    ) -> BoxFuture<'a, Result<Map<String, Value>, AuthFailure>> {
        Box::pin(async move {
            let oauth = self.oauth.as_ref().ok_or_else(|| {
                AuthFailure::refused(
                    ImportErrorCode::AuthUnsupported,
                    "no `client_id` is configured",
                )
            })?;
            let mut fields = Map::new();
            oauth
                .exchange_code(&self.http, code, redirect_uri, verifier)
                .await?
                .store_into(&mut fields, now);
            Ok(fields)
        })
    }
}
