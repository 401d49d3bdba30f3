//! Parsing and printing of the units a user types: times, durations, sizes,
//! bit rates. Every parser names the form it expected, so the command line can
//! turn a typo into a one-line error.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A point in time: microseconds since the Unix epoch, UTC.
///
/// Microseconds give the sub-millisecond precision recorders need while an
/// `i64` still spans ±292,000 years.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

/// Earliest and latest times a store accepts (years 1970 to 9999), so every
/// timestamp has a four-digit-year path.
pub const MIN_TIME: Timestamp = Timestamp(0);
pub const MAX_TIME: Timestamp = Timestamp(253_402_300_799_999_999);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not {expected}")]
pub struct UnitError {
    pub input: String,
    pub expected: &'static str,
}

impl UnitError {
    fn new(input: &str, expected: &'static str) -> Self {
        Self {
            input: input.to_string(),
            expected,
        }
    }
}

pub const TIME_FORM: &str =
    "a time: RFC 3339 (2026-11-21T08:00:00Z), 'now', or relative to now (-2h, -30m, -1d)";
pub const DURATION_FORM: &str = "a duration such as 60s, 10s, 500ms, 2h, 30d";
pub const SIZE_FORM: &str = "a size such as 10GiB, 512MiB, 4KiB, 1GB or a byte count";
pub const RATE_FORM: &str = "a bit rate such as 4Mbit, 500kbit, 1.5Gbit (optionally /s)";
pub const RANGE_FORM: &str = "a time range T1..T2, each side a time (RFC 3339, now, -2h)";

impl Timestamp {
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(d.as_micros() as i64)
    }

    pub fn from_secs(s: i64) -> Self {
        Timestamp(s * 1_000_000)
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    pub fn add_micros(self, d: i64) -> Self {
        Timestamp(self.0.saturating_add(d))
    }

    /// Parses RFC 3339, `now`, or `-2h` / `+30m` / `now-2h` relative to `now`.
    pub fn parse(input: &str, now: Timestamp) -> Result<Self, UnitError> {
        let s = input.trim();
        let err = || UnitError::new(input, TIME_FORM);
        if s.eq_ignore_ascii_case("now") {
            return Ok(now);
        }
        let rel = s
            .strip_prefix("now")
            .filter(|r| r.starts_with(['-', '+']))
            .unwrap_or(s);
        if let Some(d) = rel.strip_prefix('-') {
            let d = parse_duration_micros(d).map_err(|_| err())?;
            let d = i64::try_from(d).map_err(|_| err())?;
            return Ok(now.add_micros(-d)).and_then(|t| t.checked().ok_or_else(err));
        }
        if let Some(d) = rel.strip_prefix('+') {
            let d = parse_duration_micros(d).map_err(|_| err())?;
            let d = i64::try_from(d).map_err(|_| err())?;
            return Ok(now.add_micros(d)).and_then(|t| t.checked().ok_or_else(err));
        }
        let dt = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| err())?;
        let micros = dt.unix_timestamp_nanos() / 1_000;
        i64::try_from(micros)
            .ok()
            .map(Timestamp)
            .and_then(Timestamp::checked)
            .ok_or_else(err)
    }

    fn checked(self) -> Option<Self> {
        (MIN_TIME..=MAX_TIME).contains(&self).then_some(self)
    }

    /// The UTC calendar form, used for paths and printing.
    pub fn datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(self.0 as i128 * 1_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC, with fractional seconds only where there are some.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.datetime().format(&Rfc3339) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "@{}us", self.0),
        }
    }
}

/// Parses a duration (`60s`, `500ms`, `1h30m`, `30d`) into microseconds.
pub fn parse_duration_micros(input: &str) -> Result<u64, UnitError> {
    let d = humantime::parse_duration(input.trim())
        .map_err(|_| UnitError::new(input, DURATION_FORM))?;
    u64::try_from(d.as_micros()).map_err(|_| UnitError::new(input, DURATION_FORM))
}

/// Prints microseconds as a short duration (`60s`, `1h 30m`, `1.5ms`).
pub fn format_duration_micros(us: u64) -> String {
    humantime::format_duration(Duration::from_micros(us)).to_string()
}

