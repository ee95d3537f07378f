//! One series' points in a time range, merged from its sources in time
//! order a bounded chunk at a time: an hour's segments (oldest first), then
//! the memtable's points, a later source winning a timestamp two hold.
//! Queries, export and compaction read through it, so that none holds more
//! of a series than a chunk, and a block of each source whose times
//! overlap where the merge stands, however many points an hour of it has.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::model::SeriesId;
use crate::segment::{IndexEntry, Segment, BLOCK_POINTS};

/// Points handed out at a time. A multiple of `BLOCK_POINTS`: a compaction
/// that encodes chunk after chunk makes the blocks it would of the whole.
pub(super) const CHUNK_POINTS: usize = 4 * BLOCK_POINTS;

/// The merge of one series' sources over [start, end).
pub(super) struct Merged<'a> {
    /// In the order the sources win: a later one's point replaces an
    /// earlier one's at the same timestamp.
    cursors: Vec<Cursor<'a>>,
    /// The sources with points left, by their next timestamp: the
    /// earliest on top, and of equal ones the source that wins it. An
    /// hour may hold many segments before a compaction merges them, so
    /// each step costs a logarithm of them, not a scan.
    heads: BinaryHeap<Reverse<(i64, Reverse<usize>)>>,
    start: i64,
    end: i64,
}

impl<'a> Merged<'a> {
    /// Series `id` in [start, end) from `segments` (oldest first) and then
    /// `memory` (its memtable points, sorted, which win).
    pub(super) fn new(
        segments: &'a [Arc<Segment>],
        memory: &'a [(i64, f64)],
        id: SeriesId,
        start: i64,
        end: i64,
    ) -> Self {
        debug_assert!(memory.windows(2).all(|w| w[0].0 < w[1].0));
        let from = memory.partition_point(|p| p.0 < start);
        let to = memory.partition_point(|p| p.0 < end);
        let sources = segments
            .iter()
            .map(|segment| Rest::Blocks {
                segment,
                blocks: segment.blocks_of(id),
            })
            .chain([Rest::Memory(&memory[from.min(to)..to])]);
        let mut merged = Merged {
            cursors: sources.map(Cursor::new).collect(),
            heads: BinaryHeap::new(),
            start,
            end,
        };
        for source in 0..merged.cursors.len() {
            merged.queue(source);
        }
        merged
    }

    /// Replaces `ts`/`vals` with the next points, up to `CHUNK_POINTS` (fewer
    /// only at the end); false when none are left.
    pub(super) fn next_chunk(&mut self, ts: &mut Vec<i64>, vals: &mut Vec<f64>) -> Result<bool> {
        ts.clear();
        vals.clear();
        while ts.len() < CHUNK_POINTS {
            let Some(Reverse((t, Reverse(winner)))) = self.heads.pop() else {
                break;
            };
            if !self.cursors[winner].loaded() {
                // The merge has reached the earliest time its next block
                // may hold: decode it now, and go on from its first point.
                self.load(winner)?;
                continue;
            }
            // The sources that lose this timestamp to the winner skip it
            // (a block that may begin at it is decoded first, and comes
            // back here if it does).
            while let Some(&Reverse((next, Reverse(loser)))) = self.heads.peek() {
                if next != t {
                    break;
                }
                self.heads.pop();
                if self.cursors[loser].loaded() {
                    self.cursors[loser].at += 1;
                    self.queue(loser);
                } else {
                    self.load(loser)?;
                }
            }
            // The winner's points before every other source's next one go
            // as one run (all of them, once it is the last source left).
            let until = self.heads.peek().map(|&Reverse((next, _))| next);
            let cursor = &mut self.cursors[winner];
            let room = CHUNK_POINTS - ts.len();
            let run = cursor.ts[cursor.at..]
                .iter()
                .take(room)
                .take_while(|&&t| until.is_none_or(|next| t < next))
                .count();
            ts.extend_from_slice(&cursor.ts[cursor.at..cursor.at + run]);
            vals.extend_from_slice(&cursor.vals[cursor.at..cursor.at + run]);
            cursor.at += run;
            self.queue(winner);
        }
        Ok(!ts.is_empty())
    }

    /// Puts `source` back among the heads at its next point, if it has one.
    fn queue(&mut self, source: usize) {
        if let Some(t) = self.cursors[source].head(self.start, self.end) {
            self.heads.push(Reverse((t, Reverse(source))));
        }
    }

    /// Loads `source`'s next points (decoding its next block) and puts it
    /// back among the heads.
    fn load(&mut self, source: usize) -> Result<()> {
        self.cursors[source].refill(self.start, self.end)?;
        self.queue(source);
        Ok(())
    }

    /// Decoded points the sources have room for.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.cursors.iter().map(|c| c.ts.capacity()).sum()
    }
}

