//! Targeted wake-ups: a session whose bucket set cannot change without a generation change (static
//! resolution, checkpoint completed, nothing pending) parks here instead of waking on every commit.
//! One dispatcher per [`SessionEnv`] wakes on each commit, reads the published checkpoint and the
//! buckets changed since the parked sessions' checkpoints once, and wakes only the sessions holding a
//! changed bucket; the others' checkpoints advance in the index (as `skip_unconcerned` would have
//! advanced them), and they take it over when they next wake.
//!
//! A concerned session is not woken either when every line it would send is shared (the diff, the
//! cached `data` lines, the complete) and its channel has room for all of them: the dispatcher queues
//! them itself and advances the state the session left in its [`Parcel`] (checkpoint, checksums,
//! positions), which the session takes back when it next wakes. The dispatcher reads on a blocking
//! thread and delivers on its own task: the body tasks a delivery wakes then queue on that worker, not
//! each injected into the runtime from outside it.
//!
//! With 1,000 open streams on 2 cores, waking every session for a commit that concerns one queued the
//! concerned session behind 999 that had nothing to do (docs/benchmarks.md, Sync API).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use foldhash::{HashMap, HashMapExt as _, HashSet};
use syncgate_protocol::{BucketName, OpId};
use tokio::sync::{Notify, watch};
use tracing::debug;

use super::session::{Parcel, SessionEnv, deliver_parked, prepare_delivery};
use crate::storage::{BucketStorage, Checkpoint, RulesVersion, StorageError};

/// Distinct checkpoints of parked sessions whose changed buckets one dispatch reads; sessions parked
/// at others are woken (they are rare: parked sessions converge on the published checkpoint).
const MAX_POSITIONS: usize = 4;

/// What a parked session's state was based on; any difference at a commit wakes it.
#[derive(Debug, Clone)]
pub(super) struct ParkState {
    pub version: RulesVersion,
    pub at: Checkpoint,
    pub compaction_generation: u64,
    pub write_checkpoint_generation: u64,
}

#[derive(Debug)]
struct Entry {
    state: ParkState,
    /// The session's own state while it is parked (boxed: the index moves entries when it grows).
    parcel: Box<Parcel>,
    wake: Arc<Notify>,
    woken: bool,
}

#[derive(Debug, Default)]
struct Index {
    // foldhash (as in `session`): a dispatch looks every concerned session up here.
    entries: HashMap<u64, Entry>,
    by_bucket: HashMap<BucketName, HashSet<u64>>,
}

/// The parked sessions of one [`SessionEnv`], by the buckets they hold.
#[derive(Debug)]
pub struct ParkIndex {
    index: Mutex<Index>,
    next_id: AtomicU64,
    /// Whether a dispatcher task runs (started by the first session to park).
    dispatching: AtomicBool,
    /// Parked sessions woken by the dispatcher (tests: an unconcerned commit wakes none).
    wakeups: AtomicU64,
    /// Checkpoints the dispatcher delivered to parked sessions without waking them.
    deliveries: AtomicU64,
    /// Whether the dispatcher delivers at all (tests compare with the woken path).
    delivering: AtomicBool,
    /// The last commit count the dispatcher has handled (tests wait for it).
    dispatched: watch::Sender<u64>,
}

impl Default for ParkIndex {
    fn default() -> Self {
        ParkIndex {
            index: Mutex::default(),
            next_id: AtomicU64::new(0),
            dispatching: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            delivering: AtomicBool::new(true),
            dispatched: watch::Sender::new(0),
        }
    }
}

/// A session's registration; dropping it unregisters.
#[derive(Debug)]
pub(super) struct Parked {
    index: Arc<ParkIndex>,
    id: u64,
    wake: Arc<Notify>,
    left: bool,
}

impl Parked {
    /// Resolves when the dispatcher wakes this session (a wake before the wait is not lost).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Unregisters; returns the state the dispatcher advanced the session to.
    pub fn leave(mut self) -> Option<(ParkState, Box<Parcel>)> {
        self.left = true;
        self.index.remove(self.id)
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        if !self.left {
            self.index.remove(self.id);
        }
    }
}

