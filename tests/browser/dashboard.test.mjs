// Browser tests of the Syncline dashboard: Playwright (playwright-core, no browser download) drives Debian's
// headless Chromium against a real `syncline serve` process with a SQLite file in a temp dir, importing from
// the fake Spotify and Steam APIs (the `fake-apis` example of syncline-testkit, over HTTPS with a throwaway CA
// the server trusts through SSL_CERT_FILE). Everything listens on
// 127.0.0.1; every process is killed at the end, also when a step fails. A screenshot of each state goes to
// SCREENSHOT_DIR (default target/dashboard-screenshots), whose path is printed.
//
// Run by scripts/test.sh; alone: SYNCLINE_BIN=… FAKE_APIS_BIN=… node --test tests/browser/

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const TARGET = process.env.CARGO_TARGET_DIR ?? join(ROOT, "target");
const SYNCLINE_BIN = process.env.SYNCLINE_BIN ?? join(TARGET, "debug/syncline");
const FAKE_APIS_BIN = process.env.FAKE_APIS_BIN ?? join(TARGET, "debug/examples/fake-apis");
const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const SHOTS = resolve(process.env.SCREENSHOT_DIR ?? join(ROOT, "target/dashboard-screenshots"));
const SECRET = randomBytes(24).toString("hex");

const Node_FOLLOWING = 4; // Node.DOCUMENT_POSITION_FOLLOWING
const children = [];
let dir;
let fakes;
let url;
let browser;
let page;
let aliceToken;
let adminToken;
let shot = 0;

function killAll() {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
}
process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    killAll();
    process.exit(1);
  });
}

/// Starts a process (with `env` on top of ours) and resolves with the first stdout line `ready` accepts
/// (its value), within 30 s.
function startProcess(bin, args, ready, env = {}) {
  const child = spawn(bin, args, {
    stdio: ["pipe", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn", ...env },
  });
  children.push(child);
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`${bin} did not start within 30 s`)), 30_000);
    child.on("error", (e) => reject(new Error(`${bin}: ${e.message}`)));
    child.on("exit", (code) => reject(new Error(`${bin} exited (${code}) before it was ready`)));
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      const value = ready(line);
      if (value !== undefined) {
        clearTimeout(timer);
        resolvePromise(value);
      }
    });
  });
}

const b64url = (data) => Buffer.from(data).toString("base64url");

/// An HS256 JWT signed with `secret`.
function jwt(claims, secret = SECRET) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const signature = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

