//! Fake authorization servers, following the documented flows:
//!
//! - OAuth 2.0 authorization code (RFC 6749 §4.1) as Spotify documents it
//!   (developer.spotify.com/documentation/web-api/tutorials/code-flow and code-pkce-flow): a consent page at
//!   `/authorize` whose "Agree" button redirects to `redirect_uri?code=…&state=…` ("Cancel":
//!   `?error=access_denied&state=…`); the token endpoint at `/api/token` takes `authorization_code` with the
//!   client authenticated by HTTP Basic, or by `client_id` in the body plus a PKCE `code_verifier` checked
//!   against the `S256` challenge (RFC 7636 §4.6); `refresh_token` (…/tutorials/refreshing-tokens), which
//!   may rotate the refresh token. Errors are RFC 6749 §5.2 bodies: `invalid_grant`, `invalid_client`.
//!   Microsoft's `login.live.com/oauth20_authorize.srf` and `oauth20_token.srf` (client id and secret in
//!   the form, as xbox-webapi-python sends them) are served by the same handlers.
//! - PlayStation's NPSSO sign-in as psn-api uses it (github.com/achievements-app/psn-api,
//!   `src/authenticate/`): `GET /api/authz/v3/oauth/authorize` with `Cookie: npsso=…` answers a 302 to
//!   `com.scee.psxandroid.scecompcall://redirect/?code=v3.…`, and `/api/authz/v3/oauth/token` takes the code
//!   or a refresh token with the PlayStation app's Basic client.
//! - Xbox Live's user token (`/user/authenticate`, RPS ticket `d=<access token>`) and XSTS token
//!   (`/xsts/authorize`, relying party `http://xboxlive.com`), as xbox-webapi-python's
//!   `authentication/manager.py` calls them, with `XErr` refusals (401).
//!
//! Access tokens it issues are accepted by the API fake whose [`Control`] it was given, for a set number of
//! requests: a short-lived token that runs out mid-walk.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};
use sha2::Digest;

use super::{Control, Served, serve};

/// The NPSSO the fake PlayStation sign-in accepts.
pub const PSN_NPSSO: &str = "npsso-test-value-0123456789abcdef";
const PSN_CLIENT_ID: &str = "09515159-7237-4370-9b40-3806e67c0891";
const PSN_CLIENT_SECRET: &str = "ucPjka5tntB2KqsP";
const PSN_REDIRECT: &str = "com.scee.psxandroid.scecompcall://redirect";

/// How the token endpoint expects the client to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthClientStyle {
    /// `Authorization: Basic` with the client secret (Spotify's code flow, PlayStation).
    Basic,
    /// A public client: `client_id` in the body and PKCE (Spotify's PKCE flow).
    Pkce,
    /// `client_id` and `client_secret` in the body (Microsoft).
    Body,
}

#[derive(Debug)]
struct Grant {
    redirect_uri: String,
    challenge: Option<String>,
}

/// A consent request: redirect uri, state, PKCE challenge.
type Consent = (String, String, Option<String>);

#[derive(Debug)]
struct AuthShared {
    control: Arc<Control>,
    /// Where issued access tokens are good (for Xbox: where XSTS tokens are).
    api: Arc<Control>,
    client_id: String,
    client_secret: String,
    style: OAuthClientStyle,
    /// Xbox: access tokens are Microsoft's, good only at `/user/authenticate`.
    xbox: bool,
    access_uses: AtomicU64,
    expires_in: AtomicU64,
    rotate: AtomicBool,
    revoked: AtomicBool,
    serial: AtomicU64,
    token_calls: AtomicU64,
    /// Consent requests waiting for the person's answer, by id: (redirect_uri, state, challenge).
    pending: Mutex<HashMap<String, Consent>>,
    codes: Mutex<HashMap<String, Grant>>,
    refresh_tokens: Mutex<HashSet<String>>,
    ms_access: Mutex<HashSet<String>>,
    user_tokens: Mutex<HashSet<String>>,
    xerr: Mutex<Option<u64>>,
    grants: Mutex<Vec<String>>,
    uhs: String,
    xuid: String,
}

/// A fake authorization server (see the module doc). Dropping it stops the server.
#[derive(Debug)]
pub struct FakeAuthServer {
    pub control: Arc<Control>,
    shared: Arc<AuthShared>,
    pub served: Served,
}

/// The Xbox flavour is the same server with the user and XSTS endpoints in use.
pub type FakeXboxAuth = FakeAuthServer;

