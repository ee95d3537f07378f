//! The FUSE front end: the only module that talks to `fuser`.

mod attr;
mod errno;
mod fs;
mod handles;
mod held;
mod kept;
mod listing;
mod nodes;
mod ops;
mod prune;
mod stats;
mod xattr;

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};
use rustix::fs::{Mode, OFlags};

use crate::journal::Journal;
use crate::volume::Volume;

/// Inodes remembered by default: about 20 MiB of the mount's memory, and
/// more than the files most databases keep.
pub const DEFAULT_MAX_INODES: usize = 65_536;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub read_only: bool,
    /// Refuse to run programs from the mount (`noexec`).
    pub no_exec: bool,
    /// Let other users in (`allow_other`), with the kernel checking
    /// permissions (`default_permissions`).
    pub allow_other: bool,
    /// Let the kernel cache writes and send them in large batches.
    pub writeback_cache: bool,
    /// Threads serving requests through /dev/fuse.
    pub threads: usize,
    /// Serve requests over FUSE-over-io_uring when the kernel offers it
    /// (Linux 6.14+ with `fuse.enable_uring=1`): quick requests are served
    /// on the CPU of the program that made them, requests that may take
    /// long by a pool (`vendor/fuser/src/uring.rs`). Off by default while it
    /// is new (docs/PERFORMANCE.md).
    pub io_uring: bool,
    /// Inodes the mount remembers before it asks the kernel to forget the
    /// least recently used (its memory: a few hundred bytes each).
    pub max_inodes: usize,
    /// How long one serving thread per CPU keeps polling /dev/fuse for the
    /// next request once the device is idle, before it sleeps; the window
    /// closes while requests come further apart
    /// (`vendor/fuser/src/polling.rs`). Where idle CPUs halt at once, this
    /// spares most requests the wake-up of a halted CPU; it costs CPU, and
    /// it pauses while syncs reach a disk, which it slowed on this
    /// project's VM (docs/PERFORMANCE.md, "Polling the device"). Zero (the
    /// default): never poll.
    pub poll: Duration,
}

/// Polling is off unless asked for: it took 1.5–1.8 times the mount's CPU
/// time where it made metadata-heavy work faster, and still costs syncs to
/// a disk a few per cent (docs/PERFORMANCE.md, "Polling the device"). 200 µs
/// (the kernel's own default for a guest CPU's halt polling) is the window
/// that measured best.
pub const DEFAULT_POLL: Duration = Duration::ZERO;

impl Default for MountOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        MountOptions {
            read_only: false,
            no_exec: false,
            allow_other: false,
            writeback_cache: true,
            threads: (2 * cores).clamp(4, 16),
            io_uring: false,
            max_inodes: DEFAULT_MAX_INODES,
            poll: DEFAULT_POLL,
        }
    }
}

/// A mounted volume whose requests are not yet being served. `serve` blocks
/// until the file system is unmounted.
pub struct Mounted {
    session: fuser::Session<fs::ChronicleFs>,
}

/// Unmounts a `Mounted` from another thread (a signal handler's thread).
pub struct Unmounter(fuser::SessionUnmounter);

impl Unmounter {
    pub fn unmount(&mut self) -> io::Result<()> {
        self.0.unmount()
    }
}

/// A volume served on background threads; unmounts when dropped.
pub struct BackgroundMount {
    session: Option<fuser::BackgroundSession>,
}

impl BackgroundMount {
    /// Unmounts and waits for the serving threads.
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Err(e) = session.umount_and_join() {
                log::warn!("unmounting: {e}");
            }
        }
    }
}

