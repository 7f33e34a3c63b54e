//! date, time, timestamp and timestamptz (SYNC_RULES.md §8, `timestamps_iso8601`,
//! `timestamp_max_precision`). Functions return `None` for text they do not understand; the caller
//! then keeps the raw text.

use crate::calendar::{civil_from_days, days_from_civil};
use std::borrow::Cow;
use std::fmt::Write as _;

use crate::compat::{Compatibility, TimestampPrecision};

/// Postgres stores microseconds: more digits are never real, so precision is capped at 6 (the
/// reference does the same for Postgres sources).
const SOURCE_DIGITS: usize = 6;

/// `infinity` → `9999-12-31`, `-infinity` → `0000-01-01`, anything else as is.
pub(super) fn date(text: &str) -> Cow<'_, str> {
    match text {
        "infinity" => Cow::Borrowed("9999-12-31"),
        "-infinity" => Cow::Borrowed("0000-01-01"),
        _ => Cow::Borrowed(text),
    }
}

/// time: legacy keeps the text; iso8601 gives fixed sub-second digits (`13:47:00.250000`).
pub(super) fn time(text: &str, compat: &Compatibility) -> Option<String> {
    let (hms, fraction) = split_fraction(text);
    if !is_hms(hms) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !compat.timestamps_iso8601 {
        return Some(text.to_owned());
    }
    let mut out = hms.to_owned();
    push_fraction(fraction, compat, &mut out);
    Some(out)
}

/// timestamp (without time zone): legacy keeps the text; iso8601 uses `T` and fixed digits.
pub(super) fn timestamp(text: &str, compat: &Compatibility) -> Option<String> {
    let (date, hms, fraction) = match text {
        "infinity" => ("9999-12-31", "23:59:59", ""),
        "-infinity" => ("0000-01-01", "00:00:00", ""),
        _ => {
            let parts = parse(text)?;
            if parts.offset_seconds.is_some() {
                return None;
            }
            if !compat.timestamps_iso8601 {
                return Some(text.to_owned());
            }
            (parts.date, parts.hms, parts.fraction)
        }
    };
    let mut out = String::with_capacity(32);
    out.push_str(date);
    out.push(if compat.timestamps_iso8601 { 'T' } else { ' ' });
    out.push_str(hms);
    if compat.timestamps_iso8601 {
        push_fraction(fraction, compat, &mut out);
    }
    Some(out)
}

/// timestamptz: converted to UTC with a `Z` suffix. Legacy keeps the source's fractional digits
/// (`2023-03-06 13:47:00.5Z`); iso8601 uses `T` and fixed digits.
pub(super) fn timestamptz(text: &str, compat: &Compatibility) -> Option<String> {
    let mut out = String::with_capacity(32);
    let separator = if compat.timestamps_iso8601 { 'T' } else { ' ' };
    let infinity = match text {
        "infinity" => Some(("9999-12-31", "23:59:59")),
        "-infinity" => Some(("0000-01-01", "00:00:00")),
        _ => None,
    };
    let fraction = match infinity {
        Some((date, time)) => {
            out.push_str(date);
            out.push(separator);
            out.push_str(time);
            ""
        }
        None => {
            let parts = parse(text)?;
            push_utc(&parts, separator, &mut out)?;
            parts.fraction
        }
    };
    if compat.timestamps_iso8601 {
        push_fraction(fraction, compat, &mut out);
    } else if !fraction.is_empty() {
        out.push('.');
        out.push_str(fraction);
    }
    out.push('Z');
    Some(out)
}

/// Appends `.` and the fraction truncated or zero-padded to the configured digits (nothing for
/// `seconds`). Truncation, not rounding, as the reference does.
fn push_fraction(fraction: &str, compat: &Compatibility, out: &mut String) {
    let precision = compat.timestamp_max_precision;
    if precision == TimestampPrecision::Seconds {
        return;
    }
    let digits = precision.digits().min(SOURCE_DIGITS);
    out.push('.');
    let kept = &fraction[..fraction.len().min(digits)];
    out.push_str(kept);
    out.extend(std::iter::repeat_n('0', digits - kept.len()));
}

