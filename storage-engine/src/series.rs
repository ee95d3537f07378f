//! The series index: every series the database holds, with its id, kept in
//! memory. A new series is first made durable inside the WAL batch that
//! introduces it (so a batch and its series can never be separated by a
//! crash), and is appended to `series.log` (a framed record file) before any
//! segment refers to it.
//!
//! A series that retention left without points is forgotten (`forget`):
//! a tombstone naming its id is appended to `series.log` (which is
//! rewritten whole, without the forgotten, once it holds more than twice
//! the records it needs), so that a churn of series (a container's id in a
//! tag) does not fill `max_series` for good. Its id is not given again
//! while the database stays open (a query that found the id before it was
//! forgotten may still look it up); ids free in the log when the database
//! is opened are given first (`FreeIds`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::framing::{self, RecordFile};
use crate::model::{SeriesId, SeriesKey};

pub const SERIES_LOG: &str = "series.log";
/// The next `series.log` while it is written; renamed over it.
pub const SERIES_LOG_TMP: &str = "series.log.tmp";
const MAGIC: [u8; 8] = *b"CHRSERS1";
/// Version 2: ids in any order, tombstones (version 1 had ids dense).
const VERSION: u32 = 2;
/// Records past twice the series held that the log may hold before it is
/// rewritten: a tombstone costs 12 bytes, a rewrite the whole log.
const REWRITE_SLACK: usize = 65_536;

pub struct SeriesIndex {
    /// Each key once (a log or WAL that gives one two ids is refused),
    /// shared by `keys` and `ids` (and by the queries and exports that read
    /// them without the engine's lock).
    keys: HashMap<SeriesId, Arc<SeriesKey>>,
    ids: HashMap<Arc<SeriesKey>, SeriesId>,
    /// A metric's series with their keys (a query goes through them all,
    /// so it finds each key beside its id), in the order they were given
    /// their ids.
    by_metric: HashMap<String, Vec<(SeriesId, Arc<SeriesKey>)>>,
    log: RecordFile,
    /// Series in a WAL batch but not yet in `series.log`, in order.
    unlogged: Vec<(SeriesId, Arc<SeriesKey>)>,
    /// Series resolved since the last batch was written, in order.
    unwritten: Vec<(SeriesId, Arc<SeriesKey>)>,
    free: FreeIds,
    /// Records in `series.log`: definitions and tombstones.
    log_records: usize,
    /// `REWRITE_SLACK`; tests lower it to reach a rewrite with few series.
    rewrite_slack: usize,
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

/// The id a tombstone names: a record of the id alone (a definition is
/// at least eight bytes).
fn decode_tombstone(payload: &[u8]) -> Option<SeriesId> {
    let id: [u8; 4] = payload.try_into().ok()?;
    Some(SeriesId::from_le_bytes(id))
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
        let (records, log) = if path.exists() {
            let recovered = framing::recover(&path, &MAGIC, VERSION)?;
            let log = RecordFile::reopen(&path, recovered.valid_len, &MAGIC, VERSION)?;
            (recovered.records, log)
        } else {
            (Vec::new(), RecordFile::create(&path, &MAGIC, VERSION)?)
        };
        let mut index = SeriesIndex {
            keys: HashMap::with_capacity(records.len()),
            ids: HashMap::with_capacity(records.len()),
            by_metric: HashMap::new(),
            log,
            unlogged: Vec::new(),
            unwritten: Vec::new(),
            free: FreeIds::default(),
            log_records: records.len(),
            rewrite_slack: REWRITE_SLACK,
            key_bytes: 0,
        };
        for record in &records {
            if let Some(id) = decode_tombstone(record) {
                // Forgotten; a later record may give the id again.
                index.remove(id);
                continue;
            }
            let (id, key) = decode(record)
                .ok_or_else(|| EngineError::corrupt(&path, "undecodable series record"))?;
            // A record appended again (after a sync that failed) is the
            // same series: only a disagreement is corrupt.
            if let Some(clash) = index.clash(id, &key) {
                return Err(EngineError::corrupt(&path, clash));
            }
            if !index.keys.contains_key(&id) {
                index.add(id, key);
            }
        }
        drop(records);
        // Listed by metric, and ids taken, once the log's last word on each
        // is known: a tombstone goes over its metric's list only once.
        let mut live: Vec<(SeriesId, Arc<SeriesKey>)> = index
            .keys
            .iter()
            .map(|(id, key)| (*id, Arc::clone(key)))
            .collect();
        live.sort_unstable_by_key(|(id, _)| *id);
        for (id, key) in live {
            index.list(id, key);
        }
        // A rewritten log's rename reaches the disk before any new series
        // takes an id it freed (as the WAL may name it).
        framing::sync_dir(dir)?;
        Ok(index)
    }

