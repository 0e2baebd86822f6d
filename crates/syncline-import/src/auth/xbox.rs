//! Xbox Live sign-in, as xbox-webapi-python does it (github.com/OpenXbox/xbox-webapi-python,
//! `xbox/webapi/authentication/manager.py`): a Microsoft account OAuth 2.0 refresh token (scopes
//! `Xboxlive.signin Xboxlive.offline_access`, token endpoint `login.live.com/oauth20_token.srf` taking
//! `client_id` and `client_secret` in the form) gives an access token; that access token, as the RPS ticket
//! `d=<token>`, gives an Xbox Live user token (`user.auth.xboxlive.com/user/authenticate`); the user token
//! gives an XSTS token for the relying party `http://xboxlive.com` (`xsts.auth.xboxlive.com/xsts/authorize`),
//! whose display claims carry the user hash `uhs` and the `xid`. Requests then carry
//! `Authorization: XBL3.0 x=<uhs>;<token>`.
//!
//! XSTS refusals name the reason in `XErr` (documented by Microsoft for the Xbox Live REST API and
//! collected in xbox-webapi and prismarine-auth): 2148916233 the account has no Xbox profile, 2148916238
//! a child account outside a family, 2148916235 Xbox Live is not offered in the account's country,
//! 2148916236/7 adult verification is needed.

use serde_json::{Map, Value, json};
use syncline_core::ImportErrorCode;

use super::oauth::{ClientAuth, OAuthClient};
use super::{AuthFailure, ConnectFailure, Session, given, stored_refresh_token};
use crate::config::AuthConfig;
use crate::source::{BoxFuture, Credential};

pub(crate) struct Xbox {
    http: reqwest::Client,
    oauth: Option<OAuthClient>,
    user_auth_url: String,
    xsts_url: String,
}

impl Xbox {
    pub(crate) fn new(http: reqwest::Client, a: &AuthConfig) -> Xbox {
        Xbox {
            http,
            oauth: a.client_id.clone().map(|id| OAuthClient {
                auth_url: a
                    .auth_url
                    .clone()
                    .unwrap_or_else(|| "https://login.live.com/oauth20_authorize.srf".into()),
                token_url: a
                    .token_url
                    .clone()
                    .unwrap_or_else(|| "https://login.live.com/oauth20_token.srf".into()),
                client: ClientAuth::Body {
                    id,
                    secret: a.client_secret.clone(),
                },
                scope: a
                    .scope
                    .clone()
                    .unwrap_or_else(|| "Xboxlive.signin Xboxlive.offline_access".into()),
                scope_on_refresh: true,
            }),
            user_auth_url: a
                .user_auth_url
                .clone()
                .unwrap_or_else(|| "https://user.auth.xboxlive.com/user/authenticate".into()),
            xsts_url: a
                .xsts_url
                .clone()
                .unwrap_or_else(|| "https://xsts.auth.xboxlive.com/xsts/authorize".into()),
        }
    }

    fn oauth(&self) -> Result<&OAuthClient, AuthFailure> {
        self.oauth.as_ref().ok_or_else(|| {
            AuthFailure::refused(
                ImportErrorCode::AuthNotConfigured,
                "an Xbox connection from a Microsoft refresh token needs the source's `client_id` (an Azure \
                 app registration) in the configuration",
            )
        })
    }

