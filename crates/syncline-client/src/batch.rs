//! The push decisions, without I/O: which waiting operations travel together in one request, the exact
//! bytes of that request, what the server's answer means for the batch, and when a failed batch is tried
//! again. The store and the transport carry these verdicts out.
//!
//! Batching rules: operations leave in outbox order, a local transaction (a group) is never split across
//! requests, and a request holds at most `limit` operations unless one group alone is larger (it then goes
//! alone). The body is a pure function of the batch's operations and its `lastPulledAt`, so a batch resent
//! after a crash has the same bytes, which the server needs to replay its first answer for the same
//! `Idempotency-Key`.

use std::collections::BTreeMap;
use std::time::Duration;

use syncline_core::{ErrorBody, ErrorCode, PushResponse};

use crate::coalesce::OpKind;

/// An operation waiting in the outbox, as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub seq: i64,
    pub group: i64,
}

/// Chooses the next batch among `slots` (open operations in outbox order; every group present must be
/// complete). Returns the chosen sequence numbers in outbox order.
pub fn plan_batch(slots: &[Slot], limit: usize) -> Vec<i64> {
    let mut order: Vec<i64> = Vec::new();
    let mut members: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for slot in slots {
        let entry = members.entry(slot.group).or_default();
        if entry.is_empty() {
            order.push(slot.group);
        }
        entry.push(slot.seq);
    }
    let mut chosen = Vec::new();
    for group in order {
        let seqs = &members[&group];
        if !chosen.is_empty() && chosen.len() + seqs.len() > limit.max(1) {
            break;
        }
        chosen.extend_from_slice(seqs);
    }
    chosen.sort_unstable();
    chosen
}

/// One operation as it goes on the wire. `columns` is the JSON object text of the columns it sets, without
/// the id (`{}` for a delete).
#[derive(Debug, Clone, Copy)]
pub struct WireOp<'a> {
    pub table: &'a str,
    pub id: &'a str,
    pub kind: OpKind,
    pub columns: &'a str,
}

/// The push body for a batch: tables in name order, each with `created`, `updated` and `deleted` in outbox
/// order. Deterministic: the same operations and cursor always give the same bytes.
pub fn render_push_body(last_pulled_at: i64, ops: &[WireOp<'_>]) -> String {
    let mut tables: BTreeMap<&str, [Vec<&WireOp<'_>>; 3]> = BTreeMap::new();
    let mut size = 64;
    for op in ops {
        size += op.columns.len() + op.id.len() + 12;
        let slot = match op.kind {
            OpKind::Create => 0,
            OpKind::Update => 1,
            OpKind::Delete => 2,
        };
        tables.entry(op.table).or_default()[slot].push(op);
    }
    let mut out = String::with_capacity(size + tables.len() * 64);
    out.push_str("{\"changes\":{");
    for (t, (table, [created, updated, deleted])) in tables.iter().enumerate() {
        if t > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(table); // checked names need no escaping
        out.push_str("\":{\"created\":[");
        push_records(&mut out, created);
        out.push_str("],\"updated\":[");
        push_records(&mut out, updated);
        out.push_str("],\"deleted\":[");
        for (i, op) in deleted.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(op.id);
            out.push('"');
        }
        out.push_str("]}");
    }
    out.push_str("},\"lastPulledAt\":");
    out.push_str(&last_pulled_at.to_string());
    out.push('}');
    out
}

fn push_records(out: &mut String, ops: &[&WireOp<'_>]) {
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"id\":\"");
        out.push_str(op.id); // safe ids need no escaping
        out.push('"');
        let inner = op
            .columns
            .trim()
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or("");
        if !inner.trim().is_empty() {
            out.push(',');
            out.push_str(inner);
        }
        out.push('}');
    }
}

/// What a push answer means for its batch.
#[derive(Debug, Clone, PartialEq)]
pub enum PushVerdict {
    /// Applied now, or replayed from the first time (`replayed`): done, except the rejected rows.
    Applied {
        response: PushResponse,
        replayed: bool,
    },
    /// Nothing applied: records changed on the server since the batch's cursor. Pull, then push again.
    Conflict {
        conflicts: BTreeMap<String, Vec<String>>,
    },
    /// `422 idempotency_key_reused`: the server remembers this key, which it does only for a request it
    /// applied, so the batch was applied before (its answer is lost).
    AppliedEarlier,
    /// The request as a whole was refused and would be refused again (`413`, other `4xx`): split it, or park
    /// it when it is a single group.
    Refused { code: String, message: String },
    /// The token was refused: nothing applied; get a new token.
    Unauthorized { code: String, message: String },
    /// Unknown whether it was applied (network error, cut-off answer, `5xx`, `429`): try the same bytes with
    /// the same key again later. `offline`: the server could not be reached at all.
    Retry { reason: String, offline: bool },
}

