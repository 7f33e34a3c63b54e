//! RSocket 1.0 frames, the subset the PowerSync WebSocket transport uses (PROTOCOL §1.3).
//!
//! Over WebSocket every binary message is exactly one frame, without the 24-bit frame-length prefix
//! of byte-stream transports. Layout of every frame (big-endian):
//!
//! ```text
//! stream id: u32 (high bit reserved, 0) | frame type: 6 bits | flags: 10 bits | frame-specific fields
//! ```
//!
//! Flags: `I` (ignore if not understood) 0x200, `M` (metadata present) 0x100, then per type: `F`
//! (follows: fragmentation) 0x80, `C` (complete) 0x40, `N` (next) 0x20; KEEPALIVE's `R` (respond)
//! 0x80; SETUP's `R` (resume) 0x80 and `L` (lease) 0x40. When `M` is set, metadata is preceded by
//! its 24-bit length; the data is the rest of the frame.
//!
//! [`Frame::decode`] reads the frames the gateway and the client act on in full (SETUP, KEEPALIVE, REQUEST_STREAM,
//! REQUEST_N, CANCEL, PAYLOAD, ERROR). Every other known type, and an unknown type whose `I` flag is
//! set, decodes as [`Frame::Other`] (header only) so the connection can refuse or ignore it; an
//! unknown type without the `I` flag is a [`FrameError`], as the protocol requires.

use bytes::Bytes;

/// Largest value of the protocol's 31-bit fields (request N, keepalive times).
pub const MAX_U31: u32 = 0x7fff_ffff;
/// Largest metadata the 24-bit length can describe.
pub const MAX_METADATA: usize = 0x00ff_ffff;

/// Frame type codes (6 bits).
pub mod frame_type {
    pub const SETUP: u8 = 0x01;
    pub const LEASE: u8 = 0x02;
    pub const KEEPALIVE: u8 = 0x03;
    pub const REQUEST_RESPONSE: u8 = 0x04;
    pub const REQUEST_FNF: u8 = 0x05;
    pub const REQUEST_STREAM: u8 = 0x06;
    pub const REQUEST_CHANNEL: u8 = 0x07;
    pub const REQUEST_N: u8 = 0x08;
    pub const CANCEL: u8 = 0x09;
    pub const PAYLOAD: u8 = 0x0A;
    pub const ERROR: u8 = 0x0B;
    pub const METADATA_PUSH: u8 = 0x0C;
    pub const RESUME: u8 = 0x0D;
    pub const RESUME_OK: u8 = 0x0E;
    pub const EXT: u8 = 0x3F;
}

/// Flag bits (10 bits).
pub mod flags {
    pub const IGNORE: u16 = 0x200;
    pub const METADATA: u16 = 0x100;
    /// PAYLOAD / REQUEST_*: more fragments follow.
    pub const FOLLOWS: u16 = 0x80;
    /// KEEPALIVE: the receiver must answer.
    pub const RESPOND: u16 = 0x80;
    /// SETUP: the client asks for resumption.
    pub const RESUME: u16 = 0x80;
    /// SETUP: the client asks for leases.
    pub const LEASE: u16 = 0x40;
    /// PAYLOAD: the stream is complete.
    pub const COMPLETE: u16 = 0x40;
    /// PAYLOAD: carries a payload (`onNext`).
    pub const NEXT: u16 = 0x20;
}

/// ERROR frame codes.
pub mod error_code {
    /// Stream 0: the SETUP frame is invalid.
    pub const INVALID_SETUP: u32 = 0x001;
    /// Stream 0: a SETUP parameter is not supported (version, resumption, leases, MIME type).
    pub const UNSUPPORTED_SETUP: u32 = 0x002;
    /// Stream 0: the server refuses the connection (authentication).
    pub const REJECTED_SETUP: u32 = 0x003;
    /// Stream 0: resumption is not possible.
    pub const REJECTED_RESUME: u32 = 0x004;
    /// Stream 0: the connection is being terminated because of a protocol error.
    pub const CONNECTION_ERROR: u32 = 0x101;
    /// Stream 0: the connection is being closed normally.
    pub const CONNECTION_CLOSE: u32 = 0x102;
    /// A stream failed.
    pub const APPLICATION_ERROR: u32 = 0x201;
    /// A request was refused before it started.
    pub const REJECTED: u32 = 0x202;
    /// A request was cancelled.
    pub const CANCELED: u32 = 0x203;
    /// A request is invalid.
    pub const INVALID: u32 = 0x204;
}