    /// Microsoft access token → user token → XSTS token: the credential's `uhs`, `token`, `xuid` and
    /// `expires_at` (the XSTS token's `NotAfter`).
    async fn xsts(
        &self,
        access_token: &str,
        refresh_token: Option<String>,
        now: i64,
    ) -> Result<Map<String, Value>, AuthFailure> {
        let user = self
            .post(
                &self.user_auth_url,
                json!({
                    "RelyingParty": "http://auth.xboxlive.com",
                    "TokenType": "JWT",
                    "Properties": {
                        "AuthMethod": "RPS",
                        "SiteName": "user.auth.xboxlive.com",
                        "RpsTicket": format!("d={access_token}"),
                    },
                }),
                "Xbox Live user authentication",
            )
            .await?;
        let user_token = user["Token"].as_str().ok_or_else(|| {
            AuthFailure::Unavailable("Xbox Live user authentication sent no `Token`".into())
        })?;
        let xsts = self
            .post(
                &self.xsts_url,
                json!({
                    "RelyingParty": "http://xboxlive.com",
                    "TokenType": "JWT",
                    "Properties": {"UserTokens": [user_token], "SandboxId": "RETAIL"},
                }),
                "Xbox Live XSTS authorization",
            )
            .await?;
        let claims = &xsts["DisplayClaims"]["xui"][0];
        let (Some(token), Some(uhs), Some(xuid)) = (
            xsts["Token"].as_str(),
            claims["uhs"].as_str(),
            claims["xid"].as_str(),
        ) else {
            return Err(AuthFailure::Unavailable(
                "the XSTS answer lacks `Token`, `uhs` or `xid`".into(),
            ));
        };
        let mut fields = Map::new();
        fields.insert("uhs".into(), uhs.into());
        fields.insert("token".into(), token.into());
        fields.insert("xuid".into(), xuid.into());
        let expires_at = xsts["NotAfter"]
            .as_str()
            .and_then(epoch_ms)
            .unwrap_or(now + 3_600_000);
        fields.insert("expires_at".into(), expires_at.into());
        if let Some(refresh) = refresh_token {
            fields.insert("refresh_token".into(), refresh.into());
        }
        Ok(fields)
    }

