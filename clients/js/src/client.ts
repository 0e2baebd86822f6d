//! The public handle: local tables whose writes land in the durable outbox, one sync at a time (push the
//! sealed batches, then new ones; pull and push again on a conflict; pull page by page), the bulk RPC, the
//! outbox's introspection, and the orchestrator that decides when to sync (start, `online`, the page
//! becoming visible, debounced local writes, a timer, and `changes` events from the server).

import { DEFAULT_RETRY, classifyPush, newKey, randomId, retryDelay, type RetryPolicy, type RowRejection } from "./batch.js";
import type { Columns, Row } from "./coalesce.js";
import { listen } from "./events.js";
import { openDatabase } from "./idb.js";
import { withSyncLock } from "./lock.js";
import { percentage, summaryText, Observable, type SyncProgress, type SyncSummary, type TableProgress } from "./progress.js";
import * as store from "./store.js";
import type { ParkedRow, SealedBatch, WriteTx } from "./store.js";
import { OfflineError, Transport, type TokenSource } from "./transport.js";

export interface ClientOptions {
  /** The server's base URL, e.g. `https://sync.example.com`. */
  url: string;
  /** The user's bearer token, or a function returning the current one. */
  token: TokenSource;
  /** The IndexedDB database name (one per user and app). Default `syncline`. */
  database?: string;
  /** The IndexedDB implementation. Default `globalThis.indexedDB`; in Node pass `fake-indexeddb`'s. */
  indexedDB?: IDBFactory;
  /** The fetch implementation. Default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** The device name sent as `Syncline-Device`. Default: a random id made once and kept in the database. */
  device?: string;
  /** Operations per push request, at most (a local transaction is never split). Default 10,000. */
  batchSize?: number;
  /** Changes per pull page. Default 5,000 (at most the server's `sync.max_pull_limit`). */
  pullPageSize?: number;
  /** `individual`: one request per operation, for comparison. Default `batched`. */
  pushMode?: "batched" | "individual";
  /** Backoff of failed batches. Default 2 s doubling to 5 min, with jitter. */
  retry?: RetryPolicy;
  /** Pull-and-push-again rounds after 409 conflicts within one sync. Default 3. */
  maxConflictRounds?: number;
  /** Quiet time after a local write before the automatic sync. Default 300 ms. */
  debounceMs?: number;
  /** Period of the automatic sync. Default 5 minutes; 0 turns it off. */
  intervalMs?: number;
  /** Listen to `GET /v1/events` and sync on `changes`. Default true. */
  liveEvents?: boolean;
  /** Use `navigator.locks` when present (else a lease in the database). Default true. */
  useWebLocks?: boolean;
}

/** An error answer of the server (`code` is stable, see docs/protocol.md section 11). */
export class SynclineError extends Error {
  override name = "SynclineError";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly body?: unknown,
  ) {
    super(message);
  }
}

/** A bulk request refused because of invalid rows (`422 invalid_rows`); nothing was applied. */
export class BulkRejectedError extends SynclineError {
  override name = "BulkRejectedError";
  constructor(
    message: string,
    readonly errors: RowRejection[],
    body: unknown,
  ) {
    super(422, "invalid_rows", message, body);
  }
}

export interface BulkRequest {
  upserts?: Record<string, Row[]>;
  deletes?: Record<string, string[]>;
}

export interface BulkCounts {
  upserted: number;
  unchanged: number;
  deleted: number;
}

export interface BulkResult {
  counts: Record<string, BulkCounts>;
  /** Requests it took (1 in batched mode). */
  requests: number;
  timestamp: number;
}

export interface OutboxStats {
  /** Operations waiting to be pushed (sealed or not), per table. */
  pending: Record<string, number>;
  pendingTotal: number;
  /** Operations sealed into batches (being sent, or waiting for a retry). */
  sealed: number;
  /** Batches that failed and wait for their retry. */
  failedBatches: number;
  /** Rows the server refused, parked, per table. */
  rejected: Record<string, number>;
  rejectedTotal: number;
  /** When the oldest write still waiting was made (ms since the epoch). */
  oldestPendingAt: number | null;
  oldestPendingAgeMs: number | null;
  lastError: string | null;
}

export type ChangeSource = "local" | "remote" | "other-tab";

