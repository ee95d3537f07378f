//! The file's modification time as the mount keeps it: the time the
//! kernel set (with write-back caching the kernel keeps a file's times and
//! sends them before every `fsync`), which a commit records without
//! reading the backing file's times (`crate::untimed`), and the time put
//! back after a crash.

use super::EncryptedFile;
use crate::error::{Result, VolumeError};
use crate::journal::Mtime;

impl EncryptedFile {
    /// The file's modification time: as the mount last set it for the
    /// kernel (`kernel_mtime`), else as the backing file holds it.
    pub(super) fn current_mtime(&self) -> Result<Mtime> {
        match self.kernel_mtime() {
            Some(mtime) => Ok(mtime),
            None => self.stored_mtime(),
        }
    }

    /// The modification time the mount last set for the kernel
    /// (`set_kernel_mtime`), while no write has come since.
    fn kernel_mtime(&self) -> Option<Mtime> {
        let set = *self.mtime_set.lock().unwrap_or_else(|p| p.into_inner());
        set.and_then(|(changes, mtime)| (changes == self.changes()).then_some(mtime))
    }

    /// The backing file's modification time as stored (reading it marks
    /// the file's times as read: `crate::untimed`).
    pub(super) fn stored_mtime(&self) -> Result<Mtime> {
        let stat = rustix::fs::fstat(&self.file).map_err(|e| {
            VolumeError::io(
                format!("examining {}", self.backing_path().display()),
                e.into(),
            )
        })?;
        Ok(crate::untimed::mtime_of(&stat))
    }

    /// Sets the backing file's modification time after commits were put
    /// back: the later of the file's own and the newest commit's (a
    /// commit's time is the file's at a sync). A failure costs the time
    /// only, so it is logged.
    pub(super) fn set_mtime(&self, mtime: Mtime) {
        if let Err(e) = rustix::fs::futimens(&self.file, &mtime.as_modification_time()) {
            log::warn!(
                "{}: could not set the modification time a sync left: {e}",
                self.backing_path().display()
            );
        }
    }

    /// Sets the backing file's modification time to `mtime` by `set` for
    /// the kernel, which keeps a file's times itself with write-back
    /// caching (a program sees the kernel's, and the kernel sends it
    /// before every `fsync`), and remembers it: a commit records it without
    /// reading the backing file's times, until a write of the backing file
    /// comes. Held blocks written in place later give the backing file the
    /// time of their writing, as any write does: whoever copies BACKING by
    /// modification time sees that its bytes changed.
    pub fn set_kernel_mtime<E>(
        &self,
        mtime: Mtime,
        set: impl FnOnce() -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        // Taken first: a write meanwhile voids the time.
        let changes = self.changes();
        set()?;
        *self.mtime_set.lock().unwrap_or_else(|p| p.into_inner()) = Some((changes, mtime));
        Ok(())
    }
}
