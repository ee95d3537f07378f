//! The data directory's exclusive lock: `DIR/LOCK`, held with `flock` for
//! the life of the engine, so a second process gets a clear error instead
//! of corrupting the files.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{EngineError, IoContext, Result};

pub const LOCK_FILE: &str = "LOCK";

pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(EngineError::Locked {
                    dir: dir.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(EngineError::io(format!("locking {}", path.display()), e))
            }
        }
        // The holder's pid, for people looking at the directory.
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(DirLock { _file: file })
    }
}
