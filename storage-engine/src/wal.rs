//! The write-ahead log: numbered files `wal-NNNNNN.log` of framed batches.
//! A batch is acknowledged once appended (and, under `SyncPolicy::Always`,
//! fsynced). Files older than the manifest's checkpoint are deleted after a
//! flush has made their points durable in segments.

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};
use crate::framing::{self, RecordFile};
use crate::model::SeriesId;

const MAGIC: [u8; 8] = *b"CHRWAL01";
const VERSION: u32 = 1;
const POINT_LEN: usize = 4 + 8 + 8;

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

/// Encodes one batch: the definitions of series it introduces, then
/// (series, timestamp, value) per point.
///
/// ```text
/// new_series u32 | (len u32 | definition)* | (series u32 | ts i64 | value f64 bits)*
/// ```
/// Frames one batch into `out`; refuses one larger than a record may be
/// (`framing::MAX_PAYLOAD`), which replay would take for damage.
pub fn encode_batch(
    new_series: &[Vec<u8>],
    points: &[(SeriesId, i64, f64)],
    out: &mut Vec<u8>,
) -> Result<()> {
    let mut payload = Vec::with_capacity(4 + points.len() * POINT_LEN);
    payload.extend_from_slice(&(new_series.len() as u32).to_le_bytes());
    for def in new_series {
        payload.extend_from_slice(&(def.len() as u32).to_le_bytes());
        payload.extend_from_slice(def);
    }
    for &(id, ts, v) in points {
        payload.extend_from_slice(&id.to_le_bytes());
        payload.extend_from_slice(&ts.to_le_bytes());
        payload.extend_from_slice(&v.to_bits().to_le_bytes());
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
    if !payload.len().is_multiple_of(POINT_LEN) {
        return Err(EngineError::corrupt(path, "a batch of the wrong length"));
    }
    for p in payload.chunks_exact(POINT_LEN) {
        let id = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&p[4..12]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&p[12..20]);
        out.push((
            id,
            i64::from_le_bytes(ts),
            f64::from_bits(u64::from_le_bytes(v)),
        ));
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