impl FakeAuthServer {
    /// An OAuth server for `client_id` (and `client_secret`, unless `style` is PKCE) whose access tokens
    /// `api` accepts.
    pub async fn start(
        api: Arc<Control>,
        client_id: &str,
        client_secret: &str,
        style: OAuthClientStyle,
    ) -> FakeAuthServer {
        Self::build(api, client_id, client_secret, style, false, "", "").await
    }

    /// PlayStation's sign-in: NPSSO [`PSN_NPSSO`], the PlayStation app's client.
    pub async fn playstation(api: Arc<Control>) -> FakeAuthServer {
        Self::build(
            api,
            PSN_CLIENT_ID,
            PSN_CLIENT_SECRET,
            OAuthClientStyle::Basic,
            false,
            "",
            "",
        )
        .await
    }

    /// Microsoft's token endpoint plus Xbox Live's user and XSTS endpoints, for the user hash `uhs` and
    /// xuid `xuid`; XSTS tokens are good at `api`.
    pub async fn xbox(
        api: Arc<Control>,
        client_id: &str,
        client_secret: &str,
        uhs: &str,
        xuid: &str,
    ) -> FakeAuthServer {
        Self::build(
            api,
            client_id,
            client_secret,
            OAuthClientStyle::Body,
            true,
            uhs,
            xuid,
        )
        .await
    }

    async fn build(
        api: Arc<Control>,
        client_id: &str,
        client_secret: &str,
        style: OAuthClientStyle,
        xbox: bool,
        uhs: &str,
        xuid: &str,
    ) -> FakeAuthServer {
        let shared = Arc::new(AuthShared {
            control: Arc::new(Control::default()),
            api,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            style,
            xbox,
            access_uses: AtomicU64::new(u64::MAX),
            expires_in: AtomicU64::new(3600),
            rotate: AtomicBool::new(true),
            revoked: AtomicBool::new(false),
            serial: AtomicU64::new(0),
            token_calls: AtomicU64::new(0),
            pending: Mutex::default(),
            codes: Mutex::default(),
            refresh_tokens: Mutex::default(),
            ms_access: Mutex::default(),
            user_tokens: Mutex::default(),
            xerr: Mutex::default(),
            grants: Mutex::default(),
            uhs: uhs.into(),
            xuid: xuid.into(),
        });
        let router = Router::new()
            .route("/authorize", get(consent_page))
            .route("/oauth20_authorize.srf", get(consent_page))
            .route("/authorize/answer", post(consent_answer))
            .route("/api/token", post(token))
            .route("/oauth20_token.srf", post(token))
            .route("/api/authz/v3/oauth/authorize", get(npsso_authorize))
            .route("/api/authz/v3/oauth/token", post(token))
            .route("/user/authenticate", post(user_authenticate))
            .route("/xsts/authorize", post(xsts_authorize))
            .with_state(shared.clone());
        let served = serve(router, shared.control.clone()).await;
        FakeAuthServer {
            control: shared.control.clone(),
            shared,
            served,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.served.base_url
    }

    /// Each access token issued from now on is good for `uses` API requests.
    pub fn set_access_uses(&self, uses: u64) {
        self.shared.access_uses.store(uses, Ordering::SeqCst);
    }

    /// The `expires_in` (seconds) it answers.
    pub fn set_expires_in(&self, secs: u64) {
        self.shared.expires_in.store(secs, Ordering::SeqCst);
    }

    /// Whether a refresh hands out a new refresh token and forgets the old one (default: yes).
    pub fn set_rotate(&self, rotate: bool) {
        self.shared.rotate.store(rotate, Ordering::SeqCst);
    }

    /// The person revoked the app's access: every refresh token is refused with `invalid_grant`.
    pub fn revoke(&self) {
        self.shared.revoked.store(true, Ordering::SeqCst);
    }

    /// XSTS refuses with this `XErr` (2148916233: no Xbox account; 2148916238: child account).
    pub fn set_xerr(&self, xerr: Option<u64>) {
        *self.shared.xerr.lock().unwrap() = xerr;
    }

    /// Calls of the token endpoint so far.
    pub fn token_calls(&self) -> u64 {
        self.shared.token_calls.load(Ordering::SeqCst)
    }

    /// The `grant_type` of every token call, in order.
    pub fn grants(&self) -> Vec<String> {
        self.shared.grants.lock().unwrap().clone()
    }

    /// A refresh token for a person who consented earlier (what a person pastes, or has stored).
    pub fn mint_refresh_token(&self) -> String {
        let token = self.shared.next("refresh");
        self.shared
            .refresh_tokens
            .lock()
            .unwrap()
            .insert(token.clone());
        token
    }
}

impl AuthShared {
    fn next(&self, kind: &str) -> String {
        format!(
            "{kind}-{}-{:x}",
            self.serial.fetch_add(1, Ordering::SeqCst),
            std::process::id()
        )
    }

