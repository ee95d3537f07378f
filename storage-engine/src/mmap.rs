//! Read-only memory maps of immutable segment files. The only unsafe code
//! of the engine.
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

use crate::error::{IoContext, Result};

pub struct Mapped {
    map: Option<memmap2::Mmap>,
}

impl Mapped {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).context(|| format!("opening {}", path.display()))?;
        Self::of(&file, path)
    }

    /// Maps `file` (open for reading), which is the segment at `path`.
    pub fn of(file: &File, path: &Path) -> Result<Self> {
        let len = file
            .metadata()
            .context(|| format!("examining {}", path.display()))?
            .len();
        if len == 0 {
            return Ok(Mapped { map: None });
        }
        // SAFETY: segment files are immutable once written and synced, which
        // is before they are mapped (a new segment is mapped through the
        // descriptor that wrote it, after `sync_all`; the mapping is
        // read-only whatever the descriptor allows): the engine never
        // writes or truncates them afterwards, and
        // the data directory's exclusive lock keeps other chronicle
        // processes out. A file removed while mapped stays mapped until
        // dropped. Another program truncating it would be a SIGBUS; that is
        // outside what the lock can prevent and is documented.
        let map = unsafe { memmap2::Mmap::map(file) }
            .context(|| format!("mapping {}", path.display()))?;
        Ok(Mapped { map: Some(map) })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}
