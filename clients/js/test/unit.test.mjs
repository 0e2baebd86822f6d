// The pure decisions of the SDK (compiled from src/ into dist/): coalescing, batch planning, request
// bodies, answer verdicts, the retry schedule, pulled-record merging and the SSE reader.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  classifyPush,
  coalesce,
  changedColumns,
  mergePulled,
  onPulledDelete,
  planBatch,
  readEvents,
  renderPushBody,
  retryDelay,
  survivesReplacement,
} from "../dist/index.js";

const c = (kind, columns = {}) => ({ kind, columns });

describe("coalescing", () => {
  it("folds writes to one record as the Rust SDK does", () => {
    assert.deepEqual(coalesce(null, c("update", { a: 1 })), c("update", { a: 1 }));
    assert.deepEqual(coalesce(c("create", { a: 1, b: 1 }), c("update", { b: 2 })), c("create", { a: 1, b: 2 }));
    assert.deepEqual(coalesce(c("update", { a: 1 }), c("update", { b: 2 })), c("update", { a: 1, b: 2 }));
    assert.equal(coalesce(c("create", { a: 1 }), c("delete")), null);
    assert.deepEqual(coalesce(c("update", { a: 1 }), c("delete")), c("delete"));
    assert.deepEqual(coalesce(c("delete"), c("create", { a: 2 })), c("create", { a: 2 }));
    assert.deepEqual(coalesce(c("delete"), c("update", { a: 2 })), c("update", { a: 2 }));
  });
  it("sends only the columns that change", () => {
    assert.deepEqual(changedColumns({ a: 1, b: "x", j: { k: [1] } }, { a: 1, b: "y", c: null, d: 0, j: { k: [1] } }), { b: "y", d: 0 });
  });
});

describe("batch planning", () => {
  const ops = (groups) => groups.map((group) => ({ group }));
  it("keeps groups whole and at most the limit", () => {
    assert.deepEqual(planBatch(ops(["a", "b", "c"]), 2, false), { take: 2, complete: true });
    assert.deepEqual(planBatch(ops(["a", "b", "b", "c"]), 2, false), { take: 1, complete: true });
    assert.deepEqual(planBatch(ops(["a", "a", "a", "b"]), 2, false), { take: 3, complete: true });
    assert.deepEqual(planBatch(ops(["a", "a", "a"]), 2, false), { take: 3, complete: false });
    assert.deepEqual(planBatch(ops(["a", "a", "a"]), 2, true), { take: 3, complete: true });
    assert.deepEqual(planBatch(ops(["a", "b"]), 5, true), { take: 2, complete: true });
  });
  it("renders tables in name order with created, updated and deleted", () => {
    const body = renderPushBody(7, [
      { seq: 1, group: "g", table: "tasks", id: "t1", kind: "create", columns: { title: "x" } },
      { seq: 2, group: "g", table: "games", id: "g1", kind: "update", columns: { home_score: 2 } },
      { seq: 3, group: "g", table: "tasks", id: "t2", kind: "delete", columns: {} },
    ]);
    assert.equal(
      body,
      '{"changes":{"games":{"created":[],"updated":[{"id":"g1","home_score":2}],"deleted":[]},"tasks":{"created":[{"id":"t1","title":"x"}],"updated":[],"deleted":["t2"]}},"lastPulledAt":7}',
    );
    assert.deepEqual(JSON.parse(body).changes.tasks.deleted, ["t2"]);
  });
});

describe("answers", () => {
  it("reads each answer as the protocol's client table says", () => {
    assert.equal(classifyPush(200, '{"timestamp":3}', true).replayed, true);
    const rejected = classifyPush(200, '{"timestamp":3,"rejected":[{"table":"t","id":"a","code":"wrong_type","message":"m"}]}', false);
    assert.equal(rejected.rejected[0].code, "wrong_type");
    assert.equal(classifyPush(409, '{"code":"conflict","message":"m","conflicts":{"t":["a"]}}', false).kind, "conflict");
    assert.equal(classifyPush(422, '{"code":"idempotency_key_reused","message":"m"}', false).kind, "appliedEarlier");
    assert.equal(classifyPush(413, '{"code":"too_many_records","message":"m"}', false).kind, "refused");
    assert.equal(classifyPush(401, '{"code":"token_expired","message":"m"}', false).kind, "unauthorized");
    assert.equal(classifyPush(503, "", false).kind, "retry");
    assert.equal(classifyPush(200, '{"timest', false).kind, "retry", "a cut-off body may have been applied");
  });
  it("backs off exponentially with equal jitter, capped", () => {
    const p = { baseMs: 1000, maxMs: 10_000 };
    assert.equal(retryDelay(p, 1, 0), 500);
    assert.equal(retryDelay(p, 1, 0.999999) < 1000, true);
    assert.equal(retryDelay(p, 3, 0), 2000);
    assert.equal(retryDelay(p, 30, 0), 5000);
  });
});

describe("merging pulled records", () => {
  it("lets waiting local columns win and keeps unpushed creations", () => {
    assert.deepEqual(mergePulled({ a: 1, b: 1 }, [c("update", { b: 2 })]), { a: 1, b: 2 });
    assert.equal(mergePulled({ a: 1 }, [c("delete")]), null);
    assert.deepEqual(onPulledDelete([c("create", { a: 1 })]), { action: "keep" });
    assert.deepEqual(onPulledDelete([c("update", { a: 1 })]), { action: "delete", dropWaiting: true });
    assert.equal(survivesReplacement([c("create")]), true);
    assert.equal(survivesReplacement([c("update")]), false);
  });
});

describe("server-sent events", () => {
  it("splits a stream cut anywhere into events", async () => {
    const text = ': hi\n\nevent: ready\ndata: {"user":"a"}\n\r\nevent: changes\ndata: {"sequence":9}\n\n';
    const enc = new TextEncoder().encode(text);
    const stream = new ReadableStream({
      start(ctl) {
        for (let i = 0; i < enc.length; i += 7) ctl.enqueue(enc.slice(i, i + 7));
        ctl.close();
      },
    });
    const got = [];
    for await (const e of readEvents(stream)) got.push(e);
    assert.deepEqual(got, [
      { event: "ready", data: '{"user":"a"}' },
      { event: "changes", data: '{"sequence":9}' },
    ]);
  });
});
