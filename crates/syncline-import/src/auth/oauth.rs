//! An OAuth 2.0 client (RFC 6749) for one authorization server: the consent url of the authorization-code
//! flow, with PKCE (RFC 7636, `S256`) for a public client, and the token endpoint's `authorization_code` and
//! `refresh_token` grants, with the client authenticated by HTTP Basic or in the form body, as the service
//! asks. Token errors (RFC 6749 §5.2) are classified: `invalid_grant` means the person must connect again.
//!
//! It never puts a token, a code or a secret in an error message.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use serde_json::{Map, Value};
use sha2::Digest;
use syncline_core::ImportErrorCode;

use super::AuthFailure;

/// How the client proves who it is at the token endpoint.
#[derive(Debug, Clone)]
pub(crate) enum ClientAuth {
    /// `Authorization: Basic base64(client_id:client_secret)` (RFC 6749 §2.3.1; Spotify's code flow,
    /// PlayStation's app client).
    Basic { id: String, secret: String },
    /// `client_id` (and `client_secret`, when there is one) in the form body: a public client using PKCE
    /// (Spotify's PKCE flow), or Microsoft's token endpoint, which takes both there.
    Body { id: String, secret: Option<String> },
}

/// One authorization server.
#[derive(Debug, Clone)]
pub(crate) struct OAuthClient {
    pub auth_url: String,
    pub token_url: String,
    pub client: ClientAuth,
    /// Space-separated scopes asked for at consent.
    pub scope: String,
    /// Whether the refresh grant repeats `scope` (Microsoft's and PlayStation's token endpoints want it).
    pub scope_on_refresh: bool,
}

/// What a token endpoint answered (RFC 6749 §5.1).
#[derive(Debug, Clone)]
pub(crate) struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
    pub refresh_expires_in: Option<u64>,
}

impl Tokens {
    /// Writes the tokens into a stored credential: `access_token`, `expires_at` (epoch ms) and, when the
    /// server rotated it, the new `refresh_token` (otherwise the old one stays).
    pub(crate) fn store_into(&self, fields: &mut Map<String, Value>, now: i64) {
        fields.insert("access_token".into(), self.access_token.clone().into());
        match self.expires_in {
            Some(secs) => {
                fields.insert("expires_at".into(), (now + secs as i64 * 1000).into());
            }
            None => {
                fields.remove("expires_at");
            }
        }
        if let Some(refresh) = &self.refresh_token {
            fields.insert("refresh_token".into(), refresh.clone().into());
        }
        if let Some(secs) = self.refresh_expires_in {
            fields.insert(
                "refresh_expires_at".into(),
                (now + secs as i64 * 1000).into(),
            );
        }
    }
}

/// A PKCE code verifier (RFC 7636 §4.1: 43 to 128 unreserved characters) and its `S256` challenge.
pub(crate) fn pkce_pair() -> (String, String) {
    let verifier = random_token(48);
    (verifier.clone(), pkce_challenge(&verifier))
}

