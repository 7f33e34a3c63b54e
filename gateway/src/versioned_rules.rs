//! Sync rules as a stored version compiles them: bucket ids always carry the `<version>#` prefix.
//!
//! Op ids are one storage-wide sequence, and a new version's buckets are built while the old one still
//! writes ops, so a bucket name shared by two versions would hold ops below the position a client
//! reached in the old one: the client would miss them, fail the checksum and re-download after its retry
//! delay. Versioned names make every version's buckets new to the client, which then drops the old ones
//! at the first checkpoint of the new version (PROTOCOL §2.2), as the reference's storage does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use syncgate_rules::{CompileOptions, SyncRules, compile};

use crate::storage::RulesVersion;

/// The options a stored version's rules compile with.
pub fn compile_options(version: RulesVersion) -> CompileOptions {
    CompileOptions {
        version: version.0,
        force_versioned_bucket_ids: true,
        ..CompileOptions::default()
    }
}

/// Stored rules that no longer compile (a newer syncgate stored them, or the rules crate changed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the sync rules stored with version {version} do not compile: {message}")]
pub struct StoredRulesError {
    pub version: RulesVersion,
    pub message: String,
}

/// Compiles the rules text stored with `version`.
pub fn compile_version(version: RulesVersion, text: &str) -> Result<SyncRules, StoredRulesError> {
    let compiled = compile(text, &compile_options(version));
    compiled.rules.ok_or_else(|| StoredRulesError {
        version,
        message: compiled
            .diagnostics
            .iter()
            .find(|d| d.is_error())
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .unwrap_or_else(|| "unknown error".into()),
    })
}

/// Compiled rules per version, shared by every session (compiling per connection would cost more than
/// the connection's bucket resolution).
#[derive(Debug, Default)]
pub struct RulesCache {
    compiled: Mutex<HashMap<RulesVersion, Arc<SyncRules>>>,
}

impl RulesCache {
    pub fn get(&self, version: RulesVersion, text: &str) -> Result<Arc<SyncRules>, StoredRulesError> {
        let mut compiled = self
            .compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(rules) = compiled.get(&version) {
            return Ok(Arc::clone(rules));
        }
        let rules = Arc::new(compile_version(version, text)?);
        // Versions are few and retired ones are removed; keep only the newest few.
        if compiled.len() >= 4
            && let Some(oldest) = compiled.keys().min().copied()
        {
            compiled.remove(&oldest);
        }
        compiled.insert(version, Arc::clone(&rules));
        Ok(rules)
    }
}