/** Reads and writes of one table inside a local transaction. */
export interface TxTable {
  get(id: string): Promise<Row | undefined>;
  /** Creates the record (a missing `id` gets a random one), or updates the columns that differ. */
  put(row: Partial<Row> & Columns): Promise<string>;
  /** `put` for many records at once (their reads go together): the fast way to write a list. */
  putMany(rows: readonly (Partial<Row> & Columns)[]): Promise<string[]>;
  update(id: string, patch: Columns): Promise<void>;
  delete(id: string): Promise<void>;
}

export interface Tx {
  table(name: string): TxTable;
}

/** A table outside a transaction: each write is its own local transaction. */
export interface Table extends TxTable {
  all(): Promise<Row[]>;
}

function txTable(w: WriteTx, name: string): TxTable {
  return {
    get: (id) => w.get(name, id),
    put: (row) => w.put(name, row),
    putMany: (rows) => w.putMany(name, rows),
    update: (id, patch) => w.update(name, id, patch),
    delete: (id) => w.delete(name, id),
  };
}

const zeroTable = (): TableProgress => ({ toPush: 0, pushed: 0, failed: 0, rejected: 0, pulled: 0 });

type Flow = "continue" | "conflict" | "done" | "waiting";

export class SynclineClient {
  readonly progress: Observable<SyncProgress>;
  private readonly transport: Transport;
  private readonly channel: BroadcastChannel | null;
  private readonly changeListeners = new Set<(tables: string[], source: ChangeSource) => void>();
  private current: Promise<SyncSummary> | null = null;
  private next: Promise<SyncSummary> | null = null;
  private debounce: ReturnType<typeof setTimeout> | null = null;
  private timer: ReturnType<typeof setInterval> | null = null;
  private events: AbortController | null = null;
  private started = false;
  private retryNow = false;
  private detach: Array<() => void> = [];

  private constructor(
    readonly db: IDBDatabase,
    readonly name: string,
    readonly device: string,
    private readonly options: ClientOptions,
  ) {
    const fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.transport = new Transport(options.url.replace(/\/+$/, ""), options.token, device, fetchFn);
    this.progress = new Observable<SyncProgress>({
      state: "idle",
      phase: null,
      tables: {},
      percentage: 0,
      lastSummary: null,
      lastSyncedAt: null,
      lastError: null,
      offline: false,
    });
    this.channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(`syncline:${name}`) : null;
    (this.channel as unknown as { unref?: () => void } | null)?.unref?.();
    if (this.channel) {
      this.channel.onmessage = (e: MessageEvent) => {
        const tables = (e.data as { tables?: string[] })?.tables;
        if (Array.isArray(tables)) this.emit(tables, "other-tab");
      };
    }
  }

  /** Opens (or creates) the client database and returns the client. Call `start()` for automatic sync. */
  static async open(options: ClientOptions): Promise<SynclineClient> {
    const factory = options.indexedDB ?? globalThis.indexedDB;
    if (!factory) throw new Error("no IndexedDB: pass `indexedDB` (in Node, the factory of fake-indexeddb)");
    const name = options.database ?? "syncline";
    const db = await openDatabase(factory, name);
    const device = options.device ?? (await store.deviceId(db));
    const client = new SynclineClient(db, name, device, options);
    client.transport.outboxPending = await store.pendingCount(db);
    const lastSyncedAt = await store.getMeta<number | null>(db, "lastSyncedAt", null);
    client.progress.set({ ...client.progress.value, lastSyncedAt });
    return client;
  }

  // ---- local data ----------------------------------------------------------------------------------

  table(name: string): Table {
    return {
      get: (id) => store.getRecord(this.db, name, id),
      all: () => store.allRecords(this.db, name),
      put: (row) => this.bulkWrite((tx) => tx.table(name).put(row)),
      // Independent writes in one IndexedDB transaction; use transaction() to keep them together.
      putMany: (rows) => this.bulkWrite((tx) => tx.table(name).putMany(rows)),
      update: (id, patch) => this.bulkWrite((tx) => tx.table(name).update(id, patch)),
      delete: (id) => this.bulkWrite((tx) => tx.table(name).delete(id)),
    };
  }

