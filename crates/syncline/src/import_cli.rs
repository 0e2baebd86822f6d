//! `syncline import start|status|stop|reset <source> --user U`: drives a server's import routes with a token
//! minted from the configuration; `start --wait` shows one progress bar per stream until nothing is pending,
//! then the final states, and exits non-zero when a stream ended in error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;
use syncline_server::Authenticator;

#[derive(Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Start (or resume) an import; with --wait, follow it to the end.
    Start {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        wait: bool,
    },
    /// Show every stream's state.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Stop after the current batch; `start` resumes from the checkpoint.
    Stop {
        #[command(flatten)]
        target: Target,
    },
    /// Forget every stream's progress: the next `start` walks everything again. Imported rows stay.
    Reset {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args)]
struct Target {
    /// The source name from `[imports.sources.NAME]`.
    source: String,
    #[arg(long)]
    user: String,
    #[arg(long, env = "SYNCLINE_CONFIG")]
    config: Option<PathBuf>,
    /// The server; default: `server.listen` of the configuration.
    #[arg(long)]
    url: Option<String>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(target: &Target) -> Result<Client> {
        let (config, _) = crate::load(target.config.as_deref())?;
        let auth = Authenticator::from_config(&config.auth)?;
        let token = auth.mint(&target.user, 3600, false, crate::now_secs())?;
        let base = target
            .url
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.server.listen));
        Ok(Client {
            http: syncline_http::client_builder()
                .build()
                .context("building the HTTP client")?,
            base,
            token,
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> Result<Value> {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("reaching {}", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.context("reading the answer")?;
        if !status.is_success() {
            bail!(
                "{}: {}",
                body["code"].as_str().unwrap_or("error"),
                body["message"].as_str().unwrap_or("")
            );
        }
        Ok(body)
    }
}

pub fn run(args: ImportArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (target, method, route, wait) = match &args.action {
            Action::Start { target, wait } => (target, reqwest::Method::POST, "start", *wait),
            Action::Status { target } => (target, reqwest::Method::GET, "status", false),
            Action::Stop { target } => (target, reqwest::Method::POST, "stop", false),
            Action::Reset { target } => (target, reqwest::Method::POST, "reset", false),
        };
        let client = Client::new(target)?;
        let path = format!("/v1/imports/{}", target.source);
        let body = client.call(method, &format!("{path}/{route}")).await?;
        let body = if wait {
            follow(&client, &path).await?
        } else {
            body
        };
        print_states(&body);
        if wait {
            fail_on_errors(&target.source, &body)?;
        }
        Ok(())
    })
}

/// An error naming every stream that ended in error, if any did.
fn fail_on_errors(source: &str, body: &Value) -> Result<()> {
    let failed: Vec<String> = body["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["status"] == "error")
        .map(|s| {
            format!(
                "{}: {}: {}",
                key(s),
                s["error_code"].as_str().unwrap_or("error"),
                s["error"].as_str().unwrap_or("")
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!(
            "the import of `{source}` failed:\n  {}",
            failed.join("\n  ")
        )
    }
}

fn key(state: &Value) -> String {
    format!(
        "{} ({})",
        state["stream"].as_str().unwrap_or("?"),
        state["phase"].as_str().unwrap_or("?")
    )
}

fn print_states(body: &Value) {
    for s in body["streams"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:<13} {:>3}%  {:>8} / {:<8} {}",
            key(s),
            s["status"].as_str().unwrap_or("?"),
            s["progress"],
            s["processed"],
            s["total_estimated"]
                .as_u64()
                .map_or("?".to_string(), |t| t.to_string()),
            s["error"].as_str().unwrap_or("")
        );
    }
}

/// Polls the status twice a second, one bar per stream, until no stream is pending or rate limited; the last
/// status.
async fn follow(client: &Client, path: &str) -> Result<Value> {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:32} [{bar:30}] {pos}/{len} {msg}")
        .expect("a valid template")
        .progress_chars("=> ");
    let mut shown: BTreeMap<String, ProgressBar> = BTreeMap::new();
    loop {
        let body = client
            .call(reqwest::Method::GET, &format!("{path}/status"))
            .await?;
        let streams = body["streams"].as_array().cloned().unwrap_or_default();
        let mut active = false;
        for s in &streams {
            let bar = shown.entry(key(s)).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(0));
                bar.set_style(style.clone());
                bar.set_prefix(key(s));
                bar
            });
            let processed = s["processed"].as_u64().unwrap_or(0);
            bar.set_length(
                s["total_estimated"]
                    .as_u64()
                    .unwrap_or(processed)
                    .max(processed),
            );
            bar.set_position(processed);
            let status = s["status"].as_str().unwrap_or("?");
            active |= matches!(status, "pending" | "running" | "rate_limited");
            bar.set_message(match status {
                "error" => format!("error: {}", s["error"].as_str().unwrap_or("")),
                other => other.to_string(),
            });
        }
        if !active {
            for bar in shown.values() {
                bar.finish_and_clear();
            }
            return Ok(body);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
