//! Immutable segment files: the points of one partition (one hour),
//! compressed per series in blocks of up to `BLOCK_POINTS` points, each
//! block checksummed, with an index at the end so a query reads only the
//! blocks of the series and times it needs.
//!
//! ```text
//! header   magic "CHRSEG01" | version u32 = 2 | reserved u32                  16 bytes
//! block    length × 2 + compressed (varint) | points (codec.rs), zstd or raw | crc32 of all before it
//! index    compressed u8 | columns, zstd or raw: series, count, min_ts, max_ts − min_ts, offset,
//!          one value per block each, as intpack.rs columns
//! trailer  index_offset u64 | blocks u32 | crc32 of the stored index | magic "CHRSEGIX"   24 bytes
//! ```
//!
//! A block's series, count and time range live only in the index (which
//! is read whole at open), so a block costs its points plus 6 or 7 bytes,
//! and its index entry a few bytes more.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::cell::RefCell;

use crate::codec;
use crate::error::{EngineError, IoContext, Result};
use crate::intpack;
use crate::mmap::Mapped;
use crate::model::SeriesId;

const MAGIC: [u8; 8] = *b"CHRSEG01";
const INDEX_MAGIC: [u8; 8] = *b"CHRSEGIX";
const VERSION: u32 = 2;
pub const HEADER_LEN: usize = 16;
/// The smallest block: a one-byte length, no payload, the checksum.
pub const MIN_BLOCK_LEN: usize = 1 + BLOCK_CRC_LEN;
pub const BLOCK_CRC_LEN: usize = 4;
/// The longest an index's columns can be per block (five columns of at
/// most 8 bytes a value), beyond their fixed headers.
const INDEX_MAX_LEN_PER_BLOCK: usize = 5 * 8;
pub const TRAILER_LEN: usize = 24;
/// Points per block: large enough to amortize the header, small enough
/// that a narrow time range decodes little.
pub const BLOCK_POINTS: usize = 1000;
/// zstd's level: fast enough that a flush is not slowed, well past the
/// gain of higher levels on blocks this small.
const ZSTD_LEVEL: i32 = 3;
const RAW: u8 = 0;
const ZSTD: u8 = 1;

#[derive(Debug, Clone, Copy)]
pub struct IndexEntry {
    pub series: SeriesId,
    pub count: u32,
    pub min_ts: i64,
    pub max_ts: i64,
    pub offset: u64,
}

/// What a written segment holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct SegmentStats {
    pub points: u64,
    pub bytes: u64,
    pub min_ts: i64,
    pub max_ts: i64,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Writes sorted, deduplicated points per series to a new segment file and
/// fsyncs it. The caller records it in the manifest.
pub fn write(path: &Path, data: &BTreeMap<SeriesId, Vec<(i64, f64)>>) -> Result<SegmentStats> {
    let encoded = encode(data)?;
    store_open(path, &encoded)?;
    Ok(encoded.stats)
}

/// A segment's bytes, ready to be stored (`store_open`).
pub struct Encoded {
    pub stats: SegmentStats,
    bytes: Vec<u8>,
}

impl Encoded {
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Encodes sorted, deduplicated points per series as a segment: the work
/// of `write` without the file, so that callers can encode on one thread
/// and store on another.
pub fn encode(data: &BTreeMap<SeriesId, Vec<(i64, f64)>>) -> Result<Encoded> {
    let mut encoder = Encoder::new()?;
    for (&series, points) in data {
        encoder.add(series, points)?;
    }
    encoder.finish()
}

/// A segment encoded one series at a time, in series order, each series
/// whole or in slices: what a merge uses, so that it holds a chunk of one
/// series decoded at a time beside the compressed segment, not every point
/// of the hour.
pub struct Encoder {
    out: Vec<u8>,
    index: Vec<IndexEntry>,
    stats: SegmentStats,
    last_series: Option<SeriesId>,
    /// The next block's points, as columns.
    block: (Vec<i64>, Vec<f64>),
    /// A block's points encoded, before compression.
    encoded: Vec<u8>,
    zstd: zstd::bulk::Compressor<'static>,
}

impl Encoder {
    pub fn new() -> Result<Encoder> {
        let mut out = Vec::with_capacity(HEADER_LEN + 4096);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        Ok(Encoder {
            out,
            index: Vec::new(),
            stats: SegmentStats {
                min_ts: i64::MAX,
                max_ts: i64::MIN,
                ..SegmentStats::default()
            },
            last_series: None,
            block: (
                Vec::with_capacity(BLOCK_POINTS),
                Vec::with_capacity(BLOCK_POINTS),
            ),
            encoded: Vec::with_capacity(codec::max_encoded_len(BLOCK_POINTS)),
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL)
                .context(|| "starting the zstd compressor".to_string())?,
        })
    }

