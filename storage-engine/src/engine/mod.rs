//! The engine: ties the series index, WAL, memtable, segments and manifest
//! together. One `Engine` per data directory (enforced by `DirLock`).
//!
//! - `recovery`: opening a directory, back to its last durable state;
//! - `write`: the write path and group commit;
//! - `upkeep`: flush, compaction, retention and snapshots;
//! - `forget`: forgetting the series retention left without points;
//! - `read`: queries; `export`: JSON Lines export and import;
//! - `segments`: the manifest's segments with their open files.

mod export;
mod forget;
mod id_set;
mod merged;
mod read;
mod recovery;
mod segments;
mod upkeep;
mod write;

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::counters::{Activity, Counters};
use crate::error::{IoContext, Result};
use crate::lock::DirLock;
use crate::memtable::Memtable;
use crate::model::SeriesId;
use crate::series::SeriesIndex;
use crate::wal::{SyncPolicy, Wal};
use segments::SegmentSet;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub sync: SyncPolicy,
    /// Points held in memory before a flush to segments.
    pub memtable_points: usize,
    /// Drop partitions older than this (nanoseconds), if set.
    pub retention: Option<i64>,
    /// Hour partitions the database may hold: a write that would make more
    /// is refused. Each partition is a segment file, and each segment is a
    /// memory map: see `MAPS_PER_PARTITION`.
    pub max_partitions: usize,
    /// Series the database may hold: a write that would make more is
    /// refused. Every series is held in memory while the database is open.
    pub max_series: usize,
    /// Refuse points timestamped more than this (nanoseconds) after the
    /// write, if set: with `retention`, it bounds the hours a database can
    /// be made to hold, which points far in the future otherwise fill for
    /// good (retention drops only past hours).
    pub max_future: Option<i64>,
}

/// Memory maps the segments may need per partition allowed: a flush
/// leaves at most two segments per partition allowed (one that would leave
/// more has a compaction make room, or merges), and a compaction maps its
/// merges beside the segments they replace until those are retired.
/// Segments under a page are read, not mapped. Not counted: segments that
/// slow readers still hold, and those a snapshot's merge retires while a
/// compaction is merging them.
pub const MAPS_PER_PARTITION: usize = 3;

/// The default `max_partitions`: 20,000 hours, over two years, within the
/// 65,530 memory maps Linux allows a process by default.
pub const DEFAULT_MAX_PARTITIONS: usize = 20_000;

/// The default `max_series`, InfluxDB's own default.
pub const DEFAULT_MAX_SERIES: usize = 1_000_000;

impl Default for Options {
    fn default() -> Self {
        Options {
            sync: SyncPolicy::default(),
            memtable_points: 1_000_000,
            retention: None,
            max_partitions: DEFAULT_MAX_PARTITIONS,
            max_series: DEFAULT_MAX_SERIES,
            max_future: None,
        }
    }
}

struct State {
    series: SeriesIndex,
    memtable: Memtable,
    wal: Wal,
    wal_file: Arc<File>,
    segments: SegmentSet,
    /// Batches appended, and batches known durable.
    appended: u64,
    synced: u64,
    /// Raw line-protocol series+field → id, so repeated lines allocate nothing.
    line_cache: HashMap<Box<[u8]>, SeriesId>,
    /// Why writes are refused until the database is reopened: an fsync of
    /// the WAL failed, and the kernel may have dropped the pages it could
    /// not write, so nothing written since the last good sync can be
    /// acknowledged by a later sync that succeeds.
    broken: Option<String>,
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

#[derive(Debug, Clone, Copy, Default)]
pub struct CompactStats {
    /// Partitions whose sources (segments, and the memtable's points in
    /// them) were merged into one segment.
    pub partitions: u64,
    /// Segments those merges replaced (the memtable is not one).
    pub segments_merged: u64,
}

/// What a pass of retention dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Hour partitions past the retention period, dropped whole.
    pub partitions: u64,
    /// Series that no point was left of, forgotten.
    pub series: u64,
}

