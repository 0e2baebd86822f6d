//! Live devices: while automatic sync runs, one `GET /v1/events` stream stays open, and each `changes`
//! event becomes a trigger for the orchestrator, carrying the sequence it announces (an event the local
//! cursor already covers, such as the echo of this device's own push, starts no sync). The stream is a hint,
//! never data, so nothing can be lost through it: every (re)connection is followed by a sync, which pulls
//! whatever was announced while the stream was down. A dropped or silent stream (no byte, not even a
//! keep-alive, for [`SILENCE`]) reconnects with exponential backoff and jitter.
//!
//! It never syncs by itself, and it never touches the local database.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;

use crate::ClientError;
use crate::engine::Shared;
use crate::sse::SseParser;

/// The server sends a keep-alive comment every 15 s; three missed ones mean the connection is dead even
/// if TCP has not noticed.
const SILENCE: Duration = Duration::from_secs(45);
/// The first wait before reconnecting, doubled after each failed attempt, up to `RECONNECT_MAX`.
const RECONNECT_BASE: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// After the server refused the token, wait this long before trying again (`set_token` may fix it).
const UNAUTHORIZED_WAIT: Duration = Duration::from_secs(60);

/// The stream's `changes` payload: `{"sequence": N}`, or `{}` when the server only knows that something
/// changed (a stream that fell behind).
#[derive(serde::Deserialize)]
struct Changes {
    sequence: Option<i64>,
}

/// Keeps the event stream open until the task is aborted.
pub(crate) async fn listen(shared: Arc<Shared>) {
    let mut failures: u32 = 0;
    loop {
        let outcome = stream_once(&shared, &mut failures).await;
        shared.progress.send_modify(|p| p.live = false);
        let wait = match &outcome {
            Err(ClientError::Unauthorized { .. }) => UNAUTHORIZED_WAIT,
            _ => {
                failures = failures.saturating_add(1);
                let exp = RECONNECT_BASE
                    .saturating_mul(1u32 << (failures - 1).min(16))
                    .min(RECONNECT_MAX);
                // Full jitter over the upper half, so that a server restart does not see every device at once.
                exp.mul_f64(rand::rng().random_range(0.5..1.0))
            }
        };
        match &outcome {
            Ok(()) => tracing::info!(?wait, "the event stream ended; reconnecting"),
            Err(e) => tracing::info!(error = %e, ?wait, "the event stream is down; reconnecting"),
        }
        tokio::time::sleep(wait).await;
    }
}

/// One connection: returns when it ends. A connection that got as far as `ready` resets the backoff.
async fn stream_once(shared: &Arc<Shared>, failures: &mut u32) -> Result<(), ClientError> {
    let mut response = shared.transport.events().await?;
    let mut parser = SseParser::default();
    loop {
        let chunk = match tokio::time::timeout(SILENCE, response.chunk()).await {
            Err(_) => return Err(ClientError::Offline("the event stream went silent".into())),
            Ok(Err(e)) => return Err(ClientError::Offline(e.to_string())),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(chunk))) => chunk,
        };
        for message in parser.push(&chunk) {
            match message.event.as_str() {
                "ready" => {
                    *failures = 0;
                    shared.progress.send_modify(|p| p.live = true);
                    // The server is reachable again: an offline backoff has nothing left to wait for.
                    if shared.progress.borrow().offline {
                        shared.retry_failed_now.store(true, Ordering::SeqCst);
                        shared
                            .triggers
                            .fire(crate::schedule::Trigger::NetworkAvailable);
                    }
                    // Whatever changed while no stream was open is caught up on by a pull.
                    shared.triggers.fire_remote(None);
                }
                "changes" => {
                    let sequence = serde_json::from_str::<Changes>(&message.data)
                        .ok()
                        .and_then(|c| c.sequence);
                    shared.triggers.fire_remote(sequence);
                }
                _ => {} // `import` progress and future kinds are not the SDK's business
            }
        }
    }
}
