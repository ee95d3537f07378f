//! Checking a whole volume (`fsck`): every block of every file
//! authenticated, and, when asked, what a crash left at the end of a file
//! repaired. Files are reached through `tree`, so a symlink or a swapped
//! name in BACKING can never make the check read or cut a file elsewhere.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FileType, OFlags};

use crate::content::{EncryptedFile, TailRepair};
use crate::error::{Result, VolumeError};
use crate::tree::{self, Root, Visit, Visitor};
use crate::volume::Volume;

/// What the check reports as it goes.
pub enum Event<'a> {
    /// A block, header or tail that fails authentication, in the file whose
    /// plaintext path (inside the mount) is `plain`, where names decrypt.
    Bad {
        error: &'a VolumeError,
        plain: Option<&'a Path>,
    },
    /// A crash's damage at the end of `file` was repaired.
    Repaired {
        file: &'a Path,
        what: &'a str,
        size: u64,
    },
    /// Damage in `file` that a crash does not leave: left as it is.
    NotRepaired { file: &'a Path, reason: &'a str },
    /// Another file done; its backing size.
    Progress(u64),
}

/// Totals of a check.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub files: u64,
    pub blocks: u64,
    pub failures: u64,
    pub repaired: u64,
}

/// Checks every regular file of `volume` (repairing crash tails first when
/// `repair`), telling `report` what it finds.
pub fn check_volume(
    volume: &Volume,
    repair: bool,
    report: &mut dyn FnMut(Event),
) -> Result<Summary> {
    let mut checker = Checker {
        volume,
        repair,
        report,
        summary: Summary::default(),
    };
    tree::walk(
        volume.backing(),
        Root::Volume(volume.names().mode()),
        &mut checker,
    )
    .map_err(|e| VolumeError::io(format!("checking {}", volume.backing().display()), e))?;
    Ok(checker.summary)
}

struct Checker<'a, 'r> {
    volume: &'a Volume,
    repair: bool,
    report: &'r mut dyn FnMut(Event),
    summary: Summary,
}

impl Visitor for Checker<'_, '_> {
    fn entry(&mut self, visit: &Visit) -> io::Result<()> {
        if visit.kind() != FileType::RegularFile {
            return Ok(());
        }
        self.check_file(visit).map_err(io::Error::other)
    }
}

impl Checker<'_, '_> {
    fn check_file(&mut self, visit: &Visit) -> Result<()> {
        self.summary.files += 1;
        let flags = if self.repair {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        let label: PathBuf = self.volume.backing().join(visit.relative);
        let opened = visit
            .open(flags)
            .map_err(|e| VolumeError::io(format!("opening {}", label.display()), e))?;
        let file = EncryptedFile::open(opened, Arc::clone(self.volume.crypto()), label.clone())?;
        if self.repair {
            match file.repair_tail()? {
                TailRepair::Clean => {}
                TailRepair::Repaired { what, size } => {
                    self.summary.repaired += 1;
                    (self.report)(Event::Repaired {
                        file: &label,
                        what: &what,
                        size,
                    });
                }
                TailRepair::NotACrash { reason } => (self.report)(Event::NotRepaired {
                    file: &label,
                    reason: &reason,
                }),
            }
        }
        let mut bad = Vec::new();
        self.summary.blocks += file.verify_each(|e| bad.push(e))?;
        if !bad.is_empty() {
            self.summary.failures += bad.len() as u64;
            let plain = self.volume.plain_path(visit.relative).ok();
            for error in &bad {
                (self.report)(Event::Bad {
                    error,
                    plain: plain.as_deref(),
                });
            }
        }
        (self.report)(Event::Progress(
            u64::try_from(visit.stat.st_size).unwrap_or(0),
        ));
        Ok(())
    }
}
