//! The push decisions, without I/O: which waiting operations travel together in one request, the exact
//! bytes of that request, what the server's answer means for the batch, and when a failed batch is tried
//! again. Mirrors the Rust SDK's `batch.rs`; the wire shapes are in docs/protocol.md (sections 5 to 7).
//!
//! Batching rules: operations leave in outbox order, a local transaction (a group) is never split across
//! requests, and a request holds at most `limit` operations unless one group alone is larger (it then goes
//! alone).

import type { Columns, OpKind } from "./coalesce.js";

/** An operation as the planner and the body renderer see it. */
export interface PlannedOp {
  seq: number;
  /** The local transaction of several writes it belongs to; absent for a write that stands alone. */
  group?: string;
  table: string;
  id: string;
  kind: OpKind;
  columns: Columns;
}

/**
 * How many of `ops` (open operations in outbox order, groups contiguous) the next batch takes. `complete`
 * is false when `ops` ends inside the first group: the caller must read the rest of that group.
 * `readAll`: `ops` holds every open operation (so its last group is complete).
 */
export function planBatch(
  ops: readonly { seq?: number; group?: string }[],
  limit: number,
  readAll: boolean,
): { take: number; complete: boolean } {
  const max = Math.max(1, limit);
  const groupOf = (op: { seq?: number; group?: string }) => op.group ?? `#${op.seq}`;
  let take = 0;
  let i = 0;
  while (i < ops.length) {
    let j = i;
    while (j < ops.length && groupOf(ops[j]!) === groupOf(ops[i]!)) j++;
    const groupComplete = j < ops.length || readAll;
    if (take === 0 && !groupComplete) return { take: j, complete: false };
    if (!groupComplete) break;
    if (take > 0 && j > max) break;
    take = j;
    i = j;
    if (take >= max) break;
  }
  return { take, complete: true };
}

/**
 * The push body of a batch: tables in name order, each with `created`, `updated` and `deleted` in outbox
 * order, then `lastPulledAt`. The bytes are sealed with the batch and resent unchanged.
 */
export function renderPushBody(lastPulledAt: number, ops: readonly PlannedOp[]): string {
  const tables = new Map<string, { created: string[]; updated: string[]; deleted: string[] }>();
  for (const op of ops) {
    let t = tables.get(op.table);
    if (!t) tables.set(op.table, (t = { created: [], updated: [], deleted: [] }));
    if (op.kind === "delete") t.deleted.push(JSON.stringify(op.id));
    else (op.kind === "create" ? t.created : t.updated).push(JSON.stringify({ id: op.id, ...op.columns }));
  }
  const parts = [...tables.keys()]
    .sort()
    .map((name) => {
      const t = tables.get(name)!;
      return `${JSON.stringify(name)}:{"created":[${t.created.join(",")}],"updated":[${t.updated.join(",")}],"deleted":[${t.deleted.join(",")}]}`;
    });
  return `{"changes":{${parts.join(",")}},"lastPulledAt":${Math.trunc(lastPulledAt)}}`;
}

/** A row the server refused, with its stable code and a message for people. */
export interface RowRejection {
  table: string;
  id: string | null;
  code: string;
  message: string;
  index?: number;
}

/** What a push (or bulk) answer means for its batch. */
export type PushVerdict =
  | { kind: "applied"; rejected: RowRejection[]; replayed: boolean; body: unknown }
  /** Nothing applied: records changed on the server since the batch's cursor. Pull, then push again. */
  | { kind: "conflict"; conflicts: Record<string, string[]> }
  /** `422 idempotency_key_reused`: the server stores keys only of applied requests, so this one was applied. */
  | { kind: "appliedEarlier" }
  /** The request as a whole was refused and would be refused again: split it, or park it. */
  | { kind: "refused"; status: number; code: string; message: string; body: unknown }
  /** The token was refused: nothing applied. */
  | { kind: "unauthorized"; code: string; message: string }
  /** Unknown whether it was applied (network error, cut-off answer, 5xx, 429): resend the same bytes later. */
  | { kind: "retry"; reason: string; offline: boolean };

function parse(text: string): any {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Reads an answer: HTTP status, body text, and whether the server marked it `Idempotent-Replayed`. */
export function classifyPush(status: number, text: string, replayed: boolean): PushVerdict {
  const body = parse(text);
  if (status >= 200 && status < 300) {
    if (body === undefined || typeof body !== "object" || body === null) {
      return { kind: "retry", reason: "unreadable answer", offline: false };
    }
    return { kind: "applied", rejected: Array.isArray(body.rejected) ? body.rejected : [], replayed, body };
  }
  const code: string = typeof body?.code === "string" ? body.code : `http_${status}`;
  const message: string = typeof body?.message === "string" ? body.message : text.slice(0, 200);
  if (status === 409) return { kind: "conflict", conflicts: body?.conflicts ?? {} };
  if (status === 401 || status === 403) return { kind: "unauthorized", code, message };
  if (status === 408 || status === 429 || status >= 500) {
    return { kind: "retry", reason: `server answered ${status}`, offline: false };
  }
  if (status === 422 && code === "idempotency_key_reused") return { kind: "appliedEarlier" };
  return { kind: "refused", status, code, message, body };
}

/** How long a failed batch waits before it is tried again. */
export interface RetryPolicy {
  /** The wait after the first failure, in ms; it doubles with each further failure. */
  baseMs: number;
  /** The longest wait, in ms. */
  maxMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { baseMs: 2000, maxMs: 300_000 };

/**
 * The wait after the `failures`-th failure (from 1): exponential, capped, with "equal jitter" (half fixed,
 * half random), so that many devices coming back together do not retry in step. `unit` is in [0, 1).
 */
export function retryDelay(policy: RetryPolicy, failures: number, unit: number): number {
  const exp = policy.baseMs * 2 ** Math.min(Math.max(failures - 1, 0), 20);
  const full = Math.min(exp, policy.maxMs);
  return full / 2 + (full * Math.min(Math.max(unit, 0), 1)) / 2;
}

/** A new idempotency key (1-128 characters of `[A-Za-z0-9_.:-]`). */
export function newKey(): string {
  return `sl-${randomId(20)}`;
}

const ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";

/** A random id of `n` lowercase letters and digits (record ids, device ids, keys). */
export function randomId(n = 16): string {
  const bytes = new Uint8Array(n);
  globalThis.crypto.getRandomValues(bytes);
  let out = "";
  for (const b of bytes) out += ALPHABET[b % ALPHABET.length];
  return out;
}
