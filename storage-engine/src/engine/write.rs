//! The write path: resolve series → one framed batch in the WAL (carrying
//! the series it introduces) → the memtable. With `SyncPolicy::Always` a
//! write returns after an fsync shared with every writer that appended
//! before it (group commit).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{lock, now_nanos, Engine, State};
use crate::counters::Counters;
use crate::error::{EngineError, Result};
use crate::lineproto::{self, Precision};
use crate::model::{partition_of, Point, SeriesId};
use crate::wal::{self, SyncPolicy};

impl Engine {
    /// Writes points; returns once they are in the WAL (and fsynced, with
    /// `SyncPolicy::Always`). A point the engine cannot store fails the
    /// call (`BadInput`, its line the point's place in `points`, from 1),
    /// and nothing is written.
    pub fn write(&self, points: &[Point]) -> Result<()> {
        for (i, p) in points.iter().enumerate() {
            if let Some(detail) = crate::model::timestamp_refused(p.timestamp) {
                return Err(EngineError::BadInput {
                    line: i as u64 + 1,
                    detail,
                });
            }
        }
        if let Some(p) = points.iter().find(|p| !p.series.fits_record()) {
            return Err(EngineError::TooLarge(format!(
                "series {:.64}...: a name or tag over 65,535 bytes, or over 65,535 tags",
                p.series.metric
            )));
        }
        let lsn = {
            let mut st = lock(&self.state);
            let batch: Vec<(SeriesId, i64, f64)> = points
                .iter()
                .map(|p| (st.series.resolve(&p.series), p.timestamp, p.value))
                .collect();
            self.append_locked(&mut st, &batch)?
        };
        self.after_write(lsn)
    }

    /// Writes line protocol with nanosecond timestamps; returns the number
    /// of points written.
    pub fn write_lines(&self, text: &[u8], first_line: u64) -> Result<u64> {
        self.write_lines_in(text, first_line, Precision::Nanoseconds, usize::MAX)
    }

    /// Writes line protocol whose timestamps are in `precision` units. All
    /// or nothing: a malformed line fails the call with its number, and
    /// more than `max_points` points fail it with `TooLarge`; then nothing
    /// of `text` is written (not even a new series).
    pub fn write_lines_in(
        &self,
        text: &[u8],
        first_line: u64,
        precision: Precision,
        max_points: usize,
    ) -> Result<u64> {
        let now = now_nanos();
        let (lsn, points) = {
            let mut guard = lock(&self.state);
            let st = &mut *guard;
            let mut batch = Vec::with_capacity(text.len() / 40);
            let mut key = Vec::with_capacity(128);
            for (i, line) in text.split(|&b| b == b'\n').enumerate() {
                let line_no = first_line + i as u64;
                let mut not_utf8 = false;
                let parsed = lineproto::parse_line_in(line, line_no, now, precision, |f| {
                    key.clear();
                    key.extend_from_slice(f.series);
                    key.push(0);
                    key.extend_from_slice(f.field);
                    let id = match st.line_cache.get(key.as_slice()) {
                        Some(&id) => id,
                        None => {
                            // Checked once per new raw key: the cache holds
                            // only keys that passed.
                            if std::str::from_utf8(f.series).is_err()
                                || std::str::from_utf8(f.field).is_err()
                            {
                                not_utf8 = true;
                                return;
                            }
                            let id = st.series.resolve(&lineproto::series_key(f.series, f.field));
                            st.line_cache.insert(key.clone().into_boxed_slice(), id);
                            id
                        }
                    };
                    batch.push((id, f.timestamp, f.value));
                });
                if let Err(e) = parsed {
                    abandon_unwritten(st);
                    return Err(e);
                }
                if not_utf8 {
                    abandon_unwritten(st);
                    return Err(EngineError::BadInput {
                        line: line_no,
                        detail: "a measurement, tag or field name that is not UTF-8".into(),
                    });
                }
                if batch.len() > max_points {
                    abandon_unwritten(st);
                    return Err(EngineError::TooLarge(format!(
                        "more than {max_points} points in one request: send smaller batches"
                    )));
                }
            }
            if st.line_cache.len() > 1_000_000 {
                st.line_cache.clear();
            }
            (self.append_locked(st, &batch)?, batch.len() as u64)
        };
        self.after_write(lsn)?;
        Ok(points)
    }