/// A timestamp as Postgres writes it with DateStyle=ISO:
/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]]` (the year may have more than 4 digits).
struct Parts<'a> {
    date: &'a str,
    hms: &'a str,
    fraction: &'a str,
    year: i64,
    month: i64,
    day: i64,
    seconds_of_day: i64,
    offset_seconds: Option<i64>,
}

fn parse(text: &str) -> Option<Parts<'_>> {
    let (date, rest) = text.split_once(' ')?;
    let (year, month, day) = parse_date(date)?;
    // The offset starts at the first sign after the time (the date's `-` are already split off).
    let offset_at = rest.find(['+', '-']).unwrap_or(rest.len());
    let (time, offset) = rest.split_at(offset_at);
    let (hms, fraction) = split_fraction(time);
    if !is_hms(hms) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hour = number(&hms[0..2])?;
    let minute = number(&hms[3..5])?;
    let second = number(&hms[6..8])?;
    if hour > 24 || minute > 59 || second > 60 {
        return None;
    }
    let offset_seconds = if offset.is_empty() {
        None
    } else {
        Some(parse_offset(offset)?)
    };
    Some(Parts {
        date,
        hms,
        fraction,
        year,
        month,
        day,
        seconds_of_day: hour * 3600 + minute * 60 + second,
        offset_seconds,
    })
}

fn parse_date(date: &str) -> Option<(i64, i64, i64)> {
    let mut fields = date.split('-');
    let (year, month, day) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() || year.len() < 4 || month.len() != 2 || day.len() != 2 {
        return None;
    }
    let (year, month, day) = (number(year)?, number(month)?, number(day)?);
    ((1..=12).contains(&month) && (1..=31).contains(&day)).then_some((year, month, day))
}

/// `+HH`, `+HH:MM` or `+HH:MM:SS` (seconds appear for historical zones' local mean time).
fn parse_offset(offset: &str) -> Option<i64> {
    let sign = match offset.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut seconds = 0;
    let mut fields = 0;
    for (i, field) in offset[1..].split(':').enumerate() {
        if field.len() != 2 || i >= 3 {
            return None;
        }
        seconds += number(field)? * [3600, 60, 1][i];
        fields += 1;
    }
    (fields > 0).then_some(sign * seconds)
}

/// Digits only (no sign), at most 9 so the value fits easily.
fn number(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn split_fraction(time: &str) -> (&str, &str) {
    match time.split_once('.') {
        Some((hms, fraction)) => (hms, fraction),
        None => (time, ""),
    }
}

fn is_hms(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 8 && b[2] == b':' && b[5] == b':' && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
}

/// Appends the instant of `parts` in UTC as `YYYY-MM-DD`, `separator`, `hh:mm:ss`; `None` before year 0.
/// Digits are written directly: this runs for every timestamptz value copied, and `write!` was most of
/// its time.
fn push_utc(parts: &Parts<'_>, separator: char, out: &mut String) -> Option<()> {
    let days = days_from_civil(parts.year, parts.month, parts.day);
    let total = days * 86_400 + parts.seconds_of_day - parts.offset_seconds.unwrap_or(0);
    let (days, seconds) = (total.div_euclid(86_400), total.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    if year < 0 {
        return None;
    }
    if year > 9999 {
        // Wider than four digits: `{year:04}` prints them all.
        let _ = write!(out, "{year}");
    } else {
        push_digits(out, year, 4);
    }
    for (separator, value) in [
        ('-', month),
        ('-', day),
        (separator, seconds / 3600),
        (':', seconds / 60 % 60),
        (':', seconds % 60),
    ] {
        out.push(separator);
        push_digits(out, value, 2);
    }
    Some(())
}

/// Appends the non-negative `value` zero-padded to `width` digits (`value` < 10^width).
fn push_digits(out: &mut String, value: i64, width: u32) {
    for place in (0..width).rev() {
        let digit = value / 10_i64.pow(place) % 10;
        out.push(char::from(b'0' + u8::try_from(digit).unwrap_or(0)));
    }
}
