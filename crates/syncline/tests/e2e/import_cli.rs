//! The `syncline import` commands against a real `syncline serve` process and fake third-party APIs on
//! 127.0.0.1: `start --wait`, `status`, `stop` and `reset`, their output and their exit codes. And a server
//! run at `RUST_LOG=trace` that never writes a credential to its output nor puts one in a response, while
//! imports succeed, fail with 401, fail upstream and are rate limited.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use syncline_testkit::fake_apis::{FakePlayStation, FakeRest, FakeSteam, FakeXbox};

use crate::support::{
    cli_token, connect, imports_section, listening_url, serve, sqlite_url, write_config,
};

const JWT_SECRET: &str = "import-cli-secret-import-cli-secret";
const TABLES: &str = "\
[tables.psn_titles]\ncolumns = { name = \"string\", platform = \"string\", progress = \"number\", last_updated = \"string\" }\n\
[tables.psn_trophies]\ncolumns = { np_communication_id = \"string\", trophy_id = \"number\", earned = \"boolean\" }\n\
[tables.xbox_titles]\ncolumns = { name = \"string\", current_gamerscore = \"number\" }\n\
[tables.xbox_achievements]\ncolumns = { name = \"string\", progress_state = \"string\" }\n\
[tables.rest_items]\ncolumns = { name = \"string\", stars = \"number\" }\n\
[tables.steam_games]\ncolumns = { name = \"string\", playtime_forever = \"number\" }\n\
[tables.steam_achievements]\ncolumns = { apiname = \"string\", achieved = \"boolean\" }\n";

/// A configuration file in `dir`: `[imports]` keys, then source tables (`[imports.sources.NAME]`).
fn config(dir: &Path, imports: &str, sources: &str) -> PathBuf {
    write_config(
        dir,
        &sqlite_url(&dir.join("s.db")),
        JWT_SECRET,
        &format!("{}{sources}\n{TABLES}", imports_section(imports)),
    )
}

fn psn_source(fake: &FakePlayStation) -> String {
    format!(
        "[imports.sources.psn]\nkind = \"playstation\"\nbase_url = \"{}\"\n\
         streams = {{ trophy_titles = \"psn_titles\", trophies = \"psn_trophies\" }}\n",
        fake.base_url()
    )
}

/// What one `syncline import …` run did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The words of the status line of `stream (phase)`.
    fn line(&self, stream: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{stream} ")))
            .unwrap_or_else(|| panic!("no `{stream}` line in:\n{}", self.stdout))
            .split_whitespace()
            .collect()
    }
}

