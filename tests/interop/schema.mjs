// The client schema of the interop tests (the synced columns of sync-rules.yaml; `id` is implicit), shared by
// interop.mjs and mirror.mjs. mirror.mjs also prints it in syncgate-client's schema JSON, so the Rust client
// of the comparison test declares exactly these tables and column types.

import { Schema, Table, column } from '@powersync/node';

export const schema = new Schema({
  lists: new Table({ owner_id: column.text, name: column.text }),
  todos: new Table({ list_id: column.text, description: column.text, completed: column.integer, priority: column.integer }),
  announcements: new Table({ body: column.text })
});

/** `schema` as syncgate-client's schema file (docs/client.md): column types text, integer, real. */
export function syncgateSchema() {
  return {
    tables: schema.tables.map((table) => ({
      name: table.name,
      columns: table.columns.map((c) => ({ name: c.name, type: c.type.toLowerCase() }))
    }))
  };
}