async function control(fake, knobs) {
  const response = await fetch(`${fakes.control}/control/${fake}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(knobs),
  });
  assert.equal(response.status, 200);
  return response.json();
}

async function screenshot(name) {
  shot += 1;
  const path = join(SHOTS, `${String(shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/// Polls `probe` every 50 ms until it returns something other than undefined; fails after `ms`.
async function until(what, probe, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const source = (name) => page.locator(`article.source[data-source="${name}"]`);
const stream = (name, s) => source(name).locator(`li.stream[data-stream="${s}"][data-phase="initial"]`);

async function streamStatus(name, s) {
  return stream(name, s).locator(".badge").textContent();
}

/// Clicks a source's action button once it is enabled.
async function press(name, action) {
  const button = source(name).locator(`button[data-action="${action}"]`);
  await until(`${name} ${action} enabled`, () => button.isEnabled());
  await button.click();
}

async function signIn(token) {
  await page.fill("#token", token);
  await page.click("#sign-in-form button[type=submit]");
}

describe("the dashboard in a real browser", { timeout: 240_000 }, () => {
  before(async () => {
    rmSync(SHOTS, { recursive: true, force: true });
    mkdirSync(SHOTS, { recursive: true });
    console.log(`screenshots: ${SHOTS}`);
    dir = mkdtempSync(join(tmpdir(), "syncline-dashboard-"));
    fakes = await startProcess(FAKE_APIS_BIN, ["--tracks", "200", "--games", "12", "--latency-ms", "150"], (line) => {
      try {
        return JSON.parse(line);
      } catch {
        return undefined;
      }
    });
    const config = join(dir, "syncline.toml");
    writeFileSync(
      config,
      `[server]
listen = "127.0.0.1:0"
[storage]
url = "sqlite://${join(dir, "syncline.db")}"
[auth]
jwt_secret = "${SECRET}"
[imports]
encryption_key = "${randomBytes(32).toString("base64")}"
page_size = 20
step_budget_ms = 5000
[imports.sources.spotify]
kind = "spotify"
base_url = "${fakes.spotify.baseUrl}"
streams = { saved_tracks = "tracks" }
[imports.sources.steam]
kind = "steam"
base_url = "${fakes.steam.baseUrl}"
streams = { owned_games = "games" }
[tables.tracks]
columns = { name = "string", album_name = "string", added_at = "string" }
[tables.games]
columns = { name = "string", playtime_forever = "number" }
[tables.notes]
columns = { body = "string" }
`,
    );
    // The fakes speak HTTPS with a throwaway CA: the server trusts it the way a user trusts a private CA.
    url = await startProcess(
      SYNCLINE_BIN,
      ["serve", "--config", config],
      (line) => (line.startsWith("Syncline listening on ") ? line.slice("Syncline listening on ".length) : undefined),
      { SSL_CERT_FILE: fakes.caFile },
    );
    const token = (...args) => execFileSync(SYNCLINE_BIN, ["token", "--config", config, ...args], { encoding: "utf8" }).trim();
    aliceToken = token("--user", "alice");
    adminToken = token("--user", "root", "--admin");
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
      timeout: 30_000,
    });
    page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    page.setDefaultTimeout(20_000);
    page.on("pageerror", (e) => console.log(`# page error: ${e.message}`));
    await page.goto(url);
  });

  after(async () => {
    await browser?.close().catch(() => {});
    killAll();
    if (dir) rmSync(dir, { recursive: true, force: true });
    console.log(`screenshots: ${SHOTS}`);
  });

  it("refuses a missing, malformed, foreign or expired token with the server's message", async () => {
    await page.waitForSelector("#sign-in:not([hidden])");
    await screenshot("sign-in");
    await signIn("");
    await until("the empty-token message", async () => (await page.textContent("#sign-in-error")) === "Paste a token first.");
    await signIn("not-a-token");
    await until("invalid token", async () => (await page.textContent("#sign-in-error")).includes("(invalid_token)"));
    assert.match(await page.textContent("#sign-in-error"), /not valid for this server/);
    const now = Math.floor(Date.now() / 1000);
    await signIn(jwt({ sub: "alice", exp: now + 3600 }, "some-other-secret-entirely"));
    await until("foreign token", async () => (await page.textContent("#sign-in-error")).includes("(invalid_token)"));
    await signIn(jwt({ sub: "alice", exp: now - 3600 }));
    await until("expired token", async () => (await page.textContent("#sign-in-error")).includes("(token_expired)"));
    assert.match(await page.textContent("#sign-in-error"), /the token has expired; get a new one/);
    assert.equal(await page.getAttribute("#token", "aria-invalid"), "true");
    assert.equal(await page.isVisible("#app"), false, "nothing behind the sign-in shows");
    await screenshot("sign-in-expired-token");
  });

  it("signs in from the keyboard and shows the sync panel, with live updates", async () => {
    await page.fill("#token", aliceToken);
    await page.press("#token", "Enter");
    await page.waitForSelector("#app:not([hidden])");
    assert.equal(await page.textContent("#who-name"), "alice");
    assert.equal(await page.isVisible("#admin"), false, "no admin view for a user");
    assert.equal(await page.textContent('tr[data-table="notes"] .records'), "0");
    await until("the event stream", async () => (await page.getAttribute("#live", "data-state")) === "live");
    assert.equal(await source("spotify").locator(".badge").first().textContent(), "Not started");
    await screenshot("signed-in");
  });

  it("shows a clear message for empty or malformed credentials", async () => {
    const spotify = source("spotify");
    const error = spotify.locator(".connect-form .error");
    await spotify.locator(".connect-form button[type=submit]").click();
    await until("empty credential", async () => (await error.textContent()) === "Enter access_token, or paste the credential as JSON.");
    await spotify.locator('textarea[name="json"]').fill('{"access_token": ');
    await spotify.locator(".connect-form button[type=submit]").click();
    await until("malformed JSON", async () => (await error.textContent()).startsWith("The pasted credential is not valid JSON"));
    await screenshot("connect-malformed-json");
    await spotify.locator('textarea[name="json"]').fill('["access_token"]');
    await spotify.locator(".connect-form button[type=submit]").click();
    await until("not an object", async () => (await error.textContent()).startsWith("The pasted credential must be a JSON object"));
    // Blank values reach the server, which names what is missing.
    await spotify.locator('textarea[name="json"]').fill('{"access_token": "  "}');
    await spotify.locator(".connect-form button[type=submit]").click();
    await until("the server's message", async () => (await error.textContent()).includes("needs `access_token`"));
    assert.match(await error.textContent(), /^Could not connect spotify: /);
    await screenshot("connect-empty-credential");
  });

  it("connects a source and imports it: the bar passes intermediate values to 100% and says what was imported", async () => {
    const spotify = source("spotify");
    await spotify.locator('textarea[name="json"]').fill("");
    await spotify.locator('input[name="access_token"]').fill(fakes.spotify.credential.access_token);
    await spotify.locator(".connect-form button[type=submit]").click();
    await until("connected", async () => (await spotify.locator(".conn").textContent()).startsWith("Connected."));
    assert.equal(await spotify.locator(".connect-form .error").textContent(), "");
    await press("spotify", "start");
    const bar = stream("spotify", "saved_tracks").locator('[role="progressbar"]');
    const seen = new Set();
    let figures = "";
    let intermediateShot = false;
    await until(
      "the import to finish",
      async () => {
        const value = Number(await bar.getAttribute("aria-valuenow"));
        seen.add(value);
        if (value > 0 && value < 100) {
          figures = (await stream("spotify", "saved_tracks").locator(".figures").textContent()) || figures;
          if (!intermediateShot) {
            intermediateShot = true;
            await screenshot("import-in-progress");
          }
        }
        return (await streamStatus("spotify", "saved_tracks")) === "Done";
      },
      30_000,
    );
    const intermediate = [...seen].filter((v) => v > 0 && v < 100);
    assert.ok(intermediate.length > 0, `an intermediate percentage was shown (saw ${[...seen]})`);
    assert.match(figures, /^\d+% · \d+ \/ 200/, `percentage and processed/total: ${figures}`);
    assert.equal(await bar.getAttribute("aria-valuenow"), "100");
    assert.equal(await bar.getAttribute("aria-valuetext"), "100%, 200 of 200 items");
    const message = stream("spotify", "saved_tracks").locator(".message");
    await until("the outcome", async () => (await message.textContent()).includes("200 new or changed"));
    assert.match(await message.textContent(), /^Imported 200 items \(200 new or changed, 0 unchanged\)/);
    await until("the table count", async () => (await page.textContent('tr[data-table="tracks"] .records')) === "200");
    await screenshot("import-done");
  });

  it("shows the rate and time left while importing, stops a running import and resumes it to success", async () => {
    await control("spotify", { latencyMs: 300 });
    await press("spotify", "reset");
    await until("reset", async () => (await streamStatus("spotify", "saved_tracks")) === "Not started");
    await press("spotify", "start");
    const bar = stream("spotify", "saved_tracks").locator('[role="progressbar"]');
    await until("some progress", async () => Number(await bar.getAttribute("aria-valuenow")) >= 20);
    const figures = await stream("spotify", "saved_tracks").locator(".figures").textContent();
    assert.match(figures, /items\/s · about \d+ s left/, `rate and ETA: ${figures}`);
    assert.equal(await streamStatus("spotify", "saved_tracks"), "Running");
    await press("spotify", "stop");
    await until("stopped", async () => (await streamStatus("spotify", "saved_tracks")) === "Stopped");
    const stoppedAt = Number(await bar.getAttribute("aria-valuenow"));
    assert.ok(stoppedAt > 0 && stoppedAt < 100, `stopped part-way (${stoppedAt}%)`);
    assert.match(await stream("spotify", "saved_tracks").locator(".message").textContent(), /^Stopped at \d+% .*Start resumes from the checkpoint/);
    await screenshot("import-stopped");
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(await streamStatus("spotify", "saved_tracks"), "Stopped", "a stopped import stays stopped");
    await control("spotify", { latencyMs: 50 });
    await press("spotify", "start");
    await until("resumed to success", async () => (await streamStatus("spotify", "saved_tracks")) === "Done", 30_000);
    // The rows were all imported before the reset: the resumed walk reports them unchanged.
    await until("the outcome", async () =>
      /Imported 200 items \(0 new or changed, 200 unchanged\)/.test(await stream("spotify", "saved_tracks").locator(".message").textContent()),
    );
    await screenshot("import-resumed-done");
  });

  it("counts down a rate limit, then resumes by itself", async () => {
    await press("spotify", "reset");
    await until("reset", async () => (await streamStatus("spotify", "saved_tracks")) === "Not started");
    await control("spotify", { rateLimitNext: 1, retryAfterSecs: 4 });
    await press("spotify", "start");
    await until("rate limited", async () => (await streamStatus("spotify", "saved_tracks")) === "Rate limited");
    assert.equal(await source("spotify").locator("h3 .badge").textContent(), "Rate limited");
    const countdown = stream("spotify", "saved_tracks").locator(".countdown");
    const values = [];
    let pictured = false;
    await until(
      "the countdown to move",
      async () => {
        const text = await countdown.textContent().catch(() => null);
        const seconds = Number(/^(\d+) s$/.exec(text ?? "")?.[1]);
        if (Number.isFinite(seconds) && values.at(-1) !== seconds) values.push(seconds);
        if (values.length === 1 && !pictured) {
          pictured = true;
          await screenshot("rate-limited");
        }
        return values.length >= 2;
      },
      10_000,
    );
    assert.ok(values[1] < values[0], `the countdown decreases: ${values}`);
    assert.ok(values[0] <= 4, `counts from the Retry-After: ${values}`);
    assert.match(
      await stream("spotify", "saved_tracks").locator(".message").textContent(),
      /^Rate limited by spotify: resumes automatically in \d+ s\.$/,
    );
    await until("the automatic resume", async () => (await streamStatus("spotify", "saved_tracks")) === "Done", 30_000);
    await screenshot("rate-limit-over");
  });

  it("shows the source's refusal of a wrong credential as an error with what to do", async () => {
    const steam = source("steam");
    await steam.locator('input[name="api_key"]').fill("a-wrong-key");
    await steam.locator('input[name="steam_id"]').fill(fakes.steam.credential.steam_id);
    await steam.locator(".connect-form button[type=submit]").click();
    await until("connected", async () => (await steam.locator(".conn").textContent()).startsWith("Connected."));
    await press("steam", "start");
    await until("the error", async () => (await streamStatus("steam", "owned_games")) === "Error");
    const message = await stream("steam", "owned_games").locator(".message").textContent();
    assert.match(
      message,
      /^Failed \(auth_expired\): the source refused the credential: Steam refused the Web API key \(403\): check the key and connect again\. The service refused the credential .*connect again/,
    );
    assert.equal(await steam.locator("h3 .badge").textContent(), "Error");
    await screenshot("import-error");
    // Connecting again with the right key and starting again succeeds.
    await steam.locator("summary").click();
    await steam.locator('input[name="api_key"]').fill(fakes.steam.credential.api_key);
    await steam.locator('input[name="steam_id"]').fill(fakes.steam.credential.steam_id);
    await steam.locator(".connect-form button[type=submit]").click();
    await until("reconnected", async () => (await steam.locator(".notice").textContent()).startsWith("Connected to steam"));
    await press("steam", "start");
    await until("steam done", async () => (await streamStatus("steam", "owned_games")) === "Done", 30_000);
  });

  it("updates the sync panel when a device pushes, without a reload", async () => {
    await page.evaluate(() => (window.__sameDocument = true));
    assert.equal(await page.textContent('tr[data-table="notes"] .records'), "0");
    const me = await (await fetch(`${url}/v1/me`, { headers: { authorization: `Bearer ${aliceToken}` } })).json();
    const response = await fetch(`${url}/v1/sync/push`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${aliceToken}`,
        "content-type": "application/json",
        "syncline-device": "node-test-device",
        "syncline-outbox-pending": "2",
      },
      body: JSON.stringify({
        lastPulledAt: me.stats.sequence,
        changes: {
          notes: {
            created: [
              { id: "n1", body: "one" },
              { id: "n2", body: "two" },
              { id: "n3", body: "three" },
              { id: "bad", body: 42 },
            ],
            updated: [],
            deleted: [],
          },
        },
      }),
    });
    assert.equal(response.status, 200);
    await until("the new count", async () => (await page.textContent('tr[data-table="notes"] .records')) === "3");
    await until("the device", async () => (await page.textContent("#devices-body")).includes("node-test-device"));
    assert.equal(await page.textContent("#outbox"), "2");
    assert.equal(await page.textContent("#rejected"), "1");
    assert.match(await page.textContent("#last-rejection"), /1 record\(s\) rejected as invalid; first: notes\/bad/);
    assert.notEqual(await page.textContent("#last-push"), "never");
    assert.equal(await page.evaluate(() => window.__sameDocument), true, "no reload happened");
    const synced = Number(await page.getAttribute('#my-chart figure[data-series="synced"]', "data-total"));
    assert.ok(synced >= 3, `the chart counts the pushed records (${synced})`);
    await screenshot("sync-after-push");
  });

  it("falls back to polling every 2 s when the event stream is unavailable", async () => {
    const context = await browser.newContext();
    try {
      const polled = await context.newPage();
      await polled.route("**/v1/events", (route) => route.abort());
      await polled.goto(url);
      await polled.fill("#token", aliceToken);
      await polled.press("#token", "Enter");
      await polled.waitForSelector("#app:not([hidden])");
      await until("the polling notice", async () => (await polled.getAttribute("#live", "data-state")) === "polling");
      assert.match(await polled.textContent("#live"), /checking every 2 s/);
      const before = Number(await polled.textContent('tr[data-table="notes"] .records'));
      const response = await fetch(`${url}/v1/sync/bulk`, {
        method: "POST",
        headers: { authorization: `Bearer ${aliceToken}`, "content-type": "application/json" },
        body: JSON.stringify({ upserts: { notes: [{ id: "n4", body: "four" }] } }),
      });
      assert.equal(response.status, 200);
      await until("the polled count", async () => Number(await polled.textContent('tr[data-table="notes"] .records')) === before + 1, 10_000);
    } finally {
      await context.close();
    }
  });

  it("shows an admin every user's imports, their errors and the charts", async () => {
    // Another user, bob, whose Spotify token is refused.
    const bob = jwt({ sub: "bob", exp: Math.floor(Date.now() / 1000) + 600 });
    const call = (method, path, body) =>
      fetch(`${url}${path}`, { method, body, headers: { authorization: `Bearer ${bob}` } });
    assert.equal((await call("PUT", "/v1/connections/spotify", JSON.stringify({ access_token: "revoked" }))).status, 204);
    assert.equal((await call("POST", "/v1/imports/spotify/start")).status, 202);
    await until("bob's import to fail", async () => {
      const body = await (await call("GET", "/v1/imports/spotify/status")).json();
      return body.streams[0].status === "error";
    });
    await page.click("#sign-out");
    await page.waitForSelector("#sign-in:not([hidden])");
    await signIn(adminToken);
    await page.waitForSelector("#admin:not([hidden])");
    assert.equal(await page.isVisible("#who-admin"), true);
    const rows = page.locator('#admin-imports-body tr[data-user="alice"]');
    await until("alice's imports", async () => (await rows.count()) >= 2);
    assert.equal(await page.locator('#admin-imports-body tr[data-user="alice"][data-source="spotify"] .badge').first().textContent(), "Done");
    assert.equal(await page.locator('#admin-imports-body tr[data-user="alice"][data-source="steam"] .badge').first().textContent(), "Done");
    const bobs = page.locator('#admin-imports-body tr[data-user="bob"][data-source="spotify"]');
    assert.equal(await bobs.locator(".badge").textContent(), "Error");
    assert.match(await bobs.textContent(), /auth_expired: the source refused the credential: the API answered 401/);
    assert.match(await page.textContent("#admin-summary"), /imports: 1 error, 2 done/);
    const alice = page.locator('#admin-users-body tr[data-user="alice"]');
    assert.match(await alice.textContent(), /node-test-device/);
    assert.match(await alice.textContent(), /rejected as invalid/);
    const imported = Number(await page.getAttribute('#admin-chart figure[data-series="imported"]', "data-total"));
    assert.ok(imported >= 400, `the imported chart counts alice's imports (${imported})`);
    assert.ok((await page.locator("#admin-chart svg.chart-imported rect.bar").count()) > 0, "imported bars are drawn");
    assert.ok((await page.locator("#admin-chart svg.chart-synced rect.bar").count()) > 0, "synced bars are drawn");
    assert.match(await page.getAttribute("#admin-chart svg.chart-imported", "aria-label"), /^Records imported: [\d,]+ in the last/);
    assert.equal(
      await page.evaluate(() => document.getElementById("admin").compareDocumentPosition(document.getElementById("sync")) & Node.DOCUMENT_POSITION_FOLLOWING),
      Node_FOLLOWING,
      "the admin view comes first for an admin",
    );
    await screenshot("admin");
  });
});
