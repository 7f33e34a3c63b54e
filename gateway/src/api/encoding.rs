//! Response framing of the sync stream (PROTOCOL §1.2): NDJSON or the BSON stream, optionally gzipped.
//! Every line is flushed through the compressor on its own, so keepalives and checkpoints reach the
//! client at once.

use std::io::Write as _;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use syncgate_protocol::SyncLine;
use syncgate_protocol::bson::NumberPolicy;

pub const NDJSON: &str = "application/x-ndjson";
/// The client switches to BSON only when the response type is exactly this string.
pub const BSON_STREAM: &str = "application/vnd.powersync.bson-stream";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Ndjson,
    Bson,
}

impl Framing {
    pub fn content_type(self) -> &'static str {
        match self {
            Framing::Ndjson => NDJSON,
            Framing::Bson => BSON_STREAM,
        }
    }

    /// Picks the framing from an `Accept` header: BSON when the client ranks it at least as high as
    /// NDJSON (the official SDK sends `bson;q=0.9, ndjson;q=0.8`), NDJSON otherwise — also for a missing
    /// header or `*/*`, so plain HTTP readers get text.
    pub fn negotiate(accept: Option<&str>) -> Framing {
        let Some(accept) = accept else {
            return Framing::Ndjson;
        };
        let bson = quality(accept, BSON_STREAM);
        let ndjson = quality(accept, NDJSON);
        match (bson, ndjson) {
            (Some(b), Some(n)) if b > 0.0 && b >= n => Framing::Bson,
            (Some(b), None) if b > 0.0 => Framing::Bson,
            _ => Framing::Ndjson,
        }
    }
}

/// Whether `Accept-Encoding` allows gzip (q > 0).
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding.is_some_and(|h| quality(h, "gzip").is_some_and(|q| q > 0.0))
}

/// The `q` of `item` in a comma-separated header with optional `;q=` parameters.
fn quality(header: &str, item: &str) -> Option<f32> {
    header.split(',').find_map(|part| {
        let mut pieces = part.split(';');
        let name = pieces.next()?.trim();
        if !name.eq_ignore_ascii_case(item) {
            return None;
        }
        let q = pieces
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        Some(q)
    })
}

/// A line as a session hands it to its transport.
#[derive(Debug, Clone)]
pub enum OutLine {
    /// A line only this session sends. Boxed: a stream's line channel allocates a block of slots up
    /// front, and a pointer-sized line keeps that block small (idle connections' memory).
    Own(Box<SyncLine>),
    /// A line many sessions send for the same checkpoint (the same `data` range, diff or complete):
    /// built once and serialized at most once per framing, however many streams carry it.
    Shared(Arc<SharedLine>),
}

impl OutLine {
    pub fn line(&self) -> &SyncLine {
        match self {
            OutLine::Own(line) => line,
            OutLine::Shared(shared) => &shared.line,
        }
    }

    pub fn into_line(self) -> SyncLine {
        match self {
            OutLine::Own(line) => *line,
            OutLine::Shared(shared) => shared.line.clone(),
        }
    }

    /// The line's bytes in `framing` (uncompressed).
    pub fn serialized(&self, framing: Framing) -> Bytes {
        match self {
            OutLine::Own(line) => Bytes::from(serialize(line, framing, Vec::new())),
            OutLine::Shared(shared) => shared.serialized(framing),
        }
    }
}

impl From<SyncLine> for OutLine {
    fn from(line: SyncLine) -> Self {
        OutLine::Own(Box::new(line))
    }
}

/// A line shared between sessions, with its serializations filled in by the first stream needing each.
#[derive(Debug)]
pub struct SharedLine {
    line: SyncLine,
    ndjson: OnceLock<Bytes>,
    bson: OnceLock<Bytes>,
}

impl SharedLine {
    pub fn new(line: SyncLine) -> Arc<SharedLine> {
        Arc::new(SharedLine {
            line,
            ndjson: OnceLock::new(),
            bson: OnceLock::new(),
        })
    }

    pub fn line(&self) -> &SyncLine {
        &self.line
    }

