//! `@syncline/client`: the Syncline client SDK for web apps. A local IndexedDB store whose every write
//! lands in a durable outbox, pushed in sealed, idempotent batches and pulled back page by page, with an
//! orchestrator and an observable progress. The wire protocol is docs/protocol.md of the repository.

export { SynclineClient, SynclineError, BulkRejectedError, randomId } from "./client.js";
export type {
  ClientOptions,
  BulkRequest,
  BulkResult,
  BulkCounts,
  OutboxStats,
  ChangeSource,
  Table,
  Tx,
  TxTable,
} from "./client.js";
export type { Json, Columns, Row, OpKind, Change } from "./coalesce.js";
export { coalesce, changedColumns, sameRecord } from "./coalesce.js";
export { mergePulled, onPulledDelete, survivesReplacement } from "./merge.js";
export { planBatch, renderPushBody, classifyPush, retryDelay, DEFAULT_RETRY } from "./batch.js";
export type { PushVerdict, RetryPolicy, RowRejection } from "./batch.js";
export type { ParkedRow, SealedBatch } from "./store.js";
export type { SyncProgress, SyncState, SyncPhase, SyncSummary, TableProgress } from "./progress.js";
export { Observable } from "./progress.js";
export { OfflineError } from "./transport.js";
export type { TokenSource } from "./transport.js";
export { readEvents } from "./events.js";
