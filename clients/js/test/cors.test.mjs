// The SDK in a web app served by its own HTTP server on another origin than the sync server: a real
// cross-origin page in headless Chromium, both servers on loopback (so Chromium's local-network rules stay out
// of it). With the app's origin in `server.cors_allowed_origins`, preflighted fetches with the bearer token,
// pushes, pulls and the live event stream all work; a page on an origin not on the list cannot reach the API
// at all, and its writes stay in the outbox.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { launch, openClient, sdkAsset, sdkPage } from "./browser.mjs";
import { serverRecords, startServer, until } from "./server.mjs";

let server;
let browser;
let app; // the web app's own HTTP server: the page and the SDK files
let APP; // its origin, allowed by the sync server
let STRANGER; // the same app server under another name: an origin the sync server does not list
before(async () => {
  app = createServer((req, res) => {
    const asset = req.url.startsWith("/sdk/") ? sdkAsset(req.url.slice("/sdk/".length)) : null;
    res.writeHead(asset ? 200 : 404, { "Content-Type": asset?.contentType ?? "text/plain" });
    res.end(asset?.body ?? "");
  });
  await new Promise((ok) => app.listen(0, "127.0.0.1", ok));
  APP = `http://127.0.0.1:${app.address().port}`;
  STRANGER = `http://localhost:${app.address().port}`;
  server = await startServer("", `cors_allowed_origins = ["${APP}"]`);
  browser = await launch();
});
after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
  await new Promise((ok) => (app ? app.close(ok) : ok()));
});

/** A page on `origin` whose SDK client syncs with the sync server (another origin). */
async function crossOriginClient(origin, token, options) {
  const context = await browser.newContext();
  const page = await sdkPage(context, origin);
  await openClient(page, token, { url: server.url, ...options });
  return { context, page };
}

const state = (page) => page.evaluate(() => window.client.progress.value.state);

describe("the SDK on another origin", { timeout: 120_000 }, () => {
  it("syncs and hears live events when its origin is allowed", async () => {
    const token = server.token("cors-a");
    const { context, page } = await crossOriginClient(APP, token, { liveEvents: true, debounceMs: 0 });
    assert.equal(await page.evaluate(() => location.origin), APP);
    await page.evaluate(() => window.client.start());
    await until("first sync", async () => (await state(page)) === "synced");
    await page.evaluate(() => window.client.table("tasks").put({ id: "from-app", title: "cross-origin", n: 1 }));
    await until("pushed", async () => (await serverRecords(server.url, token)).records.tasks?.["from-app"]);
    // Another device writes; the page hears `changes` on its cross-origin event stream and pulls.
    const other = await fetch(`${server.url}/v1/sync/push`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ lastPulledAt: null, changes: { tasks: { created: [{ id: "from-device", title: "elsewhere", n: 2 }], updated: [], deleted: [] } } }),
    });
    assert.equal(other.status, 200);
    await until("the page has the other device's write", async () =>
      (await page.evaluate(() => window.client.table("tasks").get("from-device")))?.title === "elsewhere",
    );
    await context.close();
  });

  it("cannot reach the API from an origin that is not allowed; the write waits in the outbox", async () => {
    const token = server.token("cors-b");
    const { context, page } = await crossOriginClient(STRANGER, token, { liveEvents: false });
    await page.evaluate(() => window.client.table("tasks").put({ id: "blocked", title: "never sent", n: 3 }));
    const failed = await page.evaluate(() => window.client.sync().then(() => "synced", (e) => String(e)));
    assert.notEqual(failed, "synced");
    assert.equal(await page.evaluate(async () => (await window.client.outboxStats()).pendingTotal), 1);
    assert.deepEqual((await serverRecords(server.url, token)).records.tasks ?? {}, {});
    await context.close();
  });
});
