//! The client's integration tests, in one test binary.

mod corruption;
mod crashes;
mod driver;
mod end_to_end;
mod official_client;
mod support;
mod transcripts;
mod uploads;
mod websocket;