    /// Why the series `id` = `key` cannot join the index: the id names
    /// another series, or the series has another id.
    fn clash(&self, id: SeriesId, key: &SeriesKey) -> Option<String> {
        match (self.keys.get(&id), self.ids.get(key)) {
            (Some(known), _) if **known != *key => Some(format!("series id {id} names two series")),
            (_, Some(&other)) if other != id => {
                Some(format!("a series has two ids ({other} and {id})"))
            }
            _ => None,
        }
    }

    /// A new series, listed under its metric, its id taken.
    fn insert(&mut self, id: SeriesId, key: SeriesKey) -> Arc<SeriesKey> {
        let key = self.add(id, key);
        self.list(id, Arc::clone(&key));
        key
    }

    /// A new series by id and by key (not yet listed under its metric).
    fn add(&mut self, id: SeriesId, key: SeriesKey) -> Arc<SeriesKey> {
        self.key_bytes += key.byte_len();
        let key = Arc::new(key);
        self.ids.insert(Arc::clone(&key), id);
        self.keys.insert(id, Arc::clone(&key));
        key
    }

    /// Lists the series under its metric, and takes its id.
    fn list(&mut self, id: SeriesId, key: Arc<SeriesKey>) {
        self.free.claim(id);
        self.by_metric
            .entry(key.metric.clone())
            .or_default()
            .push((id, key));
    }

    /// Removes `id`'s series from memory, returning its key.
    fn remove(&mut self, id: SeriesId) -> Option<Arc<SeriesKey>> {
        let key = self.keys.remove(&id)?;
        if let Some((shared, other)) = self.ids.remove_entry(&key) {
            if other != id {
                // Never in an index that refuses a series two ids.
                self.ids.insert(shared, other);
            }
        }
        self.key_bytes -= key.byte_len();
        Some(key)
    }

    /// The id of `key`, assigning a new one if it is new. Fails only when
    /// every id has been given since the database was opened (ids of
    /// series forgotten meanwhile included): over four billion series.
    pub fn resolve(&mut self, key: &SeriesKey) -> Result<SeriesId> {
        if let Some(&id) = self.ids.get(key) {
            return Ok(id);
        }
        let id = self.free.take().ok_or_else(|| {
            EngineError::Limit(
                "every series id has been given since the database was opened: open it \
                 again to reuse the ids of series retention forgot"
                    .into(),
            )
        })?;
        let key = self.insert(id, key.clone());
        self.unwritten.push((id, key));
        Ok(id)
    }

    /// Encoded definitions of the series not yet written to the WAL, for the
    /// batch about to be appended; they count as written from now on.
    pub fn take_unwritten(&mut self) -> Vec<Vec<u8>> {
        let out = self
            .unwritten
            .iter()
            .map(|(id, key)| encode(*id, key))
            .collect();
        self.unlogged.append(&mut self.unwritten);
        out
    }

    /// Takes back the last `n` definitions `take_unwritten` handed out,
    /// when the batch that carried them could not be appended.
    pub fn untake(&mut self, n: usize) {
        let back = self
            .unlogged
            .split_off(self.unlogged.len().saturating_sub(n));
        self.unwritten.splice(0..0, back);
    }

