//! The IndexedDB schema of one client database and small promise helpers over the raw API. Every store
//! the SDK keeps lives in one database, so a local write and its outbox operation share one transaction.
//!
//! Stores: `records` (key [table, id]: the local copy), `ops` (auto-increment `seq`: the outbox, one open
//! operation per record at most), `batches` (sealed requests: key, exact body, retry state), `parked`
//! (rows the server refused, with code and message) and `meta` (cursor, device id, sealed-through mark,
//! last error, the lease of the fallback cross-tab lock).

export const STORES = ["records", "ops", "batches", "parked", "meta"] as const;
export type StoreName = (typeof STORES)[number];

/** Resolves with a request's result (or rejects with its error). */
export function req<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

/** Resolves when the transaction commits; rejects when it aborts. */
export function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
    tx.onerror = (event) => {
      // Let the abort report it; keep the default (abort) behaviour.
      void event;
    };
  });
}

/** Opens (and on first use creates) the client database `name` with `factory`. */
export function openDatabase(factory: IDBFactory, name: string): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const request = factory.open(name, 1);
    request.onupgradeneeded = () => {
      const db = request.result;
      // No secondary index on records: a table's records are the key range [table, ...].
      db.createObjectStore("records", { keyPath: ["table", "id"] });
      const ops = db.createObjectStore("ops", { keyPath: "seq", autoIncrement: true });
      ops.createIndex("record", ["table", "id"]);
      ops.createIndex("group", "group");
      db.createObjectStore("batches", { keyPath: "id", autoIncrement: true });
      const parked = db.createObjectStore("parked", { keyPath: "pid", autoIncrement: true });
      parked.createIndex("record", ["table", "id"]);
      db.createObjectStore("meta");
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
    request.onblocked = () => reject(new Error(`IndexedDB database ${name} is blocked by another connection`));
  });
}

/** Runs `body` in one transaction over `stores` and resolves with its result once the transaction commits. */
export async function inTx<T>(
  db: IDBDatabase,
  stores: readonly StoreName[],
  mode: IDBTransactionMode,
  body: (tx: IDBTransaction) => Promise<T> | T,
): Promise<T> {
  const tx = db.transaction(stores as StoreName[], mode);
  const committed = done(tx);
  let result: T;
  try {
    result = await body(tx);
  } catch (e) {
    try {
      tx.abort();
    } catch {
      // already finished
    }
    await committed.catch(() => {});
    throw e;
  }
  await committed;
  return result;
}
