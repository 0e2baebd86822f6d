// The SDK in Node against a real `syncline serve` process: IndexedDB is fake-indexeddb (a complete
// implementation of the IndexedDB API; each device gets its own factory), HTTP is real on 127.0.0.1.
// A recording `fetch` wraps the real one to count requests, read their keys and bodies, lose answers and
// go offline on purpose.

import "fake-indexeddb/auto";
import { IDBFactory } from "fake-indexeddb";
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { SynclineClient, BulkRejectedError, OfflineError } from "../dist/index.js";
import { serverRecords, startServer, until } from "./server.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

/** A fetch that records every request and can be told to fail. */
function recorder() {
  const calls = [];
  const faults = { offline: false, loseAnswers: 0, failPullsAfter: Infinity };
  let pulls = 0;
  const fn = async (url, init = {}) => {
    const path = new URL(url).pathname;
    const headers = init.headers ?? {};
    const call = { path, key: headers["Idempotency-Key"], body: init.body, headers, status: 0, replayed: false };
    calls.push(call);
    if (faults.offline) throw new TypeError("fetch failed (offline on purpose)");
    if (path === "/v1/sync/pull" && ++pulls > faults.failPullsAfter) throw new TypeError("fetch failed (pull cut on purpose)");
    const response = await fetch(url, init);
    call.status = response.status;
    call.replayed = response.headers.get("Idempotent-Replayed") === "true";
    if (path === "/v1/sync/push" && faults.loseAnswers > 0) {
      faults.loseAnswers--;
      await response.text();
      throw new TypeError("the answer was lost on purpose");
    }
    return response;
  };
  return { fetch: fn, calls, faults, pushes: () => calls.filter((c) => c.path === "/v1/sync/push") };
}

let users = 0;
/** A new user with `n` devices (each its own IndexedDB) or named clients sharing one factory. */
function user() {
  const name = `u${++users}`;
  return { name, token: server.token(name) };
}

async function device(u, options = {}) {
  const rec = recorder();
  const client = await SynclineClient.open({
    url: server.url,
    token: u.token,
    indexedDB: options.indexedDB ?? new IDBFactory(),
    database: options.database ?? "app",
    fetch: rec.fetch,
    liveEvents: false,
    intervalMs: 0,
    retry: { baseMs: 60_000, maxMs: 60_000 },
    ...options,
  });
  return { client, rec };
}