    /// Adds one series' points, sorted and deduplicated.
    pub fn add(&mut self, series: SeriesId, points: &[(i64, f64)]) -> Result<()> {
        self.next_series(series);
        for chunk in points.chunks(BLOCK_POINTS) {
            let (ts, vals) = (chunk.iter().map(|p| p.0), chunk.iter().map(|p| p.1));
            self.add_block(series, ts, vals)?;
        }
        Ok(())
    }

    /// Adds the next of a series' points, as columns, sorted, deduplicated
    /// and after any added before: a series may come in several slices,
    /// which make the blocks the whole would when each but the last holds
    /// a multiple of `BLOCK_POINTS`.
    pub fn add_columns(&mut self, series: SeriesId, ts: &[i64], vals: &[f64]) -> Result<()> {
        assert_eq!(ts.len(), vals.len(), "a timestamp for each value");
        self.next_series(series);
        for (ts, vals) in ts.chunks(BLOCK_POINTS).zip(vals.chunks(BLOCK_POINTS)) {
            self.add_block(series, ts.iter().copied(), vals.iter().copied())?;
        }
        Ok(())
    }

    /// Series come in increasing order, each whole before the next: out
    /// of order, the index would hide blocks from queries.
    fn next_series(&mut self, series: SeriesId) {
        assert!(
            self.last_series.is_none_or(|last| series >= last),
            "series {series:?} added to a segment after {:?}",
            self.last_series
        );
        self.last_series = Some(series);
    }

    /// Writes `ts` and `vals` (at most `BLOCK_POINTS`) as the next block of
    /// `series`, through `block`.
    fn add_block(
        &mut self,
        series: SeriesId,
        ts: impl Iterator<Item = i64>,
        vals: impl Iterator<Item = f64>,
    ) -> Result<()> {
        self.block.0.clear();
        self.block.1.clear();
        self.block.0.extend(ts);
        self.block.1.extend(vals);
        let (ts, vals) = &self.block;
        let (Some(&min_ts), Some(&max_ts)) = (ts.first(), ts.last()) else {
            return Ok(());
        };
        let count = ts.len();
        self.encoded.clear();
        codec::encode(ts, vals, &mut self.encoded);
        let compressed = self
            .zstd
            .compress(&self.encoded)
            .context(|| "compressing a segment block".to_string())?;
        let (compression, payload) = if compressed.len() < self.encoded.len() {
            (ZSTD, compressed.as_slice())
        } else {
            (RAW, self.encoded.as_slice())
        };
        let out = &mut self.out;
        let offset = out.len() as u64;
        intpack::put_varint(out, (payload.len() as i64) << 1 | i64::from(compression));
        out.extend_from_slice(payload);
        let crc = crc32fast::hash(&out[offset as usize..]);
        out.extend_from_slice(&crc.to_le_bytes());
        self.index.push(IndexEntry {
            series,
            count: count as u32,
            min_ts,
            max_ts,
            offset,
        });
        self.stats.points += count as u64;
        self.stats.min_ts = self.stats.min_ts.min(min_ts);
        self.stats.max_ts = self.stats.max_ts.max(max_ts);
        Ok(())
    }

    /// The segment's bytes: the blocks added, then the index and trailer.
    pub fn finish(mut self) -> Result<Encoded> {
        let out = &mut self.out;
        let index_offset = out.len() as u64;
        let raw_index = encode_index(&self.index);
        let compressed_index = self
            .zstd
            .compress(&raw_index)
            .context(|| "compressing a segment index".to_string())?;
        if compressed_index.len() < raw_index.len() {
            out.push(ZSTD);
            out.extend_from_slice(&compressed_index);
        } else {
            out.push(RAW);
            out.extend_from_slice(&raw_index);
        }
        let index_crc = crc32fast::hash(&out[index_offset as usize..]);
        out.extend_from_slice(&index_offset.to_le_bytes());
        out.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        out.extend_from_slice(&index_crc.to_le_bytes());
        out.extend_from_slice(&INDEX_MAGIC);
        self.stats.bytes = out.len() as u64;
        Ok(Encoded {
            stats: self.stats,
            bytes: self.out,
        })
    }
}

