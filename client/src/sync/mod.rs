//! The sync logic, sans-IO: [`SyncStateMachine`] turns [`SyncEvent`]s into [`Instruction`]s; the driver
//! (crate::driver) does the I/O.

mod machine;
mod messages;

pub use machine::{RequestOptions, SyncStateMachine};
pub use messages::{ApplyPlan, CloseReason, Instruction, StoredBucket, SyncEvent, SyncStatus};
