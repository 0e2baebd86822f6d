//! Bearer-token authentication: JWT verification (HS256 secret, RS256/ES256 PEM key or JWKS file) with a fixed
//! algorithm list, so `alg: none` and algorithm confusion are refused; and minting of HS256 tokens for
//! `syncline token` and dev mode.
//!
//! Time claims are checked against the server's [`syncline_core::Clock`], never the system clock, so a test
//! with a `ManualClock` sees exactly what a client would: jsonwebtoken only checks the signature, the
//! algorithm and the presence of `exp`/`sub` (and `iss`/`aud` when configured); `exp` and `nbf` are compared
//! with the injected "now" here, with [`LEEWAY_SECS`] of skew either way. `iat` is not checked.

use std::collections::HashMap;

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use serde::{Deserialize, Serialize};

use crate::ServerError;
use crate::config::AuthSection;

/// The claims Syncline reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub admin: bool,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid,
    /// Validly signed, but its `sub` breaks [`is_valid_subject`].
    InvalidSubject,
}

/// The one rule for a user id (`sub`) on every backend: 1 to 255 bytes of UTF-8 with no control character
/// (so no NUL, which PostgreSQL text cannot hold). Users are namespaces keyed by it, so a subject one
/// backend would store differently from another is refused at the door.
pub fn is_valid_subject(sub: &str) -> bool {
    !sub.is_empty() && sub.len() <= 255 && !sub.chars().any(char::is_control)
}

/// The clock skew allowed on `exp` and `nbf`, in seconds (docs/protocol.md §1.2): a token is expired once
/// "now" is more than this past its `exp`, and not yet valid while "now" is more than this before its `nbf`.
pub const LEEWAY_SECS: i64 = 30;

/// Tokens kept in [`Authenticator`]'s cache at most; when it is full, expired ones go, and if that is not
/// enough, all of them.
const VERIFIED_TOKENS: usize = 4096;

/// Tokens longer than this are verified every time, never kept.
const CACHED_TOKEN_BYTES: usize = 2048;

/// A token that passed verification: who it names and the times it is valid between.
#[derive(Debug, Clone)]
struct Verified {
    principal: Principal,
    exp: i64,
    nbf: Option<i64>,
}

enum Keys {
    Single(DecodingKey),
    ByKid(HashMap<String, DecodingKey>),
}

