// End-to-end test: the REAL WatermelonDB client (@nozbe/watermelondb 0.28.0, `synchronize()` from
// '@nozbe/watermelondb/sync', LokiJS adapter in memory) syncing against a real `syncline serve` process
// over HTTP (POST /v1/sync/pull and /v1/sync/push, sendCreatedAsUpdated: true).
//
// What it proves, as a user of several devices would see it:
//   1. changes made on one device reach the user's other devices (create, update, delete), and users
//      never see each other's data;
//   2. a push based on a stale pull is rejected with 409 `conflict` and nothing is lost: the next
//      synchronize() merges and succeeds, and the merged record reaches the other device;
//   3. create -> sync -> delete -> sync keeps the record deleted (no WatermelonDB #649 echo resurrection),
//      locally and on the server;
//   4. deleting a project deletes its tasks (and their tags) on the server, and on the other device;
//   5. a device upgraded from schema v1 to v2 (local migration + migration sync) receives the v2-only
//      data (task_tags rows, task positions) written by a v2 client before and after its last v1 sync;
//   6. a forged/unsigned/missing token gets 401 with a JSON `{code, message}` body;
//   7. a delete of a record another device deleted between this device's pull and push is accepted (not 409);
//   8. records the server refuses come back in `experimentalRejectedIds` and stay unsynced on the device,
//      while the rest of the push is synced;
//   9. the client's pushed bookkeeping (`_status`, `_changed`) is never stored nor sent to another device;
//  10. after conflicts, merges and deletes, WatermelonDB's own backend check (`diagnoseSyncConsistency`) finds
//      every device equal to the server's full pull, and nothing new to pull;
//  11. a first pull's raw text, small or streamed, has the shape Turbo Login's native parser takes;
//  12. a push the server applied but whose answer the device never got is sent again after a pull, and
//      goes through: created records that exist are updated, with no error and no duplicate;
//  13. a device whose cursor is older than the collected tombstones gets a replacement pull: it drops the
//      records deleted elsewhere, keeps and pushes its own unpushed work, and ends consistent;
//  14. a device holding a cursor the server never reached (the server was restored from an older backup)
//      gets a replacement whose timestamp does not go back below its cursor, so WatermelonDB logs no error.
// Every pull the client makes is also checked against the pull contract (all tables of its schema
// version with created/updated/deleted, `created` empty, positive integer timestamp), and a sync
// fails if WatermelonDB logged an error (that is how it reports server bugs it survives).
// Scenario 2 makes B's push stale the only way the real client allows: A syncs between B's pull and
// B's push (synchronize() always pulls first).
//
// Run from the repo root: `node --test tests/node/` (after `npm ci --prefix tests/node` and
// `cargo build -p syncline`). The server binary is $SYNCLINE_BIN or <repo>/target/debug/syncline.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, execFile } from 'node:child_process'
import { createRequire } from 'node:module'
import { randomBytes, createHmac } from 'node:crypto'
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const { Database, Model, Q, appSchema, tableSchema } = require('@nozbe/watermelondb')
const LokiJSAdapter = require('@nozbe/watermelondb/adapters/lokijs').default
const { synchronize, hasUnsyncedChanges } = require('@nozbe/watermelondb/sync')
const {
  schemaMigrations,
  addColumns,
  createTable,
} = require('@nozbe/watermelondb/Schema/migrations')
const wmLogger = require('@nozbe/watermelondb/utils/common/logger').default
const { diagnoseSyncConsistency } = require('@nozbe/watermelondb/diagnostics')

const HERE = path.dirname(fileURLToPath(import.meta.url))
const REPO = path.resolve(HERE, '..', '..')
const BIN = process.env.SYNCLINE_BIN || path.join(REPO, 'target', 'debug', 'syncline')

const HTTP_TIMEOUT_MS = 10_000
const STARTUP_TIMEOUT_MS = 20_000
const CLI_TIMEOUT_MS = 15_000
const TEST_TIMEOUT_MS = 30_000

// ---------------------------------------------------------------------------------------------
// WatermelonDB's logger: keep the console quiet, but remember every error it logs. The client
// reports server misbehaviour it can survive (e.g. "timestamp went backwards ... server bug",
// "record exists locally") only through logger.error, so each sync asserts none was logged.
const wmErrors = []
const wmLogs = []
wmLogger.error = (...args) => {
  wmErrors.push(args.map((a) => (a instanceof Error ? a.message : String(a))).join(' '))
}
wmLogger.warn = (...args) => wmLogs.push(args.map(String).join(' '))
wmLogger.log = (...args) => wmLogs.push(args.map(String).join(' '))
wmLogger.debug = () => {}

// ---------------------------------------------------------------------------------------------
// Client schema. v2 is the server's current schema; v1 has no tasks.position and no task_tags.

const projectsTable = tableSchema({ name: 'projects', columns: [{ name: 'name', type: 'string' }] })
const tasksV1 = tableSchema({
  name: 'tasks',
  columns: [
    { name: 'title', type: 'string' },
    { name: 'done', type: 'boolean' },
    { name: 'project_id', type: 'string', isIndexed: true },
  ],
})
const positionColumn = { name: 'position', type: 'number', isOptional: true }
const tasksV2 = tableSchema({ name: 'tasks', columns: [...tasksV1.columnArray, positionColumn] })
const taskTagsColumns = [
  { name: 'task_id', type: 'string', isIndexed: true },
  { name: 'tag', type: 'string' },
]
const taskTagsTable = tableSchema({ name: 'task_tags', columns: taskTagsColumns })

const schemaV1 = appSchema({ version: 1, tables: [projectsTable, tasksV1] })
const schemaV2 = appSchema({ version: 2, tables: [projectsTable, tasksV2, taskTagsTable] })
const migrationsV2 = schemaMigrations({
  migrations: [
    {
      toVersion: 2,
      steps: [
        addColumns({ table: 'tasks', columns: [positionColumn] }),
        createTable({ name: 'task_tags', columns: taskTagsColumns }),
      ],
    },
  ],
})

// Plain Model subclasses: no decorators; fields are read with _getRaw and written with _setRaw
// (which, unlike assigning _raw directly, records the column in `_changed` like @field does).
class Project extends Model {
  static table = 'projects'
  static associations = { tasks: { type: 'has_many', foreignKey: 'project_id' } }
}
class TaskV1 extends Model {
  static table = 'tasks'
  static associations = { projects: { type: 'belongs_to', key: 'project_id' } }
}
class Task extends Model {
  static table = 'tasks'
  static associations = {
    projects: { type: 'belongs_to', key: 'project_id' },
    task_tags: { type: 'has_many', foreignKey: 'task_id' },
  }
}
class TaskTag extends Model {
  static table = 'task_tags'
  static associations = { tasks: { type: 'belongs_to', key: 'task_id' } }
}

// ---------------------------------------------------------------------------------------------
// Server process

