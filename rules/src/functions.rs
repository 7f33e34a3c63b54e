//! Scalar functions and operators of the sync-rules expression language (SYNC_RULES.md §5.2–5.3).