    async fn post(&self, url: &str, body: Value, what: &str) -> Result<Value, AuthFailure> {
        let response = self
            .http
            .post(url)
            .header("x-xbl-contract-version", "1")
            .json(&body)
            .send()
            .await
            .map_err(|e| AuthFailure::unreachable(what, &e))?;
        let status = response.status();
        // Xbox Live's 429s carry `Retry-After` (learn.microsoft.com/gaming/gdk/_content/gc/live/features/
        // general/rate-limits).
        if let Some(limited) = AuthFailure::rate_limit(status.as_u16(), response.headers()) {
            return Err(limited);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        if status.is_server_error() {
            return Err(AuthFailure::Unavailable(format!(
                "{what} answered {}",
                status.as_u16()
            )));
        }
        Err(xerr(status.as_u16(), &body, what))
    }

    async fn renew_from(&self, refresh: &str, now: i64) -> Result<Map<String, Value>, AuthFailure> {
        let tokens = self.oauth()?.refresh(&self.http, refresh).await?;
        let rotated = tokens
            .refresh_token
            .clone()
            .unwrap_or_else(|| refresh.to_string());
        self.xsts(&tokens.access_token, Some(rotated), now).await
    }
}

/// An XSTS or user-token refusal, by its `XErr`.
fn xerr(status: u16, body: &Value, what: &str) -> AuthFailure {
    match body["XErr"].as_u64() {
        Some(2_148_916_233) => AuthFailure::refused(
            ImportErrorCode::AuthNoXboxAccount,
            "this Microsoft account has no Xbox profile: sign in once on xbox.com to create one, then connect again",
        ),
        Some(2_148_916_238) => AuthFailure::refused(
            ImportErrorCode::AuthChildAccount,
            "this is a child account: an adult must add it to a Microsoft family (account.microsoft.com/family) before it can use Xbox Live",
        ),
        Some(2_148_916_235) => AuthFailure::refused(
            ImportErrorCode::AuthRegionUnavailable,
            "Xbox Live is not available in this account's country or region",
        ),
        Some(2_148_916_236 | 2_148_916_237) => AuthFailure::refused(
            ImportErrorCode::AuthVerificationRequired,
            "this account must complete adult verification on xbox.com before it can use Xbox Live",
        ),
        Some(other) => AuthFailure::refused(
            ImportErrorCode::AuthRefused,
            format!("{what} refused the account (XErr {other}): connect again"),
        ),
        None => AuthFailure::refused(
            ImportErrorCode::AuthRefused,
            format!("{what} answered {status}: connect again"),
        ),
    }
}

/// An RFC 3339 time as epoch milliseconds. Xbox Live's `NotAfter` has seven fractional digits and `Z`
/// (`"NotAfter": "2099-11-12T13:11:44.1945885Z"`, as xbox-webapi-python's recorded XSTS answers show:
/// github.com/OpenXbox/xbox-webapi-python, `tests/data/responses/auth_xsts_token.json`); any RFC 3339 form
/// is read (`time`'s `Rfc3339`: docs.rs/time/latest/time/format_description/well_known/struct.Rfc3339.html,
/// any number of fractional digits, `Z` or an offset). Digits past the millisecond are dropped, never
/// rounded up, so an expiry is never read as later than it is.
fn epoch_ms(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let at = time::OffsetDateTime::parse(text.trim(), &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

impl Session for Xbox {
    fn connect_fields(&self) -> Vec<String> {
        vec!["refresh_token".into()]
    }

    fn connect<'a>(
        &'a self,
        given_fields: Map<String, Value>,
        now: i64,
    ) -> BoxFuture<'a, Result<Map<String, Value>, ConnectFailure>> {
        Box::pin(async move {
            if let Some(refresh) = given(&given_fields, "refresh_token") {
                return Ok(self.renew_from(refresh, now).await?);
            }
            // An XSTS token obtained elsewhere, used until it expires.
            if let (Some(uhs), Some(token), Some(xuid)) = (
                given(&given_fields, "uhs"),
                given(&given_fields, "token"),
                given(&given_fields, "xuid"),
            ) {
                let mut fields = Map::new();
                fields.insert("uhs".into(), uhs.into());
                fields.insert("token".into(), token.into());
                fields.insert("xuid".into(), xuid.into());
                return Ok(fields);
            }
            Err(ConnectFailure::Invalid(
                "an `xbox` connection needs a Microsoft account `refresh_token` (or connect through the \
                 dashboard)"
                    .into(),
            ))
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
            self.renew_from(refresh, now).await
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
            let tokens = self
                .oauth()?
                .exchange_code(&self.http, code, redirect_uri, verifier)
                .await?;
            self.xsts(&tokens.access_token, tokens.refresh_token, now)
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsts_times_and_refusals_are_read() {
        // What XSTS answers (seven fractional digits, `Z`), and the other RFC 3339 forms.
        for (text, ms) in [
            ("2099-11-12T13:11:44.1945885Z", Some(4_098_172_304_194)),
            ("2024-03-01T12:00:00.1234567Z", Some(1_709_294_400_123)),
            ("2024-03-01T12:00:00.9999999Z", Some(1_709_294_400_999)),
            ("1970-01-01T00:00:01.5Z", Some(1500)),
            ("2024-03-01T12:00:00Z", Some(1_709_294_400_000)),
            ("2024-03-01t12:00:00z", Some(1_709_294_400_000)),
            ("2024-03-01T13:30:00.1234567+01:30", Some(1_709_294_400_123)),
            ("2024-03-01T04:00:00-08:00", Some(1_709_294_400_000)),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800_000)),
            ("1969-12-31T23:59:59.5Z", Some(-500)),
            // Not RFC 3339: no offset, no seconds, a day that does not exist, not a time.
            ("2024-03-01T12:00:00.1234567", None),
            ("2024-03-01T12:00Z", None),
            ("2023-02-29T00:00:00Z", None),
            ("2024-13-01T00:00:00Z", None),
            ("soon", None),
            ("", None),
        ] {
            assert_eq!(epoch_ms(text), ms, "{text}");
        }
        let code = |body: Value| match xerr(401, &body, "XSTS") {
            AuthFailure::Refused { code, .. } => code.as_str(),
            AuthFailure::Unavailable(_) | AuthFailure::RateLimited(_) => "unavailable",
        };
        assert_eq!(code(json!({"XErr": 2148916233u64})), "auth_no_xbox_account");
        assert_eq!(code(json!({"XErr": 2148916238u64})), "auth_child_account");
        assert_eq!(code(Value::Null), "auth_refused");
    }
}
