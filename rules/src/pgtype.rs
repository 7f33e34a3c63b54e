//! Postgres → synced value mapping (SYNC_RULES.md §8).
