//! The segments that make up the database, each as the manifest records it
//! and as an open file, in one list (oldest first) so that the two can
//! never disagree. Changed by building a new set, storing its manifest, and
//! only then swapping it in: a failure leaves the old set in force.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::manifest::{segment_name, Manifest, SegmentEntry};
use crate::segment::Segment;

#[derive(Clone)]
pub(super) struct LiveSegment {
    pub entry: SegmentEntry,
    pub segment: Arc<Segment>,
}

#[derive(Clone)]
pub(super) struct SegmentSet {
    next_file: u64,
    /// WAL files numbered below this are covered by the segments.
    pub wal_checkpoint: u64,
    live: Vec<LiveSegment>,
    /// Segments per hour partition.
    hours: BTreeMap<i64, usize>,
}

impl SegmentSet {
    /// Opens every segment the manifest names.
    pub fn open(dir: &Path, manifest: Manifest) -> Result<SegmentSet> {
        let live = manifest
            .segments
            .into_iter()
            .map(|entry| {
                let segment = Arc::new(Segment::open(&dir.join(&entry.file))?);
                Ok(LiveSegment { entry, segment })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut set = SegmentSet {
            next_file: manifest.next_file,
            wal_checkpoint: manifest.wal_checkpoint,
            live,
            hours: BTreeMap::new(),
        };
        set.count_hours();
        Ok(set)
    }

    pub fn manifest(&self) -> Manifest {
        Manifest {
            next_file: self.next_file,
            wal_checkpoint: self.wal_checkpoint,
            segments: self.live.iter().map(|l| l.entry.clone()).collect(),
            ..Manifest::default()
        }
    }

    /// Makes this set the durable one (atomically, see manifest.rs).
    pub fn store(&self, dir: &Path) -> Result<()> {
        self.manifest().store(dir)
    }

    /// `Manifest::store_telling` for this set.
    pub fn store_telling(&self, dir: &Path) -> Result<Result<()>> {
        self.manifest().store_telling(dir)
    }

    /// The file name for a new segment.
    pub fn new_file_name(&mut self) -> String {
        let name = segment_name(self.next_file);
        self.next_file += 1;
        name
    }

    /// Never hands out again a name `other` (a copy that was given up) gave.
    pub fn reserve_file_names(&mut self, other: &SegmentSet) {
        self.next_file = self.next_file.max(other.next_file);
    }

    pub fn iter(&self) -> std::slice::Iter<'_, LiveSegment> {
        self.live.iter()
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Adds a segment as the newest.
    pub fn push(&mut self, live: LiveSegment) {
        *self.hours.entry(live.entry.partition).or_default() += 1;
        self.live.push(live);
    }

    pub fn retain(&mut self, keep: impl FnMut(&LiveSegment) -> bool) {
        self.live.retain(keep);
        self.count_hours();
    }

    /// Puts each merge's segment in place of the segments it was made
    /// from, at the oldest one's place (so that segments added since stay
    /// newer and win), when they are all still in the set: a merge made
    /// without the engine's lock may find some retired meanwhile, and is
    /// then not used. Returns, for each merge, whether it was. One pass
    /// over the set for all of them.
    pub fn replace(&mut self, merges: Vec<(Vec<String>, LiveSegment)>) -> Vec<bool> {
        let (froms, merged): (Vec<Vec<String>>, Vec<LiveSegment>) = merges.into_iter().unzip();
        let mut merge_of: HashMap<&str, usize> = HashMap::new();
        for (i, from) in froms.iter().enumerate() {
            merge_of.extend(from.iter().map(|f| (f.as_str(), i)));
        }
        let mut present = vec![0usize; froms.len()];
        for l in &self.live {
            if let Some(&i) = merge_of.get(l.entry.file.as_str()) {
                present[i] += 1;
            }
        }
        let used: Vec<bool> = froms
            .iter()
            .zip(&present)
            .map(|(from, &n)| n == from.len())
            .collect();
        let mut merged: Vec<Option<LiveSegment>> = merged.into_iter().map(Some).collect();
        let mut live = Vec::with_capacity(self.live.len());
        for l in self.live.drain(..) {
            match merge_of.get(l.entry.file.as_str()) {
                Some(&i) if used[i] => live.extend(merged[i].take()),
                _ => live.push(l),
            }
        }
        self.live = live;
        self.count_hours();
        used
    }

    /// The hour partitions the segments hold.
    pub fn hours(&self) -> usize {
        self.hours.len()
    }

    pub fn holds_hour(&self, partition: i64) -> bool {
        self.hours.contains_key(&partition)
    }

    /// Segments of one hour partition.
    pub fn in_hour(&self, partition: i64) -> usize {
        self.hours.get(&partition).copied().unwrap_or(0)
    }

    fn count_hours(&mut self) {
        self.hours.clear();
        for l in &self.live {
            *self.hours.entry(l.entry.partition).or_default() += 1;
        }
    }

    /// The open segments overlapping [start, end) with their partitions,
    /// oldest first.
    pub fn overlapping(&self, start: i64, end: i64) -> Vec<(i64, Arc<Segment>)> {
        self.live
            .iter()
            .filter(|l| l.entry.max_ts >= start && l.entry.min_ts < end)
            .map(|l| (l.entry.partition, Arc::clone(&l.segment)))
            .collect()
    }
}
