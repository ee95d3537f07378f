//! The series index: every series ever written, with a dense id, kept in
//! memory. A new series is first made durable inside the WAL batch that
//! introduces it (so a batch and its series can never be separated by a
//! crash), and is appended to `series.log` (a framed record file) before any
//! segment refers to it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::framing::{self, RecordFile};
use crate::model::{SeriesId, SeriesKey};

pub const SERIES_LOG: &str = "series.log";
const MAGIC: [u8; 8] = *b"CHRSERS1";
const VERSION: u32 = 1;

pub struct SeriesIndex {
    /// Each key once, shared by `keys` and `ids` (and by the queries and
    /// exports that read them without the engine's lock).
    keys: Vec<Arc<SeriesKey>>,
    ids: HashMap<Arc<SeriesKey>, SeriesId>,
    by_metric: HashMap<String, Vec<SeriesId>>,
    log: RecordFile,
    /// Series (by id, 0..logged) already in `series.log`.
    logged: usize,
    /// Series (by id, 0..in_wal) already written into a WAL batch or log.
    in_wal: usize,
    /// Bytes of every series' name and tags (`SeriesKey::byte_len`).
    key_bytes: usize,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn encode(id: SeriesId, key: &SeriesKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&id.to_le_bytes());
    put_str(&mut out, &key.metric);
    out.extend_from_slice(&(key.tags.len() as u16).to_le_bytes());
    for (k, v) in &key.tags {
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    out
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        self.take(n)
            .and_then(|b| String::from_utf8(b.to_vec()).ok())
    }
}

pub fn decode(payload: &[u8]) -> Option<(SeriesId, SeriesKey)> {
    let mut c = Cursor(payload);
    let id = c.u32()?;
    let metric = c.string()?;
    let n = c.u16()?;
    let mut tags = Vec::with_capacity(n as usize);
    for _ in 0..n {
        tags.push((c.string()?, c.string()?));
    }
    Some((id, SeriesKey::new(metric, tags)))
}

impl SeriesIndex {
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(SERIES_LOG);
        let (keys, log) = if path.exists() {
            let recovered = framing::recover(&path, &MAGIC, VERSION)?;
            let mut keys = Vec::with_capacity(recovered.records.len());
            for record in &recovered.records {
                let (id, key) = decode(record)
                    .ok_or_else(|| EngineError::corrupt(&path, "undecodable series record"))?;
                if id as usize != keys.len() {
                    return Err(EngineError::corrupt(
                        &path,
                        format!("series id {id} out of order"),
                    ));
                }
                keys.push(key);
            }
            (
                keys,
                RecordFile::reopen(&path, recovered.valid_len, &MAGIC, VERSION)?,
            )
        } else {
            (Vec::new(), RecordFile::create(&path, &MAGIC, VERSION)?)
        };
        let mut index = SeriesIndex {
            keys: Vec::new(),
            ids: HashMap::new(),
            by_metric: HashMap::new(),
            log,
            logged: 0,
            in_wal: 0,
            key_bytes: 0,
        };
        for key in keys {
            index.insert(key);
        }
        index.logged = index.keys.len();
        index.in_wal = index.keys.len();
        Ok(index)
    }

    fn insert(&mut self, key: SeriesKey) -> SeriesId {
        let id = self.keys.len() as SeriesId;
        self.key_bytes += key.byte_len();
        self.by_metric
            .entry(key.metric.clone())
            .or_default()
            .push(id);
        let key = Arc::new(key);
        self.ids.insert(Arc::clone(&key), id);
        self.keys.push(key);
        id
    }

    /// The id of `key`, assigning a new one if it is new.
    pub fn resolve(&mut self, key: &SeriesKey) -> SeriesId {
        match self.ids.get(key) {
            Some(&id) => id,
            None => self.insert(key.clone()),
        }
    }

    /// Encoded definitions of the series not yet written to the WAL, for the
    /// batch about to be appended; they count as written from now on.
    pub fn take_unwritten(&mut self) -> Vec<Vec<u8>> {
        let out = (self.in_wal..self.keys.len())
            .map(|i| encode(i as SeriesId, &self.keys[i]))
            .collect();
        self.in_wal = self.keys.len();
        out
    }

    /// Takes back the last `n` definitions `take_unwritten` handed out,
    /// when the batch that carried them could not be appended.
    pub fn untake(&mut self, n: usize) {
        self.in_wal = self.in_wal.saturating_sub(n).max(self.logged);
    }

    /// Forgets the series resolved since the last batch was written: a
    /// request that failed part-way must leave no series behind. Returns
    /// how many were forgotten.
    pub fn forget_unwritten(&mut self) -> usize {
        let forgotten = self.keys.len() - self.in_wal;
        let mut metrics = HashSet::new();
        for key in self.keys.drain(self.in_wal..) {
            self.ids.remove(&key);
            self.key_bytes -= key.byte_len();
            metrics.insert(key.metric.clone());
        }
        // Once per metric, not once per series: a request that adds many
        // series to a large metric and then fails would otherwise take
        // time in their product, holding the engine's lock.
        for metric in metrics {
            if let Some(ids) = self.by_metric.get_mut(&metric) {
                // Ids are pushed in the order they are assigned.
                let kept = ids.partition_point(|&id| (id as usize) < self.in_wal);
                ids.truncate(kept);
                if ids.is_empty() {
                    self.by_metric.remove(&metric);
                }
            }
        }
        forgotten
    }

    /// A series definition found while replaying the WAL: new ones are
    /// added; known ones must agree.
    pub fn define(&mut self, record: &[u8], source: &Path) -> Result<()> {
        let (id, key) = decode(record)
            .ok_or_else(|| EngineError::corrupt(source, "undecodable series definition"))?;
        match (id as usize).cmp(&self.keys.len()) {
            std::cmp::Ordering::Equal => {
                self.insert(key);
                self.in_wal = self.keys.len();
                Ok(())
            }
            std::cmp::Ordering::Less if *self.keys[id as usize] == key => Ok(()),
            _ => Err(EngineError::corrupt(
                source,
                format!("series id {id} does not follow the series log"),
            )),
        }
    }

    /// Appends every series not yet in `series.log` and fsyncs it. Called
    /// before a manifest names segments that use them.
    pub fn persist(&mut self) -> Result<()> {
        if self.logged == self.keys.len() {
            return Ok(());
        }
        let mut framed = Vec::new();
        for i in self.logged..self.keys.len() {
            framing::frame(&encode(i as SeriesId, &self.keys[i]), &mut framed);
        }
        self.log.append(&framed)?;
        self.log.sync()?;
        self.logged = self.keys.len();
        Ok(())
    }

    pub fn key(&self, id: SeriesId) -> Option<&Arc<SeriesKey>> {
        self.keys.get(id as usize)
    }

    pub fn of_metric(&self, metric: &str) -> &[SeriesId] {
        self.by_metric.get(metric).map_or(&[], Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Bytes of every series' name and tags.
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    /// Series resolved since the last batch was written.
    pub fn unwritten(&self) -> usize {
        self.keys.len() - self.in_wal
    }

    pub fn metrics(&self) -> impl Iterator<Item = &String> {
        self.by_metric.keys()
    }
}