/// A frame's metadata (if the `M` flag is set) and data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload {
    pub metadata: Option<Bytes>,
    pub data: Bytes,
}

impl Payload {
    pub fn data(data: impl Into<Bytes>) -> Self {
        Payload {
            metadata: None,
            data: data.into(),
        }
    }

    pub fn with_metadata(metadata: impl Into<Bytes>, data: impl Into<Bytes>) -> Self {
        Payload {
            metadata: Some(metadata.into()),
            data: data.into(),
        }
    }
}

/// The SETUP frame: the first frame of a connection, client to server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    pub major_version: u16,
    pub minor_version: u16,
    /// Milliseconds between the client's KEEPALIVE frames.
    pub keepalive_interval_ms: u32,
    /// Milliseconds without any frame from the peer after which the connection may be considered dead.
    pub max_lifetime_ms: u32,
    /// Present when the client asks for resumption (`R` flag).
    pub resume_token: Option<Bytes>,
    /// The client asks for leases (`L` flag).
    pub lease: bool,
    pub metadata_mime: String,
    pub data_mime: String,
    pub payload: Payload,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Setup(Setup),
    /// Stream 0. `respond`: the receiver must answer with a KEEPALIVE without the flag, echoing `data`.
    Keepalive {
        respond: bool,
        last_received_position: u64,
        data: Bytes,
    },
    RequestStream {
        stream_id: u32,
        initial_n: u32,
        follows: bool,
        payload: Payload,
    },
    RequestN {
        stream_id: u32,
        n: u32,
    },
    Cancel {
        stream_id: u32,
    },
    Payload {
        stream_id: u32,
        follows: bool,
        complete: bool,
        next: bool,
        payload: Payload,
    },
    Error {
        stream_id: u32,
        code: u32,
        message: String,
    },
    /// A frame the gateway does not serve, decoded as far as its header: the other interaction models,
    /// METADATA_PUSH, LEASE, RESUME, RESUME_OK, EXT, or an unknown type with the `I` flag.
    Other {
        stream_id: u32,
        frame_type: u8,
        flags: u16,
    },
}

