//! Write checkpoints (PROTOCOL §1.4, §1.5, §4.4): map `(user, client)` to an id at the source's current
//! WAL position, then emit the marker message so replication passes that position even on an idle
//! database. Sessions send the id in the first checkpoint whose LSN has passed it.

use std::sync::Arc;

use syncgate_protocol::{ClientId, UserId, WriteCheckpointId};
use tokio::sync::Mutex;
use tracing::warn;

use super::ApiError;
use crate::replicator::{Catalog, SourceConnection};
use crate::storage::{BucketStorage, Lsn};

/// The API's own connection to the source database (ordinary, not replication), opened on first use
/// and reopened after a failure.
#[derive(Debug)]
pub struct WriteCheckpoints {
    source: SourceConnection,
    catalog: Mutex<Option<Catalog>>,
}

impl WriteCheckpoints {
    pub fn new(source: SourceConnection) -> Self {
        WriteCheckpoints {
            source,
            catalog: Mutex::new(None),
        }
    }

    /// Legacy mode: a fresh id for `(user, client_id)` at the current WAL position.
    pub async fn create(
        &self,
        storage: &Arc<dyn BucketStorage>,
        user: UserId,
        client_id: Option<ClientId>,
    ) -> Result<WriteCheckpointId, ApiError> {
        let head = self.head().await?;
        let storage = Arc::clone(storage);
        let id = tokio::task::spawn_blocking(move || {
            storage.create_write_checkpoint(&user, client_id.as_ref(), head)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("storing the write checkpoint: {e}")))?;
        self.emit_marker().await?;
        Ok(id)
    }

    /// Requests mode: stores `max(stored, requested)` at the current WAL position and returns it.
    pub async fn request(
        &self,
        storage: &Arc<dyn BucketStorage>,
        user: UserId,
        client_id: Option<ClientId>,
        requested: WriteCheckpointId,
    ) -> Result<WriteCheckpointId, ApiError> {
        let head = self.head().await?;
        let storage = Arc::clone(storage);
        let id = tokio::task::spawn_blocking(move || {
            storage.request_write_checkpoint(&user, client_id.as_ref(), requested, head)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("storing the checkpoint request: {e}")))?;
        self.emit_marker().await?;
        Ok(id)
    }

    async fn head(&self) -> Result<Lsn, ApiError> {
        let mut guard = self.catalog.lock().await;
        let catalog = self.connected(&mut guard).await?;
        match catalog.current_wal_lsn().await {
            Ok(lsn) => Ok(lsn),
            Err(error) => {
                *guard = None;
                warn!(%error, "write checkpoint: reading the WAL position failed");
                Err(ApiError::unavailable(format!(
                    "the source database is unavailable: {error}"
                )))
            }
        }
    }

    async fn emit_marker(&self) -> Result<(), ApiError> {
        let mut guard = self.catalog.lock().await;
        let catalog = self.connected(&mut guard).await?;
        match catalog.emit_marker().await {
            Ok(_) => Ok(()),
            Err(error) => {
                *guard = None;
                warn!(%error, "write checkpoint: emitting the marker failed");
                Err(ApiError::unavailable(format!(
                    "the source database is unavailable: {error}"
                )))
            }
        }
    }

    async fn connected<'a>(&self, guard: &'a mut Option<Catalog>) -> Result<&'a Catalog, ApiError> {
        if guard.as_ref().is_none_or(|c| c.client().is_closed()) {
            let client = self
                .source
                .connect("write checkpoints")
                .await
                .map_err(|e| ApiError::unavailable(format!("the source database is unavailable: {e}")))?;
            *guard = Some(Catalog::new(client));
        }
        guard
            .as_ref()
            .ok_or_else(|| ApiError::internal("no source connection"))
    }
}