    /// Forgets the series resolved since the last batch was written: a
    /// request that failed part-way must leave no series behind. Their ids
    /// are given again (nothing outside the engine's lock saw them).
    /// Returns how many were forgotten.
    pub fn forget_unwritten(&mut self) -> usize {
        let forgotten = std::mem::take(&mut self.unwritten);
        let mut per_metric: HashMap<String, usize> = HashMap::new();
        for (id, key) in &forgotten {
            self.remove(*id);
            *per_metric.entry(key.metric.clone()).or_default() += 1;
            self.free.give_back(*id);
        }
        // Once per metric, not once per series: a request that adds many
        // series to a large metric and then fails would otherwise take
        // time in their product, holding the engine's lock. A metric's ids
        // are pushed in the order they are given, so these are its last.
        for (metric, count) in per_metric {
            if let Some(ids) = self.by_metric.get_mut(&metric) {
                ids.truncate(ids.len().saturating_sub(count));
                if ids.is_empty() {
                    self.by_metric.remove(&metric);
                }
            }
        }
        forgotten.len()
    }

    /// A series definition found while replaying the WAL: new ones are
    /// added; known ones must agree.
    pub fn define(&mut self, record: &[u8], source: &Path) -> Result<()> {
        let (id, key) = decode(record)
            .ok_or_else(|| EngineError::corrupt(source, "undecodable series definition"))?;
        if let Some(clash) = self.clash(id, &key) {
            return Err(EngineError::corrupt(source, clash));
        }
        if !self.keys.contains_key(&id) {
            let key = self.insert(id, key);
            self.unlogged.push((id, key));
        }
        Ok(())
    }

    /// Appends every series not yet in `series.log` and fsyncs it. Called
    /// before a manifest names segments that use them.
    pub fn persist(&mut self) -> Result<()> {
        if self.unlogged.is_empty() {
            return Ok(());
        }
        let mut framed = Vec::new();
        for (id, key) in &self.unlogged {
            framing::frame(&encode(*id, key), &mut framed);
        }
        self.log.append(&framed)?;
        self.log.sync()?;
        self.log_records += self.unlogged.len();
        self.unlogged.clear();
        Ok(())
    }

    /// Forgets the series `dead` (no segment and no point in memory holds
    /// them): appends their tombstones to `series.log` (or rewrites it
    /// without them, once it would hold more than twice the records it
    /// needs), then drops them from the index. Their ids are not given
    /// again while the database stays open. `Err`: the log was not
    /// changed, and nothing is forgotten.
    pub fn forget(&mut self, dead: &[SeriesId]) -> Result<Forgotten> {
        // Between writes nothing is unwritten (a write that panicked
        // part-way has its series dropped by the engine's `lock`).
        debug_assert_eq!(self.unwritten(), 0, "forget during a write");
        let dead: HashSet<SeriesId> = dead.iter().copied().collect();
        let dead_ids: Vec<SeriesId> = dead
            .iter()
            .copied()
            .filter(|&id| self.contains(id))
            .collect();
        let kept = self.keys.len() - dead_ids.len();
        let rewritten = self.log_records + dead_ids.len() > 2 * kept + self.rewrite_slack;
        let synced = match rewritten {
            true => self.rewrite_without(&dead)?,
            false => self.append_tombstones(&dead_ids),
        };
        // None is waiting there (its points would keep it), but a
        // definition appended after its tombstone would bring it back.
        self.unlogged.retain(|(id, _)| !dead.contains(id));
        let keys: Vec<Arc<SeriesKey>> = dead_ids.iter().filter_map(|&id| self.remove(id)).collect();
        let metrics: HashSet<&str> = keys.iter().map(|k| k.metric.as_str()).collect();
        for metric in metrics {
            if let Some(ids) = self.by_metric.get_mut(metric) {
                ids.retain(|(id, _)| !dead.contains(id));
                if ids.is_empty() {
                    self.by_metric.remove(metric);
                }
            }
        }
        Ok(Forgotten {
            keys,
            rewritten,
            synced,
        })
    }

    /// Appends a tombstone for each of `dead` and syncs them. A failure
    /// may leave some of them in the log: the caller forgets them all the
    /// same (the log's last word wins at the next open) and takes no more
    /// writes (`Forgotten::synced`).
    fn append_tombstones(&mut self, dead: &[SeriesId]) -> Result<()> {
        let mut framed = Vec::with_capacity(dead.len() * (framing::FRAME_OVERHEAD + 4));
        for id in dead {
            framing::frame(&id.to_le_bytes(), &mut framed);
        }
        self.log.append(&framed)?;
        self.log_records += dead.len();
        self.log.sync()
    }