let tmp
let configFile
let server
let serverExit = null
let serverStderr = ''
let baseUrl
const tokens = {}

function withTimeout(promise, ms, what) {
  let timer
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

function writeConfig(dir) {
  const file = path.join(dir, 'syncline.toml')
  const dbUrl = `sqlite://${path.join(dir, 'syncline.db')}`
  const toml = `
[server]
listen = "127.0.0.1:0"

# Tombstones are collected only when an admin asks (test 13, which runs last); then every one is old enough.
[sync]
tombstone_retention_days = 0

[storage]
url = ${JSON.stringify(dbUrl)}

[auth]
jwt_secret = ${JSON.stringify(randomBytes(32).toString('hex'))}

[tables.projects]
columns = { name = "string" }

[tables.tasks]
columns = { title = "string", done = "boolean", project_id = "string", position = { type = "number", since = 2 } }
parent = { table = "projects", column = "project_id" }

[tables.task_tags]
since = 2
columns = { task_id = "string", tag = "string" }
parents = [{ table = "tasks", column = "task_id" }]
`
  writeFileSync(file, toml)
  return file
}

function startServer() {
  return withTimeout(
    new Promise((resolve, reject) => {
      server = spawn(BIN, ['serve', '--config', configFile], {
        cwd: tmp,
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      let stdoutBuf = ''
      server.on('error', (err) => reject(new Error(`cannot start ${BIN}: ${err.message}`)))
      server.stderr.setEncoding('utf8')
      server.stderr.on('data', (chunk) => {
        serverStderr += chunk
        if (serverStderr.length > 200_000) serverStderr = serverStderr.slice(-100_000)
      })
      server.stdout.setEncoding('utf8')
      server.stdout.on('data', (chunk) => {
        stdoutBuf += chunk
        const m = /^Syncline listening on (http:\/\/\S+?)\/?\r?$/m.exec(stdoutBuf)
        if (m) resolve(m[1])
      })
      server.on('exit', (code, signal) => {
        serverExit = { code, signal }
        reject(
          new Error(
            `syncline serve exited (code ${code}, signal ${signal}) before listening.\n` +
              `stdout:\n${stdoutBuf}\nstderr:\n${serverStderr}`,
          ),
        )
      })
    }),
    STARTUP_TIMEOUT_MS,
    'waiting for the "Syncline listening on http://HOST:PORT" line',
  )
}

async function stopServer() {
  if (!server || serverExit) return
  const exited = new Promise((resolve) => server.once('exit', resolve))
  server.kill('SIGTERM')
  try {
    await withTimeout(exited, 5_000, 'server exit after SIGTERM')
  } catch {
    server.kill('SIGKILL')
    await withTimeout(exited, 5_000, 'server exit after SIGKILL').catch(() => {})
  }
}

function mintToken(user, extra = []) {
  return withTimeout(
    new Promise((resolve, reject) => {
      execFile(
        BIN,
        ['token', '--config', configFile, '--user', user, ...extra],
        { cwd: tmp, timeout: CLI_TIMEOUT_MS },
        (err, stdout, stderr) => {
          if (err) {
            reject(new Error(`syncline token --user ${user} failed: ${err.message}\n${stderr}`))
            return
          }
          const token = stdout.trim()
          if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(token)) {
            reject(new Error(`syncline token did not print a bare JWT; stdout was: ${JSON.stringify(stdout)}`))
            return
          }
          resolve(token)
        },
      )
    }),
    CLI_TIMEOUT_MS + 1_000,
    `syncline token --user ${user}`,
  )
}

before(
  async () => {
    assert.ok(existsSync(BIN), `server binary not found at ${BIN} (build it: cargo build -p syncline)`)
    tmp = mkdtempSync(path.join(tmpdir(), 'syncline-wmelon-'))
    configFile = writeConfig(tmp)
    baseUrl = await startServer()
    for (const user of ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'gina', 'hank']) tokens[user] = await mintToken(user)
    tokens.admin = await mintToken('root', ['--admin'])
  },
  { timeout: STARTUP_TIMEOUT_MS + 10 * (CLI_TIMEOUT_MS + 1_000) },
)

after(async () => {
  await stopServer()
  if (tmp && !process.env.SYNCLINE_KEEP_TMP) rmSync(tmp, { recursive: true, force: true })
})

// Last resort if the runner is torn down abruptly: never leave the server running.
process.on('exit', () => {
  if (server && !serverExit) server.kill('SIGKILL')
})

// ---------------------------------------------------------------------------------------------
// HTTP helpers

async function api(route, token, body, { headers = {} } = {}) {
  const h = { 'content-type': 'application/json', ...headers }
  if (token !== null) h.authorization = `Bearer ${token}`
  let res
  try {
    res = await fetch(baseUrl + route, {
      method: 'POST',
      headers: h,
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(HTTP_TIMEOUT_MS),
    })
  } catch (err) {
    const state = serverExit ? `server exited: ${JSON.stringify(serverExit)}` : 'server still running'
    throw new Error(
      `POST ${route} failed: ${err.message} (${err.cause?.message || ''}); ${state}\n` +
        `server stderr (tail):\n${serverStderr.slice(-4000)}`,
    )
  }
  const text = await res.text()
  let json
  try {
    json = JSON.parse(text)
  } catch {
    json = undefined
  }
  return { status: res.status, json, text, contentType: res.headers.get('content-type') }
}

class HttpError extends Error {
  constructor(route, request, res) {
    super(`${route} -> HTTP ${res.status}: ${res.text.slice(0, 2000)}`)
    this.status = res.status
    this.body = res.json
    this.request = request
  }
}

const rawPull = async (user, body) => {
  const res = await api('/v1/sync/pull', tokens[user], body)
  assert.equal(res.status, 200, `raw pull as ${user} ${JSON.stringify(body)} -> ${res.status} ${res.text}`)
  return res.json
}
const fullPull = (user, schemaVersion = 2) => rawPull(user, { lastPulledAt: null, schemaVersion, migration: null })
const idsIn = (pullBody, table) => {
  const t = pullBody.changes[table]
  assert.ok(t, `pull response has no "${table}" table: ${JSON.stringify(pullBody).slice(0, 500)}`)
  return [...t.created, ...t.updated].map((r) => r.id).sort()
}
const recordIn = (pullBody, table, id) =>
  [...pullBody.changes[table].created, ...pullBody.changes[table].updated].find((r) => r.id === id)

// ---------------------------------------------------------------------------------------------
// Devices: one WatermelonDB Database over its own in-memory LokiJS store.

let deviceCounter = 0
function lokiAdapter(schema, migrations) {
  deviceCounter += 1
  return new LokiJSAdapter({
    dbName: `device-${deviceCounter}`,
    schema,
    ...(migrations ? { migrations } : {}),
    useWebWorker: false,
    useIncrementalIndexedDB: false,
    // No IndexedDB under Node: Loki falls back to its memory adapter. No autosave timer, so nothing
    // keeps the test process alive; data survives a "restart" only via an explicit saveDatabase().
    extraLokiOptions: { autosave: false },
  })
}

function makeDevice(name, user, { schema = schemaV2, migrations, adapter } = {}) {
  const modelClasses = schema.version === 1 ? [Project, TaskV1] : [Project, Task, TaskTag]
  const db = new Database({ adapter: adapter || lokiAdapter(schema, migrations), modelClasses })
  return { name, user, db, http: [] }
}

// The pull contract every WatermelonDB client relies on (SPEC-DRAFT "POST /v1/sync/pull"):
// every table known at the client's schema version, each with all three arrays; `created` always
// empty (everything live is in `updated`, which is what keeps #649 away); a positive integer
// timestamp; no sync bookkeeping columns in records.
const TABLES_AT = { 1: ['projects', 'tasks'], 2: ['projects', 'tasks', 'task_tags'] }
function checkPullShape(request, body) {
  const where = `pull ${JSON.stringify(request)}`
  assert.ok(Number.isSafeInteger(body?.timestamp) && body.timestamp > 0, `${where}: bad timestamp ${body?.timestamp}`)
  for (const table of TABLES_AT[request.schemaVersion]) {
    const t = body.changes?.[table]
    assert.ok(t, `${where}: table "${table}" missing from the response`)
    for (const key of ['created', 'updated', 'deleted']) {
      assert.ok(Array.isArray(t[key]), `${where}: ${table}.${key} is not an array`)
    }
    assert.deepEqual(t.created, [], `${where}: ${table}.created is not empty`)
    for (const rec of t.updated) {
      assert.equal(typeof rec.id, 'string', `${where}: ${table} record without id`)
      assert.ok(!('_status' in rec) && !('_changed' in rec), `${where}: ${table} record carries _status/_changed`)
    }
  }
}

// One synchronize() run with plain fetch-based pullChanges/pushChanges. Every request/response is
// recorded on device.http so tests can assert on what the client actually sent and got.
async function sync(device, { migrationsEnabledAtVersion, beforePush, afterPush } = {}) {
  const errorsBefore = wmErrors.length
  const token = tokens[device.user]
  const call = async (kind, route, request) => {
    const res = await api(route, token, request)
    device.http.push({ kind, request, status: res.status, response: res.json })
    if (res.status !== 200) throw new HttpError(route, request, res)
    if (kind === 'pull') checkPullShape(request, res.json)
    return res.json
  }
  let failure
  try {
    await withTimeout(
      synchronize({
        database: device.db,
        sendCreatedAsUpdated: true,
        ...(migrationsEnabledAtVersion ? { migrationsEnabledAtVersion } : {}),
        pullChanges: (params) => call('pull', '/v1/sync/pull', params),
        pushChanges: async (params) => {
          if (beforePush) await beforePush()
          const answer = await call('push', '/v1/sync/push', params)
          if (afterPush) await afterPush(answer)
          return answer
        },
      }),
      HTTP_TIMEOUT_MS * 4,
      `synchronize() on ${device.name}`,
    )
  } catch (err) {
    failure = err
  }
  const newErrors = wmErrors.slice(errorsBefore)
  assert.deepEqual(newErrors, [], `WatermelonDB logged errors during sync on ${device.name}`)
  if (failure) throw failure
}

const lastHttp = (device, kind) => device.http.filter((h) => h.kind === kind).at(-1)

async function create(device, table, fields) {
  return device.db.write(() =>
    device.db.get(table).create((rec) => {
      for (const [k, v] of Object.entries(fields)) rec._setRaw(k, v)
    }),
  )
}
async function update(device, table, id, fields) {
  const rec = await device.db.get(table).find(id)
  await device.db.write(() =>
    rec.update((r) => {
      for (const [k, v] of Object.entries(fields)) r._setRaw(k, v)
    }),
  )
}
async function markDeleted(device, table, id) {
  const rec = await device.db.get(table).find(id)
  await device.db.write(() => rec.markAsDeleted())
}
// Live (not deleted) local records of a table as plain objects without the sync bookkeeping.
async function local(device, table) {
  const recs = await device.db.get(table).query().fetch()
  return recs
    .map((r) => {
      const { _status, _changed, ...fields } = r._raw
      return fields
    })
    .sort((a, b) => a.id.localeCompare(b.id))
}
const localIds = async (device, table) => (await local(device, table)).map((r) => r.id)
const localOne = async (device, table, id) => (await local(device, table)).find((r) => r.id === id)
const pendingDeletes = (device, table) => device.db.adapter.getDeletedRecords(table)
const unsynced = (device) => hasUnsyncedChanges({ database: device.db })

// ---------------------------------------------------------------------------------------------

test('1. changes flow between devices of one user, and never between users', { timeout: TEST_TIMEOUT_MS }, async () => {
  const a = makeDevice('alice-A', 'alice')
  const b = makeDevice('alice-B', 'alice')
  const c = makeDevice('bob-C', 'bob')
  await sync(a)
  await sync(b)
  await sync(c)

  // create on A -> appears on B
  const home = await create(a, 'projects', { name: 'Home' })
  const milk = await create(a, 'tasks', { title: 'Buy milk', done: false, project_id: home.id })
  await sync(a)
  assert.equal(await unsynced(a), false, 'A still has unsynced changes after a successful sync')
  const push = lastHttp(a, 'push')
  assert.equal(push.status, 200)
  assert.deepEqual(push.request.changes.tasks.created.map((r) => r.id), [milk.id])
  await sync(b)
  assert.deepEqual(await localOne(b, 'projects', home.id), { id: home.id, name: 'Home' })
  assert.deepEqual(await localOne(b, 'tasks', milk.id), {
    id: milk.id,
    title: 'Buy milk',
    done: false,
    project_id: home.id,
    position: null,
  })

  // update on B -> reaches A
  await update(b, 'tasks', milk.id, { title: 'Buy oat milk', done: true })
  await sync(b)
  assert.equal(await unsynced(b), false)
  await sync(a)
  const milkOnA = await localOne(a, 'tasks', milk.id)
  assert.equal(milkOnA.title, 'Buy oat milk')
  assert.equal(milkOnA.done, true)

  // delete on A -> gone on B
  await markDeleted(a, 'tasks', milk.id)
  await sync(a)
  assert.deepEqual(await pendingDeletes(a, 'tasks'), [], 'A kept the delete pending after sync')
  await sync(b)
  assert.deepEqual(await localIds(b, 'tasks'), [], 'the task deleted on A is still on B')
  assert.deepEqual(await pendingDeletes(b, 'tasks'), [])
  assert.deepEqual(await localIds(b, 'projects'), [home.id], 'the project must survive')

  // bob's data and alice's data never mix
  const garage = await create(c, 'projects', { name: "Bob's garage" })
  await create(c, 'tasks', { title: 'Fix bike', done: false, project_id: garage.id })
  await sync(c)
  await sync(a)
  await sync(b)
  await sync(c)
  assert.deepEqual(await localIds(a, 'projects'), [home.id], "alice's device A got bob's project")
  assert.deepEqual(await localIds(b, 'projects'), [home.id], "alice's device B got bob's project")
  assert.deepEqual(await localIds(a, 'tasks'), [])
  assert.deepEqual(await localIds(c, 'projects'), [garage.id], "bob's device got alice's project")
  assert.equal((await local(c, 'tasks')).length, 1)
  assert.deepEqual(idsIn(await fullPull('alice'), 'projects'), [home.id])
  assert.deepEqual(idsIn(await fullPull('bob'), 'projects'), [garage.id])

  // The same id pushed by bob is bob's own record: alice's "Home" must not change.
  const { timestamp: bobTs } = await fullPull('bob')
  const hijack = await api('/v1/sync/push', tokens.bob, {
    lastPulledAt: bobTs,
    changes: { projects: { created: [{ id: home.id, name: 'Hijacked by bob' }], updated: [], deleted: [] } },
  })
  assert.equal(hijack.status, 200, `bob pushing an id alice also uses -> ${hijack.status} ${hijack.text}`)
  await sync(a)
  assert.deepEqual(await localOne(a, 'projects', home.id), { id: home.id, name: 'Home' })
  assert.equal(recordIn(await fullPull('alice'), 'projects', home.id).name, 'Home')
  assert.equal(recordIn(await fullPull('bob'), 'projects', home.id).name, 'Hijacked by bob')
})

test('2. a stale push is rejected with 409, then the next sync merges and succeeds', { timeout: TEST_TIMEOUT_MS }, async () => {
  const a = makeDevice('alice-A2', 'alice')
  const b = makeDevice('alice-B2', 'alice')
  const work = await create(a, 'projects', { name: 'Work' })
  const report = await create(a, 'tasks', { title: 'Write report', done: false, project_id: work.id })
  await sync(a)
  await sync(b)
  assert.equal((await localOne(b, 'tasks', report.id)).title, 'Write report')

  // both edit the same task (different columns) while offline
  await update(a, 'tasks', report.id, { title: 'Write Q3 report' })
  await update(b, 'tasks', report.id, { done: true })

  // synchronize() always pulls before it pushes, so B's push is stale only if A's change reaches the
  // server between B's pull and B's push: A syncs exactly there.
  const syncB = sync(b, {
    beforePush: async () => {
      await sync(a)
      assert.equal(lastHttp(a, 'push').status, 200, "A's push was not accepted")
    },
  })

  await assert.rejects(syncB, (err) => {
    assert.ok(err instanceof HttpError, `expected an HTTP error, got: ${err && err.stack}`)
    assert.equal(err.status, 409, `stale push should be 409, got ${err.status}: ${err.message}`)
    assert.equal(err.body?.code, 'conflict')
    assert.equal(typeof err.body?.message, 'string')
    assert.deepEqual(err.body?.conflicts?.tasks, [report.id])
    return true
  })
  // Nothing of B's push was applied, and B still has its change pending.
  assert.equal(await unsynced(b), true, 'B lost its unsynced change after a rejected push')
  const onServer = recordIn(await fullPull('alice'), 'tasks', report.id)
  assert.equal(onServer.title, 'Write Q3 report')
  assert.equal(onServer.done, false, "a rejected push must not be applied (B's done=true leaked)")

  // B tries again: pulls A's latest title, keeps its own done=true, pushes successfully.
  await sync(b)
  assert.equal(lastHttp(b, 'push').status, 200)
  assert.equal(await unsynced(b), false)
  const onB = await localOne(b, 'tasks', report.id)
  assert.equal(onB.title, 'Write Q3 report')
  assert.equal(onB.done, true)

  // A sees the merged result.
  await sync(a)
  const onA = await localOne(a, 'tasks', report.id)
  assert.equal(onA.title, 'Write Q3 report')
  assert.equal(onA.done, true)
  const merged = recordIn(await fullPull('alice'), 'tasks', report.id)
  assert.equal(merged.title, 'Write Q3 report')
  assert.equal(merged.done, true)
})

test('3. create -> sync -> delete -> sync stays deleted (no #649 echo resurrection)', { timeout: TEST_TIMEOUT_MS }, async () => {
  const a = makeDevice('alice-A3', 'alice')
  await sync(a)
  const inbox = await create(a, 'projects', { name: 'Inbox' })
  const eph = await create(a, 'tasks', { title: 'Ephemeral', done: false, project_id: inbox.id })
  await sync(a)
  assert.ok(idsIn(await fullPull('alice'), 'tasks').includes(eph.id), 'created task did not reach the server')

  await markDeleted(a, 'tasks', eph.id)
  const pushesBefore = a.http.filter((h) => h.kind === 'push').length
  await sync(a)
  // The pull of this sync echoes the record A pushed before; it must not bring it back.
  assert.ok(!(await localIds(a, 'tasks')).includes(eph.id), 'the sync after the delete resurrected the task (#649)')
  const pushes = a.http.filter((h) => h.kind === 'push')
  assert.equal(pushes.length, pushesBefore + 1, 'the delete was not pushed')
  assert.deepEqual(pushes.at(-1).request.changes.tasks.deleted, [eph.id])
  assert.equal(pushes.at(-1).status, 200)
  await sync(a) // one more round trip: the server's echo of the delete
  assert.ok(!(await localIds(a, 'tasks')).includes(eph.id), 'deleted task came back on the device')
  assert.deepEqual(await pendingDeletes(a, 'tasks'), [])
  assert.equal(await unsynced(a), false)

  const full = await fullPull('alice')
  assert.ok(!idsIn(full, 'tasks').includes(eph.id), 'deleted task is still live on the server')
  // A fresh device does not get it either.
  const fresh = makeDevice('alice-fresh3', 'alice')
  await sync(fresh)
  assert.ok(!(await localIds(fresh, 'tasks')).includes(eph.id))
  assert.ok((await localIds(fresh, 'projects')).includes(inbox.id))
})

test('4. deleting a project deletes its tasks (and their tags) everywhere', { timeout: TEST_TIMEOUT_MS }, async () => {
  const a = makeDevice('alice-A4', 'alice')
  const b = makeDevice('alice-B4', 'alice')
  await sync(a)
  const garden = await create(a, 'projects', { name: 'Garden' })
  const keep = await create(a, 'projects', { name: 'Kitchen' })
  const t1 = await create(a, 'tasks', { title: 'Mow lawn', done: false, project_id: garden.id })
  const t2 = await create(a, 'tasks', { title: 'Water roses', done: true, project_id: garden.id })
  const t3 = await create(a, 'tasks', { title: 'Clean oven', done: false, project_id: keep.id })
  const tag1 = await create(a, 'task_tags', { task_id: t1.id, tag: 'weekend' })
  const tag3 = await create(a, 'task_tags', { task_id: t3.id, tag: 'chore' })
  await sync(a)
  await sync(b)
  for (const id of [t1.id, t2.id, t3.id]) assert.ok((await localIds(b, 'tasks')).includes(id))
  assert.ok((await localIds(b, 'task_tags')).includes(tag1.id))

  // Delete only the project record on A (children are left to the server's cascade).
  await markDeleted(a, 'projects', garden.id)
  await sync(a)
  assert.equal(lastHttp(a, 'push').status, 200)
  assert.deepEqual(lastHttp(a, 'push').request.changes.tasks.deleted, [], 'test setup: only the project is deleted')

  const full = await fullPull('alice')
  const serverTasks = idsIn(full, 'tasks')
  assert.ok(!idsIn(full, 'projects').includes(garden.id), 'project still on server')
  assert.ok(!serverTasks.includes(t1.id) && !serverTasks.includes(t2.id), "project's tasks still on server")
  assert.ok(!idsIn(full, 'task_tags').includes(tag1.id), "deleted task's tag still on server")
  assert.ok(serverTasks.includes(t3.id), 'cascade deleted a task of another project')
  assert.ok(idsIn(full, 'task_tags').includes(tag3.id), 'cascade deleted a tag of another project')

  await sync(b)
  assert.ok(!(await localIds(b, 'projects')).includes(garden.id), 'B still has the deleted project')
  assert.deepEqual(
    (await localIds(b, 'tasks')).filter((id) => id === t1.id || id === t2.id),
    [],
    "B still has the deleted project's tasks",
  )
  assert.ok(!(await localIds(b, 'task_tags')).includes(tag1.id), "B still has the deleted task's tag")
  assert.ok((await localIds(b, 'tasks')).includes(t3.id))
  assert.ok((await localIds(b, 'task_tags')).includes(tag3.id))

  // A learns about the cascade on its next sync too.
  await sync(a)
  assert.ok(!(await localIds(a, 'tasks')).includes(t1.id))
  assert.ok(!(await localIds(a, 'tasks')).includes(t2.id))
  assert.ok(!(await localIds(a, 'task_tags')).includes(tag1.id))
})

test('5. a device upgraded from schema v1 to v2 gets v2 data through a migration sync', { timeout: TEST_TIMEOUT_MS }, async () => {
  // A v2 client (raw HTTP) writes v2-shaped data first.
  const t0 = (await fullPull('carol')).timestamp
  const early = await api('/v1/sync/push', tokens.carol, {
    lastPulledAt: t0,
    changes: {
      projects: { created: [{ id: 'proj_errands', name: 'Errands' }], updated: [], deleted: [] },
      tasks: {
        created: [
          { id: 'task_post', title: 'Post letter', done: false, project_id: 'proj_errands', position: 5 },
          { id: 'task_bank', title: 'Go to bank', done: false, project_id: 'proj_errands', position: null },
        ],
        updated: [],
        deleted: [],
      },
      task_tags: {
        created: [
          { id: 'tag_post_urgent', task_id: 'task_post', tag: 'urgent' },
          { id: 'tag_bank_town', task_id: 'task_bank', tag: 'town' },
        ],
        updated: [],
        deleted: [],
      },
    },
  })
  assert.equal(early.status, 200, `v2 push -> ${early.status} ${early.text}`)
  assert.equal(early.json.rejected, undefined, `v2 push rejected rows: ${early.text}`)

  // The device ships schema v1 (no tasks.position, no task_tags) and syncs.
  const v1Adapter = lokiAdapter(schemaV1)
  const v1 = makeDevice('carol-v1', 'carol', { schema: schemaV1, adapter: v1Adapter })
  await sync(v1)
  const v1Pull = lastHttp(v1, 'pull')
  assert.equal(v1Pull.request.schemaVersion, 1)
  assert.equal(v1Pull.request.migration, null)
  assert.ok(!('task_tags' in v1Pull.response.changes), 'a schema v1 pull got the v2-only table task_tags')
  assert.deepEqual(await localIds(v1, 'tasks'), ['task_bank', 'task_post'])
  const v1LastPulledAt = v1Pull.response.timestamp

  // Meanwhile the v2 client keeps writing v2 data.
  const t1 = (await fullPull('carol')).timestamp
  const late = await api('/v1/sync/push', tokens.carol, {
    lastPulledAt: t1,
    changes: {
      projects: { created: [], updated: [], deleted: [] },
      tasks: {
        created: [],
        updated: [{ id: 'task_bank', title: 'Go to bank', done: false, project_id: 'proj_errands', position: 7 }],
        deleted: [],
      },
      task_tags: { created: [{ id: 'tag_post_stamps', task_id: 'task_post', tag: 'stamps' }], updated: [], deleted: [] },
    },
  })
  assert.equal(late.status, 200, `v2 push -> ${late.status} ${late.text}`)

  // The app is updated: same persisted Loki database, now opened with schema v2 + migrations.
  await new Promise((resolve, reject) =>
    v1Adapter._driver.loki.saveDatabase((err) => (err ? reject(err) : resolve())),
  )
  const v2Adapter = await v1Adapter.testClone({ schema: schemaV2, migrations: migrationsV2 })
  const v2 = makeDevice('carol-v2', 'carol', { schema: schemaV2, adapter: v2Adapter })
  // The local migration ran and kept the v1 data (so this is not a fresh first sync).
  assert.deepEqual(await localIds(v2, 'tasks'), ['task_bank', 'task_post'])
  assert.equal((await localOne(v2, 'tasks', 'task_post')).position, null)
  assert.deepEqual(await localIds(v2, 'task_tags'), [])

  await sync(v2, { migrationsEnabledAtVersion: 1 })
  const migPull = v2.http.find((h) => h.kind === 'pull')
  assert.equal(migPull.request.lastPulledAt, v1LastPulledAt)
  assert.equal(migPull.request.schemaVersion, 2)
  assert.deepEqual(migPull.request.migration, {
    from: 1,
    tables: ['task_tags'],
    columns: [{ table: 'tasks', columns: ['position'] }],
  })
  assert.equal(migPull.status, 200)
  // The server answered with the whole new table and the tasks whose new column is set,
  // including rows written before the device's last (v1) pull.
  assert.deepEqual(idsIn(migPull.response, 'task_tags'), ['tag_bank_town', 'tag_post_stamps', 'tag_post_urgent'])
  assert.equal(recordIn(migPull.response, 'tasks', 'task_post')?.position, 5)
  assert.equal(recordIn(migPull.response, 'tasks', 'task_bank')?.position, 7)

  // What the user sees on the upgraded device.
  assert.deepEqual(await local(v2, 'task_tags'), [
    { id: 'tag_bank_town', task_id: 'task_bank', tag: 'town' },
    { id: 'tag_post_stamps', task_id: 'task_post', tag: 'stamps' },
    { id: 'tag_post_urgent', task_id: 'task_post', tag: 'urgent' },
  ])
  assert.equal((await localOne(v2, 'tasks', 'task_post')).position, 5)
  assert.equal((await localOne(v2, 'tasks', 'task_bank')).position, 7)
  assert.equal(await unsynced(v2), false)

  // The migration is done once: the next sync is a plain incremental one and still works.
  await sync(v2, { migrationsEnabledAtVersion: 1 })
  assert.equal(lastHttp(v2, 'pull').request.migration, null)
  await update(v2, 'tasks', 'task_post', { position: 1 })
  await sync(v2, { migrationsEnabledAtVersion: 1 })
  assert.equal(recordIn(await fullPull('carol'), 'tasks', 'task_post').position, 1)
})

function jwt(header, payload, secret) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url')
  const signingInput = `${b64(header)}.${b64(payload)}`
  const sig = secret === null ? '' : createHmac('sha256', secret).update(signingInput).digest('base64url')
  return `${signingInput}.${sig}`
}