/// Writes an encoded segment to the new file `path`, fsyncs it and opens
/// it from the descriptor that wrote it (reopening it by path would cost a
/// FUSE mount more round trips).
pub fn store_open(path: &Path, encoded: &Encoded) -> Result<Segment> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .context(|| format!("creating {}", path.display()))?;
    let stored = file
        .write_all(&encoded.bytes)
        .and_then(|()| file.sync_all())
        .context(|| format!("writing {}", path.display()))
        .and_then(|()| Segment::of(&file, path));
    if stored.is_err() {
        // Made here and named nowhere: the caller need not know of it.
        let _ = std::fs::remove_file(path);
    }
    stored
}

/// An open segment: its mapping and parsed index.
pub struct Segment {
    path: PathBuf,
    map: Mapped,
    index: Vec<IndexEntry>,
}

impl Segment {
    pub fn open(path: &Path) -> Result<Segment> {
        Self::from_map(Mapped::open(path)?, path)
    }

    /// The segment at `path`, open as `file`.
    fn of(file: &std::fs::File, path: &Path) -> Result<Segment> {
        Self::from_map(Mapped::of(file, path)?, path)
    }

    fn from_map(map: Mapped, path: &Path) -> Result<Segment> {
        let index = parse_index(map.bytes(), path)?;
        Ok(Segment {
            path: path.to_path_buf(),
            map,
            index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn index(&self) -> &[IndexEntry] {
        &self.index
    }

    /// Series present, in order.
    pub fn series(&self) -> impl Iterator<Item = SeriesId> + '_ {
        let mut last = None;
        self.index.iter().filter_map(move |e| {
            if last == Some(e.series) {
                None
            } else {
                last = Some(e.series);
                Some(e.series)
            }
        })
    }

    /// The index entries of `series`' blocks, in time order.
    pub fn blocks_of(&self, series: SeriesId) -> &[IndexEntry] {
        let first = self.index.partition_point(|e| e.series < series);
        let len = self.index[first..].partition_point(|e| e.series == series);
        &self.index[first..first + len]
    }

    /// Appends the points of `entry`'s block in [start, end) to
    /// `ts`/`vals`, in order (none when the block lies outside).
    pub fn read_block(
        &self,
        entry: &IndexEntry,
        start: i64,
        end: i64,
        ts: &mut Vec<i64>,
        vals: &mut Vec<f64>,
    ) -> Result<()> {
        if entry.max_ts < start || entry.min_ts >= end {
            return Ok(());
        }
        let from = ts.len();
        self.decode_block(entry, ts, vals)?;
        if entry.min_ts < start || entry.max_ts >= end {
            // Keep only the points inside the range.
            let mut keep = from;
            for i in from..ts.len() {
                if ts[i] >= start && ts[i] < end {
                    ts[keep] = ts[i];
                    vals[keep] = vals[i];
                    keep += 1;
                }
            }
            ts.truncate(keep);
            vals.truncate(keep);
        }
        Ok(())
    }

    fn decode_block(
        &self,
        entry: &IndexEntry,
        ts: &mut Vec<i64>,
        vals: &mut Vec<f64>,
    ) -> Result<()> {
        let bytes = self.map.bytes();
        let at = entry.offset as usize;
        let bad =
            |what: &str| EngineError::corrupt(&self.path, format!("block at byte {at}: {what}"));
        // The length is read before the checksum can vouch for it.
        let mut head =
            intpack::Reader::new(bytes.get(at..).ok_or_else(|| bad("offset out of range"))?);
        let word = head.varint().map_err(|_| bad("cut short"))?;
        let head_len = bytes.len() - at - head.rest().len();
        let (len, compression) = ((word >> 1) as usize, (word & 1) as u8);
        let block_end = (at + head_len)
            .checked_add(len)
            .and_then(|n| n.checked_add(BLOCK_CRC_LEN))
            .ok_or_else(|| bad("length out of range"))?;
        let block = bytes.get(at..block_end).ok_or_else(|| bad("cut short"))?;
        let (covered, crc) = block.split_at(block.len() - BLOCK_CRC_LEN);
        if crc32fast::hash(covered) != le_u32(crc, 0) {
            return Err(bad("checksum mismatch"));
        }
        let payload = &covered[head_len..];
        let count = entry.count as usize;
        let from = ts.len();
        with_block_buffer(|buffer| {
            let encoded = match compression {
                RAW => payload,
                ZSTD => {
                    decompress(payload, codec::max_encoded_len(count), buffer)
                        .map_err(|_| bad("does not decompress"))?;
                    buffer.as_slice()
                }
                _ => return Err(bad("unknown compression")),
            };
            codec::decode(encoded, count, entry.min_ts, ts, vals)
                .map_err(|_| bad("points undecodable"))
        })?;
        // The checksum vouches for the bytes, not for a writer's sense:
        // points outside the block's range or out of order would be
        // returned by queries that did not ask for them.
        let decoded = &ts[from..];
        if decoded.len() != count
            || decoded.last() != Some(&entry.max_ts)
            || decoded.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(bad("points disagree with the index"));
        }
        Ok(())
    }

    /// Decodes every block, checking every checksum.
    pub fn verify(&self) -> Result<u64> {
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        for entry in &self.index {
            ts.clear();
            vals.clear();
            self.decode_block(entry, &mut ts, &mut vals)?;
        }
        Ok(self.index.iter().map(|e| u64::from(e.count)).sum())
    }
}

/// The index as five columns (intpack.rs), one value per block each.
fn encode_index(index: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + index.len() * 4);
    let column = |f: fn(&IndexEntry) -> i64, out: &mut Vec<u8>| {
        intpack::encode_column(&index.iter().map(f).collect::<Vec<_>>(), out);
    };
    column(|e| i64::from(e.series), &mut out);
    column(|e| i64::from(e.count), &mut out);
    column(|e| e.min_ts, &mut out);
    column(|e| e.max_ts.wrapping_sub(e.min_ts), &mut out);
    column(|e| e.offset as i64, &mut out);
    out
}

