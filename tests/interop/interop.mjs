#!/usr/bin/env node
// Interop scenarios: the official PowerSync client (@powersync/node, pinned in package.json) syncing against a
// running syncgate. Nothing here imitates the client or the server: the SDK opens the streams, applies the sync
// lines and drives uploads; this script only seeds Postgres, makes changes, plays the app's backend (uploadData
// writes the client's queued CRUD to Postgres with `pg`) and checks what the client's SQLite ends up holding.
//
//   node interop.mjs --scenario NAME --endpoint http://127.0.0.1:PORT --pg-url postgresql://… \
//        --jwt-secret BASE64URL --jwt-kid KID --jwt-aud AUD --dir DIR [--prefix P] [--connection-method http|web-socket]
//
// Scenarios: initial, changes, upload, reconnect, resume (run after reconnect with the same --dir and --prefix:
// a new process opening the same database file), expired-token, token-refresh, and latency (a measurement, run by
// gateway/benches/official_client.rs: --samples, --warmup, --throttle-ms). Each prints one JSON line on stdout,
// {"scenario", "ok", …}, and exits 0 only on success. Progress and the SDK's log go to stderr.
// Tokens: HS256 JWTs minted here with node:crypto from the gateway's oct key (sub, aud, iat, exp, kid header).

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { PowerSyncDatabase, SyncStreamConnectionMethod, LogLevels, UpdateType } from '@powersync/node';
import pg from 'pg';

import { schema } from './schema.mjs';

const { values: args } = parseArgs({
  options: {
    scenario: { type: 'string' },
    endpoint: { type: 'string' },
    'pg-url': { type: 'string' },
    'jwt-secret': { type: 'string' },
    'jwt-kid': { type: 'string', default: 'interop' },
    'jwt-aud': { type: 'string' },
    dir: { type: 'string' },
    prefix: { type: 'string' },
    'connection-method': { type: 'string', default: 'http' },
    'retry-delay-ms': { type: 'string', default: '1000' },
    'timeout-s': { type: 'string', default: '60' },
    'short-ttl-s': { type: 'string', default: '15' },
    'sdk-log-level': { type: 'string', default: 'debug' },
    samples: { type: 'string', default: '30' },
    warmup: { type: 'string', default: '5' },
    'throttle-ms': { type: 'string', default: '0' }
  }
});

for (const required of ['scenario', 'endpoint', 'pg-url', 'jwt-secret', 'jwt-aud', 'dir']) {
  if (!args[required]) {
    console.error(`missing --${required}`);
    process.exit(2);
  }
}

const SCENARIO = args.scenario;
const ENDPOINT = args.endpoint.replace(/\/+$/, '');
const DIR = args.dir;
const PREFIX = args.prefix ?? `${SCENARIO}-${crypto.randomBytes(3).toString('hex')}`;
const TIMEOUT_MS = Number(args['timeout-s']) * 1000;
const RETRY_DELAY_MS = Number(args['retry-delay-ms']);
const CONNECTION_METHOD =
  args['connection-method'] === 'web-socket' ? SyncStreamConnectionMethod.WEB_SOCKET : SyncStreamConnectionMethod.HTTP;
if (!['http', 'web-socket'].includes(args['connection-method'])) {
  console.error(`--connection-method must be http or web-socket`);
  process.exit(2);
}
const HTTP = CONNECTION_METHOD === SyncStreamConnectionMethod.HTTP;
const SDK_LOG_LEVEL = LogLevels[args['sdk-log-level']] ?? LogLevels.debug;
fs.mkdirSync(DIR, { recursive: true });

const started = Date.now();
const since = () => `${((Date.now() - started) / 1000).toFixed(3)}s`;
function log(...parts) {
  console.error(`[${since()}] ${SCENARIO}:`, ...parts);
}

// ---------------------------------------------------------------------------------------------------------------
// The client schema is in schema.mjs.

/** Columns the upload backend may write, per table (everything the client schema has). */
const WRITABLE = {
  lists: ['owner_id', 'name'],
  todos: ['list_id', 'description', 'completed', 'priority']
};

// ---------------------------------------------------------------------------------------------------------------
// Tokens

function mintToken(sub, iat, exp) {
  const header = { alg: 'HS256', typ: 'JWT', kid: args['jwt-kid'] };
  const payload = { sub, aud: args['jwt-aud'], iat, exp };
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
  const signature = crypto.createHmac('sha256', Buffer.from(args['jwt-secret'], 'base64url')).update(input).digest('base64url');
  return `${input}.${signature}`;
}

const now = () => Math.floor(Date.now() / 1000);
/** Token plans: the claims of the n-th token (1-based) fetchCredentials hands out. */
const TOKENS = {
  valid: () => ({ iat: now(), exp: now() + 3600 }),
  // The first token expired 5 minutes ago (beyond any clock tolerance); later ones are valid.
  expiredFirst: (n) => (n === 1 ? { iat: now() - 900, exp: now() - 300 } : { iat: now(), exp: now() + 3600 }),
  // The first token lives only --short-ttl-s seconds; later ones an hour.
  shortFirst: (n) => (n === 1 ? { iat: now(), exp: now() + Number(args['short-ttl-s']) } : { iat: now(), exp: now() + 3600 })
};

// ---------------------------------------------------------------------------------------------------------------
// Postgres: seed data, the upload backend, and what each user must hold.

const pool = new pg.Pool({ connectionString: args['pg-url'], max: 4 });

const user = (name) => `${PREFIX}-${name}`;
const listId = (name) => `${PREFIX}-${name}`;

