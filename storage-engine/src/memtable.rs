//! Points written since the last flush, per series, in arrival order.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{partition_of, SeriesId};

#[derive(Default)]
pub struct Memtable {
    series: BTreeMap<SeriesId, Vec<(i64, f64)>>,
    points: usize,
    /// The hour partitions the points fall in: a flush writes a segment
    /// for each.
    hours: BTreeSet<i64>,
    /// The partition of the last point inserted: points mostly come in
    /// time order, so most inserts need no lookup in `hours`.
    last_hour: Option<i64>,
}

/// Sorts by timestamp keeping, of equal timestamps, the one written last.
pub fn sort_last_wins(points: &mut Vec<(i64, f64)>) {
    // A stable sort keeps arrival order among equal timestamps.
    points.sort_by_key(|p| p.0);
    let mut out = 0;
    for i in 0..points.len() {
        if out > 0 && points[out - 1].0 == points[i].0 {
            points[out - 1] = points[i];
        } else {
            points[out] = points[i];
            out += 1;
        }
    }
    points.truncate(out);
}

impl Memtable {
    pub fn insert(&mut self, id: SeriesId, ts: i64, value: f64) {
        self.series.entry(id).or_default().push((ts, value));
        self.points += 1;
        let hour = partition_of(ts);
        if self.last_hour != Some(hour) {
            self.hours.insert(hour);
            self.last_hour = Some(hour);
        }
    }

    /// The hour partitions the points fall in.
    pub fn hours(&self) -> &BTreeSet<i64> {
        &self.hours
    }

    pub fn len(&self) -> usize {
        self.points
    }

    pub fn is_empty(&self) -> bool {
        self.points == 0
    }

    /// Everything, sorted and deduplicated per series; leaves the table empty.
    pub fn take(&mut self) -> BTreeMap<SeriesId, Vec<(i64, f64)>> {
        self.points = 0;
        self.hours.clear();
        self.last_hour = None;
        let mut all = std::mem::take(&mut self.series);
        for points in all.values_mut() {
            sort_last_wins(points);
        }
        all
    }

    /// Puts back what `take` returned, when writing it out failed (nothing
    /// was inserted since: the engine holds its lock throughout).
    pub fn restore(&mut self, data: BTreeMap<SeriesId, Vec<(i64, f64)>>) {
        for (id, points) in data {
            for &(ts, value) in &points {
                self.insert(id, ts, value);
            }
        }
    }

    /// The points of one series in [start, end), sorted, last write winning.
    pub fn range(&self, id: SeriesId, start: i64, end: i64) -> Vec<(i64, f64)> {
        let Some(points) = self.series.get(&id) else {
            return Vec::new();
        };
        let mut out: Vec<(i64, f64)> = points
            .iter()
            .copied()
            .filter(|p| p.0 >= start && p.0 < end)
            .collect();
        sort_last_wins(&mut out);
        out
    }

    pub fn series_ids(&self) -> impl Iterator<Item = SeriesId> + '_ {
        self.series.keys().copied()
    }
}
