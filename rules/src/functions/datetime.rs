//! `unixepoch()` and `datetime()` (SYNC_RULES.md §5.3, "Date modifiers").
//!
//! The reference goes through a JavaScript `Date`, so instants are whole milliseconds within
//! ±8.64e15 ms of the epoch; numbers are truncated to milliseconds the way `new Date(ms)` does.

use super::arg;
use crate::calendar::{civil_from_days, days_from_civil};
use crate::compat::Compatibility;
use crate::error::EvalError;
use crate::value::SqliteValue;

const MS_PER_DAY: i64 = 86_400_000;
/// ECMAScript's time value range (`TimeClip`).
const MAX_TIME_MS: f64 = 8.64e15;
const JULIAN_DAY_AT_EPOCH: f64 = 2_440_587.5;

#[derive(Clone, Copy, Default)]
struct Flags {
    /// Numbers are seconds since the epoch instead of Julian days.
    unixepoch: bool,
    /// Keep milliseconds in the result.
    subsec: bool,
}

/// Modifiers as the reference reads them: a NULL first modifier means none (the second is then not
/// looked at), `'unixepoch'` may be followed by `'subsec'`/`'subsecond'`, and a `'subsec'`/`'subsecond'`
/// first modifier ends the list. Anything else (`'localtime'`, `'+1 day'`, non-text) gives `None` → NULL.
fn modifiers(args: &[SqliteValue]) -> Option<Flags> {
    let is = |v: &SqliteValue, names: &[&str]| v.as_text().is_some_and(|t| names.contains(&t));
    let (m1, m2) = (arg(args, 1), arg(args, 2));
    if m1.is_null() {
        Some(Flags::default())
    } else if is(m1, &["unixepoch"]) {
        if m2.is_null() {
            Some(Flags {
                unixepoch: true,
                subsec: false,
            })
        } else if is(m2, &["subsec", "subsecond"]) {
            Some(Flags {
                unixepoch: true,
                subsec: true,
            })
        } else {
            None
        }
    } else if is(m1, &["subsec", "subsecond"]) {
        Some(Flags {
            unixepoch: false,
            subsec: true,
        })
    } else {
        None
    }
}

/// `unixepoch(x[, m1[, m2]])`: seconds since the epoch, INTEGER (floored) or REAL with `subsec`.
pub(super) fn unixepoch(args: &[SqliteValue], _: &Compatibility) -> Result<SqliteValue, EvalError> {
    Ok(evaluate(args).map_or(SqliteValue::Null, |(ms, flags)| {
        if flags.subsec {
            SqliteValue::Real(ms as f64 / 1000.0)
        } else {
            SqliteValue::Integer(ms.div_euclid(1000))
        }
    }))
}

/// `datetime(x[, m1[, m2]])`: `YYYY-MM-DD HH:MM:SS` in UTC, with `.SSS` under `subsec`.
pub(super) fn datetime(args: &[SqliteValue], _: &Compatibility) -> Result<SqliteValue, EvalError> {
    Ok(evaluate(args).map_or(SqliteValue::Null, |(ms, flags)| {
        SqliteValue::from(format_datetime(ms, flags.subsec))
    }))
}

fn evaluate(args: &[SqliteValue]) -> Option<(i64, Flags)> {
    let value = arg(args, 0);
    if value.is_null() {
        return None;
    }
    let flags = modifiers(args)?;
    let ms = match value {
        SqliteValue::Text(s) => parse_date_text(s)?,
        SqliteValue::Integer(i) => number_to_ms(*i as f64, flags)?,
        SqliteValue::Real(f) => number_to_ms(*f, flags)?,
        SqliteValue::Null | SqliteValue::Blob(_) => return None,
    };
    Some((ms, flags))
}

fn number_to_ms(n: f64, flags: Flags) -> Option<i64> {
    if flags.unixepoch {
        time_clip(n * 1000.0)
    } else {
        julian_to_ms(n)
    }
}

fn julian_to_ms(julian_day: f64) -> Option<i64> {
    // Same operation order as the reference, so the rounding matches.
    time_clip((julian_day - JULIAN_DAY_AT_EPOCH) * 24.0 * 60.0 * 60.0 * 1000.0)
}

