//! The change feed of a Postgres storage shared by several gateways: turns other processes' commits
//! into this process's [`StorageEvents`], so a client connected to any gateway sees a change as soon
//! as one connected to the replicating gateway.
//!
//! One connection per process (`application_name` `syncgate-feed`) `LISTEN`s on the storage's
//! channel (see [`PostgresStorage::channel`]); payloads are a kind tag: `c` something was published
//! (checkpoint, activation, removal), `w` a write checkpoint was stored, `k<n>` the stored compaction
//! generation became `n` (odd while a compaction runs). The feed also polls
//! [`PostgresStorage::feed_state`] every [`PostgresStorage::poll_interval`], raising the same events for
//! whatever changed: a notification that never arrives (a pooler in transaction mode accepts LISTEN and
//! delivers nothing) costs at most one interval. While the connection is down the feed reconnects with
//! backoff, polling meanwhile; once listening again it raises one commit event, as a notification may
//! have been lost in between.
//!
//! Notifications of this process's own commits come back too: they only cause an extra wake-up, and
//! the compaction generation mirrors the stored counter rather than counting notifications, so it
//! keeps the right parity (see [`StorageEvents::set_remote_compaction`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, stream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{BucketStorage, ConfiguredStorage, FeedState, Notifying, PostgresStorage, StorageEvents};

/// Storages that may be Postgres-backed (the feed has nothing to do for SQLite).
pub trait PostgresBacked {
    fn postgres(&self) -> Option<&PostgresStorage>;
}

impl PostgresBacked for PostgresStorage {
    fn postgres(&self) -> Option<&PostgresStorage> {
        Some(self)
    }
}

impl PostgresBacked for ConfiguredStorage {
    fn postgres(&self) -> Option<&PostgresStorage> {
        match self {
            ConfiguredStorage::Postgres(storage) => Some(storage),
            ConfiguredStorage::Sqlite(_) => None,
        }
    }
}

/// How long the feed waits before listening again after losing its connection: `first`, doubled
/// after each failed attempt up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Reconnect {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            first: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// A running change feed; stops when dropped.
#[derive(Debug)]
pub struct ChangeFeed {
    task: JoinHandle<()>,
    listening: watch::Receiver<bool>,
    polls: watch::Receiver<u64>,
}

impl ChangeFeed {
    /// Starts the feed for a Postgres storage (`None` for SQLite). Needs a tokio runtime.
    pub fn spawn<S>(storage: &Arc<Notifying<S>>) -> Option<ChangeFeed>
    where
        S: BucketStorage + PostgresBacked + Send + Sync + 'static,
    {
        Self::spawn_with(storage, Reconnect::default())
    }

    pub fn spawn_with<S>(storage: &Arc<Notifying<S>>, reconnect: Reconnect) -> Option<ChangeFeed>
    where
        S: BucketStorage + PostgresBacked + Send + Sync + 'static,
    {
        storage.inner().postgres()?;
        let (listening_tx, listening) = watch::channel(false);
        let (polls_tx, polls) = watch::channel(0);
        let status = Status {
            listening: listening_tx,
            polls: polls_tx,
        };
        let task = tokio::spawn(run(Arc::clone(storage), reconnect, status));
        Some(ChangeFeed {
            task,
            listening,
            polls,
        })
    }

    /// True while the feed's connection listens (false while it polls).
    pub fn listening(&self) -> watch::Receiver<bool> {
        self.listening.clone()
    }

    /// Completed polls of the storage's state so far.
    pub fn polls(&self) -> watch::Receiver<u64> {
        self.polls.clone()
    }
}

