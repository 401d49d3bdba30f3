//! Schedule windows: rate caps by time of day (for example full speed
//! 22:00-06:00, 200 Mbit/s otherwise). Pure: the time is an argument.

use crate::units::{self, Timestamp};

/// Caps in bytes per second; `None` is no cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub net: Option<u64>,
    pub disk: Option<u64>,
}

impl Limits {
    /// The tighter of two caps on each side.
    pub fn min(self, other: Limits) -> Limits {
        let tighter = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, None) => x,
            (None, y) => y,
        };
        Limits {
            net: tighter(self.net, other.net),
            disk: tighter(self.disk, other.disk),
        }
    }
}

/// A daily window `[from, to)` in minutes of the day; `to < from` wraps
/// past midnight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub from_minute: u32,
    pub to_minute: u32,
    pub limits: Limits,
}

impl Window {
    fn contains(&self, minute: u32) -> bool {
        if self.from_minute <= self.to_minute {
            (self.from_minute..self.to_minute).contains(&minute)
        } else {
            minute >= self.from_minute || minute < self.to_minute
        }
    }
}

/// The caps outside any window, the windows (first match wins), and the
/// offset of the site's clock from UTC.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schedule {
    pub default: Limits,
    pub windows: Vec<Window>,
    pub utc_offset_minutes: i32,
}

impl Schedule {
    pub fn limits_at(&self, t: Timestamp) -> Limits {
        let minute_of_day = (t.0.div_euclid(60_000_000) + i64::from(self.utc_offset_minutes))
            .rem_euclid(1440) as u32;
        self.windows
            .iter()
            .find(|w| w.contains(minute_of_day))
            .map_or(self.default, |w| w.limits)
    }
}

/// Parses `HH:MM-HH:MM` into minutes of the day.
pub fn parse_hours(s: &str) -> Result<(u32, u32), String> {
    let expected = || format!("{s:?}: expected HH:MM-HH:MM, such as 22:00-06:00");
    let (a, b) = s.split_once('-').ok_or_else(expected)?;
    let minute = |x: &str| -> Option<u32> {
        let (h, m) = x.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
    };
    let from = minute(a).ok_or_else(expected)? % 1440;
    let to = minute(b).ok_or_else(expected)?;
    if from == to || (to == 0 && from == 0) {
        return Err(format!(
            "{s:?}: an empty window; use 00:00-24:00 for all day"
        ));
    }
    // 24:00 (or 00:00 as an end) is the end of the day.
    Ok((from, if to == 0 { 1440 } else { to }))
}

/// Parses `+HH:MM` / `-HH:MM` / `Z` into minutes east of UTC.
pub fn parse_utc_offset(s: &str) -> Result<i32, String> {
    if s == "Z" || s == "UTC" {
        return Ok(0);
    }
    let expected = || format!("{s:?}: expected an offset such as +01:00, -05:00 or Z");
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(expected()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(expected)?;
    let (h, m): (i32, i32) = (
        h.parse().map_err(|_| expected())?,
        m.parse().map_err(|_| expected())?,
    );
    if h > 14 || m >= 60 {
        return Err(expected());
    }
    Ok(sign * (h * 60 + m))
}

/// A network cap: a bit rate (`200Mbit`) or `none`; bytes per second.
pub fn parse_net_cap(s: &str) -> Result<Option<u64>, String> {
    if matches!(s, "none" | "unlimited") {
        return Ok(None);
    }
    units::parse_bitrate(s)
        .map(|bits| Some((bits / 8).max(1)))
        .map_err(|e| format!("{s:?}: expected {} or \"none\"", e.expected))
}

/// A disk cap: bytes per second (`80MiB`) or `none`.
pub fn parse_disk_cap(s: &str) -> Result<Option<u64>, String> {
    if matches!(s, "none" | "unlimited") {
        return Ok(None);
    }
    let s2 = s.strip_suffix("/s").unwrap_or(s);
    units::parse_size(s2)
        .map(|b| Some(b.max(1)))
        .map_err(|e| format!("{s:?}: expected {} per second, or \"none\"", e.expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: i64, m: i64) -> Timestamp {
        // 2026-11-21 (a day boundary in UTC) plus h:m.
        Timestamp(1_763_683_200_000_000 + (h * 60 + m) * 60_000_000)
    }

    fn night_full_speed() -> Schedule {
        let (from, to) = parse_hours("22:00-06:00").unwrap();
        Schedule {
            default: Limits {
                net: Some(25_000_000),
                disk: Some(50 << 20),
            },
            windows: vec![Window {
                from_minute: from,
                to_minute: to,
                limits: Limits::default(),
            }],
            utc_offset_minutes: 0,
        }
    }

    #[test]
    fn a_window_past_midnight_covers_the_night_and_only_the_night() {
        let s = night_full_speed();
        assert_eq!(s.limits_at(at(23, 0)), Limits::default());
        assert_eq!(s.limits_at(at(2, 30)), Limits::default());
        assert_eq!(s.limits_at(at(5, 59)), Limits::default());
        assert_eq!(s.limits_at(at(6, 0)).net, Some(25_000_000));
        assert_eq!(s.limits_at(at(12, 0)).net, Some(25_000_000));
        assert_eq!(s.limits_at(at(21, 59)).disk, Some(50 << 20));
        assert_eq!(s.limits_at(at(22, 0)).disk, None);
    }

    #[test]
    fn the_site_offset_moves_the_window() {
        let s = Schedule {
            utc_offset_minutes: 60,
            ..night_full_speed()
        };
        // 21:30 UTC is 22:30 at +01:00: inside the night window.
        assert_eq!(s.limits_at(at(21, 30)), Limits::default());
        assert_eq!(s.limits_at(at(5, 30)).net, Some(25_000_000));
    }

    #[test]
    fn the_tighter_cap_wins() {
        let a = Limits {
            net: Some(10),
            disk: None,
        };
        let b = Limits {
            net: Some(20),
            disk: Some(5),
        };
        assert_eq!(
            a.min(b),
            Limits {
                net: Some(10),
                disk: Some(5)
            }
        );
    }

    #[test]
    fn bad_forms_are_named() {
        assert!(parse_hours("22-06").unwrap_err().contains("HH:MM-HH:MM"));
        assert!(parse_hours("25:00-06:00").is_err());
        assert!(parse_hours("06:00-06:00").unwrap_err().contains("empty"));
        assert_eq!(parse_hours("00:00-24:00").unwrap(), (0, 1440));
        assert!(parse_utc_offset("1:00").is_err());
        assert_eq!(parse_utc_offset("-05:30").unwrap(), -330);
        assert_eq!(parse_net_cap("200Mbit").unwrap(), Some(25_000_000));
        assert_eq!(parse_net_cap("none").unwrap(), None);
        assert!(parse_net_cap("fast").unwrap_err().contains("none"));
        assert_eq!(parse_disk_cap("80MiB/s").unwrap(), Some(80 << 20));
    }
}
