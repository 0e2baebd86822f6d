//! The local store and the durable outbox over IndexedDB: writes with their outbox operations in one
//! transaction, sealing the next batch (key and exact body saved before it is sent), settling a batch from
//! the server's verdict, parking refused rows, and applying pulled pages with their cursor. Mirrors the
//! Rust SDK's `store.rs`; the decisions are the pure modules'.
//!
//! Invariant: operations are sealed in `seq` order, so every operation at or below the `sealedThrough` mark
//! belongs to a sealed batch (a contiguous `seq` range) and is never folded into again; an open operation
//! (above the mark) is the only one a new write may coalesce with. The operations of one local transaction
//! are contiguous: a write that folds into an open operation of an older transaction moves that
//! transaction's open operations to its own, so a batch boundary never falls inside either.

import { changedColumns, coalesce, sameRecord, type Change, type Columns, type OpKind, type Row } from "./coalesce.js";
import { inTx, req, type StoreName } from "./idb.js";
import { mergePulled, onPulledDelete, survivesReplacement } from "./merge.js";
import { planBatch, randomId, renderPushBody, type PlannedOp, type RowRejection } from "./batch.js";

/** An operation in the outbox. */
export interface StoredOp extends PlannedOp {
  /** When the oldest write folded into it was made (ms since the epoch). */
  at: number;
}

/** A sealed request: its key and exact body, kept until the server answers it. */
export interface SealedBatch {
  id: number;
  key: string;
  body: string;
  lo: number;
  hi: number;
  ops: number;
  groups: number;
  perTable: Record<string, number>;
  attempts: number;
  nextRetryAt: number;
  lastError: string | null;
  /** Refused with 409 (or split): rebuild the body with the current cursor and a new key before sending. */
  stale: boolean;
}

/** A row the server refused, parked with its code and message. */
export interface ParkedRow {
  pid: number;
  table: string;
  id: string;
  kind: OpKind;
  columns: Columns;
  code: string;
  message: string;
  at: number;
  parkedAt: number;
}

interface RecordEntry {
  table: string;
  id: string;
  row: Row;
}

const WRITE_STORES: StoreName[] = ["records", "ops", "meta"];

async function meta<T>(tx: IDBTransaction, key: string, fallback: T): Promise<T> {
  const v = await req(tx.objectStore("meta").get(key));
  return v === undefined ? fallback : (v as T);
}

function columnsOf(row: Columns): Columns {
  const out: Columns = {};
  for (const [k, v] of Object.entries(row)) if (k !== "id") out[k] = v;
  return out;
}

/** The writes a local transaction can make; every call runs inside the one IndexedDB transaction. */
export class WriteTx {
  readonly changedTables = new Set<string>();
  /** The group of this transaction's operations; `undefined` when each write stands alone. */
  readonly group: string | undefined;
  /** Records whose open operation moved to this transaction's group (prefetched reads of them are stale). */
  private readonly moved = new Set<string>();
  constructor(
    readonly tx: IDBTransaction,
    private sealedThrough: number,
    private readonly now: number,
    groupPerWrite: boolean,
  ) {
    this.group = groupPerWrite ? undefined : randomId(12);
  }

  async get(table: string, id: string): Promise<Row | undefined> {
    const e = (await req(this.tx.objectStore("records").get([table, id]))) as RecordEntry | undefined;
    return e?.row;
  }

  /** Creates the record, or updates the columns that differ when it exists. Returns its id. */
  async put(table: string, row: Partial<Row> & Columns): Promise<string> {
    const id = typeof row.id === "string" && row.id !== "" ? row.id : randomId(16);
    const current = await this.get(table, id);
    const columns = columnsOf(row);
    if (current) await this.apply(table, id, current, { kind: "update", columns: changedColumns(current, columns) });
    else await this.apply(table, id, undefined, { kind: "create", columns });
    return id;
  }

  /** Sets the given columns of an existing record; only the ones that change travel. */
  async update(table: string, id: string, patch: Columns): Promise<void> {
    const current = await this.get(table, id);
    if (!current) throw new Error(`no record ${table}/${id} to update`);
    await this.apply(table, id, current, { kind: "update", columns: changedColumns(current, patch) });
  }

  async delete(table: string, id: string): Promise<void> {
    const current = await this.get(table, id);
    if (!current) return;
    await this.apply(table, id, current, { kind: "delete", columns: {} });
  }

