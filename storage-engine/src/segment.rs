//! Immutable segment files: the points of one partition (one hour),
//! compressed per series in blocks of up to `BLOCK_POINTS` points, each
//! block checksummed, with an index at the end so a query reads only the
//! blocks of the series and times it needs.
//!
//! ```text
//! header   magic "CHRSEG01" | version u32 | reserved u32                      16 bytes
//! block    series u32 | count u32 | min_ts i64 | max_ts i64 | ts_len u32 | val_len u32
//!          | timestamps (delta-of-delta) | values (Gorilla XOR) | crc32 of all before it
//! index    per block: series u32 | count u32 | min_ts i64 | max_ts i64 | offset u64   32 bytes each
//! trailer  index_offset u64 | blocks u32 | index crc32 u32 | magic "CHRSEGIX"       24 bytes
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{EngineError, IoContext, Result};
use crate::gorilla;
use crate::mmap::Mapped;
use crate::model::SeriesId;

const MAGIC: [u8; 8] = *b"CHRSEG01";
const INDEX_MAGIC: [u8; 8] = *b"CHRSEGIX";
const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 16;
pub const BLOCK_HEADER_LEN: usize = 4 + 4 + 8 + 8 + 4 + 4;
pub const INDEX_ENTRY_LEN: usize = 32;
pub const TRAILER_LEN: usize = 24;
/// Points per block: large enough to amortize the header, small enough
/// that a narrow time range decodes little.
pub const BLOCK_POINTS: usize = 1000;

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
    let mut out = Vec::with_capacity(HEADER_LEN + 4096);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut index = Vec::new();
    let mut stats = SegmentStats {
        min_ts: i64::MAX,
        max_ts: i64::MIN,
        ..SegmentStats::default()
    };
    let mut ts = Vec::with_capacity(BLOCK_POINTS);
    let mut vals = Vec::with_capacity(BLOCK_POINTS);
    for (&series, points) in data {
        for chunk in points.chunks(BLOCK_POINTS) {
            ts.clear();
            vals.clear();
            ts.extend(chunk.iter().map(|p| p.0));
            vals.extend(chunk.iter().map(|p| p.1));
            let (Some(&min_ts), Some(&max_ts)) = (ts.first(), ts.last()) else {
                continue;
            };
            let t = gorilla::encode_timestamps(&ts);
            let v = gorilla::encode_values(&vals);
            let offset = out.len() as u64;
            out.extend_from_slice(&series.to_le_bytes());
            out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            out.extend_from_slice(&min_ts.to_le_bytes());
            out.extend_from_slice(&max_ts.to_le_bytes());
            out.extend_from_slice(&(t.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(&t);
            out.extend_from_slice(&v);
            let crc = crc32fast::hash(&out[offset as usize..]);
            out.extend_from_slice(&crc.to_le_bytes());
            index.push(IndexEntry {
                series,
                count: chunk.len() as u32,
                min_ts,
                max_ts,
                offset,
            });
            stats.points += chunk.len() as u64;
            stats.min_ts = stats.min_ts.min(min_ts);
            stats.max_ts = stats.max_ts.max(max_ts);
        }
    }
    let index_offset = out.len() as u64;
    for e in &index {
        out.extend_from_slice(&e.series.to_le_bytes());
        out.extend_from_slice(&e.count.to_le_bytes());
        out.extend_from_slice(&e.min_ts.to_le_bytes());
        out.extend_from_slice(&e.max_ts.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
    }
    let index_crc = crc32fast::hash(&out[index_offset as usize..]);
    out.extend_from_slice(&index_offset.to_le_bytes());
    out.extend_from_slice(&(index.len() as u32).to_le_bytes());
    out.extend_from_slice(&index_crc.to_le_bytes());
    out.extend_from_slice(&INDEX_MAGIC);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .context(|| format!("creating {}", path.display()))?;
    file.write_all(&out)
        .and_then(|()| file.sync_all())
        .context(|| format!("writing {}", path.display()))?;
    stats.bytes = out.len() as u64;
    Ok(stats)
}

/// An open segment: its mapping and parsed index.
pub struct Segment {
    path: PathBuf,
    map: Mapped,
    index: Vec<IndexEntry>,
}

impl Segment {
    pub fn open(path: &Path) -> Result<Segment> {
        let map = Mapped::open(path)?;
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

    /// Appends the points of `series` in [start, end) to `ts`/`vals`, in order.
    pub fn read(
        &self,
        series: SeriesId,
        start: i64,
        end: i64,
        ts: &mut Vec<i64>,
        vals: &mut Vec<f64>,
    ) -> Result<()> {
        let first = self.index.partition_point(|e| e.series < series);
        for entry in self.index[first..]
            .iter()
            .take_while(|e| e.series == series)
        {
            if entry.max_ts < start || entry.min_ts >= end {
                continue;
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
        let head_end = at
            .checked_add(BLOCK_HEADER_LEN)
            .ok_or_else(|| bad("offset out of range"))?;
        let head = bytes.get(at..head_end).ok_or_else(|| bad("cut short"))?;
        let ts_len = le_u32(head, 24) as usize;
        let val_len = le_u32(head, 28) as usize;
        // The lengths are read before the checksum can vouch for them.
        let block_end = head_end
            .checked_add(ts_len)
            .and_then(|n| n.checked_add(val_len))
            .and_then(|n| n.checked_add(4))
            .ok_or_else(|| bad("lengths out of range"))?;
        let block = bytes.get(at..block_end).ok_or_else(|| bad("cut short"))?;
        let stored = le_u32(block, block.len() - 4);
        if crc32fast::hash(&block[..block.len() - 4]) != stored {
            return Err(bad("checksum mismatch"));
        }
        let count = le_u32(head, 4) as usize;
        let t = &block[BLOCK_HEADER_LEN..BLOCK_HEADER_LEN + ts_len];
        let v = &block[BLOCK_HEADER_LEN + ts_len..BLOCK_HEADER_LEN + ts_len + val_len];
        gorilla::decode_timestamps(t, count, ts).map_err(|_| bad("timestamps undecodable"))?;
        gorilla::decode_values(v, count, vals).map_err(|_| bad("values undecodable"))?;
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
    let index_end = blocks
        .checked_mul(INDEX_ENTRY_LEN)
        .and_then(|len| len.checked_add(index_offset))
        .ok_or_else(|| bad("index size out of range"))?;
    let raw = bytes
        .get(index_offset..index_end)
        .filter(|_| index_end == bytes.len() - TRAILER_LEN)
        .ok_or_else(|| bad("index out of bounds"))?;
    if crc32fast::hash(raw) != index_crc {
        return Err(bad("index checksum mismatch"));
    }
    Ok(raw
        .chunks_exact(INDEX_ENTRY_LEN)
        .map(|e| IndexEntry {
            series: le_u32(e, 0),
            count: le_u32(e, 4),
            min_ts: le_u64(e, 8) as i64,
            max_ts: le_u64(e, 16) as i64,
            offset: le_u64(e, 24),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: the worked size in docs/FORMAT.md (1,000 points of a
    // regular gauge with a constant value: 343 bytes with its index entry).
    #[test]
    fn worked_size_matches_format_doc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.seg");
        let points: Vec<(i64, f64)> = (0..1000)
            .map(|i| (1_700_000_000_000_000_000 + i * 10_000_000_000, 42.5))
            .collect();
        let data = BTreeMap::from([(7, points.clone())]);
        let stats = write(&path, &data).expect("write");
        assert_eq!(
            [HEADER_LEN, BLOCK_HEADER_LEN, INDEX_ENTRY_LEN, TRAILER_LEN],
            [16, 32, 32, 24]
        );
        assert_eq!(stats.bytes, (HEADER_LEN + 343 + TRAILER_LEN) as u64);
        let segment = Segment::open(&path).expect("open");
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        segment
            .read(7, i64::MIN, i64::MAX, &mut ts, &mut vals)
            .expect("read");
        assert_eq!(ts.into_iter().zip(vals).collect::<Vec<_>>(), points);
    }
}