/// ECMAScript `TimeClip`: invalid beyond ±8.64e15 ms, otherwise truncated toward zero.
fn time_clip(ms: f64) -> Option<i64> {
    if !ms.is_finite() || ms.abs() > MAX_TIME_MS {
        return None;
    }
    #[allow(
        clippy::cast_possible_truncation,
        reason = "range checked above; truncation is TimeClip"
    )]
    let t = ms.trunc() as i64;
    Some(t)
}

/// Text input: only digits (with an optional fraction) is a Julian day; otherwise an ISO-like date-time
/// `YYYY-MM-DD[( |T)HH:MM[:SS[.fff…]]][Z|±HH[:MM]]`, UTC when there is no zone. Surrounding white
/// space is ignored. Fractions beyond milliseconds are truncated.
fn parse_date_text(text: &str) -> Option<i64> {
    let s = text.trim();
    let (int_part, frac_part) = s.split_once('.').unwrap_or((s, ""));
    if !int_part.is_empty()
        && int_part.bytes().all(|c| c.is_ascii_digit())
        && frac_part.bytes().all(|c| c.is_ascii_digit())
    {
        return julian_to_ms(s.parse::<f64>().ok()?);
    }
    let ms = DateScanner {
        b: s.as_bytes(),
        pos: 0,
    }
    .scan()?;
    (ms.unsigned_abs() <= 8_640_000_000_000_000).then_some(ms)
}

struct DateScanner<'a> {
    b: &'a [u8],
    pos: usize,
}

