//! Writing the commits an interrupted session left in the journal to their
//! files, before a read-write mount starts serving.
//!
//! A commit holds a block that an `fsync` made durable in the journal alone
//! (`journal`). The mount would write it when it first opens the file, but a
//! file it never opens would keep its older contents on disk: its times
//! would show the older file, and read-only users of the volume (a
//! read-only mount, `rotate-key --reencrypt`) would refuse it or see the
//! older contents. So after a crash that left commits, every file is
//! visited once, as `fsck --repair` does, and whatever the journal holds for
//! it is put back; commits for files that are gone are then forgotten.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustix::fs::{FileType, OFlags};

use crate::content::EncryptedFile;
use crate::error::{Result, VolumeError};
use crate::journal::Journal;
use crate::symlink_file;
use crate::tree::{self, Root, Visit, Visitor};
use crate::volume::Volume;

/// Puts back what the journal holds for every file of `volume` when it
/// holds commits; returns the files that had records. Nothing to do (0)
/// after a clean session.
pub fn replay_commits(volume: &Volume, journal: &Journal) -> Result<u64> {
    if journal.carried_commits() == 0 {
        return Ok(0);
    }
    let mut replay = Replay {
        volume,
        journal,
        files: 0,
        failed: 0,
    };
    tree::walk(
        volume.backing(),
        Root::Volume(volume.names().mode()),
        &mut replay,
    )
    .map_err(|e| {
        VolumeError::io(
            format!("replaying the journal of {}", volume.backing().display()),
            e,
        )
    })?;
    // Every file was visited: what nobody claimed belongs to files that
    // are gone. After a failure the rest waits for its file to be opened.
    if replay.failed == 0 {
        journal.forget_carried();
    }
    Ok(replay.files)
}

struct Replay<'a> {
    volume: &'a Volume,
    journal: &'a Journal,
    files: u64,
    /// Files that could not be opened or put back (logged).
    failed: u64,
}

impl Visitor for Replay<'_> {
    fn entry(&mut self, visit: &Visit) -> io::Result<()> {
        let file_form = symlink_file::is_file_form(self.volume.names().mode(), visit.stat);
        if visit.kind() != FileType::RegularFile || file_form || self.journal.carried_files() == 0 {
            return Ok(());
        }
        let label: PathBuf = self.volume.backing().join(visit.relative);
        let recovered = visit
            .open(OFlags::RDWR)
            .map_err(|e| VolumeError::io(format!("opening {}", label.display()), e))
            .and_then(|opened| {
                EncryptedFile::open(opened, Arc::clone(self.volume.crypto()), label.clone())
            })
            .and_then(|file| file.recover_from(self.journal));
        match recovered {
            Ok(Some(outcome)) => {
                self.files += 1;
                log::info!("{}: {outcome:?}", label.display());
            }
            Ok(None) => {}
            Err(e) => {
                self.failed += 1;
                log::warn!("{e}; its journal records wait until the file is opened");
            }
        }
        Ok(())
    }
}
