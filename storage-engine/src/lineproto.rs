//! InfluxDB line protocol: `measurement[,tag=value...] field=value[,...] [timestamp]`.
//!
//! Each numeric field (float, `i` integer, `u` unsigned) becomes a point;
//! string and boolean fields are skipped. Backslash escapes commas, spaces
//! and equals signs in names. A missing timestamp means "now". The parser
//! hands out raw byte slices so the engine can look series up without
//! allocating; `series_key` unescapes them when a series is new.

use crate::error::{EngineError, Result};
use crate::model::SeriesKey;

/// One numeric field of one line.
pub struct Field<'a> {
    /// `measurement,tags` exactly as written (escapes included).
    pub series: &'a [u8],
    /// The field key as written.
    pub field: &'a [u8],
    pub value: f64,
    pub timestamp: i64,
}

/// Index of the first unescaped `stop` byte outside double quotes.
fn find_unescaped(bytes: &[u8], stop: u8, quotes: bool) -> Option<usize> {
    let mut i = 0;
    let mut quoted = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'"' if quotes => quoted = !quoted,
            b if b == stop && !quoted => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Splits on unescaped `sep` outside quotes.
fn split_unescaped(bytes: &[u8], sep: u8, quotes: bool) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let current = rest?;
        match find_unescaped(current, sep, quotes) {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn unescape(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 1 < bytes.len()
            && matches!(bytes[i + 1], b',' | b' ' | b'=' | b'\\' | b'"')
        {
            i += 1;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_value(raw: &[u8]) -> Option<Option<f64>> {
    let text = std::str::from_utf8(raw).ok()?;
    if text.starts_with('"') {
        return Some(None); // a string field: not numeric
    }
    match text {
        "t" | "T" | "true" | "True" | "TRUE" | "f" | "F" | "false" | "False" | "FALSE" => {
            return Some(None)
        }
        _ => {}
    }
    if let Some(int) = text.strip_suffix('i') {
        return int.parse::<i64>().ok().map(|v| Some(v as f64));
    }
    if let Some(uint) = text.strip_suffix('u') {
        return uint.parse::<u64>().ok().map(|v| Some(v as f64));
    }
    // Rust reads `NaN`, `inf` and `1e999` (infinite) as floats; InfluxDB
    // refuses them, and a point that poisons every sum and mean over it
    // is better refused with its line than stored.
    text.parse::<f64>().ok().filter(|v| v.is_finite()).map(Some)
}

/// The unit of the timestamps in a request (`precision` in the InfluxDB
/// write APIs); the engine stores nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
    Minutes,
    Hours,
}

impl Precision {
    /// The names the InfluxDB 1.x (`n`, `u`, `ms`, `s`, `m`, `h`) and 2.x
    /// (`ns`, `us`, `ms`, `s`) clients send.
    pub fn parse(name: &str) -> Option<Precision> {
        Some(match name {
            "n" | "ns" => Precision::Nanoseconds,
            "u" | "us" | "\u{b5}" => Precision::Microseconds,
            "ms" => Precision::Milliseconds,
            "s" => Precision::Seconds,
            "m" => Precision::Minutes,
            "h" => Precision::Hours,
            _ => return None,
        })
    }

    pub fn nanos_per_unit(self) -> i64 {
        match self {
            Precision::Nanoseconds => 1,
            Precision::Microseconds => 1_000,
            Precision::Milliseconds => 1_000_000,
            Precision::Seconds => 1_000_000_000,
            Precision::Minutes => 60_000_000_000,
            Precision::Hours => 3_600_000_000_000,
        }
    }
}

/// Parses one line (without its newline), calling `emit` per numeric field.
/// Blank lines and `#` comments yield nothing. Timestamps are nanoseconds.
pub fn parse_line<'a>(
    line: &'a [u8],
    line_no: u64,
    now: i64,
    emit: impl FnMut(Field<'a>),
) -> Result<()> {
    parse_line_in(line, line_no, now, Precision::Nanoseconds, emit)
}

/// `parse_line` for timestamps in `precision` units; they are emitted in
/// nanoseconds (a timestamp that overflows is a malformed line).
pub fn parse_line_in<'a>(
    line: &'a [u8],
    line_no: u64,
    now: i64,
    precision: Precision,
    mut emit: impl FnMut(Field<'a>),
) -> Result<()> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let trimmed_start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(line.len());
    let line = &line[trimmed_start..];
    if line.is_empty() || line[0] == b'#' {
        return Ok(());
    }
    let bad = |detail: &str| EngineError::BadInput {
        line: line_no,
        detail: detail.to_string(),
    };
    let series_end = find_unescaped(line, b' ', false)
        .ok_or_else(|| bad("no fields (expected `measurement field=value`)"))?;
    let series = &line[..series_end];
    if series.is_empty() || series[0] == b',' {
        return Err(bad("missing measurement name"));
    }
    for tag in split_unescaped(series, b',', false).skip(1) {
        match find_unescaped(tag, b'=', false) {
            Some(at) if at > 0 && at + 1 < tag.len() => {}
            _ => return Err(bad("malformed tag (expected key=value)")),
        }
    }
    let rest = &line[series_end + 1..];
    let fields_end = find_unescaped(rest, b' ', true).unwrap_or(rest.len());
    let fields = &rest[..fields_end];
    let ts_text = rest.get(fields_end + 1..).unwrap_or(&[]);
    let ts_text = std::str::from_utf8(ts_text)
        .map_err(|_| bad("timestamp is not text"))?
        .trim();
    let timestamp = if ts_text.is_empty() {
        now
    } else {
        ts_text
            .parse::<i64>()
            .map_err(|_| bad("timestamp is not an integer"))?
            .checked_mul(precision.nanos_per_unit())
            .ok_or_else(|| bad("timestamp out of range for its precision"))?
    };
    if let Some(why) = crate::model::timestamp_refused(timestamp) {
        return Err(bad(&why));
    }
    if fields.is_empty() {
        return Err(bad("no fields"));
    }
    for field in split_unescaped(fields, b',', true) {
        let eq = find_unescaped(field, b'=', true)
            .ok_or_else(|| bad("malformed field (expected key=value)"))?;
        let (key, value) = (&field[..eq], &field[eq + 1..]);
        if key.is_empty() || value.is_empty() {
            return Err(bad("malformed field (expected key=value)"));
        }
        // The metric is `measurement_field`; tags are shorter than the
        // series text: this bounds every part of the series record.
        if series.len() + 1 + key.len() > crate::model::MAX_KEY_PART {
            return Err(bad("measurement, tags and field name over 65,535 bytes"));
        }
        match parse_value(value) {
            Some(Some(value)) => emit(Field {
                series,
                field: key,
                value,
                timestamp,
            }),
            Some(None) => {}
            None => {
                return Err(bad(&format!(
                    "field value {:?} is not a finite number",
                    String::from_utf8_lossy(value)
                )))
            }
        }
    }
    Ok(())
}

/// The series a field of a line belongs to: the metric is the measurement
/// for a field named `value`, `measurement_field` otherwise.
pub fn series_key(series: &[u8], field: &[u8]) -> SeriesKey {
    let mut parts = split_unescaped(series, b',', false);
    let measurement = unescape(parts.next().unwrap_or_default());
    let tags = parts
        .filter_map(|tag| {
            let at = find_unescaped(tag, b'=', false)?;
            Some((unescape(&tag[..at]), unescape(&tag[at + 1..])))
        })
        .collect();
    let field = unescape(field);
    let metric = if field == "value" {
        measurement
    } else {
        format!("{measurement}_{field}")
    };
    SeriesKey::new(metric, tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Vec<(SeriesKey, f64, i64)>> {
        let mut out = Vec::new();
        parse_line(line.as_bytes(), 7, 99, |f| {
            out.push((series_key(f.series, f.field), f.value, f.timestamp))
        })?;
        Ok(out)
    }

    fn key(metric: &str, tags: &[(&str, &str)]) -> SeriesKey {
        SeriesKey::new(
            metric,
            tags.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    // Protects: the common forms: value field, several fields, tags sorted.
    #[test]
    fn fields_and_tags() {
        assert_eq!(
            parse("cpu_usage,host=a value=1.5 1700000000000000000").expect("ok"),
            vec![(
                key("cpu_usage", &[("host", "a")]),
                1.5,
                1_700_000_000_000_000_000
            )]
        );
        let got =
            parse("disk,region=eu,host=b used=10i,free=2.5e3,label=\"x y\",ok=true 5").expect("ok");
        assert_eq!(
            got,
            vec![
                (
                    key("disk_used", &[("host", "b"), ("region", "eu")]),
                    10.0,
                    5
                ),
                (
                    key("disk_free", &[("host", "b"), ("region", "eu")]),
                    2500.0,
                    5
                ),
            ]
        );
    }

    // Protects: a timestamp past the latest the engine stores (i64::MAX,
    // which no range reaches) is refused with its line; the latest is not.
    #[test]
    fn the_latest_timestamp_and_one_past() {
        let latest = crate::model::LATEST_TIMESTAMP;
        assert_eq!(parse(&format!("m v=1 {latest}")).expect("ok")[0].2, latest);
        let refused = parse(&format!("m v=1 {}", i64::MAX)).expect_err("past");
        assert!(refused.to_string().contains("past the latest"), "{refused}");
    }

    // Protects: escaping in names and values; a missing timestamp is "now".
    #[test]
    fn escapes_and_missing_timestamp() {
        let got = parse(r"my\ metric,host\,x=a\ b\=c value=3").expect("ok");
        assert_eq!(
            got,
            vec![(key("my metric", &[("host,x", "a b=c")]), 3.0, 99)]
        );
        assert!(parse("").expect("blank").is_empty());
        assert!(parse("# a comment").expect("comment").is_empty());
    }

    // Protects: a precision scales timestamps to nanoseconds, leaves "now"
    // alone, and an overflowing timestamp is a malformed line, not a wrap.
    #[test]
    fn precision_scales_timestamps() {
        let ts = |line: &str, p: &str| {
            let mut got = Vec::new();
            let precision = Precision::parse(p).expect("known precision");
            parse_line_in(line.as_bytes(), 1, 99, precision, |f| got.push(f.timestamp))
                .map(|()| got)
        };
        assert_eq!(
            ts("m value=1 1700000000", "s").expect("s"),
            [1_700_000_000_000_000_000]
        );
        assert_eq!(
            ts("m value=1 1700000000000", "ms").expect("ms"),
            [1_700_000_000_000_000_000]
        );
        assert_eq!(ts("m value=1 17", "u").expect("u"), [17_000]);
        assert_eq!(ts("m value=1 2", "h").expect("h"), [7_200_000_000_000]);
        assert_eq!(ts("m value=1", "s").expect("now"), [99]);
        assert!(ts("m value=1 9223372036854775", "s").is_err());
        assert!(Precision::parse("weeks").is_none());
    }

    // Protects: malformed lines are refused with their line number.
    #[test]
    fn malformed_lines() {
        for bad in [
            "cpu",
            "cpu value",
            "cpu value=abc 1",
            "cpu,host value=1",
            "cpu value=1 notatime",
            ",host=a value=1",
            "cpu =1",
        ] {
            let err = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(err.to_string().starts_with("line 7: "), "{bad:?}: {err}");
        }
    }

    // Protects: NaN and infinities, which InfluxDB refuses and which would
    // turn every sum and mean over them into nothing, are refused with
    // their line; so is a float too large to be finite.
    #[test]
    fn values_that_are_not_finite_are_refused() {
        for bad in [
            "NaN",
            "nan",
            "inf",
            "-inf",
            "+Infinity",
            "INF",
            "1e999",
            "-1e400",
        ] {
            let err = parse(&format!("cpu value={bad} 1"))
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(
                err.to_string().contains("is not a finite number"),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(
            parse("cpu value=1.7976931348623157e308 1").expect("the largest finite")[0].1,
            f64::MAX
        );
    }
}
