//! The volume's error type. Every variant carries the evidence a user needs
//! (which file, which block) and never any key material.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the volume layer.
#[derive(Debug)]
pub enum VolumeError {
    /// An operating-system error, with what we were doing when it happened.
    Io { context: String, source: io::Error },
    /// The user's key does not unwrap this volume's master key.
    KeyMismatch,
    /// A content block failed AES-GCM authentication: it was modified, moved,
    /// swapped or cut. `file` is the backing (ciphertext) file.
    AuthenticationFailed { file: PathBuf, block: u64 },
    /// A file header is malformed (bad magic or a torn header).
    BadFileHeader { file: PathBuf, reason: String },
    /// The volume configuration's fields were edited: the key opened the key
    /// check but the wrap, which authenticates every field, did not verify.
    ConfigTampered { path: PathBuf },
    /// The configuration cannot be parsed at all.
    BadConfig { path: PathBuf, reason: String },
    /// A format version this build does not understand.
    UnsupportedVersion {
        what: &'static str,
        found: u32,
        supported: u32,
    },
    /// Feature flags this build does not understand.
    UnsupportedFeatures { path: PathBuf, flags: u64 },
    /// A key of the wrong size or encoding.
    BadKey { reason: String },
    /// `init` on a directory that already holds a volume.
    AlreadyInitialized { path: PathBuf },
    /// `init` on a directory that already holds other files.
    NotEmpty { path: PathBuf },
    /// The directory holds no volume configuration.
    NotAVolume { path: PathBuf },
    /// Another process (a mount, a repair, a re-encryption) holds the volume.
    Busy { path: PathBuf },
    /// Another change of the volume's key holds the key lock.
    KeyChangeBusy { path: PathBuf },
    /// The volume's configuration changed under a command that had read it
    /// (another command re-encrypted the volume or gave it a new key).
    Changed { path: PathBuf },
    /// A re-encryption stopped after its swap; it must finish before the
    /// key changes again.
    ReencryptionUnfinished { path: PathBuf },
    /// A re-encryption mark that a re-encryption of this volume did not
    /// write (`why` says how it fails).
    ForeignMark { path: PathBuf, why: String },
    /// A backing name, long name file, directory id or symlink target that
    /// does not authenticate.
    BadName { dir: PathBuf, what: String },
}

impl VolumeError {
    /// Wraps an `io::Error` with a short description of the operation.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        VolumeError::Io {
            context: context.into(),
            source,
        }
    }

    /// An operation refused with `EIO`, for the reason `context` gives.
    pub fn eio(context: impl Into<String>) -> Self {
        Self::io(context, io::Error::from_raw_os_error(libc::EIO))
    }

    /// The OS error code this error should become for a program using the
    /// mount: authentication failures are `EIO`, never wrong bytes.
    pub fn errno(&self) -> i32 {
        match self {
            VolumeError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }
}

impl fmt::Display for VolumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeError::Io { context, source } => write!(f, "{context}: {source}"),
            VolumeError::KeyMismatch => write!(f, "encryption key mismatch"),
            VolumeError::AuthenticationFailed { file, block } => {
                write!(f, "authentication failed: {} block {block}", file.display())
            }
            VolumeError::BadFileHeader { file, reason } => {
                write!(
                    f,
                    "authentication failed: {} block header ({reason})",
                    file.display()
                )
            }
            VolumeError::ConfigTampered { path } => write!(
                f,
                "volume configuration {} failed authentication: it was modified; restore it from a backup",
                path.display()
            ),
            VolumeError::BadConfig { path, reason } => write!(
                f,
                "volume configuration {} is unreadable: {reason}",
                path.display()
            ),
            VolumeError::UnsupportedVersion {
                what,
                found,
                supported,
            } if found < supported => write!(
                f,
                "{what} format version {found} was made by an older chronicle; this build reads version {supported} only: copy the data out with the older build and `chronicle encrypt` it into a new volume"
            ),
            VolumeError::UnsupportedVersion {
                what,
                found,
                supported,
            } => write!(
                f,
                "{what} format version {found} is not supported (this build reads version {supported}); upgrade chronicle"
            ),
            VolumeError::UnsupportedFeatures { path, flags } => write!(
                f,
                "volume configuration {} uses unknown feature flags {flags:#x}; upgrade chronicle",
                path.display()
            ),
            VolumeError::BadKey { reason } => write!(f, "invalid key: {reason}"),
            VolumeError::AlreadyInitialized { path } => write!(
                f,
                "{} already holds a chronicle volume; refusing to overwrite it",
                path.display()
            ),
            VolumeError::NotEmpty { path } => write!(
                f,
                "{} is not empty; create a volume in a new or empty directory (`chronicle encrypt` turns an existing directory into a volume)",
                path.display()
            ),
            VolumeError::NotAVolume { path } => write!(
                f,
                "{} is not a chronicle volume (no chronicle.volume); create one with `chronicle init`",
                path.display()
            ),
            VolumeError::BadName { dir, what } => write!(
                f,
                "authentication failed: {} (a name, directory id or symlink target: {what})",
                dir.display()
            ),
            VolumeError::Busy { path } => write!(
                f,
                "{} is in use by another chronicle process (a mount, also one detached with umount -l whose files are still open, fsck --repair or a re-encryption); unmount it or wait for it to finish",
                path.display()
            ),
            VolumeError::ReencryptionUnfinished { path } => write!(
                f,
                "{} holds the mark of a re-encryption stopped after its swap; finish it first by running the same `rotate-key --reencrypt` again (if no re-encryption was ever run here, the mark chronicle.volume.reencrypted was planted: remove it)",
                path.display()
            ),
            VolumeError::ForeignMark { path, why } => write!(
                f,
                "{} is not the mark of a re-encryption of this volume ({why}): it was planted or put back, so nothing was deleted; check the volume with `chronicle fsck`, remove the mark, and run again",
                path.display()
            ),
            VolumeError::KeyChangeBusy { path } => write!(
                f,
                "another change of the key of {} (rotate-key) has been under way for 30 s; wait for it to finish, then run this again",
                path.display()
            ),
            VolumeError::Changed { path } => write!(
                f,
                "{} was re-encrypted or given a new key while this command ran; run it again",
                path.display()
            ),
        }
    }
}

// No `source`: the message already ends with the I/O error's own, and
// `{:#}` (how the program prints errors) would show it twice.
impl std::error::Error for VolumeError {}

/// Shorthand used throughout the crate.
pub type Result<T, E = VolumeError> = std::result::Result<T, E>;

/// Adds context to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| VolumeError::Io {
            context: what(),
            source,
        })
    }
}
