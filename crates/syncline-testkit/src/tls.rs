//! A throwaway certificate authority and HTTPS serving for the fakes, so tests talk TLS the way the real
//! services do, with certificate checks left on.
//!
//! [`FakeTls::new`] makes a fresh CA (an `rcgen` key and self-signed certificate that live only in this
//! process) and a server certificate it signs for `127.0.0.1` and `localhost`. The CA is written as PEM to
//! [`FakeTls::ca_file`], the file a test points `SSL_CERT_FILE` at for a child process.
//! [`FakeTls::shared`] is the one CA of a test process: every fake serves with it, and it is registered
//! with [`syncline_http::trust_pem_file`], so clients built in the same process trust it without touching
//! the environment. A fresh [`FakeTls::new`] is trusted by nobody: that is the "unknown issuer" case.
//! [`FakeTls::server_config_for`] signs certificates for other names (the "name mismatch" case) or out of
//! their validity (the "expired" case).
//!
//! Never used outside tests: the CA's key is not protected in any way.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::fake_apis::Served;

/// Which validity a server certificate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Valid now and for decades.
    Current,
    /// Valid during 2020 only: expired today.
    Expired,
}

/// A throwaway CA, its PEM file, and a server certificate for the loopback names.
pub struct FakeTls {
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
    ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    loopback: Arc<ServerConfig>,
}

impl std::fmt::Debug for FakeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTls")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceLock<FakeTls> = OnceLock::new();

impl Default for FakeTls {
    fn default() -> FakeTls {
        FakeTls::new()
    }
}

impl FakeTls {
    /// A fresh CA that nothing trusts yet, with a server certificate for `127.0.0.1` and `localhost`.
    pub fn new() -> FakeTls {
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: a CA sharing its name with a trusted one would read as a bad signature, not
        // as the unknown issuer it is.
        static CAS: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "Syncline throwaway test CA {}-{}",
            std::process::id(),
            CAS.fetch_add(1, Ordering::Relaxed)
        );
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).expect("a self-signed CA");
        let ca_pem = ca.pem();
        let dir = tempfile::Builder::new()
            .prefix("syncline-test-ca-")
            .tempdir()
            .expect("a temp dir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).expect("the CA file is written");
        let loopback = signed_config(&ca, &ca_key, &["127.0.0.1", "localhost"], Validity::Current);
        FakeTls {
            _dir: dir,
            ca_file,
            ca_pem,
            ca,
            ca_key,
            loopback,
        }
    }

    /// The process's CA: the one every fake serves with, trusted by every client built in this process
    /// (registered with [`syncline_http::trust_pem_file`]). Child processes trust it through
    /// `SSL_CERT_FILE=`[`FakeTls::ca_file`].
    pub fn shared() -> &'static FakeTls {
        SHARED.get_or_init(|| {
            let tls = FakeTls::new();
            syncline_http::trust_pem_file(tls.ca_file());
            tls
        })
    }

    /// The PEM file holding the CA certificate (what `SSL_CERT_FILE` or `NODE_EXTRA_CA_CERTS` names).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server configuration with a certificate for `127.0.0.1` and `localhost`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.loopback.clone()
    }

    /// A server configuration whose certificate this CA signs for `names` (DNS names or IP addresses), with
    /// the given validity.
    pub fn server_config_for(&self, names: &[&str], validity: Validity) -> Arc<ServerConfig> {
        signed_config(&self.ca, &self.ca_key, names, validity)
    }

    /// Serves `router` over HTTPS on a loopback port with the loopback certificate; dropping the result
    /// stops the server and its connections.
    pub async fn serve(&self, router: Router) -> Served {
        serve_tls(self.server_config(), router).await
    }
}

/// A server configuration with a certificate `ca` signs for `names`.
fn signed_config(
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
    names: &[&str],
    validity: Validity,
) -> Arc<ServerConfig> {
    let key = KeyPair::generate().expect("a server key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("server certificate parameters");
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("server"),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if validity == Validity::Expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params
        .signed_by(&key, ca, ca_key)
        .expect("a signed server certificate");
    let chain = vec![cert.der().clone(), ca.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a server certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves `router` over HTTPS with the process's shared CA ([`FakeTls::shared`]), at
/// `https://127.0.0.1:PORT`.
pub async fn serve_https(router: Router) -> Served {
    FakeTls::shared().serve(router).await
}

/// Serves `router` over HTTPS on a loopback port with `config` (HTTP/1.1 inside TLS).
pub async fn serve_tls(config: Arc<ServerConfig>, router: Router) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        // Owned by the accept loop, so stopping the server also stops its open connections.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let service = TowerToHyperService::new(router.clone());
            connections.spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Served {
        base_url: format!("https://{addr}"),
        task,
    }
}

/// A TLS-terminating proxy on a loopback port in front of a plain TCP server at `target` (a Syncline server
/// under test, which speaks plain HTTP): clients connect to `https://127.0.0.1:PORT` with `config`'s
/// certificate, and the bytes inside TLS go to `target` unchanged. Dropping it stops it.
pub async fn tls_proxy(config: Arc<ServerConfig>, target: std::net::SocketAddr) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            connections.spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    Served {
        base_url: format!("https://{addr}"),
        task,
    }
}
