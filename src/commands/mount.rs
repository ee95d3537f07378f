//! `chronicle mount` and `chronicle umount`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chronicle_mount::fuse::{self, MountOptions, Mounted};
use chronicle_mount::Volume;

use crate::cli::KeyArgs;
use crate::daemon::{self, Side, Verdict};
use crate::hygiene;
use crate::keysource::{self, Purpose};
use crate::logging;

pub struct MountRequest {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub key: KeyArgs,
    pub foreground: bool,
    pub options: MountOptions,
    pub log_file: Option<PathBuf>,
}

pub fn mount(req: MountRequest) -> Result<()> {
    let foreground = req.foreground;
    let log_file = req.log_file.clone();
    let ready = prepare(req)?;
    if foreground {
        logging::init_foreground();
        let hardening = hygiene::harden_process().context("cannot disable core dumps")?;
        let mounted = ready.mount()?;
        return ready.serve(mounted, &hardening);
    }
    match daemon::fork().context("cannot start the background mount process")? {
        Side::Parent(reader) => match daemon::await_verdict(reader) {
            Verdict::Ready => Ok(()),
            Verdict::Failed(message) => bail!("{message}"),
        },
        Side::Child(writer) => {
            // Memory locks are not inherited across fork: lock here.
            let started = logging::init_background(log_file.as_deref())
                .and_then(|()| hygiene::harden_process().context("cannot disable core dumps"))
                .and_then(|hardening| Ok((ready.mount()?, hardening)));
            let (mounted, hardening) = match started {
                Ok(started) => started,
                Err(e) => {
                    daemon::report(writer, &Verdict::Failed(format!("{e:#}")));
                    std::process::exit(1);
                }
            };
            daemon::report(writer, &Verdict::Ready);
            if let Err(e) = ready.serve(mounted, &hardening) {
                log::error!("{e:#}");
                std::process::exit(1);
            }
            std::process::exit(0);
        }
    }
}

/// A volume opened with its key and locked for one mount at a mount point
/// checked to be fit for it.
struct Ready {
    volume: Volume,
    backing: PathBuf,
    mountpoint: PathBuf,
    options: MountOptions,
    open_files: u64,
    lock: chronicle_mount::lock::VolumeLock,
}

/// Everything a mount checks and takes before it mounts: the directories,
/// the key, the volume lock; then the key leaves the environment.
fn prepare(req: MountRequest) -> Result<Ready> {
    let dead_backing = clear_dead_mount(&req.mountpoint)?;
    let backing = existing_dir(&req.backing, "backing directory")?;
    let mountpoint = existing_dir(&req.mountpoint, "mountpoint")?;
    if chronicle_mount::mountinfo::is_mount_point(&mountpoint) {
        bail!(
            "{} is already a mount point; unmount it first (chronicle umount {})",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    if std::fs::read_dir(&mountpoint)
        .with_context(|| format!("cannot read mountpoint {}", mountpoint.display()))?
        .next()
        .is_some()
    {
        bail!(
            "mountpoint {} is not empty: mounting would hide its files; \
             use an empty directory, or move existing data in with `chronicle encrypt`",
            mountpoint.display()
        );
    }
    if mountpoint.starts_with(&backing) || backing.starts_with(&mountpoint) {
        bail!("the mountpoint and the backing directory must not contain each other");
    }
    // The key is checked before anything else happens: a wrong key mounts
    // nothing and writes nothing.
    let user_key = keysource::resolve(&req.key, Purpose::Open, "CHRONICLE_PASSPHRASE")?;
    let volume = Volume::open(&backing, &user_key)?;
    drop(user_key);
    // Held for the life of the mount (a background mount inherits it). The
    // process of a mount of this volume just cleared as dead lets go of it
    // only as it finishes exiting, a moment after its mount died: wait for
    // that.
    let lock = match dead_backing.is_some_and(|dead| dead == backing) {
        true => chronicle_mount::lock::VolumeLock::acquire_within(&backing, DYING_HOLDER)?,
        false => chronicle_mount::lock::VolumeLock::acquire(&backing)?,
    };
    // The key was checked before the lock was taken: whoever held it may
    // have changed the volume's key in between (`passwd --reencrypt` swaps
    // in a volume with a new master key). Serving with the old one would
    // seal new data with it.
    volume.still_current()?;
    // This process lives as long as the mount: its environment and memory
    // must not give the key away.
    let key_env = req
        .key
        .key_env
        .as_deref()
        .unwrap_or(keysource::DEFAULT_KEY_ENV);
    hygiene::scrub_environment(&[key_env, "CHRONICLE_PASSPHRASE"]);
    Ok(Ready {
        volume,
        backing,
        mountpoint,
        options: req.options,
        open_files: hygiene::raise_open_file_limit(),
        lock,
    })
}

impl Ready {
    fn mount(&self) -> Result<Mounted> {
        Mounted::new(&self.volume, &self.mountpoint, &self.options)
            .with_context(|| format!("cannot mount at {}", self.mountpoint.display()))
    }

    /// Serves until unmounted; SIGINT, SIGTERM and SIGHUP unmount cleanly.
    fn serve(self, mut mounted: Mounted, hardening: &hygiene::Hardening) -> Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            .context("installing signal handlers")?;
        let mut unmounter = mounted.unmounter();
        let shown = self.mountpoint.display().to_string();
        // After a lazy unmount another mount may be made at the same
        // place; a signal must not unmount that one.
        let point = self.mountpoint.clone();
        let ours = chronicle_mount::mountinfo::mounted_at(&point).map(|m| m.device);
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                if chronicle_mount::mountinfo::mounted_at(&point).map(|m| m.device) != ours {
                    log::info!("signal {signal}: {shown} was detached already");
                    return;
                }
                log::info!("signal {signal}: unmounting {shown}");
                if let Err(e) = unmounter.unmount() {
                    log::error!("unmounting {shown}: {e}");
                }
            }
        });
        log::info!(
            "mounted {} at {} ({})",
            self.backing.display(),
            self.mountpoint.display(),
            self.volume.backend().name()
        );
        log::info!(
            "open-file limit {}: files in use at once are bounded by it",
            self.open_files
        );
        if !hardening.memory_locked {
            log::warn!(
                "memory not locked (RLIMIT_MEMLOCK is limited and this is not root): keys may reach swap; core dumps are off"
            );
        }
        // The volume is free for the next writer as soon as the session
        // ends, before the flush of the backing file system, which may take
        // a while.
        let lock = self.lock;
        mounted
            .serve(&self.volume, || drop(lock))
            .context("serving the file system")?;
        log::info!("unmounted {}", self.mountpoint.display());
        Ok(())
    }
}

