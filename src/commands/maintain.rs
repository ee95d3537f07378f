//! `fsck`, `rotate-key` and `encrypt`: whole-volume maintenance.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chronicle_mount::content::TailRepair;
use chronicle_mount::{UserKey, Volume, VolumeError};

use super::walk::{progress, walk};
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
    let entries = walk(backing).context("listing the backing directory")?;
    let total: u64 = entries
        .iter()
        .filter(|e| e.meta.is_file())
        .map(|e| e.meta.len())
        .sum();
    let bar = progress(total, "checking");
    let (mut files, mut blocks, mut failures, mut repaired) = (0u64, 0u64, 0u64, 0u64);
    for entry in entries.iter().filter(|e| e.meta.is_file()) {
        files += 1;
        let file = volume.open_file(&entry.relative, repair)?;
        if repair {
            match file.repair_tail()? {
                TailRepair::Clean => {}
                TailRepair::Repaired { what, size } => {
                    repaired += 1;
                    let path = volume.backing().join(&entry.relative);
                    bar.suspend(|| {
                        println!(
                            "repaired: {}: {what}; {size} plaintext bytes remain",
                            path.display()
                        )
                    });
                }
                TailRepair::NotACrash { reason } => {
                    let path = volume.backing().join(&entry.relative);
                    bar.suspend(|| {
                        println!("not repaired: {}: {reason}: not what a crash leaves (tampering or media damage); restore it from a backup", path.display())
                    });
                }
            }
        }
        blocks += file.verify_each(|bad| {
            failures += 1;
            bar.suspend(|| println!("{bad}"));
        })?;
        bar.inc(entry.meta.len());
    }
    bar.finish_and_clear();
    println!("{files} files, {blocks} blocks checked, {failures} failed authentication, {repaired} repaired");
    if failures > 0 {
        return Err(BlocksFailed(failures).into());
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
    if reencrypt {
        ensure_not_mounted(backing, "re-encrypting it")?;
    }
    let old = keysource::resolve(key, Purpose::Open, "CHRONICLE_PASSPHRASE")?;
    let mut volume = Volume::open(backing, &old)?;
    let new = keysource::resolve(
        &new_key.as_key_args(),
        Purpose::Create,
        "CHRONICLE_NEW_PASSPHRASE",
    )?;
    let params = kdf_params(&new, kdf)?;
    if !reencrypt {
        volume.rewrap(&new, params)?;
        println!(
            "The volume in {} now opens with the new key only.",
            backing.display()
        );
        println!(
            "File contents were not rewritten; use --reencrypt to also replace the master key."
        );
        return Ok(());
    }
    reencrypt_volume(&volume, &new, params)
}

/// Re-encrypts everything under a new master key into a sibling directory,
/// then swaps the directories. A crash leaves either the old volume intact
/// (and a partial sibling to delete) or the new one complete.
fn reencrypt_volume(
    old: &Volume,
    new_key: &UserKey,
    kdf: Option<chronicle_mount::KdfParams>,
) -> Result<()> {
    let backing = old.backing().canonicalize()?;
    let staging = sibling(&backing, "reencrypt")?;
    let retired = sibling(&backing, "old")?;
    let new = Volume::init(&staging, new_key, kdf)?;
    copy_tree(&backing, &new, |relative| {
        Ok(Source::Encrypted(old.open_file(relative, false)?))
    })?;
    fs::rename(&backing, &retired).context("moving the old volume aside")?;
    fs::rename(&staging, &backing).context("moving the re-encrypted volume into place")?;
    sync_parent(&backing)?;
    fs::remove_dir_all(&retired).with_context(|| format!("removing {}", retired.display()))?;
    println!(
        "Re-encrypted every file in {} under a new master key; it opens with the new key only.",
        backing.display()
    );
    Ok(())
}