async function seed({ bulkTodos = 0 } = {}) {
  const c = await pool.connect();
  try {
    await c.query('BEGIN');
    await c.query('INSERT INTO lists (id, owner_id, name) VALUES ($1, $2, $3), ($4, $5, $6), ($7, $8, $9)', [
      listId('groceries'), user('alice'), 'Groceries',
      listId('trip'), user('bob'), 'Trip',
      listId('chores'), user('carol'), 'Chores'
    ]);
    // Bob shares his trip with Alice.
    await c.query('INSERT INTO list_members (id, list_id, user_id) VALUES ($1, $2, $3)', [`${PREFIX}-m1`, listId('trip'), user('alice')]);
    await c.query(
      `INSERT INTO todos (id, list_id, description, completed, priority) VALUES
         ($1, $2, 'Milk', false, 2), ($3, $2, 'Bread', true, NULL), ($4, $5, 'Book flights', false, 1), ($6, $7, 'Vacuum', false, 3)`,
      [`${PREFIX}-t1`, listId('groceries'), `${PREFIX}-t2`, `${PREFIX}-t3`, listId('trip'), `${PREFIX}-t4`, listId('chores')]
    );
    if (bulkTodos > 0) {
      await c.query(
        `INSERT INTO todos (id, list_id, description, completed, priority)
           SELECT $1 || '-bulk-' || i, $2, 'bulk todo ' || i || ' ' || repeat('x', 100), i % 2 = 0, i FROM generate_series(1, $3::int) i`,
        [PREFIX, listId('groceries'), bulkTodos]
      );
    }
    await c.query('COMMIT');
  } catch (e) {
    await c.query('ROLLBACK');
    throw e;
  } finally {
    c.release();
  }
}

async function sql(text, params = []) {
  return (await pool.query(text, params)).rows;
}

/** What `sub` must hold by sync-rules.yaml, read from Postgres, in the client's value forms (boolean → 0/1). */
async function expectedRows(sub) {
  const lists = `SELECT id FROM lists WHERE owner_id = $1 UNION SELECT list_id FROM list_members WHERE user_id = $1`;
  return {
    lists: await sql(`SELECT id, owner_id, name FROM lists WHERE id IN (${lists}) ORDER BY id`, [sub]),
    todos: await sql(
      `SELECT id, list_id, description, completed::int AS completed, priority FROM todos WHERE list_id IN (${lists}) ORDER BY id`,
      [sub]
    ),
    announcements: await sql('SELECT id, body FROM announcements ORDER BY id')
  };
}

async function clientRows(db) {
  return {
    lists: await db.getAll('SELECT id, owner_id, name FROM lists ORDER BY id'),
    todos: await db.getAll('SELECT id, list_id, description, completed, priority FROM todos ORDER BY id'),
    announcements: await db.getAll('SELECT id, body FROM announcements ORDER BY id')
  };
}

/** Text columns the backend trims, as backends normalize input: the server's row then differs from the client's
 * local one, so the client can only show the server version after applying the write-checkpointed checkpoint. */
const TRIMMED = ['description', 'name'];

