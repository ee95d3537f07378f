//! JSON Lines export and import (the line format is jsonl.rs's).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::Arc;

use super::read::{read_merged, SeriesPoints};
use super::{lock, Engine};
use crate::error::{IoContext, Result};
use crate::jsonl;
use crate::model::{partition_of, SeriesId, SeriesKey, PARTITION_NANOS};
use crate::segment::Segment;

/// Points imported per write.
const IMPORT_BATCH: usize = 10_000;

impl Engine {
    /// Streams every point as JSON Lines, partition by partition, so memory
    /// stays bounded by one partition of one series. Returns points written.
    pub fn export_json(&self, out: &mut dyn Write) -> Result<u64> {
        let (keys, sources, memory_partitions) = {
            let st = lock(&self.state);
            let keys: Vec<(SeriesId, SeriesKey)> = (0..st.series.len() as SeriesId)
                .filter_map(|id| st.series.key(id).map(|k| (id, k.clone())))
                .collect();
            let mut partitions: BTreeMap<i64, Vec<(SeriesId, SeriesPoints)>> = BTreeMap::new();
            for id in st.memtable.series_ids().collect::<Vec<_>>() {
                for (ts, v) in st.memtable.range(id, i64::MIN, i64::MAX) {
                    let list = partitions.entry(partition_of(ts)).or_default();
                    match list.last_mut() {
                        Some((last, pts)) if *last == id => pts.push((ts, v)),
                        _ => list.push((id, vec![(ts, v)])),
                    }
                }
            }
            let sources: Vec<(i64, Arc<Segment>)> = st
                .segments
                .iter()
                .map(|l| (l.entry.partition, Arc::clone(&l.segment)))
                .collect();
            (keys, sources, partitions)
        };
        let mut all: std::collections::BTreeSet<i64> = sources.iter().map(|(p, _)| *p).collect();
        all.extend(memory_partitions.keys());
        let mut written = 0u64;
        let mut line = Vec::with_capacity(256);
        for partition in all {
            let segs: Vec<Arc<Segment>> = sources
                .iter()
                .filter(|(p, _)| *p == partition)
                .map(|(_, s)| Arc::clone(s))
                .collect();
            let memory = memory_partitions.get(&partition);
            for (id, key) in &keys {
                let mem: &[(i64, f64)] = memory
                    .and_then(|m| m.iter().find(|(i, _)| i == id))
                    .map_or(&[], |(_, p)| p.as_slice());
                let points = read_merged(
                    &segs,
                    mem,
                    *id,
                    partition,
                    partition.saturating_add(PARTITION_NANOS),
                )?;
                for (ts, v) in points {
                    line.clear();
                    jsonl::encode_point(key, ts, v, &mut line);
                    out.write_all(&line)
                        .context(|| "writing the export".to_string())?;
                    written += 1;
                }
            }
        }
        out.flush().context(|| "writing the export".to_string())?;
        Ok(written)
    }

    /// Reads JSON Lines (as `export_json` writes them) in batches.
    pub fn import_json(&self, input: &mut dyn BufRead) -> Result<u64> {
        let mut batch = Vec::with_capacity(IMPORT_BATCH);
        let mut total = 0u64;
        let mut line = String::new();
        let mut line_no = 0u64;
        loop {
            line.clear();
            let n = input
                .read_line(&mut line)
                .context(|| "reading the import".to_string())?;
            if n == 0 {
                break;
            }
            line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            batch.push(jsonl::decode_point(&line, line_no)?);
            if batch.len() == IMPORT_BATCH {
                self.write(&batch)?;
                total += batch.len() as u64;
                batch.clear();
            }
        }
        self.write(&batch)?;
        total += batch.len() as u64;
        Ok(total)
    }
}
