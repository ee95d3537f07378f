//! Flush, compaction, retention and snapshots: the work that turns the WAL
//! and memtable into segments and keeps the set of segments small.
//!
//! Each builds a new `SegmentSet`, writes and syncs its new files, stores
//! the manifest (atomically), and only then swaps the set in and removes
//! retired files: a crash at any point leaves the old set or the new one.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::merged::Merged;
use super::segments::{LiveSegment, SegmentSet};
use super::{lock, now_nanos, CompactStats, Engine, Retention, State};
use crate::error::{EngineError, IoContext, Result};
use crate::manifest::SegmentEntry;
use crate::model::{partition_of, SeriesId, PARTITION_NANOS};
use crate::segment::{self, Segment};
use crate::series::SERIES_LOG;

/// Points by hour partition, then series: what one new segment holds.
type Partitions = BTreeMap<i64, BTreeMap<SeriesId, Vec<(i64, f64)>>>;

/// The memtable's points (sorted per series) split by hour partition.
fn by_partition(data: &BTreeMap<SeriesId, Vec<(i64, f64)>>) -> Partitions {
    let mut partitions = Partitions::new();
    for (id, points) in data {
        let mut start = 0;
        while start < points.len() {
            let p = partition_of(points[start].0);
            let end = start + points[start..].partition_point(|x| partition_of(x.0) == p);
            partitions
                .entry(p)
                .or_default()
                .insert(*id, points[start..end].to_vec());
            start = end;
        }
    }
    partitions
}

/// One new segment: a partition's segments (none for a flush) and the
/// memtable's points in it, merged.
struct SegmentJob<'a> {
    partition: i64,
    members: Vec<LiveSegment>,
    fresh: Option<&'a BTreeMap<SeriesId, Vec<(i64, f64)>>>,
    file: String,
}

impl SegmentJob<'_> {
    /// Whether the job merges two sources or more (a partition with only
    /// the memtable's points is merely written out).
    fn merges(&self) -> bool {
        self.members.len() + usize::from(self.fresh.is_some()) > 1
    }

    /// The job's points, its segments' and the memtable's (which win),
    /// encoded as a segment.
    fn encode(&self) -> Result<segment::Encoded> {
        let no_points = BTreeMap::new();
        let fresh = self.fresh.unwrap_or(&no_points);
        if self.members.is_empty() {
            // A flush's job: the memtable's points are sorted already.
            return segment::encode(fresh);
        }
        let sources: Vec<Arc<Segment>> = self
            .members
            .iter()
            .map(|l| Arc::clone(&l.segment))
            .collect();
        let ids: BTreeSet<SeriesId> = sources
            .iter()
            .flat_map(|s| s.series())
            .chain(fresh.keys().copied())
            .collect();
        // A chunk of one series merged at a time: not even one series of
        // the hour is decoded whole, only the new segment grows whole
        // (compressed).
        let mut encoder = segment::Encoder::new()?;
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        for id in ids {
            let memory = fresh.get(&id).map_or(&[][..], Vec::as_slice);
            let mut merged = Merged::new(&sources, memory, id, i64::MIN, i64::MAX);
            while merged.next_chunk(&mut ts, &mut vals)? {
                encoder.add_columns(id, &ts, &vals)?;
            }
        }
        encoder.finish()
    }
}

impl Engine {
    /// Writes the memtable out as segments and moves the WAL checkpoint.
    pub fn flush(&self) -> Result<()> {
        if self.no_room() {
            // A compaction makes room without holding the engine's lock;
            // merging the memtable's hours under it (`flush_locked`) would
            // have to be done again at every flush until one ran. Writers
            // that find no room at once wait for one compaction, not one
            // each; and a compaction that fails leaves the flush to that
            // merge rather than failing writes whose points are in the WAL.
            let _one_at_a_time = self.compacting.lock().unwrap_or_else(|p| p.into_inner());
            if self.no_room() {
                if let Err(e) = self.compact_holding_gate(|| {}, Memtable::Leave) {
                    log::error!("compacting to make room for a flush: {e}");
                }
            }
        }
        let mut st = lock(&self.state);
        self.flush_locked(&mut st)
    }

    /// Whether flushing the memtable now would take the segments past
    /// `segment_bound`.
    fn no_room(&self) -> bool {
        self.no_room_in(&lock(&self.state))
    }

    /// `no_room`, for a caller holding the lock.
    fn no_room_in(&self, st: &State) -> bool {
        st.segments.len() + st.memtable.hours().len() > self.segment_bound()
    }

