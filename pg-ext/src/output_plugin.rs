//! The `syncgate` logical decoding output plugin.
//!
//! Postgres calls [`_PG_output_plugin_init`] when a slot created with plugin `syncgate` starts
//! decoding. Each callback writes whole messages of `syncgate_protocol::plugin_format`, built in a
//! reused Rust buffer and handed over with one `appendBinaryStringInfo`, because every `pg_sys` call
//! costs a `sigsetjmp` in pgrx.
//!
//! Invariants:
//! - BEGIN is written lazily, before a transaction's first emitted change or transactional message,
//!   so a transaction whose changes the `tables` option filters out writes zero bytes (its progress
//!   is still reported, so the slot can advance).
//! - A RELATION precedes a relation's first change (or truncate) of the session and is sent again
//!   after a relcache invalidation of that relation, before the next change: every tuple that follows
//!   a RELATION has exactly its columns.
//! - Column values are the type output function's text. An UPDATE's unchanged out-of-line (TOASTed)
//!   value is not in the WAL; it is sent as the unchanged marker, never looked up or nulled.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, c_char};

use pgrx::PgMemoryContexts;
use pgrx::pg_sys;
use pgrx::prelude::*;
use syncgate_protocol::plugin_format::{self as format, Lsn, OldKind, ReplicaIdentity, TablePattern};

/// Options given at `START_REPLICATION` (or to `pg_logical_slot_get_binary_changes`), all optional.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    /// `tables`: only these tables' changes are emitted; `None` means every table.
    tables: Option<Vec<TablePattern>>,
    /// `messages`: forward `pg_logical_emit_message` messages (default true).
    messages: bool,
}

/// Per decoding session state, owned by the decoding context's memory context.
struct Session {
    options: Options,
    relations: HashMap<pg_sys::Oid, RelationEntry>,
    /// Reset after every callback: output functions and catalog lookups allocate here.
    scratch: pg_sys::MemoryContext,
    /// Parent of each relation's own context (FmgrInfo allocations).
    decoding_context: pg_sys::MemoryContext,
    begin_sent: bool,
    message: Vec<u8>,
    datums: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

/// What the plugin remembers about a relation until its next relcache invalidation.
struct RelationEntry {
    /// Passes the `tables` filter. Excluded relations keep an entry too, so the filter runs once.
    included: bool,
    relation_sent: bool,
    schema: Vec<u8>,
    name: Vec<u8>,
    /// Holds what the output functions cache; deleted with the entry. Null when not included.
    memory: pg_sys::MemoryContext,
    columns: Vec<ColumnOutput>,
}

/// A column the plugin sends (dropped and generated columns are skipped, as pgoutput does).
struct ColumnOutput {
    /// Index into the tuple descriptor.
    attribute: usize,
    is_varlena: bool,
    /// Boxed so its address stays fixed: Postgres may keep pointers to it in `fn_extra` caches.
    output_function: Box<pg_sys::FmgrInfo>,
}

/// Relations invalidated since the last callback, recorded by the relcache callback.
#[derive(Default)]
struct PendingInvalidations {
    registered: bool,
    all: bool,
    relations: Vec<pg_sys::Oid>,
}

thread_local! {
    // A backend is single-threaded and decodes one slot at a time, so per-thread is per-session.
    static PENDING: RefCell<PendingInvalidations> = RefCell::new(PendingInvalidations::default());
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_invalidated(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    PENDING.with_borrow_mut(|pending| {
        if relid == pg_sys::InvalidOid {
            pending.all = true;
        } else {
            pending.relations.push(relid);
        }
    });
}

/// The entry point Postgres looks up in the library named by the slot's plugin.
///
/// # Safety
/// Called by Postgres with a valid callbacks struct to fill.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn _PG_output_plugin_init(callbacks: *mut pg_sys::OutputPluginCallbacks) {
    // SAFETY: Postgres passes a valid, writable struct.
    let callbacks = unsafe { &mut *callbacks };
    callbacks.startup_cb = Some(startup);
    callbacks.begin_cb = Some(begin);
    callbacks.change_cb = Some(change);
    callbacks.truncate_cb = Some(truncate);
    callbacks.message_cb = Some(message);
    callbacks.commit_cb = Some(commit);
}

fn parse_bool(name: &str, value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" | "t" | "y" => Ok(true),
        "false" | "off" | "no" | "0" | "f" | "n" => Ok(false),
        _ => Err(format!(
            "option \"{name}\" of the syncgate output plugin must be a boolean, got {value:?}"
        )),
    }
}