  /**
   * Writes many records of one table: their reads are issued together (one round of IndexedDB requests
   * instead of two per record), then each is written as `put` would. Repeated ids go one by one.
   */
  async putMany(table: string, rows: readonly (Partial<Row> & Columns)[]): Promise<string[]> {
    const ids = rows.map((row) => (typeof row.id === "string" && row.id !== "" ? row.id : randomId(16)));
    if (new Set(ids).size !== ids.length) {
      const out: string[] = [];
      for (const [i, row] of rows.entries()) out.push(await this.put(table, { ...row, id: ids[i]! }));
      return out;
    }
    const records = this.tx.objectStore("records");
    const byRecord = this.tx.objectStore("ops").index("record");
    const [currents, waitings] = await Promise.all([
      readMany(records, table, ids, (e: RecordEntry) => e.id),
      readMany(byRecord, table, ids, (op: StoredOp) => op.id),
    ]);
    for (const [i, row] of rows.entries()) {
      const current = currents[i]![0]?.row;
      const columns = columnsOf(row);
      const change: Change = current ? { kind: "update", columns: changedColumns(current, columns) } : { kind: "create", columns };
      const waiting = this.moved.has(`${table}\u0000${ids[i]}`)
        ? ((await req(byRecord.getAll([table, ids[i]!]))) as StoredOp[])
        : waitings[i]!;
      await this.applyWith(table, ids[i]!, current, waiting, change);
    }
    return ids;
  }

  private async apply(table: string, id: string, current: Row | undefined, change: Change): Promise<void> {
    if (change.kind === "update" && Object.keys(change.columns).length === 0) return;
    const waiting = (await req(this.tx.objectStore("ops").index("record").getAll([table, id]))) as StoredOp[];
    await this.applyWith(table, id, current, waiting, change);
  }

  private async applyWith(table: string, id: string, current: Row | undefined, waiting: StoredOp[], change: Change): Promise<void> {
    if (change.kind === "update" && Object.keys(change.columns).length === 0) return;
    const ops = this.tx.objectStore("ops");
    const records = this.tx.objectStore("records");
    const open = waiting.filter((op) => op.seq > this.sealedThrough).pop();
    const merged = coalesce(open ? { kind: open.kind, columns: open.columns } : null, change);
    // Only the operations of a transaction of several writes carry a group (an index entry costs).
    let group = this.group;
    if (open) {
      ops.delete(open.seq);
      if (open.group !== undefined && open.group !== this.group) {
        // Folding into an older transaction: its other open operations move next to this write, in one
        // group, so that neither transaction is split by a batch boundary.
        group ??= open.group;
        const members = (await req(ops.index("group").getAll(open.group))) as StoredOp[];
        for (const m of members.sort((a, b) => a.seq - b.seq)) {
          if (m.seq <= this.sealedThrough || m.seq === open.seq) continue;
          ops.delete(m.seq);
          this.moved.add(`${m.table}\u0000${m.id}`);
          const { seq: _drop, ...rest } = m;
          void _drop;
          ops.add({ ...rest, group });
        }
      }
    }
    if (merged) {
      const op: Omit<StoredOp, "seq"> = { table, id, kind: merged.kind, columns: merged.columns, at: open?.at ?? this.now };
      if (group !== undefined) op.group = group;
      ops.add(op);
    }
    if (change.kind === "delete") records.delete([table, id]);
    else records.put({ table, id, row: { ...(current ?? {}), ...change.columns, id } satisfies Row } as RecordEntry);
    this.changedTables.add(table);
  }
}

/**
 * The entries of `source` (a store or index keyed by [table, id]) for each of `ids`, in their order. When
 * the ids' key range holds few other entries (an import of new records), one range read replaces a read
 * per id.
 */
async function readMany<T>(
  source: IDBObjectStore | IDBIndex,
  table: string,
  ids: readonly string[],
  idOf: (entry: T) => string,
): Promise<T[][]> {
  if (ids.length === 0) return [];
  const sorted = [...ids].sort();
  const range = IDBKeyRange.bound([table, sorted[0]!], [table, sorted[sorted.length - 1]!]);
  if ((await req(source.count(range))) <= ids.length * 2) {
    const byId = new Map<string, T[]>();
    for (const e of (await req(source.getAll(range))) as T[]) {
      const list = byId.get(idOf(e));
      if (list) list.push(e);
      else byId.set(idOf(e), [e]);
    }
    return ids.map((id) => byId.get(id) ?? []);
  }
  return Promise.all(ids.map(async (id) => ((await req(source.getAll([table, id]))) as T[])));
}

