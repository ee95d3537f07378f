//! `fsck`, `rotate-key` and `encrypt`: whole-volume maintenance.

use std::fs;
use std::path::Path;

use anyhow::{bail, Result};
use chronicle_mount::check::{self, Event};
use chronicle_mount::reencrypt::{self, Outcome};
use chronicle_mount::transfer::{self, Source};
use chronicle_mount::tree::{self, Root};
use chronicle_mount::Volume;

use super::progress::progress;
use crate::cli::{KdfArgs, KeyArgs, NewKeyArgs};
use crate::commands::volume::kdf_params;
use crate::keysource::{self, Purpose};

/// The error `fsck` ends with when blocks failed authentication (exit 26).
#[derive(Debug)]
pub struct BlocksFailed(pub u64);

impl std::fmt::Display for BlocksFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} block(s) failed authentication; restore those files from a backup",
            self.0
        )
    }
}

impl std::error::Error for BlocksFailed {}

/// Rewriting files under a mount would race with it: refuse.
fn ensure_not_mounted(backing: &Path, what: &str) -> Result<()> {
    if let Some(point) = chronicle_mount::mountinfo::mount_of_backing(backing) {
        bail!(
            "{} is mounted at {}; unmount it before {what}",
            backing.display(),
            point.display()
        );
    }
    Ok(())
}

pub fn fsck(backing: &Path, key: &KeyArgs, repair: bool) -> Result<()> {
    if repair {
        ensure_not_mounted(backing, "repairing it")?;
    }
    let user = keysource::resolve(key, Purpose::Open, "CHRONICLE_PASSPHRASE")?;
    let volume = Volume::open(backing, &user)?;
    let _lock = match repair {
        true => Some(chronicle_mount::lock::VolumeLock::acquire(backing)?),
        false => None,
    };
    // What the key was checked against may have been replaced before the
    // lock was taken (see `Volume::still_current`).
    if repair {
        volume.still_current()?;
    }
    let (_, total) = tree::total_bytes(backing, Root::Volume(volume.names().mode()))?;
    let bar = progress(total, "checking");
    let summary = check::check_volume(&volume, repair, &mut |event| {
        match event {
        Event::Bad { error, plain } => bar.suspend(|| match plain {
            Some(plain) => println!("{error} (in the mount: {})", plain.display()),
            None => println!("{error}"),
        }),
        Event::Repaired { file, what, size } => bar.suspend(|| {
            println!("repaired: {}: {what}; {size} plaintext bytes remain", file.display())
        }),
        Event::NotRepaired { file, reason } => bar.suspend(|| {
            println!(
                "not repaired: {}: {reason}: not what a crash leaves (tampering or media damage); restore it from a backup",
                file.display()
            )
        }),
        Event::Unreadable { error } => bar.suspend(|| println!("{error}")),
        Event::Progress(bytes) => bar.inc(bytes),
    }
    })?;
    bar.finish_and_clear();
    let unreadable = match summary.unreadable {
        0 => String::new(),
        n => format!(", {n} name(s) could not be read"),
    };
    println!(
        "{} files, {} blocks checked, {} failed authentication, {} repaired{unreadable}",
        summary.files, summary.blocks, summary.failures, summary.repaired
    );
    if summary.failures > 0 {
        return Err(BlocksFailed(summary.failures).into());
    }
    if summary.unreadable > 0 {
        bail!(
            "{} name(s) could not be read (see above); where it says permission denied, run fsck as the volume's owner, or as root",
            summary.unreadable
        );
    }
    Ok(())
}

