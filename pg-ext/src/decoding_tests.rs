//! End-to-end tests of the output plugin: a real slot with plugin `syncgate` in the `cargo pgrx test`
//! cluster, real changes, the binary output decoded with the gateway's decoder.
//!
//! These are plain `#[test]`s on an autocommit connection, because a `#[pg_test]` runs inside a
//! transaction that has written, where Postgres refuses to create a logical slot. A slot decodes the
//! whole database, so the tests take turns ([`SERIAL`]) to see only their own changes.

use std::collections::HashMap;
use std::sync::Mutex;

use syncgate_protocol::plugin_format::{Message, OldValues, Tuple, Value, decode};

static SERIAL: Mutex<()> = Mutex::new(());

type Client = postgres::Client;

pub(crate) fn connect() -> Client {
    // Starts the test cluster (initdb, CREATE EXTENSION) if no test did yet.
    pgrx_tests::run_test(
        "version_is_callable_in_the_extension_schema",
        None,
        crate::pg_test::postgresql_conf_options(),
    )
    .expect("test cluster up");
    pgrx_tests::client().expect("connect to the test cluster").0
}

fn run(client: &mut Client, sql: &str) {
    client
        .batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// Each entry on its own: a multi-statement string would run as one implicit transaction.
fn run_each(client: &mut Client, statements: &[&str]) {
    for sql in statements {
        run(client, sql);
    }
}

/// Consumes the slot's pending output with these plugin options.
fn changes(client: &mut Client, slot: &str, options: &[&str]) -> Result<Vec<Vec<u8>>, postgres::Error> {
    let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
    let rows = client.query(
        "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, VARIADIC $2::text[])",
        &[&slot, &options],
    )?;
    Ok(rows.iter().map(|row| row.get::<_, Vec<u8>>(0)).collect())
}

fn values(tuple: Tuple<'_>) -> String {
    let parts: Vec<String> = tuple
        .values()
        .map(|value| match value {
            Value::Null => "null".to_owned(),
            Value::UnchangedToast => "~".to_owned(),
            Value::Text(text) if text.len() > 100 => format!("{}..({})", &text[..3], text.len()),
            Value::Text(text) => text.to_owned(),
        })
        .collect();
    format!("[{}]", parts.join(","))
}

fn old(old: Option<OldValues<'_>>) -> String {
    match old {
        None => "-".to_owned(),
        Some(OldValues::Key(tuple)) => format!("key{}", values(tuple)),
        Some(OldValues::Row(tuple)) => format!("row{}", values(tuple)),
    }
}

/// Renders the messages one per line, relations by name, checking along the way what lines do not
/// show: every change follows its RELATION, BEGIN and COMMIT agree on the commit LSN, and a tuple has
/// exactly its relation's columns.
fn render(messages: &[Vec<u8>]) -> Vec<String> {
    let mut names: HashMap<u32, (String, usize)> = HashMap::new();
    let mut open_begin = None;
    let mut lines = Vec::new();
    for bytes in messages {
        let message = decode(bytes).unwrap_or_else(|e| panic!("{e}: {bytes:?}"));
        let name = |oid: u32, tuples: &[Tuple<'_>]| {
            let (name, width) = names
                .get(&oid)
                .unwrap_or_else(|| panic!("change before RELATION of {oid}"));
            for tuple in tuples {
                assert_eq!(tuple.len(), *width, "tuple width of {name}");
            }
            name.clone()
        };
        let line = match message {
            Message::Begin(begin) => {
                assert!(open_begin.is_none(), "nested BEGIN");
                open_begin = Some(begin);
                "BEGIN".to_owned()
            }
            Message::Commit(commit) => {
                let begin = open_begin.take().expect("COMMIT after BEGIN");
                assert_eq!(begin.final_lsn, commit.commit_lsn);
                assert_eq!(begin.commit_time, commit.commit_time);
                assert!(commit.end_lsn > commit.commit_lsn);
                "COMMIT".to_owned()
            }
            Message::Relation(r) => {
                names.insert(r.oid, (format!("{}.{}", r.schema, r.name), r.columns.len()));
                let columns: Vec<String> = r
                    .columns
                    .iter()
                    .map(|c| format!("{}:{}{}", c.name, c.type_oid, if c.is_key { "*" } else { "" }))
                    .collect();
                format!(
                    "RELATION {}.{} {:?} {}",
                    r.schema,
                    r.name,
                    r.replica_identity,
                    columns.join(" ")
                )
            }
            Message::Insert { relation_oid, new } => {
                format!("INSERT {} {}", name(relation_oid, &[new]), values(new))
            }
            Message::Update {
                relation_oid,
                old: o,
                new,
            } => {
                let mut tuples = vec![new];
                tuples.extend(o.map(|o| o.tuple()));
                format!(
                    "UPDATE {} {} {}",
                    name(relation_oid, &tuples),
                    old(o),
                    values(new)
                )
            }
            Message::Delete { relation_oid, old: o } => {
                let tuples: Vec<Tuple<'_>> = o.map(|o| o.tuple()).into_iter().collect();
                format!("DELETE {} {}", name(relation_oid, &tuples), old(o))
            }
            Message::Truncate(t) => {
                let rels: Vec<String> = t.relation_oids.iter().map(|oid| name(oid, &[])).collect();
                format!(
                    "TRUNCATE {} cascade={} restart={}",
                    rels.join(","),
                    t.cascade,
                    t.restart_seqs
                )
            }
            Message::Message(m) => {
                assert_eq!(
                    m.transactional,
                    open_begin.is_some(),
                    "transactional messages inside BEGIN/COMMIT"
                );
                format!(
                    "MESSAGE {} {} {:?}",
                    if m.transactional { "tx" } else { "non-tx" },
                    m.prefix,
                    String::from_utf8_lossy(m.content)
                )
            }
        };
        lines.push(line);
    }
    assert!(open_begin.is_none(), "output ends inside a transaction");
    lines
}

fn create_slot(client: &mut Client, slot: &str) {
    run(
        client,
        &format!("SELECT pg_create_logical_replication_slot('{slot}', 'syncgate')"),
    );
}

fn drop_slot(client: &mut Client, slot: &str) {
    run(client, &format!("SELECT pg_drop_replication_slot('{slot}')"));
}

#[test]
fn changes_of_the_listed_tables_decode_exactly() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut client = connect();
    // Symbol isolation (notes/pgrx.md §11): this backend compiles sync rules before it decodes.
    let diagnostics = client
        .query(
            "SELECT * FROM syncgate.validate_rules('bucket_definitions: {g: {data: [SELECT id FROM items]}}', NULL)",
            &[],
        )
        .unwrap();
    assert_eq!(
        diagnostics.len(),
        1,
        "only 'table not found' before the table exists"
    );
    run(
        &mut client,
        "CREATE TABLE items (id int PRIMARY KEY, name text, big text);
         -- Out of line and uncompressed from 2 kB on: an UPDATE that leaves it alone does not log it.
         ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE full_rows (id int, v text);
         ALTER TABLE full_rows REPLICA IDENTITY FULL;
         CREATE TABLE not_synced (id int PRIMARY KEY);",
    );
    create_slot(&mut client, "listed");
    run_each(
        &mut client,
        &[
            "BEGIN;
             INSERT INTO items VALUES (1, 'a', repeat('x', 10000));
             INSERT INTO not_synced VALUES (1);
             COMMIT;",
            "UPDATE items SET name = 'b' WHERE id = 1",
            "UPDATE items SET id = 2 WHERE id = 1",
            "DELETE FROM items WHERE id = 2",
            "INSERT INTO full_rows VALUES (1, 'a')",
            "UPDATE full_rows SET v = 'b'",
            "DELETE FROM full_rows",
            "INSERT INTO not_synced VALUES (2)",
            "SELECT pg_logical_emit_message(false, 'powersync', '1')",
            "BEGIN;
             INSERT INTO not_synced VALUES (3);
             SELECT pg_logical_emit_message(true, 'syncgate', 'x');
             COMMIT;",
            "TRUNCATE items, not_synced RESTART IDENTITY",
            "ALTER TABLE items ADD COLUMN extra int",
            "INSERT INTO items VALUES (5, NULL, 'small', 7)",
        ],
    );
    let output = changes(&mut client, "listed", &["tables", "public.items, public.full%"]).unwrap();
    let (int4, text) = (23, 25);
    let expected = vec![
        "BEGIN".to_owned(),
        format!("RELATION public.items Default id:{int4}* name:{text} big:{text}"),
        "INSERT public.items [1,a,xxx..(10000)]".to_owned(),
        "COMMIT".to_owned(),
        "BEGIN".to_owned(),
        "UPDATE public.items - [1,b,~]".to_owned(),
        "COMMIT".to_owned(),
        "BEGIN".to_owned(),
        "UPDATE public.items key[1,null,null] [2,b,~]".to_owned(),
        "COMMIT".to_owned(),
        "BEGIN".to_owned(),
        "DELETE public.items key[2,null,null]".to_owned(),
        "COMMIT".to_owned(),
        "BEGIN".to_owned(),
        format!("RELATION public.full_rows Full id:{int4}* v:{text}*"),
        "INSERT public.full_rows [1,a]".to_owned(),
        "COMMIT".to_owned(),
        "BEGIN".to_owned(),
        "UPDATE public.full_rows row[1,a] [1,b]".to_owned(),
        "COMMIT".to_owned(),
        "BEGIN".to_owned(),
        "DELETE public.full_rows row[1,b]".to_owned(),
        "COMMIT".to_owned(),
        "MESSAGE non-tx powersync \"1\"".to_owned(),
        "BEGIN".to_owned(),
        "MESSAGE tx syncgate \"x\"".to_owned(),
        "COMMIT".to_owned(),
        "BEGIN".to_owned(),
        // TRUNCATE gives the table a new relfilenode: a relcache invalidation, so it is described again.
        format!("RELATION public.items Default id:{int4}* name:{text} big:{text}"),
        "TRUNCATE public.items cascade=false restart=true".to_owned(),
        "COMMIT".to_owned(),
        "BEGIN".to_owned(),
        format!("RELATION public.items Default id:{int4}* name:{text} big:{text} extra:{int4}"),
        "INSERT public.items [5,null,small,7]".to_owned(),
        "COMMIT".to_owned(),
    ];
    assert_eq!(render(&output), expected);
    drop_slot(&mut client, "listed");
    run(&mut client, "DROP TABLE items, full_rows, not_synced");
}

