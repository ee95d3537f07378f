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

use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::config::{open_backing_dir, VolumeConfig};
use crate::error::{IoContext, Result, VolumeError};
use crate::keys::{KdfParams, UserKey};
use crate::lock::KeyLock;
use crate::transfer::{self, Copied, Source};
use crate::volume::Volume;

/// The mark a complete new volume carries until the old one is gone.
pub const MARK_NAME: &str = "chronicle.volume.reencrypted";

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
    let backing = backing
        .canonicalize()
        .context(|| format!("finding {}", backing.display()))?;
    let staging = staging_path(&backing)?;
    refuse_unswappable(&backing)?;
    let _lock = crate::lock::VolumeLock::acquire(&backing)?;
    let dir = open_backing_dir(&backing)?;
    if is_unfinished(dir.as_fd()).context(|| format!("examining {}", backing.display()))? {
        finish(&backing, &staging, new_key)?;
        return Ok(Outcome::Finished);
    }
    let rolled_back = staging.exists();
    if rolled_back {
        fs::remove_dir_all(&staging)
            .context(|| format!("removing the unfinished copy {}", staging.display()))?;
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
    // The copy reads files as BACKING holds them.
    crate::journal::Journal::refuse_pending_commits(&backing)?;
    // The key lock is taken again before the swap: whatever would keep it
    // from being taken then is found now, not after hours of copying.
    drop(KeyLock::acquire(dir.as_fd(), &backing)?);
    let new = Volume::init(&staging, new_key, kdf, old.config().features())?;
    give_new_volume_to_owner(&staging, &backing)?;
    let copied = transfer::copy_tree(&backing, Source::Volume(&old), &new, true, progress)?;
    // A new key given to the volume while it was copied (`rotate-key`
    // takes no volume lock) would be dropped by the swap without a word:
    // the configuration must still be the one the copy began with, and
    // stay so until the swap (`KeyLock`, which `rotate-key` takes too).
    let key_lock = KeyLock::acquire(dir.as_fd(), &backing)?;
    if VolumeConfig::load_in(dir.as_fd(), &backing)? != *old.config() {
        drop(key_lock);
        drop(new);
        if let Err(e) = fs::remove_dir_all(&staging) {
            log::warn!("removing the copy {}: {e}", staging.display());
        }
        return Err(VolumeError::Changed { path: backing });
    }
    // The volume lock is a file in each directory: once they are swapped,
    // BACKING's is the new volume's, held from now on so that no mount or
    // repair starts while the old volume is deleted.
    let _new_volume_lock = crate::lock::VolumeLock::acquire(&staging)?;
    mark(&staging)?;
    swap(&backing, &staging)?;
    drop(key_lock);
    finish(&backing, &staging, new_key)?;
    Ok(Outcome::Done {
        copied,
        rolled_back,
    })
}

/// When root re-encrypts another user's volume: the files `init` made in
/// the new volume's root (its configuration, its root's id record) go to
/// BACKING's owner, who could not open the volume otherwise. Done while the
/// new volume's directory is still root's own (the copy gives it BACKING's
/// owner at its end), so nobody else can have put anything there.
fn give_new_volume_to_owner(staging: &Path, backing: &Path) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let owner = rustix::fs::stat(backing)
        .map_err(|e| VolumeError::io(format!("examining {}", backing.display()), e.into()))?;
    if owner.st_uid == 0 {
        return Ok(());
    }
    let dir = open_backing_dir(staging)?;
    let made = rustix::fs::fstat(&dir)
        .map_err(|e| VolumeError::io(format!("examining {}", staging.display()), e.into()))?;
    if !crate::lock::is_roots_alone(&made) {
        return Err(VolumeError::io(
            staging.display().to_string(),
            std::io::Error::other("made by another user meanwhile; remove it and run again"),
        ));
    }
    for name in [crate::config::CONFIG_NAME, crate::name_cipher::DIR_ID_NAME] {
        let shown = staging.join(name);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
            Ok(file) => crate::lock::give_to(&fs::File::from(file), &owner, &shown)?,
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

/// Marks the new volume complete, durably.
fn mark(staging: &Path) -> Result<()> {
    let path = staging.join(MARK_NAME);
    let file = fs::File::create(&path).context(|| format!("creating {}", path.display()))?;
    file.sync_all()
        .context(|| format!("syncing {}", path.display()))?;
    sync_dir(staging)
}

/// Exchanges the two directories atomically, durably.
fn swap(backing: &Path, staging: &Path) -> Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        backing,
        rustix::fs::CWD,
        staging,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(|e| {
        VolumeError::io(
            format!("swapping {} and {}", backing.display(), staging.display()),
            e.into(),
        )
    })?;
    match backing.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// After the swap: the new volume is in `backing`; delete the old one
/// beside it and the mark.
fn finish(backing: &Path, old: &Path, new_key: &UserKey) -> Result<()> {
    // The new key must open what is now in place before anything is deleted.
    Volume::open(backing, new_key)?;
    if old.exists() {
        fs::remove_dir_all(old).context(|| format!("removing the old volume {}", old.display()))?;
    }
    // The old volume's removal is durable before the mark goes: a power cut
    // must not bring the old volume back beside an unmarked new one.
    if let Some(parent) = backing.parent() {
        sync_dir(parent)?;
    }
    let mark = backing.join(MARK_NAME);
    fs::remove_file(&mark).context(|| format!("removing {}", mark.display()))?;
    sync_dir(backing)?;
    match backing.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .context(|| format!("syncing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;
    use crate::names::NameMode;
    use std::sync::Arc;

    // Protects: a new key given to a volume while a re-encryption copies it
    // is not thrown away by the swap: the re-encryption refuses, and the
    // volume, untouched, opens with the new key.
    #[test]
    fn a_key_changed_during_the_copy_stops_the_swap() {
        let old_key = UserKey::Raw(SecretKey::from_bytes([1; 32]));
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

        let passwd_key = UserKey::Raw(SecretKey::from_bytes([2; 32]));
        let reencrypt_key = UserKey::Raw(SecretKey::from_bytes([3; 32]));
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
