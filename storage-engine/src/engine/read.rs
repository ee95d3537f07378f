//! Queries: the matching series are chosen and their memtable points
//! copied under the lock; segments are decoded after it is released.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{lock, Engine};
use crate::error::Result;
use crate::memtable::sort_last_wins;
use crate::model::{SeriesId, SeriesKey};
use crate::query::{self, GroupWindows, Query, QueryResult, WindowValue, Windows};
use crate::segment::Segment;

/// Points of one series: (timestamp, value), sorted.
pub(super) type SeriesPoints = Vec<(i64, f64)>;
/// A matched series: id, key, and its points in the memtable.
type Matched = (SeriesId, SeriesKey, SeriesPoints);

impl Engine {
    /// Runs a query over the segments and the memtable.
    pub fn query(&self, q: &Query) -> Result<QueryResult> {
        let answer = self.query_at_most(q, u64::MAX)?;
        Ok(answer.expect("an answer within u64::MAX values"))
    }

    /// Runs a query whose answer may hold at most `max` values (points, or
    /// windows when aggregated); `None` if it would hold more. A raw query
    /// stops reading once past `max`, so that a query over more points than
    /// memory holds is refused, not run.
    pub fn query_at_most(&self, q: &Query, max: u64) -> Result<Option<QueryResult>> {
        let (matched, sources) = self.select(q);
        let Some((width, agg)) = q.window else {
            let points = raw_points(q, &matched, &sources, max)?;
            return Ok(points.map(QueryResult::Raw));
        };
        let mut groups: BTreeMap<Option<String>, Windows> = BTreeMap::new();
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        for (id, key, memory) in &matched {
            ts.clear();
            vals.clear();
            read_columns(&sources, memory, *id, q.start, q.end, &mut ts, &mut vals)?;
            if ts.is_empty() {
                // No points here: the series adds no group of its own.
                continue;
            }
            let group = q
                .group_by
                .as_ref()
                .map(|tag| key.tag(tag).unwrap_or("").to_string());
            groups.entry(group).or_default().add_all(width, &ts, &vals);
        }
        let result = groups
            .into_iter()
            .map(|(group, w)| GroupWindows {
                group,
                windows: w
                    .by_start
                    .iter()
                    .map(|(&start, acc)| WindowValue {
                        start,
                        value: acc.result(agg),
                        count: acc.count,
                    })
                    .collect(),
            })
            .collect();
        let answer = QueryResult::Aggregated(result);
        Ok((answer.answer_size() <= max).then_some(answer))
    }

    /// Under the lock: the matching series (in series order) with their
    /// memtable points, and the segments overlapping the time range.
    fn select(&self, q: &Query) -> (Vec<Matched>, Vec<Arc<Segment>>) {
        let st = lock(&self.state);
        let mut matched: Vec<Matched> = st
            .series
            .of_metric(&q.metric)
            .iter()
            .filter_map(|&id| st.series.key(id).map(|k| (id, k)))
            .filter(|(_, k)| q.filters.iter().all(|f| f.matches(k)))
            .map(|(id, k)| (id, k.clone(), st.memtable.range(id, q.start, q.end)))
            .collect();
        matched.sort_by(|a, b| a.1.cmp(&b.1));
        (matched, st.segments.overlapping(q.start, q.end))
    }
}

/// The matched series' points, or `None` once they number over `max`.
fn raw_points(
    q: &Query,
    matched: &[Matched],
    sources: &[Arc<Segment>],
    max: u64,
) -> Result<Option<Vec<query::SeriesPoints>>> {
    let mut out = Vec::with_capacity(matched.len());
    let mut total = 0u64;
    for (id, key, memory) in matched {
        let points = read_merged(sources, memory, *id, q.start, q.end)?;
        total = total.saturating_add(points.len() as u64);
        if total > max {
            return Ok(None);
        }
        if !points.is_empty() {
            out.push(query::SeriesPoints {
                metric: key.metric.clone(),
                tags: key.tags.iter().cloned().collect(),
                points,
            });
        }
    }
    Ok(Some(out))
}

/// The points of `id` in [start, end) from `sources` (oldest first) and then
/// `memory` (newest), with later sources winning on equal timestamps.
pub(super) fn read_merged(
    sources: &[Arc<Segment>],
    memory: &[(i64, f64)],
    id: SeriesId,
    start: i64,
    end: i64,
) -> Result<Vec<(i64, f64)>> {
    let (mut ts, mut vals) = (Vec::new(), Vec::new());
    read_columns(sources, memory, id, start, end, &mut ts, &mut vals)?;
    Ok(ts.into_iter().zip(vals).collect())
}

fn read_columns(
    sources: &[Arc<Segment>],
    memory: &[(i64, f64)],
    id: SeriesId,
    start: i64,
    end: i64,
    ts: &mut Vec<i64>,
    vals: &mut Vec<f64>,
) -> Result<()> {
    for s in sources {
        s.read(id, start, end, ts, vals)?;
    }
    for &(t, v) in memory {
        ts.push(t);
        vals.push(v);
    }
    // Sources cover disjoint, increasing times in the common case; only
    // overlapping sources (before compaction) need the merge.
    if ts.windows(2).any(|w| w[0] >= w[1]) {
        let mut pairs: Vec<(i64, f64)> = ts.iter().copied().zip(vals.iter().copied()).collect();
        sort_last_wins(&mut pairs);
        ts.clear();
        vals.clear();
        for (t, v) in pairs {
            ts.push(t);
            vals.push(v);
        }
    }
    Ok(())
}
