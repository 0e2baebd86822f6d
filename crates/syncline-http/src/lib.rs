//! The one place Syncline builds an HTTP client, and the naming of TLS failures.
//!
//! Every part that calls out — the import connectors, the client SDK's transport, `syncline sync` and
//! `syncline import` — starts from [`client_builder`]: reqwest over rustls (the `ring` provider), trusting
//! the operating system's roots **plus** the PEM bundle named by `SSL_CERT_FILE` when it is set (the usual
//! convention; a private CA, or the tests' throwaway one), plus any bundle a program registered with
//! [`trust_pem_file`]. Certificate checks are never switched off: there is no option for it.
//!
//! A failed handshake is named by [`tls_failure`]: the host and the reason (unknown issuer, name
//! mismatch, expired, ...), so a caller can answer with its own stable code, [`TLS_FAILED`], instead of a
//! vague "could not reach".
//!
//! This crate knows nothing of Syncline's wire types or stores: it sits under the client SDK and the import
//! crate alike, and depends on no other Syncline crate.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The stable error code of a TLS failure, the same everywhere it is reported.
pub const TLS_FAILED: &str = "tls_failed";

/// Where Linux distributions keep the system's CA bundle (the list Go's `crypto/x509` searches). Read only
/// when `SSL_CERT_FILE` is set, because then rustls-native-certs reads that file *instead of* the system's.
const OS_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Bundles registered by [`trust_pem_file`], trusted by every client built after.
static REGISTERED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The failures this crate names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The TLS handshake with `host` failed; the connection never carried a request.
    #[error("TLS with {host} failed: {reason}")]
    Tls { host: String, reason: TlsReason },
}

/// Why a TLS handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsReason {
    /// The certificate chains to no trusted root.
    UnknownIssuer,
    /// The certificate is not valid for the host that was asked for.
    NameMismatch,
    Expired,
    NotYetValid,
    Revoked,
    /// Another certificate problem, as rustls words it.
    BadCertificate(String),
    /// The handshake itself failed (not a TLS server, no common protocol, an alert), as rustls words it.
    Handshake(String),
}

impl std::fmt::Display for TlsReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsReason::UnknownIssuer => f.write_str(
                "unknown issuer: the certificate is not signed by a trusted authority \
                 (for a private CA, set SSL_CERT_FILE to a PEM bundle holding it)",
            ),
            TlsReason::NameMismatch => {
                f.write_str("name mismatch: the certificate is not valid for this host")
            }
            TlsReason::Expired => f.write_str("expired: the certificate is no longer valid"),
            TlsReason::NotYetValid => f.write_str("the certificate is not valid yet"),
            TlsReason::Revoked => f.write_str("the certificate is revoked"),
            TlsReason::BadCertificate(why) => write!(f, "a bad certificate ({why})"),
            TlsReason::Handshake(why) => write!(f, "the handshake failed ({why})"),
        }
    }
}

/// A client builder with Syncline's TLS trust: the OS roots, `SSL_CERT_FILE`, and the registered bundles.
/// Callers add their timeouts, user agent and redirect policy, then `build()`.
pub fn client_builder() -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_native_certs(true);
    for cert in extra_roots() {
        builder = builder.add_root_certificate(cert);
    }
    builder
}

/// Trusts the CAs in the PEM file at `path`, on top of the OS roots and `SSL_CERT_FILE`, for every client
/// built afterwards in this process. For programs embedding Syncline and for tests, which cannot change
/// their own environment safely; a command-line user sets `SSL_CERT_FILE` instead.
pub fn trust_pem_file(path: impl Into<PathBuf>) {
    let path = path.into();
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if !registered.contains(&path) {
        registered.push(path);
    }
}

fn extra_roots() -> Vec<reqwest::Certificate> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(named) = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty()) {
        // Roots plus the bundle, not instead of them.
        if let Some(os) = OS_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
            files.push(os.to_path_buf());
        }
        files.push(PathBuf::from(named));
    }
    files.extend(
        REGISTERED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned(),
    );
    let mut certs = Vec::new();
    for file in files {
        let read = std::fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|pem| reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string()));
        match read {
            Ok(found) => certs.extend(found),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "a CA bundle could not be read")
            }
        }
    }
    certs
}

/// The TLS failure behind a request error, if that is what it is: the host (with its port when the url
/// names one) and the reason. Never includes the url's path or query, which may carry a key.
pub fn tls_failure(error: &reqwest::Error) -> Option<HttpError> {
    let reason = tls_reason(error)?;
    let host = error
        .url()
        .and_then(|url| {
            let host = url.host_str()?;
            Some(match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_string(),
            })
        })
        .unwrap_or_else(|| "the server".into());
    Some(HttpError::Tls { host, reason })
}

/// Walks the error's sources for the rustls error. tokio-rustls wraps it in an `io::Error` (hyper-rustls in
/// another), whose `source()` skips the wrapped error itself, so each `io::Error` is opened by hand.
fn tls_reason(error: &(dyn std::error::Error + 'static)) -> Option<TlsReason> {
    let mut next = Some(error);
    while let Some(mut e) = next {
        // Open `io::Error`s (they may nest) down to what they wrap.
        while let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            e = inner;
        }
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(reason_of(tls));
        }
        next = e.source();
    }
    None
}

fn reason_of(error: &rustls::Error) -> TlsReason {
    use rustls::CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => TlsReason::UnknownIssuer,
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsReason::NameMismatch,
            C::Expired | C::ExpiredContext { .. } => TlsReason::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => TlsReason::NotYetValid,
            C::Revoked => TlsReason::Revoked,
            other => TlsReason::BadCertificate(format!("{other:?}")),
        },
        other => TlsReason::Handshake(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_certificate_problem_has_its_own_words() {
        use rustls::CertificateError as C;
        let cases = [
            (C::UnknownIssuer, "unknown issuer"),
            (C::NotValidForName, "name mismatch"),
            (C::Expired, "expired"),
            (C::NotValidYet, "not valid yet"),
            (C::Revoked, "revoked"),
        ];
        for (error, words) in cases {
            let reason = reason_of(&rustls::Error::InvalidCertificate(error));
            assert!(reason.to_string().contains(words), "{reason}");
        }
    }

    #[test]
    fn a_rustls_error_inside_an_io_error_is_found() {
        // As hyper-rustls hands it over: an `io::Error` around tokio-rustls's `io::Error` around it.
        let io = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert_eq!(tls_reason(&io), Some(TlsReason::UnknownIssuer));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(tls_reason(&plain), None);
    }
}
