//! Times and durations as people write them: RFC 3339 or integer
//! nanoseconds; `10s`, `5m`, `1h`, `7d`.

use crate::error::{EngineError, Result};

const NS: i64 = 1_000_000_000;

/// Nanoseconds since the epoch from RFC 3339 (`2026-11-29T10:00:00Z`,
/// `...10:00:00.5+01:00`) or an integer.
pub fn parse_time(text: &str) -> Result<i64> {
    if let Ok(ns) = text.parse::<i64>() {
        return Ok(ns);
    }
    let bad = || {
        EngineError::BadQuery(format!(
            "time {text:?} is neither RFC 3339 nor integer nanoseconds"
        ))
    };
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |from: usize, to: usize| -> Result<i64> {
        text.get(from..to)
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = &text[19..];
    let mut nanos = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let mut value: i64 = frac[..digits.min(9)].parse().map_err(|_| bad())?;
        for _ in digits.min(9)..9 {
            value *= 10;
        }
        nanos = value;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        // Bytes, not a slice: byte 3 may be inside a character.
        tz if tz.len() == 6
            && (tz.starts_with('+') || tz.starts_with('-'))
            && tz.as_bytes()[3] == b':' =>
        {
            let h: i64 = tz[1..3].parse().map_err(|_| bad())?;
            let m: i64 = tz[4..6].parse().map_err(|_| bad())?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    secs.checked_mul(NS)
        .and_then(|s| s.checked_add(nanos))
        .ok_or_else(bad)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 3339 in UTC with nanoseconds, for display.
pub fn format_time(ns: i64) -> String {
    let secs = ns.div_euclid(NS);
    let nanos = ns.rem_euclid(NS);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if nanos == 0 {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{nanos:09}Z")
    }
}

/// `10s`, `5m`, `1h`, `7d` (also `ms`, `us`, `ns`, `w`) in nanoseconds.
pub fn parse_duration(text: &str) -> Result<i64> {
    let bad = || EngineError::BadQuery(format!("duration {text:?} is not like 10s, 5m, 1h or 7d"));
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let unit_ns = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => NS,
        "m" => 60 * NS,
        "h" => 3600 * NS,
        "d" => 86_400 * NS,
        "w" => 7 * 86_400 * NS,
        _ => return Err(bad()),
    };
    let total = n.checked_mul(unit_ns).ok_or_else(bad)?;
    if total <= 0 {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: RFC 3339 parsing (zones, fractions), formatting round trip.
    #[test]
    fn times() {
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").ok(),
            Some(1_700_000_000 * NS)
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20+01:00").ok(),
            Some(1_700_000_000 * NS)
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20.5Z").ok(),
            Some(1_700_000_000 * NS + 500_000_000)
        );
        assert_eq!(
            parse_time("1700000000000000000").ok(),
            Some(1_700_000_000 * NS)
        );
        assert!(parse_time("yesterday").is_err());
        // A zone whose fourth byte is inside a character (a panic before).
        assert!(parse_time("2026-01-01T00:00:00+0\u{e9}00").is_err());
        assert_eq!(format_time(1_700_000_000 * NS), "2023-11-14T22:13:20Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999999999Z");
        for t in [0i64, 1_234_567_890_123_456_789, -86_400 * NS * 365] {
            assert_eq!(parse_time(&format_time(t)).ok(), Some(t));
        }
    }

    // Protects: duration units.
    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").ok(), Some(10 * NS));
        assert_eq!(parse_duration("5m").ok(), Some(300 * NS));
        assert_eq!(parse_duration("1h").ok(), Some(3600 * NS));
        assert_eq!(parse_duration("7d").ok(), Some(7 * 86_400 * NS));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