/// Parses the plugin options; `None` values stand for an option given without a value. Pure Rust, so
/// the caller raises the ERROR (and unit tests need no server).
fn parse_options<'a>(given: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Result<Options, String> {
    let mut options = Options {
        tables: None,
        messages: true,
    };
    for (name, value) in given {
        match name {
            "tables" => {
                let value = value.ok_or_else(|| {
                    "option \"tables\" of the syncgate output plugin needs a value".to_owned()
                })?;
                options.tables = Some(format::parse_tables_option(value).map_err(|e| e.to_string())?);
            }
            "messages" => options.messages = value.map_or(Ok(true), |v| parse_bool(name, v))?,
            other => {
                return Err(format!(
                    "unknown option \"{other}\" of the syncgate output plugin (known: tables, messages)"
                ));
            }
        }
    }
    Ok(options)
}

#[pg_guard]
unsafe extern "C-unwind" fn startup(
    ctx: *mut pg_sys::LogicalDecodingContext,
    plugin_options: *mut pg_sys::OutputPluginOptions,
    _is_init: bool,
) {
    // SAFETY: called in a backend with a database connection.
    if unsafe { pg_sys::GetDatabaseEncoding() } != pg_sys::pg_enc::PG_UTF8 as i32 {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "the syncgate output plugin needs a UTF8 database: values are sent as UTF-8 text"
        );
    }
    // SAFETY: Postgres passes valid pointers; the options list holds DefElem nodes whose names and
    // String values live in the decoding context for the duration of this call.
    let options = unsafe {
        let list = (*ctx).output_plugin_options;
        let mut given = Vec::new();
        if !list.is_null() {
            for i in 0..usize::try_from((*list).length).unwrap_or(0) {
                let elem = (*(*list).elements.add(i)).ptr_value.cast::<pg_sys::DefElem>();
                let name = CStr::from_ptr((*elem).defname)
                    .to_str()
                    .unwrap_or("<non-UTF-8 name>");
                let value = if (*elem).arg.is_null() {
                    None
                } else {
                    Some(
                        CStr::from_ptr(pg_sys::defGetString(elem))
                            .to_str()
                            .unwrap_or("<non-UTF-8 value>"),
                    )
                };
                given.push((name, value));
            }
        }
        parse_options(given)
    };
    let options = match options {
        Ok(options) => options,
        Err(message) => {
            ereport!(ERROR, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message);
        }
    };
    // SAFETY: valid pointers from Postgres; the scratch context is a child of the decoding context and
    // dies with it.
    unsafe {
        (*plugin_options).output_type = pg_sys::OutputPluginOutputType::OUTPUT_PLUGIN_BINARY_OUTPUT;
        (*plugin_options).receive_rewrites = false;
        let scratch = pg_sys::AllocSetContextCreateInternal(
            (*ctx).context,
            c"syncgate scratch".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        let session = Session {
            options,
            relations: HashMap::new(),
            scratch,
            decoding_context: (*ctx).context,
            begin_sent: false,
            message: Vec::with_capacity(1024),
            datums: Vec::new(),
            nulls: Vec::new(),
        };
        // Dropped when the decoding context is deleted, also when decoding ends in an ERROR.
        let session = PgMemoryContexts::For((*ctx).context).leak_and_drop_on_delete(session);
        (*ctx).output_plugin_private = session.cast();
    }
    PENDING.with_borrow_mut(|pending| {
        // A new session starts with an empty cache: older invalidations concern no one.
        pending.all = false;
        pending.relations.clear();
        if !pending.registered {
            // SAFETY: registering a callback is allowed in a backend; Postgres has a fixed number of
            // slots, hence once per backend.
            unsafe {
                pg_sys::CacheRegisterRelcacheCallback(Some(relcache_invalidated), pg_sys::Datum::from(0usize))
            };
            pending.registered = true;
        }
    });
}

