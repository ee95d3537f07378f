//! The manifest: which segment files make up the database, and from which
//! WAL file replay starts. Replaced only by writing a temporary file,
//! fsyncing it, renaming it over `MANIFEST` and fsyncing the directory, so a
//! crash leaves either the old or the new set, never a mixture.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::framing::replace_file;
use crate::model::partition_of;

pub const MANIFEST: &str = "MANIFEST";
/// The next manifest while it is written; renamed over `MANIFEST`.
pub const MANIFEST_TMP: &str = "MANIFEST.tmp";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentEntry {
    pub file: String,
    pub partition: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub points: u64,
    pub bytes: u64,
}

impl SegmentEntry {
    /// Whether the segment's times all lie in the hour it is recorded in:
    /// queries, compaction and retention take a segment's points to be
    /// in its partition, so one that is not (a damaged manifest) would
    /// come out of order and never be merged with its hour.
    pub fn within_its_partition(&self) -> bool {
        self.min_ts <= self.max_ts
            && partition_of(self.min_ts) == self.partition
            && partition_of(self.max_ts) == self.partition
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// Next number for a new segment file.
    pub next_file: u64,
    /// WAL files numbered below this are covered by segments.
    pub wal_checkpoint: u64,
    /// Oldest first: a later segment's point wins over an earlier one's.
    pub segments: Vec<SegmentEntry>,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            format: FORMAT,
            next_file: 1,
            wal_checkpoint: 1,
            segments: Vec::new(),
        }
    }
}

pub fn segment_name(number: u64) -> String {
    format!("seg-{number:06}.seg")
}

/// Whether `name` is what `segment_name` makes.
pub fn is_segment_file(name: &str) -> bool {
    name.strip_prefix("seg-")
        .and_then(|rest| rest.strip_suffix(".seg"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `dir` holds a database (it has a manifest), so that reading
/// commands can refuse a mistyped directory instead of creating one.
pub fn is_database(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(EngineError::io(format!("reading {}", path.display()), e)),
        };
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| EngineError::corrupt(&path, format!("unreadable: {e}")))?;
        if manifest.format != FORMAT {
            return Err(EngineError::UnsupportedVersion {
                file: path,
                found: manifest.format,
            });
        }
        if let Some(entry) = manifest.segments.iter().find(|e| !e.within_its_partition()) {
            return Err(EngineError::corrupt(
                &path,
                format!(
                    "segment {} is recorded in the hour starting at {} but holds times {}..={}; \
                     restore the database from a snapshot or an export",
                    entry.file, entry.partition, entry.min_ts, entry.max_ts
                ),
            ));
        }
        Ok(Some(manifest))
    }

    pub fn store(&self, dir: &Path) -> Result<()> {
        self.store_telling(dir).and_then(|synced| synced)
    }

    /// Like `store`, telling a failure before the new manifest took the old
    /// one's place (`Err`: nothing changed) from one after (`Ok(Err)`: it is
    /// in place, but the directory's sync failed, so a crash may still bring
    /// the old one back).
    pub fn store_telling(&self, dir: &Path) -> Result<Result<()>> {
        let tmp = dir.join(MANIFEST_TMP);
        let path = dir.join(MANIFEST);
        let body = serde_json::to_vec_pretty(self)
            .map_err(|e| EngineError::io("encoding the manifest", std::io::Error::other(e)))?;
        let (_, synced) = replace_file(&tmp, &path, &[&body])?;
        Ok(synced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: orphan removal recognises exactly the segment names this
    // build makes, never another file someone put in the directory.
    #[test]
    fn segment_names_round_trip() {
        assert!(is_segment_file(&segment_name(1)));
        assert!(is_segment_file(&segment_name(1_234_567)));
        for other in [
            "seg-.seg",
            "seg-12a.seg",
            "seg-000001.seg.bak",
            "wal-000001.log",
            "MANIFEST",
        ] {
            assert!(!is_segment_file(other), "{other}");
        }
    }
}