test('6. a bad token gets 401 with a JSON {code, message} body', { timeout: TEST_TIMEOUT_MS }, async () => {
  const now = Math.floor(Date.now() / 1000)
  const claims = { sub: 'alice', iat: now, exp: now + 3600 }
  const cases = [
    ['signed with another secret', jwt({ alg: 'HS256', typ: 'JWT' }, claims, randomBytes(32).toString('hex')), 'invalid_token'],
    ['unsigned (alg none)', jwt({ alg: 'none', typ: 'JWT' }, claims, null), 'invalid_token'],
    ['garbage', 'not-a-jwt', 'invalid_token'],
    ['no Authorization header', null, 'missing_token'],
  ]
  for (const [what, token, code] of cases) {
    const res = await api('/v1/sync/pull', token, { lastPulledAt: null, schemaVersion: 2, migration: null })
    assert.equal(res.status, 401, `pull with a token ${what} -> ${res.status} ${res.text}`)
    assert.ok(res.json && typeof res.json === 'object', `401 body is not JSON: ${res.text}`)
    assert.equal(res.json.code, code, `pull with a token ${what}: body ${res.text}`)
    assert.equal(typeof res.json.message, 'string')
    assert.ok(res.json.message.length > 0)
    assert.equal(res.json.changes, undefined, 'a rejected pull leaked data')
  }
  // and the real token still works (the 401s are not a broken server)
  const ok = await api('/v1/sync/pull', tokens.alice, { lastPulledAt: null, schemaVersion: 2, migration: null })
  assert.equal(ok.status, 200)
})

