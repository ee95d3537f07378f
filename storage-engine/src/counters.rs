//! What an engine has done since it was opened, for a server's metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Shared by the engine and its background syncer.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    wal_syncs: AtomicU64,
    flushes: AtomicU64,
    compactions: AtomicU64,
    series_forgotten: AtomicU64,
}

/// A reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// fsyncs of the WAL (one may cover many writers: group commit).
    pub wal_syncs: u64,
    /// Memtables written out as segments.
    pub flushes: u64,
    /// Compactions that merged at least one partition.
    pub compactions: u64,
    /// Series forgotten once retention left them without points.
    pub series_forgotten: u64,
}

impl Counters {
    pub(crate) fn wal_synced(&self) {
        self.wal_syncs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn flushed(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn compacted(&self) {
        self.compactions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn forgot(&self, series: u64) {
        self.series_forgotten.fetch_add(series, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> Activity {
        Activity {
            wal_syncs: self.wal_syncs.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            compactions: self.compactions.load(Ordering::Relaxed),
            series_forgotten: self.series_forgotten.load(Ordering::Relaxed),
        }
    }
}
