//! The registry of open sync streams the dashboard lists: who is connected, over which transport, since
//! when, and what checkpoint each was last sent.
//!
//! Cheap by design: one map insert and remove per stream, two relaxed atomic stores per checkpoint line.
//! It holds one entry per open stream, so it is bounded by `api.parameters.max_concurrent_connections`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How a client's stream is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Http,
    WebSocket,
}

/// One open stream, updated by its session.
#[derive(Debug)]
pub struct ClientEntry {
    user_id: String,
    transport: Transport,
    connected_at_unix_ms: u64,
    /// Op id of the last checkpoint or diff sent; 0 before the first.
    last_checkpoint: AtomicU64,
    /// Buckets of that checkpoint.
    buckets: AtomicU64,
}

impl ClientEntry {
    /// The session sent a checkpoint (or diff) at `op_id` covering `buckets` buckets.
    pub fn checkpoint_sent(&self, op_id: u64, buckets: usize) {
        self.last_checkpoint.store(op_id, Ordering::Relaxed);
        self.buckets
            .store(u64::try_from(buckets).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// What the dashboard shows of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientView {
    pub user_id: String,
    pub transport: Transport,
    pub connected_at_unix_ms: u64,
    /// `None` until the first checkpoint was sent (e.g. during the initial snapshot).
    pub last_checkpoint: Option<String>,
    pub buckets: u64,
}

#[derive(Debug, Default)]
pub struct ClientRegistry {
    next_id: AtomicU64,
    clients: Mutex<BTreeMap<u64, Arc<ClientEntry>>>,
}

/// Removes its stream from the registry when dropped, however the stream ends.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<ClientRegistry>,
    id: u64,
    entry: Arc<ClientEntry>,
}

impl Registration {
    pub fn entry(&self) -> &Arc<ClientEntry> {
        &self.entry
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl ClientRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ClientEntry>>> {
        // A panic while holding the lock leaves the map itself consistent (single inserts/removes).
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn register(self: &Arc<Self>, user_id: &str, transport: Transport) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ClientEntry {
            user_id: user_id.to_owned(),
            transport,
            connected_at_unix_ms: unix_ms_now(),
            last_checkpoint: AtomicU64::new(0),
            buckets: AtomicU64::new(0),
        });
        self.lock().insert(id, Arc::clone(&entry));
        Registration {
            registry: Arc::clone(self),
            id,
            entry,
        }
    }

    /// The number of open streams and the oldest `limit` of them (in connection order).
    pub fn list(&self, limit: usize) -> (usize, Vec<ClientView>) {
        let clients = self.lock();
        let views = clients
            .values()
            .take(limit)
            .map(|c| {
                let op_id = c.last_checkpoint.load(Ordering::Relaxed);
                ClientView {
                    user_id: c.user_id.clone(),
                    transport: c.transport,
                    connected_at_unix_ms: c.connected_at_unix_ms,
                    last_checkpoint: (op_id > 0).then(|| op_id.to_string()),
                    buckets: c.buckets.load(Ordering::Relaxed),
                }
            })
            .collect();
        (clients.len(), views)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_listed_while_registered() {
        let registry = Arc::new(ClientRegistry::default());
        let alice = registry.register("alice", Transport::Http);
        let bob = registry.register("bob", Transport::WebSocket);
        alice.entry().checkpoint_sent(42, 3);
        let (count, views) = registry.list(10);
        assert_eq!(count, 2);
        assert_eq!(views[0].user_id, "alice");
        assert_eq!(views[0].last_checkpoint.as_deref(), Some("42"));
        assert_eq!(views[0].buckets, 3);
        assert_eq!(views[1].transport, Transport::WebSocket);
        assert_eq!(views[1].last_checkpoint, None);
        assert_eq!(registry.list(1).1.len(), 1, "the listing is bounded");
        drop(alice);
        let (count, views) = registry.list(10);
        assert_eq!((count, views[0].user_id.as_str()), (1, "bob"));
        drop(bob);
        assert_eq!(registry.list(10).0, 0);
    }
}