/// Verifies (and, with a shared secret, mints) tokens.
pub struct Authenticator {
    keys: Keys,
    /// Tokens that passed verification, by their exact text. A device sends the same token with every
    /// request; checking its signature and parsing its header and claims again is most of what
    /// authentication costs (far more with RS256 or ES256). Only successes are kept, and the times are
    /// checked on every use against the given clock, so a kept token is refused exactly when verification
    /// would refuse it.
    verified: std::sync::Mutex<HashMap<Box<str>, Verified>>,
    validation: Validation,
    encoding: Option<EncodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    admin_role: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn from_config(auth: &AuthSection) -> Result<Authenticator, ServerError> {
        let bad = |m: String| ServerError::Config(m);
        let read =
            |path: &str| std::fs::read(path).map_err(|e| bad(format!("cannot read {path}: {e}")));
        let asymmetric = match auth.algorithm.as_deref().unwrap_or("RS256") {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => {
                return Err(bad(format!(
                    "auth.algorithm `{other}` is not supported: use RS256 or ES256"
                )));
            }
        };
        let (keys, algorithm, encoding) =
            match (&auth.jwt_secret, &auth.public_key_file, &auth.jwks_file) {
                (Some(secret), None, None) => {
                    if secret.len() < 16 {
                        return Err(bad("auth.jwt_secret must be at least 16 characters".into()));
                    }
                    let b = secret.as_bytes();
                    (
                        Keys::Single(DecodingKey::from_secret(b)),
                        Algorithm::HS256,
                        Some(EncodingKey::from_secret(b)),
                    )
                }
                (None, Some(path), None) => {
                    let pem = read(path)?;
                    let key = match asymmetric {
                        Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                        _ => DecodingKey::from_rsa_pem(&pem),
                    }
                    .map_err(|e| {
                        bad(format!(
                            "{path}: not a usable {asymmetric:?} public key: {e}"
                        ))
                    })?;
                    (Keys::Single(key), asymmetric, None)
                }
                (None, None, Some(path)) => {
                    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&read(path)?)
                        .map_err(|e| bad(format!("{path}: not a JWKS document: {e}")))?;
                    let mut by_kid = HashMap::new();
                    for jwk in &set.keys {
                        let kid = jwk.common.key_id.clone().unwrap_or_default();
                        let key = DecodingKey::from_jwk(jwk)
                            .map_err(|e| bad(format!("{path}: key `{kid}`: {e}")))?;
                        by_kid.insert(kid, key);
                    }
                    (Keys::ByKid(by_kid), asymmetric, None)
                }
                _ => {
                    return Err(bad(
                        "set exactly one of auth.jwt_secret, auth.public_key_file, auth.jwks_file"
                            .into(),
                    ));
                }
            };
        // The time claims are ours to check against the injected clock (`verify`); jsonwebtoken would read
        // the system clock. `required_spec_claims` is checked regardless of `validate_exp` (per
        // https://docs.rs/jsonwebtoken/latest/jsonwebtoken/struct.Validation.html: "This does not interact
        // with the various validate_*"), so a token without `exp` is still refused here.
        let mut validation = Validation::new(algorithm);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        let mut required = vec!["exp", "sub"];
        required.extend(auth.issuer.as_ref().map(|_| "iss"));
        required.extend(auth.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &auth.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &auth.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Authenticator {
            keys,
            verified: Default::default(),
            validation,
            encoding,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            admin_role: auth.admin_role.clone().unwrap_or_else(|| "admin".into()),
        })
    }

    /// Checks a bearer token at `now_ms` (the server's clock): signature with the configured algorithm only,
    /// `exp` (required), `nbf` when present, both with [`LEEWAY_SECS`] of skew, and `iss`/`aud` when configured.
    /// A bad signature is `Invalid` before an old `exp` is `Expired`: an expired token is one we issued.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Principal, TokenError> {
        let now = now_ms.div_euclid(1000);
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = verified.get(token) {
            // The signature and claims cannot change; the time can.
            if let Err(e) = check_times(v.exp, v.nbf, now) {
                verified.remove(token);
                return Err(e);
            }
            return Ok(v.principal.clone());
        }
        drop(verified);
        let claims = self.decode(token)?;
        check_times(claims.exp, claims.nbf, now)?;
        if !is_valid_subject(&claims.sub) {
            return Err(TokenError::InvalidSubject);
        }
        let principal = Principal {
            admin: claims.role.as_deref() == Some(self.admin_role.as_str()),
            user: claims.sub,
        };
        let kept = Verified {
            principal: principal.clone(),
            exp: claims.exp,
            nbf: claims.nbf,
        };
        if token.len() <= CACHED_TOKEN_BYTES {
            let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.len() >= VERIFIED_TOKENS {
                verified.retain(|_, v| check_times(v.exp, v.nbf, now).is_ok());
                if verified.len() >= VERIFIED_TOKENS {
                    verified.clear();
                }
            }
            verified.insert(token.into(), kept);
        }
        Ok(principal)
    }

    /// Checks a token's signature and algorithm and reads its claims.
    fn decode(&self, token: &str) -> Result<Claims, TokenError> {
        let key = match &self.keys {
            Keys::Single(k) => k,
            Keys::ByKid(keys) => {
                let header = decode_header(token).map_err(|_| TokenError::Invalid)?;
                keys.get(header.kid.as_deref().unwrap_or_default())
                    .ok_or(TokenError::Invalid)?
            }
        };
        Ok(decode::<Claims>(token, key, &self.validation)
            .map_err(|_| TokenError::Invalid)?
            .claims)
    }

    /// Mints an HS256 token for `user`, valid for `ttl_secs` from `now_secs`.
    pub fn mint(
        &self,
        user: &str,
        ttl_secs: i64,
        admin: bool,
        now_secs: i64,
    ) -> Result<String, ServerError> {
        if !is_valid_subject(user) {
            return Err(ServerError::Config(
                "a user id is 1-255 bytes with no control characters".into(),
            ));
        }
        let key = self.encoding.as_ref().ok_or_else(|| {
            ServerError::Config(
                "tokens can only be minted with auth.jwt_secret (HS256) configured".into(),
            )
        })?;
        let claims = Claims {
            sub: user.to_string(),
            exp: now_secs + ttl_secs,
            nbf: None,
            iat: Some(now_secs),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            role: admin.then(|| self.admin_role.clone()),
        };
        encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| ServerError::Config(e.to_string()))
    }
}