/// Runs `syncline import <args> --user alice --config <config> --url <url>`.
async fn import(config: &Path, url: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_syncline"))
        .arg("import")
        .args(args)
        .args(["--user", "alice", "--url", url, "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_commands_start_follow_stop_and_reset_an_import_with_clear_exit_codes() {
    const TOKEN: &str = "psn-token-import-cli";
    let fake = FakePlayStation::start(TOKEN, 200, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "step_budget_ms = 2000", &psn_source(&fake));
    let server = serve(&config);
    let url = server.url.as_str();
    let token = cli_token(&config);
    let (put, _) = connect(url, &token, "psn", json!({"access_token": TOKEN})).await;
    assert_eq!(put, 204);

    let status = import(&config, url, &["status", "psn"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert_eq!(
        status.line("trophy_titles")[..3],
        ["trophy_titles", "(initial)", "none"]
    );

    let done = import(&config, url, &["start", "psn", "--wait"]).await;
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert_eq!(
        done.line("trophy_titles"),
        [
            "trophy_titles",
            "(initial)",
            "success",
            "100%",
            "200",
            "/",
            "200"
        ]
    );
    assert_eq!(
        done.line("trophies"),
        ["trophies", "(initial)", "success", "100%", "600", "/", "?"]
    );

    let reset = import(&config, url, &["reset", "psn"]).await;
    assert_eq!(reset.code, 0, "{}", reset.stderr);
    assert_eq!(
        reset.line("trophy_titles"),
        ["trophy_titles", "(initial)", "none", "0%", "0", "/", "?"]
    );

    // A slow source: `start` returns at once, `stop` halts the walk, `start --wait` resumes it to the end.
    fake.control.set_latency(Duration::from_millis(30));
    let started = import(&config, url, &["start", "psn"]).await;
    assert_eq!(started.code, 0, "{}", started.stderr);
    assert_eq!(started.line("trophy_titles")[2], "pending");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = import(&config, url, &["stop", "psn"]).await;
    assert_eq!(stopped.code, 0, "{}", stopped.stderr);
    assert_eq!(stopped.line("trophies")[2], "stopped", "{}", stopped.stdout);
    // The page in flight (a title list and up to ten titles' trophies) ends, then nothing more is asked.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let halted = fake.control.requests();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.control.requests(),
        halted,
        "a stopped import asks nothing more"
    );
    fake.control.set_latency(Duration::ZERO);
    let resumed = import(&config, url, &["start", "psn", "--wait"]).await;
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert_eq!(resumed.line("trophies")[2..5], ["success", "100%", "600"]);

    // Failures exit non-zero and say why.
    let unknown = import(&config, url, &["status", "nosuch"]).await;
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("unknown_source"),
        "{}",
        unknown.stderr
    );
    fake.control.set_expired(true);
    assert_eq!(import(&config, url, &["reset", "psn"]).await.code, 0);
    let expired = import(&config, url, &["start", "psn", "--wait"]).await;
    assert_eq!(expired.code, 1, "{}", expired.stdout);
    assert_eq!(expired.line("trophy_titles")[2], "error");
    assert!(
        expired.stderr.contains("the import of `psn` failed")
            && expired.stderr.contains("auth_expired"),
        "{}",
        expired.stderr
    );
    assert!(!expired.stderr.contains(TOKEN) && !expired.stdout.contains(TOKEN));
}

/// A `syncline serve` process whose stdout and stderr are kept whole.
struct LoggedServer {
    child: Child,
    url: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl LoggedServer {
    fn start(config: &Path, rust_log: &str) -> LoggedServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_syncline"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .env(
                "SSL_CERT_FILE",
                syncline_testkit::FakeTls::shared().ca_file(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let err_text = stderr.clone();
        let err_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err_text
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = listening_url(&mut lines, |line| stdout.lock().unwrap().push_str(line));
        let out_text = stdout.clone();
        let out_reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                out_text.lock().unwrap().push_str(&line);
            }
        });
        LoggedServer {
            child,
            url,
            stdout,
            stderr,
            readers: vec![err_reader, out_reader],
        }
    }

    /// Stops the server; everything it wrote to stdout and stderr.
    fn stop(mut self) -> (String, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        let out = self.stdout.lock().unwrap().clone();
        let err = self.stderr.lock().unwrap().clone();
        (out, err)
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every request the test makes, and every answer it got, as text.
struct Calls {
    http: reqwest::Client,
    url: String,
    token: String,
    seen: String,
}

impl Calls {
    async fn call(&mut self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        for (name, value) in response.headers() {
            self.seen
                .push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("")));
        }
        let text = response.text().await.unwrap();
        self.seen
            .push_str(&format!("{method} {path} -> {status}\n{text}\n"));
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn status(&mut self, source: &str) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/imports/{source}/status"),
            None,
        )
        .await
    }

    /// `start` in call mode (one step per call) until no stream is pending.
    async fn run(&mut self, source: &str) -> Value {
        for _ in 0..20 {
            let body = self
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/imports/{source}/start"),
                    None,
                )
                .await;
            let pending = body["streams"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["status"] == "pending");
            if !pending {
                return body;
            }
        }
        panic!("{source} still pending");
    }
}