  /**
   * One local transaction: its writes and their outbox operations commit together, and they travel to the
   * server in one request. Await only the transaction's own calls inside `fn` (IndexedDB commits a
   * transaction that waits on anything else).
   */
  async transaction<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    const { result, tables } = await store.write(this.db, (w) => fn({ table: (name) => txTable(w, name) }));
    this.afterLocalWrite(tables);
    return result;
  }

  /**
   * Many writes in one IndexedDB transaction, each its own outbox operation that batches may separate
   * (the speed of one transaction without keeping the writes together on the server): for imports.
   */
  async bulkWrite<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    const { result, tables } = await store.write(this.db, (w) => fn({ table: (name) => txTable(w, name) }), true);
    this.afterLocalWrite(tables);
    return result;
  }

  /** Calls `listener` with the tables whose local data changed: by a local write, a pull, or another tab. */
  onChange(listener: (tables: string[], source: ChangeSource) => void): () => void {
    this.changeListeners.add(listener);
    return () => this.changeListeners.delete(listener);
  }

  private emit(tables: string[], source: ChangeSource): void {
    if (tables.length === 0) return;
    for (const l of [...this.changeListeners]) {
      try {
        l(tables, source);
      } catch {
        // a listener's failure is its own
      }
    }
  }

  private broadcast(tables: string[], source: ChangeSource): void {
    if (tables.length === 0) return;
    this.emit(tables, source);
    this.channel?.postMessage({ tables });
  }

  private afterLocalWrite(tables: string[]): void {
    this.broadcast(tables, "local");
    if (tables.length > 0 && this.started) this.scheduleSync();
  }

  // ---- the outbox ----------------------------------------------------------------------------------

  async outboxStats(): Promise<OutboxStats> {
    const c = await store.outboxContents(this.db);
    const pending: Record<string, number> = {};
    let oldest: number | null = null;
    for (const op of c.ops) {
      pending[op.table] = (pending[op.table] ?? 0) + 1;
      if (oldest === null || op.at < oldest) oldest = op.at;
    }
    const rejected: Record<string, number> = {};
    for (const p of c.parked) rejected[p.table] = (rejected[p.table] ?? 0) + 1;
    return {
      pending,
      pendingTotal: c.ops.length,
      sealed: c.ops.filter((op) => op.seq <= c.sealedThrough).length,
      failedBatches: c.batches.filter((b) => b.attempts > 0).length,
      rejected,
      rejectedTotal: c.parked.length,
      oldestPendingAt: oldest,
      oldestPendingAgeMs: oldest === null ? null : Date.now() - oldest,
      lastError: c.lastError,
    };
  }

  /** The rows the server refused, with their code and message. */
  async rejected(table?: string): Promise<ParkedRow[]> {
    return (await store.parkedRows(this.db)).filter((p) => !table || p.table === table);
  }

  /** Puts refused rows back into the outbox (after the app or the server's configuration was fixed). */
  async retryRejected(filter?: (row: ParkedRow) => boolean): Promise<number> {
    const pids = (await this.rejected()).filter((p) => !filter || filter(p)).map((p) => p.pid);
    const n = await store.resolveParked(this.db, pids, "retry");
    if (n > 0 && this.started) this.scheduleSync();
    return n;
  }

  /** Drops refused rows from the outbox. The local copy keeps its value until the server sends the record. */
  async discardRejected(filter?: (row: ParkedRow) => boolean): Promise<number> {
    const pids = (await this.rejected()).filter((p) => !filter || filter(p)).map((p) => p.pid);
    return store.resolveParked(this.db, pids, "discard");
  }

  // ---- syncing -------------------------------------------------------------------------------------

  /**
   * Syncs now, or, when a sync is running (in this tab), makes exactly one more after it; the promise is
   * that sync's summary. Across tabs, syncs of one database take turns.
   */
  sync(): Promise<SyncSummary> {
    if (this.next) return this.next;
    if (this.current) {
      const after = this.current.then(
        () => {},
        () => {},
      );
      this.next = after.then(() => {
        this.next = null;
        return this.sync();
      });
      return this.next;
    }
    const run = withSyncLock(this.db, this.name, () => this.runSync(), this.options.useWebLocks !== false);
    this.current = run;
    const clear = () => {
      if (this.current === run) this.current = null;
    };
    run.then(clear, clear);
    return run;
  }

  /** The network is back: failed batches are due at once, and a sync starts. */
  networkAvailable(): void {
    this.retryNow = true;
    this.background();
  }

  private background(): void {
    this.sync().catch(() => {
      // shown in `progress`
    });
  }

  private scheduleSync(): void {
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => {
      this.debounce = null;
      this.background();
    }, this.options.debounceMs ?? 300);
  }

  /** Starts automatic sync: now, on `online`, on the page becoming visible, after writes, periodically, on events. */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.background();
    const win = globalThis as unknown as {
      addEventListener?: (t: string, f: () => void) => void;
      removeEventListener?: (t: string, f: () => void) => void;
      document?: Document;
    };
    if (typeof win.addEventListener === "function") {
      const online = () => this.networkAvailable();
      win.addEventListener("online", online);
      this.detach.push(() => win.removeEventListener?.("online", online));
    }
    const doc = win.document;
    if (doc && typeof doc.addEventListener === "function") {
      const visible = () => {
        if (doc.visibilityState === "visible") this.background();
      };
      doc.addEventListener("visibilitychange", visible);
      this.detach.push(() => doc.removeEventListener("visibilitychange", visible));
    }
    const interval = this.options.intervalMs ?? 300_000;
    if (interval > 0) this.timer = setInterval(() => this.background(), interval);
    if (this.options.liveEvents !== false) {
      this.events = new AbortController();
      void listen(this.transport, this.events.signal, { onChanges: () => this.background() });
    }
  }

  /** Stops automatic sync (a running sync finishes). */
  stop(): void {
    this.started = false;
    if (this.debounce) clearTimeout(this.debounce);
    if (this.timer) clearInterval(this.timer);
    this.debounce = this.timer = null;
    this.events?.abort();
    this.events = null;
    for (const d of this.detach.splice(0)) d();
  }

  /** Stops, waits for a running sync, and closes the database. */
  async close(): Promise<void> {
    this.stop();
    await Promise.allSettled([this.current, this.next]);
    this.channel?.close();
    this.db.close();
  }

  private setProgress(update: (p: SyncProgress) => void): void {
    const p: SyncProgress = structuredClone(this.progress.value);
    update(p);
    p.percentage = percentage(p);
    this.progress.set(p);
  }

  private async runSync(): Promise<SyncSummary> {
    const started = Date.now();
    const s: Omit<SyncSummary, "text"> = {
      pushed: 0,
      rejected: 0,
      failed: 0,
      fromCloud: {},
      pulled: 0,
      pushRequests: 0,
      pullRequests: 0,
      conflictRounds: 0,
      durationMs: 0,
      pushMs: 0,
      pullMs: 0,
    };
    this.setProgress((p) => {
      p.state = "syncing";
      p.phase = "push";
      p.tables = {};
    });
    try {
      this.transport.outboxPending = await store.pendingCount(this.db);
      if (this.retryNow) {
        this.retryNow = false;
        await store.makeFailedDue(this.db);
      }
      const timed = async <T>(what: "pushMs" | "pullMs", f: () => Promise<T>): Promise<T> => {
        const t0 = Date.now();
        try {
          return await f();
        } finally {
          s[what] += Date.now() - t0;
        }
      };
      for (;;) {
        const flow = await timed("pushMs", () => this.pushPhase(s));
        if (flow !== "conflict") break;
        s.conflictRounds++;
        if (s.conflictRounds > (this.options.maxConflictRounds ?? 3)) {
          throw new SynclineError(409, "conflict", `the push still conflicts after ${s.conflictRounds - 1} pulls`);
        }
        await timed("pullMs", () => this.pullPhase(s));
      }
      await timed("pullMs", () => this.pullPhase(s));
      const summary = { ...s, durationMs: Date.now() - started, text: "" };
      summary.text = summaryText(summary);
      const now = Date.now();
      await store.setMeta(this.db, "lastSyncedAt", now);
      this.setProgress((p) => {
        p.state = "synced";
        p.phase = null;
        p.lastSummary = summary;
        p.lastSyncedAt = now;
        p.lastError = null;
        p.offline = false;
      });
      return summary;
    } catch (e) {
      const summary = { ...s, durationMs: Date.now() - started, text: "" };
      summary.text = summaryText(summary);
      this.setProgress((p) => {
        p.state = "error";
        p.phase = null;
        p.lastSummary = summary;
        p.lastError = e instanceof Error ? e.message : String(e);
        p.offline = e instanceof OfflineError;
      });
      throw e;
    }
  }

  /** Sends sealed batches in outbox order (the oldest first), sealing new ones as the earlier ones settle. */
  private async pushPhase(s: Omit<SyncSummary, "text">): Promise<Flow> {
    this.setProgress((p) => (p.phase = "push"));
    const limit = this.options.pushMode === "individual" ? 1 : Math.max(1, this.options.batchSize ?? 10_000);
    for (;;) {
      let batch: SealedBatch | null = (await store.sealedBatches(this.db))[0] ?? null;
      if (batch) {
        // A failed batch keeps its place: nothing newer goes before it.
        if (batch.nextRetryAt > Date.now()) {
          s.failed += batch.ops;
          return "waiting";
        }
        if (batch.stale) {
          batch = await store.refreshBatch(this.db, batch, newKey());
          if (!batch) continue;
        }
      } else {
        batch = await store.sealNext(this.db, limit, newKey());
        if (!batch) return "done";
        this.setProgress((p) => {
          for (const [t, n] of Object.entries(batch!.perTable)) (p.tables[t] ??= zeroTable()).toPush += n;
        });
      }
      const flow = await this.send(batch, s);
      if (flow === "conflict") return flow;
    }
  }

  private async send(batch: SealedBatch, s: Omit<SyncSummary, "text">): Promise<Flow> {
    s.pushRequests++;
    let answer;
    try {
      answer = await this.transport.post("/v1/sync/push", batch.body, batch.key);
    } catch (e) {
      answer = null;
      if (!(e instanceof OfflineError)) throw e;
    }
    const verdict = answer
      ? classifyPush(answer.status, answer.text, answer.replayed)
      : ({ kind: "retry", reason: "the server could not be reached", offline: true } as const);
    switch (verdict.kind) {
      case "applied":
      case "appliedEarlier": {
        const r = await store.completeBatch(this.db, batch, verdict.kind === "applied" ? verdict.rejected : []);
        this.transport.outboxPending = Math.max(0, this.transport.outboxPending - batch.ops);
        this.setProgress((p) => {
          for (const [t, n] of Object.entries(r.done)) (p.tables[t] ??= zeroTable()).pushed += n;
          for (const [t, n] of Object.entries(r.rejected)) (p.tables[t] ??= zeroTable()).rejected += n;
        });
        for (const n of Object.values(r.done)) s.pushed += n;
        for (const n of Object.values(r.rejected)) s.rejected += n;
        return "continue";
      }
      case "conflict":
        await store.updateBatch(this.db, { ...batch, stale: true });
        return "conflict";
      case "refused": {
        if (batch.groups > 1) {
          await store.splitBatch(this.db, batch);
          return "continue";
        }
        const parked = await store.parkBatch(this.db, batch, verdict.code, verdict.message);
        this.transport.outboxPending = Math.max(0, this.transport.outboxPending - batch.ops);
        this.setProgress((p) => {
          for (const [t, n] of Object.entries(parked)) (p.tables[t] ??= zeroTable()).rejected += n;
        });
        for (const n of Object.values(parked)) s.rejected += n;
        return "continue";
      }
      case "unauthorized":
        throw new SynclineError(401, verdict.code, verdict.message);
      case "retry": {
        const policy = this.options.retry ?? DEFAULT_RETRY;
        const attempts = batch.attempts + 1;
        const nextRetryAt = Date.now() + retryDelay(policy, attempts, Math.random());
        await store.updateBatch(this.db, { ...batch, attempts, nextRetryAt, lastError: verdict.reason }, { lastError: verdict.reason });
        s.failed += batch.ops;
        this.setProgress((p) => {
          for (const [t, n] of Object.entries(batch.perTable)) (p.tables[t] ??= zeroTable()).failed += n;
        });
        if (verdict.offline) throw new OfflineError(verdict.reason);
        throw new SynclineError(0, "push_failed", `${verdict.reason}; the batch will be resent with the same key`);
      }
    }
  }

  /** POSTs a pull, retrying network errors, cut-off bodies and 5xx a few times. */
  private async pullRequest(body: string): Promise<store.PullPage> {
    for (let attempt = 1; ; attempt++) {
      let failure: Error;
      try {
        const a = await this.transport.post("/v1/sync/pull", body);
        if (a.status === 200) {
          try {
            return JSON.parse(a.text) as store.PullPage;
          } catch {
            failure = new OfflineError("the pull's answer was cut off");
          }
        } else {
          const b = (() => {
            try {
              return JSON.parse(a.text);
            } catch {
              return null;
            }
          })();
          const err = new SynclineError(a.status, b?.code ?? `http_${a.status}`, b?.message ?? a.text.slice(0, 200), b);
          if (a.status < 500 && a.status !== 429 && a.status !== 408) throw err;
          failure = err;
        }
      } catch (e) {
        if (!(e instanceof OfflineError)) throw e;
        failure = e;
      }
      if (attempt >= 3) throw failure;
      await new Promise((r) => setTimeout(r, retryDelay({ baseMs: 250, maxMs: 2000 }, attempt, Math.random())));
    }
  }

  /** Pulls page by page; each page is applied with its cursor in one transaction, so a reload resumes. */
  private async pullPhase(s: Omit<SyncSummary, "text">): Promise<void> {
    this.setProgress((p) => (p.phase = "pull"));
    let cursor = await store.getMeta(this.db, "cursor", 0);
    const assumeEmpty = cursor === 0 && (await store.recordCount(this.db)) === 0;
    const limit = Math.max(1, this.options.pullPageSize ?? 5000);
    for (;;) {
      const page = await this.pullRequest(JSON.stringify({ lastPulledAt: cursor > 0 ? cursor : null, limit }));
      s.pullRequests++;
      const applied = await store.applyPage(this.db, page, assumeEmpty);
      for (const [t, n] of Object.entries(applied.changed)) s.fromCloud[t] = (s.fromCloud[t] ?? 0) + n;
      for (const n of Object.values(applied.received)) s.pulled += n;
      this.setProgress((p) => {
        for (const [t, n] of Object.entries(applied.received)) (p.tables[t] ??= zeroTable()).pulled += n;
      });
      this.broadcast(Object.keys(applied.changed), "remote");
      cursor = page.timestamp;
      if (!page.hasMore) return;
    }
  }

  // ---- the bulk RPC --------------------------------------------------------------------------------

  /**
   * `POST /v1/sync/bulk`: upserts then deletes, all or nothing, in one request (retried with the same key
   * and bytes on network errors and 5xx), then applied locally. `individual`: one request per row, for
   * comparison. Throws `BulkRejectedError` (with every bad row) when the server refuses rows.
   */
  async bulk(request: BulkRequest, options: { mode?: "batched" | "individual" } = {}): Promise<BulkResult> {
    const upserts = request.upserts ?? {};
    const deletes = request.deletes ?? {};
    if (options.mode === "individual") {
      const total: BulkResult = { counts: {}, requests: 0, timestamp: 0 };
      const parts: BulkRequest[] = [];
      for (const [t, rows] of Object.entries(upserts)) for (const row of rows) parts.push({ upserts: { [t]: [row] } });
      for (const [t, ids] of Object.entries(deletes)) for (const id of ids) parts.push({ deletes: { [t]: [id] } });
      for (const part of parts) {
        const r = await this.bulk(part);
        total.requests += r.requests;
        total.timestamp = r.timestamp;
        for (const [t, c] of Object.entries(r.counts)) {
          const sum = (total.counts[t] ??= { upserted: 0, unchanged: 0, deleted: 0 });
          sum.upserted += c.upserted;
          sum.unchanged += c.unchanged;
          sum.deleted += c.deleted;
        }
      }
      return total;
    }
    const payload: BulkRequest = {};
    if (Object.keys(upserts).length > 0) payload.upserts = upserts;
    if (Object.keys(deletes).length > 0) payload.deletes = deletes;
    const body = JSON.stringify(payload);
    const key = newKey();
    for (let attempt = 1; ; attempt++) {
      let verdict;
      try {
        const a = await this.transport.post("/v1/sync/bulk", body, key);
        verdict = classifyPush(a.status, a.text, a.replayed);
      } catch (e) {
        if (!(e instanceof OfflineError)) throw e;
        verdict = { kind: "retry", reason: e.message, offline: true } as const;
      }
      switch (verdict.kind) {
        case "applied": {
          await store.applyBulk(this.db, upserts, deletes);
          this.broadcast([...new Set([...Object.keys(upserts), ...Object.keys(deletes)])], "remote");
          const b = verdict.body as { counts?: Record<string, BulkCounts>; timestamp?: number };
          return { counts: b.counts ?? {}, requests: attempt, timestamp: b.timestamp ?? 0 };
        }
        case "refused": {
          const b = verdict.body as { errors?: RowRejection[] } | undefined;
          if (verdict.code === "invalid_rows") throw new BulkRejectedError(verdict.message, b?.errors ?? [], b);
          throw new SynclineError(verdict.status, verdict.code, verdict.message, b);
        }
        case "unauthorized":
          throw new SynclineError(401, verdict.code, verdict.message);
        case "appliedEarlier":
          throw new SynclineError(422, "idempotency_key_reused", "the bulk request was applied before; its answer is lost");
        case "conflict":
          throw new SynclineError(409, "conflict", "unexpected conflict from the bulk RPC");
        case "retry":
          if (attempt >= 4) {
            if (verdict.offline) throw new OfflineError(verdict.reason);
            throw new SynclineError(0, "bulk_failed", verdict.reason);
          }
          await new Promise((r) => setTimeout(r, retryDelay({ baseMs: 250, maxMs: 4000 }, attempt, Math.random())));
      }
    }
  }
}

export { randomId };
