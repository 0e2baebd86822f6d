//! HTTP to the server with `fetch`: the bearer token (asked again once when it is refused), the device
//! headers the dashboard reads (`Syncline-Device`, `Syncline-Outbox-Pending`) and the `Idempotency-Key`
//! of writes. Nothing here decides what an answer means; `batch.ts` does.

/** A token, or a function that returns the current one (called again when the server refuses it). */
export type TokenSource = string | (() => string | Promise<string>);

export interface Answer {
  status: number;
  text: string;
  replayed: boolean;
}

/** The server could not be reached (or the answer was cut off). */
export class OfflineError extends Error {
  override name = "OfflineError";
}

export class Transport {
  outboxPending = 0;
  constructor(
    readonly url: string,
    private readonly token: TokenSource,
    readonly device: string,
    private readonly fetchFn: typeof fetch,
  ) {}

  async headers(key?: string): Promise<Record<string, string>> {
    const token = typeof this.token === "function" ? await this.token() : this.token;
    const h: Record<string, string> = {
      Authorization: `Bearer ${token}`,
      "Syncline-Device": this.device,
      "Syncline-Outbox-Pending": String(Math.max(0, Math.trunc(this.outboxPending))),
    };
    if (key) h["Idempotency-Key"] = key;
    return h;
  }

  /** POSTs `body` (exact bytes) and reads the whole answer. A network error or cut-off body throws OfflineError. */
  async post(path: string, body: string, key?: string): Promise<Answer> {
    for (let attempt = 0; ; attempt++) {
      let response: Response;
      let text: string;
      try {
        const headers = { ...(await this.headers(key)), "Content-Type": "application/json" };
        response = await this.fetchFn(this.url + path, { method: "POST", headers, body });
        text = await response.text();
      } catch (e) {
        throw new OfflineError(`${path}: ${e instanceof Error ? e.message : String(e)}`);
      }
      if (response.status === 401 && attempt === 0 && typeof this.token === "function") continue;
      return { status: response.status, text, replayed: response.headers.get("Idempotent-Replayed") === "true" };
    }
  }

  /** Opens `GET path` as a stream (for Server-Sent Events). */
  async stream(path: string, signal: AbortSignal): Promise<Response> {
    return this.fetchFn(this.url + path, { headers: { ...(await this.headers()), Accept: "text/event-stream" }, signal });
  }
}