#[test]
fn without_options_every_table_is_emitted_and_messages_can_be_turned_off() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut client = connect();
    run(
        &mut client,
        "CREATE TABLE \"Mixed Case\" (k text PRIMARY KEY, n numeric, at timestamptz)",
    );
    create_slot(&mut client, "all_tables");
    run_each(
        &mut client,
        &[
            "SET TimeZone = 'UTC'",
            "INSERT INTO \"Mixed Case\" VALUES ('é ü', 1.50, '2024-05-06 07:08:09.123456+00')",
            "SELECT pg_logical_emit_message(false, 'other', 'skipped')",
        ],
    );
    // The walsender formats values with its own session settings; here the SQL function's session.
    let output = changes(&mut client, "all_tables", &["messages", "off"]).unwrap();
    assert_eq!(
        render(&output),
        [
            "BEGIN",
            "RELATION public.Mixed Case Default k:25* n:1700 at:1184",
            "INSERT public.Mixed Case [é ü,1.50,2024-05-06 07:08:09.123456+00]",
            "COMMIT",
        ]
    );
    drop_slot(&mut client, "all_tables");
    run(&mut client, "DROP TABLE \"Mixed Case\"");
}

#[test]
fn bad_options_are_errors_that_leave_the_session_usable() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut client = connect();
    create_slot(&mut client, "bad_options");
    let cases: [(&[&str], &str); 4] = [
        (
            &["tables", "public.a,nodot"],
            "invalid entry \"nodot\" in option \"tables\": missing \".\" between schema and table",
        ),
        (&["tables", "\"unterminated.x"], "unterminated double quote"),
        (
            &["messages", "maybe"],
            "option \"messages\" of the syncgate output plugin must be a boolean",
        ),
        (
            &["colour", "red"],
            "unknown option \"colour\" of the syncgate output plugin",
        ),
    ];
    for (options, expected) in cases {
        let error = changes(&mut client, "bad_options", options).expect_err("bad option refused");
        let message = error
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert!(message.contains(expected), "{options:?}: {message}");
    }
    run(&mut client, "SELECT 1");
    assert!(changes(&mut client, "bad_options", &[]).unwrap().is_empty());
    drop_slot(&mut client, "bad_options");
}
