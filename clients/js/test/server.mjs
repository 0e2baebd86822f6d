// Starts a real `syncline serve` process ($SYNCLINE_BIN) with a SQLite file in a temp dir, listening on
// 127.0.0.1 port 0, and mints tokens with `syncline token`. Shared by the Node tests, the browser tests and
// the benchmark; the process is killed when the test process exits, also when a step fails.

import { spawn, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const SYNCLINE_BIN =
  process.env.SYNCLINE_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(ROOT, "target"), "debug/syncline");

const children = new Set();
process.on("exit", () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
});

export const TABLES = `
[tables.tasks]
columns = { title = "string", done = "boolean", n = "number" }
[tables.games]
columns = { opponent = "string", home_score = "number", away_score = "number" }
[tables.game_events]
columns = { game_id = "string", event_type = "string", time_seconds = "number" }
parent = { table = "games", column = "game_id" }
[tables.items]
columns = { name = "string", n = "number", payload = "string" }
`;

/** Starts a server (`extra` ends the `[sync]` section, `serverSettings` go into `[server]`); resolves with
 * { url, token(user, admin?), stop() } within 30 s. */
export async function startServer(extra = "", serverSettings = "") {
  if (!existsSync(SYNCLINE_BIN)) throw new Error(`server binary not found at ${SYNCLINE_BIN} (set SYNCLINE_BIN)`);
  const dir = mkdtempSync(join(tmpdir(), "syncline-js-"));
  const config = join(dir, "syncline.toml");
  writeFileSync(
    config,
    `[server]
listen = "127.0.0.1:0"
${serverSettings}
[storage]
url = "sqlite://${join(dir, "syncline.db")}"
[auth]
jwt_secret = "${randomBytes(24).toString("hex")}"
[sync]
tombstone_retention_days = 0
${extra}
${TABLES}`,
  );
  const child = spawn(SYNCLINE_BIN, ["serve", "--config", config], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
  });
  children.add(child);
  const url = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error("syncline did not start within 30 s")), 30_000);
    child.on("error", (e) => fail(e));
    child.on("exit", (code) => fail(new Error(`syncline exited (${code}) before it was ready`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const m = /^Syncline listening on (http:\/\/\S+?)\/?$/.exec(line.trim());
      if (m) {
        clearTimeout(timer);
        ok(m[1]);
      }
    });
  });
  const token = (user, admin = false) =>
    execFileSync(SYNCLINE_BIN, ["token", "--config", config, "--user", user, ...(admin ? ["--admin"] : [])], {
      encoding: "utf8",
    }).trim();
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      if (child.exitCode === null) child.kill("SIGKILL");
    }
    children.delete(child);
    rmSync(dir, { recursive: true, force: true });
  };
  return { url, token, stop };
}

/** Every live record of the user on the server, per table (a first pull without paging). */
export async function serverRecords(url, token) {
  const r = await fetch(`${url}/v1/sync/pull`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: "{}",
  });
  if (r.status !== 200) throw new Error(`pull answered ${r.status}`);
  const body = await r.json();
  const out = {};
  for (const [t, c] of Object.entries(body.changes)) out[t] = Object.fromEntries(c.updated.map((row) => [row.id, row]));
  return { records: out, timestamp: body.timestamp };
}

/** Polls `probe` every 25 ms until it returns a truthy value; fails after `ms`. */
export async function until(what, probe, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
