//! Progress of the current sync and the summary of the last one, as an observable value for the UI.
//! Mirrors the Rust SDK's `progress.rs`: state (idle, syncing, synced, error), phase, per-table counts,
//! a percentage, and a one-line summary such as "2 items updated from cloud, 5 changes sent".

export type SyncState = "idle" | "syncing" | "synced" | "error";
export type SyncPhase = "push" | "pull";

/** One table's part of the current sync. */
export interface TableProgress {
  /** Operations this sync set out to push. */
  toPush: number;
  pushed: number;
  /** Operations whose batch failed and waits for a retry. */
  failed: number;
  rejected: number;
  /** Changes received from the server. */
  pulled: number;
}

/** What one finished sync did. */
export interface SyncSummary {
  pushed: number;
  rejected: number;
  failed: number;
  /** Records that changed here because of the server, per table. */
  fromCloud: Record<string, number>;
  pulled: number;
  pushRequests: number;
  pullRequests: number;
  conflictRounds: number;
  durationMs: number;
  /** Time spent pushing and pulling, in ms. */
  pushMs: number;
  pullMs: number;
  /** "2 items updated from cloud, 5 changes sent" (and ", 1 rejected", ", 3 to retry"). */
  text: string;
}

export interface SyncProgress {
  state: SyncState;
  phase: SyncPhase | null;
  tables: Record<string, TableProgress>;
  /** 0-100: the share of this sync's push done; 100 once synced. */
  percentage: number;
  lastSummary: SyncSummary | null;
  lastSyncedAt: number | null;
  lastError: string | null;
  /** The last sync failed because the server could not be reached. */
  offline: boolean;
}

export function summaryText(s: Omit<SyncSummary, "text">): string {
  const n = Object.values(s.fromCloud).reduce((a, b) => a + b, 0);
  let text = `${n} ${n === 1 ? "item" : "items"} updated from cloud, ${s.pushed} ${s.pushed === 1 ? "change" : "changes"} sent`;
  if (s.rejected > 0) text += `, ${s.rejected} rejected`;
  if (s.failed > 0) text += `, ${s.failed} to retry`;
  return text;
}

export function percentage(p: SyncProgress): number {
  if (p.state === "synced") return 100;
  let total = 0;
  let done = 0;
  for (const t of Object.values(p.tables)) {
    total += t.toPush;
    done += t.pushed + t.rejected + t.failed;
  }
  if (total === 0) return p.phase === "pull" ? 50 : 0;
  return Math.min(100, Math.round((100 * done) / total));
}

/** A value with subscribers: `subscribe` calls the listener at once and on every change. */
export class Observable<T> {
  private listeners = new Set<(value: T) => void>();
  constructor(private current: T) {}
  get value(): T {
    return this.current;
  }
  set(next: T): void {
    this.current = next;
    for (const l of [...this.listeners]) {
      try {
        l(next);
      } catch {
        // a listener's failure is its own
      }
    }
  }
  subscribe(listener: (value: T) => void): () => void {
    this.listeners.add(listener);
    listener(this.current);
    return () => this.listeners.delete(listener);
  }
}