describe("local writes and the outbox", () => {
  it("commits a write with its outbox operation, or neither; coalesces per record", async () => {
    const u = user();
    const { client } = await device(u);
    const tasks = client.table("tasks");
    const id = await tasks.put({ title: "a", done: false });
    await tasks.update(id, { title: "b" });
    await tasks.update(id, { title: "b" }); // the same value again adds nothing
    await tasks.update(id, { done: true });
    let stats = await client.outboxStats();
    assert.deepEqual(stats.pending, { tasks: 1 }, "create + updates fold into one create");
    assert.ok(stats.oldestPendingAgeMs >= 0 && stats.oldestPendingAt <= Date.now());
    await assert.rejects(
      client.transaction(async (tx) => {
        await tx.table("tasks").put({ id: "will-vanish", title: "x" });
        throw new Error("the app changed its mind");
      }),
      /changed its mind/,
    );
    assert.equal(await tasks.get("will-vanish"), undefined, "the aborted write left no record");
    stats = await client.outboxStats();
    assert.equal(stats.pendingTotal, 1, "and no outbox operation");
    const other = await tasks.put({ title: "gone soon" });
    await tasks.delete(other);
    assert.equal((await client.outboxStats()).pendingTotal, 1, "create + delete cancel out");
    const s = await client.sync();
    assert.equal(s.pushed, 1);
    const { records } = await serverRecords(server.url, u.token);
    assert.deepEqual(records.tasks[id], { id, done: true, n: null, title: "b" });
    assert.equal((await client.outboxStats()).pendingTotal, 0);
    await client.close();
  });

  it("putMany writes a list with the same folding as put, also over earlier transactions", async () => {
    const u = user();
    const { client, rec } = await device(u, { batchSize: 2 });
    await client.transaction(async (tx) => {
      await tx.table("tasks").put({ id: "m1", title: "a" });
      await tx.table("tasks").put({ id: "m2", title: "a" });
    });
    // m1 folds into the first transaction's operation: that transaction's m2 joins this one.
    await client.table("tasks").putMany([{ id: "m1", title: "b" }, { id: "m3", title: "c" }, { id: "m2", title: "d" }]);
    await client.table("tasks").putMany([{ id: "m4", title: "x" }, { id: "m4", title: "y" }]);
    const stats = await client.outboxStats();
    assert.deepEqual(stats.pending, { tasks: 4 }, "one operation per record");
    await client.sync();
    const idsOf = (c) => JSON.parse(c.body).changes.tasks.created.map((r) => r.id);
    const withM1 = rec.pushes().map(idsOf).find((ids) => ids.includes("m1"));
    assert.ok(withM1.includes("m2"), `the first transaction's writes travel together: ${withM1}`);
    const { records } = await serverRecords(server.url, u.token);
    assert.deepEqual(
      Object.values(records.tasks).map((r) => `${r.id}=${r.title}`).sort(),
      ["m1=b", "m2=d", "m3=c", "m4=y"],
    );
    await client.close();
  });

  it("pushes batches of at most batchSize, never splitting a transaction", async () => {
    const u = user();
    const { client, rec } = await device(u, { batchSize: 3 });
    await client.transaction(async (tx) => {
      await tx.table("games").put({ id: "g1", opponent: "Riverside" });
      for (let i = 0; i < 3; i++) await tx.table("game_events").put({ id: `e${i}`, game_id: "g1", event_type: "goal" });
    });
    for (let i = 0; i < 5; i++) await client.table("tasks").put({ id: `t${i}`, title: `t${i}` });
    await client.sync();
    const sizes = rec.pushes().map((c) => {
      const ch = JSON.parse(c.body).changes;
      return Object.values(ch).reduce((n, t) => n + t.created.length + t.updated.length + t.deleted.length, 0);
    });
    assert.deepEqual(sizes, [4, 3, 2], "the 4-write transaction goes alone, then batches of 3");
    const first = JSON.parse(rec.pushes()[0].body).changes;
    assert.equal(first.games.created.length + first.game_events.created.length, 4);
    assert.equal(new Set(rec.pushes().map((c) => c.key)).size, 3, "one key per batch");
    const { records } = await serverRecords(server.url, u.token);
    assert.equal(Object.keys(records.tasks).length, 5);
    assert.equal(Object.keys(records.game_events).length, 3);
    await client.close();
  });
});