    pub fn serialized(&self, framing: Framing) -> Bytes {
        let cell = match framing {
            Framing::Ndjson => &self.ndjson,
            Framing::Bson => &self.bson,
        };
        cell.get_or_init(|| Bytes::from(serialize(&self.line, framing, Vec::new())))
            .clone()
    }
}

fn serialize(line: &SyncLine, framing: Framing, mut out: Vec<u8>) -> Vec<u8> {
    match framing {
        Framing::Ndjson => line.write_ndjson(&mut out),
        Framing::Bson => line.write_bson(NumberPolicy::Syncgate, &mut out),
    }
    out
}

/// Room reserved for a line of this session's own (a checkpoint, a keepalive: short) in a chunk.
const OWN_LINE_SIZE: usize = 256;

/// Turns lines into body chunks.
#[derive(Debug)]
pub struct LineEncoder {
    framing: Framing,
    gzip: Option<GzEncoder<Vec<u8>>>,
    scratch: Vec<u8>,
}

impl LineEncoder {
    pub fn new(framing: Framing, gzip: bool) -> Self {
        LineEncoder {
            framing,
            gzip: gzip.then(|| GzEncoder::new(Vec::with_capacity(4096), Compression::fast())),
            scratch: Vec::with_capacity(4096),
        }
    }

    /// Lines queued together as one chunk: each line whole, in order; compressed, with one sync flush after
    /// the last, so the chunk decodes completely on its own. A shared line's serialization is reused
    /// (compression is per stream: a gzip stream's bytes depend on everything before them).
    pub fn encode(&mut self, lines: &[OutLine]) -> Bytes {
        let framing = self.framing;
        let Some(gzip) = &mut self.gzip else {
            // One shared line, the usual chunk of a fan-out, goes out as its serialization: no copy.
            if let [OutLine::Shared(shared)] = lines {
                return shared.serialized(framing);
            }
            // Sized up front (shared lines are serialized already): growing it was a visible cost.
            let size = |line: &OutLine| match line {
                OutLine::Own(_) => OWN_LINE_SIZE,
                OutLine::Shared(shared) => shared.serialized(framing).len(),
            };
            let mut out = Vec::with_capacity(lines.iter().map(size).sum());
            for line in lines {
                match line {
                    OutLine::Own(line) => out = serialize(line, framing, out),
                    OutLine::Shared(shared) => out.extend_from_slice(&shared.serialized(framing)),
                }
            }
            return Bytes::from(out);
        };
        for line in lines {
            // Writing into a Vec cannot fail.
            let _ = match line {
                OutLine::Own(line) => {
                    self.scratch = serialize(line, framing, std::mem::take(&mut self.scratch));
                    let written = gzip.write_all(&self.scratch);
                    self.scratch.clear();
                    written
                }
                OutLine::Shared(shared) => gzip.write_all(&shared.serialized(framing)),
            };
        }
        let _ = gzip.flush();
        Bytes::from(std::mem::take(gzip.get_mut()))
    }

