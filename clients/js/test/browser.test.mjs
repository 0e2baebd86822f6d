// The SDK in headless Chromium against a real `syncline serve` process: real IndexedDB, real fetch, Web
// Locks across tabs, `online` events from Playwright's offline switch. Request counts, keys and bodies are
// read from Playwright's view of the page's network traffic.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { launch, openClient, sdkContext, sdkPage } from "./browser.mjs";
import { serverRecords, startServer, until } from "./server.mjs";

let server;
let browser;
before(async () => {
  server = await startServer();
  browser = await launch();
});
after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
});

let users = 0;
const newUser = () => {
  const name = `b${++users}`;
  return { name, token: server.token(name) };
};

/** Records the context's requests to `path`: their Idempotency-Key and body. */
function watch(context, path) {
  const seen = [];
  context.on("request", (r) => {
    if (new URL(r.url()).pathname === path) seen.push({ key: r.headers()["idempotency-key"], body: r.postData(), headers: r.headers() });
  });
  return seen;
}

const state = (page) => page.evaluate(() => window.client.progress.value.state);
const pending = (page) => page.evaluate(async () => (await window.client.outboxStats()).pendingTotal);

describe("the SDK in Chromium", { timeout: 180_000 }, () => {
  it("keeps offline edits and sends them when the browser is back online", async () => {
    const u = newUser();
    const context = await sdkContext(browser, server.url);
    const page = await sdkPage(context, server.url);
    await openClient(page, u.token, { liveEvents: false, debounceMs: 50 });
    await page.evaluate(() => window.client.start());
    await until("first sync", async () => (await state(page)) === "synced");
    await context.setOffline(true);
    await page.evaluate(async () => {
      for (let i = 0; i < 5; i++) await window.client.table("tasks").put({ id: `off${i}`, title: "written offline", n: i });
    });
    await until("the offline error", async () => (await page.evaluate(() => window.client.progress.value.offline)) === true);
    assert.equal(await pending(page), 5);
    await context.setOffline(false); // fires `online` in the page
    await until("back in sync", async () => (await state(page)) === "synced" && (await pending(page)) === 0);
    const { records } = await serverRecords(server.url, u.token);
    assert.equal(Object.keys(records.tasks).length, 5);
    // The page becoming visible again starts a sync too.
    const pulls = watch(context, "/v1/sync/pull");
    await page.evaluate(() => document.dispatchEvent(new Event("visibilitychange")));
    await until("a sync on visibilitychange", () => pulls.length >= 1);
    await context.close();
  });

  it("resends a batch with the same key and bytes after the page was closed mid-push; nothing applied twice", async () => {
    const u = newUser();
    const context = await sdkContext(browser, server.url);
    const sent = [];
    let closePage;
    const firstArrived = new Promise((r) => (closePage = r));
    await context.route(`${server.url}/v1/sync/push`, async (route) => {
      const response = await route.fetch(); // the server applies it...
      sent.push({ key: route.request().headers()["idempotency-key"], body: route.request().postData(), replayed: response.headers()["idempotent-replayed"] });
      if (sent.length === 1) {
        closePage(); // ...and the page is closed before the answer arrives
        return;
      }
      await route.fulfill({ response });
    });
    const page = await sdkPage(context, server.url);
    await openClient(page, u.token, { liveEvents: false });
    await page.evaluate(async () => {
      await window.client.transaction(async (tx) => {
        for (let i = 0; i < 10; i++) await tx.table("tasks").put({ id: `r${i}`, title: "once", n: i });
      });
      void window.client.sync().catch(() => {});
    });
    await firstArrived;
    await page.close();
    const before = await serverRecords(server.url, u.token);
    assert.equal(Object.keys(before.records.tasks).length, 10, "the first send was applied");
    const reloaded = await sdkPage(context, server.url);
    await openClient(reloaded, u.token, { liveEvents: false });
    await reloaded.evaluate(() => window.client.sync());
    assert.equal(sent.length, 2);
    assert.equal(sent[1].key, sent[0].key, "the same Idempotency-Key");
    assert.equal(sent[1].body, sent[0].body, "the same bytes");
    assert.equal(sent[1].replayed, "true", "the server replayed its first answer");
    const afterwards = await serverRecords(server.url, u.token);
    assert.equal(afterwards.timestamp, before.timestamp, "nothing was applied twice");
    assert.equal(await pending(reloaded), 0);
    await context.close();
  });

  it("sends 20 rapid edits in at most 2 push requests", async () => {
    const u = newUser();
    const context = await sdkContext(browser, server.url);
    const pushes = watch(context, "/v1/sync/push");
    const page = await sdkPage(context, server.url);
    await openClient(page, u.token, { liveEvents: false });
    await page.evaluate(() => window.client.start());
    await until("first sync", async () => (await state(page)) === "synced");
    await page.evaluate(async () => {
      const t = window.client.table("tasks");
      for (let i = 0; i < 20; i++) await t.put({ id: `e${i % 4}`, title: `edit ${i}`, n: i });
    });
    await until("pushed", async () => (await state(page)) === "synced" && (await pending(page)) === 0);
    assert.ok(pushes.length >= 1 && pushes.length <= 2, `${pushes.length} push requests`);
    const { records } = await serverRecords(server.url, u.token);
    assert.equal(records.tasks.e3.n, 19);
    const summary = await page.evaluate(() => window.client.progress.value.lastSummary.text);
    assert.match(summary, /updated from cloud, \d+ changes? sent/);
    await context.close();
  });

  it("imports a backup of 100 entities in one bulk request", async () => {
    const u = newUser();
    const context = await sdkContext(browser, server.url);
    const bulks = watch(context, "/v1/sync/bulk");
    const page = await sdkPage(context, server.url);
    await openClient(page, u.token, { liveEvents: false });
    const result = await page.evaluate(() => {
      const games = Array.from({ length: 40 }, (_, i) => ({ id: `game${i}`, opponent: `Team ${i}`, home_score: i, away_score: 1 }));
      const events = Array.from({ length: 60 }, (_, i) => ({ id: `ev${i}`, game_id: `game${i % 40}`, event_type: "goal", time_seconds: i }));
      return window.client.bulk({ upserts: { games, game_events: events } });
    });
    assert.equal(bulks.length, 1);
    assert.ok(bulks[0].key, "sent with an Idempotency-Key");
    assert.deepEqual(result.counts, {
      game_events: { upserted: 60, unchanged: 0, deleted: 0 },
      games: { upserted: 40, unchanged: 0, deleted: 0 },
    });
    const { records } = await serverRecords(server.url, u.token);
    assert.equal(Object.keys(records.games).length + Object.keys(records.game_events).length, 100);
    assert.equal(await page.evaluate(async () => (await window.client.table("game_events").all()).length), 60);
    await context.close();
  });

  it("parks a rejected row while later writes go through", async () => {
    const u = newUser();
    const context = await sdkContext(browser, server.url);
    const page = await sdkPage(context, server.url);
    await openClient(page, u.token, { liveEvents: false });
    const parked = await page.evaluate(async () => {
      await window.client.table("tasks").put({ id: "bad", title: "x", done: "yes" });
      await window.client.sync();
      await window.client.table("tasks").put({ id: "after", title: "goes through" });
      await window.client.sync();
      return window.client.rejected();
    });
    assert.equal(parked.length, 1);
    assert.equal(parked[0].code, "wrong_type");
    const { records } = await serverRecords(server.url, u.token);
    assert.ok(records.tasks.after && !records.tasks.bad);
    const stats = await page.evaluate(() => window.client.outboxStats());
    assert.deepEqual(stats.rejected, { tasks: 1 });
    assert.equal(stats.pendingTotal, 0);
    assert.match(stats.lastError, /wrong_type/);
    await context.close();
  });

  it("two tabs on one database never send a batch twice and see the same data", async () => {
    const u = newUser();
    const context = await sdkContext(browser, server.url);
    const pushes = watch(context, "/v1/sync/push");
    const one = await sdkPage(context, server.url);
    const two = await sdkPage(context, server.url);
    await openClient(one, u.token, { liveEvents: false });
    await openClient(two, u.token, { liveEvents: false });
    await one.evaluate(async () => {
      for (let i = 0; i < 30; i++) await window.client.table("tasks").put({ id: `tab${i}`, title: "from tab one" });
    });
    await until("tab two hears of the writes", async () => (await two.evaluate(() => window.changes)).includes("other-tab:tasks"));
    await Promise.all([
      one.evaluate(() => Promise.all([window.client.sync(), window.client.sync()])),
      two.evaluate(() => Promise.all([window.client.sync(), window.client.sync()])),
    ]);
    assert.equal(pushes.length, 1, "one batch, sent once");
    assert.equal(await two.evaluate(async () => (await window.client.table("tasks").all()).length), 30);
    const { records } = await serverRecords(server.url, u.token);
    assert.equal(Object.keys(records.tasks).length, 30);
    await context.close();
  });

  it("two browser contexts as two devices converge through live events", async () => {
    const u = newUser();
    const ctxA = await sdkContext(browser, server.url);
    const ctxB = await sdkContext(browser, server.url);
    const a = await sdkPage(ctxA, server.url);
    const b = await sdkPage(ctxB, server.url);
    await openClient(a, u.token, { debounceMs: 20 });
    await openClient(b, u.token, { debounceMs: 20 });
    await a.evaluate(() => window.client.start());
    await b.evaluate(() => window.client.start());
    await until("both synced", async () => (await state(a)) === "synced" && (await state(b)) === "synced");
    assert.notEqual(await a.evaluate(() => window.client.device), await b.evaluate(() => window.client.device));
    await new Promise((r) => setTimeout(r, 300)); // the event streams are open
    await a.evaluate(() => window.client.table("tasks").put({ id: "live", title: "from a" }));
    await until("b has it", async () => (await b.evaluate(() => window.client.table("tasks").get("live")))?.title === "from a");
    await b.evaluate(() => window.client.table("tasks").update("live", { title: "from b" }));
    await until("a has it", async () => (await a.evaluate(() => window.client.table("tasks").get("live")))?.title === "from b");
    assert.ok((await b.evaluate(() => window.changes)).includes("remote:tasks"));
    await ctxA.close();
    await ctxB.close();
  });
});
