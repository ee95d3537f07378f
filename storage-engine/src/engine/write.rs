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

/// Bytes of series and field names one write may go through (its lines'
/// series once for each of their fields): sixteen times the server's
/// default body limit.
const MAX_KEY_BYTES_PER_WRITE: usize = 256 << 20;

impl Engine {
    /// Writes points; returns once they are in the WAL (and fsynced, with
    /// `SyncPolicy::Always`). A point the engine cannot store fails the
    /// call (`BadInput`, its line the point's place in `points`, from 1),
    /// and nothing is written.
    pub fn write(&self, points: &[Point]) -> Result<()> {
        let latest = self.latest_accepted(now_nanos());
        for (i, p) in points.iter().enumerate() {
            let refused = crate::model::timestamp_refused(p.timestamp)
                .or_else(|| self.too_far_ahead(p.timestamp, latest));
            if let Some(detail) = refused {
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
            let batch: Result<Vec<(SeriesId, i64, f64)>> = points
                .iter()
                .map(|p| Ok((st.series.resolve(&p.series)?, p.timestamp, p.value)))
                .collect();
            let batch = batch.inspect_err(|_| abandon_unwritten(&mut st))?;
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
        let latest = self.latest_accepted(now);
        let (lsn, points) = {
            let mut guard = lock(&self.state);
            let st = &mut *guard;
            let mut batch = Vec::with_capacity(text.len() / 40);
            let mut key = Vec::with_capacity(128);
            let mut key_bytes = 0usize;
            let max_series = self.options.max_series;
            for (i, line) in text.split(|&b| b == b'\n').enumerate() {
                let line_no = first_line + i as u64;
                let mut refused = None;
                let parsed = lineproto::parse_line_in(line, line_no, now, precision, |f| {
                    if refused.is_some() {
                        return;
                    }
                    if let Some(detail) = self.too_far_ahead(f.timestamp, latest) {
                        refused = Some(EngineError::BadInput {
                            line: line_no,
                            detail,
                        });
                        return;
                    }
                    // Every field copies and hashes its line's series: a
                    // line of long tags and many fields would otherwise
                    // cost their product, holding the engine's lock.
                    key_bytes += f.series.len() + f.field.len();
                    if key_bytes > MAX_KEY_BYTES_PER_WRITE {
                        refused = Some(EngineError::TooLarge(format!(
                            "over {MAX_KEY_BYTES_PER_WRITE} bytes of series and field names \
                             in one request (each field counts its line's tags again): send \
                             smaller batches"
                        )));
                        return;
                    }
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
                                refused = Some(EngineError::BadInput {
                                    line: line_no,
                                    detail: "a measurement, tag or field name that is not UTF-8"
                                        .into(),
                                });
                                return;
                            }
                            let series = lineproto::series_key(f.series, f.field);
                            // Checked as each series comes, so that a
                            // request refused for its series never holds
                            // more of them than the limits allow.
                            let resolved = st
                                .series
                                .resolve(&series)
                                .and_then(|id| within_series_limit(st, max_series).map(|()| id));
                            let id = match resolved {
                                Ok(id) => id,
                                Err(e) => {
                                    refused = Some(e);
                                    return;
                                }
                            };
                            st.line_cache.insert(key.clone().into_boxed_slice(), id);
                            id
                        }
                    };
                    batch.push((id, f.timestamp, f.value));
                });
                if let Some(e) = parsed.err().or(refused) {
                    abandon_unwritten(st);
                    return Err(e);
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

    /// The latest timestamp a write at `now` may carry (`max_future`).
    fn latest_accepted(&self, now: i64) -> i64 {
        self.options
            .max_future
            .map_or(i64::MAX, |ahead| now.saturating_add(ahead))
    }

    /// Why `ts` is refused as too far in the future, if it is.
    fn too_far_ahead(&self, ts: i64, latest: i64) -> Option<String> {
        (ts > latest).then(|| {
            format!(
                "timestamp {ts} is more than --max-future ({} s) after now",
                self.options.max_future.unwrap_or(0) / 1_000_000_000
            )
        })
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

/// Refuses a batch that adds series past `limit`, or whose series' names
/// and tags would take more than `KEY_BYTES_PER_SERIES` each on average:
/// each is held in memory (its key in the index, and its raw line-protocol
/// form in the line cache) while the database is open, and one request
/// could otherwise add a million, or a few thousand of 65,535-byte tags.
fn within_series_limit(st: &State, limit: usize) -> Result<()> {
    if st.series.unwritten() == 0 {
        return Ok(());
    }
    let key_limit = limit.saturating_mul(KEY_BYTES_PER_SERIES);
    if st.series.len() > limit {
        return Err(EngineError::Limit(format!(
            "these points would make the database hold more than {limit} series, its limit \
             (each is held in memory): raise --max-series, or move a value that seldom \
             repeats (an id, a time) from a tag to a field"
        )));
    }
    if st.series.key_bytes() > key_limit {
        return Err(EngineError::Limit(format!(
            "these points would make the series' names and tags take more than {key_limit} \
             bytes ({KEY_BYTES_PER_SERIES} a series on average under --max-series {limit}; \
             they are held in memory): raise --max-series, or shorten the tags"
        )));
    }
    Ok(())
}

/// The bytes of name and tags a series may take on average: `max_series`
/// of them bound the memory the series' keys take.
const KEY_BYTES_PER_SERIES: usize = 1024;

/// Refuses a batch that would make the database hold more than `limit`
/// hour partitions (in its segments and memtable together): each is a
/// segment file and a memory map, and a request whose points lie an hour
/// apart would otherwise make as many as it has points.
fn within_partition_limit(st: &State, batch: &[(SeriesId, i64, f64)], limit: usize) -> Result<()> {
    let held = |hour: i64| st.segments.holds_hour(hour) || st.memtable.hours().contains(&hour);
    let mut new = BTreeSet::new();
    let mut last = None;
    for &(_, ts, _) in batch {
        let hour = partition_of(ts);
        if last != Some(hour) && !held(hour) {
            new.insert(hour);
        }
        last = Some(hour);
    }
    if new.is_empty() {
        // The usual case, a write to the current hours: nothing to count.
        return Ok(());
    }
    let count = st.hours_held() + new.len();
    if count <= limit {
        return Ok(());
    }
    Err(EngineError::Limit(format!(
        "these points would make the database hold {count} hour partitions, more than its \
         limit of {limit} (each is a file and a memory map): raise --max-partitions, drop \
         old hours with --retention, or write fewer distinct hours"
    )))
}

/// Drops the series a failed write resolved, so that nothing of it stays.
pub(super) fn abandon_unwritten(st: &mut State) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SeriesKey;

    // Protects: a write that panics holding the engine's lock, after
    // resolving a new series, leaves nothing of it: the next holder drops
    // the series, so no later batch, log or count takes it for written.
    #[test]
    fn a_write_that_panicked_leaves_no_series() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = crate::Options {
            sync: SyncPolicy::Never,
            ..crate::Options::default()
        };
        let e = Engine::open(dir.path(), options).expect("open");
        let state = Arc::clone(&e.state);
        let panicked = std::thread::spawn(move || {
            let mut st = lock(&state);
            st.series
                .resolve(&SeriesKey::new("half", vec![]))
                .expect("resolve");
            panic!("a write's panic, part-way");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(lock(&e.state).series.unwritten(), 0);
        let point = crate::Point {
            series: SeriesKey::new("whole", vec![]),
            timestamp: 1,
            value: 1.0,
        };
        e.write(&[point]).expect("write");
        assert_eq!(e.stats().expect("stats").series, 1);
        e.close().expect("close");
        let e = Engine::open(dir.path(), crate::Options::default()).expect("reopen");
        assert_eq!(e.stats().expect("stats").series, 1, "the log names one");
    }
}
