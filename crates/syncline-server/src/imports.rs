//! The import routes: start, status, stop and reset of a user's imports from a third-party source, the list
//! of every source, and the user's credentials (`/v1/connections/{source}`), which are sealed before they
//! are stored and never returned or logged; and the consent flow of the sources that have one
//! (`POST /v1/connections/{source}/authorize` answers the consent page's url, and the service sends the
//! person back to `GET /v1/connections/{source}/callback`, which checks the sealed `state`, exchanges the
//! code and stores the tokens).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};
use syncline_core::ErrorCode;
use syncline_import::{ImportError, RunnerMode};

use crate::app::{ApiPath, ApiQuery, AppState, User, blocking, parse_json, read_body};
use crate::error::ApiError;

/// The import routes, merged into the main router.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/imports", get(list))
        .route("/v1/imports/{source}/start", post(start))
        .route("/v1/imports/{source}/status", get(status))
        .route("/v1/imports/{source}/stop", post(stop))
        .route("/v1/imports/{source}/reset", post(reset))
        .route("/v1/connections/{source}", put(connect).delete(disconnect))
        .route("/v1/connections/{source}/authorize", post(authorize))
        .route("/v1/connections/{source}/callback", get(callback))
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> ApiError {
        match e {
            ImportError::UnknownSource(_) => ApiError::new(ErrorCode::UnknownSource, e.to_string()),
            ImportError::NoConnection(_) => ApiError::new(ErrorCode::NoConnection, e.to_string()),
            ImportError::Sealed => ApiError::new(
                ErrorCode::ConnectionUnreadable,
                "the stored connection cannot be opened: connect again",
            ),
            ImportError::InvalidCredential(m) => ApiError::new(ErrorCode::InvalidCredential, m),
            ImportError::Refused { code, message } => {
                ApiError::new(ErrorCode::for_refused_connection(code), message)
            }
            ImportError::Unavailable(_) => {
                ApiError::new(ErrorCode::UpstreamUnavailable, e.to_string())
            }
            ImportError::RateLimited { retry_after_secs } => {
                ApiError::new(ErrorCode::UpstreamRateLimited, e.to_string())
                    .retry_after(retry_after_secs)
            }
            ImportError::NoConsentFlow(_) => ApiError::new(ErrorCode::NoConsentFlow, e.to_string()),
            ImportError::ConsentState(m) => ApiError::new(ErrorCode::InvalidState, m),
            ImportError::Store(e) => e.into(),
            other => {
                tracing::error!(error = %other, "import error");
                ApiError::internal()
            }
        }
    }
}

/// One source for one user: what it is and what a connect form asks for, whether the user is connected, every
/// stream's state (and the table it fills), and what each stream's latest walk wrote (`outcomes`).
async fn states(state: &AppState, user: &str, source: &str) -> Result<Value, ApiError> {
    let states = state.imports.status(user, source).await?;
    let connected = state.imports.connected(user, source).await?;
    let config = state.config.imports.sources.get(source);
    let (st, name) = (state.clone(), user.to_string());
    let activity = blocking(move || {
        st.recorder.settle();
        Ok(st.store.user_activity(Some(&name), 1)?.pop())
    })
    .await?;
    let outcomes: Vec<_> = activity
        .into_iter()
        .flat_map(|a| a.imports)
        .filter(|o| o.source == source)
        .collect();
    Ok(json!({
        "source": source,
        "kind": config.map(|c| c.kind.as_str()),
        "fields": state.imports.credential_fields(source)?,
        "consent": state.imports.has_consent_flow(source)?,
        "tables": config.map(|c| &c.streams),
        "connected": connected,
        "streams": states,
        "outcomes": outcomes,
        "now": state.clock.now_ms(),
    }))
}

async fn list(State(state): State<AppState>, User(user): User) -> Result<Response, ApiError> {
    let mut sources = Vec::new();
    for source in state.imports.source_names() {
        sources.push(states(&state, &user.user, &source).await?);
    }
    Ok(Json(json!({"now": state.clock.now_ms(), "sources": sources})).into_response())
}

async fn start(
    State(state): State<AppState>,
    User(user): User,
    ApiPath(source): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.imports.start(&user.user, &source).await?;
    let body = states(&state, &user.user, &source).await?;
    let status = match state.imports.mode() {
        RunnerMode::Background => StatusCode::ACCEPTED,
        RunnerMode::Call => StatusCode::OK,
    };
    Ok((status, Json(body)).into_response())
}

async fn status(
    State(state): State<AppState>,
    User(user): User,
    ApiPath(source): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(Json(states(&state, &user.user, &source).await?).into_response())
}

async fn stop(
    State(state): State<AppState>,
    User(user): User,
    ApiPath(source): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.imports.stop(&user.user, &source).await?;
    Ok(Json(states(&state, &user.user, &source).await?).into_response())
}

async fn reset(
    State(state): State<AppState>,
    User(user): User,
    ApiPath(source): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.imports.reset(&user.user, &source).await?;
    Ok(Json(states(&state, &user.user, &source).await?).into_response())
}

