//! JSON Lines export and import (the line format is jsonl.rs's).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::sync::Arc;

use super::merged::Merged;
use super::read::SeriesPoints;
use super::{lock, Engine};
use crate::error::{IoContext, Result};
use crate::jsonl;
use crate::model::{partition_of, SeriesId, PARTITION_NANOS};
use crate::segment::Segment;

/// Points imported per write.
const IMPORT_BATCH: usize = 10_000;

impl Engine {
    /// Streams every point as JSON Lines, partition by partition, so memory
    /// stays bounded by the memtable's points (copied out first) and a chunk
    /// of one series (`Merged`). Returns points written.
    pub fn export_json(&self, out: &mut dyn Write) -> Result<u64> {
        let (keys, mut segments, mut memory) = {
            let st = lock(&self.state);
            let keys = st.series.keys();
            let mut memory: BTreeMap<i64, BTreeMap<SeriesId, SeriesPoints>> = BTreeMap::new();
            for id in st.memtable.series_ids().collect::<Vec<_>>() {
                for (ts, v) in st.memtable.range(id, i64::MIN, i64::MAX) {
                    let in_hour = memory.entry(partition_of(ts)).or_default();
                    in_hour.entry(id).or_default().push((ts, v));
                }
            }
            let mut segments: BTreeMap<i64, Vec<Arc<Segment>>> = BTreeMap::new();
            for live in st.segments.iter() {
                let in_hour = segments.entry(live.entry.partition).or_default();
                in_hour.push(Arc::clone(&live.segment));
            }
            (keys, segments, memory)
        };
        let mut hours: BTreeSet<i64> = segments.keys().copied().collect();
        hours.extend(memory.keys());
        let mut written = 0u64;
        let mut line = Vec::with_capacity(256);
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        for hour in hours {
            // Each hour's files go as soon as it is written, not at the end.
            let segs = segments.remove(&hour).unwrap_or_default();
            let in_memory = memory.remove(&hour).unwrap_or_default();
            // Only the series this hour holds: the database's other series
            // would each cost a search in every segment of every hour.
            let mut ids: BTreeSet<SeriesId> = segs.iter().flat_map(|s| s.series()).collect();
            ids.extend(in_memory.keys());
            for id in ids {
                let Some(key) = keys.get(&id) else {
                    continue;
                };
                let mem = in_memory.get(&id).map_or(&[][..], Vec::as_slice);
                let end = hour.saturating_add(PARTITION_NANOS);
                let mut merged = Merged::new(&segs, mem, id, hour, end);
                while merged.next_chunk(&mut ts, &mut vals)? {
                    for (&t, &v) in ts.iter().zip(&vals) {
                        line.clear();
                        jsonl::encode_point(key, t, v, &mut line);
                        out.write_all(&line)
                            .context(|| "writing the export".to_string())?;
                        written += 1;
                    }
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