/// Where one source stands: its decoded block (or slice of memtable
/// points) and what is left after it.
struct Cursor<'a> {
    rest: Rest<'a>,
    ts: Vec<i64>,
    vals: Vec<f64>,
    at: usize,
    /// The last timestamp taken from this source: each must be later.
    last: Option<i64>,
}

enum Rest<'a> {
    Blocks {
        segment: &'a Segment,
        blocks: &'a [IndexEntry],
    },
    Memory(&'a [(i64, f64)]),
}

impl<'a> Cursor<'a> {
    fn new(rest: Rest<'a>) -> Self {
        Cursor {
            rest,
            ts: Vec::new(),
            vals: Vec::new(),
            at: 0,
            last: None,
        }
    }

    /// The next timestamp of the points loaded, if any are left.
    fn peek(&self) -> Option<i64> {
        self.ts.get(self.at).copied()
    }

    /// Whether the source holds decoded points not yet taken.
    fn loaded(&self) -> bool {
        self.peek().is_some()
    }

    /// The source's next timestamp in [start, end): its next loaded
    /// point's, or, before its next points are loaded, the earliest they
    /// may hold (a block's, from its index; the memtable's exactly). A
    /// block is decoded only when the merge reaches that time, so an
    /// hour's segments in time order, as flushes leave them, are decoded
    /// one at a time, not all at once. `None` once it has no more.
    fn head(&mut self, start: i64, end: i64) -> Option<i64> {
        if let Some(t) = self.peek() {
            return Some(t);
        }
        // Used up: its points' memory goes until the next are loaded, if
        // ever.
        self.ts = Vec::new();
        self.vals = Vec::new();
        match &mut self.rest {
            Rest::Blocks { blocks, .. } => {
                while let Some((block, later)) = blocks.split_first() {
                    if block.max_ts >= start && block.min_ts < end {
                        return Some(block.min_ts.max(start));
                    }
                    *blocks = later;
                }
                None
            }
            Rest::Memory(points) => points.first().map(|p| p.0),
        }
    }

    /// Loads the source's next points (none once it has no more).
    fn refill(&mut self, start: i64, end: i64) -> Result<()> {
        self.ts.clear();
        self.vals.clear();
        self.at = 0;
        match &mut self.rest {
            Rest::Blocks { segment, blocks } => {
                let Some((block, later)) = blocks.split_first() else {
                    return Ok(());
                };
                *blocks = later;
                segment.read_block(block, start, end, &mut self.ts, &mut self.vals)?;
                if !follows(self.last, &self.ts) {
                    return Err(EngineError::corrupt(
                        segment.path(),
                        format!("the points of series {} are out of order", block.series),
                    ));
                }
            }
            Rest::Memory(points) => {
                let (now, later) = points.split_at(points.len().min(BLOCK_POINTS));
                *points = later;
                self.ts.extend(now.iter().map(|p| p.0));
                self.vals.extend(now.iter().map(|p| p.1));
            }
        }
        self.last = self.ts.last().copied().or(self.last);
        Ok(())
    }
}