/// Reads a push answer: HTTP status, body, and whether the server marked it `Idempotent-Replayed`.
pub fn classify_push(status: u16, body: &[u8], replayed: bool) -> PushVerdict {
    let error = || serde_json::from_slice::<ErrorBody>(body).ok();
    match status {
        200..=299 => match serde_json::from_slice::<PushResponse>(body) {
            Ok(response) => PushVerdict::Applied { response, replayed },
            Err(e) => PushVerdict::Retry {
                reason: format!("unreadable push answer: {e}"),
                offline: false,
            },
        },
        409 => PushVerdict::Conflict {
            conflicts: error().map(|e| e.conflicts).unwrap_or_default(),
        },
        401 | 403 => {
            let e = error().unwrap_or_default();
            PushVerdict::Unauthorized {
                code: e.code,
                message: e.message,
            }
        }
        408 | 429 | 500.. => PushVerdict::Retry {
            reason: format!("server answered {status}"),
            offline: false,
        },
        _ => match error() {
            Some(e) if e.error_code() == Some(ErrorCode::IdempotencyKeyReused) => {
                PushVerdict::AppliedEarlier
            }
            Some(e) => PushVerdict::Refused {
                code: e.code,
                message: e.message,
            },
            None => PushVerdict::Refused {
                code: format!("http_{status}"),
                message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            },
        },
    }
}

/// How long a failed batch waits before it is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure; it doubles with each further failure.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(2),
            max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failure (from 1): exponential, capped, with "equal jitter" (half
    /// fixed, half random), so that many devices coming back together do not retry in step. `unit` is a
    /// random number in `[0, 1)`.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let full = exp.min(self.max);
        full / 2 + full.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_plan(slots: &[(i64, i64)], limit: usize, expected: &[i64]) {
        let slots: Vec<Slot> = slots
            .iter()
            .map(|&(seq, group)| Slot { seq, group })
            .collect();
        assert_eq!(
            plan_batch(&slots, limit),
            expected,
            "{slots:?} limit {limit}"
        );
    }

    #[test]
    fn batches_keep_groups_whole() {
        check_plan(&[(1, 1), (2, 2), (3, 3)], 2, &[1, 2]);
        // Group 2 (seqs 2 and 5) does not fit after 1: it waits for the next batch.
        check_plan(&[(1, 1), (2, 2), (3, 3), (5, 2)], 2, &[1]);
        check_plan(&[(2, 2), (3, 3), (5, 2)], 2, &[2, 5]);
        // A group larger than the limit goes alone.
        check_plan(&[(1, 1), (2, 1), (3, 1), (4, 4)], 2, &[1, 2, 3]);
        check_plan(&[], 10, &[]);
    }

    #[test]
    fn bodies_are_deterministic_and_grouped_per_table() {
        let ops = [
            WireOp {
                table: "tasks",
                id: "t1",
                kind: OpKind::Update,
                columns: r#"{"title":"x"}"#,
            },
            WireOp {
                table: "projects",
                id: "p1",
                kind: OpKind::Create,
                columns: r#"{"name":"A"}"#,
            },
            WireOp {
                table: "tasks",
                id: "t2",
                kind: OpKind::Delete,
                columns: "{}",
            },
            WireOp {
                table: "tasks",
                id: "t3",
                kind: OpKind::Create,
                columns: "{}",
            },
        ];
        let body = render_push_body(42, &ops);
        assert_eq!(
            body,
            r#"{"changes":{"projects":{"created":[{"id":"p1","name":"A"}],"updated":[],"deleted":[]},"tasks":{"created":[{"id":"t3"}],"updated":[{"id":"t1","title":"x"}],"deleted":["t2"]}},"lastPulledAt":42}"#
        );
        assert_eq!(body, render_push_body(42, &ops));
        let parsed: syncline_core::PushRequest = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed.changes["tasks"].len(), 3);
    }

    fn check_verdict(status: u16, body: &str, expected: PushVerdict) {
        assert_eq!(
            classify_push(status, body.as_bytes(), false),
            expected,
            "{status} {body}"
        );
    }

    #[test]
    fn answers_become_verdicts() {
        check_verdict(
            200,
            r#"{"timestamp":5}"#,
            PushVerdict::Applied {
                response: PushResponse {
                    timestamp: 5,
                    rejected: vec![],
                },
                replayed: false,
            },
        );
        check_verdict(
            409,
            r#"{"code":"conflict","message":"m","conflicts":{"t":["a"]}}"#,
            PushVerdict::Conflict {
                conflicts: [("t".to_string(), vec!["a".to_string()])].into(),
            },
        );
        check_verdict(
            422,
            r#"{"code":"idempotency_key_reused","message":"m"}"#,
            PushVerdict::AppliedEarlier,
        );
        check_verdict(
            413,
            r#"{"code":"too_many_records","message":"m"}"#,
            PushVerdict::Refused {
                code: "too_many_records".into(),
                message: "m".into(),
            },
        );
        check_verdict(
            401,
            r#"{"code":"token_expired","message":"m"}"#,
            PushVerdict::Unauthorized {
                code: "token_expired".into(),
                message: "m".into(),
            },
        );
        for (status, body) in [(503, ""), (200, r#"{"timest"#), (429, "{}")] {
            assert!(matches!(
                classify_push(status, body.as_bytes(), false),
                PushVerdict::Retry { offline: false, .. }
            ));
        }
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter() {
        let policy = RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let check = |failures, unit, secs: f64| {
            assert_eq!(
                policy.delay(failures, unit).as_secs_f64(),
                secs,
                "{failures} {unit}"
            );
        };
        check(1, 0.0, 0.5);
        check(1, 1.0, 1.0);
        check(2, 0.0, 1.0);
        check(4, 0.5, 6.0);
        check(10, 0.0, 30.0);
        check(40, 1.0, 60.0);
    }
}
