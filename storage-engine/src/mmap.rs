//! Read-only memory maps of immutable segment files. The only unsafe code
//! of the engine.
//!
//! A segment smaller than a page is read into memory instead: a map of it
//! would take a whole page all the same, and one of the memory maps a
//! process may have (65,530 by default on Linux), which many small hours
//! would spend. A segment the kernel refuses to map for want of maps is
//! read too, so that running out of them slows nothing but memory.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{IoContext, Result};

/// Segments this long or longer are mapped; shorter ones are read.
const SMALLEST_MAPPED: u64 = 4096;

pub struct Mapped {
    bytes: Bytes,
}

enum Bytes {
    Empty,
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
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
            return Ok(Mapped {
                bytes: Bytes::Empty,
            });
        }
        if len < SMALLEST_MAPPED {
            return Self::read(file, len, path);
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
        match unsafe { memmap2::Mmap::map(file) } {
            Ok(map) => Ok(Mapped {
                bytes: Bytes::Mapped(map),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {
                static WARNED: AtomicBool = AtomicBool::new(false);
                if !WARNED.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "the kernel refused to map {} ({e}): segments are read into \
                         memory while maps are short (raise vm.max_map_count)",
                        path.display()
                    );
                }
                Self::read(file, len, path)
            }
            Err(e) => Err(e).context(|| format!("mapping {}", path.display())),
        }
    }

    /// The whole of `file`, `len` bytes long, read into memory (from its
    /// start, wherever its offset is).
    fn read(file: &File, len: u64, path: &Path) -> Result<Self> {
        // Refused, not aborted on: memory may be short where maps are.
        let mut buf = Vec::new();
        buf.try_reserve_exact(len as usize).map_err(|e| {
            crate::error::EngineError::io(
                format!("reading {} into memory", path.display()),
                std::io::Error::new(std::io::ErrorKind::OutOfMemory, e),
            )
        })?;
        buf.resize(len as usize, 0);
        file.read_exact_at(&mut buf, 0)
            .context(|| format!("reading {}", path.display()))?;
        Ok(Mapped {
            bytes: Bytes::Read(buf),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Empty => &[],
            Bytes::Mapped(map) => map,
            Bytes::Read(buf) => buf,
        }
    }
}
