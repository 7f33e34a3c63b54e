//! # syncgate-protocol
//!
//! Wire-level identifiers shared by the gateway, the rules engine and the client.
//! The sync protocol is PowerSync's; see docs/ and the spec for the line types.

use std::fmt;
use std::sync::Arc;

/// A bucket id as sent on the wire, e.g. `1#by_user["u1"]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct BucketName(pub Arc<str>);

impl BucketName {
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        BucketName(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bucket priority: 0 (most urgent) to 3 (default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct BucketPriority(u8);

impl BucketPriority {
    pub const HIGHEST: BucketPriority = BucketPriority(0);
    pub const DEFAULT: BucketPriority = BucketPriority(3);

    /// A priority from 0 to 3; `None` outside that range.
    pub fn new(value: i64) -> Option<Self> {
        u8::try_from(value).ok().filter(|v| *v <= 3).map(BucketPriority)
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl Default for BucketPriority {
    fn default() -> Self {
        BucketPriority::DEFAULT
    }
}

/// The user a connection authenticates as (the JWT `sub`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct UserId(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_range_is_zero_to_three() {
        assert_eq!(BucketPriority::new(0), Some(BucketPriority::HIGHEST));
        assert_eq!(BucketPriority::new(3), Some(BucketPriority::DEFAULT));
        assert_eq!(BucketPriority::new(4), None);
        assert_eq!(BucketPriority::new(-1), None);
        assert_eq!(BucketPriority::default().get(), 3);
    }
}