    /// Replaces the log with one of every series but `dead`. `Err`: the old
    /// log is in place; `Ok(Err)`: the new one is, but the directory's sync
    /// failed.
    fn rewrite_without(&mut self, dead: &HashSet<SeriesId>) -> Result<Result<()>> {
        let mut kept: Vec<SeriesId> = self.ids().filter(|id| !dead.contains(id)).collect();
        kept.sort_unstable();
        let mut framed = Vec::with_capacity(kept.len() * 48);
        for id in &kept {
            framing::frame(&encode(*id, &self.keys[id]), &mut framed);
        }
        let tmp = self.log.path().with_file_name(SERIES_LOG_TMP);
        let synced = self.log.replace(&tmp, &MAGIC, VERSION, &framed)?;
        // Every series kept is in the new log: none waits to be appended.
        self.unlogged.clear();
        self.log_records = kept.len();
        Ok(synced)
    }

    pub fn contains(&self, id: SeriesId) -> bool {
        self.keys.contains_key(&id)
    }

    /// One past the highest id given or named since opening: every
    /// series' id is below it.
    pub fn id_bound(&self) -> u64 {
        self.free.next
    }

    /// Every series' id, in no order.
    pub fn ids(&self) -> impl Iterator<Item = SeriesId> + '_ {
        self.keys.keys().copied()
    }

    /// Every series' key by id (shared, not copied: a million keys cost a
    /// million pointers), for a reader that works without the lock.
    pub fn keys(&self) -> HashMap<SeriesId, Arc<SeriesKey>> {
        self.keys.clone()
    }

    pub fn of_metric(&self, metric: &str) -> &[(SeriesId, Arc<SeriesKey>)] {
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
        self.unwritten.len()
    }

    pub fn metrics(&self) -> impl Iterator<Item = &String> {
        self.by_metric.keys()
    }
}

/// What `SeriesIndex::forget` did.
pub struct Forgotten {
    /// The keys forgotten: the caller drops them once the engine's lock is
    /// released (freeing a million keys takes a second).
    pub keys: Vec<Arc<SeriesKey>>,
    /// Whether the log was rewritten (rather than given tombstones).
    pub rewritten: bool,
    /// `Err`: the log may not say so after a crash (the tombstones' sync,
    /// or the directory's after a rewrite, failed): the caller takes no
    /// more writes until the database is opened again.
    pub synced: Result<()>,
}

/// The ids a new series may take: first those that were free when the
/// database was opened (gaps the log left, lowest first; ids forgotten
/// while it is open are not among them), then every id above the highest
/// given.
#[derive(Default)]
struct FreeIds {
    /// Free ranges below `next`, start → end (exclusive).
    gaps: BTreeMap<u64, u64>,
    /// Every id from here up is free.
    next: u64,
}

impl FreeIds {
    fn take(&mut self) -> Option<SeriesId> {
        if let Some((start, end)) = self.gaps.pop_first() {
            if start + 1 < end {
                self.gaps.insert(start + 1, end);
            }
            return Some(start as SeriesId);
        }
        let id = SeriesId::try_from(self.next).ok()?;
        self.next += 1;
        Some(id)
    }

    /// Marks `id` as given (a series of the log or the WAL).
    fn claim(&mut self, id: SeriesId) {
        let id = u64::from(id);
        if id >= self.next {
            if id > self.next {
                self.gaps.insert(self.next, id);
            }
            self.next = id + 1;
            return;
        }
        let Some((&start, &end)) = self.gaps.range(..=id).next_back() else {
            return;
        };
        if id < end {
            self.gaps.remove(&start);
            if start < id {
                self.gaps.insert(start, id);
            }
            if id + 1 < end {
                self.gaps.insert(id + 1, end);
            }
        }
    }

