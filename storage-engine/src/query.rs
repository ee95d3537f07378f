//! Queries: which series (metric and tag filters), which time range, and
//! raw points or windowed aggregates, optionally grouped by a tag.

use std::collections::BTreeMap;

use regex::{Regex, RegexBuilder};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::model::SeriesKey;

/// Bytes a tag filter's regex may compile to (and its lazy DFA use): a
/// tenth of the regex crate's default, plenty for the patterns tags need.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone)]
pub enum TagFilter {
    Equals(String, String),
    NotEquals(String, String),
    Matches(String, Regex),
}

impl TagFilter {
    /// `KEY=VALUE`, or `KEY!=VALUE` for "not equals".
    pub fn parse(text: &str) -> Result<TagFilter> {
        if let Some((k, v)) = text.split_once("!=") {
            return Ok(TagFilter::NotEquals(k.to_string(), v.to_string()));
        }
        let (k, v) = text.split_once('=').ok_or_else(|| {
            EngineError::BadQuery(format!("tag filter {text:?} is not KEY=VALUE"))
        })?;
        Ok(TagFilter::Equals(k.to_string(), v.to_string()))
    }

    /// `KEY=REGEX`; the expression must match the whole tag value.
    pub fn parse_regex(text: &str) -> Result<TagFilter> {
        let (k, re) = text
            .split_once('=')
            .ok_or_else(|| EngineError::BadQuery(format!("tag regex {text:?} is not KEY=REGEX")))?;
        // Bounded: an expression like `\w{1000}` compiles to megabytes
        // and takes the CPU for as long.
        let re = RegexBuilder::new(&format!("^(?:{re})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| EngineError::BadQuery(format!("bad regex for tag {k}: {e}")))?;
        Ok(TagFilter::Matches(k.to_string(), re))
    }

    pub fn matches(&self, key: &SeriesKey) -> bool {
        match self {
            TagFilter::Equals(k, v) => key.tag(k) == Some(v.as_str()),
            TagFilter::NotEquals(k, v) => key.tag(k) != Some(v.as_str()),
            TagFilter::Matches(k, re) => key.tag(k).is_some_and(|v| re.is_match(v)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Count,
    Sum,
    Mean,
    Min,
    Max,
    First,
    Last,
    Stddev,
}

impl Aggregate {
    pub fn parse(name: &str) -> Result<Aggregate> {
        Ok(match name {
            "count" => Aggregate::Count,
            "sum" => Aggregate::Sum,
            "mean" | "avg" => Aggregate::Mean,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "first" => Aggregate::First,
            "last" => Aggregate::Last,
            "stddev" => Aggregate::Stddev,
            other => {
                return Err(EngineError::BadQuery(format!(
                    "unknown aggregate {other:?} (count, sum, mean, min, max, first, last, stddev)"
                )))
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct Query {
    pub metric: String,
    pub filters: Vec<TagFilter>,
    /// Inclusive start, nanoseconds.
    pub start: i64,
    /// Exclusive end, nanoseconds.
    pub end: i64,
    /// Window length in nanoseconds and the aggregate per window.
    pub window: Option<(i64, Aggregate)>,
    pub group_by: Option<String>,
}

impl Query {
    pub fn new(metric: impl Into<String>) -> Query {
        Query {
            metric: metric.into(),
            filters: Vec::new(),
            start: i64::MIN,
            end: i64::MAX,
            window: None,
            group_by: None,
        }
    }
}

/// Running state of one window: Welford's algorithm for the deviation.
#[derive(Debug, Clone, Copy)]
pub struct Accumulator {
    pub count: u64,
    sum: f64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
    first: (i64, f64),
    last: (i64, f64),
}

impl Accumulator {
    fn new(ts: i64, v: f64) -> Self {
        Accumulator {
            count: 0,
            sum: 0.0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            first: (ts, v),
            last: (ts, v),
        }
    }

    #[inline]
    pub fn add(&mut self, ts: i64, v: f64) {
        self.count += 1;
        self.sum += v;
        let delta = v - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (v - self.mean);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if ts < self.first.0 {
            self.first = (ts, v);
        }
        if ts >= self.last.0 {
            self.last = (ts, v);
        }
    }

    pub fn result(&self, agg: Aggregate) -> f64 {
        match agg {
            Aggregate::Count => self.count as f64,
            Aggregate::Sum => self.sum,
            Aggregate::Mean => self.mean,
            Aggregate::Min => self.min,
            Aggregate::Max => self.max,
            Aggregate::First => self.first.1,
            Aggregate::Last => self.last.1,
            // Sample standard deviation; a single point has none (0).
            Aggregate::Stddev if self.count < 2 => 0.0,
            Aggregate::Stddev => (self.m2 / (self.count - 1) as f64).sqrt(),
        }
    }
}

/// Windows of one group, by window start.
#[derive(Default)]
pub struct Windows {
    pub by_start: BTreeMap<i64, Accumulator>,
}

impl Windows {
    #[inline]
    pub fn add_all(&mut self, width: i64, ts: &[i64], vals: &[f64]) {
        let mut series = self.series(width);
        series.add(ts, vals);
        series.finish();
    }

    /// One series' points, added in time order in as many slices as the
    /// reader takes (a chunk at a time).
    pub fn series(&mut self, width: i64) -> SeriesWindows<'_> {
        SeriesWindows {
            into: self,
            width,
            current: None,
        }
    }

    /// Windows held.
    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    fn merge(&mut self, start: i64, acc: Accumulator) {
        match self.by_start.get_mut(&start) {
            None => {
                self.by_start.insert(start, acc);
            }
            Some(into) => {
                // Chan et al.'s parallel combination of Welford states.
                let n = (into.count + acc.count) as f64;
                let delta = acc.mean - into.mean;
                into.m2 += acc.m2 + delta * delta * into.count as f64 * acc.count as f64 / n;
                into.mean += delta * acc.count as f64 / n;
                into.count += acc.count;
                into.sum += acc.sum;
                into.min = into.min.min(acc.min);
                into.max = into.max.max(acc.max);
                if acc.first.0 < into.first.0 {
                    into.first = acc.first;
                }
                if acc.last.0 >= into.last.0 {
                    into.last = acc.last;
                }
            }
        }
    }
}

/// One series being added to `Windows`: the window being filled carries
/// over from one slice to the next, so each window's accumulator sees its
/// points one by one, as from a single slice, whatever the slicing.
#[must_use = "the window being filled reaches `Windows` only at `finish`"]
pub struct SeriesWindows<'a> {
    into: &'a mut Windows,
    width: i64,
    current: Option<(i64, Accumulator)>,
}

impl SeriesWindows<'_> {
    /// Adds the next points of the series (after every point added so far).
    #[inline]
    pub fn add(&mut self, ts: &[i64], vals: &[f64]) {
        for (&t, &v) in ts.iter().zip(vals) {
            let start = t.div_euclid(self.width).saturating_mul(self.width);
            match &mut self.current {
                Some((s, acc)) if *s == start => acc.add(t, v),
                _ => {
                    if let Some((s, acc)) = self.current.take() {
                        self.into.merge(s, acc);
                    }
                    let mut acc = Accumulator::new(t, v);
                    acc.add(t, v);
                    self.current = Some((start, acc));
                }
            }
        }
    }

    /// Windows of the group so far, not counting the one being filled
    /// (which may be one it holds already): the group will hold at least
    /// these.
    pub fn windows_at_least(&self) -> usize {
        self.into.len()
    }

    pub fn finish(mut self) {
        if let Some((s, acc)) = self.current.take() {
            self.into.merge(s, acc);
        }
    }
}

/// Raw points of one series.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SeriesPoints {
    pub metric: String,
    pub tags: BTreeMap<String, String>,
    pub points: Vec<(i64, f64)>,
}

/// One window's result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowValue {
    pub start: i64,
    pub value: f64,
    pub count: u64,
}

/// Aggregates of one group (all matching series, or one value of the
/// group-by tag).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupWindows {
    pub group: Option<String>,
    pub windows: Vec<WindowValue>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum QueryResult {
    Raw(Vec<SeriesPoints>),
    Aggregated(Vec<GroupWindows>),
}

impl QueryResult {
    /// The stored points the answer was made from (those aggregated, for
    /// an aggregated answer).
    pub fn points(&self) -> u64 {
        match self {
            QueryResult::Raw(s) => s.iter().map(|s| s.points.len() as u64).sum(),
            QueryResult::Aggregated(g) => g.iter().flat_map(|g| &g.windows).map(|w| w.count).sum(),
        }
    }

    /// The values the answer holds: its points, or one per window.
    pub fn answer_size(&self) -> u64 {
        match self {
            QueryResult::Raw(_) => self.points(),
            QueryResult::Aggregated(g) => g.iter().map(|g| g.windows.len() as u64).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: a tag regex that compiles to megabytes (and takes the CPU
    // for as long) is refused as a bad query; ordinary patterns still work.
    #[test]
    fn huge_regexes_are_refused() {
        let refused = TagFilter::parse_regex(r"k=\w{200}").expect_err("too large");
        assert!(
            matches!(refused, EngineError::BadQuery(ref m) if m.contains("size limit")),
            "{refused}"
        );
        let key = SeriesKey::new("m", vec![("k".into(), "web-12".into())]);
        let filter = TagFilter::parse_regex(r"k=web-\d+").expect("ordinary");
        assert!(filter.matches(&key));
    }
}
