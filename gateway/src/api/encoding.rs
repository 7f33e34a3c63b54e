//! Response framing of the sync stream (PROTOCOL §1.2): NDJSON or the BSON stream, optionally gzipped.
//! Every line is flushed through the compressor on its own, so keepalives and checkpoints reach the
//! client at once.

use std::io::Write as _;

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

    /// One line as a chunk that decodes completely on its own (the compressor is sync-flushed).
    pub fn encode(&mut self, line: &SyncLine) -> Bytes {
        self.scratch.clear();
        match self.framing {
            Framing::Ndjson => line.write_ndjson(&mut self.scratch),
            Framing::Bson => line.write_bson(NumberPolicy::Syncgate, &mut self.scratch),
        }
        match &mut self.gzip {
            None => Bytes::copy_from_slice(&self.scratch),
            Some(gzip) => {
                // Writing into a Vec cannot fail.
                let _ = gzip.write_all(&self.scratch);
                let _ = gzip.flush();
                Bytes::from(std::mem::take(gzip.get_mut()))
            }
        }
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
    fn each_gzipped_line_decodes_on_its_own() {
        let mut encoder = LineEncoder::new(Framing::Ndjson, true);
        let mut received = Vec::new();
        let mut decoded = Vec::new();
        for n in [20, 19] {
            received.extend_from_slice(&encoder.encode(&SyncLine::TokenExpiresIn(n)));
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
}
