//! Live notifications: reads `GET /v1/events` (Server-Sent Events, docs/protocol.md section 10.x) with
//! `fetch` streaming, because a browser's `EventSource` cannot send the bearer header. Calls `onChanges`
//! for each `changes` event and reconnects with a growing delay when the stream ends or fails.

import type { Transport } from "./transport.js";

export interface ServerEvent {
  event: string;
  data: string;
}

/** Splits an SSE byte stream into events (the `event:` and `data:` fields of each block). */
export async function* readEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerEvent> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end: number;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data: string[] = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event = value;
          else if (field === "data") data.push(value);
        }
        if (data.length > 0 || event !== "message") yield { event, data: data.join("\n") };
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** Listens until `signal` aborts. `onReady` fires on each (re)connection, `onChanges` on each change event. */
export async function listen(
  transport: Transport,
  signal: AbortSignal,
  handlers: { onChanges: (sequence: number) => void; onReady?: () => void },
): Promise<void> {
  let delay = 500;
  while (!signal.aborted) {
    try {
      const response = await transport.stream("/v1/events", signal);
      if (response.ok && response.body) {
        for await (const e of readEvents(response.body)) {
          if (e.event === "ready") {
            delay = 500;
            handlers.onReady?.();
          } else if (e.event === "changes") {
            let sequence = 0;
            try {
              sequence = Number(JSON.parse(e.data).sequence) || 0;
            } catch {
              // an event without a readable body still means: pull
            }
            handlers.onChanges(sequence);
          }
        }
      } else {
        await response.body?.cancel().catch(() => {});
      }
    } catch {
      // network error or aborted: retried below unless stopped
    }
    if (signal.aborted) return;
    await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random() / 2)));
    delay = Math.min(delay * 2, 30_000);
  }
}
