//! [`ReplicationClient`] on pg_walstream's low-level libpq connection.
//!
//! We use the low-level connection and parser rather than its high-level stream: the stream's
//! `RowData` drops the unchanged-TOAST marker, its slot helper defaults to NOEXPORT_SNAPSHOT and
//! silently skips an existing slot, and its feedback is interval-only (notes/replication-crates.md,
//! "Pitfalls found"). Here feedback is ours: acks go out at once, keepalive requests are answered at
//! once, and a status update is sent at least every [`FEEDBACK_INTERVAL`] so the walsender (whose
//! `wal_sender_timeout` is 60 s by default) keeps the session.

use std::time::Duration;

use pg_walstream::{
    CancellationToken, LogicalReplicationParser, PgReplicationConnection, ReplicationSlotOptions, SlotType,
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::event::Decoder;
use super::plugin::PluginDecoder;
use super::{
    CreatedSlot, Lsn, OutputPlugin, ProtoVersion, ReplicationClient, SESSION_SETTINGS, SourceError,
    StartOptions, StreamItem,
};

/// How often an unprompted status update goes out. Well under the default `wal_sender_timeout` (60 s).
pub const FEEDBACK_INTERVAL: Duration = Duration::from_secs(10);

/// A logical replication session on one libpq connection.
pub struct WalstreamClient {
    conn: PgReplicationConnection,
    parser: LogicalReplicationParser,
    decoder: Decoder,
    plugin_decoder: PluginDecoder,
    /// What the running stream is decoded as (set by `start`).
    plugin: OutputPlugin,
    cancel: CancellationToken,
    streaming: bool,
    /// Highest WAL end seen: reported as "written", never as flushed.
    received: Lsn,
    /// The last ack: reported as flushed and applied.
    flushed: Lsn,
    /// XLogData payload bytes since the last [`WalstreamClient::take_stream_bytes`].
    stream_bytes: u64,
    last_feedback: Instant,
}

impl std::fmt::Debug for WalstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalstreamClient")
            .field("streaming", &self.streaming)
            .field("received", &self.received)
            .field("flushed", &self.flushed)
            .finish_non_exhaustive()
    }
}

/// Adds `replication=database` and the [`SESSION_SETTINGS`] to a `postgres://` URL unless it already
/// has them. Key/value conninfo strings get the same as extra keywords.
pub fn replication_conninfo(conninfo: &str) -> String {
    let options: Vec<String> = SESSION_SETTINGS
        .iter()
        .map(|(name, value)| format!("-c {name}={value}"))
        .collect();
    let options = options.join(" ");
    let is_url = conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://");
    let mut out = conninfo.to_owned();
    if is_url {
        let mut sep = if out.contains('?') { '&' } else { '?' };
        if !out.contains("replication=") {
            out.push(sep);
            out.push_str("replication=database");
            sep = '&';
        }
        if !out.contains("options=") {
            out.push(sep);
            out.push_str("options=");
            out.push_str(&options.replace(' ', "%20").replace('=', "%3D"));
        }
    } else {
        if !out.contains("replication=") {
            out.push_str(" replication=database");
        }
        if !out.contains("options=") {
            out.push_str(&format!(" options='{options}'"));
        }
    }
    out
}

impl WalstreamClient {
    /// Opens a replication connection. `conninfo` is a libpq URL or key/value string; see
    /// [`replication_conninfo`] for what is added.
    pub async fn connect(conninfo: &str) -> Result<WalstreamClient, SourceError> {
        let conn = PgReplicationConnection::connect_async(&replication_conninfo(conninfo)).await?;
        Ok(WalstreamClient {
            conn,
            parser: LogicalReplicationParser::with_protocol_version(1),
            decoder: Decoder::new(),
            plugin_decoder: PluginDecoder::new(),
            plugin: OutputPlugin::Pgoutput,
            cancel: CancellationToken::new(),
            streaming: false,
            received: Lsn::ZERO,
            flushed: Lsn::ZERO,
            stream_bytes: 0,
            last_feedback: Instant::now(),
        })
    }