    /// An id `take` gave that nothing ever saw: free again.
    fn give_back(&mut self, id: SeriesId) {
        let id = u64::from(id);
        self.gaps.insert(id, id + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SeriesKey {
        SeriesKey::new("cpu", vec![("host".into(), name.into())])
    }

    /// `names` resolved and written into a batch, then into the log.
    fn logged(index: &mut SeriesIndex, names: &[&str]) -> Vec<SeriesId> {
        let ids = names
            .iter()
            .map(|n| index.resolve(&key(n)).expect("resolve"))
            .collect();
        index.take_unwritten();
        index.persist().expect("persist");
        ids
    }

    /// An index of `names`, the series `dead` among them forgotten, then
    /// opened again.
    fn reopened_after_forgetting(dir: &Path, names: &[&str], dead: &[SeriesId]) -> SeriesIndex {
        let mut index = SeriesIndex::open(dir).expect("open");
        logged(&mut index, names);
        let forgotten = index.forget(dead).expect("rewritten");
        forgotten.synced.expect("synced");
        drop(index);
        SeriesIndex::open(dir).expect("reopen")
    }

    /// The ids listed under the metric `cpu`, checked against their keys.
    fn metric_ids(index: &SeriesIndex) -> Vec<SeriesId> {
        let listed = index.of_metric("cpu").iter();
        listed
            .map(|(id, key)| {
                assert_eq!(index.keys.get(id), Some(key), "series {id}'s key");
                *id
            })
            .collect()
    }

    /// The log's records: `+ID` a definition, `-ID` a tombstone.
    fn log_records(dir: &Path) -> Vec<String> {
        let recovered = framing::recover(&dir.join(SERIES_LOG), &MAGIC, VERSION).expect("log");
        let records = recovered.records.iter();
        records
            .map(|r| match decode_tombstone(r) {
                Some(id) => format!("-{id}"),
                None => format!("+{}", decode(r).expect("record").0),
            })
            .collect()
    }

    // Protects: forgotten series leave memory and, by tombstones, the log;
    // their ids are not given again while the index is open (a query may
    // still hold one), and are given first once it is opened again.
    #[test]
    fn forgotten_ids_come_back_only_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut index = SeriesIndex::open(dir.path()).expect("open");
        assert_eq!(logged(&mut index, &["a", "b", "c", "d"]), [0, 1, 2, 3]);
        index
            .forget(&[0, 2])
            .expect("tombstones")
            .synced
            .expect("synced");
        assert_eq!((index.len(), metric_ids(&index)), (2, vec![1, 3]));
        assert!(!index.contains(0) && !index.contains(2));
        let mut tombstoned = log_records(dir.path());
        tombstoned[4..].sort();
        assert_eq!(tombstoned, ["+0", "+1", "+2", "+3", "-0", "-2"]);
        assert_eq!(logged(&mut index, &["e", "a"]), [4, 5]);
        assert_eq!(log_records(dir.path())[6..], ["+4", "+5"]);
        drop(index);

        let mut index = SeriesIndex::open(dir.path()).expect("reopen");
        assert_eq!(index.len(), 4);
        assert_eq!(index.resolve(&key("b")).expect("known"), 1);
        assert_eq!(logged(&mut index, &["f", "g", "h"]), [0, 2, 6]);
    }

    // Protects: a request that fails part-way gives back the ids it took,
    // from the gaps as from the top, and leaves its metric as it was.
    #[test]
    fn a_failed_request_gives_its_ids_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut index = reopened_after_forgetting(dir.path(), &["a", "b", "c"], &[1]);
        for name in ["x", "y"] {
            index.resolve(&key(name)).expect("resolve");
        }
        assert_eq!(metric_ids(&index), [0, 2, 1, 3]);
        assert_eq!(index.forget_unwritten(), 2);
        assert_eq!(metric_ids(&index), [0, 2]);
        assert_eq!(index.resolve(&key("x")).expect("resolve"), 1);
    }

    // Protects: replaying the WAL accepts a series in a gap of the log (an
    // id given again after reopening) and refuses an id that names another
    // series than the log does, or one the log gives twice.
    #[test]
    fn definitions_must_agree_with_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut index = reopened_after_forgetting(dir.path(), &["a", "b", "c"], &[1]);
        let wal = Path::new("wal-000001.log");
        index.define(&encode(1, &key("new")), wal).expect("a gap");
        index.define(&encode(9, &key("far")), wal).expect("above");
        index.define(&encode(0, &key("a")), wal).expect("agrees");
        let clash = index.define(&encode(2, &key("other")), wal);
        assert!(clash.is_err_and(|e| e.to_string().contains("series id 2")));
        let clash = index.define(&encode(7, &key("a")), wal);
        assert!(clash.is_err_and(|e| e.to_string().contains("two ids (0 and 7)")));
        assert_eq!(logged(&mut index, &["z"]), [3]);
        drop(index);

