//! HTTPS as a client: every fake is served over TLS with the test process's throwaway CA (trusted the way
//! `SSL_CERT_FILE` is, through `syncline_http::trust_pem_file`), and a certificate the client must refuse —
//! from an unknown CA, for another name, expired — ends the import in `tls_failed`, naming the host and the
//! reason, without a request ever reaching the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::routing::get;
use serde_json::json;
use syncline_core::ImportStatus;
use syncline_testkit::fake_apis::FakeSteam;
use syncline_testkit::{FakeTls, Validity, serve_tls};

use super::{USER, harness};

const KEY: &str = "steam-key-tls";

fn steam_source(base_url: &str) -> String {
    format!(
        "[sources.steam]\nkind = \"steam\"\nbase_url = \"{base_url}\"\n\
         streams = {{ owned_games = \"steam_games\" }}\n"
    )
}

#[tokio::test]
async fn a_connector_imports_over_https_from_a_server_the_ca_bundle_trusts() {
    let fake = FakeSteam::start(KEY, "76561190000000001", 5, 0).await;
    assert!(
        fake.base_url().starts_with("https://127.0.0.1:"),
        "{}",
        fake.base_url()
    );
    let h = harness(
        "",
        &steam_source(fake.base_url()),
        &[(
            "steam",
            json!({"api_key": KEY, "steam_id": "76561190000000001"}),
        )],
    )
    .await;
    let states = h.import("steam", 3).await;
    assert_eq!(states[0].status, ImportStatus::Success, "{states:?}");
    assert_eq!(h.rows("steam_games"), 5);
}

/// A server that counts what reaches it: nothing should, since the handshake fails first.
async fn refused(
    config: Arc<rustls::ServerConfig>,
) -> (syncline_testkit::fake_apis::Served, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let router = Router::new().fallback(get(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { axum::Json(json!({"response": {"game_count": 0, "games": []}})) }
    }));
    (serve_tls(config, router).await, hits)
}

#[tokio::test]
async fn a_certificate_the_client_must_refuse_is_tls_failed_naming_the_host_and_reason() {
    let untrusted = FakeTls::new();
    let shared = FakeTls::shared();
    let cases = [
        (untrusted.server_config(), "unknown issuer"),
        (
            shared.server_config_for(&["api.example.invalid"], Validity::Current),
            "name mismatch",
        ),
        (
            shared.server_config_for(&["127.0.0.1", "localhost"], Validity::Expired),
            "expired",
        ),
    ];
    for (config, reason) in cases {
        let (served, hits) = refused(config).await;
        let h = harness(
            "",
            &steam_source(&served.base_url),
            &[(
                "steam",
                json!({"api_key": KEY, "steam_id": "76561190000000001"}),
            )],
        )
        .await;
        h.importer.start(USER, "steam").await.unwrap();
        let state = &h.importer.status(USER, "steam").await.unwrap()[0];
        assert_eq!(state.status, ImportStatus::Error, "{reason}: {state:?}");
        assert_eq!(
            state.error_code.map(|c| c.as_str()),
            Some("tls_failed"),
            "{reason}: {state:?}"
        );
        let message = state.error.as_deref().unwrap_or_default();
        let host = served.base_url.trim_start_matches("https://");
        assert!(message.contains(host), "{reason}: {message}");
        assert!(message.contains(reason), "{reason}: {message}");
        assert!(!message.contains(KEY), "{message}");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "{reason}: no request got through"
        );
    }
}