test('7. a delete of a record another device deleted between this pull and push goes through', { timeout: TEST_TIMEOUT_MS }, async () => {
  // WatermelonDB's backend guide (docs/Sync/Backend.md, push rule 4): a record to delete that does not exist
  // MUST be ignored with no error code, "if another user deleted this record in between user's pull and push
  // calls" too. The real client pushes such a delete when the other device syncs exactly there.
  const a = makeDevice('alice-A7', 'alice')
  const b = makeDevice('alice-B7', 'alice')
  const attic = await create(a, 'projects', { name: 'Attic' })
  const junk1 = await create(a, 'tasks', { title: 'Sell lamp', done: false, project_id: attic.id })
  const junk2 = await create(a, 'tasks', { title: 'Bin boxes', done: false, project_id: attic.id })
  await sync(a)
  await sync(b)
  assert.deepEqual((await localIds(b, 'tasks')).filter((id) => id === junk1.id || id === junk2.id).length, 2)

  // A deletes junk1 and the whole project (the server cascades junk2); B deletes junk1 and junk2 itself.
  await markDeleted(a, 'tasks', junk1.id)
  await markDeleted(a, 'projects', attic.id)
  await markDeleted(b, 'tasks', junk1.id)
  await markDeleted(b, 'tasks', junk2.id)
  let aPushedAt
  await sync(b, {
    beforePush: async () => {
      await sync(a)
      assert.equal(lastHttp(a, 'push').status, 200, "A's push was not accepted")
      aPushedAt = lastHttp(a, 'push').response.timestamp
    },
  })
  const push = lastHttp(b, 'push')
  assert.ok(aPushedAt > push.request.lastPulledAt, "test setup: A's deletes are newer than B's pull")
  assert.deepEqual([...push.request.changes.tasks.deleted].sort(), [junk1.id, junk2.id].sort())
  assert.equal(push.status, 200, `B's delete of records already deleted elsewhere -> ${push.status}`)
  assert.equal(await unsynced(b), false, 'B kept its deletes pending')
  assert.deepEqual(await pendingDeletes(b, 'tasks'), [])

  const full = await fullPull('alice')
  assert.ok(!idsIn(full, 'projects').includes(attic.id))
  assert.ok(!idsIn(full, 'tasks').includes(junk1.id) && !idsIn(full, 'tasks').includes(junk2.id))
  await sync(b)
  assert.ok(!(await localIds(b, 'projects')).includes(attic.id), 'B still has the project A deleted')
})