/// How long a mount waits for the process of a dead mount it cleared to
/// finish exiting and let go of the volume.
const DYING_HOLDER: std::time::Duration = std::time::Duration::from_secs(5);

/// Unmounts, then flushes the backing file system, so that, as with a
/// local file system, everything written is on disk when umount returns.
/// A lazy unmount returns at once: the mount lives on until the last
/// program using it lets go.
pub fn umount(mountpoint: &Path, lazy: bool) -> Result<()> {
    // Found before unmounting, without a look at the mount point: a stuck
    // mount would hold the look, and `--lazy` is how one is cleared.
    let backing = match lazy {
        true => None,
        false => chronicle_mount::mountinfo::mounted_at(mountpoint)
            .and_then(|m| m.chronicle_backing().map(Path::to_path_buf)),
    };
    match fuse::unmount_as(mountpoint, lazy) {
        Ok(()) => {
            if let Some(backing) = backing {
                // The mount process lets go of the files it kept open once
                // its session ends; return after it has, so that the volume
                // can be mounted or repaired at once.
                let waited = chronicle_mount::lock::VolumeLock::wait_until_free(
                    &backing,
                    std::time::Duration::from_secs(30),
                );
                if !waited.unwrap_or(true) {
                    eprintln!(
                        "note: the mount process of {} is still finishing after 30 s",
                        backing.display()
                    );
                }
                std::fs::File::open(&backing)
                    .and_then(|dir| rustix::fs::syncfs(&dir).map_err(std::io::Error::from))
                    .with_context(|| format!("flushing {} after unmounting", backing.display()))?;
            }
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            bail!(
                "cannot unmount {}: it is not a mount point",
                mountpoint.display()
            )
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => bail!(
            "cannot unmount {}: it is busy (a program has files open there or is inside it)",
            mountpoint.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot unmount {}", mountpoint.display())),
    }
}

/// A chronicle mount whose process died (killed, crashed) leaves its mount
/// point answering "Transport endpoint is not connected" to everyone. It
/// holds nothing (every write the process acknowledged already reached the
/// backing directory), so mounting again clears it, and says so. Returns
/// the backing directory of the dead mount it cleared.
fn clear_dead_mount(mountpoint: &Path) -> Result<Option<PathBuf>> {
    let Some(e) = dead_mount(mountpoint) else {
        return Ok(None);
    };
    let shown = mountpoint.display();
    let absolute = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let entry = chronicle_mount::mountinfo::mounted_at(mountpoint);
    match entry.as_ref().and_then(|m| m.chronicle_backing()) {
        Some(dead) => {
            fuse::unmount(&absolute).or_else(|_| {
                rustix::mount::unmount(&absolute, rustix::mount::UnmountFlags::DETACH)
                    .map_err(std::io::Error::from)
            })
            .with_context(|| format!("cannot clear the dead mount at {shown}; run: umount -l {shown}"))?;
            eprintln!(
                "note: the mount process for {shown} had died ({e}); cleared the dead mount (fsck the volume if a program was writing)"
            );
            Ok(Some(dead.canonicalize().unwrap_or(dead.to_path_buf())))
        }
        _ => bail!(
            "{shown} is a dead mount of another file system ({e}); unmount it first (umount -l {shown})"
        ),
    }
}

/// What a mount point answers when the process of the mount there died,
/// or `None` when it is not such a mount.
pub fn dead_mount(mountpoint: &Path) -> Option<std::io::Error> {
    // statfs always asks the file system; a stat may be answered from
    // attributes the kernel still caches for a moment after the process
    // died, and the next look then finds no directory there.
    let e = rustix::fs::statfs(mountpoint)
        .map_err(std::io::Error::from)
        .err()?;
    // ECONNABORTED: a request the kernel had queued while the dying
    // process's descriptors were being closed. ECANCELED: the same over
    // FUSE io_uring, a request handed to a ring whose thread was dead.
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN) | Some(libc::ECONNABORTED) | Some(libc::ECANCELED)
    )
    .then_some(e)
}

fn existing_dir(path: &Path, what: &str) -> Result<PathBuf> {
    let canonical = path
        .canonicalize()
        .with_context(|| format!("{what} {} does not exist", path.display()))?;
    if !canonical.is_dir() {
        bail!("{what} {} is not a directory", path.display());
    }
    Ok(canonical)
}
