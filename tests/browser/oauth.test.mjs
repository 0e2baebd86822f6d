// The dashboard's "Connect Spotify" consent flow in Debian's headless Chromium (playwright-core): a real
// `syncline serve` whose Spotify source has only a `client_id` (so PKCE), the fake Spotify authorization
// server of the `fake-apis` example (its consent page, then its token endpoint), back to our callback route,
// then an import that succeeds with every track. Everything listens on 127.0.0.1; every process is killed at
// the end. The fakes serve HTTPS with a throwaway CA: the server trusts it through SSL_CERT_FILE, and
// Chromium trusts only the fake's own key (--ignore-certificate-errors-spki-list, the key read over a TLS
// connection that checked the certificate against that CA), so no certificate check is switched off.
//
// Run by scripts/test.sh; alone: SYNCLINE_BIN=… FAKE_APIS_BIN=… node --test tests/browser/

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { X509Certificate, createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect as tlsConnect } from "node:tls";
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
const TRACKS = 45;

const children = [];
let dir;
let fakes;
let url;
let browser;
let page;
let config;

function killAll() {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
}
process.on("exit", killAll);

/// Starts a process and resolves with the first stdout line `ready` accepts (its value), within 30 s.
function startProcess(bin, args, ready, env = {}) {
  const child = spawn(bin, args, { stdio: ["pipe", "pipe", "inherit"], env: { ...process.env, RUST_LOG: "warn", ...env } });
  children.push(child);
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`${bin} did not start within 30 s`)), 30_000);
    child.on("error", (e) => reject(new Error(`${bin}: ${e.message}`)));
    child.on("exit", (code) => reject(new Error(`${bin} exited (${code}) before it was ready`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const value = ready(line);
      if (value !== undefined) {
        clearTimeout(timer);
        resolvePromise(value);
      }
    });
  });
}

/// The base64 SHA-256 of the public key `origin` presents, read over TLS checked against the CA in `caFile`.
function spkiHash(origin, caFile) {
  const { hostname, port } = new URL(origin);
  return new Promise((resolvePromise, reject) => {
    const socket = tlsConnect({ host: hostname, port: Number(port), ca: readFileSync(caFile), servername: hostname }, () => {
      const cert = new X509Certificate(socket.getPeerCertificate().raw);
      const der = cert.publicKey.export({ type: "spki", format: "der" });
      socket.end();
      resolvePromise(createHash("sha256").update(der).digest("base64"));
    });
    socket.on("error", reject);
  });
}

