//! Re-encrypting a volume under a new master key, so that a crash at any
//! point leaves one whole volume and the next run finishes the job.
//!
//! The new volume is built beside the old one (`BACKING.chronicle-reencrypt`)
//! and, once complete, marked (`chronicle.volume.reencrypted` inside it) and
//! swapped with the old one in a single `renameat2(RENAME_EXCHANGE)`. Then
//! the old volume, now beside, is deleted and the mark removed.
//!
//! An interrupted run is told apart by what it left:
//! - BACKING carries the mark: the swap happened; finish (delete the old
//!   volume beside it, remove the mark).
//! - otherwise a directory beside BACKING is an unfinished copy: roll it
//!   back (delete it) and copy again. BACKING itself was never touched, and
//!   anything written to it since is in the new copy.
//!
//! Whoever can write BACKING can put a mark there, so a mark is believed
//! only as far as it proves: it names the old volume's id and carries a MAC
//! under the new volume's master key. A mark that fails its MAC is refused;
//! a genuine mark whose old volume is not the one beside BACKING (one kept
//! from an earlier re-encryption and put back) is refused too; and a mark
//! with nothing beside it to delete finishes nothing: the run goes on to
//! re-encrypt as asked, since doing a re-encryption twice costs time and
//! skipping one leaves a key the operator meant to retire in use.

use std::ffi::{CStr, OsStr};
use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::config::VolumeConfig;
use crate::error::{IoContext, Result, VolumeError};
use crate::keys::{KdfParams, UserKey};
use crate::lock::KeyLock;
use crate::transfer::{self, Copied, Source};
use crate::volume::Volume;

/// The mark a complete new volume carries until the old one is gone.
pub const MARK_NAME: &str = "chronicle.volume.reencrypted";

/// The mark's bytes: what it replaced (`Replaced`), then the MAC.
const MARK_LEN: usize = REPLACED_LEN + 32;

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Re-encrypted everything; `rolled_back` if an unfinished copy of an
    /// earlier run was deleted first.
    Done { copied: Copied, rolled_back: bool },
    /// An earlier run had swapped the volumes; this one finished it.
    Finished,
    /// An earlier run had done everything: the volume opens with the new key.
    AlreadyDone,
}

/// Where the new volume is built: a sibling of `backing`.
pub fn staging_path(backing: &Path) -> Result<PathBuf> {
    let name = backing.file_name().ok_or_else(|| {
        VolumeError::io(
            format!("{} has no directory name", backing.display()),
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        )
    })?;
    let mut staging = name.to_os_string();
    staging.push(".chronicle-reencrypt");
    Ok(backing.with_file_name(staging))
}

/// Re-encrypts the volume in `backing` (not mounted) under a new master key
/// wrapped by `new_key`. `progress` hears of the plaintext bytes copied.
pub fn reencrypt(
    backing: &Path,
    old_key: &UserKey,
    new_key: &UserKey,
    kdf: Option<KdfParams>,
    progress: &mut dyn FnMut(u64),
) -> Result<Outcome> {
    let backing = crate::volume::resolve_named_dir(backing)?;
    let staging = staging_path(&backing)?;
    refuse_unswappable(&backing)?;
    // Whoever owns BACKING's parent (a user, when root re-encrypts the
    // user's volume) can rename what is in it at any moment: BACKING and
    // the new volume beside it are reached through the parent, never
    // through a symlink, and checked to be the directories they were.
    let beside = Beside::open(&backing, &staging)?;
    let dir = beside.backing()?;
    let lock = crate::lock::VolumeLock::acquire_in(dir.as_fd(), &backing, Duration::ZERO)?;
    if is_unfinished(dir.as_fd()).context(|| format!("examining {}", backing.display()))?
        && finish(&backing, &beside, &lock, old_key, new_key, Swapped::Earlier)? == Finish::Finished
    {
        return Ok(Outcome::Finished);
    }
    let rolled_back = beside.staging_exists()?;
    if rolled_back {
        beside.remove_unfinished_copy()?;
    }
    let old = match Volume::open(&backing, old_key) {
        // A run that was stopped after it finished: nothing left to do.
        Err(VolumeError::KeyMismatch)
            if !rolled_back && Volume::open(&backing, new_key).is_ok() =>
        {
            return Ok(Outcome::AlreadyDone);
        }
        other => other?,
    };
    if old.root_id() != identity(dir.as_fd(), &backing)? {
        return Err(VolumeError::Changed { path: backing });
    }
    // The copy reads files as BACKING holds them.
    crate::journal::Journal::refuse_pending_commits(&backing)?;
    // The key lock is taken again before the swap: whatever would keep it
    // from being taken then is found now, not after hours of copying.
    drop(KeyLock::acquire(dir.as_fd(), &backing)?);
    let new = Volume::init(&staging, new_key, kdf, old.config().features())?;
    refuse_unless_ours_alone(&new)?;
    give_new_volume_to_owner(&new, dir.as_fd())?;
    let copied = transfer::copy_tree(&backing, Source::Volume(&old), &new, progress)?;
    // A new key given to the volume while it was copied (`rotate-key`
    // takes no volume lock) would be dropped by the swap without a word:
    // the configuration must still be the one the copy began with, and
    // stay so until the swap (`KeyLock`, which `rotate-key` takes too).
    let key_lock = KeyLock::acquire(dir.as_fd(), &backing)?;
    if VolumeConfig::load_in(dir.as_fd(), &backing)? != *old.config() {
        drop(key_lock);
        if let Err(e) = beside.remove_staging_if(new.root_id()) {
            log::warn!("removing the copy {}: {e}", staging.display());
        }
        return Err(VolumeError::Changed { path: backing });
    }
    // The volume lock is a file in each directory: once they are swapped,
    // BACKING's is the new volume's, held from now on so that no mount or
    // repair starts while the old volume is deleted.
    let staging_dir = new.open_root()?;
    let new_volume_lock =
        crate::lock::VolumeLock::acquire_in(staging_dir.as_fd(), &staging, Duration::ZERO)?;
    let was = rustix::fs::fstat(&dir)
        .map_err(|e| VolumeError::io(format!("examining {}", backing.display()), e.into()))?;
    let replaced = Replaced::of(old.config(), &was);
    mark(staging_dir.as_fd(), &staging, &new, replaced)?;
    beside.swap()?;
    drop(key_lock);
    let here = Swapped::Here {
        old: old.root_id(),
        new: new.root_id(),
        replaced,
    };
    finish(&backing, &beside, &new_volume_lock, old_key, new_key, here)?;
    Ok(Outcome::Done {
        copied,
        rolled_back,
    })
}