    /// How to merge the memtable's hours with their segments within
    /// `segment_bound`: those hours alone when that is enough, else every
    /// hour.
    fn memtable_merge(&self, st: &State) -> Merge {
        let hours = st.memtable.hours();
        let replaced: usize = hours.iter().map(|&h| st.segments.in_hour(h)).sum();
        match st.segments.len() + hours.len() - replaced <= self.segment_bound() {
            true => Merge::FreshOnly,
            false => Merge::Every,
        }
    }

    /// Segments the set may hold after a flush: two per partition allowed.
    fn segment_bound(&self) -> usize {
        self.options.max_partitions.saturating_mul(2)
    }

    fn flush_locked(&self, st: &mut State) -> Result<()> {
        if st.memtable.is_empty() {
            return Ok(());
        }
        if self.no_room_in(st) {
            // More than two segments a partition allows, and no
            // compaction made room (`flush` asks for one first; a snapshot
            // holds the lock, and a compaction may have failed or been
            // outrun by other writers): the memtable's hours are merged
            // with their segments instead, one segment each, so that the
            // set never grows past that and the memory maps stay within
            // `MAPS_PER_PARTITION` of the partition limit. Only those
            // hours, when that is enough.
            let which = self.memtable_merge(st);
            let mut retired = Vec::new();
            self.write_out(st, Memtable::Take, |fresh, next, written| {
                self.merge_partitions(fresh, which, next, written, &mut retired)
            })?;
            // The new manifest is in place: files left here go at the
            // next open, and the flush itself succeeded.
            if let Err(e) = self.remove_files(&retired) {
                log::warn!("{e}; the next open removes what is left");
            }
            return Ok(());
        }
        self.write_out(st, Memtable::Take, |partitions, next, written| {
            let jobs: Vec<SegmentJob> = partitions
                .iter()
                .map(|(&partition, series)| SegmentJob {
                    partition,
                    members: Vec::new(),
                    fresh: Some(series),
                    file: next.new_file_name(),
                })
                .collect();
            for stored in self.write_segments(&jobs, written) {
                next.push(stored?);
            }
            Ok(())
        })
    }