/// # Safety
/// `ctx` is a decoding context whose startup callback ran.
unsafe fn session<'a>(ctx: *mut pg_sys::LogicalDecodingContext) -> &'a mut Session {
    // SAFETY: startup stored a live Session there; callbacks of one context never overlap.
    unsafe { &mut *(*ctx).output_plugin_private.cast::<Session>() }
}

impl Session {
    /// Drops cache entries of relations invalidated since the last callback.
    fn apply_invalidations(&mut self) {
        let (all, relations) = PENDING.with_borrow_mut(|pending| {
            (
                std::mem::take(&mut pending.all),
                std::mem::take(&mut pending.relations),
            )
        });
        let dropped: Vec<RelationEntry> = if all {
            self.relations.drain().map(|(_, entry)| entry).collect()
        } else {
            relations
                .iter()
                .filter_map(|relid| self.relations.remove(relid))
                .collect()
        };
        for entry in dropped {
            if !entry.memory.is_null() {
                // SAFETY: the entry's own context, a child of the decoding context, used by nothing else.
                unsafe { pg_sys::MemoryContextDelete(entry.memory) };
            }
        }
    }

    /// The cache entry of `rel`, built on first sight. Call with the scratch context current.
    fn entry(&mut self, rel: pg_sys::Relation) -> &mut RelationEntry {
        // SAFETY: `rel` is an open relation Postgres passed to the callback.
        let oid = unsafe { (*rel).rd_id };
        let decoding_context = self.decoding_context;
        let tables = &self.options.tables;
        self.relations.entry(oid).or_insert_with(|| {
            // SAFETY: as above; the name lookups allocate in the current (scratch) context.
            unsafe { build_entry(rel, tables.as_deref(), decoding_context) }
        })
    }
}

/// # Safety
/// `rel` is an open relation; the current memory context is the scratch context.
unsafe fn build_entry(
    rel: pg_sys::Relation,
    tables: Option<&[TablePattern]>,
    decoding_context: pg_sys::MemoryContext,
) -> RelationEntry {
    // SAFETY: `rd_rel` and `rd_att` of an open relation are valid.
    let (schema, name) = unsafe {
        let class = (*rel).rd_rel;
        let schema = pg_sys::get_namespace_name((*class).relnamespace);
        if schema.is_null() {
            error!("the schema of relation {} was not found", (*rel).rd_id.to_u32());
        }
        let schema = CStr::from_ptr(schema).to_bytes().to_vec();
        let name = CStr::from_ptr((*class).relname.data.as_ptr()).to_bytes().to_vec();
        (schema, name)
    };
    let included = tables.is_none_or(|patterns| patterns.iter().any(|p| p.matches(&schema, &name)));
    let mut entry = RelationEntry {
        included,
        relation_sent: false,
        schema,
        name,
        memory: std::ptr::null_mut(),
        columns: Vec::new(),
    };
    if !included {
        return entry;
    }
    // SAFETY: a small child of the decoding context; the descriptor's attributes are valid for natts.
    unsafe {
        entry.memory = pg_sys::AllocSetContextCreateInternal(
            decoding_context,
            c"syncgate relation".as_ptr(),
            0,
            pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
            pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
        );
        let desc = (*rel).rd_att;
        for attribute in 0..usize::try_from((*desc).natts).unwrap_or(0) {
            let attr = &*(*desc).attrs.as_ptr().add(attribute);
            if attr.attisdropped || attr.attgenerated != 0 {
                continue;
            }
            let mut output_oid = pg_sys::InvalidOid;
            let mut is_varlena = false;
            pg_sys::getTypeOutputInfo(attr.atttypid, &mut output_oid, &mut is_varlena);
            let mut output_function = Box::new(std::mem::zeroed::<pg_sys::FmgrInfo>());
            pg_sys::fmgr_info_cxt(output_oid, &mut *output_function, entry.memory);
            entry.columns.push(ColumnOutput {
                attribute,
                is_varlena,
                output_function,
            });
        }
    }
    entry
}