/** Runs `body` as one local transaction: its writes and their outbox operations commit together. */
export async function write<T>(
  db: IDBDatabase,
  body: (tx: WriteTx) => Promise<T>,
  groupPerWrite = false,
): Promise<{ result: T; tables: string[] }> {
  return inTx(db, WRITE_STORES, "readwrite", async (tx) => {
    const sealed = await meta(tx, "sealedThrough", 0);
    const w = new WriteTx(tx, sealed, Date.now(), groupPerWrite);
    const result = await body(w);
    return { result, tables: [...w.changedTables] };
  });
}

export async function getRecord(db: IDBDatabase, table: string, id: string): Promise<Row | undefined> {
  return inTx(db, ["records"], "readonly", async (tx) => {
    const e = (await req(tx.objectStore("records").get([table, id]))) as RecordEntry | undefined;
    return e?.row;
  });
}

export async function allRecords(db: IDBDatabase, table: string): Promise<Row[]> {
  return inTx(db, ["records"], "readonly", async (tx) => {
    const range = IDBKeyRange.bound([table, ""], [table, "\uffff"]);
    const entries = (await req(tx.objectStore("records").getAll(range))) as RecordEntry[];
    return entries.map((e) => e.row);
  });
}

export async function getMeta<T>(db: IDBDatabase, key: string, fallback: T): Promise<T> {
  return inTx(db, ["meta"], "readonly", (tx) => meta(tx, key, fallback));
}

export async function setMeta(db: IDBDatabase, key: string, value: unknown): Promise<void> {
  await inTx(db, ["meta"], "readwrite", (tx) => {
    tx.objectStore("meta").put(value, key);
  });
}

/** The device id, made once and kept in the database. */
export async function deviceId(db: IDBDatabase): Promise<string> {
  return inTx(db, ["meta"], "readwrite", async (tx) => {
    const existing = await meta<string | null>(tx, "device", null);
    if (existing) return existing;
    const id = `web-${randomId(12)}`;
    tx.objectStore("meta").put(id, "device");
    return id;
  });
}

export async function pendingCount(db: IDBDatabase): Promise<number> {
  return inTx(db, ["ops"], "readonly", (tx) => req(tx.objectStore("ops").count()));
}

/** Sealed batches in outbox order. */
export async function sealedBatches(db: IDBDatabase): Promise<SealedBatch[]> {
  return inTx(db, ["batches"], "readonly", async (tx) => {
    const all = (await req(tx.objectStore("batches").getAll())) as SealedBatch[];
    return all.sort((a, b) => a.lo - b.lo);
  });
}

function perTable(ops: readonly PlannedOp[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const op of ops) out[op.table] = (out[op.table] ?? 0) + 1;
  return out;
}

function groupCount(ops: readonly PlannedOp[]): number {
  return new Set(ops.map((o) => o.group ?? `#${o.seq}`)).size;
}

/**
 * Seals the next batch of open operations (at most `limit`, groups whole) with `key`: saves its exact
 * body and moves the sealed-through mark, in one transaction. `null` when nothing is open.
 */
export async function sealNext(db: IDBDatabase, limit: number, key: string): Promise<SealedBatch | null> {
  return inTx(db, ["ops", "batches", "meta"], "readwrite", async (tx) => {
    const sealedThrough = await meta(tx, "sealedThrough", 0);
    const cursor = await meta(tx, "cursor", 0);
    const ops = tx.objectStore("ops");
    const read = (await req(ops.getAll(IDBKeyRange.lowerBound(sealedThrough, true), limit + 1))) as StoredOp[];
    if (read.length === 0) return null;
    const plan = planBatch(read, limit, read.length <= limit);
    let chosen: StoredOp[];
    if (plan.complete) chosen = read.slice(0, plan.take);
    else {
      // Only a group of several writes can be incomplete here.
      const members = (await req(ops.index("group").getAll(read[0]!.group!))) as StoredOp[];
      chosen = members.filter((m) => m.seq > sealedThrough).sort((a, b) => a.seq - b.seq);
    }
    const batch: Omit<SealedBatch, "id"> = {
      key,
      body: renderPushBody(cursor, chosen),
      lo: chosen[0]!.seq,
      hi: chosen[chosen.length - 1]!.seq,
      ops: chosen.length,
      groups: groupCount(chosen),
      perTable: perTable(chosen),
      attempts: 0,
      nextRetryAt: 0,
      lastError: null,
      stale: false,
    };
    const id = (await req(tx.objectStore("batches").add(batch))) as number;
    tx.objectStore("meta").put(batch.hi, "sealedThrough");
    return { ...batch, id };
  });
}