describe("failures", () => {
  it("offline edits wait with their sealed key and go out when the network is back", async () => {
    const u = user();
    const { client, rec } = await device(u);
    rec.faults.offline = true;
    for (let i = 0; i < 4; i++) await client.table("tasks").put({ id: `off${i}`, title: "offline" });
    await assert.rejects(client.sync(), OfflineError);
    assert.equal(client.progress.value.state, "error");
    assert.equal(client.progress.value.offline, true);
    const stats = await client.outboxStats();
    assert.equal(stats.failedBatches, 1);
    assert.equal(stats.sealed, 4);
    assert.match(stats.lastError, /could not be reached/);
    // Another write while offline waits in a new operation behind the sealed batch.
    await client.table("tasks").update("off0", { title: "edited offline" });
    // The failed batch is not due yet: nothing newer goes before it (the pull then fails offline).
    await assert.rejects(client.sync(), OfflineError);
    assert.equal(rec.pushes().length, 1);
    rec.faults.offline = false;
    const waiting = await client.sync();
    assert.equal(waiting.pushed, 0, "still backing off");
    client.networkAvailable();
    await until("synced", async () => client.progress.value.state === "synced" && (await client.outboxStats()).pendingTotal === 0);
    const pushes = rec.pushes().filter((c) => c.status === 200);
    assert.equal(pushes[0].key, rec.pushes()[0].key, "the sealed batch went out with its first key");
    assert.equal(pushes[0].body, rec.pushes()[0].body, "and its first bytes");
    const { records } = await serverRecords(server.url, u.token);
    assert.equal(records.tasks.off0.title, "edited offline");
    assert.equal(Object.keys(records.tasks).length, 4);
    await client.close();
  });

  it("resends a batch whose answer was lost with the same key and bytes; the server applies it once", async () => {
    const u = user();
    const { client, rec } = await device(u);
    for (let i = 0; i < 3; i++) await client.table("tasks").put({ id: `l${i}`, title: "x", n: i });
    rec.faults.loseAnswers = 1;
    await assert.rejects(client.sync(), OfflineError);
    const before = await serverRecords(server.url, u.token);
    assert.equal(Object.keys(before.records.tasks).length, 3, "the first send was applied");
    client.networkAvailable();
    await until("synced", () => client.progress.value.state === "synced");
    const [first, second] = rec.pushes();
    assert.equal(second.key, first.key);
    assert.equal(second.body, first.body);
    assert.equal(second.replayed, true, "the server replayed its first answer");
    const afterwards = await serverRecords(server.url, u.token);
    assert.equal(afterwards.timestamp, before.timestamp, "nothing was applied twice");
    await client.close();
  });

  it("parks a rejected row with its code and message while later writes go through", async () => {
    const u = user();
    const { client } = await device(u);
    await client.table("tasks").put({ id: "bad", title: "x", n: "five" });
    await client.table("tasks").put({ id: "good", title: "fine", n: 5 });
    const s = await client.sync();
    assert.equal(s.rejected, 1);
    assert.equal(s.pushed, 1);
    assert.match(s.text, /1 change sent, 1 rejected/);
    const parked = await client.rejected();
    assert.equal(parked.length, 1);
    assert.equal(parked[0].id, "bad");
    assert.equal(parked[0].code, "wrong_type");
    assert.match(parked[0].message, /tasks\.n/);
    assert.deepEqual((await client.outboxStats()).rejected, { tasks: 1 });
    await client.table("tasks").put({ id: "later", title: "after the bad one" });
    await client.sync();
    let { records } = await serverRecords(server.url, u.token);
    assert.ok(records.tasks.later && records.tasks.good && !records.tasks.bad);
    // Fixed locally, retried: the fix folds over the parked row and goes through.
    await client.table("tasks").update("bad", { n: 5 });
    assert.equal(await client.retryRejected(), 1);
    await client.sync();
    ({ records } = await serverRecords(server.url, u.token));
    assert.equal(records.tasks.bad.n, 5);
    assert.equal((await client.rejected()).length, 0);
    await client.table("tasks").put({ id: "bad2", title: 7 });
    await client.sync();
    assert.equal((await client.rejected()).length, 1);
    assert.equal(await client.discardRejected(), 1);
    assert.equal((await client.outboxStats()).rejectedTotal, 0);
    await client.close();
  });

  it("splits a request refused as a whole until the bad write is alone, and parks only that one", async () => {
    const u = user();
    const { client, rec } = await device(u);
    await client.bulkWrite(async (tx) => {
      await tx.table("tasks").putMany([{ id: "ok1", title: "a" }, { id: "ok2", title: "b" }]);
      await tx.table("not_configured").put({ id: "x1", title: "c" });
      await tx.table("tasks").put({ id: "ok3", title: "d" });
    });
    const s = await client.sync();
    assert.equal(s.pushed, 3);
    assert.equal(s.rejected, 1);
    assert.ok(rec.pushes().some((c) => c.status === 400), "the whole request was refused first");
    const parked = await client.rejected();
    assert.deepEqual(parked.map((p) => [p.table, p.id, p.code]), [["not_configured", "x1", "unknown_table"]]);
    const { records } = await serverRecords(server.url, u.token);
    assert.deepEqual(Object.keys(records.tasks).sort(), ["ok1", "ok2", "ok3"]);
    await client.close();
  });
});