/// A directory's device and inode.
fn identity(dir: BorrowedFd<'_>, shown: &Path) -> Result<(u64, u64)> {
    let stat = rustix::fs::fstat(dir)
        .map_err(|e| VolumeError::io(format!("examining {}", shown.display()), e.into()))?;
    Ok((stat.st_dev, stat.st_ino))
}

/// BACKING's parent, open, with the names of BACKING and of the new volume
/// beside it: everything a re-encryption does beside BACKING goes through
/// here.
struct Beside<'a> {
    parent: OwnedFd,
    /// The parent's file system: nothing of another is deleted.
    dev: u64,
    backing: &'a Path,
    staging: &'a Path,
    backing_name: std::ffi::CString,
    staging_name: std::ffi::CString,
}

impl<'a> Beside<'a> {
    fn open(backing: &'a Path, staging: &'a Path) -> Result<Self> {
        let invalid = || {
            VolumeError::io(
                format!("{} has no parent directory", backing.display()),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            )
        };
        let parent = backing.parent().ok_or_else(invalid)?;
        let c_name = |name: Option<&OsStr>| {
            name.and_then(|n| std::ffi::CString::new(n.as_bytes()).ok())
                .ok_or_else(invalid)
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let parent_fd = rustix::fs::open(parent, flags, Mode::empty())
            .map_err(|e| VolumeError::io(format!("opening {}", parent.display()), e.into()))?;
        let dev = identity(parent_fd.as_fd(), parent)?.0;
        Ok(Beside {
            parent: parent_fd,
            dev,
            backing,
            staging,
            backing_name: c_name(backing.file_name())?,
            staging_name: c_name(staging.file_name())?,
        })
    }

    /// BACKING, which must be a directory.
    fn backing(&self) -> Result<OwnedFd> {
        self.open_dir(&self.backing_name, self.backing)?
            .ok_or_else(|| {
                VolumeError::io(
                    self.backing.display().to_string(),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })
    }

    /// The directory beside BACKING, if there is one.
    fn staging(&self) -> Result<Option<OwnedFd>> {
        self.open_dir(&self.staging_name, self.staging)
    }

    fn staging_exists(&self) -> Result<bool> {
        let nofollow = AtFlags::SYMLINK_NOFOLLOW;
        match rustix::fs::statat(&self.parent, self.staging_name.as_c_str(), nofollow) {
            Ok(_) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(VolumeError::io(
                format!("examining {}", self.staging.display()),
                e.into(),
            )),
        }
    }

    /// Deletes the unfinished copy an earlier run left beside BACKING. It
    /// is a directory that the run made and nobody else could write (it
    /// becomes the volume's only after the swap): as root, anything else
    /// there (a user's own directory renamed to that name, holding what
    /// the user could not delete) is refused, not deleted.
    fn remove_unfinished_copy(&self) -> Result<()> {
        let Some(dir) = self.staging()? else {
            return Ok(());
        };
        let stat = rustix::fs::fstat(&dir).map_err(|e| {
            VolumeError::io(format!("examining {}", self.staging.display()), e.into())
        })?;
        if rustix::process::geteuid().is_root() && !crate::lock::is_roots_alone(&stat) {
            return Err(VolumeError::io(
                self.staging.display().to_string(),
                std::io::Error::other(format!(
                    "not root's alone (owner uid {}, mode {:o}), so it may not be an \
                     unfinished copy of this command's; nothing was deleted: check it, move \
                     it away, and run again",
                    stat.st_uid,
                    stat.st_mode & 0o7777
                )),
            ));
        }
        self.remove(dir)
    }

    /// Deletes the directory beside BACKING if it is still the one with
    /// device and inode `id`.
    fn remove_staging_if(&self, id: (u64, u64)) -> Result<()> {
        match self.staging()? {
            Some(dir) if identity(dir.as_fd(), self.staging)? == id => self.remove(dir),
            _ => Ok(()),
        }
    }

    /// Deletes the directory beside BACKING that is open as `dir`: what is
    /// in it through that descriptor (the one checked), then the name,
    /// which only goes if it still names an empty directory.
    fn remove(&self, dir: OwnedFd) -> Result<()> {
        let removing =
            |e: std::io::Error| VolumeError::io(format!("removing {}", self.staging.display()), e);
        if identity(dir.as_fd(), self.staging)?.0 != self.dev {
            return Err(removing(std::io::Error::other(
                "on another file system (a mount point?); not removed",
            )));
        }
        crate::remove::remove_contents(dir.as_fd(), self.dev, &[]).map_err(removing)?;
        match rustix::fs::unlinkat(
            &self.parent,
            self.staging_name.as_c_str(),
            AtFlags::REMOVEDIR,
        ) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(removing(e.into())),
        }
    }

    fn open_dir(&self, name: &CStr, shown: &Path) -> Result<Option<OwnedFd>> {
        crate::remove::open_dir_at(self.parent.as_fd(), name, shown)
    }

    /// Exchanges BACKING and the directory beside it atomically, durably.
    fn swap(&self) -> Result<()> {
        rustix::fs::renameat_with(
            &self.parent,
            self.backing_name.as_c_str(),
            &self.parent,
            self.staging_name.as_c_str(),
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(|e| {
            VolumeError::io(
                format!(
                    "swapping {} and {}",
                    self.backing.display(),
                    self.staging.display()
                ),
                e.into(),
            )
        })?;
        self.sync()
    }

    fn sync(&self) -> Result<()> {
        let shown = self.backing.parent().unwrap_or(self.backing);
        sync_fd(&self.parent, shown)
    }
}

/// The new volume's directory must be this run's alone until the swap:
/// one that someone else made at its name first (`init` accepts an empty
/// directory) would put the re-encrypted volume, the only copy once the
/// old one is deleted, in their hands.
fn refuse_unless_ours_alone(new: &Volume) -> Result<()> {
    let staging = new.backing();
    let dir = new.open_root()?;
    let stat = rustix::fs::fstat(&dir)
        .map_err(|e| VolumeError::io(format!("examining {}", staging.display()), e.into()))?;
    let me = rustix::process::geteuid().as_raw();
    if stat.st_uid != me || stat.st_mode & 0o077 != 0 {
        return Err(VolumeError::io(
            staging.display().to_string(),
            std::io::Error::other(format!(
                "made by someone else meanwhile (owner uid {}, mode {:o}); nothing was \
                 copied: move it away and run again",
                stat.st_uid,
                stat.st_mode & 0o7777
            )),
        ));
    }
    Ok(())
}

/// When root re-encrypts another user's volume: the files `init` made in
/// the new volume's root (its configuration, its root's id record) go to
/// BACKING's owner, who could not open the volume otherwise. Done while the
/// new volume's directory is root's alone (finishing gives it BACKING's
/// owner, after the swap), so nobody else can have put anything there.
fn give_new_volume_to_owner(new: &Volume, backing: BorrowedFd<'_>) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let staging = new.backing();
    let owner = rustix::fs::fstat(backing)
        .map_err(|e| VolumeError::io(format!("examining {}", staging.display()), e.into()))?;
    if owner.st_uid == 0 {
        return Ok(());
    }
    let dir = new.open_root()?;
    for name in [crate::config::CONFIG_NAME, crate::name_cipher::DIR_ID_NAME] {
        let shown = staging.join(name);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
            Ok(file) => {
                let to = (owner.st_uid, owner.st_gid);
                crate::lock::give_to(&fs::File::from(file), to, &shown)?
            }
            // A volume with plaintext names has no id records.
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => {
                return Err(VolumeError::io(
                    format!("opening {}", shown.display()),
                    e.into(),
                ))
            }
        }
    }
    Ok(())
}

/// Whether the backing directory open as `dir` holds the mark of a
/// re-encryption stopped after its swap (the mark itself, never what a
/// link there points to; only its absence means no).
pub fn is_unfinished(dir: BorrowedFd<'_>) -> std::io::Result<bool> {
    match rustix::fs::statat(dir, MARK_NAME, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The swap is a rename beside BACKING: it cannot cross file systems, so
/// BACKING must not be a mount point; and keeping every owner needs root.
/// Both are checked before hours of copying, not after.
fn refuse_unswappable(backing: &Path) -> Result<()> {
    let refuse =
        |why: String| VolumeError::io(why, std::io::Error::from(std::io::ErrorKind::Unsupported));
    let here = rustix::fs::stat(backing)
        .map_err(|e| VolumeError::io(format!("examining {}", backing.display()), e.into()))?;
    if let Some(parent) = backing.parent() {
        let above = rustix::fs::stat(parent)
            .map_err(|e| VolumeError::io(format!("examining {}", parent.display()), e.into()))?;
        if above.st_dev != here.st_dev {
            return Err(refuse(format!(
                "{} is a mount point: re-encryption builds the new volume beside it and swaps the two with a rename, which cannot cross file systems; keep the volume in a directory inside the mounted file system, or `chronicle encrypt` a plaintext copy into a new volume",
                backing.display()
            )));
        }
    }
    if !rustix::process::geteuid().is_root() {
        let (_, others) = owners(backing)?;
        if others > 0 {
            return Err(refuse(format!(
                "{others} entries in {} belong to other users, whose ownership only root can keep; run as root",
                backing.display()
            )));
        }
    }
    Ok(())
}

/// Entries under `backing`, and how many belong to someone other than the
/// caller.
fn owners(backing: &Path) -> Result<(u64, u64)> {
    use crate::tree::{Root, Visit, Visitor};
    struct Count(u64, u64, u32);
    impl Visitor for Count {
        fn entry(&mut self, visit: &Visit) -> std::io::Result<()> {
            self.0 += 1;
            if visit.stat.st_uid != self.2 {
                self.1 += 1;
            }
            Ok(())
        }
    }
    let mut count = Count(0, 0, rustix::process::geteuid().as_raw());
    let mode = crate::config::VolumeConfig::load(backing)?.name_mode();
    crate::tree::walk(backing, Root::Volume(mode), &mut count)
        .map_err(|e| VolumeError::io(format!("examining {}", backing.display()), e))?;
    Ok((count.0, count.1))
}

/// Which volume a mark says was replaced: its id, its directory's inode
/// (what is found beside BACKING after the swap must be that very
/// directory, not one holding a copy of its configuration; device numbers
/// are left out, since they may change across a reboot), and the
/// directory's owner and mode, which the new volume's directory takes when
/// the re-encryption finishes, whether or not the old one is still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Replaced {
    volume_id: [u8; 16],
    ino: u64,
    uid: u32,
    gid: u32,
    mode: u32,
}

/// Bytes of `Replaced` in a mark.
const REPLACED_LEN: usize = 16 + 8 + 4 + 4 + 4;

impl Replaced {
    /// The volume `old`, whose directory has status `dir`.
    fn of(old: &VolumeConfig, dir: &rustix::fs::Stat) -> Replaced {
        Replaced {
            volume_id: old.volume_id,
            ino: dir.st_ino,
            uid: dir.st_uid,
            gid: dir.st_gid,
            mode: dir.st_mode & 0o7777,
        }
    }

    fn unsigned(&self) -> [u8; REPLACED_LEN] {
        let mut bytes = [0u8; REPLACED_LEN];
        bytes[..16].copy_from_slice(&self.volume_id);
        bytes[16..24].copy_from_slice(&self.ino.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.uid.to_le_bytes());
        bytes[28..32].copy_from_slice(&self.gid.to_le_bytes());
        bytes[32..].copy_from_slice(&self.mode.to_le_bytes());
        bytes
    }

    fn parse(bytes: &[u8; REPLACED_LEN]) -> Replaced {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        Replaced {
            volume_id: bytes[..16].try_into().expect("16 bytes"),
            ino: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
            uid: u32_at(24),
            gid: u32_at(28),
            mode: u32_at(32),
        }
    }

    /// Gives the new volume's directory, open as `dir`, the old one's
    /// owner (as root) and mode, durably.
    fn hand_over(&self, dir: BorrowedFd<'_>) -> std::io::Result<()> {
        if rustix::process::geteuid().is_root() {
            let uid = rustix::fs::Uid::from_raw(self.uid);
            let gid = rustix::fs::Gid::from_raw(self.gid);
            rustix::fs::fchown(dir, Some(uid), Some(gid))?;
        }
        // After chown, which clears set-user-id bits.
        rustix::fs::fchmod(dir, Mode::from_raw_mode(self.mode))?;
        Ok(rustix::fs::fsync(dir)?)
    }
}

/// Marks the new volume, open as `dir` (`staging` names it), complete,
/// durably: what it replaces and the MAC that binds that to it.
fn mark(dir: BorrowedFd<'_>, staging: &Path, new: &Volume, old: Replaced) -> Result<()> {
    let path = staging.join(MARK_NAME);
    let mut bytes = [0u8; MARK_LEN];
    bytes[..REPLACED_LEN].copy_from_slice(&old.unsigned());
    bytes[REPLACED_LEN..].copy_from_slice(&mark_tag(new, &old));
    // A new file, never what a name planted there leads to: the copy may
    // have given the new volume's directory to a user already.
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut file = rustix::fs::openat(dir, MARK_NAME, flags, Mode::from_raw_mode(0o600))
        .map(fs::File::from)
        .map_err(|e| VolumeError::io(format!("creating {}", path.display()), e.into()))?;
    std::io::Write::write_all(&mut file, &bytes)
        .and_then(|()| file.sync_all())
        .context(|| format!("writing {}", path.display()))?;
    rustix::fs::fsync(dir)
        .map_err(|e| VolumeError::io(format!("syncing {}", staging.display()), e.into()))
}

/// HKDF-SHA256 of the new volume's master key over its id and what it
/// replaced: a MAC nobody without that key can make.
fn mark_tag(new: &Volume, old: &Replaced) -> [u8; 32] {
    let derived = new.crypto().master().derive(&[
        b"chronicle reencryption mark v3",
        &new.config().volume_id,
        &old.unsigned(),
    ]);
    *derived.as_bytes()
}

/// What the mark in the backing directory open as `dir` says was
/// replaced, once its MAC proves that a re-encryption into `new` wrote it.
fn read_mark(dir: BorrowedFd<'_>, backing: &Path, new: &Volume) -> Result<Replaced> {
    use std::io::Read;
    let path = backing.join(MARK_NAME);
    let planted = |why: &str| VolumeError::ForeignMark {
        path: path.clone(),
        why: why.to_string(),
    };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = match rustix::fs::openat(dir, MARK_NAME, flags, Mode::empty()) {
        Ok(file) => fs::File::from(file),
        Err(rustix::io::Errno::LOOP) => return Err(planted("it is a symlink")),
        Err(e) => {
            return Err(VolumeError::io(
                format!("opening {}", path.display()),
                e.into(),
            ))
        }
    };
    if !file
        .metadata()
        .context(|| format!("examining {}", path.display()))?
        .is_file()
    {
        return Err(planted("it is not a regular file"));
    }
    let mut bytes = Vec::with_capacity(MARK_LEN);
    file.take(MARK_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .context(|| format!("reading {}", path.display()))?;
    if bytes.len() != MARK_LEN {
        return Err(planted("it is not a mark's size"));
    }
    let old = Replaced::parse(bytes[..REPLACED_LEN].try_into().expect("length checked"));
    if !crate::keys::constant_time_eq(&mark_tag(new, &old), &bytes[REPLACED_LEN..]) {
        return Err(planted("its MAC does not verify under this volume's key"));
    }
    Ok(old)
}

/// Which run swapped the volumes that `finish` finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Swapped {
    /// This one, a moment ago: the mark is its own, the old volume is
    /// the directory that was BACKING before the swap and the new one the
    /// directory this run made (their devices and inodes), whatever has
    /// been done to the mark since.
    Here {
        old: (u64, u64),
        new: (u64, u64),
        replaced: Replaced,
    },
    /// An earlier run, as far as its mark proves.
    Earlier,
}

/// What finishing leaves to the run.
#[derive(Debug, PartialEq, Eq)]
enum Finish {
    /// The re-encryption is complete: report it finished.
    Finished,
    /// Go on and re-encrypt as asked: nothing beside BACKING was the old
    /// volume (an earlier finish deleted it before its mark, or the mark
    /// is an old one put back), or the old key still opens the volume.
    GoOn,
}

/// After the swap: the new volume is in `backing`; delete the old one
/// beside it and the mark.
///
/// Whoever owns BACKING's parent (a user, when root re-encrypts the
/// user's volume) can rename what is in it at any moment, so everything
/// beside BACKING is reached through one descriptor of the parent, opened
/// without following symlinks, checked, and deleted through descriptors.
fn finish(
    backing: &Path,
    beside: &Beside<'_>,
    lock: &crate::lock::VolumeLock,
    old_key: &UserKey,
    new_key: &UserKey,
    swapped: Swapped,
) -> Result<Finish> {
    let mark = backing.join(MARK_NAME);
    let staging = beside.staging;
    // The new key must open what is now in place before anything is deleted.
    let new = match Volume::open(backing, new_key) {
        Err(VolumeError::KeyMismatch) if Volume::open(backing, old_key).is_ok() => {
            return Err(VolumeError::ForeignMark {
                path: mark,
                why: "the new key does not open this volume and the old one does, so no \
                      re-encryption to the new key swapped it in; if an earlier run to another \
                      key stopped after its swap, give that run's keys"
                    .to_string(),
            })
        }
        other => other?,
    };
    // Opened here, after the swap: a descriptor from before it would be
    // the old volume's directory. It must be the directory just opened.
    let dir = beside.backing()?;
    if identity(dir.as_fd(), backing)? != new.root_id() {
        return Err(VolumeError::Changed {
            path: backing.to_path_buf(),
        });
    }
    let old = beside.staging()?;
    let (is_old_volume, replaced) = match (swapped, &old) {
        (
            Swapped::Here {
                old: was,
                new: made,
                replaced,
            },
            Some(old),
        ) => {
            if new.root_id() != made || identity(old.as_fd(), staging)? != was {
                return Err(VolumeError::io(
                    staging.display().to_string(),
                    std::io::Error::other(
                        "BACKING or the directory beside it was replaced during the swap; \
                         nothing was deleted: check both by hand",
                    ),
                ));
            }
            (true, replaced)
        }
        (Swapped::Here { .. }, None) => {
            return Err(VolumeError::io(
                staging.display().to_string(),
                std::io::Error::other(
                    "gone after the swap, before this run deleted it; run the same command \
                     again to finish",
                ),
            ))
        }
        (Swapped::Earlier, Some(old)) => {
            let replaced = read_mark(dir.as_fd(), backing, &new)?;
            match VolumeConfig::load_in(old.as_fd(), staging) {
                Ok(config) if config.volume_id == replaced.volume_id => {
                    // Its configuration can be copied; its directory cannot.
                    let (dev, ino) = identity(old.as_fd(), staging)?;
                    if (dev, ino) != (beside.dev, replaced.ino) {
                        return Err(VolumeError::io(
                            staging.display().to_string(),
                            std::io::Error::other(
                                "holds the replaced volume's configuration but is not the \
                                 directory the swap moved there; nothing was deleted: check \
                                 it, delete it by hand, and run again",
                            ),
                        ));
                    }
                    (true, replaced)
                }
                Ok(_) => {
                    return Err(VolumeError::ForeignMark {
                        path: mark,
                        why: format!(
                            "the volume it replaced is not the one in {}",
                            staging.display()
                        ),
                    })
                }
                // No configuration: the end of a deletion (it goes last) or
                // the start of a copy (it comes first); either leaves the
                // directory empty, and only an empty one is removed below.
                Err(VolumeError::NotAVolume { .. }) => (false, replaced),
                Err(e) => return Err(e),
            }
        }
        (Swapped::Earlier, None) => (false, read_mark(dir.as_fd(), backing, &new)?),
    };
    // A mark proves that this volume was once made from the one beside
    // it, not that the run being finished made it: while the old key still
    // opens the volume (one key given as both), the re-encryption asked for
    // is done again rather than reported done. Decided on the configuration
    // read above, not on what BACKING holds a moment later.
    let old_key_opens = match new
        .config()
        .unwrap(old_key, &crate::config::config_path(backing))
    {
        Ok(_) => true,
        Err(VolumeError::KeyMismatch) => false,
        Err(e) => return Err(e),
    };
    // Until now the new volume's directory was the run's alone, so nobody
    // could put anything in it; now it becomes the volume's, with the old
    // directory's owner and mode (from the mark: the old directory may be
    // gone), and so does the lock file the run made in it, through the
    // descriptor it holds. Only while the directory is still the run's
    // alone: once handed over, its owner (who may also know the key, and
    // so could make a mark) could have put anything there, mark and lock
    // file included.
    let now = rustix::fs::fstat(&dir)
        .map_err(|e| VolumeError::io(format!("examining {}", backing.display()), e.into()))?;
    let ours = match rustix::process::geteuid().is_root() {
        true => crate::lock::is_roots_alone(&now),
        false => now.st_uid == rustix::process::geteuid().as_raw(),
    };
    if ours {
        lock.hand_to((replaced.uid, replaced.gid), backing)?;
        replaced
            .hand_over(dir.as_fd())
            .context(|| format!("giving {} its owner and mode", backing.display()))?;
    } else if now.st_uid != replaced.uid {
        log::warn!(
            "{}: owned by uid {} already, not the uid {} its re-encryption recorded; left as it is",
            backing.display(),
            now.st_uid,
            replaced.uid
        );
    }
    if let Some(old) = old {
        if is_old_volume {
            remove_old_volume(old.as_fd(), beside.dev, staging)?;
        }
        rustix::fs::unlinkat(
            &beside.parent,
            beside.staging_name.as_c_str(),
            AtFlags::REMOVEDIR,
        )
        .map_err(|e| {
            VolumeError::io(
                format!("removing the old volume {}", staging.display()),
                e.into(),
            )
        })?;
    }
    // The old volume's removal is durable before the mark goes: a power cut
    // must not bring the old volume back beside an unmarked new one.
    beside.sync()?;
    match rustix::fs::unlinkat(&dir, MARK_NAME, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => {
            return Err(VolumeError::io(
                format!("removing {}", mark.display()),
                e.into(),
            ))
        }
    }
    sync_fd(&dir, backing)?;
    beside.sync()?;
    Ok(if is_old_volume && !old_key_opens {
        Finish::Finished
    } else {
        Finish::GoOn
    })
}

/// Deletes what the old volume's directory `old` (on device `dev`) holds,
/// through its descriptor, with the configuration last, so that a deletion
/// cut short leaves either a directory whose configuration still names it
/// or an empty one: never files that nothing identifies.
fn remove_old_volume(old: BorrowedFd<'_>, dev: u64, shown: &Path) -> Result<()> {
    let removing = |e: std::io::Error| {
        VolumeError::io(format!("removing the old volume {}", shown.display()), e)
    };
    crate::remove::remove_contents(old, dev, &[crate::config::CONFIG_NAME]).map_err(removing)?;
    // Durably, before the configuration goes.
    rustix::fs::fsync(old).map_err(|e| removing(e.into()))?;
    match rustix::fs::unlinkat(old, crate::config::CONFIG_NAME, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(removing(e.into())),
    }
}

fn sync_fd(dir: &OwnedFd, shown: &Path) -> Result<()> {
    rustix::fs::fsync(dir)
        .map_err(|e| VolumeError::io(format!("syncing {}", shown.display()), e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::NameMode;
    use crate::volume::testing::{key, new_volume};
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    /// A volume in `backing` whose file `data` holds `text`.
    fn volume_with(backing: &Path, key: &UserKey, text: &[u8]) -> Volume {
        Volume::init(backing, key, None, NameMode::Encrypted).expect("init");
        let volume = Volume::open(backing, key).expect("open");
        let file = volume.backing_path(Path::new("data")).expect("name");
        let created = fs::File::create(backing.join(&file)).expect("create");
        crate::content::EncryptedFile::create(created, Arc::clone(volume.crypto()), file)
            .and_then(|f| f.write_at(0, text))
            .expect("write");
        volume
    }

    fn data(backing: &Path, key: &UserKey) -> Vec<u8> {
        let mut got = Vec::new();
        Volume::open(backing, key)
            .expect("open")
            .open_file(Path::new("data"), false)
            .and_then(|f| f.read_to_end(&mut got))
            .expect("read");
        got
    }

    fn volume_id(backing: &Path) -> [u8; 16] {
        VolumeConfig::load(backing).expect("config").volume_id
    }

    /// BACKING and its staging path in a new temporary directory.
    fn paths() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let parent = tempfile::tempdir().expect("tempdir");
        let backing = parent.path().join("volume");
        let staging = staging_path(&backing).expect("staging");
        (parent, backing, staging)
    }

    /// What a mark says of the volume `old` it replaced.
    fn replaced_by(old: &Volume) -> Replaced {
        let stat = rustix::fs::stat(old.backing()).expect("stat");
        Replaced::of(old.config(), &stat)
    }

    /// What a re-encryption of a volume holding `data` from `old_key` to
    /// `new_key` leaves when stopped right after its swap: the old and the
    /// new volume.
    fn stopped_after_swap(
        backing: &Path,
        staging: &Path,
        old_key: &UserKey,
        new_key: &UserKey,
    ) -> (Volume, Volume) {
        let old = volume_with(backing, old_key, b"kept");
        let new = Volume::init(staging, new_key, None, NameMode::Encrypted).expect("init");
        transfer::copy_tree(backing, Source::Volume(&old), &new, &mut |_| {}).expect("copy");
        let dir = new.open_root().expect("open");
        let replaced = replaced_by(&old);
        mark(dir.as_fd(), staging, &new, replaced).expect("mark");
        Beside::open(backing, staging)
            .and_then(|beside| beside.swap())
            .expect("swap");
        (old, new)
    }

    // Protects: a re-encryption stopped right after its swap (the new
    // volume in BACKING with its mark, the old one beside) is finished by
    // the next run, and so is one whose deletion of the old volume was cut
    // short with only the old configuration left.
    #[test]
    fn a_run_stopped_after_its_swap_is_finished() {
        for cut_short in [false, true] {
            let (_parent, backing, staging) = paths();
            stopped_after_swap(&backing, &staging, &key(1), &key(2));
            if cut_short {
                for entry in fs::read_dir(&staging).expect("list") {
                    let entry = entry.expect("entry");
                    if entry.file_name() != crate::config::CONFIG_NAME {
                        let path = entry.path();
                        if path.is_dir() {
                            fs::remove_dir_all(path).expect("remove");
                        } else {
                            fs::remove_file(path).expect("remove");
                        }
                    }
                }
            }

            let outcome = reencrypt(&backing, &key(1), &key(2), None, &mut |_| {});

            assert_eq!(outcome.expect("finish"), Outcome::Finished, "{cut_short}");
            assert!(!staging.exists() && !backing.join(MARK_NAME).exists());
            assert_eq!(data(&backing, &key(2)), b"kept");
        }
    }

    // Protects: with one key given as both old and new, a mark cannot show
    // that the run being finished made the volume in place (an earlier
    // run's mark and its old volume may have been put back), so finishing
    // is followed by the re-encryption asked for, never reported alone.
    #[test]
    fn with_one_key_a_finished_swap_is_followed_by_a_new_copy() {
        let (_parent, backing, staging) = paths();
        let (old, new) = stopped_after_swap(&backing, &staging, &key(1), &key(1));

        let outcome = reencrypt(&backing, &key(1), &key(1), None, &mut |_| {});

        assert!(matches!(outcome, Ok(Outcome::Done { .. })), "{outcome:?}");
        let now = volume_id(&backing);
        assert!(now != old.config().volume_id && now != new.config().volume_id);
        assert!(!staging.exists() && !backing.join(MARK_NAME).exists());
        assert_eq!(data(&backing, &key(1)), b"kept");
    }

    // Protects: the owner of BACKING's parent (a user, when root
    // re-encrypts the user's volume) cannot have a finish delete anything
    // but the old volume: a symlink put in its place, a directory put in
    // its place after this run's swap, and a directory without a
    // configuration that holds files are all refused, untouched.
    #[test]
    fn finishing_deletes_only_the_old_volume() {
        let victim_with = |parent: &Path| {
            let victim = parent.join("victim");
            fs::create_dir(&victim).expect("mkdir");
            fs::write(victim.join("precious"), b"precious").expect("write");
            victim
        };
        // A symlink where the old volume was.
        let finish_here = |backing: &Path, staging: &Path, old: (u64, u64), new: &Volume| {
            let beside = Beside::open(backing, staging).expect("parent");
            let lock = crate::lock::VolumeLock::acquire(backing).expect("lock");
            let here = Swapped::Here {
                old,
                new: new.root_id(),
                replaced: replaced_by(new),
            };
            finish(backing, &beside, &lock, &key(1), &key(2), here)
        };
        let id = |path: &Path| {
            let meta = fs::metadata(path).expect("stat");
            (meta.dev(), meta.ino())
        };
        let (parent, backing, staging) = paths();
        let (_, new) = stopped_after_swap(&backing, &staging, &key(1), &key(2));
        let moved = parent.path().join("moved");
        fs::rename(&staging, &moved).expect("move");
        let victim = victim_with(parent.path());
        std::os::unix::fs::symlink(&victim, &staging).expect("plant");
        let outcome = reencrypt(&backing, &key(1), &key(2), None, &mut |_| {});
        assert!(outcome.is_err(), "{outcome:?}");
        let outcome = finish_here(&backing, &staging, id(&moved), &new);
        assert!(outcome.is_err(), "{outcome:?}");
        assert!(victim.join("precious").exists());

        // Another directory where this run's old volume was.
        let (parent, backing, staging) = paths();
        let (_, new) = stopped_after_swap(&backing, &staging, &key(1), &key(2));
        let moved = parent.path().join("moved");
        fs::rename(&staging, &moved).expect("move");
        let victim = victim_with(parent.path());
        fs::rename(&victim, &staging).expect("plant");
        let outcome = finish_here(&backing, &staging, id(&moved), &new);
        assert!(outcome.is_err(), "{outcome:?}");
        assert!(staging.join("precious").exists());

        // Another directory where this run's new volume went: the swap
        // did not put it in place, so the old volume beside stays.
        let (parent, backing, staging) = paths();
        let (_, new) = stopped_after_swap(&backing, &staging, &key(1), &key(2));
        let old = id(&staging);
        fs::rename(&backing, parent.path().join("moved")).expect("move");
        new_volume(&backing, 2);
        let outcome = finish_here(&backing, &staging, old, &new);
        assert!(outcome.is_err(), "{outcome:?}");
        assert!(staging.join(crate::config::CONFIG_NAME).exists());

        // A directory with files and no configuration.
        let (_parent, backing, staging) = paths();
        stopped_after_swap(&backing, &staging, &key(1), &key(2));
        fs::remove_file(staging.join(crate::config::CONFIG_NAME)).expect("unconfigure");
        let outcome = reencrypt(&backing, &key(1), &key(2), None, &mut |_| {});
        assert!(outcome.is_err(), "{outcome:?}");
        assert!(staging.join(crate::name_cipher::DIR_ID_NAME).exists());
    }

    // Protects: as root, what sits beside BACKING is rolled back only if it
    // is an unfinished copy of root's own (root's alone): a user's
    // directory renamed to that name, holding what the user could not
    // delete, is refused, untouched.
    #[test]
    fn only_roots_own_copy_is_rolled_back() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let (_parent, backing, staging) = paths();
        volume_with(&backing, &key(1), b"kept");
        fs::create_dir(&staging).expect("mkdir");
        fs::write(staging.join("not theirs"), b"precious").expect("write");
        std::os::unix::fs::chown(&staging, Some(65534), Some(65534)).expect("chown");

        let outcome = reencrypt(&backing, &key(1), &key(2), None, &mut |_| {});

        assert!(outcome.is_err(), "{outcome:?}");
        assert!(staging.join("not theirs").exists());
        assert_eq!(data(&backing, &key(1)), b"kept");
    }

    // Protects: a user's volume re-encrypted by root gets its owner and
    // mode back when the re-encryption finishes even if the old volume
    // beside it is gone by then (the mark carries them): it never stays
    // root's, locked away from its owner.
    #[test]
    fn the_owner_gets_the_volume_back_without_the_old_one() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let (_parent, backing, staging) = paths();
        fs::create_dir(&backing).expect("mkdir");
        std::os::unix::fs::chown(&backing, Some(65534), Some(65534)).expect("chown");
        rustix::fs::chmod(&backing, Mode::from_raw_mode(0o750)).expect("chmod");
        stopped_after_swap(&backing, &staging, &key(1), &key(2));
        fs::remove_dir_all(&staging).expect("the old volume, gone");

        let outcome = reencrypt(&backing, &key(1), &key(2), None, &mut |_| {});

        assert_eq!(outcome.expect("finish"), Outcome::AlreadyDone);
        let stat = rustix::fs::stat(&backing).expect("stat");
        assert_eq!((stat.st_uid, stat.st_mode & 0o7777), (65534, 0o750));
        let lock = rustix::fs::stat(crate::lock::lock_path(&backing)).expect("lock");
        assert_eq!(lock.st_uid, 65534);
    }

    // Protects: a mark's owner and mode are given only to a directory that
    // is still the run's alone: once the volume is someone's, whoever owns
    // it (and may know the key, so could make a mark) decides, and a
    // finish leaves owner and mode as they are.
    #[test]
    fn a_handed_over_volume_keeps_its_owner() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let (_parent, backing, staging) = paths();
        fs::create_dir(&backing).expect("mkdir");
        std::os::unix::fs::chown(&backing, Some(65534), Some(65534)).expect("chown");
        stopped_after_swap(&backing, &staging, &key(1), &key(2));
        std::os::unix::fs::chown(&backing, Some(65533), Some(65533)).expect("someone's");
        rustix::fs::chmod(&backing, Mode::from_raw_mode(0o750)).expect("chmod");
        fs::remove_dir_all(&staging).expect("the old volume, gone");

        let outcome = reencrypt(&backing, &key(1), &key(2), None, &mut |_| {});

        assert_eq!(outcome.expect("finish"), Outcome::AlreadyDone);
        let stat = rustix::fs::stat(&backing).expect("stat");
        assert_eq!((stat.st_uid, stat.st_mode & 0o7777), (65533, 0o750));
    }