/**
 * A stale batch (refused with 409, or split) gets a new body with the current cursor and a new key; it
 * was never applied. `null` when its operations are all gone (the batch is dropped).
 */
export async function refreshBatch(db: IDBDatabase, batch: SealedBatch, key: string): Promise<SealedBatch | null> {
  return inTx(db, ["ops", "batches", "meta"], "readwrite", async (tx) => {
    const cursor = await meta(tx, "cursor", 0);
    const ops = (await req(tx.objectStore("ops").getAll(IDBKeyRange.bound(batch.lo, batch.hi)))) as StoredOp[];
    if (ops.length === 0) {
      tx.objectStore("batches").delete(batch.id);
      return null;
    }
    const fresh: SealedBatch = {
      ...batch,
      key,
      body: renderPushBody(cursor, ops),
      ops: ops.length,
      groups: groupCount(ops),
      perTable: perTable(ops),
      stale: false,
    };
    tx.objectStore("batches").put(fresh);
    return fresh;
  });
}

/** The batch was applied: its operations leave the outbox; the rows the server refused are parked. */
export async function completeBatch(
  db: IDBDatabase,
  batch: SealedBatch,
  rejected: readonly RowRejection[],
): Promise<{ done: Record<string, number>; rejected: Record<string, number> }> {
  return inTx(db, ["ops", "batches", "parked", "meta"], "readwrite", async (tx) => {
    const ops = tx.objectStore("ops");
    const parked = tx.objectStore("parked");
    const done = { ...batch.perTable };
    const refused: Record<string, number> = {};
    const now = Date.now();
    for (const r of rejected) {
      if (r.id === null) continue;
      const mine = ((await req(ops.index("record").getAll([r.table, r.id]))) as StoredOp[]).filter(
        (op) => op.seq >= batch.lo && op.seq <= batch.hi,
      );
      for (const op of mine) {
        parked.add({ table: op.table, id: op.id, kind: op.kind, columns: op.columns, code: r.code, message: r.message, at: op.at, parkedAt: now });
        done[op.table] = (done[op.table] ?? 1) - 1;
        refused[op.table] = (refused[op.table] ?? 0) + 1;
      }
    }
    ops.delete(IDBKeyRange.bound(batch.lo, batch.hi));
    tx.objectStore("batches").delete(batch.id);
    if (rejected.length > 0) {
      const last = rejected[rejected.length - 1]!;
      tx.objectStore("meta").put(`${last.table}/${last.id}: ${last.code}: ${last.message}`, "lastError");
    }
    return { done, rejected: refused };
  });
}

/** The request as a whole was refused and would be again: its operations are parked with the reason. */
export async function parkBatch(db: IDBDatabase, batch: SealedBatch, code: string, message: string): Promise<Record<string, number>> {
  return inTx(db, ["ops", "batches", "parked", "meta"], "readwrite", async (tx) => {
    const ops = (await req(tx.objectStore("ops").getAll(IDBKeyRange.bound(batch.lo, batch.hi)))) as StoredOp[];
    const now = Date.now();
    for (const op of ops) {
      tx.objectStore("parked").add({ table: op.table, id: op.id, kind: op.kind, columns: op.columns, code, message, at: op.at, parkedAt: now });
    }
    tx.objectStore("ops").delete(IDBKeyRange.bound(batch.lo, batch.hi));
    tx.objectStore("batches").delete(batch.id);
    tx.objectStore("meta").put(`${code}: ${message}`, "lastError");
    return perTable(ops);
  });
}

/** Splits a refused batch of several groups into two stale halves, each of whole groups. */
export async function splitBatch(db: IDBDatabase, batch: SealedBatch): Promise<void> {
  await inTx(db, ["ops", "batches"], "readwrite", async (tx) => {
    const ops = (await req(tx.objectStore("ops").getAll(IDBKeyRange.bound(batch.lo, batch.hi)))) as StoredOp[];
    const half = planBatch(ops, Math.max(1, Math.floor(ops.length / 2)), true).take;
    const store = tx.objectStore("batches");
    store.delete(batch.id);
    for (const part of [ops.slice(0, half), ops.slice(half)]) {
      if (part.length === 0) continue;
      const { id: _id, ...rest } = batch;
      void _id;
      store.add({ ...rest, lo: part[0]!.seq, hi: part[part.length - 1]!.seq, ops: part.length, stale: true, attempts: 0, nextRetryAt: 0 });
    }
  });
}