    /// Change data (XLogData payload bytes) received since the last call: what the output plugin sent.
    pub fn take_stream_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.stream_bytes)
    }

    /// Drops a slot from this (non-streaming) session. `wait` waits for an active walsender to let go.
    pub async fn drop_slot(&mut self, slot_name: &str, wait: bool) -> Result<(), SourceError> {
        self.conn.drop_replication_slot_async(slot_name, wait).await?;
        Ok(())
    }

    async fn send_feedback(&mut self, reply_requested: bool) -> Result<(), SourceError> {
        let received = self.received.max(self.flushed);
        self.conn
            .send_standby_status_update(received.0, self.flushed.0, self.flushed.0, reply_requested)
            .await?;
        self.last_feedback = Instant::now();
        Ok(())
    }

    fn require_streaming(&self, what: &str) -> Result<(), SourceError> {
        if self.streaming {
            Ok(())
        } else {
            Err(SourceError::Usage(format!("{what} before start()")))
        }
    }
}

fn read_u64(data: &[u8], at: usize) -> Result<u64, SourceError> {
    data.get(at..at + 8)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| {
            SourceError::Protocol(format!("CopyData message of {} bytes is too short", data.len()))
        })
}

impl ReplicationClient for WalstreamClient {
    async fn create_slot(
        &mut self,
        slot_name: &str,
        plugin: OutputPlugin,
    ) -> Result<CreatedSlot, SourceError> {
        let options = ReplicationSlotOptions {
            // pg_walstream's default is NOEXPORT_SNAPSHOT: without this there is no consistent point to copy at.
            snapshot: Some("export".to_owned()),
            ..ReplicationSlotOptions::default()
        };
        let result = self
            .conn
            .create_replication_slot_with_options_async(
                slot_name,
                SlotType::Logical,
                Some(plugin.name()),
                &options,
            )
            .await?;
        // Row: slot_name, consistent_point, snapshot_name, output_plugin.
        let consistent_point = result.get_value(0, 1).ok_or_else(|| {
            SourceError::Protocol("CREATE_REPLICATION_SLOT returned no consistent_point".into())
        })?;
        let snapshot_name = result
            .get_value(0, 2)
            .filter(|name| !name.is_empty())
            .ok_or_else(|| SourceError::Protocol("CREATE_REPLICATION_SLOT exported no snapshot".into()))?;
        let consistent_point: Lsn = consistent_point
            .parse()
            .map_err(|e| SourceError::Protocol(format!("consistent_point: {e}")))?;
        info!(slot = slot_name, %plugin, snapshot = %snapshot_name, %consistent_point, "created replication slot");
        Ok(CreatedSlot {
            slot_name: slot_name.to_owned(),
            snapshot_name,
            consistent_point,
        })
    }

    async fn start(
        &mut self,
        slot_name: &str,
        start: Lsn,
        options: &StartOptions,
    ) -> Result<(), SourceError> {
        // Relations are re-sent by both plugins in every new session; an old cache must not leak over.
        self.decoder = Decoder::new();
        self.plugin_decoder = PluginDecoder::new();
        self.plugin = options.plugin();
        let described = match options {
            StartOptions::Pgoutput {
                publication_names,
                proto_version,
                messages,
            } => {
                if publication_names.is_empty() {
                    return Err(SourceError::Usage(
                        "START_REPLICATION needs at least one publication".into(),
                    ));
                }
                let publications: Vec<String> = publication_names
                    .iter()
                    .map(|name| format!("\"{}\"", name.replace('"', "\"\"")))
                    .collect();
                let publications = publications.join(",");
                let proto = match proto_version {
                    ProtoVersion::V1 => "1",
                    ProtoVersion::V2 => "2",
                };
                let pg_options = [
                    ("proto_version", proto),
                    ("publication_names", publications.as_str()),
                    ("messages", if *messages { "true" } else { "false" }),
                ];
                self.conn
                    .start_replication_async(slot_name, start.0, &pg_options)
                    .await?;
                self.parser = LogicalReplicationParser::with_protocol_version(match proto_version {
                    ProtoVersion::V1 => 1,
                    ProtoVersion::V2 => 2,
                });
                format!("publications {publications}, proto {proto}")
            }
            StartOptions::Syncgate { tables, messages } => {
                if tables.is_empty() {
                    // The plugin treats a missing filter as "every table": never what a caller meant.
                    return Err(SourceError::Usage(
                        "START_REPLICATION with the syncgate plugin needs at least one table".into(),
                    ));
                }
                let pg_options = [
                    ("tables", tables.as_str()),
                    ("messages", if *messages { "true" } else { "false" }),
                ];
                self.conn
                    .start_replication_async(slot_name, start.0, &pg_options)
                    .await?;
                format!("tables {tables}")
            }
        };
        self.streaming = true;
        self.received = start;
        self.flushed = self.flushed.max(start);
        self.last_feedback = Instant::now();
        info!(slot = slot_name, %start, plugin = %self.plugin, options = %described, "replication started");
        Ok(())
    }

