// Benchmark of @syncline/client in headless Chromium against a real server ($SYNCLINE_BIN; build it with
// `cargo build --release -p syncline` for meaningful figures). In one run: the raw IndexedDB put ceiling of
// this browser on the benchmark's records, then BENCH_RECORDS (default 100,000) local writes into the
// outbox, their push, a pull and apply into a fresh browser context (a new device), and the individual mode
// (one request per operation) on BENCH_INDIVIDUAL operations (default 1,000), whose rate is compared with
// the batched one. Prints every figure and the goals: push and fresh pull each >= 50% of the ceiling,
// batched >= 50x the individual mode.

import { launch, openClient, sdkContext, sdkPage } from "../test/browser.mjs";
import { startServer, SYNCLINE_BIN } from "../test/server.mjs";

const N = Number(process.env.BENCH_RECORDS ?? 100_000);
const INDIVIDUAL = Number(process.env.BENCH_INDIVIDUAL ?? 1_000);
const BATCH = Number(process.env.BENCH_BATCH_SIZE ?? 10_000); // the SDK's defaults
const PAGE = Number(process.env.BENCH_PULL_PAGE ?? 5_000);

const server = await startServer();
const browser = await launch();
const rate = (n, ms) => Math.round((n * 1000) / Math.max(ms, 1));
const fmt = (n) => n.toLocaleString("en-US");
try {
  console.log(`server: ${SYNCLINE_BIN}`);
  console.log(`chromium: ${browser.version()}; ${fmt(N)} records of ~250 bytes; batchSize ${fmt(BATCH)}; pullPageSize ${fmt(PAGE)}`);
  const token = server.token("bench");
  const options = { liveEvents: false, batchSize: BATCH, pullPageSize: PAGE };

  // The records, the same in every step: a generator evaluated in each page.
  const makeRows = `(start, end) => {
    const rows = [];
    for (let i = start; i < end; i++) {
      const id = "it" + String(i).padStart(8, "0");
      rows.push({ id, name: "item number " + i, n: i, payload: (id + "-").repeat(20).slice(0, 200) });
    }
    return rows;
  }`;

  const deviceA = await sdkContext(browser, server.url);
  const a = await sdkPage(deviceA, server.url);

  // 1. The ceiling: raw IndexedDB puts of the same records, stored as the SDK stores them, each time in a
  // fresh browser context of its own: at the start, and right before the fresh device's pull (1,000 and
  // 10,000 puts per transaction). The best of all is the ceiling.
  const ceilings = [];
  const measureCeiling = async (where, chunk) => {
    const context = await sdkContext(browser, server.url);
    const page = await sdkPage(context, server.url);
    const ms = await page.evaluate(
      async ({ n, chunk, makeRows, name }) => {
        const rowsOf = eval(makeRows);
        const db = await new Promise((ok, fail) => {
          const r = indexedDB.open(name, 1);
          r.onupgradeneeded = () => r.result.createObjectStore("records", { keyPath: ["table", "id"] });
          r.onsuccess = () => ok(r.result);
          r.onerror = () => fail(r.error);
        });
        // Only the puts and their commits are timed; each chunk's records are made just before it.
        let ms = 0;
        for (let i = 0; i < n; i += chunk) {
          // Through JSON, as pulled records arrive: flat strings, which the browser clones fastest.
          const entries = JSON.parse(JSON.stringify(rowsOf(i, Math.min(n, i + chunk)).map((row) => ({ table: "items", id: row.id, row }))));
          const t0 = performance.now();
          const tx = db.transaction("records", "readwrite");
          const store = tx.objectStore("records");
          for (const e of entries) store.put(e);
          await new Promise((ok, fail) => ((tx.oncomplete = ok), (tx.onerror = () => fail(tx.error))));
          ms += performance.now() - t0;
        }
        db.close();
        return ms;
      },
      { n: N, chunk, makeRows, name: `ceiling-${chunk}` },
    );
    await context.close();
    ceilings.push({ where, chunk, ms, rate: rate(N, ms) });
  };
  await measureCeiling("at the start", 10_000);

  // 2. Local writes into the outbox (each its own outbox operation), 10,000 per local transaction.
  await openClient(a, token, options);
  const writes = await a.evaluate(
    async ({ n, makeRows }) => {
      const rowsOf = eval(makeRows);
      const t0 = performance.now();
      for (let i = 0; i < n; i += 10_000) {
        const rows = rowsOf(i, Math.min(n, i + 10_000));
        await window.client.bulkWrite((tx) => tx.table("items").putMany(rows));
      }
      return { ms: performance.now() - t0, pending: (await window.client.outboxStats()).pendingTotal };
    },
    { n: N, makeRows },
  );
  if (writes.pending !== N) throw new Error(`expected ${N} operations in the outbox, found ${writes.pending}`);

  // 3. The push (the sync also pulls the records back; only its push phase is timed here).
  const pushed = await a.evaluate(() => window.client.sync());
  if (pushed.pushed !== N) throw new Error(`pushed ${pushed.pushed} of ${N}`);

  // 4. A fresh device: another browser context pulls and applies everything.
  const deviceB = await sdkContext(browser, server.url);
  await measureCeiling("before the pull", 1_000);
  await measureCeiling("before the pull", 10_000);
  const b = await sdkPage(deviceB, server.url);
  await openClient(b, token, options);
  const pulled = await b.evaluate(() => window.client.sync());
  const local = await b.evaluate(async () => (await window.client.table("items").all()).length);
  if (local !== N) throw new Error(`the fresh device holds ${local} records, expected ${N}`);
  await deviceB.close();

  // 5. The individual mode, on a smaller count, for another user.
  const deviceC = await sdkContext(browser, server.url);
  const c = await sdkPage(deviceC, server.url);
  await openClient(c, server.token("bench-individual"), { ...options, pushMode: "individual" });
  const individual = await c.evaluate(
    async ({ n, makeRows }) => {
      const rows = eval(makeRows)(0, n);
      await window.client.bulkWrite((tx) => tx.table("items").putMany(rows));
      return window.client.sync();
    },
    { n: INDIVIDUAL, makeRows },
  );

  const best = ceilings.reduce((x, y) => (y.rate > x.rate ? y : x));
  const ceilingRate = best.rate;
  const pushRate = rate(N, pushed.pushMs);
  const pullRate = rate(N, pulled.pullMs);
  const individualRate = rate(INDIVIDUAL, individual.pushMs);
  const pct = (r) => `${Math.round((100 * r) / ceilingRate)}% of the ceiling`;
  console.log("");
  for (const c of ceilings) {
    console.log(`raw IndexedDB puts          ${fmt(c.rate).padStart(9)} records/s  (${c.where}, ${fmt(c.chunk)} per transaction, ${fmt(N)} in ${Math.round(c.ms)} ms)`);
  }
  console.log(`ceiling (the best of those) ${fmt(ceilingRate).padStart(9)} records/s`);
  console.log(`local writes into outbox    ${fmt(rate(N, writes.ms)).padStart(9)} records/s  (${Math.round(writes.ms)} ms; record + operation each, putMany)`);
  console.log(`push, batched               ${fmt(pushRate).padStart(9)} records/s  (${pushed.pushRequests} requests in ${pushed.pushMs} ms; ${pct(pushRate)})`);
  console.log(`pull into a fresh device    ${fmt(pullRate).padStart(9)} records/s  (${pulled.pullRequests} pages in ${pulled.pullMs} ms; ${pct(pullRate)})`);
  console.log(`push, individual mode       ${fmt(individualRate).padStart(9)} records/s  (${individual.pushRequests} requests for ${fmt(INDIVIDUAL)} operations in ${individual.pushMs} ms)`);
  console.log(`batched / individual        ${(pushRate / Math.max(individualRate, 1)).toFixed(1).padStart(9)}x`);
  console.log("");
  const goals = [
    ["push >= 50% of the ceiling", pushRate >= ceilingRate / 2],
    ["fresh-device pull >= 50% of the ceiling", pullRate >= ceilingRate / 2],
    ["batched >= 50x individual", pushRate >= 50 * individualRate],
  ];
  for (const [what, met] of goals) console.log(`goal: ${what}: ${met ? "met" : "NOT met"}`);
} finally {
  await browser.close().catch(() => {});
  await server.stop();
}