async function until(what, probe, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("connecting Spotify through its consent page", { timeout: 120_000 }, () => {
  before(async () => {
    mkdirSync(SHOTS, { recursive: true });
    dir = mkdtempSync(join(tmpdir(), "syncline-oauth-"));
    fakes = await startProcess(FAKE_APIS_BIN, ["--tracks", String(TRACKS)], (line) => {
      try {
        return JSON.parse(line);
      } catch {
        return undefined;
      }
    });
    config = join(dir, "syncline.toml");
    const auth = fakes.spotifyAuth.baseUrl;
    writeFileSync(
      config,
      `[server]
listen = "127.0.0.1:0"
[storage]
url = "sqlite://${join(dir, "syncline.db")}"
[auth]
jwt_secret = "${randomBytes(24).toString("hex")}"
[imports]
encryption_key = "${randomBytes(32).toString("base64")}"
page_size = 20
[imports.sources.spotify]
kind = "spotify"
base_url = "${fakes.spotify.baseUrl}"
auth_url = "${auth}/authorize"
token_url = "${auth}/api/token"
client_id = "${fakes.spotifyAuth.clientId}"
streams = { saved_tracks = "tracks" }
[tables.tracks]
columns = { name = "string", added_at = "string" }
`,
    );
    url = await startProcess(
      SYNCLINE_BIN,
      ["serve", "--config", config],
      (line) => (line.startsWith("Syncline listening on ") ? line.slice("Syncline listening on ".length) : undefined),
      { SSL_CERT_FILE: fakes.caFile },
    );
    const token = execFileSync(SYNCLINE_BIN, ["token", "--config", config, "--user", "alice"], { encoding: "utf8" }).trim();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        `--ignore-certificate-errors-spki-list=${await spkiHash(fakes.spotifyAuth.baseUrl, fakes.caFile)}`,
      ],
      timeout: 30_000,
    });
    page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    page.setDefaultTimeout(20_000);
    await page.goto(url);
    await page.fill("#token", token);
    await page.press("#token", "Enter");
    await page.waitForSelector("#app:not([hidden])");
  });

  after(async () => {
    await browser?.close().catch(() => {});
    killAll();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("goes to the consent page, comes back connected and imports every track", async () => {
    const spotify = page.locator('article.source[data-source="spotify"]');
    const connect = spotify.locator('button[data-consent="spotify"]');
    await connect.waitFor();
    await connect.click();
    // The fake authorization server's own page, on its own origin.
    await page.waitForURL((u) => u.href.startsWith(fakes.spotifyAuth.baseUrl));
    const consentUrl = new URL(page.url());
    assert.equal(consentUrl.searchParams.get("code_challenge_method"), "S256");
    assert.equal(consentUrl.searchParams.get("redirect_uri"), `${url}/v1/connections/spotify/callback`);
    await page.screenshot({ path: join(SHOTS, "oauth-1-consent.png"), fullPage: true });
    await page.click("#agree");
    // Our callback exchanged the code and sent the person back to the dashboard.
    await page.waitForURL((u) => u.href.startsWith(url) && u.searchParams.get("connected") === "spotify");
    await page.waitForSelector("#app:not([hidden])");
    await until("the connected notice", async () => (await spotify.locator(".notice").textContent()).includes("Connected to spotify"));
    const start = spotify.locator('button[data-action="start"]');
    await until("start enabled", () => start.isEnabled());
    await start.click();
    const badge = spotify.locator('li.stream[data-stream="saved_tracks"][data-phase="initial"] .badge');
    await until("the import to succeed", async () => ((await badge.textContent()) === "Done" ? true : undefined), 40_000);
    await page.screenshot({ path: join(SHOTS, "oauth-2-imported.png"), fullPage: true });
    const counts = await fetch(`${fakes.control}/control/spotifyAuth`).then((r) => r.json());
    assert.ok(counts.requests >= 2, "the consent page and the token endpoint were asked");
    const rows = await page.textContent('tr[data-table="tracks"] .records');
    assert.equal(rows, String(TRACKS));
  });

  // A login CSRF: Mallory starts connecting Spotify to her own user and gets Alice to approve the consent page
  // in Alice's browser. That browser lacks the HttpOnly cookie Mallory's got with the url, so the callback is
  // refused there and Alice's Spotify never lands in Mallory's account.
  it("refuses a consent approved in a browser other than the one that started it", async () => {
    const mallory = execFileSync(SYNCLINE_BIN, ["token", "--config", config, "--user", "mallory"], { encoding: "utf8" }).trim();
    const started = await fetch(`${url}/v1/connections/spotify/authorize`, { method: "POST", headers: { Authorization: `Bearer ${mallory}` } });
    assert.equal(started.status, 200);
    const cookie = started.headers.get("set-cookie");
    assert.match(cookie, /^syncline_consent=[A-Za-z0-9_-]{40,};/);
    assert.match(cookie, /; HttpOnly/);
    assert.match(cookie, /; SameSite=Lax/);
    const { url: consentUrl } = await started.json();
    const alices = await browser.newContext();
    try {
      const tab = await alices.newPage();
      tab.setDefaultTimeout(20_000);
      await tab.goto(consentUrl);
      const [answer] = await Promise.all([
        tab.waitForResponse((r) => r.url().startsWith(`${url}/v1/connections/spotify/callback`)),
        tab.click("#agree"),
      ]);
      assert.equal(answer.status(), 400);
      const body = await answer.json();
      assert.equal(body.code, "invalid_state");
      assert.match(body.message, /browser/);
      await tab.screenshot({ path: join(SHOTS, "oauth-3-other-browser-refused.png"), fullPage: true });
    } finally {
      await alices.close();
    }
    const status = await fetch(`${url}/v1/imports/spotify/status`, { headers: { Authorization: `Bearer ${mallory}` } }).then((r) => r.json());
    assert.equal(status.connected, false, "nothing was stored for Mallory");
  });

  it("refuses a callback whose state this server did not issue", async () => {
    const response = await fetch(`${url}/v1/connections/spotify/callback?code=stolen&state=forged`, { redirect: "manual" });
    assert.equal(response.status, 400);
    assert.equal((await response.json()).code, "invalid_state");
  });
});