    async fn next(&mut self) -> Result<StreamItem, SourceError> {
        self.require_streaming("next()")?;
        loop {
            let due = self.last_feedback + FEEDBACK_INTERVAL;
            // Dropping the read at the deadline is safe: pg_walstream keeps partially read data in the
            // connection, and the wait it abandons is only a socket-readiness wait.
            let data = match tokio::time::timeout_at(due, self.conn.get_copy_data_async(&self.cancel)).await {
                Err(_elapsed) => {
                    self.send_feedback(false).await?;
                    continue;
                }
                Ok(result) => result?,
            };
            match data.first() {
                Some(b'w') => {
                    let wal_start = read_u64(&data, 1)?;
                    let wal_end = read_u64(&data, 9)?;
                    // Header: 'w', start, end, send time (8 bytes each after the tag).
                    let payload = data.slice(25.min(data.len())..);
                    self.received = self.received.max(Lsn(wal_end));
                    self.stream_bytes += payload.len() as u64;
                    let event = match self.plugin {
                        OutputPlugin::Pgoutput => {
                            let message = self.parser.parse_wal_message_bytes(payload)?;
                            self.decoder.decode(message.message)?
                        }
                        OutputPlugin::Syncgate => Some(self.plugin_decoder.decode(&payload)?),
                    };
                    if let Some(event) = event {
                        debug!(wal_start = %Lsn(wal_start), ?event, "replication event");
                        return Ok(StreamItem::Event(event));
                    }
                }
                Some(b'k') => {
                    let keepalive = pg_walstream::parse_keepalive_message(&data)?;
                    self.received = self.received.max(Lsn(keepalive.wal_end));
                    if keepalive.reply_requested || Instant::now() >= due {
                        self.send_feedback(false).await?;
                    }
                    return Ok(StreamItem::Keepalive {
                        wal_end: Lsn(keepalive.wal_end),
                    });
                }
                other => {
                    warn!(tag = ?other.copied(), "ignoring unknown replication CopyData message");
                }
            }
        }
    }

    async fn ack(&mut self, flushed: Lsn) -> Result<(), SourceError> {
        self.require_streaming("ack()")?;
        if flushed <= self.flushed {
            return Ok(());
        }
        self.flushed = flushed;
        // Sent at once: an interval-only ack made just before shutdown would never reach the server.
        self.send_feedback(false).await?;
        debug!(%flushed, "acked");
        Ok(())
    }

    async fn close(mut self) -> Result<(), SourceError> {
        if self.streaming {
            self.send_feedback(false).await?;
        }
        self.cancel.cancel();
        // Dropping the connection ends the COPY and closes the socket.
        drop(self);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::replication_conninfo;

    #[test]
    fn conninfo_gets_replication_and_session_settings() {
        assert_eq!(
            replication_conninfo("postgres://u@h/db"),
            "postgres://u@h/db?replication=database&options=-c%20DateStyle%3DISO%20-c%20IntervalStyle%3Dpostgres\
             %20-c%20TimeZone%3DUTC%20-c%20extra_float_digits%3D3"
        );
        let kept = "postgresql://u@h/db?sslmode=disable&replication=database&options=-c%20x%3Dy";
        assert_eq!(replication_conninfo(kept), kept);
        assert_eq!(
            replication_conninfo("host=h dbname=db"),
            "host=h dbname=db replication=database options='-c DateStyle=ISO -c IntervalStyle=postgres \
             -c TimeZone=UTC -c extra_float_digits=3'"
        );
    }
}