impl ParkIndex {
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Parked sessions woken by the dispatcher so far.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Checkpoints delivered to parked sessions without waking them so far.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }

    /// Turns the dispatcher's deliveries off (or on): every concerned session is woken instead.
    #[cfg(test)]
    pub(super) fn set_delivering(&self, on: bool) {
        self.delivering.store(on, Ordering::Relaxed);
    }

    /// Sessions parked now.
    pub fn parked(&self) -> usize {
        self.lock().entries.values().filter(|e| !e.woken).count()
    }

    /// A receiver of the last commit count the dispatcher has handled.
    pub fn dispatched(&self) -> watch::Receiver<u64> {
        self.dispatched.subscribe()
    }

    /// Registers a session holding the buckets of `parcel`. The caller must re-check for commits after
    /// this (and not wait if there was one): a commit dispatched before the registration did not see it.
    pub(super) fn park(self: &Arc<Self>, state: ParkState, parcel: Box<Parcel>) -> Parked {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let mut index = self.lock();
        for name in parcel.buckets() {
            index.by_bucket.entry(name.clone()).or_default().insert(id);
        }
        index.entries.insert(
            id,
            Entry {
                state,
                parcel,
                wake: Arc::clone(&wake),
                woken: false,
            },
        );
        Parked {
            index: Arc::clone(self),
            id,
            wake,
            left: false,
        }
    }

    fn remove(&self, id: u64) -> Option<(ParkState, Box<Parcel>)> {
        let mut index = self.lock();
        let entry = index.entries.remove(&id)?;
        for name in entry.parcel.buckets() {
            if let Some(ids) = index.by_bucket.get_mut(name) {
                ids.remove(&id);
                if ids.is_empty() {
                    index.by_bucket.remove(name);
                }
            }
        }
        Some((entry.state, entry.parcel))
    }

    fn is_empty(&self) -> bool {
        self.lock().entries.values().all(|e| e.woken)
    }

    /// Wakes every parked session (a dispatch failed: each finds out for itself, as before parking).
    fn wake_all(&self) {
        let mut index = self.lock();
        for entry in index.entries.values_mut() {
            self.wake(entry);
        }
    }

    fn wake(&self, entry: &mut Entry) {
        if !entry.woken {
            entry.woken = true;
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            entry.wake.notify_one();
        }
    }

    /// Checkpoints (below `up_to`) of sessions parked on `version`, at most [`MAX_POSITIONS`].
    fn positions(&self, version: RulesVersion, up_to: OpId) -> Vec<OpId> {
        let index = self.lock();
        let mut positions: Vec<OpId> = Vec::new();
        for entry in index.entries.values().filter(|e| !e.woken) {
            let at = entry.state.at.op_id;
            if entry.state.version == version && at < up_to && !positions.contains(&at) {
                positions.push(at);
                if positions.len() == MAX_POSITIONS {
                    break;
                }
            }
        }
        positions
    }

    /// Parked sessions a commit concerns (holding a changed bucket, parked at the position it changed
    /// after), with the position `changed[i]` they were parked at.
    fn concerned(index: &Index, changed: &[(OpId, Arc<HashSet<BucketName>>)]) -> HashMap<u64, usize> {
        let mut concerned = HashMap::new();
        for (i, (at, names)) in changed.iter().enumerate() {
            for name in names.iter() {
                for id in index.by_bucket.get(name).into_iter().flatten() {
                    if index
                        .entries
                        .get(id)
                        .is_some_and(|e| !e.woken && e.state.at.op_id == *at)
                    {
                        concerned.insert(*id, i);
                    }
                }
            }
        }
        concerned
    }

    /// The changed buckets concerned sessions hold, each with the positions their ops are sent from:
    /// what [`prepare_delivery`] reads before [`Self::dispatch`] delivers from the caches.
    fn concerned_ranges(
        &self,
        changed: &[(OpId, Arc<HashSet<BucketName>>)],
    ) -> HashMap<BucketName, HashSet<OpId>> {
        if !self.delivering.load(Ordering::Relaxed) {
            return HashMap::new();
        }
        let index = self.lock();
        let mut ranges: HashMap<BucketName, HashSet<OpId>> = HashMap::new();
        for (id, i) in Self::concerned(&index, changed) {
            let Some(entry) = index.entries.get(&id) else {
                continue;
            };
            for name in changed[i].1.iter() {
                if let Some(position) = entry.parcel.position(name) {
                    ranges.entry(name.clone()).or_default().insert(position);
                }
            }
        }
        ranges
    }

    /// Delivers `published` to the sessions it concerns where `deliver` can (else wakes them), wakes
    /// the sessions whose state it cannot tell, and advances the others to `published`.
    fn dispatch(
        &self,
        published: Checkpoint,
        current: &ParkState,
        changed: &[(OpId, Arc<HashSet<BucketName>>)],
        mut deliver: impl FnMut(&mut Parcel, &HashSet<BucketName>) -> bool,
    ) {
        let delivering = self.delivering.load(Ordering::Relaxed);
        let mut guard = self.lock();
        let index = &mut *guard;
        let concerned = Self::concerned(index, changed);
        for (id, entry) in &mut index.entries {
            if entry.woken {
                continue;
            }
            let state = &entry.state;
            let same = state.version == current.version
                && state.compaction_generation == current.compaction_generation
                && state.write_checkpoint_generation == current.write_checkpoint_generation;
            let known =
                state.at.op_id == published.op_id || changed.iter().any(|(at, _)| *at == state.at.op_id);
            if !same || state.at.op_id > published.op_id || !known {
                self.wake(entry);
            } else if let Some(&i) = concerned.get(id) {
                if delivering && deliver(&mut entry.parcel, &changed[i].1) {
                    entry.state.at = published;
                    self.deliveries.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.wake(entry);
                }
            } else {
                // Nothing it holds changed: its state is also that of the published checkpoint.
                entry.state.at = published;
            }
        }
    }
}

