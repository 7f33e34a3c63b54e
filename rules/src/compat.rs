//! Compatibility options (`config:` in the rules file, SYNC_RULES.md §9).

/// Sub-second digits of ISO-8601 timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampPrecision {
    Seconds,
    Milliseconds,
    #[default]
    Microseconds,
    Nanoseconds,
}

impl TimestampPrecision {
    /// Number of fractional digits.
    pub fn digits(self) -> usize {
        match self {
            TimestampPrecision::Seconds => 0,
            TimestampPrecision::Milliseconds => 3,
            TimestampPrecision::Microseconds => 6,
            TimestampPrecision::Nanoseconds => 9,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "seconds" => TimestampPrecision::Seconds,
            "milliseconds" => TimestampPrecision::Milliseconds,
            "microseconds" => TimestampPrecision::Microseconds,
            "nanoseconds" => TimestampPrecision::Nanoseconds,
            _ => return None,
        })
    }
}

/// The effective options after applying the edition's defaults and per-option overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compatibility {
    pub edition: u8,
    pub timestamps_iso8601: bool,
    pub versioned_bucket_ids: bool,
    pub fixed_json_extract: bool,
    pub custom_postgres_types: bool,
    pub unstable_sqlite_expression_engine: bool,
    pub timestamp_max_precision: TimestampPrecision,
}

impl Compatibility {
    /// Defaults of an edition (1, 2 or 3).
    pub fn for_edition(edition: u8) -> Self {
        let modern = edition >= 2;
        Compatibility {
            edition,
            timestamps_iso8601: modern,
            versioned_bucket_ids: modern,
            fixed_json_extract: modern,
            custom_postgres_types: modern,
            unstable_sqlite_expression_engine: false,
            timestamp_max_precision: TimestampPrecision::default(),
        }
    }
}

impl Default for Compatibility {
    fn default() -> Self {
        Compatibility::for_edition(1)
    }
}
