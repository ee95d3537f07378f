//! Opening a data directory: back to its last durable state.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::id_set::IdSet;
use super::segments::SegmentSet;
use super::State;
use crate::error::{EngineError, IoContext, Result};
use crate::manifest::{self, Manifest};
use crate::memtable::Memtable;
use crate::series::{SeriesIndex, SERIES_LOG, SERIES_LOG_TMP};
use crate::wal::Wal;

/// The manifest's segments, the series log, and the WAL since the
/// checkpoint replayed into the memtable.
pub(super) fn recover(dir: &Path) -> Result<State> {
    let manifest = match Manifest::load(dir)? {
        Some(m) => m,
        None => {
            let m = Manifest::default();
            m.store(dir)?;
            m
        }
    };
    remove_orphans(dir, &manifest)?;
    let segments = SegmentSet::open(dir, manifest)?;
    let mut series = SeriesIndex::open(dir)?;
    let replay = Wal::open(dir, segments.wal_checkpoint)?;
    if replay.torn_bytes > 0 {
        log::warn!(
            "{}: dropped a torn WAL tail of {} bytes",
            dir.display(),
            replay.torn_bytes
        );
    }
    let mut memtable = Memtable::default();
    for (path, batch) in &replay.batches {
        for def in &batch.new_series {
            series.define(def, path)?;
        }
        for &(id, ts, v) in &batch.points {
            if !series.contains(id) {
                return Err(EngineError::corrupt(
                    path,
                    format!("unknown series id {id}"),
                ));
            }
            memtable.insert(id, ts, v);
        }
    }
    refuse_unnamed_series(&segments, &series)?;
    Ok(State {
        series,
        memtable,
        wal_file: Arc::new(replay.wal.handle()?),
        wal: replay.wal,
        segments,
        appended: 0,
        synced: 0,
        line_cache: HashMap::new(),
        broken: None,
    })
}

/// Refuses a segment that holds a series the series log does not name.
/// The engine never writes one (a series reaches the log before a
/// manifest names a segment that holds it, and is forgotten only once no
/// segment does); its points would otherwise go to whatever series is
/// next given the id.
fn refuse_unnamed_series(segments: &SegmentSet, series: &SeriesIndex) -> Result<()> {
    let mut named = IdSet::below(IdSet::bound_for(series));
    named.extend(series.ids());
    for live in segments.iter() {
        if let Some(id) = live.segment.series().find(|&id| !named.holds(id)) {
            return Err(EngineError::corrupt(
                live.segment.path(),
                format!("holds series id {id}, which {SERIES_LOG} does not name"),
            ));
        }
    }
    Ok(())
}

/// Removes files a crash left behind: segments the manifest does not name,
/// and a half-written manifest or series log.
fn remove_orphans(dir: &Path, manifest: &Manifest) -> Result<()> {
    let named: BTreeSet<&str> = manifest.segments.iter().map(|e| e.file.as_str()).collect();
    for entry in std::fs::read_dir(dir)
        .context(|| format!("listing {}", dir.display()))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let orphan = (manifest::is_segment_file(&name) && !named.contains(name.as_str()))
            || name == manifest::MANIFEST_TMP
            || name == SERIES_LOG_TMP;
        if orphan {
            log::info!("removing {name}, left by an interrupted flush, compaction or rewrite");
            let path = entry.path();
            std::fs::remove_file(&path).context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}
