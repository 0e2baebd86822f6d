//! One sync at a time across every tab (and every client object) on one database: the Web Locks API
//! (`navigator.locks`) when the platform has it, otherwise a lease kept in the database's `meta` store,
//! taken and renewed in IndexedDB transactions (which are atomic across tabs) and given up at the end.

import { inTx, req } from "./idb.js";
import { randomId } from "./batch.js";

interface Lease {
  holder: string;
  until: number;
}

const LEASE_MS = 15_000;

/** Runs `fn` while holding the sync lock of database `name`. */
export async function withSyncLock<T>(db: IDBDatabase, name: string, fn: () => Promise<T>, useWebLocks = true): Promise<T> {
  const locks = useWebLocks ? (globalThis.navigator as Navigator | undefined)?.locks : undefined;
  if (locks && typeof locks.request === "function") {
    return locks.request(`syncline-sync:${name}`, { mode: "exclusive" }, fn) as Promise<T>;
  }
  return withLease(db, fn);
}

async function tryLease(db: IDBDatabase, me: string): Promise<boolean> {
  return inTx(db, ["meta"], "readwrite", async (tx) => {
    const store = tx.objectStore("meta");
    const lease = (await req(store.get("lease"))) as Lease | undefined;
    const now = Date.now();
    if (lease && lease.holder !== me && lease.until > now) return false;
    store.put({ holder: me, until: now + LEASE_MS } satisfies Lease, "lease");
    return true;
  });
}

async function withLease<T>(db: IDBDatabase, fn: () => Promise<T>): Promise<T> {
  const me = randomId(12);
  while (!(await tryLease(db, me))) await new Promise((r) => setTimeout(r, 50 + Math.random() * 50));
  const renew = setInterval(() => void tryLease(db, me).catch(() => {}), LEASE_MS / 3);
  try {
    return await fn();
  } finally {
    clearInterval(renew);
    await inTx(db, ["meta"], "readwrite", async (tx) => {
      const store = tx.objectStore("meta");
      const lease = (await req(store.get("lease"))) as Lease | undefined;
      if (lease?.holder === me) store.delete("lease");
    }).catch(() => {});
  }
}
