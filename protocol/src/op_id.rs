//! Positions in the op log and write-checkpoint ids: "string-ints" on the wire.
//!
//! Both are positive `i64` values in the reference service, which is why they travel as JSON *strings*
//! (`"42"`): JavaScript numbers lose precision above 2^53. The client core rejects a JSON number here
//! ("invalid type: integer, expected a string", PROTOCOL §7.1 trap 1), so serialization always writes a
//! string. Parsing is strict — digits only, no sign, no exponent, at most `i64::MAX` — so a value that the
//! client would read differently from us is refused instead of silently reinterpreted.

use std::fmt;
use std::str::FromStr;

/// Why a string-int (`"42"`) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StringIntError {
    #[error("expected a base-10 integer string, got an empty string")]
    Empty,
    #[error("expected a base-10 integer string (digits only, no sign or exponent), got {0:?}")]
    NotDigits(String),
    #[error("integer string {0:?} is larger than i64::MAX, the largest op id the protocol allows")]
    TooLarge(String),
}

/// Parses a string-int: ASCII digits only, value ≤ `i64::MAX`.
fn parse_string_int(text: &str) -> Result<u64, StringIntError> {
    if text.is_empty() {
        return Err(StringIntError::Empty);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StringIntError::NotDigits(text.to_owned()));
    }
    // Only digits: the sole remaining failure of `parse` is overflow.
    match text.parse::<u64>() {
        Ok(v) if v <= I64_MAX => Ok(v),
        _ => Err(StringIntError::TooLarge(text.to_owned())),
    }
}

/// `i64::MAX` as u64 (`unsigned_abs` of a positive value is exact, no cast needed).
const I64_MAX: u64 = i64::MAX.unsigned_abs();

macro_rules! string_int_newtype {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(u64);

        impl $name {
            /// The zero value (`"0"`).
            pub const ZERO: $name = $name(0);
            /// The largest value the protocol allows (`i64::MAX`).
            pub const MAX: $name = $name(I64_MAX);

            /// Wraps a value; `None` above `i64::MAX`, which the client could not represent.
            pub fn new(value: u64) -> Option<Self> {
                (value <= I64_MAX).then_some($name(value))
            }

            /// From a signed value as stored in SQLite / Postgres; `None` if negative.
            pub fn from_i64(value: i64) -> Option<Self> {
                u64::try_from(value).ok().map($name)
            }

            pub fn get(self) -> u64 {
                self.0
            }

            /// The value as `i64`, for storage. Lossless: every constructor keeps it ≤ `i64::MAX`.
            pub fn as_i64(self) -> i64 {
                i64::try_from(self.0).expect(concat!($what, " is kept <= i64::MAX by construction"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = StringIntError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                parse_string_int(text).map($name)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct StrVisitor;
                impl serde::de::Visitor<'_> for StrVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!($what, " as a string holding a base-10 integer"))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(StrVisitor)
            }
        }
    };
}

string_int_newtype!(
    /// An op id: a position in the one storage-wide op sequence shared by all buckets (PROTOCOL §4.1).
    /// Also used for checkpoint ids (`last_op_id`) and client positions (`after`, `next_after`).
    OpId,
    "an op id"
);

string_int_newtype!(
    /// A write-checkpoint id issued by `/write-checkpoint2.json` and echoed in `write_checkpoint` of
    /// checkpoint lines (PROTOCOL §4.4). Kept apart from [`OpId`]: it counts per user/client, not ops.
    WriteCheckpointId,
    "a write checkpoint id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_id_is_a_json_string() {
        let id: OpId = serde_json::from_str("\"1212\"").unwrap();
        assert_eq!(id.get(), 1212);
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"1212\"");
        assert_eq!(OpId::MAX.as_i64(), i64::MAX);
    }

    #[test]
    fn op_id_rejects_numbers_signs_exponents_and_garbage() {
        assert!(serde_json::from_str::<OpId>("1212").is_err());
        for bad in [
            "",
            "+1",
            "-1",
            "1e3",
            " 1",
            "1 ",
            "0x10",
            "1.0",
            "abc",
            "9223372036854775808",
        ] {
            assert!(bad.parse::<OpId>().is_err(), "{bad:?} must be rejected");
        }
        assert_eq!("9223372036854775807".parse::<OpId>().unwrap(), OpId::MAX);
        assert_eq!("007".parse::<OpId>().unwrap().get(), 7);
        let err = serde_json::from_str::<OpId>("\"-5\"").unwrap_err().to_string();
        assert!(err.contains("no sign"), "{err}");
    }

    #[test]
    fn constructors_keep_the_i64_range() {
        assert_eq!(OpId::new(u64::MAX), None);
        assert_eq!(OpId::from_i64(-1), None);
        assert_eq!(WriteCheckpointId::from_i64(88).unwrap().to_string(), "88");
    }
}