describe("pull", () => {
  it("on 409 pulls, merges the local columns and pushes again", async () => {
    const u = user();
    const a = await device(u);
    const b = await device(u);
    await a.client.table("tasks").put({ id: "shared", title: "v1", done: false });
    await a.client.sync();
    await b.client.sync();
    assert.equal((await b.client.table("tasks").get("shared")).title, "v1");
    await a.client.table("tasks").update("shared", { title: "v2 from a" });
    await a.client.sync();
    await b.client.table("tasks").update("shared", { done: true });
    const s = await b.client.sync();
    assert.equal(s.conflictRounds, 1);
    assert.deepEqual(b.rec.pushes().map((c) => c.status), [409, 200]);
    assert.notEqual(b.rec.pushes()[0].key, b.rec.pushes()[1].key, "a refused request gets a new key with its new cursor");
    const { records } = await serverRecords(server.url, u.token);
    assert.equal(records.tasks.shared.title, "v2 from a");
    assert.equal(records.tasks.shared.done, true);
    assert.deepEqual(await b.client.table("tasks").get("shared"), records.tasks.shared);
    await a.client.close();
    await b.client.close();
  });

  it("applies a paged pull page by page and resumes after a reload from the saved cursor", async () => {
    const u = user();
    const a = await device(u);
    const rows = Array.from({ length: 25 }, (_, i) => ({ id: `p${String(i).padStart(2, "0")}`, name: `item ${i}`, n: i }));
    await a.client.bulk({ upserts: { items: rows } });
    const factory = new IDBFactory();
    const b = await device(u, { indexedDB: factory, pullPageSize: 10 });
    b.rec.faults.failPullsAfter = 2;
    await assert.rejects(b.client.sync());
    assert.equal((await b.client.table("items").all()).length, 20, "two pages applied");
    await b.client.close();
    const again = await device(u, { indexedDB: factory, pullPageSize: 10 });
    const s = await again.client.sync();
    const pulls = again.rec.calls.filter((c) => c.path === "/v1/sync/pull");
    assert.ok(JSON.parse(pulls[0].body).lastPulledAt > 0, "resumed from the saved cursor");
    assert.equal(s.pulled, 5);
    assert.equal(s.text, "5 items updated from cloud, 0 changes sent");
    assert.equal((await again.client.table("items").all()).length, 25);
    await again.client.close();
    await a.client.close();
  });

  it("handles a tombstone-horizon replacement without losing local unsynced writes", async () => {
    const u = user();
    const a = await device(u);
    const b = await device(u);
    for (const id of ["r1", "r2", "r3"]) await a.client.table("tasks").put({ id, title: id });
    await a.client.sync();
    await b.client.sync();
    await a.client.table("tasks").delete("r1");
    await a.client.sync();
    const gc = await fetch(`${server.url}/v1/admin/gc`, { method: "POST", headers: { Authorization: `Bearer ${server.token("root", true)}` } });
    assert.equal(gc.status, 200);
    // B edits while its push fails: the batch waits for its retry, and the pull goes on.
    b.rec.faults.offline = true;
    await b.client.table("tasks").put({ id: "r9", title: "made on b" });
    await b.client.table("tasks").update("r2", { done: true });
    await assert.rejects(b.client.sync());
    b.rec.faults.offline = false;
    await b.client.sync();
    const pull = b.rec.calls.filter((c) => c.path === "/v1/sync/pull").at(-1);
    assert.equal(pull.status, 200);
    const local = Object.fromEntries((await b.client.table("tasks").all()).map((r) => [r.id, r]));
    assert.equal(local.r1, undefined, "the record deleted elsewhere is gone");
    assert.equal(local.r9?.title, "made on b", "the unpushed creation survives");
    assert.equal(local.r2?.done, true, "the unpushed update survives");
    b.client.networkAvailable();
    await until("pushed", async () => (await b.client.outboxStats()).pendingTotal === 0 && b.client.progress.value.state === "synced");
    const { records } = await serverRecords(server.url, u.token);
    assert.deepEqual(Object.keys(records.tasks).sort(), ["r2", "r3", "r9"]);
    assert.equal(records.tasks.r2.done, true);
    await a.client.close();
    await b.client.close();
  });
});

describe("bulk", () => {
  it("imports a backup of 100 entities in one request, all or nothing, with counts per table", async () => {
    const u = user();
    const { client, rec } = await device(u);
    const games = Array.from({ length: 50 }, (_, i) => ({ id: `game${i}`, opponent: `Team ${i}`, home_score: i, away_score: 0 }));
    const events = games.map((g) => ({ id: `ev-${g.id}`, game_id: g.id, event_type: "goal", time_seconds: 60 }));
    const r = await client.bulk({ upserts: { games, game_events: events } });
    assert.equal(rec.calls.filter((c) => c.path === "/v1/sync/bulk").length, 1);
    assert.equal(r.requests, 1);
    assert.deepEqual(r.counts, {
      game_events: { upserted: 50, unchanged: 0, deleted: 0 },
      games: { upserted: 50, unchanged: 0, deleted: 0 },
    });
    assert.equal((await client.table("games").all()).length, 50, "applied locally too");
    // One bad row: nothing is applied, every bad row is named.
    const before = await serverRecords(server.url, u.token);
    await assert.rejects(
      client.bulk({ upserts: { games: [{ id: "game0", opponent: "changed" }, { id: "gameX", home_score: "2" }] }, deletes: { games: ["game1"] } }),
      (e) => e instanceof BulkRejectedError && e.errors.length === 1 && e.errors[0].code === "wrong_type" && e.errors[0].index === 1,
    );
    const afterwards = await serverRecords(server.url, u.token);
    assert.equal(afterwards.timestamp, before.timestamp, "nothing was applied");
    assert.equal((await client.table("games").get("game0")).opponent, "Team 0");
    // Deletes cascade; the individual mode sends one request per row, for comparison.
    const d = await client.bulk({ deletes: { games: ["game0"] } });
    assert.deepEqual(d.counts.game_events, { upserted: 0, unchanged: 0, deleted: 1 });
    const ind = await client.bulk({ upserts: { games: games.slice(1, 11) } }, { mode: "individual" });
    assert.equal(ind.requests, 10);
    assert.deepEqual(ind.counts.games, { upserted: 0, unchanged: 10, deleted: 0 });
    await client.close();
  });
});