/// Hands one whole message to the plugin output (one row / one CopyData).
///
/// # Safety
/// Called from a decoding callback of `ctx`.
unsafe fn write_message(ctx: *mut pg_sys::LogicalDecodingContext, message: &[u8], last_write: bool) {
    let len = i32::try_from(message.len()).unwrap_or_else(|_| {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            "a syncgate plugin message exceeds 2 GB"
        );
    });
    // SAFETY: the Prepare/append/Write sequence on the context's output buffer, as the API requires.
    unsafe {
        pg_sys::OutputPluginPrepareWrite(ctx, last_write);
        pg_sys::appendBinaryStringInfo((*ctx).out, message.as_ptr().cast::<c_char>(), len);
        pg_sys::OutputPluginWrite(ctx, last_write);
    }
}

/// Writes BEGIN if this transaction has not written it yet.
///
/// # Safety
/// Called from a decoding callback of `ctx` with the transaction `txn`.
unsafe fn ensure_begin(
    ctx: *mut pg_sys::LogicalDecodingContext,
    session: &mut Session,
    txn: *mut pg_sys::ReorderBufferTXN,
) {
    if session.begin_sent {
        return;
    }
    session.begin_sent = true;
    session.message.clear();
    // SAFETY: `txn` is the decoded transaction; its commit time is set (decoding starts at commit).
    let begin = unsafe {
        format::Begin {
            xid: (*txn).xid.into(),
            final_lsn: Lsn((*txn).final_lsn),
            commit_time: (*txn).xact_time.commit_time,
        }
    };
    format::encode_begin(&mut session.message, &begin);
    // SAFETY: the caller's contract.
    unsafe { write_message(ctx, &session.message, false) };
}

/// Writes the RELATION message of `rel` if this session has not sent the current one yet.
///
/// # Safety
/// Called from a decoding callback of `ctx`; `rel` is open and its entry exists.
unsafe fn ensure_relation(
    ctx: *mut pg_sys::LogicalDecodingContext,
    session: &mut Session,
    rel: pg_sys::Relation,
) {
    // SAFETY: `rel` is open.
    let oid = unsafe { (*rel).rd_id };
    let entry = session
        .relations
        .get_mut(&oid)
        .expect("entry built before its relation is sent");
    if entry.relation_sent {
        return;
    }
    entry.relation_sent = true;
    // SAFETY: `rel` is open: its class row and descriptor are valid; the identity bitmap is allocated
    // in the scratch context.
    unsafe {
        let identity_byte = u8::try_from((*(*rel).rd_rel).relreplident).unwrap_or(b'd');
        let identity = ReplicaIdentity::from_byte(identity_byte).unwrap_or(ReplicaIdentity::Default);
        let key_attributes = pg_sys::RelationGetIndexAttrBitmap(
            rel,
            pg_sys::IndexAttrBitmapKind::INDEX_ATTR_BITMAP_IDENTITY_KEY,
        );
        let message = &mut session.message;
        message.clear();
        format::encode_relation_start(
            message,
            oid.to_u32(),
            identity,
            &entry.schema,
            &entry.name,
            entry.columns.len(),
        );
        let desc = (*rel).rd_att;
        for column in &entry.columns {
            let attr = &*(*desc).attrs.as_ptr().add(column.attribute);
            // As pgoutput: with REPLICA IDENTITY FULL every column is part of the identity.
            let is_key = identity == ReplicaIdentity::Full
                || pg_sys::bms_is_member(
                    i32::from(attr.attnum) - pg_sys::FirstLowInvalidHeapAttributeNumber,
                    key_attributes,
                );
            let name = CStr::from_ptr(attr.attname.data.as_ptr()).to_bytes();
            format::encode_column(message, name, attr.atttypid.to_u32(), attr.atttypmod, is_key);
        }
        write_message(ctx, message, false);
    }
}