    /// Issues an access token (and a refresh token, unless `keep` is the one being refreshed and
    /// rotation is off).
    fn issue(&self, keep: Option<&str>) -> Value {
        let access = self.next("access");
        if self.xbox {
            self.ms_access.lock().unwrap().insert(access.clone());
        } else {
            self.api
                .issue(&access, self.access_uses.load(Ordering::SeqCst));
        }
        let rotate = keep.is_none() || self.rotate.load(Ordering::SeqCst);
        let mut body = json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in.load(Ordering::SeqCst),
            "scope": "user-library-read",
        });
        if rotate {
            let refresh = self.next("refresh");
            let mut tokens = self.refresh_tokens.lock().unwrap();
            if let Some(old) = keep {
                tokens.remove(old);
            }
            tokens.insert(refresh.clone());
            body["refresh_token"] = json!(refresh);
        }
        body
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// `application/x-www-form-urlencoded` pairs.
fn form(body: &str) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

/// The consent page (RFC 6749 §4.1.1): checks the client and, for a public client, the PKCE challenge.
async fn consent_page(
    State(s): State<Arc<AuthShared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = s.control.gate().await {
        return r;
    }
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("client_id") != s.client_id || get("response_type") != "code" {
        return (StatusCode::BAD_REQUEST, "INVALID_CLIENT: Invalid client").into_response();
    }
    let redirect_uri = get("redirect_uri");
    if !redirect_uri.starts_with("http") {
        return (
            StatusCode::BAD_REQUEST,
            "INVALID_CLIENT: Invalid redirect URI",
        )
            .into_response();
    }
    let challenge = q.get("code_challenge").cloned();
    if s.style == OAuthClientStyle::Pkce
        && (challenge.is_none() || get("code_challenge_method") != "S256")
    {
        return (StatusCode::BAD_REQUEST, "code_challenge required").into_response();
    }
    let id = s.next("consent");
    s.pending
        .lock()
        .unwrap()
        .insert(id.clone(), (redirect_uri, get("state"), challenge));
    Html(format!(
        "<!doctype html><title>Authorize</title><h1>Allow access to your account?</h1>\
         <p>Scopes: {}</p><form method=\"post\" action=\"/authorize/answer\">\
         <input type=\"hidden\" name=\"request\" value=\"{}\">\
         <button name=\"answer\" value=\"agree\" id=\"agree\">Agree</button>\
         <button name=\"answer\" value=\"cancel\" id=\"cancel\">Cancel</button></form>",
        escape(&get("scope")),
        escape(&id)
    ))
    .into_response()
}

/// The person's answer: a redirect back with a code, or with `error=access_denied` (RFC 6749 §4.1.2).
async fn consent_answer(State(s): State<Arc<AuthShared>>, body: String) -> Response {
    let f = form(&body);
    let Some((redirect_uri, state, challenge)) = f
        .get("request")
        .and_then(|id| s.pending.lock().unwrap().remove(id))
    else {
        return (StatusCode::BAD_REQUEST, "unknown consent request").into_response();
    };
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let state = urlencode(&state);
    let location = if f.get("answer").map(String::as_str) == Some("agree") {
        let code = s.next("code");
        s.codes.lock().unwrap().insert(
            code.clone(),
            Grant {
                redirect_uri: redirect_uri.clone(),
                challenge,
            },
        );
        format!("{redirect_uri}{sep}code={code}&state={state}")
    } else {
        format!("{redirect_uri}{sep}error=access_denied&state={state}")
    };
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// PlayStation: the NPSSO cookie answered with a redirect carrying a code.
async fn npsso_authorize(
    State(s): State<Arc<AuthShared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = s.control.gate().await {
        return r;
    }
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let npsso_ok = cookie
        .split(';')
        .any(|c| c.trim() == format!("npsso={PSN_NPSSO}"));
    let client_ok = q.get("client_id").map(String::as_str) == Some(PSN_CLIENT_ID)
        && q.get("redirect_uri").map(String::as_str) == Some(PSN_REDIRECT)
        && q.get("response_type").map(String::as_str) == Some("code");
    let location = if npsso_ok && client_ok {
        let code = format!("v3.{}", s.next("code"));
        s.codes.lock().unwrap().insert(
            code.clone(),
            Grant {
                redirect_uri: PSN_REDIRECT.into(),
                challenge: None,
            },
        );
        format!("{PSN_REDIRECT}/?code={code}&cid=fake-cid")
    } else {
        // What Sony answers without a valid sign-in: a redirect carrying an error, no code.
        format!(
            "{PSN_REDIRECT}/?error=login_required&error_code=4165&no_captcha=false&cid=fake-cid"
        )
    };
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

/// The token endpoint (RFC 6749 §4.1.3, §6), checking the client as its style says.
async fn token(State(s): State<Arc<AuthShared>>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = s.control.gate().await {
        return r;
    }
    s.token_calls.fetch_add(1, Ordering::SeqCst);
    let f = form(&body);
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    s.grants.lock().unwrap().push(get("grant_type"));
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let client_ok = match s.style {
        OAuthClientStyle::Basic => {
            basic.as_deref() == Some(&format!("{}:{}", s.client_id, s.client_secret))
        }
        OAuthClientStyle::Pkce => basic.is_none() && get("client_id") == s.client_id,
        OAuthClientStyle::Body => {
            get("client_id") == s.client_id
                && (s.client_secret.is_empty() || get("client_secret") == s.client_secret)
        }
    };
    if !client_ok {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Invalid client");
    }
    match get("grant_type").as_str() {
        "authorization_code" => {
            let Some(grant) = s.codes.lock().unwrap().remove(&get("code")) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid authorization code",
                );
            };
            if grant.redirect_uri != get("redirect_uri") {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid redirect URI",
                );
            }
            if let Some(challenge) = grant
                .challenge
                .filter(|_| s.style == OAuthClientStyle::Pkce)
            {
                let verifier = get("code_verifier");
                let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(sha2::Sha256::digest(verifier.as_bytes()));
                if verifier.len() < 43 || computed != challenge {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "code_verifier was incorrect",
                    );
                }
            }
            axum::Json(s.issue(None)).into_response()
        }
        "refresh_token" => {
            let refresh = get("refresh_token");
            let known = s.refresh_tokens.lock().unwrap().contains(&refresh);
            if !known || s.revoked.load(Ordering::SeqCst) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Refresh token revoked",
                );
            }
            axum::Json(s.issue(Some(&refresh))).into_response()
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        ),
    }
}

