//! The engine: ties the series index, WAL, memtable, segments and manifest
//! together. One `Engine` per data directory (enforced by `DirLock`).
//!
//! Write path: resolve series → append to the series log (new series only)
//! → append one framed batch to the WAL → insert into the memtable. With
//! `SyncPolicy::Always` the write returns after an fsync shared with every
//! writer that appended before it (group commit).
//!
//! Flush: the memtable becomes one segment per hour partition; then the WAL
//! rotates and a new manifest names the segments and the new WAL
//! checkpoint. Files the manifest does not name are removed on open.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::counters::{Activity, Counters};
use crate::error::{EngineError, IoContext, Result};
use crate::lineproto::{self, Precision};
use crate::lock::DirLock;
use crate::manifest::{segment_name, Manifest, SegmentEntry};
use crate::memtable::{sort_last_wins, Memtable};
use crate::model::{partition_of, Point, SeriesId, SeriesKey, PARTITION_NANOS};
use crate::query::{self, GroupWindows, Query, QueryResult, WindowValue, Windows};
use crate::segment::{self, Segment};
use crate::series::{SeriesIndex, SERIES_LOG};
use crate::wal::{self, SyncPolicy, Wal};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub sync: SyncPolicy,
    /// Points held in memory before a flush to segments.
    pub memtable_points: usize,
    /// Drop partitions older than this (nanoseconds), if set.
    pub retention: Option<i64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sync: SyncPolicy::default(),
            memtable_points: 1_000_000,
            retention: None,
        }
    }
}

struct State {
    series: SeriesIndex,
    memtable: Memtable,
    wal: Wal,
    wal_file: Arc<File>,
    manifest: Manifest,
    /// Open segments, in manifest order (oldest first).
    segments: Vec<Arc<Segment>>,
    /// Batches appended, and batches known durable.
    appended: u64,
    synced: u64,
    /// Raw line-protocol series+field → id, so repeated lines allocate nothing.
    line_cache: HashMap<Box<[u8]>, SeriesId>,
}

/// Figures for `engine info`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub series: u64,
    pub metrics: u64,
    pub points: u64,
    pub points_in_memory: u64,
    pub segments: u64,
    pub partitions: u64,
    pub bytes_on_disk: u64,
    pub bytes_per_point: f64,
    pub min_time: Option<i64>,
    pub max_time: Option<i64>,
}

pub struct Engine {
    dir: PathBuf,
    options: Options,
    state: Arc<Mutex<State>>,
    /// Serializes fsyncs so that one covers every batch appended before it.
    sync_gate: Mutex<()>,
    stop: Arc<AtomicBool>,
    syncer: Option<std::thread::JoinHandle<()>>,
    counters: Arc<Counters>,
    _lock: DirLock,
}

/// Points of one series: (timestamp, value), sorted.
type SeriesPoints = Vec<(i64, f64)>;
/// A matched series: id, key, and its points in the memtable.
type Matched = (SeriesId, SeriesKey, SeriesPoints);

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic mid-update leaves the memtable possibly partial, but every
    // acknowledged write is in the WAL, which is what reopening trusts.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Drops the series a failed write resolved, so that nothing of it stays.