/// `exp` and `nbf` against `now` (seconds), each with [`LEEWAY_SECS`] of skew.
fn check_times(exp: i64, nbf: Option<i64>, now: i64) -> Result<(), TokenError> {
    if exp < now.saturating_sub(LEEWAY_SECS) {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS)) {
        return Err(TokenError::Invalid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const SECRET: &str = "unit-secret-unit-secret";
    /// The server's "now" in every case: 2021-01-01T00:00:00Z, long before the system clock, so a check
    /// against the system clock would call every token below expired.
    const NOW: i64 = 1_609_459_200;

    fn authenticator() -> Authenticator {
        Authenticator::from_config(&AuthSection {
            jwt_secret: Some(SECRET.into()),
            ..AuthSection::default()
        })
        .unwrap()
    }

    /// [`Authenticator::verify`] at `secs` on the server's clock.
    fn at(auth: &Authenticator, token: &str, secs: i64) -> Result<Principal, TokenError> {
        auth.verify(token, secs * 1000)
    }

    #[test]
    fn a_kept_token_is_refused_once_the_clock_passes_its_exp() {
        let auth = authenticator();
        let token = auth.mint("alice", 60, true, NOW).unwrap();
        let alice = Principal {
            user: "alice".into(),
            admin: true,
        };
        assert_eq!(at(&auth, &token, NOW), Ok(alice.clone()));
        assert_eq!(auth.verified.lock().unwrap().len(), 1);
        // Kept: the same answer without a signature check, until `exp` plus the leeway has passed.
        assert_eq!(at(&auth, &token, NOW + 60 + LEEWAY_SECS), Ok(alice));
        assert_eq!(
            at(&auth, &token, NOW + 60 + LEEWAY_SECS + 1),
            Err(TokenError::Expired)
        );
        assert!(auth.verified.lock().unwrap().is_empty());
    }

    #[test]
    fn a_kept_token_not_yet_valid_stays_refused_until_its_nbf() {
        let auth = authenticator();
        let token = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "alice", "exp": NOW + 3600, "nbf": NOW + 600}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(at(&auth, &token, NOW), Err(TokenError::Invalid));
        assert!(at(&auth, &token, NOW + 600).is_ok());
        // Kept now; an earlier clock (a server whose clock stepped back) is still checked.
        assert_eq!(at(&auth, &token, NOW), Err(TokenError::Invalid));
    }

    #[test]
    fn only_tokens_that_pass_are_kept() {
        let auth = authenticator();
        let token = auth.mint("alice", 60, false, NOW).unwrap();
        let (body, signature) = token.rsplit_once('.').unwrap();
        let forged = format!("{body}.{}", signature.replace(|c: char| c != 'A', "A"));
        for _ in 0..2 {
            assert_eq!(at(&auth, &forged, NOW), Err(TokenError::Invalid));
        }
        let expired = auth.mint("alice", -120, false, NOW).unwrap();
        for _ in 0..2 {
            assert_eq!(at(&auth, &expired, NOW), Err(TokenError::Expired));
        }
        assert!(at(&auth, &token, NOW).is_ok());
        assert_eq!(auth.verified.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_full_cache_drops_expired_tokens_first() {
        let auth = authenticator();
        let long_lived = auth.mint("keep", 3600, false, NOW).unwrap();
        at(&auth, &long_lived, NOW).unwrap();
        for i in 1..VERIFIED_TOKENS {
            let short = auth.mint(&format!("u{i}"), 5, false, NOW).unwrap();
            at(&auth, &short, NOW).unwrap();
        }
        assert_eq!(auth.verified.lock().unwrap().len(), VERIFIED_TOKENS);
        // A minute later the short-lived ones have expired: the next token kept makes room by dropping them.
        let next = auth.mint("next", 3600, false, NOW).unwrap();
        at(&auth, &next, NOW + 60).unwrap();
        let kept = auth.verified.lock().unwrap();
        assert_eq!(kept.len(), 2);
        assert!(kept.contains_key(long_lived.as_str()) && kept.contains_key(next.as_str()));
    }

    fn check(claims: Value, expected: Result<&str, TokenError>) {
        let auth = Authenticator::from_config(&AuthSection {
            jwt_secret: Some(SECRET.into()),
            ..AuthSection::default()
        })
        .unwrap();
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let got = auth.verify(&token, NOW * 1000);
        assert_eq!(
            got.as_ref().map(|p| p.user.as_str()).map_err(|e| *e),
            expected,
            "{claims}"
        );
    }

    #[test]
    fn time_claims_are_read_against_the_given_clock_with_the_documented_skew() {
        let ok = Ok("alice");
        check(json!({"sub": "alice", "exp": NOW + 3600}), ok);
        check(json!({"sub": "alice", "exp": NOW}), ok);
        check(json!({"sub": "alice", "exp": NOW - LEEWAY_SECS}), ok);
        check(
            json!({"sub": "alice", "exp": NOW - LEEWAY_SECS - 1}),
            Err(TokenError::Expired),
        );
        check(json!({"sub": "alice"}), Err(TokenError::Invalid));
        check(
            json!({"sub": "alice", "exp": "tomorrow"}),
            Err(TokenError::Invalid),
        );
        check(
            json!({"sub": "alice", "exp": NOW + 60, "nbf": NOW + LEEWAY_SECS}),
            ok,
        );
        check(
            json!({"sub": "alice", "exp": NOW + 60, "nbf": NOW + LEEWAY_SECS + 1}),
            Err(TokenError::Invalid),
        );
        check(
            json!({"sub": "alice", "exp": NOW + 60, "nbf": "now"}),
            Err(TokenError::Invalid),
        );
        // `iat` is not a validity claim: one in the future changes nothing.
        check(
            json!({"sub": "alice", "exp": NOW + 60, "iat": NOW + 86_400}),
            ok,
        );
        check(
            json!({"sub": "", "exp": NOW + 60}),
            Err(TokenError::InvalidSubject),
        );
    }

    #[test]
    fn a_minted_token_lives_for_its_ttl_on_the_given_clock() {
        let auth = Authenticator::from_config(&AuthSection {
            jwt_secret: Some(SECRET.into()),
            ..AuthSection::default()
        })
        .unwrap();
        let token = auth.mint("bob", 600, false, NOW).unwrap();
        let at = |secs: i64| auth.verify(&token, secs * 1000).map(|p| p.user);
        assert_eq!(at(NOW + 600 + LEEWAY_SECS), Ok("bob".to_string()));
        assert_eq!(at(NOW + 600 + LEEWAY_SECS + 1), Err(TokenError::Expired));
    }
}
