//! HTTP to the Syncline server: push with an `Idempotency-Key`, paged pull, and the server's sequence for
//! progress. Every push and pull names the device (`Syncline-Device`) and, once known, how many operations
//! wait in its outbox (`Syncline-Outbox-Pending`), for the server's dashboard. Turns network failures and
//! error answers into verdicts and errors; decides nothing else. The `/v1/events` stream has its own HTTP
//! client: it stays open for hours, so it has no overall time limit, only a connect timeout.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use syncline_core::{ErrorBody, PullRequest, headers};

use crate::ClientError;
use crate::batch::{PushVerdict, classify_push};

#[derive(Debug)]
pub(crate) struct Transport {
    http: reqwest::Client,
    /// For the long-lived event stream.
    events_http: reqwest::Client,
    base: String,
    token: RwLock<String>,
    device: String,
    /// Operations waiting in the outbox, as last counted; `u64::MAX` until the first count.
    outbox_pending: AtomicU64,
}

fn network(e: &reqwest::Error) -> ClientError {
    match syncline_http::tls_failure(e) {
        Some(tls) => ClientError::Tls(tls.to_string()),
        None => ClientError::Offline(e.to_string()),
    }
}

/// Why a request got no answer, in words: a TLS failure names the host and the reason.
fn no_answer(e: &reqwest::Error) -> String {
    syncline_http::tls_failure(e).map_or_else(|| e.to_string(), |tls| tls.to_string())
}

fn error_answer(status: u16, body: &[u8]) -> ClientError {
    let e = serde_json::from_slice::<ErrorBody>(body).unwrap_or_else(|_| ErrorBody {
        code: format!("http_{status}"),
        message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        ..Default::default()
    });
    if status == 401 || status == 403 {
        ClientError::Unauthorized {
            code: e.code,
            message: e.message,
        }
    } else {
        ClientError::Server {
            status,
            code: e.code,
            message: e.message,
        }
    }
}

impl Transport {
    pub(crate) fn new(base: &str, token: String, timeout: Duration, device: String) -> Transport {
        let http = syncline_http::client_builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .build()
            .unwrap_or_default();
        let events_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Transport {
            http,
            events_http,
            base: base.trim_end_matches('/').to_string(),
            token: RwLock::new(token),
            device,
            outbox_pending: AtomicU64::new(u64::MAX),
        }
    }

    pub(crate) fn device(&self) -> &str {
        &self.device
    }

    /// The outbox count the next requests report.
    pub(crate) fn set_outbox_pending(&self, pending: u64) {
        self.outbox_pending
            .store(pending.min(u64::MAX - 1), Ordering::Relaxed);
    }

    /// A POST naming this device and, once counted, its outbox.
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.token())
            .header("content-type", "application/json")
            .header(headers::DEVICE, &self.device);
        match self.outbox_pending.load(Ordering::Relaxed) {
            u64::MAX => request,
            n => request.header(headers::OUTBOX_PENDING, n),
        }
    }

    pub(crate) fn set_token(&self, token: String) {
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = token;
    }

    fn token(&self) -> String {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends one push body with its key. Never fails: every outcome is a verdict.
    pub(crate) async fn push(&self, key: &str, body: String) -> PushVerdict {
        let sent = self
            .post("/v1/sync/push")
            .header(headers::IDEMPOTENCY_KEY, key)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            // No answer at all: the network or the server is away.
            Err(e) => {
                return PushVerdict::Retry {
                    reason: no_answer(&e),
                    offline: true,
                };
            }
        };
        let status = response.status().as_u16();
        let replayed = response
            .headers()
            .get(headers::IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v.as_bytes() == b"true");
        match response.bytes().await {
            Ok(body) => classify_push(status, &body, replayed),
            Err(e) => PushVerdict::Retry {
                reason: format!("the answer was cut off: {e}"),
                offline: false,
            },
        }
    }

    /// One pull request; the body bytes of a 200 answer.
    pub(crate) async fn pull(&self, request: &PullRequest) -> Result<Bytes, ClientError> {
        let response = self
            .post("/v1/sync/pull")
            .body(serde_json::to_string(request)?)
            .send()
            .await
            .map_err(|e| network(&e))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| network(&e))?;
        if status == 200 {
            Ok(body)
        } else {
            Err(error_answer(status, &body))
        }
    }

    /// Opens `GET /v1/events` (Server-Sent Events). The answer's body is the stream.
    pub(crate) async fn events(&self) -> Result<reqwest::Response, ClientError> {
        let response = self
            .events_http
            .get(format!("{}/v1/events", self.base))
            .bearer_auth(self.token())
            .header("accept", "text/event-stream")
            .header(headers::DEVICE, &self.device)
            .send()
            .await
            .map_err(|e| network(&e))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(response);
        }
        let body = response.bytes().await.map_err(|e| network(&e))?;
        Err(error_answer(status, &body))
    }

    /// The server's current change sequence (from `GET /v1/me`), the target a pull is heading for.
    pub(crate) async fn server_sequence(&self) -> Result<i64, ClientError> {
        let response = self
            .http
            .get(format!("{}/v1/me", self.base))
            .bearer_auth(self.token())
            .send()
            .await
            .map_err(|e| network(&e))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| network(&e))?;
        if status != 200 {
            return Err(error_answer(status, &body));
        }
        #[derive(serde::Deserialize)]
        struct Me {
            stats: Stats,
        }
        #[derive(serde::Deserialize)]
        struct Stats {
            sequence: i64,
        }
        serde_json::from_slice::<Me>(&body)
            .map(|me| me.stats.sequence)
            .map_err(|e| ClientError::BadResponse(e.to_string()))
    }
}
