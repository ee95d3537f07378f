//! The write-ahead log: numbered files `wal-NNNNNN.log` of framed batches.
//! A batch is acknowledged once appended (and, under `SyncPolicy::Always`,
//! fsynced). Files older than the manifest's checkpoint are deleted after a
//! flush has made their points durable in segments.

use std::path::{Path, PathBuf};

use crate::codec;
use crate::error::{EngineError, Result};
use crate::framing::{self, RecordFile};
use crate::intpack::{put_varint, Reader};
use crate::model::SeriesId;

const MAGIC: [u8; 8] = *b"CHRWAL01";
/// 2: points as varints (version 1 stored 20 bytes a point; refused).
const VERSION: u32 = 2;
/// The decimals a WAL value may have; `RAW_VALUE` in their place means the
/// value's 64 bits follow.
const MAX_WAL_DECIMALS: usize = 14;
const RAW_VALUE: i64 = 15;

/// When the WAL is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Before each write is acknowledged.
    Always,
    /// At most this many milliseconds after a write (the default: 1000).
    IntervalMs(u64),
    /// Never explicitly (the OS decides).
    Never,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy::IntervalMs(1000)
    }
}

pub fn file_name(number: u64) -> String {
    format!("wal-{number:06}.log")
}

pub fn parse_name(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Encodes one batch: the definitions of series it introduces, then its
/// points, each as the difference from the previous point's series and
/// timestamp, and its value as a decimal when it is one (as collectors
/// send them), in a few bytes instead of 20. Refuses a batch larger than a
/// record may be (`framing::MAX_PAYLOAD`), which replay would take for
/// damage.
///
/// ```text
/// new_series u32 | (len u32 | definition)* | points (varint)
///   | (series − previous (varint) | ts − previous (varint) | m × 16 + e (varint) [| f64 bits if e = 15])*
/// ```
/// (varints are zigzag LEB128; the value is m / 10^e, e ≤ 14.)
pub fn encode_batch(
    new_series: &[Vec<u8>],
    points: &[(SeriesId, i64, f64)],
    out: &mut Vec<u8>,
) -> Result<()> {
    let mut payload = Vec::with_capacity(16 + points.len() * 6);
    payload.extend_from_slice(&(new_series.len() as u32).to_le_bytes());
    for def in new_series {
        payload.extend_from_slice(&(def.len() as u32).to_le_bytes());
        payload.extend_from_slice(def);
    }
    put_varint(&mut payload, points.len() as i64);
    let (mut prev_id, mut prev_ts) = (0i64, 0i64);
    for &(id, ts, v) in points {
        put_varint(&mut payload, i64::from(id) - prev_id);
        put_varint(&mut payload, ts.wrapping_sub(prev_ts));
        (prev_id, prev_ts) = (i64::from(id), ts);
        // m × 16 + e must not overflow: decimals keep |m| < 2^53.
        match codec::decimal(v, MAX_WAL_DECIMALS) {
            Some((m, e)) => put_varint(&mut payload, m * 16 + e as i64),
            None => {
                put_varint(&mut payload, RAW_VALUE);
                payload.extend_from_slice(&v.to_bits().to_le_bytes());
            }
        }
    }
    if payload.len() > framing::MAX_PAYLOAD {
        return Err(EngineError::TooLarge(format!(
            "a write of {} bytes in the WAL; at most {} fit one record: send smaller batches",
            payload.len(),
            framing::MAX_PAYLOAD
        )));
    }
    framing::frame(&payload, out);
    Ok(())
}

/// One decoded batch.
pub struct Batch {
    pub new_series: Vec<Vec<u8>>,
    pub points: Vec<(SeriesId, i64, f64)>,
}

fn decode_batch(payload: &[u8], path: &Path) -> Result<Batch> {
    let bad = || EngineError::corrupt(path, "a WAL batch that does not parse");
    let word = |at: usize| -> Result<usize> {
        let b = payload.get(at..at + 4).ok_or_else(bad)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let mut at = 4;
    let mut new_series = Vec::new();
    for _ in 0..word(0)? {
        let len = word(at)?;
        new_series.push(payload.get(at + 4..at + 4 + len).ok_or_else(bad)?.to_vec());
        at += 4 + len;
    }
    let mut points = Vec::new();
    decode_points(&payload[at..], path, &mut points)?;
    Ok(Batch { new_series, points })
}

fn decode_points(payload: &[u8], path: &Path, out: &mut Vec<(SeriesId, i64, f64)>) -> Result<()> {
    let bad = || EngineError::corrupt(path, "a WAL batch whose points do not parse");
    let mut r = Reader::new(payload);
    let count = r.varint().map_err(|_| bad())?;
    // Each point takes at least three bytes: the count cannot ask for more.
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= payload.len() / 3)
        .ok_or_else(bad)?;
    out.reserve(count);
    let (mut id, mut ts) = (0i64, 0i64);
    for _ in 0..count {
        id = id
            .checked_add(r.varint().map_err(|_| bad())?)
            .ok_or_else(bad)?;
        ts = ts.wrapping_add(r.varint().map_err(|_| bad())?);
        let word = r.varint().map_err(|_| bad())?;
        let value = if word == RAW_VALUE {
            let bits: [u8; 8] = r
                .take(8)
                .map_err(|_| bad())?
                .try_into()
                .map_err(|_| bad())?;
            f64::from_bits(u64::from_le_bytes(bits))
        } else {
            let e = usize::try_from(word.rem_euclid(16)).map_err(|_| bad())?;
            codec::from_decimal(word.div_euclid(16), e)
                .filter(|_| e <= MAX_WAL_DECIMALS)
                .ok_or_else(bad)?
        };
        out.push((SeriesId::try_from(id).map_err(|_| bad())?, ts, value));
    }
    if !r.rest().is_empty() {
        return Err(bad());
    }
    Ok(())
}

pub struct Wal {
    dir: PathBuf,
    current: RecordFile,
    number: u64,
}

/// What replay found, batch by batch, with the file each came from.
pub struct Replayed {
    pub wal: Wal,
    pub batches: Vec<(PathBuf, Batch)>,
    pub torn_bytes: u64,
}

impl Wal {
    /// Replays every WAL file numbered `first` or later, then continues
    /// appending to the last one.
    pub fn open(dir: &Path, first: u64) -> Result<Replayed> {
        let mut numbers: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| EngineError::io(format!("listing {}", dir.display()), e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_name(&e.file_name().to_string_lossy()))
            .filter(|&n| n >= first)
            .collect();
        numbers.sort_unstable();
        let mut batches = Vec::new();
        let mut torn = 0;
        let mut last = None;
        for (i, &n) in numbers.iter().enumerate() {
            let path = dir.join(file_name(n));
            let recovered = framing::recover(&path, &MAGIC, VERSION)?;
            if recovered.torn_bytes > 0 && i + 1 < numbers.len() {
                return Err(EngineError::corrupt(
                    &path,
                    "damaged, and newer WAL files follow it",
                ));
            }
            torn += recovered.torn_bytes;
            for record in &recovered.records {
                batches.push((path.clone(), decode_batch(record, &path)?));
            }
            last = Some((n, recovered.valid_len));
        }
        let (number, current) = match last {
            Some((n, valid)) => (
                n,
                RecordFile::reopen(&dir.join(file_name(n)), valid, &MAGIC, VERSION)?,
            ),
            None => {
                let n = first.max(1);
                (
                    n,
                    RecordFile::create(&dir.join(file_name(n)), &MAGIC, VERSION)?,
                )
            }
        };
        Ok(Replayed {
            wal: Wal {
                dir: dir.to_path_buf(),
                current,
                number,
            },
            batches,
            torn_bytes: torn,
        })
    }

    pub fn append(&mut self, framed: &[u8]) -> Result<()> {
        self.current.append(framed)
    }

    pub fn sync(&self) -> Result<()> {
        self.current.sync()
    }

    pub fn number(&self) -> u64 {
        self.number
    }

    /// Starts a new file; returns its number. Points in earlier files are
    /// covered once a manifest naming this number as its checkpoint is durable.
    pub fn rotate(&mut self) -> Result<u64> {
        self.current.sync()?;
        let next = self.number + 1;
        self.current = RecordFile::create(&self.dir.join(file_name(next)), &MAGIC, VERSION)?;
        self.number = next;
        Ok(next)
    }

    /// Deletes files numbered below `first`.
    pub fn remove_before(&self, first: u64) -> Result<()> {
        for entry in std::fs::read_dir(&self.dir)
            .map_err(|e| EngineError::io(format!("listing {}", self.dir.display()), e))?
            .flatten()
        {
            if let Some(n) = parse_name(&entry.file_name().to_string_lossy()) {
                if n < first {
                    let path = entry.path();
                    std::fs::remove_file(&path)
                        .map_err(|e| EngineError::io(format!("removing {}", path.display()), e))?;
                }
            }
        }
        Ok(())
    }

    pub fn handle(&self) -> Result<std::fs::File> {
        self.current.try_clone_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: every value survives the WAL bit for bit (decimals and
    // the raw fallback), series and timestamps in any order and range
    // included; collector-like points take a few bytes, not 20.
    #[test]
    fn batches_round_trip_bit_for_bit() {
        let mut values = vec![23.5, 0.1, 4_294_967_296.0, -7.25];
        values.extend(codec::SPECIAL_VALUES);
        values.extend([0.1 + 0.2, f64::MAX, 9_007_199_254_740_993.0]);
        let points: Vec<(SeriesId, i64, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                (
                    (i as u32 * 7919) % 13,
                    [i64::MIN, 0, i64::MAX, -1][i % 4],
                    v,
                )
            })
            .collect();
        let mut framed = Vec::new();
        encode_batch(&[b"series".to_vec()], &points, &mut framed).expect("encode");
        // After the frame's length and checksum (framing.rs).
        let batch = decode_batch(&framed[8..], Path::new("wal")).expect("decodes");
        assert_eq!(batch.new_series, [b"series".to_vec()]);
        let bits = |p: &[(SeriesId, i64, f64)]| -> Vec<(SeriesId, i64, u64)> {
            p.iter().map(|&(id, ts, v)| (id, ts, v.to_bits())).collect()
        };
        assert_eq!(bits(&batch.points), bits(&points));

        let gauge: Vec<(SeriesId, i64, f64)> = (0..300)
            .map(|i| (i, 1_700_000_000_000_000_000, 23.5))
            .collect();
        let mut framed = Vec::new();
        encode_batch(&[], &gauge, &mut framed).expect("encode");
        assert!(framed.len() < 300 * 4 + 32, "{} bytes", framed.len());
    }
}