export async function updateBatch(db: IDBDatabase, batch: SealedBatch, meta?: Record<string, unknown>): Promise<void> {
  await inTx(db, ["batches", "meta"], "readwrite", (tx) => {
    tx.objectStore("batches").put(batch);
    for (const [k, v] of Object.entries(meta ?? {})) tx.objectStore("meta").put(v, k);
  });
}

export async function makeFailedDue(db: IDBDatabase): Promise<void> {
  await inTx(db, ["batches"], "readwrite", async (tx) => {
    const store = tx.objectStore("batches");
    for (const b of (await req(store.getAll())) as SealedBatch[]) if (b.nextRetryAt > 0) store.put({ ...b, nextRetryAt: 0 });
  });
}

/** What a pulled page did locally. */
export interface AppliedPage {
  /** Records whose local copy changed, per table. */
  changed: Record<string, number>;
  /** Changes in the page, per table. */
  received: Record<string, number>;
}

export interface PullPage {
  changes: Record<string, { created?: Row[]; updated?: Row[]; deleted?: string[] }>;
  timestamp: number;
  hasMore?: boolean;
  experimentalStrategy?: string;
}

/**
 * Applies one pulled page and saves its cursor, in one transaction. Pulled records merge with the waiting
 * operations (local columns win); a pulled delete keeps a record whose create still waits; a replacement
 * page deletes every other local record except those. `assumeEmpty`: the store held nothing when this
 * first pull began and no local write is waiting, so nothing needs reading back.
 */
export async function applyPage(
  db: IDBDatabase,
  page: PullPage,
  assumeEmpty: boolean,
  options: { partialRows?: boolean; saveCursor?: boolean } = {},
): Promise<AppliedPage> {
  return inTx(db, ["records", "ops", "meta"], "readwrite", async (tx) => {
    const records = tx.objectStore("records");
    const ops = tx.objectStore("ops");
    const sealedThrough = await meta(tx, "sealedThrough", 0);
    const waitingOps = (await req(ops.count())) > 0;
    const fast = assumeEmpty && !waitingOps;
    const changed: Record<string, number> = {};
    const received: Record<string, number> = {};
    const bump = (m: Record<string, number>, t: string) => (m[t] = (m[t] ?? 0) + 1);
    const waitingFor = async (table: string, id: string): Promise<StoredOp[]> =>
      waitingOps ? ((await req(ops.index("record").getAll([table, id]))) as StoredOp[]) : [];
    const replacement = page.experimentalStrategy === "replacement";
    const sent = new Set<string>();
    for (const [table, tc] of Object.entries(page.changes ?? {})) {
      const rows = [...(tc.created ?? []), ...(tc.updated ?? [])];
      const deleted = tc.deleted ?? [];
      // An id appears at most once per table in a page: every read is issued at once, then applied.
      const [currents, waitings, delWaitings, delKeys] = fast
        ? [[], [], [], []]
        : await Promise.all([
            Promise.all(rows.map((row) => req(records.get([table, row.id])) as Promise<RecordEntry | undefined>)),
            Promise.all(rows.map((row) => waitingFor(table, row.id))),
            Promise.all(deleted.map((id) => waitingFor(table, id))),
            Promise.all(deleted.map((id) => req(records.getKey([table, id])))),
          ]);
      for (const [i, row] of rows.entries()) {
        bump(received, table);
        if (replacement) sent.add(`${table}\u0000${row.id}`);
        if (fast) {
          records.put({ table, id: row.id, row });
          bump(changed, table);
          continue;
        }
        const current = currents[i];
        const base = options.partialRows ? { ...columnsOf(current?.row ?? { id: row.id }), ...columnsOf(row) } : columnsOf(row);
        const merged = mergePulled(base, waitings[i]!);
        if (merged === null) continue;
        if (current && sameRecord(columnsOf(current.row), merged)) continue;
        records.put({ table, id: row.id, row: { ...merged, id: row.id } as Row });
        bump(changed, table);
      }
      for (const [i, id] of deleted.entries()) {
        bump(received, table);
        const waiting = fast ? [] : delWaitings[i]!;
        const verdict = onPulledDelete(waiting);
        if (verdict.action === "keep") continue;
        if (verdict.dropWaiting) for (const op of waiting) if (op.seq > sealedThrough) ops.delete(op.seq);
        if (fast || delKeys[i] !== undefined) {
          records.delete([table, id]);
          bump(changed, table);
        }
      }
    }
    if (replacement) {
      const keys = (await req(records.getAllKeys())) as [string, string][];
      for (const [table, id] of keys) {
        if (sent.has(`${table}\u0000${id}`)) continue;
        const waiting = await waitingFor(table, id);
        if (survivesReplacement(waiting)) continue;
        for (const op of waiting) if (op.seq > sealedThrough) ops.delete(op.seq);
        records.delete([table, id]);
        bump(changed, table);
      }
    }
    if (options.saveCursor !== false) tx.objectStore("meta").put(page.timestamp, "cursor");
    return { changed, received };
  });
}