    /// The end of the body: the gzip trailer, if compressing.
    pub fn finish(&mut self) -> Option<Bytes> {
        let gzip = self.gzip.take()?;
        gzip.finish().ok().map(Bytes::from)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn the_sdk_accept_header_gets_bson_and_plain_readers_ndjson() {
        let sdk = "application/vnd.powersync.bson-stream;q=0.9,application/x-ndjson;q=0.8";
        assert_eq!(Framing::negotiate(Some(sdk)), Framing::Bson);
        assert_eq!(Framing::negotiate(Some("application/x-ndjson")), Framing::Ndjson);
        assert_eq!(Framing::negotiate(Some("*/*")), Framing::Ndjson);
        assert_eq!(Framing::negotiate(None), Framing::Ndjson);
        assert_eq!(
            Framing::negotiate(Some(
                "application/vnd.powersync.bson-stream;q=0.5, application/x-ndjson"
            )),
            Framing::Ndjson
        );
        assert_eq!(
            Framing::negotiate(Some("application/vnd.powersync.bson-stream;q=0")),
            Framing::Ndjson
        );
        assert!(accepts_gzip(Some("gzip, deflate")));
        assert!(!accepts_gzip(Some("gzip;q=0, br")));
        assert!(!accepts_gzip(None));
    }

    #[test]
    fn a_shared_line_encodes_as_the_same_line_sent_alone() {
        let line = SyncLine::CheckpointComplete(syncgate_protocol::line::CheckpointComplete {
            last_op_id: syncgate_protocol::OpId::new(42).expect("in range"),
        });
        let shared = OutLine::Shared(SharedLine::new(line.clone()));
        for framing in [Framing::Ndjson, Framing::Bson] {
            for gzip in [false, true] {
                let mut own = LineEncoder::new(framing, gzip);
                let mut reused = LineEncoder::new(framing, gzip);
                // Twice: the second time the shared serialization is reused.
                for _ in 0..2 {
                    assert_eq!(
                        reused.encode(std::slice::from_ref(&shared)),
                        own.encode(&[line.clone().into()]),
                        "{framing:?} gzip {gzip}"
                    );
                }
                assert_eq!(reused.finish(), own.finish());
            }
        }
        assert_eq!(shared.into_line(), line);
    }

    #[test]
    fn each_gzipped_line_decodes_on_its_own() {
        let mut encoder = LineEncoder::new(Framing::Ndjson, true);
        let mut received = Vec::new();
        let mut decoded = Vec::new();
        for n in [20, 19] {
            received.extend_from_slice(&encoder.encode(&[SyncLine::TokenExpiresIn(n).into()]));
            // What has arrived so far must inflate to every line sent, without the trailer.
            let mut partial = Vec::new();
            let _ = flate2::read::GzDecoder::new(&received[..]).read_to_end(&mut partial);
            decoded = partial;
        }
        assert_eq!(decoded, b"{\"token_expires_in\":20}\n{\"token_expires_in\":19}\n");
        received.extend_from_slice(&encoder.finish().expect("trailer"));
        let mut all = Vec::new();
        flate2::read::GzDecoder::new(&received[..])
            .read_to_end(&mut all)
            .expect("complete gzip stream");
        assert_eq!(all, decoded);
    }

    #[test]
    fn lines_queued_together_encode_as_one_chunk_that_decodes_on_its_own() {
        let complete = |op: u64| {
            SyncLine::CheckpointComplete(syncgate_protocol::line::CheckpointComplete {
                last_op_id: syncgate_protocol::OpId::new(op).expect("in range"),
            })
        };
        let batch = [
            SyncLine::TokenExpiresIn(20).into(),
            OutLine::Shared(SharedLine::new(complete(42))),
            complete(43).into(),
        ];
        for framing in [Framing::Ndjson, Framing::Bson] {
            // Uncompressed: the lines' own encodings, back to back.
            let mut one_by_one = LineEncoder::new(framing, false);
            let expected: Vec<u8> = batch
                .iter()
                .flat_map(|line| one_by_one.encode(std::slice::from_ref(line)).to_vec())
                .collect();
            let mut together = LineEncoder::new(framing, false);
            assert_eq!(together.encode(&batch).to_vec(), expected, "{framing:?}");

            // Compressed: the chunk received so far inflates to all three lines, and the stream
            // goes on (a later line, then the trailer) as one gzip stream.
            let mut gzip = LineEncoder::new(framing, true);
            let mut received = gzip.encode(&batch).to_vec();
            let mut partial = Vec::new();
            let _ = flate2::read::GzDecoder::new(&received[..]).read_to_end(&mut partial);
            assert_eq!(partial, expected, "{framing:?} gzip");
            received.extend_from_slice(&gzip.encode(&batch[..1]));
            received.extend_from_slice(&gzip.finish().expect("trailer"));
            let mut all = Vec::new();
            flate2::read::GzDecoder::new(&received[..])
                .read_to_end(&mut all)
                .expect("complete gzip stream");
            let first = one_by_one.encode(&batch[..1]).to_vec();
            assert_eq!(all, [expected, first].concat(), "{framing:?} gzip");
        }
    }
}