    /// Takes the memtable and lets `build` write new segments into a copy
    /// of the segment set: `build` gets the memtable's points by partition,
    /// must write every one of them, and names each file it made in
    /// `written` (a failed store removes its own). Then, if anything was
    /// written, the WAL is rotated (when the memtable held points: only
    /// once every point is in a synced segment may the WAL that holds them
    /// stop being replayed), the manifest stored and the new set swapped
    /// in. On failure (or a panic) before the new manifest is in place, the
    /// memtable gets its points back and the files written go. Once it is
    /// in place, nothing either manifest needs is removed unless it was
    /// made durable.
    fn write_out<T>(
        &self,
        st: &mut State,
        memtable: Memtable,
        build: impl FnOnce(&Partitions, &mut SegmentSet, &mut Vec<String>) -> Result<T>,
    ) -> Result<T> {
        let data = match memtable == Memtable::Leave || st.memtable.is_empty() {
            true => BTreeMap::new(),
            false => {
                st.series.persist()?;
                st.memtable.take()
            }
        };
        let partitions = by_partition(&data);
        let mut next = st.segments.clone();
        let mut written = Vec::new();
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            build(&partitions, &mut next, &mut written)
        }));
        let wal_before = st.wal.number();
        let outcome = match built {
            Ok(built) => (|| -> Result<(T, Option<u64>, Result<()>)> {
                let built = built?;
                if written.is_empty() {
                    return Ok((built, None, Ok(())));
                }
                let next_wal = match data.is_empty() {
                    true => None,
                    false => {
                        let next_wal = st.wal.rotate()?;
                        next.wal_checkpoint = next_wal;
                        Some(next_wal)
                    }
                };
                let synced = next.store_telling(&self.dir)?;
                Ok((built, next_wal, synced))
            })(),
            Err(panic) => {
                self.undo_write_out(st, data, &next, &written);
                std::panic::resume_unwind(panic);
            }
        };
        if st.wal.number() != wal_before {
            // Rotated (which synced the old file): writes now go to the new
            // file, and group commit must sync that one.
            match st.wal.handle() {
                Ok(handle) => {
                    st.wal_file = Arc::new(handle);
                    st.synced = st.appended;
                }
                Err(e) => st.broken = Some(format!("cannot sync the new WAL: {e}")),
            }
        }
        let (built, next_wal, synced) = match outcome {
            Ok(done) => done,
            Err(e) => {
                self.undo_write_out(st, data, &next, &written);
                return Err(e);
            }
        };
        if !written.is_empty() {
            st.segments = next;
        }
        if let Err(e) = synced {
            // The new manifest is in place but a crash may bring the old one
            // back: keep what the old one needs (the WAL before the new
            // checkpoint, the segments it names) and take no more writes
            // until the database is opened again.
            st.broken = Some(format!(
                "the new manifest may not survive a crash ({e}); open the database again"
            ));
            return Err(e);
        }
        if let Some(next_wal) = next_wal {
            // Older WAL files are never replayed (the manifest's checkpoint
            // is past them): one left here goes at the next flush.
            if let Err(e) = st.wal.remove_before(next_wal) {
                log::warn!("{e}; the next flush removes it");
            }
            self.counters.flushed();
        }
        Ok(built)
    }

    /// A `write_out` that failed before its manifest was in place: the
    /// points stay in memory (and in the WAL); the files of the attempt go,
    /// and their names are not handed out again.
    fn undo_write_out(
        &self,
        st: &mut State,
        data: BTreeMap<SeriesId, Vec<(i64, f64)>>,
        next: &SegmentSet,
        written: &[String],
    ) {
        st.memtable.restore(data);
        st.segments.reserve_file_names(next);
        self.discard(written);
    }

    /// Writes (and syncs) the jobs' segments and opens them, results in
    /// the jobs' order: encoded on up to `MAX_THREADS` threads and stored
    /// on one more (`pipelined`). Names the files it made in `written` (a
    /// store that fails removes the file it made itself).
    fn write_segments(
        &self,
        jobs: &[SegmentJob],
        written: &mut Vec<String>,
    ) -> Vec<Result<LiveSegment>> {
        let stored = pipelined(jobs, SegmentJob::encode, |job, encoded| {
            self.store_segment(job.file.clone(), job.partition, &encoded)
        });
        written.extend(stored.iter().flatten().map(|live| live.entry.file.clone()));
        stored
    }

    /// Stores an encoded segment as `file` (synced) and opens it.
    fn store_segment(
        &self,
        file: String,
        partition: i64,
        encoded: &segment::Encoded,
    ) -> Result<LiveSegment> {
        let segment = segment::store_open(&self.dir.join(&file), encoded)?;
        let stats = &encoded.stats;
        Ok(LiveSegment {
            entry: SegmentEntry {
                file,
                partition,
                min_ts: stats.min_ts,
                max_ts: stats.max_ts,
                points: stats.points,
                bytes: stats.bytes,
            },
            segment: Arc::new(segment),
        })
    }

    /// Merges each partition's segments, and the memtable's points in it,
    /// into one segment. The segments are merged without the engine's
    /// lock, so that writes and queries go on meanwhile; only the
    /// memtable's hours are merged under it, last. The memtable is not
    /// flushed first: its points go straight into the merged segments (a
    /// partition it alone has points in gets a segment of its own, as a
    /// flush would), so late writes cost no short-lived segments.
    /// Crash-safe: the new segments are written and synced first; the
    /// merges go in by one manifest (the WAL checkpoint unchanged), the
    /// memtable's hours by a second (the checkpoint past its points), so a
    /// crash between them leaves the merges in and the memtable's points
    /// in the WAL; old files are removed only once no manifest names them.
    pub fn compact(&self) -> Result<CompactStats> {
        self.compact_with(|| {})
    }

    /// `compact`, calling `meanwhile` once the merged segments are written
    /// and before they go in, while the engine's lock is free: tests use it
    /// to write, flush and drop hours in the middle of a compaction.
    #[doc(hidden)]
    pub fn compact_with(&self, meanwhile: impl FnOnce()) -> Result<CompactStats> {
        // One at a time: each pins the segments it merges and maps their
        // merges beside them, and flushes that find no room wait here
        // rather than retire what a compaction is reading.
        let _one_at_a_time = self.compacting.lock().unwrap_or_else(|p| p.into_inner());
        self.compact_holding_gate(meanwhile, Memtable::Take)
    }

    /// `compact_with`, for a caller that holds `compacting`; the memtable
    /// is merged in, or left to the caller's flush.
    fn compact_holding_gate(
        &self,
        meanwhile: impl FnOnce(),
        memtable: Memtable,
    ) -> Result<CompactStats> {
        // Which hours to merge, and the names of their new files: briefly
        // under the lock.
        let jobs: Vec<SegmentJob> = {
            let mut st = lock(&self.state);
            let mut members: BTreeMap<i64, Vec<LiveSegment>> = BTreeMap::new();
            for live in st.segments.iter() {
                let in_hour = members.entry(live.entry.partition).or_default();
                in_hour.push(live.clone());
            }
            // Hours the memtable has points in are merged once, with
            // them, at the end (when it is taken): not twice.
            let merged_at_the_end =
                |hour: &i64| memtable == Memtable::Take && st.memtable.hours().contains(hour);
            let mut jobs: Vec<SegmentJob> = members
                .into_iter()
                .filter(|(hour, members)| members.len() > 1 && !merged_at_the_end(hour))
                .map(|(partition, members)| SegmentJob {
                    partition,
                    members,
                    fresh: None,
                    file: String::new(),
                })
                .collect();
            for job in &mut jobs {
                job.file = st.segments.new_file_name();
            }
            jobs
        };
        // The merging itself without it: writes, flushes and queries go on
        // (segments are immutable, and the ones read here stay open).
        let mut written = Vec::new();
        let merged = self.write_segments(&jobs, &mut written);
        let merged = match merged.into_iter().collect::<Result<Vec<_>>>() {
            Ok(merged) => merged,
            Err(e) => {
                self.discard(&written);
                return Err(e);
            }
        };
        meanwhile();
        // Under the lock again: the merges whose segments are all still
        // there replace them, in a manifest of their own.
        let mut st = lock(&self.state);
        let mut retired: Vec<String> = Vec::new();
        let froms: Vec<Vec<String>> = jobs
            .iter()
            .map(|job| job.members.iter().map(|l| l.entry.file.clone()).collect())
            .collect();
        let files: Vec<String> = jobs.iter().map(|job| job.file.clone()).collect();
        // The merged segments are held by the set from here on, not by
        // the jobs: the ones they replace are unmapped once retired.
        drop(jobs);
        let mut stats = self.write_out(&mut st, Memtable::Leave, |_, next, new_files| {
            new_files.extend(written.iter().cloned());
            let used = next.replace(froms.iter().cloned().zip(merged).collect());
            let mut stats = CompactStats::default();
            for ((from, file), used) in froms.iter().zip(&files).zip(used) {
                if used {
                    stats.partitions += 1;
                    stats.segments_merged += from.len() as u64;
                    retired.extend(from.iter().cloned());
                } else {
                    // Made for segments retired meanwhile.
                    retired.push(file.clone());
                }
            }
            Ok(stats)
        })?;
        // Then the memtable's points into their hours, in another: the
        // segments retired above are out of the set by then, so the maps
        // never hold the old segments, their merges and these at once.
        let fresh = match memtable {
            Memtable::Take => {
                // Its own list: segments it would retire stay if it fails.
                let mut retired_here = Vec::new();
                // Flushes that found room while the merges ran may have
                // filled it: every hour, when the memtable's alone would
                // not keep the set within its bound.
                let which = self.memtable_merge(&st);
                let merged = self.write_out(&mut st, Memtable::Take, |fresh, next, new_files| {
                    self.merge_partitions(fresh, which, next, new_files, &mut retired_here)
                });
                if merged.is_ok() {
                    retired.extend(retired_here);
                }
                merged
            }
            Memtable::Leave => Ok(CompactStats::default()),
        };
        // The manifest no longer names them and file names are never handed
        // out again: writers need not wait for the removals. The
        // compaction is done whatever happens to them.
        drop(st);
        if let Err(e) = self.remove_files(&retired) {
            log::warn!("{e}; the next open removes what is left");
        }
        let fresh = fresh?;
        stats.partitions += fresh.partitions;
        stats.segments_merged += fresh.segments_merged;
        if stats.partitions > 0 {
            self.counters.compacted();
        }
        Ok(stats)
    }

    /// Compaction's part of `write_out`: one new segment for every
    /// partition with the memtable's points and, with `Merge::Every`, for
    /// every other partition with more than one segment; the segments it
    /// replaces are added to `retired`.
    fn merge_partitions(
        &self,
        fresh: &Partitions,
        which: Merge,
        next: &mut SegmentSet,
        written: &mut Vec<String>,
        retired: &mut Vec<String>,
    ) -> Result<CompactStats> {
        let mut members: BTreeMap<i64, Vec<LiveSegment>> = BTreeMap::new();
        for live in next.iter() {
            members
                .entry(live.entry.partition)
                .or_default()
                .push(live.clone());
        }
        let partitions: BTreeSet<i64> = members.keys().chain(fresh.keys()).copied().collect();
        let mut jobs = Vec::new();
        for partition in partitions {
            let job = SegmentJob {
                partition,
                members: members.remove(&partition).unwrap_or_default(),
                fresh: fresh.get(&partition),
                file: String::new(),
            };
            let wanted = match which {
                Merge::Every => job.merges() || job.fresh.is_some(),
                Merge::FreshOnly => job.fresh.is_some(),
            };
            if wanted {
                jobs.push(job);
            }
        }
        for job in &mut jobs {
            job.file = next.new_file_name();
        }
        let results = self.write_segments(&jobs, written);
        let mut stats = CompactStats::default();
        let mut compacted = Vec::with_capacity(jobs.len());
        for (job, result) in jobs.iter().zip(results) {
            compacted.push(result?);
            if job.merges() {
                stats.partitions += 1;
                stats.segments_merged += job.members.len() as u64;
            }
            retired.extend(job.members.iter().map(|l| l.entry.file.clone()));
        }
        // One pass over the set, not one per job: a compaction of many
        // partitions would otherwise take time in their square.
        let replaced: HashSet<&str> = retired.iter().map(String::as_str).collect();
        next.retain(|l| !replaced.contains(l.entry.file.as_str()));
        for live in compacted {
            next.push(live);
        }
        Ok(stats)
    }

    /// Drops whole partitions that ended more than `keep` nanoseconds ago,
    /// then forgets the series no point is left of.
    pub fn apply_retention(&self, keep: i64) -> Result<Retention> {
        let partitions = self.drop_expired(keep)?;
        let series = match partitions {
            0 => 0,
            _ => self.forget_or_warn(),
        };
        Ok(Retention { partitions, series })
    }

    /// `forget_unused_series`, a failure logged (the series stay, in the
    /// log and in memory, until a later pass): the hours are dropped
    /// either way.
    pub(super) fn forget_or_warn(&self) -> u64 {
        self.forget_unused_series().unwrap_or_else(|e| {
            log::warn!(
                "{e}; the series without points stay until retention next drops an hour, \
                 or the database is opened again with --retention"
            );
            0
        })
    }

    /// Drops whole partitions that ended more than `keep` nanoseconds ago.
    /// Returns the partitions dropped.
    pub(super) fn drop_expired(&self, keep: i64) -> Result<u64> {
        let cutoff = now_nanos().saturating_sub(keep);
        let expired = |e: &SegmentEntry| e.partition.saturating_add(PARTITION_NANOS) <= cutoff;
        let mut st = lock(&self.state);
        let (dropped, partitions): (Vec<String>, BTreeSet<i64>) = st
            .segments
            .iter()
            .filter(|l| expired(&l.entry))
            .map(|l| (l.entry.file.clone(), l.entry.partition))
            .unzip();
        if dropped.is_empty() {
            return Ok(0);
        }
        let mut next = st.segments.clone();
        next.retain(|l| !expired(&l.entry));
        next.store(&self.dir)?;
        st.segments = next;
        drop(st);
        self.remove_files(&dropped)?;
        Ok(partitions.len() as u64)
    }

    /// Removes the files of an attempt that failed, which no manifest
    /// names: best effort, each one tried (the next open removes what is
    /// left).
    fn discard(&self, files: &[String]) {
        for file in files {
            let _ = std::fs::remove_file(self.dir.join(file));
        }
    }

    /// Removes retired files, each one tried; the first failure is
    /// returned (what is left goes at the next open).
    fn remove_files(&self, files: &[String]) -> Result<()> {
        let mut first_failure = Ok(());
        for file in files {
            let path = self.dir.join(file);
            let removed =
                std::fs::remove_file(&path).context(|| format!("removing {}", path.display()));
            if first_failure.is_ok() {
                first_failure = removed;
            }
        }
        first_failure
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
        let mut files: Vec<String> = st.segments.iter().map(|l| l.entry.file.clone()).collect();
        files.push(SERIES_LOG.to_string());
        for file in &files {
            let (from, to) = (self.dir.join(file), dest.join(file));
            std::fs::copy(&from, &to)
                .context(|| format!("copying {} to {}", from.display(), to.display()))?;
            File::open(&to)
                .and_then(|f| f.sync_all())
                .context(|| format!("syncing {}", to.display()))?;
        }
        let mut manifest = st.segments.manifest();
        manifest.wal_checkpoint = st.wal.number();
        manifest.store(dest)
    }
}

