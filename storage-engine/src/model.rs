//! The data model: a series is a metric plus sorted tags; a point is a
//! series, a timestamp in nanoseconds and a value.

use std::fmt;

/// Metric and tags. Tags are kept sorted by key, so equal series compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub metric: String,
    pub tags: Vec<(String, String)>,
}

/// The longest name, tag key or tag value, and the most tags, a series
/// record can hold (their lengths and count are stored in 16 bits).
pub const MAX_KEY_PART: usize = u16::MAX as usize;

impl SeriesKey {
    /// Whether every part fits a series record (`MAX_KEY_PART`).
    pub fn fits_record(&self) -> bool {
        self.metric.len() <= MAX_KEY_PART
            && self.tags.len() <= MAX_KEY_PART
            && self
                .tags
                .iter()
                .all(|(k, v)| k.len() <= MAX_KEY_PART && v.len() <= MAX_KEY_PART)
    }

    /// Bytes of its name and tags.
    pub fn byte_len(&self) -> usize {
        self.metric.len()
            + self
                .tags
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    pub fn new(metric: impl Into<String>, mut tags: Vec<(String, String)>) -> Self {
        tags.sort();
        tags.dedup_by(|a, b| a.0 == b.0);
        SeriesKey {
            metric: metric.into(),
            tags,
        }
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.metric)?;
        for (k, v) in &self.tags {
            write!(f, ",{k}={v}")?;
        }
        Ok(())
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub series: SeriesKey,
    pub timestamp: i64,
    pub value: f64,
}

/// Dense series identifier, assigned in order of first appearance.
pub type SeriesId = u32;

/// Nanoseconds per unit, for partitions and windows.
pub const NANOS_PER_SECOND: i64 = 1_000_000_000;
/// Partitions span one hour.
pub const PARTITION_NANOS: i64 = 3600 * NANOS_PER_SECOND;

/// The latest time a point may have. Every range the engine reads (a
/// query's, compaction's) ends before its end, at most `i64::MAX`: a point
/// at `i64::MAX` could be written and acknowledged, but never read, and
/// compaction would drop it.
pub const LATEST_TIMESTAMP: i64 = i64::MAX - 1;

/// Why a point at `ts` cannot be stored, if it cannot.
pub fn timestamp_refused(ts: i64) -> Option<String> {
    (ts > LATEST_TIMESTAMP).then(|| {
        format!("timestamp {ts} is past the latest the engine stores ({LATEST_TIMESTAMP} ns)")
    })
}

/// The partition (its start time) a timestamp falls in.
pub fn partition_of(ts: i64) -> i64 {
    // Saturating: the hour of a timestamp near i64::MIN starts before it.
    ts.div_euclid(PARTITION_NANOS)
        .saturating_mul(PARTITION_NANOS)
}
