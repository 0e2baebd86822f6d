//! Credentials at rest: sealed with ChaCha20-Poly1305 under the configured key, bound to their user and
//! source, so a sealed blob copied to another user's row does not open.

use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::ImportError;

const NONCE: usize = 12;

/// Seals and opens credentials. Its `Debug` shows nothing of the key.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// From the base64 text of a 32-byte key.
    pub fn from_base64(key: &str) -> Result<Sealer, ImportError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| ImportError::Config("`imports.encryption_key` is not base64".into()))?;
        if bytes.len() != 32 {
            return Err(ImportError::Config(
                "`imports.encryption_key` must be 32 bytes (44 base64 characters)".into(),
            ));
        }
        let key: [u8; 32] = bytes.try_into().expect("length checked above");
        Ok(Sealer {
            cipher: ChaCha20Poly1305::new(&Key::from(key)),
        })
    }

    /// A fresh random key, as base64 (for dev mode).
    pub fn generate_key() -> String {
        base64::engine::general_purpose::STANDARD.encode(ChaCha20Poly1305::generate_key(&mut OsRng))
    }

    pub fn seal(&self, user: &str, source: &str, plain: &[u8]) -> Vec<u8> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = format!("{user}\n{source}");
        let mut out = nonce.to_vec();
        out.extend(
            self.cipher
                .encrypt(
                    &nonce,
                    Payload {
                        msg: plain,
                        aad: aad.as_bytes(),
                    },
                )
                .expect("sealing in memory does not fail"),
        );
        out
    }

    pub fn open(&self, user: &str, source: &str, sealed: &[u8]) -> Result<Vec<u8>, ImportError> {
        if sealed.len() < NONCE {
            return Err(ImportError::Sealed);
        }
        let (nonce, body) = sealed.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().expect("split at NONCE");
        let aad = format!("{user}\n{source}");
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: body,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| ImportError::Sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_credentials_open_only_for_their_user_and_source() {
        let sealer = Sealer::from_base64(&Sealer::generate_key()).unwrap();
        let sealed = sealer.seal("alice", "steam", b"secret-key");
        assert!(!sealed.windows(10).any(|w| w == b"secret-key"));
        assert_eq!(
            sealer.open("alice", "steam", &sealed).unwrap(),
            b"secret-key"
        );
        assert!(sealer.open("bob", "steam", &sealed).is_err());
        assert!(sealer.open("alice", "psn", &sealed).is_err());
        let other = Sealer::from_base64(&Sealer::generate_key()).unwrap();
        assert!(other.open("alice", "steam", &sealed).is_err());
        assert!(Sealer::from_base64("c2hvcnQ=").is_err());
        assert_eq!(format!("{sealer:?}"), "Sealer(..)");
    }
}
