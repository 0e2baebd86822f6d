//! The HTTP header names of the protocol (docs/protocol.md), spelled once for the server, the client SDK
//! and the binary. Lowercase, as HTTP/2 writes them and as `http::HeaderName::from_static` takes them; header
//! names are case-insensitive, so `Idempotency-Key` on the wire is the same header.
//!
//! Only names live here: what a value may be is checked where the header is read.

/// `Idempotency-Key`: names a push or bulk request, so a retry is answered with the first answer (§6).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// `Idempotent-Replayed: true`: the answer is the replay of an earlier request with the same key (§6).
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// `Syncline-Device`: the device a pull, push or bulk request comes from, for the dashboard (§10).
pub const DEVICE: &str = "syncline-device";

/// `Syncline-Outbox-Pending`: how many operations wait in the device's outbox, for the dashboard (§10).
pub const OUTBOX_PENDING: &str = "syncline-outbox-pending";

/// `Server-Timing: app;dur=<ms>` (W3C Server Timing) on every answer: the server's time from routing the
/// request to the answer's head (§11).
pub const SERVER_TIMING: &str = "server-timing";