pub struct Engine {
    dir: PathBuf,
    options: Options,
    state: Arc<Mutex<State>>,
    /// Serializes fsyncs so that one covers every batch appended before it.
    sync_gate: Mutex<()>,
    /// Held by a compaction from start to end: one at a time, and a flush
    /// that finds no room waits for the one running to make it.
    compacting: Mutex<()>,
    stop: Arc<AtomicBool>,
    syncer: Option<std::thread::JoinHandle<()>>,
    counters: Arc<Counters>,
    _lock: DirLock,
}

impl State {
    /// The hour partitions held, in the segments or the memtable.
    fn hours_held(&self) -> usize {
        let in_memory_only = self.memtable.hours().iter();
        self.segments.hours()
            + in_memory_only
                .filter(|&&h| !self.segments.holds_hour(h))
                .count()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic mid-update leaves the memtable possibly partial, but every
    // acknowledged write is in the WAL, which is what reopening trusts. A
    // write that panicked part-way may have left series resolved and never
    // written: they go, as those of a write that fails do, before anything
    // (the next batch, the forgetting of series) can take them for written.
    state.lock().unwrap_or_else(|poisoned| {
        let mut st = poisoned.into_inner();
        write::abandon_unwritten(&mut st);
        state.clear_poison();
        st
    })
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
        let state = recovery::recover(dir)?;
        let (hours, series) = (state.hours_held(), state.series.len());
        if hours > options.max_partitions || series > options.max_series {
            log::warn!(
                "{} holds {hours} hour partitions and {series} series, past its limits \
                 ({} and {}): writes to new hours or series are refused until they are \
                 raised (--max-partitions, --max-series)",
                dir.display(),
                options.max_partitions,
                options.max_series
            );
        }
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let syncer = match options.sync {
            SyncPolicy::IntervalMs(ms) => Some(write::spawn_syncer(
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
            compacting: Mutex::new(()),
            stop,
            syncer,
            counters,
            _lock: lock_guard,
        };
        if let Some(keep) = engine.options.retention {
            engine.drop_expired(keep)?;
            // Whether or not hours were dropped now: series whose hours went
            // before a crash (or a failed rewrite) may still be in the log.
            engine.forget_or_warn();
        }
        Ok(engine)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings the database was opened with (its limits among them).
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// WAL syncs, flushes and compactions since the engine was opened.
    pub fn activity(&self) -> Activity {
        self.counters.read()
    }

    pub fn stats(&self) -> Result<Stats> {
        // Listed before the lock is taken: on a slow directory (a mount over
        // the network, a large one) writers must not wait for the listing.
        let bytes_on_disk = std::fs::read_dir(&self.dir)
            .context(|| format!("listing {}", self.dir.display()))?
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        let st = lock(&self.state);
        let entries = || st.segments.iter().map(|l| &l.entry);
        let segment_points: u64 = entries().map(|e| e.points).sum();
        let points = segment_points + st.memtable.len() as u64;
        let partitions: BTreeSet<i64> = entries().map(|e| e.partition).collect();
        Ok(Stats {
            series: st.series.len() as u64,
            metrics: st.series.metrics().count() as u64,
            points,
            points_in_memory: st.memtable.len() as u64,
            segments: st.segments.len() as u64,
            partitions: partitions.len() as u64,
            bytes_on_disk,
            bytes_per_point: if points > 0 {
                bytes_on_disk as f64 / points as f64
            } else {
                0.0
            },
            min_time: entries().map(|e| e.min_ts).min(),
            max_time: entries().map(|e| e.max_ts).max(),
        })
    }

    /// Authenticates every segment block's checksum; returns points checked.
    pub fn verify(&self) -> Result<u64> {
        let segments: Vec<_> = lock(&self.state)
            .segments
            .iter()
            .map(|l| Arc::clone(&l.segment))
            .collect();
        let mut total = 0;
        for s in segments {
            total += s.verify()?;
        }
        Ok(total)
    }

    /// Flushes what is in memory and syncs everything; the directory is
    /// left with no WAL to replay.
    pub fn close(mut self) -> Result<()> {
        self.shutdown();
        self.flush()?;
        self.sync()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
        if self.options.sync != SyncPolicy::Never {
            if let Err(e) = self.sync() {
                log::error!("syncing {} on close: {e}", self.dir.display());
            }
        }
    }
}
