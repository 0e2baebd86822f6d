//! How a pulled record meets the local outbox: per column, local changes that are still waiting to be
//! pushed win over the server's values, and a pulled delete or a replacement pull never erases a record
//! created here and not yet pushed. Pure functions, mirroring the Rust SDK's `merge.rs`.

import type { Change, Columns } from "./coalesce.js";

/**
 * Merges the server's version with the record's waiting operations (oldest first): every column a local
 * operation sets keeps the local value. `null`: a local delete is waiting, the record stays deleted here.
 */
export function mergePulled(server: Columns, waiting: readonly Change[]): Columns | null {
  let merged: Columns | null = server;
  for (const op of waiting) {
    merged = op.kind === "delete" ? null : { ...(merged ?? {}), ...op.columns };
  }
  return merged;
}

/** What becomes of a local record the server says was deleted. */
export type PulledDelete = { action: "delete"; dropWaiting: boolean } | { action: "keep" };

export function onPulledDelete(waiting: readonly Change[]): PulledDelete {
  const last = waiting[waiting.length - 1];
  if (last?.kind === "create") return { action: "keep" };
  return { action: "delete", dropWaiting: last?.kind === "update" };
}

/** On a replacement pull, a local record the server did not send survives only if its create still waits. */
export function survivesReplacement(waiting: readonly Change[]): boolean {
  return waiting[waiting.length - 1]?.kind === "create";
}
