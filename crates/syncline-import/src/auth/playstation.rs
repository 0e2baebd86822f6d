//! PlayStation Network sign-in, as psn-api documents it (github.com/achievements-app/psn-api,
//! `src/authenticate/`): the person signs in on playstation.com and copies the `npsso` value that
//! `https://ca.account.sony.com/api/v1/ssocookie` shows. That NPSSO, sent as a cookie to
//! `{auth_base_url}/authorize` with the PlayStation app's client id, answers a 302 whose `Location` carries
//! `?code=`; the code goes to `{auth_base_url}/token` (HTTP Basic with the app's client, `token_format=jwt`)
//! for an access token (about an hour) and a refresh token (about two months), and the refresh token is
//! renewed at the same endpoint.
//!
//! The NPSSO itself is never stored: only the tokens it was exchanged for.

use serde_json::{Map, Value};
use syncline_core::ImportErrorCode;

use super::oauth::{ClientAuth, OAuthClient};
use super::{AuthFailure, ConnectFailure, Session, given, pasted_tokens, stored_refresh_token};
use crate::source::{BoxFuture, Credential};

/// The PlayStation app's OAuth client, which psn-api uses too.
const CLIENT_ID: &str = "09515159-7237-4370-9b40-3806e67c0891";
const CLIENT_SECRET: &str = "ucPjka5tntB2KqsP";
const REDIRECT_URI: &str = "com.scee.psxandroid.scecompcall://redirect";
const SCOPE: &str = "psn:mobile.v2.core psn:clientapp";
const AUTH_BASE_URL: &str = "https://ca.account.sony.com/api/authz/v3/oauth";

pub(crate) struct PlayStation {
    http: reqwest::Client,
    base: String,
    oauth: OAuthClient,
}

impl PlayStation {
    pub(crate) fn new(http: reqwest::Client, base: Option<String>) -> PlayStation {
        let base = base
            .as_deref()
            .unwrap_or(AUTH_BASE_URL)
            .trim_end_matches('/')
            .to_string();
        PlayStation {
            http,
            oauth: OAuthClient {
                auth_url: format!("{base}/authorize"),
                token_url: format!("{base}/token"),
                client: ClientAuth::Basic {
                    id: CLIENT_ID.into(),
                    secret: CLIENT_SECRET.into(),
                },
                scope: SCOPE.into(),
                scope_on_refresh: true,
            },
            base,
        }
    }

    /// NPSSO → authorization code: a GET with `Cookie: npsso=…`, answered by a redirect (not followed)
    /// whose `Location` holds `code`.
    async fn code(&self, npsso: &str) -> Result<String, AuthFailure> {
        if !npsso.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
            return Err(refused_npsso());
        }
        let response = self
            .http
            .get(format!("{}/authorize", self.base))
            .query(&[
                ("access_type", "offline"),
                ("client_id", CLIENT_ID),
                ("redirect_uri", REDIRECT_URI),
                ("response_type", "code"),
                ("scope", SCOPE),
            ])
            .header(reqwest::header::COOKIE, format!("npsso={npsso}"))
            .send()
            .await
            .map_err(|e| AuthFailure::unreachable("Sony's sign-in service", &e))?;
        // PlayStation's 429s say when with `X-RateLimit-Next-Available` or `Retry-After` (crate::ratelimit).
        if let Some(limited) =
            AuthFailure::rate_limit(response.status().as_u16(), response.headers())
        {
            return Err(limited);
        }
        if response.status().is_server_error() {
            return Err(AuthFailure::Unavailable(format!(
                "Sony's sign-in service answered {}",
                response.status().as_u16()
            )));
        }
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let query = location.split_once('?').map_or("", |(_, q)| q);
        let query = query.split('#').next().unwrap_or("");
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "code")
            .map(|(_, v)| v.to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(refused_npsso)
    }

    async fn tokens(
        &self,
        mut fields: Map<String, Value>,
        form: Vec<(&str, String)>,
        now: i64,
    ) -> Result<Map<String, Value>, AuthFailure> {
        self.oauth
            .token_request(&self.http, form)
            .await?
            .store_into(&mut fields, now);
        Ok(fields)
    }
}

fn refused_npsso() -> AuthFailure {
    AuthFailure::refused(
        ImportErrorCode::AuthNpssoRefused,
        "Sony did not accept the NPSSO: sign in on playstation.com, open \
         https://ca.account.sony.com/api/v1/ssocookie and copy the `npsso` value it shows",
    )
}

impl Session for PlayStation {
    fn connect_fields(&self) -> Vec<String> {
        vec!["npsso".into()]
    }

    fn connect<'a>(
        &'a self,
        given_fields: Map<String, Value>,
        now: i64,
    ) -> BoxFuture<'a, Result<Map<String, Value>, ConnectFailure>> {
        Box::pin(async move {
            let mut base = Map::new();
            if let Some(account) = given(&given_fields, "account_id") {
                base.insert("account_id".into(), account.into());
            }
            if let Some(npsso) = given(&given_fields, "npsso") {
                let code = self.code(npsso).await?;
                let form = vec![
                    ("code", code),
                    ("redirect_uri", REDIRECT_URI.to_string()),
                    ("grant_type", "authorization_code".to_string()),
                    ("token_format", "jwt".to_string()),
                ];
                return Ok(self.tokens(base, form, now).await?);
            }
            match pasted_tokens(&given_fields, now) {
                Some(tokens) => {
                    base.extend(tokens);
                    Ok(base)
                }
                None => Err(ConnectFailure::Invalid(
                    "a `playstation` connection needs `npsso`: sign in on playstation.com, then copy the \
                     `npsso` value from https://ca.account.sony.com/api/v1/ssocookie"
                        .into(),
                )),
            }
        })
    }

    fn renewable(&self, credential: &Credential) -> bool {
        credential.field("refresh_token").is_ok()
    }

    fn renew<'a>(
        &'a self,
        credential: &'a Credential,
        now: i64,
    ) -> BoxFuture<'a, Result<Map<String, Value>, AuthFailure>> {
        Box::pin(async move {
            let refresh = stored_refresh_token(credential)?;
            let form = vec![
                ("refresh_token", refresh.to_string()),
                ("grant_type", "refresh_token".to_string()),
                ("token_format", "jwt".to_string()),
                ("scope", SCOPE.to_string()),
            ];
            self.tokens(credential.fields().clone(), form, now).await
        })
    }
}