/// `len` random bytes from the OS, in unpadded base64url (cookie- and url-safe).
pub(crate) fn random_token(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `BASE64URL(SHA256(verifier))`, without padding (RFC 7636 §4.2).
pub(crate) fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

impl OAuthClient {
    /// A public client (no secret) proves the code with PKCE.
    pub(crate) fn uses_pkce(&self) -> bool {
        matches!(self.client, ClientAuth::Body { secret: None, .. })
    }

    fn client_id(&self) -> &str {
        match &self.client {
            ClientAuth::Basic { id, .. } | ClientAuth::Body { id, .. } => id,
        }
    }

    /// The consent page's url (RFC 6749 §4.1.1), with the PKCE challenge when there is one.
    pub(crate) fn authorize_url(
        &self,
        redirect_uri: &str,
        state: &str,
        challenge: Option<&str>,
    ) -> Result<String, AuthFailure> {
        let mut url = reqwest::Url::parse(&self.auth_url).map_err(|_| {
            AuthFailure::refused(
                ImportErrorCode::AuthMisconfigured,
                "the authorize url is not a url",
            )
        })?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("client_id", self.client_id())
                .append_pair("response_type", "code")
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("state", state);
            if !self.scope.is_empty() {
                q.append_pair("scope", &self.scope);
            }
            if let Some(challenge) = challenge {
                q.append_pair("code_challenge_method", "S256")
                    .append_pair("code_challenge", challenge);
            }
        }
        Ok(url.into())
    }

    /// The `authorization_code` grant (RFC 6749 §4.1.3; PKCE: RFC 7636 §4.5).
    pub(crate) async fn exchange_code(
        &self,
        http: &reqwest::Client,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
    ) -> Result<Tokens, AuthFailure> {
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", redirect_uri.to_string()),
        ];
        if let Some(v) = verifier {
            form.push(("code_verifier", v.to_string()));
        }
        if self.scope_on_refresh && !self.scope.is_empty() {
            form.push(("scope", self.scope.clone()));
        }
        self.token_request(http, form).await
    }

    /// The `refresh_token` grant (RFC 6749 §6).
    pub(crate) async fn refresh(
        &self,
        http: &reqwest::Client,
        refresh_token: &str,
    ) -> Result<Tokens, AuthFailure> {
        let mut form = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", refresh_token.to_string()),
        ];
        if self.scope_on_refresh && !self.scope.is_empty() {
            form.push(("scope", self.scope.clone()));
        }
        self.token_request(http, form).await
    }

    /// One POST to the token endpoint, with extra form fields a service wants (`token_format`).
    pub(crate) async fn token_request(
        &self,
        http: &reqwest::Client,
        mut form: Vec<(&str, String)>,
    ) -> Result<Tokens, AuthFailure> {
        let mut request = http.post(&self.token_url);
        match &self.client {
            ClientAuth::Basic { id, secret } => {
                let basic = STANDARD.encode(format!("{id}:{secret}"));
                request = request.header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"));
            }
            ClientAuth::Body { id, secret } => {
                form.push(("client_id", id.clone()));
                if let Some(secret) = secret {
                    form.push(("client_secret", secret.clone()));
                }
            }
        }
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| AuthFailure::unreachable("the token endpoint", &e))?;
        let status = response.status();
        if let Some(limited) = AuthFailure::rate_limit(status.as_u16(), response.headers()) {
            return Err(limited);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            let access_token = body["access_token"]
                .as_str()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    AuthFailure::Unavailable("the token endpoint sent no `access_token`".into())
                })?;
            return Ok(Tokens {
                access_token: access_token.to_string(),
                refresh_token: body["refresh_token"].as_str().map(str::to_string),
                expires_in: body["expires_in"]
                    .as_u64()
                    .or_else(|| body["expires_in"].as_str()?.parse().ok()),
                refresh_expires_in: body["refresh_token_expires_in"].as_u64(),
            });
        }
        if status.is_server_error() {
            return Err(AuthFailure::Unavailable(format!(
                "the token endpoint answered {}",
                status.as_u16()
            )));
        }
        Err(token_error(status.as_u16(), &body))
    }
}

/// RFC 6749 §5.2: `{"error": "...", "error_description": "..."}` on a 400 (or 401 for a bad client).
fn token_error(status: u16, body: &Value) -> AuthFailure {
    let error = body["error"].as_str().unwrap_or("");
    let described = body["error_description"]
        .as_str()
        .map(|d| format!(" ({})", d.chars().take(200).collect::<String>()))
        .unwrap_or_default();
    match error {
        "invalid_grant" => AuthFailure::refused(
            ImportErrorCode::AuthRevoked,
            format!(
                "the service refused to renew access (invalid_grant{described}): the consent was revoked or \
                 the refresh token expired; connect again"
            ),
        ),
        "invalid_client" | "unauthorized_client" => AuthFailure::refused(
            ImportErrorCode::AuthClientRefused,
            format!(
                "the service refused this app's client credentials ({error}{described}): check `client_id` \
                 and `client_secret`"
            ),
        ),
        "invalid_scope" => AuthFailure::refused(
            ImportErrorCode::AuthScopeMissing,
            format!("the service refused the scopes asked for{described}: connect again"),
        ),
        _ => AuthFailure::refused(
            ImportErrorCode::AuthRefused,
            format!(
                "the token endpoint answered {status}{}{described}: connect again",
                if error.is_empty() {
                    String::new()
                } else {
                    format!(" `{}`", error.chars().take(64).collect::<String>())
                }
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkce_challenge_is_the_rfc_7636_example() {
        // RFC 7636, appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let (verifier, challenge) = pkce_pair();
        assert!((43..=128).contains(&verifier.len()));
        assert_eq!(challenge, pkce_challenge(&verifier));
    }

    #[test]
    fn token_errors_are_classified() {
        let code = |status, body: Value| match token_error(status, &body) {
            AuthFailure::Refused { code, .. } => code.as_str(),
            AuthFailure::Unavailable(_) => "unavailable",
            AuthFailure::RateLimited(_) => "rate_limited",
        };
        assert_eq!(
            code(400, serde_json::json!({"error": "invalid_grant"})),
            "auth_revoked"
        );
        assert_eq!(
            code(401, serde_json::json!({"error": "invalid_client"})),
            "auth_client_refused"
        );
        assert_eq!(code(400, Value::Null), "auth_refused");
    }
}
