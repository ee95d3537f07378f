//! Forgetting the series that no point is left of, once retention has
//! dropped the hours that held them: out of memory and out of `series.log`,
//! so that series that come and go (a container's id in a tag) do not fill
//! `max_series` for good.

use std::collections::HashSet;

use super::id_set::IdSet;
use super::{lock, Engine};
use crate::error::{EngineError, Result};
use crate::model::SeriesId;
use crate::series::SERIES_LOG;

impl Engine {
    /// Forgets every series that no segment and no point in memory holds;
    /// returns how many. The segments' indexes are read without the
    /// engine's lock; only what came meanwhile (new segments, the memtable)
    /// is read, and the series log told, under it.
    pub fn forget_unused_series(&self) -> Result<u64> {
        self.forget_unused_series_with(|| {})
    }

    /// `forget_unused_series`, calling `meanwhile` once the segments it
    /// began with are read and before it takes the lock again: tests use
    /// it to write, flush and compact in between.
    #[doc(hidden)]
    pub fn forget_unused_series_with(&self, meanwhile: impl FnOnce()) -> Result<u64> {
        let (seen, bound) = {
            let st = lock(&self.state);
            let seen: Vec<_> = st.segments.iter().cloned().collect();
            (seen, IdSet::bound_for(&st.series))
        };
        let mut used = IdSet::below(bound);
        for live in &seen {
            used.extend(live.segment.series());
        }
        let seen: HashSet<&str> = seen.iter().map(|l| l.entry.file.as_str()).collect();
        meanwhile();
        let mut st = lock(&self.state);
        let locked = std::time::Instant::now();
        if let Some(why) = &st.broken {
            return Err(EngineError::Broken(why.clone()));
        }
        // Segments retired meanwhile were counted (which only keeps more);
        // those made meanwhile, by flushes and compactions, are counted now.
        for live in st.segments.iter() {
            if !seen.contains(live.entry.file.as_str()) {
                used.extend(live.segment.series());
            }
        }
        used.extend(st.memtable.series_ids());
        let dead: Vec<SeriesId> = st.series.ids().filter(|&id| !used.holds(id)).collect();
        if dead.is_empty() {
            return Ok(0);
        }
        let forgotten = st.series.forget(&dead)?;
        // The cache may name the forgotten ids. It and the keys are freed
        // once the lock is released: a million of each take a second.
        let line_cache = std::mem::take(&mut st.line_cache);
        if let Err(e) = forgotten.synced {
            st.broken = Some(format!(
                "the series log may not keep what was forgotten through a crash ({e}); open \
                 the database again"
            ));
            return Err(e);
        }
        let how = match forgotten.rewritten {
            true => format!("rewritten with the {} others", st.series.len()),
            false => "given their tombstones".to_string(),
        };
        log::info!(
            "{}: forgot {} series no point is left of; {SERIES_LOG} {how} ({} ms with writes \
             held)",
            self.dir.display(),
            dead.len(),
            locked.elapsed().as_millis()
        );
        drop(st);
        drop((forgotten.keys, line_cache));
        self.counters.forgot(dead.len() as u64);
        Ok(dead.len() as u64)
    }
}