fn first_stream(body: &Value) -> (&str, &str) {
    let s = &body["streams"][0];
    (
        s["status"].as_str().unwrap_or(""),
        s["error_code"].as_str().unwrap_or(""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_logs_or_responses() {
    const PSN: &str = "psn-SECRET-4f1c9a07e2d8";
    const XBOX_UHS: &str = "uhs-SECRET-77e01b";
    const XBOX: &str = "xbl-SECRET-0a1b2c3d4e5f";
    const REST: &str = "rest-SECRET-a1b2c3d4e5";
    const STEAM: &str = "steam-SECRET-5e4d3c2b1a";
    let secrets = [PSN, XBOX_UHS, XBOX, REST, STEAM];
    let psn = FakePlayStation::start(PSN, 30, 3).await;
    let xbox = FakeXbox::start(XBOX_UHS, XBOX, "2533274800000000", 30, 3).await;
    let rest = FakeRest::start(REST, 120).await;
    let steam = FakeSteam::start(STEAM, "76561197960287930", 12, 4).await;
    let sources = format!(
        "{}[imports.sources.xbox]\nkind = \"xbox\"\nbase_url = \"{}\"\n\
         streams = {{ titles = \"xbox_titles\", achievements = \"xbox_achievements\" }}\n\
         [imports.sources.steam]\nkind = \"steam\"\nbase_url = \"{}\"\n\
         streams = {{ owned_games = \"steam_games\", achievements = \"steam_achievements\" }}\n\
         [imports.sources.api]\nkind = \"rest\"\nbase_url = \"{}\"\nmax_retries = 1\nstreams = {{ items = \"rest_items\" }}\n\
         [imports.sources.api.rest]\nauth = {{ header = \"Authorization\", value = \"Token {{api_token}}\" }}\n\
         [imports.sources.api.rest.streams.items]\npath = \"/link/items\"\nrecords = \"\"\n\
         pagination = {{ style = \"link_header\", size_param = \"per_page\" }}\n",
        psn_source(&psn),
        xbox.base_url(),
        steam.base_url(),
        rest.base_url()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "mode = \"call\"", &sources);
    let server = LoggedServer::start(&config, "trace");
    let mut calls = Calls {
        http: reqwest::Client::new(),
        url: server.url.clone(),
        token: cli_token(&config),
        seen: String::new(),
    };

    let credentials = [
        ("psn", json!({"access_token": PSN})),
        (
            "xbox",
            json!({"uhs": XBOX_UHS, "token": XBOX, "xuid": "2533274800000000"}),
        ),
        ("api", json!({"api_token": REST})),
        (
            "steam",
            json!({"api_key": STEAM, "steam_id": "76561197960287930"}),
        ),
    ];
    for (source, credential) in &credentials {
        calls
            .call(
                reqwest::Method::PUT,
                &format!("/v1/connections/{source}"),
                Some(credential.clone()),
            )
            .await;
    }
    // A malformed connection body is refused without echoing it.
    calls
        .call(
            reqwest::Method::PUT,
            "/v1/connections/psn",
            Some(json!([PSN])),
        )
        .await;

    for source in ["psn", "xbox", "api", "steam"] {
        let done = calls.run(source).await;
        assert_eq!(first_stream(&done), ("success", ""), "{source}: {done}");
    }
    // An expired token (401 from PSN and Xbox, 403 from Steam), a rate limit and an upstream failure.
    psn.control.set_expired(true);
    steam.control.set_expired(true);
    xbox.control.rate_limit_next(1, 60);
    rest.control.fail_next(10);
    for source in ["psn", "xbox", "api", "steam"] {
        calls
            .call(
                reqwest::Method::POST,
                &format!("/v1/imports/{source}/reset"),
                None,
            )
            .await;
    }
    assert_eq!(
        first_stream(&calls.run("psn").await),
        ("error", "auth_expired")
    );
    assert_eq!(
        first_stream(&calls.run("steam").await),
        ("error", "auth_expired")
    );
    assert_eq!(first_stream(&calls.run("xbox").await).0, "rate_limited");
    assert_eq!(
        first_stream(&calls.run("api").await),
        ("error", "upstream_unavailable")
    );
    // Every import and connection route, answered.
    calls.call(reqwest::Method::GET, "/v1/imports", None).await;
    for source in ["psn", "xbox", "api", "steam"] {
        calls.status(source).await;
        let connection = format!("/v1/connections/{source}");
        for (method, path) in [
            (reqwest::Method::POST, format!("/v1/imports/{source}/stop")),
            (reqwest::Method::DELETE, connection.clone()),
            (reqwest::Method::DELETE, connection),
            (reqwest::Method::POST, format!("/v1/imports/{source}/start")),
        ] {
            calls.call(method, &path, None).await;
        }
    }
    calls
        .call(
            reqwest::Method::POST,
            "/v1/sync/pull",
            Some(json!({"lastPulledAt": null})),
        )
        .await;

    let (stdout, stderr) = server.stop();
    assert!(
        stderr.contains("import started") && stderr.contains("TRACE"),
        "the server logged at trace level: {} bytes",
        stderr.len()
    );
    assert!(calls.seen.contains("auth_expired") && calls.seen.contains("rate_limited"));
    for secret in secrets {
        for (what, text) in [
            ("stderr", &stderr),
            ("stdout", &stdout),
            ("responses", &calls.seen),
        ] {
            if let Some(at) = text.find(secret) {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(300)
                    .map_or(0, |(i, _)| i);
                panic!(
                    "`{secret}` in the server's {what}: …{}…",
                    &text[from..(at + secret.len()).min(text.len())]
                );
            }
        }
    }
}