pub fn encrypt(plain_dir: &Path, backing: &Path, key: &KeyArgs, kdf: &KdfArgs) -> Result<()> {
    if !plain_dir.is_dir() {
        bail!("{} is not a directory", plain_dir.display());
    }
    if backing.exists() && fs::read_dir(backing)?.next().is_some() {
        bail!(
            "{} is not empty; encrypt needs a new or empty directory",
            backing.display()
        );
    }
    let user = keysource::resolve(key, Purpose::Create, "CHRONICLE_PASSPHRASE")?;
    let params = kdf_params(&user, kdf)?;
    let volume = Volume::init(backing, &user, params)?;
    let files = copy_tree(plain_dir, &volume, |relative| {
        let path = plain_dir.join(relative);
        let file = fs::File::open(&path)
            .map_err(|e| VolumeError::io(format!("reading {}", path.display()), e))?;
        Ok(Source::Plain(file))
    })?;
    println!(
        "Encrypted {files} files from {} into {}. Check it, then remove the plaintext copy.",
        plain_dir.display(),
        backing.display()
    );
    Ok(())
}

/// Where a copied file's plaintext comes from.
enum Source {
    Plain(fs::File),
    Encrypted(chronicle_mount::EncryptedFile),
}

impl Source {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> chronicle_mount::Result<usize> {
        match self {
            Source::Plain(file) => {
                use std::os::unix::fs::FileExt;
                file.read_at(buf, offset)
                    .map_err(|e| VolumeError::io("reading a plaintext file", e))
            }
            Source::Encrypted(file) => file.read_at(offset, buf),
        }
    }
}

/// Recreates the tree under `source` in `dest`, each regular file's
/// plaintext read from what `open` gives, 1 MiB at a time. Keeps modes and
/// modification times.
fn copy_tree(
    source: &Path,
    dest: &Volume,
    open: impl Fn(&Path) -> chronicle_mount::Result<Source>,
) -> Result<u64> {
    let entries = walk(source).with_context(|| format!("listing {}", source.display()))?;
    let total: u64 = entries
        .iter()
        .filter(|e| e.meta.is_file())
        .map(|e| e.meta.len())
        .sum();
    let bar = progress(total, "encrypting");
    let mut files = 0;
    let mut buf = vec![0u8; 1 << 20];
    for entry in &entries {
        let target = dest.backing().join(&entry.relative);
        let kind = entry.meta.file_type();
        if kind.is_dir() {
            fs::create_dir(&target).with_context(|| format!("creating {}", target.display()))?;
        } else if kind.is_symlink() {
            let link = fs::read_link(source.join(&entry.relative))?;
            std::os::unix::fs::symlink(link, &target)?;
        } else if kind.is_file() {
            let from = open(&entry.relative)?;
            let to = dest.create_file(&entry.relative)?;
            let mut offset = 0u64;
            loop {
                let n = from.read_at(offset, &mut buf)?;
                if n == 0 {
                    break;
                }
                to.write_at(offset, &buf[..n])?;
                offset += n as u64;
                bar.inc(n as u64);
            }
            to.sync(false)?;
            files += 1;
        } else {
            bar.suspend(|| eprintln!("skipping special file {}", entry.relative.display()));
        }
    }
    bar.finish_and_clear();
    // Modes and times last (deepest first), so that a read-only directory
    // is filled before it becomes read-only.
    for entry in entries.iter().rev() {
        if entry.meta.file_type().is_symlink() || !(entry.meta.is_dir() || entry.meta.is_file()) {
            continue;
        }
        let target = dest.backing().join(&entry.relative);
        let file = fs::File::open(&target)?;
        if let Ok(mtime) = entry.meta.modified() {
            file.set_modified(mtime)?;
        }
        file.sync_all()?;
        fs::set_permissions(
            &target,
            fs::Permissions::from_mode(entry.meta.mode() & 0o7777),
        )?;
    }
    fs::File::open(dest.backing())?.sync_all()?;
    Ok(files)
}

fn sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} has no directory name", path.display()))?;
    let mut sibling = name.to_os_string();
    sibling.push(format!(".chronicle-{tag}"));
    let out = path.with_file_name(sibling);
    if out.exists() {
        bail!(
            "{} exists (left by an interrupted run?); remove it first",
            out.display()
        );
    }
    Ok(out)
}

fn sync_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}