test('8. records the server refuses stay unsynced on the device through experimentalRejectedIds', { timeout: TEST_TIMEOUT_MS }, async () => {
  // This device's app declares tasks.position as a string; the server's column is a number. A task with a
  // position is refused alone (wrong_type) and must stay unsynced (src/sync/impl/markAsSynced.js skips the
  // ids in experimentalRejectedIds); the rest of the push is applied and marked as synced.
  const tasksStringPosition = tableSchema({
    name: 'tasks',
    columns: [...tasksV1.columnArray, { name: 'position', type: 'string', isOptional: true }],
  })
  const schema = appSchema({ version: 2, tables: [projectsTable, tasksStringPosition, taskTagsTable] })
  const d = makeDevice('dave-D8', 'dave', { schema })
  const shed = await create(d, 'projects', { name: 'Shed' })
  const fine = await create(d, 'tasks', { title: 'Oil hinges', done: false, project_id: shed.id, position: null })
  const odd = await create(d, 'tasks', { title: 'Paint door', done: false, project_id: shed.id, position: 'high' })
  await sync(d)
  const push = lastHttp(d, 'push')
  assert.equal(push.status, 200)
  assert.deepEqual(push.response.experimentalRejectedIds, { tasks: [odd.id] })
  assert.equal(push.response.rejected[0].code, 'wrong_type')
  const statusOf = async (id) => (await d.db.get('tasks').find(id))._raw._status
  assert.equal(await statusOf(odd.id), 'created', 'the refused task was marked as synced')
  assert.equal(await statusOf(fine.id), 'synced')
  assert.equal(await unsynced(d), true)
  assert.deepEqual(idsIn(await fullPull('dave'), 'tasks'), [fine.id])

  // Pushed again on the next sync, refused again, still kept; once fixed on the device it goes through.
  await sync(d)
  assert.deepEqual(lastHttp(d, 'push').request.changes.tasks.created.map((r) => r.id), [odd.id])
  assert.equal(await statusOf(odd.id), 'created')
  await update(d, 'tasks', odd.id, { position: null })
  await sync(d)
  assert.equal(lastHttp(d, 'push').response.experimentalRejectedIds, undefined)
  assert.equal(await unsynced(d), false)
  assert.deepEqual(idsIn(await fullPull('dave'), 'tasks'), [fine.id, odd.id].sort())
})

