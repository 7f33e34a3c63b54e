//! In-process change notification for live queries: which app tables a committed transaction changed,
//! learnt from SQLite's hooks on every file connection a [`crate::LocalDatabase`] opens in this process.
//!
//! Every transaction that changes an app table's rows bumps that table's row in `sg_table_versions` (a
//! rowid table updated in place, so a table keeps its rowid). The update hook collects those rowids; the
//! rollback hook forgets them; the WAL hook — called once per commit, after the commit is in the WAL and
//! the write lock released, so a woken reader sees it — maps them to table names and wakes only the
//! watches on the same file that read one of those tables. A rowid not known yet (a table's first change)
//! wakes every watch, which then reloads the mapping. A woken watch still compares the versions on its
//! own connection before re-running its query, so a needless wake costs one small read, never a re-run.
//!
//! Commits by other processes fire no hook here: watches see them by polling `PRAGMA data_version`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use rusqlite::Connection;
use rusqlite::hooks::{Action, Wal};
use rusqlite::wal::CheckpointMode;
use tokio::sync::Notify;

/// SQLite's default `wal_autocheckpoint`: the WAL hook below replaces the automatic checkpoint (which is
/// itself a WAL hook), so it checkpoints at the same size.
const AUTOCHECKPOINT_PAGES: i32 = 1000;

/// The watches on one database file and what they need to decide who a commit concerns.
#[derive(Debug, Default)]
pub(crate) struct FileChanges {
    /// `sg_table_versions` rowid → table name (lowercase).
    names: Mutex<HashMap<i64, String>>,
    watches: Mutex<Vec<Weak<WatchSignal>>>,
}

/// Wakes one watch. `notify_one` keeps a permit when the watch is busy, so no commit is missed and
/// several commits in a row cost one re-check.
#[derive(Debug)]
pub(crate) struct WatchSignal {
    /// Lowercase names of the tables the query reads; `None`: any table.
    tables: Option<HashSet<String>>,
    pub(crate) notify: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The shared state of the database file at `path` in this process.
pub(crate) fn file_changes(path: &str) -> Arc<FileChanges> {
    static FILES: LazyLock<Mutex<HashMap<String, Arc<FileChanges>>>> = LazyLock::new(Mutex::default);
    Arc::clone(lock(&FILES).entry(path.to_owned()).or_default())
}

impl FileChanges {
    /// A signal for a watch reading `tables` (`None`: any); it stays registered while the watch holds it.
    pub(crate) fn register(&self, tables: Option<HashSet<String>>) -> Arc<WatchSignal> {
        let signal = Arc::new(WatchSignal {
            tables,
            notify: Notify::new(),
        });
        let mut watches = lock(&self.watches);
        watches.retain(|w| w.strong_count() > 0);
        watches.push(Arc::downgrade(&signal));
        signal
    }

    /// Replaces the rowid → name mapping (read by a watch from `sg_table_versions`).
    pub(crate) fn set_names(&self, names: HashMap<i64, String>) {
        *lock(&self.names) = names;
    }

    /// After a commit that changed these `sg_table_versions` rows: wakes the watches they concern.
    fn committed(&self, rowids: &HashSet<i64>) {
        let mut changed = HashSet::new();
        let mut unknown = false;
        {
            let names = lock(&self.names);
            for rowid in rowids {
                match names.get(rowid) {
                    Some(name) => {
                        changed.insert(name.clone());
                    }
                    None => unknown = true,
                }
            }
        }
        let watches = lock(&self.watches);
        for signal in watches.iter().filter_map(Weak::upgrade) {
            let concerned = unknown
                || signal
                    .tables
                    .as_ref()
                    .is_none_or(|tables| !tables.is_disjoint(&changed));
            if concerned {
                signal.notify.notify_one();
            }
        }
    }
}

/// Installs the hooks on a file connection (WAL mode) of the database `changes` stands for.
pub(crate) fn install_hooks(conn: &mut Connection, changes: Arc<FileChanges>) -> rusqlite::Result<()> {
    let pending: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let updated = Arc::clone(&pending);
    conn.update_hook(Some(move |_: Action, db: &str, table: &str, rowid: i64| {
        if db == "main" && table == "sg_table_versions" {
            lock(&updated).insert(rowid);
        }
    }))?;
    let rolled_back = Arc::clone(&pending);
    conn.rollback_hook(Some(move || lock(&rolled_back).clear()))?;
    conn.wal_hook(Some(move |wal: &mut Wal, pages: i32| {
        let rowids = std::mem::take(&mut *lock(&pending));
        if !rowids.is_empty() {
            changes.committed(&rowids);
        }
        if pages >= AUTOCHECKPOINT_PAGES {
            // As SQLite's own automatic checkpoint: best effort (a reader may hold the WAL), the commit
            // has happened either way.
            let _ = wal.checkpoint_v2(CheckpointMode::PASSIVE);
        }
        Ok(())
    }))
}
