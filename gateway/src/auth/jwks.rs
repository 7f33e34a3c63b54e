//! Keys fetched from `client_auth.jwks_uri`: cached per URI, refreshed periodically and, rate
//! limited, when a token names a key the cache does not have (the issuer rotated its keys).
//!
//! Invariants: a failed fetch never drops the keys a URI had before (an identity provider outage
//! must not log everyone out); at most one fetch round runs at a time; refreshes asked for by
//! unknown keys start at most once per [`MIN_REFRESH_INTERVAL`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::error::JwksError;
use super::http::HttpClient;
use super::keys::KeySpec;

/// Unknown-key refreshes start at most this often (an attacker's random `kid`s must not turn into
/// a request flood against the identity provider).
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Keys are re-fetched this often even when nothing asks (revoked keys disappear).
pub const PERIODIC_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);
/// First retry delay after a failed start-up fetch; doubles up to the minimum refresh interval.
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);

/// How often JWKS are re-fetched; the defaults are [`MIN_REFRESH_INTERVAL`] and
/// [`PERIODIC_REFRESH_INTERVAL`] (tests shorten them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshIntervals {
    /// Refreshes asked for by unknown keys start at most this often.
    pub min: Duration,
    /// Keys are re-fetched this often regardless.
    pub periodic: Duration,
}

impl Default for RefreshIntervals {
    fn default() -> Self {
        RefreshIntervals {
            min: MIN_REFRESH_INTERVAL,
            periodic: PERIODIC_REFRESH_INTERVAL,
        }
    }
}
/// A JWKS document larger than this is refused (a key set is a few kilobytes).
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct RemoteKeys {
    uris: Vec<String>,
    intervals: RefreshIntervals,
    client: HttpClient,
    /// Keys per URI, in `uris` order; replaced wholesale on a successful fetch of that URI.
    keys: RwLock<Vec<Arc<Vec<KeySpec>>>>,
    refresh_wanted: Notify,
    /// Set once every URI has been fetched successfully at least once.
    loaded: AtomicBool,
    /// Completed fetch rounds, whatever their outcome (requests wait for the first one).
    rounds: watch::Sender<u64>,
}

impl RemoteKeys {
    pub fn new(uris: Vec<String>, intervals: RefreshIntervals) -> Result<RemoteKeys, String> {
        let client = HttpClient::new()?;
        let keys = RwLock::new(uris.iter().map(|_| Arc::new(Vec::new())).collect());
        Ok(RemoteKeys {
            uris,
            intervals,
            client,
            keys,
            refresh_wanted: Notify::new(),
            loaded: AtomicBool::new(false),
            rounds: watch::Sender::new(0),
        })
    }

    /// Every fetched key, URI by URI.
    pub fn snapshot(&self) -> Vec<Arc<Vec<KeySpec>>> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Asks the background task for a refresh (it applies the rate limit). Cheap, sync, never blocks.
    pub fn request_refresh(&self) {
        self.refresh_wanted.notify_one();
    }

    /// Whether every URI has been fetched successfully at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Whether a fetch round has completed (successfully or not).
    pub fn has_tried(&self) -> bool {
        *self.rounds.borrow() > 0
    }

    /// Waits until the first fetch round has completed, or `timeout` passes.
    pub async fn wait_first_round(&self, timeout: Duration) {
        let mut rx = self.rounds.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|rounds| *rounds > 0)).await;
    }

    /// Fetches every URI once; keeps the old keys of a URI that fails. Returns the failures.
    pub async fn refresh(&self) -> Vec<JwksError> {
        let mut errors = Vec::new();
        let mut all_loaded = true;
        for (index, uri) in self.uris.iter().enumerate() {
            match self.fetch(uri).await {
                Ok(keys) => {
                    tracing::info!(%uri, keys = keys.len(), "fetched JWKS");
                    let mut guard = self.keys.write().unwrap_or_else(PoisonError::into_inner);
                    guard[index] = Arc::new(keys);
                }
                Err(error) => {
                    all_loaded = false;
                    errors.push(error);
                }
            }
        }
        // Once loaded stays loaded: later failures keep serving the cached keys.
        if all_loaded {
            self.loaded.store(true, Ordering::Release);
        }
        self.rounds.send_modify(|rounds| *rounds += 1);
        errors
    }

    async fn fetch(&self, uri: &str) -> Result<Vec<KeySpec>, JwksError> {
        let body = self
            .client
            .get(uri, MAX_DOCUMENT_BYTES, FETCH_TIMEOUT)
            .await
            .map_err(|message| JwksError::Fetch {
                uri: uri.to_owned(),
                message,
            })?;
        parse_jwks(uri, &body)
    }
}

/// The usable keys of a JWKS document. Keys syncgate cannot use (shared secrets, `use` other than
/// `sig`, unsupported curves) are skipped with a warning: one odd key must not disable the rest.
pub(crate) fn parse_jwks(uri: &str, body: &[u8]) -> Result<Vec<KeySpec>, JwksError> {
    let document_error = |message: String| JwksError::Document {
        uri: uri.to_owned(),
        message,
    };
    let document: Value = serde_json::from_slice(body).map_err(|e| document_error(e.to_string()))?;
    let Some(items) = document.get("keys").and_then(Value::as_array) else {
        return Err(document_error("no `keys` array".into()));
    };
    let mut keys = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let Some(members) = item.as_object() else {
            tracing::warn!(%uri, index, "skipping a JWKS entry that is not an object");
            continue;
        };
        match KeySpec::from_jwk(members, false) {
            Ok(key) => keys.push(key),
            Err(reason) => {
                let kid = members.get("kid").and_then(Value::as_str).unwrap_or("(none)");
                tracing::warn!(%uri, index, kid, %reason, "skipping a JWKS key");
            }
        }
    }
    Ok(keys)
}

/// The background refresher: fetches at once (retrying with backoff until every URI has loaded),
/// then on request (at most once per `intervals.min`) and every `intervals.periodic`. Runs until
/// aborted.
pub(crate) async fn refresh_loop(remote: Arc<RemoteKeys>) {
    let intervals = remote.intervals;
    let mut retry_delay = FIRST_RETRY_DELAY.min(intervals.min);
    loop {
        let errors = remote.refresh().await;
        for error in &errors {
            tracing::warn!(%error, "JWKS fetch failed; keeping the keys fetched before");
        }
        let last_fetch = Instant::now();
        let next_periodic = if errors.is_empty() || remote.is_loaded() {
            retry_delay = FIRST_RETRY_DELAY.min(intervals.min);
            last_fetch + intervals.periodic
        } else {
            // Never loaded yet: tokens signed by these keys all fail until it works, so retry soon.
            let at = last_fetch + retry_delay;
            retry_delay = (retry_delay * 2).min(intervals.min);
            at
        };
        tokio::select! {
            () = tokio::time::sleep_until(next_periodic) => {}
            () = remote.refresh_wanted.notified() => {
                // Coalesces a burst of unknown-key requests into one fetch, at most once per interval.
                tokio::time::sleep_until(last_fetch + intervals.min).await;
            }
        }
    }
}

/// Aborts the refresher when the authenticator goes away.
#[derive(Default)]
pub(crate) struct RefreshTask(pub OnceLock<tokio::task::AbortHandle>);

impl Drop for RefreshTask {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}