/// A frame that cannot be decoded: a connection error (`CONNECTION_ERROR`, or `INVALID_SETUP` for a
/// first frame).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than the 6-byte frame header")]
    TooShort(usize),
    #[error("{frame} frame truncated: {field} needs {needed} bytes, {left} left")]
    Truncated {
        frame: &'static str,
        field: &'static str,
        needed: usize,
        left: usize,
    },
    #[error("{frame} frame: metadata length {length} exceeds the {left} bytes left in the frame")]
    BadMetadataLength {
        frame: &'static str,
        length: usize,
        left: usize,
    },
    #[error("unknown frame type 0x{0:02x} without the IGNORE flag")]
    UnknownType(u8),
    #[error("{frame} frame on stream {stream_id}: {expected}")]
    BadStreamId {
        frame: &'static str,
        stream_id: u32,
        expected: &'static str,
    },
    #[error("{frame} frame: request N must be from 1 to 2^31-1, got {n}")]
    BadRequestN { frame: &'static str, n: u32 },
    #[error("SETUP frame: {0} MIME type is not ASCII")]
    BadMime(&'static str),
    #[error("SETUP frame: {0} must be from 1 to 2^31-1 ms")]
    BadTime(&'static str),
    #[error("ERROR frame: the message is not UTF-8")]
    BadErrorMessage,
}

fn type_name(frame_type: u8) -> &'static str {
    match frame_type {
        frame_type::SETUP => "SETUP",
        frame_type::LEASE => "LEASE",
        frame_type::KEEPALIVE => "KEEPALIVE",
        frame_type::REQUEST_RESPONSE => "REQUEST_RESPONSE",
        frame_type::REQUEST_FNF => "REQUEST_FNF",
        frame_type::REQUEST_STREAM => "REQUEST_STREAM",
        frame_type::REQUEST_CHANNEL => "REQUEST_CHANNEL",
        frame_type::REQUEST_N => "REQUEST_N",
        frame_type::CANCEL => "CANCEL",
        frame_type::PAYLOAD => "PAYLOAD",
        frame_type::ERROR => "ERROR",
        frame_type::METADATA_PUSH => "METADATA_PUSH",
        frame_type::RESUME => "RESUME",
        frame_type::RESUME_OK => "RESUME_OK",
        frame_type::EXT => "EXT",
        _ => "unknown",
    }
}

/// Reads fields from a frame body, reporting which field ran out of bytes.
struct Reader<'a> {
    frame: &'static str,
    bytes: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes, FrameError> {
        if self.left() < n {
            return Err(FrameError::Truncated {
                frame: self.frame,
                field,
                needed: n,
                left: self.left(),
            });
        }
        let out = self.bytes.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        let b = self.take(8, field)?;
        Ok(u64::from_be_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    fn rest(&mut self) -> Bytes {
        let out = self.bytes.slice(self.pos..);
        self.pos = self.bytes.len();
        out
    }

    /// Metadata (24-bit length prefix) if `M` is set, then the data (the rest of the frame).
    fn payload(&mut self, frame_flags: u16) -> Result<Payload, FrameError> {
        let metadata = if frame_flags & flags::METADATA != 0 {
            let b = self.take(3, "metadata length")?;
            let length = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
            if length > self.left() {
                return Err(FrameError::BadMetadataLength {
                    frame: self.frame,
                    length,
                    left: self.left(),
                });
            }
            Some(self.take(length, "metadata")?)
        } else {
            None
        };
        Ok(Payload {
            metadata,
            data: self.rest(),
        })
    }

    fn mime(&mut self, which: &'static str) -> Result<String, FrameError> {
        let length = self.u8("MIME type length")?;
        let raw = self.take(usize::from(length), "MIME type")?;
        if !raw.is_ascii() {
            return Err(FrameError::BadMime(which));
        }
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }
}

fn request_n(frame: &'static str, n: u32) -> Result<u32, FrameError> {
    if n == 0 || n > MAX_U31 {
        return Err(FrameError::BadRequestN { frame, n });
    }
    Ok(n)
}

fn time(field: &'static str, ms: u32) -> Result<u32, FrameError> {
    if ms == 0 || ms > MAX_U31 {
        return Err(FrameError::BadTime(field));
    }
    Ok(ms)
}

impl Frame {
    /// The stream the frame belongs to (0: the connection).
    pub fn stream_id(&self) -> u32 {
        match self {
            Frame::Setup(_) | Frame::Keepalive { .. } => 0,
            Frame::RequestStream { stream_id, .. }
            | Frame::RequestN { stream_id, .. }
            | Frame::Cancel { stream_id }
            | Frame::Payload { stream_id, .. }
            | Frame::Error { stream_id, .. }
            | Frame::Other { stream_id, .. } => *stream_id,
        }
    }

    /// The protocol's name of the frame's type, for logs and errors.
    pub fn type_name(&self) -> &'static str {
        type_name(match self {
            Frame::Setup(_) => frame_type::SETUP,
            Frame::Keepalive { .. } => frame_type::KEEPALIVE,
            Frame::RequestStream { .. } => frame_type::REQUEST_STREAM,
            Frame::RequestN { .. } => frame_type::REQUEST_N,
            Frame::Cancel { .. } => frame_type::CANCEL,
            Frame::Payload { .. } => frame_type::PAYLOAD,
            Frame::Error { .. } => frame_type::ERROR,
            Frame::Other { frame_type, .. } => *frame_type,
        })
    }

    /// Decodes one frame: a whole WebSocket binary message.
    pub fn decode(bytes: &Bytes) -> Result<Frame, FrameError> {
        if bytes.len() < 6 {
            return Err(FrameError::TooShort(bytes.len()));
        }
        let mut header = Reader {
            frame: "",
            bytes,
            pos: 0,
        };
        // The high bit is reserved: ignored on receipt, as the protocol says.
        let stream_id = header.u32("stream id")? & MAX_U31;
        let type_and_flags = header.u16("frame type")?;
        let frame_type = u8::try_from(type_and_flags >> 10).unwrap_or(u8::MAX);
        let frame_flags = type_and_flags & 0x3ff;
        let frame = type_name(frame_type);
        let mut r = Reader {
            frame,
            bytes,
            pos: header.pos,
        };
        let on_stream_0 = |expected_zero: bool| -> Result<(), FrameError> {
            if (stream_id == 0) == expected_zero {
                Ok(())
            } else {
                Err(FrameError::BadStreamId {
                    frame,
                    stream_id,
                    expected: if expected_zero {
                        "must be on stream 0"
                    } else {
                        "must not be on stream 0"
                    },
                })
            }
        };
        Ok(match frame_type {
            frame_type::SETUP => {
                on_stream_0(true)?;
                let major_version = r.u16("major version")?;
                let minor_version = r.u16("minor version")?;
                let keepalive_interval_ms = time("keepalive interval", r.u32("keepalive interval")?)?;
                let max_lifetime_ms = time("max lifetime", r.u32("max lifetime")?)?;
                let resume_token = if frame_flags & flags::RESUME != 0 {
                    let length = r.u16("resume token length")?;
                    Some(r.take(usize::from(length), "resume token")?)
                } else {
                    None
                };
                let metadata_mime = r.mime("metadata")?;
                let data_mime = r.mime("data")?;
                Frame::Setup(Setup {
                    major_version,
                    minor_version,
                    keepalive_interval_ms,
                    max_lifetime_ms,
                    resume_token,
                    lease: frame_flags & flags::LEASE != 0,
                    metadata_mime,
                    data_mime,
                    payload: r.payload(frame_flags)?,
                })
            }
            frame_type::KEEPALIVE => {
                on_stream_0(true)?;
                let last_received_position = r.u64("last received position")? & (u64::MAX >> 1);
                Frame::Keepalive {
                    respond: frame_flags & flags::RESPOND != 0,
                    last_received_position,
                    data: r.rest(),
                }
            }
            frame_type::REQUEST_STREAM => {
                on_stream_0(false)?;
                let initial_n = request_n(frame, r.u32("initial request N")?)?;
                Frame::RequestStream {
                    stream_id,
                    initial_n,
                    follows: frame_flags & flags::FOLLOWS != 0,
                    payload: r.payload(frame_flags)?,
                }
            }
            frame_type::REQUEST_N => {
                on_stream_0(false)?;
                Frame::RequestN {
                    stream_id,
                    n: request_n(frame, r.u32("request N")?)?,
                }
            }
            frame_type::CANCEL => {
                on_stream_0(false)?;
                Frame::Cancel { stream_id }
            }
            frame_type::PAYLOAD => {
                on_stream_0(false)?;
                Frame::Payload {
                    stream_id,
                    follows: frame_flags & flags::FOLLOWS != 0,
                    complete: frame_flags & flags::COMPLETE != 0,
                    next: frame_flags & flags::NEXT != 0,
                    payload: r.payload(frame_flags)?,
                }
            }
            frame_type::ERROR => {
                let code = r.u32("error code")?;
                let message =
                    String::from_utf8(r.rest().to_vec()).map_err(|_| FrameError::BadErrorMessage)?;
                Frame::Error {
                    stream_id,
                    code,
                    message,
                }
            }
            frame_type::LEASE
            | frame_type::REQUEST_RESPONSE
            | frame_type::REQUEST_FNF
            | frame_type::REQUEST_CHANNEL
            | frame_type::METADATA_PUSH
            | frame_type::RESUME
            | frame_type::RESUME_OK
            | frame_type::EXT => Frame::Other {
                stream_id,
                frame_type,
                flags: frame_flags,
            },
            other if frame_flags & flags::IGNORE != 0 => Frame::Other {
                stream_id,
                frame_type: other,
                flags: frame_flags,
            },
            other => return Err(FrameError::UnknownType(other)),
        })
    }

    /// Encodes the frame as one WebSocket binary message.
    ///
    /// # Panics
    ///
    /// If metadata is longer than the 24-bit length allows, or a SETUP MIME type is longer than 255
    /// bytes or a resume token longer than 65,535: the gateway never builds such frames.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        match self {
            Frame::Setup(setup) => {
                let mut f = if setup.payload.metadata.is_some() {
                    flags::METADATA
                } else {
                    0
                };
                if setup.resume_token.is_some() {
                    f |= flags::RESUME;
                }
                if setup.lease {
                    f |= flags::LEASE;
                }
                header(&mut out, 0, frame_type::SETUP, f);
                out.extend_from_slice(&setup.major_version.to_be_bytes());
                out.extend_from_slice(&setup.minor_version.to_be_bytes());
                out.extend_from_slice(&(setup.keepalive_interval_ms & MAX_U31).to_be_bytes());
                out.extend_from_slice(&(setup.max_lifetime_ms & MAX_U31).to_be_bytes());
                if let Some(token) = &setup.resume_token {
                    let length = u16::try_from(token.len()).expect("resume token of at most 65,535 bytes");
                    out.extend_from_slice(&length.to_be_bytes());
                    out.extend_from_slice(token);
                }
                for mime in [&setup.metadata_mime, &setup.data_mime] {
                    out.push(u8::try_from(mime.len()).expect("MIME type of at most 255 bytes"));
                    out.extend_from_slice(mime.as_bytes());
                }
                payload(&mut out, &setup.payload);
            }
            Frame::Keepalive {
                respond,
                last_received_position,
                data,
            } => {
                let f = if *respond { flags::RESPOND } else { 0 };
                header(&mut out, 0, frame_type::KEEPALIVE, f);
                out.extend_from_slice(&(last_received_position & (u64::MAX >> 1)).to_be_bytes());
                out.extend_from_slice(data);
            }
            Frame::RequestStream {
                stream_id,
                initial_n,
                follows,
                payload: p,
            } => {
                let mut f = metadata_flag(p);
                if *follows {
                    f |= flags::FOLLOWS;
                }
                header(&mut out, *stream_id, frame_type::REQUEST_STREAM, f);
                out.extend_from_slice(&(initial_n & MAX_U31).to_be_bytes());
                payload(&mut out, p);
            }
            Frame::RequestN { stream_id, n } => {
                header(&mut out, *stream_id, frame_type::REQUEST_N, 0);
                out.extend_from_slice(&(n & MAX_U31).to_be_bytes());
            }
            Frame::Cancel { stream_id } => header(&mut out, *stream_id, frame_type::CANCEL, 0),
            Frame::Payload {
                stream_id,
                follows,
                complete,
                next,
                payload: p,
            } => {
                let mut f = metadata_flag(p);
                for (set, bit) in [
                    (*follows, flags::FOLLOWS),
                    (*complete, flags::COMPLETE),
                    (*next, flags::NEXT),
                ] {
                    if set {
                        f |= bit;
                    }
                }
                header(&mut out, *stream_id, frame_type::PAYLOAD, f);
                payload(&mut out, p);
            }
            Frame::Error {
                stream_id,
                code,
                message,
            } => {
                header(&mut out, *stream_id, frame_type::ERROR, 0);
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(message.as_bytes());
            }
            Frame::Other {
                stream_id,
                frame_type,
                flags,
            } => header(&mut out, *stream_id, *frame_type, *flags),
        }
        out
    }

    fn encoded_len_hint(&self) -> usize {
        let payload_len = |p: &Payload| p.data.len() + p.metadata.as_ref().map_or(0, |m| m.len() + 3);
        16 + match self {
            Frame::Setup(s) => payload_len(&s.payload) + s.metadata_mime.len() + s.data_mime.len() + 16,
            Frame::Keepalive { data, .. } => data.len(),
            Frame::RequestStream { payload, .. } | Frame::Payload { payload, .. } => payload_len(payload),
            Frame::Error { message, .. } => message.len(),
            _ => 0,
        }
    }

    /// A PAYLOAD with the NEXT flag: one value on the stream.
    pub fn next(stream_id: u32, data: impl Into<Bytes>) -> Frame {
        Frame::Payload {
            stream_id,
            follows: false,
            complete: false,
            next: true,
            payload: Payload::data(data),
        }
    }

    /// A PAYLOAD with only the COMPLETE flag: the stream ended normally.
    pub fn complete(stream_id: u32) -> Frame {
        Frame::Payload {
            stream_id,
            follows: false,
            complete: true,
            next: false,
            payload: Payload::default(),
        }
    }

    pub fn error(stream_id: u32, code: u32, message: impl Into<String>) -> Frame {
        Frame::Error {
            stream_id,
            code,
            message: message.into(),
        }
    }
}

