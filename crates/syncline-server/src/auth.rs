//! Bearer-token authentication: JWT verification (HS256 secret, RS256/ES256 PEM key or JWKS file) with a fixed
//! algorithm list, so `alg: none` and algorithm confusion are refused; and minting of HS256 tokens for
//! `syncline token` and dev mode.

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

enum Keys {
    Single(DecodingKey),
    ByKid(HashMap<String, DecodingKey>),
}

/// Tokens kept in [`Authenticator`]'s cache at most; when it is full, expired ones go, and if that is not
/// enough, all of them.
const VERIFIED_TOKENS: usize = 4096;

/// Tokens longer than this are verified every time, never kept.
const CACHED_TOKEN_BYTES: usize = 2048;

/// A token that passed verification: who it names and until when (its `exp`).
#[derive(Debug, Clone)]
struct Verified {
    principal: Principal,
    exp: i64,
}

/// Verifies (and, with a shared secret, mints) tokens.
pub struct Authenticator {
    /// Tokens that passed verification, by their exact text. A device sends the same token with every
    /// request; checking its signature and parsing its header and claims again is most of what
    /// authentication costs (far more with RS256 or ES256). Only successes are kept, and `exp` is checked on
    /// every use with the same leeway, so a cached token is refused exactly when verification would refuse it.
    verified: std::sync::Mutex<HashMap<Box<str>, Verified>>,
    keys: Keys,
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
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.leeway = 30;
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
            verified: Default::default(),
            keys,
            validation,
            encoding,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            admin_role: auth.admin_role.clone().unwrap_or_else(|| "admin".into()),
        })
    }

    /// Checks a bearer token: signature with the configured algorithm only, `exp`, `nbf`, and `iss`/`aud` when
    /// configured.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        use syncline_core::Clock;
        self.verify_at(token, syncline_core::SystemClock.now_ms().div_euclid(1000))
    }

    /// [`Authenticator::verify`] at `now_secs` for a token verified before; a new token is verified at the
    /// system clock's time, as `jsonwebtoken` reads it.
    fn verify_at(&self, token: &str, now_secs: i64) -> Result<Principal, TokenError> {
        let leeway = i64::try_from(self.validation.leeway).unwrap_or(i64::MAX);
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = verified.get(token) {
            // What `jsonwebtoken` checks of `exp`; `nbf` and the signature cannot change.
            if v.exp < now_secs.saturating_sub(leeway) {
                verified.remove(token);
                return Err(TokenError::Expired);
            }
            return Ok(v.principal.clone());
        }
        drop(verified);
        let (principal, exp) = self.decode(token)?;
        if token.len() <= CACHED_TOKEN_BYTES {
            let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.len() >= VERIFIED_TOKENS {
                verified.retain(|_, v| v.exp >= now_secs.saturating_sub(leeway));
                if verified.len() >= VERIFIED_TOKENS {
                    verified.clear();
                }
            }
            let kept = Verified {
                principal: principal.clone(),
                exp,
            };
            verified.insert(token.into(), kept);
        }
        Ok(principal)
    }

    /// Verifies a token's signature and claims: who it names, and its `exp`.
    fn decode(&self, token: &str) -> Result<(Principal, i64), TokenError> {
        let key = match &self.keys {
            Keys::Single(k) => k,
            Keys::ByKid(keys) => {
                let header = decode_header(token).map_err(|_| TokenError::Invalid)?;
                keys.get(header.kid.as_deref().unwrap_or_default())
                    .ok_or(TokenError::Invalid)?
            }
        };
        match decode::<Claims>(token, key, &self.validation) {
            Ok(data) if is_valid_subject(&data.claims.sub) => Ok((
                Principal {
                    admin: data.claims.role.as_deref() == Some(self.admin_role.as_str()),
                    user: data.claims.sub,
                },
                data.claims.exp,
            )),
            Ok(_) => Err(TokenError::InvalidSubject),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                Err(TokenError::Expired)
            }
            Err(_) => Err(TokenError::Invalid),
        }
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
            iat: Some(now_secs),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            role: admin.then(|| self.admin_role.clone()),
        };
        encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| ServerError::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use syncline_core::Clock;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn authenticator() -> Authenticator {
        Authenticator::from_config(&AuthSection {
            jwt_secret: Some(SECRET.into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn now() -> i64 {
        syncline_core::SystemClock.now_ms() / 1000
    }

    #[test]
    fn a_verified_token_is_refused_once_it_expires_while_kept() {
        let auth = authenticator();
        let token = auth.mint("alice", 60, true, now()).unwrap();
        let alice = Principal {
            user: "alice".into(),
            admin: true,
        };
        assert_eq!(auth.verify(&token), Ok(alice.clone()));
        // Kept: the same answer without a signature check, until `exp` plus the leeway has passed.
        assert_eq!(auth.verify_at(&token, now() + 60 + 30), Ok(alice));
        assert_eq!(
            auth.verify_at(&token, now() + 60 + 31),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn only_tokens_that_pass_are_kept() {
        let auth = authenticator();
        let token = auth.mint("alice", 60, false, now()).unwrap();
        let (body, signature) = token.rsplit_once('.').unwrap();
        let forged = format!("{body}.{}", signature.replace(|c: char| c != 'A', "A"));
        for _ in 0..2 {
            assert_eq!(auth.verify(&forged), Err(TokenError::Invalid));
        }
        let expired = auth.mint("alice", -120, false, now()).unwrap();
        for _ in 0..2 {
            assert_eq!(auth.verify(&expired), Err(TokenError::Expired));
        }
        assert!(auth.verify(&token).is_ok());
        assert_eq!(auth.verified.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_full_cache_drops_expired_tokens_first() {
        let auth = authenticator();
        let long_lived = auth.mint("keep", 3600, false, now()).unwrap();
        auth.verify(&long_lived).unwrap();
        for i in 1..VERIFIED_TOKENS {
            let short = auth.mint(&format!("u{i}"), 5, false, now()).unwrap();
            auth.verify(&short).unwrap();
        }
        assert_eq!(auth.verified.lock().unwrap().len(), VERIFIED_TOKENS);
        // A minute later the short-lived ones have expired: the next token kept makes room by dropping them.
        let next = auth.mint("next", 3600, false, now()).unwrap();
        auth.verify_at(&next, now() + 60).unwrap();
        let kept = auth.verified.lock().unwrap();
        assert_eq!(kept.len(), 2);
        assert!(kept.contains_key(long_lived.as_str()) && kept.contains_key(next.as_str()));
    }
}