fn decode_index(bytes: &[u8], blocks: usize) -> Option<Vec<IndexEntry>> {
    let mut r = intpack::Reader::new(bytes);
    let mut columns: [Vec<i64>; 5] = Default::default();
    for column in &mut columns {
        intpack::decode_column(&mut r, blocks, column).ok()?;
    }
    if !r.rest().is_empty() {
        return None;
    }
    let [series, count, min_ts, span, offset] = columns;
    (0..blocks)
        .map(|i| {
            Some(IndexEntry {
                series: u32::try_from(series[i]).ok()?,
                count: u32::try_from(count[i]).ok()?,
                min_ts: min_ts[i],
                max_ts: min_ts[i].checked_add(span[i])?,
                offset: u64::try_from(offset[i]).ok()?,
            })
        })
        .collect()
}

thread_local! {
    /// Each reading thread's zstd context and buffer, reused from block to
    /// block: a scan decodes tens of thousands of blocks a second.
    static BLOCK_BUFFER: RefCell<(Option<zstd::bulk::Decompressor<'static>>, Vec<u8>)> =
        const { RefCell::new((None, Vec::new())) };
}

fn with_block_buffer<R>(f: impl FnOnce(&mut BlockBuffer<'_>) -> R) -> R {
    BLOCK_BUFFER.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (decompressor, bytes) = &mut *guard;
        f(&mut BlockBuffer {
            decompressor,
            bytes,
        })
    })
}

struct BlockBuffer<'a> {
    decompressor: &'a mut Option<zstd::bulk::Decompressor<'static>>,
    bytes: &'a mut Vec<u8>,
}

impl BlockBuffer<'_> {
    fn as_slice(&self) -> &[u8] {
        self.bytes
    }
}

/// Decompresses one zstd frame into `buffer`, refusing one that would be
/// larger than `limit` bytes.
fn decompress(frame: &[u8], limit: usize, buffer: &mut BlockBuffer<'_>) -> std::io::Result<()> {
    if buffer.decompressor.is_none() {
        *buffer.decompressor = Some(zstd::bulk::Decompressor::new()?);
    }
    let Some(decompressor) = buffer.decompressor.as_mut() else {
        return Err(std::io::Error::other("no zstd context"));
    };
    buffer.bytes.clear();
    buffer.bytes.reserve(limit);
    decompressor.decompress_to_buffer(frame, buffer.bytes)?;
    Ok(())
}

