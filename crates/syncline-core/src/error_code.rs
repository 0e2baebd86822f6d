//! The stable `code` of every error answer of the API, and the HTTP status each one goes with. The server
//! answers only with these; the client SDK matches on them. docs/protocol.md §11 lists every one, and the
//! server's `error_codes_are_documented` test holds the two together.
//!
//! This is the one place a code is mapped to its status: nothing else picks a status for an error.

use std::fmt;
use std::str::FromStr;

use crate::import::ImportErrorCode;

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal, $status:literal;)*) => {
        /// The `code` of an error answer, `{"code", "message"}`. Closed on the server; a client that meets a
        /// code it does not know (a newer server) keeps the text: [`ErrorCode::parse`] answers `None`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order of docs/protocol.md §11.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it goes on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The HTTP status an answer with this code has.
            pub const fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }
        }
    };
}

error_codes! {
    /// The body is not valid JSON, or not valid UTF-8.
    MalformedJson = "malformed_json", 400;
    /// Valid JSON of the wrong shape, a bad `limit`, a negative `lastPulledAt`, an unknown bulk field.
    InvalidRequest = "invalid_request", 400;
    /// A query string that does not parse.
    InvalidQuery = "invalid_query", 400;
    /// A path segment that does not decode.
    InvalidPath = "invalid_path", 400;
    /// A push or bulk request names a table that is not configured.
    UnknownTable = "unknown_table", 400;
    /// A pushed record without a valid `id`, or an invalid id in `deleted`.
    InvalidId = "invalid_id", 400;
    /// A malformed `Syncline-Device` header.
    InvalidDevice = "invalid_device", 400;
    /// A malformed `Syncline-Outbox-Pending` header.
    InvalidOutboxPending = "invalid_outbox_pending", 400;
    /// A malformed `Idempotency-Key` header.
    InvalidIdempotencyKey = "invalid_idempotency_key", 400;
    /// A consent callback whose `state` this server did not issue for this source, or an expired one.
    InvalidState = "invalid_state", 400;
    /// The person declined the consent (`error=access_denied`).
    ConsentDenied = "consent_denied", 400;
    /// The consent came back with another `error`.
    ConsentFailed = "consent_failed", 400;
    /// No `Authorization` header.
    MissingToken = "missing_token", 401;
    /// The header is not `Bearer <token>`, or the token is not valid for this server.
    InvalidToken = "invalid_token", 401;
    /// The token's `exp` has passed.
    TokenExpired = "token_expired", 401;
    /// The token's `sub` is not a valid user name.
    InvalidSubject = "invalid_subject", 401;
    /// An admin route called without an admin token.
    Forbidden = "forbidden", 403;
    /// No such route.
    NotFound = "not_found", 404;
    /// No import source of that name is configured.
    UnknownSource = "unknown_source", 404;
    /// `DELETE /v1/connections/{source}` of a connection that does not exist. The same code as
    /// [`ErrorCode::NoConnection`], with the status of a missing resource; parsing the text gives that one.
    ConnectionNotFound = "no_connection", 404;
    /// The route does not take this method.
    MethodNotAllowed = "method_not_allowed", 405;
    /// The body did not arrive in time.
    RequestTimeout = "request_timeout", 408;
    /// A pushed record changed on the server after `lastPulledAt`.
    Conflict = "conflict", 409;
    /// An import needs a connection the user has not made.
    NoConnection = "no_connection", 409;
    /// The stored connection cannot be opened with the configured encryption key.
    ConnectionUnreadable = "connection_unreadable", 409;
    /// The source has no consent flow configured.
    NoConsentFlow = "no_consent_flow", 409;
    /// The body is larger than `server.max_body_bytes`.
    PayloadTooLarge = "payload_too_large", 413;
    /// More records than `server.max_records_per_request`.
    TooManyRecords = "too_many_records", 413;
    /// The body has a `Content-Encoding` (gzip, …): bodies are read as sent, never decompressed.
    UnsupportedContentEncoding = "unsupported_content_encoding", 415;
    /// A bulk request has invalid rows.
    InvalidRows = "invalid_rows", 422;
    /// A connection's credential lacks a field its source needs.
    InvalidCredential = "invalid_credential", 422;
    /// The `Idempotency-Key` was used before with another route or body.
    IdempotencyKeyReused = "idempotency_key_reused", 422;
    /// Connecting an account: the service refused the credential.
    AuthExpired = "auth_expired", 422;
    /// Connecting an account: the service refused the refresh token (`invalid_grant`).
    AuthRevoked = "auth_revoked", 422;
    /// Connecting an account: the token endpoint refused the app's client credentials.
    AuthClientRefused = "auth_client_refused", 422;
    /// Connecting an account: the service refused the granted scope.
    AuthScopeMissing = "auth_scope_missing", 422;
    /// Connecting an account: any other refusal.
    AuthRefused = "auth_refused", 422;
    /// Connecting an account: XSTS found no Xbox profile.
    AuthNoXboxAccount = "auth_no_xbox_account", 422;
    /// Connecting an account: XSTS refused a child account outside a family.
    AuthChildAccount = "auth_child_account", 422;
    /// Connecting an account: Xbox Live is not available in the account's region.
    AuthRegionUnavailable = "auth_region_unavailable", 422;
    /// Connecting an account: the account must be verified first.
    AuthVerificationRequired = "auth_verification_required", 422;
    /// Connecting an account: PlayStation refused the NPSSO.
    AuthNpssoRefused = "auth_npsso_refused", 422;
    /// Connecting an account: the source lacks the configuration its sign-in needs.
    AuthNotConfigured = "auth_not_configured", 422;
    /// Connecting an account: the source does not sign in this way.
    AuthUnsupported = "auth_unsupported", 422;
    /// Connecting an account: the source's sign-in configuration is not usable.
    AuthMisconfigured = "auth_misconfigured", 422;
    /// `server.max_pulls_per_user` pulls of this user are streaming already.
    TooManyPulls = "too_many_pulls", 429;
    /// Connecting an account: the sign-in service is rate limiting; `Retry-After` says when to try again.
    UpstreamRateLimited = "upstream_rate_limited", 429;
    /// A server fault; details are only in the server's log.
    Internal = "internal", 500;
    /// Connecting an account: the sign-in service could not be reached.
    UpstreamUnavailable = "upstream_unavailable", 502;
    /// Connecting an account: the TLS handshake with the sign-in service failed.
    TlsFailed = "tls_failed", 502;
    /// The server holds `server.max_connections` connections.
    TooManyConnections = "too_many_connections", 503;
    /// Every database connection stayed in use for the acquire timeout.
    StorageBusy = "storage_busy", 503;
    /// The database cannot be reached.
    StorageUnavailable = "storage_unavailable", 503;
}

