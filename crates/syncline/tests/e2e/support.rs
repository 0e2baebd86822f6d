//! What the end-to-end tests share: a real `syncline serve` process, killed when dropped; the configuration
//! it reads; tokens; and the HTTP calls the tests make to connect a source, start an import, follow it and
//! read a pull. Nothing here asserts what a test checks: the helpers hand back statuses and bodies.

use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The key the tests' servers encrypt stored credentials with.
pub const ENCRYPTION_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// A running `syncline serve --config …` process and its URL.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `syncline serve --config <config>` and waits for its "Syncline listening on" line. It trusts the
/// fakes' throwaway CA through `SSL_CERT_FILE`, the way a user trusts a private CA.
pub fn serve(config: &Path) -> Server {
    serve_trusting(config, Some(syncline_testkit::FakeTls::shared().ca_file()))
}

/// [`serve`], with `SSL_CERT_FILE` naming `ca_file`, or unset (the OS roots only).
pub fn serve_trusting(config: &Path, ca_file: Option<&Path>) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_syncline"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .env_remove("SSL_CERT_FILE")
        .stdout(Stdio::piped());
    if let Some(ca_file) = ca_file {
        command.env("SSL_CERT_FILE", ca_file);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = listening_url(&mut lines, |_| {});
    std::thread::spawn(move || lines.for_each(drop));
    Server { child, url }
}

/// Reads a server's stdout up to its "Syncline listening on URL" line, handing `seen` every line read
/// (that one included); the URL.
pub fn listening_url(
    lines: &mut Lines<BufReader<ChildStdout>>,
    mut seen: impl FnMut(&str),
) -> String {
    loop {
        let line = lines
            .next()
            .expect("the server exited before listening")
            .unwrap();
        seen(&line);
        if let Some(url) = line.strip_prefix("Syncline listening on ") {
            return url.to_string();
        }
    }
}

/// A server configuration: listening on a free port of 127.0.0.1, storing at `storage` (a `sqlite://` or
/// `postgres://` url), signing tokens with `secret`; then `rest`, more sections.
pub fn config_text(storage: &str, secret: &str, rest: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nurl = \"{storage}\"\n[auth]\njwt_secret = \"{secret}\"\n{rest}"
    )
}

/// Writes [`config_text`] to `dir/syncline.toml`; its path.
pub fn write_config(dir: &Path, storage: &str, secret: &str, rest: &str) -> PathBuf {
    let path = dir.join("syncline.toml");
    std::fs::write(&path, config_text(storage, secret, rest)).unwrap();
    path
}

/// The `sqlite://` url of the database file `path`.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// An `[imports]` section: [`ENCRYPTION_KEY`], then `settings` (`key = value` lines).
pub fn imports_section(settings: &str) -> String {
    format!("[imports]\nencryption_key = \"{ENCRYPTION_KEY}\"\n{settings}\n")
}

/// A source `spotify` on the (fake) API at `base_url` whose saved tracks go to the table `spotify_tracks`,
/// and that table.
pub fn spotify_source(base_url: &str) -> String {
    format!(
        "[imports.sources.spotify]\nkind = \"spotify\"\nbase_url = \"{base_url}\"\nstreams = {{ saved_tracks = \"spotify_tracks\" }}\n\
         [tables.spotify_tracks]\ncolumns = {{ name = \"string\", added_at = \"string\" }}\n"
    )
}

/// A token for `alice`, printed by `syncline token` with the configuration at `config`.
pub fn cli_token(config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_syncline"))
        .args(["token", "--user", "alice", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A token for `user`, valid `ttl_secs` from now, minted in this process with the JWT `secret`.
pub fn mint_token(secret: &str, user: &str, ttl_secs: i64) -> String {
    let auth = syncline_server::Authenticator::from_config(&syncline_server::AuthSection {
        jwt_secret: Some(secret.into()),
        ..Default::default()
    })
    .unwrap();
    let now = syncline_core::Clock::now_ms(&syncline_core::SystemClock) / 1000;
    auth.mint(user, ttl_secs, false, now).unwrap()
}

/// GET `url` with the bearer `token`; the answer's JSON body.
pub async fn get_json(url: &str, token: &str) -> Value {
    json_answer(reqwest::Client::new().get(url).bearer_auth(token)).await
}

/// POST `body` to `url` with the bearer `token`; the answer's JSON body.
pub async fn post_json(url: &str, token: &str, body: &Value) -> Value {
    json_answer(
        reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .body(body.to_string()),
    )
    .await
}

async fn json_answer(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// Puts `credential` as the connection to `source` (`PUT /v1/connections/{source}`); the answer's status
/// and body.
pub async fn connect(url: &str, token: &str, source: &str, credential: Value) -> (u16, String) {
    let response = reqwest::Client::new()
        .put(format!("{url}/v1/connections/{source}"))
        .bearer_auth(token)
        .body(credential.to_string())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Starts the import of `source` (`POST /v1/imports/{source}/start`); the answer's status.
pub async fn start_import(url: &str, token: &str, source: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{url}/v1/imports/{source}/start"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The state of the first stream of the import of `source`, from `GET /v1/imports/{source}/status`.
pub async fn first_stream(url: &str, token: &str, source: &str) -> Value {
    let body = get_json(&format!("{url}/v1/imports/{source}/status"), token).await;
    body["streams"][0].clone()
}

/// Polls [`first_stream`] until `done` holds, and returns that state; panics after 60 s.
pub async fn wait_for_import(
    url: &str,
    token: &str,
    source: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = first_stream(url, token, source).await;
        if done(&state) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "the import did not get there: stuck at {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids of the records a pull answer updated in `table`, sorted.
pub fn ids(pull: &Value, table: &str) -> Vec<String> {
    let mut ids: Vec<String> = pull["changes"][table]["updated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().into())
        .collect();
    ids.sort();
    ids
}
