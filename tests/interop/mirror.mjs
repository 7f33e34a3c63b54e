#!/usr/bin/env node
// One user's official client (@powersync/node) for side-by-side comparisons with syncgate-client
// (client/tests/integration/official_client.rs):
//
//   node mirror.mjs --endpoint http://127.0.0.1:PORT --token JWT --dir DIR [--connection-method http|web-socket]
//
// Prints the client schema (schema.mjs) as one line of syncgate-client's schema JSON, then connects and keeps
// syncing. Each `dump` line on stdin is answered with one JSON line on stdout:
// {"has_synced": bool, "connected": bool, "tables": {"<table>": [rows, every column, ordered by id]}}.
// Exits 0 when stdin closes. The SDK's log goes to stderr.

import readline from 'node:readline';
import { parseArgs } from 'node:util';

import { PowerSyncDatabase, SyncStreamConnectionMethod } from '@powersync/node';

import { schema, syncgateSchema } from './schema.mjs';

const { values: args } = parseArgs({
  options: {
    endpoint: { type: 'string' },
    token: { type: 'string' },
    dir: { type: 'string' },
    'connection-method': { type: 'string', default: 'http' }
  }
});
for (const required of ['endpoint', 'token', 'dir']) {
  if (!args[required]) {
    console.error(`missing --${required}`);
    process.exit(2);
  }
}
const methods = { http: SyncStreamConnectionMethod.HTTP, 'web-socket': SyncStreamConnectionMethod.WEB_SOCKET };
const connectionMethod = methods[args['connection-method']];
if (!connectionMethod) {
  console.error('--connection-method must be http or web-socket');
  process.exit(2);
}

console.log(JSON.stringify(syncgateSchema()));

const db = new PowerSyncDatabase({
  schema,
  database: { dbFilename: 'mirror.db', dbLocation: args.dir },
  logger: {
    log(record) {
      const error = record.error ? ` (${record.error?.stack ?? record.error})` : '';
      console.error(`sdk[${record.level}] ${record.message}${error}`);
    }
  }
});
const connector = {
  async fetchCredentials() {
    return { endpoint: args.endpoint, token: args.token };
  },
  async uploadData() {
    throw new Error('the comparison makes no local writes');
  }
};
await db.connect(connector, { connectionMethod, retryDelayMs: 500 });

async function dump() {
  const tables = {};
  for (const table of schema.tables) {
    tables[table.name] = await db.getAll(`SELECT * FROM "${table.name}" ORDER BY id`);
  }
  const status = db.currentStatus;
  return { has_synced: status.hasSynced === true, connected: status.connected, tables };
}

for await (const line of readline.createInterface({ input: process.stdin })) {
  if (line.trim() === 'dump') {
    console.log(JSON.stringify(await dump()));
  } else if (line.trim() !== '') {
    console.error(`unknown command ${JSON.stringify(line)}`);
  }
}
await db.disconnectAndClear();
await db.close();
process.exit(0);