pub fn rotate_key(
    backing: &Path,
    key: &KeyArgs,
    new_key: &NewKeyArgs,
    kdf: &KdfArgs,
    reencrypt: bool,
) -> Result<()> {
    if !new_key.is_given() {
        bail!("no new key given: use --new-key-file, --new-key-env, --new-key-command or --new-passphrase");
    }
    // Resolved before the keys are asked for, as re-encryption will.
    let backing = &chronicle_mount::volume::resolve_named_dir(backing)?;
    if reencrypt {
        ensure_not_mounted(backing, "re-encrypting it")?;
    }
    let old = keysource::resolve(key, Purpose::Open, "CHRONICLE_PASSPHRASE")?;
    let new = keysource::resolve(
        &new_key.as_key_args(),
        Purpose::Create,
        "CHRONICLE_NEW_PASSPHRASE",
    )?;
    let params = kdf_params(&new, kdf)?;
    if reencrypt {
        return reencrypt_volume(backing, &old, &new, params);
    }
    let mut volume = Volume::open(backing, &old)?;
    volume.rewrap(&new, params)?;
    println!(
        "The volume in {} now opens with the new key only.",
        backing.display()
    );
    println!("File contents were not rewritten; use --reencrypt to also replace the master key.");
    Ok(())
}

/// Re-encrypts everything under a new master key (see
/// `chronicle_mount::reencrypt`: a crash at any point leaves one whole
/// volume, and running the same command again finishes the job).
fn reencrypt_volume(
    backing: &Path,
    old: &chronicle_mount::UserKey,
    new: &chronicle_mount::UserKey,
    params: Option<chronicle_mount::KdfParams>,
) -> Result<()> {
    let mode = chronicle_mount::VolumeConfig::load(backing)?.name_mode();
    let (_, total) = tree::total_bytes(backing, Root::Volume(mode))?;
    let bar = progress(total, "re-encrypting");
    let outcome = reencrypt::reencrypt(backing, old, new, params, &mut |n| bar.inc(n))?;
    bar.finish_and_clear();
    match outcome {
        Outcome::Finished => println!(
            "Finished an interrupted re-encryption of {}: it opens with the new key only.",
            backing.display()
        ),
        // An earlier run that finished and a plain `rotate-key` to the new
        // key look alike here (the old key fails, the new one opens): say
        // what is known and how to be sure.
        Outcome::AlreadyDone => println!(
            "{} opens with the new key and not the old one, so nothing was done: an earlier run re-encrypted it, \
             or its key was changed without --reencrypt (then run this again giving the new key as both keys).",
            backing.display()
        ),
        Outcome::Done {
            copied,
            rolled_back,
        } => {
            if rolled_back {
                println!("Removed the unfinished copy an interrupted run left, and started again.");
            }
            println!(
                "Re-encrypted {} files ({} bytes) in {} under a new master key; it opens with the new key only.",
                copied.files,
                copied.bytes,
                backing.display()
            );
        }
    }
    Ok(())
}

pub fn encrypt(
    plain_dir: &Path,
    backing: &Path,
    key: &KeyArgs,
    kdf: &KdfArgs,
    features: chronicle_mount::config::VolumeFeatures,
) -> Result<()> {
    let plain_dir = &chronicle_mount::volume::resolve_named_dir(plain_dir)?;
    if !plain_dir.is_dir() {
        bail!("{} is not a directory", plain_dir.display());
    }
    let backing = &chronicle_mount::volume::resolve_named_dir(backing)?;
    if backing.exists() && fs::read_dir(backing)?.next().is_some() {
        bail!(
            "{} is not empty; encrypt needs a new or empty directory",
            backing.display()
        );
    }
    let user = keysource::resolve(key, Purpose::Create, "CHRONICLE_PASSPHRASE")?;
    let params = kdf_params(&user, kdf)?;
    let volume = Volume::init(backing, &user, params, features)?;
    let (_, total) = tree::total_bytes(plain_dir, Root::Plain)?;
    let bar = progress(total, "encrypting");
    let copied = transfer::copy_tree(plain_dir, Source::Plain, &volume, &mut |n| bar.inc(n))?;
    bar.finish_and_clear();
    println!(
        "Encrypted {} files from {} into {}. Check it, then remove the plaintext copy.",
        copied.files,
        plain_dir.display(),
        backing.display()
    );
    if copied.owners_not_kept > 0 {
        println!(
            "{} entries now belong to you: only root can keep other users' ownership.",
            copied.owners_not_kept
        );
    }
    Ok(())
}