/** The app backend: applies one CRUD batch to Postgres in one transaction. */
async function applyBatch(name, entries) {
  const c = await pool.connect();
  try {
    await c.query('BEGIN');
    for (const entry of entries) {
      const columns = WRITABLE[entry.table];
      if (!columns) throw new Error(`upload for unknown table ${entry.table}`);
      const data = entry.opData ?? {};
      const cols = Object.keys(data).filter((k) => columns.includes(k));
      const value = (k) => (TRIMMED.includes(k) && typeof data[k] === 'string' ? data[k].trim() : data[k]);
      log(`${name} uploads ${entry.op} ${entry.table}/${entry.id} ${JSON.stringify(data)}`);
      if (entry.op === UpdateType.PUT) {
        const names = ['id', ...cols];
        const placeholders = names.map((_, i) => `$${i + 1}`);
        const update = cols.length ? `DO UPDATE SET ${cols.map((k) => `${k} = EXCLUDED.${k}`).join(', ')}` : 'DO NOTHING';
        await c.query(
          `INSERT INTO ${entry.table} (${names.join(', ')}) VALUES (${placeholders.join(', ')}) ON CONFLICT (id) ${update}`,
          [entry.id, ...cols.map((k) => value(k))]
        );
      } else if (entry.op === UpdateType.PATCH) {
        if (cols.length) {
          await c.query(`UPDATE ${entry.table} SET ${cols.map((k, i) => `${k} = $${i + 2}`).join(', ')} WHERE id = $1`, [
            entry.id,
            ...cols.map((k) => value(k))
          ]);
        }
      } else if (entry.op === UpdateType.DELETE) {
        await c.query(`DELETE FROM ${entry.table} WHERE id = $1`, [entry.id]);
      } else {
        throw new Error(`unknown op ${entry.op}`);
      }
    }
    await c.query('COMMIT');
  } catch (e) {
    await c.query('ROLLBACK');
    throw e;
  } finally {
    c.release();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Observing the SDK's HTTP traffic (without changing it): which requests it makes, with which token and which
// bucket positions, and how many ops each sync stream delivered.

/**
 * Counts ops and line types of a sync stream body (NDJSON or BSON) as the SDK receives it (decompressed).
 * Returns `{ chunk(bytes), end(how) }` for the pass-through stream below.
 */
function streamObserver(stream, contentType, name) {
  const bson = contentType.startsWith('application/vnd.powersync.bson-stream');
  let pending = Buffer.alloc(0);
  const onLine = (type, ops, detail) => {
    stream.lines[type] = (stream.lines[type] ?? 0) + 1;
    stream.ops += ops;
    if (type !== 'data') log(`${name} stream#${stream.n} ← ${type}${detail ? ' ' + detail : ''}`);
  };
  const chunk = (value) => {
    pending = Buffer.concat([pending, Buffer.from(value)]);
    if (bson) {
      while (pending.length >= 4 && pending.readInt32LE(0) <= pending.length) {
        const doc = pending.subarray(0, pending.readInt32LE(0));
        pending = pending.subarray(doc.length);
        const keyEnd = doc.indexOf(0, 5);
        const type = doc.subarray(5, keyEnd).toString('latin1');
        // Each op is a document with a string element `op_id` (0x02 'op_id' 0x00).
        let ops = 0;
        for (let i = doc.indexOf('\x02op_id\x00', 0, 'latin1'); i >= 0; i = doc.indexOf('\x02op_id\x00', i + 1, 'latin1')) ops++;
        onLine(type, type === 'data' ? ops : 0, '');
      }
      return;
    }
    let nl;
    while ((nl = pending.indexOf(10)) >= 0) {
      const text = pending.subarray(0, nl).toString('utf8').trim();
      pending = pending.subarray(nl + 1);
      if (!text) continue;
      let line;
      try {
        line = JSON.parse(text);
      } catch {
        onLine('unparsable', 0, text.slice(0, 200));
        continue;
      }
      const type = Object.keys(line)[0];
      const value = line[type];
      let detail = '';
      if (type === 'checkpoint' || type === 'checkpoint_diff') {
        const buckets = value.buckets ?? value.updated_buckets ?? [];
        detail = `last_op_id=${value.last_op_id} write_checkpoint=${value.write_checkpoint} buckets=${buckets.map((b) => `${b.bucket}:${b.count}`).join(',')}`;
        if (value.removed_buckets?.length) detail += ` removed=${value.removed_buckets.join(',')}`;
      } else if (type !== 'data') {
        detail = JSON.stringify(value);
      }
      onLine(type, type === 'data' ? (value.data?.length ?? 0) : 0, detail);
    }
  };
  const end = (how) => {
    if (stream.end !== null) return;
    stream.end = how;
    log(`${name} stream#${stream.n} ${how} after ${stream.ops} op(s)`);
  };
  return { chunk, end };
}

/** The body as the SDK would read it, observed on the way: same chunks, and cancelling it cancels the body. */
function observedBody(body, observer) {
  const source = body.getReader();
  return new ReadableStream(
    {
      async pull(controller) {
        try {
          const { done, value } = await source.read();
          if (done) {
            observer.end('ended by the server');
            controller.close();
            return;
          }
          observer.chunk(value);
          controller.enqueue(value);
        } catch (e) {
          observer.end(`failed: ${e?.name ?? e}`);
          controller.error(e);
        }
      },
      cancel(reason) {
        observer.end('closed by the client');
        return source.cancel(reason);
      }
    },
    { highWaterMark: 0 }
  );
}

function observingFetch(name, stats) {
  return async (resource, init = {}) => {
    const url = new URL(String(resource));
    const headers = new Headers(init.headers ?? {});
    const token = (headers.get('authorization') ?? '').replace(/^Token /, '');
    const request = { method: init.method ?? 'GET', path: url.pathname, token: stats.tokens.indexOf(token) + 1, t: since() };
    stats.requests.push(request);
    if (url.pathname === '/sync/stream' && typeof init.body === 'string') {
      try {
        const body = JSON.parse(init.body);
        request.buckets = (body.buckets ?? []).map((b) => `${b.name}@${b.after}`);
      } catch {}
    }
    let res;
    try {
      res = await fetch(resource, init);
    } catch (e) {
      request.error = String(e?.cause ?? e);
      log(`${name} ${request.method} ${request.path} (token #${request.token}) failed: ${request.error}`);
      throw e;
    }
    request.status = res.status;
    log(`${name} ${request.method} ${url.pathname}${url.search} (token #${request.token}) → ${res.status}${request.buckets ? ' buckets=' + JSON.stringify(request.buckets) : ''}`);
    if (url.pathname === '/sync/stream' && res.ok && res.body) {
      const stream = { n: stats.streams.length + 1, token: request.token, buckets: request.buckets, ops: 0, lines: {}, end: null };
      stats.streams.push(stream);
      const observer = streamObserver(stream, res.headers.get('content-type') ?? '', name);
      return new Response(observedBody(res.body, observer), { status: res.status, statusText: res.statusText, headers: res.headers });
    }
    if (!res.ok || url.pathname === '/write-checkpoint2.json') {
      request.body = (await res.clone().text()).slice(0, 500);
      log(`${name}   body: ${request.body}`);
    }
    return res;
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Clients

const clients = [];

/** A PowerSync database for `sub` in DIR/<prefix>-<name>.db, with a connector and request observation (unless
 * `observe` is false: then the SDK fetches with its own default implementation, untouched). */
function openClient(name, sub, tokenPlan = TOKENS.valid, { observe = true } = {}) {
  const stats = { tokens: [], credentialFetches: 0, uploads: 0, uploadedOps: 0, requests: [], streams: [] };
  const sdkLogger = {
    log(record) {
      if (record.level < SDK_LOG_LEVEL) return;
      const error = record.error ? ` (${record.error?.stack ?? record.error})` : '';
      log(`${name} sdk[${record.level}] ${record.message}${error}`);
    }
  };
  const db = new PowerSyncDatabase({
    schema,
    database: { dbFilename: `${PREFIX}-${name}.db`, dbLocation: DIR },
    logger: sdkLogger,
    remoteOptions: observe ? { customFetch: observingFetch(name, stats) } : undefined
  });
  const connector = {
    async fetchCredentials() {
      const n = ++stats.credentialFetches;
      const { iat, exp } = tokenPlan(n);
      const token = mintToken(sub, iat, exp);
      stats.tokens.push(token);
      log(`${name} fetchCredentials #${n}: sub=${sub} exp in ${exp - now()} s`);
      return { endpoint: ENDPOINT, token };
    },
    async uploadData(database) {
      const batch = await database.getCrudBatch(100);
      if (!batch) return;
      await applyBatch(name, batch.crud);
      stats.uploads++;
      stats.uploadedOps += batch.crud.length;
      await batch.complete();
      log(`${name} upload batch of ${batch.crud.length} committed and completed`);
    }
  };
  const client = {
    name,
    sub,
    db,
    stats,
    connector,
    async connect() {
      const t0 = Date.now();
      const connected = db.connect(connector, { connectionMethod: CONNECTION_METHOD, retryDelayMs: RETRY_DELAY_MS });
      await withTimeout(connected, `${name} connect()`, () => ({ status: client.status(), ...client.summary() }));
      log(`${name} connect() resolved in ${Date.now() - t0} ms`);
    },
    /** waitForFirstSync(), failing with the status if it does not come within the timeout. */
    async firstSync() {
      const t0 = Date.now();
      await db.waitForFirstSync({ signal: AbortSignal.timeout(TIMEOUT_MS) });
      assert(db.currentStatus.hasSynced, `${name}: no first sync within ${TIMEOUT_MS} ms`, { status: client.status(), ...client.summary() });
      return Date.now() - t0;
    },
    status() {
      const s = db.currentStatus;
      return {
        connected: s.connected,
        hasSynced: s.hasSynced,
        lastSyncedAt: s.lastSyncedAt?.toISOString() ?? null,
        downloading: s.dataFlowStatus.downloading,
        uploading: s.dataFlowStatus.uploading,
        downloadError: s.dataFlowStatus.downloadError ? String(s.dataFlowStatus.downloadError) : null,
        uploadError: s.dataFlowStatus.uploadError ? String(s.dataFlowStatus.uploadError) : null
      };
    },
    async buckets() {
      return (await db.getAll("SELECT name FROM ps_buckets WHERE name != '$local' ORDER BY name")).map((r) => r.name);
    },
    async crudCount() {
      return (await db.get('SELECT count(*) AS n FROM ps_crud')).n;
    },
    summary() {
      return {
        credential_fetches: stats.credentialFetches,
        uploads: stats.uploads,
        uploaded_ops: stats.uploadedOps,
        streams: stats.streams.map((s) => ({ token: s.token, ops: s.ops, lines: s.lines, end: s.end, resumed_from: s.buckets })),
        requests: stats.requests.map((r) => `${r.t} ${r.method} ${r.path} token#${r.token} → ${r.status ?? r.error}`)
      };
    }
  };
  clients.push(client);
  return client;
}

// ---------------------------------------------------------------------------------------------------------------
// Waiting

async function withTimeout(promise, description, detail, timeoutMs = TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${description} did not finish within ${timeoutMs} ms: ${JSON.stringify(detail())}`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function waitFor(description, check, timeoutMs = TIMEOUT_MS) {
  const t0 = Date.now();
  let last;
  for (;;) {
    last = await check();
    if (last === true || (last && last.ok)) {
      const ms = Date.now() - t0;
      log(`✓ ${description} (${ms} ms)`);
      return ms;
    }
    if (Date.now() - t0 > timeoutMs) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for: ${description}; last: ${JSON.stringify(last?.detail ?? last)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits until the client's tables equal what Postgres says `client.sub` must hold; returns the latency in ms. */
async function waitInSync(client, description, timeoutMs = TIMEOUT_MS) {
  return waitFor(
    `${client.name} in sync: ${description}`,
    async () => {
      const [want, have] = [await expectedRows(client.sub), await clientRows(client.db)];
      const ok = JSON.stringify(want) === JSON.stringify(have);
      return { ok, detail: ok ? null : { want, have, status: client.status() } };
    },
    timeoutMs
  );
}

function assert(condition, message, detail) {
  if (!condition) throw new Error(`${message}${detail === undefined ? '' : ': ' + JSON.stringify(detail)}`);
}

/** A counter of the gateway's /metrics (summed over labels), or null if it has no /metrics. */
async function metric(name) {
  try {
    const res = await fetch(`${ENDPOINT}/metrics`);
    if (!res.ok) return null;
    let total = null;
    for (const line of (await res.text()).split('\n')) {
      const m = line.match(/^(\w+)(\{[^}]*\})?\s+([0-9.eE+-]+)/);
      if (m && m[1] === name) total = (total ?? 0) + Number(m[3]);
    }
    return total;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Scenarios

const result = { scenario: SCENARIO, prefix: PREFIX, connection_method: args['connection-method'], ok: false, latencies_ms: {} };

const scenarios = {
  /** Two users with different buckets each see exactly their rows. */
  async initial() {
    await seed();
    const alice = openClient('alice', user('alice'));
    const bob = openClient('bob', user('bob'));
    await Promise.all([alice.connect(), bob.connect()]);
    const t0 = Date.now();
    await Promise.all([alice.firstSync(), bob.firstSync()]);
    result.latencies_ms.first_sync = Date.now() - t0;
    result.latencies_ms.alice = await waitInSync(alice, 'initial sync');
    result.latencies_ms.bob = await waitInSync(bob, 'initial sync');
    const [a, b] = [await clientRows(alice.db), await clientRows(bob.db)];
    result.alice = { buckets: await alice.buckets(), lists: a.lists.map((r) => r.id), todos: a.todos.map((r) => r.id) };
    result.bob = { buckets: await bob.buckets(), lists: b.lists.map((r) => r.id), todos: b.todos.map((r) => r.id) };
    // Alice: her groceries and Bob's shared trip; Bob: only his trip. Carol's chores reach nobody.
    assert(JSON.stringify(result.alice.lists) === JSON.stringify([listId('groceries'), listId('trip')]), 'alice lists', result.alice);
    assert(JSON.stringify(result.bob.lists) === JSON.stringify([listId('trip')]), 'bob lists', result.bob);
    assert(JSON.stringify(result.alice.todos) === JSON.stringify([`${PREFIX}-t1`, `${PREFIX}-t2`, `${PREFIX}-t3`]), 'alice todos', result.alice);
    assert(JSON.stringify(result.bob.todos) === JSON.stringify([`${PREFIX}-t3`]), 'bob todos', result.bob);
    assert(a.announcements.length >= 2 && b.announcements.length >= 2, 'announcements reach everyone', a.announcements);
    assert(result.alice.buckets.length === 3 && result.bob.buckets.length === 2, 'bucket counts (global + one per list)', {
      alice: result.alice.buckets,
      bob: result.bob.buckets
    });
    for (const c of [alice, bob]) {
      const s = c.status();
      assert(s.connected && s.hasSynced && !s.downloadError, `${c.name} status`, s);
    }
  },

  /** Inserts, updates and deletes made in Postgres reach each client that should see them. */
  async changes() {
    await seed();
    const alice = openClient('alice', user('alice'));
    const bob = openClient('bob', user('bob'));
    await Promise.all([alice.connect(), bob.connect()]);
    await Promise.all([alice.firstSync(), bob.firstSync()]);
    await waitInSync(alice, 'initial');
    await waitInSync(bob, 'initial');
    const step = async (name, text, params = []) => {
      log(`postgres: ${name}`);
      await sql(text, params);
      const [a, b] = await Promise.all([waitInSync(alice, name), waitInSync(bob, name)]);
      result.latencies_ms[name] = { alice: a, bob: b };
    };
    await step('insert todo in shared list', `INSERT INTO todos (id, list_id, description, priority) VALUES ($1, $2, 'Pack bags', 4)`, [`${PREFIX}-t5`, listId('trip')]);
    await step('update todo in own list', `UPDATE todos SET description = 'Oat milk', completed = true WHERE id = $1`, [`${PREFIX}-t1`]);
    await step('update todo in shared list', `UPDATE todos SET priority = NULL WHERE id = $1`, [`${PREFIX}-t3`]);
    await step('delete todo in shared list', `DELETE FROM todos WHERE id = $1`, [`${PREFIX}-t5`]);
    await step('share groceries with bob (new bucket)', `INSERT INTO list_members (id, list_id, user_id) VALUES ($1, $2, $3)`, [`${PREFIX}-m2`, listId('groceries'), user('bob')]);
    assert((await bob.buckets()).length === 3, 'bob gained the groceries bucket', await bob.buckets());
    await step('unshare trip from alice (bucket removed)', `DELETE FROM list_members WHERE id = $1`, [`${PREFIX}-m1`]);
    assert((await alice.buckets()).length === 2, 'alice lost the trip bucket', await alice.buckets());
    await step('insert announcement (global bucket)', `INSERT INTO announcements (id, body) VALUES ($1, 'Changes scenario')`, [`${PREFIX}-a1`]);
    await step('delete announcement', `DELETE FROM announcements WHERE id = $1`, [`${PREFIX}-a1`]);
    await step(
      'multi-row transaction',
      `WITH a AS (INSERT INTO todos (id, list_id, description) VALUES ($1, $3, 'Eggs'), ($2, $3, 'Butter') RETURNING 1)
       UPDATE lists SET name = 'Groceries (weekly)' WHERE id = $3`,
      [`${PREFIX}-t6`, `${PREFIX}-t7`, listId('groceries')]
    );
    for (const c of [alice, bob]) {
      const s = c.status();
      assert(s.connected && s.hasSynced && !s.downloadError, `${c.name} status`, s);
    }
  },

  /** Local writes go through uploadData to Postgres and come back acknowledged by a write checkpoint. */
  async upload() {
    await seed();
    const alice = openClient('alice', user('alice'));
    await alice.connect();
    await alice.firstSync();
    await waitInSync(alice, 'initial');
    const newList = `${PREFIX}-party-${crypto.randomUUID()}`;
    const newTodo = crypto.randomUUID();
    const newTodoInNewList = crypto.randomUUID();
    log('client: insert, update and delete locally');
    const t0 = Date.now();
    await alice.db.writeTransaction(async (tx) => {
      await tx.execute('INSERT INTO todos (id, list_id, description, completed, priority) VALUES (?, ?, ?, 0, 5)', [newTodo, listId('groceries'), ' Cheese ']);
      await tx.execute("UPDATE todos SET description = 'Whole milk  ', completed = 1 WHERE id = ?", [`${PREFIX}-t1`]);
      await tx.execute('DELETE FROM todos WHERE id = ?', [`${PREFIX}-t2`]);
    });
    // A second transaction: a new list (a new bucket for Alice, through the parameter query) with a todo.
    await alice.db.writeTransaction(async (tx) => {
      await tx.execute('INSERT INTO lists (id, owner_id, name) VALUES (?, ?, ?)', [newList, user('alice'), 'Party ']);
      await tx.execute('INSERT INTO todos (id, list_id, description, completed) VALUES (?, ?, ?, 0)', [newTodoInNewList, newList, '  Balloons']);
    });
    result.latencies_ms.uploaded = await waitFor('ps_crud empty (uploaded)', async () => (await alice.crudCount()) === 0);
    const pgState = async () => ({
      new_todo: await sql('SELECT description, completed, priority FROM todos WHERE id = $1', [newTodo]),
      updated: await sql('SELECT description, completed FROM todos WHERE id = $1', [`${PREFIX}-t1`]),
      deleted: await sql('SELECT 1 FROM todos WHERE id = $1', [`${PREFIX}-t2`]),
      new_list: await sql('SELECT owner_id, name FROM lists WHERE id = $1', [newList]),
      new_list_todo: await sql('SELECT description FROM todos WHERE id = $1', [newTodoInNewList])
    });
    const state = await pgState();
    assert(state.new_todo.length === 1 && state.new_todo[0].description === 'Cheese' && state.new_todo[0].completed === false && state.new_todo[0].priority === 5, 'insert reached postgres', state);
    assert(state.updated[0]?.description === 'Whole milk' && state.updated[0]?.completed === true, 'update reached postgres', state);
    assert(state.deleted.length === 0, 'delete reached postgres', state);
    assert(state.new_list.length === 1 && state.new_list_todo.length === 1, 'new list reached postgres', state);
    // The backend trimmed the texts: only the checkpoint carrying the write checkpoint brings the trimmed versions.
    result.latencies_ms.round_trip = await waitFor('write checkpoint acknowledged: client equals postgres, new bucket synced', async () => {
      const [want, have] = [await expectedRows(alice.sub), await clientRows(alice.db)];
      const buckets = await alice.buckets();
      const ok = JSON.stringify(want) === JSON.stringify(have) && buckets.length === 4 && alice.status().hasSynced;
      return { ok, detail: { want, have, buckets, status: alice.status() } };
    });
    result.latencies_ms.total = Date.now() - t0;
    const checkpoints = alice.stats.requests.filter((r) => r.path === '/write-checkpoint2.json');
    result.write_checkpoint_requests = checkpoints.map((r) => ({ status: r.status, body: r.body }));
    assert(checkpoints.some((r) => r.status === 200), 'the SDK got a write checkpoint', result.write_checkpoint_requests);
    // Downloads are not frozen behind the local writes: a later server change arrives.
    await sql(`INSERT INTO todos (id, list_id, description) VALUES ($1, $2, 'Server-side after upload')`, [`${PREFIX}-t8`, listId('groceries')]);
    result.latencies_ms.server_change_after_upload = await waitInSync(alice, 'server change after the upload');
    const s = alice.status();
    assert((await alice.crudCount()) === 0, 'ps_crud empty');
    assert(s.connected && s.hasSynced && !s.downloadError && !s.uploadError && !s.uploading, 'status after upload', s);
    // The core's own record: the write checkpoint the gateway issued is the last one applied.
    const kv = Object.fromEntries(
      (await alice.db.getAll("SELECT key, CAST(value AS TEXT) AS value FROM ps_kv WHERE key LIKE '%checkpoint_request_id'")).map((r) => [r.key, r.value])
    );
    result.ps_kv = kv;
    const issued = checkpoints.filter((r) => r.status === 200).map((r) => JSON.parse(r.body).data.write_checkpoint);
    assert(issued.length > 0 && BigInt(kv.last_applied_checkpoint_request_id ?? 0) >= BigInt(issued[issued.length - 1]), 'the client applied the issued write checkpoint', { kv, issued });
    result.ids = { new_todo: newTodo, updated_todo: `${PREFIX}-t1`, deleted_todo: `${PREFIX}-t2`, new_list: newList, new_list_todo: newTodoInNewList };
  },

  /** Disconnect and connect again in one process: the client resumes from its op ids. Leaves the file for `resume`. */
  async reconnect() {
    const BULK = 300;
    await seed({ bulkTodos: BULK });
    const alice = openClient('alice', user('alice'));
    const metric0 = await metric('syncgate_ops_sent_total');
    await alice.connect();
    await alice.firstSync();
    result.latencies_ms.first_sync = await waitInSync(alice, 'initial');
    const metric1 = await metric('syncgate_ops_sent_total');
    const first = alice.stats.streams[0];
    await alice.db.disconnect();
    if (HTTP) await waitFor('the first stream closed by disconnect()', async () => ({ ok: first?.end !== null, detail: alice.summary() }));
    log('disconnected; changing postgres');
    await sql(`UPDATE todos SET description = 'changed while offline' WHERE id = $1`, [`${PREFIX}-bulk-1`]);
    await sql(`INSERT INTO todos (id, list_id, description) VALUES ($1, $2, 'added while offline')`, [`${PREFIX}-t9`, listId('groceries')]);
    const streamsBefore = alice.stats.streams.length;
    await alice.connect();
    result.latencies_ms.resync = await waitInSync(alice, 'after reconnect');
    const metric2 = await metric('syncgate_ops_sent_total');
    if (metric0 !== null) result.metric_ops_sent = { first: metric1 - metric0, reconnect: metric2 - metric1 };
    if (HTTP) {
      // Counted on the client (the WebSocket transport is not observable here: the gateway's metric only).
      const resumed = alice.stats.streams.slice(streamsBefore);
      result.client_ops = { first: first?.ops, reconnect: resumed.reduce((n, s) => n + s.ops, 0) };
      result.reconnect_request = resumed[0]?.buckets;
      assert(resumed.length >= 1, 'a new stream after connect()', alice.summary());
      assert(resumed[0].buckets.length >= 3 && resumed[0].buckets.every((b) => !b.endsWith('@0')), 'the reconnect request carries every bucket with its op id', resumed[0].buckets);
    }
    const ops = result.client_ops ?? result.metric_ops_sent;
    assert(ops, 'ops are counted on the client (HTTP) or by the gateway (/metrics)');
    result.ops_first = ops.first;
    result.ops_reconnect = ops.reconnect;
    assert(ops.first >= BULK, 'the first connection downloaded everything', result);
    assert(ops.reconnect < 20, `reconnect downloaded ${ops.reconnect} op(s), not just the 2 changes`, result);
    if (metric0 !== null) assert(metric2 - metric1 < 20, 'gateway metric: ops sent on reconnect', result.metric_ops_sent);
    await alice.db.close();
  },

  /** A new process opening the database file `reconnect` left: it resumes from the stored op ids. */
  async resume() {
    assert(args.prefix, '--prefix of the reconnect run is required');
    const alice = openClient('alice', user('alice'));
    await alice.db.waitForReady();
    const stored = await clientRows(alice.db);
    assert(stored.todos.length > 300, 'the database file holds the previous run', stored.todos.length);
    await sql(`UPDATE todos SET description = 'changed before restart' WHERE id = $1`, [`${PREFIX}-bulk-2`]);
    const metric0 = await metric('syncgate_ops_sent_total');
    await alice.connect();
    result.latencies_ms.resync = await waitInSync(alice, 'after restart');
    const metric1 = await metric('syncgate_ops_sent_total');
    if (metric0 !== null) result.metric_ops_sent = metric1 - metric0;
    if (HTTP) {
      result.client_ops = alice.stats.streams.reduce((n, s) => n + s.ops, 0);
      result.restart_request = alice.stats.streams[0]?.buckets;
      assert(alice.stats.streams[0]?.buckets.every((b) => !b.endsWith('@0')), 'the request after restart carries the stored op ids', alice.summary());
    }
    result.ops_restart = result.client_ops ?? result.metric_ops_sent;
    assert(result.ops_restart !== undefined, 'ops are counted on the client (HTTP) or by the gateway (/metrics)');
    assert(result.ops_restart < 20, `restart downloaded ${result.ops_restart} op(s)`, result);
    if (metric0 !== null) assert(metric1 - metric0 < 20, 'gateway metric: ops sent after restart', result.metric_ops_sent);
  },

  /** The first token has expired: the gateway rejects it (401), the SDK fetches new credentials and syncs. */
  async 'expired-token'() {
    await seed();
    const alice = openClient('alice', user('alice'), TOKENS.expiredFirst);
    const failures0 = await metric('syncgate_auth_failures_total');
    await alice.connect().catch((e) => log(`connect() with an expired token: ${e}`));
    result.latencies_ms.first_sync = await waitFor('first sync after refreshing the expired token', async () => alice.status().hasSynced === true);
    await waitInSync(alice, 'after the refresh');
    const failures1 = await metric('syncgate_auth_failures_total');
    if (failures0 !== null) result.metric_auth_failures = failures1 - failures0;
    assert(alice.stats.credentialFetches >= 2, 'fetchCredentials called again', alice.summary());
    if (HTTP) {
      const rejected = alice.stats.requests.filter((r) => r.token === 1);
      result.rejected = rejected.map((r) => ({ path: r.path, status: r.status, body: r.body }));
      assert(rejected.length >= 1 && rejected.every((r) => r.status === 401), 'requests with the expired token get 401', result.rejected);
      assert(alice.stats.streams.length >= 1 && alice.stats.streams.every((s) => s.token >= 2), 'streams use the new token', alice.summary());
    } else if (failures0 !== null) {
      assert(result.metric_auth_failures >= 1, 'the gateway rejected the expired token', result);
    }
  },

  /** A short-lived token expires while streaming: the SDK fetches a new one and sync continues. */
  async 'token-refresh'() {
    await seed();
    const alice = openClient('alice', user('alice'), TOKENS.shortFirst);
    await alice.connect();
    await alice.firstSync();
    await waitInSync(alice, 'initial with the short-lived token');
    const ttl = Number(args['short-ttl-s']);
    // The stream bound to token #1 must end (at its expiry, or earlier when the SDK prefetches) and a new one start
    // with token #2. Generous: the gateway may tolerate clock skew (60 s) before it closes.
    result.latencies_ms.refresh = await waitFor(
      'a stream with a refreshed token',
      async () => ({
        ok: alice.stats.credentialFetches >= 2 && (!HTTP || alice.stats.streams.some((s) => s.token >= 2)),
        detail: alice.summary()
      }),
      TIMEOUT_MS + (ttl + 90) * 1000
    );
    result.credential_fetches = alice.stats.credentialFetches;
    if (HTTP) {
      const first = alice.stats.streams[0];
      assert(first.token === 1 && first.end !== null, 'the first stream (token #1) ended', alice.summary());
    }
    // Sync continues on the new token, also once the first has expired for good.
    const wait = Math.max(0, (ttl + 2) * 1000 - (Date.now() - started));
    await new Promise((r) => setTimeout(r, wait));
    await sql(`INSERT INTO todos (id, list_id, description) VALUES ($1, $2, 'after the refresh')`, [`${PREFIX}-t10`, listId('groceries')]);
    result.latencies_ms.change_after_refresh = await waitInSync(alice, 'a change after the refresh');
    const s = alice.status();
    assert(s.connected && !s.downloadError, 'status after the refresh', s);
  },

  /**
   * A measurement (benchmark (d), gateway/benches/official_client.rs), no assertion on timing: commit → row visible
   * in one connected client with the SDK's defaults (HTTP; the SDK negotiates BSON and gzip), for --warmup + --samples
   * single-row inserts (autocommit), measured from just before the INSERT is sent. Visibility: the SDK's own change
   * notification (`onChange` on `todos`, throttleMs 0 unless --throttle-ms; the SDK's default is 30) followed by a
   * read that finds the row (notified_ms: when that notification came). Baseline, from the same INSERT:
   * a plain `fetch` of POST /sync/stream (NDJSON, gzip as fetch negotiates it) reading lines until the row's `data`
   * line arrives (baseline_ms; baseline_complete_ms: the checkpoint_complete after it, which the SDK waits for before
   * it applies the row). Prints the latencies in ms.
   */
  async latency() {
    const samples = Number(args.samples);
    const warmup = Number(args.warmup);
    const throttleMs = Number(args['throttle-ms']);
    await seed();
    const alice = openClient('alice', user('alice'), TOKENS.valid, { observe: false });
    await alice.connect();
    result.latencies_ms.first_sync = await alice.firstSync();
    await waitInSync(alice, 'initial');
    const reader = await ndjsonReader(alice.sub);
    await withTimeout(reader.completed, 'baseline reader: first checkpoint_complete', () => reader.info);

    // Rows awaited in the client: checked on each change notification of `todos` (and by a slow safety net, counted:
    // with throttleMs 0 a row found by it would mean a missed notification).
    // Checks run one after the other, each after the notification that queued it.
    const awaited = new Map();
    let checks = Promise.resolve();
    const check = (via, notified) =>
      (checks = checks.then(async () => {
        for (const [id, resolve] of awaited) {
          if (await alice.db.getOptional('SELECT id FROM todos WHERE id = ?', [id])) {
            awaited.delete(id);
            resolve({ at: performance.now(), notified, via });
          }
        }
      }));
    let notifications = 0;
    const dispose = alice.db.onChange(
      {
        onChange: () => {
          notifications++;
          return check('onChange', performance.now());
        },
        onError: (e) => log(`onChange error: ${e}`)
      },
      { tables: ['todos'], throttleMs }
    );
    const safetyNet = setInterval(() => awaited.size && check('safety net', performance.now()), 1000);
    const visible = (id) => new Promise((resolve) => awaited.set(id, resolve));

    const conn = await pool.connect();
    const client = [];
    const notified = [];
    const baseline = [];
    const baselineComplete = [];
    const commit = [];
    let viaSafetyNet = 0;
    try {
      for (let i = 0; i < warmup + samples; i++) {
        const id = `${PREFIX}-lat-${i}`;
        const inClient = visible(id);
        const inReader = reader.line(id);
        const t0 = performance.now();
        await conn.query({
          name: 'latency-insert',
          text: 'INSERT INTO todos (id, list_id, description) VALUES ($1, $2, $3)',
          values: [id, listId('groceries'), `latency ${i}`]
        });
        const committed = performance.now();
        const [c, b] = await withTimeout(Promise.all([inClient, inReader]), `row ${id} visible`, () => ({
          status: alice.status(),
          reader: reader.info
        }));
        if (c.via !== 'onChange') viaSafetyNet++;
        if (i >= warmup) {
          client.push(c.at - t0);
          notified.push(c.notified - t0);
          baseline.push(b.data - t0);
          baselineComplete.push(b.complete - t0);
          commit.push(committed - t0);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    } finally {
      conn.release();
      clearInterval(safetyNet);
      dispose();
      reader.close();
    }
    const round = (xs) => xs.map((x) => Math.round(x * 1000) / 1000);
    result.samples = samples;
    result.warmup = warmup;
    result.client_ms = round(client);
    result.notified_ms = round(notified);
    result.baseline_ms = round(baseline);
    result.baseline_complete_ms = round(baselineComplete);
    result.commit_ms = round(commit);
    result.detection = { method: `onChange(todos, throttleMs ${throttleMs}) + getOptional`, notifications, via_safety_net: viaSafetyNet };
    result.baseline_reader = reader.info;
    const s = alice.status();
    assert(s.connected && s.hasSynced && !s.downloadError, 'status after the measurement', s);
  }
};

/**
 * A plain HTTP reader of POST /sync/stream for `sub` (NDJSON; `fetch` negotiates gzip itself): `completed` resolves at
 * the first checkpoint_complete; `line(id)` at the checkpoint_complete that follows the `data` line holding `id`, with
 * both arrival times (performance.now()): `{ data, complete }`.
 */
async function ndjsonReader(sub) {
  const controller = new AbortController();
  const res = await fetch(`${ENDPOINT}/sync/stream`, {
    method: 'POST',
    headers: {
      authorization: `Token ${mintToken(sub, now(), now() + 3600)}`,
      'content-type': 'application/json',
      accept: 'application/x-ndjson'
    },
    body: JSON.stringify({ buckets: [] }),
    signal: controller.signal
  });
  assert(res.ok && res.body, `baseline reader: POST /sync/stream → ${res.status}`);
  const info = {
    content_type: res.headers.get('content-type'),
    content_encoding: res.headers.get('content-encoding'),
    lines: 0,
    end: null
  };
  const waiting = new Map();
  let completing = [];
  let onComplete;
  const completed = new Promise((resolve) => (onComplete = resolve));
  (async () => {
    const body = res.body.getReader();
    const decoder = new TextDecoder();
    let pending = '';
    for (;;) {
      const { done, value } = await body.read();
      if (done) break;
      const at = performance.now();
      pending += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        info.lines++;
        if (line.startsWith('{"checkpoint_complete"')) {
          onComplete();
          for (const { resolve, data } of completing) resolve({ data, complete: at });
          completing = [];
        }
        if (line.startsWith('{"data"')) {
          for (const [id, resolve] of waiting) {
            if (line.includes(JSON.stringify(id))) {
              waiting.delete(id);
              completing.push({ resolve, data: at });
            }
          }
        }
      }
    }
    info.end = 'ended by the server';
  })().catch((e) => {
    info.end = `failed: ${e?.name ?? e}`;
  });
  return {
    info,
    completed,
    line: (id) => new Promise((resolve) => waiting.set(id, resolve)),
    close: () => controller.abort()
  };
}

async function main() {
  const scenario = scenarios[SCENARIO];
  if (!scenario) throw new Error(`unknown scenario ${SCENARIO}; known: ${Object.keys(scenarios).join(', ')}`);
  log(`prefix ${PREFIX}, endpoint ${ENDPOINT}, connection method ${args['connection-method']}`);
  await scenario();
  result.ok = true;
}

let exitCode = 1;
try {
  await main();
  exitCode = 0;
} catch (e) {
  result.error = String(e?.stack ?? e);
  log(`FAILED: ${result.error}`);
}
result.duration_ms = Date.now() - started;
result.clients = Object.fromEntries(clients.map((c) => [c.name, { status: c.status(), ...c.summary() }]));
for (const c of clients) {
  try {
    await Promise.race([c.db.close(), new Promise((r) => setTimeout(r, 10_000))]);
  } catch (e) {
    log(`closing ${c.name}: ${e}`);
  }
}
await pool.end().catch(() => {});
process.stdout.write(JSON.stringify(result) + '\n');
process.exit(exitCode);