test("9. the client's bookkeeping fields (_status, _changed) are never stored nor sent to another device", { timeout: TEST_TIMEOUT_MS }, async () => {
  // The real client pushes its raw local records, bookkeeping included (src/sync/impl/fetchLocal.js), and
  // refuses a pulled record that carries _status or _changed (validateRemoteRaw in src/sync/impl/applyRemote.js).
  const a = makeDevice('alice-A9', 'alice')
  const b = makeDevice('alice-B9', 'alice')
  await sync(a)
  await sync(b)
  const den = await create(a, 'projects', { name: 'Den' })
  await sync(a)
  await update(a, 'projects', den.id, { name: 'Study' })
  await sync(a)
  const pushed = lastHttp(a, 'push').request.changes.projects.updated
  assert.deepEqual(
    pushed.map((r) => [r.id, r._status, r._changed]),
    [[den.id, 'updated', 'name']],
    'test setup: the client pushes its bookkeeping',
  )
  await sync(b)
  const pulled = lastHttp(b, 'pull').response.changes.projects.updated.find((r) => r.id === den.id)
  assert.deepEqual(pulled, { id: den.id, name: 'Study' })
  assert.deepEqual(await localOne(b, 'projects', den.id), { id: den.id, name: 'Study' })
  assert.equal((await b.db.get('projects').find(den.id))._raw._status, 'synced')
  const raw = await api('/v1/sync/pull', tokens.alice, { lastPulledAt: null, schemaVersion: 2, migration: null })
  assert.ok(!/"_(status|changed)"/.test(raw.text), 'a pull body carries _status or _changed')
})