/// Body: the credential as a JSON object (`{"access_token": "..."}`, `{"api_key": "...", "steam_id": "..."}`).
async fn connect(
    State(state): State<AppState>,
    User(user): User,
    ApiPath(source): ApiPath<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let body = read_body(&state, &headers, body).await?;
    let Value::Object(credential) = parse_json::<Value>(&body)? else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "send the credential as a JSON object, e.g. {\"access_token\": \"...\"}",
        ));
    };
    let fields = state.imports.credential_fields(&source)?;
    if state.imports.checks_credentials(&source)? {
        // The source takes alternatives (an NPSSO or a pasted token) and says itself what is missing.
        state
            .imports
            .connect(&user.user, &source, credential)
            .await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| {
            credential
                .get(f.as_str())
                .and_then(Value::as_str)
                .is_none_or(|v| v.trim().is_empty())
        })
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidCredential,
            format!(
                "a `{source}` credential needs {}: {} missing or empty",
                join_fields(&fields),
                join_fields(&missing)
            ),
        ));
    }
    state
        .imports
        .connect(&user.user, &source, credential)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Answers `{"url"}`: the consent page to send the person to. The service sends them back to the source's
/// configured `redirect_uri`, or to this route's `callback` on the host this request came to.
async fn authorize(
    State(state): State<AppState>,
    User(user): User,
    ApiPath(source): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b'/'))
        .unwrap_or("127.0.0.1");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    let callback_path = format!("/v1/connections/{}/callback", urlencode(&source));
    let callback = format!("{scheme}://{host}{callback_path}");
    let consent = state.imports.authorize(&user.user, &source, &callback)?;
    // The browser that asked (the dashboard's `fetch`, same origin) keeps the binding in a cookie only the
    // callback sees: HttpOnly, so no script reads it; SameSite=Lax, so it comes along on the service's
    // top-level redirect back to us but on no cross-site subrequest; Secure behind HTTPS (RFC 6265bis
    // §4.1.2; developer.mozilla.org/docs/Web/HTTP/Headers/Set-Cookie).
    let cookie = consent_cookie(
        &callback_path,
        &consent.browser_binding,
        CONSENT_COOKIE_MAX_AGE_SECS,
        scheme == "https",
    );
    Ok((
        [
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, "no-store".into()),
        ],
        Json(json!({"url": consent.url})),
    )
        .into_response())
}

/// The cookie that binds a consent to the browser that started it.
const CONSENT_COOKIE: &str = "syncline_consent";
/// As long as a consent's `state` lives (ten minutes).
const CONSENT_COOKIE_MAX_AGE_SECS: u64 = 600;

fn consent_cookie(path: &str, value: &str, max_age_secs: u64, secure: bool) -> String {
    format!(
        "{CONSENT_COOKIE}={value}; Path={path}; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The value of the cookie `name` in a request's `Cookie` headers (RFC 6265 §5.4: `name=value` pairs
/// separated by `; `).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The consent's answer (RFC 6749 §4.1.2): `code` and `state`, or `error` (the person declined). On
/// success the person goes back to the dashboard.
async fn callback(
    State(state): State<AppState>,
    ApiPath(source): ApiPath<String>,
    ApiQuery(query): ApiQuery<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(error) = query.get("error") {
        let code = if error == "access_denied" {
            ErrorCode::ConsentDenied
        } else {
            ErrorCode::ConsentFailed
        };
        return Err(ApiError::new(
            code,
            format!(
                "the service did not grant access ({}): connect again and approve the request",
                error.chars().take(64).collect::<String>()
            ),
        ));
    }
    let (Some(code), Some(consent_state)) = (query.get("code"), query.get("state")) else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the consent callback needs `code` and `state`",
        ));
    };
    state
        .imports
        .complete_authorization(
            &source,
            consent_state,
            code,
            cookie(&headers, CONSENT_COOKIE),
        )
        .await?;
    let location = format!("/?connected={}", urlencode(&source));
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes() == b"https");
    let path = format!("/v1/connections/{}/callback", urlencode(&source));
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, "no-store".into()),
            // Used: the browser forgets it.
            (header::SET_COOKIE, consent_cookie(&path, "", 0, secure)),
        ],
    )
        .into_response())
}

/// Percent-encodes everything outside `[A-Za-z0-9_.-]`.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn disconnect(
    State(state): State<AppState>,
    User(user): User,
    ApiPath(source): ApiPath<String>,
) -> Result<Response, ApiError> {
    if state.imports.disconnect(&user.user, &source).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            ErrorCode::ConnectionNotFound,
            format!("no connection for source `{source}`"),
        ))
    }
}

/// `a`, `a and b`, `a, b and c`, each in backquotes.
fn join_fields(fields: &[impl AsRef<str>]) -> String {
    let quoted: Vec<String> = fields.iter().map(|f| format!("`{}`", f.as_ref())).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use syncline_core::ImportErrorCode;

    /// The dashboard explains each import `error_code` in words: one hint per code, and no hint for a code
    /// the importer never sets.
    #[test]
    fn every_import_error_code_has_a_dashboard_hint() {
        let js = crate::app::ASSET_JS;
        let start = js
            .find("const ERROR_HINTS = {")
            .expect("app.js has ERROR_HINTS");
        let body = &js[start..start + js[start..].find("\n};").expect("ERROR_HINTS ends")];
        let hinted: std::collections::BTreeSet<&str> = body
            .lines()
            .skip(1)
            .filter_map(|l| l.trim().split_once(':').map(|(key, _)| key))
            .filter(|key| key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .collect();
        let codes: std::collections::BTreeSet<&str> =
            ImportErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(hinted, codes);
    }
}