/** Applies the rows of a successful bulk request locally, merged with waiting local operations. */
export async function applyBulk(
  db: IDBDatabase,
  upserts: Record<string, Row[]>,
  deletes: Record<string, string[]>,
): Promise<void> {
  const changes: PullPage["changes"] = {};
  for (const [t, rows] of Object.entries(upserts)) changes[t] = { updated: rows };
  for (const [t, ids] of Object.entries(deletes)) (changes[t] ??= {}).deleted = ids;
  // The page logic, without moving the cursor: a bulk answer's timestamp is not a pull position.
  await applyPage(db, { changes, timestamp: 0 }, false, { partialRows: true, saveCursor: false });
}

/** How many records the local store holds. */
export async function recordCount(db: IDBDatabase): Promise<number> {
  return inTx(db, ["records"], "readonly", (tx) => req(tx.objectStore("records").count()));
}

/** Pending operations, sealed batches and parked rows, for introspection. */
export async function outboxContents(db: IDBDatabase): Promise<{ ops: StoredOp[]; batches: SealedBatch[]; parked: ParkedRow[]; lastError: string | null; sealedThrough: number }> {
  return inTx(db, ["ops", "batches", "parked", "meta"], "readonly", async (tx) => ({
    ops: (await req(tx.objectStore("ops").getAll())) as StoredOp[],
    batches: (await req(tx.objectStore("batches").getAll())) as SealedBatch[],
    parked: (await req(tx.objectStore("parked").getAll())) as ParkedRow[],
    lastError: await meta<string | null>(tx, "lastError", null),
    sealedThrough: await meta(tx, "sealedThrough", 0),
  }));
}

/** Parked rows (optionally of one table). */
export async function parkedRows(db: IDBDatabase): Promise<ParkedRow[]> {
  return inTx(db, ["parked"], "readonly", async (tx) => (await req(tx.objectStore("parked").getAll())) as ParkedRow[]);
}

/**
 * Puts parked rows back into the outbox (`retry`) or drops them (`discard`). A retried row goes before any
 * newer waiting write of the same record, which folds over it.
 */
export async function resolveParked(db: IDBDatabase, pids: readonly number[], action: "retry" | "discard"): Promise<number> {
  return inTx(db, ["parked", "ops", "meta"], "readwrite", async (tx) => {
    const parked = tx.objectStore("parked");
    const ops = tx.objectStore("ops");
    const sealedThrough = await meta(tx, "sealedThrough", 0);
    let n = 0;
    for (const pid of pids) {
      const row = (await req(parked.get(pid))) as ParkedRow | undefined;
      if (!row) continue;
      parked.delete(pid);
      n++;
      if (action === "discard") continue;
      const open = ((await req(ops.index("record").getAll([row.table, row.id]))) as StoredOp[])
        .filter((op) => op.seq > sealedThrough)
        .pop();
      if (!open) {
        ops.add({ table: row.table, id: row.id, kind: row.kind, columns: row.columns, at: row.at });
        continue;
      }
      // The newer open write folds over the retried one, in its place (its transaction stays whole).
      const change = coalesce({ kind: row.kind, columns: row.columns }, { kind: open.kind, columns: open.columns });
      if (change) ops.put({ ...open, kind: change.kind, columns: change.columns, at: Math.min(open.at, row.at) });
      else ops.delete(open.seq);
    }
    return n;
  });
}