    fn append_locked(&self, st: &mut State, batch: &[(SeriesId, i64, f64)]) -> Result<u64> {
        if let Some(why) = &st.broken {
            let e = EngineError::Broken(why.clone());
            abandon_unwritten(st);
            return Err(e);
        }
        if batch.is_empty() {
            return Ok(st.appended);
        }
        let within_limits = within_series_limit(st, self.options.max_series)
            .and_then(|()| within_partition_limit(st, batch, self.options.max_partitions));
        if let Err(e) = within_limits {
            abandon_unwritten(st);
            return Err(e);
        }
        // New series travel in the same WAL record as their first points.
        let new_series = st.series.take_unwritten();
        let mut framed = Vec::with_capacity(batch.len() * 20 + 16);
        let appended = wal::encode_batch(&new_series, batch, &mut framed)
            .and_then(|()| st.wal.append(&framed));
        if let Err(e) = appended {
            // Series are durable only inside a batch: without this, a later
            // batch would use an id that no WAL record defines.
            st.series.untake(new_series.len());
            abandon_unwritten(st);
            return Err(e);
        }
        for &(id, ts, v) in batch {
            st.memtable.insert(id, ts, v);
        }
        st.appended += 1;
        Ok(st.appended)
    }

    fn after_write(&self, lsn: u64) -> Result<()> {
        if self.options.sync == SyncPolicy::Always {
            self.sync_through(lsn)?;
        }
        let full = lock(&self.state).memtable.len() >= self.options.memtable_points;
        if full {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes every batch up to `lsn` durable. Writers that arrive while an
    /// fsync is running find their batch covered by the next one: a single
    /// fsync serves the whole group.
    fn sync_through(&self, lsn: u64) -> Result<()> {
        let _gate = self.sync_gate.lock().unwrap_or_else(|p| p.into_inner());
        let (target, file) = {
            let st = lock(&self.state);
            if st.synced >= lsn {
                return Ok(());
            }
            (st.appended, Arc::clone(&st.wal_file))
        };
        if let Err(e) = file.sync_data() {
            let e = EngineError::io(format!("syncing the WAL in {}", self.dir.display()), e);
            lock(&self.state).broken = Some(e.to_string());
            return Err(e);
        }
        self.counters.wal_synced();
        let mut st = lock(&self.state);
        st.synced = st.synced.max(target);
        Ok(())
    }

    /// fsyncs the WAL and series log now.
    pub fn sync(&self) -> Result<()> {
        let lsn = lock(&self.state).appended;
        self.sync_through(lsn)
    }
}

/// Refuses a batch that adds series past `limit`: each is held in memory
/// (its key, twice, and its place in its metric's list) while the database
/// is open, and one request could otherwise add a million.
fn within_series_limit(st: &State, limit: usize) -> Result<()> {
    if st.series.unwritten() == 0 || st.series.len() <= limit {
        return Ok(());
    }
    Err(EngineError::Limit(format!(
        "these points would make the database hold more than {limit} series, its limit \
         (each is held in memory): raise --max-series, or move a value that seldom \
         repeats (an id, a time) from a tag to a field"
    )))
}

/// Refuses a batch that would make the database hold more than `limit`
/// hour partitions (in its segments and memtable together): each is a
/// segment file and a memory map, and a request whose points lie an hour
/// apart would otherwise make as many as it has points.
fn within_partition_limit(st: &State, batch: &[(SeriesId, i64, f64)], limit: usize) -> Result<()> {
    let held = |hour: i64| st.segments.holds_hour(hour) || st.memtable.hours().contains(&hour);
    let mut count = st.segments.hours()
        + st.memtable
            .hours()
            .iter()
            .filter(|&&h| !st.segments.holds_hour(h))
            .count();
    let mut new = BTreeSet::new();
    let mut last = None;
    for &(_, ts, _) in batch {
        let hour = partition_of(ts);
        if last == Some(hour) {
            continue;
        }
        last = Some(hour);
        if !held(hour) && new.insert(hour) {
            count += 1;
            if count > limit {
                return Err(EngineError::Limit(format!(
                    "these points would make the database hold more than {limit} hour \
                     partitions, its limit (each is a file and a memory map): raise \
                     --max-partitions, drop old hours with --retention, or write fewer \
                     distinct hours"
                )));
            }
        }
    }
    Ok(())
}

/// Drops the series a failed write resolved, so that nothing of it stays.
fn abandon_unwritten(st: &mut State) {
    if st.series.forget_unwritten() > 0 {
        // The cache may name the forgotten ids.
        st.line_cache.clear();
    }
}

/// `SyncPolicy::IntervalMs`: fsyncs the WAL when a write has waited that
/// long, until `stop` (or the engine is gone).
pub(super) fn spawn_syncer(
    state: Weak<Mutex<State>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    interval_ms: u64,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let tick = Duration::from_millis(interval_ms.clamp(1, 50));
        let mut waited = 0u64;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(tick);
            waited += tick.as_millis() as u64;
            if waited < interval_ms {
                continue;
            }
            waited = 0;
            let Some(state) = state.upgrade() else { return };
            let mut st = lock(&state);
            if st.synced < st.appended {
                match st.wal.sync() {
                    Ok(()) => {
                        st.synced = st.appended;
                        counters.wal_synced();
                    }
                    Err(e) => {
                        log::error!("periodic WAL sync: {e}; writes are refused until reopened");
                        st.broken = Some(format!("a periodic WAL sync failed: {e}"));
                    }
                }
            }
        }
    })
}