impl DateScanner<'_> {
    fn number(&mut self, digits: usize) -> Option<i64> {
        let part = self.b.get(self.pos..self.pos + digits)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.pos += digits;
        Some(part.iter().fold(0, |acc, d| acc * 10 + i64::from(d - b'0')))
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.b.get(self.pos) == Some(&c);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn scan(mut self) -> Option<i64> {
        let year = self.number(4)?;
        if !self.eat(b'-') {
            return None;
        }
        let month = self.number(2)?;
        if !self.eat(b'-') {
            return None;
        }
        let day = self.number(2)?;
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return None;
        }
        let mut time_ms = 0;
        if matches!(self.peek(), Some(b'T' | b't' | b' '))
            && self.b.get(self.pos + 1).is_some_and(u8::is_ascii_digit)
        {
            self.pos += 1;
            let hour = self.number(2)?;
            if !self.eat(b':') {
                return None;
            }
            let minute = self.number(2)?;
            let mut second = 0;
            let mut millis = 0;
            if self.eat(b':') {
                second = self.number(2)?;
                if self.eat(b'.') {
                    let start = self.pos;
                    while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                        self.pos += 1;
                    }
                    let digits = &self.b[start..self.pos];
                    if digits.is_empty() {
                        return None;
                    }
                    millis = (0..3).fold(0, |acc, k| {
                        acc * 10 + digits.get(k).map_or(0, |d| i64::from(d - b'0'))
                    });
                }
            }
            if hour > 23 || minute > 59 || second > 59 {
                return None;
            }
            time_ms = ((hour * 60 + minute) * 60 + second) * 1000 + millis;
        }
        while self.eat(b' ') {}
        let offset_minutes = match self.peek() {
            None => 0,
            Some(b'Z' | b'z') => {
                self.pos += 1;
                0
            }
            Some(sign @ (b'+' | b'-')) => {
                self.pos += 1;
                let hours = self.number(2)?;
                let minutes = if self.eat(b':') {
                    self.number(2)?
                } else {
                    self.number(2).unwrap_or(0)
                };
                if hours > 23 || minutes > 59 {
                    return None;
                }
                let offset = hours * 60 + minutes;
                if sign == b'-' { -offset } else { offset }
            }
            Some(_) => return None,
        };
        if self.pos != self.b.len() {
            return None;
        }
        Some(days_from_civil(year, month, day) * MS_PER_DAY + time_ms - offset_minutes * 60_000)
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `Date#toISOString` with `T` → space and no zone; years outside 0–9999 as `+YYYYYY`, or `-Y…` without
/// leading zeros (the reference strips them).
fn format_datetime(ms: i64, subsec: bool) -> String {
    let (year, month, day) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (hour, minute, second, millis) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    let year = match year {
        0..=9999 => format!("{year:04}"),
        y if y > 9999 => format!("+{y:06}"),
        y => format!("-{}", -y),
    };
    let mut out = format!("{year}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}");
    if subsec {
        out.push_str(&format!(".{millis:03}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::test_values::{N, t};
    use proptest::prelude::*;

    fn epoch(args: &[SqliteValue]) -> SqliteValue {
        unixepoch(args, &Compatibility::default()).unwrap()
    }
    fn dt(args: &[SqliteValue]) -> SqliteValue {
        datetime(args, &Compatibility::default()).unwrap()
    }

    #[test]
    fn unixepoch_of_text() {
        assert_eq!(
            epoch(&[t("2023-03-06 13:47:00")]),
            SqliteValue::Integer(1_678_110_420)
        );
        assert_eq!(
            epoch(&[t("2023-03-06T13:47:00.123Z")]),
            SqliteValue::Integer(1_678_110_420)
        );
        assert_eq!(
            epoch(&[t("2023-03-06 15:47:00+02")]),
            SqliteValue::Integer(1_678_110_420)
        );
        assert_eq!(
            epoch(&[t("2023-03-06T15:47:00+02:00")]),
            SqliteValue::Integer(1_678_110_420)
        );
        assert_eq!(
            epoch(&[t("2023-03-06T10:17:00-0330")]),
            SqliteValue::Integer(1_678_110_420)
        );
        assert_eq!(
            epoch(&[t("2023-03-06 13:47:00Z")]),
            SqliteValue::Integer(1_678_110_420)
        );
        assert_eq!(
            epoch(&[t("2023-03-06 13:47")]),
            SqliteValue::Integer(1_678_110_420)
        );
        assert_eq!(epoch(&[t("1970-01-01")]), SqliteValue::Integer(0));
        assert_eq!(epoch(&[t("1969-12-31 23:59:59.5")]), SqliteValue::Integer(-1));
        assert_eq!(epoch(&[t("garbage")]), N);
        assert_eq!(epoch(&[t("")]), N);
        assert_eq!(epoch(&[t("2023-02-29")]), N);
        assert_eq!(epoch(&[t("2024-02-29")]), SqliteValue::Integer(1_709_164_800));
        assert_eq!(epoch(&[t("2023-13-01")]), N);
        assert_eq!(epoch(&[t("2023-03-06 24:00:00")]), N);
        assert_eq!(epoch(&[t("2023-03-06 13:47:00 junk")]), N);
        assert_eq!(epoch(&[N]), N);
        assert_eq!(epoch(&[SqliteValue::from(vec![1u8])]), N);
    }

    #[test]
    fn unixepoch_subsec_keeps_milliseconds() {
        assert_eq!(
            epoch(&[t("2023-03-06T13:47:00.123456Z"), t("subsec")]),
            SqliteValue::Real(1_678_110_420.123)
        );
        assert_eq!(
            epoch(&[t("2023-03-06T13:47:00.5Z"), t("subsecond")]),
            SqliteValue::Real(1_678_110_420.5)
        );
        assert_eq!(
            epoch(&[SqliteValue::Real(1.5), t("unixepoch"), t("subsec")]),
            SqliteValue::Real(1.5)
        );
    }

    #[test]
    fn numbers_are_julian_days_unless_unixepoch() {
        assert_eq!(epoch(&[SqliteValue::Real(2_440_587.5)]), SqliteValue::Integer(0));
        assert_eq!(
            epoch(&[SqliteValue::Integer(2_440_588)]),
            SqliteValue::Integer(43_200)
        );
        assert_eq!(epoch(&[t("2440588")]), SqliteValue::Integer(43_200));
        assert_eq!(epoch(&[t("2440587.5")]), SqliteValue::Integer(0));
        // Digits-only text stays a Julian day even with 'unixepoch'.
        assert_eq!(
            epoch(&[t("2440588"), t("unixepoch")]),
            SqliteValue::Integer(43_200)
        );
        assert_eq!(
            epoch(&[SqliteValue::Integer(1_678_110_420), t("unixepoch")]),
            SqliteValue::Integer(1_678_110_420)
        );
        assert_eq!(
            epoch(&[SqliteValue::Real(-1.5), t("unixepoch")]),
            SqliteValue::Integer(-2)
        );
        assert_eq!(epoch(&[SqliteValue::Real(f64::NAN)]), N);
        assert_eq!(epoch(&[SqliteValue::Integer(i64::MAX), t("unixepoch")]), N);
        assert_eq!(epoch(&[SqliteValue::Real(1e300)]), N);
    }

    #[test]
    fn datetime_formats() {
        assert_eq!(
            dt(&[SqliteValue::Integer(1_678_110_420), t("unixepoch")]),
            t("2023-03-06 13:47:00")
        );
        assert_eq!(dt(&[t("2023-03-06T13:47:00+02:00")]), t("2023-03-06 11:47:00"));
        assert_eq!(dt(&[t("2023-03-06 13:47")]), t("2023-03-06 13:47:00"));
        assert_eq!(
            dt(&[t("2023-03-06T13:47:00.1234Z"), t("subsec")]),
            t("2023-03-06 13:47:00.123")
        );
        assert_eq!(
            dt(&[t("2023-03-06T13:47:00Z"), t("subsecond")]),
            t("2023-03-06 13:47:00.000")
        );
        assert_eq!(
            dt(&[SqliteValue::Real(1.25), t("unixepoch"), t("subsec")]),
            t("1970-01-01 00:00:01.250")
        );
        assert_eq!(dt(&[SqliteValue::Real(2_460_000.5)]), t("2023-02-25 00:00:00"));
        assert_eq!(dt(&[t("0000-01-01")]), t("0000-01-01 00:00:00"));
        assert_eq!(dt(&[t("9999-12-31 23:59:59")]), t("9999-12-31 23:59:59"));
        assert_eq!(dt(&[SqliteValue::Integer(0)]), t("-4713-11-24 12:00:00"));
        assert_eq!(
            dt(&[SqliteValue::Integer(253_402_300_800), t("unixepoch")]),
            t("+010000-01-01 00:00:00")
        );
        assert_eq!(dt(&[N]), N);
        assert_eq!(dt(&[t("nope")]), N);
    }

    #[test]
    fn only_the_documented_modifiers_are_accepted() {
        let x = SqliteValue::Integer(1_678_110_420);
        for bad in [
            "localtime",
            "utc",
            "+1 day",
            "start of month",
            "UNIXEPOCH",
            "auto",
            "",
        ] {
            assert_eq!(dt(&[x.clone(), t(bad)]), N, "{bad}");
            assert_eq!(epoch(&[x.clone(), t(bad)]), N, "{bad}");
        }
        assert_eq!(dt(&[x.clone(), t("unixepoch"), t("localtime")]), N);
        assert_eq!(dt(&[x.clone(), SqliteValue::Integer(1)]), N);
        // NULL first modifier: no modifiers at all, the second is not looked at.
        assert_eq!(
            epoch(&[SqliteValue::Real(2_440_587.5), N, t("localtime")]),
            SqliteValue::Integer(0)
        );
        // 'unixepoch' followed by NULL.
        assert_eq!(epoch(&[x.clone(), t("unixepoch"), N]), x);
        // The reference stops reading after 'subsec'.
        assert_eq!(
            epoch(&[SqliteValue::Real(2_440_587.5), t("subsec"), t("unixepoch")]),
            SqliteValue::Real(0.0)
        );
    }

    #[test]
    fn civil_conversions_round_trip() {
        for days in [-719_528, -1, 0, 1, 10_957, 19_422, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    proptest! {
        #[test]
        fn date_functions_never_panic(s in ".{0,30}", n in any::<f64>(), i in any::<i64>()) {
            let c = Compatibility::default();
            for v in [t(&s), SqliteValue::Real(n), SqliteValue::Integer(i)] {
                for m in [N, t("unixepoch"), t("subsec")] {
                    let _ = unixepoch(&[v.clone(), m.clone(), t("subsec")], &c);
                    let _ = datetime(&[v.clone(), m], &c);
                }
            }
        }

        #[test]
        fn datetime_text_round_trips(secs in -62_167_219_200i64..253_402_300_799) {
            let text = dt(&[SqliteValue::Integer(secs), t("unixepoch")]);
            prop_assert_eq!(epoch(std::slice::from_ref(&text)), SqliteValue::Integer(secs));
        }
    }
}