/// Whether a `write_out` takes the memtable's points.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Memtable {
    Take,
    Leave,
}

/// The partitions a merge rewrites.
#[derive(Clone, Copy)]
enum Merge {
    /// Every partition with more than one segment or with memtable points
    /// (compaction).
    Every,
    /// Only the partitions with memtable points (a flush that would leave
    /// too many segments).
    FreshOnly,
}

/// Encoding threads at most (flush and compaction): each holds the segment
/// it makes (compressed) and, for a flush, the memtable's points of a
/// partition, so memory grows with them.
const MAX_THREADS: usize = 2;

/// `work` applied to every job on up to `MAX_THREADS` threads (this one
/// and more, no more than the cores), and `store` to each result on one
/// more thread as the results come; the stored results in the jobs' order.
/// A flush's or a compaction's partitions are independent. On a FUSE
/// mount, storing a segment waits on several round trips, whose serving
/// threads must find a free core: done on the encoding threads, with both
/// cores encoding, each segment waited about a millisecond; on a thread of
/// its own, the wait overlaps the encoding of the next partitions. At most
/// two results per encoding thread wait to be stored (one absorbed the
/// mount's slower stores less well), one more per encoding thread waits to
/// be queued, so memory stays bounded. Threads the system refuses are done
/// without: their work is done here.
fn pipelined<J: Sync, W: Send, R: Send>(
    jobs: &[J],
    work: impl Fn(&J) -> Result<W> + Sync,
    store: impl Fn(&J, W) -> Result<R> + Sync,
) -> Vec<Result<R>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_THREADS)
        .min(jobs.len());
    if threads == 0 {
        return Vec::new();
    }
    let (work, store) = (&work, &store);
    let in_order = || {
        jobs.iter()
            .map(|j| work(j).and_then(|w| store(j, w)))
            .collect()
    };
    let (sender, receiver) = std::sync::mpsc::sync_channel::<(usize, Result<W>)>(2 * threads);
    std::thread::scope(|scope| {
        let storer = std::thread::Builder::new().spawn_scoped(scope, move || {
            let mut stored: Vec<Option<Result<R>>> = (0..jobs.len()).map(|_| None).collect();
            for (i, worked) in receiver {
                stored[i] = Some(worked.and_then(|w| store(&jobs[i], w)));
            }
            stored
        });
        // Without a thread of its own (the system refused one), all of it
        // here, in turn: a flush must not fail for want of threads.
        let Ok(storer) = storer else {
            return in_order();
        };
        let share = |t: usize, sender: std::sync::mpsc::SyncSender<(usize, Result<W>)>| {
            for i in (t..jobs.len()).step_by(threads) {
                if sender.send((i, work(&jobs[i]))).is_err() {
                    break;
                }
            }
        };
        // This thread takes the first share, and any a thread could not.
        for t in 1..threads {
            let for_thread = sender.clone();
            if std::thread::Builder::new()
                .spawn_scoped(scope, move || share(t, for_thread))
                .is_err()
            {
                share(t, sender.clone());
            }
        }
        share(0, sender);
        let stored = storer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        stored
            .into_iter()
            .map(|r| r.expect("every job's result was stored"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::pipelined;
    use crate::error::{EngineError, Result};

    // Protects: every job is worked and stored once, results in the jobs'
    // order whatever order they finish in, and a failed job's error comes
    // back in its place without stopping the others.
    #[test]
    fn pipelined_results_keep_the_jobs_order() {
        let jobs: Vec<u32> = (0..37).collect();
        let work = |j: &u32| -> Result<u32> {
            std::thread::sleep(std::time::Duration::from_micros(u64::from(37 - j) * 50));
            match j {
                13 => Err(EngineError::io(
                    "job 13".to_string(),
                    std::io::Error::other("fails"),
                )),
                _ => Ok(j * 2),
            }
        };
        let results = pipelined(&jobs, work, |j, w| Ok((*j, w + 1)));
        assert_eq!(results.len(), jobs.len());
        for (j, result) in jobs.iter().zip(results) {
            match result {
                Ok((job, value)) => assert_eq!((job, value), (*j, j * 2 + 1)),
                Err(_) => assert_eq!(*j, 13),
            }
        }
        assert!(pipelined(&[] as &[u32], |j| Ok(*j), |_, w| Ok(w)).is_empty());
    }
}