fn header(out: &mut Vec<u8>, stream_id: u32, frame_type: u8, frame_flags: u16) {
    out.extend_from_slice(&(stream_id & MAX_U31).to_be_bytes());
    out.extend_from_slice(&((u16::from(frame_type) << 10) | (frame_flags & 0x3ff)).to_be_bytes());
}

fn metadata_flag(p: &Payload) -> u16 {
    if p.metadata.is_some() { flags::METADATA } else { 0 }
}

fn payload(out: &mut Vec<u8>, p: &Payload) {
    if let Some(metadata) = &p.metadata {
        assert!(
            metadata.len() <= MAX_METADATA,
            "metadata longer than 2^24-1 bytes"
        );
        let length = u32::try_from(metadata.len()).unwrap_or(u32::MAX).to_be_bytes();
        out.extend_from_slice(&length[1..]);
        out.extend_from_slice(metadata);
    }
    out.extend_from_slice(&p.data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        Frame::decode(&Bytes::copy_from_slice(bytes))
    }

    fn round_trip(frame: Frame) {
        let bytes = frame.encode();
        assert_eq!(decode(&bytes).expect("decodes"), frame, "bytes {bytes:02x?}");
    }

    /// A SETUP exactly as the PowerSync JS SDK builds it (keepalive 20 s, lifetime 30 s, JSON MIME types,
    /// token metadata, no data), written out byte by byte from the protocol's layout.
    fn sdk_setup_bytes(metadata: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(&((0x01u16 << 10) | 0x100).to_be_bytes()); // SETUP, M
        b.extend_from_slice(&[0, 1, 0, 0]); // version 1.0
        b.extend_from_slice(&20_000u32.to_be_bytes());
        b.extend_from_slice(&30_000u32.to_be_bytes());
        for mime in ["application/json", "application/json"] {
            b.push(u8::try_from(mime.len()).expect("short"));
            b.extend_from_slice(mime.as_bytes());
        }
        let len = u32::try_from(metadata.len()).expect("short").to_be_bytes();
        b.extend_from_slice(&len[1..]);
        b.extend_from_slice(metadata);
        b
    }

    #[test]
    fn decodes_a_setup_laid_out_by_hand() {
        let metadata = br#"{"token":"Token abc","user_agent":"powersync-js/1.0"}"#;
        let frame = decode(&sdk_setup_bytes(metadata)).expect("setup");
        let Frame::Setup(setup) = frame else {
            panic!("not a setup: {frame:?}")
        };
        assert_eq!((setup.major_version, setup.minor_version), (1, 0));
        assert_eq!(setup.keepalive_interval_ms, 20_000);
        assert_eq!(setup.max_lifetime_ms, 30_000);
        assert_eq!(setup.metadata_mime, "application/json");
        assert_eq!(setup.data_mime, "application/json");
        assert_eq!(setup.payload.metadata.as_deref(), Some(&metadata[..]));
        assert!(setup.payload.data.is_empty());
        assert_eq!(setup.resume_token, None);
        assert!(!setup.lease);
    }

    #[test]
    fn encodes_frames_the_client_reads_byte_for_byte() {
        // PAYLOAD(NEXT) on stream 1 with data "ab": header 00000001 | 0x0A<<10 | 0x20.
        assert_eq!(
            Frame::next(1, &b"ab"[..]).encode(),
            [0, 0, 0, 1, 0x28, 0x20, b'a', b'b']
        );
        // PAYLOAD(COMPLETE) on stream 3.
        assert_eq!(Frame::complete(3).encode(), [0, 0, 0, 3, 0x28, 0x40]);
        // ERROR 0x201 on stream 1.
        assert_eq!(
            Frame::error(1, error_code::APPLICATION_ERROR, "x").encode(),
            [0, 0, 0, 1, 0x2c, 0x00, 0, 0, 0x02, 0x01, b'x']
        );
        // KEEPALIVE answer: no R flag, position 0, echoed data.
        assert_eq!(
            Frame::Keepalive {
                respond: false,
                last_received_position: 0,
                data: Bytes::from_static(b"k")
            }
            .encode(),
            [0, 0, 0, 0, 0x0c, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, b'k']
        );
    }

    #[test]
    fn decodes_client_frames_laid_out_by_hand() {
        // REQUEST_STREAM on stream 1, M flag, initial N 10, metadata "{}", data "[]".
        let mut b = vec![
            0, 0, 0, 1, 0x19, 0x00, 0, 0, 0, 10, 0, 0, 2, b'{', b'}', b'[', b']',
        ];
        assert_eq!(
            decode(&b).expect("request stream"),
            Frame::RequestStream {
                stream_id: 1,
                initial_n: 10,
                follows: false,
                payload: Payload::with_metadata(&b"{}"[..], &b"[]"[..]),
            }
        );
        // REQUEST_N 5 on stream 1.
        assert_eq!(
            decode(&[0, 0, 0, 1, 0x20, 0x00, 0, 0, 0, 5]).expect("request n"),
            Frame::RequestN { stream_id: 1, n: 5 }
        );
        // CANCEL on stream 1.
        assert_eq!(
            decode(&[0, 0, 0, 1, 0x24, 0x00]).expect("cancel"),
            Frame::Cancel { stream_id: 1 }
        );
        // KEEPALIVE with R, position 7, data "hi".
        assert_eq!(
            decode(&[0, 0, 0, 0, 0x0c, 0x80, 0, 0, 0, 0, 0, 0, 0, 7, b'h', b'i']).expect("keepalive"),
            Frame::Keepalive {
                respond: true,
                last_received_position: 7,
                data: Bytes::from_static(b"hi"),
            }
        );
        // The reserved high bit of the stream id is ignored.
        b[0] = 0x80;
        assert_eq!(decode(&b).expect("reserved bit").stream_id(), 1);
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(Frame::Setup(Setup {
            major_version: 1,
            minor_version: 0,
            keepalive_interval_ms: 20_000,
            max_lifetime_ms: 90_000,
            resume_token: Some(Bytes::from_static(b"tok")),
            lease: true,
            metadata_mime: "application/bson".into(),
            data_mime: "application/json".into(),
            payload: Payload::with_metadata(&b"meta"[..], &b"data"[..]),
        }));
        round_trip(Frame::Setup(Setup {
            major_version: 1,
            minor_version: 0,
            keepalive_interval_ms: 1,
            max_lifetime_ms: MAX_U31,
            resume_token: None,
            lease: false,
            metadata_mime: String::new(),
            data_mime: String::new(),
            payload: Payload::default(),
        }));
        round_trip(Frame::Keepalive {
            respond: true,
            last_received_position: 123_456_789_012,
            data: Bytes::from_static(b"ping"),
        });
        round_trip(Frame::RequestStream {
            stream_id: MAX_U31,
            initial_n: MAX_U31,
            follows: true,
            payload: Payload::data(&b"{\"buckets\":[]}"[..]),
        });
        round_trip(Frame::RequestStream {
            stream_id: 1,
            initial_n: 1,
            follows: false,
            // Empty metadata is distinct from no metadata.
            payload: Payload::with_metadata(Bytes::new(), Bytes::new()),
        });
        round_trip(Frame::RequestN { stream_id: 9, n: 1 });
        round_trip(Frame::Cancel { stream_id: 2 });
        round_trip(Frame::next(1, vec![5u8, 0, 0, 0, 0]));
        round_trip(Frame::complete(1));
        round_trip(Frame::Payload {
            stream_id: 1,
            follows: false,
            complete: true,
            next: true,
            payload: Payload::with_metadata(&b"m"[..], &b"d"[..]),
        });
        round_trip(Frame::error(
            0,
            error_code::REJECTED_SETUP,
            "[PSYNC_S2103] JWT has expired",
        ));
        round_trip(Frame::Other {
            stream_id: 3,
            frame_type: frame_type::REQUEST_RESPONSE,
            flags: flags::METADATA,
        });
    }

    #[test]
    fn malformed_frames_are_errors_that_say_what_is_wrong() {
        assert_eq!(decode(&[0, 0, 0]), Err(FrameError::TooShort(3)));
        // REQUEST_N without its N.
        assert_eq!(
            decode(&[0, 0, 0, 1, 0x20, 0x00, 0, 0]),
            Err(FrameError::Truncated {
                frame: "REQUEST_N",
                field: "request N",
                needed: 4,
                left: 2
            })
        );
        // Metadata length 5 with 2 bytes left.
        let err = decode(&[0, 0, 0, 1, 0x19, 0x00, 0, 0, 0, 1, 0, 0, 5, b'{', b'}']).expect_err("bad length");
        assert_eq!(
            err,
            FrameError::BadMetadataLength {
                frame: "REQUEST_STREAM",
                length: 5,
                left: 2
            }
        );
        assert!(err.to_string().contains("metadata length 5"), "{err}");
        // Metadata length itself cut short.
        assert!(matches!(
            decode(&[0, 0, 0, 1, 0x19, 0x00, 0, 0, 0, 1, 0]),
            Err(FrameError::Truncated {
                field: "metadata length",
                ..
            })
        ));
        // A truncated SETUP (MIME type longer than the frame).
        let mut setup = sdk_setup_bytes(b"{}");
        setup.truncate(22);
        assert!(matches!(
            decode(&setup),
            Err(FrameError::Truncated {
                frame: "SETUP",
                field: "MIME type",
                ..
            })
        ));
        // Request N 0, and stream ids on the wrong side of 0.
        assert_eq!(
            decode(&[0, 0, 0, 1, 0x20, 0x00, 0, 0, 0, 0]),
            Err(FrameError::BadRequestN {
                frame: "REQUEST_N",
                n: 0
            })
        );
        assert!(matches!(
            decode(&[0, 0, 0, 0, 0x24, 0x00]),
            Err(FrameError::BadStreamId { frame: "CANCEL", .. })
        ));
        assert!(matches!(
            decode(&[0, 0, 0, 1, 0x0c, 0x80, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::BadStreamId {
                frame: "KEEPALIVE",
                ..
            })
        ));
        // SETUP with a zero lifetime.
        let mut setup = sdk_setup_bytes(b"{}");
        setup[14..18].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(decode(&setup), Err(FrameError::BadTime("max lifetime")));
        // An ERROR whose message is not UTF-8.
        assert_eq!(
            decode(&[0, 0, 0, 1, 0x2c, 0x00, 0, 0, 2, 1, 0xff]),
            Err(FrameError::BadErrorMessage)
        );
    }

    #[test]
    fn unknown_frames_are_ignored_only_with_the_ignore_flag() {
        // Type 0x20 (unassigned) without and with the I flag.
        assert_eq!(
            decode(&[0, 0, 0, 1, 0x80, 0x00]),
            Err(FrameError::UnknownType(0x20))
        );
        assert_eq!(
            decode(&[0, 0, 0, 1, 0x82, 0x00, 1, 2, 3]),
            Ok(Frame::Other {
                stream_id: 1,
                frame_type: 0x20,
                flags: flags::IGNORE
            })
        );
        // Known frames the gateway does not serve decode as their header.
        assert_eq!(
            decode(&[0, 0, 0, 0, 0x30, 0x00, 0xde, 0xad]),
            Ok(Frame::Other {
                stream_id: 0,
                frame_type: frame_type::METADATA_PUSH,
                flags: 0
            })
        );
    }
}
