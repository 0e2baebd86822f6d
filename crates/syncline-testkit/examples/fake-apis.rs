//! `fake-apis`: the fake Spotify and Steam APIs as a process, for tests written outside Rust (the browser
//! tests drive a real `syncline serve` against them). Serves both over HTTPS on 127.0.0.1 with a throwaway
//! CA, prints one JSON line with their base urls, the credentials they accept, a control url (plain HTTP,
//! for the test itself) and `caFile`, the CA's PEM file (give it to `syncline serve` as `SSL_CERT_FILE`),
//! then runs until killed or until its standard input closes (so a test runner that dies takes it along).
//! Spotify's authorization server is served too (`spotifyAuth`: consent page and token endpoint for the
//! public client `clientId`, with PKCE), issuing access tokens the fake Spotify accepts.
//!
//! Options: `--tracks N` saved Spotify tracks (default 200), `--games N` owned Steam games (default 30),
//! `--latency-ms N` delay of every answer (default 0).
//!
//! Control: `POST {control}/control/{spotify|steam}` with a JSON object of knobs, any of `latencyMs`,
//! `failNext` (503s), `rateLimitNext` and `retryAfterSecs` (429s), `expired` (401s while true). It answers
//! `{"requests": N}`, the requests served so far; `GET` answers the same without changing anything.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use syncline_testkit::fake_apis::{
    Control, FakeAuthServer, FakeSpotify, FakeSteam, OAuthClientStyle,
};

const SPOTIFY_TOKEN: &str = "spotify-test-token";
const STEAM_KEY: &str = "steam-test-key";
const STEAM_ID: &str = "76561190000000001";
const SPOTIFY_CLIENT_ID: &str = "fake-spotify-client";

fn options() -> Result<HashMap<String, u64>, String> {
    let mut out = HashMap::from([
        ("tracks".to_string(), 200),
        ("games".to_string(), 30),
        ("latency-ms".to_string(), 0),
    ]);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let name = flag
            .strip_prefix("--")
            .filter(|n| out.contains_key(*n))
            .ok_or_else(|| format!("unknown option `{flag}`"))?;
        let value = args
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("`{flag}` needs a whole number"))?;
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

type Controls = Arc<HashMap<&'static str, Arc<Control>>>;

async fn control(
    State(controls): State<Controls>,
    Path(name): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let c = controls
        .get(name.as_str())
        .ok_or((StatusCode::NOT_FOUND, format!("no fake `{name}`")))?;
    if let Some(Json(knobs)) = body {
        let n = |k: &str| knobs.get(k).and_then(Value::as_u64);
        if let Some(ms) = n("latencyMs") {
            c.set_latency(Duration::from_millis(ms));
        }
        if let Some(count) = n("failNext") {
            c.fail_next(count as u32);
        }
        if let Some(count) = n("rateLimitNext") {
            c.rate_limit_next(count as u32, n("retryAfterSecs").unwrap_or(5));
        }
        if let Some(expired) = knobs.get("expired").and_then(Value::as_bool) {
            c.set_expired(expired);
        }
    }
    Ok(Json(json!({"requests": c.requests()})))
}

fn main() {
    let options = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fake-apis: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let spotify = FakeSpotify::start(SPOTIFY_TOKEN, options["tracks"] as usize, 0, 0, 0).await;
        let steam = FakeSteam::start(STEAM_KEY, STEAM_ID, options["games"] as usize, 3).await;
        let spotify_auth = FakeAuthServer::start(
            spotify.control.clone(),
            SPOTIFY_CLIENT_ID,
            "",
            OAuthClientStyle::Pkce,
        )
        .await;
        let latency = Duration::from_millis(options["latency-ms"]);
        spotify.control.set_latency(latency);
        steam.control.set_latency(latency);
        let controls: Controls = Arc::new(HashMap::from([
            ("spotify", spotify.control.clone()),
            ("steam", steam.control.clone()),
            ("spotifyAuth", spotify_auth.control.clone()),
        ]));
        let router = Router::new()
            .route("/control/{name}", get(control).post(control))
            .with_state(controls);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        let line = json!({
            "spotify": {"baseUrl": spotify.base_url(), "credential": {"access_token": SPOTIFY_TOKEN}},
            "steam": {"baseUrl": steam.base_url(), "credential": {"api_key": STEAM_KEY, "steam_id": STEAM_ID}},
            "spotifyAuth": {"baseUrl": spotify_auth.base_url(), "clientId": SPOTIFY_CLIENT_ID},
            "control": format!("http://{addr}"),
            "caFile": syncline_testkit::FakeTls::shared().ca_file(),
        });
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
        std::thread::spawn(|| {
            let mut sink = [0u8; 256];
            while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
            std::process::exit(0);
        });
        let _ = axum::serve(listener, router).await;
    });
}
