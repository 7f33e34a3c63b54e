//! Op and bucket checksums (PROTOCOL §3.3, §3.4).
//!
//! The client never recomputes an op checksum; it only sums what it receives and compares the sum with the
//! checkpoint's bucket checksum. We still use the reference algorithm so our op checksums equal the golden
//! transcripts' (PUT checksums are deterministic; they hash the exact `data` text we send, so they also pin
//! the row serialization).
//!
//! On the wire an op checksum is a non-negative u32 number, a bucket checksum is the same 32 bits read as a
//! signed i32 (the reference computes `& 0xffffffff` in JavaScript). [`Checksum`] serializes as u32; bucket
//! entries use [`signed`] so both forms come from the one type.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign};

use sha2::{Digest, Sha256};

/// A 32-bit checksum with wrapping addition: the sum of checksums is taken modulo 2^32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Checksum(u32);

impl Checksum {
    pub const ZERO: Checksum = Checksum(0);

    pub const fn from_u32(value: u32) -> Self {
        Checksum(value)
    }

    /// The same 32 bits, from the signed form stored or sent for buckets.
    pub const fn from_i32(value: i32) -> Self {
        Checksum(value.cast_unsigned())
    }

    pub const fn as_u32(self) -> u32 {
        self.0
    }

    /// The bits as a signed i32: the form the reference sends for bucket checksums.
    pub const fn as_i32(self) -> i32 {
        self.0.cast_signed()
    }

    /// Checksum of a PUT: the first 4 bytes (little-endian) of
    /// `sha256("put." + object_type + "." + object_id + "." + data)`, `data` being the exact string sent.
    pub fn of_put(object_type: &str, object_id: &str, data: &str) -> Self {
        Self::from_put_digest(&Self::put_digest(object_type, object_id, data))
    }

    /// The whole SHA-256 a PUT's checksum is taken from. Storage keeps part of it as a collision-resistant
    /// hash of the row's data, so one PUT costs one SHA-256, not two.
    pub fn put_digest(object_type: &str, object_id: &str, data: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in ["put.", object_type, ".", object_id, ".", data] {
            hasher.update(part.as_bytes());
        }
        hasher.finalize().into()
    }

    /// The checksum of a PUT from its [`put_digest`](Self::put_digest).
    pub fn from_put_digest(digest: &[u8; 32]) -> Self {
        Self::from_digest(digest)
    }

    /// Checksum of a REMOVE: `sha256("delete." + subkey)`, so every REMOVE of one source row has the same
    /// checksum whatever bucket or op id it lands at.
    pub fn of_remove(subkey: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"delete.");
        hasher.update(subkey.as_bytes());
        Self::from_digest(&hasher.finalize())
    }

    fn from_digest(digest: &[u8]) -> Self {
        let mut first = [0u8; 4];
        first.copy_from_slice(&digest[..4]);
        Checksum(u32::from_le_bytes(first))
    }

    /// Reads a JSON/BSON number as the client does: u32, i32 (bit-cast) or a whole float in
    /// `[-2^31, 2^32)`. Anything else is rejected.
    pub fn from_wire_i64(value: i64) -> Option<Self> {
        if let Ok(v) = u32::try_from(value) {
            Some(Checksum(v))
        } else {
            i32::try_from(value).ok().map(Checksum::from_i32)
        }
    }
}

impl Add for Checksum {
    type Output = Checksum;
    fn add(self, rhs: Checksum) -> Checksum {
        Checksum(self.0.wrapping_add(rhs.0))
    }
}

impl AddAssign for Checksum {
    fn add_assign(&mut self, rhs: Checksum) {
        *self = *self + rhs;
    }
}

impl Sum for Checksum {
    fn sum<I: Iterator<Item = Checksum>>(iter: I) -> Checksum {
        iter.fold(Checksum::ZERO, Add::add)
    }
}

impl<'a> Sum<&'a Checksum> for Checksum {
    fn sum<I: Iterator<Item = &'a Checksum>>(iter: I) -> Checksum {
        iter.copied().sum()
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Serializes as a non-negative u32 number (the op-checksum form).
impl serde::Serialize for Checksum {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.0)
    }
}

/// Accepts every form the client accepts (u32, i32, whole float), so either direction of the wire reads.
impl<'de> serde::Deserialize<'de> for Checksum {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumVisitor;
        impl serde::de::Visitor<'_> for NumVisitor {
            type Value = Checksum;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a checksum: an integer in [-2^31, 2^32)")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Checksum, E> {
                Checksum::from_wire_i64(v)
                    .ok_or_else(|| E::custom(format!("checksum {v} is outside [-2^31, 2^32)")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Checksum, E> {
                u32::try_from(v)
                    .map(Checksum)
                    .map_err(|_| E::custom(format!("checksum {v} is outside [-2^31, 2^32)")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Checksum, E> {
                // A whole float in range converts exactly; the range check makes the cast lossless.
                if v.fract() == 0.0 && (-2_147_483_648.0..4_294_967_296.0).contains(&v) {
                    #[allow(clippy::cast_possible_truncation)]
                    let whole = v as i64;
                    self.visit_i64(whole)
                } else {
                    Err(E::custom(format!(
                        "checksum {v} is not a whole number in [-2^31, 2^32)"
                    )))
                }
            }
        }
        deserializer.deserialize_any(NumVisitor)
    }
}

/// Serde adapter for bucket checksums: written as signed i32 like the reference (PROTOCOL §2.8), read in
/// any accepted form. Use with `#[serde(with = "checksum::signed")]`.
pub mod signed {
    use super::Checksum;

    pub fn serialize<S: serde::Serializer>(checksum: &Checksum, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i32(checksum.as_i32())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Checksum, D::Error> {
        serde::Deserialize::deserialize(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_vectors() {
        let put = |done| format!(r#"{{"id":"t1","description":"Buy milk","done":{done}}}"#);
        assert_eq!(Checksum::of_put("todos", "t1", &put(0)).as_u32(), 3377212916);
        assert_eq!(Checksum::of_put("todos", "t1", &put(1)).as_u32(), 601968737);
        let t2 = r#"{"id":"t2","description":"Walk dog","done":0}"#;
        assert_eq!(Checksum::of_put("todos", "t2", t2).as_u32(), 2853750393);
        assert_eq!(Checksum::of_remove("src1").as_u32(), 4206251849);
    }

    #[test]
    fn bucket_sum_wraps_and_is_sent_signed() {
        let ops = [3377212916, 601968737, 4206251849].map(Checksum::from_u32);
        let bucket: Checksum = ops.iter().sum();
        assert_eq!(bucket.as_u32(), 3890466206);
        assert_eq!(bucket.as_i32(), -404501090);
        assert_eq!(
            Checksum::from_u32(2619793206) + Checksum::from_u32(1097917287),
            Checksum::from_i32(-577256803)
        );
    }

    #[test]
    fn reads_every_client_accepted_form() {
        for text in ["3890466206", "-404501090", "3890466206.0"] {
            let c: Checksum = serde_json::from_str(text).unwrap();
            assert_eq!(c.as_u32(), 3890466206, "{text}");
        }
        for bad in ["4294967296", "-2147483649", "1.5", "\"1\""] {
            assert!(serde_json::from_str::<Checksum>(bad).is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_string(&Checksum::from_i32(-1)).unwrap(),
            "4294967295"
        );
    }
}
