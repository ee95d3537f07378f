//! Checking a whole volume (`fsck`): every block of every file
//! authenticated, and, when asked, what a crash left at the end of a file
//! repaired. Files are reached through `tree`, so a symlink or a swapped
//! name in BACKING can never make the check read or cut a file elsewhere.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FileType, OFlags};

use crate::content::{EncryptedFile, TailRepair};
use crate::error::{Result, VolumeError};
use crate::journal::Journal;
use crate::names::{DirKey, NameError};
use crate::symlink_file;
use crate::tree::{self, Root, Visit, Visitor};
use crate::volume::{name_error, Volume};

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
    /// A name, id record or long name's file that this user may not read
    /// (permission denied): not checked, and not reported as a forgery.
    Unreadable { error: &'a VolumeError },
    /// Another file done; its backing size.
    Progress(u64),
}

/// Totals of a check.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub files: u64,
    pub blocks: u64,
    pub failures: u64,
    /// Names that could not be read (`Event::Unreadable`).
    pub unreadable: u64,
    pub repaired: u64,
}

/// Checks every regular file of `volume` (repairing crash tails first when
/// `repair`), telling `report` what it finds.
pub fn check_volume(
    volume: &Volume,
    repair: bool,
    report: &mut dyn FnMut(Event),
) -> Result<Summary> {
    // Repair puts back, first, the blocks a crash tore while the journal
    // held copies of them; a check alone changes nothing, journal included.
    let journal = match repair {
        true => Some(Journal::open(volume.backing())?),
        false => None,
    };
    let mut checker = Checker {
        volume,
        journal: journal.as_ref(),
        report,
        summary: Summary::default(),
        keys: HashMap::new(),
    };
    if !repair {
        checker.report_pending_commits()?;
    }
    tree::walk(
        volume.backing(),
        Root::Volume(volume.names().mode()),
        &mut checker,
    )
    .map_err(|e| VolumeError::io(format!("checking {}", volume.backing().display()), e))?;
    // Every file was visited: copies nobody claimed belong to files that
    // are gone or were never torn.
    if let Some(journal) = &journal {
        journal.forget_carried();
    }
    Ok(checker.summary)
}

struct Checker<'a, 'r> {
    volume: &'a Volume,
    /// Set when repairing.
    journal: Option<&'a Journal>,
    report: &'r mut dyn FnMut(Event),
    summary: Summary,
    /// Name keys of the directories on the current path (by backing path).
    keys: HashMap<PathBuf, Option<DirKey>>,
}

impl Visitor for Checker<'_, '_> {
    fn entry(&mut self, visit: &Visit) -> io::Result<()> {
        self.check_name(visit);
        let file_form = symlink_file::is_file_form(self.volume.names().mode(), visit.stat);
        if visit.kind() != FileType::RegularFile || file_form {
            return Ok(());
        }
        self.check_file(visit).map_err(io::Error::other)
    }

    fn leave_dir(&mut self, visit: &Visit) -> io::Result<()> {
        self.keys.remove(visit.relative);
        Ok(())
    }
}

impl Checker<'_, '_> {
    /// Every name, directory id record and symlink target authenticates
    /// (with encrypted names); a failure counts as one bad item.
    fn check_name(&mut self, visit: &Visit) {
        let names = Arc::clone(self.volume.names());
        let parent = visit
            .relative
            .parent()
            .unwrap_or(Path::new(""))
            .to_path_buf();
        let key = match self.keys.get(&parent) {
            Some(key) => *key,
            None => {
                let key = match names.dir_key(visit.dir) {
                    Ok(key) => Some(key),
                    Err(e) => {
                        self.name_failed(e, &self.volume.backing().join(&parent));
                        None
                    }
                };
                self.keys.insert(parent.clone(), key);
                key
            }
        };
        let Some(key) = key else {
            return;
        };
        let in_root = parent.as_os_str().is_empty();
        if let Some(Err(e)) = names.decode(visit.dir, &key, visit.name, in_root) {
            self.name_failed(e, &self.volume.backing().join(visit.relative));
            return;
        }
        let shown = self.volume.backing().join(visit.relative);
        let target = if symlink_file::is_file_form(names.mode(), visit.stat) {
            visit
                .open(OFlags::RDONLY)
                .map_err(|e| VolumeError::io("opening a symlink", e))
                .and_then(|f| symlink_file::read(f, self.volume.crypto(), shown.clone()))
                .map(OsString::from_vec)
        } else if visit.kind() == FileType::Symlink {
            visit
                .read_link()
                .map_err(|e| VolumeError::io("reading a symlink", e))
        } else {
            return;
        };
        match target {
            Ok(stored) => {
                if let Err(e) = names.open_target(&stored) {
                    self.bad(name_error(e, &shown));
                }
            }
            Err(e) => self.bad(e),
        }
    }

    /// Blocks synced through the journal and not yet in their files: the
    /// files read older than the syncs left them until a repair (or a
    /// read-write mount) writes them.
    fn report_pending_commits(&mut self) -> Result<()> {
        let backing = self.volume.backing();
        let pending = Journal::pending_commits(backing)?;
        if let Some(e) = Journal::commits_waiting(backing, pending) {
            self.bad(e);
        }
        Ok(())
    }

    /// A name that did not authenticate is bad; one that this user may not
    /// read is told apart (a wrong owner is not a forgery). Any other
    /// error counts as bad: someone who can write BACKING could delete a
    /// long name's file or put a symlink or FIFO there, which a crash
    /// never leaves.
    fn name_failed(&mut self, e: NameError, at: &Path) {
        let denied = [Some(libc::EACCES), Some(libc::EPERM)];
        let unreadable = matches!(&e, NameError::Io(io) if denied.contains(&io.raw_os_error()));
        let error = name_error(e, at);
        match unreadable {
            true => {
                self.summary.unreadable += 1;
                (self.report)(Event::Unreadable { error: &error });
            }
            false => self.bad(error),
        }
    }

    fn bad(&mut self, error: VolumeError) {
        self.summary.failures += 1;
        (self.report)(Event::Bad {
            error: &error,
            plain: None,
        });
    }

    fn check_file(&mut self, visit: &Visit) -> Result<()> {
        self.summary.files += 1;
        let flags = if self.journal.is_some() {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        let label: PathBuf = self.volume.backing().join(visit.relative);
        let opened = visit
            .open(flags)
            .map_err(|e| VolumeError::io(format!("opening {}", label.display()), e))?;
        let file = EncryptedFile::open(opened, Arc::clone(self.volume.crypto()), label.clone())?;
        if let Some(journal) = self.journal {
            let recovered = file.recover_from(journal)?;
            let outcome = match recovered {
                Some(outcome) => outcome,
                None => file.repair_tail()?,
            };
            match outcome {
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
