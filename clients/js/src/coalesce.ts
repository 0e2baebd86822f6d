//! The outbox's coalescing rules: how a new local write to a record folds into the record's operation that
//! is still waiting (not yet sealed into a batch). Pure functions, the same table as the Rust SDK's
//! `coalesce.rs`:
//!
//! | waiting \ new write | create(p) | update(p)     | delete  |
//! |---------------------|-----------|---------------|---------|
//! | none                | create(p) | update(p)     | delete  |
//! | create(e)           | create(p) | create(e ∪ p) | nothing |
//! | update(e)           | create(p) | update(e ∪ p) | delete  |
//! | delete              | create(p) | update(p)     | delete  |

/** A JSON value as stored in a column. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Column values of one record, without its `id`. */
export type Columns = Record<string, Json>;

/** A record: its `id` and its columns. */
export type Row = { id: string } & Columns;

/** What an outbox operation does to its record. */
export type OpKind = "create" | "update" | "delete";

/** One change to one record: the kind, and the columns it sets (empty for a delete). */
export interface Change {
  kind: OpKind;
  columns: Columns;
}

/** Folds `incoming` into the record's waiting operation. `null`: the two cancel out (create then delete). */
export function coalesce(waiting: Change | null | undefined, incoming: Change): Change | null {
  if (!waiting) return incoming;
  if (incoming.kind === "create") return incoming;
  if (incoming.kind === "delete") return waiting.kind === "create" ? null : incoming;
  if (waiting.kind === "delete") return incoming;
  return { kind: waiting.kind, columns: { ...waiting.columns, ...incoming.columns } };
}

/** Deep equality of two JSON values (object key order does not matter). */
export function sameJson(a: Json | undefined, b: Json | undefined): boolean {
  if (a === b) return true;
  if (a === undefined || b === undefined) return (a ?? null) === (b ?? null);
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((v, i) => sameJson(v, b[i]));
  }
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && sameJson(a[k], b[k]));
}

/**
 * The columns of `patch` whose values differ from `current` (a column absent from `current` counts as
 * null): what an update really changes. Empty when the write changes nothing.
 */
export function changedColumns(current: Columns, patch: Columns): Columns {
  const out: Columns = {};
  for (const [k, v] of Object.entries(patch)) {
    if (k === "id") continue;
    if (!sameJson(current[k] ?? null, v)) out[k] = v;
  }
  return out;
}

/** Two versions of a record hold the same data (a column absent on one side counts as null). */
export function sameRecord(a: Columns, b: Columns): boolean {
  const agree = (x: Columns, y: Columns) => Object.entries(x).every(([k, v]) => sameJson(v, y[k] ?? null));
  return agree(a, b) && agree(b, a);
}