fn parse_index(bytes: &[u8], path: &Path) -> Result<Vec<IndexEntry>> {
    let bad = |what: &str| EngineError::corrupt(path, what.to_string());
    if bytes.len() < HEADER_LEN + TRAILER_LEN || bytes[..8] != MAGIC {
        return Err(bad("not a segment file (bad magic or too short)"));
    }
    let version = le_u32(bytes, 8);
    if version != VERSION {
        return Err(EngineError::UnsupportedVersion {
            file: path.to_path_buf(),
            found: version,
        });
    }
    let trailer = &bytes[bytes.len() - TRAILER_LEN..];
    if trailer[16..] != INDEX_MAGIC {
        return Err(bad("index trailer missing (cut short?)"));
    }
    let index_offset = le_u64(trailer, 0) as usize;
    let blocks = le_u32(trailer, 8) as usize;
    let index_crc = le_u32(trailer, 12);
    let index_end = bytes.len() - TRAILER_LEN;
    let stored = bytes
        .get(index_offset..index_end)
        .filter(|_| index_offset >= HEADER_LEN)
        .ok_or_else(|| bad("index out of bounds"))?;
    if crc32fast::hash(stored) != index_crc {
        return Err(bad("index checksum mismatch"));
    }
    // Every block takes at least MIN_BLOCK_LEN bytes, which bounds what
    // the index may claim before anything is allocated for it.
    if blocks > (index_offset - HEADER_LEN) / MIN_BLOCK_LEN {
        return Err(bad("more blocks than the file can hold"));
    }
    let (&compression, stored) = stored.split_first().ok_or_else(|| bad("index missing"))?;
    let decompressed;
    let columns = match compression {
        RAW => stored,
        ZSTD => {
            // The frame says how large it is (the writer always records
            // it); no more than that, nor than the columns can be, is
            // allocated, whatever a damaged file claims.
            let limit = 256 + blocks * INDEX_MAX_LEN_PER_BLOCK;
            let size = zstd::zstd_safe::get_frame_content_size(stored)
                .ok()
                .flatten()
                .filter(|&n| n <= limit as u64)
                .ok_or_else(|| bad("index size unknown or out of range"))?;
            decompressed = zstd::bulk::decompress(stored, size as usize)
                .map_err(|_| bad("index does not decompress"))?;
            &decompressed
        }
        _ => return Err(bad("index compression unknown")),
    };
    let index = decode_index(columns, blocks).ok_or_else(|| bad("index undecodable"))?;
    let sane = |e: &IndexEntry| {
        (1..=BLOCK_POINTS as u32).contains(&e.count)
            && e.min_ts <= e.max_ts
            && (HEADER_LEN as u64..index_offset as u64).contains(&e.offset)
    };
    if !index.iter().all(sane) || !index.windows(2).all(|w| w[0].series <= w[1].series) {
        return Err(bad("index entries out of range or out of order"));
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: the worked size in docs/FORMAT.md: 1,000 points of a
    // regular 10-second gauge with a constant value encode to 14 bytes,
    // stored raw (zstd would not shrink them) in a block of 19 bytes; the
    // index of this one block takes 41 bytes (5 columns of one value).
    #[test]
    fn worked_size_matches_format_doc() {
        const WORKED_BLOCK: usize = 19;
        const WORKED_INDEX: usize = 41;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.seg");
        let points: Vec<(i64, f64)> = (0..1000)
            .map(|i| (1_700_000_000_000_000_000 + i * 10_000_000_000, 42.5))
            .collect();
        let (ts, vals): (Vec<i64>, Vec<f64>) = points.iter().copied().unzip();
        let mut encoded = Vec::new();
        codec::encode(&ts, &vals, &mut encoded);
        assert_eq!(encoded.len(), 1 + 5 + 2 + 2 + 4);
        let data = BTreeMap::from([(7, points.clone())]);
        let stats = write(&path, &data).expect("write");
        assert_eq!([HEADER_LEN, MIN_BLOCK_LEN, TRAILER_LEN], [16, 5, 24]);
        let segment = Segment::open(&path).expect("open");
        let index_offset = segment.map.bytes().len() - TRAILER_LEN;
        let index_offset = le_u64(segment.map.bytes(), index_offset) as usize;
        let block = index_offset - HEADER_LEN;
        let index = stats.bytes as usize - index_offset - TRAILER_LEN;
        assert_eq!((block, index), (WORKED_BLOCK, WORKED_INDEX));
        assert_eq!(stats.bytes, 100);
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        for block in segment.blocks_of(7) {
            segment
                .read_block(block, i64::MIN, i64::MAX, &mut ts, &mut vals)
                .expect("read");
        }
        assert_eq!(ts.into_iter().zip(vals).collect::<Vec<_>>(), points);
    }
}