/// Whether a block's points start after `last`, the previous block's last
/// (`Segment::read_block` checks the order within a block).
fn follows(last: Option<i64>, ts: &[i64]) -> bool {
    match (last, ts.first()) {
        (Some(last), Some(&first)) => first > last,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::segment;

    /// A segment in `dir` for each source, holding its points for series 1
    /// (and a few of series 0 and 2 around them, which the merge must not
    /// see).
    fn segments_of(dir: &std::path::Path, sources: &[&[(i64, f64)]]) -> Vec<Arc<Segment>> {
        let segment_of = |(k, points): (usize, &&[(i64, f64)])| {
            let mut data = BTreeMap::new();
            data.insert(0, vec![(5, -1.0)]);
            data.insert(1, points.to_vec());
            data.insert(2, vec![(7, -2.0)]);
            let path = dir.join(format!("{k}.seg"));
            segment::write(&path, &data).expect("write segment");
            Arc::new(Segment::open(&path).expect("open segment"))
        };
        sources.iter().enumerate().map(segment_of).collect()
    }

    fn merge_all(
        segments: &[Arc<Segment>],
        memory: &[(i64, f64)],
        start: i64,
        end: i64,
    ) -> Vec<(i64, f64)> {
        let mut merged = Merged::new(segments, memory, 1, start, end);
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        while merged.next_chunk(&mut ts, &mut vals).expect("merge") {
            assert!(ts.len() <= CHUNK_POINTS);
            out.extend(ts.iter().copied().zip(vals.iter().copied()));
        }
        out
    }

    /// What the merge must give: every source's points in range, later
    /// sources winning a timestamp, in time order.
    fn expected(sources: &[&[(i64, f64)]], start: i64, end: i64) -> Vec<(i64, f64)> {
        let mut all = BTreeMap::new();
        for source in sources {
            for &(t, v) in *source {
                if (start..end).contains(&t) {
                    all.insert(t, v);
                }
            }
        }
        all.into_iter().collect()
    }

    // Protects: overlapping sources merge in time order with the later
    // source winning each shared timestamp, across block and chunk
    // boundaries, within the range asked for; and no chunk is larger than
    // `CHUNK_POINTS` (what bounds a reader's memory).
    #[test]
    fn overlapping_sources_merge_with_later_ones_winning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let older: Vec<(i64, f64)> = (0..9_000).map(|i| (i * 2, 1.0)).collect();
        let newer: Vec<(i64, f64)> = (0..6_000).map(|i| (i * 3, 2.0)).collect();
        let memory: Vec<(i64, f64)> = (0..2_500).map(|i| (i * 5 + 1, 3.0)).collect();
        let segments = segments_of(dir.path(), &[&older, &newer]);
        for (start, end) in [
            (i64::MIN, i64::MAX),
            (1_001, 12_345),
            (17_999, 18_000),
            (50_000, 60_000),
        ] {
            assert_eq!(
                merge_all(&segments, &memory, start, end),
                expected(&[&older, &newer, &memory], start, end),
                "range {start}..{end}"
            );
        }
    }

    // Protects: many segments of one hour (as accumulate before a
    // compaction), their points interleaved and some shared by several,
    // merge as the model says.
    #[test]
    fn many_interleaved_segments_merge_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sources: Vec<Vec<(i64, f64)>> = (0..40)
            .map(|k| (0..300).map(|j| (j * 37 + k * 11 % 37, k as f64)).collect())
            .collect();
        let all: Vec<&[(i64, f64)]> = sources.iter().map(Vec::as_slice).collect();
        let segments = segments_of(dir.path(), &all);
        assert_eq!(
            merge_all(&segments, &[], i64::MIN, i64::MAX),
            expected(&all, i64::MIN, i64::MAX)
        );
    }

    // Protects: segments in time order (as flushes leave an hour's) are
    // decoded as the merge reaches them, not all at its start, and a
    // source used up lets its block go: memory for a block of each source
    // that overlaps, not one for every segment.
    #[test]
    fn segments_in_time_order_are_decoded_one_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sources: Vec<Vec<(i64, f64)>> = (0..200)
            .map(|k| (0..1_000).map(|j| (k * 1_000 + j, k as f64)).collect())
            .collect();
        let all: Vec<&[(i64, f64)]> = sources.iter().map(Vec::as_slice).collect();
        let segments = segments_of(dir.path(), &all);
        let mut merged = Merged::new(&segments, &[], 1, i64::MIN, i64::MAX);
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        let mut count = 0;
        while merged.next_chunk(&mut ts, &mut vals).expect("merge") {
            count += ts.len();
            let held = merged.held();
            assert!(held <= 3 * BLOCK_POINTS, "room for {held} points held");
        }
        assert_eq!(count, 200_000);
    }

    // Protects: a compaction of one series encoded chunk by chunk makes the
    // same segment as the series encoded whole.
    #[test]
    fn chunks_encode_as_the_whole_series() {
        let dir = tempfile::tempdir().expect("tempdir");
        let points: Vec<(i64, f64)> = (0..10_500).map(|i| (i * 7, i as f64)).collect();
        let segments = segments_of(dir.path(), &[&points]);
        let mut whole = segment::Encoder::new().expect("encoder");
        whole.add(1, &points).expect("add");
        let mut chunked = segment::Encoder::new().expect("encoder");
        let mut merged = Merged::new(&segments, &[], 1, i64::MIN, i64::MAX);
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        while merged.next_chunk(&mut ts, &mut vals).expect("merge") {
            chunked.add_columns(1, &ts, &vals).expect("add");
        }
        assert_eq!(
            whole.finish().expect("finish").bytes(),
            chunked.finish().expect("finish").bytes()
        );
    }

    // Protects: a segment whose series goes back in time from one block to
    // the next (which the engine never writes; each block is checked
    // within itself when decoded) fails the read, naming the file, rather
    // than giving an unsorted answer.
    #[test]
    fn a_segment_out_of_order_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut encoder = segment::Encoder::new().expect("encoder");
        encoder.add(1, &[(10, 0.0), (20, 0.0)]).expect("add");
        encoder.add(1, &[(15, 0.0)]).expect("add");
        let path = dir.path().join("bad.seg");
        let encoded = encoder.finish().expect("finish");
        let segments = [Arc::new(
            segment::store_open(&path, &encoded).expect("store"),
        )];
        let mut merged = Merged::new(&segments, &[], 1, i64::MIN, i64::MAX);
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        let err = merged
            .next_chunk(&mut ts, &mut vals)
            .map(|_| ())
            .expect_err("out of order");
        assert!(err.to_string().contains("bad.seg"), "{err}");
        assert!(err.to_string().contains("out of order"), "{err}");
    }
}
