//! Queries: the matching series are chosen and their memtable points
//! copied under the lock; segments are decoded after it is released.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::merged::Merged;
use super::{lock, Engine};
use crate::error::Result;
use crate::model::{partition_of, SeriesId, SeriesKey};
use crate::query::{self, GroupWindows, Query, QueryResult, WindowValue, Windows};
use crate::segment::Segment;

/// Points of one series: (timestamp, value), sorted.
pub(super) type SeriesPoints = Vec<(i64, f64)>;
/// A matched series: id, key, and its points in the memtable.
type Matched = (SeriesId, Arc<SeriesKey>, SeriesPoints);

impl Engine {
    /// Runs a query over the segments and the memtable.
    pub fn query(&self, q: &Query) -> Result<QueryResult> {
        let answer = self.query_at_most(q, u64::MAX)?;
        Ok(answer.expect("an answer within u64::MAX values"))
    }

    /// Runs a query whose answer may hold at most `max` values (points, or
    /// windows when aggregated); `None` if it would hold more. Series are
    /// read an hour partition at a time, and reading stops once the answer
    /// is past `max`, so that a query over more points than memory holds is
    /// refused, not run.
    pub fn query_at_most(&self, q: &Query, max: u64) -> Result<Option<QueryResult>> {
        let (matched, partitions) = self.select(q);
        let hours = SeriesHours::of(&matched, &partitions);
        let Some((width, agg)) = q.window else {
            let points = raw_points(q, &matched, &hours, max)?;
            return Ok(points.map(QueryResult::Raw));
        };
        let mut groups: BTreeMap<Option<String>, Windows> = BTreeMap::new();
        // Windows finished in the groups other than the one being added to.
        let mut elsewhere = 0u64;
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        for (id, key, memory) in &matched {
            let group = q
                .group_by
                .as_ref()
                .map(|tag| key.tag(tag).unwrap_or("").to_string());
            let windows = groups.entry(group).or_default();
            elsewhere -= windows.len() as u64;
            let mut series = windows.series(width);
            let mut over = false;
            let each = |ts: &[i64], vals: &[f64]| {
                series.add(ts, vals);
                over = elsewhere + series.windows_at_least() as u64 > max;
                !over
            };
            SeriesRange::of(q, &hours, *id, memory).each_chunk(&mut ts, &mut vals, each)?;
            if over {
                return Ok(None);
            }
            series.finish();
            elsewhere += windows.len() as u64;
        }
        // A series with no points in the range adds no group of its own.
        groups.retain(|_, windows| !windows.is_empty());
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

    /// The matching series (in series order) with their memtable points,
    /// and the segments overlapping the time range by partition. The tag
    /// filters run without the engine's lock (64 regexes over a million
    /// series would hold writes for as long): the metric's series are
    /// taken under it, then filtered, then their memtable points and the
    /// segments taken under it again, together, so that a flush in
    /// between moves no point out of the query's sight.
    fn select(&self, q: &Query) -> (Vec<Matched>, Partitions) {
        let of_metric: Vec<(SeriesId, Arc<SeriesKey>)> =
            lock(&self.state).series.of_metric(&q.metric).to_vec();
        let mut chosen: Vec<(SeriesId, Arc<SeriesKey>)> = of_metric
            .into_iter()
            .filter(|(_, k)| q.filters.iter().all(|f| f.matches(k)))
            .collect();
        chosen.sort_by(|a, b| a.1.cmp(&b.1));
        let st = lock(&self.state);
        let matched: Vec<Matched> = chosen
            .into_iter()
            .map(|(id, k)| {
                let memory = st.memtable.range(id, q.start, q.end);
                (id, k, memory)
            })
            .collect();
        let mut partitions = Partitions::new();
        for (partition, segment) in st.segments.overlapping(q.start, q.end) {
            partitions.entry(partition).or_default().push(segment);
        }
        (matched, partitions)
    }
}

/// The segments a query reads, by hour partition, oldest first in each.
type Partitions = BTreeMap<i64, Vec<Arc<Segment>>>;

/// The matched series' points, or `None` once they number over `max`.
fn raw_points(
    q: &Query,
    matched: &[Matched],
    hours: &SeriesHours,
    max: u64,
) -> Result<Option<Vec<query::SeriesPoints>>> {
    let mut out = Vec::with_capacity(matched.len());
    let mut total = 0u64;
    let (mut ts, mut vals) = (Vec::new(), Vec::new());
    for (id, key, memory) in matched {
        let mut points = Vec::new();
        let each = |ts: &[i64], vals: &[f64]| {
            total = total.saturating_add(ts.len() as u64);
            if total > max {
                return false;
            }
            points.extend(ts.iter().copied().zip(vals.iter().copied()));
            true
        };
        SeriesRange::of(q, hours, *id, memory).each_chunk(&mut ts, &mut vals, each)?;
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

/// Where a query finds each matched series' points in the segments: by
/// looking the series up in every segment of the range, or, when listing
/// the series of every segment costs less (a metric of many series over
/// many hours, where each lookup would cost a search and most find
/// nothing), from that listing.
struct SeriesHours<'a> {
    partitions: &'a Partitions,
    /// The hours with segments holding each series, in time order; `None`
    /// when every series is looked up in every hour.
    listed: Option<HashMap<SeriesId, Vec<i64>>>,
}

impl<'a> SeriesHours<'a> {
    fn of(matched: &[Matched], partitions: &'a Partitions) -> Self {
        let segments = || partitions.values().flatten();
        let lookups = matched.len().saturating_mul(segments().count());
        let listing: usize = segments().map(|s| s.index().len()).sum();
        if listing >= lookups {
            return SeriesHours {
                partitions,
                listed: None,
            };
        }
        let wanted: HashSet<SeriesId> = matched.iter().map(|m| m.0).collect();
        let mut listed: HashMap<SeriesId, Vec<i64>> = HashMap::new();
        for (&hour, in_hour) in partitions {
            for id in in_hour.iter().flat_map(|s| s.series()) {
                if wanted.contains(&id) {
                    let hours = listed.entry(id).or_default();
                    if hours.last() != Some(&hour) {
                        hours.push(hour);
                    }
                }
            }
        }
        SeriesHours {
            partitions,
            listed: Some(listed),
        }
    }

    /// The hours (with their segments, oldest first) where `id` may have
    /// points, in time order.
    fn of_series(&self, id: SeriesId) -> Box<dyn Iterator<Item = (i64, &'a [Arc<Segment>])> + '_> {
        let partitions = self.partitions;
        match &self.listed {
            None => Box::new(partitions.iter().map(|(&h, s)| (h, s.as_slice()))),
            Some(listed) => Box::new(
                listed
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .map(move |h| (*h, partitions[h].as_slice())),
            ),
        }
    }
}

/// One matched series over a query's time range: where its points are.
struct SeriesRange<'a> {
    hours: &'a SeriesHours<'a>,
    /// The series' memtable points in the range, sorted.
    memory: &'a [(i64, f64)],
    id: SeriesId,
    start: i64,
    end: i64,
}

impl<'a> SeriesRange<'a> {
    /// Series `id` over `q`'s time range, its memtable points `memory`.
    fn of(q: &Query, hours: &'a SeriesHours, id: SeriesId, memory: &'a [(i64, f64)]) -> Self {
        SeriesRange {
            hours,
            memory,
            id,
            start: q.start,
            end: q.end,
        }
    }

    /// Hands `each` the series' points in time order, merged (`Merged`)
    /// an hour partition at a time and in chunks of at most `CHUNK_POINTS`
    /// within it, until it returns false: a query holds a chunk of one
    /// series at a time, not the series or an hour of it, however long.
    /// `ts` and `vals` are scratch.
    fn each_chunk(
        &self,
        ts: &mut Vec<i64>,
        vals: &mut Vec<f64>,
        mut each: impl FnMut(&[i64], &[f64]) -> bool,
    ) -> Result<()> {
        let mut segments_by_hour = self.hours.of_series(self.id).peekable();
        let mut memory = self.memory;
        loop {
            // The next hour with segments or memtable points, in time order.
            let next_with_segments = segments_by_hour.peek().map(|&(hour, _)| hour);
            let next_in_memory = memory.first().map(|p| partition_of(p.0));
            let Some(hour) = next_with_segments.into_iter().chain(next_in_memory).min() else {
                break;
            };
            let segments = match next_with_segments == Some(hour) {
                true => segments_by_hour.next().map_or(&[][..], |(_, s)| s),
                false => &[],
            };
            // `partition_of` never decreases with time, so the memtable's
            // points of this hour come first in what is left of them.
            let here = memory.partition_point(|p| partition_of(p.0) <= hour);
            let (in_hour, later) = memory.split_at(here);
            memory = later;
            let mut merged = Merged::new(segments, in_hour, self.id, self.start, self.end);
            while merged.next_chunk(ts, vals)? {
                if !each(ts, vals) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::merged::CHUNK_POINTS;
    use crate::model::PARTITION_NANOS;

    /// The timestamps of each slice `each_chunk` hands over.
    fn chunks_of(range: &SeriesRange) -> Vec<Vec<i64>> {
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        let mut seen = Vec::new();
        range
            .each_chunk(&mut ts, &mut vals, |ts, _| {
                seen.push(ts.to_vec());
                true
            })
            .expect("read");
        seen
    }

    // Protects: a reader is handed one hour partition at a time, in time
    // order, an hour of many points in chunks, and reading stops when it
    // says so: what bounds a query's memory to a chunk of one series.
    #[test]
    fn each_chunk_hands_one_hour_at_a_time() {
        let hour = PARTITION_NANOS;
        let memory: Vec<(i64, f64)> = (0..30).map(|i| (i * hour / 10, i as f64)).collect();
        let none = Partitions::new();
        let hours = SeriesHours {
            partitions: &none,
            listed: None,
        };
        let range = SeriesRange {
            hours: &hours,
            memory: &memory,
            id: 0,
            start: 0,
            end: i64::MAX,
        };
        let seen = chunks_of(&range);
        assert_eq!(seen.len(), 3);
        for (i, slice) in seen.iter().enumerate() {
            assert_eq!(slice.len(), 10);
            assert!(slice.iter().all(|&t| partition_of(t) == i as i64 * hour));
        }
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        let mut calls = 0;
        range
            .each_chunk(&mut ts, &mut vals, |_, _| {
                calls += 1;
                false
            })
            .expect("read");
        assert_eq!(calls, 1);

        let many: Vec<(i64, f64)> = (0..10_000).map(|i| (i, i as f64)).collect();
        let range = SeriesRange {
            memory: &many,
            ..range
        };
        let lengths: Vec<usize> = chunks_of(&range).iter().map(Vec::len).collect();
        assert_eq!(
            lengths,
            [CHUNK_POINTS, CHUNK_POINTS, 10_000 - 2 * CHUNK_POINTS]
        );
    }
}