impl ErrorCode {
    /// The code of this text, or `None` for a code this version does not know. `no_connection` reads as
    /// [`ErrorCode::NoConnection`].
    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .filter(|&c| c != ErrorCode::ConnectionNotFound)
            .find(|c| c.as_str() == code)
    }

    /// The answer to a connection the service refused (`PUT /v1/connections/{source}`, a consent's
    /// callback). The sign-in code itself for the `auth…` codes, `tls_failed` and `upstream_unavailable`; the
    /// others only a running import meets, so a connection failing with one is a fault of ours (`internal`).
    pub fn for_refused_connection(code: ImportErrorCode) -> ErrorCode {
        use ImportErrorCode as I;
        match code {
            I::AuthExpired => ErrorCode::AuthExpired,
            I::AuthRevoked => ErrorCode::AuthRevoked,
            I::AuthClientRefused => ErrorCode::AuthClientRefused,
            I::AuthScopeMissing => ErrorCode::AuthScopeMissing,
            I::AuthRefused => ErrorCode::AuthRefused,
            I::AuthNoXboxAccount => ErrorCode::AuthNoXboxAccount,
            I::AuthChildAccount => ErrorCode::AuthChildAccount,
            I::AuthRegionUnavailable => ErrorCode::AuthRegionUnavailable,
            I::AuthVerificationRequired => ErrorCode::AuthVerificationRequired,
            I::AuthNpssoRefused => ErrorCode::AuthNpssoRefused,
            I::AuthNotConfigured => ErrorCode::AuthNotConfigured,
            I::AuthUnsupported => ErrorCode::AuthUnsupported,
            I::AuthMisconfigured => ErrorCode::AuthMisconfigured,
            I::TlsFailed => ErrorCode::TlsFailed,
            I::UpstreamUnavailable => ErrorCode::UpstreamUnavailable,
            I::ProfilePrivate | I::MissingPermission | I::UpstreamFailed | I::InvalidRows => {
                ErrorCode::Internal
            }
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A code this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code `{0}`")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    fn from_str(s: &str) -> Result<ErrorCode, UnknownErrorCode> {
        ErrorCode::parse(s).ok_or_else(|| UnknownErrorCode(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_itself_but_the_404_twin_of_no_connection() {
        for &code in ErrorCode::ALL {
            let back = code.as_str().parse::<ErrorCode>().unwrap();
            if code == ErrorCode::ConnectionNotFound {
                assert_eq!(back, ErrorCode::NoConnection);
            } else {
                assert_eq!(back, code);
            }
        }
        assert_eq!(ErrorCode::parse("from_a_newer_server"), None);
    }

    #[test]
    fn statuses_are_client_or_server_errors() {
        for &code in ErrorCode::ALL {
            assert!((400..600).contains(&code.status()), "{code}");
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
        }
    }

    /// docs/protocol.md §11 lists every code with its status, and nothing else: compared both ways.
    #[test]
    fn error_codes_are_documented() {
        let mut documented = std::collections::BTreeSet::new();
        for row in crate::doc_tables::rows("## 11. Error codes", "| status | code |") {
            let status: u16 = row[0]
                .parse()
                .unwrap_or_else(|_| panic!("status of {row:?}"));
            let codes = crate::doc_tables::codes(&row[1]);
            assert!(!codes.is_empty(), "a row without a code: {row:?}");
            for code in codes {
                documented.insert((status, code.to_string()));
            }
        }
        let enumerated: std::collections::BTreeSet<_> = ErrorCode::ALL
            .iter()
            .map(|c| (c.status(), c.as_str().to_string()))
            .collect();
        let undocumented: Vec<_> = enumerated.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&enumerated).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "codes the server answers but §11 does not list: {undocumented:?}; \
             codes §11 lists that the server never answers (or with another status): {unknown:?}"
        );
    }

    #[test]
    fn a_refused_connection_answers_the_sign_in_code() {
        for code in ImportErrorCode::ALL {
            let api = ErrorCode::for_refused_connection(code);
            if code.is_auth() {
                assert_eq!((api.as_str(), api.status()), (code.as_str(), 422));
            }
        }
        let tls = ErrorCode::for_refused_connection(ImportErrorCode::TlsFailed);
        assert_eq!((tls.as_str(), tls.status()), ("tls_failed", 502));
    }
}