test("10. WatermelonDB's diagnoseSyncConsistency finds every device consistent with the server", { timeout: TEST_TIMEOUT_MS }, async () => {
  // @nozbe/watermelondb/diagnostics: "compares local database with the server version (contents of first/full
  // sync) to find inconsistencies, missing and excess records. Use this to find bugs in your backend sync
  // implementation." It syncs twice, then needs an incremental pull to be empty and every local record to be
  // synced and equal, column by column, to the full pull's record.
  const a = makeDevice('erin-A10', 'erin')
  const b = makeDevice('erin-B10', 'erin')
  const lab = await create(a, 'projects', { name: 'Lab' })
  const t1 = await create(a, 'tasks', { title: 'Order flasks', done: false, project_id: lab.id, position: 1 })
  const t2 = await create(a, 'tasks', { title: 'Label shelves', done: false, project_id: lab.id, position: 2.5 })
  const t3 = await create(a, 'tasks', { title: 'Clean bench', done: true, project_id: lab.id })
  await create(a, 'task_tags', { task_id: t1.id, tag: 'urgent' })
  await create(a, 'task_tags', { task_id: t3.id, tag: 'weekly' })
  await sync(a)
  await sync(b)

  // A conflicting edit: B's first push is refused (409), its retry merges.
  await update(a, 'tasks', t1.id, { title: 'Order 20 flasks' })
  await update(b, 'tasks', t1.id, { done: true })
  await assert.rejects(sync(b, { beforePush: () => sync(a) }), (err) => err.status === 409)
  await sync(b)
  // Deletes on both sides, one of them cascading on the server, and a new record.
  await markDeleted(a, 'tasks', t3.id)
  await markDeleted(b, 'tasks', t2.id)
  await create(b, 'projects', { name: 'Office' })
  await sync(a)
  await sync(b)

  const pullChanges = async (args) => (await rawPull('erin', args)).changes
  for (const device of [a, b]) {
    const diagnosis = await diagnoseSyncConsistency({ db: device.db, synchronize: () => sync(device), pullChanges })
    assert.equal(diagnosis.issueCount, 0, `${device.name}:\n${diagnosis.log}`)
    assert.match(diagnosis.log, /No corruption found in this database/)
  }
  assert.deepEqual(await local(a, 'tasks'), await local(b, 'tasks'))
  assert.deepEqual(await local(a, 'task_tags'), await local(b, 'task_tags'))
  const tasks = await local(a, 'tasks')
  assert.deepEqual(tasks.map((t) => t.id), [t1.id])
  assert.deepEqual([tasks[0].title, tasks[0].done], ['Order 20 flasks', true])
  assert.deepEqual((await local(a, 'task_tags')).map((t) => t.tag), ['urgent'])
  assert.deepEqual((await local(b, 'projects')).map((p) => p.name).sort(), ['Lab', 'Office'])
})

test("11. a first pull's raw text is what Turbo Login parses", { timeout: TEST_TIMEOUT_MS }, async () => {
  // `unsafeTurbo: true` hands the first pull's body, unparsed, to native code (SQLite with JSI only, so not
  // runnable under Node): native/shared/Database-turboSync.cpp. Its rules: every key of a table other than
  // `created`, `updated` and `deleted` fails ("bad changeset field"), a non-empty `deleted` fails ("expected
  // deleted field to be empty"), a record's `id` is read as a string; the top-level keys but `changes` come
  // back to JavaScript, and synchronize() then needs `timestamp` to be a number above 0
  // (src/sync/impl/synchronize.js). Checked on a small answer and on one large enough to be streamed.
  const turboShape = (text, what) => {
    const body = JSON.parse(text)
    assert.ok(typeof body.timestamp === 'number' && body.timestamp > 0, `${what}: timestamp ${body.timestamp}`)
    let records = 0
    for (const [table, changes] of Object.entries(body.changes)) {
      assert.deepEqual(Object.keys(changes).sort(), ['created', 'deleted', 'updated'], `${what}: ${table}`)
      assert.deepEqual(changes.deleted, [], `${what}: ${table}.deleted is not empty`)
      for (const rec of [...changes.created, ...changes.updated]) {
        assert.equal(typeof rec.id, 'string', `${what}: ${table} record id`)
        records += 1
      }
    }
    return records
  }
  const before = await fullPull('frank')
  const first = await api('/v1/sync/pull', tokens.frank, { lastPulledAt: null, schemaVersion: 2, migration: null })
  assert.equal(turboShape(first.text, 'empty first pull'), 0)
  assert.ok(before.timestamp > 0)

  // Enough rows for a streamed answer (over 64 KiB), with deletes the first pull must leave out.
  const n = 1500
  const projects = Array.from({ length: n }, (_, i) => ({ id: `turbo_p${i}`, name: `Project number ${i} `.repeat(3) }))
  const t0 = (await fullPull('frank')).timestamp
  const seed = await api('/v1/sync/push', tokens.frank, {
    lastPulledAt: t0,
    changes: { projects: { created: projects, updated: [], deleted: [] } },
  })
  assert.equal(seed.status, 200, seed.text)
  const t1 = (await fullPull('frank')).timestamp
  const gone = await api('/v1/sync/push', tokens.frank, {
    lastPulledAt: t1,
    changes: { projects: { created: [], updated: [], deleted: ['turbo_p0', 'turbo_p1'] } },
  })
  assert.equal(gone.status, 200, gone.text)
  const big = await api('/v1/sync/pull', tokens.frank, { lastPulledAt: null, schemaVersion: 2, migration: null })
  assert.equal(big.status, 200)
  assert.ok(big.text.length > 64 * 1024, `test setup: the answer is ${big.text.length} bytes`)
  assert.equal(turboShape(big.text, 'streamed first pull'), n - 2)
})