    // Protects: after a swap, a directory beside BACKING holding a copy of
    // the replaced volume's configuration (anyone who can read it can
    // copy it) is not taken for the old volume: the mark names the
    // directory too, and a stranger is refused, untouched.
    #[test]
    fn a_copied_configuration_does_not_make_an_old_volume() {
        let (parent, backing, staging) = paths();
        stopped_after_swap(&backing, &staging, &key(1), &key(2));
        let config = fs::read(staging.join(crate::config::CONFIG_NAME)).expect("read");
        fs::rename(&staging, parent.path().join("moved")).expect("move");
        fs::create_dir(&staging).expect("mkdir");
        fs::write(staging.join(crate::config::CONFIG_NAME), config).expect("copy");
        fs::write(staging.join("precious"), b"precious").expect("write");

        let outcome = reencrypt(&backing, &key(1), &key(2), None, &mut |_| {});

        assert!(outcome.is_err(), "{outcome:?}");
        assert!(staging.join("precious").exists());
    }

    // Protects: a directory someone else made at the new volume's name
    // before the run's `init` (which accepts an empty directory) is
    // refused before anything is copied into it: the re-encrypted volume
    // would be the only copy, in their hands.
    #[test]
    fn a_staging_directory_made_by_another_is_refused() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let (_parent, backing, staging) = paths();
        volume_with(&backing, &key(1), b"kept");
        let old = Volume::open(&backing, &key(1)).expect("open");
        fs::create_dir(&staging).expect("mkdir");
        std::os::unix::fs::chown(&staging, Some(65534), Some(65534)).expect("chown");
        let new = new_volume(&staging, 2);

