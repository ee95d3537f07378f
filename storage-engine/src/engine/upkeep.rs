//! Flush, compaction, retention and snapshots: the work that turns the WAL
//! and memtable into segments and keeps the set of segments small.
//!
//! Each builds a new `SegmentSet`, writes and syncs its new files, stores
//! the manifest (atomically), and only then swaps the set in and removes
//! retired files: a crash at any point leaves the old set or the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::read::read_merged;
use super::segments::LiveSegment;
use super::{lock, now_nanos, CompactStats, Engine, State};
use crate::error::{EngineError, IoContext, Result};
use crate::manifest::SegmentEntry;
use crate::model::{partition_of, SeriesId, PARTITION_NANOS};
use crate::segment::{self, Segment};
use crate::series::SERIES_LOG;

impl Engine {
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
        for (id, points) in &data {
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
        let mut next = st.segments.clone();
        let mut written = Vec::new();
        let wal_before = st.wal.number();
        let outcome = (|| -> Result<u64> {
            for (partition, series) in &partitions {
                let file = next.new_file_name();
                written.push(file.clone());
                next.push(self.write_segment(file, *partition, series)?);
            }
            // Only once every point is in a synced segment may the WAL
            // that holds them stop being replayed.
            let next_wal = st.wal.rotate()?;
            next.wal_checkpoint = next_wal;
            next.store(&self.dir)?;
            Ok(next_wal)
        })();
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
        let next_wal = match outcome {
            Ok(n) => n,
            Err(e) => {
                // The points stay in memory (and in the WAL); the files of
                // this attempt go, so the next attempt can use their names.
                st.memtable.restore(data);
                st.segments.reserve_file_names(&next);
                self.discard(&written);
                return Err(e);
            }
        };
        st.segments = next;
        st.wal.remove_before(next_wal)?;
        self.counters.flushed();
        Ok(())
    }

    /// Writes (and syncs) one segment file and opens it.
    fn write_segment(
        &self,
        file: String,
        partition: i64,
        series: &BTreeMap<SeriesId, Vec<(i64, f64)>>,
    ) -> Result<LiveSegment> {
        let path = self.dir.join(&file);
        let (written, segment) = segment::write_open(&path, series)?;
        Ok(LiveSegment {
            entry: SegmentEntry {
                file,
                partition,
                min_ts: written.min_ts,
                max_ts: written.max_ts,
                points: written.points,
                bytes: written.bytes,
            },
            segment: Arc::new(segment),
        })
    }

    /// Merges each partition's segments into one. Crash-safe: the new
    /// segment is written and synced first, the manifest swapped atomically,
    /// and only then are the old files removed.
    pub fn compact(&self) -> Result<CompactStats> {
        let mut st = lock(&self.state);
        self.flush_locked(&mut st)?;
        let mut by_partition: BTreeMap<i64, Vec<LiveSegment>> = BTreeMap::new();
        for live in st.segments.iter() {
            by_partition
                .entry(live.entry.partition)
                .or_default()
                .push(live.clone());
        }
        let mut stats = CompactStats::default();
        let mut next = st.segments.clone();
        let mut retired: Vec<String> = Vec::new();
        let jobs: Vec<(i64, Vec<LiveSegment>, String)> = by_partition
            .into_iter()
            .filter(|(_, m)| m.len() > 1)
            .map(|(partition, members)| (partition, members, next.new_file_name()))
            .collect();
        // The names handed to the jobs are never handed out again, whatever
        // becomes of them (a failed job's file may exist).
        st.segments.reserve_file_names(&next);
        let written = in_parallel(&jobs, |(partition, members, file)| {
            let sources: Vec<Arc<Segment>> =
                members.iter().map(|l| Arc::clone(&l.segment)).collect();
            let ids: BTreeSet<SeriesId> = sources.iter().flat_map(|s| s.series()).collect();
            let mut merged = BTreeMap::new();
            for id in ids {
                merged.insert(id, read_merged(&sources, &[], id, i64::MIN, i64::MAX)?);
            }
            self.write_segment(file.clone(), *partition, &merged)
        });
        let mut done = Vec::with_capacity(jobs.len());
        let mut failure = None;
        for result in written {
            match result {
                Ok(segment) => done.push(segment),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            // Nothing names the segments the other jobs wrote.
            let orphans: Vec<String> = done.iter().map(|l| l.entry.file.clone()).collect();
            self.discard(&orphans);
            return Err(e);
        }
        for ((_, members, _), compacted) in jobs.iter().zip(done) {
            let old: Vec<&str> = members.iter().map(|l| l.entry.file.as_str()).collect();
            next.retain(|l| !old.contains(&l.entry.file.as_str()));
            next.push(compacted);
            stats.partitions += 1;
            stats.segments_merged += members.len() as u64;
            retired.extend(old.iter().map(|f| f.to_string()));
        }
        if stats.partitions == 0 {
            return Ok(stats);
        }
        next.store(&self.dir)?;
        st.segments = next;
        self.counters.compacted();
        // The manifest no longer names them and file names are never handed
        // out again: writers need not wait for the removals.
        drop(st);
        self.remove_files(&retired)?;
        Ok(stats)
    }

    /// Drops whole partitions that ended more than `keep` nanoseconds ago.
    /// Returns the partitions dropped.
    pub fn apply_retention(&self, keep: i64) -> Result<u64> {
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

    fn remove_files(&self, files: &[String]) -> Result<()> {
        for file in files {
            let path = self.dir.join(file);
            std::fs::remove_file(&path).context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
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

/// Compaction threads at most: each holds a whole partition's merged
/// points at once, so memory grows with them; two already overlap one
/// partition's round trips on a mount with another's merging.
const MAX_THREADS: usize = 2;

/// `work` applied to every job, on up to `MAX_THREADS` threads (no more
/// than the cores), results in the jobs' order. Compaction's partitions
/// are independent; on a FUSE mount each new segment waits on several
/// round trips, which another thread's merging can overlap.
fn in_parallel<J: Sync, R: Send>(jobs: &[J], work: impl Fn(&J) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_THREADS)
        .min(jobs.len());
    if threads <= 1 {
        return jobs.iter().map(work).collect();
    }
    let work = &work;
    let parts: Vec<Vec<(usize, R)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..jobs.len())
                        .step_by(threads)
                        .map(|i| (i, work(&jobs[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut all: Vec<(usize, R)> = parts.into_iter().flatten().collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::in_parallel;

    #[test]
    fn parallel_results_keep_the_jobs_order() {
        let jobs: Vec<u32> = (0..37).collect();
        assert_eq!(
            in_parallel(&jobs, |j| j * 2),
            jobs.iter().map(|j| j * 2).collect::<Vec<_>>()
        );
        assert_eq!(in_parallel(&[] as &[u32], |j| *j), Vec::<u32>::new());
    }
}