test('12. a push applied on the server whose answer was lost goes through on the next sync', { timeout: TEST_TIMEOUT_MS }, async () => {
  // docs/Sync/Backend.md, push rule 2: a created record whose id exists MUST be updated, with no error code
  // ("This happens if previous push succeeded on the backend, but not on frontend"). The next synchronize()
  // pulls its own records back, then pushes them again (still `created`/`updated` locally).
  const a = makeDevice('bob-A12', 'bob')
  const b = makeDevice('bob-B12', 'bob')
  await sync(a)
  const yard = await create(a, 'projects', { name: 'Yard' })
  const rake = await create(a, 'tasks', { title: 'Rake leaves', done: false, project_id: yard.id })
  const lost = () => {
    throw new Error('connection reset before the answer arrived')
  }
  await assert.rejects(sync(a, { afterPush: lost }), /connection reset/)
  assert.equal(lastHttp(a, 'push').status, 200, 'test setup: the server applied the push')
  assert.equal(await unsynced(a), true, 'test setup: the device never marked it as synced')
  // Edited again while offline; then the lost push is followed by a good sync.
  await update(a, 'tasks', rake.id, { done: true })
  await sync(a)
  const retry = lastHttp(a, 'push')
  assert.deepEqual(retry.request.changes.projects.created.map((r) => r.id), [yard.id], 'the project is pushed again')
  assert.equal(retry.status, 200)
  assert.equal(await unsynced(a), false)
  await sync(b)
  assert.deepEqual((await local(b, 'projects')).filter((p) => p.id === yard.id), [{ id: yard.id, name: 'Yard' }])
  assert.equal((await localOne(b, 'tasks', rake.id)).done, true)
  const onServer = await fullPull('bob')
  assert.equal(idsIn(onServer, 'projects').filter((id) => id === yard.id).length, 1)
  assert.equal(recordIn(onServer, 'tasks', rake.id).done, true)
})

test('13. a replacement pull after collected tombstones drops what is gone and keeps unpushed work', { timeout: TEST_TIMEOUT_MS }, async () => {
  // docs/protocol.md 4.5; WatermelonDB applies `experimentalStrategy: 'replacement'` (docs/Sync/Frontend.md,
  // "Replacement Sync"): local records not in the answer are destroyed, except ones `created` locally;
  // `updated` ones in the answer go through conflict resolution as usual. Runs last: it collects every
  // user's tombstones.
  const a = makeDevice('gina-A13', 'gina')
  const b = makeDevice('gina-B13', 'gina')
  const p1 = await create(a, 'projects', { name: 'One' })
  const p2 = await create(a, 'projects', { name: 'Two' })
  const p3 = await create(a, 'projects', { name: 'Three' })
  await sync(a)
  await sync(b)
  const p4 = await create(b, 'projects', { name: 'Four (offline)' })
  await update(b, 'projects', p3.id, { name: 'Three (offline)' })
  await markDeleted(a, 'projects', p1.id)
  await markDeleted(a, 'projects', p2.id)
  await sync(a)
  await new Promise((resolve) => setTimeout(resolve, 20)) // the deletes are now older than the 0-day retention
  const gc = await api('/v1/admin/gc', tokens.admin, {})
  assert.equal(gc.status, 200, gc.text)
  assert.ok(gc.json.tombstonesCollected >= 2, `test setup: collected ${gc.text}`)

  await sync(b)
  const pull = lastHttp(b, 'pull')
  assert.equal(pull.response.experimentalStrategy, 'replacement', 'B was not sent a replacement')
  assert.deepEqual(pull.response.changes.projects.deleted, [])
  assert.deepEqual(await local(b, 'projects'), [
    { id: p3.id, name: 'Three (offline)' },
    { id: p4.id, name: 'Four (offline)' },
  ].sort((x, y) => x.id.localeCompare(y.id)))
  assert.equal(lastHttp(b, 'push').status, 200)
  assert.equal(await unsynced(b), false)
  await sync(a)
  assert.deepEqual(await local(a, 'projects'), await local(b, 'projects'))
  const pullChanges = async (args) => (await rawPull('gina', args)).changes
  const diagnosis = await diagnoseSyncConsistency({ db: b.db, synchronize: () => sync(b), pullChanges })
  assert.equal(diagnosis.issueCount, 0, diagnosis.log)
})

test('14. a cursor from a server restored from an older backup: replacement, and time never goes backwards', { timeout: TEST_TIMEOUT_MS }, async () => {
  // setLastPulledAt (src/sync/impl/index.js) logs "[Sync] Pull has finished and received server time ... but
  // previous pulled-at time was greater ... This is most likely server bug" when a pull's timestamp is below
  // the device's cursor; sync() fails on any such logged error.
  const a = makeDevice('hank-A14', 'hank')
  const b = makeDevice('hank-B14', 'hank')
  const kept = await create(a, 'projects', { name: 'Kept' })
  await sync(a)
  await sync(b)
  // The device last pulled from a server state that is gone: its cursor is ahead of the server's.
  const ahead = (await fullPull('hank')).timestamp + 100_000
  await a.db.adapter.setLocal('__watermelon_last_pulled_at', String(ahead))
  const offline = await create(a, 'projects', { name: 'Made offline' })
  await sync(a)
  const pull = lastHttp(a, 'pull')
  assert.equal(pull.request.lastPulledAt, ahead, 'test setup: the client sent its cursor')
  assert.equal(pull.response.experimentalStrategy, 'replacement')
  assert.ok(pull.response.timestamp >= ahead, `timestamp ${pull.response.timestamp} went below ${ahead}`)
  assert.equal(lastHttp(a, 'push').status, 200)
  assert.deepEqual((await localIds(a, 'projects')).sort(), [kept.id, offline.id].sort())
  // Later changes land above the cursor: the next incremental pulls see them, on both devices.
  await update(b, 'projects', kept.id, { name: 'Kept and renamed' })
  await sync(b)
  await sync(a)
  assert.equal(lastHttp(a, 'pull').response.experimentalStrategy, undefined)
  assert.equal((await localOne(a, 'projects', kept.id)).name, 'Kept and renamed')
  assert.deepEqual(await local(b, 'projects'), await local(a, 'projects'))
})