/// Appends `tuple`'s values (the entry's columns) to `session.message`.
///
/// # Safety
/// `tuple` is a tuple of `rel`, the entry of `rel` exists, the scratch context is current.
unsafe fn encode_tuple(
    session: &mut Session,
    rel: pg_sys::Relation,
    tuple: *mut pg_sys::ReorderBufferTupleBuf,
) {
    // SAFETY: the caller's contract; the buffers have room for natts values.
    unsafe {
        let desc = (*rel).rd_att;
        let natts = usize::try_from((*desc).natts).unwrap_or(0);
        session.datums.resize(natts, pg_sys::Datum::from(0usize));
        session.nulls.resize(natts, true);
        pg_sys::heap_deform_tuple(
            &mut (*tuple).tuple,
            desc,
            session.datums.as_mut_ptr(),
            session.nulls.as_mut_ptr(),
        );
        let entry = session
            .relations
            .get_mut(&(*rel).rd_id)
            .expect("entry built before its tuples");
        let message = &mut session.message;
        format::encode_tuple_start(message, entry.columns.len());
        for column in &mut entry.columns {
            if session.nulls[column.attribute] {
                format::encode_null(message);
                continue;
            }
            let datum = session.datums[column.attribute];
            if column.is_varlena {
                let pointer = datum.cast_mut_ptr::<pg_sys::varlena>();
                if pgrx::varlena::varatt_is_1b_e(pointer)
                    && pgrx::varlena::vartag_external(pointer) == pg_sys::vartag_external::VARTAG_ONDISK as u8
                {
                    // Stored out of line and not part of this change: its data is not in the WAL.
                    format::encode_unchanged_toast(message);
                    continue;
                }
            }
            let text = pg_sys::OutputFunctionCall(&mut *column.output_function, datum);
            format::encode_text(message, CStr::from_ptr(text).to_bytes());
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
) {
    // SAFETY: a callback of a started context.
    unsafe { session(ctx) }.begin_sent = false;
}

#[pg_guard]
unsafe extern "C-unwind" fn change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    rel: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    use pg_sys::ReorderBufferChangeType as Action;
    // SAFETY: a callback of a started context with valid arguments.
    let session = unsafe { session(ctx) };
    session.apply_invalidations();
    // SAFETY: the scratch context is ours; switched back and reset below.
    let previous = unsafe { pg_sys::MemoryContextSwitchTo(session.scratch) };
    if session.entry(rel).included {
        // SAFETY: `change` is valid and its `tp` union member is the one for INSERT/UPDATE/DELETE;
        // the old and new tuples belong to `rel`.
        unsafe {
            let action = (*change).action;
            let tuples = (*change).data.tp;
            let identity_full = (*(*rel).rd_rel).relreplident as u8 == pg_sys::REPLICA_IDENTITY_FULL;
            let old_kind = match (tuples.oldtuple.is_null(), identity_full) {
                (true, _) => OldKind::None,
                (false, true) => OldKind::Row,
                (false, false) => OldKind::Key,
            };
            let oid = (*rel).rd_id.to_u32();
            let emit = match action {
                Action::REORDER_BUFFER_CHANGE_INSERT => !tuples.newtuple.is_null(),
                Action::REORDER_BUFFER_CHANGE_UPDATE => !tuples.newtuple.is_null(),
                Action::REORDER_BUFFER_CHANGE_DELETE => true,
                _ => false,
            };
            if emit {
                ensure_begin(ctx, session, txn);
                ensure_relation(ctx, session, rel);
                session.message.clear();
                match action {
                    Action::REORDER_BUFFER_CHANGE_INSERT => {
                        format::encode_insert_start(&mut session.message, oid);
                        encode_tuple(session, rel, tuples.newtuple);
                    }
                    Action::REORDER_BUFFER_CHANGE_UPDATE => {
                        format::encode_update_start(&mut session.message, oid, old_kind);
                        if old_kind != OldKind::None {
                            encode_tuple(session, rel, tuples.oldtuple);
                        }
                        encode_tuple(session, rel, tuples.newtuple);
                    }
                    _ => {
                        format::encode_delete_start(&mut session.message, oid, old_kind);
                        if old_kind != OldKind::None {
                            encode_tuple(session, rel, tuples.oldtuple);
                        }
                    }
                }
                write_message(ctx, &session.message, true);
            }
        }
    }
    // SAFETY: restores the caller's context; the scratch context holds only this callback's data.
    unsafe {
        pg_sys::MemoryContextSwitchTo(previous);
        pg_sys::MemoryContextReset(session.scratch);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn truncate(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    relation_count: i32,
    relations: *mut pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: a callback of a started context with valid arguments.
    let session = unsafe { session(ctx) };
    session.apply_invalidations();
    // SAFETY: the scratch context is ours; switched back and reset below.
    let previous = unsafe { pg_sys::MemoryContextSwitchTo(session.scratch) };
    let mut included = Vec::new();
    for i in 0..usize::try_from(relation_count).unwrap_or(0) {
        // SAFETY: `relations` holds `relation_count` open relations.
        let rel = unsafe { *relations.add(i) };
        if session.entry(rel).included {
            included.push(rel);
        }
    }
    if !included.is_empty() {
        // SAFETY: as above; `change` is a truncate change, so its `truncate` union member is set.
        unsafe {
            ensure_begin(ctx, session, txn);
            for &rel in &included {
                ensure_relation(ctx, session, rel);
            }
            let oids: Vec<u32> = included.iter().map(|&rel| (*rel).rd_id.to_u32()).collect();
            let flags = (*change).data.truncate;
            session.message.clear();
            format::encode_truncate(&mut session.message, flags.cascade, flags.restart_seqs, &oids);
            write_message(ctx, &session.message, true);
        }
    }
    // SAFETY: restores the caller's context.
    unsafe {
        pg_sys::MemoryContextSwitchTo(previous);
        pg_sys::MemoryContextReset(session.scratch);
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)] // the callback signature Postgres defines
unsafe extern "C-unwind" fn message(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    lsn: pg_sys::XLogRecPtr,
    transactional: bool,
    prefix: *const c_char,
    size: pg_sys::Size,
    content: *const c_char,
) {
    // SAFETY: a callback of a started context.
    let session = unsafe { session(ctx) };
    if !session.options.messages {
        return;
    }
    if transactional {
        // SAFETY: a transactional message arrives inside its (valid) transaction.
        unsafe { ensure_begin(ctx, session, txn) };
    }
    // SAFETY: `prefix` is a C string and `content` holds `size` bytes, both valid for this call.
    let (prefix, content) = unsafe {
        let content = if size == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(content.cast::<u8>(), size)
        };
        (CStr::from_ptr(prefix).to_bytes(), content)
    };
    session.message.clear();
    format::encode_message(&mut session.message, transactional, Lsn(lsn), prefix, content);
    // SAFETY: a callback of `ctx`.
    unsafe { write_message(ctx, &session.message, true) };
}

#[pg_guard]
unsafe extern "C-unwind" fn commit(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    commit_lsn: pg_sys::XLogRecPtr,
) {
    // SAFETY: a callback of a started context with a valid transaction.
    let session = unsafe { session(ctx) };
    if !session.begin_sent {
        // Nothing of this transaction was emitted: report progress so the slot can still advance.
        // SAFETY: a callback of `ctx`.
        unsafe { pg_sys::OutputPluginUpdateProgress(ctx, true) };
        return;
    }
    session.begin_sent = false;
    // SAFETY: `txn` is the committed transaction.
    let commit = unsafe {
        format::Commit {
            commit_lsn: Lsn(commit_lsn),
            end_lsn: Lsn((*txn).end_lsn),
            commit_time: (*txn).xact_time.commit_time,
        }
    };
    session.message.clear();
    format::encode_commit(&mut session.message, &commit);
    // SAFETY: a callback of `ctx`.
    unsafe { write_message(ctx, &session.message, true) };
}

#[cfg(test)]
mod tests {
    use super::*;

    // That the errors reach the client as ERRORs is tested through SQL (decoding_tests).
    #[test]
    fn options_default_to_every_table_and_messages_on() {
        assert_eq!(
            parse_options([]),
            Ok(Options {
                tables: None,
                messages: true
            })
        );
        let options =
            parse_options([("tables", Some("public.a, app.b%")), ("messages", Some("off"))]).unwrap();
        assert!(!options.messages);
        assert_eq!(options.tables.map(|t| t.len()), Some(2));
        assert!(parse_options([("messages", None)]).unwrap().messages);
        assert!(parse_options([("tables", None)]).is_err());
        assert!(parse_options([("messages", Some("maybe"))]).is_err());
    }
}