        assert!(refuse_unless_ours_alone(&new).is_err());
        assert!(refuse_unless_ours_alone(&old).is_ok());
    }

    // Protects: whatever sits at the mark's name when the new volume is
    // marked (its directory may be a user's by then) is never written
    // through: a symlink there stops the run and its target is untouched.
    #[test]
    fn marking_never_writes_through_a_planted_name() {
        let (parent, backing, staging) = paths();
        let old = volume_with(&backing, &key(1), b"kept");
        let new = new_volume(&staging, 2);
        let target = parent.path().join("precious");
        fs::write(&target, b"precious").expect("write");
        std::os::unix::fs::symlink(&target, staging.join(MARK_NAME)).expect("plant");

        let dir = new.open_root().expect("open");
        let replaced = replaced_by(&old);
        assert!(mark(dir.as_fd(), &staging, &new, replaced).is_err());
        assert_eq!(fs::read(&target).expect("read"), b"precious");
    }

    // Protects: a mark planted in BACKING (anyone who can write there can
    // make one) neither deletes the copy beside BACKING nor ends the
    // re-encryption: it is refused, and everything stays as it was.
    #[test]
    fn a_planted_mark_is_refused() {
        type Plant = fn(&Path);
        let plants: [(&str, Plant); 5] = [
            ("empty", |at| fs::write(at, b"").expect("plant")),
            ("forged", |at| {
                fs::write(at, [7u8; MARK_LEN]).expect("plant")
            }),
            ("symlink", |at| {
                std::os::unix::fs::symlink("chronicle.volume", at).expect("plant")
            }),
            ("directory", |at| fs::create_dir(at).expect("plant")),
            ("fifo", |at| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    at,
                    rustix::fs::FileType::Fifo,
                    Mode::RUSR,
                    0,
                )
                .expect("plant")
            }),
        ];
        for (what, plant) in plants {
            for new_key in [key(1), key(2)] {
                let (_parent, backing, staging) = paths();
                volume_with(&backing, &key(1), b"kept");
                new_volume(&staging, 1);
                plant(&backing.join(MARK_NAME));

                let outcome = reencrypt(&backing, &key(1), &new_key, None, &mut |_| {});

                assert!(
                    matches!(outcome, Err(VolumeError::ForeignMark { .. })),
                    "{what}: {outcome:?}"
                );
                assert!(staging.join(crate::config::CONFIG_NAME).exists(), "{what}");
                assert!(fs::symlink_metadata(backing.join(MARK_NAME)).is_ok());
                assert_eq!(data(&backing, &key(1)), b"kept");
            }
        }
    }

    /// A volume in `backing` holding `data`, carrying the genuine mark of
    /// an earlier re-encryption into it (from a volume made in `parent`).
    fn with_an_earlier_runs_mark(parent: &Path, backing: &Path) -> Volume {
        let earlier = new_volume(&parent.join("earlier"), 1);
        let current = volume_with(backing, &key(1), b"kept");
        let dir = current.open_root().expect("open");
        mark(dir.as_fd(), backing, &current, replaced_by(&earlier)).expect("an earlier mark");
        current
    }

    // Protects: a genuine mark kept from an earlier re-encryption into
    // this volume and put back while a later one is copying is refused: it
    // names an old volume other than the copy beside BACKING, which stays.
    #[test]
    fn a_mark_put_back_from_an_earlier_run_is_refused() {
        let (parent, backing, staging) = paths();
        let current = with_an_earlier_runs_mark(parent.path(), &backing);
        new_volume(&staging, 1);

        let outcome = reencrypt(&backing, &key(1), &key(1), None, &mut |_| {});

        assert!(
            matches!(outcome, Err(VolumeError::ForeignMark { .. })),
            "{outcome:?}"
        );
        assert!(staging.join(crate::config::CONFIG_NAME).exists());
        assert_eq!(volume_id(&backing), current.config().volume_id);
    }

    // Protects: a genuine mark with no old volume beside it (an earlier
    // finish cut short after deleting it, or a mark put back) does not let
    // the run report a re-encryption it did not do: with the same key as
    // old and new, the volume still gets a new master key.
    #[test]
    fn a_mark_with_nothing_beside_does_not_skip_the_reencryption() {
        let (parent, backing, _staging) = paths();
        let current = with_an_earlier_runs_mark(parent.path(), &backing);

        let outcome = reencrypt(&backing, &key(1), &key(1), None, &mut |_| {});

        assert!(matches!(outcome, Ok(Outcome::Done { .. })), "{outcome:?}");
        assert_ne!(volume_id(&backing), current.config().volume_id);
        assert!(!backing.join(MARK_NAME).exists());
        assert_eq!(data(&backing, &key(1)), b"kept");
    }

    // Protects: a new key given to a volume while a re-encryption copies it
    // is not thrown away by the swap: the re-encryption refuses, and the
    // volume, untouched, opens with the new key.
    #[test]
    fn a_key_changed_during_the_copy_stops_the_swap() {
        let old_key = key(1);
        let parent = tempfile::tempdir().expect("tempdir");
        let backing = parent.path().join("volume");
        Volume::init(&backing, &old_key, None, NameMode::Encrypted).expect("init");
        let file = Volume::open(&backing, &old_key)
            .expect("open")
            .backing_path(Path::new("data"))
            .expect("name");
        let created = fs::File::create(backing.join(&file)).expect("create");
        let volume = Volume::open(&backing, &old_key).expect("open");
        crate::content::EncryptedFile::create(created, Arc::clone(volume.crypto()), file.clone())
            .and_then(|f| f.write_at(0, b"kept"))
            .expect("write");

        let passwd_key = key(2);
        let reencrypt_key = key(3);
        let mut changed = false;
        let outcome = reencrypt(&backing, &old_key, &reencrypt_key, None, &mut |_| {
            if !changed {
                let mut volume = Volume::open(&backing, &old_key).expect("open");
                volume.rewrap(&passwd_key, None).expect("passwd meanwhile");
                changed = true;
            }
        });

        assert!(changed, "the copy reported progress");
        assert!(
            matches!(outcome, Err(VolumeError::Changed { .. })),
            "{outcome:?}"
        );
        let volume = Volume::open(&backing, &passwd_key).expect("opens with passwd's key");
        let mut buf = [0u8; 4];
        let read = volume
            .open_file(Path::new("data"), false)
            .and_then(|f| f.read_at(0, &mut buf))
            .expect("read");
        assert_eq!(&buf[..read], b"kept");
    }
}