fn abandon_unwritten(st: &mut State) {
    if st.series.forget_unwritten() > 0 {
        // The cache may name the forgotten ids.
        st.line_cache.clear();
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

impl Engine {
    /// Opens (creating if needed) the database in `dir`, replaying the WAL.
    pub fn open(dir: &Path, options: Options) -> Result<Engine> {
        std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
        let lock_guard = DirLock::acquire(dir)?;
        let state = Arc::new(Mutex::new(recover(dir)?));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let syncer = match options.sync {
            SyncPolicy::IntervalMs(ms) => Some(spawn_syncer(
                Arc::downgrade(&state),
                Arc::clone(&stop),
                Arc::clone(&counters),
                ms,
            )),
            _ => None,
        };
        let engine = Engine {
            dir: dir.to_path_buf(),
            options,
            state,
            sync_gate: Mutex::new(()),
            stop,
            syncer,
            counters,
            _lock: lock_guard,
        };
        if let Some(keep) = engine.options.retention {
            engine.apply_retention(keep)?;
        }
        Ok(engine)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes points; returns once they are in the WAL (and fsynced, with
    /// `SyncPolicy::Always`).
    pub fn write(&self, points: &[Point]) -> Result<()> {
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
        self.write_lines_in(text, first_line, Precision::Nanoseconds)
    }

    /// Writes line protocol whose timestamps are in `precision` units. All
    /// or nothing: a malformed line fails the call with its number and
    /// nothing of `text` is written (not even a new series).
    pub fn write_lines_in(
        &self,
        text: &[u8],
        first_line: u64,
        precision: Precision,
    ) -> Result<u64> {
        let now = now_nanos();
        let lsn = {
            let mut guard = lock(&self.state);
            let st = &mut *guard;
            let mut batch = Vec::with_capacity(text.len() / 40);
            let mut key = Vec::with_capacity(128);
            for (i, line) in text.split(|&b| b == b'\n').enumerate() {
                let mut failed = None;
                lineproto::parse_line_in(line, first_line + i as u64, now, precision, |f| {
                    key.clear();
                    key.extend_from_slice(f.series);
                    key.push(0);
                    key.extend_from_slice(f.field);
                    let id = match st.line_cache.get(key.as_slice()) {
                        Some(&id) => id,
                        None => {
                            let id = st.series.resolve(&lineproto::series_key(f.series, f.field));
                            st.line_cache.insert(key.clone().into_boxed_slice(), id);
                            id
                        }
                    };
                    batch.push((id, f.timestamp, f.value));
                })
                .map_err(|e| failed = Some(e))
                .ok();
                if let Some(e) = failed {
                    abandon_unwritten(st);
                    return Err(e);
                }
            }
            if st.line_cache.len() > 1_000_000 {
                st.line_cache.clear();
            }
            let n = batch.len() as u64;
            (self.append_locked(st, &batch)?, n)
        };
        self.after_write(lsn.0)?;
        Ok(lsn.1)
    }

    fn append_locked(&self, st: &mut State, batch: &[(SeriesId, i64, f64)]) -> Result<u64> {
        if batch.is_empty() {
            return Ok(st.appended);
        }
        // New series travel in the same WAL record as their first points.
        let new_series = st.series.take_unwritten();
        let mut framed = Vec::with_capacity(batch.len() * 20 + 16);
        wal::encode_batch(&new_series, batch, &mut framed);
        if let Err(e) = st.wal.append(&framed) {
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
        file.sync_data()
            .context(|| format!("syncing the WAL in {}", self.dir.display()))?;
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

    /// Writes the memtable out as segments and moves the WAL checkpoint.
    pub fn flush(&self) -> Result<()> {
        let mut st = lock(&self.state);
        self.flush_locked(&mut st)
    }

    fn flush_locked(&self, st: &mut State) -> Result<()> {
        if st.memtable.is_empty() {
            return Ok(());
        }
        st.series.persist()?;
        let data = st.memtable.take();
        let mut partitions: BTreeMap<i64, BTreeMap<SeriesId, Vec<(i64, f64)>>> = BTreeMap::new();
        for (id, points) in data {
            let mut start = 0;
            while start < points.len() {
                let p = partition_of(points[start].0);
                let end = start + points[start..].partition_point(|x| partition_of(x.0) == p);
                partitions
                    .entry(p)
                    .or_default()
                    .insert(id, points[start..end].to_vec());
                start = end;
            }
        }
        let mut manifest = st.manifest.clone();
        let mut opened = Vec::new();
        for (partition, series) in &partitions {
            let file = segment_name(manifest.take_file_number());
            let path = self.dir.join(&file);
            let stats = segment::write(&path, series)?;
            manifest.segments.push(SegmentEntry {
                file,
                partition: *partition,
                min_ts: stats.min_ts,
                max_ts: stats.max_ts,
                points: stats.points,
                bytes: stats.bytes,
            });
            opened.push(Arc::new(Segment::open(&path)?));
        }
        let next_wal = st.wal.rotate()?;
        st.wal_file = Arc::new(st.wal.handle()?);
        st.synced = st.appended;
        manifest.wal_checkpoint = next_wal;
        manifest.store(&self.dir)?;
        st.manifest = manifest;
        st.segments.extend(opened);
        st.wal.remove_before(next_wal)?;
        self.counters.flushed();
        Ok(())
    }

    /// Merges each partition's segments into one. Crash-safe: the new
    /// segment is written and synced first, the manifest swapped atomically,
    /// and only then are the old files removed.
    pub fn compact(&self) -> Result<CompactStats> {
        let mut st = lock(&self.state);
        self.flush_locked(&mut st)?;
        let mut by_partition: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, e) in st.manifest.segments.iter().enumerate() {
            by_partition.entry(e.partition).or_default().push(i);
        }
        let mut stats = CompactStats::default();
        let mut manifest = st.manifest.clone();
        let mut segments = st.segments.clone();
        let mut retired = Vec::new();
        for (partition, members) in by_partition.into_iter().filter(|(_, m)| m.len() > 1) {
            let sources: Vec<Arc<Segment>> = members
                .iter()
                .map(|&i| Arc::clone(&st.segments[i]))
                .collect();
            let ids: BTreeSet<SeriesId> = sources
                .iter()
                .flat_map(|s| s.series().collect::<Vec<_>>())
                .collect();
            let mut merged = BTreeMap::new();
            for id in ids {
                let points = read_merged(&sources, &[], id, i64::MIN, i64::MAX)?;
                merged.insert(id, points);
            }
            let file = segment_name(manifest.take_file_number());
            let path = self.dir.join(&file);
            let written = segment::write(&path, &merged)?;
            let entry = SegmentEntry {
                file,
                partition,
                min_ts: written.min_ts,
                max_ts: written.max_ts,
                points: written.points,
                bytes: written.bytes,
            };
            let new_segment = Arc::new(Segment::open(&path)?);
            let old_files: Vec<String> = members
                .iter()
                .map(|&i| st.manifest.segments[i].file.clone())
                .collect();
            let keep = |e: &SegmentEntry| !old_files.contains(&e.file);
            segments.retain(|s| old_files.iter().all(|f| !s.path().ends_with(f)));
            manifest.segments.retain(keep);
            manifest.segments.push(entry);
            segments.push(new_segment);
            stats.partitions += 1;
            stats.segments_merged += members.len() as u64;
            retired.extend(old_files);
        }
        if stats.partitions == 0 {
            return Ok(stats);
        }
        manifest.store(&self.dir)?;
        st.manifest = manifest;
        st.segments = segments;
        self.counters.compacted();
        for file in retired {
            let path = self.dir.join(&file);
            std::fs::remove_file(&path).context(|| format!("removing {}", path.display()))?;
        }
        Ok(stats)
    }

    /// Drops whole partitions that ended more than `keep` nanoseconds ago
    /// (and memtable points as old). Returns the partitions dropped.
    pub fn apply_retention(&self, keep: i64) -> Result<u64> {
        let cutoff = now_nanos().saturating_sub(keep);
        let mut st = lock(&self.state);
        let expired = |e: &SegmentEntry| e.partition.saturating_add(PARTITION_NANOS) <= cutoff;
        let dropped: Vec<String> = st
            .manifest
            .segments
            .iter()
            .filter(|e| expired(e))
            .map(|e| e.file.clone())
            .collect();
        if dropped.is_empty() {
            return Ok(0);
        }
        let mut manifest = st.manifest.clone();
        manifest.segments.retain(|e| !expired(e));
        manifest.store(&self.dir)?;
        let partitions: BTreeSet<i64> = st
            .manifest
            .segments
            .iter()
            .filter(|e| expired(e))
            .map(|e| e.partition)
            .collect();
        st.manifest = manifest;
        st.segments
            .retain(|s| dropped.iter().all(|f| !s.path().ends_with(f)));
        for file in &dropped {
            let path = self.dir.join(file);
            std::fs::remove_file(&path).context(|| format!("removing {}", path.display()))?;
        }
        Ok(partitions.len() as u64)
    }

    /// Runs a query over the segments and the memtable.
    pub fn query(&self, q: &Query) -> Result<QueryResult> {
        let (matched, sources) = self.select(q);
        match q.window {
            None => raw_points(q, &matched, &sources).map(QueryResult::Raw),
            Some((width, agg)) => {
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
                Ok(QueryResult::Aggregated(result))
            }
        }
    }

    /// Under the lock: the matching series (in series order) with their
    /// memtable points, and the segments overlapping the time range. The
    /// decoding happens after the lock is released.
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
        let sources = st
            .manifest
            .segments
            .iter()
            .zip(&st.segments)
            .filter(|(e, _)| e.max_ts >= q.start && e.min_ts < q.end)
            .map(|(_, s)| Arc::clone(s))
            .collect();
        (matched, sources)
    }

    /// Streams every point as JSON Lines, partition by partition, so memory
    /// stays bounded by one partition of one series. Returns points written.
    pub fn export_json(&self, out: &mut dyn Write) -> Result<u64> {
        let (keys, sources, memory_partitions) = {
            let st = lock(&self.state);
            let keys: Vec<(SeriesId, SeriesKey)> = (0..st.series.len() as SeriesId)
                .filter_map(|id| st.series.key(id).map(|k| (id, k.clone())))
                .collect();
            let mut partitions: BTreeMap<i64, Vec<(SeriesId, SeriesPoints)>> = BTreeMap::new();
            for id in st.memtable.series_ids().collect::<Vec<_>>() {
                for (ts, v) in st.memtable.range(id, i64::MIN, i64::MAX) {
                    let list = partitions.entry(partition_of(ts)).or_default();
                    match list.last_mut() {
                        Some((last, pts)) if *last == id => pts.push((ts, v)),
                        _ => list.push((id, vec![(ts, v)])),
                    }
                }
            }
            (
                keys,
                st.manifest
                    .segments
                    .iter()
                    .map(|e| e.partition)
                    .zip(st.segments.iter().cloned())
                    .collect::<Vec<_>>(),
                partitions,
            )
        };
        let mut all: BTreeSet<i64> = sources.iter().map(|(p, _)| *p).collect();
        all.extend(memory_partitions.keys());
        let mut written = 0u64;
        let mut line = Vec::with_capacity(256);
        for partition in all {
            let segs: Vec<Arc<Segment>> = sources
                .iter()
                .filter(|(p, _)| *p == partition)
                .map(|(_, s)| Arc::clone(s))
                .collect();
            let memory = memory_partitions.get(&partition);
            for (id, key) in &keys {
                let mem: &[(i64, f64)] = memory
                    .and_then(|m| m.iter().find(|(i, _)| i == id))
                    .map_or(&[], |(_, p)| p.as_slice());
                let points = read_merged(
                    &segs,
                    mem,
                    *id,
                    partition,
                    partition.saturating_add(PARTITION_NANOS),
                )?;
                for (ts, v) in points {
                    line.clear();
                    crate::jsonl::encode_point(key, ts, v, &mut line);
                    out.write_all(&line)
                        .context(|| "writing the export".to_string())?;
                    written += 1;
                }
            }
        }
        out.flush().context(|| "writing the export".to_string())?;
        Ok(written)
    }

    /// Reads JSON Lines (as `export_json` writes them) in batches.
    pub fn import_json(&self, input: &mut dyn BufRead) -> Result<u64> {
        let mut batch = Vec::with_capacity(10_000);
        let mut total = 0u64;
        let mut line = String::new();
        let mut line_no = 0u64;
        loop {
            line.clear();
            let n = input
                .read_line(&mut line)
                .context(|| "reading the import".to_string())?;
            if n == 0 {
                break;
            }
            line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            batch.push(crate::jsonl::decode_point(&line, line_no)?);
            if batch.len() == batch.capacity() {
                self.write(&batch)?;
                total += batch.len() as u64;
                batch.clear();
            }
        }
        self.write(&batch)?;
        total += batch.len() as u64;
        Ok(total)
    }

    /// A consistent copy in `dest` that opens as a database.
    pub fn snapshot(&self, dest: &Path) -> Result<()> {
        let mut st = lock(&self.state);
        self.flush_locked(&mut st)?;
        st.series.persist()?;
        if dest.exists()
            && std::fs::read_dir(dest)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            return Err(EngineError::io(
                format!("snapshot destination {}", dest.display()),
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not empty"),
            ));
        }
        std::fs::create_dir_all(dest).context(|| format!("creating {}", dest.display()))?;
        let mut files: Vec<String> = st
            .manifest
            .segments
            .iter()
            .map(|e| e.file.clone())
            .collect();
        files.push(SERIES_LOG.to_string());
        for file in &files {
            let (from, to) = (self.dir.join(file), dest.join(file));
            std::fs::copy(&from, &to)
                .context(|| format!("copying {} to {}", from.display(), to.display()))?;
            File::open(&to)
                .and_then(|f| f.sync_all())
                .context(|| format!("syncing {}", to.display()))?;
        }
        let mut manifest = st.manifest.clone();
        manifest.wal_checkpoint = st.wal.number();
        manifest.store(dest)
    }

    /// WAL syncs, flushes and compactions since the engine was opened.
    pub fn activity(&self) -> Activity {
        self.counters.read()
    }

    pub fn stats(&self) -> Result<Stats> {
        let st = lock(&self.state);
        let bytes_on_disk = std::fs::read_dir(&self.dir)
            .context(|| format!("listing {}", self.dir.display()))?
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        let segment_points: u64 = st.manifest.segments.iter().map(|e| e.points).sum();
        let points = segment_points + st.memtable.len() as u64;
        let partitions: BTreeSet<i64> = st.manifest.segments.iter().map(|e| e.partition).collect();
        Ok(Stats {
            series: st.series.len() as u64,
            metrics: st.series.metrics().count() as u64,
            points,
            points_in_memory: st.memtable.len() as u64,
            segments: st.manifest.segments.len() as u64,
            partitions: partitions.len() as u64,
            bytes_on_disk,
            bytes_per_point: if points > 0 {
                bytes_on_disk as f64 / points as f64
            } else {
                0.0
            },
            min_time: st.manifest.segments.iter().map(|e| e.min_ts).min(),
            max_time: st.manifest.segments.iter().map(|e| e.max_ts).max(),
        })
    }

    /// Authenticates every segment block's checksum; returns points checked.
    pub fn verify(&self) -> Result<u64> {
        let segments = lock(&self.state).segments.clone();
        let mut total = 0;
        for s in segments {
            total += s.verify()?;
        }
        Ok(total)
    }

    /// Flushes what is in memory and syncs everything; the directory is
    /// left with no WAL to replay.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()?;
        self.flush()?;
        self.sync()
    }

    fn shutdown(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.shutdown();
        if self.options.sync != SyncPolicy::Never {
            if let Err(e) = self.sync() {
                log::error!("syncing {} on close: {e}", self.dir.display());
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct CompactStats {
    pub partitions: u64,
    pub segments_merged: u64,
}

fn raw_points(
    q: &Query,
    matched: &[Matched],
    sources: &[Arc<Segment>],
) -> Result<Vec<query::SeriesPoints>> {
    let mut out = Vec::with_capacity(matched.len());
    for (id, key, memory) in matched {
        let points = read_merged(sources, memory, *id, q.start, q.end)?;
        if !points.is_empty() {
            out.push(query::SeriesPoints {
                metric: key.metric.clone(),
                tags: key.tags.iter().cloned().collect(),
                points,
            });
        }
    }
    Ok(out)
}

/// The points of `id` in [start, end) from `sources` (oldest first) and then
/// `memory` (newest), with later sources winning on equal timestamps.
fn read_merged(
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

/// Brings a data directory back to its last durable state: the manifest's
/// segments, the series log, and the WAL since the checkpoint replayed into
/// the memtable.
fn recover(dir: &Path) -> Result<State> {
    let manifest = match Manifest::load(dir)? {
        Some(m) => m,
        None => {
            let m = Manifest::default();
            m.store(dir)?;
            m
        }
    };
    remove_orphans(dir, &manifest)?;
    let segments = manifest
        .segments
        .iter()
        .map(|e| Segment::open(&dir.join(&e.file)).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    let mut series = SeriesIndex::open(dir)?;
    let replay = Wal::open(dir, manifest.wal_checkpoint)?;
    if replay.torn_bytes > 0 {
        log::warn!(
            "{}: dropped a torn WAL tail of {} bytes",
            dir.display(),
            replay.torn_bytes
        );
    }
    let mut memtable = Memtable::default();
    for (path, batch) in &replay.batches {
        for def in &batch.new_series {
            series.define(def, path)?;
        }
        for &(id, ts, v) in &batch.points {
            if id as usize >= series.len() {
                return Err(EngineError::corrupt(
                    path,
                    format!("unknown series id {id}"),
                ));
            }
            memtable.insert(id, ts, v);
        }
    }
    Ok(State {
        series,
        memtable,
        wal_file: Arc::new(replay.wal.handle()?),
        wal: replay.wal,
        manifest,
        segments,
        appended: 0,
        synced: 0,
        line_cache: HashMap::new(),
    })
}

/// Removes files a crash left behind: segments the manifest does not name,
/// and a half-written manifest.
fn remove_orphans(dir: &Path, manifest: &Manifest) -> Result<()> {
    let named: BTreeSet<&str> = manifest.segments.iter().map(|e| e.file.as_str()).collect();
    for entry in std::fs::read_dir(dir)
        .context(|| format!("listing {}", dir.display()))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let orphan =
            (name.starts_with("seg-") && name.ends_with(".seg") && !named.contains(name.as_str()))
                || name == "MANIFEST.tmp";
        if orphan {
            log::info!("removing {name}, left by an interrupted flush or compaction");
            let path = entry.path();
            std::fs::remove_file(&path).context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

fn spawn_syncer(
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
                    Err(e) => log::error!("periodic WAL sync: {e}"),
                }
            }
        }
    })
}