/// What the feed task reports.
struct Status {
    listening: watch::Sender<bool>,
    polls: watch::Sender<u64>,
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run<S>(storage: Arc<Notifying<S>>, reconnect: Reconnect, status: Status)
where
    S: BucketStorage + PostgresBacked + Send + Sync + 'static,
{
    let postgres = storage
        .inner()
        .postgres()
        .expect("checked by ChangeFeed::spawn_with");
    let (config, channel, poll_interval) = (
        postgres.feed_connection(),
        postgres.channel().to_owned(),
        postgres.poll_interval(),
    );
    let events = Arc::clone(storage.events());
    let mut last: Option<FeedState> = None;
    let mut delay = reconnect.first;
    let mut lost = false;
    loop {
        match listen(&config, &channel).await {
            Ok((_client, mut notifications)) => {
                // Listening before this poll: a commit after it is notified, one before it is polled.
                poll_once(&storage, &mut last, &status.polls).await;
                if lost {
                    events.notify();
                    tracing::info!("storage change feed listening again");
                }
                status.listening.send_replace(true);
                delay = reconnect.first;
                // Polling goes on while listening, as a safety net: behind a pooler in transaction mode
                // LISTEN succeeds and delivers nothing, so a change then arrives by the next poll.
                let mut next_poll = tokio::time::Instant::now() + poll_interval;
                loop {
                    tokio::select! {
                        payload = notifications.recv() => match payload {
                            Some(payload) => apply(&events, &payload),
                            None => break,
                        },
                        () = tokio::time::sleep_until(next_poll) => {
                            poll_once(&storage, &mut last, &status.polls).await;
                            next_poll = tokio::time::Instant::now() + poll_interval;
                        }
                    }
                }
                status.listening.send_replace(false);
                tracing::warn!(
                    poll_interval = ?poll_interval,
                    "storage change feed lost its connection; polling until it listens again"
                );
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "storage change feed cannot listen; polling meanwhile");
            }
        }
        lost = true;
        let reconnect_at = tokio::time::Instant::now() + delay;
        loop {
            poll_once(&storage, &mut last, &status.polls).await;
            let now = tokio::time::Instant::now();
            if now >= reconnect_at {
                break;
            }
            tokio::time::sleep(poll_interval.min(reconnect_at - now)).await;
        }
        delay = (delay * 2).min(reconnect.max);
    }
}

/// Connects and listens; notification payloads arrive on the receiver until the connection ends.
/// The client must be kept: dropping it closes the connection.
async fn listen(
    config: &tokio_postgres::Config,
    channel: &str,
) -> Result<(tokio_postgres::Client, mpsc::UnboundedReceiver<String>), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if sender.send(notification.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "storage change feed connection ended");
                    break;
                }
            }
        }
    });
    // The channel is an identifier of at most 63 lower-case letters, digits and `_`.
    client.batch_execute(&format!("LISTEN \"{channel}\"")).await?;
    Ok((client, receiver))
}

/// Raises the events one notification stands for.
fn apply(events: &StorageEvents, payload: &str) {
    match payload.split_at_checked(1) {
        Some(("c", _)) => events.notify(),
        Some(("w", _)) => events.note_write_checkpoint(),
        Some(("k", generation)) => {
            if let Ok(generation) = generation.parse::<u64>() {
                events.set_remote_compaction(generation);
                if generation % 2 == 1 {
                    return;
                }
            }
            // Ended: readers that waited for it re-read.
            events.notify();
        }
        // A kind of a newer gateway: a wake-up is always safe.
        _ => events.notify(),
    }
}

/// Polls the storage's counters and raises events for what changed since the last poll.
async fn poll_once<S>(storage: &Arc<Notifying<S>>, last: &mut Option<FeedState>, polls: &watch::Sender<u64>)
where
    S: BucketStorage + PostgresBacked + Send + Sync + 'static,
{
    let polled = Arc::clone(storage);
    let state = tokio::task::spawn_blocking(move || {
        polled
            .inner()
            .postgres()
            .expect("checked by ChangeFeed::spawn_with")
            .feed_state()
    })
    .await;
    let state = match state {
        Ok(Ok(state)) => state,
        Ok(Err(error)) => {
            tracing::debug!(%error, "storage change feed cannot poll");
            return;
        }
        Err(error) => {
            tracing::debug!(%error, "storage change feed poll task failed");
            return;
        }
    };
    polls.send_modify(|n| *n += 1);
    let events = storage.events();
    events.set_remote_compaction(state.compaction_generation);
    if let Some(before) = last.replace(state) {
        if before.write_checkpoints != state.write_checkpoints {
            events.note_write_checkpoint();
        }
        if before.checkpoints != state.checkpoints
            || before.compaction_generation != state.compaction_generation
        {
            events.notify();
        }
    }
}