describe("the orchestrator", () => {
  it("sends 20 rapid edits in at most 2 push requests and reports progress", async () => {
    const u = user();
    const { client, rec } = await device(u, { debounceMs: 100 });
    const states = [];
    client.progress.subscribe((p) => states.push(p.state));
    client.start();
    await until("the start sync", () => client.progress.value.state === "synced");
    const id = await client.table("tasks").put({ title: "e0", n: 0 });
    for (let i = 1; i < 20; i++) await client.table("tasks").update(id, { title: `e${i}`, n: i });
    await until("the edits pushed", async () => client.progress.value.state === "synced" && (await client.outboxStats()).pendingTotal === 0);
    assert.ok(rec.pushes().length >= 1 && rec.pushes().length <= 2, `${rec.pushes().length} pushes`);
    const { records } = await serverRecords(server.url, u.token);
    assert.equal(records.tasks[id].n, 19);
    assert.ok(states.includes("syncing") && states.at(-1) === "synced");
    assert.equal(client.progress.value.percentage, 100);
    const headers = rec.pushes()[0].headers;
    assert.equal(headers["Syncline-Device"], client.device);
    assert.match(headers["Syncline-Outbox-Pending"], /^\d+$/);
    client.stop();
    await client.close();
  });

  it("syncs periodically", async () => {
    const u = user();
    const { client, rec } = await device(u, { intervalMs: 150 });
    client.start();
    await until("three syncs without any trigger", () => rec.calls.filter((c) => c.path === "/v1/sync/pull").length >= 3);
    await client.close();
  });

  it("runs one sync at a time: triggers during a sync make exactly one more", async () => {
    const u = user();
    const { client, rec } = await device(u);
    await client.table("tasks").put({ title: "x" });
    const first = client.sync();
    const more = [client.sync(), client.sync(), client.sync()];
    assert.equal(more[0], more[1]);
    await Promise.all([first, ...more]);
    const pulls = rec.calls.filter((c) => c.path === "/v1/sync/pull").length;
    assert.equal(pulls, 2, "two syncs ran");
    await client.close();
  });

  it("two clients on one database take turns and never send the same batch twice", async () => {
    const u = user();
    const factory = new IDBFactory();
    const one = await device(u, { indexedDB: factory, database: "shared" });
    const two = await device(u, { indexedDB: factory, database: "shared" });
    for (let i = 0; i < 10; i++) await one.client.table("tasks").put({ id: `s${i}`, title: "x" });
    await Promise.all([one.client.sync(), two.client.sync(), one.client.sync(), two.client.sync()]);
    const pushes = [...one.rec.pushes(), ...two.rec.pushes()];
    assert.equal(pushes.length, 1, "one batch, sent once");
    assert.equal((await two.client.table("tasks").all()).length, 10, "both see the same data");
    await one.client.close();
    await two.client.close();
  });

  it("two devices converge through live events", async () => {
    const u = user();
    const a = await device(u, { liveEvents: true, debounceMs: 20 });
    const b = await device(u, { liveEvents: true, debounceMs: 20 });
    const seen = [];
    b.client.onChange((tables, source) => seen.push(`${source}:${tables.join(",")}`));
    a.client.start();
    b.client.start();
    await until("both synced", () => a.client.progress.value.state === "synced" && b.client.progress.value.state === "synced");
    await new Promise((r) => setTimeout(r, 300)); // the event streams are open
    await a.client.table("tasks").put({ id: "live", title: "from a" });
    await until("b has it", async () => (await b.client.table("tasks").get("live"))?.title === "from a");
    assert.ok(seen.includes("remote:tasks"));
    await b.client.table("tasks").update("live", { title: "from b" });
    await until("a has it", async () => (await a.client.table("tasks").get("live"))?.title === "from b");
    await a.client.close();
    await b.client.close();
  });
});