        let with_records = |records: &[(SeriesId, &str)]| {
            let mut bytes = framing::header(&MAGIC, VERSION).to_vec();
            for (id, name) in records {
                framing::frame(&encode(*id, &key(name)), &mut bytes);
            }
            std::fs::write(dir.path().join(SERIES_LOG), bytes).expect("write");
            SeriesIndex::open(dir.path()).map(|index| index.len())
        };
        // A record appended again after a failed sync is the same series.
        assert_eq!(
            with_records(&[(0, "a"), (1, "b"), (0, "a")]).expect("open"),
            2
        );
        let two_series = with_records(&[(0, "a"), (1, "b"), (0, "c")]);
        assert!(two_series.is_err_and(|e| e.to_string().contains("series id 0 names two")));
        let two_ids = with_records(&[(0, "a"), (1, "b"), (2, "a")]);
        assert!(two_ids.is_err_and(|e| e.to_string().contains("two ids (0 and 2)")));
    }

    // Protects: the log is rewritten without the forgotten (and their
    // tombstones) once it would hold more than twice the records it needs,
    // not before.
    #[test]
    fn a_log_past_twice_its_series_is_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut index = SeriesIndex::open(dir.path()).expect("open");
        index.rewrite_slack = 0;
        logged(&mut index, &["a", "b", "c", "d"]);
        index
            .forget(&[0])
            .expect("tombstone")
            .synced
            .expect("synced");
        assert_eq!(
            log_records(dir.path()).len(),
            5,
            "4 + 1 records for 3 series"
        );
        index
            .forget(&[1])
            .expect("rewritten")
            .synced
            .expect("synced");
        assert_eq!(log_records(dir.path()), ["+2", "+3"]);
        assert!(!dir.path().join(SERIES_LOG_TMP).exists());
        drop(index);
        assert_eq!(SeriesIndex::open(dir.path()).expect("reopen").len(), 2);
    }

    // Protects: a rewrite of the log that fails forgets nothing (the log
    // still names the series, so memory must too: a series written again
    // keeps its id, and never gets a second one in the log).
    #[test]
    fn a_failed_rewrite_forgets_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut index = SeriesIndex::open(dir.path()).expect("open");
        index.rewrite_slack = 0;
        logged(&mut index, &["a", "b"]);
        // In a WAL batch, not yet in the log: it must reach the log still.
        index.resolve(&key("in-wal")).expect("resolve");
        index.take_unwritten();
        std::fs::create_dir(dir.path().join(SERIES_LOG_TMP)).expect("in the way");
        assert!(index.forget(&[0, 1]).is_err());
        assert_eq!((index.len(), metric_ids(&index)), (3, vec![0, 1, 2]));
        assert_eq!(logged(&mut index, &["a", "c"]), [0, 3]);
        assert_eq!(log_records(dir.path()), ["+0", "+1", "+2", "+3"]);
        std::fs::remove_dir(dir.path().join(SERIES_LOG_TMP)).expect("out of the way");
        index
            .forget(&[0, 1])
            .expect("rewritten")
            .synced
            .expect("synced");
        drop(index);
        let index = SeriesIndex::open(dir.path()).expect("reopen");
        assert_eq!(log_records(dir.path()), ["+2", "+3"]);
        assert_eq!(index.len(), 2);
    }

    // Protects: ids run out only when every one is given, and the gaps a
    // log far from dense leaves are given first, lowest first.
    #[test]
    fn free_ids_fill_gaps_then_the_top() {
        let mut free = FreeIds::default();
        for id in [5, 2, SeriesId::MAX - 1] {
            free.claim(id);
        }
        let taken: Vec<_> = (0..5).map(|_| free.take().expect("id")).collect();
        assert_eq!(taken, [0, 1, 3, 4, 6]);
        free.give_back(3);
        assert_eq!(free.take(), Some(3));
        let mut full = FreeIds {
            next: u64::from(SeriesId::MAX),
            ..FreeIds::default()
        };
        assert_eq!(full.take(), Some(SeriesId::MAX));
        assert_eq!(full.take(), None);
    }
}