/// Xbox Live user authentication: the Microsoft access token as `RpsTicket: d=<token>`.
async fn user_authenticate(State(s): State<Arc<AuthShared>>, body: String) -> Response {
    if let Some(r) = s.control.gate().await {
        return r;
    }
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let ticket = body["Properties"]["RpsTicket"].as_str().unwrap_or("");
    let ok = body["RelyingParty"] == "http://auth.xboxlive.com"
        && body["Properties"]["AuthMethod"] == "RPS"
        && ticket
            .strip_prefix("d=")
            .is_some_and(|t| s.ms_access.lock().unwrap().contains(t));
    if !ok {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let token = s.next("user");
    s.user_tokens.lock().unwrap().insert(token.clone());
    axum::Json(json!({
        "IssueInstant": "2020-01-01T00:00:00.0000000Z",
        "NotAfter": "2099-01-15T00:00:00.0000000Z",
        "Token": token,
        "DisplayClaims": {"xui": [{"uhs": s.uhs}]},
    }))
    .into_response()
}

/// XSTS authorization for `http://xboxlive.com`: the XSTS token, or an `XErr` refusal.
async fn xsts_authorize(State(s): State<Arc<AuthShared>>, body: String) -> Response {
    if let Some(r) = s.control.gate().await {
        return r;
    }
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let user_ok = body["Properties"]["UserTokens"][0]
        .as_str()
        .is_some_and(|t| s.user_tokens.lock().unwrap().contains(t));
    if !user_ok || body["RelyingParty"] != "http://xboxlive.com" {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if let Some(xerr) = *s.xerr.lock().unwrap() {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"Identity": "0", "XErr": xerr, "Message": "", "Redirect": "https://start.ui.xboxlive.com/CreateAccount"})),
        )
            .into_response();
    }
    let token = s.next("xsts");
    s.api.issue(&token, s.access_uses.load(Ordering::SeqCst));
    axum::Json(json!({
        "IssueInstant": "2020-01-01T00:00:00.0000000Z",
        "NotAfter": "2099-01-15T00:00:00.0000000Z",
        "Token": token,
        "DisplayClaims": {"xui": [{"gtg": "Fake Gamer", "xid": s.xuid, "uhs": s.uhs, "agg": "Adult", "usr": "", "utr": "", "prv": ""}]},
    }))
    .into_response()
}