/// Starts the dispatcher of `env` unless one runs. It subscribes to commits before returning, so a
/// session that registers after this and then sees no commit is reached by the next one.
pub(super) fn ensure_dispatcher<S: BucketStorage + ?Sized + 'static>(env: &Arc<SessionEnv<S>>) {
    let index = env.reads.parked();
    if index.dispatching.swap(true, Ordering::AcqRel) {
        return;
    }
    let commits = env.events.subscribe();
    let running = Running(Arc::clone(index));
    tokio::spawn(dispatch_loop(Arc::downgrade(env), commits, running));
}

/// Clears the running flag however the task ends (a runtime shutting down drops it).
struct Running(Arc<ParkIndex>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dispatching.store(false, Ordering::Release);
        // Sessions parked on other runtimes must not wait for a dispatcher that is gone.
        self.0.wake_all();
    }
}

async fn dispatch_loop<S: BucketStorage + ?Sized + 'static>(
    env: Weak<SessionEnv<S>>,
    mut commits: watch::Receiver<u64>,
    running: Running,
) {
    let index = Arc::clone(&running.0);
    while commits.changed().await.is_ok() {
        let count = *commits.borrow_and_update();
        let Some(env) = env.upgrade() else {
            break;
        };
        if !index.is_empty() {
            let reader = Arc::clone(&env);
            let result = tokio::task::spawn_blocking(move || read_commit(&reader, count)).await;
            match result {
                // Delivered here, not on the blocking thread (module docs); only cached lines.
                Ok(Ok(Some(read))) => {
                    index.dispatch(read.checkpoint, &read.current, &read.changed, |parcel, names| {
                        deliver_parked(&env, &read.current, names, parcel, read.started)
                    })
                }
                Ok(Ok(None)) => {}
                _ => {
                    debug!("wake-up dispatch failed; waking every parked session");
                    index.wake_all();
                }
            }
        }
        index.dispatched.send_replace(count);
    }
    drop(running);
}

/// What the dispatcher read of one commit, for [`ParkIndex::dispatch`].
struct CommitRead {
    checkpoint: Checkpoint,
    current: ParkState,
    changed: Vec<(OpId, Arc<HashSet<BucketName>>)>,
    started: Instant,
}

/// The shared read of one commit (blocking): published checkpoint and changed buckets, cached in
/// [`super::session::SharedReads`] for the sessions it wakes, and what deliveries need besides. `None`
/// when every parked session was woken instead.
fn read_commit<S: BucketStorage + ?Sized>(
    env: &SessionEnv<S>,
    count: u64,
) -> Result<Option<CommitRead>, StorageError> {
    let index = env.reads.parked();
    let compaction = env.events.compaction_generation();
    let write_checkpoints = env.events.write_checkpoint_generation();
    let Some(published) = env.reads.published_checkpoint(&*env.storage, count)? else {
        index.wake_all();
        return Ok(None);
    };
    let (version, checkpoint) = published;
    let mut changed = Vec::new();
    for at in index.positions(version, checkpoint.op_id) {
        changed.push((
            at,
            env.reads.changed(&*env.storage, version, at, checkpoint.op_id)?,
        ));
    }
    if compaction % 2 == 1 || env.events.compaction_generation() != compaction {
        // A compaction overlapped the reads: every parked session re-reads for itself.
        index.wake_all();
        return Ok(None);
    }
    let current = ParkState {
        version,
        at: checkpoint,
        compaction_generation: compaction,
        write_checkpoint_generation: write_checkpoints,
    };
    let started = Instant::now();
    let ranges = index.concerned_ranges(&changed);
    if !ranges.is_empty() {
        prepare_delivery(env, &current, &ranges)?;
    }
    Ok(Some(CommitRead {
        checkpoint,
        current,
        changed,
        started,
    }))
}