impl Mounted {
    /// Mounts `volume` at `mountpoint`. Returns once the kernel has
    /// completed the FUSE handshake: requests queue until `serve`.
    pub fn new(volume: &Volume, mountpoint: &Path, options: &MountOptions) -> io::Result<Self> {
        raise_fd_limit();
        // The kernel hands us modes with the caller's umask already applied
        // (and we apply the one it sends); our own umask must not strip
        // bits a second time when the backing entry is created. This is
        // process-wide, which suits a process whose job is serving the mount.
        rustix::process::umask(Mode::empty());
        let root: OwnedFd = rustix::fs::open(
            volume.backing(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let journal = match options.read_only {
            // A read-only mount leaves the journal alone, so it would show
            // files older than syncs left them while commits wait there.
            true => {
                Journal::refuse_pending_commits(volume.backing()).map_err(io::Error::other)?;
                None
            }
            false => Some(std::sync::Arc::new(open_journal(volume)?)),
        };
        let prune = std::sync::Arc::new(prune::PruneSignal::new());
        let ops = ops::Ops::new(
            root,
            std::sync::Arc::clone(volume.crypto()),
            std::sync::Arc::clone(volume.names()),
            journal,
            volume.config().xattrs(),
            options.max_inodes,
            std::sync::Arc::clone(&prune),
        )?;
        let picker = ops.picker();
        let filesystem = fs::ChronicleFs {
            ops,
            writeback_cache: options.writeback_cache && !options.read_only,
            io_uring: options.io_uring,
            kernel_opens_dirs: false,
        };
        let mut config = Config::default();
        config.mount_options = vec![
            // What /proc/mounts shows as the source: the backing directory,
            // as an fstab entry names it, so that `mount -a` knows the
            // volume is mounted (`mountinfo::MountEntry::chronicle_backing`).
            MountOption::FSName(volume.backing().display().to_string()),
            MountOption::Subtype("chronicle".into()),
            MountOption::NoDev,
            MountOption::NoSuid,
            if options.read_only {
                MountOption::RO
            } else {
                MountOption::RW
            },
        ];
        if options.no_exec {
            config.mount_options.push(MountOption::NoExec);
        }
        if options.allow_other {
            config.acl = SessionACL::All;
            config.mount_options.push(MountOption::DefaultPermissions);
        }
        config.n_threads = Some(options.threads.max(1));
        config.clone_fd = true;
        config.io_uring = options.io_uring;
        config.poll = options.poll;
        let session = fuser::Session::new(filesystem, mountpoint, &config)?;
        // Prune notifications go to the session's device from a thread of
        // their own (see `prune`); it ends when the session drops the table.
        use std::os::fd::AsFd;
        prune::spawn(prune, session.as_fd().try_clone_to_owned()?, picker)?;
        raise_readahead(mountpoint);
        Ok(Mounted { session })
    }

    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter(self.session.unmount_callable())
    }

    /// Serves requests until the file system is unmounted, then runs
    /// `after` (the caller lets go of the volume there: nothing is written
    /// through the mount any more) and flushes the backing file system so
    /// that everything written is on disk.
    pub fn serve(self, volume: &Volume, after: impl FnOnce()) -> io::Result<()> {
        let served = self.session.run();
        after();
        let synced = std::fs::File::open(volume.backing())
            .and_then(|dir| rustix::fs::syncfs(&dir).map_err(io::Error::from));
        served.and(synced)
    }

    /// Serves requests on background threads.
    pub fn spawn(self) -> io::Result<BackgroundMount> {
        Ok(BackgroundMount {
            session: Some(self.session.spawn()?),
        })
    }
}

/// The volume's double-write journal; copies an interrupted session left in
/// it are put back as their files are opened.
fn open_journal(volume: &Volume) -> io::Result<Journal> {
    let journal = Journal::open(volume.backing()).map_err(io::Error::other)?;
    let replayed = crate::replay::replay_commits(volume, &journal).map_err(io::Error::other)?;
    if replayed > 0 {
        log::warn!(
            "the last session ended before {replayed} files were synced on their own; \
             what it had synced through the journal is now written to them"
        );
    }
    let waiting = journal.carried_files();
    if waiting > 0 {
        log::warn!(
            "the last session ended before {waiting} files were synced; \
             blocks a crash tore in them are put back from the journal when each is opened \
             (or by `chronicle fsck --repair`)"
        );
    }
    Ok(journal)
}

/// Readahead the kernel will do for this mount, in KiB: four of our
/// largest requests, so that a sequential reader keeps several in flight
/// and both CPUs decrypt while it copies (docs/PERFORMANCE.md, "Four
/// requests of read-ahead"). A file's first read still starts small: the
/// kernel grows the window only while reads stay sequential.
const READAHEAD_KIB: u32 = 4096;

/// The kernel caps a FUSE mount's readahead at its default (128 KiB) and
/// the `max_readahead` of INIT can only lower it, so it is raised through
/// the mount's backing device (docs/PERFORMANCE.md). The device number
/// comes from mountinfo, not from a stat of the mount point, which would
/// wait on the not-yet-serving mount.
fn raise_readahead(mountpoint: &Path) {
    let Ok(canonical) = mountpoint.canonicalize() else {
        return;
    };
    let device = crate::mountinfo::mounts()
        .into_iter()
        .rev()
        .find(|m| m.point == canonical)
        .map(|m| m.device);
    if let Some(device) = device {
        let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
        if let Err(e) = std::fs::write(&knob, READAHEAD_KIB.to_string()) {
            log::debug!("setting {knob}: {e}");
        }
    }
}

/// The inode table keeps one descriptor per inode the kernel caches, which
/// can be tens of thousands while a source tree is unpacked.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(max) = limit.maximum {
        let wanted = Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        if let Err(e) = setrlimit(Resource::Nofile, wanted) {
            log::debug!("raising the open-file limit: {e}");
        }
    }
}

/// Unmounts whatever is mounted at `mountpoint` (as root with umount2,
/// otherwise through `fusermount3 -u` / `fusermount -u`).
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    unmount_as(mountpoint, false)
}

/// `unmount`, or with `lazy` a detach that takes effect once the last
/// program using the mount lets go (umount -l, fusermount -z).
pub fn unmount_as(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    if rustix::process::geteuid().is_root() {
        let flags = match lazy {
            true => rustix::mount::UnmountFlags::DETACH,
            false => rustix::mount::UnmountFlags::empty(),
        };
        return rustix::mount::unmount(mountpoint, flags).map_err(io::Error::from);
    }
    let mut last = io::Error::new(io::ErrorKind::NotFound, "fusermount not found");
    for tool in ["fusermount3", "fusermount"] {
        match std::process::Command::new(tool)
            .arg(if lazy { "-uz" } else { "-u" })
            .arg(mountpoint)
            .output()
        {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                last = io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}