fn split_number(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let n: f64 = s[..end].parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some((n, s[end..].trim()))
}

/// Parses a size in bytes: `10GiB`, `512MiB`, `1GB`, `4096`.
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let err = || UnitError::new(input, SIZE_FORM);
    let (n, unit) = split_number(input).ok_or_else(err)?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err()),
    };
    let v = n * mult;
    (v < u64::MAX as f64).then_some(v as u64).ok_or_else(err)
}

/// Parses a bit rate into bits per second: `4Mbit`, `500kbit/s`, `1.5Gbit`, `8Mbps`.
pub fn parse_bitrate(input: &str) -> Result<u64, UnitError> {
    let err = || UnitError::new(input, RATE_FORM);
    let (n, unit) = split_number(input).ok_or_else(err)?;
    let unit = unit.strip_suffix("/s").unwrap_or(unit);
    let lower = unit.to_ascii_lowercase();
    let mult: f64 = match lower.as_str() {
        "bit" | "bps" => 1.0,
        "kbit" | "kbps" => 1e3,
        "mbit" | "mbps" => 1e6,
        "gbit" | "gbps" => 1e9,
        _ => return Err(err()),
    };
    let v = n * mult;
    (v >= 1.0 && v < u64::MAX as f64)
        .then_some(v as u64)
        .ok_or_else(err)
}

/// Parses `T1..T2` into a half-open time range; T1 must come before T2.
pub fn parse_range(input: &str, now: Timestamp) -> Result<(Timestamp, Timestamp), UnitError> {
    let err = || UnitError::new(input, RANGE_FORM);
    let (a, b) = input.split_once("..").ok_or_else(err)?;
    let a = Timestamp::parse(a, now).map_err(|_| err())?;
    let b = Timestamp::parse(b, now).map_err(|_| err())?;
    (a < b).then_some((a, b)).ok_or_else(err)
}

/// Human-readable bytes (`1.5 GiB`).
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let now = Timestamp::from_secs(1_800_000_000);
        assert_eq!(Timestamp::parse("now", now), Ok(now));
        assert_eq!(
            Timestamp::parse("-2h", now),
            Ok(Timestamp::from_secs(1_800_000_000 - 7200))
        );
        assert_eq!(
            Timestamp::parse("now-30m", now),
            Ok(Timestamp::from_secs(1_800_000_000 - 1800))
        );
        let t = Timestamp::parse("2026-11-21T08:00:00.000250Z", now).unwrap();
        assert_eq!(t.0 % 1_000_000, 250);
        assert_eq!(t.to_string(), "2026-11-21T08:00:00.00025Z");
        let t2 = Timestamp::parse("2026-11-21T09:00:00+01:00", now).unwrap();
        assert_eq!(t2.to_string(), "2026-11-21T08:00:00Z");
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00Z",
            "-2x",
            "",
            "12:00",
            // Out of range either way, never wrapped round.
            "-9223372036854775808us",
            "-18446744073709551615us",
            "+18446744073709551615us",
        ] {
            assert!(Timestamp::parse(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_and_rates() {
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(parse_bitrate("4Mbit"), Ok(4_000_000));
        assert_eq!(parse_bitrate("1.5Gbit/s"), Ok(1_500_000_000));
        assert_eq!(parse_bitrate("500kbit"), Ok(500_000));
        assert!(parse_bitrate("4MB").is_err());
        assert!(parse_bitrate("0bit").is_err());
        assert_eq!(parse_duration_micros("60s"), Ok(60_000_000));
        assert_eq!(parse_duration_micros("500us"), Ok(500));
        assert!(parse_duration_micros("60 parsecs").is_err());
    }

    #[test]
    fn ranges() {
        let now = Timestamp::from_secs(10_000);
        assert_eq!(
            parse_range("-2h..-1h", now),
            Ok((
                Timestamp::from_secs(10_000 - 7200),
                Timestamp::from_secs(10_000 - 3600)
            ))
        );
        assert!(parse_range("-1h..-2h", now).is_err());
        assert!(parse_range("-1h", now).is_err());
    }
}
