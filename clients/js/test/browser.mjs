// Loads the compiled SDK (dist/) into pages of Debian's headless Chromium (playwright-core, no browser
// download), served through Playwright routes on the real server's own origin, so the page's fetches go
// to the server without CORS. Shared by the browser tests and the benchmark.

import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const DIST = resolve(dirname(fileURLToPath(import.meta.url)), "../dist");
export const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    timeout: 30_000,
  });
}

const PAGE = `<!doctype html><meta charset="utf-8"><title>syncline sdk</title>
<script type="module">
  import * as sdk from "/sdk/dist/index.js";
  window.sdk = sdk;
  window.sdkReady = true;
</script>`;

/** The page or SDK file at `/sdk/<path>`: `{ contentType, body }`, or null when there is none. */
export function sdkAsset(path) {
  if (path === "app.html") return { contentType: "text/html", body: PAGE };
  if (!path.startsWith("dist/") || path.includes("..")) return null;
  try {
    const body = readFileSync(join(DIST, path.slice("dist/".length)));
    return { contentType: path.endsWith(".js") ? "text/javascript" : "application/json", body };
  } catch {
    return null;
  }
}

/** A browser context whose pages can load `/sdk/app.html` on the server's origin. */
export async function sdkContext(browser, url) {
  const context = await browser.newContext();
  await context.route(`${url}/sdk/**`, (route) => {
    const asset = sdkAsset(new URL(route.request().url()).pathname.slice("/sdk/".length));
    return route.fulfill(asset ?? { status: 404, body: "" });
  });
  return context;
}

/** Opens a page with the SDK loaded as `window.sdk`. */
export async function sdkPage(context, url) {
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.on("pageerror", (e) => console.log(`# page error: ${e.message}`));
  await page.goto(`${url}/sdk/app.html`);
  await page.waitForFunction(() => window.sdkReady === true);
  return page;
}

/** In the page: opens `window.client` with `options` (the token and origin filled in). */
export async function openClient(page, token, options = {}) {
  await page.evaluate(
    async ({ token, options }) => {
      window.client = await window.sdk.SynclineClient.open({ url: location.origin, token, ...options });
      window.changes = [];
      window.client.onChange((tables, source) => window.changes.push(`${source}:${tables.join(",")}`));
    },
    { token, options },
  );
}
