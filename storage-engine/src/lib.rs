//! Chronicle's embedded time-series engine.
//!
//! Durable writes through a checksummed WAL, compressed immutable segments
//! (decimal values as packed integers, else Gorilla XOR; zstd) read
//! through mmap, aggregating queries, compaction, retention, snapshots and
//! JSON Lines export/import. It uses only ordinary files, so it runs the same on a
//! plain directory and on a chronicle mount.

mod bits;
mod codec;
mod counters;
pub mod engine;
pub mod error;
mod framing;
pub mod gorilla;
mod intpack;
pub mod jsonl;
pub mod lineproto;
mod lock;
pub mod manifest;
mod memtable;
mod mmap;
pub mod model;
pub mod query;
pub mod segment;
mod series;
pub mod timefmt;
pub mod wal;
pub mod workload;

pub use counters::Activity;
pub use engine::{
    CompactStats, Engine, Options, Retention, Stats, DEFAULT_MAX_PARTITIONS, DEFAULT_MAX_SERIES,
    MAPS_PER_PARTITION,
};
pub use error::{EngineError, Result};
pub use model::{Point, SeriesKey};
pub use query::{Aggregate, Query, QueryResult, TagFilter};
pub use wal::SyncPolicy;
